//! The edgelb in-cluster agent: watches Services of `type: LoadBalancer` of its class, Nodes
//! and EndpointSlices, asks the appliance for addresses, and writes them into the Services'
//! status. Only the replica holding the Lease writes anything.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`run`] with their own client.

pub mod appliance;
pub mod controller;
pub mod fixtures;
pub mod metrics;
pub mod nodes;
pub mod spec;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::appliance::{ApplianceClient, Trust};
use crate::metrics::{Health, Metrics};
use crate::nodes::AddressPreference;

/// Everything that can go wrong; the variant names the `error` label of
/// `edgelb_agent_reconcile_failures_total`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The request did not get an answer; the HTTP client's error (and its causes: DNS,
    /// connect, TLS, timeout) is the source.
    #[error("appliance unreachable: {0}")]
    ApplianceUnreachable(#[source] reqwest::Error),
    #[error("appliance refused ({status}): {detail}")]
    ApplianceRefused {
        status: u16,
        /// The problem `type` (`about:blank`, or one the agent acts on, such as
        /// [`edgelb_api::PROBLEM_POOL_EXHAUSTED`]).
        kind: String,
        detail: String,
    },
    #[error("appliance answered something unexpected: {0}")]
    ApplianceProtocol(String),
    #[error("invalid Service: {0}")]
    InvalidService(String),
    #[error("the start-up sync has not finished")]
    NotSynced,
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The metric label of this error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::ApplianceUnreachable(_) => "appliance_unreachable",
            Error::ApplianceRefused { .. } => "appliance_refused",
            Error::ApplianceProtocol(_) => "appliance_protocol",
            Error::InvalidService(_) => "invalid_service",
            Error::NotSynced => "not_synced",
            Error::Lease(_) => "lease",
            Error::Config(_) => "config",
        }
    }
}

/// Command-line flags, each with an environment fallback.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "edgelb-agent", version, about = "edgelb in-cluster agent")]
pub struct Config {
    /// URL of the appliance's REST API.
    #[arg(long, env = "EDGELB_APPLIANCE_URL")]
    pub appliance_url: String,
    /// File holding the agent token (mounted from a Secret).
    #[arg(long, env = "EDGELB_TOKEN_FILE", default_value = "/var/run/secrets/edgelb/token")]
    pub token_file: PathBuf,
    /// PEM bundle that verifies the appliance's certificate; without it the system roots.
    #[arg(long, env = "EDGELB_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the appliance's certificate. For trials only.
    #[arg(long, env = "EDGELB_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
    /// Name of this cluster at the appliance (the token's cluster).
    #[arg(long, env = "EDGELB_CLUSTER")]
    pub cluster: String,
    /// `spec.loadBalancerClass` served.
    #[arg(long, env = "EDGELB_LOAD_BALANCER_CLASS", default_value = "edgelb.io/appliance")]
    pub load_balancer_class: String,
    /// Also serve LoadBalancer Services that name no class.
    #[arg(long, env = "EDGELB_DEFAULT_CLASS")]
    pub default_class: bool,
    /// Seconds between full re-checks of every Service and of the node list.
    #[arg(long, env = "EDGELB_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Seconds a Service the cluster no longer has must stay missing before its address is
    /// released.
    #[arg(long, env = "EDGELB_STALE_GRACE_SECONDS", default_value_t = 300)]
    pub stale_grace_seconds: u64,
    /// Node address type forwarded to first.
    #[arg(long, env = "EDGELB_NODE_ADDRESS", value_enum, default_value = "InternalIP")]
    pub node_address: AddressPreference,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "EDGELB_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "edgelb-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "EDGELB_LEASE_NAME", default_value = "edgelb-agent")]
    pub lease_name: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "EDGELB_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Services reconciled at once.
    #[arg(long, env = "EDGELB_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,
}

/// The controller's settings, derived from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub class: String,
    pub default_class: bool,
    pub resync: Duration,
    pub stale_grace: Duration,
    pub address_preference: AddressPreference,
    pub identity: String,
    pub concurrency: u16,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_seconds: u64,
}

impl Settings {
    /// Defaults for the given identity (as the flags default them).
    pub fn new(identity: &str) -> Settings {
        Settings {
            class: "edgelb.io/appliance".to_owned(),
            default_class: false,
            resync: Duration::from_secs(300),
            stale_grace: Duration::from_secs(300),
            address_preference: AddressPreference::InternalIp,
            identity: identity.to_owned(),
            concurrency: 32,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            lease_namespace: "edgelb-system".to_owned(),
            lease_name: "edgelb-agent".to_owned(),
            lease_seconds: 15,
        }
    }
}

