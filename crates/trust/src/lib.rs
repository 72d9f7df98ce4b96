//! Trust from the social graph: which authors the operator's own account admits
//! (`trust.graph = "follows" | "mutuals"`), believed only from verified records.
//!
//! Owns: the operator's follows (a `com.atproto.sync.getRepo` snapshot whose commit is signed by
//! the operator's key, walked for `app.bsky.graph.follow` records), reading it again on a
//! schedule and as soon as the operator's event stream shows a verified change to it, and, for
//! `mutuals`, each author's follow-back (found with `listRecords`, then proven with
//! `com.atproto.sync.getRecord` against the author's key), cached until it expires or the
//! author's stream shows a change. Must not touch: the allow and deny lists (`atrund-policy`
//! decides with them first), HTTP, or the streams themselves (it asks `atrund-bundle`'s
//! `EventWatch` to follow accounts and reads what it marks).
//!
//! Fails closed. Until the follows have been read once, and after `trust.max_stale_secs`
//! without a successful read, an author the graph alone would admit gets
//! [`TrustError::Unavailable`]. A snapshot older (by its signed `rev`) than the one held is
//! refused, so a PDS replaying an old repository cannot bring an unfollowed account back. A
//! listed record is a hint only: a follow-back counts when its proof verifies.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use atrund_bundle::events::{EventWatch, Invalidations, FOLLOW_COLLECTION};
use atrund_config::{TrustGraph, TrustSection};
use atrund_identity::{AtIdentifier, IdentityResolver, ResolvedDid};
use atrund_repo::{FetchError, RepoClient};

/// First wait before reading the follows again after a failed read; doubled up to
/// [`MAX_RETRY`] (and never beyond `refresh_secs`).
const MIN_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Follow-backs kept at most; past it the cache starts again empty (a bound on what callers
/// naming many authors can make the runner keep).
const MAX_FOLLOW_BACKS: usize = 10_000;
/// Listed follow records of one author that are proven, at most, when looking for the
/// follow-back (one is enough; more than one only when the PDS lists records it cannot prove).
const MAX_PROOFS: usize = 4;

/// What the graph needs to know, from `[trust]`.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub mode: Mode,
    /// The operator's account: a DID, or a handle verified both ways at each read.
    pub operator: AtIdentifier,
    pub refresh: Duration,
    pub follow_back_ttl: Duration,
    pub max_stale: Duration,
    pub max_repo_bytes: u64,
    pub max_follow_pages: usize,
}

/// Whom the graph admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Follows,
    Mutuals,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Follows => "follows",
            Mode::Mutuals => "mutuals",
        }
    }
}

impl GraphConfig {
    /// The graph `[trust]` asks for; `None` when `graph = "none"`.
    pub fn from_section(t: &TrustSection) -> Result<Option<Self>, TrustError> {
        let mode = match t.graph {
            TrustGraph::None => return Ok(None),
            TrustGraph::Follows => Mode::Follows,
            TrustGraph::Mutuals => Mode::Mutuals,
        };
        let op = t.operator.as_deref().unwrap_or_default();
        let operator = op
            .parse::<AtIdentifier>()
            .map_err(|e| TrustError::BadOperator(format!("'{op}': {e}")))?;
        Ok(Some(GraphConfig {
            mode,
            operator,
            refresh: Duration::from_secs(t.refresh_secs),
            follow_back_ttl: Duration::from_secs(t.follow_back_secs),
            max_stale: Duration::from_secs(t.max_stale_secs),
            max_repo_bytes: t.max_repo_bytes,
            max_follow_pages: usize::try_from(t.max_follow_pages).unwrap_or(usize::MAX),
        }))
    }
}

/// Why the graph cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// the operator's follows are not known now (not read yet, or not for too long)
    #[error("this runner runs code for the accounts its operator follows, but cannot tell now whether the operator follows this author ({0}); retry in a minute (the operator finds the reason in the runner's log)")]
    Unavailable(String),
    /// the author's own follows could not be read, for a `mutuals` runner
    #[error("this runner runs code for its operator's mutuals, but could not read whether the author follows the operator back ({0}); retry later, or check the author's PDS")]
    FollowBackUnreadable(String),
    /// `trust.operator` is not a DID or handle (config validation stops this first)
    #[error("trust.operator is not a DID or handle: {0}")]
    BadOperator(String),
}

impl TrustError {
    /// Stable PascalCase name, used as the HTTP error name.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::Unavailable(_) | TrustError::BadOperator(_) => "TrustGraphUnavailable",
            TrustError::FollowBackUnreadable(_) => "FollowBackUnreadable",
        }
    }

    /// The runner cannot tell now (503), or the author's PDS failed (502).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        match self {
            TrustError::Unavailable(_) | TrustError::BadOperator(_) => {
                atrund_errors::ErrorClass::Unavailable
            }
            TrustError::FollowBackUnreadable(_) => atrund_errors::ErrorClass::Author,
        }
    }
}

