//! `isolation = "microvm"` through the daemon: `at-rund dev` of the hello example with
//! `[microvm]` pointing at QEMU under software emulation (`accel = "tcg"`) and the kernel and
//! vhost-device-vsock that scripts/setup.sh puts in `tools/microvm/` (or
//! `ATRUND_TEST_MICROVM_DIR`). The guest image is built from this very at-rund binary, which is
//! also each VM's launcher on the host. Skipped without the tools, failed instead under CI=true.
//! The hostile cases of the backend are in crates/sandbox/tests/microvm.rs; docs/microvm.md.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_the_hello_example_from_a_qemu_microvm() {
    let Some(t) = atrund_testnet::microvm_tools() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let hello = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hello")
        .canonicalize()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", hello.to_str().unwrap(), "--name", "hello"])
        .envs(t.runner_env())
        .env("ATRUND_MICROVM_CONSOLE", "true")
        .env("ATRUND_POOL_START_TIMEOUT_MS", "90000");
    // The start builds the guest image and boots a probe VM, under emulation.
    let mut d = Daemon::spawn_within(&mut cmd, false, Duration::from_secs(180));

    let (s, v) = common::get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["isolation"], "microvm", "{v}");
    let lines = v["enforcement"].as_array().cloned().unwrap_or_default();
    let line = |name: &str| lines.iter().find(|l| l["limit"] == name).cloned();
    // The start booted a probe VM before serving.
    let isolation = line("isolation").expect("an isolation line");
    assert!(
        isolation["how"]
            .as_str()
            .unwrap_or("")
            .contains("a probe VM booted and answered"),
        "{isolation}"
    );
    let kernel = line("guestKernel").expect("a guestKernel line");
    assert_eq!(kernel["enforced"], true, "{kernel}");
    let memory = line("memory").expect("a memory line");
    assert!(
        memory["how"]
            .as_str()
            .unwrap_or("")
            .contains("inside the guest"),
        "{memory}"
    );

    let t = Instant::now();
    let (s, v) = common::get(&d.url("/bundle/local/hello/latest/greet?name=Ada")).await;
    let cold = t.elapsed();
    assert_eq!(s, 200, "{v}\n{}", d.log());
    assert_eq!(v["message"], "Hello, Ada!", "{v}");
    let t = Instant::now();
    let (s, _) = common::get(&d.url("/bundle/local/hello/latest/greet?name=Bo")).await;
    let warm = t.elapsed();
    assert_eq!(s, 200);
    eprintln!("MEASURED (at-rund dev, microvm under TCG): cold call {cold:?}, warm call {warm:?}");

    let log = d.stop();
    assert!(!log.contains("panicked"), "{log}");
    // The VMs went with the daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = data.path().to_string_lossy().into_owned();
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle) && c.contains("qemu"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VMs outlived the daemon: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `at-rund doctor` with a microVM configured runs the start's own steps (a probe VM included)
/// and says what it found; with a kernel that cannot boot, it fails the isolation check.
#[test]
fn doctor_probes_a_configured_microvm() {
    let Some(t) = atrund_testnet::microvm_tools() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let doctor = |kernel: &Path| {
        let out = common::command(&deno, data.path())
            .arg("doctor")
            .env("ATRUND_LOG", "error")
            .envs(t.runner_env())
            .env("ATRUND_MICROVM_KERNEL", kernel)
            .env("ATRUND_POOL_START_TIMEOUT_MS", "90000")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let good = doctor(&t.kernel);
    let line = good
        .lines()
        .find(|l| l.contains("isolation: "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("ok    isolation: configured microvm: microvm, as configured")
            && line.contains("a probe VM booted and answered"),
        "{good}"
    );
    // A file that is no kernel: QEMU refuses it, and the check says so.
    let junk = data.path().join("not-a-kernel");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let bad = doctor(&junk);
    let line = bad
        .lines()
        .find(|l| l.contains("isolation: "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("FAIL  isolation: the sandbox probe failed") && line.contains("VM ended"),
        "{bad}"
    );
}
