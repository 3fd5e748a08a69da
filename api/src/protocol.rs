//! The wire protocol: one request per QUIC bidirectional stream, each message
//! a length-prefixed postcard frame.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. Every frame is bounded by [`MAX_FRAME`]; decoding never panics,
//! whatever the bytes. A connection opens with [`Request::Hello`] carrying
//! [`PROTOCOL_VERSION`]; ALPN ([`ALPN`]) names the protocol family too, so a
//! peer speaking another version fails at the handshake with a clear reason.
//!
//! Most requests get one response. Streams: `Watch` (events until either
//! side closes), `ListStream` (`List` frames then `End`), `Logs` with
//! `follow`, `GetModule` (chunks then `End`), and `PutModule`, where the
//! client sends the module's raw bytes after the master's `Ok`.
//!
//! No answer needs a frame larger than [`MAX_FRAME`]: an object is at most
//! 1.5 MiB (`manifest::MAX_OBJECT_SIZE`, checked when it is stored), so one
//! object, one watch event or one `Get` answer always fits, and a list of
//! any length streams in frames of [`LIST_FRAME_BYTES`] ([`list_frames`],
//! gathered again by [`ListCollector`]).

use crate::objects::{Kind, Object};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;

/// ALPN protocol name for clients and nodes talking to masters.
pub const ALPN: &[u8] = b"flotilla/1";
/// ALPN protocol name of masters talking to each other: raft messages, the
/// requests a follower makes of the leader, relayed logs. The same frames,
/// on connections only masters may open (a master's port serves both).
pub const RAFT_ALPN: &[u8] = b"flotilla-raft/1";
/// Every protocol a master serves.
pub const MASTER_ALPNS: [&[u8]; 2] = [ALPN, RAFT_ALPN];
/// Version carried in the hello; bumped on incompatible changes. 3: objects
/// travel self-describing (kind and JSON, see `objects::Object`).
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest frame accepted (a module chunk plus envelope fits easily).
pub const MAX_FRAME: usize = 4 << 20;
/// Size of module chunks on the wire.
pub const MODULE_CHUNK: usize = 256 << 10;
/// Largest module the cluster accepts (they are kept in the store and on every node).
pub const MAX_MODULE_SIZE: u64 = 64 << 20;
/// Most encoded bytes of objects in one frame of a streamed list; a larger
/// object (up to 1.5 MiB) goes alone. Small enough that no frame nears
/// [`MAX_FRAME`], large enough that a list of small objects takes few frames.
pub const LIST_FRAME_BYTES: usize = 1 << 20;

