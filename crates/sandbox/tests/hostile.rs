//! The hostile-bundle suite (docs/security.md has the table): each case is one escape attempt
//! by tests/bundles/hostile.js, run in `container` mode (everything must be contained) and in
//! `none` mode (the expected column documents what `none` cannot stop). Where `none` contains a
//! case only by its Landlock/seccomp layer, the answer must also carry that layer's error (EPERM,
//! EACCES), so a case that Deno happened to refuse does not pass for one the kernel refused.
//! After every case a separate hello instance must still answer: the runner keeps serving
//! other bundles.
//!
//! Network cases: in both modes fetch goes through the egress proxy (fixed-map resolver; its
//! connector connects on this host only and records every attempt), and the kernel lets the
//! instance connect to the proxy only. The services a manifest lists are a canary on 0.0.0.0
//! (reached via 127.0.0.1, `localhost` and the host's own address) and a listening Unix
//! socket; each must see zero connections, the proxy must not even try the metadata or private
//! address, and the bundle must see the proxy's refusal (`EgressAddressBlocked`) or the
//! kernel's (`PermissionDenied`, EACCES) rather than a mere failure.

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
    /// In both modes: text the answer must contain (the egress proxy's refusal).
    sign: Option<&'static str>,
}

impl Case {
    fn none_sign(mut self, s: &'static str) -> Self {
        self.none_sign = Some(s);
        self
    }

    fn sign(mut self, s: &'static str) -> Self {
        self.sign = Some(s);
        self
    }
}

/// The egress proxy's answer to a listed destination in a refused range (docs/egress.md).
const BLOCKED: &str = "[EgressAddressBlocked]";

/// The answers of the kernel layer in none mode: seccomp or Landlock scope (EPERM), Landlock
/// file or TCP rule (EACCES; Deno names it PermissionDenied).
const EPERM: &str = r#""errno":1,"#;
const EACCES: &str = r#""errno":13"#;
const DENO_EACCES: &str = "PermissionDenied";

