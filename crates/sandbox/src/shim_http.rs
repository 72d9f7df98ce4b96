//! HTTP/1.1 to the shim, client side: one connection ([`ShimConn`]) carries one exchange at a
//! time, driven by the task that awaits the call and then by whoever polls the response body
//! ([`ShimBody`]), with no connection task and no channel between them.
//!
//! Why hand-rolled: hyper's client runs each connection as a task of its own and hands requests
//! and responses across a channel; for the shim hop that was the largest fixed cost left
//! (docs/performance.md, issue 14: 19–19.6 against 22.9 µs of CPU per request for the same hop
//! with hyper's client). The server side, which strangers talk to, stays hyper's.
//!
//! Owns: framing. The request goes out with a `Content-Length` when its body's size is known,
//! else chunked; its body keeps streaming after the response head arrived (an endpoint may
//! answer before it has read its input). The response body is framed by `Content-Length`,
//! chunked, or the connection's end. Also owns whether a connection may carry another exchange.
//! Must not: interpret statuses or headers beyond framing (the instance does), pool connections
//! (`shim_conn` does) or keep time (the instance's deadline bounds every await).
//!
//! The peer runs the bundle's code, so each byte read is untrusted: the head and each
//! chunk-size or trailer line are bounded, sizes are checked, and anything malformed fails the
//! exchange and closes its connection.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::UnixStream;

/// Largest response head (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line or trailer line of a chunked response.
const MAX_LINE: usize = 4 * 1024;
/// Most trailer bytes of a chunked response (read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Request body bytes taken from the caller ahead of the socket.
const MAX_QUEUED: usize = 64 * 1024;
/// Request data frames up to this size are copied next to the head, so that a small call goes
/// out in one write.
const COALESCE: usize = 8 * 1024;
/// Free space kept in the read buffer before a read.
const READ_RESERVE: usize = 8 * 1024;

/// Why an exchange with the shim failed. None of these is shown to callers as is: the instance
/// turns them into a crash, a breach or a failure of the bundle.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShimHttpError {
    /// The socket failed.
    #[error("the connection to the runtime failed: {0}")]
    Io(#[from] std::io::Error),
    /// The shim closed the connection before its response ended.
    #[error("the runtime closed the connection before its response ended")]
    Closed,
    /// The response broke the HTTP/1.1 framing rules.
    #[error("the runtime's response is malformed: {0}")]
    Malformed(&'static str),
    /// The caller's request body failed (cut at the runner's cap, or the caller went away).
    #[error("the request body could not be read: {0}")]
    RequestBody(crate::BodyError),
    /// The caller's request body held more or fewer bytes than its `Content-Length`.
    #[error("the request body's length differs from its Content-Length")]
    RequestLength,
}

/// One keep-alive connection to the shim.
pub(crate) struct ShimConn {
    io: UnixStream,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request head, and small body frames written right behind it.
    wbuf: Vec<u8>,
}

impl ShimConn {
    pub(crate) fn new(io: UnixStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: Vec::with_capacity(512),
        }
    }

    /// Whether the shim has closed this idle connection (or sent bytes nobody asked for): costs
    /// one non-blocking read.
    pub(crate) fn is_closed(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        // A peek of the socket itself: the reactor may not have seen the close yet.
        let mut probe = [0u8; 1];
        !matches!(
            recv(
                self.io.as_raw_fd(),
                &mut probe,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Err(nix::errno::Errno::EAGAIN)
        )
    }

    /// Sends `req` and waits for the response head. The response body reads from this
    /// connection, which [`ShimBody::take_reusable`] gives back once both bodies have ended.
    pub(crate) async fn send(
        self,
        req: http::Request<crate::Body>,
    ) -> Result<http::Response<ShimBody>, ShimHttpError> {
        let (parts, body) = req.into_parts();
        let mut ex = Exchange::start(self, &parts, body);
        let head = std::future::poll_fn(|cx| ex.poll_head(cx)).await?;
        let head_only = parts.method == http::Method::HEAD;
        let framing = head.framing(head_only)?;
        let keep_alive = head.keep_alive;
        let mut res = http::Response::new(ShimBody {
            ex: Some(ex),
            framing,
            keep_alive,
        });
        *res.status_mut() = head.status;
        *res.headers_mut() = head.headers;
        Ok(res)
    }
}

/// How the rest of the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReqFraming {
    /// This many bytes are still owed.
    Length(u64),
    Chunked,
}

