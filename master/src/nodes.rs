//! Live connections of nodes to this master, so the master can open streams
//! to a node (for logs) over the connection the node made: nodes need no
//! open port and can sit behind NAT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Node name → its current connection.
#[derive(Clone, Default, Debug)]
pub struct NodeConnections(Arc<Mutex<HashMap<String, quinn::Connection>>>);

impl NodeConnections {
    /// Records the connection of a node (a reconnect replaces the old one).
    pub fn insert(&self, node: &str, conn: quinn::Connection) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), conn);
    }

    /// Forgets a connection, unless a newer one replaced it already.
    pub fn remove(&self, node: &str, conn: &quinn::Connection) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(node)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            map.remove(node);
        }
    }

    /// The node's connection, if it is connected.
    pub fn get(&self, node: &str) -> Option<quinn::Connection> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }
}
