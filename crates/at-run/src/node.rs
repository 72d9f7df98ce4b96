//! Finding Node.js on the author's machine, for `at-run dev` of a Node project (`"runtime":
//! "node"`): `--node PATH`, else `ATRUN_NODE`, else `node` on `PATH`. Building needs no Node
//! (Deno bundles every runtime's code, `build.rs`); only the local runner runs it.
//!
//! Owns: locating the binary and checking its version. Must not touch: the project's files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Failure;

/// The oldest Node major at-rund runs (the runner's own check, `atrund_sandbox`'s
/// `NODE_MIN_MAJOR`, says the same).
pub const NODE_MIN_MAJOR: u64 = 24;

/// How to install Node, for error messages.
const INSTALL_HINT: &str = "install Node.js 24 or newer (https://nodejs.org/en/download), then put it on PATH, set ATRUN_NODE, or pass --node PATH";

/// A Node binary that ran `--version`.
#[derive(Debug, Clone)]
pub struct Node {
    path: PathBuf,
    /// As Node prints it, e.g. `v24.21.0`.
    pub version: String,
}

impl Node {
    /// `explicit` (`--node` / `ATRUN_NODE`), else `node` on `PATH`.
    pub fn locate(explicit: Option<&Path>) -> Result<Node, Failure> {
        let path = match explicit {
            Some(p) if !p.is_file() => {
                return Err(Failure::NodeMissing(format!(
                    "Node was not found at {} (from --node / ATRUN_NODE); {INSTALL_HINT}",
                    p.display()
                )))
            }
            Some(p) => p.to_path_buf(),
            None => crate::deno::find_on_path("node").ok_or_else(|| {
                Failure::NodeMissing(format!(
                    "this project's runtime is node, and Node is not on PATH; {INSTALL_HINT}"
                ))
            })?,
        };
        let out = Command::new(&path)
            .arg("--version")
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| {
                Failure::NodeMissing(format!(
                    "{} did not run ({e}); {INSTALL_HINT}",
                    path.display()
                ))
            })?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match parse_major(&version) {
            Some(major) if out.status.success() && major >= NODE_MIN_MAJOR => {
                Ok(Node { path, version })
            }
            _ => Err(Failure::NodeMissing(format!(
                "{} is Node '{version}', but at-rund runs Node {NODE_MIN_MAJOR} or newer; {INSTALL_HINT}",
                path.display()
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The major version of `v24.21.0`; `None` when it is not such a version.
pub fn parse_major(v: &str) -> Option<u64> {
    let rest = v.strip_prefix('v')?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    // `vMAJOR.MINOR.PATCH`, nothing less.
    (parts.count() == 2).then_some(major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_major("v24.21.0"), Some(24));
        assert_eq!(parse_major("v9.0.1"), Some(9));
        assert_eq!(parse_major("24.21.0"), None);
        assert_eq!(parse_major("v24"), None);
        assert_eq!(parse_major(""), None);
    }

    #[test]
    fn a_missing_or_old_node_says_how_to_install() {
        let e = Node::locate(Some(Path::new("/nonexistent/node"))).expect_err("missing");
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/node") && s.contains("install Node.js 24"),
            "{s}"
        );
        assert_eq!(e.code(), "NodeMissing");

        // A program that answers like an old Node.
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("node");
        std::fs::write(&fake, "#!/bin/sh\necho v20.1.0\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = Node::locate(Some(&fake)).expect_err("too old").to_string();
        assert!(
            s.contains("'v20.1.0'") && s.contains("Node 24 or newer"),
            "{s}"
        );
    }

    #[test]
    fn the_pinned_node_is_found() {
        let Some(path) = atrund_testnet::node_path() else {
            return;
        };
        let node = Node::locate(Some(&path)).expect("the pinned Node runs");
        assert!(parse_major(&node.version).is_some_and(|m| m >= NODE_MIN_MAJOR));
    }
}
