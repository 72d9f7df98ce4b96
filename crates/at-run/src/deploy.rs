//! `at-run deploy`: publish one immutable bundle version (`dev.atrund.bundle`, rkey
//! `{name}:{version}`) to the author's PDS and, unless `--no-release`, point the release record
//! (`dev.atrund.release`, rkey `{name}`) at it.
//!
//! Owns: the local checks (name, version, runtime, manifest, code file) done before any network
//! call, and the publish sequence uploadBlob -> putRecord(bundle) -> putRecord(release) in the
//! session of `auth`. The daemon's tests publish through [`run_cmd`], the code the command runs.
//! Must not touch: anything but the bundle/manifest files it is given and the author's own repo.
//! The password is only ever sent in the createSession body; it is never printed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use atrund_bundle::record::{
    bundle_rkey, code_types, parse_version, validate_name, BUNDLE_COLLECTION, RELEASE_COLLECTION,
};
use atrund_bundle::Manifest;
use serde::Serialize;
use serde_json::{json, Value};

use crate::xrpc::{Client, Session, XrpcError};

/// `description` limits from the lexicon (bytes / graphemes; chars are counted, which is stricter).
const MAX_DESCRIPTION_BYTES: usize = 3000;
const MAX_DESCRIPTION_CHARS: usize = 300;

/// The MIME type `code` of a `runtime` bundle is uploaded with: one of the types its records
/// may name (`application/javascript` for Deno and Node; for Python `text/x-python`, or
/// `application/zip` for a packed project).
pub fn code_mime(runtime: &str, code: &[u8]) -> &'static str {
    if runtime == "python" && crate::pypack::is_zip(code) {
        return "application/zip";
    }
    code_types(runtime)[0]
}

/// The runtime a prebuilt file's name says it is for: a `.py` file (Python source) or a `.zip`
/// (a packed Python project) is Python, a `.js`, `.mjs` or `.ts` file JavaScript; `None` for
/// anything else.
fn runtime_of_file(path: &Path) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("py" | "zip") => Some("python"),
        Some("js" | "mjs" | "ts") => Some("javascript"),
        _ => None,
    }
}

/// A strong reference to a written record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordRef {
    pub uri: String,
    pub cid: String,
}

/// The uploaded code blob.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlobInfo {
    pub cid: String,
    pub size: u64,
    pub mime_type: String,
}

/// What `deploy` published.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub did: String,
    pub handle: String,
    pub name: String,
    pub version: String,
    /// The record's `runtime`.
    pub runtime: String,
    pub bundle: RecordRef,
    pub blob: BlobInfo,
    pub release: Option<RecordRef>,
}

impl Published {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "published {} {} for {} ({})\n  bundle:  {}\n  runtime: {}\n  cid:     {}\n  code:    {} ({} bytes, {})\n",
            self.name,
            self.version,
            self.handle,
            self.did,
            self.bundle.uri,
            self.runtime,
            self.bundle.cid,
            self.blob.cid,
            self.blob.size,
            self.blob.mime_type
        );
        match &self.release {
            Some(r) => s.push_str(&format!(
                "  release: {} -> {} (cid {})\n",
                r.uri, self.version, r.cid
            )),
            None => s.push_str("  release: not moved (--no-release)\n"),
        }
        s
    }
}

/// `manifest.json` in the bundle file's directory.
fn default_manifest_path(file: &Path) -> PathBuf {
    file.parent()
        .unwrap_or_else(|| Path::new(""))
        .join("manifest.json")
}

fn already_published(name: &str, version: &str, uri: &str) -> anyhow::Error {
    crate::error::Failure::VersionExists(format!(
        "version {version} of '{name}' is already published ({uri}); bundles are immutable, so bump the version (\"version\" in at-run.json, or --version)"
    ))
    .into()
}

/// One version to publish.
pub struct Publish<'a> {
    pub code: Vec<u8>,
    pub manifest: &'a Manifest,
    pub name: &'a str,
    pub version: &'a str,
    /// The record's `runtime` (`atrund_bundle::record::RUNTIMES`).
    pub runtime: &'a str,
    pub description: Option<&'a str>,
    pub no_release: bool,
}

