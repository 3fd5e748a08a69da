//! Security with the real master process: who may connect, who may write
//! what, and what garbage on the wire does (nothing but an error).

mod common;

use common::{wait_for, Cluster};
use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{ClusterCa, Identity};
use flotilla_api::net::{read_frame, Client, NetError};
use flotilla_api::protocol::{ErrorCode, Request, Response, ALPN};
use flotilla_api::{Kind, Object};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn load(path: &std::path::Path) -> ClientConfigFile {
    ClientConfigFile::parse(&std::fs::read_to_string(path).expect("read config"))
        .expect("parse config")
}

async fn connect(cfg: &ClientConfigFile) -> Result<Client, NetError> {
    let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
        .expect("tls");
    Client::connect(&cfg.masters, tls, "test").await
}

fn code(r: Result<Response, NetError>) -> Option<ErrorCode> {
    match r {
        Err(NetError::Api(e)) => Some(e.code),
        _ => None,
    }
}

#[test]
fn callers_without_a_valid_certificate_are_refused() {
    let c = Cluster::start("10s");
    let admin = load(&c.config);

    // No certificate: the CLI is told to use its credentials; nothing is served.
    let anon = ClientConfigFile {
        cert_pem: String::new(),
        key_pem: String::new(),
        ..admin.clone()
    };
    let anon_path = c.path("anon-config");
    std::fs::write(&anon_path, anon.render()).expect("write");
    let out = c.run_with(&["get", "pods"], &anon_path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("presented no client certificate") && err.contains("Unauthenticated"),
        "{err}"
    );

    // A certificate from another CA: the handshake is refused.
    let foreign = ClusterCa::generate("other")
        .expect("ca")
        .issue_client(
            &Identity::Admin,
            flotilla_api::identity::Validity::new(
                flotilla_api::time::Time::now(),
                flotilla_api::identity::DEFAULT_CERT_LIFETIME,
            ),
        )
        .expect("cert");
    let forged = ClientConfigFile {
        cert_pem: foreign.cert_pem,
        key_pem: foreign.key_pem,
        ..admin.clone()
    };
    let forged_path = c.path("forged-config");
    std::fs::write(&forged_path, forged.render()).expect("write");
    let out = c.run_with(&["get", "pods"], &forged_path);
    assert!(
        !out.status.success(),
        "a foreign certificate must not be served"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("NAME"));

    // A client that trusts another CA refuses the master (no TLS verification is skipped).
    let other_ca = ClusterCa::generate("other").expect("ca");
    let wrong_trust = ClientConfigFile {
        ca_pem: other_ca.key.cert_pem,
        ..admin.clone()
    };
    let wrong_path = c.path("wrong-trust-config");
    std::fs::write(&wrong_path, wrong_trust.render()).expect("write");
    let out = c.run_with(&["get", "pods"], &wrong_path);
    assert!(!out.status.success());

    // A join token for another cluster, or a forged secret, is refused.
    let token = c.token();
    let mut forged_secret = token.clone();
    forged_secret.replace_range(token.len() - 4.., "zzzz");
    let out = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--master",
            &c.addr,
            "--name",
            "intruder",
            "--token",
            &forged_secret,
            "--data-dir",
        ])
        .arg(c.path("intruder"))
        .output()
        .expect("node");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("join refused: wrong token secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other_hash = ClusterCa::generate("x").expect("ca").hash().expect("hash");
    let parts: Vec<&str> = token.split('.').collect();
    let other_cluster = format!("flt1.{other_hash}.{}.{}", parts[2], parts[3]);
    let out = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--master",
            &c.addr,
            "--name",
            "intruder",
            "--token",
            &other_cluster,
            "--data-dir",
        ])
        .arg(c.path("intruder2"))
        .output()
        .expect("node");
    assert!(
        !out.status.success(),
        "a pinned CA that differs must fail the handshake"
    );
}

