//! The pods this node serves to its proxy, by pod: the workers register
//! them while their program runs — an http pod with its handler, a command
//! pod with the TCP ports it may listen on — and the proxy (local requests,
//! and those other nodes forward) looks them up.

use crate::runtime::http::HttpPod;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// How a pod takes traffic.
#[derive(Debug, Clone)]
enum Serving {
    /// In-process, request by request.
    Http(Arc<HttpPod>),
    /// On these TCP ports of the node (its `spec.network.listen`).
    Tcp(Vec<u16>),
}

/// Pods by `namespace/name`, with their uid.
type ByKey = HashMap<String, (String, Serving)>;

/// The registry. Cheap to share.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pods: Arc<RwLock<ByKey>>,
}

impl Served {
    /// Serves http pod `pod` as `key` (`namespace/name`, uid `uid`) until
    /// the returned registration is dropped.
    pub fn register(&self, key: &str, uid: &str, pod: Arc<HttpPod>) -> Registration {
        self.insert(key, uid, Serving::Http(pod))
    }

    /// Lets the proxy reach command pod `key` on `ports` (those it may
    /// listen on) until the returned registration is dropped.
    pub fn register_tcp(&self, key: &str, uid: &str, ports: Vec<u16>) -> Registration {
        self.insert(key, uid, Serving::Tcp(ports))
    }

    fn insert(&self, key: &str, uid: &str, serving: Serving) -> Registration {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        pods.insert(key.to_string(), (uid.to_string(), serving));
        Registration {
            served: self.clone(),
            key: key.to_string(),
            uid: uid.to_string(),
        }
    }

    fn entry(&self, key: &str, uid: &str) -> Option<Serving> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.get(key)
            .filter(|(u, _)| uid.is_empty() || u == uid)
            .map(|(_, s)| s.clone())
    }

    /// The http pod `key` if it is served here, and is the one with `uid`
    /// when one is given (a pod of the same name from before is not it).
    pub fn get(&self, key: &str, uid: &str) -> Option<Arc<HttpPod>> {
        match self.entry(key, uid)? {
            Serving::Http(p) => Some(p),
            Serving::Tcp(_) => None,
        }
    }

    /// Whether command pod `key` (uid `uid`) runs here and may listen on
    /// `port`: only then does the proxy connect to that port for it.
    pub fn tcp_port(&self, key: &str, uid: &str, port: u16) -> bool {
        matches!(self.entry(key, uid), Some(Serving::Tcp(ports)) if ports.contains(&port))
    }
}

/// A pod's place in [`Served`]; dropping it stops serving the pod.
#[derive(Debug)]
pub struct Registration {
    served: Served,
    key: String,
    uid: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut pods = self.served.pods.write().unwrap_or_else(|p| p.into_inner());
        // A newer pod of the same name may have registered meanwhile.
        if pods.get(&self.key).is_some_and(|(u, _)| *u == self.uid) {
            pods.remove(&self.key);
        }
    }
}
