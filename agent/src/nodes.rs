//! The node list the appliance forwards to, and the nodes with ready endpoints of a Service:
//! pure functions over Kubernetes Nodes and EndpointSlices, no I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Nodes with this label receive no load balancer traffic.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Annotation by which a node's operator says whether it takes IPVS tunnel traffic (`"false"`: it
/// does not; anything else, or none: it does).
pub const TUNNEL_ANNOTATION: &str = "edgelb.io/tunnel";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which node address type is preferred for forwarding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressPreference {
    #[default]
    #[value(name = "InternalIP")]
    InternalIp,
    #[value(name = "ExternalIP")]
    ExternalIp,
}

impl AddressPreference {
    fn order(self) -> [&'static str; 2] {
        match self {
            AddressPreference::InternalIp => ["InternalIP", "ExternalIP"],
            AddressPreference::ExternalIp => ["ExternalIP", "InternalIP"],
        }
    }
}

impl FromStr for AddressPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "InternalIP" => Ok(AddressPreference::InternalIp),
            "ExternalIP" => Ok(AddressPreference::ExternalIp),
            other => Err(format!("{other:?} is neither InternalIP nor ExternalIP")),
        }
    }
}

/// One node as the appliance sees it; `None` for a node without a usable address (it cannot
/// be forwarded to, and naming it would only make the appliance probe nothing).
pub fn node_entry(node: &Node, pref: AddressPreference) -> Option<edgelb_api::Node> {
    let name = node.metadata.name.clone()?;
    let status = node.status.as_ref();
    let all = status.and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for kind in pref.order() {
        for a in all.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = a.address.parse::<IpAddr>()
                && !addresses.contains(&ip)
            {
                addresses.push(ip);
            }
        }
    }
    if addresses.is_empty() {
        return None;
    }
    let ready = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    // Set by the node's operator: whether it has a tunnel device up for IPVS's IP-in-IP.
    let no_tunnel = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TUNNEL_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    Some(edgelb_api::Node {
        name,
        addresses,
        ready,
        schedulable,
        excluded,
        no_tunnel,
    })
}

/// The whole node list, sorted by name so that equal clusters give equal lists.
pub fn node_list<'a>(nodes: impl IntoIterator<Item = &'a Node>, pref: AddressPreference) -> edgelb_api::NodeList {
    let mut nodes: Vec<edgelb_api::Node> = nodes.into_iter().filter_map(|n| node_entry(n, pref)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    edgelb_api::NodeList { nodes }
}

/// The nodes that hold a ready endpoint in these slices (of one Service), sorted. An endpoint
/// whose `ready` condition is unset counts as ready, as the EndpointSlice API defines.
pub fn local_nodes<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for slice in slices {
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if ready && let Some(node) = &ep.node_name {
                out.insert(node.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The Service an EndpointSlice belongs to, as `(namespace, name)`.
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone()?, name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{endpoint_slice, node};
    use std::collections::BTreeMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn node_entries_follow_the_address_preference_and_conditions() {
        let mut not_ready = node("n2", "10.0.0.2", None);
        if let Some(c) = not_ready.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].status = "False".into();
        }
        let mut cordoned = node("n3", "10.0.0.3", None);
        cordoned.spec.get_or_insert_default().unschedulable = Some(true);
        let mut excluded = node("n4", "10.0.0.4", None);
        excluded.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.to_owned(), String::new())]));
        let mut no_address = node("n5", "10.0.0.5", None);
        no_address.status.get_or_insert_default().addresses = None;
        let dual = node("n6", "fd00::6", Some("203.0.113.6"));

        type Want = Option<(Vec<IpAddr>, bool, bool, bool)>;
        let cases: Vec<(&str, Node, AddressPreference, Want)> = vec![
            (
                "internal first",
                node("n1", "10.0.0.1", Some("203.0.113.1")),
                AddressPreference::InternalIp,
                Some((vec![ip("10.0.0.1"), ip("203.0.113.1")], true, true, false)),
            ),
            (
                "external first",
                node("n1", "10.0.0.1", Some("203.0.113.1")),
                AddressPreference::ExternalIp,
                Some((vec![ip("203.0.113.1"), ip("10.0.0.1")], true, true, false)),
            ),
            (
                "not ready",
                not_ready,
                AddressPreference::InternalIp,
                Some((vec![ip("10.0.0.2")], false, true, false)),
            ),
            (
                "cordoned",
                cordoned,
                AddressPreference::InternalIp,
                Some((vec![ip("10.0.0.3")], true, false, false)),
            ),
            (
                "excluded",
                excluded,
                AddressPreference::InternalIp,
                Some((vec![ip("10.0.0.4")], true, true, true)),
            ),
            ("no address", no_address, AddressPreference::InternalIp, None),
            (
                "hostname is no address",
                dual,
                AddressPreference::InternalIp,
                Some((vec![ip("fd00::6"), ip("203.0.113.6")], true, true, false)),
            ),
        ];
        for (name, n, pref, want) in cases {
            let got = node_entry(&n, pref).map(|e| (e.addresses, e.ready, e.schedulable, e.excluded));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_node_annotated_without_a_tunnel_says_so_and_any_other_value_takes_tunnels() {
        let annotated = |v: Option<&str>| {
            let mut n = node("n1", "10.0.0.1", None);
            n.metadata.annotations = v.map(|v| BTreeMap::from([(TUNNEL_ANNOTATION.to_owned(), v.to_owned())]));
            node_entry(&n, AddressPreference::InternalIp).expect("entry").no_tunnel
        };
        assert!(annotated(Some("false")));
        assert!(annotated(Some(" False ")));
        assert!(!annotated(Some("true")));
        assert!(!annotated(None));
    }

    #[test]
    fn node_list_is_sorted_and_skips_unusable_nodes() {
        let mut bare = node("a", "10.0.0.9", None);
        bare.status = None;
        let nodes = [node("c", "10.0.0.3", None), bare, node("b", "10.0.0.2", None)];
        let list = node_list(&nodes, AddressPreference::InternalIp);
        let names: Vec<&str> = list.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn local_nodes_are_those_with_ready_endpoints() {
        let slices = [
            endpoint_slice("d", "web-1", "web", &[("n2", true), ("n1", false)]),
            endpoint_slice("d", "web-2", "web", &[("n3", true), ("n2", true)]),
        ];
        assert_eq!(local_nodes(&slices), ["n2", "n3"]);
        assert!(local_nodes(&[]).is_empty());
        assert_eq!(slice_service(&slices[0]), Some(("d".to_owned(), "web".to_owned())));
    }
}
