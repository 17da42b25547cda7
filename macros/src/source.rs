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
use std::path::PathBuf;
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
    /// Names a `use` brings in, under the name it gives them.
    imported: HashSet<String>,
    /// A glob import that could bring in a name from outside this file.
    open_glob: bool,
    /// Identifiers inside item macros (including `macro_rules!` bodies),
    /// which could define items of that name.
    in_item_macros: HashSet<String>,
}

thread_local! {
    /// The last file summarised, keyed by its contents: a proc-macro server
    /// (rust-analyzer's) outlives edits, so a path alone is not a key.
    static LAST: RefCell<Option<(PathBuf, String, std::rc::Rc<Summary>)>> =
        const { RefCell::new(None) };
}

fn summary_at(span: proc_macro::Span) -> Option<std::rc::Rc<Summary>> {
    let path = span.local_file()?;
    let text = std::fs::read_to_string(&path).ok()?;
    let cached = LAST.with(|last| match &*last.borrow() {
        Some((p, t, summary)) if *p == path && *t == text => Some(summary.clone()),
        _ => None,
    });
    if cached.is_some() {
        return cached;
    }
    let file = syn::parse_file(&text).ok()?;
    let mut collector = Collector {
        summary: Summary::default(),
        inline_mod_depth: 0,
    };
    collector.visit_file(&file);
    let summary = std::rc::Rc::new(collector.summary);
    LAST.with(|last| *last.borrow_mut() = Some((path, text, summary.clone())));
    Some(summary)
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

/// Whether the bare name `name`, written at `span`, is certainly a plain fn
/// and not an entry: the file defines a free fn of that name without
/// `#[process_entry]`, and nothing in the file could give the name an
/// entry's marker type (no item, import, open glob or item macro of it, and
/// no fn of that name with the attribute).
pub(crate) fn is_plain_fn(span: proc_macro::Span, name: &str) -> bool {
    let Some(summary) = summary_at(span) else {
        return false;
    };
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
        && !summary.imported.contains(name)
        && !summary.open_glob
        && !summary.in_item_macros.contains(name)
}

struct Collector {
    summary: Summary,
    /// How many inline `mod m { … }` enclose the current item: a `use
    /// super::*` within that many levels names a module of this file.
    inline_mod_depth: usize,
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

    fn use_tree(&mut self, tree: &syn::UseTree, supers: usize, first: bool) {
        match tree {
            syn::UseTree::Path(path) => {
                let root = path.ident.to_string();
                let supers = if root == "super" { supers + 1 } else { supers };
                // A glob below `std`, `core` or `alloc` brings in no entry;
                // nor does one of a module defined in this file (all of
                // whose names this summary sees).
                let closed_root = first && matches!(root.as_str(), "std" | "core" | "alloc");
                if closed_root {
                    self.closed_use_tree(&path.tree);
                } else {
                    self.use_tree(&path.tree, supers, first && root == "super");
                }
            }
            syn::UseTree::Name(name) => {
                self.summary.imported.insert(unraw(&name.ident));
            }
            syn::UseTree::Rename(rename) => {
                self.summary.imported.insert(unraw(&rename.rename));
            }
            syn::UseTree::Glob(_) => {
                let within_file = first && supers > 0 && supers <= self.inline_mod_depth;
                if !within_file {
                    self.summary.open_glob = true;
                }
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, supers, first);
                }
            }
        }
    }

    /// A `use` below a crate that defines no entries: only its names count.
    fn closed_use_tree(&mut self, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => self.closed_use_tree(&path.tree),
            syn::UseTree::Name(name) => {
                self.summary.imported.insert(unraw(&name.ident));
            }
            syn::UseTree::Rename(rename) => {
                self.summary.imported.insert(unraw(&rename.rename));
            }
            syn::UseTree::Glob(_) => {}
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.closed_use_tree(tree);
                }
            }
        }
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

    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        self.type_name(&item.ident);
        syn::visit::visit_item_struct(self, item);
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        self.type_name(&item.ident);
        syn::visit::visit_item_enum(self, item);
    }

    fn visit_item_union(&mut self, item: &'ast syn::ItemUnion) {
        self.type_name(&item.ident);
        syn::visit::visit_item_union(self, item);
    }

    fn visit_item_type(&mut self, item: &'ast syn::ItemType) {
        self.type_name(&item.ident);
        syn::visit::visit_item_type(self, item);
    }

    fn visit_item_trait(&mut self, item: &'ast syn::ItemTrait) {
        self.type_name(&item.ident);
        syn::visit::visit_item_trait(self, item);
    }

    fn visit_item_trait_alias(&mut self, item: &'ast syn::ItemTraitAlias) {
        self.type_name(&item.ident);
        syn::visit::visit_item_trait_alias(self, item);
    }

    fn visit_item_extern_crate(&mut self, item: &'ast syn::ItemExternCrate) {
        match &item.rename {
            Some((_, rename)) => self.type_name(rename),
            None => self.type_name(&item.ident),
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.type_name(&item.ident);
        if item.content.is_some() {
            self.inline_mod_depth += 1;
            syn::visit::visit_item_mod(self, item);
            self.inline_mod_depth -= 1;
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, 0, true);
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
