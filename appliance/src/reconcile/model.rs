//! The desired state as the reconciler keeps it between passes: built whole from a store
//! snapshot ([`Model::build`]), then changed one Service at a time ([`Model::replace`]), so that
//! a change to one Service costs the same with 10 Services or 10,000.
//!
//! Besides the desired [`State`] it remembers what each Service contributed (its virtual
//! services and VIPs), how many forwarded ports need each source-range [`Rule`] and each VIP
//! (two Services may share an address), and which real servers use each probed target. A
//! replacement reports what it [`Touched`], and [`Model::plan_touched`] compares only that with
//! the kernel. A full build and a series of replacements give the same model (tested).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use edgelb_api::{Forwarding, IpFamily, Node, Protocol};

use super::desired::{Drains, HealthInput, HealthPlan, node_address, target_of, weigh};
use super::{Claim, Desired, Ownership, Plan, plan_state};
use crate::config::AllDown;
use crate::dataplane::{Op, State};
use crate::forwarding::{
    Forward, Manages, NatMode, PortRules, RealServer, RsSpec, Rule, Ruleset, VirtualService, VsKey,
};
use crate::health::{ProbeKind, Settings, Target};
use crate::ipam::ServiceKey;
use crate::store::{DataplaneSnapshot, SnapshotPool, SnapshotService};

/// The desired state, with what is needed to change one Service of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    manages: Manages,
    owned: Ownership,
    pools: Vec<SnapshotPool>,
    nodes: BTreeMap<String, Vec<Node>>,
    /// Desired virtual services, real servers and addresses.
    state: State,
    /// The filter and translation side of each virtual service (only when the data plane
    /// manages them). Their `backends` stay empty here: they are the virtual service's real
    /// servers in `state`, filled in when a ruleset is built.
    forwards: BTreeMap<VsKey, PortRules>,
    /// How many forwards need each source-range rule.
    elements: HashMap<Rule, u32>,
    /// The virtual services with real servers at each (protocol, NodePort), in key order: a
    /// full-NAT rule (one per real server) is wanted while one of them has that real server.
    /// An index per virtual service instead of a count per rule keeps 100,000 rules out of
    /// memory.
    by_port: HashMap<(Protocol, u16), Vec<VsKey>>,
    /// How many Services forward on each VIP.
    vips: BTreeMap<IpAddr, u32>,
    parts: HashMap<std::sync::Arc<ServiceKey>, Part>,
    /// The Service of each virtual service (the key its part is kept under, shared).
    owner: HashMap<VsKey, std::sync::Arc<ServiceKey>>,
    hp: HealthPlan,
    /// The virtual services probed with each kind of probe on each port, in key order: a
    /// target's users are those of its kind and port that probe its node, and the first of
    /// them with its own settings decides the target's. Per virtual service, not per target,
    /// to keep the memory of 100,000 targets small.
    by_probe: HashMap<(ProbeKind, u16), Vec<VsKey>>,
    node_lists: NodeLists,
    /// The VIPs to claim of those that forward (the ownership input).
    claim: Claim,
}

/// One shared copy of each list of probed nodes ([`super::desired::Probed::nodes`]). A cache:
/// it holds nothing the model's meaning depends on, so any two compare equal.
#[derive(Debug, Clone, Default)]
struct NodeLists(std::collections::HashSet<std::sync::Arc<[IpAddr]>>);

impl PartialEq for NodeLists {
    fn eq(&self, _: &NodeLists) -> bool {
        true
    }
}

impl Eq for NodeLists {}

impl NodeLists {
    /// The shared copy of `nodes`.
    fn share(&mut self, nodes: &std::sync::Arc<[IpAddr]>) -> std::sync::Arc<[IpAddr]> {
        if let Some(shared) = self.0.get(nodes) {
            return shared.clone();
        }
        if self.0.len() >= 64 {
            // Forget the lists no virtual service uses any more.
            self.0.retain(|l| std::sync::Arc::strong_count(l) > 1);
        }
        self.0.insert(nodes.clone());
        nodes.clone()
    }
}

/// What one Service contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Part {
    keys: Vec<VsKey>,
    vips: Vec<IpAddr>,
    /// The node addresses whose node-level check its eligible real servers depend on, once per
    /// real server (with the node check on).
    nodes: Vec<IpAddr>,
}

