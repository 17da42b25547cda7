use multiproc::process_entry;

#[process_entry(crate)]
fn work() {}

fn main() {}
