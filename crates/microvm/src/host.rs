//! Can this host run a guest kernel? The checks `auto` makes before it would even try a boot,
//! cheapest first, each with the reason an operator can act on:
//!
//! 1. `/dev/kvm` exists and opens read-write (the VMM's user is in the `kvm` group);
//! 2. it is not PVM (`/sys/module/kvm_pvm`): PVM's `/dev/kvm` accepts a VM and then fails on
//!    privileged guest instructions, so a guest kernel never boots (measured, docs/microvm.md);
//! 3. the CPU has VT-x or AMD-V (`vmx` or `svm` in `/proc/cpuinfo`).
//!
//! Passing them proves nothing about a boot; a real boot that answers does (the backend's
//! probe). The files are read under a root directory so tests can lay out a host of their own.

use std::path::Path;

/// Why this host cannot run microVMs; `Ok` when the cheap checks pass.
pub fn check(root: &Path) -> Result<(), String> {
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        return Err(
            "there is no /dev/kvm: KVM is not available on this host (bare metal, or a cloud VM \
             with nested virtualization, is needed)"
                .into(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&kvm)
    {
        return Err(format!(
            "/dev/kvm does not open read-write ({e}); run the runner as a user in the kvm group"
        ));
    }
    if root.join("sys/module/kvm_pvm").exists() {
        return Err(
            "/dev/kvm is backed by PVM (the kvm_pvm module is loaded): a VM starts, but a guest \
             kernel fails on its first privileged instructions, so no microVM can boot here"
                .into(),
        );
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo"))
        .map_err(|e| format!("cannot read /proc/cpuinfo ({e})"))?;
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if !has_flag("vmx") && !has_flag("svm") {
        return Err(
            "the CPU offers no hardware virtualization (no vmx or svm flag in /proc/cpuinfo)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host laid out under a temp dir: `/dev/kvm` (a plain file opens like the device),
    /// `/proc/cpuinfo` with `flags`, and `kvm_pvm` when asked.
    fn host(kvm: bool, pvm: bool, flags: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for sub in ["dev", "proc", "sys/module"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        if kvm {
            std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        }
        std::fs::write(
            d.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 {flags}\n"),
        )
        .unwrap();
        d
    }

    #[test]
    fn each_missing_piece_is_named() {
        assert!(check(host(false, false, "vmx").path())
            .unwrap_err()
            .contains("no /dev/kvm"));
        assert!(check(host(true, true, "vmx").path())
            .unwrap_err()
            .contains("PVM"));
        assert!(check(host(true, false, "sse4_2").path())
            .unwrap_err()
            .contains("no vmx or svm"));
        // A flag's name inside another word does not count.
        assert!(check(host(true, false, "vmxx nosvm").path()).is_err());
        assert_eq!(check(host(true, false, "vmx").path()), Ok(()));
        assert_eq!(check(host(true, false, "svm").path()), Ok(()));
    }

    #[test]
    fn this_host_is_refused_for_what_it_is() {
        // The project's machine: /dev/kvm backed by PVM, no vmx/svm (docs/microvm.md). On
        // another machine this states what that one is.
        let root = Path::new("/");
        let got = check(root);
        if Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists() {
            let why = got.unwrap_err();
            assert!(why.contains("PVM") || why.contains("read-write"), "{why}");
        } else if !Path::new("/dev/kvm").exists() {
            assert!(got.unwrap_err().contains("no /dev/kvm"));
        }
    }
}
