//! The `none` backend: one `deno run` process per instance, confined by Deno's permission flags
//! and, beneath them, by what works without namespaces (`host_confine`: no_new_privs, Landlock,
//! seccomp, applied by the child before exec; docs/security.md says what that leaves open),
//! serving the embedded shim's HTTP/1.1 on a Unix socket in the work dir, proxied with hyper.
//!
//! Owns: the Deno command line, the process (own process group, killed on drop, on timeout and on
//! shutdown), its output (to tracing, line-capped, secret values masked), the proxying of calls,
//! and enforcing the resource limits of docs/limits.md: the instance's cgroup (from `cgroup`;
//! the process is placed in it while Deno starts, and the shim loads the bundle only after the
//! `go` sent then, see `Join`), RLIMIT_NOFILE, the wall clock, the CPU budget per call and the response cap, each breach with
//! its own error.
//! Must not: choose permissions or limits (they arrive checked in `InstanceSpec`), or log env
//! values.
//!
//! Calls go over keep-alive connections to the shim (`shim_conn`): a connect, accept and
//! handshake per call cost more than the rest of a small call. The CPU budget and the breach
//! counters are sampled by one task per instance while calls are in flight (`sampler`), not
//! read per call. An idle instance is frozen after a grace and thawed when a call begins
//! (`freeze`); a kept connection to a frozen shim stays open, nothing is written to it before
//! the thaw.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{oneshot, watch, Notify};

use crate::cgroup::{CgroupLimits, CgroupManager, Counters, InstanceCgroup};
use crate::freeze::IdleFreezer;
use crate::host_confine::HostConfinement;
use crate::output::{for_each_line, Masker};
use crate::sampler::{Sampler, SamplerOwner, CPU_POLL};
use crate::shim_conn::{ShimConns, ShimSender};
use crate::{
    sys, DenoBinary, Enforcement, Executor, Instance, InstanceSpec, InstanceStats, Invocation,
    SandboxError, SHIM_SOURCE,
};

/// File name of the shim inside the work dir.
const SHIM_FILE: &str = "at-run-exec.ts";
/// File name of the socket inside the work dir.
const SOCKET_FILE: &str = "rpc.sock";
/// Linux `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Largest structured error body read from the shim.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest message relayed from the shim (it runs in the bundle's realm, so it is untrusted).
const MAX_ERROR_MESSAGE: usize = 500;
/// Header naming the endpoint on calls to the shim.
const ENDPOINT_HEADER: &str = "x-atrund-endpoint";
/// Header by which the shim marks a structured failure.
const ERROR_HEADER: &str = "x-atrund-error";
/// Headers reserved between at-rund and the shim.
const RESERVED_PREFIX: &str = "x-atrund-";
/// How long to wait for the exit status after a broken connection, to tell a crash apart.
const CRASH_GRACE: Duration = Duration::from_millis(500);

/// The `none` executor.
#[derive(Debug, Clone)]
pub struct NoneExecutor {
    deno: DenoBinary,
    /// `None`: no cgroups (memory is then capped by the V8 heap flag only, which ArrayBuffers
    /// escape); reported by [`Executor::enforcement`].
    cgroups: Option<Arc<CgroupManager>>,
    /// The daemon's hard RLIMIT_NOFILE: the most an instance can be given.
    nofile_hard: Option<u64>,
    /// Landlock and seccomp as far as this kernel offers them (`host_confine`).
    confinement: HostConfinement,
    /// How the process gets into its cgroup (`Join`).
    join: Join,
}

impl NoneExecutor {
    pub fn new(deno: DenoBinary) -> Self {
        Self {
            deno,
            cgroups: None,
            nofile_hard: sys::nofile_hard_limit(),
            confinement: HostConfinement::probe(),
            join: Join::AfterSpawn,
        }
    }

    /// Joins the cgroup in the child before exec, as the container backend must, instead of
    /// placing the process while Deno starts. Only to measure what that costs at start.
    pub fn with_cgroup_join_before_exec(mut self, on: bool) -> Self {
        self.join = if on {
            Join::BeforeExec
        } else {
            Join::AfterSpawn
        };
        self
    }

    /// Landlock and seccomp for every instance (on by default). Off only to measure what they
    /// cost; the enforcement list then says they are off.
    pub fn with_os_confinement(mut self, on: bool) -> Self {
        self.confinement.set_enabled(on);
        self
    }

    /// Puts every instance into its own cgroup under `manager`'s parents.
    pub fn with_cgroups(mut self, manager: Arc<CgroupManager>) -> Self {
        self.cgroups = Some(manager);
        self
    }

    fn open_files(&self, asked: u64) -> u64 {
        self.nofile_hard.map_or(asked, |hard| asked.min(hard))
    }
}

