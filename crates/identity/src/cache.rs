//! A small TTL cache with request coalescing, used for DID documents and handles. Owns
//! freshness (stale → served while refreshing in the background; past max → refetched),
//! negative caching and the in-flight map. Must not know what it caches.
//!
//! Error policy: definitive answers (not found, tombstoned, invalid, mismatch) are kept for
//! `error_ttl`; transient ones (`Unreachable`) only for `transient_ttl`, and a transient failure
//! while refreshing a still-usable entry keeps the old value instead of replacing it.
//!
//! Hand-rolled because the needed semantics (stale-while-revalidate + coalescing + per-error
//! TTLs) are ~150 lines, less than adapting a general cache crate.

use crate::error::IdentityError;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ttls {
    pub stale: Duration,
    pub max: Duration,
    pub error: Duration,
    pub transient: Duration,
    pub capacity: usize,
}

type Fetch<V> = Shared<BoxFuture<'static, Result<V, IdentityError>>>;

struct Entry<V> {
    result: Result<V, IdentityError>,
    fetched: Instant,
    /// When a background refresh is next due (ok values) or the entry expires (errors).
    refresh_at: Instant,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    inflight: HashMap<K, Fetch<V>>,
}

pub(crate) struct TtlCache<K, V> {
    ttls: Ttls,
    inner: Mutex<Inner<K, V>>,
    counts: Counts,
}

/// How look-ups were answered since start (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// A fresh value, no fetch.
    pub hits: u64,
    /// A stale value, refreshed in the background.
    pub stale: u64,
    /// No usable entry: a fetch was started or joined.
    pub misses: u64,
    /// A remembered failure answered again.
    pub errors: u64,
}

