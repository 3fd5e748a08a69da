//! Exercises the directories mounted into a pod (WASI preopens): reads,
//! writes and lists files on command, shows a read-only mount refusing a
//! write and a directory keeping its contents across restarts, fills a
//! mount to meet a size limit, and runs a conformance suite of the file
//! operations programs rely on, including the two ways out of a mount
//! (`..` and symlinks) that must stay shut.
//!
//! Usage (paths are as the guest sees them):
//!
//! - `write PATH TEXT`: writes TEXT (no newline added), creating or
//!   truncating PATH; prints `wrote PATH`.
//! - `append PATH TEXT`: appends TEXT and a newline, creating PATH if need
//!   be; prints `appended PATH`.
//! - `read PATH`: copies PATH to stdout byte for byte.
//! - `ls DIR`: prints the names in DIR, sorted, one a line.
//! - `expect-denied PATH`: creates or truncates PATH and writes a line to
//!   it. Prints `denied: KIND: MESSAGE` and exits 0 if that fails, for any
//!   reason (the kind tells which); prints `write allowed` and exits 1 if it
//!   works (leaving the line in PATH).
//! - `count PATH [EXIT_CODE]`: reads a number from PATH (0 if there is no
//!   such file), adds one, stores it, prints `count N` and exits with
//!   EXIT_CODE (default 0), so that a restart policy brings it back.
//! - `fill PATH MIB`: writes MIB mebibytes to PATH, 1 MiB at a time,
//!   printing `wrote N MiB` after each, then `filled PATH with MIB MiB`, and
//!   sleeps until stopped. A failed write ends it with exit code 1.
//! - `suite DIR`: runs the conformance checks inside DIR, printing
//!   `ok NAME`, `FAIL NAME: WHY` or `skip NAME: WHY` for each; exits 0 only
//!   if none failed. Every check removes what it made (names starting
//!   `.files-suite-`), so the suite can run again in the same DIR. DIR must
//!   be writable, and the escape checks expect `/etc` and the host's `/` to
//!   be outside every mount: reaching either is a failure.
//! - `sleep`: runs until stopped, to keep a pod up for inspection.
//!
//! Exit codes: 0 done, 1 the operation failed (the reason is on stderr),
//! 2 the arguments were not understood. A WASI p2 component can only end in
//! success or failure, so its host sees every non-zero code as 1.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: files write PATH TEXT | append PATH TEXT | read PATH | ls DIR \
                     | expect-denied PATH | count PATH [EXIT_CODE] | fill PATH MIB | suite DIR | sleep";

const MIB: usize = 1 << 20;

