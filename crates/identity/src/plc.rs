//! did:plc audit-log verification: re-hashes every operation, checks the `prev` chain, each
//! signature against the previous op's rotation keys, and the genesis hash against the DID.
//! Owns the PLC op shapes (`plc_operation`, `plc_tombstone`, legacy `create`); must not fetch.
//!
//! Hand-rolled because no maintained crate verifies PLC logs without pulling a whole atproto
//! client that cannot target loopback (see the crate docs). Not checked: the 72-hour recovery
//! window behind `nullified` flags; we trust the directory's choice of fork, which it can
//! influence but cannot forge (every op we accept is signed by a rotation key).

use crate::error::IdentityError;
use crate::key::{KeyError, PublicKey};
use crate::syntax::Did;
use base64::Engine as _;
use ipld_core::ipld::Ipld;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Largest DAG-CBOR op the PLC spec allows.
const MAX_OP_BYTES: usize = 7500;
/// Multicodec of DAG-CBOR, and of SHA2-256.
const DAG_CBOR: u64 = 0x71;
const SHA2_256: u64 = 0x12;

/// The identity state after the last valid operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcState {
    /// `did:key` rotation keys, highest priority first.
    pub rotation_keys: Vec<String>,
    /// `verificationMethods.atproto`, a `did:key`, if present.
    pub atproto_key: Option<String>,
    pub also_known_as: Vec<String>,
    /// `services.atproto_pds.endpoint` when its type is AtprotoPersonalDataServer.
    pub pds_endpoint: Option<String>,
    /// How many non-nullified operations were verified.
    pub op_count: usize,
}

/// Verifies a `/log/audit` response for `did` and returns the final state.
/// A log that ends in `plc_tombstone` is `Tombstoned`.
pub fn verify_audit_log(did: &Did, log: &[u8]) -> Result<PlcState, IdentityError> {
    let bad = |reason: String| IdentityError::audit(did.as_str(), reason);
    if did.method() != "plc" {
        return Err(IdentityError::UnsupportedMethod(did.method().to_string()));
    }
    let entries: Value =
        serde_json::from_slice(log).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let entries = entries
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;

    let mut prev: Option<(String, PlcState)> = None;
    let mut tombstoned = false;
    let mut count = 0usize;
    for (idx, entry) in entries.iter().enumerate() {
        let at = |reason: String| bad(format!("entry {idx}: {reason}"));
        let entry = entry
            .as_object()
            .ok_or_else(|| at("not an object".into()))?;
        match entry.get("nullified") {
            Some(Value::Bool(true)) => continue,
            Some(Value::Bool(false)) => {}
            _ => return Err(at("'nullified' is not a boolean".into())),
        }
        if entry.get("did").and_then(Value::as_str) != Some(did.as_str()) {
            return Err(at("belongs to another DID".into()));
        }
        if tombstoned {
            return Err(at("an operation follows a tombstone".into()));
        }
        let claimed_cid = entry
            .get("cid")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no string 'cid'".into()))?;
        let op = entry
            .get("operation")
            .and_then(Value::as_object)
            .ok_or_else(|| at("no 'operation' object".into()))?;

        let signed = op_to_ipld(op).map_err(&at)?;
        let signed_bytes = dag_cbor(&signed).map_err(&at)?;
        if signed_bytes.len() > MAX_OP_BYTES {
            return Err(at(format!(
                "operation is {} bytes, over the {MAX_OP_BYTES}-byte limit",
                signed_bytes.len()
            )));
        }
        let cid = cid_string(&signed_bytes).map_err(&at)?;
        if cid != claimed_cid {
            return Err(at(format!(
                "cid {claimed_cid} does not match the operation's hash {cid}"
            )));
        }

        let op_prev = match op.get("prev") {
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            _ => return Err(at("'prev' must be null or a CID string".into())),
        };
        let expected_prev = prev.as_ref().map(|(c, _)| c.as_str());
        if op_prev != expected_prev {
            return Err(at(format!(
                "prev is {op_prev:?}, expected {expected_prev:?}"
            )));
        }

        let kind = op
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no string 'type'".into()))?;
        let state = match kind {
            "plc_operation" => Some(normalise_operation(op).map_err(&at)?),
            "create" if prev.is_none() => Some(normalise_legacy_create(op).map_err(&at)?),
            "create" => return Err(at("a legacy 'create' op is only valid as genesis".into())),
            "plc_tombstone" if prev.is_some() => None,
            "plc_tombstone" => return Err(at("the genesis op cannot be a tombstone".into())),
            other => return Err(at(format!("unknown operation type '{other}'"))),
        };

        // Genesis is signed by one of its own rotation keys; later ops by the previous op's.
        let signer_keys = match (&prev, &state) {
            (Some((_, p)), _) => &p.rotation_keys,
            (None, Some(s)) => &s.rotation_keys,
            (None, None) => return Err(at("no rotation keys to check the signature".into())),
        };
        check_signature(op, signer_keys).map_err(&at)?;

        if prev.is_none() {
            let digest = Sha256::digest(&signed_bytes);
            let b32 = data_encoding::BASE32_NOPAD
                .encode(&digest)
                .to_ascii_lowercase();
            let expected = b32.get(..24).unwrap_or("");
            if did.method_specific_id() != expected {
                return Err(at(format!(
                    "genesis hash gives did:plc:{expected}, not {did}"
                )));
            }
        }

        count += 1;
        match state {
            Some(mut s) => {
                s.op_count = count;
                prev = Some((cid, s));
            }
            None => {
                tombstoned = true;
                if let Some((c, _)) = prev.as_mut() {
                    *c = cid;
                }
            }
        }
    }
    if tombstoned {
        return Err(IdentityError::Tombstoned(did.to_string()));
    }
    prev.map(|(_, s)| s)
        .ok_or_else(|| bad("the log has no valid operations".into()))
}

