//! Spare launchers (container backend, cgroup v1): a few processes started ahead, each already
//! inside a cgroup of its own, that become an instance's bwrap when one starts.
//!
//! Why: on cgroup v1, a process's first write to `cgroup.procs` waits for an RCU grace period
//! (~10 ms here). A container instance must be inside its cgroup before bwrap forks (bwrap's
//! PID 1 and Deno would stay outside a later move, and bwrap's cgroup namespace is rooted where
//! bwrap is when it forks), so the join used to be in series before every start. A spare pays it
//! in the background: the refill thread creates a cgroup (`spare-<n>`, no limits yet), spawns the
//! launcher (`<init program> <init args> --launch`: at-rund's hidden `sandbox-init --launch`)
//! joined to it before exec, switched to the instance uid, in its own process group, stdio piped,
//! and parks it reading its stdin.
//!
//! Taking one ([`SpareLaunchers::take`]): the cgroup is renamed to the instance's (`i-<id>`) and
//! its limits are written ([`CgroupManager::adopt`]), then the launcher is sent the command
//! ([`start`]): it sets RLIMIT_NOFILE, RLIMIT_FSIZE and RLIMIT_CORE as the spawn would have and
//! execs bwrap, whose pid it keeps. Everything bwrap starts is inside the instance's cgroup from
//! its first instruction, exactly as with the join before exec. The queue is refilled once the
//! start is over (ready or failed), so parking the next launcher does not compete with it.
//!
//! Owns: the refill thread, the parked launchers and their cgroups until taken, the request
//! format on the launcher's stdin. Must not: build the command (the backend does), or hand out a
//! launcher whose cgroup was not renamed and limited.
//!
//! Clean-up: launchers are killed on drop (`kill_on_drop`, and `PR_SET_PDEATHSIG` follows the
//! refill thread, which ends with the queue); their cgroups are removed on drop and swept at
//! start-up after a crash like an instance's.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use tokio::process::Child;

use crate::cgroup::{CgroupLimits, CgroupManager, InstanceCgroup};
use crate::{sys, RunAs, SandboxError};

/// How many launchers wait at most. Two: a start and the one right after it do not wait for the
/// refill (~15 ms each); a burst beyond that starts the usual way.
pub(crate) const SPARES: usize = 2;
/// The argument after the init program's own that makes it a launcher.
pub(crate) const LAUNCH_ARG: &str = "--launch";
/// The number in the next spare cgroup's name.
static NEXT_SPARE: AtomicU64 = AtomicU64::new(1);
/// Upper bound of a request, against a garbled length.
const MAX_REQUEST: usize = 1 << 20;

/// What a launcher is started as.
#[derive(Debug, Clone)]
pub(crate) struct LauncherProgram {
    pub program: PathBuf,
    /// Arguments before [`LAUNCH_ARG`] (`["sandbox-init"]` in the daemon).
    pub args: Vec<String>,
    pub run_as: Option<RunAs>,
}

struct Spare {
    child: Child,
    cgroup: InstanceCgroup,
}

/// A launcher handed to one instance: the cgroup carries the instance's name and limits.
pub(crate) struct Taken {
    pub child: Child,
    pub cgroup: InstanceCgroup,
}

/// The queue of parked launchers and the thread that refills it.
pub(crate) struct SpareLaunchers {
    ready: Arc<Mutex<VecDeque<Spare>>>,
    refill: Mutex<mpsc::Sender<()>>,
    taken: AtomicU64,
}

impl std::fmt::Debug for SpareLaunchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareLaunchers")
            .field("ready", &self.ready())
            .field("taken", &self.taken())
            .finish()
    }
}

impl SpareLaunchers {
    /// Starts the refill thread, which fills the queue at once. `None` where spares cannot be
    /// used: no tokio runtime here (the launchers are tokio children), cgroup v2 (no rename), or
    /// the thread could not start.
    pub(crate) fn start(cgroups: Arc<CgroupManager>, launcher: LauncherProgram) -> Option<Self> {
        if cgroups.version() != Some(crate::CgroupVersion::V1) {
            return None;
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let ready = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&ready);
        std::thread::Builder::new()
            .name("spare-launchers".into())
            .spawn(move || {
                let _rt = handle.enter();
                refill_loop(&rx, &weak, &cgroups, &launcher);
            })
            .map_err(|e| tracing::warn!(error = %e, "spare launchers: no refill thread"))
            .ok()?;
        let _ = tx.send(());
        Some(Self {
            ready,
            refill: Mutex::new(tx),
            taken: AtomicU64::new(0),
        })
    }

