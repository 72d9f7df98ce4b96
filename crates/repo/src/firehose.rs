//! Frames of a PDS's event stream (`com.atproto.sync.subscribeRepos`): a DAG-CBOR header
//! (`{op, t}`) followed by a DAG-CBOR body, one frame per WebSocket binary message.
//!
//! Owns: decoding the frames the runner acts on (`#commit`, `#identity`, `#account`, `#sync`,
//! `#info`, errors) and proving a commit event: its `blocks` CAR must hold the commit it names,
//! signed by the author's key. Must not touch: the connection, which authors matter, or what an
//! event invalidates (the caller decides). An event is only ever a reason to fetch and verify
//! again; nothing in it is believed as content.

use cid::Cid;
use ipld_core::ipld::Ipld;

use atrund_identity::PublicKey;

use crate::car::{self, CarLimits};
use crate::commit::{self, Commit};
use crate::error::FetchError;

/// Largest `blocks` CAR read from one commit event (a PDS sends at most 2 MB before it marks the
/// commit `tooBig`).
pub const MAX_EVENT_CAR_BYTES: u64 = 4 * 1024 * 1024;
/// Most blocks in one commit event's CAR.
pub const MAX_EVENT_BLOCKS: usize = 10_000;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Commit(CommitEvent),
    /// The DID's identity (handle, keys, PDS) may have changed.
    Identity {
        seq: i64,
        did: String,
    },
    /// The account's status (active, deactivated, taken down...) changed.
    Account {
        seq: i64,
        did: String,
    },
    /// The repo's state was asserted anew (a resync): anything known of it may be stale.
    Sync {
        seq: i64,
        did: String,
    },
    /// An informational message, e.g. `OutdatedCursor` (events were missed).
    Info {
        name: String,
    },
    /// The stream ended with an error frame.
    Error {
        error: String,
        message: String,
    },
    /// A frame type this runner does not act on (still carries a sequence number if it had one).
    Other {
        seq: Option<i64>,
        kind: String,
    },
}

impl Event {
    /// The event's sequence number, for the cursor of a reconnect.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Event::Commit(c) => Some(c.seq),
            Event::Identity { seq, .. } | Event::Account { seq, .. } | Event::Sync { seq, .. } => {
                Some(*seq)
            }
            Event::Other { seq, .. } => *seq,
            Event::Info { .. } | Event::Error { .. } => None,
        }
    }
}

/// A `#commit` event, not yet proven.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitEvent {
    pub seq: i64,
    /// The repo's DID.
    pub repo: String,
    /// The commit this event announces.
    pub commit: Cid,
    pub rev: String,
    /// The record paths (`collection/rkey`) the commit created, updated or deleted.
    pub paths: Vec<String>,
    /// The PDS left the blocks (and maybe the ops) out: treat every record as changed.
    pub too_big: bool,
    blocks: Vec<u8>,
}

impl CommitEvent {
    /// Proves the event: its CAR holds the named commit, for this repo and revision, signed by
    /// `key` (the repo DID's current `#atproto` key).
    pub fn verify(&self, key: &PublicKey) -> Result<Commit, FetchError> {
        let car = car::parse_with_limits(
            &self.blocks,
            CarLimits {
                max_bytes: MAX_EVENT_CAR_BYTES,
                max_blocks: MAX_EVENT_BLOCKS,
            },
        )?;
        let block = car
            .get(&self.commit)
            .ok_or_else(|| bad("the commit block is not in the event's CAR"))?;
        let signed = commit::verify(block, &self.repo, key)?;
        if signed.rev != self.rev {
            return Err(bad("the event's rev differs from its commit's"));
        }
        Ok(signed)
    }

    /// Whether the commit touched a record of `collection` (or may have: `tooBig`).
    pub fn touches(&self, collection: &str) -> bool {
        self.too_big
            || self
                .paths
                .iter()
                .any(|p| p.split_once('/').is_some_and(|(c, _)| c == collection))
    }
}

fn bad(why: &str) -> FetchError {
    FetchError::CommitInvalid(format!("event stream: {why}"))
}

