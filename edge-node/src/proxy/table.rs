//! The proxy's routing table, built from the Services and Endpoints the
//! node watches: for each Service port every node listens on, the pods
//! that may take its traffic; for each host name, the Service it goes to.
//! Pure: [`Table::build`] is a function of the objects.

use flotilla_api::objects::network::Protocol;
use flotilla_api::objects::service::{split_host, Endpoints, Service, SessionAffinity};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A pod that may take a Service's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub uid: String,
    /// The node it runs on, and where that node's proxy is reached.
    pub node: String,
    pub proxy: String,
    /// The pod's port (a TCP pod's listener; nothing for an http pod).
    pub port: u16,
    /// A command pod, reached by forwarding TCP connections to `port`.
    pub tcp: bool,
}

/// One Service port: where its traffic may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The port every node listens on.
    pub port: u16,
    pub protocol: Protocol,
    pub affinity: SessionAffinity,
    /// The ready pods, sorted by pod.
    pub ready: Vec<Target>,
    /// Selected pods that are not ready (for messages).
    pub not_ready: usize,
    /// Its pods are command pods: connections are forwarded as they are
    /// (TCP), not served as HTTP requests.
    pub tcp: bool,
}

/// A host name of a Service on the shared host-routing port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// A name, or `*.rest` for every name under `rest`.
    pub host: String,
    /// The path prefix it takes (`/`: every path).
    pub path: String,
    pub route: Arc<Route>,
    /// `namespace/name` of the Secret whose certificate serves it over
    /// TLS; None: served in plain HTTP only.
    pub secret: Option<String>,
}

/// Every route a node serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// By the port every node listens on.
    pub ports: BTreeMap<u16, Arc<Route>>,
    /// Exact names first, then wildcards by length (the longest wins);
    /// for one name, the longest path prefix first.
    pub hosts: Vec<HostRoute>,
}

impl Table {
    /// The table `services` and their `endpoints` call for. A Service with
    /// no Endpoints yet has routes with no targets (its requests get 503).
    pub fn build(services: &[Service], endpoints: &[Endpoints]) -> Table {
        let by_key: HashMap<(&str, &str), &Endpoints> = endpoints
            .iter()
            .map(|e| ((e.metadata.namespace.as_str(), e.metadata.name.as_str()), e))
            .collect();
        let mut table = Table::default();
        for svc in services {
            let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
            let eps = by_key.get(&(ns.as_str(), name.as_str()));
            let list = eps.map(|e| e.endpoints.as_slice()).unwrap_or(&[]);
            let mut first: Option<Arc<Route>> = None;
            for port in &svc.spec.ports {
                let mut ready: Vec<Target> = list
                    .iter()
                    .filter(|e| e.ready)
                    .map(|e| Target {
                        pod: format!("{ns}/{}", e.pod),
                        uid: e.uid.clone(),
                        node: e.node.clone(),
                        proxy: e.proxy.clone(),
                        port: port.target(),
                        tcp: e.workload == "command",
                    })
                    .collect();
                ready.sort_by(|a, b| a.pod.cmp(&b.pod));
                let route = Arc::new(Route {
                    service: format!("{ns}/{name}"),
                    port: port.port,
                    protocol: port.protocol,
                    affinity: svc.spec.session_affinity,
                    not_ready: list.len() - ready.len(),
                    tcp: !ready.is_empty() && ready.iter().all(|t| t.tcp),
                    ready,
                });
                first.get_or_insert_with(|| route.clone());
                // Admission keeps a port to one Service; should two ever
                // claim one, the first by name keeps it.
                table.ports.entry(port.port).or_insert(route);
            }
            if let Some(route) = first {
                let secret = svc
                    .spec
                    .tls
                    .as_ref()
                    .map(|t| format!("{ns}/{}", t.secret_name));
                for entry in &svc.spec.hosts {
                    let (host, path) = split_host(entry);
                    table.hosts.push(HostRoute {
                        host: host.to_ascii_lowercase(),
                        path: path.trim_end_matches('/').to_string(),
                        route: route.clone(),
                        secret: secret.clone(),
                    });
                }
            }
        }
        table.hosts.sort_by(|a, b| {
            let wild = |h: &HostRoute| h.host.starts_with("*.");
            wild(a)
                .cmp(&wild(b))
                .then(b.host.len().cmp(&a.host.len()))
                .then(a.host.cmp(&b.host))
                .then(b.path.len().cmp(&a.path.len()))
        });
        table
    }

