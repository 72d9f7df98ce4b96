//! No root in an instance of either backend (issue 11): when the runner is root, every `none`
//! instance runs as the configured unprivileged uid/gid, with no supplementary groups and no
//! capabilities, and every `container` instance's processes (bwrap, init, Deno) are that uid on
//! the host (65534 inside is mapped to it, not to 0). Attacked from inside by a bundle with `ffi`
//! (tests/bundles/identity.js: the kernel asked directly) and checked from outside in
//! `/proc/<pid>/status`. Real Deno, real bwrap, real Landlock and seccomp; the ids are not the
//! default ones, so the setting is seen to arrive.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrund_sandbox::{DenoBinary, Instance, NoneExecutor, RunAs};
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
    env_in(test, Mode::None).await
}

/// An environment of `mode` whose executor runs instances as [`RUN_AS`] on the host.
async fn env_in(test: &str, mode: Mode) -> Option<Env> {
    let mut env = Env::new(test, mode).await?;
    env.exec = match mode {
        Mode::None => Arc::new(
            NoneExecutor::new(DenoBinary::locate(Some(&common::deno_path())).unwrap())
                .with_cgroups(env.mgr.clone())
                .with_run_as(RUN_AS),
        ),
        Mode::Container => Arc::new(env.container_as(RUN_AS).await),
        Mode::MicroVm => panic!("the microVM's host identity is checked in microvm.rs"),
    };
    Some(env)
}

/// `/proc/<pid>/status` of `pid` and of every process descended from it, as the host sees them.
fn statuses_from(pid: u32) -> Vec<(u32, String)> {
    let mut all: Vec<(u32, u32, String)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let ppid = status_field(&status, "PPid").parse().unwrap();
        all.push((p, ppid, status));
    }
    let mut family = vec![pid];
    let mut grew = true;
    while grew {
        grew = false;
        for (p, ppid, _) in &all {
            if family.contains(ppid) && !family.contains(p) {
                family.push(*p);
                grew = true;
            }
        }
    }
    all.into_iter()
        .filter(|(p, _, _)| family.contains(p))
        .map(|(p, _, s)| (p, s))
        .collect()
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
/// Deno's flags allow it (and in a container it is bound in); only the host uid, which is not
/// root and has no CAP_DAC_OVERRIDE, keeps it closed. A file beside it that any user may read
/// opens, so the refusal is the file's mode, not the grant.
#[tokio::test]
async fn a_root_only_file_stays_closed_where_landlock_allows_reading_none() {
    root_only_file_stays_closed(Mode::None).await;
}

#[tokio::test]
async fn a_root_only_file_stays_closed_where_landlock_allows_reading_container() {
    root_only_file_stays_closed(Mode::Container).await;
}