/// Decodes one binary WebSocket message of the stream.
pub fn decode(frame: &[u8]) -> Result<Event, FetchError> {
    let mut rest = frame;
    let header: Ipld = serde_ipld_dagcbor::de::from_reader_once(&mut rest)
        .map_err(|e| bad(&format!("the frame header is not DAG-CBOR: {e}")))?;
    let body: Ipld = serde_ipld_dagcbor::de::from_reader_once(&mut rest)
        .map_err(|e| bad(&format!("the frame body is not DAG-CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("bytes after the frame body"));
    }
    let op = match field(&header, "op") {
        Some(Ipld::Integer(op)) => *op,
        _ => return Err(bad("the frame header has no `op`")),
    };
    if op == -1 {
        return Ok(Event::Error {
            error: string(&body, "error").unwrap_or_default(),
            message: string(&body, "message").unwrap_or_default(),
        });
    }
    if op != 1 {
        return Err(bad("the frame header's `op` is neither 1 nor -1"));
    }
    let kind = string(&header, "t").ok_or_else(|| bad("the frame header has no `t`"))?;
    let seq = || match field(&body, "seq") {
        Some(Ipld::Integer(n)) => i64::try_from(*n).map_err(|_| bad("`seq` out of range")),
        _ => Err(bad("the event has no `seq`")),
    };
    let did = || string(&body, "did").ok_or_else(|| bad("the event has no `did`"));
    Ok(match kind.as_str() {
        "#commit" => Event::Commit(commit_event(&body, seq()?)?),
        "#identity" => Event::Identity {
            seq: seq()?,
            did: did()?,
        },
        "#account" => Event::Account {
            seq: seq()?,
            did: did()?,
        },
        "#sync" => Event::Sync {
            seq: seq()?,
            did: did()?,
        },
        "#info" => Event::Info {
            name: string(&body, "name").unwrap_or_default(),
        },
        _ => Event::Other {
            seq: seq().ok(),
            kind,
        },
    })
}

fn commit_event(body: &Ipld, seq: i64) -> Result<CommitEvent, FetchError> {
    let repo = string(body, "repo").ok_or_else(|| bad("the commit event has no `repo`"))?;
    let commit = match field(body, "commit") {
        Some(Ipld::Link(c)) => *c,
        _ => return Err(bad("the commit event's `commit` is not a link")),
    };
    let rev = string(body, "rev").ok_or_else(|| bad("the commit event has no `rev`"))?;
    let blocks = match field(body, "blocks") {
        Some(Ipld::Bytes(b)) => b.clone(),
        _ => return Err(bad("the commit event's `blocks` are not bytes")),
    };
    let too_big = matches!(field(body, "tooBig"), Some(Ipld::Bool(true)));
    let mut paths = Vec::new();
    match field(body, "ops") {
        Some(Ipld::List(ops)) => {
            for op in ops {
                let path = string(op, "path").ok_or_else(|| bad("an op has no `path`"))?;
                paths.push(path);
            }
        }
        _ => return Err(bad("the commit event has no `ops` list")),
    }
    Ok(CommitEvent {
        seq,
        repo,
        commit,
        rev,
        paths,
        too_big,
        blocks,
    })
}

fn field<'a>(map: &'a Ipld, key: &str) -> Option<&'a Ipld> {
    match map {
        Ipld::Map(m) => m.get(key),
        _ => None,
    }
}

