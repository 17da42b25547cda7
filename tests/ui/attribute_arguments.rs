use multiproc::process_entry;

#[process_entry(name = "x")]
fn work() {}

fn main() {}
