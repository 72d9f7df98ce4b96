//! The `container` backend against real bwrap, Deno, cgroups and the egress proxy (as root):
//! calls work, and inside the sandbox the process has seccomp, no_new_privs, no capabilities,
//! only `lo`, a read-only bundle and no host files. Skips with the reason when a piece is
//! missing, fails instead when CI=true.

mod common;

use common::*;

#[tokio::test]
async fn hello_runs_in_a_container() {
    let Some(env) = Env::new("hello", Mode::Container).await else {
        return;
    };
    let inst = env.warm(env.spec("hello", &hello())).await;
    hello_answers(&*inst).await;
    inst.shutdown().await;
    assert!(!env.root.join("w/hello").exists(), "work dir left behind");
}

#[tokio::test]
async fn inside_seccomp_no_caps_only_lo_readonly_bundle() {
    let Some(env) = Env::new("inside", Mode::Container).await else {
        return;
    };
    let secret = secret_file(&env);
    let b = hostile(&env, &secret);
    let mut spec = env.spec("inside", &b);
    spec.permissions.ffi = true;
    let inst = env.warm(spec).await;

    let status = call_json(&*inst, q("osRead", &[("path", "/proc/self/status")]))
        .await
        .unwrap();
    let status = status["text"].as_str().unwrap().to_string();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{k} missing in {status}"))
    };
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapBnd"), "0000000000000000");
    assert!(field("Uid").starts_with("65534"), "{}", field("Uid"));

    let dev = call_json(&*inst, q("osRead", &[("path", "/proc/net/dev")]))
        .await
        .unwrap();
    let ifaces: Vec<&str> = dev["text"]
        .as_str()
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(ifaces, ["lo"]);

    // The bundle and the root are read-only; the host's files are not there.
    for path in ["/bundle/hostile.js", "/bundle/new.js", "/bin/new", "/etc/x"] {
        let v = call_json(&*inst, q("osWrite", &[("path", path)]))
            .await
            .unwrap();
        assert_eq!(v["rc"], -1, "{path}: {v}");
        assert!(
            v["errno"] == 30 || v["errno"] == 13,
            "{path}: expected EROFS or EACCES, got {v}"
        );
    }
    let v = call_json(&*inst, q("osRead", &[("path", secret.to_str().unwrap())]))
        .await
        .unwrap();
    assert_eq!(v["errno"], 2, "{v}");
    // PID 1 (our init) is not dumpable: its environ is closed to Deno.
    let v = call_json(&*inst, q("osRead", &[("path", "/proc/1/environ")]))
        .await
        .unwrap();
    assert!(v.get("errno").is_some(), "{v}");
    // /tmp is writable (tmpfs).
    let v = call_json(&*inst, q("osWrite", &[("path", "/tmp/ok")]))
        .await
        .unwrap();
    assert!(v["rc"].as_i64().unwrap() >= 0, "{v}");
    inst.shutdown().await;
}

/// The host pid of the instance's PID 1 (bwrap's child).
fn init_pid(bwrap: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn sigterm_to_pid1_reaches_deno() {
    let Some(env) = Env::new("sigterm", Mode::Container).await else {
        return;
    };
    let inst = env.warm(env.spec("sigterm", &hello())).await;
    let init = init_pid(inst.stats().pid.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = std::time::Instant::now();
    while inst.is_alive() && t.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!inst.is_alive(), "Deno kept running after SIGTERM to PID 1");
    inst.shutdown().await;
}

/// Cold start (spawn to ready, hello bundle, warm DENO_DIR), interleaved, median of 15:
/// bare Deno (the `none` backend without cgroups), `none` (+ cgroup), `container`.
/// `cargo test -p atrund-sandbox --test container -- --ignored --nocapture cold_start`
#[tokio::test]
#[ignore]
async fn cold_start_bench() {
    let Some(ctr) = Env::new("bench-c", Mode::Container).await else {
        return;
    };
    let Some(none) = Env::new("bench-n", Mode::None).await else {
        return;
    };
    let deno = atrund_sandbox::DenoBinary::locate(Some(
        &std::env::var_os("ATRUND_TEST_DENO")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno")),
    ))
    .unwrap();
    let bare = atrund_sandbox::NoneExecutor::new(deno);
    use atrund_sandbox::Executor;
    let mut t = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..17 {
        for (k, env) in [&none, &none, &ctr].iter().enumerate() {
            let spec = env.spec(&format!("b{k}-{i}"), &hello());
            let start = std::time::Instant::now();
            let inst = if k == 0 {
                bare.warm(spec).await.unwrap()
            } else {
                env.exec.warm(spec).await.unwrap()
            };
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            hello_answers(&*inst).await;
            inst.shutdown().await;
            if i >= 2 {
                t[k].push(ms); // the first two warm the DENO_DIR and page cache
            }
        }
    }
    for (name, v) in ["bare deno", "none", "container"].iter().zip(t.iter_mut()) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "{name:<10} median {:.1} ms (min {:.1}, max {:.1}, n {})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            v.len()
        );
    }
}

