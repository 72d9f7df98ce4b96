//! The pool of pre-warmed generic sandboxes (`pool.generic_sandboxes` for Deno,
//! `pool.generic_python_sandboxes` for Python; `container` only): an [`Executor`] in front of
//! the container backend that keeps a lane of ready sandboxes per runtime (bwrap, init, the
//! runtime and its shim up; `atrund_sandbox::GenericSandbox`) and answers a start by
//! specialising one of the bundle's runtime to the bundle. Each sandbox serves one instance, ever (specialising
//! consumes it); a background task refills the pool after each take, within its memory budget.
//! A bundle a generic sandbox cannot serve exactly, or a start when none is ready, goes to the
//! backend's normal start and is counted by reason; a failed specialisation is the start's
//! error (counted), never retried on another sandbox.
//!
//! Owns: the ready sandboxes, their refill and their counters. Must not: decide which bundles
//! run or with which limits (the spec arrives decided), or keep instances (the pool does).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use atrund_sandbox::{
    ContainerExecutor, Enforcement, Executor, GenericConfig, GenericPoolStats, GenericSandbox,
    Instance, InstanceSpec, SandboxError, UNFIT_REASONS,
};

/// How long the refill waits after a take before it starts a sandbox: the request that took
/// one is answered meanwhile without a start competing for its CPU (a small host runs both on
/// one core).
const REFILL_DELAY: Duration = Duration::from_millis(50);

/// The reasons a start goes the normal way, as counted: every reason a sandbox is unfit for a
/// bundle, and none ready.
const FALLBACKS: [&str; 5] = [
    UNFIT_REASONS[0],
    UNFIT_REASONS[1],
    UNFIT_REASONS[2],
    UNFIT_REASONS[3],
    "empty",
];

/// Settings of the generic pool.
#[derive(Debug, Clone)]
pub struct GenericPoolConfig {
    /// One per runtime with sandboxes, refilled in this order.
    pub lanes: Vec<GenericLane>,
    /// Resident memory the ready ones (of every lane) may hold together.
    pub memory_budget_bytes: u64,
    /// Where their work dirs go (the instances' run dir).
    pub run_dir: PathBuf,
}

/// The sandboxes of one runtime.
#[derive(Debug, Clone)]
pub struct GenericLane {
    /// Sandboxes kept ready.
    pub size: usize,
    /// What each is started with (its runtime, the operator's caps).
    pub sandbox: GenericConfig,
}

/// A lane and its ready sandboxes.
struct Lane {
    cfg: GenericLane,
    ready: Mutex<VecDeque<GenericSandbox>>,
}

impl Lane {
    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<GenericSandbox>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready sandbox that still runs, if any.
    fn take(&self) -> Option<GenericSandbox> {
        let mut ready = self.ready();
        while let Some(g) = ready.pop_front() {
            if g.is_alive() {
                return Some(g);
            }
            tracing::warn!(
                sandbox = g.id(),
                "a ready generic sandbox had died; dropped"
            );
        }
        None
    }
}

#[derive(Default)]
struct Counters {
    taken: AtomicU64,
    specialise_failures: AtomicU64,
    start_failures: AtomicU64,
    fallbacks: [AtomicU64; FALLBACKS.len()],
}

/// The container backend with generic sandboxes in front; see the module doc.
pub struct GenericPool {
    backend: Arc<ContainerExecutor>,
    lanes: Vec<Lane>,
    memory_budget_bytes: u64,
    run_dir: PathBuf,
    starting: AtomicU64,
    memory_bytes: AtomicU64,
    next: AtomicU64,
    refill: tokio::sync::Notify,
    counters: Counters,
}

impl GenericPool {
    /// The pool and its refill task (which ends with the pool). Must be called inside a Tokio
    /// runtime.
    pub fn start(backend: ContainerExecutor, cfg: GenericPoolConfig) -> Arc<Self> {
        let pool = Arc::new(Self {
            backend: Arc::new(backend),
            lanes: cfg
                .lanes
                .into_iter()
                .map(|cfg| Lane {
                    cfg,
                    ready: Mutex::default(),
                })
                .collect(),
            memory_budget_bytes: cfg.memory_budget_bytes,
            run_dir: cfg.run_dir,
            starting: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            next: AtomicU64::new(1),
            refill: tokio::sync::Notify::new(),
            counters: Counters::default(),
        });
        tokio::spawn(refill(Arc::downgrade(&pool)));
        pool
    }

    /// Ready sandboxes of every lane.
    fn ready_count(&self) -> usize {
        self.lanes.iter().map(|l| l.ready().len()).sum()
    }