/// Checks the code a deploy would upload for `runtime` (size, UTF-8, not empty).
pub fn check_code(code: &[u8], origin: &str, runtime: &str) -> anyhow::Result<()> {
    crate::build::check_source(code, origin, runtime)
}

/// The `dev.atrund.bundle` record of `p`, its code the uploaded `blob`.
pub fn bundle_record(p: &Publish<'_>, blob: &Value) -> anyhow::Result<Value> {
    let manifest = serde_json::to_value(p.manifest).context("could not encode the manifest")?;
    let mut record = json!({
        "$type": BUNDLE_COLLECTION,
        "name": p.name,
        "version": p.version,
        "runtime": p.runtime,
        "code": blob,
        "manifest": manifest,
        "createdAt": crate::time::now_rfc3339(),
    });
    if let (Some(d), Some(obj)) = (p.description, record.as_object_mut()) {
        obj.insert("description".into(), Value::String(d.to_string()));
    }
    Ok(record)
}

/// uploadBlob -> putRecord(bundle) -> putRecord(release), with `progress` told each step.
pub async fn publish(
    client: &Client,
    session: &Session,
    mut p: Publish<'_>,
    progress: impl Fn(&str),
) -> anyhow::Result<Published> {
    let rkey = bundle_rkey(p.name, p.version);
    let bundle_uri = format!("at://{}/{BUNDLE_COLLECTION}/{rkey}", session.did);
    // Checked before uploading so that a repeated deploy fails fast and clearly; the putRecord
    // below still refuses atomically if another deploy wins the race.
    if client
        .get_record(&session.did, BUNDLE_COLLECTION, &rkey)
        .await
        .context("could not check whether this version already exists")?
        .is_some()
    {
        return Err(already_published(p.name, p.version, &bundle_uri));
    }

    let size = p.code.len() as u64;
    let mime = code_mime(p.runtime, &p.code);
    progress(&format!("uploading {size} bytes of code ({mime})"));
    let (blob, blob_cid) = client
        .upload_blob(session, std::mem::take(&mut p.code), mime)
        .await
        .context("could not upload the bundle code")?;
    let mime_type = blob
        .get("mimeType")
        .and_then(Value::as_str)
        .unwrap_or(mime)
        .to_string();

    progress(&format!("writing {bundle_uri}"));
    let record = bundle_record(&p, &blob)?;
    let bundle = match client
        .put_record(session, BUNDLE_COLLECTION, &rkey, &record, true)
        .await
    {
        Ok(w) => w,
        Err(e @ XrpcError::Pds { .. }) if e.pds_error() == Some("InvalidSwap") => {
            return Err(already_published(p.name, p.version, &bundle_uri));
        }
        Err(e) => return Err(e).context("could not write the bundle record"),
    };

    let release = if p.no_release {
        None
    } else {
        progress(&format!(
            "moving the release pointer of {} to {}",
            p.name, p.version
        ));
        let w = point_release(client, session, p.name, &bundle.uri, &bundle.cid)
            .await
            .with_context(|| {
                format!(
                    "version {} was published ({}), but the release pointer could not be moved to it; \
                     run `at-run rollback {} {}` to move it",
                    p.version, bundle.uri, p.name, p.version
                )
            })?;
        Some(w)
    };

    Ok(Published {
        did: session.did.clone(),
        handle: session.handle.clone(),
        name: p.name.to_string(),
        version: p.version.to_string(),
        runtime: p.runtime.to_string(),
        bundle: RecordRef {
            uri: bundle.uri,
            cid: bundle.cid,
        },
        blob: BlobInfo {
            cid: blob_cid,
            size,
            mime_type,
        },
        release,
    })
}

/// Writes `dev.atrund.release/{name}` pointing at the given bundle record.
pub async fn point_release(
    client: &Client,
    session: &Session,
    name: &str,
    uri: &str,
    cid: &str,
) -> anyhow::Result<RecordRef> {
    let record = json!({
        "$type": RELEASE_COLLECTION,
        "name": name,
        "bundle": { "uri": uri, "cid": cid },
        "updatedAt": crate::time::now_rfc3339(),
    });
    let w = client
        .put_record(session, RELEASE_COLLECTION, name, &record, false)
        .await
        .context("could not write the release record")?;
    Ok(RecordRef {
        uri: w.uri,
        cid: w.cid,
    })
}

