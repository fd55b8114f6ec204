//! The crate's layers point one way, down: each top-level module of `src/` may use the
//! modules of the layers below its own, never one beside it or above it. So any part can be
//! read, tested or replaced with only what is below it, and no two modules depend on each
//! other. This test parses the sources (with `syn`, so a `use` group spread over lines, nested
//! groups, `self::` and `super::super::` paths are read as the compiler reads them) and names
//! every path into another module that breaks the rule.

use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// From the bottom up. A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    // The YAML contract as plain data.
    &["spec"],
    // What survives restarts: folders with one writer, files checked when read back.
    &["state"],
    // Feature modules, each owning its own types (`fleet`: the typed operations and reports
    // edges exchange; `audit`: the trail of admin changes).
    &[
        "metrics",
        "access_log",
        "audit",
        "filters",
        "cache",
        "tls",
        "fleet",
        "insight",
    ],
    // Certificates from ACME, installed through `tls`, kept in `state` or a fleet's store.
    &["acme"],
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

/// The module path of a file of `src/` (`pages/store.rs` is `["pages", "store"]`,
/// `pages/mod.rs` is `["pages"]`); `None` for the crate root and `main` (another crate).
fn module_path_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(src).ok()?;
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = path.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if path.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        path.push(stem.to_string());
    }
    Some(path)
}

/// A path the code names, resolved to the crate: its segments from the crate root.
struct Named {
    segments: Vec<String>,
    line: usize,
    written: String,
}

