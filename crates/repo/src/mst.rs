//! Merkle Search Tree proof walk: from a verified commit's `data` root to one key, using only
//! blocks from a hash-checked CAR.
//!
//! Owns: node decoding, key reconstruction, ordering/depth/bounds checks and the lookup.
//! Must not touch: signatures, the network, or record contents (it only returns the record CID).
//!
//! A missing block on the path is an incomplete proof (an error), never "absent": a PDS could
//! otherwise hide a record by omitting a node.

use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::car::{Car, DAG_CBOR};
use crate::error::FetchError;

/// Most entries accepted in one node (fanout is 4 on average; this is a DoS guard).
pub const MAX_ENTRIES_PER_NODE: usize = 1024;
/// Most nodes followed from the root (depth is ~log4(records); 64 is far beyond real repos).
pub const MAX_DEPTH: usize = 64;
/// Longest accepted MST key (`collection/rkey`: NSID ≤ 317 + rkey ≤ 512 + 1).
pub const MAX_KEY_LEN: usize = 1024;

#[derive(Deserialize)]
struct Node {
    l: Option<Cid>,
    e: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    p: u64,
    #[serde(with = "serde_bytes")]
    k: Vec<u8>,
    v: Cid,
    t: Option<Cid>,
}

/// The MST layer of a key: leading zero bits of sha256(key), divided by 2 (fanout 4).
pub fn key_depth(key: &[u8]) -> u32 {
    let hash = Sha256::digest(key);
    let mut zeros = 0;
    for byte in hash {
        if byte == 0 {
            zeros += 8;
        } else {
            zeros += byte.leading_zeros();
            break;
        }
    }
    zeros / 2
}

/// One node, decoded and checked: its keys rebuilt in full, strictly ascending, inside the
/// exclusive bounds its parent gives, and all on one layer.
struct CheckedNode {
    node: Node,
    keys: Vec<Vec<u8>>,
    /// The layer of its keys; `None` for a node without entries.
    layer: Option<u32>,
}

/// Where a node sits: the layer it must have (unknown only for an entry-less root) and the
/// exclusive bounds every key of it must lie within.
#[derive(Clone)]
struct Place {
    expected_layer: Option<u32>,
    lower: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
    is_root: bool,
}

fn read_node(car: &Car, node_cid: &Cid, at: &Place) -> Result<CheckedNode, FetchError> {
    if node_cid.codec() != DAG_CBOR {
        return Err(invalid(format!("node link {node_cid} is not dag-cbor")));
    }
    let block = car.get(node_cid).ok_or_else(|| {
        FetchError::IncompleteProof(format!("MST node {node_cid} is not in the CAR"))
    })?;
    let node: Node = serde_ipld_dagcbor::from_slice(block)
        .map_err(|e| invalid(format!("node {node_cid} is not an MST node: {e}")))?;
    if node.e.len() > MAX_ENTRIES_PER_NODE {
        return Err(invalid(format!(
            "node {node_cid} has {} entries (cap {MAX_ENTRIES_PER_NODE})",
            node.e.len()
        )));
    }
    if node.e.is_empty() && node.l.is_none() && !at.is_root {
        return Err(invalid(format!("non-root node {node_cid} is empty")));
    }
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(node.e.len());
    let mut layer = at.expected_layer;
    for (i, entry) in node.e.iter().enumerate() {
        let prev = keys.last().map(Vec::as_slice).unwrap_or(&[]);
        let p = usize::try_from(entry.p).unwrap_or(usize::MAX);
        if (i == 0 && p != 0) || p > prev.len() {
            return Err(invalid(format!(
                "node {node_cid} entry {i} has a bad prefix length"
            )));
        }
        let mut full = prev.get(..p).unwrap_or(&[]).to_vec();
        full.extend_from_slice(&entry.k);
        if full.is_empty() || full.len() > MAX_KEY_LEN {
            return Err(invalid(format!(
                "node {node_cid} entry {i} has a bad key length"
            )));
        }
        if i > 0 && full.as_slice() <= prev {
            return Err(invalid(format!(
                "node {node_cid} keys are not strictly ascending"
            )));
        }
        if at.lower.as_ref().is_some_and(|lo| full <= *lo)
            || at.upper.as_ref().is_some_and(|hi| full >= *hi)
        {
            return Err(invalid(format!(
                "node {node_cid} key lies outside its parent's range"
            )));
        }
        let d = key_depth(&full);
        match layer {
            Some(l) if l != d => {
                return Err(invalid(format!(
                    "node {node_cid} key at depth {d} sits in layer {l}"
                )))
            }
            _ => layer = Some(d),
        }
        keys.push(full);
    }
    Ok(CheckedNode { node, keys, layer })
}

