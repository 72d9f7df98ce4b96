//! What a sandboxed process may do, as kernel policy: the seccomp filters and the Landlock
//! ruleset that the container's PID 1 (`init`) applies to itself before it starts Deno, and that
//! a `none` instance applies to itself between fork and exec (`host_confine`, `sys`). Children
//! inherit both, and neither can be lifted.
//!
//! Owns: the syscall deny list (isolation.md §3.1), `clone` with namespace flags, `clone3` →
//! ENOSYS, the socket families allowed (no UDP, raw IP or Unix datagram sockets, no TCP Fast
//! Open), x32 syscalls refused, the connect gate's filter (`none`: every `connect` answered by
//! the daemon, `connect_gate`), and the Landlock rules (paths read-only or read-write, TCP
//! connect to listed ports only, no TCP bind, signals and abstract Unix sockets scoped to the
//! sandbox). Must not: decide which paths an instance gets (the backends do) or touch any
//! process but the caller.

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
    // Another process's file descriptors, a second kexec entry, mount attributes, port I/O,
    // the clock, and the x86 LDT: none is needed by a runtime, each is attack surface.
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("modify_ldt", libc::SYS_modify_ldt),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("syslog", libc::SYS_syslog),
    ("uselib", libc::SYS_uselib),
    ("vhangup", libc::SYS_vhangup),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("kcmp", libc::SYS_kcmp),
    ("process_madvise", libc::SYS_process_madvise),
];

/// Calls refused (EPERM) unless their pid argument (the given argument number) is 0, the caller.
const OTHER_PROCESS: &[(libc::c_long, u8)] = &[
    (libc::SYS_prlimit64, 0),
    (libc::SYS_setpriority, 1),
    (libc::SYS_sched_setaffinity, 0),
    (libc::SYS_sched_setscheduler, 0),
    (libc::SYS_sched_setparam, 0),
    (libc::SYS_sched_setattr, 0),
    (libc::SYS_ioprio_set, 1),
];

/// Calls that send with flags, and the argument holding them: `MSG_FASTOPEN` is refused (EPERM).
const SEND_FLAGS: &[(libc::c_long, u8)] = &[
    (libc::SYS_sendto, 3),
    (libc::SYS_sendmsg, 2),
    (libc::SYS_sendmmsg, 3),
];

/// Device nodes are refused (EPERM) whoever asks: `mknod` and `mknodat` with a character or block
/// device type, the mode being their second and third argument. FIFOs and plain files stay.
const MKNOD: &[(libc::c_long, u8)] = &[(libc::SYS_mknod, 1), (libc::SYS_mknodat, 2)];

/// Socket families a sandboxed process may open: Unix sockets (the shim serves on one), IPv4 and
/// IPv6 (Landlock, the network namespace and the egress proxy decide where they lead). Every
/// other family answers EAFNOSUPPORT, as on a kernel built without it: netlink (the kernel's
/// routing, audit and uevent interfaces), AF_ALG (kernel crypto), AF_VSOCK (the hypervisor),
/// AF_PACKET, and the rarely used protocol families behind many kernel bugs.
pub(crate) const SOCKET_FAMILIES: &[(&str, libc::c_int)] = &[
    ("AF_UNIX", libc::AF_UNIX),
    ("AF_INET", libc::AF_INET),
    ("AF_INET6", libc::AF_INET6),
];

/// x86-64's x32 ABI: the same architecture value, syscall numbers with this bit set. A filter
/// that matches numbers without it would let every denied call through as its x32 twin.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

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

