//! `at-run check --runner URL` and `at-run test --runner URL`: what a runner says about itself
//! (`GET /xrpc/dev.atrund.describeRunner`) compared with a bundle, and calls of every endpoint of
//! a deployed version with sample inputs taken from its manifest.
//!
//! Owns: the comparisons and the sample inputs. Must not touch: the author's records (reads only).

use std::time::{Duration, Instant};

use anyhow::Context;
use atrund_api::{DescribeRunner, DESCRIBE_RUNNER};
use atrund_bundle::record::{bundle_rkey, BUNDLE_COLLECTION, RELEASE_COLLECTION};
use atrund_bundle::Manifest;
use atrund_policy::{check_manifest, LimitsSection, PermissionCaps};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::auth::{self, AuthArgs};
use crate::error::Failure;

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("could not set up the HTTP client")
}

/// `describeRunner` of `runner` (given as `--runner`).
pub async fn describe(runner: &str) -> anyhow::Result<DescribeRunner> {
    describe_as(runner, "--runner").await
}

/// `describeRunner` of `runner`; errors tell the user to check `named` (where the URL came from).
pub async fn describe_as(runner: &str, named: &str) -> anyhow::Result<DescribeRunner> {
    let base = runner.trim_end_matches('/');
    let url = format!("{base}/xrpc/{DESCRIBE_RUNNER}");
    let resp = http()?.get(&url).send().await.map_err(|e| {
        Failure::RunnerUnreachable(format!(
            "could not reach the runner at {base} ({e}); check {named}"
        ))
    })?;
    if !resp.status().is_success() {
        return Err(Failure::RunnerUnreachable(format!(
            "{url} answered HTTP {}; check that {named} is an at-rund runner",
            resp.status().as_u16()
        ))
        .into());
    }
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("could not read the answer of {url}"))?;
    serde_json::from_slice(&body).with_context(|| {
        format!("{url} is not a describeRunner this at-run can read; is {named} an at-rund runner of the same or a newer version?")
    })
}

/// One line of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub runner: String,
    pub compatible: bool,
    pub checks: Vec<Check>,
    /// Things that do not stop the bundle from running but are worth knowing.
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn render(&self) -> String {
        let mut s = format!("runner {}\n", self.runner);
        for c in &self.checks {
            s.push_str(&format!(
                "  {} {:<12} {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s.push_str(if self.compatible {
            "compatible\n"
        } else {
            "NOT compatible\n"
        });
        s
    }
}

/// What a runner's operator's graph says of the author, read from verified records by
/// `runners::graph_standing` (each part `Err` with the reason when it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphStanding {
    /// The operator follows the author.
    pub followed: Result<bool, String>,
    /// The author follows the operator back; asked only of a `mutuals` runner.
    pub follows_back: Option<Result<bool, String>>,
}

/// The runtime a bundle is for, as [`compare`] checks it against a runner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleRuntime<'a> {
    /// `deno`, `node` or `python` (`atrund_bundle::record::RUNTIMES`): the runner must announce
    /// it.
    pub name: &'a str,
    /// The Deno that built the code (e.g. `2.9.6`), compared with a Deno runner's version.
    /// Unused for Node (nothing in a Node bundle depends on the Deno that bundled it) and Python
    /// (not built by Deno; empty).
    pub built_with: &'a str,
}

impl<'a> BundleRuntime<'a> {
    /// A Deno bundle built with Deno `built_with`.
    pub fn deno(built_with: &'a str) -> Self {
        BundleRuntime {
            name: "deno",
            built_with,
        }
    }
}

