//! What can go wrong in the store, split between "the caller asked for
//! something the state does not allow" ([`Refusal`]) and "the store itself
//! is broken" (the other variants of [`StoreError`]).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Why the state refused a request: an answer to the caller, who can act on
/// it; the state is unchanged. Keys in messages are written
/// `pods/default/web` or `nodes/pi-1`.
///
/// Raft responses carry it from master to master (postcard), so its variants
/// and their fields are part of the wire format: add new variants at the end
/// only, and never reorder or change the existing ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The object (or token) does not exist.
    #[error("{0} not found: check its kind, namespace and name (list them to see what exists)")]
    NotFound(String),
    /// A create named an object that exists.
    #[error("{0} already exists: update it instead, or delete it first")]
    AlreadyExists(String),
    /// Compare-and-swap failed: the stored resourceVersion is not the expected one.
    #[error("{key} was changed (resourceVersion {actual}, you sent {expected}): read it again and retry")]
    Conflict {
        key: String,
        expected: u64,
        actual: u64,
    },
    /// A watch asked for changes the history no longer holds; `oldest` is the
    /// smallest `from_revision` that can still be watched.
    #[error(
        "revision {requested} is too old: history is kept from revision {oldest} on; \
         list again and watch from the list's revision"
    )]
    TooOld { requested: u64, oldest: u64 },
    /// The command is malformed (the message says which part and why).
    #[error("{0}")]
    Invalid(String),
}

/// Why a store operation failed.
///
/// [`Refused`](StoreError::Refused) is an answer to the caller (see
/// [`Refusal`]). [`Db`](StoreError::Db), [`Io`](StoreError::Io),
/// [`Broken`](StoreError::Broken) and [`Corrupt`](StoreError::Corrupt) are
/// fatal for the store (see [`StoreError::is_fatal`]).
/// [`Unavailable`](StoreError::Unavailable) is neither: the write may
/// succeed later or on another master.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The state refused the request; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The database failed (I/O, locking, a full disk); `doing` says during what.
    #[error("store database error: {doing}: {source}")]
    Db {
        doing: Cow<'static, str>,
        // Boxed: redb's error is large, and every store call returns this type.
        #[source]
        source: Box<redb::Error>,
    },
    /// A file of the store that redb does not manage (the raft log, the new
    /// state file) could not be read or written; `doing` says during what.
    #[error("store database error: {doing}: {source}")]
    Io {
        doing: Cow<'static, str>,
        #[source]
        source: std::io::Error,
    },
    /// The store cannot go on for a reason no lower error gives: its file is
    /// locked by another process or in a newer format, an earlier write
    /// failed. The message says which, and what to do.
    #[error("store database error: {0}")]
    Broken(String),
    /// Stored data fails its checksum or does not decode: a file of the
    /// data directory is damaged, or was written by an incompatible version.
    /// The message names the file or table and key, and, where it stops a
    /// master from starting, what to do.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// The write could not be put to raft: this master is not the leader, or
    /// no leader is known yet (the message says which and names the leader).
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the store itself is broken (as opposed to the request being refused).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Db { .. }
                | StoreError::Io { .. }
                | StoreError::Broken(_)
                | StoreError::Corrupt(_)
        )
    }

    /// The refusal, for an answer that travels in a raft response; any other
    /// error is given back (a fatal one stops the state machine instead of
    /// travelling).
    pub fn into_refusal(self) -> Result<Refusal, StoreError> {
        match self {
            StoreError::Refused(refusal) => Ok(refusal),
            other => Err(other),
        }
    }

    /// [`Refusal::NotFound`].
    pub fn not_found(what: impl Into<String>) -> StoreError {
        Refusal::NotFound(what.into()).into()
    }

    /// [`Refusal::AlreadyExists`].
    pub fn already_exists(what: impl Into<String>) -> StoreError {
        Refusal::AlreadyExists(what.into()).into()
    }

    /// [`Refusal::Conflict`].
    pub fn conflict(key: impl Into<String>, expected: u64, actual: u64) -> StoreError {
        Refusal::Conflict {
            key: key.into(),
            expected,
            actual,
        }
        .into()
    }

    /// [`Refusal::TooOld`].
    pub fn too_old(requested: u64, oldest: u64) -> StoreError {
        Refusal::TooOld { requested, oldest }.into()
    }

    /// [`Refusal::Invalid`].
    pub fn invalid(why: impl Into<String>) -> StoreError {
        Refusal::Invalid(why.into()).into()
    }
}

/// Maps a redb error to [`StoreError::Db`], saying what the store was doing.
pub(crate) fn db<E: Into<redb::Error>>(
    doing: impl Into<Cow<'static, str>>,
) -> impl FnOnce(E) -> StoreError {
    let doing = doing.into();
    move |e| StoreError::Db {
        doing,
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn fatal_errors_say_what_failed_and_keep_the_cause() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = db("reading an object")(redb::StorageError::Io(io));
        assert!(err.is_fatal());
        assert!(
            err.to_string()
                .starts_with("store database error: reading an object: "),
            "{err}"
        );
        assert!(err
            .source()
            .is_some_and(|s| err.to_string().ends_with(&s.to_string())));

        let err = StoreError::Io {
            doing: "raft log: syncing".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(err.is_fatal());
        assert!(err.source().is_some());
        assert!(err
            .to_string()
            .starts_with("store database error: raft log: syncing: "));
    }

    #[test]
    fn refusals_read_as_themselves_and_are_not_fatal() {
        let err = StoreError::not_found("pods/default/web");
        assert!(!err.is_fatal());
        assert_eq!(
            err.to_string(),
            "pods/default/web not found: check its kind, namespace and name (list them to see what exists)"
        );
        assert_eq!(
            err.into_refusal().unwrap(),
            Refusal::NotFound("pods/default/web".into())
        );
        assert!(StoreError::Broken("x".into()).into_refusal().is_err());
    }
}
