mod tasks;

use multiproc::spawn;
use tasks::add;

fn main() {
    let _ = spawn!(add, 1, 2);
}
