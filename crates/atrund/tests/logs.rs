//! Authors' logs end to end: a real `at-rund` runs a real Deno bundle that prints (its secret
//! among it) and makes a connection the egress proxy refuses (a `runner` line); the real test
//! PDS mints service-auth tokens; the author reads the lines through
//! `dev.atrund.getLogs`, `dev.atrund.tailLogs` and the `at-run logs` binary, and every forged,
//! misdirected, expired, replayed or someone else's token is refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atrund_testnet::TestNet;
use base64::Engine as _;
use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const say = { handler: (_input, ctx) => {
  const msg = decodeURIComponent(String(ctx.request.url).split("msg=")[1] ?? "none");
  console.log(`said ${msg}`);
  console.error(`warned ${msg}`);
  return { ok: true };
} };
export const leak = { handler: () => {
  console.log(`token=${Deno.env.get("API_TOKEN")};`);
  return { ok: true };
} };
export const out = { handler: async () => {
  // Listed, so Deno lets it through; the egress proxy refuses loopback.
  try { await fetch("http://127.0.0.1:8089/"); } catch { /* refused */ }
  return { ok: true };
} };
export const burst = { handler: () => {
  for (let i = 1; i <= 30; i++) console.log(`burst ${i}`);
  return { ok: true };
} };
"#;

fn manifest() -> Value {
    json!({"endpoints": [
        {"name": "say", "method": "GET"}, {"name": "leak", "method": "GET"},
        {"name": "out", "method": "GET"}, {"name": "burst", "method": "GET"}
    ], "permissions": {"net": ["127.0.0.1:8089"]}})
}

const GET_LOGS: &str = "dev.atrund.getLogs";
const TAIL_LOGS: &str = "dev.atrund.tailLogs";
const CAP: usize = 20;

fn setup() -> Option<(&'static TestNet, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    Some((net, deno))
}

fn start(net: &TestNet, deno: &Path, data: &Path, extra: &[(&str, &str)]) -> Daemon {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .env("ATRUND_LOGS_MAX_LINES_PER_BUNDLE", CAP.to_string());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Daemon::spawn(&mut cmd, false)
}

