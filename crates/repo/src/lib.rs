//! Fetch + verify: records and blobs from an author's PDS, believed only after they check out
//! against the author's DID key (signed commit → MST proof → record block; blob → its CID).
//!
//! Owns: the XRPC calls `com.atproto.sync.getRecord`, `com.atproto.sync.getRepo`,
//! `com.atproto.sync.getBlob` and `com.atproto.repo.listRecords` (hints only), size caps, PDS error mapping, and the
//! verification chain. Must not touch: DID resolution or caching (the caller passes the PDS URL
//! and the key it resolved), bundle semantics, or storage. Connections go through
//! `atrund-netpolicy`'s `GuardedClient` only (the PDS URL comes from a DID document the caller
//! may control, so its addresses are checked like any other).

pub mod blob;
pub mod car;
pub mod commit;
mod error;
pub mod firehose;
pub mod mst;

pub use error::FetchError;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::sync::Arc;
use std::time::Duration;

use atrund_identity::PublicKey;
use atrund_netpolicy::{
    AddressPolicy, ClientConfig, GuardedClient, OutboundError, ReadError, Resolve, SystemResolver,
};
use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::Deserialize;

/// Most block sections accepted in a `sync.getRecord` CAR (a proof is ~depth+2 blocks).
pub const MAX_PROOF_BLOCKS: usize = 1000;
/// Cap on one `listRecords` JSON page (100 records of any size the PDS stores).
pub const MAX_LIST_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// Cap on a PDS error body we read to learn `{error, message}`.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// Network limits for fetching.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Whole-request timeout (connect + headers + body).
    pub timeout: Duration,
    /// Largest `sync.getRecord` CAR accepted.
    pub max_car_bytes: u64,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Allow plain http to localhost/127.0.0.0/8/[::1] (tests, local PDS). Opens no address:
    /// loopback must still be opened in `address_policy`.
    pub allow_http_loopback: bool,
    /// Which addresses PDS requests (and their redirects) may connect to.
    pub address_policy: AddressPolicy,
    /// Certificate authorities trusted beside the web PKI's.
    pub extra_roots: Vec<atrund_netpolicy::CertificateDer<'static>>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(10),
            max_car_bytes: 1024 * 1024,
            max_blob_bytes: 20 * 1024 * 1024,
            allow_http_loopback: false,
            address_policy: AddressPolicy::default(),
            extra_roots: Vec::new(),
        }
    }
}

/// Redirects followed from a PDS, each re-checked (https, address policy). Everything fetched is
/// verified against the author's key or the record's CID, so who serves it does not matter;
/// following lets a PDS hand blobs to a CDN.
const MAX_REDIRECTS: usize = 3;

/// A record proven to be in the author's repo at `rev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// CID of the record block (equal to the MST value).
    pub cid: Cid,
    /// The record's DAG-CBOR block, exactly as hashed.
    pub bytes: Vec<u8>,
    /// Revision of the signed commit that proves it.
    pub rev: String,
    /// CID of that commit.
    pub commit_cid: Cid,
}

impl VerifiedRecord {
    /// Decodes the record block into `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, FetchError> {
        serde_ipld_dagcbor::from_slice(&self.bytes)
            .map_err(|e| FetchError::RecordDecode(e.to_string()))
    }
}

/// Verifies a `sync.getRecord` CAR without any network: block hashes, the commit (DID and
/// signature), the MST path to `collection/rkey`, and the record block (CID and `$type`).
/// `Ok(None)` means the CAR proves the record does not exist.
pub fn verify_record_car(
    car_bytes: &[u8],
    did: &str,
    key: &PublicKey,
    collection: &str,
    rkey: &str,
    max_car_bytes: u64,
) -> Result<Option<VerifiedRecord>, FetchError> {
    validate_record_path(collection, rkey)?;
    let car = car::parse_with_limits(
        car_bytes,
        car::CarLimits {
            max_bytes: max_car_bytes,
            max_blocks: MAX_PROOF_BLOCKS,
        },
    )?;
    let commit_cid = match car.roots.as_slice() {
        [root] => *root,
        _ => {
            return Err(FetchError::CarInvalid(format!(
                "expected one root (the commit), found {}",
                car.roots.len()
            )))
        }
    };
    if commit_cid.codec() != car::DAG_CBOR {
        return Err(FetchError::CommitInvalid(
            "root is not a dag-cbor CID".into(),
        ));
    }
    let commit_block = car
        .get(&commit_cid)
        .ok_or_else(|| FetchError::CommitInvalid("the commit block is not in the CAR".into()))?;
    let commit = commit::verify(commit_block, did, key)?;
    let Some(record_cid) = mst::lookup(&car, &commit.data, &format!("{collection}/{rkey}"))? else {
        return Ok(None);
    };
    if record_cid.codec() != car::DAG_CBOR {
        return Err(FetchError::RecordDecode(format!(
            "record CID {record_cid} is not dag-cbor"
        )));
    }
    let bytes = car.get(&record_cid).ok_or_else(|| {
        FetchError::IncompleteProof(format!("record block {record_cid} is not in the CAR"))
    })?;
    check_record_type(bytes, collection)?;
    Ok(Some(VerifiedRecord {
        cid: record_cid,
        bytes: bytes.to_vec(),
        rev: commit.rev,
        commit_cid,
    }))
}

