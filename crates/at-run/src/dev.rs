//! `at-run dev`: the local loop. Builds the project (with an inline source map, so stack traces
//! name the source files) into `.at-run/dev/`, runs the real daemon on it (`at-rund dev`), and
//! polls the project every 50 ms; a saved edit is rebuilt once two scans agree (one poll
//! later: never a half-saved file), and at-rund serves the new
//! build on the next request (it hashes the code per request). A failed build is shown with
//! file:line and the last good build keeps serving. The bundle's output is shown (`  | `), and
//! each egress connection the runner refused, with its reason (`  ! `).
//!
//! The project's runtime (`"runtime"` in at-run.json) is the one at-rund runs it on
//! (`at-rund dev --runtime`); a Node project also needs a local Node (`--node`), handed to at-rund
//! as `ATRUND_NODE_PATH`, and a Python project a local Python 3.11 or newer (`--python`), handed
//! over as `ATRUND_PYTHON_PATH` with `ATRUND_PYTHON_ALLOW_NONE=true`: the local runner runs only
//! the author's own code, so it may run Python under the `none` backend when it cannot use
//! containers (it chooses `container` when it can, as root). A Python project is always packed
//! into `bundle.zip` here (served with `--entry bundle.zip`), so adding a module or a
//! `requirements.txt` while `dev` runs needs no restart; its packages are installed again only
//! when `requirements.txt` changes.
//!
//! Owns: the watch loop and the at-rund child process (stopped with SIGTERM when `dev` stops).
//! Must not touch: the project's sources; anything published.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::json;

use crate::build::{build, BuildOptions};
use crate::deno::Deno;
use crate::error::Failure;
use crate::project::Project;

/// How often the project is scanned for changes.
const POLL: Duration = Duration::from_millis(50);
/// Folders never watched (outputs and dependencies).
const IGNORED: [&str; 4] = ["dist", ".at-run", "node_modules", ".git"];

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// The at-rund binary [default: next to at-run, else on PATH].
    #[arg(long, env = "ATRUN_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,
    /// Show every log line of at-rund, not only the bundle's output and errors.
    #[arg(long)]
    pub verbose: bool,
    /// The Node binary, for a project whose runtime is node [default: `node` on PATH].
    #[arg(long, env = "ATRUN_NODE", value_name = "PATH")]
    pub node: Option<PathBuf>,
    /// The Python interpreter (3.11 or newer), for a project whose runtime is python [default:
    /// `python3` on PATH].
    #[arg(long, env = "ATRUN_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
}

/// `at-rund`: explicit, else beside this executable, else on PATH.
pub fn locate_runner(explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Failure::RunnerBinMissing(format!(
                "at-rund was not found at {} (--runner-bin / ATRUN_RUNNER_BIN): fix the path, or build it with `cargo build -p atrund`",
                p.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("at-rund")))
        .filter(|p| p.is_file());
    beside
        .or_else(|| crate::deno::find_on_path("at-rund"))
        .ok_or_else(|| {
            Failure::RunnerBinMissing(
                "at-rund (the runner) was not found next to at-run or on PATH: build it with `cargo build -p atrund` (or install it), or pass --runner-bin PATH".into(),
            )
        })
}

