//! Module collection: the leader removes the modules no pod (and no pod
//! template: a Deployment's, a ReplicaSet's) uses once they
//! have gone unused for a grace period (`--module-grace`), Module object
//! and bytes, through raft; and the pieces of uploads that were staged but
//! never committed (a master that failed mid-upload leaves them).
//!
//! A pod of any phase uses its module while it exists: a pod that ended
//! may be looked at, or its node may start it again after a restart.
//! [`plan`] decides from what the store holds and what this leader saw
//! before; [`run`] lists, plans and writes. When a module stopped being used
//! is not in the store (a deleted pod leaves no trace), so the leader keeps
//! "first seen unused" in memory: a new leader starts every grace period
//! over, which only delays a collection. The store refuses to delete a
//! module a pod uses (`Command::Delete`), so a pod created after the list
//! keeps its module however the pass decided.

use crate::raft::{propose, Raft};
use crate::store::{Command, Outcome, Refusal, Store, StoreError};
use flotilla_api::objects::module_name;
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a module goes unused before it is removed, unless `--module-grace` says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10 * 60);

/// The shortest grace period: with none, a module uploaded by `flotilla
/// apply` could go before the pod that uses it is created.
pub const MIN_GRACE: Duration = Duration::from_secs(1);

/// How often the leader looks (more often when the grace period is short,
/// so a module goes within about half a grace period after it is due).
const INTERVAL: Duration = Duration::from_secs(60);

/// How long pieces of an upload may stay staged before they are dropped.
/// Long enough for the biggest module over a slow link (64 MiB at 1 Mbit/s
/// takes about nine minutes); an upload cut off this way fails and is sent
/// again whole.
pub const STAGED_GRACE: Duration = Duration::from_secs(60 * 60);

/// A stored module, as collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub digest: String,
    /// The delete is a compare-and-swap on it.
    pub resource_version: u64,
    pub created: Option<Time>,
}

/// When this leader first saw each module, and each staged upload, unused
/// (monotonic: a wall clock set forward at boot must not make every module due).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unused {
    pub modules: BTreeMap<String, Instant>,
    pub uploads: BTreeMap<String, Instant>,
}

/// What one pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Modules to delete: digest and the resourceVersion seen.
    pub delete: Vec<(String, u64)>,
    /// Staged uploads to drop, by digest.
    pub discard: Vec<String>,
    /// What the next pass starts from.
    pub unused: Unused,
}

/// Decides one pass. `used` holds the digests the existing pods name;
/// `staged` the digests of uploads staged and not committed; `unused` what
/// the last pass returned; `now` the monotonic time and `wall` the clock.
///
/// A module is deleted once it has been unused for `grace` by this leader's
/// count and was created at least `grace` ago (a module just uploaded has
/// no pod yet). A staged upload is dropped after [`STAGED_GRACE`].
pub fn plan(
    modules: &[Stored],
    used: &BTreeSet<String>,
    staged: &[String],
    unused: &Unused,
    now: Instant,
    wall: Time,
    grace: Duration,
) -> Plan {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut next = Plan::default();
    for m in modules {
        if used.contains(&m.digest) {
            continue;
        }
        let since = unused.modules.get(&m.digest).copied().unwrap_or(now);
        next.unused.modules.insert(m.digest.clone(), since);
        // A clock set back makes a module look younger, never older.
        let old_enough = m
            .created
            .is_none_or(|c| wall.0.saturating_sub(c.0) >= grace_ms);
        if now.saturating_duration_since(since) >= grace && old_enough {
            next.delete.push((m.digest.clone(), m.resource_version));
        }
    }
    for digest in staged {
        let since = unused.uploads.get(digest).copied().unwrap_or(now);
        next.unused.uploads.insert(digest.clone(), since);
        if now.saturating_duration_since(since) >= STAGED_GRACE {
            next.discard.push(digest.clone());
        }
    }
    next
}

/// What a pass starts from, read from this master's copy of the state (the
/// leader's is up to date).
struct Observed {
    modules: Vec<Stored>,
    /// The digests the existing pods name.
    used: BTreeSet<String>,
    /// The digests of uploads staged and not committed.
    staged: Vec<String>,
}

