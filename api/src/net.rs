//! Frame I/O over quinn streams and a small client, shared by the master,
//! the edge node and the CLI (feature `quic`).

use crate::identity::MASTER_SERVER_NAME;
use crate::protocol::{
    decode_body, encode_frame, frame_len, ApiError, FrameError, Request, Response, PROTOCOL_VERSION,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{de::DeserializeOwned, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a handshake (and hello) may take before a master counts as not answering.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long [`Client::connect`] waits on one master before also trying the next.
pub const FAILOVER_STAGGER: Duration = Duration::from_millis(300);
/// Keep-alives keep NAT bindings open and let both sides notice a dead peer.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A peer silent this long is gone (a few missed keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// Why talking to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("{0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer closed the stream before answering")]
    Closed,
    #[error("{0}")]
    Api(ApiError),
    #[error("unexpected response: {0}")]
    Unexpected(String),
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), NetError> {
    let bytes = encode_frame(msg)?;
    write_encoded(send, &bytes).await
}

/// Writes a frame made by [`encode_frame`]: for a long-lived task, which
/// then holds only the bytes across the write, not the message.
pub async fn write_encoded(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), NetError> {
    send.write_all(frame).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(c) => NetError::Connection(c),
        other => NetError::Write(other),
    })
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, NetError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(FrameError::Truncated("stream ended inside a length prefix").into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
    }
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(FrameError::Truncated("stream ended inside a frame").into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
    }
    Ok(Some(decode_body(&body)?))
}

fn read_error(e: quinn::ReadError) -> NetError {
    match e {
        quinn::ReadError::ConnectionLost(c) => NetError::Connection(c),
        other => NetError::Read(other.to_string()),
    }
}

/// Transport settings shared by every endpoint.
pub fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(base_transport())
}

fn base_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t.max_concurrent_bidi_streams(CLIENT_STREAMS.into());
    // Flotilla opens no unidirectional streams; QUIC would keep state for 100.
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// Streams a client, a controller or another master may have open at once
/// on a connection: watches, log streams and module transfers are
/// long-lived, so leave room for many.
pub const CLIENT_STREAMS: u32 = 1024;

/// Streams a node (or a caller not yet known) may have open at once on a
/// master's connection: its watch, a heartbeat, a batch of reports and a
/// few reads or module downloads; more wait for one to finish. QUIC keeps
/// state for each stream a peer may open, and keeps the state of finished
/// ones for reuse up to this count: at 1,024 it grew to about 170 KiB per
/// connection after a few minutes of heartbeats, the largest part of a
/// master's memory at thousands of nodes. The master raises the limit to
/// [`CLIENT_STREAMS`] once the certificate shows a caller that is not a node.
pub const NODE_STREAMS: u32 = 16;

/// Transport settings of a master's connections: as [`transport`], with
/// fewer concurrent streams to start with ([`NODE_STREAMS`]) and without segmentation
/// offload, which keeps a send buffer of up to 64 packets (about 90 KiB) on
/// each connection once it has sent a burst. Bulk sends (module downloads)
/// cost a little more CPU.
pub fn server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = base_transport();
    t.max_concurrent_bidi_streams(NODE_STREAMS.into());
    t.enable_segmentation_offload(false);
    Arc::new(t)
}

/// The QUIC server configuration for a rustls one (also used to put a
/// renewed certificate in use on a running endpoint).
pub fn quic_server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, NetError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(server_transport());
    Ok(cfg)
}

/// The QUIC client configuration for a rustls one.
pub fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A server endpoint bound to `addr`.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
) -> Result<quinn::Endpoint, NetError> {
    server_endpoint_on(server_socket(addr)?, tls)
}

/// The UDP socket a server listens on, bound to `addr`: taken before
/// anything else when starting, so that a port in use fails at once.
pub fn server_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    std::net::UdpSocket::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            ": another program (another master, or `flotilla up`) listens there; stop it or choose another address with --listen"
        } else {
            ""
        };
        NetError::Connect(format!("cannot listen on {addr}: {e}{hint}"))
    })
}

/// A server endpoint on a socket from [`server_socket`].
pub fn server_endpoint_on(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
) -> Result<quinn::Endpoint, NetError> {
    let addr = socket
        .local_addr()
        .map_or_else(|_| "its address".to_string(), |a| a.to_string());
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quic_server_config(tls)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| NetError::Connect(format!("cannot listen on {addr}: {e}")))
}

/// A client endpoint on an ephemeral port.
pub fn client_endpoint(tls: rustls::ClientConfig) -> Result<quinn::Endpoint, NetError> {
    let cfg = quic_client_config(tls)?;
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut ep = quinn::Endpoint::client(bind)
        .map_err(|e| NetError::Connect(format!("cannot open a UDP socket: {e}")))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Resolves `host:port` (a bare host gets `default_port`).
pub async fn resolve(addr: &str, default_port: u16) -> Result<SocketAddr, NetError> {
    let with_port = if addr.parse::<SocketAddr>().is_ok()
        || addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:{default_port}")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            NetError::Connect(format!(
                "cannot resolve {addr:?}; give host:port, e.g. 127.0.0.1:7443"
            ))
        })
}

