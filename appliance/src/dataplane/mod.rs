//! The only module that speaks to the kernel: IPVS over generic netlink (`ipvs`), VIP addresses,
//! announcements and nftables. Wire types never leave this module.
//!
//! The reconciler talks to the kernel through the [`Forwarder`] trait, in the terms of [`State`]
//! and [`Op`]: virtual services keyed by (VIP, port, protocol) and their real servers. The Linux
//! implementation ([`LinuxDataplane`]) programs IPVS with pipelined batches; [`FakeDataplane`]
//! keeps the same state in memory and records every operation, for unit tests. Nothing here
//! decides what should exist: that is the reconciler's plan. Besides IPVS, a data plane may
//! manage the VIP addresses on an interface ([`addr`], announced with [`announce`]) and its own
//! nftables table ([`nft`]); [`Manages`] says which, and state it does not manage stays `None`.

pub mod addr;
pub mod announce;
pub mod announcer;
mod backend;
mod fake;
pub mod ipvs;
mod linux;
pub mod nft;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

pub use crate::forwarding::{
    Capabilities, Counters, Forward, Manages, RealServer, RsSpec, Rule, Ruleset, Scheduler, VirtualService, VsKey,
    VsSpec,
};
pub use backend::{Backend, connect};
pub use edgelb_api::Protocol;
pub use fake::FakeDataplane;
pub use linux::{LinuxDataplane, LinuxOptions, TrafficReader};

/// The forwarding state: desired (built from the store) or observed (dumped from the kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub services: BTreeMap<VsKey, VirtualService>,
    pub real_servers: RealServers,
    /// VIP addresses claimed on the appliance's interface; `None` when this data plane does not
    /// manage addresses (then the plan leaves them alone).
    pub addresses: Option<BTreeSet<IpAddr>>,
    /// The content of the appliance's nftables table (full-NAT and source-range sets); `None`
    /// when this data plane does not manage it.
    pub rules: Option<nft::TableState>,
}

/// The real servers of every virtual service: a map from (virtual service, address), kept as
/// one address-sorted vector per virtual service. At 100,000 real servers that is about half
/// the memory of one B-tree over both keys (whose nodes fill to about half when entries come
/// in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealServers {
    by_service: BTreeMap<VsKey, Vec<(SocketAddr, RealServer)>>,
    len: usize,
}

impl RealServers {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The real servers of one virtual service, in address order.
    pub fn of(&self, key: VsKey) -> &[(SocketAddr, RealServer)] {
        self.by_service.get(&key).map(Vec::as_slice).unwrap_or_default()
    }

    fn find(&self, (k, a): &(VsKey, SocketAddr)) -> Option<(&Vec<(SocketAddr, RealServer)>, usize)> {
        let v = self.by_service.get(k)?;
        v.binary_search_by(|(x, _)| x.cmp(a)).ok().map(|i| (v, i))
    }

    pub fn get(&self, key: &(VsKey, SocketAddr)) -> Option<&RealServer> {
        self.find(key).map(|(v, i)| &v[i].1)
    }

    pub fn contains_key(&self, key: &(VsKey, SocketAddr)) -> bool {
        self.find(key).is_some()
    }

    pub fn get_mut(&mut self, (k, a): &(VsKey, SocketAddr)) -> Option<&mut RealServer> {
        let v = self.by_service.get_mut(k)?;
        let i = v.binary_search_by(|(x, _)| x.cmp(a)).ok()?;
        Some(&mut v[i].1)
    }

