//! This master's place among the masters: requests that need the leader
//! reach it wherever they arrive.
//!
//! - [`Cluster::write`]: a follower forwards the command to the leader
//!   ([`RaftRpc::Forward`]), which proposes it and answers with what applying
//!   it gave; callers cannot tell where the write was applied.
//! - [`Cluster::linearize`]: the read barrier before a linearizable read. The
//!   leader confirms with a majority that it still leads (openraft's read
//!   index); a follower asks the leader for that index ([`RaftRpc::ReadIndex`])
//!   and waits until its own state machine has applied it, then reads its
//!   local copy.
//! - [`Cluster::status`], [`Cluster::add_member`], [`Cluster::remove_member`]:
//!   the leader's view and membership changes, asked of the leader.
//!
//! Every exchange answers with a [`LeaderAnswer`]: done, "not the leader (ask
//! that one)", or unavailable. The asking side follows leadership as it moves
//! for a bounded time, then gives up with a clear error. A forwarded write
//! whose answer is lost is never resent: it may have been applied, and the
//! caller is told so.

use super::batcher::Batcher;
use super::network::{CallError, Network, RaftNetError};
use super::propose::Unplaced;
use super::rpc::{decode, encode, CodecError};
use super::{Raft, Refusal};
use crate::store::{Command, Outcome, StoreError};
use flotilla_api::protocol::{
    ApiError, ClusterStatus, ErrorCode, MasterStatus, RaftRpc, Request, Response,
};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a request looks for a leader that can serve it (elections take
/// 0.5–1 s; a few of them may be needed after a leader is lost).
const LEADER_WINDOW: Duration = Duration::from_secs(5);
/// A status without a reachable leader is this master's own, after this long.
const STATUS_WINDOW: Duration = Duration::from_secs(2);
/// How long one exchange with the leader may take.
const CALL_TTL: Duration = Duration::from_secs(5);
/// A learner's catch-up may ship a whole snapshot: adding a master may take this long.
const ADD_MEMBER_TTL: Duration = Duration::from_secs(120);

/// The leader's answer to a request made on a client's behalf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaderAnswer<T> {
    Done(T),
    /// The asked master does not lead (now); the leader, if it knows one.
    NotLeader(Option<u64>),
    /// The leader cannot do it; the message says why.
    Unavailable(String),
}

/// A change of the masters' membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A master joins: give it an id (`node_id`, or the next free one when 0;
    /// the id it already has when `addr` is a member) and add it as a learner
    /// without waiting for it, which reserves the id.
    Reserve { node_id: u64, addr: String },
    /// Add master `node_id`, reached at `addr`: as a learner until it has
    /// caught up, then as a voter.
    Add { node_id: u64, addr: String },
    /// Remove master `node_id`.
    Remove { node_id: u64 },
}