/// What replacements changed: where a plan must compare, which targets' probes to update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<VsKey>,
    pub vips: BTreeSet<IpAddr>,
    /// Source-range rules.
    pub elements: BTreeSet<Rule>,
    /// Real servers whose full-NAT rule may have to change.
    pub backends: BTreeSet<(Protocol, SocketAddr)>,
    pub targets: BTreeSet<Target>,
}

impl Model {
    /// The whole desired state from a snapshot.
    pub fn build(snap: DataplaneSnapshot, manages: Manages, health: &HealthInput<'_>) -> Model {
        let mut m = Model {
            manages,
            owned: Ownership::new(snap.pools.iter().flat_map(|p| p.ranges.iter().copied()).collect()),
            pools: snap.pools,
            nodes: snap.nodes,
            state: State {
                addresses: manages.addresses.then(BTreeSet::new),
                ..State::default()
            },
            ..Model::default()
        };
        m.hp.node_port = health.node_port;
        for svc in snap.services {
            m.insert(svc, health, None);
        }
        m
    }

    /// The desired state and its health side, as [`super::desired_with`] returns them.
    pub fn into_parts(mut self) -> (Desired, HealthPlan) {
        let ruleset = self.ruleset();
        self.hp.drains = self.drains();
        (
            Desired {
                state: self.state,
                owned: self.owned,
                ruleset,
            },
            self.hp,
        )
    }

    pub fn owned(&self) -> &Ownership {
        &self.owned
    }

    pub fn health_plan(&self) -> &HealthPlan {
        &self.hp
    }

    /// Forgets when the next drain ends (for comparing models in tests: a removed Service's
    /// deadline may linger in one built by replacements, which costs one needless pass).
    #[cfg(test)]
    pub fn without_deadline(mut self) -> Model {
        self.hp.next_deadline = None;
        self
    }

