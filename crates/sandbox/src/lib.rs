//! Sandbox backends: the executor interface between the pool and the processes that run bundle
//! code, and the `none` backend (Deno permission flags only) behind it.
//!
//! Owns: starting, calling, draining and killing one runtime instance, and the embedded Deno
//! shim (`runtime/exec/main.ts`). Must not: decide which bundles may run or with which limits
//! (policy and pool do), fetch or verify code (bundle store does), or keep instances (pool does).

mod deno;
mod error;
mod none;
mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use deno::DenoBinary;
pub use error::SandboxError;
pub use none::NoneExecutor;

/// The runtime shim, embedded so that the binary and its shim never drift apart.
pub const SHIM_SOURCE: &str = include_str!("../../../runtime/exec/main.ts");

/// The bundle ABI version the embedded shim implements (docs/bundle-abi.md).
pub const ABI_VERSION: u32 = 1;

/// Everything a backend needs to start one instance of one bundle version.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Unique per instance, safe for file names.
    pub id: String,
    /// Verified single-file ESM bundle (read-only).
    pub bundle_file: PathBuf,
    /// Per-instance scratch dir the backend owns (the socket lives here); removed on shutdown.
    pub work_dir: PathBuf,
    /// Per-bundle data dir; manifest read/write paths are relative to it.
    pub data_dir: PathBuf,
    /// Per-bundle writable DENO_DIR (never shared between authors).
    pub deno_dir: PathBuf,
    /// Already checked against operator policy.
    pub permissions: atrund_bundle::Permissions,
    /// Secrets later (names become `--allow-env`); empty now. Never log values.
    pub env: Vec<(String, String)>,
    /// V8 heap flag now (cgroups come later).
    pub memory_mib: u64,
    /// Wall clock per request, response body included.
    pub request_timeout: Duration,
    /// Spawn to ready.
    pub start_timeout: Duration,
}

/// One call of one endpoint.
#[derive(Debug)]
pub struct Invocation {
    /// The endpoint (export) name.
    pub endpoint: String,
    /// Method, headers and body of the caller; the URI is the rest path after the endpoint plus
    /// the query string, e.g. `/a/b?x=1` (or `/`).
    pub request: http::Request<axum::body::Body>,
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
    /// Starts an instance and returns once it is ready to serve.
    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError>;
}

/// One running bundle instance.
#[async_trait::async_trait]
pub trait Instance: Send + Sync {
    /// Calls an endpoint; the response streams through without buffering.
    async fn execute(
        &self,
        call: Invocation,
    ) -> Result<http::Response<axum::body::Body>, SandboxError>;
    fn stats(&self) -> InstanceStats;
    /// Stops taking new calls and waits for the in-flight ones.
    async fn drain(&self);
    /// Kills the process and removes the work dir.
    async fn shutdown(&self);
    /// False once the process has exited or was killed.
    fn is_alive(&self) -> bool;
}
