//! Issue 11: a fresh `at-rund serve` with `isolation = "none"` serves a bundle, published to the
//! real test PDS, whose manifest lists loopback, a private address, the metadata address and the
//! host's own address. Each fetch gets the egress proxy's refusal (403, `EgressAddressBlocked`),
//! raw TCP gets `PermissionDenied` (Landlock: the proxy's port only), and a canary listening on
//! 0.0.0.0 (so reachable through every one of those local addresses) records no connection.

mod common;

use common::{deploy, get, Daemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn none_mode_bundles_reach_no_local_private_or_metadata_address() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let canary = atrund_testnet::Canary::bind("0.0.0.0:0").expect("canary");
    let port = canary.port;
    let own = atrund_testnet::host_address();
    let acct = net.create_account("reach").await;
    let own_url = own.map(|ip| format!("http://{ip}:{port}/"));
    let code = format!(
        r#"
async function attempt(f) {{
  try {{ return {{ leaked: String(await f()) }}; }} catch (e) {{ return {{ error: e?.name ?? "unknown" }}; }}
}}
const get = (url) => attempt(async () => {{
  const r = await fetch(url, {{ signal: AbortSignal.timeout(5000) }});
  return `${{r.status}} [${{r.headers.get("x-atrund-egress-error")}}] ${{await r.text()}}`;
}});
export const loopback = {{ handler: () => get("http://127.0.0.1:{port}/") }};
export const localhost = {{ handler: () => get("http://localhost:{port}/") }};
export const private10 = {{ handler: () => get("http://10.0.0.1/") }};
export const metadata = {{ handler: () => get("http://169.254.169.254/latest/meta-data/") }};
export const own = {{ handler: () => get({own_url:?}) }};
export const raw = {{ handler: () => attempt(async () => {{
  (await Deno.connect({{ hostname: "127.0.0.1", port: {port} }})).close();
  return "connected";
}}) }};
"#,
        own_url = own_url.clone().unwrap_or_default(),
    );
    let mut allowed = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "10.0.0.1:80".to_string(),
        "169.254.169.254:80".to_string(),
    ];
    let mut endpoints = vec!["loopback", "localhost", "private10", "metadata", "raw"];
    if let Some(ip) = own {
        allowed.push(format!("{ip}:{port}"));
        endpoints.push("own");
    }
    let manifest = json!({
        "endpoints": endpoints.iter().map(|e| json!({"name": e})).collect::<Vec<_>>(),
        "permissions": {"net": allowed},
    });
    deploy(net, &acct, &code, &manifest, "reach", "1.0.0").await;

    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_ISOLATION", "none")
        .args(["serve"]);
    let mut d = Daemon::spawn(&mut cmd, false);

    for ep in &endpoints {
        let (status, body) = get(&d.url(&format!("/bundle/{}/reach/latest/{ep}", acct.did))).await;
        assert_eq!(status, 200, "{ep}: {body}");
        if *ep == "raw" {
            assert_eq!(body["error"], "PermissionDenied", "{ep}: {body}");
        } else {
            let text = body["leaked"].as_str().unwrap_or_default();
            assert!(
                text.starts_with("403 [EgressAddressBlocked]"),
                "{ep}: expected the proxy's refusal, got {body}"
            );
        }
    }
    assert_eq!(canary.count(), 0, "the canary was reached");
    let log = d.stop();
    for reason in ["loopback", "private", "cloud_metadata"] {
        assert!(
            log.contains("atrund::egress") && log.contains(reason),
            "no egress refusal logged for {reason}:\n{log}"
        );
    }
}
