//! `ops/systemd/at-rund.service` under a real systemd: a Debian bookworm rootfs (debootstrap with
//! systemd, dbus, bubblewrap and curl, cached under the target dir: 45 s to 1.5 min, once) boots
//! systemd as PID 1 in a podman container. Inside are this test run's at-rund, the pinned Deno,
//! the repo's unit and env file unchanged and a config with an allow-list policy. Proved there:
//! `systemctl start` makes the unit active and `at-rund serve` answers /healthz and /readyz; its
//! start-up log says the unit's hardening leaves `container` isolation, cgroups and hard data
//! quotas working; `systemctl reload` rereads the config (journal) in the same process;
//! `systemctl stop` drains ("stopped") with Result=success and exit status 0. Then a drop-in runs
//! `at-rund dev` on the example bundle (no PDS here) under the same unit, and a call is answered
//! from a `container` sandbox.
//!
//! The container is `--privileged --cgroupns=private`: it stands in for a host, where at-rund is
//! root with every capability and systemd owns the cgroup tree (docs/operating.md "Run as a
//! service"). It and its rootfs copy are removed even when an assertion fails. Needs root,
//! podman, runc and debootstrap (scripts/setup.sh --test); without them the test is skipped,
//! except under CI=true where it fails.

mod containers;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use containers::{cached_rootfs, is_root, missing, on_path, run, text, PODMAN_HOST_FLAGS};

/// What systemd, at-rund's start-up probe and a first call may take on this shared machine.
const TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The container, stopped gracefully (at-rund removes its cgroups) and removed on drop.
struct Machine {
    name: String,
    /// How much of the journal earlier runs of the unit wrote ([`Machine::mark`]).
    seen: std::cell::Cell<usize>,
}

impl Machine {
    /// `sh -c script` inside, with its output.
    fn sh(&self, script: &str) -> Output {
        run(Command::new("podman").args(["exec", &self.name, "sh", "-c", script]))
    }

    /// `sh -c script` inside, which must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\njournal:\n{}",
            text(&out),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// at-rund's journal since the last [`Machine::mark`], messages only.
    fn journal(&self) -> String {
        let all = text(&self.sh("journalctl -u at-rund --no-pager -o cat"));
        all.get(self.seen.get()..).unwrap_or(&all).to_string()
    }

    /// From now on, [`Machine::journal`] shows only what comes next.
    fn mark(&self) {
        self.seen.set(self.seen.get() + self.journal().len());
    }

    fn main_pid(&self) -> String {
        self.ok("systemctl show -p MainPID --value at-rund")
    }

