//! `at-rund`: the runner daemon. This binary is the edge where configuration, logging, signals
//! and the crates of the data path are wired together; it holds no logic of its own beyond that.
//! Start-up is explicit and logged step by step so an operator can see what the runner found.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use atrund_bundle::{BundleSource, BundleStore, SourceConfig};
use atrund_config::Config;
use atrund_http::{AppState, LocalBundle};
use atrund_identity::{IdentityConfig, IdentityResolver};
use atrund_pool::Pool;
use atrund_repo::{FetchConfig, RepoClient};
use atrund_sandbox::{DenoBinary, NoneExecutor};

#[derive(Parser)]
#[command(
    name = "at-rund",
    version,
    about = "Runs AT Protocol code bundles from their authors' PDSes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve bundles over HTTP (embedded defaults; see docs/configuration.md).
    Serve {
        /// TOML config file; every key can also be set with an ATRUND_* variable.
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Serve a bundle from a local folder at /bundle/local/{name}/latest/{endpoint}; edits are
    /// picked up on the next request.
    Dev {
        /// Folder holding the code (main.js, main.ts or bundle.js) and manifest.json.
        dir: PathBuf,
        /// Bundle name in the URL (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// Code file inside the folder.
        #[arg(long)]
        entry: Option<PathBuf>,
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective result.
    CheckConfig {
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATRUND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let env = atrund_config::process_env()?;
    Ok(Config::load(path, &env)?)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            let cfg = load_config(config.as_deref())?;
            print!("{}", cfg.to_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Serve { config } => serve(load_config(config.as_deref())?, None).await,
        Command::Dev {
            dir,
            name,
            entry,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let local = LocalBundle::open(&dir, name.as_deref(), entry.as_deref())
                .map_err(anyhow::Error::msg)?;
            serve(cfg, Some(local)).await
        }
    }
}

async fn serve(config: Config, local: Option<LocalBundle>) -> Result<()> {
    let data_dir = config.data_dir.clone();
    prepare_data_dir(&data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), "data dir ready");

    let deno = DenoBinary::locate(config.deno.path.as_deref())?;
    let runtime_version = deno.version().await?;
    tracing::info!(deno = %deno.path().display(), version = %runtime_version, "runtime found");

    let identity = IdentityResolver::new(IdentityConfig {
        plc_url: config.plc_url.clone(),
        allow_http_loopback: config.allow_http,
        timeout: Duration::from_millis(config.identity.timeout_ms),
        stale_ttl: Duration::from_secs(config.identity.cache_stale_secs),
        max_ttl: Duration::from_secs(config.identity.cache_max_secs),
        error_ttl: Duration::from_secs(config.identity.cache_error_secs),
        handle_resolution_service: config.identity.handle_resolver.clone(),
        dns: config.identity.dns,
        well_known: config.identity.well_known,
        ..IdentityConfig::default()
    })?;
    let repo = RepoClient::new(FetchConfig {
        timeout: Duration::from_millis(config.fetch.timeout_ms),
        max_car_bytes: config.fetch.max_record_bytes,
        max_blob_bytes: config.fetch.max_bundle_bytes,
        allow_http_loopback: config.allow_http,
    })?;
    let store = BundleStore::open(data_dir.join("bundles"))
        .with_context(|| format!("cannot create {}", data_dir.join("bundles").display()))?;
    let source = BundleSource::new(
        identity.clone(),
        repo,
        store,
        SourceConfig {
            max_bundle_bytes: config.fetch.max_bundle_bytes,
            revalidate: Duration::from_secs(config.fetch.revalidate_secs),
            max_list_pages: 20,
        },
    );
    let executor = Arc::new(NoneExecutor::new(deno));
    tracing::warn!(
        "isolation = \"none\": bundles run as Deno processes with permission flags only; \
         see docs/security.md for what this does not contain"
    );
    let pool = Arc::new(Pool::new(executor));
    if config.allow_http {
        tracing::warn!("allow_http is on: plain-http PDS and did:web are accepted for loopback hosts (development only)");
    }
    tracing::info!(policy = %config.policy.describe(), "author policy");

    let (drain_tx, drain_rx) = watch::channel(false);
    let state = AppState {
        config: Arc::new(config.clone()),
        identity,
        source,
        pool: pool.clone(),
        local: local.map(Arc::new),
        runtime_version,
        draining: drain_rx.clone(),
    };
    if let Some(l) = &state.local {
        tracing::info!(
            dir = %l.dir.display(),
            url = %format!("http://{}/bundle/local/{}/latest/{{endpoint}}", config.listen, l.name),
            "serving local bundle"
        );
    }
    let app = atrund_http::router(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen / ATRUND_LISTEN)",
                config.listen
            )
        })?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    tracing::info!(%addr, "listening");

    let mut shutdown_rx = drain_rx;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown_rx.wait_for(|d| *d).await;
    });
    tokio::spawn(wait_for_signals(drain_tx));
    server.await.context("HTTP server failed")?;
    tracing::info!("stopping instances");
    pool.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// First SIGTERM/SIGINT starts a graceful drain; a second one exits at once.
async fn wait_for_signals(drain: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the runner with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send it again to exit now)");
    let _ = drain.send(true);
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(130);
}

/// Creates the data dir layout and removes instance work dirs a crash left behind.
fn prepare_data_dir(dir: &Path) -> Result<()> {
    for sub in ["bundles", "data", "deno", "run"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).with_context(|| {
            format!(
                "cannot create {} (data_dir / ATRUND_DATA_DIR must be writable)",
                p.display()
            )
        })?;
    }
    let run = dir.join("run");
    for entry in
        std::fs::read_dir(&run).with_context(|| format!("cannot read {}", run.display()))?
    {
        let path = entry?.path();
        tracing::info!(path = %path.display(), "removing leftover instance dir");
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove leftover {}", path.display()))?;
    }
    Ok(())
}
