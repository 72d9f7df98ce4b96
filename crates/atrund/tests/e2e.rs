//! End to end: publish with `at-run`'s deploy code to the real PDS of the local test network, then
//! invoke through a real `at-rund serve` process running real Deno. One network per test binary;
//! each test has its own account and its own runner process.

mod common;

use std::path::{Path, PathBuf};

use atrund_testnet::TestNet;
use common::{deploy, get, override_carol_doc, Daemon};
use serde_json::{json, Value};

/// A running `at-rund` against the test network, with its own data dir.
struct Runner {
    daemon: Daemon,
    data: tempfile::TempDir,
}

impl Runner {
    fn start(net: &TestNet, deno: &Path, env: &[(&str, &str)]) -> Runner {
        Self::start_with_args(net, deno, &["serve"], env)
    }

    fn start_with_args(net: &TestNet, deno: &Path, args: &[&str], env: &[(&str, &str)]) -> Runner {
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = common::command(deno, data.path());
        common::use_test_net(&mut cmd, net).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Runner {
            daemon: Daemon::spawn(&mut cmd, false),
            data,
        }
    }

    fn url(&self, path: &str) -> String {
        self.daemon.url(path)
    }
}

fn setup() -> Option<(&'static TestNet, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    Some((net, deno))
}

fn repo(path: &str) -> PathBuf {
    atrund_testnet::repo_root().join(path)
}

fn hello_code() -> String {
    std::fs::read_to_string(repo("examples/hello/main.js")).expect("examples/hello/main.js")
}

fn hello_manifest() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo("examples/hello/manifest.json")).expect("manifest"),
    )
    .expect("manifest json")
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_then_invoke_by_did_and_handle_latest_and_pinned() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("e2e").await;
    let v1 = deploy(
        net,
        &acct,
        &hello_code(),
        &hello_manifest(),
        "hello",
        "1.0.0",
    )
    .await;
    let runner = Runner::start(net, &deno, &[("ATRUND_POLICY", "open")]);

    // The DID raw, fully percent-encoded (as URL builders send it), and the handle.
    let encoded = acct.did.replace(':', "%3A");
    for who in [&acct.did, &encoded, &acct.handle] {
        let (s, b) = get(&runner.url(&format!("/bundle/{who}/hello/latest/greet?name=Ada"))).await;
        assert_eq!((s, b), (200, json!({"message": "Hello, Ada!"})), "by {who}");
    }
    let resp = reqwest::Client::new()
        .post(runner.url(&format!("/bundle/{}/hello/1.0.0/shout", acct.did)))
        .json(&json!({"text": "hi there"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"text": "HI THERE", "length": 8})
    );

    // A second version moves `latest`; the pinned version and the record CID still answer the
    // old way.
    let v2_code = hello_code().replace("Hello", "Howdy");
    deploy(net, &acct, &v2_code, &hello_manifest(), "hello", "2.0.0").await;
    let base = format!("/bundle/{}/hello", acct.did);
    let (_, b) = get(&runner.url(&format!("{base}/latest/greet?name=Ada"))).await;
    assert_eq!(b, json!({"message": "Howdy, Ada!"}));
    let (_, b) = get(&runner.url(&format!("{base}/1.0.0/greet?name=Ada"))).await;
    assert_eq!(b, json!({"message": "Hello, Ada!"}));
    let (s, b) = get(&runner.url(&format!("{base}/{}/greet?name=Ada", v1.bundle.cid))).await;
    assert_eq!((s, b), (200, json!({"message": "Hello, Ada!"})));

    // What is not there, by name.
    for (path, status, name) in [
        (format!("{base}/9.9.9/greet"), 404, "VersionNotFound"),
        (
            format!("/bundle/{}/nothing/latest/greet", acct.did),
            404,
            "BundleNotFound",
        ),
        (format!("{base}/latest/undeclared"), 404, "EndpointNotFound"),
        (format!("{base}/not-a-version/greet"), 400, "VersionInvalid"),
        (format!("{base}/latest/shout"), 405, "MethodNotAllowed"),
    ] {
        let (s, b) = get(&runner.url(&path)).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(name)),
            "{path}: {b}"
        );
    }

    // The code is stored once, by CID; a second runner start reuses nothing but the disk.
    let stored: Vec<_> = std::fs::read_dir(runner.data.path().join("bundles"))
        .expect("bundles dir")
        .collect();
    assert_eq!(stored.len(), 2, "one entry per published code blob");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_and_streamed_responses_pass_through() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("media").await;
    let code = r#"
