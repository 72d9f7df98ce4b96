//! The two seams between the proxy and the outside: name resolution and TCP connect.
//!
//! Owns: `Resolve` (system resolver, fixed map) and `Connect` (plain TCP). Must not: decide
//! anything; the proxy checks every address these return before connecting to it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use tokio::net::TcpStream;

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

/// Opens the upstream TCP connection to an address the proxy has already checked.
#[async_trait]
pub trait Connect: Send + Sync + 'static {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// Plain `TcpStream::connect`, with Nagle off (tunnels carry small TLS records).
#[derive(Debug, Default, Clone)]
pub struct DirectConnector;

#[async_trait]
impl Connect for DirectConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}
