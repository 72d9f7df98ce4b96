//! Authors' logs over XRPC: `GET /xrpc/dev.atrund.getLogs` (one page, JSON) and
//! `GET /xrpc/dev.atrund.tailLogs` (NDJSON, streamed as lines arrive), each readable only by the
//! bundle's author, who proves it with an ATProto service-auth token
//! (`Authorization: Bearer …`, minted by their PDS with `com.atproto.server.getServiceAuth`,
//! `aud` = this runner's service DID, `lxm` = the method).
//!
//! Owns: the order of the token checks (claims before any network; the allow-list before the
//! issuer is resolved; the issuer resolved through
//! the cached identity path; one refresh of the issuer's document, spaced per DID, when the
//! signature does not verify with the cached key; `jti` replay memory), the author check and the
//! answers' shape. Must not touch: how lines are kept (`atrund-logs`), masked (the sandbox) or how
//! a JWT is decoded and verified (`atrund-identity::service_auth`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atrund_errors::ErrorClass;
use atrund_identity::service_auth::{Expect, ServiceToken};
use atrund_identity::{AtIdentifier, Did, IdentityResolver, ServiceAuthError};
use atrund_logs::{BundleId, LogStore, Page};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;

use crate::error::ApiError;

/// Lines per page when the caller gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// How often a quiet `tailLogs` stream sends a keep-alive line.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// `jti`s remembered at most (each until its token's `exp`); past this, the one expiring first is
/// forgotten.
pub const MAX_REMEMBERED_TOKENS: usize = 100_000;

/// Everything the two methods need; one per runner.
pub struct AuthorsLogs {
    /// `None` with `logs.keep = false`.
    pub store: Option<Arc<LogStore>>,
    /// The `aud` tokens must carry.
    pub service_did: String,
    pub identity: IdentityResolver,
    /// Whose identities may be resolved at all (the allow-list, `policy`, is checked before a
    /// token's issuer is resolved, as for invocations): the live config, so a reload applies.
    pub config: crate::live::LiveConfig,
    /// The operator's social graph, when on (it may admit a token's issuer as it admits
    /// authors).
    pub graph: Option<atrund_trust::GraphTrust>,
    /// `logs.max_token_secs`.
    pub max_token_secs: u64,
    /// `logs.refuse_replayed_tokens`.
    pub refuse_replayed: bool,
    /// `logs.max_tail_secs`.
    pub max_tail: Duration,
    /// Least time between two refreshes of one issuer's DID document forced by a signature that
    /// did not verify (`tenants.identity_refresh_min_secs`).
    pub refresh_min: Duration,
    /// `true` once shutdown has begun: streams end.
    pub draining: watch::Receiver<bool>,
    seen: Mutex<HashMap<(String, String), u64>>,
    refreshed: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for AuthorsLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorsLogs")
            .field("kept", &self.store.is_some())
            .field("service_did", &self.service_did)
            .finish_non_exhaustive()
    }
}

/// Settings of [`AuthorsLogs::new`].
#[derive(Debug, Clone)]
pub struct LogsAccess {
    pub service_did: String,
    pub config: crate::live::LiveConfig,
    pub graph: Option<atrund_trust::GraphTrust>,
    pub max_token_secs: u64,
    pub refuse_replayed: bool,
    pub max_tail: Duration,
    pub refresh_min: Duration,
}

impl AuthorsLogs {
    pub fn new(
        store: Option<Arc<LogStore>>,
        access: LogsAccess,
        identity: IdentityResolver,
        draining: watch::Receiver<bool>,
    ) -> Self {
        AuthorsLogs {
            store,
            service_did: access.service_did,
            identity,
            config: access.config,
            graph: access.graph,
            max_token_secs: access.max_token_secs,
            refuse_replayed: access.refuse_replayed,
            max_tail: access.max_tail,
            refresh_min: access.refresh_min,
            draining,
            seen: Mutex::default(),
            refreshed: Mutex::default(),
        }
    }

    fn gate<'a>(&'a self, config: &'a atrund_config::Config) -> crate::precheck::Gate<'a> {
        crate::precheck::Gate {
            policy: &config.policy,
            deny: &config.trust.deny,
            graph: self.graph.as_ref(),
        }
    }

