//! The crate's only `unsafe`: what the child does between fork and exec (join its cgroups for
//! `container` instances, cap its open files and file size, keep the descriptors it is to
//! inherit, the switch to an unprivileged uid/gid with no capabilities when the daemon is root
//! (`none`: the Deno process; `container`: bwrap, so its user namespace maps to that uid), and
//! for `none` no_new_privs, Landlock, seccomp and the connect gate's filter; `none` is placed in
//! its cgroup from the daemon, `process::Join`), the daemon's side of the connect gate (seccomp
//! notifications, pidfds, another process's socket), reading the daemon's own open-file limit,
//! probing the kernel for Landlock and seccomp, the signal handler of the container's PID 1
//! (`init`), and bringing up `lo` in a microVM guest (`guest`).
//!
//! Owns: the pre-exec hook and the raw calls behind safe wrappers. Must not: allocate, lock or
//! log after fork (only async-signal-safe calls on data prepared before fork), touch anything
//! but the child itself there, or decide anything (the gate's rules are in `connect_gate`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

use crate::RunAs;

/// What the child applies to itself before exec.
#[derive(Debug, Default)]
pub(crate) struct ChildSetup {
    /// `cgroup.procs` files to write "0" (the writer itself) into; empty when the daemon places
    /// the process after spawn.
    pub procs: Vec<CString>,
    /// RLIMIT_NOFILE, soft and hard.
    pub nofile: Option<u64>,
    /// RLIMIT_FSIZE, soft and hard (with RLIMIT_CORE 0: no core files either). Writing past it
    /// raises SIGXFSZ, which stops the process (`FileTooLarge`).
    pub fsize: Option<u64>,
    /// Descriptors to keep across exec (their close-on-exec flag is cleared in the child).
    pub inherit: Vec<OwnedFd>,
    /// The unprivileged identity to switch to (instances of a root daemon, either backend; the
    /// container's probe): after the cgroup and the limits (which need root), before Landlock
    /// and seccomp.
    pub run_as: Option<RunAs>,
    /// Applied last, after the cgroup (whose `cgroup.procs` Landlock would refuse).
    pub confine: Option<Confinement>,
}

