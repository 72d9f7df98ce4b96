//! The operator's configuration: typed sections with embedded defaults (the daemon runs with no
//! file), overlaid by an optional TOML file and then by `ATRUND_*` environment variables, checked
//! in one place ([`Config::validate`]) with errors that name the key and where its value came from.
//!
//! Owns: the config schema, its defaults, loading/merging ([`load`]), validation, and rendering
//! the effective config ([`Config::to_toml`]). Must not touch: the network, files other than the
//! config file it is given, or the process environment (callers pass the environment in, so tests
//! and reloads stay deterministic; [`process_env`] is the one helper that reads it).
//!
//! The defaults live in `impl Default` below and are serialised to a TOML table at load time, so
//! the key list, the env variable names and the documented defaults all come from one source.

mod error;
mod layout;
mod load;
mod reload;
mod render;
mod syntax;
mod validate;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

pub use error::{ConfigError, Source};
pub use layout::DataLayout;
pub use load::{
    env_var_name, known_env_vars, process_env, ENV_EXCEPTIONS, ENV_PREFIX, OTEL_ENV_VARS,
};
pub use reload::Reload;
pub use syntax::{is_dns_label, is_valid_did, is_valid_handle};

/// One MiB, for readable defaults.
const MIB: u64 = 1024 * 1024;

/// The whole effective configuration. Build it with [`Config::load`]; every field is public so
/// other crates can read it, and [`Config::validate`] is the one place that checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTP server binds.
    pub listen: SocketAddr,
    /// Where the runner keeps its bundle store, keys and state.
    pub data_dir: PathBuf,
    /// PLC directory used to resolve `did:plc`.
    pub plc_url: Url,
    /// Permit plain-http PDS, PLC and did:web endpoints on loopback hosts (development only).
    /// Opens no address: see `allow_addrs`.
    pub allow_http: bool,
    /// Special-purpose addresses the runner's own requests (PLC, did:web, handles, PDSes) may
    /// reach anyway: ranges (`10.0.0.0/8`, every port) or `address:port` (`127.0.0.1:2582`).
    pub allow_addrs: Vec<String>,
    /// The DNS server the runner's own look-ups ask (`IP` or `IP:port`) instead of the system's
    /// resolver: handles' TXT records and the names of PLC, did:web, well-known and PDS hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<String>,
    /// A PEM file of certificate authorities the runner's own HTTPS requests trust beside the
    /// web PKI's (a private PDS, a handle's well-known behind an internal CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// Whose code may run here.
    pub policy: AuthorPolicy,
    /// Trust from the social graph (the operator's follows, mutuals) and the deny list.
    pub trust: TrustSection,
    /// Sandbox backend.
    pub isolation: Isolation,
    pub identity: IdentitySection,
    pub fetch: FetchSection,
    pub http: HttpSection,
    pub deno: DenoSection,
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub python: PythonSection,
    pub limits: LimitsSection,
    pub permissions: PermissionCaps,
    pub pool: PoolSection,
    pub secrets: SecretsSection,
    pub container: ContainerSection,
    pub microvm: MicroVmSection,
    pub sandbox: SandboxSection,
    pub egress: EgressSection,
    pub tenants: TenantsSection,
    pub metrics: MetricsSection,
    pub cache: CacheSection,
    pub jobs: JobsSection,
    pub state: StateSection,
    pub log: LogSection,
    pub logs: LogsSection,
    pub otel: OtelSection,
    /// Where each key's value came from (default, file, environment), for error messages and
    /// `check-config`. Not part of the schema.
    #[serde(skip)]
    sources: error::Provenance,
}

/// Whose bundles may run. The default is an empty allow-list: nothing runs until the operator
/// chooses. TOML: `policy = "open"` or `policy = ["did:plc:...", "alice.example.com"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorPolicy {
    /// Anyone's code may run.
    Open,
    /// Only these DIDs (exact) or handles (case-insensitive, after verification) may run code.
    /// Empty means nobody (the default).
    AllowList(Vec<String>),
}

impl Default for AuthorPolicy {
    fn default() -> Self {
        AuthorPolicy::AllowList(Vec::new())
    }
}

/// Sandbox backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Deno permission flags, hardened (see docs/configuration.md).
    None,
    /// The strongest backend this machine supports (a microVM later; container; else none).
    /// The default, here and in the embedded config.
    #[default]
    Auto,
    /// bubblewrap namespaces + read-only minimal root + Landlock + seccomp + cgroup.
    Container,
    /// A virtual machine per instance (`[microvm]`, docs/microvm.md).
    Microvm,
    /// Microvm with the Firecracker VMM (`microvm.vmm = "firecracker"`).
    Firecracker,
}

impl Isolation {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::Auto => "auto",
            Isolation::Container => "container",
            Isolation::Microvm => "microvm",
            Isolation::Firecracker => "firecracker",
        }
    }
}

