//! The fake API server keeps the semantics the agent relies on; each test drives it with a real
//! kube client, the way the agent does.

mod fake_apiserver;

use std::time::Duration;

use edgelb_agent::fixtures::service;
use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

async fn setup() -> (std::sync::Arc<FakeApiServer>, Api<Service>) {
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    (fake, Api::namespaced(client, "default"))
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_a_conflict() {
    let (_fake, api) = setup().await;
    let created = api
        .create(&PostParams::default(), &service("default", "a"))
        .await
        .expect("create");
    let mut first = created.clone();
    first.metadata.labels = Some([("x".to_owned(), "1".to_owned())].into());
    api.replace("a", &PostParams::default(), &first)
        .await
        .expect("first replace");
    let mut stale = created;
    stale.metadata.labels = Some([("x".to_owned(), "2".to_owned())].into());
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    let stale_patch = json!({"metadata": {"resourceVersion": "1", "finalizers": ["x/y"]}});
    let err = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&stale_patch))
        .await
        .expect_err("stale patch");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");
}

#[tokio::test]
async fn status_is_a_subresource() {
    let (_fake, api) = setup().await;
    let mut svc = service("default", "a");
    svc.status = Some(Default::default());
    let created = api.create(&PostParams::default(), &svc).await.expect("create");
    assert_ne!(
        created.metadata.uid.as_deref(),
        Some("uid-default-a"),
        "the server makes the uid"
    );
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}},
                        "spec": {"type": "ClusterIP"}});
    let after = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer"),
        "/status ignores spec"
    );
    assert_eq!(
        edgelb_agent::spec::status_ips(&after),
        vec!["192.0.2.1".parse::<std::net::IpAddr>().expect("ip")]
    );
    let main = json!({"status": {"loadBalancer": {"ingress": []}}, "metadata": {"labels": {"a": "b"}}});
    let after = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .expect("patch");
    assert_eq!(
        edgelb_agent::spec::status_ips(&after).len(),
        1,
        "the main resource ignores status"
    );
    // JSON patch works too.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/c", "value": "d"}])).expect("json patch");
    let after = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(after.metadata.labels.expect("labels")["c"], "d");
    // A write that changes nothing keeps the version.
    let same = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .expect("patch");
    assert_eq!(same.metadata.resource_version, after.metadata.resource_version);
}

#[tokio::test]
async fn delete_waits_for_the_last_finalizer() {
    let (_fake, api) = setup().await;
    let mut svc = service("default", "a");
    svc.metadata.finalizers = Some(vec!["one".into(), "two".into()]);
    api.create(&PostParams::default(), &svc).await.expect("create");
    api.delete("a", &DeleteParams::default()).await.expect("delete");
    let deleting = api.get("a").await.expect("still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let add = json!({"metadata": {"finalizers": ["one", "two", "three"]}});
    let err = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect_err("no new finalizer");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422), "{err}");
    let one = json!({"metadata": {"finalizers": ["two"]}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .expect("patch");
    assert!(api.get_opt("a").await.expect("get").is_some());
    let none = json!({"metadata": {"finalizers": []}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .expect("patch");
    assert!(
        api.get_opt("a").await.expect("get").is_none(),
        "gone with the last finalizer"
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_a_compacted_one_is_gone() {
    let (fake, api) = setup().await;
    api.create(&PostParams::default(), &service("default", "a"))
        .await
        .expect("create");
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    api.create(&PostParams::default(), &service("default", "b"))
        .await
        .expect("create");
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Added(s))) => assert_eq!(s.metadata.name.as_deref(), Some("b")),
        other => panic!("expected b added, got {other:?}"),
    }
    fake.compact();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn the_kube_watcher_relists_after_410_and_sees_every_change() {
    let (fake, api) = setup().await;
    api.create(&PostParams::default(), &service("default", "a"))
        .await
        .expect("create");
    let (reader, writer) = kube::runtime::reflector::store::<Service>();
    let task = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.expect("ready");
    assert_eq!(reader.state().len(), 1);
    // Changes made while the watch is cut and history is compacted come through a re-list.
    fake.close_watches();
    fake.compact();
    api.create(&PostParams::default(), &service("default", "b"))
        .await
        .expect("create");
    api.delete("a", &DeleteParams::default()).await.expect("delete");
    fake.compact();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = reader.state().iter().filter_map(|s| s.metadata.name.clone()).collect();
        if names == ["b"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "store never converged: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test]
async fn list_pages_with_continue() {
    let (_fake, api) = setup().await;
    for i in 0..7 {
        api.create(&PostParams::default(), &service("default", &format!("s{i}")))
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = api.list(&lp).await.expect("list");
        names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);
}

#[tokio::test]
async fn server_side_apply_conflicts_on_a_field_another_manager_owns() {
    let fake = FakeApiServer::start().await;
    let client = fake.client("test").await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let a = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "a"}});
    leases
        .patch("l", &PatchParams::apply("mgr-a"), &Patch::Apply(&a))
        .await
        .expect("a applies");
    let b = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "b"}});
    let err = leases
        .patch("l", &PatchParams::apply("mgr-b"), &Patch::Apply(&b))
        .await
        .expect_err("conflict");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");
    leases
        .patch("l", &PatchParams::apply("mgr-b").force(), &Patch::Apply(&b))
        .await
        .expect("forced");
    let release = json!({"spec": {"holderIdentity": null}});
    let p = PatchParams {
        field_manager: Some("mgr-b".into()),
        ..Default::default()
    };
    leases
        .patch("l", &p, &Patch::Strategic(&release))
        .await
        .expect("release");
    leases
        .patch("l", &PatchParams::apply("mgr-a"), &Patch::Apply(&a))
        .await
        .expect("free again");
    let l = leases.get("l").await.expect("get");
    assert_eq!(l.spec.and_then(|s| s.holder_identity).as_deref(), Some("a"));
}
