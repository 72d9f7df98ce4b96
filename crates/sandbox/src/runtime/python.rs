//! Python as a runtime (`runtime = "python"`): the located interpreter and its version, and the
//! command line of one instance. Python has no permission model at all (`ctypes` and `os` are
//! always there), so the kernel layer (Landlock, seccomp, the connect gate, the container) is the
//! whole boundary; the shim runs isolated (`-I -S -B`: no `PYTHON*` variables, no user or site
//! packages, no bytecode written).
//!
//! Owns: finding and checking the interpreter (an explicitly configured path), its arguments, its
//! reserved environment names, the standard library the container root binds, and whether the
//! `none` backend may run it (only when the operator says so). Must not: install Python, or
//! decide which permissions a bundle gets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::seam::{check_net_entry, check_secret_names, Layout, Runtime, RuntimeKind, Shim};
use crate::{Enforcement, SandboxError};

/// The Python shim (`runtime/exec/python.py`).
/// The interpreter's flags in every start (the generic sandboxes' too): isolated (no `PYTHON*`
/// variables, no user site or script dir on `sys.path`), no site packages, no bytecode written
/// (the distribution's own is read).
pub(crate) const FLAGS: [&str; 3] = ["-I", "-S", "-B"];

pub(crate) const SHIM: Shim = Shim {
    file: "at-run-exec-python.py",
    source: include_str!("../../../../runtime/exec/python.py"),
};

/// The oldest version the shim is written for (`asyncio.to_thread`, the walrus, `str | None`).
pub const PYTHON_MIN: (u32, u32) = (3, 11);

/// A located, version-checked Python interpreter.
#[derive(Debug, Clone)]
pub struct PythonBinary {
    path: PathBuf,
    /// `Python 3.11.2`.
    version: String,
    /// Its standard library (`sys.prefix`-relative `lib/pythonX.Y`), bound into the container.
    stdlib: PathBuf,
}

