//! The `dev.atrund.*` records as Rust types, matching `lexicons/*.json`, plus the syntax rules for
//! bundle names, versions and the record keys derived from them.
//!
//! Owns: record shapes and their validation. Must not touch: the network, the disk, or policy
//! (what an operator allows is `atrund-policy`'s job; here we only say what is well-formed).

use serde::{Deserialize, Serialize};

/// Collection of immutable bundle versions, rkey `{name}:{version}`.
pub const BUNDLE_COLLECTION: &str = "dev.atrund.bundle";
/// Collection of release pointers, rkey `{name}`.
pub const RELEASE_COLLECTION: &str = "dev.atrund.release";

/// Longest bundle name accepted (it becomes part of a record key and a URL segment).
pub const MAX_NAME_LEN: usize = 64;

/// Why a record or one of its parts is not well-formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// the bundle name is not 1-64 characters of a-z, 0-9 and '-', starting with a letter
    #[error("bundle name '{0}' is invalid: use 1-64 characters of a-z, 0-9 and '-', starting with a letter")]
    BadName(String),
    /// the version is not a semantic version without build metadata
    #[error("version '{0}' is invalid: use a semantic version such as 1.2.3 or 1.0.0-beta.1 (no '+build' part)")]
    BadVersion(String),
    /// the record's name/version do not match the key it was stored under
    #[error("record at key '{rkey}' names bundle '{name}' version '{version}', which does not match its key")]
    KeyMismatch {
        rkey: String,
        name: String,
        version: String,
    },
    /// the runtime is not one this runner knows
    #[error("runtime '{0}' is not supported; this runner knows: deno, node, python")]
    UnsupportedRuntime(String),
    /// the code blob has a MIME type the runtime cannot load
    #[error("code blob MIME type '{0}' is not what the bundle's runtime loads; publish a single ESM file as application/javascript (deno, node), or one Python module as text/x-python or a zip of pure-Python modules with main.py at its root as application/zip (python)")]
    UnsupportedCodeType(String),
    /// the manifest is not well-formed
    #[error("manifest is invalid: {0}")]
    BadManifest(String),
    /// the release pointer does not point at a bundle record of the same name in the same repo
    #[error("release '{name}' points at '{uri}', which is not a dev.atrund.bundle record of '{name}' in the same repository")]
    BadReleaseTarget { name: String, uri: String },
}

/// A reference to a blob as stored in a record (`$type: blob`). Only the current form is
/// accepted; the legacy `{cid, mimeType}` form is never produced by a PDS for new records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    #[serde(rename = "$type")]
    pub kind: String,
    #[serde(rename = "ref")]
    pub cid: cid::Cid,
    #[serde(rename = "mimeType")]
    pub mime_type: String,
    pub size: u64,
}

/// `dev.atrund.bundle`: one immutable published version of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRecord {
    pub name: String,
    pub version: String,
    pub runtime: String,
    pub code: BlobRef,
    pub manifest: Manifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: String,
}

/// A strong reference: a record URI plus the CID of the exact record version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongRef {
    pub uri: String,
    pub cid: String,
}

/// `dev.atrund.release`: the pointer `latest` follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    pub name: String,
    pub bundle: StrongRef,
    pub updated_at: String,
}

/// What a bundle declares it needs. Authoritative: the runner never runs code to learn it.
/// Unknown fields are refused so that a permission this runner does not understand is never
/// silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub limits: LimitRequests,
    #[serde(default)]
    pub endpoints: Vec<EndpointDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crons: Vec<CronDecl>,
}

/// Permissions a bundle asks for. `env` is never declared: it comes from secret names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permissions {
    /// `host:port` entries the bundle may connect to; a bare `host` means port 443 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<String>,
    /// Paths relative to the bundle's data dir it may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Paths relative to the bundle's data dir it may write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    /// Commands it may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ffi: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub sys: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Limits a bundle asks for; `None` means the operator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRequests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
}

/// One HTTP endpoint: the bundle's export of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointDecl {
    pub name: String,
    /// `GET`, `POST`, ... or `ANY` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Input schema (JSON Schema subset), validated by the runtime library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A background task (declared now, run by later work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDecl {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// Wall clock of one run, instead of the bundle's `limits.timeoutMs` (tasks often need
    /// longer than endpoints); at most the operator's `limits.timeout_ms.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Anyone may queue a run, without the author's token (docs/jobs.md, "Public tasks").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// A cron schedule that starts a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CronDecl {
    pub schedule: String,
    pub task: String,
}

