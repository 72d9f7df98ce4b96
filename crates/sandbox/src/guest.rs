//! The guest agent (issue 17, docs/microvm.md): `sandbox-init guest`, PID 1 of a microVM guest,
//! and for tests a local process. It takes one instance over a control connection, runs it as
//! the container does (a `sandbox-init` child: Landlock, seccomp, then Deno with the shim; in a
//! VM as uid 65534 in a cgroup of the guest's own, with the instance's rlimits), and carries the
//! instance's traffic: calls from the host to the shim's Unix socket, and the bundle's egress
//! from the forwarder inside to the host's egress proxy.
//!
//! The control protocol ([`Start`], [`Event`]), host → agent:
//! 1. one JSON line, a [`Start`]: the init config, the environment (secrets included: never on a
//!    command line or in the kernel's), and the files to write (the bundle, the shim), then each
//!    file's bytes in order;
//! 2. `go\n`, passed to the instance's stdin (the shim waits for it);
//! 3. later `term\n` (SIGTERM to the instance), or the connection's end (SIGKILL).
//!
//! Agent → host: `o <line>` and `e <line>` for the instance's stdout and stderr lines, then
//! `x <status>` when it has exited, or `f <reason>` when it could not start.
//!
//! Where the three channels are ([`Transport`]): in a VM, vsock ports 1024 (control) and 1025
//! (calls) and the host's CID 2 port 3128 (egress); in tests, Unix sockets in one directory:
//! `control.sock`, `calls.sock`, and `egress.sock` on the host side.
//!
//! As a VM's PID 1 (`--vm`) it first makes the guest usable: mounts `/proc`, `/sys`, `/dev`,
//! `/tmp` and `/run`, loads the kernel modules listed in `/lib/modules/order` (virtio and vsock,
//! for a stock kernel), and brings `lo` up; when the instance has exited it ends the VM.
//!
//! Owns: the protocol and the splices. Must not: decide the instance's policy (the host's
//! [`crate::init_config::InitConfig`] says it), or confine itself (the child is confined; the agent
//! must keep its sockets).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cgroup::Counters;
use crate::init_config::InitConfig;

/// Largest start line accepted.
const MAX_START_LINE: usize = 1024 * 1024;
/// Most bytes of files one start may carry (a bundle is capped far below).
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest instance output line relayed; longer ones are cut.
const MAX_LINE: usize = 64 * 1024;

/// Control channel file name in the Unix transport.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Calls channel file name in the Unix transport.
pub const CALLS_SOCKET: &str = "calls.sock";
/// The host's egress end in the Unix transport.
pub const EGRESS_SOCKET: &str = "egress.sock";

/// What the host sends first.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The instance's init config, as the container backend writes it (its paths are the
    /// guest's). Its `proxy.socket` is where the agent listens for the forwarder's
    /// connections and carries them to the host.
    pub init: InitConfig,
    /// The instance's environment (its secrets included).
    pub env: Vec<(String, String)>,
    /// Files written before the instance starts, their bytes following the line in this order.
    pub files: Vec<FileSpec>,
    /// The shim's Unix socket, where calls are carried to.
    pub shim_socket: PathBuf,
    /// The instance's limits, applied inside the guest; `None`: none.
    #[serde(default)]
    pub limits: Option<GuestLimits>,
    /// Arguments before the config path when the agent runs the instance's init, which is its
    /// own binary: `["sandbox-init"]` when that is at-rund, none for `atrund-sandbox-init`.
    #[serde(default)]
    pub init_args: Vec<String>,
}

/// Limits the agent applies to the instance. In a VM, memory and tasks go into a cgroup of the
/// guest's own (`/sys/fs/cgroup/instance`), whose breaches it reports when the instance exits;
/// the file limits are the instance's rlimits in either transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLimits {
    pub memory_mib: u64,
    pub pids: u64,
    pub open_files: u64,
    pub max_file_bytes: u64,
}

/// One file of a [`Start`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// An absolute path with no `..`.
    pub path: PathBuf,
    pub len: u64,
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(String),
    Stderr(String),
    /// The instance exited: the status as a shell reports it (128 + signal), and what its
    /// guest cgroup counted (zero outside a VM).
    Exited(i32, Counters),
    /// The instance could not be started.
    Failed(String),
}

