//! `at-run build`: one ESM file from a multi-file project (`deno bundle`, which inlines local
//! modules and the vendored `@at-run/runtime`), and the manifest, learned by evaluating the
//! built file in a Deno process with no permissions and validated with `atrund_bundle::Manifest`.
//!
//! One build path for every runtime: a Node project (`"runtime": "node"`) is bundled and
//! evaluated by Deno exactly like a Deno one. `deno bundle` leaves `node:` imports as imports
//! and inlines the rest into one ES module, which Node loads as it is as long as the code uses no
//! `Deno.*` (the build warns when it does); the evaluation only imports the module, and Deno
//! provides the `node:` built-ins and the `process` global it may touch at its top level.
//!
//! Owns: the output folder (`dist/` by default: `main.js` + `manifest.json`, replaced by rename
//! only after both are good, so `at-run dev` never serves a half-built bundle). Must not touch:
//! the project's sources, or the network (beyond Deno fetching esbuild from npm once).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use atrund_bundle::Manifest;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::deno::Deno;
use crate::error::Failure;
use crate::project::Project;

/// Largest code blob the `dev.atrund.bundle` lexicon allows (`code.maxSize`): what a build may
/// produce, what `deploy` uploads and what `check` compares with a runner's own maximum.
pub const MAX_CODE_BYTES: u64 = 50 * 1024 * 1024;

/// Longest the manifest evaluation may take (top-level code of the bundle runs).
const EVAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Marks the evaluator's result line among whatever the bundle's top level prints.
const RESULT_MARKER: &str = "\u{1}at-run-manifest ";

/// Imports the built bundle (a literal import, so it needs no read permission) and prints what
/// it declares. Mirrors the shim: an endpoint is an export with a `handler` function that is not
/// tagged as a task.
const EVALUATOR: &str = r#"import * as mod from "__BUNDLE_URL__";
const MANIFEST_TAG = "dev.atrund.manifest", TASK_TAG = "dev.atrund.task";
const out = { manifest: null, endpoints: [], tasks: [], problems: [] };
for (const [name, value] of Object.entries(mod)) {
  if (typeof value !== "object" || value === null) continue;
  if (value.$type === MANIFEST_TAG) {
    if (out.manifest !== null) out.problems.push(`more than one manifest() export ('${name}')`);
    const { $type, ...rest } = value;
    out.manifest = rest;
    out.manifestExport = name;
  } else if (value.$type === TASK_TAG && typeof value.handler === "function") {
    const t = { name };
    if (value.concurrency !== undefined) t.concurrency = value.concurrency;
    if (value.public === true) t.public = true;
    if (value.timeoutMs !== undefined) t.timeoutMs = value.timeoutMs;
    out.tasks.push(t);
  } else if (typeof value.handler === "function") {
    const e = { name };
    if (value.method !== undefined) e.method = String(value.method).toUpperCase();
    if (value.description !== undefined) e.description = String(value.description);
    let input;
    if (value.input !== undefined) {
      if (typeof value.input.toJSON === "function") input = value.input.toJSON();
      else if (typeof value.input.validate !== "function") {
        out.problems.push(`endpoint '${name}': input has no validate() (use the v helpers)`);
      }
    }
    if (value.example !== undefined) input = { ...(input ?? {}), examples: [value.example] };
    if (input !== undefined) e.input = input;
    out.endpoints.push(e);
  }
}
console.log("__MARKER__" + JSON.stringify(out));
"#;

/// Options of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Output folder (default `dist/` in the project).
    pub out: Option<PathBuf>,
    /// Inline a source map, so stack traces name the source files (used by `at-run dev`).
    pub sourcemap: bool,
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Built {
    pub name: String,
    pub version: String,
    /// The project's runtime (`"runtime"` in at-run.json).
    pub runtime: String,
    pub code: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
    pub millis: u64,
    pub warnings: Vec<String>,
}

