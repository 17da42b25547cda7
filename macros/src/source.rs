//! What the source file around a macro call says about its place.
//!
//! rustc tells a macro nothing about where it is used: an attribute cannot
//! see that its fn sits inside an `impl`, and `spawn!` cannot ask whether a
//! name is a fn or an entry before resolution fails. Both know the file and
//! position of their tokens (`Span::local_file`, `line`, `column`), so this
//! module reads that file and follows its brackets up to that position.
//!
//! Every answer is "known" or "unknown", never a guess: a macro acts on it
//! only to choose a clearer error for code that fails anyway (the attribute)
//! or an expansion that is right in every case the answer allows (`spawn!`).
//! The file is lexed, not parsed: comments, strings, raw strings, chars and
//! lifetimes are told apart, brackets are matched, and each `{` is classed by
//! the tokens before it. Anything unusual (no file, a position that does not
//! hold the expected token, unbalanced brackets, text inside a macro's
//! input) answers "unknown", and the macro keeps its ordinary expansion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

/// One token of the file: its text (empty for literals) and byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Ident(String),
    Punct(char),
    Open(char),
    Close(char),
    Literal,
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    start: usize,
}

/// A file lexed before: its modification time and length then, and what
/// came of it.
type Lexed = (Option<SystemTime>, u64, Rc<Source>);

/// What a `{`, `(` or `[` opens, judged by the tokens before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Group {
    /// The body of an `impl` block.
    Impl,
    /// The body of a `trait`.
    Trait,
    /// The body of an inline `mod`.
    Mod,
    /// A macro's input (`name!{…}`, `name!(…)`, `macro_rules! m {…}`): its
    /// text is not code where it stands.
    Macro(String),
    /// An attribute's brackets.
    Attr,
    /// Anything else: a fn body, a block, parentheses, a struct's fields.
    Other,
}

/// A lexed file, with each bracket's class and its matching close.
pub(crate) struct Source {
    tokens: Vec<Token>,
    /// For each token index that opens a group: (index of its close, class).
    groups: Vec<Option<(usize, Group)>>,
    /// For each token index that closes a group: the index of its open.
    opens: Vec<usize>,
    text: String,
}

impl Source {
    /// Reads and lexes `path`; `None` if it cannot be read or its brackets
    /// do not match. A file is lexed once per compiler process (and again
    /// when its length or modification time change, for a long-lived one
    /// such as an editor's): every entry and `spawn!` in it asks.
    pub(crate) fn read(path: &Path) -> Option<Rc<Source>> {
        thread_local! {
            static LEXED: RefCell<HashMap<PathBuf, Lexed>> = RefCell::new(HashMap::new());
        }
        let meta = std::fs::metadata(path).ok()?;
        let (modified, len) = (meta.modified().ok(), meta.len());
        let cached = LEXED.with(|lexed| {
            let lexed = lexed.borrow();
            let (when, size, source) = lexed.get(path)?;
            (*when == modified && *size == len && modified.is_some()).then(|| Rc::clone(source))
        });
        if cached.is_some() {
            return cached;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let source = Rc::new(Source::new(text)?);
        LEXED.with(|lexed| {
            lexed
                .borrow_mut()
                .insert(path.to_path_buf(), (modified, len, Rc::clone(&source)))
        });
        Some(source)
    }

    pub(crate) fn new(text: String) -> Option<Source> {
        let tokens = lex(&text)?;
        let (groups, opens) = classify(&tokens)?;
        Some(Source {
            tokens,
            groups,
            opens,
            text,
        })
    }

    /// The byte offset of 1-based `line` and 1-based `column` (in chars).
    pub(crate) fn offset(&self, line: usize, column: usize) -> Option<usize> {
        let start = if line == 1 {
            0
        } else {
            self.text
                .match_indices('\n')
                .nth(line.checked_sub(2)?)
                .map(|(at, _)| at + 1)?
        };
        let rest = &self.text[start..];
        let end = rest.find('\n').unwrap_or(rest.len());
        let (in_line, _) = rest[..end].char_indices().nth(column.checked_sub(1)?)?;
        Some(start + in_line)
    }

    /// The index of the token that starts at `offset`.
    fn token_at(&self, offset: usize) -> Option<usize> {
        self.tokens
            .binary_search_by_key(&offset, |token| token.start)
            .ok()
    }

    fn ident(&self, index: usize) -> Option<&str> {
        match &self.tokens.get(index)?.kind {
            Kind::Ident(text) => Some(text),
            _ => None,
        }
    }

    /// The groups that hold token `index`, innermost first: (open index,
    /// class).
    fn enclosing(&self, index: usize) -> Vec<(usize, &Group)> {
        let mut chain: Vec<(usize, &Group)> = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(open, group)| {
                let (close, class) = group.as_ref()?;
                (open < index && index < *close).then_some((open, class))
            })
            .collect();
        chain.reverse();
        chain
    }

