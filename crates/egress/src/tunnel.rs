//! Byte copying for CONNECT tunnels: both directions at once, an idle timeout, cancellation
//! when the instance is unregistered, and byte counts.
//!
//! Owns: moving bytes. Must not: look at them or decide anything.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Closed,
    Error,
    Idle,
    Cancelled,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle_timeout",
            End::Cancelled => "instance_gone",
        }
    }
}

/// Global byte counters a tunnel adds to.
pub(crate) struct Counters<'a> {
    pub up: &'a AtomicU64,
    pub down: &'a AtomicU64,
}

/// Copies `client` ⇄ `upstream` until both sides closed, one failed, `idle` passed without a
/// byte, or `cancel` fired. Returns how it ended and (bytes up, bytes down).
pub(crate) async fn run<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    cancel: &CancellationToken,
    global: Counters<'_>,
) -> (End, u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let both = async {
        tokio::try_join!(
            copy_half(cr, uw, start, &last, &up, global.up),
            copy_half(ur, cw, start, &last, &down, global.down),
        )
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { End::Closed } else { End::Error },
        _ = idle_watch(start, &last, idle) => End::Idle,
        _ = cancel.cancelled() => End::Cancelled,
    };
    (end, up.load(Relaxed), down.load(Relaxed))
}

async fn copy_half<R, W>(
    mut r: R,
    mut w: W,
    start: Instant,
    last: &AtomicU64,
    mine: &AtomicU64,
    global: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: pass the EOF on and keep the other direction running.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        last.store(start.elapsed().as_millis() as u64, Relaxed);
        mine.fetch_add(n as u64, Relaxed);
        global.fetch_add(n as u64, Relaxed);
    }
}

/// Returns once `idle` has passed since the last byte either way.
async fn idle_watch(start: Instant, last: &AtomicU64, idle: Duration) {
    loop {
        let seen = last.load(Relaxed);
        tokio::time::sleep_until(start + Duration::from_millis(seen) + idle).await;
        if last.load(Relaxed) == seen {
            return;
        }
    }
}
