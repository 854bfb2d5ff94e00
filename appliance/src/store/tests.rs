//! Tests of the store against a real SQLite file in a temporary directory: pools, Services and
//! their addresses, holds, listings, the start-up sync, nodes, tokens, users, reopening the
//! database and backing it up.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use edgelb_api::{
    Allocation, AllocationState, ClusterSpec, IpFamily, Node, NodeList, PoolPatch, PoolSpec, Protocol, Role,
    ServicePort, ServiceSpec, SyncRequest, SyncService, TokenSpec,
};
use tempfile::TempDir;

use super::*;

pub(super) const ACTOR: &str = "test";

// ---- fixtures ----

async fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).await.expect("open store");
    (dir, store)
}

pub(super) fn pool(name: &str, ranges: &[&str]) -> PoolSpec {
    PoolSpec {
        name: name.to_owned(),
        ranges: ranges.iter().map(|r| (*r).to_owned()).collect(),
        auto_assign: true,
        avoid_buggy_ips: false,
        priority: 0,
        clusters: vec![],
        namespaces: vec![],
        scheduler: "wlc".to_owned(),
        hold_seconds: 600,
        health: None,
        forwarding: None,
        capacity_critical_percent: edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT,
        capacity_warning_percent: edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT,
    }
}

/// A Service spec with TCP ports, asking for one IPv4 address.
pub(super) fn service(uid: &str, ports: &[u16]) -> ServiceSpec {
    let ports = ports.iter().zip(30_000u16..);
    ServiceSpec::new(
        uid,
        ports
            .map(|(p, node_port)| ServicePort::new(Protocol::Tcp, *p, node_port))
            .collect(),
    )
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("'{s}' is not a test address"))
}

fn num(ip: IpAddr) -> u128 {
    crate::ipam::to_u128(ip)
}

pub(super) fn shown(ips: &[IpAddr]) -> Vec<String> {
    ips.iter().map(ToString::to_string).collect()
}

pub(super) async fn with_pool_and_cluster(pools: &[PoolSpec], cluster: &str) -> (TempDir, Store) {
    let (dir, store) = open().await;
    for p in pools {
        store
            .create_pool(ACTOR, p.clone())
            .await
            .unwrap_or_else(|e| panic!("create pool {}: {e}", p.name));
    }
    add_cluster(&store, cluster).await;
    (dir, store)
}