/// The `at-run` binary, built once per test binary (next to at-rund in the target dir).
fn at_run_bin() -> PathBuf {
    atrund_testnet::cargo_binary("at-run", "at-run", Path::new(env!("CARGO_BIN_EXE_at-rund")))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// GET `url` with `token` as the bearer (none: no Authorization header).
async fn call(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// `token` with its payload replaced by `f(payload)`, the signature kept.
fn tampered(token: &str, f: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("payload");
    let mut payload: Value = serde_json::from_slice(&raw).expect("payload JSON");
    f(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        b64(payload.to_string().as_bytes()),
        parts[2]
    )
}

/// A token with the right claims for `iss`, signed by a key that is not in its DID document.
fn forged(iss: &str, aud: &str, lxm: &str) -> String {
    use k256::ecdsa::signature::Signer as _;
    let sk = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).expect("key");
    let header = b64(json!({"typ": "JWT", "alg": "ES256K"})
        .to_string()
        .as_bytes());
    let payload = b64(
        json!({"iss": iss, "aud": aud, "lxm": lxm, "exp": now() + 60,
        "iat": now(), "jti": "forged-1"})
        .to_string()
        .as_bytes(),
    );
    let signed = format!("{header}.{payload}");
    let sig: k256::ecdsa::Signature = sk.sign(signed.as_bytes());
    let sig = sig.normalize_s().unwrap_or(sig);
    format!("{signed}.{}", b64(&sig.to_bytes()))
}

fn texts(v: &Value) -> Vec<String> {
    v["lines"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["text"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn invoke(d: &Daemon, did: &str, what: &str) {
    let (s, b) = call(&d.url(&format!("/bundle/{did}/chatty/latest/{what}")), None).await;
    assert_eq!(s, 200, "{what}: {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn authors_read_their_logs_and_every_other_token_is_refused() {
    let Some((net, deno)) = setup() else { return };
    let author = net.create_account("logauthor").await;
    let thief = net.create_account("logthief").await;
    common::deploy(net, &author, CODE, &manifest(), "chatty", "1.0.0").await;
    // The thief has a bundle of the same name: its logs are the thief's own, never the author's.
    common::deploy(net, &thief, CODE, &manifest(), "chatty", "1.0.0").await;
    let data = tempfile::tempdir().expect("temp dir");
    let d = start(net, &deno, data.path(), &[]);

    let (s, desc) = call(&d.url("/xrpc/dev.atrund.describeRunner"), None).await;
    assert_eq!(s, 200);
    let aud = desc["serviceDid"].as_str().expect("serviceDid").to_string();
    assert!(aud.starts_with("did:web:127.0.0.1%3A"), "{aud}");
    assert_eq!(desc["logsKept"], true);

    let canary = "canary-logs-9f31c2";
    let target = at_run::secrets::TargetArgs {
        runner: d.base.clone(),
        runner_key: None,
        name: "chatty".into(),
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(author.handle.clone()),
            password: Some(author.password.parse().expect("password")),
        },
        net: at_run::runners::NetArgs {
            plc_url: net.plc_url.clone(),
            handle_resolver: Some(net.pds_url.clone()),
            allow_loopback: true,
            no_dns: true,
        },
    };
    let pair = format!("API_TOKEN={canary}").parse().expect("secret arg");
    at_run::secrets::set(&target, &[pair])
        .await
        .expect("secrets set");
    invoke(&d, &author.did, "say?msg=hello").await;
    invoke(&d, &author.did, "leak").await;
    invoke(&d, &author.did, "out").await;
    invoke(&d, &thief.did, "say?msg=thiefs-own").await;

    let get = d.url(&format!("/xrpc/{GET_LOGS}?bundle=chatty"));
    let token = common::mint(net, &author, &aud, GET_LOGS, None).await;
    let (s, b) = call(&get, Some(&token)).await;
    assert_eq!(s, 200, "{b}");
    let lines = texts(&b);
    assert!(lines.contains(&"said hello".to_string()), "{b}");
    assert!(lines.contains(&"warned hello".to_string()), "{b}");
    assert!(
        lines.contains(&"token=[secret API_TOKEN];".to_string()),
        "{b}"
    );
    assert!(!b.to_string().contains(canary), "the secret leaked: {b}");
    // The refused connection, as the runner's own line about the instance.
    let refused = b["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["stream"] == "runner")
        .unwrap_or_else(|| panic!("no runner line: {b}"));
    let text = refused["text"].as_str().expect("text");
    assert!(
        text.starts_with("egress refused: ") && text.contains("127.0.0.1"),
        "{refused}"
    );
    assert!(!b.to_string().contains("thiefs-own"), "{b}");
    let said = b["lines"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["text"] == "warned hello"))
        .cloned()
        .expect("line");
    assert_eq!(said["stream"], "stderr");
    assert_eq!(said["version"], "1.0.0");
    assert!(said["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(b["author"], author.did.as_str());
    assert_eq!(
        (b["missed"].as_u64(), b["dropped"].as_u64()),
        (Some(0), Some(0))
    );

    // A token is good once.
    let (s, b) = call(&get, Some(&token)).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("AuthReplayed")), "{b}");

    // The attacks, each refused by name; none of them sees a line.
    let refused = |s: u16, b: &Value, status: u16, name: &str| {
        assert_eq!((s, b["error"].as_str()), (status, Some(name)), "{b}");
        assert!(
            b.get("lines").is_none() && !b.to_string().contains("said"),
            "{b}"
        );
    };
    let (s, b) = call(&get, None).await;
    refused(s, &b, 401, "AuthMissing");
    let (s, b) = call(&get, Some("not-a-token")).await;
    refused(s, &b, 401, "AuthInvalid");
    // Another account's valid token, for the author's bundle.
    let theirs = common::mint(net, &thief, &aud, GET_LOGS, None).await;
    let (s, b) = call(&format!("{get}&author={}", author.did), Some(&theirs)).await;
    refused(s, &b, 403, "NotBundleAuthor");
    // ... and without naming the author it reads the thief's own bundle only.
    let theirs = common::mint(net, &thief, &aud, GET_LOGS, None).await;
    let (s, b) = call(&get, Some(&theirs)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["author"], thief.did.as_str());
    assert!(texts(&b).contains(&"said thiefs-own".to_string()), "{b}");
    assert!(
        !b.to_string().contains("hello") && !b.to_string().contains("secret"),
        "{b}"
    );
    // Wrong audience: a token for another service.
    let t = common::mint(net, &author, "did:web:elsewhere.test", GET_LOGS, None).await;
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthWrongAudience");
    // Wrong method: a token bound to tailLogs, or to a PDS method.
    let t = common::mint(net, &author, &aud, TAIL_LOGS, None).await;
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthWrongMethod");
    let t = common::mint(net, &author, &aud, "com.atproto.repo.createRecord", None).await;
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthWrongMethod");
    // Signed by a key that is not the author's.
    let (s, b) = call(&get, Some(&forged(&author.did, &aud, GET_LOGS))).await;
    refused(s, &b, 401, "AuthInvalid");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{b}"
    );
    // The thief's genuine token with the issuer changed to the author: the signature breaks.
    let t = common::mint(net, &thief, &aud, GET_LOGS, None).await;
    let t = tampered(&t, |p| p["iss"] = author.did.as_str().into());
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthInvalid");
    // The author's genuine token with a longer life written in.
    let t = common::mint(net, &author, &aud, GET_LOGS, None).await;
    let t = tampered(&t, |p| p["exp"] = (now() + 600).into());
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthInvalid");
    // Expired: a token that lived 2 s.
    let t = common::mint(net, &author, &aud, GET_LOGS, Some(now() + 2)).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (s, b) = call(&get, Some(&t)).await;
    refused(s, &b, 401, "AuthExpired");

    // The ring's cap: 30 lines into a ring of 20; the reader is told how many it missed.
    invoke(&d, &author.did, "burst").await;
    // Output is read as it comes, so the last lines may land just after the response.
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        let t = common::mint(net, &author, &aud, GET_LOGS, None).await;
        let (s, b) = call(&format!("{get}&since=0&limit=1000"), Some(&t)).await;
        assert_eq!(s, 200, "{b}");
        if texts(&b).last().map(String::as_str) == Some("burst 30") || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines = texts(&b);
    assert_eq!(lines.len(), CAP, "{b}");
    assert_eq!(lines.last().map(String::as_str), Some("burst 30"));
    let missed = b["missed"].as_u64().expect("missed");
    assert!(missed > 0, "{b}");
    assert_eq!(missed, b["dropped"].as_u64().expect("dropped"));
    // Nothing lost silently: every line up to the cursor is either here or counted as missed.
    assert_eq!(
        missed + CAP as u64,
        b["cursor"].as_u64().expect("cursor"),
        "{b}"
    );

    // The CLI: at-run login, then at-run logs (one page, then --follow seeing a new line).
    let home = tempfile::tempdir().expect("config dir");
    let cli = |args: &[&str]| {
        let mut c = Command::new(at_run_bin());
        c.args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("ATRUN_PDS")
            .env_remove("ATRUN_IDENTIFIER")
            .env_remove("ATRUN_PASSWORD")
            .env_remove("ATRUN_RUNNER");
        c
    };
    let out = cli(&[
        "login",
        "--pds",
        &net.pds_url,
        "--identifier",
        &author.handle,
    ])
    .env("ATRUN_PASSWORD", &author.password)
    .output()
    .expect("at-run login");
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["logs", "chatty", "--runner", &d.base, "--limit", "5"])
        .output()
        .expect("at-run logs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("stdout burst 30"), "{stdout}");
    assert!(stdout.contains("lines dropped"), "{stdout}");
    assert!(!stdout.contains(canary));
    let out = cli(&[
        "logs", "chatty", "--runner", &d.base, "--json", "--since", "0",
    ])
    .output()
    .expect("at-run logs --json");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["missed"].as_u64(), Some(missed), "{v}");

    let mut follow = cli(&["logs", "chatty", "--runner", &d.base, "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("at-run logs --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The newest lines come first; then a line printed while it follows.
    let wait_for = |want: &str, limit: Duration| -> Option<Value> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["text"] == want {
                return Some(v);
            }
        }
        None
    };
    assert!(wait_for("burst 30", Duration::from_secs(30)).is_some());
    invoke(&d, &author.did, "say?msg=while-following").await;
    let seen = wait_for("said while-following", Duration::from_secs(30));
    let _ = follow.kill();
    let _ = follow.wait();
    let seen = seen.expect("--follow printed the new line");
    assert_eq!(seen["type"], "line");

    // tailLogs over raw HTTP: NDJSON; its token must be bound to tailLogs.
    let t = common::mint(net, &author, &aud, TAIL_LOGS, None).await;
    let resp = reqwest::Client::new()
        .get(d.url(&format!("/xrpc/{TAIL_LOGS}?bundle=chatty&limit=2")))
        .bearer_auth(&t)
        .send()
        .await
        .expect("tailLogs");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut resp = resp;
    // The two newest lines, in either order: stdout and stderr are separate pipes, so which of
    // the two lines printed by one call is recorded first is a race.
    let mut text = Vec::new();
    while text.iter().filter(|b| **b == b'\n').count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the newest lines")
            .expect("chunk")
            .expect("not the end");
        text.extend_from_slice(&chunk);
    }
    let mut newest: Vec<(String, String)> = text
        .split(|b| *b == b'\n')
        .take(2)
        .map(|l| {
            let v: Value = serde_json::from_slice(l).expect("NDJSON");
            (
                v["type"].as_str().unwrap_or_default().to_string(),
                v["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    newest.sort();
    assert_eq!(
        newest,
        [
            ("line".to_string(), "said while-following".to_string()),
            ("line".to_string(), "warned while-following".to_string())
        ]
    );
    drop(resp);
    let t = common::mint(net, &author, &aud, GET_LOGS, None).await;
    let (s, b) = call(
        &d.url(&format!("/xrpc/{TAIL_LOGS}?bundle=chatty")),
        Some(&t),
    )
    .await;
    refused(s, &b, 401, "AuthWrongMethod");

    let log = d.log();
    assert!(!log.contains(canary), "the secret is in the runner's log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_keeps_no_logs_says_so() {
    let Some((net, deno)) = setup() else { return };
    let author = net.create_account("nologs").await;
    let data = tempfile::tempdir().expect("temp dir");
    let d = start(net, &deno, data.path(), &[("ATRUND_LOGS_KEEP", "false")]);
    let (_, desc) = call(&d.url("/xrpc/dev.atrund.describeRunner"), None).await;
    assert_eq!(desc["logsKept"], false);
    let aud = desc["serviceDid"].as_str().expect("serviceDid").to_string();
    let t = common::mint(net, &author, &aud, GET_LOGS, None).await;
    for method in [GET_LOGS, TAIL_LOGS] {
        let (s, b) = call(&d.url(&format!("/xrpc/{method}?bundle=chatty")), Some(&t)).await;
        assert_eq!((s, b["error"].as_str()), (404, Some("LogsDisabled")), "{b}");
        assert!(b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("logs.keep"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_runner_refuses_unlisted_issuers_before_resolving() {
    let Some((net, deno)) = setup() else { return };
    let listed = net.create_account("loglisted").await;
    let other = net.create_account("logunlisted").await;
    let data = tempfile::tempdir().expect("temp dir");
    let d = start(
        net,
        &deno,
        data.path(),
        &[("ATRUND_POLICY", listed.did.as_str())],
    );
    let (_, desc) = call(&d.url("/xrpc/dev.atrund.describeRunner"), None).await;
    let aud = desc["serviceDid"].as_str().expect("serviceDid").to_string();
    let get = d.url(&format!("/xrpc/{GET_LOGS}?bundle=chatty"));
    let t = common::mint(net, &other, &aud, GET_LOGS, None).await;
    let (s, b) = call(&get, Some(&t)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{b}"
    );
    let t = common::mint(net, &listed, &aud, GET_LOGS, None).await;
    let (s, b) = call(&get, Some(&t)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["lines"].as_array().map(Vec::len), Some(0), "{b}");
}
