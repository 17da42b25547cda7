use multiproc::process_entry;

struct Worker;

impl Worker {
    // No `self` and no `Self`: the attribute sees a plain fn, so rustc
    // reports the item it cannot place in an impl, once.
    #[process_entry]
    fn make(n: u32) -> u32 {
        n
    }
}

fn main() {}
