//! One microVM instance as one host process: `sandbox-init vmm <plan.json>`, which the process
//! layer starts, places in the instance's cgroup and kills exactly as it does a runtime process.
//! It starts the vsock backend (`vhost-device-vsock` for QEMU) and the VMM as its own children
//! (same process group, same cgroup, killed with the launcher), waits for the guest agent to
//! answer on vsock, and hands it the instance ([`guest::Start`], with the launcher's own
//! environment as the instance's: secrets never go on a command line). From then on it is the
//! runtime process's stand-in:
//!
//! - the agent's `o`/`e` events are its stdout and stderr lines (the shim's ready signal among
//!   them), so the process layer's output relay, masking and ready wait apply unchanged;
//! - `go` on its stdin goes on to the agent; SIGTERM becomes `term`;
//! - when the instance exits it writes the guest cgroup's breach counters to the plan's
//!   `exit_report` (the reaper adds them to the host cgroup's), stops the VM and exits with the
//!   instance's status.
//!
//! A VM that ends first, an agent that refuses the start or closes the channel, or a boot past
//! the deadline ends the launcher with status 125 and a reason on stderr (with the tail of the
//! VMM's log and the guest console).
//!
//! Owns: the VMM's and vsock backend's lifetimes and the control channel's host end. Must not:
//! build command lines (the plan carries them, built by `microvm`), carry calls (the process
//! layer connects through the vsock socket itself) or touch the instance's cgroup.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cgroup::Counters;
use crate::guest::{self, Event};

/// The subcommand of `sandbox-init`.
pub const VMM_ARG: &str = "vmm";
/// Longest exit report read back.
const MAX_REPORT: u64 = 4096;
/// Log and console bytes shown when the VM fails.
const TAIL: u64 = 2048;
/// How long one attempt to reach the guest's agent may wait for the VMM's answer.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// Longest event line taken from the guest (the agent cuts output lines at 64 KiB).
const MAX_EVENT_LINE: u64 = 1024 * 1024;

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// Everything the launcher does, written by the `microvm` executor into the work dir. It holds
/// no secret: those are the launcher's environment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPlan {
    /// The vsock backend, started first (`vhost-device-vsock`); `None` for a VMM with its own.
    pub vsock_backend: Option<Program>,
    /// The socket the backend serves for the VMM; waited for before the VMM starts.
    pub backend_socket: Option<PathBuf>,
    pub vmm: Program,
    /// The hybrid vsock socket (`CONNECT <port>`).
    pub uds: PathBuf,
    /// The instance, with `env` empty (the launcher's environment is sent instead) and each
    /// file's `len` filled in when it is read.
    pub start: guest::Start,
    /// Host paths of `start.files`, in the same order.
    pub sources: Vec<PathBuf>,
    /// From spawn to the agent's answer.
    pub boot_timeout_ms: u64,
    /// Where the guest's breach counters go when the instance exits.
    pub exit_report: PathBuf,
    /// The VMM's and the backend's stderr.
    pub log: PathBuf,
    /// The guest's serial console, if the VMM writes one.
    pub console: Option<PathBuf>,
}

/// The guest counters a launcher reported at `path`; zero when there is no report (the VM did
/// not get as far as the instance's exit). The daemon reads it from a dir the instances' uid
/// owns: a symlink put there is not followed.
pub(crate) fn read_exit_report(path: &Path) -> Counters {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| f.take(MAX_REPORT).read_to_string(&mut text))
        .is_ok();
    if !read {
        return Counters::default();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::warn!(report = %path.display(), error = %e, "the microVM's exit report does not parse");
        Counters::default()
    })
}

fn fail(msg: String) -> ExitCode {
    eprintln!("vmm: {msg}");
    ExitCode::from(125)
}

/// Entry point: `args` after `vmm`: the plan's path.
pub fn main(args: &[String]) -> ExitCode {
    let [path] = args else {
        return fail("usage: sandbox-init vmm <plan.json>".into());
    };
    let plan: VmPlan = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot read the plan {path}: {e}")),
    };
    // One thread: the children's PR_SET_PDEATHSIG follows the thread that forked them.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    rt.block_on(run(plan))
}

