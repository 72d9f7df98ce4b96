//! An at-run project on disk: `at-run.json` (name, version, entry, runtime), and `at-run init`,
//! which writes a working template: for Deno and Node a TypeScript project with a vendored copy
//! of `@at-run/runtime`; for Python one `main.py` and its `manifest.json`.
//!
//! A Python project keeps its manifest in [`PYTHON_MANIFEST`] beside `at-run.json`, written by
//! hand: there is no evaluation step that could learn it from the code, so `build` validates the
//! file (`atrund_bundle::Manifest`) and checks it against the names `main.py` defines.
//!
//! Owns: reading `at-run.json` and the template files. Must not touch: files outside the project
//! folder; `init` never overwrites a file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use atrund_bundle::record::{parse_version, validate_name, RUNTIMES};
use serde::{Deserialize, Serialize};

/// The project file's name.
pub const PROJECT_FILE: &str = "at-run.json";
/// Where `init` vendors `@at-run/runtime` (mapped by the template's `deno.json`).
pub const RUNTIME_PATH: &str = ".at-run/runtime/mod.ts";
/// `@at-run/runtime`, as built into this at-run.
pub const RUNTIME_SOURCE: &str = include_str!("../../../runtime/lib/mod.ts");

/// `at-run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectFile {
    /// Bundle name (1-64 of a-z, 0-9, '-').
    pub name: String,
    /// Version `deploy` publishes; bump it for each deploy (published versions are immutable).
    pub version: String,
    /// Entry module, relative to the project folder [default: `main.ts`, or `main.py` for
    /// Python: [`default_entry`]].
    #[serde(default)]
    pub entry: String,
    /// The runtime the bundle is for (`atrund_bundle::record::RUNTIMES`): what `deploy` writes
    /// into the record, the runtime `dev` runs it on and the one `check` asks the runner for.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The entry of a project for `runtime` whose `at-run.json` names none.
pub fn default_entry(runtime: &str) -> String {
    match runtime {
        "python" => "main.py".into(),
        _ => "main.ts".into(),
    }
}

/// A Python project's manifest, beside its `at-run.json` (a Deno or Node project's comes from
/// its `manifest()` export instead).
pub const PYTHON_MANIFEST: &str = "manifest.json";

/// The runtime of a project whose `at-run.json` names none, and of a prebuilt file deployed
/// without `--runtime`.
pub const DEFAULT_RUNTIME: &str = "deno";

fn default_runtime() -> String {
    DEFAULT_RUNTIME.into()
}

/// Checks that `runtime` is one a record may name (`atrund_bundle::record::RUNTIMES`).
pub fn validate_runtime(runtime: &str) -> anyhow::Result<()> {
    if RUNTIMES.contains(&runtime) {
        Ok(())
    } else {
        bail!(
            "runtime '{runtime}' is not one at-rund runs; use one of: {}",
            RUNTIMES.join(", ")
        )
    }
}

/// A loaded project.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub file: ProjectFile,
}

impl Project {
    /// Reads `DIR/at-run.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Project> {
        let path = dir.join(PROJECT_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no {PROJECT_FILE} in {}: run `at-run init` to create a project, or pass the project folder",
                dir.display()
            )
        })?;
        let mut file: ProjectFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid (fields: name, version, entry, runtime, description)",
                path.display()
            )
        })?;
        validate_name(&file.name).with_context(|| format!("\"name\" in {}", path.display()))?;
        parse_version(&file.version)
            .with_context(|| format!("\"version\" in {}", path.display()))?;
        validate_runtime(&file.runtime)
            .with_context(|| format!("\"runtime\" in {}", path.display()))?;
        if file.entry.is_empty() {
            file.entry = default_entry(&file.runtime);
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open {}", dir.display()))?;
        let entry = dir.join(&file.entry);
        if !entry.starts_with(&dir) || !entry.is_file() {
            bail!(
                "the entry {} named in {PROJECT_FILE} does not exist inside the project; fix \"entry\"",
                entry.display()
            );
        }
        Ok(Project { dir, file })
    }

    pub fn entry(&self) -> PathBuf {
        self.dir.join(&self.file.entry)
    }

    /// Default build output folder.
    pub fn dist(&self) -> PathBuf {
        self.dir.join("dist")
    }
}