/// DID and handle resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Timeout of one resolution request (PLC, did:web, DNS, well-known).
    pub timeout_ms: u64,
    /// After this long a cached identity is served but refreshed in the background.
    pub cache_stale_secs: u64,
    /// After this long a cached identity is no longer served.
    pub cache_max_secs: u64,
    /// How long a failed resolution is remembered (not found, tombstoned, invalid, mismatch).
    pub cache_error_secs: u64,
    /// How long a transient failure (unreachable, timeout, 5xx) is remembered.
    pub cache_unreachable_secs: u64,
    /// Entries per identity cache (DIDs and handles each) before the oldest are evicted.
    pub cache_capacity: u64,
    /// XRPC service whose `com.atproto.identity.resolveHandle` resolves handles (dev and tests);
    /// unset means DNS TXT and `/.well-known/atproto-did`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_resolver: Option<Url>,
    /// Use DNS TXT `_atproto.<handle>` records when resolving handles.
    pub dns: bool,
    /// Use `https://<handle>/.well-known/atproto-did` when resolving handles.
    pub well_known: bool,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            timeout_ms: 3000,
            cache_stale_secs: 3600,
            cache_max_secs: 86400,
            cache_error_secs: 120,
            cache_unreachable_secs: 5,
            cache_capacity: 100_000,
            handle_resolver: None,
            dns: true,
            well_known: true,
        }
    }
}

/// Which accounts the operator's social graph admits, beside the `policy` allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustGraph {
    /// The graph admits nobody; only `policy` decides.
    #[default]
    None,
    /// Accounts the operator follows (`app.bsky.graph.follow` records in the operator's repo).
    Follows,
    /// Accounts the operator follows that follow the operator back.
    Mutuals,
}

impl TrustGraph {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustGraph::None => "none",
            TrustGraph::Follows => "follows",
            TrustGraph::Mutuals => "mutuals",
        }
    }
}

/// Trust from the social graph (docs/network.md, "Trust from the social graph").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// `none`, `follows` or `mutuals`: whom the operator's graph admits besides `policy`.
    pub graph: TrustGraph,
    /// The operator's account (DID or handle) whose follows count; required with a graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// DIDs and handles refused whatever `policy` or the graph say.
    pub deny: Vec<String>,
    /// How often the operator's follows are read again in full (events make changes faster).
    pub refresh_secs: u64,
    /// How long a verified follow-back (or its absence) is believed for `mutuals`, unless an
    /// event from the author's PDS says it changed.
    pub follow_back_secs: u64,
    /// How long the last verified follows are used while the operator's PDS cannot be read;
    /// after that, authors admitted only by the graph are refused until it can.
    pub max_stale_secs: u64,
    /// Largest repository (`getRepo` CAR) read for the operator's follows.
    pub max_repo_bytes: u64,
    /// Pages of an author's follows (`listRecords`, 100 each) searched for a follow-back.
    pub max_follow_pages: u64,
}

impl Default for TrustSection {
    fn default() -> Self {
        TrustSection {
            graph: TrustGraph::None,
            operator: None,
            deny: Vec::new(),
            refresh_secs: 600,
            follow_back_secs: 600,
            max_stale_secs: 24 * 3600,
            max_repo_bytes: 64 * MIB,
            max_follow_pages: 100,
        }
    }
}

/// Fetching records and blobs from PDSes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSection {
    /// Timeout of one fetch from a PDS.
    pub timeout_ms: u64,
    /// Largest record (and its proof) accepted.
    pub max_record_bytes: u64,
    /// Largest code blob accepted.
    pub max_bundle_bytes: u64,
    /// How long a resolved `latest` is trusted before it is checked again.
    pub revalidate_secs: u64,
    /// Pages of `listRecords` (100 records each) scanned to find a bundle pinned by record CID.
    pub max_list_pages: u64,
    /// Follow the event streams (`subscribeRepos`) of the PDSes bundles were loaded from, so a
    /// release, rollback or secret change is fetched again when it is published.
    pub event_streams: bool,
}

impl Default for FetchSection {
    fn default() -> Self {
        FetchSection {
            timeout_ms: 10_000,
            max_record_bytes: MIB,
            max_bundle_bytes: 20 * MIB,
            revalidate_secs: 30,
            max_list_pages: 20,
            event_streams: true,
        }
    }
}

