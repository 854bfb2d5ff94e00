//! What the appliance forwards, in terms no backend owns: virtual services keyed by (VIP,
//! port, protocol) with their scheduler and persistence, real servers with their weight and
//! forwarding method, traffic counters, address prefixes (source ranges) and how replies find
//! their way back ([`NatMode`]), and what filtering and address translation must hold around
//! forwarding ([`Ruleset`], [`Rule`]). The data plane (IPVS and nftables today) programs these; the
//! reconciler plans in them; the HTTP layer reads the forwarding status through [`StatusView`]
//! only. Nothing here speaks to the kernel.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

pub use edgelb_api::Protocol;
use edgelb_api::{DataplaneStatus, SCHEDULERS, VirtualServiceStatus};

mod rules;
mod service;
pub use rules::{PortRules, Rule, Ruleset, SnatSource};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT, DEFAULT_SCHEDULER, ParsedService, admits, forwarding_of, persistence_of, scheduler_of,
};

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
    pub scheduler: Scheduler,
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

impl Forward {
    /// Its name in the API's status (`RealServerStatus.method`).
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Masquerade => "masquerade",
            Forward::Route => "route",
            Forward::Tunnel => "tunnel",
            Forward::Other => "other",
        }
    }

    /// The IPVS method a forwarding setting uses: both NAT settings masquerade (they differ in
    /// the source NAT around it).
    pub fn of(forwarding: edgelb_api::Forwarding) -> Forward {
        match forwarding {
            edgelb_api::Forwarding::Fullnat | edgelb_api::Forwarding::Nat => Forward::Masquerade,
            edgelb_api::Forwarding::Direct => Forward::Route,
            edgelb_api::Forwarding::Tunnel => Forward::Tunnel,
        }
    }
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

/// A virtual service's scheduler: how it picks a real server for a new connection (IPVS's
/// names, see ipvsadm(8)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheduler {
    /// One the appliance offers ([`SCHEDULERS`]).
    Known(&'static str),
    /// One the appliance does not offer, seen in the kernel on a virtual service someone else
    /// made or changed: the plan replaces it.
    Other(Box<str>),
}

