//! The crate's layers point one way, down: each top-level module of `src/` may use the
//! modules of the layers below its own, never one beside it or above it. So any part can be
//! read, tested or replaced with only what is below it, and no two modules depend on each
//! other. This test reads the sources and names every `crate::` path that breaks the rule.

use std::path::{Path, PathBuf};

/// From the bottom up. A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    // The YAML contract as plain data.
    &["spec"],
    // Feature modules, each owning its own types.
    &["metrics", "access_log", "filters", "cache", "tls"],
    // Origins: peers read their CA roots through `tls`.
    &["upstream"],
    // Custom pages fetch their pages through `upstream`.
    &["pages"],
    // Where specs come from.
    &["source"],
    // The live route table, reloads, and what survives them.
    &["runtime"],
    // The `ProxyHttp` glue.
    &["proxy"],
    &["admin"],
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root and `main`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (module != "lib" && module != "main").then(|| module.to_string())
}

/// The top-level modules a line of code names through `crate::` (`crate::a::b`, or each
/// first segment of `crate::{a::b, c}`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let is_path_start = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if !is_path_start {
            continue;
        }
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => top_level_items(group),
            None => vec![rest],
        };
        for name in names {
            let name: String = name
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// The items of a `{a::b, c::{d, e}}` group (its text after the `{`) at the group's own depth.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// Every use of a module that is not below the user: `file:line: module uses other (...)`.
fn violations(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for file in rust_files(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let Some(own_layer) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` is in no layer of tests/architecture.rs; place it",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for used in crate_paths(code) {
                if used == module {
                    continue;
                }
                let verdict = match layer_of(&used) {
                    Some(layer) if layer < own_layer => continue,
                    Some(layer) if layer == own_layer => "beside it, in the same layer",
                    Some(_) => "above it",
                    None => continue, // an item of the crate root, not a module
                };
                problems.push(format!(
                    "{}:{}: `{module}` uses `{used}`, which is {verdict}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    problems
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "dependencies must point down the layers:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: Vec<String> = rust_files(&src)
        .iter()
        .filter_map(|file| module_of(&src, file))
        .collect();
    modules.sort();
    modules.dedup();
    let unplaced: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
    assert!(modules.len() >= 10, "src/ was not read: {modules:?}");
}

#[test]
fn the_checker_sees_every_form_of_crate_path() {
    assert_eq!(crate_paths("use crate::spec::Location;"), ["spec"]);
    assert_eq!(
        crate_paths("use crate::{pages::Rule, upstream, spec::{A, B}};"),
        ["pages", "upstream", "spec"]
    );
    assert_eq!(
        crate_paths("let x = crate::metrics::METRICS.requests;"),
        ["metrics"]
    );
    assert!(crate_paths("use my_crate::spec;").is_empty());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("spec")).unwrap();
    std::fs::write(
        dir.path().join("spec").join("mod.rs"),
        "use crate::runtime::RouteTable; // a reverse use\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("runtime.rs"), "use crate::spec;\n").unwrap();
    let problems = violations(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("`spec` uses `runtime`, which is above it: use crate::runtime::RouteTable;"),
        "{problems:?}"
    );
}
