//! The API service's QUIC front end. Each connection's caller is read from
//! its verified client certificate; each bidirectional stream carries one
//! request, checked by [`crate::authz`] and answered from the store.

use crate::authz::{authorize, authorize_pod_status, check_node_labels, node_may_read, Caller};
use crate::lifecycle::Heartbeats;
use crate::nodes::NodeConnections;
use crate::pki::Pki;
use crate::raft::Cluster;
use crate::store::{
    Command, Outcome, Store, StoreError, TokenRecord, TokenUsage, UPLOAD_CHUNK, UPLOAD_PIECE,
};
use flotilla_api::identity::{Identity, JoinToken};
use flotilla_api::net::{read_frame, write_frame, NetError};
use flotilla_api::objects::{is_digest, module_name, ModuleSpec};
use flotilla_api::protocol::{
    list_frames, ApiError, ErrorCode, EventType, ListOptions, RaftRpc, Request, Response,
    WatchOptions, LIST_FRAME_BYTES, MAX_FRAME, MAX_MODULE_SIZE, MODULE_CHUNK, PROTOCOL_VERSION,
};
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Module, Object, ObjectMeta};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What request handlers share.
pub struct Context {
    pub store: Store,
    pub pki: Arc<Pki>,
    /// This master's own addresses (what it advertises).
    pub advertise: Vec<String>,
    pub nodes: NodeConnections,
    pub heartbeats: Heartbeats,
    /// This master's raft and its links to the other masters: writes,
    /// linearizable reads and [`Request::Raft`] messages go through it.
    pub cluster: Cluster,
}

impl Context {
    /// Every master's address, the leader's first (what hellos and joins hand out).
    fn masters(&self) -> Vec<String> {
        let mut all = self.cluster.masters();
        for a in &self.advertise {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The read barrier before a read: linearizable unless `stale`.
    async fn before_read(&self, stale: bool) -> Result<(), ApiError> {
        // A master whose state differs from the others' serves no reads at
        // all, backups included (see `raft::check`).
        self.store.checks().serving().map_err(store_err)?;
        if stale {
            return Ok(());
        }
        self.cluster.linearize().await.map_err(store_err)
    }
}

/// A request must arrive this soon after its stream opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Join tokens live this long unless asked otherwise (as kubeadm's do).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Accepts connections until `shutdown` fires.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let t = tracker.clone();
        tracker.spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn, ctx, shutdown, t).await,
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
        });
    }
}

