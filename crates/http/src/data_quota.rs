//! Each author's share of the disk under `<data_dir>/data/<author>/` (`tenants.max_data_bytes_per_
//! author`), two ways:
//! - where the runner has author volumes (`tenants.data_volumes`, `atrund_sandbox::AuthorVolumes`)
//!   the author's dir is a file system of that size, mounted before the request goes on: a hard
//!   cap within a call (`ENOSPC` for the bundle);
//! - always, the author's data is measured when a request for a bundle that may write arrives, at
//!   most every [`MEASURE_EVERY`] per author, and refused with `DataQuotaExceeded` while the
//!   author is over: without volumes a soft cap (a running call can write past it until the next
//!   measurement), with them an early, clear answer instead of a bundle's write error.
//!
//! Owns: the measurements and when a volume is mounted. Must not touch: the files (it only reads
//! sizes, never follows links).

use atrund_errors::ErrorClass;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How long one measurement of an author's data is trusted.
pub const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// The last measurement per author data dir, and the author volumes if the runner has them.
#[derive(Debug, Default)]
pub struct DataQuota {
    measured: Mutex<HashMap<PathBuf, (Instant, u64)>>,
    volumes: Option<std::sync::Arc<atrund_sandbox::AuthorVolumes>>,
}

impl DataQuota {
    /// Mounts each author's volume (`volumes`) before their first request goes on.
    pub fn with_volumes(volumes: Option<std::sync::Arc<atrund_sandbox::AuthorVolumes>>) -> Self {
        Self {
            volumes,
            ..Self::default()
        }
    }

    /// Makes sure the author's data dir `dir` is their mounted volume (a map look-up once it
    /// is). The caller learns only that it failed; the runner's log says why.
    pub async fn ensure_volume(&self, dir: &Path) -> Result<(), ApiError> {
        let Some(v) = &self.volumes else {
            return Ok(());
        };
        v.ensure(dir).await.map_err(|e| {
            tracing::error!(dir = %dir.display(), error = %e, "cannot mount an author's data volume");
            ApiError::new(
                ErrorClass::Runner,
                "DataVolumeFailed",
                "the runner could not prepare this author's data storage; its operator finds the cause in the runner's log",
            )
        })
    }

    /// Refuses when the author's data under `dir` is over `cap` bytes (0: no cap).
    pub async fn check(&self, dir: &Path, cap: u64) -> Result<(), ApiError> {
        if cap == 0 {
            return Ok(());
        }
        let fresh = self
            .measured
            .lock()
            .ok()
            .and_then(|m| m.get(dir).copied())
            .filter(|(at, _)| at.elapsed() < MEASURE_EVERY);
        let used = match fresh {
            Some((_, used)) => used,
            None => {
                let d = dir.to_path_buf();
                let used = tokio::task::spawn_blocking(move || tree_bytes(&d))
                    .await
                    .unwrap_or(0);
                if let Ok(mut m) = self.measured.lock() {
                    m.insert(dir.to_path_buf(), (Instant::now(), used));
                }
                used
            }
        };
        if used > cap {
            return Err(ApiError::new(
                ErrorClass::Storage, "DataQuotaExceeded",
                format!("this author's bundles keep {used} bytes in their data dirs on this runner, over its share of {cap} bytes (tenants.max_data_bytes_per_author); bundles that write are refused until files are removed (bundles that do not write still run)"),
            ));
        }
        Ok(())
    }
}

/// Bytes of regular files under `dir`, links not followed; a missing dir is 0.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0u64;
    for e in rd.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            total = total.saturating_add(tree_bytes(&e.path()));
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_share_is_refused_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let author = dir.path().join("a");
        std::fs::create_dir_all(author.join("b/out")).unwrap();
        std::fs::write(author.join("b/out/x"), vec![0u8; 600]).unwrap();
        // A link to something big outside counts for nothing.
        let outside = dir.path().join("big");
        std::fs::write(&outside, vec![0u8; 10_000]).unwrap();
        std::os::unix::fs::symlink(&outside, author.join("b/out/link")).unwrap();
        assert_eq!(tree_bytes(&author), 600);
        let q = DataQuota::default();
        assert!(q.check(&author, 1000).await.is_ok());
        assert!(q.check(&author, 0).await.is_ok());
        let fresh = DataQuota::default();
        let e = fresh.check(&author, 500).await.unwrap_err();
        assert_eq!(e.code, "DataQuotaExceeded");
        assert!(fresh.check(&dir.path().join("none"), 1).await.is_ok());
    }
}