/// The runner's own HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Largest request body forwarded to a bundle (413 beyond).
    pub max_request_body_bytes: u64,
    /// Time a client has to send a request's headers; slower connections are closed.
    pub header_read_timeout_ms: u64,
    /// Most client connections open at once; further ones wait in the kernel's accept queue.
    pub max_connections: u64,
    /// Domain under which each bundle gets its own origin, `{label}.{bundle_domain}`
    /// (docs/origins.md); unset means bundles are served by path only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_domain: Option<String>,
    /// Add a `Server-Timing` header (cold-start phases and the bundle's time, durations only) to
    /// invocation responses. Off by default: timings tell callers about the runner's caches;
    /// `at-rund dev` turns it on.
    pub server_timing: bool,
    /// Addresses (`10.0.0.5`) and ranges (`10.0.0.0/24`) of TLS proxies whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are believed; empty (the default) believes no
    /// one, so a direct caller cannot pick its client address, scheme or host (docs/operating.md).
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            max_request_body_bytes: 10 * MIB,
            header_read_timeout_ms: 10_000,
            max_connections: 4096,
            bundle_domain: None,
            server_timing: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Fair shares between authors on one runner (docs/configuration.md, `[tenants]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsSection {
    /// Sustained invocations per second per author (token bucket refill); 0 turns it off.
    pub rate_per_sec: u64,
    /// Invocations an author may make at once above the sustained rate (bucket size).
    pub rate_burst: u64,
    /// Per-author exceptions, `DID=RATE/BURST` (`did:plc:abc=200/400`).
    pub rate_overrides: Vec<String>,
    /// How long a failed bundle load (unknown version, missing release, unreachable or
    /// non-verifying PDS) is remembered and answered without asking the PDS again.
    pub negative_cache_secs: u64,
    /// Least time between two identity refreshes of one DID forced by a commit signature that
    /// does not verify (a key rotation is picked up; a forger cannot force a look-up per request).
    pub identity_refresh_min_secs: u64,
    /// Most bytes of verified code kept for one author; past it their least recently used
    /// code is removed (0: no cap).
    pub max_store_bytes_per_author: u64,
    /// Stored code not used for this long is removed (checked at start and hourly; 0: never).
    pub store_gc_after_secs: u64,
    /// Most bytes one author's bundles may keep in their data dirs; an author over it gets
    /// `DataQuotaExceeded` for bundles that write, until they are under again (0: no cap).
    pub max_data_bytes_per_author: u64,
    /// Whether each author's data dir is a file system of `max_data_bytes_per_author` bytes (a
    /// loop-mounted image), which makes the cap hard within a call (docs/limits.md).
    pub data_volumes: DataVolumes,
}

/// How the per-author data cap is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataVolumes {
    /// Volumes where the host allows them (root, loop devices, e2fsprogs); else the soft cap,
    /// said at start and in describeRunner.
    #[default]
    Auto,
    /// Volumes, or at-rund does not start.
    Loop,
    /// The soft cap only (measured per request).
    Off,
}

impl DataVolumes {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DataVolumes::Auto => "auto",
            DataVolumes::Loop => "loop",
            DataVolumes::Off => "off",
        }
    }
}

impl Default for TenantsSection {
    fn default() -> Self {
        TenantsSection {
            rate_per_sec: 50,
            rate_burst: 100,
            rate_overrides: Vec::new(),
            negative_cache_secs: 2,
            identity_refresh_min_secs: 60,
            max_store_bytes_per_author: 256 * MIB,
            store_gc_after_secs: 7 * 24 * 3600,
            max_data_bytes_per_author: 1024 * MIB,
            data_volumes: DataVolumes::Auto,
        }
    }
}

impl TenantsSection {
    /// `DID=RATE/BURST` split, or `None` when malformed.
    pub fn parse_override(entry: &str) -> Option<(&str, u64, u64)> {
        let (did, rb) = entry.split_once('=')?;
        let (r, b) = rb.split_once('/')?;
        Some((did, r.parse().ok()?, b.parse().ok()?))
    }
}

/// The Deno runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoSection {
    /// Path of the `deno` binary; unset means `deno` on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// The Node.js runtime (`runtime = "node"`): offered only when the operator names its binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Path of a Node 24 or newer `node` binary; unset means Node bundles are refused
    /// (`RuntimeUnavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// The Python runtime (`runtime = "python"`): offered only when the operator names its
/// interpreter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSection {
    /// Path of a Python 3.11 or newer interpreter (Debian's `/usr/bin/python3.11`); unset means
    /// Python bundles are refused (`RuntimeUnavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Whether the `none` backend may run Python bundles: Python enforces no permission itself,
    /// so by default they run only under `container` (or `microvm`).
    #[serde(default)]
    pub allow_none: bool,
}

/// A limit: what a bundle gets when it asks for nothing, and the most it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRange {
    pub default: u64,
    pub max: u64,
}

