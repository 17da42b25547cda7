//! What the caller's source file says about a name: for two mistakes that the
//! tokens a macro receives cannot show.
//!
//! - `#[process_entry]` on an associated fn that names neither `self` nor
//!   `Self` looks exactly like a free fn.
//! - `spawn!(f, …)` where `f` is a plain fn fails in name resolution, where no
//!   trait can attach a message.
//!
//! Both read the file the macro was called from (`Span::local_file`) and parse
//! it. This only ever chooses a clearer error for code that fails anyway: when
//! the file cannot be read or parsed, or the answer is not certain, the caller
//! keeps its plain expansion and rustc's own error.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use syn::visit::Visit;

/// Where a fn of some name is defined in the file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A free fn: in a module, or local to a block.
    Free,
    /// An associated fn of an `impl` block.
    Impl,
    /// An associated fn of a `trait`.
    Trait,
}

#[derive(Clone, Copy)]
struct Sighting {
    place: Place,
    /// Carries an attribute named `process_entry`.
    marked: bool,
    /// Carries an attribute other than the common built-in ones (it could be
    /// `#[process_entry]` renamed on import, or generate one).
    other_attributes: bool,
}

/// What one file defines and imports, by name.
#[derive(Default)]
struct Summary {
    fns: HashMap<String, Vec<Sighting>>,
    /// Names of items in the type namespace (struct, enum, mod, …).
    types: HashSet<String>,
    /// A glob import that could bring in a name from outside this file.
    open_glob: bool,
    /// Identifiers inside item macros (including `macro_rules!` bodies),
    /// which could define items of that name.
    in_item_macros: HashSet<String>,
    /// Each name a `use` brings in (under the name it gives it): where it
    /// comes from (its path, as written), and whether that `use` is at the
    /// file's top level.
    imported: HashMap<String, Vec<(Vec<String>, bool)>>,
    /// Every `mod` item, by name.
    mods: HashMap<String, Vec<ModDecl>>,
}

/// A `mod` item.
struct ModDecl {
    /// At the file's top level (not in an inline module or a block).
    top_level: bool,
    /// `mod m { … }` rather than `mod m;`.
    inline: bool,
    /// Its `#[path = "…"]`, if it has one.
    path: Option<String>,
}

thread_local! {
    /// Files summarised, keyed by path and contents: a proc-macro server
    /// (rust-analyzer's) outlives edits, so a path alone is not a key.
    static SEEN: RefCell<HashMap<PathBuf, (String, Rc<Summary>)>> =
        RefCell::new(HashMap::new());
}

/// The most files kept summarised at once.
const MAX_SEEN: usize = 16;

fn summary_of(path: &Path) -> Option<Rc<Summary>> {
    let text = std::fs::read_to_string(path).ok()?;
    let cached = SEEN.with(|seen| match seen.borrow().get(path) {
        Some((t, summary)) if *t == text => Some(summary.clone()),
        _ => None,
    });
    if cached.is_some() {
        return cached;
    }
    let file = syn::parse_file(&text).ok()?;
    let mut collector = Collector {
        summary: Summary::default(),
        inline_mod_depth: 0,
        block_depth: 0,
    };
    collector.visit_file(&file);
    let summary = Rc::new(collector.summary);
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        seen.insert(path.to_path_buf(), (text, summary.clone()));
    });
    Some(summary)
}

fn summary_at(span: proc_macro::Span) -> Option<Rc<Summary>> {
    summary_of(&span.local_file()?)
}

/// Where the `#[process_entry]` fn `name`, whose attribute is at `span`, is
/// certainly defined, if the file says: `Some(Place::Impl)` when every fn of
/// that name that has the attribute (or could have it, under another name or
/// through another attribute) is an associated fn of an `impl`.
pub(crate) fn marked_fn_place(span: proc_macro::Span, name: &str) -> Option<Place> {
    let summary = summary_at(span)?;
    let marked: Vec<Place> = summary
        .fns
        .get(name)?
        .iter()
        .filter(|s| s.marked || s.other_attributes)
        .map(|s| s.place)
        .collect();
    let first = *marked.first()?;
    marked.iter().all(|&p| p == first).then_some(first)
}

