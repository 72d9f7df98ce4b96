//! A response body that holds its instance slot until the last byte has gone out, so that
//! per-instance concurrency and the idle clock count streamed responses, not just headers.
//!
//! Owns: releasing a [`Lease`](crate::Lease) at end of stream, on error or on drop. Must not
//! touch the bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::Lease;

pub(crate) struct LeasedBody {
    pub(crate) inner: axum::body::Body,
    pub(crate) lease: Option<Lease>,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The end, or a broken body: the slot is free from now on.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
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
