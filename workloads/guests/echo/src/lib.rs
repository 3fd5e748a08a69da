//! A wasi:http component that sends the request back: a first part of
//! `METHOD PATH` and each header as `name: value` (one per line, as they
//! came), an empty line, then the request body, streamed as it arrives
//! (never held whole, so bodies of any size pass through in bounded memory).

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Echo);

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".into(),
            Method::Post => "POST".into(),
            Method::Put => "PUT".into(),
            Method::Delete => "DELETE".into(),
            Method::Connect => "CONNECT".into(),
            Method::Options => "OPTIONS".into(),
            Method::Trace => "TRACE".into(),
            Method::Patch => "PATCH".into(),
            Method::Other(m) => m,
        };
        let path = request.path_with_query().unwrap_or_default();
        let mut head = format!("{method} {path}\n");
        for (name, value) in request.headers().entries() {
            head.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
        }
        head.push('\n');

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/octet-stream".to_vec()]);
        let resp = OutgoingResponse::new(headers);
        let Ok(out_body) = resp.body() else { return };
        ResponseOutparam::set(out, Ok(resp));
        let Ok(mut sink) = out_body.write() else {
            return;
        };
        if sink.write_all(head.as_bytes()).is_err() {
            return;
        }
        if let Ok(in_body) = request.consume() {
            if let Ok(source) = in_body.stream() {
                // Ends with the body (`closed`) or a broken one.
                while let Ok(chunk) = source.blocking_read(64 * 1024) {
                    if sink.write_all(&chunk).is_err() {
                        return;
                    }
                }
                drop(source);
            }
            let _ = IncomingBody::finish(in_body);
        }
        let _ = sink.flush();
        drop(sink);
        let _ = OutgoingBody::finish(out_body, None);
    }
}
