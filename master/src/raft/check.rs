//! Comparing the masters' states, as etcd's corruption check does: every
//! master must hold the same state after the same log entry, so a master
//! whose state hash differs there holds damaged or diverged data, and must
//! stop serving it.
//!
//! The leader, a few seconds after it takes over, whenever a master that has
//! just started asks ([`RaftRpc::CheckStates`]), and every
//! [`CHECK_EVERY`] after that:
//!
//! 1. proposes a [`Command::CheckState`] entry; every master hashes its state
//!    right after applying it (`state_machine.rs`), so all hashes are taken
//!    at the same log index;
//! 2. gathers the hashes at that index, its own and each member's
//!    ([`RaftRpc::StateHash`]);
//! 3. [`judge`]s them: the hash most masters hold is the reference, and a
//!    master that differs from it (or cannot hash its state) is told so
//!    ([`RaftRpc::StateDiffers`]) and logged as an error. A marked master
//!    refuses reads from then on (`StoreError::Unavailable`, saying what to
//!    do), until it is rebuilt.
//!
//! The judgement is a pure function, tested as a table; the rest is thin I/O.

use super::cluster::{Cluster, LeaderAnswer};
use super::rpc::{decode, encode, CodecError};
use super::LogId;
use crate::store::{Command, HashAt, StateHash, Store};
use flotilla_api::protocol::{ApiError, ErrorCode, RaftRpc, Request, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the leader compares the masters' states. The hash reads the
/// whole state (on a thread of its own, from a read transaction), so not
/// much more often; a minute bounds how long a damaged master serves.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The first check after a master becomes the leader, or after a master
/// asks for one: time for a restarted master to catch up first.
const FIRST_CHECK_AFTER: Duration = Duration::from_secs(3);
/// How long a master may take to reach the check's index and hash its state.
const HASH_WAIT: Duration = Duration::from_secs(20);
/// How long one exchange about a check may take beyond that.
const CALL_TTL: Duration = Duration::from_secs(5);
/// How often the loop looks at leadership and due checks.
const TICK: Duration = Duration::from_secs(1);

/// A master's answer about its state hash at a log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAnswer {
    /// The hash of its state right after the entry at that index.
    Hash(StateHash),
    /// It did not hash its state at that index: it passed it by installing a
    /// snapshot, or it did not get there in time. No verdict either way.
    Skipped(String),
    /// It could not hash its state (a value fails its checksum, say).
    Failed(String),
}

/// What a check found about one master that must stop serving reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Differs {
    pub master: u64,
    /// Why, in words for the log and for the master's refused reads.
    pub why: String,
}

/// Decides which masters differ, from every master's answer at one index
/// (`leader`'s own included). The hash held by more than half of the masters
/// that gave one is the reference, and a master with another hash differs.
/// When no hash has such a majority (two masters that disagree, say), there
/// is no telling which state is right: every master that gave a hash differs
/// then, the leader included, so that none serves a state that may be
/// damaged. A master that could not hash its state differs in any case;
/// skipped answers count for nothing.
pub fn judge(index: u64, leader: u64, answers: &BTreeMap<u64, HashAnswer>) -> Vec<Differs> {
    let mut counts: BTreeMap<StateHash, usize> = BTreeMap::new();
    for answer in answers.values() {
        if let HashAnswer::Hash(h) = answer {
            *counts.entry(*h).or_default() += 1;
        }
    }
    let hashed: usize = counts.values().sum();
    let reference = counts
        .iter()
        .find(|(_, n)| **n * 2 > hashed)
        .map(|(h, _)| *h);
    let mut out = Vec::new();
    for (master, answer) in answers {
        let why = match (answer, reference) {
            (HashAnswer::Hash(h), Some(r)) if *h == r => continue,
            (HashAnswer::Skipped(_), _) => continue,
            (HashAnswer::Hash(h), Some(r)) => format!(
                "the state of master {master} differs from the other masters' at log index \
                 {index} (its hash {h}, the majority's {r})"
            ),
            (HashAnswer::Hash(h), None) => format!(
                "the masters' states differ at log index {index} and no state is held by a \
                 majority (master {master} has hash {h}, the leader, master {leader}, has {}), \
                 so none can be trusted",
                match answers.get(&leader) {
                    Some(HashAnswer::Hash(l)) => l.to_string(),
                    _ => "none".into(),
                }
            ),
            (HashAnswer::Failed(e), _) => {
                format!("master {master} cannot hash its state at log index {index}: {e}")
            }
        };
        out.push(Differs {
            master: *master,
            why,
        });
    }
    out
}

