//! The appliance's HTTP face: the REST API under `/api/v1`, its OpenAPI document and Swagger UI,
//! health and metrics endpoints. The only module that knows axum. Handlers validate, make one
//! store call and answer; they know nothing of the reconciler or the kernel.

mod api;
mod auth;
pub mod console;
pub mod error;
mod history;
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
use edgelb_api::DataplaneStatus;
use tower_http::timeout::TimeoutLayer;
use tracing::info;

pub use auth::Caller;
pub use error::ApiError;
pub use metrics::Metrics;

use crate::forwarding::StatusFeed;
use crate::history::History;
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
    pub dataplane: StatusFeed,
    /// The appliance's time series, when it keeps them.
    pub history: Option<History>,
}

impl AppState {
    pub fn new(store: Store, info: ServerInfo) -> AppState {
        let dataplane = StatusFeed::fixed(Arc::new(DataplaneStatus {
            mode: info.dataplane.clone(),
            ..DataplaneStatus::default()
        }));
        let metrics = Arc::new(Metrics::new());
        metrics.set_store(store.clone());
        AppState {
            store,
            metrics,
            info: Arc::new(info),
            dataplane,
            history: None,
        }
    }

    /// Serves graphs and the history API from `history`.
    pub fn with_history(mut self, history: History) -> AppState {
        self.metrics.set_history(history.clone());
        self.history = Some(history);
        self
    }

    /// Reads the data plane's status from the reconciler's publication.
    pub fn with_dataplane(mut self, status: StatusFeed) -> AppState {
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
        .merge(history::routes())
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
    let dp = state.dataplane.latest().summary().clone();
    let ping = state.store.ping().await;
    let h = state.store.health();
    let store = format!("store: {} {}", h.kind, h.state());
    match ping {
        Ok(()) if state.info.dataplane == "none" => (
            StatusCode::OK,
            format!("ready (dataplane: none: control plane only, no traffic is forwarded), {store}\n"),
        ),
        Ok(()) if dp.last_sync.is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready (dataplane: {}): not programmed yet{}, {store}\n",
                state.info.dataplane,
                dp.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
        Ok(()) => (
            StatusCode::OK,
            format!(
                "ready (dataplane: {}){}, {store}\n",
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
                // No location: this answers anyone, without a token.
                format!("not ready: the store ({}) {}\n", h.kind, h.state()),
            )
        }
    }
}

/// An acceptor that closes a new connection at once while `max` are being served, so that the
/// process never reaches its file-descriptor limit (where accepting fails and nothing answers,
/// not even `/healthz`). Served connections end by themselves: the client timeout closes the
/// idle and the stalled.
#[derive(Clone)]
struct Capped<A> {
    inner: A,
    handle: axum_server::Handle<SocketAddr>,
    max: usize,
}

/// The error a connection over the cap is closed with; the accept error handler reports it.
#[derive(Debug)]
struct OverCap;

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection limit reached")
    }
}

impl std::error::Error for OverCap {}

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for Capped<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = futures::future::Either<A::Future, std::future::Ready<std::io::Result<(A::Stream, A::Service)>>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        // The count includes this connection.
        if self.handle.connection_count() > self.max {
            drop(stream);
            return futures::future::Either::Right(std::future::ready(Err(std::io::Error::other(OverCap))));
        }
        futures::future::Either::Left(self.inner.accept(stream, service))
    }
}

/// Reports failed accepts: connections refused over the cap and a failing listener (out of file
/// descriptors) as warnings, each kind at most once every ten seconds with how many it stands
/// for (one kind never hides the other); a client's own failure (a TLS handshake that timed out
/// or went wrong) at debug level.
fn accept_error_reporter(max: usize) -> impl Fn(Option<&SocketAddr>, &std::io::Error) + Send + Sync + 'static {
    let (refusals, failures) = (Throttle::default(), Throttle::default());
    move |peer, e| {
        let over_cap = e.get_ref().is_some_and(|inner| inner.is::<OverCap>());
        if over_cap {
            if let Some(n) = refusals.due() {
                tracing::warn!(
                    max_connections = max,
                    refused = n,
                    "connection limit reached: new connections are closed until served ones end \
                     (raise --max-connections and the file-descriptor limit if this is real load)"
                );
            }
        } else if peer.is_none() {
            // No peer: accept() itself failed, e.g. EMFILE.
            if let Some(n) = failures.due() {
                tracing::warn!(error = %e, failures = n, "accepting connections fails; retrying");
            }
        } else {
            tracing::debug!(peer = ?peer, error = %e, "a client connection failed before its first request");
        }
    }
}

/// Counts events and says when one is due for a log line: at most once every ten seconds, with
/// how many happened since the last line.
#[derive(Default)]
struct Throttle {
    last_warned: std::sync::atomic::AtomicU64,
    unreported: std::sync::atomic::AtomicU64,
}

impl Throttle {
    fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.unreported.fetch_add(1, Relaxed) + 1;
        let now = crate::store::now().max(0) as u64;
        let last = self.last_warned.load(Relaxed);
        if now.saturating_sub(last) < 10 || self.last_warned.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            return None;
        }
        self.unreported.fetch_sub(n, Relaxed);
        Some(n)
    }
}

/// Serves `router` over HTTPS on a bound listener (bound by the caller, so it learns the port
/// of `127.0.0.1:0`) until `shutdown` resolves, then lets in-flight requests finish (up to
/// `grace`). A connection gets `limits.client_timeout` for its TLS handshake, its first
/// request, each request's headers and each wait between requests on HTTP/1 (HTTP/2 is pinged
/// as often and closed when the ping goes unanswered); at most `limits.max_connections` are
/// served at once.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: crate::config::ConnectionLimits,
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
    let timeout = limits.client_timeout;
    let acceptor = Capped {
        // TCP_NODELAY: without it a small answer can wait for the client's delayed ACK (40 ms
        // on Linux), which was most of the allocation latency's tail (docs/benchmarks.md).
        inner: axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .handshake_timeout(timeout)
            .acceptor(axum_server::accept::NoDelayAcceptor::new()),
        handle: handle.clone(),
        max: limits.max_connections,
    };
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .first_request_timeout(timeout)
        .accept_error_handler(accept_error_reporter(limits.max_connections));
    // hyper arms the header timeout as soon as a connection waits for a request head, so it
    // also closes an HTTP/1 connection left idle between requests.
    server.http_builder().http1().header_read_timeout(timeout);
    server
        .http_builder()
        .http2()
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
    server
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
}