/// The Deno arguments for one instance, permissions included.
pub(crate) fn deno_args(
    spec: &InstanceSpec,
    shim: &Path,
    socket: &Path,
) -> Result<Vec<OsString>, SandboxError> {
    let p = &spec.permissions;
    let socket_s = flag_item("socket path", path_str(socket)?)?;
    let bundle_s = flag_item("bundle path", path_str(&spec.bundle_file)?)?;
    let data = |rel: &String| -> Result<String, SandboxError> {
        let joined = spec.data_dir.join(rel);
        Ok(flag_item("data path", path_str(&joined)?)?.to_string())
    };

    let mut read = vec![bundle_s.to_string(), socket_s.to_string()];
    for r in &p.read {
        read.push(data(r)?);
    }
    let mut write = vec![socket_s.to_string()];
    for w in &p.write {
        write.push(data(w)?);
    }
    // Deno.serve({ path }) also asks for net access to `unix:<path>`.
    let mut net = vec![format!("unix:{socket_s}")];
    for n in &p.net {
        net.push(flag_item("net entry", n)?.to_string());
    }

    let mut args: Vec<OsString> = [
        "run",
        "--no-prompt",
        "--no-remote",
        "--no-npm",
        "--cached-only",
        "--no-config",
        "--no-lock",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(format!("--v8-flags=--max-old-space-size={}", spec.memory_mib).into());
    args.push(format!("--allow-read={}", read.join(",")).into());
    args.push(format!("--allow-write={}", write.join(",")).into());
    args.push(format!("--allow-net={}", net.join(",")).into());
    if !p.run.is_empty() {
        let run: Vec<&str> = p
            .run
            .iter()
            .map(|r| flag_item("run entry", r))
            .collect::<Result<_, _>>()?;
        args.push(format!("--allow-run={}", run.join(",")).into());
    }
    if p.ffi {
        args.push("--allow-ffi".into());
    }
    if p.sys {
        args.push("--allow-sys".into());
    }
    if !spec.env.is_empty() {
        let names: Vec<&str> = spec
            .env
            .iter()
            .map(|(k, _)| env_name(k))
            .collect::<Result<_, _>>()?;
        args.push(format!("--allow-env={}", names.join(",")).into());
    }
    args.push(shim.as_os_str().to_owned());
    args.push(spec.bundle_file.as_os_str().to_owned());
    args.push(socket.as_os_str().to_owned());
    Ok(args)
}

fn path_str(p: &Path) -> Result<&str, SandboxError> {
    p.to_str().ok_or_else(|| {
        SandboxError::StartFailed(format!(
            "path '{}' is not UTF-8; use UTF-8 paths for the runner's directories",
            p.display()
        ))
    })
}

/// Deno splits permission lists at commas, so an item with one would widen the grant.
fn flag_item<'a>(what: &str, s: &'a str) -> Result<&'a str, SandboxError> {
    if s.is_empty() || s.contains([',', '\0', '\n']) {
        return Err(SandboxError::StartFailed(format!(
            "{what} '{s}' is empty or contains a comma or control character, which Deno's permission flags cannot express"
        )));
    }
    Ok(s)
}

/// Names only; env values are secrets and never appear in errors or logs.
fn env_name(k: &str) -> Result<&str, SandboxError> {
    let valid = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if !valid || k.starts_with("DENO_") || k.starts_with("LD_") || k == "NO_COLOR" {
        return Err(SandboxError::StartFailed(format!(
            "secret name '{k}' is not allowed: use letters, digits and '_', not starting with a digit, DENO_ or LD_"
        )));
    }
    Ok(k)
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

/// What the shim said on stdout before it was ready.
enum StartSignal {
    Ready,
    LoadFailed(String),
}

fn parse_signal(line: &str) -> Option<StartSignal> {
    if !line.starts_with("{\"atrund\":") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    match v.get("atrund")?.as_str()? {
        "ready" if v.get("abi").and_then(|a| a.as_u64()) == Some(u64::from(crate::ABI_VERSION)) => {
            Some(StartSignal::Ready)
        }
        "load-failed" => {
            let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("Error");
            let safe = name.len() <= 40 && name.chars().all(|c| c.is_ascii_alphabetic());
            Some(StartSignal::LoadFailed(
                if safe { name } else { "Error" }.to_string(),
            ))
        }
        _ => None,
    }
}

fn remove_work_dir(id: &str, dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(instance = id, dir = %dir.display(), error = %e, "could not remove the instance work dir")
        }
    }
}

#[async_trait::async_trait]
impl Executor for NoneExecutor {
    fn name(&self) -> &'static str {
        "none"
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let mut e = enforcement_for(self.cgroups.as_ref(), self.nofile_hard);
        e.extend(self.confinement.enforcement());
        e
    }

    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        let started_at = Instant::now();
        let (socket, _) = work_paths(&spec)?;
        // One shim path per bundle, not per instance: Deno caches the shim's transpiled form in
        // DENO_DIR keyed by its path, so a per-instance path would grow DENO_DIR/gen forever.
        let shim = spec.deno_dir.join(SHIM_FILE);
        let args = deno_args(&spec, &shim, &socket)?;
        prepare_work_dir(&spec, &socket, &shim).await?;
        // Built here, before fork: the child only makes the syscalls.
        let confine = self
            .confinement
            .prepare(&spec, self.deno.path())
            .inspect_err(|_| remove_work_dir(&spec.id, &spec.work_dir))?;

        let mut cmd = tokio::process::Command::new(self.deno.path());
        cmd.args(&args)
            .env_clear()
            .env("DENO_DIR", &spec.deno_dir)
            .env("DENO_NO_UPDATE_CHECK", "1")
            .env("NO_COLOR", "1")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            // Relative paths in the bundle then mean what the manifest means: data-dir relative.
            .current_dir(&spec.data_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        launch(Launch {
            spec: &spec,
            cmd,
            program: self.deno.path(),
            socket,
            cgroups: self.cgroups.as_ref(),
            nofile: self.open_files(spec.limits.open_files),
            started_at,
            keep: Vec::new(),
            confine,
            join: self.join,
        })
        .await
    }
}

