//! The two dialects of the schema (`migrations/sqlite/`, `migrations/postgres/`) give the same
//! behaviour: one scenario of writes runs on a real SQLite file and on a real PostgreSQL
//! (`edgelb-pgtest`), step by step, and every step must end the same way on both, with the
//! refusals the schema exists for. Then the rules that matter when several appliances write at
//! once are checked on PostgreSQL with concurrent transactions.

use std::collections::BTreeSet;

use sqlx::{AnyConnection, Connection, Row};

use super::*;

/// How a statement ended, comparable across the dialects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Done, with the rows it changed.
    Rows(u64),
    Unique,
    ForeignKey,
    Check,
    NotNull,
    /// One of the schema's own rules, with its message (which starts `edgelb: `).
    Rule(String),
}

fn outcome(r: std::result::Result<sqlx::any::AnyQueryResult, sqlx::Error>) -> Outcome {
    match r {
        Ok(done) => Outcome::Rows(done.rows_affected()),
        Err(sqlx::Error::Database(db)) => {
            let message = db.message();
            if let Some(at) = message.find("edgelb: ") {
                return Outcome::Rule(message[at..].trim_end_matches(['"', ' ']).to_owned());
            }
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => Outcome::Unique,
                sqlx::error::ErrorKind::ForeignKeyViolation => Outcome::ForeignKey,
                sqlx::error::ErrorKind::CheckViolation => Outcome::Check,
                sqlx::error::ErrorKind::NotNullViolation => Outcome::NotNull,
                // SQLite reports a foreign key that a DELETE would break with its basic code.
                _ if message == "FOREIGN KEY constraint failed" => Outcome::ForeignKey,
                _ => panic!("unexpected database error: {message}"),
            }
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// One value bound to a statement.
#[derive(Clone)]
enum V {
    I(i64),
    T(&'static str),
    B(Vec<u8>),
    /// A NULL text.
    Null,
    /// A NULL integer (PostgreSQL types a parameter by what is bound).
    NullI,
}

fn addr(last: u8) -> V {
    V::B(ip_blob(
        u128::from(u32::from_be_bytes([192, 0, 2, last])) | 0xffff_0000_0000,
    ))
}

/// A migrated SQLite file, and an empty PostgreSQL database migrated the same way, both opened
/// through sqlx's `Any` driver so one statement text runs on both.
async fn both() -> (tempfile::TempDir, AnyConnection, AnyConnection) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dialects.db");
    let mut native = SqliteConnection::connect_with(&options(&path))
        .await
        .expect("open sqlite");
    MIGRATOR.run(&mut native).await.expect("migrate sqlite");
    native.close().await.expect("close");
    let mut lite = AnyConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("sqlite through Any");
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut lite)
        .await
        .expect("foreign keys");
    let url = edgelb_pgtest::database("dialects");
    postgres::migrate(&url, "the test database")
        .await
        .expect("migrate postgres");
    let pg = AnyConnection::connect(&url).await.expect("postgres through Any");
    (dir, lite, pg)
}

async fn run(conn: &mut AnyConnection, sql: &'static str, binds: &[V]) -> Outcome {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            V::I(i) => q.bind(*i),
            V::T(t) => q.bind(*t),
            V::B(b) => q.bind(b.clone()),
            V::Null => q.bind(None::<String>),
            V::NullI => q.bind(None::<i64>),
        };
    }
    outcome(q.execute(conn).await)
}

/// The address history both databases wrote, without the times (each database's clock).
async fn events(conn: &mut AnyConnection) -> Vec<String> {
    sqlx::query("SELECT event, pool, cluster, namespace, name, uid, held_until FROM address_events ORDER BY id")
        .fetch_all(conn)
        .await
        .expect("address events")
        .iter()
        .map(|r| {
            let text = |i: usize| r.try_get::<Option<String>, _>(i).expect("text").unwrap_or_default();
            let held = r.try_get::<Option<i64>, _>(6).expect("held_until");
            format!(
                "{} {} {} {}/{} {} {}",
                text(0),
                text(1),
                text(2),
                text(3),
                text(4),
                text(5),
                held.map_or(String::new(), |h| h.to_string())
            )
        })
        .collect()
}

