//! Where at-rund may connect: the address classifier and the operator's openings (shared by the
//! egress proxy, which carries bundles' requests, and by the runner's own requests), the name
//! resolution seam, and [`GuardedClient`], the HTTP client of the runner's own requests (PLC,
//! did:web, handle well-known, the resolveHandle service, PDS sync calls and blobs).
//!
//! `GuardedClient` resolves each host once, checks every address (and port) with
//! [`AddressPolicy::check_socket`], and connects only to the addresses that passed: reqwest is
//! handed those addresses as a pinned override and has no resolver of its own. Redirects are never
//! followed by reqwest; the client follows at most `max_redirects`, each hop checked like the first.
//!
//! Owns: address decisions, resolution, the URL scheme rule, redirect decisions, connections of
//! the runner's own requests. Must not touch: what is fetched or what it means (identity, repo),
//! config parsing (the binary builds an [`AddressPolicy`]).

mod addr;
mod client;
mod resolve;
mod websocket;

pub use addr::{classify, AddressPolicy, BlockReason, Opening};
pub use client::{
    check_url, is_loopback_host, read_capped, redirect_target, ClientConfig, GuardedClient,
    OutboundError, ReadError,
};
pub use ipnet::IpNet;
pub use resolve::read_ca_file;
pub use resolve::{dns_server_resolver, DnsServerResolver, MapResolver, Resolve, SystemResolver};
pub use tokio_rustls::rustls::pki_types::CertificateDer;
pub use tokio_tungstenite::tungstenite::Message as WebSocketMessage;
pub use websocket::{Io, WebSocket};
