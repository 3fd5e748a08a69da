//! Flotilla's edge node: runs WebAssembly pods on a device on behalf of the master.
//!
//! Layout:
//! - [`join`]: joining a cluster with a token; the node's credentials.
//! - [`agent`]: the kubelet: registers the Node, heartbeats, watches the pods
//!   bound here, starts and stops workers, reports status, serves logs.
//! - [`pod`]: one pod's lifecycle as a pure state machine.
//! - [`worker`]: performs a pod's actions (fetch, compile, run, back off).
//! - [`runtime`]: wasmtime: compiling, caching and running Wasm programs,
//!   and the WASI interfaces it gives guests ([`runtime::interfaces`]).
//! - [`node_status`]: what the node reports of itself beyond identity:
//!   allocatable resources, interfaces, the modules whose code it holds.
//! - [`local`]: the node's redb (its pods and modules), so pods survive a
//!   reboot while no master answers.
//! - [`module_gc`]: what the node keeps of modules no pod uses (memory at
//!   once; disk after a grace period, within a size budget).
//! - [`logs`]: bounded per-pod log buffers with followers.
//! - [`volumes`], [`data`]: a pod's directories, and the ConfigMaps and
//!   Secrets it reads (as files and as environment).
//! - [`memory`]: the pages of start-up code, handed back once the node has joined.
//! - [`network`]: what a pod's program may reach (`spec.network`), checked
//!   for every socket address it uses.

pub mod agent;
pub mod data;
pub mod join;
pub mod local;
pub mod logs;
pub mod memory;
pub mod module_gc;
pub mod network;
pub mod node_status;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod volumes;
pub mod worker;

pub use agent::NodeConfig;
pub use logs::LogLimits;
pub use module_gc::ModuleCacheConfig;
pub use node_status::Reserve;
pub use runtime::{CompileLimits, Deny};

/// Runs the node until `shutdown` fires ([`agent::run`]) in a data directory
/// only this user can reach: it holds the node's key, its pods' env values and
/// the native code it runs. A directory that exists keeps its mode; one
/// warning per path that others can reach says the `chmod` to run.
pub async fn run(
    cfg: NodeConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), NodeError> {
    flotilla_api::perms::create_dir(&cfg.data_dir).map_err(|e| {
        NodeError::Config(format!(
            "cannot create the data directory {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    for exposed in flotilla_api::perms::exposed(&cfg.data_dir) {
        tracing::warn!("{exposed}");
    }
    agent::run(cfg, shutdown).await
}

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Net(#[from] flotilla_api::net::NetError),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}