    /// Where the `fn` keyword at `offset`, followed by `name`, stands:
    /// `Some(Group::Impl)` or `Some(Group::Trait)` when it is directly in
    /// such a body, `Some(Group::Other)` when it is elsewhere outside any
    /// macro's input, `None` when unknown.
    pub(crate) fn fn_place(&self, offset: usize, name: &str) -> Option<Group> {
        let index = self.token_at(offset)?;
        if self.ident(index) != Some("fn") || self.ident(index + 1) != Some(name) {
            return None;
        }
        let chain = self.enclosing(index);
        let rewritten = chain.iter().any(|&(open, ref class)| {
            matches!(class, Group::Macro(_) | Group::Attr) || self.has_active_attribute(open)
        });
        if rewritten {
            return None;
        }
        match chain.first() {
            Some((_, Group::Impl)) => Some(Group::Impl),
            Some((_, Group::Trait)) => Some(Group::Trait),
            _ => Some(Group::Other),
        }
    }

    /// Whether, at the identifier `name` at `offset`, the only names in
    /// scope that are not the module's own come from the prelude: nothing
    /// between the module and this point (the enclosing fn, its blocks, an
    /// `impl` around it) declares or imports a type, or could (a `use`, an
    /// entry, a macro call that is not one of std's or multiproc's). `false`
    /// when unknown.
    pub(crate) fn only_module_names(&self, offset: usize, name: &str) -> bool {
        let Some(index) = self.token_at(offset) else {
            return false;
        };
        if self.ident(index) != Some(name) {
            return false;
        }
        // The outermost group below the module (or the file) that holds
        // the name, through macro inputs that only pass code along.
        let mut outermost = None;
        for (open, class) in self.enclosing(index) {
            if self.has_active_attribute(open) {
                return false;
            }
            match class {
                Group::Mod => break,
                Group::Macro(name) if TRANSPARENT.contains(&name.as_str()) => {}
                Group::Macro(_) | Group::Attr => return false,
                Group::Impl | Group::Trait | Group::Other => {}
            }
            outermost = Some(open);
        }
        let Some(open) = outermost else {
            return false;
        };
        let Some((close, _)) = &self.groups[open] else {
            return false;
        };
        let from = self.header_start(open);
        let region = from..*close;
        region.clone().all(|at| {
            let Kind::Ident(word) = &self.tokens[at].kind else {
                return true;
            };
            let next = self.ident(at + 1);
            let is_call = !NOT_MACROS.contains(&word.as_str())
                && self.tokens.get(at + 1).map(|t| &t.kind) == Some(&Kind::Punct('!'))
                && matches!(
                    self.tokens.get(at + 2).map(|t| &t.kind),
                    Some(Kind::Open(_))
                );
            match word.as_str() {
                "use" | "process_entry" | "macro_rules" => false,
                // A local fn of that name may be an entry under a renamed
                // attribute (`use multiproc::process_entry as pe`).
                "fn" | "struct" | "enum" | "union" | "type" | "trait" | "mod" => next != Some(name),
                _ if is_call => TRANSPARENT.contains(&word.as_str()),
                _ => true,
            }
        })
    }

    /// Whether the item or statement whose group opens at `open` carries an
    /// attribute that may rewrite it (`#[tokio::main]`, `#[async_trait]`):
    /// any but rustc's inert ones and `#[test]`. Such a macro may move the
    /// text it was given anywhere.
    fn has_active_attribute(&self, open: usize) -> bool {
        let mut at = self.header_start(open);
        while at < open {
            let attribute = self.tokens[at].kind == Kind::Punct('#')
                && matches!(self.groups.get(at + 1), Some(Some((_, Group::Attr))));
            if attribute {
                let Some(Some((close, _))) = self.groups.get(at + 1) else {
                    return true;
                };
                if !self.inert(at + 2, *close) {
                    return true;
                }
            }
            at += 1;
        }
        false
    }

