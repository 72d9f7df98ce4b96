//! What the admin listener's status page (`status_page`) shows that no other part of the runner
//! keeps: the last error responses of invocations, the phases of the last cold starts, and the
//! bundles called lately with their names (the pool knows instances only by author and record
//! CID).
//!
//! Owns: those three bounded lists and what goes into them. An error is kept as its name, status,
//! request id and the author, bundle and endpoint as the caller sent them (cut to
//! [`MAX_TEXT`] characters), never its message: messages may name host paths. Must not touch:
//! HTML (`status_page`), the metrics (they aggregate; these are the last few samples), anything
//! a request waits for beyond one short lock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use atrund_metrics::ColdStart;
use atrund_pool::InstanceKey;

/// Error responses kept, newest first.
pub const MAX_ERRORS: usize = 50;
/// Cold starts whose phases give the medians.
pub const MAX_COLD_STARTS: usize = 101;
/// Bundle versions kept, most recently called first.
pub const MAX_BUNDLES: usize = 50;
/// Longest text kept of what a caller sent (author, bundle, endpoint), in characters.
pub const MAX_TEXT: usize = 128;

/// One invocation answered with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    pub at: SystemTime,
    /// `x-request-id` of the response (empty when there was none).
    pub request_id: String,
    pub status: u16,
    /// The error's name (`BundleNotFound`, `Busy`, ...).
    pub code: &'static str,
    /// As the caller sent them.
    pub author: String,
    pub name: String,
    pub endpoint: String,
}

/// One version of a bundle this runner resolved lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// The author's DID (`local` for the dev bundle).
    pub author: String,
    pub name: String,
    /// The pool's name of the version (`InstanceKey`'s display: record CID, `+` secrets CID).
    pub key: String,
    /// The last call's endpoint and status; `None` for a bundle only pre-warmed so far.
    pub last_call: Option<(String, u16)>,
    pub calls: u64,
    pub last_seen: SystemTime,
}

/// The median of one cold-start phase over the kept samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseMedian {
    pub phase: &'static str,
    /// Samples that had this phase.
    pub samples: usize,
    pub median: Option<Duration>,
}

/// A copy of the lists, for one rendering.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    pub errors: Vec<ErrorEntry>,
    pub bundles: Vec<BundleEntry>,
    /// `identity`, `fetch`, `start`, in that order.
    pub phases: Vec<PhaseMedian>,
    /// Cold starts the medians are taken over.
    pub cold_starts: usize,
}

#[derive(Default)]
struct Lists {
    errors: VecDeque<ErrorEntry>,
    cold: VecDeque<ColdStart>,
    bundles: VecDeque<BundleEntry>,
}

/// The runner's recent history for the status page; shared by the request handlers.
pub struct StatusBoard {
    started: SystemTime,
    lists: Mutex<Lists>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

/// `s` cut to [`MAX_TEXT`] characters, with `…` when cut.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn push_front<T>(list: &mut VecDeque<T>, item: T, cap: usize) {
    list.push_front(item);
    list.truncate(cap);
}

impl StatusBoard {
    /// An empty board; the runner's start is now.
    pub fn new() -> Self {
        StatusBoard {
            started: SystemTime::now(),
            lists: Mutex::default(),
        }
    }

    /// When the runner started (when the board was made).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // Every critical section only pushes or copies; a panic elsewhere leaves them whole.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An invocation answered with an error; what the caller sent is cut to [`MAX_TEXT`].
    pub fn error(&self, e: ErrorEntry) {
        let e = ErrorEntry {
            request_id: cut(&e.request_id),
            author: cut(&e.author),
            name: cut(&e.name),
            endpoint: cut(&e.endpoint),
            ..e
        };
        push_front(&mut self.lock().errors, e, MAX_ERRORS);
    }

    /// A request's cold start that succeeded, with the phases that were timed.
    pub fn cold_start(&self, c: ColdStart) {
        push_front(&mut self.lock().cold, c, MAX_COLD_STARTS);
    }

    /// A bundle version resolved for a call (`call`: its endpoint and status) or a pre-warm. Its
    /// author, name and endpoint have been validated by then, so they are kept whole. Called for
    /// every invocation: a bundle called again is found near the front and allocates nothing
    /// unless its endpoint changed.
    pub fn bundle(&self, name: &str, key: &InstanceKey, call: Option<(&str, u16)>) {
        let now = SystemTime::now();
        let mut lists = self.lock();
        let found = lists
            .bundles
            .iter()
            .position(|b| *b.author == *key.author && names(&b.key, key) && b.name == name);
        let mut entry = match found.and_then(|i| lists.bundles.remove(i)) {
            Some(e) => e,
            None => BundleEntry {
                author: key.author.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                last_call: None,
                calls: 0,
                last_seen: now,
            },
        };
        entry.last_seen = now;
        if let Some((endpoint, status)) = call {
            entry.calls += 1;
            match &mut entry.last_call {
                Some((e, s)) if e == endpoint => *s = status,
                last => *last = Some((endpoint.to_string(), status)),
            }
        }
        push_front(&mut lists.bundles, entry, MAX_BUNDLES);
    }

