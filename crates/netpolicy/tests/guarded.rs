//! `GuardedClient` against real sockets: a canary listener on 127.0.0.1 counts every connection
//! it accepts, so "refused" means "never connected", not "connected and failed".

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use atrund_netpolicy::{
    AddressPolicy, ClientConfig, GuardedClient, MapResolver, Opening, OutboundError, Resolve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

/// A listener that answers every connection with `response` and counts connections.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn serve(response: String) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    });
    Server { addr, accepted }
}

fn ok_response() -> String {
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()
}

fn redirect_to(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

fn client(openings: &[SocketAddr], redirects: usize, resolver: Arc<dyn Resolve>) -> GuardedClient {
    let openings: Vec<Opening> = openings.iter().map(|a| Opening::Socket(*a)).collect();
    GuardedClient::new(
        ClientConfig {
            timeout: Duration::from_secs(5),
            max_redirects: redirects,
            allow_http_loopback: true,
            extra_roots: Vec::new(),
        },
        AddressPolicy::default().with_openings(&openings),
        resolver,
    )
    .unwrap()
}

fn names() -> Arc<dyn Resolve> {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    Arc::new(
        MapResolver::new()
            .with("localhost", &[lo])
            .with("evil.example.com", &[lo]),
    )
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

async fn get(c: &GuardedClient, target: &str) -> Result<reqwest::Response, OutboundError> {
    c.get(&url(target), "*/*").await
}

#[tokio::test]
async fn loopback_is_refused_without_connecting() {
    let canary = serve(ok_response()).await;
    let c = client(&[], 3, names());
    let port = canary.addr.port();
    for target in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("https://evil.example.com:{port}/"),
    ] {
        let e = c.get(&url(&target), "*/*").await.unwrap_err();
        assert!(e.is_address_refusal(), "{target}: {e}");
    }
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_opened_socket_is_reached_and_only_that_port() {
    let server = serve(ok_response()).await;
    let canary = serve(ok_response()).await;
    let c = client(&[server.addr], 0, names());
    let resp = get(&c, &format!("http://localhost:{}/x", server.addr.port()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    let e = get(&c, &format!("http://localhost:{}/x", canary.addr.port()))
        .await
        .unwrap_err();
    assert!(e.is_address_refusal(), "{e}");
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirects_are_rechecked_and_capped() {
    let canary = serve(ok_response()).await;
    let to_canary = serve(redirect_to(&format!(
        "http://127.0.0.1:{}/secret",
        canary.addr.port()
    )))
    .await;
    let c = client(&[to_canary.addr], 3, names());
    let e = get(&c, &format!("http://127.0.0.1:{}/", to_canary.addr.port()))
        .await
        .unwrap_err();
    assert!(e.is_address_refusal(), "{e}");
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 0);

    // With redirects off the 302 is the answer, and nothing follows it.
    let off = client(&[to_canary.addr], 0, names());
    let resp = get(
        &off,
        &format!("http://127.0.0.1:{}/", to_canary.addr.port()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 0);

    // A loop to itself stops at the cap: the first request and three redirects.
    let looping = serve(redirect_to("/again")).await;
    let c = client(&[looping.addr], 3, names());
    let e = get(&c, &format!("http://127.0.0.1:{}/", looping.addr.port()))
        .await
        .unwrap_err();
    assert!(matches!(e, OutboundError::TooManyRedirects(3, _)), "{e}");
    assert_eq!(looping.accepted.load(Ordering::SeqCst), 4);
}

/// Answers loopback and counts how often it is asked.
struct Counting(AtomicUsize);

#[async_trait]
impl Resolve for Counting {
    async fn resolve(&self, _host: &str) -> io::Result<Vec<IpAddr>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(vec!["127.0.0.1".parse().unwrap()])
    }
}

#[tokio::test]
async fn each_request_resolves_once_and_reqwest_never_resolves() {
    let server = serve(ok_response()).await;
    let r = Arc::new(Counting(AtomicUsize::new(0)));
    let c = client(&[server.addr], 0, r.clone());
    let target = url(&format!("http://some.name.example:{}/", server.addr.port()));
    // http to a non-loopback name is refused by the URL rule before resolving.
    assert!(matches!(
        c.get(&target, "*/*").await.unwrap_err(),
        OutboundError::InsecureUrl { .. }
    ));
    assert_eq!(r.0.load(Ordering::SeqCst), 0);
    let target = url(&format!("http://localhost:{}/", server.addr.port()));
    assert_eq!(c.get(&target, "*/*").await.unwrap().status(), 200);
    assert_eq!(r.0.load(Ordering::SeqCst), 1);
    assert_eq!(c.get(&target, "*/*").await.unwrap().status(), 200);
    assert_eq!(r.0.load(Ordering::SeqCst), 2);
}

/// The event-stream WebSocket obeys the same rules: a PDS named by a DID document at a refused
/// address is never connected to, whatever the name or scheme; an opened one is.
#[tokio::test]
async fn websockets_are_refused_like_requests_without_connecting() {
    let canary = serve(ok_response()).await;
    let c = client(&[], 3, names());
    let port = canary.addr.port();
    for target in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("https://evil.example.com:{port}/"),
    ] {
        let e = c
            .websocket(
                &url(&target),
                "/xrpc/com.atproto.sync.subscribeRepos",
                1 << 20,
            )
            .await
            .err()
            .expect("refused");
        assert!(e.is_address_refusal(), "{target}: {e}");
    }
    // A scheme other than https (or http to loopback) is refused before any look-up.
    let e = c
        .websocket(&url("ftp://example.com/"), "/", 1 << 20)
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, OutboundError::InsecureUrl { .. }), "{e}");
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 0);
    // Opened: it connects (the canary is no WebSocket server, so the handshake then fails).
    let opened = client(&[canary.addr], 0, names());
    let e = opened
        .websocket(&url(&format!("http://localhost:{port}/")), "/", 1 << 20)
        .await
        .err()
        .expect("not a WebSocket server");
    assert!(!e.is_address_refusal(), "{e}");
    assert_eq!(canary.accepted.load(Ordering::SeqCst), 1);
}

