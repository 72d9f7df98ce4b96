//! End-to-end tests of `IdentityResolver` against a tiny HTTP server on loopback that plays the
//! PLC directory, a did:web host and a resolveHandle service. Test-only; reuses the signed-op
//! builders of `plc::tests`.

use crate::plc::tests::{cid_of, entry, key, plc_op, sign, two_op_chain};
use crate::{
    AtIdentifier, Did, Handle, IdentityConfig, IdentityError, IdentityResolver, PublicKey,
    TxtResolver,
};
use atrund_testnet::{assert_no_network_text, Canary};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
struct Route {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
    location: Option<String>,
}

fn ok(body: impl Into<Vec<u8>>) -> Route {
    Route {
        status: 200,
        body: body.into(),
        delay: Duration::ZERO,
        location: None,
    }
}

fn status(code: u16) -> Route {
    Route {
        status: code,
        body: b"{\"error\":\"x\",\"message\":\"x\"}".to_vec(),
        delay: Duration::ZERO,
        location: None,
    }
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
}

/// One request per connection, `Connection: close`. Routes match the full target first
/// (path + query), then the path alone.
struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let path = target.split('?').next().unwrap_or("/").to_string();
                    let route = {
                        let mut s = st.lock().unwrap();
                        *s.hits.entry(path.clone()).or_default() += 1;
                        s.routes
                            .get(&target)
                            .or_else(|| s.routes.get(&path))
                            .cloned()
                            .unwrap_or_else(|| status(404))
                    };
                    tokio::time::sleep(route.delay).await;
                    let mut resp = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        route.status,
                        route.body.len()
                    );
                    if let Some(loc) = &route.location {
                        resp.push_str(&format!("location: {loc}\r\n"));
                    }
                    resp.push_str("\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.write_all(&route.body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Server { port, state }
    }

    fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://127.0.0.1:{}", self.port)).unwrap()
    }

    fn route(&self, path: &str, r: Route) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), r);
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Opens exactly this server's address and port, as an operator's `allow_addrs` would.
fn open(port: u16) -> atrund_netpolicy::AddressPolicy {
    let sa = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    atrund_netpolicy::AddressPolicy::default()
        .with_openings(&[atrund_netpolicy::Opening::Socket(sa)])
}

fn cfg(server: &Server) -> IdentityConfig {
    IdentityConfig {
        plc_url: server.url(),
        allow_http_loopback: true,
        address_policy: open(server.port),
        timeout: Duration::from_millis(800),
        dns: false,
        well_known: false,
        ..Default::default()
    }
}

/// The DID document a PLC directory renders for the last op of a chain, with the legacy key
/// form that @did-plc/server uses.
fn plc_doc(did: &Did, atproto: &k256::ecdsa::SigningKey, handle: &str, pds: &str) -> Value {
    let point = atproto.verifying_key().to_encoded_point(false);
    json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did.as_str(),
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "EcdsaSecp256k1VerificationKey2019",
            "controller": did.as_str(),
            "publicKeyMultibase": format!("z{}", bs58::encode(point.as_bytes()).into_string()),
        }],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    })
}

/// Serves a verified two-op PLC identity (handle alice2.test, PDS https://pds2.example.com).
fn serve_plc(server: &Server) -> Did {
    let (did, g, u) = two_op_chain();
    serve_plc_ops(
        server,
        &did,
        &[&g, &u],
        plc_doc(&did, &key(4), "alice2.test", "https://pds2.example.com"),
    );
    did
}

fn serve_plc_ops(server: &Server, did: &Did, ops: &[&Value], doc: Value) {
    let log: Vec<Value> = ops.iter().map(|op| entry(did, op, false)).collect();
    server.route(&format!("/{did}"), ok(doc.to_string()));
    server.route(
        &format!("/{did}/log/audit"),
        ok(Value::Array(log).to_string()),
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, IdentityError>) -> &'static str {
    r.expect_err("expected an error").code()
}

