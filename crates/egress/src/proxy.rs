//! The HTTP/1.1 proxy server: token check, policy check, upstream connect, tunnel or forward,
//! decision logs and counters.
//!
//! A token alone is a bearer secret. Where the runner knows which instance made each connection
//! to the proxy (the `none` backend's connect gate makes it; the container backend's forwarder
//! makes it), the instance is registered with `register_announced` and its token counts only on
//! connections whose source address was announced for it (`SourceAnnouncer`): a token read from
//! another process's environment is then useless from anywhere else.
//!
//! Owns: listeners, the token registry, announced sources, per-instance connection counts. Must
//! not: resolve or
//! connect other than through `Resolve`/`Connect`, or connect to an address `AddressPolicy` has
//! not returned.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::local::{self, HostAddrs};
use crate::net::{Connect, DirectConnector};
use crate::rule::{self, Host};
use crate::runner_calls::{self, json_error, RunnerCall, MAX_RUNNER_CALL_BYTES};
use crate::tunnel::{self, Counters};
use crate::{EgressConfig, EgressError, EgressPolicy};
use atrund_netpolicy::{AddressPolicy, Resolve, SystemResolver};

type Body = BoxBody<Bytes, hyper::Error>;

/// Counters since the proxy started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressStats {
    /// Upstream connections opened (tunnels + forwarded requests).
    pub allowed: u64,
    /// Refusals and failures by reason (`EgressError::reason`, e.g. `loopback`, `host_not_listed`).
    pub denied: BTreeMap<String, u64>,
    /// Bytes from instances to destinations (tunnel payload, forwarded request bodies).
    pub bytes_up: u64,
    /// Bytes from destinations to instances.
    pub bytes_down: u64,
    /// Upstream connections open now.
    pub open: u64,
}

#[derive(Default)]
struct Stats {
    allowed: AtomicU64,
    denied: Mutex<BTreeMap<&'static str, u64>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    open: AtomicU64,
}

struct Instance {
    policy: EgressPolicy,
    /// Whether the token counts only on announced connections (`register_announced`).
    announced_only: bool,
    open: AtomicUsize,
    /// Fired when the registration is dropped: its tunnels and forwards close.
    gone: CancellationToken,
}

struct Shared {
    cfg: EgressConfig,
    addrs: AddressPolicy,
    resolver: Arc<dyn Resolve>,
    connector: Arc<dyn Connect>,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    /// Client addresses of connections an instance's runner-side connector made, by instance.
    sources: Mutex<HashMap<SocketAddr, Source>>,
    /// Numbers announcements, so a connection that ends removes its own only.
    next_source: AtomicU64,
    listening: Mutex<Vec<SocketAddr>>,
    /// The runner's other listeners (`EgressProxy::protect`).
    protected: Mutex<Vec<SocketAddr>>,
    host: HostAddrs,
    stats: Stats,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (single inserts/removes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running proxy. Dropping it stops the listeners and closes every connection.
pub struct EgressProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    _main: Option<Listening>,
}

/// One extra listener of the proxy (`EgressProxy::serve_on`); dropping it stops accepting there.
/// Connections already accepted stay until they end, the instance goes or the proxy stops.
pub struct Listening {
    shared: Arc<Shared>,
    addr: Option<SocketAddr>,
    stop: CancellationToken,
}

impl Listening {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(a) = self.addr {
            let mut l = lock(&self.shared.listening);
            if let Some(i) = l.iter().position(|x| *x == a) {
                l.remove(i);
            }
        }
    }
}

/// An instance's access to the proxy; dropping it unregisters the token and closes the
/// instance's open tunnels.
pub struct Registration {
    shared: Arc<Shared>,
    token: String,
    instance: Arc<Instance>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = lock(&self.shared.instances);
        if map
            .get(&self.token)
            .is_some_and(|i| Arc::ptr_eq(i, &self.instance))
        {
            map.remove(&self.token);
        }
        drop(map);
        lock(&self.shared.sources).retain(|_, s| !s.is(&self.instance));
        self.instance.gone.cancel();
    }
}

