//! An origin per bundle (docs/origins.md): the DNS label of a bundle, which `Host` names a bundle
//! under `http.bundle_domain`, and the table that maps labels back to `(author DID, name)`.
//!
//! Owns: [`label`] (deterministic, from DID + name), [`host_route`] (pure `Host` parsing) and
//! [`OriginTable`] (`<data_dir>/origins.json`). Must not touch: resolution, verification or
//! policy; the table only remembers bundles the pipeline has already resolved and verified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use atrund_config::is_dns_label;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Characters of the hash part of a label: base32 of the first 15 bytes (120 bits) of SHA-256.
pub const HASH_CHARS: usize = 24;
/// Longest readable prefix: 63 (a DNS label) - 1 (`-`) - [`HASH_CHARS`].
const MAX_PREFIX: usize = 63 - 1 - HASH_CHARS;
/// The table stops growing here (a runner open to everyone must not grow a file without end).
pub const MAX_ENTRIES: usize = 100_000;

/// The DNS label of bundle `name` of author `did`: `{prefix}-{hash}`, where `hash` is the lower-case
/// RFC 4648 base32 of the first 15 bytes of SHA-256(`did + "/" + name`) and `prefix` is the name
/// with runs of `-` collapsed (so no label looks like `xn--`), cut to 38 characters. At most 63
/// characters of `a-z0-9-`. Only the hash identifies the bundle; the prefix is for people.
pub fn label(did: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{did}/{name}").as_bytes());
    let hash = data_encoding::BASE32_NOPAD
        .encode(digest.get(..15).unwrap_or(&digest))
        .to_ascii_lowercase();
    let mut prefix = String::with_capacity(MAX_PREFIX);
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            continue;
        }
        if c == '-' && (prefix.is_empty() || prefix.ends_with('-')) {
            continue;
        }
        if prefix.len() == MAX_PREFIX {
            break;
        }
        prefix.push(c);
    }
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        format!("b-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// What a request's host asks for, given `http.bundle_domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRoute {
    /// The runner's own API and path routes (any other host, or the bundle domain itself).
    Runner,
    /// `{label}.{bundle_domain}`: the bundle with this label; `host` is the whole name, no port.
    Bundle { label: String, host: String },
    /// Under the bundle domain but not one label deep (`a.b.{bundle_domain}`): nothing is served.
    NotABundle,
}

/// Decides the route from the request's host (the `Host` header, or the URI's authority for
/// HTTP/2), ignoring case, the port and one trailing dot.
pub fn host_route(host: Option<&str>, bundle_domain: &str) -> HostRoute {
    let Some(host) = host else {
        return HostRoute::Runner;
    };
    let host = host.trim().to_ascii_lowercase();
    // `name:port`; an IPv6 literal (`[::1]:80`) is never under a domain name anyway.
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host.as_str(),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let Some(sub) = name
        .strip_suffix(bundle_domain)
        .and_then(|s| s.strip_suffix('.'))
    else {
        return HostRoute::Runner;
    };
    if sub.is_empty() || sub.contains('.') || !is_dns_label(sub) {
        return HostRoute::NotABundle;
    }
    HostRoute::Bundle {
        label: sub.to_string(),
        host: name.to_string(),
    }
}

/// A bundle named by its author's DID and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    pub did: String,
    pub name: String,
}

/// Why `origins.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OriginTableError {
    #[error("cannot read {}: {source}; check its permissions, or delete it (the runner refills it as bundles are served)", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid origin table: {message}; delete it (the runner refills it as bundles are served)", path.display())]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    labels: HashMap<String, BundleRef>,
}

/// Label → bundle, kept in memory and persisted to one JSON file so that host routes keep working
/// after a restart. Filled when a bundle is first resolved (path route, pre-warm, or
/// `dev.atrund.resolveBundleOrigin`); a label is a hash, so it cannot be reversed.
#[derive(Debug)]
pub struct OriginTable {
    path: PathBuf,
    labels: Mutex<HashMap<String, BundleRef>>,
}

impl OriginTable {
    /// An empty table persisted at `path` on the first [`OriginTable::remember`].
    pub fn empty(path: PathBuf) -> OriginTable {
        OriginTable {
            path,
            labels: Mutex::new(HashMap::new()),
        }
    }

    /// Loads the table at `path`; a missing file is an empty table. Entries whose label is not
    /// the label of their bundle (an edited file) are refused, so a file cannot route a host to
    /// another bundle.
    pub fn open(path: PathBuf) -> Result<OriginTable, OriginTableError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(OriginTable::empty(path))
            }
            Err(source) => return Err(OriginTableError::Unreadable { path, source }),
        };
        let file: File = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                return Err(OriginTableError::Corrupt {
                    path,
                    message: e.to_string(),
                })
            }
        };
        if file.version != 1 {
            return Err(OriginTableError::Corrupt {
                message: format!("version {} is not 1", file.version),
                path,
            });
        }
        if let Some((l, b)) = file
            .labels
            .iter()
            .find(|(l, b)| **l != label(&b.did, &b.name))
        {
            return Err(OriginTableError::Corrupt {
                message: format!("label '{l}' does not belong to {}/{}", b.did, b.name),
                path,
            });
        }
        Ok(OriginTable {
            path,
            labels: Mutex::new(file.labels),
        })
    }

    /// The bundle behind `label`, if this runner has resolved it before.
    pub fn get(&self, label: &str) -> Option<BundleRef> {
        self.labels.lock().ok()?.get(label).cloned()
    }

    /// Remembers `did`/`name` and returns its label. Writes the file only when the entry is new
    /// (once per bundle); a failed write is logged and the entry still serves until a restart.
    pub fn remember(&self, did: &str, name: &str) -> String {
        let l = label(did, name);
        let Ok(mut labels) = self.labels.lock() else {
            return l;
        };
        if labels.contains_key(&l) {
            return l;
        }
        if labels.len() >= MAX_ENTRIES {
            tracing::warn!(
                max = MAX_ENTRIES,
                "origin table is full: {did}/{name} is served by path route only until {} is trimmed",
                self.path.display()
            );
            return l;
        }
        labels.insert(
            l.clone(),
            BundleRef {
                did: did.to_string(),
                name: name.to_string(),
            },
        );
        // Written under the lock so that two new bundles cannot overwrite each other's entry.
        if let Err(e) = write_atomically(&self.path, &labels) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot persist the origin table; the new host route works until a restart");
        }
        l
    }
}

