//! Anonymous callers must not steer the runner's own requests (issue 9): a real `at-rund serve`,
//! real sockets, and a canary listener on 127.0.0.1 that records every connection it accepts.
//! The runner gets the settings of a production runner except that the few test servers standing
//! in for an author's public infrastructure are opened by `address:port` (`allow_addrs`); the rest
//! of loopback, the canary included, stays closed. Needs Deno only (at-rund checks it at start),
//! not the ATProto test network.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atrund_identity::PublicKey;
use common::{get, Daemon};
use serde_json::{json, Value};

/// A tiny HTTP/1.1 server on 127.0.0.1 that records the target of every request (one request per
/// connection) and answers through `reply`. Also counts bare connections (a canary).
#[derive(Clone)]
struct Recorder {
    port: u16,
    connections: Arc<Mutex<usize>>,
    requests: Arc<Mutex<Vec<String>>>,
}

type Reply = Arc<dyn Fn(&str) -> (u16, Vec<(String, String)>, String) + Send + Sync>;

impl Recorder {
    fn start(addr: &str, reply: Reply) -> Option<Recorder> {
        let l = TcpListener::bind(addr).ok()?;
        let port = l.local_addr().ok()?.port();
        let r = Recorder {
            port,
            connections: Arc::default(),
            requests: Arc::default(),
        };
        let r2 = r.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                *r2.connections.lock().unwrap() += 1;
                let requests = r2.requests.clone();
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(s.try_clone().unwrap());
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    // Drain the head.
                    let mut h = String::new();
                    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    let target = line.split(' ').nth(1).unwrap_or("").to_string();
                    requests.lock().unwrap().push(target.clone());
                    let (status, headers, body) = reply(&target);
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&body);
                    let _ = s.write_all(out.as_bytes());
                });
            }
        });
        Some(r)
    }

    /// A canary: answers nothing useful; every connection is a failure of the test.
    fn canary(addr: &str) -> Option<Recorder> {
        Self::start(addr, Arc::new(|_| (404, vec![], String::new())))
    }

    /// Answers every request with a redirect to `location`.
    fn redirecting(location: String) -> Recorder {
        let reply = move |_: &str| {
            (
                302,
                vec![("location".into(), location.clone())],
                String::new(),
            )
        };
        Self::start("127.0.0.1:0", Arc::new(reply)).unwrap()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Serves the DID document of `did:web:localhost%3A<its port>` naming `pds` as the PDS.
fn did_web_host(pds: String) -> (Recorder, String) {
    let key = PublicKey::K256(
        *k256::ecdsa::SigningKey::from_slice(&[7u8; 32])
            .unwrap()
            .verifying_key(),
    );
    let did_cell: Arc<Mutex<String>> = Arc::default();
    let d2 = did_cell.clone();
    let r = Recorder::start(
        "127.0.0.1:0",
        Arc::new(move |target| {
            if target != "/.well-known/did.json" {
                return (404, vec![], String::new());
            }
            let did = d2.lock().unwrap().clone();
            let doc = json!({
                "id": did,
                "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": key.to_multikey()}],
                "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
            });
            (200, vec![("content-type".into(), "application/json".into())], doc.to_string())
        }),
    )
    .unwrap();
    let did = format!("did:web:localhost%3A{}", r.port);
    *did_cell.lock().unwrap() = did.clone();
    (r, did)
}

fn deno() -> Option<PathBuf> {
    atrund_testnet::deno_path()
}

/// A runner and its data dir (dropped after it, field order).
struct Runner {
    daemon: Daemon,
    _data: tempfile::TempDir,
}

