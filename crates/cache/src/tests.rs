use std::time::Duration;

use http_body_util::{BodyExt, Full};

use super::*;

fn cache() -> Arc<ResponseCache> {
    Arc::new(ResponseCache::new(Limits {
        max_bytes: 10_000,
        max_entry_bytes: 2_000,
    }))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// Runs a response through `admit` and its body to the end; true when it was stored.
async fn store(
    c: &Arc<ResponseCache>,
    key: &str,
    req: &HeaderMap,
    resp: &[(&str, &str)],
    body: &str,
) -> bool {
    match c.admit(
        key.to_string(),
        &Method::GET,
        req,
        StatusCode::OK,
        &headers(resp),
        Full::new(Bytes::from(body.to_string())),
    ) {
        Ok(b) => {
            let got = b.collect().await.unwrap().to_bytes();
            assert_eq!(got, body, "the body passes through unchanged");
            hit(c, key, req, Instant::now()).is_some_and(|s| s.body == body)
        }
        Err(_) => false,
    }
}

fn hit(c: &ResponseCache, key: &str, req: &HeaderMap, at: Instant) -> Option<Served> {
    match c.lookup(key, &Method::GET, req, at) {
        Lookup::Hit(s) => Some(s),
        Lookup::Forward { .. } => None,
    }
}

fn why(c: &ResponseCache, key: &str, method: Method, req: &HeaderMap, at: Instant) -> Forward {
    match c.lookup(key, &method, req, at) {
        Lookup::Forward { why, .. } => why,
        Lookup::Hit(_) => panic!("unexpected hit"),
    }
}

#[tokio::test]
async fn a_public_response_is_stored_served_with_age_and_expires() {
    let c = cache();
    let req = HeaderMap::new();
    assert_eq!(
        why(&c, "k", Method::GET, &req, Instant::now()),
        Forward::UriMiss
    );
    assert!(
        store(
            &c,
            "k",
            &req,
            &[("cache-control", "public, max-age=60"), ("age", "5")],
            "hello"
        )
        .await
    );
    let now = Instant::now();
    let s = hit(&c, "k", &req, now).expect("hit");
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body, "hello");
    assert_eq!(s.headers["age"], "5");
    assert_eq!(s.headers["cache-status"], "at-rund; hit; ttl=55");
    let head = match c.lookup("k", &Method::HEAD, &req, now) {
        Lookup::Hit(s) => s,
        other => panic!("{other:?}"),
    };
    assert!(head.body.is_empty());
    // 55 s later it is stale, and without validators there is nothing to revalidate.
    match c.lookup("k", &Method::GET, &req, now + Duration::from_secs(55)) {
        Lookup::Forward {
            why: Forward::Stale,
            stale: None,
        } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn s_maxage_wins_over_max_age() {
    let c = cache();
    let req = HeaderMap::new();
    assert!(
        store(
            &c,
            "k",
            &req,
            &[("cache-control", "max-age=600, s-maxage=2")],
            "x"
        )
        .await
    );
    let now = Instant::now();
    assert!(hit(&c, "k", &req, now).is_some());
    assert_eq!(
        why(&c, "k", Method::GET, &req, now + Duration::from_secs(2)),
        Forward::Stale
    );
}

#[tokio::test]
async fn what_must_not_be_shared_is_never_stored() {
    let c = cache();
    let none = HeaderMap::new();
    for resp in [
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "no-store, max-age=60")],
        &[("cache-control", "no-cache, max-age=60")],
        &[("cache-control", "private=\"x\", max-age=60")],
        &[("cache-control", "public")],
        &[("cache-control", "max-age=0")],
        &[("cache-control", "max-age=abc")],
        &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
        &[("cache-control", "max-age=60"), ("vary", "*")],
        &[("cache-control", "max-age=60"), ("age", "60")],
        &[],
    ] {
        assert!(!store(&c, "k", &none, resp, "x").await, "{resp:?}");
    }
    // Credentials or no-store on the request: neither stored nor looked up.
    for req in [
        headers(&[("cookie", "s=1")]),
        headers(&[("authorization", "Bearer t")]),
        headers(&[("cache-control", "no-store")]),
    ] {
        assert!(!store(&c, "k", &req, &[("cache-control", "max-age=60")], "x").await);
        assert_eq!(
            why(&c, "k", Method::GET, &req, Instant::now()),
            Forward::Bypass
        );
    }
    assert_eq!(
        why(&c, "k", Method::POST, &none, Instant::now()),
        Forward::Method
    );
    let st = c.stats();
    assert_eq!((st.entries, st.bytes, st.stored), (0, 0, 0));
    let count = |what: &str| st.lookups.iter().find(|(w, _)| *w == what).unwrap().1;
    assert_eq!((count("bypass"), count("method"), count("hit")), (3, 1, 0));
}