impl CheckedNode {
    /// The subtree left of key `idx` (`idx == keys.len()`: right of the last), with its place.
    fn child(
        &self,
        idx: usize,
        at: &Place,
        node_cid: &Cid,
    ) -> Result<Option<(Cid, Place)>, FetchError> {
        let child = if idx == 0 {
            self.node.l
        } else {
            self.node.e.get(idx - 1).and_then(|e| e.t)
        };
        let Some(child) = child else {
            return Ok(None);
        };
        if self.layer == Some(0) {
            return Err(invalid(format!(
                "node {node_cid} is at layer 0 but has a subtree"
            )));
        }
        Ok(Some((
            child,
            Place {
                expected_layer: self.layer.map(|l| l - 1),
                lower: if idx == 0 {
                    at.lower.clone()
                } else {
                    self.keys.get(idx - 1).cloned()
                },
                upper: self.keys.get(idx).cloned().or_else(|| at.upper.clone()),
                is_root: false,
            },
        )))
    }
}

const ROOT: Place = Place {
    expected_layer: None,
    lower: None,
    upper: None,
    is_root: true,
};

/// Looks `key` up in the MST rooted at `root`. `Ok(Some(cid))` is the record CID,
/// `Ok(None)` means the CAR proves the key is absent.
pub fn lookup(car: &Car, root: &Cid, key: &str) -> Result<Option<Cid>, FetchError> {
    let key = key.as_bytes();
    let mut node_cid = *root;
    let mut at = ROOT;
    for _ in 0..MAX_DEPTH {
        let n = read_node(car, &node_cid, &at)?;
        if let Some(i) = n.keys.iter().position(|k| k.as_slice() == key) {
            return Ok(n.node.e.get(i).map(|e| e.v));
        }
        // Otherwise descend left of the first larger key.
        let idx = n.keys.iter().take_while(|k| k.as_slice() < key).count();
        let Some((child, place)) = n.child(idx, &at, &node_cid)? else {
            return Ok(None);
        };
        node_cid = child;
        at = place;
    }
    Err(invalid(format!("tree is deeper than {MAX_DEPTH} nodes")))
}

/// Every key starting with `prefix` (e.g. `app.bsky.graph.follow/`) in the MST rooted at
/// `root`, in key order, with its record CID. Walks only the subtrees whose range can hold such
/// a key, and checks each node as [`lookup`] does; a missing node is an incomplete proof, so a
/// PDS cannot hide entries by leaving blocks out.
pub fn walk_prefix(car: &Car, root: &Cid, prefix: &str) -> Result<Vec<(String, Cid)>, FetchError> {
    let prefix = prefix.as_bytes();
    // A subtree between `lo` and `hi` (exclusive) can hold a key with the prefix unless every
    // key in it sorts before the prefix, or after every string that starts with it.
    let may_hold = |at: &Place| {
        !(at.upper.as_ref().is_some_and(|hi| hi.as_slice() <= prefix)
            || at
                .lower
                .as_ref()
                .is_some_and(|lo| lo.as_slice() > prefix && !lo.starts_with(prefix)))
    };
    let mut out = Vec::new();
    // Each node is a distinct block inside its own key range, so no walk visits more nodes
    // than the CAR has blocks; the cap keeps a hostile DAG from making it do so.
    let mut budget = car.len() + 1;
    // Depth-first, in key order: the stack holds pending subtrees and keys, last first.
    enum Step {
        Node(Cid, Place, usize),
        Key(Vec<u8>, Cid),
    }
    let mut stack = vec![Step::Node(*root, ROOT, 0)];
    while let Some(step) = stack.pop() {
        let (node_cid, at, depth) = match step {
            Step::Key(k, v) => {
                let k =
                    String::from_utf8(k).map_err(|_| invalid("an MST key is not UTF-8".into()))?;
                out.push((k, v));
                continue;
            }
            Step::Node(c, at, depth) => (c, at, depth),
        };
        if depth >= MAX_DEPTH {
            return Err(invalid(format!("tree is deeper than {MAX_DEPTH} nodes")));
        }
        budget = budget
            .checked_sub(1)
            .ok_or_else(|| invalid("the walk visits more nodes than the CAR has blocks".into()))?;
        let n = read_node(car, &node_cid, &at)?;
        let mut pending = Vec::new();
        for idx in 0..=n.keys.len() {
            if let Some((child, place)) = n.child(idx, &at, &node_cid)? {
                if may_hold(&place) {
                    pending.push(Step::Node(child, place, depth + 1));
                }
            }
            if let (Some(k), Some(e)) = (n.keys.get(idx), n.node.e.get(idx)) {
                if k.starts_with(prefix) {
                    pending.push(Step::Key(k.clone(), e.v));
                }
            }
        }
        stack.extend(pending.into_iter().rev());
    }
    Ok(out)
}