/// Signature check: drop `sig` entirely, DAG-CBOR the rest, verify against any rotation key.
fn check_signature(op: &serde_json::Map<String, Value>, keys: &[String]) -> Result<(), String> {
    let sig_b64 = op
        .get("sig")
        .and_then(Value::as_str)
        .ok_or("no string 'sig'")?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|e| format!("sig is not base64url without padding: {e}"))?;
    if sig.len() != 64 {
        return Err(format!("sig is {} bytes, not 64", sig.len()));
    }
    let mut unsigned = op.clone();
    unsigned.remove("sig");
    let unsigned_bytes = dag_cbor(&op_to_ipld(&unsigned)?)?;
    let mut last = None;
    for k in keys {
        match PublicKey::from_did_key(k) {
            Ok(pk) => match pk.verify(&unsigned_bytes, &sig) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(KeyError::HighS) => "signature uses a high S value, which is forbidden".into(),
        Some(e) => format!("no rotation key verifies the signature (last error: {e})"),
        None => "there are no rotation keys".into(),
    })
}

fn normalise_operation(op: &serde_json::Map<String, Value>) -> Result<PlcState, String> {
    let strings = |name: &str| -> Result<Vec<String>, String> {
        op.get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("'{name}' is not an array"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("'{name}' holds a non-string"))
            })
            .collect()
    };
    let rotation_keys = strings("rotationKeys")?;
    if rotation_keys.is_empty() {
        return Err("'rotationKeys' is empty".into());
    }
    let also_known_as = strings("alsoKnownAs")?;
    let vms = op
        .get("verificationMethods")
        .and_then(Value::as_object)
        .ok_or("'verificationMethods' is not an object")?;
    let atproto_key = vms
        .get("atproto")
        .and_then(Value::as_str)
        .map(str::to_string);
    let services = op
        .get("services")
        .and_then(Value::as_object)
        .ok_or("'services' is not an object")?;
    let pds_endpoint = services
        .get("atproto_pds")
        .and_then(Value::as_object)
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("AtprotoPersonalDataServer"))
        .and_then(|s| s.get("endpoint"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(PlcState {
        rotation_keys,
        atproto_key,
        also_known_as,
        pds_endpoint,
        op_count: 0,
    })
}

/// The legacy genesis shape, mapped the way the PLC reference implementation does.
fn normalise_legacy_create(op: &serde_json::Map<String, Value>) -> Result<PlcState, String> {
    let field = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("legacy create op has no string '{name}'"))
    };
    let signing = field("signingKey")?;
    let recovery = field("recoveryKey")?;
    let handle = field("handle")?;
    let service = field("service")?;
    let bare = handle
        .strip_prefix("at://")
        .or_else(|| handle.strip_prefix("https://"))
        .or_else(|| handle.strip_prefix("http://"))
        .unwrap_or(handle);
    let endpoint = if service.starts_with("https://") || service.starts_with("http://") {
        service.to_string()
    } else {
        format!("https://{service}")
    };
    Ok(PlcState {
        rotation_keys: vec![recovery.to_string(), signing.to_string()],
        atproto_key: Some(signing.to_string()),
        also_known_as: vec![format!("at://{bare}")],
        pds_endpoint: Some(endpoint),
        op_count: 0,
    })
}

