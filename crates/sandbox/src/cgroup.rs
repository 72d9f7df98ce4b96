//! Control groups for instances: one daemon-owned parent `at-rund-<runner id>` per hierarchy, one
//! child `i-<instance id>` per instance, created before spawn and removed when the instance exits;
//! children a crashed run left behind are swept when the manager starts.
//!
//! Owns: probing which hierarchy to use (cgroup v2 when `memory`, `cpu` and `pids` are available
//! there, else the v1 `memory` (+`memsw`), `cpu`, `cpuacct`, `pids` and `freezer` hierarchies),
//! the limit files, the breach counters (`oom_kill`, `pids.events max`), the CPU usage counter,
//! and the freezer files (v1 `freezer.state`, v2 `cgroup.freeze`; *when* to freeze is
//! `freeze`'s business; removal thaws after killing, since v1 frozen tasks do not die). Must
//! not touch: cgroups outside its own parent (other runners, the machine's supervisor), or
//! processes other than those inside its own children or the one it is asked to place. Putting
//! the process into its cgroup: `InstanceCgroup::place` from the daemon for `none` (Deno starts
//! meanwhile; the shim imports the bundle only after it), `sys` before exec for `container`,
//! or ahead of the start for a `spare` launcher, whose cgroup `adopt` renames to the instance's.
//!
//! Plain files rather than the `cgroups-rs` crate: about a dozen files are involved, the child
//! needs raw `cgroup.procs` paths for its async-signal-safe pre-exec write anyway, and the
//! hybrid layout of this machine kind (v1 controllers, an empty cgroup2) is then handled by
//! the probe below in a few lines that are easy to read and test.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::SandboxError;

/// Prefix of every parent this daemon creates; the runner id follows.
pub const PARENT_PREFIX: &str = "at-rund-";
/// Prefix of every instance child.
const CHILD_PREFIX: &str = "i-";
/// Prefix of a spare cgroup (`spare`), never an instance's name; swept like one.
const SPARE_PREFIX: &str = "spare-";
/// CFS period used for the CPU quota.
const CFS_PERIOD_US: u64 = 100_000;
/// How long removal keeps retrying while exiting processes still hold a cgroup.
const REMOVE_PATIENCE: Duration = Duration::from_secs(3);
/// Default of `limits.freeze_after_idle_ms`.
pub const DEFAULT_FREEZE_AFTER_IDLE: Duration = Duration::from_millis(50);

/// A stable id for one runner on one host, from its data dir: two runners with different data
/// dirs never share cgroups, and a restarted runner finds (and sweeps) its own leftovers.
pub fn runner_id_for(data_dir: &Path) -> String {
    let canon = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Which cgroup layout is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// What each limit needs: a parent dir where the controller is usable, or why it is not.
type Slot = Result<PathBuf, String>;

/// Limits written into one instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_mib: u64,
    pub pids: u64,
    /// Percent of one CPU (200 = two CPUs).
    pub cpu_quota_percent: u64,
}

/// The daemon's cgroups. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CgroupManager {
    runner_id: String,
    version: Option<CgroupVersion>,
    memory: Slot,
    /// v1 only: `memory.memsw.*` exists, so swap is capped too.
    memsw: bool,
    cpu: Slot,
    cpuacct: Slot,
    pids: Slot,
    /// v1 `freezer` hierarchy, or the v2 parent when it has `cgroup.freeze`.
    freezer: Slot,
    /// Freeze an instance after this long with no call in flight; `None`: never (the operator's
    /// `limits.freeze_idle = false`).
    freeze_after_idle: Option<Duration>,
}

impl CgroupManager {
    /// Probes the machine, creates the parents and sweeps leftovers of an earlier run with the
    /// same runner id. Never fails: what cannot be used is recorded with its reason and shows in
    /// [`CgroupManager::enforcement`].
    pub fn start(runner_id: &str) -> Self {
        Self::start_at(runner_id, Path::new("/proc/self/mounts"))
    }

