//! The connect gate of `none` instances (crates/sandbox/src/connect_gate.rs), raced from inside a
//! real instance: one thread of the bundle connects descriptor N to an address over and over
//! while another flips N between a TCP and a Unix socket and the address between the egress
//! proxy's and a world-writable Unix socket's path (tests/bundles/gate_race.js). Both kinds of
//! answer must occur (the race really ran: EACCES for the Unix socket or path, success or
//! EISCONN for the TCP socket to the proxy) and the Unix socket must never accept a connection.
//! A gate that checked and then let the kernel continue the call would re-read the swapped
//! descriptor and address.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const EACCES: &str = "13";
const EISCONN: &str = "106";

#[tokio::test]
async fn a_race_on_descriptor_and_address_never_connects_a_unix_socket() {
    let Some(env) = Env::new("gate", Mode::None).await else {
        return;
    };
    // World-writable, in a dir anyone may pass (as D-Bus's system bus): only the gate stops it.
    let dir = tempfile::Builder::new()
        .prefix("atrund-gate")
        .tempdir()
        .unwrap();
    let path = dir.path().join("bus.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            n.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    let mut spec = env.spec("race", &bundle("gate_race.js"));
    spec.permissions.ffi = true;
    spec.request_timeout = Duration::from_secs(30);
    let inst = env.warm(spec).await;
    let port = env.proxy.local_addr().port().to_string();
    let v = call_json(
        &*inst,
        q(
            "race",
            &[
                ("path", path.to_str().unwrap()),
                ("port", &port),
                ("ms", "3000"),
            ],
        ),
    )
    .await
    .unwrap();
    inst.shutdown().await;
    eprintln!("{v}");
    let counts = &v["counts"];
    let count = |errno: &str| counts[errno].as_u64().unwrap_or(0);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the Unix socket accepted a connection: {v}"
    );
    assert!(v["calls"].as_u64().unwrap() >= 100, "too few calls: {v}");
    assert!(v["flips"].as_u64().unwrap() >= 100, "too few flips: {v}");
    assert!(count(EACCES) > 0, "the Unix side was never seen: {v}");
    assert!(
        count("0") + count(EISCONN) > 0,
        "the TCP side was never connected: {v}"
    );
    let known = ["0", EACCES, EISCONN];
    let others: Vec<_> = counts
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    assert!(others.is_empty(), "unexpected answers {others:?}: {v}");
}

/// What the gate costs per connect, from a bundle, with and without the gate (Landlock and the
/// other filters on in both), interleaved: a Unix connect the gate refuses (without it the kernel
/// answers ENOENT: the round trip to the runner alone), and a TCP connect to the egress proxy
/// (few, spaced: the debug build's proxy is the bottleneck when many arrive at once). Not a
/// pass/fail test: `cargo test -p atrund-sandbox --test connect_gate -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_connect_gate_cost() {
    let Some(env) = Env::new("gatecost", Mode::None).await else {
        return;
    };
    let path = std::env::var_os("ATRUND_TEST_DENO")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
    let deno = atrund_sandbox::DenoBinary::locate(Some(&path)).unwrap();
    let plain: Arc<dyn atrund_sandbox::Executor> = Arc::new(
        atrund_sandbox::NoneExecutor::new(deno)
            .with_egress(env.proxy.clone())
            .with_connect_gate(false),
    );
    let port = env.proxy.local_addr().port().to_string();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v)
    };
    for (what, query) in [
        (
            "Unix connect, refused",
            vec![("path", "/nonexistent/atrund.sock"), ("n", "2000")],
        ),
        (
            "TCP connect + close to the proxy",
            vec![("port", port.as_str()), ("n", "40")],
        ),
    ] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for i in 0..5 {
            for (exec, times, tag) in [(&env.exec, &mut on, "g"), (&plain, &mut off, "p")] {
                let mut spec = env.spec(&format!("{tag}{i}"), &bundle("gate_race.js"));
                spec.permissions.ffi = true;
                let inst = exec.warm(spec).await.unwrap();
                let v = call_json(&*inst, q("connects", &query)).await.unwrap();
                if query[0].0 == "port" {
                    assert_eq!(v["connected"], 40, "{v}");
                } else {
                    assert_eq!(v["connected"], 0, "{v}");
                }
                times.push(v["us"].as_f64().unwrap());
                inst.shutdown().await;
            }
        }
        let ((on, on_runs), (off, off_runs)) = (median(on), median(off));
        eprintln!(
            "MEASURE {what}, median of 5 runs: with the gate {on:.1} µs (runs {on_runs:.1?}); \
             without {off:.1} µs (runs {off_runs:.1?})"
        );
    }
}
