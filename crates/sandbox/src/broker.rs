//! Deno's permission broker, answered by at-rund: a generic sandbox's Deno starts before its
//! bundle is known, with `DENO_PERMISSION_BROKER_PATH` instead of permission flags, so every
//! permission check becomes one JSON line on a Unix socket (`{"v":1,"id":…,"permission":"read",
//! "value":"/data/in"}`), answered with `{"id":…,"result":"allow"|"deny"}`. Deno asks for every
//! check (it caches nothing) and ignores its flags while a broker is set.
//!
//! The rules are the very flags the normal start would pass ([`BrokerRules::from_deno_args`]
//! parses `deno::deno_args`' output), so a specialised sandbox allows exactly what `--allow-*`
//! would: a path and everything below it, `host:port` net entries, secret names for env, all of
//! `ffi` or `sys` or none. Before specialisation only the shim's own socket is allowed.
//!
//! Owns: the socket's one connection and the answers. Must not: widen a grant (an unknown
//! permission kind or a check without a value where the flag lists values is refused), or
//! serve a second client (the socket file is removed once Deno has connected).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::SandboxError;

/// What one sandbox may do, as Deno's `--allow-*` flags would say it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BrokerRules {
    read: Vec<String>,
    write: Vec<String>,
    net: Vec<String>,
    env: Vec<String>,
    ffi: bool,
    sys: bool,
}

impl BrokerRules {
    /// Only the shim's socket (read, write, `unix:` net): what a generic sandbox may do before
    /// its bundle is known.
    pub(crate) fn shim_only(socket: &Path) -> Self {
        let s = socket.to_string_lossy().into_owned();
        Self {
            read: vec![s.clone()],
            write: vec![s.clone()],
            net: vec![format!("unix:{s}")],
            ..Default::default()
        }
    }

    /// The rules of Deno's permission flags in `args`. `--allow-run` cannot be answered
    /// exactly (Deno asks the broker for `run` without naming the command), so it is refused
    /// here and such a bundle starts the normal way.
    pub(crate) fn from_deno_args(args: &[OsString]) -> Result<Self, SandboxError> {
        let mut r = Self::default();
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        for a in args {
            let Some(a) = a.to_str() else { continue };
            if let Some(v) = a.strip_prefix("--allow-read=") {
                r.read = list(v);
            } else if let Some(v) = a.strip_prefix("--allow-write=") {
                r.write = list(v);
            } else if let Some(v) = a.strip_prefix("--allow-net=") {
                r.net = list(v)
                    .into_iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect();
            } else if let Some(v) = a.strip_prefix("--allow-env=") {
                r.env = list(v);
            } else if a == "--allow-ffi" {
                r.ffi = true;
            } else if a == "--allow-sys" {
                r.sys = true;
            } else if a.starts_with("--allow") {
                return Err(SandboxError::StartFailed(format!(
                    "a generic sandbox cannot grant {a} exactly; the bundle starts the normal way"
                )));
            }
        }
        Ok(r)
    }

    /// Whether Deno may do `permission` on `value`, as its flags would decide.
    pub(crate) fn allows(&self, permission: &str, value: Option<&str>) -> bool {
        match (permission, value) {
            ("read", Some(p)) => under_any(&self.read, p),
            ("write", Some(p)) => under_any(&self.write, p),
            ("net", Some(h)) => {
                let h = h.to_ascii_lowercase();
                self.net.contains(&h)
            }
            ("env", Some(name)) => self.env.iter().any(|n| n == name),
            ("ffi", _) => self.ffi,
            ("sys", _) => self.sys,
            // Without a value Deno asks for the whole kind (e.g. `Deno.env.toObject()`, a
            // read of everything): the flags above never grant a whole kind.
            _ => false,
        }
    }
}

/// `p` is one of `allowed` or below one (whole components: `/data/a` does not cover
/// `/data/ab`). Deno sends absolute, normalised paths.
fn under_any(allowed: &[String], p: &str) -> bool {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return false;
    }
    allowed.iter().any(|a| {
        p == a
            || p.strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with('/') || a.ends_with('/'))
    })
}

/// One request line of Deno's broker protocol (v1).
#[derive(Debug, serde::Deserialize)]
struct Request {
    id: u64,
    permission: String,
    value: Option<String>,
}

/// The rules a running broker answers by; replaced once, when the sandbox is specialised.
#[derive(Debug, Clone)]
pub(crate) struct RulesHandle(Arc<RwLock<BrokerRules>>);

impl RulesHandle {
    pub(crate) fn set(&self, rules: BrokerRules) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    fn allows(&self, permission: &str, value: Option<&str>) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .allows(permission, value)
    }
}

