//! The desired forwarding state, built from the store's snapshot by a pure function: for each
//! allocated VIP inside a pool and each port of its Service, a virtual service with the
//! Service's scheduler (else its pool's) and persistence (`sessionAffinity: ClientIP`), whose
//! real servers are the eligible nodes' addresses of the VIP's family at the NodePort.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use edgelb_api::{IpFamily, Node, SessionAffinity, TrafficPolicy};

use super::{Desired, Ownership};
use crate::dataplane::nft::{self, IpPrefix, NatMode};
use crate::dataplane::{Manages, RealServer, RsSpec, State, VirtualService, VsKey, VsSpec};
use crate::store::{DataplaneSnapshot, SnapshotService};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The weight of a healthy real server. Health checking lowers it to 0 to drain.
pub const WEIGHT: u32 = 1;

/// Whether a node may receive a Service's traffic at all: Ready, schedulable, and not labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers`; for `externalTrafficPolicy: Local`
/// also one of the nodes the agent reported with local endpoints (when it reported them).
fn eligible(node: &Node, svc: &SnapshotService) -> bool {
    if !node.ready || !node.schedulable || node.excluded {
        return false;
    }
    match svc.spec.as_ref() {
        Some(spec) if spec.external_traffic_policy == TrafficPolicy::Local => match &spec.local_nodes {
            Some(local) => local.contains(&node.name),
            None => true,
        },
        _ => true,
    }
}

/// The node's first address of the VIP's family, in the order the agent gave.
fn node_address(node: &Node, family: IpFamily) -> Option<IpAddr> {
    node.addresses.iter().copied().find(|a| IpFamily::of(a) == family)
}

/// Builds the desired state. `manages` says what the data plane handles besides IPVS: VIP
/// addresses (every VIP that forwards is wanted on the interface) and its nftables table (full
/// NAT to every real server, and each Service's source ranges).
pub fn desired(snap: &DataplaneSnapshot, manages: Manages) -> Desired {
    let owned = Ownership::new(snap.pools.iter().flat_map(|p| p.ranges.iter().copied()).collect());
    let mut state = State {
        addresses: manages.addresses.then(BTreeSet::new),
        ..State::default()
    };
    let mut forwards = Vec::new();
    for svc in &snap.services {
        let Some(spec) = &svc.spec else { continue };
        let nodes = snap.nodes.get(&svc.cluster).map(Vec::as_slice).unwrap_or_default();
        for assigned in &svc.addresses {
            let vip = assigned.ip;
            if !owned.owns(vip) {
                continue;
            }
            let scheduler = spec.scheduler.clone().or_else(|| {
                snap.pools
                    .iter()
                    .find(|p| p.name == assigned.pool)
                    .map(|p| p.scheduler.clone())
            });
            let vs_spec = VsSpec {
                scheduler: scheduler.unwrap_or_else(|| "wlc".to_owned()),
                persistence: (spec.session_affinity == SessionAffinity::ClientIp).then(|| {
                    spec.session_affinity_timeout_seconds
                        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
                }),
            };
            let family = IpFamily::of(&vip);
            // Validated by the store; the other family's prefixes can never match this VIP.
            let source_ranges: Vec<IpPrefix> = spec
                .source_ranges
                .iter()
                .filter_map(|r| r.parse::<IpPrefix>().ok())
                .filter(|p| IpFamily::of(&p.addr()) == family)
                .collect();
            let backends: Vec<IpAddr> = nodes
                .iter()
                .filter(|n| eligible(n, svc))
                .filter_map(|n| node_address(n, family))
                .collect();
            for port in &spec.ports {
                let key = VsKey::new(vip, port.port, port.protocol);
                // Two Services on one key cannot be stored; should it happen, the first wins.
                if state.services.contains_key(&key) {
                    continue;
                }
                state.services.insert(
                    key,
                    VirtualService {
                        spec: vs_spec.clone(),
                        counters: Default::default(),
                    },
                );
                forwards.push(nft::Forward {
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                    mode: NatMode::FullNat,
                    backends: backends.iter().map(|a| SocketAddr::new(*a, port.node_port)).collect(),
                    source_ranges: source_ranges.clone(),
                });
                for addr in &backends {
                    state.real_servers.insert(
                        (key, SocketAddr::new(*addr, port.node_port)),
                        RealServer {
                            spec: RsSpec::masquerade(WEIGHT),
                            counters: Default::default(),
                        },
                    );
                }
            }
            if let Some(addrs) = &mut state.addresses
                && !spec.ports.is_empty()
            {
                addrs.insert(vip);
            }
        }
    }
    let ruleset = manages.rules.then(|| nft::Ruleset {
        snat: Default::default(),
        forwards,
    });
    Desired { state, owned, ruleset }
}
