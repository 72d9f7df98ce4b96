//! Identity: DID and handle syntax, DID resolution (did:plc with a verified audit log, did:web),
//! handle resolution with the bidirectional check, and a cache. First step of the data path.
//! Must not fetch or verify repos, records or blobs (that is `atrund-repo`).
//!
//! Hand-rolled rather than built on a public atproto identity crate: those hard-code https for
//! PLC and/or did:web, so they cannot target a loopback test network (see
//! shared/reference/atproto.md, Part B).

mod cache;
pub mod dns;
pub mod doc;
pub mod error;
pub mod key;
mod net;
pub mod plc;
pub mod resolver;
pub mod service_auth;
pub mod syntax;

pub use cache::CacheStats;
pub use dns::{HickoryTxtResolver, TxtResolver};
pub use doc::{parse_did_doc, DocInfo};
pub use error::{IdKind, IdentityError};
pub use key::{KeyError, PublicKey};
pub use plc::{verify_audit_log, PlcState};
pub use resolver::{IdentityCacheStats, IdentityConfig, IdentityResolver, ResolvedDid};
pub use service_auth::{ServiceAuthError, ServiceToken};
pub use syntax::{AtIdentifier, Did, Handle};

#[cfg(test)]
mod http_tests;
