//! The process layer under every backend: one runtime process per instance, running the
//! embedded shim, which serves the instance's calls as HTTP/1.1 on a Unix socket in its work dir.
//! The `none` and `container` backends build the command (what the process is and how it is
//! confined); this layer does the rest, the same for both:
//!
//! - `launch`: the start, as named steps under one clean-up guard: the instance cgroup, the
//!   spawn (with the child set-up of `sys`), placing the process in its cgroup ([`Join`]), the
//!   output (to tracing, line-capped, secret values masked), the `go` that lets the shim import
//!   the bundle, the reaper, and waiting for the shim's ready signal;
//! - `instance`: a running instance ([`ProcessInstance`]): calls in flight, the wall clock, the
//!   CPU budget (`sampler`), the idle freezer (`freeze`), breaches of the limits of
//!   docs/limits.md with their own errors, drain and kill;
//! - `call`: one call on the wire: the request as the shim gets it, its structured failures, and
//!   the response body (deadline, response cap, connection reuse).
//!
//! Owns: the process from spawn to reaping, and its work dir. Must not: choose permissions or
//! limits (they arrive checked in `InstanceSpec`), build a backend's command line, or log env
//! values.
//!
//! Calls go over keep-alive connections to the shim (`shim_conn`; the HTTP/1.1 on them is
//! `shim_http`'s, driven by the call itself): a connect and accept per call cost more than the
//! rest of a small call. The CPU budget and the breach
//! counters are sampled by one task per instance while calls are in flight (`sampler`), not
//! read per call. An idle instance is frozen after a grace and thawed when a call begins
//! (`freeze`); a kept connection to a frozen shim stays open, nothing is written to it before
//! the thaw.

mod call;
pub use call::is_hop_by_hop;
mod instance;
mod launch;
mod parked;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::cgroup::CgroupManager;
use crate::runtime::Shim;
use crate::sampler::CPU_POLL;
use crate::{sys, Enforcement, InstanceSpec, SandboxError};

pub(crate) use launch::launch;
pub(crate) use parked::{park, Park, Parked};

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// File name of the socket inside the work dir.
pub(crate) const SOCKET_FILE: &str = "rpc.sock";
/// Linux `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// What a backend hands to [`launch`]: a fully built command (program, arguments, environment,
/// stdio piped, own process group) that ends up running the shim on `socket`.
pub(crate) struct Launch<'a> {
    pub spec: &'a InstanceSpec,
    pub cmd: tokio::process::Command,
    /// For error messages.
    pub program: &'a Path,
    pub socket: PathBuf,
    pub cgroups: Option<&'a Arc<CgroupManager>>,
    /// RLIMIT_NOFILE of the process.
    pub nofile: u64,
    pub started_at: Instant,
    /// Dropped with the instance (e.g. the container's egress registration and forwarder).
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// Descriptors the process keeps across exec (the container's `--bind-fd` sources); closed
    /// in the daemon once it is spawned.
    pub inherit: Vec<std::os::fd::OwnedFd>,
    /// The unprivileged identity the process switches to before exec (either backend, when the
    /// daemon is root: Deno itself in `none`, bwrap in `container`).
    pub run_as: Option<crate::RunAs>,
    /// Landlock and seccomp the process applies to itself before exec (`none` only: the
    /// container's PID 1 confines itself).
    pub confine: Option<sys::Confinement>,
    /// The daemon's half of the connect gate (`none`: its child half is in `confine`).
    pub gate: Option<crate::connect_gate::GatePending>,
    pub join: Join,
    /// Parked launchers already in a cgroup of their own (`spare`; container on cgroup v1). When
    /// one is ready and the start inherits no descriptors, it becomes `cmd`'s process instead of
    /// a spawn: the cgroup was joined ahead, so neither the cgroup's creation nor the join is on
    /// this start's path (and `join` does not apply).
    pub spares: Option<&'a crate::spare::SpareLaunchers>,
    /// Set when the process is a microVM's launcher (`vm_launcher`) rather than the runtime
    /// itself.
    pub vm: Option<VmLaunch>,
}

/// What differs when the launched process is a microVM (`microvm`): its calls go through the
/// VMM's vsock socket, its host cgroup holds a whole VM (guest RAM and the VMM's threads), and
/// the guest's own breach counters arrive in a report file when it ends.
#[derive(Debug, Clone)]
pub(crate) struct VmLaunch {
    /// The guest port the shim's calls are carried on (`CONNECT <port>` on `socket`).
    pub vsock_port: u32,
    /// The host cgroup's limits (instead of the instance's own, which the guest enforces).
    pub host_limits: crate::cgroup::CgroupLimits,
    /// Where the launcher writes the guest's [`Counters`](crate::cgroup::Counters) before it
    /// exits; the reaper adds them to the host cgroup's.
    pub exit_report: PathBuf,
}

/// How a process gets into its instance cgroup. Either way the bundle's first instruction runs
/// inside it: the shim imports the bundle only after `go` on its stdin, sent once placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Join {
    /// The child writes `0` to each `cgroup.procs` before exec. Serial: on cgroup v1 the first
    /// write waits for an RCU grace period (~10 ms) before Deno can start. Needed when the
    /// process forks before the shim runs (bwrap, the container's init), which a later move
    /// would miss.
    BeforeExec,
    /// Deno starts at once; the daemon moves its pid in from a blocking thread meanwhile.
    AfterSpawn,
}

