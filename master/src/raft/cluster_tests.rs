//! Three masters in one process, each with its own store, raft storage,
//! certificates and QUIC endpoint, talking raft through the real service
//! path (`frontend::quic::accept_loop`, authorization, [`super::rpc::handle`]) and
//! [`Network`]. A shared [`Hook`] partitions masters without touching
//! sockets. Every wait polls with a deadline, so a broken cluster fails the
//! test instead of hanging it.

use super::*;
use crate::apiserver::{ApiServer, Caller};
use crate::controllers::node_lifecycle::Heartbeats;
use crate::nodes::NodeConnections;
use crate::pki::Pki;
use crate::store::{Command, Outcome, Store};
use flotilla_api::identity::{ClusterCa, Identity};
use flotilla_api::meta::ObjectMeta;
use flotilla_api::net::{Client, NetError};
use flotilla_api::objects::{Kind, Object, Pod};
use flotilla_api::protocol::{ErrorCode, RaftRpc, Request, ALPN, MASTER_ALPNS, RAFT_ALPN};
use flotilla_api::time::Time;
use openraft::error::RPCError;
use openraft::network::{RaftNetwork, RaftNetworkFactory};
use openraft::{Config, Raft, ServerState};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest any one wait of these tests may take.
const WAIT: Duration = Duration::from_secs(20);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(20);

