//! A real microVM under QEMU's software emulation (TCG): the guest image (`guest_image`: the
//! agent as `/init`, Deno, virtio and vsock modules), booted with Debian's cloud kernel and
//! `vhost-device-vsock`; the host sends an instance over vsock and gets the shim ready, a call
//! answered and an egress request carried to its end, then the VM powers off. docs/microvm.md.
//!
//! Needs `qemu-system-x86_64`, `vhost-device-vsock` and the kernel that scripts/setup.sh puts in
//! `tools/microvm/` (or `ATRUND_TEST_MICROVM_DIR`); skipped without them unless `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atrund_microvm::qemu::{vhost_device_vsock_args, Accel, QemuVm};
use atrund_microvm::vsock;
use atrund_sandbox::guest::{self, Event, FileSpec, Start};
use atrund_sandbox::guest_image::{build_initramfs, GuestPieces};
use atrund_sandbox::init::{InitConfig, ProxyForward};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BUNDLE: &str = r#"
export const hi = { method: "GET", handler: () => new Response("hi from a microVM") };
export const out = {
  method: "GET",
  handler: async () => new Response(await (await fetch("http://example.test/x")).text()),
};
// Each read: the text, or the error's name (the grants decide, not the bundle).
const read = (path) => {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    return `refused: ${e.name}`;
  }
};
// Outside Deno's --allow-read.
export const flags = { method: "GET", handler: () => new Response(read("/etc/hostname")) };
// Inside Deno's --allow-read, outside Landlock's rules: the guest kernel refuses it.
export const landlock = { method: "GET", handler: () => new Response(read("/run/agent/init.json")) };
"#;

