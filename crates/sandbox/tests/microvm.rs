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

const MODULES: [&str; 6] = [
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

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

/// The tools, or `None` (with the reason printed) when they are missing outside CI.
fn tools() -> Option<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let dir = std::env::var_os("ATRUND_TEST_MICROVM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("tools/microvm"));
    let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
    let found = [
        qemu.clone(),
        dir.join("bin/vhost-device-vsock"),
        dir.join("vmlinux"),
        dir.join("modules"),
    ];
    if let Some(missing) = found.iter().find(|p| !p.exists()) {
        let why = format!(
            "{} is missing; scripts/setup.sh installs the microVM test tools",
            missing.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let [q, v, k, m] = found;
    Some((q, v, k, m))
}

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
    let Some((qemu, vhost, kernel, modules)) = tools() else {
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
            deno: common::deno_path(),
            modules: MODULES
                .iter()
                .map(|m| modules.join(format!("{m}.ko")))
                .collect(),
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
            Event::Exited(_) | Event::Failed(_) => panic!("the instance ended: {seen:?}"),
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
