//! What sqlx's `Any` driver costs against the native drivers, on the store's kinds of work: small
//! write transactions (`BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL, one insert,
//! one update) and reads of 500 rows. It decides how the store reaches both databases (see
//! docs/architecture.md, "Several appliances on one PostgreSQL").
//!
//! Run: `cargo run --release -p edgelb --example bench_sqlx_any` (prints a Markdown table). Each
//! pair runs native then `Any` in alternation, 5 rounds, on a real SQLite file and a real
//! PostgreSQL (edgelb-pgtest), so both see the same machine noise.

use std::time::{Duration, Instant};

use sqlx::{Connection, Row};

const WRITES: usize = 2_000;
const READS: usize = 300;
const ROUNDS: usize = 5;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE t (ip BYTEA PRIMARY KEY, state TEXT NOT NULL, owner TEXT, at BIGINT NOT NULL)",
    "CREATE TABLE n (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
    "INSERT INTO n (id, v) VALUES (1, 0)",
];

/// The same work on any connection: `$begin` opens a write transaction, `$lock` is the statement
/// that serialises writers (empty on SQLite: BEGIN IMMEDIATE does it), `$base` keeps keys unique
/// across rounds. Returns (time of the writes, time of the reads, rows read).
macro_rules! work {
    ($conn:expr, $begin:expr, $lock:expr, $base:expr) => {{
        let conn = $conn;
        let started = Instant::now();
        for i in 0..WRITES {
            let mut tx = conn.begin_with($begin).await.expect("begin");
            if !$lock.is_empty() {
                sqlx::query($lock).execute(&mut *tx).await.expect("lock");
            }
            let ip = (($base + i) as u128).to_be_bytes().to_vec();
            sqlx::query("INSERT INTO t (ip, state, owner, at) VALUES ($1, $2, $3, $4)")
                .bind(ip)
                .bind("allocated")
                .bind(format!("prod/default/web-{i}"))
                .bind(i as i64)
                .execute(&mut *tx)
                .await
                .expect("insert");
            sqlx::query("UPDATE n SET v = v + $1 WHERE id = 1")
                .bind(1_i64)
                .execute(&mut *tx)
                .await
                .expect("update");
            tx.commit().await.expect("commit");
        }
        let writes = started.elapsed();
        let started = Instant::now();
        let mut rows = 0usize;
        for i in 0..READS {
            let page = sqlx::query("SELECT ip, state, owner, at FROM t WHERE at >= $1 ORDER BY ip LIMIT 500")
                .bind((i % 4) as i64)
                .fetch_all(&mut *conn)
                .await
                .expect("read");
            for r in &page {
                let ip: Vec<u8> = r.get(0);
                let state: String = r.get(1);
                let owner: Option<String> = r.get(2);
                let at: i64 = r.get(3);
                rows += usize::from(ip.len() == 16 && !state.is_empty() && owner.is_some() && at >= 0);
            }
        }
        (writes, started.elapsed(), rows)
    }};
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temp dir");
    let pg_url = edgelb_pgtest::database("bench_any");

    let lite_path = dir.path().join("native.db");
    let any_path = dir.path().join("any.db");
    let lite_opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&lite_path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut lite = sqlx::SqliteConnection::connect_with(&lite_opts).await.expect("sqlite");
    // `Any` takes a URL only: the pragmas become statements after connecting.
    let mut any_lite = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rwc", any_path.display()))
        .await
        .expect("any sqlite");
    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"] {
        sqlx::query(pragma).execute(&mut any_lite).await.expect("pragma");
    }
    let mut pg = sqlx::PgConnection::connect(&pg_url).await.expect("postgres");
    sqlx::query("CREATE SCHEMA a").execute(&mut pg).await.expect("schema");
    // The two PostgreSQL connections get a schema each, as the SQLite ones get a file each.
    let mut any_pg = sqlx::AnyConnection::connect(&pg_url).await.expect("any postgres");
    sqlx::query("SET search_path = a")
        .execute(&mut any_pg)
        .await
        .expect("search path");
    for s in SCHEMA {
        sqlx::query(s).execute(&mut lite).await.expect("schema");
        sqlx::query(s).execute(&mut any_lite).await.expect("schema");
        sqlx::query(s).execute(&mut pg).await.expect("schema");
        sqlx::query(s).execute(&mut any_pg).await.expect("schema");
    }

    let lock = "SELECT pg_advisory_xact_lock(7)";
    let mut totals = [[Duration::ZERO; 2]; 4];
    for round in 0..ROUNDS {
        let base = round * WRITES;
        let runs = [
            work!(&mut lite, "BEGIN IMMEDIATE", "", base),
            work!(&mut any_lite, "BEGIN IMMEDIATE", "", base),
            work!(&mut pg, "BEGIN", lock, base),
            work!(&mut any_pg, "BEGIN", lock, base),
        ];
        for (total, (w, r, rows)) in totals.iter_mut().zip(runs) {
            assert_eq!(rows, READS * 500, "every read returns 500 whole rows");
            total[0] += w;
            total[1] += r;
        }
    }
    let names = ["SQLite native", "SQLite Any", "PostgreSQL native", "PostgreSQL Any"];
    println!("| driver | µs per write transaction | µs per 500-row read | write vs native | read vs native |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, [w, r])) in names.iter().zip(totals).enumerate() {
        let [nw, nr] = totals[i - i % 2];
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} |",
            per_op(w, WRITES * ROUNDS),
            per_op(r, READS * ROUNDS),
            w.as_secs_f64() / nw.as_secs_f64(),
            r.as_secs_f64() / nr.as_secs_f64()
        );
    }
}
