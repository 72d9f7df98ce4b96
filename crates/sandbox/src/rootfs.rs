//! The minimal root file system of container instances, assembled by at-rund itself (no Docker,
//! no Nix, no debootstrap): the shared libraries that `ldd` lists for the runtime binary and for
//! the init binary, copied under `<state dir>/<hash>/` at their usual paths, plus empty mount
//! points. The binaries themselves are not copied (Deno is ~100 MB): bwrap binds them read-only
//! onto `/bin/deno` and `/sbin/init` at each start. The hash covers every source path, size and
//! mtime, so an upgraded Deno, at-rund or libc gets a fresh tree; older trees are removed.
//!
//! Owns: `<state dir>/`. Must not: write anywhere else, or keep anything of a bundle.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::SandboxError;

/// Dirs every root has: mount points for bwrap, and places Deno looks at.
const DIRS: &[&str] = &[
    "bin", "sbin", "etc", "proc", "dev", "tmp", "work", "deno", "bundle", "data",
];
/// Where bwrap binds the runtimes and the init binary.
pub(crate) const DENO_IN_ROOT: &str = "/bin/deno";
pub(crate) const NODE_IN_ROOT: &str = "/bin/node";
pub(crate) const PYTHON_IN_ROOT: &str = "/bin/python3";
pub(crate) const INIT_IN_ROOT: &str = "/sbin/init";

/// Where a runtime's binary is inside the root.
pub(crate) fn runtime_in_root(kind: crate::RuntimeKind) -> &'static str {
    match kind {
        crate::RuntimeKind::Deno => DENO_IN_ROOT,
        crate::RuntimeKind::Node => NODE_IN_ROOT,
        crate::RuntimeKind::Python => PYTHON_IN_ROOT,
    }
}

/// An assembled root.
#[derive(Debug, Clone)]
pub struct Rootfs {
    path: PathBuf,
    libs: Vec<PathBuf>,
}

fn err(msg: String) -> SandboxError {
    SandboxError::StartFailed(msg)
}

/// A name for a set of host files that changes when any of them does: a hash (FNV-1a) of `seed`
/// and each file's path, size and modification time (no content read: the files are large).
pub(crate) fn files_key(seed: &[u8], files: &[&Path]) -> Result<u64, SandboxError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(seed);
    for p in files {
        let m =
            std::fs::metadata(p).map_err(|e| err(format!("cannot stat '{}': {e}", p.display())))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        feed(p.as_os_str().as_encoded_bytes());
        feed(&m.len().to_le_bytes());
        feed(&mtime.to_le_bytes());
    }
    Ok(h)
}

impl Rootfs {
    /// The root for `binaries` under `state_dir`: reused when already built, else built
    /// (atomically: in a temp dir, then renamed). Other roots in `state_dir` are removed.
    /// `mount_dirs`: empty dirs made in the root, where host dirs are bound at start.
    pub fn assemble(
        state_dir: &Path,
        binaries: &[&Path],
        mount_dirs: &[&Path],
    ) -> Result<Self, SandboxError> {
        let mut libs = Vec::new();
        for b in binaries {
            for l in needed_libs(b)? {
                if !libs.contains(&l) {
                    libs.push(l);
                }
            }
        }
        let files: Vec<&Path> = binaries
            .iter()
            .copied()
            .chain(libs.iter().map(|p| p.as_path()))
            .collect();
        let seed: Vec<u8> = mount_dirs
            .iter()
            .flat_map(|d| d.as_os_str().as_encoded_bytes().iter().copied().chain([0]))
            .collect();
        let h = files_key(&seed, &files)?;
        let name = format!("{h:016x}");
        std::fs::create_dir_all(state_dir)
            .map_err(|e| err(format!("cannot create '{}': {e}", state_dir.display())))?;
        // Whatever the umask: bwrap runs as the instances' uid (a root runner's `RunAs`) and must
        // pass through to the root it binds. What is here is public (the host's libraries).
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(format!("cannot open '{}' (0755): {e}", state_dir.display())))?;
        let path = state_dir.join(&name);
        if !path.join("bin").is_dir() {
            let tmp = state_dir.join(format!(".tmp-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            build(&tmp, &libs, mount_dirs)
                .map_err(|e| err(format!("cannot build the root in '{}': {e}", tmp.display())))?;
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another runner with the same state dir built it first.
                if !path.join("bin").is_dir() {
                    return Err(err(format!("cannot install '{}': {e}", path.display())));
                }
            }
        }
        // Roots of older binaries, and temp dirs of a crash.
        if let Ok(entries) = std::fs::read_dir(state_dir) {
            for e in entries.flatten() {
                if e.file_name() != name.as_str() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Self { path, libs })
    }

    /// The root dir on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The libraries copied in (host paths; the same paths inside).
    pub fn libs(&self) -> &[PathBuf] {
        &self.libs
    }
}

fn build(root: &Path, libs: &[PathBuf], mount_dirs: &[&Path]) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for d in DIRS {
        std::fs::create_dir_all(root.join(d))?;
    }
    for d in mount_dirs {
        std::fs::create_dir_all(root.join(d.strip_prefix("/").unwrap_or(d)))?;
    }
    for f in [DENO_IN_ROOT, NODE_IN_ROOT, PYTHON_IN_ROOT, INIT_IN_ROOT] {
        let p = root.join(f.trim_start_matches('/'));
        std::fs::write(&p, b"")?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    for lib in libs {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the root holds plain files at the paths the loader asks for.
        std::fs::copy(lib, &dest)?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The shared libraries `binary` loads, as absolute paths, from `ldd` (glibc's loader does the
/// resolving, so the answer is the one the binary gets at run time).
pub(crate) fn needed_libs(binary: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run `ldd` to find the libraries of '{}': {e}; install libc-bin",
                binary.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !text.contains("statically linked") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(err(format!(
            "`ldd {}` failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse_ldd(&text).map_err(|lib| {
        err(format!(
            "'{}' needs {lib}, which was not found on this machine",
            binary.display()
        ))
    })
}

/// Paths from `ldd` output; `Err(name)` for a library reported missing.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest.split(" (").next().unwrap_or("")
            }
            None => line.split(" (").next().unwrap_or(""),
        };
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libdl.so.2"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1"
        );
    }

    #[test]
    fn assembles_once_and_sweeps_old_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("rootfs");
        std::fs::create_dir_all(state.join("0123456789abcdef")).unwrap();
        let sh = Path::new("/bin/sh");
        let a = Rootfs::assemble(&state, &[sh], &[]).unwrap();
        assert!(a.path().join("bin/deno").is_file());
        assert!(a.path().join("sbin/init").is_file());
        assert!(!a.libs().is_empty());
        for l in a.libs() {
            assert!(a.path().join(l.strip_prefix("/").unwrap()).is_file());
        }
        assert!(!state.join("0123456789abcdef").exists());
        let b = Rootfs::assemble(&state, &[sh], &[]).unwrap();
        assert_eq!(a.path(), b.path());
    }
}
