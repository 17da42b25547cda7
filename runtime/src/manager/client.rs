//! The client side: how a proxy reaches its server, and the connections it
//! keeps open there (a few per process, reused, never shared by two
//! requests at once).

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::internals::{self, error};
use super::proto::{
    ERR, Fields, Frame, FrameReader, NO_PERMIT, OK, Op, ReadError, code_kind, kind_code,
};
use crate::Fd;
use crate::error::{Error, ErrorKind};

/// Where a server is.
enum Endpoint {
    /// A local server, reached by sending one end of a new socket pair
    /// through this dial socket.
    Local(Fd),
    /// A remote server and the key both sides prove.
    Remote { addr: String, key: Arc<[u8]> },
}

/// Identifies an endpoint within a process, so that proxies of one server
/// that arrive separately share their connections.
#[derive(PartialEq, Eq)]
enum Key {
    Local(u64),
    Remote(String, Arc<[u8]>),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

/// One open connection to the server.
struct Conn {
    stream: Stream,
    reader: FrameReader,
    out: Frame,
}

/// A server as seen from this process: its endpoint and idle connections.
pub(crate) struct Client {
    endpoint: Endpoint,
    key: Key,
    /// The process the idle connections were opened in, and the connections.
    idle: Mutex<(u32, Vec<Conn>)>,
    /// When a remote server was last found unreachable (a connection or a
    /// reply that failed), until a connection to it is made again.
    unreachable: Mutex<Option<Instant>>,
}

/// How long after a remote server was found unreachable a dropped proxy
/// gives its reference up without asking it: each attempt may wait up to
/// the connection's timeout (10 s), and a program dropping many proxies
/// of a server that went silent would wait that long for each.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Local(fd) => write!(f, "local manager (dial {fd:?})"),
            Endpoint::Remote { addr, .. } => write!(f, "remote manager at {addr}"),
        }
    }
}

fn registry() -> MutexGuard<'static, Vec<Weak<Client>>> {
    static CLIENTS: OnceLock<Mutex<Vec<Weak<Client>>>> = OnceLock::new();
    CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The clients kept until this process ends (`Client::keep_for_life`).
fn kept() -> MutexGuard<'static, Vec<Arc<Client>>> {
    static KEPT: Mutex<Vec<Arc<Client>>> = Mutex::new(Vec::new());
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

fn gone(e: io::Error) -> Error {
    error(ErrorKind::Disconnected, "the manager's server is gone").with_source(e)
}

