//! `at-rund doctor` against this machine: a good config passes (exit 0) and names the isolation
//! `auto` picks; a taken port, a missing Deno, a key file of mode 0644 and an invalid config each
//! give their FAIL line and a non-zero exit; a data dir with loose modes is a warning and is left
//! as it was (the doctor changes nothing); `--json` says the same for machines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `at-rund doctor` with a cleared environment: the data dir, Deno, a loopback listener on a free
/// port, no admin listener, and a PLC on a loopback port that the address policy refuses (so the
/// test needs no network: the PLC check can only warn).
fn doctor(deno: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_at-rund"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATRUND_LISTEN", "127.0.0.1:0")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .env("ATRUND_DATA_DIR", data_dir)
        .env("ATRUND_DENO_PATH", deno)
        .env("ATRUND_PLC_URL", "http://127.0.0.1:9/")
        .env("ATRUND_ALLOW_HTTP", "1")
        .env("ATRUND_LOG", "warn")
        .arg("doctor");
    cmd
}

struct Run {
    /// The doctor's process id (its probe cgroups are named after it).
    pid: u32,
    ok: bool,
    stdout: String,
    all: String,
}

fn run(cmd: &mut Command) -> Run {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run at-rund doctor");
    let pid = child.id();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for at-rund doctor");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&stderr)
    );
    Run {
        pid,
        ok: status.success(),
        stdout,
        all,
    }
}

impl Run {
    /// The line of check `name`.
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l[l.len().min(6)..].starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no '{name}' line in:\n{}", self.all))
    }

    fn fails(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect()
    }
}

/// No cgroup dir of the doctor run `pid` is left in any hierarchy.
fn no_probe_cgroups_left(pid: u32) {
    let name = format!("at-rund-doctor-{pid}");
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
    for h in hierarchies {
        let dir = h.join(&name);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_good_config_passes_and_names_the_isolation_auto_picks() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = run(&mut doctor(&deno, &data));
    assert!(r.ok, "doctor failed:\n{}", r.all);
    assert!(r.fails().is_empty(), "{}", r.all);
    let iso = r.line("isolation");
    assert!(
        iso.starts_with("ok    isolation: configured auto; auto would pick container")
            || iso.starts_with("warn  isolation: configured auto; auto would pick none"),
        "{iso}"
    );
    assert!(r.line("deno").starts_with("ok"), "{}", r.all);
    assert!(
        r.line("data_dir").contains("does not exist yet"),
        "{}",
        r.all
    );
    assert!(r.line("key_file").starts_with("ok"), "{}", r.all);
    for name in [
        "config",
        "cgroups",
        "user",
        "bubblewrap",
        "landlock",
        "seccomp",
        "listen",
    ] {
        let l = r.line(name);
        assert!(l.starts_with("ok    ") || l.starts_with("warn  "), "{l}");
    }
    // Unreachable PLC: a warning, not a blocking problem.
    assert!(r.line("plc").starts_with("warn  plc: "), "{}", r.all);
    // This machine kind's /dev/kvm is PVM-backed: microVMs are refused, and doctor says why.
    let mvm = r.line("microvm");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            mvm.starts_with("warn  microvm: microvm refused: /dev/kvm is backed by PVM"),
            "{mvm}"
        );
    } else {
        assert!(
            mvm.starts_with("ok    ") || mvm.starts_with("warn  "),
            "{mvm}"
        );
    }
    // Read-only: the data dir is still not there, the probe's cgroups are gone.
    assert!(!data.exists(), "doctor created the data dir");
    no_probe_cgroups_left(r.pid);

    let j = run(doctor(&deno, &data).arg("--json"));
    assert!(j.ok, "{}", j.all);
    let doc: serde_json::Value = serde_json::from_str(&j.stdout).expect("json");
    assert_eq!(doc["blocking"], 0, "{}", j.all);
    let checks = doc["checks"].as_array().expect("checks");
    let iso = checks
        .iter()
        .find(|c| c["check"] == "isolation")
        .expect("isolation check");
    assert!(
        iso["found"]
            .as_str()
            .is_some_and(|f| f.contains("auto would pick")),
        "{iso}"
    );
}

#[test]
fn a_taken_port_fails() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let r = run(doctor(&deno, &tmp.path().join("data")).env("ATRUND_LISTEN", addr.to_string()));
    assert!(!r.ok, "{}", r.all);
    let l = r.line("listen");
    assert!(
        l.starts_with(&format!("FAIL  listen: cannot bind {addr}")),
        "{l}"
    );
    assert!(l.contains("ATRUND_LISTEN"), "{l}");
    assert_eq!(r.fails().len(), 1, "{}", r.all);
}

#[test]
fn a_missing_deno_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-deno");
    let r = run(&mut doctor(&missing, &tmp.path().join("data")));
    assert!(!r.ok, "{}", r.all);
    assert!(r.line("deno").starts_with("FAIL  deno: "), "{}", r.all);
    assert!(r.line("deno").contains("ATRUND_DENO_PATH"), "{}", r.all);
    assert!(r.line("isolation").starts_with("warn"), "{}", r.all);
}

#[test]
fn a_key_file_others_can_read_fails_and_loose_dirs_only_warn() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("bundles")).unwrap();
    std::fs::set_permissions(data.join("bundles"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = data.join("runner-key.json");
    std::fs::write(&key, "{}").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let r = run(&mut doctor(&deno, &data));
    assert!(!r.ok, "{}", r.all);
    let l = r.line("key_file");
    assert!(l.starts_with("FAIL  key_file: "), "{l}");
    assert!(l.contains("mode 0644") && l.contains("chmod 600"), "{l}");
    let d = r.line("data_dir");
    assert!(d.starts_with("warn  data_dir: "), "{d}");
    assert!(d.contains("bundles (mode 0755"), "{d}");
    assert_eq!(r.fails(), vec![l], "{}", r.all);
    // Nothing was tightened.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o644);
    assert_eq!(mode(&data.join("bundles")), 0o755);

    // Mode 0600: the key file passes (the loose dir still only warns).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(&mut doctor(&deno, &data));
    assert!(r.ok, "{}", r.all);
    assert!(r.line("key_file").starts_with("ok"), "{}", r.all);
}

#[test]
fn an_invalid_config_fails_with_the_check_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("at-rund.toml");
    std::fs::write(&conf, "isolation = \"sometimes\"\n").unwrap();
    let deno = tmp.path().join("deno");
    let r = run(doctor(&deno, &tmp.path().join("data"))
        .arg("--config")
        .arg(&conf));
    assert!(!r.ok, "{}", r.all);
    let l = r.line("config");
    assert!(l.starts_with("FAIL  config: invalid: "), "{l}");
    assert!(l.contains("isolation"), "{l}");
    // The same error as check-config.
    let cc = Command::new(env!("CARGO_BIN_EXE_at-rund"))
        .env_clear()
        .args(["check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!cc.status.success());
    let cc_err = String::from_utf8_lossy(&cc.stderr);
    let first = cc_err
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(&cc_err)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        l.contains(&first),
        "check-config said {cc_err}; doctor: {l}"
    );
    // The host checks still run.
    assert!(r.line("landlock").len() > 10);
}
