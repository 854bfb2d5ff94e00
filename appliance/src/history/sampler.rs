//! The task that feeds the history every [`STEP`] seconds, on the wall clock's multiples of it:
//! IPVS's counters (read on a socket of its own, [`TrafficReader`]; without one, the counters
//! the reconciler last published), the real servers' health as the reconciler published it, the
//! pools' usage from the store, and the reconciler's passes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgelb_api::{DataplaneStatus, Pool, VirtualServiceStatus};
use tracing::warn;

use super::{History, STEP, Sample, SeriesKey, Values};
use crate::dataplane::TrafficReader;
use crate::forwarding::{Counters, StatusFeed, VsKey};
use crate::store::Store;

/// Traffic of one virtual service and its real servers, as read.
type Traffic = Vec<(VsKey, Counters, Vec<(SocketAddr, Counters)>)>;

#[derive(Debug)]
pub struct Sampler {
    history: History,
    store: Store,
    status: Option<StatusFeed>,
    traffic: Option<TrafficReader>,
    /// The reconciler's pass count and time at the previous sample.
    passes: Option<(u64, u64)>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Sampler {
    pub fn new(history: History, store: Store, status: Option<StatusFeed>, traffic: Option<TrafficReader>) -> Sampler {
        Sampler {
            history,
            store,
            status,
            traffic,
            passes: None,
        }
    }

    /// Samples on every multiple of [`STEP`] seconds until aborted.
    pub async fn run(mut self) {
        loop {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let step = Duration::from_secs(STEP as u64);
            let into = Duration::from_nanos((now.as_nanos() % step.as_nanos()) as u64);
            tokio::time::sleep(step - into).await;
            if let Err(e) = self.sample(unix_now()).await {
                warn!(error = %e, "recording the history failed");
            }
        }
    }

    /// Takes one sample for time `t` and records it.
    pub async fn sample(&mut self, t: i64) -> Result<(), String> {
        let status = self.status.as_ref().map(|s| s.latest().status());
        let traffic = match &self.traffic {
            Some(r) => Some(r.read().await.map_err(|e| format!("reading IPVS counters: {e}"))?),
            None => None,
        };
        let pools = self
            .store
            .list_pools()
            .await
            .map_err(|e| format!("reading pools: {e}"))?;
        let passes = status.as_ref().map(|s| (s.passes, s.pass_micros));
        let before = std::mem::replace(&mut self.passes, passes);
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || {
            let samples = samples(status.as_ref(), traffic.as_ref(), &pools, before);
            history.record(t, samples)
        })
        .await
        .map_err(|e| format!("the history task failed: {e}"))?
        .map_err(|e| format!("writing to {}: {e}", self.history.dir().display()))
    }
}

/// The samples of one moment, from what was read.
fn samples<'a>(
    status: Option<&'a DataplaneStatus>,
    traffic: Option<&'a Traffic>,
    pools: &'a [Pool],
    passes_before: Option<(u64, u64)>,
) -> Vec<Sample<'a>> {
    let mut out = Vec::new();
    let owned: HashMap<VsKey, &VirtualServiceStatus> = status
        .iter()
        .flat_map(|s| &s.virtual_services)
        .map(|v| (VsKey::new(v.ip, v.port, v.protocol), v))
        .collect();
    let from_status: Traffic;
    let traffic = match traffic {
        Some(t) => t,
        None => {
            from_status = owned
                .iter()
                .map(|(k, v)| (*k, counters_of(v), rs_counters_of(v)))
                .collect();
            &from_status
        }
    };
    let mut totals = ([0u64; 3], 0f32);
    let mut real_servers = 0usize;
    for (k, c, rss) in traffic {
        // Only what edgelb owns: IPVS may hold someone else's services too.
        let Some(vs) = owned.get(k) else { continue };
        let active: u32 = rss.iter().map(|(_, r)| r.active_connections).sum();
        let counters = [c.connections, c.bytes_in, c.bytes_out];
        out.push(Sample {
            key: SeriesKey::Service(*k),
            values: [f32::NAN, active as f32, f32::NAN, f32::NAN],
            counters: Some(counters),
            health: None,
        });
        for (i, v) in counters.iter().enumerate() {
            totals.0[i] += v;
        }
        totals.1 += active as f32;
        for (a, r) in rss {
            real_servers += 1;
            let health = vs
                .real_servers
                .iter()
                .find(|s| s.ip == a.ip() && s.port == a.port())
                .and_then(|s| s.health.as_ref())
                .map(|h| {
                    (
                        h.state,
                        h.since.unix_timestamp(),
                        h.last_result.as_deref().unwrap_or(""),
                    )
                });
            out.push(Sample {
                key: SeriesKey::RealServer(*k, *a),
                values: [f32::NAN, r.active_connections as f32, f32::NAN, f32::NAN],
                counters: Some([r.connections, r.bytes_in, r.bytes_out]),
                health,
            });
        }
    }
    if status.is_some() {
        out.push(Sample {
            key: SeriesKey::Totals,
            values: [f32::NAN, totals.1, f32::NAN, f32::NAN],
            counters: Some(totals.0),
            health: None,
        });
    }
    if let Some(s) = status {
        let (passes, mean_ms) = match passes_before {
            Some((p, us)) if s.passes >= p && s.pass_micros >= us => {
                let n = s.passes - p;
                let ms = if n == 0 {
                    0.0
                } else {
                    (s.pass_micros - us) as f64 / 1000.0 / n as f64
                };
                (n as f32, ms as f32)
            }
            _ => (f32::NAN, f32::NAN),
        };
        out.push(Sample {
            key: SeriesKey::Appliance,
            values: [passes, mean_ms, owned.len() as f32, real_servers as f32],
            counters: None,
            health: None,
        });
    }
    for p in pools {
        out.push(Sample {
            key: SeriesKey::Pool(p.spec.name.clone()),
            values: pool_values(p),
            counters: None,
            health: None,
        });
    }
    out
}

