//! Per-pod log buffers: what a pod wrote to stdout and stderr, bounded in
//! size (old bytes fall off the front), with live followers for `logs -f`.
//! A buffer knows when its pod's program has ended for good, so a follower
//! gets what there is and then the end of the stream instead of waiting
//! forever for output that cannot come.

use crate::runtime::{LogSink, LogStream};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Bytes kept per pod; a chatty pod cannot exhaust a small device's memory.
pub const LOG_LIMIT: usize = 512 << 10;

/// What a follower receives after its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Bytes the pod wrote.
    Bytes(Vec<u8>),
    /// The pod's program ended and will not run again: nothing more comes.
    Ended,
}

/// One pod's log.
pub struct LogBuffer {
    inner: Mutex<Inner>,
    live: broadcast::Sender<LogEvent>,
}

#[derive(Default)]
struct Inner {
    bytes: VecDeque<u8>,
    ended: bool,
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer {
            inner: Mutex::new(Inner::default()),
            live: broadcast::channel(1024).0,
        }
    }
}

impl LogBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends bytes, dropping the oldest beyond [`LOG_LIMIT`], and wakes followers.
    pub fn append(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.bytes.extend(bytes);
        let excess = inner.bytes.len().saturating_sub(LOG_LIMIT);
        inner.bytes.drain(..excess);
        // Sent under the lock so a follower's snapshot and stream never overlap or gap.
        let _ = self.live.send(LogEvent::Bytes(bytes.to_vec()));
    }

    /// Marks the log complete: the pod's program ended and its restart
    /// policy will not run it again. Followers get [`LogEvent::Ended`]; later
    /// snapshots come without a follower.
    pub fn end(&self) {
        let mut inner = self.lock();
        if !inner.ended {
            inner.ended = true;
            let _ = self.live.send(LogEvent::Ended);
        }
    }

    /// Opens the log again for a new pod of the same name (a new worker):
    /// followers wait for its output again.
    pub fn reopen(&self) {
        self.lock().ended = false;
    }

    /// The kept bytes (only the last `tail_lines` lines if given) and, if
    /// `follow` and the pod may still write, a receiver of everything
    /// appended after them.
    pub fn snapshot(
        &self,
        tail_lines: Option<u32>,
        follow: bool,
    ) -> (Vec<u8>, Option<broadcast::Receiver<LogEvent>>) {
        let inner = self.lock();
        let rx = (follow && !inner.ended).then(|| self.live.subscribe());
        let all: Vec<u8> = inner.bytes.iter().copied().collect();
        (tail(&all, tail_lines), rx)
    }
}

/// The last `n` lines of `bytes` (all if `n` is None).
pub fn tail(bytes: &[u8], n: Option<u32>) -> Vec<u8> {
    let Some(n) = n else { return bytes.to_vec() };
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return bytes[i + 1..].to_vec();
            }
        }
    }
    if n == 0 {
        Vec::new()
    } else {
        bytes.to_vec()
    }
}

impl LogSink for LogBuffer {
    fn write(&self, _stream: LogStream, bytes: &[u8]) {
        self.append(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes() {
        let b = LogBuffer::default();
        for i in 0..100_000 {
            b.append(format!("line {i}\n").as_bytes());
        }
        let (all, _) = b.snapshot(None, false);
        assert!(all.len() <= LOG_LIMIT);
        assert!(all.ends_with(b"line 99999\n"));
    }

    #[test]
    fn tails_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(1)), b"c");
        assert_eq!(tail(b"a\n", Some(5)), b"a\n");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
    }

    #[test]
    fn followers_see_what_comes_after_the_snapshot() {
        let b = LogBuffer::default();
        b.append(b"old\n");
        let (snap, rx) = b.snapshot(None, true);
        b.append(b"new\n");
        assert_eq!(snap, b"old\n");
        assert_eq!(
            rx.expect("follow").try_recv().expect("live"),
            LogEvent::Bytes(b"new\n".to_vec())
        );
    }

    #[test]
    fn followers_learn_that_the_pod_ended() {
        let b = LogBuffer::default();
        b.append(b"last words\n");
        let (_, rx) = b.snapshot(None, true);
        let mut rx = rx.expect("the pod still runs: follow");
        b.end();
        b.end();
        assert_eq!(rx.try_recv().expect("ended"), LogEvent::Ended);
        assert!(rx.try_recv().is_err(), "ended is sent once");

        // Following a finished pod gives what there is and no follower.
        let (snap, rx) = b.snapshot(None, true);
        assert_eq!(snap, b"last words\n");
        assert!(rx.is_none());

        // A new pod of the same name can be followed again.
        b.reopen();
        assert!(b.snapshot(None, true).1.is_some());
    }
}
