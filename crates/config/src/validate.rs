//! [`Config::validate`]: the one place that decides whether a parsed config is acceptable.
//! Must not touch: parsing or merging (see `load`); it only reads the typed config.

use url::Url;

use crate::syntax::{is_valid_bundle_domain, MAX_BUNDLE_DOMAIN_LEN};
use crate::{
    is_valid_did, is_valid_handle, AuthorPolicy, Config, ConfigError, Isolation, MicroVmAccel,
    MicroVmVmm, TrustGraph,
};

impl Config {
    /// `[microvm]`, when `isolation = "microvm"` uses it.
    fn check_microvm(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };
        let m = &self.microvm;
        if self.microvm_vmm() == MicroVmVmm::Firecracker && m.accel == MicroVmAccel::Tcg {
            return Err(invalid(
                "microvm.accel",
                "Firecracker runs on KVM only; software emulation (\"tcg\") is QEMU's \
                 (microvm.vmm = \"qemu\")"
                    .into(),
            ));
        }
        let Some(kernel) = &m.kernel else {
            return Err(invalid(
                "microvm.kernel",
                "isolation = \"microvm\" needs a guest kernel: set microvm.kernel to an \
                 uncompressed, PVH-bootable vmlinux (docs/microvm.md says how to get one)"
                    .into(),
            ));
        };
        if !kernel.is_file() {
            return Err(invalid(
                "microvm.kernel",
                format!("'{}' is not a file", kernel.display()),
            ));
        }
        if let Some(bad) = m
            .modules
            .iter()
            .find(|p| !p.is_file() || p.extension().and_then(|e| e.to_str()) != Some("ko"))
        {
            return Err(invalid(
                "microvm.modules",
                format!(
                    "'{}' is not a kernel module file (.ko); list the uncompressed modules the guest needs",
                    bad.display()
                ),
            ));
        }
        if !(1..=32).contains(&m.vcpus) {
            return Err(invalid(
                "microvm.vcpus",
                format!("{} vCPUs; use 1 to 32", m.vcpus),
            ));
        }
        for (key, v) in [
            ("microvm.qemu", &m.qemu),
            ("microvm.vhost_device_vsock", &m.vhost_device_vsock),
            ("microvm.firecracker", &m.firecracker),
        ] {
            if v.is_empty() {
                return Err(invalid(
                    key,
                    "must name the program (a path or a name on PATH)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks every cross-field and semantic rule. Errors name the key and where it was set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };

        if self.isolation == Isolation::Firecracker
            && self.microvm.vmm == MicroVmVmm::Qemu
            && self.source_of("microvm.vmm") != crate::error::Source::Default
        {
            return Err(invalid(
                "microvm.vmm",
                "isolation = \"firecracker\" runs Firecracker, and microvm.vmm says \"qemu\"; \
                 use isolation = \"microvm\" for QEMU, or drop microvm.vmm"
                    .into(),
            ));
        }
        // `auto` boots a probe VM when a kernel is set: the section must hold then too.
        if matches!(self.isolation, Isolation::Microvm | Isolation::Firecracker)
            || (self.isolation == Isolation::Auto && self.microvm.kernel.is_some())
        {
            self.check_microvm()?;
        }

        for (key, list) in [
            ("egress.allow_cidrs", &self.egress.allow_cidrs),
            ("egress.deny_cidrs", &self.egress.deny_cidrs),
        ] {
            if let Some(bad) = list.iter().find(|c| !is_cidr(c)) {
                return Err(invalid(
                    key,
                    format!(
                        "'{bad}' is not an address range; write it like 192.168.1.0/24 or fd00::/8"
                    ),
                ));
            }
        }
        if let Some(bad) = self
            .http
            .trusted_proxies
            .iter()
            .find(|a| !is_cidr(a) && a.parse::<std::net::IpAddr>().is_err())
        {
            return Err(invalid(
                "http.trusted_proxies",
                format!(
                    "'{bad}' is neither an address (127.0.0.1, ::1) nor an address range (10.0.0.0/24, fd00::/64); list the addresses your TLS proxy connects to at-rund from"
                ),
            ));
        }
        if let Some(bad) = self.allow_addrs.iter().find(|a| !is_opening(a)) {
            return Err(invalid(
                "allow_addrs",
                format!(
                    "'{bad}' is neither an address range (10.0.0.0/8, fd00::/8) nor an address:port (127.0.0.1:2582, [::1]:2582)"
                ),
            ));
        }
        if self.container.tmp_mib == 0 || self.container.bwrap.is_empty() {
            return Err(invalid(
                "container",
                "container.tmp_mib must be at least 1 and container.bwrap must name the bubblewrap binary".into(),
            ));
        }

        for (key, id) in [
            ("sandbox.run_as_uid", self.sandbox.run_as_uid),
            ("sandbox.run_as_gid", self.sandbox.run_as_gid),
        ] {
            if id == 0 {
                return Err(invalid(
                    key,
                    "0 is root: instances would keep root's powers; give an unprivileged id such as 65534 (nobody/nogroup) or a dedicated one".into(),
                ));
            }
            // u32::MAX is (uid_t)-1, which the kernel reads as "leave unchanged".
            if id >= u64::from(u32::MAX) {
                return Err(invalid(
                    key,
                    format!("{id} is not a Linux user or group id; give one below 4294967295, such as 65534"),
                ));
            }
        }

        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "must not be empty; give a directory path".into(),
            ));
        }

        if let Some(d) = &self.http.bundle_domain {
            if !is_valid_bundle_domain(d) {
                return Err(invalid(
                    "http.bundle_domain",
                    format!(
                        "'{d}' is not a lower-case domain name of at most {MAX_BUNDLE_DOMAIN_LEN} characters; write it like bundles.example.com (no scheme, port, wildcard or trailing dot), or leave it unset to serve bundles by path only"
                    ),
                ));
            }
        }

        self.check_otel()?;
        if self.jobs.enabled {
            let j = &self.jobs;
            for (key, v) in [
                ("jobs.workers", j.workers),
                ("jobs.max_attempts", j.max_attempts),
                ("jobs.poll_ms", j.poll_ms),
                (
                    "jobs.max_unfinished_per_author",
                    j.max_unfinished_per_author,
                ),
            ] {
                if v == 0 {
                    return Err(invalid(
                        key,
                        "must be at least 1 with jobs on; turn them off with jobs.enabled = false (ATRUND_JOBS_ENABLED)".into(),
                    ));
                }
            }
            if let Some(bad) = j.cron_bundles.iter().find(|e| {
                !e.split_once('/').is_some_and(|(a, n)| {
                    (is_valid_did(a) || is_valid_handle(a)) && !n.is_empty() && !n.contains('/')
                })
            }) {
                return Err(invalid(
                    "jobs.cron_bundles",
                    format!("'{bad}' is not author/name (e.g. \"did:plc:abc/reports\" or \"alice.example.com/reports\")"),
                ));
            }
            if j.backoff_base_ms > j.backoff_max_ms {
                return Err(invalid(
                    "jobs.backoff_base_ms",
                    format!(
                        "{} is more than jobs.backoff_max_ms ({}); lower it or raise the cap",
                        j.backoff_base_ms, j.backoff_max_ms
                    ),
                ));
            }
            let longest = self.limits.timeout_ms.max.saturating_add(5_000);
            if j.lease_ms < longest {
                return Err(invalid(
                    "jobs.lease_ms",
                    format!(
                        "{} is shorter than the longest task run (limits.timeout_ms.max + 5 s = {longest} ms): a task still running would be started again; raise it",
                        j.lease_ms
                    ),
                ));
            }
        }
        if self.state.backend == crate::StateBackend::Redis {
            let url = &self.state.redis_url;
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "state.redis_url",
                    "must be a redis:// or rediss:// URL with state.backend = \"redis\" (ATRUND_STATE_REDIS_URL)".into(),
                ));
            }
        }
        let adv = &self.state.advertise_url;
        if !adv.is_empty() {
            let ok = adv
                .strip_prefix("http://")
                .or_else(|| adv.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']));
            if !ok {
                return Err(invalid(
                    "state.advertise_url",
                    format!("'{adv}' is not http(s)://host:port (no path); write where the other runners reach this one, e.g. http://10.0.0.11:3000"),
                ));
            }
        }
        let prefix = &self.state.redis_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "state.redis_prefix",
                "must be 1 to 64 characters without spaces, e.g. \"atrund:\"".into(),
            ));
        }
        if self.cache.enabled {
            if self.cache.max_bytes == 0 {
                return Err(invalid(
                    "cache.max_bytes",
                    "must be at least 1 with the cache on; turn it off with cache.enabled = false (ATRUND_CACHE_ENABLED)".into(),
                ));
            }
            if self.cache.max_entry_bytes > self.cache.max_bytes {
                return Err(invalid(
                    "cache.max_entry_bytes",
                    format!(
                        "{} is more than cache.max_bytes ({}): one response could never be kept; lower it or raise cache.max_bytes",
                        self.cache.max_entry_bytes, self.cache.max_bytes
                    ),
                ));
            }
            let disk = self.cache.disk_max_bytes;
            if disk != 0 && disk < self.cache.max_entry_bytes {
                return Err(invalid(
                    "cache.disk_max_bytes",
                    format!(
                        "{disk} is less than cache.max_entry_bytes ({}): one response could not be kept on disk; raise it, or set 0 to keep answers in memory only",
                        self.cache.max_entry_bytes
                    ),
                ));
            }
        }
        self.check_service_url("plc_url", &self.plc_url)?;
        if let Some(u) = &self.identity.handle_resolver {
            self.check_service_url("identity.handle_resolver", u)?;
        }

        if let AuthorPolicy::AllowList(entries) = &self.policy {
            for e in entries {
                if !(is_valid_did(e) || is_valid_handle(e)) {
                    let hint = if e.starts_with('@') {
                        " (write handles without the leading '@')"
                    } else {
                        ""
                    };
                    return Err(invalid(
                        "policy",
                        format!(
                            "entry '{e}' is neither a DID (did:plc:... or did:web:...) nor a handle (alice.example.com){hint}; use \"open\" or a list of DIDs and handles"
                        ),
                    ));
                }
            }
        }

        self.check_trust()?;
        if let Some(s) = &self.dns_server {
            if self.dns_server_addr().is_none() {
                return Err(invalid(
                    "dns_server",
                    format!("'{s}' is not an IP address or IP:port (e.g. 127.0.0.1:53 or [::1]:5353); a DNS server is named by address, not by name"),
                ));
            }
        }
        if let Some(path) = &self.extra_ca_file {
            atrund_netpolicy::read_ca_file(path).map_err(|e| invalid("extra_ca_file", e))?;
        }

        let id = &self.identity;
        let positive = [
            ("identity.timeout_ms", id.timeout_ms),
            ("identity.cache_max_secs", id.cache_max_secs),
            ("fetch.timeout_ms", self.fetch.timeout_ms),
            ("fetch.max_record_bytes", self.fetch.max_record_bytes),
            ("fetch.max_bundle_bytes", self.fetch.max_bundle_bytes),
            (
                "http.max_request_body_bytes",
                self.http.max_request_body_bytes,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.max_connections", self.http.max_connections),
            ("fetch.max_list_pages", self.fetch.max_list_pages),
            ("identity.cache_capacity", self.identity.cache_capacity),
            ("pool.start_timeout_ms", self.pool.start_timeout_ms),
            ("pool.prewarm_refresh_secs", self.pool.prewarm_refresh_secs),
            ("egress.connect_timeout_ms", self.egress.connect_timeout_ms),
            ("egress.idle_timeout_ms", self.egress.idle_timeout_ms),
            (
                "egress.max_tunnels_per_instance",
                self.egress.max_tunnels_per_instance,
            ),
            ("otel.queue_size", self.otel.queue_size),
            ("otel.batch_size", self.otel.batch_size),
            ("otel.export_timeout_ms", self.otel.export_timeout_ms),
            ("otel.batch_delay_ms", self.otel.batch_delay_ms),
            ("logs.max_lines_per_bundle", self.logs.max_lines_per_bundle),
            ("logs.max_bundles", self.logs.max_bundles),
            ("logs.max_token_secs", self.logs.max_token_secs),
            ("logs.max_tail_secs", self.logs.max_tail_secs),
            ("trust.refresh_secs", self.trust.refresh_secs),
            ("trust.follow_back_secs", self.trust.follow_back_secs),
            ("trust.max_stale_secs", self.trust.max_stale_secs),
            ("trust.max_repo_bytes", self.trust.max_repo_bytes),
            ("trust.max_follow_pages", self.trust.max_follow_pages),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        for (key, n, runtime) in [
            (
                "pool.generic_sandboxes",
                self.pool.generic_sandboxes,
                "Deno",
            ),
            (
                "pool.generic_python_sandboxes",
                self.pool.generic_python_sandboxes,
                "Python",
            ),
        ] {
            if n > 64 {
                return Err(invalid(
                    key,
                    format!(
                        "{n} is more than 64; each ready sandbox holds a {runtime} process (tens of MiB)"
                    ),
                ));
            }
        }
        let generic_on = self.pool.generic_sandboxes + self.pool.generic_python_sandboxes > 0;
        if generic_on && self.pool.generic_memory_budget_mib == 0 {
            return Err(invalid(
                "pool.generic_memory_budget_mib",
                "must be greater than 0 when pool.generic_sandboxes or pool.generic_python_sandboxes is on".into(),
            ));
        }
        if self.pool.generic_python_sandboxes > 0 && self.python.path.is_none() {
            return Err(invalid(
                "pool.generic_python_sandboxes",
                "needs python.path (ATRUND_PYTHON_PATH): there is no Python to start them with; set it, or set this to 0".into(),
            ));
        }
        if id.cache_stale_secs > id.cache_max_secs {
            return Err(invalid(
                "identity.cache_stale_secs",
                format!(
                    "{} is above identity.cache_max_secs ({}); an entry must turn stale before it expires",
                    id.cache_stale_secs, id.cache_max_secs
                ),
            ));
        }

        if let Some(p) = &self.deno.path {
            if p.as_os_str().is_empty() {
                return Err(invalid(
                    "deno.path",
                    "must not be empty; give the deno binary's path or leave it unset to use PATH"
                        .into(),
                ));
            }
        }

        if let Some(p) = &self.node.path {
            if !p.is_absolute() {
                return Err(invalid(
                    "node.path",
                    format!(
                        "'{}' is not an absolute path; give the full path of a Node 24 or newer binary, or leave it unset to offer no Node runtime",
                        p.display()
                    ),
                ));
            }
        }

        if let Some(p) = &self.python.path {
            if !p.is_absolute() {
                return Err(invalid(
                    "python.path",
                    format!(
                        "'{}' is not an absolute path; give the full path of a Python 3.11 or newer interpreter (/usr/bin/python3.11), or leave it unset to offer no Python runtime",
                        p.display()
                    ),
                ));
            }
        }

        let l = &self.limits;
        for (name, r) in [
            ("timeout_ms", l.timeout_ms),
            ("memory_mib", l.memory_mib),
            ("cpu_ms", l.cpu_ms),
            ("concurrency", l.concurrency),
        ] {
            if r.default == 0 {
                return Err(invalid(
                    &format!("limits.{name}.default"),
                    "must be greater than 0".into(),
                ));
            }
            if r.default > r.max {
                return Err(invalid(
                    &format!("limits.{name}.default"),
                    format!(
                        "default {} is above max {}; raise limits.{name}.max or lower the default",
                        r.default, r.max
                    ),
                ));
            }
        }

        if l.pids < 32 {
            return Err(invalid(
                "limits.pids",
                format!(
                    "{} is too low: Deno's own threads count as tasks, so use at least 32",
                    l.pids
                ),
            ));
        }
        for (key, v) in [
            ("limits.cpu_quota_percent", l.cpu_quota_percent),
            ("limits.max_response_bytes", l.max_response_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if l.max_file_bytes < 1024 * 1024 {
            return Err(invalid(
                "limits.max_file_bytes",
                format!(
                    "{} is below 1 MiB (1048576): Deno's own cache files would not fit; use at least 1048576",
                    l.max_file_bytes
                ),
            ));
        }
        if l.freeze_after_idle_ms > 3_600_000 {
            return Err(invalid(
                "limits.freeze_after_idle_ms",
                format!(
                    "{} is more than an hour; use at most 3600000, or set limits.freeze_idle = false to never freeze",
                    l.freeze_after_idle_ms
                ),
            ));
        }
        if l.open_files < 64 {
            return Err(invalid(
                "limits.open_files",
                format!(
                    "{} is too low for Deno to start; use at least 64",
                    l.open_files
                ),
            ));
        }

        for cmd in &self.permissions.run {
            if cmd.trim().is_empty() || cmd.contains([',', '\0']) || cmd.trim() != cmd {
                return Err(invalid(
                    "permissions.run",
                    format!("entry '{cmd}' must be a command name or path, without commas or surrounding spaces"),
                ));
            }
        }

        let p = &self.pool;
        for (key, v) in [
            ("pool.max_instances", p.max_instances),
            ("pool.max_instances_per_bundle", p.max_instances_per_bundle),
            ("pool.max_instances_per_author", p.max_instances_per_author),
            ("pool.idle_timeout_ms", p.idle_timeout_ms),
            ("pool.drain_grace_ms", p.drain_grace_ms),
            ("pool.prewarm_instances", p.prewarm_instances),
            ("pool.warmth_bin_ms", p.warmth_bin_ms),
            ("pool.warmth_min_samples", p.warmth_min_samples),
            ("pool.warmth_max_bundles", p.warmth_max_bundles),
            ("pool.warmth_forget_secs", p.warmth_forget_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if p.prewarm_instances > p.max_instances_per_bundle {
            return Err(invalid(
                "pool.prewarm_instances",
                format!(
                    "{} is above pool.max_instances_per_bundle ({}); lower it or raise the cap",
                    p.prewarm_instances, p.max_instances_per_bundle
                ),
            ));
        }
        if p.crash_backoff_ms > p.crash_backoff_max_ms {
            return Err(invalid(
                "pool.crash_backoff_ms",
                format!(
                    "{} is above pool.crash_backoff_max_ms ({})",
                    p.crash_backoff_ms, p.crash_backoff_max_ms
                ),
            ));
        }
        self.validate_warmth()?;
        for e in &p.prewarm {
            if crate::PoolSection::parse_prewarm(e).is_none() {
                return Err(invalid(
                    "pool.prewarm",
                    format!("entry '{e}' is not author/name/version, such as did:plc:abc/hello/latest or alice.example.com/hello/1.2.0"),
                ));
            }
        }
        let t = &self.tenants;
        if t.rate_per_sec > 0 && t.rate_burst == 0 {
            return Err(invalid(
                "tenants.rate_burst",
                "must be at least 1 when tenants.rate_per_sec is set (the bucket must hold one request); set rate_per_sec = 0 to turn the limit off".into(),
            ));
        }
        for e in &t.rate_overrides {
            let ok = crate::TenantsSection::parse_override(e)
                .is_some_and(|(did, r, b)| is_valid_did(did) && (r == 0 || b > 0));
            if !ok {
                return Err(invalid(
                    "tenants.rate_overrides",
                    format!("entry '{e}' is not DID=RATE/BURST with a burst of at least 1, such as did:plc:abc=200/400 (RATE 0 means no limit for that author)"),
                ));
            }
        }
        let lg = &self.logs;
        if lg.max_lines_per_bundle > 1_000_000 {
            return Err(invalid(
                "logs.max_lines_per_bundle",
                format!(
                    "{} is more than 1000000 lines (up to 2 KiB each) per bundle; lower it",
                    lg.max_lines_per_bundle
                ),
            ));
        }
        if let Some(d) = &lg.service_did {
            if !is_valid_did(d) {
                return Err(invalid(
                    "logs.service_did",
                    format!("'{d}' is not a DID; write it like did:web:runner.example.com, or leave it unset"),
                ));
            }
        }
        if !matches!(p.admin_listen.as_str(), "auto" | "off")
            && p.admin_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "pool.admin_listen",
                format!(
                    "'{}' is not auto, off or an address:port such as 127.0.0.1:3001",
                    p.admin_listen
                ),
            ));
        }
        Ok(())
    }

    /// https anywhere; http only with `allow_http` and a loopback host.
    /// The `[otel]` section: a collector URL, a ratio, a batch that fits the queue (sizes must
    /// be positive: checked with the others in `validate`).
    fn check_otel(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };
        let o = &self.otel;
        match Url::parse(&o.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => {}
            _ => {
                return Err(invalid(
                    "otel.endpoint",
                    format!(
                        "'{}' is not an http(s) URL; give the collector's OTLP/HTTP traces URL, such as http://localhost:4318/v1/traces",
                        o.endpoint
                    ),
                ))
            }
        }
        if o.service_name.trim().is_empty() {
            return Err(invalid(
                "otel.service_name",
                "must not be empty; the default is at-rund".into(),
            ));
        }
        if !(0.0..=1.0).contains(&o.sampler_arg) {
            return Err(invalid(
                "otel.sampler_arg",
                format!(
                    "{} is not a ratio; give a number from 0 to 1, such as 0.1 for one trace in ten",
                    o.sampler_arg
                ),
            ));
        }
        if o.batch_size > o.queue_size {
            return Err(invalid(
                "otel.batch_size",
                format!(
                    "{} is larger than otel.queue_size ({}); a batch is taken from the queue",
                    o.batch_size, o.queue_size
                ),
            ));
        }
        Ok(())
    }

    /// The `pool.warmth_*` keys (checked whatever `pool.warmth` is, so switching it on later
    /// cannot meet a bad value; the positive ones are checked with the other pool keys): enough
    /// bins for the histogram test, not so many that a bundle's histogram grows large.
    fn validate_warmth(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };
        let p = &self.pool;
        let bins = p.warmth_range_ms / p.warmth_bin_ms;
        if !(MIN_WARMTH_BINS..=MAX_WARMTH_BINS).contains(&bins) {
            return Err(invalid(
                "pool.warmth_range_ms",
                format!(
                    "{} ms is {bins} bins of pool.warmth_bin_ms ({} ms); give {MIN_WARMTH_BINS} to {MAX_WARMTH_BINS} bins (the defaults: 4 hours of 1-minute bins)",
                    p.warmth_range_ms, p.warmth_bin_ms
                ),
            ));
        }
        if p.warmth_range_ms > MAX_WARMTH_RANGE_MS {
            return Err(invalid(
                "pool.warmth_range_ms",
                format!("{} ms is over 30 days; lower it", p.warmth_range_ms),
            ));
        }
        if p.warmth_margin_percent > 90 {
            return Err(invalid(
                "pool.warmth_margin_percent",
                format!(
                    "{} is over 90; the margin is a share of the learned windows (the paper's is 10)",
                    p.warmth_margin_percent
                ),
            ));
        }
        if p.warmth_forget_secs.saturating_mul(1000) < p.warmth_range_ms {
            return Err(invalid(
                "pool.warmth_forget_secs",
                format!(
                    "{} s is shorter than pool.warmth_range_ms ({} ms); a history forgotten sooner than its longest idle time learns nothing",
                    p.warmth_forget_secs, p.warmth_range_ms
                ),
            ));
        }
        Ok(())
    }

    /// `[trust]`: a graph needs an operator, and an operator a graph; the graph adds nobody to
    /// an open policy; every deny entry is a DID or a handle.
    fn check_trust(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };
        let t = &self.trust;
        match (t.graph, &t.operator) {
            (TrustGraph::None, Some(_)) => {
                return Err(invalid(
                    "trust.operator",
                    "is set but trust.graph is \"none\", so nobody's follows are read; set trust.graph = \"follows\" or \"mutuals\", or remove trust.operator".into(),
                ))
            }
            (TrustGraph::Follows | TrustGraph::Mutuals, None) => {
                return Err(invalid(
                    "trust.operator",
                    format!(
                        "must name the account whose follows are trusted (a DID, or a handle) when trust.graph is \"{}\"",
                        t.graph.as_str()
                    ),
                ))
            }
            (_, Some(op)) if !(is_valid_did(op) || is_valid_handle(op)) => {
                return Err(invalid(
                    "trust.operator",
                    format!("'{op}' is neither a DID (did:plc:... or did:web:...) nor a handle (alice.example.com)"),
                ))
            }
            _ => {}
        }
        if t.graph != TrustGraph::None && self.policy == AuthorPolicy::Open {
            return Err(invalid(
                "trust.graph",
                format!(
                    "is \"{}\" but policy is \"open\", which already lets everyone run code, so the graph would add nobody; set policy to a list (or []) to run code only for the graph and the listed accounts, and use trust.deny to exclude accounts from an open runner",
                    t.graph.as_str()
                ),
            ));
        }
        if let Some(e) = t
            .deny
            .iter()
            .find(|e| !(is_valid_did(e) || is_valid_handle(e)))
        {
            return Err(invalid(
                "trust.deny",
                format!("entry '{e}' is neither a DID (did:plc:... or did:web:...) nor a handle (alice.example.com)"),
            ));
        }
        if t.max_stale_secs < t.refresh_secs {
            return Err(invalid(
                "trust.max_stale_secs",
                format!(
                    "{} is less than trust.refresh_secs ({}): the follows would count as stale before the next scheduled read; raise it",
                    t.max_stale_secs, t.refresh_secs
                ),
            ));
        }
        Ok(())
    }

    fn check_service_url(&self, key: &str, u: &Url) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: self.source_of(key),
            message,
        };
        if u.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!(
                "'{u}' has no host; use a URL such as https://plc.directory"
            )));
        }
        match u.scheme() {
            "https" => Ok(()),
            "http" if self.allow_http && atrund_netpolicy::is_loopback_host(u) => Ok(()),
            "http" if self.allow_http => Err(invalid(format!(
                "'{u}' uses plain http on a host that is not loopback; allow_http permits http only for localhost, 127.0.0.0/8 and ::1; use https"
            ))),
            "http" => Err(invalid(format!(
                "'{u}' uses plain http; use https, or for a loopback development server set allow_http = true (ATRUND_ALLOW_HTTP=1)"
            ))),
            other => Err(invalid(format!(
                "'{u}' has scheme '{other}'; use an https URL"
            ))),
        }
    }
}

/// Below this many bins the coefficient-of-variation test of adaptive warmth cannot tell a
/// pattern from noise (one full bin of n has a CV of only √n).
const MIN_WARMTH_BINS: u64 = 10;
/// A day of 1-minute bins: 5.6 KiB of counts per bundle.
const MAX_WARMTH_BINS: u64 = 1440;
const MAX_WARMTH_RANGE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A range, or one `address:port` with a port other than 0 (IPv6 in brackets).
fn is_opening(s: &str) -> bool {
    is_cidr(s)
        || s.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.port() != 0)
}

/// `addr/prefix` with a prefix that fits the address family.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}
