//! Local development bundles (`at-rund dev DIR`), the step of the data path that stands in for
//! identity + fetch when there is no PDS: a folder with a code file and `manifest.json`,
//! served at `/bundle/local/{name}/latest/{endpoint}` through the same pool and sandbox as
//! published bundles, with no PDS and no network.
//!
//! Owns: checking the folder on each request and noticing edits (the code's hash is part of the
//! instance key, so an edit is served by a fresh instance on the next request). Must not touch:
//! identity or fetching.
//!
//! A request asks an inotify watch on the files' folders whether anything touched them since
//! the last read (`watch`: one `read` that finds nothing), and reads and hashes them only when
//! something did. Where the watch cannot vouch for the files (a symlink, no inotify, a watched
//! folder moved away), a request stats the two files instead and reads them when a stat changed
//! (size, mtime, ctime, inode) or when the last read was too close to a write to trust the
//! timestamps (a second write within the file system's timestamp granularity would not show).

mod watch;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::Digest;

use crate::Manifest;

/// The local bundle's folder does not hold a bundle that can be served now: a file that cannot
/// be read, or a manifest that is not valid. The author fixes the folder; the next request reads
/// it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LocalBundleError(String);

impl LocalBundleError {
    /// Stable error name (as for a published bundle whose record does not verify).
    pub fn code(&self) -> &'static str {
        "BundleInvalid"
    }

    /// The author's side: the local folder (`atrund-errors`).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        atrund_errors::ErrorClass::Author
    }
}

/// Code file names tried in order when `--entry` is not given.
pub const ENTRY_CANDIDATES: [&str; 5] =
    ["main.js", "main.ts", "bundle.js", "main.py", "bundle.zip"];

/// Files changed this recently are read again on the next request even if their stat is the
/// same: timestamps are only as fine as the file system's clock tick.
const RACY: Duration = Duration::from_secs(1);

/// A bundle served from a local folder.
#[derive(Debug)]
pub struct LocalBundle {
    pub name: String,
    /// The runtime the code is for (`at-rund dev --runtime`; a record's `runtime`): `deno` unless
    /// [`LocalBundle::with_runtime`] says otherwise.
    pub runtime: String,
    pub dir: PathBuf,
    pub entry: PathBuf,
    /// Where the code is served from instead of `entry`, copied per version: set by the binary
    /// (`with_staging`) when the instances' uid cannot read the folder (a root runner's bundle
    /// under `/root`). `None`: `entry` itself.
    pub staged: Option<PathBuf>,
    last: Mutex<Option<Read>>,
    /// `None` once the watch cannot vouch for the files (then stamps decide).
    watch: Mutex<Option<Watched>>,
    /// Full reads so far (the tests check that unchanged files are not read again).
    reads: std::sync::atomic::AtomicU64,
}

/// The watch, and whether the last read saw the files as they are (no event since, and it
/// succeeded). Locked across a read, so no event slips between draining and reading.
#[derive(Debug)]
struct Watched {
    watch: watch::Watch,
    clean: bool,
}

/// The last full read of the folder.
#[derive(Debug)]
struct Read {
    key: String,
    manifest: Arc<Manifest>,
    /// Stats of manifest and code taken before the read; `None` when they cannot be trusted.
    stamps: Option<[Stamp; 2]>,
}

/// What changes when a file is written or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Old enough that a later write within the same timestamp tick is impossible.
    fn settled(&self, now: SystemTime) -> bool {
        let newest = self.mtime.max(self.ctime);
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let Ok(now_s) = i64::try_from(now.as_secs()) else {
            return false;
        };
        // Whole seconds are enough for a one-second window.
        newest
            .0
            .saturating_add(i64::try_from(RACY.as_secs()).unwrap_or(1))
            < now_s
    }
}

/// What one request sees of the folder.
pub struct LocalSnapshot {
    /// Shared with the last read: a warm request copies no manifest.
    pub manifest: Arc<Manifest>,
    /// `local-<sha256 of code and manifest>`: stands in for the record CID.
    pub key: String,
    /// The key served before this one, when the folder changed since.
    pub replaced: Option<String>,
}

