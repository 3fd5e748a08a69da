//! The sending side of raft between masters: openraft's [`RaftNetworkFactory`]
//! and [`RaftNetwork`] over QUIC with mutual TLS.
//!
//! Each master has one quinn client endpoint presenting its own certificate
//! (`flotilla:master:<id>`); the receiving master's service checks that name
//! before it lets a raft message through ([`crate::authz`]). Per target there
//! is one connection, made lazily on the first message, greeted with a
//! `Hello`, and remade after it is lost. Each message is one
//! [`Request::Raft`] on its own bidirectional stream, answered by one
//! [`Response::Raft`] carrying openraft's whole `Result` (see [`super::rpc`]).
//!
//! Failures map onto openraft's errors so that it retries sensibly: a peer
//! that cannot be reached, or that answers with an error instead of a raft
//! result, is [`Unreachable`] (openraft backs off, as asking again at once
//! would get the same answer); a stream that broke is a [`NetworkError`] (it
//! retries at once, over a new connection); a remote raft error is a
//! [`RemoteError`] as if raft had been called locally.
//!
//! Tests put a [`Hook`] in front of every message to drop or delay it, which
//! is how they partition masters without touching sockets.

use super::rpc::{decode, encode, CodecError};
use super::TypeConfig;
use flotilla_api::identity::MASTER_SERVER_NAME;
use flotilla_api::net::{self, NetError};
use flotilla_api::protocol::{ApiError, RaftRpc, Request, Response, MAX_FRAME, PROTOCOL_VERSION};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the test hook decides for one message from one master to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Deliver,
    /// Do not send it; the sender sees the target as unreachable.
    Drop,
    /// Send it after this long (still within the message's time limit).
    Delay(Duration),
}

/// Judges every message by (sender id, target id) before it is sent.
pub type Hook = Arc<dyn Fn(u64, u64) -> Verdict + Send + Sync>;

/// Agent name masters give in their hello to each other.
const AGENT: &str = "flotilla-master raft";

/// Why a raft message did not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftNetError {
    /// The test hook dropped the message.
    #[error("the message from master {from} to master {to} was dropped by the test hook")]
    Dropped { from: u64, to: u64 },
    /// No connection to the target could be made.
    #[error("cannot reach master {target} at {addr}: {source}")]
    Connect {
        target: u64,
        addr: String,
        source: NetError,
    },
    /// The target answered its hello with something else than a hello.
    #[error("master {target} at {addr} did not greet back: {answer}")]
    Greeting {
        target: u64,
        addr: String,
        answer: String,
    },
    /// The connection or stream failed while the message was under way.
    #[error("raft message to master {target} failed: {source}")]
    Transport { target: u64, source: NetError },
    /// The target's service refused or could not serve the message.
    #[error("master {target} refused the raft message: {error}")]
    Refused { target: u64, error: ApiError },
    /// The message or its answer is not what raft expects.
    #[error("raft message to master {target}: {source}")]
    Codec { target: u64, source: CodecError },
    /// The target answered a raft message with something else.
    #[error("master {target} answered a raft message with {answer}")]
    Unexpected { target: u64, answer: String },
}

/// How a [`Network::call`] failed: whether the request may have been acted on.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never left: no connection could be made.
    #[error("{0}")]
    NotSent(RaftNetError),
    /// The target answered with an error.
    #[error("{0}")]
    Refused(RaftNetError),
    /// The request was sent but its answer was lost: it may have been acted on.
    #[error("{0}")]
    Lost(RaftNetError),
}

/// A client endpoint and the TLS configuration it connects with, shared by
/// every clone: a renewed certificate reaches all of them at once.
#[derive(Clone)]
struct Dialer {
    endpoint: quinn::Endpoint,
    config: Arc<Mutex<quinn::ClientConfig>>,
}

