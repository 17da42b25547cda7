//! A crate that depends on `multiproc` under another name, `mp`.
//!
//! `#[process_entry]` names `::multiproc` in the code it generates, which
//! does not resolve here; `#[process_entry(crate = mp)]` names `mp` instead.
//! `spawn!` and `entry!` need nothing: they name their own crate.

/// Doubles `x`, in a child process when started with `spawn!`.
#[mp::process_entry(crate = mp)]
pub fn double(x: u64) -> u64 {
    x * 2
}

/// The same, with the path given as a string, as serde's `crate = "…"`.
#[mp::process_entry(crate = "::mp")]
pub fn triple(x: u64) -> u64 {
    x * 3
}

#[cfg(test)]
mod tests {
    use mp::{Process, entry, spawn};

    #[mp::process_entry(crate = mp)]
    fn pid() -> u32 {
        std::process::id()
    }

    #[test]
    fn entries_of_a_renamed_dependency_run_in_a_child() {
        assert_eq!(spawn!(super::double, 21).unwrap().join().unwrap(), 42);
        let child = Process::new(entry!(super::triple), (5,)).start().unwrap();
        assert_eq!(child.join().unwrap(), 15);
        assert_ne!(spawn!(pid).unwrap().join().unwrap(), std::process::id());
        assert!(mp::entries().contains(&"multiproc_renamed_dep::double"));
    }
}
