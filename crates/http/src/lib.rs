//! The runner's HTTP API: the invocation routes (by path, and by host under
//! `http.bundle_domain`), health and readiness, describeRunner and resolveBundleOrigin.
//!
//! Owns: routing (`router`; `service` sends invocations of the common shape past it, straight to
//! the pipeline), request parsing, the order of the pipeline steps (policy before resolution →
//! identity → policy → rate → fetch → permission caps → pool), body limits (`body_limit`), the
//! error → status mapping (`error`), request ids (`request_id`), what a request adds to the
//! metrics (counted here, defined in `atrund-metrics`) and its `Server-Timing` header
//! (`server_timing`), its trace spans and the `traceparent` its bundle sees (`trace`), authors'
//! logs over XRPC with service auth (`logs`), the header rules that keep bundles out of each
//! other's origin (`headers`, `origin`), which forwarded headers are believed (`forwarded`:
//! client address, scheme and host, from `http.trusted_proxies` only), per-author data shares (`data_quota`), the configuration
//! requests read (`live`), the accept loop (`serve`) and the admin listener's routes, among them
//! the status page (`status` keeps its recent history, `status_page` renders it). Must not touch: how identities are resolved, records verified or instances
//! isolated; it calls those crates.

mod body_limit;
pub mod cluster;
pub mod data_quota;
mod early_close;
pub mod error;
pub mod forwarded;
pub mod headers;
pub mod jobs;
mod live;
pub mod logs;
pub mod origin;
mod precheck;
pub mod request_id;
pub mod serve;
pub mod server_timing;
pub mod status;
mod status_page;
pub mod trace;
mod warm;

use atrund_api as api;
use atrund_errors::ErrorClass;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::Instrument;

use atrund_bundle::{Manifest, VersionSelector};
use atrund_config::Config;
use atrund_identity::{AtIdentifier, IdentityResolver, ResolvedDid};
use atrund_policy::EffectiveLimits;
use atrund_pool::{InstanceKey, Pool};
use atrund_sandbox::{InstanceSpec, Invocation};

pub use atrund_bundle::LocalBundle;
pub use data_quota::DataQuota;
pub use error::ApiError;
pub use live::LiveConfig;
pub use origin::OriginTable;

/// Author segment that names the local dev bundle.
pub const LOCAL_AUTHOR: &str = "local";

/// Everything a request handler needs, shared: axum clones the state for every request, so a
/// clone is one reference count (not one per component: that was ~2 % of a warm request).
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl AppState {
    pub fn new(shared: AppShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppShared;
    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppShared {
    /// The configuration, replaced on reload: read it through [`AppState::config`].
    pub live: LiveConfig,
    pub identity: IdentityResolver,
    pub source: atrund_bundle::BundleSource,
    pub pool: Arc<Pool>,
    /// Set in `at-rund dev`.
    pub local: Option<Arc<LocalBundle>>,
    /// Trust from the operator's social graph (`[trust]`), when on.
    pub graph: Option<atrund_trust::GraphTrust>,
    /// The runtimes offered and their version lines, for describeRunner.
    pub runtimes: Vec<api::Runtime>,
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
    /// Label → bundle, for host routes (docs/origins.md).
    pub origins: Arc<OriginTable>,
    /// Where requests are counted (docs/observability.md).
    pub metrics: atrund_metrics::Metrics,
    /// Counters the pool, egress proxy and identity caches keep, read when the status page is
    /// rendered (the same reading as the metrics' scrape).
    pub counters: Counters,
    /// Recent errors, cold starts and bundles, for the status page.
    pub status: Arc<status::StatusBoard>,
    /// Bundles' console output for their authors, and who may read it (`logs`).
    pub logs: Arc<logs::AuthorsLogs>,
    /// Kept bundle responses (`cache.enabled`, docs/cache.md).
    pub cache: Option<Arc<atrund_cache::ResponseCache>>,
    /// The background jobs' queue (`jobs.enabled`, docs/jobs.md).
    pub jobs: Option<Arc<jobs::Jobs>>,
    /// Routing to the runner each bundle belongs to (`state.route` with Redis, docs/cluster.md).
    pub cluster: Option<Arc<cluster::Forwarder>>,
    /// Routes resolved by earlier calls (`warm`): start it empty with `Default`.
    pub warm: WarmRouteMemo,
}

/// The routes resolved by earlier calls, which later calls of the same route reuse while they
/// stand (`warm`).
#[derive(Default)]
pub struct WarmRouteMemo(warm::WarmRoutes<Resolved>);

impl axum::extract::FromRef<AppState> for Arc<logs::AuthorsLogs> {
    fn from_ref(st: &AppState) -> Self {
        st.logs.clone()
    }
}

impl AppShared {
    /// The configuration in force now (a reload may replace it between two calls; take it once
    /// per decision that needs several keys to agree).
    pub fn config(&self) -> Arc<Config> {
        self.live.current()
    }
}
impl jobs::JobHost for AppState {
    fn queue(&self) -> Option<Arc<jobs::Jobs>> {
        self.jobs.clone()
    }

    fn config(&self) -> Arc<Config> {
        self.live.current()
    }

    fn draining(&self) -> watch::Receiver<bool> {
        self.0.draining.clone()
    }

    fn local_bundle(&self) -> Option<(String, String)> {
        self.local
            .as_ref()
            .map(|l| (LOCAL_AUTHOR.to_string(), l.name.clone()))
    }

    fn admit(&self) -> Result<atrund_pool::Ticket, ApiError> {
        Ok(self.pool.admit()?)
    }

    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        method: &str,
    ) -> Result<String, ApiError> {
        // `at-rund dev`: the folder's bundle has no author to sign tokens, and whoever can
        // reach the dev listener can already run its code; a token still names its issuer.
        if self.local.is_some() && !headers.contains_key(http::header::AUTHORIZATION) {
            return Ok(LOCAL_AUTHOR.to_string());
        }
        Ok(self.logs.authenticate(headers, method).await?.to_string())
    }

    async fn resolve(
        &self,
        author: &str,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<jobs::Resolved, ApiError> {
        Ok(job_target(self, author, name, selector).await?.1)
    }

    async fn run_task(
        &self,
        job: &atrund_jobs::Job,
        max_answer: usize,
    ) -> Result<(jobs::Resolved, bytes::Bytes), ApiError> {
        use http_body_util::BodyExt;
        let selector = if job.author == LOCAL_AUTHOR {
            // `at-rund dev`'s own crons: the folder's code as it is now.
            VersionSelector::Latest
        } else {
            VersionSelector::parse(&job.version)?
        };
        let (target, resolved) = job_target(self, &job.author, &job.bundle, &selector).await?;
        let config = self.config();
        let limits =
            atrund_policy::check_manifest(&config.permissions, &config.limits, &target.manifest)?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(atrund_sandbox::boxed_body(http_body_util::Full::new(
                bytes::Bytes::from(job.payload.clone()),
            )))
            .map_err(|e| ApiError::new(ErrorClass::Runner, "InvalidRequest", e.to_string()))?;
        let concurrency = usize::try_from(limits.concurrency).unwrap_or(usize::MAX);
        // The task's own timeout (checked against the cap with the manifest above).
        let task_timeout = target
            .manifest
            .tasks
            .iter()
            .find(|t| t.name == job.task)
            .and_then(|t| t.timeout_ms)
            .map(Duration::from_millis);
        let key = target.key.clone();
        let st = self.clone();
        let resp = self
            .pool
            .execute(
                key,
                concurrency,
                move || instance_spec(&st, &target, &limits),
                Invocation {
                    kind: atrund_sandbox::CallKind::Task,
                    endpoint: job.task.clone(),
                    request,
                    timeout: task_timeout,
                },
                |_| {},
                None,
            )
            .await?;
        let body = http_body_util::Limited::new(resp.into_body(), max_answer)
            .collect()
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorClass::Author,
                    "BundleFailed",
                    format!("the task's answer could not be read: {e}"),
                )
            })?
            .to_bytes();
        Ok((resolved, body))
    }
}

