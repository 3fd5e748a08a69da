//! The etcd side of the raft benchmark.
//!
//! The benchmark compares Flotilla's three-master raft cluster with etcd 3.4
//! (Debian 12's `etcd-server` package) under the same load program: write
//! latency with one client, throughput with many concurrent clients, and the
//! time from a SIGKILL of the leader to the first acknowledged write.
//!
//! [`EtcdCluster`] runs three `etcd` members on loopback, each in its own
//! data directory under a directory the caller provides, with etcd's default
//! settings apart from names, URLs and the initial cluster (so: heartbeat
//! 100 ms, election timeout 1000 ms, snapshot count 100000, and the WAL
//! synced to disk before a write is acknowledged). Member `i` listens for clients on `base_port + i` and for
//! peers on `base_port + 10 + i`. Each member is started as:
//!
//! ```text
//! etcd --name m<i> --data-dir <dir>/m<i>.etcd
//!      --listen-client-urls http://127.0.0.1:<base+i>
//!      --advertise-client-urls http://127.0.0.1:<base+i>
//!      --listen-peer-urls http://127.0.0.1:<base+10+i>
//!      --initial-advertise-peer-urls http://127.0.0.1:<base+10+i>
//!      --initial-cluster m0=http://127.0.0.1:<base+10>,m1=...,m2=...
//!      --initial-cluster-token flotilla-bench --initial-cluster-state new
//! ```
//!
//! `ETCD_*` variables are removed from the members' environment, since etcd
//! reads any of its flags from them. `$ETCD_BIN` names another binary than
//! the `etcd` on `PATH`.
//!
//! [`EtcdClient`] talks to one member over one keep-alive HTTP/1.1
//! connection, through the JSON gateway that etcd 3.4 serves on its client
//! port (`/v3/...`; `/v3beta/...` is an alias there, `/v3alpha` is gone).
//! Keys and values travel base64-encoded in JSON, as the gateway requires.
//! A put sent to a follower is forwarded by etcd to the leader, as with the
//! gRPC client. Every exchange is bounded by the client's timeout, so a
//! killed or leaderless member yields an error rather than a hang; moving
//! to another member is left to the caller.

// Not every benchmark scenario uses every item of this API.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Members in the cluster.
pub const MEMBERS: usize = 3;
/// Peer port of member `i` is `base_port + PEER_PORT_OFFSET + i`.
pub const PEER_PORT_OFFSET: u16 = 10;
/// Per-exchange timeout of a client made with [`EtcdClient::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`EtcdCluster::start`] waits for all members to agree on a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one status query made by [`EtcdCluster::leader`].
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
const CLUSTER_TOKEN: &str = "flotilla-bench";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

struct Member {
    name: String,
    client: SocketAddr,
    log: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
}

