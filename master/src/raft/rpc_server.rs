//! The masters' own protocol: a master's port serves two ALPN protocols,
//! [`ALPN`] for clients and nodes and [`RAFT_ALPN`] for the other masters
//! (raft messages, what a follower asks of the leader, relayed logs,
//! joining the membership). Both carry the same frames and are served by
//! the same front end (`frontend::quic`); what may travel on which, and
//! who may open the masters' one, is decided here, purely.

use crate::apiserver::Caller;
use flotilla_api::protocol::{ApiError, ErrorCode, Request, ALPN, RAFT_ALPN};

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Clients and nodes ([`ALPN`]).
    Client,
    /// Masters among themselves ([`RAFT_ALPN`]).
    Masters,
}

impl Protocol {
    /// The protocol a connection negotiated.
    pub fn of(conn: &quinn::Connection) -> Protocol {
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        match alpn.as_deref() {
            Some(p) if p == RAFT_ALPN => Protocol::Masters,
            _ => Protocol::Client,
        }
    }

    fn name(self) -> &'static str {
        let alpn = match self {
            Protocol::Client => ALPN,
            Protocol::Masters => RAFT_ALPN,
        };
        std::str::from_utf8(alpn).unwrap_or("?")
    }
}

/// Whether `req` may travel on `protocol` from `caller`: only masters open
/// the masters' protocol, which carries only what masters ask of each
/// other; raft messages never travel on the clients' one.
pub fn check(protocol: Protocol, caller: &Caller, req: &Request) -> Result<(), ApiError> {
    let masters_only = matches!(
        req,
        Request::Hello { .. }
            | Request::Raft { .. }
            | Request::Logs { .. }
            | Request::PodLogs(_)
            | Request::AddMaster { .. }
    );
    match protocol {
        Protocol::Masters if !matches!(caller, Caller::Master(_)) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{caller} may not speak {}: only masters may, with a master's client certificate",
                protocol.name()
            ),
        )),
        Protocol::Masters if !masters_only => Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{} carries only what masters ask of each other; send this request on {}",
                protocol.name(),
                Protocol::Client.name()
            ),
        )),
        Protocol::Client if matches!(req, Request::Raft { .. }) => Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "raft messages travel on the masters' own protocol, {}",
                Protocol::Masters.name()
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::protocol::RaftRpc;

    #[test]
    fn what_travels_where_table() {
        let raft = Request::Raft {
            rpc: RaftRpc::Vote,
            payload: Vec::new(),
        };
        let hello = Request::Hello {
            version: 3,
            agent: String::new(),
        };
        let logs = Request::Logs {
            namespace: "default".into(),
            name: "x".into(),
            follow: false,
            tail_lines: None,
        };
        let status = Request::ClusterStatus;
        let m = Caller::Master(2);
        let admin = Caller::Admin;
        let node = Caller::Node("n1".into());
        use ErrorCode::{Forbidden as F, Invalid as I};
        use Protocol::{Client as C, Masters as M};
        let cases = [
            (M, &m, &raft, None),
            (M, &m, &hello, None),
            (M, &m, &logs, None),
            (M, &m, &status, Some(I)),
            (M, &admin, &hello, Some(F)),
            (M, &admin, &raft, Some(F)),
            (M, &node, &hello, Some(F)),
            (M, &Caller::Anonymous, &hello, Some(F)),
            (C, &m, &raft, Some(I)),
            (C, &admin, &raft, Some(I)),
            (C, &admin, &status, None),
            (C, &m, &logs, None),
            (C, &node, &hello, None),
        ];
        for (protocol, caller, req, want) in cases {
            assert_eq!(
                check(protocol, caller, req).err().map(|e| e.code),
                want,
                "{protocol:?} {caller} {req:?}"
            );
        }
    }
}