/// Why a command stopped: the arguments were wrong (exit 2) or the
/// operation failed (exit 1).
enum Error {
    Usage(String),
    Failed(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(Error::Usage(msg)) => {
            eprintln!("files: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Failed(msg)) => {
            eprintln!("files: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, Error> {
    let args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|arg| Error::Usage(format!("argument {arg:?} is not UTF-8")))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["write", path, text] => write(path, text),
        ["append", path, text] => append(path, text),
        ["read", path] => read(path),
        ["ls", dir] => ls(dir),
        ["expect-denied", path] => Ok(expect_denied(path)),
        ["count", path] => count(path, 0),
        ["count", path, code] => {
            let code = code
                .parse()
                .map_err(|_| Error::Usage(format!("exit code {code:?} is not 0..=255")))?;
            count(path, code)
        }
        ["fill", path, mib] => {
            let mib = mib
                .parse()
                .map_err(|_| Error::Usage(format!("{mib:?} is not a number of MiB")))?;
            fill(path, mib)
        }
        ["suite", dir] => suite(Path::new(dir)),
        ["sleep"] => sleep_forever(),
        [] => Err(Error::Usage("no command given".into())),
        _ => Err(Error::Usage(format!("unknown command {args:?}"))),
    }
}

/// Turns an I/O error into a failure naming the operation and the path.
fn failed(op: &str, path: &str) -> impl FnOnce(io::Error) -> Error {
    let what = format!("{op} {path}");
    move |e| Error::Failed(format!("{what}: {e}"))
}

fn write(path: &str, text: &str) -> Result<ExitCode, Error> {
    fs::write(path, text).map_err(failed("write", path))?;
    println!("wrote {path}");
    Ok(ExitCode::SUCCESS)
}

fn append(path: &str, text: &str) -> Result<ExitCode, Error> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{text}"))
        .map_err(failed("append to", path))?;
    println!("appended {path}");
    Ok(ExitCode::SUCCESS)
}

fn read(path: &str) -> Result<ExitCode, Error> {
    let bytes = fs::read(path).map_err(failed("read", path))?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Failed(format!("write {path} to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

fn ls(dir: &str) -> Result<ExitCode, Error> {
    let mut names = fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(failed("list", dir))?;
    names.sort();
    for name in names {
        println!("{}", name.to_string_lossy());
    }
    Ok(ExitCode::SUCCESS)
}

fn expect_denied(path: &str) -> ExitCode {
    let attempt = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(b"written by files expect-denied\n"));
    match attempt {
        Ok(()) => {
            println!("write allowed");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("denied: {:?}: {e}", e.kind());
            ExitCode::SUCCESS
        }
    }
}

fn count(path: &str, exit_code: u8) -> Result<ExitCode, Error> {
    let previous: u64 = match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| Error::Failed(format!("{path} holds {:?}, not a count", text.trim())))?,
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => return Err(failed("read", path)(e)),
    };
    let n = previous + 1;
    // Written beside and renamed over, so a pod stopped mid-write leaves the
    // old count rather than an empty file.
    let tmp = format!("{path}.tmp");
    fs::write(&tmp, format!("{n}\n")).map_err(failed("write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| Error::Failed(format!("rename {tmp} to {path}: {e}")))?;
    println!("count {n}");
    Ok(ExitCode::from(exit_code))
}

fn fill(path: &str, mib: u64) -> Result<ExitCode, Error> {
    let mut file = File::create(path).map_err(failed("create", path))?;
    // Not zeros, so that no layer below can store the file sparsely.
    let chunk = vec![0xa5u8; MIB];
    for done in 1..=mib {
        file.write_all(&chunk).map_err(|e| {
            Error::Failed(format!("fill {path}: stopped after {} MiB: {e}", done - 1))
        })?;
        println!("wrote {done} MiB");
    }
    // A full disk or quota can surface only when the data is flushed.
    file.sync_data()
        .map_err(|e| Error::Failed(format!("fill {path}: sync after {mib} MiB: {e}")))?;
    println!("filled {path} with {mib} MiB");
    sleep_forever()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

// ---------------------------------------------------------------------------
// The conformance suite.

/// How a check that did not fail ended.
enum Pass {
    Ok,
    /// The check could not run here; the reason says why.
    Skip(String),
}

type Check = fn(&Path) -> Result<Pass, String>;

/// The checks, in the order they run and are printed. `cleanup` comes last:
/// it looks for anything the others left behind.
const CHECKS: [(&str, Check); 12] = [
    ("create-write-read", create_write_read),
    ("seek", seek),
    ("positional-rw", positional_rw),
    ("rename", rename),
    ("readdir", readdir),
    ("set-len", set_len),
    ("create-remove-dir", create_remove_dir),
    ("remove-file", remove_file),
    ("metadata-len", metadata_len),
    ("path-escape", path_escape),
    ("symlink-escape", symlink_escape),
    ("cleanup", cleanup),
];

/// Prefix of every name the suite creates in DIR.
const SCRATCH_PREFIX: &str = ".files-suite-";

fn suite(dir: &Path) -> Result<ExitCode, Error> {
    let meta =
        fs::metadata(dir).map_err(|e| Error::Failed(format!("suite {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::Failed(format!(
            "suite {}: not a directory",
            dir.display()
        )));
    }
    let mut failures = 0;
    for (name, check) in CHECKS {
        match check(dir) {
            Ok(Pass::Ok) => println!("ok {name}"),
            Ok(Pass::Skip(why)) => println!("skip {name}: {why}"),
            Err(why) => {
                failures += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A name in the suite's directory that one check owns. Whatever an earlier,
/// interrupted run left under it is removed first, and it is removed again
/// when the check ends, passed or failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path, name: &str) -> Scratch {
        let scratch = Scratch(dir.join(format!("{SCRATCH_PREFIX}{name}")));
        scratch.clear();
        scratch
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn clear(&self) {
        // Unlinking first removes a symlink itself, never what it points to.
        if fs::remove_file(&self.0).is_err() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Adds the operation and path to an I/O error.
fn at(op: &str, path: &Path) -> impl FnOnce(io::Error) -> String {
    let what = format!("{op} {}", path.display());
    move |e| format!("{what}: {e}")
}

fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {:?}, want {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want)
        ))
    }
}

fn same_u64(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}"))
    }
}

/// Checks that `result` is the error `want`.
fn fails_with<T>(what: &str, result: io::Result<T>, want: ErrorKind) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{what} succeeded; want {want:?}")),
        Err(e) if e.kind() == want => Ok(()),
        Err(e) => Err(format!("{what}: got {e}; want {want:?}")),
    }
}

