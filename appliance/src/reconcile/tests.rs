//! Tests of the reconciler: the plan as tables of (desired, observed) -> ops, the desired state
//! from snapshots, and the loop against the fake data plane over a real store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edgelb_api::{
    AssignedIp, ClusterSpec, Node, NodeList, PoolSpec, Protocol, ServicePort, ServiceSpec, SessionAffinity,
    TrafficPolicy,
};

use super::*;
use crate::dataplane::{
    FakeDataplane, Forward, Forwarder, Manages, RealServer, RsSpec, State, VirtualService, VsKey, VsSpec,
};
use crate::forwarding::{ParsedService, Rule};
use crate::ipam::IpRange;
use crate::store::{DataplaneSnapshot, SnapshotPool, SnapshotService, Store};

/// A test spec as the store's snapshot gives it.
fn parsed(spec: ServiceSpec) -> ParsedService {
    ParsedService::parse(spec).unwrap_or_else(|e| panic!("test spec: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn key(vip: &str, port: u16) -> VsKey {
    VsKey::new(ip(vip), port, Protocol::Tcp)
}

fn vs(scheduler: &str, persistence: Option<u32>) -> VirtualService {
    VirtualService {
        spec: VsSpec {
            scheduler: scheduler.into(),
            persistence,
        },
        counters: Default::default(),
    }
}

fn rs(weight: u32) -> RealServer {
    RealServer {
        spec: RsSpec::masquerade(weight),
        counters: Default::default(),
    }
}

/// A state from (key, scheduler) services and (key, real server, weight) entries.
fn state(services: &[(VsKey, &str)], real_servers: &[(VsKey, &str, u32)]) -> State {
    State {
        services: services.iter().map(|(k, s)| (*k, vs(s, None))).collect(),
        real_servers: real_servers.iter().map(|(k, a, w)| ((*k, sa(a)), rs(*w))).collect(),
        addresses: None,
        rules: None,
    }
}

fn pool_range() -> Ownership {
    Ownership::new(vec![IpRange::parse("203.0.113.0/24").expect("range")])
}

fn want(s: State) -> Desired {
    Desired {
        state: s,
        owned: pool_range(),
        ruleset: None,
    }
}

/// Applies ops to a copy of `observed` with the fake's kernel rules.
fn applied(observed: &State, ops: &[Op]) -> State {
    let fake = FakeDataplane::new();
    fake.tamper(|s| *s = observed.clone());
    futures::executor::block_on(fake.apply(ops)).expect("ops apply cleanly");
    fake.state()
}

#[test]
fn plan_cases() {
    let web = key("203.0.113.5", 80);
    let tls = key("203.0.113.5", 443);
    let foreign = key("192.0.2.9", 80);
    struct Case {
        name: &'static str,
        desired: State,
        observed: State,
        ops: Vec<Op>,
    }
    let cases = vec![
        Case {
            name: "from empty: services before their real servers",
            desired: state(
                &[(web, "rr")],
                &[(web, "10.1.0.11:30080", 1), (web, "10.1.0.12:30080", 1)],
            ),
            observed: State::default(),
            ops: vec![
                Op::AddService(web, vs("rr", None).spec),
                Op::AddRealServer(web, sa("10.1.0.11:30080"), RsSpec::masquerade(1)),
                Op::AddRealServer(web, sa("10.1.0.12:30080"), RsSpec::masquerade(1)),
            ],
        },
        Case {
            name: "in sync: nothing",
            desired: state(&[(web, "rr")], &[(web, "10.1.0.11:30080", 1)]),
            observed: state(&[(web, "rr")], &[(web, "10.1.0.11:30080", 1)]),
            ops: vec![],
        },
        Case {
            name: "health-like drain to weight 0 is an edit, never delete and add",
            desired: state(
                &[(web, "rr")],
                &[(web, "10.1.0.11:30080", 0), (web, "10.1.0.12:30080", 1)],
            ),
            observed: state(
                &[(web, "rr")],
                &[(web, "10.1.0.11:30080", 1), (web, "10.1.0.12:30080", 1)],
            ),
            ops: vec![Op::EditRealServer(web, sa("10.1.0.11:30080"), RsSpec::masquerade(0))],
        },
        Case {
            name: "scheduler change is an edit of the service",
            desired: state(&[(web, "wlc")], &[(web, "10.1.0.11:30080", 1)]),
            observed: state(&[(web, "rr")], &[(web, "10.1.0.11:30080", 1)]),
            ops: vec![Op::EditService(web, vs("wlc", None).spec)],
        },
        Case {
            name: "a node replaced: the new real server comes before the old one goes",
            desired: state(&[(web, "rr")], &[(web, "10.1.0.13:30080", 1)]),
            observed: state(&[(web, "rr")], &[(web, "10.1.0.11:30080", 1)]),
            ops: vec![
                Op::AddRealServer(web, sa("10.1.0.13:30080"), RsSpec::masquerade(1)),
                Op::DeleteRealServer(web, sa("10.1.0.11:30080")),
            ],
        },
        Case {
            name: "a service removed: its real servers before it",
            desired: state(&[(web, "rr")], &[]),
            observed: state(&[(web, "rr"), (tls, "rr")], &[(tls, "10.1.0.11:30443", 1)]),
            ops: vec![Op::DeleteRealServer(tls, sa("10.1.0.11:30443")), Op::DeleteService(tls)],
        },
        Case {
            name: "a foreign service outside the pools is never touched",
            desired: State::default(),
            observed: state(&[(foreign, "wlc")], &[(foreign, "10.9.0.1:80", 3)]),
            ops: vec![],
        },
    ];
    for c in cases {
        let ops = plan(&want(c.desired.clone()), &c.observed);
        assert_eq!(ops, c.ops, "{}", c.name);
        let after = applied(&c.observed, &ops);
        assert!(
            plan(&want(c.desired), &after).is_empty(),
            "{}: second plan not empty",
            c.name
        );
    }
}

#[test]
fn persistence_change_is_an_edit() {
    let web = key("203.0.113.5", 80);
    let mut desired = state(&[(web, "rr")], &[]);
    desired.services.insert(web, vs("rr", Some(600)));
    let observed = state(&[(web, "rr")], &[]);
    assert_eq!(
        plan(&want(desired), &observed),
        vec![Op::EditService(web, vs("rr", Some(600)).spec)]
    );
}

#[test]
fn a_real_server_with_another_forwarding_method_is_edited_back_to_masquerade() {
    let web = key("203.0.113.5", 80);
    let desired = state(&[(web, "rr")], &[(web, "10.1.0.11:30080", 1)]);
    let mut observed = desired.clone();
    if let Some(r) = observed.real_servers.get_mut(&(web, sa("10.1.0.11:30080"))) {
        r.spec.forward = Forward::Route;
    }
    assert_eq!(
        plan(&want(desired), &observed),
        vec![Op::EditRealServer(web, sa("10.1.0.11:30080"), RsSpec::masquerade(1))]
    );
}

#[test]
fn addresses_are_claimed_first_and_released_last_and_foreign_ones_kept() {
    let web = key("203.0.113.5", 80);
    let mut desired = state(&[(web, "rr")], &[]);
    desired.addresses = Some(BTreeSet::from([ip("203.0.113.5")]));
    let mut observed = state(&[(key("203.0.113.6", 80), "rr")], &[]);
    observed.addresses = Some(BTreeSet::from([ip("203.0.113.6"), ip("192.0.2.1")]));
    let ops = plan(&want(desired.clone()), &observed);
    assert_eq!(
        ops,
        vec![
            Op::AddAddress(ip("203.0.113.5")),
            Op::AddService(web, vs("rr", None).spec),
            Op::DeleteService(key("203.0.113.6", 80)),
            Op::DeleteAddress(ip("203.0.113.6")),
        ]
    );
    let after = applied(&observed, &ops);
    assert!(after.addresses.as_ref().is_some_and(|a| a.contains(&ip("192.0.2.1"))));
    assert!(plan(&want(desired), &after).is_empty());
}

#[test]
fn addresses_are_left_alone_when_the_data_plane_does_not_manage_them() {
    let desired = State {
        addresses: Some(BTreeSet::from([ip("203.0.113.5")])),
        ..State::default()
    };
    assert!(plan(&want(desired), &State::default()).is_empty());
}

#[test]
fn flush_removes_only_owned_services_and_addresses() {
    let mut observed = state(
        &[(key("203.0.113.5", 80), "rr"), (key("192.0.2.9", 80), "rr")],
        &[(key("192.0.2.9", 80), "10.9.0.1:80", 1)],
    );
    observed.addresses = Some(BTreeSet::from([ip("203.0.113.5"), ip("192.0.2.1")]));
    assert_eq!(
        flush_plan(&pool_range(), &observed),
        vec![
            Op::DeleteService(key("203.0.113.5", 80)),
            Op::DeleteAddress(ip("203.0.113.5"))
        ]
    );
}

// ---- desired state from a snapshot ----

fn node(name: &str, addrs: &[&str]) -> Node {
    Node {
        name: name.into(),
        addresses: addrs.iter().map(|a| ip(a)).collect(),
        ready: true,
        schedulable: true,
        excluded: false,
        no_tunnel: false,
    }
}

fn spec(ports: &[(Protocol, u16, u16)]) -> ServiceSpec {
    ServiceSpec::new(
        "u1",
        ports
            .iter()
            .map(|(pr, port, np)| ServicePort::new(*pr, *port, *np))
            .collect(),
    )
}

fn snapshot(spec: ServiceSpec, vips: &[&str], nodes: Vec<Node>) -> DataplaneSnapshot {
    DataplaneSnapshot {
        pools: vec![SnapshotPool {
            name: "public".into(),
            ranges: vec![
                IpRange::parse("203.0.113.0/24").expect("range"),
                IpRange::parse("2001:db8::/64").expect("range"),
            ],
            scheduler: "wlc".into(),
            health: None,
            forwarding: None,
        }],
        services: vec![SnapshotService {
            cluster: "prod".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec: Some(parsed(spec)),
            addresses: vips
                .iter()
                .map(|v| AssignedIp {
                    ip: ip(v),
                    pool: "public".into(),
                })
                .collect(),
        }],
        nodes: BTreeMap::from([("prod".to_owned(), nodes)]),
    }
}

fn backends(s: &State, k: VsKey) -> Vec<String> {
    s.real_servers_of(k).map(|(a, _)| a.to_string()).collect()
}

#[test]
fn desired_state_covers_every_vip_and_port_with_eligible_nodes() {
    let mut nodes = vec![
        node("n1", &["10.1.0.11", "fd00::11"]),
        node("n2", &["10.1.0.12"]),
        node("n3", &["10.1.0.13"]),
        node("n4", &["10.1.0.14"]),
        node("n5", &["10.1.0.15"]),
    ];
    nodes[2].ready = false;
    nodes[3].schedulable = false;
    nodes[4].excluded = true;
    let snap = snapshot(
        spec(&[(Protocol::Tcp, 80, 30080), (Protocol::Udp, 53, 30053)]),
        &["203.0.113.5", "2001:db8::5"],
        nodes,
    );
    let d = desired(&snap, Manages::default());
    assert_eq!(d.state.services.len(), 4);
    let web = VsKey::new(ip("203.0.113.5"), 80, Protocol::Tcp);
    assert_eq!(d.state.services[&web].spec.scheduler, "wlc", "the pool's default");
    assert_eq!(backends(&d.state, web), ["10.1.0.11:30080", "10.1.0.12:30080"]);
    let dns6 = VsKey::new(ip("2001:db8::5"), 53, Protocol::Udp);
    assert_eq!(
        backends(&d.state, dns6),
        ["[fd00::11]:30053"],
        "only nodes with an address of the VIP's family"
    );
    assert!(d.state.addresses.is_none());
}

#[test]
fn desired_state_takes_service_scheduler_affinity_and_local_nodes() {
    let mut s = spec(&[(Protocol::Tcp, 80, 30080)]);
    s.scheduler = Some("sh".into());
    s.session_affinity = SessionAffinity::ClientIp;
    s.external_traffic_policy = TrafficPolicy::Local;
    s.local_nodes = Some(vec!["n2".into()]);
    let snap = snapshot(
        s.clone(),
        &["203.0.113.5"],
        vec![node("n1", &["10.1.0.11"]), node("n2", &["10.1.0.12"])],
    );
    let d = desired(
        &snap,
        Manages {
            addresses: true,
            rules: false,
            ..Manages::default()
        },
    );
    let web = VsKey::new(ip("203.0.113.5"), 80, Protocol::Tcp);
    assert_eq!(
        d.state.services[&web].spec,
        VsSpec {
            scheduler: "sh".into(),
            persistence: Some(crate::forwarding::DEFAULT_AFFINITY_TIMEOUT)
        }
    );
    assert_eq!(backends(&d.state, web), ["10.1.0.12:30080"]);
    assert_eq!(d.state.addresses, Some(BTreeSet::from([ip("203.0.113.5")])));

    // Local without a node list from the agent: every eligible node.
    s.local_nodes = None;
    s.session_affinity_timeout_seconds = Some(60);
    let d = desired(
        &snapshot(s, &["203.0.113.5"], vec![node("n1", &["10.1.0.11"])]),
        Manages::default(),
    );
    assert_eq!(backends(&d.state, web), ["10.1.0.11:30080"]);
    assert_eq!(d.state.services[&web].spec.persistence, Some(60));
}

#[test]
fn source_ranges_of_one_family_close_the_other_familys_vip() {
    let mut s = spec(&[(Protocol::Tcp, 443, 30443)]);
    s.source_ranges = vec!["10.0.0.0/8".into()];
    let snap = snapshot(
        s,
        &["203.0.113.5", "2001:db8::5"],
        vec![node("n1", &["10.1.0.11", "fd00::11"])],
    );
    let d = desired(
        &snap,
        Manages {
            addresses: false,
            rules: true,
            ..Manages::default()
        },
    );
    let rules = d.ruleset.expect("rules managed");
    let v6 = rules
        .forwards
        .iter()
        .find(|f| f.vip == ip("2001:db8::5"))
        .expect("IPv6 forward");
    assert!(
        !v6.source_ranges.is_empty(),
        "an IPv4-only allow list must restrict the IPv6 VIP (an empty list means everyone)"
    );
    let restricted = Rule::Restricted {
        vip: ip("2001:db8::5"),
        protocol: Protocol::Tcp,
        port: 443,
    };
    assert!(
        v6.source_rules().contains(&restricted),
        "the IPv6 VIP is restricted: {:?}",
        v6.source_rules()
    );
    let v4 = rules
        .forwards
        .iter()
        .find(|f| f.vip == ip("203.0.113.5"))
        .expect("IPv4 forward");
    assert_eq!(v4.source_ranges, vec!["10.0.0.0/8".parse().expect("prefix")]);
}

#[test]
fn direct_and_tunnel_forward_to_the_nodes_service_port_without_source_nat_and_keep_source_ranges() {
    use crate::forwarding::Forward;
    use edgelb_api::Forwarding;
    let manages = Manages {
        addresses: false,
        rules: true,
        ..Manages::default()
    };
    let nodes = || vec![node("n1", &["10.1.0.11"]), node("n2", &["10.1.0.12"])];
    for (own, pool, want) in [
        (Some(Forwarding::Direct), None, Forward::Route),
        (None, Some(Forwarding::Tunnel), Forward::Tunnel),
        (Some(Forwarding::Tunnel), Some(Forwarding::Direct), Forward::Tunnel),
        (Some(Forwarding::Nat), Some(Forwarding::Direct), Forward::Masquerade),
    ] {
        let mut s = spec(&[(Protocol::Tcp, 443, 30443)]);
        s.source_ranges = vec!["198.51.100.0/24".into()];
        s.forwarding = own;
        let mut snap = snapshot(s, &["203.0.113.5"], nodes());
        snap.pools[0].forwarding = pool;
        let d = desired(&snap, manages);
        let key = VsKey::new(ip("203.0.113.5"), 443, Protocol::Tcp);
        let servers: Vec<(SocketAddr, Forward)> = d
            .state
            .real_servers_of(key)
            .map(|(a, rs)| (a, rs.spec.forward))
            .collect();
        let port = if want == Forward::Masquerade { 30443 } else { 443 };
        assert_eq!(
            servers,
            [
                (SocketAddr::new(ip("10.1.0.11"), port), want),
                (SocketAddr::new(ip("10.1.0.12"), port), want)
            ],
            "{own:?} over the pool's {pool:?}"
        );
        let rules: Vec<Rule> = d
            .ruleset
            .expect("rules")
            .forwards
            .iter()
            .flat_map(|f| f.rules())
            .collect();
        assert!(
            !rules.iter().any(|r| matches!(r, Rule::FullNat { .. })),
            "no source NAT: {rules:?}"
        );
        assert!(
            rules.contains(&Rule::Restricted {
                vip: ip("203.0.113.5"),
                protocol: Protocol::Tcp,
                port: 443
            }),
            "the source ranges stay enforced at the appliance: {rules:?}"
        );
    }
    // Neither set: the appliance's default, full NAT to the NodePort.
    let d = desired(
        &snapshot(spec(&[(Protocol::Tcp, 443, 30443)]), &["203.0.113.5"], nodes()),
        manages,
    );
    let rules: Vec<Rule> = d
        .ruleset
        .expect("rules")
        .forwards
        .iter()
        .flat_map(|f| f.rules())
        .collect();
    assert!(rules.contains(&Rule::full_nat(SocketAddr::new(ip("10.1.0.11"), 30443), Protocol::Tcp)));
}

#[test]
fn a_node_that_cannot_take_tunnel_traffic_gets_none_and_the_other_methods_still_use_it() {
    use edgelb_api::Forwarding;
    let mut n2 = node("n2", &["10.1.0.12"]);
    n2.no_tunnel = true;
    let real_servers = |forwarding| {
        let mut s = spec(&[(Protocol::Tcp, 443, 30443)]);
        s.forwarding = Some(forwarding);
        let d = desired(
            &snapshot(s, &["203.0.113.5"], vec![node("n1", &["10.1.0.11"]), n2.clone()]),
            Manages::default(),
        );
        let key = VsKey::new(ip("203.0.113.5"), 443, Protocol::Tcp);
        d.state.real_servers_of(key).map(|(a, _)| a.ip()).collect::<Vec<_>>()
    };
    assert_eq!(real_servers(Forwarding::Tunnel), [ip("10.1.0.11")]);
    assert_eq!(real_servers(Forwarding::Direct), [ip("10.1.0.11"), ip("10.1.0.12")]);
    assert_eq!(real_servers(Forwarding::Fullnat), [ip("10.1.0.11"), ip("10.1.0.12")]);
}

#[test]
fn desired_state_skips_vips_outside_the_pools_and_reserved_services() {
    let mut snap = snapshot(
        spec(&[(Protocol::Tcp, 80, 30080)]),
        &["198.51.100.1"],
        vec![node("n1", &["10.1.0.11"])],
    );
    assert!(
        desired(
            &snap,
            Manages {
                addresses: true,
                ..Manages::default()
            }
        )
        .state
        .services
        .is_empty()
    );
    snap.services[0].spec = None;
    snap.services[0].addresses[0].ip = ip("203.0.113.5");
    let d = desired(
        &snap,
        Manages {
            addresses: true,
            rules: false,
            ..Manages::default()
        },
    );
    assert!(d.state.services.is_empty());
    assert_eq!(d.state.addresses, Some(BTreeSet::new()));
}

// ---- the loop over a real store and the fake data plane ----

async fn store_with_service() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    store
        .create_pool(
            "test",
            serde_json::from_value::<PoolSpec>(
                serde_json::json!({"name": "public", "ranges": ["203.0.113.0/24"], "scheduler": "rr"}),
            )
            .expect("pool spec"),
        )
        .await
        .expect("pool");
    store
        .create_cluster(
            "test",
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![
                    node("n1", &["10.1.0.11"]),
                    node("n2", &["10.1.0.12"]),
                    node("n3", &["10.1.0.13"]),
                ],
            },
        )
        .await
        .expect("nodes");
    store
        .put_service(
            "test",
            "prod",
            "default",
            "web",
            spec(&[(Protocol::Tcp, 80, 30080), (Protocol::Tcp, 443, 30443)]),
        )
        .await
        .expect("service");
    (dir, store)
}

