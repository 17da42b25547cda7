//! Procedural macros for [`multiproc`](https://docs.rs/multiproc).
//!
//! Depend on `multiproc`, not on this crate: the code generated here names
//! `::multiproc::__private` (or `<path>::__private` with `crate = path`),
//! which only the `multiproc` crate provides.

#![warn(missing_docs, unreachable_pub)]

mod expand;
mod parse;
mod source;
mod validate;

use proc_macro::TokenStream;

/// Registers a free function as an entry that can run in a child process.
///
/// The function stays callable as a normal function. The rules an entry must
/// follow are in the `multiproc` crate's documentation, section "Rules for an
/// entry" (`multiproc::process_entry` links to it); so is `spawn!`.
///
/// The generated code names `::multiproc`. In a crate that renames the
/// dependency (`mp = { package = "multiproc", … }` in Cargo.toml), say what it
/// is called instead, as with serde's `#[serde(crate = "…")]`:
/// `#[mp::process_entry(crate = mp)]` (a string, `crate = "mp"`, works too).
#[proc_macro_attribute]
pub fn process_entry(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let item = proc_macro2::TokenStream::from(item);
    let parsed = match parse::parse(attr, item.clone()) {
        Ok(parsed) => parsed,
        Err(err) => return expand::failed(err, item).into(),
    };
    let checked = validate::validate(&parsed)
        .and_then(|()| validate::check_free(&parsed.func, proc_macro::Span::call_site()));
    match checked {
        Ok(()) => expand::expand(&parsed).into(),
        Err(err) => expand::failed(err, validate::without_variadic(&parsed.func)).into(),
    }
}

/// Not public API: what `multiproc::entry!` (and so `spawn!`) expands to.
///
/// Names the marker type `#[process_entry]` defines for the fn at the given
/// path, as `path {}`. When the path is a bare name that the caller's file
/// shows to be a plain fn, it says instead to add `#[process_entry]`: rustc
/// would say only "expected struct, variant or union type, found function".
#[doc(hidden)]
#[proc_macro]
pub fn __entry_marker(input: TokenStream) -> TokenStream {
    let mut tokens = input.clone().into_iter();
    if let (Some(proc_macro::TokenTree::Ident(ident)), None) = (tokens.next(), tokens.next()) {
        let name = ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name);
        if source::is_plain_fn(ident.span(), name) {
            let message = format!(
                "`{name}` is not a process entry: mark `fn {name}` with \
                 `#[process_entry]` (from `multiproc`) so that a child process can run it"
            );
            let span = proc_macro2::Span::from(ident.span());
            let path = proc_macro2::TokenStream::from(input);
            // Unqualified, at the user's token: resolved there, in any
            // edition (`::core` is not a path in a 2015 crate). The fn is
            // used as a value so that rustc does not add "never used".
            return quote::quote_spanned! {span=>
                { let _ = #path; compile_error!(#message) }
            }
            .into();
        }
    }
    let input = proc_macro2::TokenStream::from(input);
    quote::quote! { #input {} }.into()
}
