//! The `container` backend: each instance runs under bubblewrap in new user, mount, pid, net,
//! ipc, uts and cgroup namespaces, with a minimal read-only root (`rootfs`), uid/gid 65534, no
//! capabilities, and our own PID 1 (`init`) that adds no_new_privs, Landlock and seccomp before it
//! starts Deno. When the daemon is root, bwrap itself is started as the unprivileged `RunAs`
//! uid/gid (switched to before exec, after the cgroup join, as for `none`), so its user namespace
//! maps 65534 inside to that uid on the host, never to 0: the bundle passes no owner check on a
//! root file bound in. The instance's dirs are given to that uid as in `none` (`hostfs`), and the
//! runner's dirs above them are passable for its group. The network namespace has only `lo`: no
//! veth, no route. Egress goes to `127.0.0.1:3128` inside, where init forwards to a Unix socket
//! in the work dir, where this module forwards to at-rund's egress proxy with a per-instance
//! token (`atrund-egress`).
//!
//! Mounts inside: `/` the root (ro), `/bin/deno` and `/sbin/init` (ro binds of the host
//! binaries), `/bundle/<file>` (ro), `/work` (the instance work dir: shim, socket, init config;
//! rw), `/deno` (the bundle's DENO_DIR; rw), `/data/<path>` for each manifest `read` (ro) and
//! `write` (rw) path and nothing else of the data dir, `/tmp` (tmpfs with a size cap), `/proc`
//! (the instance's own pid namespace), `/dev` (null, zero, random, urandom, tty, full).
//!
//! Owns: the bwrap command line, the init config, the data-dir binds, the instance's egress
//! registration and the host side of its proxy socket, the host uid/gid bwrap runs as, and the
//! start-up probe (run as that uid too, so a host without unprivileged user namespaces fails it).
//! Must not: spawn, reap, proxy calls or enforce limits itself (the machinery shared with `none`
//! does: the cgroup is joined before bwrap is exec'd, or by a `spare` launcher ahead of the
//! start that then execs bwrap, so everything inside is accounted), or choose permissions.
//!
//! Clean-up: mounts, the network namespace and every process inside end with the namespace when
//! PID 1 exits (or bwrap dies: `--die-with-parent`; the daemon: `PR_SET_PDEATHSIG`); the work dir
//! and cgroup go with the instance as in `none`, and are swept at start-up after a crash.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use atrund_egress::EgressProxy;

use crate::cgroup::CgroupManager;
use crate::hostfs::{self, Needed, DATA_DIR_FIX};
use crate::init_config::{InitConfig, ProxyForward};
use crate::process::{self, Join, Launch};
use crate::rootfs::{runtime_in_root, Rootfs, INIT_IN_ROOT};
use crate::runtime::{Layout, Runtime, Runtimes};
use crate::spare::{LauncherProgram, SpareLaunchers};
use crate::{sys, Enforcement, Executor, Instance, InstanceSpec, RunAs, RuntimeKind, SandboxError};

pub(crate) mod generic;

/// The proxy forwarder's port on the sandbox's loopback.
pub const PROXY_PORT: u16 = 3128;
/// The host side of the proxy socket, in the work dir.
const EGRESS_SOCKET: &str = "egress.sock";
const INIT_CONFIG: &str = "init.json";
/// The unprivileged user inside (nobody).
const SANDBOX_ID: &str = "65534";
/// Mount points inside.
const WORK: &str = "/work";
const DENO_DIR: &str = "/deno";
const DATA: &str = "/data";
const BUNDLE: &str = "/bundle";

/// Settings of the container backend.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The bubblewrap binary ([`find_bwrap`]).
    pub bwrap: PathBuf,
    /// The runtimes offered: each one's binary is bound into the root, its libraries copied.
    pub runtimes: Runtimes,
    /// The program that runs [`crate::init::main`] and the arguments before the config path:
    /// `(at-rund, ["sandbox-init"])` in the daemon.
    pub init: (PathBuf, Vec<String>),
    /// Where the root file systems are assembled (`<data_dir>/rootfs`).
    pub rootfs_dir: PathBuf,
    /// Size of the instance's `/tmp` (tmpfs, also charged to its memory cgroup).
    pub tmp_mib: u64,
}