/// JSON → IPLD for PLC ops. PLC ops carry no floats and no links (`prev` is a string), so only
/// null, bool, integers, strings, lists and maps are accepted.
fn op_to_ipld(op: &serde_json::Map<String, Value>) -> Result<Ipld, String> {
    let map: Result<BTreeMap<String, Ipld>, String> = op
        .iter()
        .map(|(k, v)| json_to_ipld(v).map(|i| (k.clone(), i)))
        .collect();
    Ok(Ipld::Map(map?))
}

fn json_to_ipld(v: &Value) -> Result<Ipld, String> {
    Ok(match v {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ipld::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Ipld::Integer(u.into())
            } else {
                return Err("operation contains a float, which DAG-CBOR ops never have".into());
            }
        }
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(a) => Ipld::List(a.iter().map(json_to_ipld).collect::<Result<_, _>>()?),
        Value::Object(o) => op_to_ipld(o)?,
    })
}

/// Canonical DAG-CBOR (serde_ipld_dagcbor sorts map keys length-first, as DAG-CBOR requires).
pub(crate) fn dag_cbor(v: &Ipld) -> Result<Vec<u8>, String> {
    serde_ipld_dagcbor::to_vec(v).map_err(|e| format!("cannot DAG-CBOR encode: {e}"))
}

