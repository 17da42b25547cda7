//! Python's `multiprocessing`, for Rust: run a function in a fresh child
//! process, type-checked, with no boilerplate.
//!
//! # Entries and spawning
//!
//! Mark a free function with [`#[process_entry]`](process_entry) and start it
//! in a child with [`spawn!`]. The child is this same binary, re-executed: it
//! runs only the entry — never `main`, never the test harness — and sends the
//! return value back.
//!
//! ```
//! use multiproc::{process_entry, spawn};
//!
//! #[process_entry]
//! fn add(a: i32, b: i32) -> i32 {
//!     a + b
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let child = spawn!(add, 1, 2)?;      // type-checked against `add`
//! assert_eq!(child.join()?, 3);
//! assert_eq!(add(2, 2), 4);            // still an ordinary function
//! # Ok(())
//! # }
//! ```
//!
//! A wrong argument is a compile error, not a runtime failure:
//!
//! ```compile_fail
//! # use multiproc::{process_entry, spawn};
//! # #[process_entry] fn add(a: i32, b: i32) -> i32 { a + b }
//! let child = spawn!(add, 1, "two");
//! ```
//!
//! # Rules for an entry
//!
//! `#[process_entry]` rejects at compile time, pointing at the token, a
//! function that breaks rules 1–3; rules 4–7 are how entries behave.
//!
//! 1. **A free `fn`**: at module level or local to a block, with any
//!    visibility; not a method or any other fn inside an `impl` or a
//!    `trait`: such a fn is rejected with "must be a free fn", at its
//!    name. (The attribute sees only the fn, so it reads the fn's source
//!    file to find the `impl` or `trait` around it. Where it cannot, as
//!    inside another macro's input, a fn that uses `self` or `Self` is
//!    still rejected as such, and for one that uses neither rustc reports
//!    "struct is not supported in `trait`s or `impl`s" at the attribute,
//!    noting that it "originates in the macro
//!    `…::process_entry_must_be_on_a_free_fn`".) Its name is also given
//!    to a hidden struct in the same module (braced, so it takes only the
//!    type namespace, not the fn's), so no type of that name may live
//!    beside it.
//! 2. **Plain**: not generic (no type, lifetime or const parameters, no
//!    `where`), not `async`, `const`, `unsafe`, variadic, or of another ABI
//!    than Rust's (`extern "C"`, a bare `extern`; `extern "Rust"` is fine).
//!    The child finds the entry by name, so its types must be concrete; an
//!    `async` body can start its own runtime inside a plain `fn`.
//! 3. **Owned arguments and result**: every argument, and the return type
//!    (or `()`; or `!` for an entry that ends its process itself, whose
//!    handle joins as `()`), is `Serialize + DeserializeOwned`, since values are copied
//!    into another process. No references, lifetimes other than `'static`,
//!    raw pointers, `impl Trait`, `dyn Trait` or `_`: use `String` for
//!    `&str`, `Vec<T>` for `&[T]`. multiproc's handles ([`Queue`],
//!    [`Connection`], [`Lock`], [`Value`], [`Fd`], proxies, …) are such
//!    types: they arrive as working handles (their descriptors travel
//!    beside the bytes, at most 252 in one message: an [`Fd`] or a
//!    [`Lock`] holds one, a [`Queue`] three). So is [`Error`], so an entry
//!    may return [`Result<T>`](crate::Result) and use `?` on multiproc's
//!    errors: the parent's `join` then gives `Ok(Err(e))`, `e` with its
//!    kind, exit code, panic report and the text of each cause (an OS
//!    error comes back as an `io::Error` of its kind and code). Patterns
//!    (`(a, b): (u32, u32)`) are fine.
//! 4. **Its name is its path**: the entry's name is its full path
//!    (`my_crate::workers::add`, see [`entries`]). Local `fn`s of one name
//!    in one module (an `fn inner` inside two functions) share that path;
//!    `spawn!`, [`Process`], a [`Pool`] and a Manager's `update_with` start
//!    each by its type and place, so each runs its own body. Only entries
//!    that share their place as well (two expansions of one macro
//!    invocation) cannot be told apart: starting one of them fails with
//!    [`ErrorKind::DuplicateEntry`], naming both locations.
//! 5. **It runs before `main`**, from a load-time constructor, in a copy of
//!    this binary: `main` never runs in the child, so whatever `main` sets
//!    up (loggers, statics, a runtime, environment changes) is not there;
//!    set it up in the entry, or pass it as an argument.
//! 6. **Its end is the child's end**: returning sends the result; a panic
//!    is [`ErrorKind::Panicked`] with its message; `std::process::exit(n)`
//!    is [`ErrorKind::Exited`] with code `n` (`exit(0)` of an entry that
//!    returns `()` counts as returning). Threads the entry started and did
//!    not join are killed when it returns, as when `main` returns.
//! 7. **A renamed dependency says so**: the generated code names
//!    `::multiproc`. Under another name (`mp = { package = "multiproc" }`),
//!    write `#[mp::process_entry(crate = mp)]` (or `crate = "mp"`, as
//!    serde's `crate` attribute); `spawn!` and `entry!` need nothing.
//!
//! # Message types: `serde`
//!
//! Arguments, results and messages are encoded with serde. For your own
//! types, add serde with its derives to your `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! multiproc = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! and derive `Serialize` and `Deserialize`. Without that dependency, the
//! serde that multiproc uses is re-exported as [`multiproc::serde`];
//! its derives then need to be told where serde is, since they name the
//! crate `serde`:
//!
//! ```
//! use multiproc::serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(crate = "multiproc::serde")]
//! struct Job {
//!     id: u32,
//!     input: Vec<f64>,
//! }
//!
//! #[multiproc::process_entry]
//! fn run(job: Job) -> f64 {
//!     job.input.iter().sum()
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let job = Job { id: 1, input: vec![1.0, 2.5] };
//! assert_eq!(multiproc::spawn!(run, job)?.join()?, 3.5);
//! # Ok(())
//! # }
//! ```
//!
//! # Failures
//!
//! [`JoinHandle::join`] never hangs on a child that died. It returns the
//! value, or an [`Error`] saying why there is none:
//!
//! ```
//! use multiproc::{process_entry, spawn};
//!
//! #[process_entry]
//! fn boom() -> u8 {
//!     panic!("no luck")
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let err = spawn!(boom)?.join().unwrap_err();
//! assert!(err.is_panicked());
//! assert!(err.to_string().contains("no luck"));
//! assert_eq!(err.exitcode(), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Builder, daemons and lifetime
//!
//! [`Process`] is Python's `Process`: a name, a daemon flag, then `start`.
//! Children that are neither joined nor daemons are waited for when `main`
//! returns; daemons are killed when the parent exits or dies, however it
//! dies. Dropping a [`JoinHandle`] never leaves a zombie.
//!
//! # Pipes
//!
//! [`Pipe::duplex`] makes two connected [`Connection`]s. Pass one to a child
//! (or send it through another connection or queue) and the other process
//! gets a working end. When every handle to one end is gone — dropped, or
//! its process died — the other end's `recv` reports
//! [`RecvError::Disconnected`] instead of hanging.
//!
//! ```
//! use multiproc::{process_entry, spawn, Connection, Pipe};
//!
//! #[process_entry]
//! fn shout(conn: Connection<String>) {
//!     while let Ok(word) = conn.recv() {
//!         conn.send(&word.to_uppercase()).unwrap();
//!     }
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let (conn, theirs) = Pipe::duplex()?;
//! let child = spawn!(shout, theirs)?;
//! conn.send(&"hello".to_string())?;
//! assert_eq!(conn.recv()?, "HELLO");
//! drop(conn);                 // the child's `recv` now reports Disconnected
//! child.join()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Queues
//!
//! [`Queue`] is a multi-producer, multi-consumer queue for any number of
//! processes, in shared memory; [`JoinableQueue`] adds `task_done`/`join`.
//! Errors use crossbeam-channel's vocabulary ([`TryRecvError`],
//! [`RecvTimeoutError`], [`TrySendError`], …).
//!
//! ```
//! use multiproc::{process_entry, spawn, Queue};
//!
//! #[process_entry]
//! fn square_all(tasks: Queue<u64>, results: Queue<u64>) {
//!     while let Ok(n) = tasks.get() {
//!         results.put(n * n).unwrap();
//!     }
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let (tasks, results) = (Queue::new()?, Queue::new()?);
//! let workers: Vec<_> = (0..2)
//!     .map(|_| spawn!(square_all, tasks.clone(), results.clone()))
//!     .collect::<Result<_, _>>()?;
//! for n in 1..=10 {
//!     tasks.put(n).unwrap();
//! }
//! let mut sum = 0;
//! for _ in 0..10 {
//!     sum += results.get()?;
//! }
//! tasks.shutdown();           // workers' `get` now reports Disconnected
//! for w in workers {
//!     w.join()?;
//! }
//! assert_eq!(sum, 385);
//! # Ok(())
//! # }
//! ```
//!
//! # Locks, events and shared memory
//!
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`],
//! [`Condition`] and [`Barrier`] work across processes, as do the shared
//! [`Value`], [`Array`] and [`SharedMemory`]. Each lives in a small memfd
//! mapped into every process that has a handle. Unlike Python's, a lock
//! whose owner is killed does not deadlock the others: the next `lock()`
//! reports [`ErrorKind::OwnerDied`] and the lock can be taken again.
//!
//! A [`Value`] or [`Array`] holds plain-old-data: numbers, arrays of them,
//! or `#[repr(C)]` structs deriving the re-exported [`Pod`] and
//! [`Zeroable`] (see [`Value`]), and also `bool` or `char`.
//!
//! ```
//! use multiproc::{process_entry, spawn, Value};
//!
//! #[process_entry]
//! fn count(counter: Value<u64>, times: u64) {
//!     for _ in 0..times {
//!         *counter.lock().unwrap() += 1;
//!     }
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let counter = Value::new(0u64)?;
//! let children: Vec<_> = (0..4)
//!     .map(|_| spawn!(count, counter.clone(), 1000))
//!     .collect::<Result<_, _>>()?;
//! for child in children {
//!     child.join()?;
//! }
//! assert_eq!(counter.load(), 4000);
//! # Ok(())
//! # }
//! ```
//!
//! # Pools
//!
//! [`Pool`] is Python's `Pool`: `map`, `starmap`, `imap`, `imap_unordered`,
//! `map_async`, `starmap_async` and `apply_async` over worker processes. A task that panics fails only
//! itself; a worker that dies fails only the chunk it was running (with how
//! it died), is replaced, and no call waits for it.
//!
//! # What multiproc does not do
//!
//! - Only Linux is supported; other platforms fail to compile.
//! - Entries run in a copy of *this binary*: the child trusts the parent and
//!   its messages as much as it trusts its own code.
//! - An entry runs while the program is being loaded (from a load-time
//!   constructor, after every entry has registered): `main` never runs in a
//!   child, and load-time constructors of other crates that the linker
//!   placed after multiproc's may not have run yet.
//! - There is no plain `fork` start method: a child is a fresh exec of this
//!   binary ([`StartMethod::Spawn`], the default) or a fork of a server that
//!   holds none of the parent's state ([`StartMethod::ForkServer`]).

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiproc supports only Linux for now: it relies on pidfds, SCM_RIGHTS, memfd and futexes"
);

