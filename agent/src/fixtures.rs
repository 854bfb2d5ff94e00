//! Builders for test objects (Services, Nodes, EndpointSlices), shared by the unit tests, the
//! integration tests and the benchmark. Nothing here is used by the agent itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use kube::api::ObjectMeta;

/// The class the agent serves by default.
pub const CLASS: &str = "edgelb.io/appliance";

/// A `type: LoadBalancer` Service of our class with one TCP port 80 -> nodePort 30080,
/// single-stack IPv4, as the API server would default it.
pub fn service(namespace: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            load_balancer_class: Some(CLASS.to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: 80,
                node_port: Some(30080),
                ..Default::default()
            }]),
            external_traffic_policy: Some("Cluster".to_owned()),
            session_affinity: Some("None".to_owned()),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ip_family_policy: Some("SingleStack".to_owned()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Adds an annotation.
pub fn annotate(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
    svc
}

/// Edits the spec in place and returns the Service.
pub fn with_spec(mut svc: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        f(spec);
    }
    svc
}

/// A Ready, schedulable node with an InternalIP (and an ExternalIP when given).
pub fn node(name: &str, internal: &str, external: Option<&str>) -> Node {
    let mut addresses = vec![NodeAddress {
        type_: "InternalIP".to_owned(),
        address: internal.to_owned(),
    }];
    if let Some(e) = external {
        addresses.push(NodeAddress {
            type_: "ExternalIP".to_owned(),
            address: e.to_owned(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".to_owned(),
        address: name.to_owned(),
    });
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            addresses: Some(addresses),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// An EndpointSlice of Service `service` with one endpoint per `(node, ready)`.
pub fn endpoint_slice(namespace: &str, name: &str, service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                crate::nodes::SERVICE_NAME_LABEL.to_owned(),
                service.to_owned(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (node, ready))| Endpoint {
                addresses: vec![format!("10.244.0.{}", i + 1)],
                node_name: Some((*node).to_owned()),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: None,
    }
}
