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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::libc;

use crate::confine::{self, LandlockRules};
use crate::connect_gate::{self, GatePending};
use crate::{hostfs, sys, Enforcement, InstanceSpec, SandboxError};

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

/// The seccomp filters as the child installs them (`confine::kernel_filters`), or why they could
/// not be built (then every start fails, as confinement was asked for).
#[derive(Clone)]
struct KernelFilters(Result<Arc<Vec<Vec<libc::sock_filter>>>, String>);

impl std::fmt::Debug for KernelFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(v) => write!(f, "{} filters", v.len()),
            Err(e) => write!(f, "not built: {e}"),
        }
    }
}

/// What the kernel offers here, probed once per executor.
#[derive(Debug, Clone)]
pub(crate) struct HostConfinement {
    /// Off only for comparisons (`NoneExecutor::with_os_confinement(false)`).
    enabled: bool,
    landlock_abi: Result<i64, String>,
    seccomp: Result<(), String>,
    /// Whether the kernel hands syscalls to the daemon (the connect gate).
    user_notif: Result<(), String>,
    /// Off only for comparisons (`NoneExecutor::with_connect_gate(false)`).
    gate_enabled: bool,
    /// The filters in the kernel's format, built once: they are the same for every instance.
    filters: KernelFilters,
    /// Who the instance runs as (`NoneExecutor`): the data dirs created here are given to it.
    owner: Option<crate::RunAs>,
}

impl HostConfinement {
    pub(crate) fn probe() -> Self {
        Self {
            enabled: true,
            landlock_abi: sys::landlock_abi().map_err(|e| e.to_string()),
            seccomp: sys::seccomp_errno_available().map_err(|e| e.to_string()),
            user_notif: sys::seccomp_user_notif_available().map_err(|e| e.to_string()),
            gate_enabled: true,
            filters: KernelFilters(confine::kernel_filters().map(Arc::new)),
            owner: None,
        }
    }

