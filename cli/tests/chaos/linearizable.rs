//! Linearizability checker for histories recorded by chaos-test clients
//! against the replicated key-value store.
//!
//! # What is checked
//!
//! Every key is an independent read/write register whose initial state is
//! "absent". Clients record each operation they issue: when it was invoked,
//! when (if ever) its response arrived, and what the response said. The store
//! is linearizable if, for every key, the recorded operations can be put in
//! one total order such that
//!
//! * the order respects real time: if operation A completed before B was
//!   invoked (`A.complete < B.invoke`, strictly), A comes first; operations
//!   whose intervals touch or overlap may go either way;
//! * replaying the order against a single register explains every result:
//!   each read returns the value of the latest write before it, or "absent"
//!   if there is none.
//!
//! Linearizability is compositional (a history is linearizable iff its
//! restriction to every object is), so each key is checked on its own, which
//! keeps the search small.
//!
//! # Uncertain outcomes
//!
//! Chaos testing produces operations whose fate the client cannot know:
//!
//! * [`Outcome::Failed`]: the server refused the operation before applying
//!   it. It took no effect and is left out.
//! * [`Outcome::Unknown`]: the request timed out or the connection dropped.
//!   An unknown read constrains nothing and is left out. An unknown write may
//!   take effect at any moment after its invocation, or never: its completion
//!   is treated as "+infinity". Two exact simplifications keep these cheap:
//!   an unknown write whose value no read ever returned can always be placed
//!   last (where it is unobservable), so it is dropped; and an unknown write
//!   whose (unique) value was read must take effect before the first read of
//!   that value completes, which becomes its completion time.
//!
//! # Search
//!
//! The checker is the just-in-time linearization search of Wing & Gong as
//! refined by Lowe (the approach of Knossos and Porcupine). Invocations and
//! completions of a key's operations form one time-ordered list. Scanning
//! from its head, any operation whose invocation appears before the first
//! completion still in the list may be linearized next, provided the register
//! allows it (a read must see the current value); the operation is then
//! removed from the list and the scan restarts. Reaching a completion means
//! that operation had to take effect already but could not: the search
//! backtracks to the most recent choice and tries the next candidate.
//!
//! Each configuration — the set of operations linearized so far plus the
//! register value — is explored at most once (memoization): different orders
//! of concurrent operations that reach the same configuration are
//! equivalent. Two exchange arguments (see `Search::run`) remove most of the
//! remaining branching: a read the register satisfies is taken at once, and
//! writes of values no read returned are folded into the next chosen write,
//! so only the choice of the next write branches. This keeps the search
//! near-linear on real histories. It uses an explicit stack, never
//! recursion, and stops with [`Verdict::Inconclusive`] after a configurable
//! number of configurations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Bound on distinct search configurations per key used by [`check`]. It
/// caps time and memory: on pathological histories (dozens of mutually
/// concurrent writes, each observed) reaching it takes about 2 s and 80 MB
/// in a release build (debug builds are a few times slower). Histories from
/// 8 concurrent clients need a few thousand configurations, 16 clients tens
/// of thousands.
pub const DEFAULT_MAX_STATES: usize = 1_000_000;

/// One operation as recorded by a test client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client that issued the operation (for diagnostics only).
    pub client: usize,
    /// The register the operation acts on.
    pub key: String,
    pub kind: OpKind,
    /// When the request was sent, in nanoseconds of a monotonic clock shared
    /// by all clients of the history.
    pub invoke: u64,
    /// When the response arrived, on the same clock. Required to be at least
    /// `invoke` when present. Ignored for [`Outcome::Failed`] and
    /// [`Outcome::Unknown`]; an [`Outcome::Ok`] without it is treated as
    /// completing at +infinity (it may take effect at any time after
    /// `invoke`).
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

/// What an operation does to its register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Sets the register. Values should be unique per key (clients assign
    /// them); repeated values are still checked correctly but give the
    /// checker less to work with.
    Write { value: u64 },
    /// Returns the register's current value; the result is in
    /// [`Outcome::Ok`].
    Read,
}

/// How the operation ended, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged. For a read, `read` is the value returned (`None`: the
    /// key was absent); for a write it is ignored.
    Ok { read: Option<u64> },
    /// Definitely not applied: the server refused it before applying it.
    Failed,
    /// Timed out or the connection was lost: a write may or may not have
    /// taken effect, at any time after its invocation.
    Unknown,
}

/// Result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations in the history (including failed and unknown ones).
    pub ops: usize,
    pub verdict: Verdict,
}

/// Whether the history is linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key has an order consistent with real time and register
    /// semantics.
    Linearizable,
    /// No valid order exists for `key`. The explanation names the operation
    /// the search could not place, the register value at that point, the
    /// operations concurrent with it and the last operations placed before
    /// it. Operations are numbered by their index in the checked slice.
    NotLinearizable { key: String, explanation: String },
    /// The search for `key` hit the state bound before reaching an answer
    /// (no violation was found on the other keys).
    Inconclusive { key: String },
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys: {}",
            self.ops, self.keys, self.verdict
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(f, "NOT linearizable on key {key:?}:\n{explanation}")
            }
            Verdict::Inconclusive { key } => {
                write!(f, "inconclusive on key {key:?}: search state bound reached")
            }
        }
    }
}

/// Checks `history` with the default state bound ([`DEFAULT_MAX_STATES`]).
///
/// # Panics
///
/// If an acknowledged operation completes before it was invoked.
pub fn check(history: &[Op]) -> Report {
    check_with_limit(history, DEFAULT_MAX_STATES)
}

