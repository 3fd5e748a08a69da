//! A watch: every change after a revision, in order, exactly once. It reads
//! the history table until it has caught up, then follows the live channel,
//! and goes back to the history whenever the channel drops events for it or
//! the whole state was replaced (a raft snapshot was installed).

use super::error::StoreError;
use super::Store;
use flotilla_api::protocol::WatchEvent;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// What the store sends live watchers after each commit.
#[derive(Debug, Clone)]
pub(super) enum Live {
    /// The event of one revision, shared by every watcher (a node's watch
    /// looks at every event to find its pods; none copies what it skips).
    Event(Arc<WatchEvent>),
    /// The whole state was replaced (`Store::install`) and the history
    /// cleared: watchers must check the history again, which answers `TooOld`
    /// to those that had not reached the new state's revision.
    Reset,
}

/// History events read per read transaction while catching up; bounds the
/// time one `next` holds the database and the memory a slow watcher pins.
const CATCH_UP_BATCH: usize = 256;

/// Change events after a revision, from [`Store::watch`].
pub struct Watch {
    store: Store,
    live: broadcast::Receiver<Live>,
    /// The revision of the last event delivered (or the starting revision).
    last: u64,
    /// History events read but not yet delivered.
    pending: VecDeque<WatchEvent>,
    /// Whether the history may hold events after `last` the channel will not bring.
    catching_up: bool,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("last", &self.last)
            .field("catching_up", &self.catching_up)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// A watch delivering events after `last`; `live` must have been
    /// subscribed before the store's revision was read.
    pub(super) fn new(store: Store, live: broadcast::Receiver<Live>, last: u64) -> Watch {
        Watch {
            store,
            live,
            last,
            pending: VecDeque::new(),
            catching_up: true,
        }
    }

    /// The revision of the last event delivered (at first, the revision the watch started from).
    pub fn revision(&self) -> u64 {
        self.last
    }

    /// Next event; never misses or duplicates one: history first, then live
    /// ones. If this watcher fell behind the live channel it catches up from
    /// the history; if that history was compacted meanwhile, `TooOld` (list
    /// again). Cancel-safe: dropping the future loses no event.
    ///
    /// Catching up reads the database synchronously, in small batches.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        self.next_shared().await.map(Arc::unwrap_or_clone)
    }

    /// [`Watch::next`], the event shared with the other watchers: for
    /// watchers that deliver only some events, and copy only those.
    pub async fn next_shared(&mut self) -> Result<Arc<WatchEvent>, StoreError> {
        loop {
            // A master found to hold a state that differs from the others'
            // ends its watches too, not only new reads.
            self.store.checks().serving()?;
            if let Some(event) = self.pending.pop_front() {
                self.last = event.revision;
                if self.pending.is_empty() {
                    // A catch-up's batch held hundreds of events; many
                    // watchers keeping that room would add up.
                    self.pending.shrink_to_fit();
                }
                return Ok(Arc::new(event));
            }
            if self.catching_up {
                let batch = self.store.history_after(self.last, CATCH_UP_BATCH)?;
                if batch.is_empty() {
                    // Everything committed so far is delivered; later events
                    // are sent after their commit, so the channel has them.
                    self.catching_up = false;
                } else {
                    self.pending.extend(batch);
                }
                continue;
            }
            match self.live.recv().await {
                Ok(Live::Event(event)) if event.revision <= self.last => {} // read from the history already
                Ok(Live::Event(event)) if event.revision == self.last + 1 => {
                    self.last = event.revision;
                    return Ok(event);
                }
                // A gap: the events in between are in the history. After a
                // reset the history tells whether this watcher can go on.
                Ok(Live::Event(_) | Live::Reset) | Err(RecvError::Lagged(_)) => {
                    self.catching_up = true
                }
                Err(RecvError::Closed) => {
                    // The store (held by this watch) owns the sender, so this
                    // cannot happen; say so rather than spin.
                    return Err(StoreError::Broken(
                        "the store's live event channel closed".into(),
                    ));
                }
            }
        }
    }
}