const ADDRESS: &str = "INSERT INTO addresses (ip, pool, cluster, sharing_key, state, held_until, since) \
                       VALUES ($1, $2, $3, $4, $5, $6, 100)";
const LINK: &str = "INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ($1, $2, $3, $4)";
const POOL: &str = "INSERT INTO pools (name, ranges, auto_assign, avoid_buggy_ips, priority, clusters, namespaces, \
                    scheduler, hold_seconds, created_at, updated_at, health, capacity_warning_percent) \
                    VALUES ($1, '[\"192.0.2.0/24\"]', 1, 0, 0, '[]', '[]', 'wlc', 600, 1, 1, $2, $3)";

#[tokio::test]
async fn one_scenario_ends_the_same_on_sqlite_and_postgres() {
    use Outcome::*;
    let (_dir, mut lite, mut pg) = both().await;
    let rule = |m: &str| Rule(format!("edgelb: {m}"));
    let held = V::I(5000);
    // (statement, binds, what both must answer)
    let steps: Vec<(&'static str, Vec<V>, Outcome)> = vec![
        (
            "INSERT INTO clusters (name, created_at) VALUES ($1, 1)",
            vec![V::T("c1")],
            Rows(1),
        ),
        (
            "INSERT INTO clusters (name, created_at) VALUES ($1, 1)",
            vec![V::T("c2")],
            Rows(1),
        ),
        (
            "INSERT INTO clusters (name, created_at) VALUES ($1, 1)",
            vec![V::T("c1")],
            Unique,
        ),
        (POOL, vec![V::T("p1"), V::Null, V::I(80)], Rows(1)),
        (POOL, vec![V::T("bad-json"), V::T("{not json"), V::I(80)], Check),
        (POOL, vec![V::T("bad-threshold"), V::Null, V::I(0)], Check),
        (POOL, vec![V::T("no-threshold"), V::Null, V::NullI], NotNull),
        (
            "INSERT INTO services (cluster, namespace, name, uid, created_at, updated_at) VALUES ($1, 'ns', $2, $3, 1, 1)",
            vec![V::T("c1"), V::T("a"), V::T("uid-a")],
            Rows(1),
        ),
        (
            "INSERT INTO services (cluster, namespace, name, uid, created_at, updated_at) VALUES ($1, 'ns', $2, $3, 1, 1)",
            vec![V::T("c1"), V::T("b"), V::T("uid-b")],
            Rows(1),
        ),
        (
            "INSERT INTO services (cluster, namespace, name, uid, created_at, updated_at) VALUES ($1, 'ns', $2, $3, 1, 1)",
            vec![V::T("nope"), V::T("x"), V::T("uid-x")],
            ForeignKey,
        ),
        // An address once across all pools; well formed; in a pool that exists.
        (
            ADDRESS,
            vec![addr(1), V::T("p1"), V::T("c1"), V::Null, V::T("allocated"), V::NullI],
            Rows(1),
        ),
        (
            ADDRESS,
            vec![addr(1), V::T("p1"), V::T("c2"), V::Null, V::T("allocated"), V::NullI],
            Unique,
        ),
        (
            ADDRESS,
            vec![
                V::B(vec![192, 0, 2, 9]),
                V::T("p1"),
                V::T("c1"),
                V::Null,
                V::T("allocated"),
                V::NullI,
            ],
            Check,
        ),
        (
            ADDRESS,
            vec![addr(3), V::T("p1"), V::T("c1"), V::Null, V::T("held"), V::NullI],
            Check,
        ),
        (
            ADDRESS,
            vec![addr(4), V::T("nope"), V::T("c1"), V::Null, V::T("allocated"), V::NullI],
            ForeignKey,
        ),
        (
            ADDRESS,
            vec![addr(2), V::T("p1"), V::T("c2"), V::Null, V::T("allocated"), V::NullI],
            Rows(1),
        ),
        // Links: only to an address allocated to the Service's cluster, shared only by key.
        (LINK, vec![V::T("c1"), V::T("ns"), V::T("a"), addr(1)], Rows(1)),
        (
            LINK,
            vec![V::T("c1"), V::T("ns"), V::T("b"), addr(1)],
            rule("address held by another Service without a sharing key"),
        ),
        (
            LINK,
            vec![V::T("c1"), V::T("ns"), V::T("a"), addr(2)],
            rule("address not allocated to this cluster"),
        ),
        (
            LINK,
            vec![V::T("c1"), V::T("ns"), V::T("a"), addr(7)],
            rule("address not allocated to this cluster"),
        ),
        (
            "UPDATE addresses SET sharing_key = 'k' WHERE ip = $1",
            vec![addr(1)],
            Rows(1),
        ),
        (LINK, vec![V::T("c1"), V::T("ns"), V::T("b"), addr(1)], Rows(1)),
        (LINK, vec![V::T("c1"), V::T("ns"), V::T("b"), addr(1)], Unique),
        (
            "UPDATE addresses SET sharing_key = NULL WHERE ip = $1",
            vec![addr(1)],
            rule("address held by another Service without a sharing key"),
        ),
        (
            "UPDATE addresses SET state = 'held', held_until = $2 WHERE ip = $1",
            vec![addr(1), held.clone()],
            rule("address on hold while a Service uses it"),
        ),
        ("DELETE FROM pools WHERE name = $1", vec![V::T("p1")], ForeignKey),
        ("DELETE FROM clusters WHERE name = $1", vec![V::T("c1")], ForeignKey),
        // b goes (its link with it), then a releases: the address is held for a.
        (
            "DELETE FROM services WHERE cluster = 'c1' AND namespace = 'ns' AND name = $1",
            vec![V::T("b")],
            Rows(1),
        ),
        ("DELETE FROM service_addresses WHERE ip = $1", vec![addr(1)], Rows(1)),
        (
            "UPDATE addresses SET state = 'held', held_until = $2, held_namespace = 'ns', held_name = 'a', \
             held_uid = 'uid-a', sharing_key = NULL WHERE ip = $1",
            vec![addr(1), held.clone()],
            Rows(1),
        ),
        (
            LINK,
            vec![V::T("c1"), V::T("ns"), V::T("a"), addr(1)],
            rule("address not allocated to this cluster"),
        ),
        // Reused, then freed; another held one expires.
        (
            "UPDATE addresses SET state = 'allocated', held_until = NULL WHERE ip = $1",
            vec![addr(1)],
            Rows(1),
        ),
        ("DELETE FROM addresses WHERE ip = $1", vec![addr(1)], Rows(1)),
        (
            ADDRESS,
            vec![addr(5), V::T("p1"), V::T("c1"), V::Null, V::T("held"), held.clone()],
            Rows(1),
        ),
        ("DELETE FROM addresses WHERE ip = $1", vec![addr(5)], Rows(1)),
        // Tokens, users and sessions (whose column "user" PostgreSQL reserves).
        (
            "INSERT INTO tokens (id, name, role, cluster, secret_hash, created_by, created_at) \
             VALUES ($1, 'n', 'agent', NULL, $2, 'test', 1)",
            vec![V::T("t1"), V::B(vec![0; 32])],
            Check,
        ),
        (
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, 'x', 'root', 1)",
            vec![V::T("u1")],
            Check,
        ),
        (
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, 'x', 'admin', 1)",
            vec![V::T("u1")],
            Rows(1),
        ),
        (
            "INSERT INTO console_sessions (id_hash, \"user\", csrf, created_at, expires_at) VALUES ($1, $2, 'c', 1, 2)",
            vec![V::B(vec![1; 32]), V::T("u1")],
            Rows(1),
        ),
        (
            "INSERT INTO console_sessions (id_hash, \"user\", csrf, created_at, expires_at) VALUES ($1, $2, 'c', 1, 2)",
            vec![V::B(vec![2; 16]), V::T("u1")],
            Check,
        ),
        ("DELETE FROM users WHERE name = $1", vec![V::T("u1")], Rows(1)),
        ("DELETE FROM console_sessions", vec![], Rows(0)),
        (
            "INSERT INTO audit (time, actor, action, object) VALUES (1, 'test', 'create', $1)",
            vec![V::T("pool/p1")],
            Rows(1),
        ),
    ];
    for (i, (sql, binds, want)) in steps.iter().enumerate() {
        let on_sqlite = run(&mut lite, sql, binds).await;
        let on_postgres = run(&mut pg, sql, binds).await;
        assert_eq!(on_sqlite, *want, "step {i} on SQLite: {sql}");
        assert_eq!(on_postgres, *want, "step {i} on PostgreSQL: {sql}");
    }
    let history = events(&mut lite).await;
    assert_eq!(history, events(&mut pg).await, "both write the same address history");
    assert_eq!(
        history,
        [
            "assigned p1 c1 ns/a uid-a ",
            "assigned p1 c1 ns/b uid-b ",
            // The cascade from deleting b removes its link after its row: no uid is left to name.
            "released p1 c1 ns/b  ",
            "released p1 c1 ns/a uid-a ",
            "held p1 c1 ns/a uid-a 5000",
            "reused p1 c1 ns/a uid-a 5000",
            "freed p1 c1 /  ",
            "expired p1 c1 /  5000",
        ]
    );
    // The audit's ids count from 1 on both.
    for conn in [&mut lite, &mut pg] {
        let (id,): (i64,) = sqlx::query_as("SELECT MAX(id) FROM audit")
            .fetch_one(conn)
            .await
            .expect("audit id");
        assert_eq!(id, 1);
    }
}

