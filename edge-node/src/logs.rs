//! Per-pod log buffers: what a pod wrote to stdout and stderr, bounded in
//! size (old bytes fall off the front), with live followers for `logs -f`.

use crate::runtime::{LogSink, LogStream};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Bytes kept per pod; a chatty pod cannot exhaust a small device's memory.
pub const LOG_LIMIT: usize = 512 << 10;

/// One pod's log.
pub struct LogBuffer {
    inner: Mutex<VecDeque<u8>>,
    live: broadcast::Sender<Vec<u8>>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer {
            inner: Mutex::new(VecDeque::new()),
            live: broadcast::channel(1024).0,
        }
    }
}

impl LogBuffer {
    /// Appends bytes, dropping the oldest beyond [`LOG_LIMIT`], and wakes followers.
    pub fn append(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend(bytes);
        let excess = buf.len().saturating_sub(LOG_LIMIT);
        buf.drain(..excess);
        // Sent under the lock so a follower's snapshot and stream never overlap or gap.
        let _ = self.live.send(bytes.to_vec());
    }

    /// The kept bytes (only the last `tail_lines` lines if given) and, if
    /// `follow`, a receiver of everything appended after them.
    pub fn snapshot(
        &self,
        tail_lines: Option<u32>,
        follow: bool,
    ) -> (Vec<u8>, Option<broadcast::Receiver<Vec<u8>>>) {
        let buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = follow.then(|| self.live.subscribe());
        let all: Vec<u8> = buf.iter().copied().collect();
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
        assert_eq!(rx.expect("follow").try_recv().expect("live"), b"new\n");
    }
}