    /// Whether the attribute written in tokens `from..to` (inside its
    /// brackets) is inert: one of `INERT`, a tool's (`rustfmt::skip`,
    /// `clippy::…`, `diagnostic::…`), or a `cfg_attr` that adds only such.
    fn inert(&self, from: usize, to: usize) -> bool {
        let Some(word) = self.ident(from) else {
            return false;
        };
        let is = |at: usize, kind: Kind| self.tokens.get(at).map(|t| &t.kind) == Some(&kind);
        let path = is(from + 1, Kind::Punct(':'));
        if path {
            return TOOLS.contains(&word);
        }
        if word != "cfg_attr" {
            return INERT.contains(&word);
        }
        // `cfg_attr(predicate, attr, attr…)`: each attribute after the
        // first comma at the top of its parentheses.
        if !is(from + 1, Kind::Open('(')) {
            return false;
        }
        let Some(Some((end, _))) = self.groups.get(from + 1) else {
            return false;
        };
        if *end + 1 != to {
            return false;
        }
        let mut at = from + 2;
        // Where the attribute after the last comma seen starts.
        let mut start = None;
        while at < *end {
            if is(at, Kind::Punct(',')) {
                if let Some(begin) = start.take()
                    && !self.inert(begin, at)
                {
                    return false;
                }
                start = Some(at + 1);
            }
            match self.groups.get(at) {
                Some(Some((close, _))) => at = close + 1,
                _ => at += 1,
            }
        }
        // No comma: nothing is added, `cfg_attr(x)` is malformed.
        match start {
            Some(begin) if begin < *end => self.inert(begin, *end),
            Some(_) => true,
            None => false,
        }
    }

    /// The first token of the item or statement whose group opens at
    /// `open`: back over its header to the previous `;`, `}` or `{` at the
    /// same depth.
    fn header_start(&self, open: usize) -> usize {
        header_start(&self.tokens, &self.opens, open)
    }
}

/// Attributes that leave the item they are on where it is (a path, such as
/// `#[tokio::main]`, never is one).
const INERT: &[&str] = &[
    "allow",
    "automatically_derived",
    "cfg",
    "cold",
    "deny",
    "deprecated",
    "doc",
    "expect",
    "forbid",
    "ignore",
    "inline",
    "must_use",
    "no_mangle",
    "non_exhaustive",
    "repr",
    "should_panic",
    "test",
    "track_caller",
    "warn",
];

/// Tools whose attributes (`#[rustfmt::skip]`) are inert.
const TOOLS: &[&str] = &["rustfmt", "clippy", "diagnostic", "rustdoc"];

/// Macros whose input is code that stays where it is: a name inside them
/// resolves as it would outside.
const TRANSPARENT: &[&str] = &[
    "spawn",
    "entry",
    "assert",
    "assert_eq",
    "assert_ne",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "dbg",
    "eprint",
    "eprintln",
    "format",
    "format_args",
    "matches",
    "panic",
    "print",
    "println",
    "todo",
    "unimplemented",
    "unreachable",
    "vec",
    "write",
    "writeln",
];

