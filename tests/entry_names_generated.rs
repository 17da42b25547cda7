//! Entries that macros define, in a file that also defines plain fns of the
//! same names. `spawn!` and `#[process_entry]` read the caller's file to
//! name the fix for two mistakes (`tests/ui/spawn_not_an_entry.rs`,
//! `tests/ui/assoc_fn.rs`); entries defined by macros are not in that
//! parse, so the check must not call these names plain fns, nor these
//! entries associated fns. Each case compiles and runs.

use multiproc::{process_entry, spawn};

// An entry from an included file.
include!("entry_names/included.rs");

/// Plain fns named like the entries.
#[allow(dead_code)]
mod plain {
    pub fn included_work() {}

    pub fn local_work() {}

    pub fn tripled() {}
}

/// Defines an entry where it is called: here, in a fn body.
macro_rules! local_entry {
    ($name:ident) => {
        #[process_entry]
        fn $name(x: u32) -> u32 {
            x * 2
        }
    };
}

/// Defines entries at module level.
macro_rules! entries {
    ($($name:ident),*) => {
        $(
            #[process_entry]
            fn $name(x: u32) -> u32 {
                x * 3
            }
        )*
    };
}

entries!(tripled);

/// The attribute comes through `cfg_attr`: the parse sees only that.
mod wrapped {
    #[allow(dead_code)]
    pub fn twice() {}

    pub mod inner {
        #[cfg_attr(all(), multiproc::process_entry)]
        pub fn twice(x: u32) -> u32 {
            x * 2
        }

        pub fn run() -> u32 {
            multiproc::spawn!(twice, 8).unwrap().join().unwrap()
        }
    }
}

struct Client;

impl Client {
    // A method named like the entry, with an attribute the check cannot
    // see through: the only fn of that name the parse finds with one is
    // in an `impl`.
    #[cfg_attr(all(), inline)]
    fn tripled(&self, x: u32) -> u32 {
        spawn!(tripled, x).unwrap().join().unwrap()
    }
}

#[test]
fn an_included_entry_runs() {
    assert_eq!(spawn!(included_work, 20).unwrap().join().unwrap(), 21);
}

#[test]
fn an_entry_a_macro_defines_in_a_block_runs() {
    local_entry!(local_work);
    assert_eq!(spawn!(local_work, 21).unwrap().join().unwrap(), 42);
}

#[test]
fn an_entry_a_macro_defines_beside_a_method_of_its_name_runs() {
    assert_eq!(Client.tripled(14), 42);
}

#[test]
fn an_entry_marked_through_cfg_attr_runs() {
    assert_eq!(wrapped::inner::run(), 16);
}
