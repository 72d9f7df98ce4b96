//! The connect gate of `none` instances. A seccomp filter (`confine::connect_gate_filter`) hands
//! every `connect` a `none` instance makes (Deno, its threads, the programs it runs) to the
//! daemon, which answers it here.
//!
//! Why: Landlock (ABI ≤ 7) has no rule for connecting to a named Unix socket, and a plain filter
//! cannot read the address, so without the gate a bundle with `ffi` could connect to any socket
//! its uid may write (D-Bus's system bus is 0666; a runner that is not root shares its uid with
//! its instances). The gate refuses, with EACCES, every socket that is not TCP/IP and every
//! address but the egress proxy's. The connection it allows it makes itself, on the socket it
//! inspected (a duplicate, `pidfd_getfd`), to the address it read: nothing the instance changes
//! after the check (the address in its memory, what its descriptor number names) can redirect
//! it. Letting the kernel continue the call (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`) would re-read
//! both. Landlock's TCP rule (the proxy's port only) stays beneath, and UDP, raw IP, Unix
//! datagram sockets and TCP Fast Open, which connect without `connect`, are refused by the
//! other filters. Each connection it makes it announces to the proxy (`SourceAnnouncer`) before
//! the caller can send on it, so the instance's proxy token counts on that connection only.
//!
//! Owns: the verdict on each connect and the daemon's task per instance that answers them. Must
//! not: make raw syscalls (`sys` does) or decide anything about the egress itself (the proxy
//! checks hosts, ports and addresses; the gate only makes sure the proxy is the one way out).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use atrund_egress::SourceAnnouncer;
use nix::libc;
use tokio::io::unix::AsyncFd;

use crate::sys::{self, Notification};
use crate::{confine, SandboxError};

/// The largest address a `connect` may pass (`struct sockaddr_storage`).
const MAX_SOCKADDR: usize = 128;

/// The daemon's half before the spawn: where the child sends its listener, and the one address
/// the instance may connect to.
#[derive(Debug)]
pub(crate) struct GatePending {
    receiver: OwnedFd,
    proxy: Option<SocketAddr>,
    announcer: Option<SourceAnnouncer>,
}

/// Both halves of a gate for one instance: the child's (filter and sending socket, for
/// `sys::Confinement`) and the daemon's. `proxy`: the egress proxy's address, the only one the
/// instance may connect to (`None`: nowhere).
pub(crate) fn prepare(proxy: Option<SocketAddr>) -> io::Result<(sys::GateChild, GatePending)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (receiver, sender) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    Ok((
        sys::GateChild {
            filter: confine::connect_gate_filter(),
            sender,
        },
        GatePending {
            receiver,
            proxy,
            announcer: None,
        },
    ))
}

/// The running gate of one instance; dropped with it (the task also ends by itself once every
/// process under the filter has exited).
#[derive(Debug)]
pub(crate) struct ConnectGate {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GatePending {
    /// Announces each connection the gate makes to the proxy through `announcer`.
    pub(crate) fn announcing(mut self, announcer: SourceAnnouncer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// Takes the listener the spawned child sent and starts answering its connects.
    pub(crate) fn open(self, instance: &Arc<str>) -> Result<ConnectGate, SandboxError> {
        let listener = sys::receive_fd(self.receiver.as_fd()).map_err(|e| {
            SandboxError::StartFailed(format!(
                "the instance did not hand over its connect gate ({e})"
            ))
        })?;
        let listener = sys::async_fd(listener).map_err(|e| {
            SandboxError::StartFailed(format!("the connect gate cannot be polled ({e})"))
        })?;
        let to = Target {
            proxy: self.proxy,
            announcer: self.announcer,
        };
        let task = tokio::spawn(serve(Arc::new(listener), Arc::new(to), instance.clone()));
        Ok(ConnectGate { task })
    }
}

/// The one address an instance may connect to, and who hears of each connection made to it.
struct Target {
    proxy: Option<SocketAddr>,
    announcer: Option<SourceAnnouncer>,
}

/// Answers notifications until every process under the filter has exited (the listener hangs
/// up). The listener is edge-triggered here: after each wake-up every pending notification is
/// taken (a zero-timeout `poll` says whether one is left) before waiting again.
async fn serve(listener: Arc<AsyncFd<OwnedFd>>, to: Arc<Target>, id: Arc<str>) {
    loop {
        let mut guard = match listener.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(instance = &*id, error = %e, "connect gate: polling failed; the instance's connects now fail");
                return;
            }
        };
        if guard.ready().is_read_closed() {
            return;
        }
        loop {
            match pending(listener.get_ref().as_fd()) {
                Pending::Notification => {}
                Pending::None => break,
                Pending::HungUp => return,
            }
            let n = match sys::notif_recv(listener.get_ref().as_fd()) {
                Ok(n) => n,
                // The caller was killed between the poll and here.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    tracing::error!(instance = &*id, error = %e, "connect gate: cannot take a notification");
                    return;
                }
            };
            let fd = listener.get_ref().as_fd();
            match decide(fd, &n, to.proxy) {
                Ok(Connect { sock, dest }) if blocks(&sock) => {
                    // A blocking socket's connect waits for the peer: not on the runtime's
                    // threads. A non-blocking one (Deno's) returns at once (EINPROGRESS).
                    let (listener, id, to) = (listener.clone(), id.clone(), to.clone());
                    tokio::task::spawn_blocking(move || {
                        let r = connect(&sock, dest, to.announcer.as_ref(), &id);
                        respond(listener.get_ref().as_fd(), &n, r, &id)
                    });
                }
                Ok(Connect { sock, dest }) => {
                    let r = connect(&sock, dest, to.announcer.as_ref(), &id);
                    respond(fd, &n, r, &id)
                }
                Err(refusal) => respond(fd, &n, Err(refusal), &id),
            }
        }
        guard.clear_ready();
    }
}

