//! Crash safety of the real binary: 64 concurrent allocators over HTTPS, `kill -9` in the middle
//! of the storm, restart on the same data directory. Every allocation the appliance
//! acknowledged must still be there, no address may be held twice, and SQLite's integrity
//! check must pass. Then SIGTERM: the process finishes and exits cleanly.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

struct Appliance {
    child: Child,
    url: String,
    /// The admin token, printed on the first start only.
    token: Option<String>,
}

/// Starts `edgelb serve` and reads its stderr until it says where it listens.
fn spawn(data_dir: &Path) -> Appliance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelb"))
        .args(["serve", "--dataplane", "none", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("EDGELB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the edgelb binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut token = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = line.trim().strip_prefix("API token:") {
                token = Some(t.trim().to_owned());
            }
            if let Some(url) = line.strip_prefix("edgelb: listening on ") {
                let _ = tx.send((url.trim().to_owned(), token.take()));
            }
        }
    });
    let (url, token) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("edgelb reports its address within 30 s");
    let port = url.rsplit(':').next().expect("port").to_owned();
    Appliance {
        child,
        url: format!("https://localhost:{port}"),
        token,
    }
}

async fn put_service(client: &reqwest::Client, url: &str, token: &str, name: &str) -> Option<String> {
    let resp = client
        .put(format!("{url}/api/v1/clusters/prod/services/default/{name}"))
        .bearer_auth(token)
        .json(&json!({"uid": format!("uid-{name}"),
                       "ports": [{"protocol": "TCP", "port": 80, "node_port": 30080}]}))
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v["ips"][0].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_allocations_survive_kill_9_without_duplicates() {
    edgelb::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let mut first = spawn(&data);
    let token = first.token.clone().expect("first start prints the admin token");
    let client = common::client_for(&data);
    let r = client
        .post(format!("{}/api/v1/pools", first.url))
        .bearer_auth(&token)
        .json(&json!({"name": "big", "ranges": ["10.64.0.0/16"]}))
        .send()
        .await
        .expect("pool");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = client
        .post(format!("{}/api/v1/clusters", first.url))
        .bearer_auth(&token)
        .json(&json!({"name": "prod"}))
        .send()
        .await
        .expect("cluster");
    assert_eq!(r.status(), StatusCode::CREATED);

    // The storm: 64 allocators, each recording what the appliance acknowledged.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let (client, url, token, acked) = (client.clone(), first.url.clone(), token.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("svc-{worker}-{i}");
                match put_service(&client, &url, &token, &name).await {
                    Some(ip) => {
                        acked.lock().expect("lock").insert(name, ip);
                    }
                    // The process is gone: stop.
                    None => break,
                }
            }
        }));
    }
    // Kill once a good number is acknowledged, while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 1500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");
    for t in tasks {
        t.await.expect("allocator task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 1000, "only {} allocations before the kill", acked.len());

    // Restart on the same data directory; no new credentials are shown.
    let mut second = spawn(&data);
    assert!(
        second.token.is_none(),
        "credentials must be shown only on the first start"
    );
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let resp = client
        .get(format!("{}/api/v1/clusters/prod/services", second.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list services");
    assert_eq!(resp.status(), StatusCode::OK);
    let services: Vec<Value> = resp.json().await.expect("json");
    for s in &services {
        let ips = s["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "service {s}");
        stored.insert(
            s["name"].as_str().expect("name").to_owned(),
            ips[0].as_str().expect("ip").to_owned(),
        );
    }
    for (name, ip) in &acked {
        assert_eq!(
            stored.get(name),
            Some(ip),
            "acknowledged allocation of {name} ({ip}) lost or changed"
        );
    }
    let distinct: HashSet<&String> = stored.values().collect();
    assert_eq!(distinct.len(), stored.len(), "an address is held by two services");

    // New allocations after the restart do not collide with what was there.
    let ip = put_service(&client, &second.url, &token, "after-restart")
        .await
        .expect("allocation after restart");
    assert!(!distinct.contains(&ip), "{ip} handed out twice");

    // SIGTERM: a clean exit.
    let pid = second.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(status.success());
    let exit = second.child.wait().expect("exit");
    assert!(exit.success(), "edgelb exited with {exit} after SIGTERM");

    let store = edgelb::store::Store::open(&data).await.expect("reopen");
    assert_eq!(store.integrity_check().await.expect("integrity_check"), "ok");
    println!(
        "acknowledged before kill: {}; stored after restart: {}",
        acked.len(),
        stored.len()
    );
}
