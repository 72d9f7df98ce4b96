//! Content-addressed store of verified bundle code on disk: `<root>/<blob cid>/bundle.js`, with
//! who brought each blob in (`<root>/<cid>/owner`, one DID) and when it was last used
//! (`<root>/<cid>/last-used`, Unix seconds, written at most once per [`TOUCH_EVERY`]).
//!
//! Owns: the bytes at rest, each author's share of them (`tenants.max_store_bytes_per_author`:
//! an author over their share has their own least recently used code removed first, never
//! another author's) and removal of code not used for `tenants.store_gc_after_secs`. Only code
//! that passed verification against its CID is ever written (callers hand us verified bytes); a
//! write goes to a temporary file that is renamed into place, so a crash never leaves a
//! half-written bundle under a CID name. Must not touch: the network.
//!
//! Removing code that a running instance was started from is safe: the instance has read it
//! (and in a container holds it by a bind mount); the next start of that version fetches and
//! verifies it again.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the code file inside a bundle's directory.
pub const CODE_FILE: &str = "bundle.js";
const OWNER_FILE: &str = "owner";
const LAST_USED_FILE: &str = "last-used";
/// A hit rewrites `last-used` at most this often (so warm traffic does not write to disk).
pub const TOUCH_EVERY: Duration = Duration::from_secs(3600);

/// Why code could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the disk failed
    #[error("bundle store at {path}: {source}; check the data dir's permissions and free space")]
    Io { path: PathBuf, source: io::Error },
    /// one blob is larger than the author's whole share
    #[error("bundle code of {size} bytes is more than this runner keeps for one author ({cap} bytes, tenants.max_store_bytes_per_author); publish smaller code or ask the operator for a larger share")]
    OverShare { size: u64, cap: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    owner: String,
    last_used: u64,
}

/// Verified bundle code, addressed by the CID of its blob.
#[derive(Debug, Clone)]
pub struct BundleStore {
    root: PathBuf,
    /// Most bytes of code kept for one author (0: no cap).
    share: u64,
    ledger: Arc<Mutex<HashMap<String, Entry>>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BundleStore {
    /// A store rooted at `root` (created if missing), with no per-author cap; what is on disk
    /// is read into the ledger (entries without an owner count for nobody).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let mut ledger = HashMap::new();
        for e in std::fs::read_dir(&root)?.flatten() {
            let dir = e.path();
            let Ok(meta) = std::fs::metadata(dir.join(CODE_FILE)) else {
                continue;
            };
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let last_used = read(LAST_USED_FILE).trim().parse().unwrap_or_else(|_| {
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs())
            });
            ledger.insert(
                e.file_name().to_string_lossy().into_owned(),
                Entry {
                    size: meta.len(),
                    owner: read(OWNER_FILE).trim().to_string(),
                    last_used,
                },
            );
        }
        Ok(Self {
            root,
            share: 0,
            ledger: Arc::new(Mutex::new(ledger)),
        })
    }

    /// Caps each author's share of the store at `bytes` (0: no cap).
    pub fn with_share_per_author(mut self, bytes: u64) -> Self {
        self.share = bytes;
        self
    }

    /// Path of the code for this blob CID if it is stored and has the expected size; a hit
    /// counts as a use.
    pub fn get(&self, cid: &cid::Cid, size: u64) -> Option<PathBuf> {
        let path = self.code_path(cid);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {
                self.touch(&cid.to_string());
                Some(path)
            }
            _ => None,
        }
    }

    /// Stores verified bytes under their CID for `author` and returns the code path. If that
    /// puts the author over their share, their own least recently used code goes first.
    pub fn put(
        &self,
        author: &str,
        cid: &cid::Cid,
        verified: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let size = verified.len() as u64;
        if self.share > 0 && size > self.share {
            return Err(StoreError::OverShare {
                size,
                cap: self.share,
            });
        }
        let key = cid.to_string();
        let dir = self.root.join(&key);
        let io = |source: io::Error| StoreError::Io {
            path: dir.clone(),
            source,
        };
        self.make_room(author, &key, size);
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Readable whatever the umask: unprivileged instances read their code here; the store
        // root (0700, or 0710 for their group alone) keeps everyone else out.
        set_mode(&dir, 0o755).map_err(io)?;
        let path = dir.join(CODE_FILE);
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        std::fs::write(tmp.path(), verified).map_err(io)?;
        set_read_only(tmp.path()).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        let now = now_secs();
        // Bookkeeping only: a lost owner or time makes the blob count for nobody, or look old.
        let _ = std::fs::write(dir.join(OWNER_FILE), author);
        let _ = std::fs::write(dir.join(LAST_USED_FILE), now.to_string());
        if let Ok(mut l) = self.ledger.lock() {
            l.insert(
                key,
                Entry {
                    size,
                    owner: author.to_string(),
                    last_used: now,
                },
            );
        }
        Ok(path)
    }

    /// Bytes of code `author` brought into the store.
    pub fn usage(&self, author: &str) -> u64 {
        self.ledger
            .lock()
            .map(|l| {
                l.values()
                    .filter(|e| e.owner == author)
                    .map(|e| e.size)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Removes code not used for `max_age`; returns how many blobs went.
    pub fn collect_garbage(&self, max_age: Duration) -> usize {
        let cutoff = now_secs().saturating_sub(max_age.as_secs());
        let old: Vec<String> = match self.ledger.lock() {
            Ok(l) => l
                .iter()
                .filter(|(_, e)| e.last_used < cutoff)
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => return 0,
        };
        old.iter().filter(|k| self.remove(k)).count()
    }

    /// Removes `author`'s least recently used blobs (never `keep`) until `incoming` more bytes
    /// fit in their share.
    fn make_room(&self, author: &str, keep: &str, incoming: u64) {
        if self.share == 0 {
            return;
        }
        let mut mine: Vec<(String, u64, u64)> = match self.ledger.lock() {
            Ok(l) => l
                .iter()
                .filter(|(k, e)| e.owner == author && k.as_str() != keep)
                .map(|(k, e)| (k.clone(), e.size, e.last_used))
                .collect(),
            Err(_) => return,
        };
        let mut used: u64 = mine.iter().map(|(_, s, _)| s).sum();
        mine.sort_by_key(|(_, _, t)| *t);
        for (key, size, _) in mine {
            if used + incoming <= self.share {
                break;
            }
            if self.remove(&key) {
                tracing::info!(author, blob = %key, bytes = size, "removed least recently used code: the author is over their store share");
                used -= size;
            }
        }
    }

    fn remove(&self, key: &str) -> bool {
        let dir = self.root.join(key);
        // The code file is read-only; its directory is ours to remove.
        let gone = match std::fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove stored code");
                false
            }
        };
        if gone {
            if let Ok(mut l) = self.ledger.lock() {
                l.remove(key);
            }
        }
        gone
    }

    fn touch(&self, key: &str) {
        let now = now_secs();
        let due = match self.ledger.lock() {
            Ok(mut l) => match l.get_mut(key) {
                Some(e) if now.saturating_sub(e.last_used) >= TOUCH_EVERY.as_secs() => {
                    e.last_used = now;
                    true
                }
                Some(_) => false,
                None => {
                    l.insert(
                        key.to_string(),
                        Entry {
                            size: 0,
                            owner: String::new(),
                            last_used: now,
                        },
                    );
                    true
                }
            },
            Err(_) => false,
        };
        if due {
            let _ = std::fs::write(self.root.join(key).join(LAST_USED_FILE), now.to_string());
        }
    }

    fn code_path(&self, cid: &cid::Cid) -> PathBuf {
        self.root.join(cid.to_string()).join(CODE_FILE)
    }
}

