//! Seed 4: a Manager dict and list mutated by five children.
//!
//! ```python
//! from multiprocessing import Process, Manager
//! def f(d, l, n):
//!     d[n] = '1'
//!     d['2'] = 2
//!     d[0.25] = None
//!     l.append(n)
//!     print(l)
//!
//! if __name__ == '__main__':
//!     with Manager() as manager:
//!         d = manager.dict()
//!         l = manager.list(range(5))
//!         p_list = []
//!         for i in range(5):
//!             p = Process(target=f, args=(d, l, i))
//!             p.start()
//!             p_list.append(p)
//!         for p in p_list:
//!             p.join()
//!         print(d)
//!         print(l)
//! ```
//!
//! Python's keys of mixed types become an enum here. One addition: each
//! child also counts itself with `update_with`, a read-modify-write that
//! runs in one step on the server, so no increment is lost.

use std::fmt;

use multiproc::{DictProxy, ListProxy, Manager, Process, entry, process_entry};
use serde::{Deserialize, Serialize};

use super::Summary;

/// A Python dict key of this program: an int, a string or a float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Key {
    Int(i64),
    Str(String),
    Float(f64),
}

/// A Python value of this program: a string, an int or `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Val {
    Str(String),
    Int(i64),
    None,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(n) => write!(f, "{n}"),
            Key::Str(s) => write!(f, "'{s}'"),
            Key::Float(x) => write!(f, "{x}"),
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Str(s) => write!(f, "'{s}'"),
            Val::Int(n) => write!(f, "{n}"),
            Val::None => f.write_str("None"),
        }
    }
}

/// Python's `print(l)`.
fn show_list(l: &[i64]) -> String {
    let items: Vec<String> = l.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Python's `print(d)`, ints first, then strings, then floats.
fn show_dict(mut items: Vec<(Key, Val)>) -> String {
    let rank = |k: &Key| match k {
        Key::Int(n) => (0, *n as f64, String::new()),
        Key::Str(s) => (1, 0.0, s.clone()),
        Key::Float(x) => (2, *x, String::new()),
    };
    items.sort_by(|a, b| {
        let (ra, rb) = (rank(&a.0), rank(&b.0));
        ra.0.cmp(&rb.0)
            .then(ra.1.total_cmp(&rb.1))
            .then(ra.2.cmp(&rb.2))
    });
    let items: Vec<String> = items.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

#[process_entry]
fn add_one(old: Option<u64>) -> u64 {
    old.unwrap_or(0) + 1
}

#[process_entry]
fn f(d: DictProxy<Key, Val>, l: ListProxy<i64>, counts: DictProxy<String, u64>, n: i64) {
    d.insert(Key::Int(n), Val::Str("1".into())).unwrap();
    d.insert(Key::Str("2".into()), Val::Int(2)).unwrap();
    d.insert(Key::Float(0.25), Val::None).unwrap();
    l.push(n).unwrap();
    counts
        .update_with("children".into(), entry!(add_one))
        .unwrap();
    println!("{}", show_list(&l.snapshot().unwrap()));
}

pub fn run() -> multiproc::Result<Summary> {
    let manager = Manager::start()?;
    let d = manager.dict::<Key, Val>()?;
    let l = manager.list::<i64>((0..5).collect())?;
    let counts = manager.dict::<String, u64>()?;
    let mut p_list = Vec::new();
    for i in 0..5 {
        let p = Process::new(entry!(f), (d.clone(), l.clone(), counts.clone(), i)).start()?;
        p_list.push(p);
    }
    for p in p_list {
        p.join()?;
    }
    let items = d.items()?;
    let list = l.snapshot()?;
    let children = counts.get("children")?.unwrap_or(0);
    println!("{}", show_dict(items.clone()));
    println!("{}", show_list(&list));
    println!("children counted: {children}");
    manager.shutdown()?;
    Ok(Summary {
        detail: format!(
            "{} keys in the dict, {} items in the list, {children} children counted",
            items.len(),
            list.len()
        ),
    })
}
