//! Secrets end to end: `at-run secrets` (the library the CLI runs) seals values to a real
//! `at-rund serve`'s key and writes them to the real test PDS; the runner proves, opens and
//! injects them as the bundle's only readable environment. Every test ends by grepping the
//! runner's log and every file under its data dir for the values it used.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Daemon;

use at_run::secrets::{SecretArg, TargetArgs};
use atrund_secrets::{
    secrets_rkey, Binding, RunnerKeys, RunnerPublicKey, SealedEntry, SecretsRecord, RECORD_FORMAT,
};
use atrund_testnet::{Account, TestNet};
use serde_json::{json, Value};
use sha2::Digest;

/// A running `at-rund serve` against the test network, with a data dir that can outlive one
/// process (the caller owns it).
struct Runner {
    daemon: Daemon,
}

fn runner_cmd(net: &TestNet, deno: &Path, data: &Path, args: &[&str]) -> Command {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .args(args)
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .env("ATRUND_LOG", "debug,hyper=info,reqwest=info,h2=info");
    cmd
}

impl Runner {
    fn start(net: &TestNet, deno: &Path, data: &Path) -> Runner {
        Runner {
            daemon: Daemon::spawn(&mut runner_cmd(net, deno, data, &["serve"]), false),
        }
    }

    fn url(&self, path: &str) -> String {
        self.daemon.url(path)
    }

    /// Stops the process (so its log is complete) and returns the log.
    fn stop(mut self) -> String {
        self.daemon.stop()
    }
}

fn setup() -> Option<(&'static TestNet, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    Some((net, deno))
}

async fn deploy(net: &TestNet, account: &Account, code: &str, manifest: &Value, name: &str) {
    common::deploy(net, account, code, manifest, name, "1.0.0").await;
}