fn read_path(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(at("read", path))
}

fn write_path(path: &Path, contents: &[u8]) -> Result<(), String> {
    fs::write(path, contents).map_err(at("write", path))
}

fn create_write_read(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "create");
    let path = s.path();
    let mut file = File::create_new(path).map_err(at("create", path))?;
    file.write_all(b"hello from flotilla\n")
        .map_err(at("write", path))?;
    drop(file);
    same("read back", &read_path(path)?, b"hello from flotilla\n")?;
    fails_with(
        "creating it again exclusively",
        File::create_new(path),
        ErrorKind::AlreadyExists,
    )?;
    // Creating over an existing file truncates it.
    write_path(path, b"short")?;
    same("after rewriting", &read_path(path)?, b"short")?;
    Ok(Pass::Ok)
}

fn seek(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "seek");
    let path = s.path();
    write_path(path, b"0123456789")?;
    let mut file = File::open(path).map_err(at("open", path))?;
    let mut step = |to: SeekFrom, want_pos: u64, len: usize, want: &[u8]| {
        let pos = file.seek(to).map_err(|e| format!("seek {to:?}: {e}"))?;
        same_u64(&format!("position after seek {to:?}"), pos, want_pos)?;
        let mut buf = vec![0; len];
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read after seek {to:?}: {e}"))?;
        same(&format!("read after seek {to:?}"), &buf[..n], want)
    };
    step(SeekFrom::Start(3), 3, 2, b"34")?;
    step(SeekFrom::Current(2), 7, 1, b"7")?;
    step(SeekFrom::Current(-4), 4, 1, b"4")?;
    step(SeekFrom::End(-2), 8, 8, b"89")?;
    step(SeekFrom::End(0), 10, 1, b"")?;
    // Past the end is allowed and reads nothing.
    step(SeekFrom::Start(20), 20, 1, b"")?;
    Ok(Pass::Ok)
}

fn positional_rw(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "positional");
    let path = s.path();
    write_path(path, b"0123456789")?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(at("open", path))?;
    positional::write_all_at(&file, b"AB", 4).map_err(|e| format!("write at 4: {e}"))?;
    let mut buf = [0; 3];
    positional::read_exact_at(&file, &mut buf, 3).map_err(|e| format!("read at 3: {e}"))?;
    same("read at 3", &buf, b"3AB")?;
    let n = positional::read_at(&file, &mut buf, 10).map_err(|e| format!("read at 10: {e}"))?;
    same_u64("bytes read at the end", n as u64, 0)?;
    // Neither moved the cursor.
    let mut start = [0; 2];
    file.read_exact(&mut start)
        .map_err(|e| format!("read at the cursor: {e}"))?;
    same("read at the cursor", &start, b"01")?;
    // Writing past the end leaves a gap of zeros.
    positional::write_all_at(&file, b"Z", 12).map_err(|e| format!("write at 12: {e}"))?;
    same("whole file", &read_path(path)?, b"0123AB6789\0\0Z")?;
    Ok(Pass::Ok)
}

fn rename(dir: &Path) -> Result<Pass, String> {
    let a = Scratch::new(dir, "rename-a");
    let b = Scratch::new(dir, "rename-b");
    let (a, b) = (a.path(), b.path());
    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to)
            .map_err(|e| format!("rename {} to {}: {e}", from.display(), to.display()))
    };
    write_path(a, b"first")?;
    rename(a, b)?;
    fails_with("the old name", fs::metadata(a), ErrorKind::NotFound)?;
    same("under the new name", &read_path(b)?, b"first")?;
    // Onto an existing file: it is replaced.
    write_path(a, b"second")?;
    rename(a, b)?;
    fails_with("the old name", fs::metadata(a), ErrorKind::NotFound)?;
    same("the replaced file", &read_path(b)?, b"second")?;
    // A directory moves with what is in it.
    let d1 = Scratch::new(dir, "rename-d1");
    let d2 = Scratch::new(dir, "rename-d2");
    let (d1, d2) = (d1.path(), d2.path());
    fs::create_dir(d1).map_err(at("create dir", d1))?;
    write_path(&d1.join("inner"), b"inside")?;
    rename(d1, d2)?;
    same(
        "a file in the moved dir",
        &read_path(&d2.join("inner"))?,
        b"inside",
    )?;
    Ok(Pass::Ok)
}

