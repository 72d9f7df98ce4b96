//! The host side of hybrid vsock, as Firecracker and `vhost-device-vsock` (QEMU's second VMM
//! path) both expose it on one Unix socket (`uds`):
//!
//! - **host → guest:** connect to `uds`, write `CONNECT <port>\n`, read `OK <n>\n`, then the
//!   stream is the guest's connection on `<port>` (`n` is the host-side port the VMM assigned; it
//!   is not needed). A VMM with no guest listener on `<port>` closes the connection instead.
//! - **guest → host:** a guest connecting to CID 2, port `p`, lands on the Unix socket
//!   `<uds>_<p>`, where the host listens ([`guest_port_path`]).
//!
//! The reply is read byte by byte up to its newline, so no byte of the guest's stream is taken.
//! Must not: connect to AF_VSOCK itself (the host's CID 2 is the outer hypervisor on a machine
//! that is itself a guest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest `OK <n>\n` reply accepted (`OK ` + a u32 + newline, with room).
const MAX_REPLY: usize = 32;

/// Why a vsock connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// the VMM's vsock socket could not be connected to
    #[error("could not connect to the VM's vsock socket {path}: {reason}; is the VM running?")]
    Socket { path: PathBuf, reason: String },
    /// the VMM closed the connection: nothing in the guest listens on the port
    #[error("nothing in the guest listens on vsock port {port} (the VMM closed the connection)")]
    NoListener { port: u32 },
    /// the VMM answered something other than `OK <n>`
    #[error("the VMM answered {reply:?} to CONNECT {port}, not \"OK <port>\"")]
    BadReply { port: u32, reply: String },
    /// no complete answer within the deadline
    #[error("no answer to CONNECT {port} within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
}

/// Opens a connection to the guest's `port` through the VMM's vsock socket `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let run = async {
        let s = UnixStream::connect(uds)
            .await
            .map_err(|e| VsockError::Socket {
                path: uds.to_path_buf(),
                reason: e.to_string(),
            })?;
        exchange(s, port).await
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| VsockError::Timeout { port, timeout })?
}

/// The `CONNECT <port>` / `OK <n>` exchange on `s`, a fresh connection to the VMM's vsock
/// socket (for a caller that opened it its own way, e.g. by a descriptor).
pub async fn handshake(
    s: UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    tokio::time::timeout(timeout, exchange(s, port))
        .await
        .map_err(|_| VsockError::Timeout { port, timeout })?
}

async fn exchange(mut s: UnixStream, port: u32) -> Result<UnixStream, VsockError> {
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|_| VsockError::NoListener { port })?;
    let mut reply = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(0) | Err(_) if reply.is_empty() => return Err(VsockError::NoListener { port }),
            Ok(0) | Err(_) => {
                return Err(VsockError::BadReply {
                    port,
                    reply: String::from_utf8_lossy(&reply).into_owned(),
                })
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if reply.len() >= MAX_REPLY => {
                return Err(VsockError::BadReply {
                    port,
                    reply: String::from_utf8_lossy(&reply).into_owned(),
                })
            }
            Ok(_) => reply.push(b[0]),
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let ok = text
        .strip_prefix("OK ")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(s)
    } else {
        Err(VsockError::BadReply { port, reply: text })
    }
}

/// Where the host listens for the guest's connections to CID 2, `port`: `<uds>_<port>`.
pub fn guest_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A VMM stand-in on `dir/v.sock`: checks the CONNECT line, answers `reply` (raw), then
    /// sends `after` as the guest's first bytes.
    async fn vmm(dir: &Path, reply: &'static [u8], after: &'static [u8]) -> PathBuf {
        let path = dir.join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 1025");
                let _ = s.write_all(reply).await;
                let _ = s.write_all(after).await;
                // Hold the connection a moment, as a guest would.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        path
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn ok_opens_the_stream_and_keeps_the_guests_bytes() {
        let d = tempfile::tempdir().unwrap();
        // The guest's first bytes arrive in the same write as the reply: none may be lost.
        let uds = vmm(d.path(), b"OK 1073741824\n", b"hello").await;
        let mut s = connect(&uds, 1025, T).await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_closed_connection_means_no_listener_and_junk_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let uds = vmm(d.path(), b"", b"").await;
        assert!(matches!(
            connect(&uds, 1025, T).await,
            Err(VsockError::NoListener { port: 1025 })
        ));
        for (i, reply) in [&b"ERR nope\n"[..], b"OK \n", b"OK 12x\n", b"OK 1"]
            .into_iter()
            .enumerate()
        {
            let d = tempfile::tempdir().unwrap();
            let r: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
            let uds = vmm(d.path(), r, b"").await;
            let e = connect(&uds, 1025, T).await.unwrap_err();
            assert!(matches!(e, VsockError::BadReply { .. }), "{i}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let uds = vmm(d.path(), &[b'O'; 64], b"").await;
        assert!(matches!(
            connect(&uds, 1025, T).await,
            Err(VsockError::BadReply { .. })
        ));
    }

    #[tokio::test]
    async fn silence_times_out_and_a_missing_socket_says_so() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let _held = l.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let e = connect(&path, 1025, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Timeout { .. }), "{e}");
        let e = connect(&d.path().join("none.sock"), 1025, T)
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Socket { .. }), "{e}");
    }

    #[test]
    fn guest_ports_land_beside_the_socket() {
        assert_eq!(
            guest_port_path(Path::new("/w/v.sock"), 3128),
            PathBuf::from("/w/v.sock_3128")
        );
    }
}