fn lex(text: &str) -> Option<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    // A first line `#!…` that does not open an inner attribute is a shebang.
    if text.starts_with("#!") && !text[2..].trim_start().starts_with('[') {
        at = text.find('\n').unwrap_or(text.len());
    }
    while at < bytes.len() {
        let rest = &text[at..];
        let Some(c) = rest.chars().next() else {
            break;
        };
        let start = at;
        if c.is_whitespace() {
            at += c.len_utf8();
        } else if rest.starts_with("//") {
            at += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            at += block_comment(rest)?;
        } else if c == '"' {
            at += quoted(rest, '"')?;
            tokens.push(Token {
                kind: Kind::Literal,
                start,
            });
        } else if c == '\'' {
            // A char literal (`'a'`, `'\n'`) or a lifetime or label (`'a`).
            let mut chars = rest.char_indices().skip(1);
            let (_, first) = chars.next()?;
            let char_literal = first == '\\' || chars.next().is_some_and(|(_, c)| c == '\'');
            if char_literal {
                at += quoted(rest, '\'')?;
                tokens.push(Token {
                    kind: Kind::Literal,
                    start,
                });
            } else {
                at += 1 + ident_len(&rest[1..]);
                tokens.push(Token {
                    kind: Kind::Literal,
                    start,
                });
            }
        } else if c.is_alphanumeric() || c == '_' {
            let len = ident_len(rest);
            let word = &rest[..len];
            let after = &rest[len..];
            if matches!(word, "r" | "br" | "cr")
                && (after.starts_with('"') || after.starts_with("#\"") || after.starts_with("##"))
            {
                at += len + raw_string(after)?;
                tokens.push(Token {
                    kind: Kind::Literal,
                    start,
                });
            } else if word == "r"
                && after.starts_with('#')
                && after[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                let len = len + 1 + ident_len(&after[1..]);
                tokens.push(Token {
                    kind: Kind::Ident(rest[..len].to_string()),
                    start,
                });
                at += len;
            } else {
                tokens.push(Token {
                    kind: Kind::Ident(word.to_string()),
                    start,
                });
                at += len;
            }
        } else {
            let kind = match c {
                '{' | '(' | '[' => Kind::Open(c),
                '}' | ')' | ']' => Kind::Close(c),
                _ => Kind::Punct(c),
            };
            tokens.push(Token { kind, start });
            at += c.len_utf8();
        }
    }
    Some(tokens)
}

fn ident_len(text: &str) -> usize {
    text.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(text.len(), |(at, _)| at)
}

/// The length of a (nested) block comment at the start of `text`.
fn block_comment(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        if rest.starts_with("/*") {
            depth += 1;
            at += 2;
        } else if rest.starts_with("*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return Some(at);
            }
        } else {
            at += rest.chars().next()?.len_utf8();
        }
    }
    None
}

/// The length of a string or char literal at the start of `text`, quoted by
/// `quote`, with backslash escapes.
fn quoted(text: &str, quote: char) -> Option<usize> {
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        if c == '\\' {
            chars.next()?;
        } else if c == quote {
            return Some(at + 1);
        }
    }
    None
}

/// The length of a raw string's `#…"…"#…` part at the start of `text`.
fn raw_string(text: &str) -> Option<usize> {
    let hashes = text.len() - text.trim_start_matches('#').len();
    let body = text[hashes..].strip_prefix('"')?;
    let end = format!("\"{}", "#".repeat(hashes));
    let close = body.find(&end)?;
    Some(hashes + 1 + close + end.len())
}

fn header_start(tokens: &[Token], opens: &[usize], open: usize) -> usize {
    // Walk back over whole groups; stop after a `;`, the bracket that opens
    // the enclosing group, or a `}` that ends an item or a statement (not a
    // const generic argument, `A<{ 1 }>`).
    let mut at = open;
    while at > 0 {
        let prev = at - 1;
        match &tokens[prev].kind {
            Kind::Punct(';') | Kind::Open(_) => return at,
            Kind::Close(c) => {
                let group_open = opens[prev];
                // `<{ … }>`, `<A, { … }, B>`: between `<` or `,` and `>` or
                // `,`. (A where clause's trailing comma before an item's
                // body is followed by the next item, not by `>` or `,`.)
                let in_generics = group_open
                    .checked_sub(1)
                    .is_some_and(|b| matches!(tokens[b].kind, Kind::Punct('<' | ',')))
                    && matches!(
                        tokens.get(at).map(|t| &t.kind),
                        Some(Kind::Punct('>' | ','))
                    );
                if *c == '}' && !in_generics {
                    return at;
                }
                at = group_open;
            }
            _ => at = prev,
        }
    }
    at
}

/// Matches brackets and classes each group; `None` if they do not match.
#[allow(clippy::type_complexity)]
fn classify(tokens: &[Token]) -> Option<(Vec<Option<(usize, Group)>>, Vec<usize>)> {
    let mut groups: Vec<Option<(usize, Group)>> = tokens.iter().map(|_| None).collect();
    let mut opens = vec![usize::MAX; tokens.len()];
    let mut open = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        match token.kind {
            Kind::Open(c) => open.push((at, c)),
            Kind::Close(c) => {
                let (start, opened) = open.pop()?;
                let matching = matches!((opened, c), ('{', '}') | ('(', ')') | ('[', ']'));
                if !matching {
                    return None;
                }
                groups[start] = Some((at, Group::Other));
                opens[at] = start;
            }
            _ => {}
        }
    }
    if !open.is_empty() {
        return None;
    }
    for at in 0..tokens.len() {
        let Some((close, _)) = groups[at] else {
            continue;
        };
        let class = class_of(tokens, &groups, &opens, at);
        groups[at] = Some((close, class));
    }
    Some((groups, opens))
}

