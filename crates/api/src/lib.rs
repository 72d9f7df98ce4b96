//! The runner's HTTP API as types: what `GET /xrpc/dev.atrund.describeRunner` answers, and the
//! runner's announcement built from it (`dev.atrund.runner`, [`RunnerRecord`]).
//!
//! Owns: the wire shape of describeRunner, written by the daemon (`atrund-http`) and read by the
//! author's CLI (`at-run check`, `at-run secrets set`), so writer and reader cannot drift apart;
//! the runner record's shape and what "agrees with describeRunner" means. Both mirror
//! `lexicons/dev.atrund.describeRunner.json` and `lexicons/dev.atrund.runner.json`.
//! Must not touch: I/O, the daemon's state, policy decisions (the reader's checks live in
//! `atrund-policy` and `at-run`).
//!
//! Reading is lenient in one direction only: unknown fields are ignored (a newer runner may
//! announce more), while a missing field is an error naming it (an older runner cannot be
//! checked honestly). Field names are the JSON's: camelCase, except the limits, which keep the
//! config file's snake_case keys.

use atrund_config::{AuthorPolicy, LimitRange, LimitsSection, PermissionCaps};
use serde::{Deserialize, Serialize};

/// The XRPC method name, as routed and as called.
pub const DESCRIBE_RUNNER: &str = "dev.atrund.describeRunner";

/// Authors' logs of one bundle, one page (service auth: docs/http-api.md).
pub const GET_LOGS: &str = "dev.atrund.getLogs";

/// Authors' logs of one bundle, streamed as lines arrive (NDJSON; service auth).
pub const TAIL_LOGS: &str = "dev.atrund.tailLogs";
/// The job methods (docs/jobs.md): the author's background jobs on a runner, called by `at-run
/// jobs` with the same single-use service-auth tokens as the logs.
pub const ENQUEUE_JOB: &str = "dev.atrund.enqueueJob";
pub const GET_JOB: &str = "dev.atrund.getJob";
pub const LIST_JOBS: &str = "dev.atrund.listJobs";
pub const CANCEL_JOB: &str = "dev.atrund.cancelJob";
pub const RETRY_JOB: &str = "dev.atrund.retryJob";

/// What a runner says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRunner {
    pub software: Software,
    /// The isolation backend in use: `none`, `container` or `microvm`.
    pub isolation: String,
    pub runtimes: Vec<Runtime>,
    /// X25519, multibase (`z` + base58btc of 0xec01 + key): what `at-run secrets set` seals to.
    pub public_key: String,
    pub policy: RunnerPolicy,
    /// What bundles may ask for.
    pub permissions: RunnerPermissions,
    pub limits: RunnerLimits,
    /// Whether each limit is enforced on this machine, and how (or why not).
    pub enforcement: Vec<EnforcementLine>,
    pub max_request_body_bytes: u64,
    /// Largest code blob this runner fetches (`at-run check` compares bundles with it).
    pub max_bundle_bytes: u64,
    /// Fair shares between authors (docs/configuration.md, `[tenants]`).
    pub tenants: Tenants,
    /// Where bundles have origins of their own (docs/origins.md); `None`: path routes only.
    pub bundle_domain: Option<String>,
    /// The runner's service DID: the `aud` an author's PDS must put in the service-auth token
    /// for the runner's authenticated methods (`getLogs`, `tailLogs`). Absent from runners
    /// older than authors' logs, so optional when read.
    #[serde(default)]
    pub service_did: Option<String>,
    /// Whether the runner keeps bundles' console output for their authors (`logs.keep`).
    #[serde(default)]
    pub logs_kept: bool,
    /// Pre-warmed generic sandboxes (`pool.generic_sandboxes`), when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_sandboxes: Option<GenericSandboxes>,
    /// The bundle `at-rund dev` serves from a folder, by name: such a runner's job methods take
    /// no token for it (its author is `local`). Absent from `serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_bundle: Option<String>,
    /// Health now: a stable status, uptime and load. Absent from runners older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// A runner's health as describeRunner reports it (docs/network.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, or `draining` once shutdown has begun (`/readyz` answers 503 and new calls are
    /// refused). Stable values: scripts and the runner record may rely on them.
    pub status: String,
    /// Seconds since the runner started.
    pub uptime_secs: u64,
    /// Instances running or starting now.
    pub instances: u64,
    /// Requests admitted and not yet answered in full.
    pub requests_in_flight: u64,
    /// Jobs queued or running, when the job queue is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_unfinished: Option<u64>,
}

