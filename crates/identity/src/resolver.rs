//! `IdentityResolver`: DID → verified document data (did:plc with its audit log, did:web) and
//! handle → DID with the bidirectional check, both cached and coalesced. Owns the HTTP and DNS
//! look-ups and the configuration; must not verify repos, records or blobs.
//!
//! Hand-rolled rather than atrium-identity / jacquard-identity / atproto-identity because those
//! hard-code https for PLC and/or did:web and so cannot target a loopback test network, and one
//! of them panics on `did:web:localhost%3A<port>`.

use crate::cache::{TtlCache, Ttls};
use crate::dns::{did_from_txt, HickoryTxtResolver, TxtResolver};
use crate::doc::{first_handle, parse_did_doc, parse_pds_endpoint};
use crate::error::IdentityError;
use crate::key::PublicKey;
use crate::net::{check_url, get_capped};
use crate::plc::verify_audit_log;
use crate::syntax::{AtIdentifier, Did, Handle};
use atrund_netpolicy::{AddressPolicy, ClientConfig, GuardedClient, Resolve, SystemResolver};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Largest DID document we read.
const MAX_DOC_BYTES: usize = 64 * 1024;
/// Largest PLC audit log we read.
const MAX_AUDIT_BYTES: usize = 1024 * 1024;
/// Largest `/.well-known/atproto-did` body, and resolveHandle answer.
const MAX_HANDLE_BYTES: usize = 2048;
/// Redirects followed for the handle's well-known file (each re-checked); nothing else redirects.
const WELL_KNOWN_REDIRECTS: usize = 3;

/// What each server is called in messages to callers (never its URL or address).
const PLC: &str = "the PLC directory";
const DID_WEB: &str = "the did:web host";
const WELL_KNOWN: &str = "the handle's web server";
const HANDLE_SERVICE: &str = "the handle resolution service";

/// What a DID resolves to. For did:plc every field comes from the verified audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDid {
    pub did: Did,
    /// The first `at://` alsoKnownAs entry. NOT verified: use `IdentityResolver::resolve` for a
    /// handle that has passed the bidirectional check.
    pub handle: Option<Handle>,
    pub pds: Url,
    pub signing_key: PublicKey,
}

/// Resolver settings. Build with `..Default::default()` so new fields do not break callers.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// PLC directory base URL.
    pub plc_url: Url,
    /// Permits plain http to localhost / 127.0.0.0/8 / ::1 only: PLC URL, did:web
    /// `localhost%3APORT`, PDS endpoints, the resolveHandle service. Off by default. Opens no
    /// address: loopback must still be opened in `address_policy`.
    pub allow_http_loopback: bool,
    /// Which addresses every identity request may connect to (special-purpose ranges refused
    /// unless opened), checked after resolving and for each redirect.
    pub address_policy: AddressPolicy,
    /// Per request (and per DNS query).
    pub timeout: Duration,
    /// After this a cached answer is served while it refreshes in the background.
    pub stale_ttl: Duration,
    /// After this a cached answer is never served.
    pub max_ttl: Duration,
    /// How long definitive failures (not found, tombstoned, invalid, mismatch) are cached.
    pub error_ttl: Duration,
    /// How long transient failures (unreachable, timeout, 5xx) are cached.
    pub unreachable_ttl: Duration,
    /// Entries per cache (DIDs and handles each) before eviction.
    pub cache_capacity: usize,
    /// An XRPC service whose `com.atproto.identity.resolveHandle` is tried last, as an
    /// untrusted hint (the bidirectional check still applies).
    pub handle_resolution_service: Option<Url>,
    /// DNS TXT `_atproto.<handle>` look-ups.
    pub dns: bool,
    /// HTTPS `https://<handle>/.well-known/atproto-did` look-ups.
    pub well_known: bool,
    /// Certificate authorities trusted beside the web PKI's (PLC, did:web, well-known).
    pub extra_roots: Vec<atrund_netpolicy::CertificateDer<'static>>,
    /// The DNS server of the TXT look-ups (`_atproto.<handle>`); `None`: the system's.
    pub dns_server: Option<std::net::SocketAddr>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            plc_url: Url::parse("https://plc.directory").unwrap_or_else(|_| unreachable!()),
            allow_http_loopback: false,
            address_policy: AddressPolicy::default(),
            timeout: Duration::from_secs(3),
            stale_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            error_ttl: Duration::from_secs(120),
            unreachable_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            handle_resolution_service: None,
            dns: true,
            well_known: true,
            extra_roots: Vec::new(),
            dns_server: None,
        }
    }
}

