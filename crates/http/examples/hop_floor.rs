//! The floor of a hop made of at-rund's own pieces and nothing else: hyper's HTTP/1.1 server on
//! TCP, hyper's client on a Unix socket (its connection driven by a task of its own, as the
//! sandbox's), Tokio's current-thread runtime. No routing, no limits, no logs, no metrics: what
//! at-rund's per-request work is measured against, beside nginx (docs/performance.md, issue 14).
//!
//! `cargo run --release -p atrund-http --example hop_floor -- 127.0.0.1:PORT /path/to/handler.sock`
//! serves every request on PORT by the HTTP server on the socket (one upstream connection per
//! client connection). Stop it with Ctrl-C.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Mutex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(socket)) = (args.next(), args.next()) else {
        return Err("usage: hop_floor LISTEN_ADDR UNIX_SOCKET".into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        eprintln!("hop_floor: {listen} -> {socket}");
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, &socket).await {
                    eprintln!("hop_floor: connection ended: {e}");
                }
            });
        }
    })
}

async fn connection(
    stream: tokio::net::TcpStream,
    socket: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
