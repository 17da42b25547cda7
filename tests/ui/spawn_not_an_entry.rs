use multiproc::spawn;

fn plain(a: i32) -> i32 {
    a
}

fn main() {
    let _ = spawn!(plain, 1);
}
