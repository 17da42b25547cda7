use multiproc::{process_entry, spawn};

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

fn main() {
    let _ = spawn!(add, 1, 2, 3);
}
