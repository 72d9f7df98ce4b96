//! ATProto public keys: parsing the encodings DID documents and PLC ops use, and verifying
//! signatures with the protocol's rules (SHA-256 digest, 64-byte compact `r‖s`, low-S only).
//!
//! Owns: key decoding (Multikey, legacy `EcdsaSecp256*VerificationKey2019`, `did:key`) and
//! signature checks. Must not touch: the network or any notion of which key is current for a DID.

use k256::ecdsa::signature::Verifier as _;

/// multicodec varint prefix of a compressed secp256k1 public key (`secp256k1-pub`, 0xE7).
const K256_PREFIX: [u8; 2] = [0xe7, 0x01];
/// multicodec varint prefix of a compressed P-256 public key (`p256-pub`, 0x1200).
const P256_PREFIX: [u8; 2] = [0x80, 0x24];

/// Why a key could not be decoded or a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// the key is not multibase base58btc (it must start with `z`)
    #[error("the key is not multibase base58btc (it must start with 'z')")]
    NotMultibase,
    /// the key's base58 text is malformed
    #[error("the key's base58 text is malformed")]
    BadBase58,
    /// the key's multicodec prefix names neither secp256k1 nor P-256
    #[error("the key's multicodec prefix names neither secp256k1 nor P-256; ATProto only uses those curves")]
    UnsupportedCurve,
    /// the key bytes are not a valid point on the curve
    #[error("the key bytes are not a valid point on the curve")]
    BadPoint,
    /// the verification method type is not one ATProto uses
    #[error("verification method type '{0}' is not Multikey or a legacy EcdsaSecp256*VerificationKey2019 type")]
    UnsupportedType(String),
    /// a did:key string did not start with `did:key:`
    #[error("'{0}' is not a did:key")]
    NotDidKey(String),
    /// the signature is not 64 bytes of compact r‖s
    #[error("the signature is not 64 bytes of compact r||s")]
    BadSignatureEncoding,
    /// the signature uses a high S value, which ATProto forbids
    #[error("the signature uses a high S value, which ATProto forbids")]
    HighS,
    /// the signature does not match the message and key
    #[error("the signature does not match the message and key")]
    BadSignature,
}

/// A public key on one of the two curves ATProto allows.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_did_key())
    }
}

impl PublicKey {
    /// Curve name as used in logs and errors.
    pub fn curve(&self) -> &'static str {
        match self {
            PublicKey::K256(_) => "k256",
            PublicKey::P256(_) => "p256",
        }
    }

    /// Parses `z` + base58btc(multicodec prefix + compressed point): the Multikey form.
    pub fn from_multikey(multibase: &str) -> Result<Self, KeyError> {
        let bytes = decode_multibase(multibase)?;
        if let Some(point) = bytes.strip_prefix(&K256_PREFIX) {
            Self::from_sec1(Curve::K256, point)
        } else if let Some(point) = bytes.strip_prefix(&P256_PREFIX) {
            Self::from_sec1(Curve::P256, point)
        } else {
            Err(KeyError::UnsupportedCurve)
        }
    }

    /// Parses a `did:key:z…` string (the form PLC ops use).
    pub fn from_did_key(did_key: &str) -> Result<Self, KeyError> {
        let multibase = did_key
            .strip_prefix("did:key:")
            .ok_or_else(|| KeyError::NotDidKey(did_key.to_string()))?;
        Self::from_multikey(multibase)
    }

    /// Parses a DID document verification method given its `type` and `publicKeyMultibase`.
    /// `Multikey` carries the multicodec prefix; the legacy types carry a bare SEC1 point
    /// (compressed or uncompressed) and name the curve in the type.
    pub fn from_verification_method(kind: &str, multibase: &str) -> Result<Self, KeyError> {
        match kind {
            "Multikey" => Self::from_multikey(multibase),
            "EcdsaSecp256k1VerificationKey2019" => {
                Self::from_sec1(Curve::K256, &decode_multibase(multibase)?)
            }
            "EcdsaSecp256r1VerificationKey2019" => {
                Self::from_sec1(Curve::P256, &decode_multibase(multibase)?)
            }
            other => Err(KeyError::UnsupportedType(other.to_string())),
        }
    }

    fn from_sec1(curve: Curve, point: &[u8]) -> Result<Self, KeyError> {
        match curve {
            Curve::K256 => k256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(PublicKey::K256)
                .map_err(|_| KeyError::BadPoint),
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(PublicKey::P256)
                .map_err(|_| KeyError::BadPoint),
        }
    }

    /// The `did:key:z…` form (Multikey, compressed point).
    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// The Multikey multibase form (`z` + base58btc(prefix + compressed point)).
    pub fn to_multikey(&self) -> String {
        let mut bytes = Vec::with_capacity(35);
        match self {
            PublicKey::K256(k) => {
                bytes.extend_from_slice(&K256_PREFIX);
                bytes.extend_from_slice(k.to_encoded_point(true).as_bytes());
            }
            PublicKey::P256(k) => {
                bytes.extend_from_slice(&P256_PREFIX);
                bytes.extend_from_slice(k.to_encoded_point(true).as_bytes());
            }
        }
        format!("z{}", bs58::encode(bytes).into_string())
    }

    /// Verifies an ATProto signature: ECDSA over SHA-256(`msg`), 64-byte compact `r‖s`,
    /// rejecting high-S signatures on both curves (the RustCrypto p256 verifier accepts them).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        if sig.len() != 64 {
            return Err(KeyError::BadSignatureEncoding);
        }
        match self {
            PublicKey::K256(key) => {
                let sig = k256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| KeyError::BadSignatureEncoding)?;
                if sig.normalize_s().is_some() {
                    return Err(KeyError::HighS);
                }
                key.verify(msg, &sig).map_err(|_| KeyError::BadSignature)
            }
            PublicKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| KeyError::BadSignatureEncoding)?;
                if sig.normalize_s().is_some() {
                    return Err(KeyError::HighS);
                }
                key.verify(msg, &sig).map_err(|_| KeyError::BadSignature)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Curve {
    K256,
    P256,
}

