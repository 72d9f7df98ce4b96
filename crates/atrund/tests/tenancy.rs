//! Tenants and their PDSes against a shared runner (issue 9): a PDS that replays older signed
//! repository state, and one author's load against the others. Its own test binary, so its own
//! test network: carol's did:web document is overridden here without racing other suites.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use atrund_testnet::{Account, TestNet};
use common::{get, override_carol_doc, Daemon};
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
    let manifest = json!({"endpoints": [{"name": "greet", "method": "GET"}]});
    common::deploy(net, account, code, &manifest, name, version).await;
}

fn greeter(word: &str) -> String {
    format!("export const greet = {{ handler: () => ({{ word: {word:?} }}) }};\n")
}

/// Tests that override carol's did:web document take turns.
static CAROL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Responses (status, content type, body) by path and query.
type Answers = Arc<Mutex<HashMap<String, (u16, String, Vec<u8>)>>>;

/// A PDS in front of the real one that remembers every answer; once `replay` is set it serves
/// the answers it had when `freeze` was called: genuinely signed, older repository state.
struct ReplayingPds {
    url: String,
    /// `allow_addrs` of the test network plus this proxy (it stands in for a public PDS).
    opened: String,
    /// getRecord requests that reached the real PDS, by collection.
    fetches: Arc<Mutex<HashMap<String, usize>>>,
    seen: Answers,
    frozen: Answers,
    replay: Arc<AtomicBool>,
}