impl Event {
    /// One line of the protocol, without its newline.
    pub fn encode(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Event::Stdout(l) => format!("o {}", one_line(l)),
            Event::Stderr(l) => format!("e {}", one_line(l)),
            Event::Exited(c, n) => format!("x {c} {} {}", n.oom_kills, n.pids_refused),
            Event::Failed(r) => format!("f {}", one_line(r)),
        }
    }

    /// Reads one line; `None` for anything else.
    pub fn decode(line: &str) -> Option<Event> {
        let (tag, rest) = line.split_at_checked(2)?;
        Some(match tag {
            "o " => Event::Stdout(rest.to_string()),
            "e " => Event::Stderr(rest.to_string()),
            "x " => {
                // `x <code>`, or `x <code> <oom kills> <refused forks>`.
                let f: Vec<&str> = rest.split_ascii_whitespace().collect();
                let code = f.first()?.parse().ok()?;
                let n = match f[1..] {
                    [] => Counters::default(),
                    [oom, pids] => Counters {
                        oom_kills: oom.parse().ok()?,
                        pids_refused: pids.parse().ok()?,
                    },
                    _ => return None,
                };
                Event::Exited(code, n)
            }
            "f " => Event::Failed(rest.to_string()),
            _ => return None,
        })
    }
}

/// Writes a start: its line, then the files' bytes (`contents`, in the order of `start.files`).
pub async fn send_start<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    start: &Start,
    contents: &[&[u8]],
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(start).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    for c in contents {
        w.write_all(c).await?;
    }
    w.flush().await
}

/// Where the agent's three channels are.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Unix sockets in one directory (tests, and a host-side stand-in).
    Unix(PathBuf),
    /// vsock, as the VM's PID 1: control and calls on [`CONTROL_PORT`] and [`CALLS_PORT`],
    /// egress to the host's [`EGRESS_PORT`]; the agent's own files in the directory.
    Vm(PathBuf),
}

/// vsock port of the control channel.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the calls channel.
pub const CALLS_PORT: u32 = 1025;
/// The host's vsock port the guest's egress goes to.
pub const EGRESS_PORT: u32 = 3128;
/// The host's vsock port the agent connects to once it listens: the launcher sends its first
/// `CONNECT` only then. Connecting in earlier, before the guest's vsock driver was up, was seen
/// to leave a guest that never answered (under load, about one boot in twenty).
pub const READY_PORT: u32 = 1026;
/// The host's CID, seen from a guest.
const HOST_CID: u32 = 2;

/// A listening channel.
enum Listener {
    Unix(UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

/// Where a channel's connections go.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Vsock(u32, u32),
}

trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(match self {
            Listener::Unix(l) => Box::new(l.accept().await?.0),
            Listener::Vsock(l) => Box::new(l.accept().await?.0),
        })
    }
}

impl Target {
    async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(match self {
            Target::Unix(p) => Box::new(UnixStream::connect(p).await?),
            Target::Vsock(cid, port) => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
        })
    }

    fn describe(&self) -> String {
        match self {
            Target::Unix(p) => p.display().to_string(),
            Target::Vsock(cid, port) => format!("vsock {cid}:{port}"),
        }
    }
}

fn fail(msg: String) -> ExitCode {
    eprintln!("sandbox-init guest: {msg}");
    ExitCode::from(125)
}

/// Entry point: `args` after `guest`: `--unix <dir>`, or `--vm` as a VM's PID 1.
pub fn main(args: &[String]) -> ExitCode {
    let transport = match args {
        [flag, dir] if flag == "--unix" => Transport::Unix(PathBuf::from(dir)),
        [flag] if flag == "--vm" => {
            if let Err(e) = vm_setup() {
                eprintln!("sandbox-init guest: {e}");
                power_off();
            }
            Transport::Vm(PathBuf::from("/run/agent"))
        }
        _ => return fail("usage: sandbox-init guest --unix <dir> | --vm".into()),
    };
    let vm = matches!(transport, Transport::Vm(_));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    let out = match rt.block_on(serve(transport)) {
        Ok(code) => code,
        Err(e) => fail(e),
    };
    if vm {
        power_off();
    }
    out
}