#[tokio::test]
async fn plc_resolution_and_coalescing() {
    let server = Server::start().await;
    let did = serve_plc(&server);
    let doc_path = format!("/{did}");
    let mut slow =
        ok(plc_doc(&did, &key(4), "alice2.test", "https://pds2.example.com").to_string());
    slow.delay = Duration::from_millis(150);
    server.route(&doc_path, slow);

    let r = IdentityResolver::new(cfg(&server)).unwrap();
    let lookups: Vec<_> = (0..10).map(|_| r.resolve_did(&did)).collect();
    let results = futures::future::join_all(lookups).await;
    for res in &results {
        let res = res.as_ref().unwrap();
        assert_eq!(res.did, did);
        assert_eq!(res.handle.as_ref().unwrap().as_str(), "alice2.test");
        assert_eq!(res.pds.as_str(), "https://pds2.example.com/");
        assert_eq!(res.signing_key, PublicKey::K256(*key(4).verifying_key()));
    }
    assert_eq!(
        server.hits(&doc_path),
        1,
        "concurrent look-ups share one fetch"
    );
    assert_eq!(server.hits(&format!("{doc_path}/log/audit")), 1);

    r.resolve_did(&did).await.unwrap();
    assert_eq!(server.hits(&doc_path), 1, "served from cache");
    r.refresh_did(&did).await.unwrap();
    assert_eq!(server.hits(&doc_path), 2, "refresh bypasses the cache");
}

#[tokio::test]
async fn plc_not_found_tombstoned_and_errors() {
    let server = Server::start().await;
    let r = IdentityResolver::new(cfg(&server)).unwrap();

    let missing: Did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
    assert_eq!(code(r.resolve_did(&missing).await), "DidNotFound");

    let gone: Did = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".parse().unwrap();
    server.route(&format!("/{gone}"), status(410));
    assert_eq!(code(r.resolve_did(&gone).await), "DidTombstoned");

    // Tombstone in the log, even if the directory still serves a document.
    let (did, g, u) = two_op_chain();
    let t = sign(
        &json!({"type": "plc_tombstone", "prev": cid_of(&u)}),
        &key(2),
    );
    serve_plc_ops(
        &server,
        &did,
        &[&g, &u, &t],
        plc_doc(&did, &key(4), "alice2.test", "https://pds2.example.com"),
    );
    assert_eq!(code(r.resolve_did(&did).await), "DidTombstoned");

    let broken: Did = "did:plc:cccccccccccccccccccccccc".parse().unwrap();
    server.route(&format!("/{broken}"), status(500));
    assert_eq!(code(r.resolve_did(&broken).await), "IdentityUnreachable");

    assert_eq!(
        code(
            r.resolve_did(
                &"did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w"
                    .parse()
                    .unwrap()
            )
            .await
        ),
        "DidMethodUnsupported"
    );
}

#[tokio::test]
async fn plc_document_must_match_the_log() {
    let server = Server::start().await;
    let r = IdentityResolver::new(cfg(&server)).unwrap();
    let (did, g, u) = two_op_chain();
    for doc in [
        plc_doc(&did, &key(4), "alice2.test", "https://evil.example.com"),
        plc_doc(&did, &key(9), "alice2.test", "https://pds2.example.com"),
        plc_doc(&did, &key(4), "mallory.test", "https://pds2.example.com"),
    ] {
        serve_plc_ops(&server, &did, &[&g, &u], doc);
        assert_eq!(code(r.refresh_did(&did).await), "PlcAuditLogInvalid");
    }
    // A log whose chain is broken.
    let bad = sign(
        &plc_op(
            Some(&cid_of(&u)),
            &[&key(2)],
            &key(4),
            "x.test",
            "https://p.example.com",
        ),
        &key(1),
    );
    serve_plc_ops(
        &server,
        &did,
        &[&g, &u, &bad],
        plc_doc(&did, &key(4), "x.test", "https://p.example.com"),
    );
    assert_eq!(code(r.refresh_did(&did).await), "PlcAuditLogInvalid");
    // Audit log missing.
    server.route(&format!("/{did}/log/audit"), status(404));
    assert_eq!(code(r.refresh_did(&did).await), "DidNotFound");
}

