//! The network around runners (docs/network.md), against the real PLC + PDS: a runner announced
//! in its operator's repository with `at-rund announce`, read back by anyone, agreeing with the
//! runner's describeRunner; the record and describeRunner's answer checked with the reference
//! lexicon validator (`@atproto/lexicon`, tests/lexicons/validate.mjs) against `lexicons/`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use atrund_api::{DescribeRunner, RunnerRecord, RUNNER_COLLECTION, RUNNER_RKEY};
use atrund_testnet::{Account, TestNet};
use common::Daemon;

/// `at-rund announce --url URL ARGS...` with a cleared environment and an empty home (no stored
/// `at-run` session), signing in as `who` on the test PDS when given.
fn announce(home: &Path, url: &str, args: &[&str], who: Option<(&TestNet, &Account)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_at-rund"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ATRUND_LOG", "warn")
        .args(["announce", "--url", url])
        .args(args);
    if let Some((net, acct)) = who {
        cmd.args([
            "--pds",
            &net.pds_url,
            "--identifier",
            &acct.handle,
            "--password",
            &acct.password,
        ]);
    }
    cmd.output().expect("run at-rund announce")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The reference validator's verdict on `checks` (`record:NSID=FILE`, `output:NSID=FILE`).
fn validate(checks: &[String]) -> Output {
    let script = atrund_testnet::repo_root().join("tests/lexicons/validate.mjs");
    let node = std::env::var_os("ATRUND_TEST_NODE").unwrap_or_else(|| "node".into());
    Command::new(node)
        .arg(script)
        .args(checks)
        .output()
        .expect("run node tests/lexicons/validate.mjs")
}

/// Writes `record` as `who`'s runner record, straight to the PDS (not through `announce`).
async fn put_record(net: &TestNet, who: &Account, record: &serde_json::Value) {
    let client = at_run::xrpc::Client::new(&net.pds_url).unwrap();
    let session = client
        .create_session(&who.handle, &who.password)
        .await
        .unwrap();
    client
        .put_record(&session, RUNNER_COLLECTION, RUNNER_RKEY, record, false)
        .await
        .unwrap();
}

