//! The receiving side of raft between masters: a [`Request::Raft`] from
//! another master, already authenticated and authorized by the service, is
//! decoded into openraft's request, handed to the local [`Raft`], and its
//! whole `Result` encoded back, so the sender sees a remote raft error as the
//! same value a local call would give (see [`super::network`]).
//!
//! Payloads are postcard, like every other frame of the protocol; openraft's
//! message types (with its `serde` feature) use no serde attribute postcard
//! cannot carry, which the tests below check on each type sent.
//!
//! [`Request::Raft`]: flotilla_api::protocol::Request::Raft

use super::TypeConfig;
use flotilla_api::protocol::{ApiError, ErrorCode, RaftRpc};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a raft payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("cannot encode a raft message: {0}")]
    Encode(postcard::Error),
    #[error("raft payload does not decode: {0}")]
    Decode(postcard::Error),
    #[error("raft payload has {0} bytes after the message")]
    Trailing(usize),
    #[error("raft message of {0} bytes does not fit in one frame")]
    TooLarge(usize),
}

/// Postcard of a raft message or result.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(CodecError::Encode)
}

/// Decodes exactly one value from `bytes`; trailing bytes are an error, so a
/// payload means one thing only.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError::Decode)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    Ok(value)
}

fn invalid(e: CodecError) -> ApiError {
    ApiError::new(ErrorCode::Invalid, e.to_string())
}

fn internal(e: CodecError) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Serves one raft message: decodes `payload` as the request of `rpc`, calls
/// `raft`, and encodes openraft's `Result` (response or raft error). A payload
/// that does not decode is `Invalid`; nothing here panics on any bytes.
pub async fn handle(
    raft: &Raft<TypeConfig>,
    rpc: RaftRpc,
    payload: &[u8],
) -> Result<Vec<u8>, ApiError> {
    match rpc {
        RaftRpc::AppendEntries => {
            let req: AppendEntriesRequest<TypeConfig> = decode(payload).map_err(invalid)?;
            encode(&raft.append_entries(req).await).map_err(internal)
        }
        RaftRpc::Vote => {
            let req: VoteRequest<u64> = decode(payload).map_err(invalid)?;
            encode(&raft.vote(req).await).map_err(internal)
        }
        RaftRpc::InstallSnapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = decode(payload).map_err(invalid)?;
            encode(&raft.install_snapshot(req).await).map_err(internal)
        }
        // A newer master's message this one does not know.
        other => Err(ApiError::new(
            ErrorCode::Invalid,
            format!("raft message {other:?} is not served by this master"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, LogId, RaftStorageError};
    use crate::store::Command;
    use flotilla_api::meta::ObjectMeta;
    use flotilla_api::objects::{Object, Pod};
    use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
    use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
    use openraft::{
        BasicNode, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, Membership,
        SnapshotMeta, SnapshotSegmentId, StorageIOError, StoredMembership, Vote,
    };
    use std::collections::{BTreeMap, BTreeSet};

    /// Encodes, decodes and encodes again: the same bytes both times means
    /// nothing was lost on the way (not every openraft type is `PartialEq`).
    fn round_trips<T: Serialize + DeserializeOwned>(value: &T) {
        let bytes = encode(value).expect("encodes");
        let back: T = decode(&bytes).expect("decodes");
        assert_eq!(encode(&back).expect("encodes again"), bytes);
        // And no truncation or extension of it decodes as the same message.
        for cut in 0..bytes.len() {
            let _ = decode::<T>(&bytes[..cut]);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<T>(&longer).is_err());
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn membership() -> Membership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
            .collect();
        Membership::new(
            vec![nodes.keys().copied().collect::<BTreeSet<u64>>()],
            nodes,
        )
    }

    fn storage_error() -> RaftStorageError {
        StorageIOError::new(
            ErrorSubject::Apply(log_id(2, 5)),
            ErrorVerb::Write,
            openraft::AnyError::error("disk full"),
        )
        .into()
    }

    #[test]
    fn openraft_messages_and_results_survive_postcard() {
        let vote = Vote::new_committed(3, 1);
        let mut pod = Pod {
            metadata: ObjectMeta::named("default", "p"),
            ..Pod::default()
        };
        pod.metadata.labels.insert("app".into(), "web".into());
        let entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(3, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 2),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(3, 3),
                payload: EntryPayload::Normal(Command::Create {
                    object: Object::Pod(pod),
                }),
            },
        ];
        round_trips(&AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(2, 9)),
            entries,
            leader_commit: Some(log_id(3, 1)),
        });
        type AppendResult = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
        round_trips::<AppendResult>(&Ok(AppendEntriesResponse::Success));
        round_trips::<AppendResult>(&Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(
            3, 2,
        )))));
        round_trips::<AppendResult>(&Ok(AppendEntriesResponse::Conflict));
        round_trips::<AppendResult>(&Ok(AppendEntriesResponse::HigherVote(vote)));
        round_trips::<AppendResult>(&Err(RaftError::Fatal(Fatal::Stopped)));
        round_trips::<AppendResult>(&Err(RaftError::Fatal(Fatal::StorageError(storage_error()))));

        round_trips(&VoteRequest::new(vote, Some(log_id(3, 3))));
        type VoteResult = Result<VoteResponse<u64>, RaftError<u64>>;
        round_trips::<VoteResult>(&Ok(VoteResponse::new(vote, Some(log_id(3, 3)), true)));

        let meta = SnapshotMeta {
            last_log_id: Some(log_id(3, 3)),
            last_membership: StoredMembership::new(Some(log_id(3, 2)), membership()),
            snapshot_id: "3-1-3-0".into(),
        };
        round_trips(&InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta,
            offset: 1 << 20,
            data: vec![1, 2, 3],
            done: true,
        });
        type SnapshotResult =
            Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
        round_trips::<SnapshotResult>(&Ok(InstallSnapshotResponse { vote }));
        let segment = |offset| SnapshotSegmentId {
            id: "s".into(),
            offset,
        };
        round_trips::<SnapshotResult>(&Err(RaftError::APIError(
            InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: segment(0),
                got: segment(7),
            }),
        )));
    }

    #[test]
    fn garbage_payloads_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
            let _ = decode::<VoteRequest<u64>>(&bytes);
            let _ = decode::<InstallSnapshotRequest<TypeConfig>>(&bytes);
            let _ = decode::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(&bytes);
        }
    }
}