    fn start_at(runner_id: &str, mounts_file: &Path) -> Self {
        let mut m = Self::probe(runner_id, mounts_file);
        if m.version == Some(CgroupVersion::V2) {
            if let Ok(p) = &m.memory {
                if let Err(e) = enable_v2_controllers(p) {
                    let why = format!("cgroup v2 controllers could not be enabled: {e}");
                    m.memory = Err(why.clone());
                    m.cpu = Err(why.clone());
                    m.cpuacct = Err(why.clone());
                    m.pids = Err(why);
                }
            }
        }
        for slot in [
            &mut m.memory,
            &mut m.cpu,
            &mut m.cpuacct,
            &mut m.pids,
            &mut m.freezer,
        ] {
            if let Ok(dir) = slot {
                if let Err(e) = std::fs::create_dir(&*dir) {
                    if e.kind() != ErrorKind::AlreadyExists {
                        *slot = Err(format!(
                            "cannot create {}: {e} (needs root or a delegated cgroup)",
                            dir.display()
                        ));
                    }
                }
            }
        }
        if m.version == Some(CgroupVersion::V2) {
            if let Ok(p) = &m.freezer {
                if !p.join("cgroup.freeze").exists() {
                    m.freezer = Err(format!(
                        "{} has no cgroup.freeze (the v2 freezer needs Linux 5.2 or later)",
                        p.display()
                    ));
                }
            }
        }
        let swept = m.sweep();
        if !swept.is_empty() {
            tracing::info!(count = swept.len(), names = ?swept, "removed leftover instance cgroups");
        }
        m
    }

