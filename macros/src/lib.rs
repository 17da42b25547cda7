//! Procedural macros for [`multiproc`](https://docs.rs/multiproc).
//!
//! Depend on `multiproc`, not on this crate: the code generated here names
//! `::multiproc::__private` (or `<path>::__private` with `crate = path`),
//! which only the `multiproc` crate provides.

#![warn(missing_docs, unreachable_pub)]

mod expand;
mod parse;
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
    match validate::validate(&parsed) {
        Ok(()) => expand::expand(&parsed).into(),
        Err(err) => expand::failed(err, validate::without_variadic(&parsed.func)).into(),
    }
}
