//! PID 1 of a container instance (`at-rund sandbox-init <config>`, or the crate's
//! `atrund-sandbox-init` binary): bwrap has already built the namespaces and the read-only root;
//! this confines the sandbox further and runs Deno as its child.
//!
//! In order: bind the proxy forwarder's TCP port on the sandbox's own loopback, turn off
//! dumpability (so Deno cannot read this process's /proc entries or ptrace it), set
//! no_new_privs, apply Landlock and seccomp (`confine`) on this thread before any other thread
//! exists, start Deno, then reap every child, relay SIGTERM/SIGINT/SIGHUP/SIGQUIT to Deno (Deno
//! as PID 1 would ignore them), and exit with Deno's status. The forwarder copies each TCP
//! connection to the Unix socket of at-rund's egress proxy bound in from the host, so the
//! network namespace needs no interface but `lo`.
//!
//! Owns: the steps above. Must not: decide the policy (the config file written by the container
//! backend says which paths and ports), or outlive Deno.

use std::path::Path;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::confine::{self, LandlockRules};
pub use crate::init_config::{InitConfig, ProxyForward};

/// Signals relayed to Deno.
const RELAYED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn fail(msg: String) -> ExitCode {
    eprintln!("sandbox-init: {msg}");
    ExitCode::from(125)
}

/// Entry point: `args` are the arguments after the subcommand (the config file path).
pub fn main(args: &[String]) -> ExitCode {
    // The same program parks as a spare launcher (`spare`) before it is bwrap's.
    if args.first().map(String::as_str) == Some(crate::spare::LAUNCH_ARG) {
        return crate::spare::launcher_main();
    }
    // The microVM guest's agent (and its local-process form in tests). As a guest's `/init`
    // the kernel starts it as PID 1 with no arguments.
    if args.first().map(String::as_str) == Some("guest") {
        return crate::guest::main(&args[1..]);
    }
    // A microVM instance's host process (`microvm`).
    if args.first().map(String::as_str) == Some(crate::vm_launcher::VMM_ARG) {
        return crate::vm_launcher::main(&args[1..]);
    }
    if args.is_empty() && std::process::id() == 1 {
        return crate::guest::main(&["--vm".to_string()]);
    }
    let Some(path) = args.first() else {
        return fail("usage: sandbox-init <config.json>".into());
    };
    let cfg: InitConfig = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot read {path}: {e}")),
    };
    match run(cfg) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn run(cfg: InitConfig) -> Result<ExitCode, String> {
    if cfg.argv.is_empty() {
        return Err("no program to run".into());
    }
    // Bound before Landlock, which refuses TCP binds afterwards.
    let listener = match &cfg.proxy {
        Some(p) => Some(
            std::net::TcpListener::bind(("127.0.0.1", p.port))
                .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", p.port))?,
        ),
        None => None,
    };
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    let status = confine::apply_landlock(&LandlockRules {
        read_only: cfg.read_only.clone(),
        execute: cfg.execute.clone(),
        read_write: cfg.read_write.clone(),
        data: Vec::new(),
        connect_ports: cfg.proxy.iter().map(|p| p.port).collect(),
    })?;
    if status != landlock::RulesetStatus::FullyEnforced {
        eprintln!("sandbox-init: Landlock is {status:?} on this kernel");
    }
    confine::apply_seccomp()?;

    // Deno first: a child inherits the signal mask, and Deno must keep default dispositions.
    let child = std::process::Command::new(&cfg.argv[0])
        .args(&cfg.argv[1..])
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.argv[0]))?;
    let deno =
        Pid::from_raw(i32::try_from(child.id()).map_err(|_| "child pid out of range".to_string())?);
    // Blocked before any thread exists (threads inherit the mask): the signal thread takes
    // them with sigwait. A signal sent before this point is dropped, as for any PID 1.
    let mut relayed = SigSet::empty();
    for s in RELAYED {
        relayed.add(s);
    }
    relayed
        .thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;
    crate::sys::catch_signals(&RELAYED).map_err(|e| format!("sigaction: {e}"))?;

    if let (Some(listener), Some(p)) = (listener, &cfg.proxy) {
        let socket = p.socket.clone();
        std::thread::Builder::new()
            .name("egress-forward".into())
            .spawn(move || forward(listener, &socket))
            .map_err(|e| format!("cannot start the forwarder: {e}"))?;
    }

    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = relayed.wait() {
                let _ = nix::sys::signal::kill(deno, sig);
            }
        })
        .map_err(|e| format!("cannot start the signal relay: {e}"))?;

    // PID 1 inherits every orphan in the namespace: reap them all, exit when Deno does.
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == deno => {
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == deno => {
                return Ok(ExitCode::from(128u8.saturating_add(sig as u8)))
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

/// Copies each connection on `listener` to a new connection to `socket`, both ways.
fn forward(listener: std::net::TcpListener, socket: &Path) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbox-init: forwarder runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let _ = listener.set_nonblocking(true);
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            eprintln!("sandbox-init: forwarder cannot use its listener");
            return;
        };
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(mut unix) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                    Err(e) => eprintln!("sandbox-init: egress socket: {e}"),
                }
            });
        }
    });
}