    /// Adds or replaces one; returns the one replaced.
    pub fn insert(&mut self, (k, a): (VsKey, SocketAddr), rs: RealServer) -> Option<RealServer> {
        let v = self.by_service.entry(k).or_default();
        match v.binary_search_by(|(x, _)| x.cmp(&a)) {
            Ok(i) => Some(std::mem::replace(&mut v[i].1, rs)),
            Err(i) => {
                // One at a time (a change, or a fold of applied operations): grow by one, not
                // double, so a virtual service's vector stays at its size.
                v.reserve_exact(1);
                v.insert(i, (a, rs));
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, (k, a): &(VsKey, SocketAddr)) -> Option<RealServer> {
        let v = self.by_service.get_mut(k)?;
        let i = v.binary_search_by(|(x, _)| x.cmp(a)).ok()?;
        let (_, rs) = v.remove(i);
        if v.is_empty() {
            self.by_service.remove(k);
        }
        self.len -= 1;
        Some(rs)
    }

    /// Replaces every real server of one virtual service (any order; of one address given twice
    /// the first is kept; none removes them).
    pub fn set(&mut self, k: VsKey, mut servers: Vec<(SocketAddr, RealServer)>) {
        servers.sort_by_key(|(a, _)| *a);
        servers.dedup_by(|(a, _), (b, _)| a == b);
        servers.shrink_to_fit();
        self.len -= self.by_service.get(&k).map_or(0, Vec::len);
        self.len += servers.len();
        if servers.is_empty() {
            self.by_service.remove(&k);
        } else {
            self.by_service.insert(k, servers);
        }
    }

    /// Removes every real server of one virtual service.
    pub fn remove_all(&mut self, k: VsKey) {
        self.set(k, Vec::new());
    }

    pub fn clear(&mut self) {
        self.by_service.clear();
        self.len = 0;
    }

    /// The virtual services that have real servers, in order.
    pub fn services(&self) -> impl Iterator<Item = VsKey> + '_ {
        self.by_service.keys().copied()
    }

    /// Every (virtual service, address), in order.
    pub fn keys(&self) -> impl Iterator<Item = (VsKey, SocketAddr)> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// Every real server with its key, in order.
    pub fn iter(&self) -> impl Iterator<Item = ((VsKey, SocketAddr), &RealServer)> + '_ {
        self.by_service
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |(a, rs)| ((*k, *a), rs)))
    }

    /// Every real server, mutable, with its key.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = ((VsKey, SocketAddr), &mut RealServer)> + '_ {
        self.by_service
            .iter_mut()
            .flat_map(|(k, v)| v.iter_mut().map(move |(a, rs)| ((*k, *a), rs)))
    }
}

impl FromIterator<((VsKey, SocketAddr), RealServer)> for RealServers {
    fn from_iter<I: IntoIterator<Item = ((VsKey, SocketAddr), RealServer)>>(iter: I) -> RealServers {
        let mut grouped: BTreeMap<VsKey, Vec<(SocketAddr, RealServer)>> = BTreeMap::new();
        for ((k, a), rs) in iter {
            grouped.entry(k).or_default().push((a, rs));
        }
        let mut out = RealServers::default();
        for (k, v) in grouped {
            out.set(k, v);
        }
        out
    }
}

impl State {
    /// Takes from `kept` what `ops` touched (their virtual services with their real servers,
    /// their addresses, their set elements) and leaves the rest as it is. For a dump that ran
    /// while those operations were applied: it may have seen each of them or not, and `kept`
    /// is the state after them.
    pub fn overlay(&mut self, kept: &State, ops: &[Op]) {
        let take_element = |mine: &mut Option<nft::TableState>, rule: &Rule| {
            let Some(mine) = mine else { return };
            let (set, e) = &nft::element(rule);
            let wanted = kept
                .rules
                .as_ref()
                .is_some_and(|r| r.sets.get(*set).is_some_and(|s| s.contains(e)));
            if wanted {
                mine.sets.entry((*set).to_owned()).or_default().insert(e.clone());
            } else if let Some(s) = mine.sets.get_mut(*set) {
                s.remove(e);
            }
        };
        for op in ops {
            match op {
                Op::AddService(k, _)
                | Op::EditService(k, _)
                | Op::DeleteService(k)
                | Op::AddRealServer(k, ..)
                | Op::EditRealServer(k, ..)
                | Op::DeleteRealServer(k, _) => {
                    match kept.services.get(k) {
                        Some(vs) => self.services.insert(*k, vs.clone()),
                        None => self.services.remove(k),
                    };
                    self.real_servers.set(*k, kept.real_servers.of(*k).to_vec());
                }
                Op::AddAddress(a) | Op::DeleteAddress(a) => {
                    if let (Some(mine), Some(theirs)) = (&mut self.addresses, &kept.addresses) {
                        if theirs.contains(a) {
                            mine.insert(*a);
                        } else {
                            mine.remove(a);
                        }
                    }
                }
                Op::SetRules(_) | Op::DeleteRules => self.rules = kept.rules.clone(),
                Op::PatchElements { delete, add } => {
                    for e in delete.iter().chain(add) {
                        take_element(&mut self.rules, e);
                    }
                }
                Op::DeleteElements(elements) => {
                    for e in elements {
                        take_element(&mut self.rules, e);
                    }
                }
            }
        }
    }

