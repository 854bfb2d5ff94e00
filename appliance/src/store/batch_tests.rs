//! Tests of the group commit of Service PUTs (`services.rs`): many concurrent PUTs, one batch
//! decided in order, and a batch whose transaction fails.

use std::collections::BTreeSet;

use edgelb_api::{PoolSpec, Service, ServiceSpec};

use super::*;

// ---- fixtures (the store tests' own, and a few for batches) ----

use super::tests::{ACTOR, audit_actions, ip, service, shown, with_pool_and_cluster};

/// The store tests' pool `p` (10.0.0.0/24) with this hold period.
fn pool(hold_seconds: u64) -> [PoolSpec; 1] {
    [PoolSpec {
        hold_seconds,
        ..super::tests::pool("p", &["10.0.0.0/24"])
    }]
}

/// Puts a Service into `prod/default` and returns its addresses.
async fn put(store: &Store, name: &str, spec: ServiceSpec) -> Vec<String> {
    super::tests::put(store, "prod", "default", name, spec).await
}

// ---- tests ----

/// The outcome of a PUT, for tables of expectations: the addresses, or the error's kind.
fn outcome(r: &Result<Service>) -> String {
    match r {
        Ok(s) => shown(&s.ips).join(","),
        Err(StoreError::Conflict(_)) => "409".into(),
        Err(StoreError::NotFound(_)) => "404".into(),
        Err(StoreError::Unprocessable(_)) => "422".into(),
        Err(e) => format!("error: {e}"),
    }
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(store.read()).await.expect(sql);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_puts_each_get_their_own_answer_and_all_acknowledged_survive() {
    let (dir, store) = with_pool_and_cluster(&pool(600), "prod").await;
    // Eight Services that exist already and are PUT again unchanged.
    let mut existing = Vec::new();
    for i in 0..8 {
        let name = format!("again-{i}");
        existing.push(put(&store, &name, service(&name, &[80])).await);
    }
    let audit_before = count(&store, "SELECT COUNT(*) FROM audit").await;
    let (generation, _) = store.changes_since(0);

    // What each of the 64 asks for, and the kind of answer it must get.
    enum Ask {
        New,
        Again(usize),
        SameIp,
        UnknownCluster,
        SameService(u16),
    }
    let mut asks = Vec::new();
    for i in 0..38 {
        asks.push((format!("new-{i}"), Ask::New));
    }
    for i in 0..8 {
        asks.push((format!("again-{i}"), Ask::Again(i)));
    }
    for i in 0..8 {
        asks.push((format!("want-{i}"), Ask::SameIp));
    }
    for i in 0..8 {
        asks.push((format!("lost-{i}"), Ask::UnknownCluster));
    }
    // One Service PUT twice at once with different ports: both apply, one after the other.
    asks.push(("twice".to_owned(), Ask::SameService(80)));
    asks.push(("twice".to_owned(), Ask::SameService(443)));
    assert_eq!(asks.len(), 64);

    let wanted = ip("10.0.0.200");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(asks.len()));
    let tasks: Vec<_> = asks
        .iter()
        .map(|(name, ask)| {
            let (store, barrier, name) = (store.clone(), barrier.clone(), name.clone());
            let (cluster, spec) = match ask {
                Ask::New => ("prod", service(&name, &[80])),
                Ask::Again(_) => ("prod", service(&name, &[80])),
                Ask::SameIp => (
                    "prod",
                    ServiceSpec {
                        requested_ips: vec![wanted],
                        ..service(&name, &[80])
                    },
                ),
                Ask::UnknownCluster => ("nowhere", service(&name, &[80])),
                Ask::SameService(port) => ("prod", service("twice", &[*port])),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                store.put_service(ACTOR, cluster, "default", &name, spec).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }

    let mut acknowledged: Vec<Service> = Vec::new();
    let mut same_ip_winner = None;
    let mut twice_ips = BTreeSet::new();
    for ((name, ask), answer) in asks.iter().zip(&answers) {
        match ask {
            Ask::New => {
                let s = answer.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(s.ips.len(), 1, "{name}");
                acknowledged.push(s.clone());
            }
            Ask::Again(i) => {
                let s = answer.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(shown(&s.ips), existing[*i], "{name} keeps its address");
            }
            Ask::SameIp => match answer {
                Ok(s) => {
                    assert_eq!(s.ips, [wanted]);
                    assert!(same_ip_winner.replace(name.clone()).is_none(), "two got {wanted}");
                    acknowledged.push(s.clone());
                }
                Err(StoreError::Conflict(_)) => {}
                other => panic!("{name}: expected the address or 409, got {:?}", outcome(other)),
            },
            Ask::UnknownCluster => assert_eq!(outcome(answer), "404", "{name}"),
            Ask::SameService(_) => {
                let s = answer.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                twice_ips.insert(s.ips.clone());
                acknowledged.push(s.clone());
            }
        }
    }
    let winner = same_ip_winner.expect("one of the Services asking for the same address gets it");
    for ((name, ask), answer) in asks.iter().zip(&answers) {
        if let (Ask::SameIp, Err(StoreError::Conflict(m))) = (ask, answer) {
            assert!(m.contains(&format!("Service prod/default/{winner}")), "{name}: {m}");
        }
    }
    assert_eq!(
        twice_ips.len(),
        1,
        "both PUTs of one Service answer with its one address"
    );

    // No address twice, in memory or in the database.
    let mut seen = BTreeSet::new();
    for s in acknowledged.iter().filter(|s| s.name != "twice") {
        assert!(seen.insert(s.ips[0]), "{} handed out twice", s.ips[0]);
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) - COUNT(DISTINCT ip) FROM addresses").await,
        0
    );
    // 38 new + the winner + "twice" allocated; "twice" updated once; nothing for the rest.
    let actions: Vec<String> = audit_actions(&store).await.split_off(audit_before as usize);
    assert_eq!(actions.iter().filter(|a| *a == "service.allocate").count(), 40);
    assert_eq!(actions.iter().filter(|a| *a == "service.update").count(), 1);
    assert_eq!(actions.len(), 41);
    // The journal names exactly the Services that changed, never "everything".
    let (_, dirty) = store.changes_since(generation);
    assert!(!dirty.all);
    let changed: BTreeSet<String> = dirty.services.iter().map(|k| k.name.clone()).collect();
    let expected: BTreeSet<String> = acknowledged.iter().map(|s| s.name.clone()).collect();
    assert_eq!(changed, expected);

    // Everything acknowledged is there after reopening, with its last spec.
    let twice_port = store
        .get_service("prod", "default", "twice")
        .await
        .expect("twice")
        .spec
        .expect("spec")
        .ports[0]
        .port;
    drop(store);
    let store = Store::open(dir.path()).await.expect("reopen");
    for s in &acknowledged {
        let got = store
            .get_service(&s.cluster, &s.namespace, &s.name)
            .await
            .unwrap_or_else(|e| panic!("{} after reopening: {e}", s.name));
        assert_eq!(got.ips, s.ips, "{}", s.name);
    }
    let twice = store.get_service("prod", "default", "twice").await.expect("twice");
    assert_eq!(twice.spec.expect("spec").ports[0].port, twice_port);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM services").await, 8 + 40);
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
}

/// Runs one batch through the group commit directly (so its make-up is known) and returns
/// each PUT's answer in order.
async fn run_batch(store: &Store, puts: Vec<(&str, &str, ServiceSpec)>) -> Vec<Result<Service>> {
    let mut batch = Vec::new();
    let mut receivers = Vec::new();
    for (cluster, name, spec) in puts {
        let key = crate::ipam::ServiceKey::new(cluster, "default", name);
        let (put, rx) = services::PendingPut::new(ACTOR, key, spec).expect("put");
        batch.push(put);
        receivers.push(rx);
    }
    {
        let mut w = store.inner.write.lock().await;
        let answers = services::put_batch(&mut w, batch, now()).await;
        let touched = std::mem::take(&mut w.touched);
        store.changed(touched);
        for (tx, answer) in answers {
            let _ = tx.send(answer);
        }
    }
    let mut out = Vec::new();
    for rx in receivers {
        out.push(rx.await.expect("answered"));
    }
    out
}

#[tokio::test]
async fn a_batch_decides_each_put_against_the_ones_before_it() {
    let (_dir, store) = with_pool_and_cluster(&pool(0), "prod").await;
    put(&store, "old", service("old", &[80])).await; // 10.0.0.0
    put(&store, "moving", service("moving", &[80])).await; // 10.0.0.1
    let shared = |uid: &str, port: u16| ServiceSpec {
        sharing_key: Some("k".into()),
        ..service(uid, &[port])
    };
    let answers = run_batch(
        &store,
        vec![
            ("prod", "a", service("a", &[80])),
            ("prod", "old", service("old", &[80])),
            ("prod", "b", shared("b", 80)),
            // Shares b's address, decided in the same batch before b is committed.
            ("prod", "c", shared("c", 443)),
            ("prod", "d", shared("d", 80)),
            ("nowhere", "e", service("e", &[80])),
            // Moves to a requested address, freeing its own (hold 0): not a simple PUT.
            (
                "prod",
                "moving",
                ServiceSpec {
                    requested_ips: vec![ip("10.0.0.50")],
                    ..service("moving", &[80])
                },
            ),
            // Gets the address "moving" just freed, after the statements of the PUT above.
            ("prod", "f", service("f", &[80])),
            (
                "prod",
                "g",
                ServiceSpec {
                    requested_ips: vec![ip("10.0.0.50")],
                    ..service("g", &[80])
                },
            ),
        ],
    )
    .await;
    let got: Vec<String> = answers.iter().map(outcome).collect();
    assert_eq!(
        got,
        [
            "10.0.0.2",
            // Unchanged, and answered from the batch's own state, not by a later read.
            "10.0.0.0",
            "10.0.0.3",
            "10.0.0.3",
            "409",
            "404",
            "10.0.0.50",
            "10.0.0.1",
            "409"
        ]
    );
    match &answers[8] {
        Err(StoreError::Conflict(m)) => assert!(m.contains("Service prod/default/moving"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The database says the same as the answers, and the audit follows the batch's order.
    let listed: Vec<(String, Vec<String>)> = store
        .list_services(Some("prod"))
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.name, shown(&s.ips)))
        .collect();
    let expect = |v: &[(&str, &str)]| -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(n, i)| ((*n).to_owned(), vec![(*i).to_owned()]))
            .collect()
    };
    assert_eq!(
        listed,
        expect(&[
            ("a", "10.0.0.2"),
            ("b", "10.0.0.3"),
            ("c", "10.0.0.3"),
            ("f", "10.0.0.1"),
            ("moving", "10.0.0.50"),
            ("old", "10.0.0.0")
        ])
    );
    let entries = store
        .list_audit(&AuditFilter {
            limit: 5,
            ..AuditFilter::default()
        })
        .await
        .expect("audit")
        .items;
    let objects: Vec<String> = entries
        .iter()
        .rev()
        .map(|e| format!("{} {}", e.action, e.object))
        .collect();
    assert_eq!(
        objects,
        [
            "service.allocate service/prod/default/a",
            "service.allocate service/prod/default/b",
            "service.allocate service/prod/default/c",
            "service.allocate service/prod/default/moving",
            "service.allocate service/prod/default/f",
        ]
    );
    // Each entry's `before` is the row as it was when that PUT was decided.
    let moving = &entries[1];
    assert_eq!(
        moving.before.as_ref().map(|b| b["uid"].clone()),
        Some(serde_json::json!("moving"))
    );
    assert_eq!(
        moving.after.as_ref().map(|a| a["ips"].clone()),
        Some(serde_json::json!(["10.0.0.50"]))
    );
    assert_eq!(entries[0].before, None, "f is new");
    assert_eq!(
        count(&store, "SELECT COUNT(*) - COUNT(DISTINCT ip) FROM addresses").await,
        0
    );
}

