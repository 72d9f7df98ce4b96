//! `at-run deploy` against a real local PDS (atrund-testnet): records land with the right shape,
//! versions are immutable, the release pointer moves, errors explain themselves, and the password
//! never appears in the output.

use std::path::Path;
use std::process::Output;

use atrund_testnet::{Account, TestNet};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_at-run");

async fn at_run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("ATRUN_PDS")
        .env_remove("ATRUN_IDENTIFIER")
        .env_remove("ATRUN_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("at-run runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A bundle + manifest in a fresh temp dir.
fn write_bundle(code: &str, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("main.js"), code).expect("write main.js");
    std::fs::write(dir.path().join("manifest.json"), manifest).expect("write manifest");
    dir
}

async fn deploy_json(
    net: &TestNet,
    acct: &Account,
    file: &Path,
    name: &str,
    version: &str,
    extra: &[&str],
) -> Result<Value, String> {
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec![
        "deploy",
        file,
        "--name",
        name,
        "--version",
        version,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = at_run(
        &args,
        &[
            ("ATRUN_PDS", &net.pds_url),
            ("ATRUN_IDENTIFIER", &acct.handle),
            ("ATRUN_PASSWORD", &acct.password),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(
        !stdout.contains(&acct.password) && !stderr.contains(&acct.password),
        "the password leaked: {stdout} {stderr}"
    );
    if out.status.success() {
        Ok(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")))
    } else {
        // With --json a failure also prints `{"error": <code>, "message"}` on stdout.
        Err(format!("{stderr}\nstdout: {stdout}"))
    }
}

async fn get_record(net: &TestNet, repo: &str, collection: &str, rkey: &str) -> Value {
    let res = net
        .http()
        .get(format!("{}/xrpc/com.atproto.repo.getRecord", net.pds_url))
        .query(&[("repo", repo), ("collection", collection), ("rkey", rkey)])
        .send()
        .await
        .expect("PDS reachable");
    assert_eq!(res.status(), 200, "getRecord {repo}/{collection}/{rkey}");
    res.json().await.expect("JSON")
}

const MANIFEST: &str = r#"{"permissions":{"net":["example.com:443"]},"limits":{"timeoutMs":500},"endpoints":[{"name":"greet","method":"GET"}]}"#;
const CODE: &str = "export function greet(req) { return new Response('hi'); }\n";

#[tokio::test]
async fn deploy_publishes_immutable_versions_and_moves_release() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("deploy").await;
    let dir = write_bundle(CODE, MANIFEST);
    let file = dir.path().join("main.js");

    let out = deploy_json(
        net,
        &acct,
        &file,
        "hello",
        "1.0.0",
        &["--description", "says hi"],
    )
    .await
    .expect("first deploy succeeds");
    assert_eq!(out["did"], acct.did.as_str());
    assert_eq!(out["name"], "hello");
    assert_eq!(out["version"], "1.0.0");
    let bundle_uri = format!("at://{}/dev.atrund.bundle/hello:1.0.0", acct.did);
    assert_eq!(out["bundle"]["uri"], bundle_uri.as_str());
    assert_eq!(out["blob"]["size"], CODE.len());
    assert_eq!(out["blob"]["mimeType"], "application/javascript");

    // The bundle record, as the PDS stores it.
    let rec = get_record(net, &acct.did, "dev.atrund.bundle", "hello:1.0.0").await;
    assert_eq!(rec["uri"], bundle_uri.as_str());
    assert_eq!(rec["cid"], out["bundle"]["cid"]);
    let v = &rec["value"];
    assert_eq!(v["$type"], "dev.atrund.bundle");
    assert_eq!(v["name"], "hello");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["runtime"], "deno");
    assert_eq!(v["description"], "says hi");
    assert_eq!(v["code"]["$type"], "blob");
    assert_eq!(v["code"]["ref"]["$link"], out["blob"]["cid"]);
    assert_eq!(v["code"]["mimeType"], "application/javascript");
    assert_eq!(v["code"]["size"], CODE.len());
    let manifest: Value = serde_json::from_str(MANIFEST).expect("json");
    assert_eq!(v["manifest"], manifest);
    assert!(v["createdAt"].as_str().is_some_and(|s| s.ends_with('Z')));
    // The blob is now served and is the file.
    let blob = net
        .http()
        .get(format!("{}/xrpc/com.atproto.sync.getBlob", net.pds_url))
        .query(&[
            ("did", acct.did.as_str()),
            ("cid", out["blob"]["cid"].as_str().expect("cid")),
        ])
        .send()
        .await
        .expect("PDS reachable");
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.expect("bytes").as_ref(), CODE.as_bytes());

    // The release pointer.
    let rel = get_record(net, &acct.did, "dev.atrund.release", "hello").await;
    assert_eq!(rel["value"]["$type"], "dev.atrund.release");
    assert_eq!(rel["value"]["name"], "hello");
    assert_eq!(rel["value"]["bundle"]["uri"], bundle_uri.as_str());
    assert_eq!(rel["value"]["bundle"]["cid"], out["bundle"]["cid"]);
    assert_eq!(out["release"]["cid"], rel["cid"]);
    // Same version again: refused, the record unchanged.
    std::fs::write(&file, "export function greet() { return 'changed'; }\n").expect("write");
    let err = deploy_json(net, &acct, &file, "hello", "1.0.0", &[])
        .await
        .expect_err("redeploy must fail");
    assert!(err.contains("already published"), "{err}");
    assert!(err.contains("bump the version"), "{err}");
    let again = get_record(net, &acct.did, "dev.atrund.bundle", "hello:1.0.0").await;
    assert_eq!(again["cid"], rec["cid"]);

    // --no-release publishes without moving the pointer.
    let quiet = deploy_json(net, &acct, &file, "hello", "1.1.0", &["--no-release"])
        .await
        .expect("1.1.0 deploys");
    assert!(quiet["release"].is_null());
    let rel_after = get_record(net, &acct.did, "dev.atrund.release", "hello").await;
    assert_eq!(rel_after["value"]["bundle"]["uri"], bundle_uri.as_str());

    // A new version moves it.
    let next = deploy_json(net, &acct, &file, "hello", "1.2.0", &[])
        .await
        .expect("1.2.0 deploys");
    let rel_next = get_record(net, &acct.did, "dev.atrund.release", "hello").await;
    assert_eq!(rel_next["value"]["bundle"]["uri"], next["bundle"]["uri"]);
    assert_eq!(rel_next["value"]["bundle"]["cid"], next["bundle"]["cid"]);
    assert!(next["bundle"]["uri"]
        .as_str()
        .is_some_and(|u| u.ends_with("/dev.atrund.bundle/hello:1.2.0")));
    assert_ne!(next["blob"]["cid"], out["blob"]["cid"]);
}

#[tokio::test]
async fn deploy_with_flags_to_a_did_web_account_prints_a_summary() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let dir = write_bundle(CODE, "{}");
    let file = dir.path().join("main.js");
    let out = at_run(
        &[
            "deploy",
            file.to_str().expect("utf-8"),
            "--name",
            "carol-app",
            "--version",
            "0.1.0-beta.1",
            "--pds",
            &net.pds_url,
            "--identifier",
            &net.carol.handle,
            "--password",
            &net.carol.password,
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("published carol-app 0.1.0-beta.1"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "at://{}/dev.atrund.bundle/carol-app:0.1.0-beta.1",
        net.carol.did
    )));
    assert!(!stdout.contains(&net.carol.password) && !stderr.contains(&net.carol.password));
    // The did:web repo (its `%3A` must survive the query string) holds the records.
    let rel = get_record(net, &net.carol.did, "dev.atrund.release", "carol-app").await;
    assert_eq!(rel["value"]["name"], "carol-app");
}

