//! Finding Python on the author's machine, for a Python project (`"runtime": "python"`):
//! `--python PATH`, else `ATRUN_PYTHON`, else `python3` on `PATH`. `at-run dev` needs one (the
//! local runner runs the bundle on it, handed over as `ATRUND_PYTHON_PATH`); `at-run build` uses
//! one, when there is one, to check the source's syntax.
//!
//! Owns: locating the interpreter, checking its version and resolving it to the real executable
//! (`sys.executable`: a pyenv or virtualenv shim is a script the runner cannot use). Must not
//! touch: the project's files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Failure;

/// The oldest Python at-rund runs (the runner's own check, `atrund_sandbox`'s `PYTHON_MIN`,
/// says the same).
pub const PYTHON_MIN: (u64, u64) = (3, 11);

/// How to install Python, for error messages.
const INSTALL_HINT: &str = "install Python 3.11 or newer (Debian: apt-get install python3), then put python3 on PATH, set ATRUN_PYTHON, or pass --python PATH";

/// What the probe prints: the version line as the runner announces it, then the executable.
const PROBE: &str =
    "import sys; print('Python %d.%d.%d' % sys.version_info[:3]); print(sys.executable)";

/// A Python interpreter that answered the probe.
#[derive(Debug, Clone)]
pub struct Python {
    path: PathBuf,
    /// As the runner announces it, e.g. `Python 3.11.2`.
    pub version: String,
}

impl Python {
    /// `explicit` (`--python`), else `ATRUN_PYTHON`, else `python3` on `PATH`.
    pub fn locate(explicit: Option<&Path>) -> Result<Python, Failure> {
        let from_env = || {
            std::env::var_os("ATRUN_PYTHON")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let path = match explicit.map(Path::to_path_buf).or_else(from_env) {
            Some(p) if !p.is_file() => {
                return Err(Failure::PythonMissing(format!(
                    "Python was not found at {} (from --python / ATRUN_PYTHON); {INSTALL_HINT}",
                    p.display()
                )))
            }
            Some(p) => p,
            None => crate::deno::find_on_path("python3").ok_or_else(|| {
                Failure::PythonMissing(format!(
                    "this project's runtime is python, and python3 is not on PATH; {INSTALL_HINT}"
                ))
            })?,
        };
        let out = Command::new(&path)
            .args(["-I", "-S", "-c", PROBE])
            .output()
            .map_err(|e| {
                Failure::PythonMissing(format!(
                    "{} did not run ({e}); {INSTALL_HINT}",
                    path.display()
                ))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let version = lines.next().unwrap_or("").trim().to_string();
        let real = lines.next().map(str::trim).unwrap_or("");
        match parse_version(&version) {
            Some(v) if out.status.success() && v >= PYTHON_MIN => {}
            _ => {
                return Err(Failure::PythonMissing(format!(
                    "{} is '{}', but at-rund runs Python {}.{} or newer; {INSTALL_HINT}",
                    path.display(),
                    if version.is_empty() {
                        String::from_utf8_lossy(&out.stderr).trim().to_string()
                    } else {
                        version
                    },
                    PYTHON_MIN.0,
                    PYTHON_MIN.1
                )))
            }
        }
        // The interpreter itself, not a shim in front of it.
        let real = PathBuf::from(real);
        let path = if real.is_absolute() && real.is_file() {
            real
        } else {
            std::path::absolute(&path).unwrap_or(path)
        };
        Ok(Python { path, version })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for this interpreter, isolated (`-I -S`: no `PYTHON*` variables, no site
    /// packages, no user folder) and writing no bytecode (`-B`).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.args(["-I", "-S", "-B"]);
        c
    }
}

/// `(major, minor)` of `Python 3.11.2`; `None` when it is not such a line.
pub fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.strip_prefix("Python ")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    // `MAJOR.MINOR.PATCH`, nothing less.
    parts.next()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("Python 3.11.2"), Some((3, 11)));
        assert_eq!(parse_version("Python 3.9.18"), Some((3, 9)));
        assert_eq!(parse_version("Python 3.11"), None);
        assert_eq!(parse_version("3.11.2"), None);
        assert_eq!(parse_version(""), None);
        assert!(parse_version("Python 3.10.1") < Some(PYTHON_MIN));
        assert!(parse_version("Python 3.12.0") > Some(PYTHON_MIN));
    }

    fn fake(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("python3");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    #[test]
    fn a_missing_or_old_python_says_how_to_install() {
        let e = Python::locate(Some(Path::new("/nonexistent/python3"))).expect_err("missing");
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/python3") && s.contains("install Python 3.11"),
            "{s}"
        );
        assert_eq!(e.code(), "PythonMissing");

        let dir = tempfile::tempdir().expect("tempdir");
        let old = fake(dir.path(), "echo 'Python 3.9.18'; echo /usr/bin/python3.9");
        let s = Python::locate(Some(&old)).expect_err("too old").to_string();
        assert!(
            s.contains("'Python 3.9.18'") && s.contains("Python 3.11 or newer"),
            "{s}"
        );
        let broken = fake(dir.path(), "echo 'not python' >&2; exit 1");
        let s = Python::locate(Some(&broken))
            .expect_err("broken")
            .to_string();
        assert!(s.contains("'not python'"), "{s}");
    }

    #[test]
    fn a_shim_resolves_to_the_interpreter_it_names() {
        let Some(real) = atrund_testnet::python_path() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let shim = fake(dir.path(), &format!("exec {} \"$@\"", real.display()));
        let py = Python::locate(Some(&shim)).expect("the shim runs Python");
        assert!(parse_version(&py.version).is_some_and(|v| v >= PYTHON_MIN));
        assert_ne!(py.path(), shim, "resolved past the shim");
        assert!(py.path().is_absolute() && py.path().is_file());
    }
}
