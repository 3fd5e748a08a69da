//! The http pods this node serves, by pod: the workers register them while
//! their program runs, the proxy (local requests, and those other nodes
//! forward) looks them up.

use crate::runtime::http::HttpPod;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The registry. Cheap to share.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pods: Arc<RwLock<HashMap<String, (String, Arc<HttpPod>)>>>,
}

impl Served {
    /// Serves `pod` as `key` (`namespace/name`, uid `uid`) until the
    /// returned registration is dropped.
    pub fn register(&self, key: &str, uid: &str, pod: Arc<HttpPod>) -> Registration {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        pods.insert(key.to_string(), (uid.to_string(), pod));
        Registration {
            served: self.clone(),
            key: key.to_string(),
            uid: uid.to_string(),
        }
    }

    /// The pod `key` if it is served here, and is the one with `uid` when
    /// one is given (a pod of the same name from before is not it).
    pub fn get(&self, key: &str, uid: &str) -> Option<Arc<HttpPod>> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.get(key)
            .filter(|(u, _)| uid.is_empty() || u == uid)
            .map(|(_, p)| p.clone())
    }

    /// How many pods are served here.
    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
