//! A pod's network allowance on its node: `spec.network` with its host
//! names resolved ([`Allowance::resolve`]), the pure decision every socket
//! address the guest uses goes through ([`Allowance::permits`]), and the
//! count of what was refused ([`Refusals`]), which the pod's status shows.
//!
//! The runtime installs [`Allowance::permits`] as the WASI context's socket
//! address check, so a refused address never reaches the operating system:
//! the guest's call fails with `access-denied`. Binding to an ephemeral
//! port (port 0, what a connect or a send does implicitly) reaches nothing
//! and is always allowed, so that what is refused and counted is the
//! destination the program tried.

use flotilla_api::objects::network::{canonical, HostPattern, NetworkSpec, Protocol};
use flotilla_api::time::Time;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// What a guest is doing with a socket address (wasmtime-wasi's uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Binding a socket to a local address (explicitly, or implicitly
    /// before a connect, listen or send).
    Bind(Protocol),
    /// Listening on a local address.
    Listen,
    /// Accepting a client; the address is the client's.
    Accept,
    /// Connecting to a server.
    Connect,
    /// Sending a datagram.
    Send,
    /// Receiving a datagram; the address is the sender's.
    Receive,
}

impl std::fmt::Display for Use {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Use::Bind(Protocol::Tcp) => "TCP bind to",
            Use::Bind(Protocol::Udp) => "UDP bind to",
            Use::Listen => "TCP listen on",
            Use::Accept => "TCP accept from",
            Use::Connect => "TCP connect to",
            Use::Send => "UDP send to",
            Use::Receive => "UDP receive from",
        })
    }
}

/// One resolved `allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    hosts: Vec<HostPattern>,
    ports: Vec<u16>,
    protocol: Protocol,
}

/// A pod's allowance, ready to check addresses against. The default
/// allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowance {
    rules: Vec<Rule>,
    listen: Vec<(u16, Protocol)>,
    /// Whether the guest may look names up (`wasi:sockets/ip-name-lookup`):
    /// only when it may reach a host by name, or anything.
    pub lookups: bool,
}

impl Allowance {
    /// The allowance of `spec` with each host name replaced by the addresses
    /// `lookup` gives for it now. A name that does not resolve allows
    /// nothing (and is returned, for the node's log); it is looked up again
    /// when the program next starts.
    pub async fn resolve<F, Fut>(spec: &NetworkSpec, lookup: F) -> (Allowance, Vec<String>)
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<Vec<IpAddr>>>,
    {
        let mut unresolved = Vec::new();
        let mut rules = Vec::new();
        let mut lookups = false;
        for a in &spec.allow {
            // Validated by the master; a host that does not parse allows nothing.
            let hosts = match HostPattern::parse(&a.host) {
                Ok(HostPattern::Name(name)) => {
                    lookups = true;
                    match lookup(name.clone()).await {
                        Ok(ips) if !ips.is_empty() => ips
                            .into_iter()
                            .map(|ip| {
                                let ip = canonical(ip);
                                HostPattern::Net(ip, if ip.is_ipv4() { 32 } else { 128 })
                            })
                            .collect(),
                        Ok(_) => {
                            unresolved.push(format!("{name}: no addresses"));
                            Vec::new()
                        }
                        Err(e) => {
                            unresolved.push(format!("{name}: {e}"));
                            Vec::new()
                        }
                    }
                }
                Ok(HostPattern::Any) => {
                    lookups = true;
                    vec![HostPattern::Any]
                }
                Ok(net) => vec![net],
                Err(_) => Vec::new(),
            };
            rules.push(Rule {
                hosts,
                ports: a.ports.clone(),
                protocol: a.protocol,
            });
        }
        let listen = spec.listen.iter().map(|l| (l.port, l.protocol)).collect();
        (
            Allowance {
                rules,
                listen,
                lookups,
            },
            unresolved,
        )
    }

    /// Whether the guest may use `addr` this way.
    pub fn permits(&self, addr: SocketAddr, how: Use) -> bool {
        let listens = |port: u16, p: Protocol| self.listen.contains(&(port, p));
        match how {
            Use::Bind(p) => addr.port() == 0 || listens(addr.port(), p),
            Use::Listen => listens(addr.port(), Protocol::Tcp),
            // Only a listener the allowance let through accepts clients.
            Use::Accept => self.listen.iter().any(|(_, p)| *p == Protocol::Tcp),
            Use::Connect => self.reaches(addr, Protocol::Tcp),
            Use::Send => self.reaches(addr, Protocol::Udp),
            Use::Receive => {
                self.reaches(addr, Protocol::Udp)
                    || self.listen.iter().any(|(_, p)| *p == Protocol::Udp)
            }
        }
    }

    fn reaches(&self, addr: SocketAddr, protocol: Protocol) -> bool {
        let ip = canonical(addr.ip());
        self.rules.iter().any(|r| {
            r.protocol == protocol
                && (r.ports.is_empty() || r.ports.contains(&addr.port()))
                && r.hosts.iter().any(|h| h.contains(ip))
        })
    }
}

