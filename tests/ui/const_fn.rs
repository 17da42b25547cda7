use multiproc::process_entry;

#[process_entry]
const fn seven() -> u32 {
    7
}

fn main() {}