fn fast() -> RunnerOptions {
    RunnerOptions {
        resync: Duration::from_millis(200),
        debounce: Duration::from_millis(10),
        retry: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn a_pass_programs_the_store_and_a_second_pass_changes_nothing() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::new();
    let foreign = key("192.0.2.9", 80);
    fake.tamper(|s| {
        s.services.insert(foreign, vs("wlc", None));
    });
    let r = Reconciler::new(store.clone(), fake.clone(), fast());
    let first = r.pass().await.expect("pass");
    assert_eq!(first.ops.len(), 2 + 6, "{:?}", first.ops);
    let s = fake.state();
    assert_eq!(s.services.len(), 3);
    assert_eq!(
        s.services[&foreign],
        vs("wlc", None),
        "the foreign service is untouched"
    );
    assert!(r.pass().await.expect("pass").ops.is_empty());

    let status = r.status().borrow().status();
    assert_eq!(status.mode, "fake");
    assert_eq!(status.virtual_services.len(), 2, "only owned services are reported");
    assert!(status.last_error.is_none() && status.last_sync.is_some());

    // Drift: someone deletes a real server by hand; the next pass puts it back.
    fake.tamper(|s| {
        let first = s.real_servers.keys().next();
        if let Some(k) = first {
            s.real_servers.remove(&k);
        }
    });
    fake.take_log();
    let repaired = r.pass().await.expect("pass");
    assert_eq!(repaired.ops.len(), 1, "{:?}", repaired.ops);
    assert!(matches!(repaired.ops[0], Op::AddRealServer(..)));
}

#[tokio::test]
async fn a_failed_observation_is_reported_and_retried() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::new();
    fake.fail_observe(Some("netlink went away"));
    let r = Reconciler::new(store, fake.clone(), fast());
    assert!(r.pass().await.is_err());
    let status = r.status().borrow().status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("netlink went away"))
    );
    fake.fail_observe(None);
    assert_eq!(r.pass().await.expect("pass").ops.len(), 8);
    assert!(r.status().borrow().summary.last_error.is_none());
}

