//! Node to node: a node's proxy forwards a request for a pod on another
//! node over QUIC, with mutual TLS under the cluster CA. Each request is
//! one bidirectional stream: the request's head as a frame ([`PeerHead`]),
//! then its body's bytes until the stream finishes; the answer the same
//! way ([`PeerAnswer`], then the body). Bodies stream both ways and are
//! never held whole. The server takes only peers whose certificate names a
//! node; a client verifies the server's certificate names the node it
//! meant to reach ([`flotilla_api::identity::node_server_name`]).

use super::{BoxError, ProxyBody};
use crate::proxy::served::Served;
use bytes::Bytes;
use flotilla_api::identity::{node_server_name, CertifiedKey, Identity};
use flotilla_api::net::{read_frame, write_frame, NetError};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The protocol name nodes' proxies speak to each other.
pub const ALPN: &[u8] = b"flotilla-peer/1";
/// How long connecting to another node may take before it counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most header bytes a forwarded request or answer carries (as a proxy
/// would refuse a larger header section).
const MAX_HEAD: usize = 64 * 1024;

/// Keep-alives every second, and a connection silent for this long is
/// lost: a node that died is noticed within it, and the requests in
/// flight to it fail (and are tried elsewhere when they may be).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes of one stream's body in flight between two nodes.
const STREAM_WINDOW: u32 = 1 << 20;

/// The transport settings of connections between nodes.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // What one request may have in flight each way, and all of a
    // connection's: bodies pass through in bounded memory (quinn's
    // defaults allow about 10 MB queued per connection).
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(4 * STREAM_WINDOW));
    t.send_window(u64::from(4 * STREAM_WINDOW));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // One stream per request: enough of them that a busy connection never
    // waits for the peer to hand out more.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    Arc::new(t)
}

/// Requests in flight on one connection between two nodes, at most.
const MAX_STREAMS: u32 = 1024;

/// A request as forwarded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerHead {
    /// `namespace/name` and uid of the pod that is to serve it.
    pub pod: String,
    pub uid: String,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address, for the pod's `x-forwarded-for`.
    pub client: Option<IpAddr>,
    /// A TCP connection to this port of a command pod rather than an HTTP
    /// request: after the answer, the stream carries its bytes both ways.
    pub tcp_port: Option<u16>,
    /// The request has no body: the stream ends after the head, and the
    /// pod gets a body that has ended already (as a local request's).
    pub no_body: bool,
}

/// An answer as forwarded back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerAnswer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
}

fn head_bytes(headers: &[(String, Vec<u8>)]) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn to_pairs(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn from_pairs(pairs: Vec<(String, Vec<u8>)>) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("bad header name {k:?}"))?;
        let value =
            http::HeaderValue::from_bytes(&v).map_err(|_| format!("bad value of header {k}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A QUIC receive stream as a request or response body.
pub struct RecvBody {
    recv: quinn::RecvStream,
    done: bool,
    /// Read into, then copied out at the size read: a frame that keeps a
    /// whole buffer for a packet's worth of bytes would multiply what a
    /// slow client makes the proxy hold. Allocated at the first read.
    scratch: Vec<u8>,
}

/// Bytes read from a stream at once into a body's frame, at most.
const SCRATCH: usize = 64 * 1024;

impl RecvBody {
    pub fn new(recv: quinn::RecvStream) -> RecvBody {
        RecvBody {
            recv,
            done: false,
            scratch: Vec::new(),
        }
    }

    /// A body that has ended: nothing is read from `recv`.
    fn ended(recv: quinn::RecvStream) -> RecvBody {
        RecvBody {
            done: true,
            ..RecvBody::new(recv)
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        if this.scratch.is_empty() {
            this.scratch = vec![0u8; SCRATCH];
        }
        let mut read = tokio::io::ReadBuf::new(&mut this.scratch);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut this.recv), cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Ok(())) => {
                if read.filled().is_empty() {
                    this.done = true;
                    return Poll::Ready(None);
                }
                let data = Bytes::copy_from_slice(read.filled());
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Writes `first` (a head, or nothing), then `body` as it comes, then
/// finishes the stream; a body that breaks resets it, so the other side
/// sees an error, not an end. Whatever of the body is ready goes out in one
/// write with what is before it: a small message crosses in one packet, its
/// end included, rather than one for the head, one for the body and one for
/// the end.
async fn pump<B>(first: Vec<u8>, mut body: B, mut send: quinn::SendStream)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Send,
{
    let mut ready: Vec<Bytes> = Vec::new();
    let mut held = first.len();
    if !first.is_empty() {
        ready.push(Bytes::from(first));
    }
    loop {
        // Gather what the body has ready, without waiting.
        let ended = loop {
            if held >= SCRATCH {
                break false;
            }
            let next = std::future::poll_fn(|cx| {
                Poll::Ready(http_body::Body::poll_frame(Pin::new(&mut body), cx))
            })
            .await;
            match next {
                Poll::Ready(None) => break true,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                        held += data.len();
                        ready.push(data);
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    let _ = send.reset(1u32.into());
                    return;
                }
                Poll::Pending => break false,
            }
        };
        if send.write_all_chunks(&mut ready).await.is_err() {
            return;
        }
        ready.clear();
        held = 0;
        if ended {
            let _ = send.finish();
            return;
        }
        // Then wait for more.
        match body.frame().await {
            None => {
                let _ = send.finish();
                return;
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                    held = data.len();
                    ready.push(data);
                }
            }
            Some(Err(_)) => {
                let _ = send.reset(1u32.into());
                return;
            }
        }
    }
}

/// Serves other nodes' forwarded requests on `endpoint` from `served`
/// until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, served: Served) {
    while let Some(incoming) = endpoint.accept().await {
        let served = served.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "a peer's connection failed");
                    return;
                }
            };
            let Some(peer) = peer_node(&conn) else {
                tracing::warn!(remote = %conn.remote_address(), "refused a peer whose certificate names no node");
                conn.close(1u32.into(), b"only nodes may forward requests");
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let served = served.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(send, recv, &served).await {
                        tracing::debug!(%peer, error = %e, "a forwarded request failed");
                    }
                });
            }
        });
    }
}

