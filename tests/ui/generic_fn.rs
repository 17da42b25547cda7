use multiproc::process_entry;

#[process_entry]
fn identity<T: Clone>(value: T) -> T {
    value
}

fn main() {}
