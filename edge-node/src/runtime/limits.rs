//! The per-run resource limiter: caps the host memory a pod's guest can
//! make the node allocate — its linear memories and its tables, counted
//! together against the pod's memory limit — and remembers whether the cap
//! was hit, so a run that dies of it reads as `OOMKilled`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::ResourceLimiter;

/// Most table elements one table may have. Each costs a pointer on the
/// host, so without a cap a guest could make the host allocate gigabytes.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Host bytes one table element costs, as counted against the pod's memory
/// limit: a pointer, rounded up for the table's bookkeeping. Without this a
/// guest under a 16 MiB limit made 64 tables of a million elements and
/// took half a gigabyte of the node.
const TABLE_ELEMENT_BYTES: u64 = 16;
/// Caps on how many instances, tables and memories one store may create.
/// A Rust command component uses a handful of each; these only stop abuse.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

/// A denied memory growth: what the guest asked for against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemoryDenial {
    pub limit: u64,
    /// Total linear memory of the run had the growth been allowed.
    pub requested: u64,
}

/// Error returned from `memory_growing` to trap the guest at the failing
/// `memory.grow` instead of letting it see -1 (a Rust guest would abort with
/// a less precise message; a C guest might carry on in a degraded state).
#[derive(Debug)]
struct MemoryLimitExceeded(MemoryDenial);

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit of {} exceeded (growth to {} denied)",
            flotilla_api::quantity::format_bytes(self.0.limit),
            flotilla_api::quantity::format_bytes(self.0.requested)
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// Counts the linear memory of all memories in one store against one limit.
#[derive(Debug)]
pub(super) struct Limiter {
    limit: Option<u64>,
    /// Bytes currently granted across all linear memories and tables of the store.
    used: u64,
    /// Bytes granted by the last `memory_growing` or `table_growing` call,
    /// returned if the growth then fails for another reason.
    last_grant: u64,
    denial: Option<MemoryDenial>,
    /// The pod's budget this store also draws on, when several stores run
    /// for one pod at once (an http pod's requests).
    pool: Option<Arc<Pool>>,
}

/// A memory budget that several stores draw on together: what an http
/// pod's concurrent requests may hold between them.
#[derive(Debug)]
pub(super) struct Pool {
    limit: u64,
    used: AtomicU64,
}

impl Pool {
    pub(super) fn new(limit: u64) -> Pool {
        Pool {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `delta` bytes if they fit, else says what the total would be.
    fn take(&self, delta: u64) -> Result<(), u64> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.saturating_add(delta);
                (total <= self.limit).then_some(total)
            })
            .map(|_| ())
            .map_err(|used| used.saturating_add(delta))
    }

    fn give_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

impl Limiter {
    pub(super) fn new(limit: Option<u64>) -> Self {
        Limiter::pooled(limit, None)
    }

    /// As [`Limiter::new`], drawing also on `pool`: a growth must fit both
    /// this store's own limit and what is left of the pool.
    pub(super) fn pooled(limit: Option<u64>, pool: Option<Arc<Pool>>) -> Self {
        Limiter {
            limit,
            used: 0,
            last_grant: 0,
            denial: None,
            pool,
        }
    }

    /// The growth that was refused, if the run hit its memory limit.
    pub(super) fn denial(&self) -> Option<MemoryDenial> {
        self.denial
    }

    /// Grants `delta` more bytes, or refuses past the limit (trapping the
    /// guest, and remembering why).
    fn grant(&mut self, delta: u64) -> wasmtime::Result<bool> {
        let requested = self.used.saturating_add(delta);
        if let Some(limit) = self.limit {
            if requested > limit {
                let denial = MemoryDenial { limit, requested };
                self.denial = Some(denial);
                return Err(wasmtime::Error::new(MemoryLimitExceeded(denial)));
            }
        }
        if let Some(pool) = &self.pool {
            if let Err(total) = pool.take(delta) {
                let denial = MemoryDenial {
                    limit: pool.limit,
                    requested: total,
                };
                self.denial = Some(denial);
                return Err(wasmtime::Error::new(MemoryLimitExceeded(denial)));
            }
        }
        self.used = requested;
        self.last_grant = delta;
        Ok(true)
    }
}

