//! The Manager across real processes: proxies in children, proxies sent
//! through queues and pipes, faults (a client killed holding a lock, a
//! server killed under its clients, bad bytes), and the capability model.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use multiproc::{
    Connection, DictProxy, ErrorKind, EventProxy, ListProxy, LockProxy, Manager, NamespaceProxy,
    Pipe, Queue, RecvTimeoutError, SemaphoreProxy, SendTimeoutError, TryLockError, TryRecvError,
    TrySendError, entry, process_entry, spawn,
};
use serde::{Deserialize, Serialize};

/// A bound on how long anything here may take; never a synchronisation.
const BOUND: Duration = common::BOUND;

#[process_entry]
fn add_one(old: Option<u64>) -> u64 {
    old.unwrap_or(0) + 1
}

#[process_entry]
fn hammer(d: DictProxy<String, u64>, l: ListProxy<u32>, who: u32, times: u32) {
    for i in 0..times {
        d.update_with("count".into(), entry!(add_one)).unwrap();
        d.insert(format!("{who}-{i}"), u64::from(i)).unwrap();
        l.push(who).unwrap();
    }
}

#[test]
fn children_mutate_dict_and_list_and_nothing_is_lost() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let l = manager.list::<u32>(vec![]).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|who| spawn!(hammer, d.clone(), l.clone(), who, 50).unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!(d.get("count").unwrap(), Some(200));
    assert_eq!(d.len().unwrap(), 201);
    let snap = d.snapshot().unwrap();
    for who in 0..4 {
        for i in 0..50u32 {
            assert_eq!(snap[&format!("{who}-{i}")], u64::from(i));
        }
    }
    let items = l.snapshot().unwrap();
    assert_eq!(items.len(), 200);
    for who in 0..4 {
        assert_eq!(items.iter().filter(|x| **x == who).count(), 50);
    }
}

#[test]
fn dict_and_list_methods() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, String>().unwrap();
    assert_eq!(d.insert(1, "a".into()).unwrap(), None);
    assert_eq!(d.insert(1, "b".into()).unwrap(), Some("a".into()));
    d.update([(2, "c".to_string()), (3, "d".to_string())])
        .unwrap();
    assert!(d.contains_key(&2).unwrap());
    assert_eq!(d.remove(&2).unwrap(), Some("c".into()));
    assert!(!d.contains_key(&2).unwrap());
    let mut keys = d.keys().unwrap();
    keys.sort();
    assert_eq!(keys, vec![1, 3]);
    let mut values = d.values().unwrap();
    values.sort();
    assert_eq!(values, vec!["b".to_string(), "d".to_string()]);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());

    let l = manager.list(vec![1i32, 2, 3]).unwrap();
    l.insert(0, 0).unwrap();
    l.extend([4, 5]).unwrap();
    l.set(5, 50).unwrap();
    assert_eq!(l.set(6, 1).unwrap_err().kind(), ErrorKind::OutOfRange);
    assert_eq!(l.get(5).unwrap(), Some(50));
    assert_eq!(l.get(6).unwrap(), None);
    assert!(l.remove_value(&2).unwrap());
    assert!(!l.remove_value(&2).unwrap());
    assert_eq!(l.pop().unwrap(), Some(50));
    assert_eq!(l.pop_at(0).unwrap(), Some(0));
    assert_eq!(l.snapshot().unwrap(), vec![1, 3, 4]);
    assert_eq!(l.len().unwrap(), 3);
    // `remove` takes an index, as `Vec::remove` does.
    assert_eq!(l.remove(1).unwrap(), Some(3));
    assert_eq!(l.remove(2).unwrap(), None);
    assert_eq!(l.snapshot().unwrap(), vec![1, 4]);

    // A `String` key is looked up by `&str`, as in a `HashMap`.
    let names = manager.dict::<String, u8>().unwrap();
    names.insert("one".to_string(), 1).unwrap();
    assert_eq!(names.get("one").unwrap(), Some(1));
    assert_eq!(names.get(&"one".to_string()).unwrap(), Some(1));
    assert!(names.contains_key("one").unwrap());
    assert_eq!(names.remove("one").unwrap(), Some(1));
    assert!(!names.contains_key("one").unwrap());

    let ns = manager.namespace().unwrap();
    ns.set("x", &vec![1u8, 2]).unwrap();
    assert_eq!(ns.get::<Vec<u8>>("x").unwrap(), Some(vec![1, 2]));
    assert!(ns.get::<String>("x").is_err() || ns.get::<String>("x").unwrap().is_some());
    assert!(ns.remove("x").unwrap());
    assert_eq!(ns.get::<u8>("x").unwrap(), None);
}

#[process_entry]
fn insert_in_order(d: DictProxy<String, u32>, keys: Vec<String>) {
    for (i, k) in keys.into_iter().enumerate() {
        d.insert(k, i as u32).unwrap();
    }
}

/// Keys keep the order they were first inserted in, whichever process
/// inserted them, as in a Python `dict`: replacing a value keeps its place,
/// a removed key inserted again goes last.
#[test]
fn a_dict_keeps_insertion_order_across_processes() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    let mine: Vec<String> = (0..40).rev().map(|i| format!("parent-{i}")).collect();
    for (i, k) in mine.iter().enumerate() {
        d.insert(k.clone(), i as u32).unwrap();
    }
    let theirs: Vec<String> = (0..40).map(|i| format!("child-{}", (i * 7) % 40)).collect();
    spawn!(insert_in_order, d.clone(), theirs.clone())
        .unwrap()
        .join()
        .unwrap();
    d.insert("parent-39".into(), 1000).unwrap();
    d.remove("parent-38").unwrap();
    d.insert("parent-38".into(), 2000).unwrap();
    d.update([("late-b".to_string(), 1), ("late-a".to_string(), 2)])
        .unwrap();

    let mut expected: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    expected.retain(|k| k != "parent-38");
    expected.extend(["parent-38", "late-b", "late-a"].map(String::from));
    assert_eq!(d.keys().unwrap(), expected);
    let items = d.items().unwrap();
    let keys: Vec<&String> = items.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, expected.iter().collect::<Vec<_>>());
    let values = d.values().unwrap();
    assert_eq!(values, items.iter().map(|(_, v)| *v).collect::<Vec<_>>());
    assert_eq!(values[0], 1000, "a replaced value keeps its key's place");
}

#[process_entry]
fn claim(d: DictProxy<String, u32>, me: u32) -> u32 {
    d.get_or_insert("winner".into(), me).unwrap()
}

/// `get_or_insert` (Python's `setdefault`) is one atomic step: of children
/// racing to claim a key, one wins and every one gets its value.
/// `pop_last` (Python's `popitem`) takes entries back newest first.
#[test]
fn get_or_insert_is_atomic_and_pop_last_takes_the_newest() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    let kids: Vec<_> = (1..=6)
        .map(|me| spawn!(claim, d.clone(), me).unwrap())
        .collect();
    let got: Vec<u32> = kids.into_iter().map(|k| k.join().unwrap()).collect();
    let winner = d.get("winner").unwrap().unwrap();
    assert!((1..=6).contains(&winner));
    assert!(got.iter().all(|&g| g == winner), "{got:?} vs {winner}");
    assert_eq!(d.get_or_insert("winner".into(), 99).unwrap(), winner);
    assert_eq!(d.len().unwrap(), 1);

    d.insert("b".into(), 2).unwrap();
    d.insert("c".into(), 3).unwrap();
    d.remove("c").unwrap();
    assert_eq!(d.pop_last().unwrap(), Some(("b".into(), 2)));
    assert_eq!(d.pop_last().unwrap(), Some(("winner".into(), winner)));
    assert_eq!(d.pop_last().unwrap(), None);
}

#[process_entry]
fn reverse_list(l: ListProxy<u8>) {
    l.reverse().unwrap();
}

/// Python's `index`, `count` and `reverse` on a managed list: each one
/// request, the reverse atomic on the server (here done by a child).
#[test]
fn a_list_finds_counts_and_reverses_like_pythons() {
    let manager = Manager::start().unwrap();
    let l = manager.list(vec![3u8, 1, 3, 2]).unwrap();
    assert_eq!(l.position(&3).unwrap(), Some(0));
    assert_eq!(l.position(&2).unwrap(), Some(3));
    assert_eq!(l.position(&9).unwrap(), None);
    assert_eq!(l.count(&3).unwrap(), 2);
    assert_eq!(l.count(&9).unwrap(), 0);
    spawn!(reverse_list, l.clone()).unwrap().join().unwrap();
    assert_eq!(l.snapshot().unwrap(), vec![2, 3, 1, 3]);
    assert_eq!(l.position(&3).unwrap(), Some(1));
}

/// A message that carries proxies inside it.
#[derive(Serialize, Deserialize)]
struct Job {
    d: DictProxy<String, String>,
    ns: NamespaceProxy,
    tag: String,
}

#[process_entry]
fn take_jobs(jobs: Queue<Job>, conn: Connection<ListProxy<String>>) {
    let l = conn.recv().unwrap();
    while let Ok(job) = jobs.get() {
        job.d.insert(job.tag.clone(), "done".into()).unwrap();
        job.ns.set(&job.tag, &true).unwrap();
        l.push(job.tag).unwrap();
    }
}

#[test]
fn proxies_travel_through_queues_and_pipes_nested_in_messages() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<String, String>().unwrap();
    let ns = manager.namespace().unwrap();
    let l = manager.list::<String>(vec![]).unwrap();
    let jobs = Queue::new().unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(take_jobs, jobs.clone(), theirs).unwrap();
    mine.send(&l).unwrap();
    for tag in ["a", "b", "c"] {
        jobs.put(Job {
            d: d.clone(),
            ns: ns.clone(),
            tag: tag.into(),
        })
        .unwrap();
    }
    jobs.shutdown();
    child.join().unwrap();
    assert_eq!(d.len().unwrap(), 3);
    assert_eq!(ns.get::<bool>("b").unwrap(), Some(true));
    assert_eq!(l.snapshot().unwrap(), vec!["a", "b", "c"]);
}

