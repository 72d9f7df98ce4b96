//! The binding envelope: what is sealed for one secret value. A sealed box authenticates nothing
//! about who sealed it or for what, and the signed commit only proves who *wrote* the record, so
//! a box copied from another author's record (or another bundle's) would otherwise open anywhere
//! the same runner key is used. The sealed plaintext therefore names its place — author DID,
//! bundle, secret name and runner key — and the runner opens a value only where every field
//! matches the record it was proven from.
//!
//! Owns: the envelope's byte format and the comparison. Must not touch: which record is being
//! opened (the caller passes the proven place) or how a value is used.
//!
//! Format (format 2 of `dev.atrund.secrets`): the UTF-8 JSON object
//! `{"v":2,"did":…,"bundle":…,"name":…,"runnerKey":…,"value":…}` with exactly those keys. JSON so
//! any libsodium binding can produce it (`JSON.stringify` + `crypto_box_seal`).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{RunnerPublicKey, SecretsError};

/// Largest plaintext value.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Largest binding envelope: a value of [`MAX_VALUE_BYTES`] with JSON escaping room, plus the
/// DID, bundle, name and key.
pub const MAX_ENVELOPE_BYTES: usize = 2 * MAX_VALUE_BYTES + 4096;

/// Envelope version inside the box (equal to the record's `format`).
pub const ENVELOPE_VERSION: u32 = 2;

/// Where a sealed value belongs.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The author's DID: the repository the record is proven from.
    pub did: &'a str,
    /// The bundle name the record is for.
    pub bundle: &'a str,
    /// The secret's (environment variable) name.
    pub name: &'a str,
    /// The runner key the value is sealed to.
    pub runner_key: &'a RunnerPublicKey,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    v: u32,
    did: String,
    bundle: String,
    name: String,
    runner_key: String,
    value: String,
}

impl Drop for Envelope {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

/// Seals `value` for exactly `place`.
pub fn seal_bound(place: &Binding<'_>, value: &str) -> Result<Vec<u8>, SecretsError> {
    let env = Envelope {
        v: ENVELOPE_VERSION,
        did: place.did.to_string(),
        bundle: place.bundle.to_string(),
        name: place.name.to_string(),
        runner_key: place.runner_key.to_multibase(),
        value: value.to_string(),
    };
    let failed = |detail: String| SecretsError::SealFailed {
        name: place.name.to_string(),
        detail,
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(failed(format!(
            "the value is {} bytes; at most {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    let plain = Zeroizing::new(serde_json::to_vec(&env).map_err(|e| failed(e.to_string()))?);
    if plain.len() > MAX_ENVELOPE_BYTES {
        return Err(failed(format!(
            "the value needs {} bytes once JSON-escaped with its binding; at most {MAX_ENVELOPE_BYTES} (use fewer control characters or quotes)",
            plain.len()
        )));
    }
    place.runner_key.seal(place.name, &plain)
}

/// Which field of the envelope did not match the place it was opened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingField {
    Author,
    Bundle,
    Name,
    RunnerKey,
}

impl BindingField {
    pub fn describe(self) -> &'static str {
        match self {
            BindingField::Author => "another author (DID)",
            BindingField::Bundle => "another bundle",
            BindingField::Name => "another secret name",
            BindingField::RunnerKey => "another runner key",
        }
    }
}

/// Reads an opened envelope and checks it was sealed for `place`; returns the value. Errors never
/// quote the plaintext (serde's messages can contain input, so they are replaced).
pub(crate) fn check_bound(
    plain: &[u8],
    place: &Binding<'_>,
) -> Result<Zeroizing<String>, SecretsError> {
    let malformed = || SecretsError::Invalid {
        bundle: place.bundle.to_string(),
        detail: format!(
            "the sealed value of '{}' is not a format-{ENVELOPE_VERSION} envelope",
            place.name
        ),
    };
    let env: Envelope = serde_json::from_slice(plain).map_err(|_| malformed())?;
    if env.v != ENVELOPE_VERSION {
        return Err(malformed());
    }
    let mismatch = if env.did != place.did {
        Some(BindingField::Author)
    } else if env.bundle != place.bundle {
        Some(BindingField::Bundle)
    } else if env.name != place.name {
        Some(BindingField::Name)
    } else if env.runner_key != place.runner_key.to_multibase() {
        Some(BindingField::RunnerKey)
    } else {
        None
    };
    if let Some(field) = mismatch {
        return Err(SecretsError::BindingMismatch {
            bundle: place.bundle.to_string(),
            name: place.name.to_string(),
            field,
        });
    }
    if env.value.len() > MAX_VALUE_BYTES {
        return Err(SecretsError::Invalid {
            bundle: place.bundle.to_string(),
            detail: format!(
                "the value of '{}' is over {MAX_VALUE_BYTES} bytes",
                place.name
            ),
        });
    }
    Ok(Zeroizing::new(env.value.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: RunnerPublicKey = RunnerPublicKey([5; 32]);

    fn place<'a>(did: &'a str, bundle: &'a str, name: &'a str) -> Binding<'a> {
        Binding {
            did,
            bundle,
            name,
            runner_key: &KEY,
        }
    }

    fn plain(p: &Binding<'_>, value: &str) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            v: ENVELOPE_VERSION,
            did: p.did.into(),
            bundle: p.bundle.into(),
            name: p.name.into(),
            runner_key: p.runner_key.to_multibase(),
            value: value.into(),
        })
        .unwrap()
    }

    #[test]
    fn every_field_is_checked() {
        let here = place("did:plc:a", "vault", "TOKEN");
        let p = plain(&here, "v1");
        assert_eq!(&*check_bound(&p, &here).unwrap(), "v1");
        let other_key = RunnerPublicKey([6; 32]);
        let cases = [
            (place("did:plc:b", "vault", "TOKEN"), BindingField::Author),
            (place("did:plc:a", "other", "TOKEN"), BindingField::Bundle),
            (place("did:plc:a", "vault", "OTHER"), BindingField::Name),
            (
                Binding {
                    runner_key: &other_key,
                    ..here
                },
                BindingField::RunnerKey,
            ),
        ];
        for (elsewhere, field) in cases {
            match check_bound(&p, &elsewhere) {
                Err(SecretsError::BindingMismatch { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_envelopes_never_quote_the_plaintext() {
        let here = place("did:plc:a", "vault", "TOKEN");
        let canary = "canary-7d1e";
        let extra = format!(
            r#"{{"v":2,"did":"did:plc:a","bundle":"vault","name":"TOKEN","runnerKey":"{}","value":"x","more":"{canary}"}}"#,
            KEY.to_multibase()
        );
        let wrong_v = String::from_utf8(plain(&here, canary))
            .unwrap()
            .replace("\"v\":2", "\"v\":3");
        for bad in [
            canary.to_string(),
            extra,
            wrong_v,
            format!("{{\"v\":{canary}"),
        ] {
            let e = check_bound(bad.as_bytes(), &here).unwrap_err();
            assert_eq!(e.code(), "SecretsInvalid");
            assert!(!e.to_string().contains(canary), "{e}");
        }
    }
}