#[tokio::test]
async fn the_loop_follows_store_changes_without_waiting_for_the_resync() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::new();
    let options = RunnerOptions {
        resync: Duration::from_secs(3600),
        ..fast()
    };
    let r = Reconciler::new(store.clone(), fake.clone(), options);
    let task = tokio::spawn(r.run());
    let wait_for = |n: usize| {
        let fake = fake.clone();
        async move {
            for _ in 0..200 {
                if fake.state().real_servers.len() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("real servers never became {n}: {:?}", fake.state().real_servers);
        }
    };
    wait_for(6).await;
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", &["10.1.0.11"]), node("n2", &["10.1.0.12"])],
            },
        )
        .await
        .expect("nodes");
    wait_for(4).await;
    store
        .delete_service("test", "prod", "default", "web")
        .await
        .expect("delete");
    wait_for(0).await;
    assert!(fake.state().services.is_empty());
    // Stopping the loop leaves the kernel as it is.
    task.abort();
}

#[tokio::test]
async fn rules_and_addresses_follow_the_store_when_the_data_plane_manages_them() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::full();
    let r = Reconciler::new(store.clone(), fake.clone(), fast());
    let ops = r.pass().await.expect("pass").ops;
    assert!(matches!(ops[0], Op::SetRules(_)), "rules come first: {ops:?}");
    assert!(matches!(ops[1], Op::AddAddress(_)), "then the VIP: {ops:?}");
    assert_eq!(ops.len(), 2 + 2 + 6);
    assert!(r.pass().await.expect("pass").ops.is_empty());

    // A source range is a change of the rules only: IPVS stays as it is.
    let mut s = spec(&[(Protocol::Tcp, 80, 30080), (Protocol::Tcp, 443, 30443)]);
    s.source_ranges = vec!["192.0.2.0/24".into()];
    store
        .put_service("test", "prod", "default", "web", s)
        .await
        .expect("service");
    let ops = r.pass().await.expect("pass").ops;
    assert!(
        matches!(ops.as_slice(), [Op::SetRules(r)] if r.forwards.iter().all(|f| f.source_ranges.len() == 1)),
        "{ops:?}"
    );

    // Flush: services, the VIP and the table; a second flush has nothing left but the table.
    let removed = flush(&store, &fake).await.expect("flush");
    assert_eq!(removed.len(), 2 + 1 + 1, "{removed:?}");
    let s = fake.state();
    assert!(s.services.is_empty() && s.addresses == Some(BTreeSet::new()));
}

/// The ownership input: an appliance that claims nothing still forwards (services, real servers,
/// rules all programmed), and claiming or releasing its VIPs changes the addresses only, never
/// the forwarding state (a standby kept hot takes over by claiming).
#[tokio::test]
async fn claiming_and_releasing_vips_never_touches_forwarding() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::full();
    let (claim, rx) = tokio::sync::watch::channel(Claim::Nothing);
    let r = Reconciler::new(store.clone(), fake.clone(), fast()).with_claim(rx);
    let ops = r.pass().await.expect("pass").ops;
    assert!(!ops.iter().any(|o| matches!(o, Op::AddAddress(_))), "{ops:?}");
    let forwarding = fake.state();
    assert_eq!((forwarding.services.len(), forwarding.real_servers.len()), (2, 6));
    assert_eq!(forwarding.addresses, Some(BTreeSet::new()));
    let vip: IpAddr = store.list_services(None).await.expect("list")[0].ips[0];

    claim.send(Claim::Only(BTreeSet::from([vip]))).expect("send");
    let ops = r.pass().await.expect("pass").ops;
    assert_eq!(ops, [Op::AddAddress(vip)]);
    claim.send(Claim::Nothing).expect("send");
    let ops = r.pass().await.expect("pass").ops;
    assert_eq!(ops, [Op::DeleteAddress(vip)]);
    let after = fake.state();
    assert_eq!(
        (after.services, after.real_servers),
        (forwarding.services, forwarding.real_servers)
    );

    // The loop follows the input by itself.
    let task = tokio::spawn(r.run());
    claim.send(Claim::All).expect("send");
    for _ in 0..200 {
        if fake.state().addresses == Some(BTreeSet::from([vip])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.state().addresses, Some(BTreeSet::from([vip])));
    task.abort();
}

#[tokio::test]
async fn a_change_is_planned_against_the_kept_state_and_the_resync_dumps_again() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::new();
    let r = Reconciler::new(store.clone(), fake.clone(), fast());
    assert_eq!(r.pass().await.expect("full pass").ops.len(), 8);
    // No dump needed for a change: even a kernel that cannot be read gets it.
    fake.fail_observe(Some("no dumps now"));
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", &["10.1.0.11"]), node("n2", &["10.1.0.12"])],
            },
        )
        .await
        .expect("nodes");
    let ops = r.pass_for_change().await.expect("change pass").ops;
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(r.pass_for_change().await.expect("change pass").ops.is_empty());
    // Drift is invisible to change passes and repaired by the next full pass.
    fake.fail_observe(None);
    fake.tamper(|s| s.real_servers.clear());
    assert!(r.pass_for_change().await.expect("change pass").ops.is_empty());
    assert_eq!(r.pass().await.expect("full pass").ops.len(), 4);
    assert_eq!(fake.state().real_servers.len(), 4);
}

// ---- health and draining -------------------------------------------------------------------

use super::desired::{Drains, HealthInput, HealthPlan, Probed, target_of};
use super::desired_with;
use super::published::Published;
use crate::config::AllDown;
use crate::health::{Health, Settings, Target, TargetState};
use std::collections::HashMap;
use std::time::SystemTime;

