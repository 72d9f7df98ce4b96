//! Issue 18: bundles of the runtimes beyond Deno, published to the real test PDS and served by
//! `at-rund serve`.
//!
//! A Node.js bundle published to the real test PDS (`runtime = "node"`) is served by
//! `at-rund serve` with the pinned Node, in `container` and `none` modes: it answers like the Deno
//! example, its `fetch` and `node:http` go through the egress proxy (an allowed service answers;
//! the proxy refuses the metadata address, and counts it), and a runner that does not offer Node refuses
//! the bundle with `RuntimeUnavailable` instead of running it on Deno.

mod common;

use common::{deploy_on, get, Daemon};
use serde_json::json;

/// A plain HTTP service on loopback the bundle may reach (the proxy allows 127.0.0.1/32 here).
async fn service() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nfrom-host!")
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_bundle_from_the_pds_is_served_by_node_with_egress_through_the_proxy() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let (Some(deno), Some(node)) = (atrund_testnet::deno_path(), atrund_testnet::node_path())
    else {
        return;
    };
    let Some(()) = atrund_testnet::root("the container backend and cgroup limits") else {
        return;
    };
    let port = service().await;
    let acct = net.create_account("noder").await;
    let hello = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-node/main.js"),
    )
    .expect("examples/hello-node/main.js");
    let code = format!(
        r#"{hello}
async function attempt(f) {{
  try {{ return {{ leaked: String(await f()) }}; }} catch (e) {{ return {{ error: e?.code ?? e?.name ?? "unknown" }}; }}
}}
export const viaFetch = {{ method: "GET", handler: () => attempt(async () => {{
  const r = await fetch("http://127.0.0.1:{port}/");
  return `${{r.status}} ${{await r.text()}}`;
}}) }};
export const viaHttp = {{ method: "GET", handler: () => attempt(async () => {{
  const http = await import("node:http");
  return await new Promise((ok, fail) => {{
    http.get("http://127.0.0.1:{port}/", (res) => {{
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => ok(`${{res.statusCode}} ${{body}}`));
    }}).on("error", fail);
  }});
}}) }};
export const blocked = {{ method: "GET", handler: () => attempt(async () => {{
  const r = await fetch("http://169.254.169.254/latest/meta-data/");
  return `${{r.status}} [${{r.headers.get("x-atrund-egress-error")}}]`;
}}) }};
"#
    );
    let endpoints = [
        "greet", "shout", "runtime", "viaFetch", "viaHttp", "blocked",
    ];
    let manifest = json!({
        "endpoints": endpoints.iter().map(|e| json!({"name": e})).collect::<Vec<_>>(),
        "permissions": {"net": [format!("127.0.0.1:{port}"), "169.254.169.254:80"]},
    });
    let published = deploy_on(
        net,
        &acct,
        &code,
        &manifest,
        ("hello-node", "1.0.0"),
        "node",
    )
    .await;
    assert_eq!(published.runtime, "node");

    for isolation in ["container", "none"] {
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = common::command(&deno, data.path());
        common::use_test_net(&mut cmd, net)
            .env("ATRUND_POLICY", "open")
            .env("ATRUND_ISOLATION", isolation)
            .env("ATRUND_NODE_PATH", &node)
            .env("ATRUND_EGRESS_ALLOW_CIDRS", "127.0.0.1/32")
            .env("ATRUND_METRICS_PUBLIC", "true")
            .args(["serve"]);
        let mut d = Daemon::spawn(&mut cmd, false);
        let url = |ep: &str| d.url(&format!("/bundle/{}/hello-node/latest/{ep}", acct.did));

        let (status, body) = get(&url("greet?name=pds")).await;
        assert_eq!(
            (status, &body),
            (200, &json!({"message": "Hello, pds!"})),
            "{isolation}"
        );
        let (status, body) = get(&url("runtime")).await;
        assert_eq!(status, 200, "{isolation}: {body}");
        assert_eq!(body["runtime"], "node");
        assert!(
            body["version"]
                .as_str()
                .is_some_and(|v| v.starts_with("v24.")),
            "{body}"
        );
        for ep in ["viaFetch", "viaHttp"] {
            let (status, body) = get(&url(ep)).await;
            assert_eq!(status, 200, "{isolation} {ep}: {body}");
            assert_eq!(body["leaked"], "200 from-host!", "{isolation} {ep}: {body}");
        }
        // Node's fetch tunnels through the proxy (CONNECT) even for http: the proxy's 403 ends
        // the tunnel, so the bundle sees a failed fetch; the proxy's own count says it refused.
        let (status, body) = get(&url("blocked")).await;
        assert_eq!(status, 200, "{isolation}: {body}");
        assert!(
            body.get("leaked").is_none() && body["error"] == "TypeError",
            "{isolation}: the metadata address must be refused: {body}"
        );
        let metrics = reqwest::get(d.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("atrund_egress_decisions_total")
                    && l.contains("decision=\"denied\"")
                    && l.contains("reason=\"cloud_metadata\"")),
            "{isolation}: no cloud_metadata refusal counted by the egress proxy:\n{metrics}"
        );
        let (status, desc) = get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
        assert_eq!(status, 200);
        let names: Vec<&str> = desc["runtimes"]
            .as_array()
            .expect("runtimes")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(names, ["deno", "node"], "{desc}");
        assert!(
            desc["enforcement"]
                .as_array()
                .expect("enforcement")
                .iter()
                .any(|e| e["limit"] == "node.env" && e["enforced"] == false),
            "describeRunner must say what Node does not enforce: {desc}"
        );
        d.stop();
    }

    // Without node.path the runner offers Deno only, and never runs a Node bundle on it.
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_ISOLATION", "none")
        .args(["serve"]);
    let mut d = Daemon::spawn(&mut cmd, false);
    let (status, body) =
        get(&d.url(&format!("/bundle/{}/hello-node/latest/greet", acct.did))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "RuntimeUnavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("runtime 'node'")),
        "{body}"
    );
    d.stop();
}