/// Resolves `crate::`, `self::` and `super::` (any number) against the module `at`; `None`
/// for a path that starts anywhere else (an external crate, a local item, a child module:
/// none of them can reach another top-level module without an anchored path first).
fn resolve(at: &[String], segments: &[String]) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => at.to_vec(),
        "super" => at[..at.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    let mut rest = rest;
    while let Some(("super", after)) = rest.split_first().map(|(s, a)| (s.as_str(), a)) {
        base.pop()?;
        rest = after;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Walks one file: every `use` tree (each leaf of a group, however nested or spread over
/// lines), every path in code and types, and `crate::`/`super::` paths inside macro calls
/// (their tokens are not parsed as code).
struct Collector {
    module: Vec<String>,
    found: Vec<Named>,
}

impl Collector {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        if let Some(resolved) = resolve(&self.module, &segments) {
            self.found.push(Named {
                segments: resolved,
                line,
                written: segments.join("::"),
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => self.use_leaf(prefix, name.ident.to_string(), &name.ident),
            syn::UseTree::Rename(rename) => self.use_leaf(prefix, rename.ident.to_string(), &rename.ident),
            syn::UseTree::Glob(glob) => {
                let line = glob.star_token.span.start().line;
                let mut segments = prefix.clone();
                segments.push("*".into());
                self.push(segments, line);
            }
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    /// `a::b::{self}` names `a::b`; `a::b::c` names `a::b::c`.
    fn use_leaf(&mut self, prefix: &[String], leaf: String, ident: &syn::Ident) {
        let mut segments = prefix.to_vec();
        if leaf != "self" || segments.is_empty() {
            segments.push(leaf);
        }
        self.push(segments, ident.span().start().line);
    }

    fn macro_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.macro_tokens(group.stream()),
                TokenTree::Ident(ident) if ["crate", "super"].contains(&ident.to_string().as_str()) => {
                    let line = ident.span().start().line;
                    let mut segments = vec![ident.to_string()];
                    let mut j = i + 1;
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.push(segments, line);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.push(segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, path);
    }

    /// `pub(crate)`, `pub(super)`, `pub(in crate::a)` say who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.macro_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }
}

/// Every path of `text` (the file of module `module`) into another module.
fn named_paths(module: &[String], text: &str) -> Result<Vec<Named>, syn::Error> {
    let file = syn::parse_file(text)?;
    let mut collector = Collector {
        module: module.to_vec(),
        found: Vec::new(),
    };
    collector.visit_file(&file);
    Ok(collector.found)
}

/// The top-level modules the file of `module` names, for the checker's own test.
fn used_modules(module: &[&str], text: &str) -> Vec<String> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    named_paths(&module, text)
        .expect("parse")
        .into_iter()
        .filter_map(|named| named.segments.first().cloned())
        .collect()
}

/// Every use of a module that is not below the user: `file:line: module uses other (...)`.
fn violations(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for file in rust_files(src) {
        let Some(module_path) = module_path_of(src, &file) else {
            continue;
        };
        let module = module_path[0].clone();
        let Some(own_layer) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` is in no layer of tests/architecture.rs; place it",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        let named = match named_paths(&module_path, &text) {
            Ok(named) => named,
            Err(error) => {
                problems.push(format!("{}: does not parse: {error}", file.display()));
                continue;
            }
        };
        for Named {
            segments,
            line,
            written,
        } in named
        {
            let Some(used) = segments.first() else {
                problems.push(format!(
                    "{}:{line}: `{module}` names the crate root itself (`{written}`)",
                    file.display()
                ));
                continue;
            };
            if *used == module {
                continue;
            }
            let verdict = match (used.as_str(), layer_of(used)) {
                // `use super::*` at the top of a module reaches every module at once.
                ("*", _) => "every module (a glob of the crate root)",
                (_, Some(layer)) if layer < own_layer => continue,
                (_, Some(layer)) if layer == own_layer => "beside it, in the same layer",
                (_, Some(_)) => "above it",
                (_, None) => continue, // an item of the crate root, not a module
            };
            problems.push(format!(
                "{}:{line}: `{module}` uses `{used}`, which is {verdict}: {written}",
                file.display()
            ));
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
        .filter_map(|file| module_path_of(&src, file))
        .map(|path| path[0].clone())
        .collect();
    modules.sort();
    modules.dedup();
    let unplaced: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
    assert!(modules.len() >= 10, "src/ was not read: {modules:?}");
}

#[test]
fn the_checker_sees_every_form_of_path() {
    let pages = ["pages"];
    assert_eq!(used_modules(&pages, "use crate::spec::Location;"), ["spec"]);
    // A group, nested groups and `self` in a group.
    assert_eq!(
        used_modules(
            &pages,
            "use crate::{pages::Rule, upstream::{self, Peer}, spec::{A, b::{C, D}}};"
        ),
        ["pages", "upstream", "upstream", "spec", "spec", "spec"]
    );
    // A group spread over lines, as rustfmt writes it.
    assert_eq!(
        used_modules(
            &pages,
            "use crate::{\n    runtime::RouteTable,\n    spec::Location,\n};"
        ),
        ["runtime", "spec"]
    );
    // Paths in code, in types and in macro calls.
    assert_eq!(
        used_modules(
            &pages,
            "fn f(t: &crate::runtime::T) { let x = crate::metrics::METRICS.requests; \
             println!(\"{}\", crate::admin::X); }"
        ),
        ["runtime", "metrics", "admin"]
    );
    // `self::` stays in the module; `super::` climbs one module per `super`.
    assert_eq!(used_modules(&["pages", "store"], "use self::x::Y;"), ["pages"]);
    assert_eq!(used_modules(&["pages", "store"], "use super::Rule;"), ["pages"]);
    assert_eq!(
        used_modules(&["pages", "store"], "use super::super::runtime::RouteTable;"),
        ["runtime"]
    );
    assert_eq!(
        used_modules(&["pages"], "mod tests { use super::super::proxy::Edge; }"),
        ["proxy"]
    );
    // Nothing else is a path into the crate: other crates, comments, strings, locals,
    // visibilities.
    assert!(used_modules(
        &pages,
        "use my_crate::spec; use store::X; // crate::runtime::X\n\
         const S: &str = \"crate::runtime::X\"; pub(crate) fn f() {} pub(super) struct T;"
    )
    .is_empty());

    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "spec/mod.rs",
        "use crate::runtime::RouteTable; // a reverse use\n",
    );
    write(
        "spec/values.rs",
        "use crate::{\n    metrics::Metrics,\n    tls::Certs,\n};\n",
    );
    write(
        "pages/inline.rs",
        "fn f() {\n    let _ = super::super::source::load();\n}\n",
    );
    write("cache/mod.rs", "use super::*;\n");
    write("runtime.rs", "use crate::spec;\nuse crate::{pages, source::X};\n");
    let problems = violations(dir.path());
    let expected = [
        "cache/mod.rs:1: `cache` uses `*`, which is every module (a glob of the crate root): super::*",
        "pages/inline.rs:2: `pages` uses `source`, which is above it: super::super::source::load",
        "spec/mod.rs:1: `spec` uses `runtime`, which is above it: crate::runtime::RouteTable",
        "spec/values.rs:2: `spec` uses `metrics`, which is above it: crate::metrics::Metrics",
        "spec/values.rs:3: `spec` uses `tls`, which is above it: crate::tls::Certs",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(
            problem.ends_with(expected),
            "{problem:?} should end with {expected:?}"
        );
    }
}