fn readdir(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "readdir");
    let d = s.path();
    fs::create_dir(d).map_err(at("create dir", d))?;
    write_path(&d.join("a"), b"a")?;
    write_path(&d.join("b"), b"b")?;
    fs::create_dir(d.join("c")).map_err(at("create dir", &d.join("c")))?;
    let mut seen = Vec::new();
    for entry in fs::read_dir(d).map_err(at("list", d))? {
        let entry = entry.map_err(at("list", d))?;
        let kind = entry
            .file_type()
            .map_err(at("file type of", &entry.path()))?;
        let kind = if kind.is_dir() {
            "dir"
        } else if kind.is_file() {
            "file"
        } else {
            "other"
        };
        seen.push(format!("{}:{kind}", entry.file_name().to_string_lossy()));
    }
    seen.sort();
    let want = ["a:file", "b:file", "c:dir"];
    if seen != want {
        return Err(format!("listed {seen:?}, want {want:?}"));
    }
    Ok(Pass::Ok)
}

fn set_len(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "set-len");
    let path = s.path();
    write_path(path, b"0123456789")?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(at("open", path))?;
    let len = |file: &File| file.metadata().map(|m| m.len()).map_err(at("stat", path));
    file.set_len(4).map_err(|e| format!("shrink to 4: {e}"))?;
    same_u64("length after shrinking", len(&file)?, 4)?;
    same("after shrinking", &read_path(path)?, b"0123")?;
    file.set_len(8).map_err(|e| format!("grow to 8: {e}"))?;
    same_u64("length after growing", len(&file)?, 8)?;
    same("after growing", &read_path(path)?, b"0123\0\0\0\0")?;
    Ok(Pass::Ok)
}

fn create_remove_dir(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "dir");
    let d = s.path();
    fs::create_dir(d).map_err(at("create dir", d))?;
    let meta = fs::metadata(d).map_err(at("stat", d))?;
    if !meta.is_dir() {
        return Err("what create_dir made is not a directory".into());
    }
    fails_with(
        "creating it again",
        fs::create_dir(d),
        ErrorKind::AlreadyExists,
    )?;
    let inner = d.join("inner");
    write_path(&inner, b"x")?;
    if fs::remove_dir(d).is_ok() {
        return Err("remove_dir removed a directory that was not empty".into());
    }
    fs::remove_file(&inner).map_err(at("remove", &inner))?;
    fs::remove_dir(d).map_err(at("remove dir", d))?;
    fails_with("the removed dir", fs::metadata(d), ErrorKind::NotFound)?;
    Ok(Pass::Ok)
}

fn remove_file(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "remove");
    let path = s.path();
    write_path(path, b"x")?;
    fs::remove_file(path).map_err(at("remove", path))?;
    fails_with("the removed file", fs::metadata(path), ErrorKind::NotFound)?;
    fails_with(
        "removing it again",
        fs::remove_file(path),
        ErrorKind::NotFound,
    )?;
    Ok(Pass::Ok)
}

fn metadata_len(dir: &Path) -> Result<Pass, String> {
    let s = Scratch::new(dir, "metadata");
    let path = s.path();
    write_path(path, &[7; 12345])?;
    let meta = fs::metadata(path).map_err(at("stat", path))?;
    if !meta.is_file() {
        return Err("a written file is not a regular file".into());
    }
    same_u64("length by path", meta.len(), 12345)?;
    let file = File::open(path).map_err(at("open", path))?;
    let by_handle = file.metadata().map_err(at("stat", path))?;
    same_u64("length by handle", by_handle.len(), 12345)?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&[8; 55]))
        .map_err(at("append to", path))?;
    let meta = fs::metadata(path).map_err(at("stat", path))?;
    same_u64("length after appending", meta.len(), 12400)?;
    Ok(Pass::Ok)
}

/// Enough `..` to climb out of any mount, however deep DIR is inside it.
fn climb_out() -> String {
    "../".repeat(64)
}