// Lets generated code name `::multiproc` inside this crate's own tests.
extern crate self as multiproc;

mod channel_error;
pub mod cluster;
mod error;
mod fd;
#[cfg(feature = "test-hooks")]
mod fuzz_hooks;
mod manager;
mod net;
mod pipe;
mod pool;
mod queue;
mod spawn;
mod sync;
mod sys;
mod wait;
mod wire;

pub use crate::channel_error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use crate::error::{Error, ErrorKind, PanicReport, Result};
pub use crate::fd::Fd;
pub use crate::manager::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy, Manager,
    NamespaceProxy, ProxyLockGuard, ProxySemaphoreGuard, QueueProxy, RLockProxy, SemaphoreProxy,
    ValueProxy,
};
pub use crate::pipe::{Connection, Pipe};
pub use crate::pool::{AsyncResult, IMap, Launcher, Pool, PoolBuilder};
pub use crate::queue::{JoinableQueue, Queue};
pub use crate::spawn::current::{
    ChildInfo, ProcessInfo, active_children, cpu_count, current_process, parent_pid,
};
pub use crate::spawn::method::{
    StartMethod, get_all_start_methods, get_start_method, set_start_method,
};
pub use crate::spawn::parent::{JoinHandle, Process};
pub use crate::spawn::registry::{Entries, Entry, entries};
pub use crate::sync::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockGuard, RLock, RLockGuard, Semaphore, SemaphoreGuard, SharedMemory, SharedMemoryGuard,
    TryLockError, Value, ValueGuard,
};
pub use crate::wait::{Waitable, wait};
/// bytemuck, as multiproc uses it, for `#[bytemuck(crate =
/// "multiproc::bytemuck")]` on the derives of [`Pod`] and [`Zeroable`].
#[doc(no_inline)]
pub use bytemuck;
/// bytemuck's plain-old-data traits and their derives, for the `T` of a
/// [`Value`] or [`Array`] (see [`Value`]'s second example).
pub use bytemuck::{Pod, Zeroable};
/// Marks a free function as an entry that can run in a child process; the
/// function stays callable as a normal function. The rules it must follow
/// are in the [crate docs](crate#rules-for-an-entry).
///
/// ```
/// #[multiproc::process_entry]
/// fn add(a: i32, b: i32) -> i32 {
///     a + b
/// }
/// # fn main() -> multiproc::Result<()> {
/// assert_eq!(multiproc::spawn!(add, 1, 2)?.join()?, 3);
/// # Ok(())
/// # }
/// ```
pub use multiproc_macros::process_entry;
/// serde, as multiproc uses it, for deriving message types without a
/// dependency of your own: see [Message types](crate#message-types-serde).
#[doc(no_inline)]
pub use serde;