/// Whether the entry path `path`, written at `span`, certainly names a plain
/// fn and not an entry: then the fn's name and, if it is in another file,
/// that file.
///
/// `path` is a bare name, or a path through `mod m;` items (`m::f`,
/// `self::m::f`, `crate::m::f` from `main.rs` or `lib.rs`). A bare name is
/// followed through one `use` of the same kinds. The file that defines the
/// fn must show a plain fn of that name, and nothing that could give the
/// name an entry's marker type (no item, import, open glob or item macro of
/// it, and no fn of that name with the attribute).
pub(crate) fn plain_fn(
    span: proc_macro::Span,
    path: &[String],
) -> Option<(String, Option<PathBuf>)> {
    let here = span.local_file()?;
    let summary = summary_of(&here)?;
    let (name, rest) = path.split_last()?;
    if rest.is_empty() {
        if is_plain_fn(&summary, name) {
            return Some((name.clone(), None));
        }
        // Brought in by one `use` at the top of the file, and nothing else.
        let [(from, true)] = summary.imported.get(name)?.as_slice() else {
            return None;
        };
        if summary.fns.contains_key(name)
            || summary.types.contains(name)
            || summary.open_glob
            || summary.in_item_macros.contains(name)
        {
            return None;
        }
        return in_module(&here, &summary, from);
    }
    in_module(&here, &summary, path)
}

/// `path` (`m::f`) from the top of the file `here`: the fn `f`, if the file
/// of module `m` shows it is plain.
fn in_module(here: &Path, top: &Summary, path: &[String]) -> Option<(String, Option<PathBuf>)> {
    let (name, modules) = path.split_last()?;
    let modules = match modules.first().map(String::as_str) {
        Some("self") => &modules[1..],
        Some("crate") if is_crate_root(here) => &modules[1..],
        Some("crate" | "super") => return None,
        _ => modules,
    };
    let (first, deeper) = modules.split_first()?;
    let mut file = module_file(here, top, first)?;
    let mut summary = summary_of(&file)?;
    for module in deeper {
        file = module_file(&file, &summary, module)?;
        summary = summary_of(&file)?;
    }
    is_plain_fn(&summary, name).then(|| (name.clone(), Some(file)))
}

/// Whether `file` is surely a crate root, so that `crate::` starts there.
fn is_crate_root(file: &Path) -> bool {
    matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("main.rs" | "lib.rs")
    )
}

