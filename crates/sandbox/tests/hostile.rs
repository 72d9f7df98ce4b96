//! The hostile-bundle suite (docs/security.md has the table): each case is one escape attempt
//! by tests/bundles/hostile.js, run in `container` mode (everything must be contained) and in
//! `none` mode (the expected column documents what `none` cannot stop). Where `none` contains a
//! case only by its Landlock/seccomp layer, the answer must also carry that layer's error (EPERM,
//! EACCES), so a case that Deno happened to refuse does not pass for one the kernel refused.
//! After every case a separate hello instance must still answer: the runner keeps serving
//! other bundles.
//!
//! Network cases talk only to services on 127.0.0.1 started here, and to the egress proxy,
//! whose resolver is a fixed map; cases that would leave the machine in `none` mode (a
//! metadata or private address) are not run there ("not exercised" in the table).

mod common;

use std::time::Duration;

use atrund_sandbox::InstanceSpec;
use common::*;

/// One outcome: did the bundle get out?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Contained,
    Escaped,
    /// Not run in this mode (it would leave loopback or disturb the test process).
    Skip,
}
use Out::*;

struct Case {
    name: &'static str,
    endpoint: &'static str,
    query: Vec<(&'static str, String)>,
    ffi: bool,
    /// Expected in container mode, in none mode.
    expect: (Out, Out),
    /// In none mode: text the answer must contain (the kernel layer's error).
    none_sign: Option<&'static str>,
}

impl Case {
    fn none_sign(mut self, s: &'static str) -> Self {
        self.none_sign = Some(s);
        self
    }
}

/// The answers of the kernel layer in none mode: seccomp or Landlock scope (EPERM), Landlock
/// file or TCP rule (EACCES; Deno names it PermissionDenied).
const EPERM: &str = r#""errno":1,"#;
const EACCES: &str = r#""errno":13"#;
const DENO_EACCES: &str = "PermissionDenied";

struct Ctx {
    secret: String,
    /// A host path next to the secret that no instance may create.
    pwned: String,
    port: u16,
    other_port: u16,
    other_pid: u32,
    /// Idle instances are frozen here (the cgroup freezer is usable and on).
    freezer: bool,
}

fn cases(c: &Ctx) -> Vec<Case> {
    let secret = c.secret.clone();
    let dotdot = format!("{}{}", "../".repeat(12), secret.trim_start_matches('/'));
    let url = |host: &str, port: u16| format!("http://{host}:{port}/");
    let case = |name, endpoint, query: Vec<(&'static str, String)>, ffi, expect| Case {
        name,
        endpoint,
        query,
        ffi,
        expect,
        none_sign: None,
    };
    vec![
        case(
            "read via ..",
            "read",
            vec![("path", dotdot)],
            false,
            (Contained, Contained),
        ),
        case(
            "read absolute path",
            "read",
            vec![("path", secret.clone())],
            false,
            (Contained, Contained),
        ),
        case(
            "read via symlink in data dir",
            "read",
            vec![("path", "in/link".into())],
            false,
            (Contained, Contained),
        )
        .none_sign(DENO_EACCES),
        case(
            "literal import of a host file",
            "literalImport",
            vec![],
            false,
            (Contained, Contained),
        ),
        case(
            "read /proc/1/environ",
            "read",
            vec![("path", "/proc/1/environ".into())],
            false,
            (Contained, Contained),
        ),
        case(
            "read the host env",
            "env",
            vec![],
            false,
            (Contained, Contained),
        ),
        case(
            "write outside the data dir",
            "write",
            vec![("path", "/tmp/atrund-hostile-pwned".into())],
            false,
            (Contained, Contained),
        ),
        case(
            "fetch a host not in net",
            "fetchUrl",
            vec![("url", url("127.0.0.1", c.other_port))],
            false,
            (Contained, Contained),
        ),
        case(
            "fetch host 127.0.0.1 service (in net)",
            "fetchUrl",
            vec![("url", url("127.0.0.1", c.port))],
            false,
            (Contained, Escaped),
        ),
        case(
            "fetch 169.254.169.254 (in net)",
            "fetchUrl",
            vec![("url", url("169.254.169.254", 80))],
            false,
            (Contained, Skip),
        ),
        case(
            "fetch a private address (in net)",
            "fetchUrl",
            vec![("url", url("private.test", 80))],
            false,
            (Contained, Skip),
        ),
        case(
            "fetch a name resolving to loopback (in net)",
            "fetchUrl",
            vec![("url", url("localhost", c.port))],
            false,
            (Contained, Escaped),
        ),
        case(
            "direct TCP to host 127.0.0.1 (in net)",
            "connect",
            vec![("host", "127.0.0.1".into()), ("port", c.port.to_string())],
            false,
            (Contained, Escaped),
        ),
        case(
            "listen on a port",
            "listen",
            vec![("port", "0".into())],
            false,
            (Contained, Contained),
        ),
        case(
            "spawn a process",
            "spawn",
            vec![],
            false,
            (Contained, Contained),
        ),
        case(
            "thread bomb (Workers)",
            "workers",
            vec![],
            false,
            (Contained, Contained),
        ),
        case("memory bomb", "hog", vec![], false, (Contained, Contained)),
        case("CPU spin", "spin", vec![], false, (Contained, Contained)),
        case(
            "fill /tmp",
            "fillTmp",
            vec![],
            false,
            (Contained, Contained),
        ),
        case(
            "answer with 1 GiB",
            "big",
            vec![],
            false,
            (Contained, Contained),
        ),
        case(
            "timers after the response",
            "timers",
            vec![],
            false,
            if c.freezer {
                (Contained, Contained)
            } else {
                (Escaped, Escaped)
            },
        ),
        case(
            "ptrace (FFI)",
            "osPtrace",
            vec![],
            true,
            (Contained, Contained),
        )
        .none_sign(EPERM),
        case(
            "unshare (FFI)",
            "osUnshare",
            vec![],
            true,
            (Contained, Contained),
        )
        .none_sign(EPERM),
        case(
            "mount (FFI)",
            "osMount",
            vec![],
            true,
            (Contained, Contained),
        )
        .none_sign(EPERM),
        case(
            "signal another instance (FFI)",
            "osKill",
            vec![("pid", c.other_pid.to_string())],
            true,
            (Contained, Contained),
        )
        .none_sign(EPERM),
        case(
            "read a host file (FFI)",
            "osRead",
            vec![("path", secret)],
            true,
            (Contained, Contained),
        )
        .none_sign(EACCES),
        case(
            "read the runner's /proc/<pid>/cmdline (FFI)",
            "osReadProc",
            vec![("path", format!("/proc/{}/cmdline", std::process::id()))],
            true,
            (Contained, Contained),
        )
        .none_sign(EACCES),
        case(
            "write outside the data dir (FFI)",
            "osWrite",
            vec![("path", c.pwned.clone())],
            true,
            (Contained, Contained),
        )
        .none_sign(EACCES),
        case(
            "direct TCP to a port not in net (FFI)",
            "osConnect",
            vec![
                ("host", "127.0.0.1".into()),
                ("port", c.other_port.to_string()),
            ],
            true,
            (Contained, Contained),
        )
        .none_sign(EACCES),
        case(
            "listen on a TCP port (FFI)",
            "osBind",
            vec![],
            true,
            (Contained, Contained),
        )
        .none_sign(EACCES),
    ]
}

/// What the answer says about escaping.
fn judge(case: &Case, ctx: &Ctx, res: &Result<serde_json::Value, String>) -> Out {
    let Ok(v) = res else {
        // A limit breach (the instance was killed) or a refused call.
        return Contained;
    };
    let leaked = v["leaked"].as_str().unwrap_or("");
    let escaped = match case.endpoint {
        "read" | "literalImport" | "osRead" => {
            leaked.contains("TOP-SECRET")
                || v["text"].as_str().is_some_and(|t| t.contains("TOP-SECRET"))
        }
        // The test binary's name is in its command line.
        "osReadProc" => v["text"].as_str().is_some_and(|t| t.contains("hostile")),
        "osWrite" => std::path::Path::new(&ctx.pwned).exists(),
        "env" => leaked.contains("PATH") || leaked.contains("HOME"),
        "write" => std::path::Path::new("/tmp/atrund-hostile-pwned").exists(),
        "fetchUrl" => leaked.starts_with("200"),
        "connect" => leaked == "connected",
        "listen" => leaked == "listening",
        "spawn" => leaked.contains("spawned"),
        "fillTmp" => leaked.contains("256 MiB"),
        "workers" => v["workers"].as_u64() == Some(400),
        "osPtrace" | "osUnshare" | "osKill" | "osConnect" | "osBind" => v["rc"] == 0,
        // ENOENT for the missing target: the mount itself would have been allowed.
        "osMount" => v["rc"] == 0 || v["errno"] == 2,
        "timers" | "big" | "hog" | "spin" => true,
        other => panic!("no judge for {other} ({})", ctx.port),
    };
    if escaped {
        Escaped
    } else {
        Contained
    }
}

/// Does the timer the bundle left running keep working while the instance is idle? Watched
/// through the counter file it writes, not by a call (a call thaws a frozen instance).
async fn timers_after_response(env: &Env, inst: &dyn atrund_sandbox::Instance, id: &str) -> Out {
    let file = env.root.join("data/out/ticks");
    if env.mgr.freeze_after_idle().is_some() {
        // Past the grace: wait until the freezer has done its work (bounded, not timed).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while env.mgr.instance_frozen(id) != Some(true) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = || std::fs::read_to_string(&file).expect("the timers endpoint writes out/ticks");
    let before = read();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = read();
    // The next call is answered (a frozen instance is thawed first), its counter where the file
    // left it or beyond.
    let t = call_json(inst, q("ticksSoFar", &[])).await.unwrap();
    assert!(
        t["ticks"].as_u64().unwrap() >= after.trim().parse::<u64>().unwrap_or(0),
        "{t} vs file {after}"
    );
    if before == after {
        Contained
    } else {
        Escaped
    }
}

async fn suite(mode: Mode) {
    let Some(env) = Env::new(if mode == Mode::None { "hn" } else { "hc" }, mode).await else {
        return;
    };
    let secret = secret_file(&env);
    let b = hostile(&env, &secret);
    let (port, _svc) = loopback_service().await;
    let (other_port, _svc2) = loopback_service().await;
    // data/in/link -> the secret: what a bundle could plant with its write permission.
    let data_in = env.root.join("data/in");
    std::fs::create_dir_all(&data_in).unwrap();
    std::os::unix::fs::symlink(&secret, data_in.join("link")).unwrap();
    // The timers case writes its counter here (none mode does not create write paths).
    std::fs::create_dir_all(env.root.join("data/out")).unwrap();
    let _ = std::fs::remove_file("/tmp/atrund-hostile-pwned");

    let hello_inst = env.warm(env.spec("bystander", &hello())).await;
    let pwned = secret.with_file_name("pwned");
    let ctx = Ctx {
        secret: secret.to_str().unwrap().to_string(),
        pwned: pwned.to_str().unwrap().to_string(),
        port,
        other_port,
        other_pid: hello_inst.stats().pid.unwrap(),
        freezer: env.mgr.freeze_after_idle().is_some(),
    };
    let spec = |i: usize, ffi: bool| -> InstanceSpec {
        let mut s = env.spec(&format!("h{i}"), &b);
        s.permissions.read = vec!["in".into()];
        s.permissions.write = vec!["out".into()];
        s.permissions.net = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "169.254.169.254:80".into(),
            "private.test:80".into(),
        ];
        s.permissions.ffi = ffi;
        s.memory_mib = 96;
        s.limits.pids = 48;
        s.limits.cpu_budget = Some(Duration::from_millis(500));
        s
    };
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (i, case) in cases(&ctx).iter().enumerate() {
        let expect = if mode == Mode::Container {
            case.expect.0
        } else {
            case.expect.1
        };
        if expect == Skip {
            table.push(format!("{:<45} not exercised", case.name));
            continue;
        }
        let inst = env.warm(spec(i, case.ffi)).await;
        let query: Vec<(&str, &str)> = case.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            call_json(&*inst, q(case.endpoint, &query)),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in 30 s".into()));
        let mut got = judge(case, &ctx, &res);
        if case.endpoint == "timers" {
            match &res {
                Ok(_) => got = timers_after_response(&env, &*inst, &format!("h{i}")).await,
                Err(e) => failures.push(format!("{}: the call failed: {e}", case.name)),
            }
        }
        let shown = match &res {
            Ok(v) => v.to_string().chars().take(120).collect::<String>(),
            Err(e) => e.clone(),
        };
        table.push(format!("{:<45} {got:?} ({shown})", case.name));
        if got != expect {
            failures.push(format!(
                "{}: expected {expect:?}, got {got:?}: {shown}",
                case.name
            ));
        }
        if let (Mode::None, Some(sign)) = (mode, case.none_sign) {
            if !res.as_ref().is_ok_and(|v| v.to_string().contains(sign)) {
                failures.push(format!(
                    "{}: not refused by the kernel layer (expected {sign}): {shown}",
                    case.name
                ));
            }
        }
        inst.shutdown().await;
        // The runner keeps serving other bundles.
        hello_answers(&*hello_inst).await;
    }
    let _ = std::fs::remove_file("/tmp/atrund-hostile-pwned");
    let _ = std::fs::remove_file(&pwned);
    hello_inst.shutdown().await;
    eprintln!("mode {mode:?}:\n  {}", table.join("\n  "));
    assert!(failures.is_empty(), "{mode:?}:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn hostile_bundles_in_container_mode() {
    suite(Mode::Container).await;
}

#[tokio::test]
async fn hostile_bundles_in_none_mode() {
    suite(Mode::None).await;
}
