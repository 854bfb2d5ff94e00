//! Memory and change cost of the appliance's control side at N Services x 10 nodes, on any
//! machine (no IPVS needed): a real store in a temporary directory filled through `put_service`,
//! and the reconciler (with health checking, probes 1 h apart so none runs) over the fake data
//! plane, whose own copy of the "kernel" is counted too. Prints the resident size after each
//! step (after `malloc_trim`, so it is what is live, not what glibc keeps) and the time of a
//! pass for a one-Service change (p50 / max of 20), and of the pass a health verdict on one
//! real server causes (p50 / max of 40 flaps), against a full build for the same flaps.
//!
//! Usage: `cargo run --release -p edgelb --example bench_memory [N]` (default 10000). The
//! appliance's own resident size in the real kernel is measured by the kernel-lab scenario
//! `bench-appliance`; this one isolates the parts quickly.

use std::process::ExitCode;
use std::time::Duration;

use edgelb::dataplane::FakeDataplane;
use edgelb::reconcile::{Reconciler, RunnerOptions};
use edgelb::store::Store;
use edgelb_api::{ClusterSpec, Node, NodeList, PoolSpec, Protocol, ServicePort, ServiceSpec};

/// The resident size in MiB, after handing freed memory back.
#[allow(unsafe_code)]
fn rss_mib() -> f64 {
    // SAFETY: malloc_trim takes no pointer; it only returns the allocator's free pages.
    unsafe {
        libc::malloc_trim(0);
    }
    let kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    kib as f64 / 1024.0
}

fn spec(i: u32, scheduler: Option<&str>) -> ServiceSpec {
    // One NodePort per Service, as in a cluster: 100,000 distinct probe targets at 10,000.
    let port = ServicePort::new(Protocol::Tcp, 80, 20_000 + i as u16);
    ServiceSpec {
        scheduler: scheduler.map(str::to_owned),
        ..ServiceSpec::new(format!("uid-{i}"), vec![port])
    }
}

async fn run(n: u32) -> Result<(), String> {
    let e = |e: edgelb::store::StoreError| e.to_string();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = Store::open(dir.path()).await.map_err(e)?;
    let pool = serde_json::from_value::<PoolSpec>(serde_json::json!({"name": "p", "ranges": ["10.64.0.0/16"]}))
        .map_err(|e| e.to_string())?;
    store.create_pool("bench", pool).await.map_err(e)?;
    let cluster = ClusterSpec {
        name: "c".into(),
        description: String::new(),
    };
    store.create_cluster("bench", cluster).await.map_err(e)?;
    let nodes = (0..10u8)
        .map(|r| Node {
            name: format!("n{r}"),
            // n0 and n1 on loopback, for the health flap.
            addresses: vec![match r {
                0 | 1 => std::net::IpAddr::from([127, 0, 0, 1 + r]),
                _ => std::net::IpAddr::from([10, 1, 0, 10 + r]),
            }],
            ready: true,
            schedulable: true,
            excluded: false,
            no_tunnel: false,
        })
        .collect();
    store.put_nodes("bench", "c", NodeList { nodes }).await.map_err(e)?;
    let start = rss_mib();
    let mut tasks = Vec::new();
    for w in 0..64u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(64) {
                store
                    .put_service("bench", "c", "default", &format!("s{i}"), spec(i, None))
                    .await?;
            }
            Ok::<_, edgelb::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?.map_err(e)?;
    }
    println!(
        "BENCH name=memory step=store services={n} rss_mib={:.1} (empty store {start:.1})",
        rss_mib()
    );

    let fake = FakeDataplane::full();
    let health = edgelb::config::HealthConfig {
        interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let r = Reconciler::new(store.clone(), fake.clone(), RunnerOptions::default()).with_health(health);
    // Only the count and time of the pass are kept: its operations are not the appliance's.
    let full = r.pass().await.map_err(|e| e.to_string())?;
    let full = (full.ops.len(), full.elapsed);
    // Nor is the fake kernel's record of them.
    fake.take_log();
    println!(
        "BENCH name=memory step=full-pass services={n} ops={} ms={} rss_mib={:.1}",
        full.0,
        full.1.as_millis(),
        rss_mib()
    );
    let mut samples = Vec::new();
    let mut puts = Vec::new();
    for k in 0..20u32 {
        let scheduler = if k % 2 == 0 { Some("rr") } else { None };
        let put = std::time::Instant::now();
        store
            .put_service("bench", "c", "default", "s7", spec(7, scheduler))
            .await
            .map_err(e)?;
        puts.push(put.elapsed());
        let pass = r.pass_for_change().await.map_err(|e| e.to_string())?;
        if pass.ops.len() != 1 {
            return Err(format!("a scheduler change is one operation, not {:?}", pass.ops));
        }
        samples.push(pass.elapsed);
    }
    samples.sort();
    puts.sort();
    println!(
        "BENCH name=change-pass services={n} p50_us={} max_us={} put_p50_us={} put_max_us={} rss_mib={:.1}",
        samples[samples.len() / 2].as_micros(),
        samples[samples.len() - 1].as_micros(),
        puts[puts.len() / 2].as_micros(),
        puts[puts.len() - 1].as_micros(),
        rss_mib()
    );
    flap(&store, &r, n).await?;
    let resync = r.pass().await.map_err(|e| e.to_string())?;
    println!(
        "BENCH name=memory step=resync services={n} ms={} rss_mib={:.1}",
        resync.elapsed.as_millis(),
        rss_mib()
    );
    Ok(())
}

