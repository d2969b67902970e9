//! The house's walls, checked (issue 15): the broker's modules are layered
//! with no import circle, and the preload shim, loaded into every app pb
//! runs, carries none of the platform layer's heavy crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    pb_tests::tests_dir()
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// The broker's layers, lowest first. A module may import only from layers
/// below its own; modules of the foundation (every module not named here)
/// may import each other, as long as no circle forms.
const LAYERS: &[&[&str]] = &[
    &["store"],
    &["core"],
    &["service", "tasks"],
    &["transport"],
    &["daemon"],
];

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .map_or(0, |i| i + 1)
}

/// For each top-level module of broker/src, the top-level modules its code
/// (tests and comments aside) names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = repo().join("broker/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    walk(&root, &mut files);
    assert!(files.len() > 20, "found the broker's sources");
    for file in files {
        let rel = file.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn broker_modules_import_only_downwards_and_form_no_circle() {
    let graph = imports();
    for layer in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(graph.contains_key(*layer), "broker/src has {layer}");
    }
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            let (from, to) = (rank(module), rank(dep));
            if to > from || (to == from && from > 0) {
                upward.push(format!("{module} imports {dep}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
    // The foundation's own imports: a depth-first walk finds any circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            return Err(format!("{} -> {m}", path[at..].join(" -> ")));
        }
        if !done.insert(m) {
            return Ok(());
        }
        path.push(m);
        for dep in graph.get(m).into_iter().flatten() {
            visit(dep, graph, path, done)?;
        }
        path.pop();
        Ok(())
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let mut path = Vec::new();
        if let Err(circle) = visit(m, &graph, &mut path, &mut done) {
            panic!("an import circle: {circle}");
        }
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    // The walk reads real files: a core that named a transport would be
    // seen (this file is outside broker/src, so it only checks the reader).
    let graph = imports();
    assert!(graph["transport"].contains("core"));
    assert!(graph["daemon"].contains("transport"));
    assert!(!graph["core"].contains("transport"));
}

#[test]
fn the_preload_shim_carries_no_platform_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "-p",
            "pb-preload-shim",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("pb-proto"), "{tree}");
    for heavy in [
        "procfs",
        "netstat2",
        "bindgen",
        "clang-sys",
        "pb-platform",
        "tokio",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{heavy} "))),
            "the shim depends on {heavy}:\n{tree}"
        );
    }
}
