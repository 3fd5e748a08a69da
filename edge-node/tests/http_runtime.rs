//! The runtime serving http components (hello-http, echo, slow): answers,
//! the concurrency limit, the request timeout, a trapping handler, memory
//! per request and per pod.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::runtime::http::{HttpLimits, HttpPod};
use flotilla_node::runtime::{LogSink, LogStream, Program, RunSpec, Runtime};
use http_body_util::{BodyExt, Full};

#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl LogSink for Capture {
    fn write(&self, _stream: LogStream, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn load(rt: &Runtime, name: &str) -> Program {
    let path = flotilla_workloads::path(name);
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rt.load(name, &wasm).unwrap().0
}

fn limits(concurrency: usize, timeout_ms: u64) -> HttpLimits {
    HttpLimits {
        concurrency,
        timeout: Duration::from_millis(timeout_ms),
        request_memory: None,
    }
}

fn serve(
    rt: &Runtime,
    name: &str,
    spec: RunSpec,
    limits: HttpLimits,
) -> (Arc<HttpPod>, Arc<Capture>) {
    let program = load(rt, name);
    assert!(rt.is_http(&program), "{name} serves http");
    let log = Arc::new(Capture::default());
    let pod = rt
        .serve(&program, spec, log.clone(), limits)
        .unwrap_or_else(|e| panic!("serve {name}: {e:?}"));
    (Arc::new(pod), log)
}

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("http://pod.test{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn call(pod: &HttpPod, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let resp = pod.handle(req).await;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn runtime() -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(&dir.path().join("cache")).unwrap();
    (rt, dir)
}

#[tokio::test]
async fn commands_are_not_http() {
    let (rt, _dir) = runtime();
    assert!(!rt.is_http(&load(&rt, "hello")));
}

#[tokio::test]
async fn hello_http_answers_each_request_in_a_fresh_instance() {
    let (rt, _dir) = runtime();
    let spec = RunSpec {
        name: "web-1".into(),
        env: vec![("NODE_NAME".into(), "edge-a".into())],
        ..RunSpec::default()
    };
    let (pod, _) = serve(&rt, "hello-http", spec, limits(4, 5_000));
    for n in 1..=3 {
        let (status, body) = call(&pod, get("/")).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("hello from web-1 on edge-a (request {n})\n"));
    }
    assert_eq!(call(&pod, get("/healthz")).await, (200, "ok\n".into()));
    assert_eq!(pod.served(), 4);
    assert_eq!(pod.in_flight(), 0);
}

#[tokio::test]
async fn echo_streams_the_request_back() {
    let (rt, _dir) = runtime();
    let (pod, _) = serve(&rt, "echo", RunSpec::default(), limits(4, 5_000));
    let body = vec![b'x'; 3 << 20];
    let req = http::Request::builder()
        .method("POST")
        .uri("http://pod.test/upload?q=1")
        .header("x-test", "yes")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (status, text) = call(&pod, req).await;
    assert_eq!(status, 200);
    let (head, rest) = text.split_once("\n\n").expect("head, then body");
    assert!(head.starts_with("POST /upload?q=1\n"), "{head}");
    assert!(head.contains("x-test: yes"), "{head}");
    assert_eq!(rest.len(), body.len());
}

#[tokio::test]
async fn beyond_the_concurrency_limit_is_503() {
    let (rt, _dir) = runtime();
    let (pod, _) = serve(&rt, "slow", RunSpec::default(), limits(2, 10_000));
    let slow = |pod: Arc<HttpPod>| tokio::spawn(async move { call(&pod, get("/?ms=800")).await });
    let a = slow(pod.clone());
    let b = slow(pod.clone());
    // Both hold their instance until they answer.
    for _ in 0..100 {
        if pod.in_flight() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pod.in_flight(), 2);
    let (status, body) = call(&pod, get("/")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("spec.http.concurrency"), "{body}");
    assert_eq!(a.await.unwrap(), (200, "waited 800 ms\n".into()));
    assert_eq!(b.await.unwrap().0, 200);
    assert_eq!(call(&pod, get("/")).await, (200, "ok\n".into()));
}

