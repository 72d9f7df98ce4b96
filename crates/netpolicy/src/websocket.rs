//! WebSockets of the runner's own (a PDS's event stream): opened only to addresses the policy
//! allows, exactly as [`GuardedClient::get`] connects (the host resolved once by the runner's
//! resolver, every address checked with its port), TLS with the same web PKI roots as the HTTP
//! client, and messages capped.
//!
//! Owns: connecting and the WebSocket handshake. Must not touch: what the stream carries.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use crate::{GuardedClient, OutboundError};

/// Anything a WebSocket can run over: plain TCP (loopback, when allowed) or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket.
pub type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

impl GuardedClient {
    /// Opens a WebSocket to `path_and_query` on `base`'s host: `wss` for an https base, `ws` for
    /// plain http to loopback when allowed. Messages over `max_message_bytes` end the stream.
    pub async fn websocket(
        &self,
        base: &Url,
        path_and_query: &str,
        max_message_bytes: usize,
    ) -> Result<WebSocket, OutboundError> {
        let roots = self.config().extra_roots.clone();
        self.websocket_trusting(base, path_and_query, max_message_bytes, &roots)
            .await
    }

    /// [`websocket`](Self::websocket), also trusting the certificate authorities `extra_roots`
    /// beside the web PKI's (a private CA; the tests' own).
    pub async fn websocket_trusting(
        &self,
        base: &Url,
        path_and_query: &str,
        max_message_bytes: usize,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<WebSocket, OutboundError> {
        let addrs = self.checked_addrs(base).await?;
        let timeout = self.config().timeout;
        let failed = |detail: String| OutboundError::Request {
            url: base.to_string(),
            detail,
        };
        let tcp = connect_any(&addrs, timeout).await.map_err(failed)?;
        let host = base.host_str().unwrap_or_default().to_string();
        let tls = base.scheme() == "https";
        let io: Box<dyn Io> = if tls {
            let name = rustls_name(&host).map_err(failed)?;
            let connector = tokio_rustls::TlsConnector::from(tls_config(extra_roots)?);
            let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| failed(format!("TLS handshake timed out after {timeout:?}")))?
                .map_err(|e| failed(format!("TLS handshake: {e}")))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let authority = match base.port() {
            Some(p) => format!("{}:{p}", url_host(base)),
            None => url_host(base),
        };
        let ws_url = format!(
            "{}://{authority}{path_and_query}",
            if tls { "wss" } else { "ws" }
        );
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_message_bytes);
        config.max_frame_size = Some(max_message_bytes);
        let (socket, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::client_async_with_config(ws_url.as_str(), io, Some(config)),
        )
        .await
        .map_err(|_| failed(format!("WebSocket handshake timed out after {timeout:?}")))?
        .map_err(|e| failed(format!("WebSocket handshake: {e}")))?;
        Ok(socket)
    }
}

/// The URL's host as it goes into an authority (IPv6 in brackets).
fn url_host(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    }
}

fn rustls_name(host: &str) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>, String> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} is not a TLS server name: {e}"))
}

fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, OutboundError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| OutboundError::Client(format!("an extra root is not usable: {e}")))?;
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to the first of `addrs` that answers, each try bounded by `timeout`.
async fn connect_any(
    addrs: &[SocketAddr],
    timeout: std::time::Duration,
) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out after {timeout:?}"),
        }
    }
    Err(last)
}
