//! Noticing edits of a local bundle's two files without a `stat` per request: an inotify watch
//! on the folders that hold them, read without blocking when a request asks (one `read` that
//! usually finds nothing, where the stamps cost two path walks; docs/performance.md, issue 14).
//!
//! Owns: the inotify descriptor and deciding whether an event concerns the bundle. Must not:
//! read or hash the files (that is `LocalBundle`'s), or guess: whenever the watch cannot vouch
//! for the files (a symlink, an overflowed queue, a watched folder moved or deleted), it says so
//! and the caller goes back to stamps for good.

use std::ffi::OsString;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// What the watch saw since it was last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// No event that touches the bundle's files.
    Nothing,
    /// One of the files (or a folder entry of that name) changed.
    Changed,
    /// The watch can no longer vouch for the files; use stamps from now on.
    Lost,
}

/// An inotify watch on the folders of the manifest and the code file.
#[derive(Debug)]
pub(super) struct Watch {
    fd: Inotify,
    /// File names (in their folder) whose events count.
    names: Vec<OsString>,
}

/// Events on a folder's entries that can change what a path reads, and on the folder itself.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

impl Watch {
    /// A watch on the folders of `files`, or `None` when it could not vouch for them: a file
    /// that is a symlink (an edit of its target would not show in the folder), a folder that is
    /// reached through one, or no inotify here (then stamps are used, as before).
    pub(super) fn new(files: &[&Path]) -> Option<Self> {
        let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mut names = Vec::new();
        let mut dirs = Vec::new();
        for file in files {
            let meta = std::fs::symlink_metadata(file).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
            let dir = file.parent()?;
            // The caller's paths are canonical folders joined with a relative entry; a folder
            // that canonicalizes elsewhere goes through a symlink.
            if dir.canonicalize().ok()? != dir {
                return None;
            }
            names.push(file.file_name()?.to_os_string());
            if !dirs.contains(&dir) {
                fd.add_watch(dir, mask()).ok()?;
                dirs.push(dir);
            }
        }
        Some(Self { fd, names })
    }

    /// Drains the queued events (one `read` when there are none).
    pub(super) fn seen(&self) -> Seen {
        let mut seen = Seen::Nothing;
        loop {
            let events = match self.fd.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return seen,
                Err(Errno::EINTR) => continue,
                Err(_) => return Seen::Lost,
            };
            for e in events {
                let lost = AddWatchFlags::IN_Q_OVERFLOW
                    | AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_UNMOUNT;
                if e.mask.intersects(lost) {
                    return Seen::Lost;
                }
                if e.name.as_ref().is_none_or(|n| self.names.contains(n)) {
                    seen = Seen::Changed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_writes_renames_and_a_moved_folder() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().canonicalize().unwrap().join("main.js");
        let manifest = code.with_file_name("manifest.json");
        std::fs::write(&code, "1").unwrap();
        std::fs::write(&manifest, "{}").unwrap();
        let w = Watch::new(&[&manifest, &code]).expect("inotify works here");
        assert_eq!(w.seen(), Seen::Nothing);
        std::fs::write(&code, "2").unwrap();
        assert_eq!(w.seen(), Seen::Changed);
        assert_eq!(w.seen(), Seen::Nothing, "events are drained");
        // Another file in the folder is not the bundle's.
        std::fs::write(code.with_file_name("notes.txt"), "x").unwrap();
        assert_eq!(w.seen(), Seen::Nothing);
        // An editor's atomic save: write elsewhere, rename over.
        let tmp = code.with_file_name(".main.js.swp");
        std::fs::write(&tmp, "3").unwrap();
        std::fs::rename(&tmp, &code).unwrap();
        assert_eq!(w.seen(), Seen::Changed);
        let gone = tempfile::tempdir().unwrap();
        std::fs::rename(dir.path(), gone.path().join("x")).unwrap();
        assert_eq!(w.seen(), Seen::Lost);
    }

    #[test]
    fn a_symlinked_file_is_not_watched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("real.js"), "1").unwrap();
        std::os::unix::fs::symlink(root.join("real.js"), root.join("main.js")).unwrap();
        assert!(Watch::new(&[&root.join("main.js")]).is_none());
    }
}
