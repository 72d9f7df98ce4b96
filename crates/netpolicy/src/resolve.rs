//! Name resolution, the seam between a host name and the addresses that are then checked: the
//! system resolver and a fixed map (tests, pinned names). Shared by the egress proxy and the
//! runner's own HTTP client.
//!
//! Owns: turning names into addresses. Must not: decide anything; callers check every address
//! these return before connecting to it, and never resolve again for that connection.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use async_trait::async_trait;

/// Turns a host name into addresses. The proxy calls it once per request and connects only to
/// addresses from its answer, so a second, different answer can never be used (no rebinding).
#[async_trait]
pub trait Resolve: Send + Sync + 'static {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (getaddrinfo via tokio: /etc/hosts, then DNS).
#[derive(Debug, Default, Clone)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, 0)).await?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// Fixed name → addresses map; unknown names fail. For tests and pinned deployments.
#[derive(Debug, Default, Clone)]
pub struct MapResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl MapResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `name` (case-insensitive) to `addrs`.
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> Self {
        self.names.insert(name.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

#[async_trait]
impl Resolve for MapResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.names
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
    }
}
