//! Secret values in memory: zeroized on drop, never shown by `Debug`.

use zeroize::Zeroizing;

/// One decrypted value. `Debug` prints `<redacted>`; read it with [`SecretValue::expose`].
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(s: String) -> Self {
        SecretValue(Zeroizing::new(s))
    }

    /// The value, for handing to the process that needs it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The decrypted secrets of one bundle, in record order. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct SecretEnv(pub(crate) Vec<(String, SecretValue)>);

impl SecretEnv {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretValue)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name/value pairs for a process environment (the sandbox's `InstanceSpec::env`).
    pub fn to_env_pairs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(n, v)| (n.clone(), v.expose().to_string()))
            .collect()
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
