//! No root inside, through the whole daemon (issue 11): a real `at-rund serve` running as root
//! with `isolation = "none"` or `"container"` serves a bundle published to the test PDS, and the
//! instance's process is not root on the host: the bundle reports its ids (`Deno.uid()`, `sys`;
//! in a container the namespace's 65534), the kernel's view of its pid (from `/admin/pool`; in a
//! container bwrap's) shows the configured ids (`sandbox.run_as_uid`/`run_as_gid`) and no
//! capabilities, and the file it writes in its data dir is that uid's, under runner dirs that only
//! its group may pass.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{get, Daemon};
use serde_json::json;

const UID: u32 = 64201;
const GID: u32 = 64202;

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_none_runner_serves_bundles_from_an_unprivileged_process() {
    serves_from_an_unprivileged_process("none", "noroot").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runner_serves_bundles_from_an_unprivileged_host_uid() {
    serves_from_an_unprivileged_process("container", "norootctr").await;
}

async fn serves_from_an_unprivileged_process(isolation: &str, name: &str) {
    let Some(net) = atrund_testnet::shared() else {
        return;
    };
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    if atrund_testnet::root("this test drops from root to an unprivileged user").is_none() {
        return;
    }
    let author = net.create_account(name).await;
    let code = r#"
export const who = { handler: async () => {
  await Deno.writeTextFile("out/mine", "x");
  return { uid: Deno.uid(), gid: Deno.gid(), pid: Deno.pid };
} };
"#;
    let manifest = json!({
        "endpoints": [{"name": "who", "method": "GET"}],
        "permissions": {"sys": true, "write": ["out"]},
    });
    common::deploy(net, &author, code, &manifest, name, "1.0.0").await;

    let data = tempfile::tempdir().unwrap();
    let mut cmd = common::command(&deno, data.path());
    common::use_test_net(&mut cmd, net)
        .arg("serve")
        .env("ATRUND_POLICY", "open")
        .env("ATRUND_ISOLATION", isolation)
        .env("ATRUND_PERMISSIONS_SYS", "true")
        .env("ATRUND_SANDBOX_RUN_AS_UID", UID.to_string())
        .env("ATRUND_SANDBOX_RUN_AS_GID", GID.to_string())
        // The files are looked at from here, outside the runner's mount namespace, where an
        // author volume is not mounted; owners inside volumes: crates/atrund/tests/volumes.rs.
        .env("ATRUND_TENANTS_DATA_VOLUMES", "off")
        .env("ATRUND_POOL_ADMIN_LISTEN", "auto");
    let mut runner = Daemon::spawn(&mut cmd, true);

    let (s, b) = get(&runner.url(&format!("/bundle/{}/{name}/latest/who", author.did))).await;
    assert_eq!(s, 200, "{b}");
    // In a container the ids are the user namespace's (65534), mapped to UID/GID on the host.
    let inside = if isolation == "container" {
        (65534, 65534)
    } else {
        (UID, GID)
    };
    assert_eq!(
        (b["uid"].as_u64(), b["gid"].as_u64()),
        (Some(inside.0.into()), Some(inside.1.into())),
        "{b}"
    );

    let (_, pool) = get(&format!("{}/admin/pool", runner.admin.as_deref().unwrap())).await;
    let pid = pool["instances"][0]["pid"]
        .as_u64()
        .expect("an instance pid");
    if isolation == "none" {
        assert_eq!(b["pid"].as_u64(), Some(pid), "{pool}");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(field("Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    assert_eq!(field("Gid"), format!("{GID}\t{GID}\t{GID}\t{GID}"));
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}");
    }

    let (_, describe) = get(&runner.url("/xrpc/dev.atrund.describeRunner")).await;
    let enforcement = describe.to_string();
    assert!(
        enforcement.contains(&format!("uid {UID} gid {GID}")),
        "describeRunner does not say who instances run as: {describe}"
    );

    // The file the bundle wrote is its uid's; the runner's dirs above are root's, group-passable.
    let written: Vec<_> = walk(&data.path().join("data"))
        .into_iter()
        .filter(|p| p.ends_with("out/mine"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(owner_mode(&written[0]).0, UID);
    for d in [
        data.path().to_path_buf(),
        data.path().join("data"),
        data.path().join("bundles"),
    ] {
        assert_eq!(owner_mode(&d), (0, GID, 0o710), "{}", d.display());
    }
    runner.stop();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A root developer's `at-rund dev` (container isolation) with Deno, at-rund and the bundle
/// folder under a 0700 dir (as `/root` is): the instances' uid can pass none of them, so the
/// runner runs copies of Deno and of itself (the container's PID 1) and serves a copy of the code
/// from the data dir's `staged/`; an edit is served from a new copy. Before,
/// every start failed (`StartFailed`: the instance's user cannot execute the runtime), which is
/// what README command 1 met when the repository was cloned under `/root`.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_dev_runner_serves_code_and_deno_its_instances_cannot_reach() {
    use std::os::unix::fs::PermissionsExt;
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    if atrund_testnet::root("a root dev runner is what this test is about").is_none() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let private_deno = home.path().join("deno");
    if std::fs::hard_link(&deno, &private_deno).is_err() {
        std::fs::copy(&deno, &private_deno).unwrap();
    }
    let dir = home.path().join("hello");
    std::fs::create_dir(&dir).unwrap();
    let code = |greeting: &str| {
        format!("export const greet = {{ method: \"GET\", handler: () => ({{ message: \"{greeting}\" }}) }};\n")
    };
    std::fs::write(dir.join("main.js"), code("one")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        json!({ "endpoints": [{ "name": "greet", "method": "GET" }] }).to_string(),
    )
    .unwrap();
    // at-rund itself too: bwrap (as the instances' uid) opens the container's PID 1 by path.
    let private_atrund = home.path().join("at-rund");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_at-rund"), &private_atrund).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_at-rund"), &private_atrund).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let template = common::command(&private_deno, data.path());
    let mut cmd = std::process::Command::new(&private_atrund);
    cmd.env_clear()
        .envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["dev", dir.to_str().unwrap(), "--name", "h"])
        // Container, not auto: a fallback to none would hide a container that cannot start.
        .env("ATRUND_ISOLATION", "container")
        .env("ATRUND_SANDBOX_RUN_AS_UID", UID.to_string())
        .env("ATRUND_SANDBOX_RUN_AS_GID", GID.to_string());
    let d = Daemon::spawn(&mut cmd, false);
    let url = d.url("/bundle/local/h/latest/greet");
    let (status, body) = get(&url).await;
    assert_eq!((status, &body["message"]), (200, &json!("one")), "{body}");
    // An edit (a later mtime, so the stamps differ at once) is served from a new copy.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(dir.join("main.js"), code("two")).unwrap();
    let (status, body) = get(&url).await;
    assert_eq!((status, &body["message"]), (200, &json!("two")), "{body}");
    let log = d.log();
    assert!(log.contains("running a copy"), "{log}");
    let staged: Vec<String> = std::fs::read_dir(data.path().join("staged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(staged.iter().any(|n| n.starts_with("deno-")), "{staged:?}");
    assert!(
        staged.iter().any(|n| n.starts_with("at-rund-")),
        "{staged:?}"
    );
    // The replaced code's copy is gone; the current one is there.
    assert_eq!(
        staged.iter().filter(|n| n.starts_with("local-")).count(),
        1,
        "{staged:?}"
    );
}
