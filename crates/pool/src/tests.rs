//! Scheduling logic against a fake executor (pure logic: real-Deno behaviour is tested in
//! crates/atrund/tests/pool.rs). Waits poll for a condition; only the timing test
//! asserts durations, and only lower bounds or a 10x margin.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrund_sandbox::{Executor, Instance, InstanceSpec, InstanceStats, Invocation, SandboxError};

use crate::{crash_backoff, InstanceKey, Pool, PoolConfig, PoolError};

#[derive(Default)]
struct FakeExec {
    starts: AtomicUsize,
    fail_start: AtomicBool,
    crash_on_call: AtomicBool,
    /// Milliseconds a start takes and each call takes before its response head.
    start_ms: AtomicU64,
    call_ms: AtomicU64,
    instances: std::sync::Mutex<Vec<Arc<FakeInstance>>>,
}

struct FakeInstance {
    alive: AtomicBool,
    stopped: AtomicBool,
    crash_on_call: bool,
    call_ms: u64,
    started: Instant,
}

#[async_trait::async_trait]
impl Executor for FakeExec {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn warm(&self, _spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.start_ms.load(Ordering::SeqCst))).await;
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(SandboxError::StartFailed("boom".into()));
        }
        let i = Arc::new(FakeInstance {
            alive: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            crash_on_call: self.crash_on_call.load(Ordering::SeqCst),
            call_ms: self.call_ms.load(Ordering::SeqCst),
            started: Instant::now(),
        });
        self.instances.lock().unwrap().push(i.clone());
        Ok(i)
    }
}

#[async_trait::async_trait]
impl Instance for FakeInstance {
    async fn execute(
        &self,
        _call: Invocation,
    ) -> Result<http::Response<atrund_sandbox::Body>, SandboxError> {
        if self.crash_on_call {
            self.alive.store(false, Ordering::SeqCst);
            return Err(SandboxError::BundleCrashed("exit status: 1".into()));
        }
        tokio::time::sleep(Duration::from_millis(self.call_ms)).await;
        Ok(http::Response::new(atrund_sandbox::full_body("ok")))
    }
    fn stats(&self) -> InstanceStats {
        InstanceStats {
            in_flight: 0,
            served: 0,
            started_at: self.started,
            last_used: self.started,
            // The test process stands in for the instance's process in memory accounting.
            pid: self
                .alive
                .load(Ordering::SeqCst)
                .then_some(std::process::id()),
        }
    }
    async fn drain(&self) {}
    async fn shutdown(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
    }
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    fn resident_bytes(&self) -> Option<u64> {
        self.stats().pid.and_then(atrund_sandbox::resident_bytes)
    }
}

fn spec() -> InstanceSpec {
    InstanceSpec {
        id: "t".into(),
        runtime: atrund_sandbox::RuntimeKind::Deno,
        bundle_file: "/nonexistent/b.js".into(),
        work_dir: "/nonexistent/w".into(),
        data_dir: "/nonexistent/d".into(),
        deno_dir: "/nonexistent/deno".into(),
        permissions: Default::default(),
        env: vec![],
        memory_mib: 128,
        request_timeout: Duration::from_secs(1),
        start_timeout: Duration::from_secs(1),
        limits: Default::default(),
        output: None,
        runner_calls: None,
    }
}

fn call() -> Invocation {
    Invocation {
        kind: atrund_sandbox::CallKind::Endpoint,
        endpoint: "e".into(),
        request: http::Request::new(atrund_sandbox::empty_body()),
        timeout: None,
    }
}

fn key(author: &str, cid: &str) -> InstanceKey {
    InstanceKey {
        author: author.into(),
        bundle: cid.into(),
        secrets: None,
    }
}

fn cfg() -> PoolConfig {
    PoolConfig {
        busy_wait: Duration::from_millis(20),
        ..PoolConfig::default()
    }
}

async fn run(
    pool: &Arc<Pool>,
    k: &InstanceKey,
    limit: usize,
) -> Result<http::Response<crate::LeasedBody>, PoolError> {
    pool.execute(k.clone(), limit, spec, call(), |_| {}, None)
        .await
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn one_instance_serves_many_requests() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(exec.clone(), cfg());
    let k = key("did:plc:a", "c1");
    for _ in 0..5 {
        let r = run(&pool, &k, 4).await.unwrap();
        drop(r);
    }
    let s = pool.stats();
    assert_eq!(exec.starts.load(Ordering::SeqCst), 1);
    assert_eq!((s.cold_hits, s.warm_hits), (1, 4));
    assert_eq!((s.idle, s.busy), (1, 0));
}