/// One request/response exchange in progress on a connection.
struct Exchange {
    conn: ShimConn,
    /// The request body not yet taken from the caller; `None` once it ended.
    body: Option<crate::Body>,
    framing: ReqFraming,
    /// How much of `conn.wbuf` is written.
    wpos: usize,
    /// What goes out after `conn.wbuf`, in order.
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl Exchange {
    fn start(mut conn: ShimConn, parts: &http::request::Parts, body: crate::Body) -> Self {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let w = &mut conn.wbuf;
        w.clear();
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // Framing is this hop's own; `to_shim_request` already dropped hop-by-hop headers.
            if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
                continue;
            }
            // An interim 100 is this hop's business too: the body is sent without waiting.
            if name == http::header::EXPECT {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let (framing, body) = if body.is_end_stream() {
            if matches!(
                parts.method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) {
                w.extend_from_slice(b"content-length: 0\r\n");
            }
            (ReqFraming::Length(0), None)
        } else if let Some(n) = body.size_hint().exact() {
            // Writing to a Vec cannot fail.
            let _ = write!(w, "content-length: {n}\r\n");
            (ReqFraming::Length(n), Some(body))
        } else {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
            (ReqFraming::Chunked, Some(body))
        };
        w.extend_from_slice(b"\r\n");
        Self {
            conn,
            body,
            framing,
            wpos: 0,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Whether the whole request is written.
    fn request_done(&self) -> bool {
        self.body.is_none() && self.wpos == self.conn.wbuf.len() && self.queue.is_empty()
    }

    fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.queue.is_empty() && bytes.len() <= COALESCE {
            self.conn.wbuf.extend_from_slice(&bytes);
        } else {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Takes the request body's frames that are ready, framed, into the write queue.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), ShimHttpError> {
        while self.queued < MAX_QUEUED {
            let Some(body) = self.body.as_mut() else {
                return Ok(());
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(Err(e))) => return Err(ShimHttpError::RequestBody(e)),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not passed on.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    // An empty chunk would end a chunked body.
                    if data.is_empty() {
                        continue;
                    }
                    match &mut self.framing {
                        ReqFraming::Length(left) => {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(ShimHttpError::RequestLength)?;
                            self.push(data);
                        }
                        ReqFraming::Chunked => {
                            self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.push(data);
                            self.push(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                Poll::Ready(None) => {
                    self.body = None;
                    match self.framing {
                        ReqFraming::Length(0) => {}
                        ReqFraming::Length(_) => return Err(ShimHttpError::RequestLength),
                        ReqFraming::Chunked => self.push(Bytes::from_static(b"0\r\n\r\n")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes what it can of the request. Ready once all of it is written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ShimHttpError>> {
        loop {
            self.fill(cx)?;
            if self.wpos == self.conn.wbuf.len() && self.queue.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    // The body's waker is registered.
                    Poll::Pending
                };
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let mut n = 0;
            if self.wpos < self.conn.wbuf.len() {
                slices[0] = IoSlice::new(&self.conn.wbuf[self.wpos..]);
                n = 1;
            }
            for b in self.queue.iter().take(slices.len() - n) {
                slices[n] = IoSlice::new(b);
                n += 1;
            }
            let written =
                ready!(Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.advance(written);
        }
    }

    fn advance(&mut self, mut n: usize) {
        let head = self.conn.wbuf.len() - self.wpos;
        let from_head = n.min(head);
        self.wpos += from_head;
        n -= from_head;
        if self.wpos == self.conn.wbuf.len() {
            self.conn.wbuf.clear();
            self.wpos = 0;
        }
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            let k = n.min(front.len());
            front.advance(k);
            self.queued -= k;
            n -= k;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }

    /// Reads more bytes into the read buffer: Ready(0) at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ShimHttpError>> {
        if self.conn.rbuf.capacity() - self.conn.rbuf.len() < READ_RESERVE / 4 {
            self.conn.rbuf.reserve(READ_RESERVE);
        }
        // `AsyncRead` rather than `try_read_buf`: a read that does not fill the buffer tells
        // tokio the socket is drained, so the next poll waits for epoll instead of making a read
        // that fails with EAGAIN (one syscall per call, measured).
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.conn.io),
            cx,
            &mut self.conn.rbuf
        ))?;
        Poll::Ready(Ok(n))
    }

    /// Writes the request and reads until a final response head is complete.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, ShimHttpError>> {
        loop {
            if !self.request_done() {
                if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if let Some(head) = parse_head(&mut self.conn.rbuf)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_read(cx))? == 0 {
                return Poll::Ready(Err(ShimHttpError::Closed));
            }
        }
    }
}

/// A final response head.
struct Head {
    status: http::StatusCode,
    headers: http::HeaderMap,
    keep_alive: bool,
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkState),
    /// Until the shim closes the connection (which then cannot be kept).
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ChunkState {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// Trailer lines, and the empty line that ends the body; so many trailer bytes seen.
    Trailers(usize),
}

impl Head {
    /// The body's framing (RFC 9112 §6.3).
    fn framing(&self, head_only: bool) -> Result<Framing, ShimHttpError> {
        let s = self.status.as_u16();
        if head_only || s == 204 || s == 304 {
            return Ok(Framing::Done);
        }
        if let Some(last) = self
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            if self.headers.contains_key(http::header::CONTENT_LENGTH) {
                return Err(ShimHttpError::Malformed(
                    "both Transfer-Encoding and Content-Length",
                ));
            }
            let chunked = last
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                Framing::Chunked(ChunkState::Size)
            } else {
                Framing::Close
            });
        }
        let mut length = None;
        for v in self.headers.get_all(http::header::CONTENT_LENGTH) {
            for part in v.as_bytes().split(|b| *b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(ShimHttpError::Malformed(
                    "a Content-Length that is not a number",
                ))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ShimHttpError::Malformed(
                        "Content-Length values that differ",
                    ));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        })
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Takes a final response head off the front of `buf`, skipping interim (1xx) ones; `None`
/// while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ShimHttpError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(ShimHttpError::Malformed("a response head over 64 KiB"));
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ShimHttpError::Malformed("a response head over 64 KiB"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ShimHttpError::Malformed("more than 100 response headers"));
            }
            Err(_) => {
                return Err(ShimHttpError::Malformed(
                    "a response head that does not parse",
                ))
            }
        };
        let code = res.code.unwrap_or(0);
        if code == 101 {
            return Err(ShimHttpError::Malformed("a protocol upgrade"));
        }
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = http::StatusCode::from_u16(code)
            .map_err(|_| ShimHttpError::Malformed("a status code out of range"))?;
        let mut headers = http::HeaderMap::with_capacity(res.headers.len());
        let mut keep_alive = res.version == Some(1);
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ShimHttpError::Malformed("a header name"))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| ShimHttpError::Malformed("a header value"))?;
            if name == http::header::CONNECTION
                && value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep_alive = false;
            }
            headers.append(name, value);
        }
        buf.advance(len);
        return Ok(Some(Head {
            status,
            headers,
            keep_alive,
        }));
    }
}

