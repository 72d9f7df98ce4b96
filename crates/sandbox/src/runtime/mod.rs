//! Runtimes: what differs between the languages instances run in (docs/runtimes.md). A runtime
//! says how its process is started for one instance (binary, flags from the manifest's
//! permissions, fixed environment), which secret names it must refuse, which host files it
//! needs besides its binary, its shim, and what it enforces itself. Every runtime speaks the same
//! shim protocol (start, `go`, ready line, HTTP/1.1 on a Unix socket), so the executors keep
//! everything else: cgroups, limits, egress, output, freezing and the kernel confinement.
//!
//! Owns: [`RuntimeKind`] (the record's `runtime` names this runner knows), [`Runtimes`] (the
//! located binaries of the runtimes this runner offers) and the [`Runtime`] seam. Deno
//! (`deno`), Node.js (`node`) and Python (`python`) implement it. Must not: choose permissions or limits (they
//! arrive checked), or confine the process (the executors do, the same for every runtime).

pub(crate) mod deno;
pub(crate) mod node;
pub(crate) mod python;
pub(crate) mod seam;

use std::path::PathBuf;

use crate::{Enforcement, SandboxError};

pub use deno::DenoBinary;
pub use node::NodeBinary;
pub use python::PythonBinary;
pub(crate) use seam::{Layout, Runtime};
pub use seam::{RuntimeKind, Shim};

/// The runtimes one runner offers: Deno always, the others when the operator configured them.
#[derive(Debug, Clone)]
pub struct Runtimes {
    deno: deno::DenoRuntime,
    node: Option<node::NodeRuntime>,
    python: Option<python::PythonRuntime>,
}

impl From<DenoBinary> for Runtimes {
    fn from(deno: DenoBinary) -> Self {
        Self::new(deno)
    }
}

impl Runtimes {
    /// Deno only.
    pub fn new(deno: DenoBinary) -> Self {
        Self {
            deno: deno::DenoRuntime::new(deno),
            node: None,
            python: None,
        }
    }

    /// Also offers Python, run with this interpreter; under the `none` backend only when
    /// `allow_none` (`python.allow_none`).
    pub fn with_python(mut self, python: PythonBinary, allow_none: bool) -> Self {
        self.python = Some(python::PythonRuntime::new(python, allow_none));
        self
    }

    /// The Python interpreter, when Python is offered.
    pub fn python(&self) -> Option<&PythonBinary> {
        self.python.as_ref().map(|p| p.binary_ref())
    }

    /// Also offers Node.js, run with this binary.
    pub fn with_node(mut self, node: NodeBinary) -> Self {
        self.node = Some(node::NodeRuntime::new(node));
        self
    }

    /// These runtimes with each binary where `id` can execute it: copies in `staged` for those
    /// it cannot (a root runner whose runtimes live under `/root`).
    pub fn reachable_by(
        self,
        id: crate::RunAs,
        staged: &std::path::Path,
    ) -> Result<Self, SandboxError> {
        Ok(Self {
            deno: deno::DenoRuntime::new(self.deno.binary_ref().clone().reachable_by(id, staged)?),
            node: self
                .node
                .map(|n| n.binary_ref().clone().reachable_by(id, staged))
                .transpose()?
                .map(node::NodeRuntime::new),
            // An interpreter needs its standard library beside it: no copy is made. Debian's is
            // world-readable where it is.
            python: self.python,
        })
    }

    /// The Deno binary.
    pub fn deno(&self) -> &DenoBinary {
        self.deno.binary_ref()
    }

    /// The Node binary, when Node is offered.
    pub fn node(&self) -> Option<&NodeBinary> {
        self.node.as_ref().map(|n| n.binary_ref())
    }

    /// The offered runtimes, in [`RuntimeKind::ALL`]'s order.
    fn each(&self) -> impl Iterator<Item = (RuntimeKind, &dyn Runtime)> {
        RuntimeKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).ok().map(|r| (k, r)))
    }

    /// Each offered runtime with its version line (as describeRunner announces it), in
    /// [`RuntimeKind::ALL`]'s order. Deno's is asked of the binary; the others were read when
    /// their binaries were probed.
    pub async fn versions(&self) -> Result<Vec<(RuntimeKind, String)>, SandboxError> {
        let mut out = vec![(RuntimeKind::Deno, self.deno().version().await?)];
        out.extend(
            self.node()
                .map(|n| (RuntimeKind::Node, n.version().to_string())),
        );
        out.extend(
            self.python()
                .map(|p| (RuntimeKind::Python, p.version().to_string())),
        );
        Ok(out)
    }

    /// The runtimes offered, in [`RuntimeKind::ALL`]'s order.
    pub fn offered(&self) -> Vec<RuntimeKind> {
        self.each().map(|(k, _)| k).collect()
    }

    /// The host path of every offered runtime's binary (the container root needs their
    /// libraries).
    pub fn binaries(&self) -> Vec<PathBuf> {
        self.each().map(|(_, r)| r.binary().to_path_buf()).collect()
    }

    /// Host dirs every container root binds read-only, and files whose libraries it needs, of
    /// every offered runtime.
    pub(crate) fn root_inputs(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        (
            self.each().flat_map(|(_, r)| r.root_dirs()).collect(),
            self.each().flat_map(|(_, r)| r.root_libs()).collect(),
        )
    }

    /// Each offered runtime's own enforcement lines (`<runtime>.<permission>`).
    pub fn enforcement(&self) -> Vec<Enforcement> {
        self.each().flat_map(|(_, r)| r.enforcement()).collect()
    }

    pub(crate) fn get(&self, kind: RuntimeKind) -> Result<&dyn Runtime, SandboxError> {
        match kind {
            RuntimeKind::Deno => Ok(&self.deno),
            RuntimeKind::Node => self
                .node
                .as_ref()
                .map(|n| n as &dyn Runtime)
                .ok_or(SandboxError::RuntimeUnavailable(kind)),
            RuntimeKind::Python => self
                .python
                .as_ref()
                .map(|p| p as &dyn Runtime)
                .ok_or(SandboxError::RuntimeUnavailable(kind)),
        }
    }
}
