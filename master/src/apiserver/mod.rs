//! The API core: every front end (the QUIC one today) and every controller
//! goes through it. Each verb takes a [`Caller`], checks it
//! ([`authz::authorize`] over a [`Verb`], never a wire request), admits the
//! object ([`admission`], pure), and reads the store or writes through raft
//! (via the leader's batcher, wherever the leader is). Answers are typed:
//! objects, lists, streams, and an [`ApiError`] whose code says what went
//! wrong and whose message says what to do.
//!
//! - [`verb`]: callers, actions, targets.
//! - [`authz`]: who may do what.
//! - [`admission`]: validation, defaults, immutability, node rules, priorities.
//! - [`watch`]: which events a watch delivers.
//! - `modules`: module upload (checked, then staged through raft) and download.
//! - `access`: joins, tokens, certificates.
//! - `logs`: a pod's output, relayed from its node (through another master if need be).

mod access;
pub mod admission;
pub mod authz;
mod logs;
mod modules;
mod node_watches;
mod users;
pub mod verb;
pub mod watch;

pub use access::{local_token, DEFAULT_TOKEN_TTL};
pub use logs::LogStream;
pub use modules::{ModuleDownload, ModuleUpload};
pub use node_watches::NodeWatches;
pub use verb::{Action, Caller, Subresource, Target, Verb};

use crate::controllers::node_lifecycle::Heartbeats;
use crate::nodes::NodeConnections;
use crate::pki::Pki;
use crate::raft::Cluster;
use crate::store::{Command, Outcome, Refusal, Store, StoreError};
use admission::{invalid, not_found, Lookup};
pub(crate) use authz::authorize;
use authz::node_may_read;
use flotilla_api::protocol::{
    ApiError, ErrorCode, ListOptions, Propagation, WatchEvent, WatchOptions, MAX_STATUS_BATCH,
};
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::sync::Arc;

/// What the core works with; cheap to clone (every field is shared).
#[derive(Clone)]
pub struct ApiServer {
    pub store: Store,
    pub pki: Arc<Pki>,
    /// This master's own addresses (what it advertises).
    pub advertise: Vec<String>,
    pub nodes: NodeConnections,
    pub heartbeats: Heartbeats,
    /// This master's raft and its links to the other masters: writes,
    /// linearizable reads and raft messages go through it.
    pub cluster: Cluster,
    /// The watches of nodes, each fed only its own node's events.
    pub node_watches: NodeWatches,
    /// The code this master compiles for nodes ([`crate::code`]).
    pub code: crate::code::CodeShop,
}

/// How often a status write is tried again when the object changed
/// between its checks and its write.
const STATUS_RETRIES: u32 = 5;