fn decode_multibase(s: &str) -> Result<Vec<u8>, KeyError> {
    let b58 = s.strip_prefix('z').ok_or(KeyError::NotMultibase)?;
    bs58::decode(b58)
        .into_vec()
        .map_err(|_| KeyError::BadBase58)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::signature::Signer as _;

    #[test]
    fn k256_round_trip_and_low_s() {
        let sk = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pk = PublicKey::K256(*sk.verifying_key());
        let did_key = pk.to_did_key();
        assert!(did_key.starts_with("did:key:zQ3s"), "{did_key}");
        let parsed = PublicKey::from_did_key(&did_key).unwrap();
        assert_eq!(parsed, pk);

        let sig: k256::ecdsa::Signature = sk.sign(b"hello");
        let sig = sig.normalize_s().unwrap_or(sig);
        assert_eq!(parsed.verify(b"hello", &sig.to_bytes()), Ok(()));
        assert_eq!(
            parsed.verify(b"other", &sig.to_bytes()),
            Err(KeyError::BadSignature)
        );

        // Flip S to its high form: same maths, but forbidden.
        let (r, s) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert_eq!(
            parsed.verify(b"hello", &high.to_bytes()),
            Err(KeyError::HighS)
        );
    }

    #[test]
    fn p256_round_trip_and_high_s_rejected() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pk = PublicKey::P256(*sk.verifying_key());
        assert!(pk.to_multikey().starts_with("zDna"));
        let parsed = PublicKey::from_verification_method("Multikey", &pk.to_multikey()).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(b"msg");
        let sig = sig.normalize_s().unwrap_or(sig);
        assert_eq!(parsed.verify(b"msg", &sig.to_bytes()), Ok(()));
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert_eq!(
            parsed.verify(b"msg", &high.to_bytes()),
            Err(KeyError::HighS)
        );
    }

    #[test]
    fn legacy_uncompressed_form() {
        let sk = k256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let mb = format!("z{}", bs58::encode(point.as_bytes()).into_string());
        let pk =
            PublicKey::from_verification_method("EcdsaSecp256k1VerificationKey2019", &mb).unwrap();
        assert_eq!(pk, PublicKey::K256(*sk.verifying_key()));
    }

    #[test]
    fn malformed_keys_are_errors_not_panics() {
        for bad in ["", "z", "zzzz", "Q3s", "z111111", "z0OIl"] {
            assert!(PublicKey::from_multikey(bad).is_err(), "{bad}");
        }
        assert!(PublicKey::from_did_key("did:web:x").is_err());
        assert!(PublicKey::from_verification_method("Ed25519VerificationKey2020", "z6Mk").is_err());
        let sk = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pk = PublicKey::K256(*sk.verifying_key());
        assert_eq!(
            pk.verify(b"x", &[0u8; 63]),
            Err(KeyError::BadSignatureEncoding)
        );
        assert!(pk.verify(b"x", &[0u8; 64]).is_err());
    }
}
