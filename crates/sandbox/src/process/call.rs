//! One call on the wire between at-rund and the shim: the caller's request rewritten for the
//! shim (origin form `/e/<endpoint><path>?<query>`, or `/t/<task>` for a job's task; HTTP/1.1;
//! hop-by-hop and reserved headers dropped), the structured failures the shim reports
//! (`x-atrund-error`). The response body on its way out is
//! the instance's (`instance::TrackedBody`), as it counts against the instance.
//!
//! Owns: what crosses the socket for one call. Must not: start or kill processes (a breach is
//! reported to the instance, which kills).

use http::header::{HeaderName, HeaderValue};
use http_body_util::BodyExt;

use crate::SandboxError;

/// Largest structured error body read from the shim.
pub(super) const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest message relayed from the shim (it runs in the bundle's realm, so it is untrusted).
pub(super) const MAX_ERROR_MESSAGE: usize = 500;
/// Path prefix of calls to the shim, followed by the endpoint's name: a path rather than a
/// header, so the shim reads no header on a call that needs none (docs/performance.md).
pub(super) const CALL_PREFIX: &str = "/e/";
/// Path prefix of task runs (`CallKind::Task`), followed by the task's name.
pub(super) const TASK_PREFIX: &str = "/t/";
/// Header by which the shim marks a structured failure.
pub(super) const ERROR_HEADER: &str = "x-atrund-error";
/// Headers reserved between at-rund and the shim.
pub(super) const RESERVED_PREFIX: &str = "x-atrund-";

/// Connection-level headers (RFC 9110 §7.6.1) that a hop must not pass on.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// The request as the shim receives it.
/// Reuses the caller's parts (no copy of the headers) and drops what must not reach the shim.
pub(super) fn to_shim_request(
    endpoint: &str,
    kind: crate::CallKind,
    request: http::Request<crate::Body>,
) -> Result<http::Request<crate::Body>, SandboxError> {
    // The shim splits the path at the first `/` after the prefix: the name must hold none (nor
    // anything else a URI path would change). Endpoint names are identifiers.
    if endpoint.is_empty()
        || !endpoint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    {
        return Err(SandboxError::EndpointNotFound(endpoint.to_string()));
    }
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|s| s.starts_with('/'))
        .unwrap_or("/");
    // A task run has no path or query of its own: its input is the body.
    let (prefix, path) = match kind {
        crate::CallKind::Endpoint => (CALL_PREFIX, path),
        crate::CallKind::Task => (TASK_PREFIX, ""),
    };
    let mut target = String::with_capacity(prefix.len() + endpoint.len() + path.len());
    target.push_str(prefix);
    target.push_str(endpoint);
    target.push_str(path);
    parts.uri = http::Uri::try_from(target)
        .map_err(|e| SandboxError::BadInput(format!("the request path is not valid: {e}")))?;
    parts.version = http::Version::HTTP_11;
    parts.extensions.clear();
    let headers = &mut parts.headers;
    let strip = |k: &HeaderName| is_hop_by_hop(k) || k.as_str().starts_with(RESERVED_PREFIX);
    if headers.keys().any(strip) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| strip(k)).cloned().collect();
        for k in names {
            headers.remove(k);
        }
    }
    if headers.get(http::header::HOST).is_none_or(|h| h.is_empty()) {
        headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    Ok(http::Request::from_parts(parts, body))
}

/// The structured failure the shim reported, as a `SandboxError`.
pub(super) async fn shim_error(
    name: &str,
    endpoint: &str,
    body: crate::shim_http::ShimBody,
    deadline: tokio::time::Instant,
) -> Result<SandboxError, ()> {
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
    let bytes = tokio::time::timeout_at(deadline, limited.collect())
        .await
        .map_err(|_| ())?
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(clean_message))
        .unwrap_or_else(|| "no details".into());
    Ok(match name {
        "EndpointNotFound" => SandboxError::EndpointNotFound(endpoint.to_string()),
        "InvalidInput" => SandboxError::BadInput(message),
        "MethodNotAllowed" => SandboxError::MethodNotAllowed(message),
        _ => SandboxError::BundleFailed(message),
    })
}

pub(super) fn clean_message(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_MESSAGE)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_run_names_only_the_task() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/x/y?z=1")
            .body(crate::empty_body())
            .unwrap();
        let out = to_shim_request("double", crate::CallKind::Task, req).unwrap();
        assert_eq!(out.uri(), "/t/double");
    }

    #[test]
    fn shim_request_strips_reserved_and_sets_endpoint() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a/b?x=1")
            .header("x-atrund-endpoint", "evil")
            .header("x-atrund-error", "EndpointNotFound")
            .header("connection", "close")
            .header("content-type", "application/json")
            .body(crate::empty_body())
            .unwrap();
        let out = to_shim_request("greet", crate::CallKind::Endpoint, req).unwrap();
        assert_eq!(out.uri(), "/e/greet/a/b?x=1");
        assert!(out.headers().get("x-atrund-endpoint").is_none());
        assert!(out.headers().get("x-atrund-error").is_none());
        assert!(out.headers().get("connection").is_none());
        assert_eq!(out.headers()["host"], "localhost");
        assert_eq!(out.headers()["content-type"], "application/json");
        for bad in ["a\nb", "a/b", "a?b", "", "a%2f"] {
            let out = to_shim_request(
                bad,
                crate::CallKind::Task,
                http::Request::new(crate::empty_body()),
            );
            assert_eq!(out.unwrap_err().code(), "EndpointNotFound", "{bad:?}");
        }
        // Absolute-form and HTTP/2 requests still reach the shim as origin-form HTTP/1.1.
        let abs = http::Request::builder()
            .uri("http://example.com/x?y=1")
            .version(http::Version::HTTP_2)
            .body(crate::empty_body())
            .unwrap();
        let out = to_shim_request("e", crate::CallKind::Endpoint, abs).unwrap();
        assert_eq!(out.uri(), "/e/e/x?y=1");
        assert_eq!(out.version(), http::Version::HTTP_11);
    }
}