/// Three etcd members on loopback, killed (SIGKILL) when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Starts three members with data directories and logs (`m<i>.log`,
    /// stdout and stderr together) in `dir`, and waits until every member
    /// answers and all name the same leader. The data directories must not
    /// exist yet: etcd would otherwise rejoin an old cluster.
    pub async fn start(dir: &Path, base_port: u16) -> Result<EtcdCluster, String> {
        let top = u32::from(base_port) + u32::from(PEER_PORT_OFFSET) + MEMBERS as u32 - 1;
        if base_port < 1024 || top > u32::from(u16::MAX) {
            return Err(format!(
                "base port {base_port} out of range: need 1024 <= port and port + {} <= 65535",
                u32::from(PEER_PORT_OFFSET) + MEMBERS as u32 - 1
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let client_port = |i: usize| base_port + i as u16;
        let peer_port = |i: usize| base_port + PEER_PORT_OFFSET + i as u16;
        for i in 0..MEMBERS {
            let data = dir.join(format!("m{i}.etcd"));
            if data.exists() {
                return Err(format!(
                    "data directory {} already exists; etcd needs a fresh one",
                    data.display()
                ));
            }
            for port in [client_port(i), peer_port(i)] {
                if let Err(e) = StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                    return Err(format!(
                        "port 127.0.0.1:{port} is not free ({e}); is another etcd running?"
                    ));
                }
            }
        }
        let initial_cluster = (0..MEMBERS)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_port(i)))
            .collect::<Vec<_>>()
            .join(",");
        let bin = std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into());

        // Members already spawned are killed by Drop if a later step fails.
        let mut cluster = EtcdCluster {
            members: Vec::with_capacity(MEMBERS),
            dir: dir.to_path_buf(),
        };
        for i in 0..MEMBERS {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{}", client_port(i));
            let peer_url = format!("http://127.0.0.1:{}", peer_port(i));
            let log = dir.join(format!("{name}.log"));
            let out =
                File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            let err = out
                .try_clone()
                .map_err(|e| format!("cannot reopen {}: {e}", log.display()))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join(format!("{name}.etcd")))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-token")
                .arg(CLUSTER_TOKEN)
                .arg("--initial-cluster-state")
                .arg("new")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(key);
                }
            }
            let child = cmd.spawn().map_err(|e| {
                format!(
                    "cannot run {} (Debian: apt-get install etcd-server): {e}",
                    Path::new(&bin).display()
                )
            })?;
            cluster.members.push(Member {
                name,
                client: SocketAddr::from((Ipv4Addr::LOCALHOST, client_port(i))),
                log,
                child: Some(child),
            });
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Polls until every member answers and all report the same leader.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no member answered yet");
        loop {
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        m.child = None;
                        return Err(format!(
                            "etcd member {} exited during start-up ({status}); end of {}:\n{}",
                            m.name,
                            m.log.display(),
                            log_tail(&m.log)
                        ));
                    }
                }
            }
            let mut leaders = Vec::with_capacity(MEMBERS);
            for m in &self.members {
                match member_status(m.client).await {
                    Ok(s) => leaders.push(s.leader),
                    Err(e) => {
                        last = format!("{}: {e}", m.name);
                        break;
                    }
                }
            }
            if leaders.len() == MEMBERS {
                if leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]) {
                    if self.leader().await.is_some() {
                        return Ok(());
                    }
                    last = "the leader named by all members does not say it leads".into();
                } else {
                    last = format!("members name leaders {leaders:?} (0: none)");
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd cluster in {} not ready after {START_TIMEOUT:?}: {last}",
                    self.dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member that reports itself as leader, asking each running member
    /// in turn (each query bounded by a short timeout). `None` while no
    /// member leads, e.g. during an election.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if let Ok(s) = member_status(m.client).await {
                if s.member_id != 0 && s.leader == s.member_id {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Sends SIGKILL to `member` and reaps it. Out-of-range or already
    /// killed members are ignored.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members.get_mut(member).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether `member` was started and not killed (it may still have died).
    pub fn is_running(&self, member: usize) -> bool {
        self.members.get(member).is_some_and(|m| m.child.is_some())
    }

    /// Client address of each member, indexed by member.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// Log file of each member, indexed by member.
    pub fn log_files(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.log.clone()).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// One member's view of the cluster, from `/v3/maintenance/status`.
/// Ids are etcd's 64-bit member ids; `leader` is 0 when the member knows
/// of no leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
}

async fn member_status(addr: SocketAddr) -> Result<MemberStatus, String> {
    let mut c = EtcdClient::connect_timeout(addr, STATUS_TIMEOUT).await?;
    c.status().await
}

/// One keep-alive HTTP/1.1 connection to one etcd member.
///
/// After any error the connection is dropped and every later call fails;
/// the caller connects again, to this or another member.
pub struct EtcdClient {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    timeout: Duration,
    req: Vec<u8>,
    rbuf: Vec<u8>,
}

impl EtcdClient {
    /// Connects with [`DEFAULT_TIMEOUT`] for the connect and each exchange.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        Self::connect_timeout(addr, DEFAULT_TIMEOUT).await
    }

    /// Connects with `timeout` for the connect and for each later exchange
    /// (request sent and whole response read).
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect to etcd at {addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "connect to etcd at {addr}: timed out after {timeout:?}"
                ))
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set TCP_NODELAY on connection to {addr}: {e}"))?;
        Ok(EtcdClient {
            addr,
            stream: Some(stream),
            timeout,
            req: Vec::with_capacity(1024),
            rbuf: Vec::with_capacity(4096),
        })
    }

    /// The member this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the bound on each later exchange.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Writes `value` under `key` (`/v3/kv/put`). Succeeds only when the
    /// member answers HTTP 200 with a body carrying no `"error"`, i.e. the
    /// write was committed by the cluster and applied by the member.
    pub async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let mut body = String::with_capacity(32 + (key.len() + value.len()) * 4 / 3);
        body.push_str("{\"key\":\"");
        base64_into(key.as_bytes(), &mut body);
        body.push_str("\",\"value\":\"");
        base64_into(value, &mut body);
        body.push_str("\"}");
        let resp = self.post("/v3/kv/put", body.as_bytes()).await?;
        if contains(&resp, b"\"error\"") {
            return Err(format!(
                "put to etcd at {}: error in reply: {}",
                self.addr,
                snippet(&resp)
            ));
        }
        Ok(())
    }

    /// The member's id, its leader and its term (`/v3/maintenance/status`).
    pub async fn status(&mut self) -> Result<MemberStatus, String> {
        let resp = self.post("/v3/maintenance/status", b"{}").await?;
        let field = |name: &str| -> Result<u64, String> {
            match json_scalar(&resp, name) {
                // The gateway leaves out fields that are zero.
                None => Ok(0),
                Some(v) => v.parse::<u64>().map_err(|_| {
                    format!(
                        "status from etcd at {}: field {name} is not a number: {}",
                        self.addr,
                        snippet(&resp)
                    )
                }),
            }
        };
        let status = MemberStatus {
            member_id: field("member_id")?,
            leader: field("leader")?,
            raft_term: field("raft_term")?,
        };
        if status.member_id == 0 {
            return Err(format!(
                "status from etcd at {}: no member_id in reply: {}",
                self.addr,
                snippet(&resp)
            ));
        }
        Ok(status)
    }

    /// POSTs a JSON body and returns the body of an HTTP 200 reply.
    async fn post(&mut self, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let addr = self.addr;
        let Some(mut stream) = self.stream.take() else {
            return Err(format!(
                "connection to etcd at {addr} was dropped after an earlier error; reconnect"
            ));
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.req.clear();
        self.req.extend_from_slice(head.as_bytes());
        self.req.extend_from_slice(body);
        let exchanged = tokio::time::timeout(
            self.timeout,
            exchange(&mut stream, &self.req, &mut self.rbuf),
        )
        .await;
        let resp = match exchanged {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(format!("POST {path} to etcd at {addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "POST {path} to etcd at {addr}: no complete reply within {:?}",
                    self.timeout
                ))
            }
        };
        if resp.keep_alive {
            self.stream = Some(stream);
        }
        if resp.status != 200 {
            return Err(format!(
                "POST {path} to etcd at {addr}: HTTP {}: {}",
                resp.status,
                snippet(&resp.body)
            ));
        }
        Ok(resp.body)
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Sends one request and reads one response: status line, headers, then a
/// body delimited by Content-Length, by chunked encoding, or by the end of
/// the connection.
async fn exchange(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Response, String> {
    stream
        .write_all(req)
        .await
        .map_err(|e| format!("sending request: {e}"))?;
    buf.clear();
    let head_len = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("reply head longer than {MAX_HEAD} bytes"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                "connection closed before any reply".to_string()
            } else {
                "connection closed in the middle of the reply head".to_string()
            });
        }
    };
    let head = std::str::from_utf8(&buf[..head_len - 4])
        .map_err(|_| "reply head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x reply: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut keep_alive = version != "HTTP/1.0";
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line: {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length: {value:?}"))?;
                if n > MAX_BODY {
                    return Err(format!("reply body of {n} bytes exceeds {MAX_BODY}"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
    }
    let mut pos = head_len;
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        let mut body = Vec::new();
        loop {
            let line = take_line(stream, buf, &mut pos).await?;
            let size_text = line.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16)
                .map_err(|_| format!("bad chunk size line: {line:?}"))?;
            if size == 0 {
                // Trailers, up to an empty line.
                while !take_line(stream, buf, &mut pos).await?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(format!("chunked reply body exceeds {MAX_BODY} bytes"));
            }
            fill_to(stream, buf, pos + size + 2).await?;
            body.extend_from_slice(&buf[pos..pos + size]);
            if &buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err("chunk not followed by CRLF".to_string());
            }
            pos += size + 2;
        }
        body
    } else if let Some(n) = content_length {
        fill_to(stream, buf, pos + n).await?;
        let body = buf[pos..pos + n].to_vec();
        pos += n;
        body
    } else {
        // Delimited by the end of the connection.
        keep_alive = false;
        while read_more(stream, buf).await? > 0 {
            if buf.len() - pos > MAX_BODY {
                return Err(format!("reply body exceeds {MAX_BODY} bytes"));
            }
        }
        buf[pos..].to_vec()
    };
    if buf.len() > pos {
        // Bytes past the reply: the stream is out of step with requests.
        keep_alive = false;
    }
    Ok(Response {
        status,
        body,
        keep_alive,
    })
}

