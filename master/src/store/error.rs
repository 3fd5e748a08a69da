//! What can go wrong in the store, split between "the caller asked for
//! something the state does not allow" and "the store itself is broken".

/// Why a store operation failed.
///
/// [`NotFound`](StoreError::NotFound), [`AlreadyExists`](StoreError::AlreadyExists),
/// [`Conflict`](StoreError::Conflict), [`TooOld`](StoreError::TooOld) and
/// [`Invalid`](StoreError::Invalid) are answers to the caller: the state is
/// unchanged and they can act on them. [`Db`](StoreError::Db) and
/// [`Corrupt`](StoreError::Corrupt) are fatal for the store (see
/// [`StoreError::is_fatal`]). Keys in messages are written `pods/default/web`
/// or `nodes/pi-1`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
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
    /// The database failed (I/O, locking, a full disk); the message says during what.
    #[error("store database error: {0}")]
    Db(String),
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
        matches!(self, StoreError::Db(_) | StoreError::Corrupt(_))
    }
}

/// Maps a redb error to [`StoreError::Db`], saying what the store was doing.
pub(crate) fn db<E: std::fmt::Display>(doing: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db(format!("{doing}: {e}"))
}
