//! SIGHUP: the config file and the environment are read again and validated as at start; what
//! may change while running (`atrund_config::Config::reload`) goes into force for the next
//! request, instance and pool decision, and what may not is named in the log and kept. An invalid
//! config is refused with the errors `check-config` would print, and the running one stays.
//! Requests in flight are not touched.
//!
//! Owns: the hang-up handler and applying a reload to the components that hold their own copy
//! (the pool's caps, the author rates). Must not: decide which keys are live (atrund-config).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use atrund_config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Where the configuration came from, to read it again.
pub(crate) struct Source {
    pub path: Option<PathBuf>,
    /// `at-rund dev`: its own settings are applied again after each read.
    pub dev: bool,
}

impl Source {
    pub(crate) fn load(&self) -> Result<Config> {
        let mut cfg = crate::settings::load_config(self.path.as_deref())?;
        if self.dev {
            dev_overrides(&mut cfg);
        }
        Ok(cfg)
    }
}

/// What `at-rund dev` sets whatever the config says.
pub(crate) fn dev_overrides(cfg: &mut Config) {
    // A developer wants to see why a call was slow; dev runners serve their own bundles.
    cfg.http.server_timing = true;
}

/// Installs the SIGHUP handler. Called first thing in `serve`: until a handler exists, a hang-up
/// ends the process (the signal's default).
pub(crate) fn hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP: a hang-up will stop the runner; reload by restarting");
            None
        }
    }
}

/// The components a reload reaches.
pub(crate) struct Targets {
    pub config: watch::Sender<Arc<Config>>,
    pub pool: Arc<atrund_pool::Pool>,
    pub rates: Arc<atrund_policy::AuthorRates>,
}

/// Reloads on every SIGHUP until the runner stops.
pub(crate) async fn on_hangup(mut hup: Signal, source: Source, targets: Targets) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        match source.load() {
            Ok(new) => apply(new, &targets),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "reload refused: the new configuration is invalid; the running one stays in force"
            ),
        }
    }
}

/// Puts a validated config into force (the keys that may change), names the ones kept.
pub(crate) fn apply(new: Config, targets: &Targets) {
    let running = targets.config.borrow().clone();
    let atrund_config::Reload { config, kept } = running.reload(new);
    for key in &kept {
        tracing::warn!(
            key,
            "reload: this key cannot change while running; its running value stays (restart to apply it)"
        );
    }
    let changed = config != *running;
    targets
        .pool
        .reconfigure(crate::settings::pool_config(&config.pool));
    targets.rates.reconfigure(&config.tenants);
    if config.policy != running.policy {
        tracing::info!(policy = %config.policy.describe(), "author policy");
    }
    targets.config.send_replace(Arc::new(config));
    tracing::info!(changed, kept = kept.len(), "configuration reloaded");
}