/// Checks `history`, exploring at most `max_states` search configurations
/// per key. Keys are checked in sorted order; a violation on any key wins
/// over an inconclusive key.
///
/// # Panics
///
/// If an acknowledged operation completes before it was invoked.
pub fn check_with_limit(history: &[Op], max_states: usize) -> Report {
    for (i, op) in history.iter().enumerate() {
        if let (Outcome::Ok { .. }, Some(complete)) = (op.outcome, op.complete) {
            assert!(
                complete >= op.invoke,
                "malformed history: op #{i} completes at {complete} before its invocation at {}",
                op.invoke
            );
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut verdict = Verdict::Linearizable;
    for (key, indices) in &by_key {
        match check_key(history, indices, max_states) {
            KeyResult::Linearizable => {}
            KeyResult::Violation(explanation) => {
                verdict = Verdict::NotLinearizable {
                    key: (*key).to_string(),
                    explanation,
                };
                break;
            }
            KeyResult::Inconclusive => {
                if verdict == Verdict::Linearizable {
                    verdict = Verdict::Inconclusive {
                        key: (*key).to_string(),
                    };
                }
            }
        }
    }
    Report {
        keys: by_key.len(),
        ops: history.len(),
        verdict,
    }
}

enum KeyResult {
    Linearizable,
    Violation(String),
    Inconclusive,
}

/// Completion time of operations that may take effect arbitrarily late.
const NEVER: u64 = u64::MAX;

/// Register values, interned per key: [`ABSENT`], [`UNOBSERVED`], or
/// `i >= 2` for `Prepared::observed[i - 2]`.
type StateId = u32;

/// The initial state.
const ABSENT: StateId = 0;

/// Any value that no read returned. Such values are interchangeable: no read
/// can follow the write that set one until another write replaces it.
const UNOBSERVED: StateId = 1;

#[derive(Clone, Copy)]
enum Action {
    Write(StateId),
    Read(StateId),
}

/// An operation that takes part in the search.
struct Event {
    /// Index in the checked history.
    orig: usize,
    invoke: u64,
    /// Latest time it may take effect: the response time, possibly tightened
    /// for writes (see the module docs), or [`NEVER`].
    complete: u64,
    action: Action,
}

/// One key's operations, ready for the search: events sorted by invocation.
struct Prepared {
    events: Vec<Event>,
    /// The values some read returned.
    observed: Vec<u64>,
}

fn check_key(history: &[Op], indices: &[usize], max_states: usize) -> KeyResult {
    let prepared = match prepare(history, indices) {
        Ok(prepared) => prepared,
        Err(explanation) => return KeyResult::Violation(explanation),
    };
    let mut search = Search::new(&prepared.events);
    match search.run(max_states) {
        SearchEnd::Linearizable => KeyResult::Linearizable,
        SearchEnd::Exhausted => KeyResult::Inconclusive,
        SearchEnd::Stuck => {
            let stuck = search
                .furthest
                .expect("a failed search always records where it got stuck");
            KeyResult::Violation(explain_stuck(history, indices, &prepared, &stuck))
        }
    }
}

/// Selects and normalizes the operations of one key. Returns an explanation
/// instead if a read returned a value that no write could have produced.
fn prepare(history: &[Op], indices: &[usize]) -> Result<Prepared, String> {
    // How many writes that may have taken effect set each value.
    let mut writers: HashMap<u64, usize> = HashMap::new();
    for &i in indices {
        let op = &history[i];
        if let OpKind::Write { value } = op.kind {
            if op.outcome != Outcome::Failed {
                *writers.entry(value).or_default() += 1;
            }
        }
    }
    // Values that acknowledged reads returned, and the earliest completion
    // of such a read.
    let mut ids: HashMap<u64, StateId> = HashMap::new();
    let mut observed = Vec::new();
    let mut first_read: HashMap<u64, (u64, usize)> = HashMap::new();
    for &i in indices {
        let op = &history[i];
        if let (OpKind::Read, Outcome::Ok { read: Some(value) }) = (op.kind, op.outcome) {
            if !writers.contains_key(&value) {
                return Err(explain_unwritten_read(history, indices, i, value));
            }
            ids.entry(value).or_insert_with(|| {
                observed.push(value);
                StateId::try_from(observed.len() + 1).expect("fewer than 2^32 values per key")
            });
            let complete = op.complete.unwrap_or(NEVER);
            let entry = first_read.entry(value).or_insert((complete, i));
            if complete < entry.0 {
                *entry = (complete, i);
            }
        }
    }
    let mut events = Vec::with_capacity(indices.len());
    for &i in indices {
        let op = &history[i];
        let (action, complete) = match (op.kind, op.outcome) {
            (_, Outcome::Failed) | (OpKind::Read, Outcome::Unknown) => continue,
            (OpKind::Read, Outcome::Ok { read }) => {
                let state = read.map_or(ABSENT, |value| ids[&value]);
                (Action::Read(state), op.complete.unwrap_or(NEVER))
            }
            (OpKind::Write { value }, outcome) => {
                let mut complete = match outcome {
                    Outcome::Ok { .. } => op.complete.unwrap_or(NEVER),
                    _ => NEVER,
                };
                let seen = first_read.get(&value).copied();
                if seen.is_none() && complete == NEVER {
                    // Unobservable: it can always take effect last.
                    continue;
                }
                if let (Some((read_complete, read)), 1) = (seen, writers[&value]) {
                    if read_complete < op.invoke {
                        return Err(explain_read_before_write(history, indices, read, i));
                    }
                    complete = complete.min(read_complete);
                }
                let state = ids.get(&value).copied().unwrap_or(UNOBSERVED);
                (Action::Write(state), complete)
            }
        };
        events.push(Event {
            orig: i,
            invoke: op.invoke,
            complete,
            action,
        });
    }
    events.sort_by_key(|e| (e.invoke, e.complete, e.orig));
    Ok(Prepared { events, observed })
}

/// End of the linked list of call/return entries.
const NIL: usize = usize::MAX;

/// A memoized search configuration: register value plus the set of
/// linearized events, encoded compactly. With `top` = 1 + the highest
/// linearized event index (events are sorted by invocation), every event
/// below `top` is linearized except some of those that overlap event
/// `top - 1` in time (an event that completed before `top - 1` was invoked
/// must have been linearized first). So the set is `top` plus a bitmask over
/// that overlap list, or, for the rare overlap list longer than 64, an
/// interned list of the unlinearized indices.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct MemoKey {
    top: u32,
    state: StateId,
    holes: Holes,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Holes {
    Mask(u64),
    Interned(u64),
}

/// One linearized event on the search stack.
#[derive(Clone, Copy)]
struct Frame {
    event: usize,
    /// Register value and `top` before the event.
    state: StateId,
    top: u32,
    how: Move,
}

/// Why an event was linearized (see [`Search::run`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Move {
    /// A write chosen among the candidates; backtracking tries the next one.
    Choice,
    /// A read the register satisfied: taken without alternatives.
    Read,
    /// An unobserved write taken just before the `Choice` write above it.
    Absorbed,
}

enum Enter {
    /// Linearized; the configuration is new.
    New,
    /// The configuration was explored before and led nowhere.
    Seen,
    /// The state bound was reached.
    Exhausted,
}

/// Where the search got furthest before failing, for the explanation.
struct Stuck {
    /// Number of events linearized at that point.
    depth: usize,
    /// The event whose completion was reached without it being linearized.
    blocked: usize,
    state: StateId,
    /// The most recent write linearized, if any.
    last_write: Option<usize>,
    /// The linearized events (a copy of `Search::linearized`).
    linearized: Vec<u64>,
    /// The last few linearized events, oldest first.
    recent: Vec<usize>,
}

/// Limits on the operations listed in an explanation.
const RECENT_SHOWN: usize = 8;
const CONCURRENT_SHOWN: usize = 40;

enum SearchEnd {
    Linearizable,
    Stuck,
    Exhausted,
}

/// The just-in-time linearization search over one key.
///
/// Entries `0..n` are the invocations of events `0..n`, entries `n..2n`
/// their completions, and entry `2n` is the list head. `next`/`prev` link the
/// entries still unlinearized in time order (invocations before completions
/// at equal times, so touching intervals count as concurrent); removal and
/// reinsertion follow the stack discipline, so relinking is O(1).
struct Search<'a> {
    events: &'a [Event],
    n: usize,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// `overlap[overlap_start[m]..overlap_start[m + 1]]`: events `j < m` with
    /// `complete_j >= invoke_m`, ascending.
    overlap: Vec<u32>,
    overlap_start: Vec<usize>,
    linearized: Vec<u64>,
    state: StateId,
    top: u32,
    stack: Vec<Frame>,
    memo: HashSet<MemoKey, BuildHasherDefault<MixHasher>>,
    interned: HashMap<Box<[u32]>, u64>,
    /// Scratch buffer for [`Search::enter`].
    absorbed: Vec<usize>,
    furthest: Option<Stuck>,
}

