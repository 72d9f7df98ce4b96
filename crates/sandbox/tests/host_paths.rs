//! What the host touches on an instance's behalf, attacked by the instance (issue 11): the shim
//! file and the socket the host writes and connects to, the declared data paths it grants or
//! binds, the programs Landlock lets it execute, the files it may grow, the modes of the dirs
//! it creates, and what a `none` instance learns about host paths. Real Deno, real Landlock,
//! real bwrap; the bundle is tests/bundles/host.js.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{bundle, call_json, q, Env, Mode};

const VICTIM_KEY: &str = "RUNNER-KEY-DO-NOT-TOUCH";

fn host_bundle() -> PathBuf {
    bundle("host.js")
}

/// Runs `argv` in the instance (the manifest must allow `argv[0]`).
async fn run(inst: &dyn atrund_sandbox::Instance, argv: &[&str]) -> serde_json::Value {
    let argv = serde_json::to_string(argv).unwrap();
    call_json(inst, q("run", &[("argv", &argv)])).await.unwrap()
}

/// A bundle allowed `run` plants symlinks where the host writes the shim's temp file and reads
/// the shim (the names are predictable: `at-run-exec.tmp-<next instance id>`), pointing at a
/// file standing for the runner's key. Starting the next instance must leave the key alone.
#[tokio::test]
async fn a_bundle_cannot_make_the_host_write_through_a_planted_symlink() {
    let Some(env) = Env::new("plantshim", Mode::None).await else {
        return;
    };
    let victim = env.root.join("victim.key");
    std::fs::write(&victim, VICTIM_KEY).unwrap();
    let mut spec = env.spec("plant-a", &host_bundle());
    spec.permissions.run = vec!["/usr/bin/ln".into()];
    let deno_dir = spec.deno_dir.clone();
    let a = env.warm(spec.clone()).await;
    let v = victim.to_str().unwrap();
    for name in ["at-run-exec.ts", "at-run-exec.tmp-plant-b"] {
        let link = deno_dir.join(name);
        let r = run(&*a, &["/usr/bin/ln", "-sfn", v, link.to_str().unwrap()]).await;
        assert_eq!(r["ok"]["code"], 0, "the bundle could not plant {name}: {r}");
    }
    let b = env.exec.warm(env.spec("plant-b", &host_bundle())).await;
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        VICTIM_KEY,
        "the host wrote through a symlink the bundle planted"
    );
    let b = b.expect("the next instance starts");
    common::call_json(&*b, q("slow", &[("ms", "1")]))
        .await
        .unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// A service on a Unix socket outside the sandbox that counts its connections.
fn victim_socket(path: &Path) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = br#"{"victim":true}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    (n, task)
}

/// A bundle allowed `ffi` replaces its own socket with a symlink to another service's socket;
/// the host's next new connection must not reach that service.
async fn socket_swap(mode: Mode) {
    let Some(env) = Env::new(&format!("sockswap{mode:?}"), mode).await else {
        return;
    };
    let victim = env.root.join("victim.sock");
    let (accepted, server) = victim_socket(&victim);
    let mut spec = env.spec("sockswap", &host_bundle());
    spec.permissions.ffi = true;
    let socket_inside = match mode {
        Mode::None => spec.work_dir.join("rpc.sock"),
        Mode::Container => PathBuf::from("/work/rpc.sock"),
        Mode::MicroVm => panic!("a guest has no name in the host's work dir to swap"),
    };
    let inst = env.warm(spec).await;
    let r = call_json(
        &*inst,
        q(
            "plantSymlink",
            &[
                ("target", victim.to_str().unwrap()),
                ("link", socket_inside.to_str().unwrap()),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r["rc"], 0, "the bundle could not swap its socket: {r}");
    // The kept connection is busy with the slow call, so the second one needs a new connection.
    let slow = call_json(&*inst, q("slow", &[("ms", "500")]));
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        call_json(&*inst, q("slow", &[("ms", "1")])).await
    };
    let (s, o) = tokio::join!(slow, other);
    assert_eq!(s.unwrap()["ok"], "slow");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the host followed the planted socket symlink (second call: {o:?})"
    );
    inst.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn calls_never_follow_a_swapped_socket_none() {
    socket_swap(Mode::None).await;
}

#[tokio::test]
async fn calls_never_follow_a_swapped_socket_container() {
    socket_swap(Mode::Container).await;
}

/// While instances of a bundle start, a process that can write its data dir swaps the declared
/// write dir `out` for a symlink to a host dir and back, as fast as the kernel allows
/// (RENAME_EXCHANGE; a stand-in for a sibling instance allowed `run`). No start may grant or
/// bind the host dir: each either starts on the real dir or is refused.
async fn data_dir_swap(mode: Mode) {
    let Some(env) = Env::new(&format!("dataswap{mode:?}"), mode).await else {
        return;
    };
    let outside = env.root.join("runner-state");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), VICTIM_KEY).unwrap();
    let data = env.root.join("data");
    std::fs::create_dir_all(data.join("out")).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("out.swap")).unwrap();
    let (mut started, mut refused) = (0, 0);
    // Until ten instances started on the swapped path (or 80 tries): before the fix, about one
    // start in four was granted the host dir.
    for i in 0..80 {
        if started >= 10 {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (stop, data) = (stop.clone(), data.clone());
            std::thread::spawn(move || {
                let exchange = || {
                    nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        &data.join("out"),
                        nix::fcntl::AT_FDCWD,
                        &data.join("out.swap"),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .unwrap()
                };
                while !stop.load(Ordering::Relaxed) {
                    exchange();
                }
                // Leaves `out` a symlink to the host dir: what the instance then reads through it
                // is what Landlock (none) or the bind (container) granted.
                if !data.join("out").is_symlink() {
                    exchange();
                }
            })
        };
        let mut spec = env.spec(&format!("swap{i}"), &host_bundle());
        spec.permissions.write = vec!["out".into()];
        spec.permissions.read = vec!["out".into()];
        let res = env.exec.warm(spec).await;
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        let Ok(inst) = res else {
            refused += 1;
            continue;
        };
        started += 1;
        let v = call_json(
            &*inst,
            q("readMany", &[("path", "out/secret.txt"), ("times", "1")]),
        )
        .await
        .unwrap();
        assert!(
            v["read"].is_null(),
            "start {i}: the instance read the host dir through a swapped data path: {v}"
        );
        inst.shutdown().await;
        // Back to the real dir for the next start.
        if data.join("out").is_symlink() {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &data.join("out"),
                nix::fcntl::AT_FDCWD,
                &data.join("out.swap"),
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .unwrap();
        }
    }
    eprintln!("{mode:?}: {started} starts, {refused} refused while the path was swapped");
    assert!(started > 0, "no start succeeded: nothing was tested");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        VICTIM_KEY
    );
}

