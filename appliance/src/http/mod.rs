//! The appliance's HTTP face: the REST API under `/api/v1`, its OpenAPI document and Swagger UI,
//! health and metrics endpoints. The only module that knows axum. Handlers validate, make one
//! store call and answer; they know nothing of the reconciler or the kernel.

mod api;
mod auth;
pub mod console;
pub mod error;
mod metrics;
mod openapi;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;
use tracing::info;

pub use auth::Caller;
pub use error::ApiError;
pub use metrics::Metrics;

use crate::reconcile::Published;
use crate::store::Store;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the server says about itself.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    /// `ipvs` or `none`.
    pub dataplane: String,
}

/// Everything a handler may use.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub info: Arc<ServerInfo>,
    /// What the data plane last published (read-only: handlers never drive it).
    pub dataplane: tokio::sync::watch::Receiver<Arc<Published>>,
}

impl AppState {
    pub fn new(store: Store, info: ServerInfo) -> AppState {
        let (_, dataplane) = tokio::sync::watch::channel(Arc::new(Published::new(&info.dataplane)));
        AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            info: Arc::new(info),
            dataplane,
        }
    }

    /// Reads the data plane's status from the reconciler's publication.
    pub fn with_dataplane(mut self, status: tokio::sync::watch::Receiver<Arc<Published>>) -> AppState {
        self.metrics.set_dataplane(status.clone());
        self.dataplane = status;
        self
    }
}

/// The whole router. Tests drive it without a socket; `serve` puts it behind TLS.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(openapi::routes())
        .merge(status::routes())
        .merge(console::routes(state.clone()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        // After every route: it applies to the routes present when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(axum::middleware::from_fn(error::problem_for_bare_errors))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: see /api/v1/openapi.json for the API's paths")
}

/// A known path with a method it does not take; axum adds the `Allow` header.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method: the Allow header lists those it takes",
    )
}

/// Liveness: the process serves requests.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers and, with a data plane, it has been programmed once. Says
/// which data plane runs, so a control-plane-only appliance is never mistaken for one that
/// forwards.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let dp = state.dataplane.borrow().summary.clone();
    match state.store.ping().await {
        Ok(()) if state.info.dataplane == "none" => (
            StatusCode::OK,
            "ready (dataplane: none: control plane only, no traffic is forwarded)\n".to_owned(),
        ),
        Ok(()) if dp.last_sync.is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready (dataplane: {}): not programmed yet{}\n",
                state.info.dataplane,
                dp.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
        Ok(()) => (
            StatusCode::OK,
            format!(
                "ready (dataplane: {}){}\n",
                state.info.dataplane,
                dp.last_error
                    .as_ref()
                    .map(|e| format!(", degraded: last pass failed: {e}"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer\n".to_owned(),
            )
        }
    }
}

/// Serves `router` over HTTPS on a bound listener (bound by the caller, so it learns the port
/// of `127.0.0.1:0`) until `shutdown` resolves, then lets in-flight requests finish (up to
/// `grace`).
pub async fn serve(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!(
            grace_seconds = grace.as_secs(),
            "shutting down: finishing in-flight requests"
        );
        h.graceful_shutdown(Some(grace));
    });
    axum_server::from_tcp_rustls(listener, tls)?
        // TCP_NODELAY: without it a small answer can wait for the client's delayed ACK (40 ms
        // on Linux), which was most of the allocation latency's tail (docs/benchmarks.md).
        .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
        .handle(handle)
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
}