async fn get_record(net: &TestNet, did: &str) -> (u16, serde_json::Value) {
    let url = format!(
        "{}/xrpc/com.atproto.repo.getRecord?repo={did}&collection={RUNNER_COLLECTION}&rkey={RUNNER_RKEY}",
        net.pds_url
    );
    common::get(&url).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_announces_itself_in_its_operators_repo() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off");
    let mut runner = Daemon::spawn(&mut cmd, false);
    let operator = net.create_account("operator").await;
    let (status, describe) = common::get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(status, 200, "{describe}");
    let described: DescribeRunner = serde_json::from_value(describe.clone()).unwrap();

    // --print: the record as it would be written, and nothing written.
    let printed = announce(home.path(), &runner.base, &["--print"], None);
    assert!(printed.status.success(), "{}", text(&printed));
    let rec: RunnerRecord = serde_json::from_slice(&printed.stdout).expect("--print is the record");
    assert_eq!(rec.kind, "dev.atrund.runner");
    assert_eq!(rec.endpoint, runner.base);
    assert_eq!(rec.policy, "open");
    assert_eq!(rec.status, "ok");
    assert!(rec.disagreements(&described).is_empty(), "{rec:?}");
    assert_eq!(
        get_record(net, &operator.did).await.0,
        400,
        "--print wrote nothing"
    );

    // Written with the operator's credentials (as for at-run), then read back by anyone.
    let base_slash = format!("{}/", runner.base);
    let written = announce(home.path(), &base_slash, &[], Some((net, &operator)));
    assert!(written.status.success(), "{}", text(&written));
    let uri = format!("at://{}/{RUNNER_COLLECTION}/{RUNNER_RKEY}", operator.did);
    assert!(
        String::from_utf8_lossy(&written.stdout)
            .contains(&format!("announced {} as {uri}", runner.base)),
        "{}",
        text(&written)
    );
    let (status, got) = get_record(net, &operator.did).await;
    assert_eq!(status, 200, "{got}");
    let stored: RunnerRecord = serde_json::from_value(got["value"].clone()).unwrap();
    assert_eq!(
        stored.endpoint, runner.base,
        "the trailing / is not announced"
    );
    assert_eq!(stored.public_key, described.public_key);
    assert!(stored.disagreements(&described).is_empty(), "{stored:?}");

    // Run again with nothing changed (as from a timer): not written again the same day; with
    // --force, the same record (one per operator) is replaced.
    let again = announce(home.path(), &runner.base, &[], Some((net, &operator)));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("not written again"),
        "{}",
        text(&again)
    );
    let (_, same) = get_record(net, &operator.did).await;
    assert_eq!(
        same["cid"], got["cid"],
        "an unchanged record is not rewritten"
    );
    let forced = announce(
        home.path(),
        &runner.base,
        &["--force"],
        Some((net, &operator)),
    );
    assert!(forced.status.success(), "{}", text(&forced));
    let (_, got2) = get_record(net, &operator.did).await;
    assert_ne!(got2["cid"], got["cid"], "--force writes");
    let stored2: RunnerRecord = serde_json::from_value(got2["value"].clone()).unwrap();
    assert!(stored2.updated_at > stored.updated_at, "{stored2:?}");

    // The record and describeRunner's answer, as the reference validator reads lexicons/.
    let dir = tempfile::tempdir().unwrap();
    let rec_file = dir.path().join("runner.json");
    let out_file = dir.path().join("describe.json");
    std::fs::write(&rec_file, got["value"].to_string()).unwrap();
    std::fs::write(&out_file, describe.to_string()).unwrap();
    let checked = validate(&[
        format!("record:dev.atrund.runner={}", rec_file.display()),
        format!("output:dev.atrund.describeRunner={}", out_file.display()),
    ]);
    assert!(checked.status.success(), "{}", text(&checked));
    // The validator is not lenient: a record with a field of the wrong type fails.
    let mut bad = got["value"].clone();
    bad["limits"]["pids"] = serde_json::json!("many");
    std::fs::write(&rec_file, bad.to_string()).unwrap();
    let refused = validate(&[format!("record:dev.atrund.runner={}", rec_file.display())]);
    assert!(!refused.status.success(), "{}", text(&refused));

    // `at-run runners ls`: the operator's runner found by handle, its record verified against
    // their signed repository, the runner ready and agreeing; a stranger announces none; a liar's
    // record (another runner's URL with a key of their own) is caught by describeRunner.
    let stranger = net.create_account("stranger").await;
    let liar = net.create_account("liar").await;
    let mut forged = got["value"].clone();
    forged["publicKey"] = serde_json::json!("z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc");
    put_record(net, &liar, &forged).await;
    let netargs = at_run::runners::NetArgs {
        plc_url: net.plc_url.clone(),
        handle_resolver: Some(net.pds_url.clone()),
        allow_loopback: true,
        no_dns: true,
    };
    let manifest = |limits: serde_json::Value| -> atrund_bundle::Manifest {
        serde_json::from_value(serde_json::json!({
            "endpoints": [{"name": "hi", "method": "GET"}],
            "limits": limits,
        }))
        .unwrap()
    };
    let fits = manifest(serde_json::json!({}));
    let deno_version = described.runtimes[0]
        .version_number()
        .unwrap_or("")
        .to_string();
    let bundle = at_run::runners::Bundle {
        manifest: &fits,
        code_bytes: 100,
        local_deno: &deno_version,
        author: None,
    };
    let names = [
        operator.handle.clone(),
        format!("@{}", operator.did),
        stranger.handle.clone(),
        liar.handle.clone(),
        "not a handle!".to_string(),
    ];
    let listed = at_run::runners::list(&names, &netargs, Some(&bundle))
        .await
        .unwrap();
    let report = at_run::runners::render(&listed);
    for l in &listed[..2] {
        assert_eq!(l.did.as_deref(), Some(operator.did.as_str()), "{report}");
        assert_eq!(
            l.record.as_ref().map(|r| r.endpoint.as_str()),
            Some(runner.base.as_str()),
            "{report}"
        );
        assert!(
            l.ready && l.disagreements.is_empty() && l.problem.is_none(),
            "{report}"
        );
        assert!(l.check.as_ref().is_some_and(|c| c.compatible), "{report}");
    }
    assert!(report.contains("would run here"), "{report}");
    assert!(listed[2].record.is_none(), "{report}");
    assert!(
        listed[2]
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("announces no runner"),
        "{report}"
    );
    assert_eq!(
        listed[3].disagreements,
        ["publicKey differs between the record and describeRunner"],
        "{report}"
    );
    assert!(report.contains("DISAGREES"), "{report}");
    assert!(
        listed[3].check.is_none(),
        "no verdict for a runner that is not the announced one"
    );
    assert!(
        listed[4]
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("not a handle or DID"),
        "{report}"
    );
    // A record cannot point the author's CLI at their own network: URLs from records go
    // through the runner's address rules (after DNS; https only off loopback).
    for (i, endpoint) in [
        "https://169.254.169.254",
        "https://10.1.2.3:8443",
        "http://runner.example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let steerer = net.create_account(&format!("steer{i}x")).await;
        let mut steer = got["value"].clone();
        steer["endpoint"] = serde_json::json!(endpoint);
        put_record(net, &steerer, &steer).await;
        let l = at_run::runners::list(std::slice::from_ref(&steerer.handle), &netargs, None)
            .await
            .unwrap();
        let problem = l[0].problem.clone().unwrap_or_default();
        assert!(
            problem.contains("is not contacted") || problem.contains("refusing URL"),
            "{endpoint}: {problem}"
        );
        assert!(!l[0].ready, "{endpoint}");
    }
    // A bundle asking for more than the runner allows would not run there, and says why.
    let greedy = manifest(serde_json::json!({"timeoutMs": described.limits.timeout_ms.max + 1}));
    let bundle = at_run::runners::Bundle {
        manifest: &greedy,
        ..bundle
    };
    let listed = at_run::runners::list(&names[..1], &netargs, Some(&bundle))
        .await
        .unwrap();
    let report = at_run::runners::render(&listed);
    assert!(
        listed[0].check.as_ref().is_some_and(|c| !c.compatible),
        "{report}"
    );
    assert!(report.contains("would NOT run here"), "{report}");

    // `--runner` by operator: `secrets set` seals to the key the operator's signed record
    // announces (pinned, as --runner-key would), and refuses a runner that disagrees with its
    // record, an account with no runner, and a --runner-key the record contradicts.
    let author = net.create_account("author").await;
    let target = |runner: &str, runner_key: Option<String>| at_run::secrets::TargetArgs {
        runner: runner.to_string(),
        runner_key,
        name: "hello".into(),
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(author.handle.clone()),
            password: Some(author.password.parse().unwrap()),
        },
        net: netargs.clone(),
    };
    let pair = || vec!["API_TOKEN=by-operator-1".parse().unwrap()];
    let sealed = at_run::secrets::set(&target(&operator.handle, None), &pair())
        .await
        .expect("secrets set --runner <operator handle>");
    assert_eq!(sealed.runner_key, described.public_key);
    for (runner, key, want) in [
        (liar.handle.as_str(), None, "does not say what"),
        (stranger.handle.as_str(), None, "announces no runner"),
        (
            operator.handle.as_str(),
            Some(forged["publicKey"].as_str().unwrap().to_string()),
            "not the --runner-key",
        ),
    ] {
        let err = at_run::secrets::set(&target(runner, key), &pair())
            .await
            .expect_err(runner);
        assert!(format!("{err:#}").contains(want), "{runner}: {err:#}");
    }

    // describeRunner's health: a stable status, uptime and load that follows the calls.
    assert_eq!(describe["health"]["status"], "ok", "{describe}");
    assert!(describe["health"]["uptimeSecs"].is_u64(), "{describe}");
    assert_eq!(
        describe["health"]["instances"], 0,
        "nothing called yet: {describe}"
    );
    assert_eq!(describe["health"]["jobsUnfinished"], 0, "{describe}");
    let code = "export const hi = { method: \"GET\", handler: () => ({ hi: true }) };";
    let manifest = serde_json::json!({"endpoints": [{"name": "hi", "method": "GET"}]});
    common::deploy(net, &author, code, &manifest, "hello", "1.0.0").await;
    let (status, body) =
        common::get(&runner.url(&format!("/bundle/{}/hello/latest/hi", author.did))).await;
    assert_eq!(status, 200, "{body}");
    let (_, now) = common::get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(now["health"]["instances"], 1, "{now}");
    assert_eq!(now["health"]["requestsInFlight"], 0, "{now}");

    // `at-run jobs` (and `logs`, through the same caller) find the runner by its operator too;
    // the author's token names the runner the record announces.
    let listed_jobs = at_run::jobs::run(&at_run::jobs::JobsCommand::Ls {
        name: Some("hello".into()),
        state: None,
        limit: None,
        on: at_run::jobs::OnRunner {
            runner: operator.handle.clone(),
            auth: target(&operator.handle, None).auth,
            net: netargs.clone(),
        },
    })
    .await
    .expect("at-run jobs ls --runner <operator handle>");
    assert_eq!(
        listed_jobs.json["jobs"],
        serde_json::json!([]),
        "{}",
        listed_jobs.text
    );

    // `at-run deploy --runner <operator>`: published only when that runner would run it.
    let deploy_to = |version: &str, limits: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("main.js");
        std::fs::write(&file, code).unwrap();
        let manifest =
            serde_json::json!({"endpoints": [{"name": "hi", "method": "GET"}], "limits": limits});
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let cmd = at_run::deploy::DeployCmd {
            path: file,
            name: Some("hello".into()),
            version: Some(version.into()),
            manifest: None,
            description: None,
            no_release: false,
            dry_run: false,
            runner: Some(operator.handle.clone()),
            auth: target(&operator.handle, None).auth,
            net: netargs.clone(),
        };
        async move {
            let r = at_run::deploy::run_cmd(&cmd, || anyhow::bail!("prebuilt"), |_| {}).await;
            drop(dir);
            r
        }
    };
    let ok = deploy_to("1.1.0", serde_json::json!({})).await;
    assert!(
        matches!(ok, Ok(at_run::deploy::DeployOutcome::Published(_))),
        "{ok:?}"
    );
    let too_much = serde_json::json!({"timeoutMs": described.limits.timeout_ms.max + 1});
    let refused = deploy_to("1.2.0", too_much)
        .await
        .expect_err("a runner that would refuse it");
    assert!(
        format!("{refused:#}").contains("incompatibilit"),
        "{refused:#}"
    );
    let version_url = |v: &str| {
        format!(
            "{}/xrpc/com.atproto.repo.getRecord?repo={}&collection=dev.atrund.bundle&rkey=hello:{v}",
            net.pds_url, author.did
        )
    };
    assert_eq!(common::get(&version_url("1.1.0")).await.0, 200, "published");
    assert_eq!(
        common::get(&version_url("1.2.0")).await.0,
        400,
        "nothing published"
    );

    // Refusals, each with what to do.
    let wrong = Account {
        password: "not-the-password".into(),
        ..operator.clone()
    };
    let denied = announce(home.path(), &runner.base, &[], Some((net, &wrong)));
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("could not log in"),
        "{}",
        text(&denied)
    );
    let plain = announce(home.path(), "http://runner.example.com", &["--print"], None);
    assert!(!plain.status.success());
    assert!(text(&plain).contains("plain http"), "{}", text(&plain));
    let log = runner.stop();
    let gone = announce(home.path(), &runner.base, &["--print"], None);
    assert!(!gone.status.success());
    assert!(
        text(&gone).contains("could not reach the runner"),
        "{}\n{log}",
        text(&gone)
    );

    // A dev runner serves a folder, not authors: not announced.
    let dev_data = tempfile::tempdir().unwrap();
    let mut dev = common::command(&deno, dev_data.path());
    dev.arg("dev")
        .arg(atrund_testnet::repo_root().join("examples/hello"))
        .env("ATRUND_POOL_ADMIN_LISTEN", "off");
    let mut dev = Daemon::spawn(&mut dev, false);
    let refused = announce(home.path(), &dev.base, &["--print"], None);
    dev.stop();
    assert!(!refused.status.success());
    assert!(text(&refused).contains("at-rund dev"), "{}", text(&refused));
}

