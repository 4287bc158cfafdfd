//! The crate's shape, kept: every `crate::` path in a top-level module's code (tests aside)
//! leads to a module of the same layer or a lower one, and no modules reach each other in a
//! circle, even through others. The table is the one in ARCHITECTURE.md; a module added to
//! `src/` fails this test until it is placed in a layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

/// The layers, lowest first. A module may use its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "clock",
            "cause",
            "sanitize",
            "throttle",
            "content_type",
            "delegate",
            "names",
            "command",
            "session",
            "refusals",
            "reply_times",
            "not_sent",
            "reply_limit",
            "tls",
            "breaker",
            "metrics",
            "redis_error",
            "config",
            "error",
        ],
    ),
    ("net", &["transport"]),
    ("topology", &["sentinel"]),
    ("conn", &["connection"]),
    (
        "pool",
        &[
            "pool_core",
            "manager",
            "validate",
            "multiplexed",
            "inner",
            "hedge",
            "prober",
            "pubsub",
            "pool",
        ],
    ),
    ("http", &["layer", "extract", "health", "prometheus"]),
    ("kit", &["testkit"]),
];

/// The `crate::` paths of one file, by the top-level module they name; items under
/// `#[cfg(test)]` left out, and the test-only module files they declare noted.
#[derive(Default)]
struct Uses {
    modules: BTreeSet<String>,
    test_only_files: Vec<String>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

impl Uses {
    fn use_tree(&mut self, tree: &syn::UseTree, after_crate: bool) {
        match tree {
            syn::UseTree::Path(path) if !after_crate && path.ident == "crate" => {
                self.use_tree(&path.tree, true);
            }
            syn::UseTree::Path(_) if !after_crate => {}
            syn::UseTree::Path(path) => {
                self.modules.insert(path.ident.to_string());
            }
            syn::UseTree::Name(name) if after_crate => {
                self.modules.insert(name.ident.to_string());
            }
            syn::UseTree::Rename(rename) if after_crate => {
                self.modules.insert(rename.ident.to_string());
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, after_crate);
                }
            }
            _ => {}
        }
    }

    /// Paths in macro input (`tracing::info!`, `macro_rules!` bodies) are tokens to syn.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Group(group) => self.tokens(group.stream()),
                TokenTree::Ident(ident) if ident == "crate" => {
                    if let [TokenTree::Punct(a), TokenTree::Punct(b), next, ..] = &tokens[i + 1..]
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        match next {
                            TokenTree::Ident(module) => {
                                self.modules.insert(module.to_string());
                            }
                            TokenTree::Group(group) => {
                                if let Ok(tree) = syn::parse2::<syn::UseTree>(group.stream()) {
                                    self.use_tree(&tree, true);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(module) => &module.attrs,
            syn::Item::Fn(function) => &function.attrs,
            syn::Item::Use(import) => &import.attrs,
            syn::Item::Impl(block) => &block.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Macro(item) => &item.attrs,
            _ => return visit::visit_item(self, item),
        };
        if is_cfg_test(attrs) {
            if let syn::Item::Mod(module) = item
                && module.content.is_none()
            {
                self.test_only_files.push(module.ident.to_string());
            }
            return;
        }
        visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, import: &'ast syn::ItemUse) {
        self.use_tree(&import.tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(module)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.modules.insert(module.ident.to_string());
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Each top-level module's imports of the others.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut parsed = Vec::new();
    let mut test_only = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let syntax = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut uses = Uses::default();
        uses.visit_file(&syntax);
        let dir = file.parent().unwrap().to_owned();
        for name in uses.test_only_files.drain(..) {
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(&name).join("mod.rs"));
        }
        parsed.push((file, uses));
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, uses) in parsed {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let top = top.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if top == "lib" || test_only.contains(&file) {
            continue;
        }
        let entry = graph.entry(top.clone()).or_default();
        entry.extend(uses.modules.into_iter().filter(|module| *module != top));
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() {
    let graph = imports();
    let unplaced: Vec<&String> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in a layer (tests/layering.rs and ARCHITECTURE.md): {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (module, imported) in &graph {
        let from = layer_of(module).unwrap();
        for target in imported {
            // Names that are not modules (`crate::Error`, re-exported at the root) are the
            // root's; the root re-exports, it holds nothing.
            let Some(to) = layer_of(target) else {
                continue;
            };
            if to > from {
                upward.push(format!(
                    "{module} ({}) uses {target} ({})",
                    LAYERS[from].0, LAYERS[to].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers (report upward through a trait the lower module defines, \
         or move the item down):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = imports();
    // Depth-first, with the path kept: a module met again on its own path closes a circle.
    fn visit<'g>(
        module: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) -> Option<Vec<&'g str>> {
        if let Some(start) = path.iter().position(|m| *m == module) {
            let mut circle = path[start..].to_vec();
            circle.push(module);
            return Some(circle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let circle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "an import circle: {}",
            circle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn the_layer_table_names_only_modules_that_exist() {
    let graph = imports();
    let stale: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().copied())
        .filter(|module| !graph.contains_key(*module))
        .collect();
    assert!(
        stale.is_empty(),
        "the layer table names modules src/ no longer has: {stale:?}"
    );
}
