//! `flotilla`: the one binary. It runs a master (`flotilla master`), an edge
//! node (`flotilla node`), both in one process (`flotilla up`), and is the
//! kubectl-like client for everything else.
//!
//! Layout:
//! - `main.rs`: the command line and process wiring (signals, logging).
//! - [`commands`]: the client commands (apply, diff, get, describe, logs, delete, token).
//! - [`listing`]: what `get` does with what it lists, the same for every
//!   kind (addressing, selectors, sorting, output formats, table shape);
//!   [`jsonpath`]: kubectl's JSONPath templates.
//! - [`verbs`]: `label`, `annotate`, `patch`, `edit`, `wait`, `version`,
//!   `api-resources`, `cluster-info`.
//! - [`describe`]: `describe` laid out as kubectl's.
//! - [`diff`]: unified diffs for `flotilla diff`.
//! - [`complete`]: shell completion of kinds and object names.
//! - [`nodes`]: `taint`, `cordon`, `uncordon`: what admins change on a node.
//! - [`output`]: tables, YAML and JSON.
//! - [`workloads`]: `scale` and `rollout`, for Deployments and ReplicaSets.
//! - [`hollow`]: `hollow-nodes`, simulated nodes for testing masters at scale.

mod commands;
mod complete;
mod describe;
mod diff;
#[cfg(feature = "node")]
mod hollow;
mod jsonpath;
mod listing;
mod nodes;
mod output;
mod users;
mod verbs;
mod workloads;