/// The filters: the deny list (EPERM), `clone3` → ENOSYS, socket families → EAFNOSUPPORT, and
/// (x86-64) every x32 syscall → EPERM. Several, because a seccompiler filter has one match
/// action: `clone3` must be ENOSYS, as glibc falls back to `clone` only on ENOSYS (whose flags the
/// first filter can inspect), and Deno needs threads. The kernel runs every filter and keeps the
/// strictest answer.
pub(crate) fn seccomp_filters() -> Result<Vec<BpfProgram>, String> {
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
    // IP sockets are for TCP to the egress proxy only: datagram (UDP, ICMP echo) and raw ones
    // would reach any address, as Landlock has no UDP rules and the proxy sees only TCP.
    let mut ip_rules = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for kind in [libc::SOCK_DGRAM, libc::SOCK_RAW] {
            let conditions = vec![
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64)
                    .map_err(|e| e.to_string())?,
                // The type's low bits; SOCK_NONBLOCK and SOCK_CLOEXEC ride above them.
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(0xf),
                    kind as u64,
                )
                .map_err(|e| e.to_string())?,
            ];
            ip_rules.push(SeccompRule::new(conditions).map_err(|e| e.to_string())?);
        }
    }
    // Unix datagram sockets send to any named socket by address (`sendto`, `sendmsg`), which no
    // connect precedes and so no gate sees: the system log, journald, a notify socket. Stream
    // and seqpacket sockets reach a named one only by `connect`.
    let unix_dgram = || -> Result<SeccompRule, String> {
        SeccompRule::new(vec![
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
            .map_err(|e| e.to_string())?,
            SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xf),
                libc::SOCK_DGRAM as u64,
            )
            .map_err(|e| e.to_string())?,
        ])
        .map_err(|e| e.to_string())
    };
    ip_rules.push(unix_dgram()?);
    rules.insert(libc::SYS_socket, ip_rules);
    rules.insert(libc::SYS_socketpair, vec![unix_dgram()?]);
    // TCP Fast Open connects from `sendto`/`sendmsg`: no `connect`, so neither the gate nor
    // Landlock's connect rule would see it.
    for (nr, flags_arg) in SEND_FLAGS {
        let c = SeccompCondition::new(
            *flags_arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::MSG_FASTOPEN as u64),
            libc::MSG_FASTOPEN as u64,
        )
        .map_err(|e| e.to_string())?;
        rules.insert(
            *nr,
            vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?],
        );
    }
    // Calls that act on another process by pid: `none` instances share one uid, so without
    // this one could lower another's limits, priority or CPUs. Their own process is pid 0.
    for (nr, pid_arg) in OTHER_PROCESS {
        let c = SeccompCondition::new(*pid_arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0)
            .map_err(|e| e.to_string())?;
        rules.insert(
            *nr,
            vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?],
        );
    }
    for (nr, mode_arg) in MKNOD {
        let device_rules = [libc::S_IFCHR, libc::S_IFBLK]
            .iter()
            .map(|kind| {
                let c = SeccompCondition::new(
                    *mode_arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                    u64::from(*kind),
                )
                .map_err(|e| e.to_string())?;
                SeccompRule::new(vec![c]).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        rules.insert(*nr, device_rules);
    }
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
    // One rule: the family is none of the allowed ones (conditions of a rule all hold).
    let other_family = SeccompRule::new(
        SOCKET_FAMILIES
            .iter()
            .map(|(_, family)| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *family as u64)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?,
    )
    .map_err(|e| e.to_string())?;
    let sockets = SeccompFilter::new(
        BTreeMap::from([
            (libc::SYS_socket, vec![other_family.clone()]),
            (libc::SYS_socketpair, vec![other_family]),
        ]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    let mut filters = Vec::new();
    for f in [deny, clone3, sockets] {
        filters.push(f.try_into().map_err(|e| format!("seccomp: {e:?}"))?);
    }
    #[cfg(target_arch = "x86_64")]
    filters.push(x32_filter());
    Ok(filters)
}

/// The audit architecture value of this target (linux/audit.h), as `seccomp_data.arch` holds it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// The connect gate's filter (`connect_gate`): every `connect` of this architecture waits for the
/// daemon's answer (`SECCOMP_RET_USER_NOTIF`); everything else passes to the other filters.
/// Installed last, with a listener the daemon holds.
pub(crate) fn connect_gate_filter() -> Vec<libc::sock_filter> {
    // linux/bpf_common.h: BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another architecture: not ours to judge (the other filters kill it).
        op(BPF_JEQ_K, 0, 3, AUDIT_ARCH),
        op(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        op(BPF_JEQ_K, 0, 1, libc::SYS_connect as u32),
        op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
        op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Refuses every syscall number with the x32 bit (EPERM). The architecture itself is checked by
/// the other filters (a foreign one kills the process).
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    // linux/bpf_common.h: BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        op(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(
            BPF_RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The filters as the kernel takes them (`struct sock_filter`), for a child that installs them
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

/// Installs the filters on the calling thread (threads and children created later inherit
/// them). Needs no_new_privs first.
pub(crate) fn apply_seccomp() -> Result<(), String> {
    for f in seccomp_filters()? {
        seccompiler::apply_filter(&f).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// Paths and ports the Landlock domain allows; everything else is refused. Execute is granted
/// only where `execute` says: not beneath read-only or read-write paths (a program copied into
/// a writable dir, or one among the libraries, does not run).
#[derive(Debug, Default)]
pub(crate) struct LandlockRules {
    /// Read only (files or dirs; missing ones are skipped).
    pub read_only: Vec<PathBuf>,
    /// Read and execute: the runtime binary, its loader, the programs a bundle may run.
    pub execute: Vec<PathBuf>,
    /// Everything a file system allows but execute, beneath these.
    pub read_write: Vec<PathBuf>,
    /// The manifest's data paths, already opened beneath the data dir (`hostfs`): granted by
    /// descriptor, never looked up by name again.
    pub data: Vec<crate::hostfs::DataPath>,
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
    let read = AccessFs::from_read(abi) & !AccessFs::Execute;
    let read_write = AccessFs::from_all(abi) & !AccessFs::Execute;
    let for_kind = |access: BitFlags<AccessFs>, is_dir: bool| {
        if is_dir {
            access
        } else {
            access & AccessFs::from_file(abi)
        }
    };
    let grants = rules
        .read_only
        .iter()
        .map(|p| (p, read))
        .chain(rules.execute.iter().map(|p| (p, AccessFs::from_read(abi))))
        .chain(rules.read_write.iter().map(|p| (p, read_write)));
    for (path, access) in grants {
        // These paths are the runner's (system dirs, binaries, dirs no instance can rename):
        // looked up by name.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let fd = PathFd::new(path).map_err(|e| format!("landlock: {}: {e}", path.display()))?;
        rs = rs
            .add_rule(PathBeneath::new(fd, for_kind(access, meta.is_dir())))
            .map_err(err)?;
    }
    for d in &rules.data {
        let access = if d.write { read_write } else { read };
        rs = rs
            .add_rule(PathBeneath::new(&d.fd, for_kind(access, d.is_dir)))
            .map_err(err)?;
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
        let filters = seccomp_filters().unwrap();
        let deny = &filters[0];
        // One comparison per denied syscall plus the clone flag checks: far more than a stub.
        assert!(
            deny.len() > DENIED.len() + CLONE_NEW.len(),
            "{}",
            deny.len()
        );
        assert!(filters.iter().all(|f| !f.is_empty()));
        assert_eq!(
            filters.len(),
            if cfg!(target_arch = "x86_64") { 4 } else { 3 }
        );
    }
}