#[tokio::test]
async fn other_statuses_and_methods() {
    let c = cache();
    let req = HeaderMap::new();
    let resp = headers(&[("cache-control", "max-age=60")]);
    for (method, status, ok) in [
        (Method::GET, StatusCode::NOT_FOUND, true),
        (Method::GET, StatusCode::PARTIAL_CONTENT, false),
        (Method::GET, StatusCode::INTERNAL_SERVER_ERROR, false),
        (Method::HEAD, StatusCode::OK, false),
        (Method::POST, StatusCode::OK, false),
    ] {
        let admitted = c
            .admit(
                "k".into(),
                &method,
                &req,
                status,
                &resp,
                Full::new(Bytes::new()),
            )
            .is_ok();
        assert_eq!(admitted, ok, "{method} {status}");
    }
}

#[tokio::test]
async fn vary_keeps_one_variant_per_value() {
    let c = cache();
    let en = headers(&[("accept-language", "en")]);
    let de = headers(&[("accept-language", "de")]);
    let resp = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    assert!(store(&c, "k", &en, &resp, "hello").await);
    assert_eq!(
        why(&c, "k", Method::GET, &de, Instant::now()),
        Forward::VaryMiss
    );
    assert_eq!(
        why(&c, "k", Method::GET, &HeaderMap::new(), Instant::now()),
        Forward::VaryMiss
    );
    assert!(store(&c, "k", &de, &resp, "hallo").await);
    assert_eq!(hit(&c, "k", &en, Instant::now()).unwrap().body, "hello");
    assert_eq!(hit(&c, "k", &de, Instant::now()).unwrap().body, "hallo");
    // The same variant again replaces it.
    assert!(store(&c, "k", &de, &resp, "servus").await);
    assert_eq!(c.stats().entries, 2);
    assert_eq!(hit(&c, "k", &de, Instant::now()).unwrap().body, "servus");
}

#[tokio::test]
async fn client_conditionals_get_304_from_the_cache() {
    let c = cache();
    let none = HeaderMap::new();
    let resp = [
        ("cache-control", "max-age=60"),
        ("etag", "W/\"v1\""),
        ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ("content-type", "text/plain"),
    ];
    assert!(store(&c, "k", &none, &resp, "body").await);
    let now = Instant::now();
    let s = hit(
        &c,
        "k",
        &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
        now,
    )
    .unwrap();
    assert_eq!(s.status, StatusCode::NOT_MODIFIED);
    assert!(s.body.is_empty());
    assert_eq!(s.headers["etag"], "W/\"v1\"");
    assert!(s.headers.get("content-type").is_none());
    let s = hit(&c, "k", &headers(&[("if-none-match", "\"v2\"")]), now).unwrap();
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body, "body");
    let later = headers(&[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")]);
    assert_eq!(
        hit(&c, "k", &later, now).unwrap().status,
        StatusCode::NOT_MODIFIED
    );
    let earlier = headers(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]);
    assert_eq!(hit(&c, "k", &earlier, now).unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_stale_entry_with_validators_is_revalidated_and_refreshed() {
    let c = cache();
    let req = HeaderMap::new();
    let resp = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("x-a", "1"),
    ];
    assert!(store(&c, "k", &req, &resp, "body").await);
    let stale = match c.lookup(
        "k",
        &Method::GET,
        &req,
        Instant::now() + Duration::from_secs(11),
    ) {
        Lookup::Forward {
            why: Forward::Stale,
            stale: Some(e),
        } => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        stale.validators(),
        vec![(header::IF_NONE_MATCH, HeaderValue::from_static("\"v1\""))]
    );
    // A request with its own conditionals is not revalidated on the cache's behalf.
    match c.lookup(
        "k",
        &Method::GET,
        &headers(&[("if-none-match", "\"x\"")]),
        Instant::now() + Duration::from_secs(11),
    ) {
        Lookup::Forward {
            why: Forward::Stale,
            stale: None,
        } => {}
        other => panic!("{other:?}"),
    }
    let s = c.revalidated(
        "k".into(),
        &stale,
        &Method::GET,
        &req,
        &headers(&[
            ("cache-control", "max-age=30"),
            ("x-a", "2"),
            ("content-length", "0"),
        ]),
    );
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body, "body");
    assert_eq!(s.headers["x-a"], "2");
    assert_eq!(
        s.headers["cache-status"],
        "at-rund; fwd=stale; fwd-status=304; stored"
    );
    // Fresh again, for the new lifetime.
    let s = hit(&c, "k", &req, Instant::now() + Duration::from_secs(20)).unwrap();
    assert_eq!(s.body, "body");
    assert_eq!(c.stats().entries, 1);
}

#[tokio::test]
async fn request_no_cache_and_max_age_go_to_the_bundle() {
    let c = cache();
    let req = HeaderMap::new();
    assert!(store(&c, "k", &req, &[("cache-control", "max-age=60")], "x").await);
    let now = Instant::now();
    for r in [
        headers(&[("cache-control", "no-cache")]),
        headers(&[("pragma", "no-cache")]),
        headers(&[("cache-control", "max-age=0")]),
    ] {
        assert_eq!(
            why(&c, "k", Method::GET, &r, now + Duration::from_secs(1)),
            Forward::Request,
            "{r:?}"
        );
    }
    assert!(hit(&c, "k", &headers(&[("cache-control", "max-age=30")]), now).is_some());
}