/// Look-up counts of both identity caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityCacheStats {
    pub dids: crate::cache::CacheStats,
    pub handles: crate::cache::CacheStats,
}

/// Resolves DIDs and handles. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct IdentityResolver {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: IdentityConfig,
    /// No redirects: DID documents and PLC answers must be served directly.
    http: GuardedClient,
    /// A few redirects, each re-checked (scheme and address), which the handle spec allows for
    /// the well-known file.
    http_well_known: GuardedClient,
    txt: Arc<dyn TxtResolver>,
    dids: Arc<TtlCache<Did, Arc<ResolvedDid>>>,
    handles: Arc<TtlCache<Handle, Did>>,
}

impl std::fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl IdentityResolver {
    pub fn new(cfg: IdentityConfig) -> Result<Self, IdentityError> {
        Self::build(cfg, None, Arc::new(SystemResolver))
    }

    /// Like `new`, with the name resolver of HTTP requests replaced (tests pin names; every
    /// address it answers is still checked against `address_policy`).
    pub fn with_name_resolver(
        cfg: IdentityConfig,
        names: Arc<dyn Resolve>,
    ) -> Result<Self, IdentityError> {
        Self::build(cfg, None, names)
    }

    fn build(
        cfg: IdentityConfig,
        txt: Option<Arc<dyn TxtResolver>>,
        names: Arc<dyn Resolve>,
    ) -> Result<Self, IdentityError> {
        check_url(&cfg.plc_url, cfg.allow_http_loopback)?;
        if let Some(svc) = &cfg.handle_resolution_service {
            check_url(svc, cfg.allow_http_loopback)?;
        }
        if cfg.timeout.is_zero() {
            return Err(IdentityError::Config("timeout must be above zero".into()));
        }
        if cfg.stale_ttl > cfg.max_ttl {
            return Err(IdentityError::Config(
                "stale_ttl must not exceed max_ttl".into(),
            ));
        }
        let client = |max_redirects| {
            GuardedClient::new(
                ClientConfig {
                    timeout: cfg.timeout,
                    max_redirects,
                    allow_http_loopback: cfg.allow_http_loopback,
                    extra_roots: cfg.extra_roots.clone(),
                },
                cfg.address_policy.clone(),
                names.clone(),
            )
            .map_err(|e| IdentityError::Config(e.to_string()))
        };
        let http = client(0)?;
        let http_well_known = client(WELL_KNOWN_REDIRECTS)?;
        let ttls = Ttls {
            stale: cfg.stale_ttl,
            max: cfg.max_ttl,
            error: cfg.error_ttl,
            transient: cfg.unreachable_ttl.min(cfg.error_ttl),
            capacity: cfg.cache_capacity.max(1),
        };
        let txt = txt.unwrap_or_else(|| {
            Arc::new(match cfg.dns_server {
                Some(server) => HickoryTxtResolver::with_server(server, cfg.timeout),
                None => HickoryTxtResolver::new(cfg.timeout),
            })
        });
        Ok(IdentityResolver {
            inner: Arc::new(Inner {
                cfg,
                http,
                http_well_known,
                txt,
                dids: TtlCache::new(ttls),
                handles: TtlCache::new(ttls),
            }),
        })
    }

    /// Replaces the DNS TXT resolver (tests inject answers). Returns a resolver with empty caches.
    pub fn with_txt_resolver(self, r: Arc<dyn TxtResolver>) -> Self {
        let inner = &self.inner;
        let ttls = inner.dids.ttls();
        IdentityResolver {
            inner: Arc::new(Inner {
                cfg: inner.cfg.clone(),
                http: inner.http.clone(),
                http_well_known: inner.http_well_known.clone(),
                txt: r,
                dids: TtlCache::new(ttls),
                handles: TtlCache::new(ttls),
            }),
        }
    }

    /// How the DID and handle caches answered since start.
    pub fn cache_stats(&self) -> IdentityCacheStats {
        IdentityCacheStats {
            dids: self.inner.dids.stats(),
            handles: self.inner.handles.stats(),
        }
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.inner.cfg
    }

