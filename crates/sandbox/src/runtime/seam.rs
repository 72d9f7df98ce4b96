//! The runtime seam itself: the runtimes this version knows ([`RuntimeKind`]), the [`Runtime`]
//! trait each implements, the [`Layout`] of one instance's files, and the rules every runtime
//! shares (secret names, UTF-8 paths). Its own file so that the implementations and the registry
//! in `mod.rs` both depend on it and not on each other.

use std::ffi::OsString;
use std::path::Path;

use crate::{Enforcement, InstanceSpec, SandboxError};

/// A runtime this runner knows, as a bundle record names it (`runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuntimeKind {
    /// Deno (`runtime = "deno"`): TypeScript/JavaScript bundles, Deno's permission flags.
    #[default]
    Deno,
    /// Node.js (`runtime = "node"`): JavaScript ES module bundles, Node's permission model.
    Node,
    /// Python (`runtime = "python"`): one module of handler functions; Python enforces nothing
    /// itself.
    Python,
}

impl RuntimeKind {
    /// Every runtime this version knows.
    pub const ALL: [RuntimeKind; 3] = [RuntimeKind::Deno, RuntimeKind::Node, RuntimeKind::Python];

    /// The record's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Deno => "deno",
            RuntimeKind::Node => "node",
            RuntimeKind::Python => "python",
        }
    }

    /// The runtime a record names, if this version knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One runtime's shim: the file name it is written under beside the work dirs, and its source
/// (embedded, so the binary and its shims never drift apart).
#[derive(Debug, Clone, Copy)]
pub struct Shim {
    pub file: &'static str,
    pub source: &'static str,
}

/// Where one instance's process finds its files, as that process sees them: host paths in
/// `none`, paths inside the sandbox in `container` and `microvm`.
pub(crate) struct Layout<'a> {
    /// The spec with its paths as seen by the process.
    pub spec: &'a InstanceSpec,
    pub shim: &'a Path,
    pub socket: &'a Path,
    /// A private scratch dir it may read and write besides its grants (the container's `/tmp`).
    pub scratch: Option<&'a Path>,
}

/// How a runtime starts and what it enforces itself. Implemented by each runtime module.
pub(crate) trait Runtime: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> RuntimeKind;
    /// The executable on the host.
    fn binary(&self) -> &Path;
    fn shim(&self) -> Shim;
    /// The arguments after the binary: flags from the spec's grants, then the shim, the bundle
    /// and the socket. Refuses a grant the runtime's flags cannot express exactly.
    fn args(&self, l: &Layout<'_>) -> Result<Vec<OsString>, SandboxError>;
    /// The fixed environment besides the secrets and the proxy variables: `cache` is the
    /// instance's per-bundle cache dir (`InstanceSpec::deno_dir`, as the process sees it),
    /// `scratch` its private scratch dir where it has one (the container's `/tmp`).
    fn env(&self, cache: &Path, scratch: Option<&Path>) -> Vec<(&'static str, OsString)>;
    /// Secret names this runtime would read as its own settings (the shared rules are in
    /// [`check_secret_names`]).
    fn reserved_env(&self, name: &str) -> bool;
    /// Host files the process reads at start besides its binary, its libraries and the
    /// instance's own (granted read-only by Landlock in `none`).
    fn host_reads(&self) -> &'static [&'static str] {
        &[]
    }
    /// What the runtime enforces itself, manifest permission by permission, and what it leaves
    /// to the kernel layer (added to the executor's enforcement list).
    fn enforcement(&self) -> Vec<Enforcement>;
    /// Host dirs the container root binds read-only at the same path (Python's standard
    /// library).
    fn root_dirs(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// Files besides the binary whose libraries the container root needs (Python's extension
    /// modules).
    fn root_libs(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// Why the `none` backend must not run this runtime, when its operator has not allowed it.
    fn refuses_none(&self) -> Option<String> {
        None
    }
}

/// The variables that point a runtime at the runner's egress proxy (set by the backends).
pub(crate) fn is_proxy_var(name: &str) -> bool {
    matches!(
        name.to_ascii_uppercase().as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "ALL_PROXY" | "NO_PROXY"
    )
}

/// Checks the spec's secret names for `runtime`: names only, as values are secrets and never
/// appear in errors or logs.
pub(crate) fn check_secret_names(
    runtime: &dyn Runtime,
    env: &[(String, String)],
) -> Result<(), SandboxError> {
    for (k, _) in env {
        secret_name(runtime, k)?;
    }
    Ok(())
}

/// Checks each `net` entry with the egress proxy's own rule, so an entry it could not enforce
/// fails the start, whatever the runtime does with the list.
pub(crate) fn check_net_entry(entry: &str) -> Result<atrund_egress::NetRule, SandboxError> {
    atrund_egress::NetRule::parse(entry).map_err(|e| {
        SandboxError::StartFailed(format!("the manifest's net list cannot be enforced: {e}"))
    })
}

fn secret_name<'a>(runtime: &dyn Runtime, k: &'a str) -> Result<&'a str, SandboxError> {
    if is_proxy_var(k) {
        return Err(SandboxError::StartFailed(format!(
            "secret name '{k}' is reserved for the runner's egress proxy; rename the secret"
        )));
    }
    let valid = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(SandboxError::StartFailed(format!(
            "secret name '{k}' is not allowed: use letters, digits and '_', not starting with a digit"
        )));
    }
    if k.starts_with("LD_") || runtime.reserved_env(k) {
        return Err(SandboxError::StartFailed(format!(
            "secret name '{k}' is not allowed for runtime {}: the runtime or the loader would read it as a setting (LD_*, {}); rename the secret",
            runtime.kind(),
            reserved_names(runtime.kind())
        )));
    }
    Ok(k)
}

/// The reserved names of a runtime as the error message shows them.
fn reserved_names(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Deno => "DENO_*, NO_COLOR",
        RuntimeKind::Node => "NODE_*, UV_*, OPENSSL_*, SSL_CERT_*",
        RuntimeKind::Python => "PYTHON*",
    }
}

pub(crate) fn path_str(p: &Path) -> Result<&str, SandboxError> {
    p.to_str().ok_or_else(|| {
        SandboxError::StartFailed(format!(
            "path '{}' is not UTF-8; use UTF-8 paths for the runner's directories",
            p.display()
        ))
    })
}
