//! [`Manager`]: a server process that holds dicts, lists, queues, locks and
//! other objects, which any process uses through typed proxies (Python's
//! `multiprocessing.Manager`).
//!
//! # How it works
//! - The server stores every value as encoded bytes; proxies encode and
//!   decode on the client side, so the server needs no knowledge of the
//!   user's types. Each proxy method is one request and one reply, atomic
//!   on the server.
//! - A local server is reached by *capability*, not by name: it holds one
//!   end of an unnamed `SOCK_SEQPACKET` socket pair, and every proxy carries
//!   a duplicate of the other end. To connect, a process makes a fresh
//!   socket pair and sends one end through it (`SCM_RIGHTS`). No socket
//!   path or abstract name exists that anything else could connect to.
//! - Each process keeps its connections to a server open and reuses them
//!   (one per thread using it at a time; the server runs a thread per
//!   connection), so a client blocked on a manager lock or queue stalls no
//!   one else.
//! - A remote server ([`Manager::serve`], [`Manager::connect`]) speaks the
//!   same protocol over TCP, after both sides prove the same authkey
//!   (HMAC-SHA256 challenge–response) and before anything is decoded.

mod client;
mod internals;
mod proto;
mod proxy;
mod server;
mod sync;

#[cfg(feature = "test-hooks")]
pub(crate) use server::fuzz_requests;

use std::fmt;
use std::net::TcpListener;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::proxy::{ArrayProxy, DictProxy, ListProxy, NamespaceProxy, ValueProxy};
pub use self::sync::{
    BarrierProxy, ConditionProxy, EventProxy, LockProxy, ProxyLockGuard, ProxySemaphoreGuard,
    QueueProxy, RLockProxy, SemaphoreProxy,
};

use self::client::{Client, Handle};
pub(crate) use self::client::{Copies, encode_for_copies};
use self::proto::{Frame, ObjKind, Op};
use crate::error::Error;
use crate::{Fd, JoinHandle, Process, entry};
use internals::manager_server;

/// Runs a local manager's server (in the process `Manager::start` spawns).
pub(crate) fn run_local_server(dial: Fd) {
    server::serve_local(dial.into_owned_fd());
}

/// A manager: a server process holding shared objects, and the way to make
/// them (Python's `multiprocessing.Manager()`).
///
/// Every proxy it makes is `Clone + Send + Serialize + Deserialize`: pass
/// it to a child as an entry argument, or through a [`Queue`](crate::Queue)
/// or [`Connection`](crate::Connection), and the other process uses the
/// same object.
///
/// ```
/// use multiproc::{process_entry, spawn, DictProxy, ListProxy, Manager};
///
/// #[process_entry]
/// fn work(d: DictProxy<u32, String>, l: ListProxy<u32>, n: u32) {
///     d.insert(n, format!("child {n}")).unwrap();
///     l.push(n).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let manager = Manager::start()?;
/// let d = manager.dict()?;
/// let l = manager.list(vec![])?;
/// let children: Vec<_> = (0..3)
///     .map(|n| spawn!(work, d.clone(), l.clone(), n))
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.join()?;
/// }
/// assert_eq!(d.len()?, 3);
/// let mut seen = l.snapshot()?;
/// seen.sort();
/// assert_eq!(seen, vec![0, 1, 2]);
/// manager.shutdown()?;
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - An object is freed once no proxy of it is left in any process, as in
///   Python: the server counts a reference for each proxy a process made or
///   received (clones share it), and a proxy being sent takes its copy's
///   before it leaves. Dropping a proxy is one request to the server. A
///   process that exits (`main` returning, `std::process::exit`, an entry
///   returning) gives back the references it still holds (proxies in
///   statics, leaked, or on threads still running), as Python's finalizers
///   do: one request each, waited for 5 s at most. An object lives until
///   the server stops if a process was killed holding a proxy of it (or
///   ended without running its exit handlers: `_exit`, an abort), if a
///   proxy of it was sent and never received, or if a proxy of a remote
///   manager was dropped while its server could not be reached (within 30 s
///   of a connection to it failing, a drop does not wait for it again). A
///   [`Pool`](crate::Pool)'s initializer arguments keep their proxies'
///   objects while the pool lives (each worker's copy takes a reference of
///   its own). A proxy stored in a manager object keeps its object while it
///   is stored there, and hands it over to the proxy read when it is taken
///   out (`pop`, `remove`, `pop_last`, an `insert` that replaces it, a
///   queue's `get`); one the server drops unread (`clear`, a `set` or an
///   `update` over it, a list's `remove` of it, a namespace's `set` over it
///   or `remove`, the object holding it freed: a dict of lists dropped
///   keeps its lists, where Python frees them) keeps its object until the
///   server stops, since the server does not look inside stored values. So
///   does one sent in a value the server may or may not store: the key of
///   an `insert`, `get_or_insert` or `update_with` for a key already there,
///   and that `get_or_insert`'s default.
/// - A value stored in a manager object may hold proxies of that same
///   manager (nested proxies, as in Python: a dict of lists), which come
///   back as working proxies wherever the value is read, and proxies of a
///   remote manager. It cannot hold handles that travel with a descriptor
///   (a `Queue`, a `Connection`, a proxy of another local manager…):
///   encoding it is an [`ErrorKind::Encode`](crate::ErrorKind::Encode)
///   error. A nested proxy cannot be read inside the server, by
///   [`DictProxy::update_with`]'s entry: that is a
///   [`ErrorKind::Decode`](crate::ErrorKind::Decode) error.
/// - When the server is gone (shut down, killed), every proxy call fails
///   with [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected),
///   including calls waiting on a lock or queue. So do a remote server's
///   proxies once another server runs at its address: each server numbers
///   its objects from a random start, so an old proxy names nothing there.
pub struct Manager {
    client: Arc<Client>,
    server: Option<JoinHandle<()>>,
    /// The name objects are made under, in [`named`](Manager::named)'s
    /// closure.
    naming: Option<String>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("client", &self.client)
            .field("server_pid", &self.pid())
            .finish()
    }
}

