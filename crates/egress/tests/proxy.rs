//! The proxy over real sockets on 127.0.0.1: tunnels, forwards and every kind of refusal.
//! Names are mapped by `MapResolver`; the connector refuses anything but loopback, so the
//! private and metadata cases can never send a packet even if the proxy were wrong.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use atrund_egress::{
    EgressConfig, EgressPolicy, EgressProxy, MapResolver, NetRule, Registration, SystemResolver,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn resolver() -> MapResolver {
    MapResolver::new()
        .with("echo.test", &[ip("127.0.0.1")])
        .with("web.test", &[ip("127.0.0.1")])
        .with("sneaky.test", &[ip("127.0.0.1")])
        .with("mapped.test", &[ip("::ffff:127.0.0.1")])
        .with("meta.test", &[ip("169.254.169.254")])
        .with("ten.test", &[ip("10.0.0.1")])
        .with(
            "mixed.test",
            &[ip("10.0.0.1"), ip("169.254.169.254"), ip("127.0.0.1")],
        )
}

fn cfg(loopback_exception: bool) -> EgressConfig {
    EgressConfig {
        allow_cidrs: if loopback_exception {
            // 169.254.0.0/16 too: a wide range must still not open the metadata address.
            vec![
                "127.0.0.1/32".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
            ]
        } else {
            vec![]
        },
        ..EgressConfig::default()
    }
}

async fn proxy(
    cfg: EgressConfig,
    rules: &[&str],
) -> (EgressProxy, Registration, Arc<LoopbackOnly>) {
    let guard = Arc::new(LoopbackOnly::default());
    let p = EgressProxy::start_with(cfg, Arc::new(resolver()), guard.clone())
        .await
        .unwrap();
    let reg = p
        .register(
            TOKEN,
            EgressPolicy {
                bundle_label: "did:plc:test/bundle".into(),
                allow: NetRule::parse_list(rules).unwrap(),
                runner: None,
                on_refusal: None,
            },
        )
        .unwrap();
    (p, reg, guard)
}

/// CONNECT that must be refused; returns the refusal body.
async fn assert_refused(p: &EgressProxy, target: &str, status: u16, code: &str) -> String {
    let (mut s, head) = connect(p.local_addr(), target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, status, "CONNECT {target}");
    assert_eq!(
        head.header("x-atrund-egress-error"),
        Some(code),
        "CONNECT {target}"
    );
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    let mut body = head.rest.clone();
    while body.len() < len {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&b[..n]);
    }
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn connect_tunnel_to_allowed_name() {
    let (echo, accepted) = echo_server().await;
    let port = echo.port();
    let (p, _reg, guard) = proxy(cfg(true), &[&format!("echo.test:{port}")]).await;

    let (mut s, head) = connect(
        p.local_addr(),
        &format!("echo.test:{port}"),
        Some(&basic(TOKEN)),
    )
    .await;
    assert_eq!(head.status, 200);
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = vec![0u8; 23];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
    drop(s);

    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(guard.attempts(), vec![echo]);
    // Byte counts land when the tunnel closes.
    for _ in 0..200 {
        if p.stats().open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = p.stats();
    assert_eq!(st.allowed, 1);
    assert_eq!(st.open, 0);
    assert_eq!((st.bytes_up, st.bytes_down), (23, 23));
}

#[tokio::test]
async fn plain_http_forward() {
    let web = http_server().await;
    let port = web.port();
    let (p, _reg, _guard) = proxy(cfg(true), &[&format!("web.test:{port}")]).await;

    let head = format!(
        "POST http://WEB.test:{port}/path?q=1 HTTP/1.1\r\nHost: somewhere.else\r\n\
         Proxy-Authorization: {}\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\
         Content-Length: 5\r\n\r\n",
        basic(TOKEN)
    );
    let (resp, body) = request(p.local_addr(), &head, b"hello").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert_eq!(
        resp.header("keep-alive"),
        None,
        "hop-by-hop header passed on"
    );
    let body = String::from_utf8(body).unwrap();
    // Origin-form path, Host from the URL, no proxy credentials upstream.
    assert_eq!(
        body,
        format!("POST /path?q=1 host=web.test:{port} pa=- pc=- body=hello")
    );
    let st = p.stats();
    assert_eq!(st.allowed, 1);
    assert_eq!(st.bytes_up, 5);
    assert!(st.bytes_down > 5);
}

#[tokio::test]
async fn host_not_listed() {
    let (p, _reg, guard) = proxy(cfg(true), &["api.example.com:443"]).await;
    let body = assert_refused(&p, "echo.test:443", 403, "EgressHostNotListed").await;
    assert!(body.contains("(api.example.com:443)"), "{body}");
    // plain HTTP too, and the body names the rule
    let raw = format!(
        "GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(TOKEN)
    );
    let (resp, body) = request(p.local_addr(), &raw, b"").await;
    assert_eq!(resp.status, 403);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("'other.test:80' is not in this bundle's net list (api.example.com:443)"),
        "{body}"
    );
    assert!(guard.attempts().is_empty());
    assert_eq!(p.stats().denied.get("host_not_listed"), Some(&2));
}