struct Ctx {
    secret: String,
    /// A host path next to the secret that no instance may create.
    pwned: String,
    /// A canary on 0.0.0.0 that the manifest lists (as 127.0.0.1, localhost, the host's own
    /// address): nothing may reach it.
    port: u16,
    other_port: u16,
    /// This host's own non-loopback address, if it has one.
    host_ip: Option<std::net::Ipv4Addr>,
    /// A listening Unix socket outside the instance's dirs, root's, mode 0755 (as a container
    /// engine's would be: only its owner or group may connect).
    unix_socket: String,
    /// The same, but mode 0666 in a dir anyone may pass (as D-Bus's system bus is).
    open_unix_socket: String,
    /// The runner is root, so `none` instances run as another uid (`sandbox.run_as_uid`).
    root: bool,
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
        sign: None,
    };
    // Cases about the host's own address are not run when it has none.
    let own = |out: Out| if c.host_ip.is_some() { out } else { Skip };
    let host_ip = c.host_ip.map(|a| a.to_string()).unwrap_or_default();
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
            (Contained, Contained),
        )
        .sign(BLOCKED),
        case(
            "fetch 169.254.169.254 (in net)",
            "fetchUrl",
            vec![("url", url("169.254.169.254", 80))],
            false,
            (Contained, Contained),
        )
        .sign(BLOCKED),
        case(
            "fetch a name resolving to a private address (in net)",
            "fetchUrl",
            vec![("url", url("private.test", 80))],
            false,
            (Contained, Contained),
        )
        .sign(BLOCKED),
        case(
            "fetch a private address literal (in net)",
            "fetchUrl",
            vec![("url", url("192.168.77.1", 80))],
            false,
            (Contained, Contained),
        )
        .sign(BLOCKED),
        case(
            "fetch a name resolving to loopback (in net)",
            "fetchUrl",
            vec![("url", url("localhost", c.port))],
            false,
            (Contained, Contained),
        )
        .sign(BLOCKED),
        case(
            "fetch the host's own address (in net)",
            "fetchUrl",
            vec![("url", url(&host_ip, c.port))],
            false,
            (own(Contained), own(Contained)),
        )
        .sign(BLOCKED),
        case(
            "direct TCP to host 127.0.0.1 (in net)",
            "connect",
            vec![("host", "127.0.0.1".into()), ("port", c.port.to_string())],
            false,
            (Contained, Contained),
        )
        .none_sign(DENO_EACCES),
        case(
            "direct TCP to the host's own address (in net)",
            "connect",
            vec![("host", host_ip.clone()), ("port", c.port.to_string())],
            false,
            (own(Contained), own(Contained)),
        )
        .none_sign(DENO_EACCES),
        case(
            "direct TCP to 169.254.169.254:80 (in net)",
            "connect",
            vec![("host", "169.254.169.254".into()), ("port", "80".into())],
            false,
            (Contained, Contained),
        )
        .none_sign(DENO_EACCES),
        case(
            "connect to a named Unix socket",
            "unixConnect",
            vec![("path", c.unix_socket.clone())],
            false,
            (Contained, Contained),
        ),
        // Landlock (ABI 7, Linux 6.18) has no rule for connecting to a named socket, and
        // seccomp cannot see the address: with FFI, `none` reaches any socket its uid may write.
        // A root runner's instances run as another uid, which root's own sockets refuse (DAC);
        // a world-writable one stays open (docs/security.md).
        case(
            "connect to a named Unix socket (FFI)",
            "osUnixConnect",
            vec![("path", c.unix_socket.clone())],
            true,
            (Contained, if c.root { Contained } else { Escaped }),
        ),
        case(
            "connect to a world-writable named Unix socket (FFI)",
            "osUnixConnect",
            vec![("path", c.open_unix_socket.clone())],
            true,
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
            "direct TCP to host 127.0.0.1 (in net, FFI)",
            "osConnect",
            vec![("host", "127.0.0.1".into()), ("port", c.port.to_string())],
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
        "connect" | "unixConnect" => leaked == "connected",
        "osUnixConnect" => v["rc"] == 0,
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

/// A listening Unix socket outside every instance's dirs (as D-Bus or a container engine's
/// would be) that counts the connections it accepts.
struct UnixCanary {
    path: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl UnixCanary {
    fn bind(path: &std::path::Path) -> Self {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(c);
            }
        });
        Self {
            path: path.to_str().unwrap().to_string(),
            accepted,
        }
    }

    fn count(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn suite(mode: Mode) {
    let Some(env) = Env::new(if mode == Mode::None { "hn" } else { "hc" }, mode).await else {
        return;
    };
    let secret = secret_file(&env);
    let b = hostile(&env, &secret);
    // On 0.0.0.0: reached through 127.0.0.1, localhost and the host's own address alike.
    let canary = atrund_testnet::Canary::bind("0.0.0.0:0").unwrap();
    let port = canary.port;
    let (other_port, _svc2) = loopback_service().await;
    let host_ip = atrund_testnet::host_address();
    let unix = UnixCanary::bind(&env.root.join("outside/engine.sock"));
    // In a dir of its own under /tmp that anyone may pass, mode 0666.
    let open_dir = tempfile::Builder::new()
        .prefix("atrund-hostile-bus")
        .tempdir()
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let open_unix = UnixCanary::bind(&open_dir.path().join("bus.sock"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_unix.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid() == 0
    };
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
        host_ip,
        unix_socket: unix.path.clone(),
        open_unix_socket: open_unix.path.clone(),
        root,
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
            "192.168.77.1:80".into(),
        ];
        if let Some(ip) = host_ip {
            s.permissions.net.push(format!("{ip}:{port}"));
        }
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
        let counts = || (canary.count(), unix.count(), open_unix.count());
        let before = counts();
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            call_json(&*inst, q(case.endpoint, &query)),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in 30 s".into()));
        let mut got = judge(case, &ctx, &res);
        // Whatever the bundle was told: a connection that arrived is an escape.
        if counts() != before {
            got = Escaped;
        }
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
        if let Some(sign) = case.sign {
            if !res.as_ref().is_ok_and(|v| v.to_string().contains(sign)) {
                failures.push(format!(
                    "{}: not refused by the egress proxy (expected {sign}): {shown}",
                    case.name
                ));
            }
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
    // The proxy never even tried an address off this host (the metadata, private and the
    // host's own address are refused before any connect).
    let tried = env.upstream.attempts();
    if !tried.is_empty() {
        failures.push(format!("the egress proxy tried to connect to {tried:?}"));
    }
    let denied = env.proxy.stats().denied;
    for reason in ["loopback", "cloud_metadata", "private"] {
        if !denied.contains_key(reason) {
            failures.push(format!(
                "no egress refusal for reason {reason} (the requests bypassed the proxy?): {denied:?}"
            ));
        }
    }
    if canary.count() != 0 {
        failures.push(format!("the canary saw {} connections", canary.count()));
    }
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

/// docs/security.md's hostile table is this suite: every case is a row (first cell = the case's
/// name) whose container and none cells say what the suite asserts ("contained…",
/// "**not contained**", "not exercised…"), and a row without a case says "not tested".
#[test]
fn security_md_lists_every_case_as_the_suite_expects() {
    let doc = std::fs::read_to_string(repo().join("docs/security.md")).unwrap();
    let section = doc
        .split("### Hostile bundles: case × mode")
        .nth(1)
        .expect("docs/security.md has the hostile table section");
    let rows: Vec<Vec<String>> = section
        .lines()
        .skip_while(|l| !l.starts_with("| case |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 20, "table not found: {rows:?}");
    let outcome = |cell: &str| {
        if cell.starts_with("contained") {
            Contained
        } else if cell.starts_with("**not contained**") {
            Escaped
        } else if cell.contains("not exercised") {
            Skip
        } else {
            panic!("cell '{cell}' says neither contained, **not contained** nor not exercised")
        }
    };
    // The conditional cases as on this kind of machine: a freezer, and a host address.
    let ctx = Ctx {
        secret: "/s".into(),
        pwned: "/p".into(),
        port: 1,
        other_port: 2,
        other_pid: 3,
        freezer: true,
        host_ip: Some(std::net::Ipv4Addr::new(192, 0, 2, 2)),
        unix_socket: "/u".into(),
        open_unix_socket: "/o".into(),
        root: true,
    };
    let cases = cases(&ctx);
    let mut problems = Vec::new();
    for case in &cases {
        match rows.iter().find(|r| r[0] == case.name) {
            None => problems.push(format!("no row named '{}'", case.name)),
            Some(r) => {
                let doc = (outcome(&r[1]), outcome(&r[2]));
                if doc != case.expect {
                    problems.push(format!(
                        "'{}': the table says {doc:?}, the suite expects {:?}",
                        case.name, case.expect
                    ));
                }
            }
        }
    }
    for r in &rows {
        // A row that is no case of this suite says so, or names the test that covers it.
        let elsewhere = r[3].contains("not tested") || r[3].contains("crates/sandbox/tests/");
        if !cases.iter().any(|c| c.name == r[0]) && !elsewhere {
            problems.push(format!("row '{}' is not a case of the suite", r[0]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
