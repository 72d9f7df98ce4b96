//! The runner's public key as authors see it (multibase, fingerprint) and sealed boxes to it.
//!
//! Sealing is libsodium's `crypto_box_seal` (ephemeral X25519 key, nonce = BLAKE2b of both
//! public keys, XSalsa20-Poly1305), via RustCrypto's `crypto_box`; any libsodium-compatible
//! implementation (PyNaCl, libsodium.js, tweetnacl-sealedbox-js) produces boxes that open here.

use crypto_box::aead::OsRng;
use sha2::{Digest, Sha256};

use crate::SecretsError;

/// Multicodec code of an X25519 public key (`x25519-pub`), as its unsigned varint.
pub const MULTICODEC_X25519_PUB: [u8; 2] = [0xec, 0x01];

/// An X25519 public key of a runner.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunnerPublicKey(pub [u8; 32]);

impl RunnerPublicKey {
    /// `z` + base58btc(`0xec 0x01` + 32 key bytes).
    pub fn to_multibase(&self) -> String {
        let mut b = Vec::with_capacity(34);
        b.extend_from_slice(&MULTICODEC_X25519_PUB);
        b.extend_from_slice(&self.0);
        format!("z{}", bs58::encode(b).into_string())
    }

    /// Parses the multibase form; anything else (another codec, length or base) is refused.
    pub fn from_multibase(s: &str) -> Result<Self, SecretsError> {
        let bad = || SecretsError::BadPublicKey(s.chars().take(80).collect());
        let rest = s.strip_prefix('z').ok_or_else(bad)?;
        let bytes = bs58::decode(rest).into_vec().map_err(|_| bad())?;
        let key = bytes
            .strip_prefix(&MULTICODEC_X25519_PUB[..])
            .ok_or_else(bad)?;
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        Ok(RunnerPublicKey(key))
    }

    /// A short, record-key-safe name of this key: lowercase base32 (no padding) of the first
    /// 10 bytes of SHA-256(key), 16 characters.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        data_encoding::BASE32_NOPAD
            .encode(&digest[..10])
            .to_ascii_lowercase()
    }

    /// Seals `plaintext` so that only the holder of the matching secret key can open it.
    /// `name` only labels an error.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        crypto_box::PublicKey::from(self.0)
            .seal(&mut OsRng, plaintext)
            .map_err(|e| SecretsError::SealFailed {
                name: name.to_string(),
                detail: e.to_string(),
            })
    }
}

impl std::fmt::Debug for RunnerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunnerPublicKey({})", self.to_multibase())
    }
}

impl std::fmt::Display for RunnerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_multibase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibase_round_trip_and_refusals() {
        let k = RunnerPublicKey([7u8; 32]);
        let s = k.to_multibase();
        assert!(s.starts_with('z'));
        assert_eq!(RunnerPublicKey::from_multibase(&s).unwrap(), k);
        // The multicodec prefix is 0xec 0x01: decode by hand to be sure of the bytes.
        let raw = bs58::decode(&s[1..]).into_vec().unwrap();
        assert_eq!(&raw[..2], &[0xec, 0x01]);
        assert_eq!(raw.len(), 34);
        // An Ed25519 key (0xed 0x01), a short key, another base, garbage.
        let mut ed = vec![0xed, 0x01];
        ed.extend_from_slice(&[7u8; 32]);
        let ed = format!("z{}", bs58::encode(ed).into_string());
        let short = format!("z{}", bs58::encode([0xec, 0x01, 1, 2]).into_string());
        for bad in [ed.as_str(), short.as_str(), &s[1..], "z0OIl", ""] {
            assert_eq!(
                RunnerPublicKey::from_multibase(bad).unwrap_err().code(),
                "RunnerKeyInvalid",
                "{bad}"
            );
        }
        let fp = k.fingerprint();
        assert_eq!(fp.len(), 16);
        assert!(fp
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(fp, RunnerPublicKey([8u8; 32]).fingerprint());
    }
}