/// Per-bundle limits; each is capped by the operator and requested in the bundle's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Wall-clock time of one request.
    pub timeout_ms: LimitRange,
    /// Memory of one instance.
    pub memory_mib: LimitRange,
    /// CPU time of one request.
    pub cpu_ms: LimitRange,
    /// Requests one instance serves at once.
    pub concurrency: LimitRange,
    /// Tasks (processes and threads; Deno's threads count) of one instance, its cgroup's
    /// `pids.max`. Operator-only; at least 32.
    pub pids: u64,
    /// CPU quota of one instance, percent of one CPU (200 = two). Operator-only.
    pub cpu_quota_percent: u64,
    /// Open files of one instance (RLIMIT_NOFILE). Operator-only.
    pub open_files: u64,
    /// Largest response body relayed from a bundle. Operator-only.
    pub max_response_bytes: u64,
    /// Largest file one instance may write (RLIMIT_FSIZE); writing past it stops the instance
    /// with `FileTooLarge`. Operator-only; at least 1 MiB (Deno writes its cache files too).
    pub max_file_bytes: u64,
    /// Freeze an instance's cgroup while it has no call in flight, so timers left running after
    /// a response do no work between calls. Operator-only.
    pub freeze_idle: bool,
    /// How long an instance must have had no call in flight before it is frozen (0: as soon as
    /// the last call ends). Operator-only.
    pub freeze_after_idle_ms: u64,
}

impl LimitsSection {
    /// When idle instances are frozen; `None` when `freeze_idle` is off.
    pub fn freeze_after_idle(&self) -> Option<std::time::Duration> {
        self.freeze_idle
            .then(|| std::time::Duration::from_millis(self.freeze_after_idle_ms))
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            timeout_ms: LimitRange {
                default: 10_000,
                max: 60_000,
            },
            memory_mib: LimitRange {
                default: 128,
                max: 512,
            },
            cpu_ms: LimitRange {
                default: 10_000,
                max: 60_000,
            },
            concurrency: LimitRange {
                default: 8,
                max: 64,
            },
            pids: 64,
            cpu_quota_percent: 100,
            open_files: 1024,
            max_response_bytes: 32 * MIB,
            max_file_bytes: 1024 * MIB,
            freeze_idle: true,
            freeze_after_idle_ms: 50,
        }
    }
}

/// What bundles may ask for. A bundle asking for more is refused, never silently reduced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionCaps {
    /// Bundles may ask for network hosts (their `net` list is then enforced).
    pub net: bool,
    /// Bundles may ask to read paths inside their own data dir.
    pub read: bool,
    /// Bundles may ask to write paths inside their own data dir.
    pub write: bool,
    /// Commands bundles may ask to run.
    pub run: Vec<String>,
    /// Bundles may ask for FFI (native libraries: effectively no sandbox).
    pub ffi: bool,
    /// Bundles may ask for system information APIs.
    pub sys: bool,
}

impl Default for PermissionCaps {
    fn default() -> Self {
        PermissionCaps {
            net: true,
            read: true,
            write: true,
            run: Vec::new(),
            ffi: false,
            sys: false,
        }
    }
}

/// Warm instances: how many, for how long, how much memory, and what happens when full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Instances (running or starting) across all bundles.
    pub max_instances: u64,
    /// Instances of one bundle version.
    pub max_instances_per_bundle: u64,
    /// Instances of all bundles of one author DID.
    pub max_instances_per_author: u64,
    /// An instance with no request in flight for this long after its last response is stopped.
    pub idle_timeout_ms: u64,
    /// Resident memory of all instances together; idle ones are evicted (least recently used)
    /// beyond it. 0 = no budget.
    pub memory_budget_mib: u64,
    /// How long a request waits for a free slot before it gets 429 Busy.
    pub busy_wait_ms: u64,
    /// Back-off after the second consecutive crash of a bundle; doubles per crash.
    pub crash_backoff_ms: u64,
    /// Longest crash back-off.
    pub crash_backoff_max_ms: u64,
    /// Bundles kept warm from start-up: `author/name/version` (DID or handle, as in the URL).
    pub prewarm: Vec<String>,
    /// Instances kept warm for each `prewarm` bundle.
    pub prewarm_instances: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before instances are stopped.
    pub drain_grace_ms: u64,
    /// After the drain, how long client connections may stay open before the process exits.
    pub close_wait_ms: u64,
    /// Time an instance has from spawn to its shim's ready signal.
    pub start_timeout_ms: u64,
    /// How often the `prewarm` bundles are resolved again (a new `latest` is warmed then).
    pub prewarm_refresh_secs: u64,
    /// Admin endpoint (`GET /admin/pool`): `auto` (127.0.0.1, the main port + 1; an ephemeral
    /// port when the main port is 0), an address such as `127.0.0.1:3001`, or `off`.
    pub admin_listen: String,
    /// Pre-warmed generic sandboxes kept ready (`container` isolation, root daemon): a bundle
    /// with no warm instance is specialised into one instead of started. 0 = off. Deno bundles.
    pub generic_sandboxes: u64,
    /// The same for Python bundles (needs `python.path`). 0 = off.
    pub generic_python_sandboxes: u64,
    /// Resident memory the ready generic sandboxes may hold together; none is started beyond it.
    pub generic_memory_budget_mib: u64,
    /// How long idle instances are kept: `fixed` (`idle_timeout_ms` for every bundle) or
    /// `adaptive` (learned per bundle from its idle times, with pre-warming; docs/configuration.md).
    pub warmth: Warmth,
    /// Adaptive warmth: width of one bin of a bundle's idle-time histogram.
    pub warmth_bin_ms: u64,
    /// Adaptive warmth: idle times up to this are binned; longer ones count as out of range.
    pub warmth_range_ms: u64,
    /// Adaptive warmth: idle times a bundle needs before its histogram is used.
    pub warmth_min_samples: u64,
    /// Adaptive warmth: margin in percent taken off the pre-warm time and added to the tail.
    pub warmth_margin_percent: u64,
    /// Adaptive warmth: most bundles with a history; the one seen least recently makes room.
    pub warmth_max_bundles: u64,
    /// Adaptive warmth: a bundle not called for this long loses its history.
    pub warmth_forget_secs: u64,
}