fn observe(store: &Store) -> Result<Observed, StoreError> {
    let all = Selector::default();
    let (_, modules) = store.list(Kind::Module, None, &all)?;
    // Pods use their modules, and so do the templates of the objects that
    // make pods (a Deployment scaled to 0, an old ReplicaSet kept for a
    // rollback, a DaemonSet): their pods will need the module again.
    let mut users = Vec::new();
    for kind in flotilla_api::objects::MODULE_USERS {
        users.extend(store.list(kind, None, &all)?.1);
    }
    let modules = modules
        .into_iter()
        .filter_map(|o| match o {
            Object::Module(m) => Some(Stored {
                digest: m.spec.digest,
                resource_version: m.metadata.resource_version,
                created: m.metadata.creation_timestamp,
            }),
            _ => None,
        })
        .collect();
    let used = users
        .iter()
        .filter_map(|o| o.module().map(String::from))
        .collect();
    Ok(Observed {
        modules,
        used,
        staged: store.staged_uploads()?,
    })
}

/// How often [`run`] looks for a grace period of `grace`.
fn interval(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_millis(500), INTERVAL)
}

/// Collects unused modules and abandoned uploads while this master leads
/// (until `shutdown`, which the leader loop fires when leadership goes).
pub async fn run(store: Store, raft: Raft, grace: Duration, shutdown: CancellationToken) {
    let mut unused = Unused::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval(grace)) => {}
        }
        match pass(&store, &raft, &unused, grace).await {
            Ok(next) => unused = next,
            // A master whose state differs from the others' reads nothing,
            // and so removes nothing: it cannot tell what is used.
            Err(e) => tracing::warn!(error = %e, "module collection pass failed"),
        }
    }
}

