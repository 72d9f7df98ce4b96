//! The author's loop through the real `at-run` binary, against the real local PDS
//! (atrund-testnet) and a real `at-rund` (built once by this test binary with `cargo build -p
//! atrund --bin at-rund`, then found next to `at-run` in the target dir) running real Deno:
//! init → build → login → deploy (dry run first) → call through the runner → edit → redeploy →
//! rollback; `at-run dev` hot reload; `examples/media` end to end; and every command of
//! docs/authoring.md, extracted from its `sh` blocks and run in order.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrund_testnet::{Account, TestNet};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_at-run");

/// The at-rund binary, built once per test binary (it is not a dependency of at-run).
/// `dev_serves_a_saved_edit_on_the_next_request` times a half-saved file against the dev loop's
/// 50 ms settle window: the other tests here (each starting runners and builds) would stretch its
/// 15 ms write gap past that window on a 2-core machine. It holds this lock exclusively; every
/// other test holds it shared, so they still run in parallel with each other.
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn at_rund() -> PathBuf {
    atrund_testnet::cargo_binary("atrund", "at-rund", Path::new(BIN))
}

fn setup() -> Option<(&'static TestNet, PathBuf)> {
    let net = atrund_testnet::shared()?;
    let deno = atrund_testnet::deno_path()?;
    Some((net, deno))
}

/// One author's machine: its own config dir (where the session lives).
struct Author {
    config: tempfile::TempDir,
    deno: PathBuf,
    acct: Account,
    pds: String,
}

impl Author {
    fn new(net: &TestNet, deno: &Path, acct: Account) -> Author {
        Author {
            config: tempfile::tempdir().expect("tempdir"),
            deno: deno.to_path_buf(),
            acct,
            pds: net.pds_url.clone(),
        }
    }

    fn command(&self, cwd: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(cwd)
            .env_remove("ATRUN_PDS")
            .env_remove("ATRUN_IDENTIFIER")
            .env_remove("ATRUN_PASSWORD")
            .env_remove("ATRUN_RUNNER")
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("ATRUN_DENO", &self.deno)
            .stdin(Stdio::null());
        c
    }

    /// Runs `at-run ARGS`; asserts nothing secret was printed.
    fn run(&self, cwd: &Path, args: &[&str]) -> Run {
        let out = self.command(cwd).args(args).output().expect("at-run runs");
        let run = Run::from(out);
        assert!(
            !run.stdout.contains(&self.acct.password) && !run.stderr.contains(&self.acct.password),
            "the password leaked: {run:?}"
        );
        if let Some(s) = self.stored() {
            for k in ["accessJwt", "refreshJwt"] {
                let t = s[k].as_str().unwrap_or("");
                assert!(
                    t.is_empty() || (!run.stdout.contains(t) && !run.stderr.contains(t)),
                    "a token leaked"
                );
            }
        }
        run
    }

    /// Runs with `--json` and expects success; the parsed stdout.
    fn ok_json(&self, cwd: &Path, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let r = self.run(cwd, &a);
        assert_eq!(r.code, 0, "at-run {args:?} failed: {r:?}");
        r.json()
    }

    fn session_file(&self) -> PathBuf {
        self.config.path().join("at-run").join("session.json")
    }

    fn stored(&self) -> Option<Value> {
        let t = std::fs::read_to_string(self.session_file()).ok()?;
        serde_json::from_str(&t).ok()
    }

    fn login(&self, cwd: &Path) -> Value {
        self.ok_json(
            cwd,
            &[
                "login",
                "--pds",
                &self.pds,
                "--identifier",
                &self.acct.handle,
                "--password",
                &self.acct.password,
            ],
        )
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }
}

/// A running `at-rund serve` (stopped with SIGTERM, so its Deno instances go too).
struct Runner {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        stop(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- at-rund log ----\n{}",
                self.log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    }
}

/// Stops a child process (SIGTERM, then SIGKILL) when dropped, also when a test panics.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Runner {
    fn start(net: &TestNet, deno: &Path) -> Runner {
        Runner::start_with(net, deno, &[])
    }

    /// A runner with more settings (`ATRUND_*` variables), e.g. `ATRUND_NODE_PATH`.
    fn start_with(net: &TestNet, deno: &Path, env: &[(&str, &Path)]) -> Runner {
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(at_rund());
        cmd.env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("serve")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ATRUND_LISTEN", "127.0.0.1:0")
            .env("ATRUND_PLC_URL", &net.plc_url)
            .env("ATRUND_ALLOW_HTTP", "1")
            .env("ATRUND_ALLOW_ADDRS", net.allow_addrs())
            .env("ATRUND_DATA_DIR", data.path())
            .env("ATRUND_DENO_PATH", deno)
            .env("ATRUND_IDENTITY_HANDLE_RESOLVER", &net.pds_url)
            .env("ATRUND_IDENTITY_DNS", "false")
            .env("ATRUND_IDENTITY_WELL_KNOWN", "false")
            .env("ATRUND_FETCH_REVALIDATE_SECS", "0")
            .env("ATRUND_TENANTS_NEGATIVE_CACHE_SECS", "0")
            .env("ATRUND_POLICY", "open")
            .env("ATRUND_POOL_ADMIN_LISTEN", "off")
            .env("ATRUND_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn at-rund");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .contains("http api listening")
                    .then(|| line.split("addr=").nth(1))
                    .flatten()
                {
                    let _ = tx.send(addr.trim().to_string());
                }
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("at-rund did not listen: {}", log.lock().expect("log")));
        Runner {
            child,
            base: format!("http://{addr}"),
            _data: data,
            log,
        }
    }
}

fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn fetch(url: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread")]
async fn init_build_deploy_call_edit_redeploy_rollback() {
    let _timing = TIMING.read().await;
    let Some((net, deno)) = setup() else { return };
    let author = Author::new(net, &deno, net.create_account("loop").await);
    let work = tempfile::tempdir().expect("tempdir");

    // init: a working, type-checking template.
    let init = author.ok_json(work.path(), &["init", "app"]);
    assert_eq!(init["name"], "app");
    let app = work.path().join("app");
    let check = Command::new(&deno)
        .args(["check", "--quiet", "main.ts"])
        .current_dir(&app)
        .env("NO_COLOR", "1")
        .output()
        .expect("deno check");
    assert!(
        check.status.success(),
        "template does not type-check: {check:?}"
    );
    let again = author.run(work.path(), &["init", "app"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");

    // build: one file, the runtime inlined, the manifest from the exports.
    let built = author.ok_json(&app, &["build"]);
    let code = std::fs::read_to_string(app.join("dist/main.js")).expect("dist/main.js");
    assert!(!code.contains("import "), "not self-contained: {code}");
    assert!(code.contains("Hello, "), "lib/greeting.ts not inlined");
    let names: Vec<&str> = built["manifest"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "hello"]);
    assert_eq!(built["manifest"]["limits"]["timeoutMs"], 5000);
    assert_eq!(
        built["manifest"]["endpoints"][1]["input"]["properties"]["name"]["examples"][0],
        "Ada"
    );

    // Without a session or password: a clear "log in" and exit 4.
    let r = author.run(&app, &["deploy", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(r.json()["error"], "NotLoggedIn");
    assert!(r.stderr.contains("at-run login"), "{r:?}");

    // login: session stored with mode 0600, no secrets printed (checked in `run`).
    let who = author.login(&app);
    assert_eq!(who["did"], author.acct.did.as_str());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(author.session_file())
        .expect("session file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "session file mode {mode:o}");
    let stored = author.stored().expect("session json");
    assert!(stored["refreshJwt"].as_str().is_some_and(|t| !t.is_empty()));

    // --dry-run uploads nothing.
    let dry = author.ok_json(&app, &["deploy", "--dry-run"]);
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["version"], "0.1.0");
    let ls = author.ok_json(&app, &["ls"]);
    assert_eq!(
        ls["bundles"],
        serde_json::json!([]),
        "dry run published: {ls}"
    );

    // deploy with the stored session.
    let v1 = author.ok_json(&app, &["deploy"]);
    assert_eq!(v1["version"], "0.1.0");
    assert!(v1["release"]["uri"].as_str().is_some());

    let runner = Runner::start(net, &deno);
    let latest = format!(
        "{}/bundle/{}/app/latest/hello?name=Ada",
        runner.base, author.acct.did
    );
    assert_eq!(get(&latest), (200, r#"{"message":"Hello, Ada!"}"#.into()));
    let (status, body) = get(&format!(
        "{}/bundle/{}/app/latest/hello?name={}",
        runner.base,
        author.acct.did,
        "x".repeat(65)
    ));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("input field 'name'"), "{body}");

    // test and check against the runner.
    let t = author.ok_json(&app, &["test", "--runner", &runner.base]);
    assert_eq!(
        (t["passed"].as_u64(), t["failed"].as_u64()),
        (Some(2), Some(0)),
        "{t}"
    );
    let c = author.ok_json(&app, &["check", "--runner", &runner.base]);
    assert_eq!(c["compatible"], true, "{c}");
    // A manifest asking for more than the runner allows: check says so, with exit 5.
    let main = std::fs::read_to_string(app.join("main.ts")).expect("main.ts");
    std::fs::write(
        app.join("main.ts"),
        main.replace(
            "limits: { timeoutMs: 5000 }",
            "permissions: { ffi: true }, limits: { timeoutMs: 999999999 }",
        ),
    )
    .expect("write");
    let r = author.run(&app, &["check", "--runner", &runner.base, "--json"]);
    assert_eq!(r.code, 5, "{r:?}");
    let failed: Vec<String> = r.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    assert!(
        failed.contains(&"ffi".to_string()) && failed.contains(&"limits.timeoutMs".to_string()),
        "{failed:?}"
    );
    std::fs::write(app.join("main.ts"), &main).expect("restore");

    // A build error: exit 3 with file:line.
    std::fs::write(app.join("lib/broken.ts"), "export const x = ;\n").expect("write");
    std::fs::write(
        app.join("main.ts"),
        format!("import \"./lib/broken.ts\";\n{main}"),
    )
    .expect("write");
    let r = author.run(&app, &["deploy", "--json"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("lib/broken.ts:1:"), "{r:?}");
    std::fs::write(app.join("main.ts"), &main).expect("restore");

    // edit → same version refused (exit 7) → bump → redeploy: latest serves the edit.
    let greeting = app.join("lib/greeting.ts");
    let g = std::fs::read_to_string(&greeting).expect("read");
    std::fs::write(&greeting, g.replace("Hello, ", "Hi, ")).expect("write");
    let r = author.run(&app, &["deploy", "--json"]);
    assert_eq!(r.code, 7, "{r:?}");
    assert_eq!(r.json()["error"], "VersionExists");
    let pj = app.join("at-run.json");
    let p = std::fs::read_to_string(&pj).expect("read");
    std::fs::write(&pj, p.replace("0.1.0", "0.2.0")).expect("write");
    let v2 = author.ok_json(&app, &["deploy"]);
    assert_eq!(v2["version"], "0.2.0");
    assert_eq!(get(&latest), (200, r#"{"message":"Hi, Ada!"}"#.into()));

    // rollback: latest is 0.1.0 again; the pinned version still serves the edit.
    let rb = author.ok_json(&app, &["rollback", "app", "0.1.0"]);
    assert_eq!(rb["previous"], "0.2.0");
    assert_eq!(get(&latest), (200, r#"{"message":"Hello, Ada!"}"#.into()));
    let pinned = latest.replace("/latest/", "/0.2.0/");
    assert_eq!(get(&pinned), (200, r#"{"message":"Hi, Ada!"}"#.into()));
    let ls = author.ok_json(&app, &["ls"]);
    assert_eq!(ls["bundles"][0]["name"], "app");
    assert_eq!(ls["bundles"][0]["latest"], "0.1.0");
    let versions: Vec<&str> = ls["bundles"][0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);
    let r = author.run(&app, &["rollback", "app", "9.9.9", "--json"]);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("0.1.0, 0.2.0"), "{r:?}");

    // An expired access token is refreshed from the stored refresh token, and saved.
    let mut s = author.stored().expect("session");
    let expired = "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.x"; // {"alg":"none"}.{"exp":1}
    s["accessJwt"] = Value::String(expired.into());
    std::fs::write(author.session_file(), s.to_string()).expect("write");
    author.ok_json(&app, &["rollback", "app", "0.2.0"]);
    let after = author.stored().expect("session");
    assert_ne!(after["accessJwt"], expired);
    assert_eq!(get(&latest), (200, r#"{"message":"Hi, Ada!"}"#.into()));
    let mode = std::fs::metadata(author.session_file())
        .expect("session file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A refresh token the PDS refuses: "log in again", exit 4.
    let mut s = after.clone();
    s["accessJwt"] = Value::String(expired.into());
    s["refreshJwt"] = Value::String("not-a-token".into());
    std::fs::write(author.session_file(), s.to_string()).expect("write");
    let r = author.run(&app, &["rollback", "app", "0.1.0", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(r.json()["error"], "SessionExpired");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_a_saved_edit_on_the_next_request() {
    let _timing = TIMING.write().await;
    let Some((net, deno)) = setup() else { return };
    let author = Author::new(net, &deno, net.create_account("dev").await);
    let work = tempfile::tempdir().expect("tempdir");
    author.ok_json(work.path(), &["init", "devapp"]);
    let app = work.path().join("devapp");
    let _ = at_rund();
    let mut child = author
        .command(&app)
        .args(["dev", "--port", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("at-run dev");
    let stdout = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let mut child = Stopper(child);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let stderr_log = Arc::new(Mutex::new(String::new()));
    let log2 = stderr_log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let next = |want: &str| -> Value {
        loop {
            let v = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no '{want}' event from at-run dev"));
            if v["event"] == want {
                return v;
            }
        }
    };
    let ready = next("ready");
    let base = ready["url"].as_str().expect("url").to_string();
    assert_eq!(
        get(&format!("{base}/hello?name=Ada")),
        (200, r#"{"message":"Hello, Ada!"}"#.into())
    );

    // Save an edit; poll until it is served (no timing assert: the latency is printed).
    let greeting = app.join("lib/greeting.ts");
    let g = std::fs::read_to_string(&greeting).expect("read");
    let saved = Instant::now();
    std::fs::write(&greeting, g.replace("Hello, ", "Hey, ")).expect("write");
    loop {
        let (s, b) = get(&format!("{base}/hello?name=Ada"));
        if b.contains("Hey, Ada!") {
            assert_eq!(s, 200);
            break;
        }
        assert!(
            saved.elapsed() < Duration::from_secs(20),
            "edit never served: {b}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "MEASURED: at-run dev save -> served: {} ms",
        saved.elapsed().as_millis()
    );
    let rebuilt = next("rebuilt");
    eprintln!("MEASURED: at-run dev rebuild: {} ms", rebuilt["millis"]);

    // A syntax error: reported with file:line, the last good build keeps serving. Saved the way
    // a slow editor saves (truncate, then write 15 ms later): a half-saved file (here an empty
    // module, whose handler would throw a TypeError) is never built. The promise holds for a
    // half-save shorter than the dev loop's 50 ms poll, so a round only counts when the file was
    // really empty for less than 40 ms: a loaded machine can stretch the 15 ms sleep past the poll,
    // and then an empty file that stays put is indistinguishable from an edit. Such a round is
    // undone (the good file saved again) and retried. Each save starts at another phase of the
    // poll (which restarts after each build), so the half-saved windows meet scans.
    let syntax_error = "export function greeting(n: string) { return = ; }\n";
    let good = g.replace("Hello, ", "Hey, ");
    let (mut counted, mut tries) = (0u32, 0u64);
    while counted < 8 {
        assert!(
            tries < 40,
            "only {counted} of {tries} half-saves were shorter than 40 ms: the machine is too loaded to test this"
        );
        std::thread::sleep(Duration::from_millis((tries % 8) * 8));
        tries += 1;
        let half_saved = Instant::now();
        std::fs::File::create(&greeting).expect("truncate");
        std::thread::sleep(Duration::from_millis(15));
        std::fs::write(&greeting, syntax_error).expect("write");
        let empty_for = half_saved.elapsed();
        let failed = next("buildFailed");
        let msg = failed["message"].as_str().expect("message");
        assert!(msg.contains("lib/greeting.ts:1:"), "{msg}");
        if empty_for < Duration::from_millis(40) {
            counted += 1;
            assert_eq!(
                get(&format!("{base}/hello?name=Ada")).1,
                r#"{"message":"Hey, Ada!"}"#,
                "a half-saved file (empty for {} ms) was built",
                empty_for.as_millis()
            );
        } else {
            eprintln!(
                "half-save round not counted: the file was empty for {} ms",
                empty_for.as_millis()
            );
            std::fs::write(&greeting, &good).expect("write");
            next("rebuilt");
        }
    }

    // A handler that throws: its stack names the source file and line.
    std::fs::write(
        &greeting,
        "export function greeting(n: string): string {\n  throw new Error(\"boom \" + n);\n}\n",
    )
    .expect("write");
    next("rebuilt");
    let (s, _) = get(&format!("{base}/hello?name=Ada"));
    assert_eq!(s, 502);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stderr_log
        .lock()
        .expect("log")
        .contains("lib/greeting.ts:2:")
    {
        assert!(
            Instant::now() < deadline,
            "no source line in the dev output: {}",
            stderr_log.lock().expect("log")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(&mut child.0);
    assert!(child.0.try_wait().expect("wait").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn media_example_end_to_end() {
    let _timing = TIMING.read().await;
    let Some((net, deno)) = setup() else { return };
    let author = Author::new(net, &deno, net.create_account("media").await);
    let media = atrund_testnet::repo_root().join("examples/media");
    let check = Command::new(&deno)
        .args(["check", "--quiet", "main.ts"])
        .current_dir(&media)
        .env("NO_COLOR", "1")
        .output()
        .expect("deno check");
    assert!(
        check.status.success(),
        "examples/media does not type-check: {check:?}"
    );
    let built = author.ok_json(&media, &["build"]);
    assert_eq!(
        built["manifest"]["tasks"],
        serde_json::json!([{"name": "cleanup", "concurrency": 1}])
    );
    let endpoints: Vec<&str> = built["manifest"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(endpoints, ["go", "info", "thumb", "upload"]);
    let pub_ = author.ok_json(
        &media,
        &[
            "deploy",
            "--pds",
            &net.pds_url,
            "--identifier",
            &author.acct.handle,
            "--password",
            &author.acct.password,
        ],
    );
    assert_eq!(pub_["name"], "media");
    let runner = Runner::start(net, &deno);
    let base = format!("{}/bundle/{}/media/latest", runner.base, author.acct.handle);

    // GET with a query.
    let r = fetch(&format!("{base}/info?text=one%20two%20three")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v, serde_json::json!({"length": 13, "words": 3}));
    let r = fetch(&format!("{base}/info")).await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("input field 'text' is required"));

    // POST JSON.
    let r = reqwest::Client::new()
        .post(format!("{base}/upload"))
        .json(&serde_json::json!({"name": "cat.bmp", "tags": ["cat", "small"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["name"], "cat.bmp");
    assert_eq!(v["tags"], serde_json::json!(["cat", "small"]));
    assert_eq!(v["id"].as_str().map(str::len), Some(36));
    let r = reqwest::Client::new()
        .post(format!("{base}/upload"))
        .json(&serde_json::json!({"name": "x", "tags": ["ok", 7]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("input field 'tags.1'"));

    // Binary with cache headers, and 304 on a matching ETag.
    let r = fetch(&format!("{base}/thumb?size=4&color=ff8800")).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/bmp");
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    let etag = h["etag"].to_str().expect("etag").to_string();
    let bytes = r.bytes().await.expect("bytes");
    assert_eq!(bytes.len(), 54 + 12 * 4);
    assert_eq!(&bytes[..2], b"BM");
    assert_eq!(&bytes[54..57], &[0x00, 0x88, 0xff]); // BGR
    let r = reqwest::Client::new()
        .get(format!("{base}/thumb?size=4&color=ff8800"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    assert_eq!(
        fetch(&format!("{base}/thumb?size=9999")).await.status(),
        400
    );

    // HTML that redirects.
    let r = fetch(&format!("{base}/go?to=info")).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "./info");
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("<a href=\"./info\">"));

    // at-run test exercises all four with the manifest's samples.
    let t = author.ok_json(
        &media,
        &[
            "test",
            "--runner",
            &runner.base,
            "--pds",
            &net.pds_url,
            "--identifier",
            &author.acct.handle,
        ],
    );
    assert_eq!(
        (t["passed"].as_u64(), t["failed"].as_u64()),
        (Some(4), Some(0)),
        "{t}"
    );
}

/// docs/authoring.md: the commands of its `sh` blocks, in order. `cd` changes the folder for the
/// next lines; `at-run dev` runs in the background on a free port (`--port 0`, and the curl line
/// for 127.0.0.1:8787 is pointed at it); `curl` gets `-fsS` so an HTTP error fails the test.
#[tokio::test(flavor = "multi_thread")]
async fn authoring_doc_commands_all_run() {
    let _timing = TIMING.read().await;
    let Some((net, deno)) = setup() else { return };
    let author = Author::new(net, &deno, net.create_account("doc").await);
    let runner = Runner::start(net, &deno);
    let doc = std::fs::read_to_string(atrund_testnet::repo_root().join("docs/authoring.md"))
        .expect("docs/authoring.md");
    let mut lines = Vec::new();
    let mut in_sh = false;
    for l in doc.lines() {
        if l.trim_start().starts_with("```") {
            in_sh = !in_sh && l.trim() == "```sh";
            continue;
        }
        if in_sh && !l.trim().is_empty() && !l.trim().starts_with('#') {
            lines.push(l.trim().to_string());
        }
    }
    assert!(lines.len() >= 15, "too few commands found: {lines:?}");
    let work = tempfile::tempdir().expect("tempdir");
    let mut cwd = work.path().to_path_buf();
    let bin_dir = Path::new(BIN).parent().expect("bin dir").to_path_buf();
    let _ = at_rund();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut dev: Option<(Stopper, String)> = None;
    let mut ran = Vec::new();
    for line in &lines {
        if let Some(dir) = line.strip_prefix("cd ") {
            cwd = cwd.join(dir.trim());
            ran.push(line.clone());
            continue;
        }
        if line == "at-run dev" {
            let mut child = author
                .command(&cwd)
                .env("PATH", &path)
                .args(["dev", "--port", "0", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("at-run dev");
            let out = child.stdout.take().expect("stdout");
            let mut reader = BufReader::new(out);
            let mut addr = String::new();
            let mut l = String::new();
            while reader.read_line(&mut l).expect("read") > 0 {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    if v["event"] == "ready" {
                        addr = v["addr"].as_str().expect("addr").to_string();
                        break;
                    }
                }
                l.clear();
            }
            assert!(!addr.is_empty(), "at-run dev never became ready");
            // Keep reading its events, so it never writes into a closed pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            dev = Some((Stopper(child), addr));
            ran.push(line.clone());
            continue;
        }
        let mut cmd_line = line.clone();
        if let Some((_, addr)) = &dev {
            cmd_line = cmd_line.replace("127.0.0.1:8787", addr);
        }
        if let Some(rest) = cmd_line.strip_prefix("curl ") {
            cmd_line = format!("curl -fsS {rest}");
        }
        let out = Command::new("bash")
            .args(["-c", &cmd_line])
            .current_dir(&cwd)
            .env_remove("ATRUN_PDS")
            .env_remove("ATRUN_IDENTIFIER")
            .env_remove("ATRUN_RUNNER")
            .env("XDG_CONFIG_HOME", author.config.path())
            .env("ATRUN_DENO", &deno)
            .env("PATH", &path)
            .env("PDS", &net.pds_url)
            .env("HANDLE", &author.acct.handle)
            .env("RUNNER", &runner.base)
            .env("ATRUN_PASSWORD", &author.acct.password)
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        let r = Run::from(out);
        assert_eq!(
            r.code, 0,
            "docs/authoring.md command `{line}` failed: {r:?}"
        );
        assert!(
            !r.stdout.contains(&author.acct.password) && !r.stderr.contains(&author.acct.password),
            "`{line}` printed the password"
        );
        if line.starts_with("curl") {
            assert!(r.stdout.contains("Ada"), "`{line}`: {r:?}");
        }
        ran.push(line.clone());
    }
    drop(dev.take());
    // The walk-through ends with the rollback in effect and the session gone.
    assert!(ran
        .iter()
        .any(|l| l.starts_with("at-run rollback hello-app 0.1.0")));
    assert!(!author.session_file().exists(), "logout left the session");
    let (s, b) = get(&format!(
        "{}/bundle/{}/hello-app/latest/hello?name=Ada",
        runner.base, author.acct.handle
    ));
    assert_eq!((s, b.as_str()), (200, r#"{"message":"Hello, Ada!"}"#));
    eprintln!("ran {} commands from docs/authoring.md", ran.len());
}

/// The shim never serves a `task()` export, even when a hand-written manifest declares it as an
/// endpoint (runs the real at-rund dev on such a folder).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_export_is_never_served_as_an_endpoint() {
    let _timing = TIMING.read().await;
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("tasky");
    std::fs::create_dir_all(&b).expect("mkdir");
    std::fs::write(
        b.join("main.js"),
        "export const job = { $type: \"dev.atrund.task\", handler: () => \"ran\" };\n\
         export const ep = { handler: () => \"ok\" };\n",
    )
    .expect("write");
    std::fs::write(
        b.join("manifest.json"),
        // A manifest may not list `job` as an endpoint too (refused at load since tasks run
        // as jobs): the call of `job` reaches the runner as an undeclared endpoint, and the shim
        // (crates/sandbox/tests/none.rs) never serves a task export under an endpoint's path.
        r#"{"endpoints":[{"name":"ep"}],"tasks":[{"name":"job"}]}"#,
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(at_rund())
        .arg("dev")
        .arg(&b)
        .env("ATRUND_LISTEN", "127.0.0.1:0")
        .env("ATRUND_DATA_DIR", data.path())
        .env("ATRUND_DENO_PATH", &deno)
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("at-rund dev");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line
                .split("addr=")
                .nth(1)
                .filter(|_| line.contains("http api listening"))
            {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let _guard = Stopper(child);
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("listening");
    let base = format!("http://{addr}/bundle/local/tasky/latest");
    assert_eq!(get(&format!("{base}/ep")), (200, "\"ok\"".into()));
    let (status, body) = get(&format!("{base}/job"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("EndpointNotFound"), "{body}");
}

/// A Node project (`at-run init --runtime node`) through the whole loop: built by Deno, served by
/// `at-run dev` on Node, refused by `check`/`deploy --runner` on a runner without Node, then
/// deployed to and served by a runner whose operator set node.path.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_project_from_init_through_dev_to_a_node_runner() {
    let _timing = TIMING.read().await;
    let Some((net, deno)) = setup() else { return };
    let Some(node) = atrund_testnet::node_path() else {
        return;
    };
    let author = Author::new(net, &deno, net.create_account("nodeloop").await);
    let work = tempfile::tempdir().expect("tempdir");
    let init = author.ok_json(work.path(), &["init", "nodeapp", "--runtime", "node"]);
    assert_eq!(init["runtime"], "node");
    let app = work.path().join("nodeapp");
    let project: Value = serde_json::from_str(
        &std::fs::read_to_string(app.join("at-run.json")).expect("at-run.json"),
    )
    .expect("JSON");
    assert_eq!(project["runtime"], "node");
    // An endpoint that says which runtime answers (Node has no Deno global).
    let main = std::fs::read_to_string(app.join("main.ts")).expect("main.ts");
    std::fs::write(
        app.join("main.ts"),
        format!(
            "{main}\nexport const which = endpoint({{\n  method: \"GET\",\n  handler: () => ({{ deno: typeof (globalThis as {{ Deno?: unknown }}).Deno }}),\n}});\n"
        ),
    )
    .expect("write");
    let built = author.ok_json(&app, &["build"]);
    assert_eq!(built["runtime"], "node");
    assert_eq!(built["warnings"], serde_json::json!([]), "{built}");

    // dev: no Node, a clear error before anything starts; with the pinned Node, served by Node.
    let _ = at_rund();
    let r = author.run(&app, &["dev", "--json", "--node", "/nonexistent/node"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_eq!(r.json()["error"], "NodeMissing");
    assert!(r.stderr.contains("install Node.js 24"), "{r:?}");
    let node_arg = node.to_str().expect("utf-8 path");
    let mut child = author
        .command(&app)
        .args(["dev", "--port", "0", "--json", "--node", node_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("at-run dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Stopper(child);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let ready = loop {
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a 'ready' event from at-run dev");
        if v["event"] == "ready" {
            break v;
        }
    };
    assert_eq!(ready["runtime"], "node");
    let base = ready["url"].as_str().expect("url").to_string();
    assert_eq!(
        get(&format!("{base}/hello?name=Ada")),
        (200, r#"{"message":"Hello, Ada!"}"#.into())
    );
    assert_eq!(
        get(&format!("{base}/which")),
        (200, r#"{"deno":"undefined"}"#.into())
    );
    stop(&mut child.0);

    // A runner without Node: check and deploy --runner say so, and nothing is published.
    author.login(&app);
    let deno_only = Runner::start(net, &deno);
    let r = author.run(&app, &["check", "--runner", &deno_only.base, "--json"]);
    assert_eq!(r.code, 5, "{r:?}");
    let runtime = r.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "runtime")
        .cloned()
        .expect("a runtime check");
    assert_eq!(runtime["ok"], false);
    assert!(
        runtime["detail"]
            .as_str()
            .is_some_and(|d| d
                .contains("the runner announces no node runtime; its operator must set node.path")),
        "{runtime}"
    );
    let r = author.run(&app, &["deploy", "--runner", &deno_only.base, "--json"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert_eq!(r.json()["error"], "Incompatible");
    let ls = author.ok_json(&app, &["ls"]);
    assert_eq!(ls["bundles"], serde_json::json!([]), "published: {ls}");
    drop(deno_only);

    // A runner whose operator set node.path: compatible, published as node, served by Node.
    let with_node = Runner::start_with(net, &deno, &[("ATRUND_NODE_PATH", node.as_path())]);
    let c = author.ok_json(&app, &["check", "--runner", &with_node.base]);
    assert_eq!(c["compatible"], true, "{c}");
    let v1 = author.ok_json(&app, &["deploy", "--runner", &with_node.base]);
    assert_eq!(v1["runtime"], "node");
    let latest = format!(
        "{}/bundle/{}/nodeapp/latest",
        with_node.base, author.acct.did
    );
    assert_eq!(
        get(&format!("{latest}/hello?name=Ada")),
        (200, r#"{"message":"Hello, Ada!"}"#.into())
    );
    assert_eq!(
        get(&format!("{latest}/which")),
        (200, r#"{"deno":"undefined"}"#.into())
    );
}

/// Reads `at-run dev --json` events until `ready`; the events channel stays open for more.
fn dev_ready(child: &mut Child) -> (Value, std::sync::mpsc::Receiver<Value>) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a 'ready' event from at-run dev");
        if v["event"] == "ready" {
            return (v, rx);
        }
    }
}

/// A Python project (`at-run init --runtime python`) through the whole loop: built without Deno
/// (a syntax error named by file:line), served by `at-run dev` on Python and reloaded on save,
/// refused by `check` on a runner without Python, then deployed to and served by a runner whose
/// operator set python.path.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_project_from_init_through_dev_to_a_python_runner() {
    let _timing = TIMING.read().await;
    let Some((net, deno)) = setup() else { return };
    let Some(python) = atrund_testnet::python_path() else {
        return;
    };
    let author = Author::new(net, &deno, net.create_account("pyloop").await);
    let work = tempfile::tempdir().expect("tempdir");
    let init = author.ok_json(work.path(), &["init", "pyapp", "--runtime", "python"]);
    assert_eq!(init["runtime"], "python");
    let app = work.path().join("pyapp");
    assert!(app.join("main.py").is_file() && app.join("manifest.json").is_file());
    let python_arg = python.to_str().expect("utf-8 path");

    // build: no Deno needed (a broken ATRUN_DENO is never looked at).
    let built = Run::from(
        author
            .command(&app)
            .args(["build", "--json"])
            .env("ATRUN_DENO", "/nonexistent/deno")
            .env("ATRUN_PYTHON", python_arg)
            .output()
            .expect("at-run build"),
    );
    assert_eq!(built.code, 0, "{built:?}");
    let built = built.json();
    assert_eq!(built["runtime"], "python");
    assert_eq!(built["warnings"], serde_json::json!([]), "{built}");
    assert!(app.join("dist/main.py").is_file());
    let good = std::fs::read_to_string(app.join("main.py")).expect("main.py");
    std::fs::write(app.join("main.py"), format!("{good}\ndef oops(:\n")).expect("write");
    let r = author.run(&app, &["build", "--json"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("main.py:"), "{r:?}");
    std::fs::write(app.join("main.py"), &good).expect("write");

    // dev: no Python, a clear error; with the pinned Python, served by Python, reloaded on save.
    let _ = at_rund();
    let r = author.run(&app, &["dev", "--json", "--python", "/nonexistent/python3"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_eq!(r.json()["error"], "PythonMissing");
    assert!(r.stderr.contains("install Python 3.11"), "{r:?}");
    let mut child = author
        .command(&app)
        .args(["dev", "--port", "0", "--json", "--python", python_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("at-run dev");
    let (ready, _events) = dev_ready(&mut child);
    let mut child = Stopper(child);
    assert_eq!(ready["runtime"], "python");
    let base = ready["url"].as_str().expect("url").to_string();
    assert_eq!(
        get(&format!("{base}/greet?name=Ada")),
        (200, r#"{"message":"Hello, Ada!"}"#.into())
    );
    let post = reqwest::Client::new()
        .post(format!("{base}/shout"))
        .json(&serde_json::json!({"text": "hi"}))
        .send()
        .await
        .expect("POST shout");
    assert_eq!(post.status(), 200);
    assert_eq!(
        post.text().await.expect("body"),
        r#"{"text":"HI","length":2}"#
    );
    std::fs::write(app.join("main.py"), good.replace("Hello, ", "Hi, ")).expect("edit");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("{base}/greet?name=Ada"));
        if (status, body.as_str()) == (200, r#"{"message":"Hi, Ada!"}"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit was not served: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut child.0);
    std::fs::write(app.join("main.py"), &good).expect("write");

    // A runner without Python: check says what its operator must set.
    author.login(&app);
    let deno_only = Runner::start(net, &deno);
    let r = author.run(&app, &["check", "--runner", &deno_only.base, "--json"]);
    assert_eq!(r.code, 5, "{r:?}");
    let runtime = r.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "runtime")
        .cloned()
        .expect("a runtime check");
    assert_eq!(runtime["ok"], false);
    assert!(
        runtime["detail"].as_str().is_some_and(|d| d.contains(
            "the runner announces no python runtime; its operator must set python.path (ATRUND_PYTHON_PATH)"
        )),
        "{runtime}"
    );
    drop(deno_only);

    // A runner whose operator set python.path: compatible, published as python, served.
    let with_python = Runner::start_with(net, &deno, &[("ATRUND_PYTHON_PATH", python.as_path())]);
    let c = author.ok_json(&app, &["check", "--runner", &with_python.base]);
    assert_eq!(c["compatible"], true, "{c}");
    let v1 = author.ok_json(&app, &["deploy", "--runner", &with_python.base]);
    assert_eq!(v1["runtime"], "python");
    assert_eq!(v1["blob"]["mimeType"], "text/x-python");
    let latest = format!(
        "{}/bundle/{}/pyapp/latest",
        with_python.base, author.acct.did
    );
    assert_eq!(
        get(&format!("{latest}/greet?name=Ada")),
        (200, r#"{"message":"Hello, Ada!"}"#.into())
    );

    // The project grows a module and a requirements.txt (a pure wheel from a local folder, so
    // pip runs offline): built into dist/bundle.zip, published as application/zip, served with
    // both importable on the runner.
    atrund_testnet::require_tiny_wheel(&python, &app);
    std::fs::write(
        app.join("words.py"),
        "def hello(n):\n    return 'hello ' + n\n",
    )
    .expect("write");
    std::fs::write(
        app.join("main.py"),
        format!("import tinypkg\nimport words\n{good}\nloud = {{\"handler\": lambda i, c: {{\"said\": tinypkg.shout(words.hello(i[\"name\"]))}}}}\n"),
    )
    .expect("write");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("manifest.json")).expect("read"))
            .expect("manifest.json");
    manifest["endpoints"]
        .as_array_mut()
        .expect("endpoints")
        .push(serde_json::json!({"name": "loud", "method": "GET"}));
    std::fs::write(app.join("manifest.json"), manifest.to_string()).expect("write");
    let project_file = std::fs::read_to_string(app.join("at-run.json")).expect("read");
    std::fs::write(
        app.join("at-run.json"),
        project_file.replace("\"0.1.0\"", "\"0.2.0\""),
    )
    .expect("write");
    let v2 = Run::from(
        author
            .command(&app)
            .args(["deploy", "--json"])
            .env("ATRUN_PYTHON", python_arg)
            .output()
            .expect("at-run deploy"),
    );
    assert_eq!(v2.code, 0, "{v2:?}");
    let v2 = v2.json();
    assert_eq!(v2["version"], "0.2.0", "{v2}");
    assert_eq!(v2["blob"]["mimeType"], "application/zip", "{v2}");
    assert!(app.join("dist/bundle.zip").is_file() && !app.join("dist/main.py").exists());
    // `latest` moves when the runner sees the release (its event stream; seconds at most).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(&format!("{latest}/loud?name=ada"));
        if status == 200 {
            assert_eq!(body, r#"{"said":"HELLO ADA!"}"#);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v0.2.0 not served: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
