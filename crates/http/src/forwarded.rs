//! Who is calling: a request's client address, scheme and host. By default they are the TCP
//! peer, plain `http` and the `Host` header, and every forwarded header a caller sends is
//! ignored. Only when the peer is one of `http.trusted_proxies` (a TLS proxy in front) are
//! `X-Forwarded-For` (the rightmost address that is not a trusted proxy), `X-Forwarded-Proto`
//! and `X-Forwarded-Host` believed. `Forwarded` (RFC 7239) is not read: Caddy and nginx send the
//! `X-Forwarded-*` set, and one set of rules is one thing to get right.
//!
//! Whatever was decided replaces what the caller sent, before routing: `Host` becomes the
//! believed host (host routes follow it), and a bundle sees exactly one `X-Forwarded-For` (the
//! client address) and one `X-Forwarded-Proto`, never a caller's own `Forwarded`, `X-Real-IP` or
//! `X-Forwarded-*` (docs/bundle-abi.md).
//!
//! Owns: the trust decision and the header rewrite. Must not touch: what a request does.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use crate::live::LiveConfig;

/// The connection's TCP peer, which the accept loop (`serve`) puts into every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What the runner believes about where a request came from; in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or from `X-Forwarded-For` of a trusted proxy. `None`
    /// only when the request came without a peer (not through `serve`).
    pub addr: Option<IpAddr>,
    /// The scheme the client used: `https` only when a trusted proxy said so.
    pub https: bool,
    /// The request came through a trusted proxy.
    pub via_proxy: bool,
}

impl Client {
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `http.trusted_proxies`, parsed (config validation has checked every entry).
#[derive(Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(list: &[String]) -> Self {
        TrustedProxies(
            list.iter()
                .filter_map(|s| {
                    s.parse::<IpNet>()
                        .ok()
                        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
                })
                .collect(),
        )
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 peer (`::ffff:10.0.0.5`, from a dual-stack listener) as the IPv4
/// address it is, so `10.0.0.0/24` matches it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The believed client, and the host a trusted proxy named (if it named exactly one valid one).
pub fn decide(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> (Client, Option<HeaderValue>) {
    let peer = peer.map(canonical);
    let untrusted = Client {
        addr: peer,
        https: false,
        via_proxy: false,
    };
    let Some(p) = peer.filter(|p| trusted.contains(*p)) else {
        return (untrusted, None);
    };
    // Rightmost first: each trusted hop appended the address it was called from, so the first
    // address from the right that is not a trusted proxy is the client. Anything left of it was
    // written by the client and proves nothing. An unreadable entry ends the walk at the last
    // address read.
    let mut addr = p;
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        addr = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    // Anything but exactly `https` is plain http: a wrong guess there only loses a bundle the
    // `https` it could have shown in its URLs.
    let https =
        single(headers, &X_FORWARDED_PROTO).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let host = single(headers, &X_FORWARDED_HOST)
        // A host and optional port, as `Host` holds: no user info, path or anything else.
        .filter(|h| !h.contains('@') && h.parse::<http::uri::Authority>().is_ok())
        .and_then(|h| HeaderValue::from_str(h).ok());
    (
        Client {
            addr: Some(addr),
            https,
            via_proxy: true,
        },
        host,
    )
}

/// One `X-Forwarded-For` entry: an address, also as nginx or others may write it with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:5678`) or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
        .map(canonical)
}

/// The value of `name` when the request has exactly one, without a comma: proxies that set
/// these headers send one value, and a list means someone else added to it.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    v.to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.contains(','))
}

/// Replaces the caller's forwarded headers with what was decided: every `Forwarded`,
/// `X-Real-IP` and `X-Forwarded-*` goes, then `X-Forwarded-For` (the client address) and
/// `X-Forwarded-Proto` are set, and `Host` becomes the trusted proxy's `X-Forwarded-Host`.
pub fn rewrite(headers: &mut HeaderMap, client: &Client, host: Option<HeaderValue>) {
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("x-forwarded-") || k == "forwarded" || k == "x-real-ip"
        })
        .cloned()
        .collect();
    for k in forwarded {
        headers.remove(k);
    }
    if let Some(addr) = client.addr {
        headers.insert(X_FORWARDED_FOR, addr_value(addr));
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme()));
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
}

/// `addr` as a header value. IPv4 is written by hand: `Ipv4Addr`'s `Display` (it pads and
/// aligns) was a visible share of a warm call's own work.
fn addr_value(addr: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = addr else {
        // An IPv6 address's text is ASCII hex digits, colons and dots.
        return HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    };
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            buf[len] = b'0' + d;
            len += 1;
        }
    }
    // Digits and dots only.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Middleware, outermost on the main listener: decides the [`Client`], rewrites the headers