export const bytes = { handler: () => new Response(new Uint8Array([...Array(256).keys()]), {
  status: 201, headers: { "content-type": "application/octet-stream", "cache-control": "max-age=60" } }) };
export const stream = { handler: () => {
  let i = 0;
  const body = new ReadableStream({ async pull(c) {
    if (i === 5) { c.close(); return; }
    await new Promise((r) => setTimeout(r, 20));
    c.enqueue(new TextEncoder().encode(`chunk${i++};`));
  } });
  return new Response(body, { headers: { "content-type": "text/plain" } });
} };
"#;
    let manifest = json!({"endpoints": [{"name": "bytes", "method": "GET"}, {"name": "stream"}]});
    deploy(net, &acct, code, &manifest, "media", "0.1.0").await;
    let runner = Runner::start(net, &deno, &[("ATRUND_POLICY", &acct.did)]);

    let resp = reqwest::get(runner.url(&format!("/bundle/{}/media/latest/bytes", acct.did)))
        .await
        .expect("get");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["cache-control"], "max-age=60");
    let body = resp.bytes().await.expect("body");
    assert_eq!(body.to_vec(), (0..=255u8).collect::<Vec<_>>());

    let mut resp = reqwest::get(runner.url(&format!("/bundle/{}/media/latest/stream", acct.did)))
        .await
        .expect("get");
    let mut chunks = Vec::new();
    while let Some(c) = resp.chunk().await.expect("chunk") {
        chunks.push(c);
    }
    let all: Vec<u8> = chunks.concat();
    assert_eq!(
        String::from_utf8(all).expect("utf8"),
        "chunk0;chunk1;chunk2;chunk3;chunk4;"
    );
    assert!(
        chunks.len() > 1,
        "the body arrived in one piece: not streamed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undeclared_file_env_and_host_get_permission_errors_not_data() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("snoop").await;
    // A listener the bundle is not allowed to reach: it must never see a connection.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    bait.set_nonblocking(true).expect("nonblocking");
    let port = bait.local_addr().expect("addr").port();
    let secret_dir = tempfile::tempdir().expect("temp");
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "canary-e2e-7d1f").expect("write secret");
    let code = format!(
        r#"
async function attempt(f) {{
  try {{ return {{ leaked: String(await f()) }}; }} catch (e) {{ return {{ error: e?.name ?? "unknown" }}; }}
}}
export const file = {{ handler: () => attempt(() => Deno.readTextFile({secret:?})) }};
export const env = {{ handler: () => attempt(() => Deno.env.get("HOME") ?? Deno.env.get("PATH")) }};
export const host = {{ handler: () => attempt(() => fetch("http://127.0.0.1:{port}/").then((r) => r.status)) }};
"#,
        secret = secret.display().to_string()
    );
    let manifest = json!({"endpoints": [{"name": "file"}, {"name": "env"}, {"name": "host"}],
                          "permissions": {"net": ["example.com:443"]}});
    deploy(net, &acct, &code, &manifest, "snoop", "1.0.0").await;
    // In `none` the host file exists and Deno's permission check is what refuses it; in
    // `container` the file is not even in the sandbox's root (NotFound after the check passes
    // for paths the sandbox grants, NotCapable otherwise).
    for (isolation, file_errors) in [
        ("none", &["NotCapable", "PermissionDenied"][..]),
        (
            "container",
            &["NotCapable", "PermissionDenied", "NotFound"][..],
        ),
    ] {
        let runner = Runner::start(
            net,
            &deno,
            &[
                ("ATRUND_POLICY", "open"),
                ("ATRUND_ISOLATION", isolation),
                ("HOME", "/root-canary"),
            ],
        );
        for ep in ["file", "env", "host"] {
            let (s, b) = get(&runner.url(&format!("/bundle/{}/snoop/latest/{ep}", acct.did))).await;
            assert_eq!(s, 200, "{isolation} {ep}: {b}");
            assert!(b.get("leaked").is_none(), "{isolation} {ep} leaked: {b}");
            let name = b["error"].as_str().unwrap_or_default();
            let allowed = if ep == "file" {
                file_errors
            } else {
                &["NotCapable", "PermissionDenied"][..]
            };
            assert!(
                allowed.contains(&name),
                "{isolation} {ep}: expected one of {allowed:?}, got {b}"
            );
        }
    }
    assert!(
        bait.accept().is_err(),
        "the undeclared host received a connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_policy_refusals_have_their_own_names() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("refuse").await;
    let greedy = json!({"endpoints": [{"name": "greet"}], "permissions": {"run": ["ls"]}});
    deploy(net, &acct, &hello_code(), &greedy, "greedy", "1.0.0").await;
    let open = Runner::start(net, &deno, &[("ATRUND_POLICY", "open")]);
    for (who, status, name) in [
        ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", 404, "DidNotFound"),
        (net.tombstoned_did.as_str(), 410, "DidTombstoned"),
        ("did:plc:nope", 400, "DidInvalid"),
        ("did:example:123", 400, "DidMethodUnsupported"),
    ] {
        let (s, b) = get(&open.url(&format!("/bundle/{who}/hello/latest/greet"))).await;
        assert_eq!((s, b["error"].as_str()), (status, Some(name)), "{who}: {b}");
    }
    let (s, b) = get(&open.url(&format!("/bundle/{}/greedy/latest/greet", acct.did))).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("PermissionNotAllowed")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap_or_default().contains("ls"),
        "{b}"
    );

    // An allowlist that does not name this author, and the default (closed) policy.
    let listed = Runner::start(net, &deno, &[("ATRUND_POLICY", &net.alice.did)]);
    let (s, b) = get(&listed.url(&format!("/bundle/{}/greedy/latest/greet", acct.did))).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{b}"
    );
    // Listed under its other name: the DID through a listed handle, the handle through a listed
    // DID. The author check passes (the manifest's caps are what refuse next).
    for (policy, asked) in [(&acct.handle, &acct.did), (&acct.did, &acct.handle)] {
        let other_name = Runner::start(net, &deno, &[("ATRUND_POLICY", policy)]);
        let (s, b) = get(&other_name.url(&format!("/bundle/{asked}/greedy/latest/greet"))).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (403, Some("PermissionNotAllowed")),
            "policy {policy}, asked as {asked}: {b}"
        );
    }
    let closed = Runner::start(net, &deno, &[]);
    let (s, b) = get(&closed.url(&format!("/bundle/{}/greedy/latest/greet", acct.did))).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("PolicyClosed")), "{b}");
    assert!(b["message"]
        .as_str()
        .unwrap_or_default()
        .contains("ATRUND_POLICY"));
}