use clap::{Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version,
    about = "Orchestrates WebAssembly pods on edge devices",
    propagate_version = true
)]
struct Cli {
    /// Client config file (masters, CA, credentials) [default: $FLOTILLA_CONFIG, else ~/.flotilla/config].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a master: the store, the API service, binding and node lifecycle.
    #[cfg(feature = "master")]
    Master(MasterArgs),
    /// Run an edge node agent that runs pods.
    #[cfg(feature = "node")]
    Node(NodeArgs),
    /// Run a master and a node in one process (a laptop, a single Pi).
    #[cfg(all(feature = "master", feature = "node"))]
    Up(UpArgs),
    /// Create or update objects from manifest files.
    Apply {
        #[command(flatten)]
        manifests: Manifests,
        /// Put every namespaced object in this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Create the namespaces the objects are in when they do not exist.
        #[arg(long)]
        create_namespace: bool,
        /// Say what would be done, uploading and writing nothing: `client`
        /// checks the manifests, modules and what exists; `server` has the
        /// master check each object too, as it would check the write.
        #[arg(long, value_enum, default_value = "none", default_missing_value = "client", num_args = 0..=1, require_equals = true)]
        dry_run: commands::DryRun,
    },
    /// Show what `apply -f` would change, as a unified diff per object
    /// (exit 1 when something would change).
    Diff {
        #[command(flatten)]
        manifests: Manifests,
        /// Put every namespaced object in this namespace, as `apply -n` does.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Create an object from the command line: `create namespace NAME`,
    /// `create configmap NAME --from-literal k=v --from-file path`,
    /// `create secret generic NAME --from-literal k=v --from-file path`,
    /// `create secret tls NAME --cert FILE --key FILE`.
    Create {
        /// `namespace` (`ns`), `configmap` (`cm`) or `secret`.
        kind: String,
        /// The object's name (for a secret: `generic` or `tls`, then the name).
        name: String,
        /// A secret's name, after `generic` or `tls`.
        secret_name: Option<String>,
        /// A TLS secret's certificate chain, PEM.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// A TLS secret's private key, PEM.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A key and its value, `KEY=VALUE` (repeatable).
        #[arg(long = "from-literal", value_name = "KEY=VALUE")]
        from_literal: Vec<String>,
        /// A file as a key: `PATH` (the key is its file name) or
        /// `KEY=PATH` (repeatable).
        #[arg(long = "from-file", value_name = "[KEY=]PATH")]
        from_file: Vec<String>,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// List objects: pods, nodes or modules.
    Get(commands::GetArgs),
    /// Show an object in detail.
    Describe {
        /// A kind (with NAME), or KIND/NAME.
        #[arg(add = ArgValueCompleter::new(complete::Objects))]
        kind: String,
        #[arg(add = ArgValueCompleter::new(complete::Objects))]
        name: Option<String>,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// Print a pod's logs (kept on its node, across restarts of the node).
    Logs(commands::LogsArgs),
    /// Delete objects by kind and name, or those in manifest files.
    Delete {
        /// `KIND NAME…`, `KIND/NAME…`, or a kind with --all or -l.
        #[arg(value_name = "KIND [NAME…] | KIND/NAME…", add = ArgValueCompleter::new(complete::Objects))]
        targets: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Read the subdirectories of directories given with -f too.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
        /// Every object of the kind in the namespace.
        #[arg(long)]
        all: bool,
        /// The objects of the kind these labels select, e.g. app=web.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// With --all or -l: in every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// What becomes of the objects it owns (a Deployment's ReplicaSets,
        /// their pods): `background` deletes them soon after, `foreground`
        /// before the owner goes, `orphan` keeps them, without the
        /// reference to the owner.
        #[arg(long, value_enum, default_value = "background")]
        cascade: workloads::Cascade,
        /// Wait until an object that waits for its finalizers (a namespace
        /// being emptied, an owner deleted in the foreground) is gone.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        wait: bool,
        /// How long --wait waits, e.g. 90s or 5m.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Set or remove labels: `label pod/hello tier=db`, `label pod hello tier-`.
    Label(MetadataChange),
    /// Set or remove annotations: `annotate deploy/web note='moved to pi-3'`.
    Annotate(MetadataChange),
    /// Change an object with a JSON merge patch: `patch deploy web -p '{"spec":{"replicas":3}}'`.
    Patch {
        /// KIND NAME or KIND/NAME.
        #[arg(required = true, num_args = 1..=2, value_name = "KIND/NAME", add = ArgValueCompleter::new(complete::Objects))]
        target: Vec<String>,
        /// The patch, JSON (or YAML): keys it sets replace, `null` removes.
        #[arg(short, long)]
        patch: String,
        /// Only `merge` (RFC 7386), the patch kubectl takes with --type merge.
        #[arg(long, default_value = "merge")]
        r#type: String,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// Edit an object's YAML in $EDITOR (or FLOTILLA_EDITOR, KUBE_EDITOR)
    /// and save it back: `edit deploy/web`.
    Edit {
        /// KIND NAME or KIND/NAME.
        #[arg(required = true, num_args = 1..=2, value_name = "KIND/NAME", add = ArgValueCompleter::new(complete::Objects))]
        target: Vec<String>,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// Wait for objects: `wait --for=condition=Ready pod/web`, `--for=delete`,
    /// `--for=jsonpath='{.status.phase}'=Succeeded`.
    Wait {
        /// KIND NAME..., or KIND/NAME...
        #[arg(required = true, value_name = "KIND/NAME", add = ArgValueCompleter::new(complete::Objects))]
        targets: Vec<String>,
        /// condition=NAME[=true|false], delete, or jsonpath=PATH=VALUE.
        #[arg(long = "for")]
        until: String,
        /// How long to wait at most, e.g. 30s or 5m.
        #[arg(long, default_value = "30s")]
        timeout: String,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// The client's release and the master's.
    Version,
    /// The kinds the cluster knows, their short names and scope.
    ApiResources,
    /// The fields of a kind's manifests and what they mean: `explain pod`,
    /// `explain deploy.spec.strategy` (from the types that read manifests).
    Explain {
        /// `KIND`, or `KIND.field.field...`.
        #[arg(add = ArgValueCompleter::new(complete::Fields))]
        path: String,
        /// Every field below, as a tree.
        #[arg(long)]
        recursive: bool,
    },
    /// Where the masters are, which leads, and how many nodes are Ready.
    ClusterInfo,
    /// Set the replicas of a Deployment or ReplicaSet: `scale deploy/web --replicas 3`.
    Scale {
        /// `KIND/NAME`, or `KIND NAME`.
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(long)]
        replicas: u32,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// Make a Service for a deployment's (replicaset's, daemonset's) pods,
    /// or a pod: `expose deployment web --port 8080`.
    Expose {
        /// `KIND/NAME`, or `KIND NAME`.
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        /// The port every node serves for the Service.
        #[arg(long)]
        port: u16,
        /// The pods' port (TCP pods); the same as --port when left out.
        #[arg(long)]
        target_port: Option<u16>,
        /// The Service's name; the object's name when left out.
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, default_value_t = crate::default_namespace())]
        namespace: String,
    },
    /// Rollouts of a Deployment: status, history, undo, pause, resume, restart.
    #[command(subcommand)]
    Rollout(workloads::RolloutCommand),
    /// Add or remove taints on a node: `taint node pi-1 dedicated=gpu:NoSchedule`
    /// adds one, `dedicated:NoSchedule-` removes it, `dedicated-` removes every effect.
    Taint {
        /// `node`.
        kind: String,
        name: String,
        /// `key=value:Effect`, `key:Effect`, `key:Effect-` or `key-`.
        #[arg(required = true, allow_hyphen_values = true)]
        taints: Vec<String>,
    },
    /// Mark a node unschedulable: no new pods are placed on it.
    Cordon { name: String },
    /// Let new pods be placed on a cordoned node again.
    Uncordon { name: String },
    /// Cordon a node and evict its pods: their owners make them again on
    /// other nodes (before maintenance, or to retire the node).
    Drain {
        name: String,
        /// Also delete pods no controller owns (they are not made again).
        #[arg(long)]
        force: bool,
    },
    /// Join tokens for new nodes and masters.
    #[command(subcommand)]
    Token(TokenCommand),
    /// People and scripts with configs of their own, roles and revocation
    /// (`flotilla get users` lists them).
    #[command(subcommand)]
    User(UserCommand),
    /// The masters' raft cluster: members, leader, membership changes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The client config: its identity and certificate, and renewal.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish).
    Completion { shell: clap_complete::Shell },
    /// Testing tool: simulate many nodes in this process (Kubernetes' kubemark).
    ///
    /// Hollow nodes join, register, heartbeat and report their pods Running
    /// (then Succeeded with --succeed-after) but run nothing: for testing
    /// masters at scale, never for real workloads.
    #[cfg(feature = "node")]
    HollowNodes(hollow::HollowArgs),
    /// Internal: compiles the module on stdin to native code on stdout for
    /// the node agent, which runs it under its compile limits.
    #[cfg(feature = "node")]
    #[command(name = flotilla_node::runtime::compile::SUBCOMMAND, hide = true)]
    Compile(CompileArgs),
}

#[cfg(feature = "node")]
#[derive(clap::Args, Debug)]
struct CompileArgs {
    /// Print the engine's fingerprint and exit.
    #[arg(long)]
    probe: bool,
    /// The node's code target (TARGET,CPU,RESERVATION,GUARD): the engine
    /// is set up as the node's.
    #[arg(long)]
    engine: String,
    /// The fingerprint of the node's engine; the code is compiled only for it.
    #[arg(long, required_unless_present = "probe", requires = "output")]
    fingerprint: Option<String>,
    /// The new file to write the compiled code to.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The manifests `apply` and `diff` read.
#[derive(clap::Args, Debug)]
struct Manifests {
    /// Manifest files (YAML, several documents each), directories of
    /// them (.yaml, .yml, .json); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Read the subdirectories of directories given with -f too.
    #[arg(short = 'R', long)]
    recursive: bool,
}

impl Manifests {
    /// The files, directories expanded.
    fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        commands::expand_files(&self.files, self.recursive)
    }
}

/// Arguments of `label` and `annotate`.
#[derive(clap::Args, Debug)]
struct MetadataChange {
    /// KIND NAME or KIND/NAME, then KEY=VALUE (set) or KEY- (remove)...
    #[arg(required = true, num_args = 1.., value_name = "KIND/NAME KEY=VALUE|KEY-", add = ArgValueCompleter::new(complete::Objects))]
    args: Vec<String>,
    #[arg(short, long, default_value_t = crate::default_namespace())]
    namespace: String,
    /// Replace a value that is there already.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a join token; prints it (and the node command that uses it).
    Create {
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A token for a new master (`flotilla master --join`) instead of a
        /// node. It hands out the cluster CA's key: keep it as secret as the key.
        #[arg(long)]
        master: bool,
        /// A token for a node of this name only, which may take over the
        /// name from a node that joined before (a machine that replaces it).
        #[arg(long, conflicts_with = "master")]
        node: Option<String>,
        /// How many nodes may join with it (e.g. 1 for a one-use token);
        /// without it, as many as come before it expires.
        #[arg(long, conflicts_with_all = ["master", "node"])]
        uses: Option<u32>,
        /// Only nodes whose names start with this may join with it (e.g. `pi-`).
        #[arg(long, conflicts_with_all = ["master", "node"])]
        name_prefix: Option<String>,
    },
    /// List the join tokens: id, kind, description, expiry (never the secret).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: output::Format,
    },
    /// Revoke a join token by its id (or the whole token): nothing more
    /// joins with it; what joined with it keeps its certificate.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Make a user and write a client config for it (a key made here, a
    /// certificate signed by the cluster CA): hand the file to the user.
    Create {
        name: String,
        /// admin (anything), operator (runs workloads: writes the objects of
        /// namespaces and uploads modules) or viewer (reads, but not a
        /// Secret's values).
        #[arg(long)]
        role: String,
        /// The one namespace the user may work in (its config's default);
        /// without it, every namespace.
        #[arg(long = "namespace", short = 'n')]
        namespace: Option<String>,
        /// How long its certificates live, e.g. 90d, 12h; renewed after two
        /// thirds of it. Default: the master's --cert-lifetime.
        #[arg(long)]
        lifetime: Option<String>,
        /// Where to write the config [default: ./NAME.config]; `-` for
        /// standard output. An existing file is not replaced.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Revoke a user: every master refuses its certificates from now on
    /// (delete it afterwards to reuse its name).
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Show the config's cluster, masters, identity and certificate expiry (no keys).
    View,
    /// Replace the config's certificate with a new one (and a new key) from
    /// the master, while the current one is still valid.
    Renew,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Show the masters, the leader, the term, the commit index and each member's lag.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: output::Format,
    },
    /// Remove a master from the membership (by its id, from `cluster status`).
    Remove { node_id: u64 },
    /// Save a backup of the whole cluster state to FILE (restore it with
    /// `flotilla master --restore FILE`).
    Snapshot { file: PathBuf },
}

#[cfg(feature = "master")]
#[derive(clap::Args, Debug)]
struct MasterArgs {
    #[arg(long, default_value = "./flotilla-master")]
    data_dir: PathBuf,
    /// Address to listen on (UDP, QUIC).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: std::net::SocketAddr,
    /// Address clients and nodes use to reach this master (repeatable); default: the listen address.
    #[arg(long)]
    advertise: Vec<String>,
    #[arg(long, default_value = "flotilla")]
    cluster_name: String,
    /// This master's raft node id, unique among the cluster's masters
    /// [default: the one kept in --data-dir; else 1 when founding a cluster,
    /// or one the cluster picks when joining].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// Join the cluster of the master at this host:port (with --token)
    /// instead of founding a new one. Only the first start needs it.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// A master join token from `flotilla token create --master`.
    #[arg(long, env = "FLOTILLA_TOKEN", requires = "join")]
    token: Option<String>,
    /// Found a new cluster from a backup made with `flotilla cluster
    /// snapshot` (the data directory must be new).
    #[arg(long, conflicts_with = "join")]
    restore: Option<PathBuf>,
    /// A node silent this long is NotReady, e.g. 20s.
    #[arg(long, default_value = "20s")]
    node_grace: String,
    /// A module no pod has used for this long is removed from the cluster
    /// (at least 1s). `flotilla get modules` shows which are in use.
    #[arg(long, default_value = "10m")]
    module_grace: String,
    /// Events last seen longer ago than this are deleted, e.g. 1h.
    #[arg(long, default_value = "1h")]
    event_ttl: String,
    /// Most Events kept; the oldest beyond it are deleted.
    #[arg(long, default_value_t = 10_000)]
    max_events: usize,
    /// Raft election timeout, 50ms to 60s: followers that hear nothing from
    /// the leader for 1.5 to 2 times this elect a new one, and the leader
    /// heartbeats every third of it. Raise it for slow or lossy links
    /// between masters; give every master the same value.
    #[arg(long, default_value = "250ms")]
    election_timeout: String,
    /// Initialise the data directory (CA, certificates, admin config) and exit.
    #[arg(long)]
    init: bool,
    /// Lifetime of the certificates this master issues to nodes, users and
    /// itself, e.g. 365d, 90d; renewed after two thirds of it.
    #[arg(long, default_value = "365d")]
    cert_lifetime: String,
    /// Replace a client config (--config) that belongs to another cluster;
    /// without it the master refuses to start rather than overwrite it.
    #[arg(long)]
    replace_config: bool,
}

#[cfg(feature = "node")]
#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// A master's host:port (repeatable); more are learned when joining.
    #[arg(long = "master")]
    masters: Vec<String>,
    /// Join token from `flotilla token create` (only needed the first time).
    #[arg(long, env = "FLOTILLA_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "./flotilla-node")]
    data_dir: PathBuf,
    /// Node name; default: the host name.
    #[arg(long)]
    name: Option<String>,
    /// Extra node labels, key=value (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Most disk kept for modules and their compiled code, e.g. 512Mi or 2Gi;
    /// modules no pod uses are deleted, least recently used first, to stay under it.
    #[arg(long, default_value = "512Mi")]
    module_cache_size: String,
    /// How long a module no pod uses is kept on disk, e.g. 10m; 0s deletes it at once.
    #[arg(long, default_value = "10m")]
    module_cache_grace: String,
    /// Size at which a pod's log file is rotated, e.g. 1Mi or 10Mi.
    #[arg(long, default_value = "1Mi")]
    log_max_size: String,
    /// Log files kept per run of a pod's program (the one written and
    /// the rotated ones), at least 2; the current run and the one before
    /// it (`logs --previous`) are kept.
    #[arg(long, default_value_t = 2)]
    log_max_files: u32,
    /// Most memory compiling one module may take, e.g. 512Mi or 2Gi; a module
    /// that needs more fails its pod with reason CompileLimit
    /// [default: half the machine's memory, at most 1Gi].
    #[arg(long)]
    compile_memory: Option<String>,
    /// Longest compiling one module may take, e.g. 60s or 5m; a module that
    /// takes longer fails its pod with reason CompileLimit.
    #[arg(long, default_value = "60s")]
    compile_timeout: String,
    #[command(flatten)]
    offer: OfferArgs,
}

/// What a node offers pods: its resources less a reserve, a pod limit, and
/// the WASI interfaces it links for guests (`node` and `up`).
#[cfg(feature = "node")]
#[derive(clap::Args, Debug)]
struct OfferArgs {
    /// Withhold WASI interfaces from this node's guests (repeatable): an
    /// interface without its version, or a prefix ending at a name part,
    /// e.g. wasi:sockets, wasi:filesystem or wasi_snapshot_preview1. They are
    /// not linked, so a guest importing one fails with StartError, and not
    /// listed in the Node's status.interfaces, so pods that import them are
    /// placed elsewhere.
    #[arg(long = "deny", value_name = "PREFIX")]
    deny: Vec<String>,
    /// CPU kept for the node agent, not offered to pods, e.g. 100m or 0.5.
    #[arg(long, default_value = "100m")]
    reserve_cpu: String,
    /// Memory kept for the node agent, not offered to pods, e.g. 64Mi; raise
    /// it for what else runs on the machine (a master, with `up`).
    #[arg(long, default_value = "64Mi")]
    reserve_memory: String,
    /// Most pods bound to this node [default: one per 8Mi of memory left
    /// after the reserve, at most 110 as Kubernetes: a pod that requests
    /// nothing still costs its guest's memory, a log buffer and a stack].
    #[arg(long, value_name = "N")]
    max_pods: Option<u32>,
    /// Host directories pods may mount as hostPath volumes, with what is
    /// under them (comma-separated or repeated), e.g. /srv/data,/dev/serial;
    /// none by default.
    #[arg(long = "allow-host-path", value_name = "DIR", value_delimiter = ',')]
    allow_host_path: Vec<PathBuf>,
    /// The address the node proxy serves Service ports (and the host port)
    /// on; every address by default.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    proxy_address: std::net::IpAddr,
    /// The UDP port other nodes' proxies forward requests to this one on
    /// (QUIC, mutual TLS); 0 picks a free one.
    #[arg(long, value_name = "PORT", default_value_t = flotilla_node::proxy::DEFAULT_PEER_PORT)]
    proxy_peer_port: u16,
    /// The address other nodes reach this one at [default: --proxy-address,
    /// or when that is every address, the one this machine reaches its
    /// master from].
    #[arg(long, value_name = "IP")]
    advertise_address: Option<std::net::IpAddr>,
    /// The Service ports this node listens on, LOW-HIGH; a Service port
    /// outside is not served here.
    #[arg(long, value_name = "LOW-HIGH", default_value = "1024-65535")]
    service_ports: String,
    /// The shared port that routes HTTP by Host header to the Services that
    /// name host names (spec.hosts); 0 turns host routing off.
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    host_port: u16,
    /// The shared port that routes HTTPS by Host header to the Services that
    /// name host names and a TLS Secret (spec.tls); 0 turns it off.
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    host_tls_port: u16,
    /// Run no proxy on this node: it serves no Service port (its http pods
    /// are still reached through other nodes).
    #[arg(long)]
    no_proxy: bool,
    /// Requests the node's http pods may serve at once, all pods together:
    /// the slots of the instance pool each request takes one of (each
    /// reserves address space for two memories, not memory); a request
    /// beyond gets 503. 0 turns the pool off: each request then allocates
    /// its own instance [default: by device class: 64 tiny, 256 small,
    /// 1000 standard, fewer where the address space is short; 0 on 32-bit].
    #[arg(long, value_name = "N")]
    http_slots: Option<u32>,
    /// The device class the engine is set up for: tiny, small or standard
    /// [default: from the machine's memory: under 1.5Gi tiny, under 6Gi
    /// small].
    #[arg(long, value_name = "CLASS")]
    device_class: Option<String>,
    /// The CPU features compiled code may use: baseline (any CPU of the
    /// architecture, so masters can compile it for the node) or native
    /// (this CPU's) [default: native on x86_64, baseline elsewhere].
    #[arg(long, value_name = "CPU")]
    engine_cpu: Option<String>,
    /// Address space reserved for each WebAssembly memory, e.g. 128Mi or
    /// 4Gi: with less than 4Gi, code checks bounds itself [default: 4Gi on
    /// x86_64, 128Mi on aarch64, 10Mi on 32-bit].
    #[arg(long, value_name = "BYTES")]
    memory_reservation: Option<String>,
    /// Guard region after each WebAssembly memory, e.g. 2Mi [default: 32Mi
    /// on x86_64, 2Mi on aarch64, none under Pulley].
    #[arg(long, value_name = "BYTES")]
    memory_guard: Option<String>,
    /// Worker threads that run the node's pods [default: 1 tiny, 2 small,
    /// one per core standard].
    #[arg(long, value_name = "N")]
    runtime_threads: Option<u32>,
    /// Compile every module on this node rather than load the code a master
    /// compiled for its engine.
    #[arg(long)]
    no_precompiled_code: bool,
}

#[cfg(all(feature = "master", feature = "node"))]
#[derive(clap::Args, Debug)]
struct UpArgs {
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: std::net::SocketAddr,
    #[arg(long)]
    name: Option<String>,
    /// Replace a client config (--config) that belongs to another cluster.
    #[arg(long)]
    replace_config: bool,
    #[command(flatten)]
    offer: OfferArgs,
}

/// A binary that can run a master allocates with mimalloc: under load the
/// master's QUIC and raft traffic spent about 30% of its CPU in glibc's
/// malloc and free (measured with perf on the raft benchmark). Built with
/// `--cfg flotilla_system_alloc`, it keeps glibc's, for heap profilers.
#[cfg(all(feature = "master", not(flotilla_system_alloc)))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The namespace of the client config, read before the command line is
/// parsed (it is `-n`'s default).
static CONFIG_NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What `-n` is when it is not given: the client config's namespace (a user
/// limited to one namespace has it there), else `default`.
fn default_namespace() -> String {
    config_namespace_given().unwrap_or_else(|| flotilla_api::meta::DEFAULT_NAMESPACE.to_string())
}

/// The client config's namespace, if it names one: where `apply` and
/// `diff` put what they read, as with `-n`, for a user limited to it.
fn config_namespace_given() -> Option<String> {
    CONFIG_NAMESPACE.get().filter(|ns| !ns.is_empty()).cloned()
}

/// The namespace named by the client config the command line (`--config
/// FILE`), the environment or the default path points at; empty if none.
/// A config that cannot be read names none (the command says why later).
fn config_namespace(args: &[String]) -> String {
    let mut path = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(v));
        } else if a == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        }
    }
    let path = path.unwrap_or_else(flotilla_api::config::default_path);
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| flotilla_api::config::ClientConfigFile::parse(&t).ok())
        .map(|c| c.namespace)
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = CONFIG_NAMESPACE.set(config_namespace(&args));
    // A shell asking for completions (`COMPLETE=bash flotilla -- WORDS`)
    // is answered here, and the process ends.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
                if let Some(advice) = args.iter().find_map(|a| kubectl_advice(a)) {
                    eprintln!("error: {advice}");
                    return ExitCode::from(2);
                }
            }
            e.exit()
        }
    };
    // A compiler child needs no async runtime, logging or TLS: it reads,
    // compiles and writes, under the memory limit its node gave it.
    #[cfg(feature = "node")]
    if let Command::Compile(a) = &cli.command {
        return compile_child(a);
    }
    if cli.command.is_client() {
        quiet_broken_pipe();
    }
    #[cfg(all(feature = "master", not(flotilla_system_alloc)))]
    if matches!(cli.command, Command::Node(_)) {
        lean_allocator();
    }
    #[cfg(feature = "master")]
    if cli.command.runs_master() {
        no_huge_pages();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // A node runs as many workers as its device class (or flag) says: a Pi
    // needs no thread per core. Bad flags are reported by the command.
    #[cfg(feature = "node")]
    if let Command::Node(a) = &cli.command {
        if let Ok(p) = engine_profile(&a.offer) {
            builder.worker_threads(p.runtime_threads.max(1) as usize);
        }
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a message that already quotes
/// its cause is not followed by it again.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
    }
    out
}

