//! Sandbox backends: the executor interface between the pool and the processes that run bundle
//! code, the `none` backend (Deno permission flags, plus Landlock and seccomp applied before
//! exec), the `container` backend (bubblewrap namespaces, a minimal read-only root, Landlock
//! and seccomp from our own PID 1) and the `microvm` backend (a QEMU microvm per instance, with
//! `sandbox-init` as the guest's agent) behind it.
//!
//! Owns: starting, calling, draining and killing one runtime instance, and the embedded Deno
//! shim (`runtime/exec/main.ts`). Must not: decide which bundles may run or with which limits
//! (policy and pool do), fetch or verify code (bundle store does), or keep instances (pool does).

mod broker;
pub mod cgroup;
mod choose;
mod confine;
mod connect_gate;
mod container;
mod egress;
mod error;
mod executables;
mod freeze;
pub mod guest;
pub mod guest_image;
mod host_confine;
mod hostfs;
pub mod init;
pub mod init_config;
mod microvm;
mod none;
mod output;
mod process;
mod report;
mod rootfs;
mod runtime;
mod sampler;
mod shim_conn;
mod shim_http;
mod spare;
#[allow(unsafe_code)] // the crate's one exception (see sys.rs's module doc)
mod sys;
pub mod vm_launcher;
mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use atrund_egress::{RunnerCall, RunnerCalls, RunnerReply, RunnerService, RUNNER_HOST};
pub use cgroup::{runner_id_for, CgroupManager, CgroupVersion};
pub use choose::{choose_executor, microvm_verdict, Choice, Chosen, Requested};
pub use container::generic::{GenericConfig, GenericSandbox, UNFIT_REASONS};
pub use container::{find_bwrap, ContainerConfig, ContainerExecutor};
pub use error::SandboxError;
pub use executables::find_program;
pub use hostfs::{copy_if_unreachable, runner_dir_mode, stage_file, unreachable_by};
pub use microvm::{MicroVmConfig, MicroVmExecutor, Vmm, NO_DATA_PATHS as MICROVM_NO_DATA_PATHS};
pub use none::NoneExecutor;
pub use process::is_hop_by_hop;
pub use report::{host_report, HostReport};
pub use rootfs::Rootfs;
pub use runtime::{DenoBinary, NodeBinary, PythonBinary, RuntimeKind, Runtimes, Shim};
pub use sys::effective_root;
pub use volume::{enter_private_mount_namespace, AuthorVolumes, VolumeError, MIN_VOLUME_BYTES};

/// The unprivileged host uid and gid instances of a root daemon run as, with no supplementary
/// groups and no capabilities (`sandbox.run_as_uid`, `sandbox.run_as_gid`; docs/security.md): the
/// Deno process itself in `none`, bwrap and everything inside it in `container` (whose user
/// namespace maps its uid 65534 to this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `nobody` / `nogroup` on Debian and most distributions: the default.
    pub const NOBODY: RunAs = RunAs {
        uid: 65534,
        gid: 65534,
    };
}

/// The runtime shim, embedded so that the binary and its shim never drift apart.
pub const SHIM_SOURCE: &str = include_str!("../../../runtime/exec/main.ts");

/// The bundle ABI version the embedded shim implements (docs/bundle-abi.md).
pub const ABI_VERSION: u32 = 1;

/// What one instance may do beyond running its code, as the backends enforce it: the manifest's
/// permissions once policy has accepted them (the sandbox does not read manifests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `host` or `host:port` entries the instance may connect to.
    pub net: Vec<String>,
    /// Paths relative to the data dir it may read.
    pub read: Vec<String>,
    /// Paths relative to the data dir it may write.
    pub write: Vec<String>,
    /// Commands it may run.
    pub run: Vec<String>,
    /// Foreign function calls (`--allow-ffi`).
    pub ffi: bool,
    /// System information (`--allow-sys`).
    pub sys: bool,
}