/// How long idle instances are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Warmth {
    /// `pool.idle_timeout_ms` for every instance.
    #[default]
    Fixed,
    /// Per bundle, from its idle-time histogram (the hybrid histogram policy).
    Adaptive,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            max_instances: 64,
            max_instances_per_bundle: 4,
            max_instances_per_author: 16,
            idle_timeout_ms: 300_000,
            memory_budget_mib: 2048,
            busy_wait_ms: 100,
            crash_backoff_ms: 500,
            crash_backoff_max_ms: 30_000,
            prewarm: Vec::new(),
            prewarm_instances: 1,
            drain_grace_ms: 25_000,
            close_wait_ms: 5_000,
            start_timeout_ms: 10_000,
            prewarm_refresh_secs: 30,
            admin_listen: "auto".into(),
            generic_sandboxes: 0,
            generic_python_sandboxes: 0,
            generic_memory_budget_mib: 512,
            warmth: Warmth::Fixed,
            warmth_bin_ms: 60_000,
            warmth_range_ms: 4 * 3600 * 1000,
            warmth_min_samples: 10,
            warmth_margin_percent: 10,
            warmth_max_bundles: 1024,
            warmth_forget_secs: 7 * 24 * 3600,
        }
    }
}

impl PoolSection {
    /// The admin endpoint's address for a main listener on `main`, or `None` when `off`.
    /// Call after [`Config::validate`], which rejects anything else.
    pub fn admin_addr(&self, main: SocketAddr) -> Option<SocketAddr> {
        match self.admin_listen.as_str() {
            "off" => None,
            "auto" => {
                let port = if main.port() == 0 {
                    0
                } else {
                    main.port().checked_add(1).unwrap_or(0)
                };
                Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
            }
            other => other.parse().ok(),
        }
    }

    /// A `prewarm` entry split into author, name and version, or `None` if it has not three
    /// non-empty `/`-separated parts.
    pub fn parse_prewarm(entry: &str) -> Option<(&str, &str, &str)> {
        let mut it = entry.split('/');
        let (a, n, v) = (it.next()?, it.next()?, it.next()?);
        (it.next().is_none() && !a.is_empty() && !n.is_empty() && !v.is_empty())
            .then_some((a, n, v))
    }
}

impl Default for Config {
    /// The embedded defaults, with `data_dir` as computed from an empty environment
    /// (`./.at-rund-data`). [`Config::load`] computes it from the real environment.
    fn default() -> Self {
        Config {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3000)),
            data_dir: PathBuf::from(layout::FALLBACK_DATA_DIR),
            plc_url: default_plc_url(),
            allow_http: false,
            allow_addrs: Vec::new(),
            dns_server: None,
            extra_ca_file: None,
            policy: AuthorPolicy::default(),
            trust: TrustSection::default(),
            isolation: Isolation::default(),
            identity: IdentitySection::default(),
            fetch: FetchSection::default(),
            http: HttpSection::default(),
            deno: DenoSection::default(),
            node: NodeSection::default(),
            python: PythonSection::default(),
            limits: LimitsSection::default(),
            permissions: PermissionCaps::default(),
            pool: PoolSection::default(),
            secrets: SecretsSection::default(),
            container: ContainerSection::default(),
            microvm: MicroVmSection::default(),
            sandbox: SandboxSection::default(),
            egress: EgressSection::default(),
            tenants: TenantsSection::default(),
            metrics: MetricsSection::default(),
            cache: CacheSection::default(),
            jobs: JobsSection::default(),
            state: StateSection::default(),
            log: LogSection::default(),
            logs: LogsSection::default(),
            otel: OtelSection::default(),
            sources: error::Provenance::default(),
        }
    }
}

/// The runner's X25519 keypair, to which authors seal their bundles' secrets (docs/secrets.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// Key file (created with mode 0600 on first start); unset means `<data_dir>/runner-key.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How long a key replaced by `at-rund keygen --rotate` still decrypts.
    pub rotation_grace_secs: u64,
}

impl Default for SecretsSection {
    fn default() -> Self {
        SecretsSection {
            key_file: None,
            rotation_grace_secs: 7 * 24 * 3600,
        }
    }
}

/// The `container` isolation backend (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// The bubblewrap binary: a path, or a name looked up on `PATH`.
    pub bwrap: String,
    /// Size cap of each instance's `/tmp` (a tmpfs, charged to the instance's memory).
    pub tmp_mib: u64,
}