/// What the graph says about one author.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// The operator does not follow them.
    NotFollowed,
    /// `mutuals`: the operator follows them, but they do not follow back.
    NoFollowBack,
}

/// The graph's state, for metrics and describeRunner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// The operator's DID, once resolved.
    pub operator_did: Option<String>,
    /// Accounts the operator follows, in the snapshot held.
    pub follows: u64,
    /// Seconds since the snapshot held was read.
    pub age_secs: Option<u64>,
    /// Reads of the operator's follows that succeeded, and that failed.
    pub reads_ok: u64,
    pub reads_failed: u64,
    /// Follow-backs looked up (not answered from the cache).
    pub follow_back_checks: u64,
}

/// One verified read of the operator's follows.
struct Snapshot {
    operator: String,
    follows: HashSet<String>,
    rev: String,
    /// When the read began (anything marked after it is not in it).
    read_at: Instant,
}

#[derive(Clone, Copy)]
struct FollowBack {
    follows_back: bool,
    /// When the look-up began.
    at: Instant,
}

#[derive(serde::Deserialize)]
struct FollowRecord {
    subject: String,
}

/// The graph, shared. Dropping the last handle ends the refresh task.
#[derive(Clone)]
pub struct GraphTrust {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GraphTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTrust")
            .field("mode", &self.inner.cfg.mode)
            .field("operator", &self.inner.cfg.operator.to_string())
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: GraphConfig,
    identity: IdentityResolver,
    repo: RepoClient,
    watch: Option<Arc<EventWatch>>,
    /// Accounts whose follows changed (the streams' marks; private when there are no streams).
    changes: Arc<Invalidations>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Moves whenever the follows held change.
    generation: AtomicU64,
    follow_backs: Mutex<HashMap<String, FollowBack>>,
    /// One follow-back look-up per author at a time.
    looking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    last_error: Mutex<Option<String>>,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
    follow_back_checks: AtomicU64,
}

impl GraphTrust {
    /// Starts reading the operator's follows (now, then on schedule and on events). `watch`:
    /// the event streams, when on.
    pub fn start(
        cfg: GraphConfig,
        identity: IdentityResolver,
        repo: RepoClient,
        watch: Option<Arc<EventWatch>>,
    ) -> Self {
        let changes = watch
            .as_ref()
            .map(|w| w.graph_changes().clone())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            cfg,
            identity,
            repo,
            watch,
            changes,
            snapshot: RwLock::new(None),
            generation: AtomicU64::new(0),
            follow_backs: Mutex::new(HashMap::new()),
            looking: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            follow_back_checks: AtomicU64::new(0),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        GraphTrust { inner }
    }

    pub fn mode(&self) -> Mode {
        self.inner.cfg.mode
    }

    /// The operator as configured (for messages).
    pub fn operator(&self) -> String {
        self.inner.cfg.operator.to_string()
    }

    /// Whether the operator follows `did`, from the snapshot held (no network): the check made
    /// before anything a caller named is resolved.
    pub fn follows(&self, did: &str) -> Result<bool, TrustError> {
        let snap = self.inner.fresh_snapshot()?;
        Ok(snap.follows.contains(did))
    }

    /// Whether the graph admits `author` (resolved and verified by the caller). For `mutuals`
    /// this may read the author's follows from their PDS.
    pub async fn admits(&self, author: &ResolvedDid) -> Result<Verdict, TrustError> {
        let snap = self.inner.fresh_snapshot()?;
        if !snap.follows.contains(author.did.as_str()) {
            return Ok(Verdict::NotFollowed);
        }
        if self.inner.cfg.mode == Mode::Follows {
            return Ok(Verdict::Admitted);
        }
        if self.inner.follow_back(author, &snap.operator).await? {
            Ok(Verdict::Admitted)
        } else {
            Ok(Verdict::NoFollowBack)
        }
    }

    /// Why `verdict` refuses, in words for the refusal's message.
    pub fn reason(&self, verdict: Verdict) -> String {
        let op = self.operator();
        match verdict {
            Verdict::Admitted => format!("the operator's account {op} admits them"),
            Verdict::NotFollowed => format!("the operator's account {op} does not follow them"),
            Verdict::NoFollowBack => format!(
                "they do not follow the operator's account {op} back (this runner runs code for mutual follows only)"
            ),
        }
    }