/// The pre-warmed generic sandboxes of a `container` runner (docs/design.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenericSandboxes {
    /// Kept ready (the configured size) and ready now.
    pub size: u64,
    pub ready: u64,
    pub memory_budget_bytes: u64,
    /// Handed to a bundle so far, and of those, specialisations that failed.
    pub taken: u64,
    pub specialise_failures: u64,
    /// Starts that went the normal way, by reason (`run`, `limits`, `rlimits`, `empty`).
    pub fallbacks: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    /// As the runtime prints it, e.g. `deno 2.5.6 (stable, release, x86_64-unknown-linux-gnu)`.
    pub version: String,
}

impl Runtime {
    /// The version number in `version`: its first word that starts with a digit.
    pub fn version_number(&self) -> Option<&str> {
        self.version
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
    }
}

/// Whose code the runner runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPolicy {
    /// One line for people: `open`, `closed (...)`, `allow-list: a, b`, or the graph's.
    pub authors: String,
    /// The allowed DIDs and handles; `None` when every author may run code.
    pub allow_list: Option<Vec<String>>,
    /// Trust from the operator's social graph (`[trust]`), beside the allow-list. Absent when
    /// off, and from runners older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<RunnerGraph>,
    /// DIDs and handles refused whatever else admits them (`trust.deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Whom the operator's social graph admits, and how current the runner's view of it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerGraph {
    /// `follows` or `mutuals`.
    pub kind: String,
    /// The operator's account as configured (a DID or a handle).
    pub operator: String,
    /// Its DID, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_did: Option<String>,
    /// Accounts the operator follows, in the verified snapshot held.
    pub follows: u64,
    /// Seconds since that snapshot was read; absent before the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
}

impl From<&AuthorPolicy> for RunnerPolicy {
    fn from(p: &AuthorPolicy) -> Self {
        RunnerPolicy {
            authors: p.describe(),
            allow_list: p.entries().map(<[String]>::to_vec),
            graph: None,
            deny: Vec::new(),
        }
    }
}

/// The operator's permission caps as announced (config: `[permissions]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerPermissions {
    pub net: bool,
    pub read: bool,
    pub write: bool,
    pub run: Vec<String>,
    pub ffi: bool,
    pub sys: bool,
}

impl From<&PermissionCaps> for RunnerPermissions {
    fn from(c: &PermissionCaps) -> Self {
        let PermissionCaps {
            net,
            read,
            write,
            run,
            ffi,
            sys,
        } = c.clone();
        RunnerPermissions {
            net,
            read,
            write,
            run,
            ffi,
            sys,
        }
    }
}

impl From<RunnerPermissions> for PermissionCaps {
    fn from(c: RunnerPermissions) -> Self {
        let RunnerPermissions {
            net,
            read,
            write,
            run,
            ffi,
            sys,
        } = c;
        PermissionCaps {
            net,
            read,
            write,
            run,
            ffi,
            sys,
        }
    }
}

/// The operator's limits as announced (config: `[limits]`, same keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerLimits {
    pub timeout_ms: LimitRange,
    pub memory_mib: LimitRange,
    pub cpu_ms: LimitRange,
    pub concurrency: LimitRange,
    pub pids: u64,
    pub cpu_quota_percent: u64,
    pub open_files: u64,
    pub max_response_bytes: u64,
    pub freeze_idle: bool,
    pub freeze_after_idle_ms: u64,
    pub max_file_bytes: u64,
}

impl From<&LimitsSection> for RunnerLimits {
    fn from(l: &LimitsSection) -> Self {
        let LimitsSection {
            timeout_ms,
            memory_mib,
            cpu_ms,
            concurrency,
            pids,
            cpu_quota_percent,
            open_files,
            max_response_bytes,
            freeze_idle,
            freeze_after_idle_ms,
            max_file_bytes,
        } = *l;
        RunnerLimits {
            timeout_ms,
            memory_mib,
            cpu_ms,
            concurrency,
            pids,
            cpu_quota_percent,
            open_files,
            max_response_bytes,
            freeze_idle,
            freeze_after_idle_ms,
            max_file_bytes,
        }
    }
}

impl From<RunnerLimits> for LimitsSection {
    fn from(l: RunnerLimits) -> Self {
        let RunnerLimits {
            timeout_ms,
            memory_mib,
            cpu_ms,
            concurrency,
            pids,
            cpu_quota_percent,
            open_files,
            max_response_bytes,
            freeze_idle,
            freeze_after_idle_ms,
            max_file_bytes,
        } = l;
        LimitsSection {
            timeout_ms,
            memory_mib,
            cpu_ms,
            concurrency,
            pids,
            cpu_quota_percent,
            open_files,
            max_response_bytes,
            freeze_idle,
            freeze_after_idle_ms,
            max_file_bytes,
        }
    }
}

