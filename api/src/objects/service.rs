//! Service and Endpoints: a stable name and ports for the ready pods a
//! selector picks, and the list of those pods (with their nodes) that the
//! Endpoints controller keeps for each Service and every node's proxy
//! routes to.

use super::network::Protocol;
use super::{merge_meta, Resource};
use crate::manifest::{
    fe, is_dns_label, is_dns_subdomain, is_label_key, is_label_value, FieldError,
};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many ports per Service.
pub const MAX_PORTS: usize = 32;

/// A set of pods behind ports that every node serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Service {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServiceSpec {
    /// The pods of the Service's namespace with all these labels.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ports: Vec<ServicePort>,
    /// `ClientIP`: a client's requests go to the same pod while it is ready.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub session_affinity: SessionAffinity,
    /// Host names the shared host-routing port sends to this Service
    /// (`sensors.local`, `*.example.org`), each optionally with a path
    /// prefix (`shop.local/api`: only paths under `/api`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub hosts: Vec<String>,
    /// Serve `hosts` over TLS too, on the nodes' TLS host port.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub tls: Option<ServiceTls>,
}

/// Where a Service's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServiceTls {
    /// A Secret of the Service's namespace with the certificate chain in
    /// `tls.crt` and its private key in `tls.key`, both PEM
    /// (`flotilla create secret tls NAME --cert FILE --key FILE`).
    pub secret_name: String,
}

/// The Secret type of a TLS certificate and key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The keys of a TLS Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServicePort {
    /// Required when there are several ports; a DNS label.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    /// The port every node listens on for this Service.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub port: u16,
    /// The pods' port (what a TCP pod listens on); `port` when left out.
    /// HTTP pods are served in the node's proxy and have no port.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub target_port: Option<u16>,
    /// TCP (HTTP rides on it); UDP is not forwarded.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub protocol: Protocol,
}

