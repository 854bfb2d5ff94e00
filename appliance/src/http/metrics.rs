//! Prometheus metrics: requests by route and status with latency, pool usage read from the
//! store at scrape time (so the numbers are never stale, and a deleted pool disappears), and
//! per-VIP and per-real-server IPVS counters from the data plane's last published status.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::AppState;
use crate::forwarding::StatusFeed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolFamilyLabels {
    pool: String,
    family: String,
}

/// A pool's size, addresses allocated and held, under `prefix` with labels `L`.
struct PoolGauges<L> {
    total: Family<L, FloatGauge>,
    allocated: Family<L, FloatGauge>,
    held: Family<L, FloatGauge>,
}

impl<L> PoolGauges<L>
where
    L: Clone + std::fmt::Debug + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static,
{
    fn register(registry: &mut Registry, prefix: &str, of: &str) -> PoolGauges<L> {
        let g = PoolGauges {
            total: Family::default(),
            allocated: Family::default(),
            held: Family::default(),
        };
        registry.register(prefix, format!("Addresses {of} can hand out"), g.total.clone());
        registry.register(
            format!("{prefix}_allocated"),
            format!("Addresses {of} in use by Services"),
            g.allocated.clone(),
        );
        registry.register(
            format!("{prefix}_held"),
            format!("Released addresses {of} still held back"),
            g.held.clone(),
        );
        g
    }

    fn clear(&self) {
        self.total.clear();
        self.allocated.clear();
        self.held.clear();
    }

    fn set(&self, labels: &L, total: &str, allocated: u64, held: u64) {
        self.total
            .get_or_create(labels)
            .set(total.parse::<f64>().unwrap_or(f64::NAN));
        self.allocated.get_or_create(labels).set(allocated as f64);
        self.held.get_or_create(labels).set(held as f64);
    }
}

/// How full each pool is against its thresholds: what the console's banners show and the
/// alerting rules in `deploy/prometheus/` fire on. Levels are 0 ok, 1 warning, 2 critical,
/// 3 exhausted.
struct CapacityGauges {
    level: Family<PoolLabels, Gauge>,
    family_level: Family<PoolFamilyLabels, Gauge>,
    family_utilization: Family<PoolFamilyLabels, FloatGauge>,
    warning: Family<PoolLabels, FloatGauge>,
    critical: Family<PoolLabels, FloatGauge>,
}

impl CapacityGauges {
    fn register(registry: &mut Registry) -> CapacityGauges {
        let g = CapacityGauges {
            level: Family::default(),
            family_level: Family::default(),
            family_utilization: Family::default(),
            warning: Family::default(),
            critical: Family::default(),
        };
        registry.register(
            "pool_capacity_level",
            "A pool's worst family against its thresholds: 0 ok, 1 warning, 2 critical, 3 exhausted",
            g.level.clone(),
        );
        registry.register(
            "pool_family_capacity_level",
            "One family of a pool against its thresholds: 0 ok, 1 warning, 2 critical, 3 exhausted",
            g.family_level.clone(),
        );
        registry.register(
            "pool_family_utilization_ratio",
            "Addresses of one family of a pool allocated or held, over those it can hand out",
            g.family_utilization.clone(),
        );
        registry.register(
            "pool_capacity_warning_ratio",
            "A pool's warning threshold, as a ratio of its addresses",
            g.warning.clone(),
        );
        registry.register(
            "pool_capacity_critical_ratio",
            "A pool's critical threshold, as a ratio of its addresses",
            g.critical.clone(),
        );
        g
    }

    fn clear(&self) {
        self.level.clear();
        self.family_level.clear();
        self.family_utilization.clear();
        self.warning.clear();
        self.critical.clear();
    }

