//! `GuardedClient`: HTTP GETs for the runner's own requests that reach only checked addresses.
//!
//! Owns: the URL rule (https, or plain http to a loopback host when allowed), resolving once and
//! pinning the checked addresses, redirect decisions. Must not: read bodies or interpret statuses
//! (the callers do), or log anything but the decision and the network detail of a failure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::rustls::pki_types::CertificateDer;
use url::{Host, Url};

use crate::addr::AddressPolicy;
use crate::resolve::Resolve;

/// Pinned clients kept for connection reuse; past this many the cache starts over.
const MAX_CACHED_CLIENTS: usize = 64;

/// Why a request was not made or failed. `Display` carries network detail (addresses, OS error
/// text): log it, never send it to a caller; callers map these to generic messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// not https (or plain http to loopback when allowed), no host, or credentials in the URL
    #[error("refusing URL {url}: {reason}")]
    InsecureUrl { url: String, reason: String },
    /// every address of the host is refused by the address policy
    #[error("{host}:{port} is not contacted: {refused}")]
    AddressNotAllowed {
        host: String,
        port: u16,
        refused: String,
    },
    /// the name did not resolve, or resolution timed out
    #[error("could not resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    /// connecting, sending or receiving the response head failed
    #[error("request to {url} failed: {detail}")]
    Request { url: String, detail: String },
    /// a redirect chain went past the cap
    #[error("more than {0} redirects, ending at {1}")]
    TooManyRedirects(usize, String),
    /// the HTTP client could not be built (TLS set-up)
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl OutboundError {
    /// True when the address policy (not the network) stopped the request.
    pub fn is_address_refusal(&self) -> bool {
        matches!(self, OutboundError::AddressNotAllowed { .. })
    }
}

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on resolving, and on each request (connect, head and body).
    pub timeout: Duration,
    /// Redirects followed, each re-checked (scheme, address); 0 answers 3xx to the caller.
    pub max_redirects: usize,
    /// Permit plain http to `localhost`, 127.0.0.0/8 and `::1` (development); the addresses must
    /// still be opened in the policy.
    pub allow_http_loopback: bool,
    /// Certificate authorities trusted beside the web PKI's (config `extra_ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(10),
            max_redirects: 0,
            allow_http_loopback: false,
            extra_roots: Vec::new(),
        }
    }
}

/// True when the URL's host is `localhost`, an IPv4 loopback address or `::1`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The URL rule of the runner's own requests: https with a host and no credentials, or plain
/// http to a loopback host when `allow_http_loopback`. `Err` is the reason.
pub fn check_url(url: &Url, allow_http_loopback: bool) -> Result<(), String> {
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err("it needs a host and no credentials".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http_loopback && is_loopback_host(url) => Ok(()),
        "http" => Err(
            "only https is allowed (plain http only to a loopback host when allow_http is set)"
                .into(),
        ),
        other => Err(format!("scheme '{other}' is not https")),
    }
}

/// Where a response sends the client next: `Ok(None)` when it is not a redirect to follow (the
/// response goes to the caller), `Ok(Some(url))` for the next hop (whose address is checked like
/// the first), `Err` when the redirect is refused. `hops_done` counts redirects already followed.
pub fn redirect_target(
    current: &Url,
    status: u16,
    location: Option<&str>,
    hops_done: usize,
    max_redirects: usize,
    allow_http_loopback: bool,
) -> Result<Option<Url>, OutboundError> {
    if max_redirects == 0 || !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let Some(location) = location else {
        return Ok(None);
    };
    let next = current
        .join(location)
        .map_err(|e| OutboundError::InsecureUrl {
            url: location.chars().take(200).collect(),
            reason: format!("redirect target is not a URL: {e}"),
        })?;
    if hops_done >= max_redirects {
        return Err(OutboundError::TooManyRedirects(
            max_redirects,
            next.to_string(),
        ));
    }
    check_url(&next, allow_http_loopback).map_err(|reason| OutboundError::InsecureUrl {
        url: next.to_string(),
        reason,
    })?;
    Ok(Some(next))
}

