//! The reconciler: decides what the kernel must change, in pure functions, and a loop that runs
//! them. [`desired`] builds the wanted [`State`] from the store's snapshot; [`plan`] compares it
//! with what the kernel holds and returns [`Op`]s in a safe order; [`runner`] observes, plans and
//! applies at start, on every store change and on a periodic resync that repairs drift.
//!
//! It owns only what lies inside the appliance's pools: a virtual service or address outside
//! every pool (made with `ipvsadm`, say) is never planned for, whatever it looks like. It never
//! tears anything down on its own account: removal happens only because the store no longer
//! wants it, or by the explicit [`flush_plan`].

pub mod desired;
pub mod model;
pub mod overrides;
pub mod published;
pub mod runner;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::dataplane::{Op, State};
use crate::forwarding::{Ruleset, VsKey};
use crate::ipam::{IpRange, to_u128};

pub use model::{desired, desired_with};
pub use published::Published;
pub use runner::{ReconcileError, Reconciler, RunnerOptions, flush};

/// The addresses edgelb owns: its pools' ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    ranges: Vec<IpRange>,
}

impl Ownership {
    pub fn new(ranges: Vec<IpRange>) -> Ownership {
        Ownership { ranges }
    }

    /// Whether `ip` lies inside one of the pools.
    pub fn owns(&self, ip: IpAddr) -> bool {
        let n = to_u128(ip);
        self.ranges.iter().any(|r| r.contains(n))
    }
}

/// Which of its VIPs this appliance should claim now: the ownership input. Forwarding (IPVS and
/// the nftables table) never depends on it, so an appliance that claims nothing keeps its
/// forwarding state hot and takes over by claiming. Nothing drives it yet and it says
/// [`Claim::All`]; the HA pair is to drive it from VRRP, and BGP per VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Claim {
    #[default]
    All,
    Nothing,
    Only(BTreeSet<IpAddr>),
}

impl Claim {
    /// Whether `vip` is to be claimed (when it forwards at all).
    pub fn claims(&self, vip: &IpAddr) -> bool {
        match self {
            Claim::All => true,
            Claim::Nothing => false,
            Claim::Only(vips) => vips.contains(vip),
        }
    }
}

/// What should be, and what of the kernel's state edgelb may change to get there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub state: State,
    pub owned: Ownership,
    /// The filter and translation, when the data plane manages them.
    pub ruleset: Option<Ruleset>,
}

/// The operations that turn `observed` into `desired`, in a safe order:
///
/// 1. filtering and translation (full NAT, source ranges) set before anything can use it, addresses
///    claimed, then services added, then edited, then real servers added, then edited
///    (so a new real server is there before an old one leaves);
/// 2. real servers removed, then services, then addresses (destinations before their service,
///    a VIP last).
///
/// A changed scheduler, persistence or weight is an edit in place: deleting and re-adding would
/// drop every connection of the service. Observed entries outside the pools are ignored. Once
/// applied, planning again from the new observation gives nothing.
pub fn plan(desired: &Desired, observed: &State) -> Vec<Op> {
    plan_state(
        &desired.state,
        &desired.owned,
        desired.ruleset.as_ref(),
        observed,
        &Claim::All,
    )
}

/// [`plan`] from the desired state's parts, claiming only the VIPs `claim` names.
fn plan_state(want: &State, owned: &Ownership, ruleset: Option<&Ruleset>, observed: &State, claim: &Claim) -> Vec<Op> {
    let mut plan = Plan::default();
    let keys: BTreeSet<VsKey> = [want, observed]
        .into_iter()
        .flat_map(|s| s.services.keys().copied().chain(s.real_servers.services()))
        .collect();
    for k in keys {
        plan.virtual_service(k, want, observed, owned);
    }
    if let (Some(want_addrs), Some(have_addrs)) = (&want.addresses, &observed.addresses) {
        for vip in want_addrs.union(have_addrs) {
            plan.address(*vip, want_addrs, have_addrs, owned, claim);
        }
    }
    let rules = ruleset
        .filter(|r| observed.holds_ruleset(r) == Some(false))
        .map(|r| Op::SetRules(Box::new(r.clone())));
    plan.into_ops(rules, None)
}