#[tokio::test]
async fn only_the_request_that_started_an_instance_reports_its_start_time() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(exec.clone(), cfg());
    let k = key("did:plc:a", "c1");
    let first = run(&pool, &k, 4).await.unwrap();
    assert!(first.body().started_instance().is_some());
    let second = run(&pool, &k, 4).await.unwrap();
    assert_eq!(second.body().started_instance(), None);
    let usage = pool.usage();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].author, "did:plc:a");
    // The fake instance has no cgroup.
    assert_eq!(usage[0].cpu, None);
}

#[tokio::test]
async fn bundle_time_is_the_call_alone_not_the_start() {
    let exec = Arc::new(FakeExec::default());
    exec.start_ms.store(400, Ordering::SeqCst);
    exec.call_ms.store(30, Ordering::SeqCst);
    let pool = Pool::new(exec.clone(), cfg());
    let k = key("did:plc:a", "c1");
    let cold = run(&pool, &k, 4).await.unwrap();
    let (start, bundle) = (
        cold.body().started_instance().unwrap(),
        cold.body().bundle_time(),
    );
    assert!(start >= Duration::from_millis(400), "{start:?}");
    // Lower bounds only are exact; the start's 400 ms must not be in the bundle's time.
    assert!(bundle >= Duration::from_millis(30), "{bundle:?}");
    assert!(bundle < Duration::from_millis(400), "{bundle:?}");
    let warm = run(&pool, &k, 4).await.unwrap();
    assert!(warm.body().bundle_time() >= Duration::from_millis(30));
}

#[tokio::test]
async fn a_slot_is_held_until_the_body_ends_then_busy_after_the_bounded_wait() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances_per_bundle: 2,
            ..cfg()
        },
    );
    let k = key("did:plc:a", "c1");
    // Concurrency 1: each held response occupies one instance; two are allowed.
    let a = run(&pool, &k, 1).await.unwrap();
    let b = run(&pool, &k, 1).await.unwrap();
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
    let err = run(&pool, &k, 1).await.unwrap_err();
    assert_eq!(err.code(), "Busy");
    assert_eq!(err.retry_after_secs(), Some(1));
    assert_eq!(pool.stats().busy, 2);
    drop(a);
    let c = run(&pool, &k, 1).await.unwrap();
    assert_eq!(
        exec.starts.load(Ordering::SeqCst),
        2,
        "the freed slot is reused"
    );
    drop((b, c));
    assert_eq!(pool.stats().busy_refusals, 1);
}

#[tokio::test]
async fn a_reconfigured_cap_applies_to_the_next_request() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances_per_bundle: 1,
            ..cfg()
        },
    );
    let k = key("did:plc:a", "c1");
    let a = run(&pool, &k, 1).await.unwrap();
    assert_eq!(run(&pool, &k, 1).await.unwrap_err().code(), "Busy");
    pool.reconfigure(PoolConfig {
        max_instances_per_bundle: 2,
        ..cfg()
    });
    let b = run(&pool, &k, 1).await.unwrap();
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
    // Lowered again: nothing running is stopped, but no third instance starts.
    pool.reconfigure(PoolConfig {
        max_instances_per_bundle: 1,
        ..cfg()
    });
    assert_eq!(run(&pool, &k, 1).await.unwrap_err().code(), "Busy");
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
    drop((a, b));
}