/// The socket and shim paths of an instance.
pub(crate) fn work_paths(spec: &InstanceSpec) -> Result<(PathBuf, PathBuf), SandboxError> {
    let socket = spec.work_dir.join(SOCKET_FILE);
    let shim = spec.work_dir.join(SHIM_FILE);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SandboxError::StartFailed(format!(
            "socket path '{}' is longer than {MAX_SOCKET_PATH} bytes; configure a shorter work directory",
            socket.display()
        )));
    }
    Ok((socket, shim))
}

pub(crate) fn io_err(what: &str, p: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::StartFailed(format!(
        "could not {what} '{}': {e}; check the runner's directories",
        p.display()
    ))
}

/// Creates the instance's dirs, removes a stale socket and writes the shim.
pub(crate) async fn prepare_work_dir(
    spec: &InstanceSpec,
    socket: &Path,
    shim: &Path,
) -> Result<(), SandboxError> {
    for dir in [&spec.work_dir, &spec.deno_dir, &spec.data_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_err("create", dir, e))?;
    }
    // A stale socket from a crashed predecessor would make the listen fail.
    let _ = tokio::fs::remove_file(socket).await;
    if tokio::fs::read(shim).await.ok().as_deref() == Some(SHIM_SOURCE.as_bytes()) {
        return Ok(());
    }
    // Written beside and renamed into place: instances of one bundle may start together and
    // share this path, and none may see a half-written shim.
    let tmp = shim.with_extension(format!("tmp-{}", spec.id));
    tokio::fs::write(&tmp, SHIM_SOURCE)
        .await
        .map_err(|e| io_err("write the shim to", &tmp, e))?;
    tokio::fs::rename(&tmp, shim)
        .await
        .map_err(|e| io_err("move the shim to", shim, e))
}

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
    /// Landlock and seccomp the process applies to itself before exec (`none` only: the
    /// container's PID 1 confines itself).
    pub confine: Option<sys::Confinement>,
    pub join: Join,
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

/// What the shim waits for on stdin before it imports the bundle.
const GO: &[u8] = b"go\n";

