//! Allocation benchmark over real HTTPS against a real SQLite file:
//!
//! 1. allocations per second and p50/p99 latency at concurrency 1, 16 and 64;
//! 2. the cost of one allocation in a /16 pool when it is empty, 10 %, 90 % and 99.9 % full;
//! 3. allocations in an IPv6 /64 pool.
//!
//! Run: `cargo run --release -p edgelb --example bench_alloc` (prints a Markdown report).
//! `-- --only throughput` (or `store`, `fill`, `ipv6`; comma-separated) runs some parts only, and
//! `--rounds N` repeats the throughput table N times on the same appliance, so variants can be
//! compared under the same load.
//! The appliance runs in this process on the same two cores as the client, so the numbers are
//! a floor for a dedicated host; compare ratios within one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgelb::config::{Config, DataplaneConfig, LogFormat, TlsSource};
use edgelb::server::Server;
use edgelb_api::{ServicePort, ServiceSpec};
use serde_json::json;

struct Target {
    url: String,
    token: String,
    client: reqwest::Client,
    server: Arc<edgelb::store::Store>,
}

async fn start(dir: &std::path::Path) -> Target {
    let config = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: TlsSource::SelfSigned,
        log_format: LogFormat::Text,
        shutdown_grace: Duration::from_secs(1),
        connections: Default::default(),
        dataplane: DataplaneConfig::none(),
        health: edgelb::config::HealthConfig::default(),
    };
    let server = Server::bind(config).await.expect("bind");
    let token = server.bootstrap().expect("fresh data dir").token.clone();
    let port = server.local_addr().port();
    let store = Arc::new(server.store().clone());
    tokio::spawn(async move { server.serve(std::future::pending()).await });
    let pem = std::fs::read(dir.join(edgelb::tls::SELF_SIGNED_CERT)).expect("cert");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    Target {
        url: format!("https://localhost:{port}"),
        token,
        client,
        server: store,
    }
}

fn spec(uid: &str) -> ServiceSpec {
    ServiceSpec::new(uid, vec![ServicePort::new(edgelb_api::Protocol::Tcp, 80, 30080)])
}

impl Target {
    async fn post(&self, path: &str, body: serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// One allocation over HTTPS; returns its latency.
    async fn allocate(&self, name: &str, family: &str) -> Duration {
        let mut s = spec(name);
        s.ip_families = vec![if family == "IPv6" {
            edgelb_api::IpFamily::Ipv6
        } else {
            edgelb_api::IpFamily::Ipv4
        }];
        let start = Instant::now();
        let r = self
            .client
            .put(format!("{}/api/v1/clusters/bench/services/default/{name}", self.url))
            .bearer_auth(&self.token)
            .json(&s)
            .send()
            .await
            .expect("put");
        let status = r.status();
        let _ = r.bytes().await;
        assert!(status.is_success(), "allocation {name}: {status}");
        start.elapsed()
    }

    /// `total` allocations by `concurrency` workers; returns (allocations/s, latencies).
    async fn storm(
        self: &Arc<Self>,
        prefix: &str,
        family: &'static str,
        total: usize,
        concurrency: usize,
    ) -> (f64, Vec<Duration>) {
        // Warm every connection first, so handshakes are not timed.
        let mut warm = Vec::new();
        for _ in 0..concurrency {
            let t = self.clone();
            warm.push(tokio::spawn(async move {
                let _ = t.client.get(format!("{}/healthz", t.url)).send().await;
            }));
        }
        for w in warm {
            let _ = w.await;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (t, next, prefix) = (self.clone(), next.clone(), prefix.to_owned());
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    lat.push(t.allocate(&format!("{prefix}-{i}"), family).await);
                }
                lat
            }));
        }
        let mut all = Vec::with_capacity(total);
        for w in workers {
            all.extend(w.await.expect("worker"));
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        all.sort();
        (rate, all)
    }
}

/// Samples per fill level; 99.9 % of a /16 leaves 66 free addresses, so at most 60.
const SAMPLES: usize = 60;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// How many latencies exceed `ms`.
fn over(sorted: &[Duration], ms: f64) -> usize {
    sorted.iter().filter(|d| d.as_secs_f64() * 1000.0 > ms).count()
}

/// `total` calls of `Store::put_service` by `concurrency` tasks; returns (calls/s, latencies).
async fn store_storm(t: &Target, prefix: &str, total: usize, concurrency: usize) -> (f64, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (store, next, prefix) = (t.server.clone(), next.clone(), prefix.to_owned());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let name = format!("{prefix}-{i}");
                let begin = Instant::now();
                store
                    .put_service("bench", "bench", "default", &name, spec(&name))
                    .await
                    .expect("put_service");
                lat.push(begin.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn mean_ms(v: &[Duration]) -> f64 {
    v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1000.0
}

/// Fills the /16 directly through the store (the same code path as the API, minus HTTP) until
/// `target` addresses are allocated.
async fn fill(t: &Target, from: usize, to: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (store, next) = (t.server.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let name = format!("fill-{i}");
                store
                    .put_service("bench", "bench", "default", &name, spec(&name))
                    .await
                    .expect("fill");
            }
        }));
    }
    for w in workers {
        w.await.expect("fill worker");
    }
}