impl Registration {
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The handle through which the runner-side connector announces this instance's
    /// connections (meaningful for `register_announced` registrations).
    pub fn announcer(&self) -> SourceAnnouncer {
        SourceAnnouncer {
            shared: Arc::downgrade(&self.shared),
            instance: Arc::downgrade(&self.instance),
        }
    }
}

/// One announced client address: which instance's connector made the connection.
struct Source {
    instance: std::sync::Weak<Instance>,
    serial: u64,
}

impl Source {
    fn is(&self, instance: &Arc<Instance>) -> bool {
        std::ptr::eq(self.instance.as_ptr(), Arc::as_ptr(instance))
    }
}

/// Announces the connections one instance makes to the proxy: call `announce` with the
/// connection's local address after `connect` and before the instance can send on it. Holds no
/// strong reference: announcing for a dropped registration or proxy does nothing.
#[derive(Clone)]
pub struct SourceAnnouncer {
    shared: std::sync::Weak<Shared>,
    instance: std::sync::Weak<Instance>,
}

impl std::fmt::Debug for SourceAnnouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAnnouncer").finish_non_exhaustive()
    }
}

impl SourceAnnouncer {
    /// `local`: the client side of a connection to the proxy that this instance's connector made.
    /// A later announcement of the same address (a reused port) replaces this one.
    pub fn announce(&self, local: SocketAddr) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if self.instance.strong_count() == 0 {
            return;
        }
        let serial = shared.next_source.fetch_add(1, Relaxed) + 1;
        lock(&shared.sources).insert(
            local,
            Source {
                instance: self.instance.clone(),
                serial,
            },
        );
    }

    /// Withdraws `local` if this instance announced it (its connect failed).
    pub fn withdraw(&self, local: SocketAddr) {
        let (Some(shared), Some(instance)) = (self.shared.upgrade(), self.instance.upgrade())
        else {
            return;
        };
        let mut map = lock(&shared.sources);
        if map.get(&local).is_some_and(|s| s.is(&instance)) {
            map.remove(&local);
        }
    }
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl EgressProxy {
    /// Listens on `cfg.listen` with the system resolver and plain TCP connects.
    pub async fn start(cfg: EgressConfig) -> Result<Self, EgressError> {
        Self::start_with(cfg, Arc::new(SystemResolver), Arc::new(DirectConnector)).await
    }

    /// Listens on `cfg.listen` with the given resolver and connector.
    pub async fn start_with(
        cfg: EgressConfig,
        resolver: Arc<dyn Resolve>,
        connector: Arc<dyn Connect>,
    ) -> Result<Self, EgressError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| EgressError::BindFailed(cfg.listen.to_string(), e.to_string()))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| EgressError::BindFailed(cfg.listen.to_string(), e.to_string()))?;
        let shared = Arc::new(Shared {
            addrs: AddressPolicy {
                allow_cidrs: cfg.allow_cidrs.clone(),
                deny_cidrs: cfg.deny_cidrs.clone(),
                ..AddressPolicy::default()
            },
            cfg,
            resolver,
            connector,
            instances: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            next_source: AtomicU64::new(0),
            listening: Mutex::new(Vec::new()),
            protected: Mutex::new(Vec::new()),
            host: HostAddrs::default(),
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
        });
        let mut proxy = EgressProxy {
            shared,
            local_addr,
            _main: None,
        };
        proxy._main = Some(proxy.serve_on(listener));
        Ok(proxy)
    }

    /// The address of the first listener (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on one more listener too (e.g. the host side of one instance's veth). It stops
    /// when the returned `Listening` is dropped, or with the proxy.
    pub fn serve_on(&self, listener: TcpListener) -> Listening {
        let addr = listener.local_addr().ok();
        if let Some(a) = addr {
            lock(&self.shared.listening).push(a);
        }
        let stop = self.shared.shutdown.child_token();
        let shared = self.shared.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop2.cancelled() => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(serve_conn(shared.clone(), stream, peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(target: "atrund::egress", error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Listening {
            shared: self.shared.clone(),
            addr,
            stop,
        }
    }

    /// Refuses `addr`, one of the runner's own listeners (its HTTP API, the admin endpoint), as a
    /// destination (`runner_itself`), whatever `allow_cidrs` opens; a wildcard address stands
    /// for that port on every address of this host.
    pub fn protect(&self, addr: SocketAddr) {
        lock(&self.shared.protected).push(addr);
    }

    /// Lets requests carrying `token` through under `policy` until the `Registration` is dropped.
    pub fn register(
        &self,
        token: impl Into<String>,
        policy: EgressPolicy,
    ) -> Result<Registration, EgressError> {
        self.register_with(token.into(), policy, false)
    }

    /// As `register`, but the token counts only on connections announced for this instance
    /// (`Registration::announcer`); from any other connection it is refused with
    /// `EgressSourceNotAnnounced`.
    pub fn register_announced(
        &self,
        token: impl Into<String>,
        policy: EgressPolicy,
    ) -> Result<Registration, EgressError> {
        self.register_with(token.into(), policy, true)
    }

    fn register_with(
        &self,
        token: String,
        policy: EgressPolicy,
        announced_only: bool,
    ) -> Result<Registration, EgressError> {
        let token_ok = (16..=128).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token_ok {
            return Err(EgressError::InvalidToken);
        }
        let instance = Arc::new(Instance {
            policy,
            announced_only,
            open: AtomicUsize::new(0),
            gone: self.shared.shutdown.child_token(),
        });
        let mut map = lock(&self.shared.instances);
        if map.contains_key(&token) {
            return Err(EgressError::TokenInUse);
        }
        map.insert(token.clone(), instance.clone());
        Ok(Registration {
            shared: self.shared.clone(),
            token,
            instance,
        })
    }

    /// Counters since start.
    pub fn stats(&self) -> EgressStats {
        let s = &self.shared.stats;
        EgressStats {
            allowed: s.allowed.load(Relaxed),
            denied: lock(&s.denied)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            bytes_up: s.bytes_up.load(Relaxed),
            bytes_down: s.bytes_down.load(Relaxed),
            open: s.open.load(Relaxed),
        }
    }
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // The serial of the announcement this connection was accepted under (0: none yet).
    let used = Arc::new(AtomicU64::new(0));
    let svc = {
        let (shared, used) = (shared.clone(), used.clone());
        service_fn(move |req| handle(shared.clone(), peer, used.clone(), req))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.cfg.idle_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(target: "atrund::egress", %peer, error = %e, "client connection ended");
        },
        _ = shared.shutdown.cancelled() => {}
    }
    // Its announcement ends with it; a newer one for the same address (a reused port) stays.
    let serial = used.load(Relaxed);
    if serial != 0 {
        let mut map = lock(&shared.sources);
        if map.get(&peer).is_some_and(|s| s.serial == serial) {
            map.remove(&peer);
        }
    }
}

/// Decrements the instance's and the proxy's open count when the upstream connection ends.
struct OpenGuard {
    shared: Arc<Shared>,
    instance: Arc<Instance>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.instance.open.fetch_sub(1, Relaxed);
        self.shared.stats.open.fetch_sub(1, Relaxed);
    }
}

