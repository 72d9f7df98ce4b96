//! `at-rund`: the runner daemon. This binary is the edge where configuration, logging, signals
//! and the crates of the data path are wired together; it holds no logic of its own beyond that.
//! Start-up is explicit and logged step by step so an operator can see what the runner found.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// mimalloc instead of glibc's malloc: the warm request path allocates and frees many small
/// objects (headers, futures, buffers) on one thread, where glibc spent about a third of
/// at-rund's user time (docs/performance.md, issue 14).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log message that announces the HTTP API's address (`... http api listening addr=IP:PORT`).
const LISTENING_MESSAGE: &str = "http api listening";
use clap::{Parser, Subcommand};

mod announce;
mod doctor;
mod observe;
mod reload;
mod runtime_test;
mod settings;
use settings::{instances_group, load_config, pool_config};
mod traces;
use tokio::sync::watch;

use atrund_bundle::{BundleSource, BundleStore, SourceConfig};
use atrund_config::{Config, DataLayout};
use atrund_http::{AppShared, AppState, LocalBundle};
use atrund_identity::{IdentityConfig, IdentityResolver};
use atrund_pool::Pool;
use atrund_repo::{FetchConfig, RepoClient};
use atrund_sandbox::{choose_executor, runner_id_for, CgroupManager, Enforcement, Executor};

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
        /// The runtime the code is for: deno, node (which needs node.path) or python (python.path).
        #[arg(long, default_value = "deno")]
        runtime: String,
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
    /// Check the host and the configuration and say what to fix (docs/troubleshooting.md);
    /// exits non-zero when at-rund could not start as configured. Changes nothing.
    Doctor {
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
        /// One JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run the runtime conformance kit: the protocol, confinement and limit cases against one
    /// runtime, through the executor this configuration chooses (set ATRUND_ISOLATION to test
    /// another backend); prints PASS or FAIL per case and exits non-zero when any failed
    /// (docs/runtimes.md).
    RuntimeTest {
        /// The runtime whose kit to run.
        #[arg(long, default_value = "deno")]
        runtime: String,
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Announce this runner in its operator's repository: write the `dev.atrund.runner` record
    /// (key `self`) from what the runner at --url answers on describeRunner, then read it back
    /// (docs/network.md). Sign in as for `at-run`: a stored `at-run login` session, or
    /// --identifier, --pds and an app password.
    Announce {
        /// The runner's base URL as authors and callers reach it (https; http only for
        /// localhost). The runner must be up and answer there.
        #[arg(long, value_name = "URL")]
        url: String,
        /// Print the record instead of writing it.
        #[arg(long)]
        print: bool,
        /// Write even when the stored record says the same and was written today (without it,
        /// an unchanged record is rewritten at most once a day, so a timer may run this often).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        auth: at_run::auth::AuthArgs,
    },
    /// PID 1 inside a container instance (internal: started by the container backend).
    #[command(hide = true)]
    SandboxInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Create the runner's X25519 key (the one authors seal secrets to) if there is none, and
    /// print its public key (docs/secrets.md).
    Keygen {
        /// Make a new current key. The old one still opens records for
        /// `secrets.rotation_grace_secs`; after that authors must run `at-run secrets set` again.
        #[arg(long)]
        rotate: bool,
        /// TOML config file (as for `serve`).
        #[arg(long, env = "ATRUND_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    // As a microVM guest's `/init` (the guest image carries this binary), the kernel starts it
    // as PID 1 with no arguments: it is the guest agent (docs/microvm.md).
    if std::process::id() == 1 && std::env::args_os().len() == 1 {
        return atrund_sandbox::init::main(&[]);
    }
    let cli = Cli::parse();
    // Before logging and the async runtime: PID 1 of a sandbox stays single-threaded until it
    // has confined itself.
    if let Command::SandboxInit { args } = &cli.command {
        return atrund_sandbox::init::main(args);
    }
    // Before any thread (the trace exporter's, the runtime's): author volumes are mounted in a
    // namespace of the runner's own, so they vanish with it. The outcome is reported when the
    // volumes are set up (`settings::author_volumes`); `doctor` enters one too, to say the same.
    let probes = matches!(cli.command, Command::Doctor { .. });
    if (cli.command.serves() || probes) && atrund_sandbox::effective_root() {
        let _ = atrund_sandbox::enter_private_mount_namespace();
    }
    let early = observe::early_config(cli.command.config());
    let format = early.as_ref().map(|c| c.log.format).unwrap_or_default();
    // Only the serving commands trace; the pipeline is built before the async runtime (its
    // exporter has a blocking client of its own) and flushed after it.
    let traces = match early.filter(|c| c.otel.enabled && cli.command.serves()) {
        Some(c) => match traces::Traces::start(&c.otel) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    observe::init_logging(format, traces.as_ref().map(traces::Traces::tracer));
    let code = run_to_end(cli);
    if let Some(t) = traces {
        t.shutdown();
    }
    code
}

fn run_to_end(cli: Cli) -> std::process::ExitCode {
    // One CPU to run on (pinned, or a 1-vCPU host): the single-threaded scheduler, whose task
    // switches are cheaper than a one-worker multi-threaded one's; blocking work still goes to
    // the blocking pool either way.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let built = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => {
            // Part of a serving runner's start-up log; the one-shot commands' output stays theirs.
            if cli.command.serves() {
                tracing::info!(
                    scheduler = %if one_cpu { "current_thread" } else { "multi_thread" },
                    "async runtime started"
                );
            }
            rt
        }
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

impl Command {
    /// True for the commands that serve requests.
    fn serves(&self) -> bool {
        matches!(self, Command::Serve { .. } | Command::Dev { .. })
    }

    /// The config file the command was given.
    fn config(&self) -> Option<&Path> {
        match self {
            Command::Serve { config }
            | Command::Dev { config, .. }
            | Command::CheckConfig { config }
            | Command::Doctor { config, .. }
            | Command::RuntimeTest { config, .. }
            | Command::Keygen { config, .. } => config.as_deref(),
            Command::SandboxInit { .. } | Command::Announce { .. } => None,
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Announce {
            url,
            print,
            force,
            auth,
        } => {
            let rec = announce::record(&url).await?;
            if print {
                println!("{}", serde_json::to_string_pretty(&rec)?);
                return Ok(());
            }
            match announce::publish(&rec, &auth, force).await? {
                announce::Announced::Written(uri) => {
                    println!("announced {} as {uri}", rec.endpoint)
                }
                announce::Announced::Unchanged { uri, since } => println!(
                    "{uri} already announces {} as it is now (written {since}); not written again",
                    rec.endpoint
                ),
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = load_config(config.as_deref())?;
            print!("{}", cfg.to_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Doctor { config, json } => doctor::run(config.as_deref(), json).await,
        Command::RuntimeTest { runtime, config } => {
            runtime_test::run(config.as_deref(), &runtime).await
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
        Command::Serve { config } => {
            let source = reload::Source {
                path: config,
                dev: false,
            };
            serve(source, None).await
        }
        Command::SandboxInit { .. } => Ok(()),
        Command::Dev {
            dir,
            name,
            entry,
            runtime,
            config,
        } => {
            let source = reload::Source {
                path: config,
                dev: true,
            };
            let local = LocalBundle::open(&dir, name.as_deref(), entry.as_deref())
                .and_then(|l| l.with_runtime(&runtime))
                .map_err(anyhow::Error::msg)?;
            serve(source, Some(local)).await
        }
    }
}

async fn serve(config_source: reload::Source, mut local: Option<LocalBundle>) -> Result<()> {
    // Before anything slow: until the handler exists a hang-up would end the process.
    let hangups = reload::hangups();
    let config = config_source.load()?;
    let layout = config.layout();
    prepare_data_dir(&layout, instances_group(&config))?;
    tracing::info!(data_dir = %layout.root().display(), "data dir ready");
    let secrets = Arc::new(atrund_secrets::Opener::new(load_keys(&config)?));

    let mut runtimes = settings::runtimes(&config).await?;
    if atrund_sandbox::effective_root() {
        // Instances run as sandbox.run_as_uid: a runtime under /root (0700) gets a copy they can
        // run.
        let id = settings::run_as(config.sandbox.run_as_uid, config.sandbox.run_as_gid)?;
        runtimes = runtimes.reachable_by(id, &layout.staged())?;
        // A dev bundle under /root: its code is served from copies (decided once, here).
        if let Some(l) = local.take() {
            local = Some(match atrund_sandbox::unreachable_by(&l.entry, id, 0o4) {
                Some(why) => {
                    tracing::info!(entry = %l.entry.display(), %why, "the instances' user cannot read the bundle's folder: serving copies of its code from the data dir");
                    l.with_staging(layout.staged())
                }
                None => l,
            });
        }
    }
    if let Some(l) = &local {
        // The dev bundle's runtime must be offered: said now, not on its first request.
        let offered = runtimes.offered();
        if !offered.iter().any(|k| k.as_str() == l.runtime) {
            anyhow::bail!(
                "runtime {} is not offered by this configuration; set node.path (ATRUND_NODE_PATH) to a Node 24 or newer binary, or python.path (ATRUND_PYTHON_PATH) to a Python 3.11 or newer interpreter",
                l.runtime
            );
        }
    }
    let versions = runtimes.versions().await?;
    for (kind, version) in &versions {
        tracing::info!(runtime = kind.as_str(), version = %version, "runtime found");
    }
    let offered: Vec<atrund_api::Runtime> = versions
        .into_iter()
        .map(|(kind, version)| atrund_api::Runtime {
            name: kind.as_str().into(),
            version,
        })
        .collect();

    let address_policy = settings::own_requests_policy(&config.allow_addrs)?;
    // Sections are destructured, so a new key cannot be silently left at a component default.
    let atrund_config::IdentitySection {
        timeout_ms,
        cache_stale_secs,
        cache_max_secs,
        cache_error_secs,
        cache_unreachable_secs,
        cache_capacity,
        handle_resolver,
        dns,
        well_known,
    } = config.identity.clone();
    let names = settings::own_requests_names(&config);
    let extra_roots = settings::own_requests_roots(&config)?;
    if let Some(server) = config.dns_server_addr() {
        tracing::info!(%server, "the runner's own look-ups ask this DNS server (dns_server)");
    }
    if let Some(path) = &config.extra_ca_file {
        tracing::info!(file = %path.display(), certificates = extra_roots.len(), "the runner's own requests also trust these certificate authorities (extra_ca_file)");
    }
    let identity = IdentityResolver::with_name_resolver(
        IdentityConfig {
            plc_url: config.plc_url.clone(),
            allow_http_loopback: config.allow_http,
            address_policy: address_policy.clone(),
            timeout: Duration::from_millis(timeout_ms),
            stale_ttl: Duration::from_secs(cache_stale_secs),
            max_ttl: Duration::from_secs(cache_max_secs),
            error_ttl: Duration::from_secs(cache_error_secs),
            unreachable_ttl: Duration::from_secs(cache_unreachable_secs),
            cache_capacity: usize::try_from(cache_capacity).unwrap_or(usize::MAX),
            handle_resolution_service: handle_resolver,
            dns,
            well_known,
            extra_roots: extra_roots.clone(),
            dns_server: config.dns_server_addr(),
        },
        names.clone(),
    )?;
    let atrund_config::FetchSection {
        timeout_ms,
        max_record_bytes,
        max_bundle_bytes,
        revalidate_secs,
        max_list_pages,
        event_streams,
    } = config.fetch.clone();
    let repo = RepoClient::with_name_resolver(
        FetchConfig {
            timeout: Duration::from_millis(timeout_ms),
            max_car_bytes: max_record_bytes,
            max_blob_bytes: max_bundle_bytes,
            allow_http_loopback: config.allow_http,
            address_policy,
            extra_roots,
        },
        names,
    )?;
    let store = BundleStore::open(layout.bundles())
        .with_context(|| format!("cannot create {}", layout.bundles().display()))?
        .with_share_per_author(config.tenants.max_store_bytes_per_author);
    if config.tenants.store_gc_after_secs > 0 {
        tokio::spawn(store_gc_loop(
            store.clone(),
            Duration::from_secs(config.tenants.store_gc_after_secs),
        ));
    }
    let graph_repo = repo.clone();
    let source = BundleSource::new(
        identity.clone(),
        repo,
        store,
        SourceConfig {
            max_bundle_bytes,
            revalidate: Duration::from_secs(revalidate_secs),
            max_list_pages: usize::try_from(max_list_pages).unwrap_or(usize::MAX),
            negative_ttl: Duration::from_secs(config.tenants.negative_cache_secs),
            identity_refresh_min: Duration::from_secs(config.tenants.identity_refresh_min_secs),
        },
    )
    .with_revision_floors(Arc::new(
        atrund_bundle::RevisionFloors::load(&layout.revisions())
            .context("cannot load the repository revision floors")?,
    ));
    let source = if event_streams {
        source.with_event_streams()
    } else {
        source
    };
    // Cgroups of this runner (its id comes from the data dir); leftovers of a crash are swept.
    let cgroups = Arc::new(
        CgroupManager::start(&runner_id_for(layout.root()))
            .with_freeze_after_idle(config.limits.freeze_after_idle()),
    );
    let (executor, isolation, egress, container) =
        pick_executor(&config, runtimes, cgroups.clone()).await?;
    let executor = settings::generic_pool(&config, executor, container);
    let (volumes, data_quota) = settings::author_volumes(&config, &layout)?;
    let mut enforcement = executor.enforcement();
    enforcement.push(isolation);
    enforcement.push(data_quota);
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
            "isolation = \"none\": bundles run as Deno processes with permission flags, \
             Landlock, seccomp, a cgroup and the egress proxy but no namespaces; see \
             docs/security.md for what this does not contain"
        );
    }
    let pool = Pool::new(executor, pool_config(&config.pool));
    if config.allow_http {
        tracing::warn!("allow_http is on: plain-http PDS and did:web are accepted for loopback hosts (development only); their addresses still need allow_addrs");
    }
    if !config.allow_addrs.is_empty() {
        tracing::warn!(allow_addrs = %config.allow_addrs.join(","), "the runner's own requests may reach these special-purpose addresses");
    }
    tracing::info!(policy = %config.policy.describe(), "author policy");
    let graph = atrund_trust::GraphConfig::from_section(&config.trust)
        .context("trust")?
        .map(|g| {
            tracing::info!(graph = g.mode.as_str(), operator = %g.operator, refresh_secs = g.refresh.as_secs(), "trust from the social graph: reading the operator's follows (docs/network.md)");
            atrund_trust::GraphTrust::start(
                g,
                identity.clone(),
                graph_repo,
                source.event_watch().cloned(),
            )
        });
    if !config.trust.deny.is_empty() {
        tracing::info!(deny = %config.trust.deny.join(","), "refused whatever else admits them (trust.deny)");
    }
    if config.otel.enabled {
        let o = &config.otel;
        tracing::info!(endpoint = %o.endpoint, service = %o.service_name, sampler = o.sampler.as_str(), ratio = o.sampler_arg, "traces on: exported over OTLP/HTTP (docs/observability.md)");
    }

    // Host routes' label table (docs/origins.md): a cache the runner refills, so a damaged file
    // costs only the host routes learnt so far, never the start.
    let origins_path = layout.origins();
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
    let cache = response_cache(&config)?;
    let redis = shared_state(&config).await?;
    let jobs = job_queue(&config, redis.clone())?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let cluster = cluster_router(&config, addr, redis, drain_rx.clone()).await?;
    let counters = observe::counters(observe::CounterSources {
        pool: pool.clone(),
        egress: egress.clone(),
        identity: identity.clone(),
        cache: cache.clone(),
        jobs: jobs.clone(),
        cluster: cluster.clone(),
        source: source.clone(),
        graph: graph.clone(),
    });
    let metrics = observe::metrics(&config, pool.backend(), counters.clone());
    let rates = Arc::new(atrund_policy::AuthorRates::new(config.tenants.clone()));
    let (live, config_tx) = atrund_http::LiveConfig::new(config.clone());
    let logs = authors_logs(
        &config,
        live.clone(),
        graph.clone(),
        addr,
        identity.clone(),
        drain_rx.clone(),
    );
    let state = AppState::new(AppShared {
        live,
        identity,
        source,
        pool: pool.clone(),
        local: local.map(Arc::new),
        graph,
        runtimes: offered,
        secrets,
        draining: drain_rx.clone(),
        enforcement,
        rates: rates.clone(),
        data_quota: Arc::new(atrund_http::DataQuota::with_volumes(volumes.clone())),
        origins: Arc::new(origins),
        metrics: metrics.clone(),
        counters,
        status: Arc::default(),
        logs,
        cache,
        jobs,
        cluster,
        warm: Default::default(),
    });
    if let Some(l) = &state.local {
        tracing::info!(
            dir = %l.dir.display(),
            url = %format!("http://{}/bundle/local/{}/latest/{{endpoint}}", config.listen, l.name),
            "serving local bundle"
        );
    }
    atrund_http::jobs::spawn_workers(state.clone());
    atrund_http::jobs::spawn_cron(state.clone());
    let prewarm_state = state.clone();
    let admin_state = state.clone();
    let app = atrund_http::service(state);
    // Scripts and tests find the address by this exact message: keep it stable.
    tracing::info!(%addr, "{}", LISTENING_MESSAGE);
    // Bundles must not call the runner itself through the egress proxy.
    egress.protect(addr);

    if let Some(admin_addr) = config.pool.admin_addr(config.listen) {
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| {
                format!("cannot bind the admin endpoint on {admin_addr} (pool.admin_listen / ATRUND_POOL_ADMIN_LISTEN; \"off\" disables it)")
            })?;
        let bound = admin
            .local_addr()
            .context("cannot read the admin address")?;
        egress.protect(bound);
        if !bound.ip().is_loopback() {
            tracing::warn!(admin = %bound, "the admin endpoint has no authentication and is not on loopback");
        }
        tracing::info!(admin = %bound, "admin endpoint up: GET /admin/pool, GET /metrics, GET /status");
        let admin_app = atrund_http::admin_router(admin_state);
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
            Duration::from_secs(config.pool.prewarm_refresh_secs),
        ));
    }

    // Drain: the listener stays open so /readyz can answer 503 and new invocations get 503
    // Draining, while admitted requests get up to the grace to finish; then instances stop and
    // the server closes its (now idle) connections.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = atrund_http::serve::ConnectionLimits {
        max_connections: usize::try_from(config.http.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
    };
    let mut server = tokio::spawn(atrund_http::serve::serve(
        listener,
        app,
        limits,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::spawn(wait_for_signals(drain_tx));
    // The drain reads its grace and close wait as they are when it begins.
    let live = config_tx.subscribe();
    if let Some(hup) = hangups {
        let targets = reload::Targets {
            config: config_tx,
            pool: pool.clone(),
            rates,
        };
        tokio::spawn(reload::on_hangup(hup, config_source, targets));
    }
    let mut drain_signal = drain_rx;
    tokio::select! {
        r = &mut server => {
            r.context("HTTP server task failed")?;
            pool.shutdown().await;
            return Ok(());
        }
        _ = drain_signal.wait_for(|d| *d) => {}
    }
    let config = live.borrow().clone();
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
    if let Some(v) = &volumes {
        v.unmount_all();
    }
    if let Err(e) = cgroups.remove_parents() {
        tracing::warn!(error = %e, "could not remove the runner's cgroups");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_millis(config.pool.close_wait_ms), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e).context("HTTP server task failed"),
        Err(_) => tracing::warn!(
            close_wait_ms = config.pool.close_wait_ms,
            "connections still open after the drain (pool.close_wait_ms); exiting"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The authors' logs (`[logs]`): their rings, unless the operator keeps none, and the runner's
/// service DID (`logs.service_did`, else `did:web:` + the bound main address).
fn authors_logs(
    config: &Config,
    live: atrund_http::LiveConfig,
    graph: Option<atrund_trust::GraphTrust>,
    addr: std::net::SocketAddr,
    identity: IdentityResolver,
    draining: watch::Receiver<bool>,
) -> Arc<atrund_http::logs::AuthorsLogs> {
    let atrund_config::LogsSection {
        keep,
        max_lines_per_bundle,
        max_bundles,
        service_did,
        max_token_secs,
        refuse_replayed_tokens,
        max_tail_secs,
    } = config.logs.clone();
    let service_did = service_did.unwrap_or_else(|| {
        let host = match addr {
            std::net::SocketAddr::V4(a) => a.ip().to_string(),
            std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        format!("did:web:{host}%3A{}", addr.port())
    });
    let store = keep.then(|| {
        atrund_logs::LogStore::new(atrund_logs::LogCaps {
            lines_per_bundle: usize::try_from(max_lines_per_bundle).unwrap_or(usize::MAX),
            bundles: usize::try_from(max_bundles).unwrap_or(usize::MAX),
        })
    });
    if keep {
        tracing::info!(%service_did, max_lines_per_bundle, max_bundles, "authors' logs kept: dev.atrund.getLogs and tailLogs with service auth (aud = service_did)");
    } else {
        tracing::info!("authors' logs off (logs.keep = false)");
    }
    Arc::new(atrund_http::logs::AuthorsLogs::new(
        store,
        atrund_http::logs::LogsAccess {
            service_did,
            config: live,
            graph,
            max_token_secs,
            refuse_replayed: refuse_replayed_tokens,
            max_tail: Duration::from_secs(max_tail_secs),
            refresh_min: Duration::from_secs(config.tenants.identity_refresh_min_secs),
        },
        identity,
        draining,
    ))
}

/// Removes stored code unused for `max_age`: now, then hourly.
async fn store_gc_loop(store: BundleStore, max_age: Duration) {
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.collect_garbage(max_age)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed stored code unused for longer than tenants.store_gc_after_secs"
            ),
            Err(e) => tracing::warn!(error = %e, "store garbage collection failed"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// The sandbox's choice of backend for `isolation` (`atrund_sandbox::choose_executor`), from the
/// config.
async fn pick_executor(
    config: &Config,
    runtimes: atrund_sandbox::Runtimes,
    cgroups: Arc<CgroupManager>,
) -> Result<(
    Arc<dyn Executor>,
    Enforcement,
    Arc<atrund_egress::EgressProxy>,
    Option<atrund_sandbox::ContainerExecutor>,
)> {
    let requested = settings::requested_isolation(config)?;
    let mut choice = settings::sandbox_choice(
        config,
        requested,
        runtimes,
        cgroups,
        config.layout().rootfs(),
    )?;
    if atrund_sandbox::effective_root() {
        // The runtimes were staged already at start (Deno is run before this); at-rund is
        // staged here.
        choice = settings::reachable_choice(choice, &config.layout().staged())?;
    }
    let chosen = choose_executor(choice).await?;
    Ok((
        chosen.executor,
        chosen.isolation,
        chosen.egress,
        chosen.container,
    ))
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

/// Keeps the `pool.prewarm` bundles warm, re-resolving every `pool.prewarm_refresh_secs` so
/// that a new `latest` is warmed (and the one it replaced unpinned).
async fn prewarm_loop(st: AppState, entries: Vec<String>, instances: usize, every: Duration) {
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
                        tracing::info!(bundle = %entry, record = %key, instances, "pre-warmed");
                    }
                    *last = Some(key);
                }
                Err(e) => {
                    tracing::warn!(bundle = %entry, error = %e.code, message = %e.message, "pre-warm failed; retrying in 30 s")
                }
            }
        }
        tokio::time::sleep(every).await;
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

/// Creates `data_dir`'s subdirs, the runner's alone whatever the umask (tenants' data and code,
/// instance dirs; made 0700 beneath too); an existing dir of an older version is tightened. With
/// `group` (the gid of unprivileged instances, either backend) `data_dir` and the subdirs are
/// instead group-owned by it, mode 0710: the instances pass through to what they own or may read
/// beneath, and can list nothing; other local users cannot even pass. Set on the opened dir, not
/// the name.
fn prepare_data_dir(layout: &DataLayout, group: Option<u32>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let set = |p: &Path| atrund_sandbox::runner_dir_mode(p, group);
    let mode = if group.is_some() { "0710" } else { "0700" };
    for sub in DataLayout::DIRS {
        let p = layout.root().join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .and_then(|()| set(&p))
            .with_context(|| {
                format!(
                    "cannot create {} with mode {mode} (data_dir / ATRUND_DATA_DIR must be writable)",
                    p.display()
                )
            })?;
    }
    if group.is_some() {
        set(layout.root()).with_context(|| {
            format!(
                "cannot give {} to the instances' group (sandbox.run_as_gid) with mode 0710",
                layout.root().display()
            )
        })?;
    }
    let run = layout.run();
    for entry in
        std::fs::read_dir(&run).with_context(|| format!("cannot read {}", run.display()))?
    {
        let entry = entry?;
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing leftover instance dir or shim");
        // Instance dirs, and the shim a `none` runner writes beside them (`run/at-run-exec.ts`).
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove leftover {}", path.display()))?;
    }
    // Copies for the instances' uid are made again by this start (hard links where possible), so
    // none of an older binary or edit outlives it.
    let staged = layout.staged();
    for entry in
        std::fs::read_dir(&staged).with_context(|| format!("cannot read {}", staged.display()))?
    {
        let path = entry?.path();
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the staged copy {}", path.display()))?;
    }
    Ok(())
}

/// The Redis the runners share (`[state]`, docs/cluster.md), when `state.backend = "redis"`:
/// reached once at start, or the start fails.
async fn shared_state(config: &Config) -> anyhow::Result<Option<atrund_jobs::RedisConnection>> {
    if config.state.backend != atrund_config::StateBackend::Redis {
        return Ok(None);
    }
    let url = &config.state.redis_url;
    let conn = atrund_jobs::connect_redis(url)
        .await
        .context("cannot reach the Redis the runners share (state.backend = \"redis\")")?;
    tracing::info!(redis = %atrund_jobs::redacted(url), prefix = %config.state.redis_prefix, "shared state in Redis (docs/cluster.md)");
    Ok(Some(conn))
}

/// The background jobs' queue (`[jobs]`, docs/jobs.md), opened (and migrated) at start: in
/// the data dir, or in the Redis the runners share.
fn job_queue(
    config: &Config,
    redis: Option<atrund_jobs::RedisConnection>,
) -> anyhow::Result<Option<Arc<atrund_http::jobs::Jobs>>> {
    if !config.jobs.enabled {
        tracing::info!("background jobs off (jobs.enabled = false)");
        return Ok(None);
    }
    let queue = match redis {
        None => {
            let path = config.layout().jobs_db();
            let store = atrund_jobs::JobStore::open(&path).with_context(|| {
                format!(
                    "cannot open the job queue {} (jobs.enabled)",
                    path.display()
                )
            })?;
            tracing::info!(
                backend = "sqlite",
                db = %path.display(),
                workers = config.jobs.workers,
                "background jobs on: tasks run from a durable queue (docs/jobs.md)"
            );
            atrund_jobs::Queue::Sqlite(Arc::new(store))
        }
        Some(conn) => {
            tracing::info!(
                backend = "redis",
                workers = config.jobs.workers,
                "background jobs on: tasks run from the queue the runners share (docs/cluster.md)"
            );
            let prefix = format!("{}jobs:", config.state.redis_prefix);
            atrund_jobs::Queue::Redis(atrund_jobs::RedisQueue::new(conn, prefix))
        }
    };
    Ok(Some(Arc::new(atrund_http::jobs::Jobs::new(queue))))
}

/// Routing between the runners (`state.route` with Redis, docs/cluster.md): this runner
/// announces itself and sends each bundle's calls to the runner it belongs to.
async fn cluster_router(
    config: &Config,
    addr: std::net::SocketAddr,
    redis: Option<atrund_jobs::RedisConnection>,
    draining: watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<atrund_http::cluster::Forwarder>>> {
    let Some(conn) = redis.filter(|_| config.state.route) else {
        return Ok(None);
    };
    let url = if config.state.advertise_url.is_empty() {
        if addr.ip().is_unspecified() {
            anyhow::bail!(
                "invalid `state.advertise_url`: the runner listens on {addr}, which the other runners cannot reach as such; set state.advertise_url (ATRUND_STATE_ADVERTISE_URL) to where they reach this one, or turn routing off with state.route = false"
            );
        }
        format!("http://{addr}")
    } else {
        config.state.advertise_url.clone()
    };
    let me = atrund_cluster::Node {
        id: atrund_cluster::new_node_id()?,
        url,
    };
    let prefix = format!("{}cluster:", config.state.redis_prefix);
    let registry = atrund_cluster::Registry::join(conn, &prefix, me)
        .await
        .context("cannot announce this runner in the shared Redis")?;
    registry.spawn_heartbeat(draining);
    tracing::info!(node = %registry.me().id, url = %registry.me().url, live = registry.live().len(), "cluster routing on: each bundle is served by the live runner it belongs to (docs/cluster.md)");
    let forwarder = atrund_http::cluster::Forwarder::new(registry)
        .context("cannot set up the HTTP client for routing")?;
    Ok(Some(Arc::new(forwarder)))
}

/// The response cache (`[cache]`, docs/cache.md), said at start like every other component.
fn response_cache(config: &Config) -> anyhow::Result<Option<Arc<atrund_cache::ResponseCache>>> {
    let c = &config.cache;
    if !c.enabled {
        tracing::info!(
            "response cache off (cache.enabled = false): every request reaches its bundle"
        );
        return Ok(None);
    }
    let limits = atrund_cache::Limits {
        max_bytes: c.max_bytes,
        max_entry_bytes: c.max_entry_bytes,
    };
    if c.disk_max_bytes == 0 {
        tracing::info!(
            max_bytes = c.max_bytes,
            max_entry_bytes = c.max_entry_bytes,
            "response cache on: GET responses with s-maxage or max-age are kept in memory and shared (docs/cache.md)"
        );
        return Ok(Some(Arc::new(atrund_cache::ResponseCache::new(limits))));
    }
    let path = config.layout().cache_db();
    let disk = atrund_cache::DiskStore::open(&path, c.disk_max_bytes)?;
    tracing::info!(
        max_bytes = c.max_bytes,
        max_entry_bytes = c.max_entry_bytes,
        disk = %path.display(),
        disk_max_bytes = c.disk_max_bytes,
        "response cache on: GET responses with s-maxage or max-age are kept in memory and on disk, and shared (docs/cache.md)"
    );
    Ok(Some(Arc::new(atrund_cache::ResponseCache::with_disk(
        limits, disk,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn data_dirs_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.join("run/leftover")).unwrap();
        // The shim a stopped `none` runner leaves beside its instance dirs (a restart failed on it).
        std::fs::write(dir.join("run/at-run-exec.ts"), "// shim").unwrap();
        // A staged copy of an older Deno: made again by each start, never kept.
        std::fs::create_dir_all(dir.join("staged")).unwrap();
        std::fs::write(dir.join("staged/deno-1-2"), "old").unwrap();
        prepare_data_dir(&DataLayout::new(&dir), None).unwrap();
        assert!(!dir.join("run/at-run-exec.ts").exists());
        assert!(!dir.join("staged/deno-1-2").exists());
        for sub in DataLayout::DIRS {
            let mode = std::fs::metadata(dir.join(sub))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{sub} is {mode:o}");
        }
        assert!(!dir.join("run/leftover").exists());
    }

    /// With `none` instances under their own gid (a root runner), the data dir and its subdirs
    /// are root's, that group's and 0710: passable for instances, closed to other users.
    #[test]
    fn data_dirs_are_passable_for_the_instances_group_alone() {
        use std::os::unix::fs::MetadataExt;
        if !atrund_sandbox::effective_root() {
            // Giving a dir to another group needs root.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root in CI"
            );
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        prepare_data_dir(&DataLayout::new(&dir), Some(64300)).unwrap();
        for sub in ["", "bundles", "data", "deno", "run"] {
            let m = std::fs::metadata(dir.join(sub)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (0, 64300, 0o710),
                "{sub}"
            );
        }
    }
}
