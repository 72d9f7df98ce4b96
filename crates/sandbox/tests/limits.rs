//! Resource limits against real Deno and real cgroups: each breach gets its own error, the
//! instance dies with its cgroup, and a fresh instance then serves normally. Needs root and
//! writable cgroup controllers (memory, cpu, cpuacct, pids) and Deno 2.9.6; skips with the
//! reason when they are missing, and fails instead when CI=true.
//!
//! Every test uses its own runner id, so parallel tests never sweep each other's cgroups, and
//! removes its parents at the end.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrund_sandbox::{
    CgroupManager, DenoBinary, Executor, Instance, InstanceSpec, Invocation, NoneExecutor,
};
use http_body_util::BodyExt;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn skip_or_fail(why: String) -> Option<Env> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("limits tests need this in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    deno: DenoBinary,
    mgr: Arc<CgroupManager>,
    exec: NoneExecutor,
}

impl Env {
    fn new(test: &str) -> Option<Self> {
        let path = std::env::var_os("ATRUND_TEST_DENO")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
        let deno = match DenoBinary::locate(Some(&path)) {
            Ok(d) => d,
            Err(e) => {
                return skip_or_fail(format!("Deno not available ({e}); set ATRUND_TEST_DENO"))
            }
        };
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        if uid != 0 {
            return skip_or_fail(format!("not root (uid {uid}); cgroups need root"));
        }
        let mgr = Arc::new(CgroupManager::start(&runner_id(test)));
        let exec = NoneExecutor::new(deno.clone()).with_cgroups(mgr.clone());
        let missing: Vec<String> = exec
            .enforcement()
            .into_iter()
            // The idle freezer has its own tests (freeze.rs).
            .filter(|e| !e.enforced && e.limit != "idleFreeze")
            .map(|e| format!("{}: {}", e.limit, e.how))
            .collect();
        if !missing.is_empty() {
            return skip_or_fail(format!(
                "limits not enforceable here: {}",
                missing.join("; ")
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix("lim")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        Some(Self {
            _tmp: tmp,
            root,
            deno,
            mgr,
            exec,
        })
    }

    fn spec(&self, id: &str) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            runtime: atrund_sandbox::RuntimeKind::Deno,
            bundle_file: bundle(),
            work_dir: self.root.join("w").join(id),
            data_dir: self.root.join("data"),
            deno_dir: self.root.join("deno"),
            permissions: Default::default(),
            env: vec![],
            memory_mib: 128,
            request_timeout: Duration::from_secs(20),
            start_timeout: Duration::from_secs(10),
            limits: Default::default(),
            output: None,
            runner_calls: None,
        }
    }

    /// A fresh instance answers normally after a breach.
    async fn fresh_instance_works(&self, id: &str) {
        let inst = self.exec.warm(self.spec(id)).await.unwrap();
        let res = inst.execute(call("ok")).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"ok":true}"#);
        inst.shutdown().await;
    }

    /// No instance cgroup is left under this runner's parents; then the parents go too.
    fn assert_clean(&self) {
        for p in self.mgr.parents() {
            let children: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect();
            assert!(
                children.is_empty(),
                "left behind in {}: {children:?}",
                p.display()
            );
        }
        self.mgr.remove_parents().unwrap();
    }
}

impl Drop for Env {
    /// Also after a failed test: leave no cgroups on the host.
    fn drop(&mut self) {
        let _ = self.mgr.remove_parents();
    }
}

fn runner_id(test: &str) -> String {
    format!("test-{}-{test}", std::process::id())
}

fn bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bundles/limits.js")
        .canonicalize()
        .unwrap()
}

fn call(endpoint: &str) -> Invocation {
    Invocation {
        kind: atrund_sandbox::CallKind::Endpoint,
        endpoint: endpoint.into(),
        request: http::Request::builder()
            .uri("/")
            .body(atrund_sandbox::empty_body())
            .unwrap(),
        timeout: None,
    }
}

/// Runs `endpoint` on a new instance built from `spec` and returns the error it ends with.
async fn breach(env: &Env, spec: InstanceSpec, endpoint: &str) -> (Arc<dyn Instance>, String, u16) {
    let inst = env.exec.warm(spec).await.unwrap();
    let cg_dirs: Vec<PathBuf> = env
        .mgr
        .parents()
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .collect();
    assert!(!cg_dirs.is_empty(), "the instance has no cgroup");
    let e = match inst.execute(call(endpoint)).await {
        Err(e) => e,
        Ok(res) => panic!("{endpoint} answered {}", res.status()),
    };
    eprintln!("{endpoint}: {} {}: {e}", e.code(), e.class().status());
    assert!(!inst.is_alive(), "{endpoint}: the instance must be killed");
    let (code, status) = (e.code().to_string(), e.class().status());
    inst.shutdown().await;
    (inst, code, status)
}