    /// DID → document data; cached (stale-while-revalidate) and coalesced.
    pub async fn resolve_did(&self, did: &Did) -> Result<Arc<ResolvedDid>, IdentityError> {
        self.did_lookup(did, false).await
    }

    /// Like `resolve_did` but ignores the cached entry; use after a signature failed to verify
    /// with the cached key. Joins a fetch already in flight for the same DID.
    pub async fn refresh_did(&self, did: &Did) -> Result<Arc<ResolvedDid>, IdentityError> {
        self.did_lookup(did, true).await
    }

    async fn did_lookup(&self, did: &Did, force: bool) -> Result<Arc<ResolvedDid>, IdentityError> {
        match did.method() {
            "plc" | "web" => {}
            other => return Err(IdentityError::UnsupportedMethod(other.to_string())),
        }
        let inner = Arc::clone(&self.inner);
        let d = did.clone();
        self.inner
            .dids
            .get(did.clone(), force, move || async move {
                let r = match d.method() {
                    "plc" => inner.fetch_plc(&d).await,
                    _ => inner.fetch_web(&d).await,
                };
                if let Err(e) = &r {
                    tracing::info!(did = %d, error = %e, detail = e.detail().unwrap_or(""), "DID resolution failed");
                }
                r.map(Arc::new)
            })
            .await
    }

    /// Handle → DID, verified both ways (the DID document's first `at://` alsoKnownAs must be
    /// this handle). Cached and coalesced.
    pub async fn resolve_handle(&self, h: &Handle) -> Result<Did, IdentityError> {
        let this = self.clone();
        let handle = h.clone();
        self.inner
            .handles
            .get(h.clone(), false, move || async move {
                let r = this.fetch_handle(&handle).await;
                if let Err(e) = &r {
                    tracing::info!(%handle, error = %e, detail = e.detail().unwrap_or(""), "handle resolution failed");
                }
                r
            })
            .await
    }

    /// Resolves either kind of identifier. Returns the document data and the handle if it is
    /// verified both ways. Starting from a DID, a handle that fails to verify (for any reason,
    /// including an unreachable server) is reported as `None`, not as an error.
    pub async fn resolve(
        &self,
        id: &AtIdentifier,
    ) -> Result<(Arc<ResolvedDid>, Option<Handle>), IdentityError> {
        match id {
            AtIdentifier::Did(did) => {
                let doc = self.resolve_did(did).await?;
                let verified = match &doc.handle {
                    Some(h) => match self.resolve_handle(h).await {
                        Ok(back) if &back == did => Some(h.clone()),
                        Ok(other) => {
                            tracing::debug!(%did, handle = %h, %other, "handle points elsewhere");
                            None
                        }
                        Err(e) => {
                            tracing::debug!(%did, handle = %h, error = %e, "handle not verified");
                            None
                        }
                    },
                    None => None,
                };
                Ok((doc, verified))
            }
            AtIdentifier::Handle(h) => {
                let did = self.resolve_handle(h).await?;
                let doc = self.resolve_did(&did).await?;
                Ok((doc, Some(h.clone())))
            }
        }
    }

    /// Drops cached data for a DID (e.g. after a firehose #identity event).
    pub fn purge_did(&self, did: &Did) {
        self.inner.dids.purge(did);
    }

    /// Drops cached data for a handle.
    pub fn purge_handle(&self, h: &Handle) {
        self.inner.handles.purge(h);
    }

    async fn fetch_handle(&self, h: &Handle) -> Result<Did, IdentityError> {
        let not_found = |reason: String| IdentityError::HandleNotFound {
            handle: h.to_string(),
            reason,
        };
        if h.is_reserved() {
            return Err(not_found("its top-level domain never resolves".into()));
        }
        let did = self.handle_candidate(h).await?;
        // Bidirectional check; a cached document may predate a handle change, so re-fetch once.
        let mut doc = self.resolve_did(&did).await?;
        if doc.handle.as_ref() != Some(h) {
            doc = self.refresh_did(&did).await?;
        }
        if doc.handle.as_ref() != Some(h) {
            return Err(IdentityError::HandleMismatch {
                handle: h.to_string(),
                did: did.to_string(),
                claimed: doc
                    .handle
                    .as_ref()
                    .map_or_else(|| "no handle".to_string(), |c| c.to_string()),
            });
        }
        Ok(did)
    }

