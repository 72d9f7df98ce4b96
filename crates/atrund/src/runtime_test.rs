//! `at-rund runtime-test`: the runtime conformance kit (docs/runtimes.md). It runs a runtime's
//! kit bundle through the executor the configuration chooses (the same choice, limits and
//! egress proxy as `serve`), one case at a time, prints one line per case (`PASS` or `FAIL`, with
//! what came back) and fails when any case failed. A stated gap of the backend is a `GAP` line,
//! not a failure and not a pass either: a case the backend refuses to set up for a reason it
//! states (the `microvm` guest does not carry data paths), or an escape the case names as its
//! backend's known gap (a TCP listen inside a guest whose kernel has no Landlock network rules).
//! Each turns into a verdict by itself once the backend holds the case.
//!
//! The cases: the protocol (ready, input from the query and a JSON body, the rest path, status
//! and headers, a streamed body, `204` for nothing, unknown endpoints, methods and tasks, a thrown
//! error, the load failure of a bundle that throws while it loads), confinement (the one secret
//! readable and nothing else of the environment, no host file read or written, no process
//! spawned, no connection to loopback) and the limits (wall clock, CPU time, memory beyond the
//! runtime's heap, response size), each breach under its error name. Cases that break their
//! instance get one of their own.
//!
//! With generic sandboxes configured (`pool.generic_sandboxes`, `pool.generic_python_sandboxes`)
//! the kit runs through them as `serve` would, waiting before each start until they are ready,
//! and its last line says how many starts they served.
//!
//! Owns: the cases, their bundles (`runtime/conformance/`) and the verdicts. Must not: loosen
//! anything for the kit (it uses the executor as configured), or touch a serving runner's state
//! (its cgroups and dirs are its own).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use atrund_sandbox::{
    CallKind, CgroupManager, Executor, Grants, Instance, InstanceSpec, Invocation, ResourceLimits,
    RuntimeKind, Runtimes,
};
use http_body_util::BodyExt;

use crate::settings;

/// Deno's kit bundle.
const DENO_KIT: &str = include_str!("../../../runtime/conformance/deno.js");
/// Node's kit bundle: the same cases with node: built-ins.
const NODE_KIT: &str = include_str!("../../../runtime/conformance/node.js");
/// Python's kit bundle.
const PYTHON_KIT: &str = include_str!("../../../runtime/conformance/python.py");
/// A bundle that throws while it loads (plain JavaScript: every JavaScript runtime's).
const LOAD_FAILS: &str = include_str!("../../../runtime/conformance/load_fails.js");
/// Python's bundle that raises while it loads.
const PYTHON_LOAD_FAILS: &str = include_str!("../../../runtime/conformance/load_fails.py");
/// The secret the kit gives its instances, and its value.
const SECRET: (&str, &str) = ("KIT_SECRET", "kit-secret-value");
/// The longest a case may take, VM starts under emulation included.
const CASE_LIMIT: Duration = Duration::from_secs(180);

/// What a case calls.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// `GET` of an endpoint with this rest path and query (`/` or `/a?x=1`).
    Get(&'static str, &'static str),
    /// `POST` of an endpoint with a JSON body.
    PostJson(&'static str, &'static str),
}

