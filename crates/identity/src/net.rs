//! HTTP plumbing for identity look-ups: the URL policy (https, or plain http to loopback only when
//! allowed) and a size-capped, time-limited GET. Must not interpret response bodies.

use crate::error::IdentityError;
use std::time::Duration;
use url::{Host, Url};

/// True when the URL's host is `localhost`, an IPv4 loopback address or `::1`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The URL policy for everything identity fetches or hands on (PLC, did:web, PDS endpoint,
/// resolveHandle service): https with a host, or http to a loopback host when allowed.
pub(crate) fn check_url(url: &Url, allow_http_loopback: bool) -> Result<(), IdentityError> {
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(IdentityError::InsecureUrl(format!(
            "{url} (needs a host and no credentials)"
        )));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http_loopback && is_loopback(url) => Ok(()),
        _ => Err(IdentityError::InsecureUrl(url.to_string())),
    }
}

/// A fetched response: status and a body no larger than the cap.
pub(crate) struct Fetched {
    pub status: reqwest::StatusCode,
    pub body: Vec<u8>,
}

/// GETs `url`, reading at most `cap` bytes of body, all within `timeout`. Network failures and
/// timeouts become `Unreachable`; a body over the cap is `Unreachable` too (the server is not
/// serving a usable answer) with a reason saying so.
pub(crate) async fn get_capped(
    client: &reqwest::Client,
    url: &Url,
    cap: usize,
    timeout: Duration,
    accept: &str,
) -> Result<Fetched, IdentityError> {
    let fut = async {
        let mut resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| IdentityError::unreachable(url.as_str(), describe(&e)))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_big(url, cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| IdentityError::unreachable(url.as_str(), describe(&e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(too_big(url, cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { status, body })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        IdentityError::unreachable(url.as_str(), format!("timed out after {timeout:?}"))
    })?
}

fn too_big(url: &Url, cap: usize) -> IdentityError {
    IdentityError::unreachable(url.as_str(), format!("response is larger than {cap} bytes"))
}

/// reqwest's Display hides the cause; walk the source chain for a useful one-line reason.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        let ok = |u: &str, allow| check_url(&Url::parse(u).unwrap(), allow).is_ok();
        assert!(ok("https://plc.directory", false));
        assert!(ok("https://example.com:8443/x", false));
        assert!(!ok("http://plc.directory", false));
        assert!(!ok("http://plc.directory", true));
        assert!(!ok("http://localhost:2582", false));
        assert!(ok("http://localhost:2582", true));
        assert!(ok("http://LOCALHOST:2582", true));
        assert!(ok("http://127.0.0.1:1", true));
        assert!(ok("http://127.3.4.5:1", true));
        assert!(ok("http://[::1]:1", true));
        assert!(!ok("http://10.0.0.1", true));
        assert!(!ok("http://localhost.evil.com", true));
        assert!(!ok("ftp://localhost", true));
        assert!(!ok("https://user:pw@example.com", false));
        assert!(!ok("file:///etc/passwd", true));
    }
}
