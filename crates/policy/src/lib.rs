//! Policy: who may run code here ([`check_author`]), what a bundle may ask for
//! ([`check_manifest`]) and how often an author may call ([`AuthorRates`], `rate`). Second step of the data path, after routing and before any fetch work
//! for the author is trusted.
//!
//! Owns: comparing an author or a manifest against the operator's config. Must not touch: the
//! network, identity resolution (the caller passes a DID and, if verified, its handle) or config
//! parsing (`atrund-config`). A bundle asking for more than the policy allows is refused, never
//! silently reduced.

use atrund_bundle::record::RecordError;
use atrund_bundle::Manifest;
pub use atrund_config::{AuthorPolicy, LimitRange, LimitsSection, PermissionCaps};

pub mod rate;
pub use rate::{AuthorRates, RateLimited};

/// The limits one bundle version runs with: what it asked for, or the operator's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub timeout_ms: u64,
    pub memory_mib: u64,
    pub cpu_ms: u64,
    pub concurrency: u64,
}

/// Why the policy refuses an author or a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// the runner's allow-list does not name this author
    #[error("author {did}{} may not run code on this runner: the operator's policy does not list them. An operator adds the DID or handle to `policy` in the config file or to ATRUND_POLICY (comma-separated), or sets it to \"open\"", handle_note(.handle))]
    AuthorNotAllowed { did: String, handle: Option<String> },
    /// the allow-list is empty, so nobody's code runs
    #[error("this runner allows no authors yet: its operator sets ATRUND_POLICY=open, or a comma-separated list of DIDs/handles (or `policy` in the config file), or trusts the accounts they follow (`[trust]` graph), to let code run")]
    PolicyClosed,
    /// neither the allow-list nor the operator's social graph admits this author
    #[error("author {did}{} may not run code on this runner: the operator's policy does not list them, and {reason}. The operator follows them (or lists them in `policy`) to let their code run", handle_note(.handle))]
    NotInGraph {
        did: String,
        handle: Option<String>,
        /// What the graph said, e.g. "the operator's account alice.test does not follow them".
        reason: String,
    },
    /// the author is on the runner's deny list
    #[error("author {did}{} may not run code on this runner: its operator refuses them (`trust.deny`); only the operator can change that", handle_note(.handle))]
    AuthorDenied { did: String, handle: Option<String> },
    /// the bundle asks for a permission the operator does not grant
    #[error("the bundle asks for {requested}, which this runner does not allow (it allows {permission}: {allowed}); remove it from the manifest's permissions or use a runner that grants it")]
    PermissionNotAllowed {
        permission: String,
        requested: String,
        allowed: String,
    },
    /// the bundle asks for more of a limit than the operator allows
    #[error("the bundle asks for {limit} = {requested}, above this runner's maximum of {max}; lower it in the manifest (or omit it for the default) or use a runner with a higher limit")]
    LimitTooHigh {
        limit: String,
        requested: u64,
        max: u64,
    },
    /// the manifest is not well-formed
    #[error("the bundle's manifest is not acceptable: {0}; the author fixes it and publishes a new version")]
    BadManifest(String),
}

fn handle_note(h: &Option<String>) -> String {
    h.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
}

impl PolicyError {
    /// Stable PascalCase name, used as the HTTP error name.
    pub fn code(&self) -> &'static str {
        match self {
            // Same name as the list's refusal: the caller's situation is the same.
            PolicyError::AuthorNotAllowed { .. } | PolicyError::NotInGraph { .. } => {
                "AuthorNotAllowed"
            }
            PolicyError::AuthorDenied { .. } => "AuthorDenied",
            PolicyError::PolicyClosed => "PolicyClosed",
            PolicyError::PermissionNotAllowed { .. } => "PermissionNotAllowed",
            PolicyError::LimitTooHigh { .. } => "LimitTooHigh",
            PolicyError::BadManifest(_) => "BundleInvalid",
        }
    }

    /// What kind of failure this is (`atrund-errors`): forbidden for what the operator does not
    /// allow; a malformed manifest is the published bundle's fault, so the author's side.
    pub fn class(&self) -> atrund_errors::ErrorClass {
        use atrund_errors::ErrorClass as C;
        match self {
            PolicyError::AuthorNotAllowed { .. }
            | PolicyError::NotInGraph { .. }
            | PolicyError::AuthorDenied { .. }
            | PolicyError::PolicyClosed
            | PolicyError::PermissionNotAllowed { .. }
            | PolicyError::LimitTooHigh { .. } => C::Forbidden,
            PolicyError::BadManifest(_) => C::Author,
        }
    }
}

