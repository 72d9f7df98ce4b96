//! Signed repo commits (repo format v3): decoding and checking the signature against the DID's
//! `#atproto` key.
//!
//! Owns: the commit shape and the "signed bytes = DAG-CBOR of the commit map without `sig`" rule.
//! Must not touch: key resolution (the caller passes the key it trusts) or the MST.
//!
//! The signed bytes are rebuilt from the decoded generic map (minus `sig`) rather than from a
//! fixed struct, so fields we don't model are still covered by the signature instead of being
//! silently dropped.

use std::collections::BTreeMap;

use atrund_identity::PublicKey;
use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::car::DAG_CBOR;
use crate::error::FetchError;

/// Repo format version this crate understands.
pub const REPO_VERSION: i128 = 3;

/// A decoded commit. Only returned by [`verify`] once the signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The repo's DID.
    pub did: String,
    /// Repo format version (always 3).
    pub version: u64,
    /// Root of the MST.
    pub data: Cid,
    /// Revision (a TID); orders commits.
    pub rev: String,
    /// Previous commit, if the PDS recorded it.
    pub prev: Option<Cid>,
    /// 64-byte compact ECDSA signature.
    pub sig: Vec<u8>,
}

/// Decodes a commit block and returns it with the bytes that were signed. No trust implied.
pub fn decode(block: &[u8]) -> Result<(Commit, Vec<u8>), FetchError> {
    let value: Ipld =
        serde_ipld_dagcbor::from_slice(block).map_err(|e| bad(format!("not DAG-CBOR: {e}")))?;
    let Ipld::Map(mut map) = value else {
        return Err(bad("not a map".into()));
    };
    let sig = match map.remove("sig") {
        Some(Ipld::Bytes(b)) => b,
        Some(_) => return Err(bad("`sig` is not bytes".into())),
        None => return Err(bad("`sig` is missing".into())),
    };
    let did = match map.get("did") {
        Some(Ipld::String(s)) => s.clone(),
        _ => return Err(bad("`did` is missing or not a string".into())),
    };
    let version = match map.get("version") {
        Some(Ipld::Integer(v)) if *v == REPO_VERSION => 3u64,
        Some(Ipld::Integer(v)) => return Err(bad(format!("version {v} is not 3"))),
        _ => return Err(bad("`version` is missing or not an integer".into())),
    };
    let data = match map.get("data") {
        Some(Ipld::Link(c)) if c.codec() == DAG_CBOR => *c,
        _ => return Err(bad("`data` is missing or not a dag-cbor link".into())),
    };
    let rev = match map.get("rev") {
        Some(Ipld::String(s)) if is_tid(s) => s.clone(),
        _ => return Err(bad("`rev` is missing or not a TID".into())),
    };
    let prev = match map.get("prev") {
        Some(Ipld::Link(c)) => Some(*c),
        Some(Ipld::Null) => None,
        _ => return Err(bad("`prev` must be present (a link or null)".into())),
    };
    let unsigned = encode_unsigned(map)?;
    Ok((
        Commit {
            did,
            version,
            data,
            rev,
            prev,
            sig,
        },
        unsigned,
    ))
}

fn encode_unsigned(map: BTreeMap<String, Ipld>) -> Result<Vec<u8>, FetchError> {
    // serde_ipld_dagcbor sorts map keys length-first then bytewise: canonical DAG-CBOR.
    serde_ipld_dagcbor::to_vec(&Ipld::Map(map))
        .map_err(|e| bad(format!("cannot re-encode unsigned commit: {e}")))
}

/// Decodes a commit, checks it belongs to `expected_did`, and verifies its signature with `key`.
pub fn verify(block: &[u8], expected_did: &str, key: &PublicKey) -> Result<Commit, FetchError> {
    let (commit, unsigned) = decode(block)?;
    if commit.did != expected_did {
        return Err(FetchError::CommitDidMismatch {
            expected: expected_did.to_string(),
            found: commit.did,
        });
    }
    key.verify(&unsigned, &commit.sig)
        .map_err(|e| FetchError::BadCommitSignature(e.to_string()))?;
    Ok(commit)
}

