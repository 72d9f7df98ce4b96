use super::*;

fn metrics(cap: usize) -> Metrics {
    Metrics::new(Options {
        max_label_sets: cap,
        version: "0.1.0".into(),
        isolation: "none".into(),
    })
}

/// The value of the sample whose line starts with `prefix` (name and labels as encoded).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn requests_count_by_status_class_and_observe_durations() {
    let m = metrics(10);
    let s = m.series("did:plc:a", "hello", "greet");
    m.request(&s, 200, Duration::from_millis(2));
    m.request(&s, 204, Duration::from_millis(3));
    m.request(&s, 404, Duration::from_micros(50));
    let text = m.encode().unwrap();
    let ok =
        r#"atrund_requests_total{author="did:plc:a",bundle="hello",endpoint="greet",status="2xx"}"#;
    let nf =
        r#"atrund_requests_total{author="did:plc:a",bundle="hello",endpoint="greet",status="4xx"}"#;
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    assert_eq!(sample(&text, nf), Some(1.0), "{text}");
    let sum = r#"atrund_request_duration_seconds_sum{author="did:plc:a",bundle="hello",endpoint="greet",status="2xx"}"#;
    let got = sample(&text, sum).unwrap();
    assert!((got - 0.005).abs() < 1e-9, "{got}");
    // Status classes never seen have no series.
    assert!(!text.contains(r#"status="5xx""#), "{text}");
    assert!(
        text.contains(r#"atrund_build_info{version="0.1.0",isolation="none"} 1"#),
        "{text}"
    );
}

#[test]
fn label_sets_past_the_cap_are_counted_as_other() {
    let m = metrics(2);
    for e in ["a", "b", "c", "d"] {
        let s = m.series("did:plc:x", "n", e);
        m.request(&s, 200, Duration::ZERO);
    }
    // A set admitted before the cap filled keeps its own labels.
    m.request(&m.series("did:plc:x", "n", "a"), 200, Duration::ZERO);
    let text = m.encode().unwrap();
    let a = r#"atrund_requests_total{author="did:plc:x",bundle="n",endpoint="a",status="2xx"}"#;
    let other =
        r#"atrund_requests_total{author="other",bundle="other",endpoint="other",status="2xx"}"#;
    assert_eq!(sample(&text, a), Some(2.0), "{text}");
    assert_eq!(sample(&text, other), Some(2.0), "{text}");
    assert!(!text.contains(r#"endpoint="c""#), "{text}");
}

#[test]
fn scrape_time_counters_come_from_the_source() {
    let m = metrics(1);
    m.request(&m.series("did:plc:known", "n", "e"), 200, Duration::ZERO);
    m.set_source(|| Snapshot {
        instances_idle: 2,
        adaptive_unloads: 4,
        adaptive_prewarms_skipped: 1,
        instances: vec![
            InstanceUsage {
                author: "did:plc:known".into(),
                instance: 7,
                cpu: Some(Duration::from_millis(1500)),
                memory_bytes: Some(4096),
            },
            InstanceUsage {
                author: "did:plc:stranger".into(),
                instance: 8,
                cpu: None,
                memory_bytes: Some(1),
            },
        ],
        egress_allowed: 3,
        egress_denied: vec![("loopback".into(), 2)],
        identity_cache: vec![("did", "hit", 5)],
        jobs: Some(crate::Jobs {
            by_state: vec![("queued", 2), ("dead", 1)],
            attempts: vec![("succeeded", 5), ("lost", 1)],
        }),
        response_cache: Some(crate::ResponseCache {
            entries: 3,
            bytes: 900,
            lookups: vec![("hit", 7), ("uri-miss", 2)],
            stored: 4,
            evicted: 1,
        }),
        event_streams: Some(crate::EventStreams {
            hosts: 2,
            open: 1,
            opens: 3,
            marks: 5,
            rejected: 1,
        }),
        trust: Some(crate::TrustGraph {
            follows: 3,
            age_secs: Some(7),
            reads: 2,
            read_failures: 1,
            follow_back_checks: 4,
        }),
        ..Snapshot::default()
    });
    let text = m.encode().unwrap();
    for (line, v) in [
        ("atrund_event_streams_hosts", 2.0),
        ("atrund_event_streams_open", 1.0),
        ("atrund_event_streams_opens_total", 3.0),
        ("atrund_event_streams_marks_total", 5.0),
        ("atrund_event_streams_rejected_commits_total", 1.0),
        ("atrund_trust_follows", 3.0),
        ("atrund_trust_snapshot_age_seconds", 7.0),
        ("atrund_trust_reads_total", 2.0),
        ("atrund_trust_read_failures_total", 1.0),
        ("atrund_trust_follow_back_checks_total", 4.0),
        (r#"atrund_instances{state="idle"}"#, 2.0),
        ("atrund_pool_adaptive_unloads_total", 4.0),
        (r#"atrund_response_cache_lookups_total{result="hit"}"#, 7.0),
        (
            r#"atrund_response_cache_lookups_total{result="uri-miss"}"#,
            2.0,
        ),
        ("atrund_response_cache_stored_total", 4.0),
        ("atrund_response_cache_evicted_total", 1.0),
        ("atrund_response_cache_entries", 3.0),
        ("atrund_response_cache_bytes", 900.0),
        (r#"atrund_jobs{state="queued"}"#, 2.0),
        (r#"atrund_job_attempts_total{outcome="lost"}"#, 1.0),
        (
            r#"atrund_pool_adaptive_prewarms_total{result="skipped"}"#,
            1.0,
        ),
        (
            r#"atrund_instance_cpu_seconds_total{author="did:plc:known",instance="7"}"#,
            1.5,
        ),
        (
            r#"atrund_instance_memory_bytes{author="other",instance="8"}"#,
            1.0,
        ),
        (
            r#"atrund_egress_decisions_total{decision="denied",reason="loopback"}"#,
            2.0,
        ),
        (
            r#"atrund_identity_cache_total{cache="did",result="hit"}"#,
            5.0,
        ),
    ] {
        assert_eq!(sample(&text, line), Some(v), "{line}\n{text}");
    }
}

#[test]
fn disabled_records_nothing() {
    let m = Metrics::disabled();
    m.request(&m.series("a", "b", "c"), 200, Duration::ZERO);
    m.rejection(Rejection::Busy);
    assert!(m.encode().is_none());
}

/// The hot path's cost: resolving a request's label set and recording it, per request.
/// `cargo test --release -p atrund-metrics -- --ignored --nocapture hot_path_cost`
#[test]
#[ignore]
fn hot_path_cost() {
    let m = metrics(200);
    for i in 0..100 {
        m.request(
            &m.series("did:plc:a", &format!("b{i}"), "e"),
            200,
            Duration::ZERO,
        );
    }
    let n = 2_000_000;
    let t = std::time::Instant::now();
    for i in 0..n {
        let s = m.series("did:plc:a", "b42", "e");
        m.request(&s, 200 + (i % 2) as u16, Duration::from_micros(150));
    }
    let per = t.elapsed() / n;
    eprintln!("series + request: {per:?} per request");
    assert!(per < Duration::from_micros(2), "{per:?}");
}
