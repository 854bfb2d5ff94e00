//! `edgelb serve`: opens the store, makes the first-start credentials and certificate, runs the
//! background work and serves HTTPS until told to stop.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::dataplane::{Backend, DataplaneError, Forwarder, TrafficReader};
use crate::history::sampler::{Sampler, unix_now};
use crate::history::{History, Options as HistoryOptions};
use crate::http::{self, AppState, ServerInfo};
use crate::reconcile::{Reconciler, RunnerOptions};
use crate::store::{Bootstrap, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("opening the store")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("--dataplane ipvs")]
    Dataplane(#[from] DataplaneError),
}

/// How often expired holds are swept from the database.
const HOLD_SWEEP: Duration = Duration::from_secs(60);

pub fn create_data_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServeError::DataDir {
            path: dir.display().to_string(),
            source,
        })
}

fn print_bootstrap(b: &Bootstrap) {
    // Printed, not logged: log pipelines keep copies, and this is shown exactly once. Written,
    // not `eprintln!`ed: a closed standard error must not stop the appliance.
    let _ = writeln!(
        std::io::stderr(),
        "\n================================================================\n\
         edgelb first start: these credentials are shown ONCE. Store them now.\n\
         \n  console user:  {}\n  password:      {}\n  API token:     {}\n\
         \nexport EDGELB_TOKEN={}\n\
         ================================================================\n",
        b.user,
        b.password,
        b.token,
        b.token
    );
}

/// An appliance that has opened its store and bound its port, ready to serve.
pub struct Server {
    config: Config,
    store: Store,
    tls: axum_server::tls_rustls::RustlsConfig,
    listener: std::net::TcpListener,
    local: std::net::SocketAddr,
    bootstrap: Option<Bootstrap>,
    /// Connected and proven usable at bind time, so a misconfigured host fails before serving.
    dataplane: Option<Backend>,
    /// Why the unconfigured default fell back from `ipvs` to `none`.
    dataplane_fallback: Option<String>,
    history: History,
    traffic: Option<TrafficReader>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local", &self.local).finish()
    }
}

impl Server {
    /// Creates the data directory, opens (and migrates) the store, connects the data plane, makes
    /// the certificate if needed, binds the listening socket, and then, on the first start, the
    /// credentials.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        create_data_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir).await?;
        // An explicit `--dataplane ipvs` that cannot work stops the start (production must
        // never run without forwarding unnoticed); the unconfigured default falls back to the
        // control plane only, loudly, so `edgelb serve` starts anywhere.
        let (dataplane, dataplane_fallback) = match crate::dataplane::connect(&config.dataplane).await {
            Ok(d) => (d, None),
            Err(e) if config.dataplane.defaulted => (None, Some(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        // What the backend offers is what pools and Services may name from now on.
        if let Some(d) = &dataplane {
            store.set_capabilities(d.capabilities());
        }
        let history = History::open(&config.data_dir.join("history"), unix_now(), HistoryOptions::default()).map_err(
            |source| ServeError::DataDir {
                path: config.data_dir.join("history").display().to_string(),
                source,
            },
        )?;
        let traffic = match &dataplane {
            Some(_) => match TrafficReader::connect().await {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(error = %e, "no traffic history: reading IPVS counters failed");
                    None
                }
            },
            None => None,
        };
        let tls = crate::tls::server_config(&config.tls, &config.data_dir, config.listen)
            .await
            .map_err(ServeError::Tls)?;
        let listener = std::net::TcpListener::bind(config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        // Last, once nothing else can stop this start: credentials made by a start that then
        // failed (a busy port, no IPVS) would never be shown.
        let bootstrap = store.bootstrap().await?;
        Ok(Server {
            config,
            store,
            tls,
            listener,
            local,
            bootstrap,
            dataplane,
            dataplane_fallback,
            history,
            traffic,
        })
    }

    /// The address actually bound (the port of `:0` resolved).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local
    }

    /// The first-start credentials, when this start made them.
    pub fn bootstrap(&self) -> Option<&Bootstrap> {
        self.bootstrap.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let dp = &self.config.dataplane;
        let mut state = AppState::new(
            self.store.clone(),
            ServerInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                dataplane: self.dataplane.as_ref().map_or("none", Forwarder::name).to_owned(),
            },
        );
        state = state.with_history(self.history.clone());
        let mut feed = None;
        let reconciler = match self.dataplane {
            Some(backend) => {
                let name = backend.name();
                let r = Reconciler::new(
                    self.store.clone(),
                    backend,
                    RunnerOptions {
                        resync: dp.resync,
                        ..RunnerOptions::default()
                    },
                )
                .with_health(self.config.health);
                state = state.with_dataplane(r.status_feed());
                feed = Some(r.status_feed());
                info!(
                    dataplane = name,
                    resync_seconds = dp.resync.as_secs(),
                    defaulted = dp.defaulted,
                    nat = dp.nat.as_str(),
                    health_interval_ms = self.config.health.interval.as_millis() as u64,
                    health_jitter_percent = self.config.health.jitter_percent,
                    health_concurrency = self.config.health.concurrency,
                    drain_timeout_seconds = self.config.health.drain_timeout.as_secs(),
                    "forwarding with IPVS"
                );
                Some(tokio::spawn(r.run()))
            }
            None if dp.defaulted => {
                let why = self.dataplane_fallback.clone().unwrap_or_else(|| {
                    "the process lacks CAP_NET_ADMIN (run as root or with that capability for ipvs)".to_owned()
                });
                warn!(
                    dataplane = "none",
                    reason = %why,
                    "CONTROL PLANE ONLY, NO TRAFFIC IS FORWARDED: --dataplane was not given and ipvs cannot \
                     run here; pass --dataplane ipvs to make this an error, or --dataplane none to say so"
                );
                None
            }
            None => {
                warn!(dataplane = "none", "control plane only, no traffic is forwarded");
                None
            }
        };
        let sweeper = tokio::spawn(sweep_holds(self.store.clone()));
        let sampler = tokio::spawn(Sampler::new(self.history.clone(), self.store.clone(), feed, self.traffic).run());
        info!(
            address = %self.local,
            data_dir = %self.config.data_dir.display(),
            max_connections = self.config.connections.max_connections,
            client_timeout_seconds = self.config.connections.client_timeout.as_secs(),
            "edgelb started"
        );
        let served = http::serve(
            self.listener,
            self.tls,
            http::app(state),
            shutdown,
            self.config.shutdown_grace,
            self.config.connections,
        )
        .await;
        sweeper.abort();
        sampler.abort();
        // The minute being filled, so that a restart loses none of it.
        if let Err(e) = self.history.flush() {
            warn!(error = %e, "writing the history at shutdown failed");
        }
        // Forwarding stays as it is: a restart or upgrade must not drop traffic.
        if let Some(r) = reconciler {
            r.abort();
        }
        info!("edgelb stopped");
        served.map_err(ServeError::Serve)
    }
}

/// `edgelb serve`: binds, shows the first-start credentials once, and serves until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    if let Some(b) = server.bootstrap() {
        print_bootstrap(b);
    }
    // A stable line for people and scripts (and tests that listen on port 0).
    let _ = writeln!(
        std::io::stderr(),
        "edgelb: listening on https://{}",
        server.local_addr()
    );
    server.serve(shutdown).await
}

async fn sweep_holds(store: Store) {
    let mut tick = tokio::time::interval(HOLD_SWEEP);
    loop {
        tick.tick().await;
        match store.expire_holds().await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "released addresses whose hold ended"),
            Err(e) => warn!(error = %e, "sweeping expired holds failed"),
        }
    }
}