/// The process machinery shared by the backends: the instance cgroup (`Join`), the spawn,
/// stdout/stderr to tracing, the go signal, the reaper, and waiting for the shim's ready signal.
pub(crate) async fn launch(l: Launch<'_>) -> Result<Arc<dyn Instance>, SandboxError> {
    let Launch {
        spec,
        mut cmd,
        program,
        socket,
        cgroups,
        nofile,
        started_at,
        keep,
        confine,
        join,
    } = l;
    {
        let cgroup = match cgroups {
            Some(m) => {
                let t = Instant::now();
                let cg = m.create(
                    &spec.id,
                    CgroupLimits {
                        memory_mib: spec.memory_mib,
                        pids: spec.limits.pids,
                        cpu_quota_percent: spec.limits.cpu_quota_percent,
                    },
                );
                match cg {
                    Ok(cg) => {
                        tracing::debug!(instance = %spec.id, us = t.elapsed().as_micros() as u64, "instance cgroup created");
                        Some(Arc::new(cg))
                    }
                    Err(e) => {
                        remove_work_dir(&spec.id, &spec.work_dir);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let procs = match (&cgroup, join) {
            (Some(c), Join::BeforeExec) => c.procs_files(),
            _ => Vec::new(),
        };
        sys::install(
            &mut cmd,
            sys::ChildSetup {
                procs,
                nofile: Some(nofile),
                confine,
            },
        );
        cmd.stdin(std::process::Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                remove_work_dir(&spec.id, &spec.work_dir);
                return Err(SandboxError::StartFailed(format!(
                    "could not spawn '{}': {e}",
                    program.display()
                )));
            }
        };
        // Closes the Landlock ruleset's descriptor in the daemon (the child has applied it).
        drop(cmd);
        // Not yet reaped, so it has a pid (0 would make `place` move the daemon itself).
        let pid = child.id().filter(|p| *p != 0);
        let placing = match (&cgroup, join, pid) {
            (Some(cg), Join::AfterSpawn, Some(pid)) => {
                let cg = cg.clone();
                let t = Instant::now();
                let id = spec.id.clone();
                Some(tokio::task::spawn_blocking(move || {
                    let r = cg.place(pid);
                    tracing::debug!(instance = %id, us = t.elapsed().as_micros() as u64, "instance placed in its cgroup");
                    r
                }))
            }
            (Some(_), Join::AfterSpawn, None) => Some(tokio::task::spawn_blocking(|| {
                Err(SandboxError::StartFailed(
                    "the spawned runtime has no pid to place in its cgroup".into(),
                ))
            })),
            _ => None,
        };
        let pid = pid.unwrap_or(0);
        let go = child.stdin.take();
        let id: Arc<str> = spec.id.as_str().into();

        let (ready_tx, ready_rx) = oneshot::channel::<StartSignal>();
        // A bundle that prints its own secret must not put it into the runner's log.
        let masker = Masker::new(&spec.env);
        if let Some(out) = child.stdout.take() {
            let id = id.clone();
            let masker = masker.clone();
            tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                for_each_line(out, &masker, |line| {
                    if ready_tx.is_some() {
                        if let Some(sig) = parse_signal(line) {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(sig);
                            }
                            return;
                        }
                    }
                    tracing::info!(instance = &*id, stream = "stdout", "{line}");
                })
                .await;
            });
        }
        if let Some(err) = child.stderr.take() {
            let id = id.clone();
            tokio::spawn(async move {
                for_each_line(err, &masker, |line| {
                    tracing::warn!(instance = &*id, stream = "stderr", "{line}");
                })
                .await;
            });
        }

        // Awaited before the reaper exists: nothing reaps the child while its pid is written.
        if let Some(placing) = placing {
            let placed = placing.await.unwrap_or_else(|e| {
                Err(SandboxError::StartFailed(format!(
                    "placing the runtime in its cgroup failed: {e}"
                )))
            });
            if let Err(e) = placed {
                let e = match child.try_wait() {
                    // Reaped now: its pid and group are no longer ours to signal.
                    Ok(Some(status)) => SandboxError::StartFailed(format!(
                        "the runtime exited before it was ready ({status}); the runner's log has the details"
                    )),
                    _ => {
                        if let Ok(p) = i32::try_from(pid) {
                            let _ = nix::sys::signal::killpg(
                                nix::unistd::Pid::from_raw(p),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        e
                    }
                };
                tracing::warn!(instance = &*id, error = %e, "instance failed to start");
                if let Some(cg) = cgroup {
                    if let Ok(Err(err)) = tokio::task::spawn_blocking(move || cg.remove()).await {
                        tracing::error!(instance = &*id, error = %err, "could not remove the instance cgroup");
                    }
                }
                remove_work_dir(&spec.id, &spec.work_dir);
                return Err(e);
            }
        }
        // Placed (or joined before exec): the shim may import the bundle. A failed write means
        // the process is gone, which the wait for the ready signal reports.
        tracing::debug!(
            instance = &*id,
            us = started_at.elapsed().as_micros() as u64,
            "go sent"
        );
        if let Some(mut go) = go {
            use tokio::io::AsyncWriteExt;
            if let Err(e) = go.write_all(GO).await {
                tracing::debug!(instance = &*id, error = %e, "could not send go to the shim");
            }
        }

        // The reaper owns the child: it alone waits and signals, so a kill never hits a
        // recycled pid (the zombie holds the pid until it is reaped here).
        let kill = Arc::new(Notify::new());
        let (exit_tx, exit_rx) = watch::channel::<Option<Exit>>(None);
        {
            let kill = kill.clone();
            let id = id.clone();
            let cgroup = cgroup.clone();
            tokio::spawn(async move {
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = kill.notified() => {
                        if let Ok(p) = i32::try_from(pid) {
                            let _ = nix::sys::signal::killpg(
                                nix::unistd::Pid::from_raw(p),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        let _ = child.start_kill();
                        child.wait().await
                    }
                };
                let text = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status: {e}"),
                };
                tracing::debug!(instance = &*id, status = %text, "instance process ended");
                // Counters first: they are gone with the cgroup.
                let counters = cgroup.as_ref().map(|c| c.counters()).unwrap_or_default();
                exit_tx.send_replace(Some(Exit {
                    status: text,
                    counters,
                    cleaned: cgroup.is_none(),
                }));
                if let Some(cg) = cgroup {
                    match tokio::task::spawn_blocking(move || cg.remove()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(instance = &*id, error = %e, "could not remove the instance cgroup")
                        }
                        Err(e) => {
                            tracing::error!(instance = &*id, error = %e, "cgroup removal panicked")
                        }
                    }
                    exit_tx.send_modify(|e| {
                        if let Some(e) = e {
                            e.cleaned = true;
                        }
                    });
                }
            });
        }

        let inner = Arc::new(Inner {
            id: id.clone(),
            conns: ShimConns::new(socket),
            work_dir: spec.work_dir.clone(),
            request_timeout: spec.request_timeout,
            memory_mib: spec.memory_mib,
            limits: spec.limits,
            sampler: cgroup
                .clone()
                .map(|cg| Arc::new(Sampler::new(cg, spec.limits.cpu_budget))),
            freezer: cgroup.as_ref().and_then(IdleFreezer::new),
            cgroup,
            _keep: keep,
            breach: Mutex::new(None),
            pid,
            started_at,
            kill,
            killed: std::sync::atomic::AtomicBool::new(false),
            exit_rx,
            idle: Notify::new(),
            state: Mutex::new(State {
                in_flight: 0,
                served: 0,
                last_used: started_at,
                draining: false,
            }),
        });

        let mut exit_wait = inner.exit_rx.clone();
        let mut ready_rx = ready_rx;
        let outcome = tokio::time::timeout(spec.start_timeout, async {
            let sig = tokio::select! {
                sig = &mut ready_rx => sig.ok(),
                // The exit can be seen before the reader has passed on the last stdout line.
                _ = exit_wait.changed() => tokio::time::timeout(CRASH_GRACE, &mut ready_rx)
                    .await
                    .ok()
                    .and_then(|s| s.ok()),
            };
            match sig {
                Some(StartSignal::Ready) => Ok(()),
                Some(StartSignal::LoadFailed(name)) => Err(SandboxError::StartFailed(format!(
                    "the bundle failed to load ({name}); the runner's log has the details"
                ))),
                // stdout closed without a signal: the process is going away.
                None => Err(crashed_at_start(&mut exit_wait).await),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                tracing::debug!(
                    instance = &*id,
                    pid,
                    ms = started_at.elapsed().as_millis() as u64,
                    "instance ready"
                );
                if let Some(f) = &inner.freezer {
                    f.arm();
                }
                Ok(Arc::new(NoneInstance { inner }))
            }
            Ok(Err(e)) => {
                tracing::warn!(instance = &*id, error = %e, "instance failed to start");
                inner.kill_now();
                Err(e)
            }
            Err(_) => {
                inner.kill_now();
                Err(SandboxError::StartTimedOut(
                    spec.start_timeout.as_millis() as u64
                ))
            }
        }
    }
}

async fn crashed_at_start(exit: &mut watch::Receiver<Option<Exit>>) -> SandboxError {
    let _ = tokio::time::timeout(CRASH_GRACE, exit.wait_for(|s| s.is_some()))
        .await
        .map(|r| r.is_ok());
    let status = exit
        .borrow()
        .as_ref()
        .map(|e| e.status.clone())
        .unwrap_or_else(|| "still running".into());
    SandboxError::StartFailed(format!(
        "the runtime exited before it was ready ({status}); the runner's log has the details"
    ))
}

struct State {
    in_flight: usize,
    served: u64,
    last_used: Instant,
    draining: bool,
}

/// How the process ended, as the reaper saw it.
#[derive(Debug, Clone)]
struct Exit {
    status: String,
    /// Breach counters read just before the cgroup was removed.
    counters: Counters,
    /// The cgroup (if any) is removed.
    cleaned: bool,
}

/// Which limit an instance broke; the first one wins and names the error of every call that
/// fails with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breach {
    Memory,
    Cpu,
    Pids,
    Response,
    Timeout,
}

struct Inner {
    id: Arc<str>,
    /// Keep-alive connections to the shim's socket.
    conns: ShimConns,
    work_dir: PathBuf,
    request_timeout: Duration,
    memory_mib: u64,
    limits: crate::ResourceLimits,
    /// CPU budget and breach counters of the calls in flight (with a cgroup only).
    sampler: Option<Arc<Sampler>>,
    /// Freezes the cgroup while no call is in flight (with a usable freezer, unless turned off).
    freezer: Option<Arc<IdleFreezer>>,
    cgroup: Option<Arc<InstanceCgroup>>,
    /// Backend resources that live as long as the instance.
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    breach: Mutex<Option<Breach>>,
    pid: u32,
    started_at: Instant,
    kill: Arc<Notify>,
    killed: std::sync::atomic::AtomicBool,
    exit_rx: watch::Receiver<Option<Exit>>,
    /// Notified when `in_flight` drops to zero.
    idle: Notify,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kill_now(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kill.notify_one();
        // A frozen process would not die of the reaper's SIGKILL (v1) until thawed.
        if let Some(f) = &self.freezer {
            f.kill();
        }
    }

    fn exit_status(&self) -> Option<String> {
        self.exit_rx.borrow().as_ref().map(|e| e.status.clone())
    }

    fn timed_out(&self) -> SandboxError {
        self.breach(Breach::Timeout)
    }

    /// Records a breach (the first one sticks), kills the instance and returns the error that
    /// names it. The cgroup goes with the process (the reaper removes it).
    fn breach(&self, b: Breach) -> SandboxError {
        let first = {
            let mut g = self.breach.lock().unwrap_or_else(|p| p.into_inner());
            *g.get_or_insert(b)
        };
        let err = self.breach_error(first);
        if !self.killed.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                instance = &*self.id,
                error = err.code(),
                "{err}; killing the instance"
            );
        }
        self.kill_now();
        err
    }

    fn breach_error(&self, b: Breach) -> SandboxError {
        match b {
            Breach::Memory => SandboxError::MemoryLimitExceeded(self.memory_mib),
            Breach::Cpu => SandboxError::CpuLimitExceeded(
                self.limits.cpu_budget.unwrap_or_default().as_millis() as u64,
            ),
            Breach::Pids => SandboxError::TooManyProcesses(self.limits.pids),
            Breach::Response => SandboxError::ResponseTooLarge(self.limits.max_response_bytes),
            Breach::Timeout => SandboxError::TimedOut(self.request_timeout.as_millis() as u64),
        }
    }

    /// The cgroup's breach counters: live while it exists, else as the reaper last read them.
    fn counters(&self) -> Counters {
        let live = self
            .cgroup
            .as_ref()
            .map(|c| c.counters())
            .unwrap_or_default();
        // The reaper publishes its reading before removing the cgroup, so a reading of a removed
        // cgroup is replaced by it here.
        match self.exit_rx.borrow().as_ref() {
            Some(e) => e.counters,
            None => live,
        }
    }

    /// A breach that explains a failed call: one already recorded, or a counter that moved
    /// since the call began.
    fn breach_since(&self, start: Counters) -> Option<Breach> {
        if let Some(b) = *self.breach.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(b);
        }
        let now = self.counters();
        if now.oom_kills > start.oom_kills {
            Some(Breach::Memory)
        } else if now.pids_refused > start.pids_refused {
            Some(Breach::Pids)
        } else {
            None
        }
    }

    /// After a broken connection: a breach, a crash if the process ended, else a generic failure.
    async fn broken(&self, e: &str, start: Counters) -> SandboxError {
        let mut rx = self.exit_rx.clone();
        let _ = tokio::time::timeout(CRASH_GRACE, rx.wait_for(|s| s.is_some()))
            .await
            .map(|r| r.is_ok());
        if let Some(b) = self.breach_since(start) {
            return self.breach(b);
        }
        tracing::warn!(instance = &*self.id, error = %e, "call to the instance failed");
        match self.exit_status() {
            Some(status) => SandboxError::BundleCrashed(status),
            None => SandboxError::BundleFailed(
                "the runtime did not answer properly; the runner's log has details".into(),
            ),
        }
    }
}