/// Every table and column, with whether it may be NULL, as each dialect reports them.
#[tokio::test]
async fn both_dialects_have_the_same_tables_columns_and_versions() {
    let (_dir, mut lite, mut pg) = both().await;
    let lite_columns: BTreeSet<(String, String, bool)> = sqlx::query(
        "SELECT m.name, p.name, p.\"notnull\" FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut lite)
    .await
    .expect("sqlite columns")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) == 0))
    .collect();
    let pg_columns: BTreeSet<(String, String, bool)> = sqlx::query(
        "SELECT table_name::text, column_name::text, (is_nullable = 'YES')::boolean FROM information_schema.columns \
         WHERE table_schema = 'public'",
    )
    .fetch_all(&mut pg)
    .await
    .expect("postgres columns")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    // sqlx's own table differs by driver; the id that is an INTEGER PRIMARY KEY in SQLite reads
    // as nullable there (a rowid alias) and is NOT NULL in PostgreSQL.
    let ours = |cols: &BTreeSet<(String, String, bool)>| -> BTreeSet<(String, String, bool)> {
        cols.iter()
            .filter(|(t, _, _)| t != "_sqlx_migrations")
            .map(|(t, c, n)| (t.clone(), c.clone(), *n && c != "id"))
            .collect()
    };
    assert!(lite_columns.len() > 60, "{lite_columns:?}");
    assert_eq!(ours(&lite_columns), ours(&pg_columns));
    let versions = |m: &sqlx::migrate::Migrator| {
        m.iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&MIGRATOR), versions(&postgres::MIGRATOR));
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut pg)
        .await
        .expect("applied");
    assert_eq!(applied as usize, postgres::MIGRATOR.iter().count());
}

