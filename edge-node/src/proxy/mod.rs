//! The node proxy: every node listens on every Service's port
//! (NodePort-style) and sends each request to one of the Service's ready
//! pods — in-process when the pod runs here, over QUIC to its node when it
//! runs elsewhere ([`peer`]).
//!
//! - [`table`]: the routing table, from the Services and Endpoints the node
//!   watches ([`Proxy::follow`]). It is replaced only by a complete list
//!   from a master, so with no master the proxy serves from its last view.
//! - [`balance`]: which pod takes a request (power of two choices on
//!   requests in flight, ClientIP affinity) and which are left out for a
//!   while because they fail (outlier ejection).
//! - [`served`]: the http pods this node serves.
//!
//! A request that reached no pod (its node unreachable, the pod gone from
//! there) is tried once more on another pod: nothing of it was delivered.
//! One whose connection broke after it was sent is tried again only if it
//! is idempotent and has no body.

pub mod balance;
pub mod peer;
pub mod served;
pub mod table;
pub mod tls;

use balance::{Candidate, Failure, Outliers};
use bytes::Bytes;
use flotilla_api::identity::CertifiedKey;
use flotilla_api::net::{read_frame, Client, NetError};
use flotilla_api::objects::network::Protocol;
use flotilla_api::objects::service::{Endpoints, Service, SessionAffinity};
use flotilla_api::protocol::{EventType, ListOptions, Request, Response, WatchOptions};
use flotilla_api::{Kind, Object};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use served::Served;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use table::{Route, Table, Target};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors of bodies passing through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body passing through the proxy, streamed.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The header by which a node says the pod a request was forwarded to is
/// not served there (it moved or stopped since the sender's view).
pub const NOT_HERE: &str = "x-flotilla-not-here";
/// The port other nodes' proxies reach this one on, over QUIC, by default.
pub const DEFAULT_PEER_PORT: u16 = 7446;
/// How long after a failed watch the proxy lists again.
const RESYNC: Duration = Duration::from_secs(1);

/// A plain-text response the proxy makes itself.
pub fn plain(status: u16, message: &str) -> http::Response<ProxyBody> {
    crate::runtime::http::error_response(status, message).map(boxed)
}

/// Any streamed body as a [`ProxyBody`].
pub fn boxed<E>(body: UnsyncBoxBody<Bytes, E>) -> ProxyBody
where
    E: std::error::Error + Send + Sync + 'static,
{
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// Where and how the proxy listens.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The address Service ports (and the host-routing port) are bound on.
    pub address: IpAddr,
    /// The UDP port other nodes' proxies reach this one on (0: any).
    pub peer_port: u16,
    /// The address other nodes reach this one at; when left out, the
    /// listening address, or if that is every address, the one this
    /// machine uses to reach its master.
    pub advertise: Option<IpAddr>,
    /// The Service ports this node listens on; others are not served here.
    pub ports: RangeInclusive<u16>,
    /// The shared port that routes by Host header; none: no host routing.
    pub host_port: Option<u16>,
    /// The shared port that routes by Host header over TLS, for Services
    /// with `spec.tls`; none: no TLS.
    pub tls_port: Option<u16>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            address: IpAddr::from([0, 0, 0, 0]),
            peer_port: DEFAULT_PEER_PORT,
            advertise: None,
            ports: 1024..=65535,
            host_port: None,
            tls_port: None,
        }
    }
}

/// The node's proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.inner.node)
            .field("advertised", &self.inner.advertised)
            .finish_non_exhaustive()
    }
}

struct Inner {
    node: String,
    config: ProxyConfig,
    served: Served,
    peers: peer::Peers,
    peer_endpoint: quinn::Endpoint,
    advertised: String,
    ca_pem: String,
    table: RwLock<Arc<Table>>,
    outliers: Mutex<Outliers>,
    /// Requests in flight from this node to each pod, by pod uid.
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// The listener task of each port served.
    listeners: Mutex<BTreeMap<u16, Listener>>,
    /// The certificates the TLS host port serves.
    certificates: tls::Certificates,
}

