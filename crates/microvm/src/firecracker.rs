//! Firecracker: the VM's description as typed structs, the same shapes its API and its
//! `--config-file` take, validated in one place ([`VmConfig::validate`]), and the API client on
//! its Unix socket ([`Api`]): configure, start, pause, resume.
//!
//! A start request that succeeds proves nothing (on a PVM host `InstanceStart` answered 204 and
//! the VM died 14 s later): the backend waits for its guest agent to answer over vsock.
//!
//! Owns: the request bodies and their order, Firecracker's error answers. Must not: spawn
//! Firecracker or the jailer, or choose paths (the backend does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Longest kernel command line (x86).
pub const MAX_BOOT_ARGS: usize = 2048;
/// Largest answer body read from the API.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Boot arguments Firecracker uses when none are given; a `boot_args` replaces them, so the
/// backend starts from these.
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// One microVM, as `--config-file` takes it and as [`Api::configure`] sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    pub drives: Vec<Drive>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// A virtio-rng device (`{}`), so the guest does not wait for entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    #[serde(default)]
    pub smt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {}

/// What is wrong with a [`VmConfig`], or what Firecracker answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirecrackerError {
    /// the VM description is not acceptable
    #[error("the microVM description is not acceptable: {0}")]
    Invalid(String),
    /// the API socket could not be reached or the exchange broke
    #[error(
        "could not talk to Firecracker's API socket {socket}: {reason}; is Firecracker running?"
    )]
    Socket { socket: PathBuf, reason: String },
    /// Firecracker refused a request; `fault` is its `fault_message`
    #[error("Firecracker refused {method} {path} (HTTP {status}): {fault}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        fault: String,
    },
}

impl VmConfig {
    /// The checks Firecracker would make too, made before anything is sent, with a message
    /// that names the field.
    pub fn validate(&self) -> Result<(), FirecrackerError> {
        let bad = |m: String| Err(FirecrackerError::Invalid(m));
        let m = &self.machine_config;
        if !(1..=32).contains(&m.vcpu_count) {
            return bad(format!("vcpu_count {} is not within 1..=32", m.vcpu_count));
        }
        if m.mem_size_mib < 64 {
            return bad(format!(
                "mem_size_mib {} is below 64 MiB, too little for a kernel and Deno",
                m.mem_size_mib
            ));
        }
        let args = &self.boot_source.boot_args;
        if args.len() > MAX_BOOT_ARGS {
            return bad(format!(
                "boot_args are {} bytes, above the kernel's {MAX_BOOT_ARGS}",
                args.len()
            ));
        }
        // The command line is readable by everything in the guest and sits in the VMM's
        // config: instance settings and secrets go over vsock, never here.
        if args.contains('\n') || args.contains('\0') {
            return bad("boot_args hold a newline or NUL".into());
        }
        // The root is a drive, or the initramfs (at-rund's guest image) with no root drive.
        let roots = self.drives.iter().filter(|d| d.is_root_device).count();
        let initramfs = self.boot_source.initrd_path.is_some();
        if roots > 1 || (roots == 0 && !initramfs) {
            return bad(format!(
                "{roots} root drives; exactly one is needed, or none with an initrd_path"
            ));
        }
        if roots == 1 && initramfs {
            return bad("a root drive and an initrd_path: give one root".into());
        }
        let mut ids: Vec<&str> = self.drives.iter().map(|d| d.drive_id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("two drives share a drive_id".into());
        }
        if let Some(d) = self.drives.iter().find(|d| {
            d.drive_id.is_empty()
                || !d
                    .drive_id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        }) {
            return bad(format!(
                "drive_id {:?} is not letters, digits and '_'",
                d.drive_id
            ));
        }
        if let Some(v) = &self.vsock {
            // 0-2 are reserved (hypervisor, loopback, host).
            if v.guest_cid < 3 {
                return bad(format!(
                    "guest_cid {} is reserved; use 3 or more",
                    v.guest_cid
                ));
            }
        }
        Ok(())
    }
}

/// Firecracker's API on its Unix socket: one request at a time, each on its own connection.
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Fault {
    fault_message: String,
}

impl Api {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// Sends the whole description, in Firecracker's order: machine, boot source, each drive,
    /// vsock, entropy. Validated first.
    pub async fn configure(&self, vm: &VmConfig) -> Result<(), FirecrackerError> {
        vm.validate()?;
        self.put("/machine-config", &vm.machine_config).await?;
        self.put("/boot-source", &vm.boot_source).await?;
        for d in &vm.drives {
            self.put(&format!("/drives/{}", d.drive_id), d).await?;
        }
        if let Some(v) = &vm.vsock {
            self.put("/vsock", v).await?;
        }
        if let Some(e) = &vm.entropy {
            self.put("/entropy", e).await?;
        }
        Ok(())
    }

