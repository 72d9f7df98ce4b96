//! The runner's own observability wiring: the log subscriber (`log.format`: text, or one JSON
//! object per line), with the trace layer when `[otel]` is on, the reading of the components'
//! counters (pool, egress proxy, identity caches) that the metrics scrape and the status page
//! share, and the metrics registry.
//!
//! Owns: the JSON log line's shape, which spans the trace layer takes, and the mapping of
//! component counters into a metrics [`Snapshot`]. Must not touch: metric names or labels
//! (`atrund-metrics`), what is logged, the trace pipeline (`traces`).

use std::sync::Arc;

use atrund_config::{Config, LogFormat};
use atrund_http::trace::TRACE_TARGET;
use atrund_metrics::{InstanceUsage, Metrics, Snapshot};
use opentelemetry_sdk::trace::Tracer;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

/// Installs the global subscriber: filter from `ATRUND_LOG` (default `info`), lines on stderr.
/// With `tracer` (traces on), the spans under [`TRACE_TARGET`] are also recorded as trace spans,
/// whatever the log filter, and JSON lines carry `trace_id`/`span_id`. Without it the subscriber
/// is exactly the log's.
pub fn init_logging(format: LogFormat, tracer: Option<Tracer>) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("ATRUND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if tracer.is_some() {
        // The filter is global: a span it refuses reaches no layer, so the traced spans are let
        // through here and the trace layer's own filter keeps to them.
        if let Ok(d) = format!("{TRACE_TARGET}=trace").parse() {
            filter = filter.add_directive(d);
        }
    }
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => install(
            fmt.with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(PlainFields),
            filter,
            tracer,
        ),
        LogFormat::Json => install(
            fmt.with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine {
                    traces: tracer.is_some(),
                }),
            filter,
            tracer,
        ),
    }
}

/// The text log's field formatter: what `tracing_subscriber`'s default one writes, written
/// without its styling machinery when there is no styling to write. Each request opens two spans
/// whose fields are formatted when they are made; with colours off the default formatter still
/// runs every name and `=` through its ANSI painter, about 1.4 µs per request (issue 14,
/// docs/performance.md). Fields that are all plain values (no `message`, no error, no `r#` or
/// `log.` name: span fields) are written here as `name=value` pairs, `Debug`-formatted and
/// space-separated as the default does; everything else goes to the default formatter.
struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut probe = PlainProbe(true);
        fields.record(&mut probe);
        if writer.has_ansi_escapes() || !probe.0 {
            return tracing_subscriber::fmt::format::DefaultFields::new()
                .format_fields(writer, fields);
        }
        let mut plain = PlainWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut plain);
        plain.result
    }
}

/// Whether every field is one [`PlainWriter`] writes as the default formatter would.
struct PlainProbe(bool);

impl PlainProbe {
    fn plain(name: &str) -> bool {
        name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
    }
}

impl Visit for PlainProbe {
    fn record_debug(&mut self, f: &Field, _: &dyn std::fmt::Debug) {
        self.0 &= Self::plain(f.name());
    }
    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.0 = false;
    }
}

/// `name=value` pairs, as `DefaultFields` writes them without colours.
struct PlainWriter<'w> {
    writer: Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl Visit for PlainWriter<'_> {
    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let pad = if self.first { "" } else { " " };
        self.first = false;
        self.result = write!(self.writer, "{pad}{}={value:?}", f.name());
    }
}

/// The log layer under the global filter (what `tracing_subscriber::fmt().init()` builds), and
/// the trace layer on top when there is a tracer.
fn install<L>(log: L, filter: tracing_subscriber::EnvFilter, tracer: Option<Tracer>)
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    let base = tracing_subscriber::registry().with(log).with(filter);
    match tracer {
        None => base.init(),
        Some(t) => base.with(trace_layer(t)).init(),
    }
}

/// The layer that turns the spans under [`TRACE_TARGET`] (the request and its phases) into
/// trace spans; no other span and no event (log lines stay in the log).
fn trace_layer<S>(tracer: Tracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target() == TRACE_TARGET
        }))
}

/// `{"time", "level", "target", "message", "fields", "request_id", "trace_id", "span_id",
/// "spans"}`: `request_id` lifted from the enclosing `request` span so one
/// `jq 'select(.request_id == "…")'` finds a request's lines; with traces on, `trace_id` and
/// `span_id` of the innermost enclosing trace span; `spans` lists every enclosing span's fields
/// and its name (`span`), outermost first.
struct JsonLine {
    /// Traces are on: look for trace spans.
    traces: bool,
}

