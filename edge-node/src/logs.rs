//! Pods' logs, kept in files on the node so that they outlive the node's
//! process, with live followers for `logs -f`.
//!
//! Each pod has a directory under `DATA_DIR/logs`, named like its volumes'
//! (`NAMESPACE_NAME_UID`), holding one file per run of its program:
//! `SEQ.log`, rotated to `SEQ.log.1`, `SEQ.log.2`… when it reaches
//! [`LogLimits::max_size`], keeping [`LogLimits::max_files`] files per run.
//! Only the current run and the one before it (`logs --previous`) are kept.
//!
//! A line in a file is a record as the container runtimes of Kubernetes
//! write them: `TIME STREAM TAG TEXT`, where TIME is RFC 3339 in UTC with
//! nanoseconds, STREAM `stdout` or `stderr`, and TAG `F` for text that ended
//! a line of the program's output or `P` for part of a line the program had
//! not finished when it wrote. Records are gathered in memory and appended
//! about once a second ([`FLUSH_EVERY`]), and at once before anything
//! reads them: a chatty pod costs its SD card one small append a second,
//! not one write per line.
//!
//! A log knows when its pod's program has ended for good, so a follower
//! gets what there is and then the end of the stream instead of waiting
//! forever for output that cannot come.

use crate::runtime::{LogSink, LogStream};
use flotilla_api::protocol::LogOptions;
use flotilla_api::time::Time;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

/// How often gathered records are appended to their files.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Gathered bytes past which the writer is woken early.
const FLUSH_SOON: usize = 64 << 10;
/// Gathered bytes past which a pod's output is dropped (and the drop
/// noted in its log) until the writer has caught up: a node whose disk
/// stalls keeps its memory.
const PENDING_LIMIT: usize = 1 << 20;

/// How much of each pod's output a node keeps (`flotilla node
/// --log-max-size --log-max-files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A run's file is rotated once it reaches this many bytes.
    pub max_size: u64,
    /// Files kept per run: the one written and `max_files - 1` rotated.
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 1 MiB files, two per run: at most about 4 MiB per pod (two runs).
    fn default() -> Self {
        LogLimits {
            max_size: 1 << 20,
            max_files: 2,
        }
    }
}

/// What a follower receives after its snapshot: already formatted as the
/// request asked (timestamps), ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Bytes the pod wrote, with when (nanoseconds since the epoch).
    Bytes { at: u64, bytes: Vec<u8> },
    /// The program started again (restart `restarts`).
    Restarted { at: u64, restarts: u32 },
    /// The pod's program ended and will not run again: nothing more comes.
    Ended,
}

/// Why a log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it has not restarted on this node: there is no previous run to show (leave out --previous)")]
    NoPrevious,
    #[error("cannot read its log: {0}")]
    Io(#[from] io::Error),
}

/// Every pod's log on this node.
pub struct LogStore {
    root: PathBuf,
    limits: LogLimits,
    /// By `namespace/name`: the log of the pod of that name bound here now.
    pods: Mutex<HashMap<String, Arc<PodLog>>>,
    wake: Arc<Notify>,
}