impl ServicePort {
    /// The pods' port.
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum SessionAffinity {
    #[default]
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// Whether `h` may be a Service's host name: a DNS name, its first label
/// `*` for every name under the rest.
pub fn is_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    (name.contains('.') || !h.starts_with("*.") && is_dns_label(name)) && is_dns_subdomain(name)
}

/// A `spec.hosts` entry split into its host and path prefix (`/` when it
/// has none): `shop.local/api` is `("shop.local", "/api")`.
pub fn split_host(entry: &str) -> (&str, &str) {
    match entry.find('/') {
        Some(i) => (&entry[..i], &entry[i..]),
        None => (entry, "/"),
    }
}

/// Whether `p` may be a path prefix: `/` then printable ASCII, without a
/// query, fragment or `..` segment.
fn is_path_prefix(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 256
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        && !p.split('/').any(|seg| seg == "..")
}

impl Resource for Service {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errors = Vec::new();
        if s.selector.is_empty() {
            errors.push(fe(
                "spec.selector",
                "required: the labels of the Service's pods, e.g. {app: web}",
            ));
        }
        for (k, v) in &s.selector {
            if !is_label_key(k) || !is_label_value(v) {
                errors.push(fe(
                    format!("spec.selector.{k}"),
                    format!("{k:?}: {v:?} is not a valid label"),
                ));
            }
        }
        if s.ports.is_empty() {
            errors.push(fe(
                "spec.ports",
                "required: at least one port, e.g. [{port: 8080}]",
            ));
        }
        if s.ports.len() > MAX_PORTS {
            errors.push(fe("spec.ports", format!("at most {MAX_PORTS} ports")));
        }
        let (mut names, mut ports) = (BTreeSet::new(), BTreeSet::new());
        for (i, p) in s.ports.iter().enumerate() {
            let at = |f: &str| format!("spec.ports[{i}].{f}");
            if p.port == 0 {
                errors.push(fe(at("port"), "required: a port from 1 to 65535"));
            } else if !ports.insert(p.port) {
                errors.push(fe(at("port"), format!("{} is listed twice", p.port)));
            }
            if p.target_port == Some(0) {
                errors.push(fe(
                    at("targetPort"),
                    "a port from 1 to 65535 (leave it out for the same as port)",
                ));
            }
            if p.protocol == Protocol::Udp {
                errors.push(fe(
                    at("protocol"),
                    "UDP is not forwarded by the node proxy: use TCP (HTTP rides on it)",
                ));
            }
            if p.name.is_empty() {
                if s.ports.len() > 1 {
                    errors.push(fe(at("name"), "required when a Service has several ports"));
                }
            } else if !is_dns_label(&p.name) {
                errors.push(fe(at("name"), format!("{:?} is not a DNS label", p.name)));
            } else if !names.insert(p.name.as_str()) {
                errors.push(fe(at("name"), format!("{:?} is used twice", p.name)));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in s.hosts.iter().enumerate() {
            let (h, path) = split_host(entry);
            if !is_host(h) {
                errors.push(fe(
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{h:?} is not a host name (sensors.local, or *.example.org, \
                         optionally with a path prefix: shop.local/api)"
                    ),
                ));
            } else if !is_path_prefix(path) {
                errors.push(fe(
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{path:?} is not a path prefix: give printable characters without \
                         ?, # or .. (shop.local/api)"
                    ),
                ));
            } else if !seen.insert(entry.to_ascii_lowercase()) {
                errors.push(fe(
                    format!("spec.hosts[{i}]"),
                    format!("{entry:?} is listed twice"),
                ));
            }
        }
        if let Some(tls) = &s.tls {
            if s.hosts.is_empty() {
                errors.push(fe(
                    "spec.tls",
                    "TLS is served for spec.hosts: name the hosts, e.g. hosts: [shop.example.org]",
                ));
            }
            if !is_dns_subdomain(&tls.secret_name) {
                errors.push(fe(
                    "spec.tls.secretName",
                    "required: the Secret with tls.crt and tls.key \
                     (flotilla create secret tls NAME --cert FILE --key FILE)",
                ));
            }
        }
        errors
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if status_only {
            return Err("a Service has no status".into());
        }
        let changed = stored.spec != incoming.spec;
        let mut out = incoming;
        let meta = std::mem::take(&mut out.metadata);
        out.metadata = merge_meta(&stored.metadata, meta, changed);
        Ok(out)
    }
}

/// The pods behind a Service, as its Endpoints controller last saw them;
/// named as its Service and owned by it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Endpoints {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    /// One per selected pod that is bound to a node, sorted by pod name.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub endpoints: Vec<Endpoint>,
    /// The Service's ports, as the pods serve them.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ports: Vec<EndpointPort>,
}

/// One pod of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Endpoint {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub pod: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub uid: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node: String,
    /// The pod is ready: it gets traffic.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ready: bool,
    /// Where other nodes' proxies reach the pod's node (its
    /// `status.proxyEndpoint`, `IP:PORT`); empty while the node has not
    /// said.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub proxy: String,
    /// What the pod's program is (its module's `status.workload`): `http`
    /// pods are served request by request, `command` pods by forwarding
    /// TCP connections to the port they listen on.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub workload: String,
}

/// A port of the Service's pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EndpointPort {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub port: u16,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub protocol: Protocol,
}

