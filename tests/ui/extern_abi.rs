use multiproc::process_entry;

#[process_entry]
extern "C" fn exported(n: u32) -> u32 {
    n
}

fn main() {}
