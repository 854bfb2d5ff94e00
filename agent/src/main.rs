//! `edgelb-agent`: parses flags, builds the clients and runs the agent until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use edgelb_agent::metrics::{self, Health, Metrics};
use edgelb_agent::{Config, run};
use tokio::sync::watch;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // ring is the only rustls provider in this binary; install it before any TLS happens.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EDGELB_LOG").unwrap_or_else(|_| "info".into()))
        // A log line that cannot be written is dropped; tracing's report of it would panic.
        .log_internal_errors(false)
        .init();
    let config = Config::parse();
    let (appliance, settings) = config.build()?;
    let client = kube::Client::try_default().await.context("kubernetes client")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());

    let listener = metrics::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", config.metrics_listen))?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), health.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    run(client, appliance, settings, metrics, health, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
