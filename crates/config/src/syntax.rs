//! Syntax of DIDs and handles as ATProto defines them, for checking allow-list entries.
//!
//! Owns: pure string checks. Must not touch: resolution (that is `atrund-identity`'s job).
//! Hand-rolled rather than a regex crate: two short rules, no new dependency, no backtracking.

/// Longest DID ATProto accepts.
const MAX_DID_LEN: usize = 2048;
/// Longest handle (a DNS name).
const MAX_HANDLE_LEN: usize = 253;

/// `did:<method>:<id>`: method of a-z, id of `A-Za-z0-9._:%-` with `%` followed by two hex digits,
/// not ending in `:` or `%`.
pub fn is_valid_did(s: &str) -> bool {
    if s.len() > MAX_DID_LEN {
        return false;
    }
    let Some(rest) = s.strip_prefix("did:") else {
        return false;
    };
    let Some((method, id)) = rest.split_once(':') else {
        return false;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    if id.is_empty() || id.ends_with(':') {
        return false;
    }
    let b = id.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b.get(i) {
            Some(b'%') => {
                let hex = |j: usize| b.get(j).is_some_and(|c| c.is_ascii_hexdigit());
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-') => {
                i += 1
            }
            _ => return false,
        }
    }
    true
}

/// A DNS name of at least two labels, each 1-63 of `A-Za-z0-9-` not starting or ending with `-`,
/// the last starting with a letter; 253 characters at most.
pub fn is_valid_handle(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_HANDLE_LEN {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Longest `http.bundle_domain`: a 63-character bundle label and its dot must still fit in a
/// 253-character host name.
pub const MAX_BUNDLE_DOMAIN_LEN: usize = 253 - 64;

/// A lower-case DNS name for `http.bundle_domain`: one or more labels of 1-63 `a-z0-9-`, not
/// starting or ending with `-`, at most [`MAX_BUNDLE_DOMAIN_LEN`] characters. Lower case only,
/// because the runner compares it with the request's `Host` byte for byte after lower-casing.
pub fn is_valid_bundle_domain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_BUNDLE_DOMAIN_LEN && s.split('.').all(is_dns_label)
}

/// One lower-case DNS label: 1-63 characters of `a-z0-9-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids() {
        for ok in [
            "did:plc:z72i7hdynmk6r22z27h6tvur",
            "did:web:example.com",
            "did:web:localhost%3A2583",
            "did:method:a:b",
        ] {
            assert!(is_valid_did(ok), "{ok}");
        }
        for bad in [
            "",
            "did:",
            "did:plc",
            "did:plc:",
            "did:PLC:abc",
            "did::abc",
            "did:plc:abc:",
            "did:web:a%3",
            "did:web:a%zz",
            "did:plc:a b",
            "DID:plc:abc",
            "did:plc:é",
            "alice.test",
        ] {
            assert!(!is_valid_did(bad), "{bad}");
        }
        assert!(!is_valid_did(&format!("did:plc:{}", "a".repeat(2048))));
    }

    #[test]
    fn handles() {
        for ok in ["alice.test", "Alice.Bsky.Social", "a-b.c1.example", "x.y"] {
            assert!(is_valid_handle(ok), "{ok}");
        }
        for bad in [
            "",
            "alice",
            "@alice.test",
            ".alice.test",
            "alice.test.",
            "alice..test",
            "-a.test",
            "a-.test",
            "a.1test",
            "a_b.test",
            "alice.té",
            "did:plc:abc",
            "open",
        ] {
            assert!(!is_valid_handle(bad), "{bad}");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(!is_valid_handle(&long));
        let too_long = format!("{}test", "abcdefghi.".repeat(25));
        assert!(too_long.len() > 253 && !is_valid_handle(&too_long));
    }

    #[test]
    fn bundle_domains() {
        for ok in ["bundles.example.com", "localhost", "b-1.localhost", "x.y.z"] {
            assert!(is_valid_bundle_domain(ok), "{ok}");
        }
        for bad in [
            "",
            "Bundles.example.com",
            "*.example.com",
            ".example.com",
            "example.com.",
            "example.com:8080",
            "https://example.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
        ] {
            assert!(!is_valid_bundle_domain(bad), "{bad}");
        }
        assert!(!is_valid_bundle_domain(&format!("{}.com", "a".repeat(64))));
        let long = format!("{}com", "abcdefghi.".repeat(19));
        assert!(long.len() > MAX_BUNDLE_DOMAIN_LEN && !is_valid_bundle_domain(&long));
    }
}