/// Whether `did` may run code. Allow-list entries that are DIDs match `did` exactly; entries
/// that are handles match `verified_handle` case-insensitively. Pass a handle only after the
/// bidirectional check (handle → DID → handle), or `None`.
pub fn check_author(
    policy: &AuthorPolicy,
    did: &str,
    verified_handle: Option<&str>,
) -> Result<(), PolicyError> {
    let entries = match policy {
        AuthorPolicy::Open => return Ok(()),
        AuthorPolicy::AllowList(e) if e.is_empty() => return Err(PolicyError::PolicyClosed),
        AuthorPolicy::AllowList(e) => e,
    };
    let handle = verified_handle.map(|h| h.trim_end_matches('.'));
    let listed = entries.iter().any(|e| {
        if e.starts_with("did:") {
            e == did
        } else {
            handle.is_some_and(|h| e.eq_ignore_ascii_case(h))
        }
    });
    if listed {
        Ok(())
    } else {
        Err(PolicyError::AuthorNotAllowed {
            did: did.to_string(),
            handle: verified_handle.map(str::to_string),
        })
    }
}

/// Whether the deny list (`trust.deny`) refuses `did`: entries that are DIDs match it exactly,
/// handles match `verified_handle` case-insensitively (pass one only after the bidirectional
/// check). Checked before the allow-list and the graph, which it overrides.
pub fn check_denied(
    deny: &[String],
    did: &str,
    verified_handle: Option<&str>,
) -> Result<(), PolicyError> {
    let handle = verified_handle.map(|h| h.trim_end_matches('.'));
    let denied = deny.iter().any(|e| {
        if e.starts_with("did:") {
            e == did
        } else {
            handle.is_some_and(|h| e.eq_ignore_ascii_case(h))
        }
    });
    if denied {
        Err(PolicyError::AuthorDenied {
            did: did.to_string(),
            handle: verified_handle.map(str::to_string),
        })
    } else {
        Ok(())
    }
}

/// True for the refusals the social graph may still overturn (the allow-list does not name the
/// author, or is empty).
pub fn graph_may_admit(e: &PolicyError) -> bool {
    matches!(
        e,
        PolicyError::AuthorNotAllowed { .. } | PolicyError::PolicyClosed
    )
}

/// What [`precheck_author`] allows before anything is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck<'a> {
    /// The policy is open, or the identifier itself is listed: resolve it, then
    /// [`check_author`] as usual.
    Resolve,
    /// The identifier is not listed, but may be a listed author under its other name: resolve
    /// these operator-listed entries (handles for a DID, DIDs for a handle) and let it through
    /// only if one of them verifiably is it. The caller's identifier is not resolved first.
    ViaListed(Vec<&'a str>),
}