#[tokio::test]
async fn a_batch_whose_transaction_fails_answers_every_put_with_the_error_and_changes_nothing() {
    let (dir, store) = with_pool_and_cluster(&pool(600), "prod").await;
    put(&store, "first", service("first", &[80])).await; // 10.0.0.0
    let audit_before = count(&store, "SELECT COUNT(*) FROM audit").await;
    let (generation, _) = store.changes_since(0);
    // A failure the allocation state cannot foresee, in the middle of the batch.
    let mut conn = sqlx::SqliteConnection::connect_with(&options(&dir.path().join(DB_FILE)))
        .await
        .expect("connect");
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON services WHEN NEW.name = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    let answers = run_batch(
        &store,
        vec![
            ("prod", "a", service("a", &[80])),
            ("prod", "boom", service("boom", &[80])),
            ("prod", "b", service("b", &[80])),
            // Refused on its own merits: keeps its own error.
            ("nowhere", "c", service("c", &[80])),
            // Refused only because `a`, earlier in the batch, took the address it asks for:
            // that refusal is void when the batch fails.
            ("prod", "d", {
                let mut d = service("d", &[80]);
                d.requested_ips = vec!["10.0.0.1".parse().expect("ip")];
                d
            }),
        ],
    )
    .await;
    let got: Vec<String> = answers.iter().map(outcome).collect();
    assert!(got[..3].iter().all(|o| o.starts_with("error:")), "{got:?}");
    assert_eq!(got[3], "404");
    assert!(got[4].starts_with("error:") && got[4].contains("retry"), "{got:?}");
    // Nothing written, nothing in the journal, and the allocation state as before: the next
    // PUTs get the addresses the failed batch had picked.
    assert_eq!(count(&store, "SELECT COUNT(*) FROM audit").await, audit_before);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM services").await, 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM addresses").await, 1);
    assert_eq!(store.changes_since(generation).0, generation);
    {
        let w = store.inner.write.lock().await;
        assert_eq!(w.ipam.len(), 1);
        assert!(
            w.ipam
                .addresses_of(&crate::ipam::ServiceKey::new("prod", "default", "a"))
                .is_empty()
        );
    }
    sqlx::query("DROP TRIGGER refuse")
        .execute(&mut conn)
        .await
        .expect("drop trigger");
    assert_eq!(put(&store, "b", service("b", &[80])).await, ["10.0.0.1"]);
    assert_eq!(put(&store, "a", service("a", &[80])).await, ["10.0.0.2"]);
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
}
