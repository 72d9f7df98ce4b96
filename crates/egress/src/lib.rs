//! The egress proxy: the one place where a bundle's outbound network policy is enforced.
//!
//! An instance has no route anywhere; its `HTTP_PROXY`/`HTTPS_PROXY` point at this proxy with a
//! per-instance token as the user name. The proxy serves `CONNECT host:port` (tunnels, for https)
//! and absolute-form plain-HTTP requests, checks the destination against the bundle's `net` list
//! (`rule`), resolves the name itself (`Resolve`), refuses special-purpose addresses unless
//! the operator opened them (`AddressPolicy`, from `atrund-netpolicy`), and connects to the checked address only. Every decision is
//! logged (target `atrund::egress`) and counted (`EgressProxy::stats`). Calls to the reserved
//! name `runner.atrund.internal` never leave: they are answered by the instance's
//! `RunnerService` (`runner_calls`). Credential injection belongs here later, in
//! `proxy::forward` / before the tunnel.
//!
//! Owns: the listener, instance tokens, outbound policy decisions, upstream connections.
//! Must not touch: how instances are isolated or started (sandbox), manifests (bundle), config
//! parsing (config builds an `EgressConfig`).

mod error;
mod local;
mod net;
mod proxy;
mod rule;
mod runner_calls;
mod tunnel;

use std::net::SocketAddr;
use std::time::Duration;

pub use atrund_netpolicy::IpNet;
pub use atrund_netpolicy::{
    classify, AddressPolicy, BlockReason, MapResolver, Resolve, SystemResolver,
};
pub use error::EgressError;
pub use net::{Connect, DirectConnector};
pub use proxy::{EgressProxy, EgressStats, Listening, Registration, SourceAnnouncer};
pub use rule::{check as check_rules, Host, NetRule};
pub use runner_calls::{
    RunnerCall, RunnerCalls, RunnerReply, RunnerService, MAX_RUNNER_CALL_BYTES, RUNNER_HOST,
};

/// Operator settings of the proxy (crates/config builds this).
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Where the proxy listens; port 0 picks a free port (see `EgressProxy::local_addr`).
    pub listen: SocketAddr,
    /// Special-purpose ranges opened anyway (e.g. a LAN service). Never opens 0.0.0.0/8 or `::`;
    /// cloud-metadata addresses only when listed exactly (/32, /128).
    pub allow_cidrs: Vec<IpNet>,
    /// Ranges refused in addition to the built-in ones; wins over `allow_cidrs`.
    pub deny_cidrs: Vec<IpNet>,
    /// Bound on name resolution and on each TCP connect.
    pub connect_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed; also bounds waiting for an
    /// upstream response head and for a client's request head.
    pub idle_timeout: Duration,
    /// Open upstream connections (tunnels + forwarded requests) per instance token.
    pub max_tunnels_per_instance: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_tunnels_per_instance: 64,
        }
    }
}

/// What one instance may reach.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Names the bundle in logs, e.g. `did:plc:abc/hello@<cid>`.
    pub bundle_label: String,
    /// Parsed `permissions.net` of the manifest (`NetRule::parse_list`).
    pub allow: Vec<NetRule>,
    /// Answers the instance's calls to `http://runner.atrund.internal/` (`runner_calls`);
    /// `None`: such calls are refused.
    pub runner: Option<RunnerCalls>,
    /// Told of each connection of the instance the proxy refuses, in words for the bundle's
    /// author (the text the refusal's body carries); `None`: only the runner's log hears it.
    pub on_refusal: Option<RefusalSink>,
}

/// Where an instance's refused connections are reported for its author (the authors' logs).
/// Called on the proxy's task: it must not block.
#[derive(Clone)]
pub struct RefusalSink(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for RefusalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalSink")
    }
}

/// A fresh random instance token (128 bits, hex), safe in a proxy URL's user part.
pub fn new_token() -> Result<String, EgressError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| EgressError::TokenGeneration(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The value for `HTTP_PROXY`/`HTTPS_PROXY` of an instance that reaches the proxy at `addr`.
pub fn proxy_url(token: &str, addr: SocketAddr) -> String {
    format!("http://{token}:x@{addr}")
}