/// TID syntax: 13 chars of base32-sortable, first char limited so the top bit is 0.
pub fn is_tid(s: &str) -> bool {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let b = s.as_bytes();
    b.len() == 13
        && b.first().is_some_and(|c| b"234567abcdefghij".contains(c))
        && b.iter().all(|c| ALPHABET.contains(c))
}

fn bad(reason: String) -> FetchError {
    FetchError::CommitInvalid(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sign_commit, signing_key, Rng, UnsignedCommit};

    fn commit() -> UnsignedCommit {
        UnsignedCommit {
            did: "did:plc:abc".into(),
            version: 3,
            data: crate::car::cid_for(DAG_CBOR, b"\xa0"),
            rev: "3n3ftgb3huk27".into(),
            prev: None,
        }
    }

    #[test]
    fn good_signature() {
        let sk = signing_key(1);
        let block = sign_commit(&commit(), &sk, false);
        let c = verify(&block, "did:plc:abc", &PublicKey::K256(*sk.verifying_key())).unwrap();
        assert_eq!(c.rev, "3n3ftgb3huk27");
        assert_eq!(c.prev, None);
    }

    #[test]
    fn unsigned_bytes_match_struct_encoding() {
        let sk = signing_key(1);
        let block = sign_commit(&commit(), &sk, false);
        let (_, unsigned) = decode(&block).unwrap();
        assert_eq!(unsigned, serde_ipld_dagcbor::to_vec(&commit()).unwrap());
    }

    #[test]
    fn wrong_key_wrong_did_high_s() {
        let sk = signing_key(1);
        let other = PublicKey::K256(*signing_key(2).verifying_key());
        let block = sign_commit(&commit(), &sk, false);
        let err = verify(&block, "did:plc:abc", &other).unwrap_err();
        assert!(matches!(err, FetchError::BadCommitSignature(_)));
        assert_eq!(err.code(), "CommitSignatureInvalid");

        let pk = PublicKey::K256(*sk.verifying_key());
        let err = verify(&block, "did:plc:other", &pk).unwrap_err();
        assert!(matches!(err, FetchError::CommitDidMismatch { .. }));

        let high = sign_commit(&commit(), &sk, true);
        let err = verify(&high, "did:plc:abc", &pk).unwrap_err();
        assert!(matches!(err, FetchError::BadCommitSignature(_)), "{err:?}");
    }

    #[test]
    fn field_tampering_breaks_signature() {
        let sk = signing_key(1);
        let pk = PublicKey::K256(*sk.verifying_key());
        let block = sign_commit(&commit(), &sk, false);
        let Ipld::Map(mut map) = serde_ipld_dagcbor::from_slice::<Ipld>(&block).unwrap() else {
            panic!()
        };
        map.insert("rev".into(), Ipld::String("3n3ftgb3huk2a".into()));
        let tampered = serde_ipld_dagcbor::to_vec(&Ipld::Map(map.clone())).unwrap();
        assert!(matches!(
            verify(&tampered, "did:plc:abc", &pk),
            Err(FetchError::BadCommitSignature(_))
        ));
        map.remove("prev");
        let no_prev = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
        assert!(matches!(
            verify(&no_prev, "did:plc:abc", &pk),
            Err(FetchError::CommitInvalid(_))
        ));
    }

    #[test]
    fn bad_shapes() {
        let sk = signing_key(1);
        let mut c = commit();
        c.version = 2;
        assert!(matches!(
            decode(&sign_commit(&c, &sk, false)),
            Err(FetchError::CommitInvalid(_))
        ));
        let mut c = commit();
        c.rev = "not-a-tid".into();
        assert!(matches!(
            decode(&sign_commit(&c, &sk, false)),
            Err(FetchError::CommitInvalid(_))
        ));
        let mut rng = Rng(99);
        let good = sign_commit(&commit(), &sk, false);
        for _ in 0..2000 {
            let mut b = good.clone();
            let i = rng.next() as usize % b.len();
            b[i] = rng.next() as u8;
            let _ = decode(&b);
            let _ = decode(&good[..i]);
        }
    }

    #[test]
    fn tid_syntax() {
        assert!(is_tid("3jzfcijpj2z2a"));
        assert!(!is_tid("kjzfcijpj2z2a"));
        assert!(!is_tid("3jzfcijpj2z2"));
        assert!(!is_tid("3jzfcijpj2z21"));
    }
}
