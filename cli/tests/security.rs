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
