//! Reject the functions that cannot be entries, pointing at the offending token.

use crate::parse::Parsed;
use quote::ToTokens;
use syn::visit::Visit;
use syn::{FnArg, ReturnType, Safety, Type};

/// The most arguments an entry takes: serde implements its traits for tuples
/// of up to 16 elements.
const MAX_ARGS: usize = 16;

pub(crate) fn validate(parsed: &Parsed) -> syn::Result<()> {
    // A second `#[process_entry]` below this one would define the marker
    // twice: one error here rather than rustc's five about conflicting
    // definitions. (The fn is re-emitted with it, so it still expands once.)
    if let Some(again) = parsed.func.attrs.iter().find(|attr| {
        attr.path()
            .segments
            .last()
            .is_some_and(|last| last.ident == "process_entry")
    }) {
        return Err(syn::Error::new_spanned(
            again,
            "#[process_entry] is applied twice to this fn: remove one",
        ));
    }
    let sig = &parsed.func.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            "#[process_entry] cannot be an `async fn`: a child process runs the entry synchronously; \
             start a runtime inside a regular fn instead",
        ));
    }
    if let Some(token) = &sig.constness {
        return Err(syn::Error::new_spanned(
            token,
            "#[process_entry] cannot be a `const fn`: the entry runs in a child process at run time; \
             remove `const`, or call the `const fn` from a regular entry fn",
        ));
    }
    if let Safety::Unsafe(token) = &sig.safety {
        return Err(syn::Error::new_spanned(
            token,
            "#[process_entry] cannot be an `unsafe fn`: wrap the unsafe call in a safe fn",
        ));
    }
    // `extern "Rust"` spells out the ABI every plain fn has; a bare
    // `extern` is `extern "C"`.
    if let Some(abi) = sig
        .abi
        .as_ref()
        .filter(|abi| abi.name.as_ref().is_none_or(|name| name.value() != "Rust"))
    {
        let abi_text = abi.to_token_stream().to_string();
        return Err(syn::Error::new_spanned(
            abi,
            format!(
                "#[process_entry] cannot have a non-Rust ABI: remove `{abi_text}`; the child calls \
                 the entry as a Rust fn (for a C callback, call it from a regular entry fn)"
            ),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "#[process_entry] cannot be variadic: its arguments travel to the child as a fixed \
             tuple; take a `Vec<T>` instead",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics.params,
            "#[process_entry] cannot be generic: the child looks the entry up by name, \
             so its argument and return types must be concrete",
        ));
    }
    if let Some(clause) = &sig.generics.where_clause {
        return Err(syn::Error::new_spanned(
            clause,
            "#[process_entry] cannot have a where clause: the child looks the entry up by name, \
             so its types must be concrete; remove the where clause",
        ));
    }
    // Not a free fn: a method, or an associated fn that names `Self`.
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            receiver,
            "#[process_entry] must be a free fn, not a method taking `self`: move it \
             out of the impl and pass the value as an argument",
        ));
    }
    check_not_in_impl(&parsed.func)?;
    // The arguments travel as one tuple, and serde's tuples stop at 16.
    if let Some(extra) = sig.inputs.iter().nth(MAX_ARGS) {
        return Err(syn::Error::new_spanned(
            extra,
            format!(
                "#[process_entry] takes at most {MAX_ARGS} arguments: group the rest in a struct \
                 or a tuple"
            ),
        ));
    }
    for input in &sig.inputs {
        if let FnArg::Typed(arg) = input {
            check_owned(&arg.ty, "argument")?;
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_owned(ty, "return type")?;
    }
    Ok(())
}

/// An associated fn is not a free fn, and nothing but the fn reaches the
/// attribute: a `self` receiver says so, and so does `Self`, which
/// only an `impl` or a `trait` defines. (An associated fn with neither looks
/// exactly like a free fn; rustc then reports the marker struct the
/// expansion cannot put in an `impl`.)
fn check_not_in_impl(func: &syn::ItemFn) -> syn::Result<()> {
    let mut finder = SelfTypeFinder { found: None };
    finder.visit_signature(&func.sig);
    if finder.found.is_none() {
        finder.visit_block(&func.block);
    }
    match finder.found {
        None => Ok(()),
        Some(token) => Err(syn::Error::new_spanned(
            token,
            "#[process_entry] must be a free fn, not an associated fn: it uses `Self`, so it \
             is inside an `impl` or a `trait`; move it out of the impl (it can call \
             `Type::method`)",
        )),
    }
}

