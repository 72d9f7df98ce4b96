//! Per-author request rates: one token bucket per author DID (`tenants.rate_per_sec`, refilled
//! continuously, at most `tenants.rate_burst` tokens; per-DID overrides), so one author's
//! traffic cannot take every instance slot and fetch of a shared runner.
//!
//! A reload replaces the rates ([`AuthorRates::reconfigure`]); buckets keep their tokens, up to
//! the new burst.
//!
//! Owns: the buckets. Must not touch: the clock (callers pass `Instant`s, so tests are exact)
//! or the network.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use atrund_config::TenantsSection;

/// Buckets kept before idle, full ones are dropped (a full bucket is the same as none).
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every author seen recently.
#[derive(Debug)]
pub struct AuthorRates {
    rules: RwLock<Rules>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The rates in force.
#[derive(Debug)]
struct Rules {
    /// `(rate, burst)` of authors without an override.
    default: (u64, u64),
    /// `tenants.rate_overrides`, parsed once (config validation has checked them).
    overrides: HashMap<String, (u64, u64)>,
}

impl Rules {
    fn new(cfg: &TenantsSection) -> Self {
        let overrides = cfg
            .rate_overrides
            .iter()
            .filter_map(|e| TenantsSection::parse_override(e))
            .map(|(did, r, b)| (did.to_string(), (r, b)))
            .collect();
        Rules {
            default: (cfg.rate_per_sec, cfg.rate_burst),
            overrides,
        }
    }

    /// `(rate, burst)` of `did`: its override, else the default.
    fn rate_for(&self, did: &str) -> (u64, u64) {
        self.overrides.get(did).copied().unwrap_or(self.default)
    }
}

/// The author is over their rate: retry after this many whole seconds (≥ 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("author {did} is over this runner's request rate of {rate} per second (burst {burst}); retry after {retry_after_secs} s, or ask the operator for a higher tenants.rate_overrides entry")]
pub struct RateLimited {
    pub did: String,
    pub rate: u64,
    pub burst: u64,
    pub retry_after_secs: u64,
}

impl RateLimited {
    pub fn code(&self) -> &'static str {
        "RateLimited"
    }

    pub fn class(&self) -> atrund_errors::ErrorClass {
        atrund_errors::ErrorClass::Busy
    }
}

impl AuthorRates {
    pub fn new(cfg: TenantsSection) -> Self {
        AuthorRates {
            rules: RwLock::new(Rules::new(&cfg)),
            buckets: Mutex::default(),
        }
    }

    /// Puts new rates in force (a reload).
    pub fn reconfigure(&self, cfg: &TenantsSection) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Rules::new(cfg);
    }

    /// Takes one token from `did`'s bucket at time `now`, or says when one will be there.
    pub fn take(&self, did: &str, now: Instant) -> Result<(), RateLimited> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let (rate, burst) = rules.rate_for(did);
        if rate == 0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(did) {
            buckets.retain(|d, b| {
                let (r, bu) = rules.rate_for(d);
                refill(*b, r, bu, now).tokens < bu as f64
            });
        }
        let b = buckets.entry(did.to_string()).or_insert(Bucket {
            tokens: burst as f64,
            at: now,
        });
        *b = refill(*b, rate, burst, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate as f64);
        Err(RateLimited {
            did: did.to_string(),
            rate,
            burst,
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }
}

fn refill(b: Bucket, rate: u64, burst: u64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate as f64).min(burst as f64),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(rate: u64, burst: u64, overrides: &[&str]) -> AuthorRates {
        AuthorRates::new(TenantsSection {
            rate_per_sec: rate,
            rate_burst: burst,
            rate_overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..TenantsSection::default()
        })
    }

    #[test]
    fn reconfigured_rates_apply_at_once_and_buckets_keep_their_tokens() {
        let r = rates(1, 1, &[]);
        let t0 = Instant::now();
        r.take("did:plc:a", t0).unwrap();
        assert!(r.take("did:plc:a", t0).is_err());
        r.reconfigure(&TenantsSection {
            rate_per_sec: 0,
            ..TenantsSection::default()
        });
        r.take("did:plc:a", t0).expect("0 turns the limit off");
        r.reconfigure(&TenantsSection {
            rate_per_sec: 1,
            rate_burst: 5,
            ..TenantsSection::default()
        });
        // The bucket was empty; a second later it has one token, not five.
        let t1 = t0 + Duration::from_secs(1);
        r.take("did:plc:a", t1).unwrap();
        let e = r.take("did:plc:a", t1).unwrap_err();
        assert_eq!(e.burst, 5);
    }

    #[test]
    fn burst_then_refill_per_author() {
        let r = rates(2, 3, &[]);
        let t0 = Instant::now();
        for _ in 0..3 {
            r.take("did:plc:a", t0).unwrap();
        }
        let e = r.take("did:plc:a", t0).unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
        assert_eq!(e.code(), "RateLimited");
        // Another author has a bucket of their own.
        r.take("did:plc:b", t0).unwrap();
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        r.take("did:plc:a", t1).unwrap();
        assert!(r.take("did:plc:a", t1).is_err());
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            r.take("did:plc:a", t2).unwrap();
        }
        assert!(r.take("did:plc:a", t2).is_err());
    }

    #[test]
    fn overrides_and_off() {
        let r = rates(1, 1, &["did:plc:big=0/0", "did:plc:mid=10/20"]);
        let t = Instant::now();
        for _ in 0..1000 {
            r.take("did:plc:big", t).unwrap();
        }
        for _ in 0..20 {
            r.take("did:plc:mid", t).unwrap();
        }
        assert!(r.take("did:plc:mid", t).is_err());
        let slow = rates(1, 1, &[]);
        slow.take("did:plc:x", t).unwrap();
        // At 1/s an empty bucket needs a whole second.
        assert_eq!(slow.take("did:plc:x", t).unwrap_err().retry_after_secs, 1);
        let off = rates(0, 0, &[]);
        for _ in 0..1000 {
            off.take("did:plc:x", t).unwrap();
        }
    }
}