/// The VM's processes, stopped when dropped.
struct Vm {
    backend: Option<Child>,
    vmm: Option<Child>,
}

impl Vm {
    async fn stop(&mut self) {
        for c in [self.vmm.as_mut(), self.backend.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

fn spawn(p: &Program, log: &Path) -> Result<Child, String> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut cmd = Command::new(&p.path);
    cmd.args(&p.args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    // Dies with the launcher, whatever kills it.
    crate::sys::install(&mut cmd, Default::default());
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", p.path.display()))
}

/// The last bytes of a file, for a failure message (only they are read: a console grows).
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    let _ = f
        .seek(SeekFrom::Start(len.saturating_sub(TAIL)))
        .and_then(|_| f.take(TAIL).read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).trim().to_string()
}

impl VmPlan {
    fn failure(&self, what: String) -> String {
        let mut msg = what;
        let log = tail(&self.log);
        if !log.is_empty() {
            msg.push_str(&format!("; VMM log: {}", log.replace('\n', " | ")));
        }
        if let Some(c) = &self.console {
            let c = tail(c);
            if !c.is_empty() {
                msg.push_str(&format!("; guest console: {}", c.replace('\n', " | ")));
            }
        }
        msg
    }
}

async fn run(plan: VmPlan) -> ExitCode {
    let mut vm = Vm {
        backend: None,
        vmm: None,
    };
    let code = match drive(&plan, &mut vm).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(125)),
        Err(e) => fail(plan.failure(e)),
    };
    vm.stop().await;
    code
}

async fn drive(plan: &VmPlan, vm: &mut Vm) -> Result<i32, String> {
    let started = Instant::now();
    let deadline = Duration::from_millis(plan.boot_timeout_ms);
    let mut start = plan.start.clone();
    if start.files.len() != plan.sources.len() {
        return Err("the plan's files and sources differ in number".into());
    }
    let mut contents = Vec::with_capacity(plan.sources.len());
    for (f, src) in start.files.iter_mut().zip(&plan.sources) {
        let bytes =
            std::fs::read(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        f.len = bytes.len() as u64;
        contents.push(bytes);
    }
    // The instance's environment is this process's (the executor set it; nothing else is in it).
    start.env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();

    if let Some(b) = &plan.vsock_backend {
        vm.backend = Some(spawn(b, &plan.log)?);
    }
    if let Some(sock) = &plan.backend_socket {
        while !sock.exists() {
            if let Some(Ok(Some(s))) = vm.backend.as_mut().map(|c| c.try_wait()) {
                return Err(format!("the vsock backend exited ({s}) before it listened"));
            }
            if started.elapsed() > deadline {
                return Err("the vsock backend did not listen in time".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The agent says it listens by connecting here; only then is a CONNECT sent (see
    // guest::READY_PORT).
    let ready_path = atrund_microvm::vsock::guest_port_path(&plan.uds, guest::READY_PORT);
    let _ = std::fs::remove_file(&ready_path);
    let ready = tokio::net::UnixListener::bind(&ready_path)
        .map_err(|e| format!("cannot listen on {}: {e}", ready_path.display()))?;
    vm.vmm = Some(spawn(&plan.vmm, &plan.log)?);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "the guest agent did not say it was ready within {} ms of the VM's start",
                plan.boot_timeout_ms
            ));
        }
        match tokio::time::timeout(left.min(Duration::from_millis(500)), ready.accept()).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => return Err(format!("{}: {e}", ready_path.display())),
            Err(_) => {
                if let Some(Ok(Some(s))) = vm.vmm.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("the VM ended ({s}) before its agent answered"));
                }
            }
        }
    }
    drop(ready);
    let _ = std::fs::remove_file(&ready_path);

    // The agent listens now; a CONNECT may still need a retry while the backend catches up.
    let control = loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "the guest agent did not answer within {} ms of the VM's start",
                plan.boot_timeout_ms
            ));
        }
        // Each attempt briefly: a CONNECT sent before the guest's vsock driver is up can go
        // unanswered for good, so waiting on one attempt could use up the whole deadline.
        let attempt = left.min(CONNECT_ATTEMPT);
        match atrund_microvm::vsock::connect(&plan.uds, guest::CONTROL_PORT, attempt).await {
            Ok(s) => break s,
            Err(_) => {
                if let Some(Ok(Some(s))) = vm.vmm.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("the VM ended ({s}) before its agent answered"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (r, mut w) = tokio::io::split(control);
    let refs: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    guest::send_start(&mut w, &start, &refs)
        .await
        .map_err(|e| format!("sending the instance to the guest: {e}"))?;
    drop(contents);

    let mut events = BufReader::new(r);
    let mut event = Vec::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let Some(vmm) = vm.vmm.as_mut() else {
        return Err("the VMM is not running".into());
    };
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(l)) if l == "go" => {
                    w.write_all(b"go\n").await.map_err(|e| format!("sending go: {e}"))?;
                }
                Ok(Some(_)) => {}
                // The process layer closes stdin after `go`.
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = term.recv() => {
                let _ = w.write_all(b"term\n").await;
            }
            ev = next_event(&mut events, &mut event) => match ev {
                Ok(Some(line)) => match Event::decode(&line) {
                    Some(Event::Stdout(l)) => {
                        let _ = out.write_all(format!("{l}\n").as_bytes()).await;
                        let _ = out.flush().await;
                    }
                    Some(Event::Stderr(l)) => {
                        let _ = err.write_all(format!("{l}\n").as_bytes()).await;
                    }
                    Some(Event::Exited(code, counters)) => {
                        let json = serde_json::to_vec(&counters).map_err(|e| e.to_string())?;
                        std::fs::write(&plan.exit_report, json).map_err(|e| {
                            format!("cannot write {}: {e}", plan.exit_report.display())
                        })?;
                        return Ok(code);
                    }
                    Some(Event::Failed(why)) => {
                        return Err(format!("the guest agent could not start the instance: {why}"));
                    }
                    None => return Err(format!("the guest agent sent an unknown event: {line:?}")),
                },
                Ok(None) | Err(_) => {
                    return Err("the guest agent closed the control channel before the instance exited".into());
                }
            },
            status = vmm.wait() => {
                let s = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(format!("the VM ended ({s}) before its instance did"));
            }
        }
    }
}