/// Allocated, held, and the free addresses of the family that runs out first.
pub fn pool_values(p: &Pool) -> Values {
    let free = p
        .usage
        .families
        .iter()
        .filter_map(|f| f.free.parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min);
    let free = if free.is_finite() {
        free
    } else {
        p.usage.free.parse::<f64>().unwrap_or(0.0)
    };
    [p.usage.allocated as f32, p.usage.held as f32, free as f32, 0.0]
}

fn counters_of(v: &VirtualServiceStatus) -> Counters {
    Counters {
        connections: v.counters.connections,
        packets_in: v.counters.packets_in,
        packets_out: v.counters.packets_out,
        bytes_in: v.counters.bytes_in,
        bytes_out: v.counters.bytes_out,
        active_connections: 0,
        inactive_connections: 0,
    }
}

fn rs_counters_of(v: &VirtualServiceStatus) -> Vec<(SocketAddr, Counters)> {
    v.real_servers
        .iter()
        .map(|r| {
            (
                SocketAddr::new(r.ip, r.port),
                Counters {
                    connections: r.counters.connections,
                    packets_in: r.counters.packets_in,
                    packets_out: r.counters.packets_out,
                    bytes_in: r.counters.bytes_in,
                    bytes_out: r.counters.bytes_out,
                    active_connections: r.active_connections,
                    inactive_connections: r.inactive_connections,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use edgelb_api::{BackendHealth, HealthState, Protocol, RealServerStatus, TrafficCounters};

    use super::*;
    use crate::forwarding::StatusView;
    use crate::history::{Options, Range};

    const T0: i64 = 1_800_000_000;

    fn status(step: u64, second_down: bool) -> DataplaneStatus {
        let rs = |ip: &str, n: u64, down: bool| RealServerStatus {
            ip: ip.parse().expect("ip"),
            port: 30080,
            weight: 1,
            method: "masquerade".into(),
            active_connections: 3,
            inactive_connections: 0,
            counters: TrafficCounters {
                connections: n * step,
                bytes_in: 100 * n * step,
                bytes_out: 0,
                ..TrafficCounters::default()
            },
            health: Some(BackendHealth {
                target: format!("tcp://{ip}:30080"),
                state: if down { HealthState::Down } else { HealthState::Up },
                since: time::OffsetDateTime::from_unix_timestamp(T0 + 5 * step as i64).expect("time"),
                last_result: Some(if down { "connect: refused" } else { "ok" }.into()),
                last_probe: None,
                last_latency_micros: None,
            }),
        };
        DataplaneStatus {
            mode: "ipvs".into(),
            passes: 10 + 4 * step,
            pass_micros: 50_000 + 8_000 * step,
            virtual_services: vec![VirtualServiceStatus {
                ip: "203.0.113.5".parse().expect("ip"),
                port: 80,
                protocol: Protocol::Tcp,
                programmed: true,
                scheduler: Some("wlc".into()),
                persistence_timeout_seconds: None,
                counters: TrafficCounters {
                    connections: 50 * step,
                    bytes_in: 5_000 * step,
                    bytes_out: 20_000 * step,
                    ..TrafficCounters::default()
                },
                real_servers: vec![rs("10.1.0.11", 30, false), rs("10.1.0.12", 20, second_down)],
            }],
            ..DataplaneStatus::default()
        }
    }

    #[tokio::test]
    async fn a_sample_records_traffic_health_pools_and_passes_from_what_was_published() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).await.expect("store");
        let spec =
            serde_json::from_value(serde_json::json!({"name": "public", "ranges": ["198.51.100.0/28"]})).expect("spec");
        store.create_pool("test", spec).await.expect("pool");
        let history = History::open(&dir.path().join("history"), T0, Options::default()).expect("history");
        let latest: Arc<Mutex<Arc<dyn StatusView>>> = Arc::new(Mutex::new(Arc::new(status(0, false))));
        let feed = {
            let latest = latest.clone();
            StatusFeed::new(move || latest.lock().expect("lock").clone())
        };
        let mut sampler = Sampler::new(history.clone(), store, Some(feed), None);
        sampler.sample(T0).await.expect("sample");
        *latest.lock().expect("lock") = Arc::new(status(1, true));
        sampler.sample(T0 + 10).await.expect("sample");

        let vs = VsKey::new("203.0.113.5".parse().expect("ip"), 80, Protocol::Tcp);
        let read = |key: SeriesKey| {
            let s = history.series(&key, Range::Hour, T0 + 10).expect("read");
            s.points[s.points.len() - 1]
        };
        assert_eq!(read(SeriesKey::Service(vs)), [5.0, 6.0, 500.0, 2000.0]);
        assert_eq!(read(SeriesKey::Totals), [5.0, 6.0, 500.0, 2000.0]);
        let rs2 = SocketAddr::new("10.1.0.12".parse().expect("ip"), 30080);
        assert_eq!(read(SeriesKey::RealServer(vs, rs2)), [2.0, 3.0, 200.0, 0.0]);
        // Four passes of 2 ms each since the sample before; one virtual service, two real servers.
        assert_eq!(read(SeriesKey::Appliance), [4.0, 2.0, 1.0, 2.0]);
        assert_eq!(read(SeriesKey::Pool("public".into())), [0.0, 0.0, 16.0, 0.0]);
        let t = history.transitions(&[vs], T0).expect("transitions");
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].real_server, t[0].from, t[0].to, t[0].time, t[0].reason.as_str()),
            (rs2, HealthState::Up, HealthState::Down, T0 + 5, "connect: refused")
        );
    }
}
