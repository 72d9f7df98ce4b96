//! CARv1 reading and writing for a byte slice already in memory. Every block is re-hashed
//! against its CID while parsing, so a parsed [`Car`] only holds blocks whose bytes are proven.
//!
//! Owns: the CARv1 framing (varint header, DAG-CBOR header, `(cid, block)` sections) and the
//! block-hash check. Must not touch: what the blocks mean (commit, MST, record) or the network.
//!
//! Hand-rolled instead of `iroh-car` because iroh-car is an async `AsyncRead` reader, while we
//! always hold the whole (size-capped) response as one slice; a sync slice reader is ~100 lines,
//! needs no runtime, can enforce our caps before allocating, and accepts only the CIDs ATProto
//! blesses (CIDv1, sha2-256, dag-cbor or raw), which iroh-car does not check.

use std::collections::HashMap;

use cid::multihash::Multihash;
use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::FetchError;

/// Multicodec code of DAG-CBOR (records, commits, MST nodes).
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of raw bytes (blobs).
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Bytes of a blessed binary CID: version 1, one-byte codec, sha2-256, 32-byte digest.
const CID_LEN: usize = 36;
/// The CAR header is a tiny map; anything large is hostile.
const MAX_HEADER_LEN: u64 = 64 * 1024;

/// Caps applied while parsing (DoS guards).
#[derive(Debug, Clone, Copy)]
pub struct CarLimits {
    /// Largest accepted CAR, in bytes.
    pub max_bytes: u64,
    /// Largest accepted number of block sections (duplicates count).
    pub max_blocks: usize,
}

impl Default for CarLimits {
    fn default() -> Self {
        CarLimits {
            max_bytes: 1024 * 1024,
            max_blocks: 10_000,
        }
    }
}

/// A parsed CAR whose blocks all hash to their CIDs.
#[derive(Debug, Clone)]
pub struct Car {
    /// The header's roots (at least one).
    pub roots: Vec<Cid>,
    blocks: HashMap<Cid, Vec<u8>>,
}

impl Car {
    /// The bytes of a block, if the CAR holds it.
    pub fn get(&self, cid: &Cid) -> Option<&[u8]> {
        self.blocks.get(cid).map(Vec::as_slice)
    }

    /// Number of distinct blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True when the CAR holds no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

#[derive(Deserialize)]
struct Header {
    version: u64,
    roots: Vec<Cid>,
}

/// Parses a CARv1 with default [`CarLimits`].
pub fn parse(bytes: &[u8]) -> Result<Car, FetchError> {
    parse_with_limits(bytes, CarLimits::default())
}

/// Parses a CARv1, re-hashing every block against its CID.
pub fn parse_with_limits(bytes: &[u8], limits: CarLimits) -> Result<Car, FetchError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(FetchError::TooLarge {
            what: "CAR",
            limit: limits.max_bytes,
        });
    }
    let mut rest = bytes;
    let header_len = read_varint(&mut rest)?;
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "header length {header_len} is out of range"
        )));
    }
    let header_bytes = take(&mut rest, header_len)?;
    let header: Header = serde_ipld_dagcbor::from_slice(header_bytes).map_err(|e| {
        invalid(format!(
            "header is not a DAG-CBOR {{version, roots}} map: {e}"
        ))
    })?;
    if header.version != 1 {
        return Err(invalid(format!(
            "header version is {}, only CARv1 is supported",
            header.version
        )));
    }
    if header.roots.is_empty() {
        return Err(invalid("header has no roots".into()));
    }

    let mut blocks = HashMap::new();
    let mut sections = 0usize;
    while !rest.is_empty() {
        sections += 1;
        if sections > limits.max_blocks {
            return Err(FetchError::TooLarge {
                what: "CAR block count",
                limit: limits.max_blocks as u64,
            });
        }
        let len = read_varint(&mut rest)?;
        let section = take(&mut rest, len)?;
        let (cid_bytes, data) = section
            .split_at_checked(CID_LEN)
            .ok_or_else(|| invalid(format!("section of {len} bytes is too short to hold a CID")))?;
        let cid = parse_cid(cid_bytes)?;
        if &Sha256::digest(data)[..] != cid.hash().digest() {
            return Err(FetchError::BlockHashMismatch {
                cid: cid.to_string(),
            });
        }
        // Duplicates are allowed by the spec; equal hashes mean equal bytes, keep the first.
        blocks.entry(cid).or_insert_with(|| data.to_vec());
    }
    Ok(Car {
        roots: header.roots,
        blocks,
    })
}

