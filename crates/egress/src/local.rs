//! Destinations on this machine itself. A bundle must not use the proxy to reach the runner's
//! own listeners (this proxy, at-rund's HTTP API and admin endpoint: `runner_itself`, never
//! opened), nor a service behind one of this host's own interface addresses (`host_itself`:
//! a VPS's public address is not special-purpose, yet it reaches every service bound to
//! 0.0.0.0 there; opened only by an `allow_cidrs` entry naming exactly that address).
//!
//! Owns: reading the interface addresses (getifaddrs, kept for [`REFRESH`]) and the two checks.
//! Must not: classify ranges (`AddressPolicy` does) or touch the network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one reading of the interface addresses is used: an address added later is
/// refused at the latest after this long.
const REFRESH: Duration = Duration::from_secs(2);

/// This host's interface addresses, read lazily and cached.
#[derive(Default)]
pub(crate) struct HostAddrs {
    cached: Mutex<Option<(Instant, Vec<IpAddr>)>>,
}

impl HostAddrs {
    /// True when `ip` is assigned to one of this host's interfaces (loopback included).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = c.as_ref().is_some_and(|(at, _)| at.elapsed() < REFRESH);
        if !fresh {
            *c = Some((Instant::now(), read_interface_addrs()));
        }
        c.as_ref().is_some_and(|(_, all)| all.contains(&ip))
    }
}

/// Every address on this host's interfaces. If they cannot be read, nothing is known: the
/// classifier still refuses loopback and private ranges, and the failure is logged.
fn read_interface_addrs() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .map(|ip| ip.to_canonical())
            .collect(),
        Err(e) => {
            tracing::warn!(target: "atrund::egress", error = %e,
                "cannot read this host's interface addresses; host_itself is not checked");
            Vec::new()
        }
    }
}

/// True when a connection to `dest` would arrive at `listener` (a socket bound on this host):
/// the same port, and the same address, or any local address for a wildcard listener.
pub(crate) fn reaches(listener: SocketAddr, dest: SocketAddr, host: &HostAddrs) -> bool {
    if listener.port() != dest.port() {
        return false;
    }
    let (l, d) = (listener.ip().to_canonical(), dest.ip().to_canonical());
    if l.is_unspecified() {
        return d.is_loopback() || d.is_unspecified() || host.contains(d);
    }
    l == d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_a_host_address_and_wildcards_match_it() {
        let h = HostAddrs::default();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("203.0.113.77".parse().unwrap()));
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(reaches(sa("0.0.0.0:3000"), sa("127.0.0.1:3000"), &h));
        assert!(reaches(sa("[::]:3000"), sa("127.0.0.1:3000"), &h));
        assert!(!reaches(sa("0.0.0.0:3000"), sa("127.0.0.1:3001"), &h));
        assert!(!reaches(sa("0.0.0.0:3000"), sa("203.0.113.77:3000"), &h));
        assert!(reaches(
            sa("127.0.0.1:3000"),
            sa("[::ffff:127.0.0.1]:3000"),
            &h
        ));
        assert!(!reaches(sa("127.0.0.1:3000"), sa("127.0.0.2:3000"), &h));
    }
}