/// Checks that a record block is a DAG-CBOR map whose `$type` is `collection`.
fn check_record_type(bytes: &[u8], collection: &str) -> Result<(), FetchError> {
    let value: Ipld = serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| FetchError::RecordDecode(format!("record is not DAG-CBOR: {e}")))?;
    match &value {
        Ipld::Map(m) => match m.get("$type") {
            Some(Ipld::String(t)) if t == collection => Ok(()),
            Some(Ipld::String(t)) => Err(FetchError::RecordDecode(format!(
                "record $type {t} does not match collection {collection}"
            ))),
            _ => Err(FetchError::RecordDecode(
                "record has no $type string".into(),
            )),
        },
        _ => Err(FetchError::RecordDecode("record is not a map".into())),
    }
}

/// A whole repository (`com.atproto.sync.getRepo`) whose commit is signed by the author's key
/// and whose blocks all hash to their CIDs; records are read from it by walking the MST.
#[derive(Debug, Clone)]
pub struct VerifiedRepo {
    /// The verified commit (its `rev` orders snapshots of one repo).
    pub commit: commit::Commit,
    pub commit_cid: Cid,
    car: car::Car,
}

/// One record of a [`VerifiedRepo`] collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRecord {
    pub rkey: String,
    pub cid: Cid,
    /// The record's DAG-CBOR block, exactly as hashed.
    pub bytes: Vec<u8>,
}

impl RepoRecord {
    /// Decodes the record block into `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, FetchError> {
        serde_ipld_dagcbor::from_slice(&self.bytes)
            .map_err(|e| FetchError::RecordDecode(e.to_string()))
    }
}

/// Verifies a `sync.getRepo` CAR without any network: one root (the commit), every block's
/// hash, and the commit's DID and signature.
pub fn verify_repo_car(
    car_bytes: &[u8],
    did: &str,
    key: &PublicKey,
    max_car_bytes: u64,
) -> Result<VerifiedRepo, FetchError> {
    let car = car::parse_with_limits(
        car_bytes,
        car::CarLimits {
            max_bytes: max_car_bytes,
            // The smallest block section is ~40 bytes: the byte cap is the real bound.
            max_blocks: usize::try_from(max_car_bytes / 40)
                .unwrap_or(usize::MAX)
                .max(16),
        },
    )?;
    let commit_cid = match car.roots.as_slice() {
        [root] if root.codec() == car::DAG_CBOR => *root,
        [_] => {
            return Err(FetchError::CommitInvalid(
                "root is not a dag-cbor CID".into(),
            ))
        }
        roots => {
            return Err(FetchError::CarInvalid(format!(
                "expected one root (the commit), found {}",
                roots.len()
            )))
        }
    };
    let commit_block = car
        .get(&commit_cid)
        .ok_or_else(|| FetchError::CommitInvalid("the commit block is not in the CAR".into()))?;
    let commit = commit::verify(commit_block, did, key)?;
    Ok(VerifiedRepo {
        commit,
        commit_cid,
        car,
    })
}

