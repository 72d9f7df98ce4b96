//! The pre-warmed generic sandboxes of a real `at-rund dev` in `container` isolation (real
//! bwrap, Deno, cgroups; as root): the pool fills to `pool.generic_sandboxes` at start, a cold
//! request is served by specialising one (counted as taken), the pool refills in the
//! background, a new instance never gets a used sandbox, and describeRunner, `/admin/pool` and
//! `/metrics` (checked by promtool) report it; bundles the sandboxes cannot serve exactly (`run`,
//! another runtime) start the normal way and are counted by reason. Skips with the reason when something is missing,
//! fails instead when CI=true.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const hello = { method: "GET", handler: () => ({ pid: Deno.pid, mark: globalThis.mark ??= crypto.randomUUID() }) };
"#;

async fn admin_pool(admin: &str) -> Value {
    reqwest::get(format!("{admin}/admin/pool"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (15 s at most) until `/admin/pool` satisfies `pred`; returns it.
async fn wait_pool(admin: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = admin_pool(admin).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what} not reached: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The count of generic-pool fallbacks for `reason` in an `/admin/pool` answer.
fn fallbacks(p: &Value, reason: &str) -> u64 {
    p["generic"]["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == reason)
        .and_then(|f| f[1].as_u64())
        .unwrap_or_else(|| panic!("no fallback reason {reason}: {p}"))
}

/// describeRunner's `genericSandboxes` enforcement line.
fn generic_line(desc: &Value) -> Value {
    desc["enforcement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "genericSandboxes")
        .unwrap_or_else(|| panic!("no genericSandboxes line: {desc}"))
        .clone()
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Deno and promtool, when bwrap is there and at-rund can be root (skip, or fail under CI).
fn tools() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let deno = atrund_testnet::deno_path()?;
    let promtool = atrund_testnet::promtool_path()?;
    atrund_testnet::on_path(
        "bwrap",
        "bubblewrap",
        "run `scripts/setup.sh --test` or `apt-get install -y bubblewrap`",
    )?;
    atrund_testnet::root("generic sandboxes need root (bind mounts)")?;
    Some((deno, promtool))
}

/// `at-rund dev` of `code` with `manifest`, container isolation, two generic sandboxes, and the
/// `extra` settings.
fn dev(
    deno: &std::path::Path,
    code: &str,
    manifest: &Value,
    extra: &[(&str, &str)],
) -> (Daemon, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), code).unwrap();
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "g"])
        .env("ATRUND_ISOLATION", "container")
        .env("ATRUND_POOL_GENERIC_SANDBOXES", "2")
        .env("ATRUND_POOL_IDLE_TIMEOUT_MS", "500")
        .env("ATRUND_PERMISSIONS_RUN", "true")
        .envs(extra.iter().copied());
    (Daemon::spawn(&mut cmd, true), [dir, data])
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_requests_are_served_by_specialised_generic_sandboxes() {
    let Some((deno, promtool)) = tools() else {
        return;
    };
    let manifest = json!({ "endpoints": [{ "name": "hello", "method": "GET" }] });
    let (mut d, _dirs) = dev(&deno, CODE, &manifest, &[]);
    let admin = d.admin.clone().unwrap();
    let url = d.url("/bundle/local/g/latest/hello");

    // Filled at start, in the background.
    wait_pool(&admin, "2 ready", |p| p["generic"]["ready"] == 2).await;

    // Cold: served by a specialised sandbox; the pool refills.
    let (s, first) = common::get(&url).await;
    assert_eq!(s, 200, "{first}\n{}", d.log());
    // Warm (well within the idle timeout): the same instance.
    let (_, again) = common::get(&url).await;
    assert_eq!(again, first);
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["taken"], 1, "{p}");
    assert_eq!(p["cold_hits"], 1, "{p}");
    wait_pool(&admin, "refilled", |p| p["generic"]["ready"] == 2).await;

    // After the idle reap, the next cold request gets a fresh sandbox: new process, no state.
    wait_pool(&admin, "instance reaped", |p| {
        p["instances"].as_array().is_some_and(|i| i.is_empty())
    })
    .await;
    let (s, second) = common::get(&url).await;
    assert_eq!(s, 200);
    assert_ne!(second["mark"], first["mark"], "{first} {second}");
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["taken"], 2, "{p}");
    assert_eq!(p["generic"]["specialise_failures"], 0, "{p}");

    // describeRunner and the metrics say so.
    let (s, desc) = common::get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(s, 200);
    let line = generic_line(&desc);
    assert_eq!(line["enforced"], true, "{line}");
    assert!(
        line["how"].as_str().unwrap().contains("permission broker"),
        "{line}"
    );
    let g = &desc["genericSandboxes"];
    assert_eq!(g["size"], 2, "{desc}");
    assert_eq!(g["taken"], 2, "{desc}");
    assert_eq!(g["fallbacks"]["empty"], 0, "{desc}");
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::promtool_check(&promtool, &text);
    assert_eq!(sample(&text, "atrund_pool_generic_taken_total"), Some(2.0));
    assert_eq!(
        sample(&text, "atrund_pool_generic_specialise_failures_total"),
        Some(0.0)
    );
    assert!(
        sample(&text, "atrund_pool_generic_ready").is_some(),
        "{text}"
    );
    assert!(
        text.contains("atrund_pool_generic_fallbacks_total{reason=\"run\"} 0"),
        "{text}"
    );
    let log = d.stop();
    assert!(log.contains("pre-warmed generic sandboxes on"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_bundle_starts_the_normal_way_and_is_counted() {
    let Some((deno, _)) = tools() else {
        return;
    };
    let manifest = json!({
        "endpoints": [{ "name": "hello", "method": "GET" }],
        "permissions": { "run": ["true"] }
    });
    let (mut d, _dirs) = dev(&deno, CODE, &manifest, &[]);
    let admin = d.admin.clone().unwrap();
    wait_pool(&admin, "2 ready", |p| p["generic"]["ready"] == 2).await;
    let (s, body) = common::get(&d.url("/bundle/local/g/latest/hello")).await;
    assert_eq!(s, 200, "{body}\n{}", d.log());
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["taken"], 0, "{p}");
    assert_eq!(p["generic"]["ready"], 2, "{p}");
    assert_eq!(fallbacks(&p, "run"), 1, "{p}");
    d.stop();
}

/// `at-rund dev` of a Python bundle (container isolation) with `deno` Deno sandboxes and
/// `python` Python ones.
fn dev_python(
    deno: &std::path::Path,
    python: &std::path::Path,
    (deno_n, python_n): (u32, u32),
) -> (Daemon, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.py"),
        "import os\nhello = {\"method\": \"GET\", \"handler\": lambda i, c: {\"runtime\": \"python\", \"pid\": os.getpid()}}\n",
    )
    .unwrap();
    let manifest = json!({ "endpoints": [{ "name": "hello", "method": "GET" }] });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "g"])
        .args(["--runtime", "python"])
        .env("ATRUND_ISOLATION", "container")
        .env("ATRUND_POOL_GENERIC_SANDBOXES", deno_n.to_string())
        .env("ATRUND_POOL_GENERIC_PYTHON_SANDBOXES", python_n.to_string())
        .env("ATRUND_PYTHON_PATH", python);
    (Daemon::spawn(&mut cmd, true), [dir, data])
}

