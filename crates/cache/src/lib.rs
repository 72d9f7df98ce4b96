//! The response cache (docs/cache.md): which bundle responses a runner may keep and serve to
//! other callers, for how long, the in-memory store that keeps them under a byte cap, and its
//! second tier on disk (`disk`).
//!
//! Owns: reading the caching headers of a request and of a response (`Cache-Control`, `Pragma`,
//! `Vary`, `Age`, `ETag`, `Last-Modified`, `If-None-Match`, `If-Modified-Since`), freshness, the
//! `Cache-Status` values (RFC 9211), the store and its eviction. Must not touch: how a response
//! is made, routed or rewritten (the HTTP layer looks up, forwards, and hands over what the
//! bundle answered), or which bundle version a key names: the caller puts the resolved version
//! (record CID, secrets CID) into the key, so a moved `latest`, a new record or a new secret can
//! never be answered from an older entry.
//!
//! A shared cache in the sense of RFC 9111, kept deliberately narrow: it stores only GET
//! responses that say how long they stay fresh (`s-maxage` or `max-age`), never one that sets a
//! cookie or says `private`, `no-store` or `no-cache`, and it is not used at all for a request
//! that carries credentials (`Cookie`, `Authorization`) or says `no-store`.

mod body;
mod directives;
mod disk;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

pub use body::CachingBody;
use directives::{RequestDirectives, ResponseDirectives};
pub use disk::{DiskError, DiskStore};

/// The response header that says what the cache did (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// This cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "at-rund";
/// Most stored variants (different values of the `Vary` headers) of one URL.
const MAX_VARIANTS: usize = 16;
/// Statuses that may be stored when the response says how long they stay fresh (RFC 9110's
/// heuristically cacheable ones, without 206: ranges are not stored).
const STORABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The store's byte caps (`cache.max_bytes`, `cache.max_entry_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All entries together: the least recently used go first beyond this.
    pub max_bytes: u64,
    /// One entry (body and headers): a larger response is passed on without being stored.
    pub max_entry_bytes: u64,
}

/// Why a request went to the bundle (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Not GET or HEAD: never looked up or stored.
    Method,
    /// The request carries `Cookie` or `Authorization`, or says `no-store`: not looked up or
    /// stored.
    Bypass,
    /// The request said `no-cache` (or a `max-age` the entry is older than): not served from
    /// the cache, but the answer may be stored.
    Request,
    /// Nothing is stored for this URL.
    UriMiss,
    /// Something is stored for this URL, for other values of the headers it varies on.
    VaryMiss,
    /// The stored response is stale.
    Stale,
}

impl Forward {
    const ALL: [Forward; 6] = [
        Forward::Method,
        Forward::Bypass,
        Forward::Request,
        Forward::UriMiss,
        Forward::VaryMiss,
        Forward::Stale,
    ];

    /// The RFC 9211 `fwd` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Method => "method",
            Forward::Bypass => "bypass",
            Forward::Request => "request",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
        }
    }
}

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    status: StatusCode,
    /// As the bundle sent them, after the runner's own rewriting, without `Age`.
    headers: HeaderMap,
    body: Bytes,
    /// The request's values of the headers the response varies on (`None`: absent).
    vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    stored_at: Instant,
    /// The response's own `Age` when it was stored.
    initial_age: u64,
    /// Seconds it stays fresh from its origin (`s-maxage`, else `max-age`).
    lifetime: u64,
    /// What it counts against `max_bytes`.
    size: u64,
}

impl Entry {
    fn age(&self, now: Instant) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored_at).as_secs())
    }

    fn matches(&self, req: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| joined(req, name).as_deref() == value.as_deref())
    }

    /// The validators the runner sends when it asks the bundle whether this entry still holds.
    pub fn validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut v = Vec::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            v.push((header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(lm) = self.headers.get(header::LAST_MODIFIED) {
            v.push((header::IF_MODIFIED_SINCE, lm.clone()));
        }
        v
    }
}

/// A response the cache answers with (a hit, or an entry the bundle said is still valid).
#[derive(Debug)]
pub struct Served {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Empty for HEAD and for 304.
    pub body: Bytes,
}