enum Pending {
    Notification,
    None,
    HungUp,
}

fn pending(listener: BorrowedFd<'_>) -> Pending {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Pending::None,
        Ok(_) => {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.contains(PollFlags::POLLIN) {
                Pending::Notification
            } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                Pending::HungUp
            } else {
                Pending::None
            }
        }
        Err(nix::errno::Errno::EINTR) => Pending::None,
        Err(_) => Pending::HungUp,
    }
}

/// Why a connect gets no connection.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The caller is gone (killed while waiting): there is no one to answer.
    Gone,
    /// Fail the call with this errno.
    Errno(i32),
}

/// An allowed connect: the caller's socket (a duplicate) and the address it is to reach.
struct Connect {
    sock: OwnedFd,
    dest: SocketAddr,
}

/// Whether the socket is in blocking mode (its file status flags are shared with the caller's).
fn blocks(sock: &OwnedFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(sock, FcntlArg::F_GETFL)
        .map(|f| !OFlag::from_bits_truncate(f).contains(OFlag::O_NONBLOCK))
        .unwrap_or(true)
}

/// Connects the caller's socket and, once it has its local address (at once, also when the
/// connect is still in progress), announces that address. The caller is still waiting for the
/// answer, so it cannot send before the announcement.
fn connect(
    sock: &OwnedFd,
    dest: SocketAddr,
    announcer: Option<&SourceAnnouncer>,
    id: &str,
) -> Result<(), Refusal> {
    use nix::sys::socket::{getsockname, SockaddrStorage};
    let r = nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(dest));
    if let (Ok(()) | Err(nix::errno::Errno::EINPROGRESS), Some(a)) = (r, announcer) {
        match getsockname::<SockaddrStorage>(sock.as_raw_fd())
            .ok()
            .and_then(|s| inet_of(&s))
        {
            Some(local) => a.announce(local),
            // The proxy then refuses the connection's requests (EgressSourceNotAnnounced).
            None => tracing::warn!(
                instance = id,
                "connect gate: a connection's local address is unknown; the proxy will refuse it"
            ),
        }
    }
    r.map_err(|e| Refusal::Errno(e as i32))
}

fn inet_of(s: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

fn respond(listener: BorrowedFd<'_>, n: &Notification, result: Result<(), Refusal>, id: &str) {
    let errno = match result {
        Ok(()) => 0,
        Err(Refusal::Gone) => return,
        Err(Refusal::Errno(e)) => {
            if e == libc::EACCES {
                tracing::debug!(instance = id, "connect gate: a connect was refused");
            }
            e
        }
    };
    if let Err(e) = sys::notif_respond(listener, n.id, errno) {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(instance = id, error = %e, "connect gate: cannot answer a connect");
        }
    }
}

fn errno_of(e: io::Error, otherwise: i32) -> Refusal {
    Refusal::Errno(e.raw_os_error().unwrap_or(otherwise))
}

