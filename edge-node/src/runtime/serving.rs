//! The engine http pods are served from: the node's engine configuration
//! (so the same compiled code loads in both) with wasmtime's pooling
//! allocator, which keeps a fixed set of instance slots — memories, tables,
//! stacks, instance metadata — reserved up front and hands one to each
//! request. A request then costs no `mmap` of its own, and a slot's memory
//! is reset (its pages given back to the kernel) when the request ends.
//!
//! The pool bounds the requests in flight on the node, across its http
//! pods: a request that finds every slot taken is answered `503` at once.
//! Its address space is reserved when the first http pod starts, not
//! before: a node that runs only command pods reserves nothing.
//!
//! On 64-bit machines each memory slot reserves 4 GiB of address space
//! (virtual, not memory), so 1,000 slots reserve about 4 TiB. 32-bit
//! machines have no room for that: there, and with `--http-slots 0`, http
//! pods are served from the node's engine, each request allocating its own
//! instance.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Instance slots of the pool by default: as many requests in flight as
/// `wasmtime serve` allows, on machines with the address space for them.
pub const DEFAULT_SLOTS: u32 = if cfg!(target_pointer_width = "64") {
    1000
} else {
    0
};

/// Core instances per request a component may use. A component built by
/// Rust's wasip2 target instantiates its module, the WASI adapter and a few
/// shims (4–6); this leaves room for compositions of several components.
const CORE_INSTANCES_PER_SLOT: u32 = 12;
/// Memories per request: a module's, an adapter's, and room for a second component.
const MEMORIES_PER_SLOT: u32 = 2;
/// Tables per request (the shims' function tables are small).
const TABLES_PER_SLOT: u32 = 4;

/// The serving engine's configuration: `base` (the node's engine
/// configuration) with a pool of `slots` request instances.
pub(super) fn config(mut base: Config, slots: u32, memory_reservation: u64) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    // A slot's memory lives in its reservation (4 GiB by default; less on
    // aarch64, see `device`).
    pool.max_memory_size(usize::try_from(memory_reservation.min(1 << 32)).unwrap_or(usize::MAX));
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
        .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
        .max_memories_per_component(MEMORIES_PER_SLOT)
        .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
        .max_tables_per_component(TABLES_PER_SLOT)
        .total_stacks(slots);
    base.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    base
}

/// The serving engine, or why there is none (the caller then serves from
/// the node's engine). `fingerprint` is the node engine's: code compiled for
/// one must load in the other.
pub(super) fn engine(
    base: Config,
    slots: u32,
    memory_reservation: u64,
    fingerprint: &str,
) -> Result<Engine, String> {
    if slots == 0 {
        return Err("the instance pool is off (--http-slots 0)".into());
    }
    let engine = Engine::new(&config(base, slots, memory_reservation))
        .map_err(|e| format!("cannot reserve {slots} instance slots: {e:#}; lower --http-slots"))?;
    let ours = super::cache::engine_fingerprint(&engine);
    if ours != fingerprint {
        return Err(format!(
            "the pooled engine's code ({ours}) differs from the node's ({fingerprint})"
        ));
    }
    Ok(engine)
}

/// Whether `e` is the pool running out of slots (a request too many).
pub(super) fn is_exhausted(e: &wasmtime::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_code_is_the_node_engines() {
        use super::super::device;
        let profile = device::profile(&device::Machine::this(), &device::Overrides::default())
            .expect("profile");
        let base = || super::super::compile::engine_config(&profile.code).expect("config");
        let node = Engine::new(&base()).expect("engine");
        let fingerprint = super::super::cache::engine_fingerprint(&node);
        let res = profile.code.memory_reservation;
        let pooled = engine(base(), 4, res, &fingerprint);
        assert!(pooled.is_ok(), "{pooled:?}");
        let off = engine(base(), 0, res, &fingerprint);
        assert!(off.unwrap_err().contains("--http-slots 0"));
    }
}