/// Finds the CRLF that ends a line at the front of `buf`: the line's length without it.
fn line_end(buf: &[u8]) -> Result<Option<usize>, ShimHttpError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i <= MAX_LINE => Ok(Some(i)),
        Some(_) => Err(ShimHttpError::Malformed("a chunked-body line over 4 KiB")),
        None if buf.len() > MAX_LINE + 1 => {
            Err(ShimHttpError::Malformed("a chunked-body line over 4 KiB"))
        }
        None => Ok(None),
    }
}

/// What the decoder found in the read buffer.
enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// Takes up to `left` bytes off the front of `buf` (none if it is empty), counting them off.
fn take_owed(left: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = (*left).min(buf.len() as u64) as usize;
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// Decodes what it can of the response body from the front of `buf`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, ShimHttpError> {
    loop {
        match framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                return Ok(Decoded::Data(buf.split().freeze()));
            }
            Framing::Length(left) => {
                let Some(data) = take_owed(left, buf) else {
                    return Ok(Decoded::NeedMore);
                };
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Decoded::Data(data));
            }
            Framing::Chunked(state) => match state {
                ChunkState::Size => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let line = &buf[..end];
                    // Chunk extensions (after `;`) are ignored.
                    let digits = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = parse_hex(digits)
                        .ok_or(ShimHttpError::Malformed("a chunk size that is not hex"))?;
                    buf.advance(end + 2);
                    *state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let Some(data) = take_owed(left, buf) else {
                        return Ok(Decoded::NeedMore);
                    };
                    if *left == 0 {
                        *state = ChunkState::DataEnd;
                    }
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ShimHttpError::Malformed("a chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    *state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *framing = Framing::Done;
                        return Ok(Decoded::End);
                    }
                    *seen += end + 2;
                    if *seen > MAX_TRAILERS {
                        return Err(ShimHttpError::Malformed("trailers over 16 KiB"));
                    }
                }
            },
        }
    }
}