fn string(map: &Ipld, key: &str) -> Option<String> {
    match field(map, key) {
        Some(Ipld::String(s)) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::car::{cid_for, DAG_CBOR};
    use crate::testutil::{sign_commit, signing_key, UnsignedCommit};

    fn map(pairs: Vec<(&str, Ipld)>) -> Ipld {
        Ipld::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn frame(header: Ipld, body: Ipld) -> Vec<u8> {
        let mut out = serde_ipld_dagcbor::to_vec(&header).unwrap();
        out.extend(serde_ipld_dagcbor::to_vec(&body).unwrap());
        out
    }

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const REV: &str = "3kxxxxxxxxx22";

    /// A commit event for `repo` signed by key `seed`, touching `paths`.
    fn commit_frame(repo: &str, seed: u8, rev_in_event: &str, paths: &[&str]) -> Vec<u8> {
        let block = sign_commit(
            &UnsignedCommit {
                did: repo.into(),
                version: 3,
                data: cid_for(DAG_CBOR, b"mst root"),
                rev: REV.into(),
                prev: None,
            },
            &signing_key(seed),
            false,
        );
        let cid = cid_for(DAG_CBOR, &block);
        let car = car::write(&[cid], &[(cid, block)]);
        let ops = paths
            .iter()
            .map(|p| {
                map(vec![
                    ("action", Ipld::String("create".into())),
                    ("path", Ipld::String(p.to_string())),
                    ("cid", Ipld::Null),
                ])
            })
            .collect();
        frame(
            map(vec![
                ("op", Ipld::Integer(1)),
                ("t", Ipld::String("#commit".into())),
            ]),
            map(vec![
                ("seq", Ipld::Integer(42)),
                ("rebase", Ipld::Bool(false)),
                ("tooBig", Ipld::Bool(false)),
                ("repo", Ipld::String(DID.into())),
                ("commit", Ipld::Link(cid)),
                ("rev", Ipld::String(rev_in_event.into())),
                ("since", Ipld::Null),
                ("blocks", Ipld::Bytes(car)),
                ("ops", Ipld::List(ops)),
                ("blobs", Ipld::List(vec![])),
                ("time", Ipld::String("2026-12-05T00:00:00Z".into())),
            ]),
        )
    }

    fn key(seed: u8) -> PublicKey {
        PublicKey::K256(*signing_key(seed).verifying_key())
    }

    #[test]
    fn a_signed_commit_event_is_proven_and_names_its_collections() {
        let f = commit_frame(
            DID,
            1,
            REV,
            &["dev.atrund.release/app", "app.bsky.feed.post/x"],
        );
        let Event::Commit(c) = decode(&f).unwrap() else {
            panic!("not a commit")
        };
        assert_eq!((c.seq, c.repo.as_str()), (42, DID));
        assert!(c.touches("dev.atrund.release"));
        assert!(!c.touches("dev.atrund.bundle"));
        assert_eq!(c.verify(&key(1)).unwrap().rev, REV);
    }

    #[test]
    fn forged_or_inconsistent_commit_events_are_refused() {
        // Signed by another key.
        let Event::Commit(c) = decode(&commit_frame(DID, 2, REV, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(
            c.verify(&key(1)).unwrap_err().code(),
            "CommitSignatureInvalid"
        );
        // The event claims another revision than its commit.
        let Event::Commit(c) = decode(&commit_frame(DID, 1, "3kyyyyyyyyy22", &[])).unwrap() else {
            panic!()
        };
        assert!(c.verify(&key(1)).is_err());
        // The event names a commit its CAR does not hold.
        let Event::Commit(mut c) = decode(&commit_frame(DID, 1, REV, &[])).unwrap() else {
            panic!()
        };
        c.commit = cid_for(DAG_CBOR, b"another");
        assert!(c.verify(&key(1)).is_err());
        // A commit of another repo, relayed under this one's name.
        let other = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
        let Event::Commit(mut c) = decode(&commit_frame(other, 1, REV, &[])).unwrap() else {
            panic!()
        };
        c.repo = DID.into();
        assert_eq!(c.verify(&key(1)).unwrap_err().code(), "CommitDidMismatch");
    }

    #[test]
    fn other_frames_decode_and_junk_is_an_error() {
        let h = |t: &str| {
            map(vec![
                ("op", Ipld::Integer(1)),
                ("t", Ipld::String(t.into())),
            ])
        };
        let body = map(vec![
            ("seq", Ipld::Integer(7)),
            ("did", Ipld::String(DID.into())),
        ]);
        assert_eq!(
            decode(&frame(h("#identity"), body.clone())).unwrap(),
            Event::Identity {
                seq: 7,
                did: DID.into()
            }
        );
        assert_eq!(
            decode(&frame(h("#account"), body.clone())).unwrap().seq(),
            Some(7)
        );
        assert_eq!(
            decode(&frame(h("#labels"), body)).unwrap(),
            Event::Other {
                seq: Some(7),
                kind: "#labels".into()
            }
        );
        let err = frame(
            map(vec![("op", Ipld::Integer(-1))]),
            map(vec![
                ("error", Ipld::String("FutureCursor".into())),
                ("message", Ipld::String("no".into())),
            ]),
        );
        assert!(
            matches!(decode(&err).unwrap(), Event::Error { error, .. } if error == "FutureCursor")
        );
        for junk in [&b""[..], b"\xa1", b"not cbor at all"] {
            assert!(decode(junk).is_err());
        }
        let mut trailing = frame(h("#info"), map(vec![("name", Ipld::String("x".into()))]));
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        // A commit with its ops missing is refused rather than read as touching nothing.
        let no_ops = frame(
            h("#commit"),
            map(vec![
                ("seq", Ipld::Integer(1)),
                ("repo", Ipld::String(DID.into())),
                ("commit", Ipld::Link(cid_for(DAG_CBOR, b"c"))),
                ("rev", Ipld::String(REV.into())),
                ("blocks", Ipld::Bytes(vec![])),
            ]),
        );
        assert!(decode(&no_ops).is_err());
    }
}