impl ReplayingPds {
    async fn start(pds: String, net_allow_addrs: String) -> ReplayingPds {
        let seen: Answers = Arc::default();
        let frozen: Answers = Arc::default();
        let replay = Arc::new(AtomicBool::new(false));
        let fetches: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let client = reqwest::Client::new();
        let (s, f, r, n) = (
            seen.clone(),
            frozen.clone(),
            replay.clone(),
            fetches.clone(),
        );
        let port = common::serve_pds_stand_in(move |pq| {
            let (client, pds, seen, frozen, replay, fetches) = (
                client.clone(),
                pds.clone(),
                s.clone(),
                f.clone(),
                r.clone(),
                n.clone(),
            );
            async move {
                let old = replay
                    .load(Ordering::SeqCst)
                    .then(|| frozen.lock().expect("lock").get(&pq).cloned())
                    .flatten();
                if let Some(hit) = old {
                    return hit;
                }
                if pq.starts_with("/xrpc/com.atproto.sync.getRecord") {
                    let collection = pq
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix("collection="))
                        .unwrap_or("")
                        .to_string();
                    *fetches.lock().expect("lock").entry(collection).or_default() += 1;
                }
                let answer = common::pds_get(&client, &pds, &pq).await;
                seen.lock().expect("lock").insert(pq, answer.clone());
                answer
            }
        })
        .await;
        ReplayingPds {
            url: format!("http://localhost:{port}"),
            opened: format!("{},127.0.0.1:{port}", net_allow_addrs),
            fetches,
            seen,
            frozen,
            replay,
        }
    }

    fn fetched(&self, collection: &str) -> usize {
        self.fetches
            .lock()
            .expect("lock")
            .get(collection)
            .copied()
            .unwrap_or(0)
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
    let _turn = CAROL.lock().await;
    let carol = &net.carol;
    let pds = ReplayingPds::start(net.pds_url.clone(), net.allow_addrs()).await;
    override_carol_doc(net, json!({ "pds": pds.url })).await;
    deploy(net, carol, &greeter("one"), "replay", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let opened = [("ATRUND_ALLOW_ADDRS", pds.opened.as_str())];
    let mut runner = start(net, &deno, data.path(), &opened);
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
    let mut again = start(net, &deno, data.path(), &opened);
    let (s, b) = get(&again.url(&path)).await;
    assert_eq!((s, b["error"].as_str()), (502, Some("RepoRollback")), "{b}");
    again.stop();

    // The honest PDS again: the newest state is served.
    pds.replay.store(false, Ordering::SeqCst);
    let mut honest = start(net, &deno, data.path(), &opened);
    let (s, b) = get(&honest.url(&path)).await;
    override_carol_doc(net, json!({})).await;
    assert_eq!((s, &b), (200, &json!({"word": "two"})), "{b}");
    honest.stop();
}

/// How often carol's did:web document has been served.
async fn carol_doc_fetches(net: &TestNet) -> u64 {
    let url = net
        .carol_did_doc_url
        .replace("/.well-known/did.json", "/__test/did-doc-fetches");
    let v: Value = reqwest::get(url)
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    v["fetches"].as_u64().expect("fetches")
}

/// One author over their rate gets `429 RateLimited` with `Retry-After`, before any fetch or
/// instance work, also on routes whose resolution the runner kept; another author (here with an
/// unlimited override) is not slowed at all.
#[tokio::test(flavor = "multi_thread")]
async fn an_author_over_their_rate_is_limited_and_others_are_not() {
    let Some((net, deno)) = setup() else { return };
    let busy = net.create_account("busy").await;
    let calm = net.create_account("calm").await;
    deploy(net, &busy, &greeter("busy"), "hot", "1.0.0").await;
    deploy(net, &calm, &greeter("calm"), "hot", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let unlimited = format!("{}=0/0", calm.did);
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[
            ("ATRUND_TENANTS_RATE_PER_SEC", "1"),
            ("ATRUND_TENANTS_RATE_BURST", "3"),
            ("ATRUND_TENANTS_RATE_OVERRIDES", &unlimited),
            // Versions trusted for a while, so the runner keeps each route's resolution
            // between calls (crates/http/src/warm.rs): each kept call still takes a token.
            ("ATRUND_FETCH_REVALIDATE_SECS", "30"),
        ],
    );
    let client = reqwest::Client::new();
    let call = |who: &Account| {
        let url = runner.url(&format!("/bundle/{}/hot/latest/greet", who.did));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.expect("request");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..12 {
        let (s, retry, b) = call(&busy).await;
        match s {
            200 => ok += 1,
            429 => {
                assert_eq!(b["error"], "RateLimited", "{b}");
                assert!(retry.is_some_and(|r| r >= 1), "no Retry-After: {b}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    // 3 in the bucket, plus at most what refilled while the 12 calls ran.
    assert!((3..=6).contains(&ok), "{ok} calls passed");
    assert!(limited >= 6, "{limited} calls limited");
    for _ in 0..30 {
        let (s, _, b) = call(&calm).await;
        assert_eq!(s, 200, "the other author was slowed: {b}");
    }
    // The bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, _, b) = call(&busy).await;
    assert_eq!(s, 200, "{b}");
    let (_, d) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(d["tenants"]["ratePerSec"], 1, "{d}");
    runner.stop();
}

/// Loads of one version share one fetch; a failed load is remembered (no PDS request per
/// repeated request); a commit signature that does not verify re-resolves the author's DID at
/// most once per interval, however many requests name it.
#[tokio::test(flavor = "multi_thread")]
async fn loads_are_coalesced_failures_remembered_and_refreshes_spaced() {
    let Some((net, deno)) = setup() else { return };
    let _turn = CAROL.lock().await;
    let carol = &net.carol;
    let pds = ReplayingPds::start(net.pds_url.clone(), net.allow_addrs()).await;
    override_carol_doc(net, json!({ "pds": pds.url })).await;
    deploy(net, carol, &greeter("shy"), "shy", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[
            ("ATRUND_TENANTS_NEGATIVE_CACHE_SECS", "60"),
            ("ATRUND_TENANTS_IDENTITY_REFRESH_MIN_SECS", "60"),
            ("ATRUND_ALLOW_ADDRS", &pds.opened),
        ],
    );
    let base = format!("/bundle/{}/shy", carol.did);

    // Eight callers at once for a version that does not exist: one proof fetched.
    let before = pds.fetched("dev.atrund.bundle");
    let calls = (0..8).map(|_| get_owned(runner.url(&format!("{base}/7.7.7/greet"))));
    for (s, b) in futures::future::join_all(calls).await {
        assert_eq!(
            (s, b["error"].as_str()),
            (404, Some("VersionNotFound")),
            "{b}"
        );
    }
    assert_eq!(
        pds.fetched("dev.atrund.bundle") - before,
        1,
        "loads were not coalesced"
    );
    // Asked again: answered from memory, the PDS is not asked.
    let (s, b) = get(&runner.url(&format!("{base}/7.7.7/greet"))).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("VersionNotFound")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("remembered"),
        "{b}"
    );
    assert_eq!(
        pds.fetched("dev.atrund.bundle") - before,
        1,
        "a remembered failure was fetched again"
    );

    // Eight callers at once for `latest`, never loaded: one release, one bundle and one
    // secrets proof (here: that there is no secrets record).
    let (rel, bun, sec) = (
        pds.fetched("dev.atrund.release"),
        pds.fetched("dev.atrund.bundle"),
        pds.fetched("dev.atrund.secrets"),
    );
    let calls = (0..8).map(|_| get_owned(runner.url(&format!("{base}/latest/greet"))));
    for (s, b) in futures::future::join_all(calls).await {
        assert_eq!((s, &b), (200, &json!({"word": "shy"})), "{b}");
    }
    assert_eq!(
        pds.fetched("dev.atrund.release") - rel,
        1,
        "release loads were not coalesced"
    );
    assert_eq!(
        pds.fetched("dev.atrund.bundle") - bun,
        1,
        "bundle loads were not coalesced"
    );
    assert_eq!(
        pds.fetched("dev.atrund.secrets") - sec,
        1,
        "secrets loads were not coalesced"
    );
    runner.stop();

    // The document now names a key that did not sign carol's commits: every load fails its
    // signature check. Five requests (nothing remembered) re-resolve the DID once, not five times.
    let stranger = k256::ecdsa::SigningKey::from_slice(&[42u8; 32]).expect("key");
    let stranger = atrund_identity::PublicKey::K256(*stranger.verifying_key());
    override_carol_doc(
        net,
        json!({"pds": pds.url, "atprotoKey": stranger.to_multikey()}),
    )
    .await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[
            ("ATRUND_TENANTS_NEGATIVE_CACHE_SECS", "0"),
            ("ATRUND_TENANTS_IDENTITY_REFRESH_MIN_SECS", "60"),
            ("ATRUND_ALLOW_ADDRS", &pds.opened),
        ],
    );
    let before = carol_doc_fetches(net).await;
    for _ in 0..5 {
        let (s, b) = get(&runner.url(&format!("{base}/latest/greet"))).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (502, Some("CommitSignatureInvalid")),
            "{b}"
        );
    }
    let looked_up = carol_doc_fetches(net).await - before;
    override_carol_doc(net, json!({})).await;
    runner.stop();
    // The first resolution, and one refresh for the bad signature.
    assert!(
        looked_up <= 2,
        "the DID document was fetched {looked_up} times for 5 requests"
    );
}

async fn get_owned(url: String) -> (u16, Value) {
    get(&url).await
}

/// Slow clients cannot hold the runner's connections: headers sent too slowly are cut at
/// `http.header_read_timeout_ms`, and with every connection slot held by such clients a real
/// caller is served as soon as they are cut.
#[tokio::test(flavor = "multi_thread")]
async fn slow_header_clients_are_cut_and_cannot_hold_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((net, deno)) = setup() else { return };
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[
            ("ATRUND_HTTP_MAX_CONNECTIONS", "4"),
            ("ATRUND_HTTP_HEADER_READ_TIMEOUT_MS", "1000"),
        ],
    );
    let addr = runner.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(c);
    }
    let started = std::time::Instant::now();
    let (s, _) = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        get(&runner.url("/xrpc/dev.atrund.describeRunner")),
    )
    .await
    .expect("a real caller was locked out by slow connections");
    assert_eq!(s, 200);
    eprintln!("served after {:?} with every slot held", started.elapsed());
    for mut c in slow {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut buf))
                .await
                .expect("a slow connection was kept open past the header timeout");
        assert!(read.is_ok() || buf.is_empty());
    }
    runner.stop();
}

