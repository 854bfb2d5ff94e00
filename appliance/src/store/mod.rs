//! The appliance's state in SQLite: pools, addresses, clusters, services, nodes, tokens, users
//! and the audit log. The only module that speaks SQL.
//!
//! Writes go through one connection behind a mutex, each in a `BEGIN IMMEDIATE` transaction
//! that also writes its audit entry; the allocation state ([`Ipam`]) equals the database after
//! every commit or failed transaction (a failed group of Service PUTs puts back what it had
//! applied, see `services.rs`). Every write runs in its own task so that a client hanging up
//! cannot cancel it between the commit and that update. Concurrent Service PUTs, the hot path,
//! are committed in groups: one transaction for everything queued while the writer was busy.
//! Reads use a pool of connections and never wait for writes (WAL). Every commit bumps a change
//! counter that the reconciler watches.

mod auth;
#[cfg(test)]
mod batch_tests;
mod clusters;
pub mod copy;
#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod dialect_tests;
mod listing;
mod nodes;
mod pools;
pub mod postgres;
mod queries;
mod services;
pub mod sessions;
mod snapshot;
mod sync;
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

use crate::forwarding::Capabilities;
use crate::ipam::{Ipam, IpamError};

pub use auth::{Bootstrap, Principal, new_password};
pub use queries::{AddressHistoryFilter, AllocationFilter, AuditFilter};
pub use snapshot::{DataplaneSnapshot, SnapshotPool, SnapshotService};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

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
    Db(sqlx::Error),
    #[error("applying database migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("a store task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A file, or the store's own machinery, failed: `what` says what was being done and what
    /// to do; `source`, when there is one, why.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// An [`StoreError::Io`] without a source.
    fn io(what: impl Into<String>) -> StoreError {
        StoreError::Io {
            what: what.into(),
            source: None,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> StoreError {
        StoreError::Invalid(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// Turns a unique-constraint violation, or one of the schema's own address rules (triggers
    /// whose messages start `edgelb: `, migration 0004), into a conflict with the given message.
    fn on_unique(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
            sqlx::Error::Database(db) if db.message().starts_with("edgelb: ") => {
                tracing::warn!(error = %db, "the database refused a write the allocator allowed");
                StoreError::Conflict(message())
            }
            _ => StoreError::from(e),
        }
    }
}

/// Database errors since the process started (every store's: a process has one), for
/// `/metrics` and `/api/v1/info`. Refusals the schema exists for (a unique address taken) are
/// answers, not errors, and are not counted.
static DB_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        DB_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StoreError::Db(e)
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
    /// Each Service's stored spec as a digest, with the time it was written, so a repeated PUT is
    /// recognised and answered without a query. Keyed by the allocation state's copy of the key
    /// ([`Ipam::shared_key`]).
    specs: std::collections::HashMap<Arc<crate::ipam::ServiceKey>, StoredSpec>,
    /// What the write in progress changed, for the journal (see [`Change`]).
    touched: Touched,
}

/// What a commit changed, as far as the data plane is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One Service's spec or addresses (with the allocation state's copy of its key: the
    /// journal holds thousands).
    Service(Arc<crate::ipam::ServiceKey>),
    /// One cluster's node list.
    Nodes(String),
    /// Anything (pools, a cluster deleted, or a write that did not say).
    All,
}

/// What a write declared it changed. A write that declares nothing counts as [`Change::All`]:
/// forgetting to declare costs a full reconcile pass, never a missed change.
#[derive(Debug, Default)]
enum Touched {
    #[default]
    Unknown,
    Known(Vec<Change>),
}

/// Opens a write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock at once, so a
/// transaction never starts as a reader and fails with `SQLITE_BUSY` when it first writes; every
/// write of the store starts here.
async fn begin(conn: &mut SqliteConnection) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

impl Writer {
    /// Declares that this write changed `change` (call once per thing changed).
    fn touch(&mut self, change: Change) {
        match &mut self.touched {
            Touched::Known(v) => v.push(change),
            Touched::Unknown => self.touched = Touched::Known(vec![change]),
        }
    }

    /// Declares that this write changed nothing the data plane reads (tokens, users, an
    /// unchanged spec).
    fn touch_nothing(&mut self) {
        if let Touched::Unknown = self.touched {
            self.touched = Touched::Known(Vec::new());
        }
    }
}

