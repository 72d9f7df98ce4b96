//! Author volumes: each author's data dir (`data/<author>/`, where their bundles' data dirs
//! live) is an ext4 file system of its own, in an image file under `volumes/` mounted there
//! through a loop device. The file system's size is the author's share of the disk, so a bundle
//! that writes file after file gets `ENOSPC` at the cap, within the call, whatever the mode;
//! the host's disk and the other authors' shares are untouched. `RLIMIT_FSIZE` (per file) and
//! the soft per-request measurement (`tenants.max_data_bytes_per_author` in the HTTP layer)
//! stay in front of it.
//!
//! Why loop images: the hard alternatives need the host's file system to have been made for
//! them (ext4 `prjquota`, XFS project quotas) or a FUSE layer on every write. A sparse image
//! costs its used blocks only; making one takes ~80 ms and mounting ~0.2 s, once per author per
//! runner start (the first request of that author pays it). Needs root (mount), `/dev/loop-
//! control`, and `mke2fs`/`e2fsck`/`resize2fs`/`mount` (e2fsprogs, util-linux).
//!
//! The mounts live in a mount namespace of the runner's own (`enter_private_mount_namespace`,
//! at the start of `serve`/`dev`, before any thread): they are invisible on the host, and they
//! go away with the process however it ends (a loop device mounted with `-o loop` detaches
//! itself then), so a killed runner leaves no mount behind. Its instances inherit the namespace.
//!
//! Owns: the runner's mount namespace, the images, their mounts under `data/`, growing an image
//! when the cap grows, moving a data dir that predates its volume into it. Must not: decide the cap (config) or touch the
//! files inside beyond the copy at migration (instances own those).

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Why a volume could not be made, mounted or found usable.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// the host cannot mount volumes
    #[error("author volumes need {0}; set tenants.data_volumes = \"off\" to run with the soft data quota only")]
    Unsupported(String),
    /// a tool failed
    #[error("{what} failed for {path}: {detail}")]
    Tool {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// a file operation failed
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io { what, path, source }
}

/// Whether the runner entered a mount namespace of its own, and if not, why.
static PRIVATE_MOUNTS: OnceLock<Result<(), String>> = OnceLock::new();

/// Moves the calling process into a mount namespace of its own whose mounts do not propagate
/// back to the host (host mounts still show inside). Call it before any thread is started: a
/// thread that existed before keeps the old namespace. Needs root; the outcome is kept for
/// `AuthorVolumes::probe`.
pub fn enter_private_mount_namespace() -> Result<(), String> {
    let r = (|| {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("making / a slave mount: {e}"))
    })();
    let _ = PRIVATE_MOUNTS.set(r.clone());
    r
}

/// The tools and devices a volume needs, checked once at start (`AuthorVolumes::probe`).
const TOOLS: [&str; 4] = ["mke2fs", "e2fsck", "resize2fs", "mount"];

/// The smallest volume made: below it ext4's own metadata would take most of it. A smaller cap
/// gets a volume of this size (hard at that size; the per-request measurement still holds the
/// author to the cap, softly).
pub const MIN_VOLUME_BYTES: u64 = 16 * 1024 * 1024;

/// The mounted author volumes of one runner.
#[derive(Debug)]
pub struct AuthorVolumes {
    images: PathBuf,
    bytes: u64,
    mounted: Mutex<HashSet<PathBuf>>,
    /// Serializes making and mounting (rare: once per author per start).
    making: tokio::sync::Mutex<()>,
}