fn caller_of(conn: &quinn::Connection) -> Caller {
    let certs = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
            .ok()
    });
    match certs.as_deref().and_then(|c| c.first()) {
        // TLS verified the chain against the cluster CA; the name inside says who it is.
        Some(leaf) => match Identity::from_cert_der(leaf.as_ref()) {
            Ok(id) => Caller::Known(id),
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
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let caller = Arc::new(caller_of(&conn));
    let node_name = match &*caller {
        Caller::Known(Identity::Node(n)) => Some(n.clone()),
        _ => None,
    };
    if let Some(n) = &node_name {
        ctx.nodes.insert(n, conn.clone());
        ctx.heartbeats.beat(n);
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
        let (ctx, caller, hello) = (ctx.clone(), caller.clone(), hello.clone());
        tracker.spawn(async move { serve_stream(send, recv, &ctx, &caller, &hello).await });
    }
    if let Some(n) = &node_name {
        ctx.nodes.remove(n, &conn);
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: &Context,
    caller: &Caller,
    hello: &AtomicBool,
) {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Request>(&mut recv)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(NetError::Frame(e))) => {
            let err = ApiError::new(
                ErrorCode::Invalid,
                format!("bad request frame: {e}; is the client the same Flotilla version?"),
            );
            let _ = write_frame(&mut send, &Response::Error(err)).await;
            let _ = send.finish();
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    let result = handle(req, &mut send, &mut recv, ctx, caller, hello).await;
    if let Err(e) = result {
        let _ = write_frame(&mut send, &Response::Error(e)).await;
    }
    let _ = send.finish();
}

fn store_err(e: StoreError) -> ApiError {
    let code = match &e {
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        StoreError::Conflict { .. } => ErrorCode::Conflict,
        StoreError::TooOld { .. } => ErrorCode::TooOld,
        StoreError::Invalid(_) => ErrorCode::Invalid,
        StoreError::Unavailable(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// Writes a command through raft, via the leader wherever it is.
async fn apply(ctx: &Context, cmd: Command) -> Result<Outcome, ApiError> {
    ctx.cluster.write(cmd).await.map_err(store_err)
}

async fn reply(send: &mut quinn::SendStream, r: Response) -> Result<(), ApiError> {
    write_frame(send, &r)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Invalid, msg)
}

async fn handle(
    req: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    ctx: &Context,
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
                masters: ctx.masters(),
            },
        )
        .await;
    }
    if !hello.load(Ordering::Relaxed) {
        return Err(invalid("the connection must open with a Hello request"));
    }
    authorize(caller, &req)?;
    match req {
        Request::Hello { .. } => Ok(()),
        Request::Join {
            token,
            node_name,
            csr_pem,
        } => {
            let r = join(ctx, &token, &node_name, &csr_pem).await?;
            reply(send, r).await
        }
        Request::Create(obj) => {
            if let (Caller::Known(Identity::Node(me)), Object::Node(n)) = (caller, &obj) {
                check_node_labels(me, n, None)?;
            }
            let obj = prepare_create(ctx, caller, obj)?;
            match apply(ctx, Command::Create { object: obj }).await? {
                Outcome::Object(o) => reply(send, Response::Object(o)).await,
                other => Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("unexpected outcome {other:?}"),
                )),
            }
        }
        Request::Update(mut obj) => {
            check_valid(&obj)?;
            let stored = ctx
                .store
                .get(obj.kind(), &obj.meta().namespace, &obj.meta().name)
                .map_err(store_err)?;
            check_sizes(stored.as_ref(), &obj, false)?;
            if let (Caller::Known(Identity::Node(me)), Object::Node(n)) = (caller, &mut obj) {
                let stored = match ctx
                    .store
                    .get(Kind::Node, "", &n.metadata.name)
                    .map_err(store_err)?
                {
                    Some(Object::Node(stored)) => stored,
                    _ => return Err(not_found(Kind::Node, "", &n.metadata.name)),
                };
                check_node_labels(me, n, Some(&stored))?;
                // The check holds for the version it read: write only over that one.
                if n.metadata.resource_version == 0 {
                    n.metadata.resource_version = stored.metadata.resource_version;
                }
            }
            if let Object::Pod(p) = &obj {
                check_module(ctx, &p.spec.module)?;
                if let Some(Object::Pod(stored)) = ctx
                    .store
                    .get(Kind::Pod, &p.metadata.namespace, &p.metadata.name)
                    .map_err(store_err)?
                {
                    check_pod_update(&stored, p)?;
                }
            }
            let rv = obj.meta().resource_version;
            let out = apply(
                ctx,
                Command::Update {
                    object: obj,
                    expected_rv: (rv != 0).then_some(rv),
                    status_only: false,
                },
            )
            .await?;
            reply(send, outcome_object(out)?).await
        }
        Request::UpdateStatus(obj) => {
            // The checks of `prepare_status` hold for the version they read:
            // the write is a compare-and-swap on it, and is checked again
            // against a newer one (a pod rebound meanwhile is refused).
            let mut attempt = 0;
            let out = loop {
                let (prepared, rv) = prepare_status(ctx, caller, obj.clone())?;
                let cmd = Command::Update {
                    object: prepared,
                    expected_rv: Some(rv),
                    status_only: true,
                };
                match apply(ctx, cmd).await {
                    Err(e) if e.code == ErrorCode::Conflict && attempt < STATUS_RETRIES => {
                        attempt += 1;
                    }
                    other => break other?,
                }
            };
            reply(send, outcome_object(out)?).await
        }
        Request::Get {
            kind,
            namespace,
            name,
            stale,
        } => {
            ctx.before_read(stale).await?;
            match ctx.store.get(kind, &namespace, &name).map_err(store_err)? {
                Some(o) => {
                    check_node_read(ctx, caller, &o)?;
                    reply(send, Response::Object(o)).await
                }
                None => Err(not_found(kind, &namespace, &name)),
            }
        }
        Request::List(opts) => {
            ctx.before_read(opts.stale).await?;
            let (revision, mut items) = list(ctx, &opts)?;
            if let Some(view) = NodeView::of(ctx, caller)? {
                let mut kept = Vec::with_capacity(items.len());
                for o in items {
                    if view.may_read(&o)? {
                        kept.push(o);
                    }
                }
                items = kept;
            }
            let answer = Response::List { revision, items };
            check_one_frame(&answer)?;
            reply(send, answer).await
        }
        Request::ListStream(opts) => {
            // One read of the store, sent in as many frames as it takes.
            ctx.before_read(opts.stale).await?;
            let (revision, mut items) = list(ctx, &opts)?;
            if let Some(view) = NodeView::of(ctx, caller)? {
                let mut kept = Vec::with_capacity(items.len());
                for o in items {
                    if view.may_read(&o)? {
                        kept.push(o);
                    }
                }
                items = kept;
            }
            for items in list_frames(items, LIST_FRAME_BYTES) {
                reply(send, Response::List { revision, items }).await?;
            }
            reply(send, Response::End).await
        }
        Request::Delete {
            kind,
            namespace,
            name,
            resource_version,
        } => {
            let cmd = Command::Delete {
                kind,
                namespace,
                name,
                expected_rv: (resource_version != 0).then_some(resource_version),
            };
            match apply(ctx, cmd).await? {
                Outcome::Deleted(o) => reply(send, Response::Object(o)).await,
                other => Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("unexpected outcome {other:?}"),
                )),
            }
        }
        Request::Watch(opts) => watch(ctx, caller, opts, send).await,
        Request::PutModule {
            digest,
            size,
            source,
        } => put_module(ctx, &digest, size, source, send, recv).await,
        Request::GetModule { digest } => {
            if let Some(view) = NodeView::of(ctx, caller)? {
                if !view.uses(&digest)? {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "node {} may download only the modules of pods bound to it",
                            view.me
                        ),
                    ));
                }
            }
            // A chunk at a time from the store: a download holds one chunk
            // in memory, however big the module and however slow the node.
            let mut reader = ctx
                .store
                .module_reader(&digest)
                .map_err(store_err)?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NotFound,
                        format!("module {digest} is not stored on this master"),
                    )
                })?;
            while let Some(chunk) = reader.next_chunk().map_err(store_err)? {
                if chunk.len() <= MODULE_CHUNK {
                    reply(send, Response::Chunk(chunk)).await?;
                } else {
                    for piece in chunk.chunks(MODULE_CHUNK) {
                        reply(send, Response::Chunk(piece.to_vec())).await?;
                    }
                }
            }
            reply(send, Response::End).await
        }
        Request::Logs {
            namespace,
            name,
            follow,
            tail_lines,
        } => {
            logs(
                ctx,
                send,
                caller,
                Request::Logs {
                    namespace,
                    name,
                    follow,
                    tail_lines,
                },
            )
            .await
        }
        Request::Heartbeat { node } => {
            ctx.heartbeats.beat(&node);
            // The leader tracks heartbeats; pass this one on without making
            // the node wait for it.
            let cluster = ctx.cluster.clone();
            tokio::spawn(async move { cluster.relay_heartbeat(&node).await });
            reply(send, Response::Ok).await
        }
        Request::CreateToken {
            ttl_seconds,
            description,
            master,
        } => {
            let usage = if master {
                TokenUsage::Master
            } else {
                TokenUsage::Node
            };
            create_token(ctx, send, ttl_seconds, description, usage).await
        }
        Request::CreateNodeToken {
            ttl_seconds,
            description,
            node_name,
        } => {
            if !flotilla_api::manifest::is_dns_subdomain(&node_name) {
                return Err(invalid(format!(
                    "node name {node_name:?} must be lowercase letters, digits, '-' and '.'"
                )));
            }
            let usage = TokenUsage::NodeNamed(node_name);
            create_token(ctx, send, ttl_seconds, description, usage).await
        }
        Request::Raft { rpc, payload } => {
            let answer = match rpc {
                RaftRpc::AppendEntries | RaftRpc::Vote | RaftRpc::InstallSnapshot => {
                    crate::raft::rpc::handle(ctx.cluster.raft(), rpc, &payload).await?
                }
                RaftRpc::StateHash | RaftRpc::StateDiffers | RaftRpc::CheckStates => {
                    crate::raft::check::serve(&ctx.cluster, &ctx.store, rpc, &payload).await?
                }
                _ => ctx.cluster.serve(&ctx.heartbeats, rpc, &payload).await?,
            };
            reply(send, Response::Raft(answer)).await
        }
        Request::JoinMaster {
            token,
            node_id,
            addr,
        } => {
            let r = join_master(ctx, &token, node_id, &addr).await?;
            reply(send, r).await
        }
        Request::Snapshot => {
            ctx.before_read(false).await?;
            let image = ctx.store.export().map_err(store_err)?;
            let bytes = crate::store::encode_backup(&image).map_err(store_err)?;
            for chunk in bytes.chunks(MODULE_CHUNK) {
                reply(send, Response::Chunk(chunk.to_vec())).await?;
            }
            reply(send, Response::End).await
        }
        Request::ClusterStatus => {
            reply(send, Response::ClusterStatus(ctx.cluster.status().await)).await
        }
        Request::AddMaster { node_id, addr } => {
            ctx.cluster
                .add_member(node_id, &addr)
                .await
                .map_err(store_err)?;
            reply(send, Response::Ok).await
        }
        Request::RemoveMaster { node_id } => {
            ctx.cluster
                .remove_member(node_id)
                .await
                .map_err(store_err)?;
            reply(send, Response::Ok).await
        }
        Request::RenewCertificate { csr_pem } => {
            let Caller::Known(identity) = caller else {
                return Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "renewing a certificate needs a valid one of this cluster",
                ));
            };
            let cert_pem = ctx
                .pki
                .sign_for(&csr_pem, identity)
                .map_err(|e| invalid(format!("certificate request: {e}")))?;
            tracing::info!(caller = %identity, "renewed a certificate");
            reply(
                send,
                Response::Renewed {
                    cert_pem,
                    ca_pem: ctx.pki.ca.key.cert_pem.clone(),
                },
            )
            .await
        }
        Request::Certificates => {
            let id = ctx.cluster.id();
            let mut all = ctx.pki.certificates(Some(id));
            for (peer, v) in ctx.cluster.network().peer_certificates() {
                if peer != id {
                    all.push(flotilla_api::protocol::CertificateStatus {
                        name: format!("master {peer} serving"),
                        not_before: v.not_before,
                        not_after: v.not_after,
                    });
                }
            }
            reply(send, Response::Certificates(all)).await
        }
        _ => Err(invalid("this master does not serve that request")),
    }
}

