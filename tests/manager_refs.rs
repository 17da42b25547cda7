//! The Manager's reference counting across real processes: every object
//! the docs say is freed is (`Manager::__objects` counts them), and no
//! drop waits long for a server that does not answer.

mod common;

use common::BOUND;

use std::net::TcpListener;

use multiproc::{
    Connection, DictProxy, Fd, ListProxy, Manager, Pipe, Pool, entry, process_entry, spawn,
};

#[path = "common/remote.rs"]
mod remote;
use remote::{KEY, Remote, serve_remote};

/// A value the server refuses to store (it holds a proxy of another local
/// manager, which travels with a descriptor) took no reference that
/// nothing gives back.
#[test]
fn a_refused_store_keeps_no_object_alive() {
    let manager = Manager::start().unwrap();
    let other = Manager::start().unwrap();
    let d = manager.dict::<u8, ListProxy<u8>>().unwrap();
    let l = other.list(vec![1u8]).unwrap();
    assert!(d.insert(1, l.clone()).is_err());
    assert!(d.is_empty().unwrap());
    drop(l);
    assert_eq!(other.__objects().unwrap(), 0);
}

/// A value the server did not keep (a put on a full queue, a `set` past
/// a list's end) keeps nothing alive either.
#[test]
fn a_proxy_the_server_did_not_store_keeps_no_object_alive() {
    let manager = Manager::start().unwrap();
    let q = manager.queue_bounded::<ListProxy<u8>>(1).unwrap();
    q.put(manager.list(vec![1u8]).unwrap()).unwrap();
    let l = manager.list(vec![2u8]).unwrap();
    let back = match q.try_put(l.clone()) {
        Err(multiproc::TrySendError::Full(back)) => back,
        other => panic!("the queue is full: {:?}", other.map_err(|e| e.to_string())),
    };
    let items = manager.list::<ListProxy<u8>>(vec![]).unwrap();
    assert!(items.set(3, l.clone()).is_err());
    drop((back, l, items));
    assert_eq!(manager.__objects().unwrap(), 2, "the queue and its item");
    drop(q.get().unwrap());
    drop(q);
    assert_eq!(manager.__objects().unwrap(), 0);
}

#[derive(serde::Deserialize)]
struct FailsHalfway(ListProxy<u8>, #[allow(dead_code)] u8);

impl serde::Serialize for FailsHalfway {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        Err(S::Error::custom("the second half refuses"))
    }
}

/// A message that fails to encode after a proxy in it took its copy's
/// reference is never sent: that reference is given back.
#[test]
fn a_message_that_fails_to_encode_keeps_no_object_alive() {
    let manager = Manager::start().unwrap();
    let (tx, _rx) = multiproc::Pipe::<FailsHalfway>::duplex().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    assert!(tx.send(&FailsHalfway(l.clone(), 0)).is_err());
    drop(l);
    assert_eq!(manager.__objects().unwrap(), 0);
}

static KEPT_FOR_LIFE: std::sync::OnceLock<ListProxy<u8>> = std::sync::OnceLock::new();

#[process_entry]
fn keep_in_a_static(l: ListProxy<u8>) {
    assert!(KEPT_FOR_LIFE.set(l).is_ok());
}

#[process_entry]
fn exit_holding(l: ListProxy<u8>) {
    assert_eq!(l.len().unwrap(), 1);
    std::process::exit(3);
}

/// A process that exits holding proxies (in a static, which is never
/// dropped, or on its stack when it calls `exit`) gives their references
/// back, as Python's proxies' finalizers do.
#[test]
fn a_process_that_exits_gives_back_the_proxies_it_holds() {
    let manager = Manager::start().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    spawn!(keep_in_a_static, l.clone()).unwrap().join().unwrap();
    let exited = spawn!(exit_holding, l.clone()).unwrap().join().unwrap_err();
    assert_eq!(exited.exitcode(), Some(3), "{exited:#}");
    assert_eq!(l.len().map_err(|e| format!("{e:#}")), Ok(1));
    drop(l);
    assert_eq!(manager.__objects().unwrap(), 0);
}

#[process_entry]
fn keep_then_exit(l: ListProxy<u8>, go: Connection<u8>) {
    assert!(KEPT_FOR_LIFE.set(l).is_ok());
    go.recv().unwrap();
}

/// Resumes a stopped process when dropped, so that a failing test leaves
/// no server stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Giving back what a process still holds as it exits waits for a server
/// that does not answer (stopped here) for a bounded time only: the
/// process exits all the same.
#[test]
fn a_process_holding_proxies_exits_while_its_server_is_stopped() {
    let manager = Manager::start().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    let (went, go) = Pipe::simplex().unwrap();
    let mut child = spawn!(keep_then_exit, l.clone(), went).unwrap();
    let server = manager.pid().unwrap();
    signal(server, rustix::process::Signal::STOP);
    let _resume = Resume(server);
    go.send(&1).unwrap();
    let joined = child.join_timeout(BOUND).unwrap();
    assert!(joined.is_some(), "the child did not exit within {BOUND:?}");
}

