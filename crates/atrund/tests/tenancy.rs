//! Tenants and their PDSes against a shared runner (issue 9): a PDS that replays older signed
//! repository state, and one author's load against the others. Its own test binary, so its own
//! test network: carol's did:web document is overridden here without racing other suites.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use atrund_testnet::{Account, TestNet};
use common::{get, Daemon};
use serde_json::{json, Value};

fn setup() -> Option<(&'static TestNet, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    Some((net, deno))
}

fn start(net: &TestNet, deno: &Path, data: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(&mut cmd, false)
}

async fn deploy(net: &TestNet, account: &Account, code: &str, name: &str, version: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("main.js");
    std::fs::write(&file, code).expect("write bundle");
    let manifest = json!({"endpoints": [{"name": "greet", "method": "GET"}]});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).expect("manifest");
    let args = at_run::deploy::DeployArgs {
        file,
        name: name.to_string(),
        version: version.to_string(),
        manifest: None,
        description: None,
        no_release: false,
        pds: Some(net.pds_url.clone()),
        identifier: Some(account.handle.clone()),
        password: Some(account.password.parse().expect("password")),
        json: false,
    };
    at_run::deploy::run(&args)
        .await
        .unwrap_or_else(|e| panic!("deploy {name}@{version} failed: {e:#}"));
}

fn greeter(word: &str) -> String {
    format!("export const greet = {{ handler: () => ({{ word: {word:?} }}) }};\n")
}

/// Sets or (with `{}`) clears the override of carol's served did:web document.
async fn override_carol_doc(net: &TestNet, body: Value) {
    let url = net
        .carol_did_doc_url
        .replace("/.well-known/did.json", "/__test/did-doc-override");
    let resp = reqwest::Client::new()
        .put(url)
        .body(body.to_string())
        .send()
        .await
        .expect("override did doc");
    assert_eq!(resp.status(), 204);
}

/// A PDS in front of the real one that remembers every answer; once `replay` is set it serves
/// the answers it had when `freeze` was called: genuinely signed, older repository state.
struct ReplayingPds {
    url: String,
    seen: Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>,
    frozen: Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>,
    replay: Arc<AtomicBool>,
}

impl ReplayingPds {
    async fn start(pds: String) -> ReplayingPds {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>> = Arc::default();
        let frozen: Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>> = Arc::default();
        let replay = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::new();
        let (s, f, r) = (seen.clone(), frozen.clone(), replay.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, pds, seen, frozen, replay) =
                (client.clone(), pds.clone(), s.clone(), f.clone(), r.clone());
            async move {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                let old = replay
                    .load(Ordering::SeqCst)
                    .then(|| frozen.lock().expect("lock").get(&pq).cloned())
                    .flatten();
                let (status, body) = match old {
                    Some(hit) => hit,
                    None => {
                        let upstream = client
                            .get(format!("{pds}{pq}"))
                            .send()
                            .await
                            .expect("upstream");
                        let status = upstream.status().as_u16();
                        let body = upstream.bytes().await.expect("body").to_vec();
                        seen.lock()
                            .expect("lock")
                            .insert(pq.clone(), (status, body.clone()));
                        (status, body)
                    }
                };
                let ctype = if pq.starts_with("/xrpc/com.atproto.sync.") {
                    "application/vnd.ipld.car"
                } else {
                    "application/json"
                };
                axum::http::Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(axum::body::Body::from(body))
                    .expect("response")
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ReplayingPds {
            url: format!("http://localhost:{port}"),
            seen,
            frozen,
            replay,
        }
    }

    fn freeze(&self) {
        let now = self.seen.lock().expect("lock").clone();
        *self.frozen.lock().expect("lock") = now;
    }
}

/// Rollback: after the runner has verified a newer revision of the author's repo, the same PDS
/// serving the older (validly signed) release pointer is refused with `RepoRollback` — also by
/// a restarted runner, since the floor is kept in the data dir.
#[tokio::test(flavor = "multi_thread")]
async fn a_pds_replaying_an_older_signed_repo_is_refused() {
    let Some((net, deno)) = setup() else { return };
    let carol = &net.carol;
    let pds = ReplayingPds::start(net.pds_url.clone()).await;
    override_carol_doc(net, json!({ "pds": pds.url })).await;
    deploy(net, carol, &greeter("one"), "replay", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(net, &deno, data.path(), &[]);
    let path = format!("/bundle/{}/replay/latest/greet", carol.did);

    let (s, b) = get(&runner.url(&path)).await;
    assert_eq!((s, &b), (200, &json!({"word": "one"})), "{b}");
    pds.freeze();
    deploy(net, carol, &greeter("two"), "replay", "2.0.0").await;
    let (s, b) = get(&runner.url(&path)).await;
    assert_eq!((s, &b), (200, &json!({"word": "two"})), "{b}");

    // The PDS now serves the release pointer (and its proof) from before 2.0.0.
    pds.replay.store(true, Ordering::SeqCst);
    let (s, b) = get(&runner.url(&path)).await;
    assert_eq!((s, b["error"].as_str()), (502, Some("RepoRollback")), "{b}");
    let msg = b["message"].as_str().unwrap_or_default();
    assert!(msg.contains("older than revision"), "{msg}");
    runner.stop();

    // The floor survives a restart.
    let mut again = start(net, &deno, data.path(), &[]);
    let (s, b) = get(&again.url(&path)).await;
    assert_eq!((s, b["error"].as_str()), (502, Some("RepoRollback")), "{b}");
    again.stop();

    // The honest PDS again: the newest state is served.
    pds.replay.store(false, Ordering::SeqCst);
    let mut honest = start(net, &deno, data.path(), &[]);
    let (s, b) = get(&honest.url(&path)).await;
    override_carol_doc(net, json!({})).await;
    assert_eq!((s, &b), (200, &json!({"word": "two"})), "{b}");
    honest.stop();
}