/// One limit and whether the runner enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementLine {
    /// `memory`, `cpuQuota`, `cpuTime`, `pids`, ... (the sandbox's names).
    pub limit: String,
    pub enforced: bool,
    /// How it is enforced, or why it is not.
    pub how: String,
}

/// Fair shares between authors (config: `[tenants]` and two `[http]` keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenants {
    pub rate_per_sec: u64,
    pub rate_burst: u64,
    pub negative_cache_secs: u64,
    pub identity_refresh_min_secs: u64,
    pub max_connections: u64,
    pub header_read_timeout_ms: u64,
    pub max_store_bytes_per_author: u64,
    pub store_gc_after_secs: u64,
    pub max_data_bytes_per_author: u64,
}

/// The collection of a runner's announcement in its operator's repository (lexicons/
/// dev.atrund.runner.json), and its one record key.
pub const RUNNER_COLLECTION: &str = "dev.atrund.runner";
pub const RUNNER_RKEY: &str = "self";

/// `dev.atrund.runner`: a runner's announcement in its operator's repository, written by
/// `at-rund announce` from what the runner's describeRunner says, so that the two agree
/// ([`RunnerRecord::disagreements`]). Authors find runners by these records; what the record
/// proves is that the operator's account announced this endpoint and key (docs/network.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerRecord {
    /// Always [`RUNNER_COLLECTION`].
    #[serde(rename = "$type")]
    pub kind: String,
    /// Where the runner serves (its base URL: `/bundle/...` and `/xrpc/...` hang under it).
    pub endpoint: String,
    /// As describeRunner's `publicKey`: what authors seal secrets to.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_did: Option<String>,
    pub isolation: String,
    pub enforcement: Vec<EnforcementLine>,
    pub runtimes: Vec<Runtime>,
    pub permissions: RunnerPermissions,
    pub limits: RunnerLimits,
    /// Whose code runs, as a kind: `open`, `closed` or `allowList` (the list itself is in
    /// describeRunner).
    pub policy: String,
    pub software: Software,
    /// Coarse health when announced: `ok`, or `draining`.
    pub status: String,
    /// RFC 3339, when `at-rund announce` wrote it.
    pub updated_at: String,
}

/// The policy kind of a runner's announced policy: `open`, `closed`, `allowList`, or the
/// graph's kind (`follows`, `mutuals`; combined with any allow-list).
pub fn policy_kind(p: &RunnerPolicy) -> &'static str {
    match (&p.graph, &p.allow_list) {
        (Some(g), _) if g.kind == "mutuals" => "mutuals",
        (Some(_), _) => "follows",
        (None, None) => "open",
        (None, Some(l)) if l.is_empty() => "closed",
        (None, Some(_)) => "allowList",
    }
}

