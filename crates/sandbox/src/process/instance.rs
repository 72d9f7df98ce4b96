//! A running instance ([`ProcessInstance`]): its calls in flight, breaches of its limits (the
//! first one names the error of every call that fails with it, and kills), its exit as the
//! reaper saw it, drain and kill.
//!
//! Owns: the instance's state after `launch`. Must not: start processes (`launch` does).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;

use http::header::HeaderName;
use tokio::sync::{watch, Notify};

use super::call::{is_hop_by_hop, shim_error, to_shim_request, ERROR_HEADER, RESERVED_PREFIX};
use super::remove_work_dir;
use crate::cgroup::{Counters, InstanceCgroup};
use crate::freeze::IdleFreezer;
use crate::sampler::{Sampler, SamplerOwner};
use crate::shim_conn::ShimConns;
use crate::shim_http::{ShimBody, ShimHttpError};
use crate::{Instance, InstanceStats, Invocation, SandboxError};

/// How long to wait for the exit status after a broken connection, to tell a crash apart.
pub(super) const CRASH_GRACE: Duration = Duration::from_millis(500);

pub(super) struct State {
    pub(super) in_flight: usize,
    pub(super) served: u64,
    pub(super) last_used: Instant,
    pub(super) draining: bool,
}

/// How the process ended, as the reaper saw it.
#[derive(Debug, Clone)]
pub(super) struct Exit {
    pub(super) status: String,
    /// Breach counters read just before the cgroup was removed.
    pub(super) counters: Counters,
    /// The cgroup (if any) is removed.
    pub(super) cleaned: bool,
    /// Stopped by SIGXFSZ: it wrote past RLIMIT_FSIZE (`none`: the signal; `container`: our
    /// init's exit status 128 + SIGXFSZ).
    pub(super) file_too_large: bool,
}

/// Which limit an instance broke; the first one wins and names the error of every call that
/// fails with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breach {
    Memory,
    Cpu,
    Pids,
    Response,
    /// The call's wall clock, in milliseconds, ran out.
    Timeout(u64),
    FileSize,
}

pub(super) struct Inner {
    pub(super) id: Arc<str>,
    /// Keep-alive connections to the shim's socket.
    pub(super) conns: ShimConns,
    pub(super) work_dir: PathBuf,
    pub(super) request_timeout: Duration,
    pub(super) memory_mib: u64,
    pub(super) limits: crate::ResourceLimits,
    /// CPU budget and breach counters of the calls in flight (with a cgroup only).
    pub(super) sampler: Option<Arc<Sampler>>,
    /// Freezes the cgroup while no call is in flight (with a usable freezer, unless turned off).
    pub(super) freezer: Option<Arc<IdleFreezer>>,
    pub(super) cgroup: Option<Arc<InstanceCgroup>>,
    /// Backend resources that live as long as the instance.
    pub(super) _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    pub(super) breach: Mutex<Option<Breach>>,
    pub(super) pid: u32,
    pub(super) started_at: Instant,
    pub(super) kill: Arc<Notify>,
    pub(super) killed: std::sync::atomic::AtomicBool,
    pub(super) exit_rx: watch::Receiver<Option<Exit>>,
    /// Notified when `in_flight` drops to zero.
    pub(super) idle: Notify,
    pub(super) state: Mutex<State>,
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn kill_now(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kill.notify_one();
        // A frozen process would not die of the reaper's SIGKILL (v1) until thawed.
        if let Some(f) = &self.freezer {
            f.kill();
        }
    }

    pub(super) fn exit_status(&self) -> Option<String> {
        self.exit_rx.borrow().as_ref().map(|e| e.status.clone())
    }

    /// The call ran past its wall clock of `limit`.
    pub(super) fn timed_out(&self, limit: Duration) -> SandboxError {
        self.breach(Breach::Timeout(limit.as_millis() as u64))
    }

