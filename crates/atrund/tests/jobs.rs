//! Background jobs (docs/jobs.md) on a real at-rund (`serve`), with the bundle on the real PDS
//! and its tasks run by real Deno: the author enqueues over XRPC with service-auth tokens from
//! their PDS, a task's result is kept, a failing task is retried with back-off and ends dead
//! with its last error, a retry starts it over, idempotency keys deduplicate, a delayed job can
//! be cancelled; another author can neither see nor control the job, and what is not a task or
//! not authenticated is refused by name.

mod common;

use std::time::{Duration, Instant};

use atrund_testnet::{Account, TestNet};
use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const ping = { method: "GET", handler: () => ({ ok: true }) };
export const double = { $type: "dev.atrund.task", handler: (p) => ({ twice: p.n * 2 }) };
export const flaky = { $type: "dev.atrund.task", handler: () => { throw new Error("nope"); } };
const timed = async () => {
  const start = Date.now();
  await new Promise((r) => setTimeout(r, 300));
  return { start, end: Date.now() };
};
export const serial = { $type: "dev.atrund.task", handler: timed };
export const wide = { $type: "dev.atrund.task", handler: timed };
"#;

fn manifest() -> Value {
    json!({
        "endpoints": [{ "name": "ping", "method": "GET" }],
        "tasks": [
            { "name": "double" },
            { "name": "flaky" },
            { "name": "serial", "concurrency": 1 },
            { "name": "wide", "concurrency": 2 }
        ]
    })
}

struct Runner<'a> {
    net: &'a TestNet,
    d: Daemon,
    aud: String,
}

