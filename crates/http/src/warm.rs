//! Warm routes: what the pipeline resolved for one route (the bundle version it runs, its checked
//! limits, its metrics series), kept so that the next call of the same route skips resolving it
//! again. A warm call's cost against nginx's hop is the point (issue 14, docs/performance.md):
//! resolving a route every time was a fifth of at-rund's own work per call.
//!
//! Owns: the memo's key (injective over the route's parts), its bound, and the rules under which
//! an entry still stands: the same configuration as when it was resolved (a reload changes the
//! policy, the limits or anything else resolution read), not older than the age it was kept for
//! (at most [`MAX_AGE`]; an author's route no longer than `fetch.revalidate_secs`, so what an
//! identity, a `latest` or a secrets record may have changed meanwhile is re-resolved that
//! often, and at every call with `revalidate_secs = 0`). Must not touch: resolution itself and
//! what a resolved route holds (`lib.rs`), which decides what may be kept at all (only routes
//! that resolved without error; a local dev bundle's also checks that its files did not change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrund_config::Config;

/// How long a resolved route serves without being resolved again. Short, so a new release,
/// rollback, secret or identity change that the caches below already know is followed within
/// this much of it; long enough that a busy route resolves a few times a second at most.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Routes kept at most; past it the memo starts again empty (a bound on what a caller who names
/// many routes can make the runner keep, not a cache policy: a route costs one resolution).
const MAX_ROUTES: usize = 4096;

/// The memo: route → what resolving it gave.
pub struct WarmRoutes<V> {
    map: Mutex<HashMap<RouteKey, Entry<V>>>,
}

struct Entry<V> {
    value: Arc<V>,
    /// The configuration the route was resolved under: another one (a reload) voids it.
    config: Arc<Config>,
    /// The source's invalidation generation when resolution began: an author's change seen on
    /// an event stream since (any author's: the check is one integer) voids it.
    generation: u64,
    resolved: Instant,
    max_age: Duration,
}

/// A route's parts, each length-prefixed, so no two different routes share a key whatever bytes
/// their parts hold.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteKey(Box<[u8]>);

impl RouteKey {
    pub fn new(parts: &[&[u8]]) -> Self {
        let len = parts.iter().map(|p| p.len() + 4).sum();
        let mut key = Vec::with_capacity(len);
        for p in parts {
            key.extend_from_slice(&(p.len() as u32).to_le_bytes());
            key.extend_from_slice(p);
        }
        RouteKey(key.into_boxed_slice())
    }
}

impl<V> Default for WarmRoutes<V> {
    fn default() -> Self {
        WarmRoutes {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<V> WarmRoutes<V> {
    /// The route's resolution, if it was made under `config` and invalidation `generation` and
    /// is younger than the age it was kept for.
    pub fn get(
        &self,
        key: &RouteKey,
        config: &Arc<Config>,
        generation: u64,
        now: Instant,
    ) -> Option<Arc<V>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(key)?;
        let fresh = Arc::ptr_eq(&e.config, config)
            && e.generation == generation
            && now.saturating_duration_since(e.resolved) < e.max_age;
        fresh.then(|| e.value.clone())
    }

    /// Keeps `value` as the route's resolution under `config`, resolved at `at` (when resolution
    /// began: what it read was current then), for `max_age` at most ([`MAX_AGE`] at most;
    /// nothing is kept for zero).
    pub fn put(
        &self,
        key: RouteKey,
        value: Arc<V>,
        config: Arc<Config>,
        generation: u64,
        at: Instant,
        max_age: Duration,
    ) {
        let max_age = max_age.min(MAX_AGE);
        if max_age.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ROUTES && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(
            key,
            Entry {
                value,
                config,
                generation,
                resolved: at,
                max_age,
            },
        );
    }

    /// Drops the route's resolution (it no longer stands: the next call resolves it).
    pub fn forget(&self, key: &RouteKey) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Routes kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_routes_differ_whatever_their_bytes() {
        let k = |p: &[&str]| RouteKey::new(&p.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        assert!(k(&["a", "bc"]) != k(&["ab", "c"]));
        assert!(k(&["a\0", "b"]) != k(&["a", "\0b"]));
        assert!(k(&["a", ""]) != k(&["a"]));
        assert!(k(&["x", "y"]) == k(&["x", "y"]));
    }

    #[test]
    fn an_entry_stands_under_its_config_and_for_max_age_only() {
        let memo = WarmRoutes::<u32>::default();
        let config = Arc::new(Config::default());
        let key = RouteKey::new(&[b"r"]);
        let t0 = Instant::now();
        assert!(memo.get(&key, &config, 0, t0).is_none());
        memo.put(
            key.clone(),
            Arc::new(7),
            config.clone(),
            0,
            t0,
            Duration::from_secs(60),
        );
        assert_eq!(memo.get(&key, &config, 0, t0).as_deref(), Some(&7));
        let later = t0 + MAX_AGE - Duration::from_millis(1);
        assert_eq!(memo.get(&key, &config, 0, later).as_deref(), Some(&7));
        assert!(memo.get(&key, &config, 0, t0 + MAX_AGE).is_none());
        // A reloaded configuration, even an equal one, voids it.
        let reloaded = Arc::new(Config::default());
        assert!(memo.get(&key, &reloaded, 0, t0).is_none());
        // So does an author's change seen on an event stream (the generation moved).
        assert!(memo.get(&key, &config, 1, t0).is_none());
        memo.forget(&key);
        assert!(memo.get(&key, &config, 0, t0).is_none());
        // Kept for less than MAX_AGE when asked; not kept at all for zero.
        memo.put(
            key.clone(),
            Arc::new(8),
            config.clone(),
            0,
            t0,
            Duration::from_millis(10),
        );
        assert!(memo
            .get(&key, &config, 0, t0 + Duration::from_millis(9))
            .is_some());
        assert!(memo
            .get(&key, &config, 0, t0 + Duration::from_millis(10))
            .is_none());
        memo.forget(&key);
        memo.put(
            key.clone(),
            Arc::new(9),
            config.clone(),
            0,
            t0,
            Duration::ZERO,
        );
        assert!(memo.get(&key, &config, 0, t0).is_none() && memo.len() == 0);
    }

    #[test]
    fn the_memo_is_bounded() {
        let memo = WarmRoutes::<usize>::default();
        let config = Arc::new(Config::default());
        let now = Instant::now();
        for i in 0..MAX_ROUTES + 10 {
            memo.put(
                RouteKey::new(&[i.to_string().as_bytes()]),
                Arc::new(i),
                config.clone(),
                0,
                now,
                MAX_AGE,
            );
        }
        assert!(memo.len() <= MAX_ROUTES);
    }
}