    /// Launchers waiting now.
    pub(crate) fn ready(&self) -> usize {
        self.ready.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Instances started from a spare so far.
    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// A parked launcher for instance `instance_id`, its cgroup renamed and limited; `None` when
    /// none is ready (or the one tried could not be adopted: it is dropped, and the caller
    /// starts the usual way). The caller calls [`SpareLaunchers::refill`] once its start is
    /// over. Blocking for a few file writes.
    pub(crate) fn take(
        &self,
        cgroups: &CgroupManager,
        instance_id: &str,
        limits: CgroupLimits,
    ) -> Option<Taken> {
        let taken = loop {
            let Some(mut spare) = self.ready.lock().ok()?.pop_front() else {
                break None;
            };
            // One that died while parked (killed by hand, OOM of the host) is skipped.
            if !matches!(spare.child.try_wait(), Ok(None)) {
                continue;
            }
            match cgroups.adopt(spare.cgroup, instance_id, limits) {
                Ok(cgroup) => {
                    break Some(Taken {
                        child: spare.child,
                        cgroup,
                    })
                }
                Err(e) => {
                    tracing::warn!(instance = instance_id, error = %e, "spare launcher not used");
                    break None;
                }
            }
        };
        if taken.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Tops the queue up in the background. Called once a start is over, not when it takes a
    /// launcher: parking one execs a program (~2 ms of CPU) right when the start's bwrap and
    /// Deno want the CPU (one, when at-rund is pinned), which measured +8 ms on the start.
    pub(crate) fn refill(&self) {
        if let Ok(tx) = self.refill.lock() {
            let _ = tx.send(());
        }
    }
}

/// Runs until the queue is gone: on each request, tops the queue up to [`SPARES`]. Spawning
/// here, not on a tokio thread: the spawn waits for the child's cgroup join (the grace period),
/// and the launchers' parent-death signal follows this thread, which lives as long as the queue.
fn refill_loop(
    rx: &mpsc::Receiver<()>,
    ready: &Weak<Mutex<VecDeque<Spare>>>,
    cgroups: &CgroupManager,
    launcher: &LauncherProgram,
) {
    while rx.recv().is_ok() {
        loop {
            let Some(q) = ready.upgrade() else {
                return;
            };
            if q.lock().map(|q| q.len() >= SPARES).unwrap_or(true) {
                break;
            }
            // Process-wide: two executors on one manager never reuse a name (a namesake's dir
            // would be taken for a leftover and removed with its launcher).
            let n = NEXT_SPARE.fetch_add(1, Ordering::Relaxed);
            match spawn_spare(cgroups, launcher, n) {
                Ok(s) => {
                    if let Ok(mut q) = q.lock() {
                        q.push_back(s);
                    }
                }
                Err(e) => {
                    // Starts go the usual way meanwhile; the next take asks again.
                    tracing::warn!(error = %e, "could not park a spare launcher");
                    break;
                }
            }
        }
    }
}

fn spawn_spare(
    cgroups: &CgroupManager,
    launcher: &LauncherProgram,
    n: u64,
) -> Result<Spare, SandboxError> {
    let cgroup = cgroups.create_spare(n).unwrap_or_else(|| {
        Err(SandboxError::StartFailed(
            "spare cgroups need cgroup v1".into(),
        ))
    })?;
    let t = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new(&launcher.program);
    cmd.args(&launcher.args)
        .arg(LAUNCH_ARG)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    sys::install(
        &mut cmd,
        sys::ChildSetup {
            procs: cgroup.procs_files(),
            run_as: launcher.run_as,
            ..Default::default()
        },
    );
    let child = cmd.spawn().map_err(|e| {
        SandboxError::StartFailed(format!(
            "could not start a spare launcher '{}': {e}",
            launcher.program.display()
        ))
    })?;
    tracing::debug!(us = t.elapsed().as_micros() as u64, "spare launcher parked");
    Ok(Spare { child, cgroup })
}

/// Hands the command `cmd` stands for to the taken launcher: its program, arguments and
/// environment (`cmd` must have cleared the environment: only variables set on it are sent) with
/// RLIMIT_NOFILE `nofile` and RLIMIT_FSIZE `fsize`. The launcher's stdio, process group,
/// identity and cgroup were set when it was spawned (stdio piped, its own group, the
/// executor's `RunAs`, the spare cgroup now renamed); `cmd`'s own settings of those are not
/// looked at. Bytes written to its stdin afterwards reach the program it execs.
pub(crate) async fn start(
    child: &mut Child,
    cmd: &tokio::process::Command,
    nofile: u64,
    fsize: u64,
) -> Result<(), SandboxError> {
    use tokio::io::AsyncWriteExt;
    let std = cmd.as_std();
    let env: Vec<OsString> = std
        .get_envs()
        .filter_map(|(k, v)| {
            v.map(|v| {
                let mut kv = k.to_os_string();
                kv.push("=");
                kv.push(v);
                kv
            })
        })
        .collect();
    let req = encode(
        nofile,
        fsize,
        std.get_program(),
        &std.get_args().collect::<Vec<_>>(),
        &env,
    );
    let stdin = child
        .stdin
        .as_mut()
        .ok_or_else(|| SandboxError::StartFailed("the spare launcher has no stdin".into()))?;
    stdin.write_all(&req).await.map_err(|e| {
        SandboxError::StartFailed(format!(
            "the spare launcher did not take its command ({e}); the runner's log has the details"
        ))
    })
}

/// `<u32 LE length><nofile>\0<fsize>\0<argc>\0<program>\0<args…\0><K=V\0…>`.
fn encode(nofile: u64, fsize: u64, program: &OsStr, args: &[&OsStr], env: &[OsString]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |b: &[u8]| {
        body.extend_from_slice(b);
        body.push(0);
    };
    field(nofile.to_string().as_bytes());
    field(fsize.to_string().as_bytes());
    field(args.len().to_string().as_bytes());
    field(program.as_bytes());
    for a in args {
        field(a.as_bytes());
    }
    for kv in env {
        field(kv.as_bytes());
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

/// A decoded request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    nofile: u64,
    fsize: u64,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

fn decode(body: &[u8]) -> Result<Request, String> {
    let body = body
        .strip_suffix(&[0])
        .ok_or("the request does not end with a NUL")?;
    let mut fields = body.split(|b| *b == 0);
    let mut num = |what: &str| -> Result<u64, String> {
        fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|s| s.parse().ok())
            .ok_or(format!("no {what} in the request"))
    };
    let (nofile, fsize, argc) = (num("nofile")?, num("fsize")?, num("argc")?);
    let mut os = |what: &str| {
        fields
            .next()
            .map(|f| OsString::from_vec(f.to_vec()))
            .ok_or(format!("no {what} in the request"))
    };
    let program = os("program")?;
    let args = (0..argc)
        .map(|_| os("argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let env = fields
        .map(|kv| {
            let at = kv
                .iter()
                .position(|b| *b == b'=')
                .ok_or("an env entry without '='")?;
            Ok((
                OsString::from_vec(kv[..at].to_vec()),
                OsString::from_vec(kv[at + 1..].to_vec()),
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Request {
        nofile,
        fsize,
        program,
        args,
        env,
    })
}

/// The launcher (`sandbox-init --launch`): reads one request from stdin, exactly its bytes (what
/// follows is the program's), sets the limits and execs the program. Returns only on failure.
pub(crate) fn launcher_main() -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sandbox-init --launch: {msg}");
        ExitCode::from(125)
    };
    // Unbuffered: a buffered reader could swallow the `go` meant for the shim.
    let mut stdin = std::fs::File::from(match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return fail(format!("stdin: {e}")),
    });
    let mut len = [0u8; 4];
    if let Err(e) = stdin.read_exact(&mut len) {
        // EOF before a request: the queue was dropped; nothing to report.
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ExitCode::SUCCESS
        } else {
            fail(format!("reading the request: {e}"))
        };
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST {
        return fail(format!("a request of {len} bytes is too long"));
    }
    let mut body = vec![0u8; len];
    if let Err(e) = stdin.read_exact(&mut body) {
        return fail(format!("reading the request: {e}"));
    }
    drop(stdin);
    let req = match decode(&body) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if let Err(e) = sys::limit_self(req.nofile, req.fsize) {
        return fail(format!("setrlimit: {e}"));
    }
    let err = std::process::Command::new(&req.program)
        .args(&req.args)
        .env_clear()
        .envs(req.env)
        .exec();
    fail(format!(
        "cannot run {}: {err}",
        req.program.to_string_lossy()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let env = [
            OsString::from("A=1"),
            OsString::from("B=x=y"),
            OsString::from("E="),
        ];
        let args = [OsStr::new("--x"), OsStr::new(""), OsStr::new("a b")];
        let req = encode(64, 1 << 30, OsStr::new("/usr/bin/bwrap"), &args, &env);
        let len = u32::from_le_bytes(req[..4].try_into().unwrap()) as usize;
        assert_eq!(len, req.len() - 4);
        let r = decode(&req[4..]).unwrap();
        assert_eq!(r.nofile, 64);
        assert_eq!(r.fsize, 1 << 30);
        assert_eq!(r.program, "/usr/bin/bwrap");
        assert_eq!(r.args, ["--x", "", "a b"]);
        let env: Vec<(&str, &str)> = r
            .env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "x=y"), ("E", "")]);
        let no_env = encode(1, 2, OsStr::new("p"), &[], &[]);
        assert!(decode(&no_env[4..]).unwrap().env.is_empty());
    }

    #[test]
    fn garbled_requests_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(b"1\x002\x00").is_err(), "no argc");
        assert!(
            decode(b"1\x002\x002\x00p\x00a\x00").is_err(),
            "one argument short"
        );
        assert!(decode(b"1\x002\x000\x00p\x00NOEQUALS\x00").is_err());
        assert!(decode(b"x\x002\x000\x00p\x00").is_err());
    }
}