const DRAIN: Duration = Duration::from_secs(60);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn at(secs: i64) -> SystemTime {
    if secs >= 0 {
        t0() + Duration::from_secs(secs.unsigned_abs())
    } else {
        t0() - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A target's damped state: `health` since `since` seconds after t0.
fn target_state(health: Health, since: i64) -> TargetState {
    TargetState {
        health,
        ..TargetState::new(at(since))
    }
}

fn three_nodes() -> Vec<Node> {
    vec![
        node("n1", &["10.1.0.11"]),
        node("n2", &["10.1.0.12"]),
        node("n3", &["10.1.0.13"]),
    ]
}

fn web() -> VsKey {
    key("203.0.113.5", 80)
}

/// The weights of 203.0.113.5:80 by node address.
fn weights(d: &Desired) -> BTreeMap<String, u32> {
    d.state
        .real_servers_of(web())
        .map(|(a, rs)| (a.ip().to_string(), rs.spec.weight))
        .collect()
}

/// Runs [`desired_with`] over one Service on `nodes`, with TCP targets of the nodes (by last
/// octet) in the given states.
fn desired_at(
    nodes: Vec<Node>,
    health: &[(u8, Health, i64)],
    drains: &Drains,
    now: i64,
    all_down: AllDown,
) -> (Desired, HealthPlan) {
    let snap = snapshot(spec(&[(Protocol::Tcp, 80, 30080)]), &["203.0.113.5"], nodes);
    let targets: HashMap<Target, TargetState> = health
        .iter()
        .map(|(octet, h, since)| {
            (
                Target::tcp(ip(&format!("10.1.0.{octet}")), 30080),
                target_state(*h, *since),
            )
        })
        .collect();
    let input = HealthInput {
        now: at(now),
        drain_timeout: DRAIN,
        all_down,
        targets: &targets,
        drains,
        node_port: None,
    };
    desired_with(&snap, Manages::default(), &input)
}

fn present(octets: &[u8]) -> Drains {
    Drains {
        present: BTreeMap::from([(web(), octets.iter().map(|o| sa(&format!("10.1.0.{o}:30080"))).collect())]),
        leaving: BTreeMap::new(),
    }
}

fn w(entries: &[(u8, u32)]) -> BTreeMap<String, u32> {
    entries.iter().map(|(o, w)| (format!("10.1.0.{o}"), *w)).collect()
}

#[test]
fn health_and_eligibility_decide_the_weights() {
    use AllDown::{FailClosed, FailOpen};
    use Health::{Down, Unknown, Up};
    let not_ready_n3 = || {
        let mut n = three_nodes();
        n[2].ready = false;
        n
    };
    let unschedulable_n3 = || {
        let mut n = three_nodes();
        n[2].schedulable = false;
        n
    };
    let excluded_n3 = || {
        let mut n = three_nodes();
        n[2].excluded = true;
        n
    };
    let without_n3 = || three_nodes().into_iter().take(2).collect::<Vec<_>>();
    let leaving_n3 = |since: i64| Drains {
        present: present(&[11, 12]).present,
        leaving: BTreeMap::from([(web(), BTreeMap::from([(sa("10.1.0.13:30080"), at(since))]))]),
    };
    type Case = (
        &'static str,
        Vec<Node>,
        Vec<(u8, Health, i64)>,
        Drains,
        AllDown,
        BTreeMap<String, u32>,
    );
    let cases: Vec<Case> = vec![
        (
            "all healthy: full weight",
            three_nodes(),
            vec![(11, Up, -100), (12, Up, -100), (13, Up, -100)],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 1)]),
        ),
        (
            "not probed enough yet serves",
            three_nodes(),
            vec![(11, Unknown, 0), (12, Unknown, 0)],
            Drains::default(),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 1)]),
        ),
        (
            "down: weight 0 while draining",
            three_nodes(),
            vec![(11, Up, -100), (12, Down, -5), (13, Up, -100)],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 0), (13, 1)]),
        ),
        (
            "down longer than the drain timeout: removed",
            three_nodes(),
            vec![(11, Up, -100), (12, Down, -61), (13, Up, -100)],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (13, 1)]),
        ),
        (
            "up again: weight restored",
            three_nodes(),
            vec![(11, Up, -100), (12, Up, -1), (13, Up, -100)],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 1)]),
        ),
        (
            "all down, fail-open: all kept at full weight",
            three_nodes(),
            vec![(11, Down, -5), (12, Down, -500), (13, Down, -5)],
            present(&[11, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 1)]),
        ),
        (
            "all down, fail-closed: all drained",
            three_nodes(),
            vec![(11, Down, -5), (12, Down, -5), (13, Down, -5)],
            present(&[11, 12, 13]),
            FailClosed,
            w(&[(11, 0), (12, 0), (13, 0)]),
        ),
        (
            "all down, fail-closed, past the drain timeout: none",
            three_nodes(),
            vec![(11, Down, -61), (12, Down, -61), (13, Down, -61)],
            present(&[11, 12, 13]),
            FailClosed,
            w(&[]),
        ),
        (
            "one down, fail-closed: the others serve",
            three_nodes(),
            vec![(11, Down, -5)],
            present(&[11, 12, 13]),
            FailClosed,
            w(&[(11, 0), (12, 1), (13, 1)]),
        ),
        (
            "node turns NotReady: drained, not cut",
            not_ready_n3(),
            vec![],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 0)]),
        ),
        (
            "node turns unschedulable: drained",
            unschedulable_n3(),
            vec![],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 0)]),
        ),
        (
            "node excluded from load balancers: drained",
            excluded_n3(),
            vec![],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 0)]),
        ),
        (
            "NotReady node still draining",
            not_ready_n3(),
            vec![],
            leaving_n3(-30),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 0)]),
        ),
        (
            "NotReady node past the drain timeout: removed",
            not_ready_n3(),
            vec![],
            leaving_n3(-61),
            FailOpen,
            w(&[(11, 1), (12, 1)]),
        ),
        (
            "NotReady node that was never programmed is not added",
            not_ready_n3(),
            vec![],
            present(&[11, 12]),
            FailOpen,
            w(&[(11, 1), (12, 1)]),
        ),
        (
            "node deleted from the node list: gone at once",
            without_n3(),
            vec![],
            present(&[11, 12, 13]),
            FailOpen,
            w(&[(11, 1), (12, 1)]),
        ),
        (
            "NotReady node Ready again: back at full weight",
            three_nodes(),
            vec![],
            leaving_n3(-30),
            FailOpen,
            w(&[(11, 1), (12, 1), (13, 1)]),
        ),
    ];
    for (name, nodes, health, drains, all_down, want) in cases {
        let (d, _) = desired_at(nodes, &health, &drains, 0, all_down);
        assert_eq!(weights(&d), want, "{name}");
    }
}

#[test]
fn a_drain_keeps_its_start_across_passes_and_ends_on_time() {
    let mut not_ready = three_nodes();
    not_ready[2].ready = false;
    let (_, hp1) = desired_at(three_nodes(), &[], &Drains::default(), 0, AllDown::FailOpen);
    assert_eq!(hp1.drains, present(&[11, 12, 13]));
    assert_eq!(hp1.next_deadline, None);

    let (d2, hp2) = desired_at(not_ready.clone(), &[], &hp1.drains, 10, AllDown::FailOpen);
    assert_eq!(weights(&d2), w(&[(11, 1), (12, 1), (13, 0)]));
    assert_eq!(hp2.drains.leaving[&web()][&sa("10.1.0.13:30080")], at(10));
    assert_eq!(hp2.next_deadline, Some(at(70)), "a pass is due when the drain ends");

    let (d3, hp3) = desired_at(not_ready.clone(), &[], &hp2.drains, 40, AllDown::FailOpen);
    assert_eq!(weights(&d3), w(&[(11, 1), (12, 1), (13, 0)]));
    assert_eq!(
        hp3.drains.leaving[&web()][&sa("10.1.0.13:30080")],
        at(10),
        "not restarted"
    );

    let (d4, hp4) = desired_at(not_ready, &[], &hp3.drains, 71, AllDown::FailOpen);
    assert_eq!(weights(&d4), w(&[(11, 1), (12, 1)]));
    assert!(hp4.drains.leaving.is_empty());
    assert_eq!(hp4.next_deadline, None);

    let (_, down) = desired_at(
        three_nodes(),
        &[(12, Health::Down, 5)],
        &hp1.drains,
        6,
        AllDown::FailOpen,
    );
    assert_eq!(down.next_deadline, Some(at(65)), "an unhealthy one's drain ends too");
}

#[test]
fn health_changes_produce_weight_changes_never_delete_and_recreate_of_a_service() {
    use Health::{Down, Up};
    let mut observed = State::default();
    let mut drains = Drains::default();
    // (health of n2 and since when, seconds after t0, the only ops wanted)
    let steps: &[(Health, i64, i64, &[&str])] = &[
        (Up, 0, 0, &["add-service", "add-rs", "add-rs", "add-rs"]),
        (Down, 9, 10, &["edit-rs 10.1.0.12:30080 0"]),
        (Up, 19, 20, &["edit-rs 10.1.0.12:30080 1"]),
        (Down, 29, 30, &["edit-rs 10.1.0.12:30080 0"]),
        (Down, 29, 80, &[]),
        (Down, 29, 91, &["delete-rs 10.1.0.12:30080"]),
        (Up, 99, 100, &["add-rs"]),
    ];
    for (h, since, now, want) in steps {
        let (d, hp) = desired_at(three_nodes(), &[(12, *h, *since)], &drains, *now, AllDown::FailOpen);
        drains = hp.drains;
        let ops = plan(&d, &observed);
        let got: Vec<String> = ops
            .iter()
            .map(|op| match op {
                Op::AddService(..) => "add-service".to_owned(),
                Op::AddRealServer(..) => "add-rs".to_owned(),
                Op::EditRealServer(_, a, s) => format!("edit-rs {a} {}", s.weight),
                Op::DeleteRealServer(_, a) => format!("delete-rs {a}"),
                other => format!("unexpected {other}"),
            })
            .collect();
        assert_eq!(got, *want, "at {now} s with n2 {h:?}");
        observed = applied(&observed, &ops);
        assert!(plan(&d, &observed).is_empty(), "a second plan is empty");
    }
}

