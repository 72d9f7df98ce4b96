//! OS confinement of `none` instances, as far as it goes without namespaces: no_new_privs,
//! Landlock and seccomp, which the instance process applies to itself between fork and exec
//! (`sys::install`), so Deno starts already confined, in place, as the only process.
//!
//! Landlock (docs/security.md): read and execute the Deno binary, the system library dirs and a
//! few `/etc` files the resolver and dynamic loader read, the bundle file and the manifest's
//! `read` paths; read-write the work dir (shim, socket), the bundle's `DENO_DIR`, the manifest's
//! `write` paths and `/dev/null`; nothing of `/proc`, `/sys` or home dirs. TCP connect only to
//! the egress proxy's port (`net_rules`: Landlock filters by port, not host, so every other port
//! of every host is refused and the proxy decides the rest), none without a proxy; no TCP bind;
//! signals and abstract Unix sockets scoped to the instance. Seccomp: the container's deny list
//! (`confine`).
//!
//! Owns: which paths and ports a `none` instance gets from the kernel, the kernel probe at start
//! and the `landlock`/`seccomp` entries of the executor's enforcement list. Must not: build
//! rulesets or filters (`confine` does), run code after fork (`sys` does), or loosen Deno's
//! flags (it only adds a layer beneath them: what Deno itself needs, plus what the flags allow).

use std::path::{Component, Path, PathBuf};

use crate::confine::{self, LandlockRules};
use crate::{sys, Enforcement, InstanceSpec, SandboxError};

/// Read (and execute) for every instance: the dynamic loader and libraries (also what FFI
/// `dlopen`s), and what glibc's resolver and time zone code read. Missing ones are skipped.
const SYSTEM_READ: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

/// Read-write for every instance.
const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// What Deno's `--allow-sys` functions read (systemMemoryInfo, loadavg, osRelease, osUptime):
/// granted only with the `sys` permission.
const SYS_READ: &[&str] = &[
    "/proc/meminfo",
    "/proc/loadavg",
    "/proc/sys/kernel/osrelease",
    "/proc/uptime",
    "/proc/stat",
];

/// Where a bare `run` entry is looked up (the instance's environment has no PATH).
const RUN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// The oldest Landlock ABI with TCP rules (4) and with signal/abstract-socket scopes (6).
const ABI_NET: i64 = 4;
const ABI_SCOPE: i64 = 6;

/// What the kernel offers here, probed once per executor.
#[derive(Debug, Clone)]
pub(crate) struct HostConfinement {
    /// Off only for comparisons (`NoneExecutor::with_os_confinement(false)`).
    enabled: bool,
    landlock_abi: Result<i64, String>,
    seccomp: Result<(), String>,
}

