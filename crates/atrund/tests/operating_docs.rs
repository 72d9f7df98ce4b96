//! docs/operating.md and docs/troubleshooting.md, run: every `sh` block of both, top to bottom in
//! one bash per doc, against the real at-rund (the test binary's `CARGO_BIN_EXE_at-rund`, which
//! the doc itself installs), real Deno, bubblewrap, promtool, nft and ss, with the host paths and
//! ports of the docs replaced from [`table`] by a temporary root and free ports. The blocks that
//! cannot run here (`sh systemd`: no systemd as PID 1; `sh host`: they change the host's
//! firewall; `sh author`: an author's command) are listed and checked another way. And every
//! error name the code can answer with must have a row in docs/troubleshooting.md.
//!
//! A missing tool skips the doc run on a developer machine and fails it under `CI=true`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_at-rund");

/// The fence info strings a doc may use for shell blocks; any other `sh…` fails the test, so no
/// block is skipped by a typo.
const RUN: &str = "sh";
const NOT_RUN: [&str; 3] = ["sh systemd", "sh host", "sh author"];

fn repo() -> PathBuf {
    atrund_testnet::repo_root()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Sections of docs/operating.md written with their own tests (the container image, TLS and
/// Ansible work): their blocks are listed here and left to those tests.
const OWN_TESTS: [&str; 3] = [
    "Container image",
    "TLS in front (Caddy or nginx)",
    "Installing with Ansible",
];

/// A fenced shell block of a doc.
struct Block {
    info: String,
    /// The `## ` heading it is under.
    section: String,
    lines: Vec<String>,
}

fn shell_blocks(doc: &str, name: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut section = String::new();
    for l in doc.lines() {
        let t = l.trim();
        if current.is_none() {
            if let Some(h) = l.strip_prefix("## ") {
                section = h.trim().to_string();
            }
        }
        if let Some(info) = t.strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None if info == "sh" || info.starts_with("sh ") => {
                    assert!(
                        info == RUN || NOT_RUN.contains(&info),
                        "{name}: unknown shell fence ```{info} (use {RUN} or one of {NOT_RUN:?})"
                    );
                    current = Some(Block {
                        info: info.to_string(),
                        section: section.clone(),
                        lines: Vec::new(),
                    });
                }
                // Another language's block: skip to its end.
                None => {
                    current = Some(Block {
                        info: format!("other {info}"),
                        section: section.clone(),
                        lines: Vec::new(),
                    })
                }
            }
            continue;
        }
        if let Some(b) = current.as_mut() {
            b.lines.push(l.to_string());
        }
    }
    assert!(current.is_none(), "{name}: an unclosed code fence");
    out.retain(|b| !b.info.starts_with("other "));
    out.retain(|b| {
        let theirs = OWN_TESTS.contains(&b.section.as_str());
        if theirs {
            eprintln!(
                "{name}: \"{}\" is run by its own test: {:?}",
                b.section, b.lines
            );
        }
        !theirs
    });
    out
}