/// Parses the 36-byte binary CID ATProto allows in a CAR: v1, dag-cbor or raw, sha2-256.
fn parse_cid(b: &[u8]) -> Result<Cid, FetchError> {
    match b {
        [0x01, codec, 0x12, 0x20, digest @ ..]
            if (*codec as u64 == DAG_CBOR || *codec as u64 == RAW) && digest.len() == 32 =>
        {
            let mh = Multihash::<64>::wrap(SHA2_256, digest)
                .map_err(|e| invalid(format!("bad multihash: {e}")))?;
            Ok(Cid::new_v1(*codec as u64, mh))
        }
        _ => Err(invalid(
            "block CID is not CIDv1 + dag-cbor/raw + sha2-256 (the only forms ATProto uses)".into(),
        )),
    }
}

/// Reads an unsigned LEB128 varint (multiformats: at most 9 bytes, minimal encoding).
fn read_varint(rest: &mut &[u8]) -> Result<u64, FetchError> {
    let mut value: u64 = 0;
    for i in 0..9 {
        let (&byte, tail) = rest
            .split_first()
            .ok_or_else(|| invalid("truncated varint".into()))?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(invalid("varint is not minimally encoded".into()));
            }
            return Ok(value);
        }
    }
    Err(invalid("varint is longer than 9 bytes".into()))
}

fn take<'a>(rest: &mut &'a [u8], len: u64) -> Result<&'a [u8], FetchError> {
    let len = usize::try_from(len).map_err(|_| invalid("length does not fit in memory".into()))?;
    let (head, tail) = rest.split_at_checked(len).ok_or_else(|| {
        invalid(format!(
            "truncated: {len} bytes announced, {} left",
            rest.len()
        ))
    })?;
    *rest = tail;
    Ok(head)
}

fn invalid(reason: String) -> FetchError {
    FetchError::CarInvalid(reason)
}

/// Serialises a CARv1. The header is written by hand (canonical DAG-CBOR for
/// `{roots, version: 1}`) so this cannot fail; `parse` reads it back with serde_ipld_dagcbor.
pub fn write(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let mut header = Vec::new();
    header.push(0xa2); // map(2); keys in canonical order: "roots" (5) before "version" (7)
    cbor_head(&mut header, 3, 5);
    header.extend_from_slice(b"roots");
    cbor_head(&mut header, 4, roots.len() as u64);
    for root in roots {
        let bytes = root.to_bytes();
        header.extend_from_slice(&[0xd8, 0x2a]); // tag 42: CID link
        cbor_head(&mut header, 2, bytes.len() as u64 + 1);
        header.push(0x00); // multibase identity prefix
        header.extend_from_slice(&bytes);
    }
    cbor_head(&mut header, 3, 7);
    header.extend_from_slice(b"version");
    header.push(0x01);

    let mut out = Vec::new();
    write_varint(&mut out, header.len() as u64);
    out.extend_from_slice(&header);
    for (cid, data) in blocks {
        let cid_bytes = cid.to_bytes();
        write_varint(&mut out, (cid_bytes.len() + data.len()) as u64);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
    }
    out
}