/// What a case must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This status, and a body that contains this text.
    Answer(u16, &'static str),
    /// A refused attempt: `200` with JSON `{ "error": … }` and no `leaked`.
    Contained,
    /// The call fails with this sandbox error.
    Error(&'static str),
    /// The instance does not start (`StartFailed`).
    StartFails,
}

/// The instance a case runs in.
#[derive(Debug, Clone, Copy)]
enum RunsIn {
    /// The kit bundle's shared instance.
    Shared,
    /// One of its own, with the spec changed so.
    Own(fn(&mut InstanceSpec)),
    /// One of its own, of the bundle that fails to load.
    LoadFails,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    group: &'static str,
    name: &'static str,
    call: Call,
    expect: Expect,
    instance: RunsIn,
    /// A backend where this case's rule does not hold, and why that is stated rather than a
    /// failure: there an escape is a `GAP` line with the reason (any other outcome is judged).
    gap: Option<(&'static str, &'static str)>,
}

impl Case {
    fn gap_under(mut self, backend: &'static str, why: &'static str) -> Self {
        self.gap = Some((backend, why));
        self
    }
}

/// The cases for `runtime`: the shared ones, then the runtime's own.
fn cases(runtime: RuntimeKind) -> Vec<Case> {
    let mut all = shared_cases();
    match runtime {
        RuntimeKind::Deno => {}
        RuntimeKind::Node => all.extend(node_cases()),
        RuntimeKind::Python => all.extend(python_cases()),
    }
    all
}

/// Python's own: it enforces nothing itself (ctypes, subprocess and sockets are always there), so
/// each is the kernel layer's to refuse; a `PYTHON*` secret is refused at start.
fn python_cases() -> Vec<Case> {
    use Call::Get;
    use Expect::{Contained, StartFails};
    use RunsIn::{Own, Shared};
    let c = |name, call, expect, instance| Case {
        group: "python",
        name,
        call,
        expect,
        instance,
        gap: None,
    };
    vec![
        c(
            "ctypes open() of a host file",
            Get("ctypesOpen", "/"),
            Contained,
            Shared,
        ),
        // What the Deno hostile suite does through FFI, Python does with ctypes and os: the
        // kernel layer's process and network rules, each against the real interpreter.
        c(
            "no new namespace (unshare)",
            Get("unshare", "/"),
            Contained,
            Shared,
        ),
        c("no mount", Get("mount", "/"), Contained, Shared),
        c(
            "no ptrace of its parent",
            Get("ptrace", "/"),
            Contained,
            Shared,
        ),
        c(
            "the runner is not signalled",
            Get("signalRunner", "/?pid={runner}"),
            Contained,
            Shared,
        ),
        c(
            "the runner's command line is not read",
            Get("readProc", "/?pid={runner}"),
            Contained,
            Shared,
        ),
        c(
            "no TCP port is listened on",
            Get("listen", "/"),
            Contained,
            Shared,
        )
        .gap_under("microvm", LISTEN_IN_GUEST),
        c(
            "no TCP Fast Open to loopback",
            Get("fastOpen", "/"),
            Contained,
            Shared,
        ),
        c(
            "no vsock peer but the proxy's",
            Get("vsock", "/"),
            Contained,
            Shared,
        ),
        c(
            "no UDP datagram is sent",
            Get("udp", "/"),
            Contained,
            Shared,
        ),
        c(
            "no other process's environment",
            Get("procEnviron", "/"),
            Contained,
            Shared,
        ),
        c(
            "the interpreter run again is held too",
            Get("reexec", "/"),
            Contained,
            Shared,
        ),
        c(
            "a symlink in a granted dir leads nowhere",
            Get("symlinkOut", "/"),
            Contained,
            Own(|s| {
                s.permissions.read = vec!["in".into()];
                plant_link(&s.data_dir.join("in"), "/etc/passwd");
            }),
        ),
        c(
            "a PYTHONSTARTUP secret is refused",
            Get("echo", "/"),
            StartFails,
            Own(|s| s.env.push(("PYTHONSTARTUP".into(), "/etc/passwd".into()))),
        ),
    ]
}

/// Node's own holes (its permission model has no network rules and misses node:sqlite; a
/// `NODE_OPTIONS` variable would re-grant everything), each closed beneath Node.
fn node_cases() -> Vec<Case> {
    use Call::Get;
    use Expect::{Contained, StartFails};
    use RunsIn::{Own, Shared};
    let c = |name, call, expect, instance| Case {
        group: "node",
        name,
        call,
        expect,
        instance,
        gap: None,
    };
    vec![
        c(
            "node:sqlite outside the grants",
            Get("sqliteOutside", "/"),
            Contained,
            Shared,
        ),
        c(
            "no UDP datagram is sent",
            Get("udp", "/"),
            Contained,
            Shared,
        ),
        c(
            "no TCP to the proxy's port elsewhere",
            Get("proxyPortElsewhere", "/"),
            Contained,
            Shared,
        ),
        c(
            "no worker, WASI or inspector",
            Get("runtimeApis", "/"),
            Contained,
            Shared,
        ),
        c(
            "a symlink in a granted dir leads nowhere",
            Get("symlinkOut", "/"),
            Contained,
            Own(|s| {
                s.permissions.read = vec!["in".into()];
                plant_link(&s.data_dir.join("in"), "/etc/passwd");
            }),
        ),
        c(
            "no other process's environment",
            Get("procEnviron", "/"),
            Contained,
            Shared,
        ),
        c(
            "no host file imported",
            Get("importHost", "/"),
            Contained,
            Shared,
        ),
        c(
            "no TCP port is listened on",
            Get("listen", "/"),
            Contained,
            Shared,
        )
        .gap_under("microvm", LISTEN_IN_GUEST),
        c(
            "the runner is not signalled",
            Get("signalRunner", "/?pid={runner}"),
            Contained,
            Shared,
        ),
        c(
            "a NODE_OPTIONS secret is refused",
            Get("echo", "/"),
            StartFails,
            Own(|s| {
                s.env.push((
                    "NODE_OPTIONS".into(),
                    "--allow-fs-read=* --allow-child-process".into(),
                ))
            }),
        ),
    ]
}

/// Makes `dir/link` point at `target` before the instance starts (the case's own data dir).
/// A failure leaves no link, and the case then fails on a missing file, not silently.
fn plant_link(dir: &Path, target: &str) {
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|()| std::os::unix::fs::symlink(target, dir.join("link")))
    {
        eprintln!("runtime-test: cannot plant {}/link: {e}", dir.display());
    }
}

