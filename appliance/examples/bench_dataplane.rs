//! Data-plane benchmark for the kernel lab (`lab/scenarios/bench-dataplane.sh`): a full sync from
//! empty of N virtual services x 10 real servers through the reconciler's plan and the Linux data
//! plane (pipelined IPVS batch), then one service's change at that size (observe + plan + apply,
//! as a reconcile pass does it), and the process's peak RSS. Prints `BENCH name=... ms=...`
//! lines; writes the same set as an `ipvsadm --restore` file for comparison.
//!
//! Usage: `bench_dataplane N RESTORE_FILE` as root, in a namespace where nothing else uses IPVS
//! (it flushes IPVS first).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Instant;

use edgelb::dataplane::{
    Dataplane, LinuxDataplane, LinuxOptions, Protocol, RealServer, RsSpec, State, VirtualService, VsKey, VsSpec,
};
use edgelb::ipam::IpRange;
use edgelb::reconcile::{Desired, Ownership, plan};

const REAL_SERVERS: u32 = 10;

fn desired(n: u32, weight_of_first: u32) -> Desired {
    let mut state = State::default();
    for i in 0..n {
        let vip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i / 4));
        let key = VsKey::new(vip, 80 + (i % 4) as u16, Protocol::Tcp);
        state.services.insert(
            key,
            VirtualService {
                spec: VsSpec {
                    scheduler: "wlc".into(),
                    persistence: None,
                },
                counters: Default::default(),
            },
        );
        for r in 0..REAL_SERVERS {
            let weight = if i == 0 && r == 0 { weight_of_first } else { 1 };
            state.real_servers.insert(
                (
                    key,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10 + r as u8)), 30080),
                ),
                RealServer {
                    spec: RsSpec::masquerade(weight),
                    counters: Default::default(),
                },
            );
        }
    }
    Desired {
        state,
        owned: Ownership::new(vec![IpRange::parse("10.100.0.0/16").unwrap_or_else(|e| panic!("{e}"))]),
        ruleset: None,
    }
}

fn restore_file(d: &Desired) -> String {
    let mut out = String::new();
    for k in d.state.services.keys() {
        let _ = writeln!(out, "-A -t {}:{} -s wlc", k.vip, k.port);
    }
    for ((k, a), rs) in &d.state.real_servers {
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
    let want = desired(n, 1);
    std::fs::write(restore, restore_file(&want)).map_err(|e| e.to_string())?;

    let start = Instant::now();
    let observed = dp.observe().await.map_err(|e| e.to_string())?;
    let ops = plan(&want, &observed);
    dp.apply(&ops).await.map_err(|e| e.to_string())?;
    let full = start.elapsed();
    println!(
        "BENCH name=full-sync services={n} ops={} ms={}",
        ops.len(),
        full.as_millis()
    );

    let start = Instant::now();
    let observed = dp.observe().await.map_err(|e| e.to_string())?;
    let observe = start.elapsed();
    let again = plan(&want, &observed);
    if !again.is_empty() {
        return Err(format!("second plan not empty: {} ops", again.len()));
    }
    println!("BENCH name=observe services={n} ms={}", observe.as_millis());

    // One service's change: a real server drained, as a pass does it (observe, plan, apply).
    let changed = desired(n, 0);
    let start = Instant::now();
    let observed = dp.observe().await.map_err(|e| e.to_string())?;
    let ops = plan(&changed, &observed);
    dp.apply(&ops).await.map_err(|e| e.to_string())?;
    let one = start.elapsed();
    // The same change given the last observation (what a pass costs without a fresh dump).
    let start = Instant::now();
    let ops2 = plan(&desired(n, 1), &{
        let mut o = observed;
        o.real_servers
            .values_mut()
            .for_each(|r| r.counters = Default::default());
        let first: Option<(VsKey, SocketAddr)> = o.real_servers.keys().next().copied();
        if let Some(k) = first
            && let Some(r) = o.real_servers.get_mut(&k)
        {
            r.spec.weight = 0;
        }
        o
    });
    dp.apply(&ops2).await.map_err(|e| e.to_string())?;
    let one_cached = start.elapsed();
    println!(
        "BENCH name=one-change services={n} ops={} ms={} plan_apply_only_ms={}",
        ops.len(),
        one.as_millis(),
        one_cached.as_millis()
    );
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
