//! The admin listener's status page (`GET /status`, docs/observability.md) of a real `at-rund dev`
//! with real Deno, read by HTTP and by a real headless Chromium: it renders, shows the bundle
//! just called (with its instance and cold start), the egress proxy's refusal of its fetch and
//! the errors answered, escapes the names a caller sent (`<script>` in a bundle and an endpoint
//! name), and causes no console message. The main listener does not serve it.
//!
//! Console messages are read from Chromium's log on stderr (`--enable-logging=stderr`: one
//! `…:CONSOLE:…]` line per message, whatever its level). A failed subresource load would not be
//! logged there, but the page's policy allows no subresource at all, so any it had would be
//! refused and logged as a policy violation. A control page with a violation and a
//! `console.error` shows that such lines are seen.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

const CODE: &str = r#"
export const hello = { method: "GET", handler: () => ({ hello: "world" }) };
export const reach = { method: "GET", handler: async () => {
  const r = await fetch("http://127.0.0.1:65000/", { signal: AbortSignal.timeout(5000) });
  return { status: r.status, refusal: r.headers.get("x-atrund-egress-error") };
} };
"#;

/// The bundle's name: distinctive, so finding it on the page means the page shows it.
const NAME: &str = "statusprobe";
/// A bundle name and an endpoint name no runner accepts; the errors they cause are listed.
const EVIL: &str = "<script>alert(1)</script>";
const EVIL_URL: &str = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";

fn tools() -> Option<(PathBuf, PathBuf)> {
    let deno = atrund_testnet::deno_path()?;
    let chromium = atrund_testnet::chromium_path()?;
    Some((deno, chromium))
}

/// What Chromium made of a page: its DOM after load, and the console lines of its log.
struct Browsed {
    dom: String,
    console: Vec<String>,
    stderr: String,
}

/// Loads `url` in a fresh headless Chromium profile with `--dump-dom`.
fn browse(chromium: &Path, url: &str) -> Browsed {
    let profile = tempfile::tempdir().expect("profile dir");
    // Files, not pipes: a full pipe would block Chromium (it logs a lot on stderr).
    let out_path = profile.path().join("dom.html");
    let err_path = profile.path().join("stderr");
    let mut child = common::chromium(chromium, profile.path())
        .arg("--dump-dom")
        .arg(url)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    common::end_chromium(&mut child);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let dom = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium did not dump {url} within 90 s ({status:?}); stderr:\n{stderr}"
    );
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Browsed {
        dom,
        console,
        stderr,
    }
}

async fn browse_async(chromium: &Path, url: &str) -> Browsed {
    let (chromium, url) = (chromium.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || browse(&chromium, &url))
        .await
        .expect("browser task")
}

