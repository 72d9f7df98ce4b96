//! Reading the configuration and turning its sections into component settings: shared by the
//!
//! start-up in `main`, the reload on SIGHUP (`reload`) and the host check (`doctor`).
//!
//! Owns: `load_config`, the `[pool]` → `PoolConfig` mapping, the sandbox's [`Choice`] from the
//! config, the data dir's group and whether author volumes are used. Must not: start anything
//! (beyond making the volumes' image dir).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use atrund_config::{Config, Isolation};
use atrund_sandbox::{
    CgroupManager, Choice, DenoBinary, NodeBinary, PythonBinary, Requested, RunAs, Runtimes,
};

pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    let env = atrund_config::process_env()?;
    Ok(Config::load(path, &env)?)
}

/// The pool's knobs from `[pool]` (the keys the binary uses itself are named and skipped, so a
/// new key cannot be silently left at the pool's default).
pub(crate) fn pool_config(p: &atrund_config::PoolSection) -> atrund_pool::PoolConfig {
    let atrund_config::PoolSection {
        max_instances,
        max_instances_per_bundle,
        max_instances_per_author,
        idle_timeout_ms,
        memory_budget_mib,
        busy_wait_ms,
        crash_backoff_ms,
        crash_backoff_max_ms,
        // Used by the binary (pre-warm loop, drain, close) and the HTTP layer (start timeout).
        prewarm: _,
        prewarm_instances: _,
        drain_grace_ms: _,
        close_wait_ms: _,
        start_timeout_ms: _,
        prewarm_refresh_secs: _,
        admin_listen: _,
        warmth,
        warmth_bin_ms,
        warmth_range_ms,
        warmth_min_samples,
        warmth_margin_percent,
        warmth_max_bundles,
        warmth_forget_secs,
        // The generic sandboxes' own settings (`generic_pool`).
        generic_sandboxes: _,
        generic_python_sandboxes: _,
        generic_memory_budget_mib: _,
    } = p;
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    atrund_pool::PoolConfig {
        max_instances: n(*max_instances),
        max_instances_per_bundle: n(*max_instances_per_bundle),
        max_instances_per_author: n(*max_instances_per_author),
        idle_timeout: Duration::from_millis(*idle_timeout_ms),
        memory_budget_bytes: memory_budget_mib.saturating_mul(1024 * 1024),
        busy_wait: Duration::from_millis(*busy_wait_ms),
        crash_backoff: Duration::from_millis(*crash_backoff_ms),
        crash_backoff_max: Duration::from_millis(*crash_backoff_max_ms),
        warmth: (*warmth == atrund_config::Warmth::Adaptive).then(|| {
            atrund_pool::warmth::WarmthConfig {
                bin: Duration::from_millis(*warmth_bin_ms),
                range: Duration::from_millis(*warmth_range_ms),
                min_samples: u32::try_from(*warmth_min_samples).unwrap_or(u32::MAX),
                margin_percent: u32::try_from(*warmth_margin_percent).unwrap_or(100),
                max_bundles: n(*warmth_max_bundles),
                forget_after: Duration::from_secs(*warmth_forget_secs),
            }
        }),
    }
}

/// The sandbox's name for `isolation`; an error for the backends this version does not have.
pub(crate) fn requested_isolation(config: &Config) -> Result<Requested> {
    match config.isolation {
        Isolation::None => Ok(Requested::None),
        Isolation::Container => Ok(Requested::Container),
        Isolation::Auto => Ok(Requested::Auto),
        Isolation::Microvm | Isolation::Firecracker => Ok(Requested::MicroVm),
    }
}

