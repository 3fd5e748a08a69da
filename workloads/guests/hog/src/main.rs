//! Misbehaves on purpose so the node's limits can be tested.
//!
//! Usage: `hog memory` grows its heap 1 MiB at a time forever (printing the
//! total every 8 MiB) until the host's memory limit stops it; `hog spin`
//! burns CPU forever without ever calling the host.

use std::hint::black_box;

const MIB: usize = 1 << 20;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("memory") => memory(),
        Some("spin") => spin(),
        _ => {
            eprintln!("usage: hog memory|spin");
            std::process::exit(2);
        }
    }
}

fn memory() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Write into every block so the pages are really used, and hide
        // it from the optimizer so the allocation is not elided.
        let mut block = vec![0u8; MIB];
        block[0] = 1;
        block[MIB - 1] = 1;
        blocks.push(black_box(block));
        let total = blocks.len();
        if total.is_multiple_of(8) {
            println!("allocated {total} MiB");
        }
    }
}

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        // black_box makes each iteration observable, so the loop cannot be
        // removed or turned into a closed form.
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
