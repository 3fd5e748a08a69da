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
//! side closes), `Logs` with `follow`, `GetModule` (chunks then `End`), and
//! `PutModule`, where the client sends the module's raw bytes after the master's `Ok`.

use crate::objects::{Kind, Object};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;

/// ALPN protocol name for clients and nodes talking to masters.
pub const ALPN: &[u8] = b"flotilla/1";
/// Version carried in the hello; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame accepted (a module chunk plus envelope fits easily).
pub const MAX_FRAME: usize = 4 << 20;
/// Size of module chunks on the wire.
pub const MODULE_CHUNK: usize = 256 << 10;
/// Largest module the cluster accepts (they are kept in the store and on every node).
pub const MAX_MODULE_SIZE: u64 = 64 << 20;

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
}

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
    Chunk(Vec<u8>),
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
    Raft(Vec<u8>),
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
        ]
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
        for resp in [Response::Raft(vec![9, 8, 7]), Response::Ok, Response::End] {
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