/// The runtimes this runner offers: Deno (`deno.path`, else `deno` on PATH) always, Node when
/// `node.path` names a usable Node, Python when `python.path` names a usable interpreter (an
/// operator's explicit choice each: there is no PATH look-up).
pub(crate) async fn runtimes(config: &Config) -> Result<Runtimes> {
    let deno = DenoBinary::locate(config.deno.path.as_deref())?;
    let mut runtimes = Runtimes::new(deno);
    if let Some(path) = &config.node.path {
        let node = NodeBinary::probe(path).await?;
        tracing::info!(node = %node.path().display(), version = node.version(), "runtime node offered");
        runtimes = runtimes.with_node(node);
    }
    if let Some(path) = &config.python.path {
        let python = PythonBinary::probe(path).await?;
        tracing::info!(python = %python.path().display(), version = python.version(), allow_none = config.python.allow_none, "runtime python offered");
        runtimes = runtimes.with_python(python, config.python.allow_none);
    }
    Ok(runtimes)
}

/// What `atrund_sandbox::choose_executor` needs, from the config; container roots are assembled
/// in `rootfs_dir` (`<data_dir>/rootfs` when serving).
pub(crate) fn sandbox_choice(
    config: &Config,
    requested: Requested,
    runtimes: Runtimes,
    cgroups: Arc<CgroupManager>,
    rootfs_dir: PathBuf,
) -> Result<Choice> {
    let init = std::env::current_exe()
        .context("cannot find the at-rund binary for the sandbox's PID 1")?;
    let parse = |key: &str, list: &[String]| -> Result<Vec<atrund_egress::IpNet>> {
        list.iter()
            .map(|c| {
                c.parse()
                    .map_err(|e| anyhow::anyhow!("{key}: range '{c}': {e}"))
            })
            .collect()
    };
    let atrund_config::ContainerSection { bwrap, tmp_mib } = config.container.clone();
    let atrund_config::SandboxSection {
        run_as_uid,
        run_as_gid,
    } = config.sandbox.clone();
    let atrund_config::EgressSection {
        allow_cidrs,
        deny_cidrs,
        connect_timeout_ms,
        idle_timeout_ms,
        max_tunnels_per_instance,
    } = &config.egress;
    // `auto` probes a microVM only when the operator has set one up.
    let wants_microvm = match requested {
        Requested::MicroVm => true,
        Requested::Auto => config.microvm.kernel.is_some(),
        _ => false,
    };
    let microvm = if wants_microvm {
        Some(microvm_config(
            config,
            runtimes.clone(),
            (init.clone(), vec!["sandbox-init".into()]),
            rootfs_dir.with_file_name("microvm"),
        )?)
    } else {
        None
    };
    Ok(Choice {
        microvm,
        requested,
        runtimes,
        cgroups,
        bwrap,
        tmp_mib,
        rootfs_dir,
        init: (init, vec!["sandbox-init".into()]),
        egress: atrund_egress::EgressConfig {
            allow_cidrs: parse("egress.allow_cidrs", allow_cidrs)?,
            deny_cidrs: parse("egress.deny_cidrs", deny_cidrs)?,
            connect_timeout: Duration::from_millis(*connect_timeout_ms),
            idle_timeout: Duration::from_millis(*idle_timeout_ms),
            max_tunnels_per_instance: usize::try_from(*max_tunnels_per_instance)
                .unwrap_or(usize::MAX),
            ..atrund_egress::EgressConfig::default()
        },
        run_as: run_as(run_as_uid, run_as_gid)?,
    })
}

/// [`sandbox_choice`] for a probe that runs outside `serve` (`doctor`, `runtime-test`): its
/// roots under `tmp`, and, when at-rund is root, Deno and at-rund staged where the instances'
/// uid can run them, as `serve` does (copies when they sit under /root), in `tmp/staged`.
pub(crate) fn probe_choice(
    config: &Config,
    requested: Requested,
    runtimes: Runtimes,
    cgroups: Arc<CgroupManager>,
    tmp: &Path,
) -> Result<Choice> {
    let choice = sandbox_choice(config, requested, runtimes, cgroups, tmp.join("rootfs"))?;
    if !atrund_sandbox::effective_root() {
        return Ok(choice);
    }
    use std::os::unix::fs::PermissionsExt;
    let staged = tmp.join("staged");
    std::fs::create_dir_all(&staged)
        .with_context(|| format!("cannot create {}", staged.display()))?;
    for d in [tmp, &staged] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot open {} to the instances' uid", d.display()))?;
    }
    reachable_choice(choice, &staged)
}

