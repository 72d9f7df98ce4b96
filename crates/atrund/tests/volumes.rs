//! Author volumes (`tenants.data_volumes`, docs/limits.md) through a real `at-rund dev` as root:
//! a bundle that writes file after file meets `ENOSPC` at its author's cap within the call, in
//! both isolation modes; the host sees neither the mount nor the files outside the image; the
//! data survives a restart, a loop device never outlives its runner (even one killed with
//! SIGKILL), data written before volumes were on moves into the volume, and a grown cap grows it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{get, Daemon};
use serde_json::{json, Value};

const CODE: &str = r#"
export const fill = {
  method: "POST",
  handler: async ({ mib = 1, files = 1 } = {}) => {
    await Deno.mkdir("out", { recursive: true });
    const chunk = new Uint8Array(1024 * 1024);
    let wrote = 0;
    try {
      for (let f = 0; f < files; f++) {
        const file = await Deno.open(`out/${crypto.randomUUID()}`, { write: true, createNew: true });
        try {
          for (let i = 0; i < mib; i++) { await file.write(chunk); wrote += chunk.length; }
        } finally { file.close(); }
      }
      return { wrote };
    } catch (e) {
      return { wrote, error: String(e.message) };
    }
  },
};
export const used = {
  method: "GET",
  handler: async () => {
    let files = 0, bytes = 0;
    for await (const e of Deno.readDir("out")) { files++; bytes += (await Deno.stat(`out/${e.name}`)).size; }
    return { files, bytes };
  },
};
"#;

const MIB: u64 = 1024 * 1024;

/// A bundle folder and a data dir that outlive the runners started on them.
struct Site {
    bundle: tempfile::TempDir,
    data: tempfile::TempDir,
    deno: PathBuf,
}

impl Site {
    fn new() -> Option<Site> {
        let deno = atrund_testnet::deno_path()?;
        atrund_testnet::root("author volumes need root (loop mounts)")?;
        let bundle = tempfile::tempdir().expect("temp dir");
        std::fs::write(bundle.path().join("main.js"), CODE).expect("code");
        let manifest = json!({
            "endpoints": [{ "name": "fill", "method": "POST" }, { "name": "used", "method": "GET" }],
            "permissions": { "read": ["out"], "write": ["out"] }
        });
        std::fs::write(bundle.path().join("manifest.json"), manifest.to_string())
            .expect("manifest");
        Some(Site {
            bundle,
            data: tempfile::tempdir().expect("temp dir"),
            deno,
        })
    }

    fn start(&self, isolation: &str, volumes: &str, cap: u64) -> Daemon {
        let mut cmd = common::command(&self.deno, self.data.path());
        cmd.args([
            "dev",
            self.bundle.path().to_str().expect("utf-8"),
            "--name",
            "v",
        ])
        .env("ATRUND_ISOLATION", isolation)
        .env("ATRUND_TENANTS_DATA_VOLUMES", volumes)
        .env("ATRUND_TENANTS_MAX_DATA_BYTES_PER_AUTHOR", cap.to_string());
        Daemon::spawn(&mut cmd, false)
    }

    fn image(&self) -> PathBuf {
        self.data.path().join("volumes/local.ext4")
    }

    fn author_dir(&self) -> PathBuf {
        self.data.path().join("data/local")
    }
}