/// A job's bundle version: the local bundle in `at-rund dev`, else an allowed author's, as an
/// endpoint call resolves it.
async fn job_target(
    st: &AppState,
    author: &str,
    name: &str,
    selector: &VersionSelector,
) -> Result<(Target, jobs::Resolved), ApiError> {
    let (did, target) = if author == LOCAL_AUTHOR && st.local.is_some() {
        (
            LOCAL_AUTHOR.to_string(),
            local_target(st, name, selector).await?,
        )
    } else {
        let resolved = allowed_author(st, author).await?;
        let t = remote_bundle(st, &resolved, name, selector).await?;
        (resolved.did.to_string(), t)
    };
    let resolved = job_resolved(did, &target);
    Ok((target, resolved))
}

/// `target` as the jobs see it, with `did` its author (`local` for the dev bundle).
fn job_resolved(did: String, target: &Target) -> jobs::Resolved {
    jobs::Resolved {
        did,
        name: target.name.clone(),
        version: target.version.clone(),
        record: target.key.bundle.to_string(),
        tasks: target.manifest.tasks.clone(),
        crons: target.manifest.crons.clone(),
    }
}

/// Reads the components' counters (`AppState::counters`).
pub type Counters = Arc<dyn Fn() -> atrund_metrics::Snapshot + Send + Sync>;

/// The runner's routes. With `http.bundle_domain` set, a request whose host is
/// `{label}.{bundle_domain}` never reaches them: it belongs to that bundle, whatever its path
/// (so `/bundle/...` of another bundle cannot be served in a bundle's origin).
pub fn router(state: AppState) -> Router {
    let traced = state.config().otel.enabled;
    let live = state.live.clone();
    let mut routes = Router::new();
    if state.config().metrics.public {
        let m = state.metrics.clone();
        routes = routes.route("/metrics", get(move || metrics_text(m.clone())));
    }
    let routes = routes
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(&format!("/xrpc/{}", api::DESCRIBE_RUNNER), get(describe_runner))
        .route(
            "/xrpc/dev.atrund.resolveBundleOrigin",
            get(resolve_bundle_origin),
        )
        .route("/xrpc/dev.atrund.checkBundleHost", get(check_bundle_host))
        .route(&format!("/xrpc/{}", api::GET_LOGS), get(logs::get_logs))
        .route(&format!("/xrpc/{}", api::TAIL_LOGS), get(logs::tail_logs))
        .route(
            &format!("/xrpc/{}", jobs::ENQUEUE_JOB),
            axum::routing::post(jobs::enqueue::<AppState>),
        )
        .route(&format!("/xrpc/{}", jobs::GET_JOB), get(jobs::get_job::<AppState>))
        .route(&format!("/xrpc/{}", jobs::LIST_JOBS), get(jobs::list_jobs::<AppState>))
        .route(
            &format!("/xrpc/{}", jobs::CANCEL_JOB),
            axum::routing::post(jobs::cancel_job::<AppState>),
        )
        .route(
            &format!("/xrpc/{}", jobs::RETRY_JOB),
            axum::routing::post(jobs::retry_job::<AppState>),
        )
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
                ErrorClass::NotFound, "NotFound",
                "no such route; bundles are served at /bundle/{did-or-handle}/{name}/{version}/{endpoint}",
            )
        })
        .with_state(state.clone());
    let routes = if state.config().http.bundle_domain.is_some() {
        routes.layer(axum::middleware::from_fn_with_state(state, by_host))
    } else {
        routes
    };
    // Outermost, so bundle hosts, the fallback and every error body get the id too. Chosen once
    // here, so with traces off a request pays nothing for them.
    let routes = if traced {
        routes.layer(axum::middleware::from_fn(request_id::traced_layer))
    } else {
        routes.layer(axum::middleware::from_fn(request_id::layer))
    };
    // Outside even the request id: its span records the client, and routing by host must see
    // the host a trusted proxy named, never one a direct caller claims.
    routes.layer(axum::middleware::from_fn_with_state(live, forwarded::layer))
}

/// The main listener's service: [`router`], except that an invocation of the common shape
/// (`/bundle/{author}/{name}/{version}/{endpoint}`, no `%`, nothing after the endpoint) goes
/// straight to the pipeline with the same forwarding, request id and span as the router's layers.
/// That skips axum's routing, path extraction and two `from_fn` layers per call (each boxes a
/// future and clones a service), part of the hop's cost against nginx (docs/performance.md,
/// issue 14). Host routing (`http.bundle_domain`) comes first on that route as on the router.
#[derive(Clone)]
pub struct MainService {
    state: AppState,
    router: Router,
    traced: bool,
    /// The router has the `by_host` layer (`http.bundle_domain` was set when it was built).
    by_host: bool,
}

/// The main listener's service for `state` (see [`MainService`]).
pub fn service(state: AppState) -> MainService {
    let config = state.config();
    MainService {
        router: router(state.clone()),
        traced: config.otel.enabled,
        by_host: config.http.bundle_domain.is_some(),
        state,
    }
}

/// `[author, name, version, endpoint]` of a path the router would route to `invoke_root` with
/// exactly these values: four non-empty segments after `/bundle/` and no `%` (whose decoding is
/// the router's).
fn direct_route(path: &str) -> Option<[&str; 4]> {
    let rest = path.strip_prefix("/bundle/")?;
    if rest.contains('%') {
        return None;
    }
    let mut it = rest.split('/');
    let segments = [it.next()?, it.next()?, it.next()?, it.next()?];
    if it.next().is_some() || segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(segments)
}

impl tower::Service<hyper::Request<hyper::body::Incoming>> for MainService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let (req, ended) = early_close::track(req);
        let params = direct_route(req.uri().path()).map(|s| s.map(str::to_string));
        let Some([author, name, version, endpoint]) = params else {
            let router = self.router.clone();
            return Box::pin(async move {
                let mut resp = router.oneshot(req).await?;
                early_close::mark(&mut resp, ended.as_deref());
                Ok(resp)
            });
        };
        let st = self.state.clone();
        let (traced, by_host) = (self.traced, self.by_host);
        Box::pin(async move {
            let mut req = req;
            forwarded::apply(&st.live, &mut req);
            let call = Call {
                author,
                name,
                version,
                endpoint,
                rest: String::new(),
            };
            let resp = request_id::around(req, traced, |req| async move {
                let req = if by_host {
                    match host_dispatch(st.clone(), req).await {
                        Ok(resp) => return resp,
                        Err(req) => req,
                    }
                } else {
                    req
                };
                observed(st, RouteKind::Path, call, req).await
            })
            .await;
            let mut resp = resp;
            early_close::mark(&mut resp, ended.as_deref());
            Ok(resp)
        })
    }
}

/// `GET /metrics`: the Prometheus text format, or 404 when `metrics.enabled` is off.
async fn metrics_text(metrics: atrund_metrics::Metrics) -> Response {
    match metrics.encode() {
        Some(text) => {
            ([(header::CONTENT_TYPE, atrund_metrics::CONTENT_TYPE)], text).into_response()
        }
        None => ApiError::new(
            ErrorClass::NotFound,
            "MetricsDisabled",
            "metrics are off on this runner (metrics.enabled / ATRUND_METRICS_ENABLED)",
        )
        .into_response(),
    }
}

/// Sends requests for a bundle host to that bundle, everything else to the runner's routes.
async fn by_host(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match host_dispatch(st, req).await {
        Ok(resp) => resp,
        Err(req) => next.run(req).await,
    }
}

