//! This master's own place in the cluster's membership: a joining master
//! asks to become a voter until it is one, and a master the cluster removed
//! stops.

use crate::bootstrap::JOINING_FILE;
use crate::{pki, raft};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether master `id` has been taken out of an applied membership (a
/// membership entry only applies once committed). An uninitialized raft has
/// no voters and is not "removed": it has not joined yet.
fn removed_from(metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>, id: u64) -> bool {
    let stored = &metrics.membership_config;
    let membership = stored.membership();
    membership.voter_ids().next().is_some()
        && membership.get_node(&id).is_none()
        && stored.log_id().is_some()
        && *stored.log_id() <= metrics.last_applied
}

/// Stops this master once the cluster has removed it, as `flotilla cluster
/// remove` asks: a removed leader would otherwise go on heartbeating (so the
/// others keep following it), and a removed follower would go on calling
/// elections nobody answers. A leader sees it in its own membership; a
/// follower is told by the leader (`told`), which stops replicating to it. A
/// master still joining (its log replays older memberships without it) is
/// left alone.
pub(crate) async fn stop_when_removed(
    raft: raft::Raft,
    mut told: tokio::sync::watch::Receiver<bool>,
    node_id: u64,
    data_dir: PathBuf,
    removed: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let gone = removed_from(&metrics.borrow_and_update(), node_id) || *told.borrow_and_update();
        if gone && !data_dir.join(JOINING_FILE).exists() {
            tracing::error!(
                node_id,
                "this master was removed from the cluster's membership; stopping"
            );
            removed.store(true, std::sync::atomic::Ordering::SeqCst);
            // A moment for the answer to the request that removed it (a
            // leader removing itself is serving it) to reach the client.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            changed = told.changed() => if changed.is_err() { return },
        }
    }
}

/// Asks the cluster, through the master this one joined with, to make this
/// master a voting member, until it is one. Nothing to do once it is (a
/// restart of a member); a master that crashed half-way through joining
/// finishes here.
pub(crate) async fn become_member(
    cluster: raft::Cluster,
    pki: Arc<pki::Pki>,
    data_dir: PathBuf,
    join_addr: String,
    advertise: String,
    shutdown: CancellationToken,
) {
    use flotilla_api::protocol::{Request, Response};
    let id = cluster.id();
    let is_voter = |c: &raft::Cluster| {
        let m = c.raft().metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        voter
    };
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() && !is_voter(&cluster) {
        let attempt = async {
            let client_cert = pki.master_client(id)?;
            let tls = pki.master_client_tls(&client_cert)?;
            let mut addrs = vec![join_addr.clone()];
            addrs.extend(
                cluster
                    .masters()
                    .into_iter()
                    .filter(|a| *a != join_addr && *a != advertise),
            );
            let client =
                flotilla_api::net::Client::connect(&addrs, tls, "flotilla-master/member").await?;
            let req = Request::AddMaster {
                node_id: id,
                addr: advertise.clone(),
            };
            let answer = client.call(&req).await;
            client.conn.close(0u32.into(), b"done");
            match answer {
                Ok(Response::Ok) => Ok::<_, Box<dyn std::error::Error + Send + Sync>>(()),
                Ok(other) => Err(format!("unexpected answer {other:?}").into()),
                Err(e) => Err(e.into()),
            }
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(node_id = id, "this master is now a voting member");
                let _ = std::fs::remove_file(data_dir.join(JOINING_FILE));
                return;
            }
            Err(e) => {
                tracing::warn!(node_id = id, error = %e, retry_in = ?delay, "not a member yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    if is_voter(&cluster) {
        // A voter already (a restart after the join finished).
        let _ = std::fs::remove_file(data_dir.join(JOINING_FILE));
    }
}