fn path_escape(dir: &Path) -> Result<Pass, String> {
    // Climbing past the root would land on the host's `/`, which always
    // exists, so only the mount's boundary can stop it.
    let mut outside = vec![dir.join("../../etc/passwd"), dir.join(climb_out())];
    // `/` itself may be mounted; anywhere else, `/etc` is outside every mount.
    if !dir.components().eq([Component::RootDir]) {
        outside.push(PathBuf::from("/etc/passwd"));
    }
    for path in &outside {
        if File::open(path).is_ok() {
            return Err(format!("opened {}", path.display()));
        }
        if fs::metadata(path).is_ok() {
            return Err(format!("found {}", path.display()));
        }
    }
    Ok(Pass::Ok)
}

// `std::fs::soft_link` is deprecated in favour of each platform's own call,
// but WASI's (`std::os::wasi::fs::symlink_path`) is nightly-only.
#[allow(deprecated)]
fn symlink(target: &str, link: &Path) -> io::Result<()> {
    fs::soft_link(target, link)
}

fn symlink_escape(dir: &Path) -> Result<Pass, String> {
    // A link within the mount must work, or refusing the ones below would
    // prove nothing.
    let target = Scratch::new(dir, "symlink-target");
    let inside = Scratch::new(dir, "symlink-inside");
    write_path(target.path(), b"inside")?;
    let target_name = format!("{SCRATCH_PREFIX}symlink-target");
    if let Err(e) = symlink(&target_name, inside.path()) {
        return Ok(Pass::Skip(format!("cannot create a symlink here: {e}")));
    }
    same(
        "read through a link within the mount",
        &read_path(inside.path())?,
        b"inside",
    )?;
    let climb = climb_out();
    let targets = ["/", "/etc/passwd", climb.trim_end_matches('/')];
    for (i, target) in targets.into_iter().enumerate() {
        let link = Scratch::new(dir, &format!("symlink-out-{i}"));
        // A host may refuse to make such a link at all, which also keeps the
        // guest in.
        if symlink(target, link.path()).is_err() {
            continue;
        }
        if File::open(link.path()).is_ok() {
            return Err(format!("opened {target} through a link"));
        }
        if fs::metadata(link.path()).is_ok() {
            return Err(format!("found {target} through a link"));
        }
    }
    Ok(Pass::Ok)
}

fn cleanup(dir: &Path) -> Result<Pass, String> {
    let mut left: Vec<String> = fs::read_dir(dir)
        .map_err(at("list", dir))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(SCRATCH_PREFIX))
        .collect();
    if left.is_empty() {
        Ok(Pass::Ok)
    } else {
        left.sort();
        Err(format!("left behind: {}", left.join(", ")))
    }
}

/// Reads and writes at an offset without moving the file's cursor, through
/// the C library every `wasm32-wasip1`/`-wasip2` program links (wasi-libc):
/// std's `std::os::wasi::fs::FileExt` does the same but is nightly-only.
/// On p1 these are `fd_pread`/`fd_pwrite`; on p2, `descriptor.read`/`write`.
mod positional {
    use std::ffi::{c_int, c_void};
    use std::fs::File;
    use std::io::{self, ErrorKind};
    use std::os::fd::AsRawFd;

    unsafe extern "C" {
        fn pread(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize;
        fn pwrite(fd: c_int, buf: *const c_void, count: usize, offset: i64) -> isize;
    }

    fn offset(at: u64) -> io::Result<i64> {
        i64::try_from(at).map_err(|_| io::Error::new(ErrorKind::InvalidInput, "offset too large"))
    }

    /// A negative count is the C library's failure; the reason is in errno.
    fn count(n: isize) -> io::Result<usize> {
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    pub fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let at = offset(at)?;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // whole call, and the descriptor stays open while `file` is borrowed.
        count(unsafe { pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), at) })
    }

    pub fn write_at(file: &File, buf: &[u8], at: u64) -> io::Result<usize> {
        let at = offset(at)?;
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the
        // whole call, and the descriptor stays open while `file` is borrowed.
        count(unsafe { pwrite(file.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at) })
    }

    pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match read_at(file, buf, at)? {
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    at += n as u64;
                }
            }
        }
        Ok(())
    }

    pub fn write_all_at(file: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match write_at(file, buf, at)? {
                0 => return Err(ErrorKind::WriteZero.into()),
                n => {
                    buf = &buf[n..];
                    at += n as u64;
                }
            }
        }
        Ok(())
    }
}