fn target(net: &TestNet, acct: &Account, runner: &Runner, name: &str) -> TargetArgs {
    TargetArgs {
        runner: runner.daemon.base.clone(),
        runner_key: None,
        name: name.to_string(),
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(acct.handle.clone()),
            password: Some(acct.password.parse().expect("password")),
        },
        net: at_run::runners::NetArgs {
            plc_url: net.plc_url.clone(),
            handle_resolver: Some(net.pds_url.clone()),
            allow_loopback: true,
            no_dns: true,
        },
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<SecretArg> {
    p.iter()
        .map(|(n, v)| format!("{n}={v}").parse().expect("secret arg"))
        .collect()
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn sha_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reports, per name, a hash of the value (never the value), or the error reading it raised.
const VAULT: &str = r#"
async function sha(s) {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
async function read(name) {
  try {
    const v = Deno.env.get(name);
    return v === undefined ? "unset" : await sha(v);
  } catch (e) {
    return e?.name ?? "unknown";
  }
}
export const check = { handler: async () => ({
  API_TOKEN: await read("API_TOKEN"), OTHER: await read("OTHER"),
  HOME: await read("HOME"), PATH: await read("PATH"),
}) };
export const boom = { handler: () => { throw new Error("the handler failed on purpose"); } };
// Prints its own secrets: the runner must log them masked.
export const leak = { handler: () => {
  console.log(`token=${Deno.env.get("API_TOKEN")};`);
  console.error(`other=${Deno.env.get("OTHER")};`);
  return { printed: true };
} };
"#;

fn vault_manifest() -> Value {
    json!({"endpoints": [
        {"name": "check", "method": "GET"}, {"name": "boom"}, {"name": "leak", "method": "GET"}
    ]})
}

/// Every file under `dir`, recursively (sockets and other specials skipped).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// No canary in the log or in any file under the data dir.
fn assert_no_canary(log: &str, data: &Path, canaries: &[&str]) {
    let all = files(data);
    assert!(
        !all.is_empty(),
        "the data dir is empty: nothing was checked"
    );
    for c in canaries {
        assert!(!log.contains(c), "canary {c} is in the runner's log");
        for f in &all {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(
                !bytes.windows(c.len()).any(|w| w == c.as_bytes()),
                "canary {c} is in {}",
                f.display()
            );
        }
    }
}

/// The `micros=` of each "secrets decrypted" debug line.
fn decrypt_micros(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("secrets decrypted"))
        .filter_map(|l| l.split("micros=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_bundle_as_its_only_env_and_changes_reach_new_instances() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("vault").await;
    deploy(net, &acct, VAULT, &vault_manifest(), "vault").await;
    let data = tempfile::tempdir().expect("temp dir");
    let runner = Runner::start(net, &deno, data.path());

    // The key: created with mode 0600 and announced by describeRunner.
    let key_file = data.path().join("runner-key.json");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (s, d) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(s, 200);
    let announced = d["publicKey"].as_str().expect("publicKey").to_string();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&key_file).expect("read")).expect("json");
    assert_eq!(file["current"]["publicKey"], announced.as_str());

    let check = runner.url(&format!("/bundle/{}/vault/latest/check", acct.did));
    // No secrets yet: the repository proves there is no record; nothing is readable.
    let (s, b) = get(&check).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["API_TOKEN"], "NotCapable", "{b}");

    let (first, other) = ("canary-first-5b1e0c", "canary-other-77d2a9");
    let t = target(net, &acct, &runner, "vault");
    let out = at_run::secrets::set(&t, &pairs(&[("API_TOKEN", first), ("OTHER", other)]))
        .await
        .expect("secrets set");
    assert_eq!(out.names, ["API_TOKEN", "OTHER"]);
    assert_eq!(out.runner_key, announced);
    assert!(!out.render("sealed").contains(first));

    let (s, b) = get(&check).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["API_TOKEN"], sha_hex(first), "{b}");
    assert_eq!(b["OTHER"], sha_hex(other), "{b}");
    // Names that are not secrets stay unreadable.
    assert_eq!(b["HOME"], "NotCapable", "{b}");
    assert_eq!(b["PATH"], "NotCapable", "{b}");
    // A bundle printing its secrets (stdout and stderr).
    let (s, b) = get(&runner.url(&format!("/bundle/{}/vault/latest/leak", acct.did))).await;
    assert_eq!(s, 200, "{b}");

    // A changed secret reaches the next new instance; `set` keeps OTHER's sealed bytes.
    let second = "canary-second-c40f31";
    at_run::secrets::set(&t, &pairs(&[("API_TOKEN", second)]))
        .await
        .expect("secrets set again");
    let (_, b) = get(&check).await;
    assert_eq!(b["API_TOKEN"], sha_hex(second), "{b}");
    assert_eq!(b["OTHER"], sha_hex(other), "{b}");

    // unset removes a name (from the env of the next instance too); list shows names only.
    let out = at_run::secrets::unset(&t, &["OTHER".to_string()])
        .await
        .expect("unset");
    assert_eq!(
        (out.names.as_slice(), out.changed.as_slice()),
        (&["API_TOKEN".to_string()][..], &["OTHER".to_string()][..])
    );
    let listed = at_run::secrets::list(&t).await.expect("list");
    assert_eq!(listed.names, ["API_TOKEN"]);
    let (_, b) = get(&check).await;
    assert_eq!(b["API_TOKEN"], sha_hex(second), "{b}");
    assert_eq!(b["OTHER"], "NotCapable", "{b}");

    // A bundle that throws, while its secrets are loaded.
    let (s, _) = get(&runner.url(&format!("/bundle/{}/vault/latest/boom", acct.did))).await;
    assert!(s >= 500, "boom answered {s}");

    // Unset everything: the record is deleted and the bundle has no env again.
    let out = at_run::secrets::unset(&t, &["API_TOKEN".to_string()])
        .await
        .expect("unset all");
    assert!(out.cid.is_none() && out.names.is_empty());
    let (_, b) = get(&check).await;
    assert_eq!(b["API_TOKEN"], "NotCapable", "{b}");

    let log = runner.stop();
    let micros = decrypt_micros(&log);
    assert!(
        micros.len() >= 3,
        "expected a decryption per record version: {micros:?}"
    );
    let mut sorted = micros.clone();
    sorted.sort_unstable();
    eprintln!(
        "time to decrypt (debug build, per record version): median {} µs over {:?}",
        sorted[sorted.len() / 2],
        micros
    );
    assert_no_canary(&log, data.path(), &[first, other, second]);
    // Masked, not dropped: the operator still sees that the bundle printed a secret.
    assert!(
        log.contains("token=[secret API_TOKEN];"),
        "no masked stdout line"
    );
    assert!(
        log.contains("other=[secret OTHER];"),
        "no masked stderr line"
    );
}