impl Command {
    /// Whether this command runs a master in its own process.
    #[cfg(feature = "master")]
    fn runs_master(&self) -> bool {
        match self {
            Command::Master(_) => true,
            #[cfg(feature = "node")]
            Command::Up(_) => true,
            _ => false,
        }
    }

    /// Whether this command prints for a pipe (`flotilla get pods | head`) rather than running a service.
    fn is_client(&self) -> bool {
        match self {
            #[cfg(feature = "master")]
            Command::Master(_) => false,
            #[cfg(feature = "node")]
            Command::Node(_) => false,
            #[cfg(all(feature = "master", feature = "node"))]
            Command::Up(_) => false,
            #[cfg(feature = "node")]
            Command::HollowNodes(_) => false,
            _ => true,
        }
    }
}

/// A reader that closes early (`| head`) ends a client command quietly, as
/// with other Unix tools, instead of a panic inside `println!`.
#[allow(unsafe_code)]
fn quiet_broken_pipe() {
    // SAFETY: called at the start of `main`, before any other thread exists;
    // it only restores the default disposition of SIGPIPE, which Rust's
    // runtime set to "ignore".
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A node process (no master in it) wants mimalloc to give memory back
/// rather than keep it for speed: arenas committed as they are used, and
/// freed pages returned at once. An idle node then holds about 3 MiB of
/// heap instead of about 20 (docs/architecture.md, "Edge builds"); a master keeps mimalloc's
/// defaults, which its throughput was measured with (but no huge pages:
/// [`no_huge_pages`]). mimalloc reads its
/// options from the environment before `main` runs, so the process puts
/// them there and executes itself again, once (same PID, arguments and
/// descriptors); options the user set are left as they are. If that fails
/// the node runs on as it is.
#[cfg(all(feature = "master", not(flotilla_system_alloc)))]
fn lean_allocator() {
    use std::os::unix::process::CommandExt;
    const LEAN: [(&str, &str); 2] = [
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
        ("MIMALLOC_PURGE_DELAY", "0"),
    ];
    if LEAN.iter().all(|(k, _)| std::env::var_os(k).is_some()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut again = std::process::Command::new(exe);
    again.args(std::env::args_os().skip(1));
    for (k, v) in LEAN {
        if std::env::var_os(k).is_none() {
            again.env(k, v);
        }
    }
    // Returns only if the exec failed.
    let _ = again.exec();
}

/// A master's heap is mostly small objects per node (QUIC and TLS state,
/// tasks, cached objects) spread over many pages. mimalloc asks the kernel
/// for transparent huge pages where it may, and a 2 MiB page then stays
/// resident whole for the few objects still on it: at 5,000 nodes the
/// master idled at 390 MiB with 130 MiB of huge pages, and at 354 MiB
/// without them (docs/testing.md). The master turns them off for itself
/// before it allocates much; a failure (an old kernel) changes nothing else.
#[cfg(feature = "master")]
#[allow(unsafe_code)]
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only how
    // the kernel backs this process's anonymous memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        // openraft narrates every election and vote at info; its warnings
        // are what an operator needs, except the one for a write whose
        // caller stopped waiting (a loop cancelled at shutdown), which
        // says nothing about the cluster.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,openraft=warn,openraft::raft::responder=error")
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// One shutdown token for the process, cancelled by SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

/// What to do instead of a kubectl command Flotilla does not have.
fn kubectl_advice(verb: &str) -> Option<String> {
    let instead = match verb {
        "exec" | "attach" | "debug" => "a pod's WebAssembly program has no shell to enter: read its output with `flotilla logs POD` (`-f` to follow), and `flotilla describe pod POD` for its state",
        "cp" => "a pod has no file system of its own to copy from: give it files through volumes (configMap, secret, hostPath, emptyDir; docs/manifests.md)",
        "port-forward" | "proxy" => "reach an http or TCP pod through a Service on every node's proxy: `flotilla expose deployment NAME --port PORT`, then the node's address and that port",
        "run" => "write a manifest with `spec.module` naming your .wasm file and `flotilla apply -f` it (workloads/hello/pod.yaml is one)",
        "replace" => "`flotilla apply -f FILE` updates objects in place",
        "top" => "`flotilla describe node NAME` shows the requests allocated on a node; `flotilla get nodes -o wide` its capacity",
        "set" => "change the manifest and `flotilla apply -f` it, or `flotilla patch`",
        "autoscale" => "there is no autoscaler: `flotilla scale deploy/NAME --replicas N`",
        "auth" | "certificate" => "users get a role with `flotilla user create NAME --role admin|operator|viewer`, and `flotilla token create` lets nodes join (docs/security.md)",
        "kustomize" | "plugin" | "alpha" | "events" => "not available; `flotilla get events` lists events",
        _ => return None,
    };
    Some(format!(
        "`{verb}` is a kubectl command that flotilla does not have: {instead}. `flotilla --help` lists the commands; docs/from-kubectl.md says what each kubectl habit does here"
    ))
}

/// `--log-max-size` and `--log-max-files`, checked.
#[cfg(feature = "node")]
fn log_limits(size: &str, files: u32) -> anyhow::Result<flotilla_node::LogLimits> {
    let max_size = flotilla_api::quantity::parse_bytes(size)
        .map_err(|e| anyhow::anyhow!("--log-max-size: {e}"))?;
    if max_size < 4096 {
        anyhow::bail!("--log-max-size {size} is too small: give at least 4Ki, e.g. 1Mi");
    }
    if files < 2 {
        anyhow::bail!(
            "--log-max-files {files}: give at least 2 (the file written and one rotated)"
        );
    }
    Ok(flotilla_node::LogLimits {
        max_size,
        max_files: files,
    })
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli
        .config
        .clone()
        .unwrap_or_else(flotilla_api::config::default_path);
    match cli.command {
        #[cfg(feature = "master")]
        Command::Master(a) => {
            init_logging();
            let join = match (a.join, a.token) {
                (Some(addr), Some(token)) => Some(flotilla_master::JoinConfig { addr, token }),
                _ => None,
            };
            let cfg = flotilla_master::MasterConfig {
                node_id: a.node_id,
                join,
                restore: a.restore,
                data_dir: a.data_dir,
                listen: a.listen,
                advertise: a.advertise,
                cluster_name: a.cluster_name,
                node_grace: commands::parse_duration(&a.node_grace)?,
                module_grace: commands::parse_duration(&a.module_grace)?,
                election_timeout: commands::parse_duration(&a.election_timeout)?,
                admin_config: Some(config),
                replace_config: a.replace_config,
                cert_lifetime: commands::parse_duration(&a.cert_lifetime)?,
                event_retention: flotilla_master::controllers::events::Retention {
                    ttl: commands::parse_duration(&a.event_ttl)?,
                    max_events: a.max_events,
                },
                code_compiler: code_compiler(),
            };
            if a.init {
                let (master, _) = flotilla_master::start(cfg).await?;
                // Let raft finish writing its founding entries before exiting.
                master.raft.shutdown().await?;
                println!("initialised; start the master with the same --data-dir");
                return Ok(ExitCode::SUCCESS);
            }
            flotilla_master::run(cfg, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "node")]
        Command::Node(a) => {
            init_logging();
            let offer = offer(&a.offer)?;
            let name = match a.name {
                Some(n) => n,
                None => hostname()?,
            };
            let cfg = flotilla_node::NodeConfig {
                data_dir: a.data_dir,
                name,
                masters: a.masters,
                token: a.token,
                labels: commands::parse_labels(&a.labels)?,
                module_cache: flotilla_node::ModuleCacheConfig {
                    budget: flotilla_api::quantity::parse_bytes(&a.module_cache_size)
                        .map_err(|e| anyhow::anyhow!("--module-cache-size: {e}"))?,
                    grace: commands::parse_duration(&a.module_cache_grace)
                        .map_err(|e| anyhow::anyhow!("--module-cache-grace: {e}"))?,
                },
                compile: compile_limits(a.compile_memory.as_deref(), &a.compile_timeout)?,
                deny: offer.deny,
                reserve: offer.reserve,
                max_pods: offer.max_pods,
                allowed_host_paths: offer.allowed_host_paths,
                proxy: offer.proxy,
                engine: offer.engine,
                precompiled: offer.precompiled,
                release_startup_code: true,
                logs: log_limits(&a.log_max_size, a.log_max_files)?,
            };
            flotilla_node::run(cfg, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(all(feature = "master", feature = "node"))]
        Command::Up(a) => {
            init_logging();
            up(a, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            manifests,
            namespace,
            create_namespace,
            dry_run,
        } => {
            let files = manifests.files()?;
            let namespace = namespace.or_else(config_namespace_given);
            commands::apply(
                &config,
                &files,
                namespace.as_deref(),
                create_namespace,
                dry_run,
            )
            .await
        }
        Command::Diff {
            manifests,
            namespace,
        } => {
            let files = manifests.files()?;
            let namespace = namespace.or_else(config_namespace_given);
            commands::diff(&config, &files, namespace.as_deref()).await
        }
        Command::Create {
            kind,
            name,
            secret_name,
            cert,
            key,
            from_literal,
            from_file,
            namespace,
        } => match flotilla_api::Kind::parse(&kind) {
            Some(flotilla_api::Kind::Namespace)
                if from_literal.is_empty() && from_file.is_empty() =>
            {
                commands::create_namespace(&config, &name).await
            }
            Some(flotilla_api::Kind::ConfigMap) if secret_name.is_none() => {
                commands::create_config_map(&config, &name, &namespace, &from_literal, &from_file)
                    .await
            }
            Some(flotilla_api::Kind::Secret) => match (name.as_str(), secret_name) {
                ("generic", Some(secret)) if cert.is_none() && key.is_none() => {
                    commands::create_secret(&config, &secret, &namespace, &from_literal, &from_file)
                        .await
                }
                ("tls", Some(secret)) if from_literal.is_empty() && from_file.is_empty() => {
                    match (cert, key) {
                        (Some(cert), Some(key)) => {
                            commands::create_tls_secret(&config, &secret, &namespace, &cert, &key)
                                .await
                        }
                        _ => Err(anyhow::anyhow!(
                            "write `create secret tls NAME --cert FILE --key FILE` (both PEM)"
                        )),
                    }
                }
                _ => Err(anyhow::anyhow!(
                    "write `create secret generic NAME --from-literal k=v --from-file PATH` \
                     or `create secret tls NAME --cert FILE --key FILE` (write a manifest \
                     for other types)"
                )),
            },
            _ => Err(anyhow::anyhow!(
                "`create` makes namespaces (`create namespace NAME`), configmaps (`create \
                 configmap NAME --from-literal k=v --from-file PATH`) and secrets (`create secret \
                 generic NAME ...`); write a manifest and use `flotilla apply -f FILE` for {kind:?}"
            )),
        },
        Command::Get(args) => commands::get(&config, args).await,
        Command::Describe {
            kind,
            name,
            namespace,
        } => {
            let (kind, name) = match (kind.split_once('/'), name) {
                (Some((k, n)), None) => (k.to_string(), n.to_string()),
                (None, Some(n)) => (kind, n),
                (Some(_), Some(_)) => {
                    anyhow::bail!("give KIND NAME or KIND/NAME, not both")
                }
                (None, None) => anyhow::bail!(
                    "name the object to describe: `flotilla describe {kind} NAME` or `flotilla describe {kind}/NAME`"
                ),
            };
            commands::describe(&config, &kind, &name, &namespace).await
        }
        Command::Logs(args) => commands::logs(&config, &args).await,
        Command::Label(a) => {
            verbs::label_or_annotate(&config, &a.args, &a.namespace, a.overwrite, true).await
        }
        Command::Annotate(a) => {
            verbs::label_or_annotate(&config, &a.args, &a.namespace, a.overwrite, false).await
        }
        Command::Patch {
            target,
            patch,
            r#type,
            namespace,
        } => {
            if r#type != "merge" {
                anyhow::bail!(
                    "--type {type}: only merge patches (RFC 7386) are taken; write the change as one, e.g. -p '{{\"spec\":{{\"replicas\":3}}}}'",
                    type = r#type
                );
            }
            verbs::patch(&config, &target, &namespace, &patch).await
        }
        Command::Wait {
            targets,
            until,
            timeout,
            namespace,
        } => {
            let timeout = commands::parse_duration(&timeout)?;
            verbs::wait(&config, &targets, &namespace, &until, timeout).await
        }
        Command::Edit { target, namespace } => verbs::edit(&config, &target, &namespace).await,
        Command::Version => verbs::version(&config).await,
        Command::ApiResources => {
            print!("{}", verbs::api_resources());
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { path, recursive } => {
            let text = flotilla_api::explain::explain(&path, recursive)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::ClusterInfo => verbs::cluster_info(&config).await,
        Command::Delete {
            targets,
            files,
            recursive,
            namespace,
            all,
            selector,
            all_namespaces,
            cascade,
            wait,
            timeout,
        } => {
            let wait = if wait {
                Some(commands::parse_duration(&timeout)?)
            } else {
                None
            };
            let which = commands::DeleteTargets {
                targets,
                files: commands::expand_files(&files, recursive)?,
                namespace,
                all,
                selector,
                all_namespaces,
            };
            commands::delete(&config, &which, cascade.into(), wait).await
        }
        Command::Scale {
            target,
            replicas,
            namespace,
        } => workloads::scale(&config, &target, replicas, &namespace).await,
        Command::Expose {
            target,
            port,
            target_port,
            name,
            namespace,
        } => {
            workloads::expose(
                &config,
                &target,
                port,
                target_port,
                name.as_deref(),
                &namespace,
            )
            .await
        }
        Command::Rollout(c) => workloads::rollout(&config, c).await,
        Command::Taint { kind, name, taints } => nodes::taint(&config, &kind, &name, &taints).await,
        Command::Cordon { name } => nodes::cordon(&config, &name, true).await,
        Command::Uncordon { name } => nodes::cordon(&config, &name, false).await,
        Command::Drain { name, force } => nodes::drain(&config, &name, force).await,
        Command::Token(TokenCommand::Create {
            ttl,
            description,
            master,
            node,
            uses,
            name_prefix,
        }) => {
            let limits = commands::TokenLimits { uses, name_prefix };
            commands::token_create(&config, &ttl, &description, master, node, limits).await
        }
        Command::User(UserCommand::Create {
            name,
            role,
            namespace,
            lifetime,
            output,
        }) => {
            let spec = users::NewUser {
                name,
                role,
                namespace: namespace.unwrap_or_default(),
                lifetime,
            };
            users::create(&config, spec, output).await
        }
        Command::User(UserCommand::Revoke { name }) => users::revoke(&config, &name).await,
        Command::Token(TokenCommand::List { output }) => {
            commands::token_list(&config, output).await
        }
        Command::Token(TokenCommand::Revoke { id }) => commands::token_revoke(&config, &id).await,
        Command::Cluster(ClusterCommand::Status { output }) => {
            commands::cluster_status(&config, output).await
        }
        Command::Cluster(ClusterCommand::Remove { node_id }) => {
            commands::cluster_remove(&config, node_id).await
        }
        Command::Cluster(ClusterCommand::Snapshot { file }) => {
            commands::cluster_snapshot(&config, &file).await
        }
        Command::Config(ConfigCommand::View) => commands::config_view(&config),
        Command::Config(ConfigCommand::Renew) => commands::config_renew(&config).await,
        #[cfg(feature = "node")]
        Command::Compile(a) => Ok(compile_child(&a)),
        #[cfg(feature = "node")]
        Command::HollowNodes(a) => {
            init_logging();
            hollow::run(a.config()?, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            // The script asks this binary (`COMPLETE=SHELL flotilla -- WORDS`),
            // so completion knows kinds and the master's object names.
            let name = shell.to_string();
            let shells = clap_complete::env::Shells::builtins();
            let completer = shells
                .completer(&name)
                .ok_or_else(|| anyhow::anyhow!("no completion for {name}"))?;
            // Registered for the command people type; the binary that runs
            // now answers, wherever it is installed.
            let answers = std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(String::from))
                .unwrap_or_else(|| "flotilla".into());
            completer.write_registration(
                "COMPLETE",
                "flotilla",
                "flotilla",
                &answers,
                &mut std::io::stdout(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a master compiles its nodes' code with: the node runtime's
/// compiler, in a binary that has it.
#[cfg(feature = "master")]
fn code_compiler() -> Option<flotilla_master::code::Compiler> {
    #[cfg(feature = "node")]
    {
        // Compiles run in children of this binary under the limits a node
        // of this machine would have; in-process only if it cannot be found.
        let compiler = match std::env::current_exe() {
            Ok(program) => flotilla_node::runtime::compile::CrossCompiler::in_children(
                program,
                flotilla_node::CompileLimits::for_this_machine(),
            ),
            Err(_) => Default::default(),
        };
        Some(flotilla_master::code::Compiler(std::sync::Arc::new(
            NodeCodeCompiler(compiler),
        )))
    }
    #[cfg(not(feature = "node"))]
    {
        None
    }
}

/// The node runtime's compiler, as a master's.
#[cfg(all(feature = "master", feature = "node"))]
struct NodeCodeCompiler(flotilla_node::runtime::compile::CrossCompiler);

#[cfg(all(feature = "master", feature = "node"))]
impl flotilla_master::code::CodeCompiler for NodeCodeCompiler {
    fn fingerprint(&self, target: &flotilla_api::objects::CodeTarget) -> Result<String, String> {
        self.0.fingerprint(target)
    }

    fn compile(
        &self,
        target: &flotilla_api::objects::CodeTarget,
        wasm: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.0.compile(target, wasm)
    }
}

/// `flotilla __compile`: the node agent's compiler child.
#[cfg(feature = "node")]
fn compile_child(a: &CompileArgs) -> ExitCode {
    use flotilla_node::runtime::compile::{child_main, ChildRequest};
    let code = match flotilla_node::runtime::device::parse_code(&a.engine) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("--engine: {e}");
            return ExitCode::from(2);
        }
    };
    let request = match (&a.fingerprint, &a.output, a.probe) {
        (Some(f), Some(o), false) => ChildRequest::Compile {
            code,
            fingerprint: f.clone(),
            output: o.clone(),
        },
        _ => ChildRequest::Probe { code },
    };
    ExitCode::from(u8::try_from(child_main(request)).unwrap_or(1))
}

/// What a node offers pods, from the flags.
#[cfg(feature = "node")]
struct Offer {
    deny: flotilla_node::Deny,
    reserve: flotilla_node::Reserve,
    max_pods: Option<u32>,
    allowed_host_paths: Vec<PathBuf>,
    proxy: Option<flotilla_node::proxy::ProxyConfig>,
    engine: flotilla_node::runtime::device::Profile,
    precompiled: bool,
}

/// The engine profile for this machine and the flags (`node` and `up`).
#[cfg(feature = "node")]
fn engine_profile(a: &OfferArgs) -> anyhow::Result<flotilla_node::runtime::device::Profile> {
    use flotilla_node::runtime::device;
    let bytes = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|q| {
                flotilla_api::quantity::parse_bytes(q).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
            })
            .transpose()
    };
    let overrides = device::Overrides {
        class: a
            .device_class
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|e| anyhow::anyhow!("--device-class: {e}"))
            })
            .transpose()?,
        cpu: a
            .engine_cpu
            .as_deref()
            .map(|c| c.parse().map_err(|e| anyhow::anyhow!("--engine-cpu: {e}")))
            .transpose()?,
        memory_reservation: bytes("memory-reservation", &a.memory_reservation)?,
        memory_guard: bytes("memory-guard", &a.memory_guard)?,
        http_slots: a.http_slots,
        runtime_threads: a.runtime_threads,
    };
    device::profile(&device::Machine::this(), &overrides).map_err(|e| anyhow::anyhow!(e))
}

#[cfg(feature = "node")]
fn offer(a: &OfferArgs) -> anyhow::Result<Offer> {
    let deny = flotilla_node::Deny::new(a.deny.iter().cloned())?;
    let reserve = flotilla_node::Reserve {
        cpu_millis: flotilla_api::quantity::parse_millicores(&a.reserve_cpu)
            .map_err(|e| anyhow::anyhow!("--reserve-cpu: {e}"))?,
        memory_bytes: flotilla_api::quantity::parse_bytes(&a.reserve_memory)
            .map_err(|e| anyhow::anyhow!("--reserve-memory: {e}"))?,
    };
    if a.max_pods == Some(0) {
        anyhow::bail!("--max-pods must be at least 1; to take no pods, set spec.unschedulable: true on the Node");
    }
    for p in &a.allow_host_path {
        if !p.is_absolute() {
            anyhow::bail!(
                "--allow-host-path {}: give an absolute path, e.g. /srv/data",
                p.display()
            );
        }
    }
    let proxy = if a.no_proxy {
        None
    } else {
        let bad = || {
            anyhow::anyhow!(
                "--service-ports {:?}: give LOW-HIGH, e.g. 30000-32767",
                a.service_ports
            )
        };
        let (low, high) = a.service_ports.split_once('-').ok_or_else(bad)?;
        let (low, high): (u16, u16) = (
            low.trim().parse().map_err(|_| bad())?,
            high.trim().parse().map_err(|_| bad())?,
        );
        if low == 0 || low > high {
            return Err(bad());
        }
        if a.host_port != 0 && a.host_port == a.host_tls_port {
            anyhow::bail!(
                "--host-port and --host-tls-port are both {}: give them different ports (80 and 443 by default)",
                a.host_port
            );
        }
        Some(flotilla_node::proxy::ProxyConfig {
            address: a.proxy_address,
            peer_port: a.proxy_peer_port,
            advertise: a.advertise_address,
            ports: low..=high,
            host_port: (a.host_port != 0).then_some(a.host_port),
            tls_port: (a.host_tls_port != 0).then_some(a.host_tls_port),
        })
    };
    Ok(Offer {
        deny,
        reserve,
        max_pods: a.max_pods,
        allowed_host_paths: a.allow_host_path.clone(),
        proxy,
        engine: engine_profile(a)?,
        precompiled: !a.no_precompiled_code,
    })
}

/// The node's compile limits: the machine's defaults, or what the flags say.
#[cfg(feature = "node")]
fn compile_limits(
    memory: Option<&str>,
    timeout: &str,
) -> anyhow::Result<flotilla_node::CompileLimits> {
    use flotilla_node::runtime::compile::MIN_COMPILE_MEMORY;
    let mut limits = flotilla_node::CompileLimits::for_this_machine();
    if let Some(m) = memory {
        let bytes = flotilla_api::quantity::parse_bytes(m)
            .map_err(|e| anyhow::anyhow!("--compile-memory: {e}"))?;
        if bytes < MIN_COMPILE_MEMORY {
            anyhow::bail!(
                "--compile-memory {m} is too small: even the smallest program needs more to compile; give at least {}Mi",
                MIN_COMPILE_MEMORY >> 20
            );
        }
        limits.memory = bytes;
    }
    limits.timeout =
        commands::parse_duration(timeout).map_err(|e| anyhow::anyhow!("--compile-timeout: {e}"))?;
    if limits.timeout.is_zero() {
        anyhow::bail!("--compile-timeout must be longer than 0s, e.g. 60s");
    }
    Ok(limits)
}

#[cfg(feature = "node")]
fn hostname() -> anyhow::Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = raw.trim().to_ascii_lowercase();
    if flotilla_api::manifest::is_dns_subdomain(&name) {
        Ok(name)
    } else {
        anyhow::bail!("the host name {name:?} is not a valid node name; pass --name")
    }
}

/// Master and node in one process: the master's own token lets the node join.
#[cfg(all(feature = "master", feature = "node"))]
async fn up(a: UpArgs, config: PathBuf) -> anyhow::Result<()> {
    let offer = offer(&a.offer)?;
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => config
            .parent()
            .map(|p| p.join("up"))
            .unwrap_or_else(|| PathBuf::from("./flotilla-up")),
    };
    let shutdown = shutdown_on_signals();
    let cfg = flotilla_master::MasterConfig {
        // `up` runs one master: the one member of its raft cluster.
        node_id: None,
        join: None,
        restore: None,
        data_dir: data_dir.join("master"),
        listen: a.listen,
        advertise: vec![],
        cluster_name: "flotilla".into(),
        node_grace: std::time::Duration::from_secs(20),
        module_grace: flotilla_master::modules::DEFAULT_GRACE,
        election_timeout: flotilla_master::raft::DEFAULT_ELECTION_TIMEOUT,
        admin_config: Some(config.clone()),
        replace_config: a.replace_config,
        cert_lifetime: flotilla_api::identity::DEFAULT_CERT_LIFETIME,
        event_retention: Default::default(),
        code_compiler: code_compiler(),
    };
    let (master, running) = flotilla_master::start(cfg).await?;
    let addr = master.local_addr.to_string();
    let node_dir = data_dir.join("node");
    let token = if node_dir
        .join(flotilla_node::join::CREDENTIALS_FILE)
        .exists()
    {
        None
    } else {
        Some(
            flotilla_master::apiserver::local_token(
                &master,
                "flotilla up",
                std::time::Duration::from_secs(600),
            )
            .await?,
        )
    };
    let name = a.name.map(Ok).unwrap_or_else(hostname)?;
    let node_cfg = flotilla_node::NodeConfig {
        data_dir: node_dir,
        name,
        masters: vec![addr.clone()],
        token,
        labels: Default::default(),
        module_cache: Default::default(),
        compile: flotilla_node::CompileLimits::for_this_machine(),
        deny: offer.deny,
        reserve: offer.reserve,
        max_pods: offer.max_pods,
        allowed_host_paths: offer.allowed_host_paths,
        proxy: offer.proxy,
        engine: offer.engine,
        precompiled: offer.precompiled,
        // The master in this process runs the code the node would give back.
        release_startup_code: false,
        logs: Default::default(),
    };
    eprintln!(
        "flotilla up: master on {addr}, client config {}",
        config.display()
    );
    let m = tokio::spawn(running.serve(shutdown.clone()));
    let n = tokio::spawn(flotilla_node::run(node_cfg, shutdown.clone()));
    let (m, n) = tokio::join!(m, n);
    m??;
    n??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::report;

    /// An error whose message quotes its source, as the master's do.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "joining the cluster at m1: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_said_once() {
        let quoting = anyhow::Error::new(Quoting(std::io::Error::other("connection refused")));
        assert_eq!(
            report(&quoting),
            "joining the cluster at m1: connection refused"
        );
        let wrapped = anyhow::Error::new(std::io::Error::other("disk full")).context("writing x");
        assert_eq!(report(&wrapped), "writing x: disk full");
    }
}