/// The file of module `name`, declared as `mod name;` at the top of `file`
/// (whose summary is `summary`) and nowhere else in it, and named by no
/// `use`. Without a `#[path]`, exactly one of the places rustc looks must
/// exist (`dir/name.rs` or `dir/name/mod.rs` beside a crate root or a
/// `mod.rs`; under `dir/stem/` beside any other file): which of the two
/// kinds `file` is, its name alone does not say.
fn module_file(file: &Path, summary: &Summary, name: &str) -> Option<PathBuf> {
    let [decl] = summary.mods.get(name)?.as_slice() else {
        return None;
    };
    if !decl.top_level || decl.inline || summary.imported.contains_key(name) {
        return None;
    }
    let dir = file.parent()?;
    if let Some(path) = &decl.path {
        return Some(dir.join(path));
    }
    let stem = file.file_stem()?;
    let candidates = [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
        dir.join(stem).join(format!("{name}.rs")),
        dir.join(stem).join(name).join("mod.rs"),
    ];
    let mut found = candidates.into_iter().filter(|c| c.is_file());
    match (found.next(), found.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// Whether the file defines a free fn `name` without `#[process_entry]`,
/// and nothing in it could give the name an entry's marker type.
fn is_plain_fn(summary: &Summary, name: &str) -> bool {
    let Some(sightings) = summary.fns.get(name) else {
        return false;
    };
    let plain_free = sightings
        .iter()
        .any(|s| s.place == Place::Free && !s.marked && !s.other_attributes);
    let maybe_entry = sightings.iter().any(|s| s.marked || s.other_attributes);
    plain_free
        && !maybe_entry
        && !summary.types.contains(name)
        && !summary.imported.contains_key(name)
        && !summary.open_glob
        && !summary.in_item_macros.contains(name)
}

struct Collector {
    summary: Summary,
    /// How many inline `mod m { … }` enclose the current item: a `use
    /// super::*` within that many levels names a module of this file.
    inline_mod_depth: usize,
    /// How many blocks (fn bodies, …) enclose the current item.
    block_depth: usize,
}

/// Attributes that cannot define an entry or rename the fn.
const BUILT_IN: &[&str] = &[
    "doc",
    "allow",
    "warn",
    "deny",
    "expect",
    "inline",
    "cold",
    "must_use",
    "cfg",
    "track_caller",
];

impl Collector {
    fn sighting(&mut self, ident: &syn::Ident, attrs: &[syn::Attribute], place: Place) {
        let mut marked = false;
        let mut other_attributes = false;
        for attr in attrs {
            let last = attr.path().segments.last().map(|s| s.ident.to_string());
            match last.as_deref() {
                Some("process_entry") => marked = true,
                Some(name) if BUILT_IN.contains(&name) && attr.path().segments.len() == 1 => {}
                _ => other_attributes = true,
            }
        }
        self.summary
            .fns
            .entry(unraw(ident))
            .or_default()
            .push(Sighting {
                place,
                marked,
                other_attributes,
            });
    }

    fn type_name(&mut self, ident: &syn::Ident) {
        self.summary.types.insert(unraw(ident));
    }

    fn top_level(&self) -> bool {
        self.inline_mod_depth == 0 && self.block_depth == 0
    }

    /// Records a `use` tree: where each name it brings in comes from, and
    /// whether a glob in it could bring in names from outside this file.
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        let mut import = |name: &syn::Ident, from: &syn::Ident, prefix: &[String]| {
            let mut path = prefix.to_vec();
            path.push(unraw(from));
            let top_level = self.top_level();
            self.summary
                .imported
                .entry(unraw(name))
                .or_default()
                .push((path, top_level));
        };
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(unraw(&path.ident));
                self.use_tree(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(name) => import(&name.ident, &name.ident, prefix),
            syn::UseTree::Rename(rename) => import(&rename.rename, &rename.ident, prefix),
            syn::UseTree::Glob(_) => {
                if !self.glob_within_file(prefix) {
                    self.summary.open_glob = true;
                }
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }

    /// Whether a glob of the module at `prefix` brings in no entry from
    /// outside this file: it is below `std`, `core` or `alloc`, or it is
    /// `super::*` (or `super::super::*`, …) of an inline module, whose
    /// parent's names this summary sees.
    fn glob_within_file(&self, prefix: &[String]) -> bool {
        if matches!(
            prefix.first().map(String::as_str),
            Some("std" | "core" | "alloc")
        ) {
            return true;
        }
        let supers = prefix.iter().take_while(|s| *s == "super").count();
        supers > 0 && supers == prefix.len() && supers <= self.inline_mod_depth
    }

    fn macro_idents(&mut self, tokens: proc_macro2::TokenStream) {
        for token in tokens {
            match token {
                proc_macro2::TokenTree::Ident(ident) => {
                    self.summary.in_item_macros.insert(unraw(&ident));
                }
                proc_macro2::TokenTree::Group(group) => self.macro_idents(group.stream()),
                _ => {}
            }
        }
    }
}

fn unraw(ident: &syn::Ident) -> String {
    let name = ident.to_string();
    name.strip_prefix("r#").map(str::to_owned).unwrap_or(name)
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.sighting(&item.sig.ident, &item.attrs, Place::Free);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.sighting(&item.sig.ident, &item.attrs, Place::Impl);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        self.sighting(&item.sig.ident, &item.attrs, Place::Trait);
        syn::visit::visit_trait_item_fn(self, item);
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let type_name = match item {
            syn::Item::Struct(item) => Some(&item.ident),
            syn::Item::Enum(item) => Some(&item.ident),
            syn::Item::Union(item) => Some(&item.ident),
            syn::Item::Type(item) => Some(&item.ident),
            syn::Item::Trait(item) => Some(&item.ident),
            syn::Item::TraitAlias(item) => Some(&item.ident),
            syn::Item::ExternCrate(item) => Some(match &item.rename {
                Some((_, rename)) => rename,
                None => &item.ident,
            }),
            _ => None,
        };
        if let Some(ident) = type_name {
            self.type_name(ident);
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.type_name(&item.ident);
        let path = item.attrs.iter().find_map(|attr| match &attr.meta {
            syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(path),
                    ..
                }) => Some(path.value()),
                _ => None,
            },
            _ => None,
        });
        let decl = ModDecl {
            top_level: self.top_level(),
            inline: item.content.is_some(),
            path,
        };
        self.summary
            .mods
            .entry(unraw(&item.ident))
            .or_default()
            .push(decl);
        if item.content.is_some() {
            self.inline_mod_depth += 1;
            syn::visit::visit_item_mod(self, item);
            self.inline_mod_depth -= 1;
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        // `::krate::…` is kept as a path no module of this file starts.
        let mut prefix = Vec::new();
        if item.leading_colon.is_some() {
            prefix.push("::".to_owned());
        }
        self.use_tree(&item.tree, &mut prefix);
    }

    fn visit_block(&mut self, block: &'ast syn::Block) {
        self.block_depth += 1;
        syn::visit::visit_block(self, block);
        self.block_depth -= 1;
    }

    fn visit_item_macro(&mut self, item: &'ast syn::ItemMacro) {
        if let Some(ident) = &item.ident {
            self.summary.in_item_macros.insert(unraw(ident));
        }
        self.macro_idents(item.mac.tokens.clone());
    }

    fn visit_foreign_item_fn(&mut self, item: &'ast syn::ForeignItemFn) {
        // An `extern` block's fn is in the value namespace like a free fn,
        // but it is never an entry: count it as one with an unknown attribute
        // so that it makes no answer certain.
        self.summary
            .fns
            .entry(unraw(&item.sig.ident))
            .or_default()
            .push(Sighting {
                place: Place::Free,
                marked: false,
                other_attributes: true,
            });
    }
}
