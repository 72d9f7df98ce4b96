//! The `Server-Timing` header of invocation responses (W3C Server Timing): the cold-start phases
//! a request went through and the bundle's own time, so an author sees in the browser's devtools
//! why a call was slow (docs/http-api.md).
//!
//! Owns: which phases appear and how they are written. Must not touch: measuring them (the
//! pipeline and the pool do), or the bundle's own `Server-Timing` lines (kept as they are; ours
//! is appended as a further line, which HTTP reads as one list).
//!
//! Only fixed metric names and durations are written: no host names, paths, DIDs or versions.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// `http` has no constant for it.
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// What one request spent where; a phase that did not happen on this request is `None`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// Resolving the author (cache included); only with a cold start.
    pub identity: Option<Duration>,
    /// Loading and verifying the bundle (or the dev folder's snapshot); only with a cold start.
    pub fetch: Option<Duration>,
    /// The pool's start of the instance this request waited for as its starter.
    pub start: Option<Duration>,
    /// From the call into the instance until its response head.
    pub bundle: Option<Duration>,
}

impl Phases {
    /// `identity;dur=1.204, fetch;dur=35.010, ...` in milliseconds, in pipeline order; `None`
    /// when no phase happened.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let mut out = String::with_capacity(64);
        for (name, d) in [
            ("identity", self.identity),
            ("fetch", self.fetch),
            ("start", self.start),
            ("bundle", self.bundle),
        ] {
            let Some(d) = d else { continue };
            if !out.is_empty() {
                out.push_str(", ");
            }
            // Microsecond resolution: a warm call can take well under a millisecond. Integer
            // arithmetic: formatting an f64 was a visible share of a warm call's own work.
            let us = (d.as_nanos() + 500) / 1000;
            out.push_str(name);
            out.push_str(";dur=");
            push_millis(&mut out, us);
        }
        if out.is_empty() {
            return None;
        }
        // Only ASCII letters, digits and `;=,. ` were written, so this cannot fail.
        HeaderValue::from_str(&out).ok()
    }

    /// Appends the header to `headers`, after any `Server-Timing` lines the bundle set.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.header_value() {
            headers.append(SERVER_TIMING, v);
        }
    }
}

/// `us` microseconds as milliseconds with three decimals (`12.045`), digit by digit: the
/// formatter's width and padding handling cost more than the rest of the header.
fn push_millis(out: &mut String, us: u128) {
    let ms = us / 1000;
    let frac = us % 1000;
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    let mut n = ms;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
    out.push('.');
    for div in [100, 10, 1] {
        out.push(char::from(b'0' + (frac / div % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_written_as_the_formatter_would() {
        for us in [
            0u128,
            1,
            9,
            10,
            999,
            1000,
            1001,
            12_045,
            4_294_967_296_123,
            u128::MAX,
        ] {
            let mut out = String::new();
            push_millis(&mut out, us);
            assert_eq!(out, format!("{}.{:03}", us / 1000, us % 1000));
        }
    }

    #[test]
    fn phases_in_order_in_milliseconds_and_only_those_that_happened() {
        let all = Phases {
            identity: Some(Duration::from_micros(1204)),
            fetch: Some(Duration::from_millis(35)),
            start: Some(Duration::from_micros(40_100)),
            bundle: Some(Duration::from_micros(812)),
        };
        assert_eq!(
            all.header_value().unwrap(),
            "identity;dur=1.204, fetch;dur=35.000, start;dur=40.100, bundle;dur=0.812"
        );
        let warm = Phases {
            bundle: Some(Duration::from_nanos(4_500)),
            ..Phases::default()
        };
        assert_eq!(warm.header_value().unwrap(), "bundle;dur=0.005");
        assert_eq!(Phases::default().header_value(), None);
    }

    #[test]
    fn appended_after_the_bundles_own_lines() {
        let mut h = HeaderMap::new();
        h.insert(SERVER_TIMING, HeaderValue::from_static("db;dur=3"));
        let p = Phases {
            bundle: Some(Duration::from_millis(4)),
            ..Phases::default()
        };
        p.append_to(&mut h);
        let lines: Vec<_> = h
            .get_all(SERVER_TIMING)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(lines, ["db;dur=3", "bundle;dur=4.000"]);
        Phases::default().append_to(&mut h);
        assert_eq!(h.get_all(SERVER_TIMING).iter().count(), 2);
    }
}
