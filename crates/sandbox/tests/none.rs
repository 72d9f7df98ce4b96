//! The `none` backend against a real Deno: examples/hello, binary and streamed bodies, failures,
//! permission escapes, timeouts and load errors. Needs Deno 2.9.6 (ATRUND_TEST_DENO or the repo's
//! tools/deno); skips with a message when it is missing, and fails instead when CI=true.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrund_sandbox::{
    DenoBinary, Executor, Instance, InstanceSpec, Invocation, NoneExecutor, SandboxError,
};
use http_body_util::BodyExt;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deno() -> Option<DenoBinary> {
    let path = std::env::var_os("ATRUND_TEST_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
    match DenoBinary::locate(Some(&path)) {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Deno is required in CI: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: Deno not available ({e}); set ATRUND_TEST_DENO");
            None
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    exec: NoneExecutor,
}

impl Env {
    fn new() -> Option<Self> {
        let exec = NoneExecutor::new(deno()?);
        // Short path: the socket path must fit in sun_path.
        let tmp = tempfile::Builder::new()
            .prefix("sbx")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        Some(Self {
            _tmp: tmp,
            root,
            exec,
        })
    }

    fn spec(&self, id: &str, bundle: &Path) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            runtime: atrund_sandbox::RuntimeKind::Deno,
            bundle_file: bundle.to_path_buf(),
            work_dir: self.root.join("w").join(id),
            data_dir: self.root.join("data"),
            deno_dir: self.root.join("deno"),
            permissions: Default::default(),
            env: vec![],
            memory_mib: 128,
            request_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            limits: Default::default(),
            output: None,
            runner_calls: None,
        }
    }

    async fn warm(&self, id: &str, bundle: &Path) -> Arc<dyn Instance> {
        self.exec.warm(self.spec(id, bundle)).await.unwrap()
    }
}

fn bundle(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bundles")
        .join(name)
        .canonicalize()
        .unwrap()
}

fn hello() -> PathBuf {
    repo()
        .join("examples/hello/main.js")
        .canonicalize()
        .unwrap()
}

fn call(endpoint: &str, method: &str, uri: &str, json: Option<&str>) -> Invocation {
    let mut b = http::Request::builder().method(method).uri(uri);
    if json.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = json.map(|j| atrund_sandbox::full_body(j.to_string()));
    Invocation {
        kind: atrund_sandbox::CallKind::Endpoint,
        endpoint: endpoint.into(),
        request: b
            .body(body.unwrap_or_else(atrund_sandbox::empty_body))
            .unwrap(),
        timeout: None,
    }
}

async fn body_bytes(res: http::Response<atrund_sandbox::Body>) -> Vec<u8> {
    res.into_body().collect().await.unwrap().to_bytes().to_vec()
}

async fn json(inst: &dyn Instance, c: Invocation) -> serde_json::Value {
    let res = inst.execute(c).await.unwrap();
    assert_eq!(res.status(), 200);
    serde_json::from_slice(&body_bytes(res).await).unwrap()
}

