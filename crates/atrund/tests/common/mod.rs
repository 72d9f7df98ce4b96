//! What every daemon-level test needs: start a real `at-rund` process, learn its addresses from
//! its start-up log, keep the log for failure messages, and stop it gracefully (SIGTERM, so it
//! removes its instances and cgroups) when the test ends; and, for the browser tests, start and
//! end a headless Chromium.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrund_testnet::{Account, TestNet};
use serde_json::Value;

/// A running `at-rund`.
pub struct Daemon {
    child: Child,
    /// `http://<addr>` of the main listener.
    pub base: String,
    /// `http://<addr>` of the admin listener, when it was asked for.
    pub admin: Option<String>,
    log: Arc<Mutex<String>>,
}

/// `at-rund` with a cleared environment: loopback listener on a free port, the given data dir
/// and Deno. Add arguments and `ATRUND_*` overrides, then [`Daemon::spawn`].
pub fn command(deno: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_at-rund"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATRUND_LISTEN", "127.0.0.1:0")
        .env("ATRUND_DATA_DIR", data_dir)
        .env("ATRUND_DENO_PATH", deno)
        .env("ATRUND_LOG", "info,atrund=debug");
    cmd
}

/// Points `cmd` at the test network: its PLC, plain http on loopback with exactly the test
/// network's ports opened (`allow_addrs`; the rest of loopback stays refused), handles through the
/// PDS's resolveHandle (no DNS or well-known for `*.test`), and no caching of resolved versions.
pub fn use_test_net<'a>(cmd: &'a mut Command, net: &TestNet) -> &'a mut Command {
    cmd.env("ATRUND_PLC_URL", &net.plc_url)
        .env("ATRUND_ALLOW_HTTP", "1")
        .env("ATRUND_ALLOW_ADDRS", net.allow_addrs())
        .env("ATRUND_IDENTITY_HANDLE_RESOLVER", &net.pds_url)
        .env("ATRUND_IDENTITY_DNS", "false")
        .env("ATRUND_IDENTITY_WELL_KNOWN", "false")
        .env("ATRUND_FETCH_REVALIDATE_SECS", "0")
        // Suites that publish right after asking, or load one author hard, would otherwise
        // meet the fair-share defaults; tests/tenancy.rs sets them on purpose.
        .env("ATRUND_TENANTS_NEGATIVE_CACHE_SECS", "0")
        .env("ATRUND_TENANTS_RATE_PER_SEC", "0")
}

impl Daemon {
    /// Spawns `cmd` and waits (30 s at most) for its "http api listening" line, and its "admin endpoint
    /// up" line when `want_admin`.
    pub fn spawn(cmd: &mut Command, want_admin: bool) -> Daemon {
        Self::spawn_within(cmd, want_admin, Duration::from_secs(30))
    }

    /// [`Daemon::spawn`] with a longer start (a microVM's probe under emulation).
    pub fn spawn_within(cmd: &mut Command, want_admin: bool, limit: Duration) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn at-rund");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = listening(&line) {
                    let _ = tx.send(found);
                }
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut d = Daemon {
            child,
            base: String::new(),
            admin: None,
            log,
        };
        while d.base.is_empty() || (want_admin && d.admin.is_none()) {
            match rx.recv_timeout(limit) {
                Ok((false, a)) => d.base = format!("http://{a}"),
                Ok((true, a)) => d.admin = Some(format!("http://{a}")),
                Err(_) => panic!(
                    "at-rund did not start within {} s; log:\n{}",
                    limit.as_secs(),
                    d.log()
                ),
            }
        }
        d
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s. Returns the log, complete.
    pub fn stop(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let log = self.stop();
        if std::thread::panicking() {
            eprintln!("---- at-rund log ----\n{log}");
        }
    }
}

/// The address a start-up line announces: `(false, main)` or `(true, admin)`, from a text line
/// (`... addr=IP:PORT`) or a JSON one (`log.format = "json"`: `fields.addr`, `fields.admin`).
fn listening(line: &str) -> Option<(bool, String)> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let message = v["message"].as_str().unwrap_or_default();
        let field = |k: &str| v["fields"][k].as_str().map(str::to_string);
        if message.contains("http api listening") {
            return field("addr").map(|a| (false, a));
        }
        if message.contains("admin endpoint up") {
            return field("admin").map(|a| (true, a));
        }
        return None;
    }
    if line.contains("http api listening") {
        let a = line.split("addr=").nth(1)?;
        return Some((false, a.trim().to_string()));
    }
    if line.contains("admin endpoint up") {
        let a = line.split("admin=").nth(1)?;
        return Some((true, a.split_whitespace().next()?.to_string()));
    }
    None
}

/// Headless Chromium with a fresh profile in `profile`, its console messages logged on stderr
/// (`…:CONSOLE:…]` lines), in a process group of its own so [`end_chromium`] ends its renderers
/// too. Add the page's URL and where output goes, then spawn.
pub fn chromium(chromium: &Path, profile: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.join("p").display()))
    .process_group(0)
    .stdin(Stdio::null());
    cmd
}