/// The `container` executor.
#[derive(Clone)]
pub struct ContainerExecutor {
    cfg: ContainerConfig,
    rootfs: Rootfs,
    cgroups: Option<Arc<CgroupManager>>,
    egress: Option<Arc<EgressProxy>>,
    nofile_hard: Option<u64>,
    /// The host uid/gid bwrap (and so everything inside) runs as: `Some` only when the daemon is
    /// root (nobody else can switch; a daemon that is not root runs bwrap as itself).
    run_as: Option<RunAs>,
    /// Whether the daemon's effective uid is 0 (only then can it switch: `with_run_as`).
    euid_root: bool,
    /// Launchers parked in their cgroups ahead of starts (`spare`), made on first use (the
    /// builders have set the uid and cgroups by then); shared by clones.
    spares: Arc<std::sync::OnceLock<Option<SpareLaunchers>>>,
}

impl std::fmt::Debug for ContainerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerExecutor")
            .field("cfg", &self.cfg)
            .field("rootfs", &self.rootfs.path())
            .field("egress", &self.egress.as_ref().map(|e| e.local_addr()))
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

/// `bwrap` on PATH (or the configured path), if executable.
pub fn find_bwrap(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(p) => crate::executables::is_executable(p).then(|| p.to_path_buf()),
        None => crate::executables::find_executable("bwrap", &[]),
    }
}

impl ContainerExecutor {
    /// Assembles (or reuses) the root file system. Blocking: runs `ldd` and copies libraries.
    /// Instances of a root daemon run as [`RunAs::NOBODY`] on the host until
    /// [`Self::with_run_as`] says otherwise.
    pub fn new(cfg: ContainerConfig) -> Result<Self, SandboxError> {
        let (dirs, libs) = cfg.runtimes.root_inputs();
        let mut programs = cfg.runtimes.binaries();
        programs.push(cfg.init.0.clone());
        programs.extend(libs);
        let programs: Vec<&Path> = programs.iter().map(PathBuf::as_path).collect();
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let rootfs = Rootfs::assemble(&cfg.rootfs_dir, &programs, &dirs)?;
        Ok(Self {
            cfg,
            rootfs,
            cgroups: None,
            egress: None,
            nofile_hard: sys::nofile_hard_limit(),
            run_as: None,
            euid_root: sys::effective_root(),
            spares: Arc::default(),
        }
        .with_run_as(RunAs::NOBODY))
    }

    /// The host uid and gid bwrap runs as when the daemon is root (`sandbox.run_as_uid`,
    /// `sandbox.run_as_gid`; never 0, the config refuses it): the sandbox's 65534 is that uid on
    /// the host. A daemon that is not root cannot switch: bwrap runs as its own user.
    pub fn with_run_as(mut self, id: RunAs) -> Self {
        self.run_as = self.euid_root.then_some(id);
        self
    }

    /// Puts every instance into its own cgroup under `manager`'s parents.
    pub fn with_cgroups(mut self, manager: Arc<CgroupManager>) -> Self {
        self.cgroups = Some(manager);
        self
    }

    /// Gives instances egress through `proxy` (their manifest's `net` rules); without it they
    /// have no network at all.
    pub fn with_egress(mut self, proxy: Arc<EgressProxy>) -> Self {
        self.egress = Some(proxy);
        self
    }

    pub fn rootfs(&self) -> &Rootfs {
        &self.rootfs
    }

