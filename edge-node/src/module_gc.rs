//! What a node keeps of the modules its pods no longer use, and for how long.
//!
//! - Memory: a compiled program lives exactly as long as a worker may still
//!   run it. Workers hold it; the shared map in [`crate::worker::WorkerCtx`]
//!   holds only weak references, so the last worker to let go frees it.
//! - Disk: a module's bytes (`node.redb`) and its compiled code
//!   (`compiled/`) stay while a pod bound to the node names it ([`InUse`]),
//!   then for a grace period (a pod deleted and applied again, or replaced
//!   in a rolling restart, neither fetches nor compiles again), and in any
//!   case within a size budget, least recently used first.
//!
//! [`plan`] decides, as a pure function of the cached modules, the settings
//! and the time; [`run`] applies it every minute, soon after the modules in
//! use change, and when a grace period ends.

use crate::local::{unix_ms_now, LocalStore};
use crate::runtime::Runtime;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default budget: small beside a Pi's SD card, yet room for three modules
/// of the cluster's largest size (64 MiB, 128 MiB as redb stores it) with
/// their code, or hundreds of typical ones.
pub const DEFAULT_BUDGET: u64 = 512 << 20;
/// Default grace: longer than a rolling restart or a delete-and-apply.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// Longest time between two rounds: budgets are checked this often even
/// when nothing else wakes the loop (a module fetched by a pod that had
/// already started, say).
const INTERVAL: Duration = Duration::from_secs(60);
/// How long after a change in the modules in use a round runs, so that a
/// node starting fifty pods runs one round, not fifty.
const SETTLE: Duration = Duration::from_millis(500);
/// Freed bytes in `node.redb` worth a compaction. Compacting rewrites what
/// lies behind the free space, and redb reuses free pages anyway, so small
/// amounts are left for a later round.
const COMPACT_AFTER: u64 = 4 << 20;

/// How much a node keeps of the modules its pods no longer use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleCacheConfig {
    /// Most bytes of modules and their compiled code kept on disk; only
    /// modules in use may take it past this.
    pub budget: u64,
    /// How long a module no pod uses is kept (within the budget).
    pub grace: Duration,
}

impl Default for ModuleCacheConfig {
    fn default() -> Self {
        ModuleCacheConfig {
            budget: DEFAULT_BUDGET,
            grace: DEFAULT_GRACE,
        }
    }
}

/// A cached module as [`plan`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: String,
    /// Bytes on disk: the module (as stored) and its compiled code.
    pub size: u64,
    /// When it was stored, or when the last pod using it went (Unix ms).
    pub last_used_ms: u64,
    /// A pod bound to this node names it.
    pub in_use: bool,
}

/// Why a module is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No pod has used it for this long, at least the grace period.
    Unused(Duration),
    /// The cache is over its budget and this is the least recently used.
    OverBudget,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Modules to delete, with why.
    pub delete: Vec<(String, Reason)>,
    /// Bytes kept; above the budget only when modules in use alone are.
    pub kept: u64,
    /// When the next kept module's grace period ends, if any is unused.
    pub next_expiry: Option<Duration>,
}

/// Decides which cached modules to delete: every module no pod uses whose
/// grace period has passed, then, while the rest exceed the budget, the
/// least recently used of those no pod uses. A module in use is never
/// deleted. A last use in the future (the clock was set back) counts as now.
pub fn plan(entries: &[Entry], cfg: &ModuleCacheConfig, now_ms: u64) -> Plan {
    let grace_ms = u64::try_from(cfg.grace.as_millis()).unwrap_or(u64::MAX);
    let mut out = Plan::default();
    let mut candidates = Vec::new();
    // Wide enough that no sum of u64 sizes overflows.
    let mut kept: u128 = 0;
    for e in entries {
        let idle = now_ms.saturating_sub(e.last_used_ms);
        if !e.in_use && idle >= grace_ms {
            let reason = Reason::Unused(Duration::from_millis(idle));
            out.delete.push((e.digest.clone(), reason));
        } else {
            kept += u128::from(e.size);
            if !e.in_use {
                candidates.push(e);
            }
        }
    }
    // Oldest first; the digest only makes ties deterministic.
    candidates.sort_by(|a, b| (a.last_used_ms, &a.digest).cmp(&(b.last_used_ms, &b.digest)));
    let mut candidates = candidates.into_iter();
    while kept > u128::from(cfg.budget) {
        let Some(e) = candidates.next() else { break };
        out.delete.push((e.digest.clone(), Reason::OverBudget));
        kept -= u128::from(e.size);
    }
    out.kept = u64::try_from(kept).unwrap_or(u64::MAX);
    out.next_expiry = candidates
        .map(|e| {
            let ends = e.last_used_ms.saturating_add(grace_ms);
            Duration::from_millis(ends.saturating_sub(now_ms))
        })
        .min();
    out
}