/// [`by_host`]'s decision: the response when the host is a bundle's (or no bundle's under the
/// domain), else the request back for the runner's own routes.
async fn host_dispatch(st: AppState, req: Request) -> Result<Response, Request> {
    let config = st.config();
    let Some(domain) = config.http.bundle_domain.as_deref() else {
        return Err(req);
    };
    // HTTP/1.1 names the host in `Host`; HTTP/2 in the `:authority` the URI carries.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_string);
    Ok(match origin::host_route(host.as_deref(), domain) {
        origin::HostRoute::Runner => return Err(req),
        origin::HostRoute::NotABundle => ApiError::new(
            ErrorClass::NotFound, "NotFound",
            format!("no bundle is served at this host; bundle hosts are one label under {domain}, such as hello-<hash>.{domain}"),
        )
        .into_response(),
        origin::HostRoute::Bundle { label, host } => invoke_host(st, label, host, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    })
}

/// `https://{label}.{bundle_domain}/[@{version}/]{endpoint}[/{rest}]`: the bundle of that label,
/// `latest` unless the first segment is `@` and a version.
async fn invoke_host(
    st: AppState,
    label: String,
    host: String,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(bundle) = st.origins.get(&label) else {
        return Err(ApiError::new(
            ErrorClass::NotFound, "BundleNotFound",
            format!(
                "this runner knows no bundle with the label '{label}'; labels are hashes, so the runner learns one when the bundle is first served here: call /xrpc/dev.atrund.resolveBundleOrigin?author=<did-or-handle>&name=<name> on the runner's main address, or open the bundle once by path"
            ),
        ));
    };
    let (version, endpoint, rest) = split_host_path(req.uri().path());
    if endpoint.is_empty() {
        return Err(ApiError::new(
            ErrorClass::NotFound, "EndpointNotFound",
            format!("name an endpoint: https://{host}/{{endpoint}}, or https://{host}/@{{version}}/{{endpoint}} for a pinned version"),
        ));
    }
    let call = Call {
        author: bundle.did,
        name: bundle.name,
        version: version.to_string(),
        endpoint: endpoint.to_string(),
        rest: rest.to_string(),
    };
    Ok(observed(st, RouteKind::Host { host }, call, req).await)
}

/// `/@1.2.0/greet/a/b` → (`1.2.0`, `greet`, `a/b`); `/greet` → (`latest`, `greet`, ``). Raw,
/// not percent-decoded: the endpoint and version are then validated as they were sent.
fn split_host_path(path: &str) -> (&str, &str, &str) {
    let p = path.strip_prefix('/').unwrap_or(path);
    let (version, p) = match p.strip_prefix('@') {
        Some(v) => v.split_once('/').unwrap_or((v, "")),
        None => ("latest", p),
    };
    let (endpoint, rest) = p.split_once('/').unwrap_or((p, ""));
    (version, endpoint, rest)
}

#[derive(Debug, serde::Deserialize)]
struct HostQuery {
    domain: String,
}

/// `GET /xrpc/dev.atrund.checkBundleHost?domain={host}`: 200 when `host` is the host of a bundle
/// this runner knows, else 404; a TLS proxy's on-demand certificate check (Caddy's `ask`), so
/// certificates are requested only for real bundle hosts. Only reads the label table.
async fn check_bundle_host(
    State(st): State<AppState>,
    q: Result<Query<HostQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let domain = bundle_domain(&st)?;
    let q = query(q, "give the host as ?domain=<label>.<bundle domain>")?;
    let origin::HostRoute::Bundle { label, host } = origin::host_route(Some(&q.domain), &domain)
    else {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "NotFound",
            format!("'{}' is not a bundle host under {domain}", q.domain),
        ));
    };
    let Some(bundle) = st.origins.get(&label) else {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "BundleNotFound",
            format!("this runner knows no bundle with the label '{label}'"),
        ));
    };
    Ok(origin_json(bundle, &label, &host))
}

/// The answer of both origin calls.
fn origin_json(bundle: origin::BundleRef, label: &str, host: &str) -> Response {
    axum::Json(serde_json::json!({
        "did": bundle.did,
        "name": bundle.name,
        "label": label,
        "host": host,
    }))
    .into_response()
}

/// A query string parsed as `T`, or `InvalidRequest` with `usage`.
fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    usage: &str,
) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|_| ApiError::new(ErrorClass::BadRequest, "InvalidRequest", usage.to_string()))
}

/// `http.bundle_domain`, or the error for a runner that serves bundles by path only.
fn bundle_domain(st: &AppState) -> Result<String, ApiError> {
    st.config().http.bundle_domain.clone().ok_or_else(|| {
        ApiError::new(
            ErrorClass::NotFound, "NotFound",
            "this runner serves bundles by path only (http.bundle_domain is unset); use /bundle/{did-or-handle}/{name}/{version}/{endpoint}",
        )
    })
}

#[derive(Debug, serde::Deserialize)]
struct OriginQuery {
    author: String,
    name: String,
}

/// `GET /xrpc/dev.atrund.resolveBundleOrigin?author=…&name=…`: the bundle's label and host under
/// `http.bundle_domain`. Resolves the author, checks the policy and loads (so verifies) the
/// bundle's latest release first, so the table only ever holds bundles that exist and may run.
async fn resolve_bundle_origin(
    State(st): State<AppState>,
    q: Result<Query<OriginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let domain = bundle_domain(&st)?;
    let q = query(
        q,
        "give the bundle as ?author=<did-or-handle>&name=<bundle name>",
    )?;
    atrund_bundle::record::validate_name(&q.name)?;
    let resolved = allowed_author(&st, &q.author).await?;
    let bundle = st
        .source
        .load(&resolved, &q.name, &VersionSelector::Latest)
        .await?;
    let label = st.origins.remember(&bundle.author, &bundle.name);
    let host = format!("{label}.{domain}");
    let bundle = origin::BundleRef {
        did: bundle.author.clone(),
        name: bundle.name.clone(),
    };
    Ok(origin_json(bundle, &label, &host))
}

