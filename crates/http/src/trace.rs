//! Request traces (OpenTelemetry), with `otel.enabled`: the traced `request` span, a caller's
//! W3C `traceparent`/`tracestate` as its parent, the request's attributes, the cold-start phase
//! spans' target, and the `traceparent` the bundle's request carries (docs/observability.md,
//! "Traces").
//!
//! Owns: which trace context is taken from a caller (well-formed only; anything else is ignored,
//! never an error), the attribute names, and what the bundle is told. Must not touch: exporting,
//! sampling and the subscriber (the binary sets those up); with traces off nothing here runs and
//! a caller's headers reach the bundle untouched.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use atrund_pool::TRACE_TARGET;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The request's span when traces are on: the same name and `request_id` field as the log's
/// (so log lines look the same), under [`TRACE_TARGET`], a server span, the child of the
/// caller's trace when its `traceparent` is well-formed.
pub fn request_span(
    headers: &HeaderMap,
    request_id: &str,
    method: &Method,
    client: Option<std::net::IpAddr>,
) -> Span {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        request_id = request_id,
        otel.kind = "server"
    );
    if let Some(cx) = caller_context(headers) {
        // Fails only when no trace layer is installed, and then there is nothing to join.
        let _ = span.set_parent(cx);
    }
    span.set_attribute("http.request.method", method.as_str().to_string());
    if let Some(addr) = client {
        // OpenTelemetry's name for the client behind any proxies.
        span.set_attribute("client.address", addr.to_string());
    }
    span
}

/// The caller's trace context, if it sent exactly one well-formed `traceparent`.
fn caller_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(tp), None) = (values.next(), values.next()) else {
        return None;
    };
    if !is_well_formed_traceparent(tp.as_bytes()) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// `version-traceid-spanid-flags` as W3C Trace Context writes it: lower-case hex of 2, 32, 16
/// and 2 digits; version `ff` is invalid, and version `00` has nothing after the flags (later
/// versions may append `-...`). All-zero ids are refused by the propagator after this.
pub fn is_well_formed_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() < 55 {
        return false;
    }
    let (head, tail) = v.split_at(55);
    let ok = hex(&head[0..2])
        && head[2] == b'-'
        && hex(&head[3..35])
        && head[35] == b'-'
        && hex(&head[36..52])
        && head[52] == b'-'
        && hex(&head[53..55])
        && &head[0..2] != b"ff";
    match &head[0..2] {
        _ if !ok => false,
        b"00" => tail.is_empty(),
        _ => tail.is_empty() || tail[0] == b'-',
    }
}

/// Replaces the request's `traceparent` and `tracestate` with those of the current span (the
/// `call` span, whose child the bundle's own fetches then become); the caller's `tracestate`
/// travels on in the context.
pub fn inject_current(headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let cx = Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
}

/// What the pipeline learnt of an invocation, as attributes of the request span.
pub struct Invocation<'a> {
    /// The route's template.
    pub route: &'static str,
    /// `(author DID, bundle name, endpoint)` once the bundle is resolved.
    pub resolved: Option<(&'a str, &'a str, &'a str)>,
    /// This request started the instance it ran on.
    pub cold: bool,
}

/// Sets an invocation's attributes on `span`, the request span.
pub fn invocation(span: &Span, inv: &Invocation<'_>) {
    span.set_attribute("http.route", inv.route);
    if let Some((author, bundle, endpoint)) = inv.resolved {
        span.set_attribute("atrund.author", author.to_string());
        span.set_attribute("atrund.bundle", bundle.to_string());
        span.set_attribute("atrund.endpoint", endpoint.to_string());
    }
    span.set_attribute("atrund.cold_start", inv.cold);
}

/// Sets the response status on the request span; a 5xx marks the span as an error (4xx are the
/// caller's, as the HTTP server conventions say).
pub fn answered(span: &Span, status: StatusCode) {
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is not sent.
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        assert!(is_well_formed_traceparent(OK.as_bytes()));
        // A later version may append fields.
        assert!(is_well_formed_traceparent(
            format!("01{}-extra", &OK[2..]).as_bytes()
        ));
        for bad in [
            "",
            &OK[..54],
            &format!("{OK}-"),
            &OK.to_uppercase(),
            &format!("ff{}", &OK[2..]),
            &OK.replace('-', "_"),
            &format!("01{}x", &OK[2..]),
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",
        ] {
            assert!(!is_well_formed_traceparent(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn malformed_zero_or_repeated_traceparents_are_ignored() {
        let mut h = HeaderMap::new();
        assert!(caller_context(&h).is_none());
        h.insert(TRACEPARENT, HeaderValue::from_static(OK));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let cx = caller_context(&h).unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "vendor=x");
        h.append(TRACEPARENT, HeaderValue::from_static(OK));
        assert!(caller_context(&h).is_none());
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        assert!(caller_context(&h).is_none());
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        assert!(caller_context(&h).is_none());
    }

    #[test]
    fn without_a_trace_layer_the_callers_headers_are_dropped_not_forged() {
        // No subscriber: the current span has no trace context, so nothing is written.
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(OK));
        inject_current(&mut h);
        assert!(h.get(TRACEPARENT).is_none());
    }
}
