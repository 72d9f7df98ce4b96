//! `at-rund doctor`: checks the host and the configuration and says, one line per check, what it
//! found and what to do (docs/troubleshooting.md). Blocking problems (an invalid config, an
//! isolation that cannot work here, no Deno, an unusable data dir or key file, a taken port)
//! make the exit status non-zero.
//!
//! Owns: the list of checks, their wording and the verdict. Must not: change the host. The
//! probes are the sandbox's own (`atrund_sandbox::host_report`, `choose_executor`); they run
//! with a runner id of their own (never a serving runner's cgroups), assemble the container root
//! in a temporary dir, and remove the cgroup parents they created before returning. Nothing in
//! the data dir is created, tightened or removed, and the key file is only looked at.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use atrund_config::{Config, DataLayout, Isolation};
use atrund_sandbox::{
    CgroupManager, CgroupVersion, DenoBinary, NodeBinary, PythonBinary, Requested, Runtimes,
};

use crate::settings;

/// How long the PLC may take to answer.
const PLC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    /// Blocking: at-rund would not start, or not as configured.
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug)]
struct Check {
    status: Status,
    name: &'static str,
    found: String,
    /// What to do; empty when nothing is to be done.
    fix: String,
}

/// Whether this host could run microVMs (`auto` tries them first once the backend exists): a
/// warning when it cannot, since the strongest isolation is then out of reach here.
fn microvm_check() -> Check {
    let verdict = atrund_sandbox::microvm_verdict(std::path::Path::new("/"));
    let status = if verdict.starts_with("microvm refused") {
        Status::Warn
    } else {
        Status::Ok
    };
    check(
        status,
        "microvm",
        verdict,
        "microVMs need KVM with VT-x or AMD-V: bare metal, or a cloud VM with nested virtualization (docs/microvm.md); the container backend is used meanwhile",
    )
}

fn check(status: Status, name: &'static str, found: impl Into<String>, fix: &str) -> Check {
    Check {
        status,
        name,
        found: found.into(),
        fix: fix.to_string(),
    }
}

impl Check {
    fn line(&self) -> String {
        let mut s = format!("{:<6}{}: {}", self.status.as_str(), self.name, self.found);
        if !self.fix.is_empty() {
            let _ = write!(s, "; {}", self.fix);
        }
        s
    }
}