impl Resource for Endpoints {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if !is_dns_subdomain(&e.pod) {
                errors.push(fe(
                    format!("endpoints[{i}].pod"),
                    format!("{:?} is not a pod name", e.pod),
                ));
            }
            if !e.node.is_empty() && !is_dns_subdomain(&e.node) {
                errors.push(fe(
                    format!("endpoints[{i}].node"),
                    format!("{:?} is not a node name", e.node),
                ));
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                errors.push(fe(format!("ports[{i}].port"), "a port from 1 to 65535"));
            }
        }
        errors
    }

    /// Endpoints have no spec or status: an update replaces the lists.
    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if status_only {
            return Err("Endpoints have no status".into());
        }
        let changed = stored.endpoints != incoming.endpoints || stored.ports != incoming.ports;
        let mut out = incoming;
        let meta = std::mem::take(&mut out.metadata);
        out.metadata = merge_meta(&stored.metadata, meta, changed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    fn errors(s: &Service) -> Vec<String> {
        s.validate().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_service_says_what_is_wrong() {
        let good = parse(
            "metadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 8080, targetPort: 80}, {name: admin, port: 9090}]\n  sessionAffinity: ClientIP\n  hosts: [web.local, '*.example.org']\n",
        );
        assert!(errors(&good).is_empty(), "{:?}", good.validate());
        assert_eq!(good.spec.ports[0].target(), 80);
        assert_eq!(good.spec.ports[1].target(), 9090);
        assert_eq!(good.spec.session_affinity, SessionAffinity::ClientIp);
        let bad = parse(
            "spec:\n  ports: [{port: 0}, {port: 80, targetPort: 0, protocol: UDP, name: Web}, {name: b, port: 80}]\n  hosts: ['*', 'a..b']\n",
        );
        assert_eq!(
            errors(&bad),
            [
                "spec.selector",
                "spec.ports[0].port",
                "spec.ports[0].name",
                "spec.ports[1].targetPort",
                "spec.ports[1].protocol",
                "spec.ports[1].name",
                "spec.ports[2].port",
                "spec.hosts[0]",
                "spec.hosts[1]",
            ]
        );
        let one_port = parse("spec: {selector: {app: x}, ports: [{port: 80}]}");
        assert!(errors(&one_port).is_empty());
        assert!(serde_yaml::from_str::<Service>("spec: {sessionAffinity: Sticky}").is_err());
    }

    #[test]
    fn host_paths_and_tls_are_checked() {
        let good = parse(
            "metadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n  hosts: [web.local, web.local/api, '*.example.org/v2/']\n  tls: {secretName: web-tls}\n",
        );
        assert!(errors(&good).is_empty(), "{:?}", good.validate());
        assert_eq!(split_host("web.local/api"), ("web.local", "/api"));
        assert_eq!(split_host("web.local"), ("web.local", "/"));
        let bad = parse(
            "spec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n  hosts: [web.local/a?b, web.local/../x, web.local, web.local, 'web.local/a b']\n  tls: {secretName: ''}\n",
        );
        assert_eq!(
            errors(&bad),
            [
                "spec.hosts[0]",
                "spec.hosts[1]",
                "spec.hosts[3]",
                "spec.hosts[4]",
                "spec.tls.secretName"
            ]
        );
        let no_hosts = parse("spec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n  tls: {secretName: web-tls}\n");
        assert_eq!(errors(&no_hosts), ["spec.tls"]);
    }

    #[test]
    fn a_spec_change_is_a_new_generation_and_endpoints_are_replaced() {
        let mut stored = parse("metadata: {name: web, generation: 1}\nspec: {selector: {app: web}, ports: [{port: 80}]}");
        stored.metadata.uid = "u".into();
        let mut changed = stored.clone();
        changed.spec.ports[0].port = 81;
        changed.metadata.uid.clear();
        let merged = Service::merge(&stored, changed, false).expect("merge");
        assert_eq!(
            (merged.metadata.uid.as_str(), merged.spec.ports[0].port),
            ("u", 81)
        );
        assert!(merged.metadata.generation > stored.metadata.generation);
        assert!(Service::merge(&stored, stored.clone(), true).is_err());
        let ep = Endpoints {
            endpoints: vec![Endpoint {
                pod: "web-1".into(),
                node: "pi-1".into(),
                ready: true,
                ..Endpoint::default()
            }],
            ..Endpoints::default()
        };
        let merged = Endpoints::merge(&Endpoints::default(), ep.clone(), false).expect("merge");
        assert_eq!(merged.endpoints, ep.endpoints);
        assert!(Endpoints {
            endpoints: vec![Endpoint::default()],
            ..Endpoints::default()
        }
        .validate()
        .iter()
        .any(|e| e.path == "endpoints[0].pod"));
    }
}