#[process_entry]
fn hold_lock_forever(lock: LockProxy, sem: SemaphoreProxy, ready: Connection<u8>) {
    let guard = lock.lock().unwrap();
    let permit = sem.acquire().unwrap();
    ready.send(&1).unwrap();
    // Wait to be killed.
    let _ = ready.recv();
    drop((guard, permit));
}

#[test]
fn a_client_killed_holding_a_lock_and_a_permit_gives_them_back() {
    let manager = Manager::start().unwrap();
    let lock = manager.lock().unwrap();
    let sem = manager.semaphore(1).unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(hold_lock_forever, lock.clone(), sem.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    assert!(
        matches!(lock.try_lock(), Err(TryLockError::WouldBlock)),
        "the child holds it"
    );
    assert!(sem.try_acquire().unwrap().is_none(), "the child holds it");
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    let guard = lock.lock_timeout(BOUND);
    assert!(guard.is_ok(), "the lock of a killed client is released");
    let permit = sem.acquire_timeout(BOUND).unwrap();
    assert!(
        permit.is_some(),
        "the permit of a killed client is given back"
    );
}

#[process_entry]
fn wait_for_event(ev: EventProxy, lock: LockProxy, ready: Connection<u8>) -> String {
    let _guard = lock.lock().unwrap();
    ready.send(&1).unwrap();
    match ev.wait() {
        Ok(()) => "set".into(),
        Err(e) => format!("{:?}: {e}", e.kind()),
    }
}

#[test]
fn a_blocked_client_stalls_no_one_else() {
    let manager = Manager::start().unwrap();
    let ev = manager.event().unwrap();
    let lock = manager.lock().unwrap();
    let d = manager.dict::<u32, u32>().unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(wait_for_event, ev.clone(), lock.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // The child waits on the event on the server; we go on.
    for i in 0..100 {
        d.insert(i, i).unwrap();
    }
    assert!(lock.try_lock().is_err());
    // And in another thread of ours, while this one waits on the lock.
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.lock_timeout(BOUND).is_ok())
    };
    assert_eq!(d.len().unwrap(), 100);
    ev.set().unwrap();
    assert_eq!(child.join().unwrap(), "set");
    assert!(waiter.join().unwrap());
}

#[process_entry]
fn call_after_server_death(d: DictProxy<u8, u8>, lock: LockProxy, ready: Connection<u8>) -> String {
    let _held = lock.lock().unwrap();
    ready.send(&1).unwrap();
    let _ = ready.recv();
    match d.get(&1) {
        Ok(v) => format!("unexpected {v:?}"),
        Err(e) => format!("{:?}", e.kind()),
    }
}

#[test]
fn a_dead_server_fails_every_call_promptly_with_disconnected() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    let lock = manager.lock().unwrap();
    let q = manager.queue::<u8>().unwrap();
    d.insert(1, 1).unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(call_after_server_death, d.clone(), lock.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // Blocked on the server in two threads: a lock and a queue.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (lock, tx) = (lock.clone(), tx.clone());
        std::thread::spawn(move || tx.send(lock.lock().map(drop).unwrap_err().kind()));
    }
    {
        let q = q.clone();
        std::thread::spawn(move || tx.send(multiproc::Error::from(q.get().unwrap_err()).kind()));
    }
    // Kill the server (not through the Manager).
    let pid = manager.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let start = Instant::now();
    for _ in 0..2 {
        let kind = rx.recv_timeout(BOUND).expect("a blocked call returned");
        assert_eq!(kind, ErrorKind::Disconnected);
    }
    assert_eq!(d.get(&1).unwrap_err().kind(), ErrorKind::Disconnected);
    assert_eq!(d.insert(2, 2).unwrap_err().kind(), ErrorKind::Disconnected);
    assert_eq!(
        manager.dict::<u8, u8>().unwrap_err().kind(),
        ErrorKind::Disconnected
    );
    mine.send(&2).unwrap();
    assert_eq!(child.join().unwrap(), "Disconnected");
    assert!(start.elapsed() < BOUND);
    // Shutting down a manager whose server is gone is fine.
    manager.shutdown().unwrap();
}

#[test]
fn shutdown_stops_the_server_and_proxies_report_it() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    let pid = manager.pid().unwrap();
    manager.shutdown().unwrap();
    assert_eq!(d.len().unwrap_err().kind(), ErrorKind::Disconnected);
    // Reaped: no such process any more.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn dropping_the_manager_stops_its_server_as_shutdown_does() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    let pid = manager.pid().unwrap();
    drop(manager);
    assert_eq!(d.len().unwrap_err().kind(), ErrorKind::Disconnected);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The server's id of a proxy's object, as its `Debug` shows it.
fn object_id(proxy: &impl std::fmt::Debug) -> u64 {
    let shown = format!("{proxy:?}");
    let (_, after) = shown.split_once("object ").unwrap();
    let (id, _) = after.split_once(' ').unwrap();
    id.parse().unwrap()
}

/// Waits (within [`BOUND`]) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < BOUND, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bad_bytes_cost_a_local_client_its_connection_only() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    let pid = manager.pid().unwrap();
    let before = fd_count(pid);
    let id = object_id(&d);
    let request = |len: u32, op: u8, rest: &[u8]| {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.push(op);
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(rest);
        bytes
    };
    let cases: Vec<Vec<u8>> = vec![
        b"\xff\xff\xff\xffgarbage".to_vec(),        // over the length cap
        vec![3, 0, 0, 0, 200, 1, 2],                // unknown op
        request(9, 10, &[]),                        // a map op, no key
        request(13, 10, &[255, 255, 255, 255]),     // key longer than the frame
        (0..=255u8).cycle().take(10_000).collect(), // noise
    ];
    for bytes in cases {
        let mut raw = UnixStream::from(manager.__raw_connection().unwrap());
        raw.write_all(&bytes).unwrap();
        // A frame that announces more than it brings ends with the stream.
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        // The server closes the connection: end of stream, no reply.
        let _ = raw.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no reply to garbage: {rest:?}");
    }
    // A well-formed request for an object the server does not hold, or
    // that the object does not do, is answered with an error, on a
    // connection that stays open.
    let mut raw = UnixStream::from(manager.__raw_connection().unwrap());
    let unknown = id.wrapping_add(1 << 40);
    let mut no_object = 9u32.to_le_bytes().to_vec();
    no_object.push(14); // the length of a map
    no_object.extend_from_slice(&unknown.to_le_bytes());
    let wrong_kind = request(9, 36, &[]); // the length of a list, on a dict
    for (ask, code) in [(&no_object, 2), (&wrong_kind, 12), (&no_object, 2)] {
        raw.write_all(ask).unwrap();
        let mut head = [0u8; 6];
        raw.read_exact(&mut head).unwrap();
        assert_eq!(&head[4..], &[1, code], "an error, of the kind coded {code}");
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut rest = vec![0u8; len - 2];
        raw.read_exact(&mut rest).unwrap();
    }
    drop(raw);
    // Half a frame, then the client goes away.
    let mut raw = UnixStream::from(manager.__raw_connection().unwrap());
    raw.write_all(&[100, 0, 0, 0, 10]).unwrap();
    drop(raw);
    assert_eq!(d.get(&1).unwrap(), Some(1));
    eventually("the server's descriptors are back", || {
        fd_count(pid) == before
    });
}

#[test]
fn a_local_server_has_no_name_anyone_could_connect_to() {
    fn listing(dir: &str) -> HashSet<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    let shm_before = listing("/dev/shm");
    let tmp_before = listing("/tmp");
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    let pid = manager.pid().unwrap();
    // Every socket of the server, and none of them named.
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        // stdin, stdout and stderr are the parent's, wherever they point.
        if ["0", "1", "2"].contains(&fd.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        let target = std::fs::read_link(fd.path()).unwrap();
        let target = target.to_string_lossy();
        assert!(
            !target.starts_with("/tmp") && !target.starts_with("/dev/shm"),
            "{target}"
        );
        if let Some(ino) = target.strip_prefix("socket:[") {
            inodes.insert(ino.trim_end_matches(']').to_string());
        }
    }
    assert!(inodes.len() >= 2, "the dial socket and a connection");
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let mut seen = 0;
    for line in unix.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 7 && inodes.contains(cols[6]) {
            seen += 1;
            assert_eq!(cols.len(), 7, "a socket of the server has a name: {line}");
        }
    }
    assert!(seen >= 2, "the server's sockets are listed: {seen}");
    // Nothing new under /dev/shm; no new socket file under /tmp.
    assert!(listing("/dev/shm").is_subset(&shm_before));
    for name in listing("/tmp").difference(&tmp_before) {
        let meta = std::fs::symlink_metadata(format!("/tmp/{name}"));
        if let Ok(meta) = meta {
            use std::os::unix::fs::FileTypeExt;
            assert!(!meta.file_type().is_socket(), "/tmp/{name}");
        }
    }
}

// ---- Remote: TCP with an authkey ----

use std::net::{TcpListener, TcpStream};

use multiproc::Fd;

#[path = "common/remote.rs"]
mod remote;
use remote::{KEY, Remote, serve_remote};

#[process_entry]
fn remote_child(d: DictProxy<String, u32>, lock: LockProxy, n: u32) {
    let _guard = lock.lock().unwrap();
    d.insert(format!("child {n}"), n).unwrap();
    d.update_with("total".into(), entry!(add_u32)).unwrap();
}