fn cbor_head(out: &mut Vec<u8>, major: u8, len: u64) {
    let m = major << 5;
    match len {
        0..=23 => out.push(m | len as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, len as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// CIDv1 (sha2-256) of `data` with the given codec.
pub fn cid_for(codec: u64, data: &[u8]) -> Cid {
    let digest = Sha256::digest(data);
    // A 32-byte digest always fits the 64-byte multihash buffer.
    match Multihash::<64>::wrap(SHA2_256, &digest[..]) {
        Ok(mh) => Cid::new_v1(codec, mh),
        Err(_) => unreachable!("32-byte digest fits in Multihash<64>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn sample() -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
        let a = serde_ipld_dagcbor::to_vec(&"hello").unwrap();
        let b = b"raw bytes".to_vec();
        let ca = cid_for(DAG_CBOR, &a);
        let cb = cid_for(RAW, &b);
        (vec![ca], vec![(ca, a), (cb, b)])
    }

    #[test]
    fn round_trip_and_duplicates() {
        let (roots, mut blocks) = sample();
        blocks.push(blocks[0].clone());
        let car = parse(&write(&roots, &blocks)).unwrap();
        assert_eq!(car.roots, roots);
        assert_eq!(car.len(), 2);
        assert_eq!(car.get(&blocks[1].0), Some(&b"raw bytes"[..]));
    }

    #[test]
    fn header_matches_serde_encoding() {
        #[derive(serde::Serialize)]
        struct H {
            version: u64,
            roots: Vec<Cid>,
        }
        let (roots, _) = sample();
        let car = write(&roots, &[]);
        let expected = serde_ipld_dagcbor::to_vec(&H { version: 1, roots }).unwrap();
        assert_eq!(car[0] as usize, expected.len());
        assert_eq!(&car[1..], &expected[..]);
    }

    #[test]
    fn tampered_block_is_hash_mismatch() {
        let (roots, mut blocks) = sample();
        blocks[1].1[0] ^= 1;
        let err = parse(&write(&roots, &blocks)).unwrap_err();
        assert!(
            matches!(err, FetchError::BlockHashMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), "BlockHashMismatch");
    }

    #[test]
    fn caps() {
        let (roots, blocks) = sample();
        let bytes = write(&roots, &blocks);
        let lim = CarLimits {
            max_bytes: bytes.len() as u64 - 1,
            max_blocks: 10,
        };
        assert!(matches!(
            parse_with_limits(&bytes, lim),
            Err(FetchError::TooLarge { .. })
        ));
        let lim = CarLimits {
            max_bytes: 1 << 20,
            max_blocks: 1,
        };
        assert!(matches!(
            parse_with_limits(&bytes, lim),
            Err(FetchError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_unblessed_cids_and_bad_headers() {
        let data = b"x".to_vec();
        let sha = Sha256::digest(&data);
        // dag-pb codec (0x70)
        let cid = Cid::new_v1(0x70, Multihash::<64>::wrap(SHA2_256, &sha).unwrap());
        let bytes = write(&[cid], &[(cid, data.clone())]);
        assert!(matches!(parse(&bytes), Err(FetchError::CarInvalid(_))));
        // no roots
        let bytes = write(&[], &[]);
        assert!(matches!(parse(&bytes), Err(FetchError::CarInvalid(_))));
        // version 2
        let mut bytes = write(&[cid_for(RAW, &data)], &[]);
        let last = bytes.len() - 1;
        bytes[last] = 0x02;
        assert!(matches!(parse(&bytes), Err(FetchError::CarInvalid(_))));
        // non-minimal varint, overlong varint
        assert!(parse(&[0x80, 0x00]).is_err());
        assert!(parse(&[0xff; 12]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let (roots, blocks) = sample();
        let good = write(&roots, &blocks);
        for cut in 0..good.len() {
            // Every strict prefix either fails or (at a section boundary) parses fewer blocks.
            if let Ok(car) = parse(&good[..cut]) {
                assert!(car.len() < 2);
            }
        }
        let mut rng = Rng(0x1234_5678);
        for _ in 0..5000 {
            let mut bytes = good.clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] = rng.next() as u8;
            }
            let _ = parse(&bytes);
            let len = (rng.next() % 200) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&junk);
        }
    }
}