#[tokio::test]
async fn memory_hog_dies_at_the_cgroup_limit_not_the_heap_flag() {
    let Some(env) = Env::new("mem") else { return };
    let mut spec = env.spec("hog");
    spec.memory_mib = 96;
    // Only an OOM kill in the instance's cgroup is named MemoryLimitExceeded; the heap flag
    // (exit by SIGTRAP, no oom_kill) would be BundleCrashed.
    let (_, code, status) = breach(&env, spec, "hog").await;
    assert_eq!((code.as_str(), status), ("MemoryLimitExceeded", 502));
    env.fresh_instance_works("hog-next").await;
    env.assert_clean();
}

#[tokio::test]
async fn busy_loop_hits_the_cpu_budget() {
    let Some(env) = Env::new("cpu") else { return };
    let mut spec = env.spec("spin");
    spec.limits.cpu_budget = Some(Duration::from_millis(300));
    let t = Instant::now();
    let (_, code, status) = breach(&env, spec, "spin").await;
    assert_eq!((code.as_str(), status), ("CpuLimitExceeded", 504));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the wall clock stopped it, not the CPU budget"
    );
    env.fresh_instance_works("spin-next").await;
    env.assert_clean();
}

#[tokio::test]
async fn sleep_hits_the_timeout() {
    let Some(env) = Env::new("wall") else { return };
    let mut spec = env.spec("sleep");
    spec.request_timeout = Duration::from_millis(500);
    let (_, code, status) = breach(&env, spec, "sleep").await;
    assert_eq!((code.as_str(), status), ("TimedOut", 504));
    env.fresh_instance_works("sleep-next").await;
    env.assert_clean();
}

#[tokio::test]
async fn huge_responses_are_refused_or_cut() {
    let Some(env) = Env::new("resp") else { return };
    // Declared length over the cap: refused before any byte.
    let mut spec = env.spec("big");
    spec.limits.max_response_bytes = 1 << 20;
    let (_, code, status) = breach(&env, spec, "big").await;
    assert_eq!((code.as_str(), status), ("ResponseTooLarge", 502));

    // Streamed: the head is relayed, the body is cut at the cap.
    let mut spec = env.spec("stream");
    spec.limits.max_response_bytes = 1 << 20;
    let inst = env.exec.warm(spec).await.unwrap();
    let res = inst.execute(call("bigStream")).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut got = 0usize;
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
            Some(Err(e)) => break e.to_string(),
            None => panic!("the body ended after {got} bytes without being cut"),
        }
    };
    assert!(got <= 1 << 20, "{got} bytes passed a cap of 1 MiB");
    assert!(err.contains("larger than this runner's limit"), "{err}");
    assert!(!inst.is_alive());
    inst.shutdown().await;

    env.fresh_instance_works("resp-next").await;
    env.assert_clean();
}

#[tokio::test]
async fn worker_spawner_hits_the_pids_limit() {
    let Some(env) = Env::new("pids") else { return };
    let mut spec = env.spec("workers");
    spec.limits.pids = 32;
    // Each Worker is an isolate of a few MiB: leave room so the pids limit is hit first.
    spec.memory_mib = 512;
    let (_, code, status) = breach(&env, spec, "workers").await;
    assert_eq!((code.as_str(), status), ("TooManyProcesses", 502));
    env.fresh_instance_works("workers-next").await;
    env.assert_clean();
}

#[tokio::test]
async fn runners_with_different_ids_leave_each_other_alone() {
    let Some(a) = Env::new("iso-a") else { return };
    let inst = a.exec.warm(a.spec("mine")).await.unwrap();
    let mine: Vec<PathBuf> = a.mgr.parents().iter().map(|p| p.join("i-mine")).collect();
    assert!(mine.iter().all(|d| d.is_dir()));
    // Another runner starts (and sweeps its own leftovers).
    let b = CgroupManager::start(&runner_id("iso-b"));
    assert!(b.sweep().is_empty());
    assert!(
        mine.iter().all(|d| d.is_dir()),
        "runner b removed runner a's cgroups"
    );
    assert!(inst.is_alive());
    let res = inst.execute(call("ok")).await.unwrap();
    assert_eq!(res.status(), 200);
    b.remove_parents().unwrap();
    inst.shutdown().await;
    a.assert_clean();
}

#[tokio::test]
async fn leftovers_of_a_crashed_run_are_swept_at_start() {
    let Some(env) = Env::new("sweep") else { return };
    // A crashed run: a child cgroup per hierarchy with a live process still in it.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let leftovers: Vec<PathBuf> = env
        .mgr
        .parents()
        .iter()
        .map(|p| p.join("i-crashed"))
        .collect();
    for d in &leftovers {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    }
    let again = CgroupManager::start(env.mgr.runner_id());
    for d in &leftovers {
        assert!(!d.exists(), "{} survived the sweep", d.display());
    }
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the leftover process was not killed");
    drop(again);
    env.assert_clean();
}