/// A response body read from the shim. It also finishes sending the request body, so an
/// endpoint that answers before reading its whole input still gets the rest.
pub(crate) struct ShimBody {
    /// `None` once the body failed (its connection is closed).
    ex: Option<Exchange>,
    framing: Framing,
    /// The response allows another exchange on this connection.
    keep_alive: bool,
}

impl ShimBody {
    /// The connection, if this exchange ended cleanly and left it fit for another.
    pub(crate) fn take_reusable(&mut self) -> Option<ShimConn> {
        let ex = self.ex.as_ref()?;
        let fit = self.keep_alive
            && self.framing == Framing::Done
            && ex.request_done()
            && ex.conn.rbuf.is_empty();
        if !fit {
            return None;
        }
        self.ex.take().map(|ex| ex.conn)
    }

    /// Closes the connection: the rest of the body is not wanted.
    pub(crate) fn close(&mut self) {
        self.ex = None;
        self.framing = Framing::Done;
    }

    fn fail(&mut self, e: ShimHttpError) -> Poll<Option<Result<Frame<Bytes>, ShimHttpError>>> {
        self.close();
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for ShimBody {
    type Data = Bytes;
    type Error = ShimHttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ShimHttpError>>> {
        let this = self.get_mut();
        let Some(ex) = this.ex.as_mut() else {
            return Poll::Ready(None);
        };
        if this.framing == Framing::Done {
            return Poll::Ready(None);
        }
        if !ex.request_done() {
            if let Poll::Ready(Err(e)) = ex.poll_write(cx) {
                return this.fail(e);
            }
        }
        loop {
            match decode(&mut this.framing, &mut ex.conn.rbuf) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
            }
            match ex.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(0)) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(ShimHttpError::Closed),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted peer on a real socket pair.
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get(path: &str) -> http::Request<crate::Body> {
        http::Request::builder()
            .uri(path)
            .header("host", "localhost")
            .body(crate::empty_body())
            .unwrap()
    }

    /// Reads one request head from the peer's side.
    async fn read_head(peer: &mut UnixStream) -> String {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(peer.read(&mut b).await.unwrap(), 1, "{got:?}");
            got.push(b[0]);
        }
        String::from_utf8(got).unwrap()
    }

    /// Sends `req`, answers with `wire` (written one byte at a time when `trickle`), and returns
    /// the request head, the status, the body and whether the connection is reusable.
    async fn exchange(
        req: http::Request<crate::Body>,
        wire: &'static [u8],
        trickle: bool,
    ) -> (String, Result<(u16, Vec<u8>, bool), ShimHttpError>) {
        exchange_then(req, wire, trickle, false).await
    }

    /// [`exchange`], the peer closing its end after `wire` when `close`.
    async fn exchange_then(
        req: http::Request<crate::Body>,
        wire: &'static [u8],
        trickle: bool,
        close: bool,
    ) -> (String, Result<(u16, Vec<u8>, bool), ShimHttpError>) {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let head = read_head(&mut peer).await;
            if trickle {
                for b in wire {
                    peer.write_all(&[*b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            } else {
                peer.write_all(wire).await.unwrap();
            }
            (head, (!close).then_some(peer))
        });
        let result = async {
            let res = ShimConn::new(a).send(req).await?;
            let status = res.status().as_u16();
            let mut body = res.into_body();
            let mut bytes = Vec::new();
            while let Some(f) = body.frame().await {
                if let Ok(d) = f?.into_data() {
                    bytes.extend_from_slice(&d);
                }
            }
            Ok((status, bytes, body.take_reusable().is_some()))
        };
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), result)
            .await
            .expect("the exchange did not end");
        let (head, peer) = server.await.unwrap();
        drop(peer);
        (head, result)
    }

