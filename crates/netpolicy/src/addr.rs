//! Which resolved addresses may be connected to: a fixed classifier of special-purpose ranges
//! plus the operator's exceptions (ranges opened or refused, and single `address:port` openings).
//! Shared by the egress proxy (bundles' requests) and the runner's own requests (identity, PDS).
//!
//! Owns: the address decision after resolution, and the syntax of an opening. Must not touch:
//! names, rules, the network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    Unspecified,
    ThisNetwork,
    Loopback,
    Private,
    LinkLocal,
    CloudMetadata,
    Cgnat,
    Multicast,
    Broadcast,
    Documentation,
    Benchmark,
    SiteLocal,
    Reserved,
    /// A tunnel/translation form (6to4, Teredo, IPv4-compatible) that hides the real destination.
    Tunnel,
    /// In the operator's `deny_cidrs`.
    OperatorDenied,
}

impl BlockReason {
    /// Stable snake_case name, used in logs, counters and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::ThisNetwork => "this_network",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::CloudMetadata => "cloud_metadata",
            Self::Cgnat => "cgnat",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmark => "benchmark",
            Self::SiteLocal => "site_local",
            Self::Reserved => "reserved",
            Self::Tunnel => "tunnel",
            Self::OperatorDenied => "operator_denied",
        }
    }
}

/// Well-known instance-metadata endpoints. A wide `allow_cidrs` entry does not open them; only an
/// entry naming exactly that address (/32, /128) does.
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), // AWS, GCP, Azure, OpenStack, DigitalOcean...
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),   // AWS ECS task metadata
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), // Alibaba Cloud
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), // AWS IMDS over IPv6
];

fn v4_in(a: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v6_in(a: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (u128::from(a) & mask) == (u128::from(net) & mask)
}

/// The special-purpose class of an address, `None` for ordinary public unicast.
pub fn classify(ip: IpAddr) -> Option<BlockReason> {
    if METADATA.contains(&ip) {
        return Some(BlockReason::CloudMetadata);
    }
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<BlockReason> {
    use BlockReason::*;
    if METADATA.contains(&IpAddr::V4(a)) {
        return Some(CloudMetadata);
    }
    let table: &[([u8; 4], u8, BlockReason)] = &[
        ([0, 0, 0, 0], 32, Unspecified),
        ([0, 0, 0, 0], 8, ThisNetwork),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, Cgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved), // IETF protocol assignments (incl. NAT64 discovery)
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Tunnel), // 6to4 relay anycast
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmark),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([255, 255, 255, 255], 32, Broadcast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, len, _)| v4_in(a, *net, *len))
        .map(|(_, _, r)| *r)
}

fn classify_v6(a: Ipv6Addr) -> Option<BlockReason> {
    use BlockReason::*;
    if a.is_unspecified() {
        return Some(Unspecified);
    }
    if a.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return classify(IpAddr::V4(v4));
    }
    // ::a.b.c.d (IPv4-compatible, deprecated): nothing legitimate uses it.
    if v6_in(a, Ipv6Addr::UNSPECIFIED, 96) {
        return Some(Tunnel);
    }
    // NAT64 well-known prefix: refused when the embedded IPv4 address would be.
    if v6_in(a, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        let v4 = Ipv4Addr::from((u128::from(a) & 0xffff_ffff) as u32);
        return classify(IpAddr::V4(v4));
    }
    let table: &[(Ipv6Addr, u8, BlockReason)] = &[
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, Private),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, SiteLocal),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            Documentation,
        ),
        (
            Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
            20,
            Documentation,
        ),
        (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, Benchmark),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, Tunnel), // Teredo
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved), // IETF protocol assignments
        (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, Tunnel), // 6to4
    ];
    if let Some((_, _, r)) = table.iter().find(|(net, len, _)| v6_in(a, *net, *len)) {
        return Some(*r);
    }
    // Everything outside global unicast 2000::/3 (discard-only 100::/64, NAT64 local-use, ...).
    if !v6_in(a, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Some(Reserved);
    }
    None
}

/// The classifier plus the operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Ranges opened despite the classifier (never unspecified; metadata only by exact address).
    pub allow_cidrs: Vec<IpNet>,
    /// Ranges refused in addition; wins over `allow_cidrs`.
    pub deny_cidrs: Vec<IpNet>,
    /// Single `address:port` pairs opened despite the classifier (only by
    /// [`AddressPolicy::check_socket`]; never unspecified). Narrower than a range: a test PLC on
    /// 127.0.0.1:2582 can be opened without opening every other loopback port.
    pub allow_sockets: Vec<SocketAddr>,
}

/// One operator opening, as written in config: a range (`10.0.0.0/8`, `::1/128`: every port) or
/// one address and port (`127.0.0.1:2582`, `[::1]:2582`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    Range(IpNet),
    Socket(SocketAddr),
}

