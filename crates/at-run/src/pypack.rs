//! A Python project that is more than one file becomes a zip (`bundle.zip`, uploaded as
//! `application/zip`): the entry as `main.py` at its root, the project's other `.py` files at
//! their paths, and the packages `requirements.txt` names, installed by the local Python's pip
//! as pure-Python wheels only (`--only-binary=:all: --platform any`: no native code, and no
//! package's setup code runs on the author's machine). The runner's shim imports from the zip
//! (`zipimport`), so nothing is unpacked on the runner.
//!
//! The zip is written by the local Python's `zipfile` (pip needs that Python anyway), with fixed
//! timestamps and sorted names, so the same sources give the same blob.
//!
//! Owns: choosing the files, running pip into a folder this build owns, and writing the zip.
//! Must not touch: the project's sources (read only), anything outside the build's folders;
//! the network only through pip and its index (requirements.txt may name another, or none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::error::Failure;
use crate::project::Project;
use crate::python::Python;

/// The project's list of third-party packages (pip's format).
pub const REQUIREMENTS: &str = "requirements.txt";
/// The built zip's file name, in `dist/` (and `.at-run/dev/`).
pub const ZIP_NAME: &str = "bundle.zip";
/// The name of the bundle module inside the zip (the shim imports it).
pub const ZIP_ENTRY: &str = "main.py";
/// The Python the runner runs (Debian 12's): the version pip picks wheels for.
const TARGET_PYTHON: &str = "3.11";
/// Longest pip may take (it may download).
const PIP_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest writing the zip may take.
const ZIP_TIMEOUT: Duration = Duration::from_secs(60);
/// Folders never searched for the project's modules: outputs, dependencies, virtualenvs
/// (also any folder holding a `pyvenv.cfg`) and hidden folders (`.git`, `.venv`, `.at-run`).
const SKIPPED: [&str; 5] = ["dist", "node_modules", "__pycache__", "venv", "env"];
/// Suffixes of native code, which zipimport cannot load.
const NATIVE: [&str; 3] = [".so", ".pyd", ".dylib"];

/// Writes the zip named by argv[1] from the `[name, source path]` pairs in the JSON file argv[2].
const ZIP_WRITER: &str = r#"import json, sys, zipfile
out, listing = sys.argv[1], sys.argv[2]
with open(listing, encoding="utf-8") as f:
    entries = json.load(f)
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for name, src in entries:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with open(src, "rb") as f:
            z.writestr(info, f.read())
"#;

/// What a Python project's bundle is made of besides its entry.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// The project's other `.py` files, relative to its folder, sorted.
    pub modules: Vec<PathBuf>,
    /// `requirements.txt`, when the project has one.
    pub requirements: Option<PathBuf>,
}

impl Parts {
    /// Finds the project's modules (every `.py` file but the entry, outside [`SKIPPED`] and
    /// hidden folders) and its requirements file.
    pub fn of(project: &Project) -> anyhow::Result<Parts> {
        let entry = project.entry();
        let mut modules: Vec<PathBuf> = files_under(&project.dir, |dir, name| {
            !name.starts_with('.') && !SKIPPED.contains(&name) && !dir.join("pyvenv.cfg").exists()
        })?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "py") && *p != entry)
        .map(|p| p.strip_prefix(&project.dir).unwrap_or(&p).to_path_buf())
        .collect();
        modules.sort();
        let requirements = Some(project.dir.join(REQUIREMENTS)).filter(|p| p.is_file());
        Ok(Parts {
            modules,
            requirements,
        })
    }

    /// Whether the bundle must be a zip (more than the entry goes into it).
    pub fn packaged(&self) -> bool {
        !self.modules.is_empty() || self.requirements.is_some()
    }
}