/// Arguments of the `at-run deploy` command.
#[derive(Debug, clap::Args)]
pub struct DeployCmd {
    /// The project folder (built first), or a prebuilt single-file .js bundle or .py file (then
    /// --name, --version and a manifest.json beside it are needed; a .py file also --runtime
    /// python).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Bundle name [default: "name" in at-run.json].
    #[arg(long)]
    pub name: Option<String>,
    /// Version to publish [default: "version" in at-run.json]. Published versions are immutable.
    #[arg(long)]
    pub version: Option<String>,
    /// Manifest file for a prebuilt bundle [default: manifest.json beside it].
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Human description stored in the record (at most 300 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Publish the version without moving the release pointer (`latest`) to it.
    #[arg(long)]
    pub no_release: bool,
    /// Build and check everything, upload nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A runner that must be able to run this version (its URL, or its operator's handle or
    /// DID): checked as `at-run check` checks, and nothing is published if it would refuse.
    #[arg(long, value_name = "URL_OR_OPERATOR")]
    pub runner: Option<String>,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    /// Where an operator named by --runner is resolved.
    #[command(flatten)]
    pub net: crate::runners::NetArgs,
}

/// The whole `at-run deploy` command line: [`DeployCmd`] and `--runtime`.
///
/// `--runtime` sits beside `DeployCmd` instead of in it so that code which builds a `DeployCmd`
/// by hand (the daemon's tests) is unchanged; [`run_cmd`] deploys such a prebuilt file as Deno.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub cmd: DeployCmd,
    /// The runtime of a prebuilt file: deno or node for a .js file [default: deno], python for a
    /// .py file. A project's runtime is "runtime" in its at-run.json.
    #[arg(long, value_name = "RUNTIME", value_parser = clap::builder::PossibleValuesParser::new(atrund_bundle::record::RUNTIMES))]
    pub runtime: Option<String>,
}

/// What `deploy --dry-run` would publish.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub dry_run: bool,
    pub name: String,
    pub version: String,
    pub runtime: String,
    pub code: PathBuf,
    pub bytes: u64,
    pub manifest: Manifest,
}

impl DryRun {
    pub fn render(&self) -> String {
        format!(
            "dry run: would publish {} {} for {} ({} bytes from {}); nothing was uploaded\n",
            self.name,
            self.version,
            self.runtime,
            self.bytes,
            self.code.display()
        )
    }
}

/// Either what was published or, with `--dry-run`, what would have been.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DeployOutcome {
    Published(Published),
    DryRun(DryRun),
}

impl DeployOutcome {
    pub fn render(&self) -> String {
        match self {
            DeployOutcome::Published(p) => p.render(),
            DeployOutcome::DryRun(d) => d.render(),
        }
    }
}

/// `at-run deploy`: build (for a project) + manifest + publish; a prebuilt file is a Deno
/// bundle (see [`run_args`]).
pub async fn run_cmd(
    a: &DeployCmd,
    deno: impl FnOnce() -> anyhow::Result<crate::deno::Deno>,
    progress: impl Fn(&str),
) -> anyhow::Result<DeployOutcome> {
    deploy(a, None, deno, progress).await
}

/// `at-run deploy` as the command line gives it, `--runtime` included.
pub async fn run_args(
    a: &DeployArgs,
    deno: impl FnOnce() -> anyhow::Result<crate::deno::Deno>,
    progress: impl Fn(&str),
) -> anyhow::Result<DeployOutcome> {
    deploy(&a.cmd, a.runtime.as_deref(), deno, progress).await
}

