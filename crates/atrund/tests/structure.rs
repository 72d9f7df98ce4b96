//! The workspace's shape, checked: no source file imports another file that imports it back,
//! directly or through others (docs/architecture.md: the crates follow the data path, and so do
//! the files inside them). Cargo already refuses cycles between crates; this covers files.
//!
//! An import is a path through `crate::` or `super::` that names another file's module, or the
//! use of a child module a file declares (`mod x;` … `x::`). Re-exports (`pub use`) are the
//! crate's face, not a dependency of the file's code, and test modules are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate: `[]` for lib.rs/main.rs, `["process", "call"]` for
/// src/process/call.rs.
type ModPath = Vec<String>;

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).expect("crates dir") {
        let src = entry.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let files = read_crate(&src);
        checked += files.len();
        let name = src
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().to_string());
        for cycle in cycles(&files) {
            let shown: Vec<String> = cycle.iter().map(|m| show(name.as_deref(), m)).collect();
            problems.push(shown.join(" -> "));
        }
    }
    assert!(
        checked > 50,
        "only {checked} files found under {}",
        crates.display()
    );
    assert!(
        problems.is_empty(),
        "files that import each other (move what both need into a file of its own):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let files: BTreeMap<ModPath, String> = [
        (vec![], "mod a;\nmod b;\npub use a::A;\n".to_string()),
        (
            vec!["a".into()],
            "use crate::b::helper;\npub struct A;\n".into(),
        ),
        (
            vec!["b".into()],
            "pub fn helper() {}\nfn f() { let _ = super::a::A; }\n".into(),
        ),
        (vec!["c".into()], "use crate::a::A;\n".into()),
    ]
    .into_iter()
    .collect();
    let found = cycles(&files);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut members = found[0].clone();
    members.sort();
    assert_eq!(members, vec![vec!["a".to_string()], vec!["b".to_string()]]);

    // Without b's use of a, nothing; the root's re-export is not an import.
    let mut fixed = files.clone();
    fixed.insert(vec!["b".into()], "pub fn helper() {}\n".into());
    assert!(cycles(&fixed).is_empty());
    // Test modules do not count.
    fixed.insert(
        vec!["b".into()],
        "pub fn helper() {}\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n".into(),
    );
    assert!(cycles(&fixed).is_empty());
}

fn show(krate: Option<&str>, m: &ModPath) -> String {
    let mut parts = vec![krate.unwrap_or("?").to_string()];
    parts.extend(m.iter().cloned());
    parts.join("/")
}

/// Every .rs file of a crate's src (binaries under src/bin are crates of their own), by module.
fn read_crate(src: &Path) -> BTreeMap<ModPath, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path: PathBuf = entry.expect("entry").path();
            if path.is_dir() {
                if path != src.join("bin") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut m: ModPath = rel
                    .iter()
                    .map(|c| c.to_string_lossy().to_string())
                    .collect();
                if matches!(m.last().map(String::as_str), Some("lib" | "main" | "mod")) {
                    m.pop();
                }
                out.insert(m, std::fs::read_to_string(&path).expect("read source"));
            }
        }
    }
    out
}

/// The file modules each file imports.
fn imports(files: &BTreeMap<ModPath, String>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut edges = BTreeMap::new();
    for (m, text) in files {
        let code = code_of(text);
        let mut refs = BTreeSet::new();
        for (root, segments) in paths(&code) {
            let mut base: ModPath = if root == "crate" {
                Vec::new()
            } else {
                m[..m.len().saturating_sub(1)].to_vec()
            };
            let mut rest = segments.as_slice();
            while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
                base.pop();
                rest = tail;
            }
            // The longest prefix that is a file is the module imported.
            let target = (0..=rest.len()).rev().find_map(|i| {
                let mut cand = base.clone();
                cand.extend(rest[..i].iter().cloned());
                files.contains_key(&cand).then_some(cand)
            });
            if let Some(t) = target.filter(|t| t != m) {
                refs.insert(t);
            }
        }
        // `mod x;` declared here and used as `x::…`.
        for line in code.lines() {
            let line = line.trim();
            let decl = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub(super) mod "))
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "));
            if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
                let mut child = m.clone();
                child.push(name.to_string());
                if files.contains_key(&child) && uses_prefix(&code, name) {
                    refs.insert(child);
                }
            }
        }
        edges.insert(m.clone(), refs);
    }
    edges
}

/// The cycles among files (each strongly connected group of two or more files once).
fn cycles(files: &BTreeMap<ModPath, String>) -> Vec<Vec<ModPath>> {
    let edges = imports(files);
    // Two files are in one cycle when each reaches the other.
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(v) = todo.pop() {
            for w in edges.get(&v).into_iter().flatten() {
                if seen.insert(w.clone()) {
                    todo.push(w.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&ModPath, BTreeSet<ModPath>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (m, r) in &reaches {
        if done.contains(*m) || !r.contains(*m) {
            continue;
        }
        let group: Vec<ModPath> = r
            .iter()
            .filter(|o| reaches.get(o).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        done.extend(group.iter().cloned());
        out.push(group);
    }
    out
}

/// The text that counts: before the test module, without comment lines and re-exports.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    let mut in_reexport = false;
    for line in text.lines() {
        let t = line.trim_start();
        if in_reexport {
            in_reexport = !t.contains(';');
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("pub use ") || t.starts_with("pub(crate) use ") {
            in_reexport = !t.contains(';');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every `crate::a::b…` / `super::a…` path in `code`: its root and its segments.
fn paths(code: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate", "super"] {
        let needle = format!("{root}::");
        let mut from = 0;
        while let Some(i) = code[from..].find(&needle) {
            let at = from + i;
            from = at + needle.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut segments = Vec::new();
            let mut rest = &code[from..];
            loop {
                let len = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    break;
                }
                segments.push(rest[..len].to_string());
                match rest[len..].strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            // `use crate::x::{a, b::c}`: each item of the group is a path of its own.
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.split(" as ").next().unwrap_or("").trim();
                    let mut segs = segments.clone();
                    segs.extend(
                        item.split("::")
                            .filter(|s| !s.is_empty() && *s != "self" && *s != "*")
                            .map(str::to_string),
                    );
                    out.push((root, segs));
                }
                continue;
            }
            out.push((root, segments));
        }
    }
    out
}

/// Whether `code` uses `name::` as a path start (not as the tail of a longer path).
fn uses_prefix(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(i, _)| {
        code[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    })
}
