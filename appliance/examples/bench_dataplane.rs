//! Data-plane benchmark for the kernel lab (`lab/scenarios/bench-dataplane.sh`): a full sync from
//! empty of N virtual services x 10 real servers through the reconciler's model and the Linux
//! data plane (pipelined IPVS batch), then one Service's change at that size, both ways a
//! reconcile pass can do it: with a fresh dump and a full plan (start-up, resync), and as a pass
//! for a store change does it (the Service replaced in the kept model, only what it touched
//! planned, applied and folded into the kept state). Prints `BENCH name=... ms=...` lines and the
//! process's peak RSS; writes the same set as an `ipvsadm --restore` file for comparison.
//!
//! Usage: `bench_dataplane N RESTORE_FILE` as root, in a namespace where nothing else uses IPVS
//! (it flushes IPVS first).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use edgelb::config::AllDown;
use edgelb::dataplane::Protocol;
use edgelb::dataplane::{Forwarder, LinuxDataplane, LinuxOptions, Manages};
use edgelb::forwarding::ParsedService;
use edgelb::ipam::{IpRange, ServiceKey};
use edgelb::reconcile::Desired;
use edgelb::reconcile::desired::{Drains, HealthInput};
use edgelb::reconcile::model::{Model, Touched};
use edgelb::store::{DataplaneSnapshot, SnapshotPool, SnapshotService};
use edgelb_api::{AssignedIp, Node, ServicePort, ServiceSpec};

const REAL_SERVERS: u8 = 10;

/// Service `i`: one TCP port on its own VIP; `node_port` picks the NodePort (a change moves it).
fn service(i: u32, node_port: u16) -> SnapshotService {
    let vip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i));
    SnapshotService {
        cluster: "bench".into(),
        namespace: "default".into(),
        name: format!("svc-{i}"),
        spec: Some(
            ParsedService::parse(ServiceSpec::new(
                format!("uid-{i}"),
                vec![ServicePort::new(Protocol::Tcp, 80, node_port)],
            ))
            .expect("a valid spec"),
        ),
        addresses: vec![AssignedIp {
            ip: vip,
            pool: "bench".into(),
        }],
    }
}

fn node_port(i: u32) -> u16 {
    30_000 + (i % 2_000) as u16
}

fn snapshot(n: u32) -> DataplaneSnapshot {
    let nodes = (0..REAL_SERVERS)
        .map(|r| Node {
            name: format!("node-{r}"),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10 + r))],
            ready: true,
            schedulable: true,
            excluded: false,
            no_tunnel: false,
        })
        .collect();
    DataplaneSnapshot {
        pools: vec![SnapshotPool {
            name: "bench".into(),
            ranges: vec![IpRange::parse("10.100.0.0/16").unwrap_or_else(|e| panic!("{e}"))],
            scheduler: "wlc".into(),
            health: None,
            forwarding: None,
        }],
        services: (0..n).map(|i| service(i, node_port(i))).collect(),
        nodes: BTreeMap::from([("bench".to_owned(), nodes)]),
    }
}

/// No health checking: every real server serves.
fn no_health<'a>(
    targets: &'a std::collections::HashMap<edgelb::health::Target, edgelb::health::TargetState>,
    drains: &'a Drains,
) -> HealthInput<'a> {
    HealthInput {
        now: SystemTime::UNIX_EPOCH,
        drain_timeout: Duration::ZERO,
        all_down: AllDown::FailOpen,
        targets,
        drains,
        node_port: None,
    }
}

fn restore_file(d: &Desired) -> String {
    let mut out = String::new();
    for k in d.state.services.keys() {
        let _ = writeln!(out, "-A -t {}:{} -s wlc", k.vip, k.port);
    }
    for ((k, a), rs) in d.state.real_servers.iter() {
        let _ = writeln!(out, "-a -t {}:{} -r {a} -m -w {}", k.vip, k.port, rs.spec.weight);
    }
    out
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn run(n: u32, restore: &str) -> Result<(), String> {
    let options = LinuxOptions {
        nft_table: None,
        ..LinuxOptions::default()
    };
    let dp = LinuxDataplane::connect(options).await.map_err(|e| e.to_string())?;
    edgelb::dataplane::ipvs::IpvsHandle::new()
        .map_err(|e| e.to_string())?
        .flush()
        .execute()
        .await
        .map_err(|e| e.to_string())?;
    let (targets, drains) = (Default::default(), Drains::default());
    let health = no_health(&targets, &drains);
    let manages = Manages::default();
    std::fs::write(
        restore,
        restore_file(&Model::build(snapshot(n), manages, &health).into_parts().0),
    )
    .map_err(|e| e.to_string())?;

    let start = Instant::now();
    let mut model = Model::build(snapshot(n), manages, &health);
    let observed = dp.observe().await.map_err(|e| e.to_string())?;
    let ops = model.plan_full(&observed);
    dp.apply(&ops).await.map_err(|e| e.to_string())?;
    let full = start.elapsed();
    println!(
        "BENCH name=full-sync services={n} ops={} ms={}",
        ops.len(),
        full.as_millis()
    );

    let start = Instant::now();
    let mut observed = dp.observe().await.map_err(|e| e.to_string())?;
    let observe = start.elapsed();
    let again = model.plan_full(&observed);
    if !again.is_empty() {
        return Err(format!("second plan not empty: {} ops", again.len()));
    }
    println!("BENCH name=observe services={n} ms={}", observe.as_millis());

    // One Service's change (its NodePort moves: one real server set replaced), as a pass with a
    // fresh dump does it: dump, full plan, apply.
    let key = ServiceKey::new("bench", "default", "svc-0");
    let mut touched = Touched::default();
    let start = Instant::now();
    model.replace(&key, Some(service(0, 32_000)), &health, &mut touched);
    let fresh = dp.observe().await.map_err(|e| e.to_string())?;
    let ops = model.plan_full(&fresh);
    dp.apply(&ops).await.map_err(|e| e.to_string())?;
    let with_dump = start.elapsed();
    for op in &ops {
        observed.apply(op)?;
    }
    println!(
        "BENCH name=one-change-dump services={n} ops={} ms={}",
        ops.len(),
        with_dump.as_millis()
    );

    // The same change as a pass for a store change does it, repeated: replace the Service in
    // the kept model, plan what it touched, apply, fold into the kept state.
    let mut samples = Vec::new();
    let mut ops_each = 0;
    for round in 0..21u32 {
        let port = if round % 2 == 0 { node_port(0) } else { 32_000 };
        let mut touched = Touched::default();
        let start = Instant::now();
        model.replace(&key, Some(service(0, port)), &health, &mut touched);
        let ops = model.plan_touched(&observed, &touched);
        dp.apply(&ops).await.map_err(|e| e.to_string())?;
        for op in &ops {
            observed.apply(op)?;
        }
        samples.push(start.elapsed());
        ops_each = ops.len();
    }
    samples.sort();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!(
        "BENCH name=one-change services={n} ops={ops_each} p50_ms={} max_ms={}",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
    // The kept state is the kernel's.
    let now = dp.observe().await.map_err(|e| e.to_string())?;
    if !model.plan_full(&now).is_empty() {
        return Err("after the changes the kernel is not what the model wants".into());
    }
    println!("BENCH name=rss services={n} peak_kib={}", peak_rss_kib());
    edgelb::dataplane::ipvs::IpvsHandle::new()
        .map_err(|e| e.to_string())?
        .flush()
        .execute()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let restore = args.next().unwrap_or_else(|| "/tmp/restore.txt".into());
    match run(n, &restore).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}