struct Listener {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for l in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            l.stop.cancel();
        }
        self.peer_endpoint.close(0u32.into(), b"node stopped");
    }
}

impl Proxy {
    /// Starts the proxy of node `node`: binds the peer port and serves other
    /// nodes' requests for `served` pods there, with the node's credentials
    /// `ck` under the cluster CA `ca_pem`. `masters` help find the address
    /// to advertise. Service ports open as the table names them
    /// ([`Proxy::set_table`]).
    pub fn start(
        node: &str,
        config: ProxyConfig,
        served: Served,
        ck: &CertifiedKey,
        ca_pem: &str,
        masters: &[String],
    ) -> Result<Proxy, String> {
        let server = server_config(ck, ca_pem)?;
        let bind = SocketAddr::new(config.address, config.peer_port);
        let endpoint = quinn::Endpoint::server(server, bind).map_err(|e| {
            format!(
                "cannot listen for other nodes on UDP {bind}: {e} \
                 (choose another with --proxy-peer-port, or another --proxy-address)"
            )
        })?;
        let port = endpoint
            .local_addr()
            .map_err(|e| format!("the peer port has no address: {e}"))?
            .port();
        let ip = advertise_ip(&config, masters);
        let advertised = SocketAddr::new(ip, port).to_string();
        let peers = peer::Peers::new(endpoint.clone());
        peers.set_credentials(ck, ca_pem)?;
        tokio::spawn(peer::serve(endpoint.clone(), served.clone()));
        tracing::info!(peers_at = %advertised, services_on = %config.address, "node proxy started");
        Ok(Proxy {
            inner: Arc::new(Inner {
                node: node.to_string(),
                config,
                served,
                peers,
                peer_endpoint: endpoint,
                advertised,
                ca_pem: ca_pem.to_string(),
                table: RwLock::default(),
                outliers: Mutex::default(),
                in_flight: Mutex::default(),
                listeners: Mutex::default(),
                certificates: tls::Certificates::default(),
            }),
        })
    }

    /// Where other nodes reach this proxy (`IP:PORT`), for the Node's
    /// `status.proxyEndpoint`.
    pub fn endpoint(&self) -> &str {
        &self.inner.advertised
    }

    /// Renewed credentials: used for every connection from now on.
    pub fn set_credentials(&self, ck: &CertifiedKey) -> Result<(), String> {
        let server = server_config(ck, &self.inner.ca_pem)?;
        self.inner.peer_endpoint.set_server_config(Some(server));
        self.inner.peers.set_credentials(ck, &self.inner.ca_pem)
    }

