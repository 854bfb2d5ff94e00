//! `GET /api/v1/clusters/{cluster}/services/{namespace}/{name}/status`: a Service's forwarding
//! as the kernel holds it (virtual services, real servers with weights and counters), read from
//! what the reconciler last published. It never asks the kernel itself.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use edgelb_api::{ServiceStatus, TrafficCounters, VirtualServiceStatus};
use serde::Deserialize;

use super::api::ApiPath;
use super::{ApiError, AppState, Caller};
use crate::forwarding::VsKey;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/clusters/{cluster}/services/{namespace}/{name}/status",
        get(service_status),
    )
}

#[derive(Deserialize)]
pub struct StatusPath {
    cluster: String,
    namespace: String,
    name: String,
}

/// The Service's virtual services (one per address and port) with their real servers, weights
/// and traffic counters. A virtual service not yet in the kernel shows `programmed: false`.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/services/{namespace}/{name}/status", tag = "services",
    params(("cluster" = String, Path), ("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ServiceStatus), (status = 404, body = edgelb_api::Problem)))]
pub async fn service_status(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<StatusPath>,
) -> Result<Json<ServiceStatus>, ApiError> {
    caller.can_cluster(&p.cluster, false, "read services")?;
    let svc = s.store.get_service(&p.cluster, &p.namespace, &p.name).await?;
    let dp = s.dataplane.latest();
    let summary = dp.summary();
    let forwarding = s.info.dataplane != "none";
    let mut virtual_services = Vec::new();
    if forwarding && let Some(spec) = &svc.spec {
        for ip in &svc.ips {
            for port in &spec.ports {
                let found = dp.virtual_service(VsKey::new(*ip, port.port, port.protocol));
                virtual_services.push(match found {
                    Some(v) => v,
                    None => VirtualServiceStatus {
                        ip: *ip,
                        port: port.port,
                        protocol: port.protocol,
                        programmed: false,
                        scheduler: None,
                        persistence_timeout_seconds: None,
                        counters: TrafficCounters::default(),
                        real_servers: Vec::new(),
                    },
                });
            }
        }
    }
    let notes = match &svc.spec {
        Some(spec) => notes_of(&s, &svc.cluster, svc.pool.as_deref(), spec).await?,
        None => Vec::new(),
    };
    Ok(Json(ServiceStatus {
        cluster: svc.cluster,
        namespace: svc.namespace,
        name: svc.name,
        dataplane: s.info.dataplane.clone(),
        last_sync: summary.last_sync,
        last_error: summary.last_error.clone(),
        virtual_services,
        notes,
    }))
}

/// Why admitted nodes get none of a Service's traffic beyond health: under `forwarding:
/// tunnel`, the nodes that say they cannot take tunnel traffic.
async fn notes_of(
    s: &AppState,
    cluster: &str,
    pool: Option<&str>,
    spec: &edgelb_api::ServiceSpec,
) -> Result<Vec<String>, ApiError> {
    let pool_forwarding = match pool {
        Some(p) => match s.store.get_pool(p).await {
            Ok(p) => p.spec.forwarding,
            // Deleted since the Service was read: its addresses are gone with it.
            Err(crate::store::StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let method = crate::forwarding::forwarding_of(spec, pool_forwarding, s.store.capabilities().manages.nat);
    if method != edgelb_api::Forwarding::Tunnel {
        return Ok(Vec::new());
    }
    let nodes = s.store.get_nodes(cluster).await?.nodes;
    Ok(nodes
        .iter()
        .filter(|n| n.no_tunnel && crate::forwarding::admits(spec, n))
        .map(|n| {
            format!(
                "node {} gets no traffic: it cannot take tunnel traffic (annotated edgelb.io/tunnel: \"false\"); \
                 use forwarding direct or fullnat for this Service, or set the node's tunnel up",
                n.name
            )
        })
        .collect())
}
