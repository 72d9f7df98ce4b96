//! What this host offers the sandbox, for `at-rund doctor`: the cgroup limits as the real
//! [`CgroupManager`] found them, the kernel's Landlock ABI and seccomp actions as the `none`
//! backend probes them (`sys`), and where bubblewrap is. Whether the container backend really
//! works is not answered here: `choose_executor` with [`crate::Requested::Auto`] is that probe.
//!
//! Owns: the shape of the report. Must not: probe anything itself (it only asks the probes the
//! backends use at start), create, change or remove anything.

use std::path::PathBuf;

use crate::cgroup::{CgroupManager, CgroupVersion};
use crate::{sys, Enforcement};

/// The host as the sandbox sees it.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// The cgroup layout in use (`None`: no usable cgroup filesystem).
    pub cgroup_version: Option<CgroupVersion>,
    /// `memory`, `cpuQuota`, `cpuTime`, `pids` and `idleFreeze`: enforced here and how, or why not.
    pub cgroup_limits: Vec<Enforcement>,
    /// The kernel's Landlock ABI version, or why there is none.
    pub landlock_abi: Result<i64, String>,
    /// Seccomp filters that answer with an errno (the deny list).
    pub seccomp_errno: Result<(), String>,
    /// Seccomp user notification (the `none` backend's connect gate).
    pub seccomp_user_notif: Result<(), String>,
    /// The bubblewrap binary `container.bwrap` names, if found.
    pub bwrap: Option<PathBuf>,
    /// Whether the process runs as root (cgroups, uid switch of `none` instances).
    pub root: bool,
}

/// The report for `cgroups` (a started manager) and `container.bwrap` (a path, or a name looked
/// up on PATH).
pub fn host_report(cgroups: &CgroupManager, bwrap: &str) -> HostReport {
    let mut cgroup_limits: Vec<Enforcement> = cgroups
        .slots()
        .into_iter()
        .map(|(limit, s)| Enforcement {
            limit,
            enforced: s.is_ok(),
            how: s.unwrap_or_else(|e| e),
        })
        .collect();
    let freeze = cgroups.freezer_slot();
    cgroup_limits.push(Enforcement {
        limit: "idleFreeze",
        enforced: freeze.is_ok(),
        how: freeze.unwrap_or_else(|e| e),
    });
    HostReport {
        cgroup_version: cgroups.version(),
        cgroup_limits,
        landlock_abi: sys::landlock_abi().map_err(|e| e.to_string()),
        seccomp_errno: sys::seccomp_errno_available().map_err(|e| e.to_string()),
        seccomp_user_notif: sys::seccomp_user_notif_available().map_err(|e| e.to_string()),
        bwrap: crate::choose::find_configured_bwrap(bwrap),
        root: sys::effective_root(),
    }
}
