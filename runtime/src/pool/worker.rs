//! The worker's side: the loop a pool worker process runs.

use std::sync::Arc;
use std::sync::mpsc;

use super::link::{Link, REMOTE_HANDLE};
use super::proto::{Boot, Chunk, FDS_PER_MESSAGE, FailKind, Msg, Outcome};
use super::task;
use crate::{Connection, Error, ErrorKind};
use multiproc_macros::process_entry;

/// The exit code of a remote worker that could not reach its pool, or got
/// from it what a pool does not send.
pub(crate) const EXIT_ABANDONED: i32 = 75;

/// A local pool worker: [`serve`] on the connection its pool gave it.
#[process_entry]
pub(crate) fn pool_worker(conn: Connection<Msg>, boot: Boot) {
    serve(Arc::new(conn), boot, false);
}

/// The worker loop: runs the initializer, says it is ready, then runs
/// chunks in the order they come and answers each, until told to stop, its
/// pool is gone, or it has run `max_tasks` chunks.
///
/// `remote`: the pool is on another machine. Then a result holding a
/// handle fails (it cannot cross), and a connection that breaks or is shut
/// (the pool gave up on this worker, or is gone) ends the process at once,
/// even in the middle of a task: nobody would take its result, and nothing
/// else on that machine would end it.
pub(crate) fn serve(link: Arc<dyn Link>, boot: Boot, remote: bool) {
    task::install_panic_hook();
    if let Some((entry, args)) = boot.init {
        match task::runner(&entry).map(|(run, _)| task::run_initializer(run, args)) {
            Ok(Outcome::Value(_)) => {}
            Ok(failed) | Err(failed) => {
                let _ = link.send(&Msg::InitFailed(failed));
                return;
            }
        }
    }
    if link.send(&Msg::Ready).is_err() {
        return;
    }
    // A thread of its own takes the pool's messages as they come, so the
    // pool's sends never wait on a task that runs here (and no large task
    // and large result can each wait for the other).
    let (tx, rx) = mpsc::channel::<Arc<Chunk>>();
    let reader = Arc::clone(&link);
    let spawned = std::thread::Builder::new()
        .name("pool-worker-reader".into())
        .spawn(move || {
            loop {
                match reader.recv() {
                    Ok(Msg::Run(chunks)) => {
                        for chunk in chunks {
                            if tx.send(chunk.0).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Msg::Stop) => return,
                    // The pool shut the connection (it is ending) or it broke.
                    Err(crate::RecvError::Disconnected) if remote => std::process::exit(0),
                    _ if remote => std::process::exit(EXIT_ABANDONED),
                    _ => return,
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
            Ok((run, name)) => {
                task::running(Some(name));
                chunk
                    .items
                    .into_iter()
                    .map(|item| match task::run(run, item) {
                        Outcome::Value(item) if remote && !item.fds.is_empty() => Outcome::Failed {
                            kind: FailKind::Encode,
                            message: format!(
                                "could not send its result: the value {REMOTE_HANDLE}"
                            ),
                        },
                        outcome => outcome,
                    })
                    .collect()
            }
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
        task::running(None);
        if answer(&*link, chunk.id, outcomes).is_err() {
            return;
        }
        ran += 1;
        if boot.max_tasks != 0 && ran >= boot.max_tasks {
            return;
        }
    }
}

/// Sends the outcomes of chunk `id`: in as many messages as keep each
/// within [`FDS_PER_MESSAGE`] handles (results may hold more, all told,
/// than one message carries). An error only if the pool is gone.
fn answer(link: &dyn Link, id: u64, outcomes: Vec<Outcome>) -> Result<(), Error> {
    let mut part = Vec::new();
    let mut fds = 0;
    for outcome in outcomes {
        if !part.is_empty() && fds + outcome.fds() > FDS_PER_MESSAGE {
            send_part(link, id, std::mem::take(&mut part))?;
            fds = 0;
        }
        fds += outcome.fds();
        part.push(outcome);
    }
    send_part(link, id, part)
}

/// Sends one part of a chunk's outcomes. If it cannot be encoded, sends
/// them one by one, each that still cannot go replaced by why (the pool
/// names its item), so no result is lost without a word.
fn send_part(link: &dyn Link, id: u64, outcomes: Vec<Outcome>) -> Result<(), Error> {
    let msg = Msg::Done { id, outcomes };
    match link.send(&msg) {
        Err(e) if e.kind() == ErrorKind::Encode => {}
        sent => return sent,
    }
    let Msg::Done { outcomes, .. } = msg else {
        return Ok(());
    };
    for outcome in outcomes {
        let msg = Msg::Done {
            id,
            outcomes: vec![outcome],
        };
        let failure = match link.send(&msg) {
            Err(e) if e.kind() == ErrorKind::Encode => e,
            sent => {
                sent?;
                continue;
            }
        };
        let why = Msg::Done {
            id,
            outcomes: vec![Outcome::Failed {
                kind: FailKind::Encode,
                message: format!("could not send its result: {failure:#}"),
            }],
        };
        link.send(&why)?;
    }
    Ok(())
}