impl Scheduler {
    /// The scheduler of that name: one of [`SCHEDULERS`], or [`Scheduler::Other`].
    pub fn from_name(name: &str) -> Scheduler {
        match SCHEDULERS.iter().find(|s| **s == name) {
            Some(s) => Scheduler::Known(s),
            None => Scheduler::Other(name.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Scheduler::Known(s) => s,
            Scheduler::Other(s) => s,
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Scheduler {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for Scheduler {
    fn from(name: &str) -> Scheduler {
        Scheduler::from_name(name)
    }
}

/// What a forwarding backend manages besides forwarding itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Manages {
    /// VIP host addresses on its interface (through its announcer).
    pub addresses: bool,
    /// Its own nftables table (full NAT and source ranges).
    pub rules: bool,
    /// How forwarded traffic is translated (full NAT unless configured otherwise).
    pub nat: NatMode,
}

/// What a forwarding backend can do: what the appliance may accept (a scheduler the backend
/// lacks is refused with the reason) and what the reconciler may plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub schedulers: Vec<Scheduler>,
    pub protocols: Vec<Protocol>,
    pub methods: Vec<Forward>,
    pub manages: Manages,
}

impl Capabilities {
    /// What Linux IPVS offers: every scheduler of [`SCHEDULERS`], TCP, UDP and SCTP, NAT (the
    /// method that reaches NodePorts on other hosts), direct routing and IP-in-IP tunnels.
    pub fn ipvs(manages: Manages) -> Capabilities {
        Capabilities {
            schedulers: SCHEDULERS.iter().map(|s| Scheduler::from_name(s)).collect(),
            protocols: vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            methods: vec![Forward::Masquerade, Forward::Route, Forward::Tunnel],
            manages,
        }
    }

    /// Whether the scheduler named `name` is offered; otherwise the error says which are.
    pub fn check_scheduler(&self, name: &str) -> Result<(), String> {
        if self.schedulers.iter().any(|s| s.as_str() == name) {
            return Ok(());
        }
        let offered: Vec<&str> = self.schedulers.iter().map(Scheduler::as_str).collect();
        Err(format!("unknown scheduler '{name}': use one of {}", offered.join(", ")))
    }

    /// Whether the backend offers the method a forwarding setting needs; otherwise the error
    /// says which settings it offers.
    pub fn check_forwarding(&self, forwarding: edgelb_api::Forwarding) -> Result<(), String> {
        let offered: Vec<&str> = edgelb_api::Forwarding::ALL
            .into_iter()
            .filter(|f| self.methods.contains(&Forward::of(*f)))
            .map(edgelb_api::Forwarding::as_str)
            .collect();
        if offered.contains(&forwarding.as_str()) {
            return Ok(());
        }
        Err(format!(
            "this appliance's data plane cannot forward with '{forwarding}': use one of {}",
            offered.join(", ")
        ))
    }

    /// Whether the backend forwards `protocol`; otherwise the error says which it does.
    pub fn check_protocol(&self, protocol: Protocol) -> Result<(), String> {
        if self.protocols.contains(&protocol) {
            return Ok(());
        }
        let offered: Vec<String> = self.protocols.iter().map(Protocol::to_string).collect();
        Err(format!(
            "this appliance's data plane does not forward {protocol}: it forwards {}",
            offered.join(", ")
        ))
    }
}

/// How replies from the nodes find their way back to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatMode {
    /// Source NAT to the appliance's address: nodes answer the appliance, which works whatever
    /// their default route is. The client's address is not visible to the Service.
    #[default]
    FullNat,
    /// No source NAT: the client's address reaches the Service, and replies come back only if
    /// the appliance is the nodes' gateway.
    PlainNat,
}

/// An address prefix such as `198.51.100.0/24`, with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The prefix of `len` bits containing `addr`; host bits are cleared. `None` if `len` is
    /// longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return None,
        };
        Some(Self { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is one address (/32, /128) rather than a network.
    pub fn is_host(&self) -> bool {
        self.len == max_len(&self.addr)
    }

    /// Whether every address of `other` is inside this prefix.
    pub fn contains(&self, other: &IpPrefix) -> bool {
        other.len >= self.len && IpPrefix::new(other.addr, self.len).is_some_and(|p| p.addr == self.addr)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl From<IpAddr> for IpPrefix {
    fn from(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(&addr),
        }
    }
}

/// Text that is not an address prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address prefix such as 198.51.100.0/24")]
pub struct NotAPrefix(pub String);

impl FromStr for IpPrefix {
    type Err = NotAPrefix;

    /// `ADDR/LEN`, or a bare address meaning a single host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || NotAPrefix(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr = addr.parse::<IpAddr>().map_err(|_| invalid())?;
                let len = len.parse::<u8>().map_err(|_| invalid())?;
                IpPrefix::new(addr, len).ok_or_else(invalid)
            }
            None => s.parse::<IpAddr>().map(IpPrefix::from).map_err(|_| invalid()),
        }
    }
}

/// nft prints a host prefix as the bare address; so do we, so rendered and read-back elements
/// compare equal.
impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// The forwarding status as the reconciler last published it, read-only: what `/readyz`,
/// `/metrics`, the Service status endpoint and the console read. Only virtual services and real
/// servers on the appliance's own addresses are shown.
pub trait StatusView: fmt::Debug + Send + Sync {
    /// How the last pass went (mode, counts, errors), without the virtual services.
    fn summary(&self) -> &DataplaneStatus;

    /// The summary with every virtual service.
    fn status(&self) -> DataplaneStatus;

    /// One virtual service as the kernel holds it, `None` when it is not programmed.
    fn virtual_service(&self, key: VsKey) -> Option<VirtualServiceStatus>;