impl RunnerRecord {
    /// The record announcing the runner at `endpoint` that answered `d`.
    pub fn from_describe(endpoint: &str, d: &DescribeRunner, updated_at: String) -> Self {
        RunnerRecord {
            kind: RUNNER_COLLECTION.to_string(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            public_key: d.public_key.clone(),
            service_did: d.service_did.clone(),
            isolation: d.isolation.clone(),
            enforcement: d.enforcement.clone(),
            runtimes: d.runtimes.clone(),
            permissions: d.permissions.clone(),
            limits: d.limits.clone(),
            policy: policy_kind(&d.policy).to_string(),
            software: d.software.clone(),
            status: d
                .health
                .as_ref()
                .map_or_else(|| "ok".to_string(), |h| h.status.clone()),
            updated_at,
        }
    }

    /// Where this record and the runner's describeRunner `d` say different things, one line
    /// each (empty: they agree). A runner changed since it was announced, or a record that
    /// names someone else's runner, shows up here.
    pub fn disagreements(&self, d: &DescribeRunner) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, same: bool| {
            if !same {
                out.push(format!(
                    "{what} differs between the record and describeRunner"
                ));
            }
        };
        check("publicKey", self.public_key == d.public_key);
        check("serviceDid", self.service_did == d.service_did);
        check("isolation", self.isolation == d.isolation);
        check("enforcement", self.enforcement == d.enforcement);
        check("runtimes", self.runtimes == d.runtimes);
        check("permissions", self.permissions == d.permissions);
        check("limits", self.limits == d.limits);
        check("policy", self.policy == policy_kind(&d.policy));
        check("software", self.software == d.software);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DescribeRunner {
        DescribeRunner {
            software: Software {
                name: "at-rund".into(),
                version: "0.1.0".into(),
            },
            isolation: "container".into(),
            runtimes: vec![Runtime {
                name: "deno".into(),
                version: "deno 2.5.6 (stable, release, x86_64-unknown-linux-gnu)".into(),
            }],
            public_key: "z6LS".into(),
            policy: RunnerPolicy::from(&AuthorPolicy::AllowList(vec!["did:plc:a".into()])),
            permissions: RunnerPermissions::from(&PermissionCaps::default()),
            limits: RunnerLimits::from(&LimitsSection::default()),
            enforcement: vec![EnforcementLine {
                limit: "memory".into(),
                enforced: true,
                how: "cgroup".into(),
            }],
            max_request_body_bytes: 1,
            max_bundle_bytes: 2,
            tenants: Tenants {
                rate_per_sec: 1,
                rate_burst: 2,
                negative_cache_secs: 3,
                identity_refresh_min_secs: 4,
                max_connections: 5,
                header_read_timeout_ms: 6,
                max_store_bytes_per_author: 7,
                store_gc_after_secs: 8,
                max_data_bytes_per_author: 9,
            },
            bundle_domain: None,
            service_did: Some("did:web:runner.test".into()),
            logs_kept: true,
            generic_sandboxes: None,
            local_bundle: None,
            health: None,
        }
    }

    #[test]
    fn a_runner_record_says_what_describe_runner_says() {
        let d = sample();
        let rec = RunnerRecord::from_describe(
            "https://runner.test/",
            &d,
            "2026-12-05T10:00:00.000Z".into(),
        );
        assert_eq!(rec.endpoint, "https://runner.test");
        assert_eq!(rec.policy, "allowList");
        assert!(rec.disagreements(&d).is_empty());
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["$type"], "dev.atrund.runner");
        assert_eq!(v["publicKey"], "z6LS");
        assert_eq!(v["limits"]["timeout_ms"]["max"], 60_000);
        assert_eq!(serde_json::from_value::<RunnerRecord>(v).unwrap(), rec);

        let mut changed = d.clone();
        changed.public_key = "z6LSother".into();
        changed.policy = RunnerPolicy::from(&AuthorPolicy::Open);
        changed.limits.pids = 1;
        assert_eq!(
            rec.disagreements(&changed),
            [
                "publicKey differs between the record and describeRunner",
                "limits differs between the record and describeRunner",
                "policy differs between the record and describeRunner",
            ]
        );
        // The record's status is describeRunner's, when it reports one; health is not a
        // disagreement (it changes all the time).
        let draining = DescribeRunner {
            health: Some(Health {
                status: "draining".into(),
                uptime_secs: 5,
                instances: 1,
                requests_in_flight: 0,
                jobs_unfinished: None,
            }),
            ..d.clone()
        };
        let rec2 = RunnerRecord::from_describe("https://runner.test", &draining, "t".into());
        assert_eq!(rec2.status, "draining");
        assert!(rec.disagreements(&draining).is_empty());
        let closed = RunnerPolicy::from(&AuthorPolicy::AllowList(Vec::new()));
        assert_eq!(policy_kind(&closed), "closed");
        assert_eq!(
            policy_kind(&RunnerPolicy::from(&AuthorPolicy::Open)),
            "open"
        );
    }

    #[test]
    fn what_is_written_reads_back_and_unknown_fields_are_ignored() {
        let d = sample();
        let mut v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["publicKey"], "z6LS");
        assert_eq!(v["limits"]["timeout_ms"]["max"], 60_000);
        assert_eq!(v["policy"]["allowList"][0], "did:plc:a");
        v["somethingNewer"] = serde_json::json!({"x": 1});
        v["limits"]["newLimit"] = serde_json::json!(5);
        let back: DescribeRunner = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.runtimes[0].version_number(), Some("2.5.6"));
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("maxBundleBytes");
        let e = serde_json::from_value::<DescribeRunner>(v).unwrap_err();
        assert!(e.to_string().contains("maxBundleBytes"), "{e}");
    }

    #[test]
    fn open_policy_has_no_list_and_caps_round_trip() {
        let p = RunnerPolicy::from(&AuthorPolicy::Open);
        assert_eq!(p.allow_list, None);
        let caps = PermissionCaps {
            run: vec!["ffmpeg".into()],
            ..PermissionCaps::default()
        };
        assert_eq!(PermissionCaps::from(RunnerPermissions::from(&caps)), caps);
        let l = LimitsSection::default();
        assert_eq!(LimitsSection::from(RunnerLimits::from(&l)), l);
    }
}