/// Runs the child check now: a no-op in a parent, and in a child whose
/// entry already ran before `main` (the usual case, so most programs never
/// call it).
///
/// Call it first thing in `main` if entries live in libraries loaded after
/// start-up (`dlopen`): such a child has fewer entries at load time than its
/// parent counted, so it waits for this call to run its entry (or report it
/// unknown) instead of running `main`.
pub fn init() {
    spawn::child::force();
}

/// Names an entry as a value implementing [`Entry`], for [`Process::new`].
///
/// As with [`spawn!`], a fn without `#[process_entry]` is a compile error,
/// "`spawn!` and `entry!` take a fn marked `#[process_entry]`", at its name
/// (in rustc's words in a few places: see [`spawn!`]).
///
/// ```
/// use multiproc::{entry, process_entry, Entry, Process};
///
/// #[process_entry]
/// fn square(x: u64) -> u64 { x * x }
///
/// # fn main() -> multiproc::Result<()> {
/// fn name_of<E: Entry>(_: E) -> &'static str { E::NAME }
/// assert!(name_of(entry!(square)).ends_with("::square"));
/// assert_eq!(Process::new(entry!(square), (7,)).start()?.join()?, 49);
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! entry {
    ($($entry:ident)::+) => {
        $crate::__private::entry_marker!($crate, $($entry)::+)
    };
    (::$($entry:ident)::+) => {
        $crate::__private::entry_marker!($crate, ::$($entry)::+)
    };
}