/// What a caller asks of a master (or a master of a node, for `Logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// First request on a connection.
    Hello {
        version: u32,
        agent: String,
    },
    /// A node without a certificate yet asks for one.
    Join {
        token: String,
        node_name: String,
        csr_pem: String,
    },
    /// Create an object; fails with `AlreadyExists`.
    Create(Object),
    /// Replace an object's spec and metadata; compare-and-swap on
    /// `metadata.resourceVersion` unless it is 0.
    Update(Object),
    /// Replace only the status (what nodes do).
    UpdateStatus(Object),
    /// Read one object. Linearizable unless `stale` (see [`ListOptions::stale`]).
    Get {
        kind: Kind,
        namespace: String,
        name: String,
        stale: bool,
    },
    List(ListOptions),
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        resource_version: u64,
    },
    /// Events after `from_revision` (0: now), until the stream is closed.
    Watch(WatchOptions),
    /// Upload a module. The master answers `ModuleStored` if it has it already,
    /// else `Ok`, after which the client sends exactly `size` raw bytes and
    /// the master answers `ModuleStored` once they are stored.
    PutModule {
        digest: String,
        size: u64,
        source: String,
    },
    GetModule {
        digest: String,
    },
    Logs {
        namespace: String,
        name: String,
        follow: bool,
        tail_lines: Option<u32>,
    },
    /// A node says it is alive.
    Heartbeat {
        node: String,
    },
    CreateToken {
        ttl_seconds: u64,
        description: String,
        /// A token for a master to join with (it hands out the CA key),
        /// instead of one for a node.
        master: bool,
    },
    /// A raft message from another master. The payload is postcard of the
    /// raft library's request type for `rpc`; this crate does not look inside.
    Raft {
        rpc: RaftRpc,
        #[serde(with = "bytes")]
        payload: Vec<u8>,
    },
    /// A new master asks for the cluster's CA with a master join token
    /// (`flotilla token create --master`), over a connection that pinned the
    /// CA named in the token. `node_id` 0 asks the cluster to pick one.
    JoinMaster {
        token: String,
        node_id: u64,
        addr: String,
    },
    /// The masters, the leader and how far each member has replicated.
    ClusterStatus,
    /// Take a master out of the raft membership.
    RemoveMaster {
        node_id: u64,
    },
    /// A master that joined (and now serves at `addr`) asks to become a
    /// member: a learner until it has caught up, then a voter.
    AddMaster {
        node_id: u64,
        addr: String,
    },
    /// A backup of the whole state, as of a linearizable read: answered with
    /// `Chunk`s of the encoded image, then `End`.
    Snapshot,
    /// A caller whose certificate is still valid asks for a new one for the
    /// same identity and a key of its own (the CSR's); answered `Renewed`.
    RenewCertificate {
        csr_pem: String,
    },
    /// The expiry of the cluster CA and of the answering master's
    /// certificates (and of the other masters' it is connected to).
    Certificates,
    /// A join token for one node name, which may be taken already (a
    /// machine that replaces a node keeps its name).
    CreateNodeToken {
        ttl_seconds: u64,
        description: String,
        node_name: String,
    },
    /// A list that may be larger than one frame: answered by one or more
    /// `Response::List` frames, each with the list's revision and the next
    /// of its items (see [`list_frames`]), then `End`. All frames come from
    /// one read of the store, as one `List` answer would. `List` itself
    /// stays for older clients and fails with `TooLarge` past one frame.
    ListStream(ListOptions),
    /// Replace the status of several objects, each as `UpdateStatus` would:
    /// what a node sends for the pods whose state changed together. The
    /// writes share raft entries; the answer is `Response::Statuses`, one
    /// result per object, in order. At most [`MAX_STATUS_BATCH`] objects.
    UpdateStatuses(Vec<Object>),
    /// Delete an object, saying what becomes of the objects it owns
    /// (`Delete` is this with [`Propagation::Background`]).
    DeleteWith {
        kind: Kind,
        namespace: String,
        name: String,
        resource_version: u64,
        propagation: Propagation,
    },
    /// Read a Secret with its values (every other read hides them):
    /// admins, and nodes whose pods use it. Answered `Object`.
    RevealSecret {
        namespace: String,
        name: String,
        stale: bool,
    },
    /// A node asks for a module's code compiled for its engine, so that it
    /// need not compile it: answered `Code`, then the code in `Chunk`s,
    /// then `End`; or an error, after which the node compiles by itself.
    /// The master compiles for `target` only if its engine for it has this
    /// `fingerprint`.
    GetCode {
        digest: String,
        target: crate::objects::CodeTarget,
        fingerprint: String,
    },
    /// A pod's logs, with every option of `flotilla logs` (`Logs` is the
    /// older form, without `previous`, `timestamps` and `since`, still
    /// understood, and still sent to nodes when it says enough).
    PodLogs(LogOptions),
    /// Which release the master runs: answered `Version`.
    Version,
    /// What creating (or, with `update`, updating) `object` would store,
    /// checked as the write would be (who may, admission) but not written
    /// (`apply --dry-run=server`). `modules` are digests the client would
    /// upload first: counted as uploaded. Answered `Object`.
    DryRun {
        object: Object,
        update: bool,
        modules: Vec<String>,
    },
    /// The join tokens (admins): answered `Tokens`.
    ListTokens,
    /// Revokes a join token by its id (the third part of the token):
    /// answered `Ok`. A node or master that joined with it keeps its
    /// certificate.
    RevokeToken {
        id: String,
    },
    /// A join token for nodes that counts its uses, limited to
    /// `max_uses` joins (None: as many as come before it expires) and to
    /// node names that start with `name_prefix` (empty: any). Answered `Token`.
    CreateLimitedToken {
        ttl_seconds: u64,
        description: String,
        name_prefix: String,
        max_uses: Option<u32>,
    },
    /// Makes a User (admins only) and signs `csr_pem` for it: answered
    /// `Joined` with the user's certificate, the CA and the masters.
    CreateUser {
        #[serde(with = "crate::objects::as_object")]
        user: crate::objects::User,
        csr_pem: String,
    },
    /// Revokes a user: every master refuses its certificates from now on.
    /// Answered `Object` with the User as revoked.
    RevokeUser {
        name: String,
    },
}

