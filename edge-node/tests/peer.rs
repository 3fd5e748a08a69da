//! Node to node forwarding over QUIC: a node's proxy serves a pod to
//! another node, and to nobody else — not an admin's certificate, not a
//! node of another cluster.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_api::identity::{new_csr, CertifiedKey, ClusterCa, Identity, Validity};
use flotilla_api::time::Time;
use flotilla_node::proxy::peer::{ForwardError, Peers};
use flotilla_node::proxy::served::Served;
use flotilla_node::proxy::{Proxy, ProxyConfig};
use flotilla_node::runtime::http::HttpLimits;
use flotilla_node::runtime::{LogSink, LogStream, RunSpec, Runtime};
use http_body_util::{BodyExt, Full};

struct Discard;

impl LogSink for Discard {
    fn write(&self, _: LogStream, _: &[u8]) {}
}

fn year() -> Validity {
    Validity::new(Time::now(), Duration::from_secs(365 * 24 * 3600))
}

/// A node's credentials as the master signs them at join.
fn node_key(ca: &ClusterCa, node: &str) -> CertifiedKey {
    let (csr, key_pem) = new_csr(&Identity::Node(node.into())).expect("csr");
    let cert_pem = ca
        .sign_csr(&csr, &Identity::Node(node.into()), year())
        .expect("sign");
    CertifiedKey { cert_pem, key_pem }
}

fn client(ck: &CertifiedKey, ca_pem: &str) -> Peers {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let peers = Peers::new(endpoint);
    peers.set_credentials(ck, ca_pem).expect("credentials");
    peers
}

fn get() -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri("/")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn only_nodes_of_the_cluster_reach_a_nodes_pods() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ClusterCa::generate("test").expect("ca");
    let ca_pem = ca.key.cert_pem.clone();

    // Node b serves hello-http as default/web.
    let rt = Runtime::new(&dir.path().join("cache")).expect("runtime");
    let wasm = std::fs::read(flotilla_workloads::path("hello-http")).expect("hello-http");
    let program = rt.load("hello-http", &wasm).expect("load").0;
    let spec = RunSpec {
        name: "web".into(),
        env: vec![("NODE_NAME".into(), "b".into())],
        ..RunSpec::default()
    };
    let limits = HttpLimits {
        concurrency: 4,
        timeout: Duration::from_secs(5),
        request_memory: None,
    };
    let pod = rt
        .serve(&program, spec, Arc::new(Discard), limits)
        .expect("serve");
    let served = Served::default();
    let _registration = served.register("default/web", "uid-1", Arc::new(pod));
    let config = ProxyConfig {
        address: "127.0.0.1".parse().expect("ip"),
        peer_port: 0,
        ..ProxyConfig::default()
    };
    let b = Proxy::start("b", config, served, &node_key(&ca, "b"), &ca_pem, &[]).expect("proxy");
    let at = b.endpoint().to_string();

    // Node a of the same cluster: served.
    let a = client(&node_key(&ca, "a"), &ca_pem);
    let response = match a
        .forward("b", &at, "default/web", "uid-1", get(), None)
        .await
    {
        Ok(r) => r,
        Err(ForwardError::Unreached(_, e) | ForwardError::Lost(e)) => panic!("a → b: {e}"),
    };
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"hello from web on b (request 1)\n");

    // A pod b does not serve (or not with that uid): 503, marked not here.
    let response = match a
        .forward("b", &at, "default/web", "uid-2", get(), None)
        .await
    {
        Ok(r) => r,
        Err(ForwardError::Unreached(_, e) | ForwardError::Lost(e)) => panic!("a → b: {e}"),
    };
    assert_eq!(response.status(), 503);
    assert!(response
        .headers()
        .contains_key(flotilla_node::proxy::NOT_HERE));

    // Node a expecting another node at that address: b's certificate does
    // not name it, and nothing is sent.
    assert!(matches!(
        a.forward("c", &at, "default/web", "uid-1", get(), None)
            .await,
        Err(ForwardError::Unreached(..))
    ));

    // An admin's certificate of the same CA: refused.
    let admin = ca.issue_client(&Identity::Admin, year()).expect("admin");
    let outsider = client(&admin, &ca_pem);
    assert!(
        outsider
            .forward("b", &at, "default/web", "uid-1", get(), None)
            .await
            .is_err(),
        "an admin's certificate cannot inject traffic"
    );

    // A node of another cluster (its own CA): refused.
    let other = ClusterCa::generate("other").expect("ca");
    let foreign = client(&node_key(&other, "a"), &ca_pem);
    assert!(
        foreign
            .forward("b", &at, "default/web", "uid-1", get(), None)
            .await
            .is_err(),
        "a foreign node cannot inject traffic"
    );
}
