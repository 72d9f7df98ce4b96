//! at-rund given one CPU (`taskset -c 0`, as on a 1-vCPU host or in the benchmark) runs Tokio's
//! single-threaded scheduler: the whole request path, the egress proxy and the `none` connect
//! gate, the container backend's spare launchers (started from a thread of their own) and the
//! generic sandboxes must all make progress on that one thread. Real Deno, real bwrap (as root),
//! a real kernel. Skips with the reason when something is missing, fails instead when CI=true.

mod common;

use std::process::Command;

use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const hello = { method: "GET", handler: () => ({ pid: Deno.pid }) };
export const out = { method: "GET", handler: async () => {
  try { const r = await fetch("http://127.0.0.1:9/"); await r.body?.cancel(); return { status: r.status }; }
  catch (e) { return { refused: e.name }; }
} };
"#;

/// `taskset -c 0 at-rund dev` of the bundle above with `isolation`, and `extra` settings.
fn dev_on_one_cpu(
    deno: &std::path::Path,
    isolation: &str,
    extra: &[(&str, &str)],
) -> (Daemon, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), CODE).unwrap();
    let manifest = json!({
        "endpoints": [{ "name": "hello", "method": "GET" }, { "name": "out", "method": "GET" }],
        "limits": { "concurrency": 4 }
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    // Same environment as common::command, under taskset.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", env!("CARGO_BIN_EXE_at-rund")])
        .args(["dev", dir.path().to_str().unwrap(), "--name", "one"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATRUND_LISTEN", "127.0.0.1:0")
        .env("ATRUND_DATA_DIR", data.path())
        .env("ATRUND_DENO_PATH", deno)
        .env("ATRUND_LOG", "info")
        .env("ATRUND_ISOLATION", isolation)
        .env("ATRUND_POOL_IDLE_TIMEOUT_MS", "300")
        .envs(extra.iter().copied());
    (Daemon::spawn(&mut cmd, true), [dir, data])
}

async fn instances(admin: &str) -> usize {
    let p: Value = reqwest::get(format!("{admin}/admin/pool"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    p["instances"].as_array().map_or(0, Vec::len)
}

/// Cold, warm, a burst of concurrent calls, an egress attempt that must be refused, and a cold
/// start again after the idle reap; then a clean stop.
async fn exercise(mut d: Daemon) {
    assert!(
        d.log()
            .contains("async runtime started scheduler=current_thread"),
        "{}",
        d.log()
    );
    let hello = d.url("/bundle/local/one/latest/hello");
    for _ in 0..2 {
        let (s, b) = common::get(&hello).await;
        assert_eq!(s, 200, "{b}\n{}", d.log());
    }
    let burst = (0..24).map(|_| common::get(&hello));
    for (s, b) in futures::future::join_all(burst).await {
        assert_eq!(s, 200, "{b}\n{}", d.log());
    }
    let (s, b) = common::get(&d.url("/bundle/local/one/latest/out")).await;
    assert_eq!(s, 200, "{b}\n{}", d.log());
    // Through the egress proxy, which refuses loopback: an error, or the proxy's refusal.
    assert!(
        b["refused"].is_string() || b["status"].as_u64().is_some_and(|s| s >= 400),
        "loopback reached: {b}"
    );
    let admin = d.admin.clone().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while instances(&admin).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no idle reap\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, b) = common::get(&hello).await;
    assert_eq!(s, 200, "cold again: {b}\n{}", d.log());
    let log = d.stop();
    assert!(!log.contains("panicked"), "{log}");
}

fn deno_and_taskset() -> Option<std::path::PathBuf> {
    let deno = atrund_testnet::deno_path()?;
    atrund_testnet::on_path("taskset", "util-linux", "`apt-get install -y util-linux`")?;
    Some(deno)
}

#[tokio::test(flavor = "multi_thread")]
async fn none_mode_on_one_cpu() {
    let Some(deno) = deno_and_taskset() else {
        return;
    };
    let (d, _dirs) = dev_on_one_cpu(&deno, "none", &[]);
    exercise(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_mode_on_one_cpu_with_spares_and_generic_sandboxes() {
    let Some(deno) = deno_and_taskset() else {
        return;
    };
    let bwrap = atrund_testnet::on_path(
        "bwrap",
        "bubblewrap",
        "run `scripts/setup.sh --test` or `apt-get install -y bubblewrap`",
    );
    if bwrap.is_none() || atrund_testnet::root("container mode with generic sandboxes").is_none() {
        return;
    }
    let (d, _dirs) = dev_on_one_cpu(
        &deno,
        "container",
        &[("ATRUND_POOL_GENERIC_SANDBOXES", "1")],
    );
    exercise(d).await;
}
