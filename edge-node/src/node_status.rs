//! What the node says of itself in its Node object beyond identity:
//! what pods may use of the machine (`status.allocatable`, the pod limit),
//! which WASI interfaces its runtime gives guests (`status.interfaces`,
//! from [`crate::runtime::interfaces`]), and which modules' compiled code
//! it holds (`status.modules`), kept current by [`report_modules`].

use crate::local::LocalStore;
use crate::runtime::Runtime;
use flotilla_api::net::{Client, NetError};
use flotilla_api::objects::NodeCapacity;
use flotilla_api::protocol::{Request, Response};
use flotilla_api::{Kind, Object};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// CPU kept back from pods for the agent by default: it mostly waits
/// (a heartbeat every 2 s, an epoch tick every 10 ms), but fetching,
/// reporting and serving logs must not starve behind busy pods.
pub const DEFAULT_RESERVE_CPU_MILLIS: u64 = 100;
/// Memory kept back from pods for the agent by default: its own footprint
/// (wasmtime's engine, the async runtime, QUIC, the node's redb) with room
/// to spare. Compiles run in a child under `--compile-memory`, which this
/// does not cover.
pub const DEFAULT_RESERVE_MEMORY: u64 = 64 << 20;
/// Kubernetes' default pod limit, the most a node takes by default.
pub const KUBERNETES_MAX_PODS: u32 = 110;
/// What a pod that requests nothing still costs the node, about: its
/// guest's linear memory (over 1 MiB for a Rust std program), its log
/// buffer (up to 512 KiB), the stack it runs on (up to 2 MiB) and
/// wasmtime's bookkeeping. The default pod limit allows one pod per this
/// much allocatable memory, so that a small device full of such pods still
/// fits in its memory.
pub const MEMORY_PER_POD: u64 = 8 << 20;
/// How often the modules whose code the node holds are looked at, and so
/// the most often they are written to the Node: compiles take seconds and
/// the module cache changes on a scale of minutes.
const MODULES_CHECK: Duration = Duration::from_secs(5);

/// What the node keeps of the machine for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve {
            cpu_millis: DEFAULT_RESERVE_CPU_MILLIS,
            memory_bytes: DEFAULT_RESERVE_MEMORY,
        }
    }
}

/// The default pod limit for a machine with this much memory for pods:
/// one pod per [`MEMORY_PER_POD`], at least one, at most Kubernetes' 110,
/// which a machine with about 1 GiB reaches.
pub fn default_max_pods(allocatable_memory: u64) -> u32 {
    let fits = allocatable_memory / MEMORY_PER_POD;
    u32::try_from(fits)
        .unwrap_or(u32::MAX)
        .clamp(1, KUBERNETES_MAX_PODS)
}

/// What pods may use: the machine less `reserve` (never below zero), and
/// `max_pods` pods, or [`default_max_pods`] of what is left when None
/// (Kubernetes' 110 when the machine's memory is unknown, 0). Returns
/// (capacity with the pod limit, allocatable).
pub fn resources(
    machine: NodeCapacity,
    reserve: Reserve,
    max_pods: Option<u32>,
) -> (NodeCapacity, NodeCapacity) {
    let memory = machine.memory_bytes.saturating_sub(reserve.memory_bytes);
    let pods = match (max_pods, machine.memory_bytes) {
        (Some(n), _) => n,
        (None, 0) => KUBERNETES_MAX_PODS,
        (None, _) => default_max_pods(memory),
    };
    let capacity = NodeCapacity { pods, ..machine };
    let allocatable = NodeCapacity {
        cpu_millis: machine.cpu_millis.saturating_sub(reserve.cpu_millis),
        memory_bytes: memory,
        pods,
    };
    (capacity, allocatable)
}

/// The digests of the modules whose compiled code the node holds (for this
/// engine), sorted: those stored in `node.redb` with code in the cache.
pub fn held_modules(local: &LocalStore, runtime: &Runtime) -> Vec<String> {
    let stored = match local.modules() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the cached modules");
            return Vec::new();
        }
    };
    let mut held: Vec<String> = stored
        .into_iter()
        .map(|m| m.digest)
        .filter(|d| runtime.compiled_size(d) > 0)
        .collect();
    held.sort();
    held.dedup();
    held
}

/// The modules last written to this node's Node object in the current
/// connection; None until the Node is registered (or after the connection
/// is lost): [`report_modules`] waits for registration rather than race it.
pub type Reported = Arc<Mutex<Option<Vec<String>>>>;

/// What to write to `status.modules`, if anything: the modules held, when
/// the Node is registered and says otherwise.
pub fn modules_update(held: &[String], reported: Option<&[String]>) -> Option<Vec<String>> {
    match reported {
        Some(r) if r != held => Some(held.to_vec()),
        _ => None,
    }
}