/// Issue 18: a Python bundle published to the real test PDS (`runtime = "python"`, code
/// `text/x-python`) is served by Debian's Python in `container` mode, reaching an allowed service
/// through the egress proxy with urllib; under `none` it is refused unless `python.allow_none`.
/// A packed one (`application/zip`) imports its modules and packages from the zip.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_bundle_from_the_pds_is_served_in_a_container() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let (Some(deno), Some(python)) = (atrund_testnet::deno_path(), atrund_testnet::python_path())
    else {
        return;
    };
    let Some(()) = atrund_testnet::root("the container backend and cgroup limits") else {
        return;
    };
    let port = service().await;
    let acct = net.create_account("pyer").await;
    let hello = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/hello-python/main.py"),
    )
    .expect("examples/hello-python/main.py");
    let code = format!(
        r#"{hello}

def _fetch(input, ctx):
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=10) as r:
        return {{"leaked": f"{{r.status}} {{r.read().decode()}}"}}


viaUrllib = {{"method": "GET", "handler": _fetch}}
"#
    );
    let endpoints = ["greet", "shout", "runtime", "viaUrllib"];
    let manifest = json!({
        "endpoints": endpoints.iter().map(|e| json!({"name": e})).collect::<Vec<_>>(),
        "permissions": {"net": [format!("127.0.0.1:{port}")]},
    });
    let published = deploy_on(
        net,
        &acct,
        &code,
        &manifest,
        ("hello-python", "1.0.0"),
        "python",
    )
    .await;
    assert_eq!(published.runtime, "python");
    // A packed project (`application/zip`): main.py at the root imports a module of the
    // project and a package from the zip; a zip without main.py fails its start by name.
    let zip_dir = tempfile::tempdir().expect("temp dir");
    let packed = zip_dir.path().join("packed.zip");
    let member = |n: &str, c: &str| (n.to_string(), c.to_string());
    atrund_testnet::write_zip(
        &python,
        &packed,
        &[
            member(
                "main.py",
                "import tinypkg\nfrom lib import words\n\nloud = {\"handler\": lambda i, c: {\"said\": tinypkg.shout(words.hello(i[\"name\"])), \"from\": tinypkg.__file__}}\n",
            ),
            member("lib/__init__.py", ""),
            member("lib/words.py", "def hello(n):\n    return 'hello ' + n\n"),
            member("tinypkg/__init__.py", "def shout(s):\n    return s.upper() + '!'\n"),
        ],
    );
    let packed = std::fs::read(&packed).expect("zip");
    let loud = json!({"endpoints": [{"name": "loud"}]});
    let published = deploy_on(
        net,
        &acct,
        &packed,
        &loud,
        ("packed-python", "1.0.0"),
        "python",
    )
    .await;
    assert_eq!(published.blob.mime_type, "application/zip");
    let no_main = zip_dir.path().join("no-main.zip");
    atrund_testnet::write_zip(&python, &no_main, &[member("app.py", "x = 1\n")]);
    let no_main = std::fs::read(&no_main).expect("zip");
    deploy_on(
        net,
        &acct,
        &no_main,
        &loud,
        ("no-main-python", "1.0.0"),
        "python",
    )
    .await;

    let serve = |isolation: &str, allow_none: bool| {
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = common::command(&deno, data.path());
        common::use_test_net(&mut cmd, net)
            .env("ATRUND_POLICY", "open")
            .env("ATRUND_ISOLATION", isolation)
            .env("ATRUND_PYTHON_PATH", &python)
            .env("ATRUND_PYTHON_ALLOW_NONE", allow_none.to_string())
            .env("ATRUND_EGRESS_ALLOW_CIDRS", "127.0.0.1/32")
            .args(["serve"]);
        (Daemon::spawn(&mut cmd, false), data)
    };
    let (mut d, _data) = serve("container", false);
    let url =
        |d: &Daemon, ep: &str| d.url(&format!("/bundle/{}/hello-python/latest/{ep}", acct.did));
    let (status, body) = get(&url(&d, "greet?name=pds")).await;
    assert_eq!((status, &body), (200, &json!({"message": "Hello, pds!"})));
    let (status, body) = get(&url(&d, "runtime")).await;
    assert_eq!(
        (status, &body["runtime"]),
        (200, &json!("python")),
        "{body}"
    );
    let (status, body) = get(&url(&d, "viaUrllib")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["leaked"], "200 from-host!", "{body}");
    let (status, body) = get(&d.url(&format!(
        "/bundle/{}/packed-python/latest/loud?name=ada",
        acct.did
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["said"], "HELLO ADA!", "{body}");
    assert!(
        // Inside the bundle's file (the store names it), not a host's site-packages.
        body["from"]
            .as_str()
            .is_some_and(|f| f.ends_with("/tinypkg/__init__.py") && !f.starts_with("/usr/")),
        "{body}"
    );
    let (status, body) =
        get(&d.url(&format!("/bundle/{}/no-main-python/latest/loud", acct.did))).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("NoMainModule")),
        "{body}"
    );
    d.stop();

    // `none` without python.allow_none: refused, naming the key.
    let (mut d, _data) = serve("none", false);
    let (status, body) = get(&url(&d, "greet")).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("python.allow_none")),
        "{body}"
    );
    d.stop();
}
