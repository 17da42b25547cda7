//! Seed 1: start three processes and wait for them.
//!
//! ```python
//! from multiprocessing import Process
//! def f(name):
//!     print('hello', name)
//!
//! if __name__ == '__main__':
//!     p_list = []
//!     for i in range(3):
//!         p = Process(target=f, args=('AAA',))
//!         p_list.append(p)
//!         p.start()
//!     for p in p_list:
//!         p.join()
//!     print('done')
//! ```

use multiproc::{Process, entry, process_entry};

use super::Summary;

#[process_entry]
fn f(name: String) {
    println!("hello {name} (pid {})", std::process::id());
}

pub fn run() -> multiproc::Result<Summary> {
    let mut p_list = Vec::new();
    for _ in 0..3 {
        let p = Process::new(entry!(f), ("AAA".to_string(),)).start()?;
        p_list.push(p);
    }
    let pids: Vec<u32> = p_list.iter().map(|p| p.pid()).collect();
    for p in p_list {
        p.join()?;
    }
    println!("done");
    Ok(Summary {
        detail: format!("3 children joined (pids {pids:?})"),
    })
}
