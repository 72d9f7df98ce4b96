//! `ops/ansible`: ansible-lint (production profile) passes; `ansible-playbook` applies the
//! `at_rund` role to a throwaway Debian rootfs through the `community.general.chroot` connection;
//! a second run and a `--check` run change nothing; the target then holds the built binary, the
//! pinned Deno, bubblewrap, the sandbox user, the data dir and config with their modes, the repo's
//! unit (enabled) and a config at-rund accepts. A changed policy only rewrites the config and asks
//! for a reload, not a restart; a config at-rund refuses is never put in place.
//!
//! The rootfs (`debootstrap --variant=minbase bookworm` with python3, 0.5 to 2.5 min) is made once
//! and cached under the target dir; each run works on a copy. Needs root, ansible-playbook,
//! debootstrap and tools/ansible/.venv (all from `scripts/setup.sh --test`); without them the test
//! is skipped, except under CI=true where it fails.

mod containers;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use containers::{cached_rootfs, is_root, missing, on_path, run, text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `KEY=value` lines of an env file, comments and blank lines left out.
fn env_pairs(text: &str) -> Vec<String> {
    let mut pairs: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    pairs.sort();
    pairs
}

/// `(uid, gid, shell)` of `name` in the target's /etc/passwd.
fn passwd_entry(root: &Path, name: &str) -> Option<(u32, u32, String)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() == 7).then(|| {
            (
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[6].to_string(),
            )
        })
    })
}

struct Playbook {
    ansible_playbook: PathBuf,
    dir: PathBuf,
}

struct Applied {
    ok: bool,
    changed: u32,
    log: String,
}

impl Playbook {
    /// Applies ops/ansible/site.yml with the test's variables plus `extra` (JSON object).
    fn apply(&self, extra: &str) -> Applied {
        self.apply_with(extra, &[])
    }