    /// `InstanceStart`. Success means the VMM began; only the guest's answer means it booted.
    pub async fn start(&self) -> Result<(), FirecrackerError> {
        self.put(
            "/actions",
            &serde_json::json!({ "action_type": "InstanceStart" }),
        )
        .await
    }

    /// Pauses the vCPUs (an idle instance costs no CPU), or resumes them.
    pub async fn set_paused(&self, paused: bool) -> Result<(), FirecrackerError> {
        let state = if paused { "Paused" } else { "Resumed" };
        self.send("PATCH", "/vm", &serde_json::json!({ "state": state }))
            .await
    }

    async fn put<T: Serialize>(&self, path: &str, body: &T) -> Result<(), FirecrackerError> {
        self.send("PUT", path, body).await
    }

    async fn send<T: Serialize>(
        &self,
        method: &'static str,
        path: &str,
        body: &T,
    ) -> Result<(), FirecrackerError> {
        let socket_err = |reason: String| FirecrackerError::Socket {
            socket: self.socket.clone(),
            reason,
        };
        let json = serde_json::to_vec(body)
            .map_err(|e| FirecrackerError::Invalid(format!("{path}: {e}")))?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| socket_err(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| socket_err(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::builder()
                .method(method)
                .uri(format!("http://localhost{path}"))
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(Full::new(Bytes::from(json)))
                .map_err(|e| FirecrackerError::Invalid(format!("{path}: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| socket_err(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| socket_err(format!("reading the answer to {method} {path}: {e}")))?
                .to_bytes();
            Ok::<_, FirecrackerError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                socket_err(format!(
                    "no answer to {method} {path} within {:?}",
                    self.timeout
                ))
            })??;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let fault = serde_json::from_slice::<Fault>(&body)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(500).collect());
        Err(FirecrackerError::Refused {
            method,
            path: path.to_string(),
            status,
            fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vm() -> VmConfig {
        VmConfig {
            boot_source: BootSource {
                kernel_image_path: "vmlinux".into(),
                initrd_path: None,
                boot_args: format!("{DEFAULT_BOOT_ARGS} quiet init=/sbin/init"),
            },
            drives: vec![Drive {
                drive_id: "rootfs".into(),
                path_on_host: "root.img".into(),
                is_root_device: true,
                is_read_only: true,
            }],
            machine_config: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 256,
                smt: false,
            },
            vsock: Some(Vsock {
                guest_cid: 3,
                uds_path: "v.sock".into(),
            }),
            entropy: Some(Entropy {}),
        }
    }

    #[test]
    fn the_config_file_shape_round_trips_and_refuses_unknown_fields() {
        let v = vm();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["boot-source"]["kernel_image_path"], "vmlinux");
        assert_eq!(json["machine-config"]["mem_size_mib"], 256);
        assert_eq!(json["vsock"]["guest_cid"], 3);
        assert_eq!(json["entropy"], serde_json::json!({}));
        assert!(json["boot-source"].get("initrd_path").is_none());
        let back: VmConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, v);
        let mut typo = json;
        typo["machine-config"]["mem_size_mb"] = 1.into();
        assert!(serde_json::from_value::<VmConfig>(typo).is_err());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert_eq!(vm().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut VmConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|v| v.machine_config.vcpu_count = 0), "vcpu_count"),
            (
                Box::new(|v| v.machine_config.mem_size_mib = 32),
                "mem_size_mib",
            ),
            (
                Box::new(|v| v.boot_source.boot_args = "x".repeat(3000)),
                "boot_args",
            ),
            (Box::new(|v| v.boot_source.boot_args.push('\n')), "newline"),
            (
                Box::new(|v| v.drives[0].is_root_device = false),
                "0 root drives",
            ),
            (
                Box::new(|v| v.boot_source.initrd_path = Some("initrd.cpio".into())),
                "give one root",
            ),
            (
                Box::new(|v| {
                    let mut d = v.drives[0].clone();
                    d.is_root_device = false;
                    v.drives.push(d);
                }),
                "share a drive_id",
            ),
            (
                Box::new(|v| v.drives[0].drive_id = "../x".into()),
                "drive_id",
            ),
            (
                Box::new(|v| v.vsock.as_mut().unwrap().guest_cid = 2),
                "guest_cid 2",
            ),
        ];
        for (change, says) in cases {
            let mut v = vm();
            change(&mut v);
            let e = v.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        // The initramfs as the whole guest: no drives.
        let mut v = vm();
        v.drives.clear();
        v.boot_source.initrd_path = Some("guest.cpio".into());
        assert_eq!(v.validate(), Ok(()));
    }
}