impl VerifiedRepo {
    /// Every record of `collection`, in rkey order, each block present and of that `$type`. A
    /// node or record block missing from the CAR is an error, never a shorter list.
    pub fn records(&self, collection: &str) -> Result<Vec<RepoRecord>, FetchError> {
        validate_record_path(collection, "x")?;
        let prefix = format!("{collection}/");
        let mut out = Vec::new();
        for (key, cid) in mst::walk_prefix(&self.car, &self.commit.data, &prefix)? {
            let rkey = key.get(prefix.len()..).unwrap_or_default().to_string();
            if cid.codec() != car::DAG_CBOR {
                return Err(FetchError::RecordDecode(format!(
                    "record CID {cid} is not dag-cbor"
                )));
            }
            let bytes = self.car.get(&cid).ok_or_else(|| {
                FetchError::IncompleteProof(format!("record block {cid} is not in the CAR"))
            })?;
            check_record_type(bytes, collection)?;
            out.push(RepoRecord {
                rkey,
                cid,
                bytes: bytes.to_vec(),
            });
        }
        Ok(out)
    }
}

/// Checks a collection NSID and record key well enough that `collection/rkey` is unambiguous.
pub fn validate_record_path(collection: &str, rkey: &str) -> Result<(), FetchError> {
    let nsid_ok = !collection.is_empty()
        && collection.len() <= 317
        && collection.contains('.')
        && collection
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    if !nsid_ok {
        return Err(FetchError::InvalidInput(format!(
            "collection {collection:?} is not an NSID"
        )));
    }
    if !is_rkey(rkey) {
        return Err(FetchError::InvalidInput(format!(
            "rkey {rkey:?} is not a valid record key"
        )));
    }
    Ok(())
}

fn is_rkey(rkey: &str) -> bool {
    !rkey.is_empty()
        && rkey.len() <= 512
        && rkey != "."
        && rkey != ".."
        && rkey
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_:~".contains(&c))
}

/// Rejects anything but https, or http to a loopback host when allowed (the rule of
/// `atrund_netpolicy::check_url`).
pub fn check_url(url: &url::Url, allow_http_loopback: bool) -> Result<(), FetchError> {
    atrund_netpolicy::check_url(url, allow_http_loopback)
        .map_err(|_| FetchError::InsecureUrl(url.to_string()))
}

/// Which call an error came from, to map "not found" answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Record,
    Blob,
    List,
    Repo,
}

/// HTTP client for a PDS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RepoClient {
    http: GuardedClient,
    cfg: FetchConfig,
}

impl RepoClient {
    /// Builds the client: checked addresses only, at most [`MAX_REDIRECTS`] re-checked
    /// redirects, the configured timeout on every request.
    pub fn new(cfg: FetchConfig) -> Result<Self, FetchError> {
        Self::with_name_resolver(cfg, Arc::new(SystemResolver))
    }

    /// Like `new`, with the name resolver replaced (tests pin names; every address it answers is
    /// still checked against `address_policy`).
    pub fn with_name_resolver(
        cfg: FetchConfig,
        names: Arc<dyn Resolve>,
    ) -> Result<Self, FetchError> {
        let http = GuardedClient::new(
            ClientConfig {
                timeout: cfg.timeout,
                max_redirects: MAX_REDIRECTS,
                allow_http_loopback: cfg.allow_http_loopback,
                extra_roots: cfg.extra_roots.clone(),
            },
            cfg.address_policy.clone(),
            names,
        )
        .map_err(|e| FetchError::ClientBuild(e.to_string()))?;
        Ok(RepoClient { http, cfg })
    }

    /// The guarded HTTP client underneath (its address rules apply to the event streams too).
    pub fn http(&self) -> &GuardedClient {
        &self.http
    }

    /// The limits this client enforces.
    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// `com.atproto.sync.getRecord` → verified. `Ok(None)` when the CAR proves the record does
    /// not exist.
    pub async fn get_record(
        &self,
        pds: &url::Url,
        did: &str,
        key: &PublicKey,
        collection: &str,
        rkey: &str,
    ) -> Result<Option<VerifiedRecord>, FetchError> {
        validate_did(did)?;
        validate_record_path(collection, rkey)?;
        let url = self.xrpc(
            pds,
            "com.atproto.sync.getRecord",
            &[("did", did), ("collection", collection), ("rkey", rkey)],
        )?;
        let resp = self
            .send(url, "application/vnd.ipld.car", Call::Record)
            .await?;
        let limit = self.cfg.max_car_bytes;
        let body = read_capped(resp, limit, || FetchError::TooLarge {
            what: "getRecord CAR",
            limit,
        })
        .await?;
        let out = verify_record_car(&body, did, key, collection, rkey, limit)?;
        tracing::debug!(
            did,
            collection,
            rkey,
            found = out.is_some(),
            "record verified"
        );
        Ok(out)
    }

