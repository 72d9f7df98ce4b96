//! `dev.atrund.secrets` (lexicons/dev.atrund.secrets.json): one bundle's secrets sealed for one
//! runner key, at the deterministic record key `{bundle}:{fingerprint(runner key)}` so that a
//! runner finds it with one proven `getRecord` and never lists. Also the secret-name rules.
//!
//! Owns: the record's shape in DAG-CBOR (what the runner verifies) and in JSON (what the author
//! CLI reads and writes through the PDS, `bytes` as `{"$bytes": base64}`), and its validation.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::envelope::{ENVELOPE_VERSION, MAX_ENVELOPE_BYTES};
use crate::{RunnerPublicKey, SecretsError};

/// Collection of sealed secrets.
pub const SECRETS_COLLECTION: &str = "dev.atrund.secrets";
/// The record format this runner writes and opens: values sealed in binding envelopes.
pub const RECORD_FORMAT: u64 = ENVELOPE_VERSION as u64;
/// Most entries one record may hold.
pub const MAX_ENTRIES: usize = 64;
/// Sealed-box overhead: ephemeral public key (32) + Poly1305 tag (16).
const SEAL_OVERHEAD: usize = 48;
const MAX_NAME_LEN: usize = 128;

/// One sealed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEntry {
    /// Environment variable name.
    pub name: String,
    /// `crypto_box_seal(value, runnerKey)`.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// `dev.atrund.secrets`. `$type` is accepted and ignored when decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsRecord {
    /// [`RECORD_FORMAT`]: every value is a binding envelope (`envelope`). Records without it
    /// predate the binding and are refused (`SecretsOutdated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u64>,
    /// The bundle these secrets belong to.
    pub name: String,
    /// Multibase X25519 key the values are sealed to.
    pub runner_key: String,
    pub entries: Vec<SealedEntry>,
    pub updated_at: String,
}

/// Record key of `bundle`'s secrets for the runner with key `key`.
pub fn secrets_rkey(bundle: &str, key: &RunnerPublicKey) -> String {
    format!("{bundle}:{}", key.fingerprint())
}

/// Environment names a secret may not take: they steer Deno, the dynamic loader, libc, proxies
/// (which would route around the `net` allow-list) or command lookup for `--allow-run`.
const REFUSED_PREFIXES: &[&str] = &[
    "DENO_", "LD_", "RUST_", "MALLOC_", "GLIBC_", "NODE_", "V8_", "SSL_", "XDG_", "LC_",
];
const REFUSED_NAMES: &[&str] = &[
    "NO_COLOR", "PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "SHELL", "USER",
    "PWD", "TERM",
];

/// Checks a secret's name: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128
/// characters) that is not one of the names that steer the runtime.
pub fn validate_secret_name(name: &str) -> Result<(), SecretsError> {
    let bad = |reason| {
        Err(SecretsError::BadName {
            name: name.chars().take(MAX_NAME_LEN + 1).collect(),
            reason,
        })
    };
    let syntax = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !syntax {
        return bad("use 1-128 letters, digits and '_', not starting with a digit");
    }
    let upper = name.to_ascii_uppercase();
    if REFUSED_PREFIXES.iter().any(|p| upper.starts_with(p)) || REFUSED_NAMES.contains(&&*upper) {
        return bad("it would steer the runtime (DENO_*, LD_*, RUST_*, PATH, HOME, NO_COLOR, ... are reserved)");
    }
    if upper.ends_with("_PROXY") {
        return bad("proxy variables would route around the bundle's net allow-list");
    }
    Ok(())
}