#[tokio::test]
async fn hello_greet_and_shout() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("hello", &hello()).await;
    let v = json(&*inst, call("greet", "GET", "/?name=Ada", None)).await;
    assert_eq!(v, serde_json::json!({"message": "Hello, Ada!"}));
    let v = json(
        &*inst,
        call("shout", "POST", "/", Some(r#"{"text":"hi there"}"#)),
    )
    .await;
    assert_eq!(v, serde_json::json!({"text": "HI THERE", "length": 8}));
    // Method mismatch is its own error.
    let e = inst
        .execute(call("greet", "POST", "/", Some("{}")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "MethodNotAllowed");
    let e = inst
        .execute(call("nope", "GET", "/", None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SandboxError::EndpointNotFound(ref n) if n == "nope"),
        "{e:?}"
    );
    // Concurrent calls on one instance.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let inst = inst.clone();
        set.spawn(async move {
            let v = json(&*inst, call("greet", "GET", &format!("/?name=n{i}"), None)).await;
            assert_eq!(v["message"], format!("Hello, n{i}!"));
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let s = inst.stats();
    assert_eq!((s.served, s.in_flight), (24, 0));
    assert!(s.pid.is_some());
    let work = env.root.join("w/hello");
    assert!(work.exists());
    inst.shutdown().await;
    assert!(!inst.is_alive());
    assert!(!work.exists(), "work dir must be removed on shutdown");
}

/// A request body streamed in while the answer streams out (the shim client keeps sending the
/// body after the response head), then a call with a known length on the same instance.
#[tokio::test]
async fn a_streamed_request_body_echoes_while_it_is_sent() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("echo", &bundle("bytes.js")).await;
    type Frame = Result<http_body::Frame<bytes::Bytes>, atrund_sandbox::BodyError>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(2);
    let body =
        http_body_util::StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/octet-stream")
        .body(atrund_sandbox::boxed_body(body))
        .unwrap();
    tx.send(Ok(http_body::Frame::data("ping1;".into())))
        .await
        .unwrap();
    let invocation = Invocation {
        kind: atrund_sandbox::CallKind::Endpoint,
        endpoint: "pipe".into(),
        request: req,
        timeout: Some(Duration::from_secs(20)),
    };
    let res = inst.execute(invocation).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut out = res.into_body();
    let mut got = Vec::new();
    for next in ["ping2;", "ping3;"] {
        // The answer so far arrives while the request body is still open.
        let want = got.len() + 6;
        while got.len() < want {
            let f = out.frame().await.expect("a frame").unwrap();
            got.extend_from_slice(&f.into_data().unwrap());
        }
        tx.send(Ok(http_body::Frame::data(next.into())))
            .await
            .unwrap();
    }
    drop(tx);
    while let Some(f) = out.frame().await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), "ping1;ping2;ping3;");
    let mut known = call("pipe", "POST", "/", None);
    *known.request.body_mut() = atrund_sandbox::full_body("known length");
    known
        .request
        .headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    let res = inst.execute(known).await.unwrap();
    assert_eq!(body_bytes(res).await, b"known length");
}

#[tokio::test]
async fn binary_streams_errors_and_input() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("bytes", &bundle("bytes.js")).await;

    let res = inst.execute(call("bytes", "GET", "/", None)).await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let expected: Vec<u8> = (0..=255u8).collect();
    assert_eq!(body_bytes(res).await, expected);

    let res = inst
        .execute(call("stream", "GET", "/", None))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-kind"], "stream");
    assert!(
        res.headers().get("x-atrund-error").is_none(),
        "a bundle must not fake shim errors"
    );
    let mut body = res.into_body();
    let mut frames = 0;
    let mut all = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            frames += 1;
            all.extend_from_slice(&d);
        }
    }
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "chunk0;chunk1;chunk2;chunk3;chunk4;"
    );
    assert!(frames >= 2, "response was buffered into {frames} frame(s)");

    let e = inst
        .execute(call("boom", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleFailed");
    assert!(!e.to_string().contains("/etc/shadow"), "{e}");
    assert!(inst.is_alive());
    // A rejected promise and a result JSON cannot encode fail the same way as a throw.
    for endpoint in ["asyncBoom", "cyclic"] {
        let e = inst
            .execute(call(endpoint, "GET", "/", None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "BundleFailed", "{endpoint}");
        assert!(e.to_string().contains("threw TypeError"), "{endpoint}: {e}");
        assert!(!e.to_string().contains("/etc/shadow"), "{endpoint}: {e}");
    }
    let res = inst
        .execute(call("nothing", "GET", "/", None))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(body_bytes(res).await.is_empty());
    // Still serves after the throw.
    let v = json(&*inst, call("echo", "GET", "/a/b?x=1&x=2&y=3", None)).await;
    assert_eq!(v["input"], serde_json::json!({"x": ["1", "2"], "y": "3"}));
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["search"], "?x=1&x=2&y=3");
    assert_eq!(v["rest"], "/a/b");
    assert_eq!(v["endpoint"], "echo");
    assert_eq!(v["internal"], serde_json::Value::Null);
    assert_eq!(v["query"], serde_json::json!(["1", "2"]));
    assert_eq!(v["sameRequest"], true);
    assert_eq!(v["requestReadOnly"], true);

    let v = json(&*inst, call("echo", "PUT", "/", Some(r#"{"k":[1,2]}"#))).await;
    assert_eq!(v["input"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(
        v["body"], r#"{"k":[1,2]}"#,
        "body stays readable via ctx.request"
    );

    let mut c = call("echo", "POST", "/", None);
    *c.request.body_mut() = atrund_sandbox::full_body("raw text");
    let v = json(&*inst, c).await;
    assert_eq!(
        (v["input"].clone(), v["body"].clone()),
        (serde_json::Value::Null, "raw text".into())
    );

    let e = inst
        .execute(call("echo", "POST", "/", Some("{nope")))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.class().status()), ("InvalidInput", 400));

    let e = inst
        .execute(call("typed", "POST", "/", Some(r#"{"text":1}"#)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidInput");
    assert!(e.to_string().contains("'text'"), "{e}");
    let v = json(&*inst, call("typed", "POST", "/", Some(r#"{"text":"ok"}"#))).await;
    assert_eq!(v["text"], "ok");

    for name in ["notAnEndpoint", "default", "constructor", "__proto__"] {
        let e = inst
            .execute(call(name, "GET", "/", None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "EndpointNotFound", "{name}");
    }
    inst.drain().await;
    let e = inst
        .execute(call("bytes", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "Draining");
    inst.shutdown().await;
}

#[tokio::test]
async fn permissions_hold() {
    let Some(env) = Env::new() else { return };
    let mut spec = env.spec("esc", &bundle("escape.js"));
    spec.permissions.read = vec!["in.txt".into()];
    std::fs::create_dir_all(&spec.data_dir).unwrap();
    std::fs::write(spec.data_dir.join("in.txt"), "granted").unwrap();
    let inst = env.exec.warm(spec).await.unwrap();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();

    let v = json(&*inst, call("allowedRead", "GET", "/", None)).await;
    assert_eq!(
        v["leaked"], "granted",
        "the declared read grant must work: {v}"
    );

    for ep in ["readFile", "envHome", "fetchHost", "literalImport"] {
        let v = json(&*inst, call(ep, "GET", "/", None)).await;
        assert!(v.get("leaked").is_none(), "{ep} escaped: {v}");
        let name = v["error"].as_str().unwrap_or_default();
        let msg = v["message"].as_str().unwrap_or_default();
        // Deno reports a refused literal import as a TypeError naming the read permission.
        let refused = matches!(name, "NotCapable" | "PermissionDenied")
            || (ep == "literalImport" && name == "TypeError" && msg.contains("read access"));
        assert!(refused, "{ep}: {v}");
        if !hostname.trim().is_empty() {
            assert!(!msg.contains(hostname.trim()), "{ep} leaked data: {v}");
        }
    }
    inst.shutdown().await;
}

#[tokio::test]
async fn runaway_handler_times_out_and_a_new_instance_works() {
    let Some(env) = Env::new() else { return };
    let mut spec = env.spec("spin", &bundle("bytes.js"));
    spec.request_timeout = Duration::from_millis(700);
    let inst = env.exec.warm(spec).await.unwrap();
    let t = Instant::now();
    let e = inst
        .execute(call("spin", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.class().status()), ("TimedOut", 504));
    assert!(t.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!inst.is_alive());
    assert_eq!(inst.stats().pid, None);
    let e = inst
        .execute(call("bytes", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleCrashed");

    let fresh = env.warm("spin2", &bundle("bytes.js")).await;
    let res = fresh
        .execute(call("bytes", "GET", "/", None))
        .await
        .unwrap();
    assert_eq!(body_bytes(res).await.len(), 256);
    fresh.shutdown().await;
}

#[tokio::test]
async fn out_of_memory_is_a_crash_with_exit_status() {
    let Some(env) = Env::new() else { return };
    let mut spec = env.spec("oom", &bundle("bytes.js"));
    spec.memory_mib = 32;
    let inst = env.exec.warm(spec).await.unwrap();
    let e = inst
        .execute(call("oom", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleCrashed", "{e}");
    eprintln!("oom: {e}");
    assert!(
        e.to_string().contains("signal") || e.to_string().contains("exit"),
        "{e}"
    );
    assert!(!inst.is_alive());
}

#[tokio::test]
async fn load_failures_do_not_leak_source() {
    let Some(env) = Env::new() else { return };
    for (id, file) in [
        ("syn", "syntax.js"),
        ("top", "throws_at_load.js"),
        ("abi", "abi2.js"),
    ] {
        let e = match env.exec.warm(env.spec(id, &bundle(file))).await {
            Ok(_) => panic!("{file} must not start"),
            Err(e) => e,
        };
        assert_eq!(e.code(), "StartFailed", "{file}: {e}");
        let msg = e.to_string();
        eprintln!("{file}: {msg}");
        assert!(!msg.contains("SECRET-LINE-CONTENT"), "{msg}");
        assert!(!msg.contains("private detail"), "{msg}");
        assert!(
            !env.root.join("w").join(id).exists(),
            "work dir left behind"
        );
    }
    let missing = env.root.join("missing.js");
    let e = env
        .exec
        .warm(env.spec("miss", &missing))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), "StartFailed");
}

/// Sockets the process holds open (the shim's listener plus accepted connections).
fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn calls_reuse_one_connection_and_crashes_on_it_are_crashes() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("keep", &bundle("bytes.js")).await;
    let pid = inst.stats().pid.unwrap();
    let before = socket_fds(pid);
    for _ in 0..5 {
        let res = inst.execute(call("bytes", "GET", "/", None)).await.unwrap();
        assert_eq!(body_bytes(res).await.len(), 256);
    }
    // Structured failures and empty bodies leave the next call working too.
    let e = inst
        .execute(call("boom", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleFailed");
    let res = inst
        .execute(call("bytes", "HEAD", "/", None))
        .await
        .unwrap();
    assert!(body_bytes(res).await.is_empty());
    let res = inst.execute(call("bytes", "GET", "/", None)).await.unwrap();
    assert_eq!(body_bytes(res).await.len(), 256);
    // Closed connections take a moment to disappear from the shim's side.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = socket_fds(pid);
    assert!(
        held > before && held <= before + 2,
        "sequential calls should share one kept connection: {before} sockets before, {held} after"
    );
    // The process dies on a kept connection: the call is a crash, as on a fresh one.
    let e = inst
        .execute(call("oom", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleCrashed", "{e}");

    // Killed while idle with a kept connection: the next call says so too.
    let inst = env.warm("keep2", &bundle("bytes.js")).await;
    let res = inst.execute(call("bytes", "GET", "/", None)).await.unwrap();
    assert_eq!(body_bytes(res).await.len(), 256);
    let pid = inst.stats().pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while inst.is_alive() && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = inst
        .execute(call("bytes", "GET", "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BundleCrashed", "{e}");
}

#[tokio::test]
async fn dropped_instance_kills_its_process() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("drop", &hello()).await;
    let pid = inst.stats().pid.unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(inst);
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} outlived its instance"
    );
}

/// Spawn-to-ready and per-request latency; prints numbers, asserts only sanity bounds.
#[tokio::test]
async fn measure_start_and_latency() {
    let Some(env) = Env::new() else { return };
    let mut starts = Vec::new();
    let mut last = None;
    for i in 0..10 {
        let t = Instant::now();
        let inst = env.warm(&format!("m{i}"), &hello()).await;
        starts.push(t.elapsed());
        if let Some(prev) = last.replace(inst) {
            let prev: Arc<dyn Instance> = prev;
            prev.shutdown().await;
        }
    }
    starts.sort();
    let inst = last.unwrap();
    for _ in 0..50 {
        json(&*inst, call("greet", "GET", "/?name=x", None)).await;
    }
    let mut lat = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let res = inst
            .execute(call("greet", "GET", "/?name=x", None))
            .await
            .unwrap();
        body_bytes(res).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    // Baseline: the same call straight to the shim's socket (new connection each time, as the
    // backend does), without the backend's request mapping and body tracking.
    let socket = env.root.join("w/m9/rpc.sock");
    let mut direct = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/e/greet/?name=x")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = tx.send_request(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        direct.push(t.elapsed());
    }
    direct.sort();
    eprintln!(
        "MEASURE direct to socket p50 {:?} p90 {:?}",
        direct[250], direct[450]
    );
    eprintln!(
        "MEASURE spawn-to-ready median {:?} (min {:?}, max {:?}); request p50 {:?} p90 {:?} p99 {:?}",
        starts[5], starts[0], starts[9], lat[250], lat[450], lat[495]
    );
    assert!(starts[5] < Duration::from_secs(5));
    inst.shutdown().await;
}

/// Spawn-to-ready with and without Landlock + seccomp, interleaved in one run (15 each); prints
/// the medians. Also proves that a confined instance serves and reports its confinement.
#[tokio::test]
async fn measure_os_confinement_cost() {
    let Some(env) = Env::new() else { return };
    let plain = NoneExecutor::new(deno().unwrap()).with_os_confinement(false);
    for e in [&env.exec, &plain] {
        let report = e.enforcement();
        let landlock = report.iter().find(|e| e.limit == "landlock").unwrap();
        let seccomp = report.iter().find(|e| e.limit == "seccomp").unwrap();
        eprintln!("MEASURE {landlock:?}\nMEASURE {seccomp:?}");
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..15 {
        for (exec, times, tag) in [(&env.exec, &mut on, "c"), (&plain, &mut off, "p")] {
            let t = Instant::now();
            let inst = exec
                .warm(env.spec(&format!("{tag}{i}"), &hello()))
                .await
                .unwrap();
            times.push(t.elapsed());
            let v = json(&*inst, call("greet", "GET", "/?name=Ada", None)).await;
            assert_eq!(v["message"], "Hello, Ada!");
            inst.shutdown().await;
        }
    }
    on.sort();
    off.sort();
    eprintln!(
        "MEASURE spawn-to-ready median (n=15, interleaved): confined {:?} (min {:?}, max {:?}); \
         unconfined {:?} (min {:?}, max {:?})",
        on[7], on[0], on[14], off[7], off[0], off[14]
    );
}

/// Under Landlock the manifest's grants still work: a declared file to read, a file inside a
/// declared write dir that does not exist yet (the dir is created, as in container mode). A
/// listed `net` host is no TCP grant: raw TCP (`Deno.connect`) gets `PermissionDenied` (Landlock
/// allows only the egress proxy's port, and this executor has no proxy), and the listener sees
/// nothing (fetch through the proxy: tests/egress.rs).
#[tokio::test]
async fn declared_grants_work_under_os_confinement() {
    let Some(env) = Env::new() else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let mut spec = env.spec("grants", &bundle("hostile.js"));
    spec.permissions.read = vec!["in.txt".into()];
    spec.permissions.write = vec!["out".into()];
    spec.permissions.net = vec![format!("127.0.0.1:{port}")];
    std::fs::create_dir_all(&spec.data_dir).unwrap();
    std::fs::write(spec.data_dir.join("in.txt"), "granted").unwrap();
    let data = spec.data_dir.clone();
    let inst = env.exec.warm(spec).await.unwrap();
    let get = |ep: &str, q: &str| call(ep, "GET", &format!("/?{q}"), None);
    let v = json(&*inst, get("read", "path=in.txt")).await;
    assert_eq!(v["leaked"], "granted", "{v}");
    let v = json(&*inst, get("write", "path=out/new.txt")).await;
    assert_eq!(v["leaked"], "written", "{v}");
    assert_eq!(
        std::fs::read_to_string(data.join("out/new.txt")).unwrap(),
        "x"
    );
    let v = json(
        &*inst,
        get("connect", &format!("host=127.0.0.1&port={port}")),
    )
    .await;
    assert_eq!(v["error"], "PermissionDenied", "{v}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    inst.shutdown().await;
    server.abort();
}

/// The shim imports the bundle only after at-rund's `go` on stdin, which at-rund sends once the
/// process is in its cgroup: without it (end of input, or other bytes) no bundle code runs.
#[test]
fn shim_imports_the_bundle_only_after_go() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let Some(deno) = deno() else { return };
    let tmp = tempfile::Builder::new()
        .prefix("go")
        .tempdir_in("/tmp")
        .unwrap();
    let shim = tmp.path().join("shim.ts");
    std::fs::write(&shim, atrund_sandbox::SHIM_SOURCE).unwrap();
    let socket = tmp.path().join("s.sock");
    let bundle = bundle("announce.js");
    let spawn = || {
        Command::new(deno.path())
            .args(["run", "--no-prompt", "--cached-only", "--no-config"])
            .arg(format!(
                "--allow-read={},{}",
                bundle.display(),
                socket.display()
            ))
            .arg(format!("--allow-write={}", socket.display()))
            .arg(format!("--allow-net=unix:{}", socket.display()))
            .arg(&shim)
            .arg(&bundle)
            .arg(&socket)
            .env("DENO_DIR", tmp.path().join("deno"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for input in [&b""[..], b"no\n", b"g"] {
        let mut child = spawn();
        child.stdin.take().unwrap().write_all(input).unwrap();
        // A shim that does not wait serves forever: stop it rather than hang the test.
        let until = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(71), "{input:?}: {stdout}");
        assert!(
            !stdout.contains("bundle top-level ran") && !stdout.contains("ready"),
            "{input:?}: the bundle ran without go: {stdout}"
        );
    }
    let mut child = spawn();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "bundle top-level ran");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        format!(
            r#"{{"atrund":"ready","abi":{}}}"#,
            atrund_sandbox::ABI_VERSION
        )
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A job's task run (`CallKind::Task`): the payload in, `{"result": ...}` out; a throwing task
/// is `BundleFailed` without its message; tasks and endpoints cannot be reached as each other.
#[tokio::test]
async fn tasks_run_under_their_own_prefix() {
    let Some(env) = Env::new() else { return };
    let inst = env.warm("tasks", &bundle("bytes.js")).await;
    let task = |name: &str, method: &str, payload: Option<&str>| {
        let mut c = call(name, method, "/", payload);
        c.kind = atrund_sandbox::CallKind::Task;
        c
    };
    assert_eq!(
        json(&*inst, task("double", "POST", Some(r#"{"n":21}"#))).await,
        serde_json::json!({"result": {"twice": 42}})
    );
    assert_eq!(
        json(&*inst, task("slowTask", "POST", None)).await,
        serde_json::json!({"result": "done"})
    );
    assert_eq!(
        json(&*inst, task("nothingTask", "POST", None)).await,
        serde_json::json!({"result": null})
    );
    let err = |c| async {
        match inst.execute(c).await {
            Err(e) => e,
            Ok(r) => panic!("not refused: {}", r.status()),
        }
    };
    let broken = err(task("brokenTask", "POST", None)).await;
    assert_eq!(broken.code(), "BundleFailed");
    assert!(!broken.to_string().contains("secret detail"), "{broken}");
    assert_eq!(
        err(task("double", "POST", Some("{oops"))).await.code(),
        "InvalidInput"
    );
    assert_eq!(
        err(task("double", "GET", None)).await.code(),
        "MethodNotAllowed"
    );
    // An endpoint is not a task, a task is not an endpoint.
    assert_eq!(
        err(task("echo", "POST", None)).await.code(),
        "EndpointNotFound"
    );
    assert_eq!(
        err(call("double", "POST", "/", Some("{}"))).await.code(),
        "EndpointNotFound"
    );
    // The instance still serves endpoints afterwards.
    let res = inst.execute(call("bytes", "GET", "/", None)).await.unwrap();
    assert_eq!(res.status(), 200);
}
