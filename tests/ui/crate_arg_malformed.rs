use multiproc::process_entry;

#[process_entry(crate = 42)]
fn work() {}

fn main() {}
