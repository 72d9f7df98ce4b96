//! The runner's Prometheus metrics: one registry, its families, and typed handles for the
//! components that record into them (docs/observability.md lists every family).
//!
//! Owns: metric names, help texts, label sets, buckets, the cardinality cap on request labels
//! (`metrics.max_label_sets`: further label sets are counted under `other`), and encoding in the
//! Prometheus text format. Counters that components already keep (pool, egress, identity cache,
//! cgroup CPU) are not copied: a [`Snapshot`] of them is taken at scrape time through the source
//! the binary installs ([`Metrics::set_source`]). Must not touch: what the numbers mean to the
//! data path, or any I/O (the HTTP layer serves [`Metrics::encode`]).
//!
//! Hot path: a request resolves its label set once ([`Metrics::series`]: a read lock and three
//! map look-ups by `&str`, no allocation once the set exists), then records into the handles it
//! holds. With metrics off ([`Metrics::disabled`]) every call returns at once.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label value of requests beyond the cardinality cap.
pub const OTHER: &str = "other";
/// Label value of requests that failed before their bundle was known (bad route, unknown
/// author, policy refusal, ...).
pub const UNRESOLVED: &str = "unresolved";

/// Request durations, seconds: 100 µs (a warm call) to a minute (the longest timeout).
const REQUEST_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];
/// Cold start phases, seconds: a cached identity (µs) to a slow PDS or start timeout.
const PHASE_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What the metrics are built with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cardinality cap (`metrics.max_label_sets`).
    pub max_label_sets: usize,
    /// `atrund_build_info` labels.
    pub version: String,
    pub isolation: String,
}

/// Why the runner refused a request it could otherwise have served (`atrund_pool_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No instance slot freed within `pool.busy_wait_ms`.
    Busy,
    /// The author's rate (`tenants.rate_*`) was used up.
    RateLimited,
    /// The runner is shutting down.
    Draining,
    /// The bundle crashed repeatedly and is backed off.
    CrashLoop,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Rejection::Busy => "busy",
            Rejection::RateLimited => "rate_limited",
            Rejection::Draining => "draining",
            Rejection::CrashLoop => "crash_loop",
        }
    }
}

/// A per-bundle limit an instance ran into (`atrund_limit_breaches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Cpu,
    Pids,
    Timeout,
    ResponseSize,
    FileSize,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Cpu => "cpu",
            Limit::Pids => "pids",
            Limit::Timeout => "timeout",
            Limit::ResponseSize => "response_size",
            Limit::FileSize => "file_size",
        }
    }
}

/// Where the time of one cold start went, as far as it is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColdStart {
    /// Resolving the author (DID document, handle), cache included.
    pub identity: Option<Duration>,
    /// Release + record + proofs + blob, verified and stored (or found in the store).
    pub fetch: Option<Duration>,
    /// The pool's start of the instance: spawn → the shim's ready signal.
    pub start: Option<Duration>,
}

/// Counters the components keep themselves, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub instances_starting: u64,
    pub instances_idle: u64,
    pub instances_busy: u64,
    /// Every instance start (pre-warm included) and failed start, since the runner started.
    pub instance_starts: u64,
    pub instance_start_failures: u64,
    pub instance_crashes: u64,
    /// Adaptive warmth (`pool.warmth = "adaptive"`): idle instances stopped by a bundle's
    /// learned windows, instances pre-warmed ahead of an expected call, pre-warms skipped for
    /// lack of room under the caps.
    pub adaptive_unloads: u64,
    pub adaptive_prewarms: u64,
    pub adaptive_prewarms_skipped: u64,
    /// One entry per running instance.
    pub instances: Vec<InstanceUsage>,
    /// Egress decisions: upstream connections allowed, refusals by reason.
    pub egress_allowed: u64,
    pub egress_denied: Vec<(String, u64)>,
    /// `(cache, result, count)`: cache `did` or `handle`, result `hit`, `stale`, `miss`, `error`.
    pub identity_cache: Vec<(&'static str, &'static str, u64)>,
    /// The pre-warmed generic sandboxes, when `pool.generic_sandboxes` is on.
    pub generic: Option<GenericSandboxes>,
    /// The response cache, when `cache.enabled` is on.
    pub response_cache: Option<ResponseCache>,
    /// Background jobs, when `jobs.enabled` is on.
    pub jobs: Option<Jobs>,
    /// Routing between runners, when `state.route` is on with Redis.
    pub cluster: Option<Cluster>,
    /// The PDS event streams, when `fetch.event_streams` is on.
    pub event_streams: Option<EventStreams>,
    /// Trust from the operator's social graph, when `trust.graph` is on.
    pub trust: Option<TrustGraph>,
}