impl LogStore {
    /// The logs under `root` (created when a pod first writes).
    pub fn new(root: &Path, limits: LogLimits) -> Arc<LogStore> {
        Arc::new(LogStore {
            root: root.to_path_buf(),
            limits,
            pods: Mutex::default(),
            wake: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PodLog>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log of the pod `key` (`namespace/name`) whose directory is
    /// `dir_name`: the one there is, or one for this pod, opened on what
    /// its directory holds (runs written before a restart of the node).
    pub fn for_pod(&self, key: &str, dir_name: &str) -> Arc<PodLog> {
        let dir = self.root.join(dir_name);
        let mut pods = self.lock();
        if let Some(log) = pods.get(key).filter(|l| l.dir == dir) {
            return log.clone();
        }
        let log = Arc::new(PodLog::open(dir, self.limits, self.wake.clone()));
        pods.insert(key.to_string(), log.clone());
        log
    }

    /// The log of the pod `key` (`namespace/name`) bound here, if any.
    pub fn get(&self, key: &str) -> Option<Arc<PodLog>> {
        self.lock().get(key).cloned()
    }

    /// Forgets the pod `key`'s log, returning its directory for
    /// [`remove_dir`] once its program has stopped writing.
    pub fn forget(&self, key: &str) -> Option<PathBuf> {
        self.lock().remove(key).map(|l| l.dir.clone())
    }

    /// Removes the directories of pods not in `keep` (directory names):
    /// pods deleted while the node was down.
    pub fn remove_others(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            if !keep.contains(&*e.file_name().to_string_lossy()) {
                remove_dir(&e.path());
            }
        }
    }

    /// Appends what every log has gathered.
    pub fn flush_all(&self) {
        let logs: Vec<Arc<PodLog>> = self.lock().values().cloned().collect();
        for log in logs {
            log.flush();
        }
    }

    /// Appends gathered records every [`FLUSH_EVERY`] (sooner when a pod
    /// writes a lot) until `stop`, then once more.
    pub async fn write_behind(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stopped = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = self.wake.notified() => false,
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.flush_all()).await;
            if stopped {
                return;
            }
        }
    }
}

/// Removes a pod's log directory (best effort: a leftover only takes space).
pub fn remove_dir(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::debug!(dir = %path.display(), "removed a pod's logs"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %path.display(), error = %e, "cannot remove a pod's logs"),
    }
}

/// One pod's log.
pub struct PodLog {
    dir: PathBuf,
    limits: LogLimits,
    inner: Mutex<Inner>,
    live: broadcast::Sender<LogEvent>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    /// Runs in the directory, oldest first; the last is the current one.
    runs: Vec<u64>,
    /// The current run's file, opened at its first append.
    file: Option<File>,
    /// Bytes in the current run's file.
    size: u64,
    /// Records not yet appended.
    pending: Vec<u8>,
    /// Output bytes dropped since the last append (the disk did not keep up).
    dropped: u64,
    /// Per stream (stdout, stderr): whether its last record left a line
    /// unfinished, which its next record continues.
    open: [bool; 2],
    ended: bool,
    /// The last failure to write, logged once until a write succeeds.
    failing: bool,
}

impl PodLog {
    fn open(dir: PathBuf, limits: LogLimits, wake: Arc<Notify>) -> PodLog {
        let runs = runs_in(&dir);
        let size = runs
            .last()
            .and_then(|r| std::fs::metadata(run_file(&dir, *r, 0)).ok())
            .map_or(0, |m| m.len());
        PodLog {
            dir,
            limits,
            inner: Mutex::new(Inner {
                runs,
                size,
                ..Inner::default()
            }),
            live: broadcast::channel(1024).0,
            wake,
        }
    }