#[tokio::test]
async fn a_data_path_swapped_during_start_is_never_granted_none() {
    data_dir_swap(Mode::None).await;
}

#[tokio::test]
async fn a_data_path_swapped_during_start_is_never_granted_container() {
    data_dir_swap(Mode::Container).await;
}

/// `none`: a bundle allowed to run one program (a shell) cannot execute another one, neither a
/// program under /usr/lib nor a copy of one in its own write dir; the allowed one still runs.
#[tokio::test]
async fn run_grants_execute_on_the_declared_program_only() {
    let Some(env) = Env::new("leastexec", Mode::None).await else {
        return;
    };
    let other = "/usr/lib/git-core/git";
    if !Path::new(other).is_file() {
        eprintln!("SKIPPED: {other} is not installed");
        return;
    }
    let mut spec = env.spec("leastexec", &host_bundle());
    spec.permissions.run = vec!["/usr/bin/sh".into()];
    spec.permissions.write = vec!["out".into()];
    let data = spec.data_dir.clone();
    let inst = env.warm(spec).await;
    let r = run(&*inst, &["/usr/bin/sh", "-c", "echo allowed"]).await;
    assert_eq!(r["ok"]["stdout"], "allowed\n", "{r}");
    let r = run(
        &*inst,
        &["/usr/bin/sh", "-c", &format!("{other} --version")],
    )
    .await;
    assert_ne!(
        r["ok"]["code"], 0,
        "another program under /usr/lib ran: {r}"
    );
    assert!(
        r["ok"]["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("Permission denied"),
        "{r}"
    );
    // A copy of a program in the write dir (made here, as a bundle could with FFI writes).
    std::fs::copy(other, data.join("out/copied")).unwrap();
    let copied = data.join("out/copied");
    let r = run(
        &*inst,
        &[
            "/usr/bin/sh",
            "-c",
            &format!("{} --version", copied.display()),
        ],
    )
    .await;
    assert_ne!(r["ok"]["code"], 0, "a program in the write dir ran: {r}");
    inst.shutdown().await;
}

/// A bundle writing one file past the instance's file size limit is stopped with
/// `FileTooLarge`, in both modes; under the limit it writes.
async fn file_size(mode: Mode) {
    let Some(env) = Env::new(&format!("fsize{mode:?}"), mode).await else {
        return;
    };
    let mut spec = env.spec("fsize", &host_bundle());
    spec.permissions.write = vec!["out".into()];
    spec.limits.max_file_bytes = 8 * 1024 * 1024;
    let data = spec.data_dir.clone();
    let inst = env.warm(spec).await;
    let v = call_json(&*inst, q("fill", &[("path", "out/small"), ("mib", "4")]))
        .await
        .unwrap();
    assert_eq!(v["ok"], "written", "{v}");
    let e = call_json(&*inst, q("fill", &[("path", "out/big"), ("mib", "64")]))
        .await
        .unwrap_err();
    assert_eq!(e, "FileTooLarge");
    let big = std::fs::metadata(data.join("out/big")).unwrap().len();
    assert!(big <= 8 * 1024 * 1024, "{big} bytes written");
    inst.shutdown().await;
}

#[tokio::test]
async fn a_file_over_the_size_limit_stops_the_instance_none() {
    file_size(Mode::None).await;
}

#[tokio::test]
async fn a_file_over_the_size_limit_stops_the_instance_container() {
    file_size(Mode::Container).await;
}

/// The declared write folders exist in both modes, and the dirs the host creates for an
/// instance are 0700, whatever the umask; with a root runner (instances as nobody in `none`, bwrap
/// as nobody in `container`) the instance's own dirs are nobody's, 0700, and the author dirs above
/// them root's, passable but not listable for nobody's group alone (0710).
async fn dirs_and_modes(mode: Mode) {
    let Some(env) = Env::new(&format!("modes{mode:?}"), mode).await else {
        return;
    };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o002));
    let mut spec = env.spec("modes", &host_bundle());
    spec.data_dir = env.root.join("data/did_plc_author/b");
    spec.deno_dir = env.root.join("deno/did_plc_author/b");
    spec.permissions.write = vec!["out/deeper".into()];
    let inst = env.warm(spec.clone()).await;
    let v = call_json(&*inst, q("fill", &[("path", "out/deeper/f"), ("mib", "1")]))
        .await
        .unwrap();
    assert_eq!(v["ok"], "written", "{v}");
    for d in [
        spec.work_dir.clone(),
        spec.deno_dir.clone(),
        spec.data_dir.clone(),
        spec.data_dir.join("out"),
        spec.data_dir.join("out/deeper"),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    let above = 0o710;
    for d in [
        env.root.join("data/did_plc_author"),
        env.root.join("deno/did_plc_author"),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, above, "{} is {mode:o}", d.display());
    }
    inst.shutdown().await;
}

