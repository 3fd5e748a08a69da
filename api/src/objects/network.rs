//! What a pod's program may reach: `spec.network`. A pod starts with no
//! network at all; its allowance lists the addresses it may connect or
//! send to and the ports it may listen on. The node enforces it in the
//! program's WASI context (every socket address the guest uses is checked
//! before the operating system sees it) and counts what it refuses.

use crate::manifest::{fe, is_dns_subdomain, FieldError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A pod's network allowance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NetworkSpec {
    /// Where the program may connect (TCP) or send datagrams (UDP).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub allow: Vec<NetworkAllow>,
    /// The ports the program may listen on (TCP) or bind to (UDP), on any
    /// of the node's addresses.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub listen: Vec<ListenPort>,
}

/// One destination, or a set of them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NetworkAllow {
    /// An address (`10.0.0.5`, `::1`), a network (`192.168.1.0/24`), a
    /// host name (resolved by the node when the program starts, and name
    /// lookups allowed) or `*` for every address.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub host: String,
    /// The destination ports; every port when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ports: Vec<u16>,
    /// TCP when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub protocol: Protocol,
}

/// A port the program may serve on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ListenPort {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub port: u16,
    /// TCP when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub protocol: Protocol,
}

/// Set by the node in the pod's status: the program's attempts to reach
/// what its allowance does not list, across its restarts on the node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NetworkRefusals {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub count: u64,
    /// The last one, e.g. `TCP connect to 127.0.0.1:5432`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_time: Option<crate::time::Time>,
}

/// A transport protocol, as Kubernetes spells it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// What an allowance's `host` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// A network: its address and prefix length (32 or 128 for one address).
    Net(IpAddr, u8),
    /// A host name, to be resolved.
    Name(String),
}

impl HostPattern {
    /// Reads a `host` field; the error says what was expected.
    pub fn parse(host: &str) -> Result<HostPattern, String> {
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some((addr, len)) = host.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} in {host:?} is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{host:?}: the prefix length must be 0 to {max}"))?;
            return Ok(HostPattern::Net(addr, len));
        }
        if let Ok(addr) = host.parse::<IpAddr>() {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(HostPattern::Net(addr, max));
        }
        if is_dns_subdomain(&host.to_ascii_lowercase()) {
            return Ok(HostPattern::Name(host.to_ascii_lowercase()));
        }
        Err(format!(
            "{host:?} is not an address (10.0.0.5), a network (10.0.0.0/24), a host name or \"*\""
        ))
    }

    /// Whether `ip` is in this network (names never match: resolve them first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Name(_) => false,
            HostPattern::Net(net, len) => in_network(*net, *len, canonical(ip)),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.5`) is the IPv4 one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn in_network(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (canonical(net), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// At most this many rules of each list: an allowance is a short list a
/// person writes, and the node checks every socket address against it.
const MAX_RULES: usize = 64;

/// Checks `spec.network`.
pub fn validate(n: &NetworkSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if n.allow.len() > MAX_RULES {
        errors.push(fe(
            "spec.network.allow",
            format!(
                "at most {MAX_RULES} rules (use a network such as 10.0.0.0/24 for many addresses)"
            ),
        ));
    }
    for (i, a) in n.allow.iter().enumerate() {
        if a.host.is_empty() {
            errors.push(fe(
                format!("spec.network.allow[{i}].host"),
                "required: an address, a network, a host name or \"*\"",
            ));
        } else if let Err(e) = HostPattern::parse(&a.host) {
            errors.push(fe(format!("spec.network.allow[{i}].host"), e));
        }
        if a.ports.contains(&0) {
            errors.push(fe(
                format!("spec.network.allow[{i}].ports"),
                "ports are 1 to 65535 (leave the list out for every port)",
            ));
        }
    }
    if n.listen.len() > MAX_RULES {
        errors.push(fe(
            "spec.network.listen",
            format!("at most {MAX_RULES} ports"),
        ));
    }
    for (i, l) in n.listen.iter().enumerate() {
        if l.port == 0 {
            errors.push(fe(
                format!("spec.network.listen[{i}].port"),
                "required: a port from 1 to 65535",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_read_as_addresses_networks_names_or_anything() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = HostPattern::parse("192.168.1.0/24").unwrap();
        assert!(net.contains(ip("192.168.1.77")));
        assert!(net.contains(ip("::ffff:192.168.1.77")));
        assert!(!net.contains(ip("192.168.2.1")));
        let one = HostPattern::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = HostPattern::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(HostPattern::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("DB.Local"),
            Ok(HostPattern::Name("db.local".into()))
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/129",
            "a b",
            "-x-",
            "10.0.0.1/x",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_allowance_says_what_is_wrong() {
        let spec: NetworkSpec = serde_yaml::from_str(
            "allow: [{host: '10.0.0.0/8', ports: [5432]}, {host: '*', protocol: UDP, ports: [53]}]\nlisten: [{port: 8080}]",
        )
        .unwrap();
        assert!(validate(&spec).is_empty());
        assert_eq!(spec.allow[1].protocol, Protocol::Udp);
        let bad = NetworkSpec {
            allow: vec![
                NetworkAllow::default(),
                NetworkAllow {
                    host: "10.0.0.0/40".into(),
                    ports: vec![0],
                    ..NetworkAllow::default()
                },
            ],
            listen: vec![ListenPort::default()],
        };
        let fields: Vec<String> = validate(&bad).into_iter().map(|e| e.path).collect();
        assert_eq!(
            fields,
            [
                "spec.network.allow[0].host",
                "spec.network.allow[1].host",
                "spec.network.allow[1].ports",
                "spec.network.listen[0].port"
            ]
        );
        assert!(serde_yaml::from_str::<NetworkSpec>("allow: [{host: x, protocol: SCTP}]").is_err());
    }
}
