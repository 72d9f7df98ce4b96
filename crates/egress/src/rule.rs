//! The bundle's `net` list as rules: `host:port`, or a bare `host` meaning port 443 only (not
//! Deno's "any port": a bare name must not open a host's databases and admin ports too); IPv4
//! literals, IPv6 literals bare (`::1`, port 443) or bracketed (`[::1]`, `[::1]:80`). Host names
//! compare case-insensitively, one trailing dot ignored. No wildcards.
//!
//! Owns: parsing entries and destinations and deciding whether a host:port is listed. Must not
//! touch: addresses after resolution (see `addr`), the network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::EgressError;

/// A destination host: a lower-case DNS name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Lower case, no trailing dot.
    Name(String),
    /// IP literal (IPv4-mapped IPv6 kept as written; the address check unmaps it).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// The port of a `net` entry written without one (https).
pub const DEFAULT_PORT: u16 = 443;

/// One `net` entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    pub host: Host,
    /// The one port this entry opens ([`DEFAULT_PORT`] when the entry names none).
    pub port: u16,
}

impl fmt::Display for NetRule {
    /// Always `host:port`: also the form Deno's `--allow-net` gets, so both layers agree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl NetRule {
    /// Parses one manifest `net` entry.
    pub fn parse(entry: &str) -> Result<NetRule, EgressError> {
        let bad = |why: &str| EgressError::InvalidNetRule(entry.to_string(), why.to_string());
        if entry.contains('*') {
            return Err(bad("wildcards are not supported; list each host"));
        }
        let (host, port) = split_host_port(entry).map_err(|e| bad(&e))?;
        Ok(NetRule {
            host,
            port: port.unwrap_or(DEFAULT_PORT),
        })
    }

    /// Parses a whole `net` list; the first bad entry is the error.
    pub fn parse_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<NetRule>, EgressError> {
        entries.iter().map(|e| NetRule::parse(e.as_ref())).collect()
    }
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal.
pub(crate) fn split_host_port(s: &str) -> Result<(Host, Option<u16>), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "'[' without ']'".to_string())?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("'{inside}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| "expected ':port' after ']'".to_string())?,
            )?),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Ok((Host::Ip(IpAddr::V6(ip)), None));
    }
    let (h, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    Ok((parse_host(h)?, port))
}

/// A host without port: IPv4 literal or DNS name (IPv6 must be bracketed by the caller).
pub(crate) fn parse_host(h: &str) -> Result<Host, String> {
    if let Ok(a) = h.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(a)));
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|a| Host::Ip(IpAddr::V6(a)))
            .map_err(|_| format!("'{inner}' is not an IPv6 address"));
    }
    let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("host name must be 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("host name labels must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("host names may contain only letters, digits, '-', '_' and '.'".into());
        }
    }
    Ok(Host::Name(name))
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port '{p}' must be a number from 1 to 65535"));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port '{p}' must be a number from 1 to 65535")),
        Ok(n) => Ok(n),
    }
}

/// At most this many rules are named in a refusal, so a long list stays a short body.
const NAMED_RULES: usize = 8;

fn list(rules: &[&NetRule]) -> String {
    if rules.is_empty() {
        return "empty".into();
    }
    let mut s: Vec<String> = rules
        .iter()
        .take(NAMED_RULES)
        .map(|r| r.to_string())
        .collect();
    if rules.len() > NAMED_RULES {
        s.push(format!("and {} more", rules.len() - NAMED_RULES));
    }
    s.join(", ")
}

/// Ok when some rule lists `host` with `port`; otherwise the refusal names the rules that were
/// close (same host) or the whole list.
pub fn check(rules: &[NetRule], host: &Host, port: u16) -> Result<(), EgressError> {
    let same_host: Vec<&NetRule> = rules.iter().filter(|r| host_eq(&r.host, host)).collect();
    if same_host.iter().any(|r| r.port == port) {
        return Ok(());
    }
    if same_host.is_empty() {
        let all: Vec<&NetRule> = rules.iter().collect();
        Err(EgressError::HostNotListed {
            host: host.to_string(),
            port,
            rules: list(&all),
        })
    } else {
        Err(EgressError::PortNotListed {
            host: host.to_string(),
            port,
            rules: list(&same_host),
        })
    }
}