/// and puts the `Client` into the request's extensions for the request span and the handlers.
pub async fn layer(State(live): State<LiveConfig>, mut req: Request, next: Next) -> Response {
    apply(&live, &mut req);
    next.run(req).await
}

/// What [`layer`] does to a request (also used by the main service's direct route).
pub fn apply(live: &LiveConfig, req: &mut Request) {
    let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
    let config = live.current();
    let trusted = TrustedProxies::parse(&config.http.trusted_proxies);
    let (client, host) = decide(peer, req.headers(), &trusted);
    rewrite(req.headers_mut(), &client, host);
    req.extensions_mut().insert(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    const SPOOF: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "other-abc.bundles.example.com"),
    ];

    #[test]
    fn addresses_are_written_as_their_text() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            assert_eq!(addr_value(a.parse().unwrap()), a, "{a}");
        }
    }

    #[test]
    fn nobody_is_trusted_by_default() {
        let (c, host) = decide(ip("203.0.113.9"), &headers(SPOOF), &proxies(&[]));
        assert_eq!(c.addr, ip("203.0.113.9"));
        assert!(!c.https && !c.via_proxy && host.is_none());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let (c, host) = decide(ip("10.0.1.1"), &headers(SPOOF), &proxies(&["10.0.0.0/24"]));
        assert_eq!(c.addr, ip("10.0.1.1"));
        assert!(!c.https && !c.via_proxy && host.is_none());
    }

    #[test]
    fn a_trusted_proxy_is_believed() {
        let (c, host) = decide(ip("10.0.0.5"), &headers(SPOOF), &proxies(&["10.0.0.0/24"]));
        assert_eq!(c.addr, ip("6.6.6.6"));
        assert!(c.https && c.via_proxy);
        assert_eq!(host.unwrap(), "other-abc.bundles.example.com");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = proxies(&["10.0.0.5", "10.0.0.6"]);
        // The client wrote 6.6.6.6 itself; the first proxy appended the real client.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.6")]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("198.51.100.7"));
        // Several header fields are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("198.51.100.7"));
        // All hops trusted: the leftmost is the best there is.
        let h = headers(&[("x-forwarded-for", "10.0.0.6")]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("10.0.0.6"));
        // No header: the proxy itself.
        assert_eq!(
            decide(ip("10.0.0.5"), &HeaderMap::new(), &t).0.addr,
            ip("10.0.0.5")
        );
        // Garbage stops the walk at the last address read.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, nonsense, 10.0.0.6")]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("10.0.0.6"));
        // Ports and brackets as some proxies write them.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("2001:db8::7"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7:5000")]);
        assert_eq!(decide(ip("10.0.0.5"), &h, &t).0.addr, ip("198.51.100.7"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_ranges() {
        let t = proxies(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let (c, _) = decide(ip("::ffff:127.0.0.1"), &h, &t);
        assert_eq!(c.addr, ip("198.51.100.7"));
    }

    #[test]
    fn proto_and_host_must_be_single_and_well_formed() {
        let t = proxies(&["10.0.0.5"]);
        for bad in [
            vec![("x-forwarded-host", "a.example, b.example")],
            vec![
                ("x-forwarded-host", "a.example"),
                ("x-forwarded-host", "b.example"),
            ],
            vec![("x-forwarded-host", "a.example/path")],
            vec![("x-forwarded-host", "user@a.example")],
        ] {
            assert!(
                decide(ip("10.0.0.5"), &headers(&bad), &t).1.is_none(),
                "{bad:?}"
            );
        }
        let (c, host) = decide(
            ip("10.0.0.5"),
            &headers(&[
                ("x-forwarded-host", "a.example:8443"),
                ("x-forwarded-proto", "HTTPS"),
            ]),
            &t,
        );
        assert!(c.https);
        assert_eq!(host.unwrap(), "a.example:8443");
        for proto in ["https, http", "ftp", ""] {
            let h = headers(&[("x-forwarded-proto", proto)]);
            assert!(!decide(ip("10.0.0.5"), &h, &t).0.https, "{proto}");
        }
    }

    #[test]
    fn rewrite_leaves_only_the_decision() {
        let mut h = headers(&[
            ("host", "runner.example.com"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-host", "evil.example"),
            ("accept", "*/*"),
        ]);
        let client = Client {
            addr: ip("203.0.113.9"),
            https: false,
            via_proxy: false,
        };
        rewrite(&mut h, &client, None);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "accept: */*",
                "host: runner.example.com",
                "x-forwarded-for: 203.0.113.9",
                "x-forwarded-proto: http"
            ]
        );
        rewrite(
            &mut h,
            &Client {
                https: true,
                ..client
            },
            Some(HeaderValue::from_static("b-x.bundles.example.com")),
        );
        assert_eq!(h[header::HOST], "b-x.bundles.example.com");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }
}