/// A secret set or changed reaches the bundle through the PDS's event stream, long before the
/// 600 s revalidation would have looked again (issue 16: within 2 s of publication).
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_change_arrives_through_the_event_stream() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("vaultlive").await;
    deploy(net, &acct, VAULT, &vault_manifest(), "vault").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = runner_cmd(net, &deno, data.path(), &["serve"]);
    cmd.env("ATRUND_FETCH_REVALIDATE_SECS", "600");
    let runner = Runner {
        daemon: Daemon::spawn(&mut cmd, false),
    };
    let check = runner.url(&format!("/bundle/{}/vault/latest/check", acct.did));
    let (s, b) = get(&check).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!("NotCapable")), "{b}");
    let opened = std::time::Instant::now();
    while !runner.daemon.log().contains("event stream open") {
        assert!(
            opened.elapsed() < Duration::from_secs(20),
            "no event stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = target(net, &acct, &runner, "vault");
    for value in ["canary-live-one-81f2", "canary-live-two-3c9d"] {
        at_run::secrets::set(&t, &pairs(&[("API_TOKEN", value)]))
            .await
            .expect("secrets set");
        let set = std::time::Instant::now();
        loop {
            let (_, b) = get(&check).await;
            if b["API_TOKEN"] == sha_hex(value) {
                break;
            }
            assert!(
                set.elapsed() < Duration::from_secs(30),
                "the secret never arrived: {b}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eprintln!(
            "MEASURED: secret set -> served through the event stream: {:?}",
            set.elapsed()
        );
    }
    // The data dir is searched by the test above; the log is enough here.
    let log = runner.stop();
    for c in ["canary-live-one-81f2", "canary-live-two-3c9d"] {
        assert!(!log.contains(c), "canary {c} is in the runner's log");
    }
}

/// Writes a secrets record by hand (what a confused or malicious tool could write).
async fn put_secrets(net: &TestNet, acct: &Account, rkey: &str, record: &SecretsRecord) {
    let client = at_run::xrpc::Client::new(&net.pds_url).expect("client");
    let session = client
        .create_session(&acct.handle, &acct.password)
        .await
        .expect("login");
    client
        .put_record(
            &session,
            atrund_secrets::SECRETS_COLLECTION,
            rkey,
            &record.to_json(),
            false,
        )
        .await
        .expect("put record");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_sealed_for_another_runner_key_are_refused_by_name() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("wrongkey").await;
    deploy(net, &acct, VAULT, &vault_manifest(), "vault").await;
    let data = tempfile::tempdir().expect("temp dir");
    let runner = Runner::start(net, &deno, data.path());
    let (_, d) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    let ours = RunnerPublicKey::from_multibase(d["publicKey"].as_str().expect("key")).expect("mb");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let (theirs, _) = RunnerKeys::load_or_create(&elsewhere.path().join("k.json"), Duration::ZERO)
        .expect("other runner's key");
    let theirs = theirs.public_key();
    let canary = "canary-wrongkey-9e3d44";
    let bound = |name: &'static str, key: &RunnerPublicKey| {
        atrund_secrets::seal_bound(
            &Binding {
                did: &acct.did,
                bundle: "vault",
                name,
                runner_key: key,
            },
            canary,
        )
        .expect("seal")
    };
    let sealed = bound("API_TOKEN", &theirs);
    let rkey = secrets_rkey("vault", &ours);
    let check = runner.url(&format!("/bundle/{}/vault/latest/check", acct.did));

    // Sealed for, and saying, another runner's key, at this runner's record key.
    let mut record = SecretsRecord {
        format: Some(RECORD_FORMAT),
        name: "vault".into(),
        runner_key: theirs.to_multibase(),
        entries: vec![SealedEntry {
            name: "API_TOKEN".into(),
            sealed: sealed.clone(),
        }],
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    };
    put_secrets(net, &acct, &rkey, &record).await;
    let (s, b) = get(&check).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretsNotForThisRunner")),
        "{b}"
    );
    let msg = b["message"].as_str().unwrap_or_default();
    assert!(msg.contains("at-run secrets set"), "{msg}");

    // Claims this runner's key, but the value was sealed to another.
    record.runner_key = ours.to_multibase();
    put_secrets(net, &acct, &rkey, &record).await;
    let (s, b) = get(&check).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretsUndecryptable")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("API_TOKEN"),
        "{b}"
    );

    // A name the runner reserves.
    record.entries[0] = SealedEntry {
        name: "LD_PRELOAD".into(),
        sealed: bound("LD_PRELOAD", &ours),
    };
    put_secrets(net, &acct, &rkey, &record).await;
    let (s, b) = get(&check).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretsInvalid")),
        "{b}"
    );

    // Records for other runners, at their own keys, are simply not this runner's business.
    let mut theirs_record = record.clone();
    theirs_record.runner_key = theirs.to_multibase();
    theirs_record.entries[0] = SealedEntry {
        name: "API_TOKEN".into(),
        sealed,
    };
    put_secrets(net, &acct, &secrets_rkey("vault", &theirs), &theirs_record).await;
    at_run::secrets::unset(
        &target(net, &acct, &runner, "vault"),
        &["LD_PRELOAD".into()],
    )
    .await
    .expect("unset");
    let (s, b) = get(&check).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!("NotCapable")), "{b}");

    let log = runner.stop();
    assert_no_canary(&log, data.path(), &[canary]);
}