impl Client {
    /// The client of `endpoint`, shared with any other of this process.
    fn shared(endpoint: Endpoint) -> Result<Arc<Client>, Error> {
        let key = match &endpoint {
            Endpoint::Local(fd) => Key::Local(
                internals::inode(fd.as_fd())
                    .map_err(|e| Error::io("looking at a dial socket", e))?,
            ),
            Endpoint::Remote { addr, key } => Key::Remote(addr.clone(), Arc::clone(key)),
        };
        let mut clients = registry();
        clients.retain(|c| c.strong_count() > 0);
        if let Some(found) = clients
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.key == key)
        {
            return Ok(found);
        }
        let client = Arc::new(Client {
            endpoint,
            key,
            idle: Mutex::new((std::process::id(), Vec::new())),
            unreachable: Mutex::new(None),
        });
        clients.push(Arc::downgrade(&client));
        Ok(client)
    }

    /// Keeps this client, and so its connections and what the server
    /// holds for them, until this process ends, even once no proxy of its
    /// server is left here.
    ///
    /// Clients whose server is gone are let go meanwhile: nothing is held
    /// there any more, and each would keep its descriptors open for good.
    pub(crate) fn keep_for_life(self: &Arc<Client>) {
        let mut kept = kept();
        kept.retain(|c| !c.server_gone());
        if !kept.iter().any(|c| Arc::ptr_eq(c, self)) {
            kept.push(Arc::clone(self));
        }
    }

    /// Lets go of this client if [`keep_for_life`](Client::keep_for_life)
    /// kept it: its server has been stopped.
    pub(crate) fn server_stopped(self: &Arc<Client>) {
        kept().retain(|c| !Arc::ptr_eq(c, self));
    }

    /// Whether the server has hung up: a local one's dial socket, or every
    /// idle connection to a remote one.
    fn server_gone(&self) -> bool {
        match &self.endpoint {
            Endpoint::Local(dial) => internals::peer_gone(dial.as_fd()),
            Endpoint::Remote { .. } => {
                let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                !idle.1.is_empty()
                    && idle
                        .1
                        .iter()
                        .all(|conn| internals::peer_gone(conn.stream.as_fd()))
            }
        }
    }

    pub(crate) fn local(dial: Fd) -> Result<Arc<Client>, Error> {
        Client::shared(Endpoint::Local(dial))
    }

    pub(crate) fn remote(addr: &str, key: &[u8]) -> Result<Arc<Client>, Error> {
        Client::shared(Endpoint::Remote {
            addr: addr.to_string(),
            key: Arc::from(key),
        })
    }

    fn open(&self) -> Result<Conn, Error> {
        let stream = match &self.endpoint {
            Endpoint::Local(dial) => {
                let (mine, theirs) = UnixStream::pair()
                    .map_err(|e| Error::io("making a socket pair for the manager", e))?;
                internals::send_fd(dial.as_fd(), theirs.as_fd()).map_err(gone)?;
                Stream::Unix(mine)
            }
            Endpoint::Remote { addr, key } => {
                let connected = connect_tcp(addr, key);
                self.reached(connected.is_ok());
                Stream::Tcp(connected?)
            }
        };
        Ok(Conn {
            stream,
            reader: FrameReader::default(),
            out: Frame::new(),
        })
    }

    /// Notes whether a remote server was just reached.
    fn reached(&self, reached: bool) {
        if let Endpoint::Remote { .. } = self.endpoint {
            *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) =
                (!reached).then(Instant::now);
        }
    }

    /// Whether this (remote) server was found unreachable lately.
    fn lately_unreachable(&self) -> bool {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
    }

    fn take(&self) -> Result<Conn, Error> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let pid = std::process::id();
            if idle.0 != pid {
                // Forked: these connections are the parent's.
                *idle = (pid, Vec::new());
            }
            // One whose server hung up (it died, or restarted at a remote
            // address) would fail the call where a new one may not.
            while let Some(conn) = idle.1.pop() {
                if !internals::peer_gone(conn.stream.as_fd()) {
                    return Ok(conn);
                }
            }
        }
        self.open()
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.0 == std::process::id() {
            idle.1.push(conn);
        }
    }

    /// Sends one request (`op` on object `id`, then what `build` writes)
    /// and reads its reply with `parse`.
    ///
    /// The connection goes back for reuse unless it broke: the server
    /// releases whatever a connection held (locks, permits, on behalf of
    /// any thread of this process) when it closes, so one kept in step must
    /// not be closed for this call's sake, not even when `build` or `parse`
    /// (a user's `Serialize` or `Deserialize`) panics.
    pub(crate) fn call<R>(
        self: &Arc<Client>,
        op: Op,
        id: u64,
        build: impl FnOnce(&mut Frame) -> Result<(), Error>,
        parse: impl FnOnce(&mut Fields<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.call_as(Uses::PLAIN, op, id, build, parse)
    }

    /// [`call`](Client::call) for a request whose values are used as
    /// `uses` says: only compared with stored ones (a proxy there takes no
    /// reference), or taken out of the server in the reply (a proxy
    /// decoded there takes over the stored copy's).
    pub(crate) fn call_as<R>(
        self: &Arc<Client>,
        uses: Uses,
        op: Op,
        id: u64,
        build: impl FnOnce(&mut Frame) -> Result<(), Error>,
        parse: impl FnOnce(&mut Fields<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.request(uses, op, id, build, parse).map(|(r, _)| r)
    }

    /// [`call`](Client::call) for a request whose reply (`parse`'s result)
    /// says whether the server stored its values (a put that may time
    /// out): if it did not, the references their proxies took are given
    /// back.
    pub(crate) fn call_storing_if(
        self: &Arc<Client>,
        op: Op,
        id: u64,
        build: impl FnOnce(&mut Frame) -> Result<(), Error>,
        parse: impl FnOnce(&mut Fields<'_>) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        let (stored, took) = self.request(Uses::PLAIN, op, id, build, parse)?;
        if !stored {
            give_back(took);
        }
        Ok(stored)
    }

    /// Sends the request and reads its reply; also returns the references
    /// the request's proxies took for their copies, given back here
    /// already if the request was not delivered or the server refused it.
    fn request<R>(
        self: &Arc<Client>,
        uses: Uses,
        op: Op,
        id: u64,
        build: impl FnOnce(&mut Frame) -> Result<(), Error>,
        parse: impl FnOnce(&mut Fields<'_>) -> Result<R, Error>,
    ) -> Result<(R, Vec<GivenUp>), Error> {
        let mut lease = Lease {
            client: self,
            conn: None,
        };
        let conn = lease.conn.insert(self.take()?);
        conn.out.clear();
        conn.out.u8(op as u8).u64(id);
        let (built, took) = AtServer::enter(At::building(self, uses), || {
            let built = build(&mut conn.out);
            (built, AtServer::took())
        });
        // Not sent, or not all of it: the server keeps nothing.
        if let Err(e) = built {
            conn.out.clear();
            drop(lease);
            give_back(took);
            return Err(e);
        }
        if let Err(e) = conn.out.send(&mut conn.stream) {
            // A frame over the limit is refused before a byte is written:
            // the connection is in step, and keeps no such buffer.
            if e.kind() == ErrorKind::Encode {
                conn.out.clear();
            } else {
                lease.conn = None;
            }
            drop(lease);
            give_back(took);
            return Err(e);
        }
        // Not kept (large, perhaps) while the connection is idle.
        conn.out.clear();
        let failed = match conn.reader.read(&mut conn.stream) {
            // The whole reply frame has been read, so the connection is in
            // step whatever the frame held (a value that does not decode
            // as `T`, an error).
            Ok(reply) => {
                // Refused: nothing was stored. (A reply over the limit is
                // an error too, but the request's change stands.)
                let refused = reply.first() == Some(&ERR)
                    && reply.get(1) != Some(&kind_code(ErrorKind::Encode));
                let result = AtServer::enter(At::parsing(self, uses), || parse_reply(reply, parse));
                // Not kept (large, perhaps) while the connection is idle.
                conn.reader.release_idle();
                drop(lease);
                if refused {
                    give_back(took);
                    return result.map(|r| (r, Vec::new()));
                }
                return result.map(|r| (r, took));
            }
            Err(ReadError::Closed) => error(
                ErrorKind::Disconnected,
                "the manager's server is gone (it closed the connection)",
            ),
            Err(ReadError::Io(e)) => {
                // Timed out, or reset: a server that went silent, perhaps.
                self.reached(false);
                gone(e)
            }
            Err(ReadError::TooLarge(n)) => error(
                ErrorKind::Decode,
                format!("the manager announced a reply of {n} bytes, over the limit"),
            ),
        };
        lease.conn = None;
        Err(failed)
    }

    /// A request with no arguments and an empty reply.
    pub(crate) fn ping(self: &Arc<Client>) -> Result<(), Error> {
        self.call(Op::Ping, 0, |_| Ok(()), |_| Ok(()))
    }

    /// Opens a raw connection (not public API: for tests of bad input): a
    /// Unix stream socket, or a TCP socket past the handshake.
    pub(crate) fn raw_stream(&self) -> Result<OwnedFd, Error> {
        match self.open()?.stream {
            Stream::Unix(s) => Ok(s.into()),
            Stream::Tcp(s) => Ok(s.into()),
        }
    }
}

/// A reference taken for a copy: whose, and of which object.
type GivenUp = (Arc<Client>, u64);

/// Gives back references taken for copies the server did not keep.
fn give_back(took: Vec<GivenUp>) {
    for (client, id) in took {
        decref(&client, id);
    }
}

fn decref(client: &Arc<Client>, id: u64) {
    // A server that is gone has freed everything already.
    let _ = client.call(Op::DecRef, id, |_| Ok(()), |_| Ok(()));
}

/// A connection taken for one request: given back when dropped (also when
/// unwinding), unless emptied because the connection broke.
struct Lease<'a> {
    client: &'a Client,
    conn: Option<Conn>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.client.give_back(conn);
        }
    }
}