fn invalid(reason: String) -> FetchError {
    FetchError::MstInvalid(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::car::{self, cid_for};
    use crate::testutil::{build_mst, keys_at_depth, Rng};

    type Blocks = Vec<(Cid, Vec<u8>)>;

    fn tree() -> (Cid, Blocks, Vec<(String, Cid)>) {
        let mut keys: Vec<String> = keys_at_depth("app.test.rec/", 1, 3);
        keys.extend(keys_at_depth("app.test.rec/", 0, 20));
        let entries: Vec<(String, Cid)> = keys
            .iter()
            .map(|k| (k.clone(), cid_for(DAG_CBOR, k.as_bytes())))
            .collect();
        let (root, blocks) = build_mst(&entries);
        (root, blocks, entries)
    }

    /// The tree with one random byte of one block changed, the block re-keyed so it passes the
    /// CAR hash check and reaches the walker (the root follows if it was the one changed);
    /// `None` when the CAR no longer parses.
    fn corrupt_one(root: Cid, blocks: &Blocks, rng: &mut Rng) -> Option<(Car, Cid)> {
        let mut blocks = blocks.clone();
        let i = rng.next() as usize % blocks.len();
        let was_root = blocks[i].0 == root;
        let b = &mut blocks[i].1;
        let j = rng.next() as usize % b.len();
        b[j] = rng.next() as u8;
        let new = cid_for(DAG_CBOR, b);
        blocks[i].0 = new;
        let root = if was_root { new } else { root };
        car::parse(&car::write(&[root], &blocks))
            .ok()
            .map(|car| (car, root))
    }

    fn car_of(root: Cid, blocks: &[(Cid, Vec<u8>)]) -> Car {
        car::parse(&car::write(&[root], blocks)).unwrap()
    }

    #[test]
    fn finds_every_key_and_proves_absence() {
        let (root, blocks, entries) = tree();
        assert!(blocks.len() >= 3, "expected at least two levels");
        let car = car_of(root, &blocks);
        for (k, v) in &entries {
            assert_eq!(lookup(&car, &root, k).unwrap(), Some(*v), "{k}");
        }
        for absent in ["app.test.rec/zzzz", "a", "app.test.rec/", "zzz/zzz"] {
            assert_eq!(lookup(&car, &root, absent).unwrap(), None, "{absent}");
        }
    }

    #[test]
    fn missing_node_is_incomplete_not_absent() {
        let (root, blocks, entries) = tree();
        // Drop every non-root node: any key below the root can no longer be decided.
        let only_root: Vec<_> = blocks.iter().filter(|(c, _)| *c == root).cloned().collect();
        let car = car_of(root, &only_root);
        let mut incomplete = 0;
        for (k, _) in &entries {
            match lookup(&car, &root, k) {
                Err(FetchError::IncompleteProof(_)) => incomplete += 1,
                Ok(Some(_)) => {}
                other => panic!("{k}: {other:?}"),
            }
        }
        assert!(incomplete > 0);
        let car = car_of(root, &[]);
        assert!(matches!(
            lookup(&car, &root, "x"),
            Err(FetchError::IncompleteProof(_))
        ));
    }

    #[test]
    fn misordered_and_wrong_layer_nodes_are_invalid() {
        #[derive(serde::Serialize)]
        struct N {
            l: Option<Cid>,
            e: Vec<E>,
        }
        #[derive(serde::Serialize)]
        struct E {
            p: u64,
            #[serde(with = "serde_bytes")]
            k: Vec<u8>,
            v: Cid,
            t: Option<Cid>,
        }
        let v = cid_for(DAG_CBOR, b"\xa0");
        let ks = keys_at_depth("c/", 0, 2);
        let (a, b) = (ks[0].clone().into_bytes(), ks[1].clone().into_bytes());
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mk = |keys: Vec<Vec<u8>>| {
            let node = N {
                l: None,
                e: keys
                    .into_iter()
                    .map(|k| E {
                        p: 0,
                        k,
                        v,
                        t: None,
                    })
                    .collect(),
            };
            let bytes = serde_ipld_dagcbor::to_vec(&node).unwrap();
            (cid_for(DAG_CBOR, &bytes), bytes)
        };
        let (c, bytes) = mk(vec![hi.clone(), lo.clone()]);
        let car = car_of(c, &[(c, bytes)]);
        assert!(matches!(
            lookup(&car, &c, "x"),
            Err(FetchError::MstInvalid(_))
        ));
        let (c, bytes) = mk(vec![lo.clone(), hi.clone()]);
        let car = car_of(c, &[(c, bytes)]);
        assert_eq!(lookup(&car, &c, "x").unwrap(), None);

        let deep = keys_at_depth("c/", 1, 1).remove(0).into_bytes();
        let mut mixed = vec![lo, deep];
        mixed.sort();
        let (c, bytes) = mk(mixed);
        let car = car_of(c, &[(c, bytes)]);
        assert!(matches!(
            lookup(&car, &c, "x"),
            Err(FetchError::MstInvalid(_))
        ));
    }

    /// Keys of three collections at several layers, so a prefix's keys sit in many nodes.
    fn mixed_tree() -> (Cid, Blocks, Vec<(String, Cid)>) {
        let mut keys: Vec<String> = Vec::new();
        for c in [
            "app.bsky.feed.post/",
            "app.bsky.graph.follow/",
            "dev.atrund.bundle/",
        ] {
            keys.extend(keys_at_depth(c, 1, 4));
            keys.extend(keys_at_depth(c, 0, 40));
        }
        keys.sort();
        let entries: Vec<(String, Cid)> = keys
            .iter()
            .map(|k| (k.clone(), cid_for(DAG_CBOR, k.as_bytes())))
            .collect();
        let (root, blocks) = build_mst(&entries);
        (root, blocks, entries)
    }

    #[test]
    fn walk_finds_exactly_the_prefix_keys_in_order() {
        let (root, blocks, entries) = mixed_tree();
        let car = car_of(root, &blocks);
        for prefix in [
            "app.bsky.graph.follow/",
            "app.bsky.feed.post/",
            "dev.atrund.bundle/",
            "app.",
            "zzz/",
            "",
        ] {
            let want: Vec<_> = entries
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .cloned()
                .collect();
            assert_eq!(walk_prefix(&car, &root, prefix).unwrap(), want, "{prefix}");
        }
    }

    #[test]
    fn walk_with_a_missing_node_is_incomplete_not_shorter() {
        let (root, blocks, entries) = mixed_tree();
        let prefix = "app.bsky.graph.follow/";
        let full = car_of(root, &blocks);
        // Drop, one at a time, each node the walk needs: every such CAR must fail, never answer
        // with fewer follows.
        let mut needed = 0;
        for (cid, _) in blocks.iter().filter(|(c, _)| *c != root) {
            let without: Vec<_> = blocks.iter().filter(|(c, _)| c != cid).cloned().collect();
            let car = car_of(root, &without);
            match walk_prefix(&car, &root, prefix) {
                Err(FetchError::IncompleteProof(_)) => needed += 1,
                Ok(got) => assert_eq!(got, walk_prefix(&full, &root, prefix).unwrap()),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(needed > 0 && entries.len() > 100);
    }

    #[test]
    fn corrupted_nodes_never_panic_the_walk() {
        let (root, blocks, _) = mixed_tree();
        let mut rng = Rng(11);
        for _ in 0..1000 {
            if let Some((car, root)) = corrupt_one(root, &blocks, &mut rng) {
                let _ = walk_prefix(&car, &root, "app.bsky.graph.follow/");
            }
        }
    }

    #[test]
    fn depth_function() {
        // sha256("blue/...") examples from the atproto interop fixtures.
        assert_eq!(key_depth(b"2653ae71"), 0);
        assert_eq!(key_depth(b"blue"), 1);
        assert_eq!(key_depth(b"app.bsky.feed.post/454397e440ec"), 4);
        assert_eq!(key_depth(b"app.bsky.feed.post/9adeb165882c"), 8);
    }

    #[test]
    fn corrupted_nodes_never_panic() {
        let (root, blocks, _) = tree();
        let mut rng = Rng(7);
        for _ in 0..2000 {
            if let Some((car, root)) = corrupt_one(root, &blocks, &mut rng) {
                let _ = lookup(&car, &root, "app.test.rec/zzz");
                let _ = lookup(&car, &root, "app.test.rec/");
            }
        }
    }
}

/// Interop vectors (keys → MST root CID) from the atproto reference implementation's commit-proof
/// fixtures: they prove the test builder lays trees out exactly as a PDS does, so the walker is
/// tested against real shapes (including entry-less intermediate nodes).
#[cfg(test)]
mod interop {
    use super::*;
    use crate::car;
    use crate::testutil::build_mst;

    const LEAF: &str = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454";
    const CASES: &[(&[&str], &str)] = &[
        (
            &[
                "A0/374913",
                "B1/986427",
                "C0/451630",
                "E0/670489",
                "F1/085263",
                "G0/765327",
            ],
            "bafyreicraprx2xwnico4tuqir3ozsxpz46qkcpox3obf5bagicqwurghpy",
        ),
        (
            &[
                "A0/374913",
                "B1/986427",
                "C0/451630",
                "D2/269196",
                "E0/670489",
                "F1/085263",
                "G0/765327",
            ],
            "bafyreihvay6pazw3dfa47u5d2tn3rd6pa57sr37bo5bqyvjuqc73ib65my",
        ),
        (
            &["A0/374913", "B0/601692", "D0/952776", "E0/670489"],
            "bafyreialm5sgf7pijawbschsjpdevid5rss5ip3d4n4w6cc4mhu53sfl4i",
        ),
        (
            &[
                "A0/374913",
                "B0/601692",
                "C2/014073",
                "D0/952776",
                "E0/670489",
            ],
            "bafyreibxh4iztp5l2yshz3ectg2qjpeyprpw2gogao3pvceowpq3k3thya",
        ),
        (
            &["A0/374913", "B2/827649", "C0/451630"],
            "bafyreigc6ay2qwfk7kuevvrczummpd64nknfo4yxpaooknfymzyb7u3ntq",
        ),
    ];

    #[test]
    fn builder_matches_reference_roots_and_walker_reads_them() {
        let leaf: Cid = LEAF.parse().unwrap();
        for (keys, root) in CASES {
            let entries: Vec<(String, Cid)> = keys.iter().map(|k| (k.to_string(), leaf)).collect();
            let (got, blocks) = build_mst(&entries);
            assert_eq!(got.to_string(), *root, "{keys:?}");
            let car = car::parse(&car::write(&[got], &blocks)).unwrap();
            for k in *keys {
                assert_eq!(lookup(&car, &got, k).unwrap(), Some(leaf), "{k}");
            }
            for absent in ["A1/000000", "Z9/999999", "0", "C2/014074"] {
                if !keys.contains(&absent) {
                    assert_eq!(lookup(&car, &got, absent).unwrap(), None, "{absent}");
                }
            }
        }
    }
}
