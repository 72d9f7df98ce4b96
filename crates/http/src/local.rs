//! Local development bundles (`at-rund dev DIR`): a folder with a code file and `manifest.json`,
//! served at `/bundle/local/{name}/latest/{endpoint}` through the same pool and sandbox as
//! published bundles, with no PDS and no network.
//!
//! Owns: reading the folder on each request and noticing edits (the code's hash is part of the
//! instance key, so an edit is served by a fresh instance on the next request). Must not touch:
//! identity or fetching.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest;

use crate::error::ApiError;
use atrund_bundle::Manifest;

/// Code file names tried in order when `--entry` is not given.
pub const ENTRY_CANDIDATES: [&str; 3] = ["main.js", "main.ts", "bundle.js"];

/// A bundle served from a local folder.
#[derive(Debug)]
pub struct LocalBundle {
    pub name: String,
    pub dir: PathBuf,
    pub entry: PathBuf,
    last_key: Mutex<Option<String>>,
}

/// What one request sees of the folder.
pub struct LocalSnapshot {
    pub manifest: Manifest,
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
        atrund_bundle::record::validate_name(&name)
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
        let bundle = Self {
            name,
            dir,
            entry,
            last_key: Mutex::new(None),
        };
        bundle.snapshot().map_err(|e| e.message)?;
        Ok(bundle)
    }

    /// Reads the folder now.
    pub fn snapshot(&self) -> Result<LocalSnapshot, ApiError> {
        let manifest_path = self.dir.join("manifest.json");
        let manifest_text = std::fs::read(&manifest_path).map_err(|e| {
            ApiError::new(
                "BundleInvalid",
                format!("cannot read {}: {e}", manifest_path.display()),
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&manifest_text).map_err(|e| {
            ApiError::new(
                "BundleInvalid",
                format!("{} is not a valid manifest: {e}", manifest_path.display()),
            )
        })?;
        manifest
            .validate()
            .map_err(|e| ApiError::new("BundleInvalid", e.to_string()))?;
        let code = std::fs::read(&self.entry).map_err(|e| {
            ApiError::new(
                "BundleInvalid",
                format!("cannot read {}: {e}", self.entry.display()),
            )
        })?;
        let mut h = sha2::Sha256::new();
        h.update(&code);
        h.update(&manifest_text);
        let digest = h.finalize();
        let key = format!("local-{}", hex(&digest[..16]));
        let mut last = self.last_key.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = match last.as_ref() {
            Some(prev) if *prev != key => Some(prev.clone()),
            _ => None,
        };
        *last = Some(key.clone());
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

    #[test]
    fn edits_change_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.js"), "export const a = 1;").unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"endpoints":[{"name":"a"}]}"#,
        )
        .unwrap();
        let b = LocalBundle::open(dir.path(), Some("demo"), None).unwrap();
        let s1 = b.snapshot().unwrap();
        assert!(s1.replaced.is_none());
        std::fs::write(dir.path().join("main.js"), "export const a = 2;").unwrap();
        let s2 = b.snapshot().unwrap();
        assert_ne!(s1.key, s2.key);
        assert_eq!(s2.replaced.as_deref(), Some(s1.key.as_str()));
        std::fs::write(dir.path().join("manifest.json"), r#"{"nope":1}"#).unwrap();
        assert_eq!(b.snapshot().err().unwrap().code, "BundleInvalid");
    }

    #[test]
    fn missing_folder_or_entry_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = LocalBundle::open(dir.path(), Some("demo"), None).unwrap_err();
        assert!(e.contains("no code file"), "{e}");
        assert!(LocalBundle::open(&dir.path().join("nope"), None, None).is_err());
    }
}