/// What a pod's program was refused, across its restarts on this node.
#[derive(Debug, Default)]
pub struct Refusals {
    count: AtomicU64,
    last: Mutex<Option<(String, Time)>>,
    /// Woken on each refusal, so the worker reports it.
    pub changed: Notify,
}

impl Refusals {
    /// Counting on from what the pod's status showed (the node restarted).
    pub fn resume(shown: Option<&flotilla_api::objects::network::NetworkRefusals>) -> Refusals {
        let r = Refusals::default();
        if let Some(s) = shown {
            r.count.store(s.count, Ordering::Relaxed);
            *r.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((s.last.clone(), s.last_time.unwrap_or_else(Time::now)));
        }
        r
    }

    /// Counts one refusal; logs the first and then every power of two, so
    /// a program that retries in a loop cannot flood the node's log.
    pub fn record(&self, pod: &str, addr: SocketAddr, how: Use) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let what = format!("{how} {addr}");
        if n.is_power_of_two() {
            tracing::warn!(%pod, refused = %what, total = n, "refused: outside the pod's spec.network");
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((what, Time::now()));
        self.changed.notify_one();
    }

    /// The count and the last refusal, for the pod's status.
    pub fn snapshot(&self) -> Option<flotilla_api::objects::network::NetworkRefusals> {
        let count = self.count.load(Ordering::Relaxed);
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (last, last_time) = last?;
        Some(flotilla_api::objects::network::NetworkRefusals {
            count,
            last,
            last_time: Some(last_time),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowance(yaml: &str) -> Allowance {
        let spec: NetworkSpec = serde_yaml::from_str(yaml).unwrap();
        let lookup = |name: String| async move {
            match name.as_str() {
                "db.local" => Ok(vec![
                    "10.1.2.3".parse().unwrap(),
                    "fd00::3".parse().unwrap(),
                ]),
                _ => Err(std::io::Error::other("no such host")),
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (a, unresolved) = rt.block_on(Allowance::resolve(&spec, lookup));
        assert!(
            unresolved.iter().all(|u| u.starts_with("gone.local")),
            "{unresolved:?}"
        );
        a
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nothing_is_allowed_without_an_allowance_but_an_ephemeral_bind() {
        let none = Allowance::default();
        assert!(none.permits(at("0.0.0.0:0"), Use::Bind(Protocol::Tcp)));
        assert!(none.permits(at("[::]:0"), Use::Bind(Protocol::Udp)));
        for (addr, how) in [
            ("127.0.0.1:8080", Use::Connect),
            ("0.0.0.0:8080", Use::Bind(Protocol::Tcp)),
            ("0.0.0.0:0", Use::Listen),
            ("10.0.0.1:1234", Use::Accept),
            ("8.8.8.8:53", Use::Send),
            ("8.8.8.8:53", Use::Receive),
        ] {
            assert!(!none.permits(at(addr), how), "{how} {addr}");
        }
        assert!(!none.lookups);
    }

    #[test]
    fn rules_match_by_address_port_and_protocol() {
        let a = allowance(
            "allow:\n- {host: 127.0.0.1, ports: [5432]}\n- {host: 192.168.1.0/24}\n- {host: db.local, ports: [6379]}\n- {host: gone.local}\n- {host: '*', ports: [53], protocol: UDP}\nlisten: [{port: 8080}, {port: 9000, protocol: UDP}]",
        );
        assert!(a.lookups);
        let yes = [
            ("127.0.0.1:5432", Use::Connect),
            ("[::ffff:127.0.0.1]:5432", Use::Connect),
            ("192.168.1.9:1", Use::Connect),
            ("10.1.2.3:6379", Use::Connect),
            ("[fd00::3]:6379", Use::Connect),
            ("9.9.9.9:53", Use::Send),
            ("9.9.9.9:53", Use::Receive),
            ("1.2.3.4:5", Use::Receive),
            ("0.0.0.0:8080", Use::Bind(Protocol::Tcp)),
            ("0.0.0.0:8080", Use::Listen),
            ("10.0.0.1:40000", Use::Accept),
            ("0.0.0.0:9000", Use::Bind(Protocol::Udp)),
        ];
        for (addr, how) in yes {
            assert!(a.permits(at(addr), how), "{how} {addr} should pass");
        }
        let no = [
            ("127.0.0.1:5433", Use::Connect),
            ("127.0.0.2:5432", Use::Connect),
            ("10.1.2.3:6380", Use::Connect),
            ("9.9.9.9:53", Use::Connect),
            ("192.168.1.9:1", Use::Send),
            ("0.0.0.0:9000", Use::Bind(Protocol::Tcp)),
            ("0.0.0.0:8081", Use::Listen),
            ("0.0.0.0:9000", Use::Listen),
        ];
        for (addr, how) in no {
            assert!(!a.permits(at(addr), how), "{how} {addr} should be refused");
        }
    }

    #[test]
    fn refusals_are_counted_with_the_last_one() {
        let r = Refusals::default();
        assert!(r.snapshot().is_none());
        r.record("default/p", at("127.0.0.1:9"), Use::Connect);
        r.record("default/p", at("10.0.0.1:53"), Use::Send);
        let s = r.snapshot().unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.last, "UDP send to 10.0.0.1:53");
    }
}