#[tokio::test]
async fn wrong_password_says_what_to_do() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("wrongpw").await;
    let dir = write_bundle(CODE, MANIFEST);
    let wrong = Account {
        password: "not-the-password-xyz".into(),
        ..acct
    };
    let err = deploy_json(
        net,
        &wrong,
        &dir.path().join("main.js"),
        "hello",
        "1.0.0",
        &[],
    )
    .await
    .expect_err("login must fail");
    assert!(
        err.contains("com.atproto.server.createSession failed: HTTP 401"),
        "{err}"
    );
    assert!(err.contains("AuthenticationRequired"), "{err}");
    assert!(err.contains("app password"), "{err}");
    assert!(err.contains(r#"stdout: {"error":"PdsError","#), "{err}");
}

#[tokio::test]
async fn bad_input_fails_before_any_network_call() {
    // Nothing listens on port 9 of loopback: if a network call were made, the error would say
    // "could not reach".
    let dir = write_bundle(CODE, MANIFEST);
    let file = dir.path().join("main.js");
    let env = [
        ("ATRUN_PDS", "http://127.0.0.1:9"),
        ("ATRUN_IDENTIFIER", "alice.test"),
        ("ATRUN_PASSWORD", "pw-that-must-not-print"),
    ];
    for (args, expect) in [
        (
            vec!["--name", "Bad_Name", "--version", "1.0.0"],
            "bundle name 'Bad_Name' is invalid",
        ),
        (
            vec!["--name", "ok", "--version", "1.0.0+build"],
            "version '1.0.0+build' is invalid",
        ),
    ] {
        let mut all = vec!["deploy", file.to_str().expect("utf-8")];
        all.extend(args);
        let out = at_run(&all, &env).await;
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success());
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains("could not reach"), "{stderr}");
        assert!(
            !stdout.contains("pw-that-must-not-print")
                && !stderr.contains("pw-that-must-not-print")
        );
    }
    std::fs::write(dir.path().join("manifest.json"), r#"{"surprise":1}"#).expect("write");
    let out = at_run(
        &[
            "deploy",
            file.to_str().expect("utf-8"),
            "--name",
            "ok",
            "--version",
            "1.0.0",
        ],
        &env,
    )
    .await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown field `surprise`"), "{stderr}");
    // "." as a data path: refused here with the message the runner gives for a published one.
    for manifest in [
        r#"{"permissions":{"write":["."]}}"#,
        r#"{"permissions":{"read":["./a"]}}"#,
    ] {
        std::fs::write(dir.path().join("manifest.json"), manifest).expect("write");
        let file = file.to_str().expect("utf-8");
        let out = at_run(
            &["deploy", file, "--name", "ok", "--version", "1.0.0"],
            &env,
        )
        .await;
        let (_, stderr) = text(&out);
        assert!(!out.status.success());
        assert!(
            stderr.contains("must be relative to the bundle's data dir, made of plain names"),
            "{stderr}"
        );
        assert!(!stderr.contains("could not reach"), "{stderr}");
    }
    // A good bundle does reach the network (and fails there, clearly).
    std::fs::write(dir.path().join("manifest.json"), MANIFEST).expect("write");
    let out = at_run(
        &[
            "deploy",
            file.to_str().expect("utf-8"),
            "--name",
            "ok",
            "--version",
            "1.0.0",
        ],
        &env,
    )
    .await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not reach the PDS at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[tokio::test]
async fn deploys_the_hello_example() {
    let root = atrund_testnet::repo_root();
    let file = root.join("examples").join("hello").join("main.js");
    if !file.is_file() || !root.join("examples/hello/manifest.json").is_file() {
        eprintln!("SKIPPED: examples/hello/main.js or manifest.json does not exist yet");
        return;
    }
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("example").await;
    let out = deploy_json(net, &acct, &file, "hello", "1.0.0", &[])
        .await
        .unwrap_or_else(|e| panic!("deploying examples/hello failed: {e}"));
    let rec = get_record(net, &acct.did, "dev.atrund.bundle", "hello:1.0.0").await;
    assert_eq!(rec["cid"], out["bundle"]["cid"]);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/hello/manifest.json")).expect("read"),
    )
    .expect("json");
    // The stored manifest is the parsed one re-encoded: compare through the typed form.
    let stored: atrund_bundle::Manifest =
        serde_json::from_value(rec["value"]["manifest"].clone()).expect("typed");
    let given: atrund_bundle::Manifest = serde_json::from_value(manifest).expect("typed");
    assert_eq!(stored, given);
}

