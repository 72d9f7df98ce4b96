//! The instance pool: warm instances keyed by everything that changes what runs, reused by many
//! requests each, started on demand (concurrent cold requests share one start) or ahead of demand
//! (pre-warm), capped globally, per bundle and per author, reaped when idle, evicted (least
//! recently used) over a memory budget, replaced when they die, backed off when they crash in a
//! loop, and drained on shutdown. Sits between the HTTP layer and a sandbox [`Executor`].
//!
//! Owns: which instances exist and when they are started, leased, reaped, evicted, replaced and
//! stopped; the pool counters. Must not touch: how an instance is isolated or spoken to (the
//! executor's job), which bundles may run (policy), or how a bundle is resolved (HTTP layer,
//! which hands in an [`InstanceSpec`] factory).
//!
//! Full pool: a request that finds every slot it may use taken waits at most
//! [`PoolConfig::busy_wait`] for one to free, then gets [`PoolError::Busy`] (429 with
//! `Retry-After`). The wait absorbs bursts a few milliseconds over capacity without failing them;
//! its bound (in time, and so in waiters: arrival rate × wait) means there is never an unbounded
//! queue. Waiting for an instance that is *starting* is not counted against it: that is a cold
//! start, bounded by the executor's start timeout.
//!
//! Warmth: `fixed` keeps every idle instance for [`PoolConfig::idle_timeout`]; `adaptive` (with
//! [`PoolConfig::warmth`] set) learns each bundle's idle times ([`warmth`]) and unloads right after
//! the call and pre-warms before the next expected one, or keeps the instance for the learned
//! keep-alive, falling back to the idle timeout while it knows too little.
//!
//! Traces: an instance start a request waits for as its starter runs in a `start` span, and the
//! call into the instance in a `call` span, both at `TRACE` level under [`TRACE_TARGET`], so they
//! cost a disabled callsite's check unless traces are on (docs/observability.md, "Traces").

mod body;
mod generic;
pub mod warmth;
pub use body::LeasedBody;
pub use generic::{GenericLane, GenericPool, GenericPoolConfig};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use atrund_sandbox::{Executor, Instance, InstanceSpec, Invocation, SandboxError};
use tokio::sync::Notify;
use tracing::Instrument;
use warmth::{Unload, Warmth, WarmthConfig, WarmthInfo};

/// The `tracing` target of the spans that become trace spans (the request's phases); the
/// binary's trace layer takes exactly these.
pub const TRACE_TARGET: &str = "atrund_trace";

/// What makes two instances interchangeable. The bundle record's CID covers the code, the
/// manifest's permissions and its requested limits; the secrets record's CID the environment.
/// The operator's caps that turn those into effective limits are fixed for the life of the
/// process (a config change means a restart), so they need no field of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The author's DID (`local` for the dev bundle).
    pub author: Arc<str>,
    /// CID of the `dev.atrund.bundle` record (for the dev bundle: a hash of its files).
    pub bundle: Arc<str>,
    /// CID of the `dev.atrund.secrets` record whose values the instances get, if any.
    pub secrets: Option<Arc<str>>,
}

impl std::fmt::Display for InstanceKey {
    /// `{bundle}` or `{bundle}+{secrets}`: how logs and `/admin/pool` name an instance's version.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.secrets {
            Some(s) => write!(f, "{}+{s}", self.bundle),
            None => f.write_str(&self.bundle),
        }
    }
}

/// Builds a fresh [`InstanceSpec`] (new id and work dir) for each instance of one key.
pub type SpecFactory = Arc<dyn Fn() -> InstanceSpec + Send + Sync>;

/// Scheduling knobs; built from the `[pool]` config section by the binary, and replaced while
/// running by [`Pool::reconfigure`] (a reload).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Instances (running or starting) across all bundles.
    pub max_instances: usize,
    /// Instances of one key.
    pub max_instances_per_bundle: usize,
    /// Instances of all bundles of one author DID.
    pub max_instances_per_author: usize,
    /// An instance with nothing in flight for this long (counted from the end of its last
    /// response) is stopped.
    pub idle_timeout: Duration,
    /// Resident memory of all instances; over it, idle instances are evicted least recently used
    /// first, and no new one starts until there is room. 0 = no budget.
    pub memory_budget_bytes: u64,
    /// Longest wait for a free slot before answering Busy.
    pub busy_wait: Duration,
    /// Delay before the restart after the second consecutive crash; doubles per crash.
    pub crash_backoff: Duration,
    /// Longest crash back-off.
    pub crash_backoff_max: Duration,
    /// Adaptive warmth (`None`: fixed, every instance kept for `idle_timeout`). Set at start: a
    /// reconfigure keeps the running value.
    pub warmth: Option<WarmthConfig>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_instances: 64,
            max_instances_per_bundle: 4,
            max_instances_per_author: 16,
            idle_timeout: Duration::from_secs(300),
            memory_budget_bytes: 2048 * 1024 * 1024,
            busy_wait: Duration::from_millis(100),
            crash_backoff: Duration::from_millis(500),
            crash_backoff_max: Duration::from_secs(30),
            warmth: None,
        }
    }
}

/// Which bundle a request is for across its versions (`author/name`), and how to start an
/// instance of the version it asked for without a request: what adaptive warmth needs.
#[derive(Clone)]
pub struct BundleRef {
    pub name: String,
    pub start: SpecFactory,
}

/// What a pre-warm starts: the version called last.
#[derive(Clone)]
struct PrewarmStart {
    key: InstanceKey,
    concurrency: usize,
    factory: SpecFactory,
}