/// The microVM backend's settings from `[microvm]` (validated by `Config::validate`); the
/// programs named without a path are looked up on `PATH`.
fn microvm_config(
    config: &Config,
    runtimes: Runtimes,
    init: (PathBuf, Vec<String>),
    image_dir: PathBuf,
) -> Result<atrund_sandbox::MicroVmConfig> {
    let m = &config.microvm;
    let program = |key: &str, name: &str| -> Result<PathBuf> {
        atrund_sandbox::find_program(name).ok_or_else(|| {
            anyhow::anyhow!(
                "{key}: '{name}' is not on PATH; give its full path (docs/microvm.md says how to install it)"
            )
        })
    };
    let kernel = m
        .kernel
        .clone()
        .context("microvm.kernel: isolation = \"microvm\" needs a guest kernel")?;
    let vmm = match config.microvm_vmm() {
        atrund_config::MicroVmVmm::Qemu => atrund_sandbox::Vmm::Qemu {
            qemu: program("microvm.qemu", &m.qemu)?,
            vhost_device_vsock: program("microvm.vhost_device_vsock", &m.vhost_device_vsock)?,
        },
        atrund_config::MicroVmVmm::Firecracker => atrund_sandbox::Vmm::Firecracker {
            firecracker: program("microvm.firecracker", &m.firecracker)?,
        },
    };
    Ok(atrund_sandbox::MicroVmConfig {
        vmm,
        kernel,
        modules: m.modules.clone(),
        accel: match m.accel {
            atrund_config::MicroVmAccel::Kvm => atrund_microvm::qemu::Accel::Kvm,
            atrund_config::MicroVmAccel::Tcg => atrund_microvm::qemu::Accel::Tcg,
        },
        vcpus: u8::try_from(m.vcpus).unwrap_or(1),
        runtimes,
        init,
        image_dir,
        console: m.console,
    })
}

/// The group instances run with, if they switch identity (at-rund is root: `none` runs Deno, and
/// `container` runs bwrap, as `sandbox.run_as_uid`/`run_as_gid`): the data dir lets that group
/// pass through.
pub(crate) fn instances_group(config: &Config) -> Option<u32> {
    atrund_sandbox::effective_root()
        .then(|| u32::try_from(config.sandbox.run_as_gid).ok())
        .flatten()
}

/// The run-as identity of instances of either backend (`Config::validate` has checked the range).
pub(crate) fn run_as(uid: u64, gid: u64) -> Result<RunAs> {
    Ok(RunAs {
        uid: u32::try_from(uid).context("sandbox.run_as_uid is not a uid")?,
        gid: u32::try_from(gid).context("sandbox.run_as_gid is not a gid")?,
    })
}

/// The container's PID 1 (this binary) as `id` can run it: where it is, or (a root runner built
/// under `/root`, 0700, since bwrap opens it by path as that uid) a copy in `staged`.
fn reachable_init(init: PathBuf, id: RunAs, staged: &Path) -> Result<PathBuf> {
    let copy = atrund_sandbox::copy_if_unreachable(&init, id, 0o1, staged, "at-rund", 0o755)
        .with_context(|| {
            format!(
                "the instances' uid {} cannot run {} and no copy could be made in {}",
                id.uid,
                init.display(),
                staged.display()
            )
        })?;
    Ok(match copy {
        Some((copy, why)) => {
            tracing::info!(binary = %init.display(), copy = %copy.display(), %why, "the instances' user cannot run at-rund where it is: the container's PID 1 is a copy");
            copy
        }
        None => init,
    })
}