impl<'a> Search<'a> {
    fn new(events: &'a [Event]) -> Self {
        let n = events.len();
        assert!(u32::try_from(n).is_ok(), "too many operations on one key");
        let head = 2 * n;
        let mut order: Vec<usize> = (0..2 * n).collect();
        order.sort_by_key(|&e| {
            if e < n {
                (events[e].invoke, 0, e)
            } else {
                (events[e - n].complete, 1, e - n)
            }
        });
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![head; 2 * n + 1];
        let mut last = head;
        for &e in &order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }

        let mut overlap = Vec::new();
        let mut overlap_start = Vec::with_capacity(n + 1);
        let mut active: Vec<u32> = Vec::new();
        for (m, event) in events.iter().enumerate() {
            active.retain(|&j| events[j as usize].complete >= event.invoke);
            overlap_start.push(overlap.len());
            overlap.extend_from_slice(&active);
            active.push(m as u32);
        }
        overlap_start.push(overlap.len());

        Search {
            events,
            n,
            next,
            prev,
            overlap,
            overlap_start,
            linearized: vec![0; n.div_ceil(64)],
            state: ABSENT,
            top: 0,
            stack: Vec::new(),
            memo: HashSet::default(),
            interned: HashMap::new(),
            absorbed: Vec::new(),
            furthest: None,
        }
    }

    /// Runs the search. Besides memoization, two exchange arguments prune
    /// choices without losing any valid order:
    ///
    /// * A candidate read that sees the current value is linearized at once,
    ///   without alternatives: moving a read earlier, to a point where it
    ///   sees the same value, keeps any order valid (everything that must
    ///   precede it is already linearized, and reads change nothing).
    /// * When a write is chosen, every other candidate write of an
    ///   unobserved value is linearized just before it. In any valid order
    ///   such a write is directly followed by another write (or ends the
    ///   order), so it can be moved to just before the chosen write, where
    ///   it is overwritten at once. Unobserved values also share one state,
    ///   so choosing any one of them leads to the same configuration.
    ///
    /// Only the choice of the next write branches.
    fn run(&mut self, max_states: usize) -> SearchEnd {
        let head = 2 * self.n;
        // Where to resume trying writes after backtracking; `None` right
        // after entering a new configuration.
        let mut resume = None;
        loop {
            if self.next[head] == NIL {
                return SearchEnd::Linearizable;
            }
            let mut entry = match resume.take() {
                Some(entry) => entry,
                None => match self.matching_read() {
                    Some(read) => {
                        match self.enter(read, self.state, Move::Read, max_states) {
                            Enter::New => {}
                            Enter::Seen => match self.backtrack() {
                                Some(entry) => resume = Some(entry),
                                None => return SearchEnd::Stuck,
                            },
                            Enter::Exhausted => return SearchEnd::Exhausted,
                        }
                        continue;
                    }
                    None => self.next[head],
                },
            };
            // Try the candidate writes in list order. The list is non-empty,
            // so a completion is reached before its end.
            loop {
                if entry >= self.n {
                    // That operation had to take effect by now: dead end.
                    self.note_stuck(entry);
                    match self.backtrack() {
                        Some(next) => resume = Some(next),
                        None => return SearchEnd::Stuck,
                    }
                    break;
                }
                if let Action::Write(value) = self.events[entry].action {
                    match self.enter(entry, value, Move::Choice, max_states) {
                        Enter::New => break,
                        Enter::Seen => {}
                        Enter::Exhausted => return SearchEnd::Exhausted,
                    }
                }
                entry = self.next[entry];
            }
        }
    }

    /// A candidate read that the current register value satisfies.
    fn matching_read(&self) -> Option<usize> {
        let mut entry = self.next[2 * self.n];
        while entry < self.n {
            if let Action::Read(value) = self.events[entry].action {
                if value == self.state {
                    return Some(entry);
                }
            }
            entry = self.next[entry];
        }
        None
    }

    /// Linearizes candidate `event` (a read or a chosen write, together with
    /// the writes it absorbs), leaving the register at `state`, unless the
    /// resulting configuration was explored before.
    fn enter(&mut self, event: usize, state: StateId, how: Move, max_states: usize) -> Enter {
        let mut absorbed = std::mem::take(&mut self.absorbed);
        absorbed.clear();
        if how == Move::Choice {
            let mut entry = self.next[2 * self.n];
            while entry < self.n {
                let unobserved = matches!(self.events[entry].action, Action::Write(UNOBSERVED));
                if unobserved && entry != event {
                    absorbed.push(entry);
                }
                entry = self.next[entry];
            }
        }
        let mut top = self.top;
        for &e in absorbed.iter().chain([&event]) {
            self.set_linearized(e, true);
            top = top.max(e as u32 + 1);
        }
        let key = self.memo_key(state, top);
        let result = if !self.memo.insert(key) {
            for &e in absorbed.iter().chain([&event]) {
                self.set_linearized(e, false);
            }
            Enter::Seen
        } else if self.memo.len() > max_states {
            Enter::Exhausted
        } else {
            for &e in &absorbed {
                self.push(e, UNOBSERVED, Move::Absorbed);
            }
            self.push(event, state, how);
            Enter::New
        };
        self.absorbed = absorbed;
        result
    }

    /// Linearizes `event` (already marked in `linearized`).
    fn push(&mut self, event: usize, state: StateId, how: Move) {
        self.stack.push(Frame {
            event,
            state: self.state,
            top: self.top,
            how,
        });
        self.state = state;
        self.top = self.top.max(event as u32 + 1);
        self.lift(event);
    }

    /// Undoes the most recent linearization.
    fn pop(&mut self) -> Option<Frame> {
        let frame = self.stack.pop()?;
        self.unlift(frame.event);
        self.set_linearized(frame.event, false);
        self.state = frame.state;
        self.top = frame.top;
        Some(frame)
    }

    /// Undoes linearizations up to and including the most recent choice of a
    /// write and returns the entry after that write, where the scan for
    /// alternatives resumes; `None` when no choice is left.
    fn backtrack(&mut self) -> Option<usize> {
        while let Some(frame) = self.pop() {
            if frame.how == Move::Choice {
                while self.stack.last().is_some_and(|f| f.how == Move::Absorbed) {
                    self.pop();
                }
                return Some(self.next[frame.event]);
            }
        }
        None
    }

    fn set_linearized(&mut self, event: usize, on: bool) {
        let bit = 1u64 << (event % 64);
        if on {
            self.linearized[event / 64] |= bit;
        } else {
            self.linearized[event / 64] &= !bit;
        }
    }

    fn is_linearized(&self, event: usize) -> bool {
        self.linearized[event / 64] & (1u64 << (event % 64)) != 0
    }

    fn memo_key(&mut self, state: StateId, top: u32) -> MemoKey {
        if top == 0 {
            return MemoKey {
                top,
                state,
                holes: Holes::Mask(0),
            };
        }
        let m = top as usize - 1;
        let overlap = &self.overlap[self.overlap_start[m]..self.overlap_start[m + 1]];
        let holes = if overlap.len() <= 64 {
            let mut mask = 0u64;
            for (bit, &j) in overlap.iter().enumerate() {
                if !self.is_linearized(j as usize) {
                    mask |= 1 << bit;
                }
            }
            Holes::Mask(mask)
        } else {
            let list: Box<[u32]> = overlap
                .iter()
                .copied()
                .filter(|&j| !self.is_linearized(j as usize))
                .collect();
            let id = self.interned.len() as u64;
            Holes::Interned(*self.interned.entry(list).or_insert(id))
        };
        MemoKey { top, state, holes }
    }

    fn unlink(&mut self, e: usize) {
        let (p, q) = (self.prev[e], self.next[e]);
        self.next[p] = q;
        if q != NIL {
            self.prev[q] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, q) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if q != NIL {
            self.prev[q] = e;
        }
    }

    fn lift(&mut self, event: usize) {
        self.unlink(event);
        self.unlink(self.n + event);
    }

    fn unlift(&mut self, event: usize) {
        self.relink(self.n + event);
        self.relink(event);
    }

    /// Records the configuration if it is the deepest dead end so far.
    fn note_stuck(&mut self, completion: usize) {
        let depth = self.stack.len();
        if self.furthest.as_ref().is_some_and(|s| s.depth >= depth) {
            return;
        }
        let last_write = self
            .stack
            .iter()
            .rev()
            .map(|f| f.event)
            .find(|&e| matches!(self.events[e].action, Action::Write(_)));
        let recent = self.stack[depth.saturating_sub(RECENT_SHOWN)..]
            .iter()
            .map(|f| f.event)
            .collect();
        self.furthest = Some(Stuck {
            depth,
            blocked: completion - self.n,
            state: self.state,
            last_write,
            linearized: self.linearized.clone(),
            recent,
        });
    }
}

