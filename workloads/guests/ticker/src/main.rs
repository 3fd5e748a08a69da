//! Prints `tick N` once a second forever: a long-running workload for
//! restart, stop and log-streaming tests.

use std::io::Write;
use std::time::Duration;

fn main() {
    let mut stdout = std::io::stdout();
    let mut n: u64 = 0;
    loop {
        n += 1;
        // A failed write means the host closed stdout; nothing useful is left to do.
        if writeln!(stdout, "tick {n}").is_err() || stdout.flush().is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
