//! Entries defined outside `tests/entry_names.rs`, so that its file shows
//! no `#[process_entry]` for these names.

use multiproc::process_entry;

/// Doubles its argument.
#[process_entry]
pub fn twice(x: u32) -> u32 {
    x * 2
}

/// Triples its argument.
#[process_entry]
pub fn thrice(x: u32) -> u32 {
    x * 3
}
