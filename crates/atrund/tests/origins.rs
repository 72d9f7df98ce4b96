//! An origin per bundle, checked in a real headless Chromium against a real `at-rund` and the
//! local test network (docs/origins.md). Bundle A (`vault`) sets a cookie and has a secret
//! endpoint; bundle B (`evil`, another author) serves a page that tries to read both.
//!
//! Path routes: every bundle page is an opaque-origin sandbox, so B reads neither A's cookie nor
//! A's response, and the cookie is never set. Host routes (`{label}.bundles.localhost`; Chromium
//! resolves `*.localhost` to loopback by itself): each bundle is its own origin, so A reads its
//! own cookie and response while B, a different origin, reads neither.
//!
//! A's page records what it can see and navigates to B's page with that in the URL fragment; B's
//! page adds its own findings and POSTs them, as JSON, to a collector this test runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use atrund_testnet::TestNet;
use common::{deploy, get, Daemon};
use serde_json::{json, Value};

const DOMAIN: &str = "bundles.localhost";

const VAULT: &str = r##"
const html = (body, headers = new Headers()) => {
  headers.set("content-type", "text/html; charset=utf-8");
  return new Response(`<!doctype html><script>${body}</script>`, { headers });
};
export const login = { method: "GET", handler: () => {
  const h = new Headers();
  h.append("set-cookie", "session=A-SECRET-COOKIE; Path=/; SameSite=Lax");
  h.append("set-cookie", "tossed=A-TOSSED; Domain=bundles.localhost; Path=/; SameSite=Lax");
  return html(`(async () => {
    const q = new URLSearchParams(location.search);
    const seen = {};
    try { seen.aOwnCookie = document.cookie; } catch (e) { seen.aOwnCookie = "blocked:" + e.name; }
    try {
      const r = await fetch(q.get("secret"), { credentials: "include" });
      seen.aOwnRead = await r.text();
    } catch (e) { seen.aOwnRead = "blocked:" + e.name; }
    seen.secret = q.get("secret");
    seen.report = q.get("report");
    console.log("A saw " + JSON.stringify(seen));
    location.href = q.get("next") + "#" + encodeURIComponent(JSON.stringify(seen));
  })();`, h);
} };
export const secret = { method: "GET", handler: (_input, ctx) =>
  Response.json({ secret: "A-SECRET-BODY", cookie: ctx.request.headers.get("cookie") }) };
"##;

const EVIL: &str = r##"
export const page = { method: "GET", handler: () => new Response(`<!doctype html>
<script>(async () => {
  const out = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  out.bOrigin = self.origin;
  try { out.bCookie = document.cookie; } catch (e) { out.bCookie = "blocked:" + e.name; }
  try {
    const r = await fetch(out.secret, { credentials: "include" });
    out.bRead = await r.text();
  } catch (e) { out.bRead = "blocked:" + e.name; }
  console.log("B found " + JSON.stringify(out));
  await fetch(out.report, { method: "POST", mode: "no-cors", body: JSON.stringify(out) })
    .catch((e) => console.log("report failed: " + e));
})();</script>`, { headers: { "content-type": "text/html; charset=utf-8" } }) };
"##;

fn setup() -> Option<(&'static TestNet, PathBuf, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    let chromium = atrund_testnet::chromium_path()?;
    Some((net, deno, chromium))
}

/// A runner open to everyone, with host routes under `domain` when given.
fn start_with(net: &TestNet, deno: &Path, data: &Path, domain: Option<&str>) -> Daemon {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_LOG", "info,atrund=debug,atrund_http=debug");
    if let Some(d) = domain {
        cmd.env("ATRUND_HTTP_BUNDLE_DOMAIN", d);
    }
    Daemon::spawn(&mut cmd, false)
}

fn start(net: &TestNet, deno: &Path, data: &Path) -> Daemon {
    start_with(net, deno, data, Some(DOMAIN))
}

/// Loads `url` (which must pass `report` on to B's page) in a fresh headless Chromium profile
/// and returns the JSON that B's page POSTs to a collector of this test. A collector rather than
/// `--dump-dom`: Chromium's virtual-time budget never runs out across a cross-origin navigation.
async fn browse(chromium: &Path, url: &str) -> Value {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let collector = axum::Router::new().route(
        "/report",
        axum::routing::post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body).await;
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("collector");
    let report = format!("http://{}/report", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, collector).await });
    let mut url = reqwest::Url::parse(url).expect("browser URL");
    url.query_pairs_mut().append_pair("report", &report);
    let url = url.to_string();

    let profile = tempfile::tempdir().expect("profile dir");
    // Output goes to a file: a full pipe would block Chromium (it logs a lot on stderr).
    let err_path = profile.path().join("stderr");
    let mut child = common::chromium(chromium, profile.path())
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn chromium");
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
    common::end_chromium(&mut child);
    server.abort();
    let text = match got {
        Ok(Some(t)) => t,
        _ => panic!(
            "no report from the browser within 60 s for {url}; chromium stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        ),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"))
}

