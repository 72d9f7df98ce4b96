//! An instance's access to the runner's egress proxy, the same for both backends: the
//! manifest's `net` list as the proxy's rules, a fresh token, and the registration that lives
//! as long as the instance (dropping it unregisters the token and cuts its tunnels).
//!
//! Owns: registering one instance, and the forwarder from an instance's proxy socket (container,
//! microVM) to the proxy. Must not: decide how the instance reaches that socket (the backends
//! do: `none` over loopback TCP, `container` and `microvm` through their own forwarders inside)
//! or set its environment.

use std::path::Path;

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
        // The author's log hears of each refused connection (the bundle may not: Node's fetch
        // only says "fetch failed" when a tunnel is refused).
        on_refusal: spec.output.clone().map(|sink| {
            atrund_egress::RefusalSink(std::sync::Arc::new(move |line: &str| {
                sink(crate::OutputStream::Runner, line)
            }))
        }),
    };
    if announced {
        proxy.register_announced(token, policy)
    } else {
        proxy.register(token, policy)
    }
    .map_err(|e| SandboxError::StartFailed(e.to_string()))
}

/// What a sandbox with a forwarder inside (container, microVM) keeps for its instance's
/// egress: the registration and the host side of the forwarder (keep both as long as the
/// instance), and the proxy URL the instance is given (the forwarder's port on its own loopback,
/// with its token).
pub(crate) struct Forwarded {
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    pub proxy_url: String,
}

/// Registers `spec`'s instance with `proxy` and serves its proxy socket at `socket` (given to
/// `owner`); inside, the instance's proxy is `127.0.0.1:<port>`.
pub(crate) fn forwarded(
    proxy: &EgressProxy,
    spec: &InstanceSpec,
    socket: &Path,
    port: u16,
    owner: Option<crate::RunAs>,
) -> Result<Forwarded, SandboxError> {
    let (reg, token) = register(proxy, spec, true)?;
    let fwd = forwarder(socket, proxy.local_addr(), reg.announcer(), owner)?;
    Ok(Forwarded {
        keep: vec![Box::new(reg), Box::new(fwd)],
        proxy_url: atrund_egress::proxy_url(
            &token,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ),
    })
}

/// Serves the instance's proxy socket: each connection is copied to the egress proxy over a
/// connection announced for the instance (its token counts nowhere else). With
/// `owner` (the uid the sandbox runs as) the socket is given to it: connecting needs write
/// permission on the socket file, which the umask may have taken from others.
pub(crate) fn forwarder(
    socket: &Path,
    proxy: std::net::SocketAddr,
    announcer: atrund_egress::SourceAnnouncer,
    owner: Option<crate::RunAs>,
) -> Result<crate::process::AbortOnDrop, SandboxError> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| crate::process::io_err("listen on", socket, e))?;
    if let Some(id) = owner {
        crate::hostfs::give_socket(socket, id)
            .map_err(|e| crate::process::io_err("give the instance", socket, e))?;
    }
    Ok(crate::process::AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((mut unix, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let announcer = announcer.clone();
            tokio::spawn(async move {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(proxy).await else {
                    return;
                };
                // Before a byte is copied: the instance's token counts on this connection only.
                let Ok(local) = tcp.local_addr() else {
                    return;
                };
                announcer.announce(local);
                let _ = tcp.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
            });
        }
    })))
}
