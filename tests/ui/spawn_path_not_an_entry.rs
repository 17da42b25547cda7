use multiproc::spawn;

mod work {
    pub fn plain(a: i32) -> i32 {
        a
    }
}

fn main() {
    let _ = spawn!(work::plain, 1);
}
