use multiproc::process_entry;

#[process_entry]
fn printf_like(format: u32, rest: ...) -> u32 {
    format
}

fn main() {}