struct Opened {
    stream: TcpStream,
    addr: SocketAddr,
    guard: OpenGuard,
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    used: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let known = authenticate(&shared, req.headers())
        .ok_or(EgressError::ProxyAuthRequired)
        .and_then(|i| from_its_source(&shared, &i, peer, &used).map(|()| i));
    let instance = match known {
        Ok(i) => i,
        Err(e) => {
            let dest = req.uri().authority().map(|a| a.to_string());
            tracing::info!(target: "atrund::egress", %peer, dest = dest.as_deref().unwrap_or("-"),
                decision = "deny", reason = e.reason(), "egress");
            count_denied(&shared, &e);
            return Ok(refusal(&e));
        }
    };
    if req.uri().host().is_some_and(runner_calls::is_runner_host) {
        return Ok(runner_call(&shared, &instance, peer, req).await);
    }
    let result = if req.method() == Method::CONNECT {
        connect(&shared, &instance, req).await
    } else {
        forward(&shared, &instance, req).await
    };
    Ok(result.unwrap_or_else(|e| refusal(&e)))
}

/// A call to the runner itself (`runner_calls`): answered by the instance's service, never
/// connected anywhere.
async fn runner_call(
    shared: &Shared,
    instance: &Instance,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let plain_http = req.method() != Method::CONNECT
        && req.uri().scheme_str() == Some("http")
        && req.uri().port_u16().is_none_or(|p| p == 80);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let reply = match (&instance.policy.runner, plain_http) {
        (_, false) => json_error(
            StatusCode::BAD_REQUEST,
            "BadRunnerCall",
            "call the runner over plain http://runner.atrund.internal/ (no https, no other port); the proxy carries it no further",
        ),
        (None, true) => json_error(
            StatusCode::NOT_FOUND,
            "RunnerCallsUnavailable",
            "this instance cannot call its runner: the runner registered it without runner calls",
        ),
        (Some(service), true) => {
            let body = http_body_util::Limited::new(req.into_body(), MAX_RUNNER_CALL_BYTES);
            match tokio::time::timeout(shared.cfg.idle_timeout, body.collect()).await {
                Err(_) => json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "RequestTimeout",
                    "the call's body did not arrive in time",
                ),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PayloadTooLarge",
                    &format!("a runner call's body is at most {MAX_RUNNER_CALL_BYTES} bytes"),
                ),
                Ok(Err(e)) => json_error(
                    StatusCode::BAD_REQUEST,
                    "BadRunnerCall",
                    &format!("the call's body could not be read: {e}"),
                ),
                Ok(Ok(body)) => {
                    service
                        .call(RunnerCall {
                            method: method.clone(),
                            path: path.clone(),
                            body: body.to_bytes(),
                        })
                        .await
                }
            }
        }
    };
    tracing::info!(target: "atrund::egress", %peer, bundle = %instance.policy.bundle_label,
        %method, %path, status = reply.status.as_u16(), "runner call");
    let mut r = Response::new(full(reply.body));
    *r.status_mut() = reply.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// For an instance registered with `register_announced`: whether `peer` was announced for it.