    /// Makes `table` the one requests are routed by, and opens and closes
    /// listeners to match its ports (within the configured range).
    pub fn set_table(&self, table: Table) {
        let table = Arc::new(table);
        *self.inner.table.write().unwrap_or_else(|p| p.into_inner()) = table.clone();
        let uids: std::collections::HashSet<&str> = table
            .ports
            .values()
            .flat_map(|r| r.ready.iter().map(|t| t.uid.as_str()))
            .collect();
        // What is known of pods that left the table goes with them (a
        // counter still in use stays until its requests end).
        self.inner
            .outliers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| uids.contains(k));
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, c| uids.contains(k.as_str()) || c.load(Ordering::Relaxed) > 0);
        let mut wanted: Vec<u16> = table
            .ports
            .iter()
            .filter(|(p, r)| r.protocol == Protocol::Tcp && self.inner.config.ports.contains(p))
            .map(|(p, _)| *p)
            .collect();
        if let Some(p) = self.inner.config.host_port {
            if !table.hosts.is_empty() {
                wanted.push(p);
            }
        }
        let secrets = table.secrets();
        if let Some(p) = self.inner.config.tls_port {
            if !secrets.is_empty() {
                wanted.push(p);
            }
        }
        self.inner.certificates.table_changed(&secrets);
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        listeners.retain(|port, l| {
            let keep = wanted.contains(port) && !l.task.is_finished();
            if !keep {
                l.stop.cancel();
            }
            keep
        });
        for port in wanted {
            listeners.entry(port).or_insert_with(|| {
                let stop = CancellationToken::new();
                let task = tokio::spawn(listen(self.inner.clone(), port, stop.clone()));
                Listener { stop, task }
            });
        }
    }

    /// Keeps the certificates of Services served over TLS, read from the
    /// masters ([`tls`]), until `stop`.
    pub async fn keep_certificates(
        self,
        client: watch::Receiver<Option<Client>>,
        stop: CancellationToken,
    ) {
        tls::keep(self.inner, client, stop).await
    }

    /// Keeps the table up to date from the masters: lists the Services and
    /// Endpoints whenever a master connection comes, then follows their
    /// changes. Between connections the last table stays.
    pub async fn follow(
        self,
        mut client: watch::Receiver<Option<Client>>,
        stop: CancellationToken,
    ) {
        loop {
            let current = client.borrow_and_update().clone();
            let Some(c) = current else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = client.changed() => if changed.is_err() { return },
                }
                continue;
            };
            tracing::debug!("the proxy follows the Services");
            tokio::select! {
                _ = stop.cancelled() => return,
                r = self.sync(&c) => {
                    if let Err(e) = r {
                        tracing::info!(error = %e, "the proxy's watch ended; serving from its last view");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// One list and watch of Services and Endpoints over `client`.
    async fn sync(&self, client: &Client) -> Result<(), NetError> {
        let list = |kind| ListOptions {
            kind: Some(kind),
            namespace: None,
            label_selector: String::new(),
            node_name: None,
            stale: false,
        };
        let (svc_rev, svcs) = crate::agent::list_all(client, &list(Kind::Service)).await?;
        let (ep_rev, eps) = crate::agent::list_all(client, &list(Kind::Endpoints)).await?;
        let mut services: BTreeMap<String, Service> = svcs
            .into_iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some((key(&s.metadata), s)),
                _ => None,
            })
            .collect();
        let mut endpoints: BTreeMap<String, Endpoints> = eps
            .into_iter()
            .filter_map(|o| match o {
                Object::Endpoints(e) => Some((key(&e.metadata), e)),
                _ => None,
            })
            .collect();
        let rebuild = |services: &BTreeMap<String, Service>,
                       endpoints: &BTreeMap<String, Endpoints>| {
            let s: Vec<Service> = services.values().cloned().collect();
            let e: Vec<Endpoints> = endpoints.values().cloned().collect();
            self.set_table(Table::build(&s, &e));
        };
        rebuild(&services, &endpoints);
        tracing::debug!(services = services.len(), "the proxy listed the Services");
        let watch = |kind, from_revision| {
            Request::Watch(WatchOptions {
                list: list(kind),
                from_revision,
            })
        };
        let (_s1, mut svc_watch) = client.open(&watch(Kind::Service, svc_rev)).await?;
        let (_s2, mut ep_watch) = client.open(&watch(Kind::Endpoints, ep_rev)).await?;
        loop {
            let frame = tokio::select! {
                f = read_frame::<Response>(&mut svc_watch) => f?,
                f = read_frame::<Response>(&mut ep_watch) => f?,
            };
            let ev = match frame {
                Some(Response::Event(ev)) => ev,
                Some(Response::Error(e)) => return Err(NetError::Api(e)),
                Some(_) => continue,
                None => return Err(NetError::Closed),
            };
            let gone = ev.kind == EventType::Deleted;
            match ev.object {
                Object::Service(s) if gone => {
                    services.remove(&key(&s.metadata));
                }
                Object::Service(s) => {
                    services.insert(key(&s.metadata), s);
                }
                Object::Endpoints(e) if gone => {
                    endpoints.remove(&key(&e.metadata));
                }
                Object::Endpoints(e) => {
                    endpoints.insert(key(&e.metadata), e);
                }
                _ => continue,
            }
            rebuild(&services, &endpoints);
        }
    }
}