#[test]
fn each_distinct_target_is_probed_once() {
    let mut local = spec(&[(Protocol::Tcp, 80, 30080), (Protocol::Tcp, 443, 30443)]);
    local.external_traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(32000);
    let udp = ServicePort {
        name: None,
        protocol: Protocol::Udp,
        port: 53,
        node_port: 30053,
    };
    assert_eq!(
        target_of(&local, ip("10.1.0.11"), &local.ports[0]),
        Some(Target::healthz(ip("10.1.0.11"), 32000))
    );
    assert_eq!(
        target_of(&local, ip("10.1.0.11"), &udp),
        Some(Target::healthz(ip("10.1.0.11"), 32000)),
        "Local: whatever the protocol"
    );
    let cluster = spec(&[(Protocol::Tcp, 80, 30080), (Protocol::Tcp, 443, 30443)]);
    assert_eq!(
        target_of(&cluster, ip("10.1.0.11"), &cluster.ports[1]),
        Some(Target::tcp(ip("10.1.0.11"), 30443))
    );
    assert_eq!(
        target_of(&cluster, ip("10.1.0.11"), &udp),
        None,
        "a UDP NodePort is not probed"
    );
    let mut local_without_port = local.clone();
    local_without_port.health_check_node_port = None;
    assert_eq!(
        target_of(&local_without_port, ip("10.1.0.11"), &local.ports[0]),
        Some(Target::tcp(ip("10.1.0.11"), 30080)),
        "no healthCheckNodePort: the NodePort itself"
    );

    let nodes = vec![node("n1", &["10.1.0.11", "fd00::11"]), node("n2", &["10.1.0.12"])];
    let mut not_ready = node("n3", &["10.1.0.13"]);
    not_ready.ready = false;
    let mut all = nodes.clone();
    all.push(not_ready);
    let count = |s: ServiceSpec| {
        let snap = snapshot(s, &["203.0.113.5", "2001:db8::5"], all.clone());
        let input = HealthInput {
            now: t0(),
            drain_timeout: DRAIN,
            all_down: AllDown::FailOpen,
            targets: &HashMap::new(),
            drains: &Drains::default(),
            node_port: None,
        };
        let (_, hp) = desired_with(&snap, Manages::default(), &input);
        let mut probes: Vec<String> = hp.probes(Settings::default()).keys().map(|t| t.to_string()).collect();
        probes.sort();
        probes
    };
    assert_eq!(
        count(local),
        [
            "http://10.1.0.11:32000/healthz",
            "http://10.1.0.12:32000/healthz",
            "http://[fd00::11]:32000/healthz"
        ],
        "Local: one healthz per node address, whatever the ports; never the ineligible node"
    );
    assert_eq!(
        count(cluster),
        [
            "tcp://10.1.0.11:30080",
            "tcp://10.1.0.11:30443",
            "tcp://10.1.0.12:30080",
            "tcp://10.1.0.12:30443",
            "tcp://[fd00::11]:30080",
            "tcp://[fd00::11]:30443"
        ],
        "Cluster: each NodePort of each node once"
    );
}

/// Polls `f` every 20 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_health_change_reaches_the_data_plane_without_waiting_for_the_resync() {
    // Two "nodes" on loopback addresses, one NodePort listening on both.
    let l1 = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let node_port = l1.local_addr().expect("addr").port();
    let l2 = std::net::TcpListener::bind(("127.0.0.3", node_port)).expect("bind 127.0.0.3");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    store
        .create_pool(
            "test",
            serde_json::from_value::<PoolSpec>(serde_json::json!({"name": "public", "ranges": ["203.0.113.0/24"]}))
                .expect("pool spec"),
        )
        .await
        .expect("pool");
    store
        .create_cluster(
            "test",
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", &["127.0.0.2"]), node("n2", &["127.0.0.3"])],
            },
        )
        .await
        .expect("nodes");
    store
        .put_service(
            "test",
            "prod",
            "default",
            "web",
            spec(&[(Protocol::Tcp, 80, node_port)]),
        )
        .await
        .expect("service");

    let fake = FakeDataplane::new();
    let options = RunnerOptions {
        resync: Duration::from_secs(600),
        ..fast()
    };
    let r = Reconciler::new(store, fake.clone(), options).with_health(crate::config::HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        rise: 1,
        fall: 2,
        drain_timeout: Duration::from_secs(600),
        all_down: AllDown::FailOpen,
        ..crate::config::HealthConfig::default()
    });
    let status = r.status();
    let task = tokio::spawn(r.run());
    let n2 = SocketAddr::new(ip("127.0.0.3"), node_port);
    let weight_of_n2 = || {
        fake.state()
            .real_servers
            .iter()
            .find(|((_, a), _)| *a == n2)
            .map(|(_, rs)| rs.spec.weight)
    };
    eventually(5, "both nodes are programmed", || fake.state().real_servers.len() == 2).await;
    eventually(5, "the first pass is published", || status.borrow().summary.passes >= 1).await;
    assert_eq!(weight_of_n2(), Some(1));
    let summary = || status.borrow().summary.clone();
    let before = summary();

    drop(l2);
    eventually(5, "n2 is drained (weight 0)", || weight_of_n2() == Some(0)).await;
    eventually(5, "the pass is published", || summary().passes > before.passes).await;
    assert_eq!(
        summary().full_builds,
        before.full_builds,
        "a health change redoes the Service that depends on the target, not everything"
    );
    let rs_status = || {
        status
            .borrow()
            .virtual_services()
            .into_iter()
            .flat_map(|v| v.real_servers)
            .find(|r| r.ip == n2.ip())
    };
    eventually(5, "the status shows n2 down", || {
        rs_status()
            .and_then(|r| r.health)
            .is_some_and(|h| h.state == edgelb_api::HealthState::Down)
    })
    .await;
    let h = rs_status().and_then(|r| r.health).expect("health");
    assert_eq!(h.target, format!("tcp://{n2}"));
    assert!(
        h.last_result.is_some_and(|r| r.contains("connect")),
        "the last probe says why"
    );
    assert_eq!(fake.state().real_servers.len(), 2, "drained, not removed");

    let _l2 = std::net::TcpListener::bind(n2).expect("rebind");
    eventually(5, "n2 is back at full weight", || weight_of_n2() == Some(1)).await;
    assert_eq!(summary().full_builds, before.full_builds, "and so does its return");
    task.abort();
    drop(l1);
}

#[test]
fn a_services_own_settings_override_the_defaults_for_its_targets() {
    let own = Target::tcp(ip("10.1.0.11"), 30080);
    let other = Target::tcp(ip("10.1.0.12"), 30080);
    let api = VsKey::new(ip("203.0.113.6"), 80, Protocol::Tcp);
    let probed = |nodes: &[&str]| Probed {
        probe: own.clone(),
        nodes: nodes.iter().map(|n| ip(n)).collect(),
    };
    let hp = HealthPlan {
        targets: BTreeMap::from([
            (web(), probed(&["10.1.0.11"])),
            (api, probed(&["10.1.0.11", "10.1.0.12"])),
        ]),
        // `web` has its own settings, `api` has none: the target both use takes web's.
        overrides: BTreeMap::from([(
            web(),
            edgelb_api::HealthOverrides {
                interval_ms: Some(500),
                fall: Some(2),
                ..Default::default()
            },
        )]),
        ..HealthPlan::default()
    };
    let defaults = Settings::default();
    let probes = hp.probes(defaults);
    assert_eq!(probes[&other], defaults);
    let s = probes[&own];
    assert_eq!(s.interval, Duration::from_millis(500));
    assert_eq!(
        s.timeout,
        Duration::from_millis(500),
        "the default timeout follows a short interval"
    );
    assert_eq!((s.thresholds.rise, s.thresholds.fall), (defaults.thresholds.rise, 2));
    // One target at a time, as an incremental pass asks: the same answers.
    let users = |t: &Target| {
        hp.targets
            .iter()
            .filter(|(_, p)| p.target(t.addr).as_ref() == Some(t))
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
    };
    assert_eq!(hp.settings_of(&users(&own), defaults), Some(s));
    assert_eq!(hp.settings_of(&users(&other), defaults), Some(defaults));
    assert_eq!(hp.settings_of(&[], defaults), None);
}

#[tokio::test]
async fn a_drained_real_server_is_removed_when_the_drain_ends_without_waiting_for_the_resync() {
    let l1 = std::net::TcpListener::bind("127.0.0.4:0").expect("bind 127.0.0.4");
    let node_port = l1.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    store
        .create_pool(
            "test",
            serde_json::from_value::<PoolSpec>(serde_json::json!({"name": "public", "ranges": ["203.0.113.0/24"]}))
                .expect("pool spec"),
        )
        .await
        .expect("pool");
    store
        .create_cluster(
            "test",
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", &["127.0.0.4"]), node("n2", &["127.0.0.5"])],
            },
        )
        .await
        .expect("nodes");
    store
        .put_service(
            "test",
            "prod",
            "default",
            "web",
            spec(&[(Protocol::Tcp, 80, node_port)]),
        )
        .await
        .expect("service");
    let fake = FakeDataplane::new();
    let options = RunnerOptions {
        resync: Duration::from_secs(600),
        ..fast()
    };
    let r = Reconciler::new(store, fake.clone(), options).with_health(crate::config::HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        rise: 1,
        fall: 1,
        drain_timeout: Duration::from_millis(700),
        all_down: AllDown::FailOpen,
        ..crate::config::HealthConfig::default()
    });
    let task = tokio::spawn(r.run());
    let n2 = SocketAddr::new(ip("127.0.0.5"), node_port);
    // n2 never listened: programmed first (not probed yet), drained, then removed.
    let mut saw_drained = false;
    eventually(5, "n2 is removed after its drain", || {
        let s = fake.state();
        saw_drained |= s.real_servers.iter().any(|((_, a), rs)| a == n2 && rs.spec.weight == 0);
        saw_drained && !s.real_servers.keys().any(|(_, a)| a == n2)
    })
    .await;
    assert_eq!(fake.state().real_servers.len(), 1, "n1 stays");
    task.abort();
    drop(l1);
}

#[test]
fn after_a_restart_a_node_that_left_meanwhile_is_drained_from_what_the_kernel_holds() {
    let kernel = state(
        &[(web(), "rr")],
        &[
            (web(), "10.1.0.11:30080", 1),
            (web(), "10.1.0.12:30080", 1),
            (web(), "10.1.0.13:30080", 1),
        ],
    );
    let mut nodes = three_nodes();
    nodes[2].ready = false;
    let (d, hp) = desired_at(nodes, &[], &Drains::seed(&kernel), 0, AllDown::FailOpen);
    assert_eq!(weights(&d), w(&[(11, 1), (12, 1), (13, 0)]));
    assert_eq!(hp.next_deadline, Some(at(60)));
}

