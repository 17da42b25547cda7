//! Generate the entry's marker type, its `Entry` impl and its registration.

use crate::parse::Parsed;
use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ReturnType, Type};

/// On error: the error, plus the item unchanged so that callers of the fn do
/// not add a cascade of "cannot find function" errors.
pub(crate) fn failed(err: syn::Error, item: TokenStream) -> TokenStream {
    let err = err.to_compile_error();
    quote! { #err #item }
}

pub(crate) fn expand(parsed: &Parsed) -> TokenStream {
    let func = &parsed.func;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let name = ident.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);

    let tys: Vec<_> = func
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(arg) => Some(&*arg.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let vars: Vec<_> = (0..tys.len())
        .map(|i| format_ident!("__multiproc_arg{}", i, span = Span::mixed_site()))
        .collect();
    // Hygienic, as the arguments' names are: an entry may itself be named
    // `args`, and the call to it must not find this tuple instead.
    let args = Ident::new("args", Span::mixed_site());
    let args_ty = quote_spanned! {func.sig.inputs.span()=> (#(#tys,)*) };
    // An entry that never returns (`-> !`, which ends its process itself)
    // owes no result: its handle joins as `()`. (`!` is no type an
    // associated type may name on stable Rust; its `call` coerces to `()`.)
    let return_ty = match &func.sig.output {
        ReturnType::Type(_, ty) if !matches!(**ty, Type::Never(_)) => Some(&**ty),
        _ => None,
    };
    let output_ty = match return_ty {
        None => quote! { () },
        Some(ty) => quote_spanned! {ty.span()=> #ty },
    };
    let krate = &parsed.krate;
    let private = quote! { #krate::__private };
    // One check per type, spanned at that type: a type that cannot travel is
    // reported there, with the runtime's hint (`__private::Travel`), rather
    // than by serde at the first argument.
    let travel_checks = tys.iter().copied().chain(return_ty).map(|ty| {
        quote_spanned! {ty.span()=> #private::travels::<#ty>(); }
    });
    // Spanned at the fn's name, so a wrong `spawn!` call points there.
    let args_method = quote_spanned! {ident.span()=>
        impl #ident {
            #[doc(hidden)]
            #[inline]
            // Generated, so no lint the user enabled (clippy's pedantic
            // and nursery groups) is theirs to fix here.
            #[allow(
                clippy::unused_unit,
                clippy::unused_self,
                clippy::must_use_candidate,
                clippy::missing_const_for_fn
            )]
            #vis fn __multiproc_args(self, #(#vars: #tys),*) -> #args_ty {
                (#(#vars,)*)
            }
        }
    };

    // multiproc's own entries (its tests, the Pool's worker, the Manager's
    // server) are compiled where `unsafe_code` is denied outside `sys/`.
    let in_multiproc = if std::env::var("CARGO_CRATE_NAME").as_deref() == Ok("multiproc") {
        quote! { @crate }
    } else {
        quote! {}
    };
    // Everything but the fn is one item, the marker struct, with the rest
    // inside a constant of its where clause. Placed on a fn inside an `impl`
    // (which the attribute cannot see), that is one error, "struct is not
    // supported in `trait`s or `impl`s", at the attribute, rather than one
    // for each item and then each unresolved name. The struct is written
    // by a macro whose name says what is wrong, as rustc's note on that
    // error names the macro it comes from.
    // An entry must take its arguments by value (they are decoded in the
    // child), so clippy's advice to take a reference instead is none the
    // user can follow.
    quote! {
        #[allow(clippy::needless_pass_by_value)]
        #func

        #private::process_entry_must_be_on_a_free_fn! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, non_local_definitions)]
        #vis #ident
        where
            [(); {
                #[allow(clippy::expl_impl_clone_on_copy)]
                impl ::core::clone::Clone for #ident {
                    #[inline]
                    fn clone(&self) -> Self {
                        *self
                    }
                }
                impl ::core::marker::Copy for #ident {}

                #args_method

                impl #private::MarkedEntry for #ident {
                    type Entry = Self;
                    const ENTRY: Self = #ident {};
                }

                // The bounds here only repeat what `travel_checks` reports;
                // they keep rustc from reporting it again, through serde.
                impl #private::Entry for #ident
                where
                    for<'__multiproc> #args_ty: #private::Travel,
                    for<'__multiproc> #output_ty: #private::Travel,
                {
                    type Args = #args_ty;
                    type Output = #output_ty;
                    const NAME: &'static str =
                        ::core::concat!(::core::module_path!(), "::", #name);

                    // The fn may be `#[deprecated]`: calling it here is
                    // no use of it by the user, and must not warn.
                    #[allow(clippy::unused_unit, deprecated)]
                    fn call(#args: Self::Args) -> Self::Output {
                        let (#(#vars,)*) = #args;
                        #ident(#(#vars),*)
                    }
                }

                #private::entry_ctor!(
                    #in_multiproc #ident, ::core::file!(), ::core::line!(), ::core::column!()
                );

                const _: () = {
                    #(#travel_checks)*
                };

                0
            }]: ::core::marker::Sized,
        }
    }
}
