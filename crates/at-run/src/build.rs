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
//! A Python project (`"runtime": "python"`) is not bundled: its code is one source file, and
//! its manifest is the hand-written `manifest.json` beside `at-run.json`
//! (`project::PYTHON_MANIFEST`). Its build checks the file (UTF-8, size) and, with a local Python
//! 3.11 or newer (`ATRUN_PYTHON`, else `python3` on PATH; without one the build warns), parses
//! it as Python 3.11 (`ast`, nothing of the bundle runs) and compares the manifest with the
//! names it defines; then copies it to `main.py` beside `manifest.json`. No Deno is needed.
//!
//! Owns: the output folder (`dist/` by default: `main.js` or `main.py`, and `manifest.json`,
//! replaced by rename only after both are good, so `at-run dev` never serves a half-built
//! bundle). Must not touch: the project's sources, or the network (beyond Deno fetching esbuild
//! from npm once).

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::Context;
use atrund_bundle::Manifest;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::child::run;
use crate::deno::Deno;
use crate::error::Failure;
use crate::project::Project;
use crate::pypack;

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
    /// The Python that checks a Python project's source and packs its zip [default:
    /// `ATRUN_PYTHON`, else `python3` on PATH].
    pub python: Option<PathBuf>,
    /// A build for `at-run dev`: a Python project always becomes `bundle.zip` (so the local
    /// runner's entry stays the same whatever files the project gains), and the packages
    /// `requirements.txt` names are installed again only when that file changes.
    pub dev: bool,
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

/// Builds the project, locating Deno (with `find_deno`) only for a JavaScript runtime: a Python
/// project builds without Deno. Returns the Deno it used, if any.
pub fn build_project(
    find_deno: impl FnOnce() -> anyhow::Result<Deno>,
    project: &Project,
    opts: &BuildOptions,
) -> anyhow::Result<(Built, Option<Deno>)> {
    if project.file.runtime == "python" {
        return Ok((build_python(project, opts)?, None));
    }
    let deno = find_deno()?;
    let built = build(&deno, project, opts)?;
    Ok((built, Some(deno)))
}

