//! The manager's server: objects held as encoded bytes, one thread per
//! client connection, every operation atomic under one state lock, but
//! for the entry of an `update_with`: it runs outside that lock, its
//! object marked busy, and the object's other requests wait for it.
//!
//! Blocking operations (a lock, a queue, a condition…) wait on one
//! condition variable that every change wakes; while waiting they look
//! every [`LIVENESS`] at whether their client is still connected, so a dead
//! client's wait ends and takes nothing (a queue item, a permit, a
//! condition's notification) with it.
//! When a connection ends, whatever it held (locks, permits) is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use self::dict::Dict;
use super::internals;
use super::proto::{
    ERR, FOREVER, Fields, Frame, FrameReader, NO_PERMIT, OK, ObjKind, Op, code_kind, kind_code,
};
use crate::error::{Error, ErrorKind};

mod dict;
#[cfg(feature = "test-hooks")]
mod fuzz;
#[cfg(feature = "test-hooks")]
pub(crate) use fuzz::fuzz_requests;

/// How many permits given back for an ended connection a semaphore
/// remembers, so that their guards (of a live client whose connection
/// failed) do not give them back again.
const REVOKED_KEPT: usize = 4096;

/// How often a blocked operation checks that its client is still there.
const LIVENESS: Duration = Duration::from_millis(100);

type ConnId = u64;

/// A reentrant owner: a client thread's token and the connection it came through.
#[derive(Debug, Default)]
struct Owned {
    owner: Option<(u64, ConnId)>,
    count: u64,
}

impl Owned {
    fn try_take(&mut self, token: u64, conn: ConnId, reentrant: bool) -> Option<bool> {
        match self.owner {
            None => {
                self.owner = Some((token, conn));
                self.count = 1;
                Some(true)
            }
            Some((t, _)) if reentrant && t == token => {
                self.count += 1;
                Some(true)
            }
            Some(_) => None,
        }
    }
}

/// Permits of a semaphore taken through one connection.
#[derive(Debug, Default)]
struct Taken {
    /// The token of the process the connection belongs to.
    process: u64,
    /// Each permit's token (its guard's), as many as were taken.
    permits: Vec<u64>,
}

#[derive(Debug)]
enum Obj {
    Map(Dict),
    Seq {
        items: Vec<Vec<u8>>,
        fixed: bool,
    },
    Value(Vec<u8>),
    Queue {
        items: VecDeque<Vec<u8>>,
        max: usize,
    },
    Lock {
        /// The token of the thread that took it, and its connection.
        holder: Option<(u64, ConnId)>,
    },
    RLock(Owned),
    Sem {
        value: u64,
        max: Option<u64>,
        /// The permits each connection took, and the process (its token)
        /// it belongs to.
        taken: HashMap<ConnId, Taken>,
        /// The latest permits given back because their connection ended,
        /// at most [`REVOKED_KEPT`]: their guards give back nothing more.
        revoked: VecDeque<u64>,
    },
    Cond {
        lock: Owned,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        notified: HashSet<u64>,
    },
    Event(bool),
    Barrier {
        parties: u64,
        count: u64,
        generation: u64,
        broken: bool,
        /// Counts resets that found waiters (who then see the barrier broken).
        resets: u64,
    },
}

impl Obj {
    /// Whether a request `op` is one of this object's.
    fn accepts(&self, op: Op) -> bool {
        use Op::*;
        if matches!(op, IncRef | DecRef) {
            return true;
        }
        match self {
            Obj::Map(_) => matches!(
                op,
                MapGet
                    | MapInsert
                    | MapRemove
                    | MapContains
                    | MapLen
                    | MapKeys
                    | MapValues
                    | MapItems
                    | MapUpdate
                    | MapClear
                    | MapUpdateWith
                    | MapSetDefault
                    | MapPopItem
            ),
            Obj::Seq { fixed: true, .. } => matches!(op, SeqGet | SeqSet | SeqLen | SeqSnapshot),
            Obj::Seq { fixed: false, .. } => matches!(
                op,
                SeqPush
                    | SeqGet
                    | SeqSet
                    | SeqPop
                    | SeqInsert
                    | SeqRemove
                    | SeqLen
                    | SeqExtend
                    | SeqSnapshot
                    | SeqReverse
                    | SeqPosition
                    | SeqCount
            ),
            Obj::Value(_) => matches!(op, ValueGet | ValueSet | ValueUpdateWith),
            Obj::Queue { .. } => matches!(op, QueuePut | QueueGet | QueueLen),
            Obj::Lock { .. } | Obj::RLock(_) => matches!(op, Acquire | Release),
            Obj::Sem { .. } => matches!(op, SemAcquire | SemRelease | SemValue),
            Obj::Cond { .. } => matches!(op, Acquire | Release | CondWait | CondNotify),
            Obj::Event(_) => matches!(op, EventSet | EventClear | EventIsSet | EventWait),
            Obj::Barrier { .. } => matches!(
                op,
                BarrierWait | BarrierAbort | BarrierReset | BarrierWaiting | BarrierBroken
            ),
        }
    }