async fn root_only_file_stays_closed(mode: Mode) {
    let Some(env) = env_in(&format!("nr-dac-{mode:?}"), mode).await else {
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
    let Some((_env, inst, work, deno)) = started_owning_its_dirs(Mode::None).await else {
        return;
    };
    for d in [work.parent().unwrap(), deno.parent().unwrap()] {
        assert_eq!(owner_mode(d), (0, RUN_AS.gid, 0o710), "{}", d.display());
    }
    let shim = work.parent().unwrap().join("at-run-exec.ts");
    assert_eq!(owner_mode(&shim), (0, 0, 0o644));
    inst.shutdown().await;
}

/// An instance of `mode` with a `write` path, started; its work dir, DENO_DIR, data dir and the
/// write dirs created for it are checked to be [`RUN_AS`]'s, 0700. Returns the environment, the
/// instance, its work dir and its DENO_DIR.
async fn started_owning_its_dirs(mode: Mode) -> Option<(Env, Arc<dyn Instance>, PathBuf, PathBuf)> {
    let env = env_in(&format!("nr-dirs-{mode:?}"), mode).await?;
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
    Some((env, inst, work, deno))
}

/// A data dir whose parents the instance's uid cannot pass (here a root 0700 dir, as `/root` is
/// for root's default data dir) fails the start with an error naming the setting, not an
/// obscure runtime failure (nor, in a container, bwrap's own).
#[tokio::test]
async fn an_unreachable_data_dir_fails_the_start_plainly() {
    unreachable_data_dir_fails_plainly(Mode::None).await;
}

#[tokio::test]
async fn an_unreachable_data_dir_fails_a_container_start_plainly() {
    unreachable_data_dir_fails_plainly(Mode::Container).await;
}

async fn unreachable_data_dir_fails_plainly(mode: Mode) {
    let Some(env) = env_in(&format!("nr-reach-{mode:?}"), mode).await else {
        return;
    };
    let closed = env.root.join("closed");
    std::fs::create_dir_all(closed.join("sub/data/keys")).unwrap();
    chmod(&closed, 0o700);
    let mut spec = identity_spec(&env, "reach");
    spec.data_dir = closed.join("sub/data");
    // What a container binds from the data dir (`none` needs the data dir itself).
    spec.permissions.read = vec!["keys".into()];
    let err = match env.exec.warm(spec).await {
        Ok(_) => panic!("an instance started with a data dir its user cannot reach"),
        Err(e) => e,
    };
    assert_eq!(err.code(), "StartFailed");
    assert!(err.to_string().contains("sandbox.run_as_uid"), "{err}");
    assert!(!err.to_string().contains("/tmp"), "a host path in: {err}");
}

#[tokio::test]
async fn a_container_instance_is_the_configured_uid_on_the_host() {
    let Some(env) = env_in("nr-ctr-id", Mode::Container).await else {
        return;
    };
    let inst = env.warm(identity_spec(&env, "ctr-who")).await;
    let v = call_json(&*inst, get("whoami", "/")).await.unwrap();
    for k in ["uid", "euid", "gid", "egid"] {
        assert_eq!(v[k], 65534, "{k} inside: {v}");
    }
    for set in ["effective", "permitted", "bounding", "ambient"] {
        assert_eq!(v[set], "0", "capability set {set}: {v}");
    }

    let pid = inst.stats().pid.expect("a pid");
    let procs = statuses_from(pid);
    let names: Vec<&str> = procs.iter().map(|(_, s)| status_field(s, "Name")).collect();
    assert!(procs.len() >= 3, "bwrap, init and Deno expected: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("deno")), "{names:?}");
    let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    for (p, status) in &procs {
        let name = status_field(status, "Name");
        assert_eq!(status_field(status, "Uid"), ids(RUN_AS.uid), "{name} ({p})");
        assert_eq!(status_field(status, "Gid"), ids(RUN_AS.gid), "{name} ({p})");
        assert_eq!(status_field(status, "Groups"), "", "{name} ({p})");
        assert_eq!(status_field(status, "NoNewPrivs"), "1", "{name} ({p})");
    }
    // Those in the host's user namespace (bwrap's outer process) hold no capability there.
    let outer = &procs.iter().find(|(p, _)| *p == pid).unwrap().1;
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(outer, cap), "0000000000000000", "bwrap {cap}");
    }

    let e = env.exec.enforcement();
    let e = e.iter().find(|e| e.limit == "unprivileged").unwrap();
    assert!(
        e.enforced && e.how.contains("host uid 64123 gid 64124"),
        "{e:?}"
    );
    inst.shutdown().await;
}

/// A container instance owns what bwrap binds read-write (work dir, DENO_DIR, data dir, created
/// write dirs: its uid's, 0700) and the egress socket it connects to (tests/egress.rs fetches
/// through it), and reads its init config.
#[tokio::test]
async fn a_container_instance_owns_its_dirs_and_its_egress_socket() {
    let Some((_env, inst, work, _)) = started_owning_its_dirs(Mode::Container).await else {
        return;
    };
    let (uid, gid, _) = owner_mode(&work.join("egress.sock"));
    assert_eq!((uid, gid), (RUN_AS.uid, RUN_AS.gid), "egress.sock");
    let (_, _, mode) = owner_mode(&work.join("init.json"));
    assert_eq!(mode, 0o644, "init.json");
    inst.shutdown().await;
}
