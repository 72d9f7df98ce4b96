//! The microVM guest's file system, as one initramfs (a `newc` cpio archive) per runtime: the
//! guest agent as `/init` (this crate's `sandbox-init`, which runs as the guest agent when it is
//! PID 1 with no arguments), the runtime's binary where the container root has it (`/bin/deno`,
//! `/bin/node`, `/bin/python3`), the runtime's own trees at their host paths (Python's standard
//! library), the shared libraries all of them load (from `ldd`, as the container root collects
//! them), and the kernel modules a stock kernel needs for virtio and vsock with their load order
//! in `/lib/modules/order`. The bundle and the shim are not in it: the host sends them over the
//! control channel. One image per runtime keeps each guest's RAM to what its runtime needs
//! (guest RAM holds the image twice while the kernel unpacks it).
//!
//! [`cached_initramfs`] keeps one image per set of pieces under a directory, named by their
//! paths, sizes and modification times (as the container root is), with the agent's debug
//! sections stripped when `objcopy` is on the host (a debug agent is most of the image).
//!
//! Owns: the archive's layout, its encoding and its cache. Must not: boot anything or choose the
//! kernel.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// What goes into a guest image.
#[derive(Debug, Clone)]
pub struct GuestPieces {
    /// The agent binary (`atrund-sandbox-init`, or at-rund itself).
    pub agent: PathBuf,
    /// The runtime's binary on the host, and its path in the guest (absolute).
    pub runtime: (PathBuf, &'static str),
    /// Host dirs copied whole to the same path in the guest (Python's standard library).
    pub trees: Vec<PathBuf>,
    /// Files besides the binaries whose libraries the guest needs (Python's extension modules).
    pub lib_users: Vec<PathBuf>,
    /// Kernel modules (`.ko`); loaded in the order their `depends=` fields need.
    pub modules: Vec<PathBuf>,
}

impl GuestPieces {
    /// The shared libraries the agent, the runtime and the library users load.
    fn libs(&self) -> Result<Vec<PathBuf>, SandboxError> {
        let mut libs = crate::rootfs::needed_libs(&self.agent)?;
        libs.extend(crate::rootfs::needed_libs(&self.runtime.0)?);
        for f in &self.lib_users {
            libs.extend(crate::rootfs::needed_libs(f)?);
        }
        libs.sort();
        libs.dedup();
        Ok(libs)
    }