/// Builds the project (a Python project does not use `deno`: see [`build_project`]).
pub fn build(deno: &Deno, project: &Project, opts: &BuildOptions) -> anyhow::Result<Built> {
    if project.file.runtime == "python" {
        return build_python(project, opts);
    }
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

    let (code, manifest_path) = install_staged(&staging, &out, "main.js")?;
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

/// What the Python check prints (one JSON line) about a source file it parsed: the names its top
/// level binds, whether it binds names in ways the check cannot see, and the modules it imports
/// that neither the runner's Python (`sys.stdlib_module_names`, `atrund` aside) nor the bundle
/// (argv[3]'s `provided`: the project's modules and installed packages) has. The other modules
/// of the bundle (argv[3]'s `modules`, `[path, shown]` pairs) are parsed first, for syntax only.
const PYTHON_CHECK: &str = r#"import ast, json, sys
path, shown, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def parse(path, shown):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    try:
        return ast.parse(src, filename=shown, feature_version=(3, 11))
    except SyntaxError as e:
        where = f"{shown}:{e.lineno or 0}:{e.offset or 0}"
        print(f"{where}: SyntaxError: {e.msg}", file=sys.stderr)
        if e.text:
            print("    " + e.text.rstrip(), file=sys.stderr)
        sys.exit(1)
for other, other_shown in extra["modules"]:
    parse(other, other_shown)
tree = parse(path, shown)
names, dynamic, foreign, local = set(), False, set(), False
def bind(t):
    if isinstance(t, ast.Name):
        names.add(t.id)
    elif isinstance(t, (ast.Tuple, ast.List)):
        for e in t.elts:
            bind(e)
    elif isinstance(t, ast.Starred):
        bind(t.value)
def top(body):
    global dynamic
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Assign):
            for t in n.targets:
                bind(t)
        elif isinstance(n, (ast.AnnAssign, ast.AugAssign)):
            bind(n.target)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                if a.name == "*":
                    dynamic = True
                else:
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(n, (ast.For, ast.AsyncFor)):
            bind(n.target)
            top(n.body)
            top(n.orelse)
        elif isinstance(n, (ast.With, ast.AsyncWith)):
            for i in n.items:
                if i.optional_vars is not None:
                    bind(i.optional_vars)
            top(n.body)
        elif isinstance(n, (ast.If, ast.While)):
            top(n.body)
            top(n.orelse)
        elif isinstance(n, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            top(n.body)
            top(n.orelse)
            top(n.finalbody)
            for h in n.handlers:
                top(h.body)
        elif isinstance(n, ast.Match):
            dynamic = True
for n in ast.walk(tree):
    if isinstance(n, ast.NamedExpr):
        bind(n.target)
    elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("globals", "setattr", "exec"):
        dynamic = True
    elif isinstance(n, ast.Import):
        foreign.update(a.name.split(".")[0] for a in n.names)
    elif isinstance(n, ast.ImportFrom):
        if n.level:
            local = True
        elif n.module:
            foreign.add(n.module.split(".")[0])
top(tree.body)
std = set(sys.stdlib_module_names) | {"atrund", "__future__"} | set(extra["provided"])
print(json.dumps({"names": sorted(names), "dynamic": dynamic, "relative": local,
                  "imports": sorted(foreign - std)}))
"#;

/// Longest the Python check may take (it only parses).
const PYTHON_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds a Python project: checks its entry and the hand-written manifest, then copies the
/// entry to `main.py`, or, for a project with more modules or a `requirements.txt` (and always
/// for `at-run dev`), packs them into `bundle.zip` (`pypack`); the manifest goes beside it.
fn build_python(project: &Project, opts: &BuildOptions) -> anyhow::Result<Built> {
    let start = Instant::now();
    let entry = project.entry();
    let shown = project.file.entry.clone();
    let code = std::fs::read(&entry).with_context(|| format!("cannot read {}", entry.display()))?;
    check_source(&code, &shown, "python").map_err(|e| Failure::Build(format!("{e:#}")))?;
    let manifest_src = project.dir.join(crate::project::PYTHON_MANIFEST);
    let manifest_text = std::fs::read_to_string(&manifest_src).map_err(|e| {
        Failure::Build(format!(
            "cannot read {} ({e}): a Python project keeps its manifest (its endpoints, tasks, \
             permissions and limits) in {} beside {}; `at-run init --runtime python` writes one",
            manifest_src.display(),
            crate::project::PYTHON_MANIFEST,
            crate::project::PROJECT_FILE
        ))
    })?;
    let manifest = parse_manifest(&manifest_text, crate::project::PYTHON_MANIFEST)
        .map_err(|e| Failure::Build(format!("{e:#}")))?;

    let parts = pypack::Parts::of(project)?;
    let packaged = parts.packaged() || opts.dev;
    let out = opts.out.clone().unwrap_or_else(|| project.dist());
    let staging = out.join(".staging");
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create the output folder {}", staging.display()))?;
    // A zip needs a local Python (pip, zipfile); a single file is checked with one if there is.
    let python = if packaged {
        Some(
            crate::python::Python::locate(opts.python.as_deref()).map_err(|e| {
                Failure::PythonMissing(format!(
                    "{e} (this project has {}: packing its bundle.zip needs a local Python)",
                    if parts.requirements.is_some() {
                        pypack::REQUIREMENTS.to_string()
                    } else {
                        format!("modules besides {shown}")
                    }
                ))
            })?,
        )
    } else {
        None
    };
    let site = match (&python, &parts.requirements) {
        (Some(py), Some(req)) => {
            let cache = project.dir.join(".at-run").join("python-packages");
            Some(pypack::install(
                py,
                project,
                req,
                &staging.join("site"),
                opts.dev.then_some(cache.as_path()),
            )?)
        }
        _ => None,
    };
    let mut provided: Vec<String> = parts
        .modules
        .iter()
        .filter_map(|m| m.components().next())
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".py")
                .to_string()
        })
        .collect();
    if let Some(site) = &site {
        provided.extend(pypack::importable_names(site)?);
    }
    let extra = PythonExtras {
        provided,
        modules: parts
            .modules
            .iter()
            .map(|m| (project.dir.join(m), m.display().to_string()))
            .collect(),
    };
    let warnings = match &python {
        Some(py) => check_python_with(py, &entry, &shown, &manifest, &extra)?,
        None => check_python(&entry, &shown, &manifest, opts.python.as_deref())?,
    };

    let manifest_json = serde_json::to_string_pretty(&manifest).context("encode manifest")? + "\n";
    std::fs::write(staging.join("manifest.json"), &manifest_json)
        .with_context(|| format!("cannot write into {}", staging.display()))?;
    let (code_name, bytes) = match &python {
        Some(py) if packaged => {
            let files = pypack::contents(project, &parts, site.as_deref())?;
            let bytes = pypack::write_zip(py, &files, &staging.join(pypack::ZIP_NAME), &staging)?;
            if bytes > MAX_CODE_BYTES {
                return Err(Failure::Build(format!(
                    "the bundle's zip is {bytes} bytes; bundles may be at most {MAX_CODE_BYTES} \
                     bytes (50 MiB): drop packages from {}",
                    pypack::REQUIREMENTS
                ))
                .into());
            }
            (pypack::ZIP_NAME, bytes)
        }
        _ => {
            std::fs::write(staging.join("main.py"), &code)
                .with_context(|| format!("cannot write into {}", staging.display()))?;
            ("main.py", code.len() as u64)
        }
    };
    // Another build's code left behind (the runtime or the project's shape changed) would be
    // served or deployed instead.
    for stale in ["main.js", "main.py", pypack::ZIP_NAME] {
        if stale != code_name {
            let _ = std::fs::remove_file(out.join(stale));
        }
    }
    let (code_path, manifest_path) = install_staged(&staging, &out, code_name)?;
    Ok(Built {
        name: project.file.name.clone(),
        version: project.file.version.clone(),
        runtime: project.file.runtime.clone(),
        code: code_path,
        manifest_path,
        manifest,
        bytes,
        millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        warnings,
    })
}