    /// What the object is, for errors.
    fn what(&self) -> &'static str {
        match self {
            Obj::Map(_) => "a dict or namespace",
            Obj::Seq { fixed: true, .. } => "an array",
            Obj::Seq { fixed: false, .. } => "a list",
            Obj::Value(_) => "a value",
            Obj::Queue { .. } => "a queue",
            Obj::Lock { .. } => "a lock",
            Obj::RLock(_) => "a reentrant lock",
            Obj::Sem { .. } => "a semaphore",
            Obj::Cond { .. } => "a condition",
            Obj::Event(_) => "an event",
            Obj::Barrier { .. } => "a barrier",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<u64, Obj>,
    /// How many references each object has: proxies in processes, proxies
    /// on their way to one, and copies stored in other objects. An object
    /// is freed with its last.
    refs: HashMap<u64, u64>,
    /// Objects made under a name ([`Op::CreateNamed`]), and their kinds.
    /// A name holds a reference: its object lives while the server runs.
    names: HashMap<Vec<u8>, (u64, ObjKind)>,
    next_id: u64,
    next_conn: ConnId,
    connections: usize,
    /// Objects whose `update_with` entry is running, outside the lock:
    /// other requests on them wait until it has stored its value.
    busy: HashSet<u64>,
}

impl State {
    /// Adds `obj` with `refs` references; returns its id (never 0, never
    /// one in use).
    fn insert(&mut self, obj: Obj, refs: u64) -> u64 {
        let mut new = self.next_id.wrapping_add(1);
        while new == 0 || self.objects.contains_key(&new) {
            new = new.wrapping_add(1);
        }
        self.next_id = new;
        self.objects.insert(new, obj);
        self.refs.insert(new, refs);
        new
    }
}

/// The longest name an object can be made under.
const MAX_NAME: usize = 1024;

/// Marks an object busy while its `update_with` entry runs; clears the
/// mark and wakes the waiters when dropped (also when unwinding).
struct Busy<'a> {
    server: &'a Server,
    id: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.server.lock().busy.remove(&self.id);
        self.server.changed.notify_all();
    }
}

/// The shared state of one manager server.
#[derive(Debug)]
pub(crate) struct Server {
    state: Mutex<State>,
    changed: Condvar,
}

/// Why a request got no normal reply.
enum Fault {
    /// The request was malformed: the connection is closed.
    Bad,
    /// The client went away while the request waited.
    Gone,
    /// The operation failed: the reply says why.
    Op(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        if e.kind() == ErrorKind::Decode {
            Fault::Bad
        } else {
            Fault::Op(e)
        }
    }
}

/// The text of an error sent to a client, which rebuilds it with the kind
/// its code stands for.
fn wire_message(e: &Error) -> String {
    e.message_for(code_kind(kind_code(e.kind())))
}

fn op_err(kind: ErrorKind, msg: impl Into<String>) -> Fault {
    Fault::Op(Error::new(kind, msg))
}

/// What to put back if a reply cannot be delivered.
enum Undo {
    QueueItem(u64, Vec<u8>),
}

/// A connection being served: its id and its socket (for liveness checks).
struct Client<'a> {
    id: ConnId,
    sock: BorrowedFd<'a>,
}

fn deadline_of(ms: u64) -> Option<Instant> {
    if ms == FOREVER {
        None
    } else {
        Instant::now().checked_add(Duration::from_millis(ms))
    }
}