/// The top-level names a folder of modules and packages makes importable (`pkg/`, `mod.py`).
pub fn importable_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    if !dir.is_dir() {
        return Ok(names);
    }
    for item in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = item.file_name().to_string_lossy().to_string();
        let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && !name.contains('.') && name != "__pycache__" && name != "bin" {
            names.push(name);
        } else if let Some(stem) = name.strip_suffix(".py") {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Installs `requirements` into `site` with pip, pure-Python wheels only. With `cache`, a
/// folder kept between builds (`at-run dev`), an install of the same requirements text is
/// reused instead of run again.
pub fn install(
    python: &Python,
    project: &Project,
    requirements: &Path,
    site: &Path,
    cache: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let (target, stamp) = match cache {
        Some(c) => (c.join("site"), Some(c.join(REQUIREMENTS))),
        None => (site.to_path_buf(), None),
    };
    if let Some(stamp) = &stamp {
        if std::fs::read_to_string(stamp).ok().as_deref() == Some(text.as_str()) && target.is_dir()
        {
            return Ok(target);
        }
        let _ = std::fs::remove_file(stamp);
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut cmd = Command::new(python.path());
    // Not isolated from site-packages: pip lives there. -I still drops PYTHON* and the user dir.
    cmd.current_dir(&project.dir)
        .args(["-I", "-m", "pip", "install", "--target"])
        .arg(&target)
        .args([
            "--only-binary=:all:",
            "--platform",
            "any",
            "--implementation",
            "py",
            "--abi",
            "none",
            "--python-version",
            TARGET_PYTHON,
            "--no-compile",
            "--disable-pip-version-check",
            "--no-input",
            "--root-user-action=ignore",
            "--quiet",
            "-r",
        ])
        .arg(requirements);
    let res = crate::child::run(cmd, PIP_TIMEOUT)
        .with_context(|| format!("could not run {} -m pip", python.path().display()))?;
    if !res.ok {
        if res.stderr.contains("No module named pip") {
            return Err(Failure::PythonMissing(format!(
                "{} has no pip, which installs the packages {REQUIREMENTS} names: install it \
                 (Debian: apt-get install python3-pip), or point --python / ATRUN_PYTHON at a \
                 Python that has it",
                python.path().display()
            ))
            .into());
        }
        return Err(Failure::Build(format!(
            "pip could not install {REQUIREMENTS}: a Python bundle takes pure-Python packages \
             only (a py3-none-any wheel; no native code, no source-only package), for Python \
             {TARGET_PYTHON}. pip said:\n{}",
            indent(&res.stderr)
        ))
        .into());
    }
    if let Some(native) = first_native(&target)? {
        let shown = native.strip_prefix(&target).unwrap_or(&native);
        return Err(Failure::Build(format!(
            "{} (installed for {REQUIREMENTS}) is native code, which the runner cannot load from \
             a bundle: a Python bundle takes pure-Python packages only; drop the package that \
             ships it",
            shown.display()
        ))
        .into());
    }
    if let Some(stamp) = &stamp {
        std::fs::write(stamp, &text)
            .with_context(|| format!("cannot write {}", stamp.display()))?;
    }
    Ok(target)
}

/// The first native library under `dir`, if any.
fn first_native(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(files_under(dir, |_, _| true)?.into_iter().find(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        NATIVE.iter().any(|n| name.ends_with(n)) || name.contains(".so.")
    }))
}

/// Every file under `root` (symlinks to files included), descending into the dirs `enter`
/// accepts (given the dir's path and name).
fn files_under(root: &Path, enter: impl Fn(&Path, &str) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let listing =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for item in listing {
            let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = item.path();
            let kind = item
                .file_type()
                .with_context(|| format!("cannot read {}", path.display()))?;
            if kind.is_dir() {
                if enter(&path, &item.file_name().to_string_lossy()) {
                    stack.push(path);
                }
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The zip's contents, name → source file: the entry as [`ZIP_ENTRY`], the project's modules,
/// and what pip installed in `site` (its scripts and bytecode left out). A name given twice is
/// an error naming both sources.
pub fn contents(
    project: &Project,
    parts: &Parts,
    site: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut add = |name: String, src: PathBuf| -> anyhow::Result<()> {
        if let Some(prev) = files.get(&name) {
            return Err(Failure::Build(format!(
                "{} and {} would both be {name} in the bundle's zip ({ZIP_ENTRY} at its root is \
                 the entry, {}): rename one",
                prev.display(),
                src.display(),
                project.file.entry
            ))
            .into());
        }
        files.insert(name, src);
        Ok(())
    };
    add(ZIP_ENTRY.to_string(), project.entry())?;
    for m in &parts.modules {
        add(zip_name(m)?, project.dir.join(m))?;
    }
    if let Some(site) = site {
        // pip's scripts (`bin/`) and bytecode are of no use in the zip.
        let installed = files_under(site, |dir, name| {
            name != "__pycache__" && !(dir.parent() == Some(site) && name == "bin")
        })?;
        for path in installed
            .into_iter()
            .filter(|p| p.extension().is_none_or(|x| x != "pyc"))
        {
            let rel = path.strip_prefix(site).unwrap_or(&path).to_path_buf();
            add(zip_name(&rel)?, path)?;
        }
    }
    Ok(files)
}

/// A relative path as a zip member name (`/`-separated, UTF-8).
fn zip_name(rel: &Path) -> anyhow::Result<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|p| p.join("/")).ok_or_else(|| {
        Failure::Build(format!(
            "{} has a name that is not UTF-8; rename it",
            rel.display()
        ))
        .into()
    })
}

/// Writes `files` into the zip `out` with the local Python; returns its size in bytes.
pub fn write_zip(
    python: &Python,
    files: &BTreeMap<String, PathBuf>,
    out: &Path,
    scratch: &Path,
) -> anyhow::Result<u64> {
    let listing = scratch.join("zip-listing.json");
    let pairs: Vec<(&String, &PathBuf)> = files.iter().collect();
    std::fs::write(
        &listing,
        serde_json::to_vec(&pairs).context("encode the zip listing")?,
    )
    .with_context(|| format!("cannot write {}", listing.display()))?;
    let mut cmd = python.command();
    cmd.args(["-c", ZIP_WRITER]).arg(out).arg(&listing);
    let res = crate::child::run(cmd, ZIP_TIMEOUT)
        .with_context(|| format!("could not run {}", python.path().display()))?;
    let _ = std::fs::remove_file(&listing);
    if !res.ok {
        anyhow::bail!(
            "could not write {}:\n{}",
            out.display(),
            indent(&res.stderr)
        );
    }
    Ok(std::fs::metadata(out)
        .with_context(|| format!("{} was not written", out.display()))?
        .len())
}

/// Whether `code` is a zip archive (what the runner's shim checks too).
pub fn is_zip(code: &[u8]) -> bool {
    code.starts_with(b"PK\x03\x04") || code.starts_with(b"PK\x05\x06")
}

fn indent(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zips_are_told_from_source() {
        assert!(is_zip(b"PK\x03\x04rest"));
        assert!(is_zip(b"PK\x05\x06"));
        assert!(!is_zip(b"import json\n"));
        assert!(!is_zip(b"PK"));
    }

    #[test]
    fn zip_names_use_slashes() {
        assert_eq!(
            zip_name(Path::new("pkg/sub/mod.py")).expect("name"),
            "pkg/sub/mod.py"
        );
    }

    #[test]
    fn importable_names_are_packages_and_modules() {
        let d = tempfile::tempdir().expect("tempdir");
        for dir in ["pkg", "pkg-1.0.dist-info", "bin", "__pycache__"] {
            std::fs::create_dir(d.path().join(dir)).expect("mkdir");
        }
        std::fs::write(d.path().join("single.py"), "").expect("write");
        std::fs::write(d.path().join("README.txt"), "").expect("write");
        assert_eq!(
            importable_names(d.path()).expect("names"),
            ["pkg", "single"]
        );
    }
}
