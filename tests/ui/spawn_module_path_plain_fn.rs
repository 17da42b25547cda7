mod tasks;

use multiproc::spawn;

fn main() {
    let _ = spawn!(tasks::add, 1, 2);
}