    fn store(&self) -> Result<&Arc<LogStore>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorClass::NotFound,
                "LogsDisabled",
                "this runner keeps no logs of bundles (its operator set logs.keep = false); read your bundle's output with at-run dev locally",
            )
        })
    }

    /// The caller's DID, once its token is proven to be theirs and for `method` on this runner.
    /// Also the proof of the job methods' caller (`jobs`): one token, one call, whichever.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        method: &str,
    ) -> Result<Did, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                ErrorClass::Unauthorized,
                "AuthMissing",
                format!("send Authorization: Bearer <token>, a service-auth token from your PDS (com.atproto.server.getServiceAuth with aud={} and lxm={method}); at-run logs does this for you", self.service_did),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorClass::Unauthorized,
                    "AuthInvalid",
                    "the Authorization header must be 'Bearer <service-auth token>'",
                )
            })?;
        let t = ServiceToken::parse(token)?;
        let now = unix_now();
        // Nothing the token names is resolved before its claims are right for this call.
        t.check_claims(&Expect {
            aud: &self.service_did,
            lxm: method,
            now,
            max_secs: self.max_token_secs,
        })?;
        // An allow-list runner resolves no identity it would not run.
        let iss = AtIdentifier::Did(t.iss.clone());
        let config = self.config.current();
        crate::precheck::author_precheck(&self.gate(&config), &self.identity, &iss).await?;
        let doc = self.identity.resolve_did(&t.iss).await?;
        if let Err(e) = t.verify(&doc.signing_key) {
            // The key may have been rotated since it was cached: look again, at most once per
            // refresh_min per DID, so bad tokens cannot make the runner hammer the directory.
            if !matches!(e, ServiceAuthError::BadSignature(_)) || !self.may_refresh(&t.iss) {
                return Err(e.into());
            }
            let fresh = self.identity.refresh_did(&t.iss).await?;
            if fresh.signing_key == doc.signing_key {
                return Err(e.into());
            }
            t.verify(&fresh.signing_key)?;
        }
        if self.refuse_replayed {
            self.remember(&t, now)?;
        }
        Ok(t.iss)
    }

    fn may_refresh(&self, did: &Did) -> bool {
        let mut m = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.get(did.as_str())
            .is_some_and(|at| now.duration_since(*at) < self.refresh_min)
        {
            return false;
        }
        if m.len() >= MAX_REMEMBERED_TOKENS {
            m.retain(|_, at| now.duration_since(*at) < self.refresh_min);
        }
        m.insert(did.to_string(), now);
        true
    }

    /// Refuses a `jti` already used by the same issuer; a token without one cannot be checked
    /// for replay and is refused too (the reference PDS always sets it).
    fn remember(&self, t: &ServiceToken, now: u64) -> Result<(), ApiError> {
        let Some(jti) = t.jti.as_deref() else {
            return Err(ApiError::new(
                ErrorClass::Unauthorized,
                "AuthInvalid",
                "the service-auth token has no jti, so this runner cannot refuse its replay; mint one with your PDS's com.atproto.server.getServiceAuth",
            ));
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (t.iss.to_string(), jti.to_string());
        if seen.contains_key(&key) {
            return Err(ApiError::new(
                ErrorClass::Unauthorized,
                "AuthReplayed",
                "this service-auth token was already used; mint a new one for each call",
            ));
        }
        if seen.len() >= MAX_REMEMBERED_TOKENS {
            seen.retain(|_, exp| *exp > now);
            if seen.len() >= MAX_REMEMBERED_TOKENS {
                if let Some(k) = seen.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                    seen.remove(&k);
                }
            }
        }
        seen.insert(key, t.exp);
        Ok(())
    }

    /// The bundle the query names, once the caller is proven to be its author.
    async fn bundle(
        &self,
        headers: &HeaderMap,
        method: &str,
        q: &LogsQuery,
    ) -> Result<BundleId, ApiError> {
        let caller = self.authenticate(headers, method).await?;
        atrund_bundle::record::validate_name(&q.bundle)?;
        if let Some(author) = q.author.as_deref() {
            let did = match author.parse::<AtIdentifier>()? {
                AtIdentifier::Did(d) => d,
                AtIdentifier::Handle(h) => {
                    let id = AtIdentifier::Handle(h.clone());
                    let config = self.config.current();
                    crate::precheck::author_precheck(&self.gate(&config), &self.identity, &id)
                        .await?;
                    self.identity.resolve_handle(&h).await?
                }
            };
            if did != caller {
                return Err(ApiError::new(
                    ErrorClass::Forbidden,
                    "NotBundleAuthor",
                    format!("only the author of a bundle may read its logs; your token is {caller}'s, the bundle is {did}'s"),
                ));
            }
        }
        Ok(BundleId {
            author: caller.to_string(),
            name: q.bundle.clone(),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The query of both methods.
#[derive(Debug, serde::Deserialize)]
pub struct LogsQuery {
    /// The bundle's name.
    bundle: String,
    /// The bundle's author (DID or handle); must be the token's issuer. Default: the issuer.
    #[serde(default)]
    author: Option<String>,
    /// Lines after this sequence number (a previous answer's `cursor`). Default: the newest
    /// `limit` lines.
    #[serde(default)]
    since: Option<u64>,
    /// Most lines in the answer (getLogs) or in the first batch (tailLogs).
    #[serde(default)]
    limit: Option<usize>,
}

const USAGE: &str =
    "give the bundle as ?bundle=<name>, optionally &since=<cursor>&limit=<1..1000>&author=<your DID>";

fn parse_query(
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<LogsQuery, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|_| ApiError::new(ErrorClass::BadRequest, "InvalidRequest", USAGE))?;
    if q.limit.is_some_and(|l| l == 0 || l > MAX_LIMIT) {
        return Err(ApiError::new(
            ErrorClass::BadRequest,
            "InvalidRequest",
            USAGE,
        ));
    }
    Ok(q)
}

/// The JSON of one page.
fn page_json(id: &BundleId, page: &Page) -> serde_json::Value {
    serde_json::json!({
        "author": id.author,
        "bundle": id.name,
        "lines": page.lines,
        "cursor": page.cursor,
        "missed": page.missed,
        "dropped": page.dropped,
        "more": page.more,
    })
}

/// `GET /xrpc/dev.atrund.getLogs?bundle=NAME[&since=N][&limit=N][&author=DID]`.
pub async fn get_logs(
    State(logs): State<Arc<AuthorsLogs>>,
    headers: HeaderMap,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (_, id, page) = first_page(&logs, &headers, q, atrund_api::GET_LOGS).await?;
    Ok(axum::Json(page_json(&id, &page)).into_response())
}

/// What both methods do first: logs kept, query valid, caller proven to be the bundle's author;
/// then the page the query asks for.
async fn first_page(
    logs: &AuthorsLogs,
    headers: &HeaderMap,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    method: &str,
) -> Result<(Arc<LogStore>, BundleId, Page), ApiError> {
    let store = logs.store()?.clone();
    let q = parse_query(q)?;
    let id = logs.bundle(headers, method, &q).await?;
    let page = store.read(&id, q.since, q.limit.unwrap_or(DEFAULT_LIMIT));
    Ok((store, id, page))
}

/// `GET /xrpc/dev.atrund.tailLogs?bundle=NAME[&since=N][&limit=N][&author=DID]`: NDJSON, one
/// event per line: `{"type":"line",…}`, `{"type":"missed","count":N}` (lines the ring dropped
/// before this reader got them), `{"type":"keepalive"}` every [`KEEPALIVE`] of quiet, and
/// `{"type":"end","cursor":N,"reason":…}` when the stream ends (after `logs.max_tail_secs` or
/// when the runner shuts down); reconnect with `since=cursor`.
pub async fn tail_logs(
    State(logs): State<Arc<AuthorsLogs>>,
    headers: HeaderMap,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (store, id, first) = first_page(&logs, &headers, q, atrund_api::TAIL_LOGS).await?;
    let tail = Tail {
        store,
        id,
        cursor: first.cursor,
        first: Some(first),
        rx: None,
        deadline: tokio::time::Instant::now() + logs.max_tail,
        draining: logs.draining.clone(),
        done: false,
    };
    let stream = futures::stream::unfold(tail, |mut t| async move {
        let chunk = t.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), t))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One follower's position.
struct Tail {
    store: Arc<LogStore>,
    id: BundleId,
    cursor: u64,
    first: Option<Page>,
    rx: Option<watch::Receiver<u64>>,
    deadline: tokio::time::Instant,
    draining: watch::Receiver<bool>,
    done: bool,
}

impl Tail {
    /// The next NDJSON chunk; `None` once the stream has ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(p) = self.first.take() {
            if !p.lines.is_empty() || p.missed > 0 {
                return Some(self.render(&p));
            }
        }
        loop {
            if self.rx.is_none() {
                self.rx = self.store.subscribe(&self.id);
                // Lines may have arrived between the last read and subscribing.
                let p = self.store.read(&self.id, Some(self.cursor), MAX_LIMIT);
                if !p.lines.is_empty() || p.missed > 0 {
                    return Some(self.render(&p));
                }
            }
            let wake = async {
                match self.rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    // No ring yet (the bundle has printed nothing since it was evicted or the
                    // runner started): look again shortly.
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        false
                    }
                }
            };
            let mut draining = self.draining.clone();
            tokio::select! {
                woke = wake => {
                    if !woke {
                        self.rx = None;
                        continue;
                    }
                    let p = self.store.read(&self.id, Some(self.cursor), MAX_LIMIT);
                    if !p.lines.is_empty() || p.missed > 0 {
                        return Some(self.render(&p));
                    }
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    return Some(Bytes::from_static(b"{\"type\":\"keepalive\"}\n"));
                }
                _ = tokio::time::sleep_until(self.deadline) => return Some(self.end("maxTailSecs")),
                _ = draining.wait_for(|d| *d) => return Some(self.end("draining")),
            }
        }
    }

    fn render(&mut self, p: &Page) -> Bytes {
        let mut out = Vec::new();
        if p.missed > 0 {
            push_json(
                &mut out,
                &serde_json::json!({"type": "missed", "count": p.missed}),
            );
        }
        for l in &p.lines {
            let mut v = serde_json::to_value(l).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), "line".into());
            }
            push_json(&mut out, &v);
        }
        self.cursor = p.cursor;
        Bytes::from(out)
    }

    fn end(&mut self, reason: &str) -> Bytes {
        self.done = true;
        let mut out = Vec::new();
        push_json(
            &mut out,
            &serde_json::json!({"type": "end", "cursor": self.cursor, "reason": reason}),
        );
        Bytes::from(out)
    }
}

fn push_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    if serde_json::to_writer(&mut *out, v).is_ok() {
        out.push(b'\n');
    }
}