#[tokio::test]
async fn caps_bound_entries_and_the_whole() {
    let c = cache();
    let req = HeaderMap::new();
    let resp = [("cache-control", "max-age=60")];
    assert!(
        !store(&c, "big", &req, &resp, &"x".repeat(2_500)).await,
        "over max_entry_bytes"
    );
    for i in 0..20 {
        assert!(store(&c, &format!("k{i}"), &req, &resp, &"x".repeat(1_000)).await);
        assert!(c.stats().bytes <= 10_000);
    }
    // The least recently used went first: k19 (just stored) is there, k0 is not.
    assert!(hit(&c, "k19", &req, Instant::now()).is_some());
    assert_eq!(
        why(&c, "k0", Method::GET, &req, Instant::now()),
        Forward::UriMiss
    );
    // A hit makes an entry recent.
    let survivor = (0..20)
        .map(|i| format!("k{i}"))
        .find(|k| hit(&c, k, &req, Instant::now()).is_some())
        .unwrap();
    for i in 20..27 {
        assert!(store(&c, &format!("k{i}"), &req, &resp, &"x".repeat(1_000)).await);
    }
    assert!(hit(&c, &survivor, &req, Instant::now()).is_some() || c.stats().entries < 8);
    let st = c.stats();
    assert_eq!(st.stored, 27);
    assert_eq!(st.evicted, 27 - st.entries);
}

#[tokio::test]
async fn a_body_that_fails_or_has_trailers_is_not_stored() {
    use http_body_util::StreamBody;
    let c = cache();
    let req = HeaderMap::new();
    let resp = headers(&[("cache-control", "max-age=60")]);
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Err(std::io::Error::other("cut")),
    ];
    let body = StreamBody::new(futures_lite(frames));
    let b = c
        .admit("k".into(), &Method::GET, &req, StatusCode::OK, &resp, body)
        .ok()
        .unwrap();
    assert!(b.collect().await.is_err());
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Ok(Frame::trailers(HeaderMap::new())),
    ];
    let b = c
        .admit(
            "k".into(),
            &Method::GET,
            &req,
            StatusCode::OK,
            &resp,
            StreamBody::new(futures_lite(frames)),
        )
        .ok()
        .unwrap();
    let _ = b.collect().await.unwrap();
    assert_eq!((c.stats().entries, c.stats().stored), (0, 0));
}

use http_body::Frame;

fn futures_lite<T>(items: Vec<T>) -> futures::stream::Iter<std::vec::IntoIter<T>> {
    futures::stream::iter(items)
}

/// The disk tier: an answer kept by one cache is served by another opened on the same file (a
/// restart), aged by the time in between, with its `Vary` variant; the file keeps to its cap.
#[tokio::test]
async fn answers_kept_on_disk_survive_a_restart_and_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.sqlite");
    let limits = Limits {
        max_bytes: 10_000,
        max_entry_bytes: 2_000,
    };
    let first = Arc::new(ResponseCache::with_disk(
        limits,
        DiskStore::open(&path, 5_000).unwrap(),
    ));
    let fr = headers(&[("accept-language", "fr")]);
    assert!(
        store(
            &first,
            "k",
            &fr,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "accept-language"),
                ("etag", "\"v1\"")
            ],
            "bonjour"
        )
        .await
    );
    // The writer is a background thread: give it a moment, then "restart".
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first);
    let second = Arc::new(ResponseCache::with_disk(
        limits,
        DiskStore::open(&path, 5_000).unwrap(),
    ));
    let served = hit(&second, "k", &fr, Instant::now()).expect("served from disk");
    assert_eq!(served.body, "bonjour");
    assert_eq!(served.headers.get(header::ETAG).unwrap(), "\"v1\"");
    assert!(
        hit(
            &second,
            "k",
            &headers(&[("accept-language", "de")]),
            Instant::now()
        )
        .is_none(),
        "another variant is not served"
    );
    assert!(hit(&second, "other", &fr, Instant::now()).is_none());

    // Past the file's cap the least recently used go.
    let big = "x".repeat(1_500);
    for i in 0..6 {
        assert!(
            store(
                &second,
                &format!("big{i}"),
                &HeaderMap::new(),
                &[("cache-control", "max-age=60")],
                &big
            )
            .await
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (n, bytes): (i64, i64) = conn
        .query_row("SELECT COUNT(*), SUM(size) FROM entries", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(bytes <= 5_000 && n >= 2, "{n} entries, {bytes} bytes");
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM entries")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|k| k.unwrap())
        .collect();
    assert!(
        keys.contains(&"big5".to_string()) && !keys.contains(&"big0".to_string()),
        "{keys:?}"
    );
}

#[test]
fn forwarded_status_values_follow_rfc_9211() {
    for why in Forward::ALL {
        for stored in [false, true] {
            let want = format!(
                "{CACHE_NAME}; fwd={}{}",
                why.as_str(),
                if stored { "; stored" } else { "" }
            );
            assert_eq!(forwarded_status(why, stored), want.as_str());
        }
    }
}
