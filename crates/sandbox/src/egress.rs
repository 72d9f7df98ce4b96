//! An instance's access to the runner's egress proxy, the same for both backends: the
//! manifest's `net` list as the proxy's rules, a fresh token, and the registration that lives
//! as long as the instance (dropping it unregisters the token and cuts its tunnels).
//!
//! Owns: registering one instance. Must not: decide how the instance reaches the proxy (the
//! backends do: `none` over loopback TCP, `container` through its forwarder) or set its
//! environment.

use atrund_egress::{EgressPolicy, EgressProxy, NetRule, Registration};

use crate::{InstanceSpec, SandboxError};

/// Registers `spec`'s instance with `proxy`, even with an empty `net` (every attempt is then
/// refused and logged). Returns the registration (keep it with the instance) and the token.
/// `announced`: the backend makes the instance's connections to the proxy itself and announces
/// them (`Registration::announcer`), so the token counts on those connections only.
pub(crate) fn register(
    proxy: &EgressProxy,
    spec: &InstanceSpec,
    announced: bool,
) -> Result<(Registration, String), SandboxError> {
    let token = atrund_egress::new_token().map_err(|e| SandboxError::StartFailed(e.to_string()))?;
    let reg = register_token(proxy, spec, announced, token.clone())?;
    Ok((reg, token))
}

/// [`register`] with a token made earlier: a generic sandbox's proxy URL (and so its token) is
/// in its environment from the start; the token counts for nothing until this registers it
/// with the bundle's rules.
pub(crate) fn register_token(
    proxy: &EgressProxy,
    spec: &InstanceSpec,
    announced: bool,
    token: String,
) -> Result<Registration, SandboxError> {
    let allow = NetRule::parse_list(&spec.permissions.net).map_err(|e| {
        SandboxError::StartFailed(format!("the manifest's net list cannot be enforced: {e}"))
    })?;
    let policy = EgressPolicy {
        bundle_label: spec.id.clone(),
        allow,
        runner: spec.runner_calls.clone(),
    };
    if announced {
        proxy.register_announced(token, policy)
    } else {
        proxy.register(token, policy)
    }
    .map_err(|e| SandboxError::StartFailed(e.to_string()))
}