/// The runtime line of `check`: the runner must announce the bundle's runtime; for Deno, its
/// major version must be the one the code was built with (an older minor is a note).
fn runtime_check(
    desc: &DescribeRunner,
    runtime: BundleRuntime<'_>,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let announced = desc.runtimes.iter().find(|r| r.name == runtime.name);
    if runtime.name != "deno" {
        return match announced {
            // `Python 3.11.2` reads as `python 3.11.2`.
            Some(r) => Ok(format!(
                "{} {}",
                runtime.name,
                r.version.strip_prefix("Python ").unwrap_or(&r.version)
            )),
            None if runtime.name == "node" => Err(
                "the runner announces no node runtime; its operator must set node.path (ATRUND_NODE_PATH), or pick another runner"
                    .into(),
            ),
            None if runtime.name == "python" => Err(
                "the runner announces no python runtime; its operator must set python.path (ATRUND_PYTHON_PATH), or pick another runner"
                    .into(),
            ),
            None => Err(format!(
                "the runner announces no {} runtime; pick a runner that offers it",
                runtime.name
            )),
        };
    }
    let local_deno = runtime.built_with;
    let remote_v = announced.and_then(|r| r.version_number()).unwrap_or("");
    let (rl, rr) = (
        crate::deno::parse_major_minor(local_deno),
        crate::deno::parse_major_minor(remote_v),
    );
    if remote_v.is_empty() {
        Err("the runner announces no Deno runtime".into())
    } else if rl.0 != rr.0 {
        Err(format!(
            "built with Deno {local_deno}, the runner runs Deno {remote_v} (another major version)"
        ))
    } else {
        if rr < rl {
            notes.push(format!(
                "the runner's Deno {remote_v} is older than your {local_deno}: avoid APIs newer than {remote_v}"
            ));
        }
        Ok(format!("deno {remote_v} (local {local_deno})"))
    }
}

