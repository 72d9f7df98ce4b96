//! Request ids: every response of the main listener carries `x-request-id`, the caller's when it
//! is well-formed (1–64 characters of `A-Z a-z 0-9 . _ -`), else one made here; everything
//! logged while the request is handled runs in a `request` span with that id, and JSON error
//! bodies name it (`requestId`).
//!
//! Owns: the id's syntax, making ids, the span and the task-local that error bodies read (with
//! traces on the span is `trace`'s traced one). Must not touch: what the request does.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header, in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a caller.
pub const MAX_LEN: usize = 64;

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// True for an id this runner takes from a caller as it is.
pub fn is_valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new id: 16 hex digits, unique within the process and not predictable from outside
/// (a per-process random key mixed with a counter).
pub fn generate() -> HeaderValue {
    static KEY: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    // splitmix64 of (key + counter): a bijection of the counter, so ids never repeat.
    let mut z = key.wrapping_add(
        N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut buf = [0u8; 16];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Middleware: picks the request's id, runs the rest of the stack in its span and task-local,
/// and sets it on the response.
pub async fn layer(req: Request, next: Next) -> Response {
    around(req, false, |req| next.run(req)).await
}

/// [`layer`] when traces are on: the same, in the traced `request` span (`trace`), which also
/// gets the method and the response status.
pub async fn traced_layer(req: Request, next: Next) -> Response {
    around(req, true, |req| next.run(req)).await
}

/// What both layers do around `inner` (also used by the main service's direct route).
pub async fn around<F, Fut>(req: Request, traced: bool, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id = pick(&req);
    // Valid ids and generated ones are ASCII.
    let request_id = id.to_str().unwrap_or_default();
    if traced {
        let span =
            crate::trace::request_span(req.headers(), request_id, req.method(), client_addr(&req));
        let resp = respond(id, span.clone(), inner(req)).await;
        crate::trace::answered(&span, resp.status());
        return resp;
    }
    // Set at creation, not recorded later: every log format then has it from the first line.
    let span = match client_addr(&req) {
        Some(client) => tracing::info_span!("request", request_id, %client),
        None => tracing::info_span!("request", request_id),
    };
    respond(id, span, inner(req)).await
}

/// The client address `forwarded` decided on, for the span.
fn client_addr(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<crate::forwarded::Client>()
        .and_then(|c| c.addr)
}

/// The caller's id when it is well-formed, else a new one.
fn pick(req: &Request) -> HeaderValue {
    req.headers()
        .get(&HEADER)
        .filter(|v| is_valid(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate)
}

async fn respond(
    id: HeaderValue,
    span: tracing::Span,
    inner: impl std::future::Future<Output = Response>,
) -> Response {
    let mut resp = CURRENT.scope(id.clone(), inner.instrument(span)).await;
    resp.headers_mut().insert(HEADER, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_taken_only_when_well_formed() {
        for ok in ["a", "abc-DEF_1.2", &"x".repeat(64)] {
            assert!(is_valid(ok.as_bytes()), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a/b", "é", "a\u{0}", "a;b"] {
            assert!(!is_valid(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|v| is_valid(v.as_bytes()) && v.len() == 16));
    }
}