    pub(crate) fn set_owner(&mut self, owner: Option<crate::RunAs>) {
        self.owner = owner;
    }

    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    pub(crate) fn set_gate_enabled(&mut self, on: bool) {
        self.gate_enabled = on;
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
                    "{} syscalls refused with EPERM (ptrace, mount, unshare, bpf, …), device nodes and \
                     clone with namespace flags refused, clone3 answered ENOSYS, sockets other than {} \
                     answered EAFNOSUPPORT, no UDP, raw IP or Unix datagram sockets, no TCP Fast \
                     Open, x32 syscalls refused; {}",
                    confine::DENIED.len(),
                    confine::SOCKET_FAMILIES
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    match (&self.user_notif, self.gate_enabled) {
                        (_, false) => "NOT connects to named Unix sockets: the connect gate is \
                                       turned off for this executor"
                            .to_string(),
                        (Ok(()), _) => "every connect answered by the runner (the connect gate): \
                                        Unix sockets refused, TCP only to the egress proxy"
                            .to_string(),
                        (Err(e), _) => format!(
                            "NOT connects to named Unix sockets: the kernel hands no syscall to \
                             the runner ({e}; needs Linux 5.0 with SECCOMP_RET_USER_NOTIF)"
                        ),
                    }
                ),
            },
        };
        vec![landlock, seccomp]
    }

    /// The confinement of one instance, built before fork, and the daemon's half of its
    /// connect gate. `None` when nothing applies here. `proxy`: the egress proxy's address, the
    /// only one the instance may connect to. `runtime`: the program exec'd, and the host files
    /// it reads at start besides its libraries.
    pub(crate) fn prepare(
        &self,
        spec: &InstanceSpec,
        runtime: (&Path, &[&str]),
        shim: &Path,
        proxy: Option<std::net::SocketAddr>,
    ) -> Result<Option<(sys::Confinement, Option<GatePending>)>, SandboxError> {
        let landlock = self.landlock();
        let seccomp = self.seccomp();
        if landlock.is_none() && !seccomp {
            return Ok(None);
        }
        let proxy_port = proxy.map(|a| a.port());
        let fail = |e: String| SandboxError::StartFailed(format!("OS confinement: {e}"));
        let mut out = sys::Confinement::default();
        if landlock.is_some() {
            let mut rules = self.rules(spec, runtime, shim)?;
            rules.connect_ports = net_rules(proxy_port);
            let rs = confine::landlock_ruleset(&rules).map_err(fail)?;
            out.landlock = Option::<std::os::fd::OwnedFd>::from(rs);
        }
        let mut gate = None;
        if seccomp {
            let filters = self.filters.0.as_ref().map_err(|e| fail(e.clone()))?;
            out.seccomp = filters.as_ref().clone();
            if self.user_notif.is_ok() && self.gate_enabled {
                let (child, pending) =
                    connect_gate::prepare(proxy).map_err(|e| fail(format!("connect gate: {e}")))?;
                out.gate = Some(child);
                gate = Some(pending);
            }
        }
        Ok(Some((out, gate)))
    }

    fn rules(
        &self,
        spec: &InstanceSpec,
        (program, program_reads): (&Path, &[&str]),
        shim: &Path,
    ) -> Result<LandlockRules, SandboxError> {
        let p = &spec.permissions;
        let mut read_only: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        read_only.push(spec.bundle_file.clone());
        read_only.push(shim.to_path_buf());
        // Only those that exist: Landlock cannot grant a path that is not there.
        read_only.extend(
            program_reads
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists()),
        );
        // Execute only what is run: the runtime, its loader (the kernel opens it for execute at
        // exec), the manifest's `run` programs and theirs. Libraries are mapped, not executed,
        // so read is enough for them.
        let mut execute = vec![program.to_path_buf()];
        execute.extend(interpreters(program));
        for prog in &p.run {
            if let Some(target) = run_target(prog) {
                execute.extend(interpreters(&target));
                execute.push(target);
            }
        }
        let mut read_write: Vec<PathBuf> = SYSTEM_WRITE.iter().map(PathBuf::from).collect();
        read_write.push(spec.work_dir.clone());
        read_write.push(spec.deno_dir.clone());
        // Opened beneath the data dir without following symlinks, write dirs created: granted
        // by descriptor, so nothing swapped in after the check is granted.
        let data = hostfs::open_data_paths(spec, self.owner)?;
        if p.sys {
            read_only.extend(SYS_READ.iter().map(PathBuf::from));
        }
        Ok(LandlockRules {
            read_only,
            execute,
            read_write,
            data,
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

/// What the kernel also opens for execute when `program` is exec'd: an ELF's loader
/// (`PT_INTERP`), a script's `#!` interpreter and that one's loader.
fn interpreters(program: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut next = Some(program.to_path_buf());
    // A script's interpreter may itself be a script once; deeper chains are not followed.
    for _ in 0..3 {
        let Some(p) = next.take().and_then(|p| interpreter_of(&p)) else {
            break;
        };
        out.push(p.clone());
        next = Some(p);
    }
    out
}

fn interpreter_of(program: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::File::open(program).ok()?;
    let mut head = [0u8; 256];
    let n = f.read(&mut head).ok()?;
    let head = &head[..n];
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?.trim();
        let interp = line.split_whitespace().next()?;
        return interp.starts_with('/').then(|| PathBuf::from(interp));
    }
    // ELF64, little-endian (the targets the runner supports).
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().ok()?);
    let (phentsize, phnum) = (u64::from(u16_at(0x36)), u16_at(0x38));
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff.checked_add(i.checked_mul(phentsize)?)?)
            .ok()?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != PT_INTERP {
            continue;
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = usize::try_from(u64::from_le_bytes(ph[32..40].try_into().ok()?)).ok()?;
        let mut path = vec![0u8; size.min(4096)];
        f.read_exact_at(&mut path, offset).ok()?;
        let path = path.split(|b| *b == 0).next()?;
        return Some(PathBuf::from(std::str::from_utf8(path).ok()?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_spec as spec;

    const DENO: &str = "/bin/sh";
    const SHIM: &str = "/run/shim.ts";

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
            .rules(&s, (Path::new(DENO), &[]), Path::new(SHIM))
            .unwrap();
        assert!(r.connect_ports.is_empty());
    }

    #[test]
    fn write_paths_are_created_and_granted_by_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("evil")).unwrap();
        let mut s = spec(tmp.path());
        s.permissions.write = vec!["out/x".into()];
        let hc = HostConfinement::probe();
        let r = hc
            .rules(&s, (Path::new(DENO), &[]), Path::new(SHIM))
            .unwrap();
        assert!(
            data.join("out/x").is_dir(),
            "write dirs exist in both modes"
        );
        assert_eq!(r.data.len(), 1);
        assert!(r.data[0].write && r.data[0].is_dir);
        assert!(!r.read_write.iter().any(|p| p.starts_with(&data)));
        s.permissions.read = vec!["evil".into()];
        let e = hc
            .rules(&s, (Path::new(DENO), &[]), Path::new(SHIM))
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn execute_is_granted_to_programs_and_their_loaders_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = spec(tmp.path());
        s.permissions.run = vec!["/usr/bin/sh".into()];
        let hc = HostConfinement::probe();
        let r = hc
            .rules(&s, (Path::new(DENO), &[]), Path::new(SHIM))
            .unwrap();
        assert!(r.execute.contains(&PathBuf::from("/usr/bin/sh")));
        assert!(r.execute.contains(&PathBuf::from(DENO)));
        let loader = interpreters(Path::new(DENO));
        assert_eq!(loader.len(), 1, "{loader:?}");
        assert!(
            loader[0].to_string_lossy().contains("ld-linux"),
            "{loader:?}"
        );
        assert!(r.execute.contains(&loader[0]));
        assert!(!r.execute.iter().any(|p| p == Path::new("/usr/lib")));
        assert!(r.read_only.contains(&PathBuf::from("/usr/lib")));
        let script = tmp.path().join("script");
        std::fs::write(&script, "#!/bin/sh -e\necho\n").unwrap();
        assert_eq!(
            interpreters(&script)[..2],
            [PathBuf::from("/bin/sh"), loader[0].clone()]
        );
        assert!(interpreters(&tmp.path().join("missing")).is_empty());
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
            .prepare(
                &spec(tmp.path()),
                (Path::new("/bin/deno"), &[]),
                Path::new(SHIM),
                None
            )
            .unwrap()
            .is_none());
    }
}