/// Publishes `hi@1.0.0` for `who`: one endpoint answering "hi", what the trust and handle
/// tests call.
async fn deploy_hi(net: &TestNet, who: &Account) {
    let code = "export const hi = { method: \"GET\", handler: () => new Response(\"hi\") };\n";
    let manifest = serde_json::json!({ "endpoints": [{ "name": "hi", "method": "GET" }] });
    common::deploy(net, who, code, &manifest, "hi", "1.0.0").await;
}

/// A TID record key (13 base32-sortable characters: microseconds and a clock id), as the PDS
/// wants for `app.bsky.graph.follow`.
fn tid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    // Strictly increasing even within one microsecond.
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(l.max(now) + 1))
        .unwrap_or_default();
    let micros = prev.max(now) + 1;
    let v = (micros << 10) | 7;
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    (0..13)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `who` follows `subject`: an `app.bsky.graph.follow` record in `who`'s repository. Returns
/// its rkey, for the unfollow.
async fn follow(net: &TestNet, who: &Account, subject: &str) -> String {
    let client = at_run::xrpc::Client::new(&net.pds_url).unwrap();
    let session = client
        .create_session(&who.handle, &who.password)
        .await
        .unwrap();
    let rkey = tid();
    let record = serde_json::json!({
        "$type": "app.bsky.graph.follow",
        "subject": subject,
        "createdAt": "2026-12-05T12:00:00.000Z",
    });
    client
        .put_record(&session, "app.bsky.graph.follow", &rkey, &record, true)
        .await
        .unwrap_or_else(|e| panic!("{} follows {subject}: {e}", who.handle));
    rkey
}