/// The operator's graph as the runner holds it (`atrund_trust_*`, docs/network.md).
#[derive(Debug, Clone, Default)]
pub struct TrustGraph {
    /// Accounts the operator follows, in the verified snapshot held.
    pub follows: u64,
    /// Seconds since that snapshot was read; `None` before the first read.
    pub age_secs: Option<u64>,
    /// Reads of the operator's follows that succeeded, and that failed.
    pub reads: u64,
    pub read_failures: u64,
    /// Follow-backs looked up on authors' PDSes (`mutuals`).
    pub follow_back_checks: u64,
}

/// The PDS event streams' counters (`atrund_event_streams_*`, docs/network.md).
#[derive(Debug, Clone, Default)]
pub struct EventStreams {
    /// PDSes followed.
    pub hosts: u64,
    /// Streams open now.
    pub open: u64,
    /// Streams opened, reopenings included.
    pub opens: u64,
    /// Authors marked changed by an event.
    pub marks: u64,
    /// Commit events of followed authors that did not verify.
    pub rejected: u64,
}

/// Routing between the runners of a cluster (`atrund_cluster_*`, docs/cluster.md).
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Runners announced in Redis as this runner last read them, itself included.
    pub live_nodes: u64,
    /// Calls of bundles that belong to another runner, by outcome: `forwarded`, `owner_down`
    /// and `owner_busy` (served here instead), `body_too_large` (served here: over 1 MiB).
    pub forwards: Vec<(&'static str, u64)>,
}

/// The job queue's counters (`atrund_jobs*`, docs/jobs.md).
#[derive(Debug, Clone, Default)]
pub struct Jobs {
    /// Jobs in the queue now by state (`queued`, `running`, `succeeded`, `dead`, `cancelled`).
    pub by_state: Vec<(&'static str, u64)>,
    /// Attempts ended by this runner since start, by outcome (`succeeded`, `retried`, `dead`,
    /// `lost`: ended after its lease, not recorded).
    pub attempts: Vec<(&'static str, u64)>,
}

/// The response cache's counters (`atrund_response_cache_*`, docs/cache.md).
#[derive(Debug, Clone, Default)]
pub struct ResponseCache {
    pub entries: u64,
    pub bytes: u64,
    /// Look-ups by result: `hit`, or why the bundle was called (`uri-miss`, `vary-miss`,
    /// `stale`, `request`, `bypass`, `method`).
    pub lookups: Vec<(&'static str, u64)>,
    pub stored: u64,
    pub evicted: u64,
}

/// The pre-warmed generic sandboxes' counters (`atrund_pool_generic_*`).
#[derive(Debug, Clone, Default)]
pub struct GenericSandboxes {
    pub ready: u64,
    pub starting: u64,
    pub memory_bytes: u64,
    /// Handed to a bundle; of those, specialisations that failed.
    pub taken: u64,
    pub specialise_failures: u64,
    pub start_failures: u64,
    /// Instances started the normal way instead, by reason.
    pub fallbacks: Vec<(String, u64)>,
}

/// One running instance's resources.
#[derive(Debug, Clone)]
pub struct InstanceUsage {
    /// Author DID (written as `other` unless a request label set under the cap names it).
    pub author: String,
    /// The pool's instance number.
    pub instance: u64,
    /// CPU time of its cgroup, when it has one that accounts CPU.
    pub cpu: Option<Duration>,
    /// Resident memory as last read.
    pub memory_bytes: Option<u64>,
}

type Source = Box<dyn Fn() -> Snapshot + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    author: String,
    bundle: String,
    endpoint: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonString {
    reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    isolation: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// The registry and the families; cheap to clone. Recording into a disabled one does nothing.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms<RequestLabels>,
    cold_starts: Family<ResultLabel, Counter>,
    phases: Histograms<PhaseLabel>,
    rejections: Family<ReasonLabel, Counter>,
    breaches: Family<LimitLabel, Counter>,
    verification: Family<KindLabel, Counter>,
    table: Arc<Table>,
    source: Arc<OnceLock<Source>>,
}

/// The label sets of one (author, bundle, endpoint), with the handles of each status class made
/// on first use. Resolve it once per request with [`Metrics::series`].
#[derive(Clone, Default)]
pub struct Series(Option<Arc<SeriesInner>>);

struct SeriesInner {
    author: String,
    bundle: String,
    endpoint: String,
    classes: [OnceLock<(Counter, Histogram)>; 5],
}

impl SeriesInner {
    fn new(author: &str, bundle: &str, endpoint: &str) -> Arc<Self> {
        Arc::new(SeriesInner {
            author: author.to_string(),
            bundle: bundle.to_string(),
            endpoint: endpoint.to_string(),
            classes: Default::default(),
        })
    }
}

type Endpoints = HashMap<String, Arc<SeriesInner>>;
/// Author → bundle → endpoint → series, and how many series there are.
type Sets = (HashMap<String, HashMap<String, Endpoints>>, usize);

/// Admitted label sets, looked up by `&str` at every level so a hit allocates nothing.
struct Table {
    cap: usize,
    sets: RwLock<Sets>,
    other: Arc<SeriesInner>,
    unresolved: Arc<SeriesInner>,
}

impl Table {
    fn get(&self, author: &str, bundle: &str, endpoint: &str) -> Arc<SeriesInner> {
        {
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = sets
                .0
                .get(author)
                .and_then(|b| b.get(bundle)?.get(endpoint))
            {
                return s.clone();
            }
        }
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let (map, count) = &mut *sets;
        if let Some(s) = map.get(author).and_then(|b| b.get(bundle)?.get(endpoint)) {
            return s.clone();
        }
        if *count >= self.cap {
            return self.other.clone();
        }
        *count += 1;
        let s = SeriesInner::new(author, bundle, endpoint);
        map.entry(author.to_string())
            .or_default()
            .entry(bundle.to_string())
            .or_default()
            .insert(endpoint.to_string(), s.clone());
        s
    }

    /// `author` if some label set under the cap names it, else `other`.
    fn author_label<'a>(&self, author: &'a str) -> &'a str {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        if sets.0.contains_key(author) {
            author
        } else {
            OTHER
        }
    }
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

impl Metrics {
    /// Metrics that record nothing and encode to `None` (`metrics.enabled = false`).
    pub fn disabled() -> Self {
        Metrics { inner: None }
    }

