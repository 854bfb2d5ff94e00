//! The desired forwarding state, built from the store's snapshot by a pure function: for each
//! allocated VIP inside a pool and each port of its Service, a virtual service with the
//! Service's scheduler (else its pool's) and persistence (`sessionAffinity: ClientIP`), whose
//! real servers are the eligible nodes' addresses of the VIP's family at the NodePort.
//!
//! Health and draining enter as inputs ([`HealthInput`]), so this stays a pure function: an
//! unhealthy real server gets weight 0 and is left out once the drain timeout since it went
//! down has passed; a node that stops being eligible (NotReady, unschedulable, excluded) is
//! drained the same way rather than cut, which needs the previous pass's [`Drains`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use edgelb_api::{HealthOverrides, IpFamily, Node, Protocol, ServicePort, ServiceSpec, SessionAffinity, TrafficPolicy};

use super::{Desired, Ownership};
use crate::config::AllDown;
use crate::dataplane::nft::{self, IpPrefix, NatMode};
use crate::dataplane::{Manages, RealServer, RsSpec, State, VirtualService, VsKey, VsSpec};
use crate::health::{Settings, Target, TargetState};
use crate::store::{DataplaneSnapshot, SnapshotService};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Stands in for a source range that does not parse: `0.0.0.0/32` is no client's address.
const CLOSED: IpPrefix = IpPrefix::V4_UNSPECIFIED_HOST;

/// The weight of a healthy real server. Health checking lowers it to 0 to drain.
pub const WEIGHT: u32 = 1;

/// A real server: its virtual service and the node's address at the NodePort.
pub type RsKey = (VsKey, SocketAddr);

/// What health checking and draining bring to the desired state. All of it is input, read by
/// the runner (the checker's snapshot, the clock, its memory of the last pass), so that
/// [`desired_with`] stays pure.
#[derive(Debug, Clone, Copy)]
pub struct HealthInput<'a> {
    pub now: SystemTime,
    pub drain_timeout: Duration,
    pub all_down: AllDown,
    /// The damped health of probed targets; a target absent here serves.
    pub targets: &'a HashMap<Target, TargetState>,
    /// What the previous pass left.
    pub drains: &'a Drains,
}

/// The reconciler's memory between passes, per virtual service: the real servers of eligible
/// nodes it kept, and those of nodes no longer eligible with when they stopped being so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    pub present: BTreeMap<VsKey, BTreeSet<SocketAddr>>,
    pub leaving: BTreeMap<VsKey, BTreeMap<SocketAddr, SystemTime>>,
}

impl Drains {
    /// Seeds the memory from what the kernel holds (at start), so a node that became
    /// ineligible while the appliance was down is drained too, not cut.
    pub fn seed(observed: &State) -> Drains {
        let mut present: BTreeMap<VsKey, BTreeSet<SocketAddr>> = BTreeMap::new();
        for (k, a) in observed.real_servers.keys() {
            present.entry(*k).or_default().insert(*a);
        }
        Drains {
            present,
            leaving: BTreeMap::new(),
        }
    }
}

/// The health side of a desired state: what to probe for each real server, the memory for the
/// next pass, and when a drain ends (a pass is due then, to remove what has drained).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthPlan {
    /// The target probed for each real server of an eligible node.
    pub targets: BTreeMap<RsKey, Target>,
    /// Targets whose Service has its own settings (the first Service to name a target wins).
    pub overrides: BTreeMap<Target, HealthOverrides>,
    pub drains: Drains,
    pub next_deadline: Option<SystemTime>,
}

impl HealthPlan {
    /// Each distinct target once, with the default settings or its Service's own: what the
    /// checker probes.
    pub fn probes(&self, defaults: Settings) -> HashMap<Target, Settings> {
        self.targets
            .values()
            .map(|t| {
                let settings = self.overrides.get(t).map_or(defaults, |o| defaults.with(o));
                (t.clone(), settings)
            })
            .collect()
    }

    fn deadline(&mut self, at: SystemTime) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }
}

/// A Service's own health-check settings.
fn service_overrides(spec: &ServiceSpec) -> Option<HealthOverrides> {
    spec.health
}

/// How a real server is probed: kube-proxy's `/healthz` on the `healthCheckNodePort` for an
/// `externalTrafficPolicy: Local` Service (200 only where the node has ready endpoints), a TCP
/// connect to the NodePort for a TCP port otherwise. A UDP or SCTP NodePort of a `Cluster`
/// Service has no probe that means anything (no handshake to see), so it is not probed: it
/// follows its node's eligibility only.
pub fn target_of(spec: &ServiceSpec, node: IpAddr, port: &ServicePort) -> Option<Target> {
    match (spec.external_traffic_policy, spec.health_check_node_port, port.protocol) {
        (TrafficPolicy::Local, Some(hc), _) => Some(Target::healthz(node, hc)),
        (_, _, Protocol::Tcp) => Some(Target::tcp(node, port.node_port)),
        _ => None,
    }
}

