//! Agent benchmark: the release `edgelb-agent` binary against the fake API server (in this
//! process) and a release appliance process (real SQLite, `--dataplane none`).
//!
//! 1. 100 Nodes and 5,000 LoadBalancer Services exist before the agent starts; measures the
//!    time from agent start to every status set.
//! 2. Steady state: Services created one at a time; create-to-status latency p50/p99.
//! 3. The agent's peak RSS (VmHWM).
//!
//! Run: `cargo run --release -p edgelb-agent --example bench` (`BENCH_SERVICES`, `BENCH_NODES`,
//! `BENCH_SINGLES` override the sizes).

#[path = "../tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgelb_agent::fixtures::{node, service};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    // target/release/examples/bench -> target/release
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let release = target_dir().file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "edgelb",
        "--bin",
        "edgelb",
        "-p",
        "edgelb-agent",
        "--bin",
        "edgelb-agent",
    ]);
    if release {
        cmd.arg("--release");
    }
    assert!(cmd.status().expect("cargo build").success(), "build failed");
}

fn spawn_appliance(data_dir: &Path) -> (Child, String, String) {
    let mut child = Command::new(target_dir().join("edgelb"))
        .args(["serve", "--dataplane", "none", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("EDGELB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("appliance starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut token = None;
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("appliance output").expect("line");
        if let Some(t) = line.trim().strip_prefix("API token:") {
            token = Some(t.trim().to_owned());
        }
        if let Some(url) = line.strip_prefix("edgelb: listening on ") {
            break url.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let port = url.rsplit(':').next().expect("port");
    (child, format!("https://localhost:{port}"), token.expect("admin token"))
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn has_ip(v: &Value) -> bool {
    v["status"]["loadBalancer"]["ingress"][0]["ip"].is_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n_services = env_usize("BENCH_SERVICES", 5000);
    let n_nodes = env_usize("BENCH_NODES", 100);
    let n_singles = env_usize("BENCH_SINGLES", 200);
    build_binaries();

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut appliance, url, admin) = spawn_appliance(&data);
    let pem = std::fs::read(data.join("tls/cert.pem")).expect("cert");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .build()
        .expect("client");
    let call = |path: &str, body: Value| http.post(format!("{url}{path}")).bearer_auth(&admin).json(&body).send();
    let r = call("/api/v1/pools", json!({"name": "bench", "ranges": ["10.96.0.0/17"]}))
        .await
        .expect("pool");
    assert!(r.status().is_success());
    let r = call("/api/v1/clusters", json!({"name": "bench"}))
        .await
        .expect("cluster");
    assert!(r.status().is_success());
    let r = call(
        "/api/v1/tokens",
        json!({"name": "agent", "role": "agent", "cluster": "bench"}),
    )
    .await
    .expect("token");
    let token: Value = r.json().await.expect("token json");
    std::fs::write(dir.path().join("token"), token["secret"].as_str().expect("secret")).expect("token file");
    std::fs::write(dir.path().join("ca.pem"), &pem).expect("ca");

    let fake = FakeApiServer::start().await;
    let agent_url = fake.listen("agent").await;
    let client = fake.client("test").await;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..n_nodes {
        let n = node(
            &format!("node-{i}"),
            &format!("192.168.{}.{}", i / 250, i % 250 + 1),
            None,
        );
        nodes.create(&PostParams::default(), &n).await.expect("node");
        let status = json!({"status": n.status});
        nodes
            .patch_status(&format!("node-{i}"), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
    }
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    for i in 0..n_services {
        svcs.create(&PostParams::default(), &service("bench", &format!("svc-{i}")))
            .await
            .expect("service");
    }
    let kubeconfig = dir.path().join("kubeconfig");
    let mut f = std::fs::File::create(&kubeconfig).expect("kubeconfig");
    write!(
        f,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {agent_url}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n    namespace: default\ncurrent-context: c\n"
    )
    .expect("write kubeconfig");
    drop(f);

    println!("{n_nodes} nodes and {n_services} services in the fake cluster; starting the agent");
    let start = Instant::now();
    let mut agent = Command::new(target_dir().join("edgelb-agent"))
        .args([
            "--appliance-url",
            &url,
            "--cluster",
            "bench",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--ca-file")
        .arg(dir.path().join("ca.pem"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "bench-agent")
        .env("EDGELB_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("agent starts");
    let pid = agent.id();
    let mut peak_rss = 0;
    loop {
        let done = fake.list("/services").iter().filter(|s| has_ip(s)).count();
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        if done == n_services {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {done} of {n_services} after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial = start.elapsed();
    println!(
        "all {n_services} statuses set {:.2} s after agent start",
        initial.as_secs_f64()
    );

    // Steady state: one Service at a time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Vec::with_capacity(n_singles);
    for i in 0..n_singles {
        let name = format!("single-{i}");
        let t = Instant::now();
        svcs.create(&PostParams::default(), &service("bench", &name))
            .await
            .expect("service");
        loop {
            if fake.get("/services", "bench", &name).is_some_and(|s| has_ip(&s)) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{name} got no address");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.push(t.elapsed());
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
    }
    lat.sort();
    let hwm = rss_kib(pid, "VmHWM:").max(peak_rss);
    let rss_now = rss_kib(pid, "VmRSS:");
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "create-to-status over {n_singles} single Services: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    println!("agent RSS: now {} MiB, peak {} MiB", rss_now / 1024, hwm / 1024);
    println!();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| agent start to all {n_services} statuses set ({n_nodes} nodes) | {:.1} s | < 60 s |",
        initial.as_secs_f64()
    );
    println!("| create-to-status p50 | {:.1} ms | |", p50.as_secs_f64() * 1000.0);
    println!(
        "| create-to-status p99 | {:.1} ms | < 1 s |",
        p99.as_secs_f64() * 1000.0
    );
    println!("| agent peak RSS | {} MiB | < 200 MB |", hwm / 1024);

    let _ = agent.kill();
    let _ = agent.wait();
    let _ = appliance.kill();
    let _ = appliance.wait();
}