const MALFORMED_REPLY: &str = "malformed reply from the manager";

fn parse_reply<R>(
    reply: &[u8],
    parse: impl FnOnce(&mut Fields<'_>) -> Result<R, Error>,
) -> Result<R, Error> {
    let mut f = Fields::new(reply);
    let bad = |_: Error| error(ErrorKind::Decode, MALFORMED_REPLY);
    match f.u8().map_err(bad)? {
        OK => {
            let r = parse(&mut f)?;
            f.end().map_err(bad)?;
            Ok(r)
        }
        ERR => {
            let kind = code_kind(f.u8().map_err(bad)?);
            let msg = String::from_utf8_lossy(f.bytes().map_err(bad)?).into_owned();
            Err(error(kind, msg))
        }
        _ => Err(error(ErrorKind::Decode, MALFORMED_REPLY)),
    }
}

fn connect_tcp(addr: &str, key: &[u8]) -> Result<TcpStream, Error> {
    crate::net::dial(addr, key, "the manager", None)
}

/// A proxy's reference to its server and object: travels to other
/// processes as the endpoint (a dial descriptor, or address and key) and
/// the object's id.
///
/// The server counts references to each object and frees it with its
/// last, as Python's manager does. A handle holds one, shared by its
/// clones and given back when the last of them is dropped. Encoding a
/// handle takes one more, for the copy that travels (the receiver's
/// decoded handle holds it), before the value leaves, so that the sender
/// dropping its own cannot free the object in between. A copy that is
/// stored in a manager object keeps its reference while it is stored: a
/// handle read from it takes one of its own (as Python's proxies do when
/// unpickled), and one decoded from a value taken out (popped, removed,
/// replaced: [`Uses::TAKING`]) takes that reference over. A stored copy the server drops unread (`clear`, a
/// replaced value nobody decodes) keeps it for as long as the server runs:
/// the server does not look inside the values it stores.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) client: Arc<Client>,
    pub(crate) id: u64,
    _held: Option<Arc<Held>>,
}