/// Words after which `!` is a negation, not a macro call.
const NOT_MACROS: &[&str] = &[
    "if", "while", "match", "return", "in", "break", "yield", "else", "let", "mut", "ref",
];

fn class_of(
    tokens: &[Token],
    groups: &[Option<(usize, Group)>],
    opens: &[usize],
    open: usize,
) -> Group {
    let kind = |at: usize| tokens.get(at).map(|t| &t.kind);
    let before = |back: usize| open.checked_sub(back).and_then(kind);
    let ident_before = |back: usize| match before(back) {
        Some(Kind::Ident(word)) => Some(word.as_str()),
        _ => None,
    };
    // `#[…]`, `#![…]`.
    if kind(open) == Some(&Kind::Open('['))
        && (before(1) == Some(&Kind::Punct('#'))
            || (before(1) == Some(&Kind::Punct('!')) && before(2) == Some(&Kind::Punct('#'))))
    {
        return Group::Attr;
    }
    // `name!(…)`, `name!{…}`, `macro_rules! name {…}`.
    if before(1) == Some(&Kind::Punct('!'))
        && let Some(name) = ident_before(2).filter(|name| !NOT_MACROS.contains(name))
    {
        return Group::Macro(name.to_string());
    }
    if before(2) == Some(&Kind::Punct('!'))
        && ident_before(1).is_some()
        && ident_before(3) == Some("macro_rules")
    {
        return Group::Macro("macro_rules".to_string());
    }
    if kind(open) != Some(&Kind::Open('{')) {
        return Group::Other;
    }
    // The first word of the header, past attributes, visibility and
    // qualifiers.
    let mut at = header_start(tokens, opens, open);
    while at < open {
        match kind(at) {
            Some(Kind::Punct('#')) => {
                at += 1;
                if kind(at) == Some(&Kind::Punct('!')) {
                    at += 1;
                }
                match groups.get(at) {
                    Some(Some((close, _))) => at = close + 1,
                    _ => return Group::Other,
                }
            }
            Some(Kind::Ident(word)) if word == "pub" => {
                at += 1;
                if let Some(Some((close, _))) = groups.get(at)
                    && kind(at) == Some(&Kind::Open('('))
                {
                    at = close + 1;
                }
            }
            Some(Kind::Ident(word)) if matches!(word.as_str(), "unsafe" | "default" | "auto") => {
                at += 1;
            }
            Some(Kind::Ident(word)) => {
                return match word.as_str() {
                    "impl" => Group::Impl,
                    "trait" => Group::Trait,
                    "mod" => Group::Mod,
                    _ => Group::Other,
                };
            }
            _ => return Group::Other,
        }
    }
    Group::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(text: &str, name: &str) -> Option<Group> {
        let source = Source::new(text.to_string()).expect("lexes");
        let offset = text.find(&format!("fn {name}")).expect("the fn");
        source.fn_place(offset, name)
    }

    fn only_module(text: &str, name: &str) -> bool {
        let source = Source::new(text.to_string()).expect("lexes");
        let offset = text.find(&format!("spawn!({name}")).expect("the call") + "spawn!(".len();
        source.only_module_names(offset, name)
    }

    #[test]
    fn finds_a_fn_in_an_impl_or_a_trait() {
        assert_eq!(place("impl W { #[e] fn f() {} }", "f"), Some(Group::Impl));
        assert_eq!(
            place(
                "#[cfg(x)] unsafe impl<T: A<{ 1 }>> B for W<T> where T: C { fn f() {} }",
                "f"
            ),
            Some(Group::Impl)
        );
        assert_eq!(
            place("pub(crate) trait T { fn f() {} }", "f"),
            Some(Group::Trait)
        );
        // A where clause's trailing comma ends the header before a body.
        let after_where = "fn g<T>() where T: A, {} impl W where T: A, { fn f() {} }";
        assert_eq!(place(after_where, "f"), Some(Group::Impl));
        let after_impl = "impl W where T: A, { fn g() {} } mod m { fn f() {} }";
        assert_eq!(place(after_impl, "f"), Some(Group::Other));
        assert_eq!(place("fn f() {}", "f"), Some(Group::Other));
        assert_eq!(place("mod m { fn f() {} }", "f"), Some(Group::Other));
        assert_eq!(
            place("impl W { fn g() { fn f() {} } }", "f"),
            Some(Group::Other)
        );
        assert_eq!(
            place("impl W { fn g() { let x = 1; fn f() {} } }", "f"),
            Some(Group::Other)
        );
    }

    #[test]
    fn an_attribute_that_may_move_the_fn_makes_its_place_unknown() {
        assert_eq!(
            place("#[allow(x)] #[doc = \"d\"] impl W { fn f() {} }", "f"),
            Some(Group::Impl)
        );
        assert_eq!(place("#[async_trait] impl W { fn f() {} }", "f"), None);
        let inert =
            "#[cfg_attr(docsrs, doc(cfg(x)), allow(y))] #[rustfmt::skip] impl W { fn f() {} }";
        assert_eq!(place(inert, "f"), Some(Group::Impl));
        assert_eq!(
            place("#[cfg_attr(x, async_trait)] impl W { fn f() {} }", "f"),
            None
        );
        assert_eq!(
            place("#[cfg_attr(x, allow(y), m::a)] impl W { fn f() {} }", "f"),
            None
        );
        assert_eq!(place("#[cfg_attr(x)] impl W { fn f() {} }", "f"), None);
        assert_eq!(place("#[a::b] impl W { fn f() {} }", "f"), None);
        assert_eq!(
            place("#[flatten] mod m { impl W { fn f() {} } }", "f"),
            None
        );
        assert!(only_module("#[test] fn t() { spawn!(add); }", "add"));
        assert!(!only_module(
            "#[tokio::main] async fn main() { spawn!(add); }",
            "add"
        ));
        assert!(!only_module("#[rewrite] fn main() { spawn!(add); }", "add"));
    }

    #[test]
    fn comments_strings_and_chars_hide_their_brackets() {
        let text = r####"
            // impl X {
            /* impl Y { /* nested { */ */
            const S: &str = "impl Z { \" {";
            const R: &str = r#"impl Q { "# ;
            const C: char = '{';
            const D: char = '\'';
            fn l<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer x; } }
            fn f() {}
        "####;
        assert_eq!(place(text, "f"), Some(Group::Other));
    }

    #[test]
    fn text_inside_a_macro_input_is_unknown() {
        assert_eq!(place("m! { impl W { fn f() {} } }", "f"), None);
        assert_eq!(
            place("macro_rules! m { () => { impl W { fn f() {} } } }", "f"),
            None
        );
        let source = Source::new("impl W { fn g() {} }".to_string()).expect("lexes");
        assert_eq!(source.fn_place(9, "g"), Some(Group::Impl));
        assert_eq!(source.fn_place(9, "f"), None, "another name");
        assert_eq!(source.fn_place(8, "g"), None, "not at a token");
    }

    #[test]
    fn unbalanced_text_is_not_read() {
        assert!(Source::new("fn f() {".to_string()).is_none());
        assert!(Source::new("fn f() { ) }".to_string()).is_none());
        assert!(Source::new("const S: &str = \"open".to_string()).is_none());
    }

    #[test]
    fn offsets_count_lines_and_chars() {
        let source = Source::new("é = 1;\n  ü fn".to_string()).expect("lexes");
        assert_eq!(source.offset(1, 1), Some(0));
        assert_eq!(
            source.offset(2, 5),
            Some(source.text.find("fn").expect("fn"))
        );
        assert_eq!(source.offset(3, 1), None);
        assert_eq!(source.offset(2, 40), None);
    }

    #[test]
    fn a_call_sees_only_module_names_unless_something_could_shadow_them() {
        let cases = [
            ("fn main() { let h = spawn!(add, 1); }", true),
            (
                "fn main() { assert!(spawn!(add, 1).is_ok()); fn other() {} }",
                true,
            ),
            ("impl W { fn m() { spawn!(add); } }", true),
            ("mod t { use super::*; fn m() { spawn!(add); } }", true),
            ("fn main() { if !(x) { spawn!(add); } }", true),
            // A local fn of the name may be an entry under a renamed
            // attribute.
            ("fn main() { #[pe] fn add() {} spawn!(add); }", false),
            ("fn main() { use w::add; spawn!(add); }", false),
            (
                "fn main() { #[process_entry] fn add() {} spawn!(add); }",
                false,
            ),
            ("fn main() { struct add {} spawn!(add); }", false),
            ("fn main() { make!(add); spawn!(add); }", false),
            ("fn main() { if !(x) { spawn!(add); } m!(); }", false),
            (
                "fn main() { tokio::select! { _ = spawn!(add) => {} } }",
                false,
            ),
            ("macro_rules! m { () => { spawn!(add) } }", false),
        ];
        for (text, expected) in cases {
            assert_eq!(only_module(text, "add"), expected, "{text}");
        }
    }

    /// Places every fn under `root` with `fn_place` and compares with
    /// syn's parse of the same file. Returns how many matched and how many
    /// were unknown (`None`), which only `allow_unknown` accepts; a wrong
    /// place always fails.
    fn compare_with_syn(root: &Path, allow_unknown: bool) -> (usize, usize) {
        use syn::visit::Visit;

        struct Fns<'a> {
            source: &'a Source,
            file: String,
            allow_unknown: bool,
            checked: usize,
            unknown: usize,
        }

        impl Fns<'_> {
            fn check(&mut self, token: &syn::token::Fn, name: &syn::Ident, expected: Group) {
                let at = token.span.start();
                let offset = self
                    .source
                    .offset(at.line, at.column + 1)
                    .expect("syn's position is in the file");
                let found = self.source.fn_place(offset, &name.to_string());
                if found.is_none() && self.allow_unknown {
                    self.unknown += 1;
                    return;
                }
                assert_eq!(
                    found,
                    Some(expected),
                    "{}:{}: fn {name}",
                    self.file,
                    at.line
                );
                self.checked += 1;
            }
        }

        impl<'ast> Visit<'ast> for Fns<'_> {
            fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
                self.check(&item.sig.fn_token, &item.sig.ident, Group::Other);
                syn::visit::visit_item_fn(self, item);
            }
            fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
                self.check(&item.sig.fn_token, &item.sig.ident, Group::Impl);
                syn::visit::visit_impl_item_fn(self, item);
            }
            fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
                self.check(&item.sig.fn_token, &item.sig.ident, Group::Trait);
                syn::visit::visit_trait_item_fn(self, item);
            }
        }

        fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if name == "target" || name.to_string_lossy().starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    out.push(path);
                }
            }
        }

        let mut paths = Vec::new();
        files(root, &mut paths);
        let (mut checked, mut unknown) = (0, 0);
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(file) = syn::parse_file(&text) else {
                // Not Rust as a whole file (a trybuild case meant to fail).
                continue;
            };
            let source = Source::new(text).unwrap_or_else(|| panic!("{} lexes", path.display()));
            let mut fns = Fns {
                source: &source,
                file: path.display().to_string(),
                allow_unknown,
                checked: 0,
                unknown: 0,
            };
            fns.visit_file(&file);
            checked += fns.checked;
            unknown += fns.unknown;
        }
        (checked, unknown)
    }

    /// Every fn in this workspace's own sources is placed as syn places it.
    #[test]
    fn agrees_with_syn_on_this_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let (checked, _) = compare_with_syn(root, false);
        assert!(checked > 1000, "fns checked: {checked}");
    }

    /// The same over every crate in Cargo's registry cache (tens of
    /// thousands of fns; a release build and a large stack for syn's
    /// recursion):
    /// `RUST_MIN_STACK=536870912 cargo test -p multiproc-macros --release --
    /// --ignored --nocapture registry`. Unknown places are allowed (an
    /// attribute macro on an impl, say); a wrong one fails.
    #[test]
    #[ignore = "reads ~/.cargo/registry/src; run by hand"]
    fn agrees_with_syn_on_the_registry() {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
            .expect("CARGO_HOME or HOME");
        let (checked, unknown) = compare_with_syn(&home.join("registry/src"), true);
        eprintln!("{checked} fns placed as syn places them, {unknown} unknown");
        assert!(checked > 0, "no crates under {}", home.display());
    }
}