/// Runs every check, prints the lines (or one JSON document) on stdout, and returns an error
/// when a blocking problem was found.
pub(crate) async fn run(config_path: Option<&Path>, json: bool) -> Result<()> {
    let checks = checks(config_path).await;
    let blocking = checks.iter().filter(|c| c.status == Status::Fail).count();
    if json {
        let doc = serde_json::json!({
            "blocking": blocking,
            "checks": checks.iter().map(|c| serde_json::json!({
                "status": c.status.as_str().to_ascii_lowercase(),
                "check": c.name,
                "found": c.found,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
        });
        println!("{doc:#}");
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    if blocking > 0 {
        anyhow::bail!("doctor: {blocking} blocking problem(s); see the FAIL lines");
    }
    Ok(())
}

async fn checks(config_path: Option<&Path>) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match settings::load_config(config_path) {
        Ok(c) => {
            let from = config_path.map_or("embedded defaults and ATRUND_* variables".into(), |p| {
                p.display().to_string()
            });
            out.push(check(Status::Ok, "config", format!("valid ({from})"), ""));
            Some(c)
        }
        Err(e) => {
            out.push(check(
                Status::Fail,
                "config",
                format!("invalid: {e:#}"),
                "fix the file or the ATRUND_* variable named (at-rund check-config shows the same error); the checks that need the config were skipped",
            ));
            None
        }
    };
    // A runner id of the doctor's own: a serving runner's cgroups are never touched.
    let cgroups = Arc::new(CgroupManager::start(&format!(
        "doctor-{}",
        std::process::id()
    )));
    let bwrap = config
        .as_ref()
        .map_or_else(|| "bwrap".to_string(), |c| c.container.bwrap.clone());
    let report = atrund_sandbox::host_report(&cgroups, &bwrap);
    out.push(cgroup_check(&report));
    out.push(root_check(&report, config.as_ref()));
    out.push(bwrap_check(&report, &bwrap));
    out.push(landlock_check(&report));
    out.push(seccomp_check(&report));
    out.push(microvm_check());
    if let Some(config) = &config {
        let runtimes = runtime_checks(config, &mut out).await;
        out.push(isolation_check(config, runtimes, cgroups.clone()).await);
        out.push(data_dir_check(config));
        out.push(data_volumes_check(config));
        out.push(key_file_check(config));
        out.extend(port_checks(config));
        out.push(plc_check(config).await);
    }
    if let Some(engine) = container_engine() {
        // The host-level advice above (systemd, sysctls) does not apply inside a container: the
        // engine's defaults are what stands in the way.
        for c in out
            .iter_mut()
            .filter(|c| c.status != Status::Ok && matches!(c.name, "cgroups" | "isolation"))
        {
            let _ = write!(c.fix, "; {}", container_hint(engine));
        }
    }
    if let Err(e) = cgroups.remove_parents() {
        out.push(check(
            Status::Warn,
            "cleanup",
            format!("the probe's cgroups were not all removed: {e}"),
            "remove the at-rund-doctor-* cgroup dirs by hand",
        ));
    }
    out
}

/// The container engine at-rund runs under, if any (podman writes `/run/.containerenv`, Docker
/// `/.dockerenv`).
fn container_engine() -> Option<&'static str> {
    if Path::new("/run/.containerenv").exists() {
        Some("podman")
    } else if Path::new("/.dockerenv").exists() {
        Some("docker")
    } else {
        None
    }
}

/// What a container needs for the container backend, and for `none` instances' outbound
/// connections (found by trying with podman: docs/operating.md "Container image").
fn container_hint(engine: &str) -> String {
    let flags = if engine == "podman" {
        "`-v /sys/fs/cgroup:/sys/fs/cgroup:rw --security-opt unmask=/proc/* --security-opt seccomp=unconfined`"
    } else {
        "writable cgroups, an unmasked /proc and no seccomp profile of the engine's"
    };
    let mut hint = format!(
        "at-rund runs in a {engine} container: for container isolation start it with {flags}"
    );
    if !has_sys_ptrace() {
        // The connect gate duplicates the instance's socket (pidfd_getfd on another uid).
        hint.push_str(
            "; for none, add CAP_SYS_PTRACE (`--cap-add SYS_PTRACE`) or bundles' outbound connections fail",
        );
    }
    hint.push_str(" (docs/operating.md \"Container image\")");
    hint
}

/// Whether this process has CAP_SYS_PTRACE (bit 19 of `CapEff` in /proc/self/status).
fn has_sys_ptrace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

fn cgroup_check(r: &atrund_sandbox::HostReport) -> Check {
    let version = match r.cgroup_version {
        Some(CgroupVersion::V1) => "cgroup v1",
        Some(CgroupVersion::V2) => "cgroup v2",
        None => "no usable cgroup hierarchy",
    };
    let usable: Vec<&str> = r
        .cgroup_limits
        .iter()
        .filter(|e| e.enforced)
        .map(|e| e.limit)
        .collect();
    let missing: Vec<String> = r
        .cgroup_limits
        .iter()
        .filter(|e| !e.enforced)
        .map(|e| format!("{} ({})", e.limit, e.how))
        .collect();
    let mut found = format!("{version}; usable: {}", list(&usable));
    if missing.is_empty() {
        return check(Status::Ok, "cgroups", found, "");
    }
    let _ = write!(found, "; not usable: {}", missing.join(", "));
    // Only the idle freezer missing is no reason for a weaker backend.
    let only_freezer = r
        .cgroup_limits
        .iter()
        .all(|e| e.enforced || e.limit == "idleFreeze");
    check(
        Status::Warn,
        "cgroups",
        found,
        if only_freezer {
            "idle instances are not frozen (limits.freeze_idle)"
        } else {
            "without these limits `auto` cannot choose container; run at-rund as root, under systemd with Delegate=yes on cgroup v2, or mount the v1 controllers"
        },
    )
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn root_check(r: &atrund_sandbox::HostReport, config: Option<&Config>) -> Check {
    if r.root {
        let who = config.map_or(String::new(), |c| {
            format!(
                "; instances run as uid {} gid {} (sandbox.run_as_uid/run_as_gid)",
                c.sandbox.run_as_uid, c.sandbox.run_as_gid
            )
        });
        return check(Status::Ok, "user", format!("running as root{who}"), "");
    }
    check(
        Status::Warn,
        "user",
        format!("running as uid {}, not root", own_uid().unwrap_or(u32::MAX)),
        "cgroup limits and the uid switch of `none` instances need root (docs/security.md)",
    )
}

/// The effective uid, as the owner of `/proc/self`.
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn bwrap_check(r: &atrund_sandbox::HostReport, configured: &str) -> Check {
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    match &r.bwrap {
        Some(p) if userns == "0" => check(
            Status::Warn,
            "bubblewrap",
            format!("{} found, but user.max_user_namespaces = 0", p.display()),
            "allow user namespaces (sysctl user.max_user_namespaces) or the container backend cannot start",
        ),
        Some(p) => check(
            Status::Ok,
            "bubblewrap",
            format!(
                "{} (user.max_user_namespaces = {userns}; the isolation check below starts a real sandbox)",
                p.display()
            ),
            "",
        ),
        None => check(
            Status::Warn,
            "bubblewrap",
            format!("'{configured}' not found (container.bwrap)"),
            "install it (`apt-get install -y bubblewrap`) for the container backend",
        ),
    }
}

fn landlock_check(r: &atrund_sandbox::HostReport) -> Check {
    match r.landlock_abi {
        Ok(abi) if abi >= 6 => check(
            Status::Ok,
            "landlock",
            format!("ABI {abi}: files, TCP ports and signals are confined"),
            "",
        ),
        Ok(abi) => check(
            Status::Warn,
            "landlock",
            format!("ABI {abi}: {}", if abi >= 4 { "no signal scoping (ABI 6)" } else { "no TCP port rules (ABI 4) and no signal scoping (ABI 6)" }),
            "a newer kernel (6.12 or later) confines more",
        ),
        Err(ref e) => check(
            Status::Warn,
            "landlock",
            format!("not available ({e})"),
            "enable CONFIG_SECURITY_LANDLOCK and lsm=landlock; without it only Deno's flags confine `none` instances",
        ),
    }
}

fn seccomp_check(r: &atrund_sandbox::HostReport) -> Check {
    match (&r.seccomp_errno, &r.seccomp_user_notif) {
        (Ok(()), Ok(())) => check(
            Status::Ok,
            "seccomp",
            "errno filters and user notification (the connect gate) available",
            "",
        ),
        (Ok(()), Err(e)) => check(
            Status::Warn,
            "seccomp",
            format!("errno filters available, user notification not ({e})"),
            "`none` instances' connects to named Unix sockets are not gated; needs Linux 5.0 with SECCOMP_RET_USER_NOTIF",
        ),
        (Err(e), _) => check(
            Status::Warn,
            "seccomp",
            format!("not available ({e})"),
            "a kernel with CONFIG_SECCOMP_FILTER; without it `none` instances with ffi or run have every syscall",
        ),
    }
}

/// The Deno line and, when `node.path` or `python.path` is set, the Node and Python lines; the
/// runtimes when Deno runs (the others only when usable too).
async fn runtime_checks(config: &Config, out: &mut Vec<Check>) -> Option<Runtimes> {
    let deno = deno_check(config, out).await?;
    let mut runtimes = Runtimes::new(deno);
    if let Some(path) = &config.node.path {
        match NodeBinary::probe(path).await {
            Ok(node) => {
                out.push(check(
                    Status::Ok,
                    "node",
                    format!("{} ({})", node.path().display(), node.version()),
                    "",
                ));
                runtimes = runtimes.with_node(node);
            }
            Err(e) => out.push(check(
                Status::Fail,
                "node",
                e.to_string(),
                "set node.path (ATRUND_NODE_PATH) to a Node 24 or newer binary, or unset it",
            )),
        }
    }
    if let Some(path) = &config.python.path {
        match PythonBinary::probe(path).await {
            Ok(python) => {
                let none = if config.python.allow_none {
                    "; also under none (python.allow_none)"
                } else {
                    "; container or microvm only"
                };
                out.push(check(
                    Status::Ok,
                    "python",
                    format!("{} ({}){none}", python.path().display(), python.version()),
                    "",
                ));
                runtimes = runtimes.with_python(python, config.python.allow_none);
            }
            Err(e) => out.push(check(
                Status::Fail,
                "python",
                e.to_string(),
                "set python.path (ATRUND_PYTHON_PATH) to a Python 3.11 or newer interpreter, or unset it",
            )),
        }
    }
    Some(runtimes)
}

/// The Deno line; the binary when it runs.
async fn deno_check(config: &Config, out: &mut Vec<Check>) -> Option<DenoBinary> {
    let fix = "set deno.path (ATRUND_DENO_PATH) to the binary";
    let deno = match DenoBinary::locate(config.deno.path.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            out.push(check(Status::Fail, "deno", e.to_string(), fix));
            return None;
        }
    };
    match deno.version().await {
        Ok(v) => {
            out.push(check(
                Status::Ok,
                "deno",
                format!("{} ({v})", deno.path().display()),
                "",
            ));
            Some(deno)
        }
        Err(e) => {
            out.push(check(Status::Fail, "deno", e.to_string(), fix));
            None
        }
    }
}

/// What `auto` would pick here, by the sandbox's own probe (a real sandbox for the container),
/// and whether the configured isolation is possible.
async fn isolation_check(
    config: &Config,
    runtimes: Option<Runtimes>,
    cgroups: Arc<CgroupManager>,
) -> Check {
    let configured = config.isolation.as_str();
    if let Err(e) = settings::requested_isolation(config) {
        return check(
            Status::Fail,
            "isolation",
            format!("{e:#}"),
            "set isolation to auto, container or none",
        );
    }
    let Some(runtimes) = runtimes else {
        return check(
            Status::Warn,
            "isolation",
            format!("configured {configured}; not probed without a working Deno"),
            "fix the deno check first",
        );
    };
    let probe = async {
        let tmp = std::env::temp_dir().join(format!("at-rund-doctor-{}", std::process::id()));
        // A configured microVM is probed as configured (a VM boots); the rest as `auto` would.
        let requested = match config.isolation {
            Isolation::Microvm | Isolation::Firecracker => Requested::MicroVm,
            _ => Requested::Auto,
        };
        let choice = settings::probe_choice(config, requested, runtimes, cgroups, &tmp)?;
        // The executor (and its egress proxy) is dropped before its root is removed.
        let picked = atrund_sandbox::choose_executor(choice)
            .await
            .map(|c| (c.executor.name(), c.isolation.how));
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::Ok(picked?)
    };
    let microvm = matches!(
        config.isolation,
        Isolation::Microvm | Isolation::Firecracker
    );
    let (picked, why) = match probe.await {
        Ok(p) => p,
        Err(e) => {
            return check(
                Status::Fail,
                "isolation",
                format!("the sandbox probe failed: {e:#}"),
                if microvm {
                    "fix what the message names (docs/microvm.md \"Setting it up\")"
                } else {
                    "see the log above"
                },
            )
        }
    };
    let found = if microvm {
        format!("configured {configured}: {why}")
    } else {
        format!("configured {configured}; auto would pick {picked}: {why}")
    };
    match (config.isolation, picked) {
        (Isolation::Container, "container")
        | (Isolation::Auto, "container" | "microvm")
        | (Isolation::Microvm | Isolation::Firecracker, "microvm") => {
            check(Status::Ok, "isolation", found, "")
        }
        (Isolation::Container, _) => check(
            Status::Fail,
            "isolation",
            found,
            "isolation = \"container\" cannot start here: fix the reason given, or choose auto",
        ),
        (Isolation::None, "container") => check(
            Status::Warn,
            "isolation",
            found,
            "none is weaker than what this host can do: consider isolation = \"auto\"",
        ),
        _ => check(
            Status::Warn,
            "isolation",
            found,
            "bundles run without namespaces (docs/security.md): install bubblewrap, run as root with the cgroup controllers for container",
        ),
    }
}

/// The data dir as `prepare_data_dir` leaves it at start: present or creatable, the runner's,
/// its subdirs 0700 (0710 and the instances' group when `none` instances switch identity).
fn data_dir_check(config: &Config) -> Check {
    let layout = config.layout();
    let root = layout.root();
    let group = settings::instances_group(config);
    let want = if group.is_some() { 0o710 } else { 0o700 };
    let uid = own_uid().unwrap_or(u32::MAX);
    let can_change = |m: &std::fs::Metadata| uid == 0 || m.uid() == uid;
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = root.ancestors().skip(1).find(|p| p.exists());
            return match parent.map(std::fs::metadata) {
                Some(Ok(m)) if m.is_dir() && can_change(&m) => check(
                    Status::Ok,
                    "data_dir",
                    format!(
                        "{} does not exist yet; at-rund creates it at start (subdirs mode {want:04o})",
                        root.display()
                    ),
                    "",
                ),
                _ => check(
                    Status::Fail,
                    "data_dir",
                    format!(
                        "{} does not exist and at-rund (uid {uid}) cannot create it",
                        root.display()
                    ),
                    "create it for the runner's user, or set data_dir (ATRUND_DATA_DIR)",
                ),
            };
        }
        Err(e) => {
            return check(
                Status::Fail,
                "data_dir",
                format!("{}: {e}", root.display()),
                "set data_dir (ATRUND_DATA_DIR) to a dir the runner owns",
            )
        }
    };
    if !meta.is_dir() {
        return check(
            Status::Fail,
            "data_dir",
            format!("{} is not a directory", root.display()),
            "set data_dir (ATRUND_DATA_DIR) to a directory",
        );
    }
    if !can_change(&meta) {
        return check(
            Status::Fail,
            "data_dir",
            format!(
                "{} is owned by uid {}, at-rund runs as uid {uid}",
                root.display(),
                meta.uid()
            ),
            "chown it to the runner's user",
        );
    }
    let mut off = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    dirs.extend(DataLayout::DIRS.iter().map(|d| root.join(d)));
    for (i, d) in dirs.iter().enumerate() {
        let Ok(m) = std::fs::metadata(d) else {
            continue;
        };
        let mode = m.mode() & 0o7777;
        // Without the group, the data dir itself keeps the mode it was made with.
        let bad_mode = (i > 0 || group.is_some()) && mode != want;
        let bad_group = group.is_some_and(|g| m.gid() != g);
        if !can_change(&m) {
            return check(
                Status::Fail,
                "data_dir",
                format!(
                    "{} is owned by uid {}, at-rund runs as uid {uid}",
                    d.display(),
                    m.uid()
                ),
                "chown the data dir to the runner's user",
            );
        }
        if bad_mode || bad_group {
            off.push(format!(
                "{} (mode {mode:04o}, gid {})",
                d.display(),
                m.gid()
            ));
        }
    }
    let expected = match group {
        Some(g) => format!("mode {want:04o}, group {g}"),
        None => format!("subdirs mode {want:04o}"),
    };
    if off.is_empty() {
        check(
            Status::Ok,
            "data_dir",
            format!("{} ({expected})", root.display()),
            "",
        )
    } else {
        check(
            Status::Warn,
            "data_dir",
            format!(
                "{} expects {expected}; differ: {}",
                root.display(),
                off.join(", ")
            ),
            "at-rund sets them at start; nothing to do unless something else changes them back",
        )
    }
}

