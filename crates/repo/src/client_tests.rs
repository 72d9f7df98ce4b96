//! End-to-end tests: real CARs (signed commit + MST + record) through `verify_record_car`, and
//! `RepoClient` against a hand-written HTTP/1.1 server on loopback (caps and error mapping).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atrund_identity::PublicKey;
use cid::Cid;
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::car::{self, cid_for, DAG_CBOR, RAW};
use crate::testutil::{build_mst, keys_at_depth, sign_commit, signing_key, Rng, UnsignedCommit};
use crate::{verify_record_car, FetchConfig, FetchError, RepoClient};

const DID: &str = "did:plc:ttf36l2a6p3rlsn2veqs2bsn";
const COL: &str = "dev.atrund.bundle";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Rec {
    #[serde(rename = "$type")]
    ty: String,
    name: String,
}

struct Fixture {
    commit: (Cid, Vec<u8>),
    nodes: Vec<(Cid, Vec<u8>)>,
    mst_root: Cid,
    records: HashMap<String, (Cid, Vec<u8>)>,
    /// rkey of a record stored at depth 0 (below the root).
    deep_rkey: String,
    /// rkey not in the repo.
    absent_rkey: String,
}

fn rkey_of(key: &str) -> String {
    key.trim_start_matches(&format!("{COL}/")).to_string()
}

fn fixture_with(sk: &SigningKey, did: &str, high_s: bool, ty: &str) -> Fixture {
    let prefix = format!("{COL}/");
    let mut keys = keys_at_depth(&prefix, 1, 3);
    let shallow = keys_at_depth(&prefix, 0, 21);
    keys.extend(shallow[..20].iter().cloned());
    let absent_rkey = rkey_of(&shallow[20]);
    let mut records = HashMap::new();
    let mut entries = Vec::new();
    for k in &keys {
        let rec = Rec {
            ty: ty.into(),
            name: k.clone(),
        };
        let bytes = serde_ipld_dagcbor::to_vec(&rec).unwrap();
        let cid = cid_for(DAG_CBOR, &bytes);
        entries.push((k.clone(), cid));
        records.insert(rkey_of(k), (cid, bytes));
    }
    let (mst_root, nodes) = build_mst(&entries);
    assert!(nodes.len() >= 3, "want at least two levels");
    let commit = sign_commit(
        &UnsignedCommit {
            did: did.into(),
            version: 3,
            data: mst_root,
            rev: "3n3ftgb3huk27".into(),
            prev: None,
        },
        sk,
        high_s,
    );
    Fixture {
        commit: (cid_for(DAG_CBOR, &commit), commit),
        nodes,
        mst_root,
        records,
        deep_rkey: rkey_of(&shallow[0]),
        absent_rkey,
    }
}

fn fixture() -> Fixture {
    fixture_with(&signing_key(1), DID, false, COL)
}

fn pk() -> PublicKey {
    PublicKey::K256(*signing_key(1).verifying_key())
}

impl Fixture {
    /// A getRecord-style CAR: commit, every MST node, and the record block if present.
    fn car(&self, rkey: &str) -> Vec<u8> {
        let mut blocks = vec![self.commit.clone()];
        blocks.extend(self.nodes.iter().cloned());
        if let Some(r) = self.records.get(rkey) {
            blocks.push(r.clone());
        }
        car::write(&[self.commit.0], &blocks)
    }
}

fn verify(bytes: &[u8], rkey: &str) -> Result<Option<crate::VerifiedRecord>, FetchError> {
    verify_record_car(bytes, DID, &pk(), COL, rkey, 1 << 20)
}

#[test]
fn present_record_verifies_and_decodes() {
    let f = fixture();
    for rkey in f.records.keys() {
        let rec = verify(&f.car(rkey), rkey).unwrap().unwrap();
        assert_eq!(rec.cid, f.records[rkey].0);
        assert_eq!(rec.commit_cid, f.commit.0);
        assert_eq!(rec.rev, "3n3ftgb3huk27");
        let decoded: Rec = rec.decode().unwrap();
        assert_eq!(decoded.name, format!("{COL}/{rkey}"));
    }
}