    /// Whether the filter and translation this holds express `rule`; `None` when they are not
    /// managed.
    pub fn holds_rule(&self, rule: &Rule) -> Option<bool> {
        let rules = self.rules.as_ref()?;
        let (set, e) = nft::element(rule);
        Some(rules.sets.get(set).is_some_and(|s| s.contains(&e)))
    }

    /// Every rule the filter and translation hold, read back from what the kernel reported (an
    /// element of no rule, one added by hand, is left out); `None` when they are not managed.
    pub fn held_rules(&self) -> Option<BTreeSet<Rule>> {
        let rules = self.rules.as_ref()?;
        Some(
            rules
                .sets
                .iter()
                .flat_map(|(set, elements)| elements.iter().filter_map(|e| nft::rule_of(set, e)))
                .collect(),
        )
    }

    /// Whether the filter and translation this holds are exactly `ruleset` (nothing more, nothing
    /// changed by hand); `None` when they are not managed.
    pub fn holds_ruleset(&self, ruleset: &Ruleset) -> Option<bool> {
        self.rules.as_ref().map(|have| nft::expected_state(ruleset) == *have)
    }

    /// The real servers of one virtual service, in address order.
    pub fn real_servers_of(&self, key: VsKey) -> impl Iterator<Item = (SocketAddr, &RealServer)> {
        self.real_servers.of(key).iter().map(|(a, rs)| (*a, rs))
    }

    /// Applies one operation with the kernel's rules: adding what exists, or changing what does
    /// not, fails. The fake data plane is this; the reconciler uses it to keep what it applied
    /// without dumping the kernel again.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let state = self;
        match op {
            Op::SetRules(r) => match &mut state.rules {
                Some(rules) => {
                    *rules = nft::expected_state(r);
                    Ok(())
                }
                None => Err("rules are not managed".into()),
            },
            Op::PatchElements { delete, add } => match &mut state.rules {
                Some(rules) => {
                    for (set, e) in delete.iter().map(nft::element) {
                        if !rules.sets.get_mut(set).is_some_and(|s| s.remove(&e)) {
                            return Err(format!("element {e} not in set {set}"));
                        }
                    }
                    for (set, e) in add.iter().map(nft::element) {
                        rules.sets.entry(set.to_owned()).or_default().insert(e);
                    }
                    Ok(())
                }
                None => Err("rules are not managed".into()),
            },
            Op::DeleteElements(elements) => match &mut state.rules {
                Some(rules) => {
                    for (set, e) in elements.iter().map(nft::element) {
                        if !rules.sets.get_mut(set).is_some_and(|s| s.remove(&e)) {
                            return Err(format!("element {e} not in set {set}"));
                        }
                    }
                    Ok(())
                }
                None => Err("rules are not managed".into()),
            },
            Op::DeleteRules => match &mut state.rules {
                Some(rules) => {
                    *rules = Default::default();
                    Ok(())
                }
                None => Err("rules are not managed".into()),
            },
            Op::AddAddress(a) => match state.addresses.as_mut().map(|set| set.insert(*a)) {
                Some(true) => Ok(()),
                Some(false) => Err(format!("address {a} exists")),
                None => Err("addresses are not managed".into()),
            },
            Op::DeleteAddress(a) => match state.addresses.as_mut().map(|set| set.remove(a)) {
                Some(true) => Ok(()),
                Some(false) => Err(format!("address {a} not found")),
                None => Err("addresses are not managed".into()),
            },
            Op::AddService(k, spec) => {
                if state.services.contains_key(k) {
                    return Err(format!("service {k} already exists"));
                }
                state.services.insert(
                    *k,
                    VirtualService {
                        spec: spec.clone(),
                        counters: Default::default(),
                    },
                );
                Ok(())
            }
            Op::EditService(k, spec) => match state.services.get_mut(k) {
                Some(vs) => {
                    vs.spec = spec.clone();
                    Ok(())
                }
                None => Err(format!("service {k} not found")),
            },
            Op::DeleteService(k) => {
                if state.services.remove(k).is_none() {
                    return Err(format!("service {k} not found"));
                }
                // As in IPVS: the service's real servers go with it.
                state.real_servers.remove_all(*k);
                Ok(())
            }
            Op::AddRealServer(k, a, spec) => {
                if !state.services.contains_key(k) {
                    return Err(format!("service {k} not found"));
                }
                if state.real_servers.contains_key(&(*k, *a)) {
                    return Err(format!("real server {a} of {k} already exists"));
                }
                state.real_servers.insert(
                    (*k, *a),
                    RealServer {
                        spec: *spec,
                        counters: Default::default(),
                    },
                );
                Ok(())
            }
            Op::EditRealServer(k, a, spec) => match state.real_servers.get_mut(&(*k, *a)) {
                Some(rs) => {
                    rs.spec = *spec;
                    Ok(())
                }
                None => Err(format!("real server {a} of {k} not found")),
            },
            Op::DeleteRealServer(k, a) => match state.real_servers.remove(&(*k, *a)) {
                Some(_) => Ok(()),
                None => Err(format!("real server {a} of {k} not found")),
            },
        }
    }
}