/// What a VM's PID 1 does before anything else: file systems, modules, `lo`.
fn vm_setup() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    for (what, at, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(at);
        mount(Some(what), at, Some(fstype), MsFlags::MS_NOSUID, none)
            .map_err(|e| format!("mount {at}: {e}"))?;
    }
    if let Ok(order) = std::fs::read_to_string("/lib/modules/order") {
        for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = Path::new("/lib/modules").join(format!("{name}.ko"));
            let f = std::fs::File::open(&path)
                .map_err(|e| format!("module {}: {e}", path.display()))?;
            match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(format!("loading module {name}: {e}")),
            }
        }
    }
    crate::sys::loopback_up().map_err(|e| format!("lo up: {e}"))?;
    let _ = std::fs::create_dir_all(GUEST_CGROUP_ROOT);
    mount(
        Some("cgroup2"),
        GUEST_CGROUP_ROOT,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mount {GUEST_CGROUP_ROOT}: {e}"))?;
    std::fs::create_dir_all("/run/agent").map_err(|e| format!("/run/agent: {e}"))
}

/// Where the guest's cgroup2 hierarchy is mounted.
const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The instance's cgroup in the guest, with `l`'s memory and task limits: its `cgroup.procs`,
/// for the child to join before exec.
fn guest_cgroup(l: &GuestLimits) -> Result<PathBuf, String> {
    let root = Path::new(GUEST_CGROUP_ROOT);
    let write = |p: PathBuf, v: String| {
        std::fs::write(&p, v).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(
        root.join("cgroup.subtree_control"),
        "+memory +pids".to_string(),
    )?;
    let dir = root.join("instance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write(
        dir.join("memory.max"),
        l.memory_mib.saturating_mul(1024 * 1024).to_string(),
    )?;
    // No swap device in the guest; where the file exists, say so anyway.
    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    write(dir.join("pids.max"), l.pids.to_string())?;
    Ok(dir)
}

/// Gives `id` the directories the start's files were written to.
fn give_dirs(files: &[FileSpec], id: crate::RunAs) -> Result<(), String> {
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.path.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        nix::unistd::chown(
            d,
            Some(nix::unistd::Uid::from_raw(id.uid)),
            Some(nix::unistd::Gid::from_raw(id.gid)),
        )
        .map_err(|e| format!("cannot give {} to the instance: {e}", d.display()))?;
    }
    Ok(())
}

/// What the instance's guest cgroup counted: OOM kills and refused forks.
fn guest_counters(dir: &Path) -> Counters {
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    };
    Counters {
        oom_kills: field("memory.events", "oom_kill"),
        pids_refused: field("pids.events", "max"),
    }
}

