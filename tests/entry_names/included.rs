// Included by `tests/entry_names_generated.rs`: an entry its own parse of
// that file cannot see.

/// Adds one.
#[process_entry]
pub fn included_work(x: u32) -> u32 {
    x + 1
}