async fn readyz(State(st): State<AppState>) -> Response {
    if *st.draining.borrow() {
        ApiError::new(
            ErrorClass::Unavailable,
            "Draining",
            "this runner is shutting down",
        )
        .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn describe_runner(State(st): State<AppState>) -> Response {
    axum::Json(describe(&st)).into_response()
}

/// Whose code runs: the lists, and the graph with the runner's view of it.
fn runner_policy(c: &Config, graph: Option<&atrund_trust::GraphTrust>) -> api::RunnerPolicy {
    let mut p = api::RunnerPolicy::from(&c.policy);
    p.deny = c.trust.deny.clone();
    if let Some(g) = graph {
        let stats = g.stats();
        let who = match g.mode() {
            atrund_trust::Mode::Follows => format!("accounts {} follows", g.operator()),
            atrund_trust::Mode::Mutuals => format!("mutual follows of {}", g.operator()),
        };
        p.authors = match c.policy.entries() {
            Some(list) if !list.is_empty() => format!("{who}; allow-list: {}", list.join(", ")),
            _ => who,
        };
        p.graph = Some(api::RunnerGraph {
            kind: g.mode().as_str().into(),
            operator: g.operator(),
            operator_did: stats.operator_did,
            follows: stats.follows,
            age_secs: stats.age_secs,
        });
    }
    p
}

/// What describeRunner answers, from the config and what the runner found at start.
fn describe(st: &AppState) -> api::DescribeRunner {
    let c = st.config();
    api::DescribeRunner {
        software: api::Software {
            name: "at-rund".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        isolation: st.pool.backend().into(),
        runtimes: st.runtimes.clone(),
        public_key: st.secrets.public_key().to_multibase(),
        policy: runner_policy(&c, st.graph.as_ref()),
        permissions: (&c.permissions).into(),
        limits: (&c.limits).into(),
        enforcement: st
            .enforcement
            .iter()
            .map(|e| api::EnforcementLine {
                limit: e.limit.into(),
                enforced: e.enforced,
                how: e.how.clone(),
            })
            .collect(),
        max_request_body_bytes: c.http.max_request_body_bytes,
        max_bundle_bytes: c.fetch.max_bundle_bytes,
        tenants: api::Tenants {
            rate_per_sec: c.tenants.rate_per_sec,
            rate_burst: c.tenants.rate_burst,
            negative_cache_secs: c.tenants.negative_cache_secs,
            identity_refresh_min_secs: c.tenants.identity_refresh_min_secs,
            max_connections: c.http.max_connections,
            header_read_timeout_ms: c.http.header_read_timeout_ms,
            max_store_bytes_per_author: c.tenants.max_store_bytes_per_author,
            store_gc_after_secs: c.tenants.store_gc_after_secs,
            max_data_bytes_per_author: c.tenants.max_data_bytes_per_author,
        },
        bundle_domain: c.http.bundle_domain.clone(),
        service_did: Some(st.logs.service_did.clone()),
        logs_kept: st.logs.store.is_some(),
        generic_sandboxes: st.pool.stats().generic.map(|g| api::GenericSandboxes {
            size: g.size,
            ready: g.ready,
            memory_budget_bytes: g.memory_budget_bytes,
            taken: g.taken,
            specialise_failures: g.specialise_failures,
            fallbacks: g.fallbacks.into_iter().collect(),
        }),
        local_bundle: st.local.as_ref().map(|l| l.name.clone()),
        health: Some(health(st)),
    }
}

/// describeRunner's `health`: the drain state as a stable status, uptime and load.
fn health(st: &AppState) -> api::Health {
    let pool = st.pool.stats();
    let jobs_unfinished = st.jobs.as_ref().and_then(|q| q.unfinished());
    api::Health {
        status: if *st.draining.borrow() {
            "draining"
        } else {
            "ok"
        }
        .into(),
        uptime_secs: st.status.started().elapsed().map_or(0, |d| d.as_secs()),
        instances: (pool.starting + pool.idle + pool.busy) as u64,
        requests_in_flight: pool.requests_in_flight as u64,
        jobs_unfinished,
    }
}

type RouteParams = (String, String, String, String);

/// What a request asks to run, from either route shape.
struct Call {
    /// DID or handle, as sent (or `local`).
    author: String,
    name: String,
    version: String,
    endpoint: String,
    /// The path after the endpoint, without its leading `/`.
    rest: String,
}

async fn invoke_root(
    State(st): State<AppState>,
    Path((author, name, version, endpoint)): Path<RouteParams>,
    req: Request,
) -> Response {
    let rest = String::new();
    invoke_path(st, (author, name, version, endpoint, rest), req).await
}

async fn invoke_rest(
    State(st): State<AppState>,
    Path(params): Path<(String, String, String, String, String)>,
    req: Request,
) -> Response {
    invoke_path(st, params, req).await
}

async fn invoke_path(
    st: AppState,
    (author, name, version, endpoint, rest): (String, String, String, String, String),
    req: Request,
) -> Response {
    let author = author_segment(req.uri()).unwrap_or(author);
    let call = Call {
        author,
        name,
        version,
        endpoint,
        rest,
    };
    observed(st, RouteKind::Path, call, req).await
}

/// What the pipeline learnt of a request on its way, for the metrics and the trace.
#[derive(Default)]
struct Seen {
    /// Set once the bundle and endpoint are known.
    series: Option<atrund_metrics::Series>,
    identity: Option<Duration>,
    fetch: Option<Duration>,
    /// The resolved bundle: its name and the pool's key of its version.
    bundle: Option<(String, InstanceKey)>,
    /// Traces are on (`otel.enabled`): the phases get spans and `resolved` is kept.
    traced: bool,
    /// `(author DID, bundle name, endpoint)`, for the trace; only when `traced`.
    resolved: Option<(String, String, String)>,
}

impl Seen {
    /// A span for one phase of the request when it is traced, else none (no cost).
    fn phase(&self, name: Phase) -> tracing::Span {
        if !self.traced {
            return tracing::Span::none();
        }
        match name {
            Phase::Identity => tracing::trace_span!(target: trace::TRACE_TARGET, "identity"),
            Phase::Fetch => tracing::trace_span!(target: trace::TRACE_TARGET, "fetch"),
        }
    }
}

/// The phases of the pipeline that get a span of their own here (`start` and `call` get theirs
/// in the pool).
enum Phase {
    Identity,
    Fetch,
}

/// Runs one invocation and counts it: by label set and status class, its duration to the
/// response head, a cold start it caused, and what its error counts as. With
/// `http.server_timing`, adds the `Server-Timing` header (`server_timing`).
async fn observed(st: AppState, route: RouteKind, call: Call, req: Request) -> Response {
    // A bundle that belongs to another runner of the cluster is served there (docs/cluster.md).
    let req = match &st.cluster {
        Some(f) => match f
            .route(&cluster::bundle_key(&call.author, &call.name), req)
            .await
        {
            Ok(answered) => return answered,
            Err(req) => req,
        },
        None => req,
    };
    let began = std::time::Instant::now();
    let metrics = st.metrics.clone();
    let timing = st.config().http.server_timing;
    let mut seen = Seen {
        traced: st.config().otel.enabled,
        ..Seen::default()
    };
    let route_template = match (&route, call.rest.is_empty()) {
        (RouteKind::Path, true) => "/bundle/{author}/{name}/{version}/{endpoint}",
        (RouteKind::Path, false) => "/bundle/{author}/{name}/{version}/{endpoint}/{*rest}",
        (RouteKind::Host { .. }, _) => "/[@{version}/]{endpoint}[/{*rest}]",
    };
    let board = st.status.clone();
    // Boxed: the pipeline's future is large, and moving it by value through the layers above
    // cost several per cent of a warm request in memmove (docs/performance.md, issue 14).
    let result = Box::pin(invoke(st, route, &call, req, &mut seen)).await;
    if seen.traced {
        let cold = matches!(&result, Ok(a) if a.started.is_some());
        trace::invocation(
            &tracing::Span::current(),
            &trace::Invocation {
                route: route_template,
                resolved: seen
                    .resolved
                    .as_ref()
                    .map(|(a, b, e)| (a.as_str(), b.as_str(), e.as_str())),
                cold,
            },
        );
    }
    let cold = |start| atrund_metrics::ColdStart {
        identity: seen.identity,
        fetch: seen.fetch,
        start,
    };
    // The same phases as the cold-start metrics: identity and fetch only for a request that
    // started (or failed to start) an instance, since a warm request's are cache look-ups.
    let cold_timing = |start, bundle| server_timing::Phases {
        identity: seen.identity,
        fetch: seen.fetch,
        start,
        bundle,
    };
    let resp = match result {
        Ok(Answered {
            mut resp,
            started,
            bundle,
        }) => {
            if let Some(start) = started {
                metrics.cold_start(true, cold(Some(start)));
                board.cold_start(cold(Some(start)));
            }
            if timing {
                let phases = match started {
                    Some(start) => cold_timing(Some(start), bundle),
                    None => server_timing::Phases {
                        bundle,
                        ..Default::default()
                    },
                };
                phases.append_to(resp.headers_mut());
            }
            resp
        }
        Err(e) => {
            let start_failed = matches!(e.code, "StartFailed" | "StartTimedOut");
            match e.tally {
                Some(error::Tally::Rejection(r)) => metrics.rejection(r),
                Some(error::Tally::Breach(l)) => metrics.breach(l),
                None if error::VERIFICATION_ERRORS.contains(&e.code) => {
                    metrics.verification_failure(e.code)
                }
                None if start_failed => metrics.cold_start(false, cold(None)),
                None => {}
            }
            let code = e.code;
            let mut resp = e.into_response();
            if timing && start_failed {
                cold_timing(None, None).append_to(resp.headers_mut());
            }
            board.error(status::ErrorEntry {
                at: std::time::SystemTime::now(),
                request_id: request_id::current()
                    .and_then(|v| v.to_str().ok().map(str::to_string))
                    .unwrap_or_default(),
                status: resp.status().as_u16(),
                code,
                author: call.author.clone(),
                name: call.name.clone(),
                endpoint: call.endpoint.clone(),
            });
            resp
        }
    };
    let elapsed = began.elapsed();
    if let Some((name, key)) = &seen.bundle {
        board.bundle(name, key, Some((&call.endpoint, resp.status().as_u16())));
    }
    let series = seen.series.unwrap_or_else(|| metrics.unresolved());
    metrics.request(&series, resp.status().as_u16(), elapsed);
    tracing::debug!(
        status = resp.status().as_u16(),
        micros = elapsed.as_micros() as u64,
        "request answered"
    );
    resp
}

/// How a call reached its bundle, which decides the header rules (`headers`).
#[derive(Debug)]
enum RouteKind {
    /// `/bundle/...` on the runner's shared origin.
    Path,
    /// `{label}.{bundle_domain}`: the bundle's own origin; `host` without port.
    Host { host: String },
}

/// The admin routes, for a separate listener bound to loopback by default: `GET /admin/pool`
/// answers the pool's counters and instances as JSON, `GET /metrics` the metrics, `GET /status`
/// an HTML page of all that for people (`status_page`). No authentication: never expose it.
pub fn admin_router(state: AppState) -> Router {
    let pool = state.pool.clone();
    let metrics = state.metrics.clone();
    Router::new()
        .route(
            "/admin/pool",
            get(move || {
                let pool = pool.clone();
                async move { axum::Json(pool.stats()) }
            }),
        )
        .route("/metrics", get(move || metrics_text(metrics.clone())))
        .route("/status", get(status_html))
        .with_state(state)
}

/// `GET /status` on the admin listener.
async fn status_html(State(st): State<AppState>) -> Response {
    let runner = describe(&st);
    let pool = st.pool.stats();
    let counters = (st.counters)();
    let recent = st.status.recent();
    let html = status_page::render(&status_page::Page {
        runner: &runner,
        listen: st.config().listen.to_string(),
        started: st.status.started(),
        now: std::time::SystemTime::now(),
        draining: *st.draining.borrow(),
        pool: &pool,
        counters: &counters,
        recent: &recent,
    });
    status_page::response(html)
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
        let t = remote_target(st, author, name, &selector, &mut Seen::default()).await?;
        remember_origin(st, &t);
        t
    };
    let config = st.config();
    let limits =
        atrund_policy::check_manifest(&config.permissions, &config.limits, &target.manifest)?;
    let concurrency = usize::try_from(limits.concurrency).unwrap_or(usize::MAX);
    let key = target.key.clone();
    st.status.bundle(&target.name, &key, None);
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
    /// The runtime the record (or the dev bundle) names.
    runtime: atrund_sandbox::RuntimeKind,
    manifest: ManifestRef,
    code: PathBuf,
    author_dir: String,
    name: String,
    /// The bundle's version (for the authors' logs).
    version: String,
    /// Opened secrets; their names are the instance's only `--allow-env`.
    secrets: Option<Arc<atrund_secrets::SecretEnv>>,
}

/// The called bundle's manifest, shared with where it was loaded: a warm request copies none.
enum ManifestRef {
    Loaded(Arc<atrund_bundle::LoadedBundle>),
    Local(Arc<Manifest>),
}

impl std::ops::Deref for ManifestRef {
    type Target = Manifest;
    fn deref(&self) -> &Manifest {
        match self {
            ManifestRef::Loaded(b) => &b.record.manifest,
            ManifestRef::Local(m) => m,
        }
    }
}

#[tracing::instrument(name = "invoke", skip_all, fields(author = %call.author, name = %call.name, version = %call.version, endpoint = %call.endpoint))]
async fn invoke(
    st: AppState,
    route: RouteKind,
    call: &Call,
    req: Request,
    seen: &mut Seen,
) -> Result<Answered, ApiError> {
    let Call { endpoint, rest, .. } = call;
    if *st.draining.borrow() {
        return Err(ApiError::new(
            ErrorClass::Unavailable,
            "Draining",
            "this runner is shutting down and takes no new requests",
        )
        .tallied(error::Tally::Rejection(atrund_metrics::Rejection::Draining)));
    }
    // Counts this request as in flight until it returns (its body is counted by the pool), so a
    // drain waits for it.
    let _ticket = st.pool.admit()?;
    if matches!(route, RouteKind::Path) && headers::is_service_worker_fetch(req.headers()) {
        return Err(ApiError::new(
            ErrorClass::Forbidden, "ServiceWorkerNotAllowed",
            "service workers cannot be registered on the runner's shared origin; serve the bundle on its own origin (http.bundle_domain, docs/origins.md)",
        ));
    }
    let config = st.config();
    let began = std::time::Instant::now();
    // An author's change, or a change in whom the graph admits, voids the warm routes.
    let generation = st.source.invalidations().generation().wrapping_add(
        st.graph
            .as_ref()
            .map_or(0, atrund_trust::GraphTrust::generation),
    );
    let memo_key = route_key(&route, call);
    let route_resolved = match warm_route(&st, &memo_key, &config, generation, began, seen)? {
        Some(r) => r,
        None => {
            // Boxed: only a cold route pays for its future, and the warm call's future stays
            // small (moving it was a measurable share of a warm call, docs/performance.md).
            let r = Arc::new(Box::pin(resolve(&st, call, &config, seen)).await?);
            // An author's route stands no longer than their `latest` is trusted.
            let max_age = if r.remote {
                Duration::from_secs(config.fetch.revalidate_secs)
            } else {
                warm::MAX_AGE
            };
            st.warm.0.put(
                memo_key,
                r.clone(),
                config.clone(),
                generation,
                began,
                max_age,
            );
            r
        }
    };
    let Resolved {
        target,
        limits,
        series,
        bundle,
        author_data,
        remote: _,
    } = &*route_resolved;
    let limits = *limits;
    seen.series = Some(series.clone());
    seen.bundle = Some((target.name.clone(), target.key.clone()));
    if seen.traced {
        seen.resolved = Some((
            target.key.author.to_string(),
            target.name.clone(),
            endpoint.clone(),
        ));
    }
    check_endpoint(&target.manifest, endpoint, req.method())?;
    if !target.manifest.permissions.write.is_empty() {
        st.data_quota
            .check(author_data, config.tenants.max_data_bytes_per_author)
            .await?;
    }

    let (mut parts, body) = req.into_parts();
    if matches!(route, RouteKind::Path) {
        let n = headers::strip_request_cookies(&mut parts.headers);
        if n > 0 {
            tracing::debug!(
                cookies = n,
                "Cookie header not forwarded: on a path route it holds the shared origin's cookies"
            );
        }
    }
    let max = config.http.max_request_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorClass::TooLarge,
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
    let uri = rest_uri(rest, &parts.uri)?;
    // The response cache, after every check a call passes: a kept answer goes only to callers
    // who could have made the call.
    let mut cached = None;
    if let Some(cache) = &st.cache {
        let host = parts.headers.get(header::HOST).map(|h| h.as_bytes());
        let key = cache_key(&route, host, &target.key, endpoint, &uri);
        match cache.lookup(
            &key,
            &parts.method,
            &parts.headers,
            std::time::Instant::now(),
        ) {
            atrund_cache::Lookup::Hit(served) => {
                return Ok(Answered {
                    resp: served_response(served),
                    started: None,
                    bundle: None,
                });
            }
            atrund_cache::Lookup::Forward { why, stale } => {
                // What storing the answer needs to know of the caller's request (its `Vary`
                // values, its own conditionals), before the cache's validators join it.
                let request = (why != atrund_cache::Forward::Method
                    && why != atrund_cache::Forward::Bypass)
                    .then(|| (parts.method.clone(), parts.headers.clone()));
                if let Some(e) = &stale {
                    for (name, value) in e.validators() {
                        parts.headers.insert(name, value);
                    }
                }
                cached = Some((cache.clone(), key, why, stale, request));
            }
        }
    }
    let mut inner = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(parts.version);
    if let Some(h) = inner.headers_mut() {
        *h = parts.headers;
    }
    let request = inner
        .body(atrund_sandbox::boxed_body(body))
        .map_err(|e| ApiError::new(ErrorClass::BadRequest, "InvalidRequest", e.to_string()))?;

    let traced = seen.traced;
    let key = target.key.clone();
    let concurrency = usize::try_from(limits.concurrency).unwrap_or(usize::MAX);
    let pool = st.pool.clone();
    // Adaptive warmth may start an instance of this version later, without a request.
    let start: atrund_pool::SpecFactory = {
        let target = target.clone();
        Arc::new(move || instance_spec(&st, &target, &limits))
    };
    let warmth = pool.adapts().then(|| atrund_pool::BundleRef {
        name: bundle.to_string(),
        start: start.clone(),
    });
    let resp = pool
        .execute(
            key,
            concurrency,
            || start(),
            Invocation {
                kind: atrund_sandbox::CallKind::Endpoint,
                endpoint: endpoint.clone(),
                request,
                timeout: None,
            },
            // In the `call` span: the bundle's traceparent names it. With traces off the
            // caller's trace headers pass through untouched, like every other header.
            |inv| {
                if traced {
                    trace::inject_current(inv.request.headers_mut());
                }
            },
            warmth,
        )
        .await;
    let mut resp = match resp {
        Err(_) if cut.load(std::sync::atomic::Ordering::SeqCst) => return Err(too_large()),
        other => other?,
    };
    let started = resp.body().started_instance();
    let bundle_time = resp.body().bundle_time();
    // Before the rewrite below may drop it: an answer that set a cookie is never kept.
    let set_cookie = resp.headers().contains_key(header::SET_COOKIE);
    match &route {
        RouteKind::Path => {
            let removed = headers::sandbox_path_response(resp.headers_mut());
            if removed.cookies > 0 {
                tracing::info!(%bundle, count = removed.cookies, "Set-Cookie dropped: a bundle served by path shares the runner's origin (docs/origins.md)");
            }
            if !removed.others.is_empty() {
                tracing::info!(%bundle, headers = ?removed.others, "origin-wide response headers dropped on a path route");
            }
        }
        RouteKind::Host { host } => {
            let n = headers::filter_host_cookies(resp.headers_mut(), host);
            if n > 0 {
                tracing::info!(%bundle, count = n, "Set-Cookie with a Domain other than the bundle's own host dropped (it would reach sibling bundles)");
            }
        }
    }
    if let Some((cache, key, why, stale, request)) = cached {
        let Some((method, req_headers)) = request else {
            resp.headers_mut().insert(
                atrund_cache::CACHE_STATUS,
                atrund_cache::forwarded_status(why, false),
            );
            return Ok(Answered {
                resp: resp.map(Body::new),
                started,
                bundle: Some(bundle_time),
            });
        };
        if let (Some(e), http::StatusCode::NOT_MODIFIED) = (&stale, resp.status()) {
            // Our validators: the kept response holds, refreshed by the 304's headers.
            let served = cache.revalidated(key, e, &method, &req_headers, resp.headers());
            return Ok(Answered {
                resp: served_response(served),
                started,
                bundle: Some(bundle_time),
            });
        }
        let (mut parts, body) = resp.into_parts();
        let admitted = if set_cookie {
            Err(body)
        } else {
            cache.admit(
                key,
                &method,
                &req_headers,
                parts.status,
                &parts.headers,
                body,
            )
        };
        let (body, stored) = match admitted {
            Ok(b) => (Body::new(b), true),
            Err(b) => (Body::new(b), false),
        };
        parts.headers.insert(
            atrund_cache::CACHE_STATUS,
            atrund_cache::forwarded_status(why, stored),
        );
        return Ok(Answered {
            resp: Response::from_parts(parts, body),
            started,
            bundle: Some(bundle_time),
        });
    }
    Ok(Answered {
        resp: resp.map(Body::new),
        started,
        bundle: Some(bundle_time),
    })
}

/// A route as resolution left it: what every call of it runs with until it is resolved again
/// ([`warm`] decides when).
struct Resolved {
    target: Arc<Target>,
    /// The manifest's limits, checked against the operator's caps.
    limits: EffectiveLimits,
    /// The metrics' label set of this route's endpoint.
    series: atrund_metrics::Series,
    /// `author/name`, for log lines and adaptive warmth.
    bundle: Arc<str>,
    /// The author's data volume (mounted).
    author_data: PathBuf,
    /// The author is not the dev runner's local bundle: each call takes one of their rate tokens.
    remote: bool,
}

/// The memo key of a call's route: its kind (and host), and the four parts as sent.
fn route_key(route: &RouteKind, call: &Call) -> warm::RouteKey {
    let (kind, host): (&[u8], &[u8]) = match route {
        RouteKind::Path => (b"path", b""),
        RouteKind::Host { host } => (b"host", host.as_bytes()),
    };
    warm::RouteKey::new(&[
        kind,
        host,
        call.author.as_bytes(),
        call.name.as_bytes(),
        call.version.as_bytes(),
        call.endpoint.as_bytes(),
    ])
}

/// The route's resolution kept from an earlier call, when it still stands: the memo's rules
/// ([`warm`]), and for the dev runner's bundle, files unchanged since. A remote author's call
/// takes its rate token here, as resolution would.
fn warm_route(
    st: &AppState,
    key: &warm::RouteKey,
    config: &Arc<Config>,
    generation: u64,
    now: std::time::Instant,
    seen: &mut Seen,
) -> Result<Option<Arc<Resolved>>, ApiError> {
    let Some(r) = st.warm.0.get(key, config, generation, now) else {
        return Ok(None);
    };
    if r.remote {
        take_rate(st, &r.target.key.author)?;
        seen.identity = Some(Duration::ZERO);
    } else {
        let current = st
            .local
            .as_ref()
            .is_some_and(|l| l.is_current(&r.target.key.bundle));
        if !current {
            st.warm.0.forget(key);
            return Ok(None);
        }
    }
    seen.fetch = Some(Duration::ZERO);
    Ok(Some(r))
}

/// Resolves a call's route: checks its parts, finds the bundle version (the dev runner's local
/// bundle, or the author's, verified), checks its manifest against the operator's caps and makes
/// sure the author's data volume is there.
async fn resolve(
    st: &AppState,
    call: &Call,
    config: &Config,
    seen: &mut Seen,
) -> Result<Resolved, ApiError> {
    let Call {
        author,
        name,
        version,
        endpoint,
        ..
    } = call;
    let selector = VersionSelector::parse(version)?;
    atrund_bundle::record::validate_name(name)?;
    if !is_identifier(endpoint) {
        return Err(ApiError::new(
            ErrorClass::BadRequest,
            "EndpointInvalid",
            format!(
                "endpoint '{endpoint}' is not a valid endpoint name (letters, digits, _ and $)"
            ),
        ));
    }
    let remote = !(author == LOCAL_AUTHOR && st.local.is_some());
    let target = if remote {
        let t = remote_target(st, author, name, &selector, seen).await?;
        remember_origin(st, &t);
        t
    } else {
        let t0 = std::time::Instant::now();
        let t = local_target(st, name, &selector)
            .instrument(seen.phase(Phase::Fetch))
            .await?;
        seen.fetch = Some(t0.elapsed());
        t
    };
    // Endpoint labels come only from the manifest's list, so callers cannot add label values.
    let declared = target.manifest.endpoint(endpoint).is_some();
    let series = st.metrics.series(
        &target.key.author,
        &target.name,
        if declared { endpoint } else { "undeclared" },
    );
    let limits =
        atrund_policy::check_manifest(&config.permissions, &config.limits, &target.manifest)?;
    let author_data = config.layout().author_data(&target.author_dir);
    // Every bundle: one that only reads must see the same files as one that writes.
    st.data_quota.ensure_volume(&author_data).await?;
    Ok(Resolved {
        bundle: format!("{}/{}", target.key.author, target.name).into(),
        target: Arc::new(target),
        limits,
        series,
        author_data,
        remote,
    })
}

/// The response cache's key of a call: the route kind (a path route's answer is rewritten for
/// the shared origin, a host route's is not), the `Host` the caller sent (a bundle may write it
/// into its answer: one caller's odd host must not reach another), the resolved version
/// (author, bundle record, secrets record: a new release, rollback or secret never meets an
/// older answer), the endpoint, and the path after it with the query.
fn cache_key(
    route: &RouteKind,
    host: Option<&[u8]>,
    key: &InstanceKey,
    endpoint: &str,
    uri: &Uri,
) -> String {
    let kind = match route {
        RouteKind::Path => "path",
        RouteKind::Host { .. } => "host",
    };
    // Written piece by piece, not with `format!`: it is made on every cacheable-method call.
    let secrets = key.secrets.as_deref().unwrap_or("-");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = String::with_capacity(160);
    out.push_str(kind);
    out.push(' ');
    // Header bytes are visible ASCII (or opaque bytes, kept apart by the escaping).
    if let Some(h) = host {
        match std::str::from_utf8(h) {
            Ok(s) if h.iter().all(|b| b.is_ascii_graphic()) => out.push_str(s),
            _ => out.extend(h.escape_ascii().map(char::from)),
        }
    }
    for part in [&*key.author, &*key.bundle, secrets, endpoint, path] {
        out.push(' ');
        out.push_str(part);
    }
    out
}

/// A response the cache answers with.
fn served_response(served: atrund_cache::Served) -> Response {
    let mut resp = Response::new(Body::from(served.body));
    *resp.status_mut() = served.status;
    *resp.headers_mut() = served.headers;
    resp
}

/// A bundle's response, with what its request's timing needs.
struct Answered {
    resp: Response,
    /// The instance start this request waited for as its starter (a cold start).
    started: Option<Duration>,
    /// From the call into the instance until its response head (`None`: answered from the
    /// cache).
    bundle: Option<Duration>,
}

/// Notes the label of a bundle the pipeline has just resolved, so its host route works.
fn remember_origin(st: &AppState, t: &Target) {
    if st.config().http.bundle_domain.is_some() {
        st.origins.remember(&t.key.author, &t.name);
    }
}

async fn remote_target(
    st: &AppState,
    author: &str,
    name: &str,
    selector: &VersionSelector,
    seen: &mut Seen,
) -> Result<Target, ApiError> {
    let t0 = std::time::Instant::now();
    let resolved = allowed_author(st, author)
        .instrument(seen.phase(Phase::Identity))
        .await?;
    let t1 = std::time::Instant::now();
    seen.identity = Some(t1 - t0);
    let fetched = remote_bundle(st, &resolved, name, selector)
        .instrument(seen.phase(Phase::Fetch))
        .await;
    seen.fetch = Some(t1.elapsed());
    fetched
}

/// The verified bundle and its opened secrets, for an author who may run here.
async fn remote_bundle(
    st: &AppState,
    resolved: &Arc<ResolvedDid>,
    name: &str,
    selector: &VersionSelector,
) -> Result<Target, ApiError> {
    let bundle = st.source.load(resolved, name, selector).await?;
    // Secrets belong to the bundle name, not a version; their record CID is part of the instance
    // key so a changed secret reaches the next new instance.
    let did = resolved.did.as_str();
    let lookup = st.secrets.keys().lookup_keys();
    let (secrets_cid, secrets) = match st.source.load_secrets(resolved, name, &lookup).await? {
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
        runtime: runtime_of(&bundle.record.runtime)?,
        key: InstanceKey {
            author: bundle.author.as_str().into(),
            bundle: bundle.record_cid.as_str().into(),
            secrets: secrets_cid.map(Into::into),
        },
        code: bundle.code_path.clone(),
        author_dir: safe_dir_name(&bundle.author),
        name: bundle.name.clone(),
        version: bundle.version.clone(),
        secrets,
        manifest: ManifestRef::Loaded(bundle),
    })
}

/// The runtime a record names (records are validated against the same list, so an unknown name
/// here means a record that skipped validation: refused, never run on a default).
fn runtime_of(name: &str) -> Result<atrund_sandbox::RuntimeKind, ApiError> {
    atrund_sandbox::RuntimeKind::parse(name).ok_or_else(|| {
        ApiError::new(
            ErrorClass::Author,
            "BundleInvalid",
            format!("the bundle names runtime '{name}', which this runner does not know"),
        )
    })
}

fn take_rate(st: &AppState, did: &str) -> Result<(), ApiError> {
    st.rates
        .take(did, std::time::Instant::now())
        .map_err(ApiError::from)
}

/// Checks the allow-list before resolving, resolves the DID or handle, checks the author policy
/// and takes one of the author's rate tokens, before anything of theirs is fetched.
async fn allowed_author(st: &AppState, author: &str) -> Result<Arc<ResolvedDid>, ApiError> {
    let id: AtIdentifier = author.parse()?;
    let config = st.config();
    let gate = precheck::Gate {
        policy: &config.policy,
        deny: &config.trust.deny,
        graph: st.graph.as_ref(),
    };
    precheck::author_precheck(&gate, &st.identity, &id).await?;
    let (resolved, handle) = st.identity.resolve(&id).await?;
    precheck::author_admitted(&gate, &resolved, handle.as_ref().map(|h| h.as_str())).await?;
    // Before any fetch or instance work for this author: their share of the runner.
    take_rate(st, resolved.did.as_str())?;
    Ok(resolved)
}

async fn local_target(
    st: &AppState,
    name: &str,
    selector: &VersionSelector,
) -> Result<Target, ApiError> {
    // No rate limit here: the local bundle of `at-rund dev` is the developer's own.
    let Some(local) = st.local.as_ref().filter(|l| l.name == name) else {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "BundleNotFound",
            format!("this dev runner serves only the local bundle, not '{name}'"),
        ));
    };
    if *selector != VersionSelector::Latest {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "VersionNotFound",
            "the local dev bundle has only the version 'latest'",
        ));
    }
    let snap = local.snapshot()?;
    if let Some(old) = snap.replaced {
        tracing::info!(bundle = %name, "code changed on disk; replacing the instance");
        remove_staged_code(local, &old);
        st.pool
            .retire(&InstanceKey {
                author: LOCAL_AUTHOR.into(),
                bundle: old.as_str().into(),
                secrets: None,
            })
            .await;
    }
    let code = code_for_instances(local, &snap.key)?;
    Ok(Target {
        runtime: runtime_of(&local.runtime)?,
        key: InstanceKey {
            author: LOCAL_AUTHOR.into(),
            bundle: snap.key.as_str().into(),
            secrets: None,
        },
        code,
        manifest: ManifestRef::Local(snap.manifest),
        author_dir: LOCAL_AUTHOR.into(),
        name: local.name.clone(),
        version: "local".into(),
        secrets: None,
    })
}