#[process_entry]
fn add_u32(old: Option<u32>) -> u32 {
    old.unwrap_or(0) + 1
}

#[test]
fn a_remote_manager_serves_clients_and_its_proxies_pass_to_children() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    let lock = manager.lock().unwrap();
    let kids: Vec<_> = (0..3)
        .map(|n| spawn!(remote_child, d.clone(), lock.clone(), n).unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!(d.get("total").unwrap(), Some(3));
    assert_eq!(d.len().unwrap(), 4);
    // Connections probe a silent peer, so a vanished one is noticed.
    let raw = manager.__raw_connection().unwrap();
    assert!(rustix::net::sockopt::socket_keepalive(&raw).unwrap());
    assert!(rustix::net::sockopt::tcp_nodelay(&raw).unwrap());
}

#[test]
fn a_wrong_key_fails_at_connect_with_auth_and_the_server_keeps_serving() {
    let remote = Remote::start();
    let err = Manager::connect(&remote.addr, b"wrong key").unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Auth);
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    assert_eq!(l.snapshot().unwrap(), vec![1]);
}

#[test]
fn connecting_where_nothing_listens_is_disconnected() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = Manager::connect(&addr, KEY).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
}

#[process_entry]
fn fresh_client(addr: String, d: DictProxy<String, u32>) -> Option<u32> {
    // A new process: a new connection (and handshake) to the server.
    let manager = Manager::connect(&addr, KEY).unwrap();
    let mine = manager.dict::<u8, u8>().unwrap();
    mine.insert(1, 2).unwrap();
    d.get("x").unwrap()
}

#[test]
fn abuse_costs_a_remote_server_nothing_lasting() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    d.insert("x".into(), 7).unwrap();
    let pid = remote.pid();
    let before = fd_count(pid);

    // Random bytes instead of a handshake, long and short.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    for len in [1, 7, 40, 72, 73, 4096, 1 << 20] {
        let mut s = TcpStream::connect(&remote.addr).unwrap();
        let _ = s.write_all(&noise(len));
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        // At most the challenge and a refusal; never more.
        assert!(rest.len() <= 41, "{}", rest.len());
    }
    // A truncated handshake answer, then the client leaves.
    {
        let mut s = TcpStream::connect(&remote.addr).unwrap();
        let mut hello = [0u8; 40];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&hello[..20]).unwrap();
    }
    // Authenticated clients sending bad frames: over the cap, truncated,
    // garbage fields.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![100, 0, 0, 0, 10, 1],
        vec![3, 0, 0, 0, 200, 1, 2],
        noise(10_000),
    ] {
        let mut s = TcpStream::from(manager.__raw_connection().unwrap());
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.get(4) != Some(&0), "no success reply to garbage");
    }
    // Half a frame, and a half handshake, that then stall: others are served meanwhile.
    let mut stalled_frame = TcpStream::from(manager.__raw_connection().unwrap());
    stalled_frame.write_all(&[50, 0, 0, 0, 10, 1, 0]).unwrap();
    let mut stalled_hello = TcpStream::connect(&remote.addr).unwrap();
    stalled_hello.write_all(b"MPAUTH").unwrap();
    // 1,000 connections opened and dropped.
    for _ in 0..1000 {
        drop(TcpStream::connect(&remote.addr).unwrap());
    }
    assert_eq!(d.get("x").unwrap(), Some(7));
    let child = spawn!(fresh_client, remote.addr.clone(), d.clone()).unwrap();
    assert_eq!(child.join().unwrap(), Some(7));
    drop((stalled_frame, stalled_hello));
    eventually("the server's descriptors are back", || {
        fd_count(pid) == before
    });
    assert_eq!(d.get("x").unwrap(), Some(7));
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// More silent connections (a port scanner, a slowloris) than the server
/// handshakes with at once: a client with the key that comes after them
/// still gets in, promptly, and they cost the server a bounded number of
/// threads.
#[test]
fn silent_connections_do_not_lock_out_a_client_with_the_key() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    d.insert("x".into(), 7).unwrap();
    let pid = remote.pid();
    let before = thread_count(pid);

    let mut silent: Vec<_> = (0..200)
        .map(|_| TcpStream::connect(&remote.addr).unwrap())
        .collect();
    // The server speaks first: a byte (its challenge) or the end of the
    // stream from each means it has taken each on. The newest 128 at least
    // are in their handshake.
    let mut greeted = 0;
    for s in &mut silent {
        s.set_read_timeout(Some(BOUND)).unwrap();
        let mut byte = [0u8; 1];
        greeted += s.read(&mut byte).unwrap();
    }
    assert!(greeted >= 128, "{greeted} of 200 greeted");
    // At most 128 handshakes at once, each on a thread of its own; one
    // cut short may take a moment to end its thread. The silent ones keep
    // theirs for 10 s, so this must hold well before.
    let start = Instant::now();
    while thread_count(pid) > before + 128 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} threads for 200 silent connections, from {before}",
            thread_count(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A client in another process: a connection of its own, and so a
    // handshake of its own.
    let started = Instant::now();
    let mut child = spawn!(fresh_client, remote.addr.clone(), d.clone()).unwrap();
    let got = child.join_timeout(BOUND);
    let took = started.elapsed();
    match got {
        Ok(Some(x)) => assert_eq!(x, Some(7)),
        Ok(None) => panic!("a client with the key hung behind silent connections"),
        Err(e) => panic!("a client with the key failed after {took:?}: {e}"),
    }
    // Not after a silent connection's 10 s handshake timeout.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(d.get("x").unwrap(), Some(7));
    drop(silent);
}

// ---- The other proxies, across processes ----

use multiproc::{ArrayProxy, BarrierProxy, ConditionProxy, QueueProxy, RLockProxy, ValueProxy};

#[process_entry]
fn produce(q: QueueProxy<u32>, from: u32) {
    for i in from..from + 100 {
        q.put(i).unwrap();
    }
}

#[test]
fn a_bounded_queue_carries_every_item_once_between_processes() {
    let manager = Manager::start().unwrap();
    let q = manager.queue_bounded::<u32>(4).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|k| spawn!(produce, q.clone(), k * 1000).unwrap())
        .collect();
    let mut got = Vec::new();
    for _ in 0..300 {
        got.push(q.get_timeout(BOUND).expect("an item"));
        assert!(q.len().unwrap() <= 4);
    }
    for k in kids {
        k.join().unwrap();
    }
    got.sort();
    let want: Vec<u32> = (0..3).flat_map(|k| k * 1000..k * 1000 + 100).collect();
    assert_eq!(got, want);
    assert!(q.is_empty().unwrap());
    assert!(matches!(q.try_get(), Err(TryRecvError::Empty)));
    for i in 0..4 {
        q.try_put(i).unwrap();
    }
    assert!(q.is_full().unwrap());
    assert!(matches!(q.try_put(8), Err(TrySendError::Full(8))));
    assert!(matches!(
        q.put_timeout(9, Duration::from_millis(20)),
        Err(SendTimeoutError::Timeout(9))
    ));
}

#[process_entry]
fn get_one(q: QueueProxy<u32>, ready: Connection<u8>) -> Option<u32> {
    ready.send(&1).unwrap();
    q.get().ok()
}

#[test]
fn a_getter_killed_while_waiting_takes_no_item_with_it() {
    let manager = Manager::start().unwrap();
    let q = manager.queue::<u32>().unwrap();
    let server = manager.pid().unwrap();
    let without_getter = fd_count(server);
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(get_one, q.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // The child has sent its request and sleeps reading the reply, and
    // the server has its connection.
    eventually("the getter waits for its reply", || {
        std::fs::read_to_string(format!("/proc/{}/wchan", child.pid()))
            .is_ok_and(|w| w == "unix_stream_read_generic")
    });
    eventually("the server has the getter's connection", || {
        fd_count(server) == without_getter + 1
    });
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    // The server's wait for the dead getter ends and closes its connection
    // (it looks at the connection while waiting), before any item comes.
    eventually("the dead getter's connection is closed", || {
        fd_count(server) == without_getter
    });
    q.put(42).unwrap();
    assert_eq!(q.get_timeout(BOUND).unwrap(), 42);
}

#[process_entry]
fn try_rlock(lock: RLockProxy) -> bool {
    lock.try_lock().is_ok()
}

#[test]
fn an_rlock_is_reentrant_for_its_owner_only() {
    let manager = Manager::start().unwrap();
    let lock = manager.rlock().unwrap();
    let a = lock.lock().unwrap();
    let b = lock.lock().unwrap();
    assert!(!spawn!(try_rlock, lock.clone()).unwrap().join().unwrap());
    let other = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.try_lock().is_ok())
    };
    assert!(!other.join().unwrap(), "another thread is not the owner");
    drop(b);
    assert!(!spawn!(try_rlock, lock.clone()).unwrap().join().unwrap());
    a.unlock().unwrap();
    assert!(spawn!(try_rlock, lock.clone()).unwrap().join().unwrap());
}

#[test]
fn a_bounded_semaphore_refuses_an_extra_release() {
    let manager = Manager::start().unwrap();
    let sem = manager.bounded_semaphore(2).unwrap();
    let p = sem.acquire().unwrap();
    assert_eq!(sem.value().unwrap(), 1);
    drop(p);
    assert_eq!(
        sem.release().unwrap_err().kind(),
        ErrorKind::TooManyReleases
    );
    let plain = manager.semaphore(0).unwrap();
    plain.release().unwrap();
    plain.acquire().unwrap().forget();
    assert_eq!(plain.value().unwrap(), 0);
}

