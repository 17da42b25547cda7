use multiproc::process_entry;

#[process_entry]
#[multiproc::process_entry]
fn twice(x: u32) -> u32 {
    x
}

fn main() {
    let _ = twice(1);
}
