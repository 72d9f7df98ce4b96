//! What a reload (SIGHUP) may change in a running runner. Keys read per request or per new
//! instance take the new value: the author policy, permission and limit caps, the per-author rates
//! and data share, the request body cap, `Server-Timing`, and the pool's caps and timeouts. Keys
//! that components were built from at start keep their running value and are named, so the
//! operator knows a restart is needed: listeners, the data dir, the backend and its sections,
//! the identity and fetch clients, the store, the egress proxy, metrics, the log format, the authors' logs and tracing.
//!
//! Owns: the split of keys into live and kept. Must not: apply anything (the binary does) or
//! validate (the new config arrives validated by [`crate::Config::load`]).

use crate::{Config, HttpSection, PoolSection, TenantsSection};

/// The outcome of [`Config::reload`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The configuration to run with: the new one, except for the kept keys.
    pub config: Config,
    /// Keys whose new value differs from the running one but cannot change without a restart;
    /// their running values stay in `config`.
    pub kept: Vec<&'static str>,
}

/// Puts the running value back if the new one differs, and names the key.
fn keep<T: PartialEq + Clone>(
    kept: &mut Vec<&'static str>,
    key: &'static str,
    running: &T,
    new: &mut T,
) {
    if running != new {
        *new = running.clone();
        kept.push(key);
    }
}

