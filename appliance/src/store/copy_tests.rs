//! `edgelb store copy` both ways, on a real SQLite file and a real PostgreSQL: a store with
//! pools, 10,000 allocations, held addresses, nodes, tokens, users, sessions and audit entries
//! goes to PostgreSQL and back to a new SQLite file, and the store opened on that file answers
//! exactly as the original did.

use edgelb_api::{ClusterSpec, NodeList, Role, TokenSpec};
use futures::StreamExt;
use sqlx::{AnyConnection, Connection};

use super::copy::{Location, TABLES, copy, redact};
use super::tests::{ACTOR, all_allocations, node, pool, service, with_pool_and_cluster};
use super::*;

const SERVICES: usize = 10_000;

/// Every row of every table, sorted, as a reader of its own sees it (independent of the copy's:
/// each value's type is guessed from what the driver returns).
async fn dump(location: &Location) -> Vec<(String, Vec<String>)> {
    sqlx::any::install_default_drivers();
    let url = match location {
        Location::Sqlite(p) => super::copy::sqlite_url(p, "ro"),
        Location::Postgres(u) => u.clone(),
    };
    let mut conn = AnyConnection::connect(&url).await.expect("connect");
    let mut out = Vec::new();
    for table in TABLES {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .fetch_all(&mut conn)
            .await
            .expect("rows");
        let mut shown: Vec<String> = rows
            .iter()
            .map(|r| {
                use sqlx::Row;
                (0..r.len())
                    .map(|i| {
                        if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                            return format!("{v:?}");
                        }
                        if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                            return format!("{v:?}");
                        }
                        format!("{:?}", r.try_get::<Option<Vec<u8>>, _>(i).expect("a blob"))
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        shown.sort();
        out.push(((*table).to_owned(), shown));
    }
    out
}

/// A store with something in every table.
async fn populated() -> (tempfile::TempDir, Store) {
    let mut second = pool("second", &["2001:db8::/120"]);
    second.priority = 5;
    second.hold_seconds = 3600;
    second.forwarding = Some(edgelb_api::Forwarding::Nat);
    let (dir, store) = with_pool_and_cluster(&[pool("big", &["10.0.0.0/18"]), second], "prod").await;
    store
        .create_cluster(
            ACTOR,
            ClusterSpec {
                name: "staging".to_owned(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    futures::stream::iter(0..SERVICES)
        .map(|n| {
            let store = store.clone();
            async move {
                store
                    .put_service(
                        ACTOR,
                        "prod",
                        &format!("ns{}", n % 7),
                        &format!("svc{n}"),
                        service(&format!("uid-{n}"), &[80, 443]),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("put {n}: {e}"))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    // Held addresses: deleted Services keep theirs for the pool's hold period.
    for n in 0..25 {
        store
            .delete_service(ACTOR, "prod", &format!("ns{}", n % 7), &format!("svc{n}"))
            .await
            .expect("delete");
    }
    store
        .put_nodes(
            ACTOR,
            "prod",
            NodeList {
                nodes: vec![node("n1", "192.168.0.1", true), node("n2", "192.168.0.2", false)],
            },
        )
        .await
        .expect("nodes");
    store
        .create_token(
            ACTOR,
            TokenSpec {
                name: "agent".to_owned(),
                role: Role::Agent,
                cluster: Some("prod".to_owned()),
            },
        )
        .await
        .expect("token");
    store
        .create_user(ACTOR, "alice", "a long enough password", Role::Operator)
        .await
        .expect("user");
    store.create_session("alice").await.expect("session");
    (dir, store)
}

#[tokio::test]
async fn a_store_copied_to_postgres_and_back_is_the_same_store() {
    let (dir, store) = populated().await;
    let original = Location::Sqlite(dir.path().join(DB_FILE));
    let allocations = all_allocations(&store, AllocationFilter::default()).await;
    assert_eq!(allocations.len(), SERVICES, "{SERVICES} addresses in use or held");
    let audit = store
        .list_audit(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let pools = store.list_pools().await.expect("pools");
    let users = store.list_users().await.expect("users");
    let tokens = store.list_tokens().await.expect("tokens");
    let history = store
        .address_history(&AddressHistoryFilter {
            limit: 1000,
            ..AddressHistoryFilter::default()
        })
        .await
        .expect("history");

    // SQLite -> PostgreSQL, while the source store is open.
    let pg = Location::Postgres(edgelb_pgtest::database("copy"));
    let report = copy(&original, &pg).await.expect("copy to PostgreSQL");
    let rows = |table: &str| report.tables.iter().find(|(t, _)| t == table).map(|(_, n)| *n);
    assert_eq!(rows("addresses"), Some(SERVICES));
    assert_eq!(rows("service_addresses"), Some(SERVICES - 25));
    assert_eq!(rows("users"), Some(1));
    assert_eq!(rows("console_sessions"), Some(1));
    assert_eq!(report.tables.len(), TABLES.len());
    let before = dump(&original).await;
    assert_eq!(dump(&pg).await, before, "PostgreSQL holds every row of every table");

    // PostgreSQL -> a new SQLite file.
    let back_dir = tempfile::tempdir().expect("temp dir");
    let back = Location::Sqlite(back_dir.path().join(DB_FILE));
    copy(&pg, &back).await.expect("copy back to SQLite");
    assert_eq!(dump(&back).await, before, "the file copied back holds the same rows");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(back_dir.path().join(DB_FILE))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the copy holds password hashes: its owner's only");

    // The store opened on the copy answers as the original did.
    let copied = Store::open(back_dir.path()).await.expect("open the copy");
    assert_eq!(all_allocations(&copied, AllocationFilter::default()).await, allocations);
    assert_eq!(copied.list_pools().await.expect("pools"), pools);
    assert_eq!(copied.list_users().await.expect("users"), users);
    assert_eq!(copied.list_tokens().await.expect("tokens"), tokens);
    let audit_copy = copied
        .list_audit(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit_copy.items, audit.items);
    let history_copy = copied
        .address_history(&AddressHistoryFilter {
            limit: 1000,
            ..AddressHistoryFilter::default()
        })
        .await
        .expect("history");
    assert_eq!(history_copy.items, history.items);
    assert_eq!(copied.integrity_check().await.expect("integrity"), "ok");
    // It goes on where the original stopped: a new Service gets a new address, the audit a
    // new entry after the copied ones.
    let fresh = copied
        .put_service(ACTOR, "prod", "new", "web", service("uid-new", &[80]))
        .await
        .expect("a new Service on the copy");
    assert!(!allocations.iter().any(|a| fresh.ips.contains(&a.ip)), "{fresh:?}");

    // PostgreSQL's ids continue after the copied ones too.
    sqlx::any::install_default_drivers();
    let Location::Postgres(url) = &pg else { unreachable!() };
    let mut conn = AnyConnection::connect(url).await.expect("connect");
    let (max,): (i64,) = sqlx::query_as("SELECT MAX(id) FROM audit")
        .fetch_one(&mut conn)
        .await
        .expect("max");
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO audit (time, actor, action, object) VALUES (1, 'test', 'check', 'x') RETURNING id")
            .fetch_one(&mut conn)
            .await
            .expect("a new audit entry");
    assert_eq!(id, max + 1);
}

#[tokio::test]
async fn a_copy_refuses_a_target_that_holds_anything_and_bad_locations() {
    let (dir, _store) = with_pool_and_cluster(&[pool("p", &["10.0.0.0/24"])], "prod").await;
    let original = Location::Sqlite(dir.path().join(DB_FILE));
    let pg = Location::Postgres(edgelb_pgtest::database("refuse"));
    copy(&original, &pg).await.expect("first copy");
    let before = dump(&pg).await;
    let e = copy(&original, &pg)
        .await
        .expect_err("a second copy into the same database");
    assert!(e.to_string().contains("is not empty (clusters has 1 rows)"), "{e}");
    assert_eq!(dump(&pg).await, before, "nothing written");

    let e = copy(&pg, &original).await.expect_err("into an existing file");
    assert!(e.to_string().contains("exists already"), "{e}");
    let e = copy(&original, &original).await.expect_err("onto itself");
    assert!(e.to_string().contains("the same store"), "{e}");
    let missing = Location::Sqlite(dir.path().join("missing.db"));
    let e = copy(&missing, &pg).await.expect_err("no source");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // A file that is not an edgelb store.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("empty file");
    let e = copy(
        &Location::Sqlite(empty),
        &Location::Postgres(edgelb_pgtest::database("empty")),
    )
    .await
    .expect_err("not a store");
    assert!(e.to_string().contains("holds no edgelb store"), "{e}");

    for (bad, says) in [
        ("mysql://db/edgelb", "give sqlite:/path/to/edgelb.db or postgres://"),
        ("sqlite:", "needs a file"),
        ("sqlite:/tmp/x.db?mode=ro", "without `?` options"),
        ("/var/lib/edgelb/edgelb.db", "give sqlite:"),
    ] {
        let e = Location::parse(bad).expect_err(bad);
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    assert_eq!(
        Location::parse("sqlite:///var/lib/edgelb/edgelb.db").expect("sqlite"),
        Location::Sqlite("/var/lib/edgelb/edgelb.db".into())
    );
}

#[test]
fn a_postgres_password_is_never_shown() {
    assert_eq!(
        redact("postgres://edgelb:s3cret@db.example:5432/edgelb?sslmode=verify-full"),
        "postgres://edgelb:***@db.example:5432/edgelb?sslmode=verify-full"
    );
    assert_eq!(
        redact("postgresql://db.example/edgelb?user=edgelb&password=s3cret&sslmode=require"),
        "postgresql://db.example/edgelb?user=edgelb&password=***&sslmode=require"
    );
    assert_eq!(
        redact("postgres://edgelb@db.example/edgelb"),
        "postgres://edgelb@db.example/edgelb"
    );
    let location = Location::parse("postgres://edgelb:s3cret@db.example/edgelb").expect("parse");
    assert!(!format!("{location:?} {}", location.describe()).contains("s3cret"));
    let e = Location::parse("postgres://edgelb:s3cret@db.example:notaport/edgelb").expect_err("bad port");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

/// The copy names every table the migrations create, in both dialects.
#[tokio::test]
async fn the_copy_knows_every_table() {
    let (dir, _store) = with_pool_and_cluster(&[], "prod").await;
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&super::copy::sqlite_url(&dir.path().join(DB_FILE), "ro"))
        .await
        .expect("connect");
    let tables: std::collections::BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("tables")
    .into_iter()
    .collect();
    assert_eq!(tables, TABLES.iter().map(|t| (*t).to_owned()).collect());
}