async fn deploy(
    a: &DeployCmd,
    runtime_flag: Option<&str>,
    deno: impl FnOnce() -> anyhow::Result<crate::deno::Deno>,
    progress: impl Fn(&str),
) -> anyhow::Result<DeployOutcome> {
    // The Deno the code was built with, for the runner check (`None`: a prebuilt file).
    let mut built_with: Option<String> = None;
    // Warnings of the Python check of a prebuilt .py file.
    let mut checked: Vec<String> = Vec::new();
    let (code_path, manifest, name, version, description, runtime) = if a.path.is_file() {
        let by_name = runtime_of_file(&a.path);
        let runtime = match (runtime_flag, by_name) {
            (None, Some("python")) => bail!(
                "{} is Python (source or a packed zip): pass --runtime python to publish it for the Python runtime",
                a.path.display()
            ),
            (Some(r), _) => r,
            (None, _) => crate::project::DEFAULT_RUNTIME,
        }
        .to_string();
        crate::project::validate_runtime(&runtime).context("--runtime")?;
        match (runtime.as_str(), by_name) {
            ("python", Some("javascript")) => bail!(
                "--runtime python takes one Python source file (.py) or a zip packed by `at-run build`, and {} is JavaScript; pass --runtime deno or node for it",
                a.path.display()
            ),
            ("deno" | "node", Some("python")) => bail!(
                "{} is Python source, not a {runtime} bundle: pass --runtime python",
                a.path.display()
            ),
            _ => {}
        }
        let name = a
            .name
            .clone()
            .context("--name is needed when deploying a prebuilt file")?;
        let version = a
            .version
            .clone()
            .context("--version is needed when deploying a prebuilt file")?;
        let mpath = a
            .manifest
            .clone()
            .unwrap_or_else(|| default_manifest_path(&a.path));
        let text = std::fs::read_to_string(&mpath).with_context(|| {
            format!(
                "could not read the manifest {}; create manifest.json beside the bundle or pass --manifest",
                mpath.display()
            )
        })?;
        let m = crate::build::parse_manifest(&text, &mpath.display().to_string())?;
        if runtime == "python" {
            let code = std::fs::read(&a.path)
                .with_context(|| format!("could not read the bundle file {}", a.path.display()))?;
            check_code(&code, &a.path.display().to_string(), &runtime)?;
            // A packed zip was checked when it was built; the runner checks its main.py.
            if !crate::pypack::is_zip(&code) {
                checked =
                    crate::build::check_python(&a.path, &a.path.display().to_string(), &m, None)?;
            }
        }
        (
            a.path.clone(),
            m,
            name,
            version,
            a.description.clone(),
            runtime,
        )
    } else {
        for (file, hint) in [
            ("main.js", "and --runtime node for a Node bundle"),
            ("main.py", "and --runtime python"),
            (crate::pypack::ZIP_NAME, "and --runtime python"),
        ] {
            let prebuilt = a.path.join(file);
            if !a.path.join(crate::project::PROJECT_FILE).exists() && prebuilt.is_file() {
                bail!(
                    "{} holds no {} but a {file}: to publish that prebuilt bundle, pass the file: `at-run deploy {} --name NAME --version VERSION` ({hint})",
                    a.path.display(),
                    crate::project::PROJECT_FILE,
                    prebuilt.display()
                );
            }
        }
        let project = crate::project::Project::load(&a.path)?;
        if let Some(flag) = runtime_flag.filter(|r| *r != project.file.runtime) {
            bail!(
                "--runtime {flag} is for a prebuilt .js or .py file; this project's runtime is \"{}\": change \"runtime\" in its {} instead",
                project.file.runtime,
                crate::project::PROJECT_FILE
            );
        }
        progress("building");
        let (built, used) = crate::build::build_project(deno, &project, &Default::default())?;
        // Python builds without Deno: "" for the runner check, which compares no Deno then.
        built_with = Some(used.map(|d| d.version).unwrap_or_default());
        for w in &built.warnings {
            progress(&format!("warning: {w}"));
        }
        progress(&format!(
            "built {} bytes in {} ms",
            built.bytes, built.millis
        ));
        (
            built.code,
            built.manifest,
            a.name.clone().unwrap_or(project.file.name),
            a.version.clone().unwrap_or(project.file.version),
            a.description.clone().or(project.file.description),
            project.file.runtime,
        )
    };
    validate_name(&name).context("bundle name")?;
    parse_version(&version).context("version")?;
    if let Some(d) = &description {
        if d.len() > MAX_DESCRIPTION_BYTES || d.chars().count() > MAX_DESCRIPTION_CHARS {
            bail!("the description is too long: use at most {MAX_DESCRIPTION_CHARS} characters");
        }
    }
    let code = std::fs::read(&code_path)
        .with_context(|| format!("could not read the bundle file {}", code_path.display()))?;
    check_code(&code, &code_path.display().to_string(), &runtime)?;
    for w in &checked {
        progress(&format!("warning: {w}"));
    }
    // A project's build already warned; a prebuilt file is looked at here.
    if built_with.is_none() {
        if let Some(w) = crate::build::runtime_warning(&runtime, &String::from_utf8_lossy(&code)) {
            progress(&format!("warning: {w}"));
        }
    }
    if a.dry_run {
        return Ok(DeployOutcome::DryRun(DryRun {
            dry_run: true,
            name,
            version,
            runtime,
            code: code_path,
            bytes: code.len() as u64,
            manifest,
        }));
    }
    progress("logging in");
    let (client, session) = crate::auth::session(&a.auth).await?;
    if let Some(runner) = &a.runner {
        progress("checking the runner");
        let named = crate::runners::named(runner, &a.net).await?;
        let (url, desc) = (&named.url, named.describe().await?);
        let graph = crate::runners::graph_standing(&desc, &session.did, &a.net).await?;
        // A prebuilt file's Deno is unknown: its runtime line is taken as the runner's own.
        let deno = built_with.unwrap_or_else(|| {
            desc.runtimes
                .iter()
                .find(|r| r.name == "deno")
                .and_then(|r| r.version_number())
                .unwrap_or_default()
                .to_string()
        });
        let report = crate::runner::compare(
            url,
            &desc,
            &manifest,
            code.len() as u64,
            crate::runner::BundleRuntime {
                name: &runtime,
                built_with: &deno,
            },
            Some((&session.did, &session.handle)),
            graph.as_ref(),
        );
        if !report.compatible {
            progress(&report.render());
            let failed = report.checks.iter().filter(|c| !c.ok).count();
            return Err(crate::error::Failure::Incompatible(failed).into());
        }
    }
    let published = publish(
        &client,
        &session,
        Publish {
            code,
            manifest: &manifest,
            name: &name,
            version: &version,
            runtime: &runtime,
            description: description.as_deref(),
            no_release: a.no_release,
        },
        progress,
    )
    .await?;
    Ok(DeployOutcome::Published(published))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(dir: &Path) -> DeployCmd {
        DeployCmd {
            path: dir.join("main.js"),
            name: Some("hello".into()),
            version: Some("1.0.0".into()),
            manifest: None,
            description: None,
            no_release: false,
            dry_run: true,
            runner: None,
            auth: crate::auth::AuthArgs::default(),
            net: Default::default(),
        }
    }

    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("main.js"), "export function greet() {}\n").expect("write");
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"endpoints":[{"name":"greet"}]}"#,
        )
        .expect("write");
        dir
    }

    fn no_deno() -> anyhow::Result<crate::deno::Deno> {
        anyhow::bail!("a prebuilt file needs no Deno")
    }

    async fn outcome(a: &DeployCmd) -> anyhow::Result<DeployOutcome> {
        run_cmd(a, no_deno, |_| {}).await
    }

    async fn err(a: &DeployCmd) -> String {
        format!("{:#}", outcome(a).await.expect_err("should fail"))
    }

    #[tokio::test]
    async fn a_good_prebuilt_bundle_passes_the_local_checks() {
        let dir = bundle_dir();
        match outcome(&cmd(dir.path())).await.expect("valid") {
            DeployOutcome::DryRun(d) => {
                assert_eq!(d.manifest.endpoints.len(), 1);
                assert_eq!((d.name.as_str(), d.version.as_str()), ("hello", "1.0.0"));
                assert_eq!(d.runtime, "deno");
            }
            other => panic!("not a dry run: {other:?}"),
        }
    }

    async fn dry_runtime(a: DeployCmd, runtime: Option<&str>) -> anyhow::Result<String> {
        let args = DeployArgs {
            cmd: a,
            runtime: runtime.map(String::from),
        };
        match run_args(&args, no_deno, |_| {}).await? {
            DeployOutcome::DryRun(d) => Ok(d.runtime),
            other => panic!("not a dry run: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_prebuilt_file_takes_its_runtime_from_the_flag() {
        let dir = bundle_dir();
        let deno = dry_runtime(cmd(dir.path()), None).await.expect("deno");
        assert_eq!(deno, "deno");
        let node = dry_runtime(cmd(dir.path()), Some("node")).await;
        assert_eq!(node.expect("node"), "node");
        let e = format!(
            "{:#}",
            dry_runtime(cmd(dir.path()), Some("bun"))
                .await
                .expect_err("unknown runtime")
        );
        assert!(
            e.contains("--runtime") && e.contains("use one of: deno, node, python"),
            "{e}"
        );
    }

    fn python_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("main.py"),
            "greet = {\"method\": \"GET\", \"handler\": lambda i, ctx: \"hi\"}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"endpoints":[{"name":"greet","method":"GET"}]}"#,
        )
        .expect("write");
        dir
    }

    #[tokio::test]
    async fn a_prebuilt_python_file_needs_runtime_python() {
        let dir = python_dir();
        let mut a = cmd(dir.path());
        a.path = dir.path().join("main.py");
        let py = dry_runtime(a, Some("python")).await.expect("python");
        assert_eq!(py, "python");

        let mut a = cmd(dir.path());
        a.path = dir.path().join("main.py");
        let e = format!("{:#}", dry_runtime(a, None).await.expect_err("no flag"));
        assert!(
            e.contains("is Python (source or a packed zip)") && e.contains("pass --runtime python"),
            "{e}"
        );
        let mut a = cmd(dir.path());
        a.path = dir.path().join("main.py");
        let e = format!(
            "{:#}",
            dry_runtime(a, Some("node")).await.expect_err("node")
        );
        assert!(
            e.contains("not a node bundle: pass --runtime python"),
            "{e}"
        );

        // JavaScript is not Python.
        let js = bundle_dir();
        let e = format!(
            "{:#}",
            dry_runtime(cmd(js.path()), Some("python"))
                .await
                .expect_err("js as python")
        );
        assert!(e.contains("takes one Python source file (.py)"), "{e}");

        // A folder with a main.py and no at-run.json: told to pass the file.
        let mut a = cmd(dir.path());
        a.path = dir.path().to_path_buf();
        let e = format!("{:#}", dry_runtime(a, None).await.expect_err("folder"));
        assert!(
            e.contains("holds no at-run.json but a main.py") && e.contains("--runtime python"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_python_project_deploys_without_deno() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("pyapp");
        crate::project::init(&app, None, "python").expect("init");
        let mut a = cmd(&app);
        a.path = app.clone();
        a.name = None;
        a.version = None;
        // `no_deno` fails if called: a Python project never needs Deno.
        match run_args(
            &DeployArgs {
                cmd: a,
                runtime: None,
            },
            no_deno,
            |_| {},
        )
        .await
        .expect("dry run")
        {
            DeployOutcome::DryRun(d) => {
                assert_eq!((d.name.as_str(), d.runtime.as_str()), ("pyapp", "python"));
                assert_eq!(d.code, app.join("dist").join("main.py"));
                assert_eq!(d.manifest.endpoints.len(), 2);
            }
            other => panic!("not a dry run: {other:?}"),
        }
    }

    #[test]
    fn code_is_uploaded_with_its_runtime_type() {
        assert_eq!(code_mime("deno", b"export {}"), "application/javascript");
        assert_eq!(code_mime("node", b"export {}"), "application/javascript");
        assert_eq!(code_mime("python", b"import json"), "text/x-python");
        assert_eq!(code_mime("python", b"PK\x03\x04..."), "application/zip");
        // A zip is no JavaScript bundle: the record check at the runner refuses it as such.
        assert_eq!(
            code_mime("deno", b"PK\x03\x04..."),
            "application/javascript"
        );
        for runtime in atrund_bundle::record::RUNTIMES {
            assert!(code_types(runtime).contains(&code_mime(runtime, b"x")));
        }
        let e = format!(
            "{:#}",
            check_code(&[0xff, 0xfe], "main.py", "python").expect_err("binary")
        );
        assert!(e.contains("UTF-8 Python source file"), "{e}");
    }

    #[tokio::test]
    async fn a_project_runtime_comes_from_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(crate::project::PROJECT_FILE),
            r#"{"name":"app","version":"1.0.0","runtime":"node"}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("main.ts"), "export {};\n").expect("write");
        let mut a = cmd(dir.path());
        a.path = dir.path().to_path_buf();
        // The flag is for prebuilt files: a project that disagrees is refused before building.
        let e = format!(
            "{:#}",
            dry_runtime(a, Some("deno")).await.expect_err("disagrees")
        );
        assert!(
            e.contains("--runtime deno is for a prebuilt .js or .py file")
                && e.contains("change \"runtime\" in its at-run.json"),
            "{e}"
        );

        // A folder with a built main.js but no at-run.json: told to pass the file.
        let built = bundle_dir();
        let mut a = cmd(built.path());
        a.path = built.path().to_path_buf();
        let e = format!(
            "{:#}",
            dry_runtime(a, Some("node")).await.expect_err("folder")
        );
        assert!(
            e.contains("holds no at-run.json but a main.js") && e.contains("--runtime node"),
            "{e}"
        );
    }

    #[test]
    fn the_record_names_the_runtime() {
        let manifest: Manifest =
            serde_json::from_str(r#"{"endpoints":[{"name":"greet"}]}"#).expect("manifest");
        let blob = json!({"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": code_mime("deno", b"x"), "size": 10});
        for runtime in atrund_bundle::record::RUNTIMES {
            let p = Publish {
                code: Vec::new(),
                manifest: &manifest,
                name: "hello",
                version: "1.0.0",
                runtime,
                description: Some("hi"),
                no_release: false,
            };
            let record = bundle_record(&p, &blob).expect("record");
            assert_eq!(record["runtime"], runtime);
            assert_eq!(record["$type"], BUNDLE_COLLECTION);
            assert_eq!(record["description"], "hi");
            assert_eq!(record["code"], blob);
            let back: Manifest =
                serde_json::from_value(record["manifest"].clone()).expect("manifest");
            assert_eq!(back, manifest);
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_with_clear_messages_before_the_network() {
        let dir = bundle_dir();
        let mut a = cmd(dir.path());
        a.name = Some("Bad_Name".into());
        assert!(err(&a).await.contains("bundle name 'Bad_Name' is invalid"));

        let mut a = cmd(dir.path());
        a.version = Some("1.0".into());
        assert!(err(&a).await.contains("version '1.0' is invalid"));

        let mut a = cmd(dir.path());
        a.name = None;
        assert!(err(&a).await.contains("--name is needed"));

        let mut a = cmd(dir.path());
        a.manifest = Some(dir.path().join("nope.json"));
        assert!(err(&a).await.contains("--manifest"));

        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"permissions":{"gpu":true}}"#,
        )
        .expect("write");
        let mut a = cmd(dir.path());
        a.manifest = Some(dir.path().join("bad.json"));
        assert!(err(&a).await.contains("unknown field"), "{}", err(&a).await);

        std::fs::write(
            dir.path().join("bad2.json"),
            r#"{"endpoints":[{"name":"a-b"}]}"#,
        )
        .expect("write");
        a.manifest = Some(dir.path().join("bad2.json"));
        assert!(err(&a).await.contains("JavaScript identifier"));

        std::fs::write(dir.path().join("empty.js"), "").expect("write");
        let mut a = cmd(dir.path());
        a.path = dir.path().join("empty.js");
        assert!(err(&a).await.contains("empty"));

        std::fs::write(dir.path().join("bin.js"), [0xff, 0xfe, 0x00]).expect("write");
        a.path = dir.path().join("bin.js");
        assert!(err(&a).await.contains("UTF-8"));

        let mut a = cmd(dir.path());
        a.description = Some("x".repeat(301));
        assert!(err(&a).await.contains("description is too long"));
    }
}