fn write_atomically(path: &Path, labels: &HashMap<String, BundleRef>) -> std::io::Result<()> {
    let file = File {
        version: 1,
        labels: labels.clone(),
    };
    let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_dns_labels_deterministic_and_distinct() {
        let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let a = label(did, "hello");
        assert_eq!(a, label(did, "hello"));
        assert!(a.starts_with("hello-") && a.len() == 6 + HASH_CHARS, "{a}");
        assert!(is_dns_label(&a));
        // Another author or another name: another label, same prefix or not.
        assert_ne!(a, label("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "hello"));
        assert_ne!(a, label(did, "hello2"));
        // `did + "/" + name` is unambiguous: the name has no `/`.
        assert_ne!(label("did:web:a", "b-c"), label("did:web:a/b", "c"));
        let long = "a-very-long-bundle-name-that-goes-on-and-on-for-sixty-four-chars";
        assert_eq!(long.len(), 64);
        let l = label(did, long);
        assert!(l.len() <= 63 && is_dns_label(&l), "{l}");
        for n in ["x", "a--b", "xn--abc", "a-", "a1-2-3"] {
            let l = label(did, n);
            assert!(is_dns_label(&l) && !l.contains("--"), "{n}: {l}");
        }
    }

    #[test]
    fn label_matches_the_documented_recipe() {
        // printf 'did:plc:ewvi7nxzyoun6zhxrhs64oiz/hello' | sha256sum | cut -c1-30 | xxd -r -p |
        //   base32 | tr A-Z a-z   (docs/origins.md)
        let digest = Sha256::digest(b"did:plc:ewvi7nxzyoun6zhxrhs64oiz/hello");
        let hex: String = digest.iter().take(15).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), 30);
        let l = label("did:plc:ewvi7nxzyoun6zhxrhs64oiz", "hello");
        let hash = l.strip_prefix("hello-").unwrap();
        let bytes = data_encoding::BASE32_NOPAD
            .decode(hash.to_ascii_uppercase().as_bytes())
            .unwrap();
        assert_eq!(bytes, digest[..15]);
        // The shell recipe's output.
        assert_eq!(l, "hello-w3g5gr7tc3enf3aqeukrlfrd");
    }

    #[test]
    fn hosts() {
        let d = "bundles.example.com";
        let bundle = |l: &str| HostRoute::Bundle {
            label: l.into(),
            host: format!("{l}.{d}"),
        };
        assert_eq!(
            host_route(Some("hello-abc.bundles.example.com"), d),
            bundle("hello-abc")
        );
        assert_eq!(
            host_route(Some("Hello-ABC.Bundles.Example.com.:8443"), d),
            bundle("hello-abc")
        );
        for runner in [
            None,
            Some("127.0.0.1:3000"),
            Some("bundles.example.com"),
            Some("bundles.example.com:443"),
            Some("evilbundles.example.com"),
            Some("example.com"),
            Some("[::1]:3000"),
        ] {
            assert_eq!(host_route(runner, d), HostRoute::Runner, "{runner:?}");
        }
        for nothing in [
            "a.b.bundles.example.com",
            "-a.bundles.example.com",
            "a_b.bundles.example.com",
        ] {
            assert_eq!(
                host_route(Some(nothing), d),
                HostRoute::NotABundle,
                "{nothing}"
            );
        }
    }

    #[test]
    fn table_persists_and_refuses_forged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origins.json");
        let t = OriginTable::open(path.clone()).unwrap();
        assert_eq!(t.get("x"), None);
        let l = t.remember("did:plc:abc", "hello");
        assert_eq!(t.remember("did:plc:abc", "hello"), l);
        let again = OriginTable::open(path.clone()).unwrap();
        assert_eq!(
            again.get(&l),
            Some(BundleRef {
                did: "did:plc:abc".into(),
                name: "hello".into()
            })
        );
        // A file that points a label at another bundle is refused.
        let forged = format!(
            r#"{{"version":1,"labels":{{"{l}":{{"did":"did:plc:evil","name":"hello"}}}}}}"#
        );
        std::fs::write(&path, forged).unwrap();
        assert!(matches!(
            OriginTable::open(path.clone()),
            Err(OriginTableError::Corrupt { .. })
        ));
        std::fs::write(&path, "not json").unwrap();
        let e = OriginTable::open(path).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
    }
}
