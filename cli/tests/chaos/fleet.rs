//! Real `flotilla` processes: several masters (and nodes) on loopback or each
//! in its own network namespace, started, killed with SIGKILL and restarted
//! on the same data directory and address, and driven with the CLI.

use crate::common::{free_port, wait_for, BIN};
use crate::netns::Net;
use flotilla_api::config::ClientConfigFile;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// The admin client config, listing every master.
    pub config: PathBuf,
    pub net: Option<Net>,
    /// Master `i`'s address (its raft id is `i + 1`).
    pub addrs: Vec<String>,
    masters: Vec<Option<Child>>,
    nodes: HashMap<String, Child>,
    master_token: Option<String>,
}

impl Fleet {
    /// `count` masters on loopback (not started yet).
    pub fn loopback(count: usize) -> Fleet {
        let addrs = (0..count)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        Fleet::new(addrs, None)
    }

    /// `masters` masters and room for `nodes` nodes, each in its own network
    /// namespace (members `0..masters` are the masters).
    pub fn netns(masters: usize, nodes: usize) -> Fleet {
        let net = Net::new(masters + nodes);
        let addrs = (0..masters)
            .map(|i| format!("{}:7443", net.ip(i)))
            .collect();
        Fleet::new(addrs, Some(net))
    }

    fn new(addrs: Vec<String>, net: Option<Net>) -> Fleet {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("config");
        let masters = addrs.iter().map(|_| None).collect();
        Fleet {
            dir,
            config,
            net,
            addrs,
            masters,
            nodes: HashMap::new(),
            master_token: None,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A command for `flotilla`, inside member `member`'s namespace if any.
    fn command(&self, member: usize) -> Command {
        match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(member), BIN]);
                c
            }
            None => Command::new(BIN),
        }
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log file")
    }

    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts the founding master, then joins the others, and waits until
    /// all are voters. The config then lists every master.
    pub fn start_all(&mut self) {
        self.spawn_master(0, None);
        wait_for("the first master", Duration::from_secs(30), || {
            self.cli(&["get", "nodes"]).status.success().then_some(())
        });
        // Clients fail over among every master from now on.
        let text = std::fs::read_to_string(&self.config).expect("admin config");
        let mut cfg = ClientConfigFile::parse(&text).expect("config parses");
        cfg.masters = self.addrs.clone();
        std::fs::write(&self.config, cfg.render()).expect("config written");
        let token = self.ok(&["token", "create", "--master"]).trim().to_string();
        self.master_token = Some(token.clone());
        for i in 1..self.addrs.len() {
            self.spawn_master(i, Some(&token));
        }
        self.wait_voters(self.addrs.len());
    }

    fn spawn_master(&mut self, i: usize, token: Option<&str>) {
        let data = self.path(&format!("m{i}"));
        let id = (i + 1).to_string();
        let mut cmd = self.command(i);
        cmd.args(["master", "--node-grace", "10s", "--listen", &self.addrs[i]])
            .args([
                "--advertise",
                &self.addrs[i],
                "--node-id",
                &id,
                "--data-dir",
            ])
            .arg(&data);
        if let Some(t) = token {
            cmd.args(["--join", &self.addrs[0], "--token", t]);
        }
        let log = self.log(&format!("m{i}"));
        let child = cmd
            .env("FLOTILLA_CONFIG", self.path(&format!("m{i}-admin-config")))
            .env("FLOTILLA_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start master");
        // The founder's admin config is the test's.
        if i == 0 && !self.config.exists() {
            let written = self.path("m0-admin-config");
            wait_for("the admin config", Duration::from_secs(30), || {
                std::fs::copy(&written, &self.config).ok()
            });
        }
        self.masters[i] = Some(child);
    }

    /// Restarts master `i` on its data directory (no join needed: it is a member).
    pub fn restart_master(&mut self, i: usize) {
        self.spawn_master(i, None);
    }

    /// SIGKILL, no goodbye.
    pub fn kill_master(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for master `i` to stop by itself (within `limit`) and gives
    /// how it ended.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> std::process::ExitStatus {
        let child = self.masters[i].as_mut().expect("master is running");
        let status = wait_for(
            &format!("master {} to stop by itself", i + 1),
            limit,
            || child.try_wait().ok().flatten(),
        );
        self.masters[i] = None;
        status
    }

    /// `flotilla ARGS` with the admin config, from the test's side of the network.
    pub fn cli(&self, args: &[&str]) -> Output {
        crate::common::run_flotilla(args, &self.config)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flotilla {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cluster status -o json`, if some master answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["cluster", "status", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The index of the master that leads, once one does (as the leader reports).
    pub fn leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(30), || {
            let s = self.status()?;
            let leader = s["leader"].as_u64()?;
            (s["reported_by"].as_u64()? == leader).then_some(leader as usize - 1)
        })
    }

    /// Waits until the leader counts `count` voters, all caught up.
    pub fn wait_voters(&self, count: usize) {
        wait_for(
            &format!("{count} voting masters, caught up"),
            Duration::from_secs(60),
            || {
                let s = self.status()?;
                let members = s["members"].as_array()?;
                let voters = members
                    .iter()
                    .filter(|m| m["voter"].as_bool() == Some(true))
                    .count();
                let caught_up = members.iter().all(|m| m["lag"].as_u64() == Some(0));
                (voters == count && caught_up && s["leader"] == s["reported_by"]).then_some(())
            },
        );
    }

    /// Starts node `name` in member `member`'s namespace, joined through the
    /// first master and told of no other: it learns them.
    pub fn start_node(&mut self, name: &str, member: usize) {
        let data = self.path(name);
        let mut cmd = self.command(member);
        cmd.args([
            "node",
            "--master",
            &self.addrs[0],
            "--name",
            name,
            "--data-dir",
        ])
        .arg(&data)
        // Nodes of one fleet may share a network namespace: any free peer
        // port each, and no host-routing port.
        .args([
            "--proxy-peer-port",
            "0",
            "--host-port",
            "0",
            "--host-tls-port",
            "0",
        ]);
        if !data.join("credentials.yaml").exists() {
            let token = self.ok(&["token", "create"]).trim().to_string();
            cmd.args(["--token", &token]);
        }
        let log = self.log(name);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node");
        self.nodes.insert(name.to_string(), child);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each process said, to tell why the test failed.
            let mut names: Vec<String> = (0..self.addrs.len()).map(|i| format!("m{i}")).collect();
            names.extend(self.nodes.keys().cloned());
            for name in names {
                let log = self.log_text(&name);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("--- {name}.log (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for (_, mut n) in self.nodes.drain() {
            let _ = n.kill();
            let _ = n.wait();
        }
        for i in 0..self.masters.len() {
            self.kill_master(i);
        }
        // The processes are gone before their namespaces are removed.
        self.net.take();
        // A failing test keeps the masters' data directories and logs when
        // FLOTILLA_TEST_KEEP is set, and says where.
        if std::thread::panicking() && std::env::var_os("FLOTILLA_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept the fleet's files in {}", dir.keep().display());
        }
    }
}