/// Everything a backend needs to start one instance of one bundle version. `Debug` shows the
/// names of `env`, never its values.
#[derive(Clone)]
pub struct InstanceSpec {
    /// Unique per instance, safe for file names.
    pub id: String,
    /// The runtime the bundle's record names.
    pub runtime: RuntimeKind,
    /// Verified single-file ESM bundle (read-only).
    pub bundle_file: PathBuf,
    /// Per-instance scratch dir the backend owns (the socket lives here); removed on shutdown.
    pub work_dir: PathBuf,
    /// Per-bundle data dir; manifest read/write paths are relative to it.
    pub data_dir: PathBuf,
    /// Per-bundle writable cache dir of the runtime (Deno's DENO_DIR; never shared between
    /// authors).
    pub deno_dir: PathBuf,
    /// Already checked against operator policy.
    pub permissions: Grants,
    /// The bundle's decrypted secrets; their names are its only `--allow-env`. Never log values.
    pub env: Vec<(String, String)>,
    /// Memory of the instance: its cgroup's limit (swap included) and, in addition, the V8
    /// heap flag.
    pub memory_mib: u64,
    /// Wall clock per request, response body included.
    pub request_timeout: Duration,
    /// Spawn to ready.
    pub start_timeout: Duration,
    /// The other per-instance and per-request limits (docs/limits.md).
    pub limits: ResourceLimits,
    /// Where the instance's console lines go besides the runner's log (the authors' logs,
    /// docs/observability.md); `None`: the runner's log only.
    pub output: Option<OutputSink>,
    /// Answers the instance's calls to its runner (`ctx.enqueue`, through the egress proxy's
    /// reserved host `runner.atrund.internal`); `None`: the instance cannot call it.
    pub runner_calls: Option<RunnerCalls>,
}

/// Which of an instance's output streams a line came from, or `Runner`: a line the runner wrote
/// about the instance for its author (a refused egress connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
    Runner,
}

impl OutputStream {
    /// `stdout`, `stderr` or `runner`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            OutputStream::Runner => "runner",
        }
    }
}

/// Receives each line an instance prints, once per line, already capped and with the instance's
/// secret values masked (the same text the runner's log gets). Called on the task that reads
/// the instance's output, so it must not block.
pub type OutputSink = Arc<dyn Fn(OutputStream, &str) + Send + Sync>;

/// Limits beyond memory and the wall clock, already within the operator's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Tasks (processes and threads: Deno threads count) in the instance's cgroup.
    pub pids: u64,
    /// CPU quota of the instance, percent of one CPU.
    pub cpu_quota_percent: u64,
    /// CPU time the instance may use while one call is in flight; `None` for no budget.
    pub cpu_budget: Option<Duration>,
    /// RLIMIT_NOFILE of the instance process.
    pub open_files: u64,
    /// Largest response body relayed; a bigger one is refused or cut (`ResponseTooLarge`).
    pub max_response_bytes: u64,
    /// RLIMIT_FSIZE of the instance process: the largest file it may write; writing past it
    /// stops the instance (`FileTooLarge`).
    pub max_file_bytes: u64,
}

impl Default for ResourceLimits {
    /// The operator defaults of docs/configuration.md.
    fn default() -> Self {
        Self {
            pids: 64,
            cpu_quota_percent: 100,
            cpu_budget: Some(Duration::from_secs(10)),
            open_files: 1024,
            max_response_bytes: 32 * 1024 * 1024,
            max_file_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Whether a backend enforces one limit, and how (or why not). Logged at start and shown by
/// describeRunner, so a limit that cannot be enforced is never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Enforcement {
    /// `memory`, `cpuQuota`, `cpuTime`, `pids`, `idleFreeze`, `openFiles`, `timeout`,
    /// `responseBody`; the `none` backend adds `landlock` and `seccomp` (its kernel confinement);
    /// both add `unprivileged` (the host uid they run instances as).
    pub limit: &'static str,
    pub enforced: bool,
    /// How it is enforced, or why it is not.
    pub how: String,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .field("runtime", &self.runtime)
            .field("bundle_file", &self.bundle_file)
            .field("permissions", &self.permissions)
            .field("env_names", &env)
            .field("memory_mib", &self.memory_mib)
            .finish_non_exhaustive()
    }
}

/// A body at the sandbox's seam (the caller's request in, the bundle's response out): a boxed
/// stream of bytes, so the sandbox and the pool need no web framework; the HTTP layer converts at
/// its edge.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BodyError>;

/// Why a body stream broke (for a response: often a [`SandboxError`], e.g. the deadline).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Boxes any byte stream as a [`Body`].
pub fn boxed_body<B>(body: B) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    use http_body_util::BodyExt;
    body.map_err(Into::into).boxed_unsync()
}

/// A [`Body`] with no bytes.
pub fn empty_body() -> Body {
    boxed_body(http_body_util::Empty::new())
}

/// A [`Body`] of these bytes.
pub fn full_body(bytes: impl Into<bytes::Bytes>) -> Body {
    boxed_body(http_body_util::Full::new(bytes.into()))
}

/// What kind of export a call runs: the shim serves each kind under its own path prefix, so a
/// task can never be called as an endpoint nor an endpoint run as a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallKind {
    /// An endpoint, called by an HTTP request (`/e/` on the wire).
    #[default]
    Endpoint,
    /// A task (`task()` of `@at-run/runtime`), run for a job: a POST whose JSON body is the
    /// payload, answered `{"result": ...}` (`/t/` on the wire).
    Task,
}