/// One change to the kernel. The plan orders them so that traffic is never sent to a service or
/// real server that is not there yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Replace the filter and translation with this content (for nftables, one atomic `nft -f`
    /// of the appliance's table).
    SetRules(Box<Ruleset>),
    /// Delete and add rules in one transaction, deletions first (one Service's change, without
    /// rewriting everything; in nftables, set elements). Deleting first lets a source range be
    /// replaced by one that overlaps it: the kernel refuses overlapping elements in an interval
    /// set.
    PatchElements { delete: Vec<Rule>, add: Vec<Rule> },
    /// Delete rules.
    DeleteElements(Vec<Rule>),
    /// Claim a VIP on the interface and announce it.
    AddAddress(IpAddr),
    /// `ipvsadm -A`.
    AddService(VsKey, VsSpec),
    /// `ipvsadm -E`: scheduler or persistence changed, connections kept.
    EditService(VsKey, VsSpec),
    /// `ipvsadm -a`.
    AddRealServer(VsKey, SocketAddr, RsSpec),
    /// `ipvsadm -e`: weight (drain) or forwarding changed, connections kept.
    EditRealServer(VsKey, SocketAddr, RsSpec),
    /// `ipvsadm -d`.
    DeleteRealServer(VsKey, SocketAddr),
    /// `ipvsadm -D`.
    DeleteService(VsKey),
    /// Release a VIP from the interface.
    DeleteAddress(IpAddr),
    /// Delete the appliance's nftables table (only on an explicit flush).
    DeleteRules,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::SetRules(r) => write!(f, "set nftables table ({} forwarded ports)", r.forwards.len()),
            Op::DeleteRules => write!(f, "delete nftables table"),
            Op::PatchElements { delete, add } => write!(
                f,
                "change nftables sets: delete {} element(s), add {}",
                delete.len(),
                add.len()
            ),
            Op::DeleteElements(e) => write!(f, "delete {} nftables set element(s)", e.len()),
            Op::AddAddress(a) => write!(f, "add address {a}"),
            Op::AddService(k, s) => write!(
                f,
                "add service {k} scheduler {} persistence {:?}",
                s.scheduler, s.persistence
            ),
            Op::EditService(k, s) => write!(
                f,
                "edit service {k} scheduler {} persistence {:?}",
                s.scheduler, s.persistence
            ),
            Op::AddRealServer(k, a, s) => write!(f, "add real server {a} to {k} weight {}", s.weight),
            Op::EditRealServer(k, a, s) => write!(f, "edit real server {a} of {k} weight {}", s.weight),
            Op::DeleteRealServer(k, a) => write!(f, "delete real server {a} of {k}"),
            Op::DeleteService(k) => write!(f, "delete service {k}"),
            Op::DeleteAddress(a) => write!(f, "delete address {a}"),
        }
    }
}

/// The error beneath a [`DataplaneError`], kept whole with its own sources (an IPVS errno, an
/// `nft` failure, a netlink error), and shared where one failure stands for several operations
/// (a batch that could not be sent).
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A [`Cause`] that is only a message.
pub fn cause(message: impl Into<String>) -> Cause {
    std::sync::Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(message.into()))
}