/// The runner key file: absent (created at start, 0600) or a regular file of mode 0600 or 0400
/// (the runner refuses one that group or others can read).
/// Whether each author's data share is a hard cap (author volumes) or the soft measurement, as
/// `serve` would decide it (`settings::author_volumes`).
fn data_volumes_check(config: &Config) -> Check {
    use atrund_config::DataVolumes;
    let cap = config.tenants.max_data_bytes_per_author;
    if cap == 0 {
        return check(
            Status::Warn,
            "data quota",
            "none: tenants.max_data_bytes_per_author = 0",
            "set a cap so one author cannot fill the disk",
        );
    }
    let mode = config.tenants.data_volumes;
    if mode == DataVolumes::Off {
        return check(
            Status::Warn,
            "data quota",
            format!("soft ({cap} bytes per author, measured per request): tenants.data_volumes = \"off\""),
            "set tenants.data_volumes = \"auto\" for a hard cap (docs/limits.md, \"Author volumes\")",
        );
    }
    match (atrund_sandbox::AuthorVolumes::probe(), mode) {
        (Ok(()), _) => check(
            Status::Ok,
            "data quota",
            format!(
                "hard: each author's data dir is an ext4 volume of {} bytes",
                cap.max(atrund_sandbox::MIN_VOLUME_BYTES)
            ),
            "",
        ),
        (Err(e), DataVolumes::Loop) => check(
            Status::Fail,
            "data quota",
            format!("tenants.data_volumes = \"loop\", but: {e}"),
            "run at-rund as root on a host with loop devices and e2fsprogs, or set tenants.data_volumes = \"auto\"",
        ),
        (Err(e), _) => check(
            Status::Warn,
            "data quota",
            format!("soft ({cap} bytes per author, measured per request): {e}"),
            "run at-rund as root on a host with loop devices and e2fsprogs for a hard cap (docs/limits.md, \"Author volumes\")",
        ),
    }
}