#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    stale: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(ttls: Ttls) -> Arc<Self> {
        Arc::new(TtlCache {
            ttls,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                inflight: HashMap::new(),
            }),
            counts: Counts::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts
        // and removes), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the cached value when fresh enough, else joins or starts one fetch for `key`.
    /// `force` skips the cached entry (but still joins a fetch already in flight).
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        key: K,
        force: bool,
        fetch: F,
    ) -> Result<V, IdentityError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, IdentityError>> + Send + 'static,
    {
        let now = Instant::now();
        let shared = {
            let mut inner = self.lock();
            if !force {
                if let Some(e) = inner.entries.get(&key) {
                    match &e.result {
                        Ok(v) if now < e.refresh_at => {
                            self.counts.hits.fetch_add(1, Relaxed);
                            return Ok(v.clone());
                        }
                        Ok(v) if now < e.fetched + self.ttls.max => {
                            self.counts.stale.fetch_add(1, Relaxed);
                            let v = v.clone();
                            // Stale: answer now, refresh in the background (at most one).
                            if let std::collections::hash_map::Entry::Vacant(slot) =
                                inner.inflight.entry(key.clone())
                            {
                                slot.insert(self.start(key, fetch()));
                            }
                            return Ok(v);
                        }
                        Err(err) if now < e.refresh_at => {
                            self.counts.errors.fetch_add(1, Relaxed);
                            return Err(err.clone());
                        }
                        _ => {}
                    }
                }
            }
            self.counts.misses.fetch_add(1, Relaxed);
            match inner.inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let f = self.start(key.clone(), fetch());
                    inner.inflight.insert(key, f.clone());
                    f
                }
            }
        };
        shared.await
    }

    /// Spawns the fetch so that it completes (and fills the cache) even if every waiter goes
    /// away. The task stores its result and clears the in-flight slot under one lock, so a
    /// caller sees either the in-flight fetch or its result, never neither.
    fn start<Fut>(self: &Arc<Self>, key: K, fut: Fut) -> Fetch<V>
    where
        Fut: Future<Output = Result<V, IdentityError>> + Send + 'static,
    {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let result = fut.await;
            this.store(key, result.clone());
            result
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(IdentityError::unreachable(
                    "identity cache",
                    format!("look-up task failed: {e}"),
                ))
            })
        }
        .boxed()
        .shared()
    }

    fn store(&self, key: K, result: Result<V, IdentityError>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.inflight.remove(&key);
        let transient = matches!(&result, Err(e) if e.is_transient());
        if transient {
            if let Some(old) = inner.entries.get_mut(&key) {
                if old.result.is_ok() && now < old.fetched + self.ttls.max {
                    // Keep serving the old value; retry the refresh after a short pause.
                    old.refresh_at = now + self.ttls.transient;
                    return;
                }
            }
        }
        let ttl = match &result {
            Ok(_) => self.ttls.stale,
            Err(_) if transient => self.ttls.transient,
            Err(_) => self.ttls.error,
        };
        if inner.entries.len() >= self.ttls.capacity && !inner.entries.contains_key(&key) {
            self.evict(&mut inner, now);
        }
        inner.entries.insert(
            key,
            Entry {
                result,
                fetched: now,
                refresh_at: now + ttl,
            },
        );
    }

    /// Drops expired entries; if that frees nothing, drops the oldest tenth. O(n), but only
    /// runs when the cache is full.
    fn evict(&self, inner: &mut Inner<K, V>, now: Instant) {
        let max = self.ttls.max;
        inner.entries.retain(|_, e| match e.result {
            Ok(_) => now < e.fetched + max,
            Err(_) => now < e.refresh_at,
        });
        if inner.entries.len() < self.ttls.capacity {
            return;
        }
        let mut ages: Vec<Instant> = inner.entries.values().map(|e| e.fetched).collect();
        ages.sort_unstable();
        let cut = ages.get(ages.len() / 10).copied();
        if let Some(cut) = cut {
            inner.entries.retain(|_, e| e.fetched > cut);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counts;
        CacheStats {
            hits: c.hits.load(Relaxed),
            stale: c.stale.load(Relaxed),
            misses: c.misses.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }

    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// Forgets one key (e.g. on a firehose #identity event).
    pub fn purge(&self, key: &K) {
        self.lock().entries.remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ttls() -> Ttls {
        Ttls {
            stale: Duration::from_secs(10),
            max: Duration::from_secs(100),
            error: Duration::from_secs(5),
            transient: Duration::from_secs(1),
            capacity: 1000,
        }
    }

    type C = Arc<TtlCache<u32, u32>>;

    async fn get(
        c: &C,
        key: u32,
        calls: &Arc<AtomicUsize>,
        answer: Result<u32, IdentityError>,
    ) -> Result<u32, IdentityError> {
        let calls = calls.clone();
        c.get(key, false, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            answer
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn coalesces_and_serves_stale() {
        let c: C = TtlCache::new(ttls());
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(get(&c, 1, &calls, Ok(7)), get(&c, 1, &calls, Ok(8)));
        assert_eq!((a, b), (Ok(7), Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Fresh: no fetch.
        assert_eq!(get(&c, 1, &calls, Ok(9)).await, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Stale: old value now, refresh in the background.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(get(&c, 1, &calls, Ok(9)).await, Ok(7));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(get(&c, 1, &calls, Ok(10)).await, Ok(9));

        // A transient failure during refresh keeps the old value.
        tokio::time::advance(Duration::from_secs(11)).await;
        let down = Err(IdentityError::unreachable("x", "down"));
        assert_eq!(get(&c, 1, &calls, down.clone()).await, Ok(9));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&c, 1, &calls, down.clone()).await, Ok(9));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "retry waits for the transient TTL"
        );

        // Past max: refetched synchronously.
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(get(&c, 1, &calls, Ok(11)).await, Ok(11));

        // Misses: the first fetch, its joined twin, past max. Stale: the two answers that
        // started a refresh. Hits: the fresh one, the one after the refresh, and the one after
        // the failed refresh (which keeps the old value fresh for the transient TTL).
        let s = c.stats();
        assert_eq!((s.hits, s.stale, s.misses, s.errors), (3, 2, 3, 0), "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn error_ttls() {
        let c: C = TtlCache::new(ttls());
        let calls = Arc::new(AtomicUsize::new(0));
        let nf = Err(IdentityError::NotFound("d".into()));
        assert_eq!(get(&c, 2, &calls, nf.clone()).await, nf);
        assert_eq!(
            get(&c, 2, &calls, Ok(1)).await,
            nf,
            "definitive error cached"
        );
        assert_eq!(c.stats().errors, 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(get(&c, 2, &calls, Ok(1)).await, Ok(1));

        let down = Err(IdentityError::unreachable("x", "down"));
        assert_eq!(get(&c, 3, &calls, down.clone()).await, down);
        assert_eq!(
            get(&c, 3, &calls, Ok(1)).await,
            down,
            "transient error cached briefly"
        );
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(get(&c, 3, &calls, Ok(1)).await, Ok(1));

        // force skips the entry.
        let calls2 = calls.clone();
        let forced = c
            .get(2, true, move || async move {
                calls2.fetch_add(1, Ordering::SeqCst);
                Ok(42)
            })
            .await;
        assert_eq!(forced, Ok(42));
        assert_eq!(get(&c, 2, &calls, Ok(0)).await, Ok(42));
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_bounded() {
        let mut t = ttls();
        t.capacity = 20;
        let c: C = TtlCache::new(t);
        let calls = Arc::new(AtomicUsize::new(0));
        for k in 0..100 {
            get(&c, k, &calls, Ok(k)).await.unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(c.len() <= 20, "{}", c.len());
        // The newest entry survived.
        assert_eq!(get(&c, 99, &calls, Ok(0)).await, Ok(99));
    }
}
