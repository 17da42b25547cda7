// A `use` in the calling fn could bring in a marker the macro cannot see,
// so the call names the path directly, and rustc's resolution error names
// the macro to use.
use multiproc::spawn;

mod work {
    pub fn plain(a: i32) -> i32 {
        a
    }
}

fn main() {
    use work::plain;
    let _ = spawn!(plain, 1);
}