fn shared_cases() -> Vec<Case> {
    use Call::{Get, PostJson};
    use Expect::{Answer, Contained, Error, StartFails};
    use RunsIn::{LoadFails, Own, Shared};
    let c = |group, name, call, expect, instance| Case {
        group,
        name,
        call,
        expect,
        instance,
        gap: None,
    };
    vec![
        c(
            "protocol",
            "GET: the query as input",
            Get("echo", "/?x=1&x=2&y=3"),
            Answer(200, r#""input":{"x":["1","2"],"y":"3"}"#),
            Shared,
        ),
        c(
            "protocol",
            "POST: the JSON body as input",
            PostJson("echo", r#"{"a":1}"#),
            Answer(200, r#""input":{"a":1}"#),
            Shared,
        ),
        c(
            "protocol",
            "the rest path reaches the handler",
            Get("echo", "/a/b?q=1"),
            Answer(200, r#""rest":"/a/b""#),
            Shared,
        ),
        c(
            "protocol",
            "status and body pass through",
            Get("status", "/"),
            Answer(201, "created"),
            Shared,
        ),
        c(
            "protocol",
            "a streamed body arrives whole",
            Get("stream", "/"),
            Answer(200, "chunk-0chunk-1chunk-2"),
            Shared,
        ),
        c(
            "protocol",
            "nothing returned is 204",
            Get("nothing", "/"),
            Answer(204, ""),
            Shared,
        ),
        c(
            "protocol",
            "an unknown endpoint",
            Get("noSuchEndpoint", "/"),
            Error("EndpointNotFound"),
            Shared,
        ),
        c(
            "protocol",
            "a method the endpoint does not take",
            PostJson("onlyGet", "{}"),
            Error("MethodNotAllowed"),
            Shared,
        ),
        c(
            "protocol",
            "a task is not an endpoint",
            Get("aTask", "/"),
            Error("EndpointNotFound"),
            Shared,
        ),
        c(
            "protocol",
            "a thrown error",
            Get("throws", "/"),
            Error("BundleFailed"),
            Shared,
        ),
        c(
            "protocol",
            "the instance serves on after it",
            Get("echo", "/"),
            Answer(200, r#""endpoint":"echo""#),
            Shared,
        ),
        c(
            "protocol",
            "a bundle that throws while it loads",
            Get("echo", "/"),
            StartFails,
            LoadFails,
        ),
        c(
            "confinement",
            "its secret is readable",
            Get("secret", "/"),
            Answer(200, SECRET.1),
            Shared,
        ),
        c(
            "confinement",
            "no other variable is",
            Get("otherEnv", "/"),
            Contained,
            Shared,
        ),
        c(
            "confinement",
            "no host file is read",
            Get("readHost", "/"),
            Contained,
            Shared,
        ),
        c(
            "confinement",
            "no host file is written",
            Get("writeHost", "/"),
            Contained,
            Shared,
        ),
        c(
            "confinement",
            "no process is spawned",
            Get("spawn", "/"),
            Contained,
            Shared,
        ),
        c(
            "confinement",
            "no connection to loopback",
            Get("loopback", "/"),
            Contained,
            Shared,
        ),
        c(
            "limits",
            "the wall clock",
            Get("sleep", "/"),
            Error("TimedOut"),
            Own(|s| s.request_timeout = Duration::from_secs(2)),
        ),
        c(
            "limits",
            "CPU time",
            Get("spin", "/"),
            Error("CpuLimitExceeded"),
            Own(|s| {
                s.limits.cpu_budget = Some(Duration::from_millis(500));
                s.request_timeout = Duration::from_secs(60);
            }),
        ),
        c(
            "limits",
            "memory beyond the heap",
            Get("hog", "/"),
            Error("MemoryLimitExceeded"),
            Own(|s| {
                s.memory_mib = 64;
                s.request_timeout = Duration::from_secs(60);
            }),
        ),
        c(
            "limits",
            "the response size",
            Get("big", "/"),
            Error("ResponseTooLarge"),
            Own(|s| s.limits.max_response_bytes = 1024 * 1024),
        ),
    ]
}

/// Why a Python or Node bundle may listen on a TCP port inside a microVM guest
/// (docs/microvm.md).
const LISTEN_IN_GUEST: &str = "the guest kernel has no Landlock network rules (Linux before 6.7), \
     so a port opens, inside the instance's own VM, which has no network card";

/// What came back from one case.
#[derive(Debug)]
enum Outcome {
    Answer(u16, String),
    Error(String),
    StartFailed(String),
}

/// A case's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    /// A gap the backend states: it refused to set the case up (its instance needs data paths,
    /// which the `microvm` guest does not carry yet), or the case escaped where it names its
    /// backend's known gap.
    Gap,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Gap => "GAP ",
        }
    }
}

/// The verdict on `got` for `case` under the backend named `backend`, and what to show.
fn verdict(case: &Case, backend: &str, got: &Outcome) -> (Verdict, String) {
    let expect = case.expect;
    if let (Some((under, why)), Expect::Contained, Outcome::Answer(200, body)) =
        (case.gap, expect, got)
    {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if under == backend && v.get("leaked").is_some() {
            let shown: String = body.chars().take(40).collect();
            return (Verdict::Gap, format!("{shown}: {why}"));
        }
    }
    if let Outcome::StartFailed(why) = got {
        if expect != Expect::StartFails && why.contains(atrund_sandbox::MICROVM_NO_DATA_PATHS) {
            return (
                Verdict::Gap,
                "not run: the microvm guest does not carry data paths yet".into(),
            );
        }
    }
    match judge(expect, got) {
        (true, shown) => (Verdict::Pass, shown),
        (false, shown) => (Verdict::Fail, shown),
    }
}

/// Whether `got` meets `expect`, and what to show.
fn judge(expect: Expect, got: &Outcome) -> (bool, String) {
    let shown = |s: &str| s.chars().take(100).collect::<String>();
    match (expect, got) {
        (Expect::Answer(status, text), Outcome::Answer(s, body)) => (
            *s == status && body.contains(text),
            format!("{s} {}", shown(body)),
        ),
        (Expect::Contained, Outcome::Answer(s, body)) => {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let ok = *s == 200 && v.get("error").is_some() && v.get("leaked").is_none();
            (ok, format!("{s} {}", shown(body)))
        }
        (Expect::Error(code), Outcome::Error(got)) => (got == code, got.clone()),
        (Expect::StartFails, Outcome::StartFailed(why)) => {
            (true, format!("StartFailed: {}", shown(why)))
        }
        (_, Outcome::Answer(s, body)) => (false, format!("{s} {}", shown(body))),
        (_, Outcome::Error(code)) => (false, code.clone()),
        (_, Outcome::StartFailed(why)) => (false, format!("StartFailed: {}", shown(why))),
    }
}

/// Where the kit's files and instances live.
struct Dirs {
    runtime: RuntimeKind,
    root: PathBuf,
    kit: PathBuf,
    load_fails: PathBuf,
}

impl Dirs {
    fn spec(&self, id: &str, bundle: &Path, start_timeout: Duration) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            runtime: self.runtime,
            bundle_file: bundle.to_path_buf(),
            work_dir: self.root.join("w").join(id),
            data_dir: self.root.join("data").join(id),
            deno_dir: self.root.join("deno").join(id),
            permissions: Grants::default(),
            env: vec![(SECRET.0.into(), SECRET.1.into())],
            memory_mib: 128,
            request_timeout: Duration::from_secs(10),
            start_timeout,
            limits: ResourceLimits::default(),
            output: None,
            runner_calls: None,
        }
    }
}

