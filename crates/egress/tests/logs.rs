//! Decision logs, in their own test binary: tracing's per-callsite interest cache races with
//! tests on other threads that run without a subscriber.

mod common;

use std::sync::Arc;

use atrund_egress::{EgressConfig, EgressPolicy, EgressProxy, MapResolver, NetRule};
use common::*;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Collects formatted log output for the decision-log test.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_decision_is_logged() {
    let logs = LogBuf::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _g = tracing::subscriber::set_default(sub);

    let (echo, _) = echo_server().await;
    let target = format!("echo.test:{}", echo.port());
    let resolver = MapResolver::new()
        .with("echo.test", &[ip("127.0.0.1")])
        .with("ten.test", &[ip("10.0.0.1")]);
    let p = EgressProxy::start_with(
        EgressConfig {
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            ..EgressConfig::default()
        },
        Arc::new(resolver),
        Arc::new(LoopbackOnly::default()),
    )
    .await
    .unwrap();
    let _reg = p
        .register(
            TOKEN,
            EgressPolicy {
                bundle_label: "did:plc:test/bundle".into(),
                allow: NetRule::parse_list(&[target.as_str(), "ten.test:80"]).unwrap(),
                runner: None,
                on_refusal: None,
            },
        )
        .unwrap();
    let (_s, head) = connect(p.local_addr(), &target, Some(&basic(TOKEN))).await;
    assert_eq!(head.status, 200);
    for (t, status) in [("ten.test:80", 403), ("nope.test:80", 403)] {
        let (_s, head) = connect(p.local_addr(), t, Some(&basic(TOKEN))).await;
        assert_eq!(head.status, status, "{t}");
    }

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle}:\n{text}"))
            .to_string()
    };
    let allow = line(&format!("dest={target}"));
    for part in ["did:plc:test/bundle", "ip=127.0.0.1", "allow"] {
        assert!(allow.contains(part), "{part} missing in {allow}");
    }
    let private = line("dest=ten.test:80");
    for part in ["did:plc:test/bundle", "deny", "10.0.0.1: private"] {
        assert!(private.contains(part), "{part} missing in {private}");
    }
    let unlisted = line("dest=nope.test:80");
    assert!(unlisted.contains("host_not_listed"), "{unlisted}");
}