impl LocalBundle {
    /// Checks the folder once at start-up so that a typo fails before the server listens.
    pub fn open(dir: &Path, name: Option<&str>, entry: Option<&Path>) -> Result<Self, String> {
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("cannot open bundle folder {}: {e}", dir.display()))?;
        let name = match name {
            Some(n) => n.to_string(),
            None => dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("local")
                .to_string(),
        };
        crate::record::validate_name(&name)
            .map_err(|e| format!("{e} (pass --name to choose another)"))?;
        let entry = match entry {
            Some(e) => dir.join(e),
            None => ENTRY_CANDIDATES
                .iter()
                .map(|c| dir.join(c))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "no code file in {}: expected one of {} (or pass --entry)",
                        dir.display(),
                        ENTRY_CANDIDATES.join(", ")
                    )
                })?,
        };
        // Before the first read, so an edit made during it shows.
        let watch = watch::Watch::new(&[&dir.join("manifest.json"), &entry]).map(|watch| Watched {
            watch,
            clean: false,
        });
        let bundle = Self {
            name,
            runtime: "deno".into(),
            dir,
            entry,
            staged: None,
            last: Mutex::new(None),
            watch: Mutex::new(watch),
            reads: Default::default(),
        };
        bundle.snapshot().map_err(|e| e.to_string())?;
        Ok(bundle)
    }

    /// Runs the code on `runtime`, one of [`crate::record::RUNTIMES`].
    pub fn with_runtime(mut self, runtime: &str) -> Result<Self, String> {
        if !crate::record::RUNTIMES.contains(&runtime) {
            return Err(format!(
                "runtime '{runtime}' is not one at-rund knows; use one of: {}",
                crate::record::RUNTIMES.join(", ")
            ));
        }
        self.runtime = runtime.into();
        Ok(self)
    }

    /// Serves copies of the code made in `dir` (see [`LocalBundle::staged`]).
    pub fn with_staging(mut self, dir: PathBuf) -> Self {
        self.staged = Some(dir);
        self
    }

    /// The folder as of now: from the last read when neither file changed since, else read
    /// and hashed again.
    pub fn snapshot(&self) -> Result<LocalSnapshot, LocalBundleError> {
        let mut watched = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watched.as_mut() {
            match w.watch.seen() {
                watch::Seen::Lost => {
                    tracing::debug!(dir = %self.dir.display(), "local bundle: the folder watch lost track; checking file stamps from now on");
                    *watched = None;
                }
                seen => {
                    if seen == watch::Seen::Nothing && w.clean {
                        if let Some(s) = self.last_unchanged(|_| true) {
                            return Ok(s);
                        }
                    }
                    w.clean = false;
                    let read = self.read(&self.dir.join("manifest.json"), None);
                    w.clean = read.is_ok();
                    return read;
                }
            }
        }
        drop(watched);
        let manifest_path = self.dir.join("manifest.json");
        let stamps = Stamp::of(&manifest_path).zip(Stamp::of(&self.entry));
        if let Some((m, c)) = stamps {
            if let Some(s) = self.last_unchanged(|r| r.stamps == Some([m, c])) {
                return Ok(s);
            }
        }
        let now = SystemTime::now();
        let trusted = stamps
            .filter(|(m, c)| m.settled(now) && c.settled(now))
            .map(|(m, c)| [m, c]);
        self.read(&manifest_path, trusted)
    }

    /// Whether `key` (a [`LocalSnapshot::key`]) is still the folder's code and manifest, read
    /// with one non-blocking look at the watch and nothing else: the warm path's check. `false`
    /// whenever only a full [`snapshot`](Self::snapshot) can tell, and then that snapshot
    /// re-reads the files (an event seen here is not lost for it).
    pub fn is_current(&self, key: &str) -> bool {
        let mut watched = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = watched.as_mut() else {
            return false;
        };
        match w.watch.seen() {
            watch::Seen::Nothing if w.clean => {}
            watch::Seen::Lost => {
                tracing::debug!(dir = %self.dir.display(), "local bundle: the folder watch lost track; checking file stamps from now on");
                *watched = None;
                return false;
            }
            _ => {
                w.clean = false;
                return false;
            }
        }
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().is_some_and(|r| r.key == key)
    }

    /// The last read, when `unchanged` says it still stands.
    fn last_unchanged(&self, unchanged: impl Fn(&Read) -> bool) -> Option<LocalSnapshot> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|r| unchanged(r))
            .map(|r| LocalSnapshot {
                manifest: r.manifest.clone(),
                key: r.key.clone(),
                replaced: None,
            })
    }

    /// Stops using the watch: file stamps decide from now on (the tests of that path).
    #[cfg(test)]
    fn without_watch(self) -> Self {
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    fn read(
        &self,
        manifest_path: &Path,
        stamps: Option<[Stamp; 2]>,
    ) -> Result<LocalSnapshot, LocalBundleError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let manifest_text = std::fs::read(manifest_path).map_err(|e| {
            LocalBundleError(format!("cannot read {}: {e}", manifest_path.display()))
        })?;
        let manifest: Manifest = serde_json::from_slice(&manifest_text).map_err(|e| {
            LocalBundleError(format!(
                "{} is not a valid manifest: {e}",
                manifest_path.display()
            ))
        })?;
        manifest
            .validate()
            .map_err(|e| LocalBundleError(e.to_string()))?;
        let code = std::fs::read(&self.entry)
            .map_err(|e| LocalBundleError(format!("cannot read {}: {e}", self.entry.display())))?;
        let mut h = sha2::Sha256::new();
        h.update(&code);
        h.update(&manifest_text);
        let digest = h.finalize();
        let key = format!("local-{}", hex(&digest[..16]));
        let manifest = Arc::new(manifest);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = match last.as_ref() {
            Some(prev) if prev.key != key => Some(prev.key.clone()),
            _ => None,
        };
        *last = Some(Read {
            key: key.clone(),
            manifest: manifest.clone(),
            stamps,
        });
        Ok(LocalSnapshot {
            manifest,
            key,
            replaced,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"endpoints":[{"name":"a"}]}"#;

    /// A bundle folder with `main.js` and a valid manifest.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.js"), "export const a = 1;").unwrap();
        std::fs::write(dir.path().join("manifest.json"), MANIFEST).unwrap();
        dir
    }

    #[test]
    fn edits_change_the_key() {
        let dir = folder();
        let b = LocalBundle::open(dir.path(), Some("demo"), None).unwrap();
        let s1 = b.snapshot().unwrap();
        assert!(s1.replaced.is_none());
        std::fs::write(dir.path().join("main.js"), "export const a = 2;").unwrap();
        let s2 = b.snapshot().unwrap();
        assert_ne!(s1.key, s2.key);
        assert_eq!(s2.replaced.as_deref(), Some(s1.key.as_str()));
        std::fs::write(dir.path().join("manifest.json"), r#"{"nope":1}"#).unwrap();
        assert_eq!(b.snapshot().err().unwrap().code(), "BundleInvalid");
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = folder();
        let b = LocalBundle::open(dir.path(), Some("demo"), None)
            .unwrap()
            .without_watch();
        let reads = || b.reads.load(std::sync::atomic::Ordering::Relaxed);
        // Just written: the timestamps cannot be trusted yet, so every request reads.
        let n = reads();
        b.snapshot().unwrap();
        assert_eq!(reads(), n + 1);
        std::thread::sleep(RACY + Duration::from_millis(1100));
        let s1 = b.snapshot().unwrap();
        let n = reads();
        let s2 = b.snapshot().unwrap();
        assert_eq!(reads(), n, "an unchanged folder was read again");
        assert_eq!((s1.key.as_str(), s2.replaced), (s2.key.as_str(), None));
        // Same size, new content: noticed on the next request.
        std::fs::write(dir.path().join("main.js"), "export const a = 2;").unwrap();
        let s3 = b.snapshot().unwrap();
        assert_ne!(s3.key, s1.key);
        assert_eq!(s3.replaced.as_deref(), Some(s1.key.as_str()));
        let n = reads();
        b.snapshot().unwrap();
        assert_eq!(reads(), n + 1, "a file written just now must be read again");
    }

    #[test]
    fn the_watch_reads_only_after_an_edit_and_never_serves_a_stale_read() {
        let dir = folder();
        let b = LocalBundle::open(dir.path(), Some("demo"), None).unwrap();
        assert!(b.watch.lock().unwrap().is_some(), "inotify works here");
        let reads = || b.reads.load(std::sync::atomic::Ordering::Relaxed);
        // Files written just now are not read again: the watch, not their timestamps, says
        // whether they changed.
        let s1 = b.snapshot().unwrap();
        let n = reads();
        for _ in 0..3 {
            assert_eq!(b.snapshot().unwrap().key, s1.key);
        }
        assert_eq!(reads(), n, "an unchanged folder was read again");
        std::fs::write(dir.path().join("main.js"), "export const a = 2;").unwrap();
        let s2 = b.snapshot().unwrap();
        assert_ne!(s2.key, s1.key);
        assert_eq!(s2.replaced.as_deref(), Some(s1.key.as_str()));
        // A broken manifest stays an error on every request until it is fixed: the last good
        // read is not served meanwhile.
        std::fs::write(dir.path().join("manifest.json"), r#"{"nope":1}"#).unwrap();
        for _ in 0..2 {
            assert_eq!(b.snapshot().err().unwrap().code(), "BundleInvalid");
        }
        std::fs::write(dir.path().join("manifest.json"), MANIFEST).unwrap();
        assert_eq!(b.snapshot().unwrap().key, s2.key);
        // The folder moved away: the watch gives up and stamps decide (the path is gone).
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::rename(dir.path(), elsewhere.path().join("moved")).unwrap();
        assert!(b.snapshot().is_err());
        assert!(b.watch.lock().unwrap().is_none());
    }

    #[test]
    fn is_current_never_vouches_for_an_edit_and_leaves_it_to_the_snapshot() {
        let dir = folder();
        let b = LocalBundle::open(dir.path(), Some("demo"), None).unwrap();
        let s1 = b.snapshot().unwrap();
        assert!(b.is_current(&s1.key));
        assert!(!b.is_current("some other key"));
        std::fs::write(dir.path().join("main.js"), "export const a = 2;").unwrap();
        // The edit is seen here once, and the next snapshot still reads the new code.
        assert!(!b.is_current(&s1.key));
        assert!(
            !b.is_current(&s1.key),
            "an edit seen once must not be forgotten"
        );
        let s2 = b.snapshot().unwrap();
        assert_ne!(s2.key, s1.key);
        assert!(b.is_current(&s2.key) && !b.is_current(&s1.key));
        // A broken manifest: never current, whatever key is asked about.
        std::fs::write(dir.path().join("manifest.json"), r#"{"nope":1}"#).unwrap();
        assert!(!b.is_current(&s2.key));
        assert!(b.snapshot().is_err());
        assert!(!b.is_current(&s2.key));
        // Without the watch (stamps decide), nothing is vouched for without a snapshot.
        let other = folder();
        let plain = LocalBundle::open(other.path(), Some("demo"), None)
            .unwrap()
            .without_watch();
        let s = plain.snapshot().unwrap();
        assert!(!plain.is_current(&s.key));
    }

    #[test]
    fn a_symlinked_entry_is_checked_by_its_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let real = tempfile::tempdir().unwrap();
        std::fs::write(real.path().join("code.js"), "export const a = 1;").unwrap();
        std::os::unix::fs::symlink(real.path().join("code.js"), dir.path().join("main.js"))
            .unwrap();
        std::fs::write(dir.path().join("manifest.json"), MANIFEST).unwrap();
        let b = LocalBundle::open(dir.path(), Some("demo"), None).unwrap();
        assert!(b.watch.lock().unwrap().is_none());
        let s1 = b.snapshot().unwrap();
        std::fs::write(real.path().join("code.js"), "export const a = 22;").unwrap();
        assert_ne!(b.snapshot().unwrap().key, s1.key);
    }

    #[test]
    fn missing_folder_or_entry_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = LocalBundle::open(dir.path(), Some("demo"), None).unwrap_err();
        assert!(e.contains("no code file"), "{e}");
        assert!(LocalBundle::open(&dir.path().join("nope"), None, None).is_err());
    }
}