    /// A number that moves whenever what the graph admits may have changed (a new snapshot, or
    /// a follow change seen on a stream): memos of admitted routes compare it.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(Ordering::SeqCst)
            .wrapping_add(self.inner.changes.generation())
    }

    pub fn stats(&self) -> GraphStats {
        let i = &self.inner;
        let snap = i.snapshot.read().ok().and_then(|s| s.clone());
        GraphStats {
            operator_did: snap.as_ref().map(|s| s.operator.clone()),
            follows: snap.as_ref().map_or(0, |s| s.follows.len() as u64),
            age_secs: snap.as_ref().map(|s| s.read_at.elapsed().as_secs()),
            reads_ok: i.reads_ok.load(Ordering::Relaxed),
            reads_failed: i.reads_failed.load(Ordering::Relaxed),
            follow_back_checks: i.follow_back_checks.load(Ordering::Relaxed),
        }
    }
}

/// Reads the follows now, then again after `refresh` (sooner after a failure), or as soon as
/// the operator's stream marks a change since the last read began.
async fn refresh_loop(weak: Weak<Inner>) {
    let Some(mut marks) = weak.upgrade().map(|i| i.changes.subscribe()) else {
        return;
    };
    let mut retry = MIN_RETRY;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let began = Instant::now();
        let wait = match inner.read().await {
            Ok(()) => {
                retry = MIN_RETRY;
                inner.cfg.refresh
            }
            Err(e) => {
                let w = retry.min(inner.cfg.refresh);
                retry = (retry * 2).min(MAX_RETRY);
                inner.reads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "atrund::trust", operator = %inner.cfg.operator, error = %e, retry_in_secs = w.as_secs(), "could not read the operator's follows; the last verified ones stay in force up to trust.max_stale_secs");
                if let Ok(mut l) = inner.last_error.lock() {
                    *l = Some(e);
                }
                w
            }
        };
        let operator = inner.operator_did();
        drop(inner);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                r = marks.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    if operator.as_deref().is_some_and(|op| inner.changes.changed_since(op, began)) {
                        break;
                    }
                }
            }
        }
    }
}

impl Inner {
    fn operator_did(&self) -> Option<String> {
        let snap = self.snapshot.read().ok()?.clone();
        snap.map(|s| s.operator.clone())
            .or_else(|| match &self.cfg.operator {
                AtIdentifier::Did(d) => Some(d.to_string()),
                AtIdentifier::Handle(_) => None,
            })
    }

    fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, TrustError> {
        let snap = self.snapshot.read().ok().and_then(|s| s.clone());
        let why = || {
            self.last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_else(|| "they are being read".into())
        };
        match snap {
            None => Err(TrustError::Unavailable(format!(
                "its follows have not been read yet: {}",
                why()
            ))),
            Some(s) if s.read_at.elapsed() > self.cfg.max_stale => {
                Err(TrustError::Unavailable(format!(
                    "its follows were last read {} s ago, longer than trust.max_stale_secs: {}",
                    s.read_at.elapsed().as_secs(),
                    why()
                )))
            }
            Some(s) => Ok(s),
        }
    }

    /// One verified read of the operator's follows; the error is for the log.
    async fn read(&self) -> Result<(), String> {
        let began = Instant::now();
        let read = operator_follows(
            &self.identity,
            &self.repo,
            &self.cfg.operator,
            self.cfg.max_repo_bytes,
            self.watch.as_deref(),
        )
        .await?;
        let OperatorFollows {
            operator: did,
            follows,
            rev,
            skipped,
        } = read;
        let did = did.as_str();
        let count = follows.len();
        let changed = {
            let mut held = self
                .snapshot
                .write()
                .map_err(|_| "the graph's lock is poisoned".to_string())?;
            if let Some(cur) = held.as_ref().filter(|c| c.operator == did) {
                if rev < cur.rev {
                    return Err(format!(
                        "the operator's PDS answered revision {rev}, older than {} already read; kept the newer one",
                        cur.rev
                    ));
                }
            }
            let changed = held
                .as_ref()
                .is_none_or(|c| c.operator != did || c.follows != follows);
            *held = Some(Arc::new(Snapshot {
                operator: did.to_string(),
                follows,
                rev: rev.clone(),
                read_at: began,
            }));
            changed
        };
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.reads_ok.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = None;
        }
        tracing::info!(target: "atrund::trust", operator = did, %rev, follows = count, skipped, changed, "operator's follows read");
        Ok(())
    }

    /// Whether `author` follows `operator` back: a cached answer, or one proven now.
    async fn follow_back(&self, author: &ResolvedDid, operator: &str) -> Result<bool, TrustError> {
        let did = author.did.as_str();
        if let Some(v) = self.cached_follow_back(did) {
            return Ok(v);
        }
        let lock = {
            let mut l = self
                .looking
                .lock()
                .map_err(|_| TrustError::Unavailable("the graph's lock is poisoned".into()))?;
            if l.len() >= MAX_FOLLOW_BACKS {
                l.clear();
            }
            l.entry(did.to_string()).or_default().clone()
        };
        let _one = lock.lock().await;
        if let Some(v) = self.cached_follow_back(did) {
            return Ok(v);
        }
        let began = Instant::now();
        if let Some(w) = &self.watch {
            w.follow_graph(author);
        }
        self.follow_back_checks.fetch_add(1, Ordering::Relaxed);
        let found = prove_follow_back(&self.repo, author, operator, self.cfg.max_follow_pages)
            .await
            .map_err(|e| TrustError::FollowBackUnreadable(e.to_string()))?;
        tracing::info!(target: "atrund::trust", author = did, follows_back = found, "follow-back checked");
        if let Ok(mut m) = self.follow_backs.lock() {
            if m.len() >= MAX_FOLLOW_BACKS {
                m.clear();
            }
            m.insert(
                did.to_string(),
                FollowBack {
                    follows_back: found,
                    at: began,
                },
            );
        }
        Ok(found)
    }

    fn cached_follow_back(&self, did: &str) -> Option<bool> {
        let fb = self.follow_backs.lock().ok()?.get(did).copied()?;
        let fresh =
            fb.at.elapsed() < self.cfg.follow_back_ttl && !self.changes.changed_since(did, fb.at);
        fresh.then_some(fb.follows_back)
    }
}

