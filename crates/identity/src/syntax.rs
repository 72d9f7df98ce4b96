//! Identifier syntax: `Did`, `Handle`, `AtIdentifier`. Owns parsing and normalisation per the
//! atproto DID and handle specs; must not touch the network. A value of these types is always
//! syntactically valid, so later code never re-checks it.

use crate::error::IdentityError;
use std::fmt;
use std::str::FromStr;

/// Longest DID the atproto spec accepts.
const MAX_DID_LEN: usize = 2048;
/// Longest handle (a DNS name).
const MAX_HANDLE_LEN: usize = 253;
/// TLDs the handle spec says never resolve.
const RESERVED_TLDS: &[&str] = &[
    "alt",
    "arpa",
    "example",
    "internal",
    "invalid",
    "local",
    "localhost",
    "onion",
];

/// A syntactically valid DID. did:plc and did:web get their method-specific checks; other
/// methods are accepted by syntax and refused at resolution (`UnsupportedMethod`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did(String);

impl Did {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The method name, e.g. `plc` or `web`.
    pub fn method(&self) -> &str {
        // Parsing guarantees "did:<method>:<rest>".
        self.0
            .get(4..)
            .and_then(|s| s.split(':').next())
            .unwrap_or("")
    }

    /// The method-specific identifier (everything after `did:<method>:`).
    pub fn method_specific_id(&self) -> &str {
        let skip = 4 + self.method().len() + 1;
        self.0.get(skip..).unwrap_or("")
    }

    /// For did:web: the host and the optional port (only `localhost%3A<port>` carries one).
    pub fn web_host(&self) -> Option<(&str, Option<u16>)> {
        if self.method() != "web" {
            return None;
        }
        let id = self.method_specific_id();
        match split_localhost_port(id) {
            Some(port) => Some(("localhost", Some(port))),
            None => Some((id, None)),
        }
    }
}

/// `localhost%3A<port>` (case-insensitive `%3a`) → the port.
fn split_localhost_port(id: &str) -> Option<u16> {
    let rest = id
        .strip_prefix("localhost%3A")
        .or_else(|| id.strip_prefix("localhost%3a"))?;
    if rest.is_empty() || rest.len() > 5 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse::<u16>().ok().filter(|p| *p != 0)
}