/// One call of one endpoint.
#[derive(Debug)]
pub struct Invocation {
    /// The export called: an endpoint, or a task of a job.
    pub kind: CallKind,
    /// The endpoint's (or task's) export name.
    pub endpoint: String,
    /// Method, headers and body of the caller; the URI is the rest path after the endpoint plus
    /// the query string, e.g. `/a/b?x=1` (or `/`).
    pub request: http::Request<Body>,
    /// This call's wall clock instead of the instance's `request_timeout` (a task's own
    /// `timeoutMs`, already within the operator's cap); `None` for the instance's.
    pub timeout: Option<std::time::Duration>,
}

/// Counters of one instance, for the pool's scheduling and reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceStats {
    /// Calls whose response (body included) has not finished yet.
    pub in_flight: usize,
    /// Calls accepted so far.
    pub served: u64,
    pub started_at: Instant,
    /// When the last call was accepted or finished.
    pub last_used: Instant,
    /// OS process id, while the process runs.
    pub pid: Option<u32>,
}

/// Starts instances. The seam between the pool and the isolation backends.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Backend name as in the config: "none", later "container", "microvm".
    fn name(&self) -> &'static str;
    /// What this backend enforces on this machine, limit by limit.
    fn enforcement(&self) -> Vec<Enforcement> {
        Vec::new()
    }
    /// Starts an instance and returns once it is ready to serve.
    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError>;
    /// The pool of pre-warmed generic sandboxes in front of this backend, if there is one.
    fn generic_pool(&self) -> Option<GenericPoolStats> {
        None
    }
}

/// The pre-warmed generic sandboxes (`pool.generic_sandboxes`), for describeRunner and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GenericPoolStats {
    /// Sandboxes kept ready (the configured size).
    pub size: u64,
    pub memory_budget_bytes: u64,
    /// Ready now, and being started now.
    pub ready: u64,
    pub starting: u64,
    /// Resident memory of the ready ones, as last read.
    pub memory_bytes: u64,
    /// Sandboxes handed to a bundle, and of those, the specialisations that failed.
    pub taken: u64,
    pub specialise_failures: u64,
    /// Sandboxes that failed to start.
    pub start_failures: u64,
    /// Instances started the normal way, by reason: `run` (not answerable by the broker),
    /// `limits` and `rlimits` (other than the caps the sandboxes start with), `runtime` (no
    /// sandboxes of the bundle's runtime), `empty` (none ready).
    pub fallbacks: Vec<(String, u64)>,
}

/// One running bundle instance.
#[async_trait::async_trait]
pub trait Instance: Send + Sync {
    /// Calls an endpoint; the response streams through without buffering.
    async fn execute(&self, call: Invocation) -> Result<http::Response<Body>, SandboxError>;
    fn stats(&self) -> InstanceStats;
    /// Stops taking new calls and waits for the in-flight ones.
    async fn drain(&self);
    /// Kills the process and removes the work dir.
    async fn shutdown(&self);
    /// False once the process has exited or was killed.
    fn is_alive(&self) -> bool;
    /// CPU time used so far, read from the instance's cgroup now (for metrics at scrape time,
    /// not the hot path); `None` without a cgroup that accounts CPU.
    fn cpu_usage(&self) -> Option<std::time::Duration> {
        None
    }
    /// Resident memory of the instance's processes now (every process in its cgroup, else its
    /// main process), for the pool's memory budget; `None` when it cannot be read.
    fn resident_bytes(&self) -> Option<u64> {
        None
    }
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`), or `None`
/// when the process is gone or unreadable.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// An instance spec under `dir` for the crate's unit tests (nothing is created).
#[cfg(test)]
pub(crate) fn test_spec(dir: &std::path::Path) -> InstanceSpec {
    InstanceSpec {
        id: "t".into(),
        runtime: RuntimeKind::Deno,
        bundle_file: dir.join("b.js"),
        work_dir: dir.join("w"),
        data_dir: dir.join("data"),
        deno_dir: dir.join("deno"),
        permissions: Default::default(),
        env: vec![],
        memory_mib: 64,
        request_timeout: std::time::Duration::from_secs(1),
        start_timeout: std::time::Duration::from_secs(1),
        limits: Default::default(),
        output: None,
        runner_calls: None,
    }
}

#[cfg(test)]
mod rss_tests {
    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tdeno\nVmPeak:\t  100 kB\nVmRSS:\t   31744 kB\nThreads: 4\n";
        assert_eq!(super::parse_vm_rss(s), Some(31744 * 1024));
        assert_eq!(super::parse_vm_rss("Name: x\n"), None);
        assert!(super::resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