/// `choice` with its runtimes and at-rund (the container's PID 1) where `choice.run_as` can run them:
/// copies in `staged` for those it cannot (a root runner under `/root`). Shared by `serve` and
/// `doctor`'s probe, so both see the same sandbox.
pub(crate) fn reachable_choice(mut choice: Choice, staged: &Path) -> Result<Choice> {
    choice.init.0 = reachable_init(choice.init.0, choice.run_as, staged)?;
    choice.runtimes = choice.runtimes.reachable_by(choice.run_as, staged)?;
    // A microVM's launcher is the same binary (its guest image is read by the daemon itself).
    if let Some(m) = &mut choice.microvm {
        m.init.0 = choice.init.0.clone();
        m.runtimes = choice.runtimes.clone();
    }
    Ok(choice)
}

/// The name resolver of the runner's own requests: the operator's `dns_server`, else the
/// system's.
pub(crate) fn own_requests_names(
    config: &atrund_config::Config,
) -> Arc<dyn atrund_netpolicy::Resolve> {
    match config.dns_server_addr() {
        Some(server) => Arc::new(atrund_netpolicy::DnsServerResolver::new(
            server,
            Duration::from_millis(config.identity.timeout_ms),
        )),
        None => Arc::new(atrund_netpolicy::SystemResolver),
    }
}

/// The certificate authorities the runner's own requests trust beside the web PKI's
/// (`extra_ca_file`).
pub(crate) fn own_requests_roots(
    config: &atrund_config::Config,
) -> Result<Vec<atrund_netpolicy::CertificateDer<'static>>> {
    match &config.extra_ca_file {
        Some(path) => atrund_netpolicy::read_ca_file(path)
            .map_err(|e| anyhow::anyhow!("extra_ca_file (ATRUND_EXTRA_CA_FILE): {e}")),
        None => Ok(Vec::new()),
    }
}

