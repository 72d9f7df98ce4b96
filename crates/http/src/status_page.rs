//! The admin listener's `GET /status`: one server-rendered HTML page for an operator (runner and
//! version, isolation and enforcement, bundles and their instances, cold-start phase medians,
//! recent errors, egress decisions). No script, no external asset: the one `<style>` element is
//! allowed by its hash in a `Content-Security-Policy` that allows nothing else.
//!
//! Owns: the markup, the style, HTML escaping ([`escape`]: every value shown goes through it,
//! since bundle, endpoint and author names come from strangers) and the response headers. Must
//! not touch: where the values come from (the router gathers them into a [`Page`]) or what is
//! recorded (`status`).

use std::fmt::{self, Display, Write};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use atrund_api::DescribeRunner;
use atrund_metrics::Snapshot;
use atrund_pool::PoolStats;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use crate::status::Recent;

/// Everything one rendering shows.
pub struct Page<'a> {
    pub runner: &'a DescribeRunner,
    /// Main listener address, as configured.
    pub listen: String,
    pub started: SystemTime,
    pub now: SystemTime,
    pub draining: bool,
    pub pool: &'a PoolStats,
    /// The egress proxy's and identity caches' counters.
    pub counters: &'a Snapshot,
    pub recent: &'a Recent,
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fff}\
h1{font-size:1.4rem;margin:0}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ccc}\
.sub{color:#666;margin:.2rem 0 0}table{border-collapse:collapse}\
th,td{text-align:left;padding:.15rem .7rem .15rem 0;vertical-align:top}\
th{font-weight:600;color:#444}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px ui-monospace,monospace;word-break:break-all}\
.no{color:#a00;font-weight:600}.yes{color:#070}.none{color:#888}\
dl{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem;margin:0}dt{color:#444}dd{margin:0}";

/// The page's `Content-Security-Policy`: nothing but the page's own `<style>`.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = data_encoding::BASE64.encode(&sha2::Sha256::digest(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// `s` with `& < > " '` replaced by character references: safe in text and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Displays its text escaped.
struct E<'a>(&'a str);

impl Display for E<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// The HTML response: no caching, no sniffing, no referrer, the CSP.
pub fn response(html: String) -> Response {
    let mut resp = html.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// `512 µs`, `12.3 ms`, `1.52 s`.
fn dur(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn ms(ms: u64) -> String {
    dur(Duration::from_millis(ms))
}

/// `12.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `Fri, 04 Dec 2026 15:19:00 GMT (12 s ago)`.
fn when(t: SystemTime, now: SystemTime) -> String {
    let ago = now.duration_since(t).unwrap_or_default();
    format!("{} ({} ago)", httpdate::fmt_http_date(t), age(ago))
}

/// Whole units: `12 s`, `5 min`, `3 h`, `2 d`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// The record CID of a pool key (`{bundle}` or `{bundle}+{secrets}`), shortened for a table.
fn short_key(key: &str) -> &str {
    let cid = key.split('+').next().unwrap_or(key);
    match cid.char_indices().nth_back(11) {
        Some((i, _)) if cid.len() > 16 => &cid[i..],
        _ => cid,
    }
}

/// Renders the page.
pub fn render(p: &Page<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write_page(&mut out, p);
    out
}

fn write_page(o: &mut String, p: &Page<'_>) -> fmt::Result {
    let r = p.runner;
    write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>at-rund status</title><style>{STYLE}</style></head>\n<body>\n"
    )?;
    writeln!(
        o,
        "<h1>{} {}</h1><p class=\"sub\">{} · {}</p>",
        E(&r.software.name),
        E(&r.software.version),
        E(&httpdate::fmt_http_date(p.now)),
        if p.draining {
            "<span class=\"no\">draining</span>"
        } else {
            "serving"
        }
    )?;
    runner(o, p)?;
    enforcement(o, r)?;
    bundles(o, p)?;
    instances(o, p)?;
    cold_starts(o, p)?;
    errors(o, p)?;
    egress(o, p)?;
    o.write_str("</body></html>\n")
}

fn runner(o: &mut String, p: &Page<'_>) -> fmt::Result {
    let r = p.runner;
    o.write_str("<section id=\"runner\"><h2>Runner</h2><dl>\n")?;
    let row = |o: &mut String, k: &str, v: &str| writeln!(o, "<dt>{}</dt><dd>{}</dd>", E(k), E(v));
    row(
        o,
        "software",
        &format!("{} {}", r.software.name, r.software.version),
    )?;
    for rt in &r.runtimes {
        row(o, "runtime", &rt.version)?;
    }
    row(o, "isolation", &r.isolation)?;
    row(o, "listening on", &p.listen)?;
    row(
        o,
        "bundle domain",
        r.bundle_domain
            .as_deref()
            .unwrap_or("none (path routes only)"),
    )?;
    row(o, "authors", &r.policy.authors)?;
    row(o, "started", &when(p.started, p.now))?;
    writeln!(
        o,
        "<dt>public key</dt><dd><code>{}</code></dd>",
        E(&r.public_key)
    )?;
    o.write_str("</dl></section>\n")
}

fn enforcement(o: &mut String, r: &DescribeRunner) -> fmt::Result {
    o.write_str(
        "<section id=\"enforcement\"><h2>Isolation and enforcement</h2>\
         <table><tr><th>limit</th><th>enforced</th><th>how, or why not</th></tr>\n",
    )?;
    for e in &r.enforcement {
        writeln!(
            o,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            E(&e.limit),
            if e.enforced { "yes" } else { "no" },
            if e.enforced { "yes" } else { "NO" },
            E(&e.how)
        )?;
    }
    o.write_str("</table></section>\n")
}

/// Running instances of one bundle version: (total, busy).
fn instance_count(p: &Page<'_>, author: &str, key: &str) -> (usize, usize) {
    p.pool
        .instances
        .iter()
        .filter(|i| i.author == author && i.record_cid == key)
        .fold((0, 0), |(n, busy), i| {
            (n + 1, busy + usize::from(i.in_flight > 0))
        })
}

fn bundles(o: &mut String, p: &Page<'_>) -> fmt::Result {
    o.write_str("<section id=\"bundles\"><h2>Bundles</h2>\n")?;
    if p.recent.bundles.is_empty() {
        return o.write_str("<p class=\"none\">no bundle called yet</p></section>\n");
    }
    o.write_str(
        "<table><tr><th>bundle</th><th>author</th><th>record</th><th>instances</th>\
         <th>calls</th><th>last call</th><th>last seen</th></tr>\n",
    )?;
    for b in &p.recent.bundles {
        let (n, busy) = instance_count(p, &b.author, &b.key);
        let last = match &b.last_call {
            Some((endpoint, status)) => format!("{endpoint} → {status}"),
            None => "pre-warmed".into(),
        };
        writeln!(
            o,
            "<tr><td class=\"bundle\">{}</td><td><code>{}</code></td><td><code title=\"{}\">{}</code></td>\
             <td class=\"n\">{n} ({busy} busy)</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            E(&b.name),
            E(&b.author),
            E(&b.key),
            E(short_key(&b.key)),
            b.calls,
            E(&last),
            E(&when(b.last_seen, p.now)),
        )?;
    }
    o.write_str("</table></section>\n")
}

fn instances(o: &mut String, p: &Page<'_>) -> fmt::Result {
    let s = p.pool;
    o.write_str("<section id=\"instances\"><h2>Instances</h2>\n")?;
    writeln!(
        o,
        "<p>{} starting, {} idle, {} busy; {} requests in flight; memory {} of {} budget</p>",
        s.starting,
        s.idle,
        s.busy,
        s.requests_in_flight,
        E(&bytes(s.memory_bytes)),
        E(&bytes(s.memory_budget_bytes)),
    )?;
    writeln!(
        o,
        "<p>since start: {} cold and {} warm requests, {} starts ({} failed), {} crashes, \
         {} reaped idle, {} evicted, {} refused busy, {} refused crash-looping</p>",
        s.cold_hits,
        s.warm_hits,
        s.starts,
        s.start_failures,
        s.crashes,
        s.idle_reaped,
        s.evictions,
        s.busy_refusals,
        s.crash_loop_refusals,
    )?;
    if s.instances.is_empty() {
        return o.write_str("<p class=\"none\">no instance running</p></section>\n");
    }
    o.write_str(
        "<table><tr><th>bundle</th><th>author</th><th>record</th><th>pid</th><th>in flight</th>\
         <th>served</th><th>age</th><th>idle</th><th>memory</th><th>pinned</th></tr>\n",
    )?;
    for i in &s.instances {
        let name = p
            .recent
            .bundles
            .iter()
            .find(|b| b.author == i.author && b.key == i.record_cid)
            .map_or("?", |b| b.name.as_str());
        writeln!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td><code title=\"{}\">{}</code></td>\
             <td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            E(name),
            E(&i.author),
            E(&i.record_cid),
            E(short_key(&i.record_cid)),
            i.pid.map_or("–".into(), |p| p.to_string()),
            i.in_flight,
            i.concurrency,
            i.served,
            E(&ms(i.age_ms)),
            E(&ms(i.idle_ms)),
            E(&i.rss_bytes.map_or("–".into(), bytes)),
            if i.pinned { "yes" } else { "" },
        )?;
    }
    o.write_str("</table></section>\n")
}

fn cold_starts(o: &mut String, p: &Page<'_>) -> fmt::Result {
    writeln!(
        o,
        "<section id=\"cold-starts\"><h2>Cold starts</h2><p>medians over the last {} cold starts \
         (since start: {} requests waited for a start)</p>",
        p.recent.cold_starts, p.pool.cold_hits
    )?;
    o.write_str("<table><tr><th>phase</th><th>samples</th><th>median</th></tr>\n")?;
    for ph in &p.recent.phases {
        writeln!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            E(ph.phase),
            ph.samples,
            E(&ph.median.map_or("–".into(), dur)),
        )?;
    }
    o.write_str("</table></section>\n")
}

fn errors(o: &mut String, p: &Page<'_>) -> fmt::Result {
    o.write_str("<section id=\"errors\"><h2>Recent errors</h2>\n")?;
    if p.recent.errors.is_empty() {
        return o.write_str("<p class=\"none\">no error answered yet</p></section>\n");
    }
    o.write_str(
        "<table><tr><th>time</th><th>request id</th><th>status</th><th>error</th>\
         <th>author</th><th>bundle</th><th>endpoint</th></tr>\n",
    )?;
    for e in &p.recent.errors {
        writeln!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td>\
             <td><code>{}</code></td><td class=\"error-bundle\">{}</td><td>{}</td></tr>",
            E(&when(e.at, p.now)),
            E(&e.request_id),
            e.status,
            E(e.code),
            E(&e.author),
            E(&e.name),
            E(&e.endpoint),
        )?;
    }
    o.write_str("</table></section>\n")
}

fn egress(o: &mut String, p: &Page<'_>) -> fmt::Result {
    let c = p.counters;
    let denied: u64 = c.egress_denied.iter().map(|(_, n)| n).sum();
    writeln!(
        o,
        "<section id=\"egress\"><h2>Egress</h2><p>bundles' outbound connections since start: \
         {} allowed, {} denied</p>",
        c.egress_allowed, denied
    )?;
    if !c.egress_denied.is_empty() {
        o.write_str("<table><tr><th>denied because</th><th>count</th></tr>\n")?;
        for (reason, n) in &c.egress_denied {
            writeln!(o, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", E(reason))?;
        }
        o.write_str("</table>")?;
    }
    o.write_str("</section>\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BundleEntry, ErrorEntry, PhaseMedian};

    const EVIL: &str = "<script>alert(\"x&'y\")</script>";

    fn runner(s: &str) -> DescribeRunner {
        let line = atrund_api::EnforcementLine {
            limit: s.into(),
            enforced: false,
            how: s.into(),
        };
        // Every string of the runner's description the page shows.
        let mut r = sample();
        r.software.name = s.into();
        r.software.version = s.into();
        r.isolation = s.into();
        r.runtimes[0].version = s.into();
        r.public_key = s.into();
        r.policy.authors = s.into();
        r.enforcement = vec![line];
        r.bundle_domain = Some(s.into());
        r
    }

    fn sample() -> DescribeRunner {
        let c = atrund_config::Config::default();
        DescribeRunner {
            software: atrund_api::Software {
                name: "at-rund".into(),
                version: "0".into(),
            },
            isolation: "none".into(),
            runtimes: vec![atrund_api::Runtime {
                name: "deno".into(),
                version: "deno 2".into(),
            }],
            public_key: "z".into(),
            policy: (&c.policy).into(),
            permissions: (&c.permissions).into(),
            limits: (&c.limits).into(),
            enforcement: vec![],
            max_request_body_bytes: 1,
            max_bundle_bytes: 1,
            tenants: atrund_api::Tenants {
                rate_per_sec: 0,
                rate_burst: 0,
                negative_cache_secs: 0,
                identity_refresh_min_secs: 0,
                max_connections: 0,
                header_read_timeout_ms: 0,
                max_store_bytes_per_author: 0,
                store_gc_after_secs: 0,
                max_data_bytes_per_author: 0,
            },
            bundle_domain: None,
            service_did: None,
            logs_kept: false,
            generic_sandboxes: None,
            local_bundle: None,
            health: None,
        }
    }

    #[test]
    fn every_shown_value_is_escaped() {
        let now = SystemTime::now();
        let key = format!("{EVIL}+{EVIL}");
        let pool = PoolStats {
            instances: vec![atrund_pool::InstanceInfo {
                author: EVIL.into(),
                record_cid: key.clone(),
                pid: Some(7),
                in_flight: 1,
                concurrency: 2,
                served: 3,
                age_ms: 4,
                idle_ms: 0,
                rss_bytes: Some(5 << 20),
                pinned: true,
            }],
            ..PoolStats::default()
        };
        let counters = Snapshot {
            egress_denied: vec![(EVIL.into(), 2)],
            ..Snapshot::default()
        };
        let recent = Recent {
            errors: vec![ErrorEntry {
                at: now,
                request_id: EVIL.into(),
                status: 404,
                code: "BundleNotFound",
                author: EVIL.into(),
                name: EVIL.into(),
                endpoint: EVIL.into(),
            }],
            bundles: vec![BundleEntry {
                author: EVIL.into(),
                name: EVIL.into(),
                key,
                last_call: Some((EVIL.into(), 200)),
                calls: 1,
                last_seen: now,
            }],
            phases: vec![PhaseMedian {
                phase: "start",
                samples: 1,
                median: Some(Duration::from_millis(12)),
            }],
            cold_starts: 1,
        };
        let r = runner(EVIL);
        let html = render(&Page {
            runner: &r,
            listen: EVIL.into(),
            started: now,
            now,
            draining: false,
            pool: &pool,
            counters: &counters,
            recent: &recent,
        });
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("alert(\""), "{html}");
        let escaped = escape(EVIL);
        assert_eq!(
            escaped,
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
        // Each of: name, version, isolation, runtime, listen, domain, authors, key, enforcement
        // (2), bundle row (name, author, last call), instance row (name, author), error row (id,
        // author, name, endpoint), egress reason.
        assert!(html.matches(&escaped).count() >= 18, "{html}");
        assert!(html.contains("12.0 ms"), "{html}");
        assert!(html.contains("5.0 MiB"), "{html}");
    }

    #[test]
    fn the_policy_allows_only_the_pages_own_style() {
        let csp = csp();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        let hash = data_encoding::BASE64.encode(&sha2::Sha256::digest(STYLE.as_bytes()));
        assert!(csp.contains(&hash));
        let resp = response(String::new());
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], csp);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let html = render(&Page {
            runner: &sample(),
            listen: "127.0.0.1:1".into(),
            started: SystemTime::now(),
            now: SystemTime::now(),
            draining: true,
            pool: &PoolStats::default(),
            counters: &Snapshot::default(),
            recent: &Recent::default(),
        });
        // The style is the one the hash names, byte for byte; no inline style attribute.
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(!html.contains(" style="));
        assert!(html.contains("draining"));
    }

    #[test]
    fn short_forms() {
        assert_eq!(dur(Duration::from_micros(512)), "512 µs");
        assert_eq!(dur(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(dur(Duration::from_millis(1520)), "1.52 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(age(Duration::from_secs(7300)), "2 h");
        assert_eq!(
            short_key("bafyreiabcdefghijklmnopqrstuvwxyz+bafyx"),
            "opqrstuvwxyz"
        );
        assert_eq!(short_key("local1"), "local1");
    }
}