/// The data plane's changes since some generation, merged: what a reconcile pass must redo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything must be rebuilt.
    pub all: bool,
    pub services: std::collections::BTreeSet<crate::ipam::ServiceKey>,
    /// Clusters whose node list changed.
    pub nodes: std::collections::BTreeSet<String>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty() && self.nodes.is_empty()
    }

    fn add(&mut self, change: &Change) {
        match change {
            Change::Service(k) => {
                self.services.insert((**k).clone());
            }
            Change::Nodes(c) => {
                self.nodes.insert(c.clone());
            }
            Change::All => self.all = true,
        }
    }
}

/// The last commits' changes, by generation (the value the change watch carries).
#[derive(Debug, Default)]
struct Journal {
    generation: u64,
    /// (generation, what it changed), oldest first, at most [`JOURNAL_LEN`].
    entries: std::collections::VecDeque<(u64, Vec<Change>)>,
}

/// Commits remembered; a reader further behind rebuilds everything.
const JOURNAL_LEN: usize = 4096;

/// What the writer remembers of a Service's stored spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredSpec {
    digest: [u8; 16],
    /// The row's `updated_at` (unix seconds).
    updated_at: i64,
}

/// A digest of a spec's JSON (128 bits of SHA-256: equal digests mean equal specs).
fn spec_digest(json: &str) -> [u8; 16] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(json.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// How the store answers: for `/readyz`, `/api/v1/info`, the dashboard and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreHealth {
    /// `sqlite` (or, with the shared store, `postgres`).
    pub kind: &'static str,
    /// Where it is: the file, or the database URL without its password.
    pub location: String,
    /// Whether the last check got an answer.
    pub answering: bool,
    /// How long the last check that got an answer took.
    pub latency: Option<Duration>,
    /// Why the last check failed, when it did.
    pub last_error: Option<String>,
    /// Database errors since the process started.
    pub errors: u64,
}

impl StoreHealth {
    /// `answers in 0.21 ms`, or `does not answer: why`, for people.
    pub fn state(&self) -> String {
        match (&self.last_error, self.latency) {
            (None, Some(d)) => format!("answers in {:.2} ms", d.as_secs_f64() * 1000.0),
            (None, None) => "answers".to_owned(),
            (Some(e), _) => format!("does not answer: {e}"),
        }
    }
}

/// How often the store checks by itself that its database answers (besides `/readyz` and
/// `/api/v1/info`, which check when asked).
const HEALTH_EVERY: Duration = Duration::from_secs(5);

struct Inner {
    read: SqlitePool,
    /// The last check of the database (see [`Store::ping`]): how long it took when it got an
    /// answer, or why it did not.
    health: std::sync::Mutex<(Option<Duration>, Option<String>)>,
    write: Mutex<Writer>,
    changes: watch::Sender<u64>,
    /// What each recent commit changed; its generation is the one `changes` carries.
    journal: std::sync::Mutex<Journal>,
    /// Service PUTs waiting to be committed together (see `services.rs`).
    puts: std::sync::Mutex<services::PutQueue>,
    path: PathBuf,
    /// Recently verified tokens (see `auth.rs`); emptied whenever tokens can have changed.
    token_cache: std::sync::Mutex<auth::TokenCache>,
    /// Bumped before the cache is emptied, so a lookup that read the database before a
    /// revocation cannot put its stale answer back afterwards.
    token_generation: std::sync::atomic::AtomicU64,
    /// What the forwarding backend offers (see [`Store::set_capabilities`]): the schedulers a
    /// pool or Service may name.
    offered: std::sync::RwLock<Arc<Capabilities>>,
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

/// Page cache of each read connection, in KiB (a negative `cache_size` counts KiB).
const READ_CACHE_KIB: &str = "-256";

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
    /// Says what the forwarding backend offers: pools and Services naming a scheduler it lacks
    /// are refused from now on, with the ones it has. Until this is called (and on an appliance
    /// that forwards nothing, whose store other appliances' IPVS may serve) it is what Linux IPVS
    /// offers. What is already stored is never refused on reading.
    pub fn set_capabilities(&self, capabilities: Capabilities) {
        *self.inner.offered.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(capabilities);
    }

