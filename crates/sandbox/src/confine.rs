//! What a sandboxed process may do, as kernel policy: the seccomp filters and the Landlock
//! ruleset that the container's PID 1 (`init`) applies to itself before it starts Deno, and that
//! a `none` instance applies to itself between fork and exec (`host_confine`, `sys`). Children
//! inherit both, and neither can be lifted.
//!
//! Owns: the syscall deny list (isolation.md §3.1), `clone` with namespace flags, `clone3` →
//! ENOSYS, and the Landlock rules (paths read-only or read-write, TCP connect to listed ports
//! only, no TCP bind, signals and abstract Unix sockets scoped to the sandbox). Must not: decide
//! which paths an instance gets (the backends do) or touch any process but the caller.

use std::collections::BTreeMap;
use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls that answer EPERM: kernel attack surface and escapes a bundle never needs.
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fspick", libc::SYS_fspick),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("personality", libc::SYS_personality),
];

/// `clone` flags that create namespaces: refused, so nothing inside can build a new sandbox
/// around itself (bwrap's `--disable-userns` covers user namespaces too; this covers the rest).
const CLONE_NEW: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))
}

/// The two filters: the deny list (EPERM) and `clone3` → ENOSYS. Two, because a seccompiler
/// filter has one match action, and `clone3` must be ENOSYS: glibc falls back to `clone` only on
/// ENOSYS (whose flags the first filter can inspect), and Deno needs threads.
pub(crate) fn seccomp_filters() -> Result<[BpfProgram; 2], String> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = CLONE_NEW
        .iter()
        .map(|flag| {
            let c = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![c]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    Ok([
        deny.try_into().map_err(|e| format!("seccomp: {e:?}"))?,
        clone3.try_into().map_err(|e| format!("seccomp: {e:?}"))?,
    ])
}

/// Both filters as the kernel takes them (`struct sock_filter`), for a child that installs them
/// between fork and exec without allocating.
pub(crate) fn kernel_filters() -> Result<Vec<Vec<libc::sock_filter>>, String> {
    seccomp_filters()?
        .iter()
        .map(|prog| {
            if prog.len() > usize::from(u16::MAX) {
                return Err(format!("seccomp: filter of {} instructions", prog.len()));
            }
            Ok(prog
                .iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect())
        })
        .collect()
}

/// Installs both filters on the calling thread (threads and children created later inherit
/// them). Needs no_new_privs first.
pub(crate) fn apply_seccomp() -> Result<(), String> {
    for f in seccomp_filters()? {
        seccompiler::apply_filter(&f).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// Paths and ports the Landlock domain allows; everything else is refused.
#[derive(Debug, Default)]
pub(crate) struct LandlockRules {
    /// Read and execute (files or dirs; missing ones are skipped).
    pub read_only: Vec<PathBuf>,
    /// Everything a file system allows, beneath these.
    pub read_write: Vec<PathBuf>,
    /// TCP ports the sandbox may connect to (container: the proxy forwarder on its own
    /// loopback; none: the egress proxy's port). TCP bind is always refused.
    pub connect_ports: Vec<u16>,
}

/// Restricts the calling thread (and what it starts later). Best effort across kernels: the
/// status says how much the kernel enforced.
pub(crate) fn apply_landlock(rules: &LandlockRules) -> Result<RulesetStatus, String> {
    let status = landlock_ruleset(rules)?
        .restrict_self()
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(status.ruleset)
}

/// The ruleset, built but not applied: [`apply_landlock`] applies it to the caller; a `none`
/// instance takes its file descriptor into the child (`landlock_restrict_self` after fork).
/// Without Landlock in the kernel it holds no file descriptor.
pub(crate) fn landlock_ruleset(rules: &LandlockRules) -> Result<RulesetCreated, String> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let net: BitFlags<AccessNet> = AccessNet::from_all(abi);
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(net)
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    let grants = rules
        .read_only
        .iter()
        .map(|p| (p, AccessFs::from_read(abi)))
        .chain(
            rules
                .read_write
                .iter()
                .map(|p| (p, AccessFs::from_all(abi))),
        );
    for (path, access) in grants {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let access = if meta.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        let fd = PathFd::new(path).map_err(|e| format!("landlock: {}: {e}", path.display()))?;
        rs = rs.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
    }
    for port in &rules.connect_ports {
        rs = rs
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    Ok(rs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_arch() {
        let [deny, clone3] = seccomp_filters().unwrap();
        // One comparison per denied syscall plus the clone flag checks: far more than a stub.
        assert!(
            deny.len() > DENIED.len() + CLONE_NEW.len(),
            "{}",
            deny.len()
        );
        assert!(!clone3.is_empty());
    }
}