#[tokio::test]
async fn a_waiting_request_takes_a_slot_freed_within_the_wait() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances_per_bundle: 1,
            busy_wait: Duration::from_secs(30),
            ..cfg()
        },
    );
    let k = key("did:plc:a", "c1");
    let held = run(&pool, &k, 1).await.unwrap();
    let p2 = pool.clone();
    let k2 = k.clone();
    let waiter = tokio::spawn(async move { run(&p2, &k2, 1).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    assert_eq!(exec.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_global_cap_evicts_the_least_recently_used_idle_instance() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances: 2,
            memory_budget_bytes: 0,
            ..cfg()
        },
    );
    let (k1, k2, k3) = (
        key("did:plc:a", "1"),
        key("did:plc:b", "2"),
        key("did:plc:c", "3"),
    );
    drop(run(&pool, &k1, 1).await.unwrap());
    drop(run(&pool, &k2, 1).await.unwrap());
    drop(run(&pool, &k1, 1).await.unwrap()); // k2 is now the least recently used
    drop(run(&pool, &k3, 1).await.unwrap());
    let s = pool.stats();
    assert_eq!(s.evictions, 1);
    let mut cids: Vec<_> = s.instances.iter().map(|i| i.record_cid.clone()).collect();
    cids.sort();
    assert_eq!(cids, ["1", "3"]);
    eventually("evicted instance stopped", || {
        exec.instances.lock().unwrap()[1]
            .stopped
            .load(Ordering::SeqCst)
    })
    .await;
    // All busy: nothing may be evicted, the new key gets Busy.
    let h1 = run(&pool, &k1, 1).await.unwrap();
    let h3 = run(&pool, &k3, 1).await.unwrap();
    assert_eq!(run(&pool, &k2, 1).await.unwrap_err().code(), "Busy");
    drop((h1, h3));
}

#[tokio::test]
async fn the_author_cap_only_counts_that_author() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances_per_author: 1,
            ..cfg()
        },
    );
    let h = run(&pool, &key("did:plc:a", "1"), 1).await.unwrap();
    let err = run(&pool, &key("did:plc:a", "2"), 1).await.unwrap_err();
    assert_eq!(err.code(), "Busy");
    assert!(err.to_string().contains("per-author"), "{err}");
    drop(run(&pool, &key("did:plc:b", "3"), 1).await.unwrap());
    drop(h);
    // Now idle: the author's other bundle evicts it.
    drop(run(&pool, &key("did:plc:a", "2"), 1).await.unwrap());
    assert_eq!(pool.stats().evictions, 1);
}

#[tokio::test]
async fn idle_instances_are_reaped_and_busy_ones_never() {
    let exec = Arc::new(FakeExec::default());
    let idle = Duration::from_millis(100);
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            idle_timeout: idle,
            ..cfg()
        },
    );
    let busy = run(&pool, &key("did:plc:a", "busy"), 1).await.unwrap();
    drop(run(&pool, &key("did:plc:a", "idle"), 1).await.unwrap());
    eventually("idle instance reaped", || pool.stats().idle_reaped == 1).await;
    // Long past the idle timeout, the instance with a response in flight is still there.
    tokio::time::sleep(idle * 5).await;
    let s = pool.stats();
    assert_eq!((s.busy, s.idle, s.idle_reaped), (1, 0, 1));
    assert!(exec.instances.lock().unwrap()[0].is_alive());
    drop(busy);
    eventually("now-idle instance reaped", || pool.stats().idle_reaped == 2).await;
    assert!(pool.is_empty());
}

#[tokio::test]
async fn the_memory_budget_evicts_idle_instances() {
    let exec = Arc::new(FakeExec::default());
    let own = atrund_sandbox::resident_bytes(std::process::id()).unwrap();
    // Room for one instance (each fake reports the test process's RSS), not two.
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            memory_budget_bytes: own + own / 2,
            ..cfg()
        },
    );
    drop(run(&pool, &key("did:plc:a", "1"), 1).await.unwrap());
    drop(run(&pool, &key("did:plc:b", "2"), 1).await.unwrap());
    let s = pool.stats();
    assert_eq!(s.evictions, 1);
    assert_eq!(s.instances.len(), 1);
    assert_eq!(s.instances[0].record_cid, "2");
    // Busy instances are never evicted for memory: the next key is refused.
    let h = run(&pool, &key("did:plc:b", "2"), 1).await.unwrap();
    let err = run(&pool, &key("did:plc:c", "3"), 1).await.unwrap_err();
    assert!(err.to_string().contains("memory budget"), "{err}");
    drop(h);
}