/// Kills a browser started from [`chromium`] and everything in its process group.
pub fn end_chromium(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// GET `url`; the body as JSON when it parses, else as a JSON string.
/// Runs `promtool check metrics` on a scrape; fails the test with promtool's words if it fails.
pub fn promtool_check(promtool: &Path, text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Publishes `code` with `manifest` as `name@version` for `account` through `at-run deploy`'s
/// own code (a prebuilt file and its manifest.json), moving the release.
pub async fn deploy(
    net: &TestNet,
    account: &Account,
    code: &str,
    manifest: &Value,
    name: &str,
    version: &str,
) -> at_run::deploy::Published {
    deploy_on(net, account, code, manifest, (name, version), "deno").await
}

/// [`deploy`] of a bundle for `runtime` (`at-run deploy --runtime`).
pub async fn deploy_on(
    net: &TestNet,
    account: &Account,
    code: impl AsRef<[u8]>,
    manifest: &Value,
    (name, version): (&str, &str),
    runtime: &str,
) -> at_run::deploy::Published {
    let dir = tempfile::tempdir().expect("temp dir");
    let code = code.as_ref();
    let file = dir.path().join(match runtime {
        "python" if at_run::pypack::is_zip(code) => "bundle.zip",
        "python" => "main.py",
        _ => "main.js",
    });
    std::fs::write(&file, code).expect("write bundle");
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).expect("manifest");
    let cmd = at_run::deploy::DeployCmd {
        path: file,
        name: Some(name.to_string()),
        version: Some(version.to_string()),
        manifest: None,
        description: None,
        no_release: false,
        dry_run: false,
        runner: None,
        auth: at_run::auth::AuthArgs {
            pds: Some(net.pds_url.clone()),
            identifier: Some(account.handle.clone()),
            password: Some(account.password.parse().expect("password")),
        },
        net: Default::default(),
    };
    let args = at_run::deploy::DeployArgs {
        cmd,
        runtime: Some(runtime.to_string()),
    };
    let no_deno = || anyhow::bail!("a prebuilt file needs no Deno");
    match at_run::deploy::run_args(&args, no_deno, |_| {}).await {
        Ok(at_run::deploy::DeployOutcome::Published(p)) => p,
        Ok(other) => panic!("deploy {name}@{version} did not publish: {other:?}"),
        Err(e) => panic!("deploy {name}@{version} failed: {e:#}"),
    }
}

/// Sets or (with `{}`) clears the override of carol's served did:web document (the test
/// network's harness serves it; tests play the domain owner).
pub async fn override_carol_doc(net: &TestNet, body: Value) {
    let url = net
        .carol_did_doc_url
        .replace("/.well-known/did.json", "/__test/did-doc-override");
    let resp = reqwest::Client::new()
        .put(url)
        .body(body.to_string())
        .send()
        .await
        .expect("override did doc");
    assert_eq!(resp.status(), 204);
}

/// A stand-in for an author's PDS on 127.0.0.1: every request is answered with what `answer`
/// returns for its path and query (status, content type, body). Returns the port.
pub async fn serve_pds_stand_in<F, Fut>(answer: F) -> u16
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (u16, String, Vec<u8>)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in PDS");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let answer = answer.clone();
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let (status, ctype, body) = answer(pq).await;
            axum::http::Response::builder()
                .status(status)
                .header("content-type", ctype)
                .body(axum::body::Body::from(body))
                .expect("response")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// GETs `pq` from the real PDS at `pds`: status, content type, body.
pub async fn pds_get(client: &reqwest::Client, pds: &str, pq: &str) -> (u16, String, Vec<u8>) {
    let upstream = client
        .get(format!("{pds}{pq}"))
        .send()
        .await
        .expect("upstream");
    let status = upstream.status().as_u16();
    let ctype = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let body = upstream.bytes().await.expect("body").to_vec();
    (status, ctype, body)
}

/// A service-auth token the real PDS mints for `acct` (`exp` in seconds, else the PDS's 60 s).
pub async fn mint(net: &TestNet, acct: &Account, aud: &str, lxm: &str, exp: Option<u64>) -> String {
    let http = net.http();
    let s: Value = http
        .post(format!(
            "{}/xrpc/com.atproto.server.createSession",
            net.pds_url
        ))
        .json(&serde_json::json!({"identifier": acct.handle, "password": acct.password}))
        .send()
        .await
        .expect("createSession")
        .json()
        .await
        .expect("session JSON");
    let access = s["accessJwt"].as_str().expect("accessJwt");
    let mut q = vec![("aud", aud.to_string()), ("lxm", lxm.to_string())];
    if let Some(e) = exp {
        q.push(("exp", e.to_string()));
    }
    let resp = http
        .get(format!(
            "{}/xrpc/com.atproto.server.getServiceAuth",
            net.pds_url
        ))
        .bearer_auth(access)
        .query(&q)
        .send()
        .await
        .expect("getServiceAuth");
    let status = resp.status();
    let v: Value = resp.json().await.expect("token JSON");
    assert!(status.is_success(), "getServiceAuth: {v}");
    v["token"].as_str().expect("token").to_string()
}