/// The modules that pods bound to this node name, counted by pod. Each
/// worker holds a [`Lease`] from its start until it is gone, so the count
/// follows the workers without anyone keeping it by hand.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    users: Arc<watch::Sender<BTreeMap<String, usize>>>,
}

impl InUse {
    /// Counts one more user of `digest` until the lease is dropped.
    pub fn acquire(&self, digest: &str) -> Lease {
        self.users
            .send_modify(|m| *m.entry(digest.to_string()).or_default() += 1);
        Lease {
            users: self.clone(),
            digest: digest.to_string(),
        }
    }

    /// The digests in use now.
    pub fn digests(&self) -> HashSet<String> {
        self.users.borrow().keys().cloned().collect()
    }

    /// Wakes up when the digests in use may have changed.
    fn subscribe(&self) -> watch::Receiver<BTreeMap<String, usize>> {
        self.users.subscribe()
    }
}

/// One pod's use of a module (see [`InUse::acquire`]).
#[derive(Debug)]
pub struct Lease {
    users: InUse,
    digest: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.users.users.send_modify(|m| {
            if let Some(n) = m.get_mut(&self.digest) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.digest);
                }
            }
        });
    }
}

/// What one round remembers for the next.
#[derive(Debug, Default)]
struct State {
    /// The modules in use at the last round (None before the first).
    in_use: Option<HashSet<String>>,
    /// Bytes deleted from `node.redb` since it was last compacted.
    uncompacted: u64,
    /// The last round found the modules in use alone over the budget.
    over_budget: bool,
}

/// Applies [`plan`] until `stop` fires: every minute, when a grace
/// period ends, and shortly after the modules in use change. Cancel `stop`
/// before stopping the workers, or their going would count as release.
pub async fn run(
    local: LocalStore,
    runtime: Runtime,
    in_use: InUse,
    cfg: ModuleCacheConfig,
    stop: CancellationToken,
) {
    let mut changes = in_use.subscribe();
    let mut state = State::default();
    let mut wait = SETTLE;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SETTLE) => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
        changes.mark_unchanged();
        let (local, runtime, users) = (local.clone(), runtime.clone(), in_use.clone());
        let task = tokio::task::spawn_blocking(move || {
            let next = round(&local, &runtime, &users, &cfg, &mut state);
            (next, state)
        });
        let next;
        (next, state) = match task.await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "module cache round failed; trying again later");
                (None, State::default())
            }
        };
        // A grace period ending is a round's worth of work; so is the minute passing.
        wait = next.map_or(INTERVAL, |n| n.clamp(SETTLE, INTERVAL));
    }
}