/// The allow-list decision that needs no resolution, made before the runner contacts anything a
/// caller named (`id` is the DID or handle from the request). A DID that is not listed can only
/// be a listed handle's DID, a handle that is not listed only a listed DID's verified handle;
/// with no entries of the other kind it is refused here (`AuthorNotAllowed`).
pub fn precheck_author<'a>(
    policy: &'a AuthorPolicy,
    id: &str,
) -> Result<Precheck<'a>, PolicyError> {
    let entries = match policy {
        AuthorPolicy::Open => return Ok(Precheck::Resolve),
        AuthorPolicy::AllowList(e) if e.is_empty() => return Err(PolicyError::PolicyClosed),
        AuthorPolicy::AllowList(e) => e,
    };
    let is_did = id.starts_with("did:");
    let handle = id.trim_end_matches('.');
    let listed = entries.iter().any(|e| {
        if is_did {
            e == id
        } else {
            !e.starts_with("did:") && e.eq_ignore_ascii_case(handle)
        }
    });
    if listed {
        return Ok(Precheck::Resolve);
    }
    let other_kind: Vec<&str> = entries
        .iter()
        .filter(|e| e.starts_with("did:") != is_did)
        .map(String::as_str)
        .collect();
    if other_kind.is_empty() {
        return Err(PolicyError::AuthorNotAllowed {
            did: id.to_string(),
            handle: None,
        });
    }
    Ok(Precheck::ViaListed(other_kind))
}

/// Checks a manifest against the operator's caps and limits and returns the limits the bundle
/// runs with. The manifest is validated first ([`Manifest::validate`]) so nothing malformed gets
/// through.
pub fn check_manifest(
    caps: &PermissionCaps,
    limits: &LimitsSection,
    m: &Manifest,
) -> Result<EffectiveLimits, PolicyError> {
    m.validate()
        .map_err(|e: RecordError| PolicyError::BadManifest(e.to_string()))?;
    let p = &m.permissions;
    let refuse = |permission: &str, requested: String, allowed: &str| {
        Err(PolicyError::PermissionNotAllowed {
            permission: permission.to_string(),
            requested,
            allowed: allowed.to_string(),
        })
    };
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, asked, allowed) in [
        ("net", &p.net, caps.net),
        ("read", &p.read, caps.read),
        ("write", &p.write, caps.write),
    ] {
        if !asked.is_empty() && !allowed {
            return refuse(name, format!("{name}: {}", list(asked)), "none");
        }
    }
    for cmd in &p.run {
        if !caps.run.iter().any(|c| c == cmd) {
            let allowed = if caps.run.is_empty() {
                "none".to_string()
            } else {
                list(&caps.run)
            };
            return refuse("run", format!("run: '{cmd}'"), &allowed);
        }
    }
    for (name, asked, allowed) in [("ffi", p.ffi, caps.ffi), ("sys", p.sys, caps.sys)] {
        if asked && !allowed {
            return refuse(name, format!("{name}: true"), "false");
        }
    }

    let r = &m.limits;
    let pick = |limit: &str, asked: Option<u64>, range: LimitRange| match asked {
        Some(v) if v > range.max => Err(PolicyError::LimitTooHigh {
            limit: limit.to_string(),
            requested: v,
            max: range.max,
        }),
        Some(v) => Ok(v),
        None => Ok(range.default),
    };
    let eff = EffectiveLimits {
        timeout_ms: pick("limits.timeoutMs", r.timeout_ms, limits.timeout_ms)?,
        memory_mib: pick("limits.memoryMib", r.memory_mib, limits.memory_mib)?,
        cpu_ms: pick("limits.cpuMs", r.cpu_ms, limits.cpu_ms)?,
        concurrency: pick("limits.concurrency", r.concurrency, limits.concurrency)?,
    };
    for t in &m.tasks {
        if let Some(ms) = t.timeout_ms {
            if ms > limits.timeout_ms.max {
                return Err(PolicyError::LimitTooHigh {
                    limit: format!("tasks['{}'].timeoutMs", t.name),
                    requested: ms,
                    max: limits.timeout_ms.max,
                });
            }
        }
        if let Some(c) = t.concurrency {
            if c > limits.concurrency.max {
                return Err(PolicyError::LimitTooHigh {
                    limit: format!("tasks['{}'].concurrency", t.name),
                    requested: c,
                    max: limits.concurrency.max,
                });
            }
        }
    }
    Ok(eff)
}

#[cfg(test)]
mod tests;
