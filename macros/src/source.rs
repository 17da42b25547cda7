//! What the caller's source file says about a name: for two mistakes that the
//! tokens a macro receives cannot show.
//!
//! - `#[process_entry]` on an associated fn that names neither `self` nor
//!   `Self` looks exactly like a free fn.
//! - `spawn!(f, …)` where `f` is a plain fn fails in name resolution, where no
//!   trait can attach a message.
//!
//! Both read the file the macro was called from (`Span::local_file`) and parse
//! it. This only ever chooses a clearer error for code that fails anyway, so
//! it answers only when the file settles the question: when the file cannot
//! be read or parsed, when it is nested too deeply to parse safely here, or
//! when anything in it could define items this parse does not see (a macro
//! call other than a few of std's, an attribute macro, `include!`), the
//! caller keeps its plain expansion and rustc's own error.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::SystemTime;
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
    /// Carries an attribute that is neither inert nor `process_entry` (it
    /// could be `#[process_entry]` renamed on import).
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
    /// Something in the file could define items this summary does not see:
    /// a macro call (other than a few of std's) or an attribute that is not
    /// inert.
    generates: bool,
}

/// A file's length and modification time, when summarised: a proc-macro
/// server (rust-analyzer's) outlives edits, so a path alone is not a key.
type Version = (u64, Option<SystemTime>);

/// A file's summary at some version (`None`: unreadable, or not to be
/// parsed here).
type Seen = (Version, Option<Rc<Summary>>);

thread_local! {
    /// Files summarised, by path.
    static SEEN: RefCell<HashMap<PathBuf, Seen>> = RefCell::new(HashMap::new());
}

/// The most files kept summarised at once.
const MAX_SEEN: usize = 256;

fn summary_at(span: proc_macro::Span) -> Option<Rc<Summary>> {
    let path = span.local_file()?;
    let meta = std::fs::metadata(&path).ok()?;
    let version = (meta.len(), meta.modified().ok());
    let cached = SEEN.with(|seen| match seen.borrow().get(&path) {
        Some((seen_version, summary)) if *seen_version == version => Some(summary.clone()),
        _ => None,
    });
    if let Some(summary) = cached {
        return summary;
    }
    let summary = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| summarise(&text))
        .map(Rc::new);
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        seen.insert(path, (version, summary.clone()));
    });
    summary
}

fn summarise(text: &str) -> Option<Summary> {
    // What rustc skips before the tokens (as `syn::parse_file` does): a
    // byte-order mark, and a `#!` line that does not start an attribute.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = match text.strip_prefix("#!") {
        Some(rest) if !rest.trim_start().starts_with('[') => {
            rest.find('\n').map_or("", |end| &rest[end..])
        }
        _ => text,
    };
    let tokens: proc_macro2::TokenStream = text.parse().ok()?;
    if !shallow(tokens.clone()) {
        return None;
    }
    let file: syn::File = syn::parse2(tokens).ok()?;
    let mut collector = Collector {
        summary: Summary::default(),
        inline_mod_depth: 0,
    };
    collector.visit_file(&file);
    Some(collector.summary)
}

/// How deep a recursion this parse lets syn go into, estimated from the
/// tokens: one level per enclosing bracket, and per operator in a run of
/// punctuation (`!!!!x`, `&&&&T`, `>>>>` closing nested generics) or
/// `else` in a bracket level (an `else if` chain), on the way to a token.
/// syn parses and visits by recursion, on the stack rustc lends a proc
/// macro, which a deeply nested file would overflow (rustc grows its own
/// stack instead); a few hundred levels were enough to crash it.
const MAX_NESTING: usize = 128;

/// Whether the tokens are shallow enough for syn to parse and visit safely
/// here. Walks them with a stack of its own, so it cannot overflow.
fn shallow(tokens: proc_macro2::TokenStream) -> bool {
    /// One bracket level: its tokens, the nesting it starts at, and the
    /// current run of punctuation and `else` chain in it.
    struct Level {
        tokens: proc_macro2::token_stream::IntoIter,
        base: usize,
        punct_run: usize,
        elses: usize,
        after_else: bool,
    }
    let mut levels = vec![Level {
        tokens: tokens.into_iter(),
        base: 0,
        punct_run: 0,
        elses: 0,
        after_else: false,
    }];
    while let Some(level) = levels.last_mut() {
        let Some(token) = level.tokens.next() else {
            levels.pop();
            continue;
        };
        match token {
            proc_macro2::TokenTree::Punct(_) => {
                level.punct_run += 1;
                level.after_else = false;
            }
            proc_macro2::TokenTree::Ident(ident) => {
                // An `if` not after an `else` starts a new chain.
                if ident == "if" && !level.after_else {
                    level.elses = 0;
                }
                level.after_else = ident == "else";
                if level.after_else {
                    level.elses += 1;
                }
                level.punct_run = 0;
            }
            proc_macro2::TokenTree::Literal(_) => {
                level.punct_run = 0;
                level.after_else = false;
            }
            proc_macro2::TokenTree::Group(group) => {
                let base = level.base + level.punct_run + level.elses + 1;
                level.punct_run = 0;
                level.after_else = false;
                if base > MAX_NESTING {
                    return false;
                }
                levels.push(Level {
                    tokens: group.stream().into_iter(),
                    base,
                    punct_run: 0,
                    elses: 0,
                    after_else: false,
                });
                continue;
            }
        }
        if level.base + level.punct_run + level.elses > MAX_NESTING {
            return false;
        }
    }
    true
}