/// Keeps `status.modules` of the node `name` current until `stop` fires:
/// every `MODULES_CHECK` (5 s) it looks at the modules held and, when they
/// differ from what was reported, writes them (at most one write per
/// check, none while nothing changes).
pub async fn report_modules(
    name: String,
    local: LocalStore,
    runtime: Runtime,
    client: watch::Receiver<Option<Client>>,
    reported: Reported,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MODULES_CHECK) => {}
        }
        let Some(c) = client.borrow().clone() else {
            continue;
        };
        let (l, r) = (local.clone(), runtime.clone());
        let held = match tokio::task::spawn_blocking(move || held_modules(&l, &r)).await {
            Ok(h) => h,
            Err(_) => continue,
        };
        let last = reported.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(update) = modules_update(&held, last.as_deref()) else {
            continue;
        };
        match write_modules(&c, &name, update.clone()).await {
            Ok(()) => {
                let mut r = reported.lock().unwrap_or_else(|p| p.into_inner());
                // A new connection that registered meanwhile reported its own.
                if r.as_ref() == last.as_ref() {
                    *r = Some(update);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot report the modules held; will retry"),
        }
    }
}

/// Writes `modules` to the node's `status.modules`, as registration writes
/// the rest of what the node reports: read the Node, update its status.
async fn write_modules(client: &Client, name: &str, modules: Vec<String>) -> Result<(), NetError> {
    let mut node = match client
        .call(&Request::Get {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.to_string(),
            stale: false,
        })
        .await?
    {
        Response::Object(Object::Node(n)) => n,
        other => return Err(NetError::Unexpected(format!("{other:?}"))),
    };
    node.status.modules = modules;
    node.metadata.resource_version = 0;
    client
        .call(&Request::UpdateStatus(Object::Node(node)))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;

    fn machine(cpu_millis: u64, memory_bytes: u64) -> NodeCapacity {
        NodeCapacity {
            cpu_millis,
            memory_bytes,
            pods: 0,
        }
    }

    #[test]
    fn allocatable_is_the_machine_less_the_reserve() {
        let reserve = Reserve::default();
        // (machine, reserve, --max-pods, capacity.pods, allocatable)
        let cases = [
            // A Pi 4: 4 cores, 4 GiB; Kubernetes' limit.
            (
                machine(4000, 4 * GI),
                reserve,
                None,
                110,
                (3900, 4 * GI - 64 * MI, 110),
            ),
            // A Pi Zero 2: 512 MiB leaves room for 56 pods of 8 MiB.
            (
                machine(4000, 512 * MI),
                reserve,
                None,
                56,
                (3900, 448 * MI, 56),
            ),
            // The operator's limit wins.
            (
                machine(1000, 512 * MI),
                reserve,
                Some(5),
                5,
                (900, 448 * MI, 5),
            ),
            // A reserve larger than the machine leaves nothing, and one pod.
            (machine(1000, 32 * MI), reserve, None, 1, (900, 0, 1)),
            (
                machine(50, GI),
                Reserve {
                    cpu_millis: 100,
                    memory_bytes: 0,
                },
                None,
                110,
                (0, GI, 110),
            ),
            // Memory unknown: Kubernetes' limit.
            (machine(1000, 0), reserve, None, 110, (900, 0, 110)),
        ];
        for (m, reserve, max, pods, (cpu, mem, alloc_pods)) in cases {
            let (capacity, allocatable) = resources(m.clone(), reserve, max);
            assert_eq!(
                capacity,
                NodeCapacity { pods, ..m.clone() },
                "{m:?} {reserve:?} {max:?}"
            );
            assert_eq!(
                allocatable,
                NodeCapacity {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                    pods: alloc_pods
                },
                "{m:?} {reserve:?} {max:?}"
            );
        }
    }

    #[test]
    fn modules_are_written_once_registered_and_only_when_changed() {
        let a = vec!["sha256:a".to_string()];
        let ab = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        // (held, reported, write)
        #[allow(clippy::type_complexity)]
        let cases: [(&[String], Option<&[String]>, Option<Vec<String>>); 5] = [
            (&a, None, None),
            (&a, Some(&a), None),
            (&ab, Some(&a), Some(ab.clone())),
            (&[], Some(&a), Some(vec![])),
            (&[], Some(&[]), None),
        ];
        for (held, reported, want) in cases {
            assert_eq!(
                modules_update(held, reported),
                want,
                "{held:?} {reported:?}"
            );
        }
    }

    #[test]
    fn held_modules_are_those_stored_with_code() {
        let dir = tempfile::tempdir().expect("tmp");
        let local = LocalStore::open(&dir.path().join("node.redb")).expect("store");
        let runtime = Runtime::new(&dir.path().join("compiled")).expect("runtime");
        let wasm = std::fs::read(flotilla_workloads::path("hello")).expect("hello");
        local.put_module("sha256:b", &wasm).expect("put");
        local.put_module("sha256:a", &wasm).expect("put");
        assert!(
            held_modules(&local, &runtime).is_empty(),
            "nothing compiled yet"
        );
        runtime.load("sha256:b", &wasm).expect("compile");
        runtime.load("sha256:a", &wasm).expect("compile");
        // Code without stored bytes is not reported: it goes at the next sweep.
        runtime.load("sha256:c", &wasm).expect("compile");
        assert_eq!(held_modules(&local, &runtime), ["sha256:a", "sha256:b"]);
    }
}