#[tokio::test]
async fn a_dead_instance_is_replaced_and_a_crash_loop_backed_off() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            crash_backoff: Duration::from_secs(60),
            ..cfg()
        },
    );
    let k = key("did:plc:a", "1");
    exec.crash_on_call.store(true, Ordering::SeqCst);
    let e = run(&pool, &k, 1).await.unwrap_err();
    assert_eq!(e.code(), "BundleCrashed");
    // The first crash is restarted at once.
    exec.crash_on_call.store(false, Ordering::SeqCst);
    drop(run(&pool, &k, 1).await.unwrap());
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
    // A success resets the count: two more crashes are needed for a back-off.
    exec.instances.lock().unwrap()[1]
        .alive
        .store(false, Ordering::SeqCst);
    exec.crash_on_call.store(true, Ordering::SeqCst);
    assert_eq!(run(&pool, &k, 1).await.unwrap_err().code(), "BundleCrashed");
    let e = run(&pool, &k, 1).await.unwrap_err();
    assert_eq!(e.code(), "BundleCrashLooping", "{e}");
    assert!(e.retry_after_secs().is_some_and(|s| s > 1));
    assert_eq!(
        exec.starts.load(Ordering::SeqCst),
        3,
        "no start while backed off"
    );
    let s = pool.stats();
    assert_eq!((s.crashes, s.crash_loop_refusals), (3, 1));
}

#[tokio::test]
async fn failed_starts_are_backed_off_too() {
    let exec = Arc::new(FakeExec::default());
    exec.fail_start.store(true, Ordering::SeqCst);
    let pool = Pool::new(exec.clone(), cfg());
    let k = key("did:plc:a", "1");
    assert_eq!(run(&pool, &k, 1).await.unwrap_err().code(), "StartFailed");
    assert_eq!(run(&pool, &k, 1).await.unwrap_err().code(), "StartFailed");
    assert_eq!(
        run(&pool, &k, 1).await.unwrap_err().code(),
        "BundleCrashLooping"
    );
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
}

#[test]
fn backoff_doubles_and_is_capped() {
    let (b, m) = (Duration::from_millis(500), Duration::from_secs(30));
    let d: Vec<u64> = (0..10)
        .map(|n| crash_backoff(n, b, m).as_millis() as u64)
        .collect();
    assert_eq!(d, [0, 0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    assert_eq!(crash_backoff(u32::MAX, b, m), m);
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_start() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(exec.clone(), cfg());
    let k = key("did:plc:a", "1");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (p, k) = (pool.clone(), k.clone());
        tasks.push(tokio::spawn(
            async move { run(&p, &k, 8).await.map(|_| ()) },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(exec.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn prewarmed_instances_are_kept_and_refilled() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            idle_timeout: Duration::from_millis(50),
            ..cfg()
        },
    );
    let k = key("did:plc:a", "1");
    pool.keep_warm(k.clone(), 2, 1, Arc::new(spec))
        .await
        .unwrap();
    assert_eq!(exec.starts.load(Ordering::SeqCst), 2);
    drop(run(&pool, &k, 1).await.unwrap());
    assert_eq!(pool.stats().warm_hits, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pool.stats().instances.len(),
        2,
        "pinned instances are not reaped"
    );
    exec.instances.lock().unwrap()[0]
        .alive
        .store(false, Ordering::SeqCst);
    eventually("dead pre-warmed instance replaced", || {
        exec.starts.load(Ordering::SeqCst) == 3 && pool.stats().instances.len() == 2
    })
    .await;
}

#[tokio::test]
async fn drain_waits_for_admitted_requests_and_refuses_new_ones() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(exec.clone(), cfg());
    let ticket = pool.admit().unwrap();
    let resp = run(&pool, &key("did:plc:a", "1"), 1).await.unwrap();
    drop(ticket); // the response body still counts
    let p = pool.clone();
    let drain = tokio::spawn(async move { p.drain(Duration::from_secs(30)).await });
    eventually("drain begun", || pool.is_draining()).await;
    assert_eq!(pool.admit().err().map(|e| e.code()), Some("Draining"));
    assert!(!drain.is_finished());
    drop(resp);
    assert!(drain.await.unwrap(), "drained within the grace");
    pool.shutdown().await;
    assert!(exec.instances.lock().unwrap()[0]
        .stopped
        .load(Ordering::SeqCst));
    assert!(pool.is_empty());
}

#[tokio::test]
async fn drain_gives_up_after_the_grace() {
    let pool = Pool::new(Arc::new(FakeExec::default()), cfg());
    let _ticket = pool.admit().unwrap();
    assert!(!pool.drain(Duration::from_millis(50)).await);
}

#[tokio::test]
async fn a_burst_over_one_instance_scales_out_without_errors() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances_per_bundle: 4,
            busy_wait: Duration::from_secs(30),
            ..cfg()
        },
    );
    let k = key("did:plc:a", "1");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (p, k) = (pool.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let resp = run(&p, &k, 1).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(resp);
            Ok::<_, PoolError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let starts = exec.starts.load(Ordering::SeqCst);
    assert!((2..=4).contains(&starts), "{starts} starts");
    assert_eq!(pool.stats().busy_refusals, 0);
}

