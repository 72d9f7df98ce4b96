//! Starting one instance's process, as named steps under one clean-up guard.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::{oneshot, watch, Notify};

use super::instance::{Exit, Inner, ProcessInstance, State, CRASH_GRACE};
use super::{remove_work_dir, Join, Launch};
use crate::cgroup::{CgroupLimits, CgroupManager, InstanceCgroup};
use crate::freeze::IdleFreezer;
use crate::output::{for_each_line, Masker};
use crate::sampler::Sampler;
use crate::shim_conn::ShimConns;
use crate::{sys, Instance, InstanceSpec, SandboxError};

/// What the shim waits for on stdin before it imports the bundle.
const GO: &[u8] = b"go\n";

/// Where an instance's console lines go besides the runner's log: set at the start, or (a
/// generic sandbox) when it is specialised.
#[derive(Clone, Default)]
pub(super) struct OutputTo(Arc<std::sync::OnceLock<crate::OutputSink>>);

impl OutputTo {
    pub(super) fn now(sink: Option<crate::OutputSink>) -> Self {
        let o = Self::default();
        if let Some(s) = sink {
            o.set(s);
        }
        o
    }

    /// Sets it once; a second call changes nothing.
    pub(super) fn set(&self, sink: crate::OutputSink) {
        let _ = self.0.set(sink);
    }

    fn get(&self) -> Option<&crate::OutputSink> {
        self.0.get()
    }
}