impl std::str::FromStr for Opening {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') {
            return s.parse().map(Opening::Range).map_err(|_| {
                format!("'{s}' is not an address range; write it like 192.168.1.0/24 or fd00::/8")
            });
        }
        match s.parse::<SocketAddr>() {
            Ok(sa) if sa.port() != 0 => Ok(Opening::Socket(sa)),
            _ => Err(format!(
                "'{s}' is neither a range (10.0.0.0/8) nor an address:port (127.0.0.1:2582, [::1]:2582)"
            )),
        }
    }
}

impl AddressPolicy {
    /// The policy with `openings` added to the allowed ranges and sockets.
    pub fn with_openings(mut self, openings: &[Opening]) -> Self {
        for o in openings {
            match *o {
                Opening::Range(n) => self.allow_cidrs.push(n),
                Opening::Socket(sa) => self.allow_sockets.push(canonical(sa)),
            }
        }
        self
    }

    /// Like [`AddressPolicy::check`], for one port: an `allow_sockets` entry naming exactly this
    /// address and port opens it too (but never unspecified, this network or a denied range).
    pub fn check_socket(&self, sa: SocketAddr) -> Result<SocketAddr, BlockReason> {
        let sa = canonical(sa);
        match self.check(sa.ip()) {
            Ok(ip) => Ok(SocketAddr::new(ip, sa.port())),
            Err(r @ (BlockReason::Unspecified | BlockReason::ThisNetwork)) => Err(r),
            Err(BlockReason::OperatorDenied) => Err(BlockReason::OperatorDenied),
            Err(r) => {
                if self.allow_sockets.contains(&sa) {
                    Ok(sa)
                } else {
                    Err(r)
                }
            }
        }
    }
}

/// IPv4-mapped IPv6 socket addresses as their IPv4 form, so openings and checks compare alike.
fn canonical(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(sa.ip().to_canonical(), sa.port())
}

