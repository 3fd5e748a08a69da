//! Opens a TCP listener on loopback, so that its component imports
//! `wasi:sockets`: a workload for placement by what a module imports, and
//! for a pod's network allowance (`spec.network`).
//!
//! Without arguments: prints `listening on ADDR`, or `no network: ERROR`
//! when the pod's allowance does not cover binding; exits 0 either way,
//! since both show the guest started with sockets linked. A node that
//! withholds sockets does not start it at all.
//!
//! With `connect HOST:PORT`: connects, sends `hello from PODNAME\n` and
//! prints `connected to ADDR` (exit 0), or prints `refused: ERROR` (exit 1)
//! when the allowance (or the peer) refuses.
//!
//! With `serve PORT`: a TCP server on 127.0.0.1:PORT (its allowance must
//! list the port under `listen`) that greets each connection with
//! `hello from PODNAME\n`, then sends back every line it gets, one
//! connection at a time, until stopped: a TCP pod behind a Service.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [me, verb, port] = args.as_slice() {
        if verb == "serve" {
            serve(me, port);
            return;
        }
    }
    if let [_, verb, addr] = args.as_slice() {
        if verb == "connect" {
            match TcpStream::connect(addr.as_str()) {
                Ok(mut s) => {
                    let me = args[0].clone();
                    let _ = writeln!(s, "hello from {me}");
                    println!("connected to {addr}");
                    return;
                }
                Err(e) => {
                    println!("refused: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => match listener.local_addr() {
            Ok(addr) => println!("listening on {addr}"),
            Err(e) => println!("listening, address unknown: {e}"),
        },
        Err(e) => println!("no network: {e}"),
    }
}

fn serve(me: &str, port: &str) {
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            println!("cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("serving on {port}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if writeln!(&conn, "hello from {me}").is_err() {
            continue;
        }
        // One stream for both ways (WASI sockets cannot be cloned).
        let mut reader = BufReader::new(&conn);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if (&conn).write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        }
    }
}
