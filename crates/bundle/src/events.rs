//! Live invalidation: the event streams (`com.atproto.sync.subscribeRepos`) of the PDSes whose
//! authors this runner has loaded bundles of. A commit of a followed author that touches a
//! `dev.atrund.bundle`, `dev.atrund.release` or `dev.atrund.secrets` record, and any identity,
//! account or resync event of one, marks the author changed ([`Invalidations`]); what was cached
//! for the author before that moment is then fetched and verified again on its next use. So a
//! release, rollback or secret change is served within moments of its publication instead of
//! after `fetch.revalidate_secs`.
//!
//! The same streams carry the social graph's changes: an account followed for its graph
//! ([`EventWatch::follow_graph`]: the operator, and authors admitted as mutuals) is marked in
//! the graph's own [`Invalidations`] when a verified commit of theirs touches
//! `app.bsky.graph.follow`, so a follow or unfollow is read again at once.
//!
//! An event is never believed as content: a commit event must carry its commit, signed by the
//! author's key, or it changes nothing, and even a true event only causes a re-fetch through the
//! verified path. The stream is opened through the same address rules as every request of the
//! runner's own (`GuardedClient::websocket`), to a PDS a verified load already came from.
//!
//! Owns: one stream per PDS host (at most [`MAX_HOSTS`]), its cursor, reconnects with back-off,
//! and the followed authors' keys. Must not touch: the caches themselves (the source consults
//! [`Invalidations`]) or identity resolution (it is asked to forget a DID, nothing more).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use atrund_identity::{IdentityResolver, PublicKey, ResolvedDid};
use atrund_netpolicy::{GuardedClient, WebSocketMessage};
use atrund_repo::firehose::{self, Event};
use futures::StreamExt;

/// Streams kept at most; authors on further PDSes fall back to revalidation.
pub const MAX_HOSTS: usize = 100;
/// Largest message read from a stream.
const MAX_MESSAGE_BYTES: usize = firehose::MAX_EVENT_CAR_BYTES as usize + 64 * 1024;
/// First wait before a reconnect; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Collections whose change voids what is cached of their author.
const WATCHED: [&str; 3] = [
    "dev.atrund.bundle",
    "dev.atrund.release",
    "dev.atrund.secrets",
];
/// The collection whose change voids what is known of an account's follows.
pub const FOLLOW_COLLECTION: &str = "app.bsky.graph.follow";

/// When each author last changed, as the event streams saw it.
pub struct Invalidations {
    changed: Mutex<HashMap<String, Instant>>,
    generation: AtomicU64,
    /// The generation again, for tasks that wait for the next mark.
    marks: tokio::sync::watch::Sender<u64>,
}

