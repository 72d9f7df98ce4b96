//! Keep-alive HTTP/1.1 connections from at-rund to one instance's shim, over its Unix socket.
//!
//! Owns: connecting, and keeping connections whose last exchange ended cleanly for the next
//! call, so a warm call costs no connect or accept on either side (the HTTP/1.1 itself is
//! `shim_http`'s). A streamed
//! response holds its connection until its last byte; a concurrent call takes another one (or
//! opens a new one). Must not: interpret responses or tell a crash from a failure (the caller
//! does, from the error and the process's exit).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shim_http::{ShimBody, ShimConn, ShimHttpError};

/// Idle connections kept per instance; more than its concurrency never pile up, this is a bound
/// for bundles with a very high one.
const MAX_IDLE: usize = 64;
/// A connection idle for longer is checked for a close by the shim (one non-blocking read)
/// before it carries a call; a younger one is taken as it is. The shim closes none of its own
/// accord (Deno keeps an idle connection open; measured past 70 s), so this only spares a call
/// the error of a connection that died with a shim that has been replaced meanwhile.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long the VMM may take to answer a `CONNECT` (a microVM under emulation is slow).
const VSOCK_HANDSHAKE: Duration = Duration::from_secs(10);

/// The connections of one instance.
pub(crate) struct ShimConns {
    socket: PathBuf,
    /// A microVM's: `socket` is its VMM's hybrid vsock socket, and each connection asks for
    /// this guest port (`CONNECT <port>`) before it carries HTTP.
    vsock_port: Option<u32>,
    /// The socket's inode, opened at the first connect without following a symlink
    /// (`hostfs::open_socket`): every connection goes to it, whatever the name in the work dir
    /// (which the instance can write) points to by then.
    opened: Mutex<Option<std::sync::Arc<std::os::fd::OwnedFd>>>,
    /// Kept connections, each with the time it was put back.
    idle: Mutex<Vec<(ShimConn, Instant)>>,
}

impl ShimConns {
    pub(crate) fn new(socket: PathBuf, vsock_port: Option<u32>) -> Self {
        Self {
            socket,
            vsock_port,
            opened: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn socket_fd(&self) -> Result<std::sync::Arc<std::os::fd::OwnedFd>, ShimHttpError> {
        let mut g = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = &*g {
            return Ok(fd.clone());
        }
        let fd = crate::hostfs::open_socket(&self.socket)
            .map_err(|e| ShimHttpError::Io(std::io::Error::other(e)))?;
        let fd = std::sync::Arc::new(fd);
        *g = Some(fd.clone());
        Ok(fd)
    }

    fn take_idle(&self) -> Option<ShimConn> {
        loop {
            let (conn, since) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if since.elapsed() < CHECK_AFTER || !conn.is_closed() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose exchange has ended cleanly, for the next call.
    pub(crate) fn put_back(&self, conn: ShimConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Sends `req` on a kept connection, or on a new one, and waits for the response head. The
    /// response body holds the connection; [`ShimBody::take_reusable`] gives it back for
    /// [`put_back`](Self::put_back). A request is never sent twice.
    pub(crate) async fn send(
        &self,
        req: http::Request<crate::Body>,
    ) -> Result<http::Response<ShimBody>, ShimHttpError> {
        let conn = match self.take_idle() {
            Some(c) => c,
            None => self.connect().await?,
        };
        conn.send(req).await
    }

    async fn connect(&self) -> Result<ShimConn, ShimHttpError> {
        let fd = self.socket_fd()?;
        let mut stream =
            tokio::net::UnixStream::connect(crate::hostfs::socket_fd_path(&fd)).await?;
        if let Some(port) = self.vsock_port {
            stream = atrund_microvm::vsock::handshake(stream, port, VSOCK_HANDSHAKE)
                .await
                .map_err(|e| ShimHttpError::Io(std::io::Error::other(e)))?;
        }
        Ok(ShimConn::new(stream))
    }
}
