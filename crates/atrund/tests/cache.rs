//! The response cache (docs/cache.md) on a real at-rund (`dev`, real Deno): a bundle whose
//! endpoints count their calls, so every assertion sees whether the bundle ran. What a bundle
//! says may be shared is answered from memory, with `Age` and `Cache-Status`; what must not be
//! shared (private, cookie-setting, credentialed, non-GET) always reaches the bundle; `Vary` keeps
//! variants apart; a stale entry is revalidated with the bundle's own validators; an edit of the
//! code (a new version) never meets an older answer; a caller's odd `Host` does not reach others.

mod common;

use std::time::Duration;

use common::Daemon;

const CODE: &str = r#"
let calls = 0;
const counted = (headers) => () => new Response(String(++calls), { headers });
export const shared = { method: "GET", handler: counted({ "cache-control": "public, max-age=60", etag: '"v1"' }) };
export const personal = { method: "GET", handler: counted({ "cache-control": "private, max-age=60" }) };
export const cookie = { method: "GET", handler: counted({ "cache-control": "max-age=60", "set-cookie": "s=1" }) };
export const plain = { method: "GET", handler: counted({}) };
export const lang = {
  method: "GET",
  handler: (_i, ctx) => new Response(`${ctx.request.headers.get("accept-language")} ${++calls}`, {
    headers: { "cache-control": "max-age=60", vary: "Accept-Language" },
  }),
};
export const host = {
  method: "GET",
  handler: (_i, ctx) => new Response(`${ctx.request.headers.get("host")} ${++calls}`, {
    headers: { "cache-control": "max-age=60" },
  }),
};
let revalidations = 0;
export const short = {
  method: "GET",
  handler: (_i, ctx) => {
    const headers = { "cache-control": "max-age=1", etag: '"s1"' };
    if (ctx.request.headers.get("if-none-match") === '"s1"') {
      revalidations++;
      return new Response(null, { status: 304, headers });
    }
    return new Response(`short ${++calls}`, { headers });
  },
};
export const stats = { method: "GET", handler: () => ({ calls, revalidations }) };
export const post = { method: "POST", handler: counted({ "cache-control": "max-age=60" }) };
"#;

fn manifest() -> String {
    let names = [
        "shared", "personal", "cookie", "plain", "lang", "host", "short", "stats",
    ];
    let mut endpoints: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({ "name": n, "method": "GET" }))
        .collect();
    endpoints.push(serde_json::json!({ "name": "post", "method": "POST" }));
    serde_json::json!({ "endpoints": endpoints }).to_string()
}

struct Answer {
    status: u16,
    cache_status: Option<String>,
    age: Option<String>,
    body: String,
}

async fn call(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("request");
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (cache_status, age) = (h("cache-status"), h("age"));
    Answer {
        status: resp.status().as_u16(),
        cache_status,
        age,
        body: resp.text().await.expect("body"),
    }
}

/// `at-rund dev` serving [`CODE`] from a temp folder, with `env` added.
struct Dev {
    d: Daemon,
    dir: tempfile::TempDir,
    _data: tempfile::TempDir,
}

fn start(env: &[(&str, &str)]) -> Option<Dev> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), CODE).unwrap();
    std::fs::write(dir.path().join("manifest.json"), manifest()).unwrap();
    start_in(dir, tempfile::tempdir().unwrap(), env)
}

