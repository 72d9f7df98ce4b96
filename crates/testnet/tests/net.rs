//! Starts the shared test network and checks what other crates' tests rely on: a did:plc
//! document at the PLC, a tombstoned DID answering 410, carol's did:web document, and fresh
//! accounts that can log in.

use serde_json::Value;

#[tokio::test]
async fn network_serves_what_tests_rely_on() {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    eprintln!("network startup: {:?}", net.startup);
    let http = net.http();

    // alice: did:plc document with her handle and the PDS as service endpoint.
    assert!(net.alice.did.starts_with("did:plc:"), "{}", net.alice.did);
    assert_eq!(net.alice.handle, "alice.test");
    let res = http
        .get(format!("{}/{}", net.plc_url, net.alice.did))
        .send()
        .await
        .expect("PLC reachable");
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.expect("DID doc is JSON");
    assert_eq!(doc["id"], net.alice.did.as_str());
    assert_eq!(doc["alsoKnownAs"][0], "at://alice.test");
    assert_eq!(doc["service"][0]["serviceEndpoint"], net.pds_url.as_str());

    // The tombstoned DID is gone (410), and is a different DID from alice's.
    assert_ne!(net.tombstoned_did, net.alice.did);
    let res = http
        .get(format!("{}/{}", net.plc_url, net.tombstoned_did))
        .send()
        .await
        .expect("PLC reachable");
    assert_eq!(res.status(), 410);
    // Its history is still auditable: a create op followed by the tombstone.
    let audit: Value = http
        .get(format!("{}/{}/log/audit", net.plc_url, net.tombstoned_did))
        .send()
        .await
        .expect("PLC reachable")
        .json()
        .await
        .expect("audit log is JSON");
    let ops = audit.as_array().expect("audit log is an array");
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1]["operation"]["type"], "plc_tombstone");

    // carol: did:web document served on loopback, pointing at the PDS.
    assert!(
        net.carol.did.starts_with("did:web:localhost%3A"),
        "{}",
        net.carol.did
    );
    let doc: Value = http
        .get(&net.carol_did_doc_url)
        .send()
        .await
        .expect("did.json reachable")
        .json()
        .await
        .expect("did.json is JSON");
    assert_eq!(doc["id"], net.carol.did.as_str());
    assert_eq!(doc["alsoKnownAs"][0], "at://carol.test");
    assert_eq!(doc["service"][0]["serviceEndpoint"], net.pds_url.as_str());
    // The PDS accepted the migration: carol's repo exists and is active.
    let res = http
        .get(format!(
            "{}/xrpc/com.atproto.repo.describeRepo",
            net.pds_url
        ))
        // Through .query(): the DID's own `%3A` must be escaped again in a query string.
        .query(&[("repo", net.carol.did.as_str())])
        .send()
        .await
        .expect("PDS reachable");
    assert_eq!(res.status(), 200);

    // Fresh accounts: distinct, registered at the PLC, and able to log in.
    let a = net.create_account("nettest").await;
    let b = net.create_account("nettest").await;
    assert_ne!(a.did, b.did);
    assert_ne!(a.handle, b.handle);
    assert!(a.handle.starts_with("nettest") && a.handle.ends_with(".test"));
    let res = http
        .get(format!("{}/{}", net.plc_url, a.did))
        .send()
        .await
        .expect("PLC reachable");
    assert_eq!(res.status(), 200);
    let res = http
        .post(format!(
            "{}/xrpc/com.atproto.server.createSession",
            net.pds_url
        ))
        .json(&serde_json::json!({"identifier": a.handle, "password": a.password}))
        .send()
        .await
        .expect("PDS reachable");
    assert_eq!(res.status(), 200);
    let session: Value = res.json().await.expect("session is JSON");
    assert_eq!(session["did"], a.did.as_str());

    // The same network is handed out again.
    let again = atrund_testnet::shared().expect("already started");
    assert!(std::ptr::eq(net, again));
}

#[test]
fn deno_path_points_at_an_executable_or_skips() {
    if let Some(p) = atrund_testnet::deno_path() {
        let out = std::process::Command::new(&p)
            .arg("--version")
            .output()
            .expect("deno runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("deno "));
    }
}