/// A join token as `token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    /// `node`, `node NAME` (for that node name only), `node PREFIX*`
    /// (for names with that prefix) or `master`.
    pub kind: String,
    pub description: String,
    pub expires: crate::time::Time,
    /// The joins made with it so far, for tokens that count them (every
    /// node token made since counting began).
    pub uses: Option<u32>,
    /// How many joins it allows; None: as many as come before it expires.
    pub max_uses: Option<u32>,
}

/// What of a pod's logs is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogOptions {
    pub namespace: String,
    pub name: String,
    /// Keep streaming what the pod writes next.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u32>,
    /// The run before the current one (the program's previous start).
    pub previous: bool,
    /// Each line after the time it was written (RFC 3339, nanoseconds).
    pub timestamps: bool,
    /// Only lines written in the last N seconds, by the node's clock.
    pub since_seconds: Option<u64>,
    /// Only lines written at or after this time.
    pub since_time: Option<crate::time::Time>,
}

impl LogOptions {
    /// The request that asks for these: the older `Logs` when it can say
    /// them all (so a node of an older release answers it), else `PodLogs`.
    pub fn request(&self) -> Request {
        if self.previous
            || self.timestamps
            || self.since_seconds.is_some()
            || self.since_time.is_some()
        {
            return Request::PodLogs(self.clone());
        }
        Request::Logs {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            follow: self.follow,
            tail_lines: self.tail_lines,
        }
    }

    /// The options a log request carries (None: not a log request).
    pub fn of(req: &Request) -> Option<LogOptions> {
        match req {
            Request::Logs {
                namespace,
                name,
                follow,
                tail_lines,
            } => Some(LogOptions {
                namespace: namespace.clone(),
                name: name.clone(),
                follow: *follow,
                tail_lines: *tail_lines,
                ..LogOptions::default()
            }),
            Request::PodLogs(o) => Some(o.clone()),
            _ => None,
        }
    }
}

/// What deleting an owner does to the objects it owns (their
/// `ownerReferences` name it), as `kubectl delete --cascade` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Propagation {
    /// The owner goes at once; the garbage collector deletes what it owned
    /// soon after.
    #[default]
    Background,
    /// The owner goes; what it owned stays, without the reference to it.
    Orphan,
    /// The owner stays, marked for deletion (`foregroundDeletion`), until
    /// the garbage collector has deleted what it owned (those with
    /// `blockOwnerDeletion`); then it goes.
    Foreground,
}

/// Most objects in one [`Request::UpdateStatuses`]: a raft entry holds up
/// to 128 commands, so a batch this size fits one.
pub const MAX_STATUS_BATCH: usize = 128;

