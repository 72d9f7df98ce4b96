//! What the sandbox's PID 1 is told to do (`init`): the runtime's command line, the paths
//! Landlock opens and the egress forwarder's ends. Written by the container backend into the
//! instance's work dir, or sent to the guest agent (`guest`) by the host.
//!
//! Owns: that shape. Must not: do anything with it.

use std::path::PathBuf;

/// What init is told to do, written by the container backend into the instance's work dir (or
/// sent to the guest agent, `guest`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InitConfig {
    /// Program and arguments of the runtime.
    pub argv: Vec<String>,
    pub read_only: Vec<PathBuf>,
    /// Read and execute (the root's program and library dirs).
    #[serde(default)]
    pub execute: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    pub proxy: Option<ProxyForward>,
}

/// Where the forwarder listens and where it connects.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProxyForward {
    /// On 127.0.0.1 inside the sandbox.
    pub port: u16,
    /// The host's Unix socket, as seen inside the sandbox.
    pub socket: PathBuf,
}