/// An HTTP client that connects only to addresses its policy allows. Cheap to clone.
#[derive(Clone)]
pub struct GuardedClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    policy: AddressPolicy,
    resolver: Arc<dyn Resolve>,
    /// For IP-literal hosts, which reqwest connects to without resolving.
    literal: reqwest::Client,
    /// Per host and checked address set, so connections to the same checked place are reused.
    pinned: Mutex<HashMap<(String, Vec<SocketAddr>), reqwest::Client>>,
}

impl std::fmt::Debug for GuardedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedClient")
            .field("cfg", &self.inner.cfg)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// The resolver reqwest gets: refuses every name, so nothing but a pinned override or an IP
/// literal (both checked before the request) can be connected to.
struct RefuseAll;

impl reqwest::dns::Resolve for RefuseAll {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let msg = format!("{} was not resolved and checked first", name.as_str());
        Box::pin(async move { Err(msg.into()) })
    }
}

impl GuardedClient {
    pub fn new(
        cfg: ClientConfig,
        policy: AddressPolicy,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, OutboundError> {
        let literal = build(&cfg, None)?;
        Ok(GuardedClient {
            inner: Arc::new(Inner {
                cfg,
                policy,
                resolver,
                literal,
                pinned: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// GET `url` with an `Accept` header, following redirects as configured. The response may
    /// have any status; its body is the caller's to read (within the client's timeout).
    pub async fn get(&self, url: &Url, accept: &str) -> Result<reqwest::Response, OutboundError> {
        let cfg = &self.inner.cfg;
        let mut url = url.clone();
        let mut hops = 0;
        loop {
            let resp = self.get_once(&url, accept).await?;
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let next = redirect_target(
                &url,
                resp.status().as_u16(),
                location,
                hops,
                cfg.max_redirects,
                cfg.allow_http_loopback,
            );
            match next {
                Ok(None) => return Ok(resp),
                Ok(Some(next)) => {
                    tracing::debug!(target: "atrund::outbound", from = %url, to = %next, "following redirect");
                    url = next;
                    hops += 1;
                }
                Err(e) => {
                    tracing::warn!(target: "atrund::outbound", from = %url, error = %e, "redirect refused");
                    return Err(e);
                }
            }
        }
    }

    async fn get_once(&self, url: &Url, accept: &str) -> Result<reqwest::Response, OutboundError> {
        self.check_scheme(url)?;
        let client = self.client_for(url).await.inspect_err(|e| {
            if e.is_address_refusal() {
                tracing::warn!(target: "atrund::outbound", %url, error = %e, "refused by address policy");
            } else {
                tracing::info!(target: "atrund::outbound", %url, error = %e, "request failed");
            }
        })?;
        client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| {
                let detail = describe(&e);
                tracing::info!(target: "atrund::outbound", %url, %detail, "request failed");
                OutboundError::Request {
                    url: url.to_string(),
                    detail,
                }
            })
    }

    /// Resolves the URL's host once, checks each address with its port, and returns a client that
    /// can connect only to the addresses that passed.
    async fn client_for(&self, url: &Url) -> Result<reqwest::Client, OutboundError> {
        let inner = &self.inner;
        let (name, addrs) = self.resolve_pinned(url).await?;
        // An IP literal is connected to as it is, once checked.
        let Some(name) = name else {
            return Ok(inner.literal.clone());
        };
        let key = (name, addrs);
        let mut cache = inner
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let client = build(&inner.cfg, Some((&key.0, &key.1)))?;
        if cache.len() >= MAX_CACHED_CLIENTS {
            cache.clear();
        }
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// `name`'s addresses from the runner's resolver, within the timeout (unchecked).
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, OutboundError> {
        let timeout = self.inner.cfg.timeout;
        tokio::time::timeout(timeout, self.inner.resolver.resolve(name))
            .await
            .map_err(|_| OutboundError::Resolve {
                host: name.to_string(),
                detail: format!("timed out after {timeout:?}"),
            })?
            .map_err(|e| OutboundError::Resolve {
                host: name.to_string(),
                detail: e.to_string(),
            })
    }

    /// The addresses `url` may be connected to: its scheme checked (`https`/`wss`, or plain to
    /// loopback when allowed), its host resolved once and every address checked with its port.
    pub async fn checked_addrs(&self, url: &Url) -> Result<Vec<SocketAddr>, OutboundError> {
        self.check_scheme(url)?;
        Ok(self.resolve_pinned(url).await?.1)
    }

    /// The URL rule ([`check_url`]) as this client's error.
    fn check_scheme(&self, url: &Url) -> Result<(), OutboundError> {
        check_url(url, self.inner.cfg.allow_http_loopback).map_err(|reason| {
            OutboundError::InsecureUrl {
                url: url.to_string(),
                reason,
            }
        })
    }

    /// The URL's host resolved once (an IP literal as it is) and the addresses that pass the
    /// policy with the URL's port; the lower-cased name when the host is one.
    async fn resolve_pinned(
        &self,
        url: &Url,
    ) -> Result<(Option<String>, Vec<SocketAddr>), OutboundError> {
        let port = url.port_or_known_default().unwrap_or(443);
        let literal = |ip: IpAddr| (None, ip.to_string(), vec![ip]);
        let (name, shown, resolved) = match url.host() {
            Some(Host::Ipv4(ip)) => literal(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => literal(IpAddr::V6(ip)),
            Some(Host::Domain(d)) => {
                let name = d.to_ascii_lowercase();
                let r = self.resolve(&name).await?;
                (Some(name.clone()), name, r)
            }
            None => {
                return Err(OutboundError::InsecureUrl {
                    url: url.to_string(),
                    reason: "it has no host".into(),
                })
            }
        };
        let addrs = pin(&self.inner.policy, &shown, port, &resolved)?;
        Ok((name, addrs))
    }
}

/// The addresses of `host` that may be connected to on `port`, in resolver order; refused when
/// none may. Pure: the unit tests pin its decisions.
pub(crate) fn pin(
    policy: &AddressPolicy,
    host: &str,
    port: u16,
    resolved: &[IpAddr],
) -> Result<Vec<SocketAddr>, OutboundError> {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for ip in resolved {
        match policy.check_socket(SocketAddr::new(*ip, port)) {
            Ok(sa) if !ok.contains(&sa) => ok.push(sa),
            Ok(_) => {}
            Err(r) => refused.push(format!("{ip} ({})", r.as_str())),
        }
    }
    if ok.is_empty() {
        if refused.is_empty() {
            refused.push("the name has no addresses".into());
        }
        return Err(OutboundError::AddressNotAllowed {
            host: host.to_string(),
            port,
            refused: refused.join(", "),
        });
    }
    Ok(ok)
}

/// A reqwest client with no proxy, no redirects, no resolver of its own, and optionally one host
/// pinned to checked addresses.
fn build(
    cfg: &ClientConfig,
    pinned: Option<(&str, &[SocketAddr])>,
) -> Result<reqwest::Client, OutboundError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("at-rund/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(RefuseAll));
    for der in &cfg.extra_roots {
        let cert = reqwest::Certificate::from_der(der.as_ref())
            .map_err(|e| OutboundError::Client(format!("an extra root is not usable: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    if let Some((host, addrs)) = pinned {
        b = b.resolve_to_addrs(host, addrs);
    }
    b.build().map_err(|e| OutboundError::Client(e.to_string()))
}

/// reqwest's Display hides the cause; walk the source chain for a one-line reason.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out: ".to_string()
    } else {
        String::new()
    };
    s.push_str(&e.to_string());
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Why a capped body read stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// the body is (or announces to be) over the cap
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// the connection failed or timed out while the body was read
    #[error("reading the body failed: {0}")]
    Body(#[source] reqwest::Error),
}

/// Reads a whole body, failing as soon as it would pass `limit` bytes: on the announced
/// Content-Length first, then while streaming, so a lying or endless server costs at most `limit`.
pub async fn read_capped(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|len| len > limit) {
        return Err(ReadError::TooLarge { limit });
    }
    let initial = resp.content_length().unwrap_or(0).min(limit).min(1 << 20);
    let mut buf = Vec::with_capacity(usize::try_from(initial).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Body)? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Opening;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn url_rule() {
        let ok = |s: &str, allow| check_url(&u(s), allow).is_ok();
        assert!(ok("https://plc.directory", false));
        assert!(ok("https://example.com:8443/x", false));
        assert!(!ok("http://plc.directory", false));
        assert!(!ok("http://plc.directory", true));
        assert!(!ok("http://localhost:2582", false));
        assert!(ok("http://localhost:2582", true));
        assert!(ok("http://LOCALHOST:2582", true));
        assert!(ok("http://127.3.4.5:1", true));
        assert!(ok("http://[::1]:1", true));
        assert!(!ok("http://10.0.0.1", true));
        assert!(!ok("http://localhost.evil.com", true));
        assert!(!ok("ftp://localhost", true));
        assert!(!ok("https://user:pw@example.com", false));
        assert!(!ok("file:///etc/passwd", true));
    }

    #[test]
    fn pin_filters_every_address() {
        let p =
            AddressPolicy::default().with_openings(&["127.0.0.1:2582".parse::<Opening>().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        // a public address passes; loopback next to it is dropped, not connected to
        assert_eq!(
            pin(&p, "h", 443, &[ip("127.0.0.1"), ip("8.8.8.8")]).unwrap(),
            vec![sa("8.8.8.8:443")]
        );
        // only refused addresses: refused, with every reason for the log
        let e = pin(&p, "h", 443, &[ip("127.0.0.1"), ip("::1"), ip("10.0.0.1")]).unwrap_err();
        assert!(e.is_address_refusal());
        let text = e.to_string();
        for part in [
            "127.0.0.1 (loopback)",
            "::1 (loopback)",
            "10.0.0.1 (private)",
        ] {
            assert!(text.contains(part), "{text}");
        }
        // the opening is for one port only
        assert_eq!(
            pin(&p, "localhost", 2582, &[ip("::1"), ip("127.0.0.1")]).unwrap(),
            vec![sa("127.0.0.1:2582")]
        );
        assert!(pin(&p, "localhost", 2583, &[ip("127.0.0.1")]).is_err());
        // mapped forms are judged and pinned as IPv4
        assert!(pin(&p, "h", 1, &[ip("::ffff:169.254.169.254")]).is_err());
        assert_eq!(
            pin(&p, "h", 2582, &[ip("::ffff:127.0.0.1")]).unwrap(),
            vec![sa("127.0.0.1:2582")]
        );
        // no addresses at all is a refusal too, not a connection attempt
        assert!(pin(&p, "h", 443, &[]).unwrap_err().is_address_refusal());
    }

    #[test]
    fn redirect_policy() {
        let here = u("https://pds.example.com/xrpc/com.atproto.sync.getBlob?cid=x");
        let go = |status, loc: Option<&str>, hops, max, http| {
            redirect_target(&here, status, loc, hops, max, http)
        };
        // not followed: redirects off, not a redirect status, no Location
        assert_eq!(
            go(302, Some("https://cdn.example.com/b"), 0, 0, false),
            Ok(None)
        );
        assert_eq!(
            go(200, Some("https://cdn.example.com/b"), 0, 3, false),
            Ok(None)
        );
        assert_eq!(
            go(304, Some("https://cdn.example.com/b"), 0, 3, false),
            Ok(None)
        );
        assert_eq!(go(302, None, 0, 3, false), Ok(None));
        // followed, relative targets resolved against the current URL
        for s in [301, 302, 303, 307, 308] {
            assert_eq!(
                go(s, Some("https://cdn.example.com/b"), 0, 3, false),
                Ok(Some(u("https://cdn.example.com/b")))
            );
        }
        assert_eq!(
            go(302, Some("/other"), 2, 3, false),
            Ok(Some(u("https://pds.example.com/other")))
        );
        // capped
        assert!(matches!(
            go(302, Some("/again"), 3, 3, false),
            Err(OutboundError::TooManyRedirects(3, _))
        ));
        // downgrades and other schemes refused; http to loopback only when allowed
        for bad in [
            "http://cdn.example.com/b",
            "ftp://cdn.example.com/b",
            "file:///etc/passwd",
            "https://u:p@cdn.example.com/",
            "http://127.0.0.1:9/",
        ] {
            assert!(
                matches!(
                    go(302, Some(bad), 0, 3, false),
                    Err(OutboundError::InsecureUrl { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            go(302, Some("http://127.0.0.1:9/"), 0, 3, true),
            Ok(Some(u("http://127.0.0.1:9/")))
        );
    }
}