/// Sends one request on a new stream and reads one response; an error
/// response becomes [`NetError::Api`].
pub async fn call(conn: &quinn::Connection, req: &Request) -> Result<Response, NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    match read_frame::<Response>(&mut recv).await? {
        Some(Response::Error(e)) => Err(NetError::Api(e)),
        Some(r) => Ok(r),
        None => Err(NetError::Closed),
    }
}

/// What the master said in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// How the master sees us (`admin`, `node n1`, `anonymous`).
    pub identity: String,
    /// Every master's address, for failover.
    pub masters: Vec<String>,
}

/// A connection to one master, after the hello.
#[derive(Debug, Clone)]
pub struct Client {
    pub conn: quinn::Connection,
    pub endpoint: quinn::Endpoint,
    pub addr: String,
    pub hello: HelloInfo,
}

impl Client {
    /// Connects to a master of `addrs` and says hello. The first address is
    /// tried first; each next one starts [`FAILOVER_STAGGER`] later (or as
    /// soon as the ones before it have failed), and the first to answer wins,
    /// so a master that is down costs a fraction of a second, not a timeout.
    pub async fn connect(
        addrs: &[String],
        tls: rustls::ClientConfig,
        agent: &str,
    ) -> Result<Client, NetError> {
        let endpoint = client_endpoint(tls)?;
        Self::connect_on(&endpoint, None, addrs, agent).await
    }

    /// [`Client::connect`] on an endpoint the caller shares among many
    /// connections, each with its own client configuration (`None`: the
    /// endpoint's default): one UDP socket for many identities, as the
    /// hollow nodes of `flotilla hollow-nodes` need.
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        config: Option<quinn::ClientConfig>,
        addrs: &[String],
        agent: &str,
    ) -> Result<Client, NetError> {
        let mut first_error = None;
        let mut attempts = tokio::task::JoinSet::new();
        let mut pending = addrs.iter();
        loop {
            if let Some(addr) = pending.next() {
                let (endpoint, config, addr, agent) = (
                    endpoint.clone(),
                    config.clone(),
                    addr.clone(),
                    agent.to_string(),
                );
                attempts.spawn(
                    async move { Self::connect_one(&endpoint, config, &addr, &agent).await },
                );
            }
            if attempts.is_empty() {
                break;
            }
            let finished = if pending.len() > 0 {
                match tokio::time::timeout(FAILOVER_STAGGER, attempts.join_next()).await {
                    Ok(done) => done,
                    // Nothing yet: start the next address alongside.
                    Err(_) => continue,
                }
            } else {
                attempts.join_next().await
            };
            match finished {
                Some(Ok(Ok(client))) => return Ok(client),
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(NetError::Connect(format!(
                        "connection attempt failed: {e}"
                    )));
                }
                None => break,
            }
        }
        Err(first_error.unwrap_or_else(|| {
            NetError::Connect("no master address configured; pass --master host:port".into())
        }))
    }

    async fn connect_one(
        endpoint: &quinn::Endpoint,
        config: Option<quinn::ClientConfig>,
        addr: &str,
        agent: &str,
    ) -> Result<Client, NetError> {
        let sock = resolve(addr, 7443).await?;
        let attempt = async {
            let connecting = match config {
                Some(c) => endpoint.connect_with(c, sock, MASTER_SERVER_NAME),
                None => endpoint.connect(sock, MASTER_SERVER_NAME),
            }
            .map_err(|e| NetError::Connect(format!("cannot connect to {addr}: {e}")))?;
            let conn = connecting.await?;
            let hello = Request::Hello {
                version: PROTOCOL_VERSION,
                agent: agent.to_string(),
            };
            match call(&conn, &hello).await? {
                Response::Hello { version, identity, masters } if version == PROTOCOL_VERSION => {
                    Ok(Client { conn, endpoint: endpoint.clone(), addr: addr.to_string(), hello: HelloInfo { identity, masters } })
                }
                Response::Hello { version, .. } => Err(NetError::Unexpected(format!(
                    "master at {addr} speaks protocol version {version}, this build speaks {PROTOCOL_VERSION}; upgrade the older side"
                ))),
                other => Err(NetError::Unexpected(format!("{other:?}"))),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Connect(format!(
                "no master answers at {addr} — is `flotilla master` running there, and is UDP port {} reachable?",
                sock.port()
            ))),
        }
    }

    /// One request, one response.
    pub async fn call(&self, req: &Request) -> Result<Response, NetError> {
        call(&self.conn, req).await
    }

    /// Opens a stream and sends a request, for streaming responses.
    pub async fn open(
        &self,
        req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        write_frame(&mut send, req).await?;
        Ok((send, recv))
    }
}

/// Writes a file atomically (temporary file, fsync, rename), readable only by
/// its owner, creating missing directories as private ones: keys and
/// credentials live in these files.
pub fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

/// [`write_private_file`] for bytes (backups).
pub fn write_private_bytes(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use crate::perms;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        perms::create_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(perms::FILE_MODE)
        .open(&tmp)?;
    // A temporary file left by a crash keeps its old mode when reopened.
    f.set_permissions(std::fs::Permissions::from_mode(perms::FILE_MODE))?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