/// One reference to an object, given back to the server when dropped, or
/// when this process exits (see [`give_back_all`]), whichever comes first.
struct Held {
    client: Arc<Client>,
    id: u64,
    /// Given back already (at exit).
    given: AtomicBool,
    /// The process it belongs to: a copy of it in a process forked from
    /// that one (by a C library, say) gives nothing back, which would be
    /// more than was taken.
    pid: u32,
}

/// The references this process holds, for [`give_back_all`].
struct Live {
    held: Vec<Weak<Held>>,
    /// How many `held` may grow to before its dropped ones are let go.
    prune_at: usize,
}

fn live() -> MutexGuard<'static, Live> {
    static LIVE: Mutex<Live> = Mutex::new(Live {
        held: Vec::new(),
        prune_at: 64,
    });
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Held {
    fn new(client: Arc<Client>, id: u64) -> Arc<Held> {
        static HOOKED: std::sync::Once = std::sync::Once::new();
        HOOKED.call_once(|| internals::before_exit(give_back_all));
        let held = Arc::new(Held {
            client,
            id,
            given: AtomicBool::new(false),
            pid: std::process::id(),
        });
        let mut live = live();
        if live.held.len() >= live.prune_at {
            live.held.retain(|h| h.strong_count() > 0);
            live.prune_at = (live.held.len() * 2).max(64);
        }
        live.held.push(Arc::downgrade(&held));
        held
    }
}

