//! The microVM guest agent (`sandbox-init guest`, docs/microvm.md) as a local process over Unix
//! sockets: the host's start (config, environment, bundle and shim), `go`, the instance's
//! output relayed until the shim is ready, a call carried to the shim, the bundle's egress
//! carried from the forwarder inside to the host's end, and the exit reported. Real Deno, the
//! real shim, and the real confinement of `sandbox-init`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atrund_sandbox::guest::{self, Event, FileSpec, Start};
use atrund_sandbox::init::{InitConfig, ProxyForward};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const BUNDLE: &str = r#"
export const hi = { method: "GET", handler: () => new Response("hi from the guest") };
export const out = {
  method: "GET",
  handler: async () => new Response(await (await fetch("http://example.test/x")).text()),
};
"#;

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Events = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

/// The agent's next event (30 s at most).
async fn next_event(events: &mut Events) -> Event {
    let line = tokio::time::timeout(Duration::from_secs(30), events.next_line())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .expect("the control channel stays open");
    Event::decode(&line).unwrap_or_else(|| panic!("not an event: {line}"))
}

/// One HTTP/1.1 GET through the agent's calls socket; the body.
async fn call(dir: &Path, path: &str) -> String {
    let mut s = UnixStream::connect(dir.join(guest::CALLS_SOCKET))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).await.unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{all}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_an_instance_sent_over_its_control_channel() {
    let deno = common::deno_path();
    if !deno.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no Deno at {}",
            deno.display()
        );
        eprintln!("SKIPPED: no Deno at {}", deno.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let work = dir.join("work");
    let deno_dir = dir.join("deno");
    std::fs::create_dir_all(&deno_dir).unwrap();
    let (bundle, shim, socket) = (
        work.join("main.js"),
        work.join("shim.ts"),
        work.join("s.sock"),
    );
    let port = free_port();

    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_atrund-sandbox-init"))
        .args(["guest", "--unix"])
        .arg(&dir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::egress_stand_in(&dir.join(guest::EGRESS_SOCKET));
    let t = Instant::now();
    while !dir.join(guest::CONTROL_SOCKET).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let argv = vec![
        s(&deno),
        "run".into(),
        "--no-prompt".into(),
        "--no-remote".into(),
        "--no-npm".into(),
        "--cached-only".into(),
        "--no-config".into(),
        "--no-lock".into(),
        format!("--allow-read={},{}", s(&bundle), s(&socket)),
        format!("--allow-write={}", s(&socket)),
        format!("--allow-net=unix:{},example.test:80", s(&socket)),
        s(&shim),
        s(&bundle),
        s(&socket),
    ];
    let deno_home = deno.parent().unwrap().to_path_buf();
    let start = Start {
        init: InitConfig {
            argv,
            read_only: vec![work.clone(), "/etc".into(), "/proc".into(), "/dev".into()],
            execute: ["/bin", "/lib", "/lib64", "/usr"]
                .iter()
                .map(PathBuf::from)
                .chain([deno_home])
                .collect(),
            read_write: vec![work.clone(), deno_dir.clone(), "/dev/null".into()],
            proxy: Some(ProxyForward {
                port,
                socket: dir.join("egress-in.sock"),
            }),
        },
        env: vec![
            ("DENO_DIR".into(), s(&deno_dir)),
            ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
            ("NO_COLOR".into(), "1".into()),
            ("HOME".into(), s(&deno_dir)),
            ("HTTP_PROXY".into(), format!("http://127.0.0.1:{port}")),
        ],
        files: vec![
            FileSpec {
                path: bundle.clone(),
                len: BUNDLE.len() as u64,
            },
            FileSpec {
                path: shim.clone(),
                len: atrund_sandbox::SHIM_SOURCE.len() as u64,
            },
        ],
        shim_socket: socket.clone(),
        limits: None,
        init_args: vec![],
    };
    let control = UnixStream::connect(dir.join(guest::CONTROL_SOCKET))
        .await
        .unwrap();
    let (r, mut w) = control.into_split();
    guest::send_start(
        &mut w,
        &start,
        &[BUNDLE.as_bytes(), atrund_sandbox::SHIM_SOURCE.as_bytes()],
    )
    .await
    .unwrap();
    w.write_all(b"go\n").await.unwrap();
    let mut events = BufReader::new(r).lines();
    let mut seen = Vec::new();
    loop {
        let ev = next_event(&mut events).await;
        seen.push(ev.clone());
        match ev {
            Event::Stdout(l) if l.contains("\"ready\"") => break,
            Event::Exited(..) | Event::Failed(_) => panic!("the instance ended: {seen:?}"),
            _ => {}
        }
    }
    assert_eq!(call(&dir, "/e/hi").await, "hi from the guest");
    // Egress: Deno → the forwarder inside (127.0.0.1:port) → the agent → the host's end.
    assert_eq!(
        call(&dir, "/e/out").await,
        "proxied: GET http://example.test/x HTTP/1.1"
    );

    // `term`: the instance exits, and the agent reports it and ends.
    w.write_all(b"term\n").await.unwrap();
    loop {
        match next_event(&mut events).await {
            Event::Exited(code, _) => {
                assert_ne!(code, 125, "{seen:?}");
                break;
            }
            Event::Failed(why) => panic!("{why}"),
            other => seen.push(other),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .expect("the agent exits after the instance")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_broken_start_is_reported_and_ends_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_atrund-sandbox-init"))
        .args(["guest", "--unix"])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !dir.join(guest::CONTROL_SOCKET).exists() {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = UnixStream::connect(dir.join(guest::CONTROL_SOCKET))
        .await
        .unwrap();
    c.write_all(b"{\"init\": 1}\n").await.unwrap();
    let mut reply = String::new();
    BufReader::new(&mut c).read_line(&mut reply).await.unwrap();
    match Event::decode(reply.trim_end()) {
        Some(Event::Failed(why)) => assert!(why.contains("does not parse"), "{why}"),
        other => panic!("{other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(125));
}
