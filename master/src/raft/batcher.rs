//! Gathers the writes that arrive at the leader while proposals are under
//! way into one raft entry (`Command::Batch`), so that concurrent clients
//! share one log write, one replication round and one apply transaction
//! instead of queueing behind each other's. A write that arrives when
//! fewer than [`IN_FLIGHT`] entries are under way is proposed at once
//! (alone, if nothing else waits): a single client waits no longer than
//! before. Concurrent writes have no order among themselves, so entries
//! under way together may commit in any order.
//!
//! Each command still gets the answer it would have had alone (the state
//! machine applies a batch command by command, see
//! `Store::apply_raft_batch_command`). Module uploads are never batched: a
//! raft entry must stay well inside one frame.
//!
//! A batch is bounded in commands and in encoded bytes ([`MAX_BATCH_BYTES`]):
//! replication carries an entry in one frame (4 MiB, with the AppendEntries
//! envelope around it), so concurrent legal writes of large objects (up to
//! 1.5 MiB each) must never add up to an entry it cannot send — the
//! followers would hear nothing more from the leader and elect another.
//! The command that would overflow a batch starts the next one.

use super::propose::{propose_batch_here, propose_here, Unplaced};
use super::Raft;
use crate::store::{Command, Outcome, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most entries proposed and not yet committed at once. Raft sends and
/// stores entries under way together, so a few in flight let the next
/// entries replicate while the last one is applied; writes that arrive
/// while the limit is reached gather into the next batch meanwhile.
const IN_FLIGHT: usize = 4;

/// Most commands in one batch (pods and nodes are usually a few KiB each).
const MAX_BATCH: usize = 128;

/// Most encoded bytes of commands in one batch: one object at the size
/// limit (1.5 MiB) and some small ones fit, and the entry stays well under
/// the 4 MiB frame that carries it to the followers, envelope included.
pub(crate) const MAX_BATCH_BYTES: usize = 2 << 20;

/// Whether a command of `size` encoded bytes may join a batch that holds
/// `count` commands of `bytes` bytes. A first command always starts one
/// (its own size is bounded when it is proposed, see
/// [`super::propose::MAX_ENTRY_BYTES`]).
fn joins(count: usize, bytes: usize, size: usize) -> bool {
    count == 0 || (count < MAX_BATCH && bytes.saturating_add(size) <= MAX_BATCH_BYTES)
}

/// The encoded size of a command, as it is in the raft entry.
fn encoded_size(cmd: &Command) -> usize {
    // Counting costs no allocation; a command that cannot encode would fail
    // its proposal anyway, so it counts as too large to share an entry.
    postcard::serialize_with_flavor(cmd, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

type Reply = oneshot::Sender<Result<Outcome, Unplaced>>;

/// The proposing side of the leader's writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Batcher {
    /// Starts the task that proposes to `raft`; it ends with the last clone.
    pub(crate) fn start(raft: Raft) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Batcher { queue }
    }

    /// Proposes `cmd` (alone or with others) and gives its answer.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Outcome, Unplaced> {
        let stopped = || {
            Unplaced::Failed(StoreError::Unavailable(
                "this master is shutting down; retry on another".into(),
            ))
        };
        let (tx, rx) = oneshot::channel();
        if self.queue.send((cmd, tx)).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Whether a command may share an entry with others.
fn batchable(cmd: &Command) -> bool {
    !matches!(
        cmd,
        Command::PutModule { .. }
            | Command::LegacyPutModule { .. }
            | Command::PutModuleChunk { .. }
            | Command::CommitModule { .. }
            | Command::LegacyCommitModule { .. }
            | Command::Batch(_)
    )
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let mut held: Option<(Command, Reply)> = None;
    let mut proposing = tokio::task::JoinSet::new();
    loop {
        // Entries under way are reaped; at the limit, the next batch waits
        // (and grows) until one of them is committed.
        while proposing.try_join_next().is_some() {}
        while proposing.len() >= IN_FLIGHT {
            proposing.join_next().await;
        }
        let first = match held.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut bytes = if batchable(&first.0) {
            encoded_size(&first.0)
        } else {
            0
        };
        let mut batch = vec![first];
        if batchable(&batch[0].0) {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) if batchable(&item.0) => {
                        let size = encoded_size(&item.0);
                        if !joins(batch.len(), bytes, size) {
                            // It starts the next batch, ahead of later arrivals.
                            held = Some(item);
                            break;
                        }
                        bytes = bytes.saturating_add(size);
                        batch.push(item);
                    }
                    Ok(item) => {
                        held = Some(item);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        proposing.spawn(propose(raft.clone(), batch));
    }
}

/// Proposes one batch (alone if it holds one command) and answers each of
/// its commands.
async fn propose(raft: Raft, mut batch: Vec<(Command, Reply)>) {
    if batch.len() == 1 {
        let (cmd, reply) = batch.remove(0);
        let _ = reply.send(propose_here(&raft, cmd).await);
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    match propose_batch_here(&raft, cmds).await {
        Ok(answers) => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = reply.send(answer.map_err(Unplaced::Failed));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn batches_are_bounded_in_commands_and_bytes() {
        // (commands in the batch, their bytes, the next command's size, joins?)
        let cases = [
            (0, 0, 3 * MIB, true), // a first command always starts a batch
            (1, 1_000, 2_000, true),
            (1, MIB + MIB / 2, MIB / 2, true), // exactly at the bound
            (1, MIB + MIB / 2, MIB / 2 + 1, false),
            (1, MIB + MIB / 2, MIB + MIB / 2, false), // two objects at the limit
            (MAX_BATCH - 1, 10_000, 100, true),
            (MAX_BATCH, 10_000, 100, false),
            (1, usize::MAX - 1, 10, false), // no overflow
            (1, 0, usize::MAX, false),      // a command that cannot encode
        ];
        for (count, bytes, size, expected) in cases {
            assert_eq!(
                joins(count, bytes, size),
                expected,
                "count {count}, bytes {bytes}, size {size}"
            );
        }
    }

    #[test]
    fn encoded_size_is_the_size_in_the_entry() {
        let cmd = Command::DiscardUpload {
            digest: "sha256:00".into(),
        };
        let bytes = postcard::to_allocvec(&cmd).expect("encodes");
        assert_eq!(encoded_size(&cmd), bytes.len());
    }
}