/// Reads what is available (at least one byte unless at end of stream)
/// and appends it to `buf`; returns the count, 0 at end of stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let old = buf.len();
    buf.resize(old + 8192, 0);
    let r = stream.read(&mut buf[old..]).await;
    match r {
        Ok(n) => {
            buf.truncate(old + n);
            Ok(n)
        }
        Err(e) => {
            buf.truncate(old);
            Err(format!("reading reply: {e}"))
        }
    }
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill_to(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Result<(), String> {
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            return Err("connection closed in the middle of the reply body".to_string());
        }
    }
    Ok(())
}

/// The CRLF-terminated line at `pos` (without the CRLF); advances `pos`.
async fn take_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
) -> Result<String, String> {
    loop {
        if let Some(p) = find(&buf[*pos..], b"\r\n") {
            let line = String::from_utf8_lossy(&buf[*pos..*pos + p]).into_owned();
            *pos += p + 2;
            return Ok(line);
        }
        if buf.len() - *pos > MAX_HEAD {
            return Err("line in chunked reply too long".to_string());
        }
        if read_more(stream, buf).await? == 0 {
            return Err("connection closed in the middle of a chunked reply".to_string());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// The text of scalar field `name` in a flat scan of a JSON object: a
/// quoted string (as the gateway writes 64-bit integers) or a bare number.
/// Enough for etcd's replies, whose field names are unique.
fn json_scalar(json: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let at = find(json, key.as_bytes())? + key.len();
    let rest = std::str::from_utf8(&json[at..]).ok()?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        Some(s[..s.find('"')?].to_string())
    } else {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }
}

/// The start of a reply body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None if text.is_empty() => "(empty body)".to_string(),
        None => text.to_string(),
    }
}

