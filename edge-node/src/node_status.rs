//! What the node says of itself in its Node object beyond identity:
//! what pods may use of the machine (`status.allocatable`, the pod limit),
//! which WASI interfaces its runtime gives guests (`status.interfaces`,
//! from [`crate::runtime::interfaces`]), and which modules' compiled code
//! it holds (`status.modules`) and which persistent volumes
//! (`status.volumes`), kept current by [`report_held`].

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

/// What the node holds that the scheduler wants to know of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// `status.modules`: [`held_modules`].
    pub modules: Vec<String>,
    /// `status.volumes`: [`crate::volumes::held`].
    pub volumes: Vec<String>,
    /// `status.code`: how the runtime came by its programs' code.
    pub code: flotilla_api::objects::CodeCounts,
}

/// What the node holds now.
pub fn held(local: &LocalStore, runtime: &Runtime, volumes: &crate::volumes::VolumeConfig) -> Held {
    Held {
        modules: held_modules(local, runtime),
        volumes: crate::volumes::held(volumes),
        code: runtime.code_counts(),
    }
}

/// What was last written to this node's Node object in the current
/// connection; None until the Node is registered (or after the connection
/// is lost): [`report_held`] waits for registration rather than race it.
pub type Reported = Arc<Mutex<Option<Held>>>;

/// What to write to the Node's status, if anything: what is held, when
/// the Node is registered and says otherwise.
pub fn held_update(held: &Held, reported: Option<&Held>) -> Option<Held> {
    match reported {
        Some(r) if r != held => Some(held.clone()),
        _ => None,
    }
}

/// Keeps `status.modules`, `status.volumes` and `status.code` of the node `name` current
/// until `stop` fires: every `MODULES_CHECK` (5 s) it looks at what is
/// held and, when it differs from what was reported, writes it (at most
/// one write per check, none while nothing changes).
pub async fn report_held(
    name: String,
    local: LocalStore,
    runtime: Runtime,
    volumes: crate::volumes::VolumeConfig,
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
        let (l, r, v) = (local.clone(), runtime.clone(), volumes.clone());
        let now = match tokio::task::spawn_blocking(move || held(&l, &r, &v)).await {
            Ok(h) => h,
            Err(_) => continue,
        };
        let last = reported.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(update) = held_update(&now, last.as_ref()) else {
            continue;
        };
        match write_held(&c, &name, update.clone()).await {
            Ok(()) => {
                let mut r = reported.lock().unwrap_or_else(|p| p.into_inner());
                // A new connection that registered meanwhile reported its own.
                if r.as_ref() == last.as_ref() {
                    *r = Some(update);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot report the modules and volumes held; will retry")
            }
        }
    }
}

/// Writes what is held to the node's status, as registration writes the
/// rest of what the node reports: read the Node, update its status.
async fn write_held(client: &Client, name: &str, held: Held) -> Result<(), NetError> {
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
    node.status.modules = held.modules;
    node.status.volumes = held.volumes;
    node.status.code = held.code;
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
    fn what_is_held_is_written_once_registered_and_only_when_changed() {
        let held = |m: &[&str], v: &[&str]| Held {
            modules: m.iter().map(|s| s.to_string()).collect(),
            volumes: v.iter().map(|s| s.to_string()).collect(),
            code: Default::default(),
        };
        let a = held(&["sha256:a"], &[]);
        let ab = held(&["sha256:a", "sha256:b"], &[]);
        let a_db = held(&["sha256:a"], &["default/db"]);
        let none = Held::default();
        // (held, reported, write)
        let cases = [
            (&a, None, None),
            (&a, Some(&a), None),
            (&ab, Some(&a), Some(ab.clone())),
            (&a_db, Some(&a), Some(a_db.clone())),
            (&none, Some(&a), Some(none.clone())),
            (&none, Some(&none), None),
        ];
        for (now, reported, want) in cases {
            assert_eq!(held_update(now, reported), want, "{now:?} {reported:?}");
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