/// The dev bundle's code as its instances read it: `entry` itself, or, when the binary chose
/// staging (`LocalBundle::staged`: the instances' uid cannot read the folder), a copy in that
/// dir named by the code's key.
fn code_for_instances(local: &LocalBundle, key: &str) -> Result<std::path::PathBuf, ApiError> {
    let Some(dir) = &local.staged else {
        return Ok(local.entry.clone());
    };
    atrund_sandbox::stage_file(&local.entry, dir, key, 0o644).map_err(|e| {
        tracing::warn!(entry = %local.entry.display(), error = %e, "cannot copy the dev bundle's code where the instances' user can read it");
        ApiError::new(
            ErrorClass::Author,
            "BundleInvalid",
            "the bundle's code cannot be read by the instances' user and no copy could be made; move the folder where that user can read it",
        )
    })
}

/// Removes the staged copies of a dev bundle's replaced code.
fn remove_staged_code(local: &LocalBundle, key: &str) {
    let Some(Ok(entries)) = local.staged.as_ref().map(std::fs::read_dir) else {
        return;
    };
    let prefix = format!("{key}-");
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A declared endpoint list is authoritative: undeclared names are 404, wrong methods 405.
fn check_endpoint(manifest: &Manifest, endpoint: &str, method: &Method) -> Result<(), ApiError> {
    let Some(decl) = manifest.endpoint(endpoint) else {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "EndpointNotFound",
            format!("this bundle declares no endpoint '{endpoint}'"),
        ));
    };
    match decl.method.as_deref() {
        None | Some("ANY") => Ok(()),
        Some(m) if m == method.as_str() => Ok(()),
        Some("GET") if method == Method::HEAD => Ok(()),
        Some(m) => Err(ApiError::new(
            ErrorClass::MethodNotAllowed,
            "MethodNotAllowed",
            format!("endpoint '{endpoint}' accepts {m}, not {method}"),
        )),
    }
}