#[tokio::test]
async fn beyond_the_nodes_instance_pool_is_503_for_every_pod() {
    // A pool of 2 slots, shared by two pods that each allow 8 requests.
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::for_node(
        &dir.path().join("cache"),
        flotilla_node::runtime::CompileLimits::for_this_machine(),
        &flotilla_node::runtime::Deny::default(),
        &flotilla_node::runtime::device::Profile {
            http_slots: 2,
            ..flotilla_node::runtime::device::for_this_machine().unwrap()
        },
    )
    .unwrap();
    let (a, _) = serve(&rt, "slow", RunSpec::default(), limits(8, 10_000));
    let (b, _) = serve(&rt, "hello-http", RunSpec::default(), limits(8, 10_000));
    let slow = |pod: Arc<HttpPod>| tokio::spawn(async move { call(&pod, get("/?ms=800")).await });
    let first = slow(a.clone());
    let second = slow(a.clone());
    for _ in 0..100 {
        if a.in_flight() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give both a moment to be instantiated: they then hold the slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = call(&b, get("/")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--http-slots"), "{body}");
    assert_eq!(first.await.unwrap(), (200, "waited 800 ms\n".into()));
    assert_eq!(second.await.unwrap().0, 200);
    // Slots come back when requests end, for any pod.
    let (status, body) = call(&b, get("/")).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..20 {
        assert_eq!(call(&a, get("/")).await, (200, "ok\n".into()));
    }
}

#[tokio::test]
async fn a_slow_handler_times_out_with_504() {
    let (rt, _dir) = runtime();
    let (pod, log) = serve(&rt, "slow", RunSpec::default(), limits(2, 300));
    let (status, body) = call(&pod, get("/?ms=5000")).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("spec.http.timeoutSeconds"), "{body}");
    assert!(
        log.text().contains("request 1: no response"),
        "{}",
        log.text()
    );
    // The instance is gone: its permit is back.
    assert_eq!(pod.in_flight(), 0);
    assert_eq!(call(&pod, get("/")).await.0, 200);
}

#[tokio::test]
async fn a_trap_fails_one_request_not_the_pod() {
    let (rt, _dir) = runtime();
    let (pod, log) = serve(&rt, "slow", RunSpec::default(), limits(2, 5_000));
    let (status, body) = call(&pod, get("/trap")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("the handler failed"), "{body}");
    assert!(log.text().contains("asked to trap"), "{}", log.text());
    assert_eq!(call(&pod, get("/")).await, (200, "ok\n".into()));
}

#[tokio::test]
async fn a_memory_bomb_is_contained_per_request_and_per_pod() {
    let (rt, _dir) = runtime();
    let spec = RunSpec {
        memory_limit: Some(48 << 20),
        ..RunSpec::default()
    };
    let limits = HttpLimits {
        request_memory: Some(32 << 20),
        ..limits(4, 10_000)
    };
    let (pod, _) = serve(&rt, "slow", spec, limits);
    let (status, body) = call(&pod, get("/alloc?mib=64")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("memory limit of 32Mi (the handler asked for "),
        "{body}"
    );
    assert_eq!(call(&pod, get("/alloc?mib=8")).await.0, 200);
    // A request holding 30 MiB leaves 18 of the pod's 48: another of 30
    // fits its own limit but not the pod's.
    let hold = tokio::spawn({
        let pod = pod.clone();
        async move { call(&pod, get("/alloc?mib=30&ms=1500")).await }
    });
    for _ in 0..100 {
        if pod.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&pod, get("/alloc?mib=30")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("memory limit of 48Mi (the handler asked for "),
        "{body}"
    );
    assert_eq!(hold.await.unwrap().0, 200);
    // Once it is done, the pool is whole again.
    assert_eq!(call(&pod, get("/alloc?mib=30")).await.0, 200);
}

/// A one-shot HTTP server on loopback: its port.
async fn tiny_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                )
                .await;
        }
    });
    port
}

#[tokio::test]
async fn outgoing_requests_go_only_where_the_network_allows() {
    let (rt, _dir) = runtime();
    let port = tiny_server().await;
    let allowed: flotilla_api::objects::network::NetworkSpec =
        serde_yaml::from_str(&format!("allow: [{{host: 127.0.0.1, ports: [{port}]}}]")).unwrap();
    let (allowance, _) =
        flotilla_node::network::Allowance::resolve(&allowed, |_| async { Ok(Vec::new()) }).await;
    let spec = RunSpec {
        network: Arc::new(allowance),
        ..RunSpec::default()
    };
    let (pod, _) = serve(&rt, "slow", spec, limits(2, 10_000));
    let (status, body) = call(&pod, get(&format!("/fetch?port={port}"))).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "fetched 200: hello"),
        "{body}"
    );

    // No allowance: refused, and counted.
    let refusals = Arc::new(flotilla_node::network::Refusals::default());
    let spec = RunSpec {
        refusals: refusals.clone(),
        ..RunSpec::default()
    };
    let (pod, _) = serve(&rt, "slow", spec, limits(2, 10_000));
    let (status, body) = call(&pod, get(&format!("/fetch?port={port}"))).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    assert_eq!(refusals.snapshot().map(|r| r.count), Some(1));
}
