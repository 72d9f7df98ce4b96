//! Finding the host programs the sandbox runs (Deno, bwrap, the volume tools) on `PATH`.
//!
//! Owns: the lookup and the "is an executable file" test. Must not: run anything.

use std::path::{Path, PathBuf};

/// Whether `p` is a regular file with an execute bit.
pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A configured program: a path (anything with a `/`) as given, else the first executable of
/// that name on `PATH`.
pub fn find_program(configured: &str) -> Option<PathBuf> {
    let p = Path::new(configured);
    if p.components().count() > 1 {
        Some(p.to_path_buf())
    } else {
        find_executable(configured, &[])
    }
}

/// The first executable `name` in `PATH`'s dirs, then in `also` (dirs a service's `PATH` may
/// lack, such as `/usr/sbin`).
pub(crate) fn find_executable(name: &str, also: &[&str]) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(also.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}