impl Built {
    pub fn render(&self) -> String {
        let mut s = format!(
            "built {} {} in {} ms\n  runtime:   {}\n  code:      {} ({} bytes)\n  manifest:  {}\n  endpoints: {}\n",
            self.name,
            self.version,
            self.millis,
            self.runtime,
            self.code.display(),
            self.bytes,
            self.manifest_path.display(),
            if self.manifest.endpoints.is_empty() {
                "(none)".to_string()
            } else {
                self.manifest
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {}", e.method.as_deref().unwrap_or("ANY"), e.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        if !self.manifest.tasks.is_empty() {
            let t: Vec<&str> = self
                .manifest
                .tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            s.push_str(&format!("  tasks:     {}\n", t.join(", ")));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}

/// Builds the project.
pub fn build(deno: &Deno, project: &Project, opts: &BuildOptions) -> anyhow::Result<Built> {
    let start = Instant::now();
    let out = opts.out.clone().unwrap_or_else(|| project.dist());
    let staging = out.join(".staging");
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create the output folder {}", staging.display()))?;
    let staged_code = staging.join("main.js");

    // Bundle: cwd is the project, so its deno.json (the @at-run/runtime mapping) applies.
    let mut cmd = deno.command();
    cmd.current_dir(&project.dir)
        .args(["bundle", "--quiet", "--platform", "deno", "--output"])
        .arg(&staged_code);
    if opts.sourcemap {
        cmd.arg("--sourcemap=inline");
    }
    cmd.arg(project.entry());
    let res = run(cmd, Duration::from_secs(120))
        .with_context(|| format!("could not run {} bundle", deno.path().display()))?;
    if !res.ok {
        return Err(Failure::Build(format!(
            "build failed:\n{}",
            tidy(&res.stderr, &project.dir, &staging)
        ))
        .into());
    }
    if opts.sourcemap {
        absolute_sources(&staged_code, &staging)?;
    }
    let bytes = std::fs::metadata(&staged_code)
        .with_context(|| format!("deno bundle wrote no {}", staged_code.display()))?
        .len();

    let (manifest, mut warnings) = evaluate(deno, project, &staged_code, &staging)?;
    let text = std::fs::read_to_string(&staged_code)
        .with_context(|| format!("cannot read {}", staged_code.display()))?;
    warnings.extend(runtime_warning(&project.file.runtime, &text));
    let manifest_text = serde_json::to_string_pretty(&manifest).context("encode manifest")? + "\n";
    std::fs::write(staging.join("manifest.json"), &manifest_text)
        .with_context(|| format!("cannot write into {}", staging.display()))?;

    let code = out.join("main.js");
    let manifest_path = out.join("manifest.json");
    std::fs::rename(&staged_code, &code)
        .with_context(|| format!("cannot write {}", code.display()))?;
    std::fs::rename(staging.join("manifest.json"), &manifest_path)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(Built {
        name: project.file.name.clone(),
        version: project.file.version.clone(),
        runtime: project.file.runtime.clone(),
        code,
        manifest_path,
        manifest,
        bytes,
        millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        warnings,
    })
}

/// The `Deno.*` names a bundle's code mentions (`Deno.env`, `Deno.readTextFile`, ...), sorted,
/// at most `max`. Comments and strings are not told apart: a hint, not a proof.
fn deno_uses(code: &str, max: usize) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut found = std::collections::BTreeSet::new();
    for (at, _) in code.match_indices("Deno.") {
        // `Deno` must be a whole name: not `myDeno.x` nor `a.Deno.x` (globalThis.Deno is one).
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| ident(c) || c == '.') && !code[..at].ends_with("globalThis.") {
            continue;
        }
        let rest = &code[at + "Deno.".len()..];
        let member: String = rest.chars().take_while(|c| ident(*c)).collect();
        if !member.is_empty() {
            found.insert(format!("Deno.{member}"));
        }
    }
    found.into_iter().take(max).collect()
}

/// A warning for code that names an API its runtime lacks: `Deno.*` in a Node bundle.
pub fn runtime_warning(runtime: &str, code: &str) -> Option<String> {
    if runtime != "node" {
        return None;
    }
    let uses = deno_uses(code, 3);
    (!uses.is_empty()).then(|| {
        format!(
            "the runtime is node, but the code uses {}: Node has no Deno global, so that fails on a runner; use node: built-ins (node:fs, node:process, ...) or web APIs instead",
            uses.join(", ")
        )
    })
}

/// Runs the built file with no permissions and turns what it exports into a validated manifest.
fn evaluate(
    deno: &Deno,
    project: &Project,
    code: &Path,
    staging: &Path,
) -> anyhow::Result<(Manifest, Vec<String>)> {
    let url = file_url(code);
    let eval_dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let evaluator = eval_dir.path().join("evaluate.mjs");
    let script = EVALUATOR
        .replace("__BUNDLE_URL__", &url)
        .replace("__MARKER__", &RESULT_MARKER.replace('\u{1}', "\\u0001"));
    std::fs::write(&evaluator, script).context("cannot write the evaluator")?;
    let mut cmd = deno.command();
    cmd.current_dir(eval_dir.path())
        .args([
            "run",
            "--quiet",
            "--no-prompt",
            "--no-remote",
            "--no-npm",
            "--no-config",
            "--no-lock",
            "--v8-flags=--max-old-space-size=512",
        ])
        .arg(&evaluator);
    let res = run(cmd, EVAL_TIMEOUT).context("could not run Deno to read the manifest")?;
    if !res.ok {
        return Err(Failure::Build(format!(
            "the bundle failed while loading (its top-level code runs with no permissions at build time; move file, network and env access into handlers):\n{}",
            tidy(&res.stderr, &project.dir, staging)
        ))
        .into());
    }
    let line = res
        .stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(RESULT_MARKER))
        .ok_or_else(|| Failure::Build("the manifest evaluator printed no result".into()))?;
    let found: Value = serde_json::from_str(line).context("evaluator output is not JSON")?;
    let problems: Vec<String> = found["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !problems.is_empty() {
        return Err(Failure::Build(format!(
            "the bundle's declarations are invalid: {}",
            problems.join("; ")
        ))
        .into());
    }
    let mut warnings = Vec::new();
    let mut manifest = match &found["manifest"] {
        Value::Object(m) => m.clone(),
        _ => {
            warnings.push(
                "no manifest() export: the bundle asks for no permissions and default limits"
                    .to_string(),
            );
            Map::new()
        }
    };
    for key in ["endpoints", "tasks"] {
        if manifest.contains_key(key) {
            return Err(Failure::Build(format!(
                "manifest() must not list `{key}`: they come from the module's exports (endpoint() and task())"
            ))
            .into());
        }
    }
    manifest.insert("endpoints".into(), found["endpoints"].clone());
    if found["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
        manifest.insert("tasks".into(), found["tasks"].clone());
    }
    let text = Value::Object(manifest).to_string();
    let manifest = parse_manifest(&text, "declared by the bundle")
        .map_err(|e| Failure::Build(format!("{e:#}")))?;
    if manifest.endpoints.is_empty() {
        warnings.push("the bundle exports no endpoints: export endpoint({...}) objects".into());
    }
    Ok((manifest, warnings))
}