/// Creates a join token for `usage` and answers with it.
async fn create_token(
    ctx: &Context,
    send: &mut quinn::SendStream,
    ttl_seconds: u64,
    description: String,
    usage: TokenUsage,
) -> Result<(), ApiError> {
    let ttl = if ttl_seconds == 0 {
        DEFAULT_TOKEN_TTL
    } else {
        Duration::from_secs(ttl_seconds)
    };
    let (token, record) = new_token(&ctx.pki.ca_hash, description, ttl, usage);
    let expires = record.expires;
    apply(ctx, Command::PutToken { record }).await?;
    reply(
        send,
        Response::Token {
            token: token.to_string(),
            expires,
        },
    )
    .await
}

/// A pod's spec is fixed once created, as in Kubernetes, except that an
/// unbound pod may be bound once (that is how the binder places it).
fn check_pod_update(stored: &flotilla_api::Pod, new: &flotilla_api::Pod) -> Result<(), ApiError> {
    let mut before = stored.spec.clone();
    if before.node_name.is_none() {
        before.node_name = new.spec.node_name.clone();
    }
    if before == new.spec {
        Ok(())
    } else {
        Err(invalid(format!(
            "spec: the spec of pod {}/{} cannot change once created (only labels and annotations can); delete it and apply it again",
            stored.metadata.namespace, stored.metadata.name
        )))
    }
}

