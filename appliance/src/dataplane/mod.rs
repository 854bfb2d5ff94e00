//! The only module that speaks to the kernel: IPVS over generic netlink (`ipvs`), VIP addresses,
//! announcements and nftables. Wire types never leave this module.
//!
//! The reconciler talks to the kernel through the [`Dataplane`] trait, in the terms of [`State`]
//! and [`Op`]: virtual services keyed by (VIP, port, protocol) and their real servers. The Linux
//! implementation ([`LinuxDataplane`]) programs IPVS with pipelined batches; [`FakeDataplane`]
//! keeps the same state in memory and records every operation, for unit tests. Nothing here
//! decides what should exist: that is the reconciler's plan. Besides IPVS, a data plane may
//! manage the VIP addresses on an interface ([`addr`], announced with [`announce`]) and its own
//! nftables table ([`nft`]); [`Manages`] says which, and state it does not manage stays `None`.

pub mod addr;
pub mod announce;
mod fake;
pub mod ipvs;
mod linux;
pub mod nft;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

pub use edgelb_api::Protocol;
pub use fake::FakeDataplane;
pub use linux::{LinuxDataplane, LinuxOptions};

/// A virtual service's identity: what a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VsKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VsKey {
    pub fn new(vip: IpAddr, port: u16, protocol: Protocol) -> VsKey {
        VsKey { vip, port, protocol }
    }
}

impl std::fmt::Display for VsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol, SocketAddr::new(self.vip, self.port))
    }
}

/// How a virtual service balances: what an in-place edit can change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VsSpec {
    /// IPVS scheduler name (`rr`, `wlc`, `sh`, ...).
    pub scheduler: String,
    /// Persistence timeout in seconds (`sessionAffinity: ClientIP`), `None` for none.
    pub persistence: Option<u32>,
}

/// How IPVS reaches a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT (`ipvsadm -m`): the only method that reaches NodePorts on other hosts.
    Masquerade,
    /// Direct routing (`-g`).
    Route,
    /// IP-in-IP (`-i`).
    Tunnel,
    /// Local node or bypass: never set by edgelb, seen only in foreign state.
    Other,
}

/// A real server's settings: what an in-place edit can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RsSpec {
    pub weight: u32,
    pub forward: Forward,
}

impl RsSpec {
    pub fn masquerade(weight: u32) -> RsSpec {
        RsSpec {
            weight,
            forward: Forward::Masquerade,
        }
    }
}

/// Traffic counters of a virtual service or real server, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Established connections now (real servers only).
    pub active_connections: u32,
    /// Other connections still in the table now (real servers only).
    pub inactive_connections: u32,
}

/// A virtual service as observed (counters filled) or desired (counters zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub spec: VsSpec,
    pub counters: Counters,
}

/// A real server of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    pub spec: RsSpec,
    pub counters: Counters,
}

/// The forwarding state: desired (built from the store) or observed (dumped from the kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub services: BTreeMap<VsKey, VirtualService>,
    pub real_servers: BTreeMap<(VsKey, SocketAddr), RealServer>,
    /// VIP addresses claimed on the appliance's interface; `None` when this data plane does not
    /// manage addresses (then the plan leaves them alone).
    pub addresses: Option<BTreeSet<IpAddr>>,
    /// The content of the appliance's nftables table (full-NAT and source-range sets); `None`
    /// when this data plane does not manage it.
    pub rules: Option<nft::TableState>,
}

/// What a data plane manages besides IPVS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Manages {
    /// VIP host addresses on its interface.
    pub addresses: bool,
    /// Its own nftables table.
    pub rules: bool,
    /// How forwarded traffic is translated (full NAT unless configured otherwise).
    pub nat: nft::NatMode,
}

impl State {
    /// The real servers of one virtual service, in address order.
    pub fn real_servers_of(&self, key: VsKey) -> impl Iterator<Item = (SocketAddr, &RealServer)> {
        // The smallest socket address: IPv4 sorts before IPv6, and 0.0.0.0:0 first of all.
        let start = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
        self.real_servers
            .range((key, start)..)
            .take_while(move |((k, _), _)| *k == key)
            .map(|((_, a), rs)| (*a, rs))
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
                    for (set, e) in delete {
                        if !rules.sets.get_mut(*set).is_some_and(|s| s.remove(e)) {
                            return Err(format!("element {e} not in set {set}"));
                        }
                    }
                    for (set, e) in add {
                        rules.sets.entry((*set).to_owned()).or_default().insert(e.clone());
                    }
                    Ok(())
                }
                None => Err("rules are not managed".into()),
            },
            Op::DeleteElements(elements) => match &mut state.rules {
                Some(rules) => {
                    for (set, e) in elements {
                        if !rules.sets.get_mut(*set).is_some_and(|s| s.remove(e)) {
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
                let gone: Vec<SocketAddr> = state.real_servers_of(*k).map(|(a, _)| a).collect();
                for a in gone {
                    state.real_servers.remove(&(*k, a));
                }
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
    /// Replace the appliance's nftables table with this content (one atomic `nft -f`).
    SetRules(Box<nft::Ruleset>),
    /// Change the table's sets in one transaction, deletions first (one Service's change,
    /// without rewriting the table). Deleting first lets a source range be replaced by one
    /// that overlaps it: the kernel refuses overlapping elements in an interval set.
    PatchElements {
        delete: Vec<nft::Element>,
        add: Vec<nft::Element>,
    },
    /// Delete elements from the table's sets.
    DeleteElements(Vec<nft::Element>),
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

/// Why the data plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// IPVS cannot be used at all (no module, no permission): the appliance must not start.
    #[error("IPVS is not usable: {0}")]
    Unavailable(String),
    #[error("reading the kernel's state: {0}")]
    Observe(String),
    /// Some operations failed; the others were applied. The next pass retries from a new dump.
    #[error("{} of {total} operation(s) failed; first: {}", .failed.len(), .failed.first().map(|(op, e)| format!("{op}: {e}")).unwrap_or_default())]
    Apply { total: usize, failed: Vec<(Op, String)> },
}

/// The kernel as the reconciler sees it.
pub trait Dataplane: Send + Sync + 'static {
    /// `ipvs`, `fake`, ... for logs and the API.
    fn name(&self) -> &'static str;

    /// What it manages besides IPVS.
    fn manages(&self) -> Manages {
        Manages::default()
    }

    /// Dumps what the kernel holds now, with counters.
    fn observe(&self) -> impl Future<Output = Result<State, DataplaneError>> + Send;

    /// Applies the operations in the order given. Every operation is attempted; failures are
    /// reported together.
    fn apply(&self, ops: &[Op]) -> impl Future<Output = Result<(), DataplaneError>> + Send;
}
