//! A wasi:http component that misbehaves on request, for limits and
//! timeouts:
//!
//! - `/?ms=N` (or any path with `ms=N`): waits N milliseconds, then answers
//!   `waited N ms`;
//! - `/trap`: traps (a Rust panic, which aborts) before answering;
//! - `/alloc?mib=N[&ms=M]`: allocates and touches N MiB, holds it M ms
//!   (default 0), then answers `allocated N MiB` (a memory limit under N
//!   stops it first);
//! - anything else answers `ok` at once.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Slow);

struct Slow;

impl wasi::exports::http::incoming_handler::Guest for Slow {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let text = if route == "/trap" {
            panic!("asked to trap");
        } else if route == "/alloc" {
            let mib = param(query, "mib").unwrap_or(1);
            let mut blocks = Vec::new();
            for _ in 0..mib {
                blocks.push(vec![1u8; 1 << 20]);
            }
            if let Some(ms) = param(query, "ms") {
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            }
            format!("allocated {} MiB\n", blocks.len())
        } else if let Some(ms) = param(query, "ms") {
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            format!("waited {ms} ms\n")
        } else {
            "ok\n".to_string()
        };
        let resp = OutgoingResponse::new(Fields::new());
        let Ok(body) = resp.body() else { return };
        ResponseOutparam::set(out, Ok(resp));
        if let Ok(mut stream) = body.write() {
            let _ = stream.write_all(text.as_bytes());
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}