#[tokio::test]
async fn appliances_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let url = edgelb_pgtest::database("migrate_once");
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { postgres::migrate(&url, "the test database").await })
        })
        .collect();
    for r in runs {
        r.await.expect("task").expect("every appliance starts");
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let (rows, versions): (i64, i64) = sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("migrations");
    assert_eq!((rows, versions), (7, 7), "each migration applied once");
    // A later edgelb's migration: this binary must refuse, saying what to do, and write nothing.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("a newer migration");
    let e = postgres::migrate(&url, "the PostgreSQL store db.example/edgelb")
        .await
        .expect_err("a newer schema is refused");
    let message = e.to_string();
    assert!(
        message.contains("the PostgreSQL store db.example/edgelb has schema version 999")
            && message.contains("up to 7")
            && message.contains("restore a backup"),
        "{message}"
    );
}

/// Many transactions at once, as several appliances would write: an address is linked to a
/// second Service only with a sharing key, whatever the interleaving.
#[tokio::test]
async fn concurrent_writers_never_get_one_address_twice() {
    let url = edgelb_pgtest::database("concurrent");
    postgres::migrate(&url, "the test database").await.expect("migrate");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&url)
        .await
        .expect("pool");
    sqlx::query("INSERT INTO clusters (name, created_at) VALUES ('c1', 1)")
        .execute(&pool)
        .await
        .expect("cluster");
    sqlx::query(
        "INSERT INTO pools (name, ranges, auto_assign, avoid_buggy_ips, priority, clusters, namespaces, scheduler, \
         hold_seconds, created_at, updated_at) VALUES ('p1', '[]', 1, 0, 0, '[]', '[]', 'wlc', 600, 1, 1)",
    )
    .execute(&pool)
    .await
    .expect("pool");
    const WRITERS: usize = 32;
    for n in 0..WRITERS {
        sqlx::query("INSERT INTO services (cluster, namespace, name, uid, created_at, updated_at) VALUES ('c1', 'ns', $1, $1, 1, 1)")
            .bind(format!("s{n}"))
            .execute(&pool)
            .await
            .expect("service");
    }
    for round in 0..10u8 {
        let ip = ip_blob(u128::from(round) | 0xffff_c000_0200);
        sqlx::query("INSERT INTO addresses (ip, pool, cluster, state, since) VALUES ($1, 'p1', 'c1', 'allocated', 1)")
            .bind(&ip)
            .execute(&pool)
            .await
            .expect("address");
        // Every writer links the address to its own Service in a transaction of its own that
        // stays open a moment after the link, as an allocation's does while it writes the rest:
        // without the row lock in the schema's rule, they all see no other link and all commit.
        let tasks: Vec<_> = (0..WRITERS)
            .map(|n| {
                let pool = pool.clone();
                let ip = ip.clone();
                tokio::spawn(async move {
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ('c1', 'ns', $1, $2)",
                    )
                    .bind(format!("s{n}"))
                    .bind(&ip)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("SELECT pg_sleep(0.005)").execute(&mut *tx).await?;
                    tx.commit().await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(()) => won += 1,
                Err(sqlx::Error::Database(db)) => {
                    assert!(
                        db.message().starts_with("edgelb: "),
                        "refused by the rule: {}",
                        db.message()
                    )
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one Service got the unshared address");
        let (links,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM service_addresses WHERE ip = $1")
            .bind(&ip)
            .fetch_one(&pool)
            .await
            .expect("links");
        assert_eq!(links, 1);
    }
    // With a sharing key every writer may link it.
    let shared = ip_blob(0xffff_c000_02ff);
    sqlx::query("INSERT INTO addresses (ip, pool, cluster, sharing_key, state, since) VALUES ($1, 'p1', 'c1', 'k', 'allocated', 1)")
        .bind(&shared)
        .execute(&pool)
        .await
        .expect("shared address");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let pool = pool.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ('c1', 'ns', $1, $2)")
                    .bind(format!("s{n}"))
                    .bind(&shared)
                    .execute(&pool)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("a keyed address is shared");
    }
}