impl Server {
    /// A server with no objects. Its object ids start at a random number,
    /// so that those of another server (one that ran at the same address
    /// before) name nothing here.
    pub(crate) fn new() -> Server {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            // No random bytes: the time still differs between servers.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            seed = (now.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        Server {
            state: Mutex::new(State {
                next_id: u64::from_le_bytes(seed),
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state lock, once object `id` is not busy with an `update_with`
    /// entry (at once if it is not). While waiting it looks every
    /// [`LIVENESS`] at whether `client` is still there.
    fn lock_idle(&self, client: &Client<'_>, id: u64) -> Result<MutexGuard<'_, State>, Fault> {
        let mut st = self.lock();
        while st.busy.contains(&id) {
            if internals::peer_gone(client.sock) {
                return Err(Fault::Gone);
            }
            st = self
                .changed
                .wait_timeout(st, LIVENESS)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(st)
    }

    /// Serves one connection until it closes, misbehaves, or fails.
    pub(crate) fn serve_connection<S: Read + Write + AsFd>(&self, mut stream: S) {
        let id = {
            let mut st = self.lock();
            st.next_conn += 1;
            st.connections += 1;
            st.next_conn
        };
        let mut reader = FrameReader::default();
        let mut out = Frame::new();
        // A stream that ends, fails or announces too large a frame ends
        // the connection.
        while let Ok(request) = reader.read(&mut stream) {
            out.clear();
            let client = Client {
                id,
                sock: stream.as_fd(),
            };
            let mut undo = match self.handle(&client, request, &mut out) {
                Ok(undo) => undo,
                Err(Fault::Op(e)) => {
                    out.clear();
                    out.u8(ERR)
                        .u8(kind_code(e.kind()))
                        .bytes(wire_message(&e).as_bytes());
                    None
                }
                Err(Fault::Bad | Fault::Gone) => break,
            };
            let mut sent = out.send(&mut stream);
            if let Err(e) = &sent
                && e.kind() == ErrorKind::Encode
            {
                // Over the limit (a snapshot of a huge list, say): nothing
                // was written, so the client still gets an answer.
                let msg = match undo.take() {
                    Some(undo) => {
                        self.undo(undo);
                        format!("{} (the item stays in the queue)", wire_message(e))
                    }
                    None => format!("{} (any change the request made stands)", wire_message(e)),
                };
                out.clear();
                out.u8(ERR)
                    .u8(kind_code(ErrorKind::Encode))
                    .bytes(msg.as_bytes());
                sent = out.send(&mut stream);
            }
            if sent.is_err() {
                if let Some(undo) = undo {
                    self.undo(undo);
                }
                break;
            }
            // Not kept (large, perhaps) while the client is idle.
            out.clear();
        }
        self.disconnected(id);
    }

    fn undo(&self, undo: Undo) {
        let mut st = self.lock();
        match undo {
            Undo::QueueItem(id, item) => {
                if let Some(Obj::Queue { items, .. }) = st.objects.get_mut(&id) {
                    items.push_front(item);
                }
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Releases whatever connection `id` held.
    fn disconnected(&self, id: ConnId) {
        let mut st = self.lock();
        st.connections -= 1;
        for obj in st.objects.values_mut() {
            match obj {
                Obj::Lock { holder } if holder.is_some_and(|(_, c)| c == id) => *holder = None,
                Obj::RLock(owned) | Obj::Cond { lock: owned, .. }
                    if owned.owner.is_some_and(|(_, c)| c == id) =>
                {
                    *owned = Owned::default();
                }
                Obj::Sem {
                    value,
                    taken,
                    revoked,
                    ..
                } => {
                    if let Some(Taken { permits, .. }) = taken.remove(&id) {
                        let n = permits.len() as u64;
                        for permit in permits {
                            if revoked.len() == REVOKED_KEPT {
                                revoked.pop_front();
                            }
                            revoked.push_back(permit);
                        }
                        // The free permits and the taken ones add up to at
                        // most u64::MAX, since a release past that fails,
                        // so this never saturates; if it did, a full count
                        // beats a server thread's panic or a wrap to zero.
                        *value = value.saturating_add(n);
                    }
                }
                _ => {}
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until no connection is left.
    pub(crate) fn wait_idle(&self) {
        let mut st = self.lock();
        while st.connections > 0 {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `attempt` until it gives a value, the deadline passes (`None`),
    /// or the client goes away.
    fn wait_for<T>(
        &self,
        client: &Client<'_>,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut State) -> Result<Option<T>, Fault>,
        on_timeout: impl FnOnce(&mut State),
    ) -> Result<Option<T>, Fault> {
        let mut st = self.lock();
        let mut first = true;
        loop {
            // A client that left while we waited must take nothing.
            if !first && internals::peer_gone(client.sock) {
                return Err(Fault::Gone);
            }
            first = false;
            if let Some(v) = attempt(&mut st)? {
                return Ok(Some(v));
            }
            let wait = match deadline {
                None => LIVENESS,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        on_timeout(&mut st);
                        drop(st);
                        self.changed.notify_all();
                        return Ok(None);
                    }
                    left.min(LIVENESS)
                }
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn handle(
        &self,
        client: &Client<'_>,
        request: &[u8],
        out: &mut Frame,
    ) -> Result<Option<Undo>, Fault> {
        let mut f = Fields::new(request);
        let op = Op::from_u8(f.u8()?).ok_or(Fault::Bad)?;
        let id = f.u64()?;
        // Ids start at random, so this is also how a proxy of another
        // server (one that was at this address before) is told apart.
        // A proxy decoded as another type than it was made as (through a
        // namespace, say) asks an object for what it does not do.
        if !matches!(op, Op::Ping | Op::Create | Op::CreateNamed | Op::Objects) {
            match self.lock().objects.get(&id) {
                None => {
                    return Err(op_err(
                        ErrorKind::Disconnected,
                        format!(
                            "the manager holds no object {id}: it belongs to another server \
                             (one that was at this address before it, perhaps), or it was \
                             freed once no proxy of it was left"
                        ),
                    ));
                }
                Some(obj) if !obj.accepts(op) => {
                    return Err(op_err(
                        ErrorKind::InvalidInput,
                        format!(
                            "object {id} of the manager is {}, which has no {op:?} \
                             (was its proxy decoded as another type?)",
                            obj.what()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        out.u8(OK);
        let mut undo = None;
        let mut notify = false;
        {
            match op {
                Op::Ping => {
                    f.end()?;
                }
                Op::Objects => {
                    f.end()?;
                    out.u64(self.lock().objects.len() as u64);
                }
                Op::IncRef => {
                    f.end()?;
                    let mut st = self.lock();
                    // The object was there when the request was checked,
                    // and only its last reference (this client holds one)
                    // could have freed it since.
                    if let Some(n) = st.refs.get_mut(&id) {
                        *n = n.saturating_add(1);
                    }
                }
                Op::DecRef => {
                    f.end()?;
                    let mut st = self.lock();
                    if let Some(n) = st.refs.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            st.refs.remove(&id);
                            st.objects.remove(&id);
                        }
                    }
                }
                Op::Create => {
                    let (_, obj) = create(&mut f)?;
                    f.end()?;
                    // The proxy the reply makes holds the first reference.
                    let new = self.lock().insert(obj, 1);
                    out.u64(new);
                }
                Op::CreateNamed => {
                    let name = f.bytes()?;
                    if name.len() > MAX_NAME {
                        return Err(op_err(
                            ErrorKind::InvalidInput,
                            format!("an object's name is at most {MAX_NAME} bytes"),
                        ));
                    }
                    let (kind, obj) = create(&mut f)?;
                    f.end()?;
                    let mut st = self.lock();
                    let id = match st.names.get(name) {
                        Some(&(id, made)) => {
                            if made != kind {
                                let what = st.objects.get(&id).map_or("gone", Obj::what);
                                return Err(op_err(
                                    ErrorKind::InvalidInput,
                                    format!(
                                        "the manager's object named {:?} is {what}, not {}",
                                        String::from_utf8_lossy(name),
                                        obj.what()
                                    ),
                                ));
                            }
                            if let Some(n) = st.refs.get_mut(&id) {
                                *n = n.saturating_add(1);
                            }
                            id
                        }
                        None => {
                            // The name's reference and the reply's proxy's.
                            let id = st.insert(obj, 2);
                            st.names.insert(name.to_vec(), (id, kind));
                            id
                        }
                    };
                    out.u64(id);
                }
                Op::MapUpdateWith | Op::ValueUpdateWith => {
                    let key = if op == Op::MapUpdateWith {
                        Some(f.bytes()?)
                    } else {
                        None
                    };
                    let entry = std::str::from_utf8(f.bytes()?).map_err(|_| Fault::Bad)?;
                    f.end()?;
                    let record = internals::find_entry(entry).map_err(Fault::Op)?;
                    // The entry runs outside the state lock, the object
                    // marked busy: its other requests wait, the server's
                    // other objects are served meanwhile.
                    let mut st = self.lock_idle(client, id)?;
                    let old = match (st.objects.get(&id), key) {
                        (Some(Obj::Map(map)), Some(key)) => map.get(key).cloned(),
                        (Some(Obj::Value(v)), None) => Some(v.clone()),
                        _ => return Err(Fault::Bad),
                    };
                    st.busy.insert(id);
                    drop(st);
                    let busy = Busy { server: self, id };
                    let new =
                        internals::run_update(record, entry, old.as_deref()).map_err(Fault::Op)?;
                    let mut st = self.lock();
                    match (st.objects.get_mut(&id), key) {
                        (Some(Obj::Map(map)), Some(key)) => {
                            map.insert(key.to_vec(), new.clone());
                        }
                        (Some(Obj::Value(v)), None) => v.clone_from(&new),
                        _ => return Err(Fault::Bad),
                    }
                    drop(st);
                    drop(busy);
                    out.bytes(&new);
                }
                Op::MapGet
                | Op::MapInsert
                | Op::MapRemove
                | Op::MapContains
                | Op::MapLen
                | Op::MapKeys
                | Op::MapValues
                | Op::MapItems
                | Op::MapUpdate
                | Op::MapClear
                | Op::MapSetDefault
                | Op::MapPopItem => {
                    let mut st = self.lock_idle(client, id)?;
                    let Some(Obj::Map(map)) = st.objects.get_mut(&id) else {
                        return Err(Fault::Bad);
                    };
                    map_op(op, map, &mut f, out)?;
                    f.end()?;
                }
                Op::SeqPush
                | Op::SeqGet
                | Op::SeqSet
                | Op::SeqPop
                | Op::SeqInsert
                | Op::SeqRemove
                | Op::SeqLen
                | Op::SeqExtend
                | Op::SeqSnapshot
                | Op::SeqReverse
                | Op::SeqPosition
                | Op::SeqCount => {
                    let mut st = self.lock();
                    let Some(Obj::Seq { items, fixed }) = st.objects.get_mut(&id) else {
                        return Err(Fault::Bad);
                    };
                    seq_op(op, items, *fixed, &mut f, out)?;
                    f.end()?;
                }
                Op::ValueGet | Op::ValueSet => {
                    let set = if op == Op::ValueSet {
                        Some(f.bytes()?)
                    } else {
                        None
                    };
                    f.end()?;
                    let mut st = self.lock_idle(client, id)?;
                    let Some(Obj::Value(v)) = st.objects.get_mut(&id) else {
                        return Err(Fault::Bad);
                    };
                    match set {
                        Some(new) => *v = new.to_vec(),
                        None => {
                            out.bytes(v);
                        }
                    }
                }
                Op::QueuePut => {
                    let ms = f.u64()?;
                    let item = f.bytes()?;
                    f.end()?;
                    let mut item = Some(item.to_vec());
                    let done = self.wait_for(
                        client,
                        deadline_of(ms),
                        |st| {
                            let Some(Obj::Queue { items, max }) = st.objects.get_mut(&id) else {
                                return Err(Fault::Bad);
                            };
                            if *max == 0 || items.len() < *max {
                                items.extend(item.take());
                                Ok(Some(()))
                            } else {
                                Ok(None)
                            }
                        },
                        |_| {},
                    )?;
                    notify = done.is_some();
                    out.u8(u8::from(done.is_some()));
                }
                Op::QueueGet => {
                    let ms = f.u64()?;
                    f.end()?;
                    let got = self.wait_for(
                        client,
                        deadline_of(ms),
                        |st| {
                            let Some(Obj::Queue { items, .. }) = st.objects.get_mut(&id) else {
                                return Err(Fault::Bad);
                            };
                            Ok(items.pop_front())
                        },
                        |_| {},
                    )?;
                    notify = got.is_some();
                    out.opt(got.as_deref());
                    undo = got.map(|item| Undo::QueueItem(id, item));
                }
                Op::QueueLen => {
                    f.end()?;
                    let st = self.lock();
                    let Some(Obj::Queue { items, max }) = st.objects.get(&id) else {
                        return Err(Fault::Bad);
                    };
                    out.u64(items.len() as u64).u64(*max as u64);
                }
                Op::Acquire => {
                    let token = f.u64()?;
                    let ms = f.u64()?;
                    f.end()?;
                    let conn = client.id;
                    let got = self.wait_for(
                        client,
                        deadline_of(ms),
                        |st| match st.objects.get_mut(&id) {
                            Some(Obj::Lock { holder }) => Ok(if holder.is_none() {
                                *holder = Some((token, conn));
                                Some(())
                            } else {
                                None
                            }),
                            Some(Obj::RLock(owned)) | Some(Obj::Cond { lock: owned, .. }) => {
                                Ok(owned.try_take(token, conn, true).map(drop))
                            }
                            _ => Err(Fault::Bad),
                        },
                        |_| {},
                    )?;
                    out.u8(u8::from(got.is_some()));
                }
                Op::Release => {
                    let token = f.u64()?;
                    f.end()?;
                    let mut st = self.lock();
                    match st.objects.get_mut(&id) {
                        // Only a guard releases a lock, on the thread that
                        // took it; one whose lock was taken from it (its
                        // connection ended: a network failure) must not
                        // release the next holder's.
                        Some(Obj::Lock { holder }) => match *holder {
                            Some((t, _)) if t == token => *holder = None,
                            Some(_) => {
                                return Err(op_err(
                                    ErrorKind::NotOwner,
                                    "release of a lock this thread no longer holds \
                                     (released when its connection ended)",
                                ));
                            }
                            None => {
                                return Err(op_err(
                                    ErrorKind::NotOwner,
                                    "release of a lock that is not held",
                                ));
                            }
                        },
                        Some(Obj::RLock(owned)) | Some(Obj::Cond { lock: owned, .. }) => {
                            release_owned(owned, token)?;
                        }
                        _ => return Err(Fault::Bad),
                    }
                    notify = true;
                }
                Op::SemAcquire => {
                    let process = f.u64()?;
                    let permit = f.u64()?;
                    let ms = f.u64()?;
                    f.end()?;
                    let conn = client.id;
                    let got = self.wait_for(
                        client,
                        deadline_of(ms),
                        |st| {
                            let Some(Obj::Sem { value, taken, .. }) = st.objects.get_mut(&id)
                            else {
                                return Err(Fault::Bad);
                            };
                            if *value > 0 {
                                *value -= 1;
                                let mine = taken.entry(conn).or_default();
                                mine.process = process;
                                mine.permits.push(permit);
                                Ok(Some(()))
                            } else {
                                Ok(None)
                            }
                        },
                        |_| {},
                    )?;
                    out.u8(u8::from(got.is_some()));
                }
                Op::SemRelease => {
                    let process = f.u64()?;
                    let permit = f.u64()?;
                    f.end()?;
                    let mut st = self.lock();
                    let Some(Obj::Sem {
                        value,
                        max,
                        taken,
                        revoked,
                    }) = st.objects.get_mut(&id)
                    else {
                        return Err(Fault::Bad);
                    };
                    // A guard gives back its own permit (`permit`, not 0).
                    // If the server took that back when its connection ended
                    // (a network failure), adding it again would make a
                    // permit out of nothing.
                    if permit != NO_PERMIT
                        && let Some(at) = revoked.iter().position(|p| *p == permit)
                    {
                        revoked.remove(at);
                        return Err(op_err(
                            ErrorKind::NotOwner,
                            "this permit was given back already, when the connection \
                             it was taken through ended",
                        ));
                    }
                    let own = (permit != NO_PERMIT)
                        .then(|| {
                            taken
                                .iter()
                                .find(|(_, t)| t.permits.contains(&permit))
                                .map(|(c, _)| *c)
                        })
                        .flatten();
                    if own.is_none() && max.is_some_and(|m| *value >= m) {
                        return Err(op_err(
                            ErrorKind::TooManyReleases,
                            "a bounded semaphore was released more times than it was acquired",
                        ));
                    }
                    // Any other release gives back this connection's permit
                    // if it holds one, else one this process took through
                    // another of its connections, else any holder's: a dead
                    // connection must not give back a permit that was
                    // already returned for it, and one that is still held
                    // must be given back when its holder dies.
                    let holder = own.or_else(|| {
                        if taken.get(&client.id).is_some_and(|t| !t.permits.is_empty()) {
                            Some(client.id)
                        } else {
                            taken
                                .iter()
                                .find(|(_, t)| !t.permits.is_empty() && t.process == process)
                                .or_else(|| taken.iter().find(|(_, t)| !t.permits.is_empty()))
                                .map(|(c, _)| *c)
                        }
                    });
                    let Some(more) = value.checked_add(1) else {
                        return Err(op_err(
                            ErrorKind::TooManyReleases,
                            format!(
                                "a semaphore released too many times (its limit is {} permits)",
                                u64::MAX
                            ),
                        ));
                    };
                    *value = more;
                    if let Some(h) = holder
                        && let Some(t) = taken.get_mut(&h)
                    {
                        match t.permits.iter().position(|p| *p == permit) {
                            Some(at) => {
                                t.permits.swap_remove(at);
                            }
                            None => {
                                t.permits.pop();
                            }
                        }
                        if t.permits.is_empty() {
                            taken.remove(&h);
                        }
                    }
                    notify = true;
                }
                Op::SemValue => {
                    f.end()?;
                    let st = self.lock();
                    let Some(Obj::Sem { value, .. }) = st.objects.get(&id) else {
                        return Err(Fault::Bad);
                    };
                    out.u64(*value);
                }
                Op::CondWait => {
                    let token = f.u64()?;
                    let ms = f.u64()?;
                    f.end()?;
                    let notified = self.cond_wait(client, id, token, deadline_of(ms))?;
                    out.u8(u8::from(notified));
                }
                Op::CondNotify => {
                    let token = f.u64()?;
                    let n = f.u64()?;
                    f.end()?;
                    let mut st = self.lock();
                    let Some(Obj::Cond {
                        lock,
                        waiting,
                        notified,
                        ..
                    }) = st.objects.get_mut(&id)
                    else {
                        return Err(Fault::Bad);
                    };
                    if lock.owner.map(|(t, _)| t) != Some(token) {
                        return Err(op_err(
                            ErrorKind::NotOwner,
                            "notify on a condition whose lock this thread does not hold",
                        ));
                    }
                    for _ in 0..n {
                        match waiting.pop_front() {
                            Some(t) => {
                                notified.insert(t);
                            }
                            None => break,
                        }
                    }
                    notify = true;
                }
                Op::EventSet | Op::EventClear | Op::EventIsSet => {
                    f.end()?;
                    let mut st = self.lock();
                    let Some(Obj::Event(flag)) = st.objects.get_mut(&id) else {
                        return Err(Fault::Bad);
                    };
                    match op {
                        Op::EventSet => {
                            *flag = true;
                            notify = true;
                        }
                        Op::EventClear => *flag = false,
                        _ => {
                            out.u8(u8::from(*flag));
                        }
                    }
                }
                Op::EventWait => {
                    let ms = f.u64()?;
                    f.end()?;
                    let set = self.wait_for(
                        client,
                        deadline_of(ms),
                        |st| match st.objects.get(&id) {
                            Some(Obj::Event(flag)) => Ok(flag.then_some(())),
                            _ => Err(Fault::Bad),
                        },
                        |_| {},
                    )?;
                    out.u8(u8::from(set.is_some()));
                }
                Op::BarrierWait => {
                    let ms = f.u64()?;
                    f.end()?;
                    let index = self.barrier_wait(client, id, deadline_of(ms))?;
                    out.u64(index);
                }
                Op::BarrierAbort | Op::BarrierReset | Op::BarrierWaiting | Op::BarrierBroken => {
                    f.end()?;
                    let mut st = self.lock();
                    let Some(Obj::Barrier {
                        count,
                        broken,
                        resets,
                        ..
                    }) = st.objects.get_mut(&id)
                    else {
                        return Err(Fault::Bad);
                    };
                    match op {
                        Op::BarrierAbort => {
                            *broken = true;
                            notify = true;
                        }
                        Op::BarrierReset => {
                            // Waiters now see a broken barrier; later ones a fresh one.
                            if *count > 0 {
                                *resets += 1;
                            }
                            *count = 0;
                            *broken = false;
                            notify = true;
                        }
                        Op::BarrierWaiting => {
                            // Those who waited at a broken barrier have left
                            // it, or are leaving.
                            out.u64(if *broken { 0 } else { *count });
                        }
                        _ => {
                            out.u8(u8::from(*broken));
                        }
                    }
                }
            }
        }
        if notify {
            self.changed.notify_all();
        }
        Ok(undo)
    }

    fn cond_wait(
        &self,
        client: &Client<'_>,
        id: u64,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<bool, Fault> {
        // Release the lock (every level) and join the waiters.
        let (ticket, levels) = {
            let mut st = self.lock();
            let Some(Obj::Cond {
                lock,
                next_ticket,
                waiting,
                ..
            }) = st.objects.get_mut(&id)
            else {
                return Err(Fault::Bad);
            };
            if lock.owner.map(|(t, _)| t) != Some(token) {
                return Err(op_err(
                    ErrorKind::NotOwner,
                    "wait on a condition whose lock this thread does not hold",
                ));
            }
            let levels = lock.count;
            *lock = Owned::default();
            *next_ticket += 1;
            waiting.push_back(*next_ticket);
            (*next_ticket, levels)
        };
        self.changed.notify_all();
        let forget = |st: &mut State| {
            if let Some(Obj::Cond {
                waiting, notified, ..
            }) = st.objects.get_mut(&id)
            {
                waiting.retain(|t| *t != ticket);
                notified.remove(&ticket);
            }
        };
        let woken = self.wait_for(
            client,
            deadline,
            |st| match st.objects.get_mut(&id) {
                Some(Obj::Cond { notified, .. }) => Ok(notified.remove(&ticket).then_some(())),
                _ => Err(Fault::Bad),
            },
            forget,
        );
        let woken = match woken {
            Ok(w) => w.is_some(),
            Err(e) => {
                // A waiter that left takes no notification with it.
                let mut st = self.lock();
                let notified = matches!(
                    st.objects.get(&id),
                    Some(Obj::Cond { notified, .. }) if notified.contains(&ticket)
                );
                forget(&mut st);
                if notified {
                    self.pass_on_notification(st, id);
                }
                return Err(e);
            }
        };
        // Take the lock back, at the level it was held.
        let conn = client.id;
        let taken = self.wait_for(
            client,
            None,
            |st| match st.objects.get_mut(&id) {
                Some(Obj::Cond { lock, .. }) => Ok(lock.try_take(token, conn, false).map(|_| {
                    lock.count = levels;
                })),
                _ => Err(Fault::Bad),
            },
            |_| {},
        );
        if let Err(e) = taken {
            if woken {
                self.pass_on_notification(self.lock(), id);
            }
            return Err(e);
        }
        Ok(woken)
    }

    /// Gives a notification that a waiter who left had received to the
    /// next waiter of condition `id`, if there is one.
    fn pass_on_notification(&self, mut st: MutexGuard<'_, State>, id: u64) {
        if let Some(Obj::Cond {
            waiting, notified, ..
        }) = st.objects.get_mut(&id)
            && let Some(next) = waiting.pop_front()
        {
            notified.insert(next);
        }
        drop(st);
        self.changed.notify_all();
    }

    fn barrier_wait(
        &self,
        client: &Client<'_>,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, Fault> {
        let broken_err = || op_err(ErrorKind::BrokenBarrier, "the barrier is broken");
        let (index, arrived_in, reset) = {
            let mut st = self.lock();
            let Some(Obj::Barrier {
                parties,
                count,
                generation,
                broken,
                resets,
            }) = st.objects.get_mut(&id)
            else {
                return Err(Fault::Bad);
            };
            if *broken {
                return Err(broken_err());
            }
            let index = *count;
            *count += 1;
            if *count == *parties {
                *count = 0;
                *generation += 1;
                drop(st);
                self.changed.notify_all();
                return Ok(index);
            }
            (index, *generation, *resets)
        };
        let break_it = |st: &mut State| {
            if let Some(Obj::Barrier { broken, count, .. }) = st.objects.get_mut(&id) {
                *broken = true;
                *count = count.saturating_sub(1);
            }
        };
        let passed = self.wait_for(
            client,
            deadline,
            |st| match st.objects.get(&id) {
                Some(Obj::Barrier {
                    generation,
                    broken,
                    resets,
                    ..
                }) => {
                    if *generation != arrived_in {
                        Ok(Some(true))
                    } else if *broken || *resets != reset {
                        Ok(Some(false))
                    } else {
                        Ok(None)
                    }
                }
                _ => Err(Fault::Bad),
            },
            break_it,
        );
        match passed {
            Ok(Some(true)) => Ok(index),
            Ok(Some(false)) | Ok(None) => Err(broken_err()),
            Err(e) => {
                // A waiter that died breaks the barrier for the others,
                // in its own round only: if that round passed (or was
                // reset) before its death was noticed, it was counted
                // there, and a later round owes it nothing.
                let mut st = self.lock();
                let current = matches!(
                    st.objects.get(&id),
                    Some(Obj::Barrier { generation, resets, .. })
                        if *generation == arrived_in && *resets == reset
                );
                if current {
                    break_it(&mut st);
                }
                drop(st);
                self.changed.notify_all();
                Err(e)
            }
        }
    }
}

fn release_owned(owned: &mut Owned, token: u64) -> Result<(), Fault> {
    match owned.owner {
        Some((t, _)) if t == token => {
            owned.count -= 1;
            if owned.count == 0 {
                owned.owner = None;
            }
            Ok(())
        }
        _ => Err(op_err(
            ErrorKind::NotOwner,
            "release of a lock this thread does not hold",
        )),
    }
}

fn create(f: &mut Fields<'_>) -> Result<(ObjKind, Obj), Fault> {
    let kind = ObjKind::from_u8(f.u8()?).ok_or(Fault::Bad)?;
    let obj = match kind {
        ObjKind::Map => Obj::Map(Dict::default()),
        ObjKind::Seq | ObjKind::FixedSeq => {
            let n = f.count(8)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(f.bytes()?.to_vec());
            }
            Obj::Seq {
                items,
                fixed: kind == ObjKind::FixedSeq,
            }
        }
        ObjKind::Value => Obj::Value(f.bytes()?.to_vec()),
        ObjKind::Queue => Obj::Queue {
            items: VecDeque::new(),
            max: usize::try_from(f.u64()?).map_err(|_| Fault::Bad)?,
        },
        ObjKind::Lock => Obj::Lock { holder: None },
        ObjKind::RLock => Obj::RLock(Owned::default()),
        ObjKind::Semaphore | ObjKind::BoundedSemaphore => {
            let n = f.u64()?;
            Obj::Sem {
                value: n,
                max: (kind == ObjKind::BoundedSemaphore).then_some(n),
                taken: HashMap::new(),
                revoked: VecDeque::new(),
            }
        }
        ObjKind::Condition => Obj::Cond {
            lock: Owned::default(),
            next_ticket: 0,
            waiting: VecDeque::new(),
            notified: HashSet::new(),
        },
        ObjKind::Event => Obj::Event(false),
        ObjKind::Barrier => {
            let parties = f.u64()?;
            if parties == 0 {
                return Err(Fault::Bad);
            }
            Obj::Barrier {
                parties,
                count: 0,
                generation: 0,
                broken: false,
                resets: 0,
            }
        }
    };
    Ok((kind, obj))
}

fn map_op(op: Op, map: &mut Dict, f: &mut Fields<'_>, out: &mut Frame) -> Result<(), Fault> {
    match op {
        Op::MapGet => {
            out.opt(map.get(f.bytes()?).map(Vec::as_slice));
        }
        Op::MapInsert => {
            let k = f.bytes()?.to_vec();
            let v = f.bytes()?.to_vec();
            out.opt(map.insert(k, v).as_deref());
        }
        Op::MapRemove => {
            out.opt(map.remove(f.bytes()?).as_deref());
        }
        Op::MapContains => {
            out.u8(u8::from(map.contains_key(f.bytes()?)));
        }
        Op::MapLen => {
            out.u64(map.len() as u64);
        }
        Op::MapKeys => {
            out.u64(map.len() as u64);
            for (k, _) in map.iter() {
                out.bytes(k);
            }
        }
        Op::MapValues => {
            out.u64(map.len() as u64);
            for (_, v) in map.iter() {
                out.bytes(v);
            }
        }
        Op::MapItems => {
            out.u64(map.len() as u64);
            for (k, v) in map.iter() {
                out.bytes(k).bytes(v);
            }
        }
        Op::MapUpdate => {
            let n = f.count(16)?;
            for _ in 0..n {
                let k = f.bytes()?.to_vec();
                let v = f.bytes()?.to_vec();
                map.insert(k, v);
            }
        }
        Op::MapClear => map.clear(),
        Op::MapSetDefault => {
            let k = f.bytes()?.to_vec();
            let v = f.bytes()?.to_vec();
            out.bytes(map.get_or_insert(k, v).ok_or(Fault::Bad)?);
        }
        Op::MapPopItem => match map.pop_last() {
            Some((k, v)) => {
                out.u8(1).bytes(&k).bytes(&v);
            }
            None => {
                out.u8(0);
            }
        },
        _ => return Err(Fault::Bad),
    }
    Ok(())
}

fn out_of_range(i: u64, len: usize) -> Fault {
    op_err(
        ErrorKind::OutOfRange,
        format!("index {i} is out of range for a sequence of length {len}"),
    )
}

fn seq_op(
    op: Op,
    items: &mut Vec<Vec<u8>>,
    fixed: bool,
    f: &mut Fields<'_>,
    out: &mut Frame,
) -> Result<(), Fault> {
    let resizes = matches!(
        op,
        Op::SeqPush | Op::SeqPop | Op::SeqInsert | Op::SeqRemove | Op::SeqExtend
    );
    if fixed && resizes {
        return Err(Fault::Bad);
    }
    match op {
        Op::SeqPush => items.push(f.bytes()?.to_vec()),
        Op::SeqGet => {
            let i = f.u64()?;
            out.opt(
                usize::try_from(i)
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(Vec::as_slice),
            );
        }
        Op::SeqSet => {
            let i = f.u64()?;
            let v = f.bytes()?;
            let len = items.len();
            match usize::try_from(i).ok().and_then(|i| items.get_mut(i)) {
                Some(slot) => *slot = v.to_vec(),
                None => return Err(out_of_range(i, len)),
            }
        }
        Op::SeqPop => {
            let at = if f.bool()? { Some(f.u64()?) } else { None };
            let got = match at {
                None => items.pop(),
                Some(i) => match usize::try_from(i) {
                    Ok(i) if i < items.len() => Some(items.remove(i)),
                    _ => None,
                },
            };
            out.opt(got.as_deref());
        }
        Op::SeqInsert => {
            let i = f.u64()?;
            let v = f.bytes()?.to_vec();
            let at = usize::try_from(i).unwrap_or(usize::MAX).min(items.len());
            items.insert(at, v);
        }
        Op::SeqRemove => {
            let v = f.bytes()?;
            let found = items.iter().position(|x| x == v);
            if let Some(i) = found {
                items.remove(i);
            }
            out.u8(u8::from(found.is_some()));
        }
        Op::SeqLen => {
            out.u64(items.len() as u64);
        }
        Op::SeqExtend => {
            let n = f.count(8)?;
            items.reserve(n);
            for _ in 0..n {
                items.push(f.bytes()?.to_vec());
            }
        }
        Op::SeqSnapshot => {
            out.u64(items.len() as u64);
            for v in items.iter() {
                out.bytes(v);
            }
        }
        Op::SeqReverse => items.reverse(),
        Op::SeqPosition => {
            let v = f.bytes()?;
            match items.iter().position(|x| x == v) {
                Some(i) => out.u8(1).u64(i as u64),
                None => out.u8(0),
            };
        }
        Op::SeqCount => {
            let v = f.bytes()?;
            out.u64(items.iter().filter(|x| *x == v).count() as u64);
        }
        _ => return Err(Fault::Bad),
    }
    Ok(())
}

/// Serves clients that dial through `dial` (a local manager's server):
/// returns when nobody can dial any more and every connection has ended.
/// A passing error (out of memory, buffers or descriptors) costs at most
/// the connection it came with, never the loop.
pub(crate) fn serve_local(dial: OwnedFd) {
    let server = Arc::new(Server::new());
    loop {
        match internals::recv_dialed(dial.as_fd()) {
            Ok(Some(fds)) => {
                // One connection per message; anything else is dropped.
                let mut fds = fds.into_iter();
                let (Some(fd), None) = (fds.next(), fds.next()) else {
                    continue;
                };
                let stream = UnixStream::from(fd);
                let server = Arc::clone(&server);
                // A thread that cannot be made drops its closure, and so
                // closes this connection only.
                let _ = std::thread::Builder::new()
                    .name("manager-conn".into())
                    .spawn(move || server.serve_connection(stream));
            }
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Not a socket we can receive on: nothing will ever come.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT)
                ) =>
            {
                break;
            }
            // Short of memory or buffers (or anything else passing): a
            // pause, a bound on how often this loops, then serve on. Only
            // the end of the dial socket (every parent gone) stops it.
            // (Short of descriptors is no error here: the kernel closes
            // the connection it could not install, and the message comes
            // with none.)
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    server.wait_idle();
}

/// Serves authenticated TCP clients from `listener` for ever.
pub(crate) fn serve_tcp(listener: TcpListener, authkey: &[u8]) -> Result<(), Error> {
    let server = Arc::new(Server::new());
    let key: Arc<[u8]> = Arc::from(authkey);
    let handshakes = crate::net::Handshakes::default();
    loop {
        let Some(stream) = crate::net::accept(&listener)? else {
            continue;
        };
        let Some(pending) = handshakes.begin(&stream) else {
            drop(stream);
            continue;
        };
        let server = Arc::clone(&server);
        let key = Arc::clone(&key);
        let _ = std::thread::Builder::new()
            .name("manager-tcp".into())
            .spawn(move || {
                let mut stream = stream;
                // A handshake cut short for a newer one may have got through
                // just before: its socket is shut down all the same.
                if crate::net::handshake_as_server(&mut stream, &key, None).is_err()
                    || !pending.finish()
                {
                    return;
                }
                server.serve_connection(stream);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::proto::MAX_FRAME;

    /// Sends a request built by `build`; returns the reply.
    fn ask(
        stream: &mut UnixStream,
        reader: &mut FrameReader,
        op: Op,
        id: u64,
        build: impl FnOnce(&mut Frame),
    ) -> Vec<u8> {
        let mut request = Frame::new();
        request.u8(op as u8).u64(id);
        build(&mut request);
        request.send(stream).unwrap();
        reader.read(stream).unwrap().to_vec()
    }

    #[test]
    fn a_reply_over_the_limit_is_an_error_on_a_connection_that_stays() {
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        let server = Arc::new(Server::new());
        let serving = {
            let server = Arc::clone(&server);
            std::thread::spawn(move || server.serve_connection(theirs))
        };
        let mut reader = FrameReader::default();
        let reply = ask(&mut mine, &mut reader, Op::Create, 0, |f| {
            f.u8(ObjKind::Seq as u8).u64(0);
        });
        assert_eq!(reply[0], OK);
        let id = Fields::new(&reply[1..]).u64().unwrap();
        // Each item comes in under the limit; all three go over it.
        let item = vec![7u8; MAX_FRAME / 2];
        for _ in 0..3 {
            let reply = ask(&mut mine, &mut reader, Op::SeqPush, id, |f| {
                f.bytes(&item);
            });
            assert_eq!(reply, [OK]);
        }
        let reply = ask(&mut mine, &mut reader, Op::SeqSnapshot, id, |_| {});
        assert_eq!(&reply[..2], [ERR, kind_code(ErrorKind::Encode)]);
        let reply = ask(&mut mine, &mut reader, Op::SeqLen, id, |_| {});
        assert_eq!(reply[0], OK);
        assert_eq!(Fields::new(&reply[1..]).u64().unwrap(), 3);
        drop(mine);
        serving.join().unwrap();
    }

    #[test]
    fn a_client_gone_while_its_object_is_busy_ends_its_wait() {
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        let server = Arc::new(Server::new());
        let (done, ended) = std::sync::mpsc::channel();
        {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                server.serve_connection(theirs);
                let _ = done.send(());
            });
        }
        let mut reader = FrameReader::default();
        let reply = ask(&mut mine, &mut reader, Op::Create, 0, |f| {
            f.u8(ObjKind::Map as u8);
        });
        assert_eq!(reply[0], OK);
        let id = Fields::new(&reply[1..]).u64().unwrap();
        // As while an `update_with` entry runs on it.
        server.lock().busy.insert(id);
        let mut request = Frame::new();
        request.u8(Op::MapLen as u8).u64(id);
        request.send(&mut mine).unwrap();
        // The request waits; its client goes away: the wait ends.
        drop(mine);
        ended
            .recv_timeout(Duration::from_secs(20))
            .expect("the wait of a client that went away never ended");
        assert!(server.lock().busy.contains(&id), "the mark is the entry's");
    }
}