/// What the shim said on stdout before it was ready.
pub(super) enum StartSignal {
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

/// Starts the process of `l` and waits until its shim is ready. The steps, in order:
/// [`create_cgroup`] and [`spawn`] (or, with a spare launcher ready, [`start_spare`] instead of
/// both), the connect gate (`none`), [`start_placing`] (with [`Join::AfterSpawn`]),
/// [`forward_output`], [`await_placement`], [`send_go`], [`spawn_reaper`], then the instance
/// exists and [`wait_ready`] waits for its ready signal. Until the reaper owns the process and
/// the instance owns the work dir, one [`StartGuard`] undoes what was made.
pub(crate) async fn launch(l: Launch<'_>) -> Result<Arc<dyn Instance>, SandboxError> {
    let Launch {
        spec,
        cmd,
        program,
        socket,
        cgroups,
        nofile,
        started_at,
        mut keep,
        inherit,
        run_as,
        confine,
        gate,
        join,
        spares,
        vm,
    } = l;
    let limits = match &vm {
        Some(v) => v.host_limits,
        None => cgroup_limits(spec),
    };
    let id: Arc<str> = spec.id.as_str().into();
    let mut guard = StartGuard {
        id: id.clone(),
        work_dir: Some(spec.work_dir.clone()),
        cgroup: None,
    };
    // Dropped when the start is over, either way: parking a launcher costs CPU the start wants.
    let _refill = spares.map(RefillWhenDone);
    let taken = match (spares, cgroups) {
        (Some(s), Some(m)) if inherit.is_empty() => s.take(m, &spec.id, limits),
        _ => None,
    };
    let from_spare = taken.is_some();
    let (cgroup, mut child) = match taken {
        Some(t) => {
            let cgroup = Arc::new(t.cgroup);
            guard.cgroup = Some(cgroup.clone());
            let child = start_spare(t.child, &cmd, nofile, spec, &id, started_at).await?;
            (Some(cgroup), child)
        }
        None => {
            let cgroup = match cgroups {
                Some(m) => Some(create_cgroup(m, &spec.id, limits)?),
                None => None,
            };
            guard.cgroup = cgroup.clone();
            let procs = match (&cgroup, join) {
                (Some(c), Join::BeforeExec) => c.procs_files(),
                _ => Vec::new(),
            };
            let child = spawn(
                cmd,
                program,
                sys::ChildSetup {
                    procs,
                    nofile: Some(nofile),
                    // A VMM's guest RAM is a memfd as large as the guest: the file limit is
                    // the guest's to apply to the instance.
                    fsize: vm.is_none().then_some(spec.limits.max_file_bytes),
                    inherit,
                    run_as,
                    confine,
                },
            )?;
            (cgroup, child)
        }
    };
    if let Some(gate) = gate {
        match gate.open(&id) {
            Ok(g) => keep.push(Box::new(g)),
            Err(e) => {
                tracing::warn!(instance = &*id, error = %e, "instance failed to start");
                if let Some(pid) = child.id() {
                    kill_group(pid);
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(e);
            }
        }
    }
    // Not yet reaped, so it has a pid (0 would make `place` move the daemon itself).
    let pid = child.id().filter(|p| *p != 0);
    let placing = match (&cgroup, join) {
        (Some(cg), Join::AfterSpawn) if !from_spare => Some(start_placing(cg, pid, &id)),
        _ => None,
    };
    let pid = pid.unwrap_or(0);
    let ready_rx = forward_output(
        &mut child,
        &id,
        Masker::new(&spec.env),
        OutputTo::now(spec.output.clone()),
    );
    // Before the reaper exists: nothing reaps the child while its pid is written.
    if let Some(placing) = placing {
        await_placement(placing, &mut child, pid, &id).await?;
    }
    send_go(&mut child, &id, started_at).await;
    let report = vm.as_ref().map(|v| v.exit_report.clone());
    let (kill, exit_rx) = spawn_reaper(child, pid, cgroup.clone(), id.clone(), report);
    // The reaper removes the cgroup when the process ends; the instance removes the work dir.
    guard.cgroup = None;
    guard.work_dir = None;

    let inner = new_inner(
        spec,
        Process {
            id: id.clone(),
            conns: ShimConns::new(socket, vm.as_ref().map(|v| v.vsock_port)),
            work_dir: spec.work_dir.clone(),
            cgroup,
            keep,
            pid,
            kill,
            exit_rx,
        },
        started_at,
    );
    wait_ready(inner, ready_rx, spec.start_timeout).await
}

/// A started process, as an instance holds it.
pub(super) struct Process {
    pub id: Arc<str>,
    pub conns: ShimConns,
    pub work_dir: PathBuf,
    pub cgroup: Option<Arc<InstanceCgroup>>,
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    pub pid: u32,
    pub kill: Arc<Notify>,
    pub exit_rx: watch::Receiver<Option<Exit>>,
}

/// The instance state of process `p` running `spec`'s bundle (its limits and timeouts).
pub(super) fn new_inner(spec: &InstanceSpec, p: Process, started_at: Instant) -> Arc<Inner> {
    Arc::new(Inner {
        id: p.id,
        conns: p.conns,
        work_dir: p.work_dir,
        request_timeout: spec.request_timeout,
        memory_mib: spec.memory_mib,
        limits: spec.limits,
        sampler: p
            .cgroup
            .clone()
            .map(|cg| Arc::new(Sampler::new(cg, spec.limits.cpu_budget))),
        freezer: p.cgroup.as_ref().and_then(IdleFreezer::new),
        cgroup: p.cgroup,
        _keep: p.keep,
        breach: Mutex::new(None),
        pid: p.pid,
        started_at,
        kill: p.kill,
        killed: std::sync::atomic::AtomicBool::new(false),
        exit_rx: p.exit_rx,
        idle: Notify::new(),
        state: Mutex::new(State {
            in_flight: 0,
            served: 0,
            last_used: started_at,
            draining: false,
        }),
    })
}

/// Asks the spare launchers for a refill when dropped.
struct RefillWhenDone<'a>(&'a crate::spare::SpareLaunchers);

impl Drop for RefillWhenDone<'_> {
    fn drop(&mut self) {
        self.0.refill();
    }
}

/// Undoes a start that did not get as far as an instance: removes the instance cgroup (until the
/// reaper owns it) and the work dir (until the instance owns it).
struct StartGuard {
    id: Arc<str>,
    work_dir: Option<PathBuf>,
    cgroup: Option<Arc<InstanceCgroup>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        // Done before the start's error returns, as the reaper does for a started instance: the
        // process (if any) is already reaped, so the cgroup is empty and goes at once.
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.remove() {
                tracing::error!(instance = &*self.id, error = %e, "could not remove the instance cgroup");
            }
        }
        if let Some(dir) = self.work_dir.take() {
            remove_work_dir(&self.id, &dir);
        }
    }
}

/// Step 1: the instance's own cgroup under the runner's parents, with its limits.
pub(super) fn create_cgroup(
    m: &Arc<CgroupManager>,
    id: &str,
    limits: CgroupLimits,
) -> Result<Arc<InstanceCgroup>, SandboxError> {
    let t = Instant::now();
    let cg = m.create(id, limits)?;
    tracing::debug!(instance = %id, us = t.elapsed().as_micros() as u64, "instance cgroup created");
    Ok(Arc::new(cg))
}

