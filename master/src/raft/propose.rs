//! Writing through raft: [`propose`] puts a [`Command`] into the replicated
//! log and gives back what applying it answered, in the same shape as
//! [`Store::apply`](crate::store::Store::apply), so callers need not know
//! whether one master or five stand behind it. [`raft_config`] is the raft
//! configuration the running master uses.

use super::TypeConfig;
use crate::store::{Command, Outcome, StoreError};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};
use std::time::Duration;

/// Flotilla's raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// How long a write waits for a leader to be elected when none is known yet
/// (a master that just started elects itself within an election timeout).
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// Proposes `cmd` on this master and waits until it is committed and
/// applied; the answer is the state machine's. Fails with
/// [`StoreError::Unavailable`] when this master is not the leader (naming the
/// leader when known) or no leader appears within a few seconds. The leader's
/// own loops (binder, lifecycle) write this way; requests write through
/// [`Cluster::write`](super::Cluster::write), which forwards to the leader.
pub async fn propose(raft: &Raft, cmd: Command) -> Result<Outcome, StoreError> {
    match propose_here(raft, cmd.clone()).await {
        // No leader yet: a fresh or restarted master is electing itself;
        // waiting briefly beats failing requests that arrive in that moment.
        Err(Unplaced::NoLeader) => {
            wait_for_leader(raft, LEADER_WAIT).await;
            propose_here(raft, cmd).await.map_err(Unplaced::into_store)
        }
        other => other.map_err(Unplaced::into_store),
    }
}

/// Waits up to `limit` for some master to be known as the leader.
pub(crate) async fn wait_for_leader(raft: &Raft, limit: Duration) {
    let _ = raft
        .wait(Some(limit))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await;
}

/// Why a write was not applied here.
#[derive(Debug)]
pub(crate) enum Unplaced {
    /// No leader is known.
    NoLeader,
    /// Another master leads.
    NotLeader { id: u64, addr: Option<String> },
    /// Anything else, already as the caller sees it.
    Failed(StoreError),
}

impl Unplaced {
    /// The same failure again, for another waiter of the same proposal.
    pub(crate) fn duplicate(&self) -> Unplaced {
        match self {
            Unplaced::NoLeader => Unplaced::NoLeader,
            Unplaced::NotLeader { id, addr } => Unplaced::NotLeader {
                id: *id,
                addr: addr.clone(),
            },
            Unplaced::Failed(e) => Unplaced::Failed(StoreError::Unavailable(e.to_string())),
        }
    }

    pub(crate) fn into_store(self) -> StoreError {
        match self {
            Unplaced::NoLeader => StoreError::Unavailable(
                "no master is the leader yet (an election is under way or a majority of masters is unreachable); retry shortly".into(),
            ),
            Unplaced::NotLeader { id, addr } => StoreError::Unavailable(format!(
                "this master is not the leader; the leader is master {id} at {}",
                addr.as_deref().unwrap_or("an unknown address")
            )),
            Unplaced::Failed(e) => e,
        }
    }
}

/// Proposes several commands as one entry (`Command::Batch`), once; each
/// gets the answer it would have had alone.
pub(crate) async fn propose_batch_here(
    raft: &Raft,
    cmds: Vec<Command>,
) -> Result<Vec<Result<Outcome, StoreError>>, Unplaced> {
    let count = cmds.len();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(resp) => match resp.data {
            super::RaftResponse::Batch(answers) if answers.len() == count => Ok(answers
                .into_iter()
                .map(|a| a.map_err(StoreError::from))
                .collect()),
            other => Err(Unplaced::Failed(StoreError::Invalid(format!(
                "raft answered a batch of {count} with {other:?}"
            )))),
        },
        Err(e) => Err(unplaced(e)),
    }
}

/// Why a proposal was not placed, from openraft's error.
fn unplaced(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> Unplaced {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            None => Unplaced::NoLeader,
            Some(id) => Unplaced::NotLeader {
                id,
                addr: f.leader_node.map(|n| n.addr),
            },
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Unplaced::Failed(
            StoreError::Unavailable(format!("raft refused the write: {e}")),
        ),
        RaftError::Fatal(e) => Unplaced::Failed(StoreError::Unavailable(format!(
            "this master's raft has stopped ({e}); restart the master"
        ))),
    }
}

/// Proposes `cmd` to this master's raft, once.
pub(crate) async fn propose_here(raft: &Raft, cmd: Command) -> Result<Outcome, Unplaced> {
    match raft.client_write(cmd).await {
        Ok(resp) => match resp.data.into_store_result() {
            Some(answer) => answer.map_err(Unplaced::Failed),
            // A command entry always answers with the command's result.
            None => Err(Unplaced::Failed(StoreError::Invalid(
                "raft answered a command with bookkeeping".into(),
            ))),
        },
        Err(e) => Err(unplaced(e)),
    }
}

/// How long a follower hears nothing from the leader before it may stand
/// for election, by default (see [`raft_config`]).
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(250);

/// The shortest and longest election timeouts a master accepts.
pub const ELECTION_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(60));

/// The raft configuration of a master: timings from `election_timeout`,
/// snapshots that keep the log short, and snapshot chunks well inside one
/// frame (frames are capped at 4 MiB).
///
/// openraft 0.9 makes a follower wait its leader lease (the longest election
/// timeout) and then its own randomized election timeout before it stands
/// for election, so with `election_timeout` = T a lost leader's followers
/// start electing after 1.5–2 T of silence. The leader heartbeats every T/5,
/// so a follower stands only after missing seven or more heartbeats in a row.
/// The default (250 ms) replaces a lost leader in about half a second on a
/// LAN; slow or lossy links between masters want a longer one.
// Boxed: openraft's error is large and this runs once per start.
pub fn raft_config(
    cluster_name: &str,
    election_timeout: Duration,
) -> Result<Config, Box<openraft::ConfigError>> {
    let max = election_timeout.as_millis().try_into().unwrap_or(u64::MAX);
    Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: (max / 5).max(1),
        election_timeout_min: max / 2,
        election_timeout_max: max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1 << 20,
        ..Config::default()
    }
    .validate()
    .map_err(Box::new)
}
