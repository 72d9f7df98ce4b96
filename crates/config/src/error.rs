//! Config errors and the provenance of a value. Every message names the key, where the value came
//! from, and what to do. Must not touch: loading logic (see `load`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// The embedded default.
    #[default]
    Default,
    /// Computed at load time (e.g. `data_dir` from `XDG_DATA_HOME`); says from what.
    Computed(String),
    /// The TOML config file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the built-in default"),
            Source::Computed(from) => write!(f, "the computed default ({from})"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// Why the configuration could not be loaded or is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// the config file cannot be read
    #[error("cannot read config file {}: {message}; check the path and its permissions, or start without a file to use the built-in defaults", path.display())]
    Unreadable { path: PathBuf, message: String },
    /// the config file is not valid TOML
    #[error("config file {} is not valid TOML: {message}; fix the syntax (keys and defaults are listed in docs/configuration.md)", path.display())]
    Toml { path: PathBuf, message: String },
    /// the config file has a key this version does not know
    #[error("unknown config key `{key}` in {origin}; remove it or fix its spelling (known keys here: {known})")]
    UnknownKey {
        key: String,
        origin: Source,
        known: String,
    },
    /// the config file sets a key under the name an older version used
    #[error("config key `{key}` (in {origin}) is now `{to}`; rename it (docs/configuration.md)")]
    Moved {
        key: String,
        origin: Source,
        to: String,
    },
    /// an `ATRUND_*` environment variable names no config key
    #[error("unknown environment variable {var}: at-rund reads only the ATRUND_* names listed in docs/configuration.md; fix the name or unset it{hint}")]
    UnknownEnv { var: String, hint: String },
    /// a value has the wrong type or cannot be parsed
    #[error("bad value for `{key}` from {origin}: {message}")]
    BadValue {
        key: String,
        origin: Source,
        message: String,
    },
    /// a value parses but is not acceptable
    #[error("invalid `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: Source,
        message: String,
    },
    /// the embedded defaults could not be turned into a table (a bug in at-rund)
    #[error("internal error while preparing the built-in defaults: {0}; please report this bug")]
    Internal(String),
}

impl ConfigError {
    /// Stable PascalCase name of the error.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Unreadable { .. } => "ConfigUnreadable",
            ConfigError::Toml { .. } => "ConfigSyntax",
            ConfigError::UnknownKey { .. } => "ConfigUnknownKey",
            ConfigError::Moved { .. } => "ConfigMovedKey",
            ConfigError::UnknownEnv { .. } => "ConfigUnknownEnv",
            ConfigError::BadValue { .. } => "ConfigBadValue",
            ConfigError::Invalid { .. } => "ConfigInvalid",
            ConfigError::Internal(_) => "ConfigInternal",
        }
    }

    /// The dotted config key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Moved { key, .. }
            | ConfigError::BadValue { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Where each key's value came from. Metadata only: two configs with equal values are equal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Provenance(BTreeMap<String, Source>);

impl PartialEq for Provenance {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Provenance {
    /// The source of `key` or of the nearest parent that was set as a whole.
    pub(crate) fn get(&self, key: &str) -> Source {
        let mut k = key;
        loop {
            if let Some(s) = self.0.get(k) {
                return s.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return Source::Default,
            }
        }
    }

    pub(crate) fn set(&mut self, key: &str, s: Source) {
        self.0.insert(key.to_string(), s);
    }
}
