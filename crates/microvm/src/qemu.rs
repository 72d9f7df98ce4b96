//! QEMU `-M microvm`, the second VMM (and the one this project's CI can boot, under TCG): its
//! command line, and that of `vhost-device-vsock`, which gives it the same hybrid vsock on a Unix
//! socket as Firecracker has (docs/microvm.md), so the host code is one for both.
//!
//! The VM has no network card, a read-only root drive, guest RAM in a shared memfd (vhost-user
//! needs it) and non-legacy virtio-mmio (libvhost-user refuses legacy devices). `Accel::Tcg` is
//! software emulation, a test mode only: it adds the timer workarounds TCG needs.
//!
//! Owns: those argument lists. Must not: spawn anything.

use std::ffi::OsString;
use std::path::PathBuf;

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation: ~100× slower, for tests on hosts without usable KVM.
    Tcg,
}

/// One QEMU microvm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVm {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A read-only root drive; `None` when the initramfs is the whole guest.
    pub root_image: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub accel: Accel,
    /// The vhost-user socket `vhost-device-vsock` serves for this VM.
    pub vhost_socket: PathBuf,
    /// Kernel arguments after the ones this builder sets (e.g. `init=/sbin/init`).
    pub append: String,
    /// Where the guest's serial console is written (`console=ttyS0`); `None`: no console.
    pub console: Option<PathBuf>,
}

impl QemuVm {
    /// The kernel command line: power-off on reboot, no console, then `append`.
    pub fn kernel_args(&self) -> String {
        let mut args = String::from("reboot=t panic=-1 quiet");
        if self.console.is_some() {
            args.push_str(" console=ttyS0");
        }
        if self.accel == Accel::Tcg {
            // TCG's clocks: without these the guest stalls calibrating timers.
            args.push_str(" tsc_early_khz=2000000 lpj=4000000 no_timer_check");
        }
        if !self.append.is_empty() {
            args.push(' ');
            args.push_str(&self.append);
        }
        args
    }

    /// `qemu-system-x86_64`'s arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mem = self.memory_mib;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-M");
        push("microvm,x-option-roms=off,pit=on,pic=on,rtc=on,memory-backend=mem");
        match self.accel {
            Accel::Kvm => {
                push("-accel");
                push("kvm");
                push("-cpu");
                push("host");
            }
            Accel::Tcg => {
                push("-accel");
                push("tcg");
                push("-cpu");
                push("max");
            }
        }
        push("-smp");
        push(&self.vcpus.to_string());
        push("-m");
        push(&format!("{mem}M"));
        push("-object");
        push(&format!("memory-backend-memfd,id=mem,size={mem}M,share=on"));
        push("-global");
        push("virtio-mmio.force-legacy=false");
        for s in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            push(s);
        }
        a.push(OsString::from("-serial"));
        match &self.console {
            Some(path) => {
                let mut file = OsString::from("file:");
                file.push(path.as_os_str());
                a.push(file);
            }
            None => a.push("none".into()),
        }
        a.push("-kernel".into());
        a.push(self.kernel.clone().into_os_string());
        if let Some(initrd) = &self.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into_os_string());
        }
        if let Some(image) = &self.root_image {
            let mut drive = OsString::from("file=");
            drive.push(escape_commas(image));
            drive.push(",if=none,id=root,format=raw,readonly=on");
            a.push("-drive".into());
            a.push(drive);
            a.push("-device".into());
            a.push("virtio-blk-device,drive=root".into());
        }
        let mut chardev = OsString::from("socket,id=vsock,path=");
        chardev.push(escape_commas(&self.vhost_socket));
        a.push("-chardev".into());
        a.push(chardev);
        a.push("-device".into());
        a.push("vhost-user-vsock-device,chardev=vsock".into());
        a.push("-append".into());
        a.push(self.kernel_args().into());
        a
    }
}

/// QEMU splits option values at commas; a literal comma is written twice.
fn escape_commas(p: &std::path::Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// `vhost-device-vsock`'s arguments for one VM: the vhost-user socket QEMU connects to, the
/// hybrid vsock socket the host uses, and the guest's CID.
pub fn vhost_device_vsock_args(
    vhost_socket: &std::path::Path,
    uds: &std::path::Path,
    cid: u32,
) -> Vec<OsString> {
    let mut vm = OsString::from("guest-cid=");
    vm.push(cid.to_string());
    vm.push(",socket=");
    vm.push(vhost_socket.as_os_str());
    vm.push(",uds-path=");
    vm.push(uds.as_os_str());
    vec!["--vm".into(), vm]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(accel: Accel) -> QemuVm {
        QemuVm {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/mods.cpio".into()),
            root_image: Some("/w/root,1.img".into()),
            memory_mib: 256,
            vcpus: 1,
            accel,
            vhost_socket: "/w/vhost.sock".into(),
            append: "init=/sbin/init".into(),
            console: None,
        }
    }

    fn joined(v: &QemuVm) -> String {
        v.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_vm_has_no_network_a_readonly_root_and_shared_memory() {
        let a = joined(&vm(Accel::Kvm));
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("-nodefaults"), "{a}");
        assert!(!a.contains("-netdev") && !a.contains("-nic"), "{a}");
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=256M,share=on"),
            "{a}"
        );
        assert!(a.contains("virtio-mmio.force-legacy=false"), "{a}");
        assert!(
            a.contains("file=/w/root,,1.img,if=none,id=root,format=raw,readonly=on"),
            "{a}"
        );
        assert!(a.contains("vhost-user-vsock-device,chardev=vsock"), "{a}");
        assert!(a.contains("-initrd /k/mods.cpio"), "{a}");
        assert!(
            !a.contains("tsc_early_khz"),
            "KVM needs no TCG timer workarounds: {a}"
        );
        let k = vm(Accel::Kvm).kernel_args();
        assert!(
            k.starts_with("reboot=t panic=-1") && k.ends_with("init=/sbin/init"),
            "{k}"
        );
    }

    #[test]
    fn tcg_is_emulation_with_its_timer_workarounds() {
        let a = joined(&vm(Accel::Tcg));
        assert!(a.contains("-accel tcg -cpu max"), "{a}");
        assert!(vm(Accel::Tcg).kernel_args().contains("no_timer_check"));
    }

    #[test]
    fn vhost_device_vsock_serves_one_vm() {
        let a = vhost_device_vsock_args("/w/vhost.sock".as_ref(), "/w/v.sock".as_ref(), 3);
        assert_eq!(
            a,
            vec![
                OsString::from("--vm"),
                OsString::from("guest-cid=3,socket=/w/vhost.sock,uds-path=/w/v.sock")
            ]
        );
    }
}
