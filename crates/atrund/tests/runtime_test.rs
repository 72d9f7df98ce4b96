//! `at-rund runtime-test`, the runtime conformance kit, run as a user would: the real binary, a
//! real Deno, real cgroups (root), each backend chosen by `ATRUND_ISOLATION`. Every case must
//! print PASS and the command must succeed; a runtime without a kit is refused. The verdicts
//! themselves (that a wrong answer is a FAIL) are unit-tested in `runtime_test.rs`.

use std::path::Path;
use std::process::Command;

fn kit(deno: &Path, env: &[(&str, String)]) -> (bool, String, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_at-rund"))
        .arg("runtime-test")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATRUND_DATA_DIR", data.path())
        .env("ATRUND_DENO_PATH", deno)
        .env("ATRUND_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// All PASS, none FAIL, the number of cases the kit has, and the backend named.
fn all_pass(isolation: &str, (ok, stdout, stderr): (bool, String, String)) {
    assert!(ok, "{stdout}\n{stderr}");
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(!stdout.contains("FAIL "), "{stdout}");
    assert_eq!(passed, 22, "{stdout}");
    assert!(
        stdout.starts_with(&format!("runtime deno, isolation {isolation} (")),
        "{stdout}"
    );
    assert!(stderr.contains("all 22 cases passed"), "{stderr}");
}

#[test]
fn deno_passes_the_kit_in_none_and_container_modes() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let Some(()) = atrund_testnet::root("cgroup limits and the container's uid switch") else {
        return;
    };
    for isolation in ["none", "container"] {
        all_pass(
            isolation,
            kit(&deno, &[("ATRUND_ISOLATION", isolation.to_string())]),
        );
    }
    let (ok, _, stderr) = kit(&deno, &[]);
    assert!(ok, "{stderr}");
}

#[test]
fn deno_passes_the_kit_in_a_qemu_microvm() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let Some(()) = atrund_testnet::root("cgroup limits and the VM's uid switch") else {
        return;
    };
    let Some(t) = atrund_testnet::microvm_tools() else {
        return;
    };
    let mut env = t.runner_env();
    env.push(("ATRUND_POOL_START_TIMEOUT_MS", "120000".into()));
    all_pass("microvm", kit(&deno, &env));
}

#[test]
fn a_runtime_without_a_kit_is_refused() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_at-rund"))
        .args(["runtime-test", "--runtime", "node"])
        .env_clear()
        .env("ATRUND_DENO_PATH", &deno)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runtime 'node' has no kit"), "{stderr}");
}
