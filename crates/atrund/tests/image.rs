//! The OCI image (issue 13): `ops/image/build.sh` builds it (with this test run's debug binary and
//! the pinned Deno, and an oci-archive copy), and podman runs it as docs/operating.md
//! "Container image" says. With no extra flags `at-rund doctor` in the image says what the
//! container backend lacks and points at the flags. With the documented `none` flags `auto`
//! falls back to `none`, with the documented `container` flags it chooses `container`; in both,
//! the example bundle answers (`greet` and `shout` as in the README), describeRunner names the
//! isolation, a bundle's outbound request reaches the test's loopback server through the egress
//! proxy, and `podman stop` drains at-rund. Containers, their volumes and the image are removed
//! even when an assertion fails. Without podman and runc (or not as root: the storage is rootful)
//! the test is skipped, except under CI=true where it fails.

mod containers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The flags docs/operating.md gives for `container` isolation, written there on one line.
const CONTAINER_FLAGS: &[&str] = &[
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--security-opt",
    "unmask=/proc/*",
    "--security-opt",
    "seccomp=unconfined",
];

/// The flags docs/operating.md gives for `none` isolation.
const NONE_FLAGS: &[&str] = &["--cap-add", "SYS_PTRACE"];

/// What this development machine needs for any container (docs/operating.md "Container image").
const HOST_FLAGS: &[&str] = containers::PODMAN_HOST_FLAGS;

/// How long at-rund in a container may take to answer its first request (the container probe
/// starts a real sandbox; the machine is shared with parallel builds).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn podman_found() -> bool {
    let on_path = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|d| d.join(name).is_file())
    };
    let found = on_path("podman") && on_path("runc");
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !(found && root) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "this test needs podman and runc (scripts/setup.sh --test) and root in CI"
        );
        eprintln!("SKIPPED: no podman/runc, or not root");
        return false;
    }
    true
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Removes what the test made, also when it panics.
struct Cleanup {
    containers: Vec<String>,
    image: String,
    dir: tempfile::TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            // -v: the anonymous volume of the image's VOLUME too.
            let _ = podman(&["rm", "-f", "-v", "-t", "5", c]);
        }
        let _ = podman(&["rmi", "-f", &self.image]);
    }
}

/// The `## Container image` section of docs/operating.md.
fn doc_section() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    let start = doc
        .find("\n## Container image")
        .expect("docs/operating.md has a \"## Container image\" section");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_serves_the_example_bundle_with_none_or_container_isolation() {
    if !podman_found() {
        return;
    }
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let doc = doc_section();
    for flags in [NONE_FLAGS, CONTAINER_FLAGS, &["--init"]] {
        assert!(
            doc.contains(&flags.join(" ")),
            "docs/operating.md \"Container image\" does not give the flags this test uses: {}",
            flags.join(" ")
        );
    }
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut made = Cleanup {
        containers: Vec::new(),
        image: format!("localhost/at-rund-test:{id}"),
        dir: tempfile::tempdir().unwrap(),
    };
    let tag = made.image.clone();

    let started = Instant::now();
    let archive = made.dir.path().join("at-rund.oci.tar");
    let out = Command::new(repo().join("ops/image/build.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_at-rund"), "--deno"])
        .arg(&deno)
        .args(["--tag", &tag, "--archive"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "build.sh: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), tag);
    eprintln!("image built in {:.1?}", started.elapsed());

    // The image runs `at-rund serve` by default, with the container config and a data volume.
    let out = podman(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["Entrypoint"], json!(["/usr/local/bin/at-rund"]));
    assert_eq!(config["Cmd"], json!(["serve"]));
    assert!(
        config["Volumes"].get("/var/lib/at-rund").is_some(),
        "{config}"
    );
    assert!(config["ExposedPorts"].get("3000/tcp").is_some(), "{config}");
    // The archive is an OCI layout an operator can `podman load`.
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "oci-layout")
            && listing
                .lines()
                .any(|l| l.trim_start_matches("./") == "index.json"),
        "{listing}"
    );

    // Without privileges: doctor explains what the container backend lacks and where to read.
    let mut args = vec!["run", "--rm"];
    args.extend(HOST_FLAGS);
    args.extend([tag.as_str(), "doctor"]);
    let out = podman(&args);
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "doctor: {report}{}",
        text(&out.stderr)
    );
    assert!(report.contains("auto would pick none"), "{report}");
    assert!(
        report.contains("docs/operating.md \"Container image\"")
            && report.contains(&CONTAINER_FLAGS.join(" "))
            && report.contains(&NONE_FLAGS.join(" ")),
        "doctor does not name the image's run flags: {report}"
    );

    let relay = relay_bundle(made.dir.path()).await;
    for (mode, flags, how) in [
        ("none", NONE_FLAGS, "auto fell back to none"),
        ("container", CONTAINER_FLAGS, "auto chose container"),
    ] {
        serve_example(&mut made, &format!("{mode}-{id}"), flags, mode, how).await;
        relay_through_egress(&mut made, &format!("{mode}-relay-{id}"), flags, &relay).await;
    }
    eprintln!("image test done in {:.1?}", started.elapsed());
}