/// The address policy of the runner's own requests (identity, PDS): the classifier plus the
/// operator's `allow_addrs` (checked by `Config::validate`; parsed again here into typed openings).
pub(crate) fn own_requests_policy(
    allow_addrs: &[String],
) -> Result<atrund_netpolicy::AddressPolicy> {
    let openings = allow_addrs
        .iter()
        .map(|a| {
            a.parse::<atrund_netpolicy::Opening>()
                .map_err(|e| anyhow::anyhow!("allow_addrs (ATRUND_ALLOW_ADDRS): {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(atrund_netpolicy::AddressPolicy::default().with_openings(&openings))
}

/// The author volumes `tenants.data_volumes` asks for, if this host has them, and the
/// `dataQuota` line of the enforcement list. `loop` without them fails the start; `auto`
/// without them says why and keeps the soft cap.
pub(crate) fn author_volumes(
    config: &Config,
    layout: &atrund_config::DataLayout,
) -> Result<(
    Option<Arc<atrund_sandbox::AuthorVolumes>>,
    atrund_sandbox::Enforcement,
)> {
    use atrund_config::DataVolumes;
    let cap = config.tenants.max_data_bytes_per_author;
    let soft = |why: String| atrund_sandbox::Enforcement {
        limit: "dataQuota",
        enforced: false,
        how: format!(
            "soft: each author's data is measured per request (at most every 10 s) and writing \
             bundles are refused while it is over {cap} bytes; a running call can write past it \
             ({why})"
        ),
    };
    if cap == 0 {
        return Ok((
            None,
            atrund_sandbox::Enforcement {
                limit: "dataQuota",
                enforced: false,
                how: "no cap: tenants.max_data_bytes_per_author = 0".into(),
            },
        ));
    }
    let mode = config.tenants.data_volumes;
    if mode == DataVolumes::Off {
        let images = layout.volumes();
        if std::fs::read_dir(&images).is_ok_and(|mut d| d.next().is_some()) {
            tracing::warn!(dir = %images.display(), "author volumes exist but tenants.data_volumes = \"off\": bundles do not see the files in them (docs/limits.md, \"Author volumes\")");
        }
        return Ok((None, soft("tenants.data_volumes = \"off\"".into())));
    }
    let made = atrund_sandbox::AuthorVolumes::probe()
        .and_then(|()| atrund_sandbox::AuthorVolumes::new(layout.volumes(), cap));
    match (made, mode) {
        (Ok(v), _) => {
            let size = v.bytes();
            Ok((
                Some(Arc::new(v)),
                atrund_sandbox::Enforcement {
                    limit: "dataQuota",
                    enforced: true,
                    how: format!(
                        "hard: each author's data dir is an ext4 volume of {size} bytes (a \
                         loop-mounted image in volumes/), so writes past it fail with ENOSPC \
                         within the call; writing bundles are also refused while the author \
                         is measured over {cap} bytes"
                    ),
                },
            ))
        }
        (Err(e), DataVolumes::Loop) => Err(anyhow::anyhow!(
            "tenants.data_volumes = \"loop\" but this host cannot mount author volumes: {e}"
        )),
        (Err(e), _) => Ok((None, soft(e.to_string()))),
    }
}

/// The generic sandboxes in front of the container backend (`pool.generic_sandboxes`), or the
/// backend alone when they are off or cannot work here (said in the log, not silent).
pub(crate) fn generic_pool(
    config: &atrund_config::Config,
    executor: std::sync::Arc<dyn atrund_sandbox::Executor>,
    container: Option<atrund_sandbox::ContainerExecutor>,
) -> std::sync::Arc<dyn atrund_sandbox::Executor> {
    generic_pool_in(config, executor, container, config.layout().run())
}

/// [`generic_pool`] with the sandboxes' work dirs in `run_dir` (`runtime-test` keeps its own).
pub(crate) fn generic_pool_in(
    config: &atrund_config::Config,
    executor: std::sync::Arc<dyn atrund_sandbox::Executor>,
    container: Option<atrund_sandbox::ContainerExecutor>,
    run_dir: PathBuf,
) -> std::sync::Arc<dyn atrund_sandbox::Executor> {
    let p = &config.pool;
    if p.generic_sandboxes + p.generic_python_sandboxes == 0 {
        return executor;
    }
    let Some(container) = container.filter(|_| atrund_sandbox::effective_root()) else {
        tracing::warn!(
            deno = p.generic_sandboxes,
            python = p.generic_python_sandboxes,
            "pool.generic_sandboxes and pool.generic_python_sandboxes are ignored: generic \
             sandboxes need isolation = \"container\" (or auto choosing it) and at-rund running \
             as root"
        );
        return executor;
    };
    let l = &config.limits;
    let sandbox = |runtime| atrund_sandbox::GenericConfig {
        runtime,
        // The cap: a bundle's own memory limit is set on the cgroup when specialised.
        memory_mib: l.memory_mib.max,
        limits: atrund_sandbox::ResourceLimits {
            pids: l.pids,
            cpu_quota_percent: l.cpu_quota_percent,
            cpu_budget: None,
            open_files: l.open_files,
            max_response_bytes: l.max_response_bytes,
            max_file_bytes: l.max_file_bytes,
        },
        start_timeout: std::time::Duration::from_millis(p.start_timeout_ms),
    };
    let lanes = [
        (p.generic_sandboxes, atrund_sandbox::RuntimeKind::Deno),
        (
            p.generic_python_sandboxes,
            atrund_sandbox::RuntimeKind::Python,
        ),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, runtime)| atrund_pool::GenericLane {
        size: usize::try_from(n).unwrap_or(usize::MAX),
        sandbox: sandbox(runtime),
    })
    .collect();
    let cfg = atrund_pool::GenericPoolConfig {
        lanes,
        memory_budget_bytes: p.generic_memory_budget_mib.saturating_mul(1024 * 1024),
        run_dir,
    };
    tracing::info!(
        deno = p.generic_sandboxes,
        python = p.generic_python_sandboxes,
        memory_budget_mib = p.generic_memory_budget_mib,
        "pre-warmed generic sandboxes on (docs/design.md)"
    );
    atrund_pool::GenericPool::start(container, cfg)
}
