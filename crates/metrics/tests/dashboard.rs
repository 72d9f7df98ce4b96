//! `ops/grafana/at-rund.json` against the metrics at-rund exports: every PromQL expression parses
//! (`promtool check rules`, one recording rule per expression, Grafana variables substituted),
//! and every metric name and label it uses is one the registry writes.
//!
//! The registry is filled with one sample of every family, so the label names come from the
//! encoder's own output, not from a list kept by hand. Without promtool the test is skipped with
//! a message, and fails under `CI=true` (`atrund_testnet::promtool_path`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use atrund_metrics::{ColdStart, InstanceUsage, Limit, Metrics, Options, Rejection, Snapshot};
use serde_json::Value;

/// Sample name (as a query names it: `_total`, `_bucket`, … included) → its label names.
type Exported = BTreeMap<String, BTreeSet<String>>;

/// A registry with one sample in every family, encoded and read back.
fn exported() -> Exported {
    let m = Metrics::new(Options {
        max_label_sets: 10,
        version: "0.1.0".into(),
        isolation: "none".into(),
    });
    let s = m.series("did:plc:a", "hello", "greet");
    m.request(&s, 200, Duration::from_millis(2));
    m.cold_start(
        true,
        ColdStart {
            identity: Some(Duration::from_millis(1)),
            fetch: Some(Duration::from_millis(2)),
            start: Some(Duration::from_millis(3)),
        },
    );
    m.rejection(Rejection::Busy);
    m.breach(Limit::Memory);
    m.verification_failure("BlobHashMismatch");
    m.set_source(|| Snapshot {
        instances_idle: 1,
        instance_starts: 1,
        instance_crashes: 1,
        instances: vec![InstanceUsage {
            author: "did:plc:a".into(),
            instance: 1,
            cpu: Some(Duration::from_millis(5)),
            memory_bytes: Some(1 << 20),
        }],
        egress_allowed: 1,
        egress_denied: vec![("loopback".into(), 1)],
        identity_cache: vec![("did", "hit", 1)],
        response_cache: Some(atrund_metrics::ResponseCache {
            entries: 1,
            bytes: 1,
            lookups: vec![("hit", 1)],
            stored: 1,
            evicted: 0,
        }),
        jobs: Some(atrund_metrics::Jobs {
            by_state: vec![("queued", 1)],
            attempts: vec![("succeeded", 1)],
        }),
        cluster: Some(atrund_metrics::Cluster {
            live_nodes: 3,
            forwards: vec![("forwarded", 1)],
        }),
        event_streams: Some(atrund_metrics::EventStreams {
            hosts: 1,
            open: 1,
            opens: 1,
            marks: 1,
            rejected: 1,
        }),
        trust: Some(atrund_metrics::TrustGraph {
            follows: 3,
            age_secs: Some(5),
            reads: 2,
            read_failures: 1,
            follow_back_checks: 1,
        }),
        ..Snapshot::default()
    });
    let text = m.encode().unwrap();

    // Families and their types, then the sample names each type allows.
    let mut allowed: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let names: Vec<String> = match kind {
            "counter" if family.ends_with("_total") => vec![family.into()],
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{family}{s}"))
                .collect(),
            "gauge" | "info" | "unknown" => vec![family.into()],
            other => panic!("family {family} has a type this test does not know: {other}"),
        };
        for n in names {
            allowed.insert(n, family.into());
        }
    }
    assert!(allowed.len() > 10, "too few families read:\n{text}");

    let mut out = Exported::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        assert!(
            allowed.contains_key(name),
            "sample {name} matches no # TYPE line by the suffix rules"
        );
        let entry = out.entry(name.to_string()).or_default();
        // Label values here contain no `=` or `,` (they are the fixed ones set above).
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            entry.insert(pair.split_once('=').unwrap().0.to_string());
        }
    }
    // A family with no sample (none expected) still allows its names, without labels.
    for name in allowed.keys() {
        out.entry(name.clone()).or_default();
    }
    out
}

/// Every expression of the dashboard: panel targets (rows' nested panels too) and the
/// `label_values(...)` metric of each query variable. `(where, expr)`.
fn expressions(dash: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel '{title}' has a target without expr: {t}"));
                out.push((format!("panel '{title}' {}", t["refId"]), expr.to_string()));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        // `label_values(SELECTOR, label)`: the selector is PromQL; the label must exist on it.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {} is not label_values(...): {q}", v["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        out.push((
            format!("variable {}", v["name"]),
            format!("count by ({}) ({selector})", label.trim()),
        ));
    }
    out
}

