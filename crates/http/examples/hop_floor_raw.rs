//! An experiment beside [`hop_floor`](hop_floor.rs): the same hop with a minimal HTTP/1.1 client
//! of its own instead of hyper's, driven by the calling task (no connection task, no channel).
//! It measures what a shim client of at-rund's own could save (docs/performance.md, tenth
//! session, issue 14). Not a client to copy: it sends no request body, reads only
//! `Content-Length` responses, buffers the body and has no timeout.
//!
//! `cargo run --release -p atrund-http --example hop_floor_raw -- 127.0.0.1:PORT /path/to/handler.sock`
mod floor;

use std::io::Write;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

fn eof() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
}

fn main() -> Result<(), floor::Error> {
    floor::run("hop_floor_raw", connection)
}

struct Upstream {
    io: UnixStream,
    buf: BytesMut,
    out: Vec<u8>,
}

async fn call(
    up: &mut Upstream,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    up.out.clear();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    write!(up.out, "{} {} HTTP/1.1\r\n", req.method(), pq)?;
    for (k, v) in req.headers() {
        up.out.extend_from_slice(k.as_str().as_bytes());
        up.out.extend_from_slice(b": ");
        up.out.extend_from_slice(v.as_bytes());
        up.out.extend_from_slice(b"\r\n");
    }
    up.out.extend_from_slice(b"\r\n");
    up.io.write_all(&up.out).await?;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&up.buf).map_err(std::io::Error::other)?;
        if let httparse::Status::Complete(n) = parsed {
            let mut b = hyper::Response::builder().status(resp.code.unwrap_or(502));
            let mut len = 0usize;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(eof)?;
                }
                b = b.header(h.name, h.value);
            }
            up.buf.advance(n);
            while up.buf.len() < len {
                if up.io.read_buf(&mut up.buf).await? == 0 {
                    return Err(eof());
                }
            }
            let body = up.buf.split_to(len).freeze();
            return b.body(Full::new(body)).map_err(std::io::Error::other);
        }
        if up.io.read_buf(&mut up.buf).await? == 0 {
            return Err(eof());
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, socket: String) -> Result<(), floor::Error> {
    let up = Arc::new(Mutex::new(Upstream {
        io: UnixStream::connect(socket).await?,
        buf: BytesMut::with_capacity(8192),
        out: Vec::with_capacity(512),
    }));
    let svc = hyper::service::service_fn(move |req| {
        let up = up.clone();
        async move { call(&mut *up.lock().await, req).await }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await?;
    Ok(())
}