/// A health flap: one real server of one Service (`s7` on node `n0`, 127.0.0.1) stops and
/// starts answering its probe, 20 times each way. Each verdict is followed by the pass the
/// appliance runs for it, which redoes the Services depending on that target; then the same
/// flaps followed by a full build against the kept state, which is what a verdict cost before.
/// Both in one run, so their ratio is what to read on a noisy machine.
async fn flap(store: &Store, r: &Reconciler<FakeDataplane>, n: u32) -> Result<(), String> {
    use edgelb::health::{Health, Target};
    // s7 probed every 100 ms and decided on one probe; n1 (127.0.0.2) keeps answering, so the
    // Service is never all down (which would serve every real server again).
    // A listener that accepts (and closes) what the probes open, until dropped.
    struct Listening(tokio::task::JoinHandle<()>);
    impl Drop for Listening {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let listen = |ip: [u8; 4]| async move {
        let l = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 20_007))
            .await
            .map_err(|e| format!("{ip:?}:20007: {e}"))?;
        Ok::<_, String>(Listening(tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        })))
    };
    let _steady = listen([127, 0, 0, 2]).await?;
    let mut fast = spec(7, None);
    fast.health = Some(edgelb_api::HealthOverrides {
        interval_ms: Some(100),
        timeout_ms: Some(100),
        rise: Some(1),
        fall: Some(1),
        ..Default::default()
    });
    store
        .put_service("bench", "c", "default", "s7", fast)
        .await
        .map_err(|e| e.to_string())?;
    r.pass_for_change().await.map_err(|e| e.to_string())?;
    let checker = r.checker().ok_or("health checking is on")?.clone();
    let probes = tokio::spawn(checker.clone().run());
    let target = Target::tcp([127, 0, 0, 1].into(), 20_007);
    let until = |health: Health| {
        let (checker, target) = (checker.clone(), target.clone());
        async move {
            for _ in 0..500 {
                if checker.state(&target).is_some_and(|s| s.health == health) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(format!("{target} did not become {health:?}"))
        }
    };
    // The other eight nodes' probes of s7 fail at once and stay down: one pass takes them in.
    until(Health::Down).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.pass_for_health().await.map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for rebuild in [false, true] {
        let before = r.status().borrow().summary.full_builds;
        let (mut samples, mut ops) = (Vec::new(), 0);
        let mut listener = None;
        for up in (0..40).map(|i| i % 2 == 0) {
            // Up: answer the probe; down: stop answering it.
            listener = match up {
                true => Some(listen([127, 0, 0, 1]).await?),
                false => None,
            };
            until(if up { Health::Up } else { Health::Down }).await?;
            let pass = match rebuild {
                false => r.pass_for_health().await,
                true => r.pass_rebuild().await,
            }
            .map_err(|e| e.to_string())?;
            if pass.ops.len() != 1 {
                return Err(format!("a flap is one weight change, not {:?}", pass.ops));
            }
            ops += pass.ops.len();
            samples.push(pass.elapsed);
        }
        drop(listener);
        samples.sort();
        let builds = r.status().borrow().summary.full_builds - before;
        results.push((samples[samples.len() / 2], samples[samples.len() - 1], builds, ops));
    }
    probes.abort();
    let ((p50, max, builds, ops), (rp50, rmax, rbuilds, _)) = (results[0], results[1]);
    println!(
        "BENCH name=health-flap services={n} flaps=40 ops={ops} pass_p50_us={} pass_max_us={} full_builds={builds} \
         rebuild_p50_us={} rebuild_max_us={} rebuild_full_builds={rbuilds} ratio_p50={:.0}",
        p50.as_micros(),
        max.as_micros(),
        rp50.as_micros(),
        rmax.as_micros(),
        rp50.as_secs_f64() / p50.as_secs_f64().max(1e-9)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let n = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    match run(n).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
