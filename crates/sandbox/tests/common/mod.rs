//! Shared set-up of the container and hostile-bundle tests: real Deno, real bwrap, real cgroups
//! and a real egress proxy on 127.0.0.1 that both backends send HTTP(S) through (its resolver is
//! a fixed map and its connector refuses, and records, anything off this host, so no test leaves
//! the machine). Missing pieces skip the test with the reason, or fail it under CI=true.
//!
//! Each environment uses its own runner id, temp dir and proxy, and removes its cgroups on drop,
//! also when the test fails.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrund_egress::{Connect, DirectConnector, EgressConfig, EgressProxy, MapResolver};
use atrund_sandbox::{
    find_bwrap, CgroupManager, ContainerConfig, ContainerExecutor, DenoBinary, Executor, Instance,
    InstanceSpec, Invocation, MicroVmConfig, MicroVmExecutor, NoneExecutor, Vmm,
};
use http_body_util::BodyExt;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn skip_or_fail(why: String) -> Option<Env> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("container tests need this in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Container,
    /// QEMU microvm under software emulation (`microvm_tools`).
    MicroVm,
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub mgr: Arc<CgroupManager>,
    pub proxy: Arc<EgressProxy>,
    /// Every address the proxy tried to connect to.
    pub upstream: Arc<OnHostOnly>,
    pub exec: Arc<dyn Executor>,
    pub mode: Mode,
}

impl Env {
    pub async fn new(test: &str, mode: Mode) -> Option<Self> {
        Self::with_egress(test, mode, EgressConfig::default()).await
    }

