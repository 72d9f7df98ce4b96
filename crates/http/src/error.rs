//! Errors on their way to the caller: an XRPC-style JSON body (`{"error": "Name", "message":
//! "..."}`) and a status decided by the error's class (`atrund-errors`: every variant of every
//! error enum of the data path names its class in an exhaustive `match`, and the class alone
//! decides the status). The names here are the ones the HTTP layer makes itself.

use atrund_errors::ErrorClass;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error on its way to the caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub class: ErrorClass,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 without one gets 1).
    pub retry_after: Option<u64>,
    /// What else the error counts as in the metrics (docs/observability.md).
    pub tally: Option<Tally>,
}

/// A metric an error adds to besides the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Rejection(atrund_metrics::Rejection),
    Breach(atrund_metrics::Limit),
}

/// Error names that mean something fetched did not verify (`atrund_verification_failures_total`).
pub const VERIFICATION_ERRORS: &[&str] = &[
    "CarInvalid",
    "BlockHashMismatch",
    "CommitInvalid",
    "CommitDidMismatch",
    "CommitSignatureInvalid",
    "MstProofInvalid",
    "RecordInvalid",
    "BlobRefInvalid",
    "BlobHashMismatch",
    "BlobSizeMismatch",
    "ReleaseInvalid",
    "RepoRollback",
    "DidDocumentInvalid",
    "PlcAuditLogInvalid",
    "HandleMismatch",
];

impl ApiError {
    pub fn new(class: ErrorClass, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            class,
            message: message.into(),
            retry_after: None,
            tally: None,
        }
    }

    /// The same error, counted as `t` in the metrics.
    pub fn tallied(self, t: Tally) -> Self {
        ApiError {
            tally: Some(t),
            ..self
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.class.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match crate::request_id::current() {
            Some(id) => serde_json::json!({
                "error": self.code,
                "message": self.message,
                "requestId": id.to_str().unwrap_or_default(),
            }),
            None => serde_json::json!({ "error": self.code, "message": self.message }),
        };
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
                ApiError::new(e.class(), e.code(), e.to_string())
            }
        }
    )*};
}

from_coded!(
    atrund_bundle::LocalBundleError,
    atrund_identity::IdentityError,
    atrund_identity::ServiceAuthError,
    atrund_bundle::BundleError,
    atrund_policy::PolicyError,
    atrund_secrets::SecretsError
);

impl From<atrund_trust::TrustError> for ApiError {
    fn from(e: atrund_trust::TrustError) -> Self {
        let mut out = ApiError::new(e.class(), e.code(), e.to_string());
        if e.class() == ErrorClass::Unavailable {
            // The graph is read again within MIN_RETRY..refresh; half a minute is a fair guess.
            out.retry_after = Some(30);
        }
        out
    }
}

impl From<atrund_pool::PoolError> for ApiError {
    fn from(e: atrund_pool::PoolError) -> Self {
        use atrund_metrics::{Limit as L, Rejection as R};
        use atrund_pool::PoolError as P;
        use atrund_sandbox::SandboxError as X;
        let tally = match &e {
            P::Busy { .. } => Some(Tally::Rejection(R::Busy)),
            P::CrashLooping { .. } => Some(Tally::Rejection(R::CrashLoop)),
            P::Draining | P::Sandbox(X::Draining) => Some(Tally::Rejection(R::Draining)),
            P::Sandbox(X::MemoryLimitExceeded(_)) => Some(Tally::Breach(L::Memory)),
            P::Sandbox(X::CpuLimitExceeded(_)) => Some(Tally::Breach(L::Cpu)),
            P::Sandbox(X::TooManyProcesses(_)) => Some(Tally::Breach(L::Pids)),
            P::Sandbox(X::TimedOut(_)) => Some(Tally::Breach(L::Timeout)),
            P::Sandbox(X::ResponseTooLarge(_)) => Some(Tally::Breach(L::ResponseSize)),
            P::Sandbox(X::FileTooLarge(_)) => Some(Tally::Breach(L::FileSize)),
            P::Sandbox(_) => None,
        };
        ApiError {
            retry_after: e.retry_after_secs(),
            tally,
            ..ApiError::new(e.class(), e.code(), e.to_string())
        }
    }
}

impl From<atrund_policy::RateLimited> for ApiError {
    fn from(e: atrund_policy::RateLimited) -> Self {
        ApiError {
            retry_after: Some(e.retry_after_secs),
            tally: Some(Tally::Rejection(atrund_metrics::Rejection::RateLimited)),
            ..ApiError::new(e.class(), e.code(), e.to_string())
        }
    }
}

