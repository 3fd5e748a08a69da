//! A wasi:http component that answers every request with who served it:
//! `hello from POD on NODE (request N)`. The pod and node names come from
//! `POD_NAME` and `NODE_NAME` (a manifest sets them with `fieldRef`), else
//! from argv[0]; `N` is `FLOTILLA_REQUEST`, the number the node gave this
//! request at its pod. A fresh instance serves each request, so the guest
//! itself remembers nothing between requests.
//!
//! `GET /healthz` answers `ok` (200), or `unhealthy` (503) while the file
//! named by `UNHEALTHY_FILE` exists: a health endpoint that a test (or an
//! operator) can turn off and on from outside the pod.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Hello);

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, text) = if path == "/healthz" || path.starts_with("/healthz?") {
            health()
        } else {
            (200, greeting())
        };
        respond(out, status, &text);
    }
}

fn greeting() -> String {
    let pod = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::args().next())
        .unwrap_or_else(|| "an unnamed pod".into());
    let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "an unnamed node".into());
    let n = std::env::var("FLOTILLA_REQUEST").unwrap_or_else(|_| "?".into());
    format!("hello from {pod} on {node} (request {n})\n")
}

fn health() -> (u16, String) {
    match std::env::var("UNHEALTHY_FILE") {
        Ok(file) if std::path::Path::new(&file).exists() => (503, "unhealthy\n".into()),
        _ => (200, "ok\n".into()),
    }
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let Ok(body) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