fn key(m: &flotilla_api::ObjectMeta) -> String {
    format!("{}/{}", m.namespace, m.name)
}

fn server_config(ck: &CertifiedKey, ca_pem: &str) -> Result<quinn::ServerConfig, String> {
    let tls = flotilla_api::tls::peer_server_config(ck, ca_pem, peer::ALPN)
        .map_err(|e| format!("cannot set up TLS for other nodes: {e}"))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("cannot set up QUIC for other nodes: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(peer::transport());
    Ok(config)
}

/// The address other nodes are told to reach this one at.
fn advertise_ip(config: &ProxyConfig, masters: &[String]) -> IpAddr {
    if let Some(ip) = config.advertise {
        return ip;
    }
    if !config.address.is_unspecified() {
        return config.address;
    }
    // The address this machine sends from towards a master: a UDP
    // "connection" only picks a route, it sends nothing.
    use std::net::ToSocketAddrs;
    masters
        .iter()
        .filter_map(|m| m.to_socket_addrs().ok()?.next())
        .find_map(|master| {
            let sock = std::net::UdpSocket::bind(SocketAddr::new(
                if master.is_ipv4() {
                    IpAddr::from([0, 0, 0, 0])
                } else {
                    IpAddr::from([0u16; 8])
                },
                0,
            ))
            .ok()?;
            sock.connect(master).ok()?;
            Some(sock.local_addr().ok()?.ip())
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the proxy's ports a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A Service's own port.
    Service,
    /// The host port: routed by Host header and path.
    Host,
    /// The TLS host port: as `Host`, after a TLS handshake.
    Tls,
}

/// Accepts connections on `port` until `stop`, serving each with HTTP/1.1
/// or HTTP/2 (as the client speaks).
async fn listen(inner: Arc<Inner>, port: u16, stop: CancellationToken) {
    let addr = SocketAddr::new(inner.config.address, port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            // Tried again at the next change of the table.
            tracing::warn!(%addr, error = %e, "cannot listen on a Service's port; it is not served on this node");
            return;
        }
    };
    let entry = if inner.config.tls_port == Some(port) {
        Entry::Tls
    } else if inner.config.host_port == Some(port) {
        Entry::Host
    } else {
        Entry::Service
    };
    let acceptor = match entry {
        Entry::Tls => match tls::acceptor(&inner) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot serve TLS");
                return;
            }
        },
        _ => None,
    };
    tracing::info!(%addr, ?entry, "serving a Service port");
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let stop = stop.clone();
        if entry == Entry::Service {
            let table = inner
                .table
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(route) = table.ports.get(&port).filter(|r| r.tcp).cloned() {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = inner.forward_tcp(&route, stream, client) => {}
                    }
                });
                continue;
            }
        }
        match &acceptor {
            None => {
                tokio::spawn(serve_http(inner, port, entry, stream, client, stop));
            }
            Some(acceptor) => {
                let accept = acceptor.accept(stream);
                tokio::spawn(async move {
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%client, error = %e, "a TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                    };
                    serve_http(inner, port, entry, stream, client, stop).await
                });
            }
        }
    }
}

/// Serves the HTTP requests of one client connection until it ends or `stop`.
async fn serve_http<S>(
    inner: Arc<Inner>,
    port: u16,
    entry: Entry,
    stream: S,
    client: SocketAddr,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let inner = inner.clone();
        async move {
            let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
            Ok::<_, std::convert::Infallible>(inner.route(port, entry, req, client).await)
        }
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = stop.cancelled() => {}
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "a client connection ended with an error");
        }
    }
}

