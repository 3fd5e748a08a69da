//! A private network of Linux network namespaces: one namespace per member
//! (master or node), all joined by veth pairs to a bridge that lives in a
//! namespace of its own, plus one veth from the test's own namespace so the
//! test's clients reach every member. Members get 10.77.<subnet>.<10 + i>;
//! the test side is 10.77.<subnet>.1. Everything is removed on drop.
//!
//! Faults are made on a member's own interface: link down cuts it from
//! everyone (a partition), `tc netem` adds delay and loss.

use std::process::Command;

/// Runs `ip`/`tc` and panics with its output if it fails (the test cannot
/// go on without its network).
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the chaos tests need iproute2)"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Like [`sh`], ignoring failure (cleanup of what may not exist).
fn try_sh(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

pub struct Net {
    /// Short unique prefix of every name (interface names are at most 15 bytes).
    prefix: String,
    subnet: u8,
    members: usize,
}

impl Net {
    /// Builds the network for `members` members. Needs root.
    pub fn new(members: usize) -> Net {
        assert!(
            nix_is_root(),
            "the chaos tests build network namespaces and must run as root (CI does)"
        );
        let pid = std::process::id();
        let net = Net {
            prefix: format!("fl{:x}", pid % 0xfffff),
            subnet: (pid % 200) as u8 + 20,
            members,
        };
        let hub = net.hub();
        sh("ip", &["netns", "add", &hub]);
        sh("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        // The test's own leg.
        let (root, root_peer) = (format!("{}r", net.prefix), format!("{}rp", net.prefix));
        sh(
            "ip",
            &[
                "link", "add", &root, "type", "veth", "peer", "name", &root_peer,
            ],
        );
        sh("ip", &["link", "set", &root_peer, "netns", &hub]);
        sh(
            "ip",
            &["-n", &hub, "link", "set", &root_peer, "master", "br0"],
        );
        sh("ip", &["-n", &hub, "link", "set", &root_peer, "up"]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.77.{}.1/24", net.subnet),
                "dev",
                &root,
            ],
        );
        sh("ip", &["link", "set", &root, "up"]);
        for i in 0..members {
            let ns = net.ns(i);
            let (inner, outer) = (format!("{}m{i}", net.prefix), format!("{}h{i}", net.prefix));
            sh("ip", &["netns", "add", &ns]);
            sh(
                "ip",
                &[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ],
            );
            sh("ip", &["link", "set", &inner, "netns", &ns]);
            sh("ip", &["link", "set", &outer, "netns", &hub]);
            sh("ip", &["-n", &hub, "link", "set", &outer, "master", "br0"]);
            sh("ip", &["-n", &hub, "link", "set", &outer, "up"]);
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            sh("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"]);
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.ip(i)),
                    "dev",
                    "eth0",
                ],
            );
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// The namespace of member `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// The address of member `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 10 + i)
    }

    /// Cuts member `i` off from everyone.
    pub fn cut(&self, i: usize) {
        sh("ip", &["-n", &self.ns(i), "link", "set", "eth0", "down"]);
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, i: usize) {
        sh("ip", &["-n", &self.ns(i), "link", "set", "eth0", "up"]);
    }

    /// Makes member `i`'s link slow and lossy: `tc netem` delay and loss
    /// where the kernel has netem; otherwise (kernels built without it) a
    /// token bucket that queues what member `i` sends behind a thin rate,
    /// plus random loss from nftables. Returns what was applied.
    pub fn degrade(&self, i: usize, delay_ms: u32, loss_percent: u32) -> String {
        let ns = self.ns(i);
        let netem = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0",
            ])
            .args(["root", "netem", "delay", &format!("{delay_ms}ms")])
            .args([
                &format!("{}ms", delay_ms / 3),
                "loss",
                &format!("{loss_percent}%"),
            ])
            .output()
            .expect("run tc");
        if netem.status.success() {
            return format!("netem delay {delay_ms}ms loss {loss_percent}%");
        }
        sh(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                "rate", "1mbit", "burst", "8kb", "latency", "400ms",
            ],
        );
        sh(
            "ip",
            &["netns", "exec", &ns, "nft", "add", "table", "inet", "chaos"],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "nft",
                "add",
                "chain",
                "inet",
                "chaos",
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "nft",
                "add",
                "rule",
                "inet",
                "chaos",
                "out",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                &loss_percent.to_string(),
                "drop",
            ],
        );
        format!("no netem in this kernel: tbf 1mbit and nftables loss {loss_percent}%")
    }

    /// Undoes [`Net::degrade`].
    pub fn restore(&self, i: usize) {
        try_sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(i),
                "nft",
                "delete",
                "table",
                "inet",
                "chaos",
            ],
        );
        try_sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(i),
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.members {
            try_sh("ip", &["netns", "del", &self.ns(i)]);
        }
        try_sh("ip", &["netns", "del", &self.hub()]);
        try_sh("ip", &["link", "del", &format!("{}r", self.prefix)]);
    }
}

fn nix_is_root() -> bool {
    // The effective uid, as /proc/self/status reports it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
