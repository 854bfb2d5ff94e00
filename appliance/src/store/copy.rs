//! `edgelb store copy`: a whole store moved between SQLite and PostgreSQL, either way.
//!
//! The copy reads the source in one read transaction, so it sees one moment even while an
//! appliance writes. It writes the target in one transaction and verifies it there: every table,
//! every column, every row equal to the source's. Only then does it commit. A copy that fails
//! leaves an empty target, and a target that holds anything is refused before anything is
//! written. The two dialects have the same tables and columns (`dialect_tests.rs`), and the copy
//! reads the columns from the databases themselves, so a column added by a later migration is
//! copied with no change here.

use std::path::{Path, PathBuf};

use sqlx::{AnyConnection, Connection, Row};

use super::{MIGRATOR, Result, StoreError, options, postgres};

/// Every table of the schema, parents before children (the order rows are inserted in). A
/// test checks that it names every table the migrations create.
pub(super) const TABLES: &[&str] = &[
    "clusters",
    "pools",
    "services",
    "addresses",
    "service_addresses",
    "nodes",
    "tokens",
    "users",
    "console_sessions",
    "audit",
    "address_events",
];

/// Rows in one multi-row INSERT (each has at most 15 columns: well under both databases' limit
/// of bound values per statement).
const BATCH: usize = 500;

/// Where a store is: a SQLite file, or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// The URL as given; it may hold a password, so it is never shown (see [`Location::describe`]).
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Location {
    /// `sqlite:PATH` (or `sqlite://PATH`), or `postgres://…` / `postgresql://…`.
    pub fn parse(text: &str) -> Result<Location> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreError::io(
                    "a SQLite location needs a file: sqlite:/var/lib/edgelb/edgelb.db",
                ));
            }
            if path.contains('?') {
                return Err(StoreError::io(format!(
                    "{text}: a SQLite location is a file name only, without `?` options"
                )));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            text.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| StoreError::io(format!("{} is not a PostgreSQL URL: {e}", redact(text))))?;
            return Ok(Location::Postgres(text.to_owned()));
        }
        Err(StoreError::io(format!(
            "{}: give sqlite:/path/to/edgelb.db or postgres://user@host/database",
            redact(text)
        )))
    }

    /// The location as shown to people and logs: a PostgreSQL password is replaced by `***`.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => format!("sqlite:{}", p.display()),
            Location::Postgres(url) => redact(url),
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Location::Sqlite(_) => Dialect::Sqlite,
            Location::Postgres(_) => Dialect::Postgres,
        }
    }
}

/// A PostgreSQL URL with its password (in the user part, or a `password=` option) hidden.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let (start, end) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
            out.replace_range(start..end, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// How many rows of each table a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, usize)>,
}

/// A value of one of the schema's three column types, or NULL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Blob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// Copies the whole store at `from` into `to`, which must be empty (a new SQLite file, or a
/// PostgreSQL database with none of edgelb's rows), and verifies the copy before committing.
pub async fn copy(from: &Location, to: &Location) -> Result<CopyReport> {
    if from == to {
        return Err(StoreError::io("the source and the target are the same store"));
    }
    sqlx::any::install_default_drivers();
    let (src_dialect, dst_dialect) = (from.dialect(), to.dialect());
    let mut src = open_source(from).await?;
    let mut dst = open_target(to).await?;

    // One moment of the source, however long the copy takes.
    match src_dialect {
        Dialect::Sqlite => sqlx::query("BEGIN").execute(&mut src).await?,
        Dialect::Postgres => {
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut src)
                .await?
        }
    };
    let mut tx = dst.begin().await?;
    for table in TABLES {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Err(StoreError::io(format!(
                "{} is not empty ({table} has {n} rows): a copy is written only into an empty store",
                to.describe()
            )));
        }
    }
    let mut report = CopyReport { tables: Vec::new() };
    for table in TABLES {
        let target_columns = columns(&mut tx, dst_dialect, table).await?;
        let columns = columns(&mut src, src_dialect, table).await?;
        if columns != target_columns {
            return Err(StoreError::io(format!(
                "table {table} has different columns in {} and {}: both must be at the same schema version",
                from.describe(),
                to.describe()
            )));
        }
        let mut rows = read_all(&mut src, table, &columns).await?;
        if *table == "address_events" {
            // The target's history triggers wrote entries for the addresses copied above:
            // the source's own history replaces them, with its ids and times.
            sqlx::query("DELETE FROM address_events").execute(&mut *tx).await?;
        }
        for chunk in rows.chunks(BATCH) {
            insert(&mut tx, table, &columns, chunk).await?;
        }
        let mut copied = read_all(&mut tx, table, &columns).await?;
        rows.sort();
        copied.sort();
        if rows != copied {
            return Err(StoreError::io(format!(
                "the copy of table {table} does not equal its source ({} rows read, {} in the copy): nothing was committed",
                rows.len(),
                copied.len()
            )));
        }
        report.tables.push(((*table).to_owned(), rows.len()));
    }
    if dst_dialect == Dialect::Postgres {
        // Ids were copied as they were: the next ones continue after them.
        for table in ["audit", "address_events"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    sqlx::query("COMMIT").execute(&mut src).await?;
    Ok(report)
}

async fn open_source(from: &Location) -> Result<AnyConnection> {
    let mut conn = match from {
        Location::Sqlite(path) => {
            if !path.is_file() {
                return Err(StoreError::io(format!(
                    "{} does not exist: nothing to copy",
                    from.describe()
                )));
            }
            AnyConnection::connect(&sqlite_url(path, "ro")).await?
        }
        Location::Postgres(url) => AnyConnection::connect(url).await?,
    };
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| StoreError::Io {
            what: format!("{} holds no edgelb store", from.describe()),
            source: Some(std::sync::Arc::new(e)),
        })?;
    if applied != Some(known) {
        return Err(StoreError::io(format!(
            "{} has schema version {}, and this edgelb copies version {known}: start this edgelb on it once \
             (it migrates the store), or use the edgelb of its version",
            from.describe(),
            applied.map_or("none".to_owned(), |v| v.to_string())
        )));
    }
    Ok(conn)
}

