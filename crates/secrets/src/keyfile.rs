//! The runner's keypair file: the current X25519 secret key and the previous ones, each kept
//! for decryption until `retiredAt + grace`. JSON, written atomically with mode 0600; a file that
//! group or others can read is refused, naming the file and the `chmod` that fixes it.
//!
//! Owns: creating, loading, rotating and pruning keys, and opening records with them. Must not
//! touch: the network, or any value beyond returning it in a [`SecretEnv`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use crypto_box::aead::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::envelope::{check_bound, Binding};
use crate::record::SecretsRecord;
use crate::value::{SecretEnv, SecretValue};
use crate::{RunnerPublicKey, SecretsError};

const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    current: StoredKey,
    #[serde(default)]
    previous: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredKey {
    /// Base64 of the 32-byte X25519 secret key.
    secret_key: String,
    /// Multibase public key: redundant, so an operator can see which key is which.
    public_key: String,
    /// Unix seconds.
    created_at: u64,
    /// Unix seconds; set on previous keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<u64>,
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.secret_key.zeroize();
    }
}

/// One key held in memory. `crypto_box::SecretKey` zeroizes itself on drop.
struct Held {
    secret: crypto_box::SecretKey,
    public: RunnerPublicKey,
    created_at: u64,
    retired_at: Option<u64>,
}

/// What [`RunnerKeys::load_or_create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileStatus {
    /// There was no file: a new key was made and written.
    Created,
    /// The file was loaded; this many previous keys were past their grace period and removed.
    Loaded { pruned: usize },
}

/// The runner's keys. `Debug` shows public keys only.
pub struct RunnerKeys {
    path: PathBuf,
    grace: Duration,
    current: Held,
    previous: Vec<Held>,
}