#[tokio::test]
async fn plc_pds_endpoint_policy() {
    let server = Server::start().await;
    let (did, g, _) = two_op_chain();
    let u = sign(
        &plc_op(
            Some(&cid_of(&g)),
            &[&key(2)],
            &key(4),
            "a.test",
            "http://localhost:2583",
        ),
        &key(1),
    );
    serve_plc_ops(
        &server,
        &did,
        &[&g, &u],
        plc_doc(&did, &key(4), "a.test", "http://localhost:2583"),
    );
    let r = IdentityResolver::new(cfg(&server)).unwrap();
    assert_eq!(
        r.resolve_did(&did).await.unwrap().pds.as_str(),
        "http://localhost:2583/"
    );

    let u = sign(
        &plc_op(
            Some(&cid_of(&g)),
            &[&key(2)],
            &key(4),
            "a.test",
            "http://pds.example.com",
        ),
        &key(1),
    );
    serve_plc_ops(
        &server,
        &did,
        &[&g, &u],
        plc_doc(&did, &key(4), "a.test", "http://pds.example.com"),
    );
    assert_eq!(code(r.refresh_did(&did).await), "InsecureUrl");
}

#[tokio::test]
async fn unreachable_timeouts_and_caps() {
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = IdentityConfig {
        plc_url: url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        allow_http_loopback: true,
        address_policy: open(port),
        ..Default::default()
    };
    let r = IdentityResolver::new(dead).unwrap();
    let did: Did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
    let e = r.resolve_did(&did).await.unwrap_err();
    assert_eq!(e.code(), "IdentityUnreachable");
    // The OS error stays in the detail (for the log), out of the message.
    assert_no_network_text("identity", &e.to_string());
    assert!(e.detail().unwrap().contains("127.0.0.1"), "{e:?}");

    let server = Server::start().await;
    let did = serve_plc(&server);
    let mut slow = ok("{}");
    slow.delay = Duration::from_secs(5);
    server.route(&format!("/{did}"), slow);
    let mut c = cfg(&server);
    c.timeout = Duration::from_millis(200);
    let r = IdentityResolver::new(c).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(code(r.resolve_did(&did).await), "IdentityUnreachable");
    assert!(started.elapsed() < Duration::from_secs(2));

    server.route(&format!("/{did}"), ok(vec![b' '; 65 * 1024]));
    let err = r.refresh_did(&did).await.unwrap_err();
    assert!(err.detail().unwrap().contains("larger than"), "{err:?}");
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
}