/// How long a process's exit waits for [`give_back_all`]: a server that
/// does not answer (stopped, or on a host gone silent) must not keep a
/// process from exiting. What is not given back by then stays taken.
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// Gives back, as this process exits (`main` returning, `exit`, an entry
/// returning), the references of the proxies it never dropped: kept in a
/// static, leaked, or held by threads still running. (Python's proxies do
/// the same from their finalizers.) One request per server that cannot
/// be reached, not one per proxy; and for at most [`EXIT_BOUND`].
fn give_back_all() {
    let held = std::mem::take(&mut live().held);
    if held.iter().all(|h| h.strong_count() == 0) {
        return;
    }
    let (done, finished) = std::sync::mpsc::channel();
    let give_back = move || {
        let mut unreachable: Vec<Arc<Client>> = Vec::new();
        for held in held.iter().filter_map(Weak::upgrade) {
            if held.given.swap(true, Ordering::AcqRel)
                || held.pid != std::process::id()
                || held.client.lately_unreachable()
                || unreachable.iter().any(|c| Arc::ptr_eq(c, &held.client))
            {
                continue;
            }
            if let Err(e) = held
                .client
                .call(Op::DecRef, held.id, |_| Ok(()), |_| Ok(()))
                && e.kind() == ErrorKind::Disconnected
            {
                unreachable.push(Arc::clone(&held.client));
            }
        }
        let _ = done.send(());
    };
    // On a thread of its own, so that the wait is bounded. (One that
    // cannot be made gives nothing back: the objects stay.)
    if std::thread::Builder::new()
        .name("manager-exit".into())
        .spawn(give_back)
        .is_ok()
    {
        let _ = finished.recv_timeout(EXIT_BOUND);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A server found unreachable lately is not waited for again: the
        // reference stays taken (its object lives until the server stops).
        if self.given.swap(true, Ordering::AcqRel)
            || self.pid != std::process::id()
            || self.client.lately_unreachable()
        {
            return;
        }
        decref(&self.client, self.id);
    }
}

impl Handle {
    /// A handle holding the reference the server took for it (the one
    /// `Create` made, or one taken for a copy on its way here).
    pub(crate) fn holding(client: Arc<Client>, id: u64) -> Handle {
        let held = Some(Held::new(Arc::clone(&client), id));
        Handle {
            client,
            id,
            _held: held,
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object {} of {:?}", self.id, self.client)
    }
}

/// How a [`Handle`] travels. Variants are matched by position: `WireOut`
/// and `WireIn` list them in the same order.
#[derive(Serialize)]
enum WireOut<'a> {
    Local(&'a Fd, u64),
    Remote(&'a str, &'a [u8], u64),
    /// An object of the server the value is being stored in (a local one,
    /// whose dial descriptor the server could not keep): the id alone.
    Here(u64),
}

#[derive(Deserialize)]
enum WireIn {
    Local(Fd, u64),
    Remote(String, Vec<u8>, u64),
    Here(u64),
}

thread_local! {
    /// The server this thread is encoding a request for, or decoding a
    /// reply from (see [`AtServer`]).
    static AT_SERVER: RefCell<Option<At>> = const { RefCell::new(None) };
    /// While a value decoded only as copies is encoded (see
    /// [`encode_for_copies`]): the handles met, which take no reference.
    static FOR_COPIES: RefCell<Option<Vec<Handle>>> = const { RefCell::new(None) };
}

thread_local! {
    /// While an `update_with` entry runs in the server: the references the
    /// replaced value's copy held (see [`replacing_stored`]).
    static REPLACED: RefCell<Option<Vec<GivenUp>>> = const { RefCell::new(None) };
}

/// Runs `update`, which decodes a stored value as a copy (its proxies
/// taking references of their own) and makes the value to store in its
/// place (an `update_with` entry, run in the server). If it succeeds, the
/// value it replaces is gone: the references its stored copy held are
/// given back. If it fails, that value stays stored, and keeps them.
pub(crate) fn replacing_stored<T>(update: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let (result, replaced) = collecting(&REPLACED, update);
    if result.is_ok() {
        give_back(replaced);
    }
    result
}

/// Runs `f` with `list` collecting (`Some`), and returns what it
/// collected; the list is as it was before afterwards (also if `f`
/// unwinds, when what it collected is dropped).
fn collecting<T: 'static, R>(
    list: &'static std::thread::LocalKey<RefCell<Option<Vec<T>>>>,
    f: impl FnOnce() -> R,
) -> (R, Vec<T>) {
    struct Restore<T: 'static> {
        list: &'static std::thread::LocalKey<RefCell<Option<Vec<T>>>>,
        previous: Option<Option<Vec<T>>>,
    }
    impl<T: 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            if let Some(previous) = self.previous.take() {
                let _ = self.list.try_with(|l| l.replace(previous));
            }
        }
    }
    let mut restore = Restore {
        list,
        previous: Some(list.with(|l| l.replace(Some(Vec::new())))),
    };
    let result = f();
    let met = restore
        .previous
        .take()
        .and_then(|previous| list.with(|l| l.replace(previous)))
        .unwrap_or_default();
    (result, met)
}