#[test]
fn absent_record_is_proven_none() {
    let f = fixture();
    assert_eq!(
        verify(&f.car(&f.absent_rkey), &f.absent_rkey).unwrap(),
        None
    );
}

#[test]
fn tampered_block_is_hash_mismatch() {
    let f = fixture();
    let mut blocks = vec![f.commit.clone()];
    blocks.extend(f.nodes.iter().cloned());
    let (cid, mut bytes) = f.records[&f.deep_rkey].clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    blocks.push((cid, bytes));
    let err = verify(&car::write(&[f.commit.0], &blocks), &f.deep_rkey).unwrap_err();
    assert_eq!(err.code(), "BlockHashMismatch", "{err:?}");
}

#[test]
fn other_key_and_high_s_are_bad_signatures() {
    let f = fixture_with(&signing_key(2), DID, false, COL);
    let err = verify(&f.car(&f.deep_rkey), &f.deep_rkey).unwrap_err();
    assert!(matches!(err, FetchError::BadCommitSignature(_)), "{err:?}");
    assert_eq!(err.code(), "CommitSignatureInvalid");

    let f = fixture_with(&signing_key(1), DID, true, COL);
    let err = verify(&f.car(&f.deep_rkey), &f.deep_rkey).unwrap_err();
    assert!(matches!(err, FetchError::BadCommitSignature(_)), "{err:?}");
}

