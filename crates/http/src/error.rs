//! The one place where error names become HTTP statuses and XRPC-style JSON bodies
//! (`{"error": "Name", "message": "..."}`). Every layer below reports a stable `code()`; this
//! table decides the status, so a caller sees the same status for the same name everywhere.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error on its way to the caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 without one gets 1).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Status for an error name. Unknown names are internal errors (500) so that a new name that
/// was not mapped here is visible rather than silently mislabelled.
pub fn status_for(code: &str) -> StatusCode {
    match code {
        "InvalidRequest"
        | "InvalidInput"
        | "DidInvalid"
        | "HandleInvalid"
        | "DidMethodUnsupported"
        | "VersionInvalid"
        | "NameInvalid"
        | "EndpointInvalid" => StatusCode::BAD_REQUEST,
        "AuthorNotAllowed"
        | "PolicyClosed"
        | "PermissionNotAllowed"
        | "LimitTooHigh"
        | "ServiceWorkerNotAllowed" => StatusCode::FORBIDDEN,
        "NotFound" | "DidNotFound" | "HandleNotFound" | "BundleNotFound" | "VersionNotFound"
        | "EndpointNotFound" | "RepoUnavailable" | "RecordNotFound" | "RepoNotFound" => {
            StatusCode::NOT_FOUND
        }
        "MethodNotAllowed" => StatusCode::METHOD_NOT_ALLOWED,
        "DidTombstoned" => StatusCode::GONE,
        "PayloadTooLarge" | "BundleTooLarge" => StatusCode::PAYLOAD_TOO_LARGE,
        "Busy" | "RateLimited" => StatusCode::TOO_MANY_REQUESTS,
        "DataQuotaExceeded" => StatusCode::INSUFFICIENT_STORAGE,
        // The bundle, or the author's infrastructure, failed or served something that does not
        // verify: a bad gateway from the caller's point of view.
        "BundleFailed"
        | "BundleCrashed"
        | "StartFailed"
        | "BundleInvalid"
        | "ReleaseInvalid"
        | "IdentityUnreachable"
        | "DidDocumentInvalid"
        | "PlcAuditLogInvalid"
        | "HandleMismatch"
        | "InsecureUrl"
        // The author's DID document, handle or PDS points at an address this runner does not
        // contact: their infrastructure is unusable from here, like an insecure URL. The same
        // answer whether or not anything listens there.
        | "AddressNotAllowed"
        | "PdsUnreachable"
        | "PdsError"
        | "ResponseTooLarge"
        | "CarInvalid"
        | "BlockHashMismatch"
        | "CommitInvalid"
        | "CommitDidMismatch"
        | "CommitSignatureInvalid"
        | "MstProofInvalid"
        | "RecordInvalid"
        | "BlobNotFound"
        | "BlobRefInvalid"
        | "BlobHashMismatch"
        | "BlobSizeMismatch"
        // The author's secrets record is not for this runner or does not open: the author's
        // data is wrong for this runner, like a bundle record that does not verify.
        | "SecretsInvalid"
        | "SecretsNotForThisRunner"
        | "SecretsUndecryptable"
        | "SecretsOutdated"
        | "RepoRollback"
        | "SecretBindingMismatch"
        | "MemoryLimitExceeded"
        | "TooManyProcesses" => StatusCode::BAD_GATEWAY,
        "Draining" | "DenoNotFound" | "BundleCrashLooping" => StatusCode::SERVICE_UNAVAILABLE,
        "TimedOut" | "StartTimedOut" | "CpuLimitExceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_for(self.code);
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (status, axum::Json(body)).into_response();
        let retry = match self.retry_after {
            Some(secs) => Some(HeaderValue::from(secs)),
            None if status == StatusCode::TOO_MANY_REQUESTS => Some(HeaderValue::from_static("1")),
            None => None,
        };
        if let Some(v) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

macro_rules! from_coded {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError::new(e.code(), e.to_string())
            }
        }
    )*};
}

from_coded!(
    atrund_identity::IdentityError,
    atrund_bundle::BundleError,
    atrund_policy::PolicyError,
    atrund_secrets::SecretsError
);

impl From<atrund_pool::PoolError> for ApiError {
    fn from(e: atrund_pool::PoolError) -> Self {
        ApiError {
            retry_after: e.retry_after_secs(),
            ..ApiError::new(e.code(), e.to_string())
        }
    }
}

impl From<atrund_bundle::record::RecordError> for ApiError {
    fn from(e: atrund_bundle::record::RecordError) -> Self {
        use atrund_bundle::record::RecordError as R;
        let code = match e {
            R::BadName(_) => "NameInvalid",
            R::BadVersion(_) => "VersionInvalid",
            _ => "BundleInvalid",
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_statuses() {
        assert_eq!(status_for("InvalidInput"), 400);
        assert_eq!(status_for("AuthorNotAllowed"), 403);
        assert_eq!(status_for("ServiceWorkerNotAllowed"), 403);
        assert_eq!(status_for("EndpointNotFound"), 404);
        assert_eq!(status_for("PayloadTooLarge"), 413);
        assert_eq!(status_for("Busy"), 429);
        assert_eq!(status_for("RateLimited"), 429);
        assert_eq!(status_for("DataQuotaExceeded"), 507);
        assert_eq!(status_for("BundleFailed"), 502);
        assert_eq!(status_for("Draining"), 503);
        assert_eq!(status_for("TimedOut"), 504);
        assert_eq!(status_for("CpuLimitExceeded"), 504);
        assert_eq!(status_for("MemoryLimitExceeded"), 502);
        assert_eq!(status_for("TooManyProcesses"), 502);
        for s in [
            "SecretsNotForThisRunner",
            "SecretsUndecryptable",
            "SecretsInvalid",
            "SecretsOutdated",
            "SecretBindingMismatch",
        ] {
            assert_eq!(status_for(s), 502, "{s}");
        }
        assert_eq!(status_for("ResponseTooLarge"), 502);
        assert_eq!(status_for("AddressNotAllowed"), 502);
        assert_eq!(status_for("SomethingNew"), 500);
    }

    #[test]
    fn busy_carries_retry_after() {
        let resp = ApiError::new("Busy", "full").into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let e = atrund_pool::PoolError::CrashLooping {
            crashes: 3,
            last_exit: "exit status: 1".into(),
            retry_after_secs: 7,
        };
        let resp = ApiError::from(e).into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    }
}