impl Default for Invalidations {
    fn default() -> Self {
        Self {
            changed: Mutex::default(),
            generation: AtomicU64::new(0),
            marks: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Invalidations {
    /// Marks `did` changed now.
    pub fn mark(&self, did: &str) {
        if let Ok(mut m) = self.changed.lock() {
            m.insert(did.to_string(), Instant::now());
        }
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.marks.send_replace(g);
    }

    /// A receiver that wakes at each mark (its value is the generation).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.marks.subscribe()
    }

    /// Whether `did` changed after `at` (what was loaded from `at` on is current).
    pub fn changed_since(&self, did: &str, at: Instant) -> bool {
        self.changed
            .lock()
            .ok()
            .and_then(|m| m.get(did).copied())
            .is_some_and(|c| c >= at)
    }

    /// A number that moves whenever any author is marked: a cheap check for memos above the
    /// source (the HTTP layer's warm routes).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// The streams and the authors they are followed for. The stream tasks hold only a weak
/// reference: once the watch is dropped they end at their next message or reconnect.
pub struct EventWatch {
    inner: Arc<Inner>,
}

/// What the streams did, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStreamStats {
    /// PDSes followed (a stream each, open or being reopened).
    pub hosts: u64,
    /// Streams open now.
    pub open: u64,
    /// Streams opened, reopenings included.
    pub opens: u64,
    /// Authors marked changed (each mark makes their next call fetch again).
    pub marks: u64,
    /// Commit events of followed authors that did not verify, ignored.
    pub rejected: u64,
}

/// An account followed on its PDS's stream, and what for.
#[derive(Clone)]
struct Followed {
    key: PublicKey,
    /// Its bundle records: changes mark [`Inner::invalidations`].
    bundles: bool,
    /// Its follows: changes mark [`Inner::graph`].
    graph: bool,
}

struct Inner {
    client: GuardedClient,
    identity: IdentityResolver,
    invalidations: Arc<Invalidations>,
    /// Accounts whose follows changed.
    graph: Arc<Invalidations>,
    /// PDS origin → the DIDs followed there.
    hosts: Mutex<HashMap<String, HashMap<String, Followed>>>,
    open: AtomicU64,
    opens: AtomicU64,
    rejected: AtomicU64,
}

impl EventWatch {
    pub fn new(
        client: GuardedClient,
        identity: IdentityResolver,
        invalidations: Arc<Invalidations>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                identity,
                invalidations,
                graph: Arc::default(),
                hosts: Mutex::new(HashMap::new()),
                open: AtomicU64::new(0),
                opens: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    pub fn stats(&self) -> EventStreamStats {
        let i = &self.inner;
        EventStreamStats {
            hosts: i.hosts.lock().map(|h| h.len() as u64).unwrap_or(0),
            open: i.open.load(Ordering::Relaxed),
            opens: i.opens.load(Ordering::Relaxed),
            marks: i.invalidations.generation(),
            rejected: i.rejected.load(Ordering::Relaxed),
        }
    }

    /// Accounts whose follows changed, as the streams saw it ([`EventWatch::follow_graph`]).
    pub fn graph_changes(&self) -> &Arc<Invalidations> {
        &self.inner.graph
    }

    /// Follows `author`'s bundle records on its PDS's stream (started on first use), with its
    /// current key.
    pub fn follow(&self, author: &ResolvedDid) {
        self.add(author, true, false);
    }

    /// Follows `account`'s follows (`app.bsky.graph.follow`) on its PDS's stream.
    pub fn follow_graph(&self, account: &ResolvedDid) {
        self.add(account, false, true);
    }

    fn add(&self, account: &ResolvedDid, bundles: bool, graph: bool) {
        let origin = account.pds.origin().ascii_serialization();
        let did = account.did.as_str().to_string();
        let start = {
            let Ok(mut hosts) = self.inner.hosts.lock() else {
                return;
            };
            let known = hosts.contains_key(&origin);
            if !known && hosts.len() >= MAX_HOSTS {
                return;
            }
            let followed = hosts.entry(origin.clone()).or_default();
            let entry = followed.entry(did).or_insert(Followed {
                key: account.signing_key.clone(),
                bundles: false,
                graph: false,
            });
            entry.key = account.signing_key.clone();
            entry.bundles |= bundles;
            entry.graph |= graph;
            !known
        };
        if start {
            let weak = Arc::downgrade(&self.inner);
            let base = account.pds.clone();
            tokio::spawn(run(weak, origin, base));
        }
    }
}

/// One host's stream, for as long as the watch lives.
async fn run(watch: Weak<Inner>, origin: String, base: url::Url) {
    let mut cursor: Option<i64> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(inner) = watch.upgrade() else { return };
        let path = match cursor {
            Some(c) => format!("/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
            None => "/xrpc/com.atproto.sync.subscribeRepos".to_string(),
        };
        match inner
            .client
            .websocket(&base, &path, MAX_MESSAGE_BYTES)
            .await
        {
            Ok(mut socket) => {
                tracing::info!(target: "atrund::events", pds = %origin, "event stream open");
                inner.opens.fetch_add(1, Ordering::Relaxed);
                inner.open.fetch_add(1, Ordering::Relaxed);
                let open = OpenGuard(Arc::downgrade(&inner));
                // Whatever happened while it was closed may be lost without a cursor.
                if cursor.is_none() {
                    inner.mark_host(&origin);
                }
                drop(inner);
                while let Some(msg) = socket.next().await {
                    let Some(inner) = watch.upgrade() else { return };
                    let bytes = match msg {
                        Ok(WebSocketMessage::Binary(b)) => b,
                        Ok(WebSocketMessage::Close(_)) => break,
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::info!(target: "atrund::events", pds = %origin, error = %e, "event stream broke");
                            break;
                        }
                    };
                    backoff = MIN_BACKOFF;
                    match firehose::decode(&bytes) {
                        Ok(event) => {
                            if let Some(seq) = event.seq() {
                                cursor = Some(seq);
                            }
                            if let Event::Error { error, message } = &event {
                                tracing::warn!(target: "atrund::events", pds = %origin, %error, %message, "event stream refused");
                                if error == "FutureCursor" || error == "OutdatedCursor" {
                                    cursor = None;
                                }
                                break;
                            }
                            inner.apply(&origin, event);
                        }
                        Err(e) => {
                            tracing::debug!(target: "atrund::events", pds = %origin, error = %e, "event frame skipped");
                        }
                    }
                }
                drop(open);
            }
            Err(e) => {
                tracing::info!(target: "atrund::events", pds = %origin, error = %e, "event stream not opened; relying on revalidation");
            }
        }
        if watch.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts a stream as open until it ends.
struct OpenGuard(Weak<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0.upgrade() {
            i.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Inner {
    fn followed(&self, origin: &str, did: &str) -> Option<Followed> {
        self.hosts.lock().ok()?.get(origin)?.get(did).cloned()
    }

    /// Marks every account followed on `origin` (events may have been missed).
    fn mark_host(&self, origin: &str) {
        let followed: Vec<(String, Followed)> = self
            .hosts
            .lock()
            .ok()
            .and_then(|h| h.get(origin).map(|m| m.clone().into_iter().collect()))
            .unwrap_or_default();
        for (did, f) in followed {
            self.mark(&did, &f);
        }
    }

    fn mark(&self, did: &str, f: &Followed) {
        if f.bundles {
            self.invalidations.mark(did);
        }
        if f.graph {
            self.graph.mark(did);
        }
    }

    fn apply(&self, origin: &str, event: Event) {
        match event {
            Event::Commit(c) => {
                let Some(f) = self.followed(origin, &c.repo) else {
                    return;
                };
                let bundles = f.bundles && WATCHED.iter().any(|w| c.touches(w));
                let graph = f.graph && c.touches(FOLLOW_COLLECTION);
                if !bundles && !graph {
                    return;
                }
                match c.verify(&f.key) {
                    Ok(_) => {
                        tracing::info!(target: "atrund::events", did = %c.repo, rev = %c.rev, bundles, graph, "an account's watched records changed");
                        if bundles {
                            self.invalidations.mark(&c.repo);
                        }
                        if graph {
                            self.graph.mark(&c.repo);
                        }
                    }
                    // Forged, or signed with a key rotated since (its #identity event voids
                    // the identity): either way it changes nothing here, so a lying stream
                    // cannot make the runner re-fetch at will.
                    Err(e) => {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "atrund::events", did = %c.repo, error = %e, "commit event did not verify; ignored");
                    }
                }
            }
            Event::Identity { did, .. } | Event::Account { did, .. } | Event::Sync { did, .. } => {
                if let Some(f) = self.followed(origin, &did) {
                    if let Ok(d) = did.parse::<atrund_identity::Did>() {
                        self.identity.purge_did(&d);
                    }
                    self.mark(&did, &f);
                }
            }
            Event::Info { name } if name == "OutdatedCursor" => self.mark_host(origin),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! What an event does to a followed author, decoded from real frames (signed commits in a
    //! CAR, as a PDS sends them); no stream is opened.
    use std::collections::BTreeMap;

    use atrund_repo::car::{self, cid_for, DAG_CBOR};
    use ipld_core::ipld::Ipld;
    use k256::ecdsa::{signature::Signer as _, Signature, SigningKey};

    use super::*;

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const ORIGIN: &str = "http://127.0.0.1:1";

    fn sk(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn map(pairs: Vec<(&str, Ipld)>) -> Ipld {
        Ipld::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    /// A `#commit` frame of `repo`, signed with key `seed`, touching `path`.
    fn commit(repo: &str, seed: u8, path: &str) -> Event {
        let rev = "3kxxxxxxxxx22";
        let unsigned = map(vec![
            ("did", Ipld::String(repo.into())),
            ("version", Ipld::Integer(3)),
            ("data", Ipld::Link(cid_for(DAG_CBOR, b"root"))),
            ("rev", Ipld::String(rev.into())),
            ("prev", Ipld::Null),
        ]);
        let bytes = serde_ipld_dagcbor::to_vec(&unsigned).unwrap();
        let sig: Signature = sk(seed).sign(&bytes);
        let sig = sig.normalize_s().unwrap_or(sig);
        let Ipld::Map(mut signed) = unsigned else {
            unreachable!()
        };
        signed.insert("sig".into(), Ipld::Bytes(sig.to_bytes().to_vec()));
        let block = serde_ipld_dagcbor::to_vec(&Ipld::Map(signed)).unwrap();
        let cid = cid_for(DAG_CBOR, &block);
        let mut frame = serde_ipld_dagcbor::to_vec(&map(vec![
            ("op", Ipld::Integer(1)),
            ("t", Ipld::String("#commit".into())),
        ]))
        .unwrap();
        frame.extend(
            serde_ipld_dagcbor::to_vec(&map(vec![
                ("seq", Ipld::Integer(5)),
                ("repo", Ipld::String(DID.into())),
                ("commit", Ipld::Link(cid)),
                ("rev", Ipld::String(rev.into())),
                ("blocks", Ipld::Bytes(car::write(&[cid], &[(cid, block)]))),
                (
                    "ops",
                    Ipld::List(vec![map(vec![("path", Ipld::String(path.into()))])]),
                ),
            ]))
            .unwrap(),
        );
        firehose::decode(&frame).unwrap()
    }

    fn watch() -> Inner {
        let client = GuardedClient::new(
            atrund_netpolicy::ClientConfig {
                timeout: Duration::from_secs(1),
                max_redirects: 0,
                allow_http_loopback: true,
                extra_roots: Vec::new(),
            },
            atrund_netpolicy::AddressPolicy::default(),
            Arc::new(atrund_netpolicy::SystemResolver),
        )
        .unwrap();
        let inner = Inner {
            client,
            identity: IdentityResolver::new(Default::default()).unwrap(),
            invalidations: Arc::default(),
            graph: Arc::default(),
            hosts: Mutex::new(HashMap::new()),
            open: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        let key = PublicKey::K256(*sk(1).verifying_key());
        inner.hosts.lock().unwrap().insert(
            ORIGIN.into(),
            HashMap::from([(
                DID.to_string(),
                Followed {
                    key,
                    bundles: true,
                    graph: false,
                },
            )]),
        );
        inner
    }

    #[test]
    fn only_a_signed_commit_of_a_followed_author_to_its_bundle_records_marks_it() {
        let w = watch();
        let before = Instant::now();
        // Forged (another key): nothing changes.
        w.apply(ORIGIN, commit(DID, 2, "dev.atrund.release/app"));
        // Signed, but not about bundles.
        w.apply(ORIGIN, commit(DID, 1, "app.bsky.feed.post/x"));
        // Signed, about bundles, but seen on another host than the author's.
        w.apply(
            "http://127.0.0.1:2",
            commit(DID, 1, "dev.atrund.release/app"),
        );
        assert!(!w.invalidations.changed_since(DID, before));
        assert_eq!(w.invalidations.generation(), 0);
        assert_eq!(w.rejected.load(Ordering::Relaxed), 1);
        for path in [
            "dev.atrund.release/app",
            "dev.atrund.bundle/app:1.0.0",
            "dev.atrund.secrets/x",
        ] {
            let at = Instant::now();
            w.apply(ORIGIN, commit(DID, 1, path));
            assert!(w.invalidations.changed_since(DID, at), "{path}");
        }
        assert_eq!(w.invalidations.generation(), 3);
        // An identity event of the author marks it too (its key or PDS may have moved).
        let at = Instant::now();
        w.apply(
            ORIGIN,
            Event::Identity {
                seq: 9,
                did: DID.into(),
            },
        );
        assert!(w.invalidations.changed_since(DID, at));
    }

    #[test]
    fn a_signed_follow_change_marks_only_an_account_followed_for_its_graph() {
        let w = watch();
        let graph_changes = w.graph.subscribe();
        let at = Instant::now();
        // Followed for its bundles only: a follow commit marks nothing.
        w.apply(ORIGIN, commit(DID, 1, "app.bsky.graph.follow/3kabc"));
        assert!(!w.graph.changed_since(DID, at));
        assert!(!w.invalidations.changed_since(DID, at));
        if let Some(f) = w
            .hosts
            .lock()
            .unwrap()
            .get_mut(ORIGIN)
            .and_then(|m| m.get_mut(DID))
        {
            f.graph = true;
        }
        // Forged: nothing.
        w.apply(ORIGIN, commit(DID, 2, "app.bsky.graph.follow/3kabc"));
        assert!(!w.graph.changed_since(DID, at));
        assert!(!graph_changes.has_changed().unwrap());
        // Signed: the graph is marked and its waiters woken; the bundle caches are not voided.
        w.apply(ORIGIN, commit(DID, 1, "app.bsky.graph.follow/3kabc"));
        assert!(w.graph.changed_since(DID, at));
        assert!(graph_changes.has_changed().unwrap());
        assert!(!w.invalidations.changed_since(DID, at));
        // A bundle commit still marks the bundle side only.
        let at = Instant::now();
        w.apply(ORIGIN, commit(DID, 1, "dev.atrund.release/app"));
        assert!(w.invalidations.changed_since(DID, at));
        assert!(!w.graph.changed_since(DID, at));
    }
}