async fn call(uds: &Path, path: &str) -> String {
    let s = vsock::connect(uds, guest::CALLS_PORT, Duration::from_secs(10))
        .await
        .unwrap();
    let mut s = BufReader::new(s);
    s.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let read = async {
        let mut status = String::new();
        s.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_runs_in_a_qemu_microvm() {
    let _one = ONE_VM.lock().await;
    let Some(common::MicroVmTools {
        qemu,
        vhost,
        kernel,
        modules,
    }) = common::microvm_tools()
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let image = w.join("guest.cpio");
    let t0 = Instant::now();
    build_initramfs(
        &image,
        &GuestPieces {
            agent: PathBuf::from(env!("CARGO_BIN_EXE_atrund-sandbox-init")),
            runtime: (common::deno_path(), "/bin/deno"),
            trees: Vec::new(),
            lib_users: Vec::new(),
            modules,
        },
    )
    .unwrap();
    let built = t0.elapsed();

    let (vhost_sock, uds) = (w.join("vhost.sock"), w.join("v.sock"));
    let mut vhost_child = tokio::process::Command::new(&vhost)
        .args(vhost_device_vsock_args(&vhost_sock, &uds, 3))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !vhost_sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "vhost-device-vsock never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The host's egress end, where the guest's connections to CID 2 port 3128 land.
    common::egress_stand_in(&vsock::guest_port_path(&uds, guest::EGRESS_PORT));

    let vm = QemuVm {
        qemu: qemu.clone(),
        kernel,
        initrd: Some(image),
        root_image: None,
        // The initramfs (~190 MiB with a debug agent) is held twice while it unpacks.
        memory_mib: 1024,
        vcpus: 1,
        accel: Accel::Tcg,
        vhost_socket: vhost_sock,
        append: String::new(),
        console: Some(w.join("console.log")),
    };
    let console = || std::fs::read_to_string(w.join("console.log")).unwrap_or_default();
    let booted_at = Instant::now();
    let mut qemu_child = tokio::process::Command::new(&qemu)
        .args(vm.args())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The agent listens once the guest has booted: until then the VMM closes the connection.
    let control = loop {
        match vsock::connect(&uds, guest::CONTROL_PORT, Duration::from_secs(5)).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    booted_at.elapsed() < Duration::from_secs(90),
                    "the guest agent never answered: {e}"
                );
                if let Ok(Some(status)) = qemu_child.try_wait() {
                    panic!(
                        "QEMU ended before the agent answered: {status}; console:\n{}",
                        console()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let agent_up = booted_at.elapsed();
    eprintln!("agent answered after {agent_up:?}");
    let start = Start {
        init: InitConfig {
            argv: [
                "/bin/deno",
                "run",
                "--no-prompt",
                "--no-remote",
                "--no-npm",
                "--cached-only",
                "--no-config",
                "--no-lock",
                "--allow-read=/work/main.js,/work/s.sock,/run/agent/init.json",
                "--allow-write=/work/s.sock",
                "--allow-net=unix:/work/s.sock,example.test:80",
                "/work/shim.ts",
                "/work/main.js",
                "/work/s.sock",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            read_only: ["/work", "/proc", "/dev", "/etc"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            execute: ["/bin", "/lib", "/lib64", "/usr"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            read_write: ["/work", "/tmp", "/dev/null"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            proxy: Some(ProxyForward {
                port: 3128,
                socket: "/run/agent/egress-in.sock".into(),
            }),
        },
        env: vec![
            ("DENO_DIR".into(), "/tmp/deno".into()),
            ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
            ("NO_COLOR".into(), "1".into()),
            ("HOME".into(), "/tmp".into()),
            ("HTTP_PROXY".into(), "http://127.0.0.1:3128".into()),
        ],
        files: vec![
            FileSpec {
                path: "/work/main.js".into(),
                len: BUNDLE.len() as u64,
            },
            FileSpec {
                path: "/work/shim.ts".into(),
                len: atrund_sandbox::SHIM_SOURCE.len() as u64,
            },
        ],
        shim_socket: "/work/s.sock".into(),
        limits: None,
        init_args: vec![],
    };
    let (r, mut wr) = tokio::io::split(control);
    guest::send_start(
        &mut wr,
        &start,
        &[BUNDLE.as_bytes(), atrund_sandbox::SHIM_SOURCE.as_bytes()],
    )
    .await
    .unwrap();
    wr.write_all(b"go\n").await.unwrap();
    let mut events = BufReader::new(r).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(90), events.next_line())
            .await
            .unwrap_or_else(|_| panic!("no ready within 90 s: {seen:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the control channel closed: {seen:?}"));
        let ev = Event::decode(&line).unwrap_or_else(|| panic!("not an event: {line}"));
        seen.push(ev.clone());
        match ev {
            Event::Stdout(l) if l.contains("\"ready\"") => break,
            Event::Exited(..) | Event::Failed(_) => panic!("the instance ended: {seen:?}"),
            _ => {}
        }
    }
    let ready = booted_at.elapsed();
    eprintln!("shim ready after {ready:?}");
    let t = Instant::now();
    assert_eq!(call(&uds, "/e/hi").await, "hi from a microVM");
    let first_call = t.elapsed();
    assert_eq!(
        call(&uds, "/e/out").await,
        "proxied: GET http://example.test/x HTTP/1.1"
    );
    // Confinement inside the guest: Deno's flags, and under them Landlock.
    assert_eq!(
        call(&uds, "/e/flags").await,
        "refused: NotCapable",
        "a read outside --allow-read"
    );
    assert_eq!(
        call(&uds, "/e/landlock").await,
        "refused: PermissionDenied",
        "a read Deno allows and Landlock does not"
    );
    wr.write_all(b"term\n").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), qemu_child.wait())
        .await
        .expect("the VM ends after its instance")
        .unwrap();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "MEASURED (TCG): image built in {built:?}; agent answered {agent_up:?} after QEMU's start; shim ready at {ready:?}; first call {first_call:?}"
    );
    let _ = vhost_child.kill().await;
}

/// One VM at a time: each one is a full emulated machine on a 2-core host.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The processes running with `dir` on their command line (the VM's launcher, VMM and vsock
/// backend of an instance whose work dir it is), with their command lines.
fn using(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push((pid, cmd));
            }
        }
    }
    out
}

