//! A Service's spec as forwarding reads it, parsed once where it leaves the store
//! ([`ParsedService`]), with the rules every reader applies the same way: which nodes may receive
//! its traffic, which scheduler its virtual services get (its own, else its pool's, else
//! [`DEFAULT_SCHEDULER`]), and its persistence. The reconciler plans from it and the console shows
//! it; neither recomputes these.

use std::ops::Deref;

use edgelb_api::{Forwarding, Node, ServiceSpec, SessionAffinity, TrafficPolicy};

use super::{IpPrefix, NatMode, Scheduler, VsSpec};

/// The scheduler of a Service whose pool names none (a pool always does; a test may not).
pub const DEFAULT_SCHEDULER: &str = "wlc";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// A Service's spec with what forwarding derives from it parsed: its source ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedService {
    spec: ServiceSpec,
    /// All the ranges, of both families: a non-empty list restricts every VIP of the Service,
    /// and each VIP admits only its own family's prefixes ([`super::PortRules::source_rules`]).
    /// Filtering by family here would turn `["10.0.0.0/8"]` into an empty list, which means
    /// "everyone", for the IPv6 VIP of a dual-stack Service.
    source_ranges: Vec<IpPrefix>,
}

impl ParsedService {
    /// Parses what forwarding needs of `spec`; the error names the source range that does not
    /// parse (the store validates specs on writing, so for a stored one this means corruption).
    pub fn parse(spec: ServiceSpec) -> Result<ParsedService, String> {
        let source_ranges = spec
            .source_ranges
            .iter()
            .enumerate()
            .map(|(i, r)| r.parse::<IpPrefix>().map_err(|e| format!("source_ranges[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ParsedService { spec, source_ranges })
    }

    /// The spec as given.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Who may connect; empty means everyone.
    pub fn source_ranges(&self) -> &[IpPrefix] {
        &self.source_ranges
    }

    /// The scheduler of its virtual services ([`scheduler_of`]).
    pub fn scheduler(&self, pool_scheduler: Option<&str>) -> Scheduler {
        scheduler_of(&self.spec, pool_scheduler)
    }

    /// Its persistence ([`persistence_of`]).
    pub fn persistence(&self) -> Option<u32> {
        persistence_of(&self.spec)
    }

    /// The virtual-service settings of each of its VIPs' ports, in a pool with that scheduler.
    pub fn vs_spec(&self, pool_scheduler: Option<&str>) -> VsSpec {
        VsSpec {
            scheduler: self.scheduler(pool_scheduler),
            persistence: self.persistence(),
        }
    }

    /// How its traffic reaches the nodes ([`forwarding_of`]).
    pub fn forwarding(&self, pool: Option<Forwarding>, default: NatMode) -> Forwarding {
        forwarding_of(&self.spec, pool, default)
    }

    /// Whether a node may receive its traffic ([`admits`]).
    pub fn admits(&self, node: &Node) -> bool {
        admits(&self.spec, node)
    }
}

/// How a Service's traffic reaches the nodes: its own method, else its pool's, else the
/// appliance's NAT mode (`--nat`: full, or plain).
pub fn forwarding_of(spec: &ServiceSpec, pool: Option<Forwarding>, default: NatMode) -> Forwarding {
    spec.forwarding.or(pool).unwrap_or(match default {
        NatMode::FullNat => Forwarding::Fullnat,
        NatMode::PlainNat => Forwarding::Nat,
    })
}

/// The scheduler of a Service's virtual services: its own, else its pool's, else the default.
pub fn scheduler_of(spec: &ServiceSpec, pool_scheduler: Option<&str>) -> Scheduler {
    Scheduler::from_name(
        spec.scheduler
            .as_deref()
            .or(pool_scheduler)
            .unwrap_or(DEFAULT_SCHEDULER),
    )
}

/// Persistence in seconds under `sessionAffinity: ClientIP` (Kubernetes' default timeout when
/// none is given); `None` otherwise.
pub fn persistence_of(spec: &ServiceSpec) -> Option<u32> {
    (spec.session_affinity == SessionAffinity::ClientIp).then(|| {
        spec.session_affinity_timeout_seconds
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    })
}

/// Whether a node may receive a Service's traffic at all: Ready, schedulable, and not labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers`; for `externalTrafficPolicy: Local`
/// also one of the nodes the agent reported with local endpoints (when it reported them).
pub fn admits(spec: &ServiceSpec, node: &Node) -> bool {
    if !node.ready || !node.schedulable || node.excluded {
        return false;
    }
    match (&spec.external_traffic_policy, &spec.local_nodes) {
        (TrafficPolicy::Local, Some(local)) => local.contains(&node.name),
        _ => true,
    }
}

impl Deref for ParsedService {
    type Target = ServiceSpec;

    fn deref(&self) -> &ServiceSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use edgelb_api::{Protocol, ServicePort};

    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec::new("u1", vec![ServicePort::new(Protocol::Tcp, 80, 30080)])
    }

    #[test]
    fn a_range_that_does_not_parse_is_named_and_good_ones_are_kept_in_order() {
        let bad = ServiceSpec {
            source_ranges: vec!["10.0.0.0/8".into(), "10.0.0.1/99".into()],
            ..spec()
        };
        let err = ParsedService::parse(bad).expect_err("a prefix longer than the address");
        assert!(err.starts_with("source_ranges[1]: "), "{err}");
        let good = ServiceSpec {
            source_ranges: vec!["2001:db8::/32".into(), "10.0.0.0/8".into()],
            ..spec()
        };
        let p = ParsedService::parse(good).expect("valid");
        let shown: Vec<String> = p.source_ranges().iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["2001:db8::/32", "10.0.0.0/8"]);
    }

    #[test]
    fn only_ready_schedulable_included_nodes_are_admitted_and_under_local_only_those_reported() {
        let node = |name: &str, ready, schedulable, excluded| Node {
            name: name.into(),
            addresses: vec!["10.0.0.1".parse().expect("ip")],
            ready,
            schedulable,
            excluded,
            no_tunnel: false,
        };
        let nodes = [
            node("a", true, true, false),
            node("b", false, true, false),
            node("c", true, false, false),
            node("d", true, true, true),
            node("e", true, true, false),
        ];
        let admitted = |spec: &ServiceSpec| -> Vec<&str> {
            nodes
                .iter()
                .filter(|n| admits(spec, n))
                .map(|n| n.name.as_str())
                .collect()
        };
        assert_eq!(admitted(&spec()), ["a", "e"]);
        let local = ServiceSpec {
            external_traffic_policy: TrafficPolicy::Local,
            local_nodes: Some(vec!["e".to_owned()]),
            ..spec()
        };
        assert_eq!(admitted(&local), ["e"]);
        let unreported = ServiceSpec {
            local_nodes: None,
            ..local
        };
        assert_eq!(admitted(&unreported), ["a", "e"], "no report yet: every eligible node");
    }

    #[test]
    fn scheduler_falls_back_to_the_pool_then_the_default_and_affinity_to_three_hours() {
        let plain = ParsedService::parse(spec()).expect("valid");
        assert_eq!(plain.scheduler(Some("mh")).as_str(), "mh");
        assert_eq!(plain.scheduler(None).as_str(), DEFAULT_SCHEDULER);
        assert_eq!(plain.persistence(), None);
        let own = ParsedService::parse(ServiceSpec {
            scheduler: Some("rr".into()),
            session_affinity: SessionAffinity::ClientIp,
            ..spec()
        })
        .expect("valid");
        assert_eq!(own.vs_spec(Some("mh")).scheduler.as_str(), "rr");
        assert_eq!(own.persistence(), Some(DEFAULT_AFFINITY_TIMEOUT));
    }
}
