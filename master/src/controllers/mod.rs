//! The controller manager: starts the leader-only loops (the scheduler, the
//! node lifecycle, module collection) and the cache they share when this master becomes the leader,
//! and stops them when it is no longer.

pub mod node_lifecycle;
pub mod runtime;
pub mod scheduler;

use crate::apiserver::ApiServer;
use crate::modules;
use node_lifecycle as lifecycle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the scheduler, the node lifecycle and module collection while this
/// master is the leader, and stops them when it is not: two leaders'
/// controllers would fight, and a follower's writes are refused anyway.
/// The scheduler and the node lifecycle write through the API core, as
/// controllers.
pub(crate) async fn run_while_leading(
    api: ApiServer,
    grace: Duration,
    module_grace: Duration,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let raft = api.cluster.raft().clone();
    let node_id = api.cluster.id();
    let mut metrics = raft.metrics();
    let mut leading: Option<CancellationToken> = None;
    loop {
        let is_leader = {
            let m = metrics.borrow_and_update();
            m.current_leader == Some(node_id) && m.state == openraft::ServerState::Leader
        };
        match (is_leader, &leading) {
            (true, None) => {
                tracing::info!(
                    node_id,
                    "leading: starting the scheduler and node lifecycle"
                );
                let child = shutdown.child_token();
                // One cache of pods, nodes and modules, shared by the
                // controllers that read them.
                let cache = runtime::Cache::new(&scheduler::KINDS);
                tracker.spawn({
                    let (cache, store, child) = (cache.clone(), api.store.clone(), child.clone());
                    async move { cache.run(store, child).await }
                });
                tracker.spawn(scheduler::run(api.clone(), cache.clone(), child.clone()));
                tracker.spawn(lifecycle::run(api.clone(), cache, grace, child.clone()));
                tracker.spawn(modules::run(
                    api.store.clone(),
                    raft.clone(),
                    module_grace,
                    child.clone(),
                ));
                leading = Some(child);
            }
            (false, Some(child)) => {
                tracing::info!(
                    node_id,
                    "no longer leading: stopping the scheduler and node lifecycle"
                );
                child.cancel();
                leading = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}
