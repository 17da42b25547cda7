use multiproc::process_entry;

trait Maker {
    // A default body with neither `self` nor `Self`: the attribute sees a
    // plain fn, so rustc reports the item it cannot place in a trait, once.
    #[process_entry]
    fn make(n: u32) -> u32 {
        n
    }
}

fn main() {}