/// The store's refusal as the API's: what the caller did wrong keeps its
/// code; anything else is the master's trouble.
pub fn store_err(e: StoreError) -> ApiError {
    let code = match &e {
        StoreError::Refused(Refusal::NotFound(_)) => ErrorCode::NotFound,
        StoreError::Refused(Refusal::AlreadyExists(_)) => ErrorCode::AlreadyExists,
        StoreError::Refused(Refusal::Conflict { .. }) => ErrorCode::Conflict,
        StoreError::Refused(Refusal::TooOld { .. }) => ErrorCode::TooOld,
        StoreError::Refused(Refusal::Invalid(_)) => ErrorCode::Invalid,
        StoreError::Unavailable(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// Whether a controller's refused write only lost a race: the object
/// changed or went meanwhile, and the cache's next event brings it back to
/// the controller's queue.
pub fn lost_race(e: &ApiError) -> bool {
    matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound)
}

/// A controller's write, with a lost race ([`lost_race`]) as `None`: the
/// object changed or went meanwhile, and the cache's next event says what
/// to do.
pub fn unless_lost(written: Result<Object, ApiError>) -> Result<Option<Object>, ApiError> {
    match written {
        Ok(o) => Ok(Some(o)),
        Err(e) if lost_race(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn unexpected(out: Outcome) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("unexpected outcome {out:?}"))
}

/// A fresh uid, as Kubernetes writes them.
pub fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Lookup for Store {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>, ApiError> {
        Store::get(self, kind, namespace, name).map_err(store_err)
    }

    fn list(&self, kind: Kind) -> Result<Vec<Object>, ApiError> {
        Store::list(self, kind, None, &Selector::default())
            .map(|(_, items)| items)
            .map_err(store_err)
    }
}

impl ApiServer {
    /// Every master's address, the leader's first (what hellos and joins hand out).
    pub fn masters(&self) -> Vec<String> {
        let mut all = self.cluster.masters();
        for a in &self.advertise {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The read barrier before a read: linearizable unless `stale`.
    pub(crate) async fn before_read(&self, stale: bool) -> Result<(), ApiError> {
        // A master whose state differs from the others' serves no reads at
        // all, backups included (see `raft::check`).
        self.store.checks().serving().map_err(store_err)?;
        if stale {
            return Ok(());
        }
        self.cluster.linearize().await.map_err(store_err)
    }

    /// Writes a command through raft, via the leader wherever it is.
    pub(crate) async fn apply(&self, cmd: Command) -> Result<Outcome, ApiError> {
        self.cluster.write(cmd).await.map_err(store_err)
    }

    /// Creates an object.
    pub async fn create(&self, caller: &Caller, obj: Object) -> Result<Object, ApiError> {
        let m = obj.meta();
        let verb = Verb::object(Action::Create, obj.kind(), &m.namespace, &m.name, None);
        authorize(caller, &verb)?;
        let obj = admission::admit_create(caller, obj, &self.store, new_uid(), Time::now())?;
        let obj = self.seal(obj)?;
        tracing::debug!(caller = %caller, key = %obj.key(), "create");
        match self.apply(Command::Create { object: obj }).await? {
            Outcome::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// What a create (or an update) of `obj` would store, checked as the
    /// write would be but not written. `modules` (digests about to be
    /// uploaded) count as uploaded.
    pub async fn dry_run(
        &self,
        caller: &Caller,
        obj: Object,
        update: bool,
        modules: &[String],
    ) -> Result<Object, ApiError> {
        let (kind, m) = (obj.kind(), obj.meta().clone());
        let action = if update {
            Action::Update
        } else {
            Action::Create
        };
        authorize(
            caller,
            &Verb::object(action, kind, &m.namespace, &m.name, None),
        )?;
        // The checks read what is committed, as the write would.
        self.before_read(false).await?;
        let lookup = admission::WithModules {
            inner: &self.store,
            digests: modules,
        };
        let stored = self
            .store
            .get(kind, &m.namespace, &m.name)
            .map_err(store_err)?;
        match (update, stored) {
            (false, Some(_)) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("{} already exists", obj.describe()),
            )),
            (false, None) => admission::admit_create(caller, obj, &lookup, new_uid(), Time::now()),
            (true, None) => Err(not_found(kind, &m.namespace, &m.name)),
            (true, Some(stored)) => {
                let stored = match stored {
                    Object::Secret(old) => Object::Secret(self.pki.secret_key().open(&old)?),
                    other => other,
                };
                admission::admit_update(caller, obj, Some(&stored), &lookup).map(|(o, _)| o)
            }
        }
    }

    /// Replaces an object's spec and metadata (compare-and-swap when it
    /// carries a resourceVersion).
    pub async fn update(&self, caller: &Caller, obj: Object) -> Result<Object, ApiError> {
        let (kind, m) = (obj.kind(), obj.meta().clone());
        authorize(
            caller,
            &Verb::object(Action::Update, kind, &m.namespace, &m.name, None),
        )?;
        let stored = self
            .store
            .get(kind, &m.namespace, &m.name)
            .map_err(store_err)?;
        let (obj, stored) = match (obj, stored) {
            // Admitted in the clear (immutability compares values), written
            // sealed, over the very version that was compared.
            (Object::Secret(mut s), Some(Object::Secret(old))) => {
                s.normalize();
                if s.metadata.resource_version == 0 {
                    s.metadata.resource_version = old.metadata.resource_version;
                }
                let old = self.pki.secret_key().open(&old)?;
                (Object::Secret(s), Some(Object::Secret(old)))
            }
            other => other,
        };
        let (obj, expected_rv) =
            admission::admit_update(caller, obj, stored.as_ref(), &self.store)?;
        let obj = self.seal(obj)?;
        let out = self
            .apply(Command::Update {
                object: obj,
                expected_rv,
                status_only: false,
            })
            .await?;
        match out {
            // An update that removed a deleted object's last finalizer removed it.
            Outcome::Object(o) | Outcome::Deleted(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces an object's status. The checks hold for the version they
    /// read: the write is a compare-and-swap on it, checked again against a
    /// newer one (a pod rebound meanwhile is refused).
    pub async fn update_status(&self, caller: &Caller, obj: Object) -> Result<Object, ApiError> {
        let mut attempt = 0;
        loop {
            match self.write_status(caller, obj.clone(), None).await {
                Err(e) if e.code == ErrorCode::Conflict && attempt < STATUS_RETRIES => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Replaces the status of each object, as [`ApiServer::update_status`]
    /// would, all at once so that the writes share raft entries (a node's
    /// batch of pod reports). One result per object, in order: its new
    /// resourceVersion, or why it was not written.
    pub async fn update_statuses(
        &self,
        caller: &Caller,
        objs: Vec<Object>,
    ) -> Result<Vec<Result<u64, ApiError>>, ApiError> {
        if objs.len() > MAX_STATUS_BATCH {
            return Err(invalid(format!(
                "{} statuses in one request; send at most {MAX_STATUS_BATCH} at a time",
                objs.len()
            )));
        }
        let writes = objs.into_iter().map(|o| self.update_status(caller, o));
        Ok(futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|written| written.map(|o| o.meta().resource_version))
            .collect())
    }

    /// Replaces an object's status if it is still at `resource_version`
    /// (`Conflict` otherwise): for controllers, whose status was computed
    /// from that version and must not land on a newer one.
    pub async fn update_status_at(
        &self,
        caller: &Caller,
        obj: Object,
        resource_version: u64,
    ) -> Result<Object, ApiError> {
        self.write_status(caller, obj, Some(resource_version)).await
    }

    async fn write_status(
        &self,
        caller: &Caller,
        obj: Object,
        expected_rv: Option<u64>,
    ) -> Result<Object, ApiError> {
        let (kind, m) = (obj.kind(), obj.meta().clone());
        let verb = Verb::object(
            Action::Update,
            kind,
            &m.namespace,
            &m.name,
            Some(Subresource::Status),
        );
        authorize(caller, &verb)?;
        let stored = self
            .store
            .get(kind, &m.namespace, &m.name)
            .map_err(store_err)?
            .ok_or_else(|| not_found(kind, &m.namespace, &m.name))?;
        let rv = expected_rv.unwrap_or(stored.meta().resource_version);
        let object = admission::admit_status(caller, obj, &stored)?;
        let cmd = Command::Update {
            object,
            expected_rv: Some(rv),
            status_only: true,
        };
        match self.apply(cmd).await? {
            Outcome::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Binds a pending pod (this `uid`) to a node: its `spec.nodeName` and
    /// PodScheduled condition in one write. Many bindings share a raft entry
    /// (the leader's batcher gathers concurrent writes).
    pub async fn bind(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<Object, ApiError> {
        let verb = Verb::object(
            Action::Create,
            Kind::Pod,
            namespace,
            name,
            Some(Subresource::Binding),
        );
        authorize(caller, &verb)?;
        let cmd = Command::Bind {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            node: node.to_string(),
            at: Time::now(),
        };
        match self.apply(cmd).await? {
            Outcome::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes an object (compare-and-swap when `resource_version` is not
    /// 0); the garbage collector deletes what it owned.
    pub async fn delete(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: u64,
    ) -> Result<Object, ApiError> {
        self.delete_with(
            caller,
            kind,
            namespace,
            name,
            resource_version,
            Propagation::Background,
        )
        .await
    }

    /// Deletes an object, and says what becomes of what it owned: deleted
    /// by the garbage collector soon after (background), before the owner
    /// goes (foreground), or kept without the reference, in the same write
    /// (orphan). An object with finalizers (a namespace always) is marked
    /// with a deletionTimestamp and goes when they are done.
    pub async fn delete_with(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: u64,
        propagation: Propagation,
    ) -> Result<Object, ApiError> {
        authorize(
            caller,
            &Verb::object(Action::Delete, kind, namespace, name, None),
        )?;
        if kind == Kind::Namespace && name == flotilla_api::meta::DEFAULT_NAMESPACE {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the default namespace cannot be deleted; delete what is in it instead",
            ));
        }
        let cmd = Command::DeleteAt {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            expected_rv: (resource_version != 0).then_some(resource_version),
            propagation,
            at: Time::now(),
        };
        match self.apply(cmd).await {
            // Removed, or marked while its finalizers run.
            Ok(Outcome::Deleted(o) | Outcome::Object(o)) => Ok(o),
            Ok(other) => Err(unexpected(other)),
            // Worded as `get` and `describe` word it.
            Err(e) if e.code == ErrorCode::NotFound => {
                Err(admission::not_found(kind, namespace, name))
            }
            Err(e) => Err(e),
        }
    }

    /// A Secret sealed as the store keeps it; any other object as it is.
    fn seal(&self, obj: Object) -> Result<Object, ApiError> {
        match obj {
            Object::Secret(s) => Ok(Object::Secret(self.pki.secret_key().seal(s)?)),
            other => Ok(other),
        }
    }

    /// Reads a Secret with its values: for admins (`get --show-secrets`)
    /// and for nodes whose pods use it. Every other read hides them.
    pub async fn reveal_secret(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        stale: bool,
    ) -> Result<Object, ApiError> {
        authorize(
            caller,
            &Verb::object(
                Action::Get,
                Kind::Secret,
                namespace,
                name,
                Some(Subresource::Data),
            ),
        )?;
        let o = self
            .read_one(caller, Kind::Secret, namespace, name, stale)
            .await?;
        match o {
            Object::Secret(s) => Ok(Object::Secret(self.pki.secret_key().open(&s)?)),
            other => Ok(other),
        }
    }

    /// Reads one object (linearizably unless `stale`); a Secret's values
    /// are hidden ([`ApiServer::reveal_secret`] reads them).
    pub async fn get(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        stale: bool,
    ) -> Result<Object, ApiError> {
        authorize(
            caller,
            &Verb::object(Action::Get, kind, namespace, name, None),
        )?;
        let o = self.read_one(caller, kind, namespace, name, stale).await?;
        Ok(self.pki.secret_key().outward(o))
    }

    /// One object as stored, if the caller (a node) may read it.
    async fn read_one(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        stale: bool,
    ) -> Result<Object, ApiError> {
        self.before_read(stale).await?;
        let o = self
            .store
            .get(kind, namespace, name)
            .map_err(store_err)?
            .ok_or_else(|| not_found(kind, namespace, name))?;
        if let Some(view) = NodeView::of(&self.store, caller) {
            if !view.may_read(&o)? {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "node {} may read only its own Node, the pods bound to it, their modules and the ConfigMaps and Secrets they use",
                        view.me
                    ),
                ));
            }
        }
        Ok(o)
    }

    /// Lists objects: the store's revision and the objects the caller may read.
    pub async fn list(
        &self,
        caller: &Caller,
        opts: &ListOptions,
    ) -> Result<(u64, Vec<Object>), ApiError> {
        let kind = opts.kind.ok_or_else(|| invalid("a list needs a kind"))?;
        authorize(
            caller,
            &Verb::collection(Action::List, Some(kind), opts.namespace.as_deref()),
        )?;
        let selector = Selector::parse(&opts.label_selector).map_err(|e| invalid(e.to_string()))?;
        self.before_read(opts.stale).await?;
        let (revision, items) = self
            .store
            .list(kind, opts.namespace.as_deref(), &selector)
            .map_err(store_err)?;
        let view = NodeView::of(&self.store, caller);
        let mut kept = Vec::with_capacity(items.len());
        for o in items {
            if !watch::on_node(&o, opts.node_name.as_deref()) {
                continue;
            }
            if let Some(view) = &view {
                if !view.may_read(&o)? {
                    continue;
                }
            }
            kept.push(self.pki.secret_key().outward(o));
        }
        Ok((revision, kept))
    }

    /// Watches changes from a revision (the current one if 0).
    pub async fn watch(&self, caller: &Caller, opts: WatchOptions) -> Result<Watch, ApiError> {
        authorize(
            caller,
            &Verb::collection(
                Action::Watch,
                opts.list.kind,
                opts.list.namespace.as_deref(),
            ),
        )?;
        let selector =
            Selector::parse(&opts.list.label_selector).map_err(|e| invalid(e.to_string()))?;
        let from = if opts.from_revision == 0 {
            self.store.revision().map_err(store_err)?
        } else {
            opts.from_revision
        };
        let inner = match caller.node() {
            // A node sees only its own Node and pods: routed to it alone.
            Some(node) => Source::Node(
                self.node_watches
                    .watch(&self.store, node, from)
                    .map_err(store_err)?,
            ),
            None => Source::Store(self.store.watch(from).map_err(store_err)?),
        };
        let filter = watch::Filter::new(opts.list, selector, caller.node().map(String::from));
        Ok(Watch {
            inner,
            filter,
            pki: self.pki.clone(),
        })
    }

    /// A node's heartbeat: recorded here and passed on to the leader.
    pub fn heartbeat(&self, caller: &Caller, node: &str) -> Result<(), ApiError> {
        let verb = Verb::object(
            Action::Update,
            Kind::Node,
            "",
            node,
            Some(Subresource::Heartbeat),
        );
        authorize(caller, &verb)?;
        self.heartbeats.beat(node);
        // The leader tracks heartbeats; pass this one on without making the
        // node wait for it.
        let cluster = self.cluster.clone();
        let node = node.to_string();
        tokio::spawn(async move { cluster.relay_heartbeat(&node).await });
        Ok(())
    }

    /// The cluster's health as this master sees it.
    pub async fn cluster_status(
        &self,
        caller: &Caller,
    ) -> Result<flotilla_api::protocol::ClusterStatus, ApiError> {
        authorize(caller, &Verb::on(Action::Get, Target::Cluster))?;
        Ok(self.cluster.status().await)
    }

    /// Makes a master (that joined with a token) a voting member.
    pub async fn add_master(&self, caller: &Caller, id: u64, addr: &str) -> Result<(), ApiError> {
        authorize(caller, &Verb::on(Action::Create, Target::Cluster))?;
        self.cluster.add_member(id, addr).await.map_err(store_err)
    }

    /// Takes a master out of the membership.
    pub async fn remove_master(&self, caller: &Caller, id: u64) -> Result<(), ApiError> {
        authorize(caller, &Verb::on(Action::Delete, Target::Cluster))?;
        self.cluster.remove_member(id).await.map_err(store_err)
    }

    /// A backup of the whole state, encoded (`flotilla cluster snapshot`).
    pub async fn backup(&self, caller: &Caller) -> Result<Vec<u8>, ApiError> {
        authorize(caller, &Verb::on(Action::Get, Target::Backup))?;
        self.before_read(false).await?;
        let image = self.store.export().map_err(store_err)?;
        crate::store::encode_backup(&image).map_err(store_err)
    }

    /// A raft message from another master; the answer's payload.
    pub async fn raft(
        &self,
        caller: &Caller,
        rpc: flotilla_api::protocol::RaftRpc,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        use flotilla_api::protocol::RaftRpc;
        authorize(caller, &Verb::on(Action::Update, Target::Raft))?;
        match rpc {
            RaftRpc::AppendEntries | RaftRpc::Vote | RaftRpc::InstallSnapshot => {
                crate::raft::rpc::handle(self.cluster.raft(), rpc, payload).await
            }
            RaftRpc::StateHash | RaftRpc::StateDiffers | RaftRpc::CheckStates => {
                crate::raft::check::serve(&self.cluster, &self.store, rpc, payload).await
            }
            _ => {
                let heartbeats = &self.heartbeats;
                self.cluster
                    .serve(&|n| heartbeats.beat(n), rpc, payload)
                    .await
            }
        }
    }
}

/// A watch's events, as its caller may see them.
pub struct Watch {
    inner: Source,
    filter: watch::Filter,
    /// Its Secret key hides the values of the Secrets in events.
    pki: Arc<Pki>,
}

/// Where a watch's events come from.
enum Source {
    /// Every event of the store.
    Store(crate::store::Watch),
    /// The events routed to one node.
    Node(node_watches::NodeWatch),
}

impl Watch {
    /// The next event to deliver; `TooOld` once the watch fell behind the
    /// history the store keeps.
    pub async fn next(&mut self) -> Result<WatchEvent, ApiError> {
        loop {
            let ev = match &mut self.inner {
                Source::Store(w) => w.next_shared().await,
                Source::Node(w) => w.next().await,
            }
            .map_err(store_err)?;
            if let Some(kind) = self.filter.admit(&ev) {
                let mut ev = std::sync::Arc::unwrap_or_clone(ev);
                ev.kind = kind;
                if matches!(ev.object, Object::Secret(_)) {
                    let key = self.pki.secret_key();
                    ev.object = key.outward(ev.object);
                }
                return Ok(ev);
            }
        }
    }
}

/// What a node caller may read; None for every other caller.
pub(crate) struct NodeView<'a> {
    me: String,
    store: &'a Store,
    /// What the pods bound to the node use: their modules' digests and
    /// their ConfigMaps and Secrets (`namespace/name`), and the Secrets of
    /// Services served over TLS, listed only when one
    /// of those is asked about: reading a Node or a pod needs no list of
    /// every pod.
    used: std::cell::OnceCell<Result<Used, ApiError>>,
}

/// What a node's pods use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Used {
    modules: std::collections::HashSet<String>,
    config_maps: std::collections::HashSet<String>,
    secrets: std::collections::HashSet<String>,
}

impl<'a> NodeView<'a> {
    pub(crate) fn of(store: &'a Store, caller: &Caller) -> Option<NodeView<'a>> {
        caller.node().map(|me| NodeView {
            me: me.to_string(),
            store,
            used: std::cell::OnceCell::new(),
        })
    }

    fn used(&self) -> Result<&Used, ApiError> {
        let used = self.used.get_or_init(|| {
            let (_, pods) = self
                .store
                .list(Kind::Pod, None, &Selector::default())
                .map_err(store_err)?;
            let mut used = Used::default();
            for p in pods
                .iter()
                .filter_map(|o| o.as_pod())
                .filter(|p| p.spec.node_name.as_deref() == Some(self.me.as_str()))
            {
                used.modules.insert(p.spec.module.clone());
                for name in p.spec.config_maps() {
                    used.config_maps
                        .insert(format!("{}/{}", p.metadata.namespace, name));
                }
                for name in p.spec.secrets() {
                    used.secrets
                        .insert(format!("{}/{}", p.metadata.namespace, name));
                }
            }
            // Every node's proxy serves every Service's hosts, so the
            // certificates of those served over TLS.
            let (_, services) = self
                .store
                .list(Kind::Service, None, &Selector::default())
                .map_err(store_err)?;
            for svc in services
                .iter()
                .filter_map(|o| o.as_kind::<flotilla_api::objects::service::Service>())
            {
                if let Some(tls) = &svc.spec.tls {
                    used.secrets
                        .insert(format!("{}/{}", svc.metadata.namespace, tls.secret_name));
                }
            }
            Ok(used)
        });
        used.as_ref().map_err(Clone::clone)
    }

    pub(crate) fn uses(&self, digest: &str) -> Result<bool, ApiError> {
        Ok(self.used()?.modules.contains(digest))
    }

    fn may_read(&self, o: &Object) -> Result<bool, ApiError> {
        match o {
            Object::Module(m) => self.uses(&m.spec.digest),
            // Only the ConfigMaps its pods mount (Kubernetes' node authorizer).
            Object::ConfigMap(c) => Ok(self
                .used()?
                .config_maps
                .contains(&format!("{}/{}", c.metadata.namespace, c.metadata.name))),
            // Likewise the Secrets they use.
            Object::Secret(s) => Ok(self
                .used()?
                .secrets
                .contains(&format!("{}/{}", s.metadata.namespace, s.metadata.name))),
            _ => Ok(node_may_read(&self.me, o, &|_| false)),
        }
    }
}