/// Compares a built bundle with what the runner announces. `graph`: the author's standing in
/// the operator's social graph, when the runner trusts one and it was read.
pub fn compare(
    runner: &str,
    desc: &DescribeRunner,
    manifest: &Manifest,
    code_bytes: u64,
    runtime: BundleRuntime<'_>,
    author: Option<(&str, &str)>,
    graph: Option<&GraphStanding>,
) -> CheckReport {
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    let mut push = |name: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        checks.push(Check {
            name: name.into(),
            ok,
            detail,
        });
    };

    // Runtime.
    let line = runtime_check(desc, runtime, &mut notes);
    push("runtime", line);

    // Author policy: the deny list, the allow-list, then the operator's graph.
    let p = &desc.policy;
    let named = |list: &[String], did: &str, handle: &str| {
        list.iter()
            .any(|e| *e == did || e.eq_ignore_ascii_case(handle))
    };
    let graph_line = p.graph.as_ref().map(|g| match g.kind.as_str() {
        "mutuals" => format!("the runner runs code for mutual follows of {}", g.operator),
        _ => format!(
            "the runner runs code for the accounts {} follows",
            g.operator
        ),
    });
    push(
        "author",
        match (author, &p.allow_list, &graph_line) {
            (Some((did, handle)), _, _) if named(&p.deny, did, handle) => Err(format!(
                "{handle} is on the runner's deny list; its operator refuses your code"
            )),
            (_, None, _) => Ok("the runner is open to every author".into()),
            (Some((did, handle)), Some(list), _) if named(list, did, handle) => {
                Ok(format!("{handle} is on the allow-list"))
            }
            (Some((_, handle)), _, Some(line)) => {
                let op = p.graph.as_ref().map_or("", |g| g.operator.as_str());
                match graph {
                    Some(GraphStanding { followed: Ok(false), .. }) => Err(format!(
                        "{line}, and {op} does not follow {handle}; ask the operator to follow you"
                    )),
                    Some(GraphStanding {
                        followed: Ok(true),
                        follows_back: Some(Ok(false)),
                    }) => Err(format!(
                        "{line}: {op} follows {handle}, but {handle} does not follow {op} back; follow them to run here"
                    )),
                    Some(GraphStanding {
                        followed: Ok(true),
                        follows_back: None | Some(Ok(true)),
                    }) => Ok(format!("{line}, and {op} follows {handle}")),
                    Some(GraphStanding { followed: Err(e), .. })
                    | Some(GraphStanding {
                        follows_back: Some(Err(e)),
                        ..
                    }) => {
                        notes.push(format!(
                            "could not read the operator's follows ({e}); the runner decides when you call (403 AuthorNotAllowed says so if {handle} is not admitted)"
                        ));
                        Ok(line.clone())
                    }
                    None => {
                        notes.push(format!(
                            "{line}: the runner decides from the operator's verified follows when you call (403 AuthorNotAllowed says so if {handle} is not admitted)"
                        ));
                        Ok(line.clone())
                    }
                }
            }
            (None, _, Some(line)) => {
                notes.push(format!(
                    "{line}; log in (`at-run login`) to check whether its operator follows you"
                ));
                Ok(line.clone())
            }
            (_, Some(list), None) if list.is_empty() => {
                Err("the runner allows no authors yet (ask its operator)".into())
            }
            (Some((_, handle)), Some(list), None) => Err(format!(
                "{handle} is not on the runner's allow-list ({}); ask its operator to add your DID",
                list.join(", ")
            )),
            (None, Some(list), None) => {
                notes.push("log in (`at-run login`) to check the author allow-list".into());
                Ok(format!("allow-list: {}", list.join(", ")))
            }
        },
    );

    // A bare net host is port 443 only: say so before the author wonders why port 80 fails.
    for n in manifest
        .permissions
        .net
        .iter()
        .filter(|n| !atrund_bundle::record::net_entry_names_port(n))
    {
        notes.push(format!(
            "net entry '{n}' has no port, so it allows port 443 only; write '{n}:PORT' for another port"
        ));
    }

    // Permissions and limits, one aspect at a time so that every problem is listed.
    let caps = PermissionCaps::from(desc.permissions.clone());
    let limits = LimitsSection::from(desc.limits.clone());
    let mut parts: Vec<(String, Manifest)> = Vec::new();
    let p = &manifest.permissions;
    let base = Manifest::default();
    let with = |f: &dyn Fn(&mut Manifest)| {
        let mut m = base.clone();
        f(&mut m);
        m
    };
    if !p.net.is_empty() {
        parts.push(("net".into(), with(&|m| m.permissions.net = p.net.clone())));
    }
    if !p.read.is_empty() {
        parts.push((
            "read".into(),
            with(&|m| m.permissions.read = p.read.clone()),
        ));
    }
    if !p.write.is_empty() {
        parts.push((
            "write".into(),
            with(&|m| m.permissions.write = p.write.clone()),
        ));
    }
    for r in &p.run {
        parts.push((
            format!("run {r}"),
            with(&|m| m.permissions.run = vec![r.clone()]),
        ));
    }
    if p.ffi {
        parts.push(("ffi".into(), with(&|m| m.permissions.ffi = true)));
    }
    if p.sys {
        parts.push(("sys".into(), with(&|m| m.permissions.sys = true)));
    }
    let l = &manifest.limits;
    for (k, v) in [
        ("timeoutMs", l.timeout_ms),
        ("memoryMib", l.memory_mib),
        ("cpuMs", l.cpu_ms),
        ("concurrency", l.concurrency),
    ] {
        if v.is_some() {
            parts.push((
                format!("limits.{k}"),
                with(&|m| match k {
                    "timeoutMs" => m.limits.timeout_ms = v,
                    "memoryMib" => m.limits.memory_mib = v,
                    "cpuMs" => m.limits.cpu_ms = v,
                    _ => m.limits.concurrency = v,
                }),
            ));
        }
    }
    if !manifest.tasks.is_empty() {
        parts.push(("tasks".into(), with(&|m| m.tasks = manifest.tasks.clone())));
    }
    if parts.is_empty() {
        push(
            "permissions",
            Ok("asks for nothing beyond the defaults".into()),
        );
    }
    for (name, m) in parts {
        push(
            &name,
            check_manifest(&caps, &limits, &m)
                .map(|_| "allowed".to_string())
                .map_err(|e| e.to_string()),
        );
    }
    match check_manifest(&caps, &limits, manifest) {
        Ok(eff) => notes.push(format!(
            "runs with timeoutMs={} memoryMib={} cpuMs={} concurrency={}",
            eff.timeout_ms, eff.memory_mib, eff.cpu_ms, eff.concurrency
        )),
        Err(e) => push("manifest", Err(e.to_string())),
    }

    // Size.
    let max = desc.max_bundle_bytes.min(crate::build::MAX_CODE_BYTES);
    push(
        "size",
        if code_bytes <= max {
            Ok(format!("{code_bytes} bytes (runner takes up to {max})"))
        } else {
            Err(format!(
                "the bundle is {code_bytes} bytes; this runner takes at most {max}: drop dependencies or minify"
            ))
        },
    );

    for e in desc.enforcement.iter().filter(|e| !e.enforced) {
        notes.push(format!("the runner does not enforce {}", e.limit));
    }
    let compatible = checks.iter().all(|c| c.ok);
    CheckReport {
        runner: runner.to_string(),
        compatible,
        checks,
        notes,
    }
}

