//! The response body on its way to the caller while the cache keeps a copy: stored once its
//! last byte has passed, dropped unstored when it fails, grows past `max_entry_bytes`, carries
//! trailers, or is dropped before its end (a caller that went away: nothing partial is kept).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::{Entry, ResponseCache};

/// See the module doc.
pub struct CachingBody<B> {
    inner: B,
    /// `None` once storing was given up or done.
    pending: Option<Pending>,
}

struct Pending {
    cache: Arc<ResponseCache>,
    key: String,
    entry: Entry,
    copy: BytesMut,
}

impl<B: Body<Data = Bytes>> CachingBody<B> {
    pub(crate) fn new(inner: B, cache: Arc<ResponseCache>, key: String, entry: Entry) -> Self {
        let mut this = Self {
            inner,
            pending: Some(Pending {
                cache,
                key,
                entry,
                copy: BytesMut::new(),
            }),
        };
        // An empty body is never polled: it is complete now.
        if this.inner.is_end_stream() {
            this.finish();
        }
        this
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.cache.put(p.key, p.entry, p.copy.freeze());
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CachingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                this.pending = None;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(p) = &mut this.pending {
            match frame.data_ref() {
                Some(data) => {
                    let max = p.cache.limits.max_entry_bytes;
                    if (p.copy.len() + data.len()) as u64 > max {
                        this.pending = None;
                    } else {
                        p.copy.extend_from_slice(data);
                    }
                }
                // Trailers are not stored: a response with them is passed on unstored.
                None => this.pending = None,
            }
        }
        if this.inner.is_end_stream() {
            this.finish();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