fn processes_using(dir: &Path) -> Vec<String> {
    using(dir).into_iter().map(|(_, c)| c).collect()
}

fn pids_using(dir: &Path) -> Vec<u32> {
    using(dir).into_iter().map(|(p, _)| p).collect()
}

/// Waits until no process uses `dir`; panics with them after 10 s.
async fn all_gone(dir: &Path) {
    let t = Instant::now();
    loop {
        let left = processes_using(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The hostile suite's core cases through the executor, as the pool would run them: a bundle
/// served from its own microVM (QEMU under emulation), with its secret and nothing else in its
/// environment, Deno's permission flags and the guest's lack of a network holding, egress only
/// through the runner's real egress proxy (allowed, and refused by its address rules), and a
/// timeout and a memory breach named as in the other backends, each VM gone afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn the_microvm_backend_serves_and_contains_bundles() {
    use common::{call_json, get, hostile, loopback_service, q, secret_file, Env, Mode};
    let _one = ONE_VM.lock().await;
    let egress = atrund_egress::EgressConfig {
        // The allowed destination below is a service on this host's loopback.
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let Some(env) = Env::with_egress("mvm", Mode::MicroVm, egress).await else {
        return;
    };
    let canary = atrund_testnet::Canary::bind("0.0.0.0:0").unwrap();
    let (svc_port, _svc) = loopback_service().await;
    let secret = secret_file(&env);
    let b = hostile(&env, &secret);
    let spec = |id: &str, bundle: &Path| {
        let mut s = env.spec(id, bundle);
        s.start_timeout = Duration::from_secs(90);
        s.request_timeout = Duration::from_secs(30);
        s
    };

    let mut s = spec("vm-hostile", &b);
    s.permissions.net = vec![
        format!("loopback.test:{svc_port}"),
        "private.test:80".into(),
    ];
    s.permissions.ffi = true;
    s.env = vec![("API_KEY".into(), "sekrit-42".into())];
    let work = s.work_dir.clone();
    let t = Instant::now();
    let inst = env.warm(s).await;
    let cold = t.elapsed();
    // The VM's host processes (launcher, vsock backend, VMM) run as nobody, in the instance's
    // cgroup.
    let pids = pids_using(&work);
    assert!(pids.len() >= 3, "{:?}", processes_using(&work));
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == "65534"),
            "{pid}: {uid}"
        );
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(
            cg.contains("vm-hostile"),
            "{pid} is not in the instance's cgroup: {cg}"
        );
    }
    let t = Instant::now();
    let v = call_json(&*inst, q("envGet", &[("name", "API_KEY")]))
        .await
        .unwrap();
    let first_call = t.elapsed();
    assert_eq!(v["leaked"], "sekrit-42", "{v}");
    let mut warm = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        call_json(&*inst, q("envGet", &[("name", "API_KEY")]))
            .await
            .unwrap();
        warm.push(t.elapsed());
    }
    warm.sort();
    // Concurrent calls, each on a vsock connection of its own.
    let burst = (0..8).map(|_| call_json(&*inst, q("envGet", &[("name", "API_KEY")])));
    for r in futures::future::join_all(burst).await {
        assert_eq!(r.unwrap()["leaked"], "sekrit-42");
    }
    // Frozen while idle (the whole VM, in its host cgroup), thawed by the next call.
    if let Some(after) = env.mgr.freeze_after_idle() {
        tokio::time::sleep(after + Duration::from_millis(500)).await;
        let v = call_json(&*inst, q("envGet", &[("name", "API_KEY")]))
            .await
            .unwrap();
        assert_eq!(v["leaked"], "sekrit-42", "after the idle freeze: {v}");
    }

    let refused = |v: &serde_json::Value, name: &str| {
        assert_eq!(v["error"], name, "{v}");
        assert!(v.get("leaked").is_none(), "{v}");
    };
    // The secret is the only variable the bundle may read.
    let v = call_json(&*inst, q("envGet", &[("name", "HOME")]))
        .await
        .unwrap();
    refused(&v, "NotCapable");
    let v = call_json(&*inst, get("env", "/")).await.unwrap();
    refused(&v, "NotCapable");
    // Deno's flags inside the guest.
    let v = call_json(&*inst, q("read", &[("path", "/etc/hostname")]))
        .await
        .unwrap();
    refused(&v, "NotCapable");
    // The host's file is under /tmp, which Deno may read: the guest's /tmp, where it is not.
    let v = call_json(&*inst, q("read", &[("path", secret.to_str().unwrap())]))
        .await
        .unwrap();
    refused(&v, "NotFound");
    let v = call_json(&*inst, get("spawn", "/")).await.unwrap();
    refused(&v, "NotCapable");
    let canary_url = format!("http://127.0.0.1:{}/", canary.port);
    let v = call_json(&*inst, q("fetchUrl", &[("url", &canary_url)]))
        .await
        .unwrap();
    refused(&v, "NotCapable");
    // Egress through the real proxy: the listed service answers; a listed name that resolves
    // to a private address is refused by the proxy's address rules.
    let ok_url = format!("http://loopback.test:{svc_port}/");
    let v = call_json(&*inst, q("fetchUrl", &[("url", &ok_url)]))
        .await
        .unwrap();
    assert_eq!(v["leaked"], "200 hi", "{v}");
    let v = call_json(&*inst, q("fetchUrl", &[("url", "http://private.test/")]))
        .await
        .unwrap();
    let text = v["leaked"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("403") && text.contains("[EgressAddressBlocked]"),
        "{v}"
    );
    // Around Deno, straight to the kernel (FFI): the guest has no network card, so the host's
    // address is unreachable and its loopback is the guest's own.
    for host in ["127.0.0.1".to_string()]
        .into_iter()
        .chain(atrund_testnet::host_address().map(|ip| ip.to_string()))
    {
        let port = canary.port.to_string();
        let v = call_json(&*inst, q("osConnect", &[("host", &host), ("port", &port)]))
            .await
            .unwrap();
        assert!(v["rc"].as_i64().unwrap_or(0) < 0, "connect to {host}: {v}");
    }
    assert_eq!(canary.count(), 0, "the canary on the host saw a connection");
    // Inside the guest the instance is nobody, not root: it cannot signal the agent (PID 1).
    let v = call_json(&*inst, get("osUid", "/")).await.unwrap();
    assert_eq!(v["uid"], 65534, "{v}");
    let v = call_json(&*inst, q("osKill", &[("pid", "1")]))
        .await
        .unwrap();
    assert_eq!(
        (v["rc"].as_i64(), v["errno"].as_i64()),
        (Some(-1), Some(1)),
        "{v}"
    );
    assert!(env.proxy.stats().denied.contains_key("private"));
    inst.shutdown().await;
    all_gone(&work).await;
    assert!(!work.exists(), "the work dir outlived the instance");

    // The wall clock: the call fails with TimedOut and the VM is stopped.
    let limits = common::bundle("limits.js");
    let mut s = spec("vm-sleep", &limits);
    s.request_timeout = Duration::from_secs(3);
    let work = s.work_dir.clone();
    let inst = env.warm(s).await;
    let e = inst
        .execute(get("sleep", "/"))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(e, Some("TimedOut"));
    all_gone(&work).await;
    assert!(!inst.is_alive());

    // Memory: ArrayBuffers past the instance's 64 MiB, refused by the guest's cgroup.
    let mut s = spec("vm-hog", &limits);
    s.memory_mib = 64;
    let work = s.work_dir.clone();
    let inst = env.warm(s).await;
    let e = inst.execute(get("hog", "/")).await.err().map(|e| e.code());
    assert_eq!(e, Some("MemoryLimitExceeded"));
    all_gone(&work).await;

    eprintln!(
        "MEASURED (microvm executor, TCG): cold start {cold:?}; first call {first_call:?}; warm call p50 {:?}, max {:?}",
        warm[warm.len() / 2],
        warm[warm.len() - 1]
    );
}