/// A sample value for a JSON Schema: its first example, else one built from its type.
pub fn sample(schema: &Value) -> Value {
    if let Some(ex) = schema.pointer("/examples/0") {
        return ex.clone();
    }
    if let Some(e) = schema.pointer("/enum/0") {
        return e.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if required.contains(&k.as_str()) || p.get("examples").is_some() {
                        out.insert(k.clone(), sample(p));
                    }
                }
            }
            Value::Object(out)
        }
        Some("string") => {
            let n = schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0);
            match schema.get("format").and_then(Value::as_str) {
                Some("number" | "integer") => json!(n.to_string().trim_end_matches(".0")),
                _ => {
                    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(1);
                    json!("x".repeat(usize::try_from(min.max(1)).unwrap_or(1)))
                }
            }
        }
        Some("integer") | Some("number") => {
            json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0))
        }
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        _ => Value::Null,
    }
}

/// The query string of a GET sample (arrays repeat the key).
fn query_pairs(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let one = |x: &Value| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match x {
                Value::Array(a) => out.extend(a.iter().map(|i| (k.clone(), one(i)))),
                Value::Null => {}
                other => out.push((k.clone(), one(other))),
            }
        }
    }
    out
}

/// One endpoint call of `test`.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub endpoint: String,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub millis: u64,
    pub pass: bool,
    /// Why it failed (the runner's error name and message), when it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub runner: String,
    pub did: String,
    pub name: String,
    pub version: String,
    pub passed: usize,
    pub failed: usize,
    pub calls: Vec<Call>,
}

impl TestReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "testing {} {} by {} on {}\n",
            self.name, self.version, self.did, self.runner
        );
        for c in &self.calls {
            s.push_str(&format!(
                "  {} {:<7} {:<20} {:>4} {:>6} ms{}\n",
                if c.pass { "pass" } else { "FAIL" },
                c.method,
                c.endpoint,
                c.status
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.millis,
                c.error
                    .as_deref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!("{} passed, {} failed\n", self.passed, self.failed));
        s
    }
}

