//! Health-check benchmark: 10,000 targets probed every 2 s against local listeners.
//!
//! Run: `cargo run --release -p edgelb --example bench_health` (prints a Markdown report).
//! The listeners run in a child process (this program re-run with `--listeners`), so the CPU
//! measured (user + system time of this process, from /proc) is the checker's alone.

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
}

async fn run() {
    let interval = Duration::from_secs(2);
    let settings = Settings {
        interval,
        timeout: Duration::from_secs(1),
        thresholds: Thresholds { rise: 2, fall: 3 },
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
    let checker = Checker::new(256, 0.1);
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