/// One pass: observe, plan, write. Returns what the next pass starts from.
async fn pass(
    store: &Store,
    raft: &Raft,
    unused: &Unused,
    grace: Duration,
) -> Result<Unused, StoreError> {
    let seen = observe(store)?;
    let plan = plan(
        &seen.modules,
        &seen.used,
        &seen.staged,
        unused,
        Instant::now(),
        Time::now(),
        grace,
    );
    for (digest, rv) in plan.delete {
        let cmd = Command::Delete {
            kind: Kind::Module,
            namespace: String::new(),
            name: module_name(&digest),
            expected_rv: Some(rv),
        };
        match propose(raft, cmd).await {
            Ok(Outcome::Deleted(_)) => tracing::info!(
                module = %digest,
                grace = ?grace,
                "removed a module no pod has used for the grace period"
            ),
            Ok(_) => {}
            // A pod took it up, or it changed or went since the list: the
            // next pass sees the new state.
            Err(
                e @ StoreError::Refused(
                    Refusal::Invalid(_) | Refusal::Conflict { .. } | Refusal::NotFound(_),
                ),
            ) => {
                tracing::debug!(module = %digest, error = %e, "module kept")
            }
            Err(e) => return Err(e),
        }
    }
    for digest in plan.discard {
        propose(
            raft,
            Command::DiscardUpload {
                digest: digest.clone(),
            },
        )
        .await?;
        tracing::info!(
            module = %digest,
            "dropped the pieces of an upload that was never committed"
        );
    }
    Ok(plan.unused)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);
    /// The wall clock of the cases: an hour after the modules were made.
    const WALL: Time = Time(1_700_003_600_000);
    const MADE: Time = Time(1_700_000_000_000);

    fn stored(digest: &str, created: Time) -> Stored {
        Stored {
            digest: digest.into(),
            resource_version: 7,
            created: Some(created),
        }
    }

    /// One case: the modules, the digests pods use, for how long each
    /// module has been seen unused before this pass (None: never), and the
    /// digests the pass must delete.
    struct Case {
        name: &'static str,
        modules: Vec<Stored>,
        used: &'static [&'static str],
        unused_for: &'static [(&'static str, u64)],
        delete: &'static [&'static str],
        /// Digests remembered as unused afterwards.
        remembered: &'static [&'static str],
    }

    #[test]
    fn modules_go_after_the_grace_period_unused_and_never_while_used() {
        let cases = [
            Case {
                name: "a used module stays and is forgotten as unused",
                modules: vec![stored("a", MADE)],
                used: &["a"],
                unused_for: &[("a", 3600)],
                delete: &[],
                remembered: &[],
            },
            Case {
                name: "first seen unused: the grace period starts now",
                modules: vec![stored("a", MADE)],
                used: &[],
                unused_for: &[],
                delete: &[],
                remembered: &["a"],
            },
            Case {
                name: "unused for less than the grace period: kept",
                modules: vec![stored("a", MADE)],
                used: &[],
                unused_for: &[("a", 599)],
                delete: &[],
                remembered: &["a"],
            },
            Case {
                name: "unused for the grace period: deleted",
                modules: vec![stored("a", MADE)],
                used: &[],
                unused_for: &[("a", 600)],
                delete: &["a"],
                remembered: &["a"],
            },
            Case {
                name: "used again before it was due: kept, and the count starts over",
                modules: vec![stored("a", MADE), stored("b", MADE)],
                used: &["a"],
                unused_for: &[("a", 599), ("b", 601)],
                delete: &["b"],
                remembered: &["b"],
            },
            Case {
                name: "just uploaded (by the clock) though long seen unused: kept",
                modules: vec![stored("a", Time(WALL.0 - 60_000))],
                used: &[],
                unused_for: &[("a", 3600)],
                delete: &[],
                remembered: &["a"],
            },
            Case {
                name: "made in the future (a clock set back): kept",
                modules: vec![stored("a", Time(WALL.0 + 3_600_000))],
                used: &[],
                unused_for: &[("a", 3600)],
                delete: &[],
                remembered: &["a"],
            },
            Case {
                name: "a module gone since the last pass is forgotten",
                modules: vec![],
                used: &["x"],
                unused_for: &[("a", 3600)],
                delete: &[],
                remembered: &[],
            },
            Case {
                name: "several: each on its own count",
                modules: vec![stored("a", MADE), stored("b", MADE), stored("c", MADE)],
                used: &["c"],
                unused_for: &[("a", 900), ("b", 10)],
                delete: &["a"],
                remembered: &["a", "b"],
            },
        ];
        let now = Instant::now() + Duration::from_secs(100_000);
        for case in cases {
            let unused = Unused {
                modules: case
                    .unused_for
                    .iter()
                    .map(|(d, secs)| (d.to_string(), now - Duration::from_secs(*secs)))
                    .collect(),
                uploads: BTreeMap::new(),
            };
            let used = case.used.iter().map(|d| d.to_string()).collect();
            let got = plan(&case.modules, &used, &[], &unused, now, WALL, GRACE);
            let deleted: Vec<&str> = got.delete.iter().map(|(d, _)| d.as_str()).collect();
            assert_eq!(deleted, case.delete, "{}", case.name);
            assert!(
                got.delete.iter().all(|(_, rv)| *rv == 7),
                "{}: the delete carries the resourceVersion seen",
                case.name
            );
            let remembered: Vec<&str> = got.unused.modules.keys().map(String::as_str).collect();
            assert_eq!(remembered, case.remembered, "{}", case.name);
            // Where a module was seen unused before, the time carries over.
            for (d, at) in &got.unused.modules {
                assert_eq!(
                    Some(at),
                    unused.modules.get(d).or(Some(&now)),
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn staged_uploads_are_dropped_after_their_own_longer_grace() {
        let now = Instant::now() + Duration::from_secs(100_000);
        let staged = vec!["old".to_string(), "new".to_string(), "fresh".to_string()];
        let unused = Unused {
            modules: BTreeMap::new(),
            uploads: [
                ("old".to_string(), now - STAGED_GRACE),
                ("new".to_string(), now - GRACE),
                ("gone".to_string(), now - STAGED_GRACE),
            ]
            .into(),
        };
        let got = plan(&[], &BTreeSet::new(), &staged, &unused, now, WALL, GRACE);
        assert_eq!(got.discard, vec!["old".to_string()]);
        assert_eq!(
            got.unused.uploads.keys().collect::<Vec<_>>(),
            vec!["fresh", "new", "old"]
        );
        assert_eq!(got.unused.uploads["fresh"], now);
    }

    #[test]
    fn short_grace_periods_are_looked_at_more_often() {
        assert_eq!(interval(DEFAULT_GRACE), INTERVAL);
        assert_eq!(interval(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(interval(MIN_GRACE), Duration::from_millis(500));
    }
}