impl std::fmt::Debug for RunnerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerKeys")
            .field("path", &self.path)
            .field("current", &self.current.public)
            .field(
                "previous",
                &self.previous.iter().map(|h| h.public).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn generate() -> Held {
    let secret = crypto_box::SecretKey::generate(&mut OsRng);
    let public = RunnerPublicKey(*secret.public_key().as_bytes());
    Held {
        secret,
        public,
        created_at: now_secs(),
        retired_at: None,
    }
}

impl RunnerKeys {
    /// Loads the key file at `path`, or creates it (mode 0600) with a new key if it does not
    /// exist. Previous keys past `grace` are removed from the file.
    pub fn load_or_create(
        path: &Path,
        grace: Duration,
    ) -> Result<(RunnerKeys, KeyFileStatus), SecretsError> {
        match Self::load(path, grace)? {
            Some(mut keys) => {
                let pruned = keys.prune(now_secs());
                if pruned > 0 {
                    keys.write()?;
                }
                Ok((keys, KeyFileStatus::Loaded { pruned }))
            }
            None => {
                let keys = RunnerKeys {
                    path: path.to_path_buf(),
                    grace,
                    current: generate(),
                    previous: Vec::new(),
                };
                keys.write()?;
                Ok((keys, KeyFileStatus::Created))
            }
        }
    }

    /// Makes a new current key; the old one is kept for decryption for `grace`. Creates the
    /// file if there is none.
    pub fn rotate(path: &Path, grace: Duration) -> Result<RunnerKeys, SecretsError> {
        let Some(mut keys) = Self::load(path, grace)? else {
            return Ok(Self::load_or_create(path, grace)?.0);
        };
        let now = now_secs();
        let mut old = std::mem::replace(&mut keys.current, generate());
        old.retired_at = Some(now);
        keys.previous.insert(0, old);
        keys.prune(now);
        keys.write()?;
        Ok(keys)
    }

    /// `None` when the file does not exist.
    fn load(path: &Path, grace: Duration) -> Result<Option<RunnerKeys>, SecretsError> {
        let io = |source| SecretsError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::KeyFileInsecure {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let invalid = |detail: String| SecretsError::KeyFileInvalid {
            path: path.to_path_buf(),
            detail,
        };
        // serde_json's own errors quote no input beyond a position, so they are safe to show.
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(invalid(format!(
                "version {} (this runner reads version {FILE_VERSION})",
                file.version
            )));
        }
        let held = |k: &StoredKey, what: &str| -> Result<Held, SecretsError> {
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(&k.secret_key)
                    .map_err(|_| invalid(format!("{what} secretKey is not base64")))?,
            );
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| invalid(format!("{what} secretKey is not 32 bytes")))?;
            let secret = crypto_box::SecretKey::from(bytes);
            let public = RunnerPublicKey(*secret.public_key().as_bytes());
            if public.to_multibase() != k.public_key {
                return Err(invalid(format!(
                    "{what} publicKey does not match its secretKey"
                )));
            }
            Ok(Held {
                secret,
                public,
                created_at: k.created_at,
                retired_at: k.retired_at,
            })
        };
        let current = held(&file.current, "current")?;
        let previous = file
            .previous
            .iter()
            .map(|k| match k.retired_at {
                Some(_) => held(k, "previous"),
                None => Err(invalid("a previous key has no retiredAt".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RunnerKeys {
            path: path.to_path_buf(),
            grace,
            current,
            previous,
        }))
    }

    /// Drops previous keys whose grace period ended; returns how many.
    fn prune(&mut self, now: u64) -> usize {
        let before = self.previous.len();
        let grace = self.grace.as_secs();
        self.previous
            .retain(|h| h.retired_at.unwrap_or(0).saturating_add(grace) > now);
        before - self.previous.len()
    }

    /// Writes the file atomically (temp file with mode 0600, then rename).
    fn write(&self) -> Result<(), SecretsError> {
        let io = |source| SecretsError::KeyFileIo {
            path: self.path.clone(),
            source,
        };
        let stored = |h: &Held| StoredKey {
            secret_key: base64::engine::general_purpose::STANDARD.encode(h.secret.to_bytes()),
            public_key: h.public.to_multibase(),
            created_at: h.created_at,
            retired_at: h.retired_at,
        };
        let file = KeyFile {
            version: FILE_VERSION,
            current: stored(&self.current),
            previous: self.previous.iter().map(stored).collect(),
        };
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?,
        );
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// The key authors seal to.
    pub fn public_key(&self) -> RunnerPublicKey {
        self.current.public
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys that still decrypt, current first: where to look for an author's record.
    pub fn lookup_keys(&self) -> Vec<RunnerPublicKey> {
        let now = now_secs();
        self.usable(now).map(|h| h.public).collect()
    }

    fn usable(&self, now: u64) -> impl Iterator<Item = &Held> {
        let grace = self.grace.as_secs();
        std::iter::once(&self.current).chain(
            self.previous
                .iter()
                .filter(move |h| h.retired_at.unwrap_or(0).saturating_add(grace) > now),
        )
    }

    /// Checks `record` (proven from `did`'s repository) belongs to bundle `bundle` and this
    /// runner, opens every value, and checks each was sealed for exactly this author, bundle,
    /// name and runner key (`envelope`).
    pub fn open(
        &self,
        did: &str,
        bundle: &str,
        record: &SecretsRecord,
    ) -> Result<SecretEnv, SecretsError> {
        record.validate(bundle)?;
        let record_key = RunnerPublicKey::from_multibase(&record.runner_key).map_err(|_| {
            SecretsError::Invalid {
                bundle: bundle.to_string(),
                detail: "runnerKey is not a multibase X25519 key".into(),
            }
        })?;
        let Some(held) = self.usable(now_secs()).find(|h| h.public == record_key) else {
            return Err(SecretsError::NotForThisRunner {
                bundle: bundle.to_string(),
                record_key: record.runner_key.clone(),
                runner_key: self.current.public.to_multibase(),
            });
        };
        let mut out = Vec::with_capacity(record.entries.len());
        for e in &record.entries {
            let undecryptable = || SecretsError::Undecryptable {
                bundle: bundle.to_string(),
                name: e.name.clone(),
            };
            let plain = Zeroizing::new(held.secret.unseal(&e.sealed).map_err(|_| undecryptable())?);
            let place = Binding {
                did,
                bundle,
                name: &e.name,
                runner_key: &held.public,
            };
            let value = check_bound(&plain, &place)?;
            if value.contains('\0') {
                return Err(SecretsError::Invalid {
                    bundle: bundle.to_string(),
                    detail: format!("the value of '{}' contains a NUL byte", e.name),
                });
            }
            out.push((e.name.clone(), SecretValue::new(value.to_string())));
        }
        Ok(SecretEnv(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SealedEntry;

    const DID: &str = "did:plc:author";

    fn record(keys: &RunnerKeys, pairs: &[(&str, &str)]) -> SecretsRecord {
        let pk = keys.public_key();
        SecretsRecord {
            format: Some(crate::RECORD_FORMAT),
            name: "hello".into(),
            runner_key: pk.to_multibase(),
            entries: pairs
                .iter()
                .map(|(n, v)| SealedEntry {
                    name: n.to_string(),
                    sealed: crate::seal_bound(
                        &Binding {
                            did: DID,
                            bundle: "hello",
                            name: n,
                            runner_key: &pk,
                        },
                        v,
                    )
                    .unwrap(),
                })
                .collect(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn created_with_mode_0600_and_reloaded_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/runner-key.json");
        let grace = Duration::from_secs(3600);
        let (a, st) = RunnerKeys::load_or_create(&path, grace).unwrap();
        assert_eq!(st, KeyFileStatus::Created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, st) = RunnerKeys::load_or_create(&path, grace).unwrap();
        assert_eq!(st, KeyFileStatus::Loaded { pruned: 0 });
        assert_eq!(a.public_key(), b.public_key());
        // Debug never shows secret key material.
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sk = v["current"]["secretKey"].as_str().unwrap();
        assert!(!format!("{a:?}").contains(sk));
    }

    #[test]
    fn readable_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner-key.json");
        RunnerKeys::load_or_create(&path, Duration::ZERO).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = RunnerKeys::load_or_create(&path, Duration::ZERO).unwrap_err();
            assert_eq!(e.code(), "KeyFileInsecure");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(RunnerKeys::load_or_create(&path, Duration::ZERO).is_ok());
    }

    #[test]
    fn corrupt_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        RunnerKeys::load_or_create(&path, Duration::ZERO).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["current"]["publicKey"] = RunnerPublicKey([1; 32]).to_multibase().into();
        for bad in [
            v.to_string(),
            "{".to_string(),
            text.replace("\"version\": 1", "\"version\": 9"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = RunnerKeys::load_or_create(&path, Duration::ZERO).unwrap_err();
            assert_eq!(e.code(), "KeyFileInvalid", "{e}");
        }
    }

    #[test]
    fn seal_open_round_trip_wrong_key_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) =
            RunnerKeys::load_or_create(&dir.path().join("a.json"), Duration::ZERO).unwrap();
        let (other, _) =
            RunnerKeys::load_or_create(&dir.path().join("b.json"), Duration::ZERO).unwrap();
        let rec = record(
            &keys,
            &[("API_TOKEN", "tok-123"), ("DB_URL", "postgres://x")],
        );
        let env = keys.open(DID, "hello", &rec).unwrap();
        let got: Vec<_> = env.iter().map(|(n, v)| (n, v.expose())).collect();
        assert_eq!(got, [("API_TOKEN", "tok-123"), ("DB_URL", "postgres://x")]);
        assert!(!format!("{env:?}").contains("tok-123"));

        // Sealed for another runner, and saying so.
        let e = keys
            .open(DID, "hello", &record(&other, &[("A", "v")]))
            .unwrap_err();
        assert_eq!(e.code(), "SecretsNotForThisRunner");
        // Claims this runner's key but was sealed to another.
        let mut forged = record(&other, &[("A", "v")]);
        forged.runner_key = keys.public_key().to_multibase();
        let e = keys.open(DID, "hello", &forged).unwrap_err();
        assert_eq!(e.code(), "SecretsUndecryptable");
        assert!(e.to_string().contains("'A'"));
        // One flipped bit anywhere.
        for i in [0, 31, 32, 47, 48, rec.entries[0].sealed.len() - 1] {
            let mut t = rec.clone();
            t.entries[0].sealed[i] ^= 1;
            assert_eq!(
                keys.open(DID, "hello", &t).unwrap_err().code(),
                "SecretsUndecryptable",
                "bit at {i}"
            );
        }
        // A record for another bundle name.
        assert_eq!(
            keys.open(DID, "other", &rec).unwrap_err().code(),
            "SecretsInvalid"
        );
        // The copy attack: the same record proven from another author's repository, and its
        // entries under another bundle's name or swapped between names.
        let e = keys.open("did:plc:thief", "hello", &rec).unwrap_err();
        assert_eq!(e.code(), "SecretBindingMismatch");
        assert!(e.to_string().contains("another author"), "{e}");
        let mut moved = rec.clone();
        moved.name = "stolen".into();
        assert_eq!(
            keys.open(DID, "stolen", &moved).unwrap_err().code(),
            "SecretBindingMismatch"
        );
        let mut swapped = rec.clone();
        swapped.entries[0].name = "DB_URL".into();
        swapped.entries[1].name = "API_TOKEN".into();
        assert_eq!(
            keys.open(DID, "hello", &swapped).unwrap_err().code(),
            "SecretBindingMismatch"
        );
        // A bare sealed value (the format before the binding) is not opened either.
        let mut bare = rec.clone();
        bare.entries[0].sealed = keys.public_key().seal("API_TOKEN", b"tok-123").unwrap();
        assert_eq!(
            keys.open(DID, "hello", &bare).unwrap_err().code(),
            "SecretsInvalid"
        );
        let mut old = rec.clone();
        old.format = None;
        assert_eq!(
            keys.open(DID, "hello", &old).unwrap_err().code(),
            "SecretsOutdated"
        );
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_grace_period_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let grace = Duration::from_secs(3600);
        let (old, _) = RunnerKeys::load_or_create(&path, grace).unwrap();
        let sealed_for_old = record(&old, &[("A", "old-value")]);
        let new = RunnerKeys::rotate(&path, grace).unwrap();
        assert_ne!(new.public_key(), old.public_key());
        assert_eq!(new.lookup_keys(), [new.public_key(), old.public_key()]);
        assert_eq!(
            new.open(DID, "hello", &sealed_for_old)
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .1
                .expose(),
            "old-value"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Loaded again with no grace: the previous key is pruned from memory and the file.
        let (pruned, st) = RunnerKeys::load_or_create(&path, Duration::ZERO).unwrap();
        assert_eq!(st, KeyFileStatus::Loaded { pruned: 1 });
        assert_eq!(pruned.lookup_keys(), [new.public_key()]);
        assert_eq!(
            pruned
                .open(DID, "hello", &sealed_for_old)
                .unwrap_err()
                .code(),
            "SecretsNotForThisRunner"
        );
        let (again, st) = RunnerKeys::load_or_create(&path, grace).unwrap();
        assert_eq!(st, KeyFileStatus::Loaded { pruned: 0 });
        assert_eq!(again.lookup_keys(), [new.public_key()]);
    }

    /// Not a timing assert: prints the median time to open one record, for the report.
    #[test]
    fn time_to_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) =
            RunnerKeys::load_or_create(&dir.path().join("k.json"), Duration::ZERO).unwrap();
        for n in [1usize, 5] {
            let pairs: Vec<(String, String)> =
                (0..n).map(|i| (format!("S{i}"), "x".repeat(64))).collect();
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let rec = record(&keys, &refs);
            let mut times: Vec<Duration> = (0..101)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let env = keys.open(DID, "hello", &rec).unwrap();
                    let d = t.elapsed();
                    assert_eq!(env.len(), n);
                    d
                })
                .collect();
            times.sort();
            eprintln!(
                "time to decrypt a record of {n} secret(s): median {:?}",
                times[50]
            );
        }
    }
}