impl Default for ContainerSection {
    fn default() -> Self {
        ContainerSection {
            bwrap: "bwrap".into(),
            tmp_mib: 64,
        }
    }
}

/// The `microvm` isolation backend (docs/microvm.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicroVmSection {
    /// The VMM: `qemu`, or `firecracker` (KVM only; `isolation = "firecracker"` chooses it too).
    pub vmm: MicroVmVmm,
    /// QEMU's `qemu-system-x86_64`: a path, or a name looked up on `PATH`.
    pub qemu: String,
    /// QEMU's vsock backend (`cargo install vhost-device-vsock`): a path, or a name on `PATH`.
    pub vhost_device_vsock: String,
    /// Firecracker: a path, or a name on `PATH`.
    pub firecracker: String,
    /// The guest kernel, uncompressed and PVH-bootable (`vmlinux`). Required for `microvm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Kernel modules (`.ko`) the guest loads first: virtio and vsock when the kernel does not
    /// have them built in.
    pub modules: Vec<PathBuf>,
    /// `kvm`, or `tcg` (software emulation: about 100 times slower, for tests).
    pub accel: MicroVmAccel,
    /// vCPUs per guest.
    pub vcpus: u64,
    /// Keep each guest's serial console in its work dir, shown when a start fails.
    pub console: bool,
}

impl Default for MicroVmSection {
    fn default() -> Self {
        MicroVmSection {
            vmm: MicroVmVmm::Qemu,
            qemu: "qemu-system-x86_64".into(),
            vhost_device_vsock: "vhost-device-vsock".into(),
            firecracker: "firecracker".into(),
            kernel: None,
            modules: Vec::new(),
            accel: MicroVmAccel::Kvm,
            vcpus: 1,
            console: false,
        }
    }
}

/// `microvm.vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MicroVmVmm {
    Qemu,
    Firecracker,
}

/// `microvm.accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MicroVmAccel {
    Kvm,
    Tcg,
}

/// What every isolation backend shares (docs/security.md): the host identity of instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// The host uid instances run as when at-rund is root (never 0): the Deno process in `none`,
    /// bwrap and everything inside it in `container` (the sandbox's uid 65534 maps to it).
    /// Ignored when at-rund is not root: it cannot switch, so instances run as its own user.
    pub run_as_uid: u64,
    /// The host gid instances run as when at-rund is root (never 0); no supplementary groups.
    /// The runner's dirs on the way to instances' files are group-owned by it (0710).
    pub run_as_gid: u64,
}

impl Default for SandboxSection {
    /// `nobody` / `nogroup`.
    fn default() -> Self {
        SandboxSection {
            run_as_uid: 65534,
            run_as_gid: 65534,
        }
    }
}

/// The egress proxy every instance's HTTP(S) goes through, in both isolation modes (docs/egress.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Special-purpose address ranges (CIDR) opened anyway, e.g. a LAN service.
    pub allow_cidrs: Vec<String>,
    /// Ranges refused in addition to the built-in ones; wins over `allow_cidrs`.
    pub deny_cidrs: Vec<String>,
    /// Bound on the proxy's name resolution and on each TCP connect it makes.
    pub connect_timeout_ms: u64,
    /// A tunnel with no bytes either way for this long is closed (also bounds waiting for a
    /// response head or a request head).
    pub idle_timeout_ms: u64,
    /// Upstream connections (tunnels and forwarded requests) open at once per instance.
    pub max_tunnels_per_instance: u64,
}

impl Default for EgressSection {
    fn default() -> Self {
        EgressSection {
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_tunnels_per_instance: 64,
        }
    }
}

/// Prometheus metrics (docs/observability.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Record metrics and serve `GET /metrics` on the admin listener; off, nothing is recorded.
    pub enabled: bool,
    /// Also serve `GET /metrics` on the main listener (unauthenticated: anyone who can reach
    /// the runner then sees which bundles run here and how often).
    pub public: bool,
    /// Most distinct (author, bundle, endpoint) label sets; requests of further ones are counted
    /// under `other`, so the number of series stays bounded.
    pub max_label_sets: u64,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            public: false,
            max_label_sets: 200,
        }
    }
}

/// The response cache (docs/cache.md): bundle responses that say how long they stay fresh,
/// kept in memory and shared between callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Keep and serve cacheable GET responses; off, every request reaches its bundle and no
    /// `Cache-Status` header is added.
    pub enabled: bool,
    /// All stored responses together; the least recently used go first beyond this.
    pub max_bytes: u64,
    /// One stored response (body and headers); a larger one is passed on without being kept.
    pub max_entry_bytes: u64,
    /// The second tier in `<data_dir>/cache.sqlite`: every kept answer is also written there
    /// and read back when memory misses, so kept answers survive a restart. 0: memory only.
    pub disk_max_bytes: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: true,
            max_bytes: 64 * MIB,
            max_entry_bytes: MIB,
            disk_max_bytes: 256 * MIB,
        }
    }
}

