//! What the tests that build a Debian system share (ansible.rs, image.rs, systemd_run.rs): finding
//! the host tools they need (missing ones fail under CI=true), a debootstrap rootfs cached under
//! the target dir, and the podman flags this development machine needs for any container.

#![allow(dead_code)] // each test binary uses a different part

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// What this development machine needs for any podman container, whatever the image
/// (docs/operating.md "Container image", last paragraph): crun refuses its hybrid cgroup v1
/// layout, and podman runs without CAP_SYS_RESOURCE, so the default limits (above the
/// machine's) cannot be set.
pub const PODMAN_HOST_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=8192:8192",
];

pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `what` is missing: fails under CI=true, else says why the test is skipped.
pub fn missing(what: &str) {
    assert!(!ci(), "{what} (scripts/setup.sh --test installs it)");
    eprintln!("skipped: {what}");
}

/// `name` on PATH or in the sbin dirs; when it is not there, [`missing`] with `install`.
pub fn on_path(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(&format!("{name} is needed ({install})"));
    }
    found
}

/// /proc/self belongs to the process's effective uid.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout then stderr of `out`.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Unmounts whatever a failed debootstrap left mounted under `dir` (its /proc, /sys), so that
/// removing the dir cannot reach the host's.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let out = run(Command::new("umount").arg("-l").arg(p));
        assert!(out.status.success(), "umount {p}: {}", text(&out));
    }
}

/// A minimal Debian bookworm rootfs (`debootstrap --variant=minbase`) with the packages
/// `include`, made once under the target dir as `name` and reused while `marker` (a path inside
/// it) exists. Tests work on copies.
pub fn cached_rootfs(debootstrap: &Path, name: &str, include: &[&str], marker: &str) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-rootfs");
    let done = cache.join(name);
    if done.join(marker).exists() {
        return done;
    }
    let partial = cache.join(format!("{name}.partial"));
    if partial.exists() {
        unmount_under(&partial);
        std::fs::remove_dir_all(&partial).unwrap();
    }
    std::fs::create_dir_all(&cache).unwrap();
    let started = Instant::now();
    let out = run(Command::new(debootstrap)
        .arg("--variant=minbase")
        .arg(format!("--include={}", include.join(",")))
        // No mirror argument: debootstrap's default Debian mirror.
        .arg("bookworm")
        .arg(&partial));
    unmount_under(&partial);
    assert!(out.status.success(), "debootstrap failed:\n{}", text(&out));
    assert!(
        partial.join(marker).exists(),
        "debootstrap made no {marker}"
    );
    std::fs::rename(&partial, &done).unwrap();
    eprintln!(
        "debootstrap made the cached rootfs {name} in {:.0?}",
        started.elapsed()
    );
    done
}
