//! A response body that holds its instance slot until the last byte has gone out, so that
//! per-instance concurrency and the idle clock count streamed responses, not just headers.
//!
//! Owns: releasing a [`Lease`](crate::Lease) at end of stream, on error or on drop. Must not
//! touch the bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use atrund_sandbox::BodyError;

use crate::Lease;

/// The body of a response from [`Pool::execute`](crate::Pool::execute): the instance's body, with
/// the instance slot held until it ends.
pub struct LeasedBody {
    pub(crate) inner: atrund_sandbox::Body,
    pub(crate) lease: Option<Lease>,
    /// From the call into the instance until its response head.
    pub(crate) bundle_time: std::time::Duration,
}

impl LeasedBody {
    /// How long the instance took to start, when this request started it (a cold start);
    /// `None` for a warm instance or one another request started.
    pub fn started_instance(&self) -> Option<std::time::Duration> {
        self.lease.as_ref()?.start_time
    }

    /// How long the instance took from the call until its response head (the bundle's own time,
    /// without waiting for a slot or a start).
    pub fn bundle_time(&self) -> std::time::Duration {
        self.bundle_time
    }
}

impl std::fmt::Debug for LeasedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedBody")
            .field("leased", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
