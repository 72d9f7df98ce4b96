//! Several runners sharing one real `redis-server` (`state.backend = "redis"`, docs/cluster.md),
//! three `at-rund serve` on loopback with the bundle on the real PDS and real Deno:
//! - a job whose runner is `kill -9`ed mid-run completes on another (attempt 2, in its status);
//! - a SIGTERM'd runner drains its job in flight: it completes there, attempt 1;
//! - a cron fires exactly once per tick across the three (each tries; the queue keeps one);
//! - a job queued on one runner is visible and controllable from another;
//! - Redis out of reach for 12 s while a job runs: the job runs again afterwards, not lost;
//! - routing: calls of one bundle spread over three runners start it once in the cluster.

mod common;

use std::time::{Duration, Instant};

use atrund_testnet::{Account, RedisServer, TestNet};
use common::Daemon;
use serde_json::{json, Value};

const CODE: &str = r#"
export const ping = { method: "GET", handler: () => ({ ok: true }) };
export const slow = { $type: "dev.atrund.task", handler: async (p) => {
  console.log(`slow started ${p.tag}`);
  await new Promise((r) => setTimeout(r, 3000));
  return { tag: p.tag };
} };
export const tick = { $type: "dev.atrund.task", handler: () => { console.log("tick ran"); return 1; } };
"#;

struct Node {
    d: Daemon,
    _data: tempfile::TempDir,
}

fn node(
    net: &TestNet,
    deno: &std::path::Path,
    redis: &RedisServer,
    author: &Account,
    log_of: &str,
) -> Node {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_STATE_BACKEND", "redis")
        .env("ATRUND_STATE_REDIS_URL", redis.url())
        .env("ATRUND_JOBS_POLL_MS", "100")
        // A killed runner's job comes back after its lease: 10 s, over the 5 s task limit.
        .env("ATRUND_LIMITS_TIMEOUT_MS_MAX", "5000")
        .env("ATRUND_LIMITS_TIMEOUT_MS_DEFAULT", "5000")
        .env("ATRUND_JOBS_LEASE_MS", "10000")
        .env(
            "ATRUND_JOBS_CRON_BUNDLES",
            format!("{}/clustered", author.did),
        )
        .env("ATRUND_POOL_DRAIN_GRACE_MS", "15000")
        // One name for the cluster, so a token minted for it is good on every runner.
        .env("ATRUND_LOGS_SERVICE_DID", "did:web:cluster.test")
        .env("ATRUND_LOG", format!("info,atrund=debug,{log_of}"));
    Node {
        d: Daemon::spawn(&mut cmd, true),
        _data: data,
    }
}

struct Cluster<'a> {
    net: &'a TestNet,
    aud: String,
}

