//! Runs a controller that works key by key: the keys each change of the
//! cache concerns go into its [`WorkQueue`], a few workers take them, and a
//! key whose reconciliation fails is tried again after its back-off.

use super::{Cache, CacheState, Change, WorkQueue};
use flotilla_api::protocol::ApiError;
use flotilla_api::Object;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// A controller that reconciles one key at a time.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name in logs.
    fn name(&self) -> &'static str;
    /// Appends to `out` the keys a change (`old` → `new`, or `new` deleted)
    /// concerns.
    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    );
    /// Every key, at the start and whenever the cache was listed again.
    fn all_keys(&self, state: &CacheState) -> Vec<String>;
    /// Brings one key towards what is wanted. `Ok(Some(d))`: look at it
    /// again after `d` (a pod becomes available, a deadline passes).
    fn reconcile(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Duration>, ApiError>> + Send;
}

/// Runs `r` over `cache` with `workers` workers until `shutdown`.
pub async fn drive<R: Reconciler>(
    r: Arc<R>,
    cache: Cache,
    workers: usize,
    shutdown: CancellationToken,
) {
    let queue = WorkQueue::new(Duration::from_millis(200), Duration::from_secs(60));
    let mut changes = cache.subscribe();
    cache.synced().await;
    let enqueue_all = |queue: &WorkQueue| {
        let keys = r.all_keys(&cache.read());
        for k in keys {
            queue.add(k);
        }
    };
    enqueue_all(&queue);
    let watcher = async {
        let mut keys = Vec::new();
        loop {
            match changes.recv().await {
                Ok(Change::Event { old, new, .. }) => {
                    r.keys_for(&cache.read(), old.as_deref(), &new, &mut keys);
                    for k in keys.drain(..) {
                        queue.add(k);
                    }
                }
                Ok(Change::Relisted) | Err(RecvError::Lagged(_)) => enqueue_all(&queue),
                Err(RecvError::Closed) => return,
            }
        }
    };
    let worker = || async {
        while let Some(key) = queue.next().await {
            match r.reconcile(&key).await {
                Ok(again) => {
                    queue.forget(&key);
                    if let Some(d) = again {
                        queue.add_after(key.clone(), d);
                    }
                }
                Err(e) => {
                    tracing::warn!(controller = r.name(), key = %key, error = %e, "reconcile failed; retrying after a back-off");
                    queue.retry(&key);
                }
            }
            queue.done(&key);
        }
    };
    let workers = futures_util::future::join_all((0..workers.max(1)).map(|_| worker()));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = watcher => {}
        _ = workers => {}
    }
    queue.shut_down();
}