/// Decides one `connect`: the socket and address to connect, or why not.
fn decide(
    listener: BorrowedFd<'_>,
    n: &Notification,
    proxy: Option<SocketAddr>,
) -> Result<Connect, Refusal> {
    if n.nr != libc::SYS_connect {
        return Err(Refusal::Errno(libc::EPERM));
    }
    let pidfd = sys::pidfd_open(n.tid, || thread_group(n.tid)).map_err(|_| Refusal::Gone)?;
    // Still waiting: the thread id was the caller's when the pidfd was made.
    if !sys::notif_id_valid(listener, n.id) {
        return Err(Refusal::Gone);
    }
    // The kernel reads the descriptor and the length as ints.
    let fd = n.args[0] as u32 as i32;
    let sock = sys::pidfd_getfd(pidfd.as_fd(), fd).map_err(|e| errno_of(e, libc::EBADF))?;
    let domain = sys::socket_domain(sock.as_fd()).map_err(|e| errno_of(e, libc::ENOTSOCK))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(Refusal::Errno(libc::EACCES));
    }
    let len = n.args[2] as u32 as usize;
    if len > MAX_SOCKADDR {
        return Err(Refusal::Errno(libc::EINVAL));
    }
    let mut raw = [0u8; MAX_SOCKADDR];
    read_memory(n.tid, n.args[1], &mut raw[..len])?;
    // The memory read was the caller's (its thread id cannot have been reused while it waits).
    if !sys::notif_id_valid(listener, n.id) {
        return Err(Refusal::Gone);
    }
    let dest = verdict(&raw[..len], proxy)?;
    Ok(Connect { sock, dest })
}

/// The address to connect to: the proxy's, when `raw` names exactly it; EACCES otherwise (as
/// Landlock answers a refused TCP connect).
fn verdict(raw: &[u8], proxy: Option<SocketAddr>) -> Result<SocketAddr, Refusal> {
    match (parse_inet(raw), proxy) {
        (Some(dest), Some(proxy)) if dest == proxy => Ok(dest),
        _ => Err(Refusal::Errno(libc::EACCES)),
    }
}

/// A `sockaddr_in` or `sockaddr_in6` as the caller laid it out (family in host order, port and
/// address in network order).
fn parse_inet(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET if raw.len() >= 16 => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 if raw.len() >= 28 => {
            let flow = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Reads the address from the caller's memory.
fn read_memory(tid: u32, addr: u64, buf: &mut [u8]) -> Result<(), Refusal> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    if buf.is_empty() {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(tid).map_err(|_| Refusal::Gone)?);
    let want = buf.len();
    let remote = [RemoteIoVec {
        base: usize::try_from(addr).map_err(|_| Refusal::Errno(libc::EFAULT))?,
        len: want,
    }];
    match process_vm_readv(pid, &mut [io::IoSliceMut::new(buf)], &remote) {
        Ok(n) if n == want => Ok(()),
        Ok(_) | Err(nix::errno::Errno::EFAULT) => Err(Refusal::Errno(libc::EFAULT)),
        Err(nix::errno::Errno::ESRCH) => Err(Refusal::Gone),
        Err(e) => Err(Refusal::Errno(e as i32)),
    }
}

/// The thread group (process) of thread `tid`, from `/proc/<tid>/status`.
fn thread_group(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    #[test]
    fn only_the_proxy_address_is_connected() {
        let proxy: SocketAddr = "127.0.0.1:3128".parse().unwrap();
        assert_eq!(verdict(&v4([127, 0, 0, 1], 3128), Some(proxy)), Ok(proxy));
        for (raw, why) in [
            (v4([127, 0, 0, 1], 3129), "another port"),
            (v4([10, 0, 0, 1], 3128), "another host, the proxy's port"),
            (v4([127, 0, 0, 1], 3128)[..15].to_vec(), "truncated"),
            (Vec::new(), "empty"),
        ] {
            assert_eq!(
                verdict(&raw, Some(proxy)),
                Err(Refusal::Errno(libc::EACCES)),
                "{why}"
            );
        }
        assert_eq!(
            verdict(&v4([127, 0, 0, 1], 3128), None),
            Err(Refusal::Errno(libc::EACCES)),
            "no proxy: nowhere"
        );
        // A Unix address is never parsed as an IP one.
        let mut unix = vec![0u8; 110];
        unix[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        unix[2..9].copy_from_slice(b"/run/x\0");
        assert_eq!(parse_inet(&unix), None);
    }

    #[test]
    fn ipv6_addresses_parse_with_flow_and_scope() {
        let mut b = vec![0u8; 28];
        b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&8080u16.to_be_bytes());
        b[23] = 1;
        assert_eq!(parse_inet(&b), Some("[::1]:8080".parse().unwrap()));
        b[24] = 2;
        assert_ne!(parse_inet(&b), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(parse_inet(&b[..27]), None);
    }

    #[test]
    fn thread_groups_are_read_from_proc() {
        assert_eq!(thread_group(std::process::id()), Some(std::process::id()));
        assert_eq!(thread_group(u32::MAX), None);
    }
}
