//! The seccomp filters, attacked from inside a real instance in both modes: a bundle with `ffi`
//! calls the kernel directly (tests/bundles/syscalls.js) and each refused call must answer its
//! errno — EPERM for refused syscalls (and their x32 twins), EAFNOSUPPORT for refused socket
//! families — while the calls a runtime needs still work. The errno is chosen where it proves
//! the filter answered: without it most of these calls fail differently (EBADF, EINVAL, ENOSYS)
//! or succeed.

mod common;

use common::*;
use nix::libc;

const EPERM: i64 = 1;
const EAFNOSUPPORT: i64 = 97;

/// One attempt: the endpoint, its query, and the errno it must get (0: it must work).
struct Probe {
    what: &'static str,
    endpoint: &'static str,
    query: Vec<(&'static str, String)>,
    errno: i64,
}

/// `other`: the pid of another instance (of the same uid in `none` mode).
fn probes(other: u32) -> Vec<Probe> {
    let raw = |what, nr: i64, args: &[i64], errno| Probe {
        what,
        endpoint: "raw",
        query: std::iter::once(("nr", nr.to_string()))
            .chain(
                ["a0", "a1", "a2"]
                    .into_iter()
                    .zip(args.iter().map(i64::to_string)),
            )
            .collect(),
        errno,
    };
    let socket = |what, family: i64, kind: i64, protocol: i64, errno| Probe {
        what,
        endpoint: "socket",
        query: vec![
            ("family", family.to_string()),
            ("type", kind.to_string()),
            ("protocol", protocol.to_string()),
        ],
        errno,
    };
    let mut v = vec![
        // Without the filter: EBADF (no such pidfd).
        raw("pidfd_getfd", libc::SYS_pidfd_getfd, &[-1, 0, 0], EPERM),
        raw(
            "kexec_file_load",
            libc::SYS_kexec_file_load,
            &[-1, -1, 0],
            EPERM,
        ),
        // Without the filter: EBADF.
        raw("mount_setattr", libc::SYS_mount_setattr, &[-1, 0, 0], EPERM),
        raw("iopl", libc::SYS_iopl, &[3], EPERM),
        raw("ioperm", libc::SYS_ioperm, &[0x80, 1, 1], EPERM),
        // Without the filter: EFAULT (a null timex).
        raw("clock_adjtime", libc::SYS_clock_adjtime, &[0, 0], EPERM),
        raw("modify_ldt", libc::SYS_modify_ldt, &[0, 0, 0], EPERM),
        // Without the filter: EFAULT.
        raw("io_uring_setup", libc::SYS_io_uring_setup, &[1, 0], EPERM),
        raw("ptrace", libc::SYS_ptrace, &[0, 0, 0], EPERM),
        // Without the filter: the process id.
        raw("getpid", libc::SYS_getpid, &[], 0),
        socket(
            "AF_NETLINK",
            libc::AF_NETLINK.into(),
            libc::SOCK_RAW.into(),
            0,
            EAFNOSUPPORT,
        ),
        socket(
            "AF_ALG",
            libc::AF_ALG.into(),
            libc::SOCK_SEQPACKET.into(),
            0,
            EAFNOSUPPORT,
        ),
        socket(
            "AF_VSOCK",
            libc::AF_VSOCK.into(),
            libc::SOCK_STREAM.into(),
            0,
            EAFNOSUPPORT,
        ),
        socket(
            "AF_PACKET",
            libc::AF_PACKET.into(),
            libc::SOCK_RAW.into(),
            0,
            EAFNOSUPPORT,
        ),
        socket(
            "AF_KEY",
            libc::AF_KEY.into(),
            libc::SOCK_RAW.into(),
            2,
            EAFNOSUPPORT,
        ),
        // Without the filter: a socket (UDP needs no privilege).
        socket(
            "UDP over IPv4",
            libc::AF_INET.into(),
            libc::SOCK_DGRAM.into(),
            0,
            EPERM,
        ),
        socket(
            "UDP over IPv6",
            libc::AF_INET6.into(),
            libc::SOCK_DGRAM.into(),
            0,
            EPERM,
        ),
        socket(
            "UDP, non-blocking",
            libc::AF_INET.into(),
            (libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC).into(),
            0,
            EPERM,
        ),
        // ICMP echo ("ping") sockets, and raw ones.
        socket(
            "ICMP datagram",
            libc::AF_INET.into(),
            libc::SOCK_DGRAM.into(),
            libc::IPPROTO_ICMP.into(),
            EPERM,
        ),
        socket(
            "raw IPv4",
            libc::AF_INET.into(),
            libc::SOCK_RAW.into(),
            libc::IPPROTO_TCP.into(),
            EPERM,
        ),
        socket(
            "AF_INET",
            libc::AF_INET.into(),
            libc::SOCK_STREAM.into(),
            0,
            0,
        ),
        socket(
            "AF_INET6",
            libc::AF_INET6.into(),
            libc::SOCK_STREAM.into(),
            0,
            0,
        ),
        socket(
            "AF_UNIX",
            libc::AF_UNIX.into(),
            libc::SOCK_STREAM.into(),
            0,
            0,
        ),
        socket(
            "AF_UNIX seqpacket",
            libc::AF_UNIX.into(),
            libc::SOCK_SEQPACKET.into(),
            0,
            0,
        ),
        // Without the filter: a socket (it could send to any named datagram socket).
        socket(
            "AF_UNIX datagram",
            libc::AF_UNIX.into(),
            (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC).into(),
            0,
            EPERM,
        ),
        // Without the filter: EFAULT (a null pair).
        raw(
            "socketpair of Unix datagram sockets",
            libc::SYS_socketpair,
            &[libc::AF_UNIX.into(), libc::SOCK_DGRAM.into(), 0],
            EPERM,
        ),
        Probe {
            what: "mknod of a character device",
            endpoint: "mknod",
            query: vec![
                ("path", "d/dev0".into()),
                ("mode", (libc::S_IFCHR | 0o600).to_string()),
            ],
            errno: EPERM,
        },
        Probe {
            what: "mknod of a block device",
            endpoint: "mknod",
            query: vec![
                ("path", "d/dev1".into()),
                ("mode", (libc::S_IFBLK | 0o600).to_string()),
            ],
            errno: EPERM,
        },
        Probe {
            what: "mknod of a FIFO",
            endpoint: "mknod",
            query: vec![
                ("path", "d/fifo".into()),
                ("mode", (libc::S_IFIFO | 0o600).to_string()),
            ],
            errno: 0,
        },
    ];
    // Another instance's process: in `none` the same uid, so only the filter stops these
    // (without it they succeed or fail on their arguments); the filter answers before the
    // kernel looks the pid up, in both modes.
    let other = i64::from(other);
    let on_other = |what, nr: i64, args: &[i64]| raw(what, nr, args, EPERM);
    v.extend([
        on_other(
            "prlimit64 of another instance",
            libc::SYS_prlimit64,
            &[other, libc::RLIMIT_NOFILE.into(), 0],
        ),
        on_other(
            "setpriority of another instance",
            libc::SYS_setpriority,
            &[libc::PRIO_PROCESS.into(), other, 19],
        ),
        on_other(
            "sched_setaffinity of another instance",
            libc::SYS_sched_setaffinity,
            &[other, 0, 0],
        ),
        on_other(
            "ioprio_set of another instance",
            libc::SYS_ioprio_set,
            &[1, other, 0],
        ),
        // The caller's own: still allowed.
        raw(
            "prlimit64 of itself",
            libc::SYS_prlimit64,
            &[0, libc::RLIMIT_NOFILE.into(), 0],
            0,
        ),
    ]);
    if cfg!(target_arch = "x86_64") {
        const X32: i64 = 0x4000_0000;
        // x32's getpid and ptrace: without the filter ENOSYS (x32 off) or the call itself.
        v.push(raw("x32 getpid", X32 | 39, &[], EPERM));
        v.push(raw("x32 ptrace", X32 | 521, &[0, 0, 0], EPERM));
    }
    v
}

async fn suite(mode: Mode) {
    let Some(env) = Env::new(if mode == Mode::None { "sn" } else { "sc" }, mode).await else {
        return;
    };
    let mut spec = env.spec("sys", &bundle("syscalls.js"));
    spec.permissions.ffi = true;
    spec.permissions.write = vec!["d".into()];
    std::fs::create_dir_all(env.root.join("data/d")).unwrap();
    let inst = env.warm(spec).await;
    let other = env.warm(env.spec("other", &hello())).await;
    let other_pid = other.stats().pid.expect("the other instance runs");
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for p in probes(other_pid) {
        let query: Vec<(&str, &str)> = p.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = call_json(&*inst, q(p.endpoint, &query)).await;
        let errno = got.as_ref().ok().and_then(|v| v["errno"].as_i64());
        table.push(format!("{:<30} {got:?}", p.what));
        if errno != Some(p.errno) {
            failures.push(format!(
                "{}: expected errno {}, got {got:?}",
                p.what, p.errno
            ));
        }
    }
    inst.shutdown().await;
    other.shutdown().await;
    eprintln!("mode {mode:?}:\n  {}", table.join("\n  "));
    assert!(failures.is_empty(), "{mode:?}:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn refused_syscalls_and_socket_families_in_none_mode() {
    suite(Mode::None).await;
}

#[tokio::test]
async fn refused_syscalls_and_socket_families_in_container_mode() {
    suite(Mode::Container).await;
}
