//! Test helpers: a deterministic PRNG, commit signing and an MST builder, so tests build real
//! CARs the way a PDS does.

use cid::Cid;
use k256::ecdsa::{signature::Signer as _, Signature, SigningKey};
use serde::Serialize;

use crate::car::{cid_for, DAG_CBOR};
use crate::mst::key_depth;

/// xorshift64: deterministic inputs for fuzz-style loops without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

#[derive(Serialize, Clone)]
pub struct UnsignedCommit {
    pub did: String,
    pub version: u64,
    pub data: Cid,
    pub rev: String,
    pub prev: Option<Cid>,
}

/// Signs the commit (low-S unless `high_s`) and returns the signed commit block.
pub fn sign_commit(c: &UnsignedCommit, sk: &SigningKey, high_s: bool) -> Vec<u8> {
    let unsigned = serde_ipld_dagcbor::to_vec(c).unwrap();
    let sig: Signature = sk.sign(&unsigned);
    let sig = sig.normalize_s().unwrap_or(sig);
    let sig = if high_s {
        let (r, s) = sig.split_scalars();
        Signature::from_scalars(r, -*s).unwrap()
    } else {
        sig
    };
    let mut map = match serde_ipld_dagcbor::from_slice::<ipld_core::ipld::Ipld>(&unsigned).unwrap()
    {
        ipld_core::ipld::Ipld::Map(m) => m,
        _ => unreachable!(),
    };
    map.insert(
        "sig".into(),
        ipld_core::ipld::Ipld::Bytes(sig.to_bytes().to_vec()),
    );
    serde_ipld_dagcbor::to_vec(&ipld_core::ipld::Ipld::Map(map)).unwrap()
}

/// The first `n` keys `{prefix}k{i}` whose MST depth is exactly `depth`.
pub fn keys_at_depth(prefix: &str, depth: u32, n: usize) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{prefix}k{i}"))
        .filter(|k| key_depth(k.as_bytes()) == depth)
        .take(n)
        .collect()
}

#[derive(Serialize)]
struct Node {
    l: Option<Cid>,
    e: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    p: u64,
    #[serde(with = "serde_bytes")]
    k: Vec<u8>,
    v: Cid,
    t: Option<Cid>,
}

/// Builds an MST over `entries` exactly as the atproto spec lays it out. Returns the root CID
/// and every node block (root first).
pub fn build_mst(entries: &[(String, Cid)]) -> (Cid, Vec<(Cid, Vec<u8>)>) {
    let mut items: Vec<(Vec<u8>, Cid, u32)> = entries
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), *v, key_depth(k.as_bytes())))
        .collect();
    items.sort();
    let top = items.iter().map(|i| i.2).max().unwrap_or(0);
    let mut blocks = Vec::new();
    let root = build_node(&items, top, &mut blocks);
    blocks.reverse(); // children are pushed first; put the root first
    (root, blocks)
}

fn build_node(items: &[(Vec<u8>, Cid, u32)], layer: u32, blocks: &mut Vec<(Cid, Vec<u8>)>) -> Cid {
    let mut l = None;
    let mut here: Vec<(Vec<u8>, Cid, Option<Cid>)> = Vec::new();
    let mut group: Vec<(Vec<u8>, Cid, u32)> = Vec::new();
    let flush = |group: &mut Vec<_>,
                 here: &mut Vec<(Vec<u8>, Cid, Option<Cid>)>,
                 l: &mut Option<Cid>,
                 blocks: &mut Vec<_>| {
        if group.is_empty() {
            return;
        }
        assert!(layer > 0, "key deeper than its layer");
        let sub = build_node(group, layer - 1, blocks);
        group.clear();
        match here.last_mut() {
            Some(last) => last.2 = Some(sub),
            None => *l = Some(sub),
        }
    };
    for item in items {
        if item.2 == layer {
            flush(&mut group, &mut here, &mut l, blocks);
            here.push((item.0.clone(), item.1, None));
        } else {
            group.push(item.clone());
        }
    }
    flush(&mut group, &mut here, &mut l, blocks);

    let mut prev: &[u8] = &[];
    let mut e = Vec::new();
    for (k, v, t) in &here {
        let p = k.iter().zip(prev).take_while(|(a, b)| a == b).count();
        e.push(Entry {
            p: p as u64,
            k: k[p..].to_vec(),
            v: *v,
            t: *t,
        });
        prev = k;
    }
    let bytes = serde_ipld_dagcbor::to_vec(&Node { l, e }).unwrap();
    let cid = cid_for(DAG_CBOR, &bytes);
    blocks.push((cid, bytes));
    cid
}