/// What the cache says about a request.
#[derive(Debug)]
pub enum Lookup {
    /// Answer with this; the bundle is not called.
    Hit(Served),
    /// Call the bundle. `stale` is the stored entry it may revalidate (it has validators and
    /// the request sent none of its own); the caller adds [`Entry::validators`] to the request
    /// and hands a 304 to [`ResponseCache::revalidated`].
    Forward {
        why: Forward,
        stale: Option<Arc<Entry>>,
    },
}

/// What is stored and how much of the cap it holds, and what the cache has done since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    /// Look-ups by outcome: `hit`, or the `fwd` value of a request the bundle answered.
    pub lookups: Vec<(&'static str, u64)>,
    /// Answers kept (a revalidated one counts again).
    pub stored: u64,
    /// Entries dropped to stay under `max_bytes`.
    pub evicted: u64,
}

/// Counters kept as the cache works.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    /// By `Forward::ALL`'s order.
    forwards: [AtomicU64; 6],
    stored: AtomicU64,
    evicted: AtomicU64,
}

/// The in-memory response cache of one runner.
#[derive(Debug)]
pub struct ResponseCache {
    limits: Limits,
    store: Mutex<Store>,
    counters: Counters,
    /// The second tier on disk (`cache.disk_max_bytes`), when on.
    disk: Option<DiskStore>,
}

#[derive(Debug, Default)]
struct Store {
    slots: HashMap<String, Slot>,
    /// Least recently used first: tick → key.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
    entries: u64,
}

#[derive(Debug)]
struct Slot {
    variants: Vec<Arc<Entry>>,
    tick: u64,
}

impl Store {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.slots.get_mut(key) {
            self.order.remove(&slot.tick);
            slot.tick = tick;
            self.order.insert(tick, key.to_string());
        }
    }

    /// Stores `entry`; returns how many entries were evicted to make room.
    fn insert(&mut self, key: String, entry: Arc<Entry>, max_bytes: u64) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.entry(key.clone()).or_insert_with(|| Slot {
            variants: Vec::new(),
            tick,
        });
        let mut freed = 0;
        let mut removed = 0;
        slot.variants.retain(|v| {
            let same = v.vary == entry.vary;
            if same {
                freed += v.size;
                removed += 1;
            }
            !same
        });
        if slot.variants.len() >= MAX_VARIANTS {
            let old = slot.variants.remove(0);
            freed += old.size;
            removed += 1;
        }
        self.bytes = self.bytes.saturating_sub(freed) + entry.size;
        self.entries = self.entries.saturating_sub(removed) + 1;
        slot.variants.push(entry);
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, key);
        let mut evicted = 0;
        while self.bytes > max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                for v in slot.variants {
                    self.bytes = self.bytes.saturating_sub(v.size);
                    self.entries = self.entries.saturating_sub(1);
                    evicted += 1;
                }
            }
        }
        evicted
    }
}