/// Checks code a bundle could be made of for `runtime`: not empty, at most [`MAX_CODE_BYTES`],
/// UTF-8. `origin` names it in errors.
pub fn check_source(code: &[u8], origin: &str, runtime: &str) -> anyhow::Result<()> {
    if code.len() as u64 > MAX_CODE_BYTES {
        anyhow::bail!(
            "{origin} is {} bytes; bundles may be at most {MAX_CODE_BYTES} bytes (50 MiB)",
            code.len()
        );
    }
    if code.is_empty() {
        anyhow::bail!("{origin} is empty; build the bundle first");
    }
    if runtime == "python" && pypack::is_zip(code) {
        return Ok(());
    }
    if std::str::from_utf8(code).is_err() {
        match runtime {
            "python" => anyhow::bail!(
                "{origin} is not UTF-8 text; a Python bundle is a single UTF-8 Python source file, or the zip `at-run build` packs"
            ),
            _ => anyhow::bail!(
                "{origin} is not UTF-8 text; a bundle is a single JavaScript (ESM) file"
            ),
        }
    }
    Ok(())
}

/// Checks a Python source file with a local Python (`explicit`, else `ATRUN_PYTHON`, else
/// `python3` on PATH): a syntax error fails with file:line; a manifest entry the file does not
/// define, and imports the runner cannot satisfy, are warnings. Without a usable local Python
/// the check is skipped with a warning, unless one was named (then its problem is the error).
pub fn check_python(
    file: &Path,
    shown: &str,
    manifest: &Manifest,
    explicit: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    for name in manifest
        .endpoints
        .iter()
        .map(|e| &e.name)
        .chain(manifest.tasks.iter().map(|t| &t.name))
    {
        if name.starts_with('_') {
            return Err(Failure::Build(format!(
                "the manifest lists '{name}', but the Python runtime never serves a name starting with '_' (a private name): rename it in {shown} and the manifest"
            ))
            .into());
        }
    }
    let named =
        explicit.is_some() || std::env::var_os("ATRUN_PYTHON").is_some_and(|v| !v.is_empty());
    let python = match crate::python::Python::locate(explicit) {
        Ok(p) => p,
        Err(e) if named => return Err(e.into()),
        Err(e) => {
            warnings.push(format!(
                "{shown} was not checked: {e} (the runner finds any syntax error when it loads the bundle)"
            ));
            return Ok(warnings);
        }
    };
    warnings.extend(check_python_with(
        &python,
        file,
        shown,
        manifest,
        &PythonExtras::default(),
    )?);
    Ok(warnings)
}

