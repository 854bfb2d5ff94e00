//! The appliance's REST API as the agent uses it: put and release Services, replace the node
//! list, sync at start-up. Owns the HTTPS client and its trust settings; it never touches the
//! cluster. Refusals carry the appliance's problem `detail`, which the controller shows in Events.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use edgelb_api::{NodeList, Problem, Service, ServiceSpec, SyncRequest, SyncResponse};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// How the appliance's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system roots.
    System,
    /// Only the certificates in this PEM bundle.
    CaBundle(Vec<u8>),
    /// Nothing is checked (`--insecure-skip-verify`).
    Insecure,
}

/// A client of one appliance, for one cluster.
#[derive(Debug, Clone)]
pub struct ApplianceClient {
    http: reqwest::Client,
    base: String,
    cluster: String,
    token: String,
}

/// A reply that is not a success.
fn refused(status: StatusCode, body: &[u8]) -> Error {
    let (kind, detail) = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => (p.kind, p.detail),
        Err(_) => (
            "about:blank".to_owned(),
            String::from_utf8_lossy(body).chars().take(500).collect(),
        ),
    };
    Error::ApplianceRefused {
        status: status.as_u16(),
        kind,
        detail,
    }
}

impl ApplianceClient {
    /// Builds the client. `base` is the appliance's URL (`https://lb.example:8443`).
    pub fn new(base: &str, cluster: &str, token: &str, trust: Trust, timeout: Duration) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("edgelb-agent/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            // Below the appliance's client timeout (30 s by default), so the agent drops an idle
            // connection before the appliance closes it under a request about to be sent.
            .pool_idle_timeout(Duration::from_secs(20));
        builder = match trust {
            Trust::System => builder,
            Trust::CaBundle(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| Error::Config(format!("CA bundle: {e}")))?;
                builder.tls_certs_only(certs)
            }
            Trust::Insecure => builder.tls_danger_accept_invalid_certs(true),
        };
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("HTTPS client: {e}")))?;
        Ok(ApplianceClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            cluster: cluster.to_owned(),
            token: token.trim().to_owned(),
        })
    }

    /// Reads the token from a file (as mounted from a Secret).
    pub fn read_token(path: &Path) -> Result<String, Error> {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| Error::Config(format!("token file {}: {e}", path.display())))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(Error::ApplianceUnreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(Error::ApplianceUnreachable)?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::ApplianceProtocol(e.to_string()))
    }

    fn service_path(&self, namespace: &str, name: &str) -> String {
        format!("/api/v1/clusters/{}/services/{namespace}/{name}", self.cluster)
    }

    /// Whether the appliance answers at all (any authenticated reply counts).
    pub async fn probe(&self) -> Result<(), Error> {
        self.call::<(), serde_json::Value>(Method::GET, "/api/v1/info", None)
            .await
            .map(|_| ())
    }

    /// Stores the Service's spec and returns its addresses (idempotent).
    pub async fn put_service(&self, namespace: &str, name: &str, spec: &ServiceSpec) -> Result<Service, Error> {
        self.call(Method::PUT, &self.service_path(namespace, name), Some(spec))
            .await
    }

    /// Releases the Service's addresses; `Ok(None)` when the appliance did not know it.
    pub async fn release_service(&self, namespace: &str, name: &str) -> Result<Option<Vec<IpAddr>>, Error> {
        match self
            .call::<(), Service>(Method::DELETE, &self.service_path(namespace, name), None)
            .await
        {
            Ok(s) => Ok(Some(s.ips)),
            Err(Error::ApplianceRefused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the cluster's node list.
    pub async fn put_nodes(&self, nodes: &NodeList) -> Result<NodeList, Error> {
        let path = format!("/api/v1/clusters/{}/nodes", self.cluster);
        self.call(Method::PUT, &path, Some(nodes)).await
    }

    /// Reserves every address in the list and learns which Services are stale.
    pub async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, Error> {
        let path = format!("/api/v1/clusters/{}/sync", self.cluster);
        self.call(Method::POST, &path, Some(req)).await
    }
}
