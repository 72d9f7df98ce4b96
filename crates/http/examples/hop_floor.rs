//! The floor of a hop made of at-rund's own pieces and nothing else: hyper's HTTP/1.1 server on
//! TCP, hyper's client on a Unix socket (its connection driven by a task of its own, as the
//! sandbox's), Tokio's current-thread runtime. No routing, no limits, no logs, no metrics: what
//! at-rund's per-request work is measured against, beside nginx (docs/performance.md, issue 14).
//!
//! `cargo run --release -p atrund-http --example hop_floor -- 127.0.0.1:PORT /path/to/handler.sock`
//! serves every request on PORT by the HTTP server on the socket (one upstream connection per
//! client connection). Stop it with Ctrl-C.

mod floor;

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

fn main() -> Result<(), floor::Error> {
    floor::run("hop_floor", connection)
}

async fn connection(stream: tokio::net::TcpStream, socket: String) -> Result<(), floor::Error> {
    let upstream = UnixStream::connect(socket).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(Mutex::new(sender));
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let sender = sender.clone();
        async move { sender.lock().await.send_request(req).await }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await?;
    Ok(())
}