/// `{base}?next=…&secret=…`, each value URL-encoded.
fn start_url(base: &str, next: &str, secret: &str) -> String {
    reqwest::Url::parse_with_params(base, &[("next", next), ("secret", secret)])
        .expect("start URL")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn path_routes_are_sandboxed_and_host_routes_are_one_origin_per_bundle() {
    let Some((net, deno, chromium)) = setup() else {
        return;
    };
    let a = net.create_account("vault").await;
    let b = net.create_account("evil").await;
    let get_only = |names: &[&str]| json!({"endpoints": names.iter().map(|n| json!({"name": n, "method": "GET"})).collect::<Vec<_>>()});
    deploy(
        net,
        &a,
        VAULT,
        &get_only(&["login", "secret"]),
        "vault",
        "1.0.0",
    )
    .await;
    deploy(net, &b, EVIL, &get_only(&["page"]), "evil", "1.0.0").await;
    let data = tempfile::tempdir().expect("data dir");
    let mut daemon = start(net, &deno, data.path());
    let base = daemon.base.clone();
    let port = base.rsplit(':').next().expect("port").to_string();

    // ---- Path routes: the runner's shared origin. ----
    let a_path = format!("{base}/bundle/{}/vault/latest", a.did);
    let b_page = format!("{base}/bundle/{}/evil/latest/page", b.did);
    let resp = reqwest::get(format!("{a_path}/login"))
        .await
        .expect("login");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(h.get("set-cookie").is_none(), "cookie passed: {h:?}");
    let csp: Vec<_> = h.get_all("content-security-policy").iter().collect();
    assert_eq!(
        csp,
        ["sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"]
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    // Warm B too, so the browser's budget is not spent on a cold start.
    assert_eq!(get(&b_page).await.0, 200);

    let found = browse(
        &chromium,
        &start_url(
            &format!("{a_path}/login"),
            &b_page,
            &format!("{a_path}/secret"),
        ),
    )
    .await;
    let s = |k: &str| found[k].as_str().unwrap_or_default().to_string();
    assert_eq!(s("bOrigin"), "null", "B's page is not sandboxed: {found}");
    assert!(
        !s("bCookie").contains("A-SECRET"),
        "B read A's cookie: {found}"
    );
    assert!(
        !s("bRead").contains("A-SECRET-BODY"),
        "B read A's response: {found}"
    );
    assert!(s("bRead").starts_with("blocked:"), "{found}");
    // A's own page is sandboxed as well: no cookie jar, no same-origin reads.
    assert!(s("aOwnCookie").starts_with("blocked:"), "{found}");
    assert!(!s("aOwnRead").contains("A-SECRET"), "{found}");
    let log = daemon.log();
    assert!(
        log.contains("Set-Cookie dropped") && log.contains("count=2"),
        "drop not logged:\n{log}"
    );
    assert!(!log.contains("A-SECRET-COOKIE"), "cookie value logged");
    // The browser never held the cookie, so it never sent one to the runner's origin.
    assert!(
        !log.contains("Cookie header not forwarded"),
        "the browser sent a cookie:\n{log}"
    );
    // The runner's own Cookie stripping: a caller's cookies never reach a path-route bundle.
    let echoed: Value = reqwest::Client::new()
        .get(format!("{a_path}/secret"))
        .header("cookie", "other-bundle=1; runner=2")
        .send()
        .await
        .expect("secret")
        .json()
        .await
        .expect("json");
    assert_eq!(echoed, json!({"secret": "A-SECRET-BODY", "cookie": null}));
    assert!(daemon.log().contains("Cookie header not forwarded"));
    // No service worker on the shared origin.
    let sw = reqwest::Client::new()
        .get(format!("{a_path}/secret"))
        .header("service-worker", "script")
        .send()
        .await
        .expect("sw");
    assert_eq!(sw.status(), 403);
    let body: Value = sw.json().await.expect("json");
    assert_eq!(body["error"], "ServiceWorkerNotAllowed");

    // ---- Host routes: an origin per bundle. ----
    let (_, d) = get(&format!("{base}/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(d["bundleDomain"], DOMAIN);
    let mut hosts = Vec::new();
    for (acct, name) in [(&a, "vault"), (&b, "evil")] {
        let (st, o) = get(&format!(
            "{base}/xrpc/dev.atrund.resolveBundleOrigin?author={}&name={name}",
            acct.handle
        ))
        .await;
        assert_eq!(st, 200, "{o}");
        let label = atrund_http::origin::label(&acct.did, name);
        assert_eq!(
            o,
            json!({"did": acct.did, "name": name, "label": label, "host": format!("{label}.{DOMAIN}")})
        );
        hosts.push(format!("http://{label}.{DOMAIN}:{port}"));
    }
    let (a_host, b_host) = (&hosts[0], &hosts[1]);
    // The on-demand TLS check approves known bundle hosts only.
    let check = |host: &str| {
        format!(
            "{base}/xrpc/dev.atrund.checkBundleHost?domain={}",
            host.trim_start_matches("http://")
        )
    };
    let (st, o) = get(&check(a_host)).await;
    assert_eq!((st, o["did"].as_str()), (200, Some(a.did.as_str())), "{o}");
    for (host, error) in [
        (
            format!("nothing-{}.{DOMAIN}", "a".repeat(24)),
            "BundleNotFound",
        ),
        (format!("a.b.{DOMAIN}"), "NotFound"),
        ("example.com".to_string(), "NotFound"),
    ] {
        let (st, o) = get(&check(&host)).await;
        assert_eq!((st, o["error"].as_str()), (404, Some(error)), "{host}: {o}");
    }
    let found = browse(
        &chromium,
        &start_url(
            &format!("{a_host}/login"),
            &format!("{b_host}/page"),
            &format!("{a_host}/secret"),
        ),
    )
    .await;
    let s = |k: &str| found[k].as_str().unwrap_or_default().to_string();
    assert_eq!(s("bOrigin"), *b_host, "{found}");
    // A is its own origin: its page reads its cookie, and its own endpoint sees it.
    assert!(
        s("aOwnCookie").contains("session=A-SECRET-COOKIE"),
        "{found}"
    );
    assert!(s("aOwnRead").contains("A-SECRET-BODY"), "{found}");
    assert!(s("aOwnRead").contains("session=A-SECRET-COOKIE"), "{found}");
    // B, another origin, reads neither; nor does it get A's parent-domain cookie.
    assert!(!s("bCookie").contains("A-SECRET"), "{found}");
    assert!(!s("bCookie").contains("A-TOSSED"), "{found}");
    assert!(!s("bRead").contains("A-SECRET-BODY"), "{found}");
    assert!(s("bRead").starts_with("blocked:"), "{found}");
    assert!(daemon.log().contains("Set-Cookie with a Domain other than"));

    // Over plain HTTP (Host header): no sandbox on the bundle's own origin, the pinned version,
    // nothing of another bundle or of the runner's API in a bundle's origin, unknown labels.
    let client = reqwest::Client::new();
    let on = |host: &str, path: &str| {
        let host = host.trim_start_matches("http://").to_string();
        client
            .get(format!("{base}{path}"))
            .header("host", host)
            .send()
    };
    let r = on(a_host, "/login").await.expect("host login");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-security-policy").is_none());
    assert_eq!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["session=A-SECRET-COOKIE; Path=/; SameSite=Lax"]
    );
    let r = on(a_host, "/@1.0.0/secret").await.expect("pinned");
    assert_eq!(r.status(), 200);
    let r = on(a_host, &format!("/bundle/{}/evil/latest/page", b.did))
        .await
        .expect("other bundle on A's host");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "EndpointNotFound", "{body}");
    let r = on(a_host, "/xrpc/dev.atrund.describeRunner")
        .await
        .expect("api on A's host");
    assert_eq!(r.status(), 404);
    let r = on(
        &format!("nothing-{}.{DOMAIN}:{port}", "a".repeat(24)),
        "/secret",
    )
    .await
    .expect("unknown label");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "BundleNotFound");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("resolveBundleOrigin"),
        "{body}"
    );

    // The label table survives a restart: a host URL works without being resolved again.
    daemon.stop();
    let daemon = start(net, &deno, data.path());
    let r = client
        .get(daemon.url("/secret"))
        .header("host", a_host.trim_start_matches("http://"))
        .send()
        .await
        .expect("after restart");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["secret"], "A-SECRET-BODY");
}