/// Fingerprint of the watched files: path, size and mtime of each.
fn scan(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let name = e.file_name();
                if d == dir && IGNORED.iter().any(|i| name == *i) {
                    continue;
                }
                stack.push(p);
            } else {
                out.push((p, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    out.sort();
    out
}

/// One line of output: JSON events with `--json`, text otherwise.
///
/// A closed stdout (the reader went away) must not end the loop with a panic: the runner would
/// then be left to `Drop` instead of the graceful stop below.
fn say(json_out: bool, event: serde_json::Value, text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = if json_out {
        writeln!(out, "{event}")
    } else {
        writeln!(out, "{text}")
    };
}

/// Sends SIGTERM to the runner when dropped (any exit path, a panic included), so at-rund stops
/// its instances itself. SIGKILL would leave them behind: an idle instance is frozen, and a
/// frozen process does not die of its parent-death signal.
struct TermOnDrop(Option<u32>);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// Picks the bundle's output out of at-rund's log lines (`stream=...`), with the project's
/// paths made relative (`lib/greeting.ts:2:9`, `words.py` for a file in a dev zip) and the
/// frames of the shims and the runtimes' internals dropped (for a Python frame, with the source
/// and caret lines that follow it).
struct BundleLines {
    project_url: String,
    /// Inside a dropped Python frame: its indented lines go too.
    in_dropped_frame: bool,
}

impl BundleLines {
    fn new(project_url: String) -> Self {
        Self {
            project_url,
            in_dropped_frame: false,
        }
    }

    fn next(&mut self, line: &str) -> Option<String> {
        if !line.contains("stream=") {
            return None;
        }
        let msg = line.split_once(": ").map(|(_, m)| m).unwrap_or(line);
        let msg = msg.split(" instance=").next().unwrap_or(msg);
        if let Some(frame) = msg.strip_prefix("  File \"") {
            // Python: the shim and the standard library are not the author's code.
            self.in_dropped_frame = frame.contains("at-run-exec") || frame.contains("/python3.");
            if self.in_dropped_frame {
                return None;
            }
            // A dev build is a zip: `"/anything/bundle.zip/words.py"` is the project's words.py.
            let shown = match frame.split_once("bundle.zip/") {
                Some((_, rest)) => format!("  File \"{rest}"),
                None => msg.to_string(),
            };
            return Some(shown);
        }
        if self.in_dropped_frame && msg.starts_with("    ") {
            return None;
        }
        self.in_dropped_frame = false;
        // The shims' frames (at-run-exec.ts, at-run-exec-node.cjs), Deno's and Node's
        // internals, and Deno's per-instance notice about request.signal.
        if msg.contains("at-run-exec")
            || msg.contains("(ext:")
            || msg.contains("node:internal/")
            || msg.contains("legacy behavior")
        {
            return None;
        }
        Some(msg.replace(&self.project_url, ""))
    }
}

/// What an at-rund log line of a refused egress connection says, for the author: the bundle's own
/// error is often opaque (Node's `fetch` only says "fetch failed" when the proxy refuses a
/// tunnel), the runner's line says which host and why.
fn egress_refusal(line: &str) -> Option<String> {
    if !line.contains("atrund::egress") || !line.contains("decision=\"deny\"") {
        return None;
    }
    let why = match line.split_once(" detail=") {
        Some((_, detail)) => detail.trim().to_string(),
        None => {
            let field = |k: &str| {
                line.split_once(&format!(" {k}=")).map(|(_, v)| {
                    v.split(' ')
                        .next()
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_string()
                })
            };
            format!(
                "{} ({})",
                field("dest").unwrap_or_else(|| "-".into()),
                field("reason").unwrap_or_else(|| "refused".into())
            )
        }
    };
    Some(format!("egress refused: {why}"))
}

/// Runs until at-rund exits or at-run gets SIGINT/SIGTERM.
pub async fn run(args: &DevArgs, deno: &Deno, json_out: bool) -> anyhow::Result<()> {
    let project = Project::load(&args.dir)?;
    let runner = locate_runner(args.runner_bin.as_deref())?;
    let runtime = project.file.runtime.clone();
    let node = match runtime.as_str() {
        "node" => Some(crate::node::Node::locate(args.node.as_deref())?),
        _ => None,
    };
    let python = match runtime.as_str() {
        "python" => Some(crate::python::Python::locate(args.python.as_deref())?),
        _ => None,
    };
    let out = project.dir.join(".at-run").join("dev");
    let opts = BuildOptions {
        out: Some(out.clone()),
        sourcemap: true,
        python: python.as_ref().map(|p| p.path().to_path_buf()),
        dev: true,
    };
    // The first build must succeed: there is nothing to serve otherwise.
    let built = build(deno, &project, &opts)?;
    say(
        json_out,
        json!({"event": "built", "millis": built.millis, "endpoints": built.manifest.endpoints.iter().map(|e| &e.name).collect::<Vec<_>>()}),
        &format!("built in {} ms", built.millis),
    );
    let data = project.dir.join(".at-run").join("dev-data");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let mut cmd = tokio::process::Command::new(&runner);
    cmd.arg("dev")
        .arg(&out)
        .args(["--name", &project.file.name])
        .args(["--runtime", &runtime]);
    // The runner offers Node and Python only when told where they are; a Deno project's runner
    // needs neither.
    match &node {
        Some(n) => cmd.env("ATRUND_NODE_PATH", n.path()),
        None => cmd.env_remove("ATRUND_NODE_PATH"),
    };
    match &python {
        Some(p) => cmd
            .args(["--entry", crate::pypack::ZIP_NAME])
            .env("ATRUND_PYTHON_PATH", p.path())
            .env("ATRUND_PYTHON_ALLOW_NONE", "true"),
        None => cmd
            .env_remove("ATRUND_PYTHON_PATH")
            .env_remove("ATRUND_PYTHON_ALLOW_NONE"),
    };
    let mut child = cmd
        .env("ATRUND_LISTEN", format!("127.0.0.1:{}", args.port))
        .env("ATRUND_DATA_DIR", &data)
        .env("ATRUND_DENO_PATH", deno.path())
        .env("ATRUND_POOL_ADMIN_LISTEN", "off")
        .env("ATRUND_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", runner.display()))?;
    let pid = child.id();
    let mut term_guard = TermOnDrop(pid);
    let stderr = child.stderr.take().context("at-rund stderr")?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
    let verbose = args.verbose;
    let mut bundle_lines = BundleLines::new(format!("file://{}/", project.dir.display()));
    // Blocking reader thread: tokio's child stderr is converted to a std handle for simplicity.
    let std_err = stderr.into_owned_fd().context("at-rund stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(std_err))
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line
                .contains("http api listening")
                .then(|| line.split("addr=").nth(1))
                .flatten()
            {
                let _ = addr_tx.send(addr.trim().to_string());
            }
            if verbose {
                eprintln!("[at-rund] {line}");
            } else if let Some(m) = bundle_lines.next(&line) {
                eprintln!("  | {m}");
            } else if let Some(m) = egress_refusal(&line) {
                eprintln!("  ! {m}");
            } else if line.contains(" ERROR ") {
                eprintln!("[at-rund] {line}");
            }
        }
    });
    let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .context("waiting for at-rund")?
        .map_err(|_| {
            Failure::RunnerUnreachable(format!(
                "at-rund did not start listening on 127.0.0.1:{} within 30 s (is the port taken? try --port 0 or --verbose)",
                args.port
            ))
        })?;
    let base = format!("http://{addr}/bundle/local/{}/latest", project.file.name);
    say(
        json_out,
        json!({"event": "ready", "url": base, "addr": addr, "runtime": runtime}),
        &format!(
            "serving {} ({runtime}) at {base}/{{endpoint}}\n{}\nwatching {} for changes (Ctrl-C to stop)",
            project.file.name,
            built
                .manifest
                .endpoints
                .iter()
                .map(|e| format!(
                    "  {} {base}/{}",
                    e.method.as_deref().unwrap_or("ANY"),
                    e.name
                ))
                .collect::<Vec<_>>()
                .join("\n"),
            project.dir.display()
        ),
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut seen = scan(&project.dir);
    // A change is built once a second scan, one poll later, finds the files as the first did:
    // a save caught between its truncate and its write (or halfway through an editor's several
    // writes) would otherwise build a broken bundle that a failing build then keeps serving.
    let mut settling = false;
    let result = loop {
        tokio::select! {
            st = child.wait() => {
                break Err(anyhow::anyhow!("at-rund stopped ({}); rerun with --verbose to see its log", st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())));
            }
            _ = sigterm.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tokio::time::sleep(POLL) => {
                let now = scan(&project.dir);
                if now != seen {
                    seen = now;
                    settling = true;
                    continue;
                }
                if !settling {
                    continue;
                }
                settling = false;
                let t = Instant::now();
                let p = match Project::load(&args.dir) {
                    Ok(p) => p,
                    Err(e) => {
                        say(json_out, json!({"event": "buildFailed", "message": format!("{e:#}")}), &format!("error: {e:#}"));
                        continue;
                    }
                };
                if p.file.runtime != runtime {
                    let m = format!(
                        "\"runtime\" in at-run.json is now {}, but this runner runs the bundle on {runtime}: restart `at-run dev` to switch",
                        p.file.runtime
                    );
                    say(json_out, json!({"event": "warning", "message": m}), &format!("warning: {m}"));
                }
                match build(deno, &p, &opts) {
                    Ok(b) => say(
                        json_out,
                        json!({"event": "rebuilt", "millis": t.elapsed().as_millis() as u64}),
                        &format!("rebuilt in {} ms{}", t.elapsed().as_millis(), b.warnings.iter().map(|w| format!("\n  warning: {w}")).collect::<String>()),
                    ),
                    Err(e) => say(
                        json_out,
                        json!({"event": "buildFailed", "message": format!("{e:#}")}),
                        &format!("error: {e:#}\n(still serving the last good build)"),
                    ),
                }
            }
        }
    };
    // A graceful stop, so at-rund stops its Deno instances.
    term_guard.0 = None;
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_output_lines_are_extracted() {
        let mut b = BundleLines::new("file:///p/".into());
        let l = "2026-01-01T00:00:00Z  WARN atrund_sandbox::none: endpoint 'x' threw: Error: boom instance=ab12 stream=\"stderr\"";
        assert_eq!(
            b.next(l).as_deref(),
            Some("endpoint 'x' threw: Error: boom")
        );
        let l = "WARN atrund_sandbox::none:     at greeting (file:///p/lib/g.ts:2:9) instance=a stream=\"stderr\"";
        assert_eq!(b.next(l).as_deref(), Some("    at greeting (lib/g.ts:2:9)"));
        assert_eq!(b.next("INFO listening addr=1"), None);
        for frame in [
            "    at serve (file:///x/at-run-exec-node.cjs:10:3)",
            "    at process.processTicksAndRejections (node:internal/process/task_queues:105:5)",
        ] {
            let l = format!("WARN atrund_sandbox::none: {frame} instance=a stream=\"stderr\"");
            assert_eq!(b.next(&l), None, "{frame}");
        }
    }

    #[test]
    fn egress_refusals_are_shown() {
        let l = "2026-12-06T03:19:54Z  INFO atrund::egress: egress bundle=\"8442-1\" dest=example.com:80 decision=\"deny\" reason=\"host_not_listed\" detail='example.com:80' is not in this bundle's net list (empty); add it to permissions.net in the manifest";
        assert_eq!(
            egress_refusal(l).as_deref(),
            Some("egress refused: 'example.com:80' is not in this bundle's net list (empty); add it to permissions.net in the manifest")
        );
        let l = "INFO atrund::egress: egress peer=127.0.0.1:5 dest=x.test:443 decision=\"deny\" reason=\"proxy_auth\"";
        assert_eq!(
            egress_refusal(l).as_deref(),
            Some("egress refused: x.test:443 (proxy_auth)")
        );
        let allowed = "INFO atrund::egress: egress bundle=\"b\" dest=a.test:443 ip=1.2.3.4 decision=\"allow\"";
        assert_eq!(egress_refusal(allowed), None);
    }

    #[test]
    fn python_tracebacks_keep_the_authors_frames() {
        let mut b = BundleLines::new("file:///p/".into());
        let traceback = [
            ("Traceback (most recent call last):", true),
            (
                "  File \"/w/at-run-exec-python.py\", line 300, in call",
                false,
            ),
            (
                "    out = await run_handler(get(\"handler\"), value, ctx)",
                false,
            ),
            (
                "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
                false,
            ),
            (
                "  File \"/usr/lib/python3.11/asyncio/threads.py\", line 25, in to_thread",
                false,
            ),
            (
                "    return await loop.run_in_executor(None, func_call)",
                false,
            ),
            (
                "  File \"/bundle/bundle.zip/main.py\", line 32, in <lambda>",
                true,
            ),
            ("    fail = {\"handler\": lambda i, c: words.boom(i)}", true),
            (
                "  File \"/bundle/bundle.zip/words.py\", line 2, in boom",
                true,
            ),
            ("    raise ValueError(\"bad \" + n)", true),
            ("ValueError: bad ada", true),
        ];
        let shown: Vec<String> = traceback
            .iter()
            .filter_map(|(l, _)| {
                b.next(&format!(
                    "WARN atrund_sandbox::container: {l} instance=a stream=\"stderr\""
                ))
            })
            .collect();
        let want: Vec<String> = traceback
            .iter()
            .filter(|(_, kept)| *kept)
            .map(|(l, _)| l.replace("/bundle/bundle.zip/", ""))
            .collect();
        assert_eq!(shown, want);
    }

    #[test]
    fn scan_ignores_outputs() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("dist")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("lib")).expect("mkdir");
        std::fs::write(d.path().join("dist/main.js"), "x").expect("write");
        std::fs::write(d.path().join("lib/a.ts"), "x").expect("write");
        let s = scan(d.path());
        assert_eq!(s.len(), 1);
        assert!(s[0].0.ends_with("lib/a.ts"));
    }
}