#[test]
fn wrong_did_is_mismatch() {
    let f = fixture_with(
        &signing_key(1),
        "did:plc:someoneelse0000000000000",
        false,
        COL,
    );
    let err = verify(&f.car(&f.deep_rkey), &f.deep_rkey).unwrap_err();
    assert!(
        matches!(err, FetchError::CommitDidMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn missing_subtree_or_record_block_is_incomplete() {
    let f = fixture();
    // Root node only: the depth-0 key lives in a child that is now missing.
    let root_only: Vec<_> = f
        .nodes
        .iter()
        .filter(|(c, _)| *c == f.mst_root)
        .cloned()
        .collect();
    let mut blocks = vec![f.commit.clone()];
    blocks.extend(root_only);
    blocks.push(f.records[&f.deep_rkey].clone());
    let bytes = car::write(&[f.commit.0], &blocks);
    let err = verify(&bytes, &f.deep_rkey).unwrap_err();
    assert!(matches!(err, FetchError::IncompleteProof(_)), "{err:?}");
    assert_eq!(err.code(), "MstProofInvalid");
    // Absence can't be claimed without the subtree either.
    let err = verify(&bytes, &f.absent_rkey).unwrap_err();
    assert!(matches!(err, FetchError::IncompleteProof(_)), "{err:?}");

    // All nodes but no record block.
    let mut blocks = vec![f.commit.clone()];
    blocks.extend(f.nodes.iter().cloned());
    let err = verify(&car::write(&[f.commit.0], &blocks), &f.deep_rkey).unwrap_err();
    assert!(matches!(err, FetchError::IncompleteProof(_)), "{err:?}");

    // No commit block at all.
    let err = verify(&car::write(&[f.commit.0], &f.nodes), &f.deep_rkey).unwrap_err();
    assert!(matches!(err, FetchError::CommitInvalid(_)), "{err:?}");
}

#[test]
fn record_type_must_match_collection() {
    let f = fixture_with(&signing_key(1), DID, false, "dev.atrund.other");
    let err = verify(&f.car(&f.deep_rkey), &f.deep_rkey).unwrap_err();
    assert_eq!(err.code(), "RecordInvalid");
}

#[test]
fn bad_paths_are_rejected_before_parsing() {
    let f = fixture();
    for (col, rkey) in [
        ("dev.atrund.bundle/x", "a"),
        (COL, "a/b"),
        (COL, ".."),
        (COL, ""),
    ] {
        let err = verify_record_car(&f.car("x"), DID, &pk(), col, rkey, 1 << 20).unwrap_err();
        assert!(matches!(err, FetchError::InvalidInput(_)), "{col} {rkey}");
    }
}

#[test]
fn mutated_proof_cars_never_panic_or_verify_wrong_data() {
    let f = fixture();
    let good = f.car(&f.deep_rkey);
    let mut rng = Rng(42);
    for _ in 0..1000 {
        let mut bytes = good.clone();
        let i = rng.next() as usize % bytes.len();
        bytes[i] = rng.next() as u8;
        if let Ok(Some(rec)) = verify(&bytes, &f.deep_rkey) {
            // Only mutations in ignorable framing could survive; the record must be intact.
            assert_eq!(rec.cid, f.records[&f.deep_rkey].0);
        }
        let _ = verify(&good[..i], &f.deep_rkey);
    }
}

// ---------- HTTP ----------

#[derive(Clone)]
enum Reply {
    /// status, extra headers, body (Content-Length set)
    Full(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// body without Content-Length, delimited by closing the connection
    Unsized(Vec<u8>),
    /// a response head advertising a Content-Length, then nothing
    Lying(u64),
    /// accept and never answer
    Hang,
}

type Handler = Arc<dyn Fn(&url::Url) -> Reply + Send + Sync>;

async fn serve(handler: Handler) -> url::Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let target = text.split(' ').nth(1).unwrap_or("/").to_string();
                let url = url::Url::parse(&format!("http://x{target}")).unwrap();
                let out = match handler(&url) {
                    Reply::Full(status, headers, body) => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        [head.into_bytes(), body].concat()
                    }
                    Reply::Unsized(body) => [
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec(),
                        body,
                    ]
                    .concat(),
                    Reply::Lying(len) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url::Url::parse(&format!("http://127.0.0.1:{}", addr.port())).unwrap()
}

/// Loopback opened whole, as `allow_addrs = ["127.0.0.1/32", "::1/128"]` would.
fn loopback_open() -> atrund_netpolicy::AddressPolicy {
    let o = |s: &str| s.parse::<atrund_netpolicy::Opening>().unwrap();
    atrund_netpolicy::AddressPolicy::default().with_openings(&[o("127.0.0.1/32"), o("::1/128")])
}

fn client() -> RepoClient {
    RepoClient::new(FetchConfig {
        timeout: Duration::from_secs(5),
        allow_http_loopback: true,
        address_policy: loopback_open(),
        ..FetchConfig::default()
    })
    .unwrap()
}

fn json_err(status: u16, error: &str, message: &str) -> Reply {
    Reply::Full(
        status,
        vec![("content-type", "application/json".into())],
        serde_json::to_vec(&serde_json::json!({"error": error, "message": message})).unwrap(),
    )
}

fn param(url: &url::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A fake PDS serving the fixture for sync.getRecord.
async fn fake_pds(f: &Arc<Fixture>) -> url::Url {
    let f = f.clone();
    serve(Arc::new(move |url: &url::Url| {
        assert_eq!(url.path(), "/xrpc/com.atproto.sync.getRecord");
        assert_eq!(param(url, "did"), DID);
        assert_eq!(param(url, "collection"), COL);
        Reply::Full(
            200,
            vec![("content-type", "application/vnd.ipld.car".into())],
            f.car(&param(url, "rkey")),
        )
    }))
    .await
}

#[tokio::test]
async fn get_record_over_http() {
    let f = Arc::new(fixture());
    let pds = fake_pds(&f).await;
    let c = client();
    let rec = c
        .get_record(&pds, DID, &pk(), COL, &f.deep_rkey)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.cid, f.records[&f.deep_rkey].0);
    assert_eq!(
        c.get_record(&pds, DID, &pk(), COL, &f.absent_rkey)
            .await
            .unwrap(),
        None
    );
    // The wrong key fails over HTTP too.
    let other = PublicKey::K256(*signing_key(3).verifying_key());
    let err = c
        .get_record(&pds, DID, &other, COL, &f.deep_rkey)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CommitSignatureInvalid");
}

#[tokio::test]
async fn get_record_size_caps() {
    let f = Arc::new(fixture());
    let pds = fake_pds(&f).await;
    let small = RepoClient::new(FetchConfig {
        max_car_bytes: 100,
        allow_http_loopback: true,
        address_policy: loopback_open(),
        ..FetchConfig::default()
    })
    .unwrap();
    let err = small
        .get_record(&pds, DID, &pk(), COL, &f.deep_rkey)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ResponseTooLarge");

    // No Content-Length: the cap is enforced while streaming.
    let unsized_pds = serve(Arc::new(|_: &url::Url| Reply::Unsized(vec![0u8; 4096]))).await;
    let err = small
        .get_record(&unsized_pds, DID, &pk(), COL, "a")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");

    // A huge advertised length is refused before reading.
    let lying = serve(Arc::new(|_: &url::Url| Reply::Lying(1 << 40))).await;
    let err = client()
        .get_record(&lying, DID, &pk(), COL, "a")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn pds_error_mapping() {
    let pds = serve(Arc::new(|url: &url::Url| {
        match param(url, "rkey").as_str() {
            "notfound" => json_err(400, "RecordNotFound", "Could not locate record"),
            "takendown" => json_err(400, "RepoTakendown", "Repo has been takendown"),
            "deactivated" => json_err(400, "RepoDeactivated", "deactivated"),
            "norepo" => json_err(400, "RepoNotFound", "Could not find repo"),
            "other" => json_err(400, "InvalidRequest", "bad"),
            "ratelimit" => json_err(429, "RateLimitExceeded", "slow down"),
            "server" => json_err(502, "UpstreamFailure", "oops"),
            "redirect" => Reply::Full(
                302,
                vec![("location", "http://127.0.0.1:1/".into())],
                vec![],
            ),
            "garbage" => Reply::Full(200, vec![], b"not a car".to_vec()),
            _ => Reply::Full(500, vec![], b"<html>".to_vec()),
        }
    }))
    .await;
    let c = client();
    let code = |rkey: &'static str| {
        let c = c.clone();
        let pds = pds.clone();
        async move { c.get_record(&pds, DID, &pk(), COL, rkey).await.unwrap_err() }
    };
    assert!(matches!(code("notfound").await, FetchError::RecordNotFound));
    assert!(matches!(
        code("takendown").await,
        FetchError::RepoUnavailable { .. }
    ));
    assert!(matches!(
        code("deactivated").await,
        FetchError::RepoUnavailable { .. }
    ));
    assert!(matches!(code("norepo").await, FetchError::RepoNotFound(_)));
    assert!(matches!(
        code("other").await,
        FetchError::PdsError { status: 400, .. }
    ));
    assert!(matches!(
        code("ratelimit").await,
        FetchError::PdsError { status: 429, .. }
    ));
    assert!(matches!(
        code("server").await,
        FetchError::PdsUnreachable(_)
    ));
    assert!(matches!(
        code("html500").await,
        FetchError::PdsUnreachable(_)
    ));
    // Redirects are followed (re-checked): this one leads to a closed port.
    assert!(matches!(
        code("redirect").await,
        FetchError::PdsUnreachable(_)
    ));
    assert!(matches!(code("garbage").await, FetchError::CarInvalid(_)));
}

#[tokio::test]
async fn unreachable_and_timeouts() {
    // Bind then drop to get a port that refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let err = client()
        .get_record(&dead, DID, &pk(), COL, "a")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::PdsUnreachable(_)), "{err:?}");
    // The OS error stays in the detail (for the log), out of the message.
    atrund_testnet::assert_no_network_text("repo", &err.to_string());
    assert!(err.detail().unwrap().contains("127.0.0.1"), "{err:?}");

    let hang = serve(Arc::new(|_: &url::Url| Reply::Hang)).await;
    let quick = RepoClient::new(FetchConfig {
        timeout: Duration::from_millis(300),
        allow_http_loopback: true,
        address_policy: loopback_open(),
        ..FetchConfig::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = quick
        .get_record(&hang, DID, &pk(), COL, "a")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::PdsUnreachable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn insecure_urls_are_refused() {
    let strict = RepoClient::new(FetchConfig::default()).unwrap();
    let loose = client();
    let cases = [
        (&strict, "http://127.0.0.1:1"),
        (&strict, "http://localhost:1"),
        (&loose, "http://example.com"),
        (&loose, "ftp://localhost/"),
    ];
    for (c, u) in cases {
        let url = url::Url::parse(u).unwrap();
        let err = c.get_record(&url, DID, &pk(), COL, "a").await.unwrap_err();
        assert_eq!(err.code(), "InsecureUrl", "{u}");
        let err = c
            .get_blob(&url, DID, &cid_for(RAW, b"x"), 1)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "InsecureUrl", "{u}");
    }
    for u in ["http://localhost:1", "http://[::1]:1", "http://127.0.0.1:1"] {
        let url = url::Url::parse(u).unwrap();
        let err = loose
            .get_record(&url, DID, &pk(), COL, "a")
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::PdsUnreachable(_)), "{u}: {err:?}");
    }
    assert!(crate::check_url(&url::Url::parse("https://pds.example.com").unwrap(), false).is_ok());
}

#[tokio::test]
async fn get_blob_verifies_and_caps() {
    let good = b"export default { fetch() {} }".to_vec();
    let good_cid = cid_for(RAW, &good);
    let body = good.clone();
    let pds = serve(Arc::new(move |url: &url::Url| {
        assert_eq!(url.path(), "/xrpc/com.atproto.sync.getBlob");
        match param(url, "did").as_str() {
            "did:plc:good" => Reply::Full(200, vec![], body.clone()),
            "did:plc:tampered" => {
                let mut b = body.clone();
                b[0] ^= 1;
                Reply::Full(200, vec![], b)
            }
            "did:plc:longer" => Reply::Full(200, vec![], [body.clone(), b"x".to_vec()].concat()),
            "did:plc:unsized" => Reply::Unsized(vec![7u8; 100_000]),
            "did:plc:missing" => json_err(400, "InvalidRequest", "Blob not found"),
            "did:plc:missing2" => json_err(400, "BlobNotFound", "no"),
            "did:plc:suspended" => json_err(400, "RepoSuspended", "no"),
            _ => json_err(500, "InternalServerError", ""),
        }
    }))
    .await;
    let c = client();
    let size = good.len() as u64;
    let got = c
        .get_blob(&pds, "did:plc:good", &good_cid, size)
        .await
        .unwrap();
    assert_eq!(&got[..], &good[..]);

    let err = |did: &'static str, cid: Cid, size: u64| {
        let c = c.clone();
        let pds = pds.clone();
        async move { c.get_blob(&pds, did, &cid, size).await.unwrap_err() }
    };
    assert_eq!(
        err("did:plc:tampered", good_cid, size).await.code(),
        "BlobHashMismatch"
    );
    assert!(matches!(
        err("did:plc:longer", good_cid, size).await,
        FetchError::BlobSizeMismatch { .. }
    ));
    assert!(matches!(
        err("did:plc:good", good_cid, size + 5).await,
        FetchError::BlobSizeMismatch { .. }
    ));
    assert!(matches!(
        err("did:plc:unsized", good_cid, size).await,
        FetchError::BlobSizeMismatch { .. }
    ));
    assert!(matches!(
        err("did:plc:missing", good_cid, size).await,
        FetchError::BlobNotFound
    ));
    assert!(matches!(
        err("did:plc:missing2", good_cid, size).await,
        FetchError::BlobNotFound
    ));
    assert!(matches!(
        err("did:plc:suspended", good_cid, size).await,
        FetchError::RepoUnavailable { .. }
    ));
    assert!(matches!(
        err("did:plc:good", cid_for(DAG_CBOR, &good), size).await,
        FetchError::BlobRefInvalid(_)
    ));
    assert!(matches!(
        err("did:plc:good", good_cid, 21 * 1024 * 1024).await,
        FetchError::TooLarge { .. }
    ));
}

