//! Pre-warmed generic sandboxes of the `container` backend (docs/design.md, "Pre-warmed generic
//! sandboxes"): bwrap, our PID 1, the runtime and its shim (Deno's `runtime/exec/generic.ts`,
//! Python's `python.py --generic`, serving its socket) started before any bundle is known, then
//! specialised to one bundle, once. A sandbox is made for one runtime ([`GenericConfig`]).
//!
//! Python enforces no permission itself (docs/runtimes.md), so a Python sandbox has no broker:
//! everything below but the permission checks applies to it, and the kernel layer is its whole
//! boundary exactly as in its normal start. Node's permission flags are fixed when it starts
//! (no broker), so Node bundles start the normal way.
//!
//! What is generic, and how each per-bundle grant gets in after the start:
//! - permissions: Deno runs without `--allow-*` flags and with `DENO_PERMISSION_BROKER_PATH`;
//!   at-rund answers every check (`broker`) by the flags the normal start would pass. `run`
//!   cannot be answered exactly (Deno does not name the command), so such bundles start the
//!   normal way ([`GenericSandbox::unfit`]).
//! - data: `/data` is a read-only bind of the sandbox's stage dir, a shared mount in at-rund's
//!   namespace; the manifest's paths are bound in at specialisation (read-only or writable,
//!   nosuid, nodev) and propagate into the sandbox's slave copy, where its user namespace
//!   cannot unmount or remount them (locked mounts; no capabilities; seccomp).
//! - the bundle: copied into the stage's `bundle/`, which the sandbox sees read-only at
//!   `/bundle`; the shim imports it when told on stdin.
//! - secrets: sent on stdin with the bundle and set by the shim; only their names pass the
//!   broker, as with `--allow-env`.
//! - egress: the proxy URL with a fresh token is in the environment from the start; the token
//!   is registered with the bundle's `net` rules (and the host side of the forwarder started)
//!   at specialisation. Before, it counts for nothing.
//! - limits: the cgroup is created with the operator's caps and set to the bundle's limits at
//!   specialisation. The V8 heap flag, RLIMIT_NOFILE and RLIMIT_FSIZE cannot change after the
//!   start: they are the operator's caps (`GenericConfig`); the cgroup holds memory exactly.
//! - DENO_DIR is the sandbox's own (`/work/deno`), never a bundle's.
//!
//! Owns: the stage mounts and their teardown, the generic command line, the specialisation.
//! Must not: keep a sandbox for a second bundle ([`GenericSandbox::specialise`] consumes it),
//! or decide which bundles may use one (the pool asks [`GenericSandbox::unfit`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{bundle_path_inside, ContainerExecutor};
use super::{BUNDLE, DATA, EGRESS_SOCKET, INIT_CONFIG, PROXY_PORT, WORK};
use crate::broker::{Broker, BrokerRules};
use crate::cgroup::CgroupLimits;
use crate::hostfs::{self, DataPath};
use crate::init_config::{InitConfig, ProxyForward};
use crate::process::{self, Park, Parked};
use crate::rootfs::{runtime_in_root, DENO_IN_ROOT, INIT_IN_ROOT};
use crate::runtime::deno::{HARDENED, SHIM};
use crate::runtime::{Layout, Runtime};
use crate::{Instance, InstanceSpec, ResourceLimits, RunAs, RuntimeKind, SandboxError};

/// The generic shim, embedded like the normal one; it imports the normal one for the calls.
pub const GENERIC_SHIM_SOURCE: &str = include_str!("../../../../runtime/exec/generic.ts");
const GENERIC_SHIM: &str = "generic.ts";
const BROKER_SOCKET: &str = "broker.sock";
/// DENO_DIR inside: the sandbox's own, in its work dir.
const DENO_DIR_IN: &str = "/work/deno";

/// Every reason [`GenericSandbox::unfit`] gives, in the order the pool counts them.
pub const UNFIT_REASONS: [&str; 4] = ["run", "limits", "rlimits", "runtime"];

/// The runtimes a generic sandbox can be made for.
pub const GENERIC_RUNTIMES: [RuntimeKind; 2] = [RuntimeKind::Deno, RuntimeKind::Python];

