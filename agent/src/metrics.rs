//! Prometheus metrics of the agent and the small HTTP server for `/healthz`, `/readyz` and
//! `/metrics`. It only reads shared state; it never talks to the cluster or the appliance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    reason: String,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    events: Family<EventLabels, Counter>,
    duration: Histogram,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Node lists sent to the appliance.
    pub node_pushes: Counter,
    /// Stale Services released after the grace period.
    pub stale_released: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edgelb_agent");
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            events: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            leader: Gauge::default(),
            node_pushes: Counter::default(),
            stale_released: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Service reconciliations", m.reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciliations by error",
            m.failures.clone(),
        );
        registry.register("events", "Kubernetes Events published by reason", m.events.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconciliation",
            m.duration.clone(),
        );
        registry.register("leader", "1 while this replica is the leader", m.leader.clone());
        registry.register(
            "node_list_pushes",
            "Node lists sent to the appliance",
            m.node_pushes.clone(),
        );
        registry.register(
            "stale_released",
            "Services the cluster no longer has, released after the grace period",
            m.stale_released.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one reconciliation and its time.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts a failure by its error's label.
    pub fn failed(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    /// Counts a published Event.
    pub fn event(&self, reason: &str) {
        self.events
            .get_or_create(&EventLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the health endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the agent runs: as a standby, or as the leader after its start-up sync.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The router of `/healthz`, `/readyz` and `/metrics`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<ServerState>| async move {
                if s.health.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<ServerState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(ServerState { metrics, health })
}

/// Serves the health router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the health server's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