/// An error the server reports names its kind once: the client rebuilds
/// it with that kind, so the server's text must not name it again (it
/// read "broken barrier: broken barrier: the barrier is broken").
#[test]
fn errors_from_the_server_name_their_kind_once() {
    let manager = Manager::start().unwrap();
    let list = manager.list::<i64>(vec![0, 1, 2]).unwrap();
    let barrier = manager.barrier(2).unwrap();
    barrier.abort().unwrap();
    let sem = manager.bounded_semaphore(1).unwrap();
    let errors = [
        list.set(5, 1).unwrap_err(),
        barrier.wait().unwrap_err(),
        sem.release().unwrap_err(),
    ];
    for err in errors {
        let kind = err.kind().to_string();
        for text in [err.to_string(), format!("{err:#}")] {
            assert_eq!(text.matches(kind.as_str()).count(), 1, "{text}");
        }
    }
}

#[process_entry]
fn use_nested(outer: DictProxy<String, ListProxy<i64>>, q: QueueProxy<ListProxy<i64>>) -> i64 {
    let inner = outer.get("inner").unwrap().unwrap();
    inner.push(2).unwrap();
    let again = q.get().unwrap();
    again.push(3).unwrap();
    inner.snapshot().unwrap().iter().sum()
}

/// A local manager's proxy stored in one of that manager's objects (a
/// dict, a queue) comes back as a working proxy of the same object, in
/// this process and in a child, as Python nests proxies
/// (`outer.append(inner)`).
#[test]
fn a_proxy_stored_in_its_own_manager_comes_back_working() {
    let manager = Manager::start().unwrap();
    let inner = manager.list::<i64>(vec![1]).unwrap();
    let outer = manager.dict::<String, ListProxy<i64>>().unwrap();
    let q = manager.queue::<ListProxy<i64>>().unwrap();
    outer.insert("inner".into(), inner.clone()).unwrap();
    q.put(inner.clone()).unwrap();
    let sum = spawn!(use_nested, outer.clone(), q.clone())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(sum, 1 + 2 + 3, "the child's two proxies are one list");
    assert_eq!(inner.snapshot().unwrap(), vec![1, 2, 3]);
    let back = outer.get("inner").unwrap().unwrap();
    back.push(4).unwrap();
    assert_eq!(inner.snapshot().unwrap(), vec![1, 2, 3, 4]);
}

#[process_entry]
fn keep_nested(old: Option<ListProxy<i64>>) -> ListProxy<i64> {
    old.expect("update_with got no value")
}

/// `update_with` runs in the server, which has no proxy of itself to read
/// a nested proxy through: a typed error, and the dict is left as it was.
#[test]
fn update_with_over_a_nested_proxy_is_an_error_not_a_crash() {
    let manager = Manager::start().unwrap();
    let inner = manager.list::<i64>(vec![1]).unwrap();
    let outer = manager.dict::<String, ListProxy<i64>>().unwrap();
    outer.insert("inner".into(), inner).unwrap();
    let err = outer
        .update_with("inner".into(), entry!(keep_nested))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err:#}");
    assert!(
        format!("{err:#}").contains("only through a proxy of that manager")
            || cfg!(feature = "postcard"),
        "{err:#}"
    );
    let back = outer.get("inner").unwrap().unwrap();
    assert_eq!(back.snapshot().unwrap(), vec![1]);
}

/// A proxy of another local manager cannot be stored in a manager's
/// object (it travels with a descriptor, which the server does not keep):
/// the error says why in plain words, with either codec, not in the
/// codec's `OtherString("…")` nor as the rule for handles in general.
#[test]
fn a_proxy_of_another_local_manager_stored_is_a_readable_encode_error() {
    let manager = Manager::start().unwrap();
    let other = Manager::start().unwrap();
    let inner = other.list::<i64>(Vec::new()).unwrap();
    let outer = manager.dict::<String, ListProxy<i64>>().unwrap();
    let err = outer.insert("inner".into(), inner).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    let text = format!("{err:#}");
    assert!(
        text.contains("a value stored in a Manager object cannot hold multiproc handles"),
        "{text}"
    );
    assert!(!text.contains("OtherString"), "{text}");
    // A handle of another kind, in a namespace, is told the same.
    let ns = manager.namespace().unwrap();
    let err = ns.set("q", &Queue::<u8>::new().unwrap()).unwrap_err();
    assert!(
        format!("{err}").contains("stored in a Manager object"),
        "{err}"
    );
}

/// Python's `ns.x` is of any type; here `get::<T>` names it. Reading an
/// attribute as another type than it was set with says which attribute
/// and which type, not only the codec's complaint.
#[test]
fn a_namespace_attribute_read_as_another_type_is_named() {
    let manager = Manager::start().unwrap();
    let ns = manager.namespace().unwrap();
    ns.set("y", "hello").unwrap();
    let err = ns.get::<u64>("y").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let text = err.to_string();
    assert!(text.contains("`y`") && text.contains("`u64`"), "{text}");
    assert_eq!(ns.get::<String>("y").unwrap().as_deref(), Some("hello"));
}

/// An item whose `Serialize` always fails, with its own message.
#[derive(Debug, Deserialize)]
struct Refuses;

impl Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Refuses says no"))
    }
}

/// A handle refused while a manager's value was encoded leaves no trace
/// that a later, unrelated encode error on the thread reports as its own.
#[test]
fn a_refused_handle_does_not_become_a_later_errors_message() {
    let manager = Manager::start().unwrap();
    let other = Manager::start().unwrap();
    let inner = other.list::<i64>(Vec::new()).unwrap();
    let outer = manager.dict::<String, ListProxy<i64>>().unwrap();
    assert!(outer.insert("inner".into(), inner).is_err());
    let q = Queue::<Refuses>::new().unwrap();
    let err = match q.put(Refuses) {
        Err(multiproc::SendError::Failed(_, e)) => e,
        other => panic!("expected Failed, got {other:?}"),
    };
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    let text = format!("{err:#}");
    assert!(!text.contains("handle"), "{text}");
    if !cfg!(feature = "postcard") {
        assert!(text.contains("Refuses says no"), "{text}");
    }
}

/// Releases `sem`, full at `u64::MAX` permits, once too often: a typed
/// refusal, as from a bounded semaphore over its limit, and the server
/// goes on serving the connection.
fn refuse_a_release_past_u64_max(sem: &SemaphoreProxy) {
    let err = sem.release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooManyReleases, "{err}");
    assert_eq!(sem.value().unwrap(), u64::MAX, "the count wrapped");
    let permit = sem.acquire().unwrap();
    assert_eq!(sem.value().unwrap(), u64::MAX - 1);
    drop(permit);
    assert_eq!(sem.value().unwrap(), u64::MAX);
}

#[test]
fn a_semaphore_refuses_a_release_past_u64_max() {
    let manager = Manager::start().unwrap();
    let sem = manager.semaphore(u64::MAX).unwrap();
    refuse_a_release_past_u64_max(&sem);

    // A dead holder whose permit was already given back by a release
    // gives nothing back again: the count neither wraps nor overflows.
    let lock = manager.lock().unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(hold_lock_forever, lock.clone(), sem.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    assert_eq!(sem.value().unwrap(), u64::MAX - 1);
    sem.release().unwrap();
    assert_eq!(sem.value().unwrap(), u64::MAX);
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    // The child's lock is released when its connection's end is handled,
    // in the same step as its permits.
    assert!(lock.lock_timeout(BOUND).is_ok());
    assert_eq!(sem.value().unwrap(), u64::MAX);
    refuse_a_release_past_u64_max(&sem);
}

#[test]
fn a_remote_semaphore_refuses_a_release_past_u64_max_and_keeps_serving() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let sem = manager.semaphore(u64::MAX).unwrap();
    refuse_a_release_past_u64_max(&sem);
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
}

#[process_entry]
fn wait_on_condition(cond: ConditionProxy, state: ValueProxy<u32>, ready: EventProxy) -> u32 {
    let guard = cond.lock().unwrap();
    ready.set().unwrap();
    let guard = cond
        .wait_while(guard, || state.get().unwrap() == 0)
        .unwrap();
    let v = state.get().unwrap();
    drop(guard);
    v
}

#[test]
fn a_condition_wakes_a_waiter_in_another_process() {
    let manager = Manager::start().unwrap();
    let cond = manager.condition().unwrap();
    let state = manager.value(0u32).unwrap();
    let ready = manager.event().unwrap();
    let child = spawn!(
        wait_on_condition,
        cond.clone(),
        state.clone(),
        ready.clone()
    )
    .unwrap();
    assert!(ready.wait_timeout(BOUND).unwrap());
    // The child set `ready` holding the lock: taking it means it is waiting.
    let guard = cond.lock().unwrap();
    state.set(7).unwrap();
    cond.notify(1).unwrap();
    drop(guard);
    assert_eq!(child.join().unwrap(), 7);
    // Notify without the lock is refused.
    assert_eq!(cond.notify_all().unwrap_err().kind(), ErrorKind::NotOwner);
}

#[process_entry]
fn meet(b: BarrierProxy, arrivals: ListProxy<usize>) {
    let index = b.wait_timeout(BOUND).unwrap();
    arrivals.push(index).unwrap();
}

#[test]
fn a_barrier_lets_parties_through_together_and_breaks_on_timeout() {
    let manager = Manager::start().unwrap();
    let b = manager.barrier(3).unwrap();
    let arrivals = manager.list::<usize>(vec![]).unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| spawn!(meet, b.clone(), arrivals.clone()).unwrap())
        .collect();
    let mine = b.wait_timeout(BOUND).unwrap();
    for k in kids {
        k.join().unwrap();
    }
    let mut all = arrivals.snapshot().unwrap();
    all.push(mine);
    all.sort();
    assert_eq!(all, vec![0, 1, 2]);
    // Alone at a barrier of 3: the timeout breaks it, for later waiters too.
    let err = b.wait_timeout(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenBarrier);
    assert!(b.is_broken().unwrap());
    assert_eq!(b.wait().unwrap_err().kind(), ErrorKind::BrokenBarrier);
    b.reset().unwrap();
    assert!(!b.is_broken().unwrap());
    assert_eq!(b.n_waiting().unwrap(), 0);
}

