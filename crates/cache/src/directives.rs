//! `Cache-Control` (and `Pragma: no-cache`) as the cache reads them. Unknown directives are
//! ignored; a directive with a field list (`private="x"`, `no-cache="x"`) counts as the bare
//! directive, which can only make the cache store less.

use http::header::{self, HeaderMap};

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) max_age: Option<u64>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

impl RequestDirectives {
    pub(crate) fn parse(h: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        for (name, value) in directives(h) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = seconds(value.as_deref()).or(Some(0)),
                _ => {}
            }
        }
        // HTTP/1.0's `Pragma: no-cache`, when `Cache-Control` is absent (RFC 9111 §5.4).
        if !h.contains_key(header::CACHE_CONTROL)
            && h.get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                })
        {
            d.no_cache = true;
        }
        d
    }
}

impl ResponseDirectives {
    pub(crate) fn parse(h: &HeaderMap) -> Self {
        let mut d = ResponseDirectives::default();
        for (name, value) in directives(h) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                // A malformed lifetime makes the response unstorable, never longer-lived.
                "max-age" => d.max_age = Some(seconds(value.as_deref()).unwrap_or(0)),
                "s-maxage" => d.s_maxage = Some(seconds(value.as_deref()).unwrap_or(0)),
                _ => {}
            }
        }
        d
    }
}

/// Delta-seconds (RFC 9111 §1.2.2): digits only, optionally quoted; too large saturates.
fn seconds(v: Option<&str>) -> Option<u64> {
    let v = v?.trim().trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

/// Every directive of every `Cache-Control` field: lower-cased name, optional value. A field
/// that is not visible ASCII counts as `no-store`: the cache cannot tell what it says.
fn directives(h: &HeaderMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for v in h.get_all(header::CACHE_CONTROL) {
        let Ok(s) = v.to_str() else {
            out.push(("no-store".to_string(), None));
            continue;
        };
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (part, None),
            };
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}