impl AuthorVolumes {
    /// Whether this host can make and mount volumes: root, a loop-control device, the tools.
    pub fn probe() -> Result<(), VolumeError> {
        if !crate::effective_root() {
            return Err(VolumeError::Unsupported(
                "root (mounting a file system)".into(),
            ));
        }
        match PRIVATE_MOUNTS.get() {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(VolumeError::Unsupported(format!(
                    "a mount namespace of the runner's own ({e})"
                )))
            }
            None => {
                return Err(VolumeError::Unsupported(
                    "a mount namespace of the runner's own (not entered at start)".into(),
                ))
            }
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err(VolumeError::Unsupported(
                "loop devices (/dev/loop-control is missing; load the loop module)".into(),
            ));
        }
        for tool in TOOLS {
            if which(tool).is_none() {
                return Err(VolumeError::Unsupported(format!(
                    "`{tool}` on PATH (Debian: e2fsprogs, mount)"
                )));
            }
        }
        Ok(())
    }

    /// Volumes of `cap` bytes each (at least [`MIN_VOLUME_BYTES`]), their images in `images`
    /// (made 0700 if missing).
    pub fn new(images: PathBuf, cap: u64) -> Result<Self, VolumeError> {
        let bytes = cap.max(MIN_VOLUME_BYTES);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&images)
            .map_err(io("create", &images))?;
        Ok(Self {
            images,
            bytes,
            mounted: Mutex::new(HashSet::new()),
            making: tokio::sync::Mutex::new(()),
        })
    }

    /// The size of each volume (the cap, or [`MIN_VOLUME_BYTES`] if that is more).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn is_mounted(&self, dir: &Path) -> bool {
        self.mounted
            .lock()
            .map(|m| m.contains(dir))
            .unwrap_or(false)
    }

    /// Makes sure `author_data` (`data/<author>`) is the author's mounted volume: made (from
    /// what the dir holds, if anything) on first use, grown when the cap grew, mounted once.
    pub async fn ensure(&self, author_data: &Path) -> Result<(), VolumeError> {
        if self.is_mounted(author_data) {
            return Ok(());
        }
        let _one = self.making.lock().await;
        if self.is_mounted(author_data) {
            return Ok(());
        }
        let (images, bytes, dir) = (self.images.clone(), self.bytes, author_data.to_path_buf());
        tokio::task::spawn_blocking(move || mount_volume(&images, bytes, &dir))
            .await
            .map_err(|e| VolumeError::Tool {
                what: "the volume task",
                path: author_data.to_path_buf(),
                detail: e.to_string(),
            })??;
        if let Ok(mut m) = self.mounted.lock() {
            m.insert(author_data.to_path_buf());
        }
        Ok(())
    }

    /// Unmounts every volume this runner mounted (at the end of a drain; the namespace would
    /// drop them at exit anyway). Lazily: files an instance still holds stay valid until
    /// closed.
    pub fn unmount_all(&self) {
        let dirs: Vec<PathBuf> = self
            .mounted
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for d in dirs {
            if let Err(e) = unmount(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "could not unmount an author volume");
            }
        }
    }
}