/// The text of `<section id="{id}">…</section>` in `html`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no section {id} in:\n{html}"));
    let rest = &html[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// A page with a policy violation and a console error, served by this test: the control that
/// shows console lines are seen at all.
async fn serve_control_page() -> String {
    let page = "<!doctype html><html><head><title>control</title></head><body>\
                <p style=\"color:red\">styled</p><script>console.error('control-error')</script>\
                </body></html>";
    let app = axum::Router::new().route(
        "/control",
        axum::routing::get(move || async move {
            (
                [
                    ("content-type", "text/html; charset=utf-8"),
                    ("content-security-policy", "style-src 'none'"),
                ],
                page,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("control listener");
    let url = format!("http://{}/control", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_the_bundle_just_called_escaped_and_without_console_errors() {
    let Some((deno, chromium)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), CODE).unwrap();
    // `reach` may name loopback in its manifest, but the egress proxy refuses it anyway.
    let manifest = json!({
        "endpoints": [{ "name": "hello", "method": "GET" }, { "name": "reach", "method": "GET" }],
        "permissions": { "net": ["127.0.0.1:65000"] },
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", NAME]);
    let d = Daemon::spawn(&mut cmd, true);
    let admin = d.admin.clone().unwrap();

    // Before any call: the page renders, with nothing to list.
    let (status, body) = common::get(&format!("{admin}/status")).await;
    assert_eq!(status, 200);
    let before = body.as_str().unwrap().to_string();
    assert!(before.contains("no bundle called yet"), "{before}");
    assert!(before.contains("no error answered yet"), "{before}");

    // The main listener has no status page.
    let (status, body) = common::get(&d.url("/status")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "NotFound", "{body}");

    let client = reqwest::Client::new();
    let ok = client
        .get(d.url(&format!("/bundle/local/{NAME}/latest/hello")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let (status, refused) =
        common::get(&d.url(&format!("/bundle/local/{NAME}/latest/reach"))).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["refusal"], "EgressAddressBlocked", "{refused}");
    // Two refusals with names a stranger chose: a bundle and an endpoint.
    let mut ids = Vec::new();
    for (path, id) in [
        (
            format!("/bundle/local/{EVIL_URL}/latest/hello"),
            "evil-name.1",
        ),
        (
            format!("/bundle/local/{NAME}/latest/{EVIL_URL}"),
            "evil-endpoint.2",
        ),
    ] {
        let resp = client
            .get(d.url(&path))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
        let body: serde_json::Value = resp.json().await.unwrap();
        ids.push((id, body["error"].as_str().unwrap().to_string()));
    }

    let resp = client.get(format!("{admin}/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert_eq!(h["cache-control"], "no-store");
    let html = resp.text().await.unwrap();

    // Runner and version, as describeRunner says them.
    let (_, describe) = common::get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
    let runner = section(&html, "runner");
    for v in [
        &describe["software"]["version"],
        &describe["isolation"],
        &describe["runtimes"][0]["version"],
        &describe["publicKey"],
    ] {
        assert!(runner.contains(v.as_str().unwrap()), "{v} in:\n{runner}");
    }
    let enforcement = section(&html, "enforcement");
    let lines = describe["enforcement"].as_array().unwrap();
    assert!(!lines.is_empty());
    for line in lines {
        let limit = format!("<td>{}</td>", line["limit"].as_str().unwrap());
        assert!(enforcement.contains(&limit), "{limit} in:\n{enforcement}");
    }

    // The bundle, its instance, its cold start.
    let bundles = section(&html, "bundles");
    assert!(bundles.contains(&format!(">{NAME}<")), "{bundles}");
    assert!(bundles.contains("reach → 200"), "{bundles}");
    assert!(
        bundles.contains("<td class=\"n\">2</td>"),
        "two calls:\n{bundles}"
    );
    assert!(bundles.contains("1 (0 busy)"), "{bundles}");
    let instances = section(&html, "instances");
    assert!(
        instances.contains(&format!("<td>{NAME}</td>")),
        "{instances}"
    );
    let cold = section(&html, "cold-starts");
    assert!(
        cold.contains("<td>start</td><td class=\"n\">1</td>"),
        "{cold}"
    );

    // The proxy's refusal, by reason.
    let egress = section(&html, "egress");
    assert!(egress.contains("0 allowed, 1 denied"), "{egress}");
    assert!(
        egress.contains("<td>loopback</td><td class=\"n\">1</td>"),
        "{egress}"
    );

    // The errors, newest first, with their ids and the names escaped.
    let errors = section(&html, "errors");
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    assert_eq!(errors.matches(escaped).count(), 2, "{errors}");
    let first = errors.find(ids[1].0).expect("second error listed");
    let second = errors.find(ids[0].0).expect("first error listed");
    assert!(first < second, "newest first:\n{errors}");
    for (_, code) in &ids {
        assert!(errors.contains(code.as_str()), "{code} in:\n{errors}");
    }
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains(EVIL), "{html}");

    // In a browser: the same, and not one console message.
    let page = browse_async(&chromium, &format!("{admin}/status")).await;
    assert!(
        page.console.is_empty(),
        "console messages on /status:\n{}",
        page.console.join("\n")
    );
    assert!(
        page.dom.contains("<title>at-rund status</title>"),
        "{}",
        page.dom
    );
    let bundles = section(&page.dom, "bundles");
    assert!(bundles.contains(&format!(">{NAME}<")), "{}", page.dom);
    assert!(!page.dom.contains("<script"), "{}", page.dom);
    assert!(
        section(&page.dom, "errors").contains(escaped),
        "{}",
        page.dom
    );

    // The control: its violation and its console.error are both seen.
    let control = browse_async(&chromium, &serve_control_page().await).await;
    assert!(
        control.console.iter().any(|l| l.contains("control-error"))
            && control
                .console
                .iter()
                .any(|l| l.contains("Content Security Policy")),
        "the control page's console lines were not seen; stderr:\n{}",
        control.stderr
    );
}