fn outcome_object(out: Outcome) -> Result<Response, ApiError> {
    match out {
        Outcome::Object(o) => Ok(Response::Object(o)),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected outcome {other:?}"),
        )),
    }
}

fn not_found(kind: Kind, namespace: &str, name: &str) -> ApiError {
    let where_ = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace}")
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "{} {name:?} not found{where_}",
            kind.as_str().to_lowercase()
        ),
    )
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

/// The object an update would store, near enough to weigh it: the store
/// keeps the stored status under a new spec and metadata, and the stored
/// spec and metadata under a new status (`store::rules::merge_update`).
fn as_stored(stored: &Object, incoming: &Object, status_only: bool) -> Object {
    match (stored, incoming) {
        (Object::Pod(old), Object::Pod(new)) if status_only => {
            let mut out = old.clone();
            out.status = new.status.clone();
            Object::Pod(out)
        }
        (Object::Pod(old), Object::Pod(new)) => {
            let mut out = new.clone();
            out.status = old.status.clone();
            Object::Pod(out)
        }
        (Object::Node(old), Object::Node(new)) if status_only => {
            let mut out = old.clone();
            out.status = new.status.clone();
            Object::Node(out)
        }
        (Object::Node(old), Object::Node(new)) => {
            let mut out = new.clone();
            out.status = old.status.clone();
            Object::Node(out)
        }
        _ => incoming.clone(),
    }
}

/// Admits a write by size: the object sent (a raft entry carries it) and
/// the object the store would keep must both be within
/// [`MAX_OBJECT_SIZE`](flotilla_api::manifest::MAX_OBJECT_SIZE), so that one
/// object always fits in one frame — as a `Get` answer, a watch event, a
/// raft entry. `TooLarge` names the object, its size, the limit and what to do.
fn check_sizes(
    stored: Option<&Object>,
    incoming: &Object,
    status_only: bool,
) -> Result<(), ApiError> {
    let too_large = |e: flotilla_api::manifest::ObjectTooLarge| {
        ApiError::new(ErrorCode::TooLarge, e.to_string())
    };
    flotilla_api::manifest::check_size(incoming).map_err(too_large)?;
    if let Some(stored) = stored {
        flotilla_api::manifest::check_size(&as_stored(stored, incoming, status_only))
            .map_err(too_large)?;
    }
    Ok(())
}

