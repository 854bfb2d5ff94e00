//! Server time of every console page with 50 pools and 10,000 allocations (10,000 Services in
//! 4 clusters of 25 nodes, a few hundred audit entries, and 25 hours of history for the pools
//! and one Service with 25 real servers): the router is driven in-process (no
//! TLS, no socket), so the numbers are the handler + store + template time a browser waits for.
//!
//! Run: `cargo run --release -p edgelb --example console_bench` — prints a Markdown table and
//! appends it to `docs/benchmarks.md`.

use std::io::Write;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use edgelb::http::{AppState, ServerInfo};
use edgelb::store::Store;
use edgelb_api::{ClusterSpec, Node, NodeList, PoolSpec, Protocol, ServicePort, ServiceSpec};
use tower::ServiceExt;

const POOLS: usize = 50;
const SERVICES: usize = 10_000;
const CLUSTERS: usize = 4;
const RUNS: usize = 20;

fn spec(uid: &str, i: usize) -> ServiceSpec {
    let port = ServicePort {
        name: Some("http".into()),
        ..ServicePort::new(Protocol::Tcp, 80, 30000 + (i % 2000) as u16)
    };
    ServiceSpec::new(uid, vec![port])
}

async fn fill(store: &Store) {
    for p in 0..POOLS {
        store
            .create_pool(
                "bench",
                PoolSpec {
                    name: format!("pool-{p:02}"),
                    ranges: vec![format!("10.{}.{}.0/24", 100 + p / 200, p % 200)],
                    auto_assign: true,
                    avoid_buggy_ips: false,
                    priority: 0,
                    clusters: vec![],
                    namespaces: vec![],
                    scheduler: "wlc".into(),
                    hold_seconds: 600,
                    health: None,
                    forwarding: None,
                    capacity_critical_percent: edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT,
                    capacity_warning_percent: edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT,
                },
            )
            .await
            .expect("pool");
    }
    for c in 0..CLUSTERS {
        let cluster = format!("cluster-{c}");
        store
            .create_cluster(
                "bench",
                ClusterSpec {
                    name: cluster.clone(),
                    description: String::new(),
                },
            )
            .await
            .expect("cluster");
        let nodes = (0..25)
            .map(|n| Node {
                name: format!("node-{n:02}"),
                addresses: vec![format!("192.168.{c}.{}", 10 + n).parse().expect("ip")],
                ready: true,
                schedulable: true,
                excluded: false,
                no_tunnel: false,
            })
            .collect();
        store
            .put_nodes("bench", &cluster, NodeList { nodes })
            .await
            .expect("nodes");
    }
    let started = Instant::now();
    for i in 0..SERVICES {
        let cluster = format!("cluster-{}", i % CLUSTERS);
        let ns = format!("ns-{}", i % 37);
        let name = format!("svc-{i:05}");
        store
            .put_service("bench", &cluster, &ns, &name, spec(&format!("uid-{i}"), i))
            .await
            .expect("service");
    }
    eprintln!("filled {SERVICES} services in {:.1?}", started.elapsed());
}

