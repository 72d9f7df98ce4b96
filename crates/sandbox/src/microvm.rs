//! The `microvm` backend (docs/microvm.md): each instance in a virtual machine of its own, with
//! its own guest kernel. The VMM is QEMU `-M microvm` with `vhost-device-vsock`, or Firecracker
//! (`--no-api --config-file`, its own vsock; tested here only through a stand-in). The guest's
//! file system is one cached initramfs per offered runtime (`guest_image`): the agent
//! (`sandbox-init` as PID 1, `guest`), the runtime (Deno, Node or Python with its standard
//! library, where the container root has them), their libraries and the kernel modules.
//!
//! An instance's start, on top of the shared process layer (`process`):
//! - the work dir holds the VM's sockets, its plan (`vm.json`), its logs and the exit report;
//! - the process the layer launches is the VM's launcher (`sandbox-init vmm`, `vm_launcher`),
//!   joined to the instance's host cgroup before exec, with the instance's environment (its
//!   secrets) as its own; it starts the vsock backend and the VMM as its children, so the
//!   whole VM is in the cgroup and dies with the process group;
//! - calls go over the VMM's hybrid vsock socket to guest port 1025 (`CONNECT`), where the agent
//!   carries them to the shim's socket;
//! - egress: the guest has no network card; the runtime's proxy is the guest's `127.0.0.1:3128`, which
//!   the guest's init forwards to the agent, the agent to the host's CID 2 port 3128, which the
//!   VMM's backend turns into a connection on `<uds>_3128`, where this backend forwards to the
//!   egress proxy with the instance's token (`egress::forwarder`), as for a container.
//!
//! Limits: the instance's memory and tasks are a cgroup inside the guest (the agent reports its
//! OOM kills and refused forks, under the usual error names); the guest's RAM is the instance's
//! memory plus room for the guest kernel and the image, and the host cgroup holds the whole VM
//! (that RAM plus the VMM's own) with the instance's CPU quota; the CPU budget is the VM's CPU
//! time; the wall clock, response cap and file limit are the process layer's and the guest's.
//!
//! Owns: the plan of one VM (QEMU's and the backend's command lines or Firecracker's config file,
//! the guest's paths, its init config and limits). Must not: talk to the guest (the launcher does), or choose permissions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use atrund_egress::EgressProxy;
use atrund_microvm::firecracker::{BootSource, Entropy, MachineConfig, VmConfig, Vsock};
use atrund_microvm::qemu::{vhost_device_vsock_args, Accel, QemuVm};

use crate::cgroup::{CgroupLimits, CgroupManager};
use crate::guest::{self, FileSpec, GuestLimits, Start};
use crate::guest_image::{cached_initramfs, remove_other_images, CachedImage, GuestPieces};
use crate::hostfs::{self, Needed, DATA_DIR_FIX};
use crate::init_config::{InitConfig, ProxyForward};
use crate::process::{self, Join, Launch, VmLaunch};
use crate::rootfs::runtime_in_root;
use crate::runtime::seam::check_secret_names;
use crate::runtime::{Layout, Runtime};
use crate::vm_launcher::{Program, VmPlan};
use crate::{
    sys, Enforcement, Executor, Instance, InstanceSpec, RunAs, RuntimeKind, Runtimes, SandboxError,
};

/// How a start that needs data paths is refused (they are not carried into the guest yet): the
/// conformance kit recognises the gap by it.
pub const NO_DATA_PATHS: &str = "the microvm backend does not carry a bundle's data paths";

/// Paths inside the guest.
const WORK: &str = "/work";
/// The runtime's cache dir (Deno's `DENO_DIR`) and scratch dir in the guest.
const GUEST_CACHE: &str = "/tmp/deno";
const GUEST_SCRATCH: &str = "/tmp";
const GUEST_PROXY_SOCKET: &str = "/run/agent/egress-in.sock";
/// Files in the instance's host work dir.
const PLAN: &str = "vm.json";
const VSOCK: &str = "v.sock";
const BACKEND_SOCKET: &str = "vhost.sock";
const EXIT_REPORT: &str = "exit.json";
const VMM_LOG: &str = "vmm.log";
const CONSOLE: &str = "console.log";
/// Guest RAM beyond the instance's memory and twice the image (it is held packed and unpacked
/// while the kernel unpacks it): the guest kernel and the agent.
const GUEST_BASE_MIB: u64 = 96;
/// The VMM's own memory beside the guest's, per accelerator: QEMU's TCG keeps a translation
/// cache (measured: 320–360 MiB resident per guest); with KVM it is small.
const VMM_OVERHEAD_TCG_MIB: u64 = 512;
const VMM_OVERHEAD_KVM_MIB: u64 = 128;
/// Tasks in the host cgroup: the launcher, the backend's and the VMM's threads (the instance's
/// own task limit is the guest's).
const HOST_PIDS: u64 = 256;

