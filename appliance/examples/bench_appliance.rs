//! Benchmark of the running appliance for the kernel lab (`lab/scenarios/bench-appliance.sh`):
//! drives a real `edgelb serve --dataplane ipvs` through its REST API and watches the kernel.
//! It creates a pool, a cluster and a node list of 10 nodes (once; a second run finds them),
//! PUTs Services `svc-FROM` .. `svc-(TO-1)` (one TCP port each, its own NodePort) with
//! `--concurrency` requests in flight, waits until IPVS holds TO virtual services with their
//! real servers, reads the appliance's VmRSS and VmHWM, then changes ONE Service's scheduler
//! `--changes` times and measures from the PUT's answer until the kernel shows the new scheduler.
//! Prints `BENCH name=... key=value` lines.
//!
//! Usage, as root in the appliance's network namespace (it reads IPVS over netlink):
//! `bench_appliance --url https://127.0.0.1:8443 --token T --ca CERT.pem --pid PID --from 0
//! --to 1000 [--concurrency 16] [--changes 20]`

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use edgelb::dataplane::ipvs::{self, IpvsHandle, ServiceKey, VirtualService};
use futures::TryStreamExt;
use serde_json::{Value, json};

const NODES: u8 = 10;
/// Enough addresses for 10,000 Services, one each.
const POOL: &str = "10.64.0.0/18";
const POOL_SCHEDULER: &str = "wlc";
const CLUSTER: &str = "bench";
const NAMESPACE: &str = "default";
/// Each Service gets its own NodePort, `NODE_PORT_BASE + index` (a cluster with a wide
/// `--service-node-port-range`), so every Service is distinct work for the appliance.
const NODE_PORT_BASE: u32 = 20_000;

#[derive(Debug)]
struct Options {
    url: String,
    token: String,
    ca: String,
    pid: u32,
    from: u32,
    to: u32,
    concurrency: usize,
    changes: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        url: "https://127.0.0.1:8443".into(),
        token: String::new(),
        ca: String::new(),
        pid: 0,
        from: 0,
        to: 1000,
        concurrency: 16,
        changes: 20,
        timeout: Duration::from_secs(900),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--url" => o.url = value()?,
            "--token" => o.token = value()?,
            "--token-file" => {
                let path = value()?;
                o.token = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{path}: {e}"))?
                    .trim()
                    .to_owned();
            }
            "--ca" => o.ca = value()?,
            "--pid" => o.pid = number(value()?)? as u32,
            "--from" => o.from = number(value()?)? as u32,
            "--to" => o.to = number(value()?)? as u32,
            "--concurrency" => o.concurrency = number(value()?)?.max(1) as usize,
            "--changes" => o.changes = number(value()?)? as usize,
            "--timeout-seconds" => o.timeout = Duration::from_secs(number(value()?)?),
            _ => return Err(format!("unknown argument {flag} (see the file's header for usage)")),
        }
    }
    if o.token.is_empty() || o.ca.is_empty() || o.pid == 0 {
        return Err("--token (or --token-file), --ca and --pid are required".into());
    }
    if o.to <= o.from || o.to > 16_000 {
        return Err(format!("--from {} --to {}: need from < to <= 16000", o.from, o.to));
    }
    Ok(o)
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    /// A request; `Ok(None)` for 409 (already there, from an earlier run).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Option<Value>, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        let text = resp.text().await.map_err(|e| format!("{method} {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {text}"));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{method} {path}: {e}: {text}"))
    }

    async fn put_service(&self, i: u32, scheduler: Option<&str>) -> Result<IpAddr, String> {
        let body = json!({
            "uid": format!("uid-{i}"),
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "node_port": NODE_PORT_BASE + i}],
            "scheduler": scheduler,
        });
        let path = format!("/api/v1/clusters/{CLUSTER}/services/{NAMESPACE}/svc-{i}");
        let svc = self
            .call(reqwest::Method::PUT, &path, Some(body))
            .await?
            .ok_or_else(|| format!("PUT {path}: 409"))?;
        svc["ips"][0]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("PUT {path}: no address in {svc}"))
    }
}

