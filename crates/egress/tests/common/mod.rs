//! Shared helpers: a loopback-only connector, local servers, and a raw proxy client.
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use atrund_egress::{Connect, DirectConnector};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connects like the real connector, but only to loopback: tests name private and metadata
/// addresses, and no packet may ever go there even if the proxy had a bug. Records attempts.
#[derive(Default)]
pub struct LoopbackOnly {
    pub attempts: Mutex<Vec<SocketAddr>>,
}

#[async_trait]
impl Connect for LoopbackOnly {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.attempts.lock().unwrap().push(addr);
        if !addr.ip().is_loopback() {
            return Err(io::Error::other(format!(
                "test guard: refusing to connect to non-loopback {addr}"
            )));
        }
        DirectConnector.connect(addr).await
    }
}

impl LoopbackOnly {
    pub fn attempts(&self) -> Vec<SocketAddr> {
        self.attempts.lock().unwrap().clone()
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP echo server on 127.0.0.1; counts accepted connections.
pub async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// A hyper HTTP/1.1 server on 127.0.0.1 that answers with what it received:
/// `method path host=<Host> pa=<Proxy-Authorization or -> conn=<Connection or -> body=<body>`.
pub async fn http_server() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let head = format!(
                        "{} {} host={} pa={} pc={} body=",
                        req.method(),
                        req.uri(),
                        h("host"),
                        h("proxy-authorization"),
                        h("proxy-connection"),
                    );
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&body);
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header("x-upstream", "yes")
                            .header("keep-alive", "timeout=5")
                            .body(Full::new(Bytes::from(out)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

pub fn basic(token: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{token}:x"));
    format!("Basic {b}")
}

/// A parsed response head plus whatever body bytes came with it.
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads up to the end of the response head.
pub async fn read_head(s: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "proxy closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Head {
        status,
        headers,
        rest: buf[end + 4..].to_vec(),
    }
}

/// Sends `CONNECT target` with the given Proxy-Authorization (if any), returns the stream
/// and the response head.
pub async fn connect(proxy: SocketAddr, target: &str, auth: Option<&str>) -> (TcpStream, Head) {
    let s = TcpStream::connect(proxy).await.unwrap();
    connect_on(s, target, auth).await
}

/// `CONNECT target` on a connection already open to the proxy.
pub async fn connect_on(mut s: TcpStream, target: &str, auth: Option<&str>) -> (TcpStream, Head) {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request(proxy: SocketAddr, raw_head: &str, body: &[u8]) -> (Head, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(raw_head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let head = read_head(&mut s).await;
    let mut rest = head.rest.clone();
    s.read_to_end(&mut rest).await.unwrap();
    (head, rest)
}