/// Whether this process runs with effective uid 0 (only then can it switch identity).
pub fn effective_root() -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Kernel confinement a child applies to itself, built before fork (building allocates; the
/// child only makes the syscalls). no_new_privs always comes first: both need it.
#[derive(Debug, Default)]
pub(crate) struct Confinement {
    /// A Landlock ruleset with its rules added (`confine::landlock_ruleset`).
    pub landlock: Option<OwnedFd>,
    /// Seccomp filters in the kernel's format, installed in order.
    pub seccomp: Vec<Vec<libc::sock_filter>>,
    /// The connect gate's filter, installed last with a listener the child sends to the daemon
    /// (`connect_gate`).
    pub gate: Option<GateChild>,
}

/// The child's half of the connect gate: the filter that hands every `connect` to the daemon,
/// and the socket the child sends the filter's listener over, before exec.
#[derive(Debug)]
pub(crate) struct GateChild {
    pub filter: Vec<libc::sock_filter>,
    pub sender: OwnedFd,
}

/// `LANDLOCK_CREATE_RULESET_VERSION` (linux/landlock.h).
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The Landlock ABI version of the running kernel, or why there is none.
pub(crate) fn landlock_abi() -> Result<i64, std::io::Error> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag the kernel only returns a number;
    // no memory is read or written and no file descriptor is created.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// Whether the kernel takes seccomp filters that answer with an errno.
pub(crate) fn seccomp_errno_available() -> Result<(), std::io::Error> {
    seccomp_action_available(libc::SECCOMP_RET_ERRNO)
}

/// Whether the kernel hands syscalls to a supervisor (`SECCOMP_RET_USER_NOTIF`, Linux 5.0).
pub(crate) fn seccomp_user_notif_available() -> Result<(), std::io::Error> {
    seccomp_action_available(libc::SECCOMP_RET_USER_NOTIF)
}

fn seccomp_action_available(action: u32) -> Result<(), std::io::Error> {
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads the u32 we pass by pointer (alive for the call) and
    // changes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &action as *const u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The daemon's hard RLIMIT_NOFILE; a child cannot get more without CAP_SYS_RESOURCE.
// rlim_t is u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn nofile_hard_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some(r.rlim_max as u64)
}

/// Sets this process's RLIMIT_NOFILE to `nofile` and RLIMIT_FSIZE to `fsize` (soft and hard),
/// and RLIMIT_CORE to 0: what [`install`]'s hook sets, for a spare launcher about to exec.
// rlim_t is u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn limit_self(nofile: u64, fsize: u64) -> std::io::Result<()> {
    for (resource, n) in [
        (libc::RLIMIT_NOFILE, nofile),
        (libc::RLIMIT_FSIZE, fsize),
        (libc::RLIMIT_CORE, 0),
    ] {
        let r = libc::rlimit {
            rlim_cur: n as libc::rlim_t,
            rlim_max: n as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the rlimit we own and changes only this process's limits.
        if unsafe { libc::setrlimit(resource, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Installs the pre-exec hook on `cmd`.
///
/// The child always gets `PR_SET_PDEATHSIG(SIGKILL)`: if the daemon dies without shutting its
/// instances down (SIGKILL, a crash), the kernel kills them instead of leaving orphans that hold
/// memory and cgroups. The signal follows the *thread* that forked; tokio spawns from its worker
/// threads, which live as long as the runtime (the daemon never uses `block_in_place`).
pub(crate) fn install(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec. It only calls prctl, getppid,
    // sched_setscheduler, open, write, close, setrlimit, fcntl, setgroups, setresgid, setresuid,
    // capset (raw syscalls: they change this thread, the child's only one), landlock_restrict_self
    // and seccomp (async-signal-safe syscalls) on C strings, numbers, a file descriptor and
    // filter arrays built before the fork, and it allocates nothing: errors are built from errno with
    // `last_os_error`, and the `sock_fprog` lives on the stack and points into a Vec the closure
    // owns.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            batch_scheduling()?;
            for path in &setup.procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            if let Some(n) = setup.nofile {
                let r = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(n) = setup.fsize {
                let r = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in &setup.inherit {
                if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(id) = setup.run_as {
                drop_root(id)?;
                // The kernel clears the parent-death signal when the effective uid changes.
                die_with_parent(parent)?;
                // Also when confinement is off: no setuid binary may give root back.
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(c) = &setup.confine {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = &c.landlock {
                    let rc = libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32);
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for filter in &c.seccomp {
                    // Lengths were checked to fit u16 when the filters were built.
                    let prog = libc::sock_fprog {
                        len: filter.len() as libc::c_ushort,
                        filter: filter.as_ptr().cast_mut(),
                    };
                    let rc = libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0u32,
                        &prog as *const libc::sock_fprog,
                    );
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(gate) = &c.gate {
                    install_gate(gate)?;
                }
            }
            Ok(())
        });
    }
}

/// Installs the connect gate's filter with a listener and sends the listener to the daemon over
/// `gate.sender` (SCM_RIGHTS), then closes it here: only the daemon answers the notifications.
/// Once the daemon has received a notification, the waiting call can only be ended by a fatal
/// signal (`WAIT_KILLABLE_RECV`, Linux 5.19): a connect the daemon has made is never restarted.
/// Runs in the forked child: syscalls on stack data only.
fn install_gate(gate: &GateChild) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: gate.filter.len() as libc::c_ushort,
        filter: gate.filter.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp reads the sock_fprog on our stack, which points into the filter Vec the
    // closure owns (both alive for the call); it returns a new descriptor or -1.
    let install = |flags: libc::c_ulong| unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    let mut listener = install(
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    );
    if listener < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        listener = install(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER);
    }
    if listener < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let listener = listener as libc::c_int;
    // Room for one descriptor's control message, 8-byte aligned (CMSG_SPACE(4) is 24 here).
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    // SAFETY: sendmsg reads the msghdr, the one-byte iovec and the control buffer, all on this
    // stack frame and alive for the call; CMSG_FIRSTHDR/CMSG_DATA only compute addresses inside
    // `control`, which is large enough for CMSG_SPACE(sizeof(int)); close takes an integer.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            libc::close(listener);
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), listener);
        let sent = libc::sendmsg(gate.sender.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        let err = std::io::Error::last_os_error();
        libc::close(listener);
        if sent != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// Receives the one descriptor a child sent over `sock` (SCM_RIGHTS) before it exec'd; does not
/// wait (the child sends before exec, so it is there once the spawn has returned).
pub(crate) fn receive_fd(sock: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed these descriptors in our table for this message;
            // nobody else owns them (each is closed when dropped, the one we keep included).
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    match <[OwnedFd; 1]>::try_from(received) {
        Ok([fd]) => Ok(fd),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the child sent no descriptor, or more than one",
        )),
    }
}

/// `fd` registered with the runtime's reactor for readability.
pub(crate) fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is an open descriptor that it alone closes, and its `as_raw_fd`
    // returns that same descriptor for as long as the AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// One syscall a gated process is waiting in (`SECCOMP_IOCTL_NOTIF_RECV`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Notification {
    pub id: u64,
    /// The calling thread, in the daemon's pid namespace.
    pub tid: u32,
    pub nr: i64,
    pub args: [u64; 6],
}

/// Takes the next pending notification. Call only when the listener polls readable: with none
/// pending the ioctl waits. ENOENT: the caller was killed in between.
pub(crate) fn notif_recv(listener: BorrowedFd<'_>) -> std::io::Result<Notification> {
    // SAFETY: seccomp_notif is plain integers, valid all-zero (the kernel requires it zeroed).
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one seccomp_notif into `n`, which we own and which has the size
    // the request number encodes.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            &mut n as *mut libc::seccomp_notif,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Notification {
        id: n.id,
        tid: n.pid,
        nr: i64::from(n.data.nr),
        args: n.data.args,
    })
}

