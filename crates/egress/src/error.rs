//! Errors of the egress proxy, with stable names and the status the proxy answers with.
//!
//! Owns: what each refusal is called and what the bundle may learn from it. Messages name the
//! destination and the rule, never other bundles' policies or the operator's exception list.

use http::StatusCode;

/// Why the proxy refused or failed a request, or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// the request carried no known instance token
    #[error("proxy authentication required: send Proxy-Authorization Basic with this instance's token as the user name (HTTP_PROXY/HTTPS_PROXY set by the runner do this)")]
    ProxyAuthRequired,
    /// the host is not in the bundle's net list
    #[error("'{host}:{port}' is not in this bundle's net list ({rules}); add it to permissions.net in the manifest")]
    HostNotListed {
        host: String,
        port: u16,
        rules: String,
    },
    /// the host is listed, but not with this port
    #[error("'{host}' is listed only as {rules}, not for port {port}; add '{host}:{port}' to permissions.net in the manifest")]
    PortNotListed {
        host: String,
        port: u16,
        rules: String,
    },
    /// every address of the destination is in a refused range
    #[error("'{host}:{port}' resolves only to addresses the runner refuses ({detail}); the runner's operator can open a range with egress allow_cidrs")]
    AddressBlocked {
        host: String,
        port: u16,
        detail: String,
        /// Reason of the first refused address, for counters and logs.
        reason: &'static str,
    },
    /// name resolution failed
    #[error("could not resolve '{0}': {1}; check the host name")]
    ResolveFailed(String, String),
    /// connecting to the destination failed
    #[error("could not connect to '{0}': {1}")]
    ConnectFailed(String, String),
    /// connecting to the destination took too long
    #[error("connecting to '{0}' did not finish within {1} ms")]
    ConnectTimedOut(String, u64),
    /// too many open connections for this instance
    #[error("this instance already has {0} open egress connections, the runner's limit; close some before opening more")]
    TooManyConnections(usize),
    /// a token that counts only on its instance's own connections came on another one
    #[error("this egress token is not valid on this connection: it belongs to an instance whose connections the runner makes itself; use the HTTP_PROXY/HTTPS_PROXY the runner set, from inside that instance")]
    SourceNotAnnounced,
    /// the request is not something an HTTP/CONNECT proxy serves
    #[error("{0}")]
    BadRequest(String),
    /// the upstream server broke the exchange
    #[error("the upstream server at '{0}' failed: {1}")]
    UpstreamFailed(String, String),
    /// a net rule could not be parsed
    #[error("net entry '{0}' is not valid: {1}")]
    InvalidNetRule(String, String),
    /// the token is already registered
    #[error("an instance with this egress token is already registered; use a fresh random token per instance")]
    TokenInUse,
    /// the token cannot be carried in a proxy URL
    #[error(
        "egress tokens must be 16 to 128 characters of [A-Za-z0-9_-]; use egress::new_token()"
    )]
    InvalidToken,
    /// no random token could be made
    #[error("could not make a random egress token: {0}")]
    TokenGeneration(String),
    /// the proxy could not listen
    #[error(
        "the egress proxy could not listen on {0}: {1}; pick a free address for egress listen"
    )]
    BindFailed(String, String),
}

impl EgressError {
    /// Stable error name; also sent to the bundle in the `x-atrund-egress-error` header.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ProxyAuthRequired => "EgressProxyAuthRequired",
            Self::SourceNotAnnounced => "EgressSourceNotAnnounced",
            Self::HostNotListed { .. } => "EgressHostNotListed",
            Self::PortNotListed { .. } => "EgressPortNotListed",
            Self::AddressBlocked { .. } => "EgressAddressBlocked",
            Self::ResolveFailed(..) => "EgressResolveFailed",
            Self::ConnectFailed(..) => "EgressConnectFailed",
            Self::ConnectTimedOut(..) => "EgressConnectTimedOut",
            Self::TooManyConnections(_) => "EgressTooManyConnections",
            Self::BadRequest(_) => "EgressBadRequest",
            Self::UpstreamFailed(..) => "EgressUpstreamFailed",
            Self::InvalidNetRule(..) => "InvalidNetRule",
            Self::TokenInUse => "EgressTokenInUse",
            Self::InvalidToken => "EgressInvalidToken",
            Self::TokenGeneration(_) => "EgressTokenGeneration",
            Self::BindFailed(..) => "EgressBindFailed",
        }
    }

    /// The status the proxy answers the bundle with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ProxyAuthRequired | Self::SourceNotAnnounced => {
                StatusCode::PROXY_AUTHENTICATION_REQUIRED
            }
            Self::HostNotListed { .. }
            | Self::PortNotListed { .. }
            | Self::AddressBlocked { .. } => StatusCode::FORBIDDEN,
            Self::ResolveFailed(..) | Self::ConnectFailed(..) | Self::UpstreamFailed(..) => {
                StatusCode::BAD_GATEWAY
            }
            Self::ConnectTimedOut(..) => StatusCode::GATEWAY_TIMEOUT,
            Self::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) | Self::InvalidNetRule(..) => StatusCode::BAD_REQUEST,
            Self::TokenInUse
            | Self::InvalidToken
            | Self::TokenGeneration(_)
            | Self::BindFailed(..) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short reason for counters and decision logs (snake_case, stable).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ProxyAuthRequired => "no_token",
            Self::SourceNotAnnounced => "source_not_announced",
            Self::HostNotListed { .. } => "host_not_listed",
            Self::PortNotListed { .. } => "port_not_listed",
            Self::AddressBlocked { reason, .. } => reason,
            Self::ResolveFailed(..) => "resolve_failed",
            Self::ConnectFailed(..) => "connect_failed",
            Self::ConnectTimedOut(..) => "connect_timeout",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::BadRequest(_) => "bad_request",
            Self::UpstreamFailed(..) => "upstream_failed",
            Self::InvalidNetRule(..) => "invalid_rule",
            Self::TokenInUse => "token_in_use",
            Self::InvalidToken => "invalid_token",
            Self::TokenGeneration(_) => "token_generation",
            Self::BindFailed(..) => "bind_failed",
        }
    }
}
