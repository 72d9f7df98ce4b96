//! The container backend's PID 1 as a standalone binary, used by this crate's tests; at-rund
//! runs the same code as its hidden `sandbox-init` subcommand.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    atrund_sandbox::init::main(&args)
}
