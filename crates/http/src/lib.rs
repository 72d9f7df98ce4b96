//! The runner's HTTP API: the invocation route, health and readiness, and describeRunner.
//!
//! Owns: routing, request parsing, the order of the pipeline steps (policy before resolution →
//! identity → policy → fetch → permission caps → pool), body limits and the error → status
//! mapping (`error`). Must not touch: how identities are resolved, records verified or instances
//! isolated; it calls those crates.

mod body_limit;
pub mod data_quota;
pub mod error;
pub mod local;
pub mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::watch;

use atrund_bundle::{Manifest, VersionSelector};
use atrund_config::Config;
use atrund_identity::{AtIdentifier, IdentityResolver};
use atrund_policy::EffectiveLimits;
use atrund_pool::{InstanceKey, Pool};
use atrund_sandbox::{InstanceSpec, Invocation};

pub use error::ApiError;
pub use local::LocalBundle;

/// Author segment that names the local dev bundle.
pub const LOCAL_AUTHOR: &str = "local";

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub identity: IdentityResolver,
    pub source: atrund_bundle::BundleSource,
    pub pool: Arc<Pool>,
    /// Set in `at-rund dev`.
    pub local: Option<Arc<LocalBundle>>,
    /// Deno's version string, for describeRunner.
    pub runtime_version: String,
    /// The runner's keypair and the opened secrets of running bundles (docs/secrets.md).
    pub secrets: Arc<atrund_secrets::Opener>,
    /// `true` once shutdown has begun: readiness fails and new invocations get 503.
    pub draining: watch::Receiver<bool>,
    /// What the sandbox enforces, limit by limit, for describeRunner (docs/limits.md).
    pub enforcement: Arc<Vec<atrund_sandbox::Enforcement>>,
    /// Per-author request rates (`tenants.rate_*`).
    pub rates: Arc<atrund_policy::AuthorRates>,
    /// Per-author data dir measurements (`tenants.max_data_bytes_per_author`).
    pub data_quota: Arc<data_quota::DataQuota>,
}

/// The runner's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/xrpc/dev.atrund.describeRunner", get(describe_runner))
        .route(
            "/bundle/{author}/{name}/{version}/{endpoint}",
            any(invoke_root),
        )
        .route(
            "/bundle/{author}/{name}/{version}/{endpoint}/{*rest}",
            any(invoke_rest),
        )
        .fallback(|| async {
            ApiError::new(
                "NotFound",
                "no such route; bundles are served at /bundle/{did-or-handle}/{name}/{version}/{endpoint}",
            )
        })
        .with_state(state)
}