    /// A log in `dir` of its own, for tests.
    #[cfg(test)]
    pub fn in_dir(dir: &Path) -> Arc<PodLog> {
        Arc::new(PodLog::open(
            dir.to_path_buf(),
            LogLimits::default(),
            Arc::default(),
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new run of the program begins (restart `restarts`): later output
    /// goes to a new file, the run before it stays for `--previous`, older
    /// ones go. Followers get a separator.
    pub fn start_run(&self, restarts: u32) {
        let mut inner = self.lock();
        self.write_pending(&mut inner);
        inner.file = None;
        inner.size = 0;
        inner.open = [false; 2];
        let run = inner.runs.last().map_or(0, |r| r + 1);
        inner.runs.push(run);
        while inner.runs.len() > 2 {
            let old = inner.runs.remove(0);
            for i in 0..=self.limits.max_files {
                let _ = std::fs::remove_file(run_file(&self.dir, old, i));
            }
        }
        // The run exists from its start, even if it never writes: `--previous`
        // of a run that printed nothing shows nothing, not the run before.
        if let Err(e) = self.open_current(&mut inner, run) {
            self.failed(&mut inner, &e);
        }
        let _ = self.live.send(LogEvent::Restarted {
            at: now_nanos(),
            restarts,
        });
    }

    /// Records output, and wakes followers.
    pub fn append(&self, stream: LogStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let at = now_nanos();
        let mut inner = self.lock();
        if inner.pending.len() >= PENDING_LIMIT {
            inner.dropped += bytes.len() as u64;
        } else {
            let stamp = format_nanos(at);
            let (stream, index) = match stream {
                LogStream::Stdout => ("stdout", 0),
                LogStream::Stderr => ("stderr", 1),
            };
            let mut rest = bytes;
            while !rest.is_empty() {
                let (text, tag, next) = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => (&rest[..i], 'F', &rest[i + 1..]),
                    None => (rest, 'P', &rest[..0]),
                };
                let pending = &mut inner.pending;
                pending.extend_from_slice(format!("{stamp} {stream} {tag} ").as_bytes());
                pending.extend_from_slice(text);
                pending.push(b'\n');
                rest = next;
                inner.open[index] = tag == 'P';
            }
            if inner.pending.len() >= FLUSH_SOON {
                self.wake.notify_one();
            }
        }
        // Sent under the lock so a follower's snapshot and stream never overlap or gap.
        let _ = self.live.send(LogEvent::Bytes {
            at,
            bytes: bytes.to_vec(),
        });
    }

    /// Marks the log complete: the pod's program ended and its restart
    /// policy will not run it again. Followers get [`LogEvent::Ended`]; later
    /// reads come without a follower.
    pub fn end(&self) {
        let mut inner = self.lock();
        self.write_pending(&mut inner);
        if !inner.ended {
            inner.ended = true;
            let _ = self.live.send(LogEvent::Ended);
        }
    }

    /// Opens the log again for a new worker of the same pod: followers
    /// wait for its output again.
    pub fn reopen(&self) {
        self.lock().ended = false;
    }

    /// Appends what was gathered.
    pub fn flush(&self) {
        let mut inner = self.lock();
        self.write_pending(&mut inner);
    }

    fn open_current(&self, inner: &mut Inner, run: u64) -> io::Result<()> {
        flotilla_api::perms::create_dir(&self.dir)?;
        // Owner-only, like the pod's volumes: output may hold secrets.
        let file = File::options()
            .create(true)
            .append(true)
            .mode(flotilla_api::perms::FILE_MODE)
            .open(run_file(&self.dir, run, 0))?;
        inner.size = file.metadata()?.len();
        inner.file = Some(file);
        Ok(())
    }

    fn failed(&self, inner: &mut Inner, e: &io::Error) {
        if !inner.failing {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write a pod's log; its output is dropped until writing works again");
        }
        inner.failing = true;
    }

    fn write_pending(&self, inner: &mut Inner) {
        if inner.dropped > 0 {
            let note = format!(
                "{} stderr F [flotilla: {} bytes of output dropped: the node's disk did not keep up]\n",
                format_nanos(now_nanos()),
                inner.dropped
            );
            // Unfinished lines end first, so the note is a line of its own.
            for (open, stream) in inner.open.into_iter().zip(["stdout", "stderr"]) {
                if open {
                    let end = format!("{} {stream} F \n", format_nanos(now_nanos()));
                    inner.pending.extend_from_slice(end.as_bytes());
                }
            }
            inner.open = [false; 2];
            inner.pending.extend_from_slice(note.as_bytes());
            inner.dropped = 0;
        }
        if inner.pending.is_empty() {
            return;
        }
        let Some(&run) = inner.runs.last() else {
            // Output before any run (none is expected): kept for the first.
            return;
        };
        let result = (|| {
            if inner.file.is_none() {
                self.open_current(inner, run)?;
            }
            let Some(file) = inner.file.as_mut() else {
                return Ok(());
            };
            file.write_all(&inner.pending)?;
            inner.size += inner.pending.len() as u64;
            if inner.size >= self.limits.max_size {
                inner.file = None;
                self.rotate(run)?;
                inner.size = 0;
            }
            Ok::<_, io::Error>(())
        })();
        inner.pending.clear();
        match result {
            Ok(()) => inner.failing = false,
            Err(e) => self.failed(inner, &e),
        }
    }

    /// `SEQ.log.(k)` becomes `SEQ.log.(k+1)`, the oldest beyond the limit goes.
    fn rotate(&self, run: u64) -> io::Result<()> {
        let keep = self.limits.max_files.max(1);
        let _ = std::fs::remove_file(run_file(&self.dir, run, keep - 1));
        for i in (0..keep - 1).rev() {
            match std::fs::rename(run_file(&self.dir, run, i), run_file(&self.dir, run, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// What `opts` asks of this log: the text, formatted, and, if
    /// following and the program may still write, a receiver of what comes
    /// after it. Reads files: call it off the async threads.
    pub fn read(
        &self,
        opts: &LogOptions,
        now: SystemTime,
    ) -> Result<(Vec<u8>, Option<broadcast::Receiver<LogEvent>>), ReadError> {
        let (files, rx) = {
            let mut inner = self.lock();
            self.write_pending(&mut inner);
            let run = if opts.previous {
                match inner.runs.len() {
                    n if n >= 2 => Some(inner.runs[n - 2]),
                    _ => return Err(ReadError::NoPrevious),
                }
            } else {
                inner.runs.last().copied()
            };
            // Opened under the lock with their lengths now: what is appended
            // later reaches the follower, not this read as well.
            let mut files = Vec::new();
            if let Some(run) = run {
                for i in (0..self.limits.max_files.max(1)).rev() {
                    if let Ok(f) = File::open(run_file(&self.dir, run, i)) {
                        let len = f.metadata()?.len();
                        files.push((f, len));
                    }
                }
            }
            let follow = opts.follow && !opts.previous && !inner.ended;
            (files, follow.then(|| self.live.subscribe()))
        };
        let mut raw = Vec::new();
        for (f, len) in files {
            f.take(len).read_to_end(&mut raw)?;
        }
        let cutoff = since(opts, now);
        Ok((render(&raw, cutoff, opts.tail_lines, opts.timestamps), rx))
    }
}

impl LogSink for PodLog {
    fn write(&self, stream: LogStream, bytes: &[u8]) {
        self.append(stream, bytes);
    }
}

/// Formats live events for a follower as the request asked.
#[derive(Debug)]
pub struct Follower {
    timestamps: bool,
    /// Whether the next byte begins a line.
    line_start: bool,
}

impl Follower {
    /// A follower after a read whose text ended with `read` (a line's end
    /// or not).
    pub fn new(opts: &LogOptions, read: &[u8]) -> Follower {
        Follower {
            timestamps: opts.timestamps,
            line_start: read.is_empty() || read.ends_with(b"\n"),
        }
    }

    /// The bytes to send for `event` (None: the stream ends).
    pub fn format(&mut self, event: &LogEvent) -> Option<Vec<u8>> {
        match event {
            LogEvent::Ended => None,
            LogEvent::Restarted { at, restarts } => {
                let mut out = Vec::new();
                if !self.line_start {
                    out.push(b'\n');
                }
                self.line_start = true;
                out.extend_from_slice(separator(*at, *restarts).as_bytes());
                Some(out)
            }
            LogEvent::Bytes { at, bytes } => {
                if !self.timestamps {
                    self.line_start = bytes.ends_with(b"\n");
                    return Some(bytes.clone());
                }
                let stamp = format_nanos(*at);
                let mut out = Vec::with_capacity(bytes.len() + 32);
                for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
                    if self.line_start || i > 0 {
                        out.extend_from_slice(stamp.as_bytes());
                        out.push(b' ');
                    }
                    out.extend_from_slice(line);
                    self.line_start = line.ends_with(b"\n");
                }
                Some(out)
            }
        }
    }
}

/// The line a follower sees where the program started again.
pub fn separator(at: u64, restarts: u32) -> String {
    match restarts {
        // A follower that waited for the first start (a pod still Pending).
        0 => format!(
            "--- flotilla: the program started at {} ---\n",
            format_nanos(at)
        ),
        n => format!(
            "--- flotilla: the program started again at {} (restart {n}) ---\n",
            format_nanos(at)
        ),
    }
}

/// The first moment the request wants lines from, in nanoseconds.
fn since(opts: &LogOptions, now: SystemTime) -> Option<u64> {
    let by_seconds = opts.since_seconds.map(|s| {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        u64::try_from(now.saturating_sub(u128::from(s) * 1_000_000_000)).unwrap_or(u64::MAX)
    });
    let by_time = opts.since_time.map(|t| {
        u64::try_from(t.millis())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    });
    by_seconds.max(by_time)
}

/// The text of the records in `raw`: whole lines (records of one line
/// joined), those from `cutoff` on, the last `tail` of them, each after
/// its time if `timestamps`. A record that does not parse (a torn write
/// at a crash) is skipped.
pub fn render(raw: &[u8], cutoff: Option<u64>, tail: Option<u32>, timestamps: bool) -> Vec<u8> {
    // (time of the line's first record, its text); and per stream, the
    // line its records continue, if unfinished.
    let mut lines: Vec<(&[u8], Vec<u8>)> = Vec::new();
    let mut open: [Option<usize>; 2] = [None; 2];
    for record in raw.split(|b| *b == b'\n') {
        let Some((stamp, stream, ended, text)) = parse_record(record) else {
            continue;
        };
        let at = match open[stream] {
            Some(at) => at,
            None => {
                lines.push((stamp, Vec::new()));
                lines.len() - 1
            }
        };
        let line = &mut lines[at].1;
        line.extend_from_slice(text);
        if ended {
            line.push(b'\n');
        }
        open[stream] = (!ended).then_some(at);
    }
    if let Some(cutoff) = cutoff {
        lines.retain(|(stamp, _)| parse_nanos(stamp).is_some_and(|t| t >= cutoff));
    }
    let skip = match tail {
        Some(n) => lines.len().saturating_sub(n as usize),
        None => 0,
    };
    let mut out = Vec::new();
    for (stamp, line) in &lines[skip..] {
        if timestamps {
            out.extend_from_slice(stamp);
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    out
}

/// `TIME STREAM TAG TEXT` as (TIME, 0 for stdout or 1 for stderr,
/// whether TAG is F, TEXT).
fn parse_record(record: &[u8]) -> Option<(&[u8], usize, bool, &[u8])> {
    let mut parts = record.splitn(4, |b| *b == b' ');
    let stamp = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next()?;
    let stream = match stream {
        b"stdout" => 0,
        b"stderr" => 1,
        _ => return None,
    };
    parse_nanos(stamp)?;
    match tag {
        b"F" => Some((stamp, stream, true, text)),
        b"P" => Some((stamp, stream, false, text)),
        _ => None,
    }
}

fn run_file(dir: &Path, run: u64, rotated: u32) -> PathBuf {
    match rotated {
        0 => dir.join(format!("{run}.log")),
        n => dir.join(format!("{run}.log.{n}")),
    }
}

/// The runs whose files are in `dir`, oldest first.
fn runs_in(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let (run, _) = name.split_once(".log")?;
            run.parse().ok()
        })
        .collect();
    runs.sort_unstable();
    runs.dedup();
    runs
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `2026-12-04T21:52:33.123456789Z`.
pub fn format_nanos(nanos: u64) -> String {
    let millis = i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX);
    let t = Time(millis).to_string();
    // Time prints milliseconds; the record keeps all nine digits.
    let seconds = t.get(..19).unwrap_or(&t);
    format!("{seconds}.{:09}Z", nanos % 1_000_000_000)
}

/// The inverse of [`format_nanos`].
fn parse_nanos(stamp: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(stamp).ok()?;
    let (seconds, frac) = s.strip_suffix('Z')?.split_once('.')?;
    if frac.len() != 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = Time::parse_rfc3339(&format!("{seconds}Z"))?;
    let secs = u64::try_from(whole.millis() / 1000).ok()?;
    Some(secs * 1_000_000_000 + frac.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    fn read(log: &PodLog, o: &LogOptions) -> String {
        String::from_utf8(log.read(o, SystemTime::now()).expect("read").0).expect("utf8")
    }

    #[test]
    fn times_print_with_nanoseconds_and_read_back() {
        let t = 1_780_000_000_123_456_789;
        assert_eq!(format_nanos(t), "2026-05-28T20:26:40.123456789Z");
        assert_eq!(parse_nanos(format_nanos(t).as_bytes()), Some(t));
        assert_eq!(parse_nanos(b"2026-05-28T20:26:40Z"), None);
        assert_eq!(parse_nanos(b"garbage"), None);
    }

    #[test]
    fn lines_survive_being_written_in_pieces() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = PodLog::in_dir(dir.path());
        log.start_run(0);
        log.append(LogStream::Stdout, b"hel");
        log.append(LogStream::Stdout, b"lo\nwor");
        log.append(LogStream::Stderr, b"ld\n\nlast");
        assert_eq!(read(&log, &opts()), "hello\nworld\n\nlast");
        let o = LogOptions {
            tail_lines: Some(2),
            ..opts()
        };
        assert_eq!(read(&log, &o), "\nlast");
        // A stream's unfinished line is not joined with the other stream's.
        log.start_run(1);
        log.append(LogStream::Stdout, b"a");
        log.append(LogStream::Stderr, b"err\n");
        log.append(LogStream::Stdout, b"b\n");
        assert_eq!(read(&log, &opts()), "ab\nerr\n");
    }

    #[test]
    fn a_log_outlives_its_process_and_keeps_the_run_before() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let log = PodLog::in_dir(dir.path());
            log.start_run(0);
            log.append(LogStream::Stdout, b"first run\n");
            log.start_run(1);
            log.append(LogStream::Stdout, b"second run\n");
            log.flush();
        }
        // The node restarted: a new PodLog reads what the files hold.
        let log = PodLog::in_dir(dir.path());
        assert_eq!(read(&log, &opts()), "second run\n");
        let prev = LogOptions {
            previous: true,
            ..opts()
        };
        assert_eq!(read(&log, &prev), "first run\n");
        // A third run: the first goes, the second is the previous.
        log.start_run(2);
        assert_eq!(read(&log, &opts()), "");
        assert_eq!(read(&log, &prev), "second run\n");
        assert_eq!(runs_in(dir.path()), [1, 2]);
    }

    #[test]
    fn no_previous_run_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = PodLog::in_dir(dir.path());
        log.start_run(0);
        let prev = LogOptions {
            previous: true,
            ..opts()
        };
        let err = log.read(&prev, SystemTime::now()).expect_err("no previous");
        assert!(err.to_string().contains("--previous"), "{err}");
    }

    #[test]
    fn files_rotate_and_keep_the_newest() {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = LogLimits {
            max_size: 4096,
            max_files: 3,
        };
        let log = PodLog::open(dir.path().to_path_buf(), limits, Arc::default());
        log.start_run(0);
        for i in 0..2000 {
            log.append(LogStream::Stdout, format!("line {i}\n").as_bytes());
            if i % 10 == 0 {
                log.flush();
            }
        }
        log.flush();
        let total: u64 = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        assert!(total <= 3 * (4096 + 1024), "{total} bytes kept");
        assert!(!run_file(dir.path(), 0, 3).exists());
        let text = read(&log, &opts());
        assert!(text.ends_with("line 1999\n"), "{text}");
        assert!(!text.contains("line 0\n"));
        // Lines are whole, and in order.
        let nums: Vec<u32> = text
            .lines()
            .map(|l| l.strip_prefix("line ").expect("whole").parse().expect("n"))
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn since_timestamps_and_torn_records() {
        let old = "2020-01-01T00:00:00.000000001Z stdout F old\n";
        let new = "2026-12-04T10:00:00.000000000Z stdout P ne\n2026-12-04T10:00:01.000000000Z stdout F w\n";
        let torn = "2026-12-04T10:00:02.0000";
        let raw = format!("{old}{new}{torn}");
        assert_eq!(render(raw.as_bytes(), None, None, false), b"old\nnew\n");
        let cutoff = parse_nanos(b"2026-01-01T00:00:00.000000000Z");
        assert_eq!(render(raw.as_bytes(), cutoff, None, false), b"new\n");
        assert_eq!(
            String::from_utf8(render(raw.as_bytes(), cutoff, None, true)).expect("utf8"),
            "2026-12-04T10:00:00.000000000Z new\n"
        );
        // Garbage between records costs only itself.
        let mixed = format!("{old}\u{0}\u{1}not a record\n{new}");
        assert_eq!(
            render(mixed.as_bytes(), None, Some(5), false),
            b"old\nnew\n"
        );
    }

    #[test]
    fn followers_see_what_comes_after_the_read_with_a_line_between_runs() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = PodLog::in_dir(dir.path());
        log.start_run(0);
        log.append(LogStream::Stdout, b"old\n");
        let o = LogOptions {
            follow: true,
            timestamps: true,
            ..opts()
        };
        let (snap, rx) = log.read(&o, SystemTime::now()).expect("read");
        let mut rx = rx.expect("follow");
        assert!(String::from_utf8_lossy(&snap).ends_with("Z old\n"));
        log.append(LogStream::Stdout, b"new\npart");
        log.start_run(1);
        log.append(LogStream::Stdout, b"again\n");
        log.end();
        let mut f = Follower::new(&o, &snap);
        let mut out = String::new();
        while let Ok(e) = rx.try_recv() {
            match f.format(&e) {
                Some(b) => out.push_str(&String::from_utf8_lossy(&b)),
                None => break,
            }
        }
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].ends_with("Z new"), "{out}");
        assert!(lines[1].ends_with("Z part"), "{out}");
        assert!(lines[2].starts_with("--- flotilla: the program started again at "));
        assert!(lines[2].ends_with("(restart 1) ---"), "{out}");
        assert!(lines[3].ends_with("Z again"), "{out}");
        assert!(separator(0, 0).starts_with("--- flotilla: the program started at 1970-"));

        // Following a finished pod gives what there is and no follower.
        let (snap, rx) = log.read(&o, SystemTime::now()).expect("read");
        assert!(String::from_utf8_lossy(&snap).ends_with("Z again\n"));
        assert!(rx.is_none());
        // A new worker of the pod can be followed again.
        log.reopen();
        assert!(log.read(&o, SystemTime::now()).expect("read").1.is_some());
    }

    #[test]
    fn a_store_removes_logs_of_pods_it_no_longer_has() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LogStore::new(dir.path(), LogLimits::default());
        for (key, name) in [("default/a", "default_a_1"), ("default/b", "default_b_2")] {
            let log = store.for_pod(key, name);
            log.start_run(0);
            log.append(LogStream::Stdout, b"x\n");
        }
        store.flush_all();
        store.remove_others(&["default_a_1".to_string()].into());
        assert!(dir.path().join("default_a_1").exists());
        assert!(!dir.path().join("default_b_2").exists());
        // The same pod gets the same log; a new pod of that name, a new one.
        let a = store.for_pod("default/a", "default_a_1");
        assert!(Arc::ptr_eq(&a, &store.for_pod("default/a", "default_a_1")));
        assert!(!Arc::ptr_eq(&a, &store.for_pod("default/a", "default_a_9")));
    }
}