/// Whether notification `id` is still pending: its caller still waits in the syscall, so the
/// thread id it named still is that caller.
pub(crate) fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: the ioctl reads the u64 we own.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        )
    };
    rc == 0
}

/// Ends the waiting syscall of notification `id`: returning 0, or failing with `errno`.
pub(crate) fn notif_respond(listener: BorrowedFd<'_>, id: u64, errno: i32) -> std::io::Result<()> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: -errno,
        flags: 0,
    };
    // SAFETY: the ioctl reads the seccomp_notif_resp we own.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `PIDFD_THREAD` (linux/pidfd.h, Linux 6.9): a pidfd for a thread, not only a group leader.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// A pidfd for thread `tid` (`PIDFD_THREAD`), or for its thread group's leader `tgid` on kernels
/// before 6.9.
pub(crate) fn pidfd_open(tid: u32, tgid: impl FnOnce() -> Option<u32>) -> std::io::Result<OwnedFd> {
    let open = |pid: u32, flags: libc::c_uint| {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, flags) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        }
    };
    match open(tid, PIDFD_THREAD) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let leader = tgid().ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
            open(leader, 0)
        }
        r => r,
    }
}

/// A duplicate of descriptor `fd` of the process behind `pidfd` (the same open file).
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes integers and returns a new descriptor or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// The address family a socket was made with (`SO_DOMAIN`); ENOTSOCK for other files.
pub(crate) fn socket_domain(fd: BorrowedFd<'_>) -> std::io::Result<i32> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `domain` and updates `len`, both ours.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(domain)
}

/// `SCHED_BATCH` for the child and everything it starts (threads and children inherit it): an
/// instance that wakes (a request written to its socket) then never preempts the daemon, which
/// goes on with the requests it has in hand instead of switching to the instance for each. Its
/// CPU share is unchanged (same weight); what it loses is wake-up preemption of other tasks, so
/// under CPU contention between instances one waits up to a scheduler tick longer
/// (docs/performance.md, issue 14). Unprivileged processes may switch back; that only costs the
/// runner throughput. Runs in the forked child: one syscall.
fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param on our stack and changes only the
    // calling thread (pid 0), the child's only one.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then checks the daemon did not die before it was set (then
/// nobody would kill us). Runs in the forked child: syscalls only.
fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl with two integers and getppid touch no memory of ours.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): 64-bit sets, as two data structs.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Makes the calling (forked, single-threaded) child `id` with no capabilities: the bounding set
/// emptied (so no later exec can bring a capability back) and the ambient set cleared while it
/// still has CAP_SETPCAP, then supplementary groups, gid and uid (groups and gid first: they need
/// the root it is giving up). From root to non-root without SECBIT_KEEP_CAPS the kernel clears the
/// permitted and effective sets. Raw syscalls, not glibc's wrappers, which signal other threads.
fn drop_root(id: RunAs) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: prctl with integers and setgroups with a null list of length 0 read no memory of
    // ours; setresgid/setresuid take integers; capset reads the two stack arrays, alive for the
    // call and of the sizes version 3 defines (a header of two u32, two data structs of three
    // u32). Nothing is allocated.
    unsafe {
        // Every capability the kernel knows: PR_CAPBSET_DROP answers EINVAL past the last one.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                    break;
                }
                return Err(e);
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
        {
            return fail();
        }
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return fail();
        }
        if libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) != 0 {
            return fail();
        }
        if libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) != 0 {
            return fail();
        }
        // Inherited securebits (SECBIT_NO_SETUID_FIXUP, KEEP_CAPS) would keep the capabilities
        // across the uid change: empty every set explicitly (dropping is always allowed).
        let header: [u32; 2] = [LINUX_CAPABILITY_VERSION_3, 0];
        let none: [u32; 6] = [0; 6];
        if libc::syscall(libc::SYS_capset, header.as_ptr(), none.as_ptr()) != 0 {
            return fail();
        }
        // Belt and braces: were root still reachable (a kernel that kept the capabilities), stop.
        if libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Gives `signals` a (no-op) handler. For PID 1 of a pid namespace the kernel drops signals
/// from outside whose disposition is the default, even when they are blocked and waited for
/// with `sigwait`; with a handler installed they are delivered (and `sigwait` takes them
/// before the handler could run, as they stay blocked).
pub(crate) fn catch_signals(signals: &[nix::sys::signal::Signal]) -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in signals {
        // SAFETY: the handler is an empty function, async-signal-safe by construction; it
        // replaces the default disposition only (no previous handler is relied upon).
        unsafe { sigaction(*s, &action) }?;
    }
    Ok(())
}

/// Brings the loopback interface up (SIOCSIFFLAGS with IFF_UP): in a microVM guest nothing else
/// does, and the egress forwarder binds 127.0.0.1.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket() takes no pointers; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