/// One VM's plan, its launcher's environment and the VMM's own files for the work dir.
struct VmSetup {
    plan: VmPlan,
    env: Vec<(String, String)>,
    files: Vec<(&'static str, Vec<u8>)>,
}

/// Firecracker's kernel command line for at-rund's guest: its defaults without the bare words
/// (`nomodule`), which the kernel would pass to the agent as arguments (the agent is the guest's
/// agent only when it has none), and quiet.
const FIRECRACKER_BOOT_ARGS: &str = "reboot=k panic=1 pci=off 8250.nr_uarts=0 i8042.noaux \
     i8042.nomux i8042.dumbkbd quiet rootfstype=ramfs";
/// The guest's root is the unpacked initramfs in ramfs, not tmpfs: tmpfs caps it at half the RAM
/// the kernel counts, which leaves out the packed image still held while it unpacks, so an image
/// of more than a third of the guest's RAM failed to unpack ("write error"). What the instance
/// writes there is still charged to its cgroup in the guest.
const GUEST_ROOT_ARGS: &str = "rootfstype=ramfs";
/// Firecracker's config file in the work dir.
const FIRECRACKER_CONFIG: &str = "firecracker.json";

/// The launcher's deadline for the guest's agent: 90 % of the start timeout, so that its
/// report of a guest that never answered arrives before the start is given up.
fn boot_deadline(start_timeout: std::time::Duration) -> std::time::Duration {
    start_timeout.mul_f64(0.9)
}

/// The bundle of [`MicroVmExecutor::probe`].
const PROBE_BUNDLE: &str =
    "export const ping = { method: \"GET\", handler: () => new Response(\"pong\") };\n";

/// Which VMM runs the guests, and its programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU `-M microvm` (`qemu-system-x86_64`), with `vhost-device-vsock` as its vsock backend.
    Qemu {
        qemu: PathBuf,
        vhost_device_vsock: PathBuf,
    },
    /// Firecracker, started with `--no-api --config-file` (KVM only; no jailer).
    Firecracker { firecracker: PathBuf },
}

impl Vmm {
    /// The programs to check, with what each is.
    fn programs(&self) -> Vec<(&'static str, &Path)> {
        match self {
            Vmm::Qemu {
                qemu,
                vhost_device_vsock,
            } => vec![
                ("the VMM", qemu.as_path()),
                ("vhost-device-vsock", vhost_device_vsock.as_path()),
            ],
            Vmm::Firecracker { firecracker } => vec![("Firecracker", firecracker.as_path())],
        }
    }
}

/// Settings of the `microvm` backend.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    pub vmm: Vmm,
    /// The guest kernel, uncompressed (`vmlinux`, PVH-bootable).
    pub kernel: PathBuf,
    /// Kernel modules the guest loads before the agent runs (virtio and vsock, when the kernel
    /// does not have them built in).
    pub modules: Vec<PathBuf>,
    pub accel: Accel,
    pub vcpus: u8,
    /// The runtimes the guests run: one guest image for each.
    pub runtimes: Runtimes,
    /// The program that runs [`crate::init::main`] and the arguments before its own:
    /// `(at-rund, ["sandbox-init"])` in the daemon. It is the VM's launcher on the host and the
    /// agent in the guest.
    pub init: (PathBuf, Vec<String>),
    /// Where guest images are cached (`<data_dir>/microvm`).
    pub image_dir: PathBuf,
    /// Keep each guest's serial console in its work dir (shown when a start fails); it costs
    /// a little boot time.
    pub console: bool,
}

/// The `microvm` executor.
#[derive(Clone)]
pub struct MicroVmExecutor {
    cfg: MicroVmConfig,
    /// One image per offered runtime, in [`RuntimeKind::ALL`]'s order (Deno's first).
    images: Vec<(RuntimeKind, CachedImage)>,
    cgroups: Option<Arc<CgroupManager>>,
    egress: Option<Arc<EgressProxy>>,
    nofile_hard: Option<u64>,
    run_as: Option<RunAs>,
    euid_root: bool,
}