/// FxHash-style multiplicative hasher with a final avalanche; the memo keys
/// are small integers, for which SipHash is needlessly slow.
#[derive(Default)]
struct MixHasher(u64);

impl MixHasher {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, x: u8) {
        self.add(u64::from(x));
    }

    fn write_u32(&mut self, x: u32) {
        self.add(u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }

    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
}

// ---------------------------------------------------------------------------
// Explanations

/// Formats a value of the register.
fn value_name(value: Option<u64>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// Formats a duration in nanoseconds with a readable unit.
fn duration_name(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.3}µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.3}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// Times in explanations are relative to the key's first invocation.
struct Clock {
    t0: u64,
}

impl Clock {
    fn new(history: &[Op], indices: &[usize]) -> Self {
        let t0 = indices.iter().map(|&i| history[i].invoke).min();
        Clock {
            t0: t0.unwrap_or(0),
        }
    }

    fn at(&self, t: u64) -> String {
        format!("+{}", duration_name(t.saturating_sub(self.t0)))
    }

    fn footer(&self) -> String {
        format!(
            "Times are relative to the key's first invocation at {} ns.",
            self.t0
        )
    }

    /// `#12 client 3: read -> 7 [+1.200ms .. +1.500ms]`.
    fn describe(&self, history: &[Op], i: usize) -> String {
        let op = &history[i];
        let what = match (op.kind, op.outcome) {
            (OpKind::Write { value }, Outcome::Ok { .. }) => format!("write {value}"),
            (OpKind::Write { value }, Outcome::Failed) => format!("write {value} (failed)"),
            (OpKind::Write { value }, Outcome::Unknown) => {
                format!("write {value} (outcome unknown)")
            }
            (OpKind::Read, Outcome::Ok { read }) => format!("read -> {}", value_name(read)),
            (OpKind::Read, Outcome::Failed) => "read (failed)".to_string(),
            (OpKind::Read, Outcome::Unknown) => "read (outcome unknown)".to_string(),
        };
        let end = match (op.outcome, op.complete) {
            (Outcome::Ok { .. }, Some(t)) => self.at(t),
            _ => "no response".to_string(),
        };
        format!(
            "#{i} client {}: {what} [{} .. {end}]",
            op.client,
            self.at(op.invoke)
        )
    }
}