/// Why the pool could not hand out an instance.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// the sandbox failed
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// no slot became free within the bounded wait
    #[error("{reason}; no slot freed within {waited_ms} ms, retry after {retry_after_secs} s")]
    Busy {
        reason: String,
        waited_ms: u64,
        retry_after_secs: u64,
    },
    /// the bundle crashed repeatedly and is backed off
    #[error("this bundle's instance crashed {crashes} times in a row (last: {last_exit}); it is restarted after a back-off, retry after {retry_after_secs} s, and if it keeps happening ask the bundle's author")]
    CrashLooping {
        crashes: u32,
        last_exit: String,
        retry_after_secs: u64,
    },
    /// the runner is shutting down
    #[error("this runner is shutting down and takes no new requests")]
    Draining,
}

impl PoolError {
    /// Stable error name for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::Sandbox(e) => e.code(),
            PoolError::Busy { .. } => "Busy",
            PoolError::CrashLooping { .. } => "BundleCrashLooping",
            PoolError::Draining => "Draining",
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            PoolError::Sandbox(e) => e.class(),
            PoolError::Busy { .. } => C::Busy,
            PoolError::CrashLooping { .. } | PoolError::Draining => C::Unavailable,
        }
    }

    /// Seconds a caller should wait before retrying, for a `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            PoolError::Busy {
                retry_after_secs, ..
            }
            | PoolError::CrashLooping {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Pool counters and the instances, as served on the admin endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PoolStats {
    pub backend: &'static str,
    pub draining: bool,
    /// Instances being started now.
    pub starting: usize,
    /// Running instances with nothing in flight.
    pub idle: usize,
    /// Running instances with at least one request in flight.
    pub busy: usize,
    /// Requests admitted and not finished (response body included).
    pub requests_in_flight: usize,
    /// Requests that waited for an instance to start.
    pub cold_hits: u64,
    /// Requests served by an instance that was already running.
    pub warm_hits: u64,
    /// Requests refused with Busy.
    pub busy_refusals: u64,
    /// Requests refused because their bundle was backed off after crashes.
    pub crash_loop_refusals: u64,
    /// Instances started (pre-warm included) and starts that failed.
    pub starts: u64,
    pub start_failures: u64,
    /// Instances that died on their own.
    pub crashes: u64,
    /// Instances stopped after the idle timeout.
    pub idle_reaped: u64,
    /// Idle instances stopped to make room (instance caps or memory budget).
    pub evictions: u64,
    /// Adaptive warmth: idle instances stopped by a bundle's learned windows (right after the
    /// call when a pre-warm is planned, or after the learned keep-alive).
    pub adaptive_unloads: u64,
    /// Adaptive warmth: instances started ahead of an expected call, and pre-warms skipped
    /// because a cap (instances, per author, per bundle, memory) had no room.
    pub adaptive_prewarms: u64,
    pub adaptive_prewarms_skipped: u64,
    /// Adaptive warmth: each tracked bundle's windows (empty when `fixed`).
    pub warmth: Vec<WarmthInfo>,
    /// Sum of the instances' resident memory, as last read.
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
    pub instances: Vec<InstanceInfo>,
    /// The pre-warmed generic sandboxes, when `pool.generic_sandboxes` is on.
    pub generic: Option<atrund_sandbox::GenericPoolStats>,
}

/// One running instance's resources, for metrics.
#[derive(Debug, Clone)]
pub struct InstanceUsage {
    pub author: String,
    /// The pool's number for the instance (unique for the life of the process).
    pub id: u64,
    /// CPU time from the instance's cgroup, when it has one.
    pub cpu: Option<Duration>,
    /// Resident memory as the reaper last read it.
    pub rss_bytes: Option<u64>,
}

/// One instance on the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub author: String,
    pub record_cid: String,
    pub pid: Option<u32>,
    pub in_flight: usize,
    pub concurrency: usize,
    pub served: u64,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub rss_bytes: Option<u64>,
    /// Kept warm by the pre-warm list.
    pub pinned: bool,
}

#[derive(Default)]
struct Counters {
    cold_hits: AtomicU64,
    warm_hits: AtomicU64,
    busy_refusals: AtomicU64,
    crash_loop_refusals: AtomicU64,
    starts: AtomicU64,
    start_failures: AtomicU64,
    crashes: AtomicU64,
    idle_reaped: AtomicU64,
    evictions: AtomicU64,
    adaptive_unloads: AtomicU64,
    adaptive_prewarms: AtomicU64,
    adaptive_prewarms_skipped: AtomicU64,
}

struct Entry {
    id: u64,
    instance: Arc<dyn Instance>,
    limit: usize,
    in_flight: usize,
    served: u64,
    started: Instant,
    /// End of the last response (or readiness): the idle clock starts here.
    last_end: Instant,
    rss: Option<u64>,
}

#[derive(Default)]
struct KeyState {
    entries: Vec<Entry>,
    starting: usize,
    /// Consecutive crashes and failed starts; reset by a successful response.
    crashes: u32,
    retry_at: Option<Instant>,
    last_exit: String,
    /// Pre-warm: keep at least this many running, never reap below it.
    min_warm: usize,
    warm_spec: Option<(SpecFactory, usize)>,
    /// Adaptive warmth: the bundle (`author/name`) this key is a version of.
    app: Option<Arc<str>>,
}

