//! Misuse of `#[process_entry]` and `spawn!` is a compile error pointing at the user's token.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui_pass/*.rs");
}