#[test]
fn a_services_health_settings_reach_its_probes() {
    let mut s = spec(&[(Protocol::Tcp, 80, 30080)]);
    s.health = Some(edgelb_api::HealthOverrides {
        interval_ms: Some(250),
        timeout_ms: Some(200),
        rise: Some(1),
        fall: Some(5),
        jitter_percent: Some(0),
    });
    let snap = snapshot(s, &["203.0.113.5"], vec![node("n1", &["10.1.0.11"])]);
    let input = HealthInput {
        now: t0(),
        drain_timeout: DRAIN,
        all_down: AllDown::FailOpen,
        targets: &HashMap::new(),
        drains: &Drains::default(),
        node_port: None,
    };
    let (_, hp) = desired_with(&snap, Manages::default(), &input);
    let probes = hp.probes(Settings::default());
    let got = probes[&Target::tcp(ip("10.1.0.11"), 30080)];
    assert_eq!(got.interval, Duration::from_millis(250));
    assert_eq!(got.timeout, Duration::from_millis(200));
    assert_eq!((got.thresholds.rise, got.thresholds.fall), (1, 5));
    assert_eq!(got.jitter_percent, 0);
}

// ---- the model changed one Service at a time ----

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Service `i` with a random spec: one or two ports, maybe UDP, maybe `Local` with some local
/// nodes, maybe source ranges (of both families), maybe its own scheduler, affinity and health
/// settings; its VIPs are its own, one in four shares service 0's IPv4 VIP on other ports.
fn random_service(rng: &mut Rng, i: u16) -> SnapshotService {
    let mut ports = vec![(Protocol::Tcp, 80 + i, 30_000 + i)];
    if rng.below(2) == 0 {
        ports.push((
            if rng.below(3) == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            1_000 + i,
            31_000 + i,
        ));
    }
    let mut s = spec(&ports);
    if rng.below(3) == 0 {
        s.external_traffic_policy = TrafficPolicy::Local;
        s.health_check_node_port = Some(32_000 + i);
        s.local_nodes = Some(
            ["n1", "n2", "n3"]
                .iter()
                .take(rng.below(4) as usize)
                .map(|n| n.to_string())
                .collect(),
        );
    }
    if rng.below(3) == 0 {
        s.source_ranges = vec!["198.51.100.0/24".into(), "2001:db8:9::/48".into()];
        if rng.below(2) == 0 {
            s.source_ranges.push("198.51.0.0/16".into());
        }
    }
    if rng.below(4) == 0 {
        s.scheduler = Some("rr".into());
    }
    if rng.below(4) == 0 {
        s.session_affinity = SessionAffinity::ClientIp;
    }
    s.forwarding = match rng.below(6) {
        0 => Some(edgelb_api::Forwarding::Tunnel),
        1 => Some(edgelb_api::Forwarding::Nat),
        2 => Some(edgelb_api::Forwarding::Fullnat),
        _ => None,
    };
    if rng.below(4) == 0 {
        s.health = Some(edgelb_api::HealthOverrides {
            interval_ms: Some(500 + u32::from(i)),
            ..Default::default()
        });
    }
    let shared = i > 0 && rng.below(4) == 0;
    let mut addresses = vec![AssignedIp {
        ip: if shared {
            ip("203.0.113.200")
        } else {
            IpAddr::from([203, 0, 113, i as u8])
        },
        pool: if i.is_multiple_of(2) { "public" } else { "other" }.into(),
    }];
    if rng.below(3) == 0 {
        addresses.push(AssignedIp {
            ip: format!("2001:db8::{i:x}").parse().expect("v6"),
            pool: "public".into(),
        });
    }
    SnapshotService {
        cluster: "prod".into(),
        namespace: "default".into(),
        name: format!("svc-{i}"),
        spec: Some(parsed(s)),
        addresses,
    }
}

/// A data plane that manages the VIP addresses and its nftables rules besides IPVS.
fn managing_all() -> Manages {
    Manages {
        addresses: true,
        rules: true,
        ..Manages::default()
    }
}

/// An empty kernel of a data plane that manages addresses and rules ([`managing_all`]).
fn empty_kernel() -> State {
    State {
        addresses: Some(BTreeSet::new()),
        rules: Some(Default::default()),
        ..State::default()
    }
}

fn model_snapshot(services: &BTreeMap<u16, SnapshotService>) -> DataplaneSnapshot {
    let mut snap = snapshot(spec(&[]), &[], Vec::new());
    snap.pools.push(SnapshotPool {
        name: "other".into(),
        ranges: vec![IpRange::parse("203.0.113.128/25").expect("range")],
        scheduler: "sh".into(),
        health: Some(edgelb_api::HealthOverrides {
            rise: Some(5),
            ..Default::default()
        }),
        // Its Services route directly unless they say otherwise.
        forwarding: Some(edgelb_api::Forwarding::Direct),
    });
    let mut n4 = node("n4", &["10.1.0.14", "fd00::14"]);
    n4.ready = false;
    snap.nodes.insert(
        "prod".into(),
        vec![
            node("n1", &["10.1.0.11", "fd00::11"]),
            node("n2", &["10.1.0.12", "fd00::12"]),
            node("n3", &["10.1.0.13"]),
            n4,
        ],
    );
    snap.services = services.values().cloned().collect();
    snap
}

#[test]
fn a_model_changed_one_service_at_a_time_equals_one_built_whole_and_its_plans_reach_it() {
    model_equivalence(None);
}

#[test]
fn the_same_holds_with_the_node_level_check_on() {
    model_equivalence(Some(10256));
}

fn model_equivalence(node_port: Option<u16>) {
    use super::model::{Model, Touched};
    let manages = managing_all();
    // One target down (drained to weight 0, with a deadline), the rest unknown (serving).
    let down = std::collections::HashMap::from([
        (
            crate::health::Target::tcp(ip("10.1.0.12"), 30_003),
            target_state(Health::Down, 0),
        ),
        (
            crate::health::node_target(ip("10.1.0.13"), 10256),
            target_state(Health::Down, 0),
        ),
    ]);
    let drains = Drains::default();
    let input = HealthInput {
        now: at(10),
        drain_timeout: Duration::from_secs(300),
        all_down: AllDown::FailOpen,
        targets: &down,
        drains: &drains,
        node_port,
    };
    let defaults = crate::health::Settings::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut services: BTreeMap<u16, SnapshotService> = BTreeMap::new();
    let mut model = Model::build(model_snapshot(&services), manages, &input);
    let mut kernel = empty_kernel();
    kernel = applied(&kernel, &model.plan_full(&kernel));
    let mut probes = model.health_plan().probes(defaults);
    let mut kinds = BTreeSet::new();
    for step in 0..400 {
        let i = rng.below(24) as u16;
        let svc = if services.contains_key(&i) && rng.below(3) == 0 {
            services.remove(&i);
            kinds.insert("delete");
            None
        } else {
            kinds.insert(if services.contains_key(&i) { "update" } else { "create" });
            let s = random_service(&mut rng, i);
            services.insert(i, s.clone());
            Some(s)
        };
        let key = crate::ipam::ServiceKey::new("prod", "default", &format!("svc-{i}"));
        let before = model.drains();
        let mut touched = Touched::default();
        assert!(
            model.replace(&key, svc, &input, &mut touched),
            "no two Services claim one key here"
        );

        // A full build starts from the drains the previous pass left, as the runner's does.
        let whole = Model::build(
            model_snapshot(&services),
            manages,
            &HealthInput {
                drains: &before,
                ..input
            },
        );
        assert_eq!(
            model.differences(&whole),
            Vec::<String>::new(),
            "step {step}: service {i}"
        );
        assert_eq!(model.clone().without_deadline(), whole.clone().without_deadline());
        // The plan of what was touched brings the kernel to the whole desired state.
        let ops = model.plan_touched(&kernel, &touched);
        kernel = applied(&kernel, &ops);
        assert_eq!(
            whole.plan_full(&kernel),
            Vec::new(),
            "step {step}: service {i}: {ops:?}"
        );
        // And the probes updated target by target are those of the whole plan.
        for (t, s) in model.probe_changes(&touched, defaults) {
            match s {
                Some(s) => probes.insert(t, s),
                None => probes.remove(&t),
            };
        }
        assert_eq!(probes, whole.health_plan().probes(defaults), "step {step}: service {i}");
    }
    assert_eq!(kinds.len(), 3, "creates, updates and deletes were all exercised");
    assert!(!services.is_empty());
    let rules = kernel.held_rules().expect("rules");
    let kinds = [
        |r: &Rule| matches!(r, Rule::FullNat { backend, .. } if backend.is_ipv4()),
        |r: &Rule| matches!(r, Rule::FullNat { backend, .. } if backend.is_ipv6()),
        |r: &Rule| matches!(r, Rule::Restricted { vip, .. } if vip.is_ipv4()),
        |r: &Rule| matches!(r, Rule::Allowed { vip, .. } if vip.is_ipv6()),
    ];
    assert!(
        kinds.iter().all(|kind| rules.iter().any(kind)),
        "the sequence exercised every kind of rule: {rules:?}"
    );
}

#[test]
fn redoing_the_services_that_depend_on_a_changed_target_equals_a_full_build() {
    health_change_equivalence(None);
}

#[test]
fn the_same_holds_for_node_level_targets() {
    health_change_equivalence(Some(10256));
}

