//! Routing between the runners of a cluster (docs/cluster.md, "Routing"): a call of a bundle
//! that belongs to another live runner (`atrund_cluster::Registry::owner`) is sent there, so the
//! bundle starts once in the cluster and stays warm in one place. The call is served here
//! instead when that runner cannot be reached or answers that it is busy or draining, when the
//! call came from another runner already (no second hop), and when its body is too large to
//! keep for that fallback.
//!
//! Owns: the decision per call and the forward itself. Must not touch: what a call does (the
//! pipeline runs on whichever runner serves it) or the registry (atrund-cluster).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atrund_cluster::{Node, Registry};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, Method};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// Marks a call one runner sent another: the receiver serves it, never forwards it again. A
/// caller setting it only makes the runner it reached serve the call itself.
pub const FORWARDED_HEADER: &str = "x-atrund-forwarded-by";

/// The largest request body kept so that a failed forward can still be served here; larger
/// calls are served where they arrive.
const MAX_FORWARD_BODY: u64 = 1024 * 1024;

/// Forwards calls to the runner each bundle belongs to.
pub struct Forwarder {
    pub registry: Arc<Registry>,
    client: reqwest::Client,
    /// forwarded, owner_down, owner_busy, body_too_large.
    counts: [AtomicU64; 4],
}

const OUTCOMES: [&str; 4] = ["forwarded", "owner_down", "owner_busy", "body_too_large"];

impl Forwarder {
    pub fn new(registry: Arc<Registry>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self {
            registry,
            client,
            counts: Default::default(),
        })
    }

    fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What `/metrics` shows: live runners and forwards by outcome.
    pub fn metrics(&self) -> atrund_metrics::Cluster {
        atrund_metrics::Cluster {
            live_nodes: self.registry.live().len() as u64,
            forwards: OUTCOMES
                .iter()
                .zip(&self.counts)
                .map(|(o, n)| (*o, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// The owner's answer to `req` (a call of bundle `key`), or `req` back to serve here.
    pub async fn route(&self, key: &str, req: Request) -> Result<Response, Request> {
        if req.headers().contains_key(FORWARDED_HEADER) {
            return Err(req);
        }
        let Some(owner) = self.registry.owner(key) else {
            return Err(req);
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bodiless = matches!(*req.method(), Method::GET | Method::HEAD)
            && !req.headers().contains_key(header::TRANSFER_ENCODING);
        if !(bodiless || declared.is_some_and(|n| n <= MAX_FORWARD_BODY)) {
            self.count("body_too_large");
            return Err(req);
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = http_body_util::Limited::new(body, MAX_FORWARD_BODY as usize)
            .collect()
            .await
            .map(|b| b.to_bytes())
        else {
            // The body broke off or lied about its length: nothing left to serve.
            return Ok(crate::error::ApiError::new(
                atrund_errors::ErrorClass::BadRequest,
                "InvalidRequest",
                "the request body could not be read",
            )
            .into_response());
        };
        match self.send(&owner, &parts, body.clone()).await {
            Ok(resp) => {
                self.count("forwarded");
                Ok(resp)
            }
            Err(outcome) => {
                self.count(outcome);
                Err(Request::from_parts(parts, Body::from(body)))
            }
        }
    }

    /// Sends the call to `owner`; `Err` (with the outcome) when it should be served here.
    async fn send(
        &self,
        owner: &Node,
        parts: &axum::http::request::Parts,
        body: bytes::Bytes,
    ) -> Result<Response, &'static str> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = self
            .client
            .request(parts.method.clone(), format!("{}{path}", owner.url))
            .body(body);
        for (name, value) in &parts.headers {
            // The body is sent whole, so its length is the client's to write.
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
                req = req.header(name, value);
            }
        }
        req = req.header(FORWARDED_HEADER, self.registry.me().id.as_str());
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node = %owner.id, url = %owner.url, error = %e, "cluster: the bundle's runner cannot be reached; serving here");
                self.registry.suspect(owner);
                return Err("owner_down");
            }
        };
        let status = resp.status();
        if status.as_u16() == 429 || status.as_u16() == 503 {
            let headers = resp.headers().clone();
            let text = resp.bytes().await.unwrap_or_default();
            let error = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
            if matches!(error.as_deref(), Some("Busy" | "Draining")) {
                tracing::info!(node = %owner.id, error = error.as_deref().unwrap_or(""), "cluster: the bundle's runner is busy or draining; serving here");
                return Err("owner_busy");
            }
            return Ok(respond(status, &headers, Body::from(text)));
        }
        let headers = resp.headers().clone();
        Ok(respond(
            status,
            &headers,
            Body::from_stream(resp.bytes_stream()),
        ))
    }
}

fn respond(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: Body,
) -> Response {
    let mut out = Response::new(body);
    *out.status_mut() = status;
    for (name, value) in headers {
        if !is_hop_by_hop(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// Headers a hop does not pass on: the connection's, and proxy credentials.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    atrund_sandbox::is_hop_by_hop(name)
        || matches!(name.as_str(), "proxy-authorization" | "proxy-authenticate")
}

/// A bundle's key for routing: its author as the caller spelt it (lower-cased) and its name.
/// A DID and a handle of one author are two keys, so such a bundle may warm up on two runners.
pub fn bundle_key(author: &str, name: &str) -> String {
    format!("{}/{name}", author.to_ascii_lowercase())
}
