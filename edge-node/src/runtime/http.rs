//! Serving http pods: a component that exports `wasi:http/incoming-handler`
//! is pre-instantiated once ([`HttpPod`]), and each request gets a fresh
//! store and instance, so one request's state, trap or memory never reaches
//! another's.
//!
//! What bounds a pod's requests (`spec.http`):
//! - **concurrency**: at most that many requests hold an instance at once;
//!   one more is answered `503` at once, never queued;
//! - **timeout**: a request's whole life, body included; one that has not
//!   answered by then gets `504`, one that has has its body cut;
//! - **memory**: each request's instance under `http.requestMemory` (the
//!   pod's limit by default), all of them together under the pod's limit
//!   (a shared [`Pool`]);
//! - **CPU**: each request's instance under the pod's CPU limit.
//!
//! A request that traps, or runs out of memory, gets `500` and a line in the
//! pod's log; the pod goes on serving. Outgoing requests
//! (`wasi:http/outgoing-handler`) go only where the pod's `spec.network`
//! lets it connect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::limits::{Limiter, Pool};
use super::{LogSink, LogStream, RunSpec};
use crate::network::{Allowance, Refusals, Use};

/// The body of a response from an http pod: streamed from the guest as it
/// writes it.
pub type ResponseBody = HyperOutgoingBody;

/// Store data of one request.
pub(super) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: Limiter,
    hooks: Outgoing,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Where a guest's outgoing requests may go: the pod's network allowance,