/// A PDS in front of the real one that flips the first byte of every blob it serves: what a
/// malicious or broken PDS could do, and what the real one never will.
async fn start_blob_tampering_proxy(pds: String) -> String {
    let client = reqwest::Client::new();
    let port = common::serve_pds_stand_in(move |pq| {
        let (client, pds) = (client.clone(), pds.clone());
        async move {
            let (status, ctype, mut body) = common::pds_get(&client, &pds, &pq).await;
            if pq.starts_with("/xrpc/com.atproto.sync.getBlob") {
                if let Some(b) = body.first_mut() {
                    *b ^= 0xff;
                }
            }
            (status, ctype, body)
        }
    })
    .await;
    format!("http://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread")]
async fn did_web_author_works_and_forged_commits_and_tampered_blobs_are_refused() {
    let Some((net, deno)) = setup() else { return };
    let carol = &net.carol;
    deploy(
        net,
        carol,
        &hello_code(),
        &hello_manifest(),
        "webby",
        "1.0.0",
    )
    .await;
    let path = format!("/bundle/{}/webby/latest/greet?name=Web", carol.did);

    let honest = Runner::start(net, &deno, &[("ATRUND_POLICY", "open")]);
    let (s, b) = get(&honest.url(&path)).await;
    assert_eq!((s, b), (200, json!({"message": "Hello, Web!"})));
    drop(honest);

    // The DID document now names a key that did not sign the repo's commits.
    let stranger = k256::ecdsa::SigningKey::from_slice(&[42u8; 32]).expect("key");
    let stranger = atrund_identity::PublicKey::K256(*stranger.verifying_key());
    override_carol_doc(net, json!({"atprotoKey": stranger.to_multikey()})).await;
    let forged = Runner::start(net, &deno, &[("ATRUND_POLICY", "open")]);
    let (s, b) = get(&forged.url(&path)).await;
    override_carol_doc(net, json!({})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("CommitSignatureInvalid")),
        "{b}"
    );
    drop(forged);

    // The document points at a PDS that alters blob bytes.
    let proxy = start_blob_tampering_proxy(net.pds_url.clone()).await;
    override_carol_doc(net, json!({ "pds": proxy })).await;
    // Standing in for a public PDS, the proxy's port is opened like the test network's.
    let proxy_port = reqwest::Url::parse(&proxy)
        .ok()
        .and_then(|u| u.port())
        .expect("proxy port");
    let opened = format!("{},127.0.0.1:{proxy_port}", net.allow_addrs());
    let tampered = Runner::start(
        net,
        &deno,
        &[("ATRUND_POLICY", "open"), ("ATRUND_ALLOW_ADDRS", &opened)],
    );
    let (s, b) = get(&tampered.url(&path)).await;
    override_carol_doc(net, json!({})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("BlobHashMismatch")),
        "{b}"
    );
    let stored = std::fs::read_dir(tampered.data.path().join("bundles"))
        .expect("bundles dir")
        .count();
    assert_eq!(stored, 0, "bytes that failed verification were stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_serves_a_folder_and_picks_up_edits() {
    let Some((net, deno)) = setup() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("main.js"), hello_code()).expect("code");
    std::fs::write(
        dir.path().join("manifest.json"),
        hello_manifest().to_string(),
    )
    .expect("manifest");
    let folder = dir.path().to_str().expect("utf-8 path");
    let runner = Runner::start_with_args(net, &deno, &["dev", folder, "--name", "demo"], &[]);
    let url = runner.url("/bundle/local/demo/latest/greet?name=Dev");
    assert_eq!(get(&url).await, (200, json!({"message": "Hello, Dev!"})));
    std::fs::write(
        dir.path().join("main.js"),
        hello_code().replace("Hello", "Edited"),
    )
    .expect("edit");
    assert_eq!(get(&url).await, (200, json!({"message": "Edited, Dev!"})));
    let (s, b) = get(&runner.url("/bundle/local/other/latest/greet")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("BundleNotFound")),
        "{b}"
    );
    // A plain call takes the main service's direct route, the same call with an escaped
    // letter the router's: both answer alike, with the same headers and a request id.
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for (n, path) in ["greet", "gr%65et"].into_iter().enumerate() {
        let resp = client
            .get(runner.url(&format!("/bundle/local/demo/latest/{path}?name=Dev")))
            .header("x-request-id", format!("id-{n}"))
            .send()
            .await
            .expect("get");
        let mut names: Vec<String> = resp.headers().keys().map(|k| k.to_string()).collect();
        names.sort();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id, format!("id-{n}"));
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("json");
        seen.push((status, names, body));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].2, json!({"message": "Edited, Dev!"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_over_the_limit_are_refused_with_413() {
    let Some((net, deno)) = setup() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("main.js"), hello_code()).expect("code");
    std::fs::write(
        dir.path().join("manifest.json"),
        hello_manifest().to_string(),
    )
    .expect("manifest");
    let folder = dir.path().to_str().expect("utf-8 path");
    let runner = Runner::start_with_args(
        net,
        &deno,
        &["dev", folder, "--name", "small"],
        &[("ATRUND_HTTP_MAX_REQUEST_BODY_BYTES", "1024")],
    );
    let url = runner.url("/bundle/local/small/latest/shout");
    let client = reqwest::Client::new();
    let ok = client
        .post(&url)
        .json(&json!({"text": "a".repeat(900)}))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    // A body read to its end keeps the connection.
    assert!(
        ok.headers().get("connection").is_none(),
        "{:?}",
        ok.headers()
    );
    // An error answered before the body was read (no such endpoint) ends the connection and
    // says so; one without a body does not.
    let unread = client
        .post(runner.url("/bundle/local/small/latest/nosuch"))
        .json(&json!({"text": "a".repeat(900)}))
        .send()
        .await
        .expect("post");
    assert_eq!(unread.status(), 404);
    assert_eq!(unread.headers()["connection"], "close");
    let no_body = client
        .get(runner.url("/bundle/local/small/latest/nosuch"))
        .send()
        .await
        .expect("get");
    assert_eq!(no_body.status(), 404);
    assert!(no_body.headers().get("connection").is_none());
    let big = client
        .post(&url)
        .json(&json!({"text": "a".repeat(2000)}))
        .send()
        .await
        .expect("post");
    assert_eq!(big.status(), 413);
    // The unread body ends the connection, and the answer says so.
    assert_eq!(big.headers()["connection"], "close");
    let b: Value = big.json().await.expect("json");
    assert_eq!(b["error"], "PayloadTooLarge", "{b}");
    // Chunked, with no Content-Length to refuse up front: cut at the limit as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4)
        .map(|i| Ok(format!("{{\"text\":\"{}", "b".repeat(600 + i)).into_bytes()))
        .collect();
    let chunked = client
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("post chunked");
    assert_eq!(chunked.status(), 413);
    assert_eq!(chunked.headers()["connection"], "close");
    let b: Value = chunked.json().await.expect("json");
    assert_eq!(b["error"], "PayloadTooLarge", "{b}");
    // The instance is still there for the next caller.
    let again = client
        .post(&url)
        .json(&json!({"text": "ok"}))
        .send()
        .await
        .expect("post");
    assert_eq!(again.status(), 200);
}

/// The response cache in `serve`, from the real PDS: a kept answer of `latest` is not served
/// once `latest` moves to a new release (the key holds the resolved record), while the pinned
/// old version keeps its own kept answer (docs/cache.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_release_moves_latest_past_kept_answers() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("cachemove").await;
    let code = |tag: &str| {
        format!(
            "let n = 0;\nexport const page = {{ method: \"GET\", handler: () => new Response(`{tag} ${{++n}}`, {{ headers: {{ \"cache-control\": \"public, max-age=600\" }} }}) }};\n"
        )
    };
    let manifest = json!({ "endpoints": [{ "name": "page", "method": "GET" }] });
    deploy(net, &acct, &code("one"), &manifest, "kept", "1.0.0").await;
    let runner = Runner::start(net, &deno, &[("ATRUND_POLICY", "open")]);
    let client = reqwest::Client::new();
    let page = |version: &str| {
        let req = client.get(runner.url(&format!("/bundle/{}/kept/{version}/page", acct.did)));
        async move {
            let resp = req.send().await.expect("get");
            let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
            (resp.text().await.expect("body"), status)
        }
    };
    let (first, s) = page("latest").await;
    assert_eq!(
        (first.as_str(), s.as_str()),
        ("one 1", "at-rund; fwd=uri-miss; stored")
    );
    let (again, s) = page("latest").await;
    assert_eq!(again, "one 1");
    assert!(s.starts_with("at-rund; hit"), "{s}");
    // The pinned version resolves to the same record: the same entry.
    assert_eq!(page("1.0.0").await.0, "one 1");

    deploy(net, &acct, &code("two"), &manifest, "kept", "2.0.0").await;
    let (moved, s) = page("latest").await;
    assert_eq!(
        (moved.as_str(), s.as_str()),
        ("two 1", "at-rund; fwd=uri-miss; stored")
    );
    let (old, s) = page("1.0.0").await;
    assert_eq!(old, "one 1");
    assert!(s.starts_with("at-rund; hit"), "{s}");
}