    /// `com.atproto.sync.getRepo` → the whole repository, verified ([`verify_repo_car`]), read
    /// up to `max_bytes`.
    pub async fn get_repo(
        &self,
        pds: &url::Url,
        did: &str,
        key: &PublicKey,
        max_bytes: u64,
    ) -> Result<VerifiedRepo, FetchError> {
        validate_did(did)?;
        let url = self.xrpc(pds, "com.atproto.sync.getRepo", &[("did", did)])?;
        let resp = self
            .send(url, "application/vnd.ipld.car", Call::Repo)
            .await?;
        let body = read_capped(resp, max_bytes, || FetchError::TooLarge {
            what: "getRepo CAR",
            limit: max_bytes,
        })
        .await?;
        let repo = verify_repo_car(&body, did, key, max_bytes)?;
        tracing::debug!(did, rev = %repo.commit.rev, bytes = body.len(), "repo verified");
        Ok(repo)
    }

    /// `com.atproto.sync.getBlob`, streamed with the size cap enforced while reading, then
    /// verified against `cid` and `size` (which must come from a verified record).
    pub async fn get_blob(
        &self,
        pds: &url::Url,
        did: &str,
        cid: &Cid,
        size: u64,
    ) -> Result<bytes::Bytes, FetchError> {
        validate_did(did)?;
        blob::check_blob_cid(cid)?;
        if size > self.cfg.max_blob_bytes {
            return Err(FetchError::TooLarge {
                what: "blob",
                limit: self.cfg.max_blob_bytes,
            });
        }
        let cid_str = cid.to_string();
        let url = self.xrpc(
            pds,
            "com.atproto.sync.getBlob",
            &[("did", did), ("cid", &cid_str)],
        )?;
        let resp = self.send(url, "*/*", Call::Blob).await?;
        if let Some(len) = resp.content_length().filter(|len| *len != size) {
            return Err(FetchError::BlobSizeMismatch {
                expected: size,
                actual: len,
            });
        }
        // The record fixes the size, so any byte past it is already a mismatch: stop reading.
        let body = read_capped(resp, size, || FetchError::BlobSizeMismatch {
            expected: size,
            actual: size.saturating_add(1),
        })
        .await?;
        blob::verify_blob(&body, cid, size)?;
        Ok(bytes::Bytes::from(body))
    }

    /// `com.atproto.repo.listRecords` page-walk returning `(rkey, cid)` hints. UNVERIFIED: use
    /// only to find which rkey holds a record CID, then verify with [`RepoClient::get_record`].
    pub async fn list_record_cids(
        &self,
        pds: &url::Url,
        did: &str,
        collection: &str,
        max_pages: usize,
    ) -> Result<Vec<(String, Cid)>, FetchError> {
        Ok(self
            .list_records(pds, did, collection, max_pages)
            .await?
            .into_iter()
            .map(|r| (r.rkey, r.cid))
            .collect())
    }