/// With Deno sandboxes only, a Python bundle starts the normal way, counted as `runtime`.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_bundle_without_python_sandboxes_is_counted() {
    let Some((deno, promtool)) = tools() else {
        return;
    };
    let Some(python) = atrund_testnet::python_path() else {
        return;
    };
    let (mut d, _dirs) = dev_python(&deno, &python, (2, 0));
    let admin = d.admin.clone().unwrap();
    wait_pool(&admin, "2 ready", |p| p["generic"]["ready"] == 2).await;
    let (s, body) = common::get(&d.url("/bundle/local/g/latest/hello")).await;
    assert_eq!(
        (s, &body["runtime"]),
        (200, &json!("python")),
        "{}",
        d.log()
    );
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["taken"], 0, "{p}");
    assert_eq!(fallbacks(&p, "runtime"), 1, "{p}");
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::promtool_check(&promtool, &text);
    assert!(
        text.contains("atrund_pool_generic_fallbacks_total{reason=\"runtime\"} 1"),
        "{text}"
    );
    d.stop();
}

/// With Python sandboxes (`pool.generic_python_sandboxes`), a cold Python bundle is served by
/// specialising one; a new instance gets a fresh one; describeRunner names the lanes.
#[tokio::test(flavor = "multi_thread")]
async fn cold_python_requests_are_served_by_python_sandboxes() {
    let Some((deno, _)) = tools() else {
        return;
    };
    let Some(python) = atrund_testnet::python_path() else {
        return;
    };
    let (mut d, _dirs) = dev_python(&deno, &python, (1, 2));
    let admin = d.admin.clone().unwrap();
    let p = wait_pool(&admin, "3 ready", |p| p["generic"]["ready"] == 3).await;
    assert_eq!(p["generic"]["size"], 3, "{p}");
    let url = d.url("/bundle/local/g/latest/hello");
    let (s, first) = common::get(&url).await;
    assert_eq!(
        (s, &first["runtime"]),
        (200, &json!("python")),
        "{}",
        d.log()
    );
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["taken"], 1, "{p}");
    assert_eq!(p["generic"]["specialise_failures"], 0, "{p}");
    for reason in ["run", "limits", "rlimits", "runtime", "empty"] {
        assert_eq!(fallbacks(&p, reason), 0, "{reason}: {p}");
    }
    wait_pool(&admin, "refilled", |p| p["generic"]["ready"] == 3).await;
    let (s, desc) = common::get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(s, 200);
    let line = generic_line(&desc);
    let how = line["how"].as_str().unwrap();
    assert!(how.contains("1 deno") && how.contains("2 python"), "{line}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_budget_bounds_the_ready_sandboxes() {
    let Some((deno, _)) = tools() else {
        return;
    };
    let manifest = json!({ "endpoints": [{ "name": "hello", "method": "GET" }] });
    // 1 MiB: the first sandbox starts (nothing is held yet), a second would exceed it.
    let extra = [("ATRUND_POOL_GENERIC_MEMORY_BUDGET_MIB", "1")];
    let (mut d, _dirs) = dev(&deno, CODE, &manifest, &extra);
    let admin = d.admin.clone().unwrap();
    let p = wait_pool(&admin, "1 ready", |p| p["generic"]["ready"] == 1).await;
    assert_eq!(p["generic"]["memory_budget_bytes"], 1024 * 1024, "{p}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = admin_pool(&admin).await;
    assert_eq!(p["generic"]["ready"], 1, "{p}");
    assert_eq!(p["generic"]["starting"], 0, "{p}");
    assert!(
        p["generic"]["memory_bytes"].as_u64().unwrap() > 1024 * 1024,
        "{p}"
    );
    d.stop();
}