/// Tells the host the agent listens: one connection to the host's [`READY_PORT`], closed at
/// once. A few tries (the host listens before the VM starts, so a refusal is brief or final);
/// without it the launcher reports that the agent never said it was ready.
async fn say_ready() {
    let ready = Target::Vsock(HOST_CID, READY_PORT);
    let mut last = None;
    for _ in 0..20 {
        match ready.connect().await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if let Some(e) = last {
        eprintln!(
            "sandbox-init guest: cannot tell the host it is ready ({}): {e}",
            ready.describe()
        );
    }
}

/// Ends the VM (QEMU runs with `-no-reboot` and Firecracker with `reboot=k`, so a reboot is the
/// VM's exit).
fn power_off() {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
}

/// Takes one instance and carries it until it exits.
async fn serve(t: Transport) -> Result<ExitCode, String> {
    let bind_unix = |p: PathBuf| {
        let _ = std::fs::remove_file(&p);
        UnixListener::bind(&p)
            .map(Listener::Unix)
            .map_err(|e| format!("cannot listen on {}: {e}", p.display()))
    };
    let bind_vsock = |port: u32| {
        tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_ANY,
            port,
        ))
        .map(Listener::Vsock)
        .map_err(|e| format!("cannot listen on vsock port {port}: {e}"))
    };
    let vm = matches!(t, Transport::Vm(_));
    let (dir, control_l, calls_l, egress_host) = match t {
        Transport::Unix(dir) => (
            dir.clone(),
            bind_unix(dir.join(CONTROL_SOCKET))?,
            bind_unix(dir.join(CALLS_SOCKET))?,
            Target::Unix(dir.join(EGRESS_SOCKET)),
        ),
        Transport::Vm(dir) => (
            dir,
            bind_vsock(CONTROL_PORT)?,
            bind_vsock(CALLS_PORT)?,
            Target::Vsock(HOST_CID, EGRESS_PORT),
        ),
    };
    if vm {
        say_ready().await;
    }

    let control = control_l
        .accept()
        .await
        .map_err(|e| format!("control: {e}"))?;
    let (r, mut w) = tokio::io::split(control);
    let mut r = BufReader::new(r);
    let start = match read_start(&mut r).await {
        Ok(s) => s,
        Err(e) => {
            let _ = w
                .write_all(format!("{}\n", Event::Failed(e.clone()).encode()).as_bytes())
                .await;
            return Err(e);
        }
    };

    // In a VM the instance runs as nobody: its files' dirs are its own (the shim makes its
    // socket there), the files stay root's (it may read, not change them).
    let instance_uid = vm.then_some(crate::RunAs::NOBODY);
    if let Some(id) = instance_uid {
        give_dirs(&start.files, id)?;
    }
    // The forwarder inside connects here; each connection goes on to the host's egress.
    if let Some(p) = &start.init.proxy {
        let _ = std::fs::remove_file(&p.socket);
        let l = bind_unix(p.socket.clone())?;
        if let Some(id) = instance_uid {
            crate::hostfs::give_socket(&p.socket, id)
                .map_err(|e| format!("cannot give {} to the instance: {e}", p.socket.display()))?;
        }
        tokio::spawn(splice_all(l, egress_host));
    }
    tokio::spawn(splice_all(calls_l, Target::Unix(start.shim_socket.clone())));

    let config_path = dir.join("init.json");
    let json = serde_json::to_vec(&start.init).map_err(|e| e.to_string())?;
    std::fs::write(&config_path, json)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&start.init_args)
        .arg(&config_path)
        .env_clear()
        .envs(start.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut cgroup = None;
    let mut setup = crate::sys::ChildSetup {
        run_as: instance_uid,
        ..Default::default()
    };
    if let Some(l) = &start.limits {
        if vm {
            let dir = guest_cgroup(l)?;
            let file = dir.join("cgroup.procs");
            setup.procs.push(
                std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
                    .map_err(|e| e.to_string())?,
            );
            cgroup = Some(dir);
        }
        setup.nofile = Some(l.open_files);
        setup.fsize = Some(l.max_file_bytes);
    }
    // The cgroup is joined before exec, so everything the instance starts is inside; then the
    // limits, then the identity.
    crate::sys::install(&mut cmd, setup);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start the instance: {e}");
            let _ = w
                .write_all(format!("{}\n", Event::Failed(why.clone()).encode()).as_bytes())
                .await;
            return Err(why);
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(relay(out, tx.clone(), Event::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(relay(err, tx.clone(), Event::Stderr));
    }
    drop(tx);
    let mut stdin = child.stdin.take();
    let pid = child.id();

    // Host → agent after the start: `go`, `term`, or the end of the connection.
    let mut line = String::new();
    let mut control_open = true;
    let mut output_open = true;
    loop {
        tokio::select! {
            n = r.read_line(&mut line), if control_open => {
                match n {
                    Ok(0) | Err(_) => {
                        // The host went away: nothing is left to serve.
                        control_open = false;
                        let _ = child.start_kill();
                    }
                    Ok(_) => {
                        match line.trim_end() {
                            "go" => {
                                if let Some(s) = stdin.as_mut() {
                                    let _ = s.write_all(b"go\n").await;
                                    let _ = s.flush().await;
                                }
                            }
                            "term" => {
                                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                                    let _ = nix::sys::signal::kill(
                                        nix::unistd::Pid::from_raw(pid),
                                        nix::sys::signal::Signal::SIGTERM,
                                    );
                                }
                            }
                            other => eprintln!("sandbox-init guest: unknown command {other:?}"),
                        }
                        line.clear();
                    }
                }
            }
            ev = rx.recv(), if output_open => {
                match ev {
                    Some(ev) => {
                        if w.write_all(format!("{}\n", ev.encode()).as_bytes()).await.is_err() {
                            let _ = child.start_kill();
                        }
                    }
                    None => output_open = false,
                }
            }
            status = child.wait(), if !output_open => {
                let code = match status {
                    Ok(s) => exit_status(s),
                    Err(_) => 125,
                };
                let counters = cgroup.as_deref().map(guest_counters).unwrap_or_default();
                let exited = Event::Exited(code, counters).encode();
                let _ = w.write_all(format!("{exited}\n").as_bytes()).await;
                let _ = w.flush().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn exit_status(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// Reads the start line and the files after it, and writes the files.
async fn read_start<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Start, String> {
    let mut line = Vec::new();
    let mut limited = r.take(MAX_START_LINE as u64 + 1);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the start: {e}"))?;
    if line.last() != Some(&b'\n') {
        return Err("the start line is missing or longer than 1 MiB".into());
    }
    let start: Start =
        serde_json::from_slice(&line).map_err(|e| format!("the start does not parse: {e}"))?;
    let total: u64 = start.files.iter().map(|f| f.len).sum();
    if total > MAX_FILE_BYTES {
        return Err(format!(
            "the start carries {total} bytes of files, above {MAX_FILE_BYTES}"
        ));
    }
    for f in &start.files {
        if !f.path.is_absolute()
            || f.path
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!(
                "file path {} is not absolute and plain",
                f.path.display()
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(f.len).unwrap_or(0));
        let got = r
            .take(f.len)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading {}: {e}", f.path.display()))?;
        if got as u64 != f.len {
            return Err(format!(
                "{} ended after {got} of {} bytes",
                f.path.display(),
                f.len
            ));
        }
        if let Some(parent) = f.path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&f.path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", f.path.display()))?;
    }
    Ok(start)
}

/// Each line of `from` as an event, cut at [`MAX_LINE`].
async fn relay<R: tokio::io::AsyncRead + Unpin>(
    from: R,
    tx: tokio::sync::mpsc::Sender<Event>,
    wrap: fn(String) -> Event,
) {
    let mut lines = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                if tx
                    .send(wrap(text.trim_end_matches('\n').to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Copies each connection on `l` to a new connection to `to`, both ways.
async fn splice_all(l: Listener, to: Target) {
    loop {
        let Ok(mut from) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let to = to.clone();
        tokio::spawn(async move {
            match to.connect().await {
                Ok(mut s) => {
                    let _ = tokio::io::copy_bidirectional(&mut from, &mut s).await;
                }
                Err(e) => eprintln!("sandbox-init guest: {}: {e}", to.describe()),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_one_line_each() {
        for e in [
            Event::Stdout("{\"atrund\":\"ready\"}".into()),
            Event::Stderr("boom".into()),
            Event::Exited(137, Counters::default()),
            Event::Exited(
                137,
                Counters {
                    oom_kills: 1,
                    pids_refused: 3,
                },
            ),
            Event::Failed("no deno".into()),
        ] {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        // A newline inside a line cannot forge a second event.
        let e = Event::Stderr("a\nx 0".into()).encode();
        assert!(!e.contains('\n'));
        assert_eq!(Event::decode(&e), Some(Event::Stderr("a x 0".into())));
        assert_eq!(Event::decode("z what"), None);
        assert_eq!(Event::decode("x nine"), None);
        assert_eq!(Event::decode("x 0 1"), None);
        assert_eq!(Event::decode("x 0 1 2 3"), None);
        assert_eq!(
            Event::decode("x 9"),
            Some(Event::Exited(9, Counters::default()))
        );
    }

    #[tokio::test]
    async fn a_start_with_a_bad_path_or_short_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let start = |path: &str, len: u64| Start {
            init: InitConfig {
                argv: vec!["/bin/true".into()],
                read_only: vec![],
                execute: vec![],
                read_write: vec![],
                proxy: None,
            },
            env: vec![],
            files: vec![FileSpec {
                path: path.into(),
                len,
            }],
            shim_socket: d.path().join("s.sock"),
            limits: None,
            init_args: vec![],
        };
        let good = d.path().join("b/main.js");
        let mut buf = Vec::new();
        send_start(&mut buf, &start(good.to_str().unwrap(), 3), &[b"abc"])
            .await
            .unwrap();
        let s = read_start(&mut &buf[..]).await.unwrap();
        assert_eq!(s.files.len(), 1);
        assert_eq!(std::fs::read(&good).unwrap(), b"abc");

        for (path, len, body, says) in [
            ("relative/x.js", 1, &b"a"[..], "not absolute"),
            ("/tmp/../etc/x", 1, b"a", "not absolute"),
            (good.to_str().unwrap(), 5, b"ab", "ended after 2 of 5"),
        ] {
            let mut buf = Vec::new();
            send_start(&mut buf, &start(path, len), &[body])
                .await
                .unwrap();
            let e = read_start(&mut &buf[..]).await.unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let e = read_start(&mut &b"{not json\n"[..]).await.unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }
}