async fn unfollow(net: &TestNet, who: &Account, rkey: &str) {
    let client = at_run::xrpc::Client::new(&net.pds_url).unwrap();
    let session = client
        .create_session(&who.handle, &who.password)
        .await
        .unwrap();
    client
        .delete_record(&session, "app.bsky.graph.follow", rkey)
        .await
        .unwrap();
}

/// A runner trusting `operator`'s graph (`graph` = follows | mutuals), with `deny`.
fn graph_runner(
    net: &TestNet,
    deno: &Path,
    data: &Path,
    graph: &str,
    operator: &str,
    deny: &str,
) -> Daemon {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "")
        .env("ATRUND_TRUST_GRAPH", graph)
        .env("ATRUND_TRUST_OPERATOR", operator)
        .env("ATRUND_TRUST_DENY", deny)
        .env("ATRUND_METRICS_PUBLIC", "true")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off");
    Daemon::spawn(&mut cmd, false)
}

/// Polls `url` until it answers `status`; the time it took.
async fn answers_within(url: &str, status: u16, limit: std::time::Duration) -> std::time::Duration {
    let t = std::time::Instant::now();
    loop {
        let (got, body) = common::get(url).await;
        if got == status {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "{url} still answers {got} {body}, not {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_follows_and_mutuals_decide_who_runs() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let operator = net.create_account("graphop").await;
    let followed = net.create_account("followed").await;
    let mutual = net.create_account("mutual").await;
    let stranger = net.create_account("stranger").await;
    let denied = net.create_account("denied").await;
    for a in [&followed, &mutual, &stranger, &denied] {
        deploy_hi(net, a).await;
    }
    let follow_of_followed = follow(net, &operator, &followed.did).await;
    follow(net, &operator, &mutual.did).await;
    follow(net, &operator, &denied.did).await;
    let follow_back = follow(net, &mutual, &operator.did).await;
    // The stranger follows the operator: one-way, from the wrong side, it admits nothing.
    follow(net, &stranger, &operator.did).await;

    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The operator named by handle on one runner (verified both ways), by DID on the other.
    let follows = graph_runner(
        net,
        &deno,
        d1.path(),
        "follows",
        &operator.handle,
        &denied.did,
    );
    let mutuals = graph_runner(net, &deno, d2.path(), "mutuals", &operator.did, "");
    let call = |r: &Daemon, who: &Account| r.url(&format!("/bundle/{}/hi/latest/hi", who.did));
    let limit = std::time::Duration::from_secs(20);
    // Until the follows are read the graph cannot say yes; then it does.
    answers_within(&call(&follows, &followed), 200, limit).await;
    answers_within(&call(&mutuals, &mutual), 200, limit).await;

    let refused = |r: &Daemon, who: &Account| {
        let u = call(r, who);
        async move { common::get(&u).await }
    };
    let (s, body) = refused(&follows, &stranger).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{body}"
    );
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("{} does not follow them", operator.handle)),
        "{msg}"
    );
    // Denied although followed; the deny list wins.
    let (s, body) = refused(&follows, &denied).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("AuthorDenied")),
        "{body}"
    );
    // By handle too: resolved, verified, then refused by the graph.
    let (s, body) =
        common::get(&follows.url(&format!("/bundle/{}/hi/latest/hi", stranger.handle))).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{body}"
    );
    let (s, _) =
        common::get(&follows.url(&format!("/bundle/{}/hi/latest/hi", mutual.handle))).await;
    assert_eq!(s, 200);

    // Mutuals: followed without a follow-back is not enough, nor a follow-back without a follow.
    let (s, body) = refused(&mutuals, &followed).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("back"),
        "{body}"
    );
    let (s, body) = refused(&mutuals, &stranger).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("AuthorNotAllowed")),
        "{body}"
    );

    // describeRunner says so, and the record kind agrees.
    let (_, d) = common::get(&follows.url("/xrpc/dev.atrund.describeRunner")).await;
    let described: DescribeRunner = serde_json::from_value(d.clone()).unwrap();
    let g = described
        .policy
        .graph
        .as_ref()
        .expect("the graph is described");
    assert_eq!((g.kind.as_str(), g.follows), ("follows", 3), "{d}");
    assert_eq!(g.operator_did.as_deref(), Some(operator.did.as_str()));
    assert_eq!(described.policy.deny, vec![denied.did.clone()]);
    assert_eq!(atrund_api::policy_kind(&described.policy), "follows");
    // As the reference validator reads lexicons/ (graph and deny included).
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("describe.json");
    std::fs::write(&out_file, d.to_string()).unwrap();
    let checked = validate(&[format!(
        "output:dev.atrund.describeRunner={}",
        out_file.display()
    )]);
    assert!(checked.status.success(), "{}", text(&checked));
    let (_, d) = common::get(&mutuals.url("/xrpc/dev.atrund.describeRunner")).await;
    let described: DescribeRunner = serde_json::from_value(d.clone()).unwrap();
    assert_eq!(atrund_api::policy_kind(&described.policy), "mutuals");
    // The metrics: the snapshot's size, a read, no failure; one follow-back proven at least.
    let metrics = reqwest::get(mutuals.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "atrund_trust_follows 3",
        "atrund_trust_read_failures_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("atrund_trust_reads_total ") >= 1.0, "{metrics}");
    assert!(
        count("atrund_trust_follow_back_checks_total ") >= 1.0,
        "{metrics}"
    );

    // What `at-run check` and `deploy --runner` tell an author, read as the runner reads it.
    let args = at_run::runners::NetArgs {
        plc_url: net.plc_url.clone(),
        handle_resolver: Some(net.pds_url.clone()),
        allow_loopback: true,
        no_dns: true,
    };
    let standing = |desc: DescribeRunner, who: &Account| {
        let (args, did) = (args.clone(), who.did.clone());
        async move {
            at_run::runners::graph_standing(&desc, &did, &args)
                .await
                .unwrap()
                .expect("a graph runner")
        }
    };
    let (_, d) = common::get(&follows.url("/xrpc/dev.atrund.describeRunner")).await;
    let follows_desc: DescribeRunner = serde_json::from_value(d).unwrap();
    let s = standing(follows_desc.clone(), &followed).await;
    assert_eq!((s.followed, s.follows_back), (Ok(true), None));
    assert_eq!(standing(follows_desc, &stranger).await.followed, Ok(false));
    let s = standing(described.clone(), &mutual).await;
    assert_eq!((s.followed, s.follows_back), (Ok(true), Some(Ok(true))));
    let s = standing(described.clone(), &followed).await;
    assert_eq!((s.followed, s.follows_back), (Ok(true), Some(Ok(false))));

    // An unfollow is seen within moments (the operator's event stream), and a new follow too.
    unfollow(net, &operator, &follow_of_followed).await;
    let took = answers_within(&call(&follows, &followed), 403, limit).await;
    eprintln!("MEASURED: unfollow -> refused: {took:?}");
    follow(net, &operator, &stranger.did).await;
    let took = answers_within(&call(&follows, &stranger), 200, limit).await;
    eprintln!("MEASURED: follow -> served: {took:?}");
    // The mutual stops following back: seen on its own stream, the follow-back is looked up
    // again.
    unfollow(net, &mutual, &follow_back).await;
    let took = answers_within(&call(&mutuals, &mutual), 403, limit).await;
    eprintln!("MEASURED: follow-back removed -> refused: {took:?}");
    for r in [follows, mutuals] {
        let log = r.log();
        assert!(log.contains("operator's follows read"), "{log}");
    }
}