fn node_addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 11 + n))
}

/// Pool, cluster and nodes; each may exist from an earlier run.
async fn setup(api: &Api) -> Result<(), String> {
    api.call(
        reqwest::Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "bench", "ranges": [POOL], "scheduler": POOL_SCHEDULER, "hold_seconds": 0})),
    )
    .await?;
    api.call(
        reqwest::Method::POST,
        "/api/v1/clusters",
        Some(json!({"name": CLUSTER})),
    )
    .await?;
    let nodes: Vec<Value> = (0..NODES)
        .map(|n| json!({"name": format!("node-{n}"), "addresses": [node_addr(n).to_string()]}))
        .collect();
    api.call(
        reqwest::Method::PUT,
        &format!("/api/v1/clusters/{CLUSTER}/nodes"),
        Some(json!({ "nodes": nodes })),
    )
    .await?;
    Ok(())
}

/// The TCP virtual services in the kernel whose address is in the bench pool.
async fn kernel_services(ipvs: &IpvsHandle) -> Result<Vec<ipvs::Service>, String> {
    let entries: Vec<_> = ipvs
        .services()
        .dump()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("IPVS dump: {e}"))?;
    Ok(entries
        .into_iter()
        .filter_map(|e| match e.service {
            VirtualService::Inet(s) if matches!(s.addr, IpAddr::V4(a) if a.octets()[..2] == [10, 64]) => Some(s),
            _ => None,
        })
        .collect())
}

async fn destinations(ipvs: &IpvsHandle, key: &ServiceKey) -> Result<usize, String> {
    ipvs.destinations(key)
        .dump()
        .execute()
        .try_fold(0, |n, _| async move { Ok(n + 1) })
        .await
        .map_err(|e| format!("IPVS destinations: {e}"))
}

