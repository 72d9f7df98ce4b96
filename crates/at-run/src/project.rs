//! An at-run project on disk: `at-run.json` (name, version, entry, runtime), and `at-run init`,
//! which writes a working template including a vendored copy of `@at-run/runtime`.
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
    /// Entry module, relative to the project folder.
    #[serde(default = "default_entry")]
    pub entry: String,
    /// The runtime the bundle is for (`atrund_bundle::record::RUNTIMES`): what `deploy` writes
    /// into the record, the runtime `dev` runs it on and the one `check` asks the runner for.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_entry() -> String {
    "main.ts".into()
}

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
        let file: ProjectFile = serde_json::from_str(&text).with_context(|| {
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
/// One template serves every runtime: `@at-run/runtime` (`runtime/lib/mod.ts`) and the template
/// use no `Deno.*` API, so `deno bundle` makes the same ES module for Deno and Node; a Node
/// project's `main.ts` only opens with a note on what Node offers instead.
pub fn template(name: &str, runtime: &str) -> Vec<(&'static str, String)> {
    let project = ProjectFile {
        name: name.to_string(),
        version: "0.1.0".into(),
        entry: default_entry(),
        runtime: runtime.to_string(),
        description: None,
    };
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
        (
            ".gitignore",
            "dist/\n.at-run/dev/\n.at-run/dev-data/\n".to_string(),
        ),
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
            init(&dir.path().join("py"), None, "python").expect_err("unknown runtime")
        );
        assert!(e.contains("--runtime") && e.contains("deno, node"), "{e}");
        assert!(!dir.path().join("py").exists(), "nothing is written");
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
                    assert!(
                        e.contains("\"runtime\"") && e.contains("use one of: deno, node"),
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