/// The stored record of `acct` at `rkey`, as the PDS serves it to anyone.
async fn read_secrets(net: &TestNet, acct: &Account, rkey: &str) -> SecretsRecord {
    let client = at_run::xrpc::Client::new(&net.pds_url).expect("client");
    let v = client
        .get_record(&acct.did, atrund_secrets::SECRETS_COLLECTION, rkey)
        .await
        .expect("getRecord")
        .expect("the record exists");
    SecretsRecord::from_json(&v["value"]).expect("record")
}

/// The attack of issue 9: author B copies author A's public secrets record into B's own repo
/// (under B's bundle of the same name, and under another name), and A's own record is copied
/// under A's other bundle. Each copy gets `SecretBindingMismatch` and no value; A keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn copied_secrets_records_open_nothing() {
    let Some((net, deno)) = setup() else { return };
    let victim = net.create_account("victim").await;
    let thief = net.create_account("thief").await;
    deploy(net, &victim, VAULT, &vault_manifest(), "vault").await;
    deploy(net, &victim, VAULT, &vault_manifest(), "sibling").await;
    deploy(net, &thief, VAULT, &vault_manifest(), "vault").await;
    deploy(net, &thief, VAULT, &vault_manifest(), "loot").await;
    let data = tempfile::tempdir().expect("temp dir");
    let runner = Runner::start(net, &deno, data.path());
    let (_, d) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    let key = RunnerPublicKey::from_multibase(d["publicKey"].as_str().expect("key")).expect("mb");

    let canary = "canary-victim-0b7c52";
    at_run::secrets::set(
        &target(net, &victim, &runner, "vault"),
        &pairs(&[("API_TOKEN", canary)]),
    )
    .await
    .expect("victim sets a secret");
    let check = |acct: &Account, bundle: &str| {
        runner.url(&format!("/bundle/{}/{bundle}/latest/check", acct.did))
    };
    let (s, b) = get(&check(&victim, "vault")).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!(sha_hex(canary))), "{b}");

    // Anyone can read the victim's record from the PDS.
    let stolen = read_secrets(net, &victim, &secrets_rkey("vault", &key)).await;
    assert_eq!(stolen.entries.len(), 1);
    let refused = |b: &Value| {
        let text = b.to_string();
        assert!(
            !text.contains(canary) && !text.contains(&sha_hex(canary)),
            "a value leaked: {text}"
        );
    };

    // 1. Into the thief's repo, same bundle name, same runner-key fingerprint.
    put_secrets(net, &thief, &secrets_rkey("vault", &key), &stolen).await;
    let (s, b) = get(&check(&thief, "vault")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretBindingMismatch")),
        "{b}"
    );
    refused(&b);
    let msg = b["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("another author") && msg.contains("at-run secrets set"),
        "{msg}"
    );

    // 2. Into the thief's repo under another bundle name.
    let mut renamed = stolen.clone();
    renamed.name = "loot".into();
    put_secrets(net, &thief, &secrets_rkey("loot", &key), &renamed).await;
    let (s, b) = get(&check(&thief, "loot")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretBindingMismatch")),
        "{b}"
    );
    refused(&b);

    // 3. Within the victim's own account: bundle "vault"'s entries under bundle "sibling".
    let mut sibling = stolen.clone();
    sibling.name = "sibling".into();
    put_secrets(net, &victim, &secrets_rkey("sibling", &key), &sibling).await;
    let (s, b) = get(&check(&victim, "sibling")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretBindingMismatch")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("another bundle"),
        "{b}"
    );
    refused(&b);

    // 4. A record in the old, unbound format (a bare sealed value) is refused as outdated.
    let old = SecretsRecord {
        format: None,
        entries: vec![SealedEntry {
            name: "API_TOKEN".into(),
            sealed: key.seal("API_TOKEN", canary.as_bytes()).expect("seal"),
        }],
        ..renamed.clone()
    };
    put_secrets(net, &thief, &secrets_rkey("loot", &key), &old).await;
    let (s, b) = get(&check(&thief, "loot")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("SecretsOutdated")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at-run secrets set"),
        "{b}"
    );
    refused(&b);
    // `set` over an outdated record reports the names it could not keep.
    let out = at_run::secrets::set(
        &target(net, &thief, &runner, "loot"),
        &pairs(&[("OTHER", "canary-thief-own-1f2e")]),
    )
    .await
    .expect("set over an old record");
    assert_eq!(out.dropped, ["API_TOKEN"]);
    assert!(out.render("sealed").contains("set them again"));
    let (s, b) = get(&check(&thief, "loot")).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!("NotCapable")), "{b}");

    // The victim is untouched.
    let (s, b) = get(&check(&victim, "vault")).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!(sha_hex(canary))), "{b}");
    let log = runner.stop();
    assert_no_canary(&log, data.path(), &[canary]);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_mode_keygen_and_rotation_grace() {
    let Some((net, deno)) = setup() else { return };
    let acct = net.create_account("rotate").await;
    deploy(net, &acct, VAULT, &vault_manifest(), "vault").await;
    let data = tempfile::tempdir().expect("temp dir");

    // keygen creates the key (0600) and prints the public key; a second run keeps it.
    let keygen = |args: &[&str]| {
        let out = runner_cmd(net, &deno, data.path(), args)
            .output()
            .expect("run keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    };
    let first = keygen(&["keygen"]);
    assert!(RunnerPublicKey::from_multibase(&first).is_ok(), "{first}");
    assert_eq!(keygen(&["keygen"]), first);

    // Set a secret for that key.
    let runner = Runner::start(net, &deno, data.path());
    let canary = "canary-rotate-2a6b90";
    at_run::secrets::set(
        &target(net, &acct, &runner, "vault"),
        &pairs(&[("API_TOKEN", canary)]),
    )
    .await
    .expect("set");
    let mut log = runner.stop();

    // Rotate: the new key is announced, the record sealed to the old one still opens (grace).
    let rotated = keygen(&["keygen", "--rotate"]);
    assert_ne!(rotated, first);
    let runner = Runner::start(net, &deno, data.path());
    let (_, d) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(d["publicKey"], rotated.as_str());
    let check = runner.url(&format!("/bundle/{}/vault/latest/check", acct.did));
    let (s, b) = get(&check).await;
    assert_eq!((s, &b["API_TOKEN"]), (200, &json!(sha_hex(canary))), "{b}");
    log.push_str(&runner.stop());

    // A key file others can read: the runner refuses to start and says how to fix it.
    let key_file = data.path().join("runner-key.json");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = runner_cmd(net, &deno, data.path(), &["serve"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chmod 600") && err.contains(&key_file.display().to_string()),
        "{err}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    assert_no_canary(&log, data.path(), &[canary]);
}