/// One master of the test cluster.
struct Master {
    id: u64,
    _dir: TempDir,
    store: Store,
    raft: Raft<TypeConfig>,
    server: quinn::Endpoint,
    network: Network,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Master {
    /// Stops raft and the service, and closes both endpoints: to the others
    /// this master is gone.
    async fn kill(&self) {
        let _ = self.raft.shutdown().await;
        self.shutdown.cancel();
        self.server.close(0u32.into(), b"killed");
        self.network.close();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

/// The cluster, its CA and the set of masters the hook cuts off.
struct Cluster {
    ca: ClusterCa,
    masters: Vec<Master>,
    isolated: Arc<Mutex<HashSet<u64>>>,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    /// Three masters; master 1 initializes the membership {1, 2, 3}.
    async fn start() -> Cluster {
        Cluster::start_with(raft_config()).await
    }

    /// Three masters with raft settings of the test's own.
    async fn start_with(config: Arc<Config>) -> Cluster {
        let ca = ClusterCa::generate("raft-test").expect("ca");
        let isolated: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let cut = isolated.clone();
        let hook: Hook = Arc::new(move |from, to| {
            let cut = cut.lock().expect("hook lock");
            if cut.contains(&from) || cut.contains(&to) {
                Verdict::Drop
            } else {
                Verdict::Deliver
            }
        });
        let mut masters = Vec::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=3u64 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store = Store::open(&dir.path().join("state.redb"), 1000).expect("store");
            let log = LogStore::open(&dir.path().join(LOG_FILE)).expect("log");
            let sm = StateMachine::open(store.clone(), &dir.path().join(SNAPSHOT_FILE))
                .expect("state machine");
            let server_cert = ca
                .issue_server(&["127.0.0.1".to_string()], year())
                .expect("server certificate");
            let client_cert = ca
                .issue_client(&Identity::Master(id), year())
                .expect("client certificate");
            let server_tls =
                flotilla_api::tls::server_config(&server_cert, &ca.key.cert_pem, &MASTER_ALPNS)
                    .expect("server tls");
            let client_tls =
                flotilla_api::tls::client_config(&ca.key.cert_pem, Some(&client_cert), RAFT_ALPN)
                    .expect("client tls");
            let server = flotilla_api::net::server_endpoint(([127, 0, 0, 1], 0).into(), server_tls)
                .expect("server endpoint");
            let addr = server.local_addr().expect("local address");
            let network = Network::new(id, client_tls)
                .expect("network")
                .with_hook(hook.clone());
            let raft = Raft::new(id, config.clone(), network.clone(), log, sm)
                .await
                .expect("raft starts");
            let ctx = context(
                &ca,
                store.clone(),
                server_cert,
                raft.clone(),
                network.clone(),
            );
            let (shutdown, tracker) = serve(server.clone(), ctx);
            addrs.insert(id, addr);
            masters.push(Master {
                id,
                _dir: dir,
                store,
                raft,
                server,
                network,
                shutdown,
                tracker,
            });
        }
        let members: BTreeMap<u64, BasicNode> = addrs
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
            .collect();
        masters[0]
            .raft
            .initialize(members)
            .await
            .expect("membership initialized");
        Cluster {
            ca,
            masters,
            isolated,
            addrs,
        }
    }

    fn master(&self, id: u64) -> &Master {
        self.masters
            .iter()
            .find(|m| m.id == id)
            .expect("master exists")
    }

    fn isolate(&self, id: u64) {
        self.isolated.lock().expect("hook lock").insert(id);
    }

    fn heal(&self) {
        self.isolated.lock().expect("hook lock").clear();
    }

    /// The leader every master of `among` agrees on, once they do, with its
    /// term.
    async fn leader(&self, among: &[u64]) -> (u64, u64) {
        wait_for("an agreed leader", || {
            let views: Vec<_> = among
                .iter()
                .map(|id| self.master(*id).raft.metrics().borrow().clone())
                .collect();
            let leader = views.first()?.current_leader?;
            let agreed = views.iter().all(|m| m.current_leader == Some(leader));
            let m = views.iter().find(|m| m.id == leader)?;
            (agreed && m.state == ServerState::Leader).then_some((leader, m.current_term))
        })
        .await
    }

    /// Waits until `master`'s store holds pod `name`.
    async fn has_pod(&self, master: u64, name: &str) {
        let store = &self.master(master).store;
        wait_for(&format!("pod {name} on master {master}"), || {
            store
                .get(Kind::Pod, "default", name)
                .expect("store reads")
                .map(|_| ())
        })
        .await
    }

    /// The request-side handle of `master` (what its service writes and
    /// reads through).
    fn handle(&self, master: u64) -> super::Cluster {
        let m = self.master(master);
        super::Cluster::new(m.raft.clone(), m.network.clone(), "raft-test")
    }

    async fn stop(&self) {
        for m in &self.masters {
            m.kill().await;
        }
    }
}

/// Short timeouts, so elections take well under a second.
fn raft_config() -> Arc<Config> {
    Arc::new(
        Config {
            cluster_name: "raft-test".into(),
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Well inside one frame, envelope included.
            snapshot_max_chunk_size: 1 << 20,
            ..Config::default()
        }
        .validate()
        .expect("raft config"),
    )
}

/// What the service of a master shares, with `raft` and `network` as given.
fn context(
    ca: &ClusterCa,
    store: Store,
    server_cert: flotilla_api::identity::CertifiedKey,
    raft: Raft<TypeConfig>,
    network: Network,
) -> ApiServer {
    ApiServer {
        store,
        pki: Arc::new(Pki::in_memory("raft-test", ca.clone(), server_cert).expect("pki")),
        advertise: Vec::new(),
        nodes: NodeConnections::default(),
        heartbeats: Heartbeats::new(),
        cluster: super::Cluster::new(raft, network, "raft-test"),
        node_watches: crate::apiserver::NodeWatches::default(),
        code: crate::code::CodeShop::new(None, std::env::temp_dir().join("flotilla-no-code")),
    }
}

/// A year's validity from now, for test certificates.
fn year() -> flotilla_api::identity::Validity {
    flotilla_api::identity::Validity::new(
        flotilla_api::time::Time::now(),
        flotilla_api::identity::DEFAULT_CERT_LIFETIME,
    )
}

/// Serves `endpoint` with the real service until the token fires.
fn serve(endpoint: quinn::Endpoint, ctx: ApiServer) -> (CancellationToken, TaskTracker) {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (stop, t) = (shutdown.clone(), tracker.clone());
    tracker.spawn(async move { crate::frontend::quic::accept_loop(endpoint, ctx, stop, &t).await });
    (shutdown, tracker)
}

/// Polls `f` until it gives a value, failing the test after [`WAIT`].
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Fails the test if `f` takes longer than [`WAIT`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn pod(name: &str) -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta::named("default", name),
        ..Pod::default()
    };
    p.metadata.uid = format!("uid-{name}");
    p.metadata.creation_timestamp = Some(Time(1_700_000_000_000));
    p.spec.module = "sha256:00".into();
    p
}

fn create(name: &str) -> Command {
    Command::Create {
        object: Object::Pod(pod(name)),
    }
}

/// Writes through `master`'s raft and gives the command's answer.
async fn write(
    cluster: &Cluster,
    master: u64,
    cmd: Command,
) -> Result<Outcome, crate::store::StoreError> {
    let resp = bounded(
        "a raft write",
        cluster.master(master).raft.client_write(cmd),
    )
    .await
    .expect("the leader accepts the write");
    resp.data
        .into_store_result()
        .expect("a command entry answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_leader_elected_and_writes_replicate() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    let out = write(&cluster, leader, create("first"))
        .await
        .expect("created");
    assert!(matches!(out, Outcome::Object(Object::Pod(_))), "{out:?}");
    for id in [1, 2, 3] {
        cluster.has_pod(id, "first").await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_followers_forward_writes_and_serve_linearizable_reads() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (f1, f2) = (cluster.handle(followers[0]), cluster.handle(followers[1]));
    // A write made on a follower is applied by the leader and answered as if local.
    let out = bounded("a forwarded write", f1.write(create("forwarded")))
        .await
        .expect("forwarded write applies");
    let Outcome::Object(Object::Pod(stored)) = out else {
        panic!("{out:?}")
    };
    // Right after it, a linearizable read on the other follower sees it.
    bounded("read barrier", f2.linearize())
        .await
        .expect("read index");
    assert!(
        cluster
            .master(followers[1])
            .store
            .get(Kind::Pod, "default", "forwarded")
            .expect("store reads")
            .is_some(),
        "a read after the barrier missed an acknowledged write"
    );
    // Refusals come back as the same errors.
    let stale = Command::Update {
        object: Object::Pod(stored.clone()),
        expected_rv: Some(stored.metadata.resource_version + 100),
        status_only: false,
    };
    let err = bounded("a forwarded conflict", f2.write(stale))
        .await
        .expect_err("a stale compare-and-swap is refused");
    assert!(
        matches!(
            err,
            crate::store::StoreError::Refused(Refusal::Conflict { .. })
        ),
        "{err:?}"
    );
    // The status is the leader's, from any master.
    let status = bounded("status", f1.status()).await;
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.reported_by, leader);
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.voter && m.lag.is_some()));

