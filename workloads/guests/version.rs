//! The `version` sample, shared by `version-v1` and `version-v2` (two
//! builds that differ only in the version they print, so that a rollout
//! from one to the other can be shown and tested).
//!
//! Prints `version <v>` once, then serves nothing and runs until stopped.
//! Arguments change that: `exit CODE` ends at once with CODE (a bad
//! release: `exit 1` crash-loops), `exit-after SECONDS CODE` after a while.

use std::io::Write;
use std::time::Duration;

pub fn run(version: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "version {version}");
    let _ = stdout.flush();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = |s: &str| s.parse::<i32>().unwrap_or(2);
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["exit", c] => std::process::exit(code(c)),
        ["exit-after", secs, c] => {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(1)));
            std::process::exit(code(c));
        }
        [] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "usage: [exit CODE | exit-after SECONDS CODE]; got {args:?}"
            );
            std::process::exit(2);
        }
    }
}
