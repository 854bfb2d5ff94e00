//! The PostgreSQL dialect of the store's schema: several appliances share one database (see
//! `docs/architecture.md`, "Several appliances on one PostgreSQL").
//!
//! The migrations in `migrations/postgres/` have the same versions as SQLite's in
//! `migrations/sqlite/`, and give the same behaviour (`dialect_tests.rs` runs one scenario on
//! both): the same tables and columns, the same constraints and the same refusals with the same
//! messages, the same address history written by triggers.

use sqlx::{Connection, PgConnection};

use super::{Result, schema_known};

/// The PostgreSQL migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Connects to `url`, refuses a schema newer than this binary knows, and applies the
/// migrations it lacks. Appliances starting at once migrate once: sqlx's migrator holds a
/// PostgreSQL advisory lock on the database while it migrates, and each migration is one
/// transaction, so a migration is applied whole or not at all.
pub async fn migrate(url: &str, what: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let (table,): (Option<String>,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut conn)
        .await?;
    if table.is_some() {
        let (applied,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut conn)
            .await?;
        schema_known(&MIGRATOR, applied, what)?;
    }
    // `run_direct`, not `run`: `run`'s future is not `Send` for a connection (sqlx's Acquire).
    MIGRATOR.run_direct(None, &mut conn, false).await?;
    conn.close().await?;
    Ok(())
}