impl Cluster<'_> {
    async fn call(
        &self,
        d: &Daemon,
        who: &Account,
        lxm: &str,
        q: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = d.url(&format!("/xrpc/{lxm}{q}"));
        let client = reqwest::Client::new();
        let req = match &body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        let token = common::mint(self.net, who, &self.aud, lxm, None).await;
        let resp = req.bearer_auth(token).send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, d: &Daemon, who: &Account, id: i64) -> Value {
        let (s, v) = self
            .call(d, who, "dev.atrund.getJob", &format!("?id={id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["job"].clone()
    }

    async fn until(
        &self,
        d: &Daemon,
        who: &Account,
        id: i64,
        state: &str,
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(d, who, id).await;
            if j["state"] == state {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} never {state}: {j}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Which of `nodes` printed `line` (an instance's console output, in that runner's log).
async fn who_printed(nodes: &[&Node], line: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<usize> = (0..nodes.len())
            .filter(|i| nodes[*i].d.log().contains(line))
            .collect();
        match found.as_slice() {
            [one] => return *one,
            [] => {}
            many => panic!("'{line}' printed by runners {many:?}"),
        }
        assert!(Instant::now() < deadline, "nobody printed '{line}'");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_share_one_queue_survive_a_kill_and_fire_each_cron_once() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let author = net.create_account("clusterauthor").await;
    let manifest = json!({
        "endpoints": [{ "name": "ping", "method": "GET" }],
        "tasks": [{ "name": "slow", "concurrency": 4 }, { "name": "tick" }],
        "crons": [{ "schedule": "* * * * *", "task": "tick" }]
    });
    common::deploy(net, &author, CODE, &manifest, "clustered", "1.0.0").await;
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| node(net, &deno, &redis, &author, "atrund_http::jobs=debug"))
        .collect();
    let desc: Value = reqwest::get(nodes[0].d.url("/xrpc/dev.atrund.describeRunner"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = Cluster {
        net,
        aud: desc["serviceDid"].as_str().unwrap().to_string(),
    };
    let slow = |tag: &str| json!({"bundle": "clustered", "task": "slow", "payload": {"tag": tag}});

    // A cron: each runner tries at the minute; one job, one run, across the three.
    let deadline = Instant::now() + Duration::from_secs(75);
    let logs = |nodes: &[Node]| nodes.iter().map(|n| n.d.log()).collect::<Vec<_>>();
    loop {
        let l = logs(&nodes);
        if l.iter()
            .map(|l| l.matches("tick ran").count())
            .sum::<usize>()
            >= 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cron run within 75 s:\n{}",
            l.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = logs(&nodes);
    let fired: Vec<usize> = l.iter().map(|l| l.matches("cron fired").count()).collect();
    assert_eq!(fired.iter().sum::<usize>(), 1, "{fired:?}");
    let declined = l
        .iter()
        .filter(|l| {
            l.contains("cron tick already queued") || l.contains("this tick is not queued again")
        })
        .count();
    assert!(
        declined >= 1,
        "the other runners did not try the tick:\n{}",
        l.join("\n----\n")
    );
    assert_eq!(
        l.iter()
            .map(|l| l.matches("tick ran").count())
            .sum::<usize>(),
        1
    );

    // A job queued on one runner is seen from another.
    let (s, v) = c
        .call(
            &nodes[0].d,
            &author,
            "dev.atrund.enqueueJob",
            "",
            Some(slow("drain")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let drained = v["job"]["id"].as_i64().unwrap();
    // SIGTERM the runner that runs it: it drains the attempt, which completes there.
    let refs: Vec<&Node> = nodes.iter().collect();
    let i = who_printed(&refs, "slow started drain").await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &nodes[i].d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = nodes[i].d.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the drained runner did not stop cleanly: {exit:?}\n{}",
        nodes[i].d.log()
    );
    let stopped = nodes.remove(i);
    let j = c
        .until(
            &nodes[0].d,
            &author,
            drained,
            "succeeded",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        (j["attempts"].as_u64(), &j["result"]),
        (Some(1), &json!({"tag": "drain"})),
        "{j}"
    );
    assert!(stopped.d.log().contains("slow started drain"));

    // kill -9 the runner that runs the next one: the last runner claims it after the lease.
    let (s, v) = c
        .call(
            &nodes[1].d,
            &author,
            "dev.atrund.enqueueJob",
            "",
            Some(slow("kill")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let killed = v["job"]["id"].as_i64().unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    let k = who_printed(&refs, "slow started kill").await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &nodes[k].d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = nodes[k].d.wait_exit(Duration::from_secs(5));
    let dead_node = nodes.remove(k);
    let running = c.job(&nodes[0].d, &author, killed).await;
    assert_eq!(
        running["state"], "running",
        "its lease still holds: {running}"
    );
    let j = c
        .until(
            &nodes[0].d,
            &author,
            killed,
            "succeeded",
            Duration::from_secs(40),
        )
        .await;
    assert_eq!(
        (j["attempts"].as_u64(), &j["result"]),
        (Some(2), &json!({"tag": "kill"})),
        "{j}"
    );
    assert!(
        nodes[0].d.log().contains("slow started kill"),
        "the survivor ran it"
    );
    drop(dead_node);
    drop(stopped);
}

/// A metric's value on one runner (0 when absent).
async fn metric(d: &Daemon, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", d.admin.as_deref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

async fn cold_starts(nodes: &[&Node]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(metric(&n.d, "atrund_cold_starts_total{result=\"ok\"}").await);
    }
    out
}

/// Routing (`state.route`): calls of one bundle made to any of three runners start it once in
/// the cluster, on the runner it belongs to; when that runner is killed, the calls keep being
/// answered (served where they arrive until its announcement expires, then by the bundle's new
/// runner), and the bundle starts at most once more per survivor.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_starts_once_across_three_routing_runners() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let author = net.create_account("routeauthor").await;
    let manifest = json!({
        "endpoints": [{ "name": "ping", "method": "GET" }],
        "tasks": [{ "name": "slow" }, { "name": "tick" }],
    });
    common::deploy(net, &author, CODE, &manifest, "routed", "1.0.0").await;
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| node(net, &deno, &redis, &author, "atrund_http::cluster=debug"))
        .collect();
    // Each runner has read the others (one heartbeat).
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while metric(&n.d, "atrund_cluster_nodes").await < 3.0 {
            assert!(Instant::now() < deadline, "runners did not see each other");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let http = reqwest::Client::new();
    let call = |n: &Node| {
        let req = http.get(n.d.url(&format!("/bundle/{}/routed/latest/ping", author.did)));
        async move {
            let r = req.send().await.expect("call");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    for round in 0..5 {
        for n in &nodes {
            let (s, v) = call(n).await;
            assert_eq!((s, &v), (200, &json!({"ok": true})), "round {round}");
        }
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let starts = cold_starts(&refs).await;
    assert_eq!(
        starts.iter().sum::<f64>(),
        1.0,
        "one start in the cluster: {starts:?}"
    );
    let owner = starts.iter().position(|s| *s == 1.0).unwrap();
    let mut forwarded = 0.0;
    for n in &nodes {
        forwarded += metric(&n.d, "atrund_cluster_forwards_total{outcome=\"forwarded\"}").await;
    }
    assert_eq!(
        forwarded, 10.0,
        "the two others forwarded their five calls each"
    );

    // The bundle's runner dies: every call is still answered.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &nodes[owner].d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = nodes[owner].d.wait_exit(Duration::from_secs(5));
    let dead = nodes.remove(owner);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for n in &nodes {
            let (s, v) = call(n).await;
            assert_eq!((s, &v), (200, &json!({"ok": true})), "{}", n.d.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let before = cold_starts(&refs).await;
    assert!(
        before.iter().sum::<f64>() <= 2.0,
        "at most one start per survivor: {before:?}"
    );
    // Settled (the dead runner's announcement expired): more calls start nothing new.
    for _ in 0..5 {
        for n in &nodes {
            assert_eq!(call(n).await.0, 200);
        }
    }
    assert_eq!(cold_starts(&refs).await, before);
    drop(dead);
}
