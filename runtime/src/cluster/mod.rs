//! Scale-out: a [`Pool`](crate::Pool)'s workers on a cluster's nodes,
//! started by the cluster's own launcher.
//!
//! ```no_run
//! use multiproc::{entry, process_entry, Pool};
//! use multiproc::cluster::Slurm;
//!
//! #[process_entry]
//! fn work(x: u64) -> u64 { x * x }
//!
//! # fn main() -> multiproc::Result<()> {
//! let pool = Pool::builder()
//!     .launcher(Slurm::new().nodes(4).tasks_per_node(2))   // 8 workers, by srun
//!     .build()?;
//! let out: Vec<u64> = pool.map(entry!(work), 0..10_000u64)?;
//! assert_eq!(out[3], 9);
//! # Ok(())
//! # }
//! ```
//!
//! The workers are this same program (the same binary on every node, on a
//! shared filesystem or copied by `srun --bcast`). Each connects back over
//! TCP to the submitting process, and both sides prove a fresh per-pool
//! key (HMAC-SHA256, both directions) before anything else is read. From
//! there a task is what it is on one machine: the same entries, the same
//! `map`/`imap`/`apply_async`, the same errors — except that an argument
//! or result holding a handle to shared memory or a local socket (a
//! [`Queue`](crate::Queue), [`Lock`](crate::Lock), [`Value`](crate::Value),
//! [`Pipe`](crate::Pipe) end, [`Fd`](crate::Fd), a local
//! [`Manager`](crate::Manager)'s proxy) is refused with
//! [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), since it
//! cannot cross machines; share state through a Manager served over TCP
//! instead, whose proxies can. A message between hosts holds at most
//! 1 GiB: a task whose arguments or result are larger fails alone with
//! [`ErrorKind::Encode`](crate::ErrorKind::Encode), and its worker serves on.
//!
//! # Failures
//! - A worker that dies (killed, crashed, its node lost) fails the chunk it
//!   was running, as on one machine, but with
//!   [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected) and no exit
//!   code (how a process on another machine ended is not known here); the
//!   chunks it held but had not started go to the other workers. A worker on a node that vanished without a
//!   word (power, network) is noticed within
//!   [`node_timeout`](Slurm::node_timeout).
//! - Lost workers are not replaced: the pool goes on with the others, and
//!   fails what is left only when none is left.
//! - A request the cluster cannot meet (no such partition, more nodes than
//!   it has, a time limit over the partition's) fails at
//!   [`build`](crate::PoolBuilder::build) with `srun`'s own words, and so
//!   do workers that cannot reach this host within
//!   [`start_timeout`](Slurm::start_timeout).
//! - Dropping the pool (or [`terminate`](crate::Pool::terminate)) ends the
//!   workers, and the job step with them.

mod remote;
mod slurm;

pub use slurm::Slurm;