impl Manager {
    /// Starts a server process (a child of this one, killed when the
    /// `Manager` is dropped or shut down, or when this process dies) and
    /// waits until it answers.
    pub fn start() -> Result<Manager, Error> {
        let (theirs, mine) = internals::seqpacket_pair()
            .map_err(|e| Error::io("making the manager's dial socket", e))?;
        let server = Process::new(entry!(manager_server), (Fd::from(theirs),))
            .name("SyncManager")
            .daemon(true)
            .start()?;
        let manager = Manager {
            client: Client::local(Fd::from(mine))?,
            server: Some(server),
            naming: None,
        };
        manager.client.ping()?;
        Ok(manager)
    }

    /// Serves a manager on `addr` (for example `"0.0.0.0:50000"`) for
    /// clients that prove `authkey`; blocks, serving, until an error.
    ///
    /// Clients [`connect`](Manager::connect) with the same key. A client
    /// with a wrong key, or one that sends garbage, is disconnected; the
    /// server keeps serving the others.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// empty `authkey`, before anything is bound: anyone can prove an
    /// empty key, so it would protect nothing.
    pub fn serve(addr: &str, authkey: &[u8]) -> Result<(), Error> {
        require_key(authkey)?;
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("binding the manager to {addr}"), e))?;
        Manager::serve_on(listener, authkey)
    }

    /// Like [`serve`](Manager::serve), on a listener already bound (for
    /// example to port 0, to learn the port first). A non-blocking
    /// listener is made blocking: the server waits in `accept`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// empty `authkey`, before any connection is accepted, as for
    /// [`serve`](Manager::serve).
    pub fn serve_on(listener: TcpListener, authkey: &[u8]) -> Result<(), Error> {
        require_key(authkey)?;
        listener
            .set_nonblocking(false)
            .map_err(|e| Error::io("making the manager's listener blocking", e))?;
        server::serve_tcp(listener, authkey)
    }

    /// Connects to a manager served at `addr`, proving `authkey`.
    ///
    /// # Errors
    /// [`ErrorKind::Auth`](crate::ErrorKind::Auth) if either side fails
    /// to prove the key; [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected)
    /// if nothing answers there;
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// empty `authkey`, before anything is sent (an empty key protects
    /// nothing, as for [`serve`](Manager::serve)).
    pub fn connect(addr: &str, authkey: &[u8]) -> Result<Manager, Error> {
        require_key(authkey)?;
        let client = Client::remote(addr, authkey)?;
        client.ping()?;
        Ok(Manager {
            client,
            server: None,
            naming: None,
        })
    }

    /// The server's pid, for a manager this process [`start`](Manager::start)ed.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(JoinHandle::pid)
    }

    /// Stops the server (if this process started it) and reaps it. Proxies
    /// then fail with [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected).
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        if let Some(server) = self.server.take() {
            server.kill()?;
            // Killed on purpose: its "killed by a signal" is the expected end.
            let _ = server.join();
            self.client.server_stopped();
        }
        Ok(())
    }

    /// The object `make` makes, under `name` on the server: made by the
    /// first call with that name, from any process or client, and found by
    /// every later one (Python's `BaseManager.register` of a shared
    /// object, for clients of a remote manager that share nothing else).
    ///
    /// `make` gets a view of this manager whose constructors make (or
    /// find) the named object; it should call one constructor. A found
    /// object is the one first made: the arguments of later calls (a
    /// list's initial items, a queue's bound) are not used. A named object
    /// lives until the server stops.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let jobs = manager.named("jobs", |m| m.queue::<String>())?;
    /// jobs.put("first".into())?;
    /// // Elsewhere (another process, or a client of a remote manager):
    /// let same = manager.named("jobs", |m| m.queue::<String>())?;
    /// assert_eq!(same.get()?, "first");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if the
    /// object made under `name` is of another kind (a queue, asked for as
    /// a dict), or `name` is over 1024 bytes.
    pub fn named<P>(
        &self,
        name: &str,
        make: impl FnOnce(&Manager) -> Result<P, Error>,
    ) -> Result<P, Error> {
        let view = Manager {
            client: Arc::clone(&self.client),
            server: None,
            naming: Some(name.to_string()),
        };
        make(&view)
    }

    fn create(
        &self,
        kind: ObjKind,
        args: impl FnOnce(&mut Frame) -> Result<(), Error>,
    ) -> Result<Handle, Error> {
        let op = match self.naming {
            Some(_) => Op::CreateNamed,
            None => Op::Create,
        };
        let id = self.client.call(
            op,
            0,
            |f| {
                if let Some(name) = &self.naming {
                    f.bytes(name.as_bytes());
                }
                f.u8(kind as u8);
                args(f)
            },
            |f| f.u64(),
        )?;
        Ok(Handle::holding(Arc::clone(&self.client), id))
    }

    /// A new, empty dict.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, Error> {
        Ok(DictProxy::from_handle(
            self.create(ObjKind::Map, |_| Ok(()))?,
        ))
    }

    /// A new list holding `init`.
    pub fn list<T: Serialize + DeserializeOwned>(
        &self,
        init: Vec<T>,
    ) -> Result<ListProxy<T>, Error> {
        Ok(ListProxy::from_handle(
            self.create(ObjKind::Seq, |f| proxy::create_items(f, init))?,
        ))
    }

    /// A new, empty namespace.
    pub fn namespace(&self) -> Result<NamespaceProxy, Error> {
        Ok(NamespaceProxy::from_handle(
            self.create(ObjKind::Map, |_| Ok(()))?,
        ))
    }

    /// A new value holding `init`.
    pub fn value<T: Serialize + DeserializeOwned>(&self, init: T) -> Result<ValueProxy<T>, Error> {
        Ok(ValueProxy::from_handle(
            self.create(ObjKind::Value, |f| proxy::create_value(f, &init))?,
        ))
    }

    /// A new array holding `init` (its length is fixed).
    pub fn array<T: Serialize + DeserializeOwned>(
        &self,
        init: Vec<T>,
    ) -> Result<ArrayProxy<T>, Error> {
        Ok(ArrayProxy::from_handle(
            self.create(ObjKind::FixedSeq, |f| proxy::create_items(f, init))?,
        ))
    }

    /// A new unbounded queue (Python's `manager.Queue()`), as
    /// [`Queue::new`](crate::Queue::new) is for a local one.
    pub fn queue<T: Serialize + DeserializeOwned>(&self) -> Result<QueueProxy<T>, Error> {
        self.make_queue(0)
    }

    /// A new queue holding at most `maxsize` items (Python's
    /// `manager.Queue(maxsize)`), as [`Queue::bounded`](crate::Queue::bounded)
    /// is for a local one.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for 0, as
    /// [`Queue::bounded`](crate::Queue::bounded) refuses a capacity of 0 (in
    /// Python, 0 means unbounded: that is [`queue`](Self::queue) here).
    pub fn queue_bounded<T: Serialize + DeserializeOwned>(
        &self,
        maxsize: usize,
    ) -> Result<QueueProxy<T>, Error> {
        if maxsize == 0 {
            return Err(internals::error(
                crate::ErrorKind::InvalidInput,
                "a bounded queue needs room for at least one item (`queue()` has no bound)",
            ));
        }
        self.make_queue(maxsize as u64)
    }

    fn make_queue<T: Serialize + DeserializeOwned>(
        &self,
        max: u64,
    ) -> Result<QueueProxy<T>, Error> {
        Ok(QueueProxy::from_handle(self.create(
            ObjKind::Queue,
            |f| {
                f.u64(max);
                Ok(())
            },
        )?))
    }

    /// A new lock.
    pub fn lock(&self) -> Result<LockProxy, Error> {
        Ok(LockProxy::from_handle(
            self.create(ObjKind::Lock, |_| Ok(()))?,
        ))
    }

    /// A new reentrant lock.
    pub fn rlock(&self) -> Result<RLockProxy, Error> {
        Ok(RLockProxy::from_handle(
            self.create(ObjKind::RLock, |_| Ok(()))?,
        ))
    }

    /// A new semaphore with `value` permits (counted in `u64` by the
    /// server, where a [`Semaphore`](crate::Semaphore) counts in `u32`).
    pub fn semaphore(&self, value: u64) -> Result<SemaphoreProxy, Error> {
        Ok(SemaphoreProxy::from_handle(self.create(
            ObjKind::Semaphore,
            |f| {
                f.u64(value);
                Ok(())
            },
        )?))
    }

    /// A new semaphore with `value` permits that refuses a release above
    /// `value`.
    pub fn bounded_semaphore(&self, value: u64) -> Result<SemaphoreProxy, Error> {
        Ok(SemaphoreProxy::from_handle(self.create(
            ObjKind::BoundedSemaphore,
            |f| {
                f.u64(value);
                Ok(())
            },
        )?))
    }

    /// A new condition variable (with its own reentrant lock).
    pub fn condition(&self) -> Result<ConditionProxy, Error> {
        Ok(ConditionProxy::from_handle(
            self.create(ObjKind::Condition, |_| Ok(()))?,
        ))
    }

    /// A new event, not set.
    pub fn event(&self) -> Result<EventProxy, Error> {
        Ok(EventProxy::from_handle(
            self.create(ObjKind::Event, |_| Ok(()))?,
        ))
    }

    /// A new barrier for `parties` parties (at least 1: else
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)).
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, Error> {
        if parties == 0 {
            return Err(internals::error(
                crate::ErrorKind::InvalidInput,
                "a barrier needs at least one party",
            ));
        }
        Ok(BarrierProxy::from_handle(self.create(
            ObjKind::Barrier,
            |f| {
                f.u64(parties as u64);
                Ok(())
            },
        )?))
    }

    /// How many objects the server holds. Not public API: for tests of
    /// their freeing.
    #[doc(hidden)]
    pub fn __objects(&self) -> Result<u64, Error> {
        self.client.call(Op::Objects, 0, |_| Ok(()), |f| f.u64())
    }

    /// A raw connection to the server. Not public API: for tests that send
    /// malformed bytes.
    #[doc(hidden)]
    pub fn __raw_connection(&self) -> Result<std::os::fd::OwnedFd, Error> {
        self.client.raw_stream()
    }
}

/// Refuses an empty authentication key: anyone can prove it, so it would
/// let every client in.
fn require_key(authkey: &[u8]) -> Result<(), Error> {
    if authkey.is_empty() {
        return Err(internals::error(
            crate::ErrorKind::InvalidInput,
            "an empty authkey protects nothing (anyone can prove it): use a secret key",
        ));
    }
    Ok(())
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