async fn call(inst: &dyn Instance, c: Call) -> Outcome {
    let (endpoint, req) = match c {
        Call::Get(e, uri) => (
            e,
            // `{runner}`: this process, the runner an instance must not reach.
            http::Request::get(uri.replace("{runner}", &std::process::id().to_string()))
                .body(atrund_sandbox::empty_body()),
        ),
        Call::PostJson(e, body) => (
            e,
            http::Request::post("/")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(atrund_sandbox::full_body(body)),
        ),
    };
    let Ok(request) = req else {
        return Outcome::Error("the kit built a bad request".into());
    };
    let inv = Invocation {
        kind: CallKind::Endpoint,
        endpoint: endpoint.into(),
        request,
        timeout: None,
    };
    match inst.execute(inv).await {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.into_body().collect().await {
                Ok(b) => {
                    Outcome::Answer(status, String::from_utf8_lossy(&b.to_bytes()).into_owned())
                }
                Err(e) => match e.downcast_ref::<atrund_sandbox::SandboxError>() {
                    Some(se) => Outcome::Error(se.code().into()),
                    None => Outcome::Error(format!("the body broke: {e}")),
                },
            }
        }
        Err(e) => Outcome::Error(e.code().into()),
    }
}

/// Runs the kit for `runtime` and prints its table.
pub(crate) async fn run(config_path: Option<&Path>, runtime: &str) -> Result<()> {
    let Some(runtime) = RuntimeKind::parse(runtime) else {
        anyhow::bail!(
            "runtime '{runtime}' has no kit in this version; use one of: {} (docs/runtimes.md)",
            RuntimeKind::ALL.map(RuntimeKind::as_str).join(", ")
        );
    };
    let config = settings::load_config(config_path)?;
    let runtimes = settings::runtimes(&config).await?;
    if !runtimes.offered().contains(&runtime) {
        anyhow::bail!(
            "runtime {runtime} is not offered by this configuration; set node.path (ATRUND_NODE_PATH) to a Node 24 or newer binary, or python.path (ATRUND_PYTHON_PATH) to a Python 3.11 or newer interpreter"
        );
    }
    let requested = settings::requested_isolation(&config)?;
    let cgroups = Arc::new(CgroupManager::start(&format!(
        "runtime-test-{}",
        std::process::id()
    )));
    let tmp = std::env::temp_dir().join(format!("at-rund-runtime-test-{}", std::process::id()));
    let result = kit(&config, requested, runtime, runtimes, cgroups.clone(), &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = cgroups.sweep();
    let _ = cgroups.remove_parents();
    let Table {
        rows,
        failed,
        gaps,
        generic,
    } = result?;
    for r in &rows {
        println!("{r}");
    }
    if let Some(g) = generic {
        println!("{g}");
    }
    if failed > 0 {
        anyhow::bail!("runtime-test: {failed} of {} cases failed", rows.len());
    }
    if gaps > 0 {
        eprintln!(
            "runtime-test: {} cases passed; {gaps} are gaps this backend states (the GAP lines)",
            rows.len() - gaps
        );
    } else {
        eprintln!("runtime-test: all {} cases passed", rows.len());
    }
    Ok(())
}

async fn kit(
    config: &atrund_config::Config,
    requested: atrund_sandbox::Requested,
    runtime: RuntimeKind,
    runtimes: Runtimes,
    cgroups: Arc<CgroupManager>,
    tmp: &Path,
) -> Result<Table> {
    use std::os::unix::fs::PermissionsExt;
    let group = settings::instances_group(config);
    std::fs::create_dir_all(tmp.join("kit"))
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let choice = settings::probe_choice(config, requested, runtimes, cgroups, tmp)?;
    for d in ["w", "data", "deno"] {
        std::fs::create_dir_all(tmp.join(d))?;
        atrund_sandbox::runner_dir_mode(&tmp.join(d), group)?;
    }
    atrund_sandbox::runner_dir_mode(tmp, group)?;
    // The bundles are public: whatever uid the instances run as reads them.
    std::fs::set_permissions(tmp.join("kit"), std::fs::Permissions::from_mode(0o755))?;
    let dirs = Dirs {
        runtime,
        root: tmp.to_path_buf(),
        kit: tmp.join("kit/kit.js"),
        load_fails: tmp.join("kit/load_fails.js"),
    };
    let (kit, load_fails) = match runtime {
        RuntimeKind::Deno => (DENO_KIT, LOAD_FAILS),
        RuntimeKind::Node => (NODE_KIT, LOAD_FAILS),
        RuntimeKind::Python => (PYTHON_KIT, PYTHON_LOAD_FAILS),
    };
    for (path, text) in [(&dirs.kit, kit), (&dirs.load_fails, load_fails)] {
        std::fs::write(path, text)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    let chosen = atrund_sandbox::choose_executor(choice).await?;
    // As `serve` runs it: with the generic sandboxes in front when they are configured, so the
    // kit's instances come from specialised sandboxes (each start waits until they are ready).
    let exec = settings::generic_pool_in(config, chosen.executor, chosen.container, tmp.join("w"));
    if runtime == RuntimeKind::Python && exec.name() == "none" && !config.python.allow_none {
        anyhow::bail!(
            "runtime python is not run under isolation = \"none\" unless python.allow_none = true (ATRUND_PYTHON_ALLOW_NONE): Python enforces no permission itself (docs/runtimes.md)"
        );
    }
    println!(
        "runtime {runtime}, isolation {} ({})",
        exec.name(),
        chosen.isolation.how
    );
    let start_timeout = Duration::from_millis(config.pool.start_timeout_ms);
    generic_ready(&*exec).await;
    let shared = exec
        .warm(dirs.spec("kit-shared", &dirs.kit, start_timeout))
        .await;
    let mut rows = Vec::new();
    let (mut failed, mut gaps) = (0, 0);
    for (i, case) in cases(runtime).into_iter().enumerate() {
        let outcome = tokio::time::timeout(
            CASE_LIMIT,
            run_case(&*exec, &dirs, &shared, case, i, start_timeout),
        )
        .await
        .unwrap_or_else(|_| {
            Outcome::Error(format!("no outcome within {} s", CASE_LIMIT.as_secs()))
        });
        let (v, shown) = verdict(&case, exec.name(), &outcome);
        match v {
            Verdict::Pass => {}
            Verdict::Fail => failed += 1,
            Verdict::Gap => gaps += 1,
        }
        rows.push(format!(
            "{}  {:<11}  {:<40}  {shown}",
            v.word(),
            case.group,
            case.name
        ));
    }
    if let Ok(inst) = shared {
        inst.shutdown().await;
    }
    let mut generic = None;
    if let Some(g) = exec.generic_pool() {
        let fallbacks: Vec<String> = g
            .fallbacks
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        generic = Some(format!(
            "generic sandboxes: {} taken, {} failed to specialise, fallbacks: {}",
            g.taken,
            g.specialise_failures,
            if fallbacks.is_empty() {
                "none".to_string()
            } else {
                fallbacks.join(", ")
            }
        ));
    }
    Ok(Table {
        rows,
        failed,
        gaps,
        generic,
    })
}

/// The kit's printed result.
struct Table {
    /// One line per case.
    rows: Vec<String>,
    failed: usize,
    gaps: usize,
    /// The generic sandboxes' line, when they served the kit.
    generic: Option<String>,
}

/// With generic sandboxes in front, waits (10 s at most) until all are ready, so a start is
/// served by one rather than the normal way for want of a ready one.
async fn generic_ready(exec: &dyn Executor) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(g) = exec.generic_pool() {
        if (g.ready == g.size && g.starting == 0) || std::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_case(
    exec: &dyn Executor,
    dirs: &Dirs,
    shared: &Result<Arc<dyn Instance>, atrund_sandbox::SandboxError>,
    case: Case,
    i: usize,
    start_timeout: Duration,
) -> Outcome {
    let own = |bundle: &Path| dirs.spec(&format!("kit-{i}"), bundle, start_timeout);
    let spec = match case.instance {
        RunsIn::Shared => {
            return match shared {
                Ok(inst) => call(&**inst, case.call).await,
                Err(e) => Outcome::StartFailed(e.to_string()),
            }
        }
        RunsIn::Own(tweak) => {
            let mut s = own(&dirs.kit);
            tweak(&mut s);
            s
        }
        RunsIn::LoadFails => own(&dirs.load_fails),
    };
    generic_ready(exec).await;
    match exec.warm(spec).await {
        Ok(inst) => {
            let out = call(&*inst, case.call).await;
            inst.shutdown().await;
            out
        }
        Err(e) => Outcome::StartFailed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdicts_fail_what_does_not_match() {
        let answer = |s: u16, b: &str| Outcome::Answer(s, b.into());
        assert!(judge(Expect::Answer(200, "hi"), &answer(200, "oh hi")).0);
        assert!(!judge(Expect::Answer(200, "hi"), &answer(201, "oh hi")).0);
        assert!(!judge(Expect::Answer(200, "hi"), &answer(200, "bye")).0);
        assert!(judge(Expect::Contained, &answer(200, r#"{"error":"NotCapable"}"#)).0);
        // An escape is a failure, whatever else the answer says.
        assert!(
            !judge(
                Expect::Contained,
                &answer(200, r#"{"error":"x","leaked":"root:x"}"#)
            )
            .0
        );
        assert!(!judge(Expect::Contained, &answer(200, r#"{"leaked":"root:x"}"#)).0);
        assert!(!judge(Expect::Contained, &answer(500, r#"{"error":"x"}"#)).0);
        assert!(
            judge(
                Expect::Error("TimedOut"),
                &Outcome::Error("TimedOut".into())
            )
            .0
        );
        assert!(
            !judge(
                Expect::Error("TimedOut"),
                &Outcome::Error("BundleCrashed".into())
            )
            .0
        );
        assert!(!judge(Expect::Error("TimedOut"), &answer(200, "woke")).0);
        assert!(judge(Expect::StartFails, &Outcome::StartFailed("x".into())).0);
        assert!(!judge(Expect::StartFails, &answer(200, "{}")).0);
        assert!(!judge(Expect::Answer(200, ""), &Outcome::StartFailed("x".into())).0);
        // A start refused for the microVM's stated gap is neither a pass nor a failure, but a
        // case that expects a failed start still passes on it, and any other failed start fails.
        let case = |expect| Case {
            group: "g",
            name: "n",
            call: Call::Get("e", "/"),
            expect,
            instance: RunsIn::Shared,
            gap: None,
        };
        let gap = Outcome::StartFailed(format!(
            "{} (manifest …)",
            atrund_sandbox::MICROVM_NO_DATA_PATHS
        ));
        assert_eq!(
            verdict(&case(Expect::Contained), "microvm", &gap).0,
            Verdict::Gap
        );
        assert_eq!(
            verdict(&case(Expect::StartFails), "microvm", &gap).0,
            Verdict::Pass
        );
        assert_eq!(
            verdict(
                &case(Expect::Contained),
                "none",
                &Outcome::StartFailed("x".into())
            )
            .0,
            Verdict::Fail
        );
        assert_eq!(
            verdict(
                &case(Expect::Contained),
                "none",
                &answer(200, r#"{"error":"x"}"#)
            )
            .0,
            Verdict::Pass
        );
        // A stated gap covers an escape under its backend only; elsewhere the escape fails, and
        // under it any other wrong outcome still fails.
        let listen = case(Expect::Contained).gap_under("microvm", "no Landlock net rules");
        let escaped = answer(200, r#"{"leaked":"listening on 4000"}"#);
        let (v, shown) = verdict(&listen, "microvm", &escaped);
        assert_eq!(v, Verdict::Gap);
        assert!(shown.contains("no Landlock net rules"), "{shown}");
        assert_eq!(verdict(&listen, "container", &escaped).0, Verdict::Fail);
        assert_eq!(
            verdict(&case(Expect::Contained), "microvm", &escaped).0,
            Verdict::Fail
        );
        assert_eq!(
            verdict(&listen, "microvm", &answer(500, "{}")).0,
            Verdict::Fail
        );
        assert_eq!(
            verdict(&listen, "microvm", &answer(200, r#"{"error":"errno 13"}"#)).0,
            Verdict::Pass
        );
    }

    #[test]
    fn every_case_names_an_endpoint_of_the_kit_bundle() {
        for (runtime, kit) in [
            (RuntimeKind::Deno, DENO_KIT),
            (RuntimeKind::Node, NODE_KIT),
            (RuntimeKind::Python, PYTHON_KIT),
        ] {
            for c in cases(runtime) {
                let endpoint = match c.call {
                    Call::Get(e, _) | Call::PostJson(e, _) => e,
                };
                if endpoint == "noSuchEndpoint" {
                    assert!(!kit.contains("noSuchEndpoint"));
                    continue;
                }
                let declared = match runtime {
                    RuntimeKind::Python => format!("\n{endpoint} = "),
                    _ => format!("export const {endpoint} "),
                };
                assert!(kit.contains(&declared), "{runtime} {}: {endpoint}", c.name);
            }
        }
        let shared = cases(RuntimeKind::Deno).len();
        assert_eq!(cases(RuntimeKind::Node).len(), shared + 10);
        assert_eq!(cases(RuntimeKind::Python).len(), shared + 14);
    }
}