/// A request waiting for an instance slot holds no body: with the only slot busy, a caller that
/// declares a large body and sends almost none of it is answered `429 Busy` at once (the runner
/// never waited for the body), and a declared length over the cap is refused before any byte.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_not_buffered_before_a_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("bodies").await;
    let code = r#"
export const slow = { handler: async () => { await new Promise((r) => setTimeout(r, 4000)); return { slept: true }; } };
export const eat = { handler: async (_input, ctx) => ({ got: (await ctx.request.arrayBuffer()).byteLength }) };
"#;
    let manifest = json!({"endpoints": [{"name": "slow", "method": "GET"}, {"name": "eat", "method": "POST"}], "limits": {"concurrency": 1}});
    common::deploy(net, &acct, code, &manifest, "bodies", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[
            ("ATRUND_POOL_MAX_INSTANCES_PER_BUNDLE", "1"),
            ("ATRUND_POOL_BUSY_WAIT_MS", "200"),
            ("ATRUND_HTTP_MAX_REQUEST_BODY_BYTES", "100000"),
        ],
    );
    let base = format!("/bundle/{}/bodies/latest", acct.did);
    let (s, b) = get(&runner.url(&format!("{base}/eat"))).await;
    assert_eq!(s, 405, "{b}");
    let slow = tokio::spawn(get_owned(runner.url(&format!("{base}/slow"))));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let addr = runner.base.trim_start_matches("http://").to_string();
    let raw = |head: String, body: &'static [u8]| {
        let addr = addr.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            c.write_all(head.as_bytes()).await.expect("head");
            c.write_all(body).await.expect("body");
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("no answer while the body was still owed: the runner waited for it")
                .expect("read");
            String::from_utf8_lossy(&buf[..n]).to_string()
        }
    };
    let path = format!("{base}/eat");
    let answer = raw(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 90000\r\n\r\n"),
        b"only a few bytes",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("Busy"), "{answer}");
    let answer = raw(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100001\r\n\r\n"),
        b"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PayloadTooLarge"), "{answer}");

    let (s, b) = slow.await.expect("slow call");
    assert_eq!((s, &b), (200, &json!({"slept": true})), "{b}");
    // With the slot free, a body is streamed through whole.
    let resp = reqwest::Client::new()
        .post(runner.url(&path))
        .body(vec![1u8; 50_000])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"got": 50000})
    );
    runner.stop();
}