    pub async fn with_egress(test: &str, mode: Mode, egress: EgressConfig) -> Option<Self> {
        let deno = match DenoBinary::locate(Some(&deno_path())) {
            Ok(d) => d,
            Err(e) => return skip_or_fail(format!("Deno not available ({e})")),
        };
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1);
        if uid != 0 {
            return skip_or_fail(format!("not root (uid {uid})"));
        }
        let tmp = tempfile::Builder::new()
            .prefix("ctr")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        // As the daemon's data dir (`prepare_data_dir`): the runner's dirs above instances' own
        // are passable for the instances' group (nobody's by default), in both modes (the
        // container's bwrap runs as that uid too, and binds the root under `rootfs`).
        atrund_sandbox::runner_dir_mode(&root, Some(65534)).unwrap();
        for d in ["data", "deno", "w"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            atrund_sandbox::runner_dir_mode(&root.join(d), Some(65534)).unwrap();
        }
        let mgr = Arc::new(CgroupManager::start(&format!(
            "test-{}-{test}",
            std::process::id()
        )));
        // "loopback.test" is a name that resolves to the host's loopback.
        let resolver = MapResolver::new()
            .with("loopback.test", &["127.0.0.1".parse::<IpAddr>().unwrap()])
            .with("localhost", &["127.0.0.1".parse::<IpAddr>().unwrap()])
            .with("private.test", &["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let upstream = Arc::new(OnHostOnly::default());
        let proxy = Arc::new(
            EgressProxy::start_with(
                EgressConfig {
                    connect_timeout: Duration::from_secs(2),
                    ..egress
                },
                Arc::new(resolver),
                upstream.clone(),
            )
            .await
            .unwrap(),
        );
        let exec: Arc<dyn Executor> = match mode {
            Mode::None => Arc::new(
                NoneExecutor::new(deno)
                    .with_cgroups(mgr.clone())
                    .with_egress(proxy.clone()),
            ),
            Mode::Container => {
                let Some(bwrap) = find_bwrap(None) else {
                    return skip_or_fail(
                        "bwrap not found; install it with `apt-get install -y bubblewrap` (scripts/setup.sh)".into(),
                    );
                };
                let exec = ContainerExecutor::new(container_config(&root, bwrap, deno))
                    .unwrap()
                    .with_cgroups(mgr.clone())
                    .with_egress(proxy.clone());
                if let Err(e) = exec.probe().await {
                    return skip_or_fail(format!("bwrap cannot build a sandbox here: {e}"));
                }
                Arc::new(exec)
            }
            Mode::MicroVm => {
                let t = microvm_tools()?;
                let modules = t.modules.clone();
                Arc::new(
                    microvm_executor(&root, t, modules)
                        .with_cgroups(mgr.clone())
                        .with_egress(proxy.clone()),
                )
            }
        };
        Some(Self {
            tmp,
            root,
            mgr,
            proxy,
            upstream,
            exec,
            mode,
        })
    }

    /// A container executor like this environment's, with its cgroups and proxy, whose
    /// instances run as `run_as` on the host; probed.
    pub async fn container_as(&self, run_as: atrund_sandbox::RunAs) -> ContainerExecutor {
        self.container_with(run_as, |r| r).await
    }

    /// [`Env::container_as`] with the runtimes `offer` makes of Deno's.
    async fn container_with(
        &self,
        run_as: atrund_sandbox::RunAs,
        offer: impl FnOnce(atrund_sandbox::Runtimes) -> atrund_sandbox::Runtimes,
    ) -> ContainerExecutor {
        let bwrap = find_bwrap(None).expect("bwrap");
        let deno = DenoBinary::locate(Some(&deno_path())).unwrap();
        // As `prepare_data_dir` does for the configured group.
        atrund_sandbox::runner_dir_mode(&self.root, Some(run_as.gid)).unwrap();
        let mut cfg = container_config(&self.root, bwrap, deno);
        cfg.runtimes = offer(cfg.runtimes);
        let exec = ContainerExecutor::new(cfg)
            .unwrap()
            .with_cgroups(self.mgr.clone())
            .with_egress(self.proxy.clone())
            .with_run_as(run_as);
        if let Err(e) = exec.probe().await {
            panic!("the probe failed as uid {}: {e}", run_as.uid);
        }
        exec
    }

    /// [`Env::container_as`] that also offers Python (Debian's interpreter, the one the Python
    /// runtime is tested with); `None` (a skip, or a failure under CI) without it.
    pub async fn container_with_python(
        &self,
        run_as: atrund_sandbox::RunAs,
    ) -> Option<ContainerExecutor> {
        let python = atrund_testnet::python_path()?;
        let python = atrund_sandbox::PythonBinary::probe(&python).await.unwrap();
        Some(
            self.container_with(run_as, |r| r.with_python(python, false))
                .await,
        )
    }

    pub fn spec(&self, id: &str, bundle: &Path) -> InstanceSpec {
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
            request_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(15),
            limits: Default::default(),
            output: None,
            runner_calls: None,
        }
    }