#[test]
fn nodes_may_write_only_their_own_objects() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let hello = common::pod_yaml("p", "ticker", &[], "Always", "  nodeName: n2\n");
    let file = c.manifest("p.yaml", &hello);
    c.ok(&["apply", "-f", file.to_str().expect("utf8")]);
    c.wait_phase("p", "Running", T);
    let n1 = load(&c.path("n1").join("credentials.yaml"));
    let admin_cfg = load(&c.config);
    rt().block_on(async {
        let client = connect(&n1).await.expect("n1 connects");
        let admin = connect(&admin_cfg).await.expect("admin connects");
        assert_eq!(client.hello.identity, "node n1");
        let get = |name: &str| Request::Get {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.into(),
            stale: false,
        };
        // Another node's object is not n1's to read.
        assert_eq!(
            code(client.call(&get("n2")).await),
            Some(ErrorCode::Forbidden)
        );
        let Ok(Response::Object(mut n2)) = admin.call(&get("n2")).await else {
            panic!("admins read")
        };
        // Another node's status: refused.
        if let Object::Node(n) = &mut n2 {
            n.status.message = "hijacked".into();
        }
        assert_eq!(
            code(client.call(&Request::UpdateStatus(n2.clone())).await),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(client.call(&Request::Update(n2)).await),
            Some(ErrorCode::Forbidden)
        );
        // Its own: allowed.
        let Ok(Response::Object(own)) = client.call(&get("n1")).await else {
            panic!("own node")
        };
        assert!(client.call(&Request::UpdateStatus(own)).await.is_ok());
        // The status of a pod bound to another node: refused (and so is reading it).
        let get_p = Request::Get {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "p".into(),
            stale: false,
        };
        assert_eq!(code(client.call(&get_p).await), Some(ErrorCode::Forbidden));
        let Ok(Response::Object(mut pod)) = admin.call(&get_p).await else {
            panic!("pod")
        };
        if let Object::Pod(p) = &mut pod {
            p.status.message = "hijacked".into();
        }
        assert_eq!(
            code(client.call(&Request::UpdateStatus(pod.clone())).await),
            Some(ErrorCode::Forbidden)
        );
        // In a batch, each report is judged alone: its own node's status
        // is written, the other node's pod is refused.
        let Ok(Response::Object(own)) = client.call(&get("n1")).await else {
            panic!("own node")
        };
        let Ok(Response::Statuses(results)) = client
            .call(&Request::UpdateStatuses(vec![own, pod.clone()]))
            .await
        else {
            panic!("a batch answer")
        };
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(
            results[1].as_ref().map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        // A batch larger than the limit is refused whole.
        let too_many = vec![pod.clone(); flotilla_api::protocol::MAX_STATUS_BATCH + 1];
        assert_eq!(
            code(client.call(&Request::UpdateStatuses(too_many)).await),
            Some(ErrorCode::Invalid)
        );
        // Creating pods or tokens, deleting: refused.
        assert_eq!(
            code(client.call(&Request::Create(pod)).await),
            Some(ErrorCode::Forbidden)
        );
        let tok = Request::CreateToken {
            ttl_seconds: 60,
            description: String::new(),
            master: false,
        };
        assert_eq!(code(client.call(&tok).await), Some(ErrorCode::Forbidden));
        let del = Request::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "p".into(),
            resource_version: 0,
        };
        assert_eq!(code(client.call(&del).await), Some(ErrorCode::Forbidden));
    });
    assert!(!c
        .ok(&["get", "pod", "p", "-o", "yaml"])
        .contains("hijacked"));
    assert!(!c
        .ok(&["get", "node", "n2", "-o", "yaml"])
        .contains("hijacked"));
}

#[test]
fn garbage_on_the_wire_gets_an_error_and_disturbs_nothing() {
    let c = Cluster::start("10s");
    let admin = load(&c.config);
    rt().block_on(async {
        let client = connect(&admin).await.expect("connect");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..50 {
            let (mut send, mut recv) = client.conn.open_bi().await.expect("stream");
            let len = 1 + (round * 7) % 60;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if round % 2 == 0 {
                // A plausible length prefix followed by garbage.
                let n = (bytes.len() as u32).to_be_bytes();
                bytes.splice(0..0, n);
            }
            send.write_all(&bytes).await.expect("write");
            let _ = send.finish();
            match tokio::time::timeout(Duration::from_secs(15), read_frame::<Response>(&mut recv))
                .await
            {
                Ok(Ok(Some(Response::Error(e)))) => assert!(
                    e.code == ErrorCode::Invalid || e.code == ErrorCode::NotFound,
                    "{e}"
                ),
                Ok(Ok(None)) | Ok(Err(_)) => {} // the master may just close a stream it cannot read
                Ok(Ok(Some(other))) => panic!("garbage got an answer: {other:?}"),
                Err(_) => panic!("the master hung on garbage"),
            }
        }
        // An oversized length prefix is refused without reading it.
        let (mut send, mut recv) = client.conn.open_bi().await.expect("stream");
        send.write_all(&u32::MAX.to_be_bytes())
            .await
            .expect("write");
        let _ = send.finish();
        let r = tokio::time::timeout(Duration::from_secs(15), read_frame::<Response>(&mut recv))
            .await
            .expect("answers");
        assert!(matches!(r, Ok(Some(Response::Error(_)))), "{r:?}");
        // The same connection still works.
        let list = Request::List(flotilla_api::protocol::ListOptions {
            kind: Some(Kind::Pod),
            ..Default::default()
        });
        assert!(matches!(
            client.call(&list).await,
            Ok(Response::List { .. })
        ));
    });
    wait_for("the master to still answer the CLI", T, || {
        c.run(&["get", "nodes"]).status.success().then_some(())
    });
}