/// A dnsmasq on 127.0.0.1 answering only what a test gives it (`--txt-record`, `--address`),
/// nothing from the host; stopped on drop.
struct Dnsmasq {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Dnsmasq {
    fn start(args: &[String]) -> Option<Dnsmasq> {
        let bin = atrund_testnet::on_path(
            "dnsmasq",
            "a DNS server for handle resolution",
            "scripts/setup.sh installs dnsmasq-base",
        )
        .or_else(|| {
            let p = Path::new("/usr/sbin/dnsmasq");
            p.is_file().then(|| p.to_path_buf())
        })?;
        // A free port: bound, read, released (dnsmasq binds it a moment later).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-negcache",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--log-facility=-",
                &format!("--port={port}"),
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        Some(Dnsmasq {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Waits until it answers `name`.
    async fn ready(&self, name: &str) {
        let r = atrund_netpolicy::DnsServerResolver::new(
            self.addr,
            std::time::Duration::from_millis(200),
        );
        let t = std::time::Instant::now();
        while atrund_netpolicy::Resolve::resolve(&r, name).await.is_err() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "dnsmasq never answered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS server on `addr` (port 443: where a handle's well-known is) whose certificate, for
/// every name in `answers`, is signed by a throwaway CA; `GET /.well-known/atproto-did` answers
/// the DID `answers` gives the request's `Host`. Returns the CA's PEM.
async fn well_known_server(addr: &str, answers: Vec<(String, String)>) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = answers.iter().map(|(h, _)| h.clone()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the well-known server");
    let answers: std::collections::HashMap<String, String> = answers.into_iter().collect();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, answers) = (acceptor.clone(), answers.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host:"))
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                let (status, body) = match answers.get(&host) {
                    Some(did) if head.starts_with("get /.well-known/atproto-did ") => {
                        ("200 OK", did.clone())
                    }
                    _ => ("404 Not Found", String::new()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    ca_cert.pem()
}

/// Waits (5 s at most) for `text` in the runner's log, which reaches the test through a pipe.
async fn logged(d: &Daemon, text: &str) {
    let t = std::time::Instant::now();
    while !d.log().contains(text) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{text:?} not in the log:\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Both spec paths of handle resolution against real components: `_atproto` TXT records from a
/// real DNS server (dnsmasq, through `dns_server`) and `https://<handle>/.well-known/atproto-did`
/// from an HTTPS server whose CA the runner trusts only through `extra_ca_file`; each answer
/// checked both ways against the DID document on the real PLC.
#[tokio::test(flavor = "multi_thread")]
async fn handles_resolve_through_real_dns_and_an_https_well_known() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    if atrund_testnet::root("the handle well-known is served on port 443").is_none() {
        return;
    }
    let by_dns = net.create_account("bydns").await;
    let by_wk = net.create_account("bywk").await;
    let two_txt = net.create_account("twotxt").await;
    let dns_wins = net.create_account("dnswins").await;
    let dns_lies = net.create_account("dnslies").await;
    let wk_lies = net.create_account("wklies").await;
    for a in [&by_dns, &by_wk, &dns_wins] {
        deploy_hi(net, a).await;
    }
    // 127.0.0.2 serves the well-known; 127.0.0.3 is not opened to the runner.
    let txt = |h: &str, did: &str| format!("--txt-record=_atproto.{h},did={did}");
    let at = |h: &str, ip: &str| format!("--address=/{h}/{ip}");
    let dns = Dnsmasq::start(&[
        at("localhost", "127.0.0.1"),
        txt(&by_dns.handle, &by_dns.did),
        at(&by_wk.handle, "127.0.0.2"),
        txt(&two_txt.handle, &two_txt.did),
        txt(&two_txt.handle, &by_dns.did),
        // TXT and well-known disagree: DNS is asked first, and only a verified answer counts.
        txt(&dns_wins.handle, &dns_wins.did),
        at(&dns_wins.handle, "127.0.0.2"),
        txt(&dns_lies.handle, &by_dns.did),
        at(&dns_lies.handle, "127.0.0.2"),
        // A well-known naming a DID whose document claims another handle.
        at(&wk_lies.handle, "127.0.0.2"),
        at("elsewhere.test", "127.0.0.3"),
    ]);
    let Some(dns) = dns else { return };
    dns.ready("localhost").await;
    let ca = well_known_server(
        "127.0.0.2:443",
        vec![
            (by_wk.handle.clone(), by_wk.did.clone()),
            (dns_wins.handle.clone(), by_dns.did.clone()),
            (dns_lies.handle.clone(), dns_lies.did.clone()),
            (wk_lies.handle.clone(), by_dns.did.clone()),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let runner = |trust_ca: bool, data: &Path| {
        let mut cmd = common::command(&deno, data);
        common::use_test_net(&mut cmd, net)
            .arg("serve")
            .env("ATRUND_POLICY", "open")
            // The test network's resolver service off: DNS and the well-known only.
            .env("ATRUND_IDENTITY_HANDLE_RESOLVER", "")
            .env("ATRUND_IDENTITY_DNS", "true")
            .env("ATRUND_IDENTITY_WELL_KNOWN", "true")
            .env("ATRUND_DNS_SERVER", dns.addr.to_string())
            .env(
                "ATRUND_ALLOW_ADDRS",
                format!("{},127.0.0.2:443", net.allow_addrs()),
            )
            .env("ATRUND_POOL_ADMIN_LISTEN", "off");
        if trust_ca {
            cmd.env("ATRUND_EXTRA_CA_FILE", &ca_file);
        }
        Daemon::spawn(&mut cmd, false)
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trusting = runner(true, d1.path());
    let web_pki_only = runner(false, d2.path());
    let call = |r: &Daemon, who: &str| r.url(&format!("/bundle/{who}/hi/latest/hi"));

    let (s, body) = common::get(&call(&trusting, &by_dns.handle)).await;
    assert_eq!(s, 200, "by DNS TXT: {body}");
    let (s, body) = common::get(&call(&trusting, &by_wk.handle)).await;
    assert_eq!(s, 200, "by the HTTPS well-known: {body}");
    let (s, body) = common::get(&call(&trusting, &dns_wins.handle)).await;
    assert_eq!(s, 200, "TXT right, well-known wrong: DNS wins: {body}");
    let (s, body) = common::get(&call(&trusting, &dns_lies.handle)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (502, Some("HandleMismatch")),
        "TXT names a DID that does not claim the handle: {body}"
    );
    let (s, body) = common::get(&call(&trusting, &wk_lies.handle)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (502, Some("HandleMismatch")),
        "the well-known names a DID that does not claim it: {body}"
    );
    let (s, body) = common::get(&call(&trusting, &two_txt.handle)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("HandleNotFound")),
        "two TXT DIDs: {body}"
    );
    logged(&trusting, "2 different did= TXT values").await;
    // A name the DNS server puts at an address the runner does not contact: not connected to.
    let (s, body) = common::get(&call(&trusting, "elsewhere.test")).await;
    assert_ne!(s, 200, "{body}");
    logged(&trusting, "refused by address policy").await;

    // Without the CA, the well-known's certificate is not trusted, so that handle does not
    // resolve (a TLS failure, so "retry later"); the DNS path is unaffected.
    let (s, body) = common::get(&call(&web_pki_only, &by_wk.handle)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (502, Some("IdentityUnreachable")),
        "{body}"
    );
    logged(&web_pki_only, "UnknownIssuer").await;
    let (s, body) = common::get(&call(&web_pki_only, &by_dns.handle)).await;
    assert_eq!(s, 200, "{body}");
}
