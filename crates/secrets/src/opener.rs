//! Opening records at instance start, once per record version: the decrypted values of each
//! bundle are kept (zeroized when replaced or dropped) only while that record version is the
//! current one, so every new instance of a bundle gets its env without another X25519 operation,
//! and a changed record is opened again.
//!
//! Owns: that cache. Must not touch: fetching (the caller passes a verified record).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{RunnerKeys, RunnerPublicKey, SecretEnv, SecretsError, SecretsRecord};

type Opened = HashMap<(String, String), (String, Arc<SecretEnv>)>; // (did, bundle) → (cid, env)

/// The runner's keys plus the opened-record cache; shared by all requests. `Debug` shows public
/// keys and secret names only.
#[derive(Debug)]
pub struct Opener {
    keys: RunnerKeys,
    opened: Mutex<Opened>,
}

impl Opener {
    pub fn new(keys: RunnerKeys) -> Self {
        Opener {
            keys,
            opened: Mutex::default(),
        }
    }

    pub fn keys(&self) -> &RunnerKeys {
        &self.keys
    }

    pub fn public_key(&self) -> RunnerPublicKey {
        self.keys.public_key()
    }

    /// The values of `record` (CID `cid`) of `did`'s bundle `bundle`, opened at most once per
    /// record version. Errors name the bundle and entry, never a value.
    pub fn open(
        &self,
        did: &str,
        bundle: &str,
        cid: &str,
        record: &SecretsRecord,
    ) -> Result<Arc<SecretEnv>, SecretsError> {
        let key = (did.to_string(), bundle.to_string());
        if let Ok(opened) = self.opened.lock() {
            if let Some((c, env)) = opened.get(&key) {
                if c == cid {
                    return Ok(env.clone());
                }
            }
        }
        let started = Instant::now();
        let env = Arc::new(self.keys.open(did, bundle, record)?);
        tracing::debug!(
            did,
            bundle,
            record = cid,
            secrets = env.len(),
            micros = started.elapsed().as_micros() as u64,
            "secrets decrypted"
        );
        if let Ok(mut opened) = self.opened.lock() {
            opened.insert(key, (cid.to_string(), env.clone()));
        }
        Ok(env)
    }

    /// Drops the opened values of a bundle that no longer has a secrets record.
    pub fn forget(&self, did: &str, bundle: &str) {
        if let Ok(mut opened) = self.opened.lock() {
            opened.remove(&(did.to_string(), bundle.to_string()));
        }
    }
}
