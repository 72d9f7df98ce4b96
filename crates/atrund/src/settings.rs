//! Reading the configuration and turning its sections into component settings: shared by the
//! start-up in `main` and the reload on SIGHUP (`reload`).
//!
//! Owns: `load_config` and the `[pool]` → `PoolConfig` mapping. Must not: start anything.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use atrund_config::Config;

pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    let env = atrund_config::process_env()?;
    Ok(Config::load(path, &env)?)
}

/// The pool's knobs from `[pool]` (the keys the binary uses itself are named and skipped, so a
/// new key cannot be silently left at the pool's default).
pub(crate) fn pool_config(p: &atrund_config::PoolSection) -> atrund_pool::PoolConfig {
    let atrund_config::PoolSection {
        max_instances,
        max_instances_per_bundle,
        max_instances_per_author,
        idle_timeout_ms,
        memory_budget_mib,
        busy_wait_ms,
        crash_backoff_ms,
        crash_backoff_max_ms,
        // Used by the binary (pre-warm loop, drain, close) and the HTTP layer (start timeout).
        prewarm: _,
        prewarm_instances: _,
        drain_grace_ms: _,
        close_wait_ms: _,
        start_timeout_ms: _,
        prewarm_refresh_secs: _,
        admin_listen: _,
    } = p;
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    atrund_pool::PoolConfig {
        max_instances: n(*max_instances),
        max_instances_per_bundle: n(*max_instances_per_bundle),
        max_instances_per_author: n(*max_instances_per_author),
        idle_timeout: Duration::from_millis(*idle_timeout_ms),
        memory_budget_bytes: memory_budget_mib.saturating_mul(1024 * 1024),
        busy_wait: Duration::from_millis(*busy_wait_ms),
        crash_backoff: Duration::from_millis(*crash_backoff_ms),
        crash_backoff_max: Duration::from_millis(*crash_backoff_max_ms),
    }
}
