//! `Connection: close` on an error answered before the request's body was read to its end (a
//! route, policy, limit or busy refusal of a POST): hyper closes such a connection after the
//! response, since the unread body is still on it, and a pooled client that was not told so may
//! send its next request into the closing connection and get it broken.
//!
//! Owns: noticing whether a body reached its end, and the header. Must not: read or drop body
//! bytes itself (where the body goes is the router's), or touch successful answers (a bundle
//! may answer while it still reads, and hyper decides about those connections).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// A request body that records when its last frame has been read.
struct EndTracked {
    inner: hyper::body::Incoming,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for EndTracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request with its body as axum's, and for a request that has a body the flag that turns
/// true once it was read to its end (`None`: no body, nothing to track, nothing allocated).
pub(crate) fn track(
    req: hyper::Request<hyper::body::Incoming>,
) -> (axum::extract::Request, Option<Arc<AtomicBool>>) {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return (req.map(Body::new), None);
    }
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    (
        req.map(|inner| Body::new(EndTracked { inner, ended })),
        Some(flag),
    )
}

/// Adds `Connection: close` to an error answer whose request body was not read to its end.
pub(crate) fn mark(resp: &mut Response, ended: Option<&AtomicBool>) {
    let unread = ended.is_some_and(|e| !e.load(Ordering::Relaxed));
    if unread && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn resp(status: u16) -> Response {
        http::StatusCode::from_u16(status).unwrap().into_response()
    }

    #[test]
    fn only_errors_with_an_unread_body_close() {
        let unread = AtomicBool::new(false);
        let read = AtomicBool::new(true);
        for (status, flag, closes) in [
            (404, Some(&unread), true),
            (413, Some(&unread), true),
            (503, Some(&unread), true),
            (404, Some(&read), false),
            (404, None, false),
            (200, Some(&unread), false),
            (304, Some(&unread), false),
        ] {
            let mut r = resp(status);
            mark(&mut r, flag);
            assert_eq!(
                r.headers().get(http::header::CONNECTION).is_some(),
                closes,
                "{status} {flag:?}"
            );
        }
    }
}
