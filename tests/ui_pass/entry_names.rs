// Every way a program names an entry compiles, and names the entry it
// means: `spawn!` and `entry!` look the marker up beside a stand-in for a
// fn without `#[process_entry]`, and must never find the stand-in instead.
#![deny(warnings)]

use multiproc::{entry, process_entry, Entry};

mod other {
    use multiproc::process_entry;

    #[process_entry]
    pub fn imported(n: u32) -> u32 {
        n
    }

    #[process_entry]
    pub fn renamed(n: u32) -> u32 {
        n
    }

    #[process_entry]
    pub fn by_path(n: u32) -> u32 {
        n
    }

    pub mod deeper {
        use multiproc::process_entry;

        #[process_entry]
        pub(crate) fn by_crate_path(n: u32) -> u32 {
            n
        }
    }
}

mod globbed {
    use multiproc::process_entry;

    #[process_entry]
    pub fn from_glob(n: u32) -> u32 {
        n
    }
}

use globbed::*;
use multiproc::process_entry as entry_attribute;
use other::imported;
use other::renamed as by_new_name;

#[process_entry]
fn here(n: u32) -> u32 {
    n
}

macro_rules! make_entry {
    ($name:ident) => {
        #[process_entry]
        fn $name(n: u32) -> u32 {
            n
        }
    };
}

make_entry!(from_macro);

fn name_of<E: Entry>(_: E) -> &'static str {
    E::NAME
}

mod tests {
    use super::*;

    pub(crate) fn names() -> Vec<&'static str> {
        vec![name_of(entry!(here)), name_of(entry!(imported))]
    }
}

struct Worker;

impl Worker {
    fn names() -> Vec<&'static str> {
        vec![name_of(entry!(here)), name_of(entry!(self::here))]
    }
}

// Items in the calling fn: the macros name the path as written.
fn in_this_fn() -> [&'static str; 2] {
    #[process_entry]
    fn local(n: u32) -> u32 {
        n
    }
    mod inner {
        use multiproc::process_entry;

        #[process_entry]
        pub fn in_block_module(n: u32) -> u32 {
            n
        }
    }
    [name_of(entry!(local)), name_of(entry!(inner::in_block_module))]
}

// A local entry under a renamed attribute: the macros see a local fn of
// that name, and name the path as written.
fn renamed_attribute() -> &'static str {
    #[entry_attribute]
    fn under_renamed(n: u32) -> u32 {
        n
    }
    name_of(entry!(under_renamed))
}

fn main() {
    let names = [
        name_of(entry!(here)),
        name_of(entry!(imported)),
        name_of(entry!(by_new_name)),
        name_of(entry!(from_glob)),
        name_of(entry!(from_macro)),
        name_of(entry!(other::by_path)),
        name_of(entry!(crate::other::deeper::by_crate_path)),
        name_of(entry!(self::here)),
        in_this_fn()[0],
        in_this_fn()[1],
        renamed_attribute(),
    ];
    let expected = [
        "::here",
        "::other::imported",
        "::other::renamed",
        "::globbed::from_glob",
        "::from_macro",
        "::other::by_path",
        "::other::deeper::by_crate_path",
        "::here",
        "::local",
        "::inner::in_block_module",
        "::under_renamed",
    ];
    for (name, end) in names.iter().zip(expected) {
        assert!(name.ends_with(end), "{name} should end with {end}");
    }
    assert!(tests::names()[1].ends_with("::other::imported"));
    assert!(Worker::names().iter().all(|name| name.ends_with("::here")));
}
