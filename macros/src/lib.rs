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
/// path, as `path {}`. When the caller's file (or the module file a `use`
/// or the path leads to) shows that the path names a plain fn, it says
/// instead to add `#[process_entry]`: rustc would say only "expected
/// struct, variant or union type, found function".
#[doc(hidden)]
#[proc_macro]
pub fn __entry_marker(input: TokenStream) -> TokenStream {
    if let Some(error) = not_an_entry(input.clone()) {
        return error.into();
    }
    let input = proc_macro2::TokenStream::from(input);
    quote::quote! { #input {} }.into()
}

/// The error for an entry path that the caller's file shows to be a plain
/// fn; `None` when it is an entry, or the file does not say.
fn not_an_entry(input: TokenStream) -> Option<proc_macro2::TokenStream> {
    let path: syn::Path = syn::parse(input).ok()?;
    if path.leading_colon.is_some() {
        return None;
    }
    let mut segments = Vec::new();
    for segment in &path.segments {
        if !segment.arguments.is_none() {
            return None;
        }
        let name = segment.ident.to_string();
        segments.push(name.strip_prefix("r#").map(str::to_owned).unwrap_or(name));
    }
    let last = &path.segments.last()?.ident;
    let (name, file) = source::plain_fn(last.span().unwrap(), &segments)?;
    let written = segments.join("::");
    // Relative to the crate, as rustc shows paths.
    let place = match file {
        Some(file) => {
            let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
            let shown = file.strip_prefix(&root).unwrap_or(&file);
            format!(" in {}", shown.display())
        }
        None => String::new(),
    };
    let message = format!(
        "`{written}` is not a process entry: mark `fn {name}`{place} with `#[process_entry]` \
         (from `multiproc`) so that a child process can run it"
    );
    let span = last.span();
    // The path is used as a value, so that its `use` is not also reported
    // as unused.
    Some(quote::quote_spanned! {span=> { let _ = #path; ::core::compile_error!(#message) } })
}
