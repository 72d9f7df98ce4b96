//! No root inside a `none` instance (issue 11): when the runner is root, every instance runs as
//! the configured unprivileged uid/gid, with no supplementary groups and no capabilities. Attacked
//! from inside by a bundle with `ffi` (tests/bundles/identity.js: the kernel asked directly) and
//! checked from outside in `/proc/<pid>/status`. Real Deno, real Landlock and seccomp; the ids are
//! not the default ones, so the setting is seen to arrive.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrund_sandbox::{DenoBinary, NoneExecutor, RunAs};
use common::{bundle, call_json, get, q, Env, Mode};
use nix::libc;

const RUN_AS: RunAs = RunAs {
    uid: 64123,
    gid: 64124,
};
const EPERM: i64 = 1;
const EACCES: i64 = 13;

/// A `none` environment whose executor runs instances as [`RUN_AS`].
async fn env(test: &str) -> Option<Env> {
    let mut env = Env::new(test, Mode::None).await?;
    let path = std::env::var_os("ATRUND_TEST_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("tools/deno/node_modules/deno/deno"));
    let exec = NoneExecutor::new(DenoBinary::locate(Some(&path)).unwrap())
        .with_cgroups(env.mgr.clone())
        .with_run_as(RUN_AS);
    env.exec = Arc::new(exec);
    Some(env)
}

fn identity_spec(env: &Env, id: &str) -> atrund_sandbox::InstanceSpec {
    let mut spec = env.spec(id, &bundle("identity.js"));
    spec.permissions.ffi = true;
    spec
}

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name} missing from /proc/<pid>/status"))
        .trim()
}

