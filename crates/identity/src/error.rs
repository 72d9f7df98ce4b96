//! The one error type of identity resolution. Owns the variants and their stable `code()` names;
//! must not touch the network or caching (the cache decides how long each variant is kept).

/// Which kind of identifier failed its syntax check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Did,
    Handle,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Did => "DID",
            IdKind::Handle => "handle",
        })
    }
}

/// Why an identity could not be resolved. `Clone` because results are cached and shared between
/// coalesced callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// the identifier is not valid syntax; correct the DID or handle
    #[error("'{value}' is not a valid {kind}: {reason}; correct the identifier")]
    BadSyntax {
        kind: IdKind,
        value: String,
        reason: String,
    },
    /// the DID method is not supported; use a did:plc or did:web identity
    #[error("DID method '{0}' is not supported; use a did:plc or did:web identity")]
    UnsupportedMethod(String),
    /// the DID is not registered; check the DID for typos
    #[error("DID {0} is not registered with its directory; check the DID for typos")]
    NotFound(String),
    /// the DID has been deactivated for good; the account no longer exists
    #[error("DID {0} is tombstoned (permanently deactivated); the account no longer exists")]
    Tombstoned(String),
    /// a server could not be reached or failed; retry later. `detail` (URL, network error,
    /// status) is for the log only, never for the caller.
    #[error("could not get an answer from {what}; it may be down or misconfigured, retry later")]
    Unreachable { what: String, detail: String },
    /// the server's address is loopback, private, link-local or another range this runner does
    /// not contact. `detail` (addresses and reasons) is for the log only.
    #[error("{what} is at an address this runner does not contact (loopback, private, link-local, cloud metadata or another special-purpose range); the author must use a publicly reachable server, or this runner's operator opens the address with allow_addrs")]
    AddressNotAllowed { what: String, detail: String },
    /// the DID document is malformed or lacks what ATProto needs
    #[error("the DID document of {did} is unusable: {reason}; the account's owner must fix it")]
    InvalidDocument { did: String, reason: String },
    /// the PLC audit log failed verification
    #[error("the PLC audit log of {did} failed verification: {reason}; the directory served data that does not check out, do not trust this identity")]
    AuditLogInvalid { did: String, reason: String },
    /// the handle and the DID do not point at each other
    #[error("handle {handle} resolved to {did}, but that DID document claims {claimed}; the handle is not verified, fix the DNS record or the document's alsoKnownAs")]
    HandleMismatch {
        handle: String,
        did: String,
        claimed: String,
    },
    /// no DID could be found for the handle
    #[error("handle {handle} did not resolve to a DID: {reason}; check the handle's DNS TXT record or its /.well-known/atproto-did")]
    HandleNotFound { handle: String, reason: String },
    /// a plain-http URL was refused
    #[error("refusing insecure URL {0}: only https is allowed (plain http only to a loopback host when the runner's allow_http is set)")]
    InsecureUrl(String),
    /// the resolver configuration is unusable
    #[error("identity resolver configuration is invalid: {0}; fix the configuration")]
    Config(String),
}

impl IdentityError {
    /// Stable PascalCase name, used as the HTTP error name.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::BadSyntax {
                kind: IdKind::Did, ..
            } => "DidInvalid",
            IdentityError::BadSyntax {
                kind: IdKind::Handle,
                ..
            } => "HandleInvalid",
            IdentityError::UnsupportedMethod(_) => "DidMethodUnsupported",
            IdentityError::NotFound(_) => "DidNotFound",
            IdentityError::Tombstoned(_) => "DidTombstoned",
            IdentityError::Unreachable { .. } => "IdentityUnreachable",
            IdentityError::AddressNotAllowed { .. } => "AddressNotAllowed",
            IdentityError::InvalidDocument { .. } => "DidDocumentInvalid",
            IdentityError::AuditLogInvalid { .. } => "PlcAuditLogInvalid",
            IdentityError::HandleMismatch { .. } => "HandleMismatch",
            IdentityError::HandleNotFound { .. } => "HandleNotFound",
            IdentityError::InsecureUrl(_) => "InsecureUrl",
            IdentityError::Config(_) => "IdentityConfigInvalid",
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`: the class decides the status).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            IdentityError::BadSyntax { .. } | IdentityError::UnsupportedMethod(_) => C::BadRequest,
            IdentityError::NotFound(_) | IdentityError::HandleNotFound { .. } => C::NotFound,
            IdentityError::Tombstoned(_) => C::Gone,
            IdentityError::Unreachable { .. }
            | IdentityError::AddressNotAllowed { .. }
            | IdentityError::InvalidDocument { .. }
            | IdentityError::AuditLogInvalid { .. }
            | IdentityError::HandleMismatch { .. }
            | IdentityError::InsecureUrl(_) => C::Author,
            IdentityError::Config(_) => C::Runner,
        }
    }

    /// True for failures that may go away on retry (network, timeouts, 5xx). The cache keeps
    /// these for a shorter time than definitive answers.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::Unreachable { .. })
    }

    pub(crate) fn bad_did(value: &str, reason: impl Into<String>) -> Self {
        IdentityError::BadSyntax {
            kind: IdKind::Did,
            value: truncate(value),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_handle(value: &str, reason: impl Into<String>) -> Self {
        IdentityError::BadSyntax {
            kind: IdKind::Handle,
            value: truncate(value),
            reason: reason.into(),
        }
    }

    pub(crate) fn unreachable(what: &str, detail: impl Into<String>) -> Self {
        IdentityError::Unreachable {
            what: what.to_string(),
            detail: detail.into(),
        }
    }

    /// What happened on the network, for the log: never part of the message.
    pub fn detail(&self) -> Option<&str> {
        match self {
            IdentityError::Unreachable { detail, .. }
            | IdentityError::AddressNotAllowed { detail, .. } => Some(detail),
            _ => None,
        }
    }

    pub(crate) fn invalid_doc(did: &str, reason: impl Into<String>) -> Self {
        IdentityError::InvalidDocument {
            did: did.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn audit(did: &str, reason: impl Into<String>) -> Self {
        IdentityError::AuditLogInvalid {
            did: did.to_string(),
            reason: reason.into(),
        }
    }
}

/// Keeps hostile input from bloating error messages and logs.
fn truncate(s: &str) -> String {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            IdentityError::bad_did("x", "r"),
            IdentityError::bad_handle("x", "r"),
            IdentityError::UnsupportedMethod("key".into()),
            IdentityError::NotFound("d".into()),
            IdentityError::Tombstoned("d".into()),
            IdentityError::unreachable("u", "r"),
            IdentityError::AddressNotAllowed {
                what: "w".into(),
                detail: "d".into(),
            },
            IdentityError::invalid_doc("d", "r"),
            IdentityError::audit("d", "r"),
            IdentityError::HandleMismatch {
                handle: "h".into(),
                did: "d".into(),
                claimed: "c".into(),
            },
            IdentityError::HandleNotFound {
                handle: "h".into(),
                reason: "r".into(),
            },
            IdentityError::InsecureUrl("u".into()),
            IdentityError::Config("c".into()),
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn long_values_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(200);
        let IdentityError::BadSyntax { value, .. } = IdentityError::bad_did(&long, "r") else {
            panic!("wrong variant")
        };
        assert!(value.len() < 140, "{}", value.len());
    }
}
