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

use edgelb_api::{HealthOverrides, IpFamily, Node, Protocol, ServicePort, ServiceSpec, TrafficPolicy};

use crate::config::AllDown;
use crate::dataplane::State;
use crate::forwarding::VsKey;
use crate::health::{Settings, Target, TargetState};

/// The weight of a healthy real server. Health checking lowers it to 0 to drain.
pub const WEIGHT: u32 = 1;

/// A real server: its virtual service and the node's address at the NodePort.
pub type RsKey = (VsKey, SocketAddr);

/// What health checking and draining bring to the desired state. All of it is input, read by
/// the runner (the checker's snapshot, the clock, its memory of the last pass), so that
/// [`super::desired_with`] stays pure.
#[derive(Debug, Clone, Copy)]
pub struct HealthInput<'a> {
    pub now: SystemTime,
    pub drain_timeout: Duration,
    pub all_down: AllDown,
    /// The damped health of probed targets; a target it does not know serves.
    pub targets: &'a dyn HealthView,
    /// What the previous pass left.
    pub drains: &'a Drains,
    /// kube-proxy's node-level health port, when the node check is on: a node whose check
    /// fails has all its real servers drained ([`crate::health::node_target`]).
    pub node_port: Option<u16>,
}

/// Where the damped health of targets is read: the checker itself, or a copy of its states.
pub trait HealthView: std::fmt::Debug + Sync {
    fn health(&self, target: &Target) -> Option<TargetState>;
}

impl HealthView for HashMap<Target, TargetState> {
    fn health(&self, target: &Target) -> Option<TargetState> {
        self.get(target).cloned()
    }
}

impl HealthView for crate::health::Checker {
    fn health(&self, target: &Target) -> Option<TargetState> {
        self.state(target)
    }
}

/// The reconciler's memory between passes, per virtual service: the real servers of eligible
/// nodes it kept, and those of nodes no longer eligible with when they stopped being so. The
/// [`super::model::Model`] keeps only `leaving` (its `present` is empty): the kept ones are its desired real
/// servers that are not leaving, which [`super::model::Model::drains`] derives when a pass needs them.
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
            present.entry(k).or_default().insert(a);
        }
        Drains {
            present,
            leaving: BTreeMap::new(),
        }
    }
}

/// How the real servers of one virtual service are probed: the same kind of probe on the same
/// port of each eligible node (kube-proxy's `/healthz` on the health-check port, or the
/// NodePort). Kept once per virtual service, not once per real server: at 10,000 Services on 10
/// nodes that is 10,000 entries, not 100,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The target of the first node (only its kind and port matter).
    pub probe: Target,
    /// The eligible nodes' addresses, sorted: each one's target is probed. Usually the same
    /// list for thousands of virtual services, so the model shares one copy.
    pub nodes: std::sync::Arc<[IpAddr]>,
}

impl Probed {
    /// The target probed for a real server on `node`, if that node is probed.
    pub fn target(&self, node: IpAddr) -> Option<Target> {
        self.nodes.binary_search(&node).is_ok().then(|| self.on(node))
    }

    /// Every target, in node order.
    pub fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        self.nodes.iter().map(|n| self.on(*n))
    }

    fn on(&self, node: IpAddr) -> Target {
        Target {
            addr: node,
            ..self.probe.clone()
        }
    }
}

/// The health side of a desired state: what to probe for each real server, the memory for the
/// next pass, and when a drain ends (a pass is due then, to remove what has drained).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthPlan {
    /// What is probed for the real servers of each virtual service's eligible nodes.
    pub targets: BTreeMap<VsKey, Probed>,
    /// Virtual services whose Service or pool has its own settings. A target used by several
    /// gets the settings of the first (in key order) that has any.
    pub overrides: BTreeMap<VsKey, HealthOverrides>,
    /// The drain memory; `present` is filled only when taken out of the model
    /// ([`super::model::Model::into_parts`]).
    pub drains: Drains,
    pub next_deadline: Option<SystemTime>,
    /// The node-level check's port, when it is on.
    pub node_port: Option<u16>,
    /// The node-level targets, with how many eligible real servers depend on each. Probed with
    /// the appliance's default settings.
    pub nodes: BTreeMap<Target, u32>,
}