/// Last lines of a member's log, for start-up errors.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(log unreadable)".to_string();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut tail = Vec::new();
    let _ = f.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// Standard base64 with padding, as the gateway expects for bytes fields.
fn base64_into(data: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            base64_into(input.as_bytes(), &mut out);
            assert_eq!(out, want, "input {input:?}");
        }
        let mut out = String::new();
        base64_into(&[0xfb, 0xff, 0xbf], &mut out);
        assert_eq!(out, "+/+/");
    }

    #[test]
    fn json_scalar_reads_quoted_and_bare_values() {
        let body = br#"{"header":{"member_id":"12404940210331354000","raft_term":"2"},"leader": "848029646932359706","dbSize":20480}"#;
        assert_eq!(
            json_scalar(body, "member_id").as_deref(),
            Some("12404940210331354000")
        );
        assert_eq!(
            json_scalar(body, "leader").as_deref(),
            Some("848029646932359706")
        );
        assert_eq!(json_scalar(body, "dbSize").as_deref(), Some("20480"));
        assert_eq!(json_scalar(body, "missing"), None);
        assert_eq!(json_scalar(br#"{"leader":"unterminated"#, "leader"), None);
    }

    /// Serves the canned replies, one per request read, on a loopback port;
    /// then holds the connection open without answering, or closes it.
    async fn fake_member(replies: Vec<&'static [u8]>, hold_open: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for reply in replies {
                let mut req = Vec::new();
                loop {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&b[..n]);
                    if let Some(p) = find(&req, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&req[..p]).to_ascii_lowercase();
                        let len: usize = head
                            .split("\r\n")
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if req.len() >= p + 4 + len {
                            break;
                        }
                    }
                }
                s.write_all(reply).await.unwrap();
            }
            if hold_open {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn parses_length_and_chunked_replies_and_times_out() {
        let addr = fake_member(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"header\":{}}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"hea\r\n8;x=y\r\nder\":{}}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n{\"header\":{\"member_id\":\"7\",\"raft_term\":\"3\"},\"leader\":\"7\"}   ",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 41\r\n\r\n{\"error\":\"etcdserver: request timed out\"}",
        ], true)
        .await;
        let mut c = EtcdClient::connect_timeout(addr, Duration::from_millis(300))
            .await
            .unwrap();
        c.put("k", b"v").await.unwrap();
        c.put("k", b"v").await.unwrap();
        let st = c.status().await.unwrap();
        assert_eq!(
            st,
            MemberStatus {
                member_id: 7,
                leader: 7,
                raft_term: 3
            }
        );
        let err = c.put("k", b"v").await.unwrap_err();
        assert!(
            err.contains("HTTP 503") && err.contains("timed out"),
            "{err}"
        );
        // Error replies with a length keep the connection; the next request
        // gets no answer and must time out.
        let err = c.put("k", b"v").await.unwrap_err();
        assert!(err.contains("no complete reply"), "{err}");
        let err = c.put("k", b"v").await.unwrap_err();
        assert!(err.contains("reconnect"), "{err}");
    }

    #[tokio::test]
    async fn closed_connection_is_an_error() {
        let addr = fake_member(vec![b"HTTP/1.1 200 OK\r\nContent-Len"], false).await;
        let mut c = EtcdClient::connect_timeout(addr, Duration::from_millis(300))
            .await
            .unwrap();
        let err = c.put("k", b"v").await.unwrap_err();
        assert!(
            err.contains("closed in the middle of the reply head"),
            "{err}"
        );
    }
}