    fn fallback(&self, why: &str) {
        if let Some(i) = FALLBACKS.iter().position(|r| *r == why) {
            self.counters.fallbacks[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> GenericPoolStats {
        let c = &self.counters;
        GenericPoolStats {
            size: self.lanes.iter().map(|l| l.cfg.size as u64).sum(),
            memory_budget_bytes: self.memory_budget_bytes,
            ready: self.ready_count() as u64,
            starting: self.starting.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            taken: c.taken.load(Ordering::Relaxed),
            specialise_failures: c.specialise_failures.load(Ordering::Relaxed),
            start_failures: c.start_failures.load(Ordering::Relaxed),
            fallbacks: FALLBACKS
                .iter()
                .zip(&c.fallbacks)
                .map(|(r, n)| (r.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Starts one sandbox of lane `lane` and adds it to its ready ones.
    async fn park_one(&self, lane: usize) -> Result<(), SandboxError> {
        let Some(lane) = self.lanes.get(lane) else {
            return Ok(());
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // A '.' never appears in an instance id, so the cgroup and dir names cannot collide.
        let id = format!("generic.{n}");
        let work = self.run_dir.join(&id);
        let g = self
            .backend
            .park_generic(&id, &work, &lane.cfg.sandbox)
            .await?;
        lane.ready().push_back(g);
        Ok(())
    }

    /// The first lane with fewer ready sandboxes than its size, if any.
    fn short_lane(&self) -> Option<usize> {
        self.lanes.iter().position(|l| l.ready().len() < l.cfg.size)
    }

    /// Resident memory of the ready sandboxes now (read outside the lock).
    fn measure(&self) -> u64 {
        let total = self
            .lanes
            .iter()
            .map(|l| {
                l.ready()
                    .iter()
                    .filter_map(|g| g.resident_bytes())
                    .sum::<u64>()
            })
            .sum();
        self.memory_bytes.store(total, Ordering::Relaxed);
        total
    }
}

/// Keeps the pool at its size: starts sandboxes one at a time while fewer are ready and the
/// ready ones stay under the memory budget; waits for a take (or a second) between rounds. A
/// start that fails backs off (1 s, doubling to 30 s) so a broken host is not hammered.
async fn refill(pool: Weak<GenericPool>) {
    let mut backoff = Duration::ZERO;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let short = p.short_lane();
        if let Some(lane) = short.filter(|_| p.measure() < p.memory_budget_bytes) {
            p.starting.fetch_add(1, Ordering::Relaxed);
            let r = p.park_one(lane).await;
            p.starting.fetch_sub(1, Ordering::Relaxed);
            drop(p);
            match r {
                Ok(()) => backoff = Duration::ZERO,
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                    if let Some(p) = pool.upgrade() {
                        p.counters.start_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "a generic sandbox failed to start");
                    tokio::time::sleep(backoff).await;
                }
            }
            continue;
        }
        // Woken by a take; the tick re-reads memory and drops dead sandboxes' places.
        if tokio::time::timeout(Duration::from_secs(1), p.refill.notified())
            .await
            .is_ok()
        {
            drop(p);
            tokio::time::sleep(REFILL_DELAY).await;
        }
    }
}

#[async_trait::async_trait]
impl Executor for GenericPool {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let mut e = self.backend.enforcement();
        let lanes: Vec<String> = self
            .lanes
            .iter()
            .map(|l| format!("{} {}", l.cfg.size, l.cfg.sandbox.runtime.as_str()))
            .collect();
        let memory_mib = self.lanes.first().map_or(0, |l| l.cfg.sandbox.memory_mib);
        e.push(Enforcement {
            limit: "genericSandboxes",
            enforced: true,
            how: format!(
                "pre-warmed generic sandboxes ({}), each specialised to one bundle of its \
                 runtime: data paths bound in after the start, the cgroup set to the bundle's \
                 limits; Deno's checks answered by at-rund's permission broker from the \
                 manifest, its V8 heap flag the cap ({memory_mib} MiB) there, memory held by \
                 the cgroup; Deno bundles with `run` start the normal way",
                lanes.join(", ")
            ),
        });
        e
    }

    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        let Some(lane) = self
            .lanes
            .iter()
            .find(|l| l.cfg.sandbox.runtime == spec.runtime)
        else {
            // No lane of its runtime: the "runtime" reason.
            self.fallback(UNFIT_REASONS[3]);
            return self.backend.warm(spec).await;
        };
        if let Some(why) = GenericSandbox::unfit(&spec, &lane.cfg.sandbox) {
            self.fallback(why);
            return self.backend.warm(spec).await;
        }
        let Some(g) = lane.take() else {
            self.fallback("empty");
            self.refill.notify_one();
            return self.backend.warm(spec).await;
        };
        self.counters.taken.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sandbox = g.id(), instance = %spec.id, "specialising a generic sandbox");
        let r = g.specialise(spec).await.inspect_err(|e| {
            self.counters
                .specialise_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a generic sandbox could not be specialised");
        });
        // Only now: a new sandbox's start (tens of ms of CPU) must not compete with this one's
        // specialisation, nor (`REFILL_DELAY`) with the first call the request makes next.
        self.refill.notify_one();
        r
    }

    fn generic_pool(&self) -> Option<GenericPoolStats> {
        Some(self.stats())
    }
}