impl SamplerOwner for Inner {
    fn alive(&self) -> bool {
        !self.killed.load(std::sync::atomic::Ordering::SeqCst) && self.exit_rx.borrow().is_none()
    }

    fn over_budget(&self) {
        self.breach(Breach::Cpu);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.kill.notify_one();
        if let Some(f) = &self.freezer {
            f.kill();
        }
        remove_work_dir(&self.id, &self.work_dir);
    }
}

/// Counts a call as in flight until its response body ends or is dropped.
/// Dropping it also ends the call's CPU budget.
struct InFlight {
    inner: Arc<Inner>,
    /// Breach counters when the call began, to name a death during it.
    start: Counters,
    /// The call's number in the sampler.
    call: Option<u64>,
    /// The idle freezer let this call in (it counts as busy there).
    entered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(s), Some(id)) = (&self.inner.sampler, self.call) {
            s.end(id);
        }
        if let (Some(f), true) = (&self.inner.freezer, self.entered) {
            f.leave();
        }
        let mut st = self.inner.state();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.last_used = Instant::now();
        if st.in_flight == 0 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// One `none` instance.
pub struct NoneInstance {
    inner: Arc<Inner>,
}

impl NoneInstance {
    fn begin(&self) -> Result<InFlight, SandboxError> {
        if !self.is_alive() {
            return Err(SandboxError::BundleCrashed(
                self.inner.exit_status().unwrap_or_else(|| "killed".into()),
            ));
        }
        let mut st = self.inner.state();
        if st.draining {
            return Err(SandboxError::Draining);
        }
        st.in_flight += 1;
        st.served += 1;
        st.last_used = Instant::now();
        drop(st);
        let mut guard = InFlight {
            inner: self.inner.clone(),
            start: Counters::default(),
            call: None,
            entered: false,
        };
        // Thawed before anything is sent, and before the sampler's reading that starts the
        // call's CPU budget.
        if let Some(f) = &self.inner.freezer {
            if let Err(e) = f.enter() {
                tracing::error!(instance = &*self.inner.id, error = %e, "killing the instance");
                self.inner.kill_now();
                return Err(SandboxError::BundleCrashed(format!("{e}; killed")));
            }
            guard.entered = true;
        }
        if let Some(s) = &self.inner.sampler {
            let c = s.begin(&self.inner);
            guard.start = c.counters;
            guard.call = Some(c.id);
        }
        Ok(guard)
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// The request as the shim receives it.
/// Reuses the caller's parts (no copy of the headers) and drops what must not reach the shim.
fn to_shim_request(
    endpoint: &str,
    request: http::Request<axum::body::Body>,
) -> Result<http::Request<axum::body::Body>, SandboxError> {
    let endpoint_value = HeaderValue::from_str(endpoint)
        .map_err(|_| SandboxError::EndpointNotFound(endpoint.to_string()))?;
    let (mut parts, body) = request.into_parts();
    let origin_form = parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path().starts_with('/');
    if !origin_form {
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|s| s.starts_with('/'))
            .unwrap_or("/");
        parts.uri = http::Uri::try_from(path)
            .map_err(|e| SandboxError::BadInput(format!("the request path is not valid: {e}")))?;
    }
    parts.version = http::Version::HTTP_11;
    parts.extensions.clear();
    let headers = &mut parts.headers;
    let strip = |k: &HeaderName| is_hop_by_hop(k) || k.as_str().starts_with(RESERVED_PREFIX);
    if headers.keys().any(strip) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| strip(k)).cloned().collect();
        for k in names {
            headers.remove(k);
        }
    }
    if headers.get(http::header::HOST).is_none_or(|h| h.is_empty()) {
        headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    headers.insert(ENDPOINT_HEADER, endpoint_value);
    Ok(http::Request::from_parts(parts, body))
}

