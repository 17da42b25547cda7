use multiproc::process_entry;

trait Maker {
    // A default body with neither `self` nor `Self`: only the caller's file
    // shows that this is inside a `trait`.
    #[process_entry]
    fn make(n: u32) -> u32 {
        n
    }
}

fn main() {}