    /// The spare launchers, started on first call (from the probe or the first start): only
    /// with cgroups on v1 and inside a tokio runtime. The builders must be done by then.
    fn spares(&self) -> Option<&SpareLaunchers> {
        self.spares
            .get_or_init(|| {
                let cgroups = self.cgroups.clone()?;
                SpareLaunchers::start(
                    cgroups,
                    LauncherProgram {
                        program: self.cfg.init.0.clone(),
                        args: self.cfg.init.1.clone(),
                        run_as: self.run_as,
                    },
                )
            })
            .as_ref()
    }

    /// Spare launchers parked now, and instances started from one so far (for tests and the
    /// benchmark; `(0, 0)` where spares are not used).
    pub fn spare_counts(&self) -> (usize, u64) {
        self.spares
            .get()
            .and_then(|s| s.as_ref())
            .map_or((0, 0), |s| (s.ready(), s.taken()))
    }

    /// Runs each offered runtime's `--version` inside a sandbox built like an instance's, as the
    /// uid instances run as: proves that bwrap can create the namespaces here (unprivileged user
    /// namespaces, when the daemon is root and switches) and that the root has what the
    /// runtimes need.
    pub async fn probe(&self) -> Result<(), String> {
        if let Some(id) = self.run_as {
            self.check_binaries(id).map_err(|e| e.to_string())?;
        }
        for kind in self.cfg.runtimes.offered() {
            self.probe_runtime(kind).await?;
        }
        // Sandboxes work here: park launchers for the first starts.
        let _ = self.spares();
        Ok(())
    }

