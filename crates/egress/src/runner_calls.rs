//! Calls from an instance to the runner itself (`ctx.enqueue` and what may follow), made as
//! plain-HTTP requests to the reserved name [`RUNNER_HOST`] through this proxy.
//!
//! The proxy already knows which instance is asking (its token, and for `container` the
//! announced connection), so such a call needs no credential of its own: it is answered by the
//! [`RunnerService`] the instance was registered with, which acts for that instance's bundle
//! only. The reserved name is never resolved or connected to, whatever the bundle's `net` list
//! says, and an instance registered without a service gets a refusal.
//!
//! Owns: recognising the reserved name, bounding the call (body size, time) and handing it
//! over. Must not touch: what a call does (the service, in the HTTP layer) or who the instance
//! is beyond its registration.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};

/// The host name bundles use to reach their runner: `http://runner.atrund.internal/...`
/// (`.internal` is reserved for private use, so it is never a public name).
pub const RUNNER_HOST: &str = "runner.atrund.internal";

/// Largest request body of one runner call.
pub const MAX_RUNNER_CALL_BYTES: usize = 1024 * 1024;

/// One request an instance made to the runner.
#[derive(Debug, Clone)]
pub struct RunnerCall {
    pub method: Method,
    /// Path and query, e.g. `/v1/enqueue`.
    pub path: String,
    pub body: Bytes,
}

/// The runner's answer: a status and a JSON body.
#[derive(Debug, Clone)]
pub struct RunnerReply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Answers one instance's runner calls, acting for that instance's bundle only.
pub trait RunnerService: Send + Sync + std::fmt::Debug {
    fn call(
        &self,
        call: RunnerCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RunnerReply> + Send + '_>>;
}

/// A shareable service.
pub type RunnerCalls = Arc<dyn RunnerService>;

/// Whether `host` (of a request URL or `CONNECT` target) names the runner.
pub(crate) fn is_runner_host(host: &str) -> bool {
    host.trim_end_matches('.').eq_ignore_ascii_case(RUNNER_HOST)
}

/// A JSON error in the XRPC shape, as the runner's own answers are.
pub(crate) fn json_error(status: StatusCode, error: &str, message: &str) -> RunnerReply {
    let body = serde_json::json!({ "error": error, "message": message });
    RunnerReply {
        status,
        body: Bytes::from(body.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_name_in_any_case_and_with_a_root_dot() {
        assert!(is_runner_host("runner.atrund.internal"));
        assert!(is_runner_host("Runner.ATRUND.internal."));
        assert!(!is_runner_host("runner.atrund.internal.evil.com"));
        assert!(!is_runner_host("xrunner.atrund.internal"));
    }

    #[test]
    fn errors_are_json() {
        let r = json_error(StatusCode::NOT_FOUND, "X", "a \"q\"\n");
        assert_eq!(
            &r.body[..],
            br#"{"error":"X","message":"a \"q\"\n"}"#.as_slice()
        );
    }
}
