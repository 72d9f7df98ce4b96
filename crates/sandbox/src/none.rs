//! The `none` backend: one runtime process per instance (`runtime`: Deno, Node), confined by its
//! runtime's permission flags and, beneath them, by what works without namespaces
//! (`host_confine`: no_new_privs, Landlock, seccomp, applied by the child before exec;
//! docs/security.md says what that leaves open).
//! Network: as in `container`, fetch goes through at-rund's egress proxy (`HTTP_PROXY` and
//! `HTTPS_PROXY` with a per-instance token), and Landlock lets the process connect to the
//! proxy's TCP port only; without a proxy it connects nowhere.
//!
//! Owns: the command of a `none` instance (the runtime's flags from `runtime`, a cleared
//! environment, the data dir as working directory, the proxy variables, Landlock and seccomp prepared before
//! fork), its egress registration, what this backend reports as enforced, and the unprivileged
//! uid/gid its instances run as when the daemon is root (`RunAs`: set by the child before exec;
//! their dirs given to that uid by `process`). Everything after the command is the shared process
//! layer (`process`). Must not: choose permissions or limits (they arrive checked in
//! `InstanceSpec`), or log env values or tokens.

use std::sync::Arc;
use std::time::Instant;

use atrund_egress::EgressProxy;

use crate::cgroup::CgroupManager;
use crate::host_confine::HostConfinement;
use crate::process::{self, enforcement_for, launch, prepare_work_dir, work_paths, Join, Launch};
use crate::runtime::{Layout, Runtime, Runtimes};
use crate::{hostfs, sys, Enforcement, Executor, Instance, InstanceSpec, RunAs, SandboxError};

/// The `none` executor.
#[derive(Debug, Clone)]
pub struct NoneExecutor {
    runtimes: Runtimes,
    /// `None`: no cgroups (memory is then capped by the V8 heap flag only, which ArrayBuffers
    /// escape); reported by [`Executor::enforcement`].
    cgroups: Option<Arc<CgroupManager>>,
    /// The daemon's hard RLIMIT_NOFILE: the most an instance can be given.
    nofile_hard: Option<u64>,
    /// Landlock and seccomp as far as this kernel offers them (`host_confine`).
    confinement: HostConfinement,
    /// How the process gets into its cgroup (`Join`).
    join: Join,
    /// The egress proxy; `None`: instances connect nowhere.
    egress: Option<Arc<EgressProxy>>,
    /// The uid/gid instances run as: `Some` only when the daemon is root (nobody else can switch).
    run_as: Option<RunAs>,
    /// The daemon's effective uid, for the enforcement list.
    euid_root: bool,
}

impl NoneExecutor {
    /// Instances of a root daemon run as [`RunAs::NOBODY`] until [`Self::with_run_as`] says
    /// otherwise.
    pub fn new(runtimes: impl Into<Runtimes>) -> Self {
        Self {
            runtimes: runtimes.into(),
            cgroups: None,
            nofile_hard: sys::nofile_hard_limit(),
            confinement: HostConfinement::probe(),
            join: Join::AfterSpawn,
            egress: None,
            run_as: None,
            euid_root: sys::effective_root(),
        }
        .with_run_as(RunAs::NOBODY)
    }

    /// The uid and gid instances run as when the daemon is root (`sandbox.run_as_uid`,
    /// `sandbox.run_as_gid`; never 0, the config refuses it). A daemon that is not root cannot
    /// switch: its instances run as its own user, and the enforcement list says so.
    pub fn with_run_as(mut self, id: RunAs) -> Self {
        self.run_as = self.euid_root.then_some(id);
        self.confinement.set_owner(self.run_as);
        self
    }

    /// Sends instances' HTTP(S) through `proxy` (their manifest's `net` rules, refused address
    /// ranges); without it they have no network at all.
    pub fn with_egress(mut self, proxy: Arc<EgressProxy>) -> Self {
        self.egress = Some(proxy);
        self
    }

    /// Joins the cgroup in the child before exec, as the container backend must, instead of
    /// placing the process while Deno starts. Only to measure what that costs at start.
    pub fn with_cgroup_join_before_exec(mut self, on: bool) -> Self {
        self.join = if on {
            Join::BeforeExec
        } else {
            Join::AfterSpawn
        };
        self
    }

    /// Landlock and seccomp for every instance (on by default). Off only to measure what they
    /// cost; the enforcement list then says they are off.
    pub fn with_os_confinement(mut self, on: bool) -> Self {
        self.confinement.set_enabled(on);
        self
    }

    /// The connect gate for every instance (on by default, where the kernel has seccomp user
    /// notifications). Off only to measure what it costs; the enforcement list then says so.
    pub fn with_connect_gate(mut self, on: bool) -> Self {
        self.confinement.set_gate_enabled(on);
        self
    }

    /// Puts every instance into its own cgroup under `manager`'s parents.
    pub fn with_cgroups(mut self, manager: Arc<CgroupManager>) -> Self {
        self.cgroups = Some(manager);
        self
    }