/// As [`start`], on an existing folder and data dir (a restart).
fn start_in(dir: tempfile::TempDir, data: tempfile::TempDir, env: &[(&str, &str)]) -> Option<Dev> {
    let deno = atrund_testnet::deno_path()?;
    let mut cmd = common::command(&deno, data.path());
    cmd.args(["dev", dir.path().to_str().unwrap(), "--name", "c"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(Dev {
        d: Daemon::spawn(&mut cmd, true),
        dir,
        _data: data,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_answers_come_from_memory_and_nothing_else_does() {
    let Some(Dev { d, dir, _data }) = start(&[]) else {
        return;
    };
    let c = reqwest::Client::new();
    let url = |e: &str| d.url(&format!("/bundle/local/c/latest/{e}"));

    // Kept on the first call, served from memory on the next ones (GET and HEAD).
    let first = call(c.get(url("shared"))).await;
    assert_eq!((first.status, first.body.as_str()), (200, "1"));
    assert_eq!(
        first.cache_status.as_deref(),
        Some("at-rund; fwd=uri-miss; stored")
    );
    let again = call(c.get(url("shared"))).await;
    assert_eq!(again.body, "1", "the bundle ran again");
    assert!(
        again
            .cache_status
            .as_deref()
            .unwrap()
            .starts_with("at-rund; hit; ttl="),
        "{:?}",
        again.cache_status
    );
    assert_eq!(again.age.as_deref(), Some("0"));
    let head = c.head(url("shared")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    // The caller's own validator: 304 from memory.
    let cond = call(c.get(url("shared")).header("if-none-match", "\"v1\"")).await;
    assert_eq!((cond.status, cond.body.as_str()), (304, ""));
    // Another query is another URL.
    let other = call(c.get(url("shared") + "?x=1")).await;
    assert_eq!(
        (other.body.as_str(), other.cache_status.as_deref()),
        ("2", Some("at-rund; fwd=uri-miss; stored"))
    );

    // Never shared: credentials on the request, private or cookie-setting answers, answers that
    // say nothing, other methods. Each call reaches the bundle.
    let mut last: u64 = 2;
    let mut expect_ran = |a: Answer, cache_status: &str| {
        last += 1;
        assert_eq!(
            a.body.split(' ').next_back().unwrap(),
            last.to_string(),
            "{cache_status}: the bundle did not run"
        );
        assert_eq!(a.cache_status.as_deref(), Some(cache_status));
    };
    for _ in 0..2 {
        expect_ran(
            call(
                c.get(url("shared") + "?auth")
                    .header("authorization", "Bearer x"),
            )
            .await,
            "at-rund; fwd=bypass",
        );
        expect_ran(call(c.get(url("personal"))).await, "at-rund; fwd=uri-miss");
        expect_ran(call(c.get(url("cookie"))).await, "at-rund; fwd=uri-miss");
        expect_ran(call(c.get(url("plain"))).await, "at-rund; fwd=uri-miss");
        expect_ran(call(c.post(url("post"))).await, "at-rund; fwd=method");
        expect_ran(
            call(
                c.get(url("shared") + "?nc")
                    .header("cache-control", "no-store"),
            )
            .await,
            "at-rund; fwd=bypass",
        );
    }

    // Vary: one kept answer per value of the named header.
    let en = call(c.get(url("lang")).header("accept-language", "en")).await;
    let de = call(c.get(url("lang")).header("accept-language", "de")).await;
    let en2 = call(c.get(url("lang")).header("accept-language", "en")).await;
    assert_eq!(en2.body, en.body);
    assert_ne!(de.body, en.body);
    assert_eq!(
        de.cache_status.as_deref(),
        Some("at-rund; fwd=vary-miss; stored")
    );

    // A caller's odd Host is part of the key: its answer does not reach other callers.
    let odd = call(c.get(url("host")).header("host", "evil.example")).await;
    let normal = call(c.get(url("host"))).await;
    assert!(odd.body.starts_with("evil.example "), "{}", odd.body);
    assert!(!normal.body.contains("evil"), "{}", normal.body);

    // Stale after a second: revalidated with the bundle's ETag, the bundle answers 304, the
    // kept body is served and kept again.
    let s1 = call(c.get(url("short"))).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s2 = call(c.get(url("short"))).await;
    assert_eq!((s2.status, &s2.body), (200, &s1.body));
    assert_eq!(
        s2.cache_status.as_deref(),
        Some("at-rund; fwd=stale; fwd-status=304; stored")
    );
    let stats = call(c.get(url("stats"))).await.body;
    assert!(stats.contains("\"revalidations\":1"), "{stats}");

    // What the cache did, in the metrics: the hits above (the repeated GET, the HEAD, the 304,
    // the second `en`) and the answers kept.
    let metrics = call(c.get(format!("{}/metrics", d.admin.as_deref().unwrap())))
        .await
        .body;
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(sample("atrund_response_cache_lookups_total{result=\"hit\"}") >= 4.0);
    assert!(sample("atrund_response_cache_lookups_total{result=\"bypass\"}") >= 4.0);
    assert!(sample("atrund_response_cache_stored_total") >= 5.0);
    assert!(sample("atrund_response_cache_entries") >= 5.0);

    // An edit is a new version: the kept answer of the old one is not served.
    std::fs::write(
        dir.path().join("main.js"),
        CODE.replace("let calls = 0", "let calls = 100"),
    )
    .unwrap();
    let edited = call(c.get(url("shared"))).await;
    assert_eq!(
        (edited.body.as_str(), edited.cache_status.as_deref()),
        ("101", Some("at-rund; fwd=uri-miss; stored"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_off_every_call_reaches_the_bundle() {
    let Some(Dev {
        d,
        dir: _dir,
        _data,
    }) = start(&[("ATRUND_CACHE_ENABLED", "false")])
    else {
        return;
    };
    let c = reqwest::Client::new();
    let url = d.url("/bundle/local/c/latest/shared");
    for n in 1..=3 {
        let a = call(c.get(&url)).await;
        assert_eq!((a.body, a.cache_status), (n.to_string(), None));
    }
    assert!(d.log().contains("response cache off"));
}

/// The disk tier (`cache.disk_max_bytes`, on by default): an answer kept before a restart is
/// served after it, from `<data_dir>/cache.sqlite`, without starting the bundle; a private one
/// was never written there.
#[tokio::test(flavor = "multi_thread")]
async fn kept_answers_survive_a_restart_from_the_disk_tier() {
    let Some(Dev { mut d, dir, _data }) = start(&[]) else {
        return;
    };
    let c = reqwest::Client::new();
    // One Host for both runs (the key includes it; the port changes with the restart).
    let get = |d: &Daemon, e: &str| {
        c.get(d.url(&format!("/bundle/local/c/latest/{e}")))
            .header("host", "cache.test")
    };
    let private = call(get(&d, "personal")).await;
    assert_eq!(private.body, "1");
    let first = call(get(&d, "shared")).await;
    assert_eq!(
        (first.body.as_str(), first.cache_status.as_deref()),
        ("2", Some("at-rund; fwd=uri-miss; stored"))
    );
    // The disk writer runs in the background: a moment, then a clean stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.stop();
    assert!(_data.path().join("cache.sqlite").is_file());

    let Some(Dev {
        d,
        dir: _dir,
        _data,
    }) = start_in(dir, _data, &[])
    else {
        return;
    };
    let again = call(get(&d, "shared")).await;
    assert_eq!(again.body, "2", "answered from disk, not by a new instance");
    assert!(
        again
            .cache_status
            .as_deref()
            .unwrap()
            .starts_with("at-rund; hit; ttl="),
        "{:?}",
        again.cache_status
    );
    let metrics = reqwest::get(format!("{}/metrics", d.admin.as_deref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .all(|l| !l.starts_with("atrund_cold_starts_total") || l.ends_with(" 0")),
        "no instance was started:\n{metrics}"
    );
    let private = call(get(&d, "personal")).await;
    assert_eq!(
        (private.body.as_str(), private.cache_status.as_deref()),
        ("1", Some("at-rund; fwd=uri-miss")),
        "a private answer reaches the (new) bundle"
    );
}