/// Finds a path that starts with `Self`, outside nested items (whose `Self`
/// is their own).
struct SelfTypeFinder {
    found: Option<syn::Ident>,
}

impl<'ast> Visit<'ast> for SelfTypeFinder {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if self.found.is_some() {
            return;
        }
        match path.segments.first() {
            Some(first) if path.leading_colon.is_none() && first.ident == "Self" => {
                self.found = Some(first.ident.clone());
            }
            _ => syn::visit::visit_path(self, path),
        }
    }

    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// The item as written, minus a C-variadic `...`: re-emitted beside an error
/// so that callers of the fn still resolve, without rustc adding its own
/// errors about the `...` (a nightly-only feature on a non-`extern` fn).
pub(crate) fn without_variadic(func: &syn::ItemFn) -> proc_macro2::TokenStream {
    if func.sig.variadic.is_none() {
        return func.to_token_stream();
    }
    let mut func = func.clone();
    func.sig.variadic = None;
    // `fn f(a: u32, ...)`: drop the comma left before the `...`.
    func.sig.inputs = std::mem::take(&mut func.sig.inputs).into_iter().collect();
    func.to_token_stream()
}

/// Arguments and results cross a process boundary, so they must be owned.
fn check_owned(ty: &Type, what: &str) -> syn::Result<()> {
    let mut finder = BorrowFinder { found: None };
    finder.visit_type(ty);
    match finder.found {
        None => Ok(()),
        Some((tokens, kind)) => Err(syn::Error::new_spanned(
            tokens,
            format!(
                "#[process_entry] {what} cannot {kind}: values are copied into another process, \
                 so use an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)"
            ),
        )),
    }
}

struct BorrowFinder {
    found: Option<(proc_macro2::TokenStream, &'static str)>,
}

impl<'ast> Visit<'ast> for BorrowFinder {
    fn visit_type(&mut self, ty: &'ast Type) {
        if self.found.is_some() {
            return;
        }
        match ty {
            Type::Reference(_) => self.found = Some((ty.to_token_stream(), "be a reference")),
            Type::Ptr(_) => self.found = Some((ty.to_token_stream(), "be a raw pointer")),
            Type::ImplTrait(_) => self.found = Some((ty.to_token_stream(), "be `impl Trait`")),
            Type::TraitObject(_) => self.found = Some((ty.to_token_stream(), "be a trait object")),
            Type::Infer(_) => self.found = Some((ty.to_token_stream(), "be inferred (`_`)")),
            _ => syn::visit::visit_type(self, ty),
        }
    }

    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if self.found.is_none() && lifetime.ident != "static" {
            self.found = Some((lifetime.to_token_stream(), "borrow (it names a lifetime)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn check(item: proc_macro2::TokenStream) -> Result<(), String> {
        let parsed = crate::parse::parse(proc_macro2::TokenStream::new(), item)
            .map_err(|e| e.to_string())?;
        super::validate(&parsed).map_err(|e| e.to_string())
    }

    #[test]
    fn only_the_rust_abi_may_be_spelled_out() {
        assert_eq!(
            check(quote! { extern "Rust" fn f(n: u32) -> u32 { n } }),
            Ok(())
        );
        assert_eq!(check(quote! { fn f(n: u32) -> u32 { n } }), Ok(()));
        for item in [
            quote! { extern "C" fn f(n: u32) -> u32 { n } },
            quote! { extern fn f(n: u32) -> u32 { n } },
            quote! { extern "system" fn f(n: u32) -> u32 { n } },
            quote! { extern "rust" fn f(n: u32) -> u32 { n } },
        ] {
            let err = check(item.clone()).expect_err("rejected");
            assert!(err.contains("non-Rust ABI"), "{item}: {err}");
        }
    }
}