/// Proxies of a remote manager whose address still takes connections but
/// never answers (its server hung, or another process holds the listening
/// socket) are dropped without waiting the connection's timeout for each.
#[test]
fn dropping_proxies_of_a_silent_remote_server_waits_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
    let mut server = spawn!(serve_remote, Fd::from(fd), KEY.to_vec()).unwrap();
    let far = Manager::connect(&addr, KEY).unwrap();
    let lists: Vec<_> = (0..5).map(|_| far.list(vec![1u32]).unwrap()).collect();
    server.kill().unwrap();
    assert!(server.join_timeout(BOUND).unwrap_err().is_signaled());
    // `listener` is still open here: connections are taken, never answered.
    let start = std::time::Instant::now();
    drop(lists);
    let took = start.elapsed();
    // One connection's timeout (10 s), not five.
    assert!(took < BOUND, "dropping 5 proxies took {took:?}");
    drop(listener);
}

#[process_entry]
fn push_one(l: ListProxy<u32>) {
    l.push(1).unwrap();
}

/// A pool keeps its initializer's arguments encoded for every worker it
/// starts, each worker's proxy taking a reference of its own: the
/// encoding itself holds none that would outlive the pool.
#[test]
fn a_pools_initializer_proxies_are_freed_once_the_pool_is_gone() {
    let manager = Manager::start().unwrap();
    let l = manager.list::<u32>(vec![]).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(entry!(push_one), (l.clone(),))
        .build()
        .unwrap();
    // `build` returns once both workers ran the initializer.
    assert_eq!(l.len().map_err(|e| format!("{e:#}")), Ok(2));
    pool.close();
    pool.join().unwrap();
    drop(pool);
    assert_eq!(l.len().map_err(|e| format!("{e:#}")), Ok(2));
    drop(l);
    assert_eq!(manager.__objects().unwrap(), 0);
}

#[process_entry]
fn pass_back(l: ListProxy<u8>) -> ListProxy<u8> {
    l.push(9).unwrap();
    l
}

/// Proxies as pool task arguments and results, in and out of workers: each
/// copy holds its own reference, and all of them are given back.
#[test]
fn proxies_through_pool_tasks_and_results_keep_their_count() {
    let manager = Manager::start().unwrap();
    let pool = Pool::new(2).unwrap();
    let ls: Vec<_> = (0..6).map(|_| manager.list(vec![1u8]).unwrap()).collect();
    let back = pool.map(entry!(pass_back), ls.clone()).unwrap();
    drop(ls);
    for l in &back {
        assert_eq!(l.len().map_err(|e| format!("{e:#}")), Ok(2));
    }
    let one = manager.list(vec![1u8]).unwrap();
    let r = pool.apply(entry!(pass_back), (one,)).unwrap();
    assert_eq!(r.len().map_err(|e| format!("{e:#}")), Ok(2));
    let pending = pool.apply_async(entry!(pass_back), (r.clone(),)).unwrap();
    drop(r);
    let r = pending.get().unwrap();
    assert_eq!(r.len().map_err(|e| format!("{e:#}")), Ok(3));
    drop((back, r));
    drop(pool);
    assert_eq!(manager.__objects().unwrap(), 0);
}

/// One proxy sent twice in one message, in two messages: four copies, four
/// references, whichever is dropped first.
#[test]
fn a_proxy_sent_many_times_holds_a_reference_per_copy() {
    let manager = Manager::start().unwrap();
    let (tx, rx) = multiproc::Pipe::<(ListProxy<u8>, ListProxy<u8>)>::duplex().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    tx.send(&(l.clone(), l.clone())).unwrap();
    tx.send(&(l.clone(), l.clone())).unwrap();
    drop(l);
    let (a, b) = rx.recv().unwrap();
    drop(a);
    assert_eq!(b.len().map_err(|e| format!("{e:#}")), Ok(1));
    drop(b);
    let (a, b) = rx.recv().unwrap();
    drop(b);
    assert_eq!(a.len().map_err(|e| format!("{e:#}")), Ok(1));
    drop(a);
    assert_eq!(manager.__objects().unwrap(), 0);
}

/// Clones made and dropped on many threads at once share one reference.
#[test]
fn clones_on_many_threads_share_one_reference() {
    let manager = Manager::start().unwrap();
    let l = manager.list(vec![1u8]).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let c = l.clone();
                    let got = len_of(&c);
                    assert_eq!(got, Ok(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(l);
    assert_eq!(manager.__objects().unwrap(), 0);
}

fn len_of(l: &ListProxy<u8>) -> Result<usize, String> {
    l.len().map_err(|e| format!("{e:#}"))
}

#[process_entry]
fn keep_the_list(old: Option<ListProxy<u32>>) -> ListProxy<u32> {
    let l = old.expect("a value is stored");
    l.push(2).unwrap();
    l
}

/// An `update_with` that succeeds replaces the stored value: the old one's
/// references go with it, so a remote proxy stored there, taken out and
/// dropped, frees its object.
#[test]
fn an_update_with_gives_back_the_references_of_the_value_it_replaces() {
    let remote = Remote::start();
    let far = Manager::connect(&remote.addr, KEY).unwrap();
    let manager = Manager::start().unwrap();
    let d: DictProxy<String, ListProxy<u32>> = manager.dict().unwrap();
    d.insert("k".into(), far.list(vec![1u32]).unwrap()).unwrap();
    for _ in 0..3 {
        let kept = d.update_with("k".into(), entry!(keep_the_list)).unwrap();
        drop(kept);
    }
    let taken = d.remove("k").unwrap().unwrap();
    assert_eq!(
        taken.snapshot().map_err(|e| format!("{e:#}")),
        Ok(vec![1, 2, 2, 2])
    );
    drop(taken);
    assert_eq!(far.__objects().unwrap(), 0);
}