    /// Every file of the trees, as (host path, path in the guest without its leading `/`).
    /// A symlink to a file inside the same tree is followed (the guest gets a plain file); one
    /// that leads out of its tree is left out, as it leads nowhere in a container (where the
    /// tree is bound), and so are other symlinks and anything neither a file nor a dir.
    fn tree_files(&self) -> Result<Vec<(PathBuf, String)>, SandboxError> {
        let mut out = Vec::new();
        for root in &self.trees {
            let real_root =
                std::fs::canonicalize(root).map_err(|e| err(format!("{}: {e}", root.display())))?;
            let within = |p: &Path| {
                std::fs::canonicalize(p).is_ok_and(|t| t.starts_with(&real_root) && t.is_file())
            };
            let mut todo = vec![root.clone()];
            while let Some(dir) = todo.pop() {
                let entries =
                    std::fs::read_dir(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
                for e in entries {
                    let e = e.map_err(|e| err(format!("{}: {e}", dir.display())))?;
                    let path = e.path();
                    let kind = e
                        .file_type()
                        .map_err(|e| err(format!("{}: {e}", path.display())))?;
                    let is_file = kind.is_file() || (kind.is_symlink() && within(&path));
                    if kind.is_dir() {
                        todo.push(path);
                    } else if is_file {
                        let inside = path
                            .to_str()
                            .ok_or_else(|| err(format!("{} is not UTF-8", path.display())))?
                            .trim_start_matches('/')
                            .to_string();
                        out.push((path, inside));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn err(msg: String) -> SandboxError {
    SandboxError::StartFailed(format!("guest image: {msg}"))
}

/// Bumped when the image's layout changes, so a cached image of an older layout is not reused.
const LAYOUT: &str = "initramfs-2";

/// A cached image: its path, its size, and whether the agent in it was stripped.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub path: PathBuf,
    pub bytes: u64,
    pub agent_stripped: bool,
}

/// The initramfs for `p` under `dir` (`<key>.cpio`), built once. Blocking: reads and writes the
/// pieces (a few hundred MB for a debug agent). [`remove_other_images`] clears out the rest.
pub fn cached_initramfs(dir: &Path, p: &GuestPieces) -> Result<CachedImage, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let objcopy = crate::executables::find_executable("objcopy", &[]);
    let libs = p.libs()?;
    let tree = p.tree_files()?;
    let files: Vec<&Path> = [p.agent.as_path(), p.runtime.0.as_path()]
        .into_iter()
        .chain(p.modules.iter().map(PathBuf::as_path))
        .chain(libs.iter().map(PathBuf::as_path))
        .chain(tree.iter().map(|(host, _)| host.as_path()))
        .collect();
    let seed = format!(
        "{LAYOUT} stripped={} runtime at {}",
        objcopy.is_some(),
        p.runtime.1
    );
    let h = crate::rootfs::files_key(seed.as_bytes(), &files)?;
    let name = format!("{h:016x}.cpio");
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    // The VMM runs as the instances' uid and reads the image.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let path = dir.join(&name);
    if !path.is_file() {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let stripped_agent = dir.join(format!(".agent.{}", std::process::id()));
        let mut pieces = p.clone();
        if let Some(objcopy) = &objcopy {
            let out = std::process::Command::new(objcopy)
                .arg("--strip-debug")
                .arg(&p.agent)
                .arg(&stripped_agent)
                .output()
                .map_err(|e| err(format!("{}: {e}", objcopy.display())))?;
            if !out.status.success() {
                return Err(err(format!(
                    "objcopy --strip-debug {} failed: {}",
                    p.agent.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            pieces.agent = stripped_agent.clone();
        }
        // The libraries and trees found for the key: the stripped agent loads the same.
        let built = write_initramfs(&tmp, &pieces, &libs, &tree);
        let _ = std::fs::remove_file(&stripped_agent);
        built.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
    }
    let bytes = std::fs::metadata(&path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .len();
    Ok(CachedImage {
        path,
        bytes,
        agent_stripped: objcopy.is_some(),
    })
}

/// Removes the images under `dir` other than `keep` (those of older pieces).
pub fn remove_other_images(dir: &Path, keep: &[&Path]) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            let is_image = path.extension().is_some_and(|x| x == "cpio");
            if is_image && !keep.contains(&path.as_path()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Writes the initramfs for `p` to `out`.
pub fn build_initramfs(out: &Path, p: &GuestPieces) -> Result<(), SandboxError> {
    write_initramfs(out, p, &p.libs()?, &p.tree_files()?)
}

/// Writes the initramfs of `p`, whose libraries and tree files are already found (`ldd` and the
/// tree walk are the slow part of finding them).
fn write_initramfs(
    out: &Path,
    p: &GuestPieces,
    libs: &[PathBuf],
    tree: &[(PathBuf, String)],
) -> Result<(), SandboxError> {
    let runtime_at = p.runtime.1.trim_start_matches('/').to_string();
    let mut files: Vec<(String, PathBuf, u32)> = vec![
        ("init".into(), p.agent.clone(), 0o755),
        (runtime_at, p.runtime.0.clone(), 0o755),
    ];
    for (host, inside) in tree {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(host)
            .map_err(|e| err(format!("{}: {e}", host.display())))?
            .permissions()
            .mode()
            & 0o755;
        files.push((inside.clone(), host.clone(), mode));
    }
    for lib in libs {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push((inside, lib.clone(), 0o755));
    }
    let mut named = Vec::new();
    for m in &p.modules {
        let name = m
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| err(format!("module {} has no name", m.display())))?
            .to_string();
        let bytes = std::fs::read(m).map_err(|e| err(format!("{}: {e}", m.display())))?;
        named.push((name.clone(), module_depends(&bytes)));
        files.push((format!("lib/modules/{name}.ko"), m.clone(), 0o644));
    }
    let mut order = String::new();
    for name in load_order(&named)? {
        order.push_str(&name);
        order.push('\n');
    }

    let mut w =
        Newc::new(std::fs::File::create(out).map_err(|e| err(format!("{}: {e}", out.display())))?);
    let io = |e: std::io::Error| err(format!("writing {}: {e}", out.display()));
    let mut dirs: Vec<String> = [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "run",
        "sys",
        "tmp",
        "work",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (inside, _, _) in &files {
        let mut parent = Path::new(inside).parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(d.to_string_lossy().into_owned());
            parent = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        w.entry(d, 0o040755, &[]).map_err(io)?;
    }
    // The kernel opens it as init's stdin, stdout and stderr: the agent's messages reach the
    // serial console when there is one.
    w.node("dev/console", 0o020600, (5, 1)).map_err(io)?;
    for (inside, host, mode) in &files {
        // Follows symlinks: the guest gets plain files at the paths the loader asks for.
        let bytes = std::fs::read(host).map_err(|e| err(format!("{}: {e}", host.display())))?;
        w.entry(inside, 0o100000 | mode, &bytes).map_err(io)?;
    }
    w.entry("lib/modules/order", 0o100644, order.as_bytes())
        .map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

/// The `depends=` field of a module's `.modinfo` (the modules it needs loaded first).
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The modules in an order where each comes after those it depends on; a dependency that is
/// not among them is an error (the kernel would refuse the module: "Unknown symbol").
fn load_order(modules: &[(String, Vec<String>)]) -> Result<Vec<String>, SandboxError> {
    let mut out: Vec<String> = Vec::new();
    let mut left: Vec<&(String, Vec<String>)> = modules.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            let (name, deps) = left[i];
            if let Some(d) = deps.iter().find(|d| !modules.iter().any(|(n, _)| n == *d)) {
                return Err(err(format!(
                    "module {name} needs {d}, which is not in the image"
                )));
            }
            if deps.iter().all(|d| out.contains(d)) {
                out.push(name.clone());
                left.remove(i);
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            return Err(err("the modules depend on each other in a cycle".into()));
        }
    }
    Ok(out)
}

/// A `newc` (SVR4, no CRC) cpio writer: what the kernel unpacks as an initramfs.
struct Newc<W: Write> {
    w: std::io::BufWriter<W>,
    ino: u32,
    written: u64,
}

impl<W: Write> Newc<W> {
    fn new(w: W) -> Self {
        Self {
            w: std::io::BufWriter::new(w),
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.header(name, mode, data, (0, 0))
    }

    /// A device node (`mode` with its type bits) for device `(major, minor)`.
    fn node(&mut self, name: &str, mode: u32, dev: (u32, u32)) -> std::io::Result<()> {
        self.header(name, mode, &[], dev)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is over 4 GiB")))?;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same pieces give the same bytes
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0,
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_what_they_depend_on() {
        let ko =
            |deps: &str| format!("xx\0license=GPL\0depends={deps}\0vermagic=6.1\0").into_bytes();
        assert_eq!(module_depends(&ko("virtio_ring")), vec!["virtio_ring"]);
        assert!(module_depends(&ko("")).is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
        let m = |n: &str, d: &[&str]| {
            (
                n.to_string(),
                d.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        // As 6.1.0-57 ships them: virtio needs virtio_ring (6.1.0-50's did not).
        let got = load_order(&[
            m("virtio", &["virtio_ring"]),
            m("virtio_ring", &[]),
            m("virtio_mmio", &["virtio", "virtio_ring"]),
            m(
                "vmw_vsock_virtio_transport",
                &[
                    "virtio",
                    "vmw_vsock_virtio_transport_common",
                    "virtio_ring",
                    "vsock",
                ],
            ),
            m("vsock", &[]),
            m("vmw_vsock_virtio_transport_common", &["vsock"]),
        ])
        .unwrap();
        let pos = |n: &str| got.iter().position(|g| g == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_mmio"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
        let e = load_order(&[m("a", &["b"])]).unwrap_err().to_string();
        assert!(e.contains("needs b"), "{e}");
        let e = load_order(&[m("a", &["b"]), m("b", &["a"])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn a_tree_keeps_its_files_and_links_within_it_only() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("lib/python3");
        std::fs::create_dir_all(tree.join("asyncio")).unwrap();
        std::fs::write(tree.join("asyncio/base.py"), "x").unwrap();
        std::fs::write(d.path().join("secret"), "host only").unwrap();
        std::os::unix::fs::symlink("asyncio/base.py", tree.join("alias.py")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), tree.join("out.py")).unwrap();
        std::os::unix::fs::symlink("/nowhere", tree.join("dangling.py")).unwrap();
        std::os::unix::fs::symlink("asyncio", tree.join("dirlink")).unwrap();
        let p = GuestPieces {
            agent: "/bin/sh".into(),
            runtime: ("/bin/sh".into(), "/bin/python3"),
            trees: vec![tree.clone()],
            lib_users: Vec::new(),
            modules: Vec::new(),
        };
        let inside: Vec<String> = p
            .tree_files()
            .unwrap()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        let at = |rel: &str| {
            tree.join(rel)
                .to_str()
                .unwrap()
                .trim_start_matches('/')
                .to_string()
        };
        assert_eq!(inside, vec![at("alias.py"), at("asyncio/base.py")]);
    }

    #[test]
    fn the_archive_is_newc_that_cpio_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Newc::new(std::fs::File::create(d.path().join("a.cpio")).unwrap());
        w.entry("work", 0o040755, &[]).unwrap();
        w.entry("work/x.txt", 0o100644, b"hello").unwrap();
        w.entry("init", 0o100755, b"#!").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(d.path().join("a.cpio")).unwrap();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let Ok(out) = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::fs::File::open(d.path().join("a.cpio")).unwrap())
            .output()
        else {
            eprintln!("SKIPPED the read-back: no cpio binary");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .collect::<Vec<_>>(),
            vec!["work", "work/x.txt", "init"]
        );
    }
}
