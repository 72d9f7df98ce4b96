//! Everything that can go wrong fetching or verifying repo data, with its error name and class.
//!
//! Owns: the error type shared by the client and the verification steps (car, commit, mst,
//! blob), kept apart from them so that none of those files imports another that imports it back.

/// Everything that can go wrong fetching or verifying repo data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// the PDS URL is not https (http is allowed only to a loopback host in test mode)
    #[error("PDS URL {0} is not https; plain http is only allowed to localhost, 127.0.0.0/8 and [::1] with allow_http set. Fix the DID document's PDS endpoint or the config")]
    InsecureUrl(String),
    /// the PDS could not be reached, timed out, or answered 5xx. The field is the network
    /// detail, for the log only (see [`FetchError::detail`]).
    #[error("could not get an answer from the author's PDS; it may be down, retry later")]
    PdsUnreachable(String),
    /// the PDS (or a redirect from it) is at an address this runner does not contact. The field
    /// is the detail (addresses and reasons), for the log only.
    #[error("the author's PDS is at an address this runner does not contact (loopback, private, link-local, cloud metadata or another special-purpose range); the author must use a publicly reachable PDS, or this runner's operator opens the address with allow_addrs")]
    AddressNotAllowed(String),
    /// the PDS answered with a non-2xx status we don't map to anything more specific
    #[error("the PDS answered HTTP {status} {error}: {message}; check the request and the PDS")]
    PdsError {
        status: u16,
        error: String,
        message: String,
    },
    /// a response or structure exceeded a size cap
    #[error(
        "{what} exceeds the limit of {limit}; raise the limit in the config if this is legitimate"
    )]
    TooLarge { what: &'static str, limit: u64 },
    /// the CAR bytes are malformed
    #[error(
        "the PDS sent an invalid CAR file ({0}); the PDS is broken or the response was corrupted"
    )]
    CarInvalid(String),
    /// a CAR block's bytes do not hash to its CID
    #[error("CAR block {cid} does not hash to its CID; the data was tampered with or corrupted, do not use it")]
    BlockHashMismatch { cid: String },
    /// the signed commit is missing, malformed, or not repo version 3
    #[error("the repo commit is invalid ({0}); the PDS is broken or the data was tampered with")]
    CommitInvalid(String),
    /// the commit belongs to another DID than the one asked for
    #[error(
        "the commit is for {found}, not {expected}; the PDS served another repo, do not use it"
    )]
    CommitDidMismatch { expected: String, found: String },
    /// the commit signature does not verify with the DID's signing key
    #[error("the commit signature does not verify with the DID's key ({0}); re-resolve the DID (the key may have rotated) and retry once, else treat the data as forged")]
    BadCommitSignature(String),
    /// the MST is malformed (ordering, layers, bounds, caps, decoding)
    #[error("the repo's MST is invalid ({0}); the PDS is broken or the data was tampered with")]
    MstInvalid(String),
    /// a block needed to prove presence or absence is missing from the CAR
    #[error("the CAR does not contain a complete MST proof ({0}); the PDS sent an incomplete proof, retry or report it")]
    IncompleteProof(String),
    /// the record block is not a valid record for this collection, or does not decode as asked
    #[error("the record is invalid ({0}); the author must republish a valid record")]
    RecordDecode(String),
    /// the PDS says the record does not exist (without a proof)
    #[error("the PDS says the record does not exist; check the collection and rkey")]
    RecordNotFound,
    /// the PDS does not host this repo
    #[error("the PDS does not host repo {0}; re-resolve the DID, the account may have moved")]
    RepoNotFound(String),
    /// the PDS says the blob does not exist (or is not referenced by any record)
    #[error(
        "the PDS does not have the blob; the author must upload it and reference it from a record"
    )]
    BlobNotFound,
    /// the blob ref is not a CIDv1/raw/sha2-256 CID
    #[error("the blob reference is not usable ({0}); the author must republish the record with a raw sha2-256 blob ref")]
    BlobRefInvalid(String),
    /// the blob bytes do not hash to the CID in the record
    #[error(
        "blob bytes do not hash to {cid}; the data was tampered with or corrupted, do not use it"
    )]
    BlobHashMismatch { cid: String },
    /// the blob is not the size the record declares
    #[error("blob is {actual} bytes but the record declares {expected}; do not use it")]
    BlobSizeMismatch { expected: u64, actual: u64 },
    /// the repo is taken down, deactivated or suspended
    #[error("the repo is unavailable ({error}: {message}); the account is taken down, deactivated or suspended")]
    RepoUnavailable { error: String, message: String },
    /// the caller passed an invalid argument (collection, rkey, DID)
    #[error("invalid request: {0}; fix the caller's input")]
    InvalidInput(String),
    /// the HTTP client could not be built
    #[error("could not build the HTTP client ({0}); check the TLS setup")]
    ClientBuild(String),
}