    /// DNS, well-known and the service run concurrently; the first to answer in that priority
    /// order wins (DNS is preferred, as the spec says), so a slow lower-priority method only
    /// costs time when the higher ones have nothing.
    async fn handle_candidate(&self, h: &Handle) -> Result<Did, IdentityError> {
        type Task = tokio::task::JoinHandle<Result<Option<Did>, IdentityError>>;
        let mut tasks: Vec<(&str, Task)> = Vec::new();
        if self.inner.cfg.dns {
            let inner = Arc::clone(&self.inner);
            let h = h.clone();
            tasks.push((
                "DNS",
                tokio::spawn(async move { inner.handle_dns(&h).await }),
            ));
        }
        if self.inner.cfg.well_known {
            let inner = Arc::clone(&self.inner);
            let h = h.clone();
            tasks.push((
                "well-known",
                tokio::spawn(async move { inner.handle_well_known(&h).await }),
            ));
        }
        if let Some(svc) = self.inner.cfg.handle_resolution_service.clone() {
            let inner = Arc::clone(&self.inner);
            let h = h.clone();
            tasks.push((
                "resolveHandle",
                tokio::spawn(async move { inner.handle_service(&svc, &h).await }),
            ));
        }
        if tasks.is_empty() {
            return Err(IdentityError::HandleNotFound {
                handle: h.to_string(),
                reason: "every handle resolution method is turned off".into(),
            });
        }
        let mut reasons = Vec::new();
        let mut transient = false;
        // A method that answered wrongly for sure (two TXT DIDs, an invalid one): retrying will
        // not help until the handle's owner fixes it, whatever the other methods did.
        let mut misconfigured = false;
        let mut refused = None;
        let mut found = None;
        let mut iter = tasks.into_iter();
        for (name, task) in iter.by_ref() {
            match task.await {
                Ok(Ok(Some(did))) => {
                    found = Some(did);
                    break;
                }
                Ok(Ok(None)) => reasons.push(format!("{name}: no answer")),
                Ok(Err(e)) => {
                    transient |= e.is_transient();
                    misconfigured |= matches!(e, IdentityError::HandleNotFound { .. });
                    reasons.push(format!("{name}: {}", e.detail().unwrap_or(&e.to_string())));
                    if matches!(e, IdentityError::AddressNotAllowed { .. }) {
                        refused = Some(e);
                    }
                }
                Err(e) => reasons.push(format!("{name}: task failed: {e}")),
            }
        }
        for (_, rest) in iter {
            rest.abort();
        }
        if let Some(did) = found {
            return Ok(did);
        }
        let reason = reasons.join("; ");
        // A method stopped by the address policy is reported as such, so that the caller sees
        // the same refusal whether or not something listens there.
        if let Some(IdentityError::AddressNotAllowed { what, .. }) = refused {
            Err(IdentityError::AddressNotAllowed {
                what,
                detail: format!("handle {h}: {reason}"),
            })
        } else if transient && !misconfigured {
            Err(IdentityError::unreachable(
                "the handle's servers",
                format!("handle {h}: {reason}"),
            ))
        } else {
            Err(IdentityError::HandleNotFound {
                handle: h.to_string(),
                reason,
            })
        }
    }
}

impl Inner {
    fn plc_url(&self, did: &Did, suffix: &str) -> Result<Url, IdentityError> {
        // Built as a string: Url::join would read "did:plc:…" as a URL with scheme "did".
        let s = format!(
            "{}/{}{}",
            self.cfg.plc_url.as_str().trim_end_matches('/'),
            did,
            suffix
        );
        Url::parse(&s).map_err(|e| IdentityError::Config(format!("PLC URL {s}: {e}")))
    }