/// The structured failure the shim reported, as a `SandboxError`.
async fn shim_error(
    name: &str,
    endpoint: &str,
    body: hyper::body::Incoming,
    deadline: tokio::time::Instant,
) -> Result<SandboxError, ()> {
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
    let bytes = tokio::time::timeout_at(deadline, limited.collect())
        .await
        .map_err(|_| ())?
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(clean_message))
        .unwrap_or_else(|| "no details".into());
    Ok(match name {
        "EndpointNotFound" => SandboxError::EndpointNotFound(endpoint.to_string()),
        "InvalidInput" => SandboxError::BadInput(message),
        "MethodNotAllowed" => SandboxError::MethodNotAllowed(message),
        _ => SandboxError::BundleFailed(message),
    })
}

fn clean_message(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_MESSAGE)
        .collect()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body on its way out: enforces the request deadline and ends the in-flight count.
struct TrackedBody {
    body: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    guard: Option<InFlight>,
    /// Bytes relayed so far, against `ResourceLimits::max_response_bytes`.
    sent: u64,
    /// The connection the body arrives on: kept for the next call once the body has ended,
    /// closed (dropped) when it ends otherwise.
    conn: Option<ShimSender>,
}

impl TrackedBody {
    /// The body ended cleanly: its connection is free for the next call.
    fn finish(&mut self) {
        if let (Some(conn), Some(guard)) = (self.conn.take(), &self.guard) {
            guard.inner.conns.put_back(conn);
        }
        self.guard = None;
    }