/// The weights of one virtual service's real servers: `eligible` are the eligible nodes' real
/// servers with their targets (none: not probed, so always healthy). Healthy (or not yet known)
/// ones get [`WEIGHT`]; unhealthy ones 0 until the drain timeout since they went down, then
/// none; when every eligible one is unhealthy, fail-open keeps them all at [`WEIGHT`]. Real
/// servers of nodes no longer eligible get 0 until the drain timeout since they left, as long as
/// the node is still `listed`: a node deleted from the cluster's node list is gone, and so are
/// its real servers.
fn weigh(
    key: VsKey,
    eligible: &[(SocketAddr, Option<Target>)],
    listed: &BTreeSet<IpAddr>,
    overrides: Option<HealthOverrides>,
    h: &HealthInput<'_>,
    out: &mut HealthPlan,
) -> Vec<(SocketAddr, u32)> {
    let drained_until = |since: SystemTime| since.checked_add(h.drain_timeout).filter(|until| *until > h.now);
    let down_since = |t: &Option<Target>| {
        t.as_ref()
            .and_then(|t| h.targets.get(t))
            .filter(|s| !s.serves())
            .map(|s| s.since)
    };
    let fail_open = h.all_down == AllDown::FailOpen
        && !eligible.is_empty()
        && eligible.iter().all(|(_, t)| down_since(t).is_some());
    let mut weights = Vec::new();
    let mut present = BTreeSet::new();
    for (a, t) in eligible {
        if let Some(t) = t {
            out.targets.insert((key, *a), t.clone());
            if let Some(o) = overrides {
                out.overrides.entry(t.clone()).or_insert(o);
            }
        }
        let weight = match down_since(t) {
            Some(_) if fail_open => Some(WEIGHT),
            Some(since) => drained_until(since).map(|until| {
                out.deadline(until);
                0
            }),
            None => Some(WEIGHT),
        };
        if let Some(w) = weight {
            present.insert(*a);
            weights.push((*a, w));
        }
    }
    let is_eligible = |a: &SocketAddr| eligible.iter().any(|(e, _)| e == a);
    let mut leaving = BTreeMap::new();
    let left_now = h.drains.present.get(&key).into_iter().flatten().map(|a| (*a, h.now));
    let left_before = h.drains.leaving.get(&key).into_iter().flatten().map(|(a, s)| (*a, *s));
    for (a, since) in left_before.chain(left_now) {
        if is_eligible(&a) || leaving.contains_key(&a) || !listed.contains(&a.ip()) {
            continue;
        }
        if let Some(until) = drained_until(since) {
            out.deadline(until);
            leaving.insert(a, since);
            weights.push((a, 0));
        }
    }
    if !present.is_empty() {
        out.drains.present.insert(key, present);
    }
    if !leaving.is_empty() {
        out.drains.leaving.insert(key, leaving);
    }
    weights
}

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
    let none = HashMap::new();
    let drains = Drains::default();
    let health = HealthInput {
        now: SystemTime::UNIX_EPOCH,
        drain_timeout: Duration::ZERO,
        all_down: AllDown::FailOpen,
        targets: &none,
        drains: &drains,
    };
    desired_with(snap, manages, &health).0
}

/// [`desired`] with health checking and draining: see [`weigh`] for the weights.
pub fn desired_with(snap: &DataplaneSnapshot, manages: Manages, health: &HealthInput<'_>) -> (Desired, HealthPlan) {
    let mut hp = HealthPlan::default();
    let owned = Ownership::new(snap.pools.iter().flat_map(|p| p.ranges.iter().copied()).collect());
    let mut state = State {
        addresses: manages.addresses.then(BTreeSet::new),
        ..State::default()
    };
    let mut forwards = Vec::new();
    for svc in &snap.services {
        let Some(spec) = &svc.spec else { continue };
        let nodes = snap.nodes.get(&svc.cluster).map(Vec::as_slice).unwrap_or_default();
        let listed: BTreeSet<IpAddr> = nodes.iter().flat_map(|n| n.addresses.iter().copied()).collect();
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
            // All the ranges, of both families: a non-empty list restricts the VIP, and the
            // renderer allows only the VIP's family's prefixes. Filtering by family here would
            // turn `["10.0.0.0/8"]` into an empty list, which means "everyone", for the IPv6 VIP
            // of a dual-stack Service. The store validated them; should one still not parse, it
            // becomes a prefix no client has, so the VIP stays closed rather than open.
            let source_ranges: Vec<IpPrefix> = spec
                .source_ranges
                .iter()
                .map(|r| {
                    r.parse::<IpPrefix>().unwrap_or_else(|_| {
                        tracing::error!(range = %r, "unparsable source range: the VIP stays closed to it");
                        CLOSED
                    })
                })
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
                let eligible: Vec<(SocketAddr, Option<Target>)> = backends
                    .iter()
                    .map(|a| (SocketAddr::new(*a, port.node_port), target_of(spec, *a, port)))
                    .collect();
                let weights = weigh(key, &eligible, &listed, service_overrides(spec), health, &mut hp);
                forwards.push(nft::Forward {
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                    mode: NatMode::FullNat,
                    // Drained ones too: their open connections still need the source NAT.
                    backends: weights.iter().map(|(a, _)| *a).collect(),
                    source_ranges: source_ranges.clone(),
                });
                for (addr, weight) in weights {
                    state.real_servers.insert(
                        (key, addr),
                        RealServer {
                            spec: RsSpec::masquerade(weight),
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
    (Desired { state, owned, ruleset }, hp)
}
