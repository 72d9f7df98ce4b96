//! Finding the Deno binary and asking its version.
//!
//! Owns: the path resolution (configured path, else `deno` on PATH). Must not: install Deno.
//! PATH is searched by hand (a dozen lines) rather than with the `which` crate to keep
//! dependencies down.

use std::path::{Path, PathBuf};

use crate::SandboxError;

/// A located Deno executable.
#[derive(Debug, Clone)]
pub struct DenoBinary {
    path: PathBuf,
}

impl DenoBinary {
    /// The configured path if given, else `deno` on PATH.
    pub fn locate(configured: Option<&Path>) -> Result<Self, SandboxError> {
        if let Some(p) = configured {
            return if is_executable(p) {
                Ok(Self {
                    path: p.to_path_buf(),
                })
            } else {
                Err(SandboxError::DenoNotFound(format!(
                    "'{}' is not an executable file",
                    p.display()
                )))
            };
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .map(|dir| dir.join("deno"))
            .find(|p| is_executable(p))
            .map(|path| Self { path })
            .ok_or_else(|| SandboxError::DenoNotFound("no `deno` on PATH".into()))
    }

    /// Path of the executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version line, e.g. `deno 2.9.6 (stable, release, x86_64-unknown-linux-gnu)`.
    pub async fn version(&self) -> Result<String, SandboxError> {
        let out = tokio::process::Command::new(&self.path)
            .arg("--version")
            .env_clear()
            .env("NO_COLOR", "1")
            .env("DENO_NO_UPDATE_CHECK", "1")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                SandboxError::DenoNotFound(format!("'{}' did not run: {e}", self.path.display()))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().next() {
            Some(line) if out.status.success() && line.starts_with("deno ") => {
                Ok(line.trim().to_string())
            }
            _ => Err(SandboxError::DenoNotFound(format!(
                "'{}' --version did not print a Deno version",
                self.path.display()
            ))),
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_configured_path_says_how_to_install() {
        let err = DenoBinary::locate(Some(Path::new("/nonexistent/deno"))).unwrap_err();
        assert_eq!(err.code(), "DenoNotFound");
        assert!(err.to_string().contains("/nonexistent/deno"));
        assert!(err.to_string().contains("npm install deno@2.9.6"));
    }
}