    fn set(&self, pool: &edgelb_api::Pool) {
        let labels = PoolLabels {
            pool: pool.spec.name.clone(),
        };
        let level = |l: edgelb_api::CapacityLevel| l as i64;
        self.level.get_or_create(&labels).set(level(pool.usage.level));
        self.warning
            .get_or_create(&labels)
            .set(f64::from(pool.spec.capacity_warning_percent) / 100.0);
        self.critical
            .get_or_create(&labels)
            .set(f64::from(pool.spec.capacity_critical_percent) / 100.0);
        for f in &pool.usage.families {
            let l = PoolFamilyLabels {
                pool: pool.spec.name.clone(),
                family: f.family.to_string(),
            };
            self.family_level.get_or_create(&l).set(level(f.level));
            self.family_utilization.get_or_create(&l).set(f.utilization);
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pools: PoolGauges<PoolLabels>,
    /// The same per address family: a dual-stack pool can run out of one while it looks empty.
    pool_families: PoolGauges<PoolFamilyLabels>,
    capacity: CapacityGauges,
    services: Gauge,
    dataplane: Arc<RwLock<StatusFeed>>,
    history: Arc<RwLock<Option<crate::history::History>>>,
    store: Arc<RwLock<Option<crate::store::Store>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgelb");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let services = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let pools = PoolGauges::register(&mut registry, "pool_addresses", "of a pool");
        let pool_families = PoolGauges::register(&mut registry, "pool_family_addresses", "of one family of a pool");
        let capacity = CapacityGauges::register(&mut registry);
        registry.register("services", "Services known to the appliance", services.clone());
        let rx = StatusFeed::fixed(Arc::new(edgelb_api::DataplaneStatus::default()));
        let dataplane = Arc::new(RwLock::new(rx));
        registry.register_collector(Box::new(DataplaneCollector(dataplane.clone())));
        let history = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(HistoryCollector(history.clone())));
        let store = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(StoreCollector(store.clone())));
        Metrics {
            registry,
            requests,
            latency,
            pools,
            pool_families,
            capacity,
            services,
            dataplane,
            history,
            store,
        }
    }

    /// Reports how `store` answers (its last check, made every few seconds).
    pub fn set_store(&self, store: crate::store::Store) {
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Reports the history's size and writes from now on.
    pub fn set_history(&self, history: crate::history::History) {
        *self.history.write().unwrap_or_else(|e| e.into_inner()) = Some(history);
    }

    /// Reads IPVS counters from the data plane's published status from now on.
    pub fn set_dataplane(&self, status: StatusFeed) {
        *self.dataplane.write().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VsLabels {
    vip: String,
    port: u16,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RsLabels {
    vip: String,
    port: u16,
    protocol: String,
    real_server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    port: u16,
    protocol: String,
    backend: String,
}

/// IPVS counters, encoded at scrape time from the last published status (the kernel's own
/// counters: absolute values, so constant metrics rather than ones this process increments).
#[derive(Debug)]
struct DataplaneCollector(Arc<RwLock<StatusFeed>>);

type CounterOf = fn(&edgelb_api::TrafficCounters) -> u64;

const COUNTERS: [(&str, &str, CounterOf); 5] = [
    ("connections", "Connections scheduled", |c| c.connections),
    ("packets_in", "Packets from clients", |c| c.packets_in),
    ("packets_out", "Packets to clients", |c| c.packets_out),
    ("bytes_in", "Bytes from clients", |c| c.bytes_in),
    ("bytes_out", "Bytes to clients", |c| c.bytes_out),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    kind: String,
}

/// The store's last check (made every few seconds, and at each `/readyz`), read at each scrape.
#[derive(Debug)]
struct StoreCollector(Arc<RwLock<Option<crate::store::Store>>>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.0.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let h = store.health();
        let labels = StoreLabels {
            kind: h.kind.to_owned(),
        };
        let up = ConstGauge::new(i64::from(h.answering));
        up.encode(
            encoder
                .encode_descriptor(
                    "store_up",
                    "1 when the store's database answered its last check",
                    None,
                    up.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;
        if let Some(latency) = h.latency {
            let ping = ConstGauge::new(latency.as_secs_f64());
            ping.encode(
                encoder
                    .encode_descriptor(
                        "store_check_seconds",
                        "How long the store's last answered check took",
                        None,
                        ping.metric_type(),
                    )?
                    .encode_family(&labels)?,
            )?;
        }
        let errors = ConstCounter::new(h.errors);
        errors.encode(
            encoder
                .encode_descriptor(
                    "store_errors",
                    "Database errors since the appliance started",
                    None,
                    errors.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;
        Ok(())
    }
}

/// The history's size and what it wrote, read at each scrape.
#[derive(Debug)]
struct HistoryCollector(Arc<RwLock<Option<crate::history::History>>>);

impl Collector for HistoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(h) = self.0.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let st = h.stats();
        let series = ConstGauge::new(i64::try_from(st.series).unwrap_or(i64::MAX));
        series.encode(encoder.encode_descriptor(
            "history_series",
            "Time series the appliance keeps",
            None,
            series.metric_type(),
        )?)?;
        let written = ConstCounter::new(st.bytes_written);
        written.encode(encoder.encode_descriptor(
            "history_written_bytes",
            "Bytes of history chunks written",
            None,
            written.metric_type(),
        )?)?;
        let dropped = ConstCounter::new(st.over_cap);
        dropped.encode(encoder.encode_descriptor(
            "history_dropped_samples",
            "Samples not kept because the history holds its maximum number of series",
            None,
            dropped.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let published = self.0.read().unwrap_or_else(|e| e.into_inner()).latest();
        if published.summary().mode.is_empty() {
            return Ok(());
        }
        // Built for this scrape only, then dropped.
        let status = published.status();
        let up = ConstGauge::new(i64::from(status.last_error.is_none() && status.last_sync.is_some()));
        up.encode(encoder.encode_descriptor(
            "dataplane_up",
            "1 when the data plane's last pass succeeded",
            None,
            up.metric_type(),
        )?)?;
        let passes = ConstCounter::new(status.passes);
        passes.encode(encoder.encode_descriptor(
            "dataplane_passes",
            "Reconcile passes",
            None,
            passes.metric_type(),
        )?)?;
        let busy = ConstCounter::new(status.pass_micros as f64 / 1e6);
        busy.encode(encoder.encode_descriptor(
            "dataplane_pass_seconds",
            "Time spent in reconcile passes",
            None,
            busy.metric_type(),
        )?)?;
        let builds = ConstCounter::new(status.full_builds);
        builds.encode(encoder.encode_descriptor(
            "dataplane_full_builds",
            "Reconcile passes that rebuilt the whole desired state from a store snapshot",
            None,
            builds.metric_type(),
        )?)?;
        let ops = ConstCounter::new(status.operations);
        ops.encode(encoder.encode_descriptor(
            "dataplane_operations",
            "Kernel operations applied",
            None,
            ops.metric_type(),
        )?)?;
        let vs_labels: Vec<VsLabels> = status
            .virtual_services
            .iter()
            .map(|v| VsLabels {
                vip: v.ip.to_string(),
                port: v.port,
                protocol: v.protocol.to_string(),
            })
            .collect();
        for (name, help, get) in COUNTERS {
            let name = format!("ipvs_service_{name}");
            let help = format!("{help}, per virtual service (VIP, port, protocol)");
            let mut family =
                encoder.encode_descriptor(&name, &help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (v, labels) in status.virtual_services.iter().zip(&vs_labels) {
                ConstCounter::new(get(&v.counters)).encode(family.encode_family(labels)?)?;
            }
        }
        let rs: Vec<(RsLabels, &edgelb_api::RealServerStatus)> = status
            .virtual_services
            .iter()
            .zip(&vs_labels)
            .flat_map(|(v, l)| {
                v.real_servers.iter().map(move |r| {
                    (
                        RsLabels {
                            vip: l.vip.clone(),
                            port: l.port,
                            protocol: l.protocol.clone(),
                            real_server: std::net::SocketAddr::new(r.ip, r.port).to_string(),
                        },
                        r,
                    )
                })
            })
            .collect();
        for (name, help, get) in COUNTERS {
            let name = format!("ipvs_real_server_{name}");
            let help = format!("{help}, per real server");
            let mut family =
                encoder.encode_descriptor(&name, &help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (labels, r) in &rs {
                ConstCounter::new(get(&r.counters)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "ipvs_real_server_weight",
            "Weight of a real server (0: drained)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, r) in &rs {
            ConstGauge::new(i64::from(r.weight)).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "ipvs_real_server_active_connections",
            "Established connections to a real server now",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, r) in &rs {
            ConstGauge::new(i64::from(r.active_connections)).encode(family.encode_family(labels)?)?;
        }
        let probed: Vec<(BackendLabels, &edgelb_api::BackendHealth)> = rs
            .iter()
            .filter_map(|(l, r)| {
                r.health.as_ref().map(|h| {
                    (
                        BackendLabels {
                            vip: l.vip.clone(),
                            port: l.port,
                            protocol: l.protocol.clone(),
                            backend: l.real_server.clone(),
                        },
                        h,
                    )
                })
            })
            .collect();
        if !probed.is_empty() {
            let mut family = encoder.encode_descriptor(
                "backend_up",
                "1 when a real server's health check passes (or has not decided yet), 0 when it is down",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (labels, h) in &probed {
                let up = i64::from(h.state != edgelb_api::HealthState::Down);
                ConstGauge::new(up).encode(family.encode_family(labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "backend_probe_latency_seconds",
                "How long the last health probe of a real server took",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (labels, h) in &probed {
                if let Some(us) = h.last_latency_micros {
                    ConstGauge::new(us as f64 / 1e6).encode(family.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Middleware counting every request by its route template (not its raw path, which would
/// make one series per Service).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    m.latency
        .get_or_create(&LatencyLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: OpenMetrics when the client asks for it (as Prometheus does), and the classic
/// Prometheus text format (0.0.4) otherwise, for curl, `promtool check metrics` and older
/// scrapers.
pub async fn scrape(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let m = &state.metrics;
    match state.store.list_pools().await {
        Ok(pools) => {
            m.pools.clear();
            m.pool_families.clear();
            m.capacity.clear();
            for p in pools {
                m.capacity.set(&p);
                let u = &p.usage;
                let pool = p.spec.name.clone();
                for f in &u.families {
                    let l = PoolFamilyLabels {
                        pool: pool.clone(),
                        family: f.family.to_string(),
                    };
                    m.pool_families.set(&l, &f.total, f.allocated, f.held);
                }
                m.pools.set(&PoolLabels { pool }, &u.total, u.allocated, u.held);
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading pool usage for metrics failed"),
    }
    match state.store.count_services().await {
        Ok(n) => {
            m.services.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "counting services for metrics failed"),
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::error!(error = %e, "encoding metrics failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match openmetrics {
        true => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        false => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            classic_text(&out),
        )
            .into_response(),
    }
}

/// OpenMetrics text as the classic Prometheus text format. The samples are the same; what
/// differs is the metadata: a counter's `# HELP` and `# TYPE` name the sample (`x_total`) where
/// OpenMetrics names the family (`x`), and there is no `# UNIT` and no `# EOF`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta.and_then(|(p, rest)| rest.split_once(' ').map(|(name, tail)| (p, name, tail))) {
            Some((p, name, tail)) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {tail}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