/// Step 2: spawns the command with the child set-up of `sys` (cgroup join before exec when
/// `procs` names files, RLIMIT_NOFILE and RLIMIT_FSIZE, inherited descriptors, Landlock and
/// seccomp) and stdin piped for `go`.
pub(super) fn spawn(
    mut cmd: tokio::process::Command,
    program: &std::path::Path,
    setup: sys::ChildSetup,
) -> Result<Child, SandboxError> {
    sys::install(&mut cmd, setup);
    cmd.stdin(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| {
        tracing::warn!(program = %program.display(), error = %e, "could not spawn the runtime");
        SandboxError::StartFailed(format!(
            "the runtime could not be spawned ({e}); the runner's log names the program"
        ))
    })?;
    // Dropping the command closes the Landlock ruleset's descriptor in the daemon (the child
    // has applied it).
    drop(cmd);
    Ok(child)
}

/// The cgroup limits of `spec`.
fn cgroup_limits(spec: &InstanceSpec) -> CgroupLimits {
    CgroupLimits {
        memory_mib: spec.memory_mib,
        pids: spec.limits.pids,
        cpu_quota_percent: spec.limits.cpu_quota_percent,
    }
}

/// Steps 1 and 2 from a spare launcher (`spare`), whose cgroup already carries the instance's
/// name and limits: it is sent `cmd` with the limits `spawn` would set, and execs it.
async fn start_spare(
    mut child: Child,
    cmd: &tokio::process::Command,
    nofile: u64,
    spec: &InstanceSpec,
    id: &Arc<str>,
    started_at: Instant,
) -> Result<Child, SandboxError> {
    crate::spare::start(&mut child, cmd, nofile, spec.limits.max_file_bytes)
        .await
        .inspect_err(
            |e| tracing::warn!(instance = &**id, error = %e, "instance failed to start"),
        )?;
    tracing::debug!(
        instance = &**id,
        us = started_at.elapsed().as_micros() as u64,
        "started from a spare launcher"
    );
    Ok(child)
}

type Placing = tokio::task::JoinHandle<Result<(), SandboxError>>;

/// Step 3 ([`Join::AfterSpawn`]): moves the process into its cgroup from a blocking thread while
/// Deno starts.
fn start_placing(cg: &Arc<InstanceCgroup>, pid: Option<u32>, id: &Arc<str>) -> Placing {
    let Some(pid) = pid else {
        return tokio::task::spawn_blocking(|| {
            Err(SandboxError::StartFailed(
                "the spawned runtime has no pid to place in its cgroup".into(),
            ))
        });
    };
    let (cg, id, t) = (cg.clone(), id.clone(), Instant::now());
    tokio::task::spawn_blocking(move || {
        let r = cg.place(pid);
        tracing::debug!(instance = %id, us = t.elapsed().as_micros() as u64, "instance placed in its cgroup");
        r
    })
}

/// Step 4: stdout and stderr to tracing, line by line, secret values masked (a bundle that
/// prints its own secret must not put it into the runner's log), and to the spec's
/// [`OutputSink`](crate::OutputSink) when it has one (the same masked text); the shim's start
/// signal on stdout goes to the returned channel instead. A generic sandbox gets its masker's
/// secrets and its sink when it is specialised (`parked`).
pub(super) fn forward_output(
    child: &mut Child,
    id: &Arc<str>,
    masker: Masker,
    sink: OutputTo,
) -> oneshot::Receiver<StartSignal> {
    use crate::OutputStream;
    let (ready_tx, ready_rx) = oneshot::channel::<StartSignal>();
    if let Some(out) = child.stdout.take() {
        let id = id.clone();
        let masker = masker.clone();
        let sink = sink.clone();
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
                if let Some(sink) = sink.get() {
                    sink(OutputStream::Stdout, line);
                }
            })
            .await;
        });
    }
    if let Some(err) = child.stderr.take() {
        let id = id.clone();
        tokio::spawn(async move {
            for_each_line(err, &masker, |line| {
                if crate::output::is_broker_notice(line) {
                    tracing::debug!(instance = &*id, stream = "stderr", "{line}");
                    return;
                }
                tracing::warn!(instance = &*id, stream = "stderr", "{line}");
                if let Some(sink) = sink.get() {
                    sink(OutputStream::Stderr, line);
                }
            })
            .await;
        });
    }
    ready_rx
}