/// An instance of `tests/bundles/placement.js` on `exec`, and what its `where` endpoint says.
async fn placement_instance(
    env: &Env,
    exec: &NoneExecutor,
    id: &str,
) -> (Arc<dyn Instance>, serde_json::Value) {
    let mut spec = env.spec(id);
    spec.bundle_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bundles/placement.js")
        .canonicalize()
        .unwrap();
    spec.memory_mib = 256;
    // Landlock (when on) refuses all of /proc to cat as well.
    spec.permissions.run = vec!["/bin/cat".into()];
    let inst = exec.warm(spec).await.unwrap();
    let res = inst.execute(call("where")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (inst, serde_json::from_slice(&body).unwrap())
}

/// Bytes charged to the instance's memory cgroup now.
fn memory_charged(env: &Env, id: &str) -> u64 {
    env.mgr
        .parents()
        .iter()
        .map(|p| p.join(format!("i-{id}")))
        .find_map(|d| {
            ["memory.usage_in_bytes", "memory.current"]
                .iter()
                .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
        })
        .expect("the instance has a memory cgroup")
        .trim()
        .parse()
        .unwrap()
}

/// The bundle's top-level code already runs in the instance's cgroup, in every hierarchy: Deno
/// starts before the daemon places it, but the shim imports the bundle only after that.
#[tokio::test]
async fn bundle_code_runs_only_after_placement() {
    let Some(env) = Env::new("place") else { return };
    // Only without Landlock can the bundle read its /proc/<pid>/cgroup.
    let open = NoneExecutor::new(env.deno.clone())
        .with_cgroups(env.mgr.clone())
        .with_os_confinement(false);
    let (inst, out) = placement_instance(&env, &open, "open").await;
    let seen = out["cgroup"].as_str().unwrap();
    let mine = format!(
        "/{}{}/i-open",
        atrund_sandbox::cgroup::PARENT_PREFIX,
        env.mgr.runner_id()
    );
    let inside = seen
        .lines()
        .filter(|l| l.rsplit(':').next().is_some_and(|p| p == mine))
        .count();
    assert_eq!(
        inside,
        env.mgr.parents().len(),
        "at import time the bundle was in:\n{seen}"
    );
    inst.shutdown().await;

    // With Landlock and seccomp as in production: the 64 MiB the bundle touched at import time
    // are charged to its own memory cgroup (pages stay charged where they were first touched).
    let (inst, out) = placement_instance(&env, &env.exec, "confined").await;
    assert!(out["cgroup"].as_str().unwrap().starts_with("unreadable"));
    let charged = memory_charged(&env, "confined");
    assert!(
        charged >= 64 << 20,
        "only {charged} bytes charged to the instance: the bundle ran outside its memory cgroup"
    );
    inst.shutdown().await;
    env.assert_clean();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Not a pass/fail timing test: prints the cost of the cgroups for the closing facts.
#[tokio::test]
async fn measure_cgroup_cost() {
    let Some(env) = Env::new("cost") else { return };
    let limits = atrund_sandbox::cgroup::CgroupLimits {
        memory_mib: 128,
        pids: 64,
        cpu_quota_percent: 100,
    };
    let mut setup = Vec::new();
    let mut teardown = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let cg = env.mgr.create(&format!("m{i}"), limits).unwrap();
        setup.push(t.elapsed());
        let t = Instant::now();
        cg.remove().unwrap();
        teardown.push(t.elapsed());
    }
    let plain = NoneExecutor::new(env.deno.clone());
    // The cgroup joined in the child before exec, as before the post-spawn placement.
    let early = NoneExecutor::new(env.deno.clone())
        .with_cgroups(env.mgr.clone())
        .with_cgroup_join_before_exec(true);
    let mut ready = [Vec::new(), Vec::new(), Vec::new()];
    // Charged to the instance's memory cgroup at ready: what Deno allocated before a post-spawn
    // placement stays charged to the daemon's cgroup.
    let mut charged = [Vec::new(), Vec::new()];
    for i in 0..15 {
        for (k, exec) in [&plain, &early, &env.exec].into_iter().enumerate() {
            let id = format!("r{k}-{i}");
            let t = Instant::now();
            let inst = exec.warm(env.spec(&id)).await.unwrap();
            ready[k].push(t.elapsed());
            if k > 0 {
                charged[k - 1].push(memory_charged(&env, &id));
            }
            inst.shutdown().await;
        }
    }
    for c in &mut charged {
        c.sort_unstable();
    }
    eprintln!(
        "charged to the instance's memory cgroup at ready (median, min..max of 15): joined before exec {} KiB ({}..{}), placed after spawn {} KiB ({}..{})",
        charged[0][7] >> 10,
        charged[0][0] >> 10,
        charged[0][14] >> 10,
        charged[1][7] >> 10,
        charged[1][0] >> 10,
        charged[1][14] >> 10
    );
    eprintln!(
        "cgroup cost per instance (median of 20): set-up {:?}, teardown {:?}; spawn-to-ready (median of 15, interleaved): without cgroups {:?}, joined before exec {:?}, placed after spawn {:?}",
        median(setup),
        median(teardown),
        median(ready[0].clone()),
        median(ready[1].clone()),
        median(ready[2].clone())
    );
    env.assert_clean();
}