/// Which raft message a [`Request::Raft`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A write a follower received, for the leader to propose.
    Forward,
    /// A follower asks the leader up to which log index it must have applied
    /// before it serves a linearizable read.
    ReadIndex,
    /// Add a master to the membership (a master that joined asks this) or
    /// remove one (`flotilla cluster remove`).
    ChangeMembership,
    /// A follower asks the leader for the cluster's status (only the leader
    /// knows how far each member has replicated).
    Status,
    /// A follower passes on a node's heartbeat to the leader, which tracks them.
    Heartbeat,
    /// The leader tells a master it has just removed from the membership
    /// (payload: that master's id), which then stops: the leader no longer
    /// replicates to it, so it would not learn of it otherwise.
    Removed,
    /// The leader asks a master for the hash of its state right after the
    /// log entry at an index (payload: the index), to compare the masters'
    /// states.
    StateHash,
    /// The leader tells a master that its state differs from the other
    /// masters' (payload: why); it refuses reads from then on.
    StateDiffers,
    /// A master that has just started asks the leader to compare the
    /// masters' states now (payload: its id).
    CheckStates,
}

/// Filters of a list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListOptions {
    pub kind: Option<Kind>,
    /// None: every namespace.
    pub namespace: Option<String>,
    /// A label selector string (`app=web`).
    pub label_selector: String,
    /// Only pods bound to this node.
    pub node_name: Option<String>,
    /// Serve from this master's copy without confirming with the leader:
    /// faster and available without a majority, but possibly behind the
    /// latest writes. Reads are linearizable otherwise.
    pub stale: bool,
}

/// Byte buffers as one run of bytes: the same bytes on the wire as a
/// `Vec<u8>` (postcard writes a length, then one byte per element), but
/// encoded and decoded as a single copy instead of one call per byte —
/// which, for a raft message near a megabyte, is the difference between
/// well under a millisecond and most of a heartbeat interval.
mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        // Formats that write bytes as a sequence (not postcard) still decode.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// What to watch and from when.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchOptions {
    pub list: ListOptions,
    /// Deliver changes with a revision greater than this; 0 means from now.
    pub from_revision: u64,
}

/// A master's (or node's) answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    Hello {
        version: u32,
        identity: String,
        masters: Vec<String>,
    },
    Joined {
        cert_pem: String,
        ca_pem: String,
        masters: Vec<String>,
    },
    Object(Object),
    List {
        revision: u64,
        items: Vec<Object>,
    },
    Event(WatchEvent),
    /// Module bytes or raw log bytes.
    Chunk(#[serde(with = "bytes")] Vec<u8>),
    ModuleStored {
        digest: String,
        size: u64,
        existed: bool,
    },
    Token {
        token: String,
        expires: crate::time::Time,
    },
    Ok,
    /// The end of a stream of chunks.
    End,
    Error(ApiError),
    /// The answer to a [`Request::Raft`]: postcard of the raft library's
    /// whole result (its response or its error).
    Raft(#[serde(with = "bytes")] Vec<u8>),
    /// What a joining master needs: its id and the cluster's CA (key
    /// included: every master signs node certificates).
    MasterJoined {
        node_id: u64,
        cluster: String,
        ca_cert_pem: String,
        ca_key_pem: String,
        masters: Vec<String>,
    },
    ClusterStatus(ClusterStatus),
    /// A renewed certificate (PEM) and the CA that signed it.
    Renewed {
        cert_pem: String,
        ca_pem: String,
    },
    Certificates(Vec<CertificateStatus>),
    /// The answer to `Request::UpdateStatuses`: for each object, in order,
    /// its resourceVersion once its status was written, or why it was not.
    Statuses(Vec<Result<u64, ApiError>>),
    /// The head of a `GetCode` answer: the code's digest, as the module's
    /// `status.code` records it, and its size; the chunks follow.
    Code {
        sha256: String,
        size: u64,
    },
    /// The master's release (`Cargo` version) and protocol version.
    Version {
        version: String,
        protocol: u32,
    },
    /// The join tokens (`ListTokens`).
    Tokens(Vec<TokenInfo>),
}

/// One certificate a master knows of, for `flotilla cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// What it is: `cluster CA`, `master 1 serving`, `master 1 raft client`.
    pub name: String,
    pub not_before: crate::time::Time,
    pub not_after: crate::time::Time,
}

