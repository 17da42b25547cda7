//! Procedural macros for [`multiproc`](https://docs.rs/multiproc).
//!
//! Depend on `multiproc`, not on this crate: the code generated here names
//! `::multiproc::__private` (or `<path>::__private` with `crate = path`),
//! which only the `multiproc` crate provides.

#![warn(missing_docs, unreachable_pub)]

mod expand;
mod parse;
mod place;
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
    // A method taking `self` has its own, more specific, error below.
    let has_receiver = parsed.func.sig.receiver().is_some();
    if let Some(err) = place::not_free(&parsed.func).filter(|_| !has_receiver) {
        return expand::failed(err, item).into();
    }
    match validate::validate(&parsed) {
        Ok(()) => expand::expand(&parsed).into(),
        Err(err) => expand::failed(err, validate::without_variadic(&parsed.func)).into(),
    }
}

/// Not public API: what `multiproc::spawn!` and `multiproc::entry!` expand
/// to, `entry_marker!($crate, path)`, the value of the entry's marker type.
///
/// Where the call's own file shows that nothing but the module's names (or,
/// for `a::b::f`, those of `a::b`) can be in scope for the last name, the
/// marker is looked up beside a stand-in of the same name, so that a fn
/// without `#[process_entry]` is reported in multiproc's words ("take a fn
/// marked `#[process_entry]`") rather than by resolution ("expected struct,
/// found function"). Elsewhere it names the path as written, through
/// multiproc's `mark_the_fn_with_process_entry!`, whose name rustc's error
/// then notes.
#[doc(hidden)]
#[proc_macro]
pub fn entry_marker(input: TokenStream) -> TokenStream {
    place::mark(input.into()).into()
}