    /// What the forwarding backend offers (see [`Store::set_capabilities`]).
    pub fn capabilities(&self) -> Arc<Capabilities> {
        self.inner.offered.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Opens (creating if needed) the database in `data_dir`, applies migrations and loads the
    /// allocation state.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join(DB_FILE);
        // The writer never checkpoints inside a commit (that stalled allocations for tens of
        // milliseconds); a background connection does, see `checkpoint_wal`. The large limit is
        // only a safety net should that task ever stop.
        // Room for every size of the group commit's multi-row statements (see `services.rs`)
        // besides the other writes' statements, so none is prepared again and again.
        let mut conn = SqliteConnection::connect_with(
            &options(&path)
                .pragma("wal_autocheckpoint", "20000")
                .statement_cache_capacity(512),
        )
        .await?;
        refuse_a_newer_schema(&mut conn, &path).await?;
        MIGRATOR.run(&mut conn).await?;
        // Reads serve snapshots and listings that each read a row once: a small page cache
        // instead of SQLite's default 2 MB per connection did not slow the reconciler's full
        // pass at 10,000 Services (`examples/bench_memory.rs`) and saves up to 2 MB each.
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options(&path).read_only(true).pragma("cache_size", READ_CACHE_KIB))
            .await?;
        let ipam = pools::load_ipam(&mut conn).await?;
        let clusters = sqlx::query_as::<_, (String,)>("SELECT name FROM clusters")
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .map(|(n,)| n)
            .collect();
        let specs = sqlx::query_as::<_, (String, String, String, String, i64)>(
            "SELECT cluster, namespace, name, spec, updated_at FROM services WHERE spec IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await?
        .into_iter()
        .map(|(c, ns, n, spec, updated_at)| {
            let key = crate::ipam::ServiceKey {
                cluster: c,
                namespace: ns,
                name: n,
            };
            let stored = StoredSpec {
                digest: spec_digest(&spec),
                updated_at,
            };
            (ipam.shared_key(&key), stored)
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
                    touched: Touched::Unknown,
                }),
                changes,
                journal: Default::default(),
                puts: Default::default(),
                path,
                token_cache: Default::default(),
                token_generation: Default::default(),
                health: std::sync::Mutex::new((None, None)),
                offered: std::sync::RwLock::new(Arc::new(Capabilities::ipvs(Default::default()))),
            }),
        };
        tokio::spawn(checkpoint_wal(Arc::downgrade(&store.inner), checkpointer));
        tokio::spawn(check_health(Arc::downgrade(&store.inner)));
        store.ping().await?;
        Ok(store)
    }

    /// Opens the database only to check it can be (for `check-config`).
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join(DB_FILE)
    }

    /// The change counter now (see [`Store::subscribe`]).
    pub fn generation(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// A receiver that sees the change counter move on every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Records a commit's changes in the journal and moves the change counter. A commit that
    /// changed nothing the data plane reads is not recorded and wakes no one.
    fn changed(&self, touched: Touched) {
        let changes = match touched {
            Touched::Known(v) if v.is_empty() => return,
            Touched::Known(v) => v,
            Touched::Unknown => vec![Change::All],
        };
        let mut j = self.inner.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.generation += 1;
        let generation = j.generation;
        j.entries.push_back((generation, changes));
        if j.entries.len() > JOURNAL_LEN {
            j.entries.pop_front();
        }
        // Under the journal's lock, so the counter never runs ahead of or behind the journal.
        self.inner.changes.send_replace(generation);
    }

    /// What changed after generation `since` (a value the change watch carried), and the
    /// generation it is as of now. Everything is dirty when `since` is too old for the journal.
    pub fn changes_since(&self, since: u64) -> (u64, Dirty) {
        let j = self.inner.journal.lock().unwrap_or_else(|e| e.into_inner());
        let mut dirty = Dirty::default();
        let oldest = j.entries.front().map_or(j.generation + 1, |(g, _)| *g);
        if since + 1 < oldest || since > j.generation {
            dirty.all = true;
            return (j.generation, dirty);
        }
        for (_, changes) in j.entries.iter().filter(|(g, _)| *g > since) {
            changes.iter().for_each(|c| dirty.add(c));
        }
        (j.generation, dirty)
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
        tokio::spawn(async move { this.write_here(f).await }).await?
    }

    /// Runs `f` with the writer in the calling task and records what it changed. Only for a
    /// caller that is a task of its own already (see [`Store::write`]).
    async fn write_here<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'w> FnOnce(&'w mut Writer, i64) -> futures::future::BoxFuture<'w, Result<T>>,
    {
        let mut w = self.inner.write.lock().await;
        // A write that panicked earlier may have left its declaration behind.
        w.touched = Touched::Unknown;
        let out = f(&mut w, now()).await;
        let touched = std::mem::take(&mut w.touched);
        // Still under the writer's lock: journal entries are in commit order.
        if out.is_ok() {
            self.changed(touched);
        }
        drop(w);
        out
    }

    /// Writes a consistent copy of the live database to `dest` (which must not exist). The copy
    /// holds password hashes and token digests, so only its owner may read it (mode 0600): the
    /// file is created empty with that mode before SQLite fills it.
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        let path = dest
            .to_str()
            .ok_or_else(|| StoreError::io("the backup path must be UTF-8"))?;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    StoreError::io(format!("{} exists already: choose a new file name", dest.display()))
                }
                _ => StoreError::Io {
                    what: format!("cannot create {}", dest.display()),
                    source: Some(Arc::new(e)),
                },
            })?;
        // SQLite writes into an existing file only when it is empty, as this one is.
        if let Err(e) = sqlx::query("VACUUM INTO ?").bind(path).execute(self.read()).await {
            let _ = std::fs::remove_file(dest);
            return Err(e.into());
        }
        Ok(())
    }

    /// `PRAGMA integrity_check` result (`ok` when healthy).
    pub async fn integrity_check(&self) -> Result<String> {
        let row: (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(self.read()).await?;
        Ok(row.0)
    }

    /// Whether the database answers (one query on a read connection, timed); the answer is
    /// kept for [`Store::health`].
    pub async fn ping(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(HEALTH_EVERY, sqlx::query("SELECT 1").execute(self.read())).await;
        let mut h = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
        match out {
            Ok(Ok(_)) => {
                *h = (Some(started.elapsed()), None);
                Ok(())
            }
            Ok(Err(e)) => {
                *h = (None, Some(e.to_string()));
                Err(e.into())
            }
            Err(_) => {
                let what = format!("no answer in {} s", HEALTH_EVERY.as_secs());
                DB_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *h = (None, Some(what.clone()));
                Err(StoreError::io(what))
            }
        }
    }

    /// The last check of the database, without checking again.
    pub fn health(&self) -> StoreHealth {
        let (latency, last_error) = self.inner.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        StoreHealth {
            kind: "sqlite",
            location: self.inner.path.display().to_string(),
            answering: last_error.is_none(),
            latency,
            last_error,
            errors: DB_ERRORS.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Closes the read connections, so that the database stops answering reads (for tests of
    /// what a store that does not answer looks like).
    #[doc(hidden)]
    pub async fn close_reads_for_tests(&self) {
        self.read().close().await;
    }

    /// Deletes holds that have ended; returns how many.
    pub async fn expire_holds(&self) -> Result<usize> {
        self.write(|w, now| {
            Box::pin(async move {
                // A held address forwards nothing: the data plane does not care.
                w.touch_nothing();
                let expired = w.ipam.expired_holds(now);
                if expired.is_empty() {
                    return Ok(0);
                }
                let mut tx = begin(&mut w.conn).await?;
                for ip in &expired {
                    sqlx::query("DELETE FROM addresses WHERE ip = $1 AND state = 'held'")
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

/// A database that a newer edgelb migrated further than this binary knows is refused, with what
/// to do, before anything is written to it (sqlx alone would say only that a migration is
/// missing).
async fn refuse_a_newer_schema(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    let table: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(&mut *conn)
            .await?;
    if table.is_none() {
        return Ok(());
    }
    let (applied,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await?;
    schema_known(&MIGRATOR, applied, &format!("the database {}", path.display()))
}

/// Refuses a schema version `applied` newer than `migrator` knows, saying what to do; `what`
/// names the database.
fn schema_known(migrator: &sqlx::migrate::Migrator, applied: Option<i64>, what: &str) -> Result<()> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(v) if v > known => Err(StoreError::io(format!(
            "{what} has schema version {v}, newer than this edgelb {} knows (up to {known}): \
             run the edgelb that upgraded it (or a later one), or restore a backup taken before that upgrade",
            env!("CARGO_PKG_VERSION")
        ))),
        _ => Ok(()),
    }
}

/// Checks every [`HEALTH_EVERY`] that the database answers, so `/metrics` and the dashboard
/// show a fresh answer; ends when the store is dropped.
async fn check_health(store: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else { break };
        let _ = Store { inner }.ping().await;
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

/// A flag as the schema stores it: 0 or 1, an integer in both dialects (PostgreSQL would refuse
/// a boolean bound to its BIGINT column).
fn flag(b: bool) -> i64 {
    i64::from(b)
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
    sqlx::query("INSERT INTO audit (time, actor, action, object, before, after) VALUES ($1, $2, $3, $4, $5, $6)")
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