impl AddressPolicy {
    /// `Ok(addr to connect to)` or the reason it is refused. IPv4-mapped IPv6 addresses are
    /// unmapped first, so the decision and the connection concern the same IPv4 address.
    pub fn check(&self, ip: IpAddr) -> Result<IpAddr, BlockReason> {
        let ip = ip.to_canonical();
        if self.deny_cidrs.iter().any(|n| n.contains(&ip)) {
            return Err(BlockReason::OperatorDenied);
        }
        match classify(ip) {
            None => Ok(ip),
            // Connecting to 0.0.0.0 or :: reaches this host; no exception opens it.
            Some(r @ (BlockReason::Unspecified | BlockReason::ThisNetwork)) => Err(r),
            Some(BlockReason::CloudMetadata) => {
                let exact = self
                    .allow_cidrs
                    .iter()
                    .any(|n| n.prefix_len() == n.max_prefix_len() && n.addr() == ip);
                if exact {
                    Ok(ip)
                } else {
                    Err(BlockReason::CloudMetadata)
                }
            }
            Some(r) => {
                if self.allow_cidrs.iter().any(|n| n.contains(&ip)) {
                    Ok(ip)
                } else {
                    Err(r)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockReason::*;

    fn c(s: &str) -> Option<BlockReason> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classifier_table() {
        let cases: &[(&str, Option<BlockReason>)] = &[
            // public
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.0.1.1", None),
            ("192.169.0.1", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:80b::200e", None),
            ("64:ff9b::808:808", None), // NAT64 of 8.8.8.8
            ("::ffff:8.8.8.8", None),
            // v4 special
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("100.64.0.1", Some(Cgnat)),
            ("100.127.255.255", Some(Cgnat)),
            ("100.100.100.200", Some(CloudMetadata)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.170.2", Some(CloudMetadata)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.0.0.170", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("192.88.99.1", Some(Tunnel)),
            ("192.168.1.1", Some(Private)),
            ("198.18.0.1", Some(Benchmark)),
            ("198.19.255.255", Some(Benchmark)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            // v6 special
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::127.0.0.1", Some(Tunnel)),
            ("::8.8.8.8", Some(Tunnel)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::a00:1", Some(Private)),
            ("64:ff9b:1::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmark)),
            ("2001::1", Some(Tunnel)),
            ("2001:10::1", Some(Reserved)),
            ("2002:7f00:1::1", Some(Tunnel)),
            ("4000::1", Some(Reserved)),
            ("1::1", Some(Reserved)),
        ];
        for (s, want) in cases {
            assert_eq!(c(s), *want, "{s}");
        }
    }

    #[test]
    fn exceptions() {
        let p = AddressPolicy {
            allow_cidrs: vec![
                "127.0.0.1/32".parse().unwrap(),
                "192.168.0.0/16".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
            deny_cidrs: vec!["192.168.66.0/24".parse().unwrap()],
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.check(ip("127.0.0.1")), Ok(ip("127.0.0.1")));
        // mapped form: same exception, and the connection goes to the IPv4 address
        assert_eq!(p.check(ip("::ffff:127.0.0.1")), Ok(ip("127.0.0.1")));
        assert_eq!(p.check(ip("192.168.1.5")), Ok(ip("192.168.1.5")));
        assert_eq!(p.check(ip("192.168.66.5")), Err(OperatorDenied));
        assert_eq!(p.check(ip("169.254.1.1")), Ok(ip("169.254.1.1")));
        // a wide range does not open metadata, and nothing opens unspecified
        assert_eq!(p.check(ip("169.254.169.254")), Err(CloudMetadata));
        assert_eq!(p.check(ip("0.0.0.0")), Err(Unspecified));
        assert_eq!(p.check(ip("0.0.0.1")), Err(ThisNetwork));
        assert_eq!(p.check(ip("::")), Err(Unspecified));
        // ::1 is not covered by 127.0.0.1/32
        assert_eq!(p.check(ip("::1")), Err(Loopback));
        let exact = AddressPolicy {
            allow_cidrs: vec!["169.254.169.254/32".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            exact.check(ip("169.254.169.254")),
            Ok(ip("169.254.169.254"))
        );
        let default = AddressPolicy::default();
        assert_eq!(default.check(ip("8.8.8.8")), Ok(ip("8.8.8.8")));
        assert_eq!(default.check(ip("127.0.0.1")), Err(Loopback));
        let deny_public = AddressPolicy {
            deny_cidrs: vec!["8.8.8.0/24".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(deny_public.check(ip("8.8.8.8")), Err(OperatorDenied));
        assert_eq!(deny_public.check(ip("::ffff:8.8.8.8")), Err(OperatorDenied));
    }

    #[test]
    fn socket_openings_are_port_exact() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let openings: Vec<Opening> = ["127.0.0.1:2582", "[::1]:2583", "10.1.0.0/16", "0.0.0.0:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let p = AddressPolicy {
            deny_cidrs: vec!["10.1.9.0/24".parse().unwrap()],
            ..Default::default()
        }
        .with_openings(&openings);
        assert_eq!(
            p.check_socket(sa("127.0.0.1:2582")),
            Ok(sa("127.0.0.1:2582"))
        );
        assert_eq!(
            p.check_socket(sa("[::ffff:127.0.0.1]:2582")),
            Ok(sa("127.0.0.1:2582"))
        );
        assert_eq!(p.check_socket(sa("127.0.0.1:2583")), Err(Loopback));
        assert_eq!(p.check_socket(sa("127.0.0.2:2582")), Err(Loopback));
        assert_eq!(p.check_socket(sa("[::1]:2583")), Ok(sa("[::1]:2583")));
        assert_eq!(p.check_socket(sa("[::1]:2582")), Err(Loopback));
        // ranges open every port; denied ranges win; unspecified never opens
        assert_eq!(p.check_socket(sa("10.1.2.3:9")), Ok(sa("10.1.2.3:9")));
        assert_eq!(p.check_socket(sa("10.1.9.3:9")), Err(OperatorDenied));
        assert_eq!(p.check_socket(sa("0.0.0.0:80")), Err(Unspecified));
        // the address-only check ignores socket openings
        assert_eq!(p.check("127.0.0.1".parse().unwrap()), Err(Loopback));
        assert_eq!(p.check_socket(sa("8.8.8.8:443")), Ok(sa("8.8.8.8:443")));
    }

    #[test]
    fn opening_syntax() {
        assert!(matches!("10.0.0.0/8".parse(), Ok(Opening::Range(_))));
        assert!(matches!("::1/128".parse(), Ok(Opening::Range(_))));
        assert!(matches!("[::1]:80".parse(), Ok(Opening::Socket(_))));
        assert!(matches!("127.0.0.1:2582".parse(), Ok(Opening::Socket(_))));
        for bad in [
            "127.0.0.1",
            "localhost:80",
            "127.0.0.1:0",
            "10.0.0.0/33",
            "::1:80",
            "",
            "x/8",
        ] {
            assert!(bad.parse::<Opening>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_v4_slash16_classifies_without_panic() {
        for hi in 0..=u16::MAX {
            let a = Ipv4Addr::from((u32::from(hi) << 16) | 0x0101);
            let _ = classify(IpAddr::V4(a));
            let _ = classify(IpAddr::V6(a.to_ipv6_mapped()));
            let _ = classify(IpAddr::V6(Ipv6Addr::from(u128::from(hi) << 112 | 1)));
        }
    }
}
