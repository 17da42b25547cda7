//! The worker's side: the loop a pool worker process runs.

use std::sync::Arc;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::proto::{Chunk, FailKind, Item, Msg, Outcome};
use super::task;
use crate::Connection;
use multiproc_macros::process_entry;

/// What a worker is started with, besides its connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Boot {
    /// The initializer: entry name and encoded arguments.
    pub(crate) init: Option<(String, Item)>,
    /// Chunks to run before exiting; 0 for no limit.
    pub(crate) max_tasks: u64,
}

/// The worker loop: runs the initializer, says it is ready, then runs
/// chunks in the order they come and answers each, until told to stop, its
/// pool is gone, or it has run `max_tasks` chunks.
#[process_entry]
pub(crate) fn pool_worker(conn: Connection<Msg>, boot: Boot) {
    task::install_panic_hook();
    if let Some((entry, args)) = boot.init {
        match task::runner(&entry).map(|run| task::run(run, args)) {
            Ok(Outcome::Value(_)) => {}
            Ok(failed) | Err(failed) => {
                let _ = conn.send(&Msg::InitFailed(failed));
                return;
            }
        }
    }
    if conn.send(&Msg::Ready).is_err() {
        return;
    }
    // A thread of its own takes the pool's messages as they come, so the
    // pool's sends never wait on a task that runs here (and no large task
    // and large result can each wait for the other).
    let (tx, rx) = mpsc::channel::<Arc<Chunk>>();
    let Ok(reader) = conn.try_clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("pool-worker-reader".into())
        .spawn(move || {
            while let Ok(Msg::Run(chunks)) = reader.recv() {
                for chunk in chunks {
                    if tx.send(chunk.0).is_err() {
                        return;
                    }
                }
            }
        });
    if spawned.is_err() {
        return;
    }
    let mut ran = 0u64;
    for chunk in rx {
        let chunk = Arc::try_unwrap(chunk).unwrap_or_else(|shared| Chunk {
            id: shared.id,
            entry: shared.entry.clone(),
            items: Vec::new(),
        });
        let outcomes = match task::runner(&chunk.entry) {
            Ok(run) => chunk
                .items
                .into_iter()
                .map(|item| task::run(run, item))
                .collect(),
            Err(failed) => {
                let message = match failed {
                    Outcome::Failed { message, .. } => message,
                    _ => format!("cannot run `{}`", chunk.entry),
                };
                (0..chunk.items.len())
                    .map(|_| Outcome::Failed {
                        kind: FailKind::UnknownEntry,
                        message: message.clone(),
                    })
                    .collect()
            }
        };
        if conn
            .send(&Msg::Done {
                id: chunk.id,
                outcomes,
            })
            .is_err()
        {
            return;
        }
        ran += 1;
        if boot.max_tasks != 0 && ran >= boot.max_tasks {
            return;
        }
    }
}