#[tokio::test]
async fn list_record_cids_walks_pages() {
    let cid_a = cid_for(DAG_CBOR, b"a");
    let cid_b = cid_for(DAG_CBOR, b"b");
    let (sa, sb) = (cid_a.to_string(), cid_b.to_string());
    let pds = serve(Arc::new(move |url: &url::Url| {
        assert_eq!(url.path(), "/xrpc/com.atproto.repo.listRecords");
        assert_eq!(param(url, "repo"), DID);
        let page = match param(url, "cursor").as_str() {
            "" => serde_json::json!({
                "records": [
                    {"uri": format!("at://{DID}/{COL}/aaa"), "cid": sa, "value": {}},
                    {"uri": format!("at://did:plc:other/{COL}/zzz"), "cid": sa, "value": {}},
                    {"uri": format!("at://{DID}/{COL}/bad"), "cid": "notacid", "value": {}},
                ],
                "cursor": "aaa"
            }),
            "aaa" => serde_json::json!({
                "records": [{"uri": format!("at://{DID}/{COL}/bbb"), "cid": sb, "value": {}}],
                "cursor": "bbb"
            }),
            _ => serde_json::json!({"records": []}),
        };
        Reply::Full(200, vec![], serde_json::to_vec(&page).unwrap())
    }))
    .await;
    let c = client();
    let all = c.list_record_cids(&pds, DID, COL, 10).await.unwrap();
    assert_eq!(
        all,
        vec![("aaa".to_string(), cid_a), ("bbb".to_string(), cid_b)]
    );
    let one = c.list_record_cids(&pds, DID, COL, 1).await.unwrap();
    assert_eq!(one, vec![("aaa".to_string(), cid_a)]);
}

