//! The controller manager: starts the leader-only loops (the scheduler, the
//! node lifecycle, module collection) and the cache they share when this master becomes the leader,
//! and stops them when it is no longer.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod eviction;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod replicaset;
pub mod runtime;
pub mod scheduler;

use crate::apiserver::ApiServer;
use crate::modules;
use flotilla_api::Kind;
use node_lifecycle as lifecycle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Waits until this master has applied everything committed before it
/// became the leader (a linearizable read point), trying again until it
/// works or `shutdown`; false on shutdown.
async fn caught_up_with_commits(api: &ApiServer, shutdown: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(100);
    loop {
        match api.before_read(false).await {
            Ok(()) => return true,
            Err(e) => tracing::info!(error = %e, "controllers wait for this master to catch up"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Runs a key-by-key controller over the shared cache until `shutdown`.
fn spawn_reconciler<R: runtime::Reconciler>(
    tracker: &tokio_util::task::TaskTracker,
    cache: &runtime::Cache,
    shutdown: &CancellationToken,
    r: R,
) {
    tracker.spawn(runtime::drive(
        std::sync::Arc::new(r),
        cache.clone(),
        WORKERS,
        shutdown.clone(),
    ));
}

/// The kinds the controllers' shared cache holds.
const KINDS: [Kind; 12] = [
    Kind::Pod,
    Kind::Node,
    Kind::Module,
    Kind::PriorityClass,
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
    Kind::Namespace,
    Kind::Service,
    Kind::Endpoints,
];

/// Workers of each key-by-key controller (keys are worked on concurrently,
/// one key never twice at once).
const WORKERS: usize = 4;

/// Runs the scheduler, the node lifecycle and module collection while this
/// master is the leader, and stops them when it is not: two leaders'
/// controllers would fight, and a follower's writes are refused anyway.
/// The scheduler and the node lifecycle write through the API core, as
/// controllers.
pub(crate) async fn run_while_leading(
    api: ApiServer,
    grace: Duration,
    module_grace: Duration,
    retention: events::Retention,
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
                let cache = runtime::Cache::new(&KINDS);
                // What the controllers and nodes saw happen, written in batches.
                let recorder = events::Recorder::new();
                tracker.spawn(events::run(
                    api.clone(),
                    recorder.clone(),
                    retention,
                    child.clone(),
                ));
                tracker.spawn(events::observe(
                    cache.clone(),
                    recorder.clone(),
                    child.clone(),
                ));
                tracker.spawn({
                    let (cache, api, child) = (cache.clone(), api.clone(), child.clone());
                    async move {
                        // A new leader may not have applied every entry the
                        // old one committed: controllers that counted from
                        // such a view would make pods that already exist.
                        if caught_up_with_commits(&api, &child).await {
                            cache.run(api.store.clone(), child).await
                        }
                    }
                });
                tracker.spawn(scheduler::run(api.clone(), cache.clone(), child.clone()));
                tracker.spawn(lifecycle::run(
                    api.clone(),
                    cache.clone(),
                    grace,
                    child.clone(),
                ));
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    replicaset::ReplicaSets {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    deployment::Deployments {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    endpoints::EndpointsController {
                        api: api.clone(),
                        cache: cache.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    daemonset::DaemonSets {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    job::Jobs {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    cronjob::CronJobs {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    eviction::Evictions {
                        api: api.clone(),
                        cache: cache.clone(),
                        events: recorder.clone(),
                        default_toleration: eviction::DEFAULT_TOLERATION,
                        buckets: Default::default(),
                    },
                );
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    namespace::Namespaces {
                        api: api.clone(),
                        cache: cache.clone(),
                    },
                );
                tracker.spawn({
                    let ensure = namespace::ensure(api.clone(), cache.clone());
                    let child = child.clone();
                    async move {
                        tokio::select! {
                            _ = child.cancelled() => {}
                            _ = ensure => {}
                        }
                    }
                });
                spawn_reconciler(
                    &tracker,
                    &cache,
                    &child,
                    gc::Collector {
                        api: api.clone(),
                        cache: cache.clone(),
                    },
                );
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