/// `auto`'s probe: a VM that boots and answers passes; one that starts but whose guest never
/// answers (no vsock modules: the agent cannot listen) fails with the reason, however well QEMU
/// itself started.
#[tokio::test(flavor = "multi_thread")]
async fn the_boot_probe_needs_an_answer_from_the_guest() {
    use common::{microvm_executor, microvm_tools, Env, Mode};
    let _one = ONE_VM.lock().await;
    let Some(env) = Env::new("mvp", Mode::None).await else {
        return;
    };
    let Some(t) = microvm_tools() else {
        return;
    };
    let modules = t.modules.clone();
    let good = microvm_executor(&env.root.join("good"), t, modules).with_cgroups(env.mgr.clone());
    let took = good.probe().await.expect("the probe VM answers");
    eprintln!("MEASURED (TCG): the boot probe answered in {took:?}");

    let t = microvm_tools().unwrap();
    let mute = microvm_executor(&env.root.join("mute"), t, vec![]).with_cgroups(env.mgr.clone());
    let e = mute
        .probe()
        .await
        .expect_err("a guest without vsock cannot answer");
    assert!(e.contains("before its agent answered"), "{e}");
    eprintln!("the mute guest's probe: {e}");
}

/// A stand-in for Firecracker (which no registry this project reaches ships, and which would not
/// boot a guest on this PVM host anyway): it takes Firecracker's command line, reads the VM
/// description from the config file, and boots that VM with QEMU microvm and vhost-device-vsock
/// under emulation, vsock on the config's `uds_path`. `{QEMU}` and `{VHOST}` are filled in.
const FIRECRACKER_STAND_IN: &str = r#"#!/usr/bin/python3
import ctypes, json, os, signal, subprocess, sys, time
args = sys.argv[1:]
if len(args) != 3 or args[0] != "--no-api" or args[1] != "--config-file":
    sys.exit("stand-in: expected --no-api --config-file <file>, got %r" % args)
