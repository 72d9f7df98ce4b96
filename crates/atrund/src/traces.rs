//! The trace pipeline of `[otel]` (docs/observability.md, "Traces"): a tracer provider with the
//! configured sampler and `service.name`, a batch processor with a bounded queue, and the OTLP
//! HTTP/protobuf exporter; export failures logged at most once a minute; the final flush at
//! shutdown.
//!
//! Owns: building and stopping the pipeline. Must not touch: which spans exist and what they say
//! (`atrund-http`, `atrund-pool`), or the log's format (`observe`).
//!
//! Requests never wait for it: a finished span is handed to the batch processor's queue (dropped
//! when the queue is full), whose own thread exports with a blocking client bounded by
//! `otel.export_timeout_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use atrund_config::{OtelSampler, OtelSection};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    Tracer,
};
use opentelemetry_sdk::Resource;

/// Least time between two log lines about failed exports.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The running pipeline; [`Traces::shutdown`] exports what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the pipeline of `cfg` (checked by the config crate already).
    pub fn start(cfg: &OtelSection) -> Result<Traces> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(Duration::from_millis(cfg.export_timeout_ms))
            .build()
            .with_context(|| {
                format!(
                    "cannot set up the trace exporter for {} (otel.endpoint)",
                    cfg.endpoint
                )
            })?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(usize::try_from(cfg.queue_size).unwrap_or(usize::MAX))
            .with_max_export_batch_size(usize::try_from(cfg.batch_size).unwrap_or(usize::MAX))
            .with_scheduled_delay(Duration::from_millis(cfg.batch_delay_ms))
            .build();
        let processor = BatchSpanProcessor::builder(LoggedFailures::new(exporter))
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler(cfg.sampler, cfg.sampler_arg))
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        Ok(Traces { provider })
    }

    /// The tracer the log subscriber's trace layer records into.
    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("at-rund")
    }

    /// Exports the queued spans and stops the exporter. Blocks: call it outside the async
    /// runtime (or on a blocking thread).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: traces not all exported at shutdown: {e}");
        }
    }
}

fn sampler(kind: OtelSampler, ratio: f64) -> Sampler {
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match kind {
        OtelSampler::AlwaysOn => Sampler::AlwaysOn,
        OtelSampler::AlwaysOff => Sampler::AlwaysOff,
        OtelSampler::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        OtelSampler::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
        OtelSampler::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
        OtelSampler::ParentBasedTraceIdRatio => parent_based(Sampler::TraceIdRatioBased(ratio)),
    }
}

/// An exporter that logs its failures, at most one line per [`FAILURE_LOG_EVERY`] with the
/// spans lost since the last line, so an unreachable collector cannot flood the log.
#[derive(Debug)]
struct LoggedFailures<E> {
    inner: E,
    last_logged: Mutex<Option<Instant>>,
    lost: AtomicU64,
}

impl<E> LoggedFailures<E> {
    fn new(inner: E) -> Self {
        LoggedFailures {
            inner,
            last_logged: Mutex::new(None),
            lost: AtomicU64::new(0),
        }
    }

    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        let lost = self.lost.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
        let now = Instant::now();
        let Ok(mut last) = self.last_logged.lock() else {
            return;
        };
        if last.is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY) {
            return;
        }
        *last = Some(now);
        self.lost.store(0, Ordering::Relaxed);
        tracing::warn!(
            error = %error,
            spans_lost = lost,
            "trace export failed (requests are not affected; next report in a minute at the earliest)"
        );
    }
}

impl<E: SpanExporter> SpanExporter for LoggedFailures<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failed(n, e);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    #[derive(Debug)]
    struct Failing;

    impl SpanExporter for Failing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("unreachable".into()))
        }
    }

    #[test]
    fn failures_are_counted_and_logged_once_a_minute() {
        let e = LoggedFailures::new(Failing);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The first failure is logged (and resets the count); later ones are only counted.
        assert!(rt.block_on(e.export(vec![])).is_err());
        let first = *e.last_logged.lock().unwrap();
        assert!(first.is_some());
        e.failed(3, &"x");
        e.failed(4, &"x");
        assert_eq!(*e.last_logged.lock().unwrap(), first);
        assert_eq!(e.lost.load(Ordering::Relaxed), 7);
    }
}
