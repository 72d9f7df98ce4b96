//! What every daemon-level test needs: start a real `at-rund` process, learn its addresses from
//! its start-up log, keep the log for failure messages, and stop it gracefully (SIGTERM, so it
//! removes its instances and cgroups) when the test ends.

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

/// Points `cmd` at the test network: its PLC, plain http on loopback, handles through the PDS's
/// resolveHandle (no DNS or well-known for `*.test`), and no caching of resolved versions.
pub fn use_test_net<'a>(cmd: &'a mut Command, net: &TestNet) -> &'a mut Command {
    cmd.env("ATRUND_PLC_URL", &net.plc_url)
        .env("ATRUND_ALLOW_HTTP", "1")
        .env("ATRUND_IDENTITY_HANDLE_RESOLVER", &net.pds_url)
        .env("ATRUND_IDENTITY_DNS", "false")
        .env("ATRUND_IDENTITY_WELL_KNOWN", "false")
        .env("ATRUND_FETCH_REVALIDATE_SECS", "0")
}

impl Daemon {
    /// Spawns `cmd` and waits (30 s at most) for its "http api listening" line, and its "admin endpoint
    /// up" line when `want_admin`.
    pub fn spawn(cmd: &mut Command, want_admin: bool) -> Daemon {
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
                if line.contains("http api listening") {
                    if let Some(a) = line.split("addr=").nth(1) {
                        let _ = tx.send((false, a.trim().to_string()));
                    }
                }
                if line.contains("admin endpoint up") {
                    if let Some(a) = line.split("admin=").nth(1) {
                        let a = a.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send((true, a.to_string()));
                    }
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
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok((false, a)) => d.base = format!("http://{a}"),
                Ok((true, a)) => d.admin = Some(format!("http://{a}")),
                Err(_) => panic!("at-rund did not start within 30 s; log:\n{}", d.log()),
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

/// GET `url`; the body as JSON when it parses, else as a JSON string.
pub async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Publishes `code` with `manifest` as `name@version` for `account`, through at-run's deploy.
pub async fn deploy(
    net: &TestNet,
    account: &Account,
    code: &str,
    manifest: &Value,
    name: &str,
    version: &str,
) -> at_run::deploy::Published {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("main.js");
    std::fs::write(&file, code).expect("write bundle");
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).expect("manifest");
    let args = at_run::deploy::DeployArgs {
        file,
        name: name.to_string(),
        version: version.to_string(),
        manifest: None,
        description: None,
        no_release: false,
        pds: Some(net.pds_url.clone()),
        identifier: Some(account.handle.clone()),
        password: Some(account.password.parse().expect("password")),
        json: false,
    };
    at_run::deploy::run(&args)
        .await
        .unwrap_or_else(|e| panic!("deploy {name}@{version} failed: {e:#}"))
}