cfg = json.load(open(args[2]))
boot, machine, vsock = cfg["boot-source"], cfg["machine-config"], cfg["vsock"]
if cfg["drives"]:
    sys.exit("stand-in: only an initramfs guest is expected")
backend = os.path.join(os.path.dirname(vsock["uds_path"]), "stand-in-vhost.sock")
libc = ctypes.CDLL(None, use_errno=True)
subprocess.Popen(
    ["{VHOST}", "--vm", "guest-cid=%d,socket=%s,uds-path=%s" % (vsock["guest_cid"], backend, vsock["uds_path"])],
    preexec_fn=lambda: libc.prctl(1, signal.SIGKILL),
)
while not os.path.exists(backend):
    time.sleep(0.01)
mem = machine["mem_size_mib"]
os.execv("{QEMU}", ["{QEMU}",
    "-M", "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,memory-backend=mem",
    "-accel", "tcg", "-cpu", "max", "-smp", str(machine["vcpu_count"]), "-m", "%dM" % mem,
    "-object", "memory-backend-memfd,id=mem,size=%dM,share=on" % mem,
    "-global", "virtio-mmio.force-legacy=false",
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "none",
    "-kernel", boot["kernel_image_path"], "-initrd", boot["initrd_path"],
    "-append", boot["boot_args"] + " tsc_early_khz=2000000 lpj=4000000 no_timer_check",
    "-chardev", "socket,id=vsock,path=" + backend,
    "-device", "vhost-user-vsock-device,chardev=vsock"])
"#;

