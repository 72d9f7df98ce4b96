//! HTTP plumbing for identity look-ups: the URL rule and a size-capped, time-limited GET through
//! `atrund-netpolicy`'s `GuardedClient` (resolve once, check every address, re-check redirects).
//! Turns network failures into errors whose message names only what could not be reached; the
//! network detail goes to the error's `detail` and the log. Must not interpret response bodies.

use crate::error::IdentityError;
use atrund_netpolicy::{read_capped, GuardedClient, OutboundError, ReadError};
use std::time::Duration;
use url::Url;

/// The URL rule for everything identity fetches or hands on (PLC, did:web, PDS endpoint,
/// resolveHandle service): https with a host, or http to a loopback host when allowed.
pub(crate) fn check_url(url: &Url, allow_http_loopback: bool) -> Result<(), IdentityError> {
    atrund_netpolicy::check_url(url, allow_http_loopback)
        .map_err(|_| IdentityError::InsecureUrl(url.to_string()))
}

/// A fetched response: status and a body no larger than the cap.
pub(crate) struct Fetched {
    pub status: reqwest::StatusCode,
    pub body: Vec<u8>,
}

/// GETs `url`, reading at most `cap` bytes of body, all within `timeout`. `what` names the
/// server for the caller ("the PLC directory"); failures become `Unreachable`, or
/// `AddressNotAllowed` when the address policy refused every address.
pub(crate) async fn get_capped(
    client: &GuardedClient,
    what: &'static str,
    url: &Url,
    cap: usize,
    timeout: Duration,
    accept: &str,
) -> Result<Fetched, IdentityError> {
    let fut = async {
        let resp = client
            .get(url, accept)
            .await
            .map_err(|e| outbound_error(what, e))?;
        let status = resp.status();
        let body = read_capped(resp, cap as u64).await.map_err(|e| match e {
            ReadError::TooLarge { .. } => too_big(what, url, cap),
            ReadError::Body(e) => {
                IdentityError::unreachable(what, format!("{url}: reading the body: {e}"))
            }
        })?;
        Ok(Fetched { status, body })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        IdentityError::unreachable(what, format!("{url}: timed out after {timeout:?}"))
    })?
}

/// Keeps the class, drops the network text from the message (it stays in `detail`).
pub(crate) fn outbound_error(what: &'static str, e: OutboundError) -> IdentityError {
    match e {
        OutboundError::AddressNotAllowed { .. } => IdentityError::AddressNotAllowed {
            what: what.to_string(),
            detail: e.to_string(),
        },
        // URLs are checked before the request, so this is a refused redirect (or a network
        // failure): the caller learns only that the server was not usable.
        other => IdentityError::unreachable(what, other.to_string()),
    }
}

fn too_big(what: &'static str, url: &Url, cap: usize) -> IdentityError {
    IdentityError::unreachable(what, format!("{url}: response is larger than {cap} bytes"))
}