/// The raft cluster of masters as the leader sees it (or, when the leader
/// cannot be reached, as the answering master does).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The master that produced this view.
    pub reported_by: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// The highest log index known committed and applied by the reporter.
    pub commit_index: u64,
    pub members: Vec<MasterStatus>,
}

/// One master of a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MasterStatus {
    pub node_id: u64,
    pub addr: String,
    /// Voters elect and commit; a learner only receives the log (a master
    /// that is catching up after joining).
    pub voter: bool,
    /// The highest log index the leader knows this member holds (None: not
    /// known, e.g. the reporter is not the leader).
    pub matched: Option<u64>,
    /// How many entries this member is behind the leader.
    pub lag: Option<u64>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: u64,
    pub kind: EventType,
    /// The object after the change (for `Deleted`, as it was last).
    pub object: Object,
}

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    /// Sent by a watch to say the stream is live up to this revision (`object` is a placeholder copy of the last one seen, if any).
    Bookmark,
}

/// A typed failure the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Classes of failure, like HTTP status codes in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or fails validation (the message names the field).
    Invalid,
    /// The caller presented no valid certificate.
    Unauthenticated,
    /// The caller's identity may not do this.
    Forbidden,
    NotFound,
    AlreadyExists,
    /// The object changed since it was read (resourceVersion mismatch): re-read and retry.
    Conflict,
    /// A watch asked for history that is compacted: list again.
    TooOld,
    TooLarge,
    /// The master cannot serve this now (e.g. node not connected); retry later.
    Unavailable,
    VersionMismatch,
    Internal,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame is truncated: {0}")]
    Truncated(&'static str),
    #[error("frame does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Splits the items of a list into the frames of a [`Request::ListStream`]
/// answer, in order: each frame holds at most `budget` bytes of encoded
/// objects, or one larger object alone. Always at least one frame (an empty
/// list is one empty frame), so the answer carries its revision.
pub fn list_frames(items: Vec<Object>, budget: usize) -> Vec<Vec<Object>> {
    split_objects(items, budget, usize::MAX)
}

/// Encoded bytes of objects in one [`Request::UpdateStatuses`]: with the
/// largest object alone (1.5 MiB) the frame stays well under [`MAX_FRAME`].
pub const STATUS_BATCH_BYTES: usize = 1 << 20;

/// Splits status reports into the requests of [`Request::UpdateStatuses`],
/// in order: at most [`MAX_STATUS_BATCH`] objects and [`STATUS_BATCH_BYTES`]
/// bytes each, or one larger object alone. No request for no reports.
pub fn status_batches(items: Vec<Object>) -> Vec<Vec<Object>> {
    let mut batches = split_objects(items, STATUS_BATCH_BYTES, MAX_STATUS_BATCH);
    batches.retain(|b| !b.is_empty());
    batches
}

/// Splits objects in order into groups of at most `budget` encoded bytes
/// (or one larger object alone) and `count` objects; at least one group.
fn split_objects(items: Vec<Object>, budget: usize, count: usize) -> Vec<Vec<Object>> {
    let mut frames = vec![Vec::new()];
    let mut bytes = 0usize;
    for item in items {
        let size = postcard::serialize_with_flavor(&item, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX);
        let current = frames.last().map_or(0, Vec::len);
        if current > 0 && (current >= count || bytes.saturating_add(size) > budget) {
            frames.push(Vec::new());
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        if let Some(frame) = frames.last_mut() {
            frame.push(item);
        }
    }
    frames
}

/// Why the answer to a [`Request::ListStream`] is not a list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ListStreamError {
    /// The master answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// A frame that has no place in a list stream.
    #[error("unexpected answer in a list: {0}")]
    Unexpected(String),
}

/// Gathers the frames of a [`Request::ListStream`] answer into the list.
#[derive(Debug, Default)]
pub struct ListCollector {
    revision: Option<u64>,
    items: Vec<Object>,
}

impl ListCollector {
    /// Takes the next frame of the answer; gives the list's revision and
    /// items once `End` arrives, `None` before.
    pub fn take(&mut self, frame: Response) -> Result<Option<(u64, Vec<Object>)>, ListStreamError> {
        match frame {
            Response::List { revision, items } => {
                if self.revision.is_some_and(|r| r != revision) {
                    return Err(ListStreamError::Unexpected(format!(
                        "a frame of revision {revision} in a list of revision {}",
                        self.revision.unwrap_or_default()
                    )));
                }
                self.revision = Some(revision);
                self.items.extend(items);
                Ok(None)
            }
            Response::End => match self.revision {
                Some(revision) => Ok(Some((revision, std::mem::take(&mut self.items)))),
                None => Err(ListStreamError::Unexpected(
                    "the list ended before any of it arrived".into(),
                )),
            },
            Response::Error(e) => Err(ListStreamError::Api(e)),
            other => Err(ListStreamError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    let out = postcard::to_extend(msg, std::mem::take(&mut out))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = out;
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length from a 4-byte prefix, refusing oversized frames.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        Err(FrameError::TooLarge(len))
    } else {
        Ok(len)
    }
}

/// Decodes a frame body (without the length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(FrameError::Truncated("trailing bytes after the message"));
    }
    Ok(msg)
}

/// Decodes one whole frame (length prefix included); the buffer must hold exactly one.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let prefix: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated("shorter than the length prefix"))?;
    let len = frame_len(prefix)?;
    let body = bytes
        .get(4..)
        .ok_or(FrameError::Truncated("missing body"))?;
    if body.len() != len {
        return Err(FrameError::Truncated("body length differs from its prefix"));
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Pod, PodSpec};

    fn sample_requests() -> Vec<Request> {
        let mut pod = Pod::default();
        pod.metadata.name = "p".into();
        pod.spec = PodSpec {
            module: "sha256:00".into(),
            args: vec!["x".into()],
            ..PodSpec::default()
        };
        vec![
            Request::Hello {
                version: PROTOCOL_VERSION,
                agent: "test".into(),
            },
            Request::Create(Object::Pod(pod)),
            Request::List(ListOptions {
                kind: Some(Kind::Pod),
                label_selector: "a=b".into(),
                ..ListOptions::default()
            }),
            Request::Watch(WatchOptions {
                from_revision: 7,
                ..WatchOptions::default()
            }),
            Request::Logs {
                namespace: "default".into(),
                name: "p".into(),
                follow: true,
                tail_lines: Some(3),
            },
            Request::Raft {
                rpc: RaftRpc::AppendEntries,
                payload: vec![0, 1, 2, 255],
            },
            Request::Raft {
                rpc: RaftRpc::InstallSnapshot,
                payload: Vec::new(),
            },
            Request::ListStream(ListOptions {
                kind: Some(Kind::Pod),
                node_name: Some("n1".into()),
                ..ListOptions::default()
            }),
            Request::PodLogs(LogOptions {
                namespace: "default".into(),
                name: "p".into(),
                previous: true,
                timestamps: true,
                since_seconds: Some(60),
                since_time: Some(crate::time::Time(1_000)),
                ..LogOptions::default()
            }),
            Request::Version,
            Request::DryRun {
                object: Object::Pod(crate::Pod::default()),
                update: true,
                modules: vec!["sha256:00".into()],
            },
            Request::ListTokens,
            Request::RevokeToken { id: "abc".into() },
            Request::CreateLimitedToken {
                ttl_seconds: 60,
                description: "pis".into(),
                name_prefix: "pi-".into(),
                max_uses: Some(1),
            },
            Request::CreateUser {
                user: crate::objects::User::default(),
                csr_pem: "csr".into(),
            },
            Request::RevokeUser { name: "bob".into() },
        ]
    }

    fn pod_of(name: &str, bytes: usize) -> Object {
        let mut pod = Pod::default();
        pod.metadata.name = name.into();
        pod.metadata
            .annotations
            .insert("example.com/blob".into(), "x".repeat(bytes));
        Object::Pod(pod)
    }

    fn names(frame: &[Object]) -> Vec<&str> {
        frame.iter().map(|o| o.meta().name.as_str()).collect()
    }

    #[test]
    fn byte_buffers_keep_the_wire_format_of_a_vec() {
        // What these variants were before their bytes were encoded as one run.
        #[derive(Serialize)]
        enum Before {
            Raft { rpc: RaftRpc, payload: Vec<u8> },
        }
        let payload: Vec<u8> = (0..=255).chain(0..300).map(|b| b as u8).collect();
        let now = Request::Raft {
            rpc: RaftRpc::AppendEntries,
            payload: payload.clone(),
        };
        let before = Before::Raft {
            rpc: RaftRpc::AppendEntries,
            payload: payload.clone(),
        };
        let (now, before) = (
            postcard::to_allocvec(&now).expect("encodes"),
            postcard::to_allocvec(&before).expect("encodes"),
        );
        // The variant index differs (Raft is not the first request); the rest must not.
        assert_eq!(now[1..], before[1..]);
        let chunk = postcard::to_allocvec(&Response::Chunk(payload.clone())).expect("encodes");
        let plain = postcard::to_allocvec(&payload).expect("encodes");
        assert_eq!(chunk[1..], plain[..]);
        assert_eq!(
            decode_body::<Response>(&chunk).expect("decodes"),
            Response::Chunk(payload)
        );
    }

    #[test]
    fn lists_split_into_frames_that_fit() {
        const KIB: usize = 1 << 10;
        /// Annotation sizes of the items, the budget, the names in each frame.
        type Case = (Vec<usize>, usize, Vec<Vec<&'static str>>);
        let cases: Vec<Case> = vec![
            (vec![], 100 * KIB, vec![vec![]]),
            (vec![10, 10, 10], 100 * KIB, vec![vec!["0", "1", "2"]]),
            (
                vec![40 * KIB; 5],
                100 * KIB,
                vec![vec!["0", "1"], vec!["2", "3"], vec!["4"]],
            ),
            // A larger object than the budget goes alone, never dropped.
            (
                vec![10, 300 * KIB, 10],
                100 * KIB,
                vec![vec!["0"], vec!["1"], vec!["2"]],
            ),
        ];
        for (sizes, budget, expected) in cases {
            let items = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| pod_of(&i.to_string(), *n))
                .collect();
            let frames = list_frames(items, budget);
            let got: Vec<Vec<&str>> = frames.iter().map(|f| names(f)).collect();
            assert_eq!(got, expected, "sizes {sizes:?}");
        }
    }

    #[test]
    fn status_reports_go_in_requests_bounded_in_count_and_bytes() {
        assert!(status_batches(vec![]).is_empty(), "no reports, no request");
        let small: Vec<Object> = (0..300).map(|i| pod_of(&i.to_string(), 10)).collect();
        let sizes: Vec<usize> = status_batches(small.clone()).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_STATUS_BATCH, MAX_STATUS_BATCH, 44]);
        let again: Vec<Object> = status_batches(small.clone()).concat();
        assert_eq!(again, small, "every report once, in order");
        // Four objects at the size limit: each request carries what fits
        // under the byte budget, and every one encodes inside a frame.
        let large: Vec<Object> = (0..4)
            .map(|i| pod_of(&i.to_string(), (1536 << 10) - 200))
            .collect();
        let batches = status_batches(large);
        assert_eq!(batches.len(), 4);
        for batch in batches {
            encode_frame(&Request::UpdateStatuses(batch)).expect("a request fits a frame");
        }
        // The answer of a full batch fits too, errors and all.
        let answer = Response::Statuses(
            (0..MAX_STATUS_BATCH)
                .map(|i| {
                    if i % 2 == 0 {
                        Ok(i as u64)
                    } else {
                        Err(ApiError::new(ErrorCode::Conflict, "x".repeat(500)))
                    }
                })
                .collect(),
        );
        let bytes = encode_frame(&answer).expect("fits");
        assert_eq!(decode_frame::<Response>(&bytes).expect("decodes"), answer);
    }

    #[test]
    fn a_list_of_large_objects_streams_in_frames_under_the_limit() {
        // Eight objects at the 1.5 MiB limit: 12 MiB, three times a frame.
        let items: Vec<Object> = (0..8)
            .map(|i| pod_of(&i.to_string(), (1536 << 10) - 200))
            .collect();
        assert!(encode_frame(&Response::List {
            revision: 9,
            items: items.clone()
        })
        .is_err());
        let mut collector = ListCollector::default();
        for frame in list_frames(items.clone(), LIST_FRAME_BYTES) {
            let bytes = encode_frame(&Response::List {
                revision: 9,
                items: frame,
            })
            .expect("every frame fits");
            let frame = decode_frame::<Response>(&bytes).expect("decodes");
            assert_eq!(collector.take(frame).expect("a list frame"), None);
        }
        assert_eq!(
            collector.take(Response::End).expect("the end"),
            Some((9, items))
        );
    }

    #[test]
    fn list_streams_that_are_not_lists_are_errors() {
        let list = |revision| Response::List {
            revision,
            items: vec![pod_of("a", 1)],
        };
        let mut c = ListCollector::default();
        assert!(matches!(
            c.take(Response::End),
            Err(ListStreamError::Unexpected(_))
        ));
        let mut c = ListCollector::default();
        c.take(list(3)).expect("first frame");
        assert!(matches!(
            c.take(list(4)),
            Err(ListStreamError::Unexpected(_))
        ));
        let mut c = ListCollector::default();
        let e = ApiError::new(ErrorCode::Forbidden, "no");
        assert_eq!(
            c.take(Response::Error(e.clone())),
            Err(ListStreamError::Api(e))
        );
        let mut c = ListCollector::default();
        assert!(matches!(
            c.take(Response::Ok),
            Err(ListStreamError::Unexpected(_))
        ));
    }

    #[test]
    fn frames_round_trip() {
        for req in sample_requests() {
            let bytes = encode_frame(&req).expect("encodes");
            assert_eq!(decode_frame::<Request>(&bytes).expect("decodes"), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        for resp in [
            Response::Raft(vec![9, 8, 7]),
            Response::Ok,
            Response::End,
            Response::Version {
                version: "0.2.0".into(),
                protocol: PROTOCOL_VERSION,
            },
        ] {
            let bytes = encode_frame(&resp).expect("encodes");
            assert_eq!(decode_frame::<Response>(&bytes).expect("decodes"), resp);
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        assert!(matches!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        let big = Response::Chunk(vec![0; MAX_FRAME + 1]);
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random bytes, plus every truncation and bit flip of real frames.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_body::<Request>(&body);
            let _ = decode_body::<Response>(&body);
            let _ = decode_frame::<Request>(&body);
        }
        for req in sample_requests() {
            let bytes = encode_frame(&req).expect("encodes");
            for cut in 0..bytes.len() {
                let _ = decode_frame::<Request>(&bytes[..cut]);
            }
            for i in 4..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    let _ = decode_frame::<Request>(&b);
                }
            }
        }
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let bytes = encode_frame(&Request::Heartbeat { node: "n".into() }).expect("encodes");
        assert!(decode_frame::<Request>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_frame::<Request>(&longer).is_err());
    }
}