/// Step 5: waits for step 3; if the process could not be placed it is killed (it must not run
/// bundle code outside its limits) and the start fails.
async fn await_placement(
    placing: Placing,
    child: &mut Child,
    pid: u32,
    id: &Arc<str>,
) -> Result<(), SandboxError> {
    let placed = placing.await.unwrap_or_else(|e| {
        Err(SandboxError::StartFailed(format!(
            "placing the runtime in its cgroup failed: {e}"
        )))
    });
    let Err(e) = placed else {
        return Ok(());
    };
    let e = match child.try_wait() {
        // Reaped now: its pid and group are no longer ours to signal.
        Ok(Some(status)) => SandboxError::StartFailed(format!(
            "the runtime exited before it was ready ({status}); the runner's log has the details"
        )),
        _ => {
            kill_group(pid);
            let _ = child.start_kill();
            let _ = child.wait().await;
            e
        }
    };
    tracing::warn!(instance = &**id, error = %e, "instance failed to start");
    Err(e)
}

/// Step 6: the process is in its cgroup, so the shim may import the bundle. A failed write means
/// the process is gone, which the wait for the ready signal reports.
pub(super) async fn send_go(child: &mut Child, id: &Arc<str>, started_at: Instant) {
    tracing::debug!(
        instance = &**id,
        us = started_at.elapsed().as_micros() as u64,
        "go sent"
    );
    if let Some(mut go) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = go.write_all(GO).await {
            tracing::debug!(instance = &**id, error = %e, "could not send go to the shim");
        }
    }
}

/// SIGKILL to the process group `pid` leads (the runtime's own children included).
fn kill_group(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Step 7: the reaper owns the child from here: it alone waits and signals, so a kill never hits
/// a recycled pid (the zombie holds the pid until it is reaped here). When the process ends it
/// publishes the exit (with the breach counters, read before the cgroup goes, plus those of
/// `report`, a microVM guest's), then removes the cgroup. Returns the kill switch and the exit
/// channel.
pub(super) fn spawn_reaper(
    mut child: Child,
    pid: u32,
    cgroup: Option<Arc<InstanceCgroup>>,
    id: Arc<str>,
    report: Option<PathBuf>,
) -> (Arc<Notify>, watch::Receiver<Option<Exit>>) {
    let kill = Arc::new(Notify::new());
    let (exit_tx, exit_rx) = watch::channel::<Option<Exit>>(None);
    let kill_rx = kill.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = kill_rx.notified() => {
                kill_group(pid);
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let file_too_large = status.as_ref().is_ok_and(|s| {
            use std::os::unix::process::ExitStatusExt;
            let xfsz = nix::libc::SIGXFSZ;
            s.signal() == Some(xfsz) || s.code() == Some(128 + xfsz)
        });
        let text = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status: {e}"),
        };
        tracing::debug!(instance = &*id, status = %text, "instance process ended");
        // Counters first: they are gone with the cgroup.
        let mut counters = cgroup.as_ref().map(|c| c.counters()).unwrap_or_default();
        if let Some(path) = &report {
            let guest = crate::vm_launcher::read_exit_report(path);
            counters.oom_kills += guest.oom_kills;
            counters.pids_refused += guest.pids_refused;
        }
        exit_tx.send_replace(Some(Exit {
            status: text,
            counters,
            cleaned: cgroup.is_none(),
            file_too_large,
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
    (kill, exit_rx)
}

/// Step 8: waits (at most the start timeout) for the shim's ready signal; a load failure, an
/// exit or the timeout kills the instance and fails the start.
pub(super) async fn wait_ready(
    inner: Arc<Inner>,
    mut ready_rx: oneshot::Receiver<StartSignal>,
    start_timeout: Duration,
) -> Result<Arc<dyn Instance>, SandboxError> {
    let mut exit_wait = inner.exit_rx.clone();
    let outcome = tokio::time::timeout(start_timeout, async {
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
                instance = &*inner.id,
                pid = inner.pid,
                ms = inner.started_at.elapsed().as_millis() as u64,
                "instance ready"
            );
            if let Some(f) = &inner.freezer {
                f.arm();
            }
            Ok(Arc::new(ProcessInstance { inner }))
        }
        Ok(Err(e)) => {
            tracing::warn!(instance = &*inner.id, error = %e, "instance failed to start");
            inner.kill_now();
            Err(e)
        }
        Err(_) => {
            inner.kill_now();
            Err(SandboxError::StartTimedOut(start_timeout.as_millis() as u64))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
