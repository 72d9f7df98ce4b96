//! The runner's HTTP/1.1 accept loop, in place of `axum::serve`, for the limits a shared runner
//! needs at the connection level: a cap on open client connections (past it, new ones wait in
//! the kernel's accept queue) and a time limit on reading request headers (a client that
//! trickles headers is disconnected instead of holding a connection forever). Shutdown is
//! graceful: idle keep-alive connections close, busy ones finish their response.
//!
//! Owns: accepting, per-connection limits, connection shutdown. Must not touch: routing or
//! anything a request means (that is the router's).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connection-level limits (`http.max_connections`, `http.header_read_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` (the router, or [`crate::MainService`]) on `listener` until `shutdown` resolves,
/// then closes connections gracefully and returns once all have ended.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut full_logged = false;
    loop {
        if permits.available_permits() == 0 && !full_logged {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached (http.max_connections); new connections wait"
            );
            full_logged = true;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if permits.available_permits() > 0 {
            full_logged = false;
        }
        let _ = stream.set_nodelay(true);
        // Every request learns its connection's peer (`forwarded` decides whether to believe
        // a proxy's headers from it).
        let svc = TowerToHyperService::new(app.clone().map_request(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::forwarded::Peer(peer));
                req
            },
        ));
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}