    /// How many real servers there are, and which are drained (weight 0).
    fn real_servers(&self) -> (usize, Vec<(VsKey, SocketAddr)>);
}

/// A status with no virtual services: what a data plane that has not published yet (or a
/// control-plane-only appliance) shows.
impl StatusView for DataplaneStatus {
    fn summary(&self) -> &DataplaneStatus {
        self
    }

    fn status(&self) -> DataplaneStatus {
        self.clone()
    }

    fn virtual_service(&self, _: VsKey) -> Option<VirtualServiceStatus> {
        None
    }

    fn real_servers(&self) -> (usize, Vec<(VsKey, SocketAddr)>) {
        (0, Vec::new())
    }
}

/// Where the latest [`StatusView`] is read: the reconciler's last publication, taken when
/// asked, never a copy kept by the reader.
#[derive(Clone)]
pub struct StatusFeed(Arc<dyn Fn() -> Arc<dyn StatusView> + Send + Sync>);

impl StatusFeed {
    pub fn new(latest: impl Fn() -> Arc<dyn StatusView> + Send + Sync + 'static) -> StatusFeed {
        StatusFeed(Arc::new(latest))
    }

    /// A feed that always shows `view`.
    pub fn fixed(view: Arc<dyn StatusView>) -> StatusFeed {
        StatusFeed::new(move || view.clone())
    }

    pub fn latest(&self) -> Arc<dyn StatusView> {
        (self.0)()
    }
}

impl fmt::Debug for StatusFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StatusFeed").field(&self.latest()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_scheduler_is_known_by_its_name_and_others_are_kept() {
        for name in SCHEDULERS {
            let s = Scheduler::from_name(name);
            assert!(matches!(s, Scheduler::Known(_)), "{name}");
            assert_eq!(s.as_str(), *name);
        }
        let other = Scheduler::from_name("fastest");
        assert_eq!(other, Scheduler::Other("fastest".into()));
        assert_eq!(other.to_string(), "fastest");
    }

    #[test]
    fn a_scheduler_the_backend_lacks_is_refused_naming_the_ones_it_has() {
        let ipvs = Capabilities::ipvs(Manages::default());
        assert_eq!(ipvs.check_scheduler("wlc"), Ok(()));
        let err = ipvs.check_scheduler("WLC").expect_err("names are exact");
        assert!(err.contains("'WLC'") && err.contains("rr, wrr"), "{err}");
        let narrow = Capabilities {
            schedulers: vec![Scheduler::from_name("rr")],
            ..ipvs
        };
        assert_eq!(
            narrow.check_scheduler("mh"),
            Err("unknown scheduler 'mh': use one of rr".to_owned())
        );
    }

    fn ipvs_forwarding(c: &Capabilities) -> Result<(), String> {
        edgelb_api::Forwarding::ALL
            .into_iter()
            .try_for_each(|f| c.check_forwarding(f))
    }

    #[test]
    fn a_protocol_the_backend_lacks_is_refused_naming_the_ones_it_has() {
        let ipvs = Capabilities::ipvs(Manages::default());
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(ipvs.check_protocol(p), Ok(()), "IPVS forwards {p}");
        }
        let narrow = Capabilities {
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            ..ipvs
        };
        let masquerade_only = Capabilities {
            methods: vec![Forward::Masquerade],
            ..narrow.clone()
        };
        assert_eq!(ipvs_forwarding(&narrow), Ok(()));
        assert_eq!(
            masquerade_only.check_forwarding(edgelb_api::Forwarding::Tunnel),
            Err("this appliance's data plane cannot forward with 'tunnel': use one of fullnat, nat".to_owned())
        );
        assert_eq!(
            narrow.check_protocol(Protocol::Sctp),
            Err("this appliance's data plane does not forward SCTP: it forwards TCP, UDP".to_owned())
        );
    }
}