impl std::fmt::Debug for MicroVmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroVmExecutor")
            .field("cfg", &self.cfg)
            .field("images", &self.images)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl MicroVmExecutor {
    /// Builds (or reuses) a guest image for each offered runtime. Blocking: reads the pieces and
    /// writes the images.
    /// Instances of a root daemon run as [`RunAs::NOBODY`] until [`Self::with_run_as`].
    pub fn new(cfg: MicroVmConfig) -> Result<Self, SandboxError> {
        if matches!(cfg.vmm, Vmm::Firecracker { .. }) && cfg.accel == Accel::Tcg {
            return Err(SandboxError::StartFailed(
                "microvm: Firecracker runs on KVM only; software emulation is QEMU's".into(),
            ));
        }
        for (what, p) in cfg.vmm.programs() {
            if !crate::executables::is_executable(p) {
                return Err(SandboxError::StartFailed(format!(
                    "microvm: {what} '{}' is not an executable file",
                    p.display()
                )));
            }
        }
        if !cfg.kernel.is_file() {
            return Err(SandboxError::StartFailed(format!(
                "microvm: the guest kernel '{}' is not a file",
                cfg.kernel.display()
            )));
        }
        let mut images = Vec::new();
        for kind in cfg.runtimes.offered() {
            let runtime = cfg.runtimes.get(kind)?;
            let image = cached_initramfs(
                &cfg.image_dir,
                &GuestPieces {
                    agent: cfg.init.0.clone(),
                    runtime: (runtime.binary().to_path_buf(), runtime_in_root(kind)),
                    trees: runtime.root_dirs(),
                    lib_users: runtime.root_libs(),
                    modules: cfg.modules.clone(),
                },
            )?;
            tracing::info!(
                runtime = %kind,
                image = %image.path.display(),
                mib = image.bytes / (1024 * 1024),
                agent_stripped = image.agent_stripped,
                "microvm guest image ready"
            );
            if !image.agent_stripped {
                tracing::warn!("objcopy is not on PATH: the guest agent keeps its debug sections, so each guest needs more RAM (install binutils)");
            }
            images.push((kind, image));
        }
        let keep: Vec<&Path> = images.iter().map(|(_, i)| i.path.as_path()).collect();
        remove_other_images(&cfg.image_dir, &keep);
        Ok(Self {
            cfg,
            images,
            cgroups: None,
            egress: None,
            nofile_hard: sys::nofile_hard_limit(),
            run_as: None,
            euid_root: sys::effective_root(),
        }
        .with_run_as(RunAs::NOBODY))
    }

    /// The host uid and gid the launcher, the VMM and its backend run as when the daemon is
    /// root (`sandbox.run_as_uid`, `sandbox.run_as_gid`).
    pub fn with_run_as(mut self, id: RunAs) -> Self {
        self.run_as = self.euid_root.then_some(id);
        self
    }

    /// Puts every VM into its own cgroup under `manager`'s parents.
    pub fn with_cgroups(mut self, manager: Arc<CgroupManager>) -> Self {
        self.cgroups = Some(manager);
        self
    }

    /// Gives instances egress through `proxy`; without it they have no network at all.
    pub fn with_egress(mut self, proxy: Arc<EgressProxy>) -> Self {
        self.egress = Some(proxy);
        self
    }

    /// Boots one VM with a one-endpoint bundle and calls it: `auto`'s proof that microVMs work
    /// here (a VMM that starts proves nothing; the guest must boot and its agent, Deno and the
    /// shim must answer). Returns the time from the start to the answer.
    pub async fn probe(&self) -> Result<std::time::Duration, String> {
        let dir = self
            .cfg
            .image_dir
            .join(format!("probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = async {
            hostfs::private_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let bundle = dir.join("probe.js");
            hostfs::write_file_atomic(&dir, "probe.js", PROBE_BUNDLE.as_bytes(), 0o644)
                .map_err(|e| format!("{}: {e}", bundle.display()))?;
            // The launcher's reason for a failed start is its last stderr line.
            let said: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
            let heard = said.clone();
            let sink: crate::OutputSink = Arc::new(move |stream, line: &str| {
                if stream == crate::OutputStream::Stderr {
                    if let Ok(mut g) = heard.lock() {
                        *g = Some(line.to_string());
                    }
                }
            });
            let spec = InstanceSpec {
                id: format!("microvm-probe-{}", std::process::id()),
                runtime: crate::RuntimeKind::Deno,
                bundle_file: bundle,
                work_dir: dir.join("w"),
                data_dir: dir.join("data"),
                deno_dir: dir.join("deno"),
                permissions: Default::default(),
                env: Vec::new(),
                memory_mib: 64,
                request_timeout: std::time::Duration::from_secs(30),
                start_timeout: match self.cfg.accel {
                    Accel::Kvm => std::time::Duration::from_secs(30),
                    Accel::Tcg => std::time::Duration::from_secs(120),
                },
                limits: Default::default(),
                output: Some(sink),
                runner_calls: None,
            };
            let t = Instant::now();
            let inst = self.warm(spec).await.map_err(|e| {
                match said.lock().ok().and_then(|g| g.clone()) {
                    Some(line) => format!("{e}: {line}"),
                    None => e.to_string(),
                }
            })?;
            let call = crate::Invocation {
                kind: crate::CallKind::Endpoint,
                endpoint: "ping".into(),
                request: http::Request::get("/")
                    .body(crate::empty_body())
                    .map_err(|e| e.to_string())?,
                timeout: None,
            };
            let answer = async {
                use http_body_util::BodyExt;
                let res = inst.execute(call).await.map_err(|e| e.to_string())?;
                let body = res
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>(body)
            }
            .await;
            let took = t.elapsed();
            inst.shutdown().await;
            match answer {
                Ok(b) if b.as_ref() == b"pong" => Ok(took),
                Ok(b) => Err(format!(
                    "the probe VM answered {:?}, not \"pong\"",
                    String::from_utf8_lossy(&b)
                )),
                Err(e) => Err(format!("the probe VM booted but its call failed: {e}")),
            }
        };
        let out = run.await;
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// "QEMU microvm" or "Firecracker microVM".
    pub fn vmm_name(&self) -> &'static str {
        match self.cfg.vmm {
            Vmm::Qemu { .. } => "QEMU microvm",
            Vmm::Firecracker { .. } => "Firecracker microVM",
        }
    }

    /// How guests' CPUs run.
    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    /// Deno's guest image (the one `auto`'s probe boots; Deno is always offered, so it was
    /// built first).
    pub fn image(&self) -> &CachedImage {
        &self.images[0].1
    }

    /// The guest image of each offered runtime.
    pub fn images(&self) -> &[(RuntimeKind, CachedImage)] {
        &self.images
    }

    /// The guest image of `kind`, when that runtime is offered.
    fn image_of(&self, kind: RuntimeKind) -> Result<&CachedImage, SandboxError> {
        self.images
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, i)| i)
            .ok_or(SandboxError::RuntimeUnavailable(kind))
    }

    /// Guest RAM for an instance of `memory_mib` booting `image`.
    fn guest_mib(image: &CachedImage, memory_mib: u64) -> u64 {
        memory_mib + 2 * image.bytes.div_ceil(1024 * 1024) + GUEST_BASE_MIB
    }

    fn vmm_overhead_mib(&self) -> u64 {
        match self.cfg.accel {
            Accel::Tcg => VMM_OVERHEAD_TCG_MIB,
            Accel::Kvm => VMM_OVERHEAD_KVM_MIB,
        }
    }

    /// What the VM's processes need of the host as `id`.
    fn check_reachable(
        &self,
        spec: &InstanceSpec,
        image: &CachedImage,
        id: RunAs,
    ) -> Result<(), SandboxError> {
        let install = "install it where that user can run it (e.g. /usr/local/bin or /usr/bin)";
        let readable = "make it and the dirs on its way readable by that user";
        let need = Needed::new;
        let programs = self.cfg.vmm.programs();
        let mut needed: Vec<Needed<'_>> = programs
            .iter()
            .map(|(_, p)| need(p, 0o1, "execute the VMM and its vsock backend", install))
            .collect();
        needed.extend([
            need(
                &self.cfg.init.0,
                0o1,
                "execute at-rund as the VM's launcher",
                install,
            ),
            need(&self.cfg.kernel, 0o4, "read the guest kernel", readable),
            need(&image.path, 0o4, "read the guest image", DATA_DIR_FIX),
        ]);
        needed.extend(hostfs::instance_needs(spec));
        hostfs::check_reachable(&spec.id, id, &needed)
    }

    /// The plan of `spec`'s VM, the environment its launcher (and so the instance) gets, and
    /// the files the VMM reads besides (Firecracker's config file, in the work dir).
    fn plan(
        &self,
        spec: &InstanceSpec,
        runtime: &dyn Runtime,
        image: &CachedImage,
        shim: &Path,
        proxy_url: Option<&str>,
    ) -> Result<VmSetup, SandboxError> {
        let bundle_name = spec
            .bundle_file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("main.js");
        let work = Path::new(WORK);
        let inside = InstanceSpec {
            bundle_file: work.join(bundle_name),
            work_dir: WORK.into(),
            data_dir: "/data".into(),
            deno_dir: GUEST_CACHE.into(),
            ..spec.clone()
        };
        let socket_in = work.join(process::SOCKET_FILE);
        let shim_in = work.join(runtime.shim().file);
        let args = runtime.args(&Layout {
            spec: &inside,
            shim: &shim_in,
            socket: &socket_in,
            scratch: Some(Path::new(GUEST_SCRATCH)),
        })?;
        let mut argv = vec![runtime_in_root(spec.runtime).to_string()];
        argv.extend(args.into_iter().map(|a| a.to_string_lossy().into_owned()));
        let paths = |xs: &[&str]| xs.iter().map(PathBuf::from).collect::<Vec<_>>();
        let init = InitConfig {
            argv,
            read_only: paths(&["/etc", "/proc", "/dev"]),
            execute: paths(&["/bin", "/lib", "/lib64", "/usr"]),
            read_write: paths(&[WORK, GUEST_SCRATCH, "/dev/null"]),
            proxy: proxy_url.map(|_| ProxyForward {
                port: crate::container::PROXY_PORT,
                socket: GUEST_PROXY_SOCKET.into(),
            }),
        };
        let start = Start {
            init,
            env: Vec::new(),
            files: vec![
                FileSpec {
                    path: inside.bundle_file.clone(),
                    len: 0,
                },
                FileSpec {
                    path: shim_in,
                    len: 0,
                },
            ],
            shim_socket: socket_in,
            limits: Some(GuestLimits {
                memory_mib: spec.memory_mib,
                pids: spec.limits.pids,
                open_files: spec.limits.open_files,
                max_file_bytes: spec.limits.max_file_bytes,
            }),
            init_args: self.cfg.init.1.clone(),
        };

        let at = |name: &str| spec.work_dir.join(name);
        let utf8 = |args: Vec<std::ffi::OsString>| -> Result<Vec<String>, SandboxError> {
            args.into_iter()
                .map(|a| {
                    a.into_string().map_err(|a| {
                        SandboxError::StartFailed(format!(
                            "microvm: the path {a:?} is not UTF-8; configure plain paths"
                        ))
                    })
                })
                .collect()
        };
        let guest_mib = Self::guest_mib(image, spec.memory_mib);
        let guest_mib = u32::try_from(guest_mib).map_err(|_| {
            SandboxError::StartFailed(format!("microvm: {guest_mib} MiB of guest RAM is too much"))
        })?;
        let mut files = Vec::new();
        let (vsock_backend, backend_socket, vmm, console) = match &self.cfg.vmm {
            Vmm::Qemu {
                qemu,
                vhost_device_vsock,
            } => {
                let vm = QemuVm {
                    qemu: qemu.clone(),
                    kernel: self.cfg.kernel.clone(),
                    initrd: Some(image.path.clone()),
                    root_image: None,
                    memory_mib: guest_mib,
                    vcpus: self.cfg.vcpus,
                    accel: self.cfg.accel,
                    vhost_socket: at(BACKEND_SOCKET),
                    append: GUEST_ROOT_ARGS.into(),
                    console: self.cfg.console.then(|| at(CONSOLE)),
                };
                let backend = Program {
                    path: vhost_device_vsock.clone(),
                    args: utf8(vhost_device_vsock_args(&at(BACKEND_SOCKET), &at(VSOCK), 3))?,
                };
                let vmm = Program {
                    path: qemu.clone(),
                    args: utf8(vm.args())?,
                };
                (Some(backend), Some(at(BACKEND_SOCKET)), vmm, vm.console)
            }
            Vmm::Firecracker { firecracker } => {
                let vm = VmConfig {
                    boot_source: BootSource {
                        kernel_image_path: self.cfg.kernel.clone(),
                        initrd_path: Some(image.path.clone()),
                        boot_args: FIRECRACKER_BOOT_ARGS.into(),
                    },
                    drives: Vec::new(),
                    machine_config: MachineConfig {
                        vcpu_count: self.cfg.vcpus,
                        mem_size_mib: guest_mib,
                        smt: false,
                    },
                    vsock: Some(Vsock {
                        guest_cid: 3,
                        uds_path: at(VSOCK),
                    }),
                    entropy: Some(Entropy {}),
                };
                vm.validate()
                    .map_err(|e| SandboxError::StartFailed(format!("microvm: {e}")))?;
                let json = serde_json::to_vec(&vm).map_err(|e| {
                    SandboxError::StartFailed(format!("microvm: Firecracker's config: {e}"))
                })?;
                files.push((FIRECRACKER_CONFIG, json));
                let vmm = Program {
                    path: firecracker.clone(),
                    args: utf8(vec![
                        "--no-api".into(),
                        "--config-file".into(),
                        at(FIRECRACKER_CONFIG).into_os_string(),
                    ])?,
                };
                (None, None, vmm, None)
            }
        };
        let plan = VmPlan {
            vsock_backend,
            backend_socket,
            vmm,
            uds: at(VSOCK),
            start,
            sources: vec![spec.bundle_file.clone(), shim.to_path_buf()],
            // Before the process layer's own deadline, so that a guest that never answers is
            // reported with the launcher's reason (and the console's tail), not just killed.
            boot_timeout_ms: boot_deadline(spec.start_timeout).as_millis() as u64,
            exit_report: at(EXIT_REPORT),
            log: at(VMM_LOG),
            console,
        };
        let mut env = spec.env.clone();
        for (k, v) in runtime.env(Path::new(GUEST_CACHE), Some(Path::new(GUEST_SCRATCH))) {
            env.push((k.into(), v.to_string_lossy().into_owned()));
        }
        if let Some(url) = proxy_url {
            env.push(("HTTP_PROXY".into(), url.into()));
            env.push(("HTTPS_PROXY".into(), url.into()));
        }
        Ok(VmSetup { plan, env, files })
    }
}