/// The commands of a block: one per line, a line ending in `\` joined with the next; a here
/// document stays with its command. Comment-only and blank lines are dropped.
fn commands(block: &Block) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut heredoc_end: Option<String> = None;
    let mut continued = false;
    for l in &block.lines {
        if let Some(end) = &heredoc_end {
            let last = out.last_mut().expect("a here document follows its command");
            last.push('\n');
            last.push_str(l);
            if l.trim() == end {
                heredoc_end = None;
            }
            continue;
        }
        if continued {
            let last = out
                .last_mut()
                .expect("a continued line follows its command");
            last.push('\n');
            last.push_str(l);
        } else if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        } else {
            out.push(l.to_string());
        }
        continued = l.trim_end().ends_with('\\');
        if let Some((_, rest)) = l.split_once("<<") {
            let word = rest.trim().trim_matches('\'').trim_matches('"');
            heredoc_end = Some(word.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    out
}

/// What the docs name on a real host → what the test uses instead.
struct Table {
    subs: Vec<(String, String)>,
    /// The temporary root every host path is replaced by.
    root: String,
}

impl Table {
    fn apply(&self, text: &str) -> String {
        let mut t = text.to_string();
        for (from, to) in &self.subs {
            t = t.replace(from, to);
        }
        // Nothing may reach the real host's paths (the test runs as root).
        let outside = t.replace(&format!("{}/", self.root), "<tmp>");
        for host in ["/etc/", "/usr/local/", "/var/"] {
            assert!(
                !outside.contains(host),
                "`{t}` still names {host} after the test's substitutions: add it to the table"
            );
        }
        t
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The temporary host the docs' commands run on.
struct Host {
    root: tempfile::TempDir,
    table: Table,
    ports: [u16; 4],
    path: String,
}

impl Host {
    fn new(deno: &Path) -> Host {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        // Instances run as another uid and must pass through to the data dir.
        std::fs::set_permissions(r, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .expect("chmod");
        let ports = [free_port(), free_port(), free_port(), free_port()];
        std::fs::write(
            r.join("your-config.toml"),
            format!(
                "listen = \"127.0.0.1:{}\"\n[pool]\nadmin_listen = \"127.0.0.1:{}\"\n",
                ports[0], ports[1]
            ),
        )
        .expect("write the config");
        let p = |s: &str| r.join(s).display().to_string();
        let mut subs = vec![
            ("target/release/at-rund".to_string(), BIN.to_string()),
            (
                "tools/deno/node_modules/deno/deno".to_string(),
                deno.display().to_string(),
            ),
            ("your-config.toml".into(), p("your-config.toml")),
            ("ops/systemd/at-rund.env".into(), p("at-rund.env.shipped")),
            ("/usr/local/bin".into(), p("bin")),
            ("/etc/at-rund".into(), p("etc")),
            ("/var/lib/at-rund".into(), p("data")),
            ("/var/log/at-rund.log".into(), p("at-rund.log")),
            ("/var/backups".into(), p("backups")),
            ("/tmp/at-rund-measure".into(), p("measure")),
        ];
        for (doc_port, port) in [3000, 3001, 3100, 3101].iter().zip(ports) {
            subs.push((format!(":{doc_port}"), format!(":{port}")));
        }
        let mut table = Table {
            subs,
            root: r.display().to_string(),
        };
        // The shipped env file, with the same replacements (it names /etc and /var/lib).
        let env = table.apply(&read("ops/systemd/at-rund.env"));
        std::fs::write(r.join("at-rund.env.shipped"), env).expect("write the env file");
        // systemd's own paths appear only in blocks that are not run.
        table
            .subs
            .push(("/etc/systemd/system".into(), p("systemd")));
        std::fs::create_dir_all(r.join("bin")).expect("bin dir");
        let path = format!(
            "{}:{}",
            r.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Host {
            root,
            table,
            ports,
            path,
        }
    }

    fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Runs the doc's `sh` blocks in one bash; each command's stdout is kept apart.
    fn run(&self, doc_name: &str, blocks: &[Block]) -> Outputs {
        let mut script = String::from(
            "set -euo pipefail\n\
             trap 'for p in $(jobs -p); do kill -TERM \"$p\" 2>/dev/null || true; done; wait' EXIT\n",
        );
        let mut cmds = Vec::new();
        for b in blocks.iter().filter(|b| b.info == RUN) {
            for c in commands(b) {
                script.push_str(&format!("printf '\\n@@cmd {}\\n'\n", cmds.len()));
                script.push_str(&self.table.apply(&c));
                script.push('\n');
                cmds.push(c);
            }
        }
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "240", "bash", "-c", &script])
            .current_dir(repo())
            .env("PATH", &self.path)
            .env("HOME", self.dir())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME");
        without_atrund_vars(&mut cmd);
        let out = cmd.output().expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let log = std::fs::read_to_string(self.dir().join("at-rund.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{doc_name}: a command failed ({}).\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- at-rund.log (last 4000 bytes)\n{}",
            out.status,
            &log[log.len().saturating_sub(4000)..]
        );
        let mut per = vec![String::new(); cmds.len()];
        let mut at: Option<usize> = None;
        for l in stdout.lines() {
            if let Some(n) = l.strip_prefix("@@cmd ") {
                at = n.parse().ok();
            } else if let Some(i) = at {
                per[i].push_str(l);
                per[i].push('\n');
            }
        }
        eprintln!("{doc_name}: ran {} commands", cmds.len());
        Outputs {
            doc: doc_name.to_string(),
            cmds: cmds.into_iter().zip(per).collect(),
        }
    }
}

/// The developer's own `ATRUND_*` settings must not reach the runner the docs install.
fn without_atrund_vars(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("ATRUND_") {
            cmd.env_remove(k);
        }
    }
}

/// Each command of a doc (as written) with what it printed.
struct Outputs {
    doc: String,
    cmds: Vec<(String, String)>,
}

impl Outputs {
    /// The outputs of the commands that begin with `prefix`, in order (at least one must).
    fn of(&self, prefix: &str) -> Vec<&str> {
        let v: Vec<&str> = self
            .cmds
            .iter()
            .filter(|(c, _)| c.trim_start().starts_with(prefix))
            .map(|(_, o)| o.as_str())
            .collect();
        assert!(
            !v.is_empty(),
            "{}: no command starts with `{prefix}`",
            self.doc
        );
        v
    }

    fn one(&self, prefix: &str) -> &str {
        self.of(prefix)[0]
    }
}

/// `"publicKey":"z…"` → `z…`.
fn public_key(out: &str) -> &str {
    out.trim()
        .strip_prefix("\"publicKey\":\"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no publicKey in `{out}`"))
}

/// `<mode>: <what> <n> KiB` lines of the capacity measurement.
fn kib(out: &str, mode: &str, what: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{mode}: {what} ")))
        .and_then(|rest| rest.strip_suffix(" KiB"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{mode}: {what} N KiB` in:\n{out}"))
}

/// The operating guide, then troubleshooting on the same (now stopped) installation.
#[test]
fn operating_and_troubleshooting_commands_run() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    if atrund_testnet::promtool_path().is_none() {
        return;
    }
    let tools = [
        ("nft", "nftables"),
        ("ss", "iproute2"),
        ("systemd-analyze", "systemd"),
        ("bwrap", "bubblewrap"),
        ("curl", "curl"),
    ];
    let fix = |p: &str| format!("run `scripts/setup.sh --test` or `apt-get install {p}`");
    if tools
        .iter()
        .any(|(t, p)| atrund_testnet::on_path(t, t, &fix(p)).is_none())
    {
        return;
    }
    let host = Host::new(&deno);
    let operating = shell_blocks(&read("docs/operating.md"), "docs/operating.md");
    let out = host.run("docs/operating.md", &operating);

    // Install: the doctor passes on the installed copy.
    let doctor = out.one("at-rund doctor");
    assert!(
        doctor.contains("ok    deno") && !doctor.contains("FAIL"),
        "{doctor}"
    );
    // Without systemd: ready, then a reload.
    assert!(out
        .one("timeout 30 sh -c 'until curl -fsS http://127.0.0.1:3000/readyz")
        .contains("ready"));
    assert!(out
        .one("grep -o 'configuration reloaded")
        .contains("configuration reloaded"));
    // Upgrade: a drained stop.
    assert!(out
        .one("/usr/local/bin/at-rund.new --version")
        .starts_with("at-rund "));
    let drain = out.one("grep -oE 'signal received: draining");
    for step in [
        "signal received: draining",
        "in-flight requests finished",
        "stopped",
    ] {
        assert!(drain.contains(step), "no `{step}` in the log: {drain}");
    }
    // Back up: the key and the authors' data, not the caches.
    let listing = out.one("tar -tvzf");
    assert!(
        listing.contains("-rw------- ") && listing.contains("./runner-key.json"),
        "{listing}"
    );
    let archive = host.dir().join("backups/at-rund/at-rund.tar.gz");
    let names = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.lines().any(|l| l == "./data/"), "{names}");
    for cache in ["./bundles/", "./run/", "./staged/", "./deno/"] {
        assert!(
            !names.lines().any(|l| l.starts_with(cache)),
            "{cache} in the backup: {names}"
        );
    }
    // Rotation: keygen's key is the announced one, and after the restart the new one is.
    let before = out.one("at-rund keygen  ").trim().to_string();
    let announced = out.of("curl -fsS http://127.0.0.1:3000/xrpc/dev.atrund.describeRunner");
    assert_eq!(announced.len(), 2);
    assert_eq!(public_key(announced[0]), before);
    let rotated = out.one("at-rund keygen --rotate").trim().to_string();
    assert!(
        rotated.starts_with('z') && rotated != before,
        "{before} → {rotated}"
    );
    assert_eq!(public_key(announced[1]), rotated);
    // Capacity: both modes measured.
    let measured = [
        "echo \"$mode: idle",
        "curl -fsS http://127.0.0.1:3101/metrics",
        "ps -eo pid=,ppid=,rss=",
    ]
    .iter()
    .map(|p| out.of(p).concat())
    .collect::<String>();
    for mode in ["container", "none"] {
        let idle = kib(&measured, mode, "idle at-rund RSS");
        let metric = kib(&measured, mode, "one warm instance (metric)");
        let processes = kib(&measured, mode, "one warm instance (processes)");
        // Deno alone is over 20 MiB.
        assert!(
            idle > 1000 && processes > 20_000,
            "{mode}: {idle} / {processes} KiB"
        );
        eprintln!(
            "{mode}: idle at-rund {idle} KiB, one warm instance {processes} KiB ({metric} KiB in the metric; debug build)"
        );
        // The pool counts every process of the instance (container: bwrap, init and Deno).
        assert!(
            metric * 10 >= processes * 9 && metric * 10 <= processes * 11,
            "{mode}: the metric says {metric} KiB, the instance's processes {processes} KiB"
        );
    }
    // Monitoring and hardening.
    assert!(out
        .one("curl -fsS http://127.0.0.1:3001/metrics")
        .contains("atrund_build_info{"));
    assert!(out.one("promtool check rules").contains("SUCCESS"));
    let ss = out.one("ss -ltn");
    for port in &host.ports[..2] {
        assert!(ss.contains(&format!("127.0.0.1:{port} ")), "{ss}");
    }
    check_not_run(&host, &operating, "docs/operating.md", &out, Some(&before));

    let troubleshooting = shell_blocks(&read("docs/troubleshooting.md"), "docs/troubleshooting.md");
    let tout = host.run("docs/troubleshooting.md", &troubleshooting);
    assert!(!tout.one("at-rund doctor --config").contains("FAIL"));
    let json: serde_json::Value = serde_json::from_str(tout.one("at-rund doctor --json").trim())
        .expect("doctor --json prints one JSON document");
    assert_eq!(json["blocking"], 0, "{json}");
    let doc = read("docs/troubleshooting.md");
    let checks = json["checks"].as_array().expect("checks");
    assert!(checks.len() >= 10, "{json}");
    for c in checks {
        let name = c["check"].as_str().expect("check name");
        let row = doc.lines().any(|l| {
            l.starts_with("| `")
                && l.split('|')
                    .nth(1)
                    .is_some_and(|cell| cell.contains(&format!("`{name}`")))
        });
        assert!(
            row,
            "doctor's check `{name}` has no row in docs/troubleshooting.md"
        );
    }
    assert!(tout.one("stat -c").starts_with("600 root "));
    check_not_run(
        &host,
        &troubleshooting,
        "docs/troubleshooting.md",
        &tout,
        None,
    );
}

/// The blocks that are not run: listed, and checked as far as this machine allows.
/// `backed_up_key`: the public key the backup holds.
fn check_not_run(
    host: &Host,
    blocks: &[Block],
    doc: &str,
    ran: &Outputs,
    backed_up_key: Option<&str>,
) {
    for b in blocks.iter().filter(|b| b.info != RUN) {
        for c in commands(b) {
            eprintln!("{doc}: not run (```{}): {c}", b.info);
            let words: Vec<&str> = c.split_whitespace().collect();
            match (b.info.as_str(), words.as_slice()) {
                ("sh systemd", ["install", "-m", "0644", unit, target]) => {
                    // The unit it installs verifies, with the doc's paths.
                    assert_eq!(*unit, "ops/systemd/at-rund.service");
                    assert!(target.ends_with("/at-rund.service"));
                    let text = host.table.apply(&read(unit));
                    let copy = host.dir().join("at-rund.service");
                    std::fs::write(&copy, text).expect("write the unit");
                    let v = Command::new("systemd-analyze")
                        .arg("verify")
                        .arg(&copy)
                        .output()
                        .expect("systemd-analyze");
                    assert!(
                        v.status.success(),
                        "systemd-analyze verify: {}",
                        String::from_utf8_lossy(&v.stderr)
                    );
                }
                ("sh systemd", ["systemctl", "daemon-reload"]) => {}
                ("sh systemd", ["systemctl", verb, "at-rund", ..])
                | ("sh systemd", ["systemctl", verb, "--now", "at-rund", ..]) => {
                    assert!(
                        ["enable", "reload", "restart", "stop", "start"].contains(verb),
                        "{c}"
                    );
                }
                ("sh systemd", ["journalctl", "-u", "at-rund", ..]) => {}
                ("sh systemd", ["tar", "-C", dir, "-xpzf", archive]) => {
                    // The restore, into a scratch dir: the key comes back as it was.
                    assert_eq!(*dir, "/var/lib/at-rund");
                    let scratch = host.dir().join("restore");
                    std::fs::create_dir_all(&scratch).expect("mkdir");
                    let st = Command::new("tar")
                        .arg("-C")
                        .arg(&scratch)
                        .arg("-xpzf")
                        .arg(host.table.apply(archive))
                        .status()
                        .expect("tar");
                    assert!(st.success());
                    // The restored key file loads, and holds the key of the backup's time.
                    let mut keygen = Command::new(BIN);
                    without_atrund_vars(&mut keygen);
                    let keygen = keygen
                        .arg("keygen")
                        .env("ATRUND_DATA_DIR", &scratch)
                        .env("HOME", host.dir())
                        .output()
                        .expect("at-rund keygen");
                    assert!(keygen.status.success(), "{keygen:?}");
                    assert_eq!(
                        String::from_utf8_lossy(&keygen.stdout).trim(),
                        backed_up_key.expect("a backup was made")
                    );
                    let mode = std::os::unix::fs::PermissionsExt::mode(
                        &std::fs::metadata(scratch.join("runner-key.json"))
                            .expect("stat")
                            .permissions(),
                    );
                    assert_eq!(mode & 0o777, 0o600);
                }
                ("sh host", ["nft", "-f", file]) => {
                    // Loaded only after the same file passed `nft -c` in the run.
                    let checked = format!("nft -c -f {file}");
                    assert!(
                        ran.cmds.iter().any(|(c, _)| c.starts_with(&checked)),
                        "{c}: no `{checked}` was run"
                    );
                }
                ("sh author", ["at-run", "secrets", args @ ..]) => {
                    // Parsed by at-run's own `secrets` subcommands (the CLI's definitions; the
                    // command itself needs an author's PDS: crates/atrund/tests/secrets.rs).
                    use clap::{FromArgMatches, Subcommand};
                    let cli = at_run::secrets::SecretsCommand::augment_subcommands(
                        clap::Command::new("secrets"),
                    );
                    let argv = std::iter::once("secrets").chain(args.iter().copied());
                    let m = cli
                        .try_get_matches_from(argv)
                        .unwrap_or_else(|e| panic!("`{c}` does not parse: {e}"));
                    match at_run::secrets::SecretsCommand::from_arg_matches(&m) {
                        Ok(at_run::secrets::SecretsCommand::Set { target, pairs }) => {
                            assert!(target.runner.starts_with("https://"), "{c}");
                            assert!(!pairs.is_empty(), "{c}");
                        }
                        other => panic!("`{c}` is not `secrets set`: {other:?}"),
                    }
                }
                _ => panic!(
                    "{doc}: ```{} command `{c}` is neither run nor checked by this test",
                    b.info
                ),
            }
        }
    }
}

/// The names of every error the code can answer with: the string literals of each `fn code()`
/// (the error enums' names) and of `ErrorClass::…, "Name"` (the ones the HTTP layer makes),
/// outside tests. `at-run` is the author's CLI (its own errors are in docs/authoring.md).
fn error_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    let crates = repo().join("crates");
    for c in std::fs::read_dir(&crates).expect("crates/").flatten() {
        let name = c.file_name().to_string_lossy().into_owned();
        if name != "at-run" && name != "testnet" {
            collect_rs(&c.path().join("src"), &mut files);
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text,
        };
        for (i, _) in code.match_indices("fn code(&self) -> &'static str {") {
            let body = braced(&code[i..]);
            names.extend(literals(body));
        }
        for (i, _) in code.match_indices("ErrorClass::") {
            let rest = &code[i + "ErrorClass::".len()..];
            let rest = rest.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            if let Some(after) = rest.trim_start().strip_prefix(',') {
                if let Some(lit) = after.trim_start().strip_prefix('"') {
                    if let Some((name, _)) = lit.split_once('"') {
                        names.extend(literals(&format!("\"{name}\"")));
                    }
                }
            }
        }
    }
    names
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// From the first `{` of `s` to its matching `}`.
fn braced(s: &str) -> &str {
    let start = s.find('{').expect("a body");
    let mut depth = 0;
    for (i, c) in s[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[start..start + i + 1];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces")
}

/// The `"Name"` literals of `s` that look like error names.
fn literals(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            w.len() > 2
                && w.starts_with(|c: char| c.is_ascii_uppercase())
                && w.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn troubleshooting_has_a_row_for_every_error_name() {
    let names = error_names();
    // The collection itself works: names of each kind of source are found.
    for known in [
        "Busy",
        "ConfigUnknownKey",
        "EgressHostNotListed",
        "NotBundleAuthor",
        "VersionInvalid",
        "CommitSignatureInvalid",
        "KeyFileInsecure",
    ] {
        assert!(
            names.contains(known),
            "{known} not found in the code: {names:?}"
        );
    }
    assert!(names.len() >= 100, "only {} names: {names:?}", names.len());
    let doc = read("docs/troubleshooting.md");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no row for {missing:?}: add cause and fix for each"
    );
}
