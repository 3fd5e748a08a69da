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
                .map(|a| a.map_err(StoreError::Refused))
                .collect()),
            other => Err(Unplaced::Failed(StoreError::invalid(format!(
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

/// Largest encoded command one raft entry may carry. Replication sends an
/// entry to the followers in one frame (4 MiB, `MAX_FRAME`) with the
/// AppendEntries envelope around it; an entry that does not fit can never
/// be sent, and the followers, hearing nothing more from the leader, would
/// elect another. Admission keeps objects far smaller (1.5 MiB), batches are
/// bounded in bytes and modules travel in 1 MiB chunks: this is the last
/// line, for any write.
pub(crate) const MAX_ENTRY_BYTES: usize = flotilla_api::protocol::MAX_FRAME - (64 << 10);

/// Refuses a command too large for one raft entry (see [`MAX_ENTRY_BYTES`]).
fn check_entry_size(cmd: &Command) -> Result<(), StoreError> {
    let size = postcard::serialize_with_flavor(cmd, postcard::ser_flavors::Size::default())
        .map_err(|e| StoreError::invalid(format!("cannot encode the write: {e}")))?;
    if size > MAX_ENTRY_BYTES {
        return Err(StoreError::invalid(format!(
            "the write is {size} bytes encoded; one raft entry carries at most {MAX_ENTRY_BYTES}: \
             keep large data out of objects (put it in a module or a file)"
        )));
    }
    Ok(())
}

/// Proposes `cmd` to this master's raft, once.
pub(crate) async fn propose_here(raft: &Raft, cmd: Command) -> Result<Outcome, Unplaced> {
    check_entry_size(&cmd).map_err(Unplaced::Failed)?;
    match raft.client_write(cmd).await {
        Ok(resp) => match resp.data.into_store_result() {
            Some(answer) => answer.map_err(Unplaced::Failed),
            // A command entry always answers with the command's result.
            None => Err(Unplaced::Failed(StoreError::invalid(
                "raft answered a command with bookkeeping",
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

/// Most entries in one AppendEntries message. An entry is at most
/// [`MAX_ENTRY_BYTES`] and usually a batch of at most 2 MiB; a message that
/// does not fit in a frame is halved until it does (`network.rs` answers
/// openraft with `PayloadTooLarge`). The leader reads and encodes the whole
/// message before it knows, within the heartbeat interval that its send must
/// finish in, so this keeps the worst such message to a few frames' worth
/// (openraft's default of 300 could be 600 MiB) while a lagging follower
/// still catches up thousands of commands per round trip (entries are
/// batches).
const MAX_PAYLOAD_ENTRIES: u64 = 16;

/// The raft configuration of a master: timings from `election_timeout`,
/// snapshots that keep the log short, snapshot chunks well inside one
/// frame (frames are capped at 4 MiB), and AppendEntries messages of at
/// most [`MAX_PAYLOAD_ENTRIES`] entries.
///
/// openraft 0.9 makes a follower wait its leader lease (the longest election
/// timeout) and then its own randomized election timeout before it stands
/// for election, so with `election_timeout` = T a lost leader's followers
/// start electing after 1.5–2 T of silence. The leader heartbeats every T/3,
/// so a follower stands only after missing four or more heartbeats in a row.
/// openraft also gives every AppendEntries (heartbeats, and the reads that
/// confirm leadership) the heartbeat interval to be answered in: at T/5
/// (50 ms by default) a follower busy with a burst of writes on a loaded
/// two-core machine missed it often enough to fail linearizable reads with
/// "cannot reach a majority"; T/3 (83 ms) leaves room for an SD card's
/// fsync too.
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
        heartbeat_interval: (max / 3).max(1),
        election_timeout_min: max / 2,
        election_timeout_max: max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Config::default()
    }
    .validate()
    .map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::meta::ObjectMeta;
    use flotilla_api::objects::{Object, Pod};

    fn pod_with(bytes: usize) -> Command {
        let mut p = Pod {
            metadata: ObjectMeta::named("default", "p"),
            ..Pod::default()
        };
        p.metadata
            .annotations
            .insert("example.com/blob".into(), "x".repeat(bytes));
        Command::Create {
            object: Object::Pod(p),
        }
    }

    #[test]
    fn an_entry_never_outgrows_a_frame() {
        // (annotation bytes, accepted?)
        let cases = [
            (0, true),
            (1536 << 10, true), // an object at the size limit
            (MAX_ENTRY_BYTES - 200, true),
            (MAX_ENTRY_BYTES, false),
            (flotilla_api::protocol::MAX_FRAME, false),
        ];
        for (bytes, accepted) in cases {
            let result = check_entry_size(&pod_with(bytes));
            assert_eq!(result.is_ok(), accepted, "{bytes} bytes: {result:?}");
            if let Err(e) = result {
                assert!(
                    e.to_string().contains("one raft entry carries at most"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn the_raft_configuration_bounds_messages() {
        let c = raft_config("c", DEFAULT_ELECTION_TIMEOUT).expect("valid");
        assert_eq!(c.max_payload_entries, MAX_PAYLOAD_ENTRIES);
        assert!(c.snapshot_max_chunk_size < flotilla_api::protocol::MAX_FRAME as u64 / 2);
    }
}