impl From<atrund_bundle::record::RecordError> for ApiError {
    fn from(e: atrund_bundle::record::RecordError) -> Self {
        use atrund_bundle::record::RecordError as R;
        // As the HTTP layer meets it: a name or version the caller sent, else a record of the
        // author's that is not well-formed.
        let (class, code) = match e {
            R::BadName(_) => (ErrorClass::BadRequest, "NameInvalid"),
            R::BadVersion(_) => (ErrorClass::BadRequest, "VersionInvalid"),
            R::KeyMismatch { .. }
            | R::UnsupportedRuntime(_)
            | R::UnsupportedCodeType(_)
            | R::BadManifest(_)
            | R::BadReleaseTarget { .. } => (ErrorClass::Author, "BundleInvalid"),
        };
        ApiError::new(class, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: impl Into<ApiError>) -> (&'static str, u16) {
        let e = e.into();
        (e.code, e.status().as_u16())
    }

    /// Every variant of every error enum a caller can meet, with its name and status: the
    /// statuses of docs/http-api.md, decided by each variant's class.
    #[test]
    fn every_variant_has_its_status() {
        use atrund_bundle::revisions::RevisionError;
        use atrund_bundle::BundleError as B;
        use atrund_identity::{IdKind, IdentityError as I};
        use atrund_pool::PoolError as P;
        use atrund_repo::FetchError as F;
        use atrund_sandbox::SandboxError as X;
        use atrund_secrets::{BindingField, SecretsError as S};
        let t = || "t".to_string();
        let io = || std::io::Error::other("disk");
        let identity = [
            (
                I::BadSyntax {
                    kind: IdKind::Did,
                    value: t(),
                    reason: t(),
                },
                "DidInvalid",
                400,
            ),
            (
                I::BadSyntax {
                    kind: IdKind::Handle,
                    value: t(),
                    reason: t(),
                },
                "HandleInvalid",
                400,
            ),
            (I::UnsupportedMethod(t()), "DidMethodUnsupported", 400),
            (I::NotFound(t()), "DidNotFound", 404),
            (I::Tombstoned(t()), "DidTombstoned", 410),
            (
                I::Unreachable {
                    what: t(),
                    detail: t(),
                },
                "IdentityUnreachable",
                502,
            ),
            (
                I::AddressNotAllowed {
                    what: t(),
                    detail: t(),
                },
                "AddressNotAllowed",
                502,
            ),
            (
                I::InvalidDocument {
                    did: t(),
                    reason: t(),
                },
                "DidDocumentInvalid",
                502,
            ),
            (
                I::AuditLogInvalid {
                    did: t(),
                    reason: t(),
                },
                "PlcAuditLogInvalid",
                502,
            ),
            (
                I::HandleMismatch {
                    handle: t(),
                    did: t(),
                    claimed: t(),
                },
                "HandleMismatch",
                502,
            ),
            (
                I::HandleNotFound {
                    handle: t(),
                    reason: t(),
                },
                "HandleNotFound",
                404,
            ),
            (I::InsecureUrl(t()), "InsecureUrl", 502),
            (I::Config(t()), "IdentityConfigInvalid", 500),
        ];
        for (e, code, status) in identity {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        use atrund_identity::ServiceAuthError as A;
        let auth = [
            (A::Malformed(t()), "AuthInvalid", 401),
            (A::Algorithm(t()), "AuthInvalid", 401),
            (A::WrongType(t()), "AuthInvalid", 401),
            (A::BadSignature(t()), "AuthInvalid", 401),
            (A::IssuedInFuture { iat: 2, now: 1 }, "AuthInvalid", 401),
            (A::Expired { exp: 1, now: 2 }, "AuthExpired", 401),
            (
                A::TooLong {
                    exp: 9,
                    now: 1,
                    max_secs: 1,
                },
                "AuthExpired",
                401,
            ),
            (
                A::WrongAudience {
                    got: t(),
                    want: t(),
                },
                "AuthWrongAudience",
                401,
            ),
            (
                A::WrongMethod {
                    got: t(),
                    want: t(),
                },
                "AuthWrongMethod",
                401,
            ),
        ];
        for (e, code, status) in auth {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        let fetch = [
            (F::InsecureUrl(t()), "InsecureUrl", 502),
            (F::PdsUnreachable(t()), "PdsUnreachable", 502),
            (F::AddressNotAllowed(t()), "AddressNotAllowed", 502),
            (
                F::PdsError {
                    status: 500,
                    error: t(),
                    message: t(),
                },
                "PdsError",
                502,
            ),
            (
                F::TooLarge {
                    what: "car",
                    limit: 1,
                },
                "ResponseTooLarge",
                502,
            ),
            (F::CarInvalid(t()), "CarInvalid", 502),
            (F::BlockHashMismatch { cid: t() }, "BlockHashMismatch", 502),
            (F::CommitInvalid(t()), "CommitInvalid", 502),
            (
                F::CommitDidMismatch {
                    expected: t(),
                    found: t(),
                },
                "CommitDidMismatch",
                502,
            ),
            (F::BadCommitSignature(t()), "CommitSignatureInvalid", 502),
            (F::MstInvalid(t()), "MstProofInvalid", 502),
            (F::IncompleteProof(t()), "MstProofInvalid", 502),
            (F::RecordDecode(t()), "RecordInvalid", 502),
            (F::RecordNotFound, "RecordNotFound", 404),
            (F::RepoNotFound(t()), "RepoNotFound", 404),
            (F::BlobNotFound, "BlobNotFound", 502),
            (F::BlobRefInvalid(t()), "BlobRefInvalid", 502),
            (F::BlobHashMismatch { cid: t() }, "BlobHashMismatch", 502),
            (
                F::BlobSizeMismatch {
                    expected: 1,
                    actual: 2,
                },
                "BlobSizeMismatch",
                502,
            ),
            (
                F::RepoUnavailable {
                    error: t(),
                    message: t(),
                },
                "RepoUnavailable",
                404,
            ),
            (F::InvalidInput(t()), "InvalidRequest", 400),
            (F::ClientBuild(t()), "HttpClientInit", 500),
        ];
        for (e, code, status) in fetch {
            assert_eq!(status_of(B::Fetch(e)), (code, status), "{code}");
        }
        let bundle = [
            (
                B::Record(atrund_bundle::record::RecordError::BadManifest(t())),
                "BundleInvalid",
                502,
            ),
            (
                B::NoSuchRelease {
                    author: t(),
                    name: t(),
                },
                "BundleNotFound",
                404,
            ),
            (
                B::NoSuchVersion {
                    author: t(),
                    name: t(),
                    version: t(),
                },
                "VersionNotFound",
                404,
            ),
            (
                B::NoSuchRecord {
                    author: t(),
                    name: t(),
                    cid: t(),
                },
                "VersionNotFound",
                404,
            ),
            (
                B::ReleaseMismatch {
                    name: t(),
                    expected: t(),
                    actual: t(),
                },
                "ReleaseInvalid",
                502,
            ),
            (B::TooLarge { size: 2, limit: 1 }, "BundleTooLarge", 413),
            (B::OverShare { size: 2, cap: 1 }, "BundleTooLarge", 413),
            (
                B::SecretsRecord {
                    rkey: t(),
                    detail: t(),
                },
                "SecretsInvalid",
                502,
            ),
            (
                B::Store {
                    path: "p".into(),
                    source: io(),
                },
                "StoreError",
                500,
            ),
            (
                B::Revision(RevisionError::Rollback {
                    did: t(),
                    served: t(),
                    newest: t(),
                    file: "f".into(),
                }),
                "RepoRollback",
                502,
            ),
            (
                B::Revision(RevisionError::File {
                    path: "p".into(),
                    detail: t(),
                }),
                "StoreError",
                500,
            ),
            (
                B::Remembered {
                    code: "VersionNotFound",
                    class: atrund_errors::ErrorClass::NotFound,
                    message: t(),
                    ttl_secs: 2,
                },
                "VersionNotFound",
                404,
            ),
            (
                B::Shared {
                    code: "PdsUnreachable",
                    class: atrund_errors::ErrorClass::Author,
                    message: t(),
                },
                "PdsUnreachable",
                502,
            ),
            (B::Identity(I::NotFound(t())), "DidNotFound", 404),
        ];
        for (e, code, status) in bundle {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        use atrund_policy::PolicyError as Po;
        let policy = [
            (
                Po::AuthorNotAllowed {
                    did: t(),
                    handle: None,
                },
                "AuthorNotAllowed",
                403,
            ),
            (Po::PolicyClosed, "PolicyClosed", 403),
            (
                Po::PermissionNotAllowed {
                    permission: t(),
                    requested: t(),
                    allowed: t(),
                },
                "PermissionNotAllowed",
                403,
            ),
            (
                Po::LimitTooHigh {
                    limit: t(),
                    requested: 2,
                    max: 1,
                },
                "LimitTooHigh",
                403,
            ),
            (Po::BadManifest(t()), "BundleInvalid", 502),
        ];
        for (e, code, status) in policy {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        let rate = atrund_policy::RateLimited {
            did: t(),
            rate: 1,
            burst: 1,
            retry_after_secs: 3,
        };
        assert_eq!(status_of(rate), ("RateLimited", 429));
        let secrets = [
            (
                S::KeyFileIo {
                    path: "p".into(),
                    source: io(),
                },
                "KeyFileIo",
                500,
            ),
            (
                S::KeyFileInsecure {
                    path: "p".into(),
                    mode: 0o644,
                },
                "KeyFileInsecure",
                500,
            ),
            (
                S::KeyFileInvalid {
                    path: "p".into(),
                    detail: t(),
                },
                "KeyFileInvalid",
                500,
            ),
            (S::BadPublicKey(t()), "RunnerKeyInvalid", 502),
            (
                S::BadName {
                    name: t(),
                    reason: "r",
                },
                "SecretNameInvalid",
                502,
            ),
            (
                S::Invalid {
                    bundle: t(),
                    detail: t(),
                },
                "SecretsInvalid",
                502,
            ),
            (
                S::NotForThisRunner {
                    bundle: t(),
                    record_key: t(),
                    runner_key: t(),
                },
                "SecretsNotForThisRunner",
                502,
            ),
            (S::Outdated { bundle: t() }, "SecretsOutdated", 502),
            (
                S::BindingMismatch {
                    bundle: t(),
                    name: t(),
                    field: BindingField::Author,
                },
                "SecretBindingMismatch",
                502,
            ),
            (
                S::Undecryptable {
                    bundle: t(),
                    name: t(),
                },
                "SecretsUndecryptable",
                502,
            ),
            (
                S::SealFailed {
                    name: t(),
                    detail: t(),
                },
                "SealFailed",
                500,
            ),
        ];
        for (e, code, status) in secrets {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        let sandbox = [
            (X::DenoNotFound(t()), "DenoNotFound", 503),
            (X::StartFailed(t()), "StartFailed", 502),
            (X::StartTimedOut(1), "StartTimedOut", 504),
            (X::EndpointNotFound(t()), "EndpointNotFound", 404),
            (X::MethodNotAllowed(t()), "MethodNotAllowed", 405),
            (X::BadInput(t()), "InvalidInput", 400),
            (X::BundleFailed(t()), "BundleFailed", 502),
            (X::BundleCrashed(t()), "BundleCrashed", 502),
            (X::TimedOut(1), "TimedOut", 504),
            (X::Draining, "Draining", 503),
            (X::MemoryLimitExceeded(1), "MemoryLimitExceeded", 502),
            (X::CpuLimitExceeded(1), "CpuLimitExceeded", 504),
            (X::TooManyProcesses(1), "TooManyProcesses", 502),
            (X::ResponseTooLarge(1), "ResponseTooLarge", 502),
            (X::FileTooLarge(1), "FileTooLarge", 502),
        ];
        for (e, code, status) in sandbox {
            assert_eq!(status_of(P::Sandbox(e)), (code, status), "{code}");
        }
        let pool = [
            (
                P::Busy {
                    reason: t(),
                    waited_ms: 1,
                    retry_after_secs: 1,
                },
                "Busy",
                429,
            ),
            (
                P::CrashLooping {
                    crashes: 2,
                    last_exit: t(),
                    retry_after_secs: 1,
                },
                "BundleCrashLooping",
                503,
            ),
            (P::Draining, "Draining", 503),
        ];
        for (e, code, status) in pool {
            assert_eq!(status_of(e), (code, status), "{code}");
        }
        use atrund_bundle::record::RecordError as R;
        assert_eq!(status_of(R::BadName(t())), ("NameInvalid", 400));
        assert_eq!(status_of(R::BadVersion(t())), ("VersionInvalid", 400));
        assert_eq!(status_of(R::BadManifest(t())), ("BundleInvalid", 502));
    }

    #[test]
    fn busy_carries_retry_after() {
        let resp = ApiError::new(ErrorClass::Busy, "Busy", "full").into_response();
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