fn main() {
    edgelb::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

/// Which parts to run and how often (see the module doc).
struct Args {
    only: Option<Vec<String>>,
    rounds: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args { only: None, rounds: 1 };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--only" => {
                    let v = it.next().expect("--only needs throughput, fill and/or ipv6");
                    args.only = Some(v.split(',').map(str::to_owned).collect());
                }
                "--rounds" => {
                    args.rounds = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .expect("--rounds needs a positive number");
                }
                other => panic!("unknown argument {other}: use --only PARTS or --rounds N"),
            }
        }
        args
    }

    fn runs(&self, part: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|p| p == part))
    }
}

async fn run() {
    let args = Args::parse();
    println!("## Allocation benchmark\n");
    println!(
        "`cargo run --release -p edgelb --example bench_alloc` on {} cores\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    // Part 1: throughput and latency by concurrency; part 3 (IPv6) reuses the appliance.
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Arc::new(start(dir.path()).await);
    t.post("/api/v1/pools", json!({"name": "v4", "ranges": ["10.0.0.0/12"]}))
        .await;
    t.post("/api/v1/clusters", json!({"name": "bench"})).await;
    if args.runs("throughput") {
        println!("### Throughput over HTTPS (new Service per request, /12 pool)\n");
        println!("| round | concurrency | allocations | allocations/s | p50 ms | p99 ms | max ms | over 20 ms |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for round in 1..=args.rounds {
            for (c, n) in [(1usize, 1000usize), (16, 8000), (64, 16000)] {
                let (rate, lat) = t.storm(&format!("r{round}-c{c}"), "IPv4", n, c).await;
                println!(
                    "| {round} | {c} | {n} | {rate:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0),
                    over(&lat, 20.0)
                );
            }
        }
    }
    if args.runs("store") {
        println!("\n### The store alone (`Store::put_service`, no HTTP), new Service per call\n");
        println!("| round | concurrency | allocations | allocations/s | p50 ms | p99 ms | max ms | over 20 ms |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for round in 1..=args.rounds {
            for (c, n) in [(1usize, 2000usize), (64, 16000)] {
                let (rate, lat) = store_storm(&t, &format!("s{round}-c{c}"), n, c).await;
                println!(
                    "| {round} | {c} | {n} | {rate:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0),
                    over(&lat, 20.0)
                );
            }
        }
    }
    if args.runs("fill") {
        fill_levels().await;
    }
    if args.runs("ipv6") {
        t.post("/api/v1/pools", json!({"name": "v6", "ranges": ["2001:db8:100::/64"]}))
            .await;
        let (rate, lat) = t.storm("v6", "IPv6", 4000, 16).await;
        println!("\n### IPv6 /64 pool (concurrency 16)\n");
        println!("| allocations | allocations/s | p50 ms | p99 ms |");
        println!("|---:|---:|---:|---:|");
        println!("| 4000 | {rate:.0} | {:.2} | {:.2} |", pct(&lat, 0.5), pct(&lat, 0.99));
    }
}

/// Part 2: the cost of one allocation by how full a /16 is.
async fn fill_levels() {
    let dir2 = tempfile::tempdir().expect("tempdir");
    let t2 = Arc::new(start(dir2.path()).await);
    t2.post("/api/v1/pools", json!({"name": "p16", "ranges": ["10.32.0.0/16"]}))
        .await;
    t2.post("/api/v1/clusters", json!({"name": "bench"})).await;
    println!("\n### One allocation (concurrency 1, {SAMPLES} samples) in a /16 by how full it is\n");
    println!("| fill | allocated before | mean ms | p50 ms | p99 ms | vs empty (p50) | vs empty (mean) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let size = 65_536usize;
    let mut filled = 0usize;
    let mut base = (0.0, 0.0);
    let mut sample = 0usize;
    for (label, frac) in [("empty", 0.0), ("10%", 0.10), ("90%", 0.90), ("99.9%", 0.999)] {
        let target = ((size as f64) * frac) as usize;
        if target > filled {
            fill(&t2, filled, target).await;
            filled = target;
            // Let the background WAL checkpoint of the fill finish: it is not the cost measured.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let mut lat = Vec::new();
        for _ in 0..SAMPLES {
            lat.push(t2.allocate(&format!("sample-{sample}"), "IPv4").await);
            sample += 1;
        }
        filled += SAMPLES;
        lat.sort();
        let (m, p50) = (mean_ms(&lat), pct(&lat, 0.5));
        if base == (0.0, 0.0) {
            base = (p50, m);
        }
        println!(
            "| {label} | {target} | {m:.2} | {p50:.2} | {:.2} | {:.2}x | {:.2}x |",
            pct(&lat, 0.99),
            p50 / base.0,
            m / base.1
        );
    }
}