/// `(VmRSS, VmHWM)` of a process, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64), String> {
    Ok((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
}

/// One `... kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, name: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(o: Options) -> Result<(), String> {
    let pem = std::fs::read(&o.ca).map_err(|e| format!("{}: {e}", o.ca))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", o.ca))?;
    let http = reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let api = Arc::new(Api {
        http,
        url: o.url.trim_end_matches('/').to_owned(),
        token: o.token.clone(),
    });
    let ipvs = IpvsHandle::new().map_err(|e| format!("IPVS: {e}"))?;
    setup(&api).await?;
    let n = o.to;
    let created = o.to - o.from;

    // Create: PUTs with `concurrency` in flight; each answer's latency kept.
    let start = Instant::now();
    let next = Arc::new(AtomicU32::new(o.from));
    let workers = (0..o.concurrency).map(|_| {
        let api = api.clone();
        let next = next.clone();
        let to = o.to;
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, String>(latencies);
                }
                let t = Instant::now();
                api.put_service(i, None).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        })
    });
    let mut put_ms = Vec::new();
    for w in futures::future::join_all(workers).await {
        put_ms.extend(w.map_err(|e| format!("worker: {e}"))??);
    }
    let puts_done = start.elapsed();
    put_ms.sort_by(f64::total_cmp);
    println!(
        "BENCH name=appliance-create services={n} created={created} concurrency={} put_s={:.1} puts_per_s={:.0} put_p50_ms={:.0} put_p99_ms={:.0}",
        o.concurrency,
        puts_done.as_secs_f64(),
        f64::from(created) / puts_done.as_secs_f64(),
        percentile(&put_ms, 0.5),
        percentile(&put_ms, 0.99)
    );

    // Converged: every Service's virtual service in IPVS, and the last one's 10 real servers.
    let last = api.put_service(n - 1, None).await?;
    let last_key = ServiceKey::inet(last, 80, ipvs::Protocol::Tcp);
    let mut dumps = 0;
    loop {
        let seen = kernel_services(&ipvs).await?.len();
        dumps += 1;
        if seen >= n as usize && destinations(&ipvs, &last_key).await? == usize::from(NODES) {
            break;
        }
        if start.elapsed() > o.timeout {
            return Err(format!("not converged after {:?}: IPVS holds {seen} of {n}", o.timeout));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = start.elapsed();
    let (rss, hwm) = rss_kib(o.pid)?;
    println!(
        "BENCH name=appliance-converge services={n} real_servers={} total_s={:.1} after_last_put_s={:.1} dumps={dumps}",
        n * u32::from(NODES),
        converged.as_secs_f64(),
        (converged - puts_done).as_secs_f64()
    );
    println!(
        "BENCH name=appliance-rss services={n} vmrss_kib={rss} vmhwm_kib={hwm} vmrss_mb={:.1} vmhwm_mb={:.1}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // The same, once the appliance has had a quiet moment (it hands freed memory back when
    // changes pause): what `ps` shows between bursts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = rss_kib(o.pid)?;
    // Heap and stacks, against the binary's and libraries' pages (file pages, or shared
    // memory when the binary lives in a RAM file system, as in the lab VM).
    let anon = status_kib(o.pid, "RssAnon:")?;
    let mapped = status_kib(o.pid, "RssFile:")? + status_kib(o.pid, "RssShmem:")?;
    println!(
        "BENCH name=appliance-rss-settled services={n} vmrss_kib={rss} vmhwm_kib={hwm} vmrss_mb={:.1} vmhwm_mb={:.1} rssanon_mb={:.1} rssfile_shmem_mb={:.1}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        mapped as f64 / 1024.0
    );

    // One Service's change: its scheduler flips between rr and the pool's; timed from the PUT's
    // answer until the kernel reports the new one. A pause between changes so each is its own
    // reconcile pass.
    let target = n / 2;
    let addr = api.put_service(target, None).await?;
    let key = ServiceKey::inet(addr, 80, ipvs::Protocol::Tcp);
    let mut visible_ms = Vec::new();
    let mut put_ms = Vec::new();
    for c in 0..o.changes {
        let (scheduler, want) = if c % 2 == 0 {
            (Some("rr"), "rr")
        } else {
            (None, POOL_SCHEDULER)
        };
        let t = Instant::now();
        api.put_service(target, scheduler).await?;
        let answered = Instant::now();
        put_ms.push((answered - t).as_secs_f64() * 1000.0);
        loop {
            let s = ipvs
                .services()
                .get(&key)
                .execute()
                .await
                .map_err(|e| format!("IPVS get {addr}:80: {e}"))?;
            if matches!(&s.service, VirtualService::Inet(s) if s.scheduler == want) {
                break;
            }
            if answered.elapsed() > Duration::from_secs(60) {
                return Err(format!("change {c}: {addr}:80 not {want} after 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        visible_ms.push(answered.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    visible_ms.sort_by(f64::total_cmp);
    put_ms.sort_by(f64::total_cmp);
    println!(
        "BENCH name=appliance-one-change services={n} changes={} put_p50_ms={:.0} visible_p50_ms={:.0} visible_p99_ms={:.0} visible_max_ms={:.0}",
        o.changes,
        percentile(&put_ms, 0.5),
        percentile(&visible_ms, 0.5),
        percentile(&visible_ms, 0.99),
        visible_ms.last().copied().unwrap_or(0.0)
    );
    let (rss, hwm) = rss_kib(o.pid)?;
    println!(
        "BENCH name=appliance-rss-after-changes services={n} vmrss_kib={rss} vmhwm_kib={hwm} vmrss_mb={:.1} vmhwm_mb={:.1}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    edgelb::tls::install_crypto_provider();
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_appliance: {e}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_appliance: {e}");
            ExitCode::FAILURE
        }
    }
}
