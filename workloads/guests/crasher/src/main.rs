//! Sleeps, complains on stderr and exits with code 1: a workload for
//! restart-policy and back-off tests. `crasher panic` panics instead, so
//! the guest traps with a Rust backtrace.
//!
//! Usage: `crasher [SECONDS | panic]` (default 1; fractions such as `0.1` work).

use std::time::Duration;

fn main() {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("panic") {
        give_up();
    }
    let seconds = arg
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    eprintln!("crashing now");
    std::process::exit(1);
}

/// Panics; kept out of line so the backtrace names it.
#[inline(never)]
fn give_up() {
    panic!("crasher gives up");
}
