//! Why a key file, a record or a secret could not be used. Messages name files, bundles and
//! secret names; they never contain a secret value or key material.

use std::path::PathBuf;

/// What went wrong with secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// the key file could not be read, created or written
    #[error("runner key file {path}: {source}; check that the directory exists and is writable by the runner (secrets.key_file / ATRUND_SECRETS_KEY_FILE)")]
    KeyFileIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// the key file can be read by other users
    #[error("runner key file {path} has mode {mode:o}, which lets other users read the runner's secret key; run `chmod 600 {path}` (and consider rotating with `at-rund keygen --rotate`)")]
    KeyFileInsecure { path: PathBuf, mode: u32 },
    /// the key file is not a key file this version understands
    #[error("runner key file {path} is not valid: {detail}; restore it from a backup or move it away and run `at-rund keygen` (authors must then set their secrets again)")]
    KeyFileInvalid { path: PathBuf, detail: String },
    /// a public key string is not a multibase X25519 key
    #[error(
        "'{0}' is not an X25519 public key in multibase form (z + base58btc of 0xec01 + 32 bytes)"
    )]
    BadPublicKey(String),
    /// the secret name is not allowed
    #[error("secret name '{name}' is not allowed: {reason}")]
    BadName { name: String, reason: &'static str },
    /// the record is not a well-formed dev.atrund.secrets record
    #[error("the dev.atrund.secrets record of '{bundle}' is invalid: {detail}; the author should run `at-run secrets set` again")]
    Invalid { bundle: String, detail: String },
    /// the record was sealed for another runner's key
    #[error("the secrets of '{bundle}' are sealed for runner key {record_key}, not this runner's key {runner_key}; the author should run `at-run secrets set --runner <this runner's URL>`")]
    NotForThisRunner {
        bundle: String,
        record_key: String,
        runner_key: String,
    },
    /// the record predates bound values (format 2), so its values could have been copied
    #[error("the dev.atrund.secrets record of '{bundle}' is in an old format whose values are not bound to their author, bundle and name, so this runner will not open it; the author should run `at-run secrets set` again for every secret of this bundle")]
    Outdated { bundle: String },
    /// a value opened, but it was sealed for another place
    #[error("secret '{name}' of '{bundle}' was sealed for {}, not for this one: a sealed value opens only for the author, bundle, secret name and runner key it was sealed for, so values copied from another record are refused; the author should run `at-run secrets set` for this bundle", field.describe())]
    BindingMismatch {
        bundle: String,
        name: String,
        field: crate::envelope::BindingField,
    },
    /// a sealed value did not open with this runner's key
    #[error("secret '{name}' of '{bundle}' cannot be decrypted with this runner's key (sealed for another key, or altered); the author should run `at-run secrets set` again")]
    Undecryptable { bundle: String, name: String },
    /// sealing failed (the system random source failed)
    #[error("could not seal secret '{name}': {detail}")]
    SealFailed { name: String, detail: String },
}

impl SecretsError {
    /// Stable error name.
    pub fn code(&self) -> &'static str {
        match self {
            SecretsError::KeyFileIo { .. } => "KeyFileIo",
            SecretsError::KeyFileInsecure { .. } => "KeyFileInsecure",
            SecretsError::KeyFileInvalid { .. } => "KeyFileInvalid",
            SecretsError::BadPublicKey(_) => "RunnerKeyInvalid",
            SecretsError::BadName { .. } => "SecretNameInvalid",
            SecretsError::Invalid { .. } => "SecretsInvalid",
            SecretsError::NotForThisRunner { .. } => "SecretsNotForThisRunner",
            SecretsError::Undecryptable { .. } => "SecretsUndecryptable",
            SecretsError::Outdated { .. } => "SecretsOutdated",
            SecretsError::BindingMismatch { .. } => "SecretBindingMismatch",
            SecretsError::SealFailed { .. } => "SealFailed",
        }
    }

    /// What kind of failure this is for the caller (`atrund-errors`). Records that do not work
    /// on this runner are the author's side, like a bundle record that does not verify; the key
    /// file is the runner's own.
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            SecretsError::KeyFileIo { .. }
            | SecretsError::KeyFileInsecure { .. }
            | SecretsError::KeyFileInvalid { .. }
            | SecretsError::SealFailed { .. } => C::Runner,
            SecretsError::BadPublicKey(_)
            | SecretsError::BadName { .. }
            | SecretsError::Invalid { .. }
            | SecretsError::Outdated { .. }
            | SecretsError::BindingMismatch { .. }
            | SecretsError::NotForThisRunner { .. }
            | SecretsError::Undecryptable { .. } => C::Author,
        }
    }
}
