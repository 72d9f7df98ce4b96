//! `at-rund`: the runner daemon. This binary is the edge where configuration, logging, signals
//! and the crates of the data path are wired together; it holds no logic of its own beyond that.
//! Start-up is explicit and logged step by step so an operator can see what the runner found.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// The log message that announces the HTTP API's address (`... http api listening addr=IP:PORT`).
const LISTENING_MESSAGE: &str = "http api listening";
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use atrund_bundle::{BundleSource, BundleStore, SourceConfig};
use atrund_config::Config;
use atrund_http::{AppState, LocalBundle};
use atrund_identity::{IdentityConfig, IdentityResolver};
use atrund_pool::Pool;
use atrund_repo::{FetchConfig, RepoClient};
use atrund_sandbox::{
    runner_id_for, CgroupManager, ContainerConfig, ContainerExecutor, DenoBinary, Enforcement,
    Executor, NoneExecutor,
};

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
    /// Create the runner's X25519 key file (secrets.key_file) if there is none, and print the
    /// public key; with --rotate, make a new key and keep the old one for decryption for
    /// secrets.rotation_grace_secs. Restart the runner to use a rotated key.
    /// PID 1 inside a container instance (internal: started by the container backend).
    #[command(hide = true)]
    SandboxInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    Keygen {
        /// Replace the current key (authors must then run `at-run secrets set` again).
        #[arg(long)]
        rotate: bool,
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before logging and the async runtime: PID 1 of a sandbox stays single-threaded until it
    // has confined itself.
    if let Command::SandboxInit { args } = &cli.command {
        return atrund_sandbox::init::main(args);
    }
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
        Command::Keygen { rotate, config } => {
            let cfg = load_config(config.as_deref())?;
            let (path, grace) = (cfg.key_file(), key_grace(&cfg));
            let keys = if rotate {
                let keys = atrund_secrets::RunnerKeys::rotate(&path, grace)?;
                eprintln!(
                    "rotated the runner key in {}; the previous key decrypts for {} s more; restart the runner",
                    path.display(),
                    grace.as_secs()
                );
                keys
            } else {
                let (keys, status) = atrund_secrets::RunnerKeys::load_or_create(&path, grace)?;
                match status {
                    atrund_secrets::KeyFileStatus::Created => {
                        eprintln!("created {}", path.display())
                    }
                    atrund_secrets::KeyFileStatus::Loaded { .. } => eprintln!(
                        "{} already exists (use --rotate to replace its key)",
                        path.display()
                    ),
                }
                keys
            };
            println!("{}", keys.public_key());
            Ok(())
        }
        Command::Serve { config } => serve(load_config(config.as_deref())?, None).await,
        Command::SandboxInit { .. } => Ok(()),
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
    let secrets = Arc::new(atrund_secrets::Opener::new(load_keys(&config)?));

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
    // Cgroups of this runner (its id comes from the data dir); leftovers of a crash are swept.
    let cgroups = Arc::new(
        CgroupManager::start(&runner_id_for(&data_dir))
            .with_freeze_after_idle(config.limits.freeze_after_idle()),
    );
    let (executor, isolation) = pick_executor(&config, deno, cgroups.clone(), &data_dir).await?;
    let mut enforcement = executor.enforcement();
    enforcement.push(isolation);
    let enforcement = Arc::new(enforcement);
    for e in enforcement.iter() {
        if e.enforced {
            tracing::info!(limit = e.limit, how = %e.how, "limit enforced");
        } else {
            tracing::warn!(limit = e.limit, why = %e.how, "limit NOT enforced (docs/limits.md)");
        }
    }
    if executor.name() == "none" {
        tracing::warn!(
            "isolation = \"none\": bundles run as Deno processes with permission flags and a \
             cgroup only; see docs/security.md for what this does not contain"
        );
    }
    let pool = Pool::new(executor, pool_config(&config.pool));
    if config.allow_http {
        tracing::warn!("allow_http is on: plain-http PDS and did:web are accepted for loopback hosts (development only)");
    }
    tracing::info!(policy = %config.policy.describe(), "author policy");

    // Host routes' label table (docs/origins.md): a cache the runner refills, so a damaged file
    // costs only the host routes learnt so far, never the start.
    let origins_path = data_dir.join("origins.json");
    let origins = match atrund_http::OriginTable::open(origins_path.clone()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "starting with an empty origin table");
            atrund_http::OriginTable::empty(origins_path)
        }
    };
    if let Some(d) = &config.http.bundle_domain {
        tracing::info!(bundle_domain = %d, "host routes on: each bundle is served at {{label}}.{d} (docs/origins.md)");
    }
    let (drain_tx, drain_rx) = watch::channel(false);
    let state = AppState {
        config: Arc::new(config.clone()),
        identity,
        source,
        pool: pool.clone(),
        local: local.map(Arc::new),
        runtime_version,
        secrets,
        draining: drain_rx.clone(),
        enforcement,
        origins: Arc::new(origins),
    };
    if let Some(l) = &state.local {
        tracing::info!(
            dir = %l.dir.display(),
            url = %format!("http://{}/bundle/local/{}/latest/{{endpoint}}", config.listen, l.name),
            "serving local bundle"
        );
    }
    let prewarm_state = state.clone();
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
    // Scripts and tests find the address by this exact message: keep it stable.
    tracing::info!(%addr, "{}", LISTENING_MESSAGE);

    if let Some(admin_addr) = config.pool.admin_addr(config.listen) {
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| {
                format!("cannot bind the admin endpoint on {admin_addr} (pool.admin_listen / ATRUND_POOL_ADMIN_LISTEN; \"off\" disables it)")
            })?;
        let bound = admin
            .local_addr()
            .context("cannot read the admin address")?;
        if !bound.ip().is_loopback() {
            tracing::warn!(admin = %bound, "the admin endpoint has no authentication and is not on loopback");
        }
        tracing::info!(admin = %bound, "admin endpoint up: GET /admin/pool");
        let admin_app = atrund_http::admin_router(pool.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, admin_app).await {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
    }
    if !config.pool.prewarm.is_empty() {
        tokio::spawn(prewarm_loop(
            prewarm_state,
            config.pool.prewarm.clone(),
            usize::try_from(config.pool.prewarm_instances).unwrap_or(1),
        ));
    }

    // Drain: the listener stays open so /readyz can answer 503 and new invocations get 503
    // Draining, while admitted requests get up to the grace to finish; then instances stop and
    // the server closes its (now idle) connections.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    tokio::spawn(wait_for_signals(drain_tx));
    let mut drain_signal = drain_rx;
    tokio::select! {
        r = &mut server => {
            r.context("HTTP server task failed")?.context("HTTP server failed")?;
            pool.shutdown().await;
            return Ok(());
        }
        _ = drain_signal.wait_for(|d| *d) => {}
    }
    let grace = Duration::from_millis(config.pool.drain_grace_ms);
    if pool.drain(grace).await {
        tracing::info!("in-flight requests finished");
    } else {
        tracing::warn!(
            in_flight = pool.stats().requests_in_flight,
            grace_ms = config.pool.drain_grace_ms,
            "drain grace over; stopping instances with requests still in flight"
        );
    }
    tracing::info!("stopping instances");
    pool.shutdown().await;
    if let Err(e) = cgroups.remove_parents() {
        tracing::warn!(error = %e, "could not remove the runner's cgroups");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r.context("HTTP server failed")?,
        Ok(Err(e)) => return Err(e).context("HTTP server task failed"),
        Err(_) => tracing::warn!("connections still open 5 s after the drain; exiting"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The executor for `isolation`, and the describeRunner entry that says which one and why.
/// Order for "auto": [microVM: not available yet] → container → none (with a loud warning).
async fn pick_executor(
    config: &Config,
    deno: DenoBinary,
    cgroups: Arc<CgroupManager>,
    data_dir: &Path,
) -> Result<(Arc<dyn Executor>, Enforcement)> {
    use atrund_config::Isolation;
    let note = |enforced: bool, how: String| Enforcement {
        limit: "isolation",
        enforced,
        how,
    };
    let none = || Arc::new(NoneExecutor::new(deno.clone()).with_cgroups(cgroups.clone()));
    match config.isolation {
        Isolation::None => Ok((
            none(),
            note(
                false,
                "none, as configured: Deno flags + cgroup only (docs/security.md)".into(),
            ),
        )),
        Isolation::Container => {
            let exec = container_executor(config, deno.clone(), cgroups.clone(), data_dir)
                .await
                .map_err(|why| {
                    anyhow::anyhow!(
                        "isolation = \"container\" is not possible on this machine: {why}"
                    )
                })?;
            tracing::info!("isolation: container (bubblewrap + Landlock + seccomp + egress proxy)");
            Ok((exec, note(true, "container, as configured".into())))
        }
        Isolation::Auto => {
            let microvm = "microvm: not available in this version";
            match container_executor(config, deno.clone(), cgroups.clone(), data_dir).await {
                Ok(exec) => {
                    tracing::info!("isolation auto: container ({microvm})");
                    Ok((
                        exec,
                        note(true, format!("auto chose container ({microvm})")),
                    ))
                }
                Err(why) => {
                    tracing::warn!(
                        "ISOLATION IS WEAK: isolation = \"auto\" fell back to \"none\" because the \
                         container backend is not possible here: {why}. Bundles run with Deno flags and \
                         a cgroup only (docs/security.md). Install bubblewrap and run as root to fix."
                    );
                    Ok((
                        none(),
                        note(
                            false,
                            format!("auto fell back to none: {microvm}; container: {why}"),
                        ),
                    ))
                }
            }
        }
        Isolation::Microvm | Isolation::Firecracker => {
            anyhow::bail!(
                "isolation \"{}\" is not available yet",
                config.isolation.as_str()
            )
        }
    }
}

/// The container backend, if this machine can run it: bwrap found, every cgroup limit usable,
/// the root assembled, and a real sandbox started once (the probe).
async fn container_executor(
    config: &Config,
    deno: DenoBinary,
    cgroups: Arc<CgroupManager>,
    data_dir: &Path,
) -> std::result::Result<Arc<dyn Executor>, String> {
    let bwrap = atrund_sandbox::find_bwrap(
        Some(Path::new(&config.container.bwrap)).filter(|p| p.components().count() > 1),
    )
    .ok_or_else(|| {
        format!(
            "bubblewrap ('{}') not found; install it with `apt-get install -y bubblewrap` (container.bwrap)",
            config.container.bwrap
        )
    })?;
    let missing: Vec<String> = NoneExecutor::new(deno.clone())
        .with_cgroups(cgroups.clone())
        .enforcement()
        .into_iter()
        // Only the cgroup limits: the container's PID 1 applies Landlock and seccomp itself, and
        // the idle freezer is reported but not required.
        .filter(|e| !e.enforced && !matches!(e.limit, "landlock" | "seccomp" | "idleFreeze"))
        .map(|e| format!("{}: {}", e.limit, e.how))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cgroup limits unavailable ({})",
            missing.join("; ")
        ));
    }
    let init = std::env::current_exe()
        .map_err(|e| format!("cannot find the at-rund binary for the sandbox's PID 1: {e}"))?;
    let parse = |list: &[String]| -> std::result::Result<Vec<atrund_egress::IpNet>, String> {
        list.iter()
            .map(|c| c.parse().map_err(|e| format!("egress range '{c}': {e}")))
            .collect()
    };
    let proxy = atrund_egress::EgressProxy::start(atrund_egress::EgressConfig {
        allow_cidrs: parse(&config.egress.allow_cidrs)?,
        deny_cidrs: parse(&config.egress.deny_cidrs)?,
        ..atrund_egress::EgressConfig::default()
    })
    .await
    .map_err(|e| format!("egress proxy: {e}"))?;
    tracing::info!(addr = %proxy.local_addr(), "egress proxy listening");
    let cfg = ContainerConfig {
        bwrap,
        deno,
        init: (init, vec!["sandbox-init".into()]),
        rootfs_dir: data_dir.join("rootfs"),
        tmp_mib: config.container.tmp_mib,
    };
    let exec = tokio::task::spawn_blocking(move || ContainerExecutor::new(cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .with_cgroups(cgroups)
        .with_egress(Arc::new(proxy));
    tracing::info!(rootfs = %exec.rootfs().path().display(), libs = exec.rootfs().libs().len(), "container root ready");
    exec.probe().await?;
    Ok(Arc::new(exec))
}

fn key_grace(config: &Config) -> Duration {
    Duration::from_secs(config.secrets.rotation_grace_secs)
}

/// The runner's keypair: loaded, or created (mode 0600) on first start.
fn load_keys(config: &Config) -> Result<atrund_secrets::RunnerKeys> {
    let path = config.key_file();
    let (keys, status) = atrund_secrets::RunnerKeys::load_or_create(&path, key_grace(config))?;
    let public_key = keys.public_key().to_multibase();
    match status {
        atrund_secrets::KeyFileStatus::Created => {
            tracing::info!(file = %path.display(), %public_key, "runner key created")
        }
        atrund_secrets::KeyFileStatus::Loaded { pruned } => tracing::info!(
            file = %path.display(),
            %public_key,
            previous_keys_expired = pruned,
            "runner key loaded"
        ),
    }
    Ok(keys)
}

fn pool_config(p: &atrund_config::PoolSection) -> atrund_pool::PoolConfig {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    atrund_pool::PoolConfig {
        max_instances: n(p.max_instances),
        max_instances_per_bundle: n(p.max_instances_per_bundle),
        max_instances_per_author: n(p.max_instances_per_author),
        idle_timeout: Duration::from_millis(p.idle_timeout_ms),
        memory_budget_bytes: p.memory_budget_mib.saturating_mul(1024 * 1024),
        busy_wait: Duration::from_millis(p.busy_wait_ms),
        crash_backoff: Duration::from_millis(p.crash_backoff_ms),
        crash_backoff_max: Duration::from_millis(p.crash_backoff_max_ms),
    }
}

/// Keeps the `pool.prewarm` bundles warm, re-resolving every 30 s so that a new `latest` is
/// warmed (and the one it replaced unpinned).
async fn prewarm_loop(st: AppState, entries: Vec<String>, instances: usize) {
    let mut pinned: Vec<Option<atrund_pool::InstanceKey>> = vec![None; entries.len()];
    loop {
        for (entry, last) in entries.iter().zip(pinned.iter_mut()) {
            if st.pool.is_draining() {
                return;
            }
            let Some((author, name, version)) = atrund_config::PoolSection::parse_prewarm(entry)
            else {
                continue;
            };
            match atrund_http::prewarm(&st, author, name, version, instances).await {
                Ok(key) => {
                    if last.as_ref().is_some_and(|k| *k != key) {
                        if let Some(old) = last.take() {
                            st.pool.unpin(&old);
                        }
                    }
                    if last.is_none() {
                        tracing::info!(bundle = %entry, record = %key.record_cid, instances, "pre-warmed");
                    }
                    *last = Some(key);
                }
                Err(e) => {
                    tracing::warn!(bundle = %entry, error = %e.code, message = %e.message, "pre-warm failed; retrying in 30 s")
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
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