#[async_trait::async_trait]
impl Executor for MicroVmExecutor {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let mut e = process::enforcement_for(self.cgroups.as_ref(), self.nofile_hard);
        for row in e.iter_mut() {
            match row.limit {
                "memory" => {
                    row.enforced = true;
                    let beyond: Vec<String> = self
                        .images
                        .iter()
                        .map(|(kind, image)| format!("{kind} {} MiB", Self::guest_mib(image, 0)))
                        .collect();
                    row.how = format!(
                        "a cgroup inside the guest (memory.max, OOM kills reported by the \
                         agent); guest RAM is the instance's memory plus room for its runtime's \
                         image and the guest kernel ({}); the host cgroup holds the VM: {}",
                        beyond.join(", "),
                        row.how
                    );
                }
                "pids" => {
                    row.enforced = true;
                    row.how = "pids.max of a cgroup inside the guest, refused forks reported by \
                               the agent"
                        .into();
                }
                _ => {}
            }
        }
        e.push(Enforcement {
            limit: "guestKernel",
            enforced: true,
            how: format!(
                "one {} per instance ({}), its own guest kernel, no network card; the instance \
                 as uid 65534 with Landlock and seccomp inside the guest as in a container",
                self.vmm_name(),
                match self.cfg.accel {
                    Accel::Kvm => "KVM",
                    Accel::Tcg => "software emulation: a test mode, about 100 times slower",
                }
            ),
        });
        e.push(match self.run_as {
            Some(id) => Enforcement {
                limit: "unprivileged",
                enforced: true,
                how: format!(
                    "the VM's launcher, its VMM and vsock backend run as host uid {} gid {}, \
                     no supplementary groups, no capabilities",
                    id.uid, id.gid
                ),
            },
            None => Enforcement {
                limit: "unprivileged",
                enforced: false,
                how: "at-rund is not root, so the VMM runs as at-rund's own user".into(),
            },
        });
        e
    }

    async fn warm(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, SandboxError> {
        let started_at = Instant::now();
        let runtime = self.cfg.runtimes.get(spec.runtime)?;
        let image = self.image_of(spec.runtime)?;
        check_secret_names(runtime, &spec.env)?;
        if !spec.permissions.read.is_empty() || !spec.permissions.write.is_empty() {
            return Err(SandboxError::StartFailed(format!(
                "{NO_DATA_PATHS} (manifest read/write) into the guest yet; run this bundle under \
                 isolation = \"container\""
            )));
        }
        let (socket, shim) = process::work_paths(&spec, runtime.shim())?;
        // The VMM's sockets are the longest names in the work dir.
        let longest = spec
            .work_dir
            .join(format!("{VSOCK}_{}", guest::EGRESS_PORT));
        if longest.as_os_str().len() > process::MAX_SOCKET_PATH {
            return Err(SandboxError::StartFailed(format!(
                "the microVM's vsock socket path is longer than {} bytes; configure a shorter data dir",
                process::MAX_SOCKET_PATH
            )));
        }
        process::prepare_work_dir(&spec, &socket, &shim, runtime.shim().source, self.run_as)
            .await?;
        let fail = |e: SandboxError| {
            let _ = std::fs::remove_dir_all(&spec.work_dir);
            e
        };
        if let Some(id) = self.run_as {
            self.check_reachable(&spec, image, id).map_err(fail)?;
        }

        let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        let mut proxy_url = None;
        if let Some(proxy) = &self.egress {
            // The guest's connections to the host's port 3128 arrive here.
            let socket = atrund_microvm::vsock::guest_port_path(
                &spec.work_dir.join(VSOCK),
                guest::EGRESS_PORT,
            );
            let f = crate::egress::forwarded(
                proxy,
                &spec,
                &socket,
                crate::container::PROXY_PORT,
                self.run_as,
            )
            .map_err(fail)?;
            keep = f.keep;
            proxy_url = Some(f.proxy_url);
        }
        let VmSetup { plan, env, files } = self
            .plan(&spec, runtime, image, &shim, proxy_url.as_deref())
            .map_err(fail)?;
        // Public (0644): the VMM reads them as the instances' uid; they hold no secret value.
        for (name, bytes) in files {
            hostfs::write_file_atomic(&spec.work_dir, name, &bytes, 0o644)
                .map_err(|e| fail(process::io_err("write", &spec.work_dir.join(name), e)))?;
        }
        let json = serde_json::to_vec(&plan)
            .map_err(|e| fail(SandboxError::StartFailed(format!("vm plan: {e}"))))?;
        // Public (0644): the launcher reads it as the instances' uid; it holds no secret value.
        hostfs::write_file_atomic(&spec.work_dir, PLAN, &json, 0o644)
            .map_err(|e| fail(process::io_err("write", &spec.work_dir.join(PLAN), e)))?;

        let mut cmd = tokio::process::Command::new(&self.cfg.init.0);
        cmd.args(&self.cfg.init.1)
            .arg(crate::vm_launcher::VMM_ARG)
            .arg(spec.work_dir.join(PLAN))
            // The instance's environment, secrets included: the launcher sends its own to the
            // guest, so values stay out of every command line.
            .env_clear()
            .envs(env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let guest_mib = Self::guest_mib(image, spec.memory_mib);
        process::launch(Launch {
            spec: &spec,
            cmd,
            program: &self.cfg.init.0,
            socket: spec.work_dir.join(VSOCK),
            cgroups: self.cgroups.as_ref(),
            nofile: self
                .nofile_hard
                .map_or(spec.limits.open_files, |h| spec.limits.open_files.min(h)),
            started_at,
            keep,
            inherit: Vec::new(),
            run_as: self.run_as,
            confine: None,
            gate: None,
            // The launcher forks the VMM: both must start inside.
            join: Join::BeforeExec,
            spares: None,
            vm: Some(VmLaunch {
                vsock_port: guest::CALLS_PORT,
                host_limits: CgroupLimits {
                    memory_mib: guest_mib + self.vmm_overhead_mib(),
                    pids: HOST_PIDS,
                    cpu_quota_percent: spec.limits.cpu_quota_percent,
                },
                exit_report: spec.work_dir.join(EXIT_REPORT),
            }),
        })
        .await
    }
}