/// What a marked master answers reads with.
fn refusal(why: &str) -> String {
    format!(
        "this master no longer serves reads: {why}. Read from another master; rebuild this one: \
         remove it (`flotilla cluster remove <id>`), move its data directory aside and join it \
         again so that it copies the others' state (docs/operations.md, \"A state hash alarm\")"
    )
}

/// Marks this master as differing (it then refuses reads) and says so in the log.
fn mark_here(store: &Store, why: &str) {
    if store.checks().diverged().is_none() {
        tracing::error!("{why}: this master refuses reads from now on; rebuild it (docs/operations.md, \"A state hash alarm\")");
    }
    store.checks().mark_diverged(refusal(why));
}

/// This master's hash at `index`, waiting up to `wait` for it to apply the
/// entry and finish hashing.
pub async fn local_hash(
    cluster: &Cluster,
    store: &Store,
    index: u64,
    wait: Duration,
) -> HashAnswer {
    let deadline = Instant::now() + wait;
    let mut changed = store.checks().subscribe();
    loop {
        match store.checks().get(index) {
            Some(HashAt::Done(digest)) => {
                // The hash is taken right after the entry; its applied log id says so.
                let at: Option<LogId> = match digest
                    .applied
                    .as_deref()
                    .map(|b| crate::store::tables::decode::<LogId>("raft", &"applied", b))
                {
                    Some(Ok(id)) => Some(id),
                    Some(Err(e)) => return HashAnswer::Failed(e.to_string()),
                    None => None,
                };
                return match at {
                    Some(id) if id.index == index => HashAnswer::Hash(digest.hash),
                    other => HashAnswer::Failed(format!(
                        "the state was hashed at {other:?}, not at index {index}"
                    )),
                };
            }
            Some(HashAt::Failed(e)) => return HashAnswer::Failed(e),
            Some(HashAt::Computing) => {}
            None => {
                let applied = cluster
                    .raft()
                    .metrics()
                    .borrow()
                    .last_applied
                    .map(|l| l.index);
                // The entry is registered before its apply returns, so once
                // applied is past it, a missing entry was never hashed here.
                if applied >= Some(index) {
                    return HashAnswer::Skipped(format!(
                        "this master did not hash its state at index {index} (applied up to {applied:?})"
                    ));
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return HashAnswer::Skipped(format!(
                "this master did not reach index {index} and hash its state within {wait:?}"
            ));
        }
        // Applying moves the raft metrics, hashing the checks: look at both.
        let pause = Duration::from_millis(50).min(deadline - now);
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Runs one check from the leader. Returns the masters found to differ
/// (each told, and logged); an error when the check could not be made (not
/// the leader, the entry not committed).
pub async fn check_once(cluster: &Cluster, store: &Store) -> Result<Vec<Differs>, String> {
    let written = tokio::time::timeout(CALL_TTL, cluster.raft().client_write(Command::CheckState))
        .await
        .map_err(|_| "the check entry was not committed in time".to_string())?
        .map_err(|e| format!("cannot propose the check entry: {e}"))?;
    let index = written.log_id.index;
    let leader = cluster.id();
    // Asked all at once: the slowest master bounds the wait, not their sum.
    let mut asked = tokio::task::JoinSet::new();
    for (id, addr) in cluster.peers() {
        let cluster = cluster.clone();
        asked.spawn(async move { (id, remote_hash(&cluster, id, &addr, index).await) });
    }
    let mut answers = BTreeMap::new();
    answers.insert(leader, local_hash(cluster, store, index, HASH_WAIT).await);
    while let Some(joined) = asked.join_next().await {
        match joined {
            Ok((id, answer)) => {
                answers.insert(id, answer);
            }
            Err(e) => tracing::warn!(error = %e, "a state hash request failed"),
        }
    }
    for (id, answer) in &answers {
        if let HashAnswer::Skipped(why) = answer {
            tracing::debug!(master = id, index, why, "no state hash to compare");
        }
    }
    let differing = judge(index, leader, &answers);
    for d in &differing {
        tracing::error!(master = d.master, index, "{}", d.why);
        if d.master == leader {
            mark_here(store, &d.why);
        } else {
            tell_differs(cluster, d).await;
        }
    }
    if differing.is_empty() {
        let compared = answers
            .values()
            .filter(|a| matches!(a, HashAnswer::Hash(_)))
            .count();
        tracing::debug!(index, compared, "the masters' states agree");
    }
    Ok(differing)
}

/// Master `id`'s hash at `index`.
async fn remote_hash(cluster: &Cluster, id: u64, addr: &str, index: u64) -> HashAnswer {
    let payload = match encode(&index) {
        Ok(p) => p,
        Err(e) => return HashAnswer::Skipped(e.to_string()),
    };
    let req = Request::Raft {
        rpc: RaftRpc::StateHash,
        payload,
    };
    match cluster
        .network()
        .call(id, addr, &req, HASH_WAIT + CALL_TTL)
        .await
    {
        Ok(Response::Raft(bytes)) => match decode::<LeaderAnswer<HashAnswer>>(&bytes) {
            Ok(LeaderAnswer::Done(answer)) => answer,
            Ok(other) => HashAnswer::Skipped(format!("master {id} answered {other:?}")),
            Err(e) => HashAnswer::Skipped(format!("master {id} answered something else: {e}")),
        },
        Ok(other) => HashAnswer::Skipped(format!("master {id} answered {other:?}")),
        Err(e) => HashAnswer::Skipped(format!("cannot reach master {id}: {e}")),
    }
}

/// Tells a master that its state differs.
async fn tell_differs(cluster: &Cluster, d: &Differs) {
    let Some(addr) = cluster
        .peers()
        .into_iter()
        .find(|(id, _)| *id == d.master)
        .map(|(_, a)| a)
    else {
        return;
    };
    let Ok(payload) = encode(&d.why) else {
        return;
    };
    let req = Request::Raft {
        rpc: RaftRpc::StateDiffers,
        payload,
    };
    if let Err(e) = cluster
        .network()
        .call(d.master, &addr, &req, CALL_TTL)
        .await
    {
        tracing::error!(master = d.master, error = %e, "cannot tell the master that its state differs; stop it by hand");
    }
}

/// Asks the leader to compare the masters' states soon.
async fn ask_leader(cluster: &Cluster) -> Result<(), String> {
    let leader = cluster.raft().metrics().borrow().current_leader;
    let Some(leader) = leader.filter(|l| *l != cluster.id()) else {
        return Err("no other master leads".into());
    };
    let addr = cluster
        .peers()
        .into_iter()
        .find(|(id, _)| *id == leader)
        .map(|(_, a)| a)
        .ok_or_else(|| format!("the leader, master {leader}, has no known address"))?;
    let req = Request::Raft {
        rpc: RaftRpc::CheckStates,
        payload: encode(&cluster.id()).map_err(|e| e.to_string())?,
    };
    match cluster.network().call(leader, &addr, &req, CALL_TTL).await {
        Ok(Response::Raft(bytes)) => match decode::<LeaderAnswer<()>>(&bytes) {
            Ok(LeaderAnswer::Done(())) => Ok(()),
            Ok(other) => Err(format!("the leader answered {other:?}")),
            Err(e) => Err(e.to_string()),
        },
        Ok(other) => Err(format!("the leader answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Serves the check messages of another master: [`RaftRpc::StateHash`],
/// [`RaftRpc::StateDiffers`] and [`RaftRpc::CheckStates`].
pub async fn serve(
    cluster: &Cluster,
    store: &Store,
    rpc: RaftRpc,
    payload: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let bad = |e: CodecError| ApiError::new(ErrorCode::Invalid, e.to_string());
    let out = match rpc {
        RaftRpc::StateHash => {
            let index: u64 = decode(payload).map_err(bad)?;
            encode(&LeaderAnswer::Done(
                local_hash(cluster, store, index, HASH_WAIT).await,
            ))
        }
        RaftRpc::StateDiffers => {
            let why: String = decode(payload).map_err(bad)?;
            mark_here(store, &why);
            encode(&LeaderAnswer::Done(()))
        }
        RaftRpc::CheckStates => {
            let from: u64 = decode(payload).map_err(bad)?;
            if cluster.is_leader() {
                tracing::debug!(master = from, "a master asks to compare the states");
                store.checks().wake.notify_one();
                encode(&LeaderAnswer::Done(()))
            } else {
                encode(&LeaderAnswer::<()>::NotLeader(
                    cluster.raft().metrics().borrow().current_leader,
                ))
            }
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!("raft message {other:?} is not about state checks"),
            ))
        }
    };
    out.map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// Compares the masters' states while this master leads, and asks the leader
/// for a check once after this master starts, until `shutdown`.
pub async fn run(cluster: Cluster, store: Store, shutdown: CancellationToken) {
    let mut leading = false;
    let mut next: Option<Instant> = None;
    let mut asked = false;
    let mut ask_after = Instant::now();
    loop {
        let now = Instant::now();
        let is_leader = cluster.is_leader();
        if is_leader && !leading {
            next = Some(now + FIRST_CHECK_AFTER);
        }
        leading = is_leader;
        if !leading && !asked && now >= ask_after {
            match ask_leader(&cluster).await {
                Ok(()) => asked = true,
                Err(e) => {
                    tracing::debug!(error = %e, "could not ask the leader to compare the states yet");
                    ask_after = now + Duration::from_secs(2);
                }
            }
        }
        if leading && next.is_some_and(|n| now >= n) && !cluster.peers().is_empty() {
            match check_once(&cluster, &store).await {
                Ok(_) => next = Some(Instant::now() + CHECK_EVERY),
                Err(e) => {
                    tracing::warn!(error = %e, "could not compare the masters' states; trying again soon");
                    next = Some(Instant::now() + FIRST_CHECK_AFTER);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = store.checks().wake.notified() => {
                if leading {
                    let soon = Instant::now() + FIRST_CHECK_AFTER;
                    next = Some(next.map_or(soon, |n| n.min(soon)));
                }
            }
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> HashAnswer {
        HashAnswer::Hash(StateHash([b; 32]))
    }

    fn skipped() -> HashAnswer {
        HashAnswer::Skipped("not there".into())
    }

    fn failed() -> HashAnswer {
        HashAnswer::Failed("table objects, key x: fails its checksum".into())
    }

    /// (answers by master 1 (the leader), 2, 3 ...; the masters that differ)
    #[test]
    fn judging_the_hashes() {
        let cases: Vec<(&str, Vec<HashAnswer>, Vec<u64>)> = vec![
            ("all agree", vec![h(1), h(1), h(1)], vec![]),
            ("a follower differs", vec![h(1), h(1), h(2)], vec![3]),
            ("the leader differs", vec![h(2), h(1), h(1)], vec![1]),
            (
                "two of five differ",
                vec![h(1), h(2), h(1), h(3), h(1)],
                vec![2, 4],
            ),
            (
                "a skipped answer counts for nothing",
                vec![h(1), skipped(), h(1)],
                vec![],
            ),
            (
                "no majority: nobody is trusted",
                vec![h(1), h(2)],
                vec![1, 2],
            ),
            (
                "no majority among those that answered",
                vec![h(1), h(2), skipped()],
                vec![1, 2],
            ),
            (
                "three different hashes",
                vec![h(1), h(2), h(3)],
                vec![1, 2, 3],
            ),
            (
                "only the leader answered",
                vec![h(1), skipped(), skipped()],
                vec![],
            ),
            (
                "a master that cannot hash differs",
                vec![h(1), failed(), h(1)],
                vec![2],
            ),
            (
                "it differs even alone",
                vec![h(1), failed(), skipped()],
                vec![2],
            ),
            ("a single master", vec![h(1)], vec![]),
        ];
        for (what, answers, expected) in cases {
            let answers: BTreeMap<u64, HashAnswer> = answers
                .into_iter()
                .enumerate()
                .map(|(i, a)| (i as u64 + 1, a))
                .collect();
            let differs = judge(7, 1, &answers);
            let masters: Vec<u64> = differs.iter().map(|d| d.master).collect();
            assert_eq!(masters, expected, "{what}");
            for d in &differs {
                assert!(d.why.contains("index 7"), "{what}: {}", d.why);
                assert!(
                    d.why.contains(&format!("master {}", d.master)),
                    "{what}: {}",
                    d.why
                );
            }
        }
    }

    #[test]
    fn answers_survive_postcard() {
        for answer in [h(9), skipped(), failed()] {
            let bytes = encode(&LeaderAnswer::Done(answer.clone())).unwrap();
            assert_eq!(
                decode::<LeaderAnswer<HashAnswer>>(&bytes).unwrap(),
                LeaderAnswer::Done(answer)
            );
        }
    }
}