/// Rewrites the inline source map's `sources` (relative to the staging folder, which the file
/// leaves) into absolute `file://` URLs, so stack traces name the real source files.
fn absolute_sources(code: &Path, staging: &Path) -> anyhow::Result<()> {
    use base64::Engine;
    const PREFIX: &str = "//# sourceMappingURL=data:application/json;base64,";
    let text = std::fs::read_to_string(code).context("read the bundle")?;
    let Some(at) = text.rfind(PREFIX) else {
        return Ok(());
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let encoded = text[at + PREFIX.len()..].trim();
    let Ok(raw) = b64.decode(encoded) else {
        return Ok(());
    };
    let Ok(mut map) = serde_json::from_slice::<Value>(&raw) else {
        return Ok(());
    };
    if let Some(sources) = map.get_mut("sources").and_then(Value::as_array_mut) {
        for s in sources.iter_mut() {
            if let Some(rel) = s.as_str().filter(|r| !r.contains("://")) {
                *s = Value::String(file_url(&normalize(&staging.join(rel))));
            }
        }
    }
    let new = format!("{}{PREFIX}{}\n", &text[..at], b64.encode(map.to_string()));
    std::fs::write(code, new).context("write the bundle")?;
    Ok(())
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `file://` URL of an absolute path, percent-encoding what a URL path cannot hold.
fn file_url(p: &Path) -> String {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut s = String::from("file://");
    for b in abs.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Deno's error text with project paths made relative (`lib/util.ts:2:18`), so errors read as
/// file:line.
fn tidy(stderr: &str, project: &Path, staging: &Path) -> String {
    let proj = format!("{}/", file_url(project));
    let staged = format!("{}/", file_url(staging));
    stderr
        .lines()
        .filter(|l| {
            !l.trim().is_empty() && !l.starts_with("Stack backtrace") && l.trim() != "0: <unknown>"
        })
        .map(|l| {
            l.replace(&staged, "dist/")
                .replace(&proj, "")
                .replace(&format!("{}/", project.display()), "")
        })
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct RunResult {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion with a deadline (killed after it).
fn run(mut cmd: Command, timeout: Duration) -> std::io::Result<RunResult> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let mut stderr = err_t.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!(
            "\ntimed out after {} s (does the top-level code wait for something?)",
            timeout.as_secs()
        ));
    }
    Ok(RunResult {
        ok: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    })
}

/// Parses and validates a manifest's text; `origin` names it in errors.
pub fn parse_manifest(text: &str, origin: &str) -> anyhow::Result<Manifest> {
    // serde's derived structs also accept a JSON array; a manifest is an object, nothing else.
    if !text.trim_start().starts_with('{') {
        anyhow::bail!("manifest {origin} must be a JSON object, e.g. {{\"endpoints\":[{{\"name\":\"hello\"}}]}}");
    }
    let manifest: Manifest = serde_json::from_str(text).with_context(|| {
        format!("manifest {origin} is not a valid at-rund manifest (unknown fields are refused)")
    })?;
    manifest
        .validate()
        .with_context(|| format!("manifest {origin} was rejected"))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_escape() {
        assert_eq!(file_url(Path::new("/a b/c.js")), "file:///a%20b/c.js");
    }

    #[test]
    fn tidy_makes_paths_relative() {
        let t = tidy(
            "error: SyntaxError: x\n    at file:///p/lib/u.ts:2:18\nStack backtrace:\n   0: <unknown>\n",
            Path::new("/p"),
            Path::new("/p/dist/.staging"),
        );
        assert!(t.contains("at lib/u.ts:2:18"), "{t}");
        assert!(!t.contains("backtrace"), "{t}");
    }

    #[test]
    fn deno_apis_in_node_code_are_named() {
        let code = "Deno.env.get('A'); await Deno.readTextFile(p); myDeno.x; a.Deno.y;\n\
                    globalThis.Deno.exit(1); Deno.env.toObject(); const Deno_ = 1; Deno.";
        assert_eq!(
            deno_uses(code, 10),
            ["Deno.env", "Deno.exit", "Deno.readTextFile"]
        );
        assert_eq!(deno_uses(code, 1), ["Deno.env"]);
        let w = runtime_warning("node", code).expect("a warning");
        assert!(
            w.contains("Deno.env, Deno.exit, Deno.readTextFile") && w.contains("node:"),
            "{w}"
        );
        assert_eq!(runtime_warning("deno", code), None);
        assert_eq!(
            runtime_warning("node", "import { env } from 'node:process';"),
            None
        );
    }

    /// `at-run init --runtime node`, built by the one (Deno) build path, then loaded by the
    /// pinned Node: the template works there as it is.
    #[test]
    fn a_node_project_builds_with_deno_and_runs_on_node() {
        let (Some(deno), Some(node)) = (atrund_testnet::deno_path(), atrund_testnet::node_path())
        else {
            return;
        };
        let deno = Deno::locate(Some(&deno)).expect("Deno runs");
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("node-app");
        crate::project::init(&app, None, "node").expect("init --runtime node");
        let project = Project::load(&app).expect("loads");
        let built = build(&deno, &project, &BuildOptions::default()).expect("builds");
        assert_eq!(built.runtime, "node");
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        assert!(
            built.render().contains("runtime:   node"),
            "{}",
            built.render()
        );
        let names: Vec<&str> = built
            .manifest
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["echo", "hello"]);

        let url = serde_json::to_string(&file_url(&built.code)).expect("JSON string");
        let script = format!(
            "const m = await import({url});\n\
             console.log(JSON.stringify([typeof globalThis.Deno, m.hello.handler({{ name: 'Ada' }})]));"
        );
        let out = std::process::Command::new(&node)
            .args(["--input-type=module", "--eval", &script])
            .output()
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), r#"["undefined",{"message":"Hello, Ada!"}]"#);

        // Node code that reaches for Deno still builds, with a warning naming the API.
        let main = std::fs::read_to_string(app.join("main.ts")).expect("main.ts");
        std::fs::write(
            app.join("main.ts"),
            format!("{main}\nexport const home = endpoint({{ handler: () => Deno.env.get(\"HOME\") }});\n"),
        )
        .expect("write");
        let built = build(&deno, &project, &BuildOptions::default()).expect("builds");
        assert!(
            built.warnings.iter().any(|w| w.contains("uses Deno.env")),
            "{:?}",
            built.warnings
        );
    }

    #[test]
    fn manifest_parser_never_panics() {
        for text in [
            "",
            "{",
            "null",
            "[]",
            "{\"endpoints\":5}",
            "\u{0}",
            "{\"limits\":{\"cpuMs\":-1}}",
        ] {
            assert!(parse_manifest(text, "t").is_err(), "{text}");
        }
        assert!(parse_manifest("{}", "t").is_ok());
    }
}
