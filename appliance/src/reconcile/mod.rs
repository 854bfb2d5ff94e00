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
pub mod runner;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use crate::dataplane::{Op, State, nft};
use crate::ipam::{IpRange, to_u128};

pub use desired::desired;
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

/// What should be, and what of the kernel's state edgelb may change to get there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub state: State,
    pub owned: Ownership,
    /// The nftables table's content, when the data plane manages it.
    pub ruleset: Option<nft::Ruleset>,
}

/// The operations that turn `observed` into `desired`, in a safe order:
///
/// 1. the nftables table (full NAT, source ranges) set before anything can use it, addresses
///    claimed, then services added, then edited, then real servers added, then edited
///    (so a new real server is there before an old one leaves);
/// 2. real servers removed, then services, then addresses (destinations before their service,
///    a VIP last).
///
/// A changed scheduler, persistence or weight is an edit in place: deleting and re-adding would
/// drop every connection of the service. Observed entries outside the pools are ignored. Once
/// applied, planning again from the new observation gives nothing.
pub fn plan(desired: &Desired, observed: &State) -> Vec<Op> {
    plan_state(&desired.state, &desired.owned, desired.ruleset.as_ref(), observed)
}

/// [`plan`] from the desired state's parts.
fn plan_state(want: &State, owned: &Ownership, ruleset: Option<&nft::Ruleset>, observed: &State) -> Vec<Op> {
    let owns = |ip: IpAddr| owned.owns(ip);
    let mut add_addr = Vec::new();
    let mut add_svc = Vec::new();
    let mut edit_svc = Vec::new();
    let mut add_rs = Vec::new();
    let mut edit_rs = Vec::new();
    let mut del_rs = Vec::new();
    let mut del_svc = Vec::new();
    let mut del_addr = Vec::new();

    for (k, vs) in &want.services {
        match observed.services.get(k) {
            None => add_svc.push(Op::AddService(*k, vs.spec.clone())),
            Some(o) if o.spec != vs.spec => edit_svc.push(Op::EditService(*k, vs.spec.clone())),
            Some(_) => {}
        }
    }
    for ((k, a), rs) in &want.real_servers {
        match observed.real_servers.get(&(*k, *a)) {
            None => add_rs.push(Op::AddRealServer(*k, *a, rs.spec)),
            Some(o) if o.spec != rs.spec => edit_rs.push(Op::EditRealServer(*k, *a, rs.spec)),
            Some(_) => {}
        }
    }
    for (k, a) in observed.real_servers.keys() {
        if owns(k.vip) && !want.real_servers.contains_key(&(*k, *a)) {
            del_rs.push(Op::DeleteRealServer(*k, *a));
        }
    }
    for k in observed.services.keys() {
        if owns(k.vip) && !want.services.contains_key(k) {
            del_svc.push(Op::DeleteService(*k));
        }
    }
    if let (Some(want_addrs), Some(have_addrs)) = (&want.addresses, &observed.addresses) {
        add_addr.extend(want_addrs.difference(have_addrs).map(|a| Op::AddAddress(*a)));
        del_addr.extend(
            have_addrs
                .difference(want_addrs)
                .filter(|a| owns(**a))
                .map(|a| Op::DeleteAddress(*a)),
        );
    }

    let mut ops = Vec::new();
    if let (Some(ruleset), Some(have)) = (ruleset, &observed.rules)
        && nft::expected_state(ruleset) != *have
    {
        ops.push(Op::SetRules(Box::new(ruleset.clone())));
    }
    ops.extend(add_addr);
    for part in [add_svc, edit_svc, add_rs, edit_rs, del_rs, del_svc, del_addr] {
        ops.extend(part);
    }
    ops
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
