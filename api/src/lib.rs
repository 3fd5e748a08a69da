//! Flotilla's shared vocabulary: the objects every part of the cluster speaks
//! about, the manifests users write, the wire protocol and the identities
//! that secure it.
//!
//! This crate does no I/O of its own (the optional `quic` feature adds thin
//! frame helpers over quinn streams; [`perms`] sets and checks file modes
//! with `std::fs`), so the master, the edge node and the CLI
//! can all depend on it without pulling each other in.
//!
//! Layout:
//! - [`time`]: millisecond timestamps that print as RFC 3339.
//! - [`quantity`]: `100m` CPUs and `64Mi` bytes.
//! - [`meta`]: the envelope every object carries (name, uid, labels, revisions).
//! - [`objects`]: Pod, Node, Module and the [`objects::Object`] sum type.
//! - [`selector`]: label selectors (`app=web,tier!=db`).
//! - [`manifest`]: multi-document YAML manifests and validation with field paths.
//! - [`protocol`]: requests, responses and length-prefixed postcard frames.
//! - [`config`]: the client configuration file (`~/.flotilla/config`).
//! - [`cron`]: CronJob schedules and when they next fire in a time zone.
//! - [`identity`]: the cluster CA, certificates, caller identities, join tokens.
//! - [`tls`]: rustls configurations for every hop (mutual TLS, CA pinning on join).
//! - [`perms`]: owner-only data directories and files, and the start-up check of them.
//! - `net` (feature `quic`): frame I/O over quinn streams.

pub mod config;
pub mod cron;
pub mod explain;
pub mod identity;
pub mod manifest;
pub mod meta;
#[cfg(feature = "quic")]
pub mod net;
pub mod objects;
pub mod perms;
pub mod protocol;
pub mod quantity;
pub mod selector;
pub mod time;
pub mod tls;

pub use meta::ObjectMeta;
pub use objects::{Kind, Module, Node, Object, Pod};

/// The `apiVersion` every Flotilla manifest carries.
pub const API_VERSION: &str = "flotilla.dev/v1";

/// Label keys the node sets on its own Node object.
pub mod labels {
    /// `amd64`, `arm64` or `arm`, as in Kubernetes' `kubernetes.io/arch`.
    pub const ARCH: &str = "flotilla.dev/arch";
    /// `linux`, as in Kubernetes' `kubernetes.io/os`.
    pub const OS: &str = "flotilla.dev/os";
    /// The node's name.
    pub const HOSTNAME: &str = "flotilla.dev/hostname";

    /// Labels a node may not set on itself, because they attract pods or
    /// claim a role: keys under `flotilla.dev/` (and its subdomains) or
    /// `node-role.`, except the three every node reports ([`ARCH`], [`OS`],
    /// [`HOSTNAME`]). Only admins set these.
    pub fn is_restricted_node_label(key: &str) -> bool {
        if [ARCH, OS, HOSTNAME].contains(&key) {
            return false;
        }
        let prefix = key.split_once('/').map_or("", |(p, _)| p);
        prefix == "flotilla.dev"
            || prefix.ends_with(".flotilla.dev")
            || key.starts_with("node-role.")
    }
}

/// Well-known annotation keys.
pub mod annotations {
    /// On a Node: when the node's certificate expires (RFC 3339), written
    /// by the node when it registers and after each renewal.
    pub const CERTIFICATE_EXPIRES: &str = "flotilla.dev/certificate-expires";
}

thread_local! {
    /// Set while an object is encoded for the wire and the store.
    static COMPACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with fields at their default left out of the JSON objects it
/// writes ([`is_default`]): how objects are encoded for the wire, raft and
/// the store, where every reader defaults a missing field.
pub(crate) fn compact<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            COMPACT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(COMPACT.with(|c| c.replace(true)));
    f()
}

/// Whether a field may be left out of an object's JSON: it is at its
/// type's default and the object is being encoded compactly ([`compact`]).
/// What people see (`-o json`, `-o yaml`) keeps every field.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    COMPACT.with(|c| c.get()) && *value == T::default()
}