/// The `wss` path, as a PDS on https is reached: a TLS WebSocket server on 127.0.0.1 with a leaf
/// for `localhost` signed by a throwaway CA. Trusting that CA, the stream opens and carries a
/// message; with the web PKI alone, the handshake fails (the certificate is checked).
#[tokio::test]
async fn a_tls_websocket_opens_only_with_a_trusted_certificate() {
    use futures::{SinkExt, StreamExt};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls;

    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let _ = ws
                    .send(atrund_netpolicy::WebSocketMessage::Binary(
                        b"event".to_vec().into(),
                    ))
                    .await;
                let _ = ws.close(None).await;
            });
        }
    });
    // https, so no loopback exemption: only the opened socket makes it reachable.
    let c = GuardedClient::new(
        ClientConfig {
            timeout: Duration::from_secs(5),
            max_redirects: 0,
            allow_http_loopback: false,
            extra_roots: Vec::new(),
        },
        AddressPolicy::default().with_openings(&[Opening::Socket(addr)]),
        names(),
    )
    .unwrap();
    let base = url(&format!("https://localhost:{}/", addr.port()));
    let path = "/xrpc/com.atproto.sync.subscribeRepos";
    let mut ws = c
        .websocket_trusting(&base, path, 1 << 20, &[ca_cert.der().clone()])
        .await
        .expect("wss with the CA trusted");
    match ws.next().await {
        Some(Ok(atrund_netpolicy::WebSocketMessage::Binary(b))) => assert_eq!(&b[..], b"event"),
        other => panic!("expected the server's message, got {other:?}"),
    }
    let e = c
        .websocket(&base, path, 1 << 20)
        .await
        .err()
        .expect("an unknown CA is refused");
    assert!(!e.is_address_refusal(), "{e}");
    assert!(e.to_string().contains("TLS handshake"), "{e}");
}