/// Prepares the target: a new SQLite file (mode 0600: it will hold password hashes) or a
/// PostgreSQL database, migrated to this binary's schema.
async fn open_target(to: &Location) -> Result<AnyConnection> {
    match to {
        Location::Sqlite(path) => {
            if path.exists() {
                return Err(StoreError::io(format!(
                    "{} exists already: a copy into SQLite makes a new file",
                    to.describe()
                )));
            }
            create_private(path)?;
            let mut native = sqlx::SqliteConnection::connect_with(&options(path)).await?;
            MIGRATOR.run(&mut native).await?;
            native.close().await?;
            Ok(AnyConnection::connect(&sqlite_url(path, "rw")).await?)
        }
        Location::Postgres(url) => {
            postgres::migrate(url, &to.describe()).await?;
            Ok(AnyConnection::connect(url).await?)
        }
    }
}

fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::Io {
            what: format!("cannot create {}", path.display()),
            source: Some(std::sync::Arc::new(e)),
        })
}

/// The `Any` driver's URL of a SQLite file, opened `ro` or `rw`.
pub(super) fn sqlite_url(path: &Path, mode: &str) -> String {
    format!("sqlite://{}?mode={mode}", path.display())
}

/// A table's columns in order, with their kinds, as the source database reports them.
async fn columns(conn: &mut AnyConnection, dialect: Dialect, table: &str) -> Result<Vec<(String, Kind)>> {
    let rows: Vec<(String, String)> = match dialect {
        Dialect::Sqlite => {
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(conn)
                .await?
        }
        Dialect::Postgres => {
            sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(conn)
            .await?
        }
    };
    rows.into_iter()
        .map(|(name, ty)| {
            let kind = match ty.to_ascii_lowercase().as_str() {
                "integer" | "bigint" => Kind::Int,
                "text" => Kind::Text,
                "blob" | "bytea" => Kind::Blob,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "column {table}.{name} has type {other}, which edgelb's schema never uses"
                    )));
                }
            };
            Ok((name, kind))
        })
        .collect()
}

async fn read_all(conn: &mut AnyConnection, table: &str, columns: &[(String, Kind)]) -> Result<Vec<Vec<Value>>> {
    let list = column_list(columns);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {list} FROM {table}")))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| {
                    Ok(match kind {
                        Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
                        Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
                        Kind::Blob => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Blob),
                    }
                    .unwrap_or(Value::Null))
                })
                .collect()
        })
        .collect()
}

/// The column names, quoted (the sessions' `user` is reserved in PostgreSQL).
fn column_list(columns: &[(String, Kind)]) -> String {
    columns
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert(conn: &mut AnyConnection, table: &str, columns: &[(String, Kind)], rows: &[Vec<Value>]) -> Result<()> {
    let width = columns.len();
    let values: Vec<String> = (0..rows.len())
        .map(|r| {
            let row: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        column_list(columns),
        values.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        for (value, (_, kind)) in row.iter().zip(columns) {
            q = match (value, kind) {
                (Value::Int(i), _) => q.bind(*i),
                (Value::Text(t), _) => q.bind(t.clone()),
                (Value::Blob(b), _) => q.bind(b.clone()),
                // A NULL typed as its column, which PostgreSQL wants.
                (Value::Null, Kind::Int) => q.bind(None::<i64>),
                (Value::Null, Kind::Text) => q.bind(None::<String>),
                (Value::Null, Kind::Blob) => q.bind(None::<Vec<u8>>),
            };
        }
    }
    q.execute(conn).await?;
    Ok(())
}