/// Targets go down and come back one at a time; after each, the Services that
/// [`Model::services_depending_on`] names are replaced, and the model is the one a full build
/// with the new health gives, its plan reaching the kernel that build wants.
fn health_change_equivalence(node_port: Option<u16>) {
    use super::model::{Model, Touched};
    let manages = managing_all();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let services: BTreeMap<u16, SnapshotService> = (0..24).map(|i| (i, random_service(&mut rng, i))).collect();
    let snap = model_snapshot(&services);
    let mut health: HashMap<crate::health::Target, TargetState> = HashMap::new();
    let drains = Drains::default();
    fn input<'a>(
        now: i64,
        health: &'a HashMap<crate::health::Target, TargetState>,
        drains: &'a Drains,
        node_port: Option<u16>,
    ) -> HealthInput<'a> {
        HealthInput {
            now: at(now),
            drain_timeout: Duration::from_secs(300),
            all_down: AllDown::FailOpen,
            targets: health,
            drains,
            node_port,
        }
    }
    let mut model = Model::build(snap.clone(), manages, &input(0, &health, &drains, node_port));
    let mut kernel = empty_kernel();
    kernel = applied(&kernel, &model.plan_full(&kernel));
    let mut targets: Vec<_> = model
        .health_plan()
        .probes(crate::health::Settings::default())
        .into_keys()
        .collect();
    targets.sort();
    let node_targets = targets
        .iter()
        .filter(|t| model.health_plan().nodes.contains_key(t))
        .count();
    assert_eq!(
        node_targets > 0,
        node_port.is_some(),
        "node-level targets only with the check on"
    );
    let (mut redone, mut some_drained) = (0, false);
    for step in 1..120 {
        let t = targets[rng.below(targets.len() as u64) as usize].clone();
        let serves = health.get(&t).is_none_or(|s| s.serves());
        let next = if serves { Health::Down } else { Health::Up };
        health.insert(t.clone(), target_state(next, step));
        let keys = model
            .services_depending_on(std::slice::from_ref(&t), usize::MAX)
            .expect("no bound");
        redone += keys.len();
        let before = model.drains();
        let mut touched = Touched::default();
        let fresh = keys
            .iter()
            .map(|k| {
                let svc = services
                    .values()
                    .find(|s| crate::ipam::ServiceKey::new(&s.cluster, &s.namespace, &s.name) == *k)
                    .cloned();
                (k.clone(), svc)
            })
            .collect();
        let none = Drains::default();
        assert!(model.replace_all(fresh, &input(step, &health, &none, node_port), &mut touched));
        let whole = Model::build(snap.clone(), manages, &input(step, &health, &before, node_port));
        assert_eq!(model.differences(&whole), Vec::<String>::new(), "step {step}: {t}");
        kernel = applied(&kernel, &model.plan_touched(&kernel, &touched));
        assert_eq!(whole.plan_full(&kernel), Vec::new(), "step {step}: {t}");
        some_drained |= kernel.real_servers.iter().any(|(_, rs)| rs.spec.weight == 0);
        // Bounded: more dependants than the bound is no answer.
        if keys.len() > 1 {
            assert_eq!(
                model.services_depending_on(std::slice::from_ref(&t), keys.len() - 1),
                None
            );
        }
    }
    assert!(some_drained, "targets went down and drained real servers");
    assert!(
        redone < 119 * services.len() / 2,
        "a change redoes a few Services, not all: {redone}"
    );
}

#[tokio::test]
async fn a_change_to_some_services_touches_only_them_and_leaves_what_a_full_pass_would() {
    let (_dir, store) = store_with_service().await;
    for i in 0..40 {
        store
            .put_service(
                "test",
                "prod",
                "default",
                &format!("s{i}"),
                spec(&[(Protocol::Tcp, 80, 31_000 + i)]),
            )
            .await
            .expect("service");
    }
    let fake = FakeDataplane::full();
    let r = Reconciler::new(store.clone(), fake.clone(), fast());
    let status = r.status();
    r.pass().await.expect("full pass");
    let vip_of = |name: &str| {
        let store = store.clone();
        let name = name.to_owned();
        async move { store.get_service("prod", "default", &name).await.expect("get").ips[0] }
    };
    let (s7, s8) = (vip_of("s7").await, vip_of("s8").await);

    // s7 gains a port and a source range, s8 goes, s-new comes.
    let mut changed = spec(&[(Protocol::Tcp, 80, 31_007), (Protocol::Udp, 53, 32_007)]);
    changed.source_ranges = vec!["192.0.2.0/24".into()];
    store
        .put_service("test", "prod", "default", "s7", changed)
        .await
        .expect("s7");
    store.delete_service("test", "prod", "default", "s8").await.expect("s8");
    store
        .put_service(
            "test",
            "prod",
            "default",
            "s-new",
            spec(&[(Protocol::Tcp, 8080, 32_100)]),
        )
        .await
        .expect("new");
    let s_new = vip_of("s-new").await;

    let ops = r.pass_for_change().await.expect("change pass").ops;
    let vip_of_op = |op: &Op| match op {
        Op::AddService(k, _) | Op::EditService(k, _) | Op::DeleteService(k) => Some(k.vip),
        Op::AddRealServer(k, _, _) | Op::EditRealServer(k, _, _) | Op::DeleteRealServer(k, _) => Some(k.vip),
        Op::AddAddress(a) | Op::DeleteAddress(a) => Some(*a),
        _ => None,
    };
    assert!(
        ops.iter().filter_map(vip_of_op).all(|v| [s7, s8, s_new].contains(&v)),
        "only the changed Services' VIPs: {ops:?}"
    );
    assert!(
        matches!(ops.first(), Some(Op::PatchElements { .. })),
        "rules first: {ops:?}"
    );
    assert!(
        matches!(ops.last(), Some(Op::DeleteAddress(a)) if *a == s8),
        "the VIP released last: {ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, Op::SetRules(_))),
        "the table is patched, not rewritten: {ops:?}"
    );
    let rules = fake.state().held_rules().expect("rules");
    assert!(
        rules.contains(&Rule::Restricted {
            vip: s7,
            protocol: Protocol::Udp,
            port: 53
        }),
        "{rules:?}"
    );
    assert!(
        !rules
            .iter()
            .any(|r| matches!(r, Rule::FullNat { backend, .. } if backend.port() == 31008)),
        "s8's rules are gone"
    );

    // The kernel now holds exactly what a full pass wants, and the status shows it.
    assert_eq!(r.pass().await.expect("full pass").ops, Vec::new());
    let shown = status.borrow().virtual_services();
    r.pass_for_change().await.expect("nothing to do");
    let kernel = Published {
        observed: fake.state(),
        owned: desired(&store.dataplane_snapshot().await.expect("snap"), Manages::default()).owned,
        ..Published::default()
    };
    assert_eq!(shown, kernel.virtual_services());

    // The status after a change pass is the one a full pass publishes.
    store.delete_service("test", "prod", "default", "s9").await.expect("s9");
    r.pass_for_change().await.expect("change pass");
    let incremental = status.borrow().virtual_services();
    r.pass().await.expect("full pass");
    assert_eq!(incremental, status.borrow().virtual_services());
    assert_eq!(incremental.len(), 2 + 40 - 2 + 2);
}

// ---- the node-level check (kube-proxy's port 10256) ----

/// Two Services (TCP and UDP) on three nodes, with the node check on and `down` nodes' checks
/// failing since t0.
fn with_node_check(down: &[u8], all_down: AllDown) -> (Desired, HealthPlan) {
    let mut snap = snapshot(spec(&[(Protocol::Tcp, 80, 30080)]), &["203.0.113.5"], three_nodes());
    let mut udp = snap.services[0].clone();
    udp.name = "dns".into();
    udp.spec = Some(parsed(spec(&[(Protocol::Udp, 53, 30053)])));
    udp.addresses[0].ip = ip("203.0.113.6");
    snap.services.push(udp);
    let targets: HashMap<Target, TargetState> = down
        .iter()
        .map(|o| {
            (
                crate::health::node_target(ip(&format!("10.1.0.{o}")), 10256),
                target_state(Health::Down, 0),
            )
        })
        .collect();
    let input = HealthInput {
        now: at(10),
        drain_timeout: DRAIN,
        all_down,
        targets: &targets,
        drains: &Drains::default(),
        node_port: Some(10256),
    };
    desired_with(&snap, Manages::default(), &input)
}

fn weights_of(d: &Desired, k: VsKey) -> BTreeMap<String, u32> {
    d.state
        .real_servers_of(k)
        .map(|(a, rs)| (a.ip().to_string(), rs.spec.weight))
        .collect()
}

#[test]
fn a_failing_node_check_drains_every_real_server_of_that_node_tcp_and_udp_alike() {
    let dns = VsKey::new(ip("203.0.113.6"), 53, Protocol::Udp);
    let (all_up, hp) = with_node_check(&[], AllDown::FailOpen);
    assert_eq!(weights_of(&all_up, web()), w(&[(11, 1), (12, 1), (13, 1)]));
    // One probe per node, with the defaults, besides the TCP Service's own targets.
    let probes = hp.probes(Settings::default());
    for o in [11, 12, 13] {
        assert_eq!(
            probes.get(&crate::health::node_target(ip(&format!("10.1.0.{o}")), 10256)),
            Some(&Settings::default())
        );
    }
    assert_eq!(probes.len(), 3 + 3, "3 node checks and 3 NodePort probes: {probes:?}");

    let (one_down, hp) = with_node_check(&[12], AllDown::FailOpen);
    assert_eq!(weights_of(&one_down, web()), w(&[(11, 1), (12, 0), (13, 1)]));
    assert_eq!(
        weights_of(&one_down, dns),
        w(&[(11, 1), (12, 0), (13, 1)]),
        "UDP has no probe of its own"
    );
    assert_eq!(hp.next_deadline, Some(at(0) + DRAIN), "drained until the drain timeout");
    // Weights change in place: no service or real server is deleted and re-added.
    let ops = plan(&one_down, &all_up.state);
    assert!(
        ops.iter()
            .all(|op| matches!(op, Op::EditRealServer(_, a, s) if a.ip() == ip("10.1.0.12") && s.weight == 0)),
        "{ops:?}"
    );
    assert_eq!(ops.len(), 2);

    // Every node failing: fail-open keeps them all; fail-closed drains them all.
    let (open, _) = with_node_check(&[11, 12, 13], AllDown::FailOpen);
    assert_eq!(weights_of(&open, dns), w(&[(11, 1), (12, 1), (13, 1)]));
    let (closed, _) = with_node_check(&[11, 12, 13], AllDown::FailClosed);
    assert_eq!(weights_of(&closed, dns), w(&[(11, 0), (12, 0), (13, 0)]));
}

