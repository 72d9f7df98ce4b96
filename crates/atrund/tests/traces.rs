//! OpenTelemetry traces of a real at-rund (real Deno): the OTLP/HTTP export is received by a
//! collector stand-in in the test and decoded with the official protobuf types. Checks the span
//! tree of a cold and a warm request (names, parent and trace ids, attributes), that a caller's
//! `traceparent` makes the request span its child, that the bundle's request carries a
//! `traceparent` naming the `call` span, that a malformed `traceparent` is ignored, that JSON log
//! lines carry `trace_id`/`span_id`; the five spans of a cold start from the PDS (`serve`); that
//! an unreachable collector fails no request; that queued spans are exported at shutdown; and
//! that with traces off a caller's trace headers reach the bundle untouched.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use common::Daemon;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};

const CODE: &str = r#"
export const headers = {
  method: "GET",
  handler: (_input, ctx) => Object.fromEntries(ctx.request.headers),
};
"#;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Spans received, with the `service.name` of their resource.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// A collector stand-in on 127.0.0.1: `POST /v1/traces` bodies decoded as
/// `ExportTraceServiceRequest`; its URL and what it received.
async fn collector() -> (String, Received) {
    let got: Received = Arc::default();
    async fn traces(State(got): State<Received>, body: Bytes) -> axum::http::StatusCode {
        let req = match ExportTraceServiceRequest::decode(body) {
            Ok(r) => r,
            Err(_) => return axum::http::StatusCode::BAD_REQUEST,
        };
        let mut got = got.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                got.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        axum::http::StatusCode::OK
    }
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), got)
}

