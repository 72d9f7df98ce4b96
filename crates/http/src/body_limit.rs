//! The request-body cap (`http.max_request_body_bytes`) without buffering: a declared
//! `Content-Length` over the cap is refused before anything is read, and the body itself streams
//! to the instance only once the pool has given the request a slot, cut with an error at the
//! cap. A flag tells the router that an error of the call was this cut, so the caller gets 413
//! and not the instance's failure.
//!
//! Owns: counting body bytes. Must not touch: where the body goes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// A body that fails once more than `left` bytes went through it.
pub struct LimitedBody {
    inner: Body,
    left: u64,
    over: Arc<AtomicBool>,
}

/// The cut happened: the body was longer than the cap.
#[derive(Debug, thiserror::Error)]
#[error("request body over the runner's limit")]
pub struct OverLimit;

impl LimitedBody {
    /// Wraps `inner`; the returned flag turns true when the cap is passed.
    pub fn new(inner: Body, max: u64) -> (Self, Arc<AtomicBool>) {
        let over = Arc::new(AtomicBool::new(false));
        (
            LimitedBody {
                inner,
                left: max,
                over: over.clone(),
            },
            over,
        )
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        self.over.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Box::new(OverLimit))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as axum::BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn cuts_at_the_cap_and_says_so() {
        let (b, over) = LimitedBody::new(Body::from(vec![7u8; 10]), 10);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!over.load(Ordering::SeqCst));
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from(vec![1u8; 6])), Ok(Bytes::from(vec![1u8; 6]))];
        let stream = Body::from_stream(futures::stream::iter(chunks));
        let (b, over) = LimitedBody::new(stream, 10);
        assert!(b.collect().await.is_err());
        assert!(over.load(Ordering::SeqCst));
    }
}
