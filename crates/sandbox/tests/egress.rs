//! Both backends send a bundle's HTTP through at-rund's egress proxy, and the kernel lets the
//! instance connect to nothing else: a listed destination works (the operator opened
//! 127.0.0.1/32 here, as `egress.allow_cidrs` would, so the allowed fetch has somewhere to go
//! without leaving the machine), an unlisted one or another port is refused, raw TCP to the
//! listed service is refused, a bare host means port 443 only, and the proxy will not call
//! itself. A token taken from the instance's environment (as another process of its uid could
//! read it) opens nothing from outside the instance. Real Deno, real proxy, real
//! Landlock/namespaces; skips (or fails under CI=true) when a piece is missing.

mod common;

use common::*;

async fn egress_goes_only_through_the_proxy(mode: Mode) {
    let cfg = atrund_egress::EgressConfig {
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let name = if mode == Mode::None { "egn" } else { "egc" };
    let Some(env) = Env::with_egress(name, mode, cfg).await else {
        return;
    };
    let (port, _svc) = loopback_service().await;
    let (other, _svc2) = loopback_service().await;
    let bare = atrund_testnet::Canary::bind("127.0.0.1:0").unwrap();
    let proxy_port = env.proxy.local_addr().port();
    let secret = secret_file(&env);
    let b = hostile(&env, &secret);
    let mut spec = env.spec("egress", &b);
    spec.permissions.net = vec![
        format!("127.0.0.1:{port}"),
        // A bare host: port 443 only, not the canary's port.
        "localhost".into(),
        format!("127.0.0.1:{proxy_port}"),
    ];
    let inst = env.warm(spec).await;
    let fetch = |url: String| {
        let inst = inst.clone();
        async move {
            call_json(&*inst, q("fetchUrl", &[("url", &url)]))
                .await
                .unwrap()
        }
    };

    let v = fetch(format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(v["leaked"], "200 hi", "{mode:?}: {v}");
    // Not in net: refused (by Deno's flags first, and by the proxy's rules behind them).
    let v = fetch(format!("http://127.0.0.1:{other}/")).await;
    assert_eq!(v["error"], "NotCapable", "{mode:?}: {v}");
    // A bare host is port 443 only, in Deno's flags too.
    let v = fetch(format!("http://localhost:{}/", bare.port)).await;
    assert_eq!(v["error"], "NotCapable", "{mode:?}: {v}");
    assert_eq!(bare.count(), 0);
    // The proxy refuses to call itself, even with loopback opened.
    let v = fetch(format!("http://127.0.0.1:{proxy_port}/")).await;
    let text = v["leaked"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("403") && text.contains("proxy_itself"),
        "{mode:?}: {v}"
    );
    // Around the proxy: Landlock allows TCP connects to the proxy's port only (container: its
    // forwarder's), so raw TCP to the listed service is refused.
    let v = call_json(
        &*inst,
        q(
            "connect",
            &[("host", "127.0.0.1"), ("port", &port.to_string())],
        ),
    )
    .await
    .unwrap();
    assert_eq!(v["error"], "PermissionDenied", "{mode:?}: {v}");
    // The instance's token, read from its environment by a process outside it, is refused
    // there: the runner announced only the instance's own connections.
    let token = proxy_token_of(inst.stats().pid.expect("instance runs"))
        .unwrap_or_else(|| panic!("{mode:?}: no HTTP_PROXY in the instance's processes"));
    let mut s = tokio::net::TcpStream::connect(env.proxy.local_addr())
        .await
        .unwrap();
    let auth = base64_basic(&token);
    let req = format!(
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = s.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(
        head.starts_with("HTTP/1.1 407") && head.contains("EgressSourceNotAnnounced"),
        "{mode:?}: {head}"
    );
    // ... while the instance's own connections still work.
    let v = fetch(format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(v["leaked"], "200 hi", "{mode:?}: {v}");
    let st = env.proxy.stats();
    assert_eq!(st.allowed, 2, "{mode:?}: {st:?}");
    assert_eq!(st.denied.get("proxy_itself"), Some(&1), "{mode:?}: {st:?}");
    assert_eq!(
        st.denied.get("source_not_announced"),
        Some(&1),
        "{mode:?}: {st:?}"
    );
    inst.shutdown().await;
}

/// The proxy token in `HTTP_PROXY` of `pid` or one of its descendants (Deno, inside bwrap).
fn proxy_token_of(pid: u32) -> Option<String> {
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if let Ok(env) = std::fs::read(format!("/proc/{p}/environ")) {
            for var in env.split(|b| *b == 0) {
                let var = String::from_utf8_lossy(var);
                if let Some(url) = var.strip_prefix("HTTP_PROXY=http://") {
                    return url.split_once(':').map(|(t, _)| t.to_string());
                }
            }
        }
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
        {
            let Ok(task) = task else { continue };
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    None
}

fn base64_basic(token: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{token}:x"));
    format!("Basic {b}")
}

#[tokio::test]
async fn none_egress_goes_only_through_the_proxy() {
    egress_goes_only_through_the_proxy(Mode::None).await;
}

#[tokio::test]
async fn container_egress_goes_only_through_the_proxy() {
    egress_goes_only_through_the_proxy(Mode::Container).await;
}