    #[tokio::test]
    async fn frames_a_request_and_reads_every_response_framing() {
        let cases: [(&[u8], &[u8], bool); 5] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                b"hello",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n",
                b"hello!",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b"", true),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
                b"ok",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                b"ok",
                false,
            ),
        ];
        for (wire, want, reusable) in cases {
            for trickle in [false, true] {
                let (head, res) = exchange(get("/e/x?y=1"), wire, trickle).await;
                assert!(head.starts_with("GET /e/x?y=1 HTTP/1.1\r\n"), "{head}");
                assert!(!head.contains("content-length"), "{head}");
                let (_, body, kept) = res.unwrap();
                assert_eq!(body, want, "{}", String::from_utf8_lossy(wire));
                assert_eq!(kept, reusable, "{}", String::from_utf8_lossy(wire));
            }
        }
    }

    #[tokio::test]
    async fn a_body_to_the_close_ends_with_the_connection_and_is_not_kept() {
        let (_, res) = exchange_then(
            get("/e/x"),
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
            false,
            true,
        )
        .await;
        let (status, body, kept) = res.unwrap();
        assert_eq!((status, &body[..], kept), (200, &b"until close"[..], false));
    }

    #[tokio::test]
    async fn a_response_cut_short_is_an_error() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\ncontent-le",
        ] {
            let wire: &'static [u8] = Box::leak(wire.to_vec().into_boxed_slice());
            let (_, res) = exchange_then(get("/e/x"), wire, false, true).await;
            assert!(
                matches!(res, Err(ShimHttpError::Closed)),
                "{}: {res:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn malformed_responses_fail_the_exchange() {
        let too_many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let huge = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        let long_line = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}\r\n",
            "0".repeat(5000)
        );
        let cases: Vec<String> = vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello".into(),
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".into(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n".into(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n".into(),
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".into(),
            "HTTP/1.1 099 Low\r\n\r\n".into(),
            "NOT HTTP\r\n\r\n".into(),
            format!("HTTP/1.1 200 OK\r\n{too_many}\r\n"),
            huge,
            long_line,
        ];
        for wire in cases {
            let label = wire.chars().take(70).collect::<String>();
            let wire: &'static [u8] = Box::leak(wire.into_bytes().into_boxed_slice());
            let (_, res) = exchange(get("/e/x"), wire, false).await;
            assert!(
                matches!(res, Err(ShimHttpError::Malformed(_))),
                "{label:?}: {res:?}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_past_the_response_leave_the_connection_unkept() {
        let (_, res) = exchange(
            get("/e/x"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        )
        .await;
        let (_, body, kept) = res.unwrap();
        assert_eq!(body, b"ok");
        assert!(!kept, "a connection with unasked bytes was kept");
    }

    #[tokio::test]
    async fn request_bodies_go_out_with_their_length_or_chunked() {
        // Known length: one write with the head, the caller's own Content-Length replaced.
        let req = http::Request::builder()
            .method("POST")
            .uri("/e/x")
            .header("content-length", "999")
            .header("expect", "100-continue")
            .body(crate::full_body("hello"))
            .unwrap();
        let (a, mut peer) = UnixStream::pair().unwrap();
        let call = tokio::spawn(async move {
            let res = ShimConn::new(a).send(req).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        });
        let head = read_head(&mut peer).await;
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(!head.contains("999") && !head.contains("expect"), "{head}");
        let mut body = [0u8; 5];
        peer.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hello");
        peer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(call.await.unwrap().is_empty());

        // Unknown length: chunked, and it keeps streaming after the response head came back
        // (an echo answers before it has read its input).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::BodyError>>(4);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let req = http::Request::builder()
            .method("POST")
            .uri("/e/echo")
            .body(crate::boxed_body(stream))
            .unwrap();
        let (a, mut peer) = UnixStream::pair().unwrap();
        let call = tokio::spawn(async move {
            let res = ShimConn::new(a).send(req).await.unwrap();
            let mut body = res.into_body();
            let mut got = Vec::new();
            while let Some(f) = body.frame().await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            (got, body.take_reusable().is_some())
        });
        let head = read_head(&mut peer).await;
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        peer.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for part in ["one", "", "two"] {
            tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
        drop(tx);
        let mut want = b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n".to_vec();
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        // Echo it back as the response body.
        want = b"6\r\nonetwo\r\n0\r\n\r\n".to_vec();
        peer.write_all(&want).await.unwrap();
        let (body, kept) = call.await.unwrap();
        assert_eq!(body, b"onetwo");
        assert!(kept);
    }

    #[tokio::test]
    async fn a_request_body_that_lies_about_its_length_fails() {
        struct Liar(bool);
        impl http_body::Body for Liar {
            type Data = Bytes;
            type Error = crate::BodyError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, crate::BodyError>>> {
                if std::mem::replace(&mut self.0, true) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))))
                }
            }
            fn size_hint(&self) -> SizeHint {
                SizeHint::with_exact(10)
            }
        }
        let req = http::Request::builder()
            .method("POST")
            .uri("/e/x")
            .body(crate::boxed_body(Liar(false)))
            .unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        let res = ShimConn::new(a).send(req).await;
        assert!(
            matches!(res, Err(ShimHttpError::RequestLength)),
            "{:?}",
            res.err()
        );
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_exchange_and_a_closed_one_is_seen() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut conn = ShimConn::new(a);
        for i in 0..3 {
            let call = tokio::spawn(async move {
                let res = conn.send(get("/e/x")).await.unwrap();
                let mut body = res.into_body();
                let bytes = (&mut body).collect().await.unwrap().to_bytes();
                (bytes, body.take_reusable())
            });
            read_head(&mut peer).await;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{i}");
            peer.write_all(answer.as_bytes()).await.unwrap();
            let (bytes, kept) = call.await.unwrap();
            assert_eq!(bytes, i.to_string().as_bytes());
            conn = kept.expect("kept");
        }
        assert!(!conn.is_closed());
        drop(peer);
        assert!(conn.is_closed());
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
