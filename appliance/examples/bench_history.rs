//! The history's cost at scale: memory, disk written, time to record one sample and to read a
//! graph, at N Services x M nodes (one port each: N virtual services and N x M real servers),
//! over 65 simulated minutes (one hour rolled up), twice in one run: every series busy, then 10 %
//! busy and the rest idle (zero).
//!
//! Run: `cargo run --release -p edgelb --example bench_history [SERVICES] [NODES]`
//! (default 10000 10). The simulated time runs as fast as the machine records; the chunks go
//! to a temporary directory on the disk.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use edgelb::forwarding::VsKey;
use edgelb::history::{History, Options, Range, STEP, Sample, SeriesKey};
use edgelb_api::{HealthState, Protocol};

/// `(VmRSS, VmHWM)` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn vs(i: usize) -> VsKey {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32);
    VsKey::new(IpAddr::V4(ip), 80, Protocol::Tcp)
}

fn rs(n: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(192, 168, (n / 250) as u8, (n % 250) as u8 + 1)),
        30080,
    )
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn run(services: usize, nodes: usize, busy_percent: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let t0: i64 = 1_800_000_000;
    let (before, _) = rss_kib();
    let h = History::open(dir.path(), t0, Options::default()).expect("open");
    let minutes = 65;
    let mut record_ms = Vec::new();
    let mut rollup_ms = 0.0;
    for step in 0..(minutes * 60 / STEP) {
        let t = t0 + step * STEP;
        let n = step as u64;
        let samples = (0..services).flat_map(move |i| {
            let busy = i * 100 < services * busy_percent;
            let k = vs(i);
            let c = move |x: u64| if busy { x * n } else { 0 };
            std::iter::once(Sample {
                key: SeriesKey::Service(k),
                values: [f32::NAN, if busy { 40.0 } else { 0.0 }, f32::NAN, f32::NAN],
                counters: Some([c(50), c(40_000), c(400_000)]),
                health: None,
            })
            .chain((0..nodes).map(move |j| Sample {
                key: SeriesKey::RealServer(k, rs(j)),
                values: [f32::NAN, if busy { 4.0 } else { 0.0 }, f32::NAN, f32::NAN],
                counters: Some([c(5), c(4_000), c(40_000)]),
                health: Some((HealthState::Up, t0, "ok")),
            }))
        });
        let start = Instant::now();
        h.record(t, samples).expect("record");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if t % 3600 == 0 && step > 0 {
            rollup_ms = ms;
        } else {
            record_ms.push(ms);
        }
    }
    let (after, peak) = rss_kib();
    let stats = h.stats();
    let now = t0 + minutes * 60;
    let mut reads = Vec::new();
    for range in Range::ALL {
        let mut ms = Vec::new();
        for i in 0..20 {
            let key = SeriesKey::RealServer(vs(i * 7 % services), rs(i % nodes));
            let start = Instant::now();
            let s = h.series(&key, range, now).expect("read");
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
            assert!(!s.points.is_empty());
        }
        reads.push((range.as_str(), percentile(&mut ms, 0.5), percentile(&mut ms, 1.0)));
    }
    let disk: u64 = ["fine", "coarse"]
        .iter()
        .flat_map(|d| std::fs::read_dir(dir.path().join(d)).expect("dir"))
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    let per_minute = stats.bytes_written as f64 / minutes as f64;
    println!(
        "{services} Services x {nodes} nodes, {busy_percent}% busy: {} series; RSS +{:.1} MiB (peak +{:.1} MiB); \
         record p50 {:.1} ms, max {:.1} ms, the one that rolled up an hour {:.0} ms; written {:.2} MiB a minute \
         ({:.1} KiB/s, {} files in 65 min), {:.1} MiB on disk; one real server's graph: {}",
        stats.series,
        after.saturating_sub(before) as f64 / 1024.0,
        peak.saturating_sub(before) as f64 / 1024.0,
        percentile(&mut record_ms, 0.5),
        percentile(&mut record_ms, 1.0),
        rollup_ms,
        per_minute / 1048576.0,
        per_minute / 60.0 / 1024.0,
        stats.chunks_written,
        disk as f64 / 1048576.0,
        reads
            .iter()
            .map(|(r, p50, max)| format!("{r} {p50:.2} ms p50 / {max:.2} ms max"))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// Reads on a full retention: 30 days and an hour of 100 Services x 10 nodes (10 % busy), so
/// that a 30-day graph opens its 720 hourly chunks and a 24-hour one its 24.
fn full_retention() {
    let dir = tempfile::tempdir().expect("tmp");
    let t0: i64 = 1_800_000_000;
    let h = History::open(dir.path(), t0, Options::default()).expect("open");
    let end = t0 + 30 * 86_400 + 3600;
    let start = Instant::now();
    let mut t = t0;
    while t < end {
        let n = ((t - t0) / STEP) as u64;
        let samples = (0..100).flat_map(move |i| {
            let busy = i % 10 == 0;
            let k = vs(i);
            (0..10).map(move |j| Sample {
                key: SeriesKey::RealServer(k, rs(j)),
                values: [f32::NAN, if busy { 4.0 } else { 0.0 }, f32::NAN, f32::NAN],
                counters: Some(if busy { [5 * n, 4_000 * n, 40_000 * n] } else { [0; 3] }),
                health: None,
            })
        });
        h.record(t, samples).expect("record");
        t += STEP;
    }
    let simulated = start.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for range in Range::ALL {
        let mut ms = Vec::new();
        for i in 0..20 {
            let key = SeriesKey::RealServer(vs(i * 10 % 100), rs(i % 10));
            let start = Instant::now();
            h.series(&key, range, end).expect("read");
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        out.push(format!(
            "{} {:.2} ms p50 / {:.2} ms max",
            range.as_str(),
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 1.0)
        ));
    }
    let files = |d: &str| std::fs::read_dir(dir.path().join(d)).expect("dir").count();
    println!(
        "full retention (30 days 1 hour of 100 Services x 10 nodes, simulated in {simulated:.0} s; {} fine and {} coarse chunks kept): \
         one real server's graph: {}",
        files("fine"),
        files("coarse"),
        out.join(", ")
    );
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // Each case in a process of its own, so that one's freed memory is not the next one's.
    if raw.first().map(String::as_str) == Some("--case") {
        let n: Vec<usize> = raw[1..].iter().filter_map(|a| a.parse().ok()).collect();
        match n.as_slice() {
            [s, m, busy] => run(*s, *m, *busy),
            _ => full_retention(),
        }
        return;
    }
    let args: Vec<usize> = raw.iter().filter_map(|a| a.parse().ok()).collect();
    let services = args.first().copied().unwrap_or(10_000).to_string();
    let nodes = args.get(1).copied().unwrap_or(10).to_string();
    let me = std::env::current_exe().expect("own path");
    for case in [
        vec![services.as_str(), nodes.as_str(), "10"],
        vec![services.as_str(), nodes.as_str(), "100"],
        vec!["full"],
    ] {
        let status = std::process::Command::new(&me)
            .arg("--case")
            .args(&case)
            .status()
            .expect("run a case");
        assert!(status.success(), "case {case:?} failed");
    }
}
