//! What a failed command tells scripts: a stable PascalCase name (`--json` prints it as `error`)
//! and an exit code with a meaning. Owns only that mapping; the messages themselves say what to do.

use crate::xrpc::XrpcError;

/// Exit codes of `at-run` (also in `at-run --help` and docs/authoring.md).
pub mod exit {
    /// Something else failed (the message says what).
    pub const FAILED: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The project did not build, or its manifest is invalid.
    pub const BUILD: u8 = 3;
    /// Not logged in, or the PDS refused the credentials.
    pub const AUTH: u8 = 4;
    /// `test` had failing calls, or `check` found incompatibilities.
    pub const CHECK: u8 = 5;
    /// The PDS, runner, Deno, Node or Python could not be reached or started.
    pub const UNREACHABLE: u8 = 6;
    /// The version already exists (published versions are immutable) or does not exist.
    pub const VERSION: u8 = 7;
}

/// Failures that have their own name and exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// the project failed to build (message has file:line)
    #[error("{0}")]
    Build(String),
    /// no session is stored and no password was given
    #[error("not logged in{0}: run `at-run login --pds URL --identifier HANDLE` (or pass --password / set ATRUN_PASSWORD)")]
    NotLoggedIn(String),
    /// the stored session could not be refreshed
    #[error("the stored session for {0} has expired and could not be refreshed; run `at-run login` again")]
    SessionExpired(String),
    /// Deno was not found or did not run
    #[error("{0}")]
    DenoMissing(String),
    /// Node was not found, did not run or is too old (`at-run dev` of a Node project)
    #[error("{0}")]
    NodeMissing(String),
    /// Python was not found, did not run or is too old (`at-run dev` of a Python project)
    #[error("{0}")]
    PythonMissing(String),
    /// `at-run test`: some calls failed
    #[error("{failed} of {total} endpoint calls failed; see the table above")]
    TestsFailed { failed: usize, total: usize },
    /// `at-run check`: the runner would refuse the bundle
    #[error("{0} incompatibilities with this runner; fix them (see above) or pick another runner")]
    Incompatible(usize),
    /// the version is already published
    #[error("{0}")]
    VersionExists(String),
    /// the version does not exist
    #[error("{0}")]
    VersionNotFound(String),
    /// a runner could not be reached
    #[error("{0}")]
    RunnerUnreachable(String),
    /// the at-rund binary (for `at-run dev`) was not found
    #[error("{0}")]
    RunnerBinMissing(String),
    /// the runner refused the service-auth token (401) or the caller (403)
    #[error("{0}")]
    RunnerAuthRefused(String),
    /// the runner answered another error
    #[error("{0}")]
    RunnerRefused(String),
}

impl Failure {
    /// Stable PascalCase name.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Build(_) => "BuildFailed",
            Failure::NotLoggedIn(_) => "NotLoggedIn",
            Failure::SessionExpired(_) => "SessionExpired",
            Failure::DenoMissing(_) => "DenoMissing",
            Failure::NodeMissing(_) => "NodeMissing",
            Failure::PythonMissing(_) => "PythonMissing",
            Failure::TestsFailed { .. } => "TestsFailed",
            Failure::Incompatible(_) => "Incompatible",
            Failure::VersionExists(_) => "VersionExists",
            Failure::VersionNotFound(_) => "VersionNotFound",
            Failure::RunnerUnreachable(_) => "RunnerUnreachable",
            Failure::RunnerBinMissing(_) => "RunnerBinMissing",
            Failure::RunnerAuthRefused(_) => "RunnerAuthRefused",
            Failure::RunnerRefused(_) => "RunnerRefused",
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Build(_) => exit::BUILD,
            Failure::NotLoggedIn(_)
            | Failure::SessionExpired(_)
            | Failure::RunnerAuthRefused(_) => exit::AUTH,
            Failure::RunnerRefused(_) => exit::FAILED,
            Failure::DenoMissing(_)
            | Failure::NodeMissing(_)
            | Failure::PythonMissing(_)
            | Failure::RunnerUnreachable(_)
            | Failure::RunnerBinMissing(_) => exit::UNREACHABLE,
            Failure::TestsFailed { .. } | Failure::Incompatible(_) => exit::CHECK,
            Failure::VersionExists(_) | Failure::VersionNotFound(_) => exit::VERSION,
        }
    }
}

/// Name and exit code of any error a command returns.
pub fn classify(e: &anyhow::Error) -> (&'static str, u8) {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return (f.code(), f.exit_code());
        }
        if let Some(x) = cause.downcast_ref::<XrpcError>() {
            let exit = match x {
                XrpcError::Unreachable { .. } => exit::UNREACHABLE,
                XrpcError::Pds { status: 401, .. } => exit::AUTH,
                _ => exit::FAILED,
            };
            return (x.code(), exit);
        }
    }
    ("Failed", exit::FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_code_through_context() {
        let e = anyhow::Error::new(Failure::TestsFailed {
            failed: 1,
            total: 3,
        })
        .context("at-run test");
        assert_eq!(classify(&e), ("TestsFailed", exit::CHECK));
        let e = anyhow::anyhow!("plain");
        assert_eq!(classify(&e), ("Failed", exit::FAILED));
        let e = anyhow::Error::new(Failure::Build("x".into()));
        assert_eq!(classify(&e), ("BuildFailed", exit::BUILD));
    }
}