impl Config {
    /// Takes `new` (loaded and validated as at start) in place of `self`, keeping the keys that
    /// cannot change while running. Every field is named below, so a new key must be sorted into
    /// live or kept before this compiles.
    pub fn reload(&self, mut new: Config) -> Reload {
        let mut k = Vec::new();
        let Config {
            listen,
            data_dir,
            plc_url,
            allow_http,
            allow_addrs,
            dns_server,
            extra_ca_file,
            policy: _,
            trust,
            isolation,
            identity,
            fetch,
            http,
            deno,
            node,
            python,
            limits: _,
            permissions: _,
            pool,
            secrets,
            container,
            microvm,
            sandbox,
            egress,
            tenants,
            metrics,
            cache,
            jobs,
            state,
            log,
            logs,
            otel,
            sources: _,
        } = self;
        keep(&mut k, "listen", listen, &mut new.listen);
        keep(&mut k, "data_dir", data_dir, &mut new.data_dir);
        keep(&mut k, "plc_url", plc_url, &mut new.plc_url);
        keep(&mut k, "allow_http", allow_http, &mut new.allow_http);
        keep(&mut k, "allow_addrs", allow_addrs, &mut new.allow_addrs);
        keep(&mut k, "dns_server", dns_server, &mut new.dns_server);
        keep(
            &mut k,
            "extra_ca_file",
            extra_ca_file,
            &mut new.extra_ca_file,
        );
        keep(&mut k, "isolation", isolation, &mut new.isolation);
        // The deny list is read per request; the graph's source and schedule built a task.
        let deny = std::mem::replace(&mut new.trust.deny, trust.deny.clone());
        keep(&mut k, "trust", trust, &mut new.trust);
        new.trust.deny = deny;
        keep(&mut k, "identity", identity, &mut new.identity);
        keep(&mut k, "fetch", fetch, &mut new.fetch);
        keep(&mut k, "deno", deno, &mut new.deno);
        keep(&mut k, "node", node, &mut new.node);
        keep(&mut k, "python", python, &mut new.python);
        keep(&mut k, "secrets", secrets, &mut new.secrets);
        keep(&mut k, "container", container, &mut new.container);
        keep(&mut k, "microvm", microvm, &mut new.microvm);
        keep(&mut k, "sandbox", sandbox, &mut new.sandbox);
        keep(&mut k, "egress", egress, &mut new.egress);
        keep(&mut k, "metrics", metrics, &mut new.metrics);
        keep(&mut k, "cache", cache, &mut new.cache);
        keep(&mut k, "jobs", jobs, &mut new.jobs);
        keep(&mut k, "state", state, &mut new.state);
        keep(&mut k, "log", log, &mut new.log);
        keep(&mut k, "logs", logs, &mut new.logs);
        keep(&mut k, "otel", otel, &mut new.otel);

        let HttpSection {
            max_request_body_bytes: _,
            header_read_timeout_ms,
            max_connections,
            bundle_domain,
            server_timing: _,
            trusted_proxies: _,
        } = http;
        let h = &mut new.http;
        keep(
            &mut k,
            "http.header_read_timeout_ms",
            header_read_timeout_ms,
            &mut h.header_read_timeout_ms,
        );
        keep(
            &mut k,
            "http.max_connections",
            max_connections,
            &mut h.max_connections,
        );
        keep(
            &mut k,
            "http.bundle_domain",
            bundle_domain,
            &mut h.bundle_domain,
        );

        let PoolSection {
            max_instances: _,
            max_instances_per_bundle: _,
            max_instances_per_author: _,
            idle_timeout_ms: _,
            memory_budget_mib: _,
            busy_wait_ms: _,
            crash_backoff_ms: _,
            crash_backoff_max_ms: _,
            prewarm,
            prewarm_instances,
            drain_grace_ms: _,
            close_wait_ms: _,
            start_timeout_ms: _,
            prewarm_refresh_secs,
            admin_listen,
            warmth,
            warmth_bin_ms,
            warmth_range_ms,
            warmth_min_samples,
            warmth_margin_percent,
            warmth_max_bundles,
            warmth_forget_secs,
            generic_sandboxes,
            generic_python_sandboxes,
            generic_memory_budget_mib,
        } = pool;
        let p = &mut new.pool;
        keep(&mut k, "pool.prewarm", prewarm, &mut p.prewarm);
        keep(
            &mut k,
            "pool.prewarm_instances",
            prewarm_instances,
            &mut p.prewarm_instances,
        );
        keep(
            &mut k,
            "pool.prewarm_refresh_secs",
            prewarm_refresh_secs,
            &mut p.prewarm_refresh_secs,
        );
        keep(
            &mut k,
            "pool.admin_listen",
            admin_listen,
            &mut p.admin_listen,
        );
        // The histograms are built with the running bins and limits.
        keep(&mut k, "pool.warmth", warmth, &mut p.warmth);
        for (key, running, new) in [
            ("pool.warmth_bin_ms", warmth_bin_ms, &mut p.warmth_bin_ms),
            (
                "pool.warmth_range_ms",
                warmth_range_ms,
                &mut p.warmth_range_ms,
            ),
            (
                "pool.warmth_min_samples",
                warmth_min_samples,
                &mut p.warmth_min_samples,
            ),
            (
                "pool.warmth_margin_percent",
                warmth_margin_percent,
                &mut p.warmth_margin_percent,
            ),
            (
                "pool.warmth_max_bundles",
                warmth_max_bundles,
                &mut p.warmth_max_bundles,
            ),
            (
                "pool.warmth_forget_secs",
                warmth_forget_secs,
                &mut p.warmth_forget_secs,
            ),
        ] {
            keep(&mut k, key, running, new);
        }
        keep(
            &mut k,
            "pool.generic_sandboxes",
            generic_sandboxes,
            &mut p.generic_sandboxes,
        );
        keep(
            &mut k,
            "pool.generic_python_sandboxes",
            generic_python_sandboxes,
            &mut p.generic_python_sandboxes,
        );
        keep(
            &mut k,
            "pool.generic_memory_budget_mib",
            generic_memory_budget_mib,
            &mut p.generic_memory_budget_mib,
        );

        let TenantsSection {
            rate_per_sec: _,
            rate_burst: _,
            rate_overrides: _,
            negative_cache_secs,
            identity_refresh_min_secs,
            max_store_bytes_per_author,
            store_gc_after_secs,
            max_data_bytes_per_author: _,
            data_volumes,
        } = tenants;
        let t = &mut new.tenants;
        // Volumes are mounted once per start: the choice applies from the next start (a
        // new cap is measured at once, and volumes take it when next mounted).
        keep(
            &mut k,
            "tenants.data_volumes",
            data_volumes,
            &mut t.data_volumes,
        );
        keep(
            &mut k,
            "tenants.negative_cache_secs",
            negative_cache_secs,
            &mut t.negative_cache_secs,
        );
        keep(
            &mut k,
            "tenants.identity_refresh_min_secs",
            identity_refresh_min_secs,
            &mut t.identity_refresh_min_secs,
        );
        keep(
            &mut k,
            "tenants.max_store_bytes_per_author",
            max_store_bytes_per_author,
            &mut t.max_store_bytes_per_author,
        );
        keep(
            &mut k,
            "tenants.store_gc_after_secs",
            store_gc_after_secs,
            &mut t.store_gc_after_secs,
        );
        Reload {
            config: new,
            kept: k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthorPolicy;

    #[test]
    fn live_keys_change_and_the_others_are_kept_and_named() {
        let running = Config::default();
        let mut new = running.clone();
        new.policy = AuthorPolicy::Open;
        new.http.max_request_body_bytes = 1024;
        new.http.server_timing = true;
        new.http.trusted_proxies = vec!["10.0.0.5".into()];
        new.pool.max_instances = 3;
        new.tenants.rate_per_sec = 7;
        new.limits.timeout_ms.max = 1234;
        new.listen = "127.0.0.1:9".parse().unwrap();
        new.data_dir = "/elsewhere".into();
        new.http.bundle_domain = Some("b.example".into());
        new.pool.admin_listen = "off".into();
        new.pool.warmth = crate::Warmth::Adaptive;
        new.pool.warmth_bin_ms = 1000;
        new.tenants.store_gc_after_secs = 1;
        new.metrics.public = true;
        let r = running.reload(new.clone());
        assert_eq!(
            r.kept,
            [
                "listen",
                "data_dir",
                "metrics",
                "http.bundle_domain",
                "pool.admin_listen",
                "pool.warmth",
                "pool.warmth_bin_ms",
                "tenants.store_gc_after_secs"
            ]
        );
        let c = r.config;
        assert_eq!(c.policy, AuthorPolicy::Open);
        assert_eq!(c.http.max_request_body_bytes, 1024);
        assert!(c.http.server_timing);
        assert_eq!(c.http.trusted_proxies, ["10.0.0.5"]);
        assert_eq!(c.pool.max_instances, 3);
        assert_eq!(c.tenants.rate_per_sec, 7);
        assert_eq!(c.limits.timeout_ms.max, 1234);
        assert_eq!(c.listen, running.listen);
        assert_eq!(c.data_dir, running.data_dir);
        assert_eq!(c.http.bundle_domain, None);
        assert_eq!(c.pool.admin_listen, running.pool.admin_listen);
        assert_eq!(c.pool.warmth, crate::Warmth::Fixed);
        assert_eq!(c.pool.warmth_bin_ms, running.pool.warmth_bin_ms);
        assert_eq!(c.metrics, running.metrics);
        assert_eq!(
            c.tenants.store_gc_after_secs,
            running.tenants.store_gc_after_secs
        );
    }

    #[test]
    fn an_unchanged_config_keeps_nothing() {
        let c = Config::default();
        let r = c.reload(c.clone());
        assert!(r.kept.is_empty());
        assert_eq!(r.config, c);
    }
}