    fn probe(runner_id: &str, mounts_file: &Path) -> Self {
        let mut m = Self {
            runner_id: runner_id.to_string(),
            version: None,
            memory: Err(String::new()),
            memsw: false,
            cpu: Err(String::new()),
            cpuacct: Err(String::new()),
            pids: Err(String::new()),
            freezer: Err(String::new()),
            freeze_after_idle: Some(DEFAULT_FREEZE_AFTER_IDLE),
        };
        let parent_name = format!("{PARENT_PREFIX}{runner_id}");
        let valid_id = !runner_id.is_empty()
            && runner_id.len() <= 64
            && runner_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let mounts = match std::fs::read_to_string(mounts_file) {
            Ok(s) if valid_id => s,
            Ok(_) => {
                m.set_all(format!(
                    "runner id '{runner_id}' is not [A-Za-z0-9_-]{{1,64}}"
                ));
                return m;
            }
            Err(e) => {
                m.set_all(format!(
                    "no mount table at {} ({e}); cgroups need Linux",
                    mounts_file.display()
                ));
                return m;
            }
        };
        let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            match f[2] {
                "cgroup" => v1.push((
                    PathBuf::from(f[1]),
                    f[3].split(',').map(str::to_string).collect(),
                )),
                "cgroup2" => v2 = Some(PathBuf::from(f[1])),
                _ => {}
            }
        }
        if let Some(root) = &v2 {
            let ctrls =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| ctrls.split_whitespace().any(|x| x == c);
            if has("memory") && has("cpu") && has("pids") {
                let dir = root.join(&parent_name);
                m.version = Some(CgroupVersion::V2);
                m.memory = Ok(dir.clone());
                m.cpu = Ok(dir.clone());
                m.cpuacct = Ok(dir.clone());
                m.pids = Ok(dir.clone());
                // The v2 freezer is core (no controller); checked once the parent exists.
                m.freezer = Ok(dir);
                return m;
            }
        }
        if v1.is_empty() {
            m.set_all(match &v2 {
                Some(root) => format!(
                    "cgroup2 at {} has no memory/cpu/pids controllers and no cgroup v1 hierarchy is mounted",
                    root.display()
                ),
                None => "no cgroup filesystem is mounted".into(),
            });
            return m;
        }
        m.version = Some(CgroupVersion::V1);
        let find = |ctrl: &str| -> Slot {
            v1.iter()
                .find(|(_, opts)| opts.iter().any(|o| o == ctrl))
                .map(|(p, _)| p.join(&parent_name))
                .ok_or_else(|| format!("no cgroup v1 '{ctrl}' hierarchy is mounted"))
        };
        m.memory = find("memory");
        m.cpu = find("cpu");
        m.cpuacct = find("cpuacct");
        m.pids = find("pids");
        m.freezer = find("freezer");
        if let Ok(p) = &m.memory {
            m.memsw = p
                .parent()
                .is_some_and(|root| root.join("memory.memsw.limit_in_bytes").exists());
        }
        m
    }

    fn set_all(&mut self, why: String) {
        self.memory = Err(why.clone());
        self.cpu = Err(why.clone());
        self.cpuacct = Err(why.clone());
        self.pids = Err(why.clone());
        self.freezer = Err(why);
    }

    /// Freeze instances after `after` with no call in flight (`Duration::ZERO`: as soon as the
    /// last call ends); `None` turns freezing off. Only instances created afterwards see it.
    pub fn with_freeze_after_idle(mut self, after: Option<Duration>) -> Self {
        self.freeze_after_idle = after;
        self
    }

    /// When idle instances are frozen: `None` when freezing is off or the freezer is unusable.
    pub fn freeze_after_idle(&self) -> Option<Duration> {
        self.freezer.as_ref().ok().and(self.freeze_after_idle)
    }

    /// Whether the cgroup of instance `instance_id` is frozen now (`None`: no freezer, or no such
    /// cgroup). For tests and diagnostics; the executor keeps its own state.
    pub fn instance_frozen(&self, instance_id: &str) -> Option<bool> {
        let dir = self
            .freezer
            .as_ref()
            .ok()?
            .join(format!("{CHILD_PREFIX}{instance_id}"));
        read_frozen(self.version?, &dir)
    }

    /// The idle freezer: enforced here and how, or why not (`idleFreeze` in the enforcement list).
    pub(crate) fn freezer_slot(&self) -> Result<String, String> {
        let dir = self.freezer.as_ref().map_err(|e| e.clone())?;
        let Some(after) = self.freeze_after_idle else {
            return Err("turned off (limits.freeze_idle = false): an instance's timers run between calls until the pool reaps it".into());
        };
        let how = match self.version {
            Some(CgroupVersion::V2) => "cgroup v2 cgroup.freeze",
            _ => "cgroup v1 freezer.state",
        };
        Ok(format!(
            "{how} under {}: an instance with no call in flight for {} ms is frozen, thawed before its next call",
            dir.display(),
            after.as_millis()
        ))
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    pub fn version(&self) -> Option<CgroupVersion> {
        self.version
    }

    /// Every parent dir in use (one per hierarchy), the freezer's first: removal goes in this
    /// order, and v1 tasks only die once their freezer cgroup is thawed.
    pub fn parents(&self) -> Vec<PathBuf> {
        let set: BTreeSet<PathBuf> = [&self.memory, &self.cpu, &self.cpuacct, &self.pids]
            .into_iter()
            .filter_map(|s| s.as_ref().ok().cloned())
            .collect();
        let freezer = self.freezer.as_ref().ok();
        freezer
            .cloned()
            .into_iter()
            .chain(set.into_iter().filter(|p| Some(p) != freezer))
            .collect()
    }

    /// For each limit: whether it is enforced here, and how, or why not.
    pub(crate) fn slots(&self) -> [(&'static str, Result<String, String>); 4] {
        let v = match self.version {
            Some(CgroupVersion::V2) => "cgroup v2",
            _ => "cgroup v1",
        };
        let how = |s: &Slot, files: &str| match s {
            Ok(p) => Ok(format!("{v} {files} under {}", p.display())),
            Err(e) => Err(e.clone()),
        };
        let mem_files = match (self.version, self.memsw) {
            (Some(CgroupVersion::V2), _) => "memory.max, memory.swap.max = 0",
            (_, true) => "memory.limit_in_bytes = memory.memsw.limit_in_bytes",
            (_, false) => "memory.limit_in_bytes (no memsw: swap is not capped)",
        };
        let (cpu_files, acct_files) = match self.version {
            Some(CgroupVersion::V2) => ("cpu.max", "cpu.stat usage_usec"),
            _ => ("cpu.cfs_quota_us", "cpuacct.usage"),
        };
        [
            ("memory", how(&self.memory, mem_files)),
            ("cpuQuota", how(&self.cpu, cpu_files)),
            ("cpuTime", how(&self.cpuacct, acct_files)),
            ("pids", how(&self.pids, "pids.max")),
        ]
    }

    /// Creates and configures the cgroup of one instance. Fails closed: a controller the manager
    /// found usable but cannot configure now is an error, not a silent skip.
    pub fn create(
        &self,
        instance_id: &str,
        limits: CgroupLimits,
    ) -> Result<InstanceCgroup, SandboxError> {
        let cg = self.make_dirs(&instance_name(instance_id)?)?;
        self.write_limits(&cg, limits)?;
        Ok(cg)
    }

    /// A cgroup for a process started before its instance is known (`spare`): the dirs only,
    /// with no limits yet; [`CgroupManager::adopt`] gives it its instance's name and limits
    /// before anything of the instance runs. `None` on cgroup v2, where a cgroup cannot be
    /// renamed (and `clone3(CLONE_INTO_CGROUP)` would be the way to a migration-free start).
    pub(crate) fn create_spare(&self, n: u64) -> Option<Result<InstanceCgroup, SandboxError>> {
        (self.version == Some(CgroupVersion::V1))
            .then(|| self.make_dirs(&format!("{SPARE_PREFIX}{n}")))
    }

    /// Renames the spare cgroup `spare` (and the processes inside with it) to instance
    /// `instance_id`'s name and writes `limits`: the result is what [`CgroupManager::create`]
    /// would have made, already holding the spare's processes. On an error the spare's dirs,
    /// under whichever name they have, are removed with what runs in them.
    pub(crate) fn adopt(
        &self,
        spare: InstanceCgroup,
        instance_id: &str,
        limits: CgroupLimits,
    ) -> Result<InstanceCgroup, SandboxError> {
        let name = instance_name(instance_id)?;
        let cg = self.cgroup_named(&name);
        // Marked removed first: from here on `cg` owns the dirs, whichever name they have.
        spare.removed.store(true, Ordering::SeqCst);
        let renamed = spare.dirs.iter().zip(&cg.dirs).try_for_each(|(from, to)| {
            std::fs::rename(from, to).map_err(|e| {
                SandboxError::StartFailed(format!(
                    "could not rename the spare cgroup {} to {}: {e}",
                    from.display(),
                    to.display()
                ))
            })
        });
        if let Err(e) = renamed {
            spare.removed.store(false, Ordering::SeqCst);
            drop(spare);
            return Err(e);
        }
        self.write_limits(&cg, limits)?;
        Ok(cg)
    }

    /// The (not yet created) cgroup `name` under each parent.
    fn cgroup_named(&self, name: &str) -> InstanceCgroup {
        let child = |s: &Slot| s.as_ref().ok().map(|p| p.join(name));
        InstanceCgroup {
            version: self.version.unwrap_or(CgroupVersion::V1),
            dirs: self.parents().iter().map(|p| p.join(name)).collect(),
            memory: child(&self.memory),
            cpuacct: child(&self.cpuacct),
            pids: child(&self.pids),
            freezer: child(&self.freezer),
            freeze_after_idle: self.freeze_after_idle,
            removed: AtomicBool::new(false),
        }
    }

    /// Creates the dirs of cgroup `name` (a dead namesake is removed first).
    fn make_dirs(&self, name: &str) -> Result<InstanceCgroup, SandboxError> {
        let cg = self.cgroup_named(name);
        for d in &cg.dirs {
            if let Err(e) = std::fs::create_dir(d) {
                if e.kind() == ErrorKind::AlreadyExists {
                    // A dead namesake; ids are unique, so it is a leftover.
                    let _ = remove_dir(d, Instant::now() + REMOVE_PATIENCE);
                    std::fs::create_dir(d).map_err(|e| start_err("create", d, e))?;
                } else {
                    return Err(start_err("create", d, e));
                }
            }
        }
        Ok(cg)
    }

    /// Sets new limits on the existing cgroup of `instance_id`: a generic sandbox gets its
    /// bundle's when it is specialised. Fails closed as [`Self::create`] does.
    pub(crate) fn set_limits(
        &self,
        instance_id: &str,
        limits: CgroupLimits,
    ) -> Result<(), SandboxError> {
        self.write_limits_named(&format!("{CHILD_PREFIX}{instance_id}"), limits)
    }

    /// Writes the limit files of `cg`, one of this manager's cgroups.
    fn write_limits(&self, cg: &InstanceCgroup, limits: CgroupLimits) -> Result<(), SandboxError> {
        // No dirs: this host has no usable hierarchy (limits are reported as not enforced).
        match cg.dirs.first().and_then(|d| d.file_name()?.to_str()) {
            Some(name) => self.write_limits_named(name, limits),
            None => Ok(()),
        }
    }

    /// Writes the limit files of this manager's cgroup `name`.
    fn write_limits_named(&self, name: &str, limits: CgroupLimits) -> Result<(), SandboxError> {
        let child = |s: &Slot| s.as_ref().ok().map(|p| p.join(name));
        let mib = limits.memory_mib.saturating_mul(1024 * 1024).to_string();
        let quota = (limits.cpu_quota_percent.saturating_mul(CFS_PERIOD_US) / 100).max(1000);
        let mut writes: Vec<(PathBuf, String)> = Vec::new();
        match self.version.unwrap_or(CgroupVersion::V1) {
            CgroupVersion::V1 => {
                if let Some(d) = child(&self.memory) {
                    writes.push((d.join("memory.limit_in_bytes"), mib.clone()));
                    if self.memsw {
                        writes.push((d.join("memory.memsw.limit_in_bytes"), mib));
                    }
                }
                if let Some(d) = child(&self.cpu) {
                    writes.push((d.join("cpu.cfs_period_us"), CFS_PERIOD_US.to_string()));
                    writes.push((d.join("cpu.cfs_quota_us"), quota.to_string()));
                }
                if let Some(d) = child(&self.pids) {
                    writes.push((d.join("pids.max"), limits.pids.to_string()));
                }
            }
            CgroupVersion::V2 => {
                if let Some(d) = child(&self.memory) {
                    writes.push((d.join("memory.max"), mib));
                    if d.join("memory.swap.max").exists() {
                        writes.push((d.join("memory.swap.max"), "0".into()));
                    }
                    writes.push((d.join("cpu.max"), format!("{quota} {CFS_PERIOD_US}")));
                    writes.push((d.join("pids.max"), limits.pids.to_string()));
                }
            }
        }
        for (file, value) in writes {
            std::fs::write(&file, &value).map_err(|e| start_err("write", &file, e))?;
        }
        Ok(())
    }

    /// Removes every child of this runner's parents (killing what still runs in them). Returns
    /// the names removed. Other runners' parents and the machine's own cgroups are not looked at.
    pub fn sweep(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                match remove_dir(&p, Instant::now() + REMOVE_PATIENCE) {
                    Ok(()) => removed.push(e.file_name().to_string_lossy().into_owned()),
                    Err(err) => {
                        tracing::warn!(path = %p.display(), error = %err, "could not remove a leftover cgroup")
                    }
                }
            }
        }
        removed
    }

    /// Sweeps and then removes this runner's parents (at a clean shutdown).
    pub fn remove_parents(&self) -> Result<(), String> {
        self.sweep();
        let mut errors = Vec::new();
        for p in self.parents() {
            match std::fs::remove_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The cgroup name of instance `instance_id` (`i-<id>`), if the id can name one.
fn instance_name(instance_id: &str) -> Result<String, SandboxError> {
    let safe = !instance_id.is_empty()
        && instance_id.len() <= 200
        && !instance_id.starts_with('.')
        && instance_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !safe {
        return Err(SandboxError::StartFailed(format!(
            "instance id '{instance_id}' cannot name a cgroup"
        )));
    }
    Ok(format!("{CHILD_PREFIX}{instance_id}"))
}

fn start_err(what: &str, p: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::StartFailed(format!(
        "could not {what} the instance cgroup file {}: {e}",
        p.display()
    ))
}

/// v2: the root must delegate the controllers to our parent, and our parent to its children.
fn enable_v2_controllers(parent: &Path) -> std::io::Result<()> {
    let root = parent.parent().unwrap_or(Path::new("/"));
    std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids")
}

/// Kills what runs in `dir` and removes it, retrying while exiting tasks still hold it.
fn remove_dir(dir: &Path, until: Instant) -> std::io::Result<()> {
    loop {
        kill_all(dir);
        // Killed tasks of a frozen cgroup die only once thawed (v1; v2 kills frozen tasks).
        thaw_dir(dir);
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// SIGKILL to every task in `dir` (`cgroup.kill` where the kernel has it).
fn kill_all(dir: &Path) {
    if dir.join("cgroup.kill").exists() {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    } else if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Thaws `dir` if it is a freezer cgroup (either version); other dirs are left alone.
fn thaw_dir(dir: &Path) {
    for (file, value) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
        let f = dir.join(file);
        if f.exists() {
            let _ = std::fs::write(f, value);
        }
    }
}

/// Whether the freezer cgroup `dir` is frozen: v1 `freezer.state` reads `FROZEN` (not
/// `FREEZING`), v2 `cgroup.events` has `frozen 1`.
fn read_frozen(version: CgroupVersion, dir: &Path) -> Option<bool> {
    match version {
        CgroupVersion::V1 => std::fs::read_to_string(dir.join("freezer.state"))
            .ok()
            .map(|s| s.trim() == "FROZEN"),
        CgroupVersion::V2 => std::fs::read_to_string(dir.join("cgroup.events"))
            .ok()
            .map(|s| keyed(&s, "frozen") == Some(1)),
    }
}

/// The cgroup of one instance (one dir per hierarchy). Removed by [`InstanceCgroup::remove`],
/// or on drop as a last resort.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    pids: Option<PathBuf>,
    /// The freezer dir (v1 `freezer` hierarchy, v2 the one dir), if the freezer is usable.
    freezer: Option<PathBuf>,
    /// The manager's setting when this cgroup was created.
    freeze_after_idle: Option<Duration>,
    removed: AtomicBool,
}

/// Breach counters of an instance cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Processes the kernel OOM-killed in this cgroup.
    pub oom_kills: u64,
    /// Forks or thread creations refused by `pids.max`.
    pub pids_refused: u64,
}

impl InstanceCgroup {
    /// `cgroup.procs` of each hierarchy, as C strings for the child's pre-exec write.
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Moves the running process `pid` (every thread of it) into each hierarchy's dir, then
    /// checks that every `cgroup.procs` lists it. Blocking: on cgroup v1 the first write waits
    /// for an RCU grace period (~10 ms). The caller must not have reaped `pid` (a recycled pid
    /// would move a stranger). Memory the process allocated before stays charged where it was:
    /// v1 `memory.move_charge_at_immigrate` is gone from current kernels (EINVAL on 6.18).
    pub(crate) fn place(&self, pid: u32) -> Result<(), SandboxError> {
        if pid == 0 {
            // "0" means the writer: the daemon itself.
            return Err(SandboxError::StartFailed(
                "no pid to place in the cgroup".into(),
            ));
        }
        let pid_s = pid.to_string();
        for d in &self.dirs {
            let procs = d.join("cgroup.procs");
            std::fs::write(&procs, &pid_s).map_err(|e| start_err("write", &procs, e))?;
        }
        for d in &self.dirs {
            let procs = d.join("cgroup.procs");
            let listed = std::fs::read_to_string(&procs)
                .map_err(|e| start_err("read", &procs, e))?
                .lines()
                .any(|l| l.trim() == pid_s);
            if !listed {
                return Err(SandboxError::StartFailed(format!(
                    "process {pid} is not in {} after it was moved there",
                    procs.display()
                )));
            }
        }
        Ok(())
    }

    /// The dirs, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Resident memory of every process in the cgroup (their `VmRSS` summed): in `container`
    /// mode bwrap, our init and Deno, not bwrap alone. `None` when no process could be read.
    pub fn resident_bytes(&self) -> Option<u64> {
        // Every hierarchy lists the same processes (each is placed in all of them).
        let procs = std::fs::read_to_string(self.dirs.first()?.join("cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .filter_map(crate::resident_bytes)
            .reduce(u64::saturating_add)
    }

    /// CPU time used by every task in the cgroup so far.
    pub fn cpu_usage(&self) -> Option<Duration> {
        let d = self.cpuacct.as_ref()?;
        match self.version {
            CgroupVersion::V1 => std::fs::read_to_string(d.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
                .map(Duration::from_nanos),
            CgroupVersion::V2 => keyed(
                &std::fs::read_to_string(d.join("cpu.stat")).ok()?,
                "usage_usec",
            )
            .map(Duration::from_micros),
        }
    }

    /// After how long with no call in flight this instance is to be frozen (`None`: never, or
    /// no freezer).
    pub(crate) fn freeze_after_idle(&self) -> Option<Duration> {
        self.freezer.as_ref().and(self.freeze_after_idle)
    }

    /// Asks the kernel to freeze every task (v1 `FROZEN`, v2 `cgroup.freeze = 1`). Returns at
    /// once; [`InstanceCgroup::frozen`] says when it is done.
    pub(crate) fn freeze(&self) -> std::io::Result<()> {
        self.write_freezer("FROZEN", "1")
    }

    /// Thaws every task (v1 `THAWED`, v2 `cgroup.freeze = 0`); they are runnable on return.
    pub(crate) fn thaw(&self) -> std::io::Result<()> {
        self.write_freezer("THAWED", "0")
    }

    fn write_freezer(&self, v1: &str, v2: &str) -> std::io::Result<()> {
        let dir = self.freezer.as_ref().ok_or(ErrorKind::Unsupported)?;
        match self.version {
            CgroupVersion::V1 => std::fs::write(dir.join("freezer.state"), v1),
            CgroupVersion::V2 => std::fs::write(dir.join("cgroup.freeze"), v2),
        }
    }

    /// Whether every task is frozen now (`None`: no freezer, or the cgroup is gone).
    pub(crate) fn frozen(&self) -> Option<bool> {
        read_frozen(self.version, self.freezer.as_ref()?)
    }

    /// SIGKILL to every task, then thaw so that they die (v1 frozen tasks sleep through a
    /// SIGKILL until thawed). Killing first means no bundle code runs after the thaw. Reading
    /// `cgroup.procs` and then signalling is safe from pid reuse here: a frozen task cannot exit.
    pub(crate) fn kill_frozen(&self) {
        if let Some(dir) = &self.freezer {
            kill_all(dir);
        }
        let _ = self.thaw();
    }

    /// The breach counters now (zero for what cannot be read).
    pub fn counters(&self) -> Counters {
        let read = |d: &Option<PathBuf>, file: &str, key: &str| {
            d.as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .and_then(|s| keyed(&s, key))
                .unwrap_or(0)
        };
        let oom_file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        Counters {
            oom_kills: read(&self.memory, oom_file, "oom_kill"),
            pids_refused: read(&self.pids, "pids.events", "max"),
        }
    }

    /// Kills anything left inside and removes every dir. Blocking (it retries for up to a few
    /// seconds while exiting tasks let go); call it off the async threads.
    pub fn remove(&self) -> Result<(), String> {
        if self.removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let until = Instant::now() + REMOVE_PATIENCE;
        let mut errors = Vec::new();
        for d in &self.dirs {
            if let Err(e) = remove_dir(d, until) {
                errors.push(format!("{}: {e}", d.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "could not remove an instance cgroup");
        }
    }
}

/// The number after `key ` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_ids_differ_by_data_dir_and_are_stable() {
        let a = runner_id_for(Path::new("/nonexistent/a"));
        assert_eq!(a, runner_id_for(Path::new("/nonexistent/a")));
        assert_ne!(a, runner_id_for(Path::new("/nonexistent/b")));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn keyed_files() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(2));
        assert_eq!(keyed("max 5\n", "max"), Some(5));
        assert_eq!(keyed("usage_usec 12\nuser_usec 3", "usage_usec"), Some(12));
        assert_eq!(keyed("maxx 5", "max"), None);
    }

    fn probe(mounts: &str, ctrls_v2: Option<&str>) -> CgroupManager {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let text = mounts.replace("ROOT", root.to_str().unwrap());
        std::fs::create_dir_all(root.join("unified")).unwrap();
        if let Some(c) = ctrls_v2 {
            std::fs::write(root.join("unified/cgroup.controllers"), c).unwrap();
        }
        std::fs::write(root.join("mounts"), text).unwrap();
        CgroupManager::probe("r1", &root.join("mounts"))
    }

    #[test]
    fn probe_prefers_v2_only_with_controllers() {
        let hybrid = "cgroup ROOT/memory cgroup rw,memory 0 0\ncgroup ROOT/cpu cgroup rw,cpu 0 0\n\
                      cgroup ROOT/cpuacct cgroup rw,cpuacct 0 0\ncgroup2 ROOT/unified cgroup2 rw 0 0\n";
        let m = probe(hybrid, Some("hugetlb\n"));
        assert_eq!(m.version, Some(CgroupVersion::V1));
        assert!(m.memory.as_ref().unwrap().ends_with("memory/at-rund-r1"));
        assert!(m.cpuacct.as_ref().unwrap().ends_with("cpuacct/at-rund-r1"));
        assert!(m.pids.as_ref().unwrap_err().contains("'pids'"));
        let m = probe(hybrid, Some("cpu memory pids io\n"));
        assert_eq!(m.version, Some(CgroupVersion::V2));
        assert_eq!(m.parents().len(), 1);
        let m = probe("cgroup2 ROOT/unified cgroup2 rw 0 0\n", Some(""));
        assert!(m.memory.unwrap_err().contains("no memory/cpu/pids"));
        let m = probe("proc /proc proc rw 0 0\n", None);
        assert_eq!(m.version, None);
        assert!(m.parents().is_empty());
    }

    #[test]
    fn freezer_probe_and_order() {
        let m = probe(
            "cgroup ROOT/memory cgroup rw,memory 0 0\ncgroup ROOT/freezer cgroup rw,freezer 0 0\n",
            None,
        );
        assert!(m.freezer.as_ref().unwrap().ends_with("freezer/at-rund-r1"));
        // The freezer's parent comes first: removal thaws before the other dirs are waited on.
        assert!(m.parents()[0].ends_with("freezer/at-rund-r1"));
        assert_eq!(m.parents().len(), 2);
        assert_eq!(m.freeze_after_idle(), Some(DEFAULT_FREEZE_AFTER_IDLE));
        let off = m.with_freeze_after_idle(None);
        assert_eq!(off.freeze_after_idle(), None);
        assert!(off
            .freezer_slot()
            .unwrap_err()
            .contains("freeze_idle = false"));
        let m = probe("cgroup ROOT/memory cgroup rw,memory 0 0\n", None);
        assert!(m.freezer.as_ref().unwrap_err().contains("'freezer'"));
        assert_eq!(m.freeze_after_idle(), None);
        assert!(m.freezer_slot().is_err());
    }

    #[test]
    fn co_mounted_cpu_and_cpuacct_share_one_parent() {
        let m = probe("cgroup ROOT/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n", None);
        assert_eq!(m.cpu, m.cpuacct);
        assert_eq!(m.parents().len(), 1);
    }
}
