//! Errors of the sandbox layer, with the stable names and HTTP statuses callers see.
//!
//! Owns: what each failure is called and how much of it a caller may learn. Messages never carry
//! raw Deno load errors, stack traces or secret values (isolation.md §2.4); details go to logs.

/// Why starting or calling an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// the Deno binary was not found
    #[error("the Deno binary was not found ({0}); install it with `npm install deno@2.9.6` (or run scripts/setup.sh in the at-rund repo) and set its path in the config or put `deno` on PATH")]
    DenoNotFound(String),
    /// the bundle's runtime is not offered by this runner
    #[error("this runner does not offer runtime '{0}' (its operator has not enabled it); deploy the bundle to a runner whose describeRunner lists it")]
    RuntimeUnavailable(crate::RuntimeKind),
    /// a configured runtime's binary cannot be used
    #[error("{0}")]
    RuntimeNotUsable(String),
    /// the instance could not be started
    #[error("the bundle could not be started: {0}")]
    StartFailed(String),
    /// the instance did not become ready in time
    #[error("the bundle did not become ready within {0} ms; it may do slow work at load time, or the machine is overloaded")]
    StartTimedOut(u64),
    /// the bundle has no such endpoint
    #[error("this bundle has no endpoint '{0}'; check the endpoint name in the URL")]
    EndpointNotFound(String),
    /// the endpoint does not accept this HTTP method
    #[error("{0}")]
    MethodNotAllowed(String),
    /// the input failed the endpoint's validation
    #[error("invalid input: {0}")]
    BadInput(String),
    /// the handler threw
    #[error("the bundle failed: {0}")]
    BundleFailed(String),
    /// the instance process exited
    #[error("the bundle's process exited ({0}); retry, and if it keeps happening ask the bundle's author (the runner's log has details)")]
    BundleCrashed(String),
    /// the request exceeded its wall-clock limit
    #[error("the bundle did not answer within {0} ms and was stopped; make the handler faster or ask for a larger timeoutMs")]
    TimedOut(u64),
    /// the instance is draining
    #[error("this instance is shutting down; retry the request")]
    Draining,
    /// the instance went over its memory limit and was killed
    #[error("the bundle used more than its memory limit of {0} MiB and was stopped; use less memory per instance or ask for a larger memoryMib")]
    MemoryLimitExceeded(u64),
    /// the call used more than its CPU-time budget and the instance was killed
    #[error("the bundle used more than its CPU budget of {0} ms during this request and was stopped; do less work per request or ask for a larger cpuMs")]
    CpuLimitExceeded(u64),
    /// the instance tried to run more tasks than allowed and was killed
    #[error("the bundle tried to run more than {0} threads and processes (each Worker and subprocess counts) and was stopped; start fewer Workers or subprocesses")]
    TooManyProcesses(u64),
    /// the response body is over the runner's limit; the instance was killed
    #[error("the bundle's response is larger than this runner's limit of {0} bytes and was cut; return less data per response")]
    ResponseTooLarge(u64),
    /// the instance wrote a file past its size limit (RLIMIT_FSIZE) and was stopped
    #[error("the bundle wrote a file larger than this runner's limit of {0} bytes and was stopped; write smaller files")]
    FileTooLarge(u64),
}

impl SandboxError {
    /// Stable error name, used as the HTTP `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::DenoNotFound(_) => "DenoNotFound",
            Self::RuntimeUnavailable(_) => "RuntimeUnavailable",
            Self::RuntimeNotUsable(_) => "RuntimeNotUsable",
            Self::StartFailed(_) => "StartFailed",
            Self::StartTimedOut(_) => "StartTimedOut",
            Self::EndpointNotFound(_) => "EndpointNotFound",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::BadInput(_) => "InvalidInput",
            Self::BundleFailed(_) => "BundleFailed",
            Self::BundleCrashed(_) => "BundleCrashed",
            Self::TimedOut(_) => "TimedOut",
            Self::Draining => "Draining",
            Self::MemoryLimitExceeded(_) => "MemoryLimitExceeded",
            Self::CpuLimitExceeded(_) => "CpuLimitExceeded",
            Self::TooManyProcesses(_) => "TooManyProcesses",
            Self::ResponseTooLarge(_) => "ResponseTooLarge",
            Self::FileTooLarge(_) => "FileTooLarge",
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`: the class decides the status).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            Self::DenoNotFound(_) | Self::RuntimeNotUsable(_) => C::Unavailable,
            Self::RuntimeUnavailable(_) => C::Forbidden,
            Self::StartFailed(_)
            | Self::BundleFailed(_)
            | Self::BundleCrashed(_)
            | Self::MemoryLimitExceeded(_)
            | Self::TooManyProcesses(_)
            | Self::ResponseTooLarge(_)
            | Self::FileTooLarge(_) => C::Author,
            Self::StartTimedOut(_) | Self::TimedOut(_) | Self::CpuLimitExceeded(_) => C::Timeout,
            Self::EndpointNotFound(_) => C::NotFound,
            Self::MethodNotAllowed(_) => C::MethodNotAllowed,
            Self::BadInput(_) => C::BadRequest,
            Self::Draining => C::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = SandboxError::EndpointNotFound("x".into());
        assert_eq!((e.code(), e.class().status()), ("EndpointNotFound", 404));
        let e = SandboxError::BadInput("field 'a' is required".into());
        assert_eq!((e.code(), e.class().status()), ("InvalidInput", 400));
        let e = SandboxError::TimedOut(5);
        assert_eq!((e.code(), e.class().status()), ("TimedOut", 504));
        let e = SandboxError::BundleCrashed("exit status: 1".into());
        assert_eq!((e.code(), e.class().status()), ("BundleCrashed", 502));
        for (e, code, status) in [
            (
                SandboxError::MemoryLimitExceeded(64),
                "MemoryLimitExceeded",
                502,
            ),
            (SandboxError::CpuLimitExceeded(100), "CpuLimitExceeded", 504),
            (SandboxError::TooManyProcesses(32), "TooManyProcesses", 502),
            (SandboxError::ResponseTooLarge(10), "ResponseTooLarge", 502),
            (SandboxError::FileTooLarge(10), "FileTooLarge", 502),
        ] {
            assert_eq!((e.code(), e.class().status()), (code, status));
        }
        // No runtime: the runner cannot run instances now (503), as the daemon always answered.
        assert_eq!(SandboxError::DenoNotFound("x".into()).class().status(), 503);
        assert!(SandboxError::DenoNotFound("x".into())
            .to_string()
            .contains("npm install deno@2.9.6"));
    }
}
