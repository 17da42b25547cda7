//! Local entries that share a name in one module each run their own fn.
//!
//! Local items share their module's path, so two `fn inner` defined inside two
//! functions both register as `duplicates::inner`. `spawn!` and `Process`
//! start each by its type and place, and so does a Pool.

mod common;

use multiproc::{Process, StartMethod, entry, spawn};

fn first() -> (u32, u32) {
    #[multiproc::process_entry]
    fn inner(x: u32) -> (u32, u32) {
        (x + 1, std::process::id())
    }
    spawn!(inner, 10).unwrap().join().unwrap()
}

fn second() -> (u32, u32) {
    #[multiproc::process_entry]
    fn inner(x: u32) -> (u32, u32) {
        (x * 100, std::process::id())
    }
    spawn!(inner, 10).unwrap().join().unwrap()
}

#[test]
fn two_local_entries_with_one_name_each_run_their_own_fn_in_a_child() {
    let me = std::process::id();
    let (a, a_pid) = first();
    let (b, b_pid) = second();
    assert_eq!((a, b), (11, 1000));
    assert_ne!(a_pid, me);
    assert_ne!(b_pid, me);
    assert_ne!(a_pid, b_pid);
    // One name in the list, however many entries answer to it.
    let names = multiproc::entries();
    assert_eq!(
        names.iter().filter(|n| **n == "duplicates::inner").count(),
        1
    );
}

#[test]
fn a_local_entry_shadowing_another_of_its_name_runs_under_both_start_methods() {
    #[multiproc::process_entry]
    fn work() -> u8 {
        1
    }
    fn nested(method: StartMethod) -> u8 {
        #[multiproc::process_entry]
        fn work() -> u8 {
            2
        }
        Process::new(entry!(work), ())
            .start_method(method)
            .start()
            .unwrap()
            .join()
            .unwrap()
    }
    for method in common::start_methods() {
        assert_eq!(nested(method), 2);
        let outer = Process::new(entry!(work), ()).start_method(method);
        assert_eq!(outer.start().unwrap().join().unwrap(), 1);
    }
}

#[test]
fn a_pool_runs_each_of_two_entries_that_share_a_name() {
    #[multiproc::process_entry]
    fn by_name() -> u8 {
        1
    }
    fn other(pool: &multiproc::Pool) -> u8 {
        #[multiproc::process_entry]
        fn by_name() -> u8 {
            2
        }
        pool.apply(entry!(by_name), ()).unwrap()
    }
    let pool = multiproc::Pool::new(1).unwrap();
    assert_eq!(pool.apply(entry!(by_name), ()).unwrap(), 1);
    assert_eq!(other(&pool), 2);
    assert_eq!(pool.map(entry!(by_name_twice), [3u8]).unwrap(), [6]);
    // Started by type, each still runs.
    assert_eq!(spawn!(by_name).unwrap().join().unwrap(), 1);
}

#[multiproc::process_entry]
fn by_name_twice(x: u8) -> u8 {
    x * 2
}

#[test]
fn a_manager_runs_each_of_two_update_with_entries_that_share_a_name() {
    fn add_one(d: &multiproc::DictProxy<String, u64>) -> u64 {
        #[multiproc::process_entry]
        fn bump(old: Option<u64>) -> u64 {
            old.unwrap_or(0) + 1
        }
        d.update_with("n".to_string(), entry!(bump)).unwrap()
    }
    fn add_hundred(d: &multiproc::DictProxy<String, u64>) -> u64 {
        #[multiproc::process_entry]
        fn bump(old: Option<u64>) -> u64 {
            old.unwrap_or(0) + 100
        }
        d.update_with("n".to_string(), entry!(bump)).unwrap()
    }
    let manager = multiproc::Manager::start().unwrap();
    let d = manager.dict().unwrap();
    assert_eq!(add_one(&d), 1);
    assert_eq!(add_hundred(&d), 101);
}

/// Two local entries of one name from one macro invocation: `line!()` and
/// `column!()` name the invocation for both, so they share name and place.
macro_rules! two_entries_at_one_place {
    () => {
        fn start_first() -> multiproc::Result<u8> {
            #[multiproc::process_entry]
            fn same_place() -> u8 {
                1
            }
            spawn!(same_place)?.join()
        }
        fn start_second() -> multiproc::Result<u8> {
            #[multiproc::process_entry]
            fn same_place() -> u8 {
                2
            }
            spawn!(same_place)?.join()
        }
    };
}

two_entries_at_one_place!();

#[test]
fn entries_that_share_name_and_place_are_refused_naming_both() {
    for start in [start_first, start_second] {
        let err = start().unwrap_err();
        assert_eq!(err.kind(), multiproc::ErrorKind::DuplicateEntry, "{err}");
        let message = err.to_string();
        assert!(message.contains("2 entries"), "{message}");
        assert!(message.contains("duplicates::same_place"), "{message}");
        assert_eq!(
            message.matches("tests/duplicates.rs:").count(),
            2,
            "{message}"
        );
    }
    // Registered all the same, under one name.
    let names = multiproc::entries();
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "duplicates::same_place")
            .count(),
        1
    );
}