/// The next event line from the agent, without its newline; `None` at the end of the channel.
/// A line past [`MAX_EVENT_LINE`] is an error: the guest is not speaking the protocol.
async fn next_event<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let n = r.take(MAX_EVENT_LINE + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 > MAX_EVENT_LINE {
        return Err(std::io::Error::other("an event line over 1 MiB"));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(buf).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn event_lines_are_read_whole_and_capped() {
        let mut buf = Vec::new();
        let mut r = &b"o hi\nx 0 1 2\nlast"[..];
        assert_eq!(
            next_event(&mut r, &mut buf).await.unwrap().as_deref(),
            Some("o hi")
        );
        assert_eq!(
            next_event(&mut r, &mut buf).await.unwrap().as_deref(),
            Some("x 0 1 2")
        );
        assert_eq!(
            next_event(&mut r, &mut buf).await.unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(next_event(&mut r, &mut buf).await.unwrap(), None);
        let long = vec![b'o'; MAX_EVENT_LINE as usize + 10];
        assert!(next_event(&mut &long[..], &mut buf).await.is_err());
    }

    #[test]
    fn the_exit_report_is_not_read_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere.json");
        std::fs::write(&target, r#"{"oom_kills":7,"pids_refused":0}"#).unwrap();
        let link = d.path().join("exit.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_exit_report(&link), Counters::default());
    }

    #[test]
    fn the_exit_report_round_trips_and_its_absence_counts_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit.json");
        assert_eq!(read_exit_report(&p), Counters::default());
        let c = Counters {
            oom_kills: 1,
            pids_refused: 2,
        };
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(read_exit_report(&p), c);
        std::fs::write(&p, "{oops").unwrap();
        assert_eq!(read_exit_report(&p), Counters::default());
    }
}