/// The proxies in a value encoded once and decoded only as copies (a pool
/// initializer's arguments: every worker's proxy takes a reference of its
/// own, see `wire::decode_copy`). They keep their objects while this is
/// kept, and the encoding takes no reference that nothing would give back.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    _kept: Vec<Handle>,
}

/// Runs `encode`, the encoding of a value decoded only as copies: its
/// proxies take no reference, and are returned to be kept meanwhile.
pub(crate) fn encode_for_copies<R>(encode: impl FnOnce() -> R) -> (R, Copies) {
    let (result, met) = collecting(&FOR_COPIES, encode);
    (result, Copies { _kept: met })
}

/// How a request uses the values in it and in its reply.
#[derive(Clone, Copy, Default)]
pub(crate) struct Uses {
    /// The request's values are only compared with stored ones.
    probing: bool,
    /// The reply's values are no longer stored (taken out).
    taking: bool,
}

impl Uses {
    /// The request's values are stored, the reply's stay stored.
    pub(crate) const PLAIN: Uses = Uses {
        probing: false,
        taking: false,
    };
    /// The request's values are only compared with stored ones (a key
    /// looked up, an item searched for).
    pub(crate) const PROBING: Uses = Uses {
        probing: true,
        taking: false,
    };
    /// The reply's values are taken out of the server (popped, removed,
    /// replaced).
    pub(crate) const TAKING: Uses = Uses {
        probing: false,
        taking: true,
    };
    /// Both: a dict's `remove`.
    pub(crate) const PROBING_TAKING: Uses = Uses {
        probing: true,
        taking: true,
    };
}

/// What [`AT_SERVER`] holds.
struct At {
    client: Arc<Client>,
    /// Whether the values being written are only compared with stored ones.
    probing: bool,
    /// Whether the values being read are no longer stored there.
    taking: bool,
    /// While a request is written: the references its proxies took.
    took: Option<Vec<GivenUp>>,
}

impl At {
    fn building(client: &Arc<Client>, uses: Uses) -> At {
        At {
            client: Arc::clone(client),
            probing: uses.probing,
            taking: false,
            took: Some(Vec::new()),
        }
    }

    fn parsing(client: &Arc<Client>, uses: Uses) -> At {
        At {
            client: Arc::clone(client),
            probing: false,
            taking: uses.taking,
            took: None,
        }
    }
}

/// Marks the server a request is encoded for and its reply decoded from,
/// while a proxy call runs the user's `Serialize` and `Deserialize`: a
/// local proxy of that same server is then stored there as its object's
/// id alone (Python nests proxies this way: `outer.append(inner)`), and
/// read back as a proxy through the reader's own client.
struct AtServer(Option<At>, Option<Vec<Handle>>);

impl AtServer {
    fn enter<R>(at: At, f: impl FnOnce() -> R) -> R {
        // Not there while this thread's locals are destroyed (a proxy kept
        // in one is dropped then): no value is encoded or decoded then.
        let Ok(previous) = AT_SERVER.try_with(|cell| cell.replace(Some(at))) else {
            return f();
        };
        // A value stored meanwhile (by a `Serialize` that makes a manager
        // call) is no copy of the one encoded for copies.
        let copies = FOR_COPIES.try_with(|c| c.take()).ok().flatten();
        let _restore = AtServer(previous, copies);
        f()
    }