/// One round (blocking): records releases, deletes what [`plan`] says,
/// sweeps `compiled/`, compacts `node.redb` when worthwhile. Returns when
/// the next grace period ends.
fn round(
    local: &LocalStore,
    runtime: &Runtime,
    users: &InUse,
    cfg: &ModuleCacheConfig,
    state: &mut State,
) -> Option<Duration> {
    let now = unix_ms_now();
    let in_use = users.digests();
    if let Some(before) = &state.in_use {
        let released: Vec<String> = before.difference(&in_use).cloned().collect();
        if let Err(e) = local.mark_released(&released, now) {
            // Without the mark the grace period would count from the
            // module's arrival: keep them as released-to-be for the next round.
            tracing::warn!(error = %e, "cannot record modules no longer used; will retry");
            state.in_use = Some(before.union(&in_use).cloned().collect());
            return Some(SETTLE);
        }
    }
    state.in_use = Some(in_use.clone());
    let stored = match local.modules() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the cached modules; will retry");
            return None;
        }
    };
    let entries: Vec<Entry> = stored
        .iter()
        .map(|m| Entry {
            digest: m.digest.clone(),
            size: m
                .footprint()
                .saturating_add(runtime.compiled_size(&m.digest)),
            last_used_ms: m.last_used_ms,
            in_use: in_use.contains(&m.digest),
        })
        .collect();
    let mut plan = plan(&entries, cfg, now);
    // A pod may have started using one since the snapshot.
    let now_in_use = users.digests();
    plan.delete.retain(|(d, _)| !now_in_use.contains(d));
    let over = plan.kept > cfg.budget;
    if over && !state.over_budget {
        tracing::warn!(
            in_use = %flotilla_api::quantity::format_bytes(plan.kept),
            budget = %flotilla_api::quantity::format_bytes(cfg.budget),
            "the modules the pods on this node use exceed the module cache budget (--module-cache-size); nothing they use is deleted"
        );
    }
    state.over_budget = over;
    let mut doomed: Vec<String> = plan.delete.iter().map(|(d, _)| d.clone()).collect();
    match local.remove_modules(&doomed) {
        Ok(freed) => {
            state.uncompacted = state.uncompacted.saturating_add(freed);
            let sizes: HashMap<&str, u64> = entries
                .iter()
                .map(|e| (e.digest.as_str(), e.size))
                .collect();
            for (digest, reason) in &plan.delete {
                let size = sizes.get(digest.as_str()).copied().unwrap_or(0);
                let size = flotilla_api::quantity::format_bytes(size);
                match reason {
                    Reason::Unused(idle) => tracing::info!(
                        module = %digest, %size, unused_for = ?Duration::from_secs(idle.as_secs()),
                        "deleted a module no pod on this node uses"
                    ),
                    Reason::OverBudget => tracing::info!(
                        module = %digest, %size,
                        "deleted a module no pod on this node uses: the module cache is over its budget"
                    ),
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot delete unused modules; will retry");
            // Their bytes stay, so does their code.
            doomed.clear();
        }
    }
    // Compiled code is kept for every module still stored, and for those in
    // use even if their bytes are not (yet) stored.
    let deleted: HashSet<&String> = doomed.iter().collect();
    let mut keep: HashSet<String> = stored
        .into_iter()
        .map(|m| m.digest)
        .filter(|d| !deleted.contains(d))
        .collect();
    keep.extend(users.digests());
    match runtime.sweep_compiled(&keep) {
        Ok(s) if s.files > 0 => {
            tracing::debug!(files = s.files, bytes = s.bytes, "swept compiled code")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot sweep the compiled code cache; will retry"),
    }
    if state.uncompacted >= COMPACT_AFTER {
        let t0 = Instant::now();
        match local.compact() {
            Ok(_) => {
                tracing::info!(
                    freed = %flotilla_api::quantity::format_bytes(state.uncompacted),
                    took = ?t0.elapsed(),
                    "compacted node.redb"
                );
                state.uncompacted = 0;
            }
            Err(e) => tracing::warn!(error = %e, "cannot compact node.redb; will retry"),
        }
    }
    plan.next_expiry
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn entry(digest: &str, size: u64, last_used_ms: u64, in_use: bool) -> Entry {
        Entry {
            digest: digest.into(),
            size,
            last_used_ms,
            in_use,
        }
    }

    #[test]
    fn plans_delete_the_expired_then_the_least_recently_used() {
        let cfg = ModuleCacheConfig {
            budget: 100,
            grace: Duration::from_secs(600),
        };
        let now = 1_000 * MIN;
        let expired = |idle_min: u64| Reason::Unused(Duration::from_millis(idle_min * MIN));
        // (case, entries, deleted in order, bytes kept, next expiry in minutes)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Vec<Entry>, Vec<(&str, Reason)>, u64, Option<u64>)> = vec![
            ("nothing cached", vec![], vec![], 0, None),
            (
                "in use: kept however old",
                vec![entry("a", 10, 0, true)],
                vec![],
                10,
                None,
            ),
            (
                "unused within grace: kept until it ends",
                vec![entry("a", 10, now - 4 * MIN, false)],
                vec![],
                10,
                Some(6),
            ),
            (
                "unused for exactly the grace: deleted",
                vec![entry("a", 10, now - 10 * MIN, false)],
                vec![("a", expired(10))],
                0,
                None,
            ),
            (
                "the earliest grace end is the next expiry",
                vec![
                    entry("a", 10, now - 9 * MIN, false),
                    entry("b", 10, now - 2 * MIN, false),
                ],
                vec![],
                20,
                Some(1),
            ),
            (
                "over budget: least recently used first, until under",
                vec![
                    entry("new", 40, now - MIN, false),
                    entry("old", 40, now - 3 * MIN, false),
                    entry("mid", 40, now - 2 * MIN, false),
                ],
                vec![("old", Reason::OverBudget)],
                80,
                Some(8),
            ),
            (
                "over budget: modules in use are never deleted",
                vec![
                    entry("used", 90, 0, true),
                    entry("a", 20, now - 5 * MIN, false),
                    entry("b", 20, now - MIN, false),
                ],
                vec![("a", Reason::OverBudget), ("b", Reason::OverBudget)],
                90,
                None,
            ),
            (
                "in use alone over budget: kept, reported",
                vec![entry("huge", 500, 0, true)],
                vec![],
                500,
                None,
            ),
            (
                "expired ones do not count against the budget",
                vec![
                    entry("gone", 1000, now - 11 * MIN, false),
                    entry("a", 60, now - MIN, false),
                ],
                vec![("gone", expired(11))],
                60,
                Some(9),
            ),
            (
                "ties in last use: by digest",
                vec![
                    entry("b", 60, now - MIN, false),
                    entry("a", 60, now - MIN, false),
                ],
                vec![("a", Reason::OverBudget)],
                60,
                Some(9),
            ),
            (
                "a last use in the future counts as now",
                vec![entry("a", 10, now + 60 * MIN, false)],
                vec![],
                10,
                Some(70),
            ),
        ];
        for (name, entries, deleted, kept, next) in cases {
            let p = plan(&entries, &cfg, now);
            let want: Vec<(String, Reason)> =
                deleted.iter().map(|(d, r)| (d.to_string(), *r)).collect();
            assert_eq!(p.delete, want, "{name}");
            assert_eq!(p.kept, kept, "{name}");
            assert_eq!(
                p.next_expiry,
                next.map(|m| Duration::from_millis(m * MIN)),
                "{name}"
            );
        }
    }

    #[test]
    fn zero_grace_or_budget_keeps_nothing_unused() {
        let now = 5 * MIN;
        let entries = [entry("used", 10, now, true), entry("idle", 10, now, false)];
        for cfg in [
            ModuleCacheConfig {
                budget: DEFAULT_BUDGET,
                grace: Duration::ZERO,
            },
            ModuleCacheConfig {
                budget: 0,
                grace: DEFAULT_GRACE,
            },
        ] {
            let p = plan(&entries, &cfg, now);
            assert_eq!(p.delete.len(), 1, "{cfg:?}");
            assert_eq!(p.delete[0].0, "idle", "{cfg:?}");
            assert_eq!(p.kept, 10, "{cfg:?}");
        }
    }

    #[test]
    fn extreme_values_never_overflow() {
        let cfg = ModuleCacheConfig {
            budget: u64::MAX,
            grace: Duration::MAX,
        };
        let entries = [
            entry("a", u64::MAX, u64::MAX, false),
            entry("b", u64::MAX, 0, true),
        ];
        let p = plan(&entries[..1], &cfg, u64::MAX);
        assert!(p.delete.is_empty());
        assert_eq!(p.kept, u64::MAX);
        // Together they exceed even the largest budget; b is in use.
        for cfg in [cfg, ModuleCacheConfig::default()] {
            let p = plan(&entries, &cfg, 0);
            assert_eq!(p.delete, vec![("a".to_string(), Reason::OverBudget)]);
            assert_eq!(p.kept, u64::MAX);
        }
    }

    #[test]
    fn rounds_record_releases_and_delete_bytes_and_code() {
        let dir = tempfile::tempdir().expect("tmp");
        let local = LocalStore::open(&dir.path().join("node.redb")).expect("store");
        let runtime = Runtime::new(&dir.path().join("compiled")).expect("runtime");
        let wasm = std::fs::read(flotilla_workloads::path("hello")).expect("hello");
        for d in ["used", "idle"] {
            local.put_module(d, &wasm).expect("put");
            runtime.load(d, &wasm).expect("compile");
        }
        local
            .mark_released(&["used".into(), "idle".into()], 0)
            .expect("age them");
        let users = InUse::default();
        let used = users.acquire("used");
        let idle = users.acquire("idle");
        let mut state = State::default();
        let cfg = ModuleCacheConfig::default();
        let stored = |d: &str| local.module(d).expect("get").is_some();

        // Both in use, however old: kept.
        assert_eq!(round(&local, &runtime, &users, &cfg, &mut state), None);
        assert!(stored("used") && stored("idle"));
        // One released: its grace period starts now, not at its arrival.
        drop(idle);
        let next = round(&local, &runtime, &users, &cfg, &mut state).expect("an expiry");
        assert!(next > DEFAULT_GRACE - Duration::from_secs(60), "{next:?}");
        assert!(stored("idle") && runtime.compiled_size("idle") > 0);
        // With no grace, it goes, bytes and code; the one in use stays.
        let now = ModuleCacheConfig {
            grace: Duration::ZERO,
            ..cfg
        };
        assert_eq!(round(&local, &runtime, &users, &now, &mut state), None);
        assert!(!stored("idle") && runtime.compiled_size("idle") == 0);
        assert!(stored("used") && runtime.compiled_size("used") > 0);
        drop(used);
    }

    #[test]
    fn leases_count_users_per_module() {
        let in_use = InUse::default();
        let a1 = in_use.acquire("a");
        let a2 = in_use.acquire("a");
        let b = in_use.acquire("b");
        assert_eq!(in_use.digests().len(), 2);
        drop(a1);
        assert!(in_use.digests().contains("a"), "a second pod still uses a");
        drop(a2);
        drop(b);
        assert!(in_use.digests().is_empty());
    }
}