impl std::ops::Deref for Runner {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

fn runner(deno: &Path, env: &[(&str, String)]) -> Runner {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(deno, data.path());
    cmd.env("ATRUND_IDENTITY_DNS", "false")
        .env("ATRUND_IDENTITY_WELL_KNOWN", "false")
        .env("ATRUND_IDENTITY_TIMEOUT_MS", "2000")
        .env("ATRUND_FETCH_TIMEOUT_MS", "2000")
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .args(["serve"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Runner {
        daemon: Daemon::spawn(&mut cmd, false),
        _data: data,
    }
}

/// The refusal a caller sees: status, error name, and no trace of the network in the body.
fn assert_refused(status: u16, body: &Value, want: (u16, &str), what: &str) {
    assert_eq!(
        (status, body["error"].as_str().unwrap_or("")),
        want,
        "{what}: {body}"
    );
    atrund_testnet::assert_no_network_text(what, &body.to_string());
}

fn invoke(author: &str) -> String {
    format!("/bundle/{author}/hello/latest/greet")
}

#[tokio::test]
async fn callers_cannot_point_the_runner_at_loopback_or_private_addresses() {
    let Some(deno) = deno() else { return };
    let canary = Recorder::canary("127.0.0.1:0").unwrap();
    // https://localhost has port 443: watch it too where this test may bind it (root).
    let canary_443 = Recorder::canary("127.0.0.1:443");

    // An author whose DID document names a PDS at the canary, one at a private address, and one
    // whose (public-standing) PDS redirects to the canary.
    let (doc_loopback, did_loopback) = did_web_host(format!("https://127.0.0.1:{}", canary.port));
    let (doc_private, did_private) = did_web_host("https://10.0.0.1".into());
    let to_canary = format!("http://127.0.0.1:{}/xrpc/x", canary.port);
    let redirector = Recorder::redirecting(to_canary);
    let (doc_redirect, did_redirect) =
        did_web_host(format!("http://localhost:{}", redirector.port));
    // A PLC directory that redirects every look-up to the canary.
    let plc_to_canary = format!("http://127.0.0.1:{}/", canary.port);
    let plc = Recorder::redirecting(plc_to_canary);
    // The operator's handle resolution service, telling that a handle is a did:web on the canary.
    let canary_did = format!("did:web:localhost%3A{}", canary.port);
    let answer = json!({ "did": canary_did }).to_string();
    let handles = Recorder::start(
        "127.0.0.1:0",
        Arc::new(move |_| {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                answer.clone(),
            )
        }),
    )
    .unwrap();

    let opened = [
        &doc_loopback,
        &doc_private,
        &doc_redirect,
        &redirector,
        &plc,
        &handles,
    ]
    .iter()
    .map(|r| r.addr())
    .collect::<Vec<_>>()
    .join(",");
    let d = runner(
        &deno,
        &[
            ("ATRUND_POLICY", "open".into()),
            ("ATRUND_ALLOW_HTTP", "1".into()),
            ("ATRUND_ALLOW_ADDRS", opened),
            ("ATRUND_PLC_URL", format!("http://{}", plc.addr())),
            (
                "ATRUND_IDENTITY_HANDLE_RESOLVER",
                format!("http://{}", handles.addr()),
            ),
        ],
    );

    let cases = [
        (
            format!("did:web:localhost%3A{}", canary.port),
            "did:web on the canary's port",
        ),
        (
            "did:web:localhost".to_string(),
            "did:web at a name resolving to 127.0.0.1",
        ),
        (
            did_loopback.clone(),
            "a DID document whose PDS is https://127.0.0.1:<canary>",
        ),
        (
            did_private.clone(),
            "a DID document whose PDS is https://10.0.0.1",
        ),
        (did_redirect.clone(), "a PDS that redirects to the canary"),
        (
            "evil.example.com".to_string(),
            "a handle whose DID is a did:web on the canary's port",
        ),
    ];
    for (author, what) in &cases {
        let (status, body) = get(&d.url(&invoke(author))).await;
        assert_refused(status, &body, (502, "AddressNotAllowed"), what);
    }
    // The documents were read and the redirecting PDS was asked: the refusals came after them.
    assert!(!doc_loopback.requests().is_empty() && !redirector.requests().is_empty());
    assert!(!handles.requests().is_empty());

    // PLC answers are never redirected: not followed, and the caller learns nothing more.
    let (status, body) = get(&d.url(&invoke("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"))).await;
    assert_refused(
        status,
        &body,
        (502, "IdentityUnreachable"),
        "a PLC redirect",
    );
    assert!(!plc.requests().is_empty());

    assert_eq!(canary.connections(), 0, "the canary was reached");
    if let Some(c) = canary_443 {
        assert_eq!(c.connections(), 0, "127.0.0.1:443 was reached");
    }
    // The detail is in the runner's log, not in the answers.
    let log = d.log();
    assert!(
        log.contains("refused by address policy") && log.contains("loopback"),
        "{log}"
    );
}

#[tokio::test]
async fn without_allow_http_or_openings_nothing_on_loopback_is_tried() {
    let Some(deno) = deno() else { return };
    let canary = Recorder::canary("127.0.0.1:0").unwrap();
    // Exactly the production defaults but for the policy.
    let d = runner(&deno, &[("ATRUND_POLICY", "open".into())]);
    let (status, body) =
        get(&d.url(&invoke(&format!("did:web:localhost%3A{}", canary.port)))).await;
    assert_refused(
        status,
        &body,
        (502, "InsecureUrl"),
        "a localhost port without allow_http",
    );
    let (status, body) = get(&d.url(&invoke("did:web:localhost"))).await;
    assert_refused(
        status,
        &body,
        (502, "AddressNotAllowed"),
        "did:web:localhost",
    );
    assert_eq!(canary.connections(), 0);

    // allow_http alone opens no address.
    let d = runner(
        &deno,
        &[
            ("ATRUND_POLICY", "open".into()),
            ("ATRUND_ALLOW_HTTP", "1".into()),
        ],
    );
    let (status, body) =
        get(&d.url(&invoke(&format!("did:web:localhost%3A{}", canary.port)))).await;
    assert_refused(
        status,
        &body,
        (502, "AddressNotAllowed"),
        "allow_http without allow_addrs",
    );
    assert_eq!(canary.connections(), 0);
}

#[tokio::test]
async fn an_allow_list_refuses_unlisted_authors_before_resolving_them() {
    let Some(deno) = deno() else { return };
    let canary = Recorder::canary("127.0.0.1:0").unwrap();
    // The PLC directory records what it is asked (and knows nothing).
    let plc = Recorder::canary("127.0.0.1:0").unwrap();
    let listed_did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    let stranger = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    let d = runner(
        &deno,
        &[
            // A DID and a handle listed; no handle method works here, so the listed handle
            // resolves to nothing.
            ("ATRUND_POLICY", format!("{listed_did},alice.example.com")),
            ("ATRUND_ALLOW_HTTP", "1".into()),
            (
                "ATRUND_ALLOW_ADDRS",
                format!("{},{}", plc.addr(), canary.addr()),
            ),
            ("ATRUND_PLC_URL", format!("http://{}", plc.addr())),
        ],
    );
    for author in [
        stranger.to_string(),
        format!("did:web:localhost%3A{}", canary.port),
        "did:web:localhost".to_string(),
    ] {
        let (status, body) = get(&d.url(&invoke(&author))).await;
        assert_refused(status, &body, (403, "AuthorNotAllowed"), &author);
    }
    assert_eq!(plc.requests(), Vec::<String>::new(), "the PLC was asked");
    assert_eq!(canary.connections(), 0, "the canary was reached");

    // An unlisted handle may only be a listed DID's: the listed DID is looked up, never the
    // caller's name.
    let (status, body) = get(&d.url(&invoke("bob.example.com"))).await;
    assert_refused(
        status,
        &body,
        (403, "AuthorNotAllowed"),
        "an unlisted handle",
    );
    let asked = plc.requests();
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|t| t.starts_with(&format!("/{listed_did}"))),
        "{asked:?}"
    );
    assert!(asked.iter().all(|t| !t.contains(stranger)));
}