/// CIDv1(dag-cbor, sha2-256) in its base32 string form (`bafyrei…`).
pub(crate) fn cid_string(bytes: &[u8]) -> Result<String, String> {
    let digest = Sha256::digest(bytes);
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest)
        .map_err(|e| format!("multihash: {e}"))?;
    Ok(cid::Cid::new_v1(DAG_CBOR, mh).to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k256::ecdsa::signature::Signer as _;
    use serde_json::json;

    /// Signs `op` (without `sig`) with `sk`, returning the op with `sig` set (low-S).
    pub(crate) fn sign(op: &Value, sk: &k256::ecdsa::SigningKey) -> Value {
        let bytes = dag_cbor(&op_to_ipld(op.as_object().unwrap()).unwrap()).unwrap();
        let sig: k256::ecdsa::Signature = sk.sign(&bytes);
        let sig = sig.normalize_s().unwrap_or(sig);
        let mut out = op.clone();
        out["sig"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        out
    }

    pub(crate) fn cid_of(op: &Value) -> String {
        cid_string(&dag_cbor(&op_to_ipld(op.as_object().unwrap()).unwrap()).unwrap()).unwrap()
    }

    pub(crate) fn did_of(genesis: &Value) -> Did {
        let bytes = dag_cbor(&op_to_ipld(genesis.as_object().unwrap()).unwrap()).unwrap();
        let b32 = data_encoding::BASE32_NOPAD
            .encode(&Sha256::digest(&bytes))
            .to_ascii_lowercase();
        format!("did:plc:{}", &b32[..24]).parse().unwrap()
    }

    pub(crate) fn did_key(sk: &k256::ecdsa::SigningKey) -> String {
        PublicKey::K256(*sk.verifying_key()).to_did_key()
    }

    pub(crate) fn entry(did: &Did, op: &Value, nullified: bool) -> Value {
        json!({"did": did.as_str(), "operation": op, "cid": cid_of(op), "nullified": nullified,
               "createdAt": "2024-01-01T00:00:00.000Z"})
    }

    pub(crate) fn key(n: u8) -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[n; 32]).unwrap()
    }

    pub(crate) fn plc_op(
        prev: Option<&str>,
        rotation: &[&k256::ecdsa::SigningKey],
        atproto: &k256::ecdsa::SigningKey,
        handle: &str,
        pds: &str,
    ) -> Value {
        json!({
            "type": "plc_operation",
            "rotationKeys": rotation.iter().map(|k| did_key(k)).collect::<Vec<_>>(),
            "verificationMethods": {"atproto": did_key(atproto)},
            "alsoKnownAs": [format!("at://{handle}")],
            "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": pds}},
            "prev": prev,
        })
    }

    /// A genesis (rotation key 1, atproto key 3) and an update that rotates to key 2 and moves
    /// the handle, signed by key 1. Returns (did, genesis, update).
    pub(crate) fn two_op_chain() -> (Did, Value, Value) {
        let genesis = sign(
            &plc_op(
                None,
                &[&key(1)],
                &key(3),
                "alice.test",
                "https://pds.example.com",
            ),
            &key(1),
        );
        let did = did_of(&genesis);
        let update = sign(
            &plc_op(
                Some(&cid_of(&genesis)),
                &[&key(2)],
                &key(4),
                "alice2.test",
                "https://pds2.example.com",
            ),
            &key(1),
        );
        (did, genesis, update)
    }

    fn log(entries: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&Value::Array(entries.to_vec())).unwrap()
    }

    fn reason(r: Result<PlcState, IdentityError>) -> String {
        match r {
            Err(IdentityError::AuditLogInvalid { reason, .. }) => reason,
            other => panic!("expected AuditLogInvalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_chain() {
        let (did, g, u) = two_op_chain();
        let state = verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &u, false)]),
        )
        .unwrap();
        assert_eq!(state.op_count, 2);
        assert_eq!(state.rotation_keys, vec![did_key(&key(2))]);
        assert_eq!(state.atproto_key, Some(did_key(&key(4))));
        assert_eq!(state.also_known_as, vec!["at://alice2.test".to_string()]);
        assert_eq!(
            state.pds_endpoint.as_deref(),
            Some("https://pds2.example.com")
        );
    }

    #[test]
    fn wrong_prev() {
        let (did, g, _) = two_op_chain();
        let u = sign(
            &plc_op(
                Some("bafyreiadih3ot3zecxp3yghygj2mwxh3szrrifwer2z4iodazbrtuvmmgm"),
                &[&key(2)],
                &key(4),
                "a.test",
                "https://p.example.com",
            ),
            &key(1),
        );
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &u, false)]),
        ));
        assert!(r.contains("prev"), "{r}");
        // A second genesis (prev null) after the first is also a prev error.
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &g, false)]),
        ));
        assert!(r.contains("prev"), "{r}");
    }

    #[test]
    fn bad_signatures() {
        let (did, g, u) = two_op_chain();
        // Update signed by a key that is not a rotation key of the genesis.
        let mut unsigned = u.clone();
        unsigned.as_object_mut().unwrap().remove("sig");
        let forged = sign(&unsigned, &key(9));
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &forged, false)]),
        ));
        assert!(r.contains("no rotation key verifies"), "{r}");

        // Signed by the new op's own rotation key (must be the previous op's).
        let self_signed = sign(&unsigned, &key(2));
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &self_signed, false)]),
        ));
        assert!(r.contains("no rotation key verifies"), "{r}");

        // High-S form of a valid signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let sig = b64.decode(u["sig"].as_str().unwrap()).unwrap();
        let sig = k256::ecdsa::Signature::from_slice(&sig).unwrap();
        let (r_, s_) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r_, -*s_).unwrap();
        let mut high_op = u.clone();
        high_op["sig"] = json!(b64.encode(high.to_bytes()));
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &high_op, false)]),
        ));
        assert!(r.contains("high S"), "{r}");

        // Garbage and short signatures.
        for bad in ["", "!!!", "AAAA", "AAAA=="] {
            let mut op = u.clone();
            op["sig"] = json!(bad);
            let r = reason(verify_audit_log(
                &did,
                &log(&[entry(&did, &g, false), entry(&did, &op, false)]),
            ));
            assert!(r.contains("sig"), "{bad}: {r}");
        }

        // Tampered content after signing: the cid in the entry is recomputed so only the
        // signature can catch it.
        let mut tampered = u.clone();
        tampered["alsoKnownAs"] = json!(["at://mallory.test"]);
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &g, false), entry(&did, &tampered, false)]),
        ));
        assert!(r.contains("no rotation key verifies"), "{r}");
    }

    #[test]
    fn cid_mismatch() {
        let (did, g, u) = two_op_chain();
        let mut e = entry(&did, &u, false);
        e["cid"] = json!(cid_of(&g));
        let r = reason(verify_audit_log(&did, &log(&[entry(&did, &g, false), e])));
        assert!(r.contains("does not match"), "{r}");
    }

    #[test]
    fn wrong_genesis_hash() {
        let (_, g, u) = two_op_chain();
        let other: Did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let r = reason(verify_audit_log(
            &other,
            &log(&[entry(&other, &g, false), entry(&other, &u, false)]),
        ));
        assert!(r.contains("genesis hash"), "{r}");
    }

    #[test]
    fn nullified_entries_are_skipped() {
        let (did, g, u) = two_op_chain();
        // A nullified fork op between the two, whose content would break the chain.
        let fork = sign(
            &plc_op(
                Some(&cid_of(&g)),
                &[&key(7)],
                &key(7),
                "fork.test",
                "https://f.example.com",
            ),
            &key(1),
        );
        let entries = [
            entry(&did, &g, false),
            entry(&did, &fork, true),
            entry(&did, &u, false),
        ];
        let state = verify_audit_log(&did, &log(&entries)).unwrap();
        assert_eq!(state.also_known_as, vec!["at://alice2.test".to_string()]);
        // Un-nullifying it breaks the chain.
        let entries = [
            entry(&did, &g, false),
            entry(&did, &fork, false),
            entry(&did, &u, false),
        ];
        assert!(reason(verify_audit_log(&did, &log(&entries))).contains("prev"));
    }

    #[test]
    fn tombstone() {
        let (did, g, u) = two_op_chain();
        let t = sign(
            &json!({"type": "plc_tombstone", "prev": cid_of(&u)}),
            &key(2),
        );
        let entries = [
            entry(&did, &g, false),
            entry(&did, &u, false),
            entry(&did, &t, false),
        ];
        assert_eq!(
            verify_audit_log(&did, &log(&entries)),
            Err(IdentityError::Tombstoned(did.to_string()))
        );
        // A tombstone signed by a key that is not a rotation key is rejected, not honoured.
        let forged = sign(
            &json!({"type": "plc_tombstone", "prev": cid_of(&u)}),
            &key(1),
        );
        let entries = [
            entry(&did, &g, false),
            entry(&did, &u, false),
            entry(&did, &forged, false),
        ];
        assert!(reason(verify_audit_log(&did, &log(&entries))).contains("no rotation key"));
    }

    #[test]
    fn legacy_create_genesis() {
        let create = sign(
            &json!({
                "type": "create",
                "signingKey": did_key(&key(3)),
                "recoveryKey": did_key(&key(1)),
                "handle": "legacy.test",
                "service": "https://pds.example.com",
                "prev": null,
            }),
            &key(3),
        );
        let did = did_of(&create);
        let state = verify_audit_log(&did, &log(&[entry(&did, &create, false)])).unwrap();
        assert_eq!(
            state.rotation_keys,
            vec![did_key(&key(1)), did_key(&key(3))]
        );
        assert_eq!(state.atproto_key, Some(did_key(&key(3))));
        assert_eq!(state.also_known_as, vec!["at://legacy.test".to_string()]);
        // An update after it, signed by the recovery key.
        let u = sign(
            &plc_op(
                Some(&cid_of(&create)),
                &[&key(1)],
                &key(5),
                "new.test",
                "https://p.example.com",
            ),
            &key(1),
        );
        let state = verify_audit_log(
            &did,
            &log(&[entry(&did, &create, false), entry(&did, &u, false)]),
        )
        .unwrap();
        assert_eq!(state.atproto_key, Some(did_key(&key(5))));
        // `create` is only allowed as genesis.
        let late = sign(
            &json!({"type": "create", "signingKey": did_key(&key(3)), "recoveryKey": did_key(&key(1)),
                    "handle": "x.test", "service": "https://p.example.com", "prev": cid_of(&create)}),
            &key(1),
        );
        let r = reason(verify_audit_log(
            &did,
            &log(&[entry(&did, &create, false), entry(&did, &late, false)]),
        ));
        assert!(r.contains("only valid as genesis"), "{r}");
    }

    #[test]
    fn malformed_logs_never_panic() {
        let did: Did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        for junk in [
            "", "null", "{}", "[]", "[1]", "[{}]", "[{\"nullified\":false}]",
            "[{\"nullified\":false,\"did\":\"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa\"}]",
            "[{\"nullified\":false,\"did\":\"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa\",\"cid\":\"x\",\"operation\":{\"a\":1.5}}]",
            "[{\"nullified\":false,\"did\":\"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa\",\"cid\":\"x\",\"operation\":{\"type\":\"plc_operation\",\"prev\":null}}]",
            "[{\"nullified\":\"no\"}]",
        ] {
            assert!(verify_audit_log(&did, junk.as_bytes()).is_err(), "{junk}");
        }
        let (did, g, u) = two_op_chain();
        let good = log(&[entry(&did, &g, false), entry(&did, &u, false)]);
        for i in (0..good.len()).step_by(7) {
            let _ = verify_audit_log(&did, &good[..i]);
            let mut m = good.clone();
            m[i] = b'x';
            let _ = verify_audit_log(&did, &m);
        }
        // Oversized op.
        let mut big = plc_op(None, &[&key(1)], &key(3), "a.test", "https://p.example.com");
        big["alsoKnownAs"] = json!(vec!["at://x.test"; 800]);
        let big = sign(&big, &key(1));
        let did = did_of(&big);
        let r = reason(verify_audit_log(&did, &log(&[entry(&did, &big, false)])));
        assert!(r.contains("limit"), "{r}");
    }
}
