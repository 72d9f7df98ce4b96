//! Header rules that keep one bundle from acting in another's origin (docs/origins.md,
//! docs/security.md "Origins").
//!
//! Owns: what is added to, and removed from, the request and response headers of a bundle
//! call, per route kind. Pure functions over `HeaderMap`s. Must not touch: bodies, statuses, or
//! how the call is made; it runs in the HTTP layer, after the bundle answered.
//!
//! Path routes (`/bundle/...`) share the runner's origin with every other bundle, so a bundle's
//! response must not act in that origin: it is turned into an opaque-origin document by a CSP
//! `sandbox` without `allow-same-origin`, and headers that set state for the whole origin are
//! dropped. Host routes (`{label}.{bundle_domain}`) are the bundle's own origin: its headers pass
//! through, except cookies scoped to a parent domain, which would reach sibling bundles.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The CSP added to every bundle response on a path route. `allow-same-origin` is absent, so the
/// document gets an opaque origin: no cookies, storage, or same-origin reads of the runner's
/// origin. The other flags keep ordinary pages working (scripts, forms, popups that inherit the
/// sandbox, `alert`, downloads); top navigation, pointer lock and presentation are left out as
/// no bundle page needs them to work.
pub const SANDBOX_CSP: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// Response headers that set state for the whole origin rather than the one document, so a
/// bundle on a path route would set it for every other bundle: cookies, clearing the origin's
/// data, a service worker scope, HSTS, alternative services, network error and legacy reporting
/// endpoints (they would receive other bundles' URLs), client hints and origin keying.
static ORIGIN_WIDE: [HeaderName; 11] = [
    HeaderName::from_static("set-cookie"),
    HeaderName::from_static("set-cookie2"),
    HeaderName::from_static("clear-site-data"),
    HeaderName::from_static("service-worker-allowed"),
    HeaderName::from_static("strict-transport-security"),
    HeaderName::from_static("alt-svc"),
    HeaderName::from_static("nel"),
    HeaderName::from_static("report-to"),
    HeaderName::from_static("accept-ch"),
    HeaderName::from_static("critical-ch"),
    HeaderName::from_static("origin-agent-cluster"),
];

/// HTTP authentication schemes a browser prompts for and then caches per origin and realm: the
/// cached credentials would be replayed to any other bundle answering 401 with the same realm.
const PROMPTING_AUTH_SCHEMES: &[&str] = &["basic", "digest", "negotiate", "ntlm"];

/// What [`sandbox_path_response`] removed, for the log (names and counts only, never values).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// `Set-Cookie` (and `Set-Cookie2`) fields dropped.
    pub cookies: usize,
    /// Other origin-wide headers and prompting `WWW-Authenticate` challenges dropped, by name.
    pub others: Vec<&'static str>,
}

/// Rewrites a bundle's response headers for a path route: drops [`ORIGIN_WIDE`] headers and
/// prompting `WWW-Authenticate` challenges, adds [`SANDBOX_CSP`] as a separate CSP field (the
/// bundle's own CSP fields stay: a browser enforces every policy, so they can only add
/// restrictions, never lift the sandbox), and sets `X-Content-Type-Options: nosniff`.
pub fn sandbox_path_response(h: &mut HeaderMap) -> Removed {
    let mut removed = Removed::default();
    for name in &ORIGIN_WIDE {
        // Typed names: parsing each name per response was a visible share of a warm call.
        let n = h.get_all(name).iter().count();
        if n == 0 {
            continue;
        }
        h.remove(name);
        if name.as_str().starts_with("set-cookie") {
            removed.cookies += n;
        } else {
            removed.others.push(name.as_str());
        }
    }
    let challenges: Vec<HeaderValue> = h
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    if !challenges.is_empty() {
        h.remove(header::WWW_AUTHENTICATE);
        let mut dropped = false;
        for v in challenges {
            if prompts(&v) {
                dropped = true;
            } else {
                h.append(header::WWW_AUTHENTICATE, v);
            }
        }
        if dropped {
            removed.others.push("www-authenticate");
        }
    }
    h.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(SANDBOX_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    removed
}

/// A challenge whose scheme the browser answers with a login prompt.
fn prompts(v: &HeaderValue) -> bool {
    let s = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
    // One field may hold several challenges; any prompting scheme at the start of one counts.
    s.split(',').any(|part| {
        let scheme = part.trim_start().split([' ', '\t']).next().unwrap_or("");
        PROMPTING_AUTH_SCHEMES.contains(&scheme)
    })
}

/// Removes the caller's `Cookie` header before a path-route call: on the shared origin it holds
/// cookies of every bundle (and whatever else lives on the runner's host). Returns how many
/// cookie pairs it held.
pub fn strip_request_cookies(h: &mut HeaderMap) -> usize {
    let n = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes().split(|b| *b == b';').count())
        .sum();
    h.remove(header::COOKIE);
    n
}

/// True when a path-route request is a browser fetching a service worker script
/// (`Service-Worker: script`): refused, so no worker can be registered on the runner's origin.
pub fn is_service_worker_fetch(h: &HeaderMap) -> bool {
    h.get(HeaderName::from_static("service-worker"))
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"script"))
}

/// Rewrites a bundle's response headers for a host route (`host` is the bundle's host name,
/// without port): everything passes through except `Set-Cookie` fields whose `Domain` is not
/// that host. Such a cookie would be sent to sibling bundles under the same bundle domain
/// (cookie tossing). Returns how many were dropped.
pub fn filter_host_cookies(h: &mut HeaderMap, host: &str) -> usize {
    let cookies: Vec<HeaderValue> = h.get_all(header::SET_COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return 0;
    }
    h.remove(header::SET_COOKIE);
    let mut dropped = 0;
    for v in cookies {
        if cookie_domain_ok(&v, host) {
            h.append(header::SET_COOKIE, v);
        } else {
            dropped += 1;
        }
    }
    dropped
}