fn key_file_check(config: &Config) -> Check {
    let path = config.key_file();
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            Status::Ok,
            "key_file",
            format!("{} does not exist yet; created at first start with mode 0600", path.display()),
            "",
        ),
        Err(e) => check(
            Status::Fail,
            "key_file",
            format!("{}: {e}", path.display()),
            "make it readable by the runner (secrets.key_file)",
        ),
        Ok(m) if !m.is_file() => check(
            Status::Fail,
            "key_file",
            format!("{} is not a regular file", path.display()),
            "point secrets.key_file at the key file (at-rund keygen creates one)",
        ),
        Ok(m) if m.mode() & 0o077 != 0 => check(
            Status::Fail,
            "key_file",
            format!(
                "{} has mode {:04o}: others can read the runner's private key, and the runner refuses it",
                path.display(),
                m.mode() & 0o7777
            ),
            &format!("chmod 600 {}", path.display()),
        ),
        Ok(m) => check(
            Status::Ok,
            "key_file",
            format!("{} (mode {:04o})", path.display(), m.mode() & 0o7777),
            "",
        ),
    }
}

/// Bind tests of the main and admin listeners (released at once).
fn port_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let addrs = [
        ("listen", Some(config.listen), "listen / ATRUND_LISTEN"),
        (
            "admin_listen",
            config.pool.admin_addr(config.listen),
            "pool.admin_listen / ATRUND_POOL_ADMIN_LISTEN",
        ),
    ];
    for (name, addr, key) in addrs {
        let Some(addr) = addr else {
            out.push(check(Status::Ok, name, "off", ""));
            continue;
        };
        if addr.port() == 0 {
            out.push(check(
                Status::Ok,
                name,
                format!("{addr}: any free port"),
                "",
            ));
            continue;
        }
        out.push(match std::net::TcpListener::bind(addr) {
            Ok(_) => check(Status::Ok, name, format!("{addr} is free"), ""),
            Err(e) => check(
                Status::Fail,
                name,
                format!("cannot bind {addr}: {e}"),
                &format!("stop what uses it (another at-rund?) or change {key}"),
            ),
        });
    }
    out
}