/// An event's fields as JSON, its message apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, f: &Field, v: Value) {
        if f.name() == "message" {
            self.message = Some(match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.insert(f.name().to_string(), v);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f, Value::from(format!("{v:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut time = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("time".into(), Value::from(time));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        line.insert(
            "message".into(),
            Value::from(fields.message.unwrap_or_default()),
        );
        if !fields.rest.is_empty() {
            line.insert("fields".into(), Value::Object(fields.rest));
        }
        let mut spans = Vec::new();
        let mut trace = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if self.traces {
                    if let Some(d) = ext.get::<tracing_opentelemetry::OtelData>() {
                        if let (Some(t), Some(s)) = (d.trace_id(), d.span_id()) {
                            trace = Some((t, s));
                        }
                    }
                }
                // The span's fields as the JSON field formatter stored them.
                let mut obj: Map<String, Value> = ext
                    .get::<FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str(f.as_str()).ok())
                    .unwrap_or_default();
                if let Some(id) = obj.get("request_id") {
                    line.insert("request_id".into(), id.clone());
                }
                // Not `name`: span fields such as `invoke`'s bundle name use that key.
                obj.insert("span".into(), Value::from(span.name()));
                spans.push(Value::Object(obj));
            }
        }
        if let Some((t, s)) = trace {
            line.insert("trace_id".into(), Value::from(t.to_string()));
            line.insert("span_id".into(), Value::from(s.to_string()));
        }
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        let mut out = Value::Object(line).to_string();
        out.push('\n');
        w.write_str(&out)
    }
}

/// The components whose counters the metrics read; the optional ones when they are on.
pub struct CounterSources {
    pub pool: Arc<atrund_pool::Pool>,
    pub egress: Arc<atrund_egress::EgressProxy>,
    pub identity: atrund_identity::IdentityResolver,
    pub cache: Option<Arc<atrund_cache::ResponseCache>>,
    pub jobs: Option<Arc<atrund_http::jobs::Jobs>>,
    pub cluster: Option<Arc<atrund_http::cluster::Forwarder>>,
    pub source: atrund_bundle::BundleSource,
    pub graph: Option<atrund_trust::GraphTrust>,
}

/// Reads the pool's, the egress proxy's and the identity caches' counters into a [`Snapshot`]:
/// what the metrics scrape and the status page read.
pub fn counters(sources: CounterSources) -> atrund_http::Counters {
    let CounterSources {
        pool,
        egress,
        identity,
        cache,
        jobs,
        cluster,
        source,
        graph,
    } = sources;
    Arc::new(move || {
        let mut s = snapshot(&pool, &egress, &identity);
        s.trust = graph.as_ref().map(|g| {
            let st = g.stats();
            atrund_metrics::TrustGraph {
                follows: st.follows,
                age_secs: st.age_secs,
                reads: st.reads_ok,
                read_failures: st.reads_failed,
                follow_back_checks: st.follow_back_checks,
            }
        });
        s.event_streams = source
            .event_stream_stats()
            .map(|e| atrund_metrics::EventStreams {
                hosts: e.hosts,
                open: e.open,
                opens: e.opens,
                marks: e.marks,
                rejected: e.rejected,
            });
        s.response_cache = cache.as_ref().map(|c| {
            let st = c.stats();
            atrund_metrics::ResponseCache {
                entries: st.entries,
                bytes: st.bytes,
                lookups: st.lookups,
                stored: st.stored,
                evicted: st.evicted,
            }
        });
        s.jobs = jobs.as_ref().map(|j| j.metrics());
        s.cluster = cluster.as_ref().map(|c| c.metrics());
        s
    })
}

/// The metrics of this runner (`[metrics]`), reading `counters` at scrape time.
pub fn metrics(config: &Config, isolation: &str, counters: atrund_http::Counters) -> Metrics {
    let atrund_config::MetricsSection {
        enabled,
        max_label_sets,
        // Read by the HTTP layer's router.
        public: _,
    } = &config.metrics;
    if !enabled {
        return Metrics::disabled();
    }
    let metrics = Metrics::new(atrund_metrics::Options {
        max_label_sets: usize::try_from(*max_label_sets).unwrap_or(usize::MAX),
        version: env!("CARGO_PKG_VERSION").into(),
        isolation: isolation.into(),
    });
    metrics.set_source(move || counters());
    metrics
}

