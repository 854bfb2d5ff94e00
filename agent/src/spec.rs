//! What the appliance should know about a Service: pure functions from a Kubernetes Service
//! (and the nodes with ready endpoints) to the wire `ServiceSpec`, plus the few reads of a
//! Service's status the controller needs. No I/O here, so every rule is tested with tables.

use std::net::IpAddr;

use edgelb_api::{IpFamily, Protocol, ServicePort, ServiceSpec, SessionAffinity, TrafficPolicy};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};

/// Annotation naming the pool to allocate from.
pub const ANNOTATION_POOL: &str = "edgelb.io/pool";
/// Annotation with the addresses wanted, comma separated (one per family).
pub const ANNOTATION_IPS: &str = "edgelb.io/load-balancer-ips";
/// Annotation with a sharing key: Services with the same key share one address.
pub const ANNOTATION_SHARED: &str = "edgelb.io/allow-shared-ip";
/// Annotation with the IPVS scheduler.
pub const ANNOTATION_SCHEDULER: &str = "edgelb.io/scheduler";
/// Our finalizer: the Service is not deleted before the appliance released its addresses.
pub const FINALIZER: &str = "edgelb.io/release";
/// The `ipMode` written into the status: traffic arrives with the VIP as destination.
pub const IP_MODE_VIP: &str = "VIP";

/// A Service we cannot describe to the appliance; the message is shown in an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Whether the Service is `type: LoadBalancer` of our class (or of no class, with
/// `--default-class`).
pub fn is_ours(svc: &Service, class: &str, default_class: bool) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(c) => c == class,
        None => default_class,
    }
}

/// Whether the Service carries our finalizer.
pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// The addresses in `status.loadBalancer.ingress` (hostnames are not ours and are skipped).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    status_ingress(svc)
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The current `status.loadBalancer.ingress`.
pub fn status_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

/// The ingress entries the status should carry for these addresses.
pub fn ingress_for(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some(IP_MODE_VIP.to_owned()),
            ..Default::default()
        })
        .collect()
}

/// The sharing key of a Service, if it has one.
pub fn sharing_key(svc: &Service) -> Option<String> {
    annotation(svc, ANNOTATION_SHARED).map(str::to_owned)
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn family(s: &str) -> Result<IpFamily, SpecError> {
    match s {
        "IPv4" => Ok(IpFamily::Ipv4),
        "IPv6" => Ok(IpFamily::Ipv6),
        other => Err(SpecError(format!("unknown IP family {other:?}"))),
    }
}

fn protocol(s: Option<&str>) -> Result<Protocol, SpecError> {
    match s.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(SpecError(format!("unknown protocol {other:?}"))),
    }
}

fn port(v: i32, what: &str) -> Result<u16, SpecError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SpecError(format!("{what} {v} is not a port")))
}

/// The addresses asked for: `edgelb.io/load-balancer-ips` wins over `spec.loadBalancerIP`;
/// at most one per family.
fn requested_ips(svc: &Service) -> Result<Vec<IpAddr>, SpecError> {
    let raw = match annotation(svc, ANNOTATION_IPS) {
        Some(list) => list.to_owned(),
        None => svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.clone())
            .unwrap_or_default(),
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| SpecError(format!("{ANNOTATION_IPS}: {part:?} is not an IP address")))?;
        if ips.iter().any(|o| IpFamily::of(o) == IpFamily::of(&ip)) {
            return Err(SpecError(format!(
                "{ANNOTATION_IPS}: at most one {} address may be requested",
                IpFamily::of(&ip)
            )));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// Families per `ipFamilies` and `ipFamilyPolicy`: `SingleStack` takes the first; the dual-stack
/// policies take what the API server filled in. Without `ipFamilies` the requested addresses
/// decide, else IPv4.
fn ip_families(svc: &Service, requested: &[IpAddr]) -> Result<Vec<IpFamily>, SpecError> {
    let spec = svc.spec.as_ref();
    let mut families = Vec::new();
    for f in spec.and_then(|s| s.ip_families.as_deref()).unwrap_or_default() {
        let f = family(f)?;
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families = requested.iter().map(IpFamily::of).collect();
    }
    if families.is_empty() {
        families.push(IpFamily::Ipv4);
    }
    let policy = spec
        .and_then(|s| s.ip_family_policy.as_deref())
        .unwrap_or("SingleStack");
    if policy == "SingleStack" {
        families.truncate(1);
    } else if policy == "RequireDualStack" && families.len() < 2 {
        return Err(SpecError(
            "ipFamilyPolicy RequireDualStack needs two ipFamilies".to_owned(),
        ));
    }
    Ok(families)
}

/// What the appliance should know about a Service. `local_nodes` are the nodes with ready
/// endpoints; they are sent only for `externalTrafficPolicy: Local`.
pub fn desired_spec(svc: &Service, local_nodes: &[String]) -> Result<ServiceSpec, SpecError> {
    let uid = svc
        .metadata
        .uid
        .clone()
        .ok_or_else(|| SpecError("the Service has no uid".to_owned()))?;
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| SpecError("the Service has no spec".to_owned()))?;
    let mut ports = Vec::new();
    for p in spec.ports.as_deref().unwrap_or_default() {
        let node_port = p.node_port.ok_or_else(|| {
            SpecError(format!(
                "port {} has no nodePort (allocateLoadBalancerNodePorts must not be false)",
                p.port
            ))
        })?;
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: protocol(p.protocol.as_deref())?,
            port: port(p.port, "port")?,
            node_port: port(node_port, "nodePort")?,
        });
    }
    if ports.is_empty() {
        return Err(SpecError("the Service has no ports".to_owned()));
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let client_ip = spec.session_affinity.as_deref() == Some("ClientIP");
    let requested = requested_ips(svc)?;
    Ok(ServiceSpec {
        uid,
        ports,
        external_traffic_policy: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        health_check_node_port: match spec.health_check_node_port {
            Some(p) if local => Some(port(p, "healthCheckNodePort")?),
            _ => None,
        },
        session_affinity: if client_ip {
            SessionAffinity::ClientIp
        } else {
            SessionAffinity::None
        },
        session_affinity_timeout_seconds: if client_ip {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
        } else {
            None
        },
        source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        pool: annotation(svc, ANNOTATION_POOL).map(str::to_owned),
        ip_families: ip_families(svc, &requested)?,
        requested_ips: requested,
        sharing_key: sharing_key(svc),
        scheduler: annotation(svc, ANNOTATION_SCHEDULER).map(str::to_owned),
        local_nodes: local.then(|| local_nodes.to_vec()),
        // The `edgelb.io/health-*` annotations are not read yet: the appliance's defaults.
        health: None,
    })
}

#[cfg(test)]
mod tests;