/// The operator's follows, read once and verified: what [`GraphTrust`] holds, and what
/// `at-run check` reads to tell an author whether a runner's operator follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorFollows {
    pub operator: String,
    pub follows: HashSet<String>,
    /// The signed revision of the repository read.
    pub rev: String,
    /// Follow records whose subject is not a DID, left out.
    pub skipped: usize,
}

/// Resolves `operator`, reads their whole repository (`getRepo`, verified: commit signature,
/// block hashes, a complete walk of the follow records) and returns whom they follow. A bad
/// signature makes it resolve the DID once more (a rotated key). `watch`: the streams to follow
/// the operator on, when on. The error is one line for a log or a report.
pub async fn operator_follows(
    identity: &IdentityResolver,
    repo: &RepoClient,
    operator: &AtIdentifier,
    max_repo_bytes: u64,
    watch: Option<&EventWatch>,
) -> Result<OperatorFollows, String> {
    let (op, _) = identity
        .resolve(operator)
        .await
        .map_err(|e| format!("resolving the operator: {e}"))?;
    if let Some(w) = watch {
        w.follow_graph(&op);
    }
    let did = op.did.as_str();
    let verified = match repo
        .get_repo(&op.pds, did, &op.signing_key, max_repo_bytes)
        .await
    {
        // The key may have rotated since the document was cached: look once more.
        Err(FetchError::BadCommitSignature(_)) => {
            let fresh = identity
                .refresh_did(&op.did)
                .await
                .map_err(|e| format!("resolving the operator again: {e}"))?;
            repo.get_repo(&fresh.pds, did, &fresh.signing_key, max_repo_bytes)
                .await
        }
        other => other,
    }
    .map_err(|e| format!("reading the operator's repository: {e}"))?;
    let records = verified
        .records(FOLLOW_COLLECTION)
        .map_err(|e| format!("reading the operator's follows: {e}"))?;
    let mut follows = HashSet::with_capacity(records.len());
    let mut skipped = 0usize;
    for r in &records {
        match r.decode::<FollowRecord>() {
            Ok(f) if atrund_config::is_valid_did(&f.subject) => {
                follows.insert(f.subject);
            }
            _ => skipped += 1,
        }
    }
    Ok(OperatorFollows {
        operator: did.to_string(),
        follows,
        rev: verified.commit.rev,
        skipped,
    })
}

/// Whether `author` follows `operator` (a DID): their follow records listed from their PDS (a
/// hint), and a matching one proven with `getRecord` against their key. A listed record that
/// does not prove is ignored, so the author's PDS can hide a follow-back but never invent one.
pub async fn prove_follow_back(
    repo: &RepoClient,
    author: &ResolvedDid,
    operator: &str,
    max_pages: usize,
) -> Result<bool, FetchError> {
    let did = author.did.as_str();
    let listed = repo
        .list_records(&author.pds, did, FOLLOW_COLLECTION, max_pages)
        .await?;
    let candidates = listed
        .iter()
        .filter(|l| l.value.get("subject").and_then(|s| s.as_str()) == Some(operator))
        .take(MAX_PROOFS);
    for l in candidates {
        let proven = repo
            .get_record(
                &author.pds,
                did,
                &author.signing_key,
                FOLLOW_COLLECTION,
                &l.rkey,
            )
            .await?;
        // Listed but proven absent, or proven to follow someone else: the list lied.
        if proven
            .and_then(|r| r.decode::<FollowRecord>().ok())
            .is_some_and(|f| f.subject == operator)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