impl Runner<'_> {
    /// Calls job method `lxm` as `who` (a fresh token each time: tokens are single-use).
    async fn call(
        &self,
        who: Option<&Account>,
        lxm: &str,
        query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = self.d.url(&format!("/xrpc/{lxm}{query}"));
        let client = reqwest::Client::new();
        let mut req = match &body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        if let Some(acct) = who {
            req = req.bearer_auth(common::mint(self.net, acct, &self.aud, lxm, None).await);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn enqueue(&self, who: &Account, body: Value) -> (u16, Value) {
        self.call(Some(who), "dev.atrund.enqueueJob", "", Some(body))
            .await
    }

    /// Enqueues `n` jobs of `body` at once (tokens minted first: minting takes longer than a
    /// short task runs). Their ids.
    async fn enqueue_at_once(&self, who: &Account, body: Value, n: usize) -> Vec<i64> {
        let mut tokens = Vec::new();
        for _ in 0..n {
            tokens
                .push(common::mint(self.net, who, &self.aud, "dev.atrund.enqueueJob", None).await);
        }
        let client = reqwest::Client::new();
        let url = self.d.url("/xrpc/dev.atrund.enqueueJob");
        let sends = tokens
            .into_iter()
            .map(|t| client.post(&url).json(&body).bearer_auth(t).send());
        let mut ids = Vec::new();
        for resp in futures::future::join_all(sends).await {
            let v: Value = resp.expect("enqueue").json().await.expect("json");
            ids.push(v["job"]["id"].as_i64().unwrap_or_else(|| panic!("{v}")));
        }
        ids
    }

    /// `cancelJob` or `retryJob` of job `id`.
    async fn control(&self, who: &Account, lxm: &str, id: i64) -> (u16, Value) {
        self.call(Some(who), lxm, "", Some(json!({ "id": id })))
            .await
    }

    async fn job(&self, who: &Account, id: i64) -> (u16, Value) {
        self.call(Some(who), "dev.atrund.getJob", &format!("?id={id}"), None)
            .await
    }

    /// Waits until job `id` is in `state`.
    async fn until(&self, who: &Account, id: i64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.job(who, id).await;
            assert_eq!(s, 200, "{v}");
            if v["job"]["state"] == state {
                return v["job"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never {state}: {v}\n{}",
                self.d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authors_enqueue_tasks_that_run_retry_and_die_and_only_they_see_them() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let author = net.create_account("jobauthor").await;
    let other = net.create_account("jobother").await;
    common::deploy(net, &author, CODE, &manifest(), "worker", "1.0.0").await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_JOBS_MAX_ATTEMPTS", "3")
        .env("ATRUND_JOBS_BACKOFF_BASE_MS", "50")
        .env("ATRUND_JOBS_BACKOFF_MAX_MS", "100")
        .env("ATRUND_JOBS_POLL_MS", "50");
    let d = Daemon::spawn(&mut cmd, true);
    let desc: Value = reqwest::get(d.url("/xrpc/dev.atrund.describeRunner"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let aud = desc["serviceDid"].as_str().unwrap().to_string();
    let r = Runner { net, d, aud };

    // A task that succeeds: its result is kept.
    let (s, v) = r
        .enqueue(
            &author,
            json!({"bundle": "worker", "task": "double", "payload": {"n": 21}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["created"], true);
    let id = v["job"]["id"].as_i64().unwrap();
    let done = r.until(&author, id, "succeeded").await;
    assert_eq!(done["result"], json!({"twice": 42}));
    assert_eq!(done["attempts"], 1);

    // A task's concurrency from its manifest: `serial` runs one at a time, `wide` two (the
    // runner has two workers, so without the limit `serial` would overlap too).
    for task in ["serial", "wide"] {
        let ids = r
            .enqueue_at_once(&author, json!({"bundle": "worker", "task": task}), 3)
            .await;
        let mut spans = Vec::new();
        for id in ids {
            let j = r.until(&author, id, "succeeded").await;
            spans.push((
                j["result"]["start"].as_i64().unwrap(),
                j["result"]["end"].as_i64().unwrap(),
            ));
        }
        spans.sort();
        let overlaps = spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
        if task == "serial" {
            assert_eq!(overlaps, 0, "serial runs overlapped: {spans:?}");
        } else {
            assert!(overlaps > 0, "wide never ran two at once: {spans:?}");
        }
    }

    // A task that throws: three attempts with back-off, then dead with the last error.
    let (s, v) = r
        .enqueue(&author, json!({"bundle": "worker", "task": "flaky"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let flaky = v["job"]["id"].as_i64().unwrap();
    let dead = r.until(&author, flaky, "dead").await;
    assert_eq!(dead["attempts"], 3);
    let err = dead["lastError"].as_str().unwrap();
    assert!(
        err.starts_with("BundleFailed") && !err.contains("nope"),
        "{err}"
    );
    // The author retries it: a fresh set of attempts, dead again.
    let (s, v) = r.control(&author, "dev.atrund.retryJob", flaky).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("queued")), "{v}");
    let again = r.until(&author, flaky, "dead").await;
    assert_eq!(again["attempts"], 3);

    // Idempotency keys: one job.
    let body = json!({"bundle": "worker", "task": "double", "payload": {"n": 1}, "idempotencyKey": "once"});
    let (s1, first) = r.enqueue(&author, body.clone()).await;
    let (s2, second) = r.enqueue(&author, body).await;
    assert_eq!(
        (s1, s2, second["created"].as_bool()),
        (201, 200, Some(false))
    );
    assert_eq!(first["job"]["id"], second["job"]["id"]);

    // A delayed job can be cancelled, and retried.
    let (_, v) = r
        .enqueue(
            &author,
            json!({"bundle": "worker", "task": "double", "payload": {"n": 2}, "delayMs": 600000}),
        )
        .await;
    let later = v["job"]["id"].as_i64().unwrap();
    let (s, v) = r.control(&author, "dev.atrund.cancelJob", later).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    // Cancelling is idempotent; a finished job cannot be cancelled.
    let (s, v) = r.control(&author, "dev.atrund.cancelJob", later).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = r.control(&author, "dev.atrund.cancelJob", id).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("JobStateConflict")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("succeeded"), "{v}");

    // Another author sees and controls nothing of it.
    let (s, v) = r.job(&other, id).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("JobNotFound")), "{v}");
    for lxm in ["dev.atrund.cancelJob", "dev.atrund.retryJob"] {
        let (s, v) = r.control(&other, lxm, flaky).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("JobNotFound")),
            "{lxm}: {v}"
        );
    }
    let (s, v) = r.call(Some(&other), "dev.atrund.listJobs", "", None).await;
    assert_eq!(
        (s, v["jobs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    // Nor can it queue work on the author's bundle: the job would be its own, on a bundle it
    // does not have.
    let (s, v) = r
        .enqueue(&other, json!({"bundle": "worker", "task": "double"}))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("BundleNotFound")),
        "{v}"
    );

    // The author's list: newest first, filtered by state.
    let (s, v) = r
        .call(Some(&author), "dev.atrund.listJobs", "?state=dead", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<i64> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![flaky]);

    // Refused by name.
    let (s, v) = r
        .enqueue(&author, json!({"bundle": "worker", "task": "ping"}))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("TaskNotFound")),
        "an endpoint is not a task: {v}"
    );
    let (s, v) = r
        .call(
            None,
            "dev.atrund.enqueueJob",
            "",
            Some(json!({"bundle": "worker", "task": "double"})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("AuthMissing")), "{v}");
    let big = "x".repeat(70_000);
    let (s, v) = r
        .enqueue(
            &author,
            json!({"bundle": "worker", "task": "double", "payload": big}),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (413, Some("PayloadTooLarge")),
        "{v}"
    );

    // What the jobs did, in the metrics.
    let metrics = reqwest::get(format!("{}/metrics", r.d.admin.as_deref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert_eq!(sample("atrund_jobs{state=\"dead\"}"), 1.0);
    assert!(sample("atrund_jobs{state=\"succeeded\"}") >= 7.0);
    assert!(sample("atrund_job_attempts_total{outcome=\"succeeded\"}") >= 7.0);
    assert_eq!(
        sample("atrund_job_attempts_total{outcome=\"retried\"}"),
        4.0
    );
    assert_eq!(sample("atrund_job_attempts_total{outcome=\"dead\"}"), 2.0);

    // The same through `at-run jobs`' own code: enqueue, show until done, list.
    let on = || at_run::jobs::OnRunner {
        runner: r.d.base.clone(),
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(author.handle.clone()),
            password: Some(author.password.parse().expect("password")),
        },
    };
    let queued = at_run::jobs::run(&at_run::jobs::JobsCommand::Enqueue {
        name: "worker".into(),
        task: "double".into(),
        payload: Some(r#"{"n": 5}"#.into()),
        delay_ms: None,
        key: None,
        version: None,
        on: on(),
    })
    .await
    .expect("at-run jobs enqueue");
    assert!(queued.text.starts_with("queued: job "), "{}", queued.text);
    let cli_id = queued.json["job"]["id"].as_i64().unwrap();
    r.until(&author, cli_id, "succeeded").await;
    let shown = at_run::jobs::run(&at_run::jobs::JobsCommand::Show {
        id: cli_id,
        on: on(),
    })
    .await
    .expect("at-run jobs show");
    assert!(
        shown.text.contains("succeeded") && shown.text.contains(r#"result {"twice":10}"#),
        "{}",
        shown.text
    );
    let listed = at_run::jobs::run(&at_run::jobs::JobsCommand::Ls {
        name: Some("worker".into()),
        state: Some("dead".into()),
        limit: None,
        on: on(),
    })
    .await
    .expect("at-run jobs ls");
    assert_eq!(listed.text.lines().count(), 1, "{}", listed.text);
    assert!(
        listed.text.contains(&format!("job {flaky} ")),
        "{}",
        listed.text
    );
    let bad = at_run::jobs::run(&at_run::jobs::JobsCommand::Enqueue {
        name: "worker".into(),
        task: "double".into(),
        payload: Some("{nope".into()),
        delay_ms: None,
        key: None,
        version: None,
        on: on(),
    })
    .await
    .err()
    .expect("bad payload refused");
    assert!(
        bad.to_string().contains("--payload is not valid JSON"),
        "{bad}"
    );
}

/// Cron in `at-rund dev` (real Deno): the local bundle's `* * * * *` cron fires at the next
/// minute, once, and its task runs (its output in the runner's log, the attempt in the metrics).
/// Waits up to a minute and a bit for the tick.
#[tokio::test(flavor = "multi_thread")]
async fn dev_fires_the_local_bundles_crons_each_minute() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.js"),
        r#"export const ping = { method: "GET", handler: () => ({ ok: true }) };
export const tick = { $type: "dev.atrund.task", handler: () => { console.log("tick ran"); return 1; } };
"#,
    )
    .unwrap();
    let manifest = json!({
        "endpoints": [{ "name": "ping", "method": "GET" }],
        "tasks": [{ "name": "tick" }],
        "crons": [{ "schedule": "* * * * *", "task": "tick" }]
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "clock"]);
    let d = Daemon::spawn(&mut cmd, true);
    let deadline = Instant::now() + Duration::from_secs(75);
    let metrics = format!("{}/metrics", d.admin.as_deref().unwrap());
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let ran = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"atrund_job_attempts_total{outcome="succeeded"}"#))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if ran >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cron run within 75 s:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give the log a moment to catch up with the instance's output.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = d.log();
    assert_eq!(log.matches("cron fired").count(), 1, "{log}");
    assert!(log.contains("tick ran"), "{log}");
}