fn unmount(dir: &Path) -> Result<(), VolumeError> {
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| VolumeError::Io {
        what: "unmount",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// `tool` on `PATH`, else where Debian puts it (a service's `PATH` may lack the sbin dirs).
fn which(tool: &str) -> Option<PathBuf> {
    crate::executables::find_executable(tool, &["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
}

fn run(what: &'static str, path: &Path, cmd: &mut Command) -> Result<(), VolumeError> {
    let out = cmd.output().map_err(|e| VolumeError::Tool {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.is_empty() {
        detail = format!("exit status {}", out.status);
    }
    Err(VolumeError::Tool {
        what,
        path: path.to_path_buf(),
        detail,
    })
}

fn tool(name: &str) -> Command {
    Command::new(which(name).unwrap_or_else(|| PathBuf::from(name)))
}

/// Whether `dir` is a mount point (another device than its parent).
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    d.dev() != p.dev()
}

fn mount_volume(images: &Path, bytes: u64, dir: &Path) -> Result<(), VolumeError> {
    if is_mount_point(dir) {
        // Something the host mounted there (seen through the namespace): the operator's choice.
        tracing::warn!(dir = %dir.display(), "an author data dir is already a mount point; using it as it is, without a volume");
        return Ok(());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| VolumeError::Tool {
            what: "naming the volume",
            path: dir.to_path_buf(),
            detail: "the author dir has no usable name".into(),
        })?;
    let image = images.join(format!("{name}.ext4"));
    // A data dir that predates its volume: its files go into the new file system.
    let mut moved = None;
    if image.exists() {
        grow(&image, bytes)?;
    } else {
        let existing = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        make(&image, bytes, existing.then_some(dir))?;
        if existing {
            let old = images.join(format!("{name}.moved-{}", std::process::id()));
            std::fs::rename(dir, &old).map_err(io("move aside", dir))?;
            moved = Some(old);
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    run(
        "mount",
        &image,
        tool("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noexec,noatime"])
            .arg(&image)
            .arg(dir),
    )?;
    // Not the author's: nothing of theirs may be called lost+found (and e2fsck makes it again).
    let _ = std::fs::remove_dir(dir.join("lost+found"));
    if let Some(old) = moved {
        std::fs::remove_dir_all(&old).map_err(io("remove the copied", &old))?;
    }
    tracing::info!(dir = %dir.display(), image = %image.display(), bytes, "author volume mounted");
    Ok(())
}

/// Makes an ext4 image of `bytes` (sparse), filled from `from` when given; written under a
/// temporary name, so a half-made image is never taken for a volume.
fn make(image: &Path, bytes: u64, from: Option<&Path>) -> Result<(), VolumeError> {
    let tmp = image.with_extension("ext4.new");
    let _ = std::fs::remove_file(&tmp);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.set_len(bytes).map_err(io("size", &tmp))?;
    drop(f);
    let mut cmd = tool("mke2fs");
    // No reserved blocks (the author gets the whole share), owner root (the runner sets the
    // mode it wants at each instance start), lazy init (sparse stays sparse).
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-m",
        "0",
        "-L",
        "at-rund",
        "-E",
        "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
    ]);
    // From 256 MiB: 4 KiB blocks, one inode per 64 KiB and a 4 MiB journal leave ~97 % of
    // the image usable (the defaults ~93 %); smaller images keep the defaults (1 KiB blocks).
    if bytes >= 256 * 1024 * 1024 {
        cmd.args(["-b", "4096", "-i", "65536", "-J", "size=4"]);
    }
    if let Some(d) = from {
        cmd.arg("-d").arg(d);
    }
    cmd.arg(&tmp);
    if let Err(e) = run("mke2fs", image, &mut cmd) {
        let _ = std::fs::remove_file(&tmp);
        return Err(match (e, from) {
            (VolumeError::Tool { detail, .. }, Some(d)) => VolumeError::Tool {
                what: "moving the existing data dir into its volume",
                path: d.to_path_buf(),
                detail: format!(
                    "{detail} (does it hold more than tenants.max_data_bytes_per_author = {bytes} bytes?)"
                ),
            },
            (e, _) => e,
        });
    }
    std::fs::rename(&tmp, image).map_err(io("rename", &tmp))
}

/// Grows `image` to `bytes` when the cap grew (checked first, as `resize2fs` requires). A cap
/// below the image's size is not applied: shrinking could lose files (logged).
fn grow(image: &Path, bytes: u64) -> Result<(), VolumeError> {
    let len = std::fs::metadata(image).map_err(io("read", image))?.len();
    if len > bytes {
        tracing::warn!(image = %image.display(), size = len, cap = bytes,
            "author volume is larger than tenants.max_data_bytes_per_author; it is not shrunk (docs/limits.md)");
    }
    if len >= bytes {
        return Ok(());
    }
    // 0: clean, 1: errors corrected; anything else stops the resize.
    let st = tool("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .output()
        .map_err(io("check", image))?;
    if !matches!(st.status.code(), Some(0 | 1)) {
        return Err(VolumeError::Tool {
            what: "e2fsck",
            path: image.to_path_buf(),
            detail: String::from_utf8_lossy(&st.stdout).trim().to_string(),
        });
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(bytes))
        .map_err(io("grow", image))?;
    run("resize2fs", image, tool("resize2fs").arg("-f").arg(image))?;
    tracing::info!(image = %image.display(), from = len, to = bytes, "author volume grown");
    Ok(())
}