    pub async fn warm(&self, spec: InstanceSpec) -> Arc<dyn Instance> {
        match self.exec.warm(spec).await {
            Ok(i) => i,
            Err(e) => panic!("warm failed: {e}"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.mgr.sweep();
        let _ = self.mgr.remove_parents();
    }
}

pub use atrund_testnet::{microvm_tools, MicroVmTools};

/// A microVM executor under TCG with the guest image under `root/microvm` and these modules.
pub fn microvm_executor(root: &Path, t: MicroVmTools, modules: Vec<PathBuf>) -> MicroVmExecutor {
    MicroVmExecutor::new(MicroVmConfig {
        vmm: Vmm::Qemu {
            qemu: t.qemu,
            vhost_device_vsock: t.vhost,
        },
        kernel: t.kernel,
        modules,
        accel: atrund_microvm::qemu::Accel::Tcg,
        vcpus: 1,
        runtimes: DenoBinary::locate(Some(&deno_path())).unwrap().into(),
        init: (
            PathBuf::from(env!("CARGO_BIN_EXE_atrund-sandbox-init")),
            vec![],
        ),
        image_dir: root.join("microvm"),
        console: true,
    })
    .unwrap()
}

/// The test Deno binary (`ATRUND_TEST_DENO`, else the one scripts/setup.sh installs).
pub fn deno_path() -> PathBuf {
    std::env::var_os("ATRUND_TEST_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"))
}

/// The container settings of the tests: the root under `root/rootfs`, a 16 MiB `/tmp`.
pub fn container_config(root: &Path, bwrap: PathBuf, deno: DenoBinary) -> ContainerConfig {
    ContainerConfig {
        bwrap,
        runtimes: deno.into(),
        init: (
            PathBuf::from(env!("CARGO_BIN_EXE_atrund-sandbox-init")),
            vec![],
        ),
        rootfs_dir: root.join("rootfs"),
        tmp_mib: 16,
    }
}

pub fn bundle(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bundles")
        .join(name)
        .canonicalize()
        .unwrap()
}

pub fn hello() -> PathBuf {
    repo()
        .join("examples/hello/main.js")
        .canonicalize()
        .unwrap()
}

pub fn get(endpoint: &str, uri: &str) -> Invocation {
    Invocation {
        kind: atrund_sandbox::CallKind::Endpoint,
        endpoint: endpoint.into(),
        request: http::Request::builder()
            .uri(uri)
            .body(atrund_sandbox::empty_body())
            .unwrap(),
        timeout: None,
    }
}

/// The JSON answer of a call (or the error code).
pub async fn call_json(inst: &dyn Instance, c: Invocation) -> Result<serde_json::Value, String> {
    let res = inst.execute(c).await.map_err(|e| e.code().to_string())?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != 200 {
        return Err(format!("status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("json: {e}"))
}

/// Proves the runner still serves: a hello instance answers.
pub async fn hello_answers(inst: &dyn Instance) {
    let v = call_json(inst, get("greet", "/?name=Ada")).await.unwrap();
    assert_eq!(v["message"], "Hello, Ada!");
}

/// The hostile bundle with `secret` as the file its literal import tries to read.
pub fn hostile(env: &Env, secret: &Path) -> PathBuf {
    let src = std::fs::read_to_string(bundle("hostile.js"))
        .unwrap()
        .replace("__SECRET__", secret.to_str().unwrap());
    let p = env.root.join("store").join("hostile.js");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, src).unwrap();
    p
}

/// A host file with a known secret, outside anything an instance may read.
pub fn secret_file(env: &Env) -> PathBuf {
    let p = env.root.join("secret").join("secret.txt");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, "TOP-SECRET-42").unwrap();
    p
}

/// A one-line HTTP server on 127.0.0.1 that answers `hi` to anything; ends with the test.
pub async fn loopback_service() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

pub fn q(endpoint: &str, query: &[(&str, &str)]) -> Invocation {
    let qs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    get(endpoint, &format!("/?{}", qs.join("&")))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The proxy's upstream connector in these tests: records every address and connects only to
/// loopback (so a wrong decision of the proxy can still not send a packet off this host).
#[derive(Default)]
pub struct OnHostOnly {
    attempts: Mutex<Vec<SocketAddr>>,
}

#[async_trait::async_trait]
impl Connect for OnHostOnly {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        self.attempts.lock().unwrap().push(addr);
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other(format!(
                "test guard: not connecting to {addr} off this host"
            )));
        }
        DirectConnector.connect(addr).await
    }
}

impl OnHostOnly {
    pub fn attempts(&self) -> Vec<SocketAddr> {
        self.attempts.lock().unwrap().clone()
    }
}

/// A stand-in for the host's egress end on the Unix socket `path` (the guest agent's tests):
/// each connection is answered `proxied: <its request line>`, whatever it asked.
pub fn egress_stand_in(path: &Path) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::UnixListener::bind(path).expect("bind the egress stand-in");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut first = String::new();
                let _ = r.read_line(&mut first).await;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 2 {
                    line.clear();
                }
                let body = format!("proxied: {}", first.trim_end());
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = r
                    .into_inner()
                    .write_all(format!("{head}{body}").as_bytes())
                    .await;
            });
        }
    });
}