fn host_eq(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Name(x), Host::Name(y)) => x == y,
        // `::ffff:1.2.3.4` and `1.2.3.4` name the same destination.
        (Host::Ip(x), Host::Ip(y)) => x.to_canonical() == y.to_canonical(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Host {
        Host::Name(n.into())
    }
    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn parses_deno_forms() {
        // A bare host is port 443 only.
        let ok: &[(&str, Host, u16)] = &[
            ("example.com", name("example.com"), 443),
            ("Example.COM", name("example.com"), 443),
            ("example.com.", name("example.com"), 443),
            ("example.com:443", name("example.com"), 443),
            ("EXAMPLE.com:1", name("example.com"), 1),
            ("a.b.c.d.e:65535", name("a.b.c.d.e"), 65535),
            ("localhost:8080", name("localhost"), 8080),
            ("_srv.x-y.example", name("_srv.x-y.example"), 443),
            ("1.2.3.4", ip("1.2.3.4"), 443),
            ("1.2.3.4:80", ip("1.2.3.4"), 80),
            ("::1", ip("::1"), 443),
            ("2001:db8::1", ip("2001:db8::1"), 443),
            ("[::1]", ip("::1"), 443),
            ("[::1]:80", ip("::1"), 80),
            ("[2001:DB8::1]:443", ip("2001:db8::1"), 443),
            ("[::ffff:127.0.0.1]:80", ip("::ffff:127.0.0.1"), 80),
        ];
        for (s, h, p) in ok {
            let r = NetRule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((&r.host, r.port), (h, *p), "{s}");
        }
        assert_eq!(
            NetRule::parse("Example.com").unwrap().to_string(),
            "example.com:443"
        );
        assert_eq!(NetRule::parse("::1").unwrap().to_string(), "[::1]:443");
    }

    #[test]
    fn refuses_junk() {
        let bad = [
            "",
            ":",
            ":80",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:99999999999999999999",
            "example.com:+80",
            "example.com:-1",
            "example.com:8o",
            "*.example.com",
            "*",
            "example..com",
            ".example.com",
            "exa mple.com",
            "exämple.com",
            "example.com/path",
            "user@example.com",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[1.2.3.4]",
            "[zz::1]:80",
            "::1:80:x",
            "a:b:c",
            "1.2.3.4:80:80",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
            "\0",
            "example.com\n",
        ];
        for s in bad {
            let e = NetRule::parse(s).expect_err(s);
            assert_eq!(e.code(), "InvalidNetRule", "{s}");
        }
    }

    #[test]
    fn no_panic_on_arbitrary_bytes() {
        // Deterministic pseudo-random strings over a hostile alphabet.
        let alphabet: Vec<char> = "[]:.*-_0123456789abfxAZ:% @/\u{0}é".chars().collect();
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = NetRule::parse(&s);
        }
    }

    #[test]
    fn check_host_and_port() {
        let rules = NetRule::parse_list(&[
            "api.example.com:443",
            "any.example.com",
            "10.1.2.3:80",
            "[::1]:8080",
        ])
        .unwrap();
        let cases: &[(Host, u16, Result<(), &str>)] = &[
            (name("api.example.com"), 443, Ok(())),
            (name("api.example.com"), 80, Err("EgressPortNotListed")),
            // A bare host opens 443 only, not every port.
            (name("any.example.com"), 443, Ok(())),
            (name("any.example.com"), 80, Err("EgressPortNotListed")),
            (name("any.example.com"), 5432, Err("EgressPortNotListed")),
            (name("any.example.com"), 65535, Err("EgressPortNotListed")),
            (name("example.com"), 443, Err("EgressHostNotListed")),
            (
                name("evil-api.example.com"),
                443,
                Err("EgressHostNotListed"),
            ),
            (
                name("api.example.com.evil"),
                443,
                Err("EgressHostNotListed"),
            ),
            (ip("10.1.2.3"), 80, Ok(())),
            (ip("::ffff:10.1.2.3"), 80, Ok(())),
            (ip("10.1.2.3"), 81, Err("EgressPortNotListed")),
            (ip("::1"), 8080, Ok(())),
            (ip("127.0.0.1"), 8080, Err("EgressHostNotListed")),
            (name("localhost"), 8080, Err("EgressHostNotListed")),
        ];
        for (h, p, want) in cases {
            let got = check(&rules, h, *p).map_err(|e| e.code());
            assert_eq!(got, *want, "{h}:{p}");
        }
    }

    #[test]
    fn refusal_names_rules() {
        let rules = NetRule::parse_list(&["api.example.com:443"]).unwrap();
        let e = check(&rules, &name("api.example.com"), 80).unwrap_err();
        assert!(e.to_string().contains("api.example.com:443"), "{e}");
        let e = check(&[], &name("x.example"), 80).unwrap_err();
        assert!(e.to_string().contains("(empty)"), "{e}");
        let many: Vec<String> = (0..20).map(|i| format!("h{i}.example")).collect();
        let e = check(&NetRule::parse_list(&many).unwrap(), &name("x"), 1).unwrap_err();
        assert!(e.to_string().contains("and 12 more"), "{e}");
    }
}
