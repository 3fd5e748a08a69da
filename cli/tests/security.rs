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
        .issue_client(&Identity::Admin)
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
    rt().block_on(async {
        let client = connect(&n1).await.expect("n1 connects");
        assert_eq!(client.hello.identity, "node n1");
        let get = |name: &str| Request::Get {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.into(),
            stale: false,
        };
        let Ok(Response::Object(mut n2)) = client.call(&get("n2")).await else {
            panic!("n1 may read")
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
        // The status of a pod bound to another node: refused.
        let Ok(Response::Object(mut pod)) = client
            .call(&Request::Get {
                kind: Kind::Pod,
                namespace: "default".into(),
                name: "p".into(),
                stale: false,
            })
            .await
        else {
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