fn shared_vip_service(name: &str, ports: &[(Protocol, u16, u16)], ranges: &[&str]) -> SnapshotService {
    let mut s = spec(ports);
    s.source_ranges = ranges.iter().map(|r| r.to_string()).collect();
    SnapshotService {
        cluster: "prod".into(),
        namespace: "default".into(),
        name: name.into(),
        spec: Some(parsed(s)),
        addresses: vec![AssignedIp {
            ip: ip("203.0.113.5"),
            pool: "public".into(),
        }],
    }
}

fn no_health_input<'a>(targets: &'a HashMap<Target, TargetState>, drains: &'a Drains) -> HealthInput<'a> {
    HealthInput {
        now: at(0),
        drain_timeout: DRAIN,
        all_down: AllDown::FailOpen,
        targets,
        drains,
        node_port: None,
    }
}

#[test]
fn a_source_range_replaced_by_an_overlapping_one_is_swapped_in_one_transaction() {
    use super::model::{Model, Touched};
    let manages = managing_all();
    let (targets, drains) = (HashMap::new(), Drains::default());
    let input = no_health_input(&targets, &drains);
    let mut snap = snapshot(spec(&[]), &[], three_nodes());
    snap.services = vec![shared_vip_service(
        "web",
        &[(Protocol::Tcp, 80, 30080)],
        &["10.0.0.0/16"],
    )];
    let mut model = Model::build(snap, manages, &input);
    let empty = empty_kernel();
    let kernel = applied(&empty, &model.plan_full(&empty));
    let key = crate::ipam::ServiceKey::new("prod", "default", "web");

    // Widened: the old range goes in the same transaction as the new, before it.
    let mut touched = Touched::default();
    let widened = shared_vip_service("web", &[(Protocol::Tcp, 80, 30080)], &["10.0.0.0/8"]);
    assert!(model.replace(&key, Some(widened), &input, &mut touched));
    let ops = model.plan_touched(&kernel, &touched);
    let allowed = |p: &str| Rule::Allowed {
        vip: ip("203.0.113.5"),
        protocol: Protocol::Tcp,
        port: 80,
        prefix: p.parse().expect("prefix"),
    };
    assert_eq!(
        ops,
        vec![Op::PatchElements {
            delete: vec![allowed("10.0.0.0/16")],
            add: vec![allowed("10.0.0.0/8")],
        }]
    );
    let kernel = applied(&kernel, &ops);

    // Opened to everyone: the restriction and its allowed sources go last, together.
    let mut touched = Touched::default();
    let open = shared_vip_service("web", &[(Protocol::Tcp, 80, 30080)], &[]);
    assert!(model.replace(&key, Some(open), &input, &mut touched));
    let ops = model.plan_touched(&kernel, &touched);
    assert!(
        matches!(ops.as_slice(), [Op::DeleteElements(d)] if d.len() == 2),
        "{ops:?}"
    );
}

#[test]
fn a_virtual_service_handed_from_one_service_to_another_in_one_change_is_kept() {
    use super::model::{Model, Touched};
    let manages = managing_all();
    let (targets, drains) = (HashMap::new(), Drains::default());
    let input = no_health_input(&targets, &drains);
    // `b-api` (sorted before `web`) and `web` share the VIP; web has port 80.
    let web80 = shared_vip_service("web", &[(Protocol::Tcp, 80, 30080)], &[]);
    let api = shared_vip_service("b-api", &[(Protocol::Tcp, 8080, 30081)], &[]);
    let mut snap = snapshot(spec(&[]), &[], three_nodes());
    snap.services = vec![api, web80];
    let mut model = Model::build(snap.clone(), manages, &input);
    let empty = empty_kernel();
    let kernel = applied(&empty, &model.plan_full(&empty));

    // web moves to 81 and b-api takes 80, committed together.
    let web81 = shared_vip_service("web", &[(Protocol::Tcp, 81, 30080)], &[]);
    let api80 = shared_vip_service("b-api", &[(Protocol::Tcp, 80, 30081)], &[]);
    let before = model.drains();
    let mut touched = Touched::default();
    let key = |n: &str| crate::ipam::ServiceKey::new("prod", "default", n);
    assert!(model.replace_all(
        vec![(key("b-api"), Some(api80.clone())), (key("web"), Some(web81.clone()))],
        &input,
        &mut touched
    ));
    snap.services = vec![api80.clone(), web81];
    // As the runner's full build: from the drains the last pass left. Port 80's old real
    // servers (web's NodePort) drain rather than vanish; b-api's are added beside them.
    let whole = Model::build(
        snap,
        manages,
        &HealthInput {
            drains: &before,
            ..input
        },
    );
    assert_eq!(model.differences(&whole), Vec::<String>::new());
    let kernel = applied(&kernel, &model.plan_touched(&kernel, &touched));
    assert_eq!(whole.plan_full(&kernel), Vec::new());
    assert!(
        kernel.services.contains_key(&web()),
        "port 80 is forwarded, now for b-api"
    );

    // A claim on a key another Service still holds cannot be decided one Service at a time.
    let mut touched = Touched::default();
    let also81 = shared_vip_service("b-api", &[(Protocol::Tcp, 81, 30081)], &[]);
    assert!(!model.replace(&key("b-api"), Some(also81), &input, &mut touched));
}

// ---- a resync's dump does not hold changes back ----

#[tokio::test]
async fn a_change_during_a_slow_resync_reaches_the_kernel_before_the_dump_ends_and_is_not_redone() {
    let (_dir, store) = store_with_service().await;
    let fake = FakeDataplane::full();
    let r = Reconciler::new(store.clone(), fake.clone(), fast());
    r.pass().await.expect("first pass");
    let mut changes = store.subscribe();
    changes.borrow_and_update();
    // Each dump takes 2 s and returns the kernel as it was when it began.
    fake.slow_observe(Duration::from_secs(2));
    let resync = r.pass_answering(&mut changes);
    tokio::pin!(resync);
    // While it dumps: `web` goes, `api` comes with a source range (an address, IPVS entries and
    // rules each way).
    let change = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .delete_service("test", "prod", "default", "web")
            .await
            .expect("delete web");
        let mut api = spec(&[(Protocol::Tcp, 8080, 31_080)]);
        api.source_ranges = vec!["192.0.2.0/24".into()];
        store
            .put_service("test", "prod", "default", "api", api)
            .await
            .expect("put api");
        eventually(5, "only api is in the kernel", || {
            let s = fake.state();
            s.services.len() == 1 && s.services.keys().all(|k| k.port == 8080)
        })
        .await;
    };
    tokio::select! {
        _ = &mut resync => panic!("the resync ended before the change reached the kernel"),
        () = change => {}
    }
    // The dump missed both changes; what they applied was taken from the kept state, so the
    // resync neither adds `api` again (the fake would refuse: it exists) nor restores `web`.
    let report = resync.await.expect("the resync after the change");
    assert_eq!(report.ops, Vec::new());
    fake.slow_observe(Duration::ZERO);
    assert_eq!(r.pass().await.expect("a full pass").ops, Vec::new());
    let prefix: crate::forwarding::IpPrefix = "192.0.2.0/24".parse().expect("prefix");
    let rules = fake.state().held_rules().expect("rules");
    assert!(
        rules
            .iter()
            .any(|r| matches!(r, Rule::Allowed { prefix: p, .. } if *p == prefix)),
        "{rules:?}"
    );
    assert!(
        !rules
            .iter()
            .any(|r| matches!(r, Rule::FullNat { backend, .. } if backend.is_ipv4() && backend.port() == 30080)),
        "{rules:?}"
    );
}

#[test]
fn an_overlay_takes_what_the_operations_touched_from_the_kept_state() {
    let web = web();
    let api = key("203.0.113.6", 80);
    let mut kept = state(&[(api, "wlc")], &[(api, "10.1.0.11:30081", 1)]);
    kept.addresses = Some(BTreeSet::from([ip("203.0.113.6")]));
    // A dump that saw `web` still there and `api` not yet.
    let mut dumped = state(&[(web, "wlc")], &[(web, "10.1.0.11:30080", 1)]);
    dumped.addresses = Some(BTreeSet::from([ip("203.0.113.5")]));
    let untouched = key("203.0.113.7", 80);
    dumped.services.insert(untouched, vs("rr", None));
    let ops = [
        Op::AddAddress(ip("203.0.113.6")),
        Op::AddService(api, vs("wlc", None).spec),
        Op::AddRealServer(api, sa("10.1.0.11:30081"), RsSpec::masquerade(1)),
        Op::DeleteService(web),
        Op::DeleteAddress(ip("203.0.113.5")),
    ];
    dumped.overlay(&kept, &ops);
    assert_eq!(dumped.services.keys().copied().collect::<Vec<_>>(), [api, untouched]);
    assert_eq!(dumped.real_servers, kept.real_servers);
    assert_eq!(dumped.addresses, kept.addresses);
}