impl SecretsRecord {
    /// Structure checks; the runner key is checked when the record is opened.
    pub fn validate(&self, bundle: &str) -> Result<(), SecretsError> {
        let invalid = |detail: String| SecretsError::Invalid {
            bundle: bundle.to_string(),
            detail,
        };
        match self.format {
            None => {
                return Err(SecretsError::Outdated {
                    bundle: bundle.to_string(),
                })
            }
            Some(RECORD_FORMAT) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "format {other} is not one this runner opens (it opens format {RECORD_FORMAT}); upgrade the runner or seal with a matching at-run"
                )))
            }
        }
        if self.name != bundle {
            return Err(invalid(format!(
                "it names bundle '{}'",
                self.name.chars().take(64).collect::<String>()
            )));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(invalid(format!(
                "{} entries, more than {MAX_ENTRIES}",
                self.entries.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            validate_secret_name(&e.name).map_err(|err| invalid(err.to_string()))?;
            if !seen.insert(e.name.as_str()) {
                return Err(invalid(format!("'{}' appears twice", e.name)));
            }
            if e.sealed.len() < SEAL_OVERHEAD || e.sealed.len() > SEAL_OVERHEAD + MAX_ENVELOPE_BYTES
            {
                return Err(invalid(format!(
                    "the sealed value of '{}' is {} bytes; a sealed box is 48 to {} bytes",
                    e.name,
                    e.sealed.len(),
                    SEAL_OVERHEAD + MAX_ENVELOPE_BYTES
                )));
            }
        }
        Ok(())
    }

    /// The record as the PDS's JSON API takes it (`$type`, `bytes` as `{"$bytes": ...}`).
    pub fn to_json(&self) -> Value {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut v = json!({
            "$type": SECRETS_COLLECTION,
            "name": self.name,
            "runnerKey": self.runner_key,
            "entries": self.entries.iter().map(|e| json!({
                "name": e.name,
                "sealed": { "$bytes": b64.encode(&e.sealed) },
            })).collect::<Vec<_>>(),
            "updatedAt": self.updated_at,
        });
        if let (Some(f), Some(obj)) = (self.format, v.as_object_mut()) {
            obj.insert("format".into(), json!(f));
        }
        v
    }

    /// Parses the PDS's JSON form (as returned by `com.atproto.repo.getRecord`'s `value`).
    pub fn from_json(v: &Value) -> Result<SecretsRecord, String> {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("no string '{k}'"))
        };
        let entries = v
            .get("entries")
            .and_then(Value::as_array)
            .ok_or("no 'entries' list")?
            .iter()
            .map(|e| {
                let name = e
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("an entry has no 'name'")?;
                let b64 = e
                    .get("sealed")
                    .and_then(|s| s.get("$bytes"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("entry '{name}' has no sealed {{\"$bytes\"}}"))?;
                let sealed =
                    decode_b64(b64).ok_or_else(|| format!("entry '{name}' is not base64"))?;
                Ok(SealedEntry {
                    name: name.to_string(),
                    sealed,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let format = match v.get("format") {
            None | Some(Value::Null) => None,
            Some(f) => Some(f.as_u64().ok_or("'format' is not a non-negative integer")?),
        };
        Ok(SecretsRecord {
            format,
            name: s("name")?,
            runner_key: s("runnerKey")?,
            entries,
            updated_at: s("updatedAt")?,
        })
    }
}

/// `$bytes` is specified without padding; accept padded input too.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD_NO_PAD
        .decode(s)
        .ok()
        .or_else(|| STANDARD.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for ok in ["API_TOKEN", "a", "_x", "Db2_URL", &"A".repeat(128)] {
            assert!(validate_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1X",
            "A-B",
            "A=B",
            "A,B",
            "A B",
            "É",
            &"A".repeat(129),
            "DENO_DIR",
            "deno_dir",
            "LD_PRELOAD",
            "NO_COLOR",
            "PATH",
            "path",
            "HOME",
            "HTTPS_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "GLIBC_TUNABLES",
            "RUST_LOG",
            "SSL_CERT_FILE",
        ] {
            let e = validate_secret_name(bad).unwrap_err();
            assert_eq!(e.code(), "SecretNameInvalid", "{bad}");
        }
    }

    fn rec() -> SecretsRecord {
        SecretsRecord {
            format: Some(RECORD_FORMAT),
            name: "hello".into(),
            runner_key: RunnerPublicKey([3; 32]).to_multibase(),
            entries: vec![SealedEntry {
                name: "API_TOKEN".into(),
                sealed: (0..60u8).collect(),
            }],
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn json_and_cbor_forms_round_trip() {
        let r = rec();
        let j = r.to_json();
        assert_eq!(j["$type"], SECRETS_COLLECTION);
        assert!(j["entries"][0]["sealed"]["$bytes"].is_string());
        assert_eq!(SecretsRecord::from_json(&j).unwrap(), r);
        // The PDS stores `bytes` as a CBOR byte string, which is what the runner decodes.
        let cbor = serde_ipld_dagcbor::to_vec(&r).unwrap();
        let back: SecretsRecord = serde_ipld_dagcbor::from_slice(&cbor).unwrap();
        assert_eq!(back, r);
        assert!(SecretsRecord::from_json(&json!({"name": "x"})).is_err());
    }

    #[test]
    fn validation() {
        assert!(rec().validate("hello").is_ok());
        let mut twice = rec();
        twice.entries.push(twice.entries[0].clone());
        let mut short = rec();
        short.entries[0].sealed.truncate(47);
        let mut bad_name = rec();
        bad_name.entries[0].name = "LD_PRELOAD".into();
        let mut many = rec();
        many.entries = (0..=MAX_ENTRIES)
            .map(|i| SealedEntry {
                name: format!("S{i}"),
                sealed: vec![0; 48],
            })
            .collect();
        for r in [twice, short, bad_name, many] {
            assert_eq!(r.validate("hello").unwrap_err().code(), "SecretsInvalid");
        }
        assert!(rec().validate("other").is_err());
        let old = SecretsRecord {
            format: None,
            ..rec()
        };
        assert_eq!(old.validate("hello").unwrap_err().code(), "SecretsOutdated");
        let future = SecretsRecord {
            format: Some(3),
            ..rec()
        };
        assert_eq!(
            future.validate("hello").unwrap_err().code(),
            "SecretsInvalid"
        );
        let key = RunnerPublicKey([3; 32]);
        let rkey = secrets_rkey("hello", &key);
        assert!(rkey.starts_with("hello:") && rkey.len() == 6 + 16);
    }
}
