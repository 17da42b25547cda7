//! Seed program 1: start three processes and wait for them.
//!
//! ```python
//! def f(name):
//!     print('hello', name)
//! for i in range(3): Process(target=f, args=('AAA',)).start() ... join ...
//! print('done')
//! ```

use multiproc::{Process, entry, process_entry};

#[process_entry]
fn f(name: String) {
    println!("hello {name} (pid {})", std::process::id());
}

fn main() -> multiproc::Result<()> {
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(Process::new(entry!(f), ("AAA".to_string(),)).start()?);
    }
    for child in children {
        child.join()?;
    }
    println!("done");
    Ok(())
}
