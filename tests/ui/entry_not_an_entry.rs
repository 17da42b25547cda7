use multiproc::{entry, Process};

fn plain(a: i32) -> i32 {
    a
}

fn main() {
    let _ = Process::new(entry!(plain), (1,)).start();
}