#[process_entry]
fn bump_value(v: ValueProxy<u64>, a: ArrayProxy<u64>, slot: usize) {
    for _ in 0..20 {
        v.update_with(entry!(add_one)).unwrap();
    }
    a.set(slot, slot as u64 * 10).unwrap();
}

#[test]
fn values_and_arrays_are_shared_and_update_with_is_atomic() {
    let manager = Manager::start().unwrap();
    let v = manager.value(0u64).unwrap();
    let a = manager.array(vec![0u64; 4]).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|slot| spawn!(bump_value, v.clone(), a.clone(), slot).unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!(v.get().unwrap(), 80);
    // Set by value or by reference.
    v.set(81).unwrap();
    assert_eq!(v.get().unwrap(), 81);
    let eighty = 80;
    #[allow(clippy::needless_borrows_for_generic_args)]
    v.set(&eighty).unwrap();
    assert_eq!(v.get().unwrap(), 80);
    assert_eq!(a.snapshot().unwrap(), vec![0, 10, 20, 30]);
    assert_eq!(a.len().unwrap(), 4);
    assert_eq!(a.set(4, 1).unwrap_err().kind(), ErrorKind::OutOfRange);
}

#[process_entry]
fn boom(_old: Option<u64>) -> u64 {
    panic!("no update for you")
}

#[test]
fn update_with_reports_a_panic_and_leaves_the_value() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u64>().unwrap();
    d.insert(1, 5).unwrap();
    let err = d.update_with(1, entry!(boom)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert_eq!(d.get(&1).unwrap(), Some(5));
    // The server still serves.
    assert_eq!(d.update_with(1, entry!(add_one)).unwrap(), 6);
}

/// A value whose `Serialize` panics: a bug in a user's type.
#[derive(Deserialize)]
struct Explodes;

impl Serialize for Explodes {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this value cannot be encoded")
    }
}

#[test]
fn a_thread_that_panics_in_a_call_releases_nothing_its_process_holds() {
    let manager = Manager::start().unwrap();
    let pid = manager.pid().unwrap();
    let lock = manager.lock().unwrap();
    let sem = manager.semaphore(1).unwrap();
    let l = manager.list::<Explodes>(vec![]).unwrap();
    let guard = lock.lock().unwrap();
    let permit = sem.acquire().unwrap();
    let before = fd_count(pid);
    // The thread takes the connection this process holds the lock and the
    // permit through (the idle one), and panics while encoding.
    let thread = std::thread::spawn(move || l.push(Explodes));
    assert!(thread.join().is_err(), "the encoding panicked");
    // Had that connection been closed, the server would have released what
    // it held and then closed its end: a descriptor fewer. Look for that,
    // within a bound, before asking.
    let start = Instant::now();
    while fd_count(pid) >= before && start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        lock.try_lock().is_err(),
        "this process still holds the lock"
    );
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "this process still holds the permit"
    );
    drop((guard, permit));
    assert!(lock.try_lock().is_ok());
    assert!(sem.try_acquire().unwrap().is_some());
}

/// Serves a remote manager on `listener` (kept open by the caller, so the
/// address stays the same across servers) in a child.
fn serve_on_shared(listener: &TcpListener) -> Remote {
    let addr = listener.local_addr().unwrap().to_string();
    let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
    let server = spawn!(serve_remote, Fd::from(fd), KEY.to_vec()).unwrap();
    Remote {
        addr,
        server: Some(server),
    }
}

#[test]
fn a_remote_server_restarted_on_its_address_is_reached_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let first = serve_on_shared(&listener);
    let old = Manager::connect(&first.addr, KEY).unwrap();
    old.dict::<u8, u8>().unwrap().insert(1, 1).unwrap();
    drop(first);
    let second = serve_on_shared(&listener);
    // This process still has a connection to the first server, idle.
    let new = Manager::connect(&second.addr, KEY).unwrap();
    let d = new.dict::<u8, u8>().unwrap();
    d.insert(2, 2).unwrap();
    assert_eq!(d.snapshot().unwrap().len(), 1);
}

#[test]
fn a_proxy_of_a_restarted_remote_server_touches_none_of_its_new_objects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let first = serve_on_shared(&listener);
    let old = Manager::connect(&first.addr, KEY).unwrap();
    let stale = old.dict::<String, u32>().unwrap();
    stale.insert("old".into(), 1).unwrap();
    drop(first);
    let second = serve_on_shared(&listener);
    let new = Manager::connect(&second.addr, KEY).unwrap();
    let fresh = new.dict::<String, u32>().unwrap();
    let lock = new.lock().unwrap();
    let guard = lock.lock().unwrap();
    // The object is gone with its server: a typed error, not another object.
    let err = stale.insert("stale".into(), 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    let err = stale.len().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert_eq!(fresh.len().unwrap(), 0);
    // The connection that error came through, which this process holds
    // the lock through, stayed open.
    assert!(lock.try_lock().is_err());
    drop(guard);
    assert!(lock.try_lock().is_ok());
}

#[process_entry]
fn keep_a_permit(sem: SemaphoreProxy, ready: Connection<u8>) {
    sem.acquire().unwrap().forget();
    // The last proxy of that manager in this process goes.
    drop(sem);
    ready.send(&1).unwrap();
    // Live on until told to end.
    let _ = ready.recv();
}

#[test]
fn a_forgotten_permit_stays_taken_while_its_process_lives() {
    let manager = Manager::start().unwrap();
    let pid = manager.pid().unwrap();
    let sem = manager.semaphore(1).unwrap();
    let before = fd_count(pid);
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(keep_a_permit, sem.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // Had the child's connection been closed, the server would have given
    // the permit back and then closed its end. Look for that, within a
    // bound, before asking.
    let start = Instant::now();
    while fd_count(pid) > before && start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sem.value().unwrap(), 0, "the child keeps its permit");
    mine.send(&0).unwrap();
    child.join().unwrap();
    let permit = sem.acquire_timeout(BOUND).unwrap();
    assert!(permit.is_some(), "given back when its process ended");
}

#[process_entry]
fn wait_to_be_notified(cond: ConditionProxy, ready: Connection<u8>) -> bool {
    let guard = cond.lock().unwrap();
    ready.send(&1).unwrap();
    let (_guard, timed_out) = cond.wait_timeout(guard, BOUND).unwrap();
    !timed_out
}

#[test]
fn a_notification_taken_by_a_dead_waiter_goes_to_the_next() {
    let manager = Manager::start().unwrap();
    let cond = manager.condition().unwrap();
    let mut kids = Vec::new();
    for _ in 0..2 {
        let (mine, theirs) = Pipe::duplex().unwrap();
        kids.push(spawn!(wait_to_be_notified, cond.clone(), theirs).unwrap());
        assert_eq!(mine.recv().unwrap(), 1);
        // It sent that holding the lock: taking it means it is waiting.
        drop(cond.lock().unwrap());
    }
    let second = kids.pop().unwrap();
    let first = kids.pop().unwrap();
    // The first waiter dies; its server thread notices at its next look.
    first.kill().unwrap();
    assert!(first.join().unwrap_err().is_signaled());
    let guard = cond.lock().unwrap();
    cond.notify(1).unwrap();
    drop(guard);
    assert!(second.join().unwrap(), "the live waiter was notified");
}

#[process_entry]
fn wait_at_barrier(b: BarrierProxy, ready: Connection<u8>) -> bool {
    ready.send(&1).unwrap();
    b.wait_timeout(BOUND).is_err()
}