fn adaptive(bin_ms: u64, idle_ms: u64) -> PoolConfig {
    PoolConfig {
        idle_timeout: Duration::from_millis(idle_ms),
        warmth: Some(crate::warmth::WarmthConfig {
            bin: Duration::from_millis(bin_ms),
            range: Duration::from_millis(bin_ms * 50),
            min_samples: 3,
            // Wide margins: the fake starts at once, but the box running the tests may be slow.
            margin_percent: 40,
            ..Default::default()
        }),
        ..cfg()
    }
}

async fn run_as(
    pool: &Arc<Pool>,
    k: &InstanceKey,
    app: &str,
) -> Result<http::Response<crate::LeasedBody>, PoolError> {
    let b = crate::BundleRef {
        name: app.into(),
        start: Arc::new(spec),
    };
    pool.execute(k.clone(), 1, spec, call(), |_| {}, Some(b))
        .await
}

#[tokio::test]
async fn adaptive_warmth_unloads_after_the_call_and_prewarms_before_the_next() {
    let exec = Arc::new(FakeExec::default());
    // 50 ms bins; a fixed timeout of 10 s that the adaptive windows must beat.
    let pool = Pool::new(exec.clone(), adaptive(50, 10_000));
    let k = key("did:plc:a", "v1");
    // Regular calls every 600 ms; 3 idle times make a history, 2 do not.
    for _ in 0..3 {
        drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        pool.stats().adaptive_unloads,
        0,
        "no history yet: fixed timeout"
    );
    assert_eq!(exec.starts.load(Ordering::SeqCst), 1);
    drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
    let w = &pool.stats().warmth[0];
    assert_eq!(
        (w.bundle.as_str(), w.basis),
        ("did:plc:a/app", crate::warmth::Basis::Histogram)
    );
    // Idle times of 600 ms and a little: bin 12 (or 13 on a slow box), less the 40 % margin.
    assert!([360, 390].contains(&w.prewarm_ms), "{w:?}");
    eventually("unloaded after the call", || {
        pool.stats().adaptive_unloads == 1
    })
    .await;
    assert!(pool.is_empty());
    eventually("pre-warmed", || {
        pool.stats().adaptive_prewarms == 1 && pool.len() == 1
    })
    .await;
    let before = pool.stats().cold_hits;
    drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
    assert_eq!(
        pool.stats().cold_hits,
        before,
        "the next call found the pre-warmed instance"
    );
}

#[tokio::test]
async fn a_prewarm_that_would_exceed_a_cap_is_skipped_and_counted() {
    let exec = Arc::new(FakeExec::default());
    let pool = Pool::new(
        exec.clone(),
        PoolConfig {
            max_instances: 1,
            ..adaptive(50, 10_000)
        },
    );
    let k = key("did:plc:a", "v1");
    for _ in 0..3 {
        drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
    eventually("unloaded after the call", || pool.is_empty()).await;
    // Another bundle takes the only slot before the pre-warm time, and keeps it busy.
    let held = run(&pool, &key("did:plc:b", "other"), 1).await.unwrap();
    eventually("pre-warm skipped", || {
        pool.stats().adaptive_prewarms_skipped == 1
    })
    .await;
    let s = pool.stats();
    assert_eq!((s.adaptive_prewarms, s.instances.len()), (0, 1));
    drop(held);
}

#[test]
fn fixed_warmth_ignores_the_bundle() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let exec = Arc::new(FakeExec::default());
        let pool = Pool::new(exec.clone(), cfg());
        let k = key("did:plc:a", "v1");
        for _ in 0..6 {
            drop(run_as(&pool, &k, "did:plc:a/app").await.unwrap());
        }
        let s = pool.stats();
        assert!(s.warmth.is_empty());
        assert_eq!((s.adaptive_unloads, s.instances.len()), (0, 1));
        // A reload cannot switch it on: the histograms need the bins they were built with.
        pool.reconfigure(adaptive(50, 10_000));
        assert!(!pool.adapts());
    });
}
