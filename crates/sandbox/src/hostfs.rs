//! Files and dirs the host opens, creates or connects to on an instance's behalf, handled so
//! that nothing an instance can write is ever followed (docs/security.md, "Nothing the host
//! follows"): a bundle allowed `run` or `ffi`, or any process in its sandbox, can swap a name
//! for a symlink between a check and a use.
//!
//! - the manifest's `read`/`write` paths are opened beneath the data dir with `openat2`
//!   (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), one component at a time, creating missing
//!   write dirs (0700) on the way; Landlock rules (`none`) and bwrap binds (`container`,
//!   `--bind-fd`) are made from those descriptors, never from the names again;
//! - files the host writes (the shim) are created `O_CREAT | O_EXCL | O_NOFOLLOW` under a temp
//!   name and renamed into place, in dirs no instance can write;
//! - the shim's socket is opened once `O_PATH | O_NOFOLLOW`, checked to be a socket, and every
//!   later connection goes to that inode (`/proc/self/fd/<n>`), whatever the name points to by
//!   then;
//! - the dirs the host creates are 0700, whatever the umask; when instances of either backend run
//!   as an unprivileged uid (`RunAs`), the instance's own dirs (work, data, Deno dir, created
//!   write paths) are given to it by descriptor (`fchown` on what was opened `O_NOFOLLOW`, never
//!   a name), and their parents are made passable (not listable) for its group alone (0710); the
//!   container's egress socket is given to it without following its name.
//!
//! Owns: the opening and creating above, and the check that an instance's uid can reach what
//! its start needs ([`check_reachable`]). Must not touch: what is granted (the backends decide),
//! or anything after fork (`sys`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

use crate::{InstanceSpec, RunAs, SandboxError};

/// Mode of every dir the host creates: the runner's user alone.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` and its missing parents, each 0700 (the umask can only remove bits).
pub(crate) fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Mode of a runner dir the instances' group passes through without listing it.
pub(crate) const PASSABLE_DIR: u32 = 0o710;

fn open_dir_nofollow(dir: &Path) -> std::io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Creates `dir` (missing parents 0700) and gives it to `id`: owner and group, mode 0700, set on
/// the opened descriptor, so a symlink at the name is refused rather than followed.
pub(crate) fn owned_dir(dir: &Path, id: RunAs) -> std::io::Result<()> {
    private_dir_all(dir)?;
    let fd = open_dir_nofollow(dir)?;
    nix::unistd::fchown(
        fd.as_fd(),
        Some(nix::unistd::Uid::from_raw(id.uid)),
        Some(nix::unistd::Gid::from_raw(id.gid)),
    )?;
    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(PRIVATE_DIR))?;
    Ok(())
}

/// Lets group `gid` pass through `dir` (its owner stays; group `gid`, mode 0710): the instances
/// reach what they own beneath without seeing the names of the rest.
pub(crate) fn passable_dir(dir: &Path, gid: u32) -> std::io::Result<()> {
    let fd = open_dir_nofollow(dir)?;
    nix::unistd::fchown(fd.as_fd(), None, Some(nix::unistd::Gid::from_raw(gid)))?;
    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(PASSABLE_DIR))?;
    Ok(())
}

/// A runner dir on the way to instances' files (`data_dir` and its subdirs): passable for the
/// instances' group `group` (0710, [`passable_dir`]), or with no group the runner's alone
/// (0700). Set on the dir opened `O_NOFOLLOW`, never through a symlink at the name.
pub fn runner_dir_mode(dir: &Path, group: Option<u32>) -> std::io::Result<()> {
    match group {
        Some(gid) => passable_dir(dir, gid),
        None => {
            let fd = open_dir_nofollow(dir)?;
            Ok(nix::sys::stat::fchmod(
                fd.as_fd(),
                Mode::from_bits_truncate(PRIVATE_DIR),
            )?)
        }
    }
}