/// This master's raft and the means to reach the other masters.
#[derive(Clone)]
pub struct Cluster {
    raft: Raft,
    network: Network,
    cluster_name: String,
    /// Held by the leader while it changes the membership, so that two
    /// joins never pick the same id.
    membership: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Proposes this master's writes when it leads, gathering concurrent ones.
    batcher: Batcher,
    /// Set once the leader said this master was removed from the membership.
    removed: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Cluster {
    pub fn new(raft: Raft, network: Network, cluster_name: &str) -> Cluster {
        let raft_clone = raft.clone();
        Cluster {
            raft,
            network,
            cluster_name: cluster_name.to_string(),
            membership: Default::default(),
            batcher: Batcher::start(raft_clone),
            removed: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Turns true once the leader has told this master that it removed it
    /// from the membership.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn id(&self) -> u64 {
        self.network.id()
    }

    /// The other masters of the membership, with their addresses.
    pub fn peers(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != m.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Opens a streaming request on another master.
    pub async fn open_on(
        &self,
        id: u64,
        addr: &str,
        req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), CallError> {
        self.network.open(id, addr, req, CALL_TTL).await
    }

    /// Whether this master leads now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.id()) && m.state == openraft::ServerState::Leader
    }

    /// The addresses of every master in the membership, the leader's first:
    /// what clients and nodes are told to fail over among.
    pub fn masters(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let mut nodes: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        nodes.sort_by_key(|(id, _)| (Some(*id) != m.current_leader, *id));
        nodes.into_iter().map(|(_, addr)| addr).collect()
    }

    /// Applies `cmd` through the leader, wherever it is.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let answer = self
            .on_leader(RaftRpc::Forward, &cmd, false, LEADER_WINDOW, || {
                forward_here(&self.batcher, cmd.clone())
            })
            .await?;
        answer.map_err(StoreError::Refused)
    }

    /// Returns once this master's copy holds every write acknowledged before
    /// the call: reads made after it are linearizable.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        let index: u64 = self
            .on_leader(RaftRpc::ReadIndex, &(), true, LEADER_WINDOW, || {
                read_index_here(&self.raft)
            })
            .await?;
        if self.raft.metrics().borrow().last_applied.map(|l| l.index) >= Some(index) {
            return Ok(());
        }
        self.raft
            .wait(Some(CALL_TTL))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "this master could not catch up with the leader for a linearizable read ({e}); retry, or read with --stale"
                ))
            })
    }

    /// The cluster as the leader sees it; this master's own view when no
    /// leader can be reached (lags then unknown).
    pub async fn status(&self) -> ClusterStatus {
        if self.is_leader() {
            return self.local_status();
        }
        let here = || async {
            if self.is_leader() {
                LeaderAnswer::Done(self.local_status())
            } else {
                LeaderAnswer::NotLeader(None)
            }
        };
        self.on_leader(RaftRpc::Status, &(), true, STATUS_WINDOW, here)
            .await
            .unwrap_or_else(|_| self.local_status())
    }

    /// Gives a joining master at `addr` its id (`node_id`, or the next free
    /// one when 0) and adds it as a learner.
    pub async fn reserve_member(&self, node_id: u64, addr: &str) -> Result<u64, StoreError> {
        self.change_membership(MembershipChange::Reserve {
            node_id,
            addr: addr.to_string(),
        })
        .await
    }

    /// Makes master `node_id` at `addr` a voting member: a learner first,
    /// which the leader brings up to date, then a voter.
    pub async fn add_member(&self, node_id: u64, addr: &str) -> Result<(), StoreError> {
        self.change_membership(MembershipChange::Add {
            node_id,
            addr: addr.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Removes master `node_id` from the membership.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), StoreError> {
        self.change_membership(MembershipChange::Remove { node_id })
            .await
            .map(|_| ())
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<u64, StoreError> {
        self.on_leader(
            RaftRpc::ChangeMembership,
            &change,
            true,
            LEADER_WINDOW,
            || self.change_here(change.clone()),
        )
        .await
    }

    /// The leader's side of a membership change; answers the master's id.
    async fn change_here(&self, change: MembershipChange) -> LeaderAnswer<u64> {
        let raft = &self.raft;
        let _one_at_a_time = self.membership.lock().await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return LeaderAnswer::NotLeader(metrics.current_leader);
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let taken = |node_id: u64, addr: &str| -> Option<String> {
            let node = membership.get_node(&node_id)?;
            (node.addr != addr).then(|| {
                format!(
                    "master id {node_id} is already a member, at {}; pick another --node-id, or remove it first (`flotilla cluster remove {node_id}`)",
                    node.addr
                )
            })
        };
        let (node_id, result) = match change {
            MembershipChange::Reserve { node_id, addr } => {
                let existing = membership
                    .nodes()
                    .find(|(_, n)| n.addr == addr)
                    .map(|(id, _)| *id);
                let node_id = match (node_id, existing) {
                    (0, Some(id)) => return LeaderAnswer::Done(id),
                    (0, None) => membership.nodes().map(|(id, _)| *id).max().unwrap_or(0) + 1,
                    (id, _) => id,
                };
                if let Some(why) = taken(node_id, &addr) {
                    return LeaderAnswer::Unavailable(why);
                }
                if membership.get_node(&node_id).is_some() {
                    return LeaderAnswer::Done(node_id);
                }
                tracing::info!(node_id, addr, "a master joins: added as a learner");
                (
                    node_id,
                    raft.add_learner(node_id, BasicNode::new(addr), false).await,
                )
            }
            MembershipChange::Add { node_id, addr } => {
                if let Some(why) = taken(node_id, &addr) {
                    return LeaderAnswer::Unavailable(why);
                }
                if voters.contains(&node_id) {
                    return LeaderAnswer::Done(node_id);
                }
                tracing::info!(node_id, addr, "bringing a new master up to date");
                let added = match raft
                    .add_learner(node_id, BasicNode::new(addr.clone()), true)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(
                            node_id,
                            addr,
                            "the new master caught up; making it a voter"
                        );
                        raft.change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([node_id])),
                            false,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                (node_id, added)
            }
            MembershipChange::Remove { node_id } => {
                if membership.get_node(&node_id).is_none() {
                    return LeaderAnswer::Unavailable(format!(
                        "master {node_id} is not a member; `flotilla cluster status` lists the members"
                    ));
                }
                if voters.len() == 1 && voters.contains(&node_id) {
                    return LeaderAnswer::Unavailable(format!(
                        "master {node_id} is the only voting member; a cluster needs at least one master"
                    ));
                }
                tracing::info!(node_id, "removing a master");
                let change = if voters.contains(&node_id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
                };
                let removed = raft.change_membership(change, false).await;
                // The leader stops replicating to a removed master, so it
                // must be told; a leader removing itself sees it in its own
                // membership. Best effort: a master that is down stays down.
                if let (Ok(_), Some(node)) = (&removed, membership.get_node(&node_id)) {
                    if node_id != self.id() {
                        self.tell_removed(node_id, node.addr.clone());
                    }
                }
                (node_id, removed)
            }
        };
        match result {
            Ok(_) => LeaderAnswer::Done(node_id),
            Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                LeaderAnswer::NotLeader(f.leader_id)
            }
            Err(e) => LeaderAnswer::Unavailable(format!("the membership change failed: {e}")),
        }
    }

    /// Tells master `node_id` at `addr`, in the background, that it was removed.
    fn tell_removed(&self, node_id: u64, addr: String) {
        let network = self.network.clone();
        let Ok(payload) = encode(&node_id) else {
            return;
        };
        tokio::spawn(async move {
            let req = Request::Raft {
                rpc: RaftRpc::Removed,
                payload,
            };
            // A few tries over about half a minute: the connection to it may
            // be a stale one (it restarted), which a failed call drops, or it
            // may be on its way back up.
            let mut last = None;
            for attempt in 0..8u32 {
                match network
                    .call(node_id, &addr, &req, Duration::from_secs(2))
                    .await
                {
                    Ok(_) => return,
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(500) * (attempt + 1)).await;
            }
            if let Some(e) = last {
                tracing::warn!(node_id, error = %e, "could not tell the removed master; stop it by hand");
            }
        });
    }

    /// Serves a request another master made of this one as the leader; a
    /// relayed node heartbeat is handed to `heartbeat`.
    pub async fn serve(
        &self,
        heartbeat: &(dyn Fn(&str) + Sync),
        rpc: RaftRpc,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let bad = |e: CodecError| ApiError::new(ErrorCode::Invalid, e.to_string());
        let out = match rpc {
            RaftRpc::Forward => {
                let cmd: Command = decode(payload).map_err(bad)?;
                encode(&forward_here(&self.batcher, cmd).await)
            }
            RaftRpc::ReadIndex => encode(&read_index_here(&self.raft).await),
            RaftRpc::Status => encode(&if self.is_leader() {
                LeaderAnswer::Done(self.local_status())
            } else {
                LeaderAnswer::NotLeader(self.raft.metrics().borrow().current_leader)
            }),
            RaftRpc::ChangeMembership => {
                let change: MembershipChange = decode(payload).map_err(bad)?;
                encode(&self.change_here(change).await)
            }
            RaftRpc::Heartbeat => {
                let node: String = decode(payload).map_err(bad)?;
                heartbeat(&node);
                encode(&LeaderAnswer::Done(()))
            }
            RaftRpc::Removed => {
                let node_id: u64 = decode(payload).map_err(bad)?;
                if node_id == self.id() {
                    self.removed.send_replace(true);
                }
                encode(&LeaderAnswer::Done(()))
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::Invalid,
                    format!("raft message {other:?} is not a request to the leader"),
                ))
            }
        };
        out.map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    }

    /// Passes a node's heartbeat on to the leader (no answer awaited beyond
    /// a short time: the next heartbeat follows in seconds).
    pub async fn relay_heartbeat(&self, node: &str) {
        if self.is_leader() {
            return;
        }
        let Ok(payload) = encode(&node.to_string()) else {
            return;
        };
        let leader = self.raft.metrics().borrow().current_leader;
        if let Some((id, addr)) = leader.and_then(|id| self.addr_of(id).map(|a| (id, a))) {
            let req = Request::Raft {
                rpc: RaftRpc::Heartbeat,
                payload,
            };
            if let Err(e) = self
                .network
                .call(id, &addr, &req, Duration::from_secs(2))
                .await
            {
                tracing::debug!(error = %e, node, "heartbeat not relayed to the leader");
            }
        }
    }

    /// This master's own view of the cluster.
    pub fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let leading = m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader;
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if !leading {
                    None
                } else if *id == m.id {
                    Some(last)
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id))
                        .map(|l| l.map(|l| l.index).unwrap_or(0))
                };
                MasterStatus {
                    node_id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        ClusterStatus {
            cluster: self.cluster_name.clone(),
            reported_by: m.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
        }
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Runs a request on the leader: `here` when this master leads, else as
    /// `rpc` with `payload` on the leader, following leadership as it moves
    /// for a bounded time. A lost answer to a request that is not
    /// `idempotent` ends the attempt: it may have been acted on.
    async fn on_leader<T, P, F, Fut>(
        &self,
        rpc: RaftRpc,
        message: &P,
        idempotent: bool,
        window: Duration,
        here: F,
    ) -> Result<T, StoreError>
    where
        T: DeserializeOwned,
        P: Serialize,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = LeaderAnswer<T>>,
    {
        let deadline = Instant::now() + window;
        let ttl = if rpc == RaftRpc::ChangeMembership {
            ADD_MEMBER_TTL
        } else {
            CALL_TTL
        };
        let mut last_problem = String::from("no master is the leader (an election is under way or a majority of masters is unreachable)");
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let answer = match leader {
                Some(id) if id == self.id() => here().await,
                Some(id) => match self.addr_of(id) {
                    None => LeaderAnswer::NotLeader(None),
                    Some(addr) => {
                        // Encoded only when it travels: the leader's own
                        // writes (every write, on a single master) skip it.
                        let payload =
                            encode(message).map_err(|e| StoreError::invalid(e.to_string()))?;
                        let req = Request::Raft { rpc, payload };
                        // A leader that is replaced while it handles the
                        // request will not answer (it may be dead): stop
                        // waiting for it as soon as another one is known.
                        let waiter = self.raft.wait(Some(ttl));
                        let replaced = waiter.metrics(
                            |m| m.current_leader.is_some_and(|l| l != id),
                            "a new leader",
                        );
                        let answer = tokio::select! {
                            a = self.network.call(id, &addr, &req, ttl) => a,
                            _ = replaced => Err(CallError::Lost(RaftNetError::Transport {
                                target: id,
                                source: flotilla_api::net::NetError::Connect(
                                    "another master became the leader meanwhile".into(),
                                ),
                            })),
                        };
                        match answer {
                            Ok(Response::Raft(bytes)) => match decode::<LeaderAnswer<T>>(&bytes) {
                                Ok(a) => a,
                                Err(e) => {
                                    return Err(StoreError::Unavailable(format!(
                                        "the leader (master {id}) answered in a form this master does not understand ({e}); are both the same Flotilla version?"
                                    )))
                                }
                            },
                            Ok(other) => {
                                return Err(StoreError::Unavailable(format!(
                                    "the leader (master {id}) answered {other:?}; are both the same Flotilla version?"
                                )))
                            }
                            Err(CallError::Lost(e)) if !idempotent => {
                                return Err(StoreError::Unavailable(format!(
                                    "lost contact with the leader while it handled the write ({e}); it may or may not have been applied: read it back before retrying"
                                )))
                            }
                            Err(e) => {
                                last_problem = format!("cannot reach the leader: {e}");
                                LeaderAnswer::NotLeader(None)
                            }
                        }
                    }
                },
                None => LeaderAnswer::NotLeader(None),
            };
            match answer {
                LeaderAnswer::Done(t) => return Ok(t),
                LeaderAnswer::Unavailable(why) => return Err(StoreError::Unavailable(why)),
                LeaderAnswer::NotLeader(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "{last_problem}; retry shortly"
                )));
            }
            // Let an election finish or this master learn of it.
            let pause = Duration::from_millis(100).min(deadline - now);
            let _ = self
                .raft
                .wait(Some(pause))
                .metrics(|m| m.current_leader != leader, "the leader changes")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The leader's side of a forwarded write.
