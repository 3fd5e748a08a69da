use flotilla_api::config::ClientConfigFile;
use flotilla_api::net::Client;
use flotilla_api::objects::{Kind, Object};
use flotilla_api::protocol::{Request, Response, ALPN};
use std::time::{Duration, Instant};

fn p50(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:.3} ms p90 {:.3} ms",
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[v.len() * 9 / 10].as_secs_f64() * 1e3
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = std::env::var("FLOTILLA_CONFIG").unwrap();
    let cfg = ClientConfigFile::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tls =
        flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN).unwrap();
    let addr = std::env::args().nth(1).unwrap();
    let c = Client::connect(&[addr], tls, "probe").await.unwrap();
    let get = |stale| Request::Get {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: "seed".into(),
        stale,
    };
    for (name, stale) in [("stale get", true), ("linearizable get", false)] {
        let mut t = vec![];
        for _ in 0..500 {
            let s = Instant::now();
            c.call(&get(stale)).await.unwrap();
            t.push(s.elapsed());
        }
        println!("{name}: {}", p50(t));
    }
    let Ok(Response::Object(Object::Pod(mut pod))) = c.call(&get(true)).await else {
        panic!()
    };
    pod.metadata.resource_version = 0;
    let mut t = vec![];
    for i in 0..500 {
        pod.metadata
            .annotations
            .insert("v".into(), format!("{i:0256}"));
        let s = Instant::now();
        c.call(&Request::Update(Object::Pod(pod.clone())))
            .await
            .unwrap();
        t.push(s.elapsed());
    }
    println!("update: {}", p50(t));
}