fn did_web_doc(did: &str, key: &PublicKey, handle: &str, pds: &str) -> Value {
    json!({
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": key.to_multikey()}],
        "service": [{"id": format!("{did}#atproto_pds"), "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    })
}

#[tokio::test]
async fn did_web_localhost() {
    let server = Server::start().await;
    let did: Did = format!("did:web:localhost%3A{}", server.port)
        .parse()
        .unwrap();
    let pk = PublicKey::P256(
        *p256::ecdsa::SigningKey::from_slice(&[8u8; 32])
            .unwrap()
            .verifying_key(),
    );
    server.route(
        "/.well-known/did.json",
        ok(did_web_doc(did.as_str(), &pk, "carol.test", "http://localhost:1234").to_string()),
    );
    let r = IdentityResolver::new(cfg(&server)).unwrap();
    let res = r.resolve_did(&did).await.unwrap();
    assert_eq!(res.signing_key, pk);
    assert_eq!(res.handle.as_ref().unwrap().as_str(), "carol.test");

    // Without allow_http_loopback a localhost port is refused.
    let strict = IdentityResolver::new(IdentityConfig::default()).unwrap();
    assert_eq!(code(strict.resolve_did(&did).await), "InsecureUrl");

    // The document must be for this DID.
    server.route(
        "/.well-known/did.json",
        ok(did_web_doc("did:web:other.example", &pk, "c.test", "https://p.example").to_string()),
    );
    assert_eq!(code(r.refresh_did(&did).await), "DidDocumentInvalid");

    // Redirects are not followed.
    let mut redirect = status(302);
    redirect.location = Some(format!("http://127.0.0.1:{}/elsewhere", server.port));
    server.route("/.well-known/did.json", redirect);
    server.route(
        "/elsewhere",
        ok(did_web_doc(did.as_str(), &pk, "carol.test", "http://localhost:1234").to_string()),
    );
    assert_eq!(code(r.refresh_did(&did).await), "DidDocumentInvalid");
    assert_eq!(server.hits("/elsewhere"), 0);

    server.route("/.well-known/did.json", status(404));
    assert_eq!(code(r.refresh_did(&did).await), "DidNotFound");
}

/// Answers TXT queries from a map.
struct FakeDns(HashMap<String, Vec<String>>);

#[async_trait::async_trait]
impl TxtResolver for FakeDns {
    async fn txt(&self, name: &str) -> Result<Vec<String>, IdentityError> {
        Ok(self.0.get(name).cloned().unwrap_or_default())
    }
}

#[tokio::test]
async fn handles_dns_and_bidirectional_check() {
    let server = Server::start().await;
    let did = serve_plc(&server); // claims alice2.test
    let mut c = cfg(&server);
    c.dns = true;
    let dns = FakeDns(HashMap::from([
        (
            "_atproto.alice2.test".to_string(),
            vec!["v=x".to_string(), format!("did={did}")],
        ),
        ("_atproto.liar.test".to_string(), vec![format!("did={did}")]),
        (
            "_atproto.two.test".to_string(),
            vec![
                format!("did={did}"),
                "did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".to_string(),
            ],
        ),
    ]));
    let r = IdentityResolver::new(c)
        .unwrap()
        .with_txt_resolver(Arc::new(dns));

    let alice: Handle = "Alice2.Test".parse().unwrap();
    assert_eq!(r.resolve_handle(&alice).await.unwrap(), did);
    let (doc, verified) = r.resolve(&AtIdentifier::Did(did.clone())).await.unwrap();
    assert_eq!(doc.did, did);
    assert_eq!(verified, Some(alice.clone()));
    let (_, verified) = r
        .resolve(&AtIdentifier::Handle(alice.clone()))
        .await
        .unwrap();
    assert_eq!(verified, Some(alice));

    // TXT points at a DID whose document claims another handle.
    let liar: Handle = "liar.test".parse().unwrap();
    assert_eq!(code(r.resolve_handle(&liar).await), "HandleMismatch");
    assert_eq!(
        code(r.resolve(&AtIdentifier::Handle(liar)).await),
        "HandleMismatch"
    );

    assert_eq!(
        code(r.resolve_handle(&"two.test".parse().unwrap()).await),
        "HandleNotFound"
    );
    assert_eq!(
        code(r.resolve_handle(&"nobody.test".parse().unwrap()).await),
        "HandleNotFound"
    );
    assert_eq!(
        code(r.resolve_handle(&"handle.invalid".parse().unwrap()).await),
        "HandleNotFound"
    );
}

#[tokio::test]
async fn handle_service_fallback_and_dns_hang() {
    let server = Server::start().await;
    let did = serve_plc(&server); // claims alice2.test
    let mut c = cfg(&server);
    c.dns = true;
    c.timeout = Duration::from_millis(300);
    c.handle_resolution_service = Some(server.url());
    server.route(
        "/xrpc/com.atproto.identity.resolveHandle?handle=alice2.test",
        ok(json!({"did": did.as_str()}).to_string()),
    );
    server.route("/xrpc/com.atproto.identity.resolveHandle", status(400));
    let r = IdentityResolver::new(c).unwrap();
    // The system DNS would be consulted for "_atproto.alice2.test"; swap in one that hangs for
    // every name so the test needs no network and proves the timeout.
    struct Hang;
    #[async_trait::async_trait]
    impl TxtResolver for Hang {
        async fn txt(&self, _: &str) -> Result<Vec<String>, IdentityError> {
            futures::future::pending().await
        }
    }
    let r = r.with_txt_resolver(Arc::new(Hang));
    let started = std::time::Instant::now();
    let alice: Handle = "alice2.test".parse().unwrap();
    assert_eq!(r.resolve_handle(&alice).await.unwrap(), did);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Concurrent handle look-ups share one service call (after the first is cached, none).
    let before = server.hits("/xrpc/com.atproto.identity.resolveHandle");
    let many: Vec<_> = (0..5).map(|_| r.resolve_handle(&alice)).collect();
    for res in futures::future::join_all(many).await {
        assert_eq!(res.unwrap(), did);
    }
    assert_eq!(
        server.hits("/xrpc/com.atproto.identity.resolveHandle"),
        before
    );

    // Unknown to the service (400) and DNS timed out → transient, so Unreachable.
    assert_eq!(
        code(r.resolve_handle(&"bob.test".parse().unwrap()).await),
        "IdentityUnreachable"
    );
    // From the DID side, an unverifiable handle is just None.
    let did2: Did = {
        let g = sign(
            &plc_op(
                None,
                &[&key(1)],
                &key(3),
                "bob.test",
                "https://p.example.com",
            ),
            &key(1),
        );
        let d = crate::plc::tests::did_of(&g);
        serve_plc_ops(
            &server,
            &d,
            &[&g],
            plc_doc(&d, &key(3), "bob.test", "https://p.example.com"),
        );
        d
    };
    let (doc, verified) = r.resolve(&AtIdentifier::Did(did2)).await.unwrap();
    assert_eq!(doc.handle.as_ref().unwrap().as_str(), "bob.test");
    assert_eq!(verified, None);
}

#[tokio::test]
async fn did_web_on_a_loopback_port_is_refused_without_connecting() {
    let canary = Canary::bind("127.0.0.1:0").unwrap();
    let server = Server::start().await;
    // Plain http to loopback is permitted and the test server is opened, but not the canary.
    let r = IdentityResolver::new(cfg(&server)).unwrap();
    let did: Did = format!("did:web:localhost%3A{}", canary.port)
        .parse()
        .unwrap();
    let e = r.resolve_did(&did).await.unwrap_err();
    assert_eq!(e.code(), "AddressNotAllowed");
    assert_no_network_text("identity", &e.to_string());
    assert!(e.detail().unwrap().contains("loopback"), "{e:?}");
    // The same through `resolve`, as the HTTP API calls it.
    let id: AtIdentifier = did.as_str().parse().unwrap();
    assert_eq!(code(r.resolve(&id).await), "AddressNotAllowed");
    assert_eq!(canary.count(), 0);
}

#[tokio::test]
async fn names_resolving_to_loopback_are_refused_for_did_web_and_well_known() {
    // A canary on 443 when this test may bind it (root): there is where https would connect.
    let canary = Canary::bind("127.0.0.1:443");
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let names = Arc::new(
        atrund_netpolicy::MapResolver::new()
            .with("evil.example.com", &[lo])
            .with("localhost", &[lo]),
    );
    let c = IdentityConfig {
        dns: false,
        well_known: true,
        ..Default::default()
    };
    let r = IdentityResolver::with_name_resolver(c, names).unwrap();
    for did in ["did:web:evil.example.com", "did:web:localhost"] {
        let e = r.resolve_did(&did.parse().unwrap()).await.unwrap_err();
        assert_eq!(e.code(), "AddressNotAllowed", "{did}: {e:?}");
        assert_no_network_text("identity", &e.to_string());
    }
    let h: Handle = "evil.example.com".parse().unwrap();
    let e = r.resolve_handle(&h).await.unwrap_err();
    assert_eq!(e.code(), "AddressNotAllowed", "{e:?}");
    assert_no_network_text("identity", &e.to_string());
    if let Some(c) = canary {
        assert_eq!(c.count(), 0);
    }
}

#[tokio::test]
async fn a_plc_redirect_is_not_followed_and_failures_say_no_more_than_unreachable() {
    let canary = Canary::bind("127.0.0.1:0").unwrap();
    let server = Server::start().await;
    let did = serve_plc(&server);
    let mut redirect = status(302);
    redirect.location = Some(format!("http://127.0.0.1:{}/{did}", canary.port));
    server.route(&format!("/{did}"), redirect.clone());
    server.route(&format!("/{did}/log/audit"), redirect);
    let r = IdentityResolver::new(cfg(&server)).unwrap();
    let e = r.resolve_did(&did).await.unwrap_err();
    assert_eq!(e.code(), "IdentityUnreachable");
    assert_no_network_text("identity", &e.to_string());
    assert_eq!(canary.count(), 0);
}
