//! Identity: DID and handle syntax, DID resolution (did:plc with a verified audit log, did:web),
//! handle resolution with the bidirectional check, and a cache. First step of the data path.

pub mod key;

pub use key::{KeyError, PublicKey};
