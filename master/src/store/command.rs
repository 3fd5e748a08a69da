//! The writes the store accepts ([`Command`]) and what they return
//! ([`Outcome`]): the entries a replicated log will carry, so they are plain
//! serde data (postcard-friendly) with every uid and timestamp filled in by
//! whoever proposes them.

use flotilla_api::objects::{legacy, Kind, Module, Object};
use flotilla_api::time::Time;
use serde::{Deserialize, Serialize};

/// The largest piece of a module one raft entry carries.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// The most module bytes the store keeps in one value. redb gives every
/// value a page of a power-of-two size (4 KiB up), so this stays just under
/// 256 KiB, leaving room for the key, the checksum and the page's header: a
/// chunk of exactly 256 KiB would take a 512 KiB page. Small enough that a
/// module's last, partial chunk wastes little, and that a download sends one
/// chunk per frame (`flotilla_api::protocol::MODULE_CHUNK`).
pub const STORED_CHUNK: usize = (256 << 10) - 1024;

/// What the master puts in one [`Command::PutModuleChunk`]: as many whole
/// stored chunks as fit in [`UPLOAD_CHUNK`], so that none is split between
/// two entries (the store would keep the halves as two values).
pub const UPLOAD_PIECE: usize = UPLOAD_CHUNK / STORED_CHUNK * STORED_CHUNK;

