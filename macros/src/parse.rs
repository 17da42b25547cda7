//! Parse the item `#[process_entry]` is attached to, and its arguments.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{ItemFn, LitStr, Path, Token};

/// The attribute's input, parsed but not yet checked.
pub(crate) struct Parsed {
    pub(crate) func: ItemFn,
    /// The path of the `multiproc` crate in generated code: `::multiproc`, or
    /// what `crate = …` says (for a dependency renamed in Cargo.toml).
    pub(crate) krate: TokenStream,
}

pub(crate) fn parse(attr: TokenStream, item: TokenStream) -> syn::Result<Parsed> {
    let krate = parse_args(attr)?;
    let func: ItemFn = syn::parse2(item).map_err(|err| {
        syn::Error::new(
            err.span(),
            "#[process_entry] can only be placed on a free `fn` item",
        )
    })?;
    Ok(Parsed { func, krate })
}

const USAGE: &str = "#[process_entry] takes no arguments, or `crate = path` when the \
                     `multiproc` dependency is renamed (`#[process_entry(crate = mp)]`)";

/// `crate = path` or `crate = "path"` (as serde's `#[serde(crate = "…")]`).
fn parse_args(attr: TokenStream) -> syn::Result<TokenStream> {
    if attr.is_empty() {
        return Ok(quote! { ::multiproc });
    }
    let mut krate = None;
    let parser = syn::meta::parser(|meta| {
        if !meta.path.is_ident("crate") {
            return Err(meta.error(USAGE));
        }
        if krate.is_some() {
            return Err(meta.error("#[process_entry] takes `crate = path` once"));
        }
        let value = meta.value().map_err(|_| {
            syn::Error::new_spanned(
                &meta.path,
                "`crate` needs a path: `#[process_entry(crate = mp)]` for \
                 `mp = { package = \"multiproc\" }` in Cargo.toml",
            )
        })?;
        krate = Some(parse_crate_path(value)?);
        Ok(())
    });
    parser.parse2(attr)?;
    Ok(krate.unwrap_or_else(|| quote! { ::multiproc }))
}

fn parse_crate_path(input: ParseStream) -> syn::Result<TokenStream> {
    let bad = |span| {
        syn::Error::new(
            span,
            "#[process_entry(crate = …)] expects the path of the renamed `multiproc` \
             crate, such as `crate = mp` or `crate = \"mp\"`",
        )
    };
    let path: Path = if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        lit.parse_with(Path::parse_mod_style)
            .map_err(|_| bad(lit.span()))?
    } else if input.peek(Token![::]) || input.peek(syn::Ident::peek_any) {
        Path::parse_mod_style(input).map_err(|err| bad(err.span()))?
    } else {
        return Err(bad(input.span()));
    };
    Ok(quote! { #path })
}
