//! A wasi:http component that answers every request with who served it:
//! `hello from POD on NODE (request N)`. The pod and node names come from
//! `POD_NAME` and `NODE_NAME` (a manifest sets them with `fieldRef`), else
//! from argv[0]; `N` is `FLOTILLA_REQUEST`, the number the node gave this
//! request at its pod. A fresh instance serves each request, so the guest
//! itself remembers nothing between requests.
//!
//! Health endpoints that a test (or an operator) turns off and on from
//! outside the pod, through a directory mounted at `UNHEALTHY_DIR`:
//! `GET /healthz` answers `ok` (200), or `unhealthy` (503) while a file
//! named after the pod (or `all`) is there; `GET /livez` the same with a
//! file `POD.dead` (or `all.dead`).

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Hello);

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default();
        let (status, text) = match route {
            "/healthz" => health(""),
            "/livez" => health(".dead"),
            _ => (200, greeting()),
        };
        respond(out, status, &text);
    }
}

fn pod_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::args().next())
        .unwrap_or_else(|| "an unnamed pod".into())
}

fn greeting() -> String {
    let pod = pod_name();
    let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "an unnamed node".into());
    let n = std::env::var("FLOTILLA_REQUEST").unwrap_or_else(|_| "?".into());
    format!("hello from {pod} on {node} (request {n})\n")
}

/// 503 while `UNHEALTHY_DIR` holds `POD{suffix}` or `all{suffix}`.
fn health(suffix: &str) -> (u16, String) {
    let Ok(dir) = std::env::var("UNHEALTHY_DIR") else {
        return (200, "ok\n".into());
    };
    let dir = std::path::Path::new(&dir);
    let flagged = [pod_name(), "all".to_string()]
        .iter()
        .any(|name| dir.join(format!("{name}{suffix}")).exists());
    if flagged {
        (503, "unhealthy\n".into())
    } else {
        (200, "ok\n".into())
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
