//! `spawn!(f, …)` reads the caller's file to tell a plain fn `f` from an
//! entry (for a clearer error than rustc's, `tests/ui/spawn_not_an_entry.rs`).
//! These calls name entries defined in another file, in a file that also
//! defines plain fns of the same names: each must still compile and run.
//! (`tests/entry_names_generated.rs` has the cases where macros or
//! attributes define the entries: any one of them makes the whole file
//! unreadable to the check, so they cannot be here.)
//! Each module is a way the name can reach the call that the file's own
//! `#[process_entry]` attributes do not show.

#[path = "entry_names/entries.rs"]
mod entries;

use entries::thrice as tripled;

/// A plain fn named like an entry, in another scope of the file.
#[allow(dead_code)]
mod plain {
    pub fn twice(x: u32) -> u32 {
        x + x
    }

    pub fn thrice(x: u32) -> u32 {
        x + x + x
    }
}

/// The entry comes in by an explicit import.
mod imported {
    use super::entries::twice;

    pub fn run() -> u32 {
        multiproc::spawn!(twice, 21).unwrap().join().unwrap()
    }
}

/// The entry's marker comes in by a glob import, while a plain fn of the
/// same name, defined here, shadows its fn.
mod through_glob {
    #[allow(unused_imports)]
    use super::entries::*;

    #[allow(dead_code)]
    fn thrice(x: u32) -> u32 {
        x + x + x
    }

    pub fn run() -> u32 {
        multiproc::spawn!(thrice, 14).unwrap().join().unwrap()
    }
}

#[test]
fn an_imported_entry_runs_beside_a_plain_fn_of_its_name() {
    assert_eq!(imported::run(), 42);
}

#[test]
fn a_glob_imported_entry_runs_where_a_plain_fn_shadows_its_fn() {
    assert_eq!(through_glob::run(), 42);
}

#[test]
fn an_entry_named_by_its_module_path_or_a_rename_runs() {
    let by_path = multiproc::spawn!(entries::twice, 4).unwrap();
    let by_use = multiproc::spawn!(tripled, 5).unwrap();
    assert_eq!((by_path.join().unwrap(), by_use.join().unwrap()), (8, 15));
}