/// What else goes into a packed Python bundle, for [`check_python_with`].
#[derive(Debug, Default)]
pub struct PythonExtras {
    /// Top-level names the bundle's zip makes importable (its modules and packages).
    pub provided: Vec<String>,
    /// The project's other modules (path, name shown), checked for syntax.
    pub modules: Vec<(PathBuf, String)>,
}

/// [`check_python`] with a located Python and what else the bundle holds.
pub fn check_python_with(
    python: &crate::python::Python,
    file: &Path,
    shown: &str,
    manifest: &Manifest,
    extra: &PythonExtras,
) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let extra_json = serde_json::json!({"provided": extra.provided, "modules": extra.modules});
    let mut cmd = python.command();
    cmd.args(["-c", PYTHON_CHECK])
        .arg(file)
        .arg(shown)
        .arg(extra_json.to_string());
    let res = run(cmd, PYTHON_CHECK_TIMEOUT)
        .with_context(|| format!("could not run {}", python.path().display()))?;
    if !res.ok {
        return Err(Failure::Build(format!(
            "{shown} is not valid Python 3.11:\n{}",
            res.stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
        .into());
    }
    let found: Value =
        serde_json::from_str(res.stdout.trim()).context("the Python check printed no result")?;
    let names: Vec<&str> = found["names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if found["dynamic"] != Value::Bool(true) {
        for (kind, name) in manifest
            .endpoints
            .iter()
            .map(|e| ("endpoint", &e.name))
            .chain(manifest.tasks.iter().map(|t| ("task", &t.name)))
            .filter(|(_, n)| !names.contains(&n.as_str()))
        {
            warnings.push(format!(
                "the manifest lists {kind} '{name}', which {shown} does not define at its top level: calls of it answer 404 (define `{name} = {{\"handler\": ...}}`{}, or drop it from the manifest)",
                if kind == "task" { " with task()" } else { "" }
            ));
        }
    }
    if found["relative"] == Value::Bool(true) {
        warnings.push(format!(
            "{shown} has a relative import, which fails in the bundle's top-level module: import the project's other modules by name (`import helper` for helper.py)"
        ));
    }
    if let Some(imports) = found["imports"].as_array().filter(|a| !a.is_empty()) {
        let list: Vec<&str> = imports.iter().filter_map(Value::as_str).collect();
        warnings.push(format!(
            "{shown} imports {}, which is neither in Python's standard library nor in the project: the runner's Python has no site-packages, so the import fails there; list it in {} (pure-Python packages only) and the build puts it in the bundle",
            list.join(", "),
            pypack::REQUIREMENTS
        ));
    }
    if manifest.endpoints.is_empty() {
        warnings.push(format!(
            "the manifest lists no endpoints: add each endpoint {shown} defines to it"
        ));
    }
    Ok(warnings)
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
            "the bundle failed while loading (its top-level code runs with no permissions at build time; move file, network and env access into handlers):\n{}{}",
            tidy(&res.stderr, &project.dir, staging),
            if res.timed_out { " (does the top-level code wait for something?)" } else { "" }
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

/// Moves the staged code file `code_name` and `manifest.json` into `out` (each a rename, so a
/// reader sees the old build or the new one), removes the staging dir, and returns their paths.
fn install_staged(
    staging: &Path,
    out: &Path,
    code_name: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let code = out.join(code_name);
    let manifest_path = out.join("manifest.json");
    std::fs::rename(staging.join(code_name), &code)
        .with_context(|| format!("cannot write {}", code.display()))?;
    std::fs::rename(staging.join("manifest.json"), &manifest_path)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    let _ = std::fs::remove_dir_all(staging);
    Ok((code, manifest_path))
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

    fn no_deno() -> anyhow::Result<Deno> {
        anyhow::bail!("a Python project needs no Deno")
    }

    /// A Python project from `init`, built with the pinned Python checking it (or with none).
    fn python_project() -> (tempfile::TempDir, Project, BuildOptions) {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("py-app");
        crate::project::init(&app, None, "python").expect("init --runtime python");
        let project = Project::load(&app).expect("loads");
        let opts = BuildOptions {
            python: atrund_testnet::python_path(),
            ..Default::default()
        };
        (dir, project, opts)
    }

    #[test]
    fn a_python_project_builds_without_deno() {
        let (_dir, project, opts) = python_project();
        let (built, deno) = build_project(no_deno, &project, &opts).expect("builds");
        assert!(deno.is_none());
        assert_eq!(built.runtime, "python");
        assert_eq!(built.code, project.dist().join("main.py"));
        assert_eq!(built.manifest_path, project.dist().join("manifest.json"));
        let code = std::fs::read(project.entry()).expect("main.py");
        assert_eq!(std::fs::read(&built.code).expect("dist/main.py"), code);
        assert_eq!(built.bytes, code.len() as u64);
        let names: Vec<&str> = built
            .manifest
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["greet", "shout"]);
        let copied = std::fs::read_to_string(&built.manifest_path).expect("manifest");
        assert_eq!(
            parse_manifest(&copied, "dist").expect("valid"),
            built.manifest
        );
        if opts.python.is_some() {
            assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        }
        assert!(
            built.render().contains("endpoints: GET greet, POST shout"),
            "{}",
            built.render()
        );
    }

    /// The member names of a zip, read by `python`'s `zipfile`.
    fn zip_members(python: &Path, zip: &Path) -> Vec<String> {
        let out = std::process::Command::new(python)
            .args([
                "-I",
                "-S",
                "-c",
                "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))",
            ])
            .arg(zip)
            .output()
            .expect("run python");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    /// A Python project with a module of its own and a requirements.txt naming a pure wheel
    /// from a local folder (pip runs offline).
    fn packed_python_project() -> Option<(tempfile::TempDir, Project, BuildOptions, PathBuf)> {
        let (dir, project, opts) = python_project();
        let python = opts.python.clone()?;
        atrund_testnet::require_tiny_wheel(&python, &project.dir);
        std::fs::create_dir_all(project.dir.join("lib")).expect("mkdir");
        std::fs::write(project.dir.join("lib/__init__.py"), "").expect("write");
        std::fs::write(
            project.dir.join("lib/words.py"),
            "def hello(n):\n    return 'hello ' + n\n",
        )
        .expect("write");
        let main = std::fs::read_to_string(project.entry()).expect("main.py");
        std::fs::write(
            project.entry(),
            format!("import tinypkg\nfrom lib import words\n{main}\nloud = {{\"handler\": lambda i, c: tinypkg.shout(words.hello(i[\"name\"]))}}\n"),
        )
        .expect("write");
        Some((dir, project, opts, python))
    }

    #[test]
    fn a_python_project_with_modules_and_requirements_is_packed_into_a_zip() {
        let Some((_dir, project, opts, python)) = packed_python_project() else {
            return;
        };
        std::fs::create_dir_all(project.dist()).expect("mkdir dist");
        std::fs::write(project.dist().join("main.py"), "stale").expect("write");
        let (built, _) = build_project(no_deno, &project, &opts).expect("builds");
        assert_eq!(built.code, project.dist().join("bundle.zip"));
        assert!(
            !project.dist().join("main.py").exists(),
            "a stale main.py stays beside the zip"
        );
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        let code = std::fs::read(&built.code).expect("zip");
        assert!(pypack::is_zip(&code));
        assert_eq!(built.bytes, code.len() as u64);
        let members = zip_members(&python, &built.code);
        for want in [
            "main.py",
            "lib/__init__.py",
            "lib/words.py",
            "tinypkg/__init__.py",
            "tinypkg-1.0.dist-info/METADATA",
        ] {
            assert!(
                members.iter().any(|m| m == want),
                "{want} not in {members:?}"
            );
        }
        assert!(
            !members
                .iter()
                .any(|m| m.starts_with("wheels/") || m.ends_with(".pyc")),
            "{members:?}"
        );
        // The same sources give the same blob.
        let (again, _) = build_project(no_deno, &project, &opts).expect("builds again");
        assert_eq!(std::fs::read(&again.code).expect("zip"), code);

        // The zip imports as the runner's shim imports it: main.py from the zip on sys.path.
        let out = std::process::Command::new(&python)
            .args(["-I", "-S", "-c", "import sys; sys.path.append(sys.argv[1]); a = sys.modules['atrund'] = type(sys)('atrund'); a.Response = a.endpoint = a.task = lambda *x, **k: (lambda f: f); import main; print(main.loud['handler']({'name': 'ada'}, None))"])
            .arg(&built.code)
            .output()
            .expect("python");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "HELLO ADA!",
            "{out:?}"
        );

        // An import the bundle cannot satisfy is named, with where to list it.
        let main = std::fs::read_to_string(project.entry()).expect("main.py");
        std::fs::write(project.entry(), format!("import yaml\n{main}")).expect("write");
        let (built, _) = build_project(no_deno, &project, &opts).expect("builds");
        assert!(
            built
                .warnings
                .iter()
                .any(|w| w.contains("imports yaml") && w.contains("requirements.txt")),
            "{:?}",
            built.warnings
        );
        std::fs::write(project.entry(), &main).expect("write");

        // A syntax error in another module is found with its file and line.
        std::fs::write(project.dir.join("lib/words.py"), "def hello(n:\n").expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("syntax error")
        );
        assert!(m.contains("lib/words.py:1:"), "{m}");
    }

    #[test]
    fn a_python_requirement_with_native_code_is_refused() {
        let Some((_dir, project, opts, python)) = packed_python_project() else {
            return;
        };
        let wheels = project.dir.join("wheels");
        // Only a CPython/Linux wheel: pip finds no pure one.
        atrund_testnet::write_wheel(
            &python,
            &wheels,
            "fastpkg",
            "cp311-cp311-manylinux_2_17_x86_64",
            &[("fastpkg/__init__.py", ""), ("fastpkg/_speed.so", "ELF")],
        );
        std::fs::write(
            project.dir.join("requirements.txt"),
            "--no-index\n--find-links wheels\nfastpkg\n",
        )
        .expect("write");
        let e = build_project(no_deno, &project, &opts).expect_err("no pure wheel");
        assert_eq!(crate::error::classify(&e).0, "BuildFailed");
        let m = format!("{e:#}");
        assert!(
            m.contains("pure-Python packages only") && m.contains("fastpkg"),
            "{m}"
        );

        // A wheel tagged pure that ships a native library anyway.
        atrund_testnet::write_wheel(
            &python,
            &wheels,
            "liarpkg",
            "py3-none-any",
            &[
                ("liarpkg/__init__.py", ""),
                ("liarpkg/_speed.cpython-311-x86_64-linux-gnu.so", "ELF"),
            ],
        );
        std::fs::write(
            project.dir.join("requirements.txt"),
            "--no-index\n--find-links wheels\nliarpkg\n",
        )
        .expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("native code")
        );
        assert!(
            m.contains("liarpkg/_speed.cpython-311-x86_64-linux-gnu.so")
                && m.contains("is native code"),
            "{m}"
        );

        // A project file and a package file that would have the same name in the zip.
        std::fs::write(
            project.dir.join("requirements.txt"),
            "--no-index\n--find-links wheels\ntinypkg==1.0\n",
        )
        .expect("write");
        std::fs::create_dir_all(project.dir.join("tinypkg")).expect("mkdir");
        std::fs::write(project.dir.join("tinypkg/__init__.py"), "").expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("a clash")
        );
        assert!(m.contains("would both be tinypkg/__init__.py"), "{m}");
    }

    #[test]
    fn a_python_syntax_error_names_file_and_line_and_keeps_the_last_build() {
        let (_dir, project, opts) = python_project();
        if opts.python.is_none() {
            return;
        }
        let (good, _) = build_project(no_deno, &project, &opts).expect("builds");
        let before = std::fs::read(&good.code).expect("dist/main.py");
        std::fs::write(project.entry(), "x = 1\ndef broken(:\n    pass\n").expect("write");
        let e = build_project(no_deno, &project, &opts).expect_err("a syntax error");
        let (code, exit) = crate::error::classify(&e);
        assert_eq!((code, exit), ("BuildFailed", crate::error::exit::BUILD));
        let m = format!("{e:#}");
        assert!(
            m.contains("main.py is not valid Python 3.11") && m.contains("main.py:2:"),
            "{m}"
        );
        assert!(m.contains("def broken(:"), "{m}");
        assert_eq!(std::fs::read(&good.code).expect("still there"), before);

        // Syntax newer than the runner's Python 3.11 is refused too.
        std::fs::write(project.entry(), "type Point = tuple[int, int]\n").expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("3.12")
        );
        assert!(m.contains("not valid Python 3.11"), "{m}");

        // Not UTF-8.
        std::fs::write(project.entry(), [0x78, 0x3d, 0xff, 0x0a]).expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("binary")
        );
        assert!(m.contains("not UTF-8"), "{m}");
    }

    #[test]
    fn a_python_manifest_is_checked_against_the_code() {
        let (_dir, project, opts) = python_project();
        let manifest = project.dir.join(crate::project::PYTHON_MANIFEST);
        let template = std::fs::read_to_string(&manifest).expect("manifest");

        std::fs::remove_file(&manifest).expect("rm");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("missing")
        );
        assert!(
            m.contains("manifest.json") && m.contains("at-run init --runtime python"),
            "{m}"
        );

        std::fs::write(&manifest, r#"{"endpoints":[{"name":"greet"}],"gpu":true}"#).expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("invalid")
        );
        assert!(m.contains("unknown field"), "{m}");

        std::fs::write(&manifest, r#"{"endpoints":[{"name":"_hidden"}]}"#).expect("write");
        let m = format!(
            "{:#}",
            build_project(no_deno, &project, &opts).expect_err("private")
        );
        assert!(m.contains("'_hidden'") && m.contains("private"), "{m}");

        if opts.python.is_none() {
            return;
        }
        std::fs::write(&manifest, template.replace("\"shout\"", "\"yell\"")).expect("write");
        let code = std::fs::read_to_string(project.entry()).expect("main.py");
        std::fs::write(
            project.entry(),
            format!("import requests\nfrom . import helpers\n{code}"),
        )
        .expect("write");
        let (built, _) = build_project(no_deno, &project, &opts).expect("warnings only");
        let w = built.warnings.join("\n");
        assert!(
            w.contains("endpoint 'yell', which main.py does not define"),
            "{w}"
        );
        assert!(!w.contains("'greet'"), "{w}");
        assert!(
            w.contains("imports requests, which is neither in Python's standard library"),
            "{w}"
        );
        assert!(w.contains("relative import"), "{w}");
    }

    #[test]
    fn a_named_python_that_is_missing_is_an_error() {
        let (_dir, project, mut opts) = python_project();
        opts.python = Some(PathBuf::from("/nonexistent/python3"));
        let e = build_project(no_deno, &project, &opts).expect_err("missing python");
        assert_eq!(crate::error::classify(&e).0, "PythonMissing");
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
