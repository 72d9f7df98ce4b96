//! Which backend runs instances on this machine (`isolation`): as configured (`microvm` needs
//! `[microvm]`, and with KVM the host check of `atrund-microvm`), or for `auto` the strongest
//! that really works here — a microVM if the host check passes, `[microvm]` is set up for KVM
//! and a probe VM boots and answers, then a container if
//! bubblewrap is found, every cgroup limit is usable, the root assembles and a real probe
//! sandbox runs, else `none` with a loud warning. The choice and its reason are reported as the
//! `isolation` entry of describeRunner's `enforcement`; an explicit `container` that cannot work
//! fails start-up (no silent fallback).
//!
//! Both backends send bundles' HTTP(S) through one egress proxy, started here
//! ([`Chosen::egress`]: the daemon tells it the runner's own listeners).
//!
//! Owns: the order of the probes and the wording of the choice. Must not: read the config file
//! (the daemon hands over a [`Choice`]) or start instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrund_egress::EgressProxy;
use atrund_microvm::qemu::Accel;

use crate::cgroup::CgroupManager;
use crate::{
    find_bwrap, ContainerConfig, ContainerExecutor, Enforcement, Executor, MicroVmConfig,
    MicroVmExecutor, NoneExecutor, RunAs, Runtimes, SandboxError,
};

/// The isolation an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    None,
    Container,
    /// `isolation = "microvm"`: [`Choice::microvm`] says how.
    MicroVm,
    Auto,
}

/// Everything the choice needs, from the daemon's config.
#[derive(Debug, Clone)]
pub struct Choice {
    pub requested: Requested,
    /// The runtimes offered (Deno always).
    pub runtimes: Runtimes,
    pub cgroups: Arc<CgroupManager>,
    /// `container.bwrap`: a path, or a name looked up on PATH.
    pub bwrap: String,
    /// `container.tmp_mib`.
    pub tmp_mib: u64,
    /// Where container roots are assembled (`<data_dir>/rootfs`).
    pub rootfs_dir: PathBuf,
    /// The program and arguments of the container's PID 1 (`at-rund sandbox-init`).
    pub init: (PathBuf, Vec<String>),
    /// The egress proxy's settings (both backends).
    pub egress: atrund_egress::EgressConfig,
    /// `sandbox.run_as_uid` / `sandbox.run_as_gid`: the host uid/gid instances of either backend
    /// run as when the daemon is root (also when `auto` falls back to `none`).
    pub run_as: RunAs,
    /// The microVM backend's settings (`[microvm]`), when `isolation = "microvm"`.
    pub microvm: Option<MicroVmConfig>,
}

/// The chosen executor, and the describeRunner entry that says which one and why.
pub struct Chosen {
    pub executor: Arc<dyn Executor>,
    pub isolation: Enforcement,
    /// The egress proxy every instance's HTTP(S) goes through.
    pub egress: Arc<EgressProxy>,
    /// The container backend itself, when chosen (for the generic sandboxes in front of it).
    pub container: Option<ContainerExecutor>,
}

fn note(enforced: bool, how: String) -> Enforcement {
    Enforcement {
        limit: "isolation",
        enforced,
        how,
    }
}