/// A day and an hour of history, every 10 s, for every pool and for one Service's port with 25
/// real servers, written through the history code: the dashboard, pool and Service pages then
/// draw full graphs.
fn fill_history(dir: &std::path::Path, vip: std::net::IpAddr) -> edgelb::history::History {
    use edgelb::forwarding::VsKey;
    use edgelb::history::{History, Options, STEP, Sample, SeriesKey};
    let now = edgelb::history::sampler::unix_now();
    let start = now - now.rem_euclid(STEP) - 25 * 3600;
    let h = History::open(dir, start, Options::default()).expect("history");
    let vs = VsKey::new(vip, 80, Protocol::Tcp);
    let mut t = start;
    while t < now - 10 {
        let n = ((t - start) / STEP) as u64;
        let mut samples: Vec<Sample> = (0..POOLS)
            .map(|p| Sample {
                key: SeriesKey::Pool(format!("pool-{p:02}")),
                values: [(n % 200) as f32, 3.0, 50.0, 0.0],
                counters: None,
                health: None,
            })
            .collect();
        for key in [SeriesKey::Service(vs), SeriesKey::Totals] {
            samples.push(Sample {
                key,
                values: [f32::NAN, 100.0, f32::NAN, f32::NAN],
                counters: Some([50 * n, 40_000 * n, 400_000 * n]),
                health: None,
            });
        }
        for r in 0..25u8 {
            samples.push(Sample {
                key: SeriesKey::RealServer(vs, std::net::SocketAddr::new([192, 168, 1, 10 + r].into(), 30001)),
                values: [f32::NAN, 4.0, f32::NAN, f32::NAN],
                counters: Some([2 * n, 1_600 * n, 16_000 * n]),
                health: None,
            });
        }
        h.record(t, samples).expect("record");
        t += STEP;
    }
    h
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    store.bootstrap().await.expect("bootstrap");
    fill(&store).await;
    let session = store.create_session("admin").await.expect("session");
    // The same console without a history: what the graphs cost, measured in this run.
    let plain = edgelb::http::app(AppState::new(
        store.clone(),
        ServerInfo {
            version: "bench".into(),
            dataplane: "none".into(),
        },
    ));
    let svc = store
        .get_service("cluster-1", "ns-1", "svc-00001")
        .await
        .expect("service");
    let history = fill_history(&dir.path().join("history"), svc.ips[0]);
    let app = edgelb::http::app(
        AppState::new(
            store.clone(),
            ServerInfo {
                version: "bench".into(),
                dataplane: "none".into(),
            },
        )
        .with_history(history),
    );
    let first = store
        .list_allocations(&edgelb::store::AllocationFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("allocations");
    let ip = first.items.first().map(|a| a.ip.to_string()).unwrap_or_default();
    let pages = [
        "/login".to_owned(),
        "/".to_owned(),
        "/ (without a history)".to_owned(),
        "/?range=24h".to_owned(),
        "/?range=30d".to_owned(),
        "/pools".to_owned(),
        "/pools/pool-00".to_owned(),
        "/pools/pool-00?range=30d".to_owned(),
        "/services/cluster-1/ns-1/svc-00001".to_owned(),
        "/services/cluster-1/ns-1/svc-00001?range=24h".to_owned(),
        "/services/cluster-1/ns-1/svc-00001?range=30d".to_owned(),
        "/pools/new".to_owned(),
        "/pools/pool-00/edit".to_owned(),
        "/pools/pool-00/delete".to_owned(),
        "/allocations".to_owned(),
        format!("/allocations?ip={ip}"),
        "/allocations?cluster=cluster-1&namespace=ns-3".to_owned(),
        "/allocations?service=svc-09999".to_owned(),
        "/services".to_owned(),
        "/services?page=150".to_owned(),
        "/services?cluster=cluster-2".to_owned(),
        "/clusters".to_owned(),
        "/tokens".to_owned(),
        "/users".to_owned(),
        "/audit".to_owned(),
        "/audit?actor=bench&object=pool".to_owned(),
        "/history".to_owned(),
        format!("/history?q={ip}"),
        "/history?q=svc-09999".to_owned(),
    ];
    let cookie = format!("elb_session={}", session.secret);
    let mut rows = Vec::new();
    for path in &pages {
        let mut times = Vec::with_capacity(RUNS);
        let mut size = 0;
        for run in 0..RUNS + 2 {
            // The sign-in page is what someone without a session sees.
            let cookie = if path == "/login" { "" } else { cookie.as_str() };
            let (router, uri) = match path.strip_suffix(" (without a history)") {
                Some(p) => (&plain, p),
                None => (&app, path.as_str()),
            };
            let req = Request::get(uri)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .expect("request");
            let t = Instant::now();
            let resp = router.clone().oneshot(req).await.expect("response");
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            let took = t.elapsed();
            assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
            size = body.len();
            if run >= 2 {
                times.push(took);
            }
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!("{path:<50} p50 {:>7} ms  max {:>7} ms  {size} bytes", ms(p50), ms(max));
        rows.push(format!("| `{path}` | {} | {} | {} |", ms(p50), ms(max), size / 1024));
    }
    let date = time::OffsetDateTime::now_utc().date();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let report = format!(
        "\n## Console pages: server time with {POOLS} pools and {SERVICES} allocations ({date})\n\n\
         Command: `cargo run --release -p edgelb --example console_bench` ({cpus} CPUs; router driven \
         in-process, session cookie, {RUNS} runs per page after 2 warm-up runs; pages list 50 rows).\n\n\
         | page | p50 ms | max ms | KiB |\n|---|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("docs/benchmarks.md");
    f.write_all(report.as_bytes()).expect("append");
    eprintln!("appended to {}", path.display());
}
