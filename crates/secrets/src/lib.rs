//! Secrets for bundles: the runner's X25519 keypair (`keyfile`), libsodium-compatible sealed
//! boxes to its public key (`key`), the binding envelope that ties each sealed value to its
//! author, bundle, name and runner key (`envelope`), the `dev.atrund.secrets` record (`record`),
//! and value types
//! whose `Debug` never shows a value (`value`).
//!
//! Owns: key material on disk, sealing and opening, secret-name rules, and the record's shape.
//! Must not touch: the network, logging of values, or which bundle may use which secret (the
//! record says; the HTTP layer decides when to open it). Nothing here logs or formats a value:
//! errors name entries, never their contents.

mod envelope;
mod error;
mod key;
mod keyfile;
mod opener;
mod record;
mod value;

pub use envelope::{seal_bound, Binding, BindingField, ENVELOPE_VERSION, MAX_VALUE_BYTES};
pub use error::SecretsError;
pub use key::{RunnerPublicKey, MULTICODEC_X25519_PUB};
pub use keyfile::{KeyFileStatus, RunnerKeys};
pub use opener::Opener;
pub use record::{
    secrets_rkey, validate_secret_name, SealedEntry, SecretsRecord, MAX_ENTRIES, RECORD_FORMAT,
    SECRETS_COLLECTION,
};
pub use value::{SecretEnv, SecretValue};