#[tokio::test]
async fn write_dirs_exist_and_host_dirs_are_private_none() {
    dirs_and_modes(Mode::None).await;
}

#[tokio::test]
async fn write_dirs_exist_and_host_dirs_are_private_container() {
    dirs_and_modes(Mode::Container).await;
}

/// `none`: what a bundle learns about host paths. The shim (whose frames are in every stack
/// trace) no longer lives in the author's DENO_DIR; what remains visible is asserted too, so a
/// change shows up here and in docs/security.md.
#[tokio::test]
async fn what_a_none_instance_sees_of_host_paths() {
    let Some(env) = Env::new("reveal", Mode::None).await else {
        return;
    };
    let mut spec = env.spec("reveal", &host_bundle());
    spec.data_dir = env.root.join("data/did_plc_author/b");
    spec.deno_dir = env.root.join("deno/did_plc_author/b");
    let inst = env.warm(spec).await;
    let v = call_json(&*inst, q("reveal", &[])).await.unwrap();
    let stack = v["stack"].as_str().unwrap();
    assert!(stack.contains("at-run-exec.ts"), "{v}");
    assert!(
        !stack.contains("did_plc_author"),
        "the shim's frames name the author: {v}"
    );
    // Still visible in `none` mode (documented): the data dir as cwd, the Deno binary's path and
    // the bundle's store path.
    assert!(v["cwd"].as_str().unwrap().contains("did_plc_author"), "{v}");
    assert!(v["execPath"].as_str().unwrap().starts_with('/'), "{v}");
    assert!(v["url"].as_str().unwrap().starts_with("file:///"), "{v}");
    inst.shutdown().await;
}

/// An instance whose data dir cannot be created fails to start with an error that names no
/// host path (callers see it; the log has the path).
#[tokio::test]
async fn start_errors_carry_no_host_paths() {
    for mode in [Mode::None, Mode::Container] {
        let Some(env) = Env::new(&format!("patherr{mode:?}"), mode).await else {
            return;
        };
        let mut spec = env.spec("patherr", &host_bundle());
        spec.data_dir = env.root.join("data/did_plc_author/b");
        std::fs::create_dir_all(env.root.join("data")).unwrap();
        // A file where the author's dir should be.
        std::fs::write(env.root.join("data/did_plc_author"), "").unwrap();
        let e = env.exec.warm(spec).await.err().expect("the start fails");
        let text = e.to_string();
        assert_eq!(e.code(), "StartFailed", "{text}");
        assert!(
            !text.contains(env.root.to_str().unwrap()) && !text.contains("did_plc_author"),
            "{mode:?}: the error names a host path: {text}"
        );
    }
}
