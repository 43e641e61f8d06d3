//! The layering `docs/architecture.md` describes, checked from the sources:
//! which top-level module of `src/` imports which (`crate::<module>` paths),
//! so a change that breaks the layering fails here, not in review.
//!
//! - No cycle between top-level modules.
//! - `config` is a leaf: it names no other module of the crate.
//! - `dialects` (the pure format code) names only `error` besides itself.
//! - `gateway` names no provider type: nothing of `providers::<type>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its `#[cfg(test)] mod tests` (tests may reach
/// across layers) and without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module → the other top-level modules it names (`crate::x`), and the text
/// of each module's files.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else { continue };
        let text = code(&std::fs::read_to_string(&file).expect("read source"));
        let entry = deps.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                entry.insert(name);
            }
        }
        texts.entry(module).or_default().push_str(&text);
    }
    (deps, texts)
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (deps, _) = graph();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(cycle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            panic!("import cycle between top-level modules: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn config_is_a_leaf_and_dialects_are_pure() {
    let (deps, _) = graph();
    assert_eq!(
        deps["config"],
        BTreeSet::new(),
        "config imports nothing else from the crate"
    );
    let dialects: Vec<&String> = deps["dialects"].iter().filter(|d| *d != "error").collect();
    assert!(dialects.is_empty(), "dialects import only `error`: {dialects:?}");
}

#[test]
fn the_gateway_names_no_provider_type() {
    let (_, texts) = graph();
    let gateway = &texts["gateway"];
    let types: Vec<&str> = modelgate::providers::TYPES.iter().map(|t| t.name).collect();
    for t in &types {
        for needle in [format!("providers::{t}"), format!("\"{t}\"")] {
            assert!(
                !gateway.contains(&needle),
                "src/gateway names provider type `{t}` ({needle})"
            );
        }
    }
    for module in ["bedrock", "gemini", "openai", "google", "vertex"] {
        assert!(
            !gateway.contains(&format!("dialects::{module}")),
            "src/gateway uses the `{module}` dialect directly"
        );
    }
}
