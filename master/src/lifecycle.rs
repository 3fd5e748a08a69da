//! Node lifecycle: a node whose heartbeats stop is NotReady after a grace
//! period, and Ready again once they resume. Heartbeats are kept in memory
//! (they are too frequent to be writes); only transitions reach the store,
//! through raft, from the leader.
//! A master that just started, or just became the leader, counts every node
//! as seen at that moment, so a restart or a change of leader does not turn
//! the whole cluster NotReady. Followers relay the heartbeats they receive to
//! the leader.

use crate::raft::{propose, Raft};
use crate::store::{Command, Store, StoreError};
use flotilla_api::objects::ReadyState;
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Last heartbeat per node, shared with the API service.
#[derive(Clone, Debug)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    started: Instant,
    changed: Arc<tokio::sync::Notify>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats {
            seen: Arc::default(),
            started: Instant::now(),
            changed: Arc::default(),
        }
    }

    /// Records a heartbeat from `node`.
    pub fn beat(&self, node: &str) {
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(node.to_string(), Instant::now()).is_none()
        };
        if first {
            self.changed.notify_one();
        }
    }

    /// How long `node` has been silent (since this master started, if never heard).
    pub fn silence(&self, node: &str, now: Instant) -> Duration {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        now.saturating_duration_since(seen.get(node).copied().unwrap_or(self.started))
    }
}

/// The transition a node should make, if any, given how long it has been silent.
pub fn transition(current: ReadyState, silence: Duration, grace: Duration) -> Option<ReadyState> {
    let want = if silence <= grace {
        ReadyState::Ready
    } else {
        ReadyState::NotReady
    };
    (want != current).then_some(want)
}

/// How often nodes are re-examined; bounds how late past the grace period a node turns NotReady.
const TICK: Duration = Duration::from_millis(500);

/// Watches heartbeats and writes transitions until `shutdown` fires.
pub async fn run(
    store: Store,
    raft: Raft,
    heartbeats: Heartbeats,
    grace: Duration,
    shutdown: CancellationToken,
) {
    // Heartbeats went to whichever master each node was connected to; a
    // master that just became leader has heard from nodes only since then
    // (through the other masters' relays): count from the start of its term.
    let leading_since = Instant::now();
    loop {
        if let Err(e) = examine(&store, &raft, &heartbeats, grace, leading_since).await {
            tracing::warn!(error = %e, "node lifecycle pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
            _ = heartbeats.changed.notified() => {}
        }
    }
}

async fn examine(
    store: &Store,
    raft: &Raft,
    heartbeats: &Heartbeats,
    grace: Duration,
    leading_since: Instant,
) -> Result<(), StoreError> {
    let (_, nodes) = store.list(Kind::Node, None, &Selector::default())?;
    let now = Instant::now();
    for obj in nodes {
        let Object::Node(mut node) = obj else {
            continue;
        };
        let silence = heartbeats
            .silence(&node.metadata.name, now)
            .min(now.saturating_duration_since(leading_since));
        let Some(next) = transition(node.status.ready, silence, grace) else {
            continue;
        };
        let rv = node.metadata.resource_version;
        let at = Time::now();
        node.status.ready = next;
        node.status.last_transition_time = Some(at);
        if next == ReadyState::Ready {
            node.status.reason = "NodeReady".into();
            node.status.message = "the node's agent is sending heartbeats".into();
            node.status.last_heartbeat_time = Some(at);
        } else {
            node.status.reason = "NodeStatusUnknown".into();
            node.status.message = format!(
                "no heartbeat for {}s (grace period {}s)",
                silence.as_secs(),
                grace.as_secs()
            );
        }
        tracing::info!(node = %node.metadata.name, state = %next, "node transition");
        match propose(
            raft,
            Command::Update {
                object: Object::Node(node),
                expected_rv: Some(rv),
                status_only: true,
            },
        )
        .await
        {
            Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let g = Duration::from_secs(10);
        let s = Duration::from_secs;
        let cases = [
            (ReadyState::Unknown, s(0), Some(ReadyState::Ready)),
            (ReadyState::Ready, s(5), None),
            (ReadyState::Ready, s(10), None),
            (ReadyState::Ready, s(11), Some(ReadyState::NotReady)),
            (ReadyState::NotReady, s(30), None),
            (ReadyState::NotReady, s(1), Some(ReadyState::Ready)),
            (ReadyState::Unknown, s(60), Some(ReadyState::NotReady)),
        ];
        for (cur, silence, want) in cases {
            assert_eq!(transition(cur, silence, g), want, "{cur:?} {silence:?}");
        }
    }

    #[test]
    fn unknown_nodes_count_from_master_start() {
        let hb = Heartbeats::new();
        let later = Instant::now() + Duration::from_secs(3);
        assert!(hb.silence("n1", later) >= Duration::from_secs(3));
        hb.beat("n1");
        assert!(hb.silence("n1", Instant::now()) < Duration::from_secs(1));
    }
}