/// Chooses the backend for `c`. Order for `auto`: microVM (KVM, `[microvm]`, a probe VM) → container →
/// none (with a loud warning).
pub async fn choose_executor(c: Choice) -> Result<Chosen, SandboxError> {
    let proxy = Arc::new(
        EgressProxy::start(c.egress.clone())
            .await
            .map_err(|e| SandboxError::StartFailed(format!("egress proxy: {e}")))?,
    );
    tracing::info!(addr = %proxy.local_addr(), "egress proxy listening");
    let none = || {
        Arc::new(
            NoneExecutor::new(c.runtimes.clone())
                .with_cgroups(c.cgroups.clone())
                .with_egress(proxy.clone())
                .with_run_as(c.run_as),
        )
    };
    let chosen = |executor: Arc<dyn Executor>, isolation| Chosen {
        executor,
        isolation,
        egress: proxy.clone(),
        container: None,
    };
    let container = |exec: ContainerExecutor, isolation| Chosen {
        container: Some(exec.clone()),
        ..chosen(Arc::new(exec), isolation)
    };
    match c.requested {
        Requested::None => Ok(chosen(
            none(),
            note(
                false,
                "none, as configured: Deno flags, Landlock, seccomp, a cgroup and the egress \
                 proxy, no namespaces (docs/security.md)"
                    .into(),
            ),
        )),
        Requested::Container => {
            let exec = container_executor(&c, &proxy).await.map_err(|why| {
                SandboxError::StartFailed(format!(
                    "isolation = \"container\" is not possible on this machine: {why}"
                ))
            })?;
            tracing::info!("isolation: container (bubblewrap + Landlock + seccomp + egress proxy)");
            Ok(container(
                exec,
                note(true, "container, as configured".into()),
            ))
        }
        Requested::MicroVm => {
            if c.microvm.as_ref().is_some_and(|m| m.accel == Accel::Tcg) {
                tracing::warn!(
                    "isolation microvm with microvm.accel = \"tcg\": every guest CPU is \
                     emulated, about 100 times slower than KVM, and starts take seconds \
                     (a test mode)"
                );
            }
            // As for `auto`: a VMM that starts proves nothing, so a probe VM must answer
            // before the runner serves (a broken kernel or image fails the start, not the
            // first request).
            let (exec, took) = probed_microvm(&c, &proxy).await.map_err(|why| {
                SandboxError::StartFailed(format!(
                    "isolation = \"microvm\" is not possible on this machine: {why}"
                ))
            })?;
            let how = format!(
                "microvm, as configured: a {} per instance{} (a probe VM booted and answered in \
                 {} ms)",
                exec.vmm_name(),
                match exec.accel() {
                    Accel::Kvm => " with KVM",
                    Accel::Tcg => " under software emulation (tcg, a test mode)",
                },
                took.as_millis()
            );
            tracing::info!(image = %exec.image().path.display(), "isolation: {how}");
            Ok(chosen(Arc::new(exec), note(true, how)))
        }
        Requested::Auto => {
            let host = atrund_microvm::host::check(Path::new("/")).map_err(|e| e.to_string());
            let microvm = match auto_microvm(host, c.microvm.as_ref()) {
                AutoMicroVm::Refused(why) => why,
                AutoMicroVm::Probe => match probed_microvm(&c, &proxy).await {
                    Ok((exec, took)) => {
                        let how = format!(
                            "auto chose microvm (a probe VM booted and answered in {} ms)",
                            took.as_millis()
                        );
                        tracing::info!("isolation {how}");
                        return Ok(chosen(Arc::new(exec), note(true, how)));
                    }
                    Err(why) => {
                        tracing::warn!("isolation auto: microvm refused: {why}");
                        format!("microvm refused: {why}")
                    }
                },
            };
            match container_executor(&c, &proxy).await {
                Ok(exec) => {
                    tracing::info!("isolation auto: container ({microvm})");
                    Ok(container(
                        exec,
                        note(true, format!("auto chose container ({microvm})")),
                    ))
                }
                Err(why) => {
                    tracing::warn!(
                        "ISOLATION IS WEAK: isolation = \"auto\" fell back to \"none\" because the \
                         container backend is not possible here: {why}. Bundles run with Deno flags, \
                         Landlock, seccomp, a cgroup and the egress proxy, without namespaces \
                         (docs/security.md). Install bubblewrap and run as root to fix."
                    );
                    Ok(chosen(
                        none(),
                        note(
                            false,
                            format!("auto fell back to none: {microvm}; container: {why}"),
                        ),
                    ))
                }
            }
        }
    }
}

/// What `auto` does about microVMs, before any VM is booted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AutoMicroVm {
    /// Not here, and why (describeRunner's `isolation` line says it).
    Refused(String),
    /// The host passes the check and `[microvm]` is set up for KVM: boot a probe VM.
    Probe,
}

/// `host` is the host check's outcome; `cfg` the `[microvm]` settings, if the operator gave a
/// kernel. `auto` never picks software emulation: that is a test mode, chosen explicitly.
fn auto_microvm(host: Result<(), String>, cfg: Option<&MicroVmConfig>) -> AutoMicroVm {
    match (host, cfg) {
        (Err(why), _) => AutoMicroVm::Refused(format!("microvm refused: {why}")),
        (Ok(()), None) => AutoMicroVm::Refused(
            "microvm: this host has usable KVM, but [microvm] is not set up (microvm.kernel, \
             docs/microvm.md)"
                .into(),
        ),
        (Ok(()), Some(c)) if c.accel == Accel::Tcg => AutoMicroVm::Refused(
            "microvm: auto does not choose software emulation (microvm.accel = \"tcg\"); set \
             isolation = \"microvm\" to use it"
                .into(),
        ),
        (Ok(()), Some(_)) => AutoMicroVm::Probe,
    }
}

/// The microVM backend, once a probe VM has booted and answered.
async fn probed_microvm(
    c: &Choice,
    proxy: &Arc<EgressProxy>,
) -> Result<(MicroVmExecutor, std::time::Duration), String> {
    let exec = microvm_executor(c, proxy).await?;
    let took = exec.probe().await?;
    Ok((exec, took))
}

/// Whether this host could run microVMs, without booting one (`at-rund doctor`): the host
/// check's refusal (no usable KVM, PVM, no VT-x/AMD-V), or that it passes.
pub fn microvm_verdict(root: &Path) -> String {
    match atrund_microvm::host::check(root) {
        Err(why) => format!("microvm refused: {why}"),
        Ok(()) => "microvm: this host has usable KVM; auto boots a probe VM when [microvm] is set \
                   up (microvm.kernel)"
            .into(),
    }
}

/// The bubblewrap binary `container.bwrap` names: a path as given, a bare name looked up on PATH.
pub(crate) fn find_configured_bwrap(bwrap: &str) -> Option<PathBuf> {
    find_bwrap(Some(Path::new(bwrap)).filter(|p| p.components().count() > 1))
}