/// The first announcement a connection passes is the one it keeps (and removes at its end).
fn from_its_source(
    shared: &Shared,
    instance: &Arc<Instance>,
    peer: SocketAddr,
    used: &AtomicU64,
) -> Result<(), EgressError> {
    if !instance.announced_only {
        return Ok(());
    }
    let map = lock(&shared.sources);
    match map.get(&peer) {
        Some(s) if s.is(instance) => {
            let _ = used.compare_exchange(0, s.serial, Relaxed, Relaxed);
            Ok(())
        }
        _ => Err(EgressError::SourceNotAnnounced),
    }
}

/// The instance whose token is the user name of `Proxy-Authorization: Basic`.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<Arc<Instance>> {
    let v = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let token = raw.split_once(':').map_or(raw.as_str(), |(u, _)| u);
    lock(&shared.instances).get(token).cloned()
}

fn refusal(e: &EgressError) -> Response<Body> {
    let mut r = Response::new(full(format!("at-rund egress: {}\n", e)));
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("x-atrund-egress-error"),
        HeaderValue::from_static(e.code()),
    );
    if matches!(e, EgressError::ProxyAuthRequired) {
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"at-rund egress\""),
        );
    }
    r
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

fn count_denied(shared: &Shared, e: &EgressError) {
    *lock(&shared.stats.denied).entry(e.reason()).or_insert(0) += 1;
}

/// Policy check, resolution, address check and connect, with the decision logged either way.
async fn open(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    host: &Host,
    port: u16,
) -> Result<Opened, EgressError> {
    let bundle = instance.policy.bundle_label.as_str();
    let r = open_inner(shared, instance, host, port).await;
    match &r {
        Ok(o) => {
            shared.stats.allowed.fetch_add(1, Relaxed);
            tracing::info!(target: "atrund::egress", bundle, dest = %format!("{host}:{port}"),
                ip = %o.addr.ip(), decision = "allow", "egress");
        }
        Err(e) => {
            count_denied(shared, e);
            tracing::info!(target: "atrund::egress", bundle, dest = %format!("{host}:{port}"),
                decision = "deny", reason = e.reason(), detail = %e, "egress");
            if let Some(sink) = &instance.policy.on_refusal {
                (sink.0)(&format!("egress refused: {e}"));
            }
        }
    }
    r
}