    // A follower cut off from the others can neither write nor read
    // linearizably; it says so within a bounded time instead of hanging.
    cluster.isolate(followers[0]);
    let err = bounded("an isolated write", f1.write(create("lost")))
        .await
        .expect_err("an isolated follower cannot write");
    assert!(
        matches!(err, crate::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
    let err = bounded("an isolated read", f1.linearize())
        .await
        .expect_err("an isolated follower cannot read linearizably");
    assert!(
        matches!(err, crate::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
    cluster.heal();
    bounded("write after healing", async {
        loop {
            if f1.write(create("after")).await.is_ok() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    for id in [1, 2, 3] {
        cluster.has_pod(id, "after").await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_membership_shrinks_and_refuses_removing_the_last_voter() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let gone = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .expect("a third master");
    // Asked of a follower, done by the leader.
    bounded("remove", cluster.handle(follower).remove_member(gone))
        .await
        .expect("removed");
    cluster.master(gone).kill().await;
    let status = bounded("status", cluster.handle(leader).status()).await;
    let ids: Vec<u64> = status.members.iter().map(|m| m.node_id).collect();
    assert!(!ids.contains(&gone), "{status:?}");
    // Two voters left: writes still commit with both.
    bounded(
        "write with two",
        cluster.handle(follower).write(create("two")),
    )
    .await
    .expect("two masters commit");
    bounded(
        "remove one more",
        cluster.handle(leader).remove_member(follower),
    )
    .await
    .expect("removed");
    let (last, _) = cluster.leader(&[leader]).await;
    let err = bounded("remove the last", cluster.handle(last).remove_member(last))
        .await
        .expect_err("the last voter stays");
    assert!(err.to_string().contains("only voting member"), "{err}");
    let err = bounded("remove a stranger", cluster.handle(last).remove_member(42))
        .await
        .expect_err("not a member");
    assert!(err.to_string().contains("not a member"), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_need_a_master_and_a_valid_payload() {
    let cluster = Cluster::start().await;
    let addr = vec![cluster.addrs[&1].to_string()];
    // An admin may do anything but speak raft: not on the masters' own
    // protocol, which only masters may open, and raft never travels on the
    // clients' one.
    let admin = cluster
        .ca
        .issue_client(&Identity::Admin, year())
        .expect("admin cert");
    let tls = flotilla_api::tls::client_config(&cluster.ca.key.cert_pem, Some(&admin), RAFT_ALPN)
        .expect("tls");
    match bounded("admin connects", Client::connect(&addr, tls, "test")).await {
        Err(NetError::Api(e)) => assert_eq!(e.code, ErrorCode::Forbidden, "{e}"),
        other => panic!(
            "an admin spoke the masters' protocol: {:?}",
            other.map(|c| c.hello)
        ),
    }
    let tls = flotilla_api::tls::client_config(&cluster.ca.key.cert_pem, Some(&admin), ALPN)
        .expect("tls");
    let client = bounded("admin connects", Client::connect(&addr, tls, "test"))
        .await
        .expect("admin connects");
    let raft_msg = Request::Raft {
        rpc: RaftRpc::Vote,
        payload: Vec::new(),
    };
    match bounded("admin call", client.call(&raft_msg)).await {
        Err(NetError::Api(e)) => assert_eq!(e.code, ErrorCode::Invalid, "{e}"),
        other => panic!("a raft message on the clients' protocol was not refused: {other:?}"),
    }
    // A master sending bytes that are no raft message gets Invalid, and the
    // receiving master keeps serving.
    let m = cluster
        .ca
        .issue_client(&Identity::Master(9), year())
        .expect("cert");
    let tls = flotilla_api::tls::client_config(&cluster.ca.key.cert_pem, Some(&m), RAFT_ALPN)
        .expect("tls");
    let client = bounded("master connects", Client::connect(&addr, tls, "test"))
        .await
        .expect("master connects");
    assert_eq!(client.hello.identity, Caller::Master(9).to_string());
    for rpc in [
        RaftRpc::AppendEntries,
        RaftRpc::Vote,
        RaftRpc::InstallSnapshot,
    ] {
        let req = Request::Raft {
            rpc,
            payload: vec![0xff; 7],
        };
        match bounded("master call", client.call(&req)).await {
            Err(NetError::Api(e)) => assert_eq!(e.code, ErrorCode::Invalid, "{e}"),
            other => panic!("garbage raft payload was not refused: {other:?}"),
        }
    }
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    write(&cluster, leader, create("after-garbage"))
        .await
        .expect("created");
    cluster.has_pod(1, "after-garbage").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_isolated_leader_is_replaced_and_catches_up() {
    let cluster = Cluster::start().await;
    let (old, old_term) = cluster.leader(&[1, 2, 3]).await;
    write(&cluster, old, create("before"))
        .await
        .expect("created");
    cluster.isolate(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let (new, new_term) = cluster.leader(&rest).await;
    assert_ne!(new, old);
    assert!(new_term > old_term, "term {new_term} after {old_term}");
    write(&cluster, new, create("during"))
        .await
        .expect("created");
    for id in &rest {
        cluster.has_pod(*id, "during").await;
    }
    // The old leader has no majority: its write cannot commit.
    let stale = tokio::time::timeout(
        Duration::from_secs(2),
        cluster.master(old).raft.client_write(create("stale")),
    )
    .await;
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "an isolated leader committed a write: {stale:?}"
    );
    cluster.heal();
    wait_for("the old leader to follow the new one", || {
        let m = cluster.master(old).raft.metrics().borrow().clone();
        (m.state == ServerState::Follower && m.current_leader == Some(new)).then_some(())
    })
    .await;
    cluster.has_pod(old, "during").await;
    write(&cluster, new, create("after"))
        .await
        .expect("created");
    for id in [1, 2, 3] {
        cluster.has_pod(id, "after").await;
        // The entry the isolated leader could not commit was replaced.
        let stale = cluster
            .master(id)
            .store
            .get(Kind::Pod, "default", "stale")
            .expect("store reads");
        assert!(stale.is_none(), "master {id} applied an uncommitted write");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_killed_leader_is_replaced() {
    let cluster = Cluster::start().await;
    let (old, old_term) = cluster.leader(&[1, 2, 3]).await;
    write(&cluster, old, create("before"))
        .await
        .expect("created");
    cluster.master(old).kill().await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let (new, new_term) = cluster.leader(&rest).await;
    assert_ne!(new, old);
    assert!(new_term > old_term);
    write(&cluster, new, create("after"))
        .await
        .expect("created");
    for id in &rest {
        cluster.has_pod(*id, "before").await;
        cluster.has_pod(*id, "after").await;
    }
    cluster.stop().await;
}

/// The masters compare state hashes at one log index: equal states pass;
/// a follower whose state was changed beside raft is found, told over the
/// real service path, and refuses reads, while the others serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_state_check_finds_and_fences_a_master_that_differs() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    for name in ["same-1", "same-2"] {
        write(&cluster, leader, create(name))
            .await
            .expect("created");
    }
    let handle = cluster.handle(leader);
    let leader_store = &cluster.master(leader).store;
    let differing = bounded(
        "a state check",
        super::check::check_once(&handle, leader_store),
    )
    .await
    .expect("the check runs");
    assert!(differing.is_empty(), "{differing:?}");

    // A write beside raft: this follower now holds a state nobody else does.
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let rogue = &cluster.master(follower).store;
    rogue
        .apply(create("rogue"))
        .expect("a direct write to the follower's store");
    let differing = bounded(
        "a state check",
        super::check::check_once(&handle, leader_store),
    )
    .await
    .expect("the check runs");
    assert_eq!(
        differing.iter().map(|d| d.master).collect::<Vec<_>>(),
        vec![follower],
        "{differing:?}"
    );
    let why = rogue.checks().diverged().expect("the follower was told");
    assert!(why.contains("differs") && why.contains("join"), "{why}");
    let err = rogue
        .get(Kind::Pod, "default", "same-1")
        .expect_err("a master that differs refuses reads");
    assert!(
        matches!(err, crate::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
    for id in [1, 2, 3].into_iter().filter(|id| *id != follower) {
        let store = &cluster.master(id).store;
        assert!(store.checks().diverged().is_none(), "master {id}");
        assert!(store
            .get(Kind::Pod, "default", "same-1")
            .expect("reads")
            .is_some());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_compare_and_swap_admits_one_of_two() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster.leader(&[1, 2, 3]).await;
    let Outcome::Object(Object::Pod(stored)) = write(&cluster, leader, create("cas"))
        .await
        .expect("created")
    else {
        panic!("a create answers the object");
    };
    let rv = stored.metadata.resource_version;
    let update = |label: &str| {
        let mut p = stored.clone();
        p.metadata.labels.insert("writer".into(), label.into());
        Command::Update {
            object: Object::Pod(p),
            expected_rv: Some(rv),
            status_only: false,
        }
    };
    let (a, b) = tokio::join!(
        write(&cluster, leader, update("a")),
        write(&cluster, leader, update("b"))
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("not exactly one update won: {other:?}"),
    };
    assert!(
        matches!(lost, crate::store::StoreError::Refused(Refusal::Conflict { expected, .. }) if expected == rv),
        "{lost:?}"
    );
    let Outcome::Object(winner) = won else {
        panic!("an update answers the object");
    };
    // Every master holds the winner's version.
    for id in [1, 2, 3] {
        let store = &cluster.master(id).store;
        wait_for("the winning update everywhere", || {
            let o = store
                .get(Kind::Pod, "default", "cas")
                .expect("store reads")?;
            (o.meta().resource_version == winner.meta().resource_version).then_some(())
        })
        .await;
        let o = store
            .get(Kind::Pod, "default", "cas")
            .expect("store reads")
            .expect("pod");
        assert_eq!(o.meta().labels, winner.meta().labels);
    }
    cluster.stop().await;
}

/// Legal large objects written at once (the security review's case: six
/// writes of 1.5 MiB batched into one entry past the frame forced an
/// election): every write succeeds, on every master, under the same leader
/// in the same term. Batches are bounded in bytes and replication splits
/// messages that would not fit in a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_concurrent_large_writes_keep_the_leader() {
    // Timeouts generous enough for a debug build on a busy machine to
    // encode and fsync megabyte entries in time: what this shows is that
    // no batch or message outgrows a frame (which no timeout survives),
    // not how fast a large entry travels.
    let config = Arc::new(
        Config {
            cluster_name: "raft-test".into(),
            heartbeat_interval: 500,
            election_timeout_min: 3000,
            election_timeout_max: 6000,
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 16,
            ..Config::default()
        }
        .validate()
        .expect("raft config"),
    );
    let cluster = Cluster::start_with(config).await;
    let (leader, term) = cluster.leader(&[1, 2, 3]).await;
    let handle = cluster.handle(leader);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut p = pod(&format!("large-{i}"));
        // Under the 1.5 MiB object limit, with the rest of the pod.
        p.metadata
            .annotations
            .insert("example.com/blob".into(), "x".repeat(1400 << 10));
        let (handle, cmd) = (
            handle.clone(),
            Command::Create {
                object: Object::Pod(p),
            },
        );
        writes.spawn(async move { handle.write(cmd).await });
    }
    let answers = bounded("six large writes", writes.join_all()).await;
    for answer in answers {
        answer.expect("a legal large write succeeds");
    }
    for id in [1, 2, 3] {
        for i in 0..6 {
            cluster.has_pod(id, &format!("large-{i}")).await;
        }
    }
    let after = cluster.leader(&[1, 2, 3]).await;
    assert_eq!(
        after,
        (leader, term),
        "the leader changed under large writes"
    );
    cluster.stop().await;
}

/// One master serving raft messages (its raft uninitialized, which still
/// answers votes), and a [`Peer`] of another master aimed at it.
struct Lone {
    _dir: TempDir,
    ca: ClusterCa,
    ctx: ApiServer,
    raft: Raft<TypeConfig>,
    addr: SocketAddr,
    server: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    sender: Network,
}

impl Lone {
    async fn start(hook: Option<Hook>) -> Lone {
        let ca = ClusterCa::generate("raft-test").expect("ca");
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(&dir.path().join("state.redb"), 1000).expect("store");
        let log = LogStore::open(&dir.path().join(LOG_FILE)).expect("log");
        let sm = StateMachine::open(store.clone(), &dir.path().join(SNAPSHOT_FILE))
            .expect("state machine");
        let client_tls = |id| {
            let cert = ca
                .issue_client(&Identity::Master(id), year())
                .expect("cert");
            flotilla_api::tls::client_config(&ca.key.cert_pem, Some(&cert), RAFT_ALPN).expect("tls")
        };
        let network = Network::new(1, client_tls(1)).expect("network");
        let raft = Raft::new(1, raft_config(), network.clone(), log, sm)
            .await
            .expect("raft starts");
        let server_cert = ca
            .issue_server(&["127.0.0.1".into()], year())
            .expect("cert");
        let ctx = context(&ca, store, server_cert, raft.clone(), network);
        let mut sender = Network::new(2, client_tls(2)).expect("network");
        if let Some(hook) = hook {
            sender = sender.with_hook(hook);
        }
        let mut lone = Lone {
            _dir: dir,
            ca,
            ctx,
            raft,
            addr: ([127, 0, 0, 1], 0).into(),
            server: quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("placeholder"),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            sender,
        };
        lone.listen(([127, 0, 0, 1], 0).into()).await;
        lone
    }

    /// (Re)starts the service on `addr`. The socket of a closed endpoint
    /// is released only once its driver has finished, so binding the same
    /// address again is retried for a while.
    async fn listen(&mut self, addr: SocketAddr) {
        let deadline = std::time::Instant::now() + WAIT;
        self.server = loop {
            let tls = flotilla_api::tls::server_config(
                &self.ctx.pki.server(),
                &self.ca.key.cert_pem,
                &MASTER_ALPNS,
            )
            .expect("server tls");
            match flotilla_api::net::server_endpoint(addr, tls) {
                Ok(endpoint) => break endpoint,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "cannot listen again: {e}"
                    );
                    tokio::time::sleep(POLL).await;
                }
            }
        };
        self.addr = self.server.local_addr().expect("local address");
        let (shutdown, tracker) = serve(self.server.clone(), self.ctx.clone());
        self.shutdown = shutdown;
        self.tracker = tracker;
    }

    /// Stops the service and lets go of its endpoint.
    async fn close(&mut self) {
        self.shutdown.cancel();
        self.server.close(0u32.into(), b"restart");
        self.tracker.close();
        bounded("the service stops", self.tracker.wait()).await;
        bounded("the endpoint idles", self.server.wait_idle()).await;
        self.server = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("placeholder");
    }

    async fn peer(&mut self) -> Peer {
        let node = BasicNode::new(self.addr.to_string());
        self.sender.new_client(1, &node).await
    }
}

fn vote_request() -> openraft::raft::VoteRequest<u64> {
    openraft::raft::VoteRequest::new(openraft::Vote::new(1, 2), None)
}

fn ttl() -> openraft::network::RPCOption {
    openraft::network::RPCOption::new(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peer_reconnects_after_the_connection_is_lost() {
    let mut lone = Lone::start(None).await;
    let mut peer = lone.peer().await;
    let resp = bounded("first vote", peer.vote(vote_request(), ttl()))
        .await
        .expect("the vote is answered");
    assert!(resp.vote_granted, "{resp:?}");
    // The receiving master restarts its service on the same address: the
    // connection the peer holds is gone, and the next messages must make a
    // new one.
    let addr = lone.addr;
    lone.close().await;
    lone.listen(addr).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match bounded("vote", peer.vote(vote_request(), ttl())).await {
            Ok(resp) => {
                assert!(resp.vote_granted, "{resp:?}");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
    lone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peer_errors_are_openraft_errors() {
    let dropped: Hook = Arc::new(|_, _| Verdict::Drop);
    let mut lone = Lone::start(Some(dropped)).await;
    // Dropped by the hook: unreachable at once, nothing sent.
    let mut peer = lone.peer().await;
    match bounded("dropped vote", peer.vote(vote_request(), ttl())).await {
        Err(RPCError::Unreachable(e)) => assert!(e.to_string().contains("hook"), "{e}"),
        other => panic!("a dropped message did not fail as unreachable: {other:?}"),
    }

    // Nobody listening: bounded by the message's time limit.
    let dead = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("socket");
    let dead_addr = dead.local_addr().expect("address");
    drop(dead);
    let mut network = Network::new(
        2,
        flotilla_api::tls::client_config(
            &lone.ca.key.cert_pem,
            Some(
                &lone
                    .ca
                    .issue_client(&Identity::Master(2), year())
                    .expect("cert"),
            ),
            RAFT_ALPN,
        )
        .expect("tls"),
    )
    .expect("network");
    let mut to_dead = network
        .new_client(3, &BasicNode::new(dead_addr.to_string()))
        .await;
    let short = openraft::network::RPCOption::new(Duration::from_millis(300));
    let started = Instant::now();
    match bounded("vote to nobody", to_dead.vote(vote_request(), short)).await {
        Err(RPCError::Timeout(_) | RPCError::Unreachable(_)) => {}
        other => panic!("a vote to nobody did not time out: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // A raft error on the receiving master comes back as that raft error.
    let mut delayed = network
        .clone()
        .with_hook(Arc::new(|_, _| Verdict::Delay(Duration::from_millis(20))));
    lone.raft.shutdown().await.expect("raft stops");
    let mut to_lone = delayed
        .new_client(1, &BasicNode::new(lone.addr.to_string()))
        .await;
    match bounded(
        "vote to a stopped raft",
        to_lone.vote(vote_request(), ttl()),
    )
    .await
    {
        Err(RPCError::RemoteError(e)) => {
            assert_eq!(e.target, 1);
            assert!(
                matches!(
                    e.source,
                    openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped)
                ),
                "{e:?}"
            );
        }
        other => panic!("a stopped raft's error did not come back: {other:?}"),
    }
    network.close();
    lone.close().await;
}
