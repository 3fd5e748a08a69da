//! The clients of the chaos tests: each writes and reads a few registers
//! (annotation `v` of pods that are never scheduled) through the masters and
//! records every operation with its start, end and outcome, for the
//! linearizability checker. Every client also creates pods of its own and
//! remembers those the cluster acknowledged, to check afterwards that none
//! was lost.
//!
//! Outcomes: an answer is `Ok`; a refusal that says the write was not
//! applied (conflict, invalid, ...) is `Failed`; a timeout, a lost
//! connection or an `Unavailable` answer is `Unknown` for a write (it may
//! have been applied) and dropped for a read.

use flotilla_api::config::ClientConfigFile;
use flotilla_api::net::{Client, NetError};
use flotilla_api::objects::{Kind, Object, Pod};
use flotilla_api::protocol::{ErrorCode, Request, Response, ALPN};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The registers: pods `reg-0` .. `reg-{REGISTERS - 1}`.
pub const REGISTERS: usize = 3;
/// Longest one operation may take before it counts as timed out.
const OP_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Write(u64),
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result_ {
    /// Acknowledged; for a read, the value seen.
    Ok(Option<u64>),
    /// Refused: certainly not applied.
    Failed,
    /// No answer: may or may not have been applied.
    Unknown,
}

/// One operation as a client saw it; times in nanoseconds since the run began.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub key: String,
    pub action: Action,
    pub invoke: u64,
    pub complete: u64,
    pub result: Result_,
}

/// What one client did.
#[derive(Debug, Default)]
pub struct ClientRun {
    pub records: Vec<Record>,
    /// Pods whose creation the cluster acknowledged.
    pub created: Vec<String>,
    pub errors: Vec<String>,
}

/// The TLS configuration of the admin config at `path`.
pub fn admin_tls(path: &Path) -> (Vec<String>, rustls::ClientConfig) {
    let cfg = ClientConfigFile::parse(&std::fs::read_to_string(path).expect("config"))
        .expect("config parses");
    let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
        .expect("tls");
    (cfg.masters, tls)
}

fn register(i: usize) -> String {
    format!("reg-{i}")
}

/// The pod behind a register: pinned to a node that never exists, so only
/// clients write it.
fn register_pod(name: &str, module: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = name.to_string();
    p.metadata.namespace = "default".into();
    p.spec.module = module.to_string();
    p.spec
        .node_selector
        .insert("chaos.flotilla.dev/never".into(), "true".into());
    p
}

/// Creates the registers (empty) and gives back the uploaded module digest
/// they name.
pub async fn create_registers(addrs: &[String], tls: rustls::ClientConfig, module: &str) {
    let client = Client::connect(addrs, tls, "chaos-setup")
        .await
        .expect("connect");
    for i in 0..REGISTERS {
        let pod = register_pod(&register(i), module);
        match client.call(&Request::Create(Object::Pod(pod))).await {
            Ok(Response::Object(_)) => {}
            other => panic!("creating register {i}: {other:?}"),
        }
    }
}

