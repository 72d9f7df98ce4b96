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
const sleepy = async () => { await new Promise((r) => setTimeout(r, 1500)); return "done"; };
export const long = { $type: "dev.atrund.task", handler: sleepy };
export const short = { $type: "dev.atrund.task", handler: sleepy };
"#;

fn manifest() -> Value {
    json!({
        "endpoints": [{ "name": "ping", "method": "GET" }],
        "limits": { "timeoutMs": 1000 },
        "tasks": [
            { "name": "double" },
            { "name": "flaky" },
            { "name": "serial", "concurrency": 1 },
            { "name": "wide", "concurrency": 2 },
            { "name": "long", "timeoutMs": 4000 },
            { "name": "short", "timeoutMs": 200 }
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
    // A task's own timeout: longer than the bundle's 1 s runs to the end, shorter is cut (one
    // after the other: a timeout ends the instance, and the calls in it, as for endpoints).
    let (_, v) = r
        .enqueue(&author, json!({"bundle": "worker", "task": "long"}))
        .await;
    let long = v["job"]["id"].as_i64().unwrap_or_else(|| panic!("{v}"));
    let done = r.until(&author, long, "succeeded").await;
    assert_eq!(
        (done["result"].as_str(), done["attempts"].as_u64()),
        (Some("done"), Some(1))
    );
    let (_, v) = r
        .enqueue(&author, json!({"bundle": "worker", "task": "short"}))
        .await;
    let short = v["job"]["id"].as_i64().unwrap_or_else(|| panic!("{v}"));
    r.until(&author, short, "dead").await;
    // Its first attempt was cut at 200 ms (the later ones may meet the instance's crash-loop
    // back-off: a timeout ends the instance).
    let log = r.d.log();
    assert!(
        log.lines().any(|l| l.contains("job attempt ended")
            && l.contains("task=short")
            && l.contains("TimedOut: the bundle did not answer within 200 ms")),
        "{log}"
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
    assert_eq!(ids, vec![short, flaky]);

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
    assert_eq!(sample("atrund_jobs{state=\"dead\"}"), 2.0);
    assert!(sample("atrund_jobs{state=\"succeeded\"}") >= 7.0);
    assert!(sample("atrund_job_attempts_total{outcome=\"succeeded\"}") >= 7.0);
    assert_eq!(
        sample("atrund_job_attempts_total{outcome=\"retried\"}"),
        6.0
    );
    assert_eq!(sample("atrund_job_attempts_total{outcome=\"dead\"}"), 3.0);

    // The same through `at-run jobs`' own code: enqueue, show until done, list.
    let on = || at_run::jobs::OnRunner {
        runner: r.d.base.clone(),
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(author.handle.clone()),
            password: Some(author.password.parse().expect("password")),
        },
        net: Default::default(),
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
    assert_eq!(listed.text.lines().count(), 2, "{}", listed.text);
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

/// Jobs in `at-rund dev` (real Deno): the job methods take no token for the folder's bundle
/// (`at-run cron run` and `at-run jobs` need no login), `ctx.enqueue` works there, and the local
/// bundle's `* * * * *` cron fires at the next minute, once, and its task runs (its output in
/// the runner's log, the attempt in the metrics). Waits up to a minute and a bit for the tick.
#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_jobs_without_tokens_and_fires_the_local_bundles_crons() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.js"),
        r#"export const ping = { method: "GET", handler: () => ({ ok: true }) };
export const kick = { method: "POST", handler: (_, ctx) => ctx.enqueue("tick") };
export const tick = { $type: "dev.atrund.task", handler: () => { console.log("tick ran"); return 1; } };
"#,
    )
    .unwrap();
    let manifest = json!({
        "endpoints": [{ "name": "ping", "method": "GET" }, { "name": "kick", "method": "POST" }],
        "tasks": [{ "name": "tick" }],
        "crons": [{ "schedule": "* * * * *", "task": "tick" }]
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "clock"])
        .env("ATRUND_JOBS_POLL_MS", "50");
    let d = Daemon::spawn(&mut cmd, true);
    let on = at_run::jobs::OnRunner {
        runner: d.base.clone(),
        auth: at_run::auth::AuthArgs {
            pds: None,
            identifier: None,
            password: None,
        },
        net: Default::default(),
    };

    // `at-run cron run` fires the task now; `at-run jobs show` follows it, with no login.
    let fired = at_run::jobs::cron(&at_run::jobs::CronCommand::Run {
        task: "tick".into(),
        name: Some("clock".into()),
        dir: ".".into(),
        on: on.clone(),
    })
    .await
    .expect("at-run cron run");
    assert!(fired.text.starts_with("fired: job "), "{}", fired.text);
    let fired_id = fired.json["job"]["id"].as_i64().unwrap();
    // And bundle code queues one too.
    let kicked: Value = reqwest::Client::new()
        .post(d.url("/bundle/local/clock/latest/kick"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kicked_id = kicked["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{kicked}\n{}", d.log()));
    for id in [fired_id, kicked_id] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown = at_run::jobs::run(&at_run::jobs::JobsCommand::Show { id, on: on.clone() })
                .await
                .expect("at-run jobs show");
            if shown.json["job"]["state"] == "succeeded" {
                assert_eq!(shown.json["job"]["result"], 1, "{}", shown.text);
                break;
            }
            assert!(Instant::now() < deadline, "job {id}: {}", shown.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let listed = at_run::jobs::run(&at_run::jobs::JobsCommand::Ls {
        name: Some("clock".into()),
        state: None,
        limit: None,
        on: on.clone(),
    })
    .await
    .expect("at-run jobs ls");
    assert_eq!(listed.text.lines().count(), 2, "{}", listed.text);

    // The cron's own tick.
    let deadline = Instant::now() + Duration::from_secs(75);
    let metrics = format!("{}/metrics", d.admin.as_deref().unwrap());
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let ran = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"atrund_job_attempts_total{outcome="succeeded"}"#))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if ran >= 3.0 {
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
    assert_eq!(log.matches("tick ran").count(), 3, "{log}");
}

const FANOUT: &str = r#"
const T = "dev.atrund.task";
const named = (p) => p.then((j) => j, (e) => e.name);
export const kick = { method: "POST", handler: async (input, ctx) => {
  const out = {};
  out.job = await named(ctx.enqueue("double", { n: input.n }, input.key ? { idempotencyKey: input.key } : {}));
  if (!input.probe) return out;
  out.unknown = await named(ctx.enqueue("kick"));
  out.big = await named(ctx.enqueue("double", "x".repeat(70000)));
  // What a hostile bundle would try: name another author's bundle, or another runner call.
  const steer = await fetch("http://runner.atrund.internal/v1/enqueue", { method: "POST",
    body: JSON.stringify({ task: "double", author: "did:plc:someoneelse", bundle: "theirs" }) });
  out.steer = [steer.status, (await steer.json()).error];
  const list = await fetch("http://runner.atrund.internal/xrpc/dev.atrund.listJobs");
  out.list = [list.status, (await list.json()).error];
  out.tls = await fetch("https://runner.atrund.internal/v1/enqueue", { method: "POST", body: "{}" })
    .then((r) => r.status, (e) => e.name);
  return out;
} };
export const double = { $type: T, handler: (p) => ({ twice: p.n * 2 }) };
export const chain = { $type: T, handler: async (p, ctx) => ({ next: (await ctx.enqueue("double", { n: p.n + 1 })).id, task: ctx.task }) };
export const hello = { $type: T, public: true, handler: (p) => ({ kept: "for the author: " + p }) };
"#;

/// `ctx.enqueue` from bundle code (an endpoint and a task, through the egress proxy's reserved
/// host, with no `net` permission), public tasks queued by anyone, and the author's quota,
/// on a real `serve` with the bundle on the real PDS. A bundle cannot steer its runner call at
/// another author's bundle or at another runner method, an anonymous caller cannot queue a
/// private task nor read or collide with the author's jobs, and the quota holds whoever
/// enqueues.
#[tokio::test(flavor = "multi_thread")]
async fn bundles_and_anyone_enqueue_within_the_authors_quota() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let author = net.create_account("fanauthor").await;
    let other = net.create_account("fanother").await;
    let manifest = json!({
        "endpoints": [{ "name": "kick", "method": "POST" }],
        "tasks": [{ "name": "double" }, { "name": "chain" }, { "name": "hello", "public": true }]
    });
    common::deploy(net, &author, FANOUT, &manifest, "fan", "1.0.0").await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_JOBS_POLL_MS", "50")
        .env("ATRUND_JOBS_MAX_UNFINISHED_PER_AUTHOR", "3");
    let d = Daemon::spawn(&mut cmd, true);
    let desc: Value = reqwest::get(d.url("/xrpc/dev.atrund.describeRunner"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let aud = desc["serviceDid"].as_str().unwrap().to_string();
    let r = Runner { net, d, aud };
    let http = reqwest::Client::new();
    let kick_url = r.d.url(&format!("/bundle/{}/fan/latest/kick", author.did));
    let kick = |body: Value| {
        let req = http.post(&kick_url).json(&body);
        async move {
            let resp = req.send().await.expect("kick");
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.expect("json")
        }
    };

    // An endpoint queues a task of its own version; it runs like any job of the author's.
    let out = kick(json!({"n": 4, "probe": true})).await;
    let id = out["job"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{out}\n{}", r.d.log()));
    assert_eq!(out["job"]["created"], true, "{out}");
    let done = r.until(&author, id, "succeeded").await;
    assert_eq!(done["result"], json!({"twice": 8}));
    assert_eq!(done["bundle"], "fan");
    // Refused by name, inside the bundle.
    assert_eq!(out["unknown"], "TaskNotFound", "an endpoint is not a task");
    assert_eq!(out["big"], "PayloadTooLarge");
    assert_eq!(
        out["steer"],
        json!([400, "InvalidInput"]),
        "a runner call names no other bundle"
    );
    assert_eq!(out["list"], json!([404, "NotFound"]));
    assert!(
        out["tls"] != json!(200) && out["tls"] != json!(201),
        "the reserved host is plain http only: {out}"
    );

    // A task queues a further job (its ctx), keyed calls dedupe.
    let (s, v) = r
        .enqueue(
            &author,
            json!({"bundle": "fan", "task": "chain", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let chained = r
        .until(&author, v["job"]["id"].as_i64().unwrap(), "succeeded")
        .await;
    assert_eq!(chained["result"]["task"], "chain");
    let next = r
        .until(
            &author,
            chained["result"]["next"].as_i64().unwrap(),
            "succeeded",
        )
        .await;
    assert_eq!(next["result"], json!({"twice": 4}));
    let a = kick(json!({"n": 1, "key": "k1"})).await;
    let b = kick(json!({"n": 1, "key": "k1"})).await;
    assert_eq!(a["job"]["id"], b["job"]["id"]);
    assert_eq!(
        (a["job"]["created"].as_bool(), b["job"]["created"].as_bool()),
        (Some(true), Some(false))
    );

    // Anyone queues a public task (no token, naming the author), and is not told its result.
    let anon = |body: Value| {
        let req = http
            .post(r.d.url("/xrpc/dev.atrund.enqueueJob"))
            .json(&body);
        async move {
            let resp = req.send().await.expect("anonymous enqueue");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) =
        anon(json!({"author": author.handle, "bundle": "fan", "task": "hello", "payload": "hi"}))
            .await;
    assert_eq!(s, 201, "{v}");
    let pid = v["job"]["id"].as_i64().unwrap();
    let ran = r.until(&author, pid, "succeeded").await;
    assert_eq!(ran["result"], json!({"kept": "for the author: hi"}));
    let (s, again) =
        anon(json!({"author": author.did, "bundle": "fan", "task": "hello", "payload": "hi"}))
            .await;
    assert_eq!(s, 201, "{again}");
    assert!(
        again["job"].get("result").is_none() && again["job"].get("lastError").is_none(),
        "{again}"
    );
    // Another signed-in author is anyone too.
    let (s, v) = r
        .enqueue(
            &other,
            json!({"author": author.did, "bundle": "fan", "task": "hello"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["job"].get("result").is_none(), "{v}");
    // A private task is not there for them.
    let (s, v) =
        anon(json!({"author": author.did, "bundle": "fan", "task": "double", "payload": {"n": 1}}))
            .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("TaskNotFound")), "{v}");
    // Their idempotency keys never meet the author's: the author's keyed job stays unseen.
    let (s, mine) = r
        .enqueue(&author, json!({"bundle": "fan", "task": "hello", "payload": "private", "idempotencyKey": "shared"}))
        .await;
    assert_eq!(s, 201, "{mine}");
    r.until(&author, mine["job"]["id"].as_i64().unwrap(), "succeeded")
        .await;
    let (s, theirs) = anon(
        json!({"author": author.did, "bundle": "fan", "task": "hello", "idempotencyKey": "shared"}),
    )
    .await;
    assert_eq!(s, 201, "a public key is its own job: {theirs}");
    assert_ne!(theirs["job"]["id"], mine["job"]["id"]);

    // The quota (3 unfinished) holds for every enqueuer; finished jobs do not count.
    for (i, who) in ["author", "public", "bundle"].iter().enumerate() {
        let body =
            json!({"bundle": "fan", "task": "hello", "delayMs": 600000, "author": author.did});
        let (s, v) = match *who {
            "author" => r.enqueue(&author, body).await,
            "public" => anon(body).await,
            _ => {
                let out = kick(json!({"n": i})).await;
                (if out["job"]["id"].is_i64() { 201 } else { 0 }, out)
            }
        };
        let _ = v;
        assert_eq!(s, 201, "{who} within the quota");
    }
    // ... but the bundle's own job was not delayed: wait until only the two delayed ones are
    // unfinished, then fill the last place.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = r
        .enqueue(
            &author,
            json!({"bundle": "fan", "task": "hello", "delayMs": 600000}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = r
        .enqueue(
            &author,
            json!({"bundle": "fan", "task": "hello", "delayMs": 600000}),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (429, Some("JobQuotaExceeded")),
        "{v}"
    );
    let (s, v) = anon(json!({"author": author.did, "bundle": "fan", "task": "hello"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (429, Some("JobQuotaExceeded")),
        "{v}"
    );
    let out = kick(json!({"n": 1})).await;
    assert_eq!(out["job"], "JobQuotaExceeded", "{out}");
}
