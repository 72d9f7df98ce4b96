//! Keep-alive HTTP/1.1 connections from at-rund to one instance's shim, over its Unix socket.
//!
//! Owns: connecting, the handshake, and keeping connections whose last response ended for the
//! next call, so a warm call costs no connect, accept or handshake on either side. A streamed
//! response holds its connection until its last byte; a concurrent call takes another one (or
//! opens a new one). Must not: interpret responses or tell a crash from a failure (the caller
//! does, from the error and the process's exit).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The sending half of one connection to the shim.
pub(crate) type ShimSender = SendRequest<crate::Body>;

/// Idle connections kept per instance; more than its concurrency never pile up, this is a bound
/// for bundles with a very high one.
const MAX_IDLE: usize = 64;
/// How long a kept connection may take to become ready for its next request (its connection
/// task has to run once after the previous response); a slower one is dropped, not waited for.
const READY_WAIT: Duration = Duration::from_millis(50);

/// The connections of one instance.
pub(crate) struct ShimConns {
    socket: PathBuf,
    /// The socket's inode, opened at the first connect without following a symlink
    /// (`hostfs::open_socket`): every connection goes to it, whatever the name in the work dir
    /// (which the instance can write) points to by then.
    opened: Mutex<Option<std::sync::Arc<std::os::fd::OwnedFd>>>,
    idle: Mutex<Vec<ShimSender>>,
}

impl ShimConns {
    pub(crate) fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            opened: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn socket_fd(&self) -> Result<std::sync::Arc<std::os::fd::OwnedFd>, String> {
        let mut g = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = &*g {
            return Ok(fd.clone());
        }
        let fd = std::sync::Arc::new(crate::hostfs::open_socket(&self.socket)?);
        *g = Some(fd.clone());
        Ok(fd)
    }

    fn take_idle(&self) -> Option<ShimSender> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps a connection whose response has ended, for the next call.
    pub(crate) fn put_back(&self, sender: ShimSender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Sends `req` on a kept connection, or on a new one. A request that never left because its
    /// kept connection had closed in the meantime goes out again on a new connection; one that
    /// left and got no answer is an error (it is not sent twice).
    pub(crate) async fn send(
        &self,
        req: http::Request<crate::Body>,
    ) -> Result<(http::Response<hyper::body::Incoming>, ShimSender), String> {
        let mut req = req;
        while let Some(mut sender) = self.take_idle() {
            match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                Ok(Ok(())) => {}
                // Closed (the instance went away or the shim closed it), or not ready in time.
                _ => continue,
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(e.into_error().to_string()),
                },
            }
        }
        let mut sender = self.connect().await?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok((res, sender))
    }

    async fn connect(&self) -> Result<ShimSender, String> {
        let fd = self.socket_fd()?;
        let stream = tokio::net::UnixStream::connect(crate::hostfs::socket_fd_path(&fd))
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // Ends when the connection closes: the shim closed it, the process died, or every
        // handle to it (the kept sender, a response in flight) was dropped.
        tokio::spawn(conn);
        Ok(sender)
    }
}