/// When `id` cannot reach `path` with the `want` bits (4 read, 1 execute; a file under `/root`,
/// 0700), a copy it can reach in `dir` ([`stage_file`], mode `mode`), with the reason; `None`
/// when `path` is reachable where it is. For what instances read or run that the runner was
/// given by path: the Deno binary, a dev bundle's code.
pub fn copy_if_unreachable(
    path: &Path,
    id: RunAs,
    want: u32,
    dir: &Path,
    prefix: &str,
    mode: u32,
) -> std::io::Result<Option<(PathBuf, String)>> {
    match unreachable_by(path, id, want) {
        None => Ok(None),
        Some(why) => Ok(Some((stage_file(path, dir, prefix, mode)?, why))),
    }
}

/// A copy of `src` in `dir` (a hard link where the file system and `src`'s mode allow), named `<prefix>-<size>-<mtime ns>` so a
/// changed source gets a new copy; made under a temporary name and renamed, mode `mode`.
pub fn stage_file(src: &Path, dir: &Path, prefix: &str, mode: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(src)?;
    let mtime = m
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec());
    let target = dir.join(format!("{prefix}-{}-{mtime}", m.len()));
    if std::fs::symlink_metadata(&target).is_ok_and(|t| t.is_file() && t.len() == m.len()) {
        return Ok(target);
    }
    let tmp = dir.join(format!(".{prefix}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    // A link shares the source's mode: only when that already grants `mode` (changing it would
    // change the operator's file).
    let linked = m.mode() & mode == mode && std::fs::hard_link(src, &tmp).is_ok();
    if !linked {
        std::fs::copy(src, &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}

/// Why `id` (no supplementary groups) cannot reach `path`: a dir on the way it may not search, or
/// `path` itself without the `want` bits (4 read, 1 execute). Plain modes (no ACLs); symlinks are
/// resolved first.
pub fn unreachable_by(path: &Path, id: RunAs, want: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let may = |p: &Path, bits: u32| -> Result<(), String> {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let shift = if m.uid() == id.uid {
            6
        } else if m.gid() == id.gid {
            3
        } else {
            0
        };
        if (m.mode() >> shift) & bits == bits {
            Ok(())
        } else {
            Err(format!(
                "{} is mode {:o}, owner {}:{}",
                p.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ))
        }
    };
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    dirs.into_iter()
        .try_for_each(|d| may(d, 1))
        .and_then(|()| may(&real, want))
        .err()
}

/// One thing an instance's uid must be able to do on the host before its start: the path, the
/// mode bits it needs on it (4 read, 1 execute or search, 0 only reach it), what for (the start
/// error says it) and what the operator does about it.
pub(crate) struct Needed<'a> {
    pub path: &'a Path,
    pub bits: u32,
    pub what: &'a str,
    pub fix: &'a str,
}

/// What every instance's host-side processes need as its uid: to read its bundle and reach its
/// work dir.
pub(crate) fn instance_needs(spec: &crate::InstanceSpec) -> [Needed<'_>; 2] {
    [
        Needed::new(
            spec.bundle_file.as_path(),
            0o4,
            "read the bundle",
            "keep the code where that user can read it (at-rund dev: the bundle's folder)",
        ),
        Needed::new(&spec.work_dir, 0o1, "reach its work dir", DATA_DIR_FIX),
    ]
}

impl<'a> Needed<'a> {
    pub(crate) fn new(path: &'a Path, bits: u32, what: &'a str, fix: &'a str) -> Self {
        Self {
            path,
            bits,
            what,
            fix,
        }
    }
}

/// The fix for a path under the data dir that an instance's uid cannot reach.
pub(crate) const DATA_DIR_FIX: &str =
    "put data_dir where that user can pass through every parent dir";

/// Fails the start with a clear error when `id` (both backends' `RunAs`) could not do one of
/// `needed` (say a data dir under `/root`, mode 0700), instead of the runtime or bwrap failing
/// obscurely. The error names the setting and the role; the log names the path.
pub(crate) fn check_reachable(
    instance: &str,
    id: RunAs,
    needed: &[Needed<'_>],
) -> Result<(), SandboxError> {
    for n in needed {
        if let Some(why) = unreachable_by(n.path, id, n.bits) {
            tracing::warn!(instance, uid = id.uid, gid = id.gid, path = %n.path.display(), %why, "the instance's user cannot {}", n.what);
            return Err(SandboxError::StartFailed(format!(
                "the instance's user (uid {}, sandbox.run_as_uid) cannot {}; {} \
                 (the runner's log names the path)",
                id.uid, n.what, n.fix
            )));
        }
    }
    Ok(())
}

/// Gives the socket the host bound at `path` to `id` (owner and group; its mode stays), so that
/// a process of that uid may connect (which needs write permission on the socket file). The name
/// is not followed: a symlink there is changed itself, not its target.
pub(crate) fn give_socket(path: &Path, id: RunAs) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let dir = open_dir_nofollow(dir)?;
    nix::unistd::fchownat(
        dir.as_fd(),
        name,
        Some(nix::unistd::Uid::from_raw(id.uid)),
        Some(nix::unistd::Gid::from_raw(id.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// A start failure about a host file, for the caller without the path (it can name the
/// author's DID and the runner's layout); the path and the OS error go to the log.
pub(crate) fn io_err(what: &str, p: &Path, e: impl std::fmt::Display) -> SandboxError {
    tracing::warn!(path = %p.display(), error = %e, "could not {what} an instance path");
    SandboxError::StartFailed(format!(
        "could not {what} one of the instance's files ({e}); the runner's log names the path"
    ))
}

/// One manifest path, opened beneath the data dir.
#[derive(Debug)]
pub(crate) struct DataPath {
    /// As the manifest names it (relative, plain names).
    pub rel: PathBuf,
    /// `O_PATH` descriptor of the file or dir itself.
    pub fd: OwnedFd,
    pub write: bool,
    pub is_dir: bool,
}

/// A manifest data path: relative, plain names only.
pub(crate) fn relative_data_path(rel: &str) -> Result<&Path, SandboxError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(SandboxError::StartFailed(format!(
            "data path '{rel}' must be relative, without '..' or '.'"
        )));
    }
    Ok(p)
}

fn refused_link(rel: &str) -> SandboxError {
    SandboxError::StartFailed(format!(
        "data path '{rel}' is or passes through a symlink, which the runner does not follow; remove it"
    ))
}

/// One component beneath `dir`, no symlink anywhere (the last one included: `ELOOP`; with
/// `O_NOFOLLOW`, `O_PATH` would open the link itself), no `..`, no magic links.
fn open_component(dir: &OwnedFd, name: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(dir.as_fd(), name, how)
}

/// Whether `fd` is a dir; anything but a dir or a regular file (a socket, a fifo, a device
/// node the bundle made) is not granted.
fn is_dir(fd: &OwnedFd) -> nix::Result<bool> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Ok(true),
        SFlag::S_IFREG => Ok(false),
        _ => Err(Errno::EINVAL),
    }
}

/// Opens the manifest's `read` and `write` paths beneath `spec.data_dir` (created 0700 if
/// missing), creating each missing `write` path as a dir (0700) as in both modes. A read path
/// that does not exist is left out; a symlink on the way refuses the start. A path listed for
/// both is opened once, writable.
///
/// With `owner` (the uid the instance runs as) every dir on the way to a `write` path, and the
/// path itself if a dir, is given to it ([`give_dir`]); `read` paths keep their owner (the
/// operator may place root-only files there on purpose).
pub(crate) fn open_data_paths(
    spec: &InstanceSpec,
    owner: Option<RunAs>,
) -> Result<Vec<DataPath>, SandboxError> {
    let p = &spec.permissions;
    if p.read.is_empty() && p.write.is_empty() {
        return Ok(Vec::new());
    }
    private_dir_all(&spec.data_dir).map_err(|e| io_err("create", &spec.data_dir, e))?;
    // The data dir's own path is the runner's (no instance can write its parents).
    let root: OwnedFd = nix::fcntl::open(
        &spec.data_dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", &spec.data_dir, e))?;
    let mut out: Vec<DataPath> = Vec::new();
    let entries = p
        .read
        .iter()
        .map(|r| (r, false))
        .chain(p.write.iter().map(|w| (w, true)));
    for (rel, write) in entries {
        let rel_path = relative_data_path(rel)?;
        let Some(opened) = open_one(&root, rel, rel_path, write, owner)? else {
            continue;
        };
        out.retain(|d| d.rel != rel_path);
        out.push(opened);
    }
    Ok(out)
}

fn open_one(
    root: &OwnedFd,
    rel: &str,
    rel_path: &Path,
    write: bool,
    owner: Option<RunAs>,
) -> Result<Option<DataPath>, SandboxError> {
    let fail = |e: Errno| match e {
        Errno::ELOOP | Errno::EXDEV => refused_link(rel),
        Errno::EINVAL => SandboxError::StartFailed(format!(
            "data path '{rel}' is neither a file nor a dir; remove it"
        )),
        e => SandboxError::StartFailed(format!("data path '{rel}' cannot be opened ({e})")),
    };
    let parts: Vec<&std::ffi::OsStr> = rel_path.iter().collect();
    let mut cur = root.try_clone().map_err(|e| {
        SandboxError::StartFailed(format!("data path '{rel}': descriptor copy failed ({e})"))
    })?;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let name = Path::new(part);
        // Inner components must be dirs; the last may be a file (it was granted as one).
        let flags = if last {
            OFlag::empty()
        } else {
            OFlag::O_DIRECTORY
        };
        let next = match open_component(&cur, name, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if write => {
                match nix::sys::stat::mkdirat(
                    cur.as_fd(),
                    name,
                    Mode::from_bits_truncate(PRIVATE_DIR),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
                open_component(&cur, name, OFlag::O_DIRECTORY).map_err(fail)?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(fail(e)),
        };
        if let (true, Some(id)) = (write, owner) {
            give_dir(&next, id).map_err(fail)?;
        }
        cur = next;
    }
    let is_dir = is_dir(&cur).map_err(fail)?;
    Ok(Some(DataPath {
        rel: rel_path.to_path_buf(),
        fd: cur,
        write,
        is_dir,
    }))
}

/// Gives a dir on the way to (or at) a `write` path to the instance's uid, unless it has it: the
/// bundle's own dirs, whoever made them (the host now, or an instance of a runner that ran them
/// as root). Only dirs, which cannot be hard links to something outside; files are left alone.
/// On the `O_PATH` descriptor itself (`AT_EMPTY_PATH`), never the name again.
fn give_dir(fd: &OwnedFd, id: RunAs) -> nix::Result<()> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    let dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if !dir || (st.st_uid, st.st_gid) == (id.uid, id.gid) {
        return Ok(());
    }
    nix::unistd::fchownat(
        fd.as_fd(),
        "",
        Some(nix::unistd::Uid::from_raw(id.uid)),
        Some(nix::unistd::Gid::from_raw(id.gid)),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
}

/// Writes `contents` to `dir/name` unless it already holds exactly that: into a new temp file
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`, so a name planted in advance is never followed), renamed
/// into place (a rename replaces the name, it never follows it). Instances starting together
/// may share `dir/name`; none sees a half-written file. A file with the right contents but
/// another mode is written again.
pub(crate) fn write_file_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let dirfd: OwnedFd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let current = nix::fcntl::openat(
        dirfd.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    if let Ok(fd) = current {
        let mut have = Vec::with_capacity(contents.len());
        let mut f = std::fs::File::from(fd);
        let same_mode =
            nix::sys::stat::fstat(f.as_fd()).is_ok_and(|st| st.st_mode & 0o7777 == mode);
        if same_mode && f.read_to_end(&mut have).is_ok() && have == contents {
            return Ok(());
        }
    }
    let tmp = temp_name(name);
    let fd = nix::fcntl::openat(
        dirfd.as_fd(),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    // Widened only once written (the umask could narrow a mode given at creation).
    let mut f = std::fs::File::from(fd);
    let written = f
        .write_all(contents)
        .and_then(|()| {
            nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(mode))
                .map_err(std::io::Error::from)
        })
        .and_then(|()| {
            nix::fcntl::renameat(dirfd.as_fd(), tmp.as_str(), dirfd.as_fd(), name)
                .map_err(std::io::Error::from)
        });
    if written.is_err() {
        let _ = nix::unistd::unlinkat(
            dirfd.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    written
}

/// `.<name>.<pid>-<n>-<random>`: unique among concurrent writers, not guessable in advance.
fn temp_name(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // std's hasher keys are random per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!(".{name}.{}-{n}-{:016x}", std::process::id(), h.finish())
}

/// The instance's socket, opened once without following a symlink and checked to be a socket;
/// connect to [`socket_fd_path`] of it afterwards.
pub(crate) fn open_socket(path: &Path) -> Result<OwnedFd, String> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("the instance's socket cannot be opened: {e}"))?;
    let st = nix::sys::stat::fstat(fd.as_fd())
        .map_err(|e| format!("the instance's socket cannot be examined: {e}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        tracing::warn!(path = %path.display(), "the instance's socket was replaced by something else (a symlink?); not following it");
        return Err("the instance's socket was replaced by something that is not a socket".into());
    }
    Ok(fd)
}

/// The path that reaches the inode of an `O_PATH` descriptor of this process.
pub(crate) fn socket_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_spec as spec;

    #[test]
    fn data_paths_are_created_opened_and_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = spec(tmp.path());
        s.permissions.write = vec!["out/x".into()];
        s.permissions.read = vec!["in".into(), "missing".into(), "out/x".into()];
        std::fs::create_dir_all(tmp.path().join("data")).unwrap();
        std::fs::write(tmp.path().join("data/in"), "r").unwrap();
        let got = open_data_paths(&s, None).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|d| (d.rel.clone(), d.write, d.is_dir))
            .collect();
        assert_eq!(
            names,
            [
                (PathBuf::from("in"), false, false),
                (PathBuf::from("out/x"), true, true)
            ]
        );
        assert!(tmp.path().join("data/out/x").is_dir());
        std::os::unix::fs::symlink("/etc", tmp.path().join("data/evil")).unwrap();
        for bad in ["evil", "evil/passwd"] {
            s.permissions.read = vec![bad.into()];
            let e = open_data_paths(&s, None).unwrap_err();
            assert!(e.to_string().contains("symlink"), "{bad}: {e}");
        }
        s.permissions.read = vec![];
        s.permissions.write = vec!["evil/new".into()];
        assert!(open_data_paths(&s, None).is_err());
        assert!(!Path::new("/etc/new").exists());
        for bad in ["", "/etc", "../x", "./a", "a/../../b"] {
            assert!(relative_data_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_writes_never_follow_a_planted_name() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "key").unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("shim.ts")).unwrap();
        write_file_atomic(&dir, "shim.ts", b"shim", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "key");
        assert_eq!(
            std::fs::read_to_string(dir.join("shim.ts")).unwrap(),
            "shim"
        );
        assert!(!dir.join("shim.ts").is_symlink());
        write_file_atomic(&dir, "shim.ts", b"shim", 0o644).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_file_with_the_right_contents_but_another_mode_is_rewritten() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("shim.ts");
        std::fs::write(&f, "shim").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_file_atomic(tmp.path(), "shim.ts", b"shim", 0o644).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn reachability_follows_owner_group_and_other_bits() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(tmp.path()).unwrap();
        let owner = RunAs {
            uid: me.uid(),
            gid: me.gid(),
        };
        let other = RunAs {
            uid: me.uid() + 1,
            gid: me.gid() + 1,
        };
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), "x").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(tmp.path(), 0o711);
        set(&dir.join("f"), 0o644);
        set(&dir, 0o700);
        assert!(unreachable_by(&dir.join("f"), owner, 4).is_none());
        let why = unreachable_by(&dir.join("f"), other, 4).unwrap();
        assert!(why.contains("mode 700"), "{why}");
        set(&dir, 0o701);
        assert!(unreachable_by(&dir.join("f"), other, 4).is_none());
        assert!(
            unreachable_by(&dir.join("f"), other, 1).is_some(),
            "not executable"
        );
        assert!(unreachable_by(&dir.join("missing"), owner, 4).is_some());
    }

    #[test]
    fn a_socket_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real.sock");
        let _l = std::os::unix::net::UnixListener::bind(&real).unwrap();
        let fd = open_socket(&real).unwrap();
        std::os::unix::net::UnixStream::connect(socket_fd_path(&fd)).unwrap();
        let link = tmp.path().join("link.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_socket(&link).is_err());
        std::fs::write(tmp.path().join("file"), "").unwrap();
        assert!(open_socket(&tmp.path().join("file")).is_err());
    }
}