/// The container backend, if this machine can run it: bwrap found, every cgroup limit usable,
/// the root assembled, and a real sandbox started once (the probe).
async fn container_executor(
    c: &Choice,
    proxy: &Arc<EgressProxy>,
) -> Result<ContainerExecutor, String> {
    let bwrap = find_configured_bwrap(&c.bwrap).ok_or_else(|| {
            format!(
                "bubblewrap ('{}') not found; install it with `apt-get install -y bubblewrap` (container.bwrap)",
                c.bwrap
            )
        })?;
    if let Some(missing) = missing_cgroup_limits(c) {
        return Err(missing);
    }
    let cfg = ContainerConfig {
        bwrap,
        runtimes: c.runtimes.clone(),
        init: c.init.clone(),
        rootfs_dir: c.rootfs_dir.clone(),
        tmp_mib: c.tmp_mib,
    };
    let exec = built(move || ContainerExecutor::new(cfg))
        .await?
        .with_cgroups(c.cgroups.clone())
        .with_egress(proxy.clone())
        .with_run_as(c.run_as);
    tracing::info!(rootfs = %exec.rootfs().path().display(), libs = exec.rootfs().libs().len(), "container root ready");
    exec.probe().await?;
    Ok(exec)
}

/// Runs a backend's blocking constructor (it assembles a root or a guest image) off the runtime.
async fn built<E: Send + 'static>(
    new: impl FnOnce() -> Result<E, SandboxError> + Send + 'static,
) -> Result<E, String> {
    tokio::task::spawn_blocking(new)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The cgroup limits a container or a microVM needs and this machine cannot enforce, if any.
fn missing_cgroup_limits(c: &Choice) -> Option<String> {
    let missing: Vec<String> =
        crate::process::enforcement_for(Some(&c.cgroups), crate::sys::nofile_hard_limit())
            .into_iter()
            // The idle freezer is reported but not required.
            .filter(|e| !e.enforced && e.limit != "idleFreeze")
            .map(|e| format!("{}: {}", e.limit, e.how))
            .collect();
    (!missing.is_empty()).then(|| format!("cgroup limits unavailable ({})", missing.join("; ")))
}

/// The microVM backend as `[microvm]` describes it: the host check first (KVM only), the
/// cgroup limits the VM is held in, then the guest image.
async fn microvm_executor(c: &Choice, proxy: &Arc<EgressProxy>) -> Result<MicroVmExecutor, String> {
    let cfg = c
        .microvm
        .clone()
        .ok_or_else(|| "no [microvm] settings were given".to_string())?;
    if cfg.accel == Accel::Kvm {
        atrund_microvm::host::check(Path::new("/")).map_err(|e| {
            format!(
                "{e}; microvm.accel = \"tcg\" emulates the CPU instead, about 100 times slower \
                 (a test mode)"
            )
        })?;
    }
    if let Some(missing) = missing_cgroup_limits(c) {
        return Err(missing);
    }
    let exec = built(move || MicroVmExecutor::new(cfg))
        .await?
        .with_cgroups(c.cgroups.clone())
        .with_egress(proxy.clone())
        .with_run_as(c.run_as);
    Ok(exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(accel: Accel) -> MicroVmConfig {
        MicroVmConfig {
            vmm: crate::Vmm::Qemu {
                qemu: "/usr/bin/qemu-system-x86_64".into(),
                vhost_device_vsock: "/usr/bin/vhost-device-vsock".into(),
            },
            kernel: "/boot/vmlinux".into(),
            modules: vec![],
            accel,
            vcpus: 1,
            // Any executable: nothing is run.
            runtimes: crate::DenoBinary::locate(Some(Path::new("/bin/sh")))
                .unwrap()
                .into(),
            init: ("/usr/bin/at-rund".into(), vec!["sandbox-init".into()]),
            image_dir: "/var/lib/at-rund/microvm".into(),
            console: false,
        }
    }

    #[test]
    fn auto_boots_a_probe_only_on_a_kvm_host_with_microvm_set_up() {
        let pvm = Err("/dev/kvm is backed by PVM".to_string());
        let kvm = cfg(Accel::Kvm);
        let tcg = cfg(Accel::Tcg);
        match auto_microvm(pvm, Some(&kvm)) {
            AutoMicroVm::Refused(why) => {
                assert!(
                    why.starts_with("microvm refused: /dev/kvm is backed by PVM"),
                    "{why}"
                )
            }
            AutoMicroVm::Probe => panic!("a PVM host was probed"),
        }
        match auto_microvm(Ok(()), None) {
            AutoMicroVm::Refused(why) => assert!(why.contains("microvm.kernel"), "{why}"),
            AutoMicroVm::Probe => panic!("probed without [microvm]"),
        }
        match auto_microvm(Ok(()), Some(&tcg)) {
            AutoMicroVm::Refused(why) => assert!(why.contains("software emulation"), "{why}"),
            AutoMicroVm::Probe => panic!("auto chose emulation"),
        }
        assert_eq!(auto_microvm(Ok(()), Some(&kvm)), AutoMicroVm::Probe);
    }
}