/// Lists every write of `value` to the key, as indented lines.
fn writes_of(history: &[Op], indices: &[usize], clock: &Clock, value: u64) -> String {
    let mut out = String::new();
    for &i in indices {
        if history[i].kind == (OpKind::Write { value }) {
            out += &format!("  {}\n", clock.describe(history, i));
        }
    }
    out
}

fn explain_unwritten_read(history: &[Op], indices: &[usize], read: usize, value: u64) -> String {
    let clock = Clock::new(history, indices);
    let mut out = format!(
        "{}\nreturned {value}, which no write to this key can have produced.\n",
        clock.describe(history, read)
    );
    let failed = writes_of(history, indices, &clock, value);
    if !failed.is_empty() {
        out += &format!("The only writes of {value} to this key failed:\n{failed}");
    }
    let elsewhere: Vec<String> = history
        .iter()
        .enumerate()
        .filter(|(_, op)| op.key != history[read].key && op.kind == OpKind::Write { value })
        .take(3)
        .map(|(i, op)| format!("  #{i} on key {:?} (client {})\n", op.key, op.client))
        .collect();
    if !elsewhere.is_empty() {
        out += &format!("{value} was written to other keys:\n{}", elsewhere.concat());
    }
    out + &clock.footer()
}

fn explain_read_before_write(
    history: &[Op],
    indices: &[usize],
    read: usize,
    write: usize,
) -> String {
    let clock = Clock::new(history, indices);
    format!(
        "{}\nreturned a value whose only write was invoked after that read had completed:\n  {}\n{}",
        clock.describe(history, read),
        clock.describe(history, write),
        clock.footer()
    )
}