/// The operations of a plan by kind, gathered key by key; [`Plan::into_ops`] puts them in the
/// safe order [`plan`] describes. Shared by the full plan and the plan of what one change
/// touched ([`model::Model::plan_touched`]).
#[derive(Debug, Default)]
struct Plan {
    add_addr: Vec<Op>,
    add_svc: Vec<Op>,
    edit_svc: Vec<Op>,
    add_rs: Vec<Op>,
    edit_rs: Vec<Op>,
    del_rs: Vec<Op>,
    del_svc: Vec<Op>,
    del_addr: Vec<Op>,
}

impl Plan {
    /// What one virtual service and its real servers need. Only owned ones are removed.
    fn virtual_service(&mut self, k: VsKey, want: &State, observed: &State, owned: &Ownership) {
        let owns = owned.owns(k.vip);
        match (want.services.get(&k), observed.services.get(&k)) {
            (Some(w), None) => self.add_svc.push(Op::AddService(k, w.spec.clone())),
            (Some(w), Some(o)) if o.spec != w.spec => self.edit_svc.push(Op::EditService(k, w.spec.clone())),
            (None, Some(_)) if owns => self.del_svc.push(Op::DeleteService(k)),
            _ => {}
        }
        for (a, rs) in want.real_servers_of(k) {
            match observed.real_servers.get(&(k, a)) {
                None => self.add_rs.push(Op::AddRealServer(k, a, rs.spec)),
                Some(o) if o.spec != rs.spec => self.edit_rs.push(Op::EditRealServer(k, a, rs.spec)),
                Some(_) => {}
            }
        }
        if owns {
            for (a, _) in observed.real_servers_of(k) {
                if !want.real_servers.contains_key(&(k, a)) {
                    self.del_rs.push(Op::DeleteRealServer(k, a));
                }
            }
        }
    }

    /// What one VIP address needs: claimed while it forwards and `claim` names it. Only owned
    /// ones are released.
    fn address(
        &mut self,
        vip: IpAddr,
        want: &BTreeSet<IpAddr>,
        have: &BTreeSet<IpAddr>,
        owned: &Ownership,
        claim: &Claim,
    ) {
        match (want.contains(&vip) && claim.claims(&vip), have.contains(&vip)) {
            (true, false) => self.add_addr.push(Op::AddAddress(vip)),
            (false, true) if owned.owns(vip) => self.del_addr.push(Op::DeleteAddress(vip)),
            _ => {}
        }
    }

    /// The operations in order: `first` (the whole ruleset or its new rules), then
    /// addresses claimed, services added and edited, real servers added, edited and removed,
    /// services removed, `before_release` (rules removed), addresses released.
    fn into_ops(self, first: Option<Op>, before_release: Option<Op>) -> Vec<Op> {
        let mut ops: Vec<Op> = first.into_iter().collect();
        for part in [
            self.add_addr,
            self.add_svc,
            self.edit_svc,
            self.add_rs,
            self.edit_rs,
            self.del_rs,
            self.del_svc,
        ] {
            ops.extend(part);
        }
        ops.extend(before_release);
        ops.extend(self.del_addr);
        ops
    }
}

/// What `edgelb dataplane flush` removes: every owned virtual service (its real servers go with
/// it), every owned address and the appliance's nftables table. Nothing outside the pools.
pub fn flush_plan(owned: &Ownership, observed: &State) -> Vec<Op> {
    let mut ops: Vec<Op> = observed
        .services
        .keys()
        .filter(|k| owned.owns(k.vip))
        .map(|k| Op::DeleteService(*k))
        .collect();
    if let Some(addrs) = &observed.addresses {
        ops.extend(addrs.iter().filter(|a| owned.owns(**a)).map(|a| Op::DeleteAddress(*a)));
    }
    if observed.rules.is_some() {
        ops.push(Op::DeleteRules);
    }
    ops
}
