//! MicroVMs, the top rung of the isolation ladder (issue 17, docs/microvm.md): what the microvm
//! backend needs from the host and from its two VMMs, each piece testable without a VM.
//!
//! - [`host`]: whether this host can run guest kernels at all (a `/dev/kvm` that opens, VT-x or
//!   AMD-V, not PVM), with the reason when it cannot: what `auto` reports.
//! - [`firecracker`]: Firecracker's VM description as typed structs (validated in one place) and
//!   its API client over the Unix socket.
//! - [`qemu`]: the command lines of QEMU `-M microvm` and of `vhost-device-vsock`, the second VMM.
//! - [`vsock`]: the host side of the hybrid vsock both VMMs expose on a Unix socket
//!   (`CONNECT <port>` / `OK <n>`, and `<uds>_<port>` for connections the guest opens).
//!
//! Owns: those protocols and checks. Must not touch: instances, pools or the guest agent (the
//! sandbox backend builds on these), or the network beyond the Unix sockets it is handed.
//! Nothing here boots a VM by itself.

pub mod firecracker;
pub mod host;
pub mod qemu;
pub mod vsock;
