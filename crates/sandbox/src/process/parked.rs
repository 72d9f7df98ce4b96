//! A parked process: the runtime of a generic sandbox, started before any bundle is known (in
//! its cgroup, its output forwarded, reaped like an instance's) and serving the readiness probe
//! on its socket. [`Parked::specialise`] hands it one bundle, once (the backend's line on its
//! stdin), sets the bundle's cgroup limits, secret masking and output sink, and makes it an
//! instance like any other ([`ProcessInstance`]). Dropped unspecialised, it is killed and its
//! work dir removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::ChildStdin;
use tokio::sync::{oneshot, watch, Notify};

use super::instance::Exit;
use super::launch::{
    forward_output, new_inner, spawn, spawn_reaper, wait_ready, OutputTo, Process, StartSignal,
};
use super::remove_work_dir;
use crate::cgroup::{CgroupLimits, CgroupManager, InstanceCgroup};
use crate::output::Masker;
use crate::shim_conn::ShimConns;
use crate::{sys, Instance, InstanceSpec, SandboxError};

/// What a backend hands to [`park`]: the built command of a generic sandbox, whose shim serves
/// `socket` and waits for its bundle on stdin.
pub(crate) struct Park<'a> {
    /// The sandbox's own id (its cgroup's name), not an instance's.
    pub id: &'a str,
    pub work_dir: PathBuf,
    pub cmd: tokio::process::Command,
    pub program: &'a Path,
    pub socket: PathBuf,
    pub cgroups: Option<&'a Arc<CgroupManager>>,
    /// The cgroup limits until it is specialised (the operator's caps).
    pub limits: CgroupLimits,
    pub nofile: u64,
    pub fsize: u64,
    pub inherit: Vec<std::os::fd::OwnedFd>,
    pub run_as: Option<crate::RunAs>,
    /// Spawn to the first answer of the readiness probe.
    pub start_timeout: Duration,
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// A started, unspecialised runtime.
pub(crate) struct Parked {
    id: Arc<str>,
    work_dir: PathBuf,
    conns: Option<ShimConns>,
    pid: u32,
    stdin: Option<ChildStdin>,
    kill: Arc<Notify>,
    exit_rx: watch::Receiver<Option<Exit>>,
    cgroup: Option<Arc<InstanceCgroup>>,
    cgroups: Option<Arc<CgroupManager>>,
    ready_rx: Option<oneshot::Receiver<StartSignal>>,
    masker: Masker,
    output: OutputTo,
    keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// Set once an instance owns the process and the work dir.
    handed_over: bool,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if !self.handed_over {
            // The reaper kills the process group and removes the cgroup.
            self.kill.notify_one();
            remove_work_dir(&self.id, &self.work_dir);
        }
    }
}

/// Starts the process of `p` and waits until its shim answers the readiness probe (the probe's
/// connection is kept for the first call).
pub(crate) async fn park(p: Park<'_>) -> Result<Parked, SandboxError> {
    let id: Arc<str> = p.id.into();
    let cgroup = match p.cgroups {
        Some(m) => match m.create(p.id, p.limits) {
            Ok(cg) => Some(Arc::new(cg)),
            Err(e) => {
                remove_work_dir(&id, &p.work_dir);
                return Err(e);
            }
        },
        None => None,
    };
    let procs = cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default();
    let spawned = spawn(
        p.cmd,
        p.program,
        sys::ChildSetup {
            procs,
            nofile: Some(p.nofile),
            fsize: Some(p.fsize),
            inherit: p.inherit,
            run_as: p.run_as,
            confine: None,
        },
    );
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
            remove_work_dir(&id, &p.work_dir);
            return Err(e);
        }
    };
    let pid = child.id().filter(|p| *p != 0).unwrap_or(0);
    let masker = Masker::later();
    let output = OutputTo::default();
    let ready_rx = forward_output(&mut child, &id, masker.clone(), output.clone());
    let stdin = child.stdin.take();
    let (kill, exit_rx) = spawn_reaper(child, pid, cgroup.clone(), id.clone(), None);
    let parked = Parked {
        id,
        work_dir: p.work_dir,
        conns: Some(ShimConns::new(p.socket, None)),
        pid,
        stdin,
        kill,
        exit_rx,
        cgroup,
        cgroups: p.cgroups.cloned(),
        ready_rx: Some(ready_rx),
        masker,
        output,
        keep: p.keep,
        handed_over: false,
    };
    parked.probe(p.start_timeout).await?;
    Ok(parked)
}

