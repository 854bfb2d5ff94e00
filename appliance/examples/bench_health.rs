//! Health-check benchmark: 10,000 targets probed every 2 s against local listeners.
//!
//! Run: `cargo run --release -p edgelb --example bench_health` (prints a Markdown report and
//! a `BENCH name=checker-memory` line). The listeners run in a child process (this program re-run
//! with `--listeners`), so the CPU measured (user + system time of this process, from /proc) is
//! the checker's alone.
//!
//! `-- --memory` measures only the checker's memory per target, in a fresh process: 100,000
//! targets (10 addresses x 10,000 ports, default settings, nothing listening, so each has one
//! failed probe and its reason recorded) with the schedule running.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use edgelb::health::{Checker, Health, Settings, Target, Thresholds};

const ADDRESSES: u8 = 100;
const PORTS: u16 = 100;
const BASE_PORT: u16 = 41000;

fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15: utime and stime in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports these in USER_HZ, which is 100 on every architecture the appliance runs on.
    (ticks(11) + ticks(12)) / 100.0
}

fn listeners() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for p in 0..PORTS {
            let l = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, BASE_PORT + p))
                .await
                .expect("bind");
            tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        drop(s);
                    }
                }
            });
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}

fn main() {
    if std::env::args().any(|a| a == "--listeners") {
        listeners();
        return;
    }
    if std::env::args().any(|a| a == "--memory") {
        memory();
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--listeners")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("listener process");
    {
        use std::io::BufRead;
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).expect("ready line");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
    let _ = child.kill();
    let _ = child.wait();
    // In a process of its own, so the throughput run's allocations do not blur it.
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--memory")
        .output()
        .expect("memory run");
    print!("\n{}", String::from_utf8_lossy(&out.stdout));
}

/// Bytes in use on the heap (every arena, mmapped chunks included) and the resident set, after
/// giving free pages back to the kernel.
#[allow(unsafe_code)] // malloc_trim and mallinfo2 have no safe wrapper.
fn heap_and_rss() -> (usize, usize) {
    // SAFETY: plain glibc calls without pointers; they only inspect and trim the allocator.
    let heap = unsafe {
        libc::malloc_trim(0);
        let m = libc::mallinfo2();
        m.uordblks + m.hblkhd
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0);
    (heap, rss_kb * 1024)
}

const MEMORY_ADDRESSES: u8 = 10;
const MEMORY_PORTS: u16 = 10_000;
const MEMORY_BASE_PORT: u16 = 20_000;

fn memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let checker = Checker::new(256);
        let task = tokio::spawn(checker.clone().run());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (heap0, rss0) = heap_and_rss();
        let mut targets = HashMap::new();
        for a in 1..=MEMORY_ADDRESSES {
            for p in 0..MEMORY_PORTS {
                // 127.0.2.0/24 is on loopback and nothing listens there: each probe is refused.
                let addr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, a));
                targets.insert(Target::tcp(addr, MEMORY_BASE_PORT + p), Settings::default());
            }
        }
        let n = targets.len();
        checker.set_targets(targets);
        let started = Instant::now();
        let probed = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let probed = checker.snapshot().values().filter(|s| s.last.is_some()).count();
            if probed == n || started.elapsed() > Duration::from_secs(60) {
                break probed;
            }
        };
        let (heap1, rss1) = heap_and_rss();
        task.abort();
        let per = |a: usize, b: usize| b.saturating_sub(a) as f64 / n as f64;
        println!(
            "BENCH name=checker-memory targets={n} probed={probed} bytes_per_target={:.0} rss_bytes_per_target={:.0}",
            per(heap0, heap1),
            per(rss0, rss1)
        );
    });
}

async fn run() {
    let interval = Duration::from_secs(2);
    let settings = Settings {
        interval,
        timeout: Duration::from_secs(1),
        thresholds: Thresholds { rise: 2, fall: 3 },
        jitter_percent: 10,
    };
    let mut targets = HashMap::new();
    for a in 1..=ADDRESSES {
        for p in 0..PORTS {
            targets.insert(
                Target::tcp(IpAddr::V4(Ipv4Addr::new(127, 0, 1, a)), BASE_PORT + p),
                settings,
            );
        }
    }
    let n = targets.len();
    let checker = Checker::new(256);
    let task = tokio::spawn(checker.clone().run());
    checker.set_targets(targets);

    // Warm up one interval (first probes are spread over it), then measure five.
    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    let (probes0, _) = checker.lateness();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(interval * 5).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (probes1, lateness) = checker.lateness();
    let up = checker.snapshot().values().filter(|s| s.health == Health::Up).count();
    task.abort();

    let pct = |p: f64| {
        lateness
            .get(((lateness.len() as f64 - 1.0) * p) as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    println!("## Health checks: {n} targets every {} s\n", interval.as_secs());
    println!(
        "`cargo run --release -p edgelb --example bench_health` on {} cores; TCP probes to listeners in",
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0)
    );
    println!(
        "a separate process; 256 probes in flight at most; measured over {wall:.1} s after one interval of warm-up.\n"
    );
    println!("| targets | probes/s | CPU of the checker (% of one core) | lateness p50 ms | p99 ms | targets up |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.0} | {:.1} | {:.2} | {:.2} | {up} |",
        (probes1 - probes0) as f64 / wall,
        cpu / wall * 100.0,
        pct(0.5).unwrap_or(f64::NAN),
        pct(0.99).unwrap_or(f64::NAN)
    );
}