    /// Fails the start with a clear error when the instance's uid could not run Deno or read the
    /// bundle or shim (say a data dir under `/root`, mode 0700), instead of Deno failing obscurely.
    fn check_reachable(
        &self,
        spec: &InstanceSpec,
        runtime: &dyn Runtime,
        shim: &std::path::Path,
        id: RunAs,
    ) -> Result<(), SandboxError> {
        use hostfs::{Needed, DATA_DIR_FIX};
        let need = Needed::new;
        hostfs::check_reachable(
            &spec.id,
            id,
            &[
                need(
                    runtime.binary(),
                    0o1,
                    "execute the runtime",
                    "install the runtime where that user can run it (e.g. /usr/local/bin)",
                ),
                need(
                    spec.bundle_file.as_path(),
                    0o4,
                    "read the bundle",
                    "keep the code where that user can read it (at-rund dev: the bundle's folder)",
                ),
                need(shim, 0o4, "read the shim", DATA_DIR_FIX),
                need(&spec.work_dir, 0o1, "reach its work dir", DATA_DIR_FIX),
                need(&spec.deno_dir, 0o1, "reach its DENO_DIR", DATA_DIR_FIX),
                need(&spec.data_dir, 0o1, "reach its data dir", DATA_DIR_FIX),
            ],
        )
    }

    fn open_files(&self, asked: u64) -> u64 {
        self.nofile_hard.map_or(asked, |hard| asked.min(hard))
    }
}

#[async_trait::async_trait]
impl Executor for NoneExecutor {
    fn name(&self) -> &'static str {
        "none"
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let mut e = enforcement_for(self.cgroups.as_ref(), self.nofile_hard);
        e.extend(self.confinement.enforcement());
        e.extend(self.runtimes.enforcement());
        e.push(match self.run_as {
            Some(id) => Enforcement {
                limit: "unprivileged",
                enforced: true,
                how: format!(
                    "uid {} gid {}, no supplementary groups, no capabilities (bounding and ambient \
                     sets emptied), no_new_privs; set before exec. Every instance shares this uid: \
                     Landlock keeps tenants apart",
                    id.uid, id.gid
                ),
            },
            None => Enforcement {
                limit: "unprivileged",
                enforced: false,
                how: "at-rund is not root, so it cannot switch uid: instances run as its own \
                      user, confined by Landlock and seccomp only"
                    .into(),
            },
        });
        e
    }

    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        let started_at = Instant::now();
        let runtime = self.runtimes.get(spec.runtime)?;
        if let Some(why) = runtime.refuses_none() {
            return Err(SandboxError::StartFailed(format!(
                "runtime {} is not run under isolation = \"none\" here: {why}",
                spec.runtime
            )));
        }
        let (socket, _) = work_paths(&spec, runtime.shim())?;
        // One shim path for every instance, not one per instance: Deno caches the shim's
        // transpiled form in DENO_DIR keyed by its path, so a per-instance path would grow
        // DENO_DIR/gen forever. It lives beside the work dirs, where no instance can write (not
        // in DENO_DIR, where a bundle allowed `run` could plant a symlink for the host to write
        // through) and whose path names no author (it shows in stack traces).
        let shim = spec
            .work_dir
            .parent()
            .unwrap_or(&spec.work_dir)
            .join(runtime.shim().file);
        let args = runtime.args(&Layout {
            spec: &spec,
            shim: &shim,
            socket: &socket,
            scratch: None,
        })?;
        prepare_work_dir(&spec, &socket, &shim, runtime.shim().source, self.run_as).await?;
        let cleanup = |_: &SandboxError| process::remove_work_dir(&spec.id, &spec.work_dir);
        if let Some(id) = self.run_as {
            self.check_reachable(&spec, runtime, &shim, id)
                .inspect_err(cleanup)?;
        }
        let proxy = self.egress.as_ref().map(|p| p.local_addr());
        // Built here, before fork: the child only makes the syscalls.
        let (confine, mut gate) = match self
            .confinement
            .prepare(
                &spec,
                (runtime.binary(), runtime.host_reads()),
                &shim,
                proxy,
            )
            .inspect_err(cleanup)?
        {
            Some((c, g)) => (Some(c), g),
            None => (None, None),
        };
        // With the gate, the runner makes every connection to the proxy and announces it: the
        // token is then worth nothing outside this instance.
        let egress = self
            .egress
            .as_ref()
            .map(|proxy| {
                let (reg, token) = crate::egress::register(proxy, &spec, gate.is_some())?;
                gate = gate.take().map(|g| g.announcing(reg.announcer()));
                Ok::<_, SandboxError>((reg, atrund_egress::proxy_url(&token, proxy.local_addr())))
            })
            .transpose()
            .inspect_err(cleanup)?;

        let mut cmd = tokio::process::Command::new(runtime.binary());
        cmd.args(&args)
            .env_clear()
            .envs(runtime.env(&spec.deno_dir, None))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            // Relative paths in the bundle then mean what the manifest means: data-dir relative.
            .current_dir(&spec.data_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        if let Some((reg, url)) = egress {
            // No NO_PROXY: loopback goes through the proxy too, which refuses it.
            cmd.env("HTTP_PROXY", &url).env("HTTPS_PROXY", &url);
            keep.push(Box::new(reg));
        }
        launch(Launch {
            spec: &spec,
            cmd,
            program: runtime.binary(),
            socket,
            cgroups: self.cgroups.as_ref(),
            nofile: self.open_files(spec.limits.open_files),
            started_at,
            keep,
            inherit: Vec::new(),
            run_as: self.run_as,
            confine,
            gate,
            join: self.join,
            spares: None,
            vm: None,
        })
        .await
    }
}