/// The PLC directory, through the runner's own guarded client: unreachable is a warning.
async fn plc_check(config: &Config) -> Check {
    let fix = "did:plc authors cannot be resolved until it answers; check the network and plc_url (ATRUND_PLC_URL)";
    let url = match config.plc_url.join("_health") {
        Ok(u) => u,
        Err(e) => return check(Status::Warn, "plc", format!("{}: {e}", config.plc_url), fix),
    };
    let answer = async {
        let policy = settings::own_requests_policy(&config.allow_addrs)?;
        let client = atrund_netpolicy::GuardedClient::new(
            atrund_netpolicy::ClientConfig {
                timeout: PLC_TIMEOUT,
                max_redirects: 0,
                allow_http_loopback: config.allow_http,
                extra_roots: settings::own_requests_roots(config)?,
            },
            policy,
            settings::own_requests_names(config),
        )?;
        anyhow::Ok(client.get(&url, "application/json").await?.status())
    };
    match tokio::time::timeout(PLC_TIMEOUT * 2, answer).await {
        Ok(Ok(s)) if s.is_success() => check(Status::Ok, "plc", format!("{url} answered {s}"), ""),
        Ok(Ok(s)) => check(Status::Warn, "plc", format!("{url} answered {s}"), fix),
        Ok(Err(e)) => check(Status::Warn, "plc", format!("{url}: {e:#}"), fix),
        Err(_) => check(
            Status::Warn,
            "plc",
            format!("{url}: no answer within {} s", PLC_TIMEOUT.as_secs() * 2),
            fix,
        ),
    }
}
