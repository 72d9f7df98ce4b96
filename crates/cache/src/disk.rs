//! The response cache's second tier (`cache.disk_max_bytes`, docs/cache.md): every kept answer
//! is also written to one SQLite file in the data dir, and read back when memory has nothing
//! for a key, so kept answers survive a restart and memory holds only the busy ones.
//!
//! Writes go through a background thread (a bounded channel; when it is full the write is
//! dropped, the answer stays in memory), so a response never waits on the disk. Reads happen on
//! a memory miss only, one indexed query. The file holds at most `max_bytes` (the entries'
//! sizes as memory counts them); the least recently written or read go first.
//!
//! Owns: the file, its table and the encoding of an entry. Must not touch: what may be stored
//! or when it is fresh (the cache decides; an entry read back is judged like any other).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use rusqlite::{params, Connection};

use crate::Entry;

/// Writes waiting for the writer thread; beyond this, writes are dropped.
const QUEUE: usize = 256;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS entries (
        key TEXT NOT NULL,
        variant BLOB NOT NULL,
        status INTEGER NOT NULL,
        headers BLOB NOT NULL,
        body BLOB NOT NULL,
        stored_at INTEGER NOT NULL,
        initial_age INTEGER NOT NULL,
        lifetime INTEGER NOT NULL,
        size INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (key, variant)
    );
    CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// the response cache's file {path} cannot be used: {detail}; check the data dir's disk
    /// and permissions, or turn the disk tier off with cache.disk_max_bytes = 0
    #[error("the response cache's file {path} cannot be used: {detail}; check the data dir's disk and permissions, or turn the disk tier off with cache.disk_max_bytes = 0")]
    Open { path: String, detail: String },
}

enum Write {
    Put { key: String, entry: Arc<Entry> },
    Used { key: String },
}

/// The disk tier of one runner's cache.
pub struct DiskStore {
    read: Mutex<Connection>,
    writes: SyncSender<Write>,
    /// Hashes of the keys on disk, so a miss for a key never kept (most calls of endpoints whose
    /// answers are not shareable) costs no read. A superset: a stale hash only costs a read.
    known: Arc<Mutex<HashSet<u64>>>,
}

fn key_hash(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl DiskStore {
    /// Opens (or creates) the file at `path`, holding at most `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<DiskStore, DiskError> {
        let err = |e: rusqlite::Error| DiskError::Open {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let writer = open_conn(path).map_err(err)?;
        let read = open_conn(path).map_err(err)?;
        let keys: HashSet<u64> = read
            .prepare("SELECT DISTINCT key FROM entries")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .map(|k| k.map(|k| key_hash(&k)))
                    .collect()
            })
            .map_err(err)?;
        let known = Arc::new(Mutex::new(keys));
        let (writes, rx) = sync_channel(QUEUE);
        let evicted = known.clone();
        std::thread::Builder::new()
            .name("cache-disk".into())
            .spawn(move || write_loop(writer, rx, max_bytes, evicted))
            .map_err(|e| DiskError::Open {
                path: path.display().to_string(),
                detail: format!("cannot start its writer thread: {e}"),
            })?;
        Ok(DiskStore {
            read: Mutex::new(read),
            writes,
            known,
        })
    }

    /// Queues `entry` to be written; dropped when the writer is behind.
    pub(crate) fn put(&self, key: &str, entry: Arc<Entry>) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_hash(key));
        let w = Write::Put {
            key: key.to_string(),
            entry,
        };
        // Full: the answer stays in memory only (not worth a log line per response); the
        // next one is written once the writer has caught up.
        let _ = self.writes.try_send(w);
    }

    /// The stored variants of `key`, as entries aged by the time they spent on disk.
    pub(crate) fn load(&self, key: &str) -> Vec<Entry> {
        let on_disk = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key_hash(key));
        if !on_disk {
            return Vec::new();
        }
        let rows = {
            let conn = self.read.lock().unwrap_or_else(|p| p.into_inner());
            read_rows(&conn, key)
        };
        let Ok(rows) = rows else {
            return Vec::new();
        };
        let (now, wall) = (Instant::now(), now_ms());
        let entries: Vec<Entry> = rows
            .into_iter()
            .filter_map(|r| r.into_entry(now, wall))
            .collect();
        if !entries.is_empty() {
            let _ = self.writes.try_send(Write::Used {
                key: key.to_string(),
            });
        }
        entries
    }
}

struct Row {
    variant: Vec<u8>,
    status: u16,
    headers: Vec<u8>,
    body: Vec<u8>,
    stored_at: u64,
    initial_age: u64,
    lifetime: u64,
    size: u64,
}

fn read_rows(conn: &Connection, key: &str) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT variant, status, headers, body, stored_at, initial_age, lifetime, size \
         FROM entries WHERE key = ?1",
    )?;
    let rows = stmt.query_map(params![key], |r| {
        let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
        Ok(Row {
            variant: r.get(0)?,
            status: u(1)? as u16,
            headers: r.get(2)?,
            body: r.get(3)?,
            stored_at: u(4)?,
            initial_age: u(5)?,
            lifetime: u(6)?,
            size: u(7)?,
        })
    })?;
    rows.collect()
}

