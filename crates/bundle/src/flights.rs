//! Coalesced loads: concurrent requests for the same key wait for one fetch and take its outcome,
//! so ten cold requests for one bundle version (or one secrets record) verify it once.
//!
//! Owns: the in-flight map and the hand-over of an outcome to the requests that waited for it.
//! Must not touch: caching (the caller keeps its own record cache and negative cache) or what is
//! fetched.
//!
//! Not the identity crate's `TtlCache`: that one serves stale entries while refreshing, which is
//! right for DID documents but not for a release pointer, which must be re-checked once its
//! revalidation interval has passed. Only the coalescing is shared in spirit.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use atrund_errors::ErrorClass;

/// An error as it is handed to the requests that waited for the fetch that failed: by name,
/// class and message (error types are not `Clone`; waiters answer with the same name and status).
pub(crate) trait ShareableError {
    fn share(&self) -> (&'static str, ErrorClass, String);
    fn from_shared(code: &'static str, class: ErrorClass, message: String) -> Self;
}

type Shared<V> = Result<V, (&'static str, ErrorClass, String)>;
type Slot<V> = Arc<tokio::sync::Mutex<Option<(Instant, Shared<V>)>>>;

/// One fetch per key at a time.
pub(crate) struct Flights<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Runs `fetch` for `key` unless a fetch for it that finished after this call arrived has an
    /// outcome to share; calls for the same key take turns, so at most one fetch runs per key.
    pub(crate) async fn run<E, F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        E: ShareableError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let arrived = Instant::now();
        let slot = self
            .slots
            .lock()
            .map(|mut s| s.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        let result = {
            let mut turn = slot.lock().await;
            match &*turn {
                // A fetch that finished after this request arrived is as fresh as one this
                // request would make.
                Some((at, outcome)) if *at >= arrived => match outcome {
                    Ok(v) => Ok(v.clone()),
                    Err((code, class, message)) => {
                        Err(E::from_shared(code, *class, message.clone()))
                    }
                },
                _ => {
                    let r = fetch().await;
                    let shared = match &r {
                        Ok(v) => Ok(v.clone()),
                        Err(e) => Err(e.share()),
                    };
                    *turn = Some((Instant::now(), shared));
                    r
                }
            }
        };
        if let Ok(mut s) = self.slots.lock() {
            // Last one out removes the entry (the map's own reference plus ours).
            if Arc::strong_count(&slot) <= 2 {
                s.remove(key);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, PartialEq)]
    struct Failed(&'static str, String);

    impl ShareableError for Failed {
        fn share(&self) -> (&'static str, ErrorClass, String) {
            (self.0, ErrorClass::Author, self.1.clone())
        }
        fn from_shared(code: &'static str, _: ErrorClass, message: String) -> Self {
            Failed(code, format!("shared: {message}"))
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_fetch_and_its_error() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let run = |ok: bool| {
            let (flights, fetches) = (flights.clone(), fetches.clone());
            tokio::spawn(async move {
                flights
                    .run(&"k", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        if ok {
                            Ok(7)
                        } else {
                            Err(Failed("TooLarge", "too large".into()))
                        }
                    })
                    .await
            })
        };
        // The first takes the turn; the others arrive while it runs and take its outcome.
        let first = run(true);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let rest: Vec<_> = (0..5).map(|_| run(true)).collect();
        assert_eq!(first.await.unwrap(), Ok(7));
        for r in rest {
            assert_eq!(r.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(
            flights.slots.lock().unwrap().is_empty(),
            "slots are removed"
        );

        let first = run(false);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let second = run(false);
        assert_eq!(
            first.await.unwrap(),
            Err(Failed("TooLarge", "too large".into()))
        );
        assert_eq!(
            second.await.unwrap(),
            Err(Failed("TooLarge", "shared: too large".into()))
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