/// Grafana's variables replaced by values a real dashboard could send: every template
/// variable by a regex that matches all (`allValue`), the interval variables by `5m`.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, skip) = match after.strip_prefix('{') {
            Some(b) => {
                let end = b.find('}').unwrap();
                (&b[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            n => vars
                .get(n)
                .unwrap_or_else(|| panic!("unknown variable ${n} in {expr}")),
        };
        out.push_str(value);
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// The index after the quoted string that starts at `i`.
fn past_string(b: &[u8], mut i: usize) -> usize {
    let q = b[i];
    i += 1;
    while i < b.len() && b[i] != q {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names and label names an expression uses: `(metric, labels in its matchers)`
/// for each selector, and the labels of every `by (...)`/`without (...)`.
fn uses(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut selectors = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    // The label names of a `{...}` or `(...)` list starting at `open`; returns the index after it.
    let list = |mut j: usize, close: u8, names: &mut Vec<String>| -> usize {
        j += 1;
        let mut expect_name = true;
        while j < b.len() && b[j] != close {
            match b[j] {
                b'"' | b'\'' => j = past_string(b, j),
                b',' => {
                    expect_name = true;
                    j += 1;
                }
                c if ident(c) && expect_name => {
                    let s = j;
                    while j < b.len() && ident(b[j]) {
                        j += 1;
                    }
                    names.push(expr[s..j].to_string());
                    // In a matcher list the value follows; in a grouping list the next name.
                    expect_name = close == b')';
                }
                _ => j += 1,
            }
        }
        j + 1
    };
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => i = past_string(b, i),
            c if ident(c) && !c.is_ascii_digit() => {
                let s = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[s..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if word.starts_with("atrund_") {
                    let mut labels = Vec::new();
                    if b.get(j) == Some(&b'{') {
                        i = list(j, b'}', &mut labels);
                    }
                    selectors.push((word.to_string(), labels));
                } else if matches!(word, "by" | "without") && b.get(j) == Some(&b'(') {
                    i = list(j, b')', &mut grouping);
                } else if b.get(j) == Some(&b'{') {
                    panic!("a selector of a metric that is not at-rund's: {word} in {expr}");
                }
            }
            _ => i += 1,
        }
    }
    (selectors, grouping)
}

#[test]
fn dashboard_queries_parse_and_use_only_exported_metrics_and_labels() {
    let path = atrund_testnet::repo_root().join("ops/grafana/at-rund.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        dash["__inputs"][0]["name"], "DS_PROMETHEUS",
        "the datasource is an import-time input"
    );
    let exported = exported();
    let vars: BTreeMap<String, String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let all = v["allValue"].as_str().unwrap_or(".*");
            (v["name"].as_str().unwrap().to_string(), all.to_string())
        })
        .collect();
    for needed in ["author", "bundle"] {
        assert!(vars.contains_key(needed), "no ${needed} variable");
    }

    let exprs = expressions(&dash);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let mut used = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (at, expr)) in exprs.iter().enumerate() {
        let e = substitute(expr, &vars);
        let (selectors, grouping) = uses(&e);
        assert!(!selectors.is_empty(), "{at} uses no at-rund metric: {e}");
        let mut in_scope: BTreeSet<&str> = BTreeSet::new();
        for (metric, labels) in &selectors {
            let known = exported
                .get(metric)
                .unwrap_or_else(|| panic!("{at}: {metric} is not exported by at-rund"));
            for l in labels {
                assert!(
                    known.contains(l) || l == "__name__",
                    "{at}: {metric} has no label {l} (it has {known:?})"
                );
            }
            in_scope.extend(known.iter().map(String::as_str));
            used.insert(metric.clone());
        }
        for l in &grouping {
            assert!(
                in_scope.contains(l.as_str()),
                "{at}: grouping by {l}, which none of its metrics has ({in_scope:?})"
            );
        }
        rules.push_str(&format!(
            "      - record: dashboard:expr_{n}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    // The panels the dashboard promises.
    for family in [
        "atrund_requests_total",
        "atrund_request_duration_seconds_bucket",
        "atrund_cold_starts_total",
        "atrund_cold_start_phase_seconds_bucket",
        "atrund_instances",
        "atrund_pool_rejections_total",
        "atrund_limit_breaches_total",
        "atrund_egress_decisions_total",
    ] {
        assert!(used.contains(family), "no panel uses {family}");
    }

    let Some(promtool) = atrund_testnet::promtool_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}\n---\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_checker_finds_metrics_and_labels() {
    let (sel, by) = uses(
        r#"histogram_quantile(0.9, sum by (le, phase) (rate(atrund_x_bucket{a=~"b,c", d!="e"}[5m]))) / atrund_y"#,
    );
    assert_eq!(
        sel,
        [
            (
                "atrund_x_bucket".to_string(),
                vec!["a".to_string(), "d".to_string()]
            ),
            ("atrund_y".to_string(), vec![]),
        ]
    );
    assert_eq!(by, ["le", "phase"]);
    let vars = BTreeMap::from([("author".to_string(), ".*".to_string())]);
    assert_eq!(
        substitute(r#"x{a=~"$author"}[$__rate_interval] ${author}"#, &vars),
        r#"x{a=~".*"}[5m] .*"#
    );
}