impl HealthPlan {
    /// Each distinct target once, with the default settings or its Service's own: what the
    /// checker probes.
    pub fn probes(&self, defaults: Settings) -> HashMap<Target, Settings> {
        // (settings, whether they came from an override)
        let mut out: HashMap<Target, (Settings, bool)> = HashMap::new();
        for (key, probed) in &self.targets {
            let own = self.overrides.get(key).map(|o| defaults.with(o));
            for t in probed.targets() {
                match out.get_mut(&t) {
                    Some(e) if !e.1 => {
                        if let Some(own) = own {
                            *e = (own, true);
                        }
                    }
                    Some(_) => {}
                    None => {
                        out.insert(t, own.map_or((defaults, false), |o| (o, true)));
                    }
                }
            }
        }
        for t in self.nodes.keys() {
            out.entry(t.clone()).or_insert((defaults, false));
        }
        out.into_iter().map(|(t, (s, _))| (t, s)).collect()
    }

    /// The target probed for a real server itself (not its node's), if any.
    pub fn target_of(&self, key: VsKey, rs: SocketAddr) -> Option<Target> {
        self.targets.get(&key)?.target(rs.ip())
    }

    /// The node-level target of a real server's node, when the node check is on and the node
    /// serves some real server.
    pub fn node_target_of(&self, addr: IpAddr) -> Option<Target> {
        let t = crate::health::node_target(addr, self.node_port?);
        self.nodes.contains_key(&t).then_some(t)
    }

    /// The settings of one target, the same as [`probes`](Self::probes) gives it, from the
    /// virtual services whose real servers use it (in key order); `None` when none does.
    pub fn settings_of<'a>(&self, users: impl IntoIterator<Item = &'a VsKey>, defaults: Settings) -> Option<Settings> {
        let mut any = false;
        for key in users {
            any = true;
            if let Some(o) = self.overrides.get(key) {
                return Some(defaults.with(o));
            }
        }
        any.then_some(defaults)
    }

    fn deadline(&mut self, at: SystemTime) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }
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
pub(super) fn weigh(
    key: VsKey,
    eligible: &[(SocketAddr, Option<Target>)],
    listed: &BTreeSet<IpAddr>,
    overrides: Option<HealthOverrides>,
    h: &HealthInput<'_>,
    out: &mut HealthPlan,
) -> Vec<(SocketAddr, u32)> {
    let drained_until = |since: SystemTime| since.checked_add(h.drain_timeout).filter(|until| *until > h.now);
    // A real server is down while its own target or (with the node check) its node is.
    let down_since = |a: &SocketAddr, t: &Option<Target>| {
        let node = h.node_port.map(|p| crate::health::node_target(a.ip(), p));
        crate::health::down_since(t.iter().chain(node.iter()), |t| h.targets.health(t))
    };
    let fail_open = h.all_down == AllDown::FailOpen
        && !eligible.is_empty()
        && eligible.iter().all(|(a, t)| down_since(a, t).is_some());
    let mut weights = Vec::new();
    if let Some(o) = overrides
        && eligible.iter().any(|(_, t)| t.is_some())
    {
        out.overrides.insert(key, o);
    }
    let mut probed: Option<(Target, Vec<IpAddr>)> = None;
    for (a, t) in eligible {
        if let Some(t) = t {
            match &mut probed {
                Some((_, nodes)) => nodes.push(a.ip()),
                None => probed = Some((t.clone(), vec![a.ip()])),
            }
        }
        let weight = match down_since(a, t) {
            Some(_) if fail_open => Some(WEIGHT),
            Some(since) => drained_until(since).map(|until| {
                out.deadline(until);
                0
            }),
            None => Some(WEIGHT),
        };
        if let Some(w) = weight {
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
    if let Some((probe, mut nodes)) = probed {
        nodes.sort_unstable();
        nodes.dedup();
        let nodes = nodes.into();
        out.targets.insert(key, Probed { probe, nodes });
    }
    if !leaving.is_empty() {
        out.drains.leaving.insert(key, leaving);
    }
    weights
}

/// The node's first address of the VIP's family, in the order the agent gave.
pub(super) fn node_address(node: &Node, family: IpFamily) -> Option<IpAddr> {
    node.addresses.iter().copied().find(|a| IpFamily::of(a) == family)
}
