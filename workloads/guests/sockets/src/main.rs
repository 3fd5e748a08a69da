//! Opens a TCP listener on loopback, so that its component imports
//! `wasi:sockets`: a workload for placement by what a module imports.
//!
//! Prints `listening on ADDR`, or `no network: ERROR` when the node links
//! sockets but gives the pod no network (pods get none yet); exits 0 either
//! way, since both show the guest started with sockets linked. A node that
//! withholds sockets does not start it at all.

use std::net::TcpListener;

fn main() {
    match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => match listener.local_addr() {
            Ok(addr) => println!("listening on {addr}"),
            Err(e) => println!("listening, address unknown: {e}"),
        },
        Err(e) => println!("no network: {e}"),
    }
}