    /// A copy of everything, with the cold-start medians worked out.
    pub fn recent(&self) -> Recent {
        let lists = self.lock();
        let phase = |phase: &'static str, get: fn(&ColdStart) -> Option<Duration>| {
            let mut v: Vec<Duration> = lists.cold.iter().filter_map(get).collect();
            v.sort_unstable();
            PhaseMedian {
                phase,
                samples: v.len(),
                median: median(&v),
            }
        };
        Recent {
            errors: lists.errors.iter().cloned().collect(),
            bundles: lists.bundles.iter().cloned().collect(),
            phases: vec![
                phase("identity", |c| c.identity),
                phase("fetch", |c| c.fetch),
                phase("start", |c| c.start),
            ],
            cold_starts: lists.cold.len(),
        }
    }
}

/// True when `text` is `key`'s display (`{bundle}` or `{bundle}+{secrets}`), without making it.
fn names(text: &str, key: &InstanceKey) -> bool {
    match &key.secrets {
        None => text == &*key.bundle,
        Some(s) => text
            .strip_prefix(&*key.bundle)
            .and_then(|rest| rest.strip_prefix('+'))
            .is_some_and(|rest| rest == &**s),
    }
}

/// The median of sorted durations (the mean of the two middle ones for an even count).
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cid: &str) -> InstanceKey {
        InstanceKey {
            author: "did:plc:a".into(),
            bundle: cid.into(),
            secrets: None,
        }
    }

    fn error(n: usize) -> ErrorEntry {
        ErrorEntry {
            at: SystemTime::now(),
            request_id: format!("r{n}"),
            status: 404,
            code: "BundleNotFound",
            author: "did:plc:a".into(),
            name: format!("b{n}"),
            endpoint: "e".into(),
        }
    }

    #[test]
    fn errors_are_bounded_newest_first_and_cut() {
        let b = StatusBoard::new();
        for n in 0..MAX_ERRORS + 7 {
            b.error(error(n));
        }
        let mut long = error(999);
        long.name = "é".repeat(MAX_TEXT + 50);
        b.error(long);
        let r = b.recent();
        assert_eq!(r.errors.len(), MAX_ERRORS);
        assert_eq!(r.errors[0].name.chars().count(), MAX_TEXT + 1);
        assert!(r.errors[0].name.ends_with('…'));
        assert_eq!(r.errors[1].request_id, format!("r{}", MAX_ERRORS + 6));
        assert_eq!(r.errors[MAX_ERRORS - 1].request_id, "r8");
    }

    #[test]
    fn bundles_move_to_the_front_and_count_calls() {
        let b = StatusBoard::new();
        b.bundle("one", &key("c1"), None);
        b.bundle("two", &key("c2"), Some(("greet", 200)));
        b.bundle("one", &key("c1"), Some(("hi", 502)));
        b.bundle("one", &key("c1"), Some(("hi", 200)));
        let r = b.recent();
        let shown: Vec<_> = r
            .bundles
            .iter()
            .map(|e| (e.name.as_str(), e.calls, e.last_call.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                ("one", 2, Some(("hi".to_string(), 200))),
                ("two", 1, Some(("greet".to_string(), 200)))
            ]
        );
        for n in 0..MAX_BUNDLES + 3 {
            b.bundle("x", &key(&format!("k{n}")), None);
        }
        assert_eq!(b.recent().bundles.len(), MAX_BUNDLES);
    }

    #[test]
    fn keys_are_matched_as_displayed() {
        let mut k = key("c1");
        assert!(names("c1", &k));
        assert!(!names("c1+s", &k));
        k.secrets = Some("s".into());
        assert!(names(&k.to_string(), &k));
        assert!(!names("c1", &k) && !names("c1+t", &k) && !names("c1s", &k));
    }

    #[test]
    fn medians_per_phase_over_the_last_samples() {
        let b = StatusBoard::new();
        assert_eq!(b.recent().phases[0].median, None);
        let ms = Duration::from_millis;
        for (i, s) in [5, 1, 3, 100].into_iter().enumerate() {
            b.cold_start(ColdStart {
                identity: (i < 3).then(|| ms(s)),
                fetch: Some(ms(s * 2)),
                start: Some(ms(s * 10)),
            });
        }
        let r = b.recent();
        assert_eq!(r.cold_starts, 4);
        let p: Vec<_> = r
            .phases
            .iter()
            .map(|p| (p.phase, p.samples, p.median))
            .collect();
        assert_eq!(
            p,
            [
                ("identity", 3, Some(ms(3))),
                ("fetch", 4, Some(ms(8))),
                ("start", 4, Some(ms(40))),
            ]
        );
        for _ in 0..MAX_COLD_STARTS {
            b.cold_start(ColdStart {
                identity: None,
                fetch: None,
                start: Some(ms(7)),
            });
        }
        let r = b.recent();
        assert_eq!(r.cold_starts, MAX_COLD_STARTS);
        assert_eq!(r.phases[2].median, Some(ms(7)));
        assert_eq!(r.phases[0].samples, 0);
    }
}