/// The node a peer's certificate names (TLS verified it against the CA).
fn peer_node(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    match Identity::from_cert_der(certs.first()?.as_ref()).ok()? {
        Identity::Node(n) => Some(n),
        _ => None,
    }
}

/// Serves one forwarded request.
async fn answer(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    served: &Served,
) -> Result<(), NetError> {
    let Some(head) = read_frame::<PeerHead>(&mut recv).await? else {
        return Ok(());
    };
    if let Some(port) = head.tcp_port {
        return answer_tcp(send, recv, served, &head, port).await;
    }
    let (response, here) = match request_of(&head, recv) {
        Err(message) => (super::plain(400, &message), true),
        Ok(request) => match served.get(&head.pod, &head.uid) {
            Some(pod) => (
                pod.handle(request.map(|b| b.map_err(super::wasi_error)))
                    .await
                    .map(super::boxed),
                true,
            ),
            None => (
                super::plain(
                    503,
                    &format!(
                        "pod {} is not served on node it was sent to (it moved or stopped); try again",
                        head.pod
                    ),
                ),
                false,
            ),
        },
    };
    let (parts, body) = response.into_parts();
    let mut answer = PeerAnswer {
        status: parts.status.as_u16(),
        headers: to_pairs(&parts.headers),
    };
    if !here {
        answer
            .headers
            .push((super::NOT_HERE.to_string(), b"1".to_vec()));
    }
    let head = flotilla_api::protocol::encode_frame(&answer)?;
    pump(head, body, send).await;
    Ok(())
}

/// Serves one forwarded TCP connection: to the pod's port on this node, if
/// the pod runs here and may listen there (nothing else of the node is
/// reachable this way).
async fn answer_tcp(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    served: &Served,
    head: &PeerHead,
    port: u16,
) -> Result<(), NetError> {
    let refuse = |status: u16| PeerAnswer {
        status,
        headers: vec![(super::NOT_HERE.to_string(), b"1".to_vec())],
    };
    if !served.tcp_port(&head.pod, &head.uid, port) {
        return write_frame(&mut send, &refuse(503)).await;
    }
    let local = match tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
        Ok(s) => s,
        Err(_) => return write_frame(&mut send, &refuse(502)).await,
    };
    write_frame(
        &mut send,
        &PeerAnswer {
            status: 200,
            headers: Vec::new(),
        },
    )
    .await?;
    splice(local, send, recv).await;
    Ok(())
}

/// Carries bytes between a TCP connection and a QUIC stream, both ways,
/// until both ends have finished.
pub async fn splice(
    tcp: tokio::net::TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (mut from_tcp, mut to_tcp) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_tcp, &mut send).await;
        let _ = send.finish();
    };
    let down = async {
        let _ = tokio::io::copy(&mut recv, &mut to_tcp).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_tcp).await;
    };
    tokio::join!(up, down);
}

/// The request `head` describes, its body read from `recv`.
fn request_of(head: &PeerHead, recv: quinn::RecvStream) -> Result<http::Request<RecvBody>, String> {
    if head_bytes(&head.headers) > MAX_HEAD {
        return Err("the request's headers are too large".into());
    }
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str())
        .body(if head.no_body {
            RecvBody::ended(recv)
        } else {
            RecvBody::new(recv)
        })
        .map_err(|e| format!("bad forwarded request: {e}"))?;
    *request.headers_mut() = from_pairs(head.headers.clone())?;
    Ok(request)
}

