//! The proxy's seam to the outside for TCP connect (name resolution is `atrund_netpolicy`'s
//! `Resolve`, shared with the runner's own requests).
//!
//! Owns: `Connect` (plain TCP). Must not: decide anything; the proxy checks every address before
//! connecting to it.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::net::TcpStream;

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