/// `at-run test --runner URL`: every endpoint of `name@version` (a version or `latest`).
pub async fn test(
    a: &AuthArgs,
    runner: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<TestReport> {
    let (client, repo) = auth::reader(a)?;
    // The manifest of the version under test, from the author's repo.
    let rkey = if version == "latest" {
        let rel = client
            .get_record(&repo, RELEASE_COLLECTION, name)
            .await
            .context("could not read the release record")?
            .ok_or_else(|| {
                Failure::VersionNotFound(format!(
                    "{name} has no release (latest); deploy it first or pass --version"
                ))
            })?;
        let uri = rel
            .pointer("/value/bundle/uri")
            .and_then(Value::as_str)
            .unwrap_or("");
        uri.rsplit('/').next().unwrap_or("").to_string()
    } else {
        bundle_rkey(name, version)
    };
    let rec = client
        .get_record(&repo, BUNDLE_COLLECTION, &rkey)
        .await
        .context("could not read the bundle record")?
        .ok_or_else(|| {
            Failure::VersionNotFound(format!(
                "{rkey} is not published by {repo}; see `at-run ls`"
            ))
        })?;
    let did = rec
        .get("uri")
        .and_then(Value::as_str)
        .and_then(|u| u.strip_prefix("at://"))
        .and_then(|u| u.split('/').next())
        .unwrap_or(&repo)
        .to_string();
    let manifest: Manifest = serde_json::from_value(rec["value"]["manifest"].clone())
        .context("the published manifest is not readable")?;
    let base = runner.trim_end_matches('/');
    let http = http()?;
    let mut calls = Vec::new();
    for e in &manifest.endpoints {
        let method = match e.method.as_deref() {
            None | Some("ANY") => "GET",
            Some(m) => m,
        }
        .to_string();
        let input = e.input.as_ref().map(sample);
        let url = format!("{base}/bundle/{did}/{name}/{version}/{}", e.name);
        let mut req = http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET),
            &url,
        );
        match (&input, method.as_str()) {
            (Some(i), "GET" | "HEAD" | "DELETE" | "OPTIONS") => req = req.query(&query_pairs(i)),
            (Some(i), _) => req = req.json(i),
            (None, _) => {}
        }
        let t = Instant::now();
        let res = req.send().await;
        let millis = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let call = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                let pass = status < 400;
                let error = (!pass).then(|| {
                    serde_json::from_str::<Value>(&body)
                        .ok()
                        .map(|v| {
                            format!(
                                "{}: {}",
                                v["error"].as_str().unwrap_or("?"),
                                v["message"].as_str().unwrap_or("")
                            )
                        })
                        .unwrap_or_else(|| body.chars().take(200).collect())
                });
                Call {
                    endpoint: e.name.clone(),
                    method,
                    url,
                    status: Some(status),
                    millis,
                    pass,
                    error,
                }
            }
            Err(err) => Call {
                endpoint: e.name.clone(),
                method,
                url,
                status: None,
                millis,
                pass: false,
                error: Some(format!("could not reach the runner: {err}")),
            },
        };
        calls.push(call);
    }
    let failed = calls.iter().filter(|c| !c.pass).count();
    Ok(TestReport {
        runner: base.to_string(),
        did,
        name: name.to_string(),
        version: version.to_string(),
        passed: calls.len() - failed,
        failed,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_follow_the_schema() {
        let s = json!({"type":"object","properties":{
            "name":{"type":"string","examples":["Ada"]},
            "size":{"type":"string","format":"number","minimum":16},
            "opt":{"type":"boolean"},
            "fmt":{"type":"string","enum":["png","svg"]}},
            "required":["size","fmt"]});
        assert_eq!(sample(&s), json!({"name":"Ada","size":"16","fmt":"png"}));
        assert_eq!(sample(&json!({"examples":[{"a":1}]})), json!({"a":1}));
        assert_eq!(
            sample(&json!({"type":"string","minLength":3})),
            json!("xxx")
        );
        assert_eq!(
            query_pairs(&json!({"a":"1","b":["x","y"],"c":2})),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x".to_string()),
                ("b".to_string(), "y".to_string()),
                ("c".to_string(), "2".to_string())
            ]
        );
    }

    /// A runner announcing `runtimes` (open to one allowed author, net off, low limits).
    fn described(runtimes: Value) -> DescribeRunner {
        serde_json::from_value(json!({
            "software":{"name":"at-rund","version":"0"},
            "isolation":"none",
            "runtimes":runtimes,
            "publicKey":"z",
            "policy":{"authors":"allow-list: did:plc:someone","allowList":["did:plc:someone"]},
            "permissions":{"net":false,"read":true,"write":true,"run":[],"ffi":false,"sys":false},
            "limits":{"timeout_ms":{"default":1000,"max":2000},"memory_mib":{"default":128,"max":256},
                      "cpu_ms":{"default":1000,"max":2000},"concurrency":{"default":1,"max":4},
                      "pids":64,"cpu_quota_percent":100,"open_files":256,"max_response_bytes":1000,
                      "freeze_idle":true,"freeze_after_idle_ms":50,"max_file_bytes":1048576},
            "enforcement":[{"limit":"cpuMs","enforced":false,"how":"x"}],
            "maxRequestBodyBytes":1000,
            "maxBundleBytes":1000000,
            "tenants":{"ratePerSec":0,"rateBurst":0,"negativeCacheSecs":0,"identityRefreshMinSecs":0,
                       "maxConnections":0,"headerReadTimeoutMs":0,"maxStoreBytesPerAuthor":0,
                       "storeGcAfterSecs":0,"maxDataBytesPerAuthor":0},
            "bundleDomain":null,
        }))
        .expect("describeRunner")
    }

    const DENO_LINE: &str = "deno 2.9.6 (stable, release, x86_64-unknown-linux-gnu)";

    #[test]
    fn compare_lists_every_problem() {
        let desc = described(json!([{"name": "deno", "version": DENO_LINE}]));
        let m: Manifest = serde_json::from_value(json!({
            "permissions":{"net":["example.com"],"sys":true},
            "limits":{"timeoutMs":5000}
        }))
        .expect("manifest");
        let r = compare(
            "http://r",
            &desc,
            &m,
            10,
            BundleRuntime::deno("2.9.6"),
            Some(("did:plc:me", "me.test")),
            None,
        );
        assert!(!r.compatible);
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        for want in ["author", "net", "sys", "limits.timeoutMs"] {
            assert!(failed.contains(&want), "{want} missing from {failed:?}");
        }
        assert!(r.notes.iter().any(|n| n.contains("cpuMs")));
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("'example.com'") && n.contains("port 443 only")),
            "{:?}",
            r.notes
        );
        let ok = compare(
            "http://r",
            &desc,
            &Manifest::default(),
            10,
            BundleRuntime::deno("2.9.6"),
            Some(("did:plc:someone", "x")),
            None,
        );
        assert!(ok.compatible, "{}", ok.render());

        // A runner trusting its operator's graph: the author's standing decides.
        let mut graph_desc = desc.clone();
        graph_desc.policy.allow_list = Some(Vec::new());
        graph_desc.policy.deny = vec!["did:plc:banned".into()];
        graph_desc.policy.graph = Some(atrund_api::RunnerGraph {
            kind: "mutuals".into(),
            operator: "op.test".into(),
            operator_did: Some("did:plc:op".into()),
            follows: 2,
            age_secs: Some(1),
        });
        let author_line = |who: (&str, &str), g: Option<GraphStanding>| {
            let r = compare(
                "http://r",
                &graph_desc,
                &Manifest::default(),
                10,
                BundleRuntime::deno("2.9.6"),
                Some(who),
                g.as_ref(),
            );
            let c = r
                .checks
                .iter()
                .find(|c| c.name == "author")
                .cloned()
                .expect("author line");
            (c.ok, c.detail, r.notes)
        };
        let standing = |followed: Result<bool, String>, back: Option<Result<bool, String>>| {
            Some(GraphStanding {
                followed,
                follows_back: back,
            })
        };
        let me = ("did:plc:me", "me.test");
        let (ok, detail, _) = author_line(me, standing(Ok(true), Some(Ok(true))));
        assert!(ok && detail.contains("op.test follows me.test"), "{detail}");
        let (ok, detail, _) = author_line(me, standing(Ok(false), None));
        assert!(
            !ok && detail.contains("does not follow me.test"),
            "{detail}"
        );
        let (ok, detail, _) = author_line(me, standing(Ok(true), Some(Ok(false))));
        assert!(
            !ok && detail.contains("does not follow op.test back"),
            "{detail}"
        );
        let (ok, _, notes) = author_line(me, standing(Err("PDS down".into()), None));
        assert!(
            ok && notes.iter().any(|n| n.contains("PDS down")),
            "{notes:?}"
        );
        let (ok, detail, _) = author_line(
            ("did:plc:banned", "b.test"),
            standing(Ok(true), Some(Ok(true))),
        );
        assert!(!ok && detail.contains("deny list"), "{detail}");
    }

    /// The `runtime` check of comparing `runtime`'s bundle (an empty manifest, an allowed
    /// author) with `desc`: (ok, detail); the verdict follows it.
    fn runtime_line(desc: &DescribeRunner, runtime: BundleRuntime<'_>) -> (bool, String) {
        let r = compare(
            "http://r",
            desc,
            &Manifest::default(),
            10,
            runtime,
            Some(("did:plc:someone", "x")),
            None,
        );
        let c = r
            .checks
            .iter()
            .find(|c| c.name == "runtime")
            .cloned()
            .expect("runtime line");
        assert_eq!(r.compatible, c.ok, "{}", r.render());
        (c.ok, c.detail)
    }

    #[test]
    fn a_node_bundle_needs_a_runner_that_announces_node() {
        let node = BundleRuntime {
            name: "node",
            built_with: "2.9.6",
        };
        let deno_only = described(json!([{"name": "deno", "version": DENO_LINE}]));
        let (ok, detail) = runtime_line(&deno_only, node);
        assert!(!ok);
        assert!(
            detail
                .contains("the runner announces no node runtime; its operator must set node.path"),
            "{detail}"
        );

        // Node offered: presence is all (no version to compare with the Deno that bundled it).
        let both = described(json!([
            {"name": "deno", "version": DENO_LINE},
            {"name": "node", "version": "v24.21.0"}
        ]));
        let (ok, detail) = runtime_line(&both, node);
        assert!(ok, "{detail}");
        assert_eq!(detail, "node v24.21.0");
        let old_deno = BundleRuntime {
            name: "node",
            built_with: "1.0.0",
        };
        assert!(runtime_line(&both, old_deno).0);

        // A Deno bundle still compares Deno versions, whatever else the runner offers.
        let (ok, detail) = runtime_line(&both, BundleRuntime::deno("2.9.6"));
        assert!(ok && detail == "deno 2.9.6 (local 2.9.6)", "{detail}");
        let (ok, detail) = runtime_line(&both, BundleRuntime::deno("3.0.0"));
        assert!(!ok && detail.contains("another major version"), "{detail}");
        let node_only = described(json!([{"name": "node", "version": "v24.21.0"}]));
        let (ok, detail) = runtime_line(&node_only, BundleRuntime::deno("2.9.6"));
        assert!(!ok && detail.contains("no Deno runtime"), "{detail}");
    }

    #[test]
    fn a_python_bundle_needs_a_runner_that_announces_python() {
        let python = BundleRuntime {
            name: "python",
            built_with: "",
        };
        let line = |desc: &DescribeRunner| runtime_line(desc, python);
        let without = described(json!([
            {"name": "deno", "version": DENO_LINE},
            {"name": "node", "version": "v24.21.0"}
        ]));
        let (ok, detail) = line(&without);
        assert!(!ok);
        assert_eq!(
            detail,
            "the runner announces no python runtime; its operator must set python.path (ATRUND_PYTHON_PATH), or pick another runner"
        );
        let with = described(json!([
            {"name": "deno", "version": DENO_LINE},
            {"name": "python", "version": "Python 3.11.2"}
        ]));
        let (ok, detail) = line(&with);
        assert!(ok, "{detail}");
        assert_eq!(detail, "python 3.11.2");
    }
}