async fn forward_here(batcher: &Batcher, cmd: Command) -> LeaderAnswer<Result<Outcome, Refusal>> {
    match batcher.propose(cmd).await {
        Ok(o) => LeaderAnswer::Done(Ok(o)),
        Err(Unplaced::NoLeader) => LeaderAnswer::NotLeader(None),
        Err(Unplaced::NotLeader { id, .. }) => LeaderAnswer::NotLeader(Some(id)),
        Err(Unplaced::Failed(e)) => match e.into_refusal() {
            Ok(refusal) => LeaderAnswer::Done(Err(refusal)),
            Err(e) => LeaderAnswer::Unavailable(e.to_string()),
        },
    }
}

/// The leader's side of a read index: confirms leadership with a majority
/// and answers the index a reader must have applied.
async fn read_index_here(raft: &Raft) -> LeaderAnswer<u64> {
    match tokio::time::timeout(CALL_TTL, raft.ensure_linearizable()).await {
        Ok(Ok(read)) => LeaderAnswer::Done(read.map(|l| l.index).unwrap_or(0)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            LeaderAnswer::NotLeader(f.leader_id)
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            LeaderAnswer::Unavailable(format!(
                "the leader cannot reach a majority of masters ({e}); read with --stale to get this master's possibly old copy"
            ))
        }
        Ok(Err(e)) => LeaderAnswer::Unavailable(format!("the leader cannot serve reads: {e}")),
        Err(_) => LeaderAnswer::Unavailable(
            "the leader could not confirm its leadership with a majority of masters in time; retry, or read with --stale".into(),
        ),
    }
}