fn set_read_only(path: &Path) -> io::Result<()> {
    set_mode(path, 0o444)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
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
        let p = store.put("did:plc:a", &cid, b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        assert_eq!(store.get(&cid, 3), Some(p.clone()));
        assert!(store.get(&cid, 4).is_none(), "size mismatch is a miss");
        // A second put of the same CID replaces the read-only file atomically.
        store.put("did:plc:a", &cid, b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
    }

    fn cid_of(bytes: &[u8]) -> cid::Cid {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(bytes);
        let mh = cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
        cid::Cid::new_v1(0x55, mh)
    }

    #[test]
    fn each_author_has_a_share_and_loses_only_their_own_oldest_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path().join("b"))
            .unwrap()
            .with_share_per_author(10);
        let (a1, a2, a3) = (vec![1u8; 4], vec![2u8; 4], vec![3u8; 4]);
        let b1 = vec![9u8; 8];
        let p_b = store.put("did:plc:b", &cid_of(&b1), &b1).unwrap();
        store.put("did:plc:a", &cid_of(&a1), &a1).unwrap();
        // Make a1 the oldest by its last use.
        if let Ok(mut l) = store.ledger.lock() {
            l.get_mut(&cid_of(&a1).to_string()).unwrap().last_used = 1;
        }
        store.put("did:plc:a", &cid_of(&a2), &a2).unwrap();
        assert_eq!(store.usage("did:plc:a"), 8);
        // 8 + 4 > 10: a1 (the least recently used) goes, b's code stays.
        store.put("did:plc:a", &cid_of(&a3), &a3).unwrap();
        assert_eq!(store.usage("did:plc:a"), 8);
        assert!(store.get(&cid_of(&a1), 4).is_none());
        assert!(store.get(&cid_of(&a2), 4).is_some());
        assert_eq!(store.get(&cid_of(&b1), 8), Some(p_b));
        assert_eq!(store.usage("did:plc:b"), 8);
        // One blob larger than a whole share is refused.
        let big = vec![7u8; 11];
        assert!(matches!(
            store.put("did:plc:a", &cid_of(&big), &big),
            Err(StoreError::OverShare { .. })
        ));
        // The ledger is rebuilt from disk.
        let again = BundleStore::open(dir.path().join("b")).unwrap();
        assert_eq!(again.usage("did:plc:a"), 8);
        assert_eq!(again.usage("did:plc:b"), 8);
    }

    #[test]
    fn code_unused_for_long_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path().join("b")).unwrap();
        let (old, new) = (vec![1u8; 3], vec![2u8; 3]);
        store.put("did:plc:a", &cid_of(&old), &old).unwrap();
        store.put("did:plc:a", &cid_of(&new), &new).unwrap();
        std::fs::write(
            dir.path()
                .join("b")
                .join(cid_of(&old).to_string())
                .join(LAST_USED_FILE),
            "1000",
        )
        .unwrap();
        // As a restarted runner sees it.
        let store = BundleStore::open(dir.path().join("b")).unwrap();
        assert_eq!(store.collect_garbage(Duration::from_secs(86_400)), 1);
        assert!(store.get(&cid_of(&old), 3).is_none());
        assert!(store.get(&cid_of(&new), 3).is_some());
        assert!(!dir.path().join("b").join(cid_of(&old).to_string()).exists());
    }
}