/// A release and a rollback reach callers through the PDS's event stream, long before the
/// revalidation interval (here 600 s) would have let the runner look again; with the streams
/// off, the old version keeps being served (the fallback is revalidation alone).
#[tokio::test(flavor = "multi_thread")]
async fn releases_and_rollbacks_arrive_through_the_event_stream() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("stream").await;
    let code = |tag: &str| {
        format!(
            "export const which = {{ method: \"GET\", handler: () => new Response(\"{tag}\") }};\n"
        )
    };
    let manifest = json!({ "endpoints": [{ "name": "which", "method": "GET" }] });
    deploy(net, &acct, &code("one"), &manifest, "live", "1.0.0").await;
    let env = |streams: &'static str| {
        [
            ("ATRUND_POLICY", "open"),
            ("ATRUND_FETCH_REVALIDATE_SECS", "600"),
            ("ATRUND_FETCH_EVENT_STREAMS", streams),
            ("ATRUND_METRICS_PUBLIC", "true"),
        ]
    };
    let runner = Runner::start(net, &deno, &env("true"));
    let without = Runner::start(net, &deno, &env("false"));
    let url = |r: &Runner| r.url(&format!("/bundle/{}/live/latest/which", acct.did));
    let text = |u: String| async move {
        reqwest::get(u)
            .await
            .expect("get")
            .text()
            .await
            .expect("body")
    };
    assert_eq!(text(url(&runner)).await, "one");
    assert_eq!(text(url(&without)).await, "one");
    // The stream opens once a load came from the PDS; give it a moment to be up.
    let opened = std::time::Instant::now();
    while !runner.daemon.log().contains("event stream open") {
        assert!(
            opened.elapsed() < std::time::Duration::from_secs(20),
            "the event stream never opened:\n{}",
            runner.daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let served_after = |want: &'static str| {
        let u = url(&runner);
        async move {
            let t = std::time::Instant::now();
            loop {
                if text(u.clone()).await == want {
                    return t.elapsed();
                }
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(30),
                    "{want} was never served"
                );
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
    };
    deploy(net, &acct, &code("two"), &manifest, "live", "2.0.0").await;
    let took = served_after("two").await;
    eprintln!("MEASURED: release -> served through the event stream: {took:?}");
    at_run::releases::rollback(
        &at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(acct.handle.clone()),
            password: Some(acct.password.parse().expect("password")),
        },
        "live",
        "1.0.0",
    )
    .await
    .expect("rollback");
    let took = served_after("one").await;
    eprintln!("MEASURED: rollback -> served through the event stream: {took:?}");
    // The runner without streams still serves what it resolved first.
    assert_eq!(text(url(&without)).await, "one");
    deploy(net, &acct, &code("three"), &manifest, "live", "3.0.0").await;
    served_after("three").await;
    assert_eq!(text(url(&without)).await, "one");
    // The streams in the metrics: one PDS, its stream open, the changes counted.
    let metrics = text(runner.url("/metrics")).await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("atrund_event_streams_hosts"), 1.0);
    assert_eq!(value("atrund_event_streams_open"), 1.0);
    assert!(value("atrund_event_streams_marks_total") >= 3.0);
    assert_eq!(value("atrund_event_streams_rejected_commits_total"), 0.0);
    assert!(!text(without.url("/metrics"))
        .await
        .contains("atrund_event_streams"));
}