/// The blob directories of the runner's store that carry `owner`'s name.
fn stored_by(data: &Path, owner: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("bundles"))
        .expect("store")
        .flatten()
    {
        let o = std::fs::read_to_string(e.path().join("owner")).unwrap_or_default();
        if o.trim() == owner {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// Each author has a share of the code store: storing more removes that author's own least
/// recently used code, never another author's, and a blob larger than a whole share is refused.
#[tokio::test(flavor = "multi_thread")]
async fn each_author_has_a_share_of_the_code_store() {
    let Some((net, deno)) = setup() else { return };
    let heavy = net.create_account("heavy").await;
    let light = net.create_account("light").await;
    // ~1.1 KB of code per version; a share of 2500 bytes holds two of them.
    let code = |v: &str| format!("{}// {}\n", greeter(v), "x".repeat(1000));
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        deploy(net, &heavy, &code(v), "big", v).await;
    }
    deploy(net, &light, &code("light"), "small", "1.0.0").await;
    deploy(
        net,
        &light,
        &format!("{}// {}\n", greeter("huge"), "y".repeat(4000)),
        "huge",
        "1.0.0",
    )
    .await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[("ATRUND_TENANTS_MAX_STORE_BYTES_PER_AUTHOR", "2500")],
    );
    let call = |who: &Account, name: &str, v: &str| {
        runner.url(&format!("/bundle/{}/{name}/{v}/greet", who.did))
    };
    let (s, b) = get(&call(&light, "small", "1.0.0")).await;
    assert_eq!(s, 200, "{b}");
    let light_blobs = stored_by(data.path(), &light.did);
    assert_eq!(light_blobs.len(), 1);
    for v in ["1.0.0", "2.0.0"] {
        let (s, b) = get(&call(&heavy, "big", v)).await;
        assert_eq!((s, &b), (200, &json!({"word": v})), "{b}");
    }
    let first_two = stored_by(data.path(), &heavy.did);
    assert_eq!(first_two.len(), 2);
    let (s, b) = get(&call(&heavy, "big", "3.0.0")).await;
    assert_eq!((s, &b), (200, &json!({"word": "3.0.0"})), "{b}");
    let now = stored_by(data.path(), &heavy.did);
    assert_eq!(now.len(), 2, "over the share: {now:?}");
    assert!(!now.contains(&first_two[0]) || !now.contains(&first_two[1]));
    // The other author's code was not touched.
    assert_eq!(stored_by(data.path(), &light.did), light_blobs);
    // Code removed from the store is fetched and verified again when asked for.
    let (s, b) = get(&call(&heavy, "big", "1.0.0")).await;
    assert_eq!((s, &b), (200, &json!({"word": "1.0.0"})), "{b}");
    // One blob larger than a whole share.
    let (s, b) = get(&call(&light, "huge", "1.0.0")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (413, Some("BundleTooLarge")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_store_bytes_per_author"),
        "{b}"
    );
    runner.stop();

    // Code unused for longer than tenants.store_gc_after_secs is removed when a runner starts.
    let stale = &light_blobs[0];
    std::fs::write(
        data.path().join("bundles").join(stale).join("last-used"),
        "1000",
    )
    .expect("age a blob");
    let mut again = start(net, &deno, data.path(), &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while data.path().join("bundles").join(stale).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "unused code was not collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stored_by(data.path(), &heavy.did).len(), 2);
    again.stop();
}

/// An author whose bundles fill their data dirs past their share gets `507 DataQuotaExceeded`
/// for bundles that write, once measured; their bundles that do not write, and other authors,
/// keep running.
#[tokio::test(flavor = "multi_thread")]
async fn an_author_over_their_data_share_cannot_write_more() {
    let Some((net, deno)) = setup() else { return };
    let filler = net.create_account("filler").await;
    let neighbour = net.create_account("neighbour").await;
    let writer = r#"
export const fill = { handler: async () => {
  await Deno.mkdir("out", { recursive: true });
  await Deno.writeFile(`out/${crypto.randomUUID()}`, new Uint8Array(2000));
  return { wrote: 2000 };
} };
"#;
    let wm = json!({"endpoints": [{"name": "fill", "method": "POST"}], "permissions": {"write": ["out"]}});
    common::deploy(net, &filler, writer, &wm, "fill", "1.0.0").await;
    common::deploy(net, &neighbour, writer, &wm, "fill", "1.0.0").await;
    deploy(net, &filler, &greeter("reader"), "plain", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut runner = start(
        net,
        &deno,
        data.path(),
        &[("ATRUND_TENANTS_MAX_DATA_BYTES_PER_AUTHOR", "3000")],
    );
    let client = reqwest::Client::new();
    let fill = |who: &Account| {
        let url = runner.url(&format!("/bundle/{}/fill/latest/fill", who.did));
        let client = client.clone();
        async move {
            let r = client.post(url).send().await.expect("post");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Measured empty, then trusted for a while: two writes pass (4000 bytes > 3000).
    for _ in 0..2 {
        let (s, b) = fill(&filler).await;
        assert_eq!(s, 200, "{b}");
    }
    // Once measured again, writing bundles are refused.
    tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
    let (s, b) = fill(&filler).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (507, Some("DataQuotaExceeded")),
        "{b}"
    );
    // The same author's bundle that does not write still runs; the neighbour still writes.
    let (s, b) = get(&runner.url(&format!("/bundle/{}/plain/latest/greet", filler.did))).await;
    assert_eq!((s, &b), (200, &json!({"word": "reader"})), "{b}");
    let (s, b) = fill(&neighbour).await;
    assert_eq!(s, 200, "{b}");
    runner.stop();
}
