//! The life of a call: the parent starts a child of this same binary, the
//! child runs one entry before `main` would have run, and the parent joins
//! it for the result.
//!
//! - `protocol.rs`: what both sides agree on (marker, call header, failure
//!   report, exit codes, result limits). Neither side imports the other.
//! - `registry.rs`: the entries of this binary, found by name.
//! - `child.rs`: the child's side, from load-time constructors.
//! - `parent.rs`: `Process` and `JoinHandle`.
//! - `reaper.rs`: who waits for which child, and when.
//! - `current.rs`: what a process knows of itself (`current_process`, …).
//! - `method.rs`: `StartMethod` and the process-wide default.
//! - `panic.rs`: how a child prints its panic (naming process and entry),
//!   and which panic the report it sends names.
//! - `fork_client.rs` (parent side) and `fork_server.rs` (child side): the
//!   fork server, which forks children instead of re-executing the binary.

pub(crate) mod child;
pub(crate) mod current;
pub(crate) mod fork_client;
pub(crate) mod fork_server;
pub(crate) mod method;
pub(crate) mod panic;
pub(crate) mod parent;
pub(crate) mod protocol;
pub(crate) mod reaper;
pub(crate) mod registry;
