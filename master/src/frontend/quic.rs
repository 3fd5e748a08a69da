//! The QUIC front end. Each connection's caller is read from its verified
//! client certificate, and its protocol from its ALPN (clients' or the
//! masters' own, see [`crate::raft::rpc_server`]); each bidirectional
//! stream carries one request, translated into a verb of the [`ApiServer`]
//! and answered in frames.

use crate::apiserver::{ApiServer, Caller, ModuleUpload};
use crate::raft::rpc_server::{self, Protocol};
use crate::store::TokenUsage;
use flotilla_api::identity::Identity;
use flotilla_api::net::{read_frame, write_encoded, NetError, CLIENT_STREAMS};
use flotilla_api::protocol::{
    encode_frame, list_frames, ApiError, ErrorCode, LogOptions, Request, Response, WatchOptions,
    LIST_FRAME_BYTES, MAX_FRAME, MODULE_CHUNK, PROTOCOL_VERSION,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A request must arrive this soon after its stream opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a user's open watch checks that the user may still watch.
const USER_RECHECK: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` fires.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    api: ApiServer,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let api = api.clone();
        let shutdown = shutdown.clone();
        let t = tracker.clone();
        tracker.spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn, api, shutdown, t).await,
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
        });
    }
}

/// Who a connection is: the identity its verified client certificate names.
pub fn caller_of(conn: &quinn::Connection) -> Caller {
    let certs = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
            .ok()
    });
    match certs.as_deref().and_then(|c| c.first()) {
        // TLS verified the chain against the cluster CA; the name inside says who it is.
        Some(leaf) => match Identity::from_cert_der(leaf.as_ref()) {
            Ok(id) => Caller::from(id),
            Err(e) => {
                tracing::warn!(error = %e, "certificate names no identity; treating caller as anonymous");
                Caller::Anonymous
            }
        },
        None => Caller::Anonymous,
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    api: ApiServer,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let caller = Arc::new(caller_of(&conn));
    if !matches!(*caller, Caller::Node(_) | Caller::Anonymous) {
        // Nodes are many and need few streams; people and masters, the other way round.
        conn.set_max_concurrent_bi_streams(CLIENT_STREAMS.into());
    }
    let protocol = Protocol::of(&conn);
    let node_name = caller.node().map(String::from);
    if let Some(n) = &node_name {
        api.nodes.insert(n, conn.clone());
        api.heartbeats.beat(n);
    }
    tracing::debug!(remote = %conn.remote_address(), caller = %caller, "connection");
    let hello = Arc::new(AtomicBool::new(false));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = conn.accept_bi() => s,
        };
        let (send, recv) = match stream {
            Ok(s) => s,
            Err(_) => break,
        };
        let (api, caller, hello, t) = (api.clone(), caller.clone(), hello.clone(), tracker.clone());
        tracker.spawn(async move {
            serve_stream(send, recv, &api, &caller, protocol, &hello, &t).await
        });
    }
    if let Some(n) = &node_name {
        api.nodes.remove(n, &conn);
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    api: &ApiServer,
    caller: &Arc<Caller>,
    protocol: Protocol,
    hello: &AtomicBool,
    tracker: &TaskTracker,
) {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Request>(&mut recv)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(NetError::Frame(e))) => {
            let err = ApiError::new(
                ErrorCode::Invalid,
                format!("bad request frame: {e}; is the client the same Flotilla version?"),
            );
            return finish(send, Err(err)).await;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    if let Err(e) = rpc_server::check(protocol, caller, &req) {
        return finish(send, Err(e)).await;
    }
    // A user may do what its User object says now, if it still exists.
    let resolved;
    let caller = if let Caller::User { .. } = **caller {
        match api.resolve(caller) {
            Ok(c) => {
                resolved = Arc::new(c);
                &resolved
            }
            Err(e) => return finish(send, Err(e)).await,
        }
    } else {
        caller
    };
    let req = match req {
        // A watch stays open as long as its client does (a node's, as long
        // as the node is connected): it gets a task of its own, sized for a
        // watch rather than for the largest request. At thousands of nodes
        // the difference was about 10 KiB a node.
        Request::Watch(opts) if hello.load(Ordering::Relaxed) => {
            let (api, caller) = (api.clone(), caller.clone());
            tracker.spawn(async move {
                let answered = watch_events(&mut send, &api, &caller, opts).await;
                finish(send, answered).await;
                drop(recv);
            });
            return;
        }
        req => req,
    };
    let answered = handle(req, &mut send, &mut recv, api, caller, hello).await;
    finish(send, answered).await;
}

/// Ends an answer: the error, if there is one, then the end of the stream.
async fn finish(mut send: quinn::SendStream, answered: Result<(), ApiError>) {
    if let Err(e) = answered {
        let _ = reply(&mut send, Response::Error(e)).await;
    }
    let _ = send.finish();
}

/// Streams the events of a watch until the client stops reading.
async fn watch_events(
    send: &mut quinn::SendStream,
    api: &ApiServer,
    caller: &Caller,
    opts: WatchOptions,
) -> Result<(), ApiError> {
    let mut watch = api.watch(caller, opts).await?;
    // A user's watch ends once the user is revoked or deleted.
    let mut recheck = tokio::time::interval(USER_RECHECK);
    recheck.tick().await;
    loop {
        let ev = tokio::select! {
            ev = watch.next() => ev?,
            _ = send.stopped() => return Ok(()),
            _ = recheck.tick(), if matches!(caller, Caller::User { .. }) => {
                api.resolve(caller)?;
                continue;
            }
        };
        // One event per frame, and an event always fits: its object is at
        // most MAX_OBJECT_SIZE (1.5 MiB, checked when it is written), well
        // inside MAX_FRAME (4 MiB).
        reply(send, Response::Event(ev)).await?;
    }
}

/// Writes one answer. The answer is encoded before the first await, so
/// that a task which keeps writing (a node's watch, open as long as its
/// node is connected) keeps room for the bytes being sent rather than for
/// the largest `Response`: a watch's task took 3.6 KiB before, and a
/// master has one for each of thousands of nodes.
fn reply(
    send: &mut quinn::SendStream,
    r: Response,
) -> impl std::future::Future<Output = Result<(), ApiError>> + '_ {
    let unavailable = |e: NetError| ApiError::new(ErrorCode::Unavailable, e.to_string());
    let frame = encode_frame(&r).map_err(|e| unavailable(e.into()));
    async move { write_encoded(send, &frame?).await.map_err(unavailable) }
}

/// Translates one request into the core's verbs and writes the answer.
/// The verbs' futures are boxed, but for the long-lived ones (watches,
/// lists, log follows): a node's watch stays open for as long as the node
/// is connected, and at thousands of nodes the room a stream's future keeps
/// for the largest verb would add up.
async fn handle(
    req: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    api: &ApiServer,
    caller: &Caller,
    hello: &AtomicBool,
) -> Result<(), ApiError> {
    if let Request::Hello { version, .. } = &req {
        if *version != PROTOCOL_VERSION {
            return Err(ApiError::new(
                ErrorCode::VersionMismatch,
                format!("this master speaks protocol {PROTOCOL_VERSION}, the client {version}; upgrade the older side"),
            ));
        }
        hello.store(true, Ordering::Relaxed);
        return reply(
            send,
            Response::Hello {
                version: PROTOCOL_VERSION,
                identity: caller.to_string(),
                masters: api.masters(),
            },
        )
        .await;
    }
    if !hello.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "the connection must open with a Hello request",
        ));
    }
    let answer = match req {
        Request::Hello { .. } => Response::Ok,
        Request::Join {
            token,
            node_name,
            csr_pem,
        } => Box::pin(api.join(caller, &token, &node_name, &csr_pem)).await?,
        Request::JoinMaster {
            token,
            node_id,
            addr,
        } => Box::pin(api.join_master(caller, &token, node_id, &addr)).await?,
        Request::Create(obj) => Response::Object(Box::pin(api.create(caller, obj)).await?),
        Request::Update(obj) => Response::Object(Box::pin(api.update(caller, obj)).await?),
        Request::DryRun {
            object,
            update,
            modules,
        } => Response::Object(Box::pin(api.dry_run(caller, object, update, &modules)).await?),
        Request::UpdateStatus(obj) => {
            Response::Object(Box::pin(api.update_status(caller, obj)).await?)
        }
        Request::UpdateStatuses(objs) => {
            Response::Statuses(Box::pin(api.update_statuses(caller, objs)).await?)
        }
        Request::Get {
            kind,
            namespace,
            name,
            stale,
        } => Response::Object(Box::pin(api.get(caller, kind, &namespace, &name, stale)).await?),
        Request::RevealSecret {
            namespace,
            name,
            stale,
        } => Response::Object(Box::pin(api.reveal_secret(caller, &namespace, &name, stale)).await?),
        Request::List(opts) => {
            let (revision, items) = api.list(caller, &opts).await?;
            let answer = Response::List { revision, items };
            check_one_frame(&answer)?;
            answer
        }
        Request::ListStream(opts) => {
            // One read of the store, sent in as many frames as it takes.
            let (revision, items) = api.list(caller, &opts).await?;
            for items in list_frames(items, LIST_FRAME_BYTES) {
                reply(send, Response::List { revision, items }).await?;
            }
            Response::End
        }
        Request::Delete {
            kind,
            namespace,
            name,
            resource_version,
        } => Response::Object(
            api.delete(caller, kind, &namespace, &name, resource_version)
                .await?,
        ),
        Request::DeleteWith {
            kind,
            namespace,
            name,
            resource_version,
            propagation,
        } => Response::Object(
            api.delete_with(
                caller,
                kind,
                &namespace,
                &name,
                resource_version,
                propagation,
            )
            .await?,
        ),
        Request::Watch(opts) => return Box::pin(watch_events(send, api, caller, opts)).await,
        Request::PutModule {
            digest,
            size,
            source,
        } => {
            let existed = match api.put_module(caller, &digest, size, source)? {
                ModuleUpload::Stored => true,
                ModuleUpload::Wanted(upload) => {
                    // Ask for the bytes only now, so an existing module costs no transfer.
                    reply(send, Response::Ok).await?;
                    let existed = Box::pin(upload.receive(recv)).await?;
                    if !existed {
                        // Compiled for the nodes now, before a pod asks.
                        let (api, digest) = (api.clone(), digest.clone());
                        tokio::spawn(async move {
                            api.code.clone().precompile_for_nodes(&api, &digest).await;
                        });
                    }
                    existed
                }
            };
            Response::ModuleStored {
                digest,
                size,
                existed,
            }
        }
        Request::GetCode {
            digest,
            target,
            fingerprint,
        } => {
            let (sha256, code) = api.get_code(caller, &digest, &target, &fingerprint).await?;
            reply(
                send,
                Response::Code {
                    sha256,
                    size: code.len() as u64,
                },
            )
            .await?;
            for piece in code.chunks(MODULE_CHUNK) {
                reply(send, Response::Chunk(piece.to_vec())).await?;
            }
            Response::End
        }
        Request::GetModule { digest } => {
            // A chunk at a time from the store: a download holds one chunk
            // in memory, however big the module and however slow the node.
            let mut reader = api.get_module(caller, &digest)?;
            while let Some(chunk) = reader.next_chunk().map_err(crate::apiserver::store_err)? {
                if chunk.len() <= MODULE_CHUNK {
                    reply(send, Response::Chunk(chunk)).await?;
                } else {
                    for piece in chunk.chunks(MODULE_CHUNK) {
                        reply(send, Response::Chunk(piece.to_vec())).await?;
                    }
                }
            }
            Response::End
        }
        req @ (Request::Logs { .. } | Request::PodLogs(_)) => {
            let opts = LogOptions::of(&req).unwrap_or_default();
            let mut logs = api.logs(caller, &opts).await?;
            loop {
                let frame = tokio::select! {
                    f = logs.next() => f?,
                    _ = send.stopped() => return Ok(()),
                };
                match frame {
                    Some(r) => {
                        let end = matches!(r, Response::End | Response::Error(_));
                        reply(send, r).await?;
                        if end {
                            return Ok(());
                        }
                    }
                    None => break Response::End,
                }
            }
        }
        Request::Heartbeat { node } => {
            api.heartbeat(caller, &node)?;
            Response::Ok
        }
        Request::CreateToken {
            ttl_seconds,
            description,
            master,
        } => {
            let usage = if master {
                TokenUsage::Master
            } else {
                TokenUsage::NodeCounted {
                    name_prefix: String::new(),
                    max_uses: None,
                    uses: 0,
                }
            };
            Box::pin(token(api, caller, ttl_seconds, description, usage)).await?
        }
        Request::CreateNodeToken {
            ttl_seconds,
            description,
            node_name,
        } => {
            let usage = TokenUsage::NodeNamed(node_name);
            Box::pin(token(api, caller, ttl_seconds, description, usage)).await?
        }
        Request::Raft { rpc, payload } => {
            Response::Raft(Box::pin(api.raft(caller, rpc, &payload)).await?)
        }
        Request::Snapshot => {
            let bytes = Box::pin(api.backup(caller)).await?;
            for chunk in bytes.chunks(MODULE_CHUNK) {
                reply(send, Response::Chunk(chunk.to_vec())).await?;
            }
            Response::End
        }
        Request::ListTokens => Response::Tokens(Box::pin(api.list_tokens(caller)).await?),
        Request::RevokeToken { id } => {
            Box::pin(api.revoke_token(caller, &id)).await?;
            Response::Ok
        }
        Request::Version => Response::Version {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
        },
        Request::ClusterStatus => {
            Response::ClusterStatus(Box::pin(api.cluster_status(caller)).await?)
        }
        Request::AddMaster { node_id, addr } => {
            Box::pin(api.add_master(caller, node_id, &addr)).await?;
            Response::Ok
        }
        Request::RemoveMaster { node_id } => {
            Box::pin(api.remove_master(caller, node_id)).await?;
            Response::Ok
        }
        Request::RenewCertificate { csr_pem } => {
            let (cert_pem, ca_pem) = Box::pin(api.renew(caller, &csr_pem)).await?;
            Response::Renewed { cert_pem, ca_pem }
        }
        Request::CreateLimitedToken {
            ttl_seconds,
            description,
            name_prefix,
            max_uses,
        } => {
            let usage = TokenUsage::NodeCounted {
                name_prefix,
                max_uses,
                uses: 0,
            };
            Box::pin(token(api, caller, ttl_seconds, description, usage)).await?
        }
        Request::CreateUser { user, csr_pem } => {
            Box::pin(api.create_user(caller, user, &csr_pem)).await?
        }
        Request::RevokeUser { name } => {
            Response::Object(Box::pin(api.revoke_user(caller, &name)).await?)
        }
        Request::Certificates => Response::Certificates(api.certificates(caller)?),
        _ => {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                "this master does not serve that request",
            ))
        }
    };
    reply(send, answer).await
}

async fn token(
    api: &ApiServer,
    caller: &Caller,
    ttl_seconds: u64,
    description: String,
    usage: TokenUsage,
) -> Result<Response, ApiError> {
    let (token, expires) = api
        .create_token(caller, Duration::from_secs(ttl_seconds), description, usage)
        .await?;
    Ok(Response::Token { token, expires })
}

/// Refuses a one-frame `List` answer that would not fit in its frame, with
/// what to do instead (older clients list this way; newer ones stream).
fn check_one_frame(answer: &Response) -> Result<(), ApiError> {
    let size = postcard::serialize_with_flavor(answer, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX);
    if size > MAX_FRAME {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the list is {size} bytes, more than one answer carries ({MAX_FRAME}); \
                 upgrade this client (newer ones stream lists), or narrow the list with a namespace or a label selector"
            ),
        ));
    }
    Ok(())
}
