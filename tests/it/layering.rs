//! The layering the code map promises, checked on the source: within `annal-core` and `annal`,
//! no two modules import each other (directly or round a longer circle), and the pure core
//! names no clock, file, socket, thread, process or environment, and depends on no runtime
//! or store. A new import that closes a circle fails here with the circle spelled out.
//!
//! Modules are files and inline `mod` blocks; an edge is a path to another module's item
//! (`crate::x::Y`, `super::x::Y`, in `use` items and in code), followed through re-exports
//! (`crate::Ctx` is `runtime::context`'s). A module using its own submodules or its parents
//! is containment, not an edge; `#[cfg(test)]` code is left out, it is not the layering, and
//! so is the core's `files` feature (`Policy::load`, the one file read, at start-up).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

type ModPath = Vec<String>;

/// One crate's modules and the imports between them.
struct CrateGraph {
    modules: BTreeSet<ModPath>,
    /// `(module, name)` → the path a `use` in that module binds `name` to.
    bindings: BTreeMap<(ModPath, String), ModPath>,
    /// Raw references: from module → absolute path (module prefix plus item names).
    references: Vec<(ModPath, ModPath)>,
    /// Every `std::…` path the crate names, with the file and module it is in.
    std_paths: Vec<(PathBuf, ModPath, String)>,
    /// Modules declared under a left-out `cfg` (`#[cfg(test)] mod tests;`): their files are
    /// not the layering either.
    left_out: BTreeSet<ModPath>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `[a, b]`, `src/a/mod.rs` → `[a]`, `src/lib.rs` → `[]`.
fn file_module(src: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(src).expect("file under src");
    let mut parts: ModPath = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Code the layering leaves out: `#[cfg(test)]` (and `cfg(all(test, …))`) items, and the
/// core's `files` feature (`Policy::load`, reading a policy file at start-up).
fn is_left_out(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        if !attr.path().is_ident("cfg") {
            return false;
        }
        let Ok(meta) = attr.parse_args::<syn::Meta>() else {
            return false;
        };
        let text = quote_free(&meta);
        text == "test" || text.starts_with("all(test") || text == "feature = \"files\""
    })
}

/// A `cfg` predicate as text, spaces normalised.
fn quote_free(meta: &syn::Meta) -> String {
    use quote::ToTokens;
    meta.to_token_stream()
        .to_string()
        .replace(" (", "(")
        .replace("( ", "(")
}

/// Walks one file, tracking inline modules.
struct FileVisitor<'g> {
    graph: &'g mut CrateGraph,
    file: PathBuf,
    current: ModPath,
}

impl FileVisitor<'_> {
    /// A path as written in `current`, made absolute when it is crate-relative (`crate::`,
    /// `super::`, `self::`); other paths (locals, extern crates, prelude) are not edges.
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let mut iter = segments.iter().peekable();
        let mut base = match iter.peek().map(|s| s.as_str()) {
            Some("crate") => {
                iter.next();
                Vec::new()
            }
            Some("super") | Some("self") => self.current.clone(),
            _ => return None,
        };
        while let Some(segment) = iter.peek() {
            match segment.as_str() {
                "super" => {
                    base.pop();
                    iter.next();
                }
                "self" => {
                    iter.next();
                }
                _ => break,
            }
        }
        base.extend(iter.cloned());
        Some(base)
    }

    fn record(&mut self, segments: Vec<String>, bound_as: Option<String>) {
        if segments.first().is_some_and(|s| s == "std") {
            self.graph.std_paths.push((
                self.file.clone(),
                self.current.clone(),
                segments.join("::"),
            ));
        }
        if let Some(target) = self.absolute(&segments) {
            if let Some(name) = bound_as {
                self.graph
                    .bindings
                    .insert((self.current.clone(), name), target.clone());
            }
            self.graph.references.push((self.current.clone(), target));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let mut full = prefix.clone();
                if name != "self" {
                    full.push(name.clone());
                }
                let bound = if name == "self" {
                    prefix.last().cloned()
                } else {
                    Some(name)
                };
                self.record(full, bound);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.record(full, Some(r.rename.to_string()));
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone(), None),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for FileVisitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_left_out(attrs) {
            syn::visit::visit_item(self, item);
        } else if let syn::Item::Mod(module) = item {
            let mut path = self.current.clone();
            path.push(module.ident.to_string());
            self.graph.left_out.insert(path);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Fn(f) => &f.attrs,
            syn::ImplItem::Const(c) => &c.attrs,
            syn::ImplItem::Type(t) => &t.attrs,
            _ => return syn::visit::visit_impl_item(self, item),
        };
        if !is_left_out(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        let name = module.ident.to_string();
        let mut path = self.current.clone();
        path.push(name);
        self.graph.modules.insert(path.clone());
        if module.content.is_some() {
            let outer = std::mem::replace(&mut self.current, path);
            syn::visit::visit_item_mod(self, module);
            self.current = outer;
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        self.use_tree(&mut prefix, &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.record(segments, None);
        syn::visit::visit_path(self, path);
    }
}

fn crate_graph(src: &Path) -> CrateGraph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = CrateGraph {
        modules: BTreeSet::new(),
        bindings: BTreeMap::new(),
        references: Vec::new(),
        std_paths: Vec::new(),
        left_out: BTreeSet::new(),
    };
    for file in &files {
        graph.modules.insert(file_module(src, file));
    }
    for file in &files {
        let text = std::fs::read_to_string(file).expect("source readable");
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut visitor = FileVisitor {
            graph: &mut graph,
            file: file.clone(),
            current: file_module(src, file),
        };
        visitor.visit_file(&parsed);
    }
    let left_out = graph.left_out.clone();
    let kept = |module: &ModPath| {
        !left_out
            .iter()
            .any(|out| module.len() >= out.len() && module[..out.len()] == out[..])
    };
    graph.references.retain(|(from, _)| kept(from));
    graph.std_paths.retain(|(_, module, _)| kept(module));
    graph
}

impl CrateGraph {
    /// The module an absolute path lands in, re-exports followed.
    fn module_of(&self, path: &ModPath) -> ModPath {
        let mut path = path.clone();
        for _ in 0..16 {
            let mut prefix = path.len();
            while prefix > 0 && !self.modules.contains(&path[..prefix]) {
                prefix -= 1;
            }
            let module = path[..prefix].to_vec();
            let Some(next) = path.get(prefix) else {
                return module;
            };
            match self.bindings.get(&(module.clone(), next.clone())) {
                Some(target) if target != &path[..=prefix] => {
                    let mut followed = target.clone();
                    followed.extend(path[prefix + 1..].iter().cloned());
                    path = followed;
                }
                _ => return module,
            }
        }
        path
    }

    /// Edges between sibling modules: from `a::b::c` to `a::d::e` is `a::b → a::d`.
    fn sibling_edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (from, to) in &self.references {
            let to = self.module_of(to);
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // containment: a module and its own parents or children
            }
            edges
                .entry(from[..=common].to_vec())
                .or_default()
                .insert(to[..=common].to_vec());
        }
        edges
    }
}