    /// The body failed or was cut: its connection is not reused.
    fn fail(&mut self) {
        self.conn = None;
        self.guard = None;
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // A body the server never polls because it is known to be empty still ended cleanly.
        if self.guard.is_some() && http_body::Body::is_end_stream(&self.body) {
            self.finish();
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(guard) = &this.guard else {
            return Poll::Ready(None);
        };
        if this.deadline.as_mut().poll(cx).is_ready() {
            let err = guard.inner.timed_out();
            this.fail();
            return Poll::Ready(Some(Err(Box::new(err))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let err: BoxError = match guard.inner.breach_since(guard.start) {
                    Some(b) => Box::new(guard.inner.breach(b)),
                    None => Box::new(e),
                };
                this.fail();
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent = this.sent.saturating_add(data.len() as u64);
                    // Cut before relaying the frame that passes the cap.
                    if this.sent > guard.inner.limits.max_response_bytes {
                        let err = guard.inner.breach(Breach::Response);
                        this.fail();
                        return Poll::Ready(Some(Err(Box::new(err))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[async_trait::async_trait]
impl Instance for NoneInstance {
    async fn execute(
        &self,
        call: Invocation,
    ) -> Result<http::Response<axum::body::Body>, SandboxError> {
        let guard = self.begin()?;
        let inner = &self.inner;
        let start = guard.start;
        let deadline = tokio::time::Instant::now() + inner.request_timeout;
        let req = to_shim_request(&call.endpoint, call.request)?;

        let sent = tokio::time::timeout_at(deadline, inner.conns.send(req)).await;
        let (res, conn) = match sent {
            Err(_) => return Err(inner.timed_out()),
            Ok(Err(e)) => return Err(inner.broken(&e, start).await),
            Ok(Ok(r)) => r,
        };

        let (mut parts, body) = res.into_parts();
        if let Some(name) = parts.headers.get(ERROR_HEADER) {
            // Rare: the connection is not kept (its body may be left unread).
            drop(conn);
            let name = name.to_str().unwrap_or("BundleFailed").to_string();
            return match shim_error(&name, &call.endpoint, body, deadline).await {
                // A Worker that could not get a thread surfaces as a thrown error.
                Ok(e) => Err(match inner.breach_since(start) {
                    Some(b) => inner.breach(b),
                    None => e,
                }),
                Err(()) => Err(inner.timed_out()),
            };
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > inner.limits.max_response_bytes) {
            return Err(inner.breach(Breach::Response));
        }
        let strip = |k: &HeaderName| k.as_str().starts_with(RESERVED_PREFIX) || is_hop_by_hop(k);
        if parts.headers.keys().any(strip) {
            let reserved: Vec<HeaderName> =
                parts.headers.keys().filter(|k| strip(k)).cloned().collect();
            for k in reserved {
                parts.headers.remove(k);
            }
        }
        let body = TrackedBody {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            guard: Some(guard),
            sent: 0,
            conn: Some(conn),
        };
        Ok(http::Response::from_parts(
            parts,
            axum::body::Body::new(body),
        ))
    }

    fn stats(&self) -> InstanceStats {
        let st = self.inner.state();
        InstanceStats {
            in_flight: st.in_flight,
            served: st.served,
            started_at: self.inner.started_at,
            last_used: st.last_used,
            pid: self.is_alive().then_some(self.inner.pid),
        }
    }

    async fn drain(&self) {
        self.inner.state().draining = true;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.state().in_flight == 0 || !self.is_alive() {
                return;
            }
            idle.await;
        }
    }

    async fn shutdown(&self) {
        self.inner.state().draining = true;
        self.inner.kill_now();
        let mut rx = self.inner.exit_rx.clone();
        // Exited and its cgroup removed.
        let done = |s: &Option<Exit>| s.as_ref().is_some_and(|e| e.cleaned);
        let exited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(done))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if !exited {
            tracing::error!(
                instance = &*self.inner.id,
                pid = self.inner.pid,
                "instance did not exit (or its cgroup was not removed) after SIGKILL"
            );
        }
        remove_work_dir(&self.inner.id, &self.inner.work_dir);
    }

    fn is_alive(&self) -> bool {
        !self.inner.killed.load(std::sync::atomic::Ordering::SeqCst)
            && self.inner.exit_rx.borrow().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "i1".into(),
            bundle_file: "/store/ab.js".into(),
            work_dir: "/run/w/i1".into(),
            data_dir: "/data/b".into(),
            deno_dir: "/deno/b".into(),
            permissions: Default::default(),
            env: vec![],
            memory_mib: 128,
            request_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            limits: Default::default(),
        }
    }

    fn args(s: &InstanceSpec) -> Result<Vec<String>, SandboxError> {
        Ok(deno_args(
            s,
            Path::new("/run/w/i1/shim.ts"),
            Path::new("/run/w/i1/s.sock"),
        )?
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect())
    }

    #[test]
    fn minimal_flags() {
        let a = args(&spec()).unwrap();
        for f in [
            "--no-prompt",
            "--no-remote",
            "--no-npm",
            "--cached-only",
            "--no-config",
            "--no-lock",
            "--v8-flags=--max-old-space-size=128",
            "--allow-read=/store/ab.js,/run/w/i1/s.sock",
            "--allow-write=/run/w/i1/s.sock",
            "--allow-net=unix:/run/w/i1/s.sock",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--allow-env")
            || x.starts_with("--allow-run")
            || x == "--allow-all"
            || x == "-A"
            || x == "--allow-sys"
            || x == "--allow-ffi"));
        assert_eq!(
            &a[a.len() - 3..],
            ["/run/w/i1/shim.ts", "/store/ab.js", "/run/w/i1/s.sock"]
        );
    }

    #[test]
    fn manifest_permissions_become_flags() {
        let mut s = spec();
        s.permissions.net = vec!["example.com:443".into()];
        s.permissions.read = vec!["in".into()];
        s.permissions.write = vec!["out/x".into()];
        s.permissions.run = vec!["ffmpeg".into()];
        s.permissions.sys = true;
        s.permissions.ffi = true;
        s.env = vec![("API_KEY".into(), "secret-value".into())];
        let a = args(&s).unwrap();
        for f in [
            "--allow-read=/store/ab.js,/run/w/i1/s.sock,/data/b/in",
            "--allow-write=/run/w/i1/s.sock,/data/b/out/x",
            "--allow-net=unix:/run/w/i1/s.sock,example.com:443",
            "--allow-run=ffmpeg",
            "--allow-sys",
            "--allow-ffi",
            "--allow-env=API_KEY",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("secret-value")));
    }

    #[test]
    fn commas_and_bad_env_names_are_refused() {
        let mut s = spec();
        s.permissions.read = vec!["a,/etc".into()];
        assert_eq!(args(&s).unwrap_err().code(), "StartFailed");
        let mut s = spec();
        s.permissions.net = vec!["a.com,b.com".into()];
        assert!(args(&s).is_err());
        let mut s = spec();
        s.data_dir = "/data/x,/etc".into();
        s.permissions.write = vec!["w".into()];
        assert!(args(&s).is_err());
        for bad in ["DENO_DIR", "LD_PRELOAD", "A,B", "", "1X", "A=B", "NO_COLOR"] {
            let mut s = spec();
            s.env = vec![(bad.into(), "v".into())];
            let e = args(&s).unwrap_err();
            assert!(!e.to_string().contains("=v"), "{e}");
        }
    }

    #[test]
    fn start_signals() {
        assert!(matches!(
            parse_signal(r#"{"atrund":"ready","abi":1}"#),
            Some(StartSignal::Ready)
        ));
        assert!(parse_signal(r#"{"atrund":"ready","abi":2}"#).is_none());
        assert!(matches!(
            parse_signal(r#"{"atrund":"load-failed","name":"SyntaxError"}"#),
            Some(StartSignal::LoadFailed(n)) if n == "SyntaxError"
        ));
        assert!(matches!(
            parse_signal(r#"{"atrund":"load-failed","name":"root:x:0:0:root:/root:/bin/bash"}"#),
            Some(StartSignal::LoadFailed(n)) if n == "Error"
        ));
        for junk in [
            "",
            "ready",
            "{\"atrund\":",
            "{\"atrund\":1}",
            "{\"atrund\":\"x\"}",
            "\u{0}",
        ] {
            assert!(parse_signal(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn shim_request_strips_reserved_and_sets_endpoint() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a/b?x=1")
            .header("x-atrund-endpoint", "evil")
            .header("x-atrund-error", "EndpointNotFound")
            .header("connection", "close")
            .header("content-type", "application/json")
            .body(axum::body::Body::empty())
            .unwrap();
        let out = to_shim_request("greet", req).unwrap();
        assert_eq!(out.uri(), "/a/b?x=1");
        assert_eq!(out.headers()["x-atrund-endpoint"], "greet");
        assert!(out.headers().get("x-atrund-error").is_none());
        assert!(out.headers().get("connection").is_none());
        assert_eq!(out.headers()["host"], "localhost");
        assert_eq!(out.headers()["content-type"], "application/json");
        let bad = to_shim_request("a\nb", http::Request::new(axum::body::Body::empty()));
        assert_eq!(bad.unwrap_err().code(), "EndpointNotFound");
        // Absolute-form and HTTP/2 requests still reach the shim as origin-form HTTP/1.1.
        let abs = http::Request::builder()
            .uri("http://example.com/x?y=1")
            .version(http::Version::HTTP_2)
            .body(axum::body::Body::empty())
            .unwrap();
        let out = to_shim_request("e", abs).unwrap();
        assert_eq!(out.uri(), "/x?y=1");
        assert_eq!(out.version(), http::Version::HTTP_11);
    }
}
