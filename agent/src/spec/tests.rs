//! Table tests of what the appliance is told about a Service.

use super::*;
use crate::fixtures::{CLASS, annotate, service, with_spec};
use k8s_openapi::api::core::v1::{ClientIPConfig, LoadBalancerStatus, ServiceStatus, SessionAffinityConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn only_load_balancers_of_our_class_are_ours() {
    let cases: Vec<(&str, Service, bool, bool)> = vec![
        ("our class", service("d", "a"), false, true),
        (
            "other class",
            with_spec(service("d", "a"), |s| s.load_balancer_class = Some("other".into())),
            true,
            false,
        ),
        (
            "no class without --default-class",
            with_spec(service("d", "a"), |s| s.load_balancer_class = None),
            false,
            false,
        ),
        (
            "no class with --default-class",
            with_spec(service("d", "a"), |s| s.load_balancer_class = None),
            true,
            true,
        ),
        (
            "ClusterIP",
            with_spec(service("d", "a"), |s| s.type_ = Some("ClusterIP".into())),
            true,
            false,
        ),
        (
            "NodePort",
            with_spec(service("d", "a"), |s| s.type_ = Some("NodePort".into())),
            true,
            false,
        ),
    ];
    for (name, svc, default_class, want) in cases {
        assert_eq!(is_ours(&svc, CLASS, default_class), want, "{name}");
    }
}

#[test]
fn plain_service_becomes_a_plain_spec() {
    let spec = desired_spec(&service("default", "web"), &[]).expect("valid");
    assert_eq!(spec.uid, "uid-default-web");
    assert_eq!(
        spec.ports,
        vec![edgelb_api::ServicePort {
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: 30080
        }]
    );
    assert_eq!(spec.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(spec.ip_families, vec![IpFamily::Ipv4]);
    assert_eq!(spec.requested_ips, Vec::<IpAddr>::new());
    assert_eq!(spec.pool, None);
    assert_eq!(spec.local_nodes, None);
    assert_eq!(spec.health_check_node_port, None);
}

#[test]
fn annotations_and_fields_map_to_the_spec() {
    type Check = fn(&ServiceSpec) -> bool;
    let cases: Vec<(&str, Service, Check)> = vec![
        ("pool", annotate(service("d", "a"), ANNOTATION_POOL, "public"), |s| {
            s.pool.as_deref() == Some("public")
        }),
        (
            "scheduler",
            annotate(service("d", "a"), ANNOTATION_SCHEDULER, "rr"),
            |s| s.scheduler.as_deref() == Some("rr"),
        ),
        (
            "forwarding",
            annotate(service("d", "a"), ANNOTATION_FORWARDING, "direct"),
            |s| s.forwarding == Some(edgelb_api::Forwarding::Direct),
        ),
        ("no forwarding annotation: the pool's", service("d", "a"), |s| {
            s.forwarding.is_none()
        }),
        (
            "sharing key",
            annotate(service("d", "a"), ANNOTATION_SHARED, "k1"),
            |s| s.sharing_key.as_deref() == Some("k1"),
        ),
        (
            "empty annotation is absent",
            annotate(service("d", "a"), ANNOTATION_POOL, " "),
            |s| s.pool.is_none(),
        ),
        (
            "loadBalancerIP",
            with_spec(service("d", "a"), |s| s.load_balancer_ip = Some("192.0.2.7".into())),
            |s| s.requested_ips == vec!["192.0.2.7".parse::<IpAddr>().expect("ip")],
        ),
        (
            "annotation wins over loadBalancerIP",
            annotate(
                with_spec(service("d", "a"), |s| s.load_balancer_ip = Some("192.0.2.7".into())),
                ANNOTATION_IPS,
                "192.0.2.8",
            ),
            |s| s.requested_ips == vec!["192.0.2.8".parse::<IpAddr>().expect("ip")],
        ),
        (
            "dual-stack request",
            annotate(
                with_spec(service("d", "a"), |s| {
                    s.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
                    s.ip_family_policy = Some("RequireDualStack".into());
                }),
                ANNOTATION_IPS,
                "2001:db8::5, 192.0.2.5",
            ),
            |s| s.requested_ips.len() == 2 && s.ip_families == vec![IpFamily::Ipv6, IpFamily::Ipv4],
        ),
        (
            "SingleStack keeps the first family",
            with_spec(service("d", "a"), |s| {
                s.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
                s.ip_family_policy = Some("SingleStack".into());
            }),
            |s| s.ip_families == vec![IpFamily::Ipv6],
        ),
        (
            "PreferDualStack keeps both",
            with_spec(service("d", "a"), |s| {
                s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
                s.ip_family_policy = Some("PreferDualStack".into());
            }),
            |s| s.ip_families == vec![IpFamily::Ipv4, IpFamily::Ipv6],
        ),
        (
            "no ipFamilies: the requested address decides",
            annotate(
                with_spec(service("d", "a"), |s| s.ip_families = None),
                ANNOTATION_IPS,
                "2001:db8::9",
            ),
            |s| s.ip_families == vec![IpFamily::Ipv6],
        ),
        (
            "Local sends health check port and local nodes",
            with_spec(service("d", "a"), |s| {
                s.external_traffic_policy = Some("Local".into());
                s.health_check_node_port = Some(32000);
            }),
            |s| {
                s.external_traffic_policy == TrafficPolicy::Local
                    && s.health_check_node_port == Some(32000)
                    && s.local_nodes == Some(vec!["n1".to_owned()])
            },
        ),
        (
            "Cluster ignores a stray health check port",
            with_spec(service("d", "a"), |s| s.health_check_node_port = Some(32000)),
            |s| s.health_check_node_port.is_none() && s.local_nodes.is_none(),
        ),
        (
            "session affinity with timeout",
            with_spec(service("d", "a"), |s| {
                s.session_affinity = Some("ClientIP".into());
                s.session_affinity_config = Some(SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(600),
                    }),
                });
            }),
            |s| s.session_affinity == SessionAffinity::ClientIp && s.session_affinity_timeout_seconds == Some(600),
        ),
        (
            "source ranges",
            with_spec(service("d", "a"), |s| {
                s.load_balancer_source_ranges = Some(vec!["10.0.0.0/8".into()]);
            }),
            |s| s.source_ranges == vec!["10.0.0.0/8".to_owned()],
        ),
        (
            "UDP and SCTP ports",
            with_spec(service("d", "a"), |s| {
                s.ports = Some(vec![
                    k8s_openapi::api::core::v1::ServicePort {
                        protocol: Some("UDP".into()),
                        port: 53,
                        node_port: Some(30053),
                        ..Default::default()
                    },
                    k8s_openapi::api::core::v1::ServicePort {
                        protocol: Some("SCTP".into()),
                        port: 9000,
                        node_port: Some(30900),
                        ..Default::default()
                    },
                ])
            }),
            |s| {
                s.ports[0].protocol == Protocol::Udp
                    && s.ports[1].protocol == Protocol::Sctp
                    && s.ports[0].name.is_none()
            },
        ),
    ];
    for (name, svc, check) in cases {
        let spec = desired_spec(&svc, &["n1".to_owned()]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(check(&spec), "{name}: {spec:?}");
    }
}

