//! Pre-warmed generic sandboxes (`container` backend) against real bwrap, Deno, cgroups, the
//! kernel's mounts and the egress proxy (as root): a specialised sandbox can do exactly what its
//! manifest allows, per permission kind, and nothing more; a sandbox serves one bundle, ever; a
//! failed specialisation is an error, not a hang. A Python sandbox (no broker: Python enforces
//! nothing) holds a bundle's data paths, secrets and egress exactly as its normal start does. Skips with the reason when a piece is
//! missing, fails instead when CI=true.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrund_sandbox::{
    ContainerExecutor, GenericConfig, GenericSandbox, Instance, InstanceSpec, RunAs, RuntimeKind,
};
use common::*;

fn generic_config() -> GenericConfig {
    GenericConfig {
        runtime: RuntimeKind::Deno,
        memory_mib: 256,
        limits: Default::default(),
        start_timeout: Duration::from_secs(20),
    }
}

async fn setup(test: &str) -> Option<(Env, ContainerExecutor)> {
    // Loopback opened as `egress.allow_cidrs` would, so the allowed fetch has somewhere to go.
    let cfg = atrund_egress::EgressConfig {
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let env = Env::with_egress(test, Mode::Container, cfg).await?;
    let exec = env.container_as(RunAs::NOBODY).await;
    Some((env, exec))
}

async fn park(env: &Env, exec: &ContainerExecutor, id: &str) -> GenericSandbox {
    let work = env.root.join("w").join(id);
    match exec.park_generic(id, &work, &generic_config()).await {
        Ok(g) => g,
        Err(e) => panic!("park_generic failed: {e}"),
    }
}

fn spec(env: &Env, id: &str) -> InstanceSpec {
    env.spec(id, &bundle("generic.js"))
}

async fn specialise(g: GenericSandbox, spec: InstanceSpec) -> Arc<dyn Instance> {
    match tokio::time::timeout(Duration::from_secs(20), g.specialise(spec)).await {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => panic!("specialise failed: {e}"),
        Err(_) => panic!("specialise hung"),
    }
}

async fn ask(inst: &dyn Instance, endpoint: &str, query: &[(&str, &str)]) -> serde_json::Value {
    call_json(inst, q(endpoint, query)).await.unwrap()
}

fn refused(v: &serde_json::Value) {
    assert_eq!(v["error"], "NotCapable", "expected a refusal, got {v}");
}

/// Host pid of the sandbox's PID 1 (the child of bwrap, whose pid the instance reports).
fn pid_ns(inst: &dyn Instance) -> String {
    let bwrap = inst.stats().pid.expect("pid");
    let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).unwrap();
    let init: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    std::fs::read_link(format!("/proc/{init}/ns/pid"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn read_write_env_net_hold_exactly() {
    let Some((env, exec)) = setup("gperm").await else {
        return;
    };
    let data = env.root.join("data");
    std::fs::create_dir_all(data.join("in")).unwrap();
    std::fs::write(data.join("in/a.txt"), "from the host").unwrap();
    std::fs::write(data.join("other.txt"), "not declared").unwrap();
    let (port, _svc) = loopback_service().await;
    let (other_port, _svc2) = loopback_service().await;

    let g = park(&env, &exec, "gperm").await;
    let mut s = spec(&env, "gperm-i");
    s.permissions.read = vec!["in".into()];
    s.permissions.write = vec!["out".into()];
    s.permissions.net = vec![format!("loopback.test:{port}")];
    s.env = vec![("API_KEY".into(), "secret-value-123".into())];
    let inst = specialise(g, s).await;

    // read: the declared path, nothing else of the data dir or the sandbox.
    let v = ask(&*inst, "read", &[("path", "/data/in/a.txt")]).await;
    assert_eq!(v["ok"], "from the host", "{v}");
    for p in [
        "/data/other.txt",
        "/data/out",
        "/etc/hostname",
        "/work/init.json",
    ] {
        refused(&ask(&*inst, "read", &[("path", p)]).await);
    }
    // write: the declared path (it lands in the bundle's data dir), not the read-only one.
    let v = ask(&*inst, "write", &[("path", "/data/out/b.txt")]).await;
    assert_eq!(v["ok"], "written", "{v}");
    assert_eq!(
        std::fs::read_to_string(data.join("out/b.txt")).unwrap(),
        "written"
    );
    for p in ["/data/in/x.txt", "/data/new.txt", "/work/x"] {
        refused(&ask(&*inst, "write", &[("path", p)]).await);
    }
    // env: the secret by its name; nothing else, not the whole environment.
    let v = ask(&*inst, "envGet", &[("name", "API_KEY")]).await;
    assert_eq!(v["ok"], "secret-value-123", "{v}");
    for name in ["HOME", "HTTP_PROXY", "DENO_PERMISSION_BROKER_PATH"] {
        refused(&ask(&*inst, "envGet", &[("name", name)]).await);
    }
    refused(&ask(&*inst, "envAll", &[]).await);
    // net: the declared host:port through the egress proxy; not another port.
    let v = ask(
        &*inst,
        "net",
        &[("url", &format!("http://loopback.test:{port}/"))],
    )
    .await;
    assert_eq!(v["ok"], "200 hi", "{v}");
    refused(
        &ask(
            &*inst,
            "net",
            &[("url", &format!("http://loopback.test:{other_port}/"))],
        )
        .await,
    );
    // run, ffi, sys: not declared, not allowed.
    refused(&ask(&*inst, "run", &[]).await);
    refused(&ask(&*inst, "ffi", &[]).await);
    refused(&ask(&*inst, "sys", &[]).await);
    inst.shutdown().await;
    assert!(!env.root.join("w/gperm").exists(), "work dir left behind");
    // The stage (and its mounts) goes with the instance.
    drop(inst);
    assert!(
        !env.root.join("w/gperm.stage").exists(),
        "stage left behind"
    );
    // The bundle's data survives the sandbox (the stage was unmounted before it went).
    assert!(data.join("in/a.txt").exists() && data.join("out/b.txt").exists());
}

#[tokio::test]
async fn ffi_and_sys_when_declared_and_the_kernel_holds_the_binds() {
    let Some((env, exec)) = setup("gffi").await else {
        return;
    };
    let data = env.root.join("data");
    std::fs::create_dir_all(data.join("in")).unwrap();
    let g = park(&env, &exec, "gffi").await;
    let mut s = spec(&env, "gffi-i");
    s.permissions.read = vec!["in".into()];
    s.permissions.write = vec!["out".into()];
    s.permissions.ffi = true;
    s.permissions.sys = true;
    let inst = specialise(g, s).await;
    assert_eq!(ask(&*inst, "sys", &[]).await["ok"], "sandbox");
    let v = ask(&*inst, "ffi", &[]).await;
    assert_eq!(v["ok"], "opened", "{v}");
    // Beneath Deno: the read-only bind refuses writes (EROFS), the writable one takes them,
    // the rest of /data is read-only, and the binds cannot be unmounted or remounted (EPERM).
    let v = ask(&*inst, "osWrite", &[("path", "/data/in/x")]).await;
    assert_eq!(v["errno"], 30, "{v}");
    let v = ask(&*inst, "osWrite", &[("path", "/data/out/y")]).await;
    assert!(v["rc"].as_i64().unwrap() >= 0, "{v}");
    let v = ask(&*inst, "osWrite", &[("path", "/data/z")]).await;
    assert_eq!(v["errno"], 30, "{v}");
    for endpoint in ["osUmount", "osRemountRw"] {
        let v = ask(&*inst, endpoint, &[("path", "/data/in")]).await;
        assert_eq!(v["rc"], -1, "{endpoint}: {v}");
        assert_eq!(v["errno"], 1, "{endpoint}: {v}");
    }
    let v = ask(&*inst, "osWrite", &[("path", "/data/in/x")]).await;
    assert_eq!(v["errno"], 30, "still read-only: {v}");
    inst.shutdown().await;
}

#[tokio::test]
async fn run_is_unfit_and_starts_the_normal_way() {
    let Some((env, exec)) = setup("grun").await else {
        return;
    };
    let mut s = spec(&env, "grun-i");
    s.permissions.run = vec!["true".into()];
    assert_eq!(GenericSandbox::unfit(&s, &generic_config()), Some("run"));
    let mut big = spec(&env, "grun-big");
    big.memory_mib = 512;
    assert_eq!(
        GenericSandbox::unfit(&big, &generic_config()),
        Some("limits")
    );
    assert_eq!(
        GenericSandbox::unfit(&spec(&env, "x"), &generic_config()),
        None
    );
    let g = park(&env, &exec, "grun").await;
    let e = g
        .specialise(s)
        .await
        .err()
        .expect("a run bundle must be refused");
    assert_eq!(e.code(), "StartFailed");
    assert!(e.to_string().contains("run"), "{e}");
    assert!(!env.root.join("w/grun").exists(), "work dir left behind");
}

#[tokio::test]
async fn a_sandbox_serves_one_bundle_ever() {
    let Some((env, exec)) = setup("gone").await else {
        return;
    };
    let a = park(&env, &exec, "gone-a").await;
    let b = park(&env, &exec, "gone-b").await;
    let ia = specialise(a, spec(&env, "bundle-a")).await;
    let v = ask(&*ia, "mark", &[("value", "from-a")]).await;
    assert_eq!(v["ok"]["global"], serde_json::Value::Null, "{v}");
    assert_eq!(v["ok"]["tmp"], serde_json::Value::Null, "{v}");
    let v = ask(&*ia, "mark", &[("value", "from-a-again")]).await;
    assert_eq!(
        v["ok"]["global"], "from-a",
        "the same instance keeps its state: {v}"
    );
    // The second bundle, while the first still runs: its own process, /tmp and pid namespace.
    let ib = specialise(b, spec(&env, "bundle-b")).await;
    let v = ask(&*ib, "mark", &[("value", "from-b")]).await;
    assert_eq!(v["ok"]["global"], serde_json::Value::Null, "{v}");
    assert_eq!(v["ok"]["tmp"], serde_json::Value::Null, "{v}");
    assert_ne!(ia.stats().pid, ib.stats().pid);
    assert_ne!(pid_ns(&*ia), pid_ns(&*ib));
    ia.shutdown().await;
    ib.shutdown().await;
}

#[tokio::test]
async fn a_failed_specialisation_is_an_error_not_a_hang() {
    let Some((env, exec)) = setup("gfail").await else {
        return;
    };
    // A bundle that throws while it loads.
    let g = park(&env, &exec, "gfail").await;
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        g.specialise(env.spec("gfail-i", &bundle("throws_at_load.js"))),
    )
    .await
    .expect("specialise hung");
    let e = r.err().expect("a bundle that throws at load must fail");
    assert_eq!(e.code(), "StartFailed", "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!env.root.join("w/gfail").exists(), "work dir left behind");
    assert!(
        !env.root.join("w/gfail.stage").exists(),
        "stage left behind"
    );
    // A bundle file that is not there.
    let g = park(&env, &exec, "gfail2").await;
    let e = g
        .specialise(env.spec("gfail2-i", Path::new("/nonexistent/b.js")))
        .await
        .err()
        .expect("a missing bundle must fail");
    assert_eq!(e.code(), "StartFailed", "{e}");
    assert!(
        !env.root.join("w/gfail2.stage").exists(),
        "stage left behind"
    );
}

/// The time from `t` to the first byte of `greet` on `inst`, in ms; then `inst` is stopped.
async fn first_byte(inst: Arc<dyn Instance>, t: Instant) -> f64 {
    let res = inst.execute(get("greet", "/?name=Ada")).await.unwrap();
    assert_eq!(res.status(), 200);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    inst.shutdown().await;
    ms
}

/// Prints p50/p90 of each series, the first two dropped (they warm caches and the page cache).
fn print_first_bytes(names: &[&str], mut t: [Vec<f64>; 3]) {
    for (name, v) in names.iter().zip(t.iter_mut()) {
        v.drain(..2);
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "{name:<18} p50 {:.1} ms  p90 {:.1} ms  (min {:.1}, max {:.1}, n {})",
            v[v.len() / 2],
            v[v.len() * 9 / 10],
            v[0],
            v[v.len() - 1],
            v.len()
        );
    }
}

/// Request → first byte for a bundle with no warm instance: the normal container start, and a
/// generic sandbox parked beforehand (specialise + first call), interleaved; beside the bare
/// Deno spawn (none backend, no cgroup). `cargo test --release -p atrund-sandbox --test generic
/// -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn first_byte_bench() {
    let Some((env, exec)) = setup("gbench").await else {
        return;
    };
    use atrund_sandbox::Executor;
    let bare = atrund_sandbox::NoneExecutor::new(
        atrund_sandbox::DenoBinary::locate(Some(&deno_path())).unwrap(),
    );
    let mut t: [Vec<f64>; 3] = Default::default();
    for i in 0..17 {
        let s = env.spec(&format!("bare-{i}"), &hello());
        let start = Instant::now();
        let ms = first_byte(bare.warm(s).await.unwrap(), start).await;
        t[0].push(ms);
        let s = env.spec(&format!("ctr-{i}"), &hello());
        let start = Instant::now();
        let ms = first_byte(exec.warm(s).await.unwrap(), start).await;
        t[1].push(ms);
        let g = park(&env, &exec, &format!("gb-{i}")).await;
        // As in the pool: the sandbox waits parked; the request arrives later.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = env.spec(&format!("gen-{i}"), &hello());
        let start = Instant::now();
        let ms = first_byte(g.specialise(s).await.unwrap(), start).await;
        t[2].push(ms);
    }
    // The cost of a permission check: 1000 reads under Deno's flags and under the broker.
    let normal = exec.warm(spec(&env, "reads-flags")).await.unwrap();
    let g = park(&env, &exec, "gb-reads").await;
    let brokered = specialise(g, spec(&env, "reads-broker")).await;
    for (name, inst) in [("flags", &normal), ("broker", &brokered)] {
        let mut ms: Vec<f64> = Vec::new();
        for _ in 0..5 {
            let v = ask(&**inst, "reads", &[("n", "1000")]).await;
            ms.push(v["ms"].as_f64().unwrap());
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!("1000 reads, {name:<6}: median {:.1} ms", ms[2]);
        inst.shutdown().await;
    }
    print_first_bytes(&["bare deno spawn", "container", "generic"], t);
}

/// The same for Python (examples/hello-python): first byte of a cold start through the
/// container backend and through a parked Python generic sandbox, interleaved; beside the bare
/// interpreter through the none backend (no cgroup). `cargo test --release -p atrund-sandbox
/// --test generic python_first_byte_bench -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn python_first_byte_bench() {
    let Some((env, _)) = setup("gpybench").await else {
        return;
    };
    let Some(exec) = env.container_with_python(RunAs::NOBODY).await else {
        return;
    };
    let Some(python) = atrund_testnet::python_path() else {
        return;
    };
    use atrund_sandbox::Executor;
    let runtimes = atrund_sandbox::Runtimes::new(
        atrund_sandbox::DenoBinary::locate(Some(&deno_path())).unwrap(),
    )
    .with_python(
        atrund_sandbox::PythonBinary::probe(&python).await.unwrap(),
        true,
    );
    let bare = atrund_sandbox::NoneExecutor::new(runtimes);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hello-python/main.py")
        .canonicalize()
        .unwrap();
    let spec = |id: String| {
        let mut s = env.spec(&id, &hello);
        s.runtime = RuntimeKind::Python;
        s
    };
    let cfg = GenericConfig {
        runtime: RuntimeKind::Python,
        ..generic_config()
    };
    let mut t: [Vec<f64>; 3] = Default::default();
    for i in 0..17 {
        let start = Instant::now();
        t[0].push(first_byte(bare.warm(spec(format!("pbare-{i}"))).await.unwrap(), start).await);
        let start = Instant::now();
        t[1].push(first_byte(exec.warm(spec(format!("pctr-{i}"))).await.unwrap(), start).await);
        let work = env.root.join("w").join(format!("pgb-{i}"));
        let g = exec
            .park_generic(&format!("pgb-{i}"), &work, &cfg)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        let inst = g.specialise(spec(format!("pgen-{i}"))).await.unwrap();
        t[2].push(first_byte(inst, start).await);
    }
    print_first_bytes(&["bare python (none)", "container", "generic"], t);
}

#[tokio::test]
async fn an_unspecialised_sandbox_dropped_leaves_nothing() {
    let Some((env, exec)) = setup("gdrop").await else {
        return;
    };
    let g = park(&env, &exec, "gdrop").await;
    let stage = env.root.join("w/gdrop.stage");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(stage.to_str().unwrap())
    };
    assert!(mounted(), "the stage is a mount while the sandbox waits");
    assert!(g.is_alive());
    drop(g);
    assert!(!mounted(), "stage still mounted");
    assert!(!stage.exists(), "stage left behind");
    assert!(!env.root.join("w/gdrop").exists(), "work dir left behind");
}