#[test]
fn manager_objects_refuse_and_count_as_the_crates_own_do() {
    let manager = Manager::start().unwrap();
    // As `Barrier::new(0)` and `Queue::bounded(0)`: a caller's mistake.
    let err = manager.barrier(0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = manager.queue_bounded::<u8>(0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // A broken barrier has no one waiting at it, as `Barrier::n_waiting`.
    let b = manager.barrier(3).unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(wait_at_barrier, b.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    let start = Instant::now();
    while b.n_waiting().unwrap() == 0 {
        assert!(start.elapsed() < BOUND, "the child never waited");
        std::thread::sleep(Duration::from_millis(1));
    }
    b.abort().unwrap();
    assert!(child.join().unwrap(), "the waiter saw the barrier broken");
    assert!(b.is_broken().unwrap());
    assert_eq!(b.n_waiting().unwrap(), 0);
}

#[test]
fn a_timeout_under_a_millisecond_still_waits() {
    let manager = Manager::start().unwrap();
    let ev = manager.event().unwrap();
    let q = manager.queue::<u8>().unwrap();
    let lock = manager.lock().unwrap();
    let _held = lock.lock().unwrap();
    let wait = Duration::from_micros(900);
    let start = Instant::now();
    assert!(!ev.wait_timeout(wait).unwrap());
    assert!(start.elapsed() >= wait, "the event wait returned early");
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(wait),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= wait, "the queue get returned early");
    let start = Instant::now();
    assert!(lock.lock_timeout(wait).is_err());
    assert!(start.elapsed() >= wait, "the lock wait returned early");
}

#[test]
fn a_proxy_decoded_as_another_type_gets_an_error_and_costs_nothing() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let ns = manager.namespace().unwrap();
    let lock = manager.lock().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    ns.set("shared", &d).unwrap();
    let guard = lock.lock().unwrap();
    // Remote proxies carry no descriptor, so a namespace holds them, and
    // gives them back as whatever type is asked for.
    let wrong = ns.get::<ListProxy<u8>>("shared").unwrap().unwrap();
    let err = wrong.push(1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = wrong.len().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // The connection that error came through, which this process holds
    // the lock through, stayed open.
    assert!(lock.try_lock().is_err());
    drop(guard);
    assert!(lock.try_lock().is_ok());
    assert_eq!(d.len().unwrap(), 0);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_message_leaves_no_large_buffer_behind() {
    const BIG: usize = 64 << 20;
    let manager = Manager::start().unwrap();
    let pid = manager.pid().unwrap();
    let l = manager.list::<String>(vec![]).unwrap();
    l.push("small".into()).unwrap();
    let before = rss_kib(pid);
    l.push("x".repeat(BIG)).unwrap();
    let got = l.pop().unwrap().unwrap();
    assert_eq!(got.len(), BIG);
    drop(got);
    // The item is gone from the server; the buffers that carried it in
    // and out should be too (once it has sent the reply), on a connection
    // this process keeps.
    eventually("the server lets go of the buffers", || {
        rss_kib(pid) < before + (BIG as u64 >> 10) / 4
    });
    assert_eq!(l.len().unwrap(), 1);
}

#[process_entry]
fn hold_a_permit(sem: SemaphoreProxy, ready: Connection<u8>) {
    let permit = sem.acquire().unwrap();
    ready.send(&1).unwrap();
    // Wait to be killed.
    let _ = ready.recv();
    drop(permit);
}

#[test]
fn a_permit_given_back_through_another_connection_is_its_processs_own() {
    let manager = Manager::start().unwrap();
    // Which other holder the server picked was a matter of hash order:
    // enough rounds that a wrong pick would show.
    for round in 0..8 {
        let sem = manager.semaphore(2).unwrap();
        let lock = manager.lock().unwrap();
        let (mine, theirs) = Pipe::duplex().unwrap();
        let child = spawn!(hold_a_permit, sem.clone(), theirs).unwrap();
        assert_eq!(mine.recv().unwrap(), 1);
        // The permit and the lock are taken through this thread's
        // connection, which a second thread then waits for the lock on.
        let permit = sem.acquire().unwrap();
        let held = lock.lock().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                tid_tx
                    .send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                    .unwrap();
                drop(lock.lock().unwrap());
            })
        };
        common::until_asleep("the second thread waits", tid_rx.recv().unwrap());
        // So the permit goes back through another connection.
        drop(permit);
        drop(held);
        waiter.join().unwrap();
        assert_eq!(sem.value().unwrap(), 1, "round {round}: the child's is out");
        child.kill().unwrap();
        assert!(child.join().unwrap_err().is_signaled());
        eventually("the killed child's permit comes back", || {
            sem.value().unwrap() == 2
        });
    }
}

/// The CPU time process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, after_name) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_non_blocking_listener_is_served_without_spinning() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let remote = serve_on_shared(&listener);
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    // An idle server uses next to no CPU; one that spins on `accept`
    // uses all it is given. A window to measure in, not a wait.
    let before = cpu_ticks(remote.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(remote.pid()) - before;
    assert!(used < 10, "the idle server used {used} ticks of CPU in 1 s");
    assert_eq!(d.get(&1).unwrap(), Some(1));
}

/// A TCP relay to `to` whose connections can all be cut at once, as a
/// network that fails would.
struct Relay {
    addr: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let to = to.to_string();
        let sockets = std::sync::Arc::clone(&open);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&to) else {
                    return;
                };
                let mut kept = sockets.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                drop(kept);
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, open }
    }

    /// Cuts every connection made so far.
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_guard_whose_connection_was_cut_releases_no_one_elses_lock() {
    let remote = Remote::start();
    let relay = Relay::start(&remote.addr);
    let manager = Manager::connect(&relay.addr, KEY).unwrap();
    let lock = manager.lock().unwrap();
    let sem = manager.semaphore(1).unwrap();
    let guard = lock.lock().unwrap();
    // The network fails: the server sees this client's connection end and
    // releases the lock, which a child then takes.
    relay.cut();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(hold_lock_forever, lock.clone(), sem.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // This process's guard, whose lock was taken from it, ends.
    drop(guard);
    assert!(lock.try_lock().is_err(), "the child still holds the lock");
    child.kill().unwrap();
    let _ = child.join();
}

#[process_entry]
fn hold_a_permit_for_good(sem: SemaphoreProxy, ready: Connection<u8>) {
    let permit = sem.acquire_timeout(BOUND).unwrap().unwrap();
    ready.send(&1).unwrap();
    // Wait to be killed.
    let _ = ready.recv();
    drop(permit);
}

#[test]
fn a_permit_whose_connection_was_cut_is_not_given_back_twice() {
    let remote = Remote::start();
    let relay = Relay::start(&remote.addr);
    let manager = Manager::connect(&relay.addr, KEY).unwrap();
    let sem = manager.semaphore(1).unwrap();
    let permit = sem.acquire().unwrap();
    // The network fails: the server sees this client's connection end and
    // takes its permit back, which a child then takes.
    relay.cut();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(hold_a_permit_for_good, sem.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // This process's guard, whose permit went back already, ends.
    drop(permit);
    assert_eq!(sem.value().unwrap(), 0, "the child holds the only permit");
    child.kill().unwrap();
    let _ = child.join();
    eventually("the killed child's permit comes back", || {
        sem.value().unwrap() == 1
    });
    // An explicit release adds a permit, as a semaphore's does, and a
    // guard dropped after it gives its own back too.
    let permit = sem.acquire().unwrap();
    sem.release().unwrap();
    assert_eq!(sem.value().unwrap(), 1);
    drop(permit);
    assert_eq!(sem.value().unwrap(), 2);
}

/// Pings the server on a fresh raw connection: whether it answered.
fn raw_ping(manager: &Manager) -> bool {
    let mut raw = UnixStream::from(manager.__raw_connection().unwrap());
    raw.set_read_timeout(Some(BOUND)).unwrap();
    let mut ping = 9u32.to_le_bytes().to_vec();
    ping.push(1); // Ping
    ping.extend_from_slice(&0u64.to_le_bytes());
    if raw.write_all(&ping).is_err() {
        return false;
    }
    let mut reply = [0u8; 5];
    match raw.read_exact(&mut reply) {
        Ok(()) => {
            assert_eq!(reply, [1, 0, 0, 0, 0], "a ping's reply");
            true
        }
        // Closed unserved: end of stream, or reset (the ping unread).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            false
        }
        Err(e) => panic!("a dial neither served nor refused within the bound: {e}"),
    }
}

/// The server process's descriptor limit is set to nothing (`prlimit`
/// from here): each dial it receives cannot be installed and is closed
/// unserved; once the limit is back, a new client is served.
#[test]
fn a_local_server_out_of_descriptors_keeps_serving_once_they_free_up() {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    let pid = Pid::from_raw(manager.pid().unwrap() as i32).unwrap();
    let limit = getrlimit(Resource::Nofile);
    // The server can open no descriptor: each dial it receives fails
    // (EMFILE), and several do.
    let none = Rlimit {
        current: Some(0),
        maximum: limit.maximum,
    };
    prlimit(Some(pid), Resource::Nofile, none).unwrap();
    for _ in 0..5 {
        assert!(
            !raw_ping(&manager),
            "a connection served with no descriptor"
        );
    }
    // Descriptors free up: a new client is served.
    prlimit(Some(pid), Resource::Nofile, limit).unwrap();
    assert!(
        raw_ping(&manager),
        "a new client served once descriptors free up"
    );
    assert_eq!(d.get(&1).unwrap(), Some(1));
}

/// Runs `f` on a thread of its own; its result within [`BOUND`], or a
/// failure saying `what` did not happen (the thread is left behind).
fn within_bound<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("never: {what}"))
}

#[test]
fn an_empty_authkey_is_refused_before_any_traffic() {
    let refused = |err: multiproc::Error| {
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("empty authkey"), "{err}");
    };
    refused(
        within_bound("an empty key refused at serve", || {
            Manager::serve("127.0.0.1:0", b"")
        })
        .unwrap_err(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = listener.try_clone().unwrap();
    refused(
        within_bound("an empty key refused at serve_on", move || {
            Manager::serve_on(serving, b"")
        })
        .unwrap_err(),
    );
    refused(Manager::connect(&addr, b"").map(|_| ()).unwrap_err());
    // Nobody dialled the listener, and nobody took a connection from it.
    listener.set_nonblocking(true).unwrap();
    let err = listener.accept().map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
}

/// A value whose `update_with` entry holds on until told to go. Its
/// proxies are remote ones (an address and a key, no descriptor), so the
/// server can store them.
#[derive(Serialize, Deserialize)]
struct Gate {
    started: EventProxy,
    go: EventProxy,
    n: u64,
}

#[process_entry]
fn slow_bump(old: Option<Gate>) -> Gate {
    let mut gate = old.expect("a value has a value");
    // Through the same server, from inside the entry.
    gate.started.set().unwrap();
    assert!(gate.go.wait_timeout(BOUND).unwrap(), "never told to go");
    gate.n += 1;
    gate
}

#[process_entry]
fn use_another_object(d: DictProxy<u8, u8>) -> Option<u8> {
    d.insert(1, 2).unwrap();
    d.get(&1).unwrap()
}

#[process_entry]
fn read_gate(v: ValueProxy<Gate>) -> u64 {
    v.get().unwrap().n
}

#[test]
fn a_slow_update_with_stalls_no_other_object_of_its_server() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let started = manager.event().unwrap();
    let go = manager.event().unwrap();
    let v = manager
        .value(Gate {
            started: started.clone(),
            go: go.clone(),
            n: 0,
        })
        .unwrap();
    let other = manager.dict::<u8, u8>().unwrap();
    let updating = {
        let v = v.clone();
        std::thread::spawn(move || v.update_with(entry!(slow_bump)).map(|g| g.n))
    };
    // The entry reaches its own server (its event) while it runs.
    // (Under the state lock, neither call could be served: bounded here.)
    let waiting = started.clone();
    within_bound("the entry reaching its server", move || {
        assert!(waiting.wait_timeout(BOUND).unwrap(), "the entry never ran");
    });
    // Another client, another object: served while the entry runs, and
    // done before it.
    let mut client = spawn!(use_another_object, other.clone()).unwrap();
    assert_eq!(
        client.join_timeout(BOUND).unwrap(),
        Some(Some(2)),
        "another object served meanwhile"
    );
    assert!(!updating.is_finished(), "the update waits for its go");
    // A request on the busy object, if it comes before the go, waits for
    // the update: it never sees the value the entry is replacing.
    let reader = spawn!(read_gate, v.clone()).unwrap();
    go.set().unwrap();
    assert_eq!(updating.join().unwrap().unwrap(), 1);
    assert_eq!(reader.join().unwrap(), 1);
    assert_eq!(v.get().unwrap().n, 1);
    assert_eq!(v.update_with(entry!(slow_bump)).unwrap().n, 2);
}