fn snapshot(
    pool: &atrund_pool::Pool,
    egress: &atrund_egress::EgressProxy,
    identity: &atrund_identity::IdentityResolver,
) -> Snapshot {
    let p = pool.stats();
    let e = egress.stats();
    let ids = identity.cache_stats();
    let mut identity_cache = Vec::with_capacity(8);
    for (cache, s) in [("did", ids.dids), ("handle", ids.handles)] {
        identity_cache.extend([
            (cache, "hit", s.hits),
            (cache, "stale", s.stale),
            (cache, "miss", s.misses),
            (cache, "error", s.errors),
        ]);
    }
    Snapshot {
        instances_starting: p.starting as u64,
        instances_idle: p.idle as u64,
        instances_busy: p.busy as u64,
        instance_starts: p.starts,
        instance_start_failures: p.start_failures,
        instance_crashes: p.crashes,
        adaptive_unloads: p.adaptive_unloads,
        adaptive_prewarms: p.adaptive_prewarms,
        adaptive_prewarms_skipped: p.adaptive_prewarms_skipped,
        instances: pool
            .usage()
            .into_iter()
            .map(|u| InstanceUsage {
                author: u.author,
                instance: u.id,
                cpu: u.cpu,
                memory_bytes: u.rss_bytes,
            })
            .collect(),
        egress_allowed: e.allowed,
        egress_denied: e.denied.into_iter().collect(),
        identity_cache,
        // Filled by `counters`, which holds the cache and the jobs.
        response_cache: None,
        jobs: None,
        cluster: None,
        event_streams: None,
        trust: None,
        generic: p.generic.map(|g| atrund_metrics::GenericSandboxes {
            ready: g.ready,
            starting: g.starting,
            memory_bytes: g.memory_bytes,
            taken: g.taken,
            specialise_failures: g.specialise_failures,
            start_failures: g.start_failures,
            fallbacks: g.fallbacks,
        }),
    }
}

/// The config of `command`, read before logging starts for the log format and `[otel]`. A
/// config that does not load gives `None` here (text logs, no traces); the command then reports
/// the error itself.
pub fn early_config(config: Option<&std::path::Path>) -> Option<Config> {
    atrund_config::process_env()
        .ok()
        .and_then(|env| Config::load(config, &env).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_request_id_of_their_span() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine { traces: false })
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(n = 1, "before");
            let outer = tracing::info_span!("request", request_id = "abc-1");
            let _o = outer.enter();
            let inner = tracing::info_span!("invoke", endpoint = %"greet");
            let _i = inner.enter();
            let raw = tracing::info_span!("raw", r#type = "t");
            let _r = raw.enter();
            tracing::warn!(code = "Busy", "inside");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "before");
        assert_eq!(lines[0]["fields"]["n"], 1);
        assert!(lines[0].get("request_id").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["request_id"], "abc-1");
        assert_eq!(lines[1]["fields"]["code"], "Busy");
        assert_eq!(lines[1]["spans"][1]["span"], "invoke");
        assert_eq!(lines[1]["spans"][1]["endpoint"], "greet");
        assert!(lines[1]["time"].as_str().unwrap().contains('T'));
    }

    /// What the text log writes with `PlainFields` and with the default field formatter.
    fn text_lines(plain: bool) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .without_time();
        let log = || {
            let err = std::io::Error::other("disk full");
            let outer = tracing::info_span!("request", request_id = "abc-1", client = %"127.0.0.1");
            let _o = outer.enter();
            let inner = tracing::info_span!(
                "invoke",
                author = %"did:plc:x",
                quoted = "a\"b",
                n = 3u64,
                neg = -2i64,
                ok = true,
                ratio = 0.5f64,
                list = ?["a", "b"],
            );
            let _i = inner.enter();
            let raw = tracing::info_span!("raw", r#type = "t");
            let _r = raw.enter();
            tracing::warn!(
                code = "Busy",
                error = &err as &(dyn std::error::Error + 'static),
                "inside \"quoted\""
            );
            tracing::info!(n = 1, "plain fields and a message");
            tracing::info!(only = "fields");
        };
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn plain_fields_write_what_the_default_formatter_writes() {
        let plain = text_lines(true);
        assert_eq!(plain, text_lines(false));
        assert!(
            plain.contains(
                "request{request_id=\"abc-1\" client=127.0.0.1}:invoke{author=did:plc:x quoted=\"a\\\"b\" n=3 neg=-2 ok=true ratio=0.5 list=[\"a\", \"b\"]}:raw{type=\"t\"}:"
            ),
            "{plain}"
        );
        assert_eq!(plain.lines().count(), 3, "{plain}");
    }
}
