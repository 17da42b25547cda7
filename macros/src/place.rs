//! Where a macro is used, read from its source file (see `source`): an
//! entry inside an `impl`, and the entry a `spawn!` call names.

use crate::source::{Group, Source};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use std::rc::Rc;
use syn::parse::{Parse, ParseStream};
use syn::{ItemFn, Path, Token};

/// The source file that holds `span`, and the byte offset where it starts.
fn source_of(span: Span) -> Option<(Rc<Source>, usize)> {
    // Outside a running macro (a unit test) there is no compiler to ask.
    if !proc_macro::is_available() {
        return None;
    }
    let span = span.unwrap();
    let path = span.local_file()?;
    let source = Source::read(&path)?;
    let offset = source.offset(span.line(), span.column())?;
    Some((source, offset))
}

/// The error for an entry placed directly in an `impl` or a `trait` body,
/// which the item alone does not show; `None` if it is elsewhere or its
/// place is unknown.
pub(crate) fn not_free(func: &ItemFn) -> Option<syn::Error> {
    let (source, offset) = source_of(func.sig.fn_token.span)?;
    let name = func.sig.ident.to_string();
    let container = match source.fn_place(offset, &name)? {
        Group::Impl => "an `impl` block",
        Group::Trait => "a `trait`",
        _ => return None,
    };
    Some(syn::Error::new(
        func.sig.ident.span(),
        format!(
            "#[process_entry] must be a free fn, not an associated fn: `{name}` is inside \
             {container}; move it out to module level (it can call `Type::method`)"
        ),
    ))
}

/// `$crate, path`, as `spawn!` and `entry!` pass it.
struct MarkInput {
    krate: TokenTree,
    path: Path,
}

impl Parse for MarkInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let krate = input.parse()?;
        input.parse::<Token![,]>()?;
        let path = Path::parse_mod_style(input)?;
        Ok(MarkInput { krate, path })
    }
}

pub(crate) fn mark(input: TokenStream) -> TokenStream {
    let MarkInput { krate, path } = match syn::parse2(input) {
        Ok(parsed) => parsed,
        Err(err) => return err.to_compile_error(),
    };
    let Some(last) = path.segments.last().map(|segment| segment.ident.clone()) else {
        return direct(&krate, &path);
    };
    let first = &path.segments[0].ident;
    // Where the marker is looked for: the module itself, or the module the
    // path names before its last segment.
    let scope = if path.segments.len() == 1 && path.leading_colon.is_none() {
        let only_module = source_of(last.span())
            .is_some_and(|(source, offset)| source.only_module_names(offset, &last.to_string()));
        if !only_module {
            return direct(&krate, &path);
        }
        quote! { self }
    } else if *first != last {
        let mut prefix = path.clone();
        prefix.segments.pop();
        let prefix = prefix.segments.pairs().map(|pair| pair.into_value());
        let colon = path.leading_colon;
        quote! { #colon #(#prefix)::* }
    } else {
        return direct(&krate, &path);
    };
    // A stand-in of the same name, one block out: found only when the scope
    // has no type of that name, and not a `MarkedEntry`, so the error is that
    // trait's message, at the name. A glob brings it in, and another glob,
    // nearer, brings in the scope's names, so that a real marker wins.
    let stand_in = format_ident!("not_marked_with_process_entry");
    let call = Span::call_site();
    let marked = quote_spanned! {last.span()=> <#last as #krate::__private::MarkedEntry>::ENTRY };
    quote_spanned! {call=>
        {
            #[allow(unreachable_pub, dead_code, missing_docs, non_camel_case_types)]
            mod #stand_in {
                pub struct #last {}
            }
            #[allow(unused_imports, clippy::wildcard_imports)]
            use #stand_in::*;
            {
                #[allow(unused_imports, clippy::wildcard_imports)]
                use #scope::*;
                #marked
            }
        }
    }
}

/// The marker named as written, by multiproc's
/// `mark_the_fn_with_process_entry!`: where the path is a fn, rustc's error
/// ("expected struct, variant or union type, found function") notes that it
/// originates in that macro, whose name says what to do.
fn direct(krate: &TokenTree, path: &Path) -> TokenStream {
    quote! { #krate::__private::mark_the_fn_with_process_entry!(#path) }
}