impl Manifest {
    /// Structural checks that do not depend on operator policy.
    pub fn validate(&self) -> Result<(), RecordError> {
        let bad = |m: String| Err(RecordError::BadManifest(m));
        let mut seen = std::collections::HashSet::new();
        for e in &self.endpoints {
            if !is_identifier(&e.name) {
                return bad(format!(
                    "endpoint name '{}' must be a JavaScript identifier (letters, digits, _ and $)",
                    e.name
                ));
            }
            if e.name == "default" {
                return bad(
                    "endpoint name 'default' is not allowed: the default export is never an endpoint; export the endpoint under a name (export const hello = { handler })".into(),
                );
            }
            if !seen.insert(e.name.as_str()) {
                return bad(format!("endpoint '{}' is declared twice", e.name));
            }
            if let Some(m) = &e.method {
                if !matches!(
                    m.as_str(),
                    "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" | "ANY"
                ) {
                    return bad(format!(
                        "endpoint '{}' has method '{m}'; use GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY",
                        e.name
                    ));
                }
            }
        }
        for p in self.permissions.read.iter().chain(&self.permissions.write) {
            if !is_relative_data_path(p) {
                return bad(format!(
                    "path '{p}' in read/write must be relative to the bundle's data dir, made of plain names (no '/' at the start, no '.', '..' or empty segments); to grant the whole data dir, list the folders in it"
                ));
            }
        }
        for n in &self.permissions.net {
            if n.is_empty() || n.contains(['/', ' ', ',', '@']) {
                return bad(format!("net entry '{n}' must be host or host:port"));
            }
        }
        for r in &self.permissions.run {
            if r.is_empty() || r.contains(',') {
                return bad(format!("run entry '{r}' must be a command name"));
            }
        }
        let mut tasks = std::collections::HashSet::new();
        for t in &self.tasks {
            if !is_identifier(&t.name) || t.name == "default" {
                return bad(format!(
                    "task name '{}' must be a JavaScript identifier other than 'default'",
                    t.name
                ));
            }
            if !tasks.insert(t.name.as_str()) || seen.contains(t.name.as_str()) {
                return bad(format!(
                    "'{}' is declared twice (an export is an endpoint or a task, once)",
                    t.name
                ));
            }
            if t.concurrency == Some(0) {
                return bad(format!(
                    "task '{}': concurrency must be greater than 0",
                    t.name
                ));
            }
            if t.timeout_ms == Some(0) {
                return bad(format!(
                    "task '{}': timeoutMs must be greater than 0",
                    t.name
                ));
            }
        }
        for c in &self.crons {
            crate::cron::Schedule::parse(&c.schedule)
                .map_err(|e| RecordError::BadManifest(format!("cron schedule {e}")))?;
            if !tasks.contains(c.task.as_str()) {
                return bad(format!(
                    "cron '{}' starts task '{}', which the manifest's tasks do not declare",
                    c.schedule, c.task
                ));
            }
        }
        let l = &self.limits;
        for (k, v) in [
            ("memoryMib", l.memory_mib),
            ("timeoutMs", l.timeout_ms),
            ("cpuMs", l.cpu_ms),
            ("concurrency", l.concurrency),
        ] {
            if v == Some(0) {
                return bad(format!("limits.{k} must be greater than 0"));
            }
        }
        Ok(())
    }

    /// The declared endpoint with this name, if any.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointDecl> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

impl BundleRecord {
    /// Checks the record is well-formed and stored under the key its name and version imply.
    pub fn validate(&self, rkey: &str) -> Result<(), RecordError> {
        validate_name(&self.name)?;
        parse_version(&self.version)?;
        if bundle_rkey(&self.name, &self.version) != rkey {
            return Err(RecordError::KeyMismatch {
                rkey: rkey.to_string(),
                name: self.name.clone(),
                version: self.version.clone(),
            });
        }
        if !RUNTIMES.contains(&self.runtime.as_str()) {
            return Err(RecordError::UnsupportedRuntime(self.runtime.clone()));
        }
        if !code_types(&self.runtime).contains(&self.code.mime_type.as_str()) {
            return Err(RecordError::UnsupportedCodeType(
                self.code.mime_type.clone(),
            ));
        }
        self.manifest.validate()
    }
}

/// The runtimes a record may name (each loads one ES module: the same code types). Whether a
/// runner offers one is its operator's choice, checked when an instance starts.
pub const RUNTIMES: [&str; 3] = ["deno", "node", "python"];

/// The code blob types a runtime loads: one ES module for the JavaScript runtimes; for Python one
/// source file, or a zip its interpreter imports from (`main.py` at the root, pure-Python
/// packages beside it).
pub fn code_types(runtime: &str) -> &'static [&'static str] {
    match runtime {
        "python" => &["text/x-python", "application/zip"],
        _ => &["application/javascript", "text/javascript"],
    }
}

/// Checks a bundle name: 1-64 of `[a-z0-9-]`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), RecordError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadName(name.to_string()))
    }
}

/// Parses a version: semver without build metadata (`+` is not allowed in record keys).
pub fn parse_version(v: &str) -> Result<semver::Version, RecordError> {
    match semver::Version::parse(v) {
        Ok(parsed) if parsed.build.is_empty() && v.len() <= 128 => Ok(parsed),
        _ => Err(RecordError::BadVersion(v.to_string())),
    }
}

