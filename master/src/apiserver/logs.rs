//! A pod's output, read from its node over the connection the node made to
//! a master: this one, or another one the request is relayed to.

use super::admission::not_found;
use super::{store_err, ApiServer, Caller};
use super::{Action, Subresource, Verb};
use flotilla_api::net::{read_frame, write_frame};
use flotilla_api::protocol::{ApiError, ErrorCode, LogOptions, Request, Response};
use flotilla_api::{Kind, Object};

/// The frames of a log stream (`Chunk`s, then `End` or an `Error`).
pub struct LogStream {
    first: Option<Response>,
    // Kept open: finishing it would not end the node's answer, dropping it
    // would reset it.
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    node: String,
    /// Whether the node has answered at all (a node always ends its
    /// answer with `End` or an error).
    answered: bool,
}

impl LogStream {
    /// The next frame; None once the node's side ended.
    pub async fn next(&mut self) -> Result<Option<Response>, ApiError> {
        if let Some(first) = self.first.take() {
            self.answered = true;
            return Ok(Some(first));
        }
        let frame = read_frame::<Response>(&mut self.recv).await.map_err(|e| {
            ApiError::new(ErrorCode::Unavailable, format!("node {}: {e}", self.node))
        })?;
        match frame {
            // Closed without a word: the node did not understand the request.
            None if !self.answered => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "node {} closed the log stream without answering; a node of a release before 0.2.0 answers only `logs` without --previous, --timestamps and --since: upgrade it",
                    self.node
                ),
            )),
            other => {
                self.answered = true;
                Ok(other)
            }
        }
    }
}

impl ApiServer {
    /// Opens the log stream of a pod on its node.
    pub async fn logs(&self, caller: &Caller, opts: &LogOptions) -> Result<LogStream, ApiError> {
        let (namespace, name) = (opts.namespace.as_str(), opts.name.as_str());
        let verb = Verb::object(
            Action::Get,
            Kind::Pod,
            namespace,
            name,
            Some(Subresource::Log),
        );
        super::authorize(caller, &verb)?;
        let pod = match self
            .store
            .get(Kind::Pod, namespace, name)
            .map_err(store_err)?
        {
            Some(Object::Pod(p)) => p,
            _ => return Err(not_found(Kind::Pod, namespace, name)),
        };
        // A pod that ended for good writes nothing more: following it would
        // only wait. (Its node ends such a stream too; this spares the wait
        // for what the master already knows.)
        let follow = opts.follow && !pod.status.phase.is_terminal();
        let node = pod.spec.node_name.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("pod {name} is not bound to a node yet; it has no logs"),
            )
        })?;
        let req = LogOptions {
            follow,
            ..opts.clone()
        }
        .request();
        let unavailable = |e: &dyn std::fmt::Display| {
            ApiError::new(ErrorCode::Unavailable, format!("node {node}: {e}"))
        };
        match self.nodes.get(&node) {
            Some(conn) => {
                let (mut send, recv) = conn.open_bi().await.map_err(|e| unavailable(&e))?;
                write_frame(&mut send, &req)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let _ = send.finish();
                Ok(LogStream {
                    first: None,
                    _send: send,
                    recv,
                    node,
                    answered: false,
                })
            }
            // The node is connected to another master (or to none): ask the
            // others, unless this request already comes from one.
            None if !matches!(caller, Caller::Master(_)) => self.relay(&node, &req).await,
            None => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("node {node} is not connected to this master"),
            )),
        }
    }

    /// Finds the master a node is connected to and opens the log stream
    /// there: the first other master whose first answer is not an error (an
    /// error means the node is not connected to it).
    async fn relay(&self, node: &str, req: &Request) -> Result<LogStream, ApiError> {
        for (id, addr) in self.cluster.peers() {
            let Ok((send, mut recv)) = self.cluster.open_on(id, &addr, req).await else {
                continue;
            };
            match read_frame::<Response>(&mut recv).await {
                Ok(Some(Response::Error(_))) | Ok(None) | Err(_) => continue,
                Ok(Some(first)) => {
                    return Ok(LogStream {
                        first: Some(first),
                        _send: send,
                        recv,
                        node: node.to_string(),
                        answered: true,
                    })
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("node {node} is not connected to any master; its logs stay on the node until it reconnects"),
        ))
    }
}