/// Why the data plane could not do something. The text of each variant says what was being
/// done; its source says why (print it with [`crate::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// IPVS cannot be used at all (no module, no permission): the appliance must not start.
    #[error("IPVS is not usable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("reading the kernel's state: {what}")]
    Observe {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// Some operations failed; the others were applied. The next pass retries from a new dump.
    #[error("{} of {total} operation(s) failed; first: {}", .failed.len(), .failed.first().map(|(op, e)| format!("{op}: {}", crate::error_chain(&**e))).unwrap_or_default())]
    Apply { total: usize, failed: Vec<(Op, Cause)> },
}

impl DataplaneError {
    fn unavailable(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> DataplaneError {
        DataplaneError::Unavailable {
            what: what.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    fn observe(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> DataplaneError {
        DataplaneError::Observe {
            what: what.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

/// A forwarding backend as the reconciler sees it: what it holds, applying changes to it, and
/// what it can do.
pub trait Forwarder: Send + Sync + 'static {
    /// `ipvs`, `fake`, ... for logs and the API.
    fn name(&self) -> &'static str;

    /// The schedulers, protocols and forwarding methods it offers, and what it manages besides
    /// forwarding.
    fn capabilities(&self) -> Capabilities;

    /// Dumps what the kernel holds now, with counters.
    fn observe(&self) -> impl Future<Output = Result<State, DataplaneError>> + Send;

    /// Applies the operations in the order given. Every operation is attempted; failures are
    /// reported together.
    fn apply(&self, ops: &[Op]) -> impl Future<Output = Result<(), DataplaneError>> + Send;
}

#[cfg(test)]
mod real_servers_tests {
    use super::*;

    /// Random inserts, replacements, removals and whole-service sets give the same content, in
    /// the same order, as a B-tree over (virtual service, address).
    #[test]
    fn real_servers_behave_as_a_map_over_both_keys() {
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let key = |i: u64| VsKey::new(IpAddr::from([203, 0, 113, i as u8]), 80, Protocol::Tcp);
        let addr = |i: u64| SocketAddr::new(IpAddr::from([10, 1, 0, i as u8]), 30_000);
        let rs = |w: u64| RealServer {
            spec: RsSpec::masquerade(w as u32),
            counters: Counters::default(),
        };
        let mut ours = RealServers::default();
        let mut model: BTreeMap<(VsKey, SocketAddr), RealServer> = BTreeMap::new();
        for step in 0..5_000 {
            let (k, a, w) = (key(next(8)), addr(next(12)), next(3));
            match next(5) {
                0 | 1 => assert_eq!(ours.insert((k, a), rs(w)), model.insert((k, a), rs(w)), "step {step}"),
                2 => assert_eq!(ours.remove(&(k, a)), model.remove(&(k, a)), "step {step}"),
                3 => {
                    let servers: Vec<(SocketAddr, RealServer)> =
                        (0..next(4)).map(|_| (addr(next(12)), rs(next(3)))).collect();
                    model.retain(|(key, _), _| *key != k);
                    // The first of duplicate addresses is kept, as `set` keeps it.
                    for (a, r) in &servers {
                        model.entry((k, *a)).or_insert_with(|| r.clone());
                    }
                    let mut sorted = servers;
                    sorted.sort_by_key(|(a, _)| *a);
                    ours.set(k, sorted);
                }
                _ => {
                    if let Some(r) = ours.get_mut(&(k, a)) {
                        r.spec.weight = 9;
                    }
                    if let Some(r) = model.get_mut(&(k, a)) {
                        r.spec.weight = 9;
                    }
                }
            }
            assert_eq!(ours.len(), model.len(), "step {step}");
            assert_eq!(ours.get(&(k, a)), model.get(&(k, a)), "step {step}");
        }
        let got: Vec<_> = ours.iter().map(|(key, r)| (key, r.clone())).collect();
        let want: Vec<_> = model.into_iter().collect();
        assert_eq!(got, want);
        let rebuilt: RealServers = got.into_iter().collect();
        assert_eq!(rebuilt, ours, "collecting gives the same structure");
    }
}
