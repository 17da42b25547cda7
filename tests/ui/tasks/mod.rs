// A module of plain fns, for the `spawn!` cases that reach it by a path or
// a `use` (not a test case itself: `tests/ui/*.rs` does not match it).

pub fn add(a: i32, b: i32) -> i32 {
    a + b
}