/// `examples/hello-node`, a prebuilt Node bundle (main.js + manifest.json): `--runtime node`
/// lands in the record, where a runner reads which runtime to start.
#[tokio::test]
async fn deploys_the_hello_node_example_as_node() {
    let root = atrund_testnet::repo_root();
    let dir = root.join("examples").join("hello-node");
    let file = dir.join("main.js");
    if !file.is_file() || !dir.join("manifest.json").is_file() {
        eprintln!("SKIPPED: examples/hello-node/main.js or manifest.json does not exist yet");
        return;
    }
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("nodeexample").await;
    let out = deploy_json(
        net,
        &acct,
        &file,
        "hello-node",
        "1.0.0",
        &["--runtime", "node"],
    )
    .await
    .unwrap_or_else(|e| panic!("deploying examples/hello-node failed: {e}"));
    assert_eq!(out["runtime"], "node");
    let rec = get_record(net, &acct.did, "dev.atrund.bundle", "hello-node:1.0.0").await;
    assert_eq!(rec["cid"], out["bundle"]["cid"]);
    assert_eq!(rec["value"]["runtime"], "node");
    let code = std::fs::read(&file).expect("read main.js");
    assert_eq!(rec["value"]["code"]["size"], code.len());
    assert_eq!(rec["value"]["code"]["mimeType"], "application/javascript");
    let stored: atrund_bundle::Manifest =
        serde_json::from_value(rec["value"]["manifest"].clone()).expect("typed");
    let given: atrund_bundle::Manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("read manifest"),
    )
    .expect("typed");
    assert_eq!(stored, given);

    // Without --runtime a prebuilt file is published as Deno; an unknown runtime is a usage
    // error that names the choices, before any network call.
    let plain = deploy_json(net, &acct, &file, "hello-node", "1.0.1", &[])
        .await
        .expect("1.0.1 deploys");
    assert_eq!(plain["runtime"], "deno");
    let err = deploy_json(
        net,
        &acct,
        &file,
        "hello-node",
        "1.0.2",
        &["--runtime", "bun"],
    )
    .await
    .expect_err("bun is no runtime");
    assert!(
        err.contains("--runtime") && err.contains("[possible values: deno, node, python]"),
        "{err}"
    );
}

