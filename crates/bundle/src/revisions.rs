//! Rollback protection: the newest repository revision this runner has verified for each DID,
//! kept on disk, so a PDS that serves an older (genuinely signed) commit after a newer one was
//! seen — an old release pointer, an old secret, a deleted bad version brought back — is refused.
//!
//! Owns: the per-DID revision floor and its file (`<data_dir>/state/revisions.json`, written
//! atomically). Must not touch: verification itself (the caller passes a rev from a verified
//! commit) or what a record means.
//!
//! Revisions are TIDs: 13 characters of base32-sortable text, so their order is string order.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most DIDs remembered; past it the one seen longest ago is forgotten (its floor is lost, which
/// only weakens protection for an author this runner has not served for the longest time).
pub const MAX_TRACKED_DIDS: usize = 100_000;

/// Why an observed revision was refused, or the floor could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    /// the PDS served an older signed commit than one already verified
    #[error("the PDS of {did} served repository revision {served}, older than revision {newest} this runner already verified: it is replaying old repository state (an old release, version or secret). Retry later; if the account was deliberately re-created, the operator can remove {did} from {file}")]
    Rollback {
        did: String,
        served: String,
        newest: String,
        file: PathBuf,
    },
    /// the revision file could not be read or written
    #[error("revision file {path}: {detail}; check the data dir's permissions and free space, or move the file away to start with no floors")]
    File { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Floor {
    rev: String,
    /// Unix seconds of the last verified fetch, for eviction.
    seen: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorFile {
    version: u32,
    dids: HashMap<String, Floor>,
}

/// The per-DID floors, shared by all requests.
#[derive(Debug)]
pub struct RevisionFloors {
    path: Option<PathBuf>,
    floors: Mutex<HashMap<String, Floor>>,
}

impl RevisionFloors {
    /// Floors kept only in memory (tests, tools).
    pub fn in_memory() -> Self {
        RevisionFloors {
            path: None,
            floors: Mutex::default(),
        }
    }

    /// Loads the file at `path` (none yet means no floors).
    pub fn load(path: &Path) -> Result<Self, RevisionError> {
        let bad = |detail: String| RevisionError::File {
            path: path.to_path_buf(),
            detail,
        };
        let floors = match std::fs::read(path) {
            Ok(bytes) => {
                let f: FloorFile = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("not a revision file ({e})")))?;
                if f.version != 1 {
                    return Err(bad(format!("unknown version {}", f.version)));
                }
                f.dids
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(RevisionFloors {
            path: Some(path.to_path_buf()),
            floors: Mutex::new(floors),
        })
    }

    /// Records that `rev` of `did` was verified by a fetch that started when the floor was
    /// `floor_at_start` ([`RevisionFloors::newest`] read before the fetch): refuses a rev older
    /// than that, and raises the floor (written to disk before the record is used) when `rev`
    /// is newer than the current one. Comparing with the floor at the start, not the current
    /// one, keeps two overlapping fetches around a publish from refusing each other.
    pub fn observe(
        &self,
        did: &str,
        rev: &str,
        floor_at_start: Option<&str>,
    ) -> Result<(), RevisionError> {
        if let Some(floor) = floor_at_start.filter(|f| rev < *f) {
            return Err(RevisionError::Rollback {
                did: did.to_string(),
                served: rev.to_string(),
                newest: floor.to_string(),
                file: self.path.clone().unwrap_or_default(),
            });
        }
        let Ok(mut floors) = self.floors.lock() else {
            return Ok(());
        };
        let now = now_secs();
        if let Some(f) = floors.get_mut(did) {
            if rev <= f.rev.as_str() {
                // Not newer: nothing to persist (`seen` is written with the next raise).
                f.seen = now;
                return Ok(());
            }
        }
        floors.insert(
            did.to_string(),
            Floor {
                rev: rev.to_string(),
                seen: now,
            },
        );
        if floors.len() > MAX_TRACKED_DIDS {
            if let Some(oldest) = floors
                .iter()
                .min_by_key(|(_, f)| f.seen)
                .map(|(d, _)| d.clone())
            {
                floors.remove(&oldest);
            }
        }
        self.persist(&floors)
    }

    /// The newest verified revision of `did`, if any.
    pub fn newest(&self, did: &str) -> Option<String> {
        self.floors.lock().ok()?.get(did).map(|f| f.rev.clone())
    }

    fn persist(&self, floors: &HashMap<String, Floor>) -> Result<(), RevisionError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bad = |detail: String| RevisionError::File {
            path: path.clone(),
            detail,
        };
        let file = FloorFile {
            version: 1,
            dids: floors.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| bad(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| bad(e.to_string()))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_revisions_are_refused_and_floors_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/revisions.json");
        let floors = RevisionFloors::load(&path).unwrap();
        let seen = |f: &RevisionFloors, did: &str, rev: &str| {
            let at_start = f.newest(did);
            f.observe(did, rev, at_start.as_deref())
        };
        seen(&floors, "did:plc:a", "3n3ftgb3huk27").unwrap();
        seen(&floors, "did:plc:a", "3n3ftgb3huk27").unwrap();
        // Two fetches overlap a publish: the one that started before it may finish last.
        let before = floors.newest("did:plc:a");
        seen(&floors, "did:plc:a", "3n3ftgb3huk2a").unwrap();
        floors
            .observe("did:plc:a", "3n3ftgb3huk27", before.as_deref())
            .unwrap();
        assert_eq!(floors.newest("did:plc:a").as_deref(), Some("3n3ftgb3huk2a"));
        // Another DID has its own floor.
        seen(&floors, "did:plc:b", "2222222222222").unwrap();
        let e = seen(&floors, "did:plc:a", "3n3ftgb3huk27").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("3n3ftgb3huk27") && msg.contains("3n3ftgb3huk2a"),
            "{msg}"
        );
        assert!(matches!(e, RevisionError::Rollback { .. }));

        let again = RevisionFloors::load(&path).unwrap();
        assert_eq!(again.newest("did:plc:a").as_deref(), Some("3n3ftgb3huk2a"));
        assert!(seen(&again, "did:plc:a", "3n3ftgb3huk22").is_err());
        assert!(seen(&again, "did:plc:b", "2222222222223").is_ok());

        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            RevisionFloors::load(&path),
            Err(RevisionError::File { .. })
        ));
    }
}