impl Dialer {
    fn new(tls: rustls::ClientConfig) -> Result<Dialer, NetError> {
        let config = net::quic_client_config(tls.clone())?;
        Ok(Dialer {
            endpoint: net::client_endpoint(tls)?,
            config: Arc::new(Mutex::new(config)),
        })
    }

    fn connect(
        &self,
        sock: std::net::SocketAddr,
        name: &str,
    ) -> Result<quinn::Connecting, quinn::ConnectError> {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.endpoint.connect_with(config, sock, name)
    }
}

/// Connects to master `target` at `addr` and exchanges hellos.
async fn connect_master(
    endpoint: &Dialer,
    target: u64,
    addr: &str,
) -> Result<quinn::Connection, RaftNetError> {
    let connect_err = |source: NetError| RaftNetError::Connect {
        target,
        addr: addr.to_string(),
        source,
    };
    let sock = net::resolve(addr, 7443).await.map_err(connect_err)?;
    let conn = endpoint
        .connect(sock, MASTER_SERVER_NAME)
        .map_err(|e| connect_err(NetError::Connect(e.to_string())))?
        .await
        .map_err(|e| connect_err(NetError::Connection(e)))?;
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        agent: AGENT.into(),
    };
    match net::call(&conn, &hello).await {
        Ok(Response::Hello { version, .. }) if version == PROTOCOL_VERSION => Ok(conn),
        Ok(other) => {
            conn.close(0u32.into(), b"unexpected greeting");
            Err(RaftNetError::Greeting {
                target,
                addr: addr.to_string(),
                answer: format!("{other:?}"),
            })
        }
        Err(e) => Err(connect_err(e)),
    }
}

/// Creates the per-target clients openraft asks for.
#[derive(Clone)]
pub struct Network {
    id: u64,
    endpoint: Dialer,
    hook: Option<Hook>,
    /// One connection per target and address, shared by every client of
    /// that target (openraft makes a new client for each leadership check)
    /// and by requests other than raft's own messages (forwarded writes,
    /// read indexes, membership).
    calls: Connections,
}

/// Live, greeted connections to other masters by (id, address), shared by
/// everything that talks to them.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<HashMap<(u64, String), quinn::Connection>>>);