    pub fn new(opts: Options) -> Self {
        let mut registry = Registry::with_prefix("atrund");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Bundle invocations answered, by author, bundle, endpoint and status class",
            requests.clone(),
        );
        let durations: Histograms<RequestLabels> = Family::new_with_constructor(request_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from the request's arrival to its response head, by the same labels",
            durations.clone(),
        );
        let cold_starts = Family::<ResultLabel, Counter>::default();
        registry.register(
            "cold_starts",
            "Instance starts a request waited for (result ok or failed)",
            cold_starts.clone(),
        );
        let phases: Histograms<PhaseLabel> = Family::new_with_constructor(phase_histogram);
        registry.register(
            "cold_start_phase_seconds",
            "Time spent in each phase of a request's cold start: identity, fetch (records, proofs and blob, verified), start (spawn to ready)",
            phases.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pool_rejections",
            "Requests refused before running: busy, rate_limited, draining, crash_loop",
            rejections.clone(),
        );
        let breaches = Family::<LimitLabel, Counter>::default();
        registry.register(
            "limit_breaches",
            "Calls stopped by a per-bundle limit: memory, cpu, pids, timeout, response_size, file_size",
            breaches.clone(),
        );
        let verification = Family::<KindLabel, Counter>::default();
        registry.register(
            "verification_failures",
            "Requests refused because something fetched did not verify, by error name",
            verification.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: opts.version,
                isolation: opts.isolation,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels name this runner's version and isolation backend",
            build,
        );
        let table = Arc::new(Table {
            cap: opts.max_label_sets,
            sets: RwLock::default(),
            other: SeriesInner::new(OTHER, OTHER, OTHER),
            unresolved: SeriesInner::new(UNRESOLVED, UNRESOLVED, UNRESOLVED),
        });
        let source: Arc<OnceLock<Source>> = Arc::default();
        registry.register_collector(Box::new(Scraped {
            source: source.clone(),
            table: table.clone(),
        }));
        Metrics {
            inner: Some(Arc::new(Inner {
                registry,
                requests,
                durations,
                cold_starts,
                phases,
                rejections,
                breaches,
                verification,
                table,
                source,
            })),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Installs what is read at scrape time (once; later calls are ignored).
    pub fn set_source(&self, f: impl Fn() -> Snapshot + Send + Sync + 'static) {
        if let Some(i) = &self.inner {
            let _ = i.source.set(Box::new(f));
        }
    }

    /// The label set of a request whose bundle is known; `other` past the cap.
    pub fn series(&self, author: &str, bundle: &str, endpoint: &str) -> Series {
        Series(
            self.inner
                .as_ref()
                .map(|i| i.table.get(author, bundle, endpoint)),
        )
    }

    /// The label set of requests that failed before their bundle was known.
    pub fn unresolved(&self) -> Series {
        Series(self.inner.as_ref().map(|i| i.table.unresolved.clone()))
    }

    /// One answered request.
    pub fn request(&self, series: &Series, status: u16, elapsed: Duration) {
        let (Some(i), Some(s)) = (&self.inner, &series.0) else {
            return;
        };
        let class = class_index(status);
        let (count, hist) = s.classes[class].get_or_init(|| {
            let labels = RequestLabels {
                author: s.author.clone(),
                bundle: s.bundle.clone(),
                endpoint: s.endpoint.clone(),
                status: STATUS_CLASSES[class],
            };
            let c = i.requests.get_or_create(&labels).clone();
            let h = i.durations.get_or_create(&labels).clone();
            (c, h)
        });
        count.inc();
        hist.observe(elapsed.as_secs_f64());
    }

    /// A request's instance start, with the phases that were timed.
    pub fn cold_start(&self, ok: bool, phases: ColdStart) {
        let Some(i) = &self.inner else { return };
        let result = if ok { "ok" } else { "failed" };
        i.cold_starts.get_or_create(&ResultLabel { result }).inc();
        for (phase, d) in [
            ("identity", phases.identity),
            ("fetch", phases.fetch),
            ("start", phases.start),
        ] {
            if let Some(d) = d {
                i.phases
                    .get_or_create(&PhaseLabel { phase })
                    .observe(d.as_secs_f64());
            }
        }
    }

    pub fn rejection(&self, r: Rejection) {
        if let Some(i) = &self.inner {
            i.rejections
                .get_or_create(&ReasonLabel { reason: r.label() })
                .inc();
        }
    }

    pub fn breach(&self, l: Limit) {
        if let Some(i) = &self.inner {
            i.breaches
                .get_or_create(&LimitLabel { limit: l.label() })
                .inc();
        }
    }

    /// `kind` is the error's name (`CommitSignatureInvalid`, `BlobHashMismatch`, ...).
    pub fn verification_failure(&self, kind: &'static str) {
        if let Some(i) = &self.inner {
            i.verification.get_or_create(&KindLabel { kind }).inc();
        }
    }

    /// Everything, in the Prometheus text format; `None` when disabled.
    pub fn encode(&self) -> Option<String> {
        let i = self.inner.as_ref()?;
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug in a label value.
        prometheus_client::encoding::prometheus_text::encode(&mut out, &i.registry).ok()?;
        Some(out)
    }
}

/// The scrape-time families, from the installed [`Source`].
struct Scraped {
    source: Arc<OnceLock<Source>>,
    table: Arc<Table>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    author: String,
    instance: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressLabels {
    decision: &'static str,
    reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

/// Writes one family of constant samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.get() else {
            return Ok(());
        };
        let s = source();
        family(
            &mut enc,
            "instances",
            "Instances now, by state: starting, idle, busy",
            MetricType::Gauge,
            [
                ("starting", s.instances_starting),
                ("idle", s.instances_idle),
                ("busy", s.instances_busy),
            ]
            .map(|(state, n)| (StateLabel { state }, ConstGauge::new(n as i64))),
        )?;
        family(
            &mut enc,
            "instance_starts",
            "Instance starts (pre-warm included), by result",
            MetricType::Counter,
            [
                ("ok", s.instance_starts),
                ("failed", s.instance_start_failures),
            ]
            .map(|(result, n)| (ResultLabel { result }, ConstCounter::new(n))),
        )?;
        ConstCounter::new(s.instance_crashes).encode(enc.encode_descriptor(
            "instance_crashes",
            "Instances that exited on their own",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(s.adaptive_unloads).encode(enc.encode_descriptor(
            "pool_adaptive_unloads",
            "Idle instances stopped by adaptive warmth (right after the call before a pre-warm, or after the learned keep-alive)",
            None,
            MetricType::Counter,
        )?)?;
        family(
            &mut enc,
            "pool_adaptive_prewarms",
            "Adaptive warmth's starts ahead of an expected call: started, or skipped for lack of room under the caps",
            MetricType::Counter,
            [
                ("started", s.adaptive_prewarms),
                ("skipped", s.adaptive_prewarms_skipped),
            ]
            .map(|(result, n)| (ResultLabel { result }, ConstCounter::new(n))),
        )?;
        let cpu = s.instances.iter().filter_map(|u| {
            let labels = InstanceLabels {
                author: self.table.author_label(&u.author).to_string(),
                instance: u.instance.to_string(),
            };
            u.cpu.map(|c| (labels, ConstCounter::new(c.as_secs_f64())))
        });
        family(
            &mut enc,
            "instance_cpu_seconds",
            "CPU time of each running instance's cgroup",
            MetricType::Counter,
            cpu,
        )?;
        let mem = s.instances.iter().filter_map(|u| {
            let labels = InstanceLabels {
                author: self.table.author_label(&u.author).to_string(),
                instance: u.instance.to_string(),
            };
            u.memory_bytes.map(|m| {
                (
                    labels,
                    ConstGauge::new(i64::try_from(m).unwrap_or(i64::MAX)),
                )
            })
        });
        family(
            &mut enc,
            "instance_memory_bytes",
            "Resident memory of each running instance",
            MetricType::Gauge,
            mem,
        )?;
        let egress = std::iter::once((
            EgressLabels {
                decision: "allowed",
                reason: "listed".into(),
            },
            ConstCounter::new(s.egress_allowed),
        ))
        .chain(s.egress_denied.iter().map(|(reason, n)| {
            (
                EgressLabels {
                    decision: "denied",
                    reason: reason.clone(),
                },
                ConstCounter::new(*n),
            )
        }));
        family(
            &mut enc,
            "egress_decisions",
            "Bundles' outbound connections through the egress proxy: allowed, or denied by reason",
            MetricType::Counter,
            egress,
        )?;
        family(
            &mut enc,
            "identity_cache",
            "Identity cache look-ups by cache (did, handle) and result (hit, stale, miss, error)",
            MetricType::Counter,
            s.identity_cache
                .iter()
                .map(|(cache, result, n)| (CacheLabels { cache, result }, ConstCounter::new(*n))),
        )?;
        if let Some(c) = &s.response_cache {
            encode_response_cache(&mut enc, c)?;
        }
        if let Some(e) = &s.event_streams {
            scalars(
                &mut enc,
                MetricType::Gauge,
                [
                    (
                        "event_streams_hosts",
                        "PDSes whose event stream is followed (open or being reopened)",
                        e.hosts,
                    ),
                    ("event_streams_open", "PDS event streams open now", e.open),
                ],
            )?;
            scalars(
                &mut enc,
                MetricType::Counter,
                [
                    (
                        "event_streams_opens",
                        "PDS event streams opened, reopenings included",
                        e.opens,
                    ),
                    (
                        "event_streams_marks",
                        "Authors marked changed by an event (their next call fetches and verifies again)",
                        e.marks,
                    ),
                    (
                        "event_streams_rejected_commits",
                        "Commit events of followed authors that did not verify with their key, ignored",
                        e.rejected,
                    ),
                ],
            )?;
        }
        if let Some(t) = &s.trust {
            scalars(
                &mut enc,
                MetricType::Gauge,
                [(
                    "trust_follows",
                    "Accounts the operator follows, in the verified snapshot the runner holds",
                    t.follows,
                )],
            )?;
            if let Some(age) = t.age_secs {
                scalars(
                    &mut enc,
                    MetricType::Gauge,
                    [(
                        "trust_snapshot_age_seconds",
                        "Seconds since the operator's follows were last read (absent before the first read)",
                        age,
                    )],
                )?;
            }
            scalars(
                &mut enc,
                MetricType::Counter,
                [
                    (
                        "trust_reads",
                        "Reads of the operator's follows (getRepo, verified) that succeeded",
                        t.reads,
                    ),
                    (
                        "trust_read_failures",
                        "Reads of the operator's follows that failed (the last good snapshot stays, up to trust.max_stale_secs)",
                        t.read_failures,
                    ),
                    (
                        "trust_follow_back_checks",
                        "Follow-backs looked up and proven on authors' PDSes (mutuals)",
                        t.follow_back_checks,
                    ),
                ],
            )?;
        }
        if let Some(j) = &s.jobs {
            family(
                &mut enc,
                "jobs",
                "Background jobs in the queue now, by state",
                MetricType::Gauge,
                j.by_state.iter().map(|(state, n)| {
                    (
                        StateLabel { state },
                        ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX)),
                    )
                }),
            )?;
            family(
                &mut enc,
                "job_attempts",
                "Job attempts this runner ended, by outcome: succeeded, retried (failed, queued again), dead (failed, no attempts left), lost (ended after its lease)",
                MetricType::Counter,
                j.attempts
                    .iter()
                    .map(|(outcome, n)| (OutcomeLabel { outcome }, ConstCounter::new(*n))),
            )?;
        }
        if let Some(c) = &s.cluster {
            scalars(
                &mut enc,
                MetricType::Gauge,
                [(
                    "cluster_nodes",
                    "Runners of the cluster announced in Redis, this one included",
                    c.live_nodes,
                )],
            )?;
            family(
                &mut enc,
                "cluster_forwards",
                "Calls of bundles that belong to another runner, by outcome: forwarded, owner_down and owner_busy (served here instead), body_too_large (served here)",
                MetricType::Counter,
                c.forwards
                    .iter()
                    .map(|(outcome, n)| (OutcomeLabel { outcome }, ConstCounter::new(*n))),
            )?;
        }
        match &s.generic {
            Some(g) => encode_generic(&mut enc, g),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The `response_cache_*` families (only with the cache on).
fn encode_response_cache(
    enc: &mut DescriptorEncoder,
    c: &ResponseCache,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        "response_cache_lookups",
        "Response cache look-ups of GET and HEAD requests (and other methods, as `method`) by result: hit, or why the bundle was called (uri-miss, vary-miss, stale, request, bypass, method)",
        MetricType::Counter,
        c.lookups
            .iter()
            .map(|(result, n)| (ResultLabel { result }, ConstCounter::new(*n))),
    )?;
    scalars(
        enc,
        MetricType::Counter,
        [
            (
                "response_cache_stored",
                "Answers kept by the response cache (a revalidated one counts again)",
                c.stored,
            ),
            (
                "response_cache_evicted",
                "Kept answers dropped to stay under cache.max_bytes",
                c.evicted,
            ),
        ],
    )?;
    scalars(
        enc,
        MetricType::Gauge,
        [
            (
                "response_cache_entries",
                "Answers kept by the response cache now",
                c.entries,
            ),
            (
                "response_cache_bytes",
                "Memory the kept answers count against cache.max_bytes",
                c.bytes,
            ),
        ],
    )?;
    Ok(())
}

/// The `pool_generic_*` families (only when the generic sandboxes are on).
fn encode_generic(
    enc: &mut DescriptorEncoder,
    g: &GenericSandboxes,
) -> Result<(), std::fmt::Error> {
    let gauges = [
        ("pool_generic_ready", "Generic sandboxes ready now", g.ready),
        (
            "pool_generic_starting",
            "Generic sandboxes being started now",
            g.starting,
        ),
        (
            "pool_generic_memory_bytes",
            "Resident memory of the ready generic sandboxes, as last read",
            g.memory_bytes,
        ),
    ];
    scalars(enc, MetricType::Gauge, gauges)?;
    let counters = [
        (
            "pool_generic_taken",
            "Generic sandboxes handed to a bundle",
            g.taken,
        ),
        (
            "pool_generic_specialise_failures",
            "Generic sandboxes whose specialisation to a bundle failed",
            g.specialise_failures,
        ),
        (
            "pool_generic_start_failures",
            "Generic sandboxes that failed to start",
            g.start_failures,
        ),
    ];
    scalars(enc, MetricType::Counter, counters)?;
    family(
        enc,
        "pool_generic_fallbacks",
        "Instances started the normal way although generic sandboxes are on, by reason: run, limits, rlimits, empty",
        MetricType::Counter,
        g.fallbacks.iter().map(|(reason, n)| {
            (
                ReasonString {
                    reason: reason.clone(),
                },
                ConstCounter::new(*n),
            )
        }),
    )
}

/// Families of one unlabelled sample each: `(name, help, value)`.
fn scalars<const N: usize>(
    enc: &mut DescriptorEncoder,
    kind: MetricType,
    samples: [(&str, &str, u64); N],
) -> Result<(), std::fmt::Error> {
    for (name, help, v) in samples {
        let d = enc.encode_descriptor(name, help, None, kind)?;
        if matches!(kind, MetricType::Gauge) {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(d)?;
        } else {
            ConstCounter::new(v).encode(d)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