/// One write to the cluster state; applied deterministically by
/// [`Store::apply`](super::Store::apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Stores a new object; `AlreadyExists` if the key exists. The store sets
    /// `metadata.resourceVersion` to the new revision and `generation` to 1;
    /// `uid` and `creationTimestamp` come from the caller. Modules are
    /// created with [`Command::PutModule`] instead, so their bytes come along.
    Create { object: Object },
    /// Replaces spec and metadata (labels, annotations, ownerReferences),
    /// keeping the stored status, uid and creationTimestamp; `generation`
    /// grows by one if the spec changed. With `status_only`, replaces only the
    /// status. `expected_rv: Some(rv)` is a compare-and-swap: `Conflict`
    /// unless the stored resourceVersion is `rv`. `NotFound` if absent. An
    /// update that changes nothing writes nothing and uses no revision.
    Update {
        object: Object,
        expected_rv: Option<u64>,
        status_only: bool,
    },
    /// Removes an object (compare-and-swap as for `Update`); deleting a
    /// Module removes its bytes too, and is `Invalid` while a pod refers to it.
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        expected_rv: Option<u64>,
    },
    /// [`Command::PutModule`] as protocol 2 wrote it (the module positional);
    /// read from older raft logs only.
    LegacyPutModule {
        module: legacy::Module,
        bytes: Vec<u8>,
    },
    /// Stages `bytes` at `offset` of the module `digest` being uploaded in
    /// pieces (a raft entry stays small however big the module). Offset 0
    /// starts the upload over. At most [`UPLOAD_CHUNK`] bytes, kept as values
    /// of at most [`STORED_CHUNK`]; nothing is visible until
    /// [`Command::CommitModule`]. Changes nothing if the module is stored.
    PutModuleChunk {
        digest: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// [`Command::CommitModule`] as protocol 2 wrote it; read from older raft logs only.
    LegacyCommitModule { module: legacy::Module },
    /// Drops the staged chunks of an upload that will not be committed (none
    /// if the module is stored: they are its bytes).
    DiscardUpload { digest: String },
    /// Several commands proposed together as one raft entry (the leader
    /// gathers concurrent writes this way, so they share one log write):
    /// applied in order, each as if it were its own entry. A refused one
    /// changes nothing and the others still apply. Applied only from the raft
    /// log (`Store::apply_raft_batch_command`); batches do not nest.
    Batch(Vec<Command>),
    /// Stores (or replaces) a join token.
    PutToken { record: TokenRecord },
    /// Removes a join token; `NotFound` if absent.
    DeleteToken { id: String },
    /// Changes nothing. Each master computes the hash of its state right
    /// after applying this entry, so the leader can compare the masters at
    /// one log index (see `crate::raft::check`).
    CheckState,
    // The log is postcard: variants are numbered by position, so new ones
    // come last.
    /// Stores a Module object (cluster-scoped, named
    /// `flotilla_api::objects::module_name(digest)`) and its bytes together.
    /// Idempotent: if the module exists, nothing changes and no revision is
    /// used. `Invalid` unless `module.spec.digest` is the digest of `bytes`.
    PutModule {
        #[serde(with = "flotilla_api::objects::as_object")]
        module: Module,
        bytes: Vec<u8>,
    },
    /// Makes the staged chunks of `module.spec.digest` a module, as `PutModule`
    /// does: `Invalid` unless they are contiguous from 0 and hash to the
    /// digest. The chunks stay where they are and become the module's bytes.
    CommitModule {
        #[serde(with = "flotilla_api::objects::as_object")]
        module: Module,
    },
    /// Places the pod `namespace/name` (with this `uid`) on `node`: its
    /// `spec.nodeName` and its PodScheduled condition (at `at`) in one
    /// write, the nomination cleared. `NotFound` if the pod is gone or was
    /// replaced (another uid); `Invalid` if it is bound elsewhere already.
    /// Binding it again to the same node changes nothing.
    Bind {
        namespace: String,
        name: String,
        uid: String,
        node: String,
        at: Time,
    },
    /// Deletes an object as [`Command::Delete`] does and, in the same
    /// write, removes the references to it from the objects it owned in
    /// its namespace, which stay (deletion with `--cascade=orphan`). The
    /// owner goes first, so a controller that sees a dependent without its
    /// owner never finds the owner there to adopt it again.
    DeleteOrphaning {
        kind: Kind,
        namespace: String,
        name: String,
        expected_rv: Option<u64>,
    },
    /// Deletes an object as the API does, at `at`. An object that has
    /// finalizers, is deleted in the foreground (which adds
    /// `foregroundDeletion`), or is a Namespace (which adds
    /// `flotilla.dev/namespace`) is not removed but marked: its
    /// `deletionTimestamp` is set and it goes when an update leaves it no
    /// finalizer. Otherwise it is removed as by [`Command::Delete`]. With
    /// `Orphan`, the references to it are removed from its dependents in
    /// the same write, as by [`Command::DeleteOrphaning`]. Deleting an
    /// object already marked changes nothing unless it adds a finalizer.
    DeleteAt {
        kind: Kind,
        namespace: String,
        name: String,
        expected_rv: Option<u64>,
        propagation: flotilla_api::protocol::Propagation,
        at: Time,
    },
    /// Counts one join with the token `id`, if its usage counts joins
    /// ([`TokenUsage::NodeCounted`]): `Invalid` once it has had all the
    /// joins it allows (of two joins racing for a token's last use, the
    /// log orders them and the second is refused), `NotFound` if the token
    /// is gone. Other tokens are left as they are.
    UseToken { id: String },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The object as stored by a create or update (or marked for deletion
    /// by [`Command::DeleteAt`]).
    Object(Object),
    /// The object as it was last, with `resourceVersion` = the delete's revision.
    Deleted(Object),
    /// A module was stored (`existed: false`) or was already there.
    ModuleStored { existed: bool },
    /// A token command succeeded.
    Done,
}

/// A join token as the master keeps it: only a hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub expires: Time,
    pub description: String,
    /// What the token lets its holder do.
    pub usage: TokenUsage,
}

/// What a join token is for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TokenUsage {
    /// Join an edge node (get a node certificate) under a name no node has.
    #[default]
    Node,
    /// Join a master (get the cluster CA, key included).
    Master,
    /// Join an edge node under this name even if a node holds it (a machine
    /// that replaces a dead one): `flotilla token create --node NAME`.
    NodeNamed(String),
    // Stored and logged as postcard: new variants come last.
    /// Join edge nodes under names no node has, counting the joins
    /// ([`Command::UseToken`]): names must start with `name_prefix` (any if
    /// empty), and at most `max_uses` nodes join (None: no limit).
    NodeCounted {
        name_prefix: String,
        max_uses: Option<u32>,
        uses: u32,
    },
}

impl TokenUsage {
    /// Whether the token joins edge nodes (rather than masters).
    pub fn joins_nodes(&self) -> bool {
        !matches!(self, TokenUsage::Master)
    }
}