/// Record key of one bundle version.
pub fn bundle_rkey(name: &str, version: &str) -> String {
    format!("{name}:{version}")
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 128
}

fn is_relative_data_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != ".." && seg != ".")
}

/// Whether a `net` entry names its port (`host:port`, `[v6]:port`). One that does not opens
/// port 443 only (docs/bundle-abi.md), not every port of the host.
pub fn net_entry_names_port(entry: &str) -> bool {
    match entry.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        // A bare IPv6 literal has several colons and no port.
        None => entry.matches(':').count() == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lexicon authors publish against names the runtimes and code types records may use.
    #[test]
    fn the_bundle_lexicon_lists_every_runtime_and_code_type() {
        let lexicon: serde_json::Value =
            serde_json::from_str(include_str!("../../../lexicons/dev.atrund.bundle.json"))
                .expect("the lexicon is JSON");
        let props = &lexicon["defs"]["main"]["record"]["properties"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("a list")
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        assert_eq!(strings(&props["runtime"]["knownValues"]), RUNTIMES);
        let mut types: Vec<&str> = Vec::new();
        for t in RUNTIMES.iter().flat_map(|r| code_types(r)) {
            if !types.contains(t) {
                types.push(t);
            }
        }
        assert_eq!(strings(&props["code"]["accept"]), types);
    }

    #[test]
    fn names_and_versions() {
        assert!(validate_name("hello").is_ok());
        assert!(validate_name("my-api-2").is_ok());
        for bad in ["", "Hello", "1abc", "a_b", "a/b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(parse_version("1.2.3").is_ok());
        assert!(parse_version("1.0.0-beta.1").is_ok());
        for bad in ["1", "1.2", "v1.2.3", "1.2.3+build", "latest", ""] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
        assert_eq!(bundle_rkey("hello", "1.0.0"), "hello:1.0.0");
    }

    #[test]
    fn manifest_rejects_unknown_fields_and_bad_values() {
        let ok: Manifest = serde_json::from_str(
            r#"{"permissions":{"net":["example.com:443"]},"limits":{"timeoutMs":500},
                "endpoints":[{"name":"greet","method":"GET"}]}"#,
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        let jobs: Manifest = serde_json::from_str(
            r#"{"tasks":[{"name":"t","concurrency":2}],"crons":[{"schedule":"*/5 * * * mon","task":"t"}]}"#,
        )
        .unwrap();
        assert!(jobs.validate().is_ok());
        assert!(serde_json::from_str::<Manifest>(r#"{"permissions":{"gpu":true}}"#).is_err());
        assert!(serde_json::from_str::<Manifest>(r#"{"surprise":1}"#).is_err());
        for bad in [
            r#"{"endpoints":[{"name":"a-b"}]}"#,
            r#"{"endpoints":[{"name":"default"}]}"#,
            r#"{"endpoints":[{"name":"a"},{"name":"a"}]}"#,
            r#"{"endpoints":[{"name":"a","method":"FETCH"}]}"#,
            r#"{"permissions":{"read":["../etc"]}}"#,
            r#"{"permissions":{"read":["/etc"]}}"#,
            r#"{"permissions":{"write":["a//b"]}}"#,
            r#"{"permissions":{"write":["."]}}"#,
            r#"{"permissions":{"read":["./a"]}}"#,
            r#"{"permissions":{"read":["a/."]}}"#,
            r#"{"permissions":{"read":["a/./b"]}}"#,
            r#"{"permissions":{"net":["a,b"]}}"#,
            r#"{"limits":{"memoryMib":0}}"#,
            r#"{"tasks":[{"name":"a-b"}]}"#,
            r#"{"tasks":[{"name":"t"},{"name":"t"}]}"#,
            r#"{"endpoints":[{"name":"t"}],"tasks":[{"name":"t"}]}"#,
            r#"{"tasks":[{"name":"t","concurrency":0}]}"#,
            r#"{"tasks":[{"name":"t","timeoutMs":0}]}"#,
            r#"{"tasks":[{"name":"t"}],"crons":[{"schedule":"* * * *","task":"t"}]}"#,
            r#"{"tasks":[{"name":"t"}],"crons":[{"schedule":"* * * * *","task":"u"}]}"#,
        ] {
            let m: Manifest = serde_json::from_str(bad).unwrap();
            assert!(m.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_entries_without_port() {
        for (e, has) in [
            ("example.com", false),
            ("example.com:8443", true),
            ("1.2.3.4", false),
            ("1.2.3.4:80", true),
            ("::1", false),
            ("[::1]", false),
            ("[::1]:80", true),
        ] {
            assert_eq!(net_entry_names_port(e), has, "{e}");
        }
    }
}