/// Background jobs (docs/jobs.md): tasks of bundles run from a durable queue in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// Accept jobs over XRPC and run them; off, the job methods answer `JobsDisabled` and the
    /// queue is not opened.
    pub enabled: bool,
    /// Jobs run at once by this runner.
    pub workers: u64,
    /// How long a claimed attempt may run before the job is due again (its runner is taken to
    /// have died). At least the longest request timeout (`limits.timeout_ms.max`) plus 5 s.
    pub lease_ms: u64,
    /// Attempts before a failing job is dead (at least 1).
    pub max_attempts: u64,
    /// Wait after the first failed attempt; doubled after each further one, up to
    /// `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Finished jobs (succeeded, dead, cancelled) are kept this long for their author to read.
    pub retention_secs: u64,
    /// Largest payload of one job (JSON text).
    pub max_payload_bytes: u64,
    /// Queued and running jobs one author may have at once (every way of enqueueing counts:
    /// XRPC, bundle code, public tasks, crons); past it an enqueue is `JobQuotaExceeded`.
    pub max_unfinished_per_author: u64,
    /// How often an idle worker looks for jobs that became due (delayed jobs, retries, lost
    /// leases); an enqueue wakes it at once.
    pub poll_ms: u64,
    /// Bundles whose manifest `crons` this runner fires, as `author/name` (author a DID or
    /// handle). A runner does not know every author's code, so it fires only these; `at-rund
    /// dev` fires the local bundle's.
    pub cron_bundles: Vec<String>,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            enabled: true,
            workers: 2,
            lease_ms: 600_000,
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            retention_secs: 7 * 24 * 3600,
            max_payload_bytes: 64 * 1024,
            max_unfinished_per_author: 10_000,
            poll_ms: 1_000,
            cron_bundles: Vec::new(),
        }
    }
}

/// Where state shared between runners lives (docs/cluster.md): the job queue today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// `"sqlite"`: one runner, state in the data dir. `"redis"`: several runners share one Redis
    /// (`redis_url`).
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS (verified against the
    /// webpki roots). Required with `backend = "redis"`; never logged with its password.
    pub redis_url: String,
    /// Prefix of every key this cluster writes, so several clusters can share one Redis.
    pub redis_prefix: String,
    /// With Redis: send each bundle's requests to the one live runner it belongs to (rendezvous
    /// hashing over the runners announced in Redis), so it starts and stays warm there.
    pub route: bool,
    /// Where the other runners reach this one, e.g. `http://10.0.0.11:3000`. Empty: `http://`
    /// and the bound listen address, which must then not be a wildcard (0.0.0.0, ::).
    pub advertise_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Sqlite,
    Redis,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            backend: StateBackend::Sqlite,
            redis_url: String::new(),
            redis_prefix: "atrund:".into(),
            route: true,
            advertise_url: String::new(),
        }
    }
}

/// The runner's own log on stderr (its level filter is `ATRUND_LOG`).
/// Authors' logs: each bundle's console output, kept for its author (docs/observability.md,
/// "Authors' logs").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// Keep bundles' console output for their authors; off, nothing is kept and
    /// `dev.atrund.getLogs` / `tailLogs` answer `LogsDisabled`.
    pub keep: bool,
    /// Lines kept per bundle (all its versions and instances together); older lines are
    /// dropped, counted, and readers are told how many they missed.
    pub max_lines_per_bundle: u64,
    /// Bundles whose lines are kept at once; the bundle written to least recently loses its
    /// lines first. Memory bound: about this × `max_lines_per_bundle` × 2 KiB at worst.
    pub max_bundles: u64,
    /// The runner's service DID: the `aud` authors' PDSes put in service-auth tokens for this
    /// runner. Unset: `did:web:` + the main listener's bound address (`127.0.0.1%3A3000`); set
    /// it to `did:web:` + the runner's public host behind a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_did: Option<String>,
    /// Longest lifetime (`exp` − now) a token may have, in seconds; ones valid for longer are
    /// refused (`AuthExpired`), so a leaked token is not good for long.
    pub max_token_secs: u64,
    /// Refuse a token whose `jti` was already used (`AuthReplayed`).
    pub refuse_replayed_tokens: bool,
    /// Longest a `tailLogs` stream stays open, in seconds; the client reconnects with `since`.
    pub max_tail_secs: u64,
}