impl Config {
    /// The appliance client and controller settings this configuration describes.
    pub fn build(&self) -> Result<(ApplianceClient, Settings), Error> {
        let trust = if self.insecure_skip_verify {
            warn!("--insecure-skip-verify: the appliance's certificate is NOT verified");
            Trust::Insecure
        } else if let Some(ca) = &self.ca_file {
            Trust::CaBundle(std::fs::read(ca).map_err(|e| Error::Config(format!("CA file {}: {e}", ca.display())))?)
        } else {
            Trust::System
        };
        let token = ApplianceClient::read_token(&self.token_file)?;
        let appliance = ApplianceClient::new(
            &self.appliance_url,
            &self.cluster,
            &token,
            trust,
            Duration::from_secs(10),
        )?;
        let identity = self
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("edgelb-agent-{}", std::process::id()));
        let mut s = Settings::new(&identity);
        s.class = self.load_balancer_class.clone();
        s.default_class = self.default_class;
        s.resync = Duration::from_secs(self.resync_seconds.max(1));
        s.stale_grace = Duration::from_secs(self.stale_grace_seconds);
        s.address_preference = self.node_address;
        s.concurrency = self.concurrency.max(1);
        s.lease_namespace = self.lease_namespace.clone();
        s.lease_name = self.lease_name.clone();
        s.lease_seconds = self.lease_seconds.max(2);
        Ok((appliance, s))
    }
}

/// Runs the agent until `shutdown` resolves: elects a leader with the Lease, and while this
/// replica leads, runs the controller. On shutdown in-flight work finishes and the Lease is
/// released so the other replica takes over at once.
pub async fn run(
    client: Client,
    appliance: ApplianceClient,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let grace = (settings.lease_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_seconds)
        .with_grace(grace)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    'outer: loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ok = async { leader.wait_for(|l| *l).await.is_ok() } => if !ok { break },
        }
        info!(identity = %settings.identity, "became leader");
        metrics.leader.set(1);
        health.ready.store(false, Ordering::Relaxed);
        let (stop_tx, stop_rx) = watch::channel(false);
        let work = controller::lead(
            client.clone(),
            appliance.clone(),
            metrics.clone(),
            health.clone(),
            settings.clone(),
            stop_rx,
        );
        tokio::pin!(work);
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down: finishing in-flight work");
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut work).await;
                metrics.leader.set(0);
                break 'outer;
            }
            ok = async { leader.wait_for(|l| !*l).await.is_ok() } => {
                // Dropping the work stops every write at once.
                warn!(identity = %settings.identity, "lost leadership");
                metrics.leader.set(0);
                health.ready.store(true, Ordering::Relaxed);
                if !ok { break 'outer; }
            }
            _ = &mut work => {
                metrics.leader.set(0);
                break 'outer;
            }
        }
    }
    // Closing the channel makes the lease task release the Lease and end.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => info!("lease released"),
        Ok(Err(e)) => warn!(error = %e, "cannot release the lease"),
        Err(e) => warn!(error = %e, "lease task failed"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_default_to_the_documented_values() {
        let c = Config::try_parse_from([
            "edgelb-agent",
            "--appliance-url",
            "https://lb:8443",
            "--cluster",
            "prod",
        ])
        .expect("parses");
        assert_eq!(c.load_balancer_class, "edgelb.io/appliance");
        assert!(!c.default_class && !c.insecure_skip_verify);
        assert_eq!(c.node_address, AddressPreference::InternalIp);
        assert_eq!(c.resync_seconds, 300);
        assert_eq!(c.metrics_listen.port(), 8080);
        let c = Config::try_parse_from([
            "edgelb-agent",
            "--appliance-url",
            "https://lb:8443",
            "--cluster",
            "prod",
            "--node-address",
            "ExternalIP",
            "--default-class",
        ])
        .expect("parses");
        assert_eq!(c.node_address, AddressPreference::ExternalIp);
        assert!(c.default_class);
    }

    #[test]
    fn error_variants_name_their_metric_labels() {
        assert_eq!(
            Error::ApplianceUnreachable({
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new().get("not a url").build().expect_err("no URL")
            })
            .metric_label(),
            "appliance_unreachable"
        );
        let refused = Error::ApplianceRefused {
            status: 409,
            kind: "about:blank".into(),
            detail: "pool exhausted".into(),
        };
        assert_eq!(refused.metric_label(), "appliance_refused");
        assert!(refused.to_string().contains("pool exhausted"));
    }
}