/// Not public API: names an entry's marker as written, `path {}`, for
/// `entry_marker!` where it cannot tell whether a name is shadowed.
///
/// Its name is the hint: when the path names a fn without
/// `#[process_entry]`, rustc's error ("expected struct, variant or union
/// type, found function") ends with "this error originates in the macro
/// `$crate::__private::mark_the_fn_with_process_entry`".
#[doc(hidden)]
#[macro_export]
macro_rules! __mark_the_fn_with_process_entry {
    ($($entry:ident)::+) => {
        $($entry)::+ {}
    };
    (::$($entry:ident)::+) => {
        ::$($entry)::+ {}
    };
}

/// Starts an entry in a child process: `spawn!(path::to::f, args…)`.
///
/// Checked at compile time against `f`'s signature. Returns
/// `Result<JoinHandle<R>, Error>` where `R` is `f`'s return type.
///
/// `f` must be marked `#[process_entry]`. If it is not, the error is
/// "`spawn!` and `entry!` take a fn marked `#[process_entry]`", at `f`.
///
/// The attribute defines a type named like the fn, which this macro looks
/// up beside a stand-in of the same name, one scope further out, that
/// carries that message. That is exact only where nothing between the
/// module and the call could declare or import the name, which the macro
/// checks by reading the calling fn's source: no `use`, no entry, no fn
/// or type of that name, no macro call but std's and multiproc's, no
/// attribute that may rewrite the code (`#[test]` and rustc's own are
/// fine), and the call not inside another macro's input. (A path `a::b::f`
/// needs none of this: the marker is looked for among `a::b`'s names.)
/// Elsewhere the macro names the type as written, and rustc says "expected
/// struct, variant or union type, found function `f`", noting that the
/// error "originates in the macro
/// `$crate::__private::mark_the_fn_with_process_entry`": the name of that
/// macro is the fix.
///
/// ```
/// use multiproc::{process_entry, spawn};
///
/// #[process_entry]
/// fn greet(name: String) -> String { format!("hello {name}") }
///
/// # fn main() -> multiproc::Result<()> {
/// assert_eq!(spawn!(greet, "AAA".to_string())?.join()?, "hello AAA");
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! spawn {
    ($($entry:ident)::+ $(, $arg:expr)* $(,)?) => {{
        let entry = $crate::__private::entry_marker!($crate, $($entry)::+);
        $crate::Process::new(entry, entry.__multiproc_args($($arg),*)).start()
    }};
    (::$($entry:ident)::+ $(, $arg:expr)* $(,)?) => {{
        let entry = $crate::__private::entry_marker!($crate, ::$($entry)::+);
        $crate::Process::new(entry, entry.__multiproc_args($($arg),*)).start()
    }};
}