#[tokio::test]
async fn a_python_sandbox_holds_data_secrets_and_egress_exactly() {
    let Some((env, _)) = setup("gpy").await else {
        return;
    };
    let Some(exec) = env.container_with_python(RunAs::NOBODY).await else {
        return;
    };
    let data = env.root.join("data");
    std::fs::create_dir_all(data.join("in")).unwrap();
    std::fs::write(data.join("in/a.txt"), "from the host").unwrap();
    std::fs::write(data.join("other.txt"), "not declared").unwrap();
    let (port, _svc) = loopback_service().await;
    let (other_port, _svc2) = loopback_service().await;
    let cfg = GenericConfig {
        runtime: RuntimeKind::Python,
        ..generic_config()
    };
    let mut s = env.spec("gpy-i", &bundle("generic.py"));
    s.runtime = RuntimeKind::Python;
    s.permissions.read = vec!["in".into()];
    s.permissions.write = vec!["out".into()];
    s.permissions.net = vec![format!("loopback.test:{port}")];
    s.env = vec![("API_KEY".into(), "secret-value-123".into())];
    // A Deno sandbox does not take a Python bundle, nor a Python one a Deno bundle.
    assert_eq!(
        GenericSandbox::unfit(&s, &generic_config()),
        Some("runtime")
    );
    assert_eq!(
        GenericSandbox::unfit(&env.spec("x", &bundle("generic.js")), &cfg),
        Some("runtime")
    );
    // `run` is no reason for Python (it enforces no permission of its own).
    let mut with_run = s.clone();
    with_run.permissions.run = vec!["true".into()];
    assert_eq!(GenericSandbox::unfit(&with_run, &cfg), None);

    let work = env.root.join("w").join("gpy");
    let g = match exec.park_generic("gpy", &work, &cfg).await {
        Ok(g) => g,
        Err(e) => panic!("park_generic (python) failed: {e}"),
    };
    let inst = specialise(g, s).await;

    // read: the declared path; the rest of the data dir is not in the sandbox at all.
    let v = ask(&*inst, "read", &[("path", "/data/in/a.txt")]).await;
    assert_eq!(v["ok"], "from the host", "{v}");
    for p in ["/data/other.txt", "/etc/hostname"] {
        let v = ask(&*inst, "read", &[("path", p)]).await;
        assert_eq!(v["error"], "FileNotFoundError", "{p}: {v}");
    }
    // write: the declared path lands in the bundle's data dir; read-only elsewhere (EROFS).
    let v = ask(&*inst, "write", &[("path", "/data/out/b.txt")]).await;
    assert_eq!(v["ok"], "written", "{v}");
    assert_eq!(
        std::fs::read_to_string(data.join("out/b.txt")).unwrap(),
        "written"
    );
    for p in ["/data/in/x.txt", "/data/new.txt"] {
        let v = ask(&*inst, "write", &[("path", p)]).await;
        assert_eq!(v["errno"], 30, "{p}: {v}");
    }
    // env: the secret; nothing of Deno's generic set-up.
    let v = ask(&*inst, "envGet", &[("name", "API_KEY")]).await;
    assert_eq!(v["ok"], "secret-value-123", "{v}");
    let v = ask(&*inst, "envNames", &[]).await;
    let names: Vec<&str> = v["ok"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("DENO_")), "{names:?}");
    // net: the declared host:port through the egress proxy (urllib uses HTTP_PROXY); not
    // another port.
    let v = ask(
        &*inst,
        "net",
        &[("url", &format!("http://loopback.test:{port}/"))],
    )
    .await;
    assert_eq!(v["ok"], "200 hi", "{v}");
    let v = ask(
        &*inst,
        "net",
        &[("url", &format!("http://loopback.test:{other_port}/"))],
    )
    .await;
    assert_eq!(v["error"], "HTTPError", "{v}");
    inst.shutdown().await;
    assert!(!env.root.join("w/gpy").exists(), "work dir left behind");
    drop(inst);
    assert!(!env.root.join("w/gpy.stage").exists(), "stage left behind");
    assert!(data.join("in/a.txt").exists() && data.join("out/b.txt").exists());
}
