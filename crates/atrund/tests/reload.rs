//! SIGHUP reloads a real at-rund (`dev`, real Deno) under continuous load: ten reloads that
//! alternate `http.max_request_body_bytes` between 1 KiB and 1 MiB in the config file, each in
//! force for the next request (a 2 KiB POST gets 413 or 200), one invalid file refused with the
//! running config kept, a key that cannot change live named and kept, and not one of the
//! requests running meanwhile fails. Before SIGHUP was handled, the first one ended the process.
//! Then a reload that lowers a cap under what the bundle asks refuses the next call of the warm
//! route, whose resolution the runner keeps between calls.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;

const CODE: &str = r#"
export const hello = { method: "GET", handler: () => ({ hello: "world" }) };
export const echo = {
  method: "POST",
  handler: async (_input, ctx) => ({ bytes: (await ctx.request.arrayBuffer()).byteLength }),
};
"#;

fn hangup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// Waits until the log holds `n` lines containing `what`.
async fn logged(d: &Daemon, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n}th '{what}' within 10 s; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_reloads_under_load_fail_no_request_and_each_takes_effect() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.js"), CODE).unwrap();
    let manifest = serde_json::json!({
        "endpoints": [
            { "name": "hello", "method": "GET" },
            { "name": "echo", "method": "POST" }
        ],
        "limits": { "memoryMib": 200 }
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("at-rund.toml");
    let write_conf = |max_body: u64, extra: &str| {
        std::fs::write(
            &conf,
            format!("[http]\nmax_request_body_bytes = {max_body}\n{extra}"),
        )
        .unwrap();
    };
    write_conf(1024, "");
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    cmd.args([
        "dev",
        dir.path().to_str().unwrap(),
        "--name",
        "r",
        "--config",
        conf.to_str().unwrap(),
    ]);
    let d = Daemon::spawn(&mut cmd, false);
    let hello = d.url("/bundle/local/r/latest/hello");
    let echo = d.url("/bundle/local/r/latest/echo");
    let client = reqwest::Client::new();
    let post = |client: reqwest::Client, url: String| async move {
        client
            .post(url)
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(client.clone(), echo.clone()).await, 413);

    // Continuous load on another endpoint while the reloads happen.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed, failures) =
            (stop.clone(), done.clone(), failed.clone(), failures.clone());
        let (client, url) = (client.clone(), hello.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{other:?}"));
                        }
                    }
                }
            }
        }));
    }

    for i in 1..=10usize {
        let big = i % 2 == 1;
        // The fifth also changes a key that cannot change while running.
        let extra = if i == 5 {
            "bundle_domain = \"b.example\"\n"
        } else {
            ""
        };
        write_conf(if big { 1 << 20 } else { 1024 }, extra);
        // Let the load run between reloads too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        hangup(d.pid());
        logged(&d, "configuration reloaded", i).await;
        let status = post(client.clone(), echo.clone()).await;
        assert_eq!(
            status,
            if big { 200 } else { 413 },
            "reload {i}: the new body cap is not in force"
        );
        if i == 5 {
            logged(&d, "key=\"http.bundle_domain\"", 1).await;
        }
    }
    // An invalid file is refused; the running config (1 KiB, from the tenth reload) stays.
    std::fs::write(&conf, "[http]\nmax_request_body_bytes = \"lots\"\n").unwrap();
    hangup(d.pid());
    logged(&d, "reload refused", 1).await;
    assert_eq!(post(client.clone(), echo.clone()).await, 413);
    assert_eq!(d.log().matches("configuration reloaded").count(), 10);

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let (done, failed) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{done} requests during the reloads, {failed} failed");
    assert_eq!(
        failed,
        0,
        "requests failed during reloads: {:?}",
        failures.lock().unwrap()
    );
    assert!(
        done >= 100,
        "too little load to say anything: {done} requests"
    );

    // A reload that changes what resolving a route decided (the bundle's 200 MiB is now over
    // the cap) is in force for the next call of a warm route, whose resolution was kept between
    // calls (crates/http/src/warm.rs).
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(get(hello.clone()).await, 200);
    }
    write_conf(
        1024,
        "[limits]\nmemory_mib = { default = 128, max = 150 }\n",
    );
    hangup(d.pid());
    logged(&d, "configuration reloaded", 11).await;
    assert_eq!(
        get(hello.clone()).await,
        403,
        "a warm route kept its resolution across a reload that refuses it"
    );
    write_conf(1024, "");
    hangup(d.pid());
    logged(&d, "configuration reloaded", 12).await;
    assert_eq!(get(hello.clone()).await, 200);
}
