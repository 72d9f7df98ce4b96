//! Node.js as a runtime (`runtime = "node"`): the located binary and its version, and the command
//! line of one instance. Node's permission model (`--permission`) refuses `node:fs` outside the
//! granted paths, child processes, workers, addons, WASI and the inspector; it does not cover the
//! network, `node:sqlite`, inherited descriptors, symlinks inside granted dirs or the environment
//! (docs/runtimes.md), so for Node the kernel layer (Landlock, seccomp, the connect gate, the
//! container) is the boundary and the flags are a second wall where they exist.
//!
//! Owns: finding and checking the binary (an explicitly configured path: Node is offered only
//! when the operator says so), Node's flags and its reserved environment names. Must not: install
//! Node, or decide which permissions a bundle gets (they arrive checked).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::seam::{
    check_net_entry, check_secret_names, path_str, Layout, Runtime, RuntimeKind, Shim,
};
use crate::{Enforcement, SandboxError};

/// The Node shim (`runtime/exec/node.cjs`).
pub(crate) const SHIM: Shim = Shim {
    file: "at-run-exec-node.cjs",
    source: include_str!("../../../../runtime/exec/node.cjs"),
};

/// The oldest major version with what at-rund uses (`--permission`, `http.setGlobalProxyFromEnv`).
pub const NODE_MIN_MAJOR: u32 = 24;

/// A located, version-checked Node executable.
#[derive(Debug, Clone)]
pub struct NodeBinary {
    path: PathBuf,
    /// `v24.21.0`.
    version: String,
    major: u32,
}