/// Starts a detached container of the test's image named `name` with `flags` and `args` (podman
/// options, then the image, then `cmd`); it is removed when the test ends.
fn start(made: &mut Cleanup, name: &str, args: &[&str], cmd: &[&str]) {
    made.containers.push(name.to_string());
    // Its own data dir (so its cgroups' runner id too: docs/operating.md), on the volume.
    let data_dir = format!("ATRUND_DATA_DIR=/var/lib/at-rund/{name}");
    let mut all = vec!["run", "-d", "--init", "--name", name, "-e", &data_dir];
    all.extend(HOST_FLAGS);
    all.extend(args);
    all.push(&made.image);
    all.extend(cmd);
    let out = podman(&all);
    assert!(out.status.success(), "podman run: {}", text(&out.stderr));
}

fn logs(name: &str) -> String {
    let o = podman(&["logs", name]);
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

fn running(name: &str) -> bool {
    let o = podman(&["inspect", "--format", "{{.State.Running}}", name]);
    text(&o.stdout).trim() == "true"
}

/// GETs `url` until something answers (the container is still starting); the answer must be a
/// 200 with a JSON body, which is returned.
async fn get_when_up(client: &reqwest::Client, url: &str, name: &str) -> Value {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(r) = client.get(url).send().await {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{name}: {url}: {body}\n{}", logs(name));
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            running(name) && Instant::now() < deadline,
            "{name} did not answer {url}: {}",
            logs(name)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops `name` as an operator would and checks that at-rund drained and exited.
fn stop(name: &str) {
    let out = podman(&["stop", "-t", "30", name]);
    assert!(out.status.success(), "podman stop: {}", text(&out.stderr));
    let log = logs(name);
    assert!(log.contains("at_rund: stopped"), "no graceful stop: {log}");
}

/// Runs the image's `dev /srv/examples/hello` with `flags` on a published loopback port, calls
/// both endpoints and checks the isolation describeRunner reports.
async fn serve_example(made: &mut Cleanup, name: &str, flags: &[&str], isolation: &str, how: &str) {
    let name = format!("at-rund-test-{name}");
    let mut args = vec!["-p", "127.0.0.1::3000"];
    args.extend(flags);
    start(made, &name, &args, &["dev", "/srv/examples/hello"]);
    let out = podman(&["port", &name, "3000/tcp"]);
    let port = text(&out.stdout).trim().to_string();
    assert!(port.starts_with("127.0.0.1:"), "published on {port:?}");
    let base = format!("http://{port}/bundle/local/hello/latest");

    let client = reqwest::Client::new();
    let greet = get_when_up(&client, &format!("{base}/greet?name=Ada"), &name).await;
    assert_eq!(greet, json!({"message": "Hello, Ada!"}));
    let shout: Value = client
        .post(format!("{base}/shout"))
        .json(&json!({"text": "hi there"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shout,
        json!({"text": "HI THERE", "length": 8}),
        "{}",
        logs(&name)
    );

    let describe = get_when_up(
        &client,
        &format!("http://{port}/xrpc/dev.atrund.describeRunner"),
        &name,
    )
    .await;
    assert_eq!(describe["isolation"], isolation, "{describe}");
    let entry = describe["enforcement"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["limit"] == "isolation"))
        .cloned()
        .unwrap_or_default();
    assert!(
        entry["how"].as_str().unwrap_or("").starts_with(how),
        "{name}: {entry}"
    );
    stop(&name);
}

/// The relay bundle's folder, and the loopback server it may reach with the token it answers.
struct Relay {
    dir: PathBuf,
    url: String,
    token: String,
}

/// A bundle that fetches the `url` it is given, allowed to reach exactly one port: that of a
/// server on the test's loopback which answers a token of this run.
async fn relay_bundle(parent: &Path) -> Relay {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = format!("pong-{}", std::process::id() ^ u32::from(addr.port()));
    let answer = token.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    let dir = parent.join("relay");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("main.js"),
        "export const relay = {\n  method: \"GET\",\n  handler: async ({ url }) => {\n    \
         const r = await fetch(url);\n    return { status: r.status, body: await r.text() };\n  },\n};\n",
    )
    .unwrap();
    let manifest = json!({
        "endpoints": [{"name": "relay", "method": "GET"}],
        "permissions": {"net": [addr.to_string()]},
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    for p in [parent, dir.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Relay {
        dir,
        url: format!("http://{addr}/"),
        token,
    }
}

/// A bundle's outbound request from the image with `flags` (host network, so the test's loopback
/// server is reachable; the egress proxy opens exactly 127.0.0.1): `none` needs its connect gate,
/// `container` its network namespace and the proxy.
async fn relay_through_egress(made: &mut Cleanup, name: &str, flags: &[&str], relay: &Relay) {
    let name = format!("at-rund-test-{name}");
    let mount = format!("{}:/srv/relay:ro", relay.dir.display());
    let mut args = vec![
        "--network",
        "host",
        "-v",
        &mount,
        "-e",
        "ATRUND_LISTEN=127.0.0.1:0",
        "-e",
        "ATRUND_EGRESS_ALLOW_CIDRS=127.0.0.1/32",
    ];
    args.extend(flags);
    start(made, &name, &args, &["dev", "/srv/relay"]);
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = loop {
        let log = logs(&name);
        if let Some(rest) = log.split("http api listening addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            running(&name) && Instant::now() < deadline,
            "{name} did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let client = reqwest::Client::new();
    let url = format!(
        "http://{addr}/bundle/local/relay/latest/relay?url={}",
        relay.url
    );
    let got = get_when_up(&client, &url, &name).await;
    assert_eq!(
        got,
        json!({"status": 200, "body": relay.token}),
        "{}",
        logs(&name)
    );
    stop(&name);
}