/// No `Domain` attribute (a host-only cookie), or one equal to `host`.
fn cookie_domain_ok(v: &HeaderValue, host: &str) -> bool {
    let s = String::from_utf8_lossy(v.as_bytes());
    s.split(';').skip(1).all(|attr| {
        let Some((k, val)) = attr.split_once('=') else {
            return true;
        };
        if !k.trim().eq_ignore_ascii_case("domain") {
            return true;
        }
        let d = val.trim().trim_start_matches('.').to_ascii_lowercase();
        d.trim_end_matches('.') == host
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn path_responses_are_sandboxed_and_lose_origin_wide_headers() {
        let mut h = map(&[
            ("content-type", "text/html"),
            ("set-cookie", "a=1; Path=/"),
            ("set-cookie", "b=2; HttpOnly"),
            ("clear-site-data", "\"cookies\", \"storage\""),
            ("service-worker-allowed", "/"),
            ("strict-transport-security", "max-age=1; includeSubDomains"),
            ("nel", "{}"),
            (
                "content-security-policy",
                "default-src *; sandbox allow-same-origin",
            ),
            ("x-content-type-options", "sniff-please"),
            ("www-authenticate", "Basic realm=\"x\""),
            ("www-authenticate", "Bearer realm=\"api\""),
            ("refresh", "5; url=/elsewhere"),
            ("cache-control", "max-age=60"),
        ]);
        let r = sandbox_path_response(&mut h);
        assert_eq!(r.cookies, 2);
        assert_eq!(
            r.others,
            [
                "clear-site-data",
                "service-worker-allowed",
                "strict-transport-security",
                "nel",
                "www-authenticate"
            ]
        );
        for gone in [
            "set-cookie",
            "clear-site-data",
            "service-worker-allowed",
            "nel",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        // Ours is added beside the bundle's: both are enforced, so the bundle's own
        // `allow-same-origin` cannot lift our sandbox.
        assert_eq!(
            all(&h, "content-security-policy"),
            ["default-src *; sandbox allow-same-origin", SANDBOX_CSP]
        );
        assert!(!SANDBOX_CSP.contains("allow-same-origin"));
        assert_eq!(all(&h, "x-content-type-options"), ["nosniff"]);
        assert_eq!(all(&h, "www-authenticate"), ["Bearer realm=\"api\""]);
        // Document-scoped headers stay.
        assert_eq!(all(&h, "refresh"), ["5; url=/elsewhere"]);
        assert_eq!(all(&h, "cache-control"), ["max-age=60"]);
        assert_eq!(all(&h, "content-type"), ["text/html"]);
    }

    #[test]
    fn a_bare_response_gets_the_sandbox() {
        let mut h = HeaderMap::new();
        assert_eq!(sandbox_path_response(&mut h), Removed::default());
        assert_eq!(all(&h, "content-security-policy"), [SANDBOX_CSP]);
        assert_eq!(all(&h, "x-content-type-options"), ["nosniff"]);
    }

    #[test]
    fn prompting_challenges() {
        for p in [
            "Basic realm=x",
            "digest realm=x",
            "Negotiate",
            "Bearer, NTLM",
        ] {
            assert!(prompts(&HeaderValue::from_static(p)), "{p}");
        }
        for q in ["Bearer realm=\"basic\"", "DPoP algs=\"ES256\""] {
            assert!(!prompts(&HeaderValue::from_static(q)), "{q}");
        }
    }

    #[test]
    fn request_cookies_are_stripped_and_counted() {
        let mut h = map(&[("cookie", "a=1; b=2"), ("cookie", "c=3"), ("accept", "*/*")]);
        assert_eq!(strip_request_cookies(&mut h), 3);
        assert!(h.get("cookie").is_none());
        assert!(h.get("accept").is_some());
        assert_eq!(strip_request_cookies(&mut h), 0);
    }

    #[test]
    fn service_worker_script_fetches_are_recognised() {
        assert!(is_service_worker_fetch(&map(&[(
            "service-worker",
            "script"
        )])));
        assert!(!is_service_worker_fetch(&map(&[("accept", "*/*")])));
    }

    #[test]
    fn host_routes_keep_own_cookies_and_drop_parent_domain_ones() {
        let host = "vault-abc.bundles.example.com";
        let mut h = map(&[
            ("set-cookie", "own=1; Path=/; HttpOnly"),
            (
                "set-cookie",
                "exact=1; Domain=vault-abc.bundles.example.com",
            ),
            (
                "set-cookie",
                "dotted=1; domain=.VAULT-ABC.bundles.example.com",
            ),
            ("set-cookie", "toss=1; Domain=bundles.example.com; Path=/"),
            ("set-cookie", "far=1; Domain=example.com"),
            ("set-cookie", "sib=1; Domain=other-abc.bundles.example.com"),
            ("content-security-policy", "default-src 'self'"),
            ("clear-site-data", "\"cache\""),
        ]);
        assert_eq!(filter_host_cookies(&mut h, host), 3);
        assert_eq!(
            all(&h, "set-cookie"),
            [
                "own=1; Path=/; HttpOnly",
                "exact=1; Domain=vault-abc.bundles.example.com",
                "dotted=1; domain=.VAULT-ABC.bundles.example.com"
            ]
        );
        // Nothing else is touched on the bundle's own origin.
        assert_eq!(all(&h, "content-security-policy"), ["default-src 'self'"]);
        assert_eq!(all(&h, "clear-site-data"), ["\"cache\""]);
        assert!(h.get("x-content-type-options").is_none());
    }
}
