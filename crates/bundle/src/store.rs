//! Content-addressed store of verified bundle code on disk: `<root>/<blob cid>/bundle.js`.
//!
//! Owns: the bytes at rest. Only code that passed verification against its CID is ever written
//! (callers hand us verified bytes); a write goes to a temporary file that is renamed into place,
//! so a crash never leaves a half-written bundle under a CID name. Must not touch: the network.

use std::io;
use std::path::{Path, PathBuf};

/// Name of the code file inside a bundle's directory.
pub const CODE_FILE: &str = "bundle.js";

/// Verified bundle code, addressed by the CID of its blob.
#[derive(Debug, Clone)]
pub struct BundleStore {
    root: PathBuf,
}

impl BundleStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// Path of the code for this blob CID if it is stored and has the expected size.
    pub fn get(&self, cid: &cid::Cid, size: u64) -> Option<PathBuf> {
        let path = self.code_path(cid);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => Some(path),
            _ => None,
        }
    }

    /// Stores verified bytes under their CID and returns the code path.
    pub fn put(&self, cid: &cid::Cid, verified: &[u8]) -> io::Result<PathBuf> {
        let dir = self.root.join(cid.to_string());
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(CODE_FILE);
        let tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::fs::write(tmp.path(), verified)?;
        set_read_only(tmp.path())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }

    fn code_path(&self, cid: &cid::Cid) -> PathBuf {
        self.root.join(cid.to_string()).join(CODE_FILE)
    }
}

fn set_read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_by_cid_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path().join("b")).unwrap();
        let cid: cid::Cid = "bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
            .parse()
            .unwrap();
        assert!(store.get(&cid, 3).is_none());
        let p = store.put(&cid, b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        assert_eq!(store.get(&cid, 3), Some(p.clone()));
        assert!(store.get(&cid, 4).is_none(), "size mismatch is a miss");
        // A second put of the same CID replaces the read-only file atomically.
        store.put(&cid, b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
    }
}