impl Connections {
    /// The connection to `target` at `addr`, made and greeted if needed.
    async fn get(
        &self,
        endpoint: &Dialer,
        target: u64,
        addr: &str,
    ) -> Result<quinn::Connection, RaftNetError> {
        let key = (target, addr.to_string());
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = connect_master(endpoint, target, addr).await?;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, c.clone());
        Ok(c)
    }

    /// Drops the connection to `target` at `addr` after it failed.
    fn forget(&self, target: u64, addr: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(target, addr.to_string()));
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("id", &self.id)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The network of master `id`, whose client TLS configuration (from
    /// `flotilla_api::tls::client_config` with the master's own client
    /// certificate) trusts the cluster CA.
    pub fn new(id: u64, tls: rustls::ClientConfig) -> Result<Network, NetError> {
        Ok(Network {
            id,
            endpoint: Dialer::new(tls)?,
            hook: None,
            calls: Connections::default(),
        })
    }

    /// This master's raft node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Presents a new client certificate (a renewed one) on connections
    /// made from now on; open connections keep theirs.
    pub fn set_client_tls(&self, tls: rustls::ClientConfig) -> Result<(), NetError> {
        let config = net::quic_client_config(tls)?;
        *self
            .endpoint
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The validity of the serving certificate each connected master presented.
    pub fn peer_certificates(&self) -> Vec<(u64, flotilla_api::identity::Validity)> {
        let conns: Vec<((u64, String), quinn::Connection)> = self
            .calls
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut out = Vec::new();
        for ((target, _), conn) in conns {
            let certs = conn.peer_identity().and_then(|id| {
                id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            });
            let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
                continue;
            };
            if let Ok(v) = flotilla_api::identity::Validity::of_der(leaf.as_ref()) {
                if !out.iter().any(|(t, _)| *t == target) {
                    out.push((target, v));
                }
            }
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }

    /// Opens a stream to master `target` at `addr` and sends `req` on it, for
    /// answers that stream (logs of a node connected to that master).
    pub async fn open(
        &self,
        target: u64,
        addr: &str,
        req: &Request,
        ttl: Duration,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), CallError> {
        let conn = self.connection(target, addr, ttl).await?;
        let opened = async {
            let (mut send, recv) = conn.open_bi().await.map_err(NetError::from)?;
            net::write_frame(&mut send, req).await?;
            Ok::<_, NetError>((send, recv))
        };
        match tokio::time::timeout(ttl, opened).await {
            Ok(Ok(streams)) => Ok(streams),
            Ok(Err(source)) => Err(CallError::Lost(RaftNetError::Transport { target, source })),
            Err(_) => Err(CallError::Lost(RaftNetError::Transport {
                target,
                source: NetError::Connect(format!("no answer within {ttl:?}")),
            })),
        }
    }

    /// The shared connection to `target` at `addr`, made if needed.
    async fn connection(
        &self,
        target: u64,
        addr: &str,
        ttl: Duration,
    ) -> Result<quinn::Connection, CallError> {
        tokio::time::timeout(ttl, self.calls.get(&self.endpoint, target, addr))
            .await
            .map_err(|_| {
                CallError::NotSent(RaftNetError::Connect {
                    target,
                    addr: addr.to_string(),
                    source: NetError::Connect(format!("no answer within {ttl:?}")),
                })
            })?
            .map_err(CallError::NotSent)
    }

    /// Sends `req` to master `target` at `addr` and waits for its answer
    /// (within `ttl`), over a connection kept for such calls. The test hook
    /// judges these messages like raft's own.
    pub async fn call(
        &self,
        target: u64,
        addr: &str,
        req: &Request,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        if let Some(hook) = &self.hook {
            match hook(self.id, target) {
                Verdict::Deliver => {}
                Verdict::Drop => {
                    return Err(CallError::NotSent(RaftNetError::Dropped {
                        from: self.id,
                        to: target,
                    }))
                }
                Verdict::Delay(d) => tokio::time::sleep(d).await,
            }
        }
        let conn = self.connection(target, addr, ttl).await?;
        match tokio::time::timeout(ttl, net::call(&conn, req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(NetError::Api(error))) => {
                Err(CallError::Refused(RaftNetError::Refused { target, error }))
            }
            Ok(Err(source)) => {
                self.calls.forget(target, addr);
                Err(CallError::Lost(RaftNetError::Transport { target, source }))
            }
            Err(_) => Err(CallError::Lost(RaftNetError::Transport {
                target,
                source: NetError::Connect(format!("no answer within {ttl:?}")),
            })),
        }
    }

    /// The same network with every message judged by `hook` first (tests).
    pub fn with_hook(mut self, hook: Hook) -> Network {
        self.hook = Some(hook);
        self
    }

    /// Closes the client endpoint: every connection to other masters ends.
    pub fn close(&self) {
        self.endpoint
            .endpoint
            .close(0u32.into(), b"master shutting down");
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        // No connection yet: a peer that is down must not stall openraft
        // here; the first message connects.
        Peer {
            from: self.id,
            target,
            addr: node.addr.clone(),
            endpoint: self.endpoint.clone(),
            hook: self.hook.clone(),
            shared: self.calls.clone(),
        }
    }
}

/// The client of one target master.
pub struct Peer {
    from: u64,
    target: u64,
    addr: String,
    endpoint: Dialer,
    hook: Option<Hook>,
    /// The network's connections, to reuse one another client made.
    shared: Connections,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("from", &self.from)
            .field("target", &self.target)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How one message failed, before it becomes openraft's error.
enum Failure {
    /// Back off before trying again.
    Unreachable(RaftNetError),
    /// Try again at once.
    Network(RaftNetError),
    /// The whole exchange took longer than openraft allowed.
    Timeout(Duration),
    /// The message does not fit in a frame.
    TooLarge(RaftNetError),
}

impl Peer {
    /// The live connection to the target, connecting and greeting if needed.
    async fn connection(&mut self) -> Result<quinn::Connection, Failure> {
        self.shared
            .get(&self.endpoint, self.target, &self.addr)
            .await
            .map_err(Failure::Unreachable)
    }

    /// Sends one raft message and decodes openraft's result from the answer,
    /// within `ttl` (hook delay, connecting and the exchange together).
    async fn send<Req, Resp, E>(
        &mut self,
        rpc: RaftRpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Result<Resp, E>, Failure>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let verdict = match &self.hook {
            Some(hook) => hook(self.from, self.target),
            None => Verdict::Deliver,
        };
        let delay = match verdict {
            Verdict::Drop => {
                return Err(Failure::Unreachable(RaftNetError::Dropped {
                    from: self.from,
                    to: self.target,
                }))
            }
            Verdict::Deliver => Duration::ZERO,
            Verdict::Delay(d) => d,
        };
        let target = self.target;
        let payload = encode(req)
            .map_err(|source| Failure::Network(RaftNetError::Codec { target, source }))?;
        // Leave room for the request's envelope around the payload.
        if payload.len() > MAX_FRAME - 1024 {
            return Err(Failure::TooLarge(RaftNetError::Codec {
                target,
                source: CodecError::TooLarge(payload.len()),
            }));
        }
        let exchange = async {
            // Only a hook's delay sleeps: a timer of zero still waits for the
            // timer's next tick, up to a millisecond per message.
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let conn = self.connection().await?;
            let answer = net::call(&conn, &Request::Raft { rpc, payload }).await;
            // An answer that is not a raft result would be the same if asked
            // again at once (no raft here yet, not allowed, another
            // version): back off rather than spin.
            match answer {
                Ok(Response::Raft(bytes)) => decode::<Result<Resp, E>>(&bytes)
                    .map_err(|source| Failure::Unreachable(RaftNetError::Codec { target, source })),
                Ok(other) => Err(Failure::Unreachable(RaftNetError::Unexpected {
                    target,
                    answer: format!("{other:?}"),
                })),
                Err(NetError::Api(error)) => Err(Failure::Unreachable(RaftNetError::Refused {
                    target,
                    error,
                })),
                Err(source) => {
                    // The connection may be gone; make a new one next time.
                    self.shared.forget(target, &self.addr);
                    Err(Failure::Network(RaftNetError::Transport { target, source }))
                }
            }
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(ttl)),
        }
    }

    /// openraft's error for a failure of a message of type `action`.
    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        failure: Failure,
        entries: usize,
    ) -> RPCError<u64, BasicNode, E> {
        match failure {
            Failure::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Failure::Network(e) => RPCError::Network(NetworkError::new(&e)),
            Failure::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout,
            }),
            // openraft splits entries it is told are too many; a single one
            // that does not fit cannot be split, so it stays a network error.
            Failure::TooLarge(_) if entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
            }
            Failure::TooLarge(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let entries = rpc.entries.len();
        match self
            .send::<_, _, RaftError<u64>>(RaftRpc::AppendEntries, &rpc, option.hard_ttl())
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(f) => Err(self.rpc_error(RPCTypes::AppendEntries, f, entries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .send::<_, _, RaftError<u64, InstallSnapshotError>>(
                RaftRpc::InstallSnapshot,
                &rpc,
                option.hard_ttl(),
            )
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(f) => Err(self.rpc_error(RPCTypes::InstallSnapshot, f, 0)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .send::<_, _, RaftError<u64>>(RaftRpc::Vote, &rpc, option.hard_ttl())
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(f) => Err(self.rpc_error(RPCTypes::Vote, f, 0)),
        }
    }
}