    /// Records a breach (the first one sticks), kills the instance and returns the error that
    /// names it. The cgroup goes with the process (the reaper removes it).
    pub(super) fn breach(&self, b: Breach) -> SandboxError {
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

    pub(super) fn breach_error(&self, b: Breach) -> SandboxError {
        match b {
            Breach::Memory => SandboxError::MemoryLimitExceeded(self.memory_mib),
            Breach::Cpu => SandboxError::CpuLimitExceeded(
                self.limits.cpu_budget.unwrap_or_default().as_millis() as u64,
            ),
            Breach::Pids => SandboxError::TooManyProcesses(self.limits.pids),
            Breach::Response => SandboxError::ResponseTooLarge(self.limits.max_response_bytes),
            Breach::Timeout(ms) => SandboxError::TimedOut(ms),
            Breach::FileSize => SandboxError::FileTooLarge(self.limits.max_file_bytes),
        }
    }

    /// The cgroup's breach counters: live while it exists, else as the reaper last read them.
    pub(super) fn counters(&self) -> Counters {
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
    pub(super) fn breach_since(&self, start: Counters) -> Option<Breach> {
        if let Some(b) = *self.breach.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(b);
        }
        if self
            .exit_rx
            .borrow()
            .as_ref()
            .is_some_and(|e| e.file_too_large)
        {
            return Some(Breach::FileSize);
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
    pub(super) async fn broken(&self, e: &str, start: Counters) -> SandboxError {
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
pub(super) struct InFlight {
    pub(super) inner: Arc<Inner>,
    /// Breach counters when the call began, to name a death during it.
    pub(super) start: Counters,
    /// The call's number in the sampler.
    pub(super) call: Option<u64>,
    /// The idle freezer let this call in (it counts as busy there).
    pub(super) entered: bool,
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

/// One running instance of either backend.
pub struct ProcessInstance {
    pub(super) inner: Arc<Inner>,
}

impl ProcessInstance {
    pub(super) fn begin(&self) -> Result<InFlight, SandboxError> {
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

#[async_trait::async_trait]
impl Instance for ProcessInstance {
    async fn execute(&self, call: Invocation) -> Result<http::Response<crate::Body>, SandboxError> {
        let guard = self.begin()?;
        let inner = &self.inner;
        let start = guard.start;
        let limit = call.timeout.unwrap_or(inner.request_timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let req = to_shim_request(&call.endpoint, call.kind, call.request)?;

        // One timer for the whole call: it bounds the wait for the response head here, then
        // the body in `TrackedBody` (a second timer per call was measurable, issue 14).
        let mut timer = Box::pin(tokio::time::sleep_until(deadline));
        let send = inner.conns.send(req);
        tokio::pin!(send);
        let sent = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            timer.as_mut().poll(cx).map(Err)
        })
        .await;
        let res = match sent {
            Err(_) => return Err(inner.timed_out(limit)),
            // The caller's body failed (e.g. cut at the runner's cap): nothing to learn from the
            // instance, which is fine.
            Ok(Err(e @ ShimHttpError::RequestBody(_))) => {
                return Err(SandboxError::BadInput(e.to_string()))
            }
            Ok(Err(e)) => return Err(inner.broken(&e.to_string(), start).await),
            Ok(Ok(r)) => r,
        };

        let (mut parts, body) = res.into_parts();
        if let Some(name) = parts.headers.get(ERROR_HEADER) {
            // Rare: the connection is not kept (its body may be left unread).
            let name = name.to_str().unwrap_or("BundleFailed").to_string();
            return match shim_error(&name, &call.endpoint, body, deadline).await {
                // A Worker that could not get a thread surfaces as a thrown error.
                Ok(e) => Err(match inner.breach_since(start) {
                    Some(b) => inner.breach(b),
                    None => e,
                }),
                Err(()) => Err(inner.timed_out(limit)),
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
            deadline: timer,
            limit,
            guard: Some(guard),
            sent: 0,
        };
        Ok(http::Response::from_parts(parts, crate::boxed_body(body)))
    }

    fn cpu_usage(&self) -> Option<Duration> {
        self.inner.cgroup.as_ref()?.cpu_usage()
    }

    fn resident_bytes(&self) -> Option<u64> {
        self.inner
            .cgroup
            .as_ref()
            .and_then(|c| c.resident_bytes())
            .or_else(|| self.stats().pid.and_then(crate::resident_bytes))
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

/// The response body on its way out: enforces the request deadline and ends the in-flight count.
pub(super) struct TrackedBody {
    /// Holds the connection the body arrives on: kept for the next call once the body has
    /// ended cleanly, closed (dropped) otherwise.
    pub(super) body: ShimBody,
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
    /// The wall clock the deadline stands for, for the error.
    pub(super) limit: Duration,
    pub(super) guard: Option<InFlight>,
    /// Bytes relayed so far, against `ResourceLimits::max_response_bytes`.
    pub(super) sent: u64,
}

impl TrackedBody {
    /// The body ended cleanly: its connection is free for the next call.
    pub(super) fn finish(&mut self) {
        if let (Some(conn), Some(guard)) = (self.body.take_reusable(), &self.guard) {
            guard.inner.conns.put_back(conn);
        }
        self.guard = None;
    }

    /// The body failed or was cut: its connection is not reused.
    pub(super) fn fail(&mut self) {
        self.body.close();
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
    type Error = crate::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BodyError>>> {
        let this = self.get_mut();
        let Some(guard) = &this.guard else {
            return Poll::Ready(None);
        };
        if this.deadline.as_mut().poll(cx).is_ready() {
            let err = guard.inner.timed_out(this.limit);
            this.fail();
            return Poll::Ready(Some(Err(Box::new(err))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let err: crate::BodyError = match guard.inner.breach_since(guard.start) {
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