impl Limiter {
    /// Undoes the last grant, whose growth failed after all.
    fn take_back_last(&mut self) {
        self.used = self.used.saturating_sub(self.last_grant);
        if let Some(pool) = &self.pool {
            pool.give_back(self.last_grant);
        }
        self.last_grant = 0;
    }
}

impl Drop for Limiter {
    /// A store's memory goes with it: its share of the pool is free again.
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(self.used);
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // usize -> u64 is lossless on every target wasmtime supports.
        self.grant((desired as u64).saturating_sub(current as u64))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed by us but refused by wasmtime (e.g. past the memory's own
        // maximum): the guest sees -1, and the bytes were never used.
        self.used = self.used.saturating_sub(self.last_grant);
        self.last_grant = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let elements = (desired as u64).saturating_sub(current as u64);
        self.grant(elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back_last();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    #[test]
    fn counts_all_memories_against_one_limit() {
        let mut l = Limiter::new(Some(4 * PAGE as u64));
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(l.denial().is_none());
        assert!(l.memory_growing(2 * PAGE, 3 * PAGE, None).is_err());
        assert_eq!(
            l.denial(),
            Some(MemoryDenial {
                limit: 4 * PAGE as u64,
                requested: 5 * PAGE as u64
            })
        );
    }

    #[test]
    fn failed_growth_is_given_back() {
        let mut l = Limiter::new(Some(2 * PAGE as u64));
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(l
            .memory_grow_failed(wasmtime::Error::msg("past maximum"))
            .is_ok());
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(l.denial().is_none());
    }

    #[test]
    fn tables_count_against_the_memory_limit() {
        let mut l = Limiter::new(Some(16 << 20));
        // A million elements cost 16 MiB of host memory: one fits, with a
        // page of linear memory it does not.
        assert!(matches!(l.table_growing(0, 1 << 20, None), Ok(true)));
        assert!(l.memory_growing(0, PAGE, None).is_err());
        assert!(l.denial().is_some());
        let mut l = Limiter::new(Some(16 << 20));
        let granted = (0..64)
            .filter(|_| matches!(l.table_growing(0, 1 << 20, None), Ok(true)))
            .count();
        assert_eq!(granted, 1, "64 tables of a million elements under 16 MiB");
        // Past the element cap: refused outright, whatever the limit.
        let mut l = Limiter::new(None);
        assert!(matches!(l.table_growing(0, (1 << 20) + 1, None), Ok(false)));
        // A failed growth gives its bytes back.
        let mut l = Limiter::new(Some(16 << 20));
        assert!(matches!(l.table_growing(0, 1 << 20, None), Ok(true)));
        assert!(l.table_grow_failed(wasmtime::Error::msg("no")).is_ok());
        assert!(matches!(l.table_growing(0, 1 << 20, None), Ok(true)));
    }

    #[test]
    fn no_limit_allows_everything() {
        let mut l = Limiter::new(None);
        assert!(matches!(
            l.memory_growing(0, usize::MAX / 2, None),
            Ok(true)
        ));
        assert!(l.denial().is_none());
    }

    #[test]
    fn stores_of_one_pool_share_its_budget() {
        let pool = Arc::new(Pool::new(4 * PAGE as u64));
        let mut a = Limiter::pooled(Some(3 * PAGE as u64), Some(pool.clone()));
        let mut b = Limiter::pooled(Some(3 * PAGE as u64), Some(pool.clone()));
        assert!(matches!(a.memory_growing(0, 3 * PAGE, None), Ok(true)));
        // Within its own limit, but the pool has one page left.
        assert!(b.memory_growing(0, 2 * PAGE, None).is_err());
        assert_eq!(b.denial().map(|d| d.limit), Some(4 * PAGE as u64));
        let mut c = Limiter::pooled(Some(3 * PAGE as u64), Some(pool.clone()));
        assert!(matches!(c.memory_growing(0, PAGE, None), Ok(true)));
        // A store that goes gives its share back.
        drop(a);
        drop(c);
        let mut d = Limiter::pooled(Some(3 * PAGE as u64), Some(pool.clone()));
        assert!(matches!(d.memory_growing(0, 3 * PAGE, None), Ok(true)));
        // Its own limit still holds with the pool free.
        assert!(d.memory_growing(3 * PAGE, 4 * PAGE, None).is_err());
    }
}
