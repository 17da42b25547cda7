use multiproc::process_entry;

struct Worker;

impl Worker {
    // No `self` and no `Self`: the tokens are those of a free fn, and only
    // the caller's file shows that this is inside an `impl`.
    #[process_entry]
    fn make(n: u32) -> u32 {
        n
    }
}

fn main() {}
