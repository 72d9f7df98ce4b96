//! `at-run`, the author CLI of at-rund: `init`, `build`, `dev`, `deploy`, `rollback`, `ls`,
//! `login`, `test`, `check`, `secrets`, `logs` and `jobs`. The command-line edge: parses arguments, runs the
//! command, prints the result (text, or one JSON object with `--json`), reports progress on
//! stderr, and turns errors into a message, a stable name and an exit code (`error::exit`).
//! Must not touch: anything a command module does not own; passwords and tokens are never
//! printed.

use at_run::{
    auth, build, deno, deploy, dev, error, jobs, logs, project, releases, runner, runners, secrets,
};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failed, 2 bad usage, 3 build failed, 4 not logged in or credentials refused, \
5 `test` had failures or `check` found incompatibilities, 6 PDS/runner/Deno/Node/Python unreachable or missing, \
7 version already published or not found.";

#[derive(Debug, Parser)]
#[command(
    name = "at-run",
    version,
    about = "Build, run locally, publish and test serverless bundles on your ATProto PDS for at-rund runners",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Print the result as one JSON object on stdout (errors: {"error": NAME, "message": ...}).
    #[arg(long, global = true)]
    json: bool,
    /// No progress messages on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// The Deno binary [default: $ATRUN_DENO, else `deno` on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    deno: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new project (at-run.json, deno.json, main.ts, a vendored @at-run/runtime; for
    /// python: at-run.json, main.py, manifest.json).
    Init {
        /// Folder to create it in.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Bundle name [default: the folder's name].
        #[arg(long)]
        name: Option<String>,
        /// The runtime the bundle is for ("runtime" in at-run.json): deno; node (its code then
        /// uses node: built-ins and web APIs, never Deno.*); or python (one main.py, standard
        /// library only, with a hand-written manifest.json).
        #[arg(long, default_value = project::DEFAULT_RUNTIME, value_parser = clap::builder::PossibleValuesParser::new(atrund_bundle::record::RUNTIMES))]
        runtime: String,
    },
    /// Bundle the project into one ESM file and extract its manifest (dist/main.js + dist/manifest.json);
    /// a Python project's main.py is checked and copied with its manifest.json (dist/main.py).
    Build {
        /// Project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output folder [default: DIR/dist].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Serve the project locally with at-rund and rebuild on every saved edit.
    Dev(dev::DevArgs),
    /// Build and publish a version (dev.atrund.bundle) and move `latest` to it.
    Deploy(deploy::DeployArgs),
    /// Point `latest` of NAME back at an already published VERSION.
    Rollback {
        name: String,
        version: String,
        #[command(flatten)]
        auth: auth::AuthArgs,
    },
    /// List your published bundles and versions, and which one `latest` points at.
    Ls {
        /// Only this bundle.
        name: Option<String>,
        #[command(flatten)]
        auth: auth::AuthArgs,
    },
    /// Log in to your PDS with an app password and store the session (mode 0600).
    Login {
        #[command(flatten)]
        auth: auth::AuthArgs,
    },
    /// Delete the stored session.
    Logout,
    /// Call every endpoint of a deployed version on a runner with sample inputs from its manifest.
    Test {
        /// Project folder (for the bundle name).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The runner: its URL (e.g. https://runner.example.com), or its operator's handle or
        /// DID (their verified dev.atrund.runner record gives the URL).
        #[arg(long, env = "ATRUN_RUNNER", value_name = "URL_OR_OPERATOR")]
        runner: String,
        /// Bundle name [default: from at-run.json].
        #[arg(long)]
        name: Option<String>,
        /// Version to test: a version or `latest`.
        #[arg(long, default_value = "latest")]
        version: String,
        #[command(flatten)]
        auth: auth::AuthArgs,
        #[command(flatten)]
        net: runners::NetArgs,
    },
    /// Check the project against a runner: permissions, limits, author policy, size, runtime.
    Check {
        /// Project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The runner: its URL (e.g. https://runner.example.com), or its operator's handle or
        /// DID (their verified dev.atrund.runner record gives the URL).
        #[arg(long, env = "ATRUN_RUNNER", value_name = "URL_OR_OPERATOR")]
        runner: String,
        #[command(flatten)]
        auth: auth::AuthArgs,
        #[command(flatten)]
        net: runners::NetArgs,
    },
    /// Runners announced by accounts you name: `at-run runners ls --from HANDLE...`
    /// (docs/network.md).
    Runners {
        #[command(subcommand)]
        command: RunnersCommand,
    },
    /// Seal secrets for one runner (`set`, `unset`, `list`); values are never printed.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Show a bundle's console output as a runner kept it (only yours); --follow for new lines.
    Logs(logs::LogsArgs),
    /// Your background jobs on a runner: enqueue, ls, show, cancel, retry (docs/jobs.md).
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Fire one of your bundle's crons now: `at-run cron run TASK` (docs/jobs.md).
    Cron {
        #[command(subcommand)]
        command: jobs::CronCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RunnersCommand {
    /// The runner each named account announces (its dev.atrund.runner record, verified against
    /// the account's signed repository), whether it is ready and still says what the record says,
    /// and with --project whether your bundle would run there (the checks of `at-run check`).
    Ls {
        /// An operator's handle or DID; repeat for several.
        #[arg(long = "from", required = true, value_name = "HANDLE_OR_DID")]
        from: Vec<String>,
        /// A project to check against each runner (built first, as by `at-run check`).
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        #[command(flatten)]
        net: runners::NetArgs,
    },
}

/// A command's result: text for people, JSON for scripts.
struct Output {
    text: String,
    json: serde_json::Value,
    /// Set when the command ran but its verdict is a failure (`test`, `check`).
    failure: Option<error::Failure>,
}

impl From<jobs::Answer> for Output {
    fn from(a: jobs::Answer) -> Self {
        Output {
            text: a.text,
            json: a.json,
            failure: None,
        }
    }
}

fn out<T: Serialize>(value: &T, text: String) -> anyhow::Result<Output> {
    Ok(Output {
        text,
        json: serde_json::to_value(value)?,
        failure: None,
    })
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
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(o) => {
            if json {
                println!("{}", o.json);
            } else {
                print!("{}", o.text);
            }
            match o.failure {
                None => ExitCode::SUCCESS,
                Some(f) => {
                    eprintln!("error: {f}");
                    ExitCode::from(f.exit_code())
                }
            }
        }
        Err(e) => {
            let (code, exit) = error::classify(&e);
            eprintln!("error: {e:#}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": code, "message": format!("{e:#}") })
                );
            }
            ExitCode::from(exit)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Output> {
    let quiet = cli.quiet;
    let progress = move |m: &str| {
        if !quiet {
            eprintln!("{m}…");
        }
    };
    let deno_path = cli.deno.clone();
    let find_deno =
        move || -> anyhow::Result<deno::Deno> { Ok(deno::Deno::locate(deno_path.as_deref())?) };
    match cli.command {
        Command::Init { dir, name, runtime } => {
            let (name, files) = project::init(&dir, name.as_deref(), &runtime)?;
            let shown = dir.display().to_string();
            let text = format!(
                "created {name} ({runtime}) in {shown}:\n{}\nnext:\n  cd {shown}\n  at-run dev            # serve it locally, reloading on save\n  at-run login --pds URL --identifier HANDLE\n  at-run deploy\n",
                files
                    .iter()
                    .map(|f| format!("  {}", f.strip_prefix(&dir).unwrap_or(f).display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            out(
                &serde_json::json!({ "name": name, "dir": dir, "runtime": runtime, "files": files }),
                text,
            )
        }
        Command::Build { dir, out: out_dir } => {
            let p = project::Project::load(&dir)?;
            progress("building");
            let (b, _) = build::build_project(
                find_deno,
                &p,
                &build::BuildOptions {
                    out: out_dir,
                    ..Default::default()
                },
            )?;
            let text = b.render();
            out(&b, text)
        }
        Command::Dev(args) => {
            let d = find_deno()?;
            dev::run(&args, &d, cli.json).await?;
            Ok(Output {
                text: String::new(),
                json: serde_json::json!({ "event": "stopped" }),
                failure: None,
            })
        }
        Command::Deploy(args) => {
            let r = deploy::run_args(&args, find_deno, progress).await?;
            let text = r.render();
            out(&r, text)
        }
        Command::Rollback {
            name,
            version,
            auth,
        } => {
            let r = releases::rollback(&auth, &name, &version).await?;
            let text = r.render();
            out(&r, text)
        }
        Command::Ls { name, auth } => {
            let l = releases::list(&auth, name.as_deref()).await?;
            let text = l.render();
            out(&l, text)
        }
        Command::Login { auth } => {
            let i = auth::login(&auth).await?;
            let text = format!(
                "logged in as {} ({}) on {}\n  session stored in {} (mode 0600)\n",
                i.handle,
                i.did,
                i.pds,
                i.session_file.display()
            );
            out(&i, text)
        }
        Command::Logout => {
            let removed = auth::logout()?;
            let text = if removed {
                "logged out (session deleted)\n".to_string()
            } else {
                "no session was stored\n".to_string()
            };
            out(&serde_json::json!({ "removed": removed }), text)
        }
        Command::Test {
            dir,
            runner,
            name,
            version,
            auth,
            net,
        } => {
            let runner = runners::named(&runner, &net).await?.url;
            let name = match name {
                Some(n) => n,
                None => project::Project::load(&dir)?.file.name,
            };
            progress(&format!("calling the endpoints of {name} {version}"));
            let r = runner::test(&auth, &runner, &name, &version).await?;
            let mut o = out(&r, r.render())?;
            if r.failed > 0 {
                o.failure = Some(error::Failure::TestsFailed {
                    failed: r.failed,
                    total: r.calls.len(),
                });
            }
            Ok(o)
        }
        Command::Runners {
            command: RunnersCommand::Ls { from, project, net },
        } => {
            let built = match &project {
                Some(dir) => {
                    let p = project::Project::load(dir)?;
                    progress("building");
                    let (b, d) = build::build_project(find_deno, &p, &Default::default())?;
                    Some((b, d.map(|d| d.version).unwrap_or_default()))
                }
                None => None,
            };
            let runtime = built
                .as_ref()
                .map_or(project::DEFAULT_RUNTIME, |(b, _)| b.runtime.as_str());
            let who = auth::load().ok().flatten().map(|s| (s.did, s.handle));
            let bundle = built.as_ref().map(|(b, deno)| runners::Bundle {
                manifest: &b.manifest,
                code_bytes: b.bytes,
                local_deno: deno,
                author: who.as_ref().map(|(a, h)| (a.as_str(), h.as_str())),
            });
            progress("looking up runners");
            let listed = runners::list_for(&from, &net, bundle.as_ref(), runtime).await?;
            out(&listed, runners::render(&listed))
        }
        Command::Check {
            dir,
            runner,
            auth,
            net,
        } => {
            let named = runners::named(&runner, &net).await?;
            let runner = named.url.clone();
            let p = project::Project::load(&dir)?;
            progress("building");
            let (b, d) = build::build_project(find_deno, &p, &Default::default())?;
            // A Python build used no Deno: there is no Deno version to compare.
            let built_with = d.map(|d| d.version).unwrap_or_default();
            progress("asking the runner");
            let desc = named.describe().await?;
            let who = auth::reader(&auth)
                .ok()
                .and_then(|_| auth::load().ok().flatten())
                .map(|s| (s.did, s.handle));
            let graph = match &who {
                Some((did, _)) => runners::graph_standing(&desc, did, &net).await?,
                None => None,
            };
            let r = runner::compare(
                &runner,
                &desc,
                &b.manifest,
                b.bytes,
                runner::BundleRuntime {
                    name: &b.runtime,
                    built_with: &built_with,
                },
                who.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                graph.as_ref(),
            );
            let failed = r.checks.iter().filter(|c| !c.ok).count();
            let mut o = out(&r, r.render())?;
            if failed > 0 {
                o.failure = Some(error::Failure::Incompatible(failed));
            }
            Ok(o)
        }
        Command::Logs(args) if args.follow => {
            logs::follow(&args, cli.json).await?;
            Ok(Output {
                text: String::new(),
                json: serde_json::json!({ "event": "stopped" }),
                failure: None,
            })
        }
        Command::Logs(args) => {
            let l = logs::get(&args).await?;
            let text = l.render();
            out(&l, text)
        }
        Command::Jobs { command } => Ok(jobs::run(&command).await?.into()),
        Command::Cron { command } => Ok(jobs::cron(&command).await?.into()),
        Command::Secrets { command } => {
            let (verb, result) = match &command {
                secrets::SecretsCommand::Set { target, pairs } => {
                    let sealed = secrets::parse_pairs(pairs);
                    match sealed {
                        Ok(p) => ("sealed", secrets::set(target, &p).await),
                        Err(e) => ("sealed", Err(e)),
                    }
                }
                secrets::SecretsCommand::Unset { target, names } => {
                    ("removed", secrets::unset(target, names).await)
                }
                secrets::SecretsCommand::List { target } => ("listed", secrets::list(target).await),
            };
            let outcome = result?;
            let text = outcome.render(verb);
            out(&outcome, text)
        }
    }
}