#[tokio::test]
async fn a_none_instance_runs_as_the_configured_ids_with_no_capabilities() {
    let Some(env) = env("nr-id").await else {
        return;
    };
    let inst = env.warm(identity_spec(&env, "who")).await;
    let v = call_json(&*inst, get("whoami", "/")).await.unwrap();
    for (k, want) in [
        ("uid", RUN_AS.uid),
        ("euid", RUN_AS.uid),
        ("gid", RUN_AS.gid),
        ("egid", RUN_AS.gid),
    ] {
        assert_eq!(v[k], want, "{k}: {v}");
    }
    assert_eq!(v["groups"], 0, "supplementary groups: {v}");
    assert_eq!(v["capget"], 0, "{v}");
    for set in [
        "effective",
        "permitted",
        "inheritable",
        "bounding",
        "ambient",
    ] {
        assert_eq!(v[set], "0", "capability set {set}: {v}");
    }
    assert_eq!(v["noNewPrivs"], 1, "{v}");

    // The same from outside, as the kernel reports it.
    let pid = inst.stats().pid.expect("a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(status_field(&status, "Uid"), ids(RUN_AS.uid));
    assert_eq!(status_field(&status, "Gid"), ids(RUN_AS.gid));
    assert_eq!(status_field(&status, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");

    let e = env.exec.enforcement();
    let e = e.iter().find(|e| e.limit == "unprivileged").unwrap();
    assert!(e.enforced && e.how.contains("uid 64123 gid 64124"), "{e:?}");
    inst.shutdown().await;
}

#[tokio::test]
async fn a_none_instance_cannot_become_root_again() {
    let Some(env) = env("nr-setuid").await else {
        return;
    };
    let inst = env.warm(identity_spec(&env, "setuid")).await;
    let attempts: [(&str, i64, [i64; 3]); 5] = [
        ("setuid(0)", libc::SYS_setuid, [0, 0, 0]),
        ("setresuid(0, 0, 0)", libc::SYS_setresuid, [0, 0, 0]),
        ("setgid(0)", libc::SYS_setgid, [0, 0, 0]),
        ("setresgid(0, 0, 0)", libc::SYS_setresgid, [0, 0, 0]),
        // setgroups(0, NULL): would drop groups, but needs CAP_SETGID like any other list.
        ("setgroups(0, NULL)", libc::SYS_setgroups, [0, 0, 0]),
    ];
    for (what, nr, [a0, a1, a2]) in attempts {
        let (nr, a0, a1, a2) = (
            nr.to_string(),
            a0.to_string(),
            a1.to_string(),
            a2.to_string(),
        );
        let v = call_json(
            &*inst,
            q("raw", &[("nr", &nr), ("a0", &a0), ("a1", &a1), ("a2", &a2)]),
        )
        .await
        .unwrap();
        assert_eq!(v["errno"], EPERM, "{what}: {v}");
    }
    let v = call_json(&*inst, get("whoami", "/")).await.unwrap();
    assert_eq!(v["euid"], RUN_AS.uid, "{v}");
    inst.shutdown().await;
}

/// A root-owned 0600 file inside a path the manifest declares readable: Landlock allows it,
/// Deno's flags allow it; only the missing CAP_DAC_OVERRIDE (no root) keeps it closed. A file
/// beside it that any user may read opens, so the refusal is the file's mode, not the grant.
#[tokio::test]
async fn a_root_only_file_stays_closed_where_landlock_allows_reading() {
    let Some(env) = env("nr-dac").await else {
        return;
    };
    let shared = env.root.join("data/keys");
    std::fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o755);
    std::fs::write(shared.join("root-only"), "ROOT-ONLY").unwrap();
    chmod(shared.join("root-only"), 0o600);
    std::fs::write(shared.join("public"), "public").unwrap();
    chmod(shared.join("public"), 0o644);
    let mut spec = identity_spec(&env, "dac");
    spec.permissions.read = vec!["keys".into()];
    let inst = env.warm(spec).await;
    let open = |p: &'static str| call_json(&*inst, q("open", &[("path", p)]));
    assert_eq!(open("keys/public").await.unwrap()["errno"], 0);
    let v = open("keys/root-only").await.unwrap();
    assert_eq!(v["errno"], EACCES, "a root-only file opened: {v}");
    inst.shutdown().await;
}

fn chmod(p: impl AsRef<Path>, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// What the instance owns (its work dir, DENO_DIR, data dir and the write dirs created for it)
/// is its uid's, 0700; the dirs above them are root's, passable but not listable by its group
/// alone (0710); the shim is public code (0644) in a dir it cannot write.
#[tokio::test]
async fn an_instance_owns_its_dirs_and_only_its_group_passes_above_them() {
    let Some(env) = env("nr-dirs").await else {
        return;
    };
    let mut spec = identity_spec(&env, "dirs");
    spec.permissions.write = vec!["out/x".into()];
    let (work, deno, data) = (
        spec.work_dir.clone(),
        spec.deno_dir.clone(),
        spec.data_dir.clone(),
    );
    let inst = env.warm(spec).await;
    let mine = (RUN_AS.uid, RUN_AS.gid, 0o700);
    for d in [
        work.clone(),
        deno.clone(),
        data.clone(),
        data.join("out"),
        data.join("out/x"),
    ] {
        assert_eq!(owner_mode(&d), mine, "{}", d.display());
    }
    for d in [work.parent().unwrap(), deno.parent().unwrap()] {
        assert_eq!(owner_mode(d), (0, RUN_AS.gid, 0o710), "{}", d.display());
    }
    let shim = work.parent().unwrap().join("at-run-exec.ts");
    assert_eq!(owner_mode(&shim), (0, 0, 0o644));
    inst.shutdown().await;
}

/// A data dir whose parents the instance's uid cannot pass (here a root 0700 dir, as `/root` is
/// for root's default data dir) fails the start with an error naming the setting, not an
/// obscure runtime failure.
#[tokio::test]
async fn an_unreachable_data_dir_fails_the_start_plainly() {
    let Some(env) = env("nr-reach").await else {
        return;
    };
    let closed = env.root.join("closed");
    std::fs::create_dir_all(closed.join("sub")).unwrap();
    chmod(&closed, 0o700);
    let mut spec = identity_spec(&env, "reach");
    spec.data_dir = closed.join("sub/data");
    let err = match env.exec.warm(spec).await {
        Ok(_) => panic!("an instance started with a data dir its user cannot reach"),
        Err(e) => e,
    };
    assert_eq!(err.code(), "StartFailed");
    assert!(err.to_string().contains("sandbox.run_as_uid"), "{err}");
    assert!(!err.to_string().contains("/tmp"), "a host path in: {err}");
}
