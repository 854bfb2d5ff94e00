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
    Dataplane, FakeDataplane, Forward, Manages, RealServer, RsSpec, State, VirtualService, VsKey, VsSpec,
};
use crate::ipam::IpRange;
use crate::store::{DataplaneSnapshot, SnapshotPool, SnapshotService, Store};

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
    }
}

fn spec(ports: &[(Protocol, u16, u16)]) -> ServiceSpec {
    ServiceSpec {
        uid: "u1".into(),
        ports: ports
            .iter()
            .map(|(protocol, port, node_port)| ServicePort {
                name: None,
                protocol: *protocol,
                port: *port,
                node_port: *node_port,
            })
            .collect(),
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        session_affinity_timeout_seconds: None,
        source_ranges: vec![],
        pool: None,
        requested_ips: vec![],
        ip_families: vec![edgelb_api::IpFamily::Ipv4],
        sharing_key: None,
        scheduler: None,
        local_nodes: None,
    }
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
        }],
        services: vec![SnapshotService {
            cluster: "prod".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec: Some(spec),
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
        },
    );
    let web = VsKey::new(ip("203.0.113.5"), 80, Protocol::Tcp);
    assert_eq!(
        d.state.services[&web].spec,
        VsSpec {
            scheduler: "sh".into(),
            persistence: Some(desired::DEFAULT_AFFINITY_TIMEOUT)
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
                rules: false
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

    let status = r.status().borrow().clone();
    assert_eq!(status.mode, "fake");
    assert_eq!(status.virtual_services.len(), 2, "only owned services are reported");
    assert!(status.last_error.is_none() && status.last_sync.is_some());

    // Drift: someone deletes a real server by hand; the next pass puts it back.
    fake.tamper(|s| {
        let first = s.real_servers.keys().next().copied();
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
    let status = r.status().borrow().clone();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("netlink went away"))
    );
    fake.fail_observe(None);
    assert_eq!(r.pass().await.expect("pass").ops.len(), 8);
    assert!(r.status().borrow().last_error.is_none());
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
            panic!("real servers never became {n}: {:?}", fake.state().real_servers.keys());
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
