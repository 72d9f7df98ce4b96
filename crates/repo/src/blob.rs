//! Blob verification: bytes fetched from `sync.getBlob` against the blob ref of a verified record.
//!
//! Owns: the blob CID rules (CIDv1, raw 0x55, sha2-256) and the size check.
//! Must not touch: the network. The ref is only trustworthy if it came from a verified record.

use cid::Cid;
use sha2::{Digest, Sha256};

use crate::car::{RAW, SHA2_256};
use crate::error::FetchError;

/// Checks that `cid` is a blob CID ATProto allows (v1, raw, sha2-256 with a 32-byte digest).
pub fn check_blob_cid(cid: &Cid) -> Result<(), FetchError> {
    if cid.version() != cid::Version::V1 {
        return Err(FetchError::BlobRefInvalid(format!("{cid} is not a CIDv1")));
    }
    if cid.codec() != RAW {
        return Err(FetchError::BlobRefInvalid(format!(
            "{cid} has codec 0x{:x}, blobs use raw (0x55)",
            cid.codec()
        )));
    }
    if cid.hash().code() != SHA2_256 || cid.hash().size() != 32 {
        return Err(FetchError::BlobRefInvalid(format!(
            "{cid} is not hashed with sha2-256"
        )));
    }
    Ok(())
}

/// Verifies blob bytes: the CID form, `bytes.len() == size`, and sha256(bytes) == the CID digest.
pub fn verify_blob(bytes: &[u8], cid: &Cid, size: u64) -> Result<(), FetchError> {
    check_blob_cid(cid)?;
    if bytes.len() as u64 != size {
        return Err(FetchError::BlobSizeMismatch {
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    if &Sha256::digest(bytes)[..] != cid.hash().digest() {
        return Err(FetchError::BlobHashMismatch {
            cid: cid.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::car::{cid_for, DAG_CBOR};

    #[test]
    fn good_and_bad_blobs() {
        let data = b"export default {}".to_vec();
        let cid = cid_for(RAW, &data);
        assert!(cid.to_string().starts_with("bafkrei"));
        verify_blob(&data, &cid, data.len() as u64).unwrap();

        let mut other = data.clone();
        other[0] ^= 1;
        let err = verify_blob(&other, &cid, data.len() as u64).unwrap_err();
        assert_eq!(err.code(), "BlobHashMismatch");

        let err = verify_blob(&data, &cid, data.len() as u64 + 1).unwrap_err();
        assert!(matches!(err, FetchError::BlobSizeMismatch { .. }));

        let wrong_codec = cid_for(DAG_CBOR, &data);
        let err = verify_blob(&data, &wrong_codec, data.len() as u64).unwrap_err();
        assert!(matches!(err, FetchError::BlobRefInvalid(_)));

        let mh = cid::multihash::Multihash::<64>::wrap(0x13, &[0u8; 64]).unwrap();
        let sha512 = Cid::new_v1(RAW, mh);
        assert!(matches!(
            verify_blob(&data, &sha512, data.len() as u64),
            Err(FetchError::BlobRefInvalid(_))
        ));
    }
}