impl KeyState {
    fn count(&self) -> usize {
        self.entries.len() + self.starting
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<InstanceKey, KeyState>,
}

impl State {
    fn total(&self) -> usize {
        self.keys.values().map(KeyState::count).sum()
    }
    fn author_total(&self, author: &str) -> usize {
        self.keys
            .iter()
            .filter(|(k, _)| &*k.author == author)
            .map(|(_, s)| s.count())
            .sum()
    }
    fn memory(&self) -> (u64, u64) {
        let mut sum = 0;
        let mut n = 0;
        for e in self.keys.values().flat_map(|k| &k.entries) {
            if let Some(r) = e.rss {
                sum += r;
                n += 1;
            }
        }
        (sum, n)
    }
    /// Removes the least recently used idle instance matching `filter`, if any.
    fn evict_lru(&mut self, filter: impl Fn(&InstanceKey) -> bool) -> Option<Arc<dyn Instance>> {
        let mut best: Option<(InstanceKey, u64, Instant)> = None;
        for (k, ks) in &self.keys {
            if !filter(k) || ks.entries.len() <= ks.min_warm {
                continue;
            }
            for e in ks.entries.iter().filter(|e| e.in_flight == 0) {
                if best.as_ref().is_none_or(|(_, _, t)| e.last_end < *t) {
                    best = Some((k.clone(), e.id, e.last_end));
                }
            }
        }
        let (k, id, _) = best?;
        let ks = self.keys.get_mut(&k)?;
        let pos = ks.entries.iter().position(|e| e.id == id)?;
        Some(ks.entries.remove(pos).instance)
    }
}

/// What `decide` found for one request.
enum Decision {
    Lease(Lease),
    /// Start an instance (after stopping the evicted ones).
    Start(Vec<Arc<dyn Instance>>),
    /// An instance of this key is starting; wait for it.
    WaitStart,
    /// Backed off after crashes.
    CrashLooping(PoolError),
    /// Every slot this request may use is taken.
    Full(String),
}

/// Warm instances by key.
pub struct Pool {
    executor: Arc<dyn Executor>,
    /// Read at each decision; a reload replaces it.
    cfg: std::sync::RwLock<PoolConfig>,
    state: Mutex<State>,
    /// Woken when a slot frees, an instance starts or one is removed.
    changed: Notify,
    /// Admitted requests and leased slots, for the drain.
    active: AtomicUsize,
    quiet: Notify,
    draining: AtomicBool,
    closed: AtomicBool,
    next_id: AtomicU64,
    counters: Counters,
    /// Adaptive warmth's histograms. Lock order: `state` first when both are held.
    warmth: Mutex<Warmth<PrewarmStart>>,
}

/// Counts one admitted request until it is dropped; see [`Pool::admit`].
pub struct Ticket {
    pool: Arc<Pool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pool.release_active();
    }
}

/// One slot of one instance, held until the response body ends.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    key: InstanceKey,
    id: u64,
    instance: Arc<dyn Instance>,
    ok: bool,
    /// Set when this lease's request started the instance: how long the start took.
    start_time: Option<Duration>,
    /// Adaptive warmth: the bundle whose call this is.
    app: Option<Arc<str>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self);
        self.pool.release_active();
    }
}

/// Back-off before the next start after `crashes` consecutive crashes: the first restart is
/// immediate (one crash is an accident), then `base`, doubling, capped at `max`.
pub fn crash_backoff(crashes: u32, base: Duration, max: Duration) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(crashes - 2).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

fn spawn_shutdown(instances: Vec<Arc<dyn Instance>>) {
    if instances.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // No runtime (a test tearing down): the instances' own drop kills their processes.
        return;
    };
    rt.spawn(async move {
        for i in instances {
            i.shutdown().await;
        }
    });
}

impl Pool {
    /// A pool with its background reaper (idle timeout, memory budget, dead instances,
    /// pre-warm). Must be called inside a Tokio runtime.
    pub fn new(executor: Arc<dyn Executor>, cfg: PoolConfig) -> Arc<Self> {
        // Adaptive warmth acts at bin resolution (pre-warm and unload times).
        let finest = cfg.warmth.map_or(Duration::MAX, |w| w.bin);
        let tick = (cfg.idle_timeout / 4)
            .min(finest)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let pool = Arc::new(Self {
            executor,
            cfg: std::sync::RwLock::new(cfg),
            state: Mutex::default(),
            changed: Notify::new(),
            active: AtomicUsize::new(0),
            quiet: Notify::new(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            warmth: Mutex::new(Warmth::new(cfg.warmth.unwrap_or_default())),
        });
        tokio::spawn(reaper(Arc::downgrade(&pool), tick));
        pool
    }

    /// The knobs in force now.
    fn cfg(&self) -> PoolConfig {
        // A poisoned lock still holds a whole config (writers only assign).
        *self.cfg.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the knobs (a reload): caps, waits and back-offs apply to the next decision;
    /// instances above a lowered cap are not stopped, they go as they become idle. The reaper's
    /// tick, set from the first idle timeout, stays.
    pub fn reconfigure(&self, mut cfg: PoolConfig) {
        let mut running = self.cfg.write().unwrap_or_else(|e| e.into_inner());
        // The histograms were built with the running bins.
        cfg.warmth = running.warmth;
        *running = cfg;
        drop(running);
        // Waiters re-check against the new caps.
        self.changed.notify_waiters();
    }

    /// Name of the sandbox backend instances run in.
    pub fn backend(&self) -> &'static str {
        self.executor.name()
    }

    fn warmth(&self) -> MutexGuard<'_, Warmth<PrewarmStart>> {
        // As `lock`: short sections that do not panic.
        self.warmth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when adaptive warmth is on: callers then pass a [`BundleRef`] to
    /// [`Pool::execute`].
    pub fn adapts(&self) -> bool {
        self.cfg().warmth.is_some()
    }

    /// Adaptive warmth: a request for `key`, a version of `bundle`, arrived.
    fn arrive(&self, key: &InstanceKey, concurrency: usize, bundle: BundleRef) {
        let now = Instant::now();
        let mut st = self.lock();
        let ks = st.keys.entry(key.clone()).or_default();
        if ks.app.as_deref() != Some(bundle.name.as_str()) {
            ks.app = Some(bundle.name.as_str().into());
        }
        let start = PrewarmStart {
            key: key.clone(),
            concurrency,
            factory: bundle.start,
        };
        self.warmth().arrive(&bundle.name, now, start);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the bookkeeping is still consistent
        // because every critical section is short and panics in none of its steps.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one request for the drain's bookkeeping: the request counts as in flight until the
    /// ticket is dropped, and once a drain has begun no new ticket is issued.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, PoolError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket { pool: self.clone() };
        if self.draining.load(Ordering::SeqCst) {
            return Err(PoolError::Draining);
        }
        Ok(ticket)
    }

    fn release_active(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.quiet.notify_waiters();
        }
    }

