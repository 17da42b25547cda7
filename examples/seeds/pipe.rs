//! Seed 3: a pipe between parent and child.
//!
//! ```python
//! from multiprocessing import Process, Pipe
//! def f(conn):
//!     conn.send([42, None, 'hello'])
//!     conn.close()
//!
//! if __name__ == '__main__':
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=f, args=(child_conn,))
//!     p.start()
//!     print(parent_conn.recv())
//! ```

use multiproc::{Connection, Pipe, Process, entry, process_entry};

use super::Summary;

type Message = (i32, Option<i32>, String);

#[process_entry]
fn f(conn: Connection<Message>) {
    conn.send(&(42, None, "hello".to_string()))
        .expect("parent gone");
    conn.close();
}

pub fn run() -> multiproc::Result<Summary> {
    let (parent_conn, child_conn) = Pipe::duplex()?;
    let p = Process::new(entry!(f), (child_conn,)).start()?;
    let (a, b, c) = parent_conn.recv()?;
    let b = b.map_or("None".to_string(), |b| b.to_string());
    println!("[{a}, {b}, '{c}']");
    p.join()?;
    Ok(Summary {
        detail: "one message from child to parent through a pipe".to_string(),
    })
}