impl ResponseCache {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            store: Mutex::new(Store::default()),
            counters: Counters::default(),
            disk: None,
        }
    }

    /// A cache that also keeps its answers in `disk` and reads them back when memory misses.
    pub fn with_disk(limits: Limits, disk: DiskStore) -> Self {
        Self {
            disk: Some(disk),
            ..Self::new(limits)
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> Stats {
        let (entries, bytes) = {
            let s = self.store();
            (s.entries, s.bytes)
        };
        let c = &self.counters;
        let mut lookups = vec![("hit", c.hits.load(Ordering::Relaxed))];
        for (why, n) in Forward::ALL.iter().zip(&c.forwards) {
            lookups.push((why.as_str(), n.load(Ordering::Relaxed)));
        }
        Stats {
            entries,
            bytes,
            lookups,
            stored: c.stored.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    /// Looks `key` (the resolved bundle version and the full route, see the module doc) up for
    /// a request.
    pub fn lookup(&self, key: &str, method: &Method, req: &HeaderMap, now: Instant) -> Lookup {
        let found = self.find(key, method, req, now);
        let c = &self.counters;
        match &found {
            Lookup::Hit(_) => c.hits.fetch_add(1, Ordering::Relaxed),
            Lookup::Forward { why, .. } => {
                let i = Forward::ALL.iter().position(|f| f == why).unwrap_or(0);
                c.forwards[i].fetch_add(1, Ordering::Relaxed)
            }
        };
        found
    }

    fn find(&self, key: &str, method: &Method, req: &HeaderMap, now: Instant) -> Lookup {
        let forward = |why, stale| Lookup::Forward { why, stale };
        if method != Method::GET && method != Method::HEAD {
            return forward(Forward::Method, None);
        }
        let rq = RequestDirectives::parse(req);
        if carries_credentials(req) || rq.no_store {
            return forward(Forward::Bypass, None);
        }
        let mut store = self.store();
        if let (false, Some(disk)) = (store.slots.contains_key(key), &self.disk) {
            drop(store);
            // One indexed read, on a memory miss only (the bundle call it may save costs far
            // more); what it finds joins memory as if just stored.
            let loaded = disk.load(key);
            store = self.store();
            if !store.slots.contains_key(key) {
                for e in loaded {
                    let evicted = store.insert(key.to_string(), Arc::new(e), self.limits.max_bytes);
                    self.counters.evicted.fetch_add(evicted, Ordering::Relaxed);
                }
            }
        }
        let Some(slot) = store.slots.get(key) else {
            return forward(Forward::UriMiss, None);
        };
        let Some(entry) = slot.variants.iter().rev().find(|e| e.matches(req)).cloned() else {
            return forward(Forward::VaryMiss, None);
        };
        // The client's own conditionals go to the bundle as they are when it revalidates.
        let revalidate =
            |e: Arc<Entry>| (!has_conditionals(req) && !e.validators().is_empty()).then_some(e);
        let age = entry.age(now);
        if age >= entry.lifetime {
            drop(store);
            return forward(Forward::Stale, revalidate(entry));
        }
        if rq.no_cache || rq.max_age.is_some_and(|max| age > max) {
            drop(store);
            return forward(Forward::Request, revalidate(entry));
        }
        store.touch(key);
        drop(store);
        let status = format!("{CACHE_NAME}; hit; ttl={}", entry.lifetime - age);
        Lookup::Hit(serve(&entry, method, req, age, &status))
    }

    /// Whether the bundle's answer to a request may be stored; if so, the body to send on in
    /// its place, which stores the response once its last byte has passed. `key` as for
    /// [`ResponseCache::lookup`].
    pub fn admit<B: http_body::Body<Data = Bytes>>(
        self: &Arc<Self>,
        key: String,
        method: &Method,
        req: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        body: B,
    ) -> Result<CachingBody<B>, B> {
        match self.storable(method, req, status, headers) {
            Some(partial) => Ok(CachingBody::new(body, self.clone(), key, partial)),
            None => Err(body),
        }
    }

    /// The entry a response would become, without its body, if it may be stored.
    fn storable(
        &self,
        method: &Method,
        req: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Entry> {
        if method != Method::GET
            || carries_credentials(req)
            || RequestDirectives::parse(req).no_store
            || !STORABLE.contains(&status.as_u16())
            || headers.contains_key(header::SET_COOKIE)
        {
            return None;
        }
        let rd = ResponseDirectives::parse(headers);
        if rd.no_store || rd.private || rd.no_cache {
            return None;
        }
        let lifetime = rd.s_maxage.or(rd.max_age).filter(|l| *l > 0)?;
        let initial_age = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if initial_age >= lifetime {
            return None;
        }
        let mut vary = Vec::new();
        for v in headers.get_all(header::VARY) {
            for name in v.to_str().ok()?.split(',') {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                if name == "*" {
                    return None;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = joined(req, &name);
                vary.push((name, value));
            }
        }
        let mut stored = headers.clone();
        stored.remove(header::AGE);
        stored.remove(&CACHE_STATUS);
        let header_bytes: u64 = stored
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len() + 32) as u64)
            .sum();
        Some(Entry {
            status,
            headers: stored,
            body: Bytes::new(),
            vary,
            stored_at: Instant::now(),
            initial_age,
            lifetime,
            size: header_bytes + 256,
        })
    }

    /// Stores a complete response (called by [`CachingBody`] at its end).
    fn put(&self, key: String, mut entry: Entry, body: Bytes) {
        entry.size += body.len() as u64 + key.len() as u64;
        if entry.size > self.limits.max_entry_bytes {
            return;
        }
        entry.body = body;
        let entry = Arc::new(entry);
        if let Some(disk) = &self.disk {
            disk.put(&key, entry.clone());
        }
        let evicted = self.store().insert(key, entry, self.limits.max_bytes);
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        self.counters.evicted.fetch_add(evicted, Ordering::Relaxed);
    }

    /// The bundle answered 304 to the validators of `stale`: the entry, refreshed with the
    /// 304's headers, stored again if it still may be, and served.
    pub fn revalidated(
        &self,
        key: String,
        stale: &Entry,
        method: &Method,
        req: &HeaderMap,
        not_modified: &HeaderMap,
    ) -> Served {
        let mut headers = stale.headers.clone();
        for name in not_modified.keys() {
            // The 304 describes the stored representation; its framing is not the body's.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let mut status = format!("{CACHE_NAME}; fwd=stale; fwd-status=304");
        let mut age = 0;
        if let Some(mut fresh) = self.storable(&Method::GET, req, stale.status, &headers) {
            age = fresh.initial_age;
            fresh.vary = stale.vary.clone();
            fresh.body = stale.body.clone();
            status.push_str("; stored");
            let served = serve(&fresh, method, req, age, &status);
            self.put(key, fresh, stale.body.clone());
            return served;
        }
        let entry = Entry {
            status: stale.status,
            headers,
            body: stale.body.clone(),
            vary: Vec::new(),
            stored_at: Instant::now(),
            initial_age: 0,
            lifetime: 0,
            size: 0,
        };
        serve(&entry, method, req, age, &status)
    }
}

/// The `Cache-Status` value of a request the bundle answered.
pub fn forwarded_status(why: Forward, stored: bool) -> HeaderValue {
    // Made once: this header is on every forwarded call, so no formatting on the warm path.
    static VALUES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| {
        Forward::ALL
            .iter()
            .flat_map(|w| {
                [false, true].map(|stored| {
                    let s = format!(
                        "{CACHE_NAME}; fwd={}{}",
                        w.as_str(),
                        if stored { "; stored" } else { "" }
                    );
                    // ASCII letters, digits, `-`, `;`, `=` and spaces.
                    HeaderValue::from_str(&s)
                        .unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
                })
            })
            .collect()
    });
    let i = Forward::ALL.iter().position(|f| *f == why).unwrap_or(0) * 2 + usize::from(stored);
    values
        .get(i)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(CACHE_NAME))
}

/// `entry` as the answer to `req`: a 304 when the request's conditionals say it has it, else
/// the stored status, headers and (but for HEAD) body; with `Age` and `Cache-Status`.
fn serve(entry: &Entry, method: &Method, req: &HeaderMap, age: u64, status: &str) -> Served {
    let mut headers;
    let (code, body) = if entry.status == StatusCode::OK && not_modified(entry, req) {
        headers = HeaderMap::new();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::LAST_MODIFIED,
            header::VARY,
        ] {
            for v in entry.headers.get_all(&name) {
                headers.append(name.clone(), v.clone());
            }
        }
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        headers = entry.headers.clone();
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        (entry.status, body)
    };
    headers.insert(header::AGE, HeaderValue::from(age));
    if let Ok(v) = HeaderValue::from_str(status) {
        headers.insert(CACHE_STATUS, v);
    }
    Served {
        status: code,
        headers,
        body,
    }
}

/// RFC 9110 §13.1: `If-None-Match` (weak comparison) decides when present, else
/// `If-Modified-Since` against the entry's `Last-Modified`.
fn not_modified(entry: &Entry, req: &HeaderMap) -> bool {
    let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let Some(etag) = entry
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let ours = opaque(etag);
        return inm
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || opaque(t) == ours);
    }
    let date = |v: Option<&HeaderValue>| -> Option<SystemTime> {
        httpdate::parse_http_date(v?.to_str().ok()?).ok()
    };
    match (
        date(req.get(header::IF_MODIFIED_SINCE)),
        date(entry.headers.get(header::LAST_MODIFIED)),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

fn carries_credentials(req: &HeaderMap) -> bool {
    req.contains_key(header::COOKIE) || req.contains_key(header::AUTHORIZATION)
}

fn has_conditionals(req: &HeaderMap) -> bool {
    [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|h| req.contains_key(h))
}

/// All values of `name` in `req`, joined as one field would be; `None` when absent.
fn joined(req: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in req.get_all(name) {
        let o = out.get_or_insert_with(Vec::new);
        if !o.is_empty() {
            o.extend_from_slice(b", ");
        }
        o.extend_from_slice(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