impl FromStr for Did {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| IdentityError::bad_did(s, reason);
        if s.len() > MAX_DID_LEN {
            return Err(bad("longer than 2048 characters"));
        }
        let rest = s
            .strip_prefix("did:")
            .ok_or_else(|| bad("must start with 'did:'"))?;
        let (method, id) = rest
            .split_once(':')
            .ok_or_else(|| bad("must be did:<method>:<identifier>"))?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(bad("the method must be lowercase letters"));
        }
        if id.is_empty() {
            return Err(bad("the method-specific identifier is empty"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
        {
            return Err(bad("contains a character outside [a-zA-Z0-9._:%-]"));
        }
        if id.ends_with(':') || id.ends_with('%') {
            return Err(bad("must not end with ':' or '%'"));
        }
        match method {
            "plc"
                if id.len() != 24
                    || !id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) =>
            {
                return Err(bad("did:plc needs exactly 24 lowercase base32 characters"));
            }
            "web" => {
                if id.contains(':') {
                    return Err(bad(
                        "did:web must be a bare hostname; paths are not allowed in atproto",
                    ));
                }
                if id.contains('%') {
                    if split_localhost_port(id).is_none() {
                        return Err(bad(
                            "did:web may only percent-encode a port, and only as localhost%3A<port>",
                        ));
                    }
                } else if id != "localhost" {
                    check_hostname(id).map_err(|r| bad(&format!("did:web host: {r}")))?;
                }
            }
            _ => {}
        }
        Ok(Did(s.to_string()))
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Did {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Did {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A syntactically valid handle, normalised to lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);

impl Handle {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the handle's TLD is one the spec says never resolves (`.invalid`, `.local`, ...).
    /// `handle.invalid` is the marker for "no valid handle".
    pub fn is_reserved(&self) -> bool {
        self.0
            .rsplit('.')
            .next()
            .is_some_and(|tld| RESERVED_TLDS.contains(&tld))
    }
}

impl FromStr for Handle {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        check_hostname(&lower).map_err(|r| IdentityError::bad_handle(s, r))?;
        Ok(Handle(lower))
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Handle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Handle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Handle syntax (a DNS hostname with at least two labels and a TLD that starts with a letter).
/// Expects lowercase input for the label check; callers lowercase first where the spec says so.
fn check_hostname(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_HANDLE_LEN {
        return Err("longer than 253 characters");
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err("needs at least two dot-separated labels");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err("each label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("labels may only contain a-z, 0-9 and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels must not start or end with '-'");
        }
    }
    if labels
        .last()
        .and_then(|tld| tld.bytes().next())
        .is_none_or(|b| !b.is_ascii_lowercase())
    {
        return Err("the top-level domain must start with a letter");
    }
    Ok(())
}

/// Either a DID or a handle, as accepted in URLs (`/bundle/{did-or-handle}/...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AtIdentifier {
    Did(Did),
    Handle(Handle),
}

impl FromStr for AtIdentifier {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("did:") {
            s.parse().map(AtIdentifier::Did)
        } else {
            s.parse().map(AtIdentifier::Handle)
        }
    }
}

impl fmt::Display for AtIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AtIdentifier::Did(d) => d.fmt(f),
            AtIdentifier::Handle(h) => h.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_dids() {
        for ok in [
            "did:plc:z72i7hdynmk6r22z27h6tvur",
            "did:web:blueskyweb.xyz",
            "did:web:localhost%3A2583",
            "did:web:localhost",
            "did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w",
            "did:method:val:two",
            "did:m:v",
            "did:example:a.b_c-d%20e",
        ] {
            let d: Did = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(d.as_str(), ok);
            assert_eq!(d.to_string(), ok);
        }
        let d: Did = "did:web:localhost%3A2583".parse().unwrap();
        assert_eq!(d.method(), "web");
        assert_eq!(d.web_host(), Some(("localhost", Some(2583))));
        let d: Did = "did:plc:z72i7hdynmk6r22z27h6tvur".parse().unwrap();
        assert_eq!(d.method(), "plc");
        assert_eq!(d.method_specific_id(), "z72i7hdynmk6r22z27h6tvur");
        assert_eq!(d.web_host(), None);
    }

    #[test]
    fn invalid_dids() {
        for bad in [
            "",
            "did",
            "did:",
            "did:plc",
            "did:plc:",
            "DID:plc:z72i7hdynmk6r22z27h6tvur",
            "did:PLC:z72i7hdynmk6r22z27h6tvur",
            "did:plc:z72i7hdynmk6r22z27h6tvu",   // 23
            "did:plc:z72i7hdynmk6r22z27h6tvurr", // 25
            "did:plc:Z72I7HDYNMK6R22Z27H6TVUR",  // uppercase
            "did:plc:z72i7hdynmk6r22z27h6tv01",  // 0,1 not base32
            "did:web:example.com:user:alice",    // path
            "did:web:example.com%3A8080",        // port on non-localhost
            "did:web:localhost%3A",              // ends with nothing
            "did:web:localhost%3Aabc",
            "did:web:localhost%3A99999",
            "did:web:localhost%3A0",
            "did:web:exa_mple.com",
            "did:web:-bad.com",
            "did:web:single",
            "did:m:v:",
            "did:m:v%",
            "did:m:v?q",
            "did:m:v#f",
            "did:m:v w",
            "did:m:vé",
            "did:1:x",
        ] {
            let r = bad.parse::<Did>();
            assert!(r.is_err(), "{bad:?} parsed");
            assert_eq!(r.unwrap_err().code(), "DidInvalid");
        }
        let long = format!("did:m:{}", "a".repeat(2100));
        assert!(long.parse::<Did>().is_err());
    }

    #[test]
    fn did_serde_is_a_string() {
        let d: Did = "did:plc:z72i7hdynmk6r22z27h6tvur".parse().unwrap();
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, "\"did:plc:z72i7hdynmk6r22z27h6tvur\"");
        assert_eq!(serde_json::from_str::<Did>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Did>("\"did:plc:nope\"").is_err());
        assert!(serde_json::from_str::<Did>("42").is_err());
    }

    #[test]
    fn handles() {
        let h: Handle = "Alice.Bsky.Social".parse().unwrap();
        assert_eq!(h.as_str(), "alice.bsky.social");
        assert_eq!(h.to_string(), "alice.bsky.social");
        for ok in [
            "alice.test",
            "a.co",
            "xn--ls8h.example",
            "1.2.io",
            "a-b.c-d.e",
        ] {
            assert!(ok.parse::<Handle>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "alice",
            ".alice.test",
            "alice.test.",
            "alice..test",
            "-alice.test",
            "alice-.test",
            "alice.1test",
            "alice.te_st",
            "al ice.test",
            "alicé.test",
            "did:plc:x.y",
            "at://alice.test",
        ] {
            let r = bad.parse::<Handle>();
            assert!(r.is_err(), "{bad:?} parsed");
            assert_eq!(r.unwrap_err().code(), "HandleInvalid");
        }
        let label63 = "a".repeat(63);
        assert!(format!("{label63}.test").parse::<Handle>().is_ok());
        assert!(format!("{label63}a.test").parse::<Handle>().is_err());
        let long = format!("{}.test", ["abc"; 70].join("."));
        assert!(long.parse::<Handle>().is_err());
        assert!("handle.invalid".parse::<Handle>().unwrap().is_reserved());
        assert!("x.onion".parse::<Handle>().unwrap().is_reserved());
        assert!(!"alice.test".parse::<Handle>().unwrap().is_reserved());
    }

    #[test]
    fn at_identifier() {
        assert!(matches!(
            "did:plc:z72i7hdynmk6r22z27h6tvur".parse::<AtIdentifier>(),
            Ok(AtIdentifier::Did(_))
        ));
        assert!(matches!(
            "Alice.Test".parse::<AtIdentifier>(),
            Ok(AtIdentifier::Handle(h)) if h.as_str() == "alice.test"
        ));
        assert_eq!(
            "did:nope".parse::<AtIdentifier>().unwrap_err().code(),
            "DidInvalid"
        );
        assert_eq!(
            "nope".parse::<AtIdentifier>().unwrap_err().code(),
            "HandleInvalid"
        );
    }

    #[test]
    fn arbitrary_bytes_do_not_panic() {
        // A cheap deterministic fuzz: every short string over an alphabet of tricky characters.
        let alphabet = [
            'd', 'i', ':', 'p', 'l', 'c', '.', '%', '3', 'A', '-', 'é', 'w', 'e', 'b',
        ];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 20) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i * 3)) as usize + i) % alphabet.len()])
                .collect();
            let _ = s.parse::<Did>();
            let _ = s.parse::<Handle>();
            let _ = s.parse::<AtIdentifier>();
        }
    }
}