    async fn fetch_plc(&self, did: &Did) -> Result<ResolvedDid, IdentityError> {
        let doc_url = self.plc_url(did, "")?;
        let log_url = self.plc_url(did, "/log/audit")?;
        let t = self.cfg.timeout;
        let (doc, log) = futures::join!(
            get_capped(
                &self.http,
                PLC,
                &doc_url,
                MAX_DOC_BYTES,
                t,
                "application/did+ld+json, application/json"
            ),
            get_capped(
                &self.http,
                PLC,
                &log_url,
                MAX_AUDIT_BYTES,
                t,
                "application/json"
            ),
        );
        let doc = doc?;
        match doc.status.as_u16() {
            200..=299 => {}
            404 => return Err(IdentityError::NotFound(did.to_string())),
            410 => return Err(IdentityError::Tombstoned(did.to_string())),
            s => return Err(status_error(PLC, &doc_url, s)),
        }
        let log = log?;
        match log.status.as_u16() {
            200..=299 => {}
            404 => return Err(IdentityError::NotFound(did.to_string())),
            s => return Err(status_error(PLC, &log_url, s)),
        }
        let state = verify_audit_log(did, &log.body)?;
        let info = parse_did_doc(did, &doc.body, self.cfg.allow_http_loopback)?;

        // The log is what is verified; the document must agree with it.
        let disagree = |what: &str| {
            IdentityError::audit(
                did.as_str(),
                format!("the DID document's {what} differs from the verified audit log"),
            )
        };
        let op_key = state.atproto_key.as_deref().ok_or_else(|| {
            IdentityError::invalid_doc(
                did.as_str(),
                "the last PLC operation has no atproto verification method",
            )
        })?;
        let op_key = PublicKey::from_did_key(op_key).map_err(|e| {
            IdentityError::invalid_doc(
                did.as_str(),
                format!("the atproto key in the PLC log is unusable: {e}"),
            )
        })?;
        if op_key != info.signing_key {
            return Err(disagree("#atproto key"));
        }
        let endpoint = state.pds_endpoint.as_deref().ok_or_else(|| {
            IdentityError::invalid_doc(
                did.as_str(),
                "the last PLC operation has no atproto_pds service",
            )
        })?;
        let pds = parse_pds_endpoint(did, endpoint, self.cfg.allow_http_loopback)?;
        if pds != info.pds {
            return Err(disagree("PDS endpoint"));
        }
        let aka = serde_json::Value::from(state.also_known_as.clone());
        let handle = first_handle(Some(&aka));
        if handle != info.handle {
            return Err(disagree("handle (alsoKnownAs)"));
        }
        Ok(ResolvedDid {
            did: did.clone(),
            handle,
            pds,
            signing_key: op_key,
        })
    }

    async fn fetch_web(&self, did: &Did) -> Result<ResolvedDid, IdentityError> {
        let (host, port) = did
            .web_host()
            .ok_or_else(|| IdentityError::UnsupportedMethod(did.method().to_string()))?;
        let local = host == "localhost";
        if port.is_some() && !self.cfg.allow_http_loopback {
            return Err(IdentityError::InsecureUrl(format!(
                "{did} (a localhost port is only for development; only when the runner sets allow_http)"
            )));
        }
        let scheme = if local && self.cfg.allow_http_loopback {
            "http"
        } else {
            "https"
        };
        let authority = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let url =
            Url::parse(&format!("{scheme}://{authority}/.well-known/did.json")).map_err(|e| {
                IdentityError::bad_did(did.as_str(), format!("host is not a URL host: {e}"))
            })?;
        check_url(&url, self.cfg.allow_http_loopback)?;
        let resp = get_capped(
            &self.http,
            DID_WEB,
            &url,
            MAX_DOC_BYTES,
            self.cfg.timeout,
            "application/did+ld+json, application/json",
        )
        .await?;
        match resp.status.as_u16() {
            200..=299 => {}
            300..=399 => {
                return Err(IdentityError::invalid_doc(
                    did.as_str(),
                    format!(
                        "{url} answered with a redirect; DID documents must be served directly"
                    ),
                ))
            }
            s => return Err(status_error_web(did, &url, s)),
        }
        let info = parse_did_doc(did, &resp.body, self.cfg.allow_http_loopback)?;
        Ok(ResolvedDid {
            did: did.clone(),
            handle: info.handle,
            pds: info.pds,
            signing_key: info.signing_key,
        })
    }

    async fn handle_dns(&self, h: &Handle) -> Result<Option<Did>, IdentityError> {
        let name = format!("_atproto.{h}");
        let records = tokio::time::timeout(self.cfg.timeout, self.txt.txt(&name))
            .await
            .map_err(|_| {
                IdentityError::unreachable(&format!("dns:{name}"), "TXT look-up timed out")
            })??;
        did_from_txt(h.as_str(), &records).map_err(|reason| IdentityError::HandleNotFound {
            handle: h.to_string(),
            reason,
        })
    }

