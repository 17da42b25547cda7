use multiproc::process_entry;

// An open file cannot be serialized; the hint names `multiproc::Fd`.
#[process_entry]
fn read_all(file: std::fs::File) -> usize {
    let _ = file;
    0
}

fn main() {}