/// What the shared process machinery enforces, given the cgroups and the daemon's file limit.
pub(crate) fn enforcement_for(
    cgroups: Option<&Arc<CgroupManager>>,
    nofile_hard: Option<u64>,
) -> Vec<Enforcement> {
    let mut out = Vec::new();
    let mut add = |limit: &'static str, r: Result<String, String>| {
        let (enforced, how) = match r {
            Ok(h) => (true, h),
            Err(w) => (false, w),
        };
        out.push(Enforcement {
            limit,
            enforced,
            how,
        });
    };
    match cgroups {
        Some(m) => {
            for (limit, r) in m.slots() {
                let r = match (limit, r) {
                    ("memory", Ok(h)) => Ok(format!("{h}; V8 heap flag in addition")),
                    ("memory", Err(w)) => Err(format!(
                        "only the V8 heap flag, which ArrayBuffers escape: {w}"
                    )),
                    ("cpuTime", Ok(h)) => Ok(format!(
                        "{h}, sampled every {} ms while a call is in flight",
                        CPU_POLL.as_millis()
                    )),
                    (_, r) => r,
                };
                add(limit, r);
            }
            add(
                "idleFreeze",
                m.freezer_slot().map_err(|w| {
                    format!("timers a bundle leaves running keep working between calls: {w}")
                }),
            );
        }
        None => {
            let why = "cgroups are not set up for this executor".to_string();
            add(
                "memory",
                Err(format!(
                    "only the V8 heap flag, which ArrayBuffers escape: {why}"
                )),
            );
            for l in ["cpuQuota", "cpuTime", "pids", "idleFreeze"] {
                add(l, Err(why.clone()));
            }
        }
    }
    add(
        "openFiles",
        Ok(match nofile_hard {
            Some(h) => {
                format!("RLIMIT_NOFILE set before exec, at most the runner's own hard limit {h}")
            }
            None => "RLIMIT_NOFILE set before exec".into(),
        }),
    );
    add(
        "timeout",
        Ok("wall clock per call, response body included; the instance is killed".into()),
    );
    add("responseBody", Ok("Content-Length checked before any byte, streamed bytes counted; the instance is killed".into()));
    out
}

pub(crate) fn remove_work_dir(id: &str, dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(instance = id, dir = %dir.display(), error = %e, "could not remove the instance work dir")
        }
    }
}

/// The socket path of an instance, and the path of its runtime's `shim` in its work dir.
pub(crate) fn work_paths(
    spec: &InstanceSpec,
    shim: Shim,
) -> Result<(PathBuf, PathBuf), SandboxError> {
    let socket = spec.work_dir.join(SOCKET_FILE);
    let shim = spec.work_dir.join(shim.file);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        tracing::warn!(socket = %socket.display(), "the instance socket path is too long");
        return Err(SandboxError::StartFailed(format!(
            "the instance's socket path is longer than {MAX_SOCKET_PATH} bytes; configure a shorter data dir"
        )));
    }
    Ok((socket, shim))
}

pub(crate) use crate::hostfs::io_err;

/// Creates the instance's dirs (0700), removes a stale socket and writes `source`, the shim, to
/// `shim` (without
/// following a name planted in its dir: `hostfs::write_file_atomic`; 0644, it is public code).
/// With `owner` (the uid the instance runs as) the three dirs are given to it and their parents
/// made passable for its group (`hostfs::owned_dir`, `hostfs::passable_dir`).
pub(crate) async fn prepare_work_dir(
    spec: &InstanceSpec,
    socket: &Path,
    shim: &Path,
    source: &'static str,
    owner: Option<crate::RunAs>,
) -> Result<(), SandboxError> {
    let dirs = [
        spec.work_dir.clone(),
        spec.deno_dir.clone(),
        spec.data_dir.clone(),
    ];
    let (socket, shim) = (socket.to_path_buf(), shim.to_path_buf());
    tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            crate::hostfs::private_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
            if let Some(id) = owner {
                if let Some(parent) = dir.parent() {
                    crate::hostfs::passable_dir(parent, id.gid)
                        .map_err(|e| io_err("open to the instance's group", parent, e))?;
                }
                crate::hostfs::owned_dir(dir, id)
                    .map_err(|e| io_err("give the instance", dir, e))?;
            }
        }
        // A stale socket from a crashed predecessor would make the listen fail.
        let _ = std::fs::remove_file(&socket);
        let (Some(dir), Some(name)) = (shim.parent(), shim.file_name().and_then(|n| n.to_str()))
        else {
            return Err(io_err("write the shim to", &shim, "not a file path"));
        };
        crate::hostfs::write_file_atomic(dir, name, source.as_bytes(), 0o644)
            .map_err(|e| io_err("write the shim to", &shim, e))
    })
    .await
    .unwrap_or_else(|e| {
        Err(SandboxError::StartFailed(format!(
            "preparing the work dir failed: {e}"
        )))
    })
}
