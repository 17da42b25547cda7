//! Parse the item `#[process_entry]` is attached to.

use proc_macro2::TokenStream;
use syn::ItemFn;

/// The attribute's input, parsed but not yet checked.
pub(crate) struct Parsed {
    pub(crate) func: ItemFn,
}

pub(crate) fn parse(attr: TokenStream, item: TokenStream) -> syn::Result<Parsed> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[process_entry] takes no arguments",
        ));
    }
    let func: ItemFn = syn::parse2(item).map_err(|err| {
        syn::Error::new(
            err.span(),
            "#[process_entry] can only be placed on a free `fn` item",
        )
    })?;
    Ok(Parsed { func })
}