impl Parked {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether the process still runs.
    pub(crate) fn is_alive(&self) -> bool {
        self.exit_rx.borrow().is_none()
    }

    /// Resident memory of the sandbox now (its cgroup, else its first process).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        self.cgroup
            .as_ref()
            .and_then(|c| c.resident_bytes())
            .or_else(|| crate::resident_bytes(self.pid))
    }

    /// Asks the shim's readiness probe until it answers 200, the process ends or `timeout`.
    async fn probe(&self, timeout: Duration) -> Result<(), SandboxError> {
        use http_body_util::BodyExt;
        let Some(conns) = &self.conns else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit_rx.borrow().as_ref() {
                return Err(SandboxError::StartFailed(format!(
                    "the generic sandbox's runtime exited before it was ready ({}); the runner's log has the details",
                    exit.status
                )));
            }
            let req = http::Request::builder()
                .uri("/__atrund/ready")
                .header(http::header::HOST, "sandbox")
                .body(crate::empty_body())
                .map_err(|e| SandboxError::StartFailed(format!("probe request: {e}")))?;
            // Bounded: a shim that takes the connection and never answers must not hold the
            // start past its timeout.
            let asked = tokio::time::timeout_at(deadline.into(), async {
                let res = conns.send(req).await.ok()?;
                let ok = res.status() == http::StatusCode::OK;
                let mut body = res.into_body();
                while let Some(Ok(_)) = body.frame().await {}
                Some((ok, body.take_reusable()))
            })
            .await;
            if let Ok(Some((true, conn))) = asked {
                if let Some(conn) = conn {
                    conns.put_back(conn);
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::StartTimedOut(timeout.as_millis() as u64));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Hands the process its one bundle: the bundle's cgroup limits, then `line` on stdin (the
    /// shim sets the secrets and imports the bundle), and waits for the shim's ready signal.
    /// `keep` lives as long as the instance (its egress registration, broker, mounts).
    pub(crate) async fn specialise(
        mut self,
        spec: &InstanceSpec,
        line: Vec<u8>,
        keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Result<Arc<dyn Instance>, SandboxError> {
        let started_at = Instant::now();
        if let (Some(m), Some(_)) = (&self.cgroups, &self.cgroup) {
            m.set_limits(
                &self.id,
                CgroupLimits {
                    memory_mib: spec.memory_mib,
                    pids: spec.limits.pids,
                    cpu_quota_percent: spec.limits.cpu_quota_percent,
                },
            )?;
        }
        let limits_us = started_at.elapsed().as_micros() as u64;
        // Before the secrets reach the process: a line printing one is masked.
        self.masker.set(&spec.env);
        if let Some(sink) = spec.output.clone() {
            self.output.set(sink);
        }
        if let Some(mut stdin) = self.stdin.take() {
            use tokio::io::AsyncWriteExt;
            if let Err(e) = stdin.write_all(&line).await {
                tracing::debug!(sandbox = &*self.id, error = %e, "could not hand the bundle to the generic sandbox");
            }
        }
        self.keep.extend(keep);
        tracing::debug!(sandbox = &*self.id, instance = %spec.id, "generic sandbox specialised");
        let ready_rx = self.ready_rx.take().ok_or_else(|| {
            SandboxError::StartFailed("the generic sandbox was already specialised".into())
        })?;
        let cgroup = self.cgroup.take();
        let inner = new_inner(
            spec,
            Process {
                id: spec.id.as_str().into(),
                conns: self
                    .conns
                    .take()
                    .ok_or_else(|| SandboxError::StartFailed("no shim connection".into()))?,
                work_dir: self.work_dir.clone(),
                cgroup,
                keep: std::mem::take(&mut self.keep),
                pid: self.pid,
                kill: self.kill.clone(),
                exit_rx: self.exit_rx.clone(),
            },
            started_at,
        );
        // The instance owns the process and the work dir from here (its drop kills and removes).
        self.handed_over = true;
        let handed_us = started_at.elapsed().as_micros() as u64;
        let ready = wait_ready(inner, ready_rx, spec.start_timeout).await;
        tracing::debug!(
            instance = %spec.id,
            limits_us,
            handed_us,
            us = started_at.elapsed().as_micros() as u64,
            "generic sandbox: limits set, bundle handed over, imported"
        );
        ready
    }
}