fn instance_spec(st: &AppState, t: &Target, limits: &EffectiveLimits) -> InstanceSpec {
    let config = st.config();
    let layout = config.layout();
    let id = format!(
        "{}-{}",
        t.key.bundle.chars().rev().take(12).collect::<String>(),
        next_instance_number()
    );
    let output = output_sink(st, t, &id);
    let runner_calls = jobs::instance_calls(st, job_resolved(t.key.author.to_string(), t));
    InstanceSpec {
        work_dir: layout.instance_work(&id),
        id,
        runtime: t.runtime,
        bundle_file: t.code.clone(),
        data_dir: layout.bundle_data(&t.author_dir, &t.name),
        deno_dir: layout.bundle_deno(&t.author_dir, &t.name),
        permissions: grants(&t.manifest.permissions),
        env: t
            .secrets
            .as_ref()
            .map(|s| s.to_env_pairs())
            .unwrap_or_default(),
        memory_mib: limits.memory_mib,
        request_timeout: Duration::from_millis(limits.timeout_ms),
        start_timeout: Duration::from_millis(config.pool.start_timeout_ms),
        limits: atrund_sandbox::ResourceLimits {
            pids: config.limits.pids,
            cpu_quota_percent: config.limits.cpu_quota_percent,
            cpu_budget: Some(Duration::from_millis(limits.cpu_ms)),
            open_files: config.limits.open_files,
            max_response_bytes: config.limits.max_response_bytes,
            max_file_bytes: config.limits.max_file_bytes,
        },
        output,
        runner_calls,
    }
}

