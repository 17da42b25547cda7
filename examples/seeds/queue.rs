//! Seed 2: a queue shared by three children.
//!
//! ```python
//! from multiprocessing import Process, Queue
//! def f(q, n):
//!     q.put([n, 'hello'])
//!
//! if __name__ == '__main__':
//!     q = Queue()
//!     p_list = []
//!     for i in range(3):
//!         p = Process(target=f, args=(q, i))
//!         p_list.append(p)
//!         p.start()
//!     print(q.get()); print(q.get()); print(q.get())
//!     for p in p_list:
//!         p.join()
//! ```

use multiproc::{Process, Queue, entry, process_entry};

use super::Summary;

#[process_entry]
fn f(q: Queue<(i32, String)>, n: i32) {
    q.put((n, "hello".to_string())).expect("queue closed");
}

pub fn run() -> multiproc::Result<Summary> {
    let q = Queue::new()?;
    let mut p_list = Vec::new();
    for i in 0..3 {
        let p = Process::new(entry!(f), (q.clone(), i)).start()?;
        p_list.push(p);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let (n, word) = q.get()?;
        println!("[{n}, '{word}']");
        got.push(n);
    }
    for p in p_list {
        p.join()?;
    }
    Ok(Summary {
        detail: format!("3 items through one queue, in the order {got:?}"),
    })
}