fn check_valid(obj: &Object) -> Result<(), ApiError> {
    let errs = flotilla_api::manifest::validate(obj);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

fn check_module(ctx: &Context, module: &str) -> Result<(), ApiError> {
    if !is_digest(module) {
        return Err(invalid(format!(
            "spec.module: {module:?} is not an uploaded module digest; `flotilla apply` uploads local .wasm files and rewrites the path"
        )));
    }
    match ctx.store.get(Kind::Module, "", &module_name(module)).map_err(store_err)? {
        Some(_) => Ok(()),
        None => Err(invalid(format!("spec.module: module {module} is not uploaded; apply the manifest with a local path so the CLI uploads it"))),
    }
}

fn prepare_create(ctx: &Context, caller: &Caller, mut obj: Object) -> Result<Object, ApiError> {
    check_valid(&obj)?;
    match &mut obj {
        Object::Pod(p) => {
            check_module(ctx, &p.spec.module)?;
            p.status = Default::default();
        }
        Object::Node(_) => {}
        Object::Module(_) => {
            return Err(invalid(
                "modules are created by uploading them (`flotilla apply` does it)",
            ))
        }
        _ => return Err(invalid("this kind cannot be created")),
    }
    let m = obj.meta_mut();
    m.uid = new_uid();
    m.creation_timestamp = Some(Time::now());
    m.resource_version = 0;
    m.generation = 0;
    check_sizes(None, &obj, false)?;
    tracing::debug!(caller = %caller, key = %obj.key(), "create");
    Ok(obj)
}

/// How often a status write is tried again when the object changed
/// between its checks and its write.
const STATUS_RETRIES: u32 = 5;

/// Checks a status write against the stored object and gives the object to
/// write and the resourceVersion the checks were made against.
fn prepare_status(ctx: &Context, caller: &Caller, obj: Object) -> Result<(Object, u64), ApiError> {
    let m = obj.meta().clone();
    let stored = ctx
        .store
        .get(obj.kind(), &m.namespace, &m.name)
        .map_err(store_err)?
        .ok_or_else(|| not_found(obj.kind(), &m.namespace, &m.name))?;
    let rv = stored.meta().resource_version;
    check_sizes(Some(&stored), &obj, true)?;
    let by_node = matches!(caller, Caller::Known(Identity::Node(_)));
    let obj = match (obj, stored) {
        (Object::Pod(mut new), Object::Pod(old)) => {
            authorize_pod_status(caller, &old)?;
            if by_node && m.uid.is_empty() {
                // Without a uid the report could land on a new pod of the same name.
                return Err(invalid(format!(
                    "metadata.uid: a node's status report for pod {}/{} must carry the pod's uid",
                    m.namespace, m.name
                )));
            }
            if !m.uid.is_empty() && m.uid != old.metadata.uid {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "pod {}/{} was replaced (uid changed); drop this status",
                        m.namespace, m.name
                    ),
                ));
            }
            // Conditions the master set (PodScheduled) survive a node's report that lacks them.
            for c in &old.status.conditions {
                if new.status.condition(&c.type_).is_none() {
                    new.status.conditions.push(c.clone());
                }
            }
            Object::Pod(new)
        }
        (Object::Node(mut new), Object::Node(old)) => {
            if matches!(caller, Caller::Known(Identity::Node(_))) {
                // Readiness is the master's judgement, not the node's claim.
                new.status.ready = old.status.ready;
                new.status.reason = old.status.reason;
                new.status.message = old.status.message;
                new.status.last_transition_time = old.status.last_transition_time;
            }
            Object::Node(new)
        }
        (o, _) => o,
    };
    Ok((obj, rv))
}

/// What a node caller may read; None for every other caller.
struct NodeView<'a> {
    me: String,
    store: &'a Store,
    /// The digests of the modules of the pods bound to the node, listed
    /// only when a module is asked about: reading a Node or a pod needs
    /// no list of every pod.
    modules: std::cell::OnceCell<Result<std::collections::HashSet<String>, ApiError>>,
}

impl<'a> NodeView<'a> {
    fn of(ctx: &'a Context, caller: &Caller) -> Result<Option<NodeView<'a>>, ApiError> {
        let Caller::Known(Identity::Node(me)) = caller else {
            return Ok(None);
        };
        Ok(Some(NodeView {
            me: me.clone(),
            store: &ctx.store,
            modules: std::cell::OnceCell::new(),
        }))
    }

    fn uses(&self, digest: &str) -> Result<bool, ApiError> {
        let modules = self.modules.get_or_init(|| {
            let (_, pods) = self
                .store
                .list(Kind::Pod, None, &Selector::default())
                .map_err(store_err)?;
            Ok(pods
                .iter()
                .filter_map(|o| o.as_pod())
                .filter(|p| p.spec.node_name.as_deref() == Some(self.me.as_str()))
                .map(|p| p.spec.module.clone())
                .collect())
        });
        match modules {
            Ok(m) => Ok(m.contains(digest)),
            Err(e) => Err(e.clone()),
        }
    }

    fn may_read(&self, o: &Object) -> Result<bool, ApiError> {
        if let Object::Module(m) = o {
            return self.uses(&m.spec.digest);
        }
        Ok(node_may_read(&self.me, o, &|_| false))
    }
}

/// A node reads only its own Node, its pods and their modules.
fn check_node_read(ctx: &Context, caller: &Caller, o: &Object) -> Result<(), ApiError> {
    match NodeView::of(ctx, caller)? {
        Some(view) if !view.may_read(o)? => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "node {} may read only its own Node, the pods bound to it and their modules",
                view.me
            ),
        )),
        _ => Ok(()),
    }
}

fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn list(ctx: &Context, opts: &ListOptions) -> Result<(u64, Vec<Object>), ApiError> {
    let selector = Selector::parse(&opts.label_selector).map_err(|e| invalid(e.to_string()))?;
    let kind = opts.kind.ok_or_else(|| invalid("a list needs a kind"))?;
    let (rev, items) = ctx
        .store
        .list(kind, opts.namespace.as_deref(), &selector)
        .map_err(store_err)?;
    let items = items
        .into_iter()
        .filter(|o| on_node(o, opts.node_name.as_deref()))
        .collect();
    Ok((rev, items))
}

fn on_node(o: &Object, node: Option<&str>) -> bool {
    match (node, o) {
        (None, _) => true,
        (Some(n), Object::Pod(p)) => p.spec.node_name.as_deref() == Some(n),
        (Some(_), _) => false,
    }
}

fn matches(o: &Object, opts: &ListOptions, selector: &Selector) -> bool {
    opts.kind.is_none_or(|k| k == o.kind())
        && opts
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == o.meta().namespace)
        && selector.matches(&o.meta().labels)
}