    /// Runs one invocation on a warm instance for `key`, starting one from `spec` if needed.
    /// `concurrency` is the bundle's per-instance limit. `prepare` runs inside the `call` span
    /// just before the call (the HTTP layer writes there the trace context the bundle sees). The
    /// instance slot stays taken until the response body has been sent. `bundle` feeds adaptive
    /// warmth (ignored when it is off).
    pub async fn execute(
        self: &Arc<Self>,
        key: InstanceKey,
        concurrency: usize,
        spec: impl FnOnce() -> InstanceSpec,
        mut call: Invocation,
        prepare: impl FnOnce(&mut Invocation),
        bundle: Option<BundleRef>,
    ) -> Result<http::Response<LeasedBody>, PoolError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PoolError::Draining);
        }
        if let Some(b) = bundle.filter(|_| self.adapts()) {
            self.arrive(&key, concurrency.max(1), b);
        }
        let mut lease = self.acquire(&key, concurrency.max(1), spec).await?;
        let span = tracing::trace_span!(target: TRACE_TARGET, "call");
        span.in_scope(|| prepare(&mut call));
        let called = Instant::now();
        match lease.instance.execute(call).instrument(span).await {
            Ok(resp) => {
                lease.ok = true;
                let bundle_time = called.elapsed();
                Ok(resp.map(|inner| LeasedBody {
                    inner,
                    lease: Some(lease),
                    bundle_time,
                }))
            }
            Err(e) => {
                drop(lease);
                Err(e.into())
            }
        }
    }

    async fn acquire(
        self: &Arc<Self>,
        key: &InstanceKey,
        limit: usize,
        spec: impl FnOnce() -> InstanceSpec,
    ) -> Result<Lease, PoolError> {
        // The warm path: a free slot, taken without registering for the pool's notifications.
        if let Decision::Lease(l) = self.decide_lease_only(key) {
            return Ok(l);
        }
        let mut spec = Some(spec);
        let deadline = tokio::time::Instant::now() + self.cfg().busy_wait;
        let mut cold = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let decision = self.decide(key, limit, cold);
            match decision {
                Decision::Lease(l) => return Ok(l),
                Decision::Start(evicted) => {
                    spawn_shutdown(evicted);
                    // `decide` answers Start only to a request that has not started one yet:
                    // the starter gets the first slot of the instance it started.
                    let Some(f) = spec.take() else {
                        self.unreserve(key);
                        return Err(self.busy("no instance slot is free".into()));
                    };
                    let s = f();
                    let pool = self.clone();
                    let k = key.clone();
                    // Spawned so that a caller who goes away does not abort a start others wait on.
                    // In the request's span, so the start's log lines carry its request id; the
                    // `start` span (made here, so its trace parent is the request's) inside it.
                    let phase = tracing::trace_span!(target: TRACE_TARGET, "start");
                    let started = tokio::spawn(
                        async move { pool.start_reserved(k, s, limit, true).await }
                            .instrument(phase)
                            .instrument(tracing::Span::current()),
                    );
                    return match started.await {
                        Ok(Ok(Some(lease))) => Ok(lease),
                        Ok(Ok(None)) => Err(PoolError::Draining),
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err(SandboxError::StartFailed(
                            "the start task failed; the runner's log has details".into(),
                        )
                        .into()),
                    };
                }
                Decision::WaitStart => {
                    cold = true;
                    notified.await;
                }
                Decision::CrashLooping(e) => {
                    self.counters
                        .crash_loop_refusals
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                Decision::Full(reason) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        // One last look: a slot may have freed as the wait ended.
                        if let Decision::Lease(l) = self.decide_lease_only(key) {
                            return Ok(l);
                        }
                        return Err(self.busy(reason));
                    }
                }
            }
        }
    }

    fn busy(&self, reason: String) -> PoolError {
        self.counters.busy_refusals.fetch_add(1, Ordering::Relaxed);
        PoolError::Busy {
            reason,
            waited_ms: self.cfg().busy_wait.as_millis() as u64,
            retry_after_secs: 1,
        }
    }

    fn lease_from(
        self: &Arc<Self>,
        key: &InstanceKey,
        ks: &mut KeyState,
        cold: bool,
    ) -> Option<Lease> {
        // Pack onto the oldest instance with room, so the others go idle and can be reaped.
        let e = ks
            .entries
            .iter_mut()
            .find(|e| e.in_flight < e.limit && e.instance.is_alive())?;
        e.in_flight += 1;
        e.served += 1;
        if let Some(app) = &ks.app {
            self.warmth().begin(app);
        }
        let app = ks.app.clone();
        self.active.fetch_add(1, Ordering::SeqCst);
        if cold {
            self.counters.cold_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.warm_hits.fetch_add(1, Ordering::Relaxed);
        }
        Some(Lease {
            pool: self.clone(),
            key: key.clone(),
            id: e.id,
            instance: e.instance.clone(),
            ok: false,
            start_time: None,
            app,
        })
    }

    fn decide_lease_only(self: &Arc<Self>, key: &InstanceKey) -> Decision {
        let mut st = self.lock();
        match st
            .keys
            .get_mut(key)
            .and_then(|ks| self.lease_from(key, ks, false))
        {
            Some(l) => Decision::Lease(l),
            None => Decision::Full(String::new()),
        }
    }

    fn decide(self: &Arc<Self>, key: &InstanceKey, limit: usize, cold: bool) -> Decision {
        let now = Instant::now();
        let mut st = self.lock();
        let mut dead = Vec::new();
        {
            // A clone of the key is three reference counts (`Arc<str>` fields).
            let ks = st.keys.entry(key.clone()).or_default();
            // Died while idle: forget it, count it as a crash.
            let mut i = 0;
            while i < ks.entries.len() {
                let e = &ks.entries[i];
                if e.in_flight == 0 && !e.instance.is_alive() {
                    let e = ks.entries.remove(i);
                    self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                    self.note_crash(ks, "the process exited while idle".into(), now);
                    dead.push(e.instance);
                } else {
                    i += 1;
                }
            }
            if let Some(l) = self.lease_from(key, ks, cold) {
                drop(st);
                spawn_shutdown(dead);
                return Decision::Lease(l);
            }
            if ks.starting > 0 {
                drop(st);
                spawn_shutdown(dead);
                return Decision::WaitStart;
            }
            if let Some(at) = ks.retry_at.filter(|t| *t > now) {
                let e = PoolError::CrashLooping {
                    crashes: ks.crashes,
                    last_exit: ks.last_exit.clone(),
                    retry_after_secs: ceil_secs(at - now),
                };
                drop(st);
                spawn_shutdown(dead);
                return Decision::CrashLooping(e);
            }
            if ks.entries.len() >= self.cfg().max_instances_per_bundle {
                let n = ks.entries.len();
                drop(st);
                spawn_shutdown(dead);
                return Decision::Full(format!(
                    "all {n} instances of this bundle (the per-bundle maximum) are busy, {limit} requests each"
                ));
            }
        }
        // Room under the author and global caps and the memory budget, evicting idle
        // instances of other keys (least recently used first) to make it.
        let mut evicted = Vec::new();
        let full = loop {
            if st.author_total(&key.author) >= self.cfg().max_instances_per_author {
                match st.evict_lru(|k| k.author == key.author && k != key) {
                    Some(i) => evicted.push(i),
                    None => {
                        break Some(format!(
                            "this author's {} instances (the per-author maximum) are all busy",
                            self.cfg().max_instances_per_author
                        ))
                    }
                }
                continue;
            }
            if st.total() >= self.cfg().max_instances {
                match st.evict_lru(|k| k != key) {
                    Some(i) => evicted.push(i),
                    None => {
                        break Some(format!(
                            "the runner's {} instances (its maximum) are all busy",
                            self.cfg().max_instances
                        ))
                    }
                }
                continue;
            }
            let budget = self.cfg().memory_budget_bytes;
            let (used, known) = st.memory();
            let estimate = used.checked_div(known).unwrap_or(0);
            if budget > 0 && used + estimate > budget {
                match st.evict_lru(|k| k != key) {
                    Some(i) => evicted.push(i),
                    None => {
                        break Some(format!(
                            "the instances' memory budget ({} MiB) is used by busy instances",
                            budget / (1024 * 1024)
                        ))
                    }
                }
                continue;
            }
            break None;
        };
        let n_evicted = evicted.len() as u64;
        self.counters
            .evictions
            .fetch_add(n_evicted, Ordering::Relaxed);
        match full {
            Some(reason) => {
                drop(st);
                evicted.extend(dead);
                spawn_shutdown(evicted);
                Decision::Full(reason)
            }
            None => {
                if let Some(ks) = st.keys.get_mut(key) {
                    ks.starting += 1;
                }
                drop(st);
                evicted.extend(dead);
                Decision::Start(evicted)
            }
        }
    }

    fn unreserve(&self, key: &InstanceKey) {
        if let Some(ks) = self.lock().keys.get_mut(key) {
            ks.starting = ks.starting.saturating_sub(1);
        }
        self.changed.notify_waiters();
    }

    /// Starts one instance for which `decide` reserved a place (`starting` was raised) and adds
    /// it to the pool; with `take`, its first slot is leased to the caller (a cold hit).
    async fn start_reserved(
        self: &Arc<Self>,
        key: InstanceKey,
        spec: InstanceSpec,
        limit: usize,
        take: bool,
    ) -> Result<Option<Lease>, SandboxError> {
        let began = Instant::now();
        let result = self.executor.warm(spec).await;
        let now = Instant::now();
        let start_time = now.duration_since(began);
        let mut st = self.lock();
        let closed = self.closed.load(Ordering::SeqCst);
        let ks = st.keys.entry(key.clone()).or_default();
        ks.starting = ks.starting.saturating_sub(1);
        let out = match result {
            Ok(instance) if closed => {
                drop(st);
                spawn_shutdown(vec![instance]);
                Err(SandboxError::Draining)
            }
            Ok(instance) => {
                self.counters.starts.fetch_add(1, Ordering::Relaxed);
                let rss = instance.resident_bytes();
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let lease = take.then(|| {
                    if let Some(app) = &ks.app {
                        self.warmth().begin(app);
                    }
                    self.active.fetch_add(1, Ordering::SeqCst);
                    self.counters.cold_hits.fetch_add(1, Ordering::Relaxed);
                    Lease {
                        pool: self.clone(),
                        key: key.clone(),
                        id,
                        instance: instance.clone(),
                        ok: false,
                        start_time: Some(start_time),
                        app: ks.app.clone(),
                    }
                });
                ks.entries.push(Entry {
                    id,
                    instance,
                    limit,
                    in_flight: usize::from(take),
                    served: u64::from(take),
                    started: now,
                    last_end: now,
                    rss,
                });
                drop(st);
                Ok(lease)
            }
            Err(e) => {
                self.counters.start_failures.fetch_add(1, Ordering::Relaxed);
                self.note_crash(ks, format!("start failed: {}", e.code()), now);
                drop(st);
                tracing::warn!(author = %key.author, record = %key, error = %e, "instance start failed");
                Err(e)
            }
        };
        self.changed.notify_waiters();
        out
    }

    fn note_crash(&self, ks: &mut KeyState, exit: String, now: Instant) {
        ks.crashes = ks.crashes.saturating_add(1);
        ks.last_exit = exit;
        let delay = crash_backoff(
            ks.crashes,
            self.cfg().crash_backoff,
            self.cfg().crash_backoff_max,
        );
        ks.retry_at = (!delay.is_zero()).then_some(now + delay);
        if ks.crashes > 1 {
            tracing::warn!(crashes = ks.crashes, backoff_ms = delay.as_millis() as u64, last = %ks.last_exit, "bundle is crash-looping; backing off");
        }
    }

    fn release(&self, lease: &Lease) {
        let now = Instant::now();
        if let Some(app) = &lease.app {
            self.warmth().end(app, now);
        }
        let mut removed = None;
        {
            let mut st = self.lock();
            if let Some(ks) = st.keys.get_mut(&lease.key) {
                if let Some(pos) = ks.entries.iter().position(|e| e.id == lease.id) {
                    let e = &mut ks.entries[pos];
                    e.in_flight = e.in_flight.saturating_sub(1);
                    e.last_end = now;
                    if !e.instance.is_alive() {
                        let status = lease
                            .instance
                            .stats()
                            .pid
                            .map_or_else(|| "exited".to_string(), |p| format!("pid {p} exited"));
                        removed = Some(ks.entries.remove(pos).instance);
                        self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                        self.note_crash(ks, status, now);
                    } else if lease.ok {
                        ks.crashes = 0;
                        ks.retry_at = None;
                    }
                }
            }
        }
        if let Some(i) = removed {
            tracing::warn!(author = %lease.key.author, record = %lease.key, "instance died; it will be replaced on the next request");
            spawn_shutdown(vec![i]);
        }
        self.changed.notify_waiters();
    }

    /// Keeps at least `n` instances of `key` running (pre-warm): starts the missing ones now and
    /// exempts them from idle reaping and eviction. The reaper restarts them if they die.
    pub async fn keep_warm(
        self: &Arc<Self>,
        key: InstanceKey,
        n: usize,
        concurrency: usize,
        spec: SpecFactory,
    ) -> Result<(), PoolError> {
        {
            let mut st = self.lock();
            let ks = st.keys.entry(key.clone()).or_default();
            ks.min_warm = n;
            ks.warm_spec = Some((spec, concurrency.max(1)));
        }
        self.fill_warm(&key).await
    }

    /// Ends a [`Pool::keep_warm`]: the instances of `key` are reaped when idle like any other
    /// (a pre-warmed `latest` that was superseded by a new release).
    pub fn unpin(&self, key: &InstanceKey) {
        if let Some(ks) = self.lock().keys.get_mut(key) {
            ks.min_warm = 0;
            ks.warm_spec = None;
        }
    }

    async fn fill_warm(self: &Arc<Self>, key: &InstanceKey) -> Result<(), PoolError> {
        loop {
            if self.draining.load(Ordering::SeqCst) {
                return Err(PoolError::Draining);
            }
            let job = {
                let mut st = self.lock();
                let total = st.total();
                let Some(ks) = st.keys.get_mut(key) else {
                    return Ok(());
                };
                let backed_off = ks.retry_at.is_some_and(|t| t > Instant::now());
                match &ks.warm_spec {
                    Some((f, limit))
                        if ks.count() < ks.min_warm
                            && !backed_off
                            && ks.count() < self.cfg().max_instances_per_bundle
                            && total < self.cfg().max_instances =>
                    {
                        ks.starting += 1;
                        Some((f.clone(), *limit))
                    }
                    _ => None,
                }
            };
            let Some((f, limit)) = job else { return Ok(()) };
            self.start_reserved(key.clone(), f(), limit, false).await?;
        }
    }

    /// Stops and forgets every instance of `key`; local dev mode uses it when the code on disk
    /// changes. Instances with requests in flight are stopped once those finish.
    pub async fn retire(&self, key: &InstanceKey) {
        let ks = self.lock().keys.remove(key);
        if let Some(ks) = ks {
            for e in ks.entries {
                e.instance.drain().await;
                e.instance.shutdown().await;
            }
        }
        self.changed.notify_waiters();
    }

    /// Number of running instances.
    pub fn len(&self) -> usize {
        self.lock().keys.values().map(|k| k.entries.len()).sum()
    }

    /// True when no instance runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters and instances, for the admin endpoint (and later metrics export).
    pub fn stats(&self) -> PoolStats {
        // Before the pool's lock: a scrape must not hold up requests while every bundle's
        // windows are listed.
        let warmth = if self.adapts() {
            self.warmth().info(self.cfg().idle_timeout)
        } else {
            Vec::new()
        };
        let now = Instant::now();
        let st = self.lock();
        let c = &self.counters;
        let mut s = PoolStats {
            backend: self.executor.name(),
            draining: self.draining.load(Ordering::SeqCst),
            requests_in_flight: self.active.load(Ordering::SeqCst),
            cold_hits: c.cold_hits.load(Ordering::Relaxed),
            warm_hits: c.warm_hits.load(Ordering::Relaxed),
            busy_refusals: c.busy_refusals.load(Ordering::Relaxed),
            crash_loop_refusals: c.crash_loop_refusals.load(Ordering::Relaxed),
            starts: c.starts.load(Ordering::Relaxed),
            start_failures: c.start_failures.load(Ordering::Relaxed),
            crashes: c.crashes.load(Ordering::Relaxed),
            idle_reaped: c.idle_reaped.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            adaptive_unloads: c.adaptive_unloads.load(Ordering::Relaxed),
            adaptive_prewarms: c.adaptive_prewarms.load(Ordering::Relaxed),
            adaptive_prewarms_skipped: c.adaptive_prewarms_skipped.load(Ordering::Relaxed),
            warmth,
            memory_bytes: st.memory().0,
            memory_budget_bytes: self.cfg().memory_budget_bytes,
            generic: self.executor.generic_pool(),
            ..PoolStats::default()
        };
        for (k, ks) in &st.keys {
            s.starting += ks.starting;
            for e in &ks.entries {
                if e.in_flight > 0 {
                    s.busy += 1;
                } else {
                    s.idle += 1;
                }
                s.instances.push(InstanceInfo {
                    author: k.author.to_string(),
                    record_cid: k.to_string(),
                    pid: e.instance.stats().pid,
                    in_flight: e.in_flight,
                    concurrency: e.limit,
                    served: e.served,
                    age_ms: now.duration_since(e.started).as_millis() as u64,
                    idle_ms: if e.in_flight > 0 {
                        0
                    } else {
                        now.duration_since(e.last_end).as_millis() as u64
                    },
                    rss_bytes: e.rss,
                    pinned: ks.min_warm > 0,
                });
            }
        }
        s
    }

    /// Each running instance's CPU time and memory. The cgroup files are read after the pool's
    /// lock is released, so a scrape does not hold up requests.
    pub fn usage(&self) -> Vec<InstanceUsage> {
        let running: Vec<_> = {
            let st = self.lock();
            st.keys
                .iter()
                .flat_map(|(k, ks)| {
                    ks.entries
                        .iter()
                        .map(|e| (k.author.to_string(), e.id, e.instance.clone(), e.rss))
                })
                .collect()
        };
        running
            .into_iter()
            .map(|(author, id, instance, rss_bytes)| InstanceUsage {
                author,
                id,
                cpu: instance.cpu_usage(),
                rss_bytes,
            })
            .collect()
    }

    /// One reaper pass: refresh memory, forget dead idle instances, stop instances idle past
    /// the timeout (never one with a request in flight), evict over the memory budget.
    fn reap(&self) -> (Vec<InstanceKey>, Vec<PrewarmStart>) {
        let now = Instant::now();
        let cfg = self.cfg();
        let mut stop = Vec::new();
        let mut refill = Vec::new();
        let mut prewarm = Vec::new();
        {
            let mut st = self.lock();
            let mut warmth = cfg.warmth.map(|_| self.warmth());
            let mut reaped = 0;
            let mut unloaded = 0;
            for (k, ks) in st.keys.iter_mut() {
                // Adaptive: the bundle's windows; fixed (or no bundle known): the idle timeout.
                let (windows, app_idle) = match (&mut warmth, &ks.app) {
                    (Some(w), Some(app)) => (w.windows(app, cfg.idle_timeout), w.idle_since(app)),
                    _ => (
                        warmth::Windows::fixed(warmth::Basis::FewSamples, cfg.idle_timeout),
                        None,
                    ),
                };
                let mut i = 0;
                while i < ks.entries.len() {
                    let e = &mut ks.entries[i];
                    e.rss = e.instance.resident_bytes().or(e.rss);
                    let idle = e.in_flight == 0;
                    if idle && !e.instance.is_alive() {
                        let e = ks.entries.remove(i);
                        self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                        self.note_crash(ks, "the process exited while idle".into(), now);
                        stop.push(e.instance);
                        continue;
                    }
                    let unload = idle
                        .then(|| windows.unload(e.last_end, app_idle, now))
                        .flatten();
                    if let Some(why) = unload.filter(|_| ks.entries.len() > ks.min_warm) {
                        let e = ks.entries.remove(i);
                        if windows.basis.is_adaptive() {
                            let why = match why {
                                Unload::BeforePrewarm => {
                                    "the next call is not expected before the pre-warm time"
                                }
                                Unload::KeepAliveOver => "the learned keep-alive is over",
                            };
                            tracing::debug!(author = %k.author, record = %k, why, "adaptive warmth: stopping instance");
                            unloaded += 1;
                        } else {
                            tracing::debug!(author = %k.author, record = %k, "idle timeout: stopping instance");
                            reaped += 1;
                        }
                        stop.push(e.instance);
                        continue;
                    }
                    i += 1;
                }
                if ks.min_warm > ks.count() {
                    refill.push(k.clone());
                }
            }
            self.counters
                .idle_reaped
                .fetch_add(reaped, Ordering::Relaxed);
            self.counters
                .adaptive_unloads
                .fetch_add(unloaded, Ordering::Relaxed);
            if let Some(w) = &mut warmth {
                if !self.draining.load(Ordering::SeqCst) {
                    prewarm = self.reserve_prewarms(&mut st, w.prewarm_due(now), now);
                }
            }
            drop(warmth);
            let budget = self.cfg().memory_budget_bytes;
            while budget > 0 && st.memory().0 > budget {
                match st.evict_lru(|_| true) {
                    Some(i) => {
                        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                        stop.push(i);
                    }
                    None => break,
                }
            }
            // Keys with nothing left and nothing to remember are dropped.
            st.keys
                .retain(|_, ks| ks.count() > 0 || ks.min_warm > 0 || ks.crashes > 0);
        }
        if !stop.is_empty() {
            self.changed.notify_waiters();
        }
        spawn_shutdown(stop);
        (refill, prewarm)
    }

    /// Reserves a start (`starting`) for each due pre-warm of a bundle that has no instance,
    /// when every cap has room; the others are skipped and counted. Never evicts.
    fn reserve_prewarms(
        &self,
        st: &mut State,
        due: Vec<(String, PrewarmStart)>,
        now: Instant,
    ) -> Vec<PrewarmStart> {
        let cfg = self.cfg();
        let mut out = Vec::new();
        for (app, start) in due {
            let running = st
                .keys
                .values()
                .any(|ks| ks.app.as_deref() == Some(app.as_str()) && ks.count() > 0);
            let backed_off = st
                .keys
                .get(&start.key)
                .is_some_and(|ks| ks.retry_at.is_some_and(|t| t > now));
            if running || backed_off {
                continue;
            }
            let (used, known) = st.memory();
            let estimate = used.checked_div(known).unwrap_or(0);
            let budget = cfg.memory_budget_bytes;
            let room = st.total() < cfg.max_instances
                && st.author_total(&start.key.author) < cfg.max_instances_per_author
                && st.keys.get(&start.key).map_or(0, KeyState::count)
                    < cfg.max_instances_per_bundle
                && (budget == 0 || used + estimate <= budget);
            if !room {
                self.counters
                    .adaptive_prewarms_skipped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bundle = %app, "adaptive warmth: pre-warm skipped, no room under the caps");
                continue;
            }
            let ks = st.keys.entry(start.key.clone()).or_default();
            ks.starting += 1;
            ks.app = Some(app.as_str().into());
            out.push(start);
        }
        out
    }

    /// Begins the drain: no new request is admitted, and this returns once every admitted
    /// request has finished (its response body included) or `grace` has passed. True when all
    /// finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let finished = tokio::time::timeout(grace, async {
            loop {
                let quiet = self.quiet.notified();
                tokio::pin!(quiet);
                quiet.as_mut().enable();
                if self.active.load(Ordering::SeqCst) == 0 {
                    return;
                }
                quiet.await;
            }
        })
        .await;
        finished.is_ok()
    }

    /// True once [`Pool::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops every instance and removes its resources; requests still in flight fail. Call
    /// after [`Pool::drain`].
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<_> = {
            let mut st = self.lock();
            st.keys
                .drain()
                .flat_map(|(_, ks)| ks.entries.into_iter().map(|e| e.instance))
                .collect()
        };
        // The pre-warm closures hold the caller's state (which holds this pool).
        self.warmth().clear();
        let stops = all.into_iter().map(|i| async move { i.shutdown().await });
        futures_join_all(stops).await;
        self.changed.notify_waiters();
    }
}

/// Runs the futures concurrently (instances stop in parallel).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

async fn reaper(pool: Weak<Pool>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.closed.load(Ordering::SeqCst) {
            return;
        }
        let (refill, prewarm) = pool.reap();
        for s in prewarm {
            let p = pool.clone();
            tokio::spawn(async move {
                let key = s.key.clone();
                match p
                    .start_reserved(s.key, (s.factory)(), s.concurrency, false)
                    .await
                {
                    Ok(_) => {
                        p.counters.adaptive_prewarms.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(author = %key.author, record = %key, "adaptive warmth: pre-warmed an instance");
                    }
                    Err(e) => {
                        tracing::warn!(author = %key.author, record = %key, error = %e, "adaptive pre-warm failed")
                    }
                }
            });
        }
        for key in refill {
            let p = pool.clone();
            tokio::spawn(async move {
                if let Err(e) = p.fill_warm(&key).await {
                    tracing::warn!(author = %key.author, record = %key, error = %e, "pre-warm failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
