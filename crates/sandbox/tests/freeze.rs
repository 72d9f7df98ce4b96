//! Idle instances are frozen (real Deno, real cgroups as root, in `none` and `container` mode):
//! a timer a bundle leaves running after its response stops advancing once the grace has passed,
//! the next call thaws the instance and is answered, and a frozen instance is shut down (or
//! dropped) cleanly with no cgroup left. Skips with the reason when a piece is missing (no
//! freezer included), fails instead when CI=true.
//!
//! The bundle writes its counter to a file in its data dir, so the test watches it without a
//! call (a call would thaw the instance). Waiting for the frozen state polls the freezer file
//! with a generous limit; nothing asserts on how long anything took.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrund_sandbox::{CgroupManager, DenoBinary, Executor, Instance, NoneExecutor};
use common::*;

/// The freezer is usable here; otherwise the test is skipped, or fails under CI=true.
fn freezer_or_skip(env: &Env) -> bool {
    if env.mgr.freeze_after_idle().is_some() {
        return true;
    }
    let why = env
        .exec
        .enforcement()
        .into_iter()
        .find(|e| e.limit == "idleFreeze")
        .map(|e| e.how)
        .unwrap_or_else(|| "no idleFreeze entry".into());
    skip_or_fail(format!("no cgroup freezer: {why}"));
    false
}