    /// The fields in which two models differ, for a readable test failure.
    #[cfg(test)]
    pub fn differences(&self, other: &Model) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($f:ident).+) => {
                if self.$($f).+ != other.$($f).+ {
                    out.push(format!("{}: {:?}\n  vs {:?}", stringify!($($f).+), self.$($f).+, other.$($f).+));
                }
            };
        }
        macro_rules! cmp_map {
            ($($f:ident).+) => {
                if self.$($f).+ != other.$($f).+ {
                    let a: Vec<_> = self.$($f).+.iter().filter(|(k, v)| other.$($f).+.get(*k) != Some(*v)).collect();
                    let b: Vec<_> = other.$($f).+.iter().filter(|(k, v)| self.$($f).+.get(*k) != Some(*v)).collect();
                    out.push(format!("{}: {a:?}\n  vs {b:?}", stringify!($($f).+)));
                }
            };
        }
        cmp_map!(state.services);
        cmp!(state.addresses);
        if self.state.real_servers != other.state.real_servers {
            let a: Vec<_> = self
                .state
                .real_servers
                .iter()
                .filter(|(k, v)| other.state.real_servers.get(k) != Some(*v))
                .collect();
            let b: Vec<_> = other
                .state
                .real_servers
                .iter()
                .filter(|(k, v)| self.state.real_servers.get(k) != Some(*v))
                .collect();
            out.push(format!("state.real_servers: {a:?}\n  vs {b:?}"));
        }
        cmp_map!(forwards);
        cmp_map!(elements);
        cmp_map!(by_port);
        cmp_map!(vips);
        cmp_map!(parts);
        cmp_map!(owner);
        cmp_map!(hp.targets);
        cmp_map!(hp.overrides);
        cmp_map!(hp.nodes);
        cmp!(hp.node_port);
        cmp!(hp.drains);
        cmp_map!(by_probe);
        out
    }

    /// Takes the drains out, for the next full build.
    pub fn into_drains(self) -> Drains {
        self.drains()
    }

    /// The drain memory for the next pass: the real servers kept (desired and not leaving) and
    /// those leaving.
    pub fn drains(&self) -> Drains {
        let present = self
            .state
            .real_servers
            .services()
            .map(|k| (k, self.present(k)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        Drains {
            present,
            leaving: self.hp.drains.leaving.clone(),
        }
    }

    /// The real servers of one virtual service that are kept, not leaving.
    fn present(&self, k: VsKey) -> BTreeSet<SocketAddr> {
        let leaving = self.hp.drains.leaving.get(&k);
        self.state
            .real_servers_of(k)
            .map(|(a, _)| a)
            .filter(|a| !leaving.is_some_and(|l| l.contains_key(a)))
            .collect()
    }

    /// The filter and translation, when the data plane manages them.
    fn ruleset(&self) -> Option<Ruleset> {
        self.manages.rules.then(|| Ruleset {
            snat: Default::default(),
            forwards: self
                .forwards
                .iter()
                .map(|(k, f)| PortRules {
                    backends: self.state.real_servers_of(*k).map(|(a, _)| a).collect(),
                    ..f.clone()
                })
                .collect(),
        })
    }

    /// The VIPs to claim, of those that forward.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Claims only the VIPs `claim` names from now on; a plan after a change of claim must be
    /// a full one ([`Model::plan_full`]).
    pub fn set_claim(&mut self, claim: Claim) {
        self.claim = claim;
    }

    /// The operations that bring `observed` to the whole desired state (as [`super::plan`]).
    pub fn plan_full(&self, observed: &State) -> Vec<Op> {
        plan_state(&self.state, &self.owned, self.ruleset().as_ref(), observed, &self.claim)
    }

    /// Replaces one Service (`None`: it is gone); see [`replace_all`](Self::replace_all).
    pub fn replace(
        &mut self,
        key: &ServiceKey,
        svc: Option<SnapshotService>,
        health: &HealthInput<'_>,
        touched: &mut Touched,
    ) -> bool {
        self.replace_all(vec![(key.clone(), svc)], health, touched)
    }

    /// Replaces some Services (`None`: gone) and records what changed in `touched`: all of
    /// them are removed first, then the new ones added, so that a virtual service one of them
    /// gives up and another takes in the same change is handed over, not lost. The drain memory
    /// of their virtual services carries over; `health.drains` is not read. Returns false when
    /// a new one claims a virtual service another Service still holds: a full build decides
    /// that case (the first in key order wins), so the caller must rebuild.
    pub fn replace_all(
        &mut self,
        services: Vec<(ServiceKey, Option<SnapshotService>)>,
        health: &HealthInput<'_>,
        touched: &mut Touched,
    ) -> bool {
        let mut drains = Drains::default();
        for (key, _) in &services {
            let d = self.remove(key, touched);
            drains.present.extend(d.present);
            drains.leaving.extend(d.leaving);
        }
        let h = HealthInput {
            drains: &drains,
            ..*health
        };
        let mut consistent = true;
        for svc in services.into_iter().filter_map(|(_, s)| s) {
            consistent &= self.insert(svc, &h, Some(touched));
        }
        consistent
    }

    /// Removes a Service's contribution; returns the drain memory of its virtual services.
    fn remove(&mut self, key: &ServiceKey, touched: &mut Touched) -> Drains {
        let mut drains = Drains::default();
        let Some(part) = self.parts.remove(key) else {
            return drains;
        };
        for k in part.keys {
            self.owner.remove(&k);
            touched.services.insert(k);
            self.state.services.remove(&k);
            let present = self.present(k);
            if !present.is_empty() {
                drains.present.insert(k, present);
            }
            let backends: Vec<SocketAddr> = self.state.real_servers_of(k).map(|(a, _)| a).collect();
            self.state.real_servers.remove_all(k);
            // Every eligible node's target, also of a real server already drained away.
            if let Some(p) = self.hp.targets.remove(&k) {
                let probe = (p.probe.kind, p.probe.port);
                if let Some(users) = self.by_probe.get_mut(&probe) {
                    users.retain(|u| *u != k);
                    if users.is_empty() {
                        self.by_probe.remove(&probe);
                    }
                }
                touched.targets.extend(p.targets());
            }
            self.hp.overrides.remove(&k);
            if let Some(l) = self.hp.drains.leaving.remove(&k) {
                drains.leaving.insert(k, l);
            }
            if let Some(f) = self.forwards.remove(&k) {
                for e in f.source_rules() {
                    if let Some(n) = self.elements.get_mut(&e) {
                        *n -= 1;
                        if *n == 0 {
                            self.elements.remove(&e);
                        }
                    }
                    touched.elements.insert(e);
                }
                for port in ports_of(&backends) {
                    if let Some(users) = self.by_port.get_mut(&(k.protocol, port)) {
                        users.retain(|u| *u != k);
                        if users.is_empty() {
                            self.by_port.remove(&(k.protocol, port));
                        }
                    }
                }
                touched.backends.extend(backends.iter().map(|b| (k.protocol, *b)));
            }
        }
        if let Some(port) = self.hp.node_port {
            for node in part.nodes {
                let t = crate::health::node_target(node, port);
                if let Some(n) = self.hp.nodes.get_mut(&t) {
                    *n -= 1;
                    if *n == 0 {
                        self.hp.nodes.remove(&t);
                    }
                }
                touched.targets.insert(t);
            }
        }
        for vip in part.vips {
            touched.vips.insert(vip);
            if let Some(n) = self.vips.get_mut(&vip) {
                *n -= 1;
                if *n == 0 {
                    self.vips.remove(&vip);
                    if let Some(addrs) = &mut self.state.addresses {
                        addrs.remove(&vip);
                    }
                }
            }
        }
        drains
    }

    /// Adds a Service's contribution: for each of its VIPs inside a pool and each port, a
    /// virtual service with the Service's scheduler (else its pool's) and persistence
    /// (`sessionAffinity: ClientIP`), whose real servers are the eligible nodes' addresses of
    /// the VIP's family at the NodePort, weighed by health ([`weigh`]).
    /// Returns false when one of its virtual services is held by another Service already (and
    /// so left to that one).
    fn insert(&mut self, svc: SnapshotService, health: &HealthInput<'_>, mut touched: Option<&mut Touched>) -> bool {
        let Some(spec) = &svc.spec else { return true };
        let mut consistent = true;
        let key = std::sync::Arc::new(ServiceKey::new(&svc.cluster, &svc.namespace, &svc.name));
        let mut part = Part::default();
        let nodes = self.nodes.get(&svc.cluster).map(Vec::as_slice).unwrap_or_default();
        let listed: BTreeSet<IpAddr> = nodes.iter().flat_map(|n| n.addresses.iter().copied()).collect();
        for assigned in &svc.addresses {
            let vip = assigned.ip;
            if !self.owned.owns(vip) {
                continue;
            }
            let pool = self.pools.iter().find(|p| p.name == assigned.pool);
            let vs_spec = spec.vs_spec(pool.map(|p| p.scheduler.as_str()));
            let forwarding = spec.forwarding(pool.and_then(|p| p.forwarding), self.manages.nat);
            let method = Forward::of(forwarding);
            // Only full NAT translates the source; the others keep the client's address.
            let mode = match forwarding {
                Forwarding::Fullnat => NatMode::FullNat,
                _ => NatMode::PlainNat,
            };
            let overrides = super::overrides::effective(spec.health, pool.and_then(|p| p.health));
            let family = IpFamily::of(&vip);
            let source_ranges = spec.source_ranges().to_vec();
            let backends: Vec<IpAddr> = nodes
                .iter()
                .filter(|n| spec.admits(n))
                // A node that says it has no tunnel device gets no tunnelled traffic.
                .filter(|n| !(forwarding == Forwarding::Tunnel && n.no_tunnel))
                .filter_map(|n| node_address(n, family))
                .collect();
            for port in &spec.ports {
                let k = VsKey::new(vip, port.port, port.protocol);
                // Two Services on one key cannot be stored; should it happen, the first wins.
                if self.state.services.contains_key(&k) {
                    consistent = false;
                    continue;
                }
                part.keys.push(k);
                self.owner.insert(k, key.clone());
                if let Some(t) = touched.as_deref_mut() {
                    t.services.insert(k);
                }
                self.state.services.insert(
                    k,
                    VirtualService {
                        spec: vs_spec.clone(),
                        counters: Default::default(),
                    },
                );
                // Direct routing and tunnels deliver `VIP:port` to the node itself (kube-proxy
                // takes it from there); NAT goes to the NodePort. Probed the same way either way.
                let rs_port = if forwarding.keeps_vip() {
                    port.port
                } else {
                    port.node_port
                };
                let eligible: Vec<(SocketAddr, Option<Target>)> = backends
                    .iter()
                    .map(|a| (SocketAddr::new(*a, rs_port), target_of(spec, *a, port)))
                    .collect();
                let mut weights = weigh(k, &eligible, &listed, overrides, health, &mut self.hp);
                if let Some(port) = self.hp.node_port {
                    for (a, _) in &eligible {
                        let t = crate::health::node_target(a.ip(), port);
                        *self.hp.nodes.entry(t.clone()).or_default() += 1;
                        part.nodes.push(a.ip());
                        if let Some(touched) = touched.as_deref_mut() {
                            touched.targets.insert(t);
                        }
                    }
                }
                // In address order, whatever the order nodes became eligible or left in.
                weights.sort_unstable();
                if let Some(p) = self.hp.targets.get_mut(&k) {
                    p.nodes = self.node_lists.share(&p.nodes);
                }
                if let Some(p) = self.hp.targets.get(&k) {
                    let users = self.by_probe.entry((p.probe.kind, p.probe.port)).or_default();
                    if let Err(at) = users.binary_search(&k) {
                        users.insert(at, k);
                    }
                    if let Some(t) = touched.as_deref_mut() {
                        t.targets.extend(p.targets());
                    }
                }
                if self.manages.rules {
                    let f = PortRules {
                        vip,
                        port: port.port,
                        protocol: port.protocol,
                        mode,
                        // The real servers, drained ones too (their open connections still
                        // need the source NAT): filled in from `state` when needed.
                        backends: Vec::new(),
                        source_ranges: source_ranges.clone(),
                    };
                    for e in f.source_rules() {
                        *self.elements.entry(e).or_default() += 1;
                        if let Some(t) = touched.as_deref_mut() {
                            t.elements.insert(e);
                        }
                    }
                    let backends: Vec<SocketAddr> = weights.iter().map(|(a, _)| *a).collect();
                    // Indexed only where a full-NAT rule is wanted.
                    let fullnat = if mode == NatMode::FullNat {
                        backends.as_slice()
                    } else {
                        &[]
                    };
                    for port in ports_of(fullnat) {
                        let users = self.by_port.entry((k.protocol, port)).or_default();
                        if let Err(at) = users.binary_search(&k) {
                            users.insert(at, k);
                        }
                    }
                    if let Some(t) = touched.as_deref_mut() {
                        t.backends.extend(backends.iter().map(|b| (k.protocol, *b)));
                    }
                    self.forwards.insert(k, f);
                }
                let servers = weights
                    .into_iter()
                    .map(|(addr, weight)| {
                        let rs = RealServer {
                            spec: RsSpec {
                                weight,
                                forward: method,
                            },
                            counters: Default::default(),
                        };
                        (addr, rs)
                    })
                    .collect();
                self.state.real_servers.set(k, servers);
            }
            if !spec.ports.is_empty() {
                part.vips.push(vip);
                if let Some(t) = touched.as_deref_mut() {
                    t.vips.insert(vip);
                }
                *self.vips.entry(vip).or_default() += 1;
                if let Some(addrs) = &mut self.state.addresses {
                    addrs.insert(vip);
                }
            }
        }
        part.keys.shrink_to_fit();
        part.vips.shrink_to_fit();
        part.nodes.shrink_to_fit();
        self.parts.insert(key, part);
        consistent
    }

    /// Whether a real server's full-NAT element is wanted: some full-NAT virtual service of
    /// that protocol has that real server.
    fn wants_fullnat(&self, protocol: Protocol, backend: SocketAddr) -> bool {
        self.by_port.get(&(protocol, backend.port())).is_some_and(|users| {
            users
                .iter()
                .any(|k| self.state.real_servers.contains_key(&(*k, backend)))
        })
    }

    /// Whether `e` is an allowed source of a VIP port that stays restricted (its restriction
    /// is still wanted).
    fn stays_restricted(&self, e: &Rule) -> bool {
        e.restriction().is_some_and(|r| self.elements.contains_key(&r))
    }

    /// The Services whose real servers depend on some of `targets` (their own probe or, with
    /// the node-level check on, their node's): what a pass must redo when those targets change
    /// health. `None` when more than `max` do (a node that went down under thousands of
    /// Services): a full build is then as cheap.
    pub fn services_depending_on(&self, targets: &[Target], max: usize) -> Option<BTreeSet<ServiceKey>> {
        let mut out = BTreeSet::new();
        let mut nodes = std::collections::HashSet::new();
        for t in targets {
            if self.hp.nodes.contains_key(t) {
                nodes.insert(t.addr);
            }
            for k in self.by_probe.get(&(t.kind, t.port)).into_iter().flatten() {
                if self.hp.targets.get(k).is_some_and(|p| p.target(t.addr).is_some())
                    && let Some(owner) = self.owner.get(k)
                    && !out.contains(&**owner)
                {
                    if out.len() == max {
                        return None;
                    }
                    out.insert(ServiceKey::clone(owner));
                }
            }
        }
        if nodes.is_empty() {
            return Some(out);
        }
        // A node's check: every Service with a real server on that node (usually most of a
        // cluster's, so this seldom ends within the bound).
        for (key, part) in &self.parts {
            if !out.contains(&**key) && part.nodes.iter().any(|n| nodes.contains(n)) {
                if out.len() == max {
                    return None;
                }
                out.insert(ServiceKey::clone(key));
            }
        }
        Some(out)
    }

    /// The settings each touched target is now probed with; `None` for one no longer used.
    pub fn probe_changes(&self, touched: &Touched, defaults: Settings) -> Vec<(Target, Option<Settings>)> {
        touched
            .targets
            .iter()
            .map(|t| {
                let users = self.by_probe.get(&(t.kind, t.port)).into_iter().flatten();
                let probing = users.filter(|k| self.hp.targets.get(k).is_some_and(|p| p.target(t.addr).is_some()));
                let settings = self
                    .hp
                    .settings_of(probing, defaults)
                    .or_else(|| self.hp.nodes.contains_key(t).then_some(defaults));
                (t.clone(), settings)
            })
            .collect()
    }

    /// The operations that bring what `touched` names in `observed` to the desired state, in
    /// the same safe order as [`super::plan`]: rules added first, then addresses,
    /// services, real servers; removals after, rules and addresses last.
    pub fn plan_touched(&self, observed: &State, touched: &Touched) -> Vec<Op> {
        let mut plan = Plan::default();
        for k in &touched.services {
            plan.virtual_service(*k, &self.state, observed, &self.owned);
        }
        if let (Some(want_addrs), Some(have_addrs)) = (&self.state.addresses, &observed.addresses) {
            for vip in &touched.vips {
                plan.address(*vip, want_addrs, have_addrs, &self.owned, &self.claim);
            }
        }
        let mut add_elements = Vec::new();
        // Allowed sources of a VIP port that stays restricted: replaced in the same transaction
        // as the additions, deletions first (a new range may overlap an old one).
        let mut replaced = Vec::new();
        let mut del_elements = Vec::new();
        if self.manages.rules && observed.rules.is_some() {
            for (protocol, backend) in &touched.backends {
                let e = Rule::full_nat(*backend, *protocol);
                let present = observed.holds_rule(&e) == Some(true);
                match (self.wants_fullnat(*protocol, *backend), present) {
                    (true, false) => add_elements.push(e),
                    (false, true) => del_elements.push(e),
                    _ => {}
                }
            }
            for e in &touched.elements {
                let present = observed.holds_rule(e) == Some(true);
                match (self.elements.contains_key(e), present) {
                    (true, false) => add_elements.push(*e),
                    (false, true) if self.stays_restricted(e) => replaced.push(*e),
                    (false, true) => del_elements.push(*e),
                    _ => {}
                }
            }
        }
        let first = (!add_elements.is_empty() || !replaced.is_empty()).then_some(Op::PatchElements {
            delete: replaced,
            add: add_elements,
        });
        let before_release = (!del_elements.is_empty()).then_some(Op::DeleteElements(del_elements));
        plan.into_ops(first, before_release)
    }
}

/// The distinct ports of some real servers' addresses.
fn ports_of(backends: &[SocketAddr]) -> Vec<u16> {
    let mut ports: Vec<u16> = backends.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Builds the desired state. `manages` says what the data plane handles besides IPVS: VIP
/// addresses (every VIP that forwards is wanted on the interface) and filtering and translation
/// (full NAT to every real server, and each Service's source ranges, as a [`Ruleset`]).
pub fn desired(snap: &DataplaneSnapshot, manages: Manages) -> Desired {
    let none = HashMap::new();
    let drains = Drains::default();
    let health = HealthInput {
        now: SystemTime::UNIX_EPOCH,
        drain_timeout: Duration::ZERO,
        all_down: AllDown::FailOpen,
        targets: &none,
        drains: &drains,
        node_port: None,
    };
    desired_with(snap, manages, &health).0
}

/// [`desired`] with health checking and draining: see [`super::desired::weigh`] for the weights.
pub fn desired_with(snap: &DataplaneSnapshot, manages: Manages, health: &HealthInput<'_>) -> (Desired, HealthPlan) {
    Model::build(snap.clone(), manages, health).into_parts()
}