    /// The route for a request's `Host` (a port after it is ignored) and
    /// path: an exact name, else the longest wildcard that covers it; for
    /// that name, the longest path prefix that covers the path (whole
    /// segments: `/api` covers `/api` and `/api/v1`, not `/apiary`). On the
    /// TLS port (`tls`), only names served over TLS.
    pub fn for_host(&self, host: &str, path: &str, tls: bool) -> Option<&Arc<Route>> {
        let host = bare_host(host);
        self.hosts
            .iter()
            .filter(|h| host_matches(&h.host, &host))
            .filter(|h| !tls || h.secret.is_some())
            .find(|h| {
                path.strip_prefix(h.path.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
                })
            })
            .map(|h| &h.route)
    }

    /// The Secret (`namespace/name`) whose certificate answers a TLS
    /// client asking for `server_name`.
    pub fn secret_for(&self, server_name: &str) -> Option<&str> {
        let host = bare_host(server_name);
        self.hosts
            .iter()
            .find(|h| h.secret.is_some() && host_matches(&h.host, &host))
            .and_then(|h| h.secret.as_deref())
    }

    /// Every Secret whose certificate some host is served with.
    pub fn secrets(&self) -> std::collections::BTreeSet<&str> {
        self.hosts
            .iter()
            .filter_map(|h| h.secret.as_deref())
            .collect()
    }
}