/// What every generic sandbox is started with, before its bundle is known.
#[derive(Debug, Clone)]
pub struct GenericConfig {
    /// The runtime it runs: it serves bundles of that runtime only (one of
    /// [`GENERIC_RUNTIMES`]).
    pub runtime: RuntimeKind,
    /// The V8 heap flag and the cgroup's memory until specialised: the operator's cap
    /// (`limits.max_memory_mib`); a bundle's own limit is set on the cgroup.
    pub memory_mib: u64,
    /// The operator's caps: pids and CPU until specialised; RLIMIT_NOFILE and RLIMIT_FSIZE for
    /// good (they cannot change after the start).
    pub limits: ResourceLimits,
    /// Spawn to the shim's first answer.
    pub start_timeout: Duration,
}

/// A started, unspecialised sandbox. Dropped, it is killed and its dirs removed.
pub struct GenericSandbox {
    parked: Parked,
    stage: Stage,
    /// Deno's permission broker (Python enforces nothing itself: none).
    broker: Option<Broker>,
    token: Option<String>,
    exec: ContainerExecutor,
    cfg: GenericConfig,
}

impl std::fmt::Debug for GenericSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericSandbox")
            .field("id", &self.parked.id())
            .finish_non_exhaustive()
    }
}

impl ContainerExecutor {
    /// Starts a generic sandbox named `id` (its cgroup's name) in `work_dir` (created; removed
    /// with the sandbox) and waits until its shim answers. Needs a root daemon: the data paths
    /// are bind-mounted in later.
    pub async fn park_generic(
        &self,
        id: &str,
        work_dir: &Path,
        cfg: &GenericConfig,
    ) -> Result<GenericSandbox, SandboxError> {
        if !self.euid_root {
            return Err(SandboxError::StartFailed(
                "generic sandboxes need at-rund to run as root (the data paths are bind-mounted \
                 into a started sandbox); set pool.generic_sandboxes = 0"
                    .into(),
            ));
        }
        if !GENERIC_RUNTIMES.contains(&cfg.runtime) {
            return Err(SandboxError::StartFailed(format!(
                "there are no generic sandboxes for {} (its permissions are fixed when it starts)",
                cfg.runtime.as_str()
            )));
        }
        let runtime = self.cfg.runtimes.get(cfg.runtime)?;
        let stage_dir = stage_path(work_dir);
        let prepared = prepare(work_dir, &stage_dir, self.run_as, cfg.runtime).await;
        let stage = match prepared {
            Ok(s) => s,
            Err(e) => {
                process::remove_work_dir(id, work_dir);
                return Err(e);
            }
        };
        let fail = |e: SandboxError| {
            process::remove_work_dir(id, work_dir);
            e
        };
        let socket = work_dir.join(process::SOCKET_FILE);
        let socket_in = Path::new(WORK).join(process::SOCKET_FILE);
        let broker = match cfg.runtime {
            RuntimeKind::Deno => Some(
                Broker::listen(
                    &work_dir.join(BROKER_SOCKET),
                    BrokerRules::shim_only(&socket_in),
                    self.run_as,
                    id.into(),
                )
                .map_err(fail)?,
            ),
            _ => None,
        };
        let token = match &self.egress {
            Some(_) => Some(
                atrund_egress::new_token()
                    .map_err(|e| fail(SandboxError::StartFailed(e.to_string())))?,
            ),
            None => None,
        };
        let argv: Vec<String> = match cfg.runtime {
            RuntimeKind::Deno => std::iter::once(DENO_IN_ROOT)
                .chain(HARDENED)
                .map(str::to_string)
                .chain([
                    format!("--v8-flags=--max-old-space-size={}", cfg.memory_mib),
                    format!("{WORK}/{GENERIC_SHIM}"),
                    socket_in.to_string_lossy().into_owned(),
                ])
                .collect(),
            // The normal start's flags, generic mode.
            _ => std::iter::once(runtime_in_root(cfg.runtime))
                .chain(crate::runtime::python::FLAGS)
                .map(str::to_string)
                .chain([
                    format!("{WORK}/{}", runtime.shim().file),
                    "--generic".into(),
                    socket_in.to_string_lossy().into_owned(),
                ])
                .collect(),
        };
        let init = InitConfig {
            argv,
            // Deno's checks are the broker's; the kernel's part: `/data` writable only where
            // a writable bind is mounted (the mount's flag decides), the root read-only.
            read_only: ["/etc", BUNDLE, "/proc", "/dev"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            execute: ["/bin", "/sbin", "/lib", "/lib64", "/usr"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            read_write: [WORK, "/tmp", "/dev/null", DATA]
                .iter()
                .map(PathBuf::from)
                .collect(),
            proxy: token.as_ref().map(|_| ProxyForward {
                port: PROXY_PORT,
                socket: Path::new(WORK).join(EGRESS_SOCKET),
            }),
        };
        let json = serde_json::to_vec(&init)
            .map_err(|e| fail(SandboxError::StartFailed(format!("init config: {e}"))))?;
        hostfs::write_file_atomic(work_dir, INIT_CONFIG, &json, 0o644)
            .map_err(|e| fail(process::io_err("write", &work_dir.join(INIT_CONFIG), e)))?;

        let mut cmd = tokio::process::Command::new(&self.cfg.bwrap);
        cmd.args(self.generic_args(work_dir, &stage, cfg.runtime, runtime))
            .env_clear()
            .envs(runtime.env(Path::new(DENO_DIR_IN), Some(Path::new("/tmp"))))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if cfg.runtime == RuntimeKind::Deno {
            cmd.env(
                "DENO_PERMISSION_BROKER_PATH",
                Path::new(WORK).join(BROKER_SOCKET),
            );
        }
        if let Some(t) = &token {
            let url = atrund_egress::proxy_url(
                t,
                std::net::SocketAddr::from(([127, 0, 0, 1], PROXY_PORT)),
            );
            cmd.env("HTTP_PROXY", &url).env("HTTPS_PROXY", &url);
        }
        let parked = process::park(Park {
            id,
            work_dir: work_dir.to_path_buf(),
            cmd,
            program: &self.cfg.bwrap,
            socket,
            cgroups: self.cgroups.as_ref(),
            limits: CgroupLimits {
                memory_mib: cfg.memory_mib,
                pids: cfg.limits.pids,
                cpu_quota_percent: cfg.limits.cpu_quota_percent,
            },
            nofile: self
                .nofile_hard
                .map_or(cfg.limits.open_files, |h| cfg.limits.open_files.min(h)),
            fsize: cfg.limits.max_file_bytes,
            inherit: Vec::new(),
            run_as: self.run_as,
            start_timeout: cfg.start_timeout,
            keep: Vec::new(),
        })
        .await?;
        Ok(GenericSandbox {
            parked,
            stage,
            broker,
            token,
            exec: self.clone(),
            cfg: cfg.clone(),
        })
    }

    /// The bwrap command line of a generic sandbox: the base with the runtime's root, `/tmp`,
    /// and the stage's bundle and data dirs read-only (binds made in them later show through).
    fn generic_args(
        &self,
        work_dir: &Path,
        stage: &Stage,
        kind: RuntimeKind,
        runtime: &dyn Runtime,
    ) -> Vec<OsString> {
        let mut a = self.base_args(kind, runtime);
        let tmp_bytes = self.cfg.tmp_mib.saturating_mul(1024 * 1024).to_string();
        let mut push = |xs: &[&std::ffi::OsStr]| a.extend(xs.iter().map(|x| x.to_os_string()));
        push(&[
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            tmp_bytes.as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        push(&[
            "--ro-bind".as_ref(),
            stage.bundle.as_os_str(),
            BUNDLE.as_ref(),
        ]);
        push(&["--bind".as_ref(), work_dir.as_os_str(), WORK.as_ref()]);
        push(&["--ro-bind".as_ref(), stage.data.as_os_str(), DATA.as_ref()]);
        push(&["--chdir".as_ref(), DATA.as_ref(), "--".as_ref()]);
        push(&[INIT_IN_ROOT.as_ref()]);
        for x in &self.cfg.init.1 {
            push(&[x.as_ref()]);
        }
        let cfg = Path::new(WORK).join(INIT_CONFIG);
        push(&[cfg.as_os_str()]);
        a
    }
}

/// The stage dir of a sandbox: beside its work dir, never inside it (removing the work dir
/// must not descend into a bundle's data).
fn stage_path(work_dir: &Path) -> PathBuf {
    let mut s = work_dir.as_os_str().to_os_string();
    s.push(".stage");
    PathBuf::from(s)
}

/// The work dir (owned by the sandbox's uid: the runtime's shim files, `deno/`) and the stage.
async fn prepare(
    work_dir: &Path,
    stage_dir: &Path,
    owner: Option<RunAs>,
    kind: RuntimeKind,
) -> Result<Stage, SandboxError> {
    let (work_dir, stage_dir) = (work_dir.to_path_buf(), stage_dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let deno = work_dir.join("deno");
        for dir in [&work_dir, &deno] {
            hostfs::private_dir_all(dir).map_err(|e| process::io_err("create", dir, e))?;
            if let Some(id) = owner {
                if let Some(parent) = dir.parent() {
                    hostfs::passable_dir(parent, id.gid)
                        .map_err(|e| process::io_err("open to the sandbox's group", parent, e))?;
                }
                hostfs::owned_dir(dir, id)
                    .map_err(|e| process::io_err("give the sandbox", dir, e))?;
            }
        }
        let python = crate::runtime::python::SHIM;
        let shims = match kind {
            RuntimeKind::Deno => vec![
                (SHIM.file, SHIM.source),
                (GENERIC_SHIM, GENERIC_SHIM_SOURCE),
            ],
            _ => vec![(python.file, python.source)],
        };
        for (name, src) in shims {
            hostfs::write_file_atomic(&work_dir, name, src.as_bytes(), 0o644)
                .map_err(|e| process::io_err("write the shim to", &work_dir.join(name), e))?;
        }
        Stage::make(&stage_dir)
    })
    .await
    .unwrap_or_else(|e| {
        Err(SandboxError::StartFailed(format!(
            "preparing the generic sandbox failed: {e}"
        )))
    })
}

impl GenericSandbox {
    pub fn id(&self) -> &str {
        self.parked.id()
    }

    /// Whether its process still runs.
    pub fn is_alive(&self) -> bool {
        self.parked.is_alive()
    }

    /// Resident memory now (its cgroup, else its first process).
    pub fn resident_bytes(&self) -> Option<u64> {
        self.parked.resident_bytes()
    }

    /// Why a sandbox started with `cfg` cannot take `spec` exactly, if it cannot: another
    /// runtime, `run` (Deno asks the broker without naming the command), or limits above the
    /// caps it was started with. Such a bundle starts the normal way. The reason is one of
    /// [`UNFIT_REASONS`].
    pub fn unfit(spec: &InstanceSpec, cfg: &GenericConfig) -> Option<&'static str> {
        let [run, limits, rlimits, runtime] = UNFIT_REASONS;
        // A sandbox runs one runtime; a bundle of another starts the normal way.
        if spec.runtime != cfg.runtime {
            return Some(runtime);
        }
        // Deno's broker is not told which command a `run` check is for. (Python has no
        // permission of its own: its `run` is the container's, the same in both starts.)
        if spec.runtime == RuntimeKind::Deno && !spec.permissions.run.is_empty() {
            return Some(run);
        }
        if spec.memory_mib > cfg.memory_mib
            || spec.limits.pids > cfg.limits.pids
            || spec.limits.cpu_quota_percent > cfg.limits.cpu_quota_percent
        {
            return Some(limits);
        }
        if spec.limits.open_files != cfg.limits.open_files
            || spec.limits.max_file_bytes != cfg.limits.max_file_bytes
        {
            return Some(rlimits);
        }
        None
    }

    /// Gives this sandbox `spec`'s bundle, data paths, secrets, egress rules, limits and
    /// permissions, and returns it as that bundle's instance once the bundle is imported. The
    /// sandbox is consumed: it never serves another bundle.
    pub async fn specialise(self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        if let Some(why) = Self::unfit(&spec, &self.cfg) {
            return Err(SandboxError::StartFailed(format!(
                "a generic sandbox cannot give this bundle its {why} exactly; it starts the normal way"
            )));
        }
        let GenericSandbox {
            parked,
            stage,
            broker,
            token,
            exec,
            cfg: _,
        } = self;
        let t0 = std::time::Instant::now();
        let bundle_in = bundle_path_inside(&spec);
        let inside = InstanceSpec {
            bundle_file: bundle_in.clone(),
            work_dir: WORK.into(),
            data_dir: DATA.into(),
            deno_dir: DENO_DIR_IN.into(),
            ..spec.clone()
        };
        let socket_in = Path::new(WORK).join(process::SOCKET_FILE);
        let runtime = exec.cfg.runtimes.get(spec.runtime)?;
        let shim_in = Path::new(WORK).join(runtime.shim().file);
        // The normal start's flags: for Deno, the broker's rules; for every runtime, the checks
        // of the secret names and the net list that come with them.
        let flags = runtime.args(&Layout {
            spec: &inside,
            shim: &shim_in,
            socket: &socket_in,
            scratch: Some(Path::new("/tmp")),
        })?;
        let rules = match &broker {
            Some(_) => Some(BrokerRules::from_deno_args(&flags)?),
            None => None,
        };

        let run_as = exec.run_as;
        let staged = {
            let spec = spec.clone();
            let stage = stage.paths();
            tokio::task::spawn_blocking(move || -> Result<Stage, SandboxError> {
                let data = hostfs::open_data_paths(&spec, run_as)?;
                if let Some(id) = run_as {
                    let need = hostfs::Needed::new;
                    hostfs::check_reachable(
                        &spec.id,
                        id,
                        &[need(
                            spec.bundle_file.as_path(),
                            0o4,
                            "read the bundle",
                            "keep the code where that user can read it",
                        )],
                    )?;
                }
                stage.put_bundle(&spec.bundle_file)?;
                for d in &data {
                    stage.attach(d)?;
                }
                Ok(stage)
            })
            .await
            .unwrap_or_else(|e| {
                Err(SandboxError::StartFailed(format!(
                    "staging the bundle failed: {e}"
                )))
            })
        };
        // `stage.paths()` is a view; the owning `stage` tears the mounts down when dropped.
        staged?;
        let staged_us = t0.elapsed().as_micros() as u64;

        let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        if let (Some(proxy), Some(token)) = (&exec.egress, token) {
            let reg = crate::egress::register_token(proxy, &spec, true, token)?;
            let fwd = crate::egress::forwarder(
                &parked_work_dir(&stage).join(EGRESS_SOCKET),
                proxy.local_addr(),
                reg.announcer(),
                run_as,
            )?;
            keep.push(Box::new(reg));
            keep.push(Box::new(fwd));
        }
        if let (Some(broker), Some(rules)) = (&broker, rules) {
            broker.rules.set(rules);
        }
        let env: serde_json::Map<String, serde_json::Value> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut line = serde_json::to_vec(&serde_json::json!({
            "bundle": bundle_in.to_string_lossy(),
            "env": env,
        }))
        .map_err(|e| SandboxError::StartFailed(format!("specialisation line: {e}")))?;
        line.push(b'\n');
        keep.push(Box::new(broker));
        keep.push(Box::new(stage));
        tracing::debug!(
            sandbox = parked.id(),
            instance = %spec.id,
            staged_us,
            handed_us = t0.elapsed().as_micros() as u64,
            "generic sandbox staged: bundle, data binds, egress, broker rules (Deno)"
        );
        parked.specialise(&spec, line, keep).await
    }
}

/// The work dir of the sandbox whose stage this is.
fn parked_work_dir(stage: &Stage) -> PathBuf {
    let s = stage.root.as_os_str().to_string_lossy();
    PathBuf::from(s.strip_suffix(".stage").unwrap_or(&s))
}

/// A sandbox's stage: `root` a private self-bind (scratch mounts made in it go nowhere),
/// `data` a shared self-bind inside it (what is mounted there shows in the sandbox's `/data`),
/// `bundle` a plain dir (the sandbox's `/bundle`). Dropping it detaches everything and removes
/// the dirs.
#[derive(Debug)]
struct Stage {
    root: PathBuf,
    data: PathBuf,
    bundle: PathBuf,
    /// Whether this value owns the mounts (a [`Stage::paths`] view does not).
    owner: bool,
}

fn mount_err(what: &str, p: &Path, e: nix::Error) -> SandboxError {
    tracing::warn!(path = %p.display(), error = %e, "generic sandbox: could not {what}");
    SandboxError::StartFailed(format!(
        "could not {what} for a generic sandbox ({e}); the runner's log names the path"
    ))
}

impl Stage {
    fn make(root: &Path) -> Result<Self, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        let mkdir = |p: &Path| {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(p)
                .map_err(|e| process::io_err("create", p, e))
        };
        mkdir(root)?;
        let stage = Stage {
            root: root.to_path_buf(),
            data: root.join("data"),
            bundle: root.join("bundle"),
            owner: true,
        };
        let none = None::<&str>;
        mount(Some(root), root, none, MsFlags::MS_BIND, none)
            .map_err(|e| mount_err("bind the stage", root, e))?;
        mount(none, root, none, MsFlags::MS_PRIVATE, none)
            .map_err(|e| mount_err("make the stage private", root, e))?;
        for p in [&stage.data, &stage.bundle, &stage.root.join("scratch")] {
            mkdir(p)?;
        }
        std::fs::File::create(stage.root.join("scratch-file"))
            .map_err(|e| process::io_err("create", &stage.root.join("scratch-file"), e))?;
        mount(Some(&stage.data), &stage.data, none, MsFlags::MS_BIND, none)
            .map_err(|e| mount_err("bind the data stage", &stage.data, e))?;
        mount(none, &stage.data, none, MsFlags::MS_SHARED, none)
            .map_err(|e| mount_err("share the data stage", &stage.data, e))?;
        Ok(stage)
    }

    /// A copy of the paths that does not own the mounts.
    fn paths(&self) -> Stage {
        Stage {
            root: self.root.clone(),
            data: self.data.clone(),
            bundle: self.bundle.clone(),
            owner: false,
        }
    }

    /// Copies the verified bundle into `bundle/` (0644; the stage is its own mount, so a hard
    /// link across it is refused).
    fn put_bundle(&self, file: &Path) -> Result<(), SandboxError> {
        let name = file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "main.js".into());
        let to = self.bundle.join(name);
        std::fs::copy(file, &to).map_err(|e| process::io_err("copy the bundle to", &to, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| process::io_err("open the bundle to the sandbox", &to, e))
    }

    /// Binds one data path (by its descriptor: the inode that was checked) under `data/`:
    /// made in the private scratch point with its final flags, then moved into the shared
    /// data stage, so its copy in the sandbox is born read-only (or writable), nosuid, nodev.
    fn attach(&self, d: &DataPath) -> Result<(), SandboxError> {
        let target = self.data.join(&d.rel);
        if let Some(parent) = target.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| process::io_err("create", parent, e))?;
        }
        let scratch = if d.is_dir {
            std::fs::create_dir(&target)
                .or_else(|e| {
                    (e.kind() == std::io::ErrorKind::AlreadyExists)
                        .then_some(())
                        .ok_or(e)
                })
                .map_err(|e| process::io_err("create", &target, e))?;
            self.root.join("scratch")
        } else {
            std::fs::File::create(&target).map_err(|e| process::io_err("create", &target, e))?;
            self.root.join("scratch-file")
        };
        let none = None::<&str>;
        let src = hostfs::socket_fd_path(&d.fd);
        mount(Some(&src), &scratch, none, MsFlags::MS_BIND, none)
            .map_err(|e| mount_err("bind a data path", &target, e))?;
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if !d.write {
            flags |= MsFlags::MS_RDONLY;
        }
        let moved = mount(none, &scratch, none, flags, none)
            .map_err(|e| mount_err("set a data path's flags", &target, e))
            .and_then(|()| {
                mount(Some(&scratch), &target, none, MsFlags::MS_MOVE, none)
                    .map_err(|e| mount_err("move a data path into place", &target, e))
            });
        if moved.is_err() {
            let _ = umount2(&scratch, MntFlags::MNT_DETACH);
        }
        moved
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        // Detaching the root takes every mount below it; only then is removing safe (it must
        // not descend into a bundle's data).
        match umount2(&self.root, MntFlags::MNT_DETACH) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_dir_all(&self.root) {
                    tracing::warn!(dir = %self.root.display(), error = %e, "could not remove a generic sandbox's stage");
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.root.display(), error = %e, "could not unmount a generic sandbox's stage; leaving it")
            }
        }
    }
}
