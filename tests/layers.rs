//! The crate's layers point down only (see ARCHITECTURE.md): each module of
//! `runtime/src` may name, through `crate::…`, only modules of its own layer
//! or of layers below it, and every `unsafe` is under `sys/`. Read from the
//! source, so that an upward edge fails here rather than in review.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules of `runtime/src`, bottom layer first. A module may use
/// those of its own layer and the layers before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("system calls and every unsafe", &["sys"]),
    ("the crate's error", &["error"]),
    ("transport", &["wire", "net"]),
    ("process machinery", &["spawn"]),
    ("handles every primitive uses", &["fd", "channel_error"]),
    ("shared state", &["sync"]),
    ("channels", &["pipe", "queue"]),
    ("across handles", &["wait"]),
    ("services", &["manager", "pool"]),
    ("scale-out", &["cluster"]),
    ("fuzz entry points (test-hooks only)", &["fuzz_hooks"]),
];

/// Inside `spawn/`, files a file must not use: the child side (`child`,
/// `fork_server`) and the parent side (`parent`, `fork_client`) share only
/// `protocol.rs` (and what is below them).
const SPAWN_APART: &[(&str, &str)] = &[
    ("child", "parent"),
    ("parent", "child"),
    ("child", "fork_client"),
    ("parent", "fork_server"),
    ("fork_server", "parent"),
    ("fork_server", "fork_client"),
    ("fork_client", "child"),
    ("fork_client", "fork_server"),
];

fn rank(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its comment.
fn code(line: &str) -> &str {
    let line = line.trim_start();
    if line.starts_with("//") {
        return "";
    }
    match line.find(" //") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Names re-exported at the crate root (`crate::Fd`), by the module they
/// come from, as lib.rs says; and the root macros by where they live.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    names.insert("__load_time_ctor".to_string(), "sys".to_string());
    names.insert("__entry_ctor".to_string(), "spawn".to_string());
    // The attribute's expansion registers the entry with spawn/.
    names.insert("process_entry".to_string(), "spawn".to_string());
    let text = lib.replace('\n', " ");
    for stmt in text.split(';') {
        let Some(at) = stmt.find("pub use crate::") else {
            continue;
        };
        let path = &stmt[at + "pub use crate::".len()..];
        let module = path.split("::").next().unwrap().trim().to_string();
        let items = match (path.find('{'), path.rfind('}')) {
            (Some(a), Some(b)) => path[a + 1..b].to_string(),
            _ => path.rsplit("::").next().unwrap().to_string(),
        };
        for item in items.split(',') {
            let name = item.split(" as ").last().unwrap().trim();
            if !name.is_empty() {
                names.insert(name.to_string(), module.clone());
            }
        }
    }
    names
}

/// Every `crate::<name>` the code of `text` names, up to its tests (test
/// code may reach up to check real behaviour).
fn references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let code = code(line);
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            let after = &rest[at + "crate::".len()..];
            rest = after;
            // `$crate::` paths are resolved in the macro's caller.
            if before.ends_with('$') {
                continue;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
        }
    }
    found
}

#[test]
fn layers_point_down_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src");
    let lib = fs::read_to_string(root.join("lib.rs")).unwrap();
    let names = root_names(&lib);
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut upward = Vec::new();
    let mut unplaced = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
        let first = parts.next().unwrap();
        if first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let Some(mine) = rank(&module) else {
            unplaced.push(module);
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        for (line, name) in references(&text) {
            let target = if name.chars().next().unwrap().is_uppercase()
                || name.starts_with("__")
                || name == "process_entry"
            {
                match names.get(&name) {
                    Some(module) => module.clone(),
                    None => {
                        upward.push(format!(
                            "{}:{line}: crate::{name} is not placed",
                            rel.display()
                        ));
                        continue;
                    }
                }
            } else {
                name
            };
            match rank(&target) {
                Some(theirs) if theirs <= mine => {}
                Some(theirs) => upward.push(format!(
                    "{}:{line}: {module} ({}) uses {target} ({})",
                    rel.display(),
                    LAYERS[mine].0,
                    LAYERS[theirs].0
                )),
                None => upward.push(format!(
                    "{}:{line}: crate::{target} is in no layer",
                    rel.display()
                )),
            }
        }
        if module == "spawn" {
            let stem = rel.file_stem().unwrap().to_string_lossy();
            for (from, to) in SPAWN_APART {
                let needle = format!("spawn::{to}");
                let sibling = format!("super::{to}");
                if stem == *from && (text.contains(&needle) || text.contains(&sibling)) {
                    upward.push(format!(
                        "{}: the {from} side uses the {to} side",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS and ARCHITECTURE.md): {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "edges that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn unsafe_code_lives_only_in_sys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut outside = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        // lib.rs sets the lints that keep `unsafe` out of the rest.
        if rel.starts_with("sys") || rel == Path::new("lib.rs") {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code(line);
            let words = code.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            if words
                .into_iter()
                .any(|w| w == "unsafe" || w == "unsafe_code")
            {
                outside.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "unsafe outside sys/:\n{}",
        outside.join("\n")
    );
}
