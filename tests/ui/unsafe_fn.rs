use multiproc::process_entry;

#[process_entry]
unsafe fn raw(n: u32) -> u32 {
    n
}

fn main() {}