#[process_entry]
fn wait_at_barrier_until_killed(b: BarrierProxy) {
    let _ = b.wait();
}

/// A party killed while waiting, and another that arrives before the
/// server has noticed: the round passes with the dead party counted, and
/// the next round is not broken for it. (Should the server notice first,
/// the round is broken instead, as Python's is; the test then tries again.)
#[test]
fn a_dead_waiter_breaks_no_later_round_of_a_barrier() {
    let manager = Manager::start().unwrap();
    let pid = manager.pid().unwrap();
    let b = manager.barrier(2).unwrap();
    assert_eq!(b.n_waiting().unwrap(), 0);
    let before = fd_count(pid);
    let mut counted = 0;
    for _ in 0..20 {
        let a = spawn!(wait_at_barrier_until_killed, b.clone()).unwrap();
        eventually("the party waits", || b.n_waiting().unwrap() == 1);
        a.kill().unwrap();
        let _ = a.join();
        let passed = b.wait_timeout(BOUND);
        // The dead party's connection ends with its server thread.
        eventually("the dead party's connection is closed", || {
            fd_count(pid) == before
        });
        match passed {
            Ok(_) => {
                counted += 1;
                assert!(
                    !b.is_broken().unwrap(),
                    "a round after the dead party's is broken"
                );
                if counted == 3 {
                    return;
                }
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BrokenBarrier, "{e}");
                b.reset().unwrap();
            }
        }
    }
    assert!(
        counted > 0,
        "never arrived before the server noticed the death"
    );
}

use multiproc::Lock;

/// What the manager call made inside [`StoresLock`]'s `Serialize` returned.
static STORED_INSIDE: std::sync::Mutex<Option<Result<Option<Lock>, ErrorKind>>> =
    std::sync::Mutex::new(None);

/// An item whose `Serialize` tries to store a lock in a manager dict.
struct StoresLock(Option<(DictProxy<u32, Lock>, Lock)>);

impl Serialize for StoresLock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some((d, lock)) = &self.0 {
            let stored = d.insert(1, lock.clone()).map_err(|e| e.kind());
            *STORED_INSIDE.lock().unwrap() = Some(stored);
        }
        7u8.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoresLock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(|_| StoresLock(None))
    }
}

/// A value stored by a manager call made while a message is being encoded
/// (from inside its `Serialize`) is still encoded on its own: a lock in it
/// is refused, not slipped into the message's descriptors (which the
/// message's reader would refuse as unclaimed).
#[test]
fn a_manager_call_inside_a_messages_serialize_keeps_out_of_the_message() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u32, Lock>().unwrap();
    let q = Queue::<StoresLock>::new().unwrap();
    q.put(StoresLock(Some((d.clone(), Lock::new().unwrap()))))
        .unwrap();
    let stored = STORED_INSIDE.lock().unwrap().take();
    assert!(
        matches!(stored, Some(Err(ErrorKind::Encode))),
        "a lock was stored in a manager dict: {:?}",
        stored.map(|s| s.map(|_| ()))
    );
    let got = q.get_timeout(BOUND);
    assert!(got.is_ok(), "{:?}", got.err());
    assert_eq!(d.len().unwrap(), 0);
}

/// An item whose `Serialize` also puts a proxy on a (multiproc) queue.
struct PutsAside(Option<(ListProxy<i64>, Queue<ListProxy<i64>>)>);

impl Serialize for PutsAside {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some((list, q)) = &self.0 {
            q.put(list.clone()).map_err(serde::ser::Error::custom)?;
        }
        0u8.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PutsAside {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(|_| PutsAside(None))
    }
}

#[process_entry]
fn len_of_queued_list(q: Queue<ListProxy<i64>>) -> Result<usize, String> {
    let list = q.get_timeout(BOUND).map_err(|e| format!("{e:#}"))?;
    list.len().map_err(|e| format!("{e:#}"))
}

/// A proxy put on a queue while a manager call encodes its value (by that
/// value's `Serialize`) travels as any message's proxy does, with its
/// descriptor, not as an id only that manager's stored values can hold.
#[test]
fn a_proxy_sent_while_a_manager_call_encodes_arrives_working() {
    let manager = Manager::start().unwrap();
    let inner = manager.list::<i64>(vec![1, 2, 3]).unwrap();
    let q = Queue::<ListProxy<i64>>::new().unwrap();
    let outer = manager.list::<PutsAside>(vec![]).unwrap();
    outer
        .push(PutsAside(Some((inner.clone(), q.clone()))))
        .unwrap();
    let len = spawn!(len_of_queued_list, q.clone())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(len, Ok(3));
}

// Object lifetime: the server frees an object with its last reference.

#[test]
fn an_object_is_freed_when_its_last_proxy_is_dropped() {
    let manager = Manager::start().unwrap();
    assert_eq!(manager.__objects().unwrap(), 0);
    let l = manager.list(vec![7u8; 1000]).unwrap();
    let copy = l.clone();
    assert_eq!(manager.__objects().unwrap(), 1);
    drop(l);
    assert_eq!(copy.len().unwrap(), 1000, "a clone still holds the object");
    assert_eq!(manager.__objects().unwrap(), 1);
    drop(copy);
    assert_eq!(manager.__objects().unwrap(), 0);
    // Made and dropped in a loop, as a long-running program does: the
    // server holds no more at the end than at the start.
    for n in 0..200u32 {
        let d = manager.dict::<u32, Vec<u8>>().unwrap();
        d.insert(n, vec![0; 4096]).unwrap();
        let q = manager.queue::<u32>().unwrap();
        q.put(n).unwrap();
    }
    assert_eq!(manager.__objects().unwrap(), 0);
}

#[process_entry]
fn push_when_told(l: ListProxy<u32>, go: Connection<u8>) -> Result<Vec<u32>, String> {
    go.recv().map_err(|e| format!("{e:#}"))?;
    l.push(4).map_err(|e| format!("{e:#}"))?;
    l.snapshot().map_err(|e| format!("{e:#}"))
}

#[process_entry]
fn push_queued_when_told(q: Queue<ListProxy<u32>>, go: Connection<u8>) -> Result<Vec<u32>, String> {
    go.recv().map_err(|e| format!("{e:#}"))?;
    let l = q.get_timeout(BOUND).map_err(|e| format!("{e:#}"))?;
    l.push(4).map_err(|e| format!("{e:#}"))?;
    l.snapshot().map_err(|e| format!("{e:#}"))
}

/// The sender's proxy is gone before the receiver decodes its copy: the
/// copy took its reference before it left, so the object is still there;
/// and once the receiver drops it, nothing holds the object any more.
#[test]
fn a_proxy_sent_away_outlives_the_senders_copy() {
    let manager = Manager::start().unwrap();
    // As an entry argument.
    let (go_there, go) = Pipe::simplex().unwrap();
    let child = spawn!(
        push_when_told,
        manager.list(vec![1u32, 2, 3]).unwrap(),
        go_there
    )
    .unwrap();
    // The parent holds no proxy of the list now.
    assert_eq!(manager.__objects().unwrap(), 1);
    go.send(&1).unwrap();
    assert_eq!(child.join().unwrap(), Ok(vec![1, 2, 3, 4]));
    assert_eq!(manager.__objects().unwrap(), 0);

    // Through a queue, decoded only after the sender dropped its proxy.
    let q = Queue::new().unwrap();
    let (go_there, go) = Pipe::simplex().unwrap();
    let child = spawn!(push_queued_when_told, q.clone(), go_there).unwrap();
    q.put(manager.list(vec![1u32, 2, 3]).unwrap()).unwrap();
    assert_eq!(manager.__objects().unwrap(), 1);
    go.send(&1).unwrap();
    assert_eq!(child.join().unwrap(), Ok(vec![1, 2, 3, 4]));
    assert_eq!(manager.__objects().unwrap(), 0);
}

