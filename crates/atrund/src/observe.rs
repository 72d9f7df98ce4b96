//! The runner's own observability wiring: the log subscriber (`log.format`: text, or one JSON
//! object per line), the reading of the components' counters (pool, egress proxy, identity
//! caches) that the metrics scrape and the status page share, and the metrics registry.
//!
//! Owns: the JSON log line's shape and the mapping of component counters into a metrics
//! [`Snapshot`]. Must not touch: metric names or labels (`atrund-metrics`), what is logged.

use std::sync::Arc;

use atrund_config::{Config, LogFormat};
use atrund_metrics::{InstanceUsage, Metrics, Snapshot};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber: filter from `ATRUND_LOG` (default `info`), lines on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATRUND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .init(),
    }
}

/// `{"time", "level", "target", "message", "fields", "request_id", "spans"}`: `request_id` lifted
/// from the enclosing `request` span so one `jq 'select(.request_id == "…")'` finds a request's
/// lines; `spans` lists every enclosing span's fields and its name (`span`), outermost first.
struct JsonLine;

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
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
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
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        let mut out = Value::Object(line).to_string();
        out.push('\n');
        w.write_str(&out)
    }
}

/// Reads the pool's, the egress proxy's and the identity caches' counters into a [`Snapshot`]:
/// what the metrics scrape and the status page read.
pub fn counters(
    pool: Arc<atrund_pool::Pool>,
    egress: Arc<atrund_egress::EgressProxy>,
    identity: atrund_identity::IdentityResolver,
) -> atrund_http::Counters {
    Arc::new(move || snapshot(&pool, &egress, &identity))
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
    }
}

/// The log format for `command`, read from its config before logging starts. A config that does
/// not load gives `text` here; the command then reports the error itself.
pub fn log_format(config: Option<&std::path::Path>) -> LogFormat {
    atrund_config::process_env()
        .ok()
        .and_then(|env| Config::load(config, &env).ok())
        .map(|c| c.log.format)
        .unwrap_or_default()
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
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(n = 1, "before");
            let outer = tracing::info_span!("request", request_id = "abc-1");
            let _o = outer.enter();
            let inner = tracing::info_span!("invoke", endpoint = %"greet");
            let _i = inner.enter();
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
}