async fn readyz(State(st): State<AppState>) -> Response {
    if *st.draining.borrow() {
        ApiError::new("Draining", "this runner is shutting down").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn describe_runner(State(st): State<AppState>) -> Response {
    let c = &st.config;
    axum::Json(serde_json::json!({
        "software": { "name": "at-rund", "version": env!("CARGO_PKG_VERSION") },
        "isolation": st.pool.backend(),
        "runtimes": [ { "name": "deno", "version": st.runtime_version } ],
        // X25519, multibase (z + base58btc of 0xec01 + key): what `at-run secrets set` seals to.
        "publicKey": st.secrets.public_key().to_multibase(),
        "policy": { "authors": c.policy.describe() },
        "permissions": c.permissions,
        "limits": c.limits,
        "enforcement": *st.enforcement,
        "maxRequestBodyBytes": c.http.max_request_body_bytes,
        // Largest code blob this runner fetches (`at-run check` compares bundles with it).
        "maxBundleBytes": c.fetch.max_bundle_bytes,
        // Fair shares between authors (docs/configuration.md, [tenants]).
        "tenants": {
            "ratePerSec": c.tenants.rate_per_sec,
            "rateBurst": c.tenants.rate_burst,
            "negativeCacheSecs": c.tenants.negative_cache_secs,
            "identityRefreshMinSecs": c.tenants.identity_refresh_min_secs,
            "maxConnections": c.http.max_connections,
            "headerReadTimeoutMs": c.http.header_read_timeout_ms,
            "maxStoreBytesPerAuthor": c.tenants.max_store_bytes_per_author,
            "storeGcAfterSecs": c.tenants.store_gc_after_secs,
            "maxDataBytesPerAuthor": c.tenants.max_data_bytes_per_author,
        },
    }))
    .into_response()
}

type RouteParams = (String, String, String, String);

async fn invoke_root(
    State(st): State<AppState>,
    Path((author, name, version, endpoint)): Path<RouteParams>,
    req: Request,
) -> Response {
    invoke(st, author, name, version, endpoint, String::new(), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn invoke_rest(
    State(st): State<AppState>,
    Path((author, name, version, endpoint, rest)): Path<(String, String, String, String, String)>,
    req: Request,
) -> Response {
    invoke(st, author, name, version, endpoint, rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The admin routes, for a separate listener bound to loopback by default: `GET /admin/pool`
/// answers the pool's counters and instances as JSON. No authentication: never expose it.
pub fn admin_router(pool: Arc<Pool>) -> Router {
    Router::new().route(
        "/admin/pool",
        get(move || {
            let pool = pool.clone();
            async move { axum::Json(pool.stats()) }
        }),
    )
}

/// Keeps `instances` instances of the bundle `author/name/version` warm: resolves it through the
/// same pipeline as a request (identity, policy, verified fetch, permission caps) and hands the
/// pool a spec factory. Calling it again re-resolves, so a new `latest` gets warmed too; the
/// returned key lets the caller unpin the one it replaced.
pub async fn prewarm(
    st: &AppState,
    author: &str,
    name: &str,
    version: &str,
    instances: usize,
) -> Result<InstanceKey, ApiError> {
    let selector = VersionSelector::parse(version)?;
    let target = if author == LOCAL_AUTHOR && st.local.is_some() {
        local_target(st, name, &selector).await?
    } else {
        remote_target(st, author, name, &selector).await?
    };
    let limits =
        atrund_policy::check_manifest(&st.config.permissions, &st.config.limits, &target.manifest)?;
    let concurrency = usize::try_from(limits.concurrency).unwrap_or(usize::MAX);
    let key = target.key.clone();
    let st2 = st.clone();
    let factory: atrund_pool::SpecFactory = Arc::new(move || instance_spec(&st2, &target, &limits));
    st.pool
        .keep_warm(key.clone(), instances, concurrency, factory)
        .await?;
    Ok(key)
}

/// What runs for one invocation, once the pipeline has resolved it.
struct Target {
    key: InstanceKey,
    manifest: Manifest,
    code: PathBuf,
    author_dir: String,
    name: String,
    /// Opened secrets; their names are the instance's only `--allow-env`.
    secrets: Option<Arc<atrund_secrets::SecretEnv>>,
}

#[tracing::instrument(name = "invoke", skip_all, fields(%author, %name, %version, %endpoint))]
async fn invoke(
    st: AppState,
    author: String,
    name: String,
    version: String,
    endpoint: String,
    rest: String,
    req: Request,
) -> Result<Response, ApiError> {
    if *st.draining.borrow() {
        return Err(ApiError::new(
            "Draining",
            "this runner is shutting down and takes no new requests",
        ));
    }
    // Counts this request as in flight until it returns (its body is counted by the pool), so a
    // drain waits for it.
    let _ticket = st.pool.admit()?;
    let selector = VersionSelector::parse(&version)?;
    atrund_bundle::record::validate_name(&name)?;
    if !is_identifier(&endpoint) {
        return Err(ApiError::new(
            "EndpointInvalid",
            format!(
                "endpoint '{endpoint}' is not a valid endpoint name (letters, digits, _ and $)"
            ),
        ));
    }

    let author = author_segment(req.uri()).unwrap_or(author);
    let target = if author == LOCAL_AUTHOR && st.local.is_some() {
        local_target(&st, &name, &selector).await?
    } else {
        remote_target(&st, &author, &name, &selector).await?
    };
    let limits =
        atrund_policy::check_manifest(&st.config.permissions, &st.config.limits, &target.manifest)?;
    check_endpoint(&target.manifest, &endpoint, req.method())?;
    if !target.manifest.permissions.write.is_empty() {
        let dir = st.config.data_dir.join("data").join(&target.author_dir);
        st.data_quota
            .check(&dir, st.config.tenants.max_data_bytes_per_author)
            .await?;
    }

    let (parts, body) = req.into_parts();
    let max = st.config.http.max_request_body_bytes;
    let too_large = || {
        ApiError::new(
            "PayloadTooLarge",
            format!("request body is over this runner's limit of {max} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // Not read here: the body streams to the instance once the pool has given this request a
    // slot, so waiting requests hold no body bytes.
    let (body, cut) = body_limit::LimitedBody::new(body, max);
    let uri = rest_uri(&rest, &parts.uri)?;
    let mut inner = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(parts.version);
    if let Some(h) = inner.headers_mut() {
        *h = parts.headers;
    }
    let request = inner
        .body(Body::new(body))
        .map_err(|e| ApiError::new("InvalidRequest", e.to_string()))?;

    let spec = || instance_spec(&st, &target, &limits);
    let resp = st
        .pool
        .execute(
            target.key.clone(),
            usize::try_from(limits.concurrency).unwrap_or(usize::MAX),
            spec,
            Invocation { endpoint, request },
        )
        .await;
    match resp {
        Err(_) if cut.load(std::sync::atomic::Ordering::SeqCst) => Err(too_large()),
        other => Ok(other?),
    }
}

async fn remote_target(
    st: &AppState,
    author: &str,
    name: &str,
    selector: &VersionSelector,
) -> Result<Target, ApiError> {
    let id: AtIdentifier = author.parse()?;
    author_precheck(st, &id).await?;
    let (resolved, handle) = st.identity.resolve(&id).await?;
    atrund_policy::check_author(
        &st.config.policy,
        resolved.did.as_str(),
        handle.as_ref().map(|h| h.as_str()),
    )?;
    // Before any fetch or instance work for this author: their share of the runner.
    take_rate(st, resolved.did.as_str())?;
    let bundle = st.source.load(&resolved, name, selector).await?;
    // Secrets belong to the bundle name, not a version; their record CID is part of the instance
    // key so a changed secret reaches the next new instance.
    let did = resolved.did.as_str();
    let lookup = st.secrets.keys().lookup_keys();
    let (secrets_cid, secrets) = match st.source.load_secrets(&resolved, name, &lookup).await? {
        Some(s) => {
            let env = st.secrets.open(did, name, &s.cid, &s.record)?;
            (Some(s.cid.clone()), Some(env))
        }
        None => {
            st.secrets.forget(did, name);
            (None, None)
        }
    };
    Ok(Target {
        key: InstanceKey {
            author: bundle.author.clone(),
            bundle: bundle.record_cid.clone(),
            secrets: secrets_cid,
        },
        manifest: bundle.record.manifest.clone(),
        code: bundle.code_path.clone(),
        author_dir: safe_dir_name(&bundle.author),
        name: bundle.name.clone(),
        secrets,
    })
}

fn take_rate(st: &AppState, did: &str) -> Result<(), ApiError> {
    st.rates
        .take(did, std::time::Instant::now())
        .map_err(|e| ApiError {
            retry_after: Some(e.retry_after_secs),
            ..ApiError::new(e.code(), e.to_string())
        })
}

/// The allow-list, before anything the caller named is resolved (docs/security.md, "Who may
/// run"): an unlisted identifier passes only if an operator-listed entry of the other kind
/// resolves, verified, to it. Only listed entries are resolved here.
async fn author_precheck(st: &AppState, id: &AtIdentifier) -> Result<(), ApiError> {
    let (text, listed) = match id {
        AtIdentifier::Did(d) => (d.as_str(), None),
        AtIdentifier::Handle(h) => (h.as_str(), Some(h)),
    };
    let atrund_policy::Precheck::ViaListed(entries) =
        atrund_policy::precheck_author(&st.config.policy, text)?
    else {
        return Ok(());
    };
    for entry in entries {
        let matches = match listed {
            // The caller named an unlisted DID: is it a listed handle's?
            None => match entry.parse() {
                Ok(h) => st
                    .identity
                    .resolve_handle(&h)
                    .await
                    .is_ok_and(|did| did.as_str() == text),
                Err(_) => false,
            },
            // The caller named an unlisted handle: is it a listed DID's verified handle?
            Some(h) => match entry.parse() {
                Ok(did) => st
                    .identity
                    .resolve(&AtIdentifier::Did(did))
                    .await
                    .is_ok_and(|(_, verified)| verified.as_ref() == Some(h)),
                Err(_) => false,
            },
        };
        if matches {
            return Ok(());
        }
    }
    Err(atrund_policy::PolicyError::AuthorNotAllowed {
        did: text.to_string(),
        handle: None,
    }
    .into())
}

async fn local_target(
    st: &AppState,
    name: &str,
    selector: &VersionSelector,
) -> Result<Target, ApiError> {
    // No rate limit here: the local bundle of `at-rund dev` is the developer's own.
    let Some(local) = st.local.as_ref().filter(|l| l.name == name) else {
        return Err(ApiError::new(
            "BundleNotFound",
            format!("this dev runner serves only the local bundle, not '{name}'"),
        ));
    };
    if *selector != VersionSelector::Latest {
        return Err(ApiError::new(
            "VersionNotFound",
            "the local dev bundle has only the version 'latest'",
        ));
    }
    let snap = local.snapshot()?;
    if let Some(old) = snap.replaced {
        tracing::info!(bundle = %name, "code changed on disk; replacing the instance");
        st.pool
            .retire(&InstanceKey {
                author: LOCAL_AUTHOR.into(),
                bundle: old,
                secrets: None,
            })
            .await;
    }
    Ok(Target {
        key: InstanceKey {
            author: LOCAL_AUTHOR.into(),
            bundle: snap.key,
            secrets: None,
        },
        manifest: snap.manifest,
        code: local.entry.clone(),
        author_dir: LOCAL_AUTHOR.into(),
        name: local.name.clone(),
        secrets: None,
    })
}

/// A declared endpoint list is authoritative: undeclared names are 404, wrong methods 405.
fn check_endpoint(manifest: &Manifest, endpoint: &str, method: &Method) -> Result<(), ApiError> {
    let Some(decl) = manifest.endpoint(endpoint) else {
        return Err(ApiError::new(
            "EndpointNotFound",
            format!("this bundle declares no endpoint '{endpoint}'"),
        ));
    };
    match decl.method.as_deref() {
        None | Some("ANY") => Ok(()),
        Some(m) if m == method.as_str() => Ok(()),
        Some("GET") if method == Method::HEAD => Ok(()),
        Some(m) => Err(ApiError::new(
            "MethodNotAllowed",
            format!("endpoint '{endpoint}' accepts {m}, not {method}"),
        )),
    }
}

fn instance_spec(st: &AppState, t: &Target, limits: &EffectiveLimits) -> InstanceSpec {
    let data_root = &st.config.data_dir;
    let id = format!(
        "{}-{}",
        t.key.bundle.chars().rev().take(12).collect::<String>(),
        next_instance_number()
    );
    InstanceSpec {
        work_dir: data_root.join("run").join(&id),
        id,
        bundle_file: t.code.clone(),
        data_dir: data_root.join("data").join(&t.author_dir).join(&t.name),
        deno_dir: data_root.join("deno").join(&t.author_dir).join(&t.name),
        permissions: grants(&t.manifest.permissions),
        env: t
            .secrets
            .as_ref()
            .map(|s| s.to_env_pairs())
            .unwrap_or_default(),
        memory_mib: limits.memory_mib,
        request_timeout: Duration::from_millis(limits.timeout_ms),
        start_timeout: Duration::from_millis(st.config.pool.start_timeout_ms),
        limits: atrund_sandbox::ResourceLimits {
            pids: st.config.limits.pids,
            cpu_quota_percent: st.config.limits.cpu_quota_percent,
            cpu_budget: Some(Duration::from_millis(limits.cpu_ms)),
            open_files: st.config.limits.open_files,
            max_response_bytes: st.config.limits.max_response_bytes,
        },
    }
}

/// The manifest's permissions (already checked against the caps) as the sandbox enforces them.
fn grants(p: &atrund_bundle::Permissions) -> atrund_sandbox::Grants {
    let atrund_bundle::Permissions {
        net,
        read,
        write,
        run,
        ffi,
        sys,
    } = p.clone();
    atrund_sandbox::Grants {
        net,
        read,
        write,
        run,
        ffi,
        sys,
    }
}

fn next_instance_number() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The author segment of an invocation path. The route parameter is percent-decoded, which would
/// turn `did:web:localhost%3A8080` into a different DID, so the raw segment is used; but a DID
/// sent fully percent-encoded (`did%3Aplc%3Aabc`, `did%3Aweb%3Ahost%253A8080`, as URL builders
/// do) has no ':' at all and is decoded exactly once.
fn author_segment(uri: &Uri) -> Option<String> {
    let raw = raw_segment(uri, 2)?;
    if !raw.contains(':')
        && raw
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("did%3a"))
    {
        return percent_decode(&raw);
    }
    Some(raw)
}

/// `%XX` decoding; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `n`th `/`-separated segment of the URI's path, as sent (not percent-decoded).
fn raw_segment(uri: &Uri, n: usize) -> Option<String> {
    uri.path().split('/').nth(n).map(str::to_string)
}

/// The URI the bundle sees: the rest of the path after the endpoint, and the query string.
fn rest_uri(rest: &str, original: &Uri) -> Result<Uri, ApiError> {
    let mut s = format!("/{rest}");
    if let Some(q) = original.query() {
        s.push('?');
        s.push_str(q);
    }
    s.parse()
        .map_err(|_| ApiError::new("InvalidRequest", "the request path is not a valid URI"))
}

/// DIDs contain ':' and '%'; keep directory names to a portable set.
fn safe_dir_name(did: &str) -> String {
    did.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_uri_keeps_query() {
        let u: Uri = "/bundle/a/b/latest/e/x/y?q=1&r=2".parse().unwrap();
        assert_eq!(rest_uri("x/y", &u).unwrap(), "/x/y?q=1&r=2");
        let u: Uri = "/bundle/a/b/latest/e".parse().unwrap();
        assert_eq!(rest_uri("", &u).unwrap(), "/");
    }

    #[test]
    fn author_segment_keeps_percent_encoding() {
        let u: Uri = "/bundle/did:web:localhost%3A8080/b/latest/e"
            .parse()
            .unwrap();
        assert_eq!(raw_segment(&u, 2).unwrap(), "did:web:localhost%3A8080");
        assert_eq!(author_segment(&u).unwrap(), "did:web:localhost%3A8080");
        for (sent, meant) in [
            ("did%3Aplc%3Aabc", "did:plc:abc"),
            ("DID%3aplc%3aabc", "DID:plc:abc"),
            ("did%3Aweb%3Alocalhost%253A8080", "did:web:localhost%3A8080"),
            ("alice.test", "alice.test"),
        ] {
            let u: Uri = format!("/bundle/{sent}/b/latest/e").parse().unwrap();
            assert_eq!(author_segment(&u).unwrap(), meant, "{sent}");
        }
        // A broken escape is not guessed at: the segment is refused later as an identifier.
        let u: Uri = "/bundle/did%3Aplc%3/b/latest/e".parse().unwrap();
        assert_eq!(author_segment(&u), None);
    }

    #[test]
    fn endpoint_method_rules() {
        let m: Manifest = serde_json::from_str(
            r#"{"endpoints":[{"name":"g","method":"GET"},{"name":"a"},{"name":"p","method":"POST"}]}"#,
        )
        .unwrap();
        assert!(check_endpoint(&m, "g", &Method::GET).is_ok());
        assert!(check_endpoint(&m, "g", &Method::HEAD).is_ok());
        assert_eq!(
            check_endpoint(&m, "g", &Method::POST).unwrap_err().code,
            "MethodNotAllowed"
        );
        assert!(check_endpoint(&m, "a", &Method::DELETE).is_ok());
        assert_eq!(
            check_endpoint(&m, "zz", &Method::GET).unwrap_err().code,
            "EndpointNotFound"
        );
    }

    #[test]
    fn dir_names_are_portable() {
        assert_eq!(
            safe_dir_name("did:web:localhost%3A1234"),
            "did_web_localhost_3A1234"
        );
    }
}
