//! `edgelb store copy` timed both ways, on a store of N Services (default 10,000) with two ports
//! each, against a real PostgreSQL (edgelb-pgtest starts one, as the tests do) and real SQLite
//! files.
//!
//! Run: `cargo run --release -p edgelb --example bench_store_copy [N]` (prints a Markdown table).
//! The copy reads, writes and then reads back every row to verify it, in one transaction.

use std::time::Instant;

use edgelb::store::copy::{Location, copy};
use edgelb::store::{DB_FILE, Store};
use edgelb_api::{ClusterSpec, PoolSpec, Protocol, ServicePort, ServiceSpec};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("N: a number of Services"));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).await.expect("open");
    let pool: PoolSpec =
        serde_json::from_value(serde_json::json!({"name": "big", "ranges": ["10.0.0.0/12"]})).expect("pool");
    store.create_pool("bench", pool).await.expect("pool");
    store
        .create_cluster(
            "bench",
            ClusterSpec {
                name: "prod".to_owned(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let spec = ServiceSpec::new(
                    format!("uid-{i}"),
                    vec![
                        ServicePort::new(Protocol::Tcp, 80, 30_080),
                        ServicePort::new(Protocol::Tcp, 443, 30_443),
                    ],
                );
                store
                    .put_service("bench", "prod", "default", &format!("svc-{i}"), spec)
                    .await
                    .expect("put");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let source = Location::Sqlite(dir.path().join(DB_FILE));
    let pg = Location::Postgres(edgelb_pgtest::database("bench_copy"));
    let back = tempfile::tempdir().expect("temp dir");
    let back = Location::Sqlite(back.path().join(DB_FILE));

    println!("| copy ({n} Services) | rows | seconds |\n|---|---:|---:|");
    for (name, from, to) in [
        ("SQLite -> PostgreSQL", &source, &pg),
        ("PostgreSQL -> SQLite", &pg, &back),
    ] {
        let t = Instant::now();
        let report = copy(from, to).await.expect("copy");
        let rows: usize = report.tables.iter().map(|(_, r)| r).sum();
        println!("| {name} | {rows} | {:.2} |", t.elapsed().as_secs_f64());
    }
}
