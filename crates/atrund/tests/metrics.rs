//! Metrics, request ids and JSON logs of a real at-rund (real Deno; the real PLC + PDS test
//! network where identity and fetch are measured): `/metrics` passes `promtool check metrics`
//! and its values move by exactly the requests made; every response carries `x-request-id`;
//! with `log.format = "json"` every line is JSON and a request's lines carry its id; a dev
//! runner answers with `Server-Timing` (cold-start phases once, then only `bundle`), a serve
//! runner with the default `http.server_timing = false` without it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const hello = { method: "GET", handler: () => ({ hello: "world" }) };
export const own = {
  method: "GET",
  handler: () => new Response("x", { headers: { "server-timing": "db;dur=3;desc=\"own\"" } }),
};
export const slow = {
  method: "GET",
  handler: async () => { await new Promise((r) => setTimeout(r, 1500)); return { slept: true }; },
};
"#;

/// The samples of a scrape: `name{labels}` → value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// The value of the sample named `name` whose labels include every `k="v"` of `labels`,
    /// summed over the matching samples; 0 when none matches.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| l.contains(&format!("{lk}=\"{lv}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// GET `/metrics` from `base`, check it with promtool, parse it.
async fn scrape(base: &str, promtool: &Path) -> Scrape {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await.unwrap();
    common::promtool_check(promtool, &text);
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.rsplit_once(' ').unwrap();
        samples.insert(k.to_string(), v.parse::<f64>().unwrap());
    }
    Scrape(samples)
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    let deno = atrund_testnet::deno_path()?;
    let promtool = atrund_testnet::promtool_path()?;
    Some((deno, promtool))
}

/// GET; status, `x-request-id`, body as JSON (or null).
async fn call(url: &str, id: Option<&str>) -> (u16, String, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, rid, body)
}

/// GET; status and the `Server-Timing` lines joined as one list (as HTTP reads them), or `None`.
async fn timing(url: &str) -> (u16, Option<String>) {
    let resp = reqwest::get(url).await.unwrap();
    let lines: Vec<&str> = resp
        .headers()
        .get_all("server-timing")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let joined = (!lines.is_empty()).then(|| lines.join(", "));
    (resp.status().as_u16(), joined)
}