/// Why forwarding failed.
#[derive(Debug)]
pub enum ForwardError<B> {
    /// Nothing reached the peer: the request is handed back, to be tried
    /// elsewhere.
    Unreached(Box<http::Request<B>>, String),
    /// The request was sent but no answer came.
    Lost(String),
}

/// Connections to other nodes' proxies, one per node, made when first
/// needed and made again when lost.
pub struct Peers {
    endpoint: quinn::Endpoint,
    tls: Mutex<Option<quinn::ClientConfig>>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    pub fn new(endpoint: quinn::Endpoint) -> Peers {
        Peers {
            endpoint,
            tls: Mutex::new(None),
            conns: Mutex::default(),
        }
    }

    /// The node's credentials, for the connections made from now on.
    pub fn set_credentials(&self, ck: &CertifiedKey, ca_pem: &str) -> Result<(), String> {
        let client =
            flotilla_api::tls::client_config(ca_pem, Some(ck), ALPN).map_err(|e| e.to_string())?;
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport());
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
        Ok(())
    }

    /// A connection to `node`'s proxy at `addr`.
    async fn connection(&self, node: &str, addr: &str) -> Result<quinn::Connection, String> {
        let key = format!("{node}@{addr}");
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        let tls = self
            .tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("this node has no credentials yet")?;
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| format!("node {node} gave no usable proxy address ({addr:?})"))?;
        let connecting = self
            .endpoint
            .connect_with(tls, sock, &node_server_name(node))
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no answer from node {node} at {addr}"))?
            .map_err(|e| format!("cannot reach node {node} at {addr}: {e}"))?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, conn.clone());
        Ok(conn)
    }

    /// Forwards `request` to `pod` (uid `uid`) on `node`, whose proxy is
    /// at `addr`.
    pub async fn forward<B>(
        &self,
        node: &str,
        addr: &str,
        pod: &str,
        uid: &str,
        request: http::Request<B>,
        client: Option<IpAddr>,
    ) -> Result<http::Response<ProxyBody>, ForwardError<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Send,
    {
        let opened = match self.connection(node, addr).await {
            Ok(conn) => conn.open_bi().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let (mut send, mut recv) = match opened {
            Ok(s) => s,
            Err(e) => return Err(ForwardError::Unreached(Box::new(request), e)),
        };
        let head = PeerHead {
            pod: pod.to_string(),
            uid: uid.to_string(),
            method: request.method().as_str().to_string(),
            uri: request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers: to_pairs(request.headers()),
            client,
            tcp_port: None,
            no_body: request.body().is_end_stream(),
        };
        if let Err(e) = write_frame(&mut send, &head).await {
            return Err(ForwardError::Unreached(Box::new(request), e.to_string()));
        }
        if head.no_body {
            let _ = send.finish();
        } else {
            tokio::spawn(pump(Vec::new(), request.into_body(), send));
        }
        let answer = match read_frame::<PeerAnswer>(&mut recv).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(ForwardError::Lost(format!(
                    "node {node} closed the request"
                )))
            }
            Err(e) => return Err(ForwardError::Lost(format!("node {node}: {e}"))),
        };
        if head_bytes(&answer.headers) > MAX_HEAD {
            return Err(ForwardError::Lost(format!(
                "node {node} answered with too large a head"
            )));
        }
        let headers = from_pairs(answer.headers).map_err(ForwardError::Lost)?;
        let mut response = http::Response::new(RecvBody::new(recv).boxed_unsync());
        *response.status_mut() = http::StatusCode::from_u16(answer.status).map_err(|_| {
            ForwardError::Lost(format!("node {node} gave status {}", answer.status))
        })?;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Opens a TCP connection to `port` of command pod `pod` (uid `uid`) on
    /// `node`, whose proxy is at `addr`: the stream to splice the client's
    /// connection with, or why not (then nothing reached the pod).
    pub async fn open_tcp(
        &self,
        node: &str,
        addr: &str,
        pod: &str,
        uid: &str,
        port: u16,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let conn = self.connection(node, addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let head = PeerHead {
            pod: pod.to_string(),
            uid: uid.to_string(),
            method: String::new(),
            uri: String::new(),
            headers: Vec::new(),
            client: None,
            tcp_port: Some(port),
            no_body: false,
        };
        write_frame(&mut send, &head)
            .await
            .map_err(|e| e.to_string())?;
        match read_frame::<PeerAnswer>(&mut recv).await {
            Ok(Some(a)) if a.status == 200 => Ok((send, recv)),
            Ok(Some(a)) => Err(format!(
                "node {node} cannot reach port {port} of pod {pod} (status {})",
                a.status
            )),
            Ok(None) => Err(format!("node {node} closed the connection")),
            Err(e) => Err(format!("node {node}: {e}")),
        }
    }
}