async fn watch(
    ctx: &Context,
    caller: &Caller,
    opts: WatchOptions,
    send: &mut quinn::SendStream,
) -> Result<(), ApiError> {
    let node = match caller {
        Caller::Known(Identity::Node(me)) => Some(me.clone()),
        _ => None,
    };
    let selector =
        Selector::parse(&opts.list.label_selector).map_err(|e| invalid(e.to_string()))?;
    let from = if opts.from_revision == 0 {
        ctx.store.revision().map_err(store_err)?
    } else {
        opts.from_revision
    };
    let mut w = ctx.store.watch(from).map_err(store_err)?;
    // An object that stops matching (e.g. its labels change) must still reach the watcher,
    // as a deletion: remember which keys this watch has delivered as present.
    let mut present = std::collections::HashSet::new();
    loop {
        let mut ev = tokio::select! {
            ev = w.next() => ev.map_err(store_err)?,
            _ = send.stopped() => return Ok(()),
        };
        let key = ev.object.key();
        let here = matches(&ev.object, &opts.list, &selector)
            && on_node(&ev.object, opts.list.node_name.as_deref())
            && match &node {
                // Modules are immutable and a node fetches them by digest:
                // only its Node and its pods reach its watches.
                Some(me) => node_may_read(me, &ev.object, &|_| false),
                None => true,
            };
        let deliver = match ev.kind {
            EventType::Deleted => present.remove(&key) || here,
            _ if here => {
                present.insert(key);
                true
            }
            _ => {
                ev.kind = EventType::Deleted;
                present.remove(&key)
            }
        };
        if deliver {
            // One event per frame, and an event always fits: its object is
            // at most MAX_OBJECT_SIZE (1.5 MiB, checked when it is written),
            // well inside MAX_FRAME (4 MiB).
            reply(send, Response::Event(ev)).await?;
        }
    }
}

async fn put_module(
    ctx: &Context,
    digest: &str,
    size: u64,
    source: String,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), ApiError> {
    if !is_digest(digest) {
        return Err(invalid(format!("{digest:?} is not a sha256:<hex> digest")));
    }
    if size > MAX_MODULE_SIZE {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("module is {size} bytes; the limit is {MAX_MODULE_SIZE}"),
        ));
    }
    if ctx
        .store
        .get(Kind::Module, "", &module_name(digest))
        .map_err(store_err)?
        .is_some()
    {
        return reply(
            send,
            Response::ModuleStored {
                digest: digest.to_string(),
                size,
                existed: true,
            },
        )
        .await;
    }
    // Ask for the bytes only now, so an existing module costs no transfer.
    reply(send, Response::Ok).await?;
    let module = Module {
        metadata: ObjectMeta {
            name: module_name(digest),
            uid: new_uid(),
            creation_timestamp: Some(Time::now()),
            ..ObjectMeta::default()
        },
        spec: ModuleSpec {
            digest: digest.to_string(),
            size,
            source,
        },
    };
    let existed = match upload(ctx, digest, size, module, recv).await? {
        Outcome::ModuleStored { existed } => existed,
        _ => false,
    };
    reply(
        send,
        Response::ModuleStored {
            digest: digest.to_string(),
            size,
            existed,
        },
    )
    .await
}

/// Receives a module's `size` bytes, checks them — the digest, then that
/// they are WebAssembly ([`crate::wasm`]) — and only then stores them
/// through raft: in one entry when small, else staged in [`UPLOAD_PIECE`]s
/// and committed, so no raft entry (nor message between masters) outgrows
/// a frame. Refused bytes leave nothing behind.
async fn upload(
    ctx: &Context,
    digest: &str,
    size: u64,
    module: Module,
    recv: &mut quinn::RecvStream,
) -> Result<Outcome, ApiError> {
    use sha2::Digest;
    // One copy of the module in memory, the only one: wasmparser validates
    // a whole binary (its streaming parser would hold every section but the
    // code whole, and a custom section, debug info say, is often most of a
    // big module), and nothing is staged before it passes. Reserved once
    // (size is at most MAX_MODULE_SIZE, checked by put_module), so growing
    // never copies it; the memory is touched only as bytes arrive, so it
    // follows what the client sends, not the size it claimed. Hashed as it
    // arrives.
    let mut bytes = Vec::with_capacity(size as usize);
    let mut sha = sha2::Sha256::new();
    while (bytes.len() as u64) < size {
        let start = bytes.len();
        let n = (size - start as u64).min(UPLOAD_PIECE as u64) as usize;
        bytes.resize(start + n, 0);
        recv.read_exact(&mut bytes[start..])
            .await
            .map_err(|e| invalid(format!("upload ended early: {e}")))?;
        sha.update(&bytes[start..]);
    }
    let actual = format!("sha256:{}", hex::encode(sha.finalize()));
    if actual != digest {
        return Err(invalid(format!(
            "uploaded bytes hash to {actual}, not {digest}; the file changed during upload?"
        )));
    }
    let bytes = check_wasm(&module.spec.source, digest, bytes).await?;
    if bytes.len() <= UPLOAD_CHUNK {
        return apply(ctx, Command::PutModule { module, bytes }).await;
    }
    let staged = async {
        // Pieces of whole stored chunks: the store keeps them as they come.
        for (i, chunk) in bytes.chunks(UPLOAD_PIECE).enumerate() {
            let cmd = Command::PutModuleChunk {
                digest: digest.to_string(),
                offset: (i * UPLOAD_PIECE) as u64,
                bytes: chunk.to_vec(),
            };
            apply(ctx, cmd).await?;
        }
        apply(ctx, Command::CommitModule { module }).await
    };
    let result = staged.await;
    if result.is_err() {
        // Best effort: a later upload of the same module starts over anyway.
        let _ = apply(
            ctx,
            Command::DiscardUpload {
                digest: digest.to_string(),
            },
        )
        .await;
    }
    result
}