/// `microvm.vmm = "firecracker"` through the stand-in above. Proven: the config file at-rund
/// writes has Firecracker's shape (read back by the typed `VmConfig`, which refuses unknown
/// fields, and valid), it boots at-rund's guest with no root drive and with kernel arguments
/// that leave the agent's argv empty, and the launcher drives a VMM that brings its own vsock.
/// Not proven: Firecracker itself (docs/microvm.md).
#[tokio::test(flavor = "multi_thread")]
async fn firecracker_launch_through_a_stand_in_that_boots_the_same_vm_with_qemu() {
    use atrund_microvm::firecracker::{VmConfig, DEFAULT_BOOT_ARGS};
    use atrund_sandbox::{MicroVmConfig, MicroVmExecutor, Vmm};
    use common::{call_json, microvm_tools, q, Env, Mode};
    use std::os::unix::fs::PermissionsExt;
    let _one = ONE_VM.lock().await;
    let Some(env) = Env::new("mvf", Mode::None).await else {
        return;
    };
    let Some(t) = microvm_tools() else {
        return;
    };
    let bin = env.root.join("fc-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stand_in = bin.join("firecracker");
    std::fs::write(
        &stand_in,
        FIRECRACKER_STAND_IN
            .replace("{QEMU}", t.qemu.to_str().unwrap())
            .replace("{VHOST}", t.vhost.to_str().unwrap()),
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    // No host cgroup: it would be sized for Firecracker on KVM, not for QEMU's emulation.
    let exec = MicroVmExecutor::new(MicroVmConfig {
        vmm: Vmm::Firecracker {
            firecracker: stand_in,
        },
        kernel: t.kernel.clone(),
        modules: t.modules.clone(),
        accel: atrund_microvm::qemu::Accel::Kvm,
        vcpus: 1,
        runtimes: atrund_sandbox::DenoBinary::locate(Some(&common::deno_path()))
            .unwrap()
            .into(),
        init: (
            PathBuf::from(env!("CARGO_BIN_EXE_atrund-sandbox-init")),
            vec![],
        ),
        image_dir: env.root.join("microvm"),
        console: false,
    })
    .unwrap()
    .with_egress(env.proxy.clone());
    let mut spec = env.spec("vm-fc", &common::hello());
    spec.start_timeout = Duration::from_secs(90);
    spec.request_timeout = Duration::from_secs(30);
    let work = spec.work_dir.clone();
    let inst = atrund_sandbox::Executor::warm(&exec, spec).await.unwrap();
    let v = call_json(&*inst, q("greet", &[("name", "Ada")]))
        .await
        .unwrap();
    assert_eq!(v["message"], "Hello, Ada!", "{v}");

    let written = std::fs::read_to_string(work.join("firecracker.json")).unwrap();
    let vm: VmConfig = serde_json::from_str(&written).expect("Firecracker's shape");
    vm.validate().unwrap();
    assert!(vm.drives.is_empty(), "{written}");
    assert_eq!(
        vm.boot_source.initrd_path.as_deref(),
        Some(exec.image().path.as_path())
    );
    assert_eq!(
        vm.vsock.as_ref().map(|v| v.uds_path.clone()),
        Some(work.join("v.sock"))
    );
    // Every kernel argument is key=value, a dotted module parameter or `quiet`: no bare word
    // reaches the agent's argv (Firecracker's own default has `nomodule`).
    let args = &vm.boot_source.boot_args;
    assert!(DEFAULT_BOOT_ARGS.contains("nomodule"));
    for a in args.split_whitespace() {
        assert!(
            a.contains('=') || a.contains('.') || a == "quiet",
            "{a} in {args}"
        );
    }
    inst.shutdown().await;
    all_gone(&work).await;
}

/// A bundle that throws while it loads fails the start at once with the shim's reason, as in
/// the other backends, not at the start timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_that_fails_to_load_fails_the_start_at_once() {
    use common::{Env, Mode};
    let _one = ONE_VM.lock().await;
    let Some(env) = Env::new("mvl", Mode::MicroVm).await else {
        return;
    };
    let bundle = env.root.join("fails.js");
    std::fs::write(&bundle, "throw new Error('no');\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut spec = env.spec("vm-fails", &bundle);
    spec.start_timeout = Duration::from_secs(90);
    let t = Instant::now();
    let e = match env.exec.warm(spec).await {
        Ok(_) => panic!("a bundle that throws at load started"),
        Err(e) => e,
    };
    let took = t.elapsed();
    assert_eq!(e.code(), "StartFailed", "{e}");
    assert!(e.to_string().contains("failed to load"), "{e}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
