//! From "author + name + version selector" to verified code on disk: follows the release pointer,
//! fetches the bundle record through a verified commit proof, and fetches the code blob by the
//! CID that record names, storing it content-addressed.
//!
//! Also loads a bundle's sealed `dev.atrund.secrets` record for this runner's keys
//! ([`BundleSource::load_secrets`]): proven like the bundle record, an absence proven by the MST
//! means "no secrets". It never opens the record: that needs the runner's secret key.
//!
//! Owns: the order of the fetch/verify steps and the in-memory cache of resolved records. Must
//! not touch: policy (the caller checks who may run before calling `load`) or execution.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrund_errors::ErrorClass;
use atrund_identity::{IdentityError, IdentityResolver, ResolvedDid};
use atrund_repo::{FetchError, RepoClient, VerifiedRecord};
use atrund_secrets::{secrets_rkey, RunnerPublicKey, SecretsRecord, SECRETS_COLLECTION};

use crate::events::{EventWatch, Invalidations};
use crate::flights::{Flights, ShareableError};
use crate::record::{
    bundle_rkey, validate_name, BundleRecord, RecordError, ReleaseRecord, BUNDLE_COLLECTION,
    RELEASE_COLLECTION,
};
use crate::revisions::{RevisionError, RevisionFloors};
use crate::selector::VersionSelector;
use crate::store::{BundleStore, StoreError};

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// the author's identity could not be resolved
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// a fetch from the author's PDS failed or did not verify
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// the record is not well-formed
    #[error(transparent)]
    Record(#[from] RecordError),
    /// the author has published no release of this bundle
    #[error("{author} has no release named '{name}' (no dev.atrund.release record); publish one with `at-run deploy`")]
    NoSuchRelease { author: String, name: String },
    /// the author has not published this version
    #[error("{author} has not published '{name}' version {version}")]
    NoSuchVersion {
        author: String,
        name: String,
        version: String,
    },
    /// no bundle record of the author has this CID
    #[error("{author} has no dev.atrund.bundle record of '{name}' with CID {cid}")]
    NoSuchRecord {
        author: String,
        name: String,
        cid: String,
    },
    /// the release pointer names a record version that is no longer in the repository
    #[error("release '{name}' points at record CID {expected}, but the repository now holds {actual} at that key; the author must re-point the release")]
    ReleaseMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    /// the code blob is larger than this runner accepts
    #[error("bundle code is {size} bytes, over this runner's limit of {limit} bytes (fetch.max_bundle_bytes)")]
    TooLarge { size: u64, limit: u64 },
    /// the author's dev.atrund.secrets record does not decode
    #[error("the dev.atrund.secrets record at {rkey} does not decode: {detail}; the author should run `at-run secrets set` again")]
    SecretsRecord { rkey: String, detail: String },
    /// the PDS replayed an older repository revision, or the floor file failed
    #[error(transparent)]
    Revision(#[from] RevisionError),
    /// a load of this bundle version failed moments ago and is not retried yet
    #[error("{message} (remembered for up to {ttl_secs} s; retry after that)")]
    Remembered {
        code: &'static str,
        class: ErrorClass,
        message: String,
        ttl_secs: u64,
    },
    /// the load this request waited for failed
    #[error("{message}")]
    Shared {
        code: &'static str,
        class: ErrorClass,
        message: String,
    },
    /// the code is larger than the author's whole share of the store
    #[error("bundle code of {size} bytes is more than this runner keeps for one author ({cap} bytes, tenants.max_store_bytes_per_author); publish smaller code or ask the operator for a larger share")]
    OverShare { size: u64, cap: u64 },
    /// the bundle store on disk failed
    #[error(
        "bundle store error at {path}: {source}; check the data dir's permissions and free space"
    )]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl BundleError {
    /// Stable error name for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Identity(e) => e.code(),
            BundleError::Fetch(e) => e.code(),
            BundleError::Record(_) => "BundleInvalid",
            BundleError::NoSuchRelease { .. } => "BundleNotFound",
            BundleError::NoSuchVersion { .. } => "VersionNotFound",
            BundleError::NoSuchRecord { .. } => "VersionNotFound",
            BundleError::ReleaseMismatch { .. } => "ReleaseInvalid",
            BundleError::TooLarge { .. } | BundleError::OverShare { .. } => "BundleTooLarge",
            BundleError::SecretsRecord { .. } => "SecretsInvalid",
            BundleError::Store { .. } => "StoreError",
            BundleError::Revision(RevisionError::Rollback { .. }) => "RepoRollback",
            BundleError::Revision(RevisionError::File { .. }) => "StoreError",
            BundleError::Remembered { code, .. } | BundleError::Shared { code, .. } => code,
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`).
    pub fn class(&self) -> ErrorClass {
        match self {
            BundleError::Identity(e) => e.class(),
            BundleError::Fetch(e) => e.class(),
            BundleError::NoSuchRelease { .. }
            | BundleError::NoSuchVersion { .. }
            | BundleError::NoSuchRecord { .. } => ErrorClass::NotFound,
            BundleError::TooLarge { .. } | BundleError::OverShare { .. } => ErrorClass::TooLarge,
            BundleError::Record(_)
            | BundleError::ReleaseMismatch { .. }
            | BundleError::SecretsRecord { .. }
            | BundleError::Revision(RevisionError::Rollback { .. }) => ErrorClass::Author,
            BundleError::Store { .. } | BundleError::Revision(RevisionError::File { .. }) => {
                ErrorClass::Runner
            }
            BundleError::Remembered { class, .. } | BundleError::Shared { class, .. } => *class,
        }
    }

    /// Whether this failure may be remembered by the negative cache: everything the author's
    /// side decides (missing versions, PDS down, proofs that fail), not the runner's own disk.
    fn is_rememberable(&self) -> bool {
        !matches!(
            self,
            BundleError::Store { .. }
                | BundleError::Revision(RevisionError::File { .. })
                | BundleError::Remembered { .. }
                | BundleError::Shared { .. }
        )
    }
}

/// A verified bundle version whose code is on disk.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    pub author: String,
    pub name: String,
    pub version: String,
    /// CID of the `dev.atrund.bundle` record: identifies exactly what runs.
    pub record_cid: String,
    pub record: BundleRecord,
    pub code_path: PathBuf,
}

/// Settings for [`BundleSource`].
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Largest code blob accepted.
    pub max_bundle_bytes: u64,
    /// How long a resolved `latest` (or a pinned version) is reused before the record is
    /// fetched and verified again. Code is never refetched for an unchanged CID.
    pub revalidate: Duration,
    /// How many listRecords pages to scan when a request pins a record CID.
    pub max_list_pages: usize,
    /// How long a failed load is answered from memory (`tenants.negative_cache_secs`).
    pub negative_ttl: Duration,
    /// Least time between two refreshes of one DID forced by a bad commit signature
    /// (`tenants.identity_refresh_min_secs`).
    pub identity_refresh_min: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            max_bundle_bytes: 20 * 1024 * 1024,
            revalidate: Duration::from_secs(30),
            max_list_pages: 20,
            negative_ttl: Duration::from_secs(10),
            identity_refresh_min: Duration::from_secs(60),
        }
    }
}

/// Entries of the negative cache before expired ones are swept; past the hard cap nothing new
/// is remembered (the per-author rate limit bounds how fast keys can be made).
const NEGATIVE_SWEEP_AT: usize = 10_000;
const NEGATIVE_MAX: usize = 100_000;

type CacheKey = (String, String, String); // (did, name, selector)
type RecordCache = Mutex<HashMap<CacheKey, (Instant, Arc<LoadedBundle>)>>;
type NegativeCache = Mutex<HashMap<CacheKey, (Instant, &'static str, ErrorClass, String)>>;

/// A bundle's verified, still sealed, secrets record for this runner.
#[derive(Debug, Clone)]
pub struct LoadedSecrets {
    /// CID of the record: part of what identifies an instance, so a changed secret reaches the
    /// next new instance.
    pub cid: String,
    pub rkey: String,
    pub record: SecretsRecord,
}

type SecretsKey = (String, String, Vec<RunnerPublicKey>); // (did, name, runner keys)
type SecretsCache = Mutex<HashMap<SecretsKey, (Instant, Option<Arc<LoadedSecrets>>)>>;

impl ShareableError for BundleError {
    fn share(&self) -> (&'static str, ErrorClass, String) {
        (self.code(), self.class(), self.to_string())
    }

    fn from_shared(code: &'static str, class: ErrorClass, message: String) -> Self {
        BundleError::Shared {
            code,
            class,
            message,
        }
    }
}

/// The fetch + verify pipeline.
#[derive(Clone)]
pub struct BundleSource {
    identity: IdentityResolver,
    repo: RepoClient,
    store: BundleStore,
    cfg: SourceConfig,
    cache: Arc<RecordCache>,
    secrets: Arc<SecretsCache>,
    revisions: Arc<RevisionFloors>,
    /// Failed loads, answered from memory for `negative_ttl`.
    failures: Arc<NegativeCache>,
    /// One load per key at a time: concurrent requests for the same version wait for it.
    flights: Arc<Flights<CacheKey, Arc<LoadedBundle>>>,
    /// The same for secrets records.
    secrets_flights: Arc<Flights<SecretsKey, Option<Arc<LoadedSecrets>>>>,
    /// When each DID was last re-resolved because of a bad commit signature.
    refreshed: Arc<Mutex<HashMap<String, Instant>>>,
    /// Authors the event streams saw change: what was loaded for them before is stale.
    invalidations: Arc<Invalidations>,
    /// The event streams, when on (`with_event_streams`).
    watch: Option<Arc<EventWatch>>,
}

impl BundleSource {
    pub fn new(
        identity: IdentityResolver,
        repo: RepoClient,
        store: BundleStore,
        cfg: SourceConfig,
    ) -> Self {
        Self {
            identity,
            repo,
            store,
            cfg,
            cache: Arc::default(),
            secrets: Arc::default(),
            revisions: Arc::new(RevisionFloors::in_memory()),
            failures: Arc::default(),
            flights: Arc::default(),
            secrets_flights: Arc::default(),
            refreshed: Arc::default(),
            invalidations: Arc::default(),
            watch: None,
        }
    }

    /// Follows the PDS event streams of the authors it loads from, so their releases, rollbacks
    /// and secret changes are fetched again as soon as they are published (`events`).
    pub fn with_event_streams(mut self) -> Self {
        self.watch = Some(Arc::new(EventWatch::new(
            self.repo.http().clone(),
            self.identity.clone(),
            self.invalidations.clone(),
        )));
        self
    }

    /// When authors last changed, as the event streams saw it.
    pub fn invalidations(&self) -> &Arc<Invalidations> {
        &self.invalidations
    }

    /// The event streams, when they are on (the trust graph follows accounts on them too).
    pub fn event_watch(&self) -> Option<&Arc<EventWatch>> {
        self.watch.as_ref()
    }

    /// The event streams' counters, when they are on.
    pub fn event_stream_stats(&self) -> Option<crate::events::EventStreamStats> {
        self.watch.as_ref().map(|w| w.stats())
    }

    fn follow(&self, author: &ResolvedDid) {
        if let Some(w) = &self.watch {
            w.follow(author);
        }
    }

    /// The author's DID document again after a commit signature did not verify (they may have
    /// rotated keys), at most once per `identity_refresh_min` per DID; `None` when it was
    /// refreshed too recently, so a forging PDS cannot force a look-up per request.
    async fn refresh_for_bad_signature(
        &self,
        author: &ResolvedDid,
    ) -> Result<Option<Arc<ResolvedDid>>, BundleError> {
        let did = author.did.as_str();
        if let Ok(mut r) = self.refreshed.lock() {
            let now = Instant::now();
            if r.get(did)
                .is_some_and(|at| now.duration_since(*at) < self.cfg.identity_refresh_min)
            {
                return Ok(None);
            }
            if r.len() >= NEGATIVE_SWEEP_AT {
                let min = self.cfg.identity_refresh_min;
                r.retain(|_, at| now.duration_since(*at) < min);
            }
            r.insert(did.to_string(), now);
        }
        Ok(Some(self.identity.refresh_did(&author.did).await?))
    }

    /// Uses `floors` (persisted in the data dir by the daemon) for rollback protection instead
    /// of in-memory floors.
    pub fn with_revision_floors(mut self, floors: Arc<RevisionFloors>) -> Self {
        self.revisions = floors;
        self
    }

    /// `collection/rkey` of `author`, proven by a signed commit that is not older than the
    /// newest revision this runner has verified for the author (rollback protection).
    async fn get_proven(
        &self,
        author: &ResolvedDid,
        collection: &str,
        rkey: &str,
    ) -> Result<Option<VerifiedRecord>, BundleError> {
        let did = author.did.as_str();
        let floor = self.revisions.newest(did);
        let found = self
            .repo
            .get_record(&author.pds, did, &author.signing_key, collection, rkey)
            .await?;
        if let Some(r) = &found {
            self.revisions.observe(did, &r.rev, floor.as_deref())?;
        }
        Ok(found)
    }

    /// The author's `dev.atrund.secrets` record of bundle `name` for the first of `keys` (this
    /// runner's current key, then previous keys still in their grace period) that has one, each
    /// lookup proven by a signed commit; `None` when the repository proves there is none.
    /// Cached like bundle records (`revalidate`); concurrent loads of the same record share one
    /// fetch.
    pub async fn load_secrets(
        &self,
        author: &ResolvedDid,
        name: &str,
        keys: &[RunnerPublicKey],
    ) -> Result<Option<Arc<LoadedSecrets>>, BundleError> {
        validate_name(name)?;
        let key = (
            author.did.as_str().to_string(),
            name.to_string(),
            keys.to_vec(),
        );
        if let Ok(cache) = self.secrets.lock() {
            if let Some((at, hit)) = cache.get(&key) {
                if at.elapsed() < self.cfg.revalidate
                    && !self.invalidations.changed_since(&key.0, *at)
                {
                    return Ok(hit.clone());
                }
            }
        }
        self.secrets_flights
            .run(&key, || async {
                // What is fetched from now on is at least as new as this moment.
                let began = Instant::now();
                let found = match self.fetch_secrets(author, name, keys).await {
                    Err(BundleError::Fetch(e @ FetchError::BadCommitSignature(_))) => {
                        match self.refresh_for_bad_signature(author).await? {
                            Some(fresh) => self.fetch_secrets(&fresh, name, keys).await?,
                            None => return Err(e.into()),
                        }
                    }
                    other => other?,
                };
                if let Ok(mut cache) = self.secrets.lock() {
                    cache.insert(key.clone(), (began, found.clone()));
                }
                self.follow(author);
                Ok(found)
            })
            .await
    }

    async fn fetch_secrets(
        &self,
        author: &ResolvedDid,
        name: &str,
        keys: &[RunnerPublicKey],
    ) -> Result<Option<Arc<LoadedSecrets>>, BundleError> {
        for k in keys {
            let rkey = secrets_rkey(name, k);
            // A PDS that answers "not found" without a proof could only hide secrets, which
            // denies service (reads of the names fail) but reveals nothing: treat it as absent.
            let record = match self.get_proven(author, SECRETS_COLLECTION, &rkey).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(BundleError::Fetch(FetchError::RecordNotFound)) => continue,
                Err(e) => return Err(e),
            };
            let decoded: SecretsRecord =
                record
                    .decode()
                    .map_err(|e: FetchError| BundleError::SecretsRecord {
                        rkey: rkey.clone(),
                        detail: e.to_string(),
                    })?;
            return Ok(Some(Arc::new(LoadedSecrets {
                cid: record.cid.to_string(),
                rkey,
                record: decoded,
            })));
        }
        Ok(None)
    }

    /// Loads `name` at `selector` from the author's repository, verified end to end.
    /// Concurrent loads of the same version share one fetch; a failed load is remembered for
    /// `negative_ttl` and answered with the same error name without asking the PDS again.
    pub async fn load(
        &self,
        author: &ResolvedDid,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<Arc<LoadedBundle>, BundleError> {
        validate_name(name)?;
        let key = (
            author.did.as_str().to_string(),
            name.to_string(),
            selector.to_string(),
        );
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        self.remembered_failure(&key)?;
        self.flights
            .run(&key, || async {
                let r = self.load_uncached(author, name, selector, &key).await;
                if let Err(e) = &r {
                    self.remember_failure(&key, e);
                }
                r
            })
            .await
    }

    fn remembered_failure(&self, key: &CacheKey) -> Result<(), BundleError> {
        let ttl = self.cfg.negative_ttl;
        let Ok(failures) = self.failures.lock() else {
            return Ok(());
        };
        match failures.get(key) {
            Some((at, code, class, message))
                if at.elapsed() < ttl && !self.invalidations.changed_since(&key.0, *at) =>
            {
                Err(BundleError::Remembered {
                    code,
                    class: *class,
                    message: message.clone(),
                    ttl_secs: ttl.as_secs(),
                })
            }
            _ => Ok(()),
        }
    }

    fn remember_failure(&self, key: &CacheKey, e: &BundleError) {
        if self.cfg.negative_ttl.is_zero() || !e.is_rememberable() {
            return;
        }
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= NEGATIVE_SWEEP_AT {
            let ttl = self.cfg.negative_ttl;
            failures.retain(|_, (at, _, _, _)| at.elapsed() < ttl);
        }
        if failures.len() < NEGATIVE_MAX {
            failures.insert(
                key.clone(),
                (Instant::now(), e.code(), e.class(), e.to_string()),
            );
        }
    }

    async fn load_uncached(
        &self,
        author: &ResolvedDid,
        name: &str,
        selector: &VersionSelector,
        key: &CacheKey,
    ) -> Result<Arc<LoadedBundle>, BundleError> {
        // What is fetched from now on is at least as new as this moment.
        let began = Instant::now();
        let (rkey, record) = match self.fetch_record(author, name, selector).await {
            Err(BundleError::Fetch(e @ FetchError::BadCommitSignature(_))) => {
                // The author may have rotated keys since we cached their DID document: resolve
                // it again (at most once per interval), then retry. A second failure is final.
                match self.refresh_for_bad_signature(author).await? {
                    Some(fresh) => self.fetch_record(&fresh, name, selector).await?,
                    None => return Err(e.into()),
                }
            }
            other => other?,
        };
        let bundle: BundleRecord = record.decode()?;
        bundle.validate(&rkey)?;
        if bundle.name != name {
            return Err(RecordError::KeyMismatch {
                rkey,
                name: bundle.name,
                version: bundle.version,
            }
            .into());
        }
        let code_path = self.code(author, &bundle).await?;
        let loaded = Arc::new(LoadedBundle {
            author: author.did.as_str().to_string(),
            name: bundle.name.clone(),
            version: bundle.version.clone(),
            record_cid: record.cid.to_string(),
            record: bundle,
            code_path,
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key.clone(), (began, loaded.clone()));
        }
        self.follow(author);
        Ok(loaded)
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<LoadedBundle>> {
        let cache = self.cache.lock().ok()?;
        let (at, hit) = cache.get(key)?;
        (at.elapsed() < self.cfg.revalidate
            && !self.invalidations.changed_since(&key.0, *at)
            && hit.code_path.exists())
        .then(|| hit.clone())
    }

    /// Returns the bundle record's key and its verified bytes.
    async fn fetch_record(
        &self,
        author: &ResolvedDid,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<(String, VerifiedRecord), BundleError> {
        let did = author.did.as_str();
        let get = |collection: &'static str, rkey: String| async move {
            self.get_proven(author, collection, &rkey)
                .await
                .map(|r| r.map(|r| (rkey, r)))
        };
        match selector {
            VersionSelector::Latest => {
                let (_, release) = get(RELEASE_COLLECTION, name.to_string())
                    .await?
                    .ok_or_else(|| BundleError::NoSuchRelease {
                        author: did.to_string(),
                        name: name.to_string(),
                    })?;
                let release: ReleaseRecord = release.decode()?;
                let rkey = release_target_rkey(did, name, &release)?;
                let (rkey, record) =
                    get(BUNDLE_COLLECTION, rkey.clone()).await?.ok_or_else(|| {
                        BundleError::NoSuchVersion {
                            author: did.to_string(),
                            name: name.to_string(),
                            version: rkey.clone(),
                        }
                    })?;
                if record.cid.to_string() != release.bundle.cid {
                    return Err(BundleError::ReleaseMismatch {
                        name: name.to_string(),
                        expected: release.bundle.cid,
                        actual: record.cid.to_string(),
                    });
                }
                Ok((rkey, record))
            }
            VersionSelector::Version(v) => get(BUNDLE_COLLECTION, bundle_rkey(name, v))
                .await?
                .ok_or_else(|| BundleError::NoSuchVersion {
                    author: did.to_string(),
                    name: name.to_string(),
                    version: v.clone(),
                }),
            VersionSelector::RecordCid(want) => {
                let not_found = || BundleError::NoSuchRecord {
                    author: did.to_string(),
                    name: name.to_string(),
                    cid: want.to_string(),
                };
                // listRecords is unauthenticated: it only tells us which key to prove.
                let hints = self
                    .repo
                    .list_record_cids(&author.pds, did, BUNDLE_COLLECTION, self.cfg.max_list_pages)
                    .await?;
                let prefix = format!("{name}:");
                let rkey = hints
                    .into_iter()
                    .find(|(rkey, c)| c == want && rkey.starts_with(&prefix))
                    .map(|(rkey, _)| rkey)
                    .ok_or_else(not_found)?;
                let (rkey, record) = get(BUNDLE_COLLECTION, rkey).await?.ok_or_else(not_found)?;
                if &record.cid != want {
                    return Err(not_found());
                }
                Ok((rkey, record))
            }
        }
    }

    /// The code for a verified record: from the store, or fetched, verified and stored.
    async fn code(
        &self,
        author: &ResolvedDid,
        bundle: &BundleRecord,
    ) -> Result<PathBuf, BundleError> {
        let code = &bundle.code;
        if code.size > self.cfg.max_bundle_bytes {
            return Err(BundleError::TooLarge {
                size: code.size,
                limit: self.cfg.max_bundle_bytes,
            });
        }
        if let Some(path) = self.store.get(&code.cid, code.size) {
            return Ok(path);
        }
        let bytes = self
            .repo
            .get_blob(&author.pds, author.did.as_str(), &code.cid, code.size)
            .await?;
        let store = self.store.clone();
        let cid = code.cid;
        let owner = author.did.as_str().to_string();
        tokio::task::spawn_blocking(move || store.put(&owner, &cid, &bytes))
            .await
            .map_err(|e| BundleError::Store {
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|e| match e {
                StoreError::Io { path, source } => BundleError::Store { path, source },
                StoreError::OverShare { size, cap } => BundleError::OverShare { size, cap },
            })
    }
}

/// The bundle record key a release points at; the URI must name the same repo and collection.
fn release_target_rkey(
    did: &str,
    name: &str,
    release: &ReleaseRecord,
) -> Result<String, RecordError> {
    let bad = || RecordError::BadReleaseTarget {
        name: name.to_string(),
        uri: release.bundle.uri.clone(),
    };
    let rest = release
        .bundle
        .uri
        .strip_prefix("at://")
        .and_then(|r| r.strip_prefix(did))
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(BUNDLE_COLLECTION))
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    if release.name != name || !rest.starts_with(&format!("{name}:")) || rest.contains('/') {
        return Err(bad());
    }
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::StrongRef;

    fn release(uri: &str) -> ReleaseRecord {
        ReleaseRecord {
            name: "hello".into(),
            bundle: StrongRef {
                uri: uri.into(),
                cid: "bafy".into(),
            },
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn release_must_point_into_the_same_repo_and_name() {
        let did = "did:plc:abcdefghijklmnopqrstuvwx";
        let ok = release(&format!("at://{did}/dev.atrund.bundle/hello:1.0.0"));
        assert_eq!(
            release_target_rkey(did, "hello", &ok).unwrap(),
            "hello:1.0.0"
        );
        for uri in [
            "at://did:plc:other/dev.atrund.bundle/hello:1.0.0".to_string(),
            format!("at://{did}/dev.atrund.release/hello"),
            format!("at://{did}/dev.atrund.bundle/other:1.0.0"),
            format!("at://{did}/dev.atrund.bundle/hello:1.0.0/x"),
            format!("{did}/dev.atrund.bundle/hello:1.0.0"),
        ] {
            assert!(
                release_target_rkey(did, "hello", &release(&uri)).is_err(),
                "{uri}"
            );
        }
    }
}