    /// Waits until the journal has `line`, then returns the journal.
    fn wait_journal(&self, line: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let journal = self.journal();
            if journal.contains(line) {
                return journal;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in the journal:\n{journal}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// GETs `url` inside until it answers 2xx; the body.
    fn get(&self, url: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.sh(&format!("curl -fsS --max-time 20 '{url}'"));
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{url}: {}\njournal:\n{}",
                text(&out),
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `systemctl stop`, which must drain and end the unit cleanly.
    fn stop(&self) {
        self.ok("systemctl stop at-rund");
        let journal = self.wait_journal("at_rund: stopped");
        assert_eq!(
            self.ok("systemctl show -p Result,ExecMainStatus at-rund"),
            "Result=success\nExecMainStatus=0",
            "{journal}"
        );
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.sh("systemctl stop at-rund");
        let _ = run(Command::new("podman").args(["rm", "-f", "-t", "10", &self.name]));
    }
}

/// Copies `from` to `to` with the mode `mode`.
fn install(from: &Path, to: &Path, mode: &str) {
    let out = run(Command::new("install")
        .args(["-D", "-m", mode])
        .arg(from)
        .arg(to));
    assert!(
        out.status.success(),
        "install {}: {}",
        to.display(),
        text(&out)
    );
}

#[test]
fn the_unit_starts_reloads_and_stops_at_rund_under_systemd() {
    if !is_root() {
        missing("root is needed (podman's rootful storage, debootstrap)");
        return;
    }
    let (Some(_), Some(_), Some(debootstrap)) = (
        on_path("podman", "apt-get install -y podman"),
        on_path("runc", "apt-get install -y runc"),
        on_path("debootstrap", "apt-get install -y debootstrap"),
    ) else {
        return;
    };
    let deno = std::env::var_os("ATRUND_TEST_DENO")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/deno/node_modules/deno/deno"));
    assert!(deno.is_file(), "no Deno at {}", deno.display());

    let started = Instant::now();
    let cached = cached_rootfs(
        &debootstrap,
        "bookworm-systemd",
        &[
            "systemd",
            "systemd-sysv",
            "dbus",
            "bubblewrap",
            "curl",
            "ca-certificates",
        ],
        "lib/systemd/systemd",
    );
    let work = tempfile::tempdir_in(cached.parent().unwrap()).unwrap();
    let root = work.path().join("root");
    let out = run(Command::new("cp").arg("-a").arg(&cached).arg(&root));
    assert!(out.status.success(), "cp: {}", text(&out));

    // As docs/operating.md "Install" and "Run as a service" do it; the unit is not enabled, the
    // test starts it.
    install(
        Path::new(env!("CARGO_BIN_EXE_at-rund")),
        &root.join("usr/local/bin/at-rund"),
        "0755",
    );
    install(&deno, &root.join("usr/local/bin/deno"), "0755");
    install(
        &repo().join("ops/systemd/at-rund.env"),
        &root.join("etc/at-rund/at-rund.env"),
        "0644",
    );
    install(
        &repo().join("ops/systemd/at-rund.service"),
        &root.join("etc/systemd/system/at-rund.service"),
        "0644",
    );
    let config = root.join("etc/at-rund/config.toml");
    std::fs::write(&config, "policy = [\"did:plc:ewvi7nxzyoun6zhxrhs64oiz\"]\n").unwrap();
    for f in ["main.js", "manifest.json"] {
        install(
            &repo().join("examples/hello").join(f),
            &root.join("srv/examples/hello").join(f),
            "0644",
        );
    }
    let out = run(Command::new("install")
        .args(["-d", "-m", "0700"])
        .arg(root.join("var/lib/at-rund")));
    assert!(out.status.success(), "{}", text(&out));

    let machine = Machine {
        name: format!("at-rund-systemd-{}", std::process::id()),
        seen: std::cell::Cell::new(0),
    };
    let out = run(Command::new("podman")
        .args(["run", "-d", "--name", &machine.name])
        .args(PODMAN_HOST_FLAGS)
        .args([
            "--systemd=always",
            "--privileged",
            "--cgroupns=private",
            "--rootfs",
        ])
        .arg(&root)
        .arg("/sbin/init"));
    assert!(out.status.success(), "podman run: {}", text(&out));

    // Booted: running, or degraded when a unit this container cannot have failed. Right after
    // `podman run` systemctl may not reach systemd yet, so ask until it says.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = machine.sh("systemctl is-system-running");
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "systemd did not boot: {}\n{}",
            text(&out),
            text(&machine.sh("systemctl --failed --no-pager"))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("systemd booted after {:.1?}", started.elapsed());

    // 1. Start: active, healthy, ready.
    machine.ok("systemctl start at-rund");
    assert_eq!(machine.ok("systemctl is-active at-rund"), "active");
    assert_eq!(machine.get("http://127.0.0.1:3000/healthz").trim(), "ok");
    assert_eq!(machine.get("http://127.0.0.1:3000/readyz").trim(), "ready");
    // The hardening lets the sandbox work: auto's probe started a real bubblewrap sandbox,
    // cgroups were created and the private mount namespace for author volumes was entered.
    // (journald may write at-rund's lines a little after it answers.)
    let journal = machine.wait_journal("http api listening");
    for want in [
        "limit enforced limit=\"isolation\" how=auto chose container",
        "limit enforced limit=\"dataQuota\" how=hard",
        "limit enforced limit=\"memory\"",
        "limit enforced limit=\"pids\"",
    ] {
        assert!(journal.contains(want), "no {want:?} in:\n{journal}");
    }
    // Where the cgroups are: at-rund's own at the root of each hierarchy (here the container's
    // cgroup namespace), beside the unit's, not under it (docs/operating.md).
    let pid = machine.main_pid();
    let cgroups = machine.ok(&format!("cat /proc/{pid}/cgroup"));
    assert!(
        cgroups
            .lines()
            .any(|l| l.ends_with(":memory:/system.slice/at-rund.service")),
        "{cgroups}"
    );
    let ours = machine.ok("ls -d /sys/fs/cgroup/memory/at-rund-*");
    assert_eq!(ours.lines().count(), 1, "{ours}");

    // 2. Reload: the new config is read by the same process.
    std::fs::write(&config, "policy = \"open\"\n").unwrap();
    machine.ok("systemctl reload at-rund");
    let journal = machine.wait_journal("configuration reloaded");
    assert!(
        journal.contains("SIGHUP: reloading the configuration")
            && journal.contains("author policy policy=open"),
        "{journal}"
    );
    assert_eq!(machine.main_pid(), pid, "the reload restarted at-rund");
    assert_eq!(machine.ok("systemctl is-active at-rund"), "active");

    // 3. Stop: drained, a clean exit, at-rund's cgroups gone.
    machine.stop();
    assert_eq!(
        machine.ok("ls -d /sys/fs/cgroup/memory/at-rund-* 2>/dev/null || true"),
        ""
    );

    // 4. A bundle under the unit: a drop-in replaces ExecStart with `dev` on the example (there
    // is no PDS to publish to here); everything else is the unit's.
    machine.ok(
        "mkdir -p /etc/systemd/system/at-rund.service.d && printf '%s\\n' '[Service]' \
         'ExecStart=' 'ExecStart=/usr/local/bin/at-rund dev /srv/examples/hello' \
         > /etc/systemd/system/at-rund.service.d/dev.conf && systemctl daemon-reload",
    );
    machine.mark();
    machine.ok("systemctl start at-rund");
    let base = "http://127.0.0.1:3000/bundle/local/hello/latest";
    let greet = machine.get(&format!("{base}/greet?name=Ada"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&greet).unwrap(),
        serde_json::json!({"message": "Hello, Ada!"})
    );
    let describe: serde_json::Value =
        serde_json::from_str(&machine.get("http://127.0.0.1:3000/xrpc/dev.atrund.describeRunner"))
            .unwrap();
    assert_eq!(describe["isolation"], "container", "{describe}");
    machine.stop();
    eprintln!("systemd test done in {:.1?}", started.elapsed());
}