/// A prebuilt Python file (`main.py` + `manifest.json`) deployed with `--runtime python`: the
/// record names the runtime and its code is `text/x-python`; without `--runtime` it is refused
/// before any network call.
#[tokio::test]
async fn deploys_a_python_file_as_python() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    const PY: &str = "from atrund import endpoint\n\n\n@endpoint(method=\"GET\")\ndef greet(input, ctx):\n    return {\"message\": \"hi\"}\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("main.py");
    std::fs::write(&file, PY).expect("write main.py");
    std::fs::write(dir.path().join("manifest.json"), MANIFEST).expect("write manifest");
    let acct = net.create_account("pydeploy").await;

    let err = deploy_json(net, &acct, &file, "hello-py", "1.0.0", &[])
        .await
        .expect_err("a .py file without --runtime");
    assert!(err.contains("pass --runtime python"), "{err}");

    let out = deploy_json(
        net,
        &acct,
        &file,
        "hello-py",
        "1.0.0",
        &["--runtime", "python"],
    )
    .await
    .unwrap_or_else(|e| panic!("deploying main.py failed: {e}"));
    assert_eq!(out["runtime"], "python");
    assert_eq!(out["blob"]["mimeType"], "text/x-python");
    let rec = get_record(net, &acct.did, "dev.atrund.bundle", "hello-py:1.0.0").await;
    assert_eq!(rec["cid"], out["bundle"]["cid"]);
    let v = &rec["value"];
    assert_eq!(v["runtime"], "python");
    assert_eq!(v["code"]["mimeType"], "text/x-python");
    assert_eq!(v["code"]["size"], PY.len());
    let stored: atrund_bundle::Manifest =
        serde_json::from_value(v["manifest"].clone()).expect("typed");
    let given: atrund_bundle::Manifest = serde_json::from_str(MANIFEST).expect("typed");
    assert_eq!(stored, given);
    // A type the runner loads for the Python runtime.
    assert!(atrund_bundle::record::code_types("python").contains(&"text/x-python"));
}