/// checked for every address the request's host resolves to.
struct Outgoing {
    network: Arc<Allowance>,
    refusals: Arc<Refusals>,
    pod: String,
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
                )>,
            > + Send,
    > {
        drop(fut);
        let (network, refusals, pod) = (
            self.network.clone(),
            self.refusals.clone(),
            self.pod.clone(),
        );
        Box::new(async move {
            let uri = request.uri();
            let host = uri
                .host()
                .ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| wasmtime_wasi_http::Error::DestinationNotFound)?
                .collect();
            // Every address the name gives must be allowed: the connection
            // below may use any of them.
            if let Some(refused) = addrs.iter().find(|a| !network.permits(**a, Use::Connect)) {
                refusals.record(&pod, *refused, Use::Connect);
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// What bounds an http pod's requests (from `spec.http` and the pod's
/// limits).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Requests served at once.
    pub concurrency: usize,
    /// A request's whole life.
    pub timeout: Duration,
    /// One request's memory (default: the pod's memory limit).
    pub request_memory: Option<u64>,
}

/// An http pod ready to serve: its component pre-instantiated, its limits
/// set. Cheap to share; [`HttpPod::handle`] serves one request.
pub struct HttpPod {
    pre: ProxyPre<HttpState>,
    spec: RunSpec,
    sink: Arc<dyn LogSink>,
    limits: HttpLimits,
    permits: Arc<Semaphore>,
    pool: Option<Arc<Pool>>,
    /// Requests taken so far (each request's number is the next).
    served: AtomicU64,
}

impl std::fmt::Debug for HttpPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPod")
            .field("pod", &self.spec.pod)
            .field("limits", &self.limits)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl HttpPod {
    pub(super) fn new(
        pre: ProxyPre<HttpState>,
        spec: RunSpec,
        sink: Arc<dyn LogSink>,
        limits: HttpLimits,
    ) -> HttpPod {
        let pool = spec.memory_limit.map(|l| Arc::new(Pool::new(l)));
        HttpPod {
            pre,
            permits: Arc::new(Semaphore::new(limits.concurrency)),
            sink,
            pool,
            limits,
            spec,
            served: AtomicU64::new(0),
        }
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.limits
            .concurrency
            .saturating_sub(self.permits.available_permits())
    }

    /// Requests this pod has taken (served, refused or failed).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Serves one request in a fresh instance. Never fails: what goes wrong
    /// (too many requests, a timeout, a trap) is an error response that
    /// says so.
    pub async fn handle<B>(&self, mut request: http::Request<B>) -> http::Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // wasi:http wants an authority; an HTTP/1.0 client may send none.
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return error_response(
                503,
                &format!(
                    "{} is serving {} requests, its limit (spec.http.concurrency); try again",
                    self.spec.pod, self.limits.concurrency
                ),
            );
        };
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let mut store = match self.store(number) {
            Ok(store) => store,
            Err(message) => return error_response(500, &message),
        };
        let meter = super::prepare_epochs(&mut store, self.spec.cpu_limit);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|req| {
                let out = store.data_mut().http().new_response_outparam(sender)?;
                Ok((req, out))
            });
        let (req, out) = match prepared {
            Ok(r) => r,
            Err(e) => return error_response(400, &format!("cannot pass the request on: {e:#}")),
        };

        let pre = self.pre.clone();
        let timeout = self.limits.timeout;
        // The instance runs in a task of its own: it may go on writing the
        // body after it has answered. It holds the permit to its end, and
        // the timeout bounds its whole life.
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = tokio::time::timeout(timeout, super::cpu::metered(meter, run)).await;
            let denial = store.data().limiter.denial();
            drop(store);
            drop(permit);
            (result, denial)
        });

        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                let message = format!("the handler answered with an error: {code:?}");
                self.log(number, &message);
                error_response(500, &message)
            }
            // The guest ended, trapped or timed out without answering.
            Err(_) => {
                let (status, message) = match task.await {
                    Ok((Err(_elapsed), _)) => (
                        504,
                        format!(
                            "no response within {} s (spec.http.timeoutSeconds)",
                            timeout.as_secs()
                        ),
                    ),
                    Ok((Ok(_), Some(d))) => (
                        500,
                        format!(
                            "the request went over its memory limit of {} \
                             (the handler asked for {}); raise spec.http.requestMemory \
                             or resources.limits.memory",
                            flotilla_api::quantity::format_bytes(d.limit),
                            flotilla_api::quantity::format_bytes(d.requested)
                        ),
                    ),
                    Ok((Ok(Err(e)), None)) if super::serving::is_exhausted(&e) => (
                        503,
                        "every instance slot of the node is serving a request \
                         (flotilla node --http-slots); try again"
                            .to_string(),
                    ),
                    Ok((Ok(Err(e)), None)) => (
                        500,
                        format!("the handler failed: {}", super::trap_message(&e)),
                    ),
                    Ok((Ok(Ok(())), None)) => {
                        (500, "the handler returned without a response".to_string())
                    }
                    Err(e) => (500, format!("the handler's task failed: {e}")),
                };
                self.log(number, &message);
                error_response(status, &message)
            }
        }
    }

    /// A fresh store for request `number`: the pod's arguments,
    /// environment (plus `FLOTILLA_REQUEST`), mounts and network, under
    /// its limits.
    fn store(&self, number: u64) -> Result<Store<HttpState>, String> {
        let mut wasi = super::wasi_builder(&self.spec, self.sink.clone())?;
        wasi.env("FLOTILLA_REQUEST", number.to_string());
        let own = self.limits.request_memory.or(self.spec.memory_limit);
        let state = HttpState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: Limiter::pooled(own, self.pool.clone()),
            hooks: Outgoing {
                network: self.spec.network.clone(),
                refusals: self.spec.refusals.clone(),
                pod: self.spec.pod.clone(),
            },
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        Ok(store)
    }

    /// Puts a failed request in the pod's log, where `flotilla logs` shows it.
    fn log(&self, number: u64, message: &str) {
        let line = format!("flotilla: request {number}: {message}\n");
        self.sink.write(LogStream::Stderr, line.as_bytes());
    }
}

/// A plain-text response the node makes itself.
pub fn error_response(status: u16, message: &str) -> http::Response<ResponseBody> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
