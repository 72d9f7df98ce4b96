//! Finding and running Deno on the author's machine, the way at-rund finds it: `--deno PATH`,
//! else `ATRUN_DENO`, else `deno` on `PATH`. Owns: locating the binary and the environment every
//! Deno child gets (no colours, no Rust backtraces). Must not touch: the project's files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Failure;

/// How to install Deno, for error messages.
const INSTALL_HINT: &str = "install Deno 2.4 or newer (https://docs.deno.com/runtime/getting_started/installation/, or `npm install deno` and use node_modules/deno/deno), then put it on PATH, set ATRUN_DENO, or pass --deno PATH";

/// A Deno binary that ran `--version`.
#[derive(Debug, Clone)]
pub struct Deno {
    path: PathBuf,
    /// e.g. `2.9.6`
    pub version: String,
}

impl Deno {
    /// `explicit` (`--deno`), else `ATRUN_DENO`, else `deno` on `PATH`.
    pub fn locate(explicit: Option<&Path>) -> Result<Deno, Failure> {
        let path = match explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("ATRUN_DENO")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        }) {
            Some(p) => {
                if !p.is_file() {
                    return Err(Failure::DenoMissing(format!(
                        "Deno was not found at {} (from --deno / ATRUN_DENO); {INSTALL_HINT}",
                        p.display()
                    )));
                }
                p
            }
            None => find_on_path("deno").ok_or_else(|| {
                Failure::DenoMissing(format!("Deno is not on PATH; {INSTALL_HINT}"))
            })?,
        };
        let out = Command::new(&path)
            .arg("--version")
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| {
                Failure::DenoMissing(format!(
                    "{} did not run ({e}); {INSTALL_HINT}",
                    path.display()
                ))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string();
        let (major, minor) = parse_major_minor(&version);
        if !out.status.success() || (major, minor) < (2, 4) {
            return Err(Failure::DenoMissing(format!(
                "{} is Deno '{version}', but at-run needs 2.4 or newer (for `deno bundle`); {INSTALL_HINT}",
                path.display()
            )));
        }
        Ok(Deno { path, version })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for this Deno with a quiet, plain environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .env("DENO_NO_UPDATE_CHECK", "1");
        c
    }
}

/// `(major, minor)` of a version string; `(0, 0)` when it is not one.
pub fn parse_major_minor(v: &str) -> (u64, u64) {
    let mut it = v
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The first executable `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_major_minor("2.9.6"), (2, 9));
        assert_eq!(parse_major_minor("1.46.0-rc.1"), (1, 46));
        assert_eq!(parse_major_minor(""), (0, 0));
        assert!(parse_major_minor("2.3.9") < (2, 4));
    }

    #[test]
    fn a_missing_explicit_deno_says_how_to_install() {
        let e = Deno::locate(Some(Path::new("/nonexistent/deno"))).expect_err("missing");
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/deno") && s.contains("install Deno"),
            "{s}"
        );
        assert_eq!(e.code(), "DenoMissing");
    }
}