impl Default for LogsSection {
    fn default() -> Self {
        LogsSection {
            keep: true,
            max_lines_per_bundle: 1000,
            max_bundles: 1000,
            service_did: None,
            max_token_secs: 3600,
            refuse_replayed_tokens: true,
            max_tail_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (human-readable lines) or `json` (one JSON object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// OpenTelemetry traces, exported over OTLP HTTP/protobuf (docs/observability.md, "Traces").
/// Off by default. The standard `OTEL_*` variables fill in the keys below; a key set in the
/// config file or by its `ATRUND_OTEL_*` variable wins over them ([`load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelSection {
    /// Record and export traces. Off: no span is made beyond the log's own, nothing is sent,
    /// and a caller's `traceparent` reaches the bundle untouched.
    pub enabled: bool,
    /// The collector's full OTLP/HTTP traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the exported resource (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Which traces are kept (`OTEL_TRACES_SAMPLER`).
    pub sampler: OtelSampler,
    /// The ratio of the `traceidratio` samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`).
    pub sampler_arg: f64,
    /// Finished spans waiting for export; further ones are dropped (requests never wait).
    pub queue_size: u64,
    /// Most spans in one export request.
    pub batch_size: u64,
    /// Longest time a finished span waits before its batch is sent.
    pub batch_delay_ms: u64,
    /// Bound on one export request to the collector.
    pub export_timeout_ms: u64,
}

impl Default for OtelSection {
    fn default() -> Self {
        OtelSection {
            enabled: false,
            endpoint: "http://localhost:4318/v1/traces".into(),
            service_name: "at-rund".into(),
            sampler: OtelSampler::ParentBasedTraceIdRatio,
            sampler_arg: 0.1,
            queue_size: 2048,
            batch_size: 512,
            batch_delay_ms: 1000,
            export_timeout_ms: 10_000,
        }
    }
}

/// The OpenTelemetry samplers, by their `OTEL_TRACES_SAMPLER` names. The `parentbased_` ones
/// follow a caller's sampled flag when its `traceparent` has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtelSampler {
    #[serde(rename = "always_on")]
    AlwaysOn,
    #[serde(rename = "always_off")]
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    #[serde(rename = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[serde(rename = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

impl OtelSampler {
    /// The name as written in the config (the `OTEL_TRACES_SAMPLER` name).
    pub fn as_str(self) -> &'static str {
        match self {
            OtelSampler::AlwaysOn => "always_on",
            OtelSampler::AlwaysOff => "always_off",
            OtelSampler::TraceIdRatio => "traceidratio",
            OtelSampler::ParentBasedAlwaysOn => "parentbased_always_on",
            OtelSampler::ParentBasedAlwaysOff => "parentbased_always_off",
            OtelSampler::ParentBasedTraceIdRatio => "parentbased_traceidratio",
        }
    }
}

impl Config {
    /// The runner key file: `secrets.key_file`, else `<data_dir>/runner-key.json`.
    pub fn key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.layout().default_key_file())
    }

    /// The paths under `data_dir`.
    pub fn layout(&self) -> DataLayout {
        DataLayout::new(&self.data_dir)
    }
}

fn default_plc_url() -> Url {
    Url::parse("https://plc.directory").expect("constant URL parses")
}

impl Config {
    /// `dns_server` as an address (port 53 unless given); `None` when unset. Checked by
    /// validation, so a loaded config's value parses.
    pub fn dns_server_addr(&self) -> Option<SocketAddr> {
        let s = self.dns_server.as_deref()?;
        s.parse::<SocketAddr>().ok().or_else(|| {
            s.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
    }

    /// Where the value of `key` (dotted, e.g. `limits.timeout_ms.max`) came from.
    /// The VMM of the microVM backend: `isolation = "firecracker"` means Firecracker, else
    /// `microvm.vmm`.
    pub fn microvm_vmm(&self) -> MicroVmVmm {
        match self.isolation {
            Isolation::Firecracker => MicroVmVmm::Firecracker,
            _ => self.microvm.vmm,
        }
    }

    pub fn source_of(&self, key: &str) -> Source {
        self.sources.get(key)
    }
}

impl AuthorPolicy {
    /// The allow-list entries, or `None` for [`AuthorPolicy::Open`].
    pub fn entries(&self) -> Option<&[String]> {
        match self {
            AuthorPolicy::Open => None,
            AuthorPolicy::AllowList(v) => Some(v),
        }
    }

    /// One line for logs and `describeRunner`: `open`, `closed (no authors allowed)`, or
    /// `allow-list: a, b`.
    pub fn describe(&self) -> String {
        match self.entries() {
            None => "open".into(),
            Some([]) => "closed (no authors allowed; set ATRUND_POLICY)".into(),
            Some(list) => format!("allow-list: {}", list.join(", ")),
        }
    }

    /// True when no author may run code (an empty allow-list).
    pub fn is_closed(&self) -> bool {
        self.entries().is_some_and(|e| e.is_empty())
    }
}

impl Serialize for AuthorPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.entries() {
            None => s.serialize_str("open"),
            Some(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AuthorPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AuthorPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"open\" or a list of DIDs and handles")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AuthorPolicy, E> {
                if v == "open" {
                    Ok(AuthorPolicy::Open)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AuthorPolicy, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(AuthorPolicy::AllowList(v))
            }
        }
        d.deserialize_any(V)
    }
}