#[tokio::test]
async fn port_not_in_rule() {
    let (echo, accepted) = echo_server().await;
    let (p, _reg, guard) = proxy(cfg(true), &["echo.test:1"]).await;
    assert_refused(
        &p,
        &format!("echo.test:{}", echo.port()),
        403,
        "EgressPortNotListed",
    )
    .await;
    assert!(guard.attempts().is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn listed_localhost_is_refused_without_exception() {
    // The real system resolver: localhost is 127.0.0.1 (and maybe ::1).
    let (echo, accepted) = echo_server().await;
    let guard = Arc::new(LoopbackOnly::default());
    let p = EgressProxy::start_with(cfg(false), Arc::new(SystemResolver), guard.clone())
        .await
        .unwrap();
    let _reg = p
        .register(
            TOKEN,
            EgressPolicy {
                bundle_label: "b".into(),
                allow: NetRule::parse_list(&[format!("localhost:{}", echo.port())]).unwrap(),
                runner: None,
                on_refusal: None,
            },
        )
        .unwrap();
    let (_s, head) = connect(
        p.local_addr(),
        &format!("localhost:{}", echo.port()),
        Some(&basic(TOKEN)),
    )
    .await;
    assert_eq!(head.status, 403);
    assert_eq!(
        head.header("x-atrund-egress-error"),
        Some("EgressAddressBlocked")
    );
    assert!(guard.attempts().is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert_eq!(p.stats().denied.get("loopback"), Some(&1));
}

#[tokio::test]
async fn name_resolving_to_loopback_is_refused() {
    let (echo, accepted) = echo_server().await;
    let port = echo.port();
    let (p, _reg, guard) = proxy(
        cfg(false),
        &[
            &format!("sneaky.test:{port}"),
            &format!("mapped.test:{port}"),
        ],
    )
    .await;
    assert_refused(
        &p,
        &format!("sneaky.test:{}", echo.port()),
        403,
        "EgressAddressBlocked",
    )
    .await;
    // A name whose only address is the IPv4-mapped form of loopback.
    assert_refused(
        &p,
        &format!("mapped.test:{}", echo.port()),
        403,
        "EgressAddressBlocked",
    )
    .await;
    assert!(guard.attempts().is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ipv4_mapped_loopback_literal_is_refused() {
    let (echo, accepted) = echo_server().await;
    let port = echo.port();
    let (p, _reg, guard) = proxy(cfg(false), &[&format!("[::ffff:127.0.0.1]:{port}")]).await;
    let body = assert_refused(
        &p,
        &format!("[::ffff:127.0.0.1]:{port}"),
        403,
        "EgressAddressBlocked",
    )
    .await;
    assert!(body.contains("127.0.0.1: loopback"), "{body}");
    assert!(guard.attempts().is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn metadata_and_private_are_refused() {
    // With the loopback exception AND 169.254.0.0/16 opened: metadata still refused.
    let (p, _reg, guard) = proxy(
        cfg(true),
        &[
            "169.254.169.254:80",
            "meta.test:80",
            "10.0.0.1:80",
            "ten.test",
        ],
    )
    .await;
    for (target, reason) in [
        ("169.254.169.254:80", "cloud_metadata"),
        ("meta.test:80", "cloud_metadata"),
        ("10.0.0.1:80", "private"),
        ("ten.test:443", "private"),
    ] {
        let body = assert_refused(&p, target, 403, "EgressAddressBlocked").await;
        assert!(body.contains(reason), "{target}: {body}");
    }
    let st = p.stats();
    assert_eq!(st.denied.get("cloud_metadata"), Some(&2));
    assert_eq!(st.denied.get("private"), Some(&2));
    assert_eq!(st.allowed, 0);
    assert!(guard.attempts().is_empty(), "{:?}", guard.attempts());
}

#[tokio::test]
async fn only_allowed_addresses_of_a_name_are_used() {
    let (echo, _) = echo_server().await;
    let (p, _reg, guard) = proxy(cfg(true), &[&format!("mixed.test:{}", echo.port())]).await;
    let (mut s, head) = connect(
        p.local_addr(),
        &format!("mixed.test:{}", echo.port()),
        Some(&basic(TOKEN)),
    )
    .await;
    assert_eq!(head.status, 200);
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(guard.attempts(), vec![echo]);
}

#[tokio::test]
async fn token_required() {
    let (echo, accepted) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let (p, reg, _guard) = proxy(cfg(true), &[&target]).await;

    let (_s, head) = connect(p.local_addr(), &target, None).await;
    assert_eq!(head.status, 407);
    assert_eq!(
        head.header("proxy-authenticate"),
        Some("Basic realm=\"at-rund egress\"")
    );
    let (_s, head) = connect(
        p.local_addr(),
        &target,
        Some(&basic("ffffffffffffffffffffffffffffffff")),
    )
    .await;
    assert_eq!(head.status, 407);
    let (_s, head) = connect(
        p.local_addr(),
        &target,
        Some("Bearer 0123456789abcdef0123456789abcdef"),
    )
    .await;
    assert_eq!(head.status, 407);
    let (_s, head) = connect(p.local_addr(), &target, Some("Basic !!!notbase64")).await;
    assert_eq!(head.status, 407);
    // plain HTTP without a token
    let raw =
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let (resp, _) = request(p.local_addr(), &raw, b"").await;
    assert_eq!(resp.status, 407);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // An open tunnel closes when the registration goes, and the token stops working.
    let (mut s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    drop(reg);
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("tunnel still open after unregister")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let (_s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 407);
    assert_eq!(p.stats().denied.get("no_token"), Some(&6));
}

#[tokio::test]
async fn registration_checks() {
    let (p, reg, _guard) = proxy(cfg(true), &[]).await;
    let pol = EgressPolicy {
        bundle_label: "b".into(),
        allow: vec![],
        runner: None,
        on_refusal: None,
    };
    assert_eq!(
        p.register(TOKEN, pol.clone()).err().map(|e| e.code()),
        Some("EgressTokenInUse")
    );
    assert_eq!(
        p.register("short", pol.clone()).err().map(|e| e.code()),
        Some("EgressInvalidToken")
    );
    assert_eq!(
        p.register("has:colon-0123456789abcdef", pol.clone())
            .err()
            .map(|e| e.code()),
        Some("EgressInvalidToken")
    );
    drop(reg);
    let t = atrund_egress::new_token().unwrap();
    assert_eq!(t.len(), 32);
    assert_ne!(t, atrund_egress::new_token().unwrap());
    let _r = p.register(TOKEN, pol).unwrap();
}

#[tokio::test]
async fn too_many_tunnels() {
    let (echo, _) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let c = EgressConfig {
        max_tunnels_per_instance: 1,
        ..cfg(true)
    };
    let (p, _reg, _guard) = proxy(c, &[&target]).await;
    let (_first, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    assert_refused(&p, &target, 429, "EgressTooManyConnections").await;
}

#[tokio::test]
async fn idle_tunnel_is_closed() {
    let (echo, _) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let c = EgressConfig {
        idle_timeout: Duration::from_millis(200),
        ..cfg(true)
    };
    let (p, _reg, _guard) = proxy(c, &[&target]).await;
    let (mut s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("idle tunnel was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn origin_form_and_https_urls_are_bad_requests() {
    let (p, _reg, _guard) = proxy(cfg(true), &["web.test"]).await;
    for line in ["GET / HTTP/1.1", "GET https://web.test/ HTTP/1.1"] {
        let raw = format!(
            "{line}\r\nHost: web.test\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
            basic(TOKEN)
        );
        let (resp, _) = request(p.local_addr(), &raw, b"").await;
        assert_eq!(resp.status, 400, "{line}");
        assert_eq!(
            resp.header("x-atrund-egress-error"),
            Some("EgressBadRequest")
        );
    }
}

/// Registers TOKEN again, now with `rules` (the first registration is dropped).
fn reregister(p: &EgressProxy, old: Registration, rules: &[String]) -> Registration {
    drop(old);
    p.register(
        TOKEN,
        EgressPolicy {
            bundle_label: "did:plc:test/bundle".into(),
            allow: NetRule::parse_list(rules).unwrap(),
            runner: None,
            on_refusal: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn the_proxy_will_not_tunnel_to_itself() {
    let (p, reg, guard) = proxy(cfg(true), &[]).await;
    let target = p.local_addr().to_string();
    let _reg = reregister(&p, reg, std::slice::from_ref(&target));
    assert_refused(&p, &target, 403, "EgressAddressBlocked").await;
    assert_eq!(p.stats().denied.get("proxy_itself"), Some(&1));
    assert!(guard.attempts().is_empty());
}

/// The runner's own listeners (HTTP API, admin) are refused even where the operator opened
/// loopback, also when the runner listens on a wildcard address.
#[tokio::test]
async fn the_runners_own_listeners_are_never_destinations() {
    let (api, api_hits) = echo_server().await;
    let (admin, admin_hits) = echo_server().await;
    let (open, _) = echo_server().await;
    let (p, reg, guard) = proxy(cfg(true), &[]).await;
    p.protect(api);
    p.protect(std::net::SocketAddr::new(ip("0.0.0.0"), admin.port()));
    let rules: Vec<String> = [api, admin, open].iter().map(|a| a.to_string()).collect();
    let _reg = reregister(&p, reg, &rules);
    for t in [api, admin] {
        let body = assert_refused(&p, &t.to_string(), 403, "EgressAddressBlocked").await;
        assert!(body.contains("runner_itself"), "{t}: {body}");
    }
    assert_eq!(p.stats().denied.get("runner_itself"), Some(&2));
    // Another loopback port the operator opened still works.
    let (_s, head) = connect(p.local_addr(), &open.to_string(), Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    assert_eq!(guard.attempts(), vec![open]);
    assert_eq!(api_hits.load(Ordering::SeqCst), 0);
    assert_eq!(admin_hits.load(Ordering::SeqCst), 0);
}

/// An address of this host's own interfaces (on a VPS: its public address, which no range
/// table refuses) is refused unless an allow_cidrs entry names exactly that address.
#[tokio::test]
async fn this_hosts_own_addresses_are_refused_unless_opened() {
    let Some(own) = atrund_testnet::host_address() else {
        return;
    };
    // Open every special-purpose range the address could be in: the refusal must then come
    // from the host check, not from the range table.
    let wide = EgressConfig {
        allow_cidrs: vec![
            "10.0.0.0/8".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
            "100.64.0.0/10".parse().unwrap(),
        ],
        ..EgressConfig::default()
    };
    let rule = format!("{own}:8080");
    let (p, _reg, guard) = proxy(wide, &[&rule]).await;
    let body = assert_refused(&p, &rule, 403, "EgressAddressBlocked").await;
    assert!(body.contains("host_itself"), "{body}");
    assert!(guard.attempts().is_empty());
    // An entry naming exactly the address opens it (the test connector then refuses the
    // connect).
    let exact = EgressConfig {
        allow_cidrs: vec![format!("{own}/32").parse().unwrap()],
        ..EgressConfig::default()
    };
    let (p, _reg, guard) = proxy(exact, &[&rule]).await;
    let (_s, head) = connect(p.local_addr(), &rule, Some(&basic(TOKEN))).await;
    assert_eq!(
        head.header("x-atrund-egress-error"),
        Some("EgressConnectFailed")
    );
    assert_eq!(guard.attempts().len(), 1);
}

/// A bare host opens port 443 only.
#[tokio::test]
async fn a_bare_host_is_port_443_only() {
    let (echo, accepted) = echo_server().await;
    let (p, _reg, guard) = proxy(cfg(true), &["echo.test"]).await;
    let body = assert_refused(
        &p,
        &format!("echo.test:{}", echo.port()),
        403,
        "EgressPortNotListed",
    )
    .await;
    assert!(body.contains("echo.test:443"), "{body}");
    assert!(guard.attempts().is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// Rough cost of the proxy on loopback: sequential requests, a fresh TCP connection each, direct
/// vs plain-HTTP forward vs CONNECT + request. Prints numbers only; run with
/// `cargo test -p atrund-egress --test proxy overhead -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints timings"]
async fn overhead() {
    let web = http_server().await;
    let port = web.port();
    let (p, _reg, _guard) = proxy(cfg(true), &[&format!("web.test:{port}")]).await;
    let n = 1000;
    let get = |proxy_auth: bool, connect_line: bool| {
        let mut h = String::new();
        if connect_line {
            h.push_str(&format!(
                "GET /x HTTP/1.1\r\nHost: web.test:{port}\r\nConnection: close\r\n\r\n"
            ));
        } else if proxy_auth {
            h.push_str(&format!(
                "GET http://web.test:{port}/x HTTP/1.1\r\nHost: web.test:{port}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
                basic(TOKEN)
            ));
        } else {
            h.push_str(&format!(
                "GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ));
        }
        h
    };
    let direct = get(false, false);
    let forward = get(true, false);
    let inner = get(false, true);
    for round in 0..2 {
        let t = std::time::Instant::now();
        for _ in 0..n {
            let (h, _) = request(web, &direct, b"").await;
            assert_eq!(h.status, 200);
        }
        let d = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let (h, _) = request(p.local_addr(), &forward, b"").await;
            assert_eq!(h.status, 200);
        }
        let f = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let (mut s, h) = connect(
                p.local_addr(),
                &format!("web.test:{port}"),
                Some(&basic(TOKEN)),
            )
            .await;
            assert_eq!(h.status, 200);
            s.write_all(inner.as_bytes()).await.unwrap();
            let h = read_head(&mut s).await;
            assert_eq!(h.status, 200);
        }
        let c = t.elapsed() / n;
        // Steady state: many requests on one kept-alive connection, direct vs inside one tunnel.
        let ka = format!("GET /x HTTP/1.1\r\nHost: web.test:{port}\r\n\r\n");
        let mut direct_s = tokio::net::TcpStream::connect(web).await.unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            keepalive_get(&mut direct_s, &ka).await;
        }
        let kd = t.elapsed() / n;
        let (mut tun, h) = connect(
            p.local_addr(),
            &format!("web.test:{port}"),
            Some(&basic(TOKEN)),
        )
        .await;
        assert_eq!(h.status, 200);
        let t = std::time::Instant::now();
        for _ in 0..n {
            keepalive_get(&mut tun, &ka).await;
        }
        let kt = t.elapsed() / n;
        eprintln!(
            "round {round}: new connection each: direct {d:?}, plain-http forward {f:?}, \
             CONNECT+request {c:?}; kept-alive: direct {kd:?}, in one tunnel {kt:?}"
        );
    }
}

#[tokio::test]
async fn extra_listener_serves_until_dropped() {
    let (echo, _) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let (p, _reg, _guard) = proxy(cfg(true), &[&target]).await;
    let extra = p.serve_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = extra.local_addr().unwrap();
    let (_s, head) = connect(addr, &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    drop(extra);
    // The accept loop is gone: connecting is refused or the connection is closed unanswered.
    let mut closed = false;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => {
                closed = true;
                break;
            }
            Ok(mut s) => {
                let _ = s.write_all(b"CONNECT x:1 HTTP/1.1\r\n\r\n").await;
                let mut b = [0u8; 1];
                if let Ok(Ok(0)) | Ok(Err(_)) =
                    tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
                {
                    closed = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "listener still serving after drop");
}

/// One request on a kept-alive connection; reads exactly the response (Content-Length body).
async fn keepalive_get(s: &mut tokio::net::TcpStream, req: &str) {
    s.write_all(req.as_bytes()).await.unwrap();
    let h = read_head(s).await;
    assert_eq!(h.status, 200);
    let len: usize = h.header("content-length").unwrap().parse().unwrap();
    let mut got = h.rest.len();
    while got < len {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        got += n;
    }
}

/// An instance registered with `register_announced`: its token opens nothing from a connection
/// the runner did not announce for it (a token read from its environment by another process),
/// works on an announced one, and stops working there once that connection has ended or the
/// instance is gone.
#[tokio::test]
async fn announced_tokens_count_only_on_their_instances_connections() {
    let (echo, accepted) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let guard = Arc::new(LoopbackOnly::default());
    let p = EgressProxy::start_with(cfg(true), Arc::new(resolver()), guard.clone())
        .await
        .unwrap();
    let policy = EgressPolicy {
        bundle_label: "did:plc:test/bundle".into(),
        allow: NetRule::parse_list(&[&target]).unwrap(),
        runner: None,
        on_refusal: None,
    };
    let reg = p.register_announced(TOKEN, policy.clone()).unwrap();
    let other = p
        .register_announced("fedcba9876543210fedcba9876543210", policy)
        .unwrap();

    // The attacker: the right token, from a connection nobody announced.
    let (_s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 407);
    assert_eq!(
        head.header("x-atrund-egress-error"),
        Some("EgressSourceNotAnnounced")
    );
    // Announced, but for another instance.
    let s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    other.announcer().announce(s.local_addr().unwrap());
    let (_s, head) = connect_on(s, &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 407, "another instance's connection");

    // The instance's own connection, announced before it sends.
    let s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    let local = s.local_addr().unwrap();
    reg.announcer().announce(local);
    let (mut s, head) = connect_on(s, &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200, "announced connection");
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(guard.attempts(), vec![echo], "only the announced tunnel");
    assert_eq!(p.stats().denied.get("source_not_announced"), Some(&2));

    // Withdrawn announcements and dropped registrations leave nothing behind.
    let s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    let local2 = s.local_addr().unwrap();
    let a = reg.announcer();
    a.announce(local2);
    a.withdraw(local2);
    let (_s, head) = connect_on(s, &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 407, "withdrawn");
    drop(reg);
    a.announce(local); // for a dropped registration: no effect
    let (_s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 407, "token gone");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
