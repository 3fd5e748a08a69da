//! The node's own memory: handing back the code it ran only to start.
//!
//! Starting a node runs much code it will not run again: parsing its
//! arguments, building TLS configurations, joining, setting up wasmtime. The
//! kernel maps a binary's code a page at a time as it runs, and around each
//! page it faults in it maps the neighbours it has cached (64 KiB at once),
//! so an idle node whose binary carries the master too (the one binary a Pi
//! user runs) kept about 20 MiB of its file mapped, of which a few MiB are
//! used while idle. Those pages are clean and the kernel would reclaim them
//! under pressure, but they count in the RSS that `top`, systemd and a user
//! sizing a device read.
//!
//! So once the node has joined and settled, it asks the kernel to reclaim
//! them now ([`release_startup_code`]): the code it still runs comes back at
//! its next use, and what stays is its idle working set (docs/edge.md,
//! "Memory"). Only the binary's read-only mappings are touched; its data,
//! heap and stacks are not.

use std::io;

/// How long after its first connection to a master a node releases its
/// startup code: time to register, report its status and restart the pods
/// of its local store.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// One mapping of `/proc/self/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    writable: bool,
    path: &'a str,
}

/// Parses a line of `/proc/PID/maps`: `start-end perms offset dev inode path`.
fn parse_mapping(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let path = fields.nth(3).map(str::trim_start).unwrap_or("");
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        path,
    })
}

/// The read-only mappings of the file `exe` in `maps` (the text of
/// `/proc/self/maps`), as (start, length).
fn code_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(parse_mapping)
        .filter(|m| !m.writable && m.path == exe && m.end > m.start)
        .map(|m| (m.start, m.end - m.start))
        .collect()
}

/// Asks the kernel to reclaim the pages of this process's executable that
/// are mapped read-only (code and constants): the ones still in use fault
/// back in when next run. Returns how many bytes of mappings it advised.
/// Where the kernel has no `MADV_PAGEOUT` (before Linux 5.4) or the process
/// cannot read its maps, it changes nothing and says why.
pub fn release_startup_code() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    // A replaced binary's name ends in " (deleted)" in both places.
    for (start, len) in code_mappings(&maps, &exe.to_string_lossy()) {
        page_out(start, len)?;
        advised += len;
    }
    Ok(advised)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_out(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: the range is a whole mapping of this process's executable
    // that is not writable, read from /proc/self/maps; a binary maps its
    // code and constants once and never unmaps them. MADV_PAGEOUT only
    // reclaims pages: a clean page of a file mapping is read back from the
    // same file at its next access, so no byte the program sees changes
    // (as when the kernel reclaims it under memory pressure).
    let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn page_out(_start: usize, _len: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "only Linux can reclaim a mapping's pages",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c1a00000-55d0c2400000 r--p 00000000 fe:01 1234                       /usr/local/bin/flotilla
55d0c2400000-55d0c4500000 r-xp 00a00000 fe:01 1234                       /usr/local/bin/flotilla
55d0c4500000-55d0c4620000 r--p 02b00000 fe:01 1234                       /usr/local/bin/flotilla
55d0c4620000-55d0c4630000 rw-p 02c20000 fe:01 1234                       /usr/local/bin/flotilla
55d0c4630000-55d0c4700000 rw-p 00000000 00:00 0                          [heap]
7f1e2a000000-7f1e2a028000 r--p 00000000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2b000000-7f1e2b001000 r-xp 00000000 fe:01 77                         /usr/local/bin/flotilla-other
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
7ffd1c1f0000-7ffd1c1f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn only_the_executables_read_only_mappings_are_released() {
        let got = code_mappings(MAPS, "/usr/local/bin/flotilla");
        assert_eq!(
            got,
            vec![
                (0x55d0c1a00000, 0xa00000),
                (0x55d0c2400000, 0x2100000),
                (0x55d0c4500000, 0x120000),
            ]
        );
    }

    #[test]
    fn a_replaced_binary_is_matched_by_its_deleted_name() {
        let maps = "00400000-00500000 r-xp 00000000 fe:01 5 /opt/flotilla (deleted)\n\
                    00500000-00600000 rw-p 00100000 fe:01 5 /opt/flotilla (deleted)\n";
        assert_eq!(
            code_mappings(maps, "/opt/flotilla (deleted)"),
            vec![(0x400000, 0x100000)]
        );
        assert!(code_mappings(maps, "/opt/flotilla").is_empty());
    }

    #[test]
    fn lines_that_are_not_mappings_are_skipped() {
        assert!(parse_mapping("").is_none());
        assert!(parse_mapping("garbage").is_none());
        assert!(parse_mapping("zz-10 r-xp 0 0 0 /x").is_none());
        let anon = parse_mapping("1000-2000 r--p 00000000 00:00 0").expect("anonymous");
        assert_eq!(anon.path, "");
    }

    #[test]
    fn this_process_can_release_its_code() {
        // Pages come back when next run: the test goes on running after it.
        match release_startup_code() {
            Ok(n) => assert!(n > 0, "no mapping of the test binary was found"),
            // A kernel before 5.4 (or an emulator) has no MADV_PAGEOUT.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        }
    }
}