/// `name;dur=ms, ...` → (name, ms) in order; panics on anything else (such as a description or
/// a value that would reveal more than a duration).
fn timing_entries(header: &str) -> Vec<(String, f64)> {
    header
        .split(", ")
        .map(|e| {
            let (name, dur) = e.split_once(";dur=").unwrap_or_else(|| panic!("{header}"));
            (name.to_string(), dur.parse::<f64>().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runner_counts_requests_and_logs_them_as_json() {
    let Some((deno, promtool)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), CODE).unwrap();
    let manifest = json!({
        "endpoints": [
            { "name": "hello", "method": "GET" },
            { "name": "slow", "method": "GET" },
            { "name": "own", "method": "GET" }
        ],
        "limits": { "concurrency": 1 }
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "m"])
        .env("ATRUND_LOG_FORMAT", "json")
        .env("ATRUND_LOG", "info,atrund_http=debug")
        // One instance of concurrency 1: a second call while `slow` runs is refused as Busy.
        .env("ATRUND_POOL_MAX_INSTANCES_PER_BUNDLE", "1")
        .env("ATRUND_POOL_BUSY_WAIT_MS", "10")
        // `at-rund dev` always times requests, whatever the config says.
        .env("ATRUND_HTTP_SERVER_TIMING", "false");
    let mut d = Daemon::spawn(&mut cmd, true);
    let admin = d.admin.clone().unwrap();
    let url = |e: &str| d.url(&format!("/bundle/local/m/latest/{e}"));
    let hello = [("author", "local"), ("bundle", "m"), ("endpoint", "hello")];
    let ok = [("status", "2xx")];

    let before = scrape(&admin, &promtool).await;
    assert_eq!(before.get("atrund_requests_total", &[]), 0.0);
    assert_eq!(before.get("atrund_build_info", &[]), 1.0);

    // Cold, then warm: the start is counted once.
    let cold = reqwest::Client::new()
        .get(url("hello"))
        .header("x-request-id", "caller.id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(cold.status(), 200);
    assert_eq!(
        cold.headers()["x-request-id"],
        "caller.id-1",
        "a well-formed id is echoed"
    );
    // The cold request's timing: the local snapshot (fetch), the start, then the bundle; a dev
    // bundle has no identity phase.
    let t = cold.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    let entries = timing_entries(&t);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fetch", "start", "bundle"], "{t}");
    let start_ms = entries[1].1;
    assert!(start_ms > 0.0 && entries[0].1 > 0.0, "{t}");
    assert!(entries[2].1 >= 0.0, "{t}");
    let after_cold = scrape(&admin, &promtool).await;
    assert_eq!(
        after_cold.get("atrund_cold_starts_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        after_cold.get(
            "atrund_cold_start_phase_seconds_count",
            &[("phase", "start")]
        ),
        1.0
    );
    let start_secs = after_cold.get("atrund_cold_start_phase_seconds_sum", &[("phase", "start")]);
    assert!(start_secs > 0.0);
    // The header shows what the metric recorded (µs rounding apart).
    assert!(
        (start_ms / 1000.0 - start_secs).abs() < 0.001,
        "{start_ms} ms vs {start_secs} s"
    );
    // Warm requests: the bundle only.
    for _ in 0..2 {
        let (s, t) = timing(&url("hello")).await;
        assert_eq!(s, 200);
        let entries = timing_entries(&t.expect("a dev runner sends Server-Timing"));
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].0, "bundle");
        assert!(entries[0].1 >= 0.0);
    }
    assert_eq!(call(&url("hello"), None).await.0, 200);
    // A bundle's own Server-Timing is kept, ours comes after it.
    let (s, t) = timing(&url("own")).await;
    assert_eq!(s, 200);
    let t = t.unwrap();
    let (own, ours) = t.split_once(", ").unwrap();
    assert_eq!(own, "db;dur=3;desc=\"own\"");
    assert_eq!(timing_entries(ours)[0].0, "bundle", "{t}");
    let (s, replaced, body) = call(&url("nope"), Some("bad id with spaces")).await;
    assert_eq!(s, 404);
    assert_ne!(replaced, "bad id with spaces", "a malformed id is replaced");
    assert_eq!(replaced.len(), 16);
    assert_eq!(
        body["requestId"],
        replaced.as_str(),
        "the error body names the id"
    );
    assert_eq!(body["error"], "EndpointNotFound");

    // Busy: `slow` holds the only slot.
    let slow_url = url("slow");
    let slow = tokio::spawn(async move { call(&slow_url, None).await });
    let (mut busy, mut extra_ok) = (false, 0.0);
    // Until `slow` has the slot, `hello` may still get it.
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (s, _, b) = call(&url("hello"), None).await;
        if s == 429 {
            assert_eq!(b["error"], "Busy");
            busy = true;
            break;
        }
        assert_eq!(s, 200, "{b}");
        extra_ok += 1.0;
    }
    assert!(busy, "no Busy while slow held the only slot");
    assert_eq!(slow.await.unwrap().0, 200);

    let after = scrape(&admin, &promtool).await;
    let hello_ok = after.get("atrund_requests_total", &[&hello[..], &ok[..]].concat());
    // 1 cold + 3 warm + the 200s before the Busy one.
    assert_eq!(hello_ok, 4.0 + extra_ok);
    assert_eq!(
        after.get(
            "atrund_requests_total",
            &[("endpoint", "undeclared"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        after.get(
            "atrund_requests_total",
            &[("endpoint", "hello"), ("status", "4xx")]
        ),
        1.0,
        "the Busy answer"
    );
    assert_eq!(
        after.get("atrund_pool_rejections_total", &[("reason", "busy")]),
        1.0
    );
    assert_eq!(
        after.get(
            "atrund_requests_total",
            &[("endpoint", "slow"), ("status", "2xx")]
        ),
        1.0
    );
    // Every answered request is one duration observation.
    assert_eq!(
        after.get("atrund_request_duration_seconds_count", &[]),
        after.get("atrund_requests_total", &[])
    );
    assert!(after.get("atrund_request_duration_seconds_sum", &hello) > 0.0);
    assert_eq!(
        after.get("atrund_cold_starts_total", &[]),
        1.0,
        "warm calls start nothing"
    );
    assert_eq!(after.get("atrund_instances", &[]), 1.0);
    assert_eq!(
        after.get("atrund_instance_starts_total", &[("result", "ok")]),
        1.0
    );
    assert!(after.get("atrund_instance_memory_bytes", &[("author", "local")]) > 0.0);

    // Logs: every line is one JSON object; the lines of a request carry its id.
    let log = d.stop();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for k in ["time", "level", "message", "target"] {
            assert!(l.get(k).is_some(), "no {k}: {l}");
        }
    }
    let of = |id: &str| -> Vec<&Value> { lines.iter().filter(|l| l["request_id"] == id).collect() };
    for id in ["caller.id-1", replaced.as_str()] {
        let mine = of(id);
        assert!(
            mine.iter().any(|l| l["message"] == "request answered"),
            "no answer line for {id}:\n{log}"
        );
        for l in mine {
            assert_eq!(l["spans"][0]["span"], "request", "{l}");
            assert_eq!(l["spans"][0]["request_id"], id, "{l}");
            assert_eq!(l["spans"][0]["client"], "127.0.0.1", "{l}");
        }
    }
    let answered = lines
        .iter()
        .filter(|l| l["message"] == "request answered")
        .count();
    assert_eq!(answered as f64, after.get("atrund_requests_total", &[]));
}

/// `at-rund serve` on the test network, open policy, with one more setting.
fn serve_open(
    deno: &Path,
    net: &atrund_testnet::TestNet,
    data: &Path,
    (key, value): (&str, &str),
) -> Daemon {
    let mut cmd = common::command(deno, data);
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env(key, value);
    Daemon::spawn(&mut cmd, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_times_identity_and_fetch_of_a_cold_start_from_the_pds() {
    let Some((deno, promtool)) = tools() else {
        return;
    };
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("metrics").await;
    let manifest = json!({ "endpoints": [{ "name": "hello", "method": "GET" }] });
    common::deploy(net, &acct, CODE, &manifest, "met", "1.0.0").await;
    let data = tempfile::tempdir().unwrap();
    let d = serve_open(&deno, net, data.path(), ("ATRUND_METRICS_PUBLIC", "true"));
    let url = d.url(&format!("/bundle/{}/met/latest/hello", acct.did));
    let labels = [
        ("author", acct.did.as_str()),
        ("bundle", "met"),
        ("endpoint", "hello"),
    ];

    // A cold start, but `http.server_timing` is off by default in serve: no header.
    assert_eq!(timing(&url).await, (200, None));
    // The main listener serves it too (metrics.public), the same registry.
    let first = scrape(&d.base, &promtool).await;
    assert_eq!(first.get("atrund_requests_total", &labels), 1.0);
    assert_eq!(
        first.get("atrund_cold_starts_total", &[("result", "ok")]),
        1.0
    );
    for phase in ["identity", "fetch", "start"] {
        assert_eq!(
            first.get("atrund_cold_start_phase_seconds_count", &[("phase", phase)]),
            1.0,
            "{phase}"
        );
        assert!(first.get("atrund_cold_start_phase_seconds_sum", &[("phase", phase)]) > 0.0);
    }
    let misses = first.get(
        "atrund_identity_cache_total",
        &[("cache", "did"), ("result", "miss")],
    );
    assert!(misses >= 1.0, "the first request resolved the DID");

    assert_eq!(call(&url, None).await.0, 200);
    let second = scrape(d.admin.as_deref().unwrap(), &promtool).await;
    assert_eq!(second.get("atrund_requests_total", &labels), 2.0);
    assert_eq!(second.get("atrund_cold_starts_total", &[]), 1.0);
    assert_eq!(
        second.get(
            "atrund_cold_start_phase_seconds_count",
            &[("phase", "identity")]
        ),
        1.0,
        "a warm call adds no phase"
    );
    let hits = |s: &Scrape| {
        s.get(
            "atrund_identity_cache_total",
            &[("cache", "did"), ("result", "hit")],
        )
    };
    assert_eq!(
        hits(&second),
        hits(&first) + 1.0,
        "the second request found the DID cached"
    );
    assert!(
        second.get(
            "atrund_instance_memory_bytes",
            &[("author", acct.did.as_str())]
        ) > 0.0
    );
    drop(d);

    // Turned on, a cold start from the PDS shows every phase, a warm call only the bundle.
    let data = tempfile::tempdir().unwrap();
    let d = serve_open(
        &deno,
        net,
        data.path(),
        ("ATRUND_HTTP_SERVER_TIMING", "true"),
    );
    let url = d.url(&format!("/bundle/{}/met/latest/hello", acct.did));
    let (s, t) = timing(&url).await;
    assert_eq!(s, 200);
    let t = t.unwrap();
    let entries = timing_entries(&t);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["identity", "fetch", "start", "bundle"], "{t}");
    assert!(entries[..3].iter().all(|(_, ms)| *ms > 0.0), "{t}");
    let (s, t) = timing(&url).await;
    assert_eq!(s, 200);
    let names: Vec<String> = timing_entries(&t.unwrap())
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["bundle"]);
}