    /// Whether `client` is the server being written to (by this value: a
    /// message encoded meanwhile, by the value's own `Serialize`, is not).
    fn is(client: &Client) -> bool {
        !internals::in_message()
            && AT_SERVER
                .try_with(|at| {
                    at.borrow()
                        .as_ref()
                        .is_some_and(|at| at.client.key == client.key)
                })
                .unwrap_or(false)
    }

    /// The server being read from (by this value, not by a message decoded
    /// meanwhile).
    fn current() -> Option<Arc<Client>> {
        if internals::in_message() {
            return None;
        }
        AT_SERVER
            .try_with(|at| at.borrow().as_ref().map(|at| Arc::clone(&at.client)))
            .ok()
            .flatten()
    }

    /// Notes a reference taken for a copy in the request being written
    /// (not in a message encoded meanwhile).
    fn note_taken(client: &Arc<Client>, id: u64) {
        if internals::in_message() {
            return;
        }
        let _ = AT_SERVER.try_with(|at| {
            if let Some(took) = at.borrow_mut().as_mut().and_then(|at| at.took.as_mut()) {
                took.push((Arc::clone(client), id));
            }
        });
    }

    /// The references noted for the request being written.
    fn took() -> Vec<GivenUp> {
        AT_SERVER
            .try_with(|at| at.borrow_mut().as_mut().and_then(|at| at.took.take()))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Whether the value being written is only compared with stored ones
    /// (not by a message encoded meanwhile).
    fn probing() -> bool {
        !internals::in_message()
            && AT_SERVER
                .try_with(|at| at.borrow().as_ref().is_some_and(|at| at.probing))
                .unwrap_or(false)
    }

    /// Whether a value still stored by the server is being read (not one
    /// taken out of it, and not a message decoded meanwhile).
    fn reading_stored() -> bool {
        !internals::in_message()
            && AT_SERVER
                .try_with(|at| at.borrow().as_ref().is_some_and(|at| !at.taking))
                .unwrap_or(false)
    }
}

impl Drop for AtServer {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = AT_SERVER.try_with(|at| *at.borrow_mut() = previous);
        if let Some(copies) = self.1.take() {
            let _ = FOR_COPIES.try_with(|c| *c.borrow_mut() = Some(copies));
        }
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        // Written first: a handle that cannot go where the value goes (a
        // descriptor into a stored value) takes no reference.
        let written = match &self.client.endpoint {
            Endpoint::Local(_) if AtServer::is(&self.client) => WireOut::Here(self.id),
            Endpoint::Local(fd) => WireOut::Local(fd, self.id),
            Endpoint::Remote { addr, key } => WireOut::Remote(addr, key, self.id),
        }
        .serialize(s)?;
        // A copy only compared with stored values (a key looked up) needs
        // no reference: the server drops it with the request. One encoded
        // for copies needs none either: each copy decoded takes its own,
        // and this handle, kept meanwhile, keeps the object.
        if AtServer::probing() {
            return Ok(written);
        }
        let for_copies = FOR_COPIES
            .try_with(|c| {
                c.borrow_mut()
                    .as_mut()
                    .map(|met| met.push(self.clone()))
                    .is_some()
            })
            .unwrap_or(false);
        if for_copies {
            return Ok(written);
        }
        // The reference the copy holds, taken before it leaves; given
        // back if the request carrying it is not delivered or not stored.
        // A server that is gone takes none, and the copy fails as this one
        // does.
        match self
            .client
            .call(Op::IncRef, self.id, |_| Ok(()), |_| Ok(()))
        {
            Ok(()) => {
                AtServer::note_taken(&self.client, self.id);
                // In a message: given back if the message fails to encode.
                if internals::in_message() {
                    let (client, id) = (Arc::clone(&self.client), self.id);
                    internals::undo_if_failed(Box::new(move || decref(&client, id)));
                }
            }
            Err(e) if e.kind() != ErrorKind::Disconnected => return Err(S::Error::custom(e)),
            Err(_) => {}
        }
        Ok(written)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Handle, D::Error> {
        use serde::de::Error as _;
        let (client, id) = match WireIn::deserialize(d)? {
            WireIn::Local(fd, id) => (Client::local(fd), id),
            WireIn::Remote(addr, key, id) => (Client::remote(&addr, &key), id),
            WireIn::Here(id) => (
                AtServer::current().ok_or_else(|| {
                    error(
                        ErrorKind::Decode,
                        "a proxy stored in a manager's object can be read only through \
                         a proxy of that manager",
                    )
                }),
                id,
            ),
        };
        let client = client.map_err(D::Error::custom)?;
        // Read from a value the server still stores (not taken out of it),
        // or one of several copies of one encoding (a pool initializer's
        // arguments, which every worker decodes): the reference the
        // encoding took stays with the stored value, or with the pool for
        // the next copy, so this handle takes one of its own. An object
        // that is gone takes none, and the proxy fails as its other copies
        // do. Anywhere else (a message, a value taken out of the server)
        // it takes over the one its sender, or the stored copy, held.
        if AtServer::reading_stored() || internals::decoding_copy() {
            return Ok(match client.call(Op::IncRef, id, |_| Ok(()), |_| Ok(())) {
                Ok(()) => {
                    // A stored value being replaced: its copy's reference
                    // is given back if the replacement succeeds.
                    if internals::decoding_copy() {
                        let _ = REPLACED.try_with(|r| {
                            if let Some(replaced) = r.borrow_mut().as_mut() {
                                replaced.push((Arc::clone(&client), id));
                            }
                        });
                    }
                    Handle::holding(client, id)
                }
                Err(_) => Handle {
                    client,
                    id,
                    _held: None,
                },
            });
        }
        Ok(Handle::holding(client, id))
    }
}

/// This thread's identity as a lock owner: distinct for every thread of
/// every process (of every machine, for a remote server).
pub(crate) fn owner_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static THREAD: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    token(THREAD.with(|t| *t))
}