impl HostConfinement {
    pub(crate) fn probe() -> Self {
        Self {
            enabled: true,
            landlock_abi: sys::landlock_abi().map_err(|e| e.to_string()),
            seccomp: sys::seccomp_errno_available().map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    fn landlock(&self) -> Option<i64> {
        self.landlock_abi
            .as_ref()
            .ok()
            .copied()
            .filter(|_| self.enabled)
    }

    fn seccomp(&self) -> bool {
        self.enabled && self.seccomp.is_ok()
    }

    /// The `landlock` and `seccomp` entries of the enforcement list: never silently missing.
    pub(crate) fn enforcement(&self) -> Vec<Enforcement> {
        let off = "OS confinement is turned off for this executor".to_string();
        let landlock = match (&self.landlock_abi, self.enabled) {
            (_, false) => Enforcement {
                limit: "landlock",
                enforced: false,
                how: off.clone(),
            },
            (Err(e), _) => Enforcement {
                limit: "landlock",
                enforced: false,
                how: format!(
                    "the kernel has no Landlock ({e}): only Deno's flags limit files and network \
                     (enable CONFIG_SECURITY_LANDLOCK and lsm=landlock)"
                ),
            },
            (Ok(abi), _) => {
                let mut how = format!(
                    "Landlock ABI {abi}: files limited to the Deno binary, system libraries, the \
                     bundle, its work dir, DENO_DIR and the manifest's read/write paths"
                );
                if *abi >= ABI_NET {
                    how.push_str(
                        "; TCP connect only to the egress proxy's port (which enforces the \
                         manifest's net list and refused ranges), no TCP bind",
                    );
                } else {
                    how.push_str("; NOT the network (needs ABI 4, Linux 6.7)");
                }
                if *abi >= ABI_SCOPE {
                    how.push_str("; signals and abstract Unix sockets scoped to the instance");
                } else {
                    how.push_str("; NOT signals (needs ABI 6, Linux 6.12)");
                }
                Enforcement {
                    limit: "landlock",
                    // Partial coverage is still reported as enforced; `how` names the gaps.
                    enforced: true,
                    how,
                }
            }
        };
        let seccomp = match (&self.seccomp, self.enabled) {
            (_, false) => Enforcement {
                limit: "seccomp",
                enforced: false,
                how: off,
            },
            (Err(e), _) => Enforcement {
                limit: "seccomp",
                enforced: false,
                how: format!(
                    "the kernel takes no seccomp filters ({e}): a bundle with ffi or run has \
                     every syscall of the runner's user"
                ),
            },
            (Ok(()), _) => Enforcement {
                limit: "seccomp",
                enforced: true,
                how: format!(
                    "{} syscalls refused with EPERM (ptrace, mount, unshare, bpf, …), clone with \
                     namespace flags refused, clone3 answered ENOSYS",
                    confine::DENIED.len()
                ),
            },
        };
        vec![landlock, seccomp]
    }

    /// The confinement of one instance, built before fork. `None` when nothing applies here.
    /// `proxy_port`: the egress proxy's TCP port, the only one the instance may connect to.
    pub(crate) fn prepare(
        &self,
        spec: &InstanceSpec,
        deno: &Path,
        proxy_port: Option<u16>,
    ) -> Result<Option<sys::Confinement>, SandboxError> {
        let landlock = self.landlock();
        let seccomp = self.seccomp();
        if landlock.is_none() && !seccomp {
            return Ok(None);
        }
        let fail = |e: String| SandboxError::StartFailed(format!("OS confinement: {e}"));
        let mut out = sys::Confinement::default();
        if landlock.is_some() {
            let mut rules = self.rules(spec, deno)?;
            rules.connect_ports = net_rules(proxy_port);
            let rs = confine::landlock_ruleset(&rules).map_err(fail)?;
            out.landlock = Option::<std::os::fd::OwnedFd>::from(rs);
        }
        if seccomp {
            out.seccomp = confine::kernel_filters().map_err(fail)?;
        }
        Ok(Some(out))
    }

    fn rules(&self, spec: &InstanceSpec, deno: &Path) -> Result<LandlockRules, SandboxError> {
        let p = &spec.permissions;
        let mut read_only: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        read_only.push(deno.to_path_buf());
        read_only.push(spec.bundle_file.clone());
        let mut read_write: Vec<PathBuf> = SYSTEM_WRITE.iter().map(PathBuf::from).collect();
        read_write.push(spec.work_dir.clone());
        read_write.push(spec.deno_dir.clone());

        let root = std::fs::canonicalize(&spec.data_dir)
            .map_err(|e| crate::process::io_err("resolve", &spec.data_dir, e))?;
        for (rel, write) in p
            .read
            .iter()
            .map(|r| (r, false))
            .chain(p.write.iter().map(|w| (w, true)))
        {
            let mut host = root.join(data_path(rel)?);
            if write {
                // Landlock grants existing paths only: a write path the bundle has not created
                // yet (a file or a dir, Deno's flags allow either) is granted through its nearest
                // existing parent inside the data dir. Deno still allows only the path itself.
                while std::fs::symlink_metadata(&host).is_err() && host != root {
                    host.pop();
                }
            }
            let Ok(real) = std::fs::canonicalize(&host) else {
                continue; // a read path that does not exist: nothing to grant
            };
            // Landlock grants the target of a symlink: one planted by the bundle must not
            // open a host path.
            if !real.starts_with(&root) {
                return Err(SandboxError::StartFailed(format!(
                    "data path '{rel}' leads outside the bundle's data dir (a symlink?); remove it"
                )));
            }
            if write {
                read_write.push(real);
            } else {
                read_only.push(real);
            }
        }
        for prog in &p.run {
            read_only.extend(run_target(prog));
        }
        if p.sys {
            read_only.extend(SYS_READ.iter().map(PathBuf::from));
        }
        Ok(LandlockRules {
            read_only,
            read_write,
            connect_ports: Vec::new(),
        })
    }
}

/// The TCP ports a `none` instance may connect to: the egress proxy's only. The manifest's
/// `net` entries open no port here: its traffic goes through the proxy, which checks host,
/// port and resolved address; a raw `Deno.connect` elsewhere gets EACCES (`PermissionDenied`).
fn net_rules(proxy_port: Option<u16>) -> Vec<u16> {
    proxy_port.into_iter().collect()
}

/// A manifest data path: relative, plain names only.
fn data_path(rel: &str) -> Result<&Path, SandboxError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(SandboxError::StartFailed(format!(
            "data path '{rel}' must be relative, without '..' or '.'"
        )));
    }
    Ok(p)
}