    /// The same with more ansible-playbook arguments (`--check`).
    fn apply_with(&self, extra: &str, args: &[&str]) -> Applied {
        let vars = self.dir.join("extra.json");
        std::fs::write(&vars, extra).unwrap();
        let started = Instant::now();
        let out = run(Command::new(&self.ansible_playbook)
            .current_dir(&self.dir)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .arg("-i")
            .arg(self.dir.join("inventory.ini"))
            .arg("-e")
            .arg(format!("@{}", self.dir.join("vars.json").display()))
            .arg("-e")
            .arg(format!("@{}", vars.display()))
            .args(args)
            .arg(repo().join("ops/ansible/site.yml")));
        let log = text(&out);
        eprintln!("ansible-playbook took {:.1?}", started.elapsed());
        // PLAY RECAP: "target : ok=17 changed=0 unreachable=0 failed=0 ..."
        let recap = log
            .lines()
            .rev()
            .find(|l| l.starts_with("target ") && l.contains("changed="))
            .unwrap_or_else(|| panic!("no PLAY RECAP for target:\n{log}"));
        let changed = recap
            .split_whitespace()
            .find_map(|f| f.strip_prefix("changed="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no changed= in {recap}"));
        Applied {
            ok: out.status.success(),
            changed,
            log,
        }
    }
}

#[test]
fn the_role_installs_at_rund_idempotently() {
    if !is_root() {
        missing("root is needed (debootstrap and the chroot connection)");
        return;
    }
    let lint = repo().join("tools/ansible/.venv/bin/ansible-lint");
    if !lint.is_file() {
        missing(&format!("{} is needed", lint.display()));
        return;
    }
    let install = "apt-get install -y ansible debootstrap";
    let (Some(ansible_playbook), Some(debootstrap)) = (
        on_path("ansible-playbook", install),
        on_path("debootstrap", install),
    ) else {
        return;
    };
    let deno = std::env::var_os("ATRUND_TEST_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
    assert!(deno.is_file(), "no Deno at {}", deno.display());

    // 1. The lint, with the venv's ansible-core on PATH.
    let path = format!(
        "{}:{}",
        lint.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = run(Command::new(&lint)
        .current_dir(repo().join("ops/ansible"))
        .env("PATH", path)
        .env("NO_COLOR", "1"));
    let log = text(&out);
    eprintln!("ansible-lint took {:.1?}", started.elapsed());
    assert!(out.status.success(), "ansible-lint failed:\n{log}");
    assert!(
        log.contains("Profile 'production' was required, and it passed"),
        "{log}"
    );

    // 2. A fresh copy of the cached rootfs as the target.
    // python3: Ansible's modules need it on the target.
    let rootfs = cached_rootfs(
        &debootstrap,
        "bookworm-minbase",
        &["python3"],
        "usr/bin/python3",
    );
    let work = tempfile::tempdir_in(rootfs.parent().unwrap()).unwrap();
    let root = work.path().join("root");
    let out = run(Command::new("cp").arg("-a").arg(&rootfs).arg(&root));
    assert!(out.status.success(), "cp: {}", text(&out));
    std::fs::write(
        work.path().join("inventory.ini"),
        format!(
            "[at_rund]\ntarget ansible_connection=community.general.chroot ansible_host={} \
             ansible_python_interpreter=/usr/bin/python3 ansible_become=false\n",
            root.display()
        ),
    )
    .unwrap();
    let vars = serde_json::json!({
        "at_rund_binary_src": env!("CARGO_BIN_EXE_at-rund"),
        "at_rund_deno_src": deno,
        "at_rund_policy": ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "alice.example.com"],
    });
    std::fs::write(work.path().join("vars.json"), vars.to_string()).unwrap();
    let playbook = Playbook {
        ansible_playbook,
        dir: work.path().to_path_buf(),
    };

    // 3. Twice: the second run changes nothing.
    let first = playbook.apply("{}");
    assert!(first.ok, "first run failed:\n{}", first.log);
    assert!(
        first.changed >= 10,
        "first run changed little:\n{}",
        first.log
    );
    let second = playbook.apply("{}");
    assert!(second.ok, "second run failed:\n{}", second.log);
    assert_eq!(
        second.changed, 0,
        "second run changed things:\n{}",
        second.log
    );

    // What an operator previews with: nothing either.
    let check = playbook.apply_with("{}", &["--check", "--diff"]);
    assert!(check.ok, "check run failed:\n{}", check.log);
    assert_eq!(
        check.changed, 0,
        "check run would change things:\n{}",
        check.log
    );

    // 4. What is on the target.
    let in_root = |args: &[&str]| {
        let out = run(Command::new("chroot")
            .arg(&root)
            .args(["env", "-i"])
            .args(args));
        assert!(
            out.status.success(),
            "{args:?} in the target: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = in_root(&["/usr/local/bin/at-rund", "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let pin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tools/deno/package.json")).unwrap(),
    )
    .unwrap();
    let pin = pin["dependencies"]["deno"].as_str().unwrap();
    let deno_version = in_root(&["/usr/local/bin/deno", "--version"]);
    assert!(
        deno_version.starts_with(&format!("deno {pin} ")),
        "{deno_version}"
    );
    assert!(
        root.join("usr/bin/bwrap").is_file(),
        "bubblewrap not installed"
    );

    let (uid, gid, shell) =
        passwd_entry(&root, "at-rund-sandbox").expect("no at-rund-sandbox user");
    assert!(
        uid > 0 && uid < 1000 && gid > 0 && gid < 1000,
        "not a system user: {uid}:{gid}"
    );
    assert_eq!(shell, "/usr/sbin/nologin");

    let data = std::fs::metadata(root.join("var/lib/at-rund")).unwrap();
    assert_eq!(
        (data.mode() & 0o7777, data.uid(), data.gid()),
        (0o710, 0, gid),
        "data dir: root's, the sandbox group, 0710"
    );
    for file in ["etc/at-rund/config.toml", "etc/at-rund/at-rund.env"] {
        let meta = std::fs::metadata(root.join(file)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0), "{file}");
    }

    let unit = root.join("etc/systemd/system/at-rund.service");
    assert_eq!(
        std::fs::read(&unit).unwrap(),
        std::fs::read(repo().join("ops/systemd/at-rund.service")).unwrap(),
        "the installed unit is the repo's"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/at-rund.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/etc/systemd/system/at-rund.service"),
        "enabled as systemctl enable would"
    );
    // With the defaults, the env file says what the repo's does.
    assert_eq!(
        env_pairs(&std::fs::read_to_string(root.join("etc/at-rund/at-rund.env")).unwrap()),
        env_pairs(&std::fs::read_to_string(repo().join("ops/systemd/at-rund.env")).unwrap()),
    );

    // As the service sees it: the env file, then the config file (docs/operating.md step 3).
    let effective = in_root(&[
        "/bin/sh",
        "-c",
        "set -a; . /etc/at-rund/at-rund.env; set +a; exec /usr/local/bin/at-rund check-config",
    ]);
    for want in [
        format!("run_as_uid = {uid}  # from config file /etc/at-rund/config.toml"),
        format!("run_as_gid = {gid}  # from config file /etc/at-rund/config.toml"),
        "policy = [\"did:plc:ewvi7nxzyoun6zhxrhs64oiz\", \"alice.example.com\"]".to_string(),
        "path = \"/usr/local/bin/deno\"  # from environment variable ATRUND_DENO_PATH".to_string(),
    ] {
        assert!(effective.contains(&want), "no {want:?} in:\n{effective}");
    }

    // 5. A new policy: only the config changes, and it asks for a reload, not a restart.
    let open = playbook.apply(r#"{"at_rund_policy": "open"}"#);
    assert!(open.ok, "policy run failed:\n{}", open.log);
    assert_eq!(
        open.changed, 1,
        "only the config file changes:\n{}",
        open.log
    );
    assert!(
        open.log
            .contains("RUNNING HANDLER [at_rund : Reload at-rund]"),
        "{}",
        open.log
    );
    assert!(!open.log.contains("Restart the service"), "{}", open.log);
    let config = root.join("etc/at-rund/config.toml");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("policy = \"open\""));

    // 6. Another data dir: a drop-in makes it the unit's writable path, and the unit is
    // reloaded and at-rund restarted; back to the default, the drop-in goes.
    let drop_in = root.join("etc/systemd/system/at-rund.service.d/data-dir.conf");
    let srv = playbook.apply(r#"{"at_rund_policy": "open", "at_rund_data_dir": "/srv/at-rund"}"#);
    assert!(srv.ok, "data dir run failed:\n{}", srv.log);
    let conf = std::fs::read_to_string(&drop_in).unwrap();
    assert!(
        conf.contains("[Service]\nReadWritePaths=\nReadWritePaths=/srv/at-rund\n"),
        "{conf}"
    );
    let env = std::fs::read_to_string(root.join("etc/at-rund/at-rund.env")).unwrap();
    assert!(env.contains("\nATRUND_DATA_DIR=/srv/at-rund\n"), "{env}");
    let meta = std::fs::metadata(root.join("srv/at-rund")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o710, gid));
    for handler in ["Reload systemd", "Restart the service"] {
        let header = format!("RUNNING HANDLER [at_rund : {handler}]");
        assert!(srv.log.contains(&header), "no {header}:\n{}", srv.log);
    }
    let back = playbook.apply(r#"{"at_rund_policy": "open"}"#);
    assert!(
        back.ok,
        "run back to the default data dir failed:\n{}",
        back.log
    );
    assert!(!drop_in.exists(), "the drop-in is left behind");

    // 7. A config at-rund refuses fails the run and leaves the old one in place; so does an
    // env file with a variable at-rund does not know.
    let bad = playbook.apply(r#"{"at_rund_policy": "open", "at_rund_isolation": "microvm"}"#);
    assert!(!bad.ok, "a refused config was applied:\n{}", bad.log);
    assert!(bad.log.contains("needs a guest kernel"), "{}", bad.log);
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("isolation = \"auto\""));
    let bad = playbook.apply(
        r#"{"at_rund_policy": "open", "at_rund_env_extra": {"ATRUND_LISTN": "0.0.0.0:80"}}"#,
    );
    assert!(!bad.ok, "a refused env file was applied:\n{}", bad.log);
    assert!(
        bad.log.contains("did you mean ATRUND_LISTEN?"),
        "{}",
        bad.log
    );
    let env = std::fs::read_to_string(root.join("etc/at-rund/at-rund.env")).unwrap();
    assert!(!env.contains("ATRUND_LISTN"), "{env}");
}
