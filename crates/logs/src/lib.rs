//! Authors' logs: each bundle's console output, kept in memory in a bounded ring per bundle, for
//! its author to read (`dev.atrund.getLogs`, `dev.atrund.tailLogs`; docs/observability.md).
//!
//! Owns: the rings (lines with a per-bundle sequence number, time, stream, instance and bundle
//! version), their caps (lines per bundle, bundles at once), counting what the caps drop and
//! telling each reader how many lines after its cursor it can no longer get, and waking
//! followers when a line arrives. Must not touch: who may read (the HTTP layer checks the
//! author's service-auth token), masking secrets (the sandbox masks before a line gets here), or
//! any I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

/// The caps of a [`LogStore`] (`[logs]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCaps {
    /// Lines kept per bundle; the oldest go first.
    pub lines_per_bundle: usize,
    /// Bundles kept at once; the one written to least recently goes first.
    pub bundles: usize,
}

/// Whose bundle a ring belongs to: the author's DID (or `local` for `at-rund dev`) and the
/// bundle's name. Lines of every version and instance of the bundle share one ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BundleId {
    pub author: String,
    pub name: String,
}

/// One line of console output, as kept and as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// 1, 2, 3, … per bundle: the cursor readers pass back as `since`.
    pub seq: u64,
    /// When the runner read the line, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The runner's id of the instance that printed it.
    pub instance: String,
    /// The bundle version the instance runs.
    pub version: String,
    /// The line, capped and with the instance's secret values masked by the sandbox.
    pub text: String,
}

/// What one read returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// Pass as `since` to get the lines after these.
    pub cursor: u64,
    /// Lines after the reader's `since` that the ring's cap dropped before this read: the reader
    /// will never get them.
    pub missed: u64,
    /// Lines of this bundle dropped by the caps since the runner started (or since the bundle's
    /// ring was evicted and started again).
    pub dropped: u64,
    /// More lines after `cursor` are already there (the read stopped at its limit).
    pub more: bool,
}

struct Ring {
    lines: VecDeque<LogLine>,
    /// Sequence number of the next line.
    next: u64,
    dropped: u64,
    /// The store's write counter at this ring's last write (for evicting whole rings).
    touched: u64,
    /// Holds `next - 1`; followers wait for it to change.
    notify: watch::Sender<u64>,
}

impl Ring {
    fn new() -> Self {
        Ring {
            lines: VecDeque::new(),
            next: 1,
            dropped: 0,
            touched: 0,
            notify: watch::channel(0).0,
        }
    }

    fn first_seq(&self) -> u64 {
        self.lines.front().map_or(self.next, |l| l.seq)
    }
}

#[derive(Default)]
struct Inner {
    rings: HashMap<BundleId, Ring>,
    writes: u64,
    evicted_bundles: u64,
}

