//! The appliance's state in SQLite: pools, addresses, clusters, services, nodes, tokens, users
//! and the audit log. The only module that speaks SQL.
//!
//! Writes go through one connection behind a mutex, each in a `BEGIN IMMEDIATE` transaction
//! that also writes its audit entry; the allocation state ([`Ipam`]) is changed only after the
//! commit succeeded, so it always equals the database. Every write runs in its own task so that
//! a client hanging up cannot cancel it between the commit and that update. Reads use a pool of
//! connections and never wait for writes (WAL). Every commit bumps a change counter that the
//! reconciler watches.

mod auth;
mod listing;
mod pools;
mod services;
pub mod sessions;
mod snapshot;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgelb_api::FieldError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::ipam::{Ipam, IpamError};

pub use auth::{Bootstrap, Principal};
pub use services::{AllocationFilter, AuditFilter};
pub use snapshot::{DataplaneSnapshot, SnapshotPool, SnapshotService};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The database file inside the data directory.
pub const DB_FILE: &str = "edgelb.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request has fields to fix.
    #[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("applying database migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("a store task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Io(String),
}

impl StoreError {
    pub fn invalid(field: &str, message: impl Into<String>) -> StoreError {
        StoreError::Invalid(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// Turns a unique-constraint violation into a conflict with the given message.
    fn on_unique(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
            _ => StoreError::Db(e),
        }
    }
}

impl From<IpamError> for StoreError {
    fn from(e: IpamError) -> StoreError {
        match e {
            IpamError::Invalid { field, message } => StoreError::Invalid(vec![FieldError { field, message }]),
            IpamError::Unprocessable(m) => StoreError::Unprocessable(m),
            IpamError::Conflict(m) => StoreError::Conflict(m),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

struct Writer {
    conn: SqliteConnection,
    ipam: Ipam,
    /// Cluster names, so the hot path checks existence without a query.
    clusters: std::collections::HashSet<String>,
    /// A digest of each Service's stored spec, so a repeated PUT is recognised without a query.
    specs: std::collections::HashMap<crate::ipam::ServiceKey, [u8; 16]>,
}

/// A digest of a spec's JSON (128 bits of SHA-256: equal digests mean equal specs).
fn spec_digest(json: &str) -> [u8; 16] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(json.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

struct Inner {
    read: SqlitePool,
    write: Mutex<Writer>,
    changes: watch::Sender<u64>,
    path: PathBuf,
    /// Recently verified tokens (see `auth.rs`); emptied whenever tokens can have changed.
    token_cache: std::sync::Mutex<auth::TokenCache>,
    /// Bumped before the cache is emptied, so a lookup that read the database before a
    /// revocation cannot put its stale answer back afterwards.
    token_generation: std::sync::atomic::AtomicU64,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL loses nothing when the process dies (kill -9): a commit is in the
        // OS's page cache before the call returns. Only a power cut can lose the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, applies migrations and loads the
    /// allocation state.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join(DB_FILE);
        // The writer never checkpoints inside a commit (that stalled allocations for tens of
        // milliseconds); a background connection does, see `checkpoint_wal`. The large limit is
        // only a safety net should that task ever stop.
        let mut conn = SqliteConnection::connect_with(&options(&path).pragma("wal_autocheckpoint", "20000")).await?;
        MIGRATOR.run(&mut conn).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options(&path).read_only(true))
            .await?;
        let ipam = pools::load_ipam(&mut conn).await?;
        let clusters = sqlx::query_as::<_, (String,)>("SELECT name FROM clusters")
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .map(|(n,)| n)
            .collect();
        let specs = sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT cluster, namespace, name, spec FROM services WHERE spec IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await?
        .into_iter()
        .map(|(c, ns, n, spec)| {
            (
                crate::ipam::ServiceKey {
                    cluster: c,
                    namespace: ns,
                    name: n,
                },
                spec_digest(&spec),
            )
        })
        .collect();
        let (changes, _) = watch::channel(0);
        let checkpointer = SqliteConnection::connect_with(&options(&path)).await?;
        let store = Store {
            inner: Arc::new(Inner {
                read,
                write: Mutex::new(Writer {
                    conn,
                    ipam,
                    clusters,
                    specs,
                }),
                changes,
                path,
                token_cache: Default::default(),
                token_generation: Default::default(),
            }),
        };
        tokio::spawn(checkpoint_wal(Arc::downgrade(&store.inner), checkpointer));
        Ok(store)
    }

    /// Opens the database only to check it can be (for `check-config`).
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join(DB_FILE)
    }

    /// A receiver that sees the change counter move on every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn read(&self) -> &SqlitePool {
        &self.inner.read
    }

    /// Runs `f` with the writer in a task of its own (see the module doc).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'w> FnOnce(&'w mut Writer, i64) -> futures::future::BoxFuture<'w, Result<T>> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut w = this.inner.write.lock().await;
            let out = f(&mut w, now()).await;
            drop(w);
            if out.is_ok() {
                this.changed();
            }
            out
        })
        .await?
    }

    /// Writes a consistent copy of the live database to `dest` (which must not exist).
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Err(StoreError::Io(format!(
                "{} exists already: choose a new file name",
                dest.display()
            )));
        }
        let dest = dest
            .to_str()
            .ok_or_else(|| StoreError::Io("the backup path must be UTF-8".into()))?;
        sqlx::query("VACUUM INTO ?").bind(dest).execute(self.read()).await?;
        Ok(())
    }

    /// `PRAGMA integrity_check` result (`ok` when healthy).
    pub async fn integrity_check(&self) -> Result<String> {
        let row: (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(self.read()).await?;
        Ok(row.0)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.read()).await?;
        Ok(())
    }

    /// Deletes holds that have ended; returns how many.
    pub async fn expire_holds(&self) -> Result<usize> {
        self.write(|w, now| {
            Box::pin(async move {
                let expired = w.ipam.expired_holds(now);
                if expired.is_empty() {
                    return Ok(0);
                }
                let mut tx = w.conn.begin_with("BEGIN IMMEDIATE").await?;
                for ip in &expired {
                    sqlx::query("DELETE FROM addresses WHERE ip = ? AND state = 'held'")
                        .bind(ip_blob(*ip))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                w.ipam.forget(&expired);
                Ok(expired.len())
            })
        })
        .await
    }
}

/// Copies the WAL back into the database every second, without blocking the writer (PASSIVE),
/// and ends when the store is dropped.
async fn checkpoint_wal(store: std::sync::Weak<Inner>, mut conn: SqliteConnection) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.strong_count() == 0 {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    let _ = conn.close().await;
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn ts(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ip_blob(n: u128) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn blob_ip(b: &[u8]) -> Result<u128> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("address of {} bytes", b.len())))?;
    Ok(u128::from_be_bytes(arr))
}

fn json_vec(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("JSON list: {e}")))
}

/// Appends an audit entry inside the caller's transaction.
async fn audit(
    conn: &mut SqliteConnection,
    now: i64,
    actor: &str,
    action: &str,
    object: &str,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Result<()> {
    sqlx::query("INSERT INTO audit (time, actor, action, object, before, after) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(now)
        .bind(actor)
        .bind(action)
        .bind(object)
        .bind(before.map(|v| v.to_string()))
        .bind(after.map(|v| v.to_string()))
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// How many Services the appliance holds.
    pub async fn count_services(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM services")
            .fetch_one(self.read())
            .await?;
        Ok(n.max(0) as u64)
    }
}
