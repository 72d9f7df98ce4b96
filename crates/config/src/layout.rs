//! Where things live under `data_dir`: one type names every path, so the start-up sweep, the
//! bundle store, the instance spec and the per-author shares cannot disagree about the layout.
//!
//! Owns: path names only. Must not touch: the file system (the daemon creates and sweeps the
//! dirs; each component owns what it writes inside its own).

use std::path::{Path, PathBuf};

/// `data_dir` when neither `XDG_DATA_HOME` nor `HOME` is usable.
pub(crate) const FALLBACK_DATA_DIR: &str = "./.at-rund-data";
/// `data_dir` of a runner whose `HOME` is `/root` (and no `XDG_DATA_HOME`): `none` instances
/// run as another uid, which could not pass through `/root`.
pub(crate) const ROOT_DATA_DIR: &str = "/var/lib/at-rund";

/// The layout of one runner's data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// The dirs made at start-up (`run` is also emptied then: instance work dirs never outlive a
    /// runner).
    pub const DIRS: [&'static str; 5] = ["bundles", "data", "deno", "run", "staged"];

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed bundle store.
    pub fn bundles(&self) -> PathBuf {
        self.root.join("bundles")
    }

    /// Bundles' own files: `data/<author dir>/<bundle name>`.
    pub fn author_data(&self, author_dir: &str) -> PathBuf {
        self.root.join("data").join(author_dir)
    }

    /// One bundle's data dir (its declared read/write paths are relative to it).
    pub fn bundle_data(&self, author_dir: &str, name: &str) -> PathBuf {
        self.author_data(author_dir).join(name)
    }

    /// One bundle's Deno dir (DENO_DIR: the runtime's cache for that bundle).
    pub fn bundle_deno(&self, author_dir: &str, name: &str) -> PathBuf {
        self.root.join("deno").join(author_dir).join(name)
    }

    /// Author volumes: one ext4 image per author, mounted on their `data/<author dir>`
    /// (`tenants.data_volumes`).
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// Instance work dirs (sockets, shim copy); emptied at start-up.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Copies of what instances must read or run but the configured path hides from their uid
    /// (a Deno binary or a dev bundle under `/root`): `staged/`.
    pub fn staged(&self) -> PathBuf {
        self.root.join("staged")
    }

    /// One instance's work dir.
    pub fn instance_work(&self, instance_id: &str) -> PathBuf {
        self.run().join(instance_id)
    }

    /// The container backend's assembled root file systems.
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// The newest repository revision seen per DID (rollback protection).
    pub fn revisions(&self) -> PathBuf {
        self.root.join("state").join("revisions.json")
    }

    /// Labels of bundles served on their own origins.
    pub fn origins(&self) -> PathBuf {
        self.root.join("origins.json")
    }

    /// The response cache's disk tier (`cache.disk_max_bytes`, SQLite).
    pub fn cache_db(&self) -> PathBuf {
        self.root.join("cache.sqlite")
    }

    /// The background jobs' queue (`atrund-jobs`, SQLite).
    pub fn jobs_db(&self) -> PathBuf {
        self.root.join("jobs.sqlite")
    }

    /// The runner key file when `secrets.key_file` is not set.
    pub fn default_key_file(&self) -> PathBuf {
        self.root.join("runner-key.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_root() {
        let l = DataLayout::new("/srv/atrund");
        for p in [
            l.bundles(),
            l.bundle_data("did_plc_a", "hello"),
            l.bundle_deno("did_plc_a", "hello"),
            l.instance_work("abc-1"),
            l.rootfs(),
            l.volumes(),
            l.revisions(),
            l.origins(),
            l.default_key_file(),
        ] {
            assert!(p.starts_with(l.root()), "{}", p.display());
        }
        assert_eq!(
            l.bundle_data("did_plc_a", "hello"),
            PathBuf::from("/srv/atrund/data/did_plc_a/hello")
        );
        for d in DataLayout::DIRS {
            assert!(l.root().join(d).starts_with(l.root()));
        }
        assert_eq!(l.run(), l.root().join(DataLayout::DIRS[3]));
    }
}