/// Refuses bytes that are not a WebAssembly module or component, naming the
/// file they came from and how to build one. Validation is CPU-bound, so it
/// runs off the async threads; the bytes are handed back.
async fn check_wasm(source: &str, digest: &str, bytes: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    let (bytes, checked) = tokio::task::spawn_blocking(move || {
        let checked = crate::wasm::check(&bytes);
        (bytes, checked)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("checking the module: {e}")))?;
    match checked {
        Ok(_) => Ok(bytes),
        Err(e) => {
            let name = if source.is_empty() { digest } else { source };
            Err(invalid(format!(
                "{name} is not a WebAssembly module or component: {e}; \
                 build it with cargo build --target wasm32-wasip2"
            )))
        }
    }
}

/// Finds the master a node is connected to and opens the log stream there:
/// the first other master whose first answer is not an error (an error
/// means the node is not connected to it). Gives that first answer along.
async fn relay_logs(
    ctx: &Context,
    node: &str,
    req: &Request,
) -> Result<(quinn::SendStream, quinn::RecvStream, Response), ApiError> {
    for (id, addr) in ctx.cluster.peers() {
        let Ok((send, mut recv)) = ctx.cluster.open_on(id, &addr, req).await else {
            continue;
        };
        match read_frame::<Response>(&mut recv).await {
            Ok(Some(Response::Error(_))) | Ok(None) | Err(_) => continue,
            Ok(Some(first)) => return Ok((send, recv, first)),
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        format!("node {node} is not connected to any master; its logs stay on the node until it reconnects"),
    ))
}

async fn logs(
    ctx: &Context,
    send: &mut quinn::SendStream,
    caller: &Caller,
    req: Request,
) -> Result<(), ApiError> {
    let Request::Logs {
        namespace,
        name,
        follow,
        tail_lines,
    } = req
    else {
        return Ok(());
    };
    let pod = match ctx
        .store
        .get(Kind::Pod, &namespace, &name)
        .map_err(store_err)?
    {
        Some(Object::Pod(p)) => p,
        _ => return Err(not_found(Kind::Pod, &namespace, &name)),
    };
    // A pod that ended for good writes nothing more: following it would
    // only wait. (Its node ends such a stream too; this spares the wait for
    // what the master already knows.)
    let follow = follow && !pod.status.phase.is_terminal();
    let node = pod.spec.node_name.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("pod {name} is not bound to a node yet; it has no logs"),
        )
    })?;
    let req = Request::Logs {
        namespace,
        name,
        follow,
        tail_lines,
    };
    let (mut nsend, mut nrecv) = match ctx.nodes.get(&node) {
        Some(node_conn) => {
            let (mut nsend, nrecv) = node_conn
                .open_bi()
                .await
                .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("node {node}: {e}")))?;
            write_frame(&mut nsend, &req)
                .await
                .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("node {node}: {e}")))?;
            (nsend, nrecv)
        }
        // The node is connected to another master (or to none): ask the
        // others, unless this request already comes from one.
        None if !matches!(caller, Caller::Known(Identity::Master(_))) => {
            let (nsend, nrecv, first) = relay_logs(ctx, &node, &req).await?;
            let end = matches!(first, Response::End | Response::Error(_));
            reply(send, first).await?;
            if end {
                return Ok(());
            }
            (nsend, nrecv)
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("node {node} is not connected to this master"),
            ))
        }
    };
    let _ = nsend.finish();
    loop {
        let frame = tokio::select! {
            f = read_frame::<Response>(&mut nrecv) => f,
            _ = send.stopped() => return Ok(()),
        };
        match frame {
            Ok(Some(r)) => {
                let end = matches!(r, Response::End | Response::Error(_));
                reply(send, r).await?;
                if end {
                    return Ok(());
                }
            }
            Ok(None) => return reply(send, Response::End).await,
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!("node {node}: {e}"),
                ))
            }
        }
    }
}

