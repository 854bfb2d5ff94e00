//! The agent end to end: against the fake API server and a real appliance process (real
//! SQLite, real HTTPS). Each test has its own appliance, fake cluster and agents.

mod common;
mod fake_apiserver;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use edgelb_agent::fixtures::{annotate, endpoint_slice, node, service, with_spec};
use edgelb_agent::spec::{ANNOTATION_IPS, ANNOTATION_SHARED, FINALIZER};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_gets_an_ip_and_gives_it_back_when_deleted() {
    let (app, token) = Appliance::start(&["10.50.0.0/29"]).await;
    let fake = FakeApiServer::start().await;
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    let client = fake.client("test").await;
    let api = services(&client, "default");

    create(&api, &service("default", "web")).await;
    let ips = wait_ips(&api, "web", 1).await;
    let svc = api.get("web").await.expect("get");
    assert!(
        svc.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&FINALIZER.to_owned())
    );
    let ingress = &svc
        .status
        .expect("status")
        .load_balancer
        .expect("lb")
        .ingress
        .expect("ingress")[0];
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
    let held = app
        .service("default", "web")
        .await
        .expect("appliance holds the service");
    assert_eq!(held["ips"][0].as_str(), Some(ips[0].to_string().as_str()));
    assert_eq!(held["uid"].as_str(), svc.metadata.uid.as_deref());
    let note = wait_event(&fake, "web", "IPAllocated").await;
    assert!(note.contains(&ips[0].to_string()), "{note}");

    delete(&api, "web").await;
    eventually(30, "the Service to be gone", || async {
        api.get_opt("web").await.expect("get").is_none().then_some(())
    })
    .await;
    assert!(
        app.service("default", "web").await.is_none(),
        "the appliance released it"
    );
    let note = wait_event(&fake, "web", "IPReleased").await;
    assert!(note.contains(&ips[0].to_string()), "{note}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_agent_then_the_appliance_changes_no_ip() {
    let (mut app, token) = Appliance::start(&["10.51.0.0/28"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    let mut before = Vec::new();
    for i in 0..5 {
        create(&api, &service("default", &format!("s{i}"))).await;
    }
    for i in 0..5 {
        before.push(wait_ips(&api, &format!("s{i}"), 1).await);
    }
    agent.kill();

    let agent = Agent::start(&fake, &app, &token, "agent-b").await;
    create(&api, &service("default", "after-agent-restart")).await;
    let a = wait_ips(&api, "after-agent-restart", 1).await;
    agent.stop().await;

    app.restart().await;
    let agent = Agent::start(&fake, &app, &token, "agent-c").await;
    create(&api, &service("default", "after-appliance-restart")).await;
    let b = wait_ips(&api, "after-appliance-restart", 1).await;
    for (i, ips) in before.iter().enumerate() {
        assert_eq!(&wait_ips(&api, &format!("s{i}"), 1).await, ips, "s{i} kept its address");
    }
    let all: std::collections::HashSet<IpAddr> = before.iter().flatten().chain(&a).chain(&b).copied().collect();
    assert_eq!(all.len(), 7, "every Service has its own address");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_in_status_are_reserved_before_new_allocations() {
    // A two-address pool; a Service already shows the first address in its status, but the
    // appliance has never heard of it (e.g. it was restored from an old backup).
    let (app, token) = Appliance::start(&["10.52.0.1-10.52.0.2"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let mut old = service("default", "old");
    old.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    create(&api, &old).await;
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.52.0.1", "ipMode": "VIP"}]}}});
    api.patch_status("old", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    create(&api, &service("default", "new")).await;

    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    assert_eq!(wait_ips(&api, "new", 1).await, vec![ip("10.52.0.2")]);
    assert_eq!(wait_ips(&api, "old", 1).await, vec![ip("10.52.0.1")]);
    let held = app.service("default", "old").await.expect("old is held");
    assert_eq!(held["ips"][0].as_str(), Some("10.52.0.1"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_down_changes_nothing_in_the_cluster_and_work_resumes_after() {
    let (mut app, token) = Appliance::start(&["10.53.0.0/28"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    create(&api, &service("default", "kept")).await;
    create(&api, &service("default", "doomed")).await;
    let kept = wait_ips(&api, "kept", 1).await;
    wait_ips(&api, "doomed", 1).await;
    // Let the follow-up reconciles of our own writes settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    app.kill();
    let writes = service_writes(&fake, "agent-a");
    let events = fake.list("events.k8s.io/events").len();
    create(&api, &service("default", "newcomer")).await;
    delete(&api, "doomed").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        service_writes(&fake, "agent-a"),
        writes,
        "no Service write while the appliance is down"
    );
    assert_eq!(
        fake.list("events.k8s.io/events").len(),
        events,
        "no Event while the appliance is down"
    );
    let newcomer = api.get("newcomer").await.expect("get");
    assert!(
        newcomer.metadata.finalizers.is_none(),
        "no finalizer before the appliance answers"
    );
    assert!(
        api.get_opt("doomed").await.expect("get").is_some(),
        "deletion waits for the release"
    );
    assert_eq!(wait_ips(&api, "kept", 1).await, kept);

    app.restart().await;
    let ips = wait_ips(&api, "newcomer", 1).await;
    assert_ne!(ips, kept);
    eventually(30, "doomed to be released and gone", || async {
        api.get_opt("doomed").await.expect("get").is_none().then_some(())
    })
    .await;
    assert!(app.service("default", "doomed").await.is_none());
    assert_eq!(wait_ips(&api, "kept", 1).await, kept);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_the_standby_takes_over_when_it_dies() {
    let (app, token) = Appliance::start(&["10.54.0.0/28"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let a = Agent::start(&fake, &app, &token, "agent-a").await;
    // Let agent-a take the Lease first.
    eventually(30, "agent-a to lead", || async {
        fake.get("coordination.k8s.io/leases", "edgelb-system", "edgelb-agent")
            .filter(|l| l["spec"]["holderIdentity"] == "agent-a")
            .map(|_| ())
    })
    .await;
    let b = Agent::start(&fake, &app, &token, "agent-b").await;
    for i in 0..3 {
        create(&api, &service("default", &format!("s{i}"))).await;
    }
    for i in 0..3 {
        wait_ips(&api, &format!("s{i}"), 1).await;
    }
    let (wa, wb) = (service_writes(&fake, "agent-a"), service_writes(&fake, "agent-b"));
    assert!(wa > 0, "the leader wrote");
    assert_eq!(wb, 0, "the standby wrote nothing");
    let lease = fake
        .get("coordination.k8s.io/leases", "edgelb-system", "edgelb-agent")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"].as_str(), Some("agent-a"));

    a.kill();
    create(&api, &service("default", "after-failover")).await;
    wait_ips(&api, "after-failover", 1).await;
    assert!(service_writes(&fake, "agent-b") > 0, "the new leader wrote");
    let lease = fake
        .get("coordination.k8s.io/leases", "edgelb-system", "edgelb-agent")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"].as_str(), Some("agent-b"));
    for i in 0..3 {
        wait_ips(&api, &format!("s{i}"), 1).await;
    }
    b.stop().await;
    let lease = fake
        .get("coordination.k8s.io/leases", "edgelb-system", "edgelb-agent")
        .expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a graceful stop releases the Lease: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_shared_taken_and_exhausted() {
    let (app, token) = Appliance::start(&["10.55.0.1-10.55.0.3", "fd00:55::/126"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;

    // Dual-stack: one address per family, in the order of ipFamilies.
    let dual = with_spec(service("default", "dual"), |s| {
        s.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        s.ip_family_policy = Some("RequireDualStack".into());
    });
    create(&api, &dual).await;
    let ips = wait_ips(&api, "dual", 2).await;
    assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{ips:?}");

    // Shared: two Services with one key and different ports get one address.
    let one = annotate(service("default", "share-1"), ANNOTATION_SHARED, "k");
    let two = with_spec(annotate(service("default", "share-2"), ANNOTATION_SHARED, "k"), |s| {
        if let Some(p) = s.ports.as_mut() {
            p[0].port = 443;
            p[0].node_port = Some(30443);
        }
    });
    create(&api, &one).await;
    create(&api, &two).await;
    let a = wait_ips(&api, "share-1", 1).await;
    let b = wait_ips(&api, "share-2", 1).await;
    assert_eq!(a, b, "shared address");

    // Taken: asking for an address another Service holds; the Event names the holder.
    let taken = annotate(service("default", "thief"), ANNOTATION_IPS, &a[0].to_string());
    create(&api, &taken).await;
    let note = wait_event(&fake, "thief", "AllocationFailed").await;
    assert!(
        note.contains("share-1") || note.contains("share-2"),
        "names the holder: {note}"
    );
    assert!(
        api.get("thief")
            .await
            .expect("get")
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .is_none_or(|i| i.is_empty())
    );

    // Exhausted: the third and last IPv4 address goes, then the pool is empty. That refusal has
    // a reason of its own (the appliance's problem type says so), for operators to alert on;
    // the one above stays AllocationFailed.
    create(&api, &service("default", "third")).await;
    wait_ips(&api, "third", 1).await;
    create(&api, &service("default", "fourth")).await;
    let note = wait_event(&fake, "fourth", "PoolExhausted").await;
    assert!(note.contains("pool exhausted: no free IPv4 address"), "{note}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_switched_to_cluster_ip_or_another_class_releases() {
    let (app, token) = Appliance::start(&["10.56.0.0/29"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    create(&api, &service("default", "web")).await;
    create(&api, &service("default", "other")).await;
    wait_ips(&api, "web", 1).await;
    wait_ips(&api, "other", 1).await;

    let patch = json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let patch = json!({"spec": {"loadBalancerClass": "someone-else"}});
    api.patch("other", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    for name in ["web", "other"] {
        eventually(30, &format!("{name} to lose finalizer and status"), || async {
            let svc = api.get(name).await.ok()?;
            let clean = svc.metadata.finalizers.unwrap_or_default().is_empty()
                && edgelb_agent::spec::status_ips(&api.get(name).await.ok()?).is_empty();
            clean.then_some(())
        })
        .await;
        assert!(app.service("default", name).await.is_none(), "{name} released");
        wait_event(&fake, name, "IPReleased").await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_changes_and_local_endpoints_reach_the_appliance() {
    let (app, token) = Appliance::start(&["10.57.0.0/29"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, addr) in [("n1", "192.168.57.1"), ("n2", "192.168.57.2")] {
        let n = node(name, addr, None);
        nodes.create(&PostParams::default(), &n).await.expect("node");
        let status = json!({"status": n.status});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
    }
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    let node_state = |v: &serde_json::Value, name: &str, field: &str| {
        v["nodes"].as_array()?.iter().find(|n| n["name"] == name)?[field].as_bool()
    };
    eventually(30, "both nodes at the appliance", || async {
        let v = app.nodes().await;
        (node_state(&v, "n1", "ready") == Some(true) && node_state(&v, "n2", "ready") == Some(true)).then_some(())
    })
    .await;

    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    nodes
        .patch_status("n2", &PatchParams::default(), &Patch::Merge(&not_ready))
        .await
        .expect("patch");
    eventually(30, "n2 not ready at the appliance", || async {
        (node_state(&app.nodes().await, "n2", "ready") == Some(false)).then_some(())
    })
    .await;
    let label = json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}});
    nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("patch");
    eventually(30, "n1 excluded at the appliance", || async {
        (node_state(&app.nodes().await, "n1", "excluded") == Some(true)).then_some(())
    })
    .await;

    // A Local Service: the appliance learns which nodes have ready endpoints.
    let api = services(&client, "default");
    let local = with_spec(service("default", "local"), |s| {
        s.external_traffic_policy = Some("Local".into());
        s.health_check_node_port = Some(32100);
    });
    create(&api, &local).await;
    wait_ips(&api, "local", 1).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = endpoint_slice("default", "local-abc", "local", &[("n1", true), ("n2", false)]);
    slices.create(&PostParams::default(), &slice).await.expect("slice");
    eventually(30, "local nodes at the appliance", || async {
        let v = app.service("default", "local").await?;
        (v["spec"]["local_nodes"] == json!(["n1"])).then_some(())
    })
    .await;
    let slice = endpoint_slice("default", "local-abc", "local", &[("n1", true), ("n2", true)]);
    slices
        .patch("local-abc", &PatchParams::default(), &Patch::Merge(&slice))
        .await
        .expect("slice");
    eventually(30, "both nodes local at the appliance", || async {
        let v = app.service("default", "local").await?;
        (v["spec"]["local_nodes"] == json!(["n1", "n2"])).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_services_are_released_only_after_a_complete_list_and_the_grace_period() {
    let (app, token) = Appliance::start(&["10.58.0.0/29"]).await;
    // A Service the appliance holds but the cluster does not have.
    let direct = app.appliance_client(&token);
    let spec = edgelb_agent::spec::desired_spec(&service("default", "ghost"), &[]).expect("spec");
    direct.put_service("default", "ghost", &spec).await.expect("put ghost");
    let fake = FakeApiServer::start().await;
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    // Wait until the agent leads and synced, then take the API server away: lists fail.
    eventually(30, "the agent to lead", || async {
        fake.get("coordination.k8s.io/leases", "edgelb-system", "edgelb-agent")
            .filter(|l| l["spec"]["holderIdentity"] == "agent-a")
            .map(|_| ())
    })
    .await;
    fake.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        app.service("default", "ghost").await.is_some(),
        "nothing is released on a failed list"
    );
    fake.set_down(false);
    eventually(30, "the ghost to be released", || async {
        app.service("default", "ghost").await.is_none().then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_relists_after_its_watch_is_cut_and_the_history_compacted() {
    let (app, token) = Appliance::start(&["10.59.0.0/29"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    create(&api, &service("default", "before")).await;
    wait_ips(&api, "before", 1).await;
    // Every watch ends and resuming from its last version answers 410 Gone: only a re-list
    // shows the changes made in between.
    fake.close_watches();
    fake.compact();
    create(&api, &service("default", "during")).await;
    delete(&api, "before").await;
    fake.compact();
    wait_ips(&api, "during", 1).await;
    eventually(30, "before to be released and gone", || async {
        api.get_opt("before").await.expect("get").is_none().then_some(())
    })
    .await;
    assert!(app.service("default", "before").await.is_none());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_annotations_reach_the_appliance_and_a_bad_one_is_reported_not_sent() {
    use edgelb_agent::spec::{
        ANNOTATION_HEALTH_FALL, ANNOTATION_HEALTH_INTERVAL, ANNOTATION_HEALTH_JITTER, ANNOTATION_HEALTH_TIMEOUT,
    };
    let (app, token) = Appliance::start(&["10.60.0.0/29"]).await;
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let api = services(&client, "default");
    let agent = Agent::start(&fake, &app, &token, "agent-a").await;
    let svc = annotate(
        annotate(service("default", "web"), ANNOTATION_HEALTH_INTERVAL, "500ms"),
        ANNOTATION_HEALTH_FALL,
        "2",
    );
    create(&api, &svc).await;
    wait_ips(&api, "web", 1).await;
    let health = |v: &serde_json::Value| v["spec"]["health"].clone();
    let sent = app.service("default", "web").await.expect("held");
    assert_eq!(
        health(&sent),
        json!({"interval_ms": 500, "timeout_ms": null, "rise": null, "fall": 2, "jitter_percent": null})
    );

    // A bad value: a Warning Event names the annotation and what to write, and the appliance
    // keeps the last good settings rather than getting a guess.
    let bad = json!({"metadata": {"annotations": {ANNOTATION_HEALTH_INTERVAL: "2"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect("patch");
    let note = wait_event(&fake, "web", "AllocationFailed").await;
    assert!(note.contains("edgelb.io/health-interval: \"2\" has no unit"), "{note}");
    assert!(note.contains("\"2s\""), "the note says what to write: {note}");
    let kept = app.service("default", "web").await.expect("still held");
    assert_eq!(health(&kept), health(&sent), "nothing half-understood is sent");
    assert_eq!(kept["ips"], sent["ips"], "the address stays");

    // Fixed, with a timeout too: the appliance gets it.
    let good = json!({"metadata": {"annotations": {ANNOTATION_HEALTH_INTERVAL: "1s",
        ANNOTATION_HEALTH_TIMEOUT: "300ms", ANNOTATION_HEALTH_JITTER: "0"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&good))
        .await
        .expect("patch");
    eventually(30, "the fixed settings at the appliance", || async {
        let v = app.service("default", "web").await?;
        (health(&v) == json!({"interval_ms": 1000, "timeout_ms": 300, "rise": null, "fall": 2, "jitter_percent": 0}))
            .then_some(())
    })
    .await;

    // Annotations removed: the appliance's (and the pool's) settings again.
    let none = json!({"metadata": {"annotations": {
        ANNOTATION_HEALTH_INTERVAL: null, ANNOTATION_HEALTH_TIMEOUT: null, ANNOTATION_HEALTH_FALL: null,
        ANNOTATION_HEALTH_JITTER: null}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .expect("patch");
    eventually(30, "no overrides at the appliance", || async {
        let v = app.service("default", "web").await?;
        health(&v).is_null().then_some(())
    })
    .await;
    agent.stop().await;
}
