//! `edgelb serve`: opens the store, makes the first-start credentials and certificate, runs the
//! background work and serves HTTPS until told to stop.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::http::{self, AppState, ServerInfo};
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
    // Printed, not logged: log pipelines keep copies, and this is shown exactly once.
    eprintln!(
        "\n================================================================\n\
         edgelb first start: these credentials are shown ONCE. Store them now.\n\
         \n  console user:  {}\n  password:      {}\n  API token:     {}\n\
         \nexport EDGELB_TOKEN={}\n\
         ================================================================\n",
        b.user, b.password, b.token, b.token
    );
}

/// Runs the appliance until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    create_data_dir(&config.data_dir)?;
    let store = Store::open(&config.data_dir).await?;
    if let Some(b) = store.bootstrap().await? {
        print_bootstrap(&b);
    }
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

    warn!("dataplane: none — control plane only, no traffic is forwarded");
    let state = AppState::new(
        store.clone(),
        ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            dataplane: "none".to_owned(),
        },
    );
    let sweeper = tokio::spawn(sweep_holds(store.clone()));
    // A stable line for people and scripts (and tests that listen on port 0).
    eprintln!("edgelb: listening on https://{local}");
    info!(address = %local, data_dir = %config.data_dir.display(), "edgelb started");
    let served = http::serve(listener, tls, http::app(state), shutdown, config.shutdown_grace).await;
    sweeper.abort();
    info!("edgelb stopped");
    served.map_err(ServeError::Serve)
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