/// A proxy stored in another object of its manager keeps its object while
/// it is stored: reading it leaves it there, taking it out (pop, remove, a
/// queue's get, an insert that replaces it) hands its reference to the
/// proxy read. One the server drops unread (`clear`) keeps its object
/// until the server stops: the server does not look inside stored values.
#[test]
fn a_stored_proxy_keeps_its_object_until_taken_out() {
    let manager = Manager::start().unwrap();
    let outer = manager.list::<ListProxy<u32>>(vec![]).unwrap();
    outer.push(manager.list(vec![5u32]).unwrap()).unwrap();
    assert_eq!(manager.__objects().unwrap(), 2);
    for _ in 0..3 {
        let inner = outer.get(0).unwrap().unwrap();
        inner.push(6).unwrap();
    }
    assert_eq!(manager.__objects().unwrap(), 2, "reads took nothing");
    // A proxy read from the stored value holds the object itself: the
    // stored copy popped and dropped elsewhere leaves it working.
    let read = outer.get(0).unwrap().unwrap();
    let popped = outer.pop().unwrap().unwrap();
    drop(popped);
    read.push(6).unwrap();
    outer.push(read).unwrap();
    assert_eq!(manager.__objects().unwrap(), 2);
    let inner = outer.pop().unwrap().unwrap();
    assert_eq!(inner.snapshot().unwrap(), vec![5, 6, 6, 6, 6]);
    drop(inner);
    assert_eq!(manager.__objects().unwrap(), 1, "popped, then dropped");

    let d = manager.dict::<u8, ListProxy<u32>>().unwrap();
    d.insert(1, manager.list(vec![1]).unwrap()).unwrap();
    d.insert(2, manager.list(vec![2]).unwrap()).unwrap();
    let replaced = d.insert(1, manager.list(vec![3]).unwrap()).unwrap();
    assert_eq!(replaced.unwrap().snapshot().unwrap(), vec![1]);
    assert_eq!(d.remove(&2).unwrap().unwrap().len().unwrap(), 1);
    let (_, last) = d.pop_last().unwrap().unwrap();
    assert_eq!(last.snapshot().unwrap(), vec![3]);
    drop(last);
    assert_eq!(manager.__objects().unwrap(), 2, "outer and d");

    let q = manager.queue::<ListProxy<u32>>().unwrap();
    for n in 0..10 {
        q.put(manager.list(vec![n]).unwrap()).unwrap();
    }
    assert_eq!(manager.__objects().unwrap(), 13);
    for n in 0..10 {
        assert_eq!(q.get().unwrap().snapshot().unwrap(), vec![n]);
    }
    assert_eq!(manager.__objects().unwrap(), 3);

    // Dropped unread by the server: kept.
    d.insert(9, manager.list(vec![7u32]).unwrap()).unwrap();
    d.clear().unwrap();
    drop((outer, d, q));
    assert_eq!(manager.__objects().unwrap(), 1);
}

#[test]
fn a_remote_manager_frees_objects_too() {
    let remote = Remote::start();
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    let lock = manager.lock().unwrap();
    assert_eq!(manager.__objects().unwrap(), 2);
    let kid = spawn!(remote_child, d.clone(), lock.clone(), 1).unwrap();
    drop(lock);
    kid.join().unwrap();
    assert_eq!(manager.__objects().unwrap(), 1);
    assert_eq!(d.get("total").unwrap(), Some(1));
    drop(d);
    assert_eq!(manager.__objects().unwrap(), 0);
}

/// A proxy kept in a thread-local is dropped while the thread's locals are
/// destroyed, the library's own among them: its reference is still given
/// back, and nothing panics.
#[test]
fn a_proxy_in_a_thread_local_is_given_back_when_the_thread_ends() {
    use std::cell::RefCell;
    thread_local! {
        static KEPT: RefCell<Vec<ListProxy<u8>>> = const { RefCell::new(Vec::new()) };
    }
    let manager = Manager::start().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    // The library's thread-locals made before this one (destroyed after
    // it), then after it (destroyed before it).
    for library_first in [true, false] {
        let (mine, fresh) = (l.clone(), manager.list(vec![2u8]).unwrap());
        // `join` returns once the thread has ended, its locals destroyed.
        std::thread::spawn(move || {
            if library_first {
                assert_eq!(mine.len().unwrap(), 1);
            }
            KEPT.with(|k| k.borrow_mut().push(mine.clone()));
            assert_eq!(mine.len().unwrap(), 1);
            assert_eq!(fresh.len().unwrap(), 1);
            KEPT.with(|k| k.borrow_mut().push(fresh));
        })
        .join()
        .unwrap();
    }
    drop(l);
    assert_eq!(manager.__objects().unwrap(), 0);
}

#[process_entry]
fn note_start(starts: ListProxy<u32>) {
    starts.push(std::process::id()).unwrap();
}

#[process_entry]
fn times_two(x: u32) -> u32 {
    x * 2
}

/// Every worker of a pool decodes the initializer's arguments from one
/// encoding (replacements too): each copy of a proxy there takes a
/// reference of its own, so the workers dropping theirs cannot free the
/// object under the process that made it.
#[test]
fn a_proxy_in_a_pools_initializer_is_not_freed_by_its_workers() {
    let manager = Manager::start().unwrap();
    let starts = manager.list::<u32>(vec![]).unwrap();
    let pool = multiproc::Pool::builder()
        .processes(2)
        .initializer(entry!(note_start), (starts.clone(),))
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let out = pool.map_chunked(entry!(times_two), 0..8u32, 1).unwrap();
    assert_eq!(out, [0, 2, 4, 6, 8, 10, 12, 14]);
    pool.close();
    pool.join().unwrap();
    // Each worker ran one task, then a replacement came: at least 8 starts,
    // each dropping its copy of the proxy when the initializer returned.
    let n = starts.len().unwrap();
    assert!(n >= 8, "{n} starts");
    assert_eq!(manager.__objects().unwrap(), 1);
}

// Named objects: Python's `BaseManager.register` of a shared object.

#[test]
fn a_named_object_is_made_once_and_found_after() {
    let manager = Manager::start().unwrap();
    let l = manager.named("seen", |m| m.list(vec![1u32])).unwrap();
    // Found, not made again: the second list's items are not used.
    let again = manager.named("seen", |m| m.list(vec![9u32, 9])).unwrap();
    again.push(2).unwrap();
    assert_eq!(l.snapshot().unwrap(), vec![1, 2]);
    assert_eq!(manager.__objects().unwrap(), 1);
    // The name keeps it: dropped by every proxy, found with its items.
    drop((l, again));
    assert_eq!(manager.__objects().unwrap(), 1);
    let found = manager.named("seen", |m| m.list::<u32>(vec![])).unwrap();
    assert_eq!(found.snapshot().unwrap(), vec![1, 2]);
    // Another name is another object; another kind under a name is an error.
    let other = manager.named("other", |m| m.list::<u32>(vec![])).unwrap();
    assert_eq!(other.len().unwrap(), 0);
    let err = manager.named("seen", |m| m.dict::<u32, u32>()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("named \"seen\" is a list"),
        "{err}"
    );
    let err = manager.named(&"x".repeat(2000), |m| m.event()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Objects made outside `named` have no name.
    let plain = manager.list::<u32>(vec![]).unwrap();
    plain.push(5).unwrap();
    assert_eq!(found.len().unwrap(), 2);
}

#[process_entry]
fn produce_by_name(addr: String, n: u32) -> Result<(), String> {
    let manager = Manager::connect(&addr, KEY).map_err(|e| format!("{e:#}"))?;
    let jobs = manager
        .named("jobs", |m| m.queue::<u32>())
        .map_err(|e| format!("{e:#}"))?;
    for i in 0..n {
        jobs.put(i).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

/// Two programs that share nothing but the address and the key find the
/// same queue by its name, as Python's `register('get_queue', …)` clients
/// do.
#[test]
fn clients_of_a_remote_manager_share_an_object_by_name() {
    let remote = Remote::start();
    let producer = spawn!(produce_by_name, remote.addr.clone(), 5).unwrap();
    assert_eq!(producer.join().unwrap(), Ok(()));
    let manager = Manager::connect(&remote.addr, KEY).unwrap();
    let jobs = manager.named("jobs", |m| m.queue::<u32>()).unwrap();
    let got: Vec<u32> = (0..5).map(|_| jobs.get().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
}

#[process_entry]
fn fail_over_list(_old: Option<ListProxy<u32>>) -> ListProxy<u32> {
    panic!("no new list")
}

/// An `update_with` entry runs in the server, on the stored value decoded
/// there; a failing one leaves that value stored. A proxy of a remote
/// manager inside it must then still hold its object there.
#[test]
fn a_failing_update_with_leaves_a_stored_remote_proxy_working() {
    let remote = Remote::start();
    let far = Manager::connect(&remote.addr, KEY).unwrap();
    let here = Manager::start().unwrap();
    let v = here.value(far.list(vec![1u32]).unwrap()).unwrap();
    assert_eq!(far.__objects().unwrap(), 1);
    let err = v.update_with(entry!(fail_over_list)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    let list = v.get().unwrap();
    list.push(2).unwrap();
    assert_eq!(list.snapshot().unwrap(), vec![1, 2]);
}

/// A proxy only compared with stored values (a key looked up, an item
/// searched for) is dropped by the server with the request: it takes no
/// reference that would keep its object.
#[test]
fn looking_a_proxy_up_takes_no_reference() {
    let manager = Manager::start().unwrap();
    let outer = manager.list::<ListProxy<u8>>(vec![]).unwrap();
    let d = manager.dict::<ListProxy<u8>, u8>().unwrap();
    let inner = manager.list(vec![1u8]).unwrap();
    outer.push(inner.clone()).unwrap();
    for _ in 0..3 {
        assert_eq!(outer.count(&inner).unwrap(), 1);
        assert_eq!(outer.position(&inner).unwrap(), Some(0));
        assert_eq!(d.get(&inner).unwrap(), None);
        assert!(!d.contains_key(&inner).unwrap());
        assert_eq!(d.remove(&inner).unwrap(), None);
        assert!(!outer.remove_value(&manager.list(vec![]).unwrap()).unwrap());
    }
    drop(outer.pop().unwrap());
    drop(inner);
    assert_eq!(manager.__objects().unwrap(), 2, "outer and d only");
}
