use multiproc::spawn;

fn plain(a: i32) -> i32 {
    a
}

mod tests {
    use super::*;

    fn starts() {
        let _ = spawn!(plain, 1);
    }
}

fn main() {}