/// Not public API: writes the marker struct `#[process_entry]` generates.
///
/// Its name is the hint: on an associated fn that uses neither `self` nor
/// `Self` (which the attribute cannot tell from a free fn), rustc's error
/// ("struct is not supported in `trait`s or `impl`s") ends with "this error
/// originates in the macro `…::process_entry_must_be_on_a_free_fn`".
#[doc(hidden)]
#[macro_export]
macro_rules! __process_entry_must_be_on_a_free_fn {
    ($(#[$attr:meta])* $vis:vis $name:ident where $($bound:tt)*) => {
        $(#[$attr])* $vis struct $name where $($bound)* {}
    };
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// Not public API: used by the code `#[process_entry]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::__entry_ctor as entry_ctor;
    pub use crate::__load_time_ctor as load_time_ctor;
    pub use crate::__mark_the_fn_with_process_entry as mark_the_fn_with_process_entry;
    pub use crate::__process_entry_must_be_on_a_free_fn as process_entry_must_be_on_a_free_fn;
    #[cfg(feature = "test-hooks")]
    pub use crate::queue::set_queue_exit_stall;
    pub use crate::spawn::child::entry_loaded;
    #[cfg(feature = "test-hooks")]
    pub use crate::spawn::fork_client::{
        fork_server_coming, fork_server_drop_spares, fork_server_spares, fork_server_starts,
    };
    #[cfg(feature = "test-hooks")]
    pub use crate::spawn::parent::{spawn_unchecked_named, spawn_with_raw_call};
    pub use crate::spawn::registry::{
        Entry, EntryRecord, MarkedEntry, Probe, RegisterEntry, RegisterNothing, Travel, travels,
    };
    pub use crate::sys::fork::fork_exit_wait;
    #[cfg(feature = "test-hooks")]
    pub use crate::sys::fork::fork_lingering_child;
    #[cfg(feature = "test-hooks")]
    pub use crate::sys::futex::set_futex_check_period;
    #[cfg(feature = "test-hooks")]
    pub use crate::wire::encode_frame_for_tests;
    pub use multiproc_macros::entry_marker;
    /// Entry points for the fuzz targets (`fuzz/`) and `tests/fuzz_smoke.rs`.
    #[cfg(feature = "test-hooks")]
    pub mod fuzz {
        pub use crate::fuzz_hooks::{
            MAX_INPUT, call_frame, frame_reader, lane_header, manager_requests, queue_records,
        };
    }
}
