//! Name resolution, the seam between a host name and the addresses that are then checked: the
//! system resolver, a DNS server the operator names (`dns_server`), and a fixed map (tests,
//! pinned names). Shared by the egress proxy and the runner's own HTTP client.
//!
//! Owns: turning names into addresses. Must not: decide anything; callers check every address
//! these return before connecting to it, and never resolve again for that connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// A hickory resolver that asks only `server` (plain DNS over UDP, then TCP), trying once
/// within `timeout`: what the runner's own look-ups use when the operator sets `dns_server`.
/// Its search list is empty, so every name is looked up as given.
pub fn dns_server_resolver(
    server: SocketAddr,
    timeout: Duration,
) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    let mut b = hickory_resolver::TokioResolver::builder_with_config(
        config,
        hickory_resolver::name_server::TokioConnectionProvider::default(),
    );
    b.options_mut().timeout = timeout;
    b.options_mut().attempts = 1;
    b.build()
}

/// Addresses from the DNS server the operator names (`dns_server`) instead of the system's
/// resolver: A and AAAA records, nothing from /etc/hosts.
pub struct DnsServerResolver {
    server: SocketAddr,
    resolver: hickory_resolver::TokioResolver,
}

impl DnsServerResolver {
    pub fn new(server: SocketAddr, timeout: Duration) -> Self {
        Self {
            server,
            resolver: dns_server_resolver(server, timeout),
        }
    }
}

impl std::fmt::Debug for DnsServerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServerResolver")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Resolve for DnsServerResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let found =
            self.resolver.lookup_ip(fqdn).await.map_err(|e| {
                io::Error::other(format!("{host} via DNS server {}: {e}", self.server))
            })?;
        Ok(found.iter().collect())
    }
}

/// The certificates of a PEM file (`extra_ca_file`): the certificate authorities the runner's
/// own requests trust beside the web PKI's. At least one is required.
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM file of certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
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
