//! Gathers the writes that arrive at the leader while a proposal is under
//! way into one raft entry (`Command::Batch`), so that concurrent clients
//! share one log write, one replication round and one apply transaction
//! instead of queueing behind each other's. A write that arrives when
//! nothing is under way is proposed at once, alone: a single client waits no
//! longer than before.
//!
//! Each command still gets the answer it would have had alone (the state
//! machine applies a batch command by command, see
//! `Store::apply_raft_batch_command`). Module uploads are never batched: a
//! raft entry must stay well inside one frame.

use super::propose::{propose_batch_here, propose_here, Unplaced};
use super::Raft;
use crate::store::{Command, Outcome, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most commands in one batch (pods and nodes are a few KiB each at most).
const MAX_BATCH: usize = 128;

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
            | Command::PutModuleChunk { .. }
            | Command::CommitModule { .. }
            | Command::Batch(_)
    )
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let mut held: Option<(Command, Reply)> = None;
    loop {
        let first = match held.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = vec![first];
        if batchable(&batch[0].0) {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) if batchable(&item.0) => batch.push(item),
                    Ok(item) => {
                        held = Some(item);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if batch.len() == 1 {
            let (cmd, reply) = batch.remove(0);
            let _ = reply.send(propose_here(&raft, cmd).await);
            continue;
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
}