/// Runs client `id` until `stop`: random reads and writes of the registers,
/// and now and then a create, through master `prefer` first.
pub async fn run_client(
    id: usize,
    addrs: Vec<String>,
    prefer: usize,
    tls: rustls::ClientConfig,
    module: String,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> ClientRun {
    let mut run = ClientRun::default();
    let mut order = addrs.clone();
    order.rotate_left(prefer % addrs.len().max(1));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let now = |epoch: Instant| epoch.elapsed().as_nanos() as u64;
    let mut client: Option<Client> = None;
    let mut writes = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let c = match &client {
            Some(c) if c.conn.close_reason().is_none() => c.clone(),
            _ => match tokio::time::timeout(
                OP_TIMEOUT,
                Client::connect(&order, tls.clone(), "chaos"),
            )
            .await
            {
                Ok(Ok(c)) => {
                    client = Some(c.clone());
                    c
                }
                Ok(Err(e)) => {
                    run.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => {
                    run.errors.push("connect: timed out".into());
                    continue;
                }
            },
        };
        let roll = next() % 100;
        let key = register((next() % REGISTERS as u64) as usize);
        if roll < 5 {
            // A create of a pod of this client's own.
            let name = format!("made-{id}-{writes}");
            writes += 1;
            let pod = register_pod(&name, &module);
            let answer =
                tokio::time::timeout(OP_TIMEOUT, c.call(&Request::Create(Object::Pod(pod)))).await;
            match answer {
                Ok(Ok(Response::Object(_))) => run.created.push(name),
                Ok(Err(e)) => {
                    run.errors.push(format!("create {name}: {e}"));
                    if !matches!(e, NetError::Api(_)) {
                        client = None;
                    }
                }
                Ok(Ok(other)) => run.errors.push(format!("create {name}: {other:?}")),
                Err(_) => {
                    run.errors.push(format!("create {name}: timed out"));
                    client = None;
                }
            }
            continue;
        }
        let invoke = now(epoch);
        let (action, result) = if roll < 55 {
            let value = (id as u64) * 1_000_000 + writes;
            writes += 1;
            (Action::Write(value), write(&c, &key, value, &module).await)
        } else {
            (Action::Read, read(&c, &key).await)
        };
        let complete = now(epoch);
        if let Err(e) = &result {
            run.errors.push(format!("{action:?} {key}: {e}"));
            if e.lost_connection {
                client = None;
            }
        }
        let result = match (result, &action) {
            (Ok(v), _) => Result_::Ok(v),
            (Err(e), Action::Write(_)) if e.refused => Result_::Failed,
            (Err(_), Action::Write(_)) => Result_::Unknown,
            (Err(_), Action::Read) => Result_::Failed,
        };
        run.records.push(Record {
            client: id,
            key,
            action,
            invoke,
            complete,
            result,
        });
    }
    run
}

/// Why an operation got no answer.
#[derive(Debug)]
struct OpError {
    message: String,
    /// The master refused it: not applied.
    refused: bool,
    /// The connection is gone or stuck: make a new one.
    lost_connection: bool,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn op_error(e: NetError) -> OpError {
    match e {
        NetError::Api(api) => OpError {
            refused: !matches!(api.code, ErrorCode::Unavailable | ErrorCode::Internal),
            lost_connection: false,
            message: api.to_string(),
        },
        other => OpError {
            refused: false,
            lost_connection: true,
            message: other.to_string(),
        },
    }
}

fn timed_out() -> OpError {
    OpError {
        message: "timed out".into(),
        refused: false,
        lost_connection: true,
    }
}

/// Sets register `key` to `value` (an unconditional update of the annotation).
async fn write(c: &Client, key: &str, value: u64, module: &str) -> Result<Option<u64>, OpError> {
    let mut pod = register_pod(key, module);
    pod.metadata
        .annotations
        .insert("v".into(), value.to_string());
    match tokio::time::timeout(OP_TIMEOUT, c.call(&Request::Update(Object::Pod(pod)))).await {
        Ok(Ok(Response::Object(_))) => Ok(Some(value)),
        Ok(Ok(other)) => Err(OpError {
            message: format!("unexpected answer {other:?}"),
            refused: false,
            lost_connection: false,
        }),
        Ok(Err(e)) => Err(op_error(e)),
        Err(_) => Err(timed_out()),
    }
}

/// Reads register `key` (linearizable read).
async fn read(c: &Client, key: &str) -> Result<Option<u64>, OpError> {
    let req = Request::Get {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: key.to_string(),
        stale: false,
    };
    match tokio::time::timeout(OP_TIMEOUT, c.call(&req)).await {
        Ok(Ok(Response::Object(Object::Pod(p)))) => {
            Ok(p.metadata.annotations.get("v").and_then(|v| v.parse().ok()))
        }
        Ok(Ok(other)) => Err(OpError {
            message: format!("unexpected answer {other:?}"),
            refused: false,
            lost_connection: false,
        }),
        Ok(Err(e)) => Err(op_error(e)),
        Err(_) => Err(timed_out()),
    }
}

/// The pods master `addr` holds in its own copy (a stale read of that one master).
pub async fn pods_on(addr: &str, tls: rustls::ClientConfig) -> Option<Vec<String>> {
    let c = tokio::time::timeout(
        OP_TIMEOUT,
        Client::connect(&[addr.to_string()], tls, "chaos-check"),
    )
    .await
    .ok()?
    .ok()?;
    let req = Request::List(flotilla_api::protocol::ListOptions {
        kind: Some(Kind::Pod),
        namespace: Some("default".into()),
        stale: true,
        ..Default::default()
    });
    match c.call(&req).await.ok()? {
        Response::List { items, .. } => Some(items.iter().map(|o| o.meta().name.clone()).collect()),
        _ => None,
    }
}