/// The files of a new project named `name` for `runtime` (validated by the caller).
///
/// One template serves both JavaScript runtimes: `@at-run/runtime` (`runtime/lib/mod.ts`) and
/// the template use no `Deno.*` API, so `deno bundle` makes the same ES module for Deno and Node;
/// a Node project's `main.ts` only opens with a note on what Node offers instead. A Python
/// project is `main.py` and its hand-written [`PYTHON_MANIFEST`].
pub fn template(name: &str, runtime: &str) -> Vec<(&'static str, String)> {
    let project = ProjectFile {
        name: name.to_string(),
        version: "0.1.0".into(),
        entry: default_entry(runtime),
        runtime: runtime.to_string(),
        description: None,
    };
    let gitignore = "dist/\n.at-run/dev/\n.at-run/dev-data/\n".to_string();
    if runtime == "python" {
        let project = serde_json::to_string_pretty(&project).unwrap_or_default() + "\n";
        return vec![
            (PROJECT_FILE, project),
            ("main.py", MAIN_PY.to_string()),
            (PYTHON_MANIFEST, MANIFEST_PY.to_string()),
            (".gitignore", gitignore + "__pycache__/\n"),
        ];
    }
    let main = match runtime {
        "node" => format!("{NODE_NOTE}{MAIN_TS}"),
        _ => MAIN_TS.to_string(),
    };
    let project = serde_json::to_string_pretty(&project).unwrap_or_default() + "\n";
    vec![
        (PROJECT_FILE, project),
        (
            "deno.json",
            format!("{{\n  \"imports\": {{ \"@at-run/runtime\": \"./{RUNTIME_PATH}\" }}\n}}\n"),
        ),
        ("main.ts", main),
        ("lib/greeting.ts", GREETING_TS.to_string()),
        (".gitignore", gitignore),
        (RUNTIME_PATH, RUNTIME_SOURCE.to_string()),
    ]
}

/// Opens a Node project's `main.ts`.
const NODE_NOTE: &str = r#"// Runtime: node ("runtime" in at-run.json). Use Node's built-ins through `node:` imports
// (node:crypto, node:buffer, ...) and the web globals (fetch, Request, Response, URL); there is no
// Deno global on Node, so `Deno.*` fails there.
"#;

const MAIN_TS: &str = r#"// Each exported endpoint() is an HTTP endpoint named by its export:
//   GET  /bundle/{you}/{name}/{version}/hello?name=Ada
//   POST /bundle/{you}/{name}/{version}/echo   {"text": "hi"}
import { endpoint, manifest, v } from "@at-run/runtime";
import { greeting } from "./lib/greeting.ts";

// What this bundle asks of the runner: no network, files or commands; 5 s per request.
export const config = manifest({ limits: { timeoutMs: 5000 } });

export const hello = endpoint({
  method: "GET",
  description: "Says hello to ?name=",
  input: v.object({ name: v.optional(v.string({ maxLength: 64, example: "Ada" })) }),
  handler: ({ name }) => ({ message: greeting(name ?? "world") }),
});

export const echo = endpoint({
  method: "POST",
  description: "Echoes {\"text\": ...} with its length",
  input: v.object({ text: v.string({ maxLength: 1000, example: "hi" }) }),
  handler: ({ text }) => ({ text, length: text.length }),
});
"#;

/// A Python project's code: one module, run by the runner's Python shim (`runtime/exec/python.py`).
const MAIN_PY: &str = r#""""Runtime: python ("runtime" in at-run.json). One Python source file, standard library only.

A module attribute with a callable `handler` is an HTTP endpoint named by the attribute:
  GET  /bundle/{you}/{name}/{version}/greet?name=Ada
  POST /bundle/{you}/{name}/{version}/shout   {"text": "hi"}
