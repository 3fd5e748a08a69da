//! The node's own memory: handing back the pages of its start-up code.
//!
//! Starting a node runs much code it will not run again: parsing its
//! arguments, building TLS configurations, joining, setting up wasmtime. The
//! kernel maps a binary's code a page at a time as it runs, and around each
//! page it faults in it maps the neighbours it has cached (64 KiB at once),
//! so an idle node of the full binary kept about 20 MiB of its file
//! resident, of which a few MiB are used while idle. Those pages are clean
//! and the kernel would reclaim them under pressure, but they count in the
//! RSS that `top`, systemd and a user sizing a device read.
//!
//! So once the node has joined and settled, it asks the kernel to reclaim
//! them now ([`release_startup_code`]): the code it still runs comes back at
//! its next use, and what stays is its idle working set (docs/edge.md, "A
//! node's memory"). Only the binary's read-only mappings that are still
//! pages of the file are advised: not its data, nor the relocated constants
//! (RELRO) that the loader wrote and that are anonymous memory since.
//!
//! The kernel reclaims file pages only for a process that owns the file or
//! may write it (root, for a root-owned binary), and never pages another
//! process maps too: the result says how much was resident before and after.

use std::io;

/// How long after its first connection to a master a node releases its
/// start-up code: time to register, report its status and restart the pods
/// of its local store.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// One mapping of `/proc/self/smaps`, with the figures used here.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    /// Resident, in KiB.
    rss_kib: u64,
    /// Of it, anonymous (copied on write), in KiB.
    anonymous_kib: u64,
}

/// Parses the header line of a mapping: `start-end perms offset dev inode
/// path` (the path may have spaces, or be absent).
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let path = fields.nth(3).map(str::trim_start).unwrap_or("");
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        path: path.to_string(),
        rss_kib: 0,
        anonymous_kib: 0,
    })
}

/// The mappings of `/proc/PID/smaps`: each header line, then `Key: N kB`
/// lines; lines that are neither are skipped.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            maps.push(m);
            continue;
        }
        let (Some((key, value)), Some(m)) = (line.split_once(':'), maps.last_mut()) else {
            continue;
        };
        let kib = value
            .trim()
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        match key {
            "Rss" => m.rss_kib = kib,
            "Anonymous" => m.anonymous_kib = kib,
            _ => {}
        }
    }
    maps
}

/// The mappings of the file `exe` that only hold its pages: read-only, none
/// of them copied on write.
fn code_mappings<'a>(maps: &'a [Mapping], exe: &'a str) -> impl Iterator<Item = &'a Mapping> {
    maps.iter()
        .filter(move |m| !m.writable && m.path == exe && m.anonymous_kib == 0 && m.end > m.start)
}

/// What the release did: the resident KiB of the code mappings before and
/// after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub before_kib: u64,
    pub after_kib: u64,
}

/// Asks the kernel to reclaim the pages of this process's executable that
/// are mapped read-only and are still the file's (code and constants): the
/// ones still in use fault back in when next run. Where the kernel has no
/// `MADV_PAGEOUT` (before Linux 5.4) or the process cannot read its maps,
/// it changes nothing and says why.
pub fn release_startup_code() -> io::Result<Released> {
    // A replaced binary's name ends in " (deleted)" in both places.
    let exe = std::fs::read_link("/proc/self/exe")?
        .to_string_lossy()
        .into_owned();
    let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?);
    let mut before_kib = 0;
    let mut advised = Vec::new();
    for m in code_mappings(&maps, &exe) {
        page_out(m.start, m.end - m.start)?;
        before_kib += m.rss_kib;
        advised.push(m.start);
    }
    let after = parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?);
    let after_kib = after
        .iter()
        .filter(|m| advised.contains(&m.start))
        .map(|m| m.rss_kib)
        .sum();
    Ok(Released {
        before_kib,
        after_kib,
    })
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_out(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: the range is a whole mapping of this process's executable
    // that is not writable and holds no page copied on write, read from
    // /proc/self/smaps; a binary maps its code and constants once and never
    // unmaps them. MADV_PAGEOUT only reclaims pages: a clean page of a file
    // mapping is read back from the same file at its next access, so no
    // byte the program sees changes (as when the kernel reclaims it under
    // memory pressure).
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

    const SMAPS: &str = "\
55d0c1a00000-55d0c2400000 r--p 00000000 fe:01 1234                       /usr/local/bin/flotilla
Size:              10240 kB
Rss:                3000 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c2400000-55d0c4500000 r-xp 00a00000 fe:01 1234                       /usr/local/bin/flotilla
Size:              33792 kB
Rss:               14800 kB
Anonymous:             0 kB
55d0c4500000-55d0c4620000 r--p 02b00000 fe:01 1234                       /usr/local/bin/flotilla
Rss:                1152 kB
Anonymous:          1152 kB
55d0c4620000-55d0c4630000 rw-p 02c20000 fe:01 1234                       /usr/local/bin/flotilla
Rss:                  64 kB
Anonymous:            60 kB
55d0c4630000-55d0c4700000 rw-p 00000000 00:00 0                          [heap]
Rss:                 800 kB
7f1e2a000000-7f1e2a028000 r--p 00000000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 160 kB
7f1e2b000000-7f1e2b001000 r-xp 00000000 fe:01 77                         /usr/local/bin/flotilla-other
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";

    fn starts(maps: &[Mapping], exe: &str) -> Vec<(usize, u64)> {
        code_mappings(maps, exe)
            .map(|m| (m.start, m.rss_kib))
            .collect()
    }

    #[test]
    fn only_the_executables_pages_of_its_file_are_released() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 8);
        // Not the relocated constants (anonymous since the loader wrote
        // them), not the data, not another file.
        assert_eq!(
            starts(&maps, "/usr/local/bin/flotilla"),
            vec![(0x55d0c1a00000, 3000), (0x55d0c2400000, 14800)]
        );
    }

    #[test]
    fn a_replaced_binary_is_matched_by_its_deleted_name() {
        let smaps = "00400000-00500000 r-xp 00000000 fe:01 5 /opt/my flotilla (deleted)\n\
                     Rss: 12 kB\n\
                     00500000-00600000 rw-p 00100000 fe:01 5 /opt/my flotilla (deleted)\n";
        let maps = parse_smaps(smaps);
        assert_eq!(
            starts(&maps, "/opt/my flotilla (deleted)"),
            vec![(0x400000, 12)]
        );
        assert!(starts(&maps, "/opt/my flotilla").is_empty());
    }

    #[test]
    fn lines_that_are_not_mappings_are_skipped() {
        assert!(parse_header("").is_none());
        assert!(parse_header("garbage").is_none());
        assert!(parse_header("zz-10 r-xp 0 0 0 /x").is_none());
        assert!(parse_header("10-20 nonsense 0 0 0 /x").is_none());
        let anon = parse_header("1000-2000 r--p 00000000 00:00 0").expect("anonymous");
        assert_eq!(anon.path, "");
        // Figures before any mapping, or malformed, are ignored.
        let maps = parse_smaps("Rss: 5 kB\n1000-2000 r-xp 0 0 0 /x\nRss: lots\n");
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].rss_kib, 0);
    }

    #[test]
    fn this_process_can_release_its_code() {
        // Pages come back when next run: the test goes on running after it.
        match release_startup_code() {
            Ok(r) => assert!(
                r.before_kib > 0,
                "no resident code of the test binary: {r:?}"
            ),
            // A kernel before 5.4 (or an emulator) has no MADV_PAGEOUT.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        }
    }
}
