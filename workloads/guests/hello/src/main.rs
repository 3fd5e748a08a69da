//! Prints its arguments and environment, then a greeting: the smallest
//! workload that shows argv, env and stdout reach the guest and come back.

fn main() {
    for (i, arg) in std::env::args().enumerate() {
        println!("arg[{i}]={arg}");
    }
    // Sorted so the output is deterministic whatever order the host passes.
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        println!("{key}={value}");
    }
    println!("hello from flotilla");
}