fn explain_stuck(history: &[Op], indices: &[usize], prepared: &Prepared, stuck: &Stuck) -> String {
    let clock = Clock::new(history, indices);
    let events = &prepared.events;
    // What a read expects (reads only expect absent or observed values).
    let expected_value =
        |state: StateId| (state != ABSENT).then(|| prepared.observed[state as usize - 2]);
    let held = stuck
        .last_write
        .and_then(|w| match history[events[w].orig].kind {
            OpKind::Write { value } => Some(value),
            OpKind::Read => None,
        });
    // Why a read cannot take effect at the point the search got stuck.
    let mismatch = |e: usize| match events[e].action {
        Action::Read(expected) if expected != stuck.state => format!(
            " (needs {}, register holds {})",
            value_name(expected_value(expected)),
            value_name(held)
        ),
        _ => String::new(),
    };
    let mut out = format!(
        "No order of the {} operations on this key ({} set aside as failed, unknown reads or \
         unobserved unknown writes) is consistent with real time and register semantics.\n",
        events.len(),
        indices.len() - events.len()
    );
    out += &format!(
        "The longest valid prefix found has {} operations; after it the register holds {}",
        stuck.depth,
        value_name(held)
    );
    match stuck.last_write {
        Some(w) => out += &format!(", set by\n  {}\n", clock.describe(history, events[w].orig)),
        None => out += ".\n",
    }
    let blocked = &events[stuck.blocked];
    let op = &history[blocked.orig];
    let answered = match op.outcome {
        Outcome::Ok { .. } => op.complete.unwrap_or(NEVER),
        _ => NEVER,
    };
    out += &format!(
        "Then this operation cannot take effect by its deadline {}{}:\n  {}{}\n",
        clock.at(blocked.complete),
        if blocked.complete < answered {
            " (when the first read of its value completed)"
        } else {
            ""
        },
        clock.describe(history, blocked.orig),
        mismatch(stuck.blocked)
    );
    // Everything on the key that overlaps the blocked operation.
    let event_of: HashMap<usize, usize> = events
        .iter()
        .enumerate()
        .map(|(e, event)| (event.orig, e))
        .collect();
    let mut concurrent: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| i != blocked.orig)
        .filter(|&i| {
            let other = &history[i];
            let end = match (other.outcome, event_of.get(&i)) {
                (_, Some(&e)) => events[e].complete,
                (Outcome::Ok { .. }, None) => other.complete.unwrap_or(NEVER),
                _ => NEVER,
            };
            other.invoke <= blocked.complete && end >= blocked.invoke
        })
        .collect();
    concurrent.sort_by_key(|&i| (history[i].invoke, i));
    if !concurrent.is_empty() {
        out += "Operations overlapping it (\"prefix\": in the valid prefix; \"pending\": not \
                yet taken, none leads to a valid order; \"ignored\": failed, unknown read or \
                unobserved unknown write):\n";
    }
    for &i in concurrent.iter().take(CONCURRENT_SHOWN) {
        let Some(&e) = event_of.get(&i) else {
            out += &format!("  ignored  {}\n", clock.describe(history, i));
            continue;
        };
        let taken = stuck.linearized[e / 64] & (1 << (e % 64)) != 0;
        out += &format!(
            "  {}  {}{}\n",
            if taken { "prefix " } else { "pending" },
            clock.describe(history, i),
            if taken { String::new() } else { mismatch(e) }
        );
    }
    if concurrent.len() > CONCURRENT_SHOWN {
        out += &format!("  ... and {} more\n", concurrent.len() - CONCURRENT_SHOWN);
    }
    if let Action::Read(expected) = blocked.action {
        match expected_value(expected) {
            Some(value) => {
                out += &format!(
                    "Writes of {value}:\n{}",
                    writes_of(history, indices, &clock, value)
                )
            }
            None => out += "It read the initial (absent) value.\n",
        }
    }
    if !stuck.recent.is_empty() {
        out += "Last operations of the prefix, in linearization order:\n";
        for &e in &stuck.recent {
            out += &format!("  {}\n", clock.describe(history, events[e].orig));
        }
    }
    out + &clock.footer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const KEY: &str = "k";

    fn write(client: usize, value: u64, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: KEY.to_string(),
            kind: OpKind::Write { value },
            invoke,
            complete: Some(complete),
            outcome: Outcome::Ok { read: None },
        }
    }

    fn read(client: usize, result: Option<u64>, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: KEY.to_string(),
            kind: OpKind::Read,
            invoke,
            complete: Some(complete),
            outcome: Outcome::Ok { read: result },
        }
    }

    fn with_outcome(op: Op, outcome: Outcome) -> Op {
        let complete = if outcome == Outcome::Unknown {
            None
        } else {
            op.complete
        };
        Op {
            outcome,
            complete,
            ..op
        }
    }

    fn on(key: &str, op: Op) -> Op {
        Op {
            key: key.to_string(),
            ..op
        }
    }

    fn assert_linearizable(history: &[Op]) {
        let report = check(history);
        assert_eq!(report.verdict, Verdict::Linearizable, "{report}");
    }

    /// Asserts a violation and returns its explanation.
    fn assert_violation(history: &[Op]) -> String {
        match check(history).verdict {
            Verdict::NotLinearizable { explanation, .. } => explanation,
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        let report = check(&[]);
        assert_eq!((report.keys, report.ops), (0, 0));
        assert_eq!(report.verdict, Verdict::Linearizable);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            read(0, None, 0, 10),
            write(0, 1, 20, 30),
            read(1, Some(1), 40, 50),
            write(1, 2, 60, 70),
            read(0, Some(2), 80, 90),
            read(2, Some(2), 100, 110),
        ];
        let report = check(&history);
        assert_eq!((report.keys, report.ops), (1, 6));
        assert_eq!(report.verdict, Verdict::Linearizable, "{report}");
    }

    #[test]
    fn stale_read_after_acknowledged_write_fails() {
        let history = [
            write(0, 1, 0, 10),
            write(0, 2, 20, 30),
            read(1, Some(1), 40, 50),
        ];
        let explanation = assert_violation(&history);
        // Names the read that cannot be placed, the state and its writer.
        assert!(
            explanation.contains("#2 client 1: read -> 1"),
            "{explanation}"
        );
        assert!(explanation.contains("register holds 2"), "{explanation}");
        assert!(
            explanation.contains("#1 client 0: write 2"),
            "{explanation}"
        );

        // Reading "absent" after an acknowledged write is just as stale.
        assert_violation(&[write(0, 1, 0, 10), read(1, None, 20, 30)]);
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [Some(1), Some(2)] {
            assert_linearizable(&[
                write(0, 1, 0, 10),
                write(0, 2, 20, 60),
                read(1, seen, 30, 50),
            ]);
        }
        for seen in [None, Some(1)] {
            assert_linearizable(&[write(0, 1, 0, 50), read(1, seen, 10, 20)]);
        }
    }

    #[test]
    fn intervals_that_touch_are_concurrent() {
        // The read is invoked exactly when the write completes.
        assert_linearizable(&[write(0, 1, 0, 10), read(1, None, 10, 20)]);
        assert_violation(&[write(0, 1, 0, 10), read(1, None, 11, 20)]);
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let explanation = assert_violation(&[write(0, 1, 0, 10), read(1, Some(7), 20, 30)]);
        assert!(explanation.contains("returned 7"), "{explanation}");

        // A failed write does not make its value readable.
        let explanation = assert_violation(&[
            with_outcome(write(0, 7, 0, 10), Outcome::Failed),
            read(1, Some(7), 20, 30),
        ]);
        assert!(explanation.contains("only writes of 7"), "{explanation}");

        // Neither does a write of that value to another key.
        let explanation =
            assert_violation(&[on("other", write(0, 7, 0, 10)), read(1, Some(7), 20, 30)]);
        assert!(explanation.contains("key \"other\""), "{explanation}");
    }

    #[test]
    fn read_that_completes_before_the_write_is_invoked_fails() {
        let explanation = assert_violation(&[read(1, Some(1), 0, 10), write(0, 1, 20, 30)]);
        assert!(explanation.contains("invoked after"), "{explanation}");
    }

    #[test]
    fn failed_operations_are_ignored() {
        assert_linearizable(&[
            write(0, 1, 0, 10),
            with_outcome(write(0, 2, 20, 30), Outcome::Failed),
            read(1, Some(1), 40, 50),
            with_outcome(read(1, Some(5), 60, 70), Outcome::Failed),
        ]);
    }

    #[test]
    fn unknown_write_that_appears_later_passes() {
        assert_linearizable(&[
            write(0, 1, 0, 10),
            with_outcome(write(0, 2, 20, 30), Outcome::Unknown),
            read(1, Some(1), 40, 50),
            // Took effect long after the client gave up on it.
            read(1, Some(2), 1_000, 1_010),
            read(2, Some(2), 2_000, 2_010),
        ]);
    }

    #[test]
    fn unknown_write_that_never_appears_passes() {
        assert_linearizable(&[
            write(0, 1, 0, 10),
            with_outcome(write(0, 2, 20, 30), Outcome::Unknown),
            read(1, Some(1), 40, 50),
            read(1, Some(1), 1_000, 1_010),
        ]);
        // Unknown reads constrain nothing, whatever they recorded.
        assert_linearizable(&[
            write(0, 1, 0, 10),
            with_outcome(read(1, None, 20, 30), Outcome::Unknown),
        ]);
    }

    #[test]
    fn unknown_write_cannot_disappear_once_observed_and_overwritten() {
        // 2 is observed, then overwritten by 3; reading 2 again is stale.
        assert_violation(&[
            with_outcome(write(0, 2, 0, 10), Outcome::Unknown),
            read(1, Some(2), 20, 30),
            write(1, 3, 40, 50),
            read(2, Some(2), 60, 70),
        ]);
        // An unknown write cannot take effect before it is invoked.
        assert_violation(&[
            read(1, Some(2), 0, 10),
            with_outcome(write(0, 2, 20, 30), Outcome::Unknown),
        ]);
    }

    #[test]
    fn new_old_inversion_fails() {
        // Write 1 is acknowledged before the reads start; write 2 is in
        // flight during both. The first read sees 2, the second (invoked
        // after the first completed) sees 1 again.
        let history = [
            write(0, 1, 0, 10),
            write(1, 2, 5, 100),
            read(2, Some(2), 20, 30),
            read(3, Some(1), 40, 50),
        ];
        let explanation = assert_violation(&history);
        assert!(
            explanation.contains("#3 client 3: read -> 1"),
            "{explanation}"
        );

        // The same reads in the other order are fine.
        assert_linearizable(&[
            write(0, 1, 0, 10),
            write(1, 2, 5, 100),
            read(2, Some(1), 20, 30),
            read(3, Some(2), 40, 50),
        ]);
        // So is the inversion if write 1 is also still in flight during both
        // reads: it may take effect after write 2 and the first read.
        assert_linearizable(&[
            write(0, 1, 0, 100),
            write(1, 2, 5, 100),
            read(2, Some(2), 20, 30),
            read(3, Some(1), 40, 50),
        ]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = [
            on("a", write(0, 1, 0, 10)),
            on("b", write(0, 2, 0, 10)),
            on("a", read(1, Some(1), 20, 30)),
            on("b", read(1, Some(2), 20, 30)),
            on("c", read(2, None, 20, 30)),
        ];
        let report = check(&history);
        assert_eq!((report.keys, report.ops), (3, 5));
        assert_eq!(report.verdict, Verdict::Linearizable, "{report}");

        let mut history = history.to_vec();
        history.push(on("b", read(2, Some(1), 40, 50)));
        match check(&history).verdict {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, "b"),
            other => panic!("expected a violation on b, got {other}"),
        }
    }

    /// Twenty concurrent writes, each seen by a concurrent read, then a
    /// read of the initial value, which no order explains: the search has
    /// to rule out every subset of the writes.
    fn hard_violation(key: &str) -> Vec<Op> {
        let mut history = Vec::new();
        for value in 1..=20 {
            history.push(on(key, write(0, value, 0, 100)));
            history.push(on(key, read(1, Some(value), 0, 100)));
        }
        history.push(on(key, read(1, None, 200, 300)));
        history
    }

    #[test]
    fn state_bound_gives_inconclusive() {
        let report = check_with_limit(&hard_violation(KEY), 1_000);
        assert_eq!(
            report.verdict,
            Verdict::Inconclusive {
                key: KEY.to_string()
            }
        );
        // A definite violation on another key wins over an inconclusive one.
        let mut history = hard_violation("a");
        history.extend([on("b", write(0, 1, 0, 10)), on("b", read(0, None, 20, 30))]);
        match check_with_limit(&history, 1_000).verdict {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, "b"),
            other => panic!("expected a violation on b, got {other}"),
        }
    }

    #[test]
    #[should_panic(expected = "malformed history")]
    fn completion_before_invocation_panics() {
        check(&[write(0, 1, 10, 5)]);
    }

    /// Deterministic xorshift64 generator for the randomized tests.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    struct Workload {
        clients: usize,
        ops_per_client: usize,
        keys: u64,
        /// Maximum idle time between a client's operations.
        max_gap: u64,
        /// Maximum operation latency.
        max_latency: u64,
        write_percent: u64,
        failed_percent: u64,
        unknown_percent: u64,
    }

    /// Simulates clients of a linearizable store: every operation that takes
    /// effect does so atomically at a random instant inside its interval (an
    /// unknown write possibly long after, or never), and reads return the
    /// register's value at that instant.
    fn simulate(rng: &mut Rng, w: &Workload) -> Vec<Op> {
        let mut history = Vec::new();
        let mut effects: Vec<(u64, usize)> = Vec::new();
        let mut next_value = 1;
        for client in 0..w.clients {
            let mut t = 1_000_000 + rng.below(w.max_gap + 1);
            for _ in 0..w.ops_per_client {
                let invoke = t + rng.below(w.max_gap + 1);
                let latency = rng.below(w.max_latency + 1);
                let complete = invoke + latency;
                let kind = if rng.chance(w.write_percent) {
                    next_value += 1;
                    OpKind::Write {
                        value: next_value - 1,
                    }
                } else {
                    OpKind::Read
                };
                let roll = rng.below(100);
                let (outcome, effect) = if roll < w.failed_percent {
                    (Outcome::Failed, None)
                } else if roll < w.failed_percent + w.unknown_percent {
                    let applied = rng.chance(50) && kind != OpKind::Read;
                    let at = invoke + rng.below(3 * latency + 1);
                    (Outcome::Unknown, applied.then_some(at))
                } else {
                    let at = invoke + rng.below(latency + 1);
                    (Outcome::Ok { read: None }, Some(at))
                };
                history.push(Op {
                    client,
                    key: format!("key{}", rng.below(w.keys)),
                    kind,
                    invoke,
                    complete: (outcome != Outcome::Unknown).then_some(complete),
                    outcome,
                });
                if let Some(at) = effect {
                    effects.push((at, history.len() - 1));
                }
                t = complete;
            }
        }
        effects.sort_unstable();
        let mut registers: HashMap<String, u64> = HashMap::new();
        for (_, i) in effects {
            let op = &mut history[i];
            match op.kind {
                OpKind::Write { value } => {
                    registers.insert(op.key.clone(), value);
                }
                OpKind::Read => {
                    op.outcome = Outcome::Ok {
                        read: registers.get(&op.key).copied(),
                    }
                }
            }
        }
        history
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Mutation {
        /// Absent, although an acknowledged write completed before the read.
        Absent,
        /// A value whose write was invoked after the read completed.
        Future,
        /// A value overwritten by an acknowledged write that completed
        /// before the read, after the value's own write had completed.
        Overwritten,
    }

    /// Values the acknowledged read `r` cannot possibly have returned.
    fn impossible_results(history: &[Op], r: usize) -> Vec<(Option<u64>, Mutation)> {
        let rd = &history[r];
        let end = |op: &Op| match op.outcome {
            Outcome::Ok { .. } => op.complete.unwrap_or(NEVER),
            _ => NEVER,
        };
        let writes: Vec<(&Op, u64)> = history
            .iter()
            .filter(|op| op.key == rd.key && op.outcome != Outcome::Failed)
            .filter_map(|op| match op.kind {
                OpKind::Write { value } => Some((op, value)),
                OpKind::Read => None,
            })
            .collect();
        let mut out = Vec::new();
        if writes.iter().any(|(w, _)| end(w) < rd.invoke) {
            out.push((None, Mutation::Absent));
        }
        for &(w, value) in &writes {
            if w.invoke > end(rd) {
                out.push((Some(value), Mutation::Future));
            }
            let overwritten = writes
                .iter()
                .any(|(u, _)| end(w) < u.invoke && end(u) < rd.invoke);
            if overwritten {
                out.push((Some(value), Mutation::Overwritten));
            }
        }
        out
    }

    #[test]
    fn simulated_histories_pass_and_impossible_reads_fail() {
        let mut mutations: HashMap<Mutation, usize> = HashMap::new();
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let workload = Workload {
                clients: 1 + rng.below(6) as usize,
                ops_per_client: 1 + rng.below(40) as usize,
                keys: 1 + rng.below(3),
                max_gap: rng.below(50),
                max_latency: rng.below(200),
                write_percent: 20 + rng.below(60),
                failed_percent: rng.below(10),
                unknown_percent: rng.below(15),
            };
            let mut history = simulate(&mut rng, &workload);
            let report = check(&history);
            assert_eq!(
                report.verdict,
                Verdict::Linearizable,
                "seed {seed}: {report}"
            );

            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| {
                    history[i].kind == OpKind::Read
                        && matches!(history[i].outcome, Outcome::Ok { .. })
                })
                .collect();
            for _ in 0..5 {
                if reads.is_empty() {
                    break;
                }
                let r = reads[rng.below(reads.len() as u64) as usize];
                let choices = impossible_results(&history, r);
                if choices.is_empty() {
                    continue;
                }
                let (result, mutation) = choices[rng.below(choices.len() as u64) as usize];
                let original = history[r].outcome;
                history[r].outcome = Outcome::Ok { read: result };
                let verdict = check(&history).verdict;
                assert!(
                    matches!(verdict, Verdict::NotLinearizable { .. }),
                    "seed {seed}: read #{r} mutated to {result:?} ({mutation:?}) passed"
                );
                history[r].outcome = original;
                *mutations.entry(mutation).or_default() += 1;
            }
        }
        for mutation in [Mutation::Absent, Mutation::Future, Mutation::Overwritten] {
            assert!(
                mutations.get(&mutation).copied().unwrap_or(0) >= 20,
                "too few {mutation:?} mutations: {mutations:?}"
            );
        }
    }

    /// Exhaustive reference: tries every order of the operations (unknown
    /// writes optional), straight from the definition.
    fn brute_force(history: &[Op]) -> bool {
        let ops: Vec<&Op> = history
            .iter()
            .filter(|op| {
                !matches!(
                    (op.kind, op.outcome),
                    (_, Outcome::Failed) | (OpKind::Read, Outcome::Unknown)
                )
            })
            .collect();
        let required = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.outcome, Outcome::Ok { .. }))
            .fold(0u32, |mask, (i, _)| mask | 1 << i);
        let precedes = |a: &Op, b: &Op| {
            matches!(a.outcome, Outcome::Ok { .. }) && a.complete.is_some_and(|c| c < b.invoke)
        };
        let mut stack = vec![(0u32, None::<u64>)];
        let mut seen = HashSet::new();
        while let Some((placed, state)) = stack.pop() {
            if placed & required == required {
                return true;
            }
            if !seen.insert((placed, state)) {
                continue;
            }
            for (i, op) in ops.iter().enumerate() {
                let ready = placed & 1 << i == 0
                    && (0..ops.len()).all(|j| placed & 1 << j != 0 || !precedes(ops[j], op));
                if !ready {
                    continue;
                }
                let next = match (op.kind, op.outcome) {
                    (OpKind::Write { value }, _) => Some(Some(value)),
                    (OpKind::Read, Outcome::Ok { read }) => (read == state).then_some(state),
                    _ => None,
                };
                if let Some(next) = next {
                    stack.push((placed | 1 << i, next));
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut outcomes = [0usize; 2];
        for seed in 0..4_000 {
            let mut rng = Rng::new(seed);
            let history: Vec<Op> = if seed % 2 == 0 {
                // Arbitrary histories over a few (repeated) values.
                (0..1 + rng.below(8))
                    .map(|_| {
                        let invoke = rng.below(30);
                        let complete = invoke + rng.below(15);
                        let value = 1 + rng.below(3);
                        let op = if rng.chance(50) {
                            write(rng.below(3) as usize, value, invoke, complete)
                        } else {
                            let result = (value < 3).then_some(value);
                            read(rng.below(3) as usize, result, invoke, complete)
                        };
                        match rng.below(10) {
                            0 => with_outcome(op, Outcome::Failed),
                            1 | 2 => with_outcome(op, Outcome::Unknown),
                            _ => op,
                        }
                    })
                    .collect()
            } else {
                // Realistic histories with one read possibly corrupted.
                let workload = Workload {
                    clients: 3,
                    ops_per_client: 1 + rng.below(3) as usize,
                    keys: 1,
                    max_gap: 10,
                    max_latency: 30,
                    write_percent: 50,
                    failed_percent: 5,
                    unknown_percent: 15,
                };
                let mut history = simulate(&mut rng, &workload);
                let i = rng.below(history.len() as u64) as usize;
                if let (OpKind::Read, Outcome::Ok { .. }) = (history[i].kind, history[i].outcome) {
                    let result = rng.below(4);
                    history[i].outcome = Outcome::Ok {
                        read: (result > 0).then_some(result),
                    };
                }
                history
            };
            let expected = brute_force(&history);
            let report = check(&history);
            assert_eq!(
                report.verdict == Verdict::Linearizable,
                expected,
                "seed {seed}: brute force says {expected}, checker says {report}\n{history:#?}"
            );
            outcomes[usize::from(expected)] += 1;
        }
        assert!(outcomes.iter().all(|&n| n > 500), "{outcomes:?}");
    }

    #[test]
    fn eight_clients_with_250_ops_each_on_one_key() {
        let mut rng = Rng::new(8_250);
        let workload = Workload {
            clients: 8,
            ops_per_client: 250,
            keys: 1,
            // Short gaps and long latencies: all clients are almost always in
            // flight at once.
            max_gap: 1_000,
            max_latency: 50_000,
            write_percent: 50,
            failed_percent: 2,
            unknown_percent: 5,
        };
        let history = simulate(&mut rng, &workload);
        let start = Instant::now();
        let report = check(&history);
        eprintln!("checked {} ops in {:?}", history.len(), start.elapsed());
        assert_eq!(report.verdict, Verdict::Linearizable, "{report}");
    }
}