impl NodeBinary {
    /// Checks `path` (the operator's `node.path`): an executable whose `--version` is a Node at
    /// least [`NODE_MIN_MAJOR`].
    pub async fn probe(path: &Path) -> Result<Self, SandboxError> {
        let bad = |why: String| {
            SandboxError::RuntimeNotUsable(format!(
                "node.path '{}' {why}; install Node {NODE_MIN_MAJOR} (scripts/setup.sh puts it in tools/node) or unset node.path",
                path.display()
            ))
        };
        if !crate::executables::is_executable(path) {
            return Err(bad("is not an executable file".into()));
        }
        // One run (Node takes ~30 ms to start): its version, then whether it has what the shim
        // sends requests through the egress proxy with (Node 24.5 and later).
        let out = tokio::process::Command::new(path)
            .args([
                "-e",
                "console.log(process.version); console.log(typeof require('node:http').setGlobalProxyFromEnv)",
            ])
            .env_clear()
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| bad(format!("did not run ({e})")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines().map(str::trim);
        let text = lines.next().unwrap_or_default().to_string();
        let major = parse_major(&text)
            .filter(|_| out.status.success())
            .ok_or_else(|| bad("did not print a Node version".into()))?;
        if major < NODE_MIN_MAJOR {
            return Err(bad(format!(
                "is Node {text}, which lacks --permission or the proxy support at-rund uses"
            )));
        }
        if lines.next() != Some("function") {
            return Err(bad(format!(
                "is Node {text}, which has no http.setGlobalProxyFromEnv (Node 24.5 or newer has it)"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            version: text,
            major,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `v24.21.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// This binary, or a copy in `staged` when `id` cannot execute it where it is (as
    /// `DenoBinary::reachable_by`).
    pub fn reachable_by(self, id: crate::RunAs, staged: &Path) -> Result<Self, SandboxError> {
        let copy = crate::hostfs::copy_if_unreachable(&self.path, id, 0o1, staged, "node", 0o755)
            .map_err(|e| {
                SandboxError::RuntimeNotUsable(format!(
                    "'{}' cannot be run by the instances' uid {}, and no copy could be made in {} ({e}); install Node where that user can run it",
                    self.path.display(),
                    id.uid,
                    staged.display()
                ))
            })?;
        Ok(match copy {
            Some((path, why)) => {
                tracing::info!(node = %self.path.display(), copy = %path.display(), uid = id.uid, %why, "the instances' user cannot run Node where it is: running a copy");
                Self { path, ..self }
            }
            None => self,
        })
    }
}

/// `v24.21.0` → 24.
fn parse_major(v: &str) -> Option<u32> {
    let rest = v.strip_prefix('v')?;
    let major = rest.split('.').next()?;
    if rest.split('.').count() != 3 {
        return None;
    }
    major.parse().ok()
}

/// Node as a [`Runtime`].
#[derive(Debug, Clone)]
pub(crate) struct NodeRuntime {
    binary: NodeBinary,
}

impl NodeRuntime {
    pub(crate) fn new(binary: NodeBinary) -> Self {
        Self { binary }
    }

    pub(crate) fn binary_ref(&self) -> &NodeBinary {
        &self.binary
    }
}

/// One `--allow-fs-*` value: one flag per path (Node does not split lists), and no character
/// that would make the path mean something else.
fn fs_item(what: &str, p: &Path) -> Result<String, SandboxError> {
    let s = path_str(p)?;
    if s.is_empty() || s.contains(['\0', '\n', '*']) || !s.starts_with('/') {
        return Err(SandboxError::StartFailed(format!(
            "{what} '{s}' is not an absolute path Node's permission flags can express"
        )));
    }
    Ok(s.to_string())
}

impl Runtime for NodeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Node
    }

    fn binary(&self) -> &Path {
        &self.binary.path
    }

    fn shim(&self) -> Shim {
        SHIM
    }

    fn args(&self, l: &Layout<'_>) -> Result<Vec<OsString>, SandboxError> {
        let spec = l.spec;
        check_secret_names(self, &spec.env)?;
        let p = &spec.permissions;
        for entry in &p.net {
            check_net_entry(entry)?;
        }
        let mut read = vec![
            fs_item("shim path", l.shim)?,
            fs_item("bundle path", &spec.bundle_file)?,
        ];
        let mut write = Vec::new();
        for r in &p.read {
            read.push(fs_item("data path", &spec.data_dir.join(r))?);
        }
        for w in &p.write {
            write.push(fs_item("data path", &spec.data_dir.join(w))?);
        }
        if let Some(dir) = l.scratch {
            read.push(fs_item("scratch dir", dir)?);
            write.push(fs_item("scratch dir", dir)?);
        }
        let mut args: Vec<OsString> = vec![
            "--permission".into(),
            format!("--max-old-space-size={}", spec.memory_mib).into(),
        ];
        args.extend(
            read.into_iter()
                .map(|r| format!("--allow-fs-read={r}").into()),
        );
        args.extend(
            write
                .into_iter()
                .map(|w| format!("--allow-fs-write={w}").into()),
        );
        if !p.run.is_empty() {
            // All or nothing in Node: which programs is the kernel layer's execute list.
            args.push("--allow-child-process".into());
        }
        if p.ffi {
            args.push("--allow-addons".into());
        }
        if self.binary.major >= 25 {
            // Node 25 added a network permission without host rules; without it the shim cannot
            // even listen on its socket. Hosts are the egress proxy's to check.
            args.push("--allow-net".into());
        }
        args.push(l.shim.as_os_str().to_owned());
        args.push(spec.bundle_file.as_os_str().to_owned());
        args.push(l.socket.as_os_str().to_owned());
        Ok(args)
    }

    fn env(&self, _cache: &Path, _scratch: Option<&Path>) -> Vec<(&'static str, OsString)> {
        // Nothing: Node shows a bundle its whole environment, so it gets only its secrets (and
        // the proxy variables).
        Vec::new()
    }

    fn reserved_env(&self, name: &str) -> bool {
        // NODE_OPTIONS would re-grant everything; UV_*, OPENSSL_* and SSL_CERT_* change how
        // the process does I/O and TLS.
        ["NODE_", "UV_", "OPENSSL_", "SSL_CERT_"]
            .iter()
            .any(|p| name.starts_with(p))
    }

    fn host_reads(&self) -> &'static [&'static str] {
        // Node reads its OpenSSL config at start and exits when refused (not when absent).
        &["/etc/ssl/openssl.cnf"]
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let line = |limit, enforced, how: &str| Enforcement {
            limit,
            enforced,
            how: how.into(),
        };
        vec![
            line("node.read", true, "--permission with --allow-fs-read/--allow-fs-write of exactly the declared paths; Node's model misses node:sqlite, inherited descriptors and symlinks, which the kernel layer (Landlock, or the container's mounts) refuses"),
            line("node.net", true, "not by Node (no host rules in its model): the shim sends fetch and node:http(s) through the egress proxy (http.setGlobalProxyFromEnv on first use), and the kernel layer lets raw sockets reach nothing else"),
            line("node.run", true, "--allow-child-process is all or nothing in Node: which programs may run is the kernel layer's execute list"),
            line("node.env", false, "Node has no environment permission: the bundle sees its whole environment, which the runner clears to the secrets and the proxy variables"),
            line("node.ffi", true, "--allow-addons only when declared (the model refuses process.dlopen otherwise)"),
            line("node.sys", false, "Node has no sys permission: os.* is always allowed, only what the kernel layer hides (/proc in none mode) is hidden"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceSpec;

    fn node(major: u32) -> NodeRuntime {
        NodeRuntime::new(NodeBinary {
            path: "/opt/node".into(),
            version: format!("v{major}.0.0"),
            major,
        })
    }

    fn args(
        rt: &NodeRuntime,
        s: &InstanceSpec,
        scratch: Option<&Path>,
    ) -> Result<Vec<String>, SandboxError> {
        Ok(rt
            .args(&Layout {
                spec: s,
                shim: Path::new("/w/shim.cjs"),
                socket: Path::new("/w/i1/s.sock"),
                scratch,
            })?
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect())
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_major("v24.21.0"), Some(24));
        assert_eq!(parse_major("v26.10.1"), Some(26));
        assert_eq!(parse_major("24.21.0"), None);
        assert_eq!(parse_major("deno 2.9.6"), None);
        assert_eq!(parse_major("v24"), None);
    }

    #[test]
    fn minimal_flags_grant_only_the_shim_and_the_bundle() {
        let dir = Path::new("/d");
        let mut s = crate::test_spec(dir);
        s.runtime = RuntimeKind::Node;
        let a = args(&node(24), &s, None).unwrap();
        assert_eq!(
            a,
            [
                "--permission",
                "--max-old-space-size=64",
                "--allow-fs-read=/w/shim.cjs",
                "--allow-fs-read=/d/b.js",
                "/w/shim.cjs",
                "/d/b.js",
                "/w/i1/s.sock"
            ]
        );
        // Node 25+ needs --allow-net for the shim's own listen.
        assert!(args(&node(26), &s, None)
            .unwrap()
            .contains(&"--allow-net".to_string()));
    }

    #[test]
    fn permissions_become_one_flag_per_path() {
        let mut s = crate::test_spec(Path::new("/d"));
        s.permissions.read = vec!["in".into(), "more".into()];
        s.permissions.write = vec!["out".into()];
        s.permissions.run = vec!["ffmpeg".into()];
        s.permissions.ffi = true;
        s.permissions.net = vec!["example.com".into()];
        let a = args(&node(24), &s, Some(Path::new("/tmp"))).unwrap();
        for f in [
            "--allow-fs-read=/d/data/in",
            "--allow-fs-read=/d/data/more",
            "--allow-fs-write=/d/data/out",
            "--allow-fs-read=/tmp",
            "--allow-fs-write=/tmp",
            "--allow-child-process",
            "--allow-addons",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains(',')));
    }

    #[test]
    fn node_settings_as_secret_names_are_refused() {
        for bad in [
            "NODE_OPTIONS",
            "NODE_PATH",
            "UV_THREADPOOL_SIZE",
            "OPENSSL_CONF",
            "SSL_CERT_FILE",
            "LD_PRELOAD",
            "HTTPS_PROXY",
            "no-dash",
        ] {
            let mut s = crate::test_spec(Path::new("/d"));
            s.env = vec![(bad.into(), "value-x".into())];
            let e = args(&node(24), &s, None).unwrap_err();
            assert_eq!(e.code(), "StartFailed", "{bad}");
            assert!(!e.to_string().contains("value-x"));
        }
        let mut s = crate::test_spec(Path::new("/d"));
        s.env = vec![
            ("DENO_DIR".into(), "v".into()),
            ("API_KEY".into(), "v".into()),
        ];
        assert!(
            args(&node(24), &s, None).is_ok(),
            "Deno's names are Node's to use"
        );
        s.permissions.net = vec!["*.example.com".into()];
        assert!(args(&node(24), &s, None).is_err());
    }
}