/// A listening broker; dropping it stops answering (Deno then exits on its next check).
pub(crate) struct Broker {
    pub(crate) rules: RulesHandle,
    _task: crate::process::AbortOnDrop,
}

impl Broker {
    /// Listens on `socket` (given to `owner`, the uid the sandbox runs as, when set) and
    /// answers the first connection by `rules`; the socket file goes once it is taken.
    pub(crate) fn listen(
        socket: &Path,
        rules: BrokerRules,
        owner: Option<crate::RunAs>,
        id: Arc<str>,
    ) -> Result<Self, SandboxError> {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| crate::process::io_err("listen on", socket, e))?;
        if let Some(owner) = owner {
            crate::hostfs::give_socket(socket, owner)
                .map_err(|e| crate::process::io_err("give the sandbox", socket, e))?;
        }
        let rules = RulesHandle(Arc::new(RwLock::new(rules)));
        let answer = rules.clone();
        let path: PathBuf = socket.to_path_buf();
        let task = tokio::spawn(async move {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            // One client, ever: nobody else gets to talk to this broker.
            drop(listener);
            let _ = std::fs::remove_file(&path);
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(req) = serde_json::from_str::<Request>(&line) else {
                    tracing::warn!(
                        sandbox = &*id,
                        "the permission broker got a line it cannot read; closing"
                    );
                    return;
                };
                let ok = answer.allows(&req.permission, req.value.as_deref());
                if !ok {
                    tracing::debug!(sandbox = &*id, permission = %req.permission, value = ?req.value, "permission refused");
                }
                let reply = serde_json::json!({
                    "id": req.id,
                    "result": if ok { "allow" } else { "deny" },
                    "reason": if ok { None } else { Some("not in the bundle's manifest") },
                });
                let mut out = reply.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            rules,
            _task: crate::process::AbortOnDrop(task),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(args: &[&str]) -> BrokerRules {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        BrokerRules::from_deno_args(&a).unwrap()
    }

    #[test]
    fn paths_match_whole_components() {
        let r = rules(&[
            "--allow-read=/data/in,/bundle/b.js",
            "--allow-write=/data/out",
        ]);
        assert!(r.allows("read", Some("/data/in")));
        assert!(r.allows("read", Some("/data/in/x/y")));
        assert!(!r.allows("read", Some("/data/inx")));
        assert!(!r.allows("read", Some("/data")));
        assert!(!r.allows("read", Some("/data/in/../../etc")));
        assert!(!r.allows("read", Some("data/in")));
        assert!(!r.allows("read", None));
        assert!(r.allows("write", Some("/data/out/f")));
        assert!(!r.allows("write", Some("/data/in/f")));
        assert!(r.allows("read", Some("/bundle/b.js")));
    }

    #[test]
    fn net_env_ffi_sys_as_the_flags_say() {
        let r = rules(&[
            "--allow-net=unix:/work/s.sock,Example.com:443",
            "--allow-env=API_KEY",
        ]);
        assert!(r.allows("net", Some("example.com:443")));
        assert!(r.allows("net", Some("EXAMPLE.com:443")));
        assert!(!r.allows("net", Some("example.com:80")));
        assert!(!r.allows("net", Some("example.com")));
        assert!(!r.allows("net", None));
        assert!(r.allows("env", Some("API_KEY")));
        assert!(!r.allows("env", Some("api_key")));
        assert!(!r.allows("env", Some("HTTP_PROXY")));
        assert!(!r.allows("env", None));
        assert!(!r.allows("ffi", Some("/lib/libc.so.6")));
        assert!(!r.allows("sys", Some("hostname")));
        assert!(!r.allows("run", None));
        assert!(!r.allows("import", Some("https://x")));
        let r = rules(&["--allow-ffi", "--allow-sys"]);
        assert!(r.allows("ffi", Some("/lib/libc.so.6")));
        assert!(r.allows("sys", Some("hostname")));
    }

    #[test]
    fn run_is_refused_and_shim_only_allows_the_socket() {
        let a: Vec<OsString> = vec!["--allow-run=ffmpeg".into()];
        assert!(BrokerRules::from_deno_args(&a).is_err());
        let r = BrokerRules::shim_only(Path::new("/work/rpc.sock"));
        assert!(r.allows("net", Some("unix:/work/rpc.sock")));
        assert!(r.allows("read", Some("/work/rpc.sock")));
        assert!(!r.allows("read", Some("/bundle/b.js")));
        assert!(!r.allows("env", Some("HOME")));
    }
}