async fn add_cluster(store: &Store, name: &str) {
    store
        .create_cluster(
            ACTOR,
            ClusterSpec {
                name: name.to_owned(),
                description: format!("{name} cluster"),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create cluster {name}: {e}"));
}

/// Puts a Service and returns its addresses.
pub(super) async fn put(store: &Store, cluster: &str, namespace: &str, name: &str, spec: ServiceSpec) -> Vec<String> {
    let s = store
        .put_service(ACTOR, cluster, namespace, name, spec)
        .await
        .unwrap_or_else(|e| panic!("put {cluster}/{namespace}/{name}: {e}"));
    shown(&s.ips)
}

pub(super) async fn audit_actions(store: &Store) -> Vec<String> {
    let page = store
        .list_audit(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    // Newest first in the listing; oldest first is easier to read in assertions.
    page.items.into_iter().rev().map(|e| e.action).collect()
}

/// Every page of allocations matching the filter.
pub(super) async fn all_allocations(store: &Store, filter: AllocationFilter) -> Vec<Allocation> {
    let mut out = Vec::new();
    let mut f = AllocationFilter { limit: 1000, ..filter };
    loop {
        let page = store.list_allocations(&f).await.expect("list allocations");
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => f.cursor = Some(c),
            None => return out,
        }
    }
}

fn alloc_ips(list: &[Allocation]) -> Vec<String> {
    list.iter().map(|a| a.ip.to_string()).collect()
}

// ---- pools ----

#[tokio::test]
async fn pools_round_trip_through_create_list_get_patch_and_delete() {
    let (_dir, store) = open().await;
    let public = PoolSpec {
        priority: 10,
        ..pool(
            "public",
            &["203.0.113.0/26", "203.0.113.100-203.0.113.120", "2001:db8:1::/64"],
        )
    };
    let created = store.create_pool(ACTOR, public.clone()).await.expect("create public");
    assert_eq!(created.spec, public);
    store
        .create_pool(ACTOR, pool("private", &["10.0.0.0/24"]))
        .await
        .expect("create private");

    let names = |pools: Vec<edgelb_api::Pool>| pools.into_iter().map(|p| p.spec.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_pools().await.expect("list")),
        ["public", "private"],
        "by priority"
    );
    assert_eq!(store.get_pool("public").await.expect("get").spec, public);

    let patch = PoolPatch {
        priority: Some(20),
        auto_assign: Some(false),
        ..PoolPatch::default()
    };
    let patched = store.patch_pool(ACTOR, "private", patch).await.expect("patch");
    assert_eq!((patched.spec.priority, patched.spec.auto_assign), (20, false));
    assert_eq!(patched.spec.ranges, ["10.0.0.0/24"], "untouched fields stay");
    assert!(patched.updated_at >= patched.created_at);
    assert_eq!(names(store.list_pools().await.expect("list")), ["private", "public"]);

    // A patch that changes nothing writes nothing.
    let before = audit_actions(&store).await.len();
    store
        .patch_pool(
            ACTOR,
            "private",
            PoolPatch {
                priority: Some(20),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("noop");
    assert_eq!(audit_actions(&store).await.len(), before);

    store.delete_pool(ACTOR, "private").await.expect("delete");
    assert!(matches!(store.get_pool("private").await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.delete_pool(ACTOR, "private").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.patch_pool(ACTOR, "private", PoolPatch::default()).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(names(store.list_pools().await.expect("list")), ["public"]);
    assert_eq!(
        audit_actions(&store).await,
        ["pool.create", "pool.create", "pool.update", "pool.delete"]
    );
}

#[tokio::test]
async fn schedulers_are_checked_against_what_the_backend_offers_and_stored_ones_stay() {
    let (_dir, store) = with_pool_and_cluster(&[pool("public", &["203.0.113.0/24"])], "prod").await;
    let mh = |name: &str| PoolSpec {
        scheduler: "mh".into(),
        ..pool(name, &["198.51.100.0/24"])
    };
    store.create_pool(ACTOR, mh("maglev")).await.expect("IPVS offers mh");
    let wlc = crate::forwarding::Capabilities::ipvs(Default::default());
    store.set_capabilities(crate::forwarding::Capabilities {
        schedulers: ["rr", "wlc"]
            .into_iter()
            .map(crate::forwarding::Scheduler::from_name)
            .collect(),
        protocols: vec![edgelb_api::Protocol::Tcp, edgelb_api::Protocol::Udp],
        ..wlc
    });
    match store.create_pool(ACTOR, mh("other")).await {
        Err(StoreError::Invalid(errors)) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "scheduler");
            assert_eq!(errors[0].message, "unknown scheduler 'mh': use one of rr, wlc");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    let spec = ServiceSpec {
        scheduler: Some("sh".into()),
        ..service("u1", &[80])
    };
    match store.put_service(ACTOR, "prod", "default", "web", spec).await {
        Err(StoreError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["scheduler"], "{errors:?}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    // So are protocols.
    let mut sctp = service("u1", &[80, 443]);
    sctp.ports[1].protocol = edgelb_api::Protocol::Sctp;
    match store.put_service(ACTOR, "prod", "default", "web", sctp).await {
        Err(StoreError::Invalid(errors)) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "ports[1].protocol");
            assert_eq!(
                errors[0].message,
                "this appliance's data plane does not forward SCTP: it forwards TCP, UDP"
            );
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    // What was stored before stays readable and usable: the pool of a scheduler no longer offered
    // still lists and hands out addresses.
    let pools: Vec<String> = store
        .list_pools()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.spec.scheduler)
        .collect();
    assert!(pools.contains(&"mh".to_owned()), "{pools:?}");
    assert_eq!(
        put(&store, "prod", "default", "web", service("u1", &[80])).await.len(),
        1
    );
}

#[tokio::test]
async fn a_pools_forwarding_method_is_stored_patched_and_checked_against_the_backend() {
    use edgelb_api::Forwarding;
    let (dir, store) = open().await;
    let tunnel = PoolSpec {
        forwarding: Some(Forwarding::Tunnel),
        ..pool("remote", &["198.51.100.0/24"])
    };
    store.create_pool(ACTOR, tunnel).await.expect("create");
    let snap = store.dataplane_snapshot().await.expect("snapshot");
    assert_eq!(snap.pools[0].forwarding, Some(Forwarding::Tunnel));
    // Absent in a PATCH: kept; `null`: back to the appliance's default.
    let kept: PoolPatch = serde_json::from_value(serde_json::json!({"priority": 3})).expect("patch");
    let p = store.patch_pool(ACTOR, "remote", kept).await.expect("patch");
    assert_eq!(p.spec.forwarding, Some(Forwarding::Tunnel));
    let cleared: PoolPatch = serde_json::from_value(serde_json::json!({"forwarding": null})).expect("patch");
    let p = store.patch_pool(ACTOR, "remote", cleared).await.expect("patch");
    assert_eq!(p.spec.forwarding, None);
    let direct: PoolPatch = serde_json::from_value(serde_json::json!({"forwarding": "direct"})).expect("patch");
    store.patch_pool(ACTOR, "remote", direct).await.expect("patch");
    // Kept across a restart.
    drop(store);
    let store = Store::open(dir.path()).await.expect("reopen");
    assert_eq!(
        store.get_pool("remote").await.expect("get").spec.forwarding,
        Some(Forwarding::Direct)
    );
    // A backend without tunnels refuses them, in a pool and in a Service, and says what it has.
    let ipvs = crate::forwarding::Capabilities::ipvs(Default::default());
    store.set_capabilities(crate::forwarding::Capabilities {
        methods: vec![
            crate::forwarding::Forward::Masquerade,
            crate::forwarding::Forward::Route,
        ],
        ..ipvs
    });
    let want = "this appliance's data plane cannot forward with 'tunnel': use one of fullnat, nat, direct";
    let other = PoolSpec {
        forwarding: Some(Forwarding::Tunnel),
        ..pool("other", &["203.0.113.0/24"])
    };
    match store.create_pool(ACTOR, other).await {
        Err(StoreError::Invalid(errors)) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(
                (errors[0].field.as_str(), errors[0].message.as_str()),
                ("forwarding", want)
            );
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    add_cluster(&store, "prod").await;
    let spec = ServiceSpec {
        forwarding: Some(Forwarding::Tunnel),
        ..service("u1", &[80])
    };
    match store.put_service(ACTOR, "prod", "default", "web", spec).await {
        Err(StoreError::Invalid(errors)) => {
            assert_eq!(
                (errors[0].field.as_str(), errors[0].message.as_str()),
                ("forwarding", want)
            );
        }
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_or_overlapping_pools_are_refused_with_what_to_fix() {
    let (_dir, store) = open().await;
    store
        .create_pool(ACTOR, pool("public", &["203.0.113.0/24"]))
        .await
        .expect("create");
    let bad = PoolSpec {
        scheduler: "nope".into(),
        ..pool("Bad", &["203.0.114.0/24", "10.0.0.5/24"])
    };
    match store.create_pool(ACTOR, bad).await {
        Err(StoreError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["name", "ranges[1]", "scheduler"]);
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    match store.create_pool(ACTOR, pool("other", &["203.0.113.128/25"])).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("pool 'public'"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    let bad_patch = PoolPatch {
        ranges: Some(vec!["banana".into()]),
        ..PoolPatch::default()
    };
    assert!(matches!(
        store.patch_pool(ACTOR, "public", bad_patch).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.get_pool("public").await.expect("get").spec.ranges,
        ["203.0.113.0/24"]
    );
    assert_eq!(audit_actions(&store).await, ["pool.create"], "refusals write nothing");
}

#[tokio::test]
async fn creating_an_existing_pool_cluster_or_user_is_a_conflict() {
    let (_dir, store) = open().await;
    store
        .create_pool(ACTOR, pool("p", &["10.0.0.0/24"]))
        .await
        .expect("first");
    match store.create_pool(ACTOR, pool("p", &["10.9.0.0/24"])).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    // No in-memory check guards clusters: this is the unique constraint speaking.
    add_cluster(&store, "prod").await;
    match store
        .create_cluster(
            ACTOR,
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
    {
        Err(StoreError::Conflict(m)) => assert_eq!(m, "cluster 'prod' already exists"),
        other => panic!("expected conflict, got {other:?}"),
    }
    store
        .create_user(ACTOR, "alice", "a long enough password", Role::Viewer)
        .await
        .expect("user");
    assert!(matches!(
        store
            .create_user(ACTOR, "alice", "another long password", Role::Admin)
            .await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn pool_usage_counts_allocated_held_and_free_addresses() {
    let (_dir, store) = with_pool_and_cluster(
        &[pool("small", &["10.0.0.0/26"]), pool("six", &["2001:db8:1::/64"])],
        "prod",
    )
    .await;
    let usage = store.get_pool("small").await.expect("get").usage;
    assert_eq!(
        (usage.total.as_str(), usage.allocated, usage.held, usage.free.as_str()),
        ("64", 0, 0, "64")
    );
    for name in ["a", "b", "c"] {
        put(&store, "prod", "default", name, service(name, &[80])).await;
    }
    store
        .delete_service(ACTOR, "prod", "default", "b")
        .await
        .expect("delete");
    let usage = store.get_pool("small").await.expect("get").usage;
    assert_eq!(
        (usage.total.as_str(), usage.allocated, usage.held, usage.free.as_str()),
        ("64", 2, 1, "61")
    );
    assert!((usage.utilization - 3.0 / 64.0).abs() < 1e-9, "{}", usage.utilization);

    let six = store.get_pool("six").await.expect("six").usage;
    assert_eq!(
        (six.total.as_str(), six.free.as_str()),
        ("18446744073709551616", "18446744073709551616")
    );
    let v6 = ServiceSpec {
        ip_families: vec![IpFamily::Ipv6],
        ..service("v6", &[80])
    };
    assert_eq!(put(&store, "prod", "default", "v6", v6).await, ["2001:db8:1::"]);
    let six = store.get_pool("six").await.expect("six").usage;
    assert_eq!((six.allocated, six.free.as_str()), (1, "18446744073709551615"));
    // The listing carries the same counts.
    let listed = store.list_pools().await.expect("list");
    let small = listed.iter().find(|p| p.spec.name == "small").expect("listed");
    assert_eq!((small.usage.allocated, small.usage.held), (2, 1));
}

#[tokio::test]
async fn a_pool_cannot_shrink_past_or_be_deleted_under_its_allocations() {
    let p = PoolSpec {
        hold_seconds: 0,
        ..pool("p", &["10.0.0.0/24"])
    };
    let (_dir, store) = with_pool_and_cluster(&[p], "prod").await;
    put(&store, "prod", "default", "web", service("w", &[80])).await;
    put(&store, "prod", "default", "api", service("a", &[80])).await;
    let shrink = PoolPatch {
        ranges: Some(vec!["10.0.0.1-10.0.0.200".into()]),
        ..PoolPatch::default()
    };
    match store.patch_pool(ACTOR, "p", shrink.clone()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("10.0.0.0 (Service prod/default/web)"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    match store.delete_pool(ACTOR, "p").await {
        Err(StoreError::Conflict(m)) => {
            assert!(m.contains("2 address(es)") && m.contains("prod/default/api"), "{m}");
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    store
        .delete_service(ACTOR, "prod", "default", "web")
        .await
        .expect("release web");
    let shrunk = store
        .patch_pool(ACTOR, "p", shrink)
        .await
        .expect("nothing stranded now");
    assert_eq!(shrunk.spec.ranges, ["10.0.0.1-10.0.0.200"]);
    assert_eq!(shrunk.usage.total, "200");
    store
        .delete_service(ACTOR, "prod", "default", "api")
        .await
        .expect("release api");
    store.delete_pool(ACTOR, "p").await.expect("empty pool");
}

// ---- services ----

#[tokio::test]
async fn put_service_allocates_and_repeating_it_changes_nothing() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    let mut changes = store.subscribe();
    let spec = service("uid-web", &[80, 443]);
    let first = store
        .put_service(ACTOR, "prod", "default", "web", spec.clone())
        .await
        .expect("put");
    assert_eq!(shown(&first.ips), ["10.0.0.0"]);
    assert_eq!(first.pool.as_deref(), Some("p"));
    assert_eq!(
        (first.cluster.as_str(), first.namespace.as_str(), first.name.as_str()),
        ("prod", "default", "web")
    );
    assert_eq!(first.spec.as_ref(), Some(&spec));
    assert!(
        changes.has_changed().expect("sender alive"),
        "a commit signals the reconciler"
    );
    changes.mark_unchanged();
    let audited = audit_actions(&store).await;
    assert_eq!(audited.last().map(String::as_str), Some("service.allocate"));

    let again = store
        .put_service(ACTOR, "prod", "default", "web", spec.clone())
        .await
        .expect("put again");
    assert_eq!(again, first, "same answer, same updated_at");
    assert_eq!(audit_actions(&store).await, audited, "no audit entry for a repeat");

    // A changed spec is written and audited, but the address stays.
    let moved_ports = service("uid-web", &[8080]);
    let updated = store
        .put_service(ACTOR, "prod", "default", "web", moved_ports)
        .await
        .expect("update");
    assert_eq!(shown(&updated.ips), ["10.0.0.0"]);
    assert_eq!(
        audit_actions(&store).await.last().map(String::as_str),
        Some("service.update")
    );
    assert_eq!(store.list_services(Some("prod")).await.expect("list").len(), 1);
    assert_eq!(store.get_cluster("prod").await.expect("cluster").services, 1);
}

#[tokio::test]
async fn a_recreated_service_with_a_new_uid_keeps_its_address() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    put(&store, "prod", "default", "web", service("uid-1", &[80])).await;
    let again = store
        .put_service(ACTOR, "prod", "default", "web", service("uid-2", &[80]))
        .await
        .expect("put");
    assert_eq!(
        (shown(&again.ips), again.uid.as_str()),
        (vec!["10.0.0.0".to_owned()], "uid-2")
    );
}

#[tokio::test]
async fn deleted_service_address_is_held_and_reclaimed_by_the_same_key() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    put(&store, "prod", "default", "web", service("uid-web", &[80])).await;
    let gone = store
        .delete_service(ACTOR, "prod", "default", "web")
        .await
        .expect("delete");
    assert_eq!(shown(&gone.ips), ["10.0.0.0"]);
    assert!(matches!(
        store.get_service("prod", "default", "web").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_service(ACTOR, "prod", "default", "web").await,
        Err(StoreError::NotFound(_))
    ));

    let held = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.0.0.0")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].state, AllocationState::Held);
    assert_eq!(
        held[0]
            .services
            .iter()
            .map(|o| (o.namespace.as_str(), o.name.as_str(), o.uid.as_str()))
            .collect::<Vec<_>>(),
        [("default", "web", "uid-web")]
    );
    let until = held[0].held_until.expect("held until").unix_timestamp();
    assert!((until - now() - 600).abs() <= 2, "held for the pool's 600 s");

    // Others pass it over, and cannot ask for it.
    assert_eq!(
        put(&store, "prod", "default", "api", service("uid-api", &[80])).await,
        ["10.0.0.1"]
    );
    let wanted = ServiceSpec {
        requested_ips: vec![ip("10.0.0.0")],
        ..service("uid-x", &[80])
    };
    match store.put_service(ACTOR, "prod", "default", "x", wanted).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("held for Service prod/default/web"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    // The same key, re-created, gets it back.
    assert_eq!(
        put(&store, "prod", "default", "web", service("uid-web-2", &[80])).await,
        ["10.0.0.0"]
    );
    let back = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.0.0.0")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((back[0].state, back[0].held_until), (AllocationState::Allocated, None));
    assert_eq!(back[0].services[0].uid, "uid-web-2");
    let actions = audit_actions(&store).await;
    assert_eq!(actions.iter().filter(|a| *a == "service.release").count(), 1);
}

#[tokio::test]
async fn expired_holds_are_deleted_and_their_addresses_reused() {
    let p = PoolSpec {
        hold_seconds: 1,
        ..pool("p", &["10.0.0.0/31"])
    };
    let (_dir, store) = with_pool_and_cluster(&[p], "prod").await;
    put(&store, "prod", "default", "a", service("a", &[80])).await;
    put(&store, "prod", "default", "b", service("b", &[80])).await;
    store
        .delete_service(ACTOR, "prod", "default", "a")
        .await
        .expect("delete");
    let held = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.0.0.0")),
            ..Default::default()
        },
    )
    .await;
    let until = held[0].held_until.expect("held").unix_timestamp();
    while now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the hold is over another Service may take it, even before the cleanup ran...
    assert_eq!(
        put(&store, "prod", "default", "c", service("c", &[80])).await,
        ["10.0.0.0"]
    );
    store
        .delete_service(ACTOR, "prod", "default", "c")
        .await
        .expect("delete");
    let until = now() + 1;
    while now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the cleanup deletes the rows.
    assert_eq!(store.expire_holds().await.expect("expire"), 1);
    assert_eq!(store.expire_holds().await.expect("expire again"), 0);
    assert_eq!(
        alloc_ips(&all_allocations(&store, AllocationFilter::default()).await),
        ["10.0.0.1"]
    );
    assert_eq!(
        put(&store, "prod", "default", "d", service("d", &[80])).await,
        ["10.0.0.0"]
    );
    // The address's history tells all of it, newest first.
    assert_eq!(
        history(&store, "10.0.0.0").await,
        [
            "assigned d",
            "expired -",
            "held c",
            "released c",
            "assigned c",
            "reused a",
            "held a",
            "released a",
            "assigned a"
        ]
    );
}

/// `event name` of each entry of an address's history, newest first.
async fn history(store: &Store, addr: &str) -> Vec<String> {
    let filter = super::AddressHistoryFilter {
        ip: Some(ip(addr)),
        limit: 1000,
        ..Default::default()
    };
    let page = store.address_history(&filter).await.expect("history");
    page.items
        .iter()
        .map(|e| format!("{} {}", e.event.as_str(), e.name.as_deref().unwrap_or("-")))
        .collect()
}

#[tokio::test]
async fn the_history_migration_starts_each_address_in_use_or_held_with_one_entry() {
    let p = PoolSpec {
        hold_seconds: 600,
        ..pool("p", &["10.0.0.0/30"])
    };
    let (dir, store) = with_pool_and_cluster(&[p], "prod").await;
    let shared = |uid: &str, port: u16| ServiceSpec {
        sharing_key: Some("k".into()),
        ..service(uid, &[port])
    };
    put(&store, "prod", "default", "a", shared("a", 80)).await;
    put(&store, "prod", "default", "b", shared("b", 443)).await;
    put(&store, "prod", "default", "gone", service("gone", &[80])).await;
    store
        .delete_service(ACTOR, "prod", "default", "gone")
        .await
        .expect("delete");
    // As before the migration: no history; then its backfill, exactly as the file has it.
    let migration = include_str!("../../../migrations/sqlite/0007_address_history.sql");
    let backfill = &migration[migration.find("-- Backfill").expect("the backfill part")..];
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join(super::DB_FILE));
    let mut conn = sqlx::ConnectOptions::connect(&options).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM address_events; {backfill}")))
        .execute(&mut conn)
        .await
        .expect("backfill");
    assert_eq!(history(&store, "10.0.0.0").await, ["assigned b", "assigned a"]);
    assert_eq!(history(&store, "10.0.0.1").await, ["held gone"]);
    let page = store
        .address_history(&super::AddressHistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("history");
    let held = page
        .items
        .iter()
        .find(|e| e.name.as_deref() == Some("gone"))
        .expect("held");
    assert!(
        held.held_until.is_some() && held.uid.as_deref() == Some("gone"),
        "{held:?}"
    );
}

#[tokio::test]
async fn a_database_a_newer_edgelb_migrated_is_refused_with_what_to_do_and_left_alone() {
    let (dir, store) = open().await;
    drop(store);
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join(super::DB_FILE));
    let mut conn = sqlx::ConnectOptions::connect(&options).await.expect("connect");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("a newer version");
    let err = Store::open(dir.path()).await.expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("has schema version 999, newer than this edgelb") && text.contains("restore a backup"),
        "{text}"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 999")
        .fetch_one(&mut conn)
        .await
        .expect("read");
    assert_eq!(n, 1, "nothing was changed");
}

#[tokio::test]
async fn a_shared_address_is_released_by_each_user_and_freed_after_the_last() {
    let p = PoolSpec {
        hold_seconds: 0,
        ..pool("p", &["10.0.0.0/32"])
    };
    let (_dir, store) = with_pool_and_cluster(&[p], "prod").await;
    let shared = |uid: &str, port: u16| ServiceSpec {
        sharing_key: Some("k".into()),
        ..service(uid, &[port])
    };
    put(&store, "prod", "default", "a", shared("a", 80)).await;
    put(&store, "prod", "default", "b", shared("b", 443)).await;
    for name in ["a", "b"] {
        store
            .delete_service(ACTOR, "prod", "default", name)
            .await
            .expect("delete");
    }
    assert_eq!(
        history(&store, "10.0.0.0").await,
        ["freed -", "released b", "released a", "assigned b", "assigned a"]
    );
}

#[tokio::test]
async fn put_service_refuses_what_it_cannot_do_and_writes_nothing() {
    let tiny = PoolSpec {
        hold_seconds: 0,
        ..pool("tiny", &["10.0.0.0/31"])
    };
    let (_dir, store) = with_pool_and_cluster(&[tiny], "prod").await;
    put(&store, "prod", "default", "a", service("a", &[80])).await;
    put(&store, "prod", "default", "b", service("b", &[80])).await;
    let audited = audit_actions(&store).await;

    match store
        .put_service(ACTOR, "prod", "default", "c", service("c", &[80]))
        .await
    {
        Err(StoreError::Conflict(m)) => assert!(m.contains("pool exhausted"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(
        store.get_service("prod", "default", "c").await,
        Err(StoreError::NotFound(_))
    ));

    store
        .delete_service(ACTOR, "prod", "default", "b")
        .await
        .expect("make room");
    let audited = [audited, vec!["service.release".to_owned()]].concat();
    match store
        .put_service(ACTOR, "nope", "default", "c", service("c", &[80]))
        .await
    {
        Err(StoreError::NotFound(m)) => assert!(m.contains("cluster 'nope'"), "{m}"),
        other => panic!("expected not found, got {other:?}"),
    }

    let bad = ServiceSpec {
        uid: String::new(),
        ports: vec![
            ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 0,
                node_port: 0,
            },
            ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 0,
                node_port: 30001,
            },
        ],
        source_ranges: vec!["10.0.0.0".into()],
        scheduler: Some("fastest".into()),
        health: Some(edgelb_api::HealthOverrides {
            interval_ms: Some(20),
            ..Default::default()
        }),
        ..service("x", &[])
    };
    match store.put_service(ACTOR, "prod", "Default", "c", bad).await {
        Err(StoreError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(
                fields,
                [
                    "namespace",
                    "uid",
                    "ports[0].port",
                    "ports[0].node_port",
                    "ports[1].port",
                    "ports[1]",
                    "source_ranges[0]",
                    "scheduler",
                    "health.interval_ms"
                ]
            );
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    let outside = ServiceSpec {
        requested_ips: vec![ip("192.0.2.1")],
        ..service("c", &[80])
    };
    match store.put_service(ACTOR, "prod", "default", "c", outside).await {
        Err(StoreError::Unprocessable(m)) => assert!(m.contains("outside every pool"), "{m}"),
        other => panic!("expected unprocessable, got {other:?}"),
    }
    let twice = ServiceSpec {
        requested_ips: vec![ip("10.0.0.0"), ip("10.0.0.1")],
        ..service("c", &[80])
    };
    match store.put_service(ACTOR, "prod", "default", "c", twice).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "requested_ips[1]"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(audit_actions(&store).await, audited);
    assert_eq!(store.list_services(None).await.expect("list").len(), 1);
}

#[tokio::test]
async fn services_with_one_sharing_key_share_an_address_and_collisions_are_refused() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    add_cluster(&store, "dev").await;
    let shared = |uid: &str, ports: &[u16]| ServiceSpec {
        sharing_key: Some("front".into()),
        ..service(uid, ports)
    };
    assert_eq!(
        put(&store, "prod", "shop", "web", shared("w", &[80])).await,
        ["10.0.0.0"]
    );
    assert_eq!(
        put(&store, "prod", "shop", "tls", shared("t", &[443])).await,
        ["10.0.0.0"]
    );
    match store
        .put_service(ACTOR, "prod", "shop", "clash", shared("c", &[443]))
        .await
    {
        Err(StoreError::Conflict(m)) => assert!(m.contains("port 443/TCP") && m.contains("prod/shop/tls"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(
        put(&store, "dev", "shop", "web", shared("d", &[80])).await,
        ["10.0.0.1"],
        "other cluster"
    );

    let list = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.0.0.0")),
            ..Default::default()
        },
    )
    .await;
    let owners: Vec<&str> = list[0].services.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(owners, ["tls", "web"]);
    assert_eq!(list[0].sharing_key.as_deref(), Some("front"));

    store
        .delete_service(ACTOR, "prod", "shop", "web")
        .await
        .expect("release one sharer");
    let list = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.0.0.0")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(list[0].state, AllocationState::Allocated);
    assert_eq!(
        list[0].services.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["tls"]
    );
}

#[tokio::test]
async fn dual_stack_services_list_their_addresses_in_family_order() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24", "2001:db8::/64"])], "prod").await;
    let spec = ServiceSpec {
        ip_families: vec![IpFamily::Ipv6, IpFamily::Ipv4],
        ..service("u", &[80])
    };
    let s = store
        .put_service(ACTOR, "prod", "default", "web", spec)
        .await
        .expect("put");
    assert_eq!(shown(&s.ips), ["2001:db8::", "10.0.0.0"]);
    assert_eq!(s.addresses.len(), 2);
    let listed = store.list_services(None).await.expect("list");
    assert_eq!(shown(&listed[0].ips), ["2001:db8::", "10.0.0.0"]);
}

#[tokio::test]
async fn a_cluster_with_services_cannot_be_deleted() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    put(&store, "prod", "default", "web", service("w", &[80])).await;
    match store.delete_cluster(ACTOR, "prod").await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("default/web"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    store
        .delete_service(ACTOR, "prod", "default", "web")
        .await
        .expect("delete service");
    store.delete_cluster(ACTOR, "prod").await.expect("delete cluster");
    assert!(matches!(store.get_cluster("prod").await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.delete_cluster(ACTOR, "prod").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_clusters().await.expect("list").is_empty());
}

#[tokio::test]
async fn clusters_record_their_agents_last_contact() {
    let (_dir, store) = with_pool_and_cluster(&[], "prod").await;
    add_cluster(&store, "dev").await;
    let fresh = store.get_cluster("prod").await.expect("get");
    assert_eq!((fresh.last_contact, fresh.agent_version.as_deref()), (None, None));
    assert_eq!(fresh.description, "prod cluster");
    store
        .touch_cluster("prod", Some("edgelb-agent/0.1.0"))
        .await
        .expect("touch");
    let touched = store.get_cluster("prod").await.expect("get");
    assert!(touched.last_contact.is_some());
    assert_eq!(touched.agent_version.as_deref(), Some("edgelb-agent/0.1.0"));
    // A new agent version is recorded at once, not only after the 15 s throttle.
    store
        .touch_cluster("prod", Some("edgelb-agent/0.2.0"))
        .await
        .expect("touch");
    assert_eq!(
        store.get_cluster("prod").await.expect("get").agent_version.as_deref(),
        Some("edgelb-agent/0.2.0")
    );
    let names: Vec<String> = store
        .list_clusters()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["dev", "prod"]);
}

// ---- allocation listing ----

#[tokio::test]
async fn allocations_filter_by_pool_cluster_namespace_service_and_ip() {
    let (_dir, store) =
        with_pool_and_cluster(&[pool("a", &["10.0.0.0/24"]), pool("b", &["10.1.0.0/24"])], "prod").await;
    add_cluster(&store, "dev").await;
    let in_pool = |p: &str, uid: &str| ServiceSpec {
        pool: Some(p.to_owned()),
        ..service(uid, &[80])
    };
    put(&store, "prod", "shop", "web", in_pool("a", "1")).await; // 10.0.0.0
    put(&store, "prod", "shop", "api", in_pool("b", "2")).await; // 10.1.0.0
    put(&store, "prod", "blog", "web", in_pool("a", "3")).await; // 10.0.0.1
    put(&store, "dev", "shop", "web", in_pool("b", "4")).await; // 10.1.0.1
    put(&store, "dev", "blog", "db", in_pool("a", "5")).await; // 10.0.0.2
    store.delete_service(ACTOR, "dev", "blog", "db").await.expect("held");

    let f = AllocationFilter::default;
    let cases: Vec<(&str, AllocationFilter, Vec<&str>)> = vec![
        (
            "everything",
            f(),
            vec!["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.1.0.0", "10.1.0.1"],
        ),
        (
            "pool a",
            AllocationFilter {
                pool: Some("a".into()),
                ..f()
            },
            vec!["10.0.0.0", "10.0.0.1", "10.0.0.2"],
        ),
        (
            "cluster dev",
            AllocationFilter {
                cluster: Some("dev".into()),
                ..f()
            },
            vec!["10.0.0.2", "10.1.0.1"],
        ),
        (
            "namespace shop",
            AllocationFilter {
                namespace: Some("shop".into()),
                ..f()
            },
            vec!["10.0.0.0", "10.1.0.0", "10.1.0.1"],
        ),
        (
            "namespace blog, held too",
            AllocationFilter {
                namespace: Some("blog".into()),
                ..f()
            },
            vec!["10.0.0.1", "10.0.0.2"],
        ),
        (
            "service web",
            AllocationFilter {
                service: Some("web".into()),
                ..f()
            },
            vec!["10.0.0.0", "10.0.0.1", "10.1.0.1"],
        ),
        (
            "held service by name",
            AllocationFilter {
                service: Some("db".into()),
                ..f()
            },
            vec!["10.0.0.2"],
        ),
        (
            "cluster prod, namespace shop, service web",
            AllocationFilter {
                cluster: Some("prod".into()),
                namespace: Some("shop".into()),
                service: Some("web".into()),
                ..f()
            },
            vec!["10.0.0.0"],
        ),
        (
            "one ip",
            AllocationFilter {
                ip: Some(ip("10.1.0.0")),
                ..f()
            },
            vec!["10.1.0.0"],
        ),
        (
            "a free ip",
            AllocationFilter {
                ip: Some(ip("10.1.0.9")),
                ..f()
            },
            vec![],
        ),
        (
            "pool b, cluster dev",
            AllocationFilter {
                pool: Some("b".into()),
                cluster: Some("dev".into()),
                ..f()
            },
            vec!["10.1.0.1"],
        ),
        (
            "unknown pool",
            AllocationFilter {
                pool: Some("zzz".into()),
                ..f()
            },
            vec![],
        ),
    ];
    for (name, filter, want) in cases {
        assert_eq!(
            alloc_ips(&all_allocations(&store, filter).await),
            want,
            "filter '{name}'"
        );
    }
    let one = all_allocations(
        &store,
        AllocationFilter {
            ip: Some(ip("10.1.0.1")),
            ..f()
        },
    )
    .await;
    assert_eq!((one[0].pool.as_str(), one[0].cluster.as_str()), ("b", "dev"));
}

#[tokio::test]
async fn allocation_pages_cover_every_address_once() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24", "2001:db8::/64"])], "prod").await;
    for i in 0..20 {
        let families = if i % 4 == 0 {
            vec![IpFamily::Ipv4, IpFamily::Ipv6]
        } else {
            vec![IpFamily::Ipv4]
        };
        let spec = ServiceSpec {
            ip_families: families,
            ..service(&format!("u{i}"), &[80])
        };
        put(&store, "prod", "default", &format!("s{i}"), spec).await;
    }
    let whole = store
        .list_allocations(&AllocationFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("all");
    assert_eq!((whole.items.len(), whole.next_cursor.as_deref()), (25, None));

    // The pages join up to the whole list with no duplicate or gap.
    let mut walked = Vec::new();
    let mut sizes = Vec::new();
    let mut f = AllocationFilter {
        limit: 7,
        ..Default::default()
    };
    loop {
        let page = store.list_allocations(&f).await.expect("page");
        sizes.push(page.items.len());
        walked.extend(page.items);
        match page.next_cursor {
            Some(c) => f.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(sizes, [7, 7, 7, 4]);
    assert_eq!(walked, whole.items);
    let unique: BTreeSet<IpAddr> = walked.iter().map(|a| a.ip).collect();
    assert_eq!(unique.len(), walked.len());
    assert!(
        walked.windows(2).all(|w| num(w[0].ip) < num(w[1].ip)),
        "ascending address order"
    );

    // An exact multiple of the page size ends without an empty extra page.
    let page = store
        .list_allocations(&AllocationFilter {
            limit: 25,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!((page.items.len(), page.next_cursor), (25, None));

    let bad = AllocationFilter {
        cursor: Some("not-hex".into()),
        limit: 5,
        ..Default::default()
    };
    match store.list_allocations(&bad).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "cursor"),
        other => panic!("expected invalid, got {other:?}"),
    }
}

// ---- durability and concurrency ----

#[tokio::test]
async fn state_survives_reopening_the_store() {
    let p = PoolSpec {
        hold_seconds: 3600,
        ..pool("p", &["10.0.0.0/24"])
    };
    let (dir, store) = with_pool_and_cluster(&[p], "prod").await;
    let shared = |uid: &str, port: u16| ServiceSpec {
        sharing_key: Some("k".into()),
        ..service(uid, &[port])
    };
    put(&store, "prod", "default", "a", shared("a", 80)).await; // 10.0.0.0, shared with b
    put(&store, "prod", "default", "b", shared("b", 443)).await;
    put(&store, "prod", "default", "c", service("c", &[80])).await; // 10.0.0.1, then held
    put(&store, "prod", "default", "d", service("d", &[80])).await; // 10.0.0.2
    store.delete_service(ACTOR, "prod", "default", "c").await.expect("hold");
    let before = all_allocations(&store, AllocationFilter::default()).await;
    let services = store.list_services(None).await.expect("services");
    let pools = store.list_pools().await.expect("pools");
    drop(store);

    let store = Store::open(dir.path()).await.expect("reopen");
    assert_eq!(all_allocations(&store, AllocationFilter::default()).await, before);
    assert_eq!(store.list_services(None).await.expect("services"), services);
    assert_eq!(store.list_pools().await.expect("pools"), pools);
    // The reloaded allocation state knows what is taken, held, shared and on which ports.
    assert_eq!(
        put(&store, "prod", "default", "e", service("e", &[80])).await,
        ["10.0.0.3"]
    );
    match store.put_service(ACTOR, "prod", "default", "f", shared("f", 443)).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("port 443/TCP"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(
        put(&store, "prod", "default", "g", shared("g", 8080)).await,
        ["10.0.0.0"]
    );
    assert_eq!(
        put(&store, "prod", "default", "c", service("c2", &[80])).await,
        ["10.0.0.1"],
        "reclaimed"
    );
    assert_eq!(
        put(&store, "prod", "default", "d", service("d", &[80])).await,
        ["10.0.0.2"],
        "kept"
    );
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
}

/// A PUT racing a DELETE of the same Service answers what it stored: its addresses, never a 404
/// or an empty list, and the database ends as one of the two orders leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_racing_a_delete_answers_what_it_stored() {
    let p = PoolSpec {
        hold_seconds: 0,
        ..pool("p", &["10.0.0.0/24"])
    };
    let (_dir, store) = with_pool_and_cluster(&[p], "prod").await;
    let spec = service("uid-web", &[80]);
    for round in 0..3000 {
        // Stored first, so the racing PUT is an unchanged one.
        put(&store, "prod", "default", "web", spec.clone()).await;
        let (a, b) = (store.clone(), store.clone());
        let s = spec.clone();
        let putting = tokio::spawn(async move { a.put_service(ACTOR, "prod", "default", "web", s).await });
        let deleting = tokio::spawn(async move { b.delete_service(ACTOR, "prod", "default", "web").await });
        let answer = putting.await.expect("put task");
        deleting
            .await
            .expect("delete task")
            .expect("the delete finds the Service");
        let answer = answer.unwrap_or_else(|e| panic!("round {round}: the PUT failed: {e}"));
        assert_eq!(answer.ips.len(), 1, "round {round}: {answer:?}");
        // Either the DELETE came second and nothing is left, or it came first and the PUT
        // stored the Service again with the addresses it answered.
        match store.get_service("prod", "default", "web").await {
            Err(StoreError::NotFound(_)) => {}
            Ok(stored) => assert_eq!(stored.ips, answer.ips, "round {round}"),
            Err(e) => panic!("round {round}: {e}"),
        }
        let _ = store.delete_service(ACTOR, "prod", "default", "web").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_never_share_an_address() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_service(
                        ACTOR,
                        "prod",
                        "default",
                        &format!("s{i}"),
                        service(&format!("u{i}"), &[80]),
                    )
                    .await
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    for t in tasks {
        let s = t.await.expect("task").expect("put_service");
        assert_eq!(s.ips.len(), 1);
        assert!(ips.insert(s.ips[0]), "{} handed out twice", s.ips[0]);
    }
    assert_eq!(ips.len(), 64);
    let listed = all_allocations(&store, AllocationFilter::default()).await;
    assert_eq!(listed.iter().map(|a| a.ip).collect::<BTreeSet<_>>(), ips);
    let (distinct, rows): (i64, i64) = sqlx::query_as("SELECT COUNT(DISTINCT ip), COUNT(*) FROM addresses")
        .fetch_one(store.read())
        .await
        .expect("count");
    assert_eq!((distinct, rows), (64, 64));
    let (links,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM service_addresses")
        .fetch_one(store.read())
        .await
        .expect("count");
    assert_eq!(links, 64);
    assert_eq!(
        audit_actions(&store)
            .await
            .iter()
            .filter(|a| *a == "service.allocate")
            .count(),
        64
    );
}

/// The schema refuses, on its own, what only a broken allocator or a hand edit would write: a
/// second Service on an unshared address, a link from another cluster, a shared address losing
/// its key, an address in use going on hold. Each write goes around the store, straight to the
/// file, and nothing it touched changes.
#[tokio::test]
async fn the_schema_refuses_an_address_for_two_services_that_do_not_share_it() {
    let (dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    add_cluster(&store, "dev").await;
    put(&store, "prod", "default", "a", service("ua", &[80])).await;
    put(&store, "prod", "default", "b", service("ub", &[80])).await;
    let shared = |uid: &str, port: u16| ServiceSpec {
        sharing_key: Some("k".into()),
        ..service(uid, &[port])
    };
    let c = put(&store, "prod", "default", "c", shared("uc", 80)).await;
    let d = put(&store, "prod", "default", "d", shared("ud", 443)).await;
    assert_eq!(c, d, "one key, other ports: one address, through the schema's rules");
    put(&store, "dev", "default", "e", service("ue", &[80])).await;

    let mut raw = SqliteConnection::connect_with(&options(&dir.path().join(DB_FILE)))
        .await
        .expect("a second connection to the file");
    let ip_of = |name: &'static str| {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT ip FROM service_addresses WHERE name = ?").bind(name)
    };
    let a_ip = ip_of("a").fetch_one(&mut raw).await.expect("a's address");
    let c_ip = ip_of("c").fetch_one(&mut raw).await.expect("c's address");
    let until = now() + 600;
    let writes: Vec<(&str, sqlx::query::Query<'_, sqlx::Sqlite, _>, &str)> = vec![
        (
            "b also on a's address",
            sqlx::query(
                "INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ('prod', 'default', 'b', ?)",
            )
            .bind(a_ip.clone()),
            "without a sharing key",
        ),
        (
            "dev's Service on prod's shared address",
            sqlx::query(
                "INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ('dev', 'default', 'e', ?)",
            )
            .bind(c_ip.clone()),
            "not allocated to this cluster",
        ),
        (
            "the shared address loses its key",
            sqlx::query("UPDATE addresses SET sharing_key = NULL WHERE ip = ?").bind(c_ip.clone()),
            "without a sharing key",
        ),
        (
            "a's address on hold while a uses it",
            sqlx::query(
                "UPDATE addresses SET state = 'held', held_namespace = 'default', held_name = 'x', \
                 held_uid = 'x', held_until = ? WHERE ip = ?",
            )
            .bind(until)
            .bind(a_ip.clone()),
            "on hold while a Service uses it",
        ),
    ];
    for (what, q, want) in writes {
        let err = q.execute(&mut raw).await.expect_err(what);
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT cluster, name FROM service_addresses ORDER BY cluster, name")
            .fetch_all(&mut raw)
            .await
            .expect("links");
    let links: Vec<String> = links.into_iter().map(|(c, n)| format!("{c}/{n}")).collect();
    assert_eq!(
        links,
        ["dev/e", "prod/a", "prod/b", "prod/c", "prod/d"],
        "no link was added"
    );
    let state: (String, Option<String>) = sqlx::query_as("SELECT state, sharing_key FROM addresses WHERE ip = ?")
        .bind(c_ip)
        .fetch_one(&mut raw)
        .await
        .expect("c's address");
    assert_eq!(state, ("allocated".into(), Some("k".into())));
    drop(raw);
    // The store goes on as before: releasing and re-allocating pass the same rules.
    store
        .delete_service(ACTOR, "prod", "default", "c")
        .await
        .expect("release c");
    store
        .delete_service(ACTOR, "prod", "default", "d")
        .await
        .expect("release d");
    assert_eq!(
        put(&store, "prod", "default", "d", shared("ud", 443)).await,
        c,
        "d, the last user, gets its held address back"
    );
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
}

// ---- sync ----

fn sync_service(namespace: &str, name: &str, ips: &[&str]) -> SyncService {
    SyncService {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
        ips: ips.iter().map(|s| ip(s)).collect(),
        sharing_key: None,
    }
}

#[tokio::test]
async fn sync_reserves_status_addresses_before_new_allocations_and_reports_stale_and_conflicts() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    put(&store, "prod", "default", "old", service("uid-old", &[80])).await; // 10.0.0.0
    let audited = audit_actions(&store).await.len();
    let list = SyncRequest {
        services: vec![
            sync_service("default", "web", &["10.0.0.1"]),
            sync_service("default", "pending", &[]),
            sync_service("default", "thief", &["10.0.0.0"]),
            sync_service("default", "lost", &["192.0.2.1"]),
        ],
    };
    let answer = store.sync(ACTOR, "prod", list.clone()).await.expect("sync");
    let refs = |v: &[edgelb_api::ServiceRef]| {
        v.iter()
            .map(|r| (r.name.clone(), shown(&r.ips)))
            .collect::<Vec<(String, Vec<String>)>>()
    };
    assert_eq!(
        refs(&answer.reserved),
        [("web".to_owned(), vec!["10.0.0.1".to_owned()])]
    );
    assert_eq!(answer.reserved[0].uid, "uid-web");
    assert_eq!(refs(&answer.stale), [("old".to_owned(), vec!["10.0.0.0".to_owned()])]);
    let conflicts: Vec<(&str, String, &str)> = answer
        .conflicts
        .iter()
        .map(|c| (c.name.as_str(), c.ip.to_string(), c.detail.as_str()))
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!((conflicts[0].0, conflicts[0].1.as_str()), ("thief", "10.0.0.0"));
    assert!(
        conflicts[0].2.contains("already allocated to Service prod/default/old"),
        "{conflicts:?}"
    );
    assert_eq!((conflicts[1].0, conflicts[1].1.as_str()), ("lost", "192.0.2.1"));
    assert!(conflicts[1].2.contains("outside every pool"), "{conflicts:?}");
    assert_eq!(audit_actions(&store).await.len(), audited + 1, "one cluster.sync entry");
    let reserved = store
        .get_service("prod", "default", "web")
        .await
        .expect("reserved service");
    assert_eq!(
        (reserved.spec, shown(&reserved.ips)),
        (None, vec!["10.0.0.1".to_owned()])
    );

    // New allocations pass over the reserved address; the Service itself keeps it.
    assert_eq!(
        put(&store, "prod", "default", "new", service("uid-new", &[80])).await,
        ["10.0.0.2"]
    );
    assert_eq!(
        put(&store, "prod", "default", "web", service("uid-web", &[80])).await,
        ["10.0.0.1"]
    );

    // A repeated sync reserves nothing new and writes nothing.
    let audited = audit_actions(&store).await.len();
    let again = store.sync(ACTOR, "prod", list).await.expect("sync again");
    assert_eq!(refs(&again.reserved), [("web".to_owned(), vec!["10.0.0.1".to_owned()])]);
    assert_eq!(
        refs(&again.stale),
        [
            ("new".to_owned(), vec!["10.0.0.2".to_owned()]),
            ("old".to_owned(), vec!["10.0.0.0".to_owned()])
        ]
    );
    assert_eq!(audit_actions(&store).await.len(), audited);

    // An address held after a release is refused to others too, naming whom it is held for.
    store
        .delete_service(ACTOR, "prod", "default", "old")
        .await
        .expect("release");
    let held = SyncRequest {
        services: vec![sync_service("default", "thief", &["10.0.0.0"])],
    };
    let answer = store.sync(ACTOR, "prod", held).await.expect("sync");
    assert!(
        answer.conflicts[0].detail.contains("held for Service prod/default/old"),
        "{:?}",
        answer.conflicts
    );
}

#[tokio::test]
async fn sync_validates_its_list_and_needs_the_cluster() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    let dup = SyncRequest {
        services: vec![sync_service("default", "a", &[]), sync_service("default", "a", &[])],
    };
    match store.sync(ACTOR, "prod", dup).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "services[1]"),
        other => panic!("expected invalid, got {other:?}"),
    }
    let ok = SyncRequest {
        services: vec![sync_service("default", "a", &["10.0.0.9"])],
    };
    assert!(matches!(
        store.sync(ACTOR, "nope", ok.clone()).await,
        Err(StoreError::NotFound(_))
    ));
    // Nothing was reserved by the refused sync.
    assert!(all_allocations(&store, AllocationFilter::default()).await.is_empty());
    assert_eq!(store.sync(ACTOR, "prod", ok).await.expect("sync").reserved.len(), 1);
}

// ---- nodes ----

pub(super) fn node(name: &str, addr: &str, ready: bool) -> Node {
    Node {
        name: name.to_owned(),
        addresses: vec![ip(addr)],
        ready,
        schedulable: true,
        excluded: false,
        no_tunnel: false,
    }
}

#[tokio::test]
async fn put_nodes_writes_and_audits_only_when_the_list_changes() {
    let (_dir, store) = with_pool_and_cluster(&[], "prod").await;
    let list = NodeList {
        nodes: vec![node("n2", "192.168.0.2", true), node("n1", "192.168.0.1", true)],
    };
    let stored = store.put_nodes(ACTOR, "prod", list.clone()).await.expect("put");
    assert_eq!(
        stored.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert_eq!(store.get_nodes("prod").await.expect("get"), stored);
    assert_eq!(store.get_cluster("prod").await.expect("cluster").nodes, 2);
    let audited = audit_actions(&store).await;
    assert_eq!(audited.last().map(String::as_str), Some("nodes.update"));

    // The same nodes in another order: unchanged.
    let reordered = NodeList {
        nodes: list.nodes.iter().rev().cloned().collect(),
    };
    store.put_nodes(ACTOR, "prod", reordered).await.expect("put again");
    assert_eq!(audit_actions(&store).await, audited);

    let changed = NodeList {
        nodes: vec![node("n1", "192.168.0.1", false)],
    };
    assert_eq!(
        store.put_nodes(ACTOR, "prod", changed.clone()).await.expect("change"),
        changed
    );
    assert_eq!(audit_actions(&store).await.len(), audited.len() + 1);

    let empty = store
        .put_nodes(ACTOR, "prod", NodeList { nodes: vec![] })
        .await
        .expect("no nodes");
    assert!(empty.nodes.is_empty());
}

#[tokio::test]
async fn put_nodes_refuses_duplicates_and_nodes_without_addresses() {
    let (_dir, store) = with_pool_and_cluster(&[], "prod").await;
    let bad = NodeList {
        nodes: vec![
            Node {
                addresses: vec![],
                ..node("n1", "192.168.0.1", true)
            },
            node("n1", "192.168.0.2", true),
            node("", "192.168.0.3", true),
        ],
    };
    match store.put_nodes(ACTOR, "prod", bad).await {
        Err(StoreError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["nodes[0].addresses", "nodes[1].name", "nodes[2].name"]);
            assert!(errors[1].message.contains("'n1' appears twice"), "{errors:?}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    let ok = NodeList {
        nodes: vec![node("n1", "192.168.0.1", true)],
    };
    assert!(matches!(
        store.put_nodes(ACTOR, "nope", ok).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(store.get_nodes("nope").await, Err(StoreError::NotFound(_))));
    assert!(store.get_nodes("prod").await.expect("get").nodes.is_empty());
}

// ---- tokens and users ----

/// The secret of a token, and the admin's password, are nowhere in the database files (not in
/// the tokens table, not in the audit log, not in the write-ahead log): only their hashes are.
/// The database runs in WAL mode.
#[tokio::test]
async fn secrets_are_stored_only_as_hashes_in_a_wal_database() {
    let (dir, store) = open().await;
    let first = store.bootstrap().await.expect("bootstrap").expect("first start");
    let created = store
        .create_token(
            ACTOR,
            TokenSpec {
                name: "ci".into(),
                role: Role::Operator,
                cluster: None,
            },
        )
        .await
        .expect("create");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.read())
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_hash FROM tokens")
        .fetch_all(store.read())
        .await
        .expect("hashes");
    assert_eq!(hashes.len(), 2, "the bootstrap token and ci");
    assert!(hashes.iter().all(|h| h.len() == 32), "SHA-256 digests");
    let mut files = Vec::new();
    for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
        files.push(std::fs::read(dir.path().join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}")));
    }
    assert!(files[1].len() > 4096, "the writes are in the write-ahead log");
    // The random part of each secret (what follows `elb_<id>_`; URL-safe base64 may itself hold
    // a `_`) and the password.
    let random = |s: &str| s.splitn(3, '_').nth(2).expect("elb_<id>_<secret>").to_owned();
    for secret in [random(&created.secret), random(&first.token), first.password.clone()] {
        assert!(secret.len() >= 16, "{secret}");
        for f in &files {
            assert!(
                !f.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is stored in clear"
            );
        }
    }
}

#[tokio::test]
async fn tokens_authenticate_until_revoked() {
    let (_dir, store) = open().await;
    let spec = TokenSpec {
        name: "ci".into(),
        role: Role::Operator,
        cluster: None,
    };
    let created = store.create_token(ACTOR, spec).await.expect("create");
    assert!(created.secret.starts_with("elb_"), "{}", created.secret);
    let who = store
        .authenticate_token(&created.secret)
        .await
        .expect("auth")
        .expect("known");
    assert_eq!(
        who,
        Principal {
            actor: format!("token:ci/{}", created.token.id),
            role: Role::Operator,
            cluster: None,
            token_id: Some(created.token.id.clone())
        }
    );
    let listed = store.list_tokens().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some(), "first use is recorded");
    assert!(
        !format!("{listed:?}").contains(&created.secret),
        "the secret is never listed"
    );

    // Right id, wrong secret; and not a token at all.
    let mut forged = created.secret.clone();
    let last = forged.pop().expect("non-empty");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(store.authenticate_token(&forged).await.expect("auth"), None);
    assert_eq!(store.authenticate_token("nope").await.expect("auth"), None);
    assert_eq!(store.authenticate_token("").await.expect("auth"), None);

    store.revoke_token(ACTOR, &created.token.id).await.expect("revoke");
    assert_eq!(store.authenticate_token(&created.secret).await.expect("auth"), None);
    assert!(matches!(
        store.revoke_token(ACTOR, &created.token.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_tokens().await.expect("list").is_empty());
    assert_eq!(audit_actions(&store).await, ["token.create", "token.revoke"]);
}

#[tokio::test]
async fn agent_tokens_are_bound_to_an_existing_cluster() {
    let (_dir, store) = open().await;
    let agent = |cluster: Option<&str>| TokenSpec {
        name: "agent".into(),
        role: Role::Agent,
        cluster: cluster.map(Into::into),
    };
    match store.create_token(ACTOR, agent(None)).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "cluster"),
        other => panic!("expected invalid, got {other:?}"),
    }
    let admin_bound = TokenSpec {
        name: "x".into(),
        role: Role::Admin,
        cluster: Some("prod".into()),
    };
    assert!(matches!(
        store.create_token(ACTOR, admin_bound).await,
        Err(StoreError::Invalid(_))
    ));
    let bad_name = TokenSpec {
        name: "Bad Name".into(),
        role: Role::Viewer,
        cluster: None,
    };
    assert!(matches!(
        store.create_token(ACTOR, bad_name).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_token(ACTOR, agent(Some("prod"))).await,
        Err(StoreError::Unprocessable(_))
    ));

    add_cluster(&store, "prod").await;
    let created = store
        .create_token(ACTOR, agent(Some("prod")))
        .await
        .expect("agent token");
    let who = store
        .authenticate_token(&created.secret)
        .await
        .expect("auth")
        .expect("known");
    assert_eq!((who.role, who.cluster.as_deref()), (Role::Agent, Some("prod")));
    // Deleting the cluster takes its agent tokens along.
    store.delete_cluster(ACTOR, "prod").await.expect("delete cluster");
    assert_eq!(store.authenticate_token(&created.secret).await.expect("auth"), None);
}

#[tokio::test]
async fn bootstrap_returns_credentials_once_and_they_work() {
    let (_dir, store) = open().await;
    let first = store.bootstrap().await.expect("bootstrap").expect("first start");
    assert_eq!(first.user, "admin");
    assert_eq!(first.password.chars().count(), 20);
    let who = store
        .authenticate_token(&first.token)
        .await
        .expect("auth")
        .expect("token works");
    assert_eq!(who.role, Role::Admin);
    assert!(
        store.bootstrap().await.expect("bootstrap").is_none(),
        "only on the very first start"
    );

    let user = store
        .authenticate_user("admin", &first.password)
        .await
        .expect("auth")
        .expect("password works");
    assert_eq!(
        (user.actor.as_str(), user.role, user.cluster),
        ("user:admin", Role::Admin, None)
    );
    assert_eq!(
        store
            .authenticate_user("admin", "wrong password!!")
            .await
            .expect("auth"),
        None
    );
    assert_eq!(
        store.authenticate_user("nobody", &first.password).await.expect("auth"),
        None
    );
    let actions = audit_actions(&store).await;
    assert_eq!(actions, ["user.create", "token.create"]);
}

#[tokio::test]
async fn an_unknown_user_takes_as_long_to_refuse_as_a_wrong_password() {
    let (_dir, store) = open().await;
    store
        .create_user(ACTOR, "alice", "a long enough password", Role::Viewer)
        .await
        .expect("user");
    let timed = |name: &'static str| {
        let store = store.clone();
        async move {
            let start = std::time::Instant::now();
            assert_eq!(
                store.authenticate_user(name, "not the password").await.expect("auth"),
                None
            );
            start.elapsed()
        }
    };
    timed("nobody").await; // the first call also prepares the stand-in hash
    let known = timed("alice").await;
    let unknown = timed("nobody").await;
    // Both run one argon2 verification; without it the unknown user answers ~1000x faster.
    assert!(
        unknown * 10 >= known,
        "unknown user {unknown:?} vs wrong password {known:?}"
    );
}

#[tokio::test]
async fn users_need_a_long_password_and_a_console_role() {
    let (_dir, store) = open().await;
    match store.create_user(ACTOR, "bob", "short", Role::Viewer).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "password"),
        other => panic!("expected invalid, got {other:?}"),
    }
    match store
        .create_user(ACTOR, "bob", "a long enough password", Role::Agent)
        .await
    {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].field, "role"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert!(matches!(
        store
            .create_user(ACTOR, "Bob!", "a long enough password", Role::Viewer)
            .await,
        Err(StoreError::Invalid(_))
    ));
}

// ---- audit ----

#[tokio::test]
async fn audit_entries_record_actor_object_and_before_after() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    put(&store, "prod", "default", "web", service("uid-web", &[80])).await;
    store
        .delete_service("token:agent", "prod", "default", "web")
        .await
        .expect("delete");
    let page = store
        .list_audit(&AuditFilter {
            object: Some("service".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let got: Vec<(&str, &str, &str)> = page
        .items
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.object.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("service.release", "token:agent", "service/prod/default/web"),
            ("service.allocate", ACTOR, "service/prod/default/web")
        ]
    );
    let allocate = &page.items[1];
    assert_eq!(allocate.before, None);
    assert_eq!(
        allocate.after.as_ref().and_then(|a| a.get("ips")),
        Some(&serde_json::json!(["10.0.0.0"]))
    );
    assert_eq!(
        page.items[0].before.as_ref().and_then(|b| b.get("ips")),
        Some(&serde_json::json!(["10.0.0.0"]))
    );

    let by_actor = AuditFilter {
        actor: Some("token:agent".into()),
        limit: 10,
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&by_actor).await.expect("audit").items.len(), 1);
    let pool_only = AuditFilter {
        object: Some("pool/p".into()),
        limit: 10,
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&pool_only).await.expect("audit").items.len(), 1);

    // Pages, newest first, joined without gaps.
    let mut f = AuditFilter {
        limit: 1,
        ..AuditFilter::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = store.list_audit(&f).await.expect("page");
        ids.extend(page.items.iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => f.cursor = Some(c.parse().expect("numeric cursor")),
            None => break,
        }
    }
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
}

// ---- backup ----

#[tokio::test]
async fn backup_is_a_consistent_copy_that_opens_as_a_store() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24", "2001:db8::/64"])], "prod").await;
    put(&store, "prod", "default", "web", service("w", &[80])).await;
    let copy_dir = tempfile::tempdir().expect("temp dir");
    let dest = Store::db_path(copy_dir.path());
    store.backup(&dest).await.expect("backup");
    // It holds password hashes and token digests: only its owner reads it, whatever the umask.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dest).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o600, "backup mode {mode:o}");
    match store.backup(&dest).await {
        Err(StoreError::Io { what: m, .. }) => assert!(m.contains("exists already"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // The live store goes on; the copy is a snapshot.
    put(&store, "prod", "default", "api", service("a", &[80])).await;

    let copy = Store::open(copy_dir.path()).await.expect("open the copy");
    assert_eq!(copy.integrity_check().await.expect("check"), "ok");
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
    let specs = |pools: Vec<edgelb_api::Pool>| pools.into_iter().map(|p| p.spec).collect::<Vec<_>>();
    assert_eq!(
        specs(copy.list_pools().await.expect("pools")),
        specs(store.list_pools().await.expect("pools"))
    );
    assert_eq!(
        shown(&copy.get_service("prod", "default", "web").await.expect("web").ips),
        ["10.0.0.0"]
    );
    assert!(matches!(
        copy.get_service("prod", "default", "api").await,
        Err(StoreError::NotFound(_))
    ));
    // The copy allocates on its own, from its own state.
    assert_eq!(
        put(&copy, "prod", "default", "other", service("o", &[80])).await,
        ["10.0.0.1"]
    );
    copy.ping().await.expect("ping");
}

// ---- the change journal ----

#[tokio::test]
async fn the_journal_names_what_each_commit_changed() {
    let (_dir, store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    let (start, _) = store.changes_since(0);
    let key = |n: &str| crate::ipam::ServiceKey::new("prod", "default", n);

    store
        .put_service(ACTOR, "prod", "default", "web", service("uid-web", &[80]))
        .await
        .expect("put web");
    store
        .put_service(ACTOR, "prod", "default", "api", service("uid-api", &[80]))
        .await
        .expect("put api");
    let (after_puts, dirty) = store.changes_since(start);
    assert_eq!(after_puts, start + 2, "one generation per commit");
    assert!(!dirty.all);
    assert_eq!(dirty.services, BTreeSet::from([key("api"), key("web")]));
    assert!(dirty.nodes.is_empty());
    assert_eq!(
        *store.subscribe().borrow(),
        after_puts,
        "the watch carries the generation"
    );

    // A repeated PUT, a token, an unchanged node list: nothing for the data plane, no wake-up.
    store
        .put_service(ACTOR, "prod", "default", "web", service("uid-web", &[80]))
        .await
        .expect("repeat");
    store
        .create_token(
            ACTOR,
            TokenSpec {
                name: "t".into(),
                role: edgelb_api::Role::Viewer,
                cluster: None,
            },
        )
        .await
        .expect("token");
    let (now, dirty) = store.changes_since(after_puts);
    assert_eq!((now, dirty.is_empty()), (after_puts, true));

    let list = NodeList {
        nodes: vec![node("n1", "192.0.2.1", true)],
    };
    store.put_nodes(ACTOR, "prod", list.clone()).await.expect("nodes");
    store.put_nodes(ACTOR, "prod", list).await.expect("same nodes");
    store
        .delete_service(ACTOR, "prod", "default", "api")
        .await
        .expect("delete");
    let (now, dirty) = store.changes_since(after_puts);
    assert_eq!(now, after_puts + 2);
    assert_eq!(
        (dirty.all, dirty.services, dirty.nodes),
        (false, BTreeSet::from([key("api")]), BTreeSet::from(["prod".to_owned()]))
    );
    // Only what came after the generation asked about.
    let (_, dirty) = store.changes_since(now - 1);
    assert_eq!(dirty.services, BTreeSet::from([key("api")]));
    assert!(dirty.nodes.is_empty());

    // A pool change may move ownership of any VIP: everything is dirty.
    store
        .patch_pool(
            ACTOR,
            "p",
            PoolPatch {
                priority: Some(5),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("patch");
    let (_, dirty) = store.changes_since(now);
    assert!(dirty.all);
    // A generation the journal no longer covers (or from the future) also means everything.
    assert!(store.changes_since(now + 10).1.all);
}

// ---- per-pool health overrides (issue 6) ----

use edgelb_api::HealthOverrides;

fn health(interval_ms: Option<u32>, timeout_ms: Option<u32>, rise: Option<u32>, fall: Option<u32>) -> HealthOverrides {
    HealthOverrides {
        interval_ms,
        timeout_ms,
        rise,
        fall,
        jitter_percent: None,
    }
}

fn invalid_fields(r: Result<edgelb_api::Pool>) -> Vec<String> {
    match r {
        Err(StoreError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

async fn snapshot_health(store: &Store, pool: &str) -> Option<HealthOverrides> {
    let snap = store.dataplane_snapshot().await.expect("snapshot");
    snap.pools
        .into_iter()
        .find(|p| p.name == pool)
        .unwrap_or_else(|| panic!("pool {pool} in the snapshot"))
        .health
}

#[tokio::test]
async fn pool_health_overrides_are_validated_stored_patched_and_cleared() {
    let (dir, store) = open().await;
    let spec = PoolSpec {
        health: Some(health(Some(500), None, None, Some(2))),
        ..pool("public", &["203.0.113.0/24"])
    };
    let created = store.create_pool(ACTOR, spec.clone()).await.expect("create");
    assert_eq!(created.spec, spec);
    assert_eq!(snapshot_health(&store, "public").await, spec.health);

    // Every problem at once, with its path under `health`, next to the allocator's own.
    let bad = PoolSpec {
        health: Some(health(Some(10), Some(200), Some(0), Some(101))),
        ..pool("bad", &["banana"])
    };
    assert_eq!(
        invalid_fields(store.create_pool(ACTOR, bad).await),
        [
            "ranges[0]",
            "health.interval_ms",
            "health.timeout_ms",
            "health.rise",
            "health.fall"
        ]
    );

    // A PATCH without `health` keeps it.
    let p = store
        .patch_pool(
            ACTOR,
            "public",
            PoolPatch {
                priority: Some(5),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("patch priority");
    assert_eq!(p.spec.health, spec.health, "absent: unchanged");

    // An object replaces the overrides whole: `fall` is not carried over.
    let replaced = Some(health(None, Some(300), Some(3), None));
    let p = store
        .patch_pool(
            ACTOR,
            "public",
            PoolPatch {
                health: Some(replaced),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("patch health");
    assert_eq!(p.spec.health, replaced);

    // An invalid one changes nothing.
    let fields = invalid_fields(
        store
            .patch_pool(
                ACTOR,
                "public",
                PoolPatch {
                    health: Some(Some(health(Some(100), Some(200), None, None))),
                    ..PoolPatch::default()
                },
            )
            .await,
    );
    assert_eq!(fields, ["health.timeout_ms"]);
    assert_eq!(store.get_pool("public").await.expect("get").spec.health, replaced);

    // It survives a restart.
    drop(store);
    let store = Store::open(dir.path()).await.expect("reopen");
    assert_eq!(store.get_pool("public").await.expect("get").spec.health, replaced);
    assert_eq!(snapshot_health(&store, "public").await, replaced);

    // `null` removes them.
    let p = store
        .patch_pool(
            ACTOR,
            "public",
            PoolPatch {
                health: Some(None),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("clear");
    assert_eq!(p.spec.health, None);
    assert_eq!(snapshot_health(&store, "public").await, None);
    let actions = audit_actions(&store).await;
    assert_eq!(actions.iter().filter(|a| *a == "pool.update").count(), 3, "{actions:?}");
}

/// A data directory made by a release that had only migrations 0001 and 0002, with a pool and
/// an address held in it, opened by this release: the pool and the hold are all there, the pool
/// has no health overrides, and they can be set.
#[tokio::test]
async fn a_database_from_before_pool_health_upgrades_without_losing_its_pools() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old_migrations = tempfile::tempdir().expect("temp dir");
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    for file in ["0001_initial.sql", "0002_console.sql"] {
        std::fs::copy(here.join(file), old_migrations.path().join(file)).expect("copy migration");
    }
    {
        let mut conn = SqliteConnection::connect_with(&options(&dir.path().join(DB_FILE)))
            .await
            .expect("create the old database");
        let old = sqlx::migrate::Migrator::new(old_migrations.path())
            .await
            .expect("old migrations");
        old.run(&mut conn).await.expect("migrate to version 2");
        let until = now() + 3600;
        sqlx::query(
            "INSERT INTO pools (name, ranges, auto_assign, avoid_buggy_ips, priority, clusters, namespaces, \
             scheduler, hold_seconds, created_at, updated_at) \
             VALUES ('legacy', '[\"198.51.100.0/28\"]', 1, 0, 7, '[]', '[\"web\"]', 'rr', 900, 1, 2)",
        )
        .execute(&mut conn)
        .await
        .expect("old pool");
        sqlx::query(
            "INSERT INTO addresses (ip, pool, cluster, state, held_namespace, held_name, held_uid, held_until, since) \
             VALUES (?, 'legacy', 'prod', 'held', 'web', 'shop', 'uid-1', ?, 1)",
        )
        .bind(ip_blob(crate::ipam::to_u128("198.51.100.3".parse().expect("ip"))))
        .bind(until)
        .execute(&mut conn)
        .await
        .expect("old hold");
        conn.close().await.expect("close");
    }

    let store = Store::open(dir.path()).await.expect("open and upgrade");
    let p = store.get_pool("legacy").await.expect("the old pool is still there");
    assert_eq!(
        p.spec,
        PoolSpec {
            name: "legacy".into(),
            ranges: vec!["198.51.100.0/28".into()],
            auto_assign: true,
            avoid_buggy_ips: false,
            priority: 7,
            clusters: vec![],
            namespaces: vec!["web".into()],
            scheduler: "rr".into(),
            hold_seconds: 900,
            health: None,
            forwarding: None,
            capacity_critical_percent: edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT,
            capacity_warning_percent: edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT,
        }
    );
    assert_eq!(p.usage.held, 1, "the hold survived");
    assert_eq!(snapshot_health(&store, "legacy").await, None);
    let p = store
        .patch_pool(
            ACTOR,
            "legacy",
            PoolPatch {
                health: Some(Some(health(None, None, None, Some(5)))),
                ..PoolPatch::default()
            },
        )
        .await
        .expect("set health on the upgraded pool");
    assert_eq!(p.spec.health, Some(health(None, None, None, Some(5))));
    assert_eq!(p.spec.priority, 7, "the rest untouched");
}