#[tokio::test]
async fn pds_at_a_special_address_is_refused_without_connecting() {
    let canary = atrund_testnet::Canary::bind("127.0.0.1:0").unwrap();
    let port = canary.port;
    // Production-like: plain http allowed (development) but no address opened.
    let c = RepoClient::new(FetchConfig {
        timeout: Duration::from_secs(2),
        allow_http_loopback: true,
        ..FetchConfig::default()
    })
    .unwrap();
    let blob = cid_for(RAW, b"x");
    for pds in [
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("https://[::ffff:127.0.0.1]:{port}"),
        "https://10.0.0.1".to_string(),
        "https://169.254.169.254".to_string(),
    ] {
        let url = url::Url::parse(&pds).unwrap();
        let e = c.get_record(&url, DID, &pk(), COL, "a").await.unwrap_err();
        assert_eq!(e.code(), "AddressNotAllowed", "{pds}: {e:?}");
        atrund_testnet::assert_no_network_text("repo", &e.to_string());
        let e = c.get_blob(&url, DID, &blob, 1).await.unwrap_err();
        assert_eq!(e.code(), "AddressNotAllowed", "{pds}: {e:?}");
    }
    assert_eq!(canary.count(), 0);
}

#[tokio::test]
async fn a_pds_redirect_to_loopback_is_refused_without_connecting() {
    let canary = atrund_testnet::Canary::bind("127.0.0.1:0").unwrap();
    let port = canary.port;
    let target = format!("http://127.0.0.1:{port}/xrpc/com.atproto.sync.getRecord");
    let pds = serve(Arc::new(move |_: &url::Url| {
        Reply::Full(302, vec![("location", target.clone())], vec![])
    }))
    .await;
    // Only the redirecting PDS is opened, not the rest of loopback.
    let sa = std::net::SocketAddr::from(([127, 0, 0, 1], pds.port().unwrap()));
    let c = RepoClient::new(FetchConfig {
        timeout: Duration::from_secs(2),
        allow_http_loopback: true,
        address_policy: atrund_netpolicy::AddressPolicy::default()
            .with_openings(&[atrund_netpolicy::Opening::Socket(sa)]),
        ..FetchConfig::default()
    })
    .unwrap();
    let e = c.get_record(&pds, DID, &pk(), COL, "a").await.unwrap_err();
    assert_eq!(e.code(), "AddressNotAllowed", "{e:?}");
    atrund_testnet::assert_no_network_text("repo", &e.to_string());
    let e = c
        .get_blob(&pds, DID, &cid_for(RAW, b"x"), 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AddressNotAllowed", "{e:?}");
    assert_eq!(canary.count(), 0);
}

/// A getRepo-style CAR: commit, every node and every record block.
fn whole_repo(f: &Fixture) -> Vec<(Cid, Vec<u8>)> {
    let mut blocks = vec![f.commit.clone()];
    blocks.extend(f.nodes.iter().cloned());
    blocks.extend(f.records.values().cloned());
    blocks
}

#[test]
fn a_whole_repo_verifies_and_lists_a_collection() {
    let f = fixture();
    let bytes = car::write(&[f.commit.0], &whole_repo(&f));
    let repo = crate::verify_repo_car(&bytes, DID, &pk(), 1 << 20).unwrap();
    let got = repo.records(COL).unwrap();
    let mut want: Vec<_> = f.records.keys().cloned().collect();
    want.sort();
    assert_eq!(got.iter().map(|r| r.rkey.clone()).collect::<Vec<_>>(), want);
    for r in &got {
        assert_eq!(r.cid, f.records[&r.rkey].0);
        assert_eq!(r.decode::<Rec>().unwrap().ty, COL);
    }
    assert!(repo.records("app.bsky.graph.follow").unwrap().is_empty());

    // Another key, another DID, a missing record block, or a cap: never a (shorter) list.
    let e = crate::verify_repo_car(
        &bytes,
        DID,
        &PublicKey::K256(*signing_key(2).verifying_key()),
        1 << 20,
    )
    .unwrap_err();
    assert!(matches!(e, FetchError::BadCommitSignature(_)), "{e}");
    let e = crate::verify_repo_car(&bytes, "did:plc:someoneelse", &pk(), 1 << 20).unwrap_err();
    assert!(matches!(e, FetchError::CommitDidMismatch { .. }), "{e}");
    let e = crate::verify_repo_car(&bytes, DID, &pk(), 100).unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
    let mut short = whole_repo(&f);
    let (deep_cid, _) = f.records[&f.deep_rkey];
    short.retain(|(c, _)| *c != deep_cid);
    let repo =
        crate::verify_repo_car(&car::write(&[f.commit.0], &short), DID, &pk(), 1 << 20).unwrap();
    assert!(matches!(
        repo.records(COL),
        Err(FetchError::IncompleteProof(_))
    ));
    let wrong_type = fixture_with(&signing_key(1), DID, false, "app.other.thing");
    let bytes = car::write(&[wrong_type.commit.0], &whole_repo(&wrong_type));
    let repo = crate::verify_repo_car(&bytes, DID, &pk(), 1 << 20).unwrap();
    assert!(matches!(
        repo.records(COL),
        Err(FetchError::RecordDecode(_))
    ));
}
