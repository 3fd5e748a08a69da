//! Flotilla's edge node: runs WebAssembly pods on a device on behalf of the master.
//!
//! Layout:
//! - [`join`]: joining a cluster with a token; the node's credentials.
//! - [`agent`]: the kubelet: registers the Node, heartbeats, watches the pods
//!   bound here, starts and stops workers, reports status, serves logs.
//! - [`pod`]: one pod's lifecycle as a pure state machine.
//! - [`worker`]: performs a pod's actions (fetch, compile, run, back off).
//! - [`runtime`]: wasmtime: compiling, caching and running Wasm programs.
//! - [`local`]: the node's redb (its pods and modules), so pods survive a
//!   reboot while no master answers.
//! - [`logs`]: bounded per-pod log buffers with followers.

pub mod agent;
pub mod join;
pub mod local;
pub mod logs;
pub mod pod;
pub mod runtime;
pub mod worker;

pub use agent::{run, NodeConfig};

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