async fn fill(d: &Daemon, mib: u64, files: u64) -> Value {
    let r = reqwest::Client::new()
        .post(d.url("/bundle/local/v/latest/fill"))
        .json(&json!({ "mib": mib, "files": files }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn used(d: &Daemon) -> Value {
    let (s, b) = get(&d.url("/bundle/local/v/latest/used")).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Loop devices whose backing file is `image`.
fn loops_of(image: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = std::fs::read_to_string(&backing) {
            if Path::new(b.trim()) == image {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

async fn no_loop_left(image: &Path, why: &str) {
    for _ in 0..100 {
        if loops_of(image).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{why}: loop devices still attached: {:?}", loops_of(image));
}

async fn fills_to_enospc(isolation: &str) {
    let Some(site) = Site::new() else { return };
    let cap = 32 * MIB;
    let mut d = site.start(isolation, "loop", cap);
    let (_, describe) = get(&d.url("/xrpc/dev.atrund.describeRunner")).await;
    let line = describe["enforcement"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["limit"] == "dataQuota"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(line["enforced"], true, "{isolation}: {describe}");

    // 80 MiB asked for; the volume ends it within this one call.
    let v = fill(&d, 8, 10).await;
    let wrote = v["wrote"].as_u64().expect("wrote");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("os error 28")),
        "{isolation}: {v}"
    );
    assert!(
        (16 * MIB..cap).contains(&wrote),
        "{isolation}: wrote {wrote}"
    );
    // Full stays full; and the soft measurement now refuses writing calls early.
    let again = fill(&d, 1, 1).await;
    assert!(again["error"].is_string(), "{isolation}: {again}");
    // The host: the image holds the files and uses no more than the cap; the author's dir
    // seen from outside the runner's mount namespace is the empty mount point.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(site.image()).expect("image");
    assert_eq!(meta.len(), cap);
    assert!(meta.blocks() * 512 <= cap, "{}", meta.blocks() * 512);
    assert_eq!(
        std::fs::read_dir(site.author_dir()).expect("dir").count(),
        0,
        "the mount is the runner's own"
    );
    assert_eq!(loops_of(&site.image()).len(), 1);
    let before = used(&d).await;
    d.stop();
    no_loop_left(&site.image(), "after SIGTERM").await;
    owners_inside(&site.image(), isolation);

    // Restarted: the same files; killed: no loop device left either.
    let d = site.start(isolation, "loop", cap);
    assert_eq!(used(&d).await, before, "{isolation}");
    let pid = d.pid();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    no_loop_left(&site.image(), "after SIGKILL").await;
    drop(d);
}

/// Inside the stopped runner's image (mounted read-only here): the volume's root is the
/// runner's, passable by the instances' group only (0710), and what the bundle wrote is the
/// instances' uid's (nobody by default), as without volumes.
fn owners_inside(image: &Path, isolation: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let at = tempfile::tempdir().expect("temp dir");
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop,ro,noexec,nosuid,nodev"])
        .arg(image)
        .arg(at.path())
        .status()
        .expect("mount");
    assert!(mounted.success());
    let seen = (|| {
        let root = std::fs::metadata(at.path()).ok()?;
        let bundle = std::fs::metadata(at.path().join("v/out")).ok()?;
        let file = std::fs::read_dir(at.path().join("v/out"))
            .ok()?
            .next()?
            .ok()?;
        let file = file.metadata().ok()?;
        Some((
            (root.uid(), root.gid(), root.permissions().mode() & 0o7777),
            bundle.uid(),
            file.uid(),
        ))
    })();
    let lost_found = at.path().join("lost+found").exists();
    let _ = std::process::Command::new("umount").arg(at.path()).status();
    assert_eq!(
        seen,
        Some(((0, 65534, 0o710), 65534, 65534)),
        "{isolation}: owners inside the volume"
    );
    assert!(!lost_found, "{isolation}: lost+found is not the author's");
}

#[tokio::test(flavor = "multi_thread")]
async fn none_a_bundle_filling_its_volume_gets_enospc_within_the_call() {
    fills_to_enospc("none").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_a_bundle_filling_its_volume_gets_enospc_within_the_call() {
    fills_to_enospc("container").await;
}

/// Data written while volumes were off moves into the volume when they are turned on (nothing
/// is lost, nothing stays behind on the host's file system), and a larger cap grows the volume
/// with the files in it.
#[tokio::test(flavor = "multi_thread")]
async fn existing_data_moves_into_the_volume_and_a_larger_cap_grows_it() {
    let Some(site) = Site::new() else { return };
    let mut d = site.start("none", "off", 32 * MIB);
    assert_eq!(fill(&d, 1, 3).await, json!({ "wrote": 3 * MIB }));
    d.stop();
    let on_host = std::fs::read_dir(site.author_dir().join("v/out"))
        .expect("files on the host")
        .count();
    assert_eq!(on_host, 3);

    let mut d = site.start("none", "loop", 32 * MIB);
    assert_eq!(used(&d).await, json!({ "files": 3, "bytes": 3 * MIB }));
    assert_eq!(
        std::fs::read_dir(site.author_dir()).expect("dir").count(),
        0,
        "moved into the volume"
    );
    let names: Vec<String> = std::fs::read_dir(site.data.path().join("volumes"))
        .expect("volumes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["local.ext4".to_string()]);
    d.stop();

    let d = site.start("none", "loop", 64 * MIB);
    assert_eq!(used(&d).await, json!({ "files": 3, "bytes": 3 * MIB }));
    assert_eq!(
        std::fs::metadata(site.image()).expect("image").len(),
        64 * MIB
    );
    let v = fill(&d, 8, 5).await;
    assert_eq!(v, json!({ "wrote": 40 * MIB }), "room of the grown volume");
    drop(d);
}
