//! `at-run`, the author CLI of at-rund: `deploy`, which publishes a bundle version to the
//! author's own PDS, and `secrets`, which seals values for one runner. The command-line edge: parses arguments, runs the command, prints the result
//! or the error chain (anyhow) and sets the exit code. Must not touch: anything a command module
//! does not own; the password is never printed.

use at_run::{deploy, secrets, xrpc};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "at-run",
    version,
    about = "Publish serverless bundles to your ATProto PDS for at-rund runners"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a bundle version (dev.atrund.bundle) and move its release pointer to it.
    Deploy(deploy::DeployArgs),
    /// Seal secrets for one runner (`set`, `unset`, `list`); values are never printed.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Secrets { command } => {
            let (verb, result) = match &command {
                secrets::SecretsCommand::Set { target, pairs } => {
                    let sealed = secrets::parse_pairs(pairs);
                    (
                        "sealed",
                        sealed.and_then(|p| rt.block_on(secrets::set(target, &p))),
                    )
                }
                secrets::SecretsCommand::Unset { target, names } => {
                    ("removed", rt.block_on(secrets::unset(target, names)))
                }
                secrets::SecretsCommand::List { target } => {
                    ("listed", rt.block_on(secrets::list(target)))
                }
            };
            match result {
                Ok(outcome) => {
                    print!("{}", outcome.render(verb));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Deploy(args) => match rt.block_on(deploy::run(&args)) {
            Ok(published) => {
                if args.json {
                    match serde_json::to_string(&published) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("error: could not encode the result as JSON: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    print!("{}", published.render());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                if args.json {
                    let code = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<xrpc::XrpcError>())
                        .map_or("DeployFailed", xrpc::XrpcError::code);
                    println!(
                        "{}",
                        serde_json::json!({ "error": code, "message": format!("{e:#}") })
                    );
                }
                ExitCode::FAILURE
            }
        },
    }
}