    async fn handle_well_known(&self, h: &Handle) -> Result<Option<Did>, IdentityError> {
        let url = Url::parse(&format!("https://{h}/.well-known/atproto-did"))
            .map_err(|e| IdentityError::bad_handle(h.as_str(), e.to_string()))?;
        let resp = get_capped(
            &self.http_well_known,
            WELL_KNOWN,
            &url,
            MAX_HANDLE_BYTES,
            self.cfg.timeout,
            "text/plain",
        )
        .await?;
        match resp.status.as_u16() {
            200..=299 => {}
            404 | 410 => return Ok(None),
            s => return Err(status_error(WELL_KNOWN, &url, s)),
        }
        Ok(did_from_well_known(&resp.body))
    }

    async fn handle_service(&self, svc: &Url, h: &Handle) -> Result<Option<Did>, IdentityError> {
        let mut url = Url::parse(&format!(
            "{}/xrpc/com.atproto.identity.resolveHandle",
            svc.as_str().trim_end_matches('/')
        ))
        .map_err(|e| IdentityError::Config(format!("handle_resolution_service: {e}")))?;
        url.query_pairs_mut().append_pair("handle", h.as_str());
        let resp = get_capped(
            &self.http,
            HANDLE_SERVICE,
            &url,
            MAX_HANDLE_BYTES,
            self.cfg.timeout,
            "application/json",
        )
        .await?;
        match resp.status.as_u16() {
            200..=299 => {}
            // XRPC errors (HandleNotFound, InvalidRequest) are 400s.
            400 | 404 => return Ok(None),
            s => return Err(status_error(HANDLE_SERVICE, &url, s)),
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            did: String,
        }
        let answer: Answer =
            serde_json::from_slice(&resp.body).map_err(|e| IdentityError::HandleNotFound {
                handle: h.to_string(),
                reason: format!("resolveHandle answered with malformed JSON: {e}"),
            })?;
        answer.did.parse().map(Some)
    }
}

/// The well-known body: first line, trimmed, must be a DID.
fn did_from_well_known(body: &[u8]) -> Option<Did> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn status_error(what: &str, url: &Url, status: u16) -> IdentityError {
    IdentityError::unreachable(what, format!("{url}: HTTP status {status}"))
}

fn status_error_web(did: &Did, url: &Url, status: u16) -> IdentityError {
    match status {
        // Like the reference: a did:web host that does not serve the document means no DID.
        400..=499 if status != 429 => IdentityError::NotFound(did.to_string()),
        _ => status_error(DID_WEB, url, status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_body() {
        let d = "did:plc:z72i7hdynmk6r22z27h6tvur";
        assert_eq!(
            did_from_well_known(format!("{d}\n").as_bytes())
                .unwrap()
                .as_str(),
            d
        );
        assert_eq!(
            did_from_well_known(format!("  {d}  \r\nextra").as_bytes())
                .unwrap()
                .as_str(),
            d
        );
        assert!(did_from_well_known(b"").is_none());
        assert!(did_from_well_known(b"\n did:plc:z72i7hdynmk6r22z27h6tvur").is_none());
        assert!(did_from_well_known(b"<html>").is_none());
        assert!(did_from_well_known(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn resolver_is_shareable() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<IdentityResolver>();
        check::<Arc<ResolvedDid>>();
    }

    #[test]
    fn config_checks() {
        let mut cfg = IdentityConfig::default();
        assert!(IdentityResolver::new(cfg.clone()).is_ok());
        cfg.plc_url = Url::parse("http://127.0.0.1:2582").unwrap();
        assert_eq!(
            IdentityResolver::new(cfg.clone()).unwrap_err().code(),
            "InsecureUrl"
        );
        cfg.allow_http_loopback = true;
        assert!(IdentityResolver::new(cfg.clone()).is_ok());
        cfg.plc_url = Url::parse("http://plc.example.com").unwrap();
        assert_eq!(
            IdentityResolver::new(cfg.clone()).unwrap_err().code(),
            "InsecureUrl"
        );
        let cfg = IdentityConfig {
            timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            IdentityResolver::new(cfg).unwrap_err().code(),
            "IdentityConfigInvalid"
        );
    }
}