/// Waits until the instance's cgroup reads frozen (`want`), or panics after 10 s.
async fn wait_frozen(mgr: &CgroupManager, id: &str, want: bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while mgr.instance_frozen(id) != Some(want) {
        assert!(
            Instant::now() < until,
            "instance {id} never read frozen = {want} (now {:?})",
            mgr.instance_frozen(id)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn ticks_file(root: &Path) -> PathBuf {
    root.join("data/out/ticks")
}

fn read_ticks(root: &Path) -> String {
    std::fs::read_to_string(ticks_file(root)).unwrap_or_else(|e| panic!("no ticks file: {e}"))
}

/// No dir of the instance's cgroup is left in any hierarchy.
fn assert_no_cgroup(mgr: &CgroupManager, id: &str) {
    for p in mgr.parents() {
        let d = p.join(format!("i-{id}"));
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

async fn frozen_between_calls(mode: Mode) {
    let tag = if mode == Mode::None { "fzn" } else { "fzc" };
    let Some(env) = Env::new(tag, mode).await else {
        return;
    };
    if !freezer_or_skip(&env) {
        return;
    }
    std::fs::create_dir_all(env.root.join("data/out")).unwrap();
    let mut spec = env.spec("fz", &bundle("timers.js"));
    spec.permissions.write = vec!["out".into()];
    let inst = env.warm(spec).await;
    // Idle since it became ready: frozen before any call.
    wait_frozen(&env.mgr, "fz", true).await;

    let v = call_json(&*inst, get("start", "/")).await.unwrap();
    assert_eq!(v["started"], true);
    wait_frozen(&env.mgr, "fz", true).await;
    let before = read_ticks(&env.root);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read_ticks(&env.root),
        before,
        "the bundle's timer advanced while the instance was idle past the grace"
    );
    assert_eq!(env.mgr.instance_frozen("fz"), Some(true));

    // The next call thaws it: answered, and the timer runs again while the call is in flight.
    let v = call_json(&*inst, q("waitTicks", &[("n", "3")]))
        .await
        .unwrap();
    let from = v["from"].as_u64().unwrap();
    assert!(from >= before.trim().parse::<u64>().unwrap_or(0), "{v}");
    assert!(v["ticks"].as_u64().unwrap() >= from + 3, "{v}");
    let v = call_json(&*inst, get("count", "/")).await.unwrap();
    assert!(v["ticks"].as_u64().unwrap() >= from + 3, "{v}");

    // Frozen again, then shut down while frozen: the process dies and every cgroup dir goes.
    wait_frozen(&env.mgr, "fz", true).await;
    let pid = inst.stats().pid.unwrap();
    inst.shutdown().await;
    assert!(!inst.is_alive());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still there"
    );
    assert_no_cgroup(&env.mgr, "fz");

    // Dropped while frozen (no shutdown): the process is killed and its cgroup removed all the
    // same (a v1 frozen process would sleep through its SIGKILL).
    let mut spec = env.spec("fz2", &bundle("timers.js"));
    spec.permissions.write = vec!["out".into()];
    let inst = env.warm(spec).await;
    call_json(&*inst, get("start", "/")).await.unwrap();
    wait_frozen(&env.mgr, "fz2", true).await;
    drop(inst);
    let until = Instant::now() + Duration::from_secs(10);
    while env.mgr.parents().iter().any(|p| p.join("i-fz2").exists()) {
        assert!(
            Instant::now() < until,
            "the frozen instance's cgroup was not removed after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn idle_instance_is_frozen_and_thawed_none_mode() {
    frozen_between_calls(Mode::None).await;
}

#[tokio::test]
async fn idle_instance_is_frozen_and_thawed_container_mode() {
    frozen_between_calls(Mode::Container).await;
}

fn deno() -> Option<DenoBinary> {
    let path = std::env::var_os("ATRUND_TEST_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
    match DenoBinary::locate(Some(&path)) {
        Ok(d) => Some(d),
        Err(e) => {
            skip_or_fail(format!("Deno not available ({e})"));
            None
        }
    }
}

/// Runs `f` with an executor whose manager freezes after `after`, then removes the cgroups.
async fn with_freeze<F, Fut>(tag: &str, after: Option<Duration>, f: F)
where
    F: FnOnce(Arc<CgroupManager>, Arc<dyn Executor>, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Env checks root and the freezer; its own manager is left unused.
    let Some(env) = Env::new(tag, Mode::None).await else {
        return;
    };
    if !freezer_or_skip(&env) {
        return;
    }
    let Some(deno) = deno() else { return };
    let mgr = Arc::new(
        CgroupManager::start(&format!("test-{}-{tag}-x", std::process::id()))
            .with_freeze_after_idle(after),
    );
    // Removes the cgroups also when `f` panics.
    struct Cleanup(Arc<CgroupManager>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove_parents();
        }
    }
    let _cleanup = Cleanup(mgr.clone());
    let exec: Arc<dyn Executor> = Arc::new(NoneExecutor::new(deno).with_cgroups(mgr.clone()));
    f(mgr.clone(), exec, env.root.clone()).await;
}

#[tokio::test]
async fn freezing_off_is_reported_and_timers_run() {
    with_freeze("fzoff", None, |mgr, exec, root| async move {
        let e = exec
            .enforcement()
            .into_iter()
            .find(|e| e.limit == "idleFreeze")
            .unwrap();
        assert!(!e.enforced && e.how.contains("turned off"), "{e:?}");

        std::fs::create_dir_all(root.join("data/out")).unwrap();
        let mut spec = spec_at(&root, "off");
        spec.permissions.write = vec!["out".into()];
        let inst = exec.warm(spec).await.unwrap();
        call_json(&*inst, get("start", "/")).await.unwrap();
        // The timer keeps writing with no call in flight, and the cgroup never freezes.
        let first = read_ticks(&root);
        let until = Instant::now() + Duration::from_secs(10);
        while read_ticks(&root) == first {
            assert!(Instant::now() < until, "the timer never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(mgr.instance_frozen("off"), Some(false));
        inst.shutdown().await;
        assert_no_cgroup(&mgr, "off");
    })
    .await;
}

#[tokio::test]
async fn zero_grace_freezes_when_the_last_call_ends() {
    with_freeze("fz0", Some(Duration::ZERO), |mgr, exec, root| async move {
        let e = exec
            .enforcement()
            .into_iter()
            .find(|e| e.limit == "idleFreeze")
            .unwrap();
        assert!(e.enforced && e.how.contains("for 0 ms"), "{e:?}");
        std::fs::create_dir_all(root.join("data/out")).unwrap();
        let mut spec = spec_at(&root, "z");
        spec.permissions.write = vec!["out".into()];
        let inst = exec.warm(spec).await.unwrap();
        call_json(&*inst, get("start", "/")).await.unwrap();
        wait_frozen(&mgr, "z", true).await;
        for _ in 0..3 {
            let v = call_json(&*inst, q("waitTicks", &[("n", "2")]))
                .await
                .unwrap();
            assert!(v["ticks"].as_u64().unwrap() >= v["from"].as_u64().unwrap() + 2);
            wait_frozen(&mgr, "z", true).await;
        }
        inst.shutdown().await;
        assert_no_cgroup(&mgr, "z");
    })
    .await;
}

fn spec_at(root: &Path, id: &str) -> atrund_sandbox::InstanceSpec {
    atrund_sandbox::InstanceSpec {
        id: id.into(),
        runtime: atrund_sandbox::RuntimeKind::Deno,
        bundle_file: bundle("timers.js"),
        work_dir: root.join("w").join(id),
        data_dir: root.join("data"),
        deno_dir: root.join("deno"),
        permissions: Default::default(),
        env: vec![],
        memory_mib: 128,
        request_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(15),
        limits: Default::default(),
        output: None,
        runner_calls: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timed_call(inst: &dyn Instance) -> Duration {
    let t = Instant::now();
    hello_answers(inst).await;
    t.elapsed()
}

/// Not a test: the numbers of docs/limits.md. `cargo test -p atrund-sandbox --test freeze --
/// --ignored --nocapture measure`.
#[tokio::test]
#[ignore]
async fn measure_thaw_cost() {
    for mode in [Mode::None, Mode::Container] {
        let Some(env) = Env::new("fzm", mode).await else {
            return;
        };
        if !freezer_or_skip(&env) {
            return;
        }
        let inst = env.warm(env.spec("m", &hello())).await;
        for _ in 0..20 {
            timed_call(&*inst).await;
        }
        let mut warm = Vec::new();
        for _ in 0..200 {
            warm.push(timed_call(&*inst).await);
        }
        let mut thawing = Vec::new();
        for _ in 0..50 {
            wait_frozen(&env.mgr, "m", true).await;
            thawing.push(timed_call(&*inst).await);
        }
        inst.shutdown().await;
        eprintln!(
            "{mode:?}: warm back-to-back call median {:?} (n=200); call that thaws median {:?} (n=50)",
            median(warm),
            median(thawing)
        );
    }
    // The freezer files alone, on an instance whose executor does not freeze.
    with_freeze("fzr", None, |mgr, exec, root| async move {
        let mut spec = spec_at(&root, "raw");
        spec.bundle_file = hello();
        let inst = exec.warm(spec).await.unwrap();
        let dir = mgr
            .parents()
            .into_iter()
            .map(|p| p.join("i-raw"))
            .find(|d| d.join("freezer.state").exists() || d.join("cgroup.freeze").exists())
            .unwrap();
        let v1 = dir.join("freezer.state").exists();
        let (file, on, off) = if v1 {
            (dir.join("freezer.state"), "FROZEN", "THAWED")
        } else {
            (dir.join("cgroup.freeze"), "1", "0")
        };
        let (mut write, mut done, mut thaw) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..50 {
            let t = Instant::now();
            std::fs::write(&file, on).unwrap();
            write.push(t.elapsed());
            while mgr.instance_frozen("raw") != Some(true) {
                std::thread::yield_now();
            }
            done.push(t.elapsed());
            let t = Instant::now();
            std::fs::write(&file, off).unwrap();
            thaw.push(t.elapsed());
            hello_answers(&*inst).await;
        }
        eprintln!(
            "freeze write median {:?}, freeze until frozen median {:?}, thaw write median {:?} (n=50)",
            median(write),
            median(done),
            median(thaw)
        );
        // The same idle spell without freezing: what an idle pause costs by itself.
        let mut idle = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            idle.push(timed_call(&*inst).await);
        }
        eprintln!(
            "call after 60 ms idle, not frozen: median {:?} (n=50)",
            median(idle)
        );
        inst.shutdown().await;
    })
    .await;
}