/// A `Host` value without its port or trailing dot, in lower case.
fn bare_host(host: &str) -> String {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `pattern` (a name, or `*.rest`) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .strip_suffix(rest)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("service")
    }

    fn endpoints(yaml: &str) -> Endpoints {
        serde_yaml::from_str(yaml).expect("endpoints")
    }

    #[test]
    fn routes_each_port_to_the_ready_pods() {
        let svc = service(
            "metadata: {name: web, namespace: shop}\n\
             spec: {selector: {app: web}, sessionAffinity: ClientIP, hosts: [shop.local, '*.shop.local'],\n\
             ports: [{name: http, port: 30080}, {name: tcp, port: 30090, targetPort: 9000}]}",
        );
        let eps = endpoints(
            "metadata: {name: web, namespace: shop}\n\
             endpoints: [{pod: b, uid: ub, node: n2, ready: true, proxy: '10.0.0.2:7446', workload: http},\n\
             {pod: a, uid: ua, node: n1, ready: true}, {pod: c, uid: uc, node: n1}]",
        );
        let other = service("metadata: {name: api, namespace: shop}\nspec: {selector: {app: api}, ports: [{port: 30100}]}");
        let t = Table::build(&[svc, other], &[eps]);
        let web = &t.ports[&30080];
        assert_eq!(web.service, "shop/web");
        assert_eq!(web.affinity, SessionAffinity::ClientIp);
        let pods: Vec<_> = web.ready.iter().map(|t| t.pod.as_str()).collect();
        assert_eq!(pods, ["shop/a", "shop/b"]);
        assert_eq!(web.not_ready, 1);
        assert_eq!(web.ready[1].proxy, "10.0.0.2:7446");
        assert_eq!(t.ports[&30090].ready[0].port, 9000);
        // No Endpoints yet: a route with nobody behind it.
        assert!(t.ports[&30100].ready.is_empty());
        assert!(!web.tcp, "http pods are served as HTTP");
        // Host names go to the Service's first port.
        let port = |h: &str| t.for_host(h, "/", false).map(|r| r.port);
        assert_eq!(port("shop.local"), Some(30080));
        assert_eq!(port("SHOP.local:8080"), Some(30080));
        assert_eq!(port("eu.shop.local"), Some(30080));
        assert_eq!(port("xshop.local"), None);
        assert_eq!(port("other.local"), None);
        // Not served over TLS: no route on the TLS port, no certificate.
        assert_eq!(t.for_host("shop.local", "/", true), None);
        assert!(t.secrets().is_empty());
    }

    #[test]
    fn command_pods_are_reached_over_tcp() {
        let svc = service("metadata: {name: db, namespace: d}\nspec: {selector: {app: db}, ports: [{port: 30500, targetPort: 5000}]}");
        let eps = endpoints("metadata: {name: db, namespace: d}\nendpoints: [{pod: a, uid: ua, node: n1, ready: true, workload: command}]");
        let t = Table::build(&[svc], &[eps]);
        let r = &t.ports[&30500];
        assert!(r.tcp);
        assert_eq!(r.ready[0].port, 5000);
    }

    #[test]
    fn exact_names_win_over_wildcards_and_longer_wildcards_over_shorter() {
        let a = service("metadata: {name: a, namespace: d}\nspec: {selector: {x: a}, hosts: ['*.example.org'], ports: [{port: 1}]}");
        let b = service("metadata: {name: b, namespace: d}\nspec: {selector: {x: b}, hosts: ['*.eu.example.org'], ports: [{port: 2}]}");
        let c = service("metadata: {name: c, namespace: d}\nspec: {selector: {x: c}, hosts: [www.eu.example.org], ports: [{port: 3}]}");
        let t = Table::build(&[a, b, c], &[]);
        let port = |h: &str| t.for_host(h, "/", false).map(|r| r.port);
        assert_eq!(port("www.eu.example.org"), Some(3));
        assert_eq!(port("api.eu.example.org"), Some(2));
        assert_eq!(port("api.example.org"), Some(1));
        assert_eq!(port("example.org"), None);
    }

    #[test]
    fn the_longest_path_prefix_of_a_name_wins_on_whole_segments() {
        let shop = service("metadata: {name: shop, namespace: d}\nspec: {selector: {x: a}, hosts: [shop.local], ports: [{port: 1}]}");
        let api = service("metadata: {name: api, namespace: d}\nspec: {selector: {x: b}, hosts: [shop.local/api, '*.local/v2/'], ports: [{port: 2}]}");
        let t = Table::build(&[shop, api], &[]);
        let port = |h: &str, p: &str| t.for_host(h, p, false).map(|r| r.port);
        assert_eq!(port("shop.local", "/"), Some(1));
        assert_eq!(port("shop.local", "/api"), Some(2));
        assert_eq!(port("shop.local", "/api/orders?id=3"), Some(2));
        assert_eq!(port("shop.local", "/api?x"), Some(2));
        assert_eq!(port("shop.local", "/apiary"), Some(1));
        // The exact name wins over the wildcard, whatever its paths.
        assert_eq!(port("shop.local", "/v2/x"), Some(1));
        assert_eq!(port("a.local", "/v2/x"), Some(2));
        assert_eq!(port("a.local", "/v3"), None);
    }

    #[test]
    fn tls_hosts_name_their_secret() {
        let web = service("metadata: {name: web, namespace: d}\nspec: {selector: {x: a}, hosts: [web.example.org, '*.web.example.org/api'], tls: {secretName: web-tls}, ports: [{port: 1}]}");
        let plain = service("metadata: {name: plain, namespace: d}\nspec: {selector: {x: b}, hosts: [plain.example.org], ports: [{port: 2}]}");
        let t = Table::build(&[web, plain], &[]);
        assert_eq!(t.secret_for("web.example.org"), Some("d/web-tls"));
        assert_eq!(t.secret_for("eu.web.example.org"), Some("d/web-tls"));
        assert_eq!(t.secret_for("plain.example.org"), None);
        assert_eq!(t.secrets().into_iter().collect::<Vec<_>>(), ["d/web-tls"]);
        assert_eq!(
            t.for_host("web.example.org", "/", true).map(|r| r.port),
            Some(1)
        );
        assert_eq!(t.for_host("plain.example.org", "/", true), None);
        assert_eq!(
            t.for_host("plain.example.org", "/", false).map(|r| r.port),
            Some(2)
        );
    }
}
