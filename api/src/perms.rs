//! Owner-only data on disk: creating private directories and files, and
//! finding what other users of the machine can reach in a data directory.
//!
//! The master's and the node's data directories hold pod env values, keys and
//! compiled code that the node will run, so everything Flotilla creates there
//! is mode 0600 (files) or 0700 (directories). Modes of what already exists
//! are not changed behind the operator's back: [`exposed`] lists them, and
//! each [`Exposed`] says the `chmod` that fixes it.

use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every file Flotilla writes: read and write for its owner only.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory Flotilla creates.
pub const DIR_MODE: u32 = 0o700;
/// The permission bits of a file's group and of other users.
const GROUP_OTHER: u32 = 0o077;

/// Creates `dir` and any missing parents with [`DIR_MODE`]; directories that
/// exist already keep their mode ([`exposed`] reports it).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates an empty file at `path` with [`FILE_MODE`] unless one exists, so
/// that a library which opens it next with the default mode (redb) finds a
/// private file. An existing file is left as it is.
pub fn create_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
}

/// Sets [`FILE_MODE`] on a file that something else just created with the
/// default mode.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// A file or directory whose group or other users have some access to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    pub path: PathBuf,
    pub is_dir: bool,
    /// The permission bits found (e.g. `0o644`).
    pub mode: u32,
}

impl Exposed {
    /// The command that makes it private, e.g. `chmod 600 /var/lib/flotilla/state.redb`.
    pub fn chmod(&self) -> String {
        let mode = if self.is_dir { DIR_MODE } else { FILE_MODE };
        format!(
            "chmod {mode:o} {}",
            shell_quote(&self.path.to_string_lossy())
        )
    }
}

impl fmt::Display for Exposed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has mode {:03o}: other users of this machine can reach what Flotilla keeps there \
             (keys, pod env values); run `{}`",
            self.path.display(),
            self.mode,
            self.chmod()
        )
    }
}

/// Every directory and file at or under `dir` whose group or other users
/// have any permission bit, directories before what they hold. Symbolic
/// links are not followed (their own mode means nothing); what cannot be
/// read is skipped.
pub fn exposed(dir: &Path) -> Vec<Exposed> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & GROUP_OTHER != 0 {
            found.push(Exposed {
                path: path.clone(),
                is_dir: meta.is_dir(),
                mode,
            });
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                let mut children: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                // Reversed, so that popping visits them in name order.
                children.sort_unstable_by(|a, b| b.cmp(a));
                pending.extend(children);
            }
        }
    }
    found
}

/// `s` as one shell word: as it is when that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@%=".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system's temporary directory, removed on drop
    /// (the api crate keeps its dependencies to what it ships with).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("flotilla-perms-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).expect("temp dir");
            std::fs::set_permissions(&path, Permissions::from_mode(0o700)).expect("chmod");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn created_directories_and_files_are_private() {
        let tmp = TempDir::new("create");
        let deep = tmp.0.join("a/b/c");
        create_dir(&deep).expect("create");
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode_of(&tmp.0.join(d)), 0o700, "{d}");
        }
        let file = deep.join("state.redb");
        create_file(&file).expect("create file");
        assert_eq!(mode_of(&file), 0o600);
        // What exists keeps its mode and its contents.
        std::fs::write(&file, b"data").expect("write");
        chmod(&file, 0o640);
        create_file(&file).expect("again");
        assert_eq!(mode_of(&file), 0o640);
        assert_eq!(std::fs::read(&file).expect("read"), b"data");
        restrict_file(&file).expect("restrict");
        assert_eq!(mode_of(&file), 0o600);
        assert!(exposed(&tmp.0).is_empty());
    }

    #[test]
    fn exposed_names_each_open_path_and_the_chmod_that_fixes_it() {
        let tmp = TempDir::new("check");
        let root = tmp.0.join("data dir");
        std::fs::create_dir_all(root.join("compiled")).expect("dirs");
        let cases: &[(&str, u32, Option<&str>)] = &[
            ("", 0o755, Some("chmod 700 '{root}'")),
            ("compiled", 0o700, None),
            ("state.redb", 0o644, Some("chmod 600 '{root}/state.redb'")),
            ("raft-log.wal", 0o600, None),
            ("node-id", 0o640, Some("chmod 600 '{root}/node-id'")),
            (
                "compiled/x.cwasm",
                0o604,
                Some("chmod 600 '{root}/compiled/x.cwasm'"),
            ),
            ("it's", 0o660, Some(r"chmod 600 '{root}/it'\''s'")),
        ];
        for (name, mode, _) in cases {
            let path = root.join(name);
            if !name.is_empty() && !path.exists() {
                std::fs::write(&path, b"").expect("file");
            }
            chmod(&path, *mode);
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).expect("symlink");
        let root_text = root.to_string_lossy();
        let mut want: Vec<String> = cases
            .iter()
            .filter_map(|(_, _, cmd)| cmd.map(|c| c.replace("{root}", &root_text)))
            .collect();
        want.sort();
        let found = exposed(&root);
        let mut got: Vec<String> = found.iter().map(Exposed::chmod).collect();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(found[0].path, root, "the directory comes first");
        let state = found
            .iter()
            .find(|e| e.path.ends_with("state.redb"))
            .expect("state.redb");
        let line = state.to_string();
        assert!(line.contains("has mode 644"), "{line}");
        assert!(
            line.ends_with(&format!("run `chmod 600 '{root_text}/state.redb'`")),
            "{line}"
        );
        assert_eq!(
            shell_quote("/var/lib/flotilla/state.redb"),
            "/var/lib/flotilla/state.redb"
        );
    }
}
