//! Running a helper program (deno, python, pip) to completion with a deadline, its output
//! collected.
//!
//! Owns: the child process of one call. Must not touch: anything the program's arguments do
//! not name.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a finished (or killed) command went.
pub struct RunResult {
    pub ok: bool,
    /// Killed at the deadline (`stderr` ends with a line saying so).
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion with a deadline (killed after it).
pub fn run(mut cmd: Command, timeout: Duration) -> std::io::Result<RunResult> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let mut stderr = err_t.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\ntimed out after {} s", timeout.as_secs()));
    }
    Ok(RunResult {
        ok: status.is_some_and(|s| s.success()),
        timed_out: status.is_none(),
        stdout,
        stderr,
    })
}