async fn open_inner(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    host: &Host,
    port: u16,
) -> Result<Opened, EgressError> {
    rule::check(&instance.policy.allow, host, port)?;

    let max = shared.cfg.max_tunnels_per_instance;
    if instance.open.fetch_add(1, Relaxed) >= max {
        instance.open.fetch_sub(1, Relaxed);
        return Err(EgressError::TooManyConnections(max));
    }
    shared.stats.open.fetch_add(1, Relaxed);
    let guard = OpenGuard {
        shared: shared.clone(),
        instance: instance.clone(),
    };

    let dest = format!("{host}:{port}");
    let timeout = shared.cfg.connect_timeout;
    let timeout_ms = timeout.as_millis() as u64;
    let resolved: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => {
            match tokio::time::timeout(timeout, shared.resolver.resolve(name)).await {
                Err(_) => {
                    return Err(EgressError::ResolveFailed(
                        name.clone(),
                        format!("no answer within {timeout_ms} ms"),
                    ))
                }
                Ok(Err(e)) => return Err(EgressError::ResolveFailed(name.clone(), e.to_string())),
                Ok(Ok(a)) if a.is_empty() => {
                    return Err(EgressError::ResolveFailed(
                        name.clone(),
                        "no addresses".into(),
                    ))
                }
                Ok(Ok(a)) => a,
            }
        }
    };

    // Connect only to addresses that pass; refuse when none does.
    let mut usable: Vec<IpAddr> = Vec::new();
    let mut refused: Vec<(IpAddr, &'static str)> = Vec::new();
    for ip in resolved {
        match shared.addrs.check(ip) {
            Ok(ip) => match on_this_host(shared, SocketAddr::new(ip, port)) {
                Some(reason) => refused.push((ip, reason)),
                None if !usable.contains(&ip) => usable.push(ip),
                None => {}
            },
            Err(reason) => refused.push((ip, reason.as_str())),
        }
    }
    if !refused.is_empty() {
        tracing::debug!(target: "atrund::egress", bundle = instance.policy.bundle_label.as_str(),
            dest = %dest, refused = ?refused, "addresses skipped");
    }
    if usable.is_empty() {
        let detail = refused
            .iter()
            .take(4)
            .map(|(ip, r)| format!("{ip}: {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(EgressError::AddressBlocked {
            host: host.to_string(),
            port,
            detail,
            reason: refused.first().map_or("blocked", |(_, r)| r),
        });
    }

    let mut last_err = EgressError::ConnectFailed(dest.clone(), "no address".into());
    for ip in usable {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(timeout, shared.connector.connect(addr)).await {
            Ok(Ok(stream)) => {
                return Ok(Opened {
                    stream,
                    addr,
                    guard,
                })
            }
            Ok(Err(e)) => last_err = EgressError::ConnectFailed(dest.clone(), e.to_string()),
            Err(_) => last_err = EgressError::ConnectTimedOut(dest.clone(), timeout_ms),
        }
    }
    Err(last_err)
}

/// Why `dest` (an address the classifier let through) is refused as this machine itself: one
/// of the proxy's own listeners (`proxy_itself`, a loop) or the runner's (`runner_itself`),
/// never opened; another address of this host (`host_itself`) unless an `allow_cidrs` entry
/// names exactly that address (a LAN range that merely contains it does not open it).
fn on_this_host(shared: &Shared, dest: SocketAddr) -> Option<&'static str> {
    let reaches = |l: &SocketAddr| local::reaches(*l, dest, &shared.host);
    if lock(&shared.listening).iter().any(reaches) {
        return Some("proxy_itself");
    }
    if lock(&shared.protected).iter().any(reaches) {
        return Some("runner_itself");
    }
    let ip = dest.ip();
    let opened = || {
        shared
            .addrs
            .allow_cidrs
            .iter()
            .any(|n| n.prefix_len() == n.max_prefix_len() && n.addr() == ip)
    };
    // Loopback got here only through an allow_cidrs opening.
    if !ip.is_loopback() && shared.host.contains(ip) && !opened() {
        return Some("host_itself");
    }
    None
}