    async fn probe_runtime(&self, kind: RuntimeKind) -> Result<(), String> {
        let runtime = self.cfg.runtimes.get(kind).map_err(|e| e.to_string())?;
        let inside = runtime_in_root(kind);
        let mut args = self.base_args(kind, runtime);
        args.extend(["--", inside].iter().map(OsString::from));
        // Python's version says nothing of its standard library: import what the shim needs.
        let probe: &[&str] = match kind {
            RuntimeKind::Python => &[
                "-I",
                "-S",
                "-c",
                "import asyncio, sys; print('Python', sys.version.split()[0])",
            ],
            _ => &["--version"],
        };
        args.extend(probe.iter().map(OsString::from));
        let mut cmd = tokio::process::Command::new(&self.cfg.bwrap);
        cmd.args(&args)
            .env_clear()
            .env("DENO_NO_UPDATE_CHECK", "1")
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        sys::install(
            &mut cmd,
            sys::ChildSetup {
                run_as: self.run_as,
                ..Default::default()
            },
        );
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), cmd.output())
            .await
            .map_err(|_| "bwrap did not finish within 10 s".to_string())?
            .map_err(|e| format!("cannot run '{}': {e}", self.cfg.bwrap.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let printed_version = match kind {
            RuntimeKind::Deno => stdout.starts_with("deno "),
            RuntimeKind::Node => stdout.starts_with('v'),
            RuntimeKind::Python => stdout.starts_with("Python "),
        };
        if out.status.success() && printed_version {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = match self.run_as {
            Some(id) => format!(
                "; bwrap runs as uid {} gid {} (sandbox.run_as_uid, sandbox.run_as_gid), not as \
                 root, so the kernel must allow unprivileged user namespaces: \
                 user.max_user_namespaces above 0, kernel.unprivileged_userns_clone = 1 where it \
                 exists, kernel.apparmor_restrict_unprivileged_userns = 0 where AppArmor \
                 restricts them; or use isolation = \"none\"",
                id.uid, id.gid
            ),
            None => String::new(),
        };
        Err(format!(
            "bwrap running {kind} --version failed ({}): {}{hint}",
            out.status,
            stderr.trim()
        ))
    }

    /// The programs and the root bwrap binds or runs, reachable by `id` (bwrap realpaths every
    /// bind source by name, also `--bind-fd`'s, so each dir on the way must be searchable).
    fn check_binaries(&self, id: RunAs) -> Result<(), SandboxError> {
        let install = "install it where that user can run it (e.g. /usr/local/bin or /usr/bin)";
        let need = Needed::new;
        let runtimes = self.cfg.runtimes.binaries();
        let mut needed: Vec<Needed> = runtimes
            .iter()
            .map(|b| need(b, 0o1, "execute the runtime", install))
            .collect();
        needed.extend([
            need(&self.cfg.bwrap, 0o1, "execute bwrap", install),
            need(&self.cfg.init.0, 0o1, "execute at-rund as PID 1", install),
            need(
                self.rootfs.path(),
                0o1,
                "reach the container root",
                DATA_DIR_FIX,
            ),
        ]);
        hostfs::check_reachable("probe", id, &needed)
    }

    /// What an instance of `spec` needs of the host as `id`: the programs, the bundle file, its
    /// dirs and each data path bwrap binds.
    fn check_reachable(
        &self,
        spec: &InstanceSpec,
        data: &DataBinds,
        id: RunAs,
    ) -> Result<(), SandboxError> {
        self.check_binaries(id)?;
        let need = Needed::new;
        let paths: Vec<PathBuf> = data
            .binds
            .iter()
            .map(|(d, _)| spec.data_dir.join(&d.rel))
            .collect();
        let mut needed = Vec::from(hostfs::instance_needs(spec));
        needed.push(need(
            &spec.deno_dir,
            0o1,
            "reach its DENO_DIR",
            DATA_DIR_FIX,
        ));
        // Reaching the path is enough for the bind (bits 0); what it may do there is the file's
        // mode, inside as outside.
        needed.extend(paths.iter().map(|p| {
            need(
                p,
                0,
                "reach a declared data path",
                "let that user pass through the dirs on the way (the path's own mode decides the rest)",
            )
        }));
        hostfs::check_reachable(&spec.id, id, &needed)
    }

    /// Namespaces, identity and the root: the part of the command line every sandbox shares.
    /// The runtime's binary is bound read-only at its place in the root, its own trees at their
    /// host paths.
    fn base_args(&self, kind: RuntimeKind, runtime: &dyn Runtime) -> Vec<OsString> {
        let mut a: Vec<OsString> = [
            "--unshare-all",
            // --unshare-all only tries the user namespace; --disable-userns needs it for sure.
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            // Our init is PID 1 (it reaps and relays signals), not bwrap's own reaper.
            "--as-pid-1",
            "--cap-drop",
            "ALL",
            "--uid",
            SANDBOX_ID,
            "--gid",
            SANDBOX_ID,
            "--hostname",
            "sandbox",
            "--ro-bind",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        a.push(self.rootfs.path().into());
        a.push("/".into());
        a.push("--ro-bind".into());
        a.push(runtime.binary().into());
        a.push(runtime_in_root(kind).into());
        // The runtime's own read-only trees (Python's standard library), at the same path.
        for dir in runtime.root_dirs() {
            a.extend(["--ro-bind".into(), dir.clone().into(), dir.into()]);
        }
        a.push("--ro-bind".into());
        a.push(self.cfg.init.0.clone().into());
        a.push(INIT_IN_ROOT.into());
        for x in ["--proc", "/proc", "--dev", "/dev"] {
            a.push(x.into());
        }
        a
    }

    /// The full bwrap command line of one instance.
    fn instance_args(
        &self,
        spec: &InstanceSpec,
        runtime: &dyn Runtime,
        data: &DataBinds,
    ) -> Vec<OsString> {
        let mut a = self.base_args(spec.runtime, runtime);
        let mut push = |xs: &[&std::ffi::OsStr]| a.extend(xs.iter().map(|x| x.to_os_string()));
        let tmp_bytes = self.cfg.tmp_mib.saturating_mul(1024 * 1024).to_string();
        push(&[
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            tmp_bytes.as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        let bundle_in = bundle_path_inside(spec);
        push(&["--tmpfs".as_ref(), BUNDLE.as_ref()]);
        push(&[
            "--ro-bind".as_ref(),
            spec.bundle_file.as_os_str(),
            bundle_in.as_os_str(),
        ]);
        push(&["--remount-ro".as_ref(), BUNDLE.as_ref()]);
        push(&["--bind".as_ref(), spec.work_dir.as_os_str(), WORK.as_ref()]);
        push(&[
            "--bind".as_ref(),
            spec.deno_dir.as_os_str(),
            DENO_DIR.as_ref(),
        ]);
        push(&["--tmpfs".as_ref(), DATA.as_ref()]);
        for (d, inside) in &data.binds {
            let flag = if d.write { "--bind-fd" } else { "--ro-bind-fd" };
            let fd = d.fd.as_raw_fd().to_string();
            push(&[flag.as_ref(), fd.as_ref(), inside.as_os_str()]);
        }
        push(&["--remount-ro".as_ref(), DATA.as_ref()]);
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

/// `/bundle/<file name>`: the extension tells Deno the module type.
fn bundle_path_inside(spec: &InstanceSpec) -> PathBuf {
    let name = spec
        .bundle_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "main.js".into());
    Path::new(BUNDLE).join(name)
}

/// The data-dir paths an instance gets, opened beneath the data dir without following a
/// symlink (`hostfs`), each bound by its descriptor (`--bind-fd`): bwrap mounts the inode it
/// was given and checks that it did, so a name swapped after the check binds nothing of the host.
#[derive(Debug, Default)]
struct DataBinds {
    binds: Vec<(crate::hostfs::DataPath, PathBuf)>,
}

fn data_binds(spec: &InstanceSpec, owner: Option<RunAs>) -> Result<DataBinds, SandboxError> {
    let binds = crate::hostfs::open_data_paths(spec, owner)?
        .into_iter()
        .map(|d| {
            let inside = Path::new(DATA).join(&d.rel);
            (d, inside)
        })
        .collect();
    Ok(DataBinds { binds })
}

#[async_trait::async_trait]
impl Executor for ContainerExecutor {
    fn name(&self) -> &'static str {
        "container"
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let mut e = process::enforcement_for(self.cgroups.as_ref(), self.nofile_hard);
        e.extend(self.cfg.runtimes.enforcement());
        e.push(match self.run_as {
            Some(id) => Enforcement {
                limit: "unprivileged",
                enforced: true,
                how: format!(
                    "bwrap and everything inside run as host uid {} gid {} (uid/gid 65534 in \
                     the sandbox's user namespace), no supplementary groups, no capabilities; \
                     set before bwrap is exec'd",
                    id.uid, id.gid
                ),
            },
            None => Enforcement {
                limit: "unprivileged",
                enforced: false,
                how: "at-rund is not root, so it cannot switch uid: the sandbox's uid is \
                      at-rund's own on the host (its namespaces hide at-rund's files)"
                    .into(),
            },
        });
        e
    }

    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        let started_at = Instant::now();
        let runtime = self.cfg.runtimes.get(spec.runtime)?;
        let (socket, shim) = process::work_paths(&spec, runtime.shim())?;
        process::prepare_work_dir(&spec, &socket, &shim, runtime.shim().source, self.run_as)
            .await?;
        let fail = |e: SandboxError| {
            let _ = std::fs::remove_dir_all(&spec.work_dir);
            e
        };
        let data = data_binds(&spec, self.run_as).map_err(fail)?;
        if let Some(id) = self.run_as {
            self.check_reachable(&spec, &data, id).map_err(fail)?;
        }

        // The runtime's flags, with the paths as seen inside.
        let inside = InstanceSpec {
            bundle_file: bundle_path_inside(&spec),
            work_dir: WORK.into(),
            data_dir: DATA.into(),
            deno_dir: DENO_DIR.into(),
            ..spec.clone()
        };
        let socket_in = Path::new(WORK).join(socket.file_name().unwrap_or_default());
        let shim_in = Path::new(WORK).join(shim.file_name().unwrap_or_default());
        let runtime_args = runtime
            .args(&Layout {
                spec: &inside,
                shim: &shim_in,
                socket: &socket_in,
                scratch: Some(Path::new("/tmp")),
            })
            .map_err(fail)?;
        let mut argv = vec![runtime_in_root(spec.runtime).to_string()];
        argv.extend(
            runtime_args
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );

        let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        let mut proxy_env = None;
        if let Some(proxy) = &self.egress {
            let f = crate::egress::forwarded(
                proxy,
                &spec,
                &spec.work_dir.join(EGRESS_SOCKET),
                PROXY_PORT,
                self.run_as,
            )
            .map_err(fail)?;
            keep = f.keep;
            proxy_env = Some(f.proxy_url);
        }

        let mut read_write: Vec<PathBuf> = vec![WORK.into(), DENO_DIR.into(), "/tmp".into()];
        // Execute only the root's program and library dirs (its loader is there): not the
        // bundle, the data, /work, /deno or /tmp.
        let execute: Vec<PathBuf> = ["/bin", "/sbin", "/lib", "/lib64", "/usr"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut read_only: Vec<PathBuf> = ["/etc", BUNDLE, DATA, "/proc", "/dev"]
            .iter()
            .map(PathBuf::from)
            .collect();
        read_write.push("/dev/null".into());
        for (d, inside) in &data.binds {
            if d.write {
                read_write.push(inside.clone());
            } else {
                read_only.push(inside.clone());
            }
        }
        let init = InitConfig {
            argv,
            read_only,
            execute,
            read_write,
            proxy: proxy_env.as_ref().map(|_| ProxyForward {
                port: PROXY_PORT,
                socket: Path::new(WORK).join(EGRESS_SOCKET),
            }),
        };
        let json = serde_json::to_vec(&init)
            .map_err(|e| fail(SandboxError::StartFailed(format!("init config: {e}"))))?;
        // Into a dir the sandbox's uid owns: never through a name planted there. Public (0644):
        // init reads it as that uid; it holds no secret value.
        hostfs::write_file_atomic(&spec.work_dir, INIT_CONFIG, &json, 0o644).map_err(|e| {
            fail(process::io_err(
                "write",
                &spec.work_dir.join(INIT_CONFIG),
                e,
            ))
        })?;

        let mut cmd = tokio::process::Command::new(&self.cfg.bwrap);
        // The environment passes through bwrap and init to the runtime: secret values stay out
        // of any command line (argv is world-readable in /proc; environ is not).
        cmd.args(self.instance_args(&spec, runtime, &data))
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .envs(runtime.env(Path::new(DENO_DIR), Some(Path::new("/tmp"))))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(url) = &proxy_env {
            cmd.env("HTTP_PROXY", url).env("HTTPS_PROXY", url);
        }
        process::launch(Launch {
            spec: &spec,
            cmd,
            program: &self.cfg.bwrap,
            socket,
            cgroups: self.cgroups.as_ref(),
            nofile: self
                .nofile_hard
                .map_or(spec.limits.open_files, |h| spec.limits.open_files.min(h)),
            started_at,
            keep,
            // bwrap binds these descriptors (`--bind-fd`); the child keeps them across exec.
            inherit: data.binds.into_iter().map(|(d, _)| d.fd).collect(),
            // bwrap starts as this host uid (after the cgroup join, which needs root); its user
            // namespace maps the sandbox's 65534 to it (`--uid`/`--gid`, `--cap-drop ALL`).
            run_as: self.run_as,
            confine: None,
            gate: None,
            // bwrap and init fork before Deno runs: a later move of bwrap's pid would miss them,
            // and bwrap roots the sandbox's cgroup namespace where it is when it forks.
            join: Join::BeforeExec,
            // Without data binds: a launcher parked ahead cannot receive descriptors.
            spares: self.spares(),
            vm: None,
        })
        .await
    }
}