/// Every circle among sibling modules, each as `a -> b -> a`.
fn circles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    fn walk(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            circle.push(node.join("::"));
            found.push(circle.join(" -> "));
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            walk(next, edges, stack, done, found);
        }
        stack.pop();
        done.insert(node.clone());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        walk(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn assert_no_circles(crate_dir: &str) -> CrateGraph {
    let graph = crate_graph(&workspace_root().join(crate_dir).join("src"));
    let found = circles(&graph.sibling_edges());
    assert!(
        found.is_empty(),
        "{crate_dir}: modules import each other:\n  {}",
        found.join("\n  ")
    );
    graph
}

#[test]
fn core_modules_import_one_way() {
    let graph = assert_no_circles("core");
    // The check sees the edges it must: the codec encodes events, replay folds them.
    let edges = graph.sibling_edges();
    let module = |m: &str| vec![m.to_string()];
    assert!(edges[&module("codec")].contains(&module("event")));
    assert!(edges[&module("replay")].contains(&module("event")));
}

#[test]
fn engine_modules_import_one_way() {
    let graph = assert_no_circles("engine");
    // Re-exports are followed: `step` builds on `context`, reached as `crate::runtime::context`.
    let edges = graph.sibling_edges();
    let runtime = |m: &str| vec!["runtime".to_string(), m.to_string()];
    assert!(edges[&runtime("step")].contains(&runtime("context")));
    assert!(edges[&runtime("operator")].contains(&runtime("acts")));
}

#[test]
fn a_circle_is_found_and_spelled_out() {
    let module = |m: &str| vec![m.to_string()];
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    edges.entry(module("a")).or_default().insert(module("b"));
    edges.entry(module("b")).or_default().insert(module("c"));
    edges.entry(module("c")).or_default().insert(module("a"));
    edges.entry(module("d")).or_default().insert(module("a"));
    assert_eq!(circles(&edges), vec!["a -> b -> c -> a".to_string()]);
}

#[test]
fn the_core_names_no_clock_file_socket_or_thread() {
    let graph = crate_graph(&workspace_root().join("core").join("src"));
    const IMPURE: [&str; 8] = [
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "std::env",
        "std::io::stdin",
        "std::time::SystemTime",
        "std::time::Instant",
    ];
    let impure: Vec<String> = graph
        .std_paths
        .iter()
        .filter(|(_, _, path)| IMPURE.iter().any(|bad| path.starts_with(bad)))
        .map(|(file, _, path)| format!("{}: {path}", file.display()))
        .collect();
    assert!(impure.is_empty(), "the pure core does I/O: {impure:?}");
}

#[test]
fn the_core_depends_on_no_runtime_or_store() {
    let manifest = std::fs::read_to_string(workspace_root().join("core").join("Cargo.toml"))
        .expect("core/Cargo.toml");
    let manifest: toml::Table = manifest.parse().expect("core/Cargo.toml parses");
    let dependencies: BTreeSet<&str> = manifest["dependencies"]
        .as_table()
        .expect("[dependencies]")
        .keys()
        .map(String::as_str)
        .collect();
    // Encoding, errors, configuration, hashing, signatures and log events: nothing that
    // waits, reads a clock or touches a disk.
    let pure: BTreeSet<&str> = [
        "serde",
        "serde_json",
        "bincode",
        "thiserror",
        "toml",
        "tracing",
        "blake3",
        // Signed checkpoints: signatures are verified and made from a given key, never
        // generated here (key generation, which needs randomness, is the CLI's).
        "ed25519-dalek",
        "base64",
        "sha2",
    ]
    .into();
    let extra: Vec<&&str> = dependencies.difference(&pure).collect();
    assert!(
        extra.is_empty(),
        "annal-core depends on {extra:?}; the pure core takes no runtime, store or I/O crate"
    );
}