fn string(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A span's attributes as JSON values, for compact asserts.
fn attrs(s: &Span) -> HashMap<String, Value> {
    s.attributes
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => json!(s),
                Any::BoolValue(b) => json!(b),
                Any::IntValue(i) => json!(i),
                Any::DoubleValue(f) => json!(f),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// A dev runner serving the header-echo bundle as `local/t`, with `env` added.
fn dev(
    deno: &std::path::Path,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
    env: &[(&str, &str)],
) -> Daemon {
    let (code, data) = dirs;
    std::fs::write(code.path().join("main.js"), CODE).unwrap();
    let manifest = json!({ "endpoints": [{ "name": "headers", "method": "GET" }] });
    std::fs::write(code.path().join("manifest.json"), manifest.to_string()).unwrap();
    let mut cmd = common::command(deno, data.path());
    cmd.args(["dev", code.path().to_str().unwrap(), "--name", "t"])
        .env("ATRUND_LOG_FORMAT", "json")
        // `go sent` is logged inside the start phase.
        .env("ATRUND_LOG", "info,atrund_http=debug,atrund_sandbox=debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(&mut cmd, false)
}

/// A dev runner with traces on and every request sampled, exporting (through the standard
/// variable) to a new collector stand-in, with `env` added; and what the stand-in receives.
async fn traced_dev(
    deno: &std::path::Path,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
    env: &[(&str, &str)],
) -> (Daemon, Received) {
    let (endpoint, got) = collector().await;
    let mut all = vec![
        ("ATRUND_OTEL_ENABLED", "1"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("ATRUND_OTEL_SAMPLER", "always_on"),
    ];
    all.extend_from_slice(env);
    (dev(deno, dirs, &all), got)
}

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

/// GET the echo endpoint with `headers`; the status and the headers the bundle saw.
async fn echo(d: &Daemon, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(d.url("/bundle/local/t/latest/headers"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The trace and span id of a `traceparent` the bundle saw.
fn parse_traceparent(v: &Value) -> (String, String) {
    let tp = v["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent: {v}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Waits (10 s at most) until `done` holds for the spans received.
async fn wait_for(got: &Received, done: impl Fn(&[(String, Span)]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let g = got.lock().unwrap();
            if done(&g) {
                return g.iter().map(|(_, s)| s.clone()).collect();
            }
        }
        assert!(Instant::now() < deadline, "spans not received in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of one trace, by name (each name once).
fn tree(spans: &[Span], trace: &str) -> HashMap<String, Span> {
    let mut out = HashMap::new();
    for s in spans.iter().filter(|s| hex(&s.trace_id) == trace) {
        assert!(
            out.insert(s.name.clone(), s.clone()).is_none(),
            "two {} spans in trace {trace}",
            s.name
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_and_warm_requests_export_their_span_trees() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dirs = dirs();
    let (mut d, got) = traced_dev(
        &deno,
        &dirs,
        &[
            ("OTEL_SERVICE_NAME", "runner-under-test"),
            ("ATRUND_OTEL_BATCH_DELAY_MS", "50"),
        ],
    )
    .await;

    // Cold, as the child of a caller's trace.
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, seen) = echo(
        &d,
        &[
            ("traceparent", &caller),
            ("tracestate", "vendor=abc"),
            ("x-request-id", "tr-cold"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    let (cold_trace, cold_parent) = parse_traceparent(&seen);
    assert_eq!(
        cold_trace, CALLER_TRACE,
        "the bundle continues the caller's trace"
    );
    assert_ne!(cold_parent, CALLER_SPAN);
    assert_eq!(
        seen["tracestate"], "vendor=abc",
        "the caller's tracestate travels on"
    );

    // Warm, no caller trace: a new one.
    let (status, seen) = echo(&d, &[("x-request-id", "tr-warm")]).await;
    assert_eq!(status, 200, "{seen}");
    let (warm_trace, warm_parent) = parse_traceparent(&seen);
    assert_ne!(warm_trace, CALLER_TRACE);
    assert!(seen.get("tracestate").is_none(), "{seen}");

    // Malformed: ignored, not an error; a new trace.
    let (status, seen) = echo(
        &d,
        &[
            (
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "tr-bad"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    let (bad_trace, _) = parse_traceparent(&seen);
    assert!(bad_trace != CALLER_TRACE && bad_trace != warm_trace);

    let spans = wait_for(&got, |g| {
        [&cold_trace, &warm_trace, &bad_trace].iter().all(|t| {
            g.iter()
                .any(|(_, s)| &hex(&s.trace_id) == *t && s.name == "request")
        })
    })
    .await;
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .all(|(service, _)| service == "runner-under-test"));

    // Cold: request (child of the caller's span) → fetch, start, call.
    let cold = tree(&spans, &cold_trace);
    let mut names: Vec<_> = cold.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["call", "fetch", "request", "start"], "{cold:#?}");
    let req = &cold["request"];
    assert_eq!(hex(&req.parent_span_id), CALLER_SPAN);
    assert_eq!(req.kind, SpanKind::Server as i32);
    let a = attrs(req);
    for (k, v) in [
        ("http.request.method", json!("GET")),
        (
            "http.route",
            json!("/bundle/{author}/{name}/{version}/{endpoint}"),
        ),
        ("http.response.status_code", json!(200)),
        ("atrund.author", json!("local")),
        ("atrund.bundle", json!("t")),
        ("atrund.endpoint", json!("headers")),
        ("atrund.cold_start", json!(true)),
        ("request_id", json!("tr-cold")),
        // A direct caller on loopback: no proxy is trusted.
        ("client.address", json!("127.0.0.1")),
    ] {
        assert_eq!(a.get(k), Some(&v), "{k} in {a:?}");
    }
    for child in ["fetch", "start", "call"] {
        assert_eq!(
            cold[child].parent_span_id, req.span_id,
            "{child} is a child of the request span"
        );
        assert!(cold[child].start_time_unix_nano >= req.start_time_unix_nano);
        assert!(cold[child].end_time_unix_nano <= req.end_time_unix_nano);
    }
    assert!(cold["start"].end_time_unix_nano <= cold["call"].start_time_unix_nano);
    assert_eq!(
        hex(&cold["call"].span_id),
        cold_parent,
        "the bundle's parent is the call span"
    );

    // Warm: a root request span → call; no start. No fetch either when the route's resolution
    // was kept from the cold call (crates/http/src/warm.rs: for up to a second after the cold
    // call resolved it, which a slow machine's cold start can outlast; then the dev folder's
    // snapshot is a fetch span again).
    let warm = tree(&spans, &warm_trace);
    let mut names: Vec<_> = warm.keys().cloned().collect();
    names.sort();
    assert!(
        names == ["call", "request"] || names == ["call", "fetch", "request"],
        "{warm:#?}"
    );
    if let Some(fetch) = warm.get("fetch") {
        assert_eq!(fetch.parent_span_id, warm["request"].span_id);
    }
    assert!(warm["request"].parent_span_id.is_empty());
    assert_eq!(attrs(&warm["request"])["atrund.cold_start"], json!(false));
    assert_eq!(attrs(&warm["request"])["request_id"], json!("tr-warm"));
    assert_eq!(hex(&warm["call"].span_id), warm_parent);
    assert_eq!(warm["call"].parent_span_id, warm["request"].span_id);

    // The JSON log: every line of a request has the trace and span ids of that request.
    let log = d.stop();
    let mut checked: Vec<(String, String)> = Vec::new();
    for line in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let want = match line["request_id"].as_str() {
            Some("tr-cold") => &cold,
            Some("tr-warm") => &warm,
            _ => continue,
        };
        let trace = hex(&want["request"].trace_id);
        assert_eq!(line["trace_id"], json!(trace), "{line}");
        let span = line["span_id"].as_str().unwrap_or_else(|| panic!("{line}"));
        // The innermost enclosing span that is a trace span (`invoke` is the log's only).
        let innermost = line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["span"].as_str())
            .rfind(|n| want.contains_key(*n))
            .unwrap();
        assert_eq!(span, hex(&want[innermost].span_id), "{line}");
        checked.push((
            innermost.to_string(),
            line["message"].as_str().unwrap().to_string(),
        ));
    }
    for (span, message) in [("start", "go sent"), ("request", "request answered")] {
        assert!(
            checked.contains(&(span.to_string(), message.to_string())),
            "{message} in {span}: {checked:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_fails_no_request() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    // Nothing listens on port 1 of loopback: every export is refused at once.
    let dirs = dirs();
    let mut d = dev(
        &deno,
        &dirs,
        &[
            ("ATRUND_OTEL_ENABLED", "1"),
            ("ATRUND_OTEL_ENDPOINT", "http://127.0.0.1:1/v1/traces"),
            ("ATRUND_OTEL_SAMPLER", "always_on"),
            ("ATRUND_OTEL_BATCH_DELAY_MS", "20"),
            ("ATRUND_OTEL_EXPORT_TIMEOUT_MS", "500"),
            ("ATRUND_OTEL_QUEUE_SIZE", "8"),
            ("ATRUND_OTEL_BATCH_SIZE", "4"),
        ],
    );
    for i in 0..40 {
        let (status, seen) = echo(&d, &[]).await;
        assert_eq!(status, 200, "request {i}: {seen}");
        parse_traceparent(&seen);
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let log = d.stop();
    let failures = log
        .lines()
        .filter(|l| l.contains("trace export failed"))
        .count();
    assert_eq!(
        failures, 1,
        "failures are logged once a minute at most:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_traces_off_the_callers_trace_headers_pass_untouched() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dirs = dirs();
    // The standard variables alone do not turn traces on.
    let d = dev(
        &deno,
        &dirs,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")],
    );
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, seen) = echo(&d, &[("traceparent", &caller), ("tracestate", "v=1")]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["traceparent"], json!(caller));
    assert_eq!(seen["tracestate"], "v=1");
    let (_, seen) = echo(&d, &[("traceparent", "garbage")]).await;
    assert_eq!(seen["traceparent"], "garbage");
    let (_, seen) = echo(&d, &[]).await;
    assert!(seen.get("traceparent").is_none(), "{seen}");
    assert!(!d.log().contains("trace_id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_traces_identity_and_fetch_from_the_pds() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let acct = net.create_account("traces").await;
    let manifest = json!({ "endpoints": [{ "name": "headers", "method": "GET" }] });
    common::deploy(net, &acct, CODE, &manifest, "tr", "1.0.0").await;
    let (endpoint, got) = collector().await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_OTEL_ENABLED", "1")
        .env("ATRUND_OTEL_ENDPOINT", &endpoint)
        .env("ATRUND_OTEL_SAMPLER", "parentbased_always_on")
        .env("ATRUND_OTEL_BATCH_DELAY_MS", "50");
    let d = Daemon::spawn(&mut cmd, false);
    let url = d.url(&format!("/bundle/{}/tr/latest/headers", acct.did));
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (trace, parent) = parse_traceparent(&resp.json().await.unwrap());

    let spans = wait_for(&got, |g| {
        g.iter()
            .any(|(_, s)| hex(&s.trace_id) == trace && s.name == "request")
    })
    .await;
    let t = tree(&spans, &trace);
    let mut names: Vec<_> = t.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["call", "fetch", "identity", "request", "start"]);
    let req = &t["request"];
    assert_eq!(attrs(req)["atrund.author"], json!(acct.did));
    assert_eq!(attrs(req)["atrund.bundle"], json!("tr"));
    assert_eq!(attrs(req)["atrund.cold_start"], json!(true));
    for child in ["identity", "fetch", "start", "call"] {
        assert_eq!(t[child].parent_span_id, req.span_id, "{child}");
    }
    // In pipeline order.
    for (a, b) in [("identity", "fetch"), ("fetch", "start"), ("start", "call")] {
        assert!(
            t[a].end_time_unix_nano <= t[b].start_time_unix_nano,
            "{a} ends before {b} starts"
        );
    }
    assert_eq!(hex(&t["call"].span_id), parent);
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_spans_are_exported_at_shutdown() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dirs = dirs();
    // Batches wait ten minutes: only the shutdown's flush can send this one.
    let (mut d, got) = traced_dev(&deno, &dirs, &[("ATRUND_OTEL_BATCH_DELAY_MS", "600000")]).await;
    let (status, seen) = echo(&d, &[]).await;
    assert_eq!(status, 200);
    let (trace, _) = parse_traceparent(&seen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        got.lock().unwrap().is_empty(),
        "exported before the batch delay"
    );
    d.stop();
    let spans = wait_for(&got, |g| !g.is_empty()).await;
    let t = tree(&spans, &trace);
    assert!(
        t.contains_key("request") && t.contains_key("call"),
        "{t:#?}"
    );
}