fn target(
    authority: Option<&http::uri::Authority>,
    default_port: Option<u16>,
) -> Result<(Host, u16), EgressError> {
    let a = authority.ok_or_else(|| {
        EgressError::BadRequest(
            "this is an egress proxy: send CONNECT host:port or an absolute http:// URL".into(),
        )
    })?;
    let host = rule::parse_host(a.host())
        .map_err(|e| EgressError::BadRequest(format!("bad host '{}': {e}", a.host())))?;
    let port = a.port_u16().or(default_port).ok_or_else(|| {
        EgressError::BadRequest(format!("'{a}' has no port; CONNECT needs host:port"))
    })?;
    if port == 0 {
        return Err(EgressError::BadRequest(
            "port 0 is not a destination".into(),
        ));
    }
    Ok((host, port))
}

async fn connect(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    req: Request<Incoming>,
) -> Result<Response<Body>, EgressError> {
    let (host, port) = target(req.uri().authority(), None)?;
    let opened = open(shared, instance, &host, port).await?;
    let (shared2, instance2) = (shared.clone(), instance.clone());
    tokio::spawn(async move {
        let Opened {
            stream,
            addr,
            guard,
        } = opened;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(target: "atrund::egress", error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let (end, up, down) = tunnel::run(
            TokioIo::new(upgraded),
            stream,
            shared2.cfg.idle_timeout,
            &instance2.gone,
            Counters {
                up: &shared2.stats.bytes_up,
                down: &shared2.stats.bytes_down,
            },
        )
        .await;
        tracing::info!(target: "atrund::egress", bundle = instance2.policy.bundle_label.as_str(),
            dest = %format!("{host}:{port}"), ip = %addr.ip(), end = end.as_str(),
            bytes_up = up, bytes_down = down, "tunnel closed");
        drop(guard);
    });
    Ok(Response::new(Empty::new().map_err(|n| match n {}).boxed()))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy's own credentials.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP {
        h.remove(*n);
    }
}

/// Adds every data frame's length to `counter`.
fn counted<B>(body: B, counter: &'static str, shared: Arc<Shared>) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    body.map_frame(move |f: Frame<Bytes>| {
        if let Some(d) = f.data_ref() {
            let c = if counter == "up" {
                &shared.stats.bytes_up
            } else {
                &shared.stats.bytes_down
            };
            c.fetch_add(d.len() as u64, Relaxed);
        }
        f
    })
    .boxed()
}

async fn forward(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    req: Request<Incoming>,
) -> Result<Response<Body>, EgressError> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(EgressError::BadRequest(
                "https goes through CONNECT; set HTTPS_PROXY, not an https:// request URL".into(),
            ))
        }
        _ => {
            return Err(EgressError::BadRequest(
                "this is an egress proxy: send CONNECT host:port or an absolute http:// URL".into(),
            ))
        }
    }
    let (host, port) = target(uri.authority(), Some(80))?;
    let host_header = HeaderValue::from_str(&if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    })
    .map_err(|_| EgressError::BadRequest("bad host".into()))?;
    let path: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| EgressError::BadRequest("bad request path".into()))?;

    let opened = open(shared, instance, &host, port).await?;
    let dest = format!("{host}:{port}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(opened.stream))
        .await
        .map_err(|e| EgressError::UpstreamFailed(dest.clone(), e.to_string()))?;
    let gone = instance.gone.clone();
    let guard = opened.guard;
    tokio::spawn(async move {
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(target: "atrund::egress", error = %e, "upstream connection ended");
            },
            _ = gone.cancelled() => {}
        }
        drop(guard);
    });

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The URL decides where the request went, so Host must say the same (RFC 9112 §3.2.2).
    parts.headers.insert(header::HOST, host_header);
    parts.uri = path;
    parts.version = Version::HTTP_11;
    let out = Request::from_parts(parts, counted(body, "up", shared.clone()));

    let resp = tokio::time::timeout(shared.cfg.idle_timeout, sender.send_request(out))
        .await
        .map_err(|_| {
            EgressError::UpstreamFailed(
                dest.clone(),
                format!(
                    "no response within {} ms",
                    shared.cfg.idle_timeout.as_millis()
                ),
            )
        })?
        .map_err(|e| EgressError::UpstreamFailed(dest.clone(), e.to_string()))?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(EgressError::UpstreamFailed(
            dest,
            "protocol upgrades over plain-HTTP proxying are not supported; use https/wss".into(),
        ));
    }
    Ok(Response::from_parts(
        parts,
        counted(body, "down", shared.clone()),
    ))
}