/// Every bundle's ring. Cheap to share (`Arc`); all methods take `&self`.
pub struct LogStore {
    caps: LogCaps,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// What a writer knows about the lines it adds: the instance and the version it runs.
#[derive(Debug, Clone)]
pub struct Origin {
    pub instance: String,
    pub version: String,
}

impl LogStore {
    /// An empty store; caps of 0 are taken as 1.
    pub fn new(caps: LogCaps) -> Arc<Self> {
        Arc::new(LogStore {
            caps: LogCaps {
                lines_per_bundle: caps.lines_per_bundle.max(1),
                bundles: caps.bundles.max(1),
            },
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn caps(&self) -> LogCaps {
        self.caps
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the rings consistent (every change is one
        // push/pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one line to `id`'s ring, making the ring if needed (and evicting the ring written to
    /// least recently when that makes one too many).
    pub fn push(&self, id: &BundleId, origin: &Origin, stream: &'static str, text: &str) {
        let time = rfc3339_now();
        let mut inner = self.lock();
        inner.writes += 1;
        let writes = inner.writes;
        if !inner.rings.contains_key(id) && inner.rings.len() >= self.caps.bundles {
            let oldest = inner
                .rings
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.rings.remove(&k);
                inner.evicted_bundles += 1;
            }
        }
        let ring = inner.rings.entry(id.clone()).or_insert_with(Ring::new);
        ring.touched = writes;
        let seq = ring.next;
        ring.next += 1;
        ring.lines.push_back(LogLine {
            seq,
            time,
            stream,
            instance: origin.instance.clone(),
            version: origin.version.clone(),
            text: text.to_string(),
        });
        while ring.lines.len() > self.caps.lines_per_bundle {
            ring.lines.pop_front();
            ring.dropped += 1;
        }
        ring.notify.send_replace(seq);
    }

    /// Lines of `id` after `since` (oldest first, at most `limit`), or with no `since` the
    /// newest `limit` lines. A bundle with no ring answers an empty page.
    pub fn read(&self, id: &BundleId, since: Option<u64>, limit: usize) -> Page {
        let limit = limit.max(1);
        let inner = self.lock();
        let Some(ring) = inner.rings.get(id) else {
            return Page {
                lines: Vec::new(),
                cursor: since.unwrap_or(0),
                missed: 0,
                dropped: 0,
                more: false,
            };
        };
        let first = ring.first_seq();
        let last = ring.next - 1;
        let (start, missed) = match since {
            None => (first.max((last + 1).saturating_sub(limit as u64)), 0),
            // A cursor past the end: the ring was evicted and started again; start over.
            Some(s) if s > last => (first, 0),
            Some(s) if s + 1 < first => (first, first - (s + 1)),
            Some(s) => (s + 1, 0),
        };
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let lines: Vec<LogLine> = ring.lines.iter().skip(skip).take(limit).cloned().collect();
        let cursor = lines.last().map_or(start - 1, |l| l.seq);
        Page {
            more: cursor < last,
            lines,
            cursor,
            missed,
            dropped: ring.dropped,
        }
    }

    /// A receiver that changes when a line is added to `id`'s ring; `None` while the bundle has
    /// no ring. It ends (`changed()` fails) if the ring is evicted: subscribe again.
    pub fn subscribe(&self, id: &BundleId) -> Option<watch::Receiver<u64>> {
        self.lock().rings.get(id).map(|r| r.notify.subscribe())
    }

    /// Bundles with a ring now, and rings evicted so far (for the runner's log and tests).
    pub fn counts(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.rings.len(), inner.evicted_bundles)
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-12-04T15:30:01.234Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// `secs` since the Unix epoch as RFC 3339 UTC with `millis`.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> BundleId {
        BundleId {
            author: "did:plc:a".into(),
            name: name.into(),
        }
    }

    fn origin() -> Origin {
        Origin {
            instance: "i1".into(),
            version: "1.0.0".into(),
        }
    }

    fn store(lines: usize, bundles: usize) -> Arc<LogStore> {
        LogStore::new(LogCaps {
            lines_per_bundle: lines,
            bundles,
        })
    }

    fn texts(p: &Page) -> Vec<&str> {
        p.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_kept_in_order_with_their_origin() {
        let s = store(10, 10);
        s.push(&id("b"), &origin(), "stdout", "one");
        s.push(&id("b"), &origin(), "stderr", "two");
        let p = s.read(&id("b"), None, 100);
        assert_eq!(texts(&p), ["one", "two"]);
        assert_eq!(p.lines[1].stream, "stderr");
        assert_eq!(p.lines[1].version, "1.0.0");
        assert_eq!(p.lines[1].instance, "i1");
        assert_eq!((p.cursor, p.missed, p.dropped, p.more), (2, 0, 0, false));
        assert!(s.read(&id("b"), Some(2), 100).lines.is_empty());
        assert_eq!(texts(&s.read(&id("b"), Some(1), 100)), ["two"]);
        // Another bundle of the same author, or another author's bundle of the same name.
        assert!(s.read(&id("c"), None, 100).lines.is_empty());
        let other = BundleId {
            author: "did:plc:b".into(),
            name: "b".into(),
        };
        assert!(s.read(&other, None, 100).lines.is_empty());
    }

    #[test]
    fn the_cap_drops_the_oldest_and_readers_are_told() {
        let s = store(3, 10);
        for i in 1..=5 {
            s.push(&id("b"), &origin(), "stdout", &format!("l{i}"));
        }
        let p = s.read(&id("b"), None, 100);
        assert_eq!(texts(&p), ["l3", "l4", "l5"]);
        assert_eq!(p.dropped, 2);
        assert_eq!(
            p.missed, 0,
            "a reader without a cursor missed nothing it asked for"
        );
        // A reader that had seen line 1 missed line 2.
        let p = s.read(&id("b"), Some(1), 100);
        assert_eq!(texts(&p), ["l3", "l4", "l5"]);
        assert_eq!(p.missed, 1);
        let p = s.read(&id("b"), Some(0), 100);
        assert_eq!(p.missed, 2);
    }

    #[test]
    fn limits_page_and_newest_first_without_a_cursor() {
        let s = store(100, 10);
        for i in 1..=10 {
            s.push(&id("b"), &origin(), "stdout", &format!("l{i}"));
        }
        let p = s.read(&id("b"), None, 3);
        assert_eq!(texts(&p), ["l8", "l9", "l10"]);
        assert!(!p.more);
        let p = s.read(&id("b"), Some(0), 4);
        assert_eq!(texts(&p), ["l1", "l2", "l3", "l4"]);
        assert!(p.more);
        let p = s.read(&id("b"), Some(p.cursor), 4);
        assert_eq!(texts(&p), ["l5", "l6", "l7", "l8"]);
        // A cursor past the end (the ring started again): from the start.
        assert_eq!(s.read(&id("b"), Some(99), 1).lines[0].text, "l1");
    }

    #[test]
    fn the_bundle_written_least_recently_is_evicted() {
        let s = store(10, 2);
        s.push(&id("a"), &origin(), "stdout", "a");
        s.push(&id("b"), &origin(), "stdout", "b");
        s.push(&id("a"), &origin(), "stdout", "a2");
        s.push(&id("c"), &origin(), "stdout", "c");
        assert!(s.read(&id("b"), None, 10).lines.is_empty());
        assert_eq!(s.read(&id("a"), None, 10).lines.len(), 2);
        assert_eq!(s.counts(), (2, 1));
        // Reading never makes a ring (a reader cannot evict another bundle's lines).
        s.read(&id("zz"), None, 10);
        assert!(s.subscribe(&id("zz")).is_none());
        assert_eq!(s.counts(), (2, 1));
    }

    #[tokio::test]
    async fn followers_wake_on_a_new_line() {
        let s = store(10, 10);
        s.push(&id("b"), &origin(), "stdout", "one");
        let mut rx = s.subscribe(&id("b")).unwrap();
        rx.borrow_and_update();
        let s2 = s.clone();
        tokio::spawn(async move { s2.push(&id("b"), &origin(), "stdout", "two") });
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*rx.borrow(), 2);
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_987_654, 7), "2027-01-03T14:47:34.007Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_210_096, 123), "2024-02-29T12:34:56.123Z");
    }
}