impl PythonBinary {
    /// Checks `path` (the operator's `python.path`): a Python at least [`PYTHON_MIN`] whose
    /// standard library is a directory the instances can be given.
    pub async fn probe(path: &Path) -> Result<Self, SandboxError> {
        let bad = |why: String| {
            SandboxError::RuntimeNotUsable(format!(
                "python.path '{}' {why}; give Debian's /usr/bin/python3.11 (apt-get install python3) or unset python.path",
                path.display()
            ))
        };
        if !crate::executables::is_executable(path) {
            return Err(bad("is not an executable file".into()));
        }
        let out = tokio::process::Command::new(path)
            .args([
                "-I",
                "-S",
                "-c",
                "import sys, sysconfig; print('Python %d.%d.%d' % sys.version_info[:3]); print(sysconfig.get_path('stdlib'))",
            ])
            .env_clear()
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| bad(format!("did not run ({e})")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (Some(version), Some(stdlib)) = (lines.next(), lines.next()) else {
            return Err(bad("did not print its version and standard library".into()));
        };
        let (major, minor) = parse_version(version)
            .filter(|_| out.status.success())
            .ok_or_else(|| bad(format!("printed '{version}', not a Python version")))?;
        if (major, minor) < PYTHON_MIN {
            return Err(bad(format!(
                "is {version}; the shim needs Python {}.{} or newer",
                PYTHON_MIN.0, PYTHON_MIN.1
            )));
        }
        let stdlib = PathBuf::from(stdlib.trim());
        if !stdlib.is_absolute() || !stdlib.join("asyncio").is_dir() {
            return Err(bad(format!(
                "has its standard library at '{}', which has no asyncio",
                stdlib.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            version: version.to_string(),
            stdlib,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Python 3.11.2`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// `Python 3.11.2` → (3, 11).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.strip_prefix("Python ")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Python as a [`Runtime`].
#[derive(Debug, Clone)]
pub(crate) struct PythonRuntime {
    binary: PythonBinary,
    /// `python.allow_none`: the operator accepts Python under `none`, with its gaps.
    allow_none: bool,
}

impl PythonRuntime {
    pub(crate) fn new(binary: PythonBinary, allow_none: bool) -> Self {
        Self { binary, allow_none }
    }

    pub(crate) fn binary_ref(&self) -> &PythonBinary {
        &self.binary
    }
}

impl Runtime for PythonRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Python
    }

    fn binary(&self) -> &Path {
        &self.binary.path
    }

    fn shim(&self) -> Shim {
        SHIM
    }

    fn args(&self, l: &Layout<'_>) -> Result<Vec<OsString>, SandboxError> {
        check_secret_names(self, &l.spec.env)?;
        for entry in &l.spec.permissions.net {
            check_net_entry(entry)?;
        }
        Ok(FLAGS
            .iter()
            .map(OsString::from)
            .chain([
                l.shim.as_os_str().to_owned(),
                l.spec.bundle_file.as_os_str().to_owned(),
                l.socket.as_os_str().to_owned(),
            ])
            .collect())
    }

    fn env(&self, _cache: &Path, _scratch: Option<&Path>) -> Vec<(&'static str, OsString)> {
        Vec::new()
    }

    fn reserved_env(&self, name: &str) -> bool {
        // -I ignores them already; refused anyway, so the rule is the same for every runtime.
        name.starts_with("PYTHON")
    }

    fn root_dirs(&self) -> Vec<PathBuf> {
        vec![self.binary.stdlib.clone()]
    }

    fn root_libs(&self) -> Vec<PathBuf> {
        // The extension modules (lib-dynload) load libraries of their own (libssl, libffi, …).
        let dynload = self.binary.stdlib.join("lib-dynload");
        let Ok(entries) = std::fs::read_dir(&dynload) else {
            return Vec::new();
        };
        let mut libs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        libs.sort();
        libs
    }

    fn refuses_none(&self) -> Option<String> {
        (!self.allow_none).then(|| {
            "Python enforces no permission itself, so it runs under isolation = \"container\" \
             unless the operator sets python.allow_none = true (docs/runtimes.md says what `none` \
             then cannot promise)"
                .into()
        })
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let line = |limit, enforced, how: &str| Enforcement {
            limit,
            enforced,
            how: how.into(),
        };
        let mut lines = vec![
            line("python.read", true, "not by Python (no permission model): the kernel layer (Landlock of exactly the declared paths, or the container's mounts)"),
            line("python.net", true, "not by Python: urllib and most clients use the egress proxy (HTTP_PROXY), and the kernel layer lets raw sockets reach nothing else"),
            line("python.run", true, "not by Python: the kernel layer's execute list (Landlock) or the container's root"),
            line("python.env", false, "Python shows a bundle its whole environment, which the runner clears to the secrets and the proxy variables"),
            line("python.ffi", false, "ctypes is always there: native code is bounded only by Landlock, seccomp and the cgroup"),
            line("python.sys", false, "os.* is always there: only what the kernel layer hides is hidden"),
        ];
        if !self.allow_none {
            lines.push(line(
                "python.isolation",
                true,
                "container or microvm only: the none backend refuses Python (python.allow_none = false)",
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(allow_none: bool) -> PythonRuntime {
        PythonRuntime::new(
            PythonBinary {
                path: "/usr/bin/python3.11".into(),
                version: "Python 3.11.2".into(),
                stdlib: "/usr/lib/python3.11".into(),
            },
            allow_none,
        )
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("Python 3.11.2"), Some((3, 11)));
        assert_eq!(parse_version("Python 3.9.18"), Some((3, 9)));
        assert_eq!(parse_version("v24.1.0"), None);
    }

    #[test]
    fn isolated_flags_and_reserved_names() {
        let mut s = crate::test_spec(Path::new("/d"));
        s.runtime = RuntimeKind::Python;
        let l = |s: &crate::InstanceSpec| {
            python(false).args(&Layout {
                spec: s,
                shim: Path::new("/w/shim.py"),
                socket: Path::new("/w/s.sock"),
                scratch: None,
            })
        };
        let a: Vec<String> = l(&s)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(a, ["-I", "-S", "-B", "/w/shim.py", "/d/b.js", "/w/s.sock"]);
        for bad in ["PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "HTTP_PROXY"] {
            s.env = vec![(bad.into(), "x".into())];
            assert_eq!(l(&s).unwrap_err().code(), "StartFailed", "{bad}");
        }
    }

    #[test]
    fn none_mode_is_the_operators_choice() {
        assert!(python(false).refuses_none().is_some());
        assert!(python(true).refuses_none().is_none());
        assert!(python(false)
            .enforcement()
            .iter()
            .any(|e| e.limit == "python.ffi" && !e.enforced));
    }
}