/// Counts a request in flight to a pod while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What of a request is kept to send it again: an idempotent request
/// without a body.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(req: &http::Request<ProxyBody>) -> Option<Replay> {
        use http_body::Body as _;
        let idempotent = matches!(
            *req.method(),
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        );
        (idempotent && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> http::Request<ProxyBody> {
        let mut req =
            http::Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl Inner {
    /// Serves a request that came in on `port`.
    async fn route(
        self: Arc<Self>,
        port: u16,
        entry: Entry,
        mut req: http::Request<ProxyBody>,
        client: SocketAddr,
    ) -> http::Response<ProxyBody> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        let route = if entry != Entry::Service {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
                .unwrap_or_default();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            match table.for_host(host, path, entry == Entry::Tls) {
                Some(r) => r.clone(),
                None => {
                    let tls = if entry == Entry::Tls {
                        ", with spec.tls"
                    } else {
                        ""
                    };
                    let message = format!(
                        "no Service takes host {host:?} and path {:?} (spec.hosts of a Service{tls})",
                        req.uri().path()
                    );
                    return plain(404, &message);
                }
            }
        } else {
            match table.ports.get(&port) {
                Some(r) => r.clone(),
                None => return plain(503, &format!("no Service has port {port} any more")),
            }
        };
        if let Ok(v) = http::HeaderValue::from_str(&client.ip().to_string()) {
            req.headers_mut().append("x-forwarded-for", v);
        }
        if entry != Entry::Service {
            let proto = if entry == Entry::Tls { "https" } else { "http" };
            req.headers_mut()
                .insert("x-forwarded-proto", http::HeaderValue::from_static(proto));
        }
        self.send(&route, req, client.ip()).await
    }

    /// Sends `req` to one of `route`'s pods, once more to another if it
    /// reached none.
    async fn send(
        &self,
        route: &Route,
        req: http::Request<ProxyBody>,
        client: IpAddr,
    ) -> http::Response<ProxyBody> {
        let affinity = (route.affinity == SessionAffinity::ClientIp).then_some(client);
        let replay = Replay::of(&req);
        let mut req = Some(req);
        let mut tried: Vec<&str> = Vec::new();
        let mut last_error = String::new();
        for _attempt in 0..2 {
            let Some(target) = self.choose(route, affinity, &tried) else {
                break;
            };
            tried.push(&target.uid);
            let Some(request) = req.take().or_else(|| replay.as_ref().map(Replay::request)) else {
                break;
            };
            let _counted = self.count(&target.uid);
            if target.node == self.node {
                match self.served.get(&target.pod, &target.uid) {
                    Some(pod) => {
                        let request = request.map(|b| b.map_err(wasi_error));
                        let response = pod.handle(request).await;
                        self.observe(target, response.status());
                        return response.map(boxed);
                    }
                    None => {
                        // Not (or no longer) here: nothing was delivered.
                        self.failed(target, Failure::Unreachable);
                        last_error = format!("pod {} is not served on this node", target.pod);
                        req = Some(request);
                        continue;
                    }
                }
            }
            match self
                .peers
                .forward(
                    &target.node,
                    &target.proxy,
                    &target.pod,
                    &target.uid,
                    request,
                    Some(client),
                )
                .await
            {
                Ok(response) if response.headers().contains_key(NOT_HERE) => {
                    self.failed(target, Failure::Unreachable);
                    if replay.is_none() {
                        let mut response = response;
                        response.headers_mut().remove(NOT_HERE);
                        return response;
                    }
                    last_error = format!("pod {} was not on node {}", target.pod, target.node);
                }
                Ok(response) => {
                    self.observe(target, response.status());
                    return response;
                }
                Err(peer::ForwardError::Unreached(back, e)) => {
                    self.failed(target, Failure::Unreachable);
                    last_error = e;
                    req = Some(*back);
                }
                Err(peer::ForwardError::Lost(e)) => {
                    self.failed(target, Failure::Unreachable);
                    last_error = e;
                    if replay.is_none() {
                        return plain(
                            502,
                            &format!("the request to pod {} was lost: {last_error}", target.pod),
                        );
                    }
                }
            }
        }
        if route.ready.is_empty() {
            return plain(
                503,
                &format!(
                    "Service {} has no ready pods ({} not ready); see `flotilla describe service {}`",
                    route.service,
                    route.not_ready,
                    route.service.rsplit('/').next().unwrap_or_default()
                ),
            );
        }
        plain(
            502,
            &format!(
                "no pod of Service {} could be reached: {last_error}",
                route.service
            ),
        )
    }

    /// Forwards a TCP connection to one of `route`'s command pods: to its
    /// port on this node, or over QUIC to its node; once more to another
    /// pod if the first cannot be reached. Nothing is read from the client
    /// before a pod is reached.
    async fn forward_tcp(&self, route: &Route, client: tokio::net::TcpStream, from: SocketAddr) {
        let affinity = (route.affinity == SessionAffinity::ClientIp).then_some(from.ip());
        let mut tried: Vec<&str> = Vec::new();
        for _attempt in 0..2 {
            let Some(target) = self.choose(route, affinity, &tried) else {
                break;
            };
            tried.push(&target.uid);
            let _counted = self.count(&target.uid);
            if target.node == self.node {
                if !self.served.tcp_port(&target.pod, &target.uid, target.port) {
                    self.failed(target, Failure::Unreachable);
                    continue;
                }
                match tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, target.port))
                    .await
                {
                    Ok(mut pod) => {
                        self.observe(target, http::StatusCode::OK);
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut pod).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(pod = %target.pod, error = %e, "a TCP pod does not answer");
                        self.failed(target, Failure::Unreachable);
                        continue;
                    }
                }
            }
            match self
                .peers
                .open_tcp(
                    &target.node,
                    &target.proxy,
                    &target.pod,
                    &target.uid,
                    target.port,
                )
                .await
            {
                Ok((send, recv)) => {
                    self.observe(target, http::StatusCode::OK);
                    peer::splice(client, send, recv).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(pod = %target.pod, error = %e, "cannot reach a TCP pod");
                    self.failed(target, Failure::Unreachable);
                }
            }
        }
        // No pod: the connection is closed, as a port nobody serves.
        tracing::debug!(service = %route.service, "no pod took a TCP connection");
    }

    /// Picks a target of `route` not yet `tried`.
    fn choose<'r>(
        &self,
        route: &'r Route,
        affinity: Option<IpAddr>,
        tried: &[&str],
    ) -> Option<&'r Target> {
        let left: Vec<&Target> = route
            .ready
            .iter()
            .filter(|t| !tried.contains(&t.uid.as_str()))
            .collect();
        let now = Instant::now();
        let outliers = self.outliers.lock().unwrap_or_else(|p| p.into_inner());
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let cands: Vec<Candidate<'_>> = left
            .iter()
            .map(|t| Candidate {
                key: &t.uid,
                in_flight: in_flight
                    .get(&t.uid)
                    .map_or(0, |c| c.load(Ordering::Relaxed)),
                excluded: outliers.ejected(&t.uid, now),
            })
            .collect();
        let i = balance::pick(&cands, affinity, (rand::random(), rand::random()))?;
        Some(left[i])
    }

    fn count(&self, uid: &str) -> InFlight {
        let counter = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid.to_string())
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }

    fn failed(&self, target: &Target, failure: Failure) {
        let ejected = self
            .outliers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(&target.uid, failure, Instant::now());
        if ejected {
            tracing::info!(pod = %target.pod, node = %target.node, ?failure, "left a failing pod out of its Services for a while");
        }
    }

    /// Counts an answer for outlier detection: server errors against the
    /// pod, anything else for it (a 503 of a full pod is load, not
    /// failure).
    fn observe(&self, target: &Target, status: http::StatusCode) {
        match status.as_u16() {
            500 | 502 | 504 => self.failed(target, Failure::ServerError),
            _ => self
                .outliers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .succeeded(&target.uid),
        }
    }
}

/// A proxy body's error as wasi:http takes it.
pub(crate) fn wasi_error(e: BoxError) -> wasmtime_wasi_http::Error {
    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
}