impl Row {
    /// The entry, its `stored_at` moved back by the wall-clock time since it was written; `None`
    /// for a row that does not decode (it is then never served).
    fn into_entry(self, now: Instant, wall_ms: u64) -> Option<Entry> {
        let status = StatusCode::from_u16(self.status).ok()?;
        let mut headers = HeaderMap::new();
        for (name, value) in decode_pairs(&self.headers)? {
            let name = HeaderName::from_bytes(&name).ok()?;
            let value = HeaderValue::from_bytes(&value?).ok()?;
            headers.append(name, value);
        }
        let mut vary = Vec::new();
        for (name, value) in decode_pairs(&self.variant)? {
            vary.push((HeaderName::from_bytes(&name).ok()?, value));
        }
        let elapsed = Duration::from_millis(wall_ms.saturating_sub(self.stored_at));
        // A clock far in the past of the write (or an Instant that cannot go back that far)
        // makes the entry as old as its whole life: served only after revalidation.
        let (stored_at, initial_age) = match now.checked_sub(elapsed) {
            Some(t) => (t, self.initial_age),
            None => (now, self.lifetime),
        };
        Some(Entry {
            status,
            headers,
            body: Bytes::from(self.body),
            vary,
            stored_at,
            initial_age,
            lifetime: self.lifetime,
            size: self.size,
        })
    }
}

fn write_loop(
    mut conn: Connection,
    rx: Receiver<Write>,
    max_bytes: u64,
    known: Arc<Mutex<HashSet<u64>>>,
) {
    let mut total: u64 = conn
        .query_row("SELECT COALESCE(SUM(size), 0) FROM entries", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n.max(0) as u64)
        .unwrap_or(0);
    while let Ok(w) = rx.recv() {
        // A failed write leaves the answer in memory only; the next write tries again.
        let _ = match w {
            Write::Put { key, entry } => {
                put_row(&mut conn, &key, &entry, &mut total, max_bytes, &known)
            }
            Write::Used { key } => conn
                .prepare_cached("UPDATE entries SET used = ?2 WHERE key = ?1")
                .and_then(|mut s| s.execute(params![key, now_ms() as i64]))
                .map(|_| ()),
        };
    }
}

fn put_row(
    conn: &mut Connection,
    key: &str,
    e: &Entry,
    total: &mut u64,
    max_bytes: u64,
    known: &Mutex<HashSet<u64>>,
) -> rusqlite::Result<()> {
    let variant = encode_pairs(
        e.vary
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_deref())),
    );
    let headers = encode_pairs(
        e.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), Some(v.as_bytes()))),
    );
    let wall = now_ms();
    // When it was stored, on the wall clock: now, less the time it has spent in memory.
    let stored_at = wall.saturating_sub(e.stored_at.elapsed().as_millis() as u64);
    let tx = conn.transaction()?;
    let old: i64 = tx
        .query_row(
            "SELECT COALESCE(SUM(size), 0) FROM entries WHERE key = ?1 AND variant = ?2",
            params![key, variant],
            |r| r.get(0),
        )
        .unwrap_or(0);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO entries \
         (key, variant, status, headers, body, stored_at, initial_age, lifetime, size, used) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        key,
        variant,
        e.status.as_u16(),
        headers,
        &e.body[..],
        stored_at as i64,
        e.initial_age as i64,
        e.lifetime as i64,
        e.size as i64,
        wall as i64,
    ])?;
    *total = total.saturating_sub(old.max(0) as u64) + e.size;
    // Over the cap: the least recently used go, a few at a time.
    while *total > max_bytes {
        let oldest: Option<(String, Vec<u8>, i64)> = tx
            .query_row(
                "SELECT key, variant, size FROM entries ORDER BY used LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok();
        let Some((k, v, size)) = oldest else { break };
        tx.execute(
            "DELETE FROM entries WHERE key = ?1 AND variant = ?2",
            params![k, v],
        )?;
        *total = total.saturating_sub(size.max(0) as u64);
        // Its other variants, if any, are no longer looked for: a miss, never a wrong answer.
        known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_hash(&k));
    }
    tx.commit()
}

/// `(name, value)` pairs as bytes: per pair a u32 length and the name, then a flag byte (0: no
/// value) and, when 1, a u32 length and the value. Lengths are big-endian.
fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

type Pairs = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The pairs of [`encode_pairs`]; `None` for bytes that are not such a list.
fn decode_pairs(mut b: &[u8]) -> Option<Pairs> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        let raw = take(b, 4)?;
        Some(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = len(&mut b)?;
        let name = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return None,
        };
        out.push((name, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_garbage_is_refused() {
        let pairs: Vec<(&[u8], Option<&[u8]>)> =
            vec![(b"accept", Some(b"text/html")), (b"x-empty", None)];
        let enc = encode_pairs(pairs.iter().copied());
        let dec = decode_pairs(&enc).unwrap();
        assert_eq!(dec[0], (b"accept".to_vec(), Some(b"text/html".to_vec())));
        assert_eq!(dec[1], (b"x-empty".to_vec(), None));
        assert!(decode_pairs(&enc[..enc.len() - 1]).is_none());
        assert!(decode_pairs(&[0, 0, 0, 9, b'a']).is_none());
        assert!(decode_pairs(&[0, 0, 0, 1, b'a', 7]).is_none());
    }
}