/// Without `http.bundle_domain` there are no host routes: a bundle-looking `Host` is served as the
/// runner, resolveBundleOrigin says so, and describeRunner's `bundleDomain` is null. No browser.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_bundle_domain_everything_is_a_sandboxed_path_route() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let a = net.create_account("plain").await;
    let manifest = json!({"endpoints": [{"name": "secret", "method": "GET"}]});
    deploy(net, &a, VAULT, &manifest, "vault", "1.0.0").await;
    let data = tempfile::tempdir().expect("data dir");
    let daemon = start_with(net, &deno, data.path(), None);

    let (_, d) = get(&daemon.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(d["bundleDomain"], Value::Null, "{d}");
    let (s, b) = get(&daemon.url(&format!(
        "/xrpc/dev.atrund.resolveBundleOrigin?author={}&name=vault",
        a.did
    )))
    .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NotFound")), "{b}");
    let (s, b) = get(&daemon.url(&format!(
        "/xrpc/dev.atrund.checkBundleHost?domain=x.{DOMAIN}"
    )))
    .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NotFound")), "{b}");

    let label = atrund_http::origin::label(&a.did, "vault");
    let r = reqwest::Client::new()
        .get(daemon.url(&format!("/bundle/{}/vault/latest/secret", a.did)))
        .header("host", format!("{label}.{DOMAIN}"))
        .send()
        .await
        .expect("path route with a bundle-like host");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-security-policy"],
        "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
    );
    assert!(!data.path().join("origins.json").exists());
}