/// A master that cannot start (its port is taken) leaves the admin config
/// alone, and one of a new cluster does not overwrite another cluster's
/// config unless told to.
#[test]
fn a_failed_or_foreign_master_keeps_the_users_config() {
    let c = Cluster::start("20s");
    let before = std::fs::read_to_string(&c.config).expect("config");
    let master = |data: &str, listen: &str, extra: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["master", "--listen", listen, "--data-dir"])
            .arg(c.path(data))
            .args(extra)
            .env("FLOTILLA_CONFIG", &c.config)
            .output()
            .expect("run master")
    };
    // The port is the running master's: this one fails to listen, and
    // writes nothing even though it was allowed to replace the config.
    let out = master("busy", &c.addr, &["--replace-config"]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&c.config).expect("config"), before);
    // A free port, a new cluster: it refuses to replace the config and says how.
    let free = format!("127.0.0.1:{}", common::free_port());
    let out = master("other", &free, &["--init"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--replace-config"), "{err}");
    assert_eq!(std::fs::read_to_string(&c.config).expect("config"), before);
    c.ok(&["get", "nodes"]);
    // Asked explicitly, it replaces it.
    let out = master("other", &free, &["--init", "--replace-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read_to_string(&c.config).expect("config"), before);
}

/// Renewal keeps the caller's identity: a viewer renews into a viewer, and a
/// connection without a certificate cannot renew at all.
#[test]
fn renewal_grants_nothing_new() {
    let c = Cluster::start("20s");
    let admin = load(&c.config);
    let ca = ClusterCa {
        key: flotilla_api::identity::CertifiedKey {
            cert_pem: std::fs::read_to_string(c.path("master").join("pki").join("ca.crt"))
                .expect("ca"),
            key_pem: std::fs::read_to_string(c.path("master").join("pki").join("ca.key"))
                .expect("ca key"),
        },
    };
    let year = flotilla_api::identity::Validity::new(
        flotilla_api::time::Time::now(),
        flotilla_api::identity::DEFAULT_CERT_LIFETIME,
    );
    let viewer = ca.issue_client(&Identity::Viewer, year).expect("viewer");
    rt().block_on(async {
        let tls =
            flotilla_api::tls::client_config(&admin.ca_pem, Some(&viewer), ALPN).expect("tls");
        let client = Client::connect(std::slice::from_ref(&c.addr), tls, "test")
            .await
            .expect("connect");
        // The CSR asks for admin; the master signs it for the caller, a viewer.
        let (csr_pem, _key) = flotilla_api::identity::new_csr(&Identity::Admin).expect("csr");
        let cert = match client.call(&Request::RenewCertificate { csr_pem }).await {
            Ok(Response::Renewed { cert_pem, .. }) => cert_pem,
            other => panic!("renewal: {other:?}"),
        };
        let der = flotilla_api::tls::parse_certs(&cert).expect("pem");
        assert_eq!(
            Identity::from_cert_der(der[0].as_ref()).expect("identity"),
            Identity::Viewer
        );
        let anon = flotilla_api::tls::client_config(&admin.ca_pem, None, ALPN).expect("tls");
        let client = Client::connect(std::slice::from_ref(&c.addr), anon, "test")
            .await
            .expect("connect");
        let (csr_pem, _key) = flotilla_api::identity::new_csr(&Identity::Admin).expect("csr");
        assert_eq!(
            code(client.call(&Request::RenewCertificate { csr_pem }).await),
            Some(ErrorCode::Unauthenticated)
        );
    });
}

/// Runs `flotilla node` for `name` from a fresh data directory with `token`
/// until it exits (a refused join) or has joined (credentials written).
/// Gives whether it joined, and what it logged.
fn try_join(c: &Cluster, dir: &str, name: &str, token: &str) -> (bool, String) {
    let data = c.path(dir);
    let log = c.path(&format!("{dir}.log"));
    let mut child = std::process::Command::new(common::BIN)
        .args([
            "node", "--master", &c.addr, "--name", name, "--token", token,
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(common::proxy_args(&[]))
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(c.path(&format!("{dir}.err"))).expect("log"))
        .spawn()
        .expect("node");
    let joined = wait_for("the join to end", T, || {
        if data.join("credentials.yaml").exists() {
            return Some(true);
        }
        child.try_wait().expect("wait").map(|status| {
            assert!(!status.success(), "a refused join exits with failure");
            false
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(c.path(&format!("{dir}.err"))).unwrap_or_default();
    (joined, text)
}

/// A node's name belongs to the machine that joined with it: another machine
/// with a join token cannot take it (it would get that node's pods), unless
/// an admin deletes the old Node or makes a token for that name.
#[test]
fn a_join_token_cannot_take_over_a_node_name() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let (joined, err) = try_join(&c, "impostor", "n1", &c.token());
    assert!(!joined, "a second machine joined as n1");
    assert!(
        err.contains("belongs to a node that has joined already"),
        "{err}"
    );
    assert!(err.contains("flotilla token create --node n1"), "{err}");
    // Two joins racing for one new name: one wins.
    let t = c.token();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| try_join(&c, "race-a", "n9", &t).0);
        let b = s.spawn(|| try_join(&c, "race-b", "n9", &t).0);
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert!(a != b, "exactly one of two joins under one name succeeds");
    // A token for the name lets a replacement machine take it over, and only that name.
    let named = c
        .ok(&["token", "create", "--node", "n1"])
        .trim()
        .to_string();
    let (joined, err) = try_join(&c, "wrong-name", "n2", &named);
    assert!(
        !joined && err.contains("this token is for node \"n1\""),
        "{err}"
    );
    let (joined, err) = try_join(&c, "replacement", "n1", &named);
    assert!(joined, "{err}");
    // Once an admin deletes a node, its name is free for any token.
    c.kill_node("n1");
    c.ok(&["delete", "node", "n9"]);
    let (joined, err) = try_join(&c, "after-delete", "n9", &c.token());
    assert!(joined, "{err}");
}

/// Node credentials read only what the node needs: its own Node, the pods
/// bound to it and their modules — not another node's pod (with its env
/// values) or module. A node cannot give itself labels that attract pods,
/// and its status reports must name the pod's uid.
#[test]
fn nodes_read_only_their_own_pods_and_modules() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let secret = common::pod_yaml(
        "secret",
        "ticker",
        &[],
        "Always",
        "  nodeName: n2\n  env: [{name: PASSWORD, value: hunter2}]\n",
    );
    let mine = common::pod_yaml("mine", "hello", &[], "Never", "  nodeName: n1\n");
    c.ok(&[
        "apply",
        "-f",
        c.manifest("s.yaml", &secret).to_str().expect("utf8"),
    ]);
    c.ok(&[
        "apply",
        "-f",
        c.manifest("m.yaml", &mine).to_str().expect("utf8"),
    ]);
    let svc = "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 18090}]}\n";
    c.ok(&[
        "apply",
        "-f",
        c.manifest("svc.yaml", svc).to_str().expect("utf8"),
    ]);
    c.wait_phase("secret", "Running", T);
    let pods = c.get_json("pod", "secret").expect("pod");
    let theirs = pods["spec"]["module"].as_str().expect("module").to_string();
    let n1 = load(&c.path("n1").join("credentials.yaml"));
    rt().block_on(async {
        let client = connect(&n1).await.expect("n1 connects");
        let list = |kind| {
            Request::List(flotilla_api::protocol::ListOptions {
                kind: Some(kind),
                ..Default::default()
            })
        };
        let names = |r: Result<Response, NetError>| -> Vec<String> {
            match r {
                Ok(Response::List { items, .. }) => {
                    items.iter().map(|o| o.meta().name.clone()).collect()
                }
                other => panic!("list: {other:?}"),
            }
        };
        assert_eq!(names(client.call(&list(Kind::Pod)).await), ["mine"]);
        assert_eq!(names(client.call(&list(Kind::Node)).await), ["n1"]);
        // Every Service: the node's proxy routes them all.
        assert_eq!(names(client.call(&list(Kind::Service)).await), ["web"]);
        let modules = names(client.call(&list(Kind::Module)).await);
        assert_eq!(modules.len(), 1, "{modules:?}");
        let get_module = Request::GetModule {
            digest: theirs.clone(),
        };
        assert_eq!(
            code(client.call(&get_module).await),
            Some(ErrorCode::Forbidden)
        );
        // A watch of every pod shows only n1's.
        let (_s, mut recv) = client
            .open(&Request::Watch(flotilla_api::protocol::WatchOptions {
                list: flotilla_api::protocol::ListOptions {
                    kind: Some(Kind::Pod),
                    ..Default::default()
                },
                from_revision: 1,
            }))
            .await
            .expect("watch");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(Response::Event(ev)))) =
            tokio::time::timeout_at(deadline, read_frame::<Response>(&mut recv)).await
        {
            if let Object::Pod(p) = &ev.object {
                assert_eq!(p.spec.node_name.as_deref(), Some("n1"), "{ev:?}");
            }
        }
        // Labels that attract pods: refused on its own Node.
        let get = Request::Get {
            kind: Kind::Node,
            namespace: String::new(),
            name: "n1".into(),
            stale: false,
        };
        let Ok(Response::Object(Object::Node(mut own))) = client.call(&get).await else {
            panic!("own node")
        };
        own.metadata.resource_version = 0;
        for key in ["flotilla.dev/gpu", "node-role.kubernetes.io/master"] {
            let mut n = own.clone();
            n.metadata.labels.insert(key.into(), "true".into());
            assert_eq!(
                code(client.call(&Request::Update(Object::Node(n))).await),
                Some(ErrorCode::Forbidden),
                "{key}"
            );
        }
        // A pod status report without a uid: refused.
        let get_mine = Request::Get {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "mine".into(),
            stale: false,
        };
        let Ok(Response::Object(mut pod)) = client.call(&get_mine).await else {
            panic!("own pod")
        };
        pod.meta_mut().uid.clear();
        assert_eq!(
            code(client.call(&Request::UpdateStatus(pod)).await),
            Some(ErrorCode::Invalid)
        );
    });
    assert!(!c.ok(&["get", "node", "n1", "-o", "yaml"]).contains("gpu"));
}

/// `hello` with a custom section of `pad` bytes appended: still valid Wasm.
fn padded_module(pad: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(flotilla_workloads::path("hello")).expect("hello");
    let name = b"pad";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(payload.len() + pad, 0);
    bytes.push(0); // custom section
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&payload);
    bytes
}

/// Runs `cmd` and gives its exit code and its own peak resident memory in
/// bytes (from `wait4`, which reports the one child waited for).
fn peak_rss_of(cmd: &mut std::process::Command) -> (i32, u64) {
    let child = cmd.spawn().expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 fills the status and the rusage it is given; the child
    // is reaped here, so its `Child` is only dropped afterwards.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let r = libc::wait4(pid, &mut status, 0, usage.as_mut_ptr());
        assert_eq!(r, pid, "wait4");
        usage.assume_init()
    };
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

/// Ten pods sharing a big module: the CLI reads it once, a chunk at a time,
/// not once per pod and not whole. A FIFO or a device is refused at once,
/// not read until the machine runs out of memory or forever.
#[test]
fn apply_reads_each_module_once_and_only_regular_files() {
    const PAD: usize = 48 << 20;
    let c = Cluster::start("20s");
    let module = c.path("big.wasm");
    std::fs::write(&module, padded_module(PAD)).expect("module");
    let mut docs = String::new();
    for i in 0..10 {
        docs.push_str(&format!(
            "---\napiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: big-{i}\nspec:\n  module: big.wasm\n  restartPolicy: Never\n"
        ));
    }
    let file = c.manifest("big.yaml", &docs);
    let (status, peak) = peak_rss_of(
        std::process::Command::new(common::BIN)
            .args(["apply", "-f"])
            .arg(&file)
            .env("FLOTILLA_CONFIG", &c.config)
            .stdout(std::process::Stdio::null()),
    );
    assert!(status == 0, "apply failed");
    assert_eq!(c.ok(&["get", "pods"]).matches("big-").count(), 10);
    // Measured, not timed. Holding the module once per pod takes ten times
    // it; streaming it takes buffers in flight (40–105 MiB measured for
    // 48 MiB, depending on how fast the master takes it).
    assert!(
        peak < 3 * PAD as u64,
        "the CLI peaked at {peak} bytes for a {PAD}-byte module"
    );
    for (name, target) in [("zero", "/dev/zero"), ("dir", "/tmp")] {
        let link = c.path(&format!("{name}.wasm"));
        std::os::unix::fs::symlink(target, &link).expect("symlink");
        let doc = format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  module: {name}.wasm\n"
        );
        let out = c.run(&[
            "apply",
            "-f",
            c.manifest(&format!("{name}.yaml"), &doc)
                .to_str()
                .expect("utf8"),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a regular file"), "{err}");
    }
    let fifo = c.path("fifo.wasm");
    let cpath = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("path");
    // SAFETY: mkfifo reads a NUL-terminated path.
    #[allow(unsafe_code)]
    let made = unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo");
    let doc = "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: fifo\nspec:\n  module: fifo.wasm\n";
    let mut child = std::process::Command::new(common::BIN)
        .args(["apply", "-f"])
        .arg(c.manifest("fifo.yaml", doc))
        .env("FLOTILLA_CONFIG", &c.config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("apply");
    let status = wait_for("apply of a FIFO to end", T, || {
        child.try_wait().expect("wait")
    });
    assert!(!status.success());
    let pods = c.ok(&["get", "pods"]);
    assert!(!pods.contains("zero") && !pods.contains("fifo"), "{pods}");
}

/// The CLI remembers which master answered: with the first master in the
/// config down, the next command goes to the one that answered first.
#[test]
fn the_cli_remembers_the_master_that_answered() {
    let c = Cluster::start("20s");
    let mut cfg = load(&c.config);
    let dead = format!("127.0.0.1:{}", common::free_port());
    cfg.masters = vec![dead.clone(), c.addr.clone()];
    std::fs::write(&c.config, cfg.render()).expect("config");
    c.ok(&["get", "nodes"]);
    assert_eq!(load(&c.config).masters, [c.addr.clone(), dead]);
}

/// A pod manifest like [`common::pod_yaml`] with one annotation of `bytes` bytes.
fn annotated_pod(name: &str, bytes: usize, extra_spec: &str) -> String {
    common::pod_yaml(name, "ticker", &[], "Always", extra_spec).replacen(
        &format!("metadata:\n  name: {name}\n"),
        &format!(
            "metadata:\n  name: {name}\n  annotations:\n    example.com/blob: {}\n",
            "x".repeat(bytes)
        ),
        1,
    )
}

/// The security review's case: objects past the 1.5 MiB limit are refused
/// with TooLarge (by `apply` before it sends anything, and by the master
/// for whatever is sent); several legal pods of ~1 MiB each, more together
/// than one frame carries, still list (`get pods`, `-o yaml`), and their
/// node lists them and runs them.
#[test]
fn large_objects_are_refused_and_lists_of_big_ones_still_work() {
    let mut c = Cluster::start("10s");
    const MIB: usize = 1 << 20;

    // Client-side: nothing is uploaded or created.
    let big = c.manifest("big.yaml", &annotated_pod("too-big", 2 * MIB, ""));
    let out = c.run(&["apply", "-f", big.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an object may be at most") && err.contains("keep large data out"),
        "{err}"
    );

    // Five pods of 1 MiB each, bound to a node that is not there yet: 5 MiB
    // in all, more than one 4 MiB frame.
    let names: Vec<String> = (0..5).map(|i| format!("large-{i}")).collect();
    for name in &names {
        let m = c.manifest(
            &format!("{name}.yaml"),
            &annotated_pod(name, MIB, "  nodeName: n1\n"),
        );
        c.ok(&["apply", "-f", m.to_str().expect("utf8")]);
    }
    let table = c.ok(&["get", "pods"]);
    let yaml = c.ok(&["get", "pods", "-o", "yaml"]);
    for name in &names {
        assert!(table.contains(name.as_str()), "{table}");
    }
    assert_eq!(yaml.matches("example.com/blob").count(), names.len());

    // The node learns of its pods by listing them: they run.
    c.start_node("n1");
    for name in &names {
        c.wait_phase(name, "Running", T);
    }

    let admin = load(&c.config);
    let pod = c.get_json("pod", "large-0").expect("pod");
    let module = pod["spec"]["module"].as_str().expect("module").to_string();
    rt().block_on(async {
        let client = connect(&admin).await.expect("admin connects");
        let pod = |name: &str, bytes: usize| {
            let mut p = flotilla_api::Pod {
                metadata: flotilla_api::ObjectMeta::named("default", name),
                ..Default::default()
            };
            p.spec.module = module.clone();
            p.metadata
                .annotations
                .insert("example.com/blob".into(), "x".repeat(bytes));
            p
        };
        let too_large = |r: Result<Response, NetError>| match r {
            Err(NetError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
                assert!(e.message.contains("1572864"), "{e}");
                e.message
            }
            other => panic!("not refused as too large: {other:?}"),
        };
        // Create, update and status update: each refused, naming the object.
        let msg = too_large(
            client
                .call(&Request::Create(Object::Pod(pod("huge", 2 * MIB))))
                .await,
        );
        assert!(msg.contains("huge"), "{msg}");
        let Ok(Response::Object(Object::Pod(mut stored))) = client
            .call(&Request::Get {
                kind: Kind::Pod,
                namespace: "default".into(),
                name: "large-1".into(),
                stale: false,
            })
            .await
        else {
            panic!("large-1")
        };
        stored.metadata.resource_version = 0;
        let mut grown = stored.clone();
        grown
            .metadata
            .annotations
            .insert("example.com/more".into(), "y".repeat(MIB));
        too_large(client.call(&Request::Update(Object::Pod(grown))).await);
        // Status alone past the limit, on a pod already near it.
        let mut status = stored.clone();
        status.status.message = "z".repeat(MIB);
        too_large(
            client
                .call(&Request::UpdateStatus(Object::Pod(status)))
                .await,
        );
        // A one-frame list of more than a frame: refused with advice, not cut.
        let list = Request::List(flotilla_api::protocol::ListOptions {
            kind: Some(Kind::Pod),
            ..Default::default()
        });
        match client.call(&list).await {
            Err(NetError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
                assert!(e.message.contains("stream"), "{e}");
            }
            other => panic!("a list past one frame: {other:?}"),
        }
    });
    assert!(c.get_json("pod", "huge").is_none());
    // The master took none of it and serves as before.
    let table = c.ok(&["get", "pods"]);
    assert_eq!(table.lines().count(), names.len() + 1, "{table}");
}

/// What `flotilla ARGS` printed with the config at `config`, and whether it
/// succeeded: (success, stdout, stderr).
fn as_user(c: &Cluster, config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = c.run_with(args, config);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Users made with `flotilla user create` do what their role allows, in
/// their namespace only if they have one; a revoked or deleted user is
/// refused whatever certificate it holds, and a user's certificate renews
/// itself as it is used.
#[test]
fn users_have_roles_and_namespaces_and_are_revoked() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    c.ok(&["create", "namespace", "team"]);
    let alice = c.path("alice.config");
    let alice_s = alice.to_str().expect("utf8");
    let (ok, _, err) = as_user(
        &c,
        &c.config,
        &[
            "user", "create", "alice", "--role", "operator", "-n", "team", "-o", alice_s,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("user alice created: operator in namespace team"),
        "{err}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&alice).expect("config").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "a user's config is private");
    assert_eq!(load(&alice).namespace, "team");
    // The file is never overwritten: it may hold someone's key.
    let (ok, _, err) = as_user(
        &c,
        &c.config,
        &[
            "user", "create", "alice2", "--role", "viewer", "-o", alice_s,
        ],
    );
    assert!(!ok && err.contains("exists already"), "{err}");
    // Bad input says which flag is wrong, and makes nothing.
    let (ok, _, err) = as_user(
        &c,
        &c.config,
        &["user", "create", "Bad_Name", "--role", "root", "-o", "-"],
    );
    assert!(
        !ok && err.contains("--role: unknown role \"root\""),
        "{err}"
    );
    let (ok, _, err) = as_user(
        &c,
        &c.config,
        &[
            "user", "create", "dan", "--role", "viewer", "-n", "nope", "-o", "-",
        ],
    );
    assert!(
        !ok && err.contains("namespace \"nope\" does not exist; create it first"),
        "{err}"
    );
    assert!(
        c.get_json("user", "dan").is_none(),
        "a refused user is not made"
    );

    // The operator works in its namespace without saying so.
    let pod = c.manifest("p.yaml", &common::pod_yaml("p", "hello", &[], "Never", ""));
    let (ok, out, err) = as_user(&c, &alice, &["apply", "-f", pod.to_str().expect("utf8")]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = as_user(&c, &alice, &["get", "pods", "-o", "name"]);
    assert!(ok && out.contains("pod/p"), "{out}{err}");
    assert!(c
        .ok(&["get", "pods", "-n", "team", "-o", "name"])
        .contains("pod/p"));
    let (ok, _, _) = as_user(&c, &alice, &["get", "nodes"]);
    assert!(ok, "an operator reads what is in no namespace");
    for (args, want) in [
        (
            &["get", "pods", "-n", "default"][..],
            "works in namespace team only: default is not its namespace; add -n team",
        ),
        (
            &["get", "pods", "-A"][..],
            "may not reach every namespace at once",
        ),
        (
            &["token", "create"][..],
            "managing join tokens is for admins of every namespace",
        ),
        (
            &["get", "users"][..],
            "users are for admins of every namespace",
        ),
        (&["cordon", "n1"][..], "nodes are not in any namespace"),
    ] {
        let (ok, _, err) = as_user(&c, &alice, args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }

    // A viewer of every namespace reads, and writes nothing.
    let bob = c.path("bob.config");
    c.ok(&[
        "user",
        "create",
        "bob",
        "--role",
        "viewer",
        "-o",
        bob.to_str().expect("utf8"),
    ]);
    let (ok, out, err) = as_user(&c, &bob, &["get", "pods", "-A", "-o", "name"]);
    assert!(ok && out.contains("pod/p"), "{out}{err}");
    let (ok, _, err) = as_user(&c, &bob, &["delete", "pod", "p", "-n", "team"]);
    assert!(!ok && err.contains("viewers may only read"), "{err}");

    // Roles are read on every request: a changed role applies at once.
    c.ok(&[
        "patch",
        "user",
        "bob",
        "-p",
        r#"{"spec":{"role":"operator"}}"#,
    ]);
    let (ok, _, err) = as_user(&c, &bob, &["label", "pod", "p", "-n", "team", "x=y"]);
    assert!(ok, "{err}");
    let users = c.ok(&["get", "users"]);
    let row = |name: &str| -> Vec<String> {
        users
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().take(4).map(String::from).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        row("alice"),
        ["alice", "operator", "team", "Active"],
        "{users}"
    );
    assert_eq!(row("bob")[..2], ["bob", "operator"], "{users}");

    // Revoked: refused by every request, the user kept in the list.
    let out = c.ok(&["user", "revoke", "alice"]);
    assert!(out.contains("user alice revoked"), "{out}");
    let (ok, _, err) = as_user(&c, &alice, &["get", "pods"]);
    assert!(!ok && err.contains("user alice was revoked at"), "{err}");
    let users = c.ok(&["get", "users"]);
    assert!(users.contains("Revoked"), "{users}");
    let (ok, _, err) = as_user(
        &c,
        &c.config,
        &["user", "create", "alice", "--role", "viewer", "-o", "-"],
    );
    assert!(!ok && err.contains("revoke and delete it first"), "{err}");
    // Deleted and made again, the name is another user: the old config
    // stays refused, the new one works.
    c.ok(&["delete", "user", "alice"]);
    let again = c.path("alice-again.config");
    c.ok(&[
        "user",
        "create",
        "alice",
        "--role",
        "viewer",
        "-o",
        again.to_str().expect("utf8"),
    ]);
    let (ok, _, err) = as_user(&c, &alice, &["get", "pods"]);
    assert!(!ok && err.contains("earlier user named alice"), "{err}");
    let (ok, _, err) = as_user(&c, &again, &["get", "pods", "-A"]);
    assert!(ok, "{err}");

    // A certificate two thirds into its life renews itself on the next
    // command, for as long as the user asked (here a minute).
    let carol = c.path("carol.config");
    c.ok(&[
        "user",
        "create",
        "carol",
        "--role",
        "viewer",
        "--lifetime",
        "60s",
        "-o",
        carol.to_str().expect("utf8"),
    ]);
    let first_pem = load(&carol).cert_pem;
    let first = flotilla_api::identity::Validity::of_pem(&first_pem).expect("cert");
    let lifetime = first.not_after.since(first.issued());
    assert!((59_000..=61_000).contains(&lifetime), "{lifetime} ms");
    c.fake_time = Some(common::faketime(flotilla_api::time::Time(
        first.issued().0 + 45_000,
    )));
    let (ok, _, err) = as_user(&c, &carol, &["get", "nodes"]);
    c.fake_time = None;
    assert!(
        ok && err.contains("renewed the certificate of user carol"),
        "{err}"
    );
    let renewed_pem = load(&carol).cert_pem;
    assert_ne!(renewed_pem, first_pem, "a new certificate");
    let renewed = flotilla_api::identity::Validity::of_pem(&renewed_pem).expect("cert");
    let lifetime = renewed.not_after.since(renewed.issued());
    assert!(
        (59_000..=61_000).contains(&lifetime),
        "renewed for {lifetime} ms"
    );
    // A revoked user cannot renew either.
    c.ok(&["user", "revoke", "carol"]);
    let (ok, _, err) = as_user(&c, &carol, &["config", "renew"]);
    assert!(!ok && err.contains("user carol was revoked"), "{err}");
}

/// Node tokens count their joins, and may be limited to a number of joins
/// and to node names with a prefix.
#[test]
fn node_tokens_are_limited_to_uses_and_name_prefixes() {
    let c = Cluster::start("20s");
    let once = c
        .ok(&["token", "create", "--uses", "1", "--name-prefix", "pi-"])
        .trim()
        .to_string();
    let list = c.ok(&["token", "list"]);
    assert!(list.contains("node pi-*") && list.contains("0/1"), "{list}");
    let (joined, err) = try_join(&c, "web", "web-1", &once);
    assert!(
        !joined && err.contains("node names that start with \"pi-\""),
        "{err}"
    );
    let (joined, err) = try_join(&c, "pi1", "pi-1", &once);
    assert!(joined, "{err}");
    assert!(c.ok(&["token", "list"]).contains("1/1"));
    let (joined, err) = try_join(&c, "pi2", "pi-2", &once);
    assert!(
        !joined && err.contains("has had all the joins it allows (1)"),
        "{err}"
    );
    // The refused join left its name free.
    assert!(c.get_json("node", "pi-2").is_none());
    // Plain node tokens count too.
    let any = c.token();
    for (dir, name) in [("a", "a-1"), ("b", "b-1")] {
        let (joined, err) = try_join(&c, dir, name, &any);
        assert!(joined, "{err}");
    }
    let id = any.split('.').nth(2).expect("id");
    let row = c
        .ok(&["token", "list"])
        .lines()
        .find(|l| l.starts_with(id))
        .map(String::from)
        .expect("row");
    assert!(row.trim_end().ends_with(" 2"), "{row}");
    let (ok, _, err) = as_user(&c, &c.config, &["token", "create", "--uses", "0"]);
    assert!(!ok && err.contains("--uses 0 would join nothing"), "{err}");
}
