//! What must hold around forwarding, derived from the intent: which real servers' traffic is
//! source-translated to the appliance (full NAT), and which VIP ports admit only some sources
//! (`loadBalancerSourceRanges`). As facts ([`Rule`]), not as any backend's syntax: the nftables
//! part of the data plane turns each into a set element, another backend may turn them into
//! something else. The reconciler counts and diffs these.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{IpPrefix, NatMode, Protocol};

/// The source address full-NAT traffic leaves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatSource {
    /// `None`: masquerade, the primary address of the interface towards the node.
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// One `VIP:port/protocol` that is forwarded, as far as filtering and address translation need
/// to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRules {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: NatMode,
    /// The real servers: node addresses and NodePorts.
    pub backends: Vec<SocketAddr>,
    /// Who may connect (`loadBalancerSourceRanges`); empty means everyone. Prefixes of the other
    /// address family than the VIP's can never match its traffic and are left out.
    pub source_ranges: Vec<IpPrefix>,
}

/// Everything filtering and address translation must express.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub snat: SnatSource,
    pub forwards: Vec<PortRules>,
}

/// One fact of a [`Ruleset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Traffic to this real server is translated to the appliance's address (full NAT).
    FullNat { backend: SocketAddr, protocol: Protocol },
    /// This VIP port admits only the sources [`Rule::Allowed`] names.
    Restricted { vip: IpAddr, protocol: Protocol, port: u16 },
    /// This source prefix may reach this VIP port.
    Allowed {
        vip: IpAddr,
        protocol: Protocol,
        port: u16,
        prefix: IpPrefix,
    },
}

impl Rule {
    /// The full-NAT rule of one real server.
    pub fn full_nat(backend: SocketAddr, protocol: Protocol) -> Rule {
        Rule::FullNat { backend, protocol }
    }

    /// For an allowed source, the restriction of its VIP port.
    pub fn restriction(&self) -> Option<Rule> {
        match *self {
            Rule::Allowed {
                vip, protocol, port, ..
            } => Some(Rule::Restricted { vip, protocol, port }),
            _ => None,
        }
    }
}

impl PortRules {
    /// Every rule this port needs: the full-NAT rule of each real server (under full NAT), then
    /// its source rules.
    pub fn rules(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        if self.mode == NatMode::FullNat {
            out.extend(self.backends.iter().map(|b| Rule::full_nat(*b, self.protocol)));
        }
        out.extend(self.source_rules());
        out
    }

    /// The rules of its source ranges: each allowed prefix, then the restriction; none when
    /// everyone may connect (Kubernetes' meaning of an empty list).
    pub fn source_rules(&self) -> Vec<Rule> {
        if self.source_ranges.is_empty() {
            return Vec::new();
        }
        let (vip, protocol, port) = (self.vip, self.protocol, self.port);
        let mut out: Vec<Rule> = significant_ranges(&vip, &self.source_ranges)
            .into_iter()
            .map(|prefix| Rule::Allowed {
                vip,
                protocol,
                port,
                prefix,
            })
            .collect();
        out.push(Rule::Restricted { vip, protocol, port });
        out
    }
}

/// The VIP's family's prefixes without those inside another: the kernel's concatenated interval
/// sets refuse overlapping elements on some versions, and a covered prefix adds nothing.
fn significant_ranges(vip: &IpAddr, ranges: &[IpPrefix]) -> Vec<IpPrefix> {
    let same_family: BTreeSet<IpPrefix> = ranges
        .iter()
        .filter(|r| r.addr().is_ipv4() == vip.is_ipv4())
        .copied()
        .collect();
    same_family
        .iter()
        .filter(|r| !same_family.iter().any(|o| o != *r && o.contains(r)))
        .copied()
        .collect()
}