/// This process's identity (distinct from every thread's [`owner_token`]):
/// which process a semaphore's permits were taken by.
pub(crate) fn process_token() -> u64 {
    token(0)
}

/// A token for one semaphore permit, never [`NO_PERMIT`]: distinct for
/// every permit taken by every process.
pub(crate) fn permit_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Mixed with this process's token, so unlike any other process's.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = mix(process_token() ^ n.rotate_left(32));
    if t == NO_PERMIT { 1 } else { t }
}

fn token(thread: u64) -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    mix(base ^ (u64::from(std::process::id()) << 32) ^ thread)
}

/// splitmix64's finaliser, so nearby inputs give unrelated tokens.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::proto::{KEEP, MAX_FRAME, ObjKind};

    #[test]
    fn a_large_reply_leaves_no_large_buffer_on_an_idle_connection() {
        let (theirs, mine) = internals::seqpacket_pair().unwrap();
        std::thread::spawn(move || crate::manager::server::serve_local(theirs));
        let client = Client::local(Fd::from(mine)).unwrap();
        let big = vec![1u8; MAX_FRAME / 2];
        let id = client
            .call(
                Op::Create,
                0,
                |f| {
                    f.u8(ObjKind::Value as u8).bytes(&big);
                    Ok(())
                },
                |f| f.u64(),
            )
            .unwrap();
        let got = client
            .call(Op::ValueGet, id, |_| Ok(()), |f| Ok(f.bytes()?.len()))
            .unwrap();
        assert_eq!(got, big.len());
        // A request over the limit is refused before it is sent.
        let err = client
            .call(
                Op::ValueSet,
                id,
                |f| {
                    f.bytes(&vec![0u8; MAX_FRAME + 1]);
                    Ok(())
                },
                |_| Ok(()),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode);
        let idle = client.idle.lock().unwrap();
        assert!(!idle.1.is_empty());
        for conn in &idle.1 {
            assert!(
                conn.out.buf.capacity() <= KEEP,
                "the request's buffer is kept"
            );
            assert!(conn.reader.capacity() <= KEEP, "the reply's buffer is kept");
        }
    }
}