impl FetchError {
    /// Stable PascalCase name, used as the HTTP error name.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::InsecureUrl(_) => "InsecureUrl",
            FetchError::PdsUnreachable(_) => "PdsUnreachable",
            FetchError::AddressNotAllowed(_) => "AddressNotAllowed",
            FetchError::PdsError { .. } => "PdsError",
            FetchError::TooLarge { .. } => "ResponseTooLarge",
            FetchError::CarInvalid(_) => "CarInvalid",
            FetchError::BlockHashMismatch { .. } => "BlockHashMismatch",
            FetchError::CommitInvalid(_) => "CommitInvalid",
            FetchError::CommitDidMismatch { .. } => "CommitDidMismatch",
            FetchError::BadCommitSignature(_) => "CommitSignatureInvalid",
            FetchError::MstInvalid(_) | FetchError::IncompleteProof(_) => "MstProofInvalid",
            FetchError::RecordDecode(_) => "RecordInvalid",
            FetchError::RecordNotFound => "RecordNotFound",
            FetchError::RepoNotFound(_) => "RepoNotFound",
            FetchError::BlobNotFound => "BlobNotFound",
            FetchError::BlobRefInvalid(_) => "BlobRefInvalid",
            FetchError::BlobHashMismatch { .. } => "BlobHashMismatch",
            FetchError::BlobSizeMismatch { .. } => "BlobSizeMismatch",
            FetchError::RepoUnavailable { .. } => "RepoUnavailable",
            FetchError::InvalidInput(_) => "InvalidRequest",
            FetchError::ClientBuild(_) => "HttpClientInit",
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`: the class decides the status).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            FetchError::InvalidInput(_) => C::BadRequest,
            FetchError::RecordNotFound
            | FetchError::RepoNotFound(_)
            | FetchError::RepoUnavailable { .. } => C::NotFound,
            FetchError::InsecureUrl(_)
            | FetchError::PdsUnreachable(_)
            | FetchError::AddressNotAllowed(_)
            | FetchError::PdsError { .. }
            | FetchError::TooLarge { .. }
            | FetchError::CarInvalid(_)
            | FetchError::BlockHashMismatch { .. }
            | FetchError::CommitInvalid(_)
            | FetchError::CommitDidMismatch { .. }
            | FetchError::BadCommitSignature(_)
            | FetchError::MstInvalid(_)
            | FetchError::IncompleteProof(_)
            | FetchError::RecordDecode(_)
            | FetchError::BlobNotFound
            | FetchError::BlobRefInvalid(_)
            | FetchError::BlobHashMismatch { .. }
            | FetchError::BlobSizeMismatch { .. } => C::Author,
            FetchError::ClientBuild(_) => C::Runner,
        }
    }

    /// What happened on the network, for the log: never part of the message.
    pub fn detail(&self) -> Option<&str> {
        match self {
            FetchError::PdsUnreachable(d) | FetchError::AddressNotAllowed(d) => Some(d),
            _ => None,
        }
    }
}