/// Where the instance's console lines go besides the runner's log: the bundle's ring of the
/// authors' logs, when the runner keeps them.
fn output_sink(st: &AppState, t: &Target, instance: &str) -> Option<atrund_sandbox::OutputSink> {
    let store = st.logs.store.clone()?;
    let bundle = atrund_logs::BundleId {
        author: t.key.author.to_string(),
        name: t.name.clone(),
    };
    let origin = atrund_logs::Origin {
        instance: instance.to_string(),
        version: t.version.clone(),
    };
    Some(Arc::new(
        move |stream: atrund_sandbox::OutputStream, line: &str| {
            store.push(&bundle, &origin, stream.as_str(), line);
        },
    ))
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
    if rest.is_empty() && original.query().is_none() {
        // The common call: nothing after the endpoint, no query.
        return Ok(Uri::from_static("/"));
    }
    let mut s = format!("/{rest}");
    if let Some(q) = original.query() {
        s.push('?');
        s.push_str(q);
    }
    s.parse().map_err(|_| {
        ApiError::new(
            ErrorClass::BadRequest,
            "InvalidRequest",
            "the request path is not a valid URI",
        )
    })
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
    fn cache_keys_keep_their_format() {
        // The disk tier keeps keys across restarts: the format must not move.
        let key = InstanceKey {
            author: "did:plc:abc".into(),
            bundle: "bafyrec".into(),
            secrets: None,
        };
        let uri: Uri = "/x/y?q=1".parse().unwrap();
        assert_eq!(
            cache_key(&RouteKind::Path, Some(b"h.example:80"), &key, "greet", &uri),
            "path h.example:80 did:plc:abc bafyrec - greet /x/y?q=1"
        );
        let odd = cache_key(&RouteKind::Path, Some(b"a\x01b c"), &key, "e", &uri);
        // As `escape_ascii` writes it: the control byte escaped, the space kept.
        assert_eq!(
            odd,
            format!(
                "path {} did:plc:abc bafyrec - e /x/y?q=1",
                b"a\x01b c".escape_ascii()
            )
        );
        assert_eq!(odd, "path a\\x01b c did:plc:abc bafyrec - e /x/y?q=1");
        let key = InstanceKey {
            secrets: Some("bafysec".into()),
            ..key
        };
        let root: Uri = "/".parse().unwrap();
        assert_eq!(
            cache_key(
                &RouteKind::Host { host: "x".into() },
                None,
                &key,
                "e",
                &root
            ),
            "host  did:plc:abc bafyrec bafysec e /"
        );
    }

    #[test]
    fn rest_uri_keeps_query() {
        let u: Uri = "/bundle/a/b/latest/e/x/y?q=1&r=2".parse().unwrap();
        assert_eq!(rest_uri("x/y", &u).unwrap(), "/x/y?q=1&r=2");
        let u: Uri = "/bundle/a/b/latest/e".parse().unwrap();
        assert_eq!(rest_uri("", &u).unwrap(), "/");
    }

    #[test]
    fn direct_route_takes_only_what_the_router_would_route_as_is() {
        assert_eq!(
            direct_route("/bundle/did:plc:abc/hello/latest/greet"),
            Some(["did:plc:abc", "hello", "latest", "greet"])
        );
        for other in [
            "/bundle/a/b/c",
            "/bundle/a/b/c/d/",
            "/bundle/a/b/c/d/rest",
            "/bundle/a//c/d",
            "/bundle/did%3Aplc%3Aabc/b/c/d",
            "/bundlex/a/b/c/d",
            "/healthz",
        ] {
            assert_eq!(direct_route(other), None, "{other}");
        }
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
    fn host_paths_split_into_version_endpoint_rest() {
        assert_eq!(split_host_path("/greet"), ("latest", "greet", ""));
        assert_eq!(split_host_path("/greet/a/b"), ("latest", "greet", "a/b"));
        assert_eq!(split_host_path("/@1.2.0/greet"), ("1.2.0", "greet", ""));
        assert_eq!(
            split_host_path("/@1.2.0/greet/x%20y"),
            ("1.2.0", "greet", "x%20y")
        );
        assert_eq!(split_host_path("/@1.2.0"), ("1.2.0", "", ""));
        assert_eq!(split_host_path("/"), ("latest", "", ""));
    }

    /// What a warm request does in addition with traces off, timed under a subscriber like the
    /// runner's (an `info` filter and a formatter): the identity and fetch phase wrappers of the
    /// pipeline, the pool's `call` span callsite check, its scope (where the `traceparent` hook
    /// runs) and its wrapper around the call (docs/performance.md).
    #[test]
    #[ignore = "a measurement: cargo test --release -p atrund-http -- --ignored --nocapture traces_off_cost"]
    fn traces_off_cost() {
        let sub = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(std::io::sink)
            .finish();
        let n = 2_000_000u32;
        // Global, as in the runner: with only a scoped one `tracing` also forwards disabled
        // spans to `log`, which the runner never does.
        let _ = tracing::subscriber::set_global_default(sub);
        let (with, without) = {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let seen = Seen::default();
            // The same awaits without the spans, as the pipeline made them before.
            let t = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    std::hint::black_box(async {}).await;
                    std::hint::black_box(async {}).await;
                    std::hint::black_box(seen.traced);
                    std::hint::black_box(async {}).await;
                }
            });
            let without = t.elapsed() / n;
            let t = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    std::hint::black_box(async {})
                        .instrument(seen.phase(Phase::Identity))
                        .await;
                    std::hint::black_box(async {})
                        .instrument(seen.phase(Phase::Fetch))
                        .await;
                    let span = tracing::trace_span!(target: trace::TRACE_TARGET, "call");
                    span.in_scope(|| std::hint::black_box(seen.traced));
                    std::hint::black_box(async {}).instrument(span).await;
                }
            });
            (t.elapsed() / n, without)
        };
        let added = with.saturating_sub(without);
        println!("traces off: {with:?} per request with the spans' code, {without:?} without: {added:?} added");
        assert!(added < Duration::from_micros(2), "{added:?}");
    }

    #[test]
    fn dir_names_are_portable() {
        assert_eq!(
            safe_dir_name("did:web:localhost%3A1234"),
            "did_web_localhost_3A1234"
        );
    }
}
