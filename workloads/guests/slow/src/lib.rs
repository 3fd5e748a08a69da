//! A wasi:http component that misbehaves on request, for limits and
//! timeouts:
//!
//! - `/?ms=N` (or any path with `ms=N`): waits N milliseconds, then answers
//!   `waited N ms`;
//! - `/trap`: traps (a Rust panic, which aborts) before answering;
//! - `/alloc?mib=N[&ms=M]`: allocates and touches N MiB, holds it M ms
//!   (default 0), then answers `allocated N MiB` (a memory limit under N
//!   stops it first);
//! - `/fetch?port=N`: asks `GET http://127.0.0.1:N/` through
//!   `wasi:http/outgoing-handler` and answers with what came back
//!   (`fetched STATUS: BODY`), or `fetch failed: ERROR` with 502 (a pod
//!   whose `spec.network` does not allow it is refused);
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
        let mut status = 200;
        let text = if route == "/fetch" {
            match fetch(param(query, "port").unwrap_or(80)) {
                Ok(t) => t,
                Err(e) => {
                    status = 502;
                    format!("fetch failed: {e}\n")
                }
            }
        } else if route == "/trap" {
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
        let _ = resp.set_status_code(status);
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

/// `GET http://127.0.0.1:PORT/`: its status and body, or the error.
fn fetch(port: u64) -> Result<String, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(&format!("127.0.0.1:{port}")))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some("/"))
        .map_err(|()| "bad path")?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        _ => return Err("no response".into()),
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    Ok(format!(
        "fetched {status}: {}",
        String::from_utf8_lossy(&bytes)
    ))
}