async fn join(
    ctx: &Context,
    token: &str,
    node_name: &str,
    csr_pem: &str,
) -> Result<Response, ApiError> {
    if !flotilla_api::manifest::is_dns_subdomain(node_name) {
        return Err(invalid(format!(
            "node name {node_name:?} must be lowercase letters, digits, '-' and '.'"
        )));
    }
    let (token, usage) = check_token(ctx, token, TokenUsage::Node).await?;
    match usage {
        TokenUsage::NodeNamed(name) if name != node_name => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("join refused: this token is for node {name:?}, not {node_name:?}; join with --name {name}, or create a token with `flotilla token create`"),
            ));
        }
        // The admin said this machine takes the name over.
        TokenUsage::NodeNamed(_) => {}
        _ => claim_node_name(ctx, node_name).await?,
    }
    let cert_pem = ctx
        .pki
        .sign_for(csr_pem, &Identity::Node(node_name.to_string()))
        .map_err(|e| invalid(format!("certificate request: {e}")))?;
    tracing::info!(node = node_name, token = %token.id, "node joined");
    Ok(Response::Joined {
        cert_pem,
        ca_pem: ctx.pki.ca.key.cert_pem.clone(),
        masters: ctx.masters(),
    })
}

/// Binds `name` to the node that joins with it, by creating its Node object
/// through raft: of two joins under one name, one creates it and the other
/// is refused, and a name a node holds cannot be taken by another machine
/// with a join token (it would receive that node's pods and their secrets).
/// The name is free again once an admin deletes the Node.
async fn claim_node_name(ctx: &Context, name: &str) -> Result<(), ApiError> {
    let node = flotilla_api::Node {
        metadata: ObjectMeta {
            name: name.to_string(),
            uid: new_uid(),
            creation_timestamp: Some(Time::now()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    match apply(
        ctx,
        Command::Create {
            object: Object::Node(node),
        },
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::AlreadyExists => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "join refused: the name {name:?} belongs to a node that has joined already; \
                 pick another --name, or, if this machine replaces that node, delete the old one \
                 (`flotilla delete node {name}`) or create a token for the name \
                 (`flotilla token create --node {name}`)"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Checks a join token against the store (linearizably: a token just
/// created on another master counts) for `usage`; a node token for one
/// name counts as a node token. Gives the token and what it was made for.
async fn check_token(
    ctx: &Context,
    token: &str,
    usage: TokenUsage,
) -> Result<(JoinToken, TokenUsage), ApiError> {
    let create = match usage {
        TokenUsage::Master => "`flotilla token create --master`",
        _ => "`flotilla token create`",
    };
    let deny = |why: &str| {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("join refused: {why}; create a new token with {create}"),
        )
    };
    let token = JoinToken::parse(token).map_err(|e| invalid(e.to_string()))?;
    if token.ca_hash != ctx.pki.ca_hash {
        return Err(deny("the token belongs to another cluster"));
    }
    ctx.before_read(false).await?;
    let record = ctx
        .store
        .token(&token.id)
        .map_err(store_err)?
        .ok_or_else(|| deny("unknown token"))?;
    if record.secret_hash != token.secret_hash() {
        return Err(deny("wrong token secret"));
    }
    if record.expires < Time::now() {
        return Err(deny("the token has expired"));
    }
    let fits = matches!(
        (&record.usage, &usage),
        (TokenUsage::Master, TokenUsage::Master)
            | (
                TokenUsage::Node | TokenUsage::NodeNamed(_),
                TokenUsage::Node
            )
    );
    if !fits {
        return Err(deny(match usage {
            TokenUsage::Master => "this token is for joining nodes, not masters",
            _ => "this token is for joining masters, not nodes",
        }));
    }
    Ok((token, record.usage))
}

/// A master joins: with a master token it gets the cluster CA (key
/// included, as every master signs node certificates) and its raft id. It
/// becomes a member afterwards, once it serves, by asking the leader
/// ([`Cluster::add_member`]).
async fn join_master(
    ctx: &Context,
    token: &str,
    node_id: u64,
    addr: &str,
) -> Result<Response, ApiError> {
    check_token(ctx, token, TokenUsage::Master).await?;
    if addr.trim().is_empty() {
        return Err(invalid(
            "the joining master gave no address; pass --advertise host:port",
        ));
    }
    let node_id = ctx
        .cluster
        .reserve_member(node_id, addr)
        .await
        .map_err(store_err)?;
    tracing::info!(node_id, addr, "master joining");
    Ok(Response::MasterJoined {
        node_id,
        cluster: ctx.pki.cluster.clone(),
        ca_cert_pem: ctx.pki.ca.key.cert_pem.clone(),
        ca_key_pem: ctx.pki.ca.key.key_pem.clone(),
        masters: ctx.masters(),
    })
}

/// A fresh token and the record the store keeps of it (only the secret's hash).
fn new_token(
    ca_hash: &str,
    description: String,
    ttl: Duration,
    usage: TokenUsage,
) -> (JoinToken, TokenRecord) {
    let token = JoinToken::generate(ca_hash);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires = Time(Time::now().0.saturating_add(ttl_ms));
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        expires,
        description,
        usage,
    };
    (token, record)
}

/// Creates a join token without a request (for `flotilla up`, whose node joins its own master).
pub async fn local_token(
    master: &crate::Master,
    description: &str,
    ttl: Duration,
) -> Result<String, StoreError> {
    let (token, record) = new_token(
        &master.pki.ca_hash,
        description.to_string(),
        ttl,
        TokenUsage::Node,
    );
    crate::raft::propose(&master.raft, Command::PutToken { record }).await?;
    Ok(token.to_string())
}