/// `SCHED_BATCH` as `/proc/<pid>/stat` reports it: the policy instances run with.
const SCHED_BATCH: u32 = 3;

/// The scheduling policy of every thread of `pids` (`/proc/<pid>/task/<tid>/stat`, field 41).
fn policies(pids: &[u32]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for p in pids {
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .unwrap()
            .flatten()
        {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            // Fields after the command name (which may hold spaces) start at field 3.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let policy = after
                .split_whitespace()
                .nth(41 - 3)
                .unwrap()
                .parse()
                .unwrap();
            let tid = task.file_name().to_str().unwrap().parse().unwrap();
            out.push((tid, policy));
        }
    }
    out
}

/// Instances run with `SCHED_BATCH` (every thread of every process, in both backends), so a
/// request written to an instance does not preempt the daemon (docs/performance.md).
#[tokio::test]
async fn instances_run_with_batch_scheduling() {
    for (name, mode) in [("batch-n", Mode::None), ("batch-c", Mode::Container)] {
        let Some(env) = Env::new(name, mode).await else {
            return;
        };
        let inst = env.warm(env.spec(name, &hello())).await;
        hello_answers(&*inst).await;
        let tree = process_tree(inst.stats().pid.unwrap());
        let all = policies(&tree);
        assert!(all.len() >= 2, "{name}: threads of {tree:?}: {all:?}");
        assert!(
            all.iter().all(|(_, p)| *p == SCHED_BATCH),
            "{name}: every thread should be SCHED_BATCH (3): {all:?}"
        );
        inst.shutdown().await;
    }
}

/// Every process under `pid` (its descendants, by `/proc/<pid>/task/*/children`), `pid` first.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .unwrap()
            .flatten()
        {
            let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(kids.split_whitespace().map(|k| k.parse::<u32>().unwrap()));
        }
        i += 1;
    }
    all
}

/// A start from a spare launcher (parked ahead in a cgroup of its own, cgroup v1) keeps what the
/// join before exec gives: bwrap, PID 1 and Deno are all in the instance's cgroup in every
/// hierarchy, with the instance's limits, and the sandbox's cgroup namespace is rooted there.
#[tokio::test]
async fn start_from_a_spare_launcher_is_accounted_and_limited() {
    let Some(env) = Env::new("spare", Mode::Container).await else {
        return;
    };
    if env.mgr.version() != Some(atrund_sandbox::CgroupVersion::V1) {
        eprintln!(
            "spare launchers are used on cgroup v1 only; this host has {:?}",
            env.mgr.version()
        );
        return;
    }
    let exec = env.container_as(atrund_sandbox::RunAs::NOBODY).await;
    // The probe parks the first launchers.
    let t = std::time::Instant::now();
    while exec.spare_counts().0 == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(exec.spare_counts().0 > 0, "no spare launcher was parked");
    let secret = secret_file(&env);
    let mut spec = env.spec("spare", &hostile(&env, &secret));
    spec.permissions.ffi = true;
    spec.memory_mib = 96;
    spec.limits.pids = 50;
    use atrund_sandbox::Executor;
    let inst = exec.warm(spec).await.unwrap();
    assert_eq!(exec.spare_counts().1, 1, "the start did not take the spare");

    let bwrap = inst.stats().pid.unwrap();
    let tree = process_tree(bwrap);
    assert!(tree.len() >= 3, "bwrap, init and Deno expected: {tree:?}");
    let all = policies(&tree);
    assert!(
        all.iter().all(|(_, p)| *p == SCHED_BATCH),
        "not all SCHED_BATCH: {all:?}"
    );
    for parent in env.mgr.parents() {
        let dir = parent.join("i-spare");
        let procs: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        for p in &tree {
            assert!(
                procs.contains(p),
                "{p} of {tree:?} is not in {}: {procs:?}",
                dir.display()
            );
        }
        let limit =
            |file: &str| std::fs::read_to_string(dir.join(file)).map(|s| s.trim().to_string());
        if let Ok(v) = limit("memory.limit_in_bytes") {
            assert_eq!(v, (96u64 << 20).to_string());
        }
        if let Ok(v) = limit("pids.max") {
            assert_eq!(v, "50");
        }
    }
    // Rooted at the instance's cgroup: the sandbox sees "/" and nothing of the host's names.
    let v = call_json(&*inst, q("osRead", &[("path", "/proc/self/cgroup")]))
        .await
        .unwrap();
    let text = v["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty(), "{v}");
    for line in text.lines() {
        assert!(line.ends_with(":/"), "{line} in\n{text}");
    }
    inst.shutdown().await;
    for parent in env.mgr.parents() {
        assert!(!parent.join("i-spare").exists(), "cgroup left behind");
    }
    // The queue is topped up once a start is over: the next start takes a spare too.
    let t = std::time::Instant::now();
    while exec.spare_counts().0 == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let inst = exec.warm(env.spec("spare2", &hello())).await.unwrap();
    assert_eq!(
        exec.spare_counts().1,
        2,
        "the second start did not take a spare"
    );
    hello_answers(&*inst).await;
    inst.shutdown().await;
}