#[test]
fn invalid_services_are_refused_with_a_reason() {
    let cases: Vec<(&str, Service, &str)> = vec![
        (
            "bad address",
            annotate(service("d", "a"), ANNOTATION_IPS, "192.0.2.300"),
            "is not an IP address",
        ),
        (
            "two of one family",
            annotate(service("d", "a"), ANNOTATION_IPS, "192.0.2.1,192.0.2.2"),
            "at most one IPv4",
        ),
        (
            "no node port",
            with_spec(service("d", "a"), |s| {
                if let Some(p) = s.ports.as_mut() {
                    p[0].node_port = None;
                }
            }),
            "has no nodePort",
        ),
        (
            "no ports",
            with_spec(service("d", "a"), |s| s.ports = None),
            "has no ports",
        ),
        (
            "RequireDualStack with one family",
            with_spec(service("d", "a"), |s| {
                s.ip_family_policy = Some("RequireDualStack".into())
            }),
            "RequireDualStack",
        ),
        (
            "unknown forwarding method",
            annotate(service("d", "a"), ANNOTATION_FORWARDING, "dsr"),
            "edgelb.io/forwarding: unknown forwarding method 'dsr': use fullnat, nat, direct or tunnel",
        ),
    ];
    for (name, svc, want) in cases {
        let err = desired_spec(&svc, &[]).expect_err(name);
        assert!(err.0.contains(want), "{name}: {err}");
    }
}

#[test]
fn status_reads_ips_and_writes_vip_mode() {
    let mut svc = service("d", "a");
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress_for(&[ip("192.0.2.1"), ip("2001:db8::1")])),
        }),
        ..Default::default()
    });
    assert_eq!(status_ips(&svc), vec![ip("192.0.2.1"), ip("2001:db8::1")]);
    assert!(status_ingress(&svc).iter().all(|i| i.ip_mode.as_deref() == Some("VIP")));
    assert!(status_ips(&service("d", "b")).is_empty());
}