/// The program a `run` entry names: a path as is, a bare name looked up in [`RUN_DIRS`].
fn run_target(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    RUN_DIRS
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> InstanceSpec {
        InstanceSpec {
            id: "t".into(),
            bundle_file: dir.join("b.js"),
            work_dir: dir.join("w"),
            data_dir: dir.join("data"),
            deno_dir: dir.join("deno"),
            permissions: Default::default(),
            env: vec![],
            memory_mib: 64,
            request_timeout: std::time::Duration::from_secs(1),
            start_timeout: std::time::Duration::from_secs(1),
            limits: Default::default(),
        }
    }

    #[test]
    fn only_the_proxy_port_is_open() {
        assert_eq!(net_rules(Some(41234)), [41234]);
        assert!(net_rules(None).is_empty());
        // The manifest's net entries add no port.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data")).unwrap();
        let mut s = spec(tmp.path());
        s.permissions.net = vec!["example.com:8443".into(), "127.0.0.1:8080".into()];
        let r = HostConfinement::probe()
            .rules(&s, Path::new("/bin/deno"))
            .unwrap();
        assert!(r.connect_ports.is_empty());
    }

    #[test]
    fn data_paths_stay_inside_and_missing_write_paths_go_through_their_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("evil")).unwrap();
        let mut s = spec(tmp.path());
        s.permissions.write = vec!["out/x/y.txt".into(), "log.txt".into()];
        let hc = HostConfinement::probe();
        let r = hc.rules(&s, Path::new("/bin/deno")).unwrap();
        let real = |p: &str| std::fs::canonicalize(data.join(p)).unwrap();
        assert!(r.read_write.contains(&real("out")));
        assert!(r.read_write.contains(&real("")));
        assert!(!data.join("out/x").exists(), "nothing is created");
        std::fs::write(data.join("log.txt"), "").unwrap();
        let r = hc.rules(&s, Path::new("/bin/deno")).unwrap();
        assert!(r.read_write.contains(&real("log.txt")));
        assert!(!r.read_write.contains(&real("")));
        s.permissions.read = vec!["evil".into()];
        let e = hc.rules(&s, Path::new("/bin/deno")).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        for bad in ["", "/etc", "../x", "./a"] {
            assert!(data_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disabled_is_reported_not_silent() {
        let mut hc = HostConfinement::probe();
        hc.set_enabled(false);
        let e = hc.enforcement();
        assert_eq!(e.len(), 2);
        assert!(e
            .iter()
            .all(|e| !e.enforced && e.how.contains("turned off")));
        let tmp = tempfile::tempdir().unwrap();
        assert!(hc
            .prepare(&spec(tmp.path()), Path::new("/bin/deno"), None)
            .unwrap()
            .is_none());
    }
}
