//! `ops/systemd/at-rund.service`: `systemd-analyze verify` accepts it (with ExecStart pointed at
//! the built binary in a temporary copy), its stop timeout covers the default drain, it reloads
//! with SIGHUP and is not Type=notify, its writable path is the env file's data dir, and
//! `systemd-analyze security --offline=yes` scores it as docs/operating.md says. Without
//! systemd-analyze the test is skipped, except under CI=true where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of `key=` in a unit or env file (the last one wins, as in systemd).
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-analyze is needed in CI (apt-get install -y systemd)"
        );
        eprintln!("skipped: no systemd-analyze");
    }
    found
}

/// The unit with ExecStart pointed at the built binary, in `dir`.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = read("ops/systemd/at-rund.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/at-rund "), "{unit}");
    let text = unit.replace(
        "ExecStart=/usr/local/bin/at-rund ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_at-rund")),
    );
    let path = dir.join("at-rund.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_fits_at_rund() {
    let unit = read("ops/systemd/at-rund.service");
    let env = read("ops/systemd/at-rund.env");
    assert_ne!(
        value(&unit, "Type"),
        Some("notify"),
        "at-rund has no sd_notify"
    );
    assert_eq!(
        value(&unit, "ExecReload"),
        Some("/bin/sh -c 'kill -HUP \"$MAINPID\"'")
    );
    assert_eq!(value(&unit, "KillSignal"), Some("SIGTERM"));
    assert_eq!(value(&unit, "KillMode"), Some("mixed"));
    assert_eq!(value(&unit, "Delegate"), Some("yes"));
    let stop = value(&unit, "TimeoutStopSec")
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("TimeoutStopSec=<n>s");
    let pool = atrund_config::Config::default().pool;
    assert!(
        stop * 1000 > pool.drain_grace_ms + pool.close_wait_ms,
        "TimeoutStopSec={stop}s does not cover drain_grace_ms + close_wait_ms"
    );
    assert_eq!(
        value(&unit, "ReadWritePaths"),
        value(&env, "ATRUND_DATA_DIR"),
        "the unit's writable path is the env file's data dir"
    );
}

#[test]
fn systemd_analyze_verifies_the_unit_and_scores_it_as_documented() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_copy(tmp.path());
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security --offline=yes: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let score = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for at-rund.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
        .to_string();
    let doc = read("docs/operating.md");
    assert!(
        doc.contains(&format!("exposure level **{score}**")),
        "docs/operating.md must record the exposure level {score}"
    );
}