/// Where the `#[process_entry]` fn `name`, whose attribute is at `span`, is
/// certainly defined, if the file says: `Some(Place::Impl)` when every fn of
/// that name that has the attribute (or could have it, under another name or
/// through another attribute) is an associated fn of an `impl`.
pub(crate) fn marked_fn_place(span: proc_macro::Span, name: &str) -> Option<Place> {
    let summary = summary_at(span)?;
    if summary.generates {
        return None;
    }
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
/// entry's marker type (no item, import or open glob of it, no fn of that
/// name with the attribute, nothing that generates items).
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
        && !summary.generates
        && !summary.types.contains(name)
        && !summary.imported.contains(name)
        && !summary.open_glob
}

struct Collector {
    summary: Summary,
    /// How many inline `mod m { … }` enclose the current item: a `use
    /// super::*` within that many levels names a module of this file.
    inline_mod_depth: usize,
}

/// Attributes that define nothing: rustc's own inert ones, `derive` (whose
/// output is impls), and serde's helper attribute.
const INERT_ATTRIBUTES: &[&str] = &[
    "allow",
    "automatically_derived",
    "cfg",
    "cold",
    "deny",
    "deprecated",
    "derive",
    "doc",
    "expect",
    "export_name",
    "forbid",
    "ignore",
    "inline",
    "link_section",
    "macro_export",
    "macro_use",
    "must_use",
    "no_mangle",
    "non_exhaustive",
    "path",
    "repr",
    "serde",
    "should_panic",
    "test",
    "track_caller",
    "used",
    "warn",
];

/// Macros that define no item visible outside their own expansion.
const INERT_MACROS: &[&str] = &[
    "assert",
    "assert_eq",
    "assert_ne",
    "cfg",
    "column",
    "compile_error",
    "concat",
    "dbg",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "entry",
    "env",
    "eprint",
    "eprintln",
    "file",
    "format",
    "format_args",
    "include_bytes",
    "include_str",
    "line",
    "macro_rules",
    "matches",
    "module_path",
    "option_env",
    "panic",
    "print",
    "println",
    "spawn",
    "stringify",
    "thread_local",
    "todo",
    "unimplemented",
    "unreachable",
    "vec",
    "write",
    "writeln",
];

/// Whether an attribute is `#[process_entry]` (`Some(true)`), inert
/// (`Some(false)`), or could be anything (`None`).
fn attribute_kind(attr: &syn::Attribute) -> Option<bool> {
    let path = attr.path();
    let last = path.segments.last()?.ident.to_string();
    if last == "process_entry" {
        return Some(true);
    }
    let first = path.segments.first()?.ident.to_string();
    let inert = match path.segments.len() {
        1 => INERT_ATTRIBUTES.contains(&last.as_str()),
        // Tool attributes.
        _ => matches!(first.as_str(), "rustfmt" | "clippy"),
    };
    inert.then_some(false)
}

impl Collector {
    fn sighting(&mut self, ident: &syn::Ident, attrs: &[syn::Attribute], place: Place) {
        let mut marked = false;
        let mut other_attributes = false;
        for attr in attrs {
            match attribute_kind(attr) {
                Some(true) => marked = true,
                Some(false) => {}
                None => other_attributes = true,
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

    /// Records the names a `use` tree brings in, and whether a glob in it
    /// could bring in names from outside this file.
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(unraw(&path.ident));
                self.use_tree(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                self.summary.imported.insert(unraw(&name.ident));
            }
            syn::UseTree::Rename(rename) => {
                self.summary.imported.insert(unraw(&rename.rename));
            }
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
        syn::visit::visit_foreign_item_fn(self, item);
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let type_name = match item {
            syn::Item::Struct(item) => Some(&item.ident),
            syn::Item::Enum(item) => Some(&item.ident),
            syn::Item::Union(item) => Some(&item.ident),
            syn::Item::Type(item) => Some(&item.ident),
            syn::Item::Trait(item) => Some(&item.ident),
            syn::Item::TraitAlias(item) => Some(&item.ident),
            syn::Item::Mod(item) => Some(&item.ident),
            syn::Item::ExternCrate(item) => Some(match &item.rename {
                Some((_, rename)) => rename,
                None => &item.ident,
            }),
            _ => None,
        };
        if let Some(ident) = type_name {
            self.summary.types.insert(unraw(ident));
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.inline_mod_depth += 1;
        syn::visit::visit_item_mod(self, item);
        self.inline_mod_depth -= 1;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        // `::krate::…` is kept as a path that no module of this file starts.
        let mut prefix = Vec::new();
        if item.leading_colon.is_some() {
            prefix.push("::".to_owned());
        }
        self.use_tree(&item.tree, &mut prefix);
        syn::visit::visit_item_use(self, item);
    }

    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if attribute_kind(attr).is_none() {
            self.summary.generates = true;
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let inert = mac.path.segments.last().is_some_and(|last| {
            let name = last.ident.to_string();
            INERT_MACROS.contains(&name.as_str())
        });
        if !inert {
            self.summary.generates = true;
        }
    }
}