    /// `com.atproto.repo.listRecords` page-walk with each record's JSON value. UNVERIFIED, like
    /// [`RepoClient::list_record_cids`]: a hint of which rkeys to prove with `get_record`.
    pub async fn list_records(
        &self,
        pds: &url::Url,
        did: &str,
        collection: &str,
        max_pages: usize,
    ) -> Result<Vec<ListedRecord>, FetchError> {
        validate_did(did)?;
        validate_record_path(collection, "x")?;
        let prefix = format!("at://{did}/{collection}/");
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let mut params = vec![("repo", did), ("collection", collection), ("limit", "100")];
            if let Some(c) = cursor.as_deref() {
                params.push(("cursor", c));
            }
            let url = self.xrpc(pds, "com.atproto.repo.listRecords", &params)?;
            let resp = self.send(url, "application/json", Call::List).await?;
            let body = read_capped(resp, MAX_LIST_PAGE_BYTES, || FetchError::TooLarge {
                what: "listRecords page",
                limit: MAX_LIST_PAGE_BYTES,
            })
            .await?;
            let page: ListPage =
                serde_json::from_slice(&body).map_err(|e| FetchError::PdsError {
                    status: 200,
                    error: "InvalidResponse".into(),
                    message: format!("listRecords JSON did not parse: {e}"),
                })?;
            let n = page.records.len();
            for item in page.records {
                let rkey = item.uri.strip_prefix(&prefix).filter(|r| is_rkey(r));
                match (rkey, item.cid.parse::<Cid>()) {
                    (Some(rkey), Ok(cid)) => out.push(ListedRecord {
                        rkey: rkey.to_string(),
                        cid,
                        value: item.value,
                    }),
                    _ => tracing::debug!(uri = item.uri, "skipping malformed listRecords entry"),
                }
            }
            match page.cursor {
                Some(next) if n > 0 && cursor.as_deref() != Some(next.as_str()) => {
                    cursor = Some(next)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn xrpc(
        &self,
        pds: &url::Url,
        nsid: &str,
        params: &[(&str, &str)],
    ) -> Result<url::Url, FetchError> {
        check_url(pds, self.cfg.allow_http_loopback)?;
        let mut url = pds
            .join(&format!("/xrpc/{nsid}"))
            .map_err(|e| FetchError::InvalidInput(format!("bad PDS URL {pds}: {e}")))?;
        url.query_pairs_mut().clear().extend_pairs(params);
        url.set_fragment(None);
        Ok(url)
    }

    async fn send(
        &self,
        url: url::Url,
        accept: &str,
        call: Call,
    ) -> Result<reqwest::Response, FetchError> {
        let resp = self.http.get(&url, accept).await.map_err(|e| {
            let e = outbound_error(e);
            tracing::info!(%url, error = %e, detail = e.detail().unwrap_or(""), "PDS request failed");
            e
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, MAX_ERROR_BODY_BYTES, || FetchError::TooLarge {
            what: "PDS error body",
            limit: MAX_ERROR_BODY_BYTES,
        })
        .await
        .unwrap_or_default();
        let e = map_pds_error(status.as_u16(), &body, call);
        if let Some(detail) = e.detail() {
            tracing::info!(%url, %detail, "PDS request failed");
        }
        Err(e)
    }
}

fn validate_did(did: &str) -> Result<(), FetchError> {
    let ok = did.starts_with("did:")
        && did.len() <= 2048
        && did
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:%-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(FetchError::InvalidInput(format!("{did:?} is not a DID")))
    }
}

#[derive(Deserialize)]
struct ListPage {
    records: Vec<ListItem>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct ListItem {
    uri: String,
    cid: String,
    #[serde(default)]
    value: serde_json::Value,
}

/// One `listRecords` entry, as the PDS claims it (not verified).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRecord {
    pub rkey: String,
    pub cid: Cid,
    pub value: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct XrpcError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

fn map_pds_error(status: u16, body: &[u8], call: Call) -> FetchError {
    let XrpcError { error, message } = serde_json::from_slice(body).unwrap_or_default();
    match error.as_str() {
        "RepoTakendown" | "RepoDeactivated" | "RepoSuspended" => {
            return FetchError::RepoUnavailable { error, message }
        }
        "RepoNotFound" => return FetchError::RepoNotFound(message),
        _ => {}
    }
    if status == 400 || status == 404 {
        let blob_missing = error == "BlobNotFound"
            || (error == "InvalidRequest"
                && message.to_ascii_lowercase().contains("blob not found"));
        if call == Call::Blob && blob_missing {
            return FetchError::BlobNotFound;
        }
        if call == Call::Record && error == "RecordNotFound" {
            return FetchError::RecordNotFound;
        }
    }
    if status >= 500 {
        return FetchError::PdsUnreachable(format!("HTTP {status} {error}: {message}"));
    }
    FetchError::PdsError {
        status,
        error,
        message,
    }
}

/// Keeps the class, moves the network text into the detail.
fn outbound_error(e: OutboundError) -> FetchError {
    match e {
        OutboundError::AddressNotAllowed { .. } => FetchError::AddressNotAllowed(e.to_string()),
        // The PDS URL is checked before the request, so this is a refused redirect.
        other => FetchError::PdsUnreachable(other.to_string()),
    }
}

fn body_error(e: reqwest::Error) -> FetchError {
    let what = if e.is_timeout() {
        "timed out reading the body"
    } else {
        "reading the body failed"
    };
    tracing::info!(error = %e, "{what}");
    FetchError::PdsUnreachable(format!("{what}: {e}"))
}

/// Reads a body with `atrund_netpolicy::read_capped`, failing with `overflow()` past `limit`.
async fn read_capped(
    resp: reqwest::Response,
    limit: u64,
    overflow: impl Fn() -> FetchError,
) -> Result<Vec<u8>, FetchError> {
    atrund_netpolicy::read_capped(resp, limit)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { .. } => overflow(),
            ReadError::Body(e) => body_error(e),
        })
}