Each endpoint is also listed in manifest.json (with what the bundle asks of the runner): add an
endpoint here and there. Names starting with _ are private. `atrund` is provided by the runtime.
"""

from atrund import Response, endpoint


def _greeting(name):
    return f"Hello, {name}!"


# A dict with a handler(input, ctx); input is the query (GET) or the JSON body (POST).
greet = {
    "method": "GET",
    "handler": lambda input, ctx: {"message": _greeting(input.get("name", "world"))},
}


@endpoint(method="POST")
def shout(input, ctx):
    text = (input or {}).get("text", "")
    if not isinstance(text, str):
        return Response.json({"error": "InvalidInput", "message": "text must be a string"}, 400)
    return {"text": text.upper(), "length": len(text)}
"#;

/// The manifest of [`MAIN_PY`]: its endpoints (with sample inputs for `at-run test`) and what it
/// asks of the runner: no network, files or commands; 5 s per request.
const MANIFEST_PY: &str = r#"{
  "limits": { "timeoutMs": 5000 },
  "endpoints": [
    {
      "name": "greet",
      "method": "GET",
      "description": "Says hello to ?name=",
      "input": {
        "type": "object",
        "properties": { "name": { "type": "string", "maxLength": 64, "examples": ["Ada"] } }
      }
    },
    {
      "name": "shout",
      "method": "POST",
      "description": "Upper-cases {\"text\": ...}",
      "input": {
        "type": "object",
        "properties": { "text": { "type": "string", "maxLength": 1000, "examples": ["hi"] } },
        "required": ["text"]
      }
    }
  ]
}
"#;

const GREETING_TS: &str = r#"export function greeting(name: string): string {
  return `Hello, ${name}!`;
}
"#;

/// `at-run init`: writes the template for `runtime` into `dir` (created if missing); refuses to
/// overwrite.
pub fn init(
    dir: &Path,
    name: Option<&str>,
    runtime: &str,
) -> anyhow::Result<(String, Vec<PathBuf>)> {
    validate_runtime(runtime).context("choose the runtime with --runtime")?;
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            abs.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("app")
                .to_ascii_lowercase()
        }
    };
    validate_name(&name).context("choose a bundle name with --name")?;
    let files = template(&name, runtime);
    for (rel, _) in &files {
        let p = dir.join(rel);
        if p.exists() {
            bail!(
                "{} already exists; run `at-run init` in an empty folder (nothing was written)",
                p.display()
            );
        }
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        written.push(p);
    }
    Ok((name, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_project_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("my-app");
        let (name, files) = init(&app, None, "deno").expect("init");
        assert_eq!(name, "my-app");
        assert_eq!(files.len(), 6);
        let p = Project::load(&app).expect("loads");
        assert_eq!(p.file.version, "0.1.0");
        assert_eq!(p.file.runtime, "deno");
        assert_eq!(
            std::fs::read_to_string(app.join(RUNTIME_PATH)).expect("runtime"),
            RUNTIME_SOURCE
        );
        let e = init(&app, None, "deno").expect_err("second init");
        assert!(format!("{e:#}").contains("already exists"));
        assert!(init(&dir.path().join("Bad_Name"), None, "deno").is_err());
    }

    #[test]
    fn init_for_node_writes_the_runtime_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("node-app");
        init(&app, None, "node").expect("init --runtime node");
        let text = std::fs::read_to_string(app.join(PROJECT_FILE)).expect("at-run.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["runtime"], "node", "{text}");
        let p = Project::load(&app).expect("loads");
        assert_eq!(p.file.runtime, "node");
        let main = std::fs::read_to_string(app.join("main.ts")).expect("main.ts");
        assert!(main.starts_with("// Runtime: node"), "{main}");
        assert!(main.ends_with(MAIN_TS));
        // The library every template inlines must run on Node: no Deno global in its code.
        assert!(!RUNTIME_SOURCE.contains("Deno."));
        assert!(!MAIN_TS.contains("Deno"));

        let e = format!(
            "{:#}",
            init(&dir.path().join("bun"), None, "bun").expect_err("unknown runtime")
        );
        assert!(
            e.contains("--runtime") && e.contains("deno, node, python"),
            "{e}"
        );
        assert!(!dir.path().join("bun").exists(), "nothing is written");
    }

    #[test]
    fn init_for_python_writes_main_py_and_its_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("py-app");
        let (name, files) = init(&app, None, "python").expect("init --runtime python");
        assert_eq!(name, "py-app");
        let mut rel: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&app).expect("inside").display().to_string())
            .collect();
        rel.sort();
        assert_eq!(
            rel,
            [".gitignore", "at-run.json", "main.py", "manifest.json"]
        );
        let text = std::fs::read_to_string(app.join(PROJECT_FILE)).expect("at-run.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            (v["runtime"].as_str(), v["entry"].as_str()),
            (Some("python"), Some("main.py"))
        );
        let p = Project::load(&app).expect("loads");
        assert_eq!(p.entry(), p.dir.join("main.py"));
        // The manifest is a valid one, listing the two endpoints main.py defines.
        let m = crate::build::parse_manifest(MANIFEST_PY, "template").expect("valid manifest");
        let names: Vec<(&str, Option<&str>)> = m
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.method.as_deref()))
            .collect();
        assert_eq!(names, [("greet", Some("GET")), ("shout", Some("POST"))]);
        assert!(MAIN_PY.contains("\ngreet = {") && MAIN_PY.contains("\ndef shout("));
        assert!(!app.join("deno.json").exists() && !app.join(RUNTIME_PATH).exists());
    }

    #[test]
    fn a_python_project_without_an_entry_uses_main_py() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            r#"{"name":"a","version":"1.0.0","runtime":"python"}"#,
        )
        .expect("write");
        let e = format!("{:#}", Project::load(dir.path()).expect_err("no main.py"));
        assert!(e.contains("main.py"), "{e}");
        std::fs::write(dir.path().join("main.py"), "x = 1\n").expect("write");
        let p = Project::load(dir.path()).expect("loads");
        assert_eq!(p.file.entry, "main.py");
    }

    #[test]
    fn bad_project_files_say_what_to_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = format!("{:#}", Project::load(dir.path()).expect_err("none"));
        assert!(e.contains("at-run init"), "{e}");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            r#"{"name":"a","version":"1"}"#,
        )
        .expect("write");
        let e = format!("{:#}", Project::load(dir.path()).expect_err("bad version"));
        assert!(e.contains("\"version\""), "{e}");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            r#"{"name":"a","version":"1.0.0"}"#,
        )
        .expect("write");
        let e = format!("{:#}", Project::load(dir.path()).expect_err("no entry"));
        assert!(e.contains("entry"), "{e}");

        std::fs::write(dir.path().join("main.ts"), "export {};\n").expect("write");
        let p = Project::load(dir.path()).expect("no runtime: deno");
        assert_eq!(p.file.runtime, DEFAULT_RUNTIME);
        for (runtime, ok) in [
            ("deno", true),
            ("node", true),
            ("python", false), // no main.py: the default entry of python
            ("Node", false),
            ("bun", false),
        ] {
            std::fs::write(
                dir.path().join(PROJECT_FILE),
                format!(r#"{{"name":"a","version":"1.0.0","runtime":"{runtime}"}}"#),
            )
            .expect("write");
            match Project::load(dir.path()) {
                Ok(p) => assert!(ok && p.file.runtime == runtime, "{runtime} loaded"),
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(!ok, "{runtime}: {e}");
                    if runtime == "python" {
                        assert!(e.contains("main.py") && e.contains("\"entry\""), "{e}");
                        continue;
                    }
                    assert!(
                        e.contains("\"runtime\"") && e.contains("use one of: deno, node, python"),
                        "{e}"
                    );
                }
            }
        }
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            r#"{"name":"a","version":"1.0.0","runtime":7}"#,
        )
        .expect("write");
        let e = format!("{:#}", Project::load(dir.path()).expect_err("not a string"));
        assert!(e.contains("runtime"), "{e}");
    }
}
