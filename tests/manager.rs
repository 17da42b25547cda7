//! The Manager across real processes: proxies in children, proxies sent
//! through queues and pipes, faults (a client killed holding a lock, a
//! server killed under its clients, bad bytes), and the capability model.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use multiproc::{
    Connection, DictProxy, ErrorKind, EventProxy, ListProxy, LockProxy, Manager, NamespaceProxy,
    Pipe, Queue, SemaphoreProxy, entry, process_entry, spawn,
};
use serde::{Deserialize, Serialize};

/// A bound on how long anything here may take; never a synchronisation.
const BOUND: Duration = Duration::from_secs(20);

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
    assert_eq!(d.get(&"count".into()).unwrap(), Some(200));
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
    assert!(l.remove(&2).unwrap());
    assert!(!l.remove(&2).unwrap());
    assert_eq!(l.pop().unwrap(), Some(50));
    assert_eq!(l.pop_at(0).unwrap(), Some(0));
    assert_eq!(l.snapshot().unwrap(), vec![1, 3, 4]);
    assert_eq!(l.len().unwrap(), 3);

    let ns = manager.namespace().unwrap();
    ns.set("x", &vec![1u8, 2]).unwrap();
    assert_eq!(ns.get::<Vec<u8>>("x").unwrap(), Some(vec![1, 2]));
    assert!(ns.get::<String>("x").is_err() || ns.get::<String>("x").unwrap().is_some());
    assert!(ns.remove("x").unwrap());
    assert_eq!(ns.get::<u8>("x").unwrap(), None);
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
    jobs.close();
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
    assert!(lock.try_lock().unwrap().is_none(), "the child holds it");
    assert!(sem.try_acquire().unwrap().is_none(), "the child holds it");
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    let guard = lock.lock_timeout(BOUND).unwrap();
    assert!(guard.is_some(), "the lock of a killed client is released");
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
    assert!(lock.try_lock().unwrap().is_none());
    // And in another thread of ours, while this one waits on the lock.
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.lock_timeout(BOUND).unwrap().is_some())
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
    let q = manager.queue::<u8>(None).unwrap();
    d.insert(1, 1).unwrap();
    let (mine, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(call_after_server_death, d.clone(), lock.clone(), theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1);
    // Blocked on the server in two threads: a lock and a queue.
    let blocked_lock = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.lock().map(drop).unwrap_err().kind())
    };
    let blocked_get = {
        let q = q.clone();
        std::thread::spawn(move || q.get().unwrap_err().kind())
    };
    // Kill the server (not through the Manager).
    let pid = manager.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let start = Instant::now();
    assert_eq!(blocked_lock.join().unwrap(), ErrorKind::Disconnected);
    assert_eq!(blocked_get.join().unwrap(), ErrorKind::Disconnected);
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

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
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
    let cases: Vec<Vec<u8>> = vec![
        b"\xff\xff\xff\xffgarbage".to_vec(), // over the length cap
        vec![3, 0, 0, 0, 200, 1, 2],         // unknown op
        vec![9, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0], // a map op, no key
        vec![13, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255], // key longer than the frame
        (0..=255u8).cycle().take(10_000).collect(),                        // noise
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
        let target = std::fs::read_link(fd.unwrap().path()).unwrap();
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
