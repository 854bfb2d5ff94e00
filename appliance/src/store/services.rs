//! Clusters, their Services (with allocation and release), nodes, the start-up sync, and the
//! allocation and audit listings. Concurrent Service PUTs are committed in groups, one
//! transaction per group (see [`PutQueue`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use edgelb_api::{
    Allocation, AllocationOwner, AllocationState, AssignedIp, AuditEntry, Cluster, ClusterSpec, FieldError, IpFamily,
    Node, NodeList, Page, Protocol, Service, ServiceRef, ServiceSpec, SyncConflict, SyncRequest, SyncResponse,
};
use sqlx::{Row, SqliteConnection};
use tokio::sync::oneshot;

use super::{Change, Result, Store, StoreError, audit, begin, blob_ip, ip_blob, ts};
use crate::ipam::{self, Assign, Decision, How, Outcome, PortKey, Release, Request, ServiceKey, from_u128, to_u128};

/// Kubernetes object names: DNS labels (RFC 1123), at most 63 characters.
fn check_k8s_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid {what} name (a DNS label of at most 63 characters)"
        ))
    }
}

fn parse_cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not a CIDR: write e.g. 198.51.100.0/24"))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{s}': '{addr}' is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let digits = !len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit());
    match len.parse::<u8>() {
        Ok(l) if digits && l <= max => Ok(()),
        _ => Err(format!("'{s}': prefix length must be from 0 to {max}")),
    }
}

/// Checks a Service spec, collecting every problem.
pub fn validate_service(namespace: &str, name: &str, spec: &ServiceSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError { field, message });
    if let Err(m) = check_k8s_name("namespace", namespace) {
        err("namespace".into(), m);
    }
    if let Err(m) = check_k8s_name("Service", name) {
        err("name".into(), m);
    }
    if spec.uid.is_empty() || spec.uid.len() > 128 {
        err(
            "uid".into(),
            "uid must be the Service's metadata.uid (1 to 128 characters)".into(),
        );
    }
    if spec.ports.is_empty() {
        err("ports".into(), "a LoadBalancer Service needs at least one port".into());
    }
    let mut seen = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 {
            err(format!("ports[{i}].port"), "port must be from 1 to 65535".into());
        }
        if p.node_port == 0 {
            err(
                format!("ports[{i}].node_port"),
                "node_port is 0: edgelb forwards to NodePorts, so the Service needs allocateLoadBalancerNodePorts: true"
                    .into(),
            );
        }
        if !seen.insert((p.protocol, p.port)) {
            err(
                format!("ports[{i}]"),
                format!("port {}/{} appears twice", p.port, p.protocol),
            );
        }
    }
    if spec.health_check_node_port == Some(0) {
        err(
            "health_check_node_port".into(),
            "health_check_node_port must be from 1 to 65535 or null".into(),
        );
    }
    if let Some(t) = spec.session_affinity_timeout_seconds
        && !(1..=86_400).contains(&t)
    {
        err(
            "session_affinity_timeout_seconds".into(),
            "must be from 1 to 86400 (Kubernetes' limit)".into(),
        );
    }
    for (i, r) in spec.source_ranges.iter().enumerate() {
        if let Err(m) = parse_cidr(r) {
            err(format!("source_ranges[{i}]"), m);
        }
    }
    if let Some(s) = &spec.scheduler
        && let Err(m) = ipam::check_scheduler(s)
    {
        err("scheduler".into(), m);
    }
    if let Some(k) = &spec.sharing_key
        && (k.is_empty() || k.len() > 253)
    {
        err(
            "sharing_key".into(),
            "sharing_key must be 1 to 253 characters or null".into(),
        );
    }
    if let Some(nodes) = &spec.local_nodes
        && nodes.iter().any(String::is_empty)
    {
        err("local_nodes".into(), "node names must not be empty".into());
    }
    if let Some(h) = &spec.health {
        for (field, message) in h.problems() {
            err(format!("health.{field}"), message);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// The (protocol, port) pairs of a stored spec (none for a Service only reserved).
pub(super) fn ports_of(spec: Option<&str>) -> Result<Vec<PortKey>> {
    let Some(text) = spec else { return Ok(Vec::new()) };
    let spec: ServiceSpec =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("service spec: {e}")))?;
    Ok(spec.ports.iter().map(|p| (p.protocol, p.port)).collect())
}

fn port_keys(spec: &ServiceSpec) -> Vec<(Protocol, u16)> {
    spec.ports.iter().map(|p| (p.protocol, p.port)).collect()
}

async fn require_cluster(conn: &mut SqliteConnection, cluster: &str) -> Result<()> {
    let found: Option<(String,)> = sqlx::query_as("SELECT name FROM clusters WHERE name = ?")
        .bind(cluster)
        .fetch_optional(conn)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(format!(
            "cluster '{cluster}' does not exist: create it first (POST /api/v1/clusters)"
        ))),
    }
}

/// Writes a decision's rows. The caller commits, then applies it to the allocation state.
async fn write_decision(
    conn: &mut SqliteConnection,
    key: &ServiceKey,
    uid: &str,
    sharing_key: Option<&str>,
    d: &Decision,
    now: i64,
) -> Result<()> {
    write_releases(conn, key, uid, &d.release).await?;
    for a in &d.assign {
        let ip = ip_blob(a.ip);
        match a.how {
            How::New => {
                sqlx::query(
                    "INSERT INTO addresses (ip, pool, cluster, sharing_key, state, since) VALUES (?, ?, ?, ?, 'allocated', ?)",
                )
                .bind(&ip)
                .bind(&a.pool)
                .bind(&key.cluster)
                .bind(sharing_key)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(|e| StoreError::on_unique(e, || format!("{} was just taken: try again", from_u128(a.ip))))?;
            }
            How::Reclaim | How::Recycle => {
                sqlx::query(
                    "UPDATE addresses SET pool = ?, cluster = ?, sharing_key = ?, state = 'allocated', held_namespace = NULL, \
                     held_name = NULL, held_uid = NULL, held_until = NULL, since = ? WHERE ip = ?",
                )
                .bind(&a.pool)
                .bind(&key.cluster)
                .bind(sharing_key)
                .bind(now)
                .bind(&ip)
                .execute(&mut *conn)
                .await?;
            }
            How::Keep | How::Share => {
                // A sole user may change its sharing key; the address follows it.
                sqlx::query(
                    "UPDATE addresses SET sharing_key = ?1 WHERE ip = ?2 AND sharing_key IS NOT ?1 AND NOT EXISTS \
                     (SELECT 1 FROM service_addresses WHERE ip = ?2 AND NOT (cluster = ?3 AND namespace = ?4 AND name = ?5))",
                )
                .bind(sharing_key)
                .bind(&ip)
                .bind(&key.cluster)
                .bind(&key.namespace)
                .bind(&key.name)
                .execute(&mut *conn)
                .await?;
            }
        }
        sqlx::query("INSERT OR IGNORE INTO service_addresses (cluster, namespace, name, ip) VALUES (?, ?, ?, ?)")
            .bind(&key.cluster)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(&ip)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::on_unique(e, || format!("{} was just taken: try again", from_u128(a.ip))))?;
    }
    Ok(())
}

async fn write_releases(conn: &mut SqliteConnection, key: &ServiceKey, uid: &str, releases: &[Release]) -> Result<()> {
    for r in releases {
        let ip = ip_blob(r.ip);
        sqlx::query("DELETE FROM service_addresses WHERE cluster = ? AND namespace = ? AND name = ? AND ip = ?")
            .bind(&key.cluster)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(&ip)
            .execute(&mut *conn)
            .await?;
        match r.outcome {
            Outcome::StillShared => {}
            Outcome::Freed => {
                sqlx::query("DELETE FROM addresses WHERE ip = ?")
                    .bind(&ip)
                    .execute(&mut *conn)
                    .await?;
            }
            Outcome::Held(until) => {
                sqlx::query(
                    "UPDATE addresses SET state = 'held', held_namespace = ?, held_name = ?, held_uid = ?, held_until = ? \
                     WHERE ip = ?",
                )
                .bind(&key.namespace)
                .bind(&key.name)
                .bind(uid)
                .bind(until)
                .bind(&ip)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

fn ips_json(assign: &[Assign]) -> serde_json::Value {
    serde_json::json!(assign.iter().map(|a| from_u128(a.ip).to_string()).collect::<Vec<_>>())
}

/// The most PUTs committed in one transaction.
const MAX_BATCH: usize = 64;

/// PUTs waiting for the writer (group commit). The first PUT into an idle queue starts a
/// drainer task; it takes the writer's lock, commits everything queued by then in one
/// transaction, answers, and goes on until the queue is empty. One transaction per batch
/// instead of one per PUT saves the per-statement hand-offs to SQLite's thread that dominated
/// allocation latency at high concurrency (docs/benchmarks.md).
#[derive(Default)]
pub(super) struct PutQueue {
    pending: VecDeque<PendingPut>,
    /// A drainer task is running (or about to).
    draining: bool,
}

/// One PUT waiting for the writer, with what could be prepared without the allocation state.
pub(super) struct PendingPut {
    actor: String,
    key: ServiceKey,
    spec: ServiceSpec,
    spec_json: String,
    /// The spec as the audit entry's `after` embeds it.
    spec_value: serde_json::Value,
    digest: [u8; 16],
    ports: Vec<PortKey>,
    answer: oneshot::Sender<Result<Service>>,
}

impl PendingPut {
    /// A PUT of a validated spec, with the receiver of its answer. Everything that needs no
    /// allocation state is done here, outside the writer's lock.
    pub(super) fn new(
        actor: &str,
        key: ServiceKey,
        spec: ServiceSpec,
    ) -> Result<(PendingPut, oneshot::Receiver<Result<Service>>)> {
        let spec_json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let spec_value = serde_json::to_value(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (answer, answered) = oneshot::channel();
        let put = PendingPut {
            actor: actor.to_owned(),
            key,
            ports: port_keys(&spec),
            digest: super::spec_digest(&spec_json),
            spec_json,
            spec_value,
            spec,
            answer,
        };
        Ok((put, answered))
    }

    fn request(&self) -> Request<'_> {
        Request {
            key: &self.key,
            uid: &self.spec.uid,
            pool: self.spec.pool.as_deref(),
            requested: &self.spec.requested_ips,
            families: &self.spec.ip_families,
            sharing_key: self.spec.sharing_key.as_deref(),
            ports: &self.ports,
        }
    }
}

/// Should a drainer panic, empties the queue (its callers get an error rather than wait
/// forever) and lets the next PUT start a new drainer.
struct ResetOnPanic<'a>(&'a Store);

impl Drop for ResetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.inner.puts.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.clear();
            q.draining = false;
        }
    }
}

/// A PUT of the batch that writes, with its decision and audit entry.
struct Write {
    put: PendingPut,
    decision: Decision,
    action: &'static str,
    after: String,
}

impl Write {
    /// Only new addresses, nothing released: the rows of several such PUTs can go into the
    /// same multi-row statements without changing what a sequence of single PUTs would write.
    fn is_simple(&self) -> bool {
        self.decision.release.is_empty() && self.decision.assign.iter().all(|a| a.how == How::New)
    }
}

type Answer = (oneshot::Sender<Result<Service>>, Result<Service>);

/// A PUT's answer: the Service as `decision` leaves it, from memory (no second read on the hot
/// path); `updated_at` is when its row was last written.
fn answer_of(put: PendingPut, decision: &Decision, updated_at: i64) -> Answer {
    let addresses: Vec<AssignedIp> = decision
        .assign
        .iter()
        .map(|a| AssignedIp {
            ip: from_u128(a.ip),
            pool: a.pool.clone(),
        })
        .collect();
    let service = Service {
        cluster: put.key.cluster,
        namespace: put.key.namespace,
        name: put.key.name,
        uid: put.spec.uid.clone(),
        ips: addresses.iter().map(|a| a.ip).collect(),
        pool: addresses.first().map(|a| a.pool.clone()),
        addresses,
        spec: Some(put.spec),
        updated_at: ts(updated_at),
    };
    (put.answer, Ok(service))
}

/// Decides and commits a batch of PUTs in one transaction and returns every caller's answer.
///
/// Each PUT is decided against the allocation state including the batch's earlier PUTs, which
/// are applied to `w.ipam` as they are decided; if the transaction fails, every address they
/// touched is put back as it was (the state is a function of the address records), so the
/// allocation state again equals the database, and every PUT that was to write gets the error.
/// The batch holds at most one PUT per Service (see [`Store::take_puts`]).
pub(super) async fn put_batch(w: &mut super::Writer, batch: Vec<PendingPut>, now: i64) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut writes = Vec::new();
    // Answers refused against the batch's own earlier PUTs: wrong if the batch does not commit.
    let mut refused_after_writes = Vec::new();
    // The state of every address the batch touched, before the batch.
    let mut undo: HashMap<u128, Option<ipam::AddrInfo>> = HashMap::new();
    for put in batch {
        // Everything up to the first write is decided in memory: an idempotent PUT, an unknown
        // cluster or a refused allocation costs no database round trip.
        if !w.clusters.contains(&put.key.cluster) {
            let e = StoreError::NotFound(format!(
                "cluster '{}' does not exist: create it first (POST /api/v1/clusters)",
                put.key.cluster
            ));
            answers.push((put.answer, Err(e)));
            continue;
        }
        let decision = match w.ipam.decide(&put.request(), now) {
            Ok(d) => d,
            Err(e) => {
                if !writes.is_empty() {
                    refused_after_writes.push(answers.len());
                }
                answers.push((put.answer, Err(e.into())));
                continue;
            }
        };
        if let Some(stored) = w.specs.get(&put.key).filter(|s| s.digest == put.digest)
            && decision.keeps_everything()
        {
            // Answered from the state it was decided against, under the writer's lock: a DELETE
            // right after cannot make it a 404 or an empty answer.
            let updated_at = stored.updated_at;
            answers.push(answer_of(put, &decision, updated_at));
            continue;
        }
        let touched = decision
            .assign
            .iter()
            .map(|a| a.ip)
            .chain(decision.release.iter().map(|r| r.ip));
        for ip in touched {
            undo.entry(ip).or_insert_with(|| w.ipam.addr(ip).cloned());
        }
        w.ipam.apply(&put.request(), &decision);
        let after = serde_json::json!({"uid": put.spec.uid, "ips": ips_json(&decision.assign), "spec": put.spec_value})
            .to_string();
        let action = if decision.assign.iter().any(|a| a.how != How::Keep) {
            "service.allocate"
        } else {
            "service.update"
        };
        writes.push(Write {
            put,
            decision,
            action,
            after,
        });
    }
    if writes.is_empty() {
        w.touch_nothing();
        return answers;
    }
    match write_puts(&mut w.conn, &writes, now).await {
        Ok(()) => {
            w.touch_nothing();
            for wr in writes {
                let Write { put, decision, .. } = wr;
                let key = w.ipam.shared_key(&put.key);
                let stored = super::StoredSpec {
                    digest: put.digest,
                    updated_at: now,
                };
                w.specs.insert(key.clone(), stored);
                w.touch(Change::Service(key));
                answers.push(answer_of(put, &decision, now));
            }
        }
        Err(e) => {
            // Nothing was committed: nothing changed for the data plane either.
            w.touch_nothing();
            for (ip, before) in undo {
                w.ipam.forget(&[ip]);
                if let Some(info) = before {
                    w.ipam.load_addr(ip, info);
                }
            }
            tracing::warn!(error = %e, puts = writes.len(), "a batch of Service PUTs failed to commit");
            // Which PUT caused it is unknown: none gets another's 4xx, every one (and every
            // refusal judged against them) gets the same error, a server error to retry.
            let failed = || {
                StoreError::Io(format!(
                    "the transaction that carried this PUT with others failed, nothing was written; \
                     retry ({})",
                    crate::error_chain(&e)
                ))
            };
            for i in refused_after_writes {
                answers[i].1 = Err(failed());
            }
            for wr in writes {
                answers.push((wr.put.answer, Err(failed())));
            }
        }
    }
    answers
}

/// Writes the batch's PUTs in one `BEGIN IMMEDIATE` transaction and commits it, in batch
/// order: each run of simple PUTs (see [`Write::is_simple`]) as one multi-row statement per
/// table, sent to SQLite at once, the others as a single PUT always was.
async fn write_puts(conn: &mut SqliteConnection, writes: &[Write], now: i64) -> Result<()> {
    let mut tx = begin(conn).await?;
    let mut rest = writes;
    while let Some(first) = rest.first() {
        if first.is_simple() {
            let run = rest.iter().position(|w| !w.is_simple()).unwrap_or(rest.len());
            // In runs of a power of two: each length is a statement the connection keeps
            // prepared, and one per length up to MAX_BATCH took megabytes; seven lengths take
            // a few hundred kilobytes for at most a few more round trips per batch.
            let n = 1 << run.ilog2();
            write_simple(&mut tx, &rest[..n], now).await?;
            rest = &rest[n..];
        } else {
            write_one(&mut tx, first, now).await?;
            rest = &rest[1..];
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The audit entry of a PUT; its `before` is the Service's row as it still is.
const AUDIT_ROW: &str = "INSERT INTO audit (time, actor, action, object, before, after) ";
const AUDIT_BEFORE: &str = "(SELECT json_object('uid', uid, 'spec', json(spec)) FROM services WHERE cluster = ";
const SERVICE_ROW: &str = "INSERT INTO services (cluster, namespace, name, uid, spec, created_at, updated_at) ";
const SERVICE_UPSERT: &str = " ON CONFLICT (cluster, namespace, name) DO UPDATE SET uid = excluded.uid, \
     spec = excluded.spec, updated_at = excluded.updated_at";

/// Audit entries, Services, new addresses and their links for PUTs of distinct Services that
/// only take new addresses: the same rows as one PUT after the other, in four multi-row
/// statements sent as one. Rows go in batch order, so audit ids follow it.
async fn write_simple(conn: &mut SqliteConnection, writes: &[Write], now: i64) -> Result<()> {
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(AUDIT_ROW);
    // All audit entries first: every Service in the run is distinct, so each `before` still
    // sees its own Service's row as it was.
    q.push_values(writes, |mut row, wr| {
        let k = &wr.put.key;
        row.push_bind(now)
            .push_bind(wr.put.actor.as_str())
            .push_bind(wr.action)
            .push_bind(format!("service/{k}"))
            .push(AUDIT_BEFORE)
            .push_bind_unseparated(k.cluster.as_str())
            .push_unseparated(" AND namespace = ")
            .push_bind_unseparated(k.namespace.as_str())
            .push_unseparated(" AND name = ")
            .push_bind_unseparated(k.name.as_str())
            .push_unseparated(")")
            .push_bind(wr.after.as_str());
    });
    q.push("; ").push(SERVICE_ROW);
    q.push_values(writes, |mut row, wr| {
        let k = &wr.put.key;
        row.push_bind(k.cluster.as_str())
            .push_bind(k.namespace.as_str())
            .push_bind(k.name.as_str())
            .push_bind(wr.put.spec.uid.as_str())
            .push_bind(wr.put.spec_json.as_str())
            .push_bind(now)
            .push_bind(now);
    });
    q.push(SERVICE_UPSERT);
    let assigns: Vec<(&Write, &Assign)> = writes
        .iter()
        .flat_map(|wr| wr.decision.assign.iter().map(move |a| (wr, a)))
        .collect();
    if !assigns.is_empty() {
        q.push("; INSERT INTO addresses (ip, pool, cluster, sharing_key, state, since) ");
        q.push_values(&assigns, |mut row, (wr, a)| {
            row.push_bind(ip_blob(a.ip))
                .push_bind(a.pool.as_str())
                .push_bind(wr.put.key.cluster.as_str())
                .push_bind(wr.put.spec.sharing_key.as_deref())
                .push("'allocated'")
                .push_bind(now);
        });
        q.push("; INSERT OR IGNORE INTO service_addresses (cluster, namespace, name, ip) ");
        q.push_values(&assigns, |mut row, (wr, a)| {
            let k = &wr.put.key;
            row.push_bind(k.cluster.as_str())
                .push_bind(k.namespace.as_str())
                .push_bind(k.name.as_str())
                .push_bind(ip_blob(a.ip));
        });
    }
    q.build().execute(&mut *conn).await.map_err(|e| {
        // The allocation state said these addresses were free: only a writer other than this
        // store can have taken one.
        StoreError::on_unique(e, || {
            let ips: Vec<String> = assigns.iter().map(|(_, a)| from_u128(a.ip).to_string()).collect();
            format!("one of {} was just taken: try again", ips.join(", "))
        })
    })?;
    Ok(())
}

/// A PUT that keeps, shares, reclaims or releases addresses, written as on its own.
async fn write_one(conn: &mut SqliteConnection, wr: &Write, now: i64) -> Result<()> {
    let (put, k) = (&wr.put, &wr.put.key);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{AUDIT_ROW}VALUES (?, ?, ?, ?, {AUDIT_BEFORE}? AND namespace = ? AND name = ?), ?)"
    )))
    .bind(now)
    .bind(&put.actor)
    .bind(wr.action)
    .bind(format!("service/{k}"))
    .bind(&k.cluster)
    .bind(&k.namespace)
    .bind(&k.name)
    .bind(&wr.after)
    .execute(&mut *conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SERVICE_ROW}VALUES (?, ?, ?, ?, ?, ?, ?){SERVICE_UPSERT}"
    )))
    .bind(&k.cluster)
    .bind(&k.namespace)
    .bind(&k.name)
    .bind(&put.spec.uid)
    .bind(&put.spec_json)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    write_decision(
        conn,
        k,
        &put.spec.uid,
        put.spec.sharing_key.as_deref(),
        &wr.decision,
        now,
    )
    .await
}

/// Filters of `GET /api/v1/allocations`.
#[derive(Debug, Clone, Default)]
pub struct AllocationFilter {
    pub pool: Option<String>,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub ip: Option<IpAddr>,
    pub cursor: Option<String>,
    pub limit: u32,
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Matches objects equal to it or below it (`pool/public` and `pool/public/...`), or an
    /// object kind alone (`pool`).
    pub object: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub cursor: Option<i64>,
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct ServiceRow {
    cluster: String,
    namespace: String,
    name: String,
    uid: String,
    spec: Option<String>,
    updated_at: i64,
}

impl Store {
    // ---- clusters ----

    pub async fn create_cluster(&self, actor: &str, spec: ClusterSpec) -> Result<Cluster> {
        ipam::check_name(&spec.name).map_err(|m| StoreError::invalid("name", m))?;
        if spec.description.len() > 1024 {
            return Err(StoreError::invalid("description", "at most 1024 characters"));
        }
        let actor = actor.to_owned();
        let name = spec.name.clone();
        self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                sqlx::query("INSERT INTO clusters (name, description, created_at) VALUES (?, ?, ?)")
                    .bind(&spec.name)
                    .bind(&spec.description)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::on_unique(e, || format!("cluster '{}' already exists", spec.name)))?;
                let after = serde_json::to_value(&spec).ok();
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "cluster.create",
                    &format!("cluster/{}", spec.name),
                    None,
                    after.as_ref(),
                )
                .await?;
                tx.commit().await?;
                // A new cluster has no Services or nodes yet.
                w.touch_nothing();
                w.clusters.insert(spec.name.clone());
                Ok(())
            })
        })
        .await?;
        self.get_cluster(&name).await
    }

    const CLUSTER_SELECT: &str = "SELECT c.name, c.description, c.created_at, c.last_contact, c.agent_version, \
         (SELECT COUNT(*) FROM services s WHERE s.cluster = c.name), \
         (SELECT COUNT(*) FROM nodes n WHERE n.cluster = c.name) FROM clusters c";

    pub async fn list_clusters(&self) -> Result<Vec<Cluster>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{} ORDER BY c.name", Self::CLUSTER_SELECT)))
            .fetch_all(self.read())
            .await?;
        rows.iter().map(cluster_of).collect()
    }

    pub async fn get_cluster(&self, name: &str) -> Result<Cluster> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} WHERE c.name = ?",
            Self::CLUSTER_SELECT
        )))
        .bind(name)
        .fetch_optional(self.read())
        .await?;
        cluster_of(&row.ok_or_else(|| StoreError::NotFound(format!("cluster '{name}' does not exist")))?)
    }

    /// Deletes a cluster with no Services left; its nodes and agent tokens go with it.
    pub async fn delete_cluster(&self, actor: &str, name: &str) -> Result<()> {
        let actor = actor.to_owned();
        let name = name.to_owned();
        let deleted = self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                require_cluster(&mut tx, &name)
                    .await
                    .map_err(|_| StoreError::NotFound(format!("cluster '{name}' does not exist")))?;
                let services: Vec<(String, String)> = sqlx::query_as(
                    "SELECT namespace, name FROM services WHERE cluster = ? ORDER BY namespace, name LIMIT 11",
                )
                .bind(&name)
                .fetch_all(&mut *tx)
                .await?;
                if !services.is_empty() {
                    let mut list: Vec<String> = services.iter().take(10).map(|(n, s)| format!("{n}/{s}")).collect();
                    if services.len() > 10 {
                        list.push("and more".into());
                    }
                    return Err(StoreError::Conflict(format!(
                        "cluster '{name}' still has Services: {}; delete them (or let its agent release them) first",
                        list.join(", ")
                    )));
                }
                // Held addresses of the cluster's former Services stay held; the pool keeps them.
                sqlx::query("DELETE FROM clusters WHERE name = ?")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "cluster.delete",
                    &format!("cluster/{name}"),
                    None,
                    None,
                )
                .await?;
                tx.commit().await?;
                w.clusters.remove(&name);
                Ok(())
            })
        })
        .await;
        // Its agent tokens went with it.
        self.forget_tokens();
        deleted
    }

    /// Records an agent's call (at most every 15 s per cluster, to spare the writer).
    pub async fn touch_cluster(&self, cluster: &str, agent_version: Option<&str>) -> Result<()> {
        let last: Option<(Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT last_contact, agent_version FROM clusters WHERE name = ?")
                .bind(cluster)
                .fetch_optional(self.read())
                .await?;
        let now = super::now();
        if let Some((Some(t), v)) = &last
            && now - t < 15
            && v.as_deref() == agent_version
        {
            return Ok(());
        }
        let cluster = cluster.to_owned();
        let agent_version = agent_version.map(str::to_owned);
        self.write(move |w, now| {
            Box::pin(async move {
                w.touch_nothing();
                sqlx::query("UPDATE clusters SET last_contact = ?, agent_version = ? WHERE name = ?")
                    .bind(now)
                    .bind(agent_version)
                    .bind(cluster)
                    .execute(&mut w.conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    // ---- services ----

    /// Stores a Service's spec and allocates its addresses. Idempotent: the same request
    /// changes nothing and writes no audit entry.
    ///
    /// Concurrent calls are committed together (see [`PutQueue`]): each is decided in turn
    /// against the allocation state left by the ones before it, a refused one gets its own
    /// error, and the others share one transaction.
    pub async fn put_service(
        &self,
        actor: &str,
        cluster: &str,
        namespace: &str,
        name: &str,
        spec: ServiceSpec,
    ) -> Result<Service> {
        validate_service(namespace, name, &spec).map_err(StoreError::Invalid)?;
        let key = ServiceKey::new(cluster, namespace, name);
        let (put, answered) = PendingPut::new(actor, key, spec)?;
        let start_drainer = {
            let mut q = self.inner.puts.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push_back(put);
            !std::mem::replace(&mut q.draining, true)
        };
        if start_drainer {
            // A task of its own: a client hanging up cannot cancel a batch mid-commit.
            tokio::spawn(self.clone().drain_puts());
        }
        answered
            .await
            .map_err(|_| StoreError::Io("the store's writer stopped before answering".into()))?
    }

    /// Commits queued PUTs a batch at a time until the queue is empty. The writer's lock is
    /// taken once per batch, so other writes still get their turn between batches.
    async fn drain_puts(self) {
        let _reset = ResetOnPanic(&self);
        loop {
            let this = self.clone();
            let answers = self
                .write_here(move |w, now| {
                    Box::pin(async move {
                        // Taken under the writer's lock: whatever queued while the previous
                        // holder worked joins this batch.
                        let batch = this.take_puts();
                        if batch.is_empty() {
                            w.touch_nothing();
                            return Ok(None);
                        }
                        Ok(Some(put_batch(w, batch, now).await))
                    })
                })
                .await;
            match answers {
                // Sent after the journal has the batch's changes: an answered caller sees them.
                Ok(Some(answers)) => {
                    for (tx, answer) in answers {
                        // The caller may have gone; what it asked for is committed all the same.
                        let _ = tx.send(answer);
                    }
                }
                Ok(None) => break,
                // `put_batch` answers its errors itself: the closure never fails.
                Err(e) => tracing::error!(error = %e, "a batch of Service PUTs failed outside its transaction"),
            }
        }
    }

    /// Up to [`MAX_BATCH`] queued PUTs, oldest first, at most one per Service: a second PUT of
    /// the same Service waits for the next batch, so it is decided against the first one's
    /// committed state and its audit entry's `before` is what the first one wrote. Marks the
    /// queue as not drained when it is empty (under its lock, so no PUT is left behind).
    fn take_puts(&self) -> Vec<PendingPut> {
        let mut q = self.inner.puts.lock().unwrap_or_else(|e| e.into_inner());
        if q.pending.is_empty() {
            q.draining = false;
            return Vec::new();
        }
        let mut keys = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = VecDeque::new();
        for p in q.pending.drain(..) {
            if batch.len() < MAX_BATCH && !keys.contains(&p.key) {
                keys.insert(p.key.clone());
                batch.push(p);
            } else {
                rest.push_back(p);
            }
        }
        q.pending = rest;
        batch
    }

    /// Releases a Service's addresses (each held for it for its pool's hold period) and
    /// forgets the Service. Returns what it had.
    pub async fn delete_service(&self, actor: &str, cluster: &str, namespace: &str, name: &str) -> Result<Service> {
        let before = self.get_service(cluster, namespace, name).await?;
        let actor = actor.to_owned();
        let key = ServiceKey::new(cluster, namespace, name);
        self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                let uid: Option<(String,)> =
                    sqlx::query_as("SELECT uid FROM services WHERE cluster = ? AND namespace = ? AND name = ?")
                        .bind(&key.cluster)
                        .bind(&key.namespace)
                        .bind(&key.name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((uid,)) = uid else {
                    return Err(StoreError::NotFound(format!("Service {key} does not exist")));
                };
                let releases = w.ipam.release_all(&key, now);
                write_releases(&mut tx, &key, &uid, &releases).await?;
                sqlx::query("DELETE FROM services WHERE cluster = ? AND namespace = ? AND name = ?")
                    .bind(&key.cluster)
                    .bind(&key.namespace)
                    .bind(&key.name)
                    .execute(&mut *tx)
                    .await?;
                let released: Vec<String> = releases.iter().map(|r| from_u128(r.ip).to_string()).collect();
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "service.release",
                    &format!("service/{key}"),
                    Some(&serde_json::json!({"uid": uid, "ips": released})),
                    None,
                )
                .await?;
                tx.commit().await?;
                w.touch(Change::Service(w.ipam.shared_key(&key)));
                w.specs.remove(&key);
                w.ipam.apply_release(&key, &uid, &releases);
                Ok(())
            })
        })
        .await?;
        Ok(before)
    }

    pub async fn get_service(&self, cluster: &str, namespace: &str, name: &str) -> Result<Service> {
        let row: Option<ServiceRow> = sqlx::query_as(
            "SELECT cluster, namespace, name, uid, spec, updated_at FROM services WHERE cluster = ? AND namespace = ? AND name = ?",
        )
        .bind(cluster)
        .bind(namespace)
        .bind(name)
        .fetch_optional(self.read())
        .await?;
        let row =
            row.ok_or_else(|| StoreError::NotFound(format!("Service {cluster}/{namespace}/{name} does not exist")))?;
        let mut addrs = self.addresses_of_services(cluster, Some((namespace, name))).await?;
        service_of(
            row,
            addrs
                .remove(&(namespace.to_owned(), name.to_owned()))
                .unwrap_or_default(),
        )
    }

    /// Every Service of a cluster, or of all clusters.
    pub async fn list_services(&self, cluster: Option<&str>) -> Result<Vec<Service>> {
        // Separate statements, not `?1 IS NULL OR ...`, so SQLite can use the primary key.
        const ALL: &str = "SELECT cluster, namespace, name, uid, spec, updated_at FROM services";
        let rows: Vec<ServiceRow> = match cluster {
            Some(c) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{ALL} WHERE cluster = ? ORDER BY namespace, name"
                )))
                .bind(c)
                .fetch_all(self.read())
                .await?
            }
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{ALL} ORDER BY cluster, namespace, name")))
                    .fetch_all(self.read())
                    .await?
            }
        };
        let mut by_cluster: BTreeMap<String, BTreeMap<(String, String), Vec<AssignedIp>>> = BTreeMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if !by_cluster.contains_key(&row.cluster) {
                let a = self.addresses_of_services(&row.cluster, None).await?;
                by_cluster.insert(row.cluster.clone(), a);
            }
            let addrs = by_cluster
                .get_mut(&row.cluster)
                .and_then(|m| m.remove(&(row.namespace.clone(), row.name.clone())))
                .unwrap_or_default();
            out.push(service_of(row, addrs)?);
        }
        Ok(out)
    }

    async fn addresses_of_services(
        &self,
        cluster: &str,
        one: Option<(&str, &str)>,
    ) -> Result<BTreeMap<(String, String), Vec<AssignedIp>>> {
        const SELECT: &str = "SELECT sa.namespace, sa.name, sa.ip, a.pool FROM service_addresses sa \
             JOIN addresses a USING (ip) WHERE sa.cluster = ?";
        let rows = match one {
            Some((ns, name)) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} AND sa.namespace = ? AND sa.name = ? ORDER BY sa.ip"
                )))
                .bind(cluster)
                .bind(ns)
                .bind(name)
                .fetch_all(self.read())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY sa.ip")))
                    .bind(cluster)
                    .fetch_all(self.read())
                    .await?
            }
        };
        let mut out: BTreeMap<(String, String), Vec<AssignedIp>> = BTreeMap::new();
        for row in rows {
            let ip = from_u128(blob_ip(row.try_get::<&[u8], _>(2)?)?);
            out.entry((row.try_get(0)?, row.try_get(1)?))
                .or_default()
                .push(AssignedIp {
                    ip,
                    pool: row.try_get(3)?,
                });
        }
        Ok(out)
    }

    // ---- sync ----

    /// Reserves every address the agent found in its Services' status, before it allocates
    /// anything new, and reports the Services the appliance holds that the list lacks. Deletes
    /// nothing: releasing stale Services is the agent's decision, made on a complete list.
    pub async fn sync(&self, actor: &str, cluster: &str, req: SyncRequest) -> Result<SyncResponse> {
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for (i, s) in req.services.iter().enumerate() {
            if let Err(m) = check_k8s_name("namespace", &s.namespace).and(check_k8s_name("Service", &s.name)) {
                errors.push(FieldError {
                    field: format!("services[{i}]"),
                    message: m,
                });
            }
            if !seen.insert((s.namespace.as_str(), s.name.as_str())) {
                errors.push(FieldError {
                    field: format!("services[{i}]"),
                    message: format!("{}/{} appears twice", s.namespace, s.name),
                });
            }
            if s.uid.is_empty() || s.uid.len() > 128 {
                errors.push(FieldError {
                    field: format!("services[{i}].uid"),
                    message: "uid must be the Service's metadata.uid (1 to 128 characters)".into(),
                });
            }
            if s.sharing_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 253) {
                errors.push(FieldError {
                    field: format!("services[{i}].sharing_key"),
                    message: "sharing_key must be 1 to 253 characters or null".into(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let actor = actor.to_owned();
        let cluster = cluster.to_owned();
        let cluster2 = cluster.clone();
        let listed: HashSet<(String, String)> = req
            .services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let (reserved_keys, conflicts) = self
            .write(move |w, now| {
                Box::pin(async move {
                    let mut tx = begin(&mut w.conn).await?;
                    require_cluster(&mut tx, &cluster).await?;
                    // Work on a copy: decisions in one sync depend on each other, and nothing
                    // may change in memory unless the whole sync commits.
                    let mut ipam = w.ipam.clone();
                    let mut conflicts = Vec::new();
                    let mut reserved = Vec::new();
                    let mut count = 0usize;
                    // The Services that got an address in this sync.
                    let mut touched = Vec::new();
                    for s in &req.services {
                        let key = ServiceKey::new(&cluster, &s.namespace, &s.name);
                        let mut any = false;
                        let count_before = count;
                        for ip in &s.ips {
                            match ipam.decide_reserve(&key, &s.uid, *ip, s.sharing_key.as_deref(), now) {
                                Ok(None) => any = true,
                                Ok(Some(assign)) => {
                                    sqlx::query(
                                        "INSERT INTO services (cluster, namespace, name, uid, spec, created_at, updated_at) \
                                         VALUES (?, ?, ?, ?, NULL, ?5, ?5) ON CONFLICT DO NOTHING",
                                    )
                                    .bind(&key.cluster)
                                    .bind(&key.namespace)
                                    .bind(&key.name)
                                    .bind(&s.uid)
                                    .bind(now)
                                    .execute(&mut *tx)
                                    .await?;
                                    let d = Decision { assign: vec![assign], release: vec![] };
                                    let families = [IpFamily::of(ip)];
                                    let req = Request {
                                        key: &key,
                                        uid: &s.uid,
                                        pool: None,
                                        requested: &[],
                                        families: &families,
                                        sharing_key: s.sharing_key.as_deref(),
                                        ports: &[],
                                    };
                                    write_decision(&mut tx, &key, &s.uid, s.sharing_key.as_deref(), &d, now).await?;
                                    ipam.apply(&req, &d);
                                    any = true;
                                    count += 1;
                                }
                                Err(e) => conflicts.push(SyncConflict {
                                    namespace: s.namespace.clone(),
                                    name: s.name.clone(),
                                    ip: *ip,
                                    detail: e.to_string(),
                                }),
                            }
                        }
                        if any {
                            reserved.push((s.namespace.clone(), s.name.clone()));
                        }
                        if count > count_before {
                            touched.push(key);
                        }
                    }
                    if count > 0 {
                        let after = serde_json::json!({"reserved_addresses": count, "services_listed": req.services.len()});
                        audit(&mut tx, now, &actor, "cluster.sync", &format!("cluster/{cluster}"), None, Some(&after)).await?;
                    }
                    tx.commit().await?;
                    w.ipam = ipam;
                    w.touch_nothing();
                    for key in touched {
                        w.touch(Change::Service(w.ipam.shared_key(&key)));
                    }
                    Ok((reserved, conflicts))
                })
            })
            .await?;
        let services = self.list_services(Some(&cluster2)).await?;
        let reserved_set: BTreeSet<(String, String)> = reserved_keys.into_iter().collect();
        let mut reserved = Vec::new();
        let mut stale = Vec::new();
        for s in services {
            let k = (s.namespace.clone(), s.name.clone());
            let r = ServiceRef {
                namespace: s.namespace,
                name: s.name,
                uid: s.uid,
                ips: s.ips,
            };
            if !listed.contains(&k) {
                stale.push(r);
            } else if reserved_set.contains(&k) {
                reserved.push(r);
            }
        }
        Ok(SyncResponse {
            reserved,
            stale,
            conflicts,
        })
    }

    // ---- nodes ----

    /// Replaces the cluster's node list. Writes (and audits) only when it changed.
    pub async fn put_nodes(&self, actor: &str, cluster: &str, list: NodeList) -> Result<NodeList> {
        let mut errors = Vec::new();
        let mut names = HashSet::new();
        for (i, n) in list.nodes.iter().enumerate() {
            if n.name.is_empty() || n.name.len() > 253 {
                errors.push(FieldError {
                    field: format!("nodes[{i}].name"),
                    message: "node name must be 1 to 253 characters".into(),
                });
            }
            if !names.insert(n.name.as_str()) {
                errors.push(FieldError {
                    field: format!("nodes[{i}].name"),
                    message: format!("node '{}' appears twice", n.name),
                });
            }
            if n.addresses.is_empty() {
                errors.push(FieldError {
                    field: format!("nodes[{i}].addresses"),
                    message: format!("node '{}' has no address to forward to", n.name),
                });
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut list = list;
        list.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let actor = actor.to_owned();
        let cluster = cluster.to_owned();
        let cluster2 = cluster.clone();
        self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                require_cluster(&mut tx, &cluster).await?;
                let old = nodes_of(&mut tx, &cluster).await?;
                if old == list.nodes {
                    drop(tx);
                    w.touch_nothing();
                    return Ok(());
                }
                sqlx::query("DELETE FROM nodes WHERE cluster = ?").bind(&cluster).execute(&mut *tx).await?;
                for n in &list.nodes {
                    let addrs = serde_json::to_string(&n.addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    sqlx::query(
                        "INSERT INTO nodes (cluster, name, addresses, ready, schedulable, excluded, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&cluster)
                    .bind(&n.name)
                    .bind(addrs)
                    .bind(n.ready)
                    .bind(n.schedulable)
                    .bind(n.excluded)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let summary = |nodes: &[Node]| {
                    serde_json::json!(nodes.iter().map(|n| serde_json::json!({
                        "name": n.name, "ready": n.ready, "schedulable": n.schedulable, "excluded": n.excluded,
                        "addresses": n.addresses,
                    })).collect::<Vec<_>>())
                };
                audit(&mut tx, now, &actor, "nodes.update", &format!("cluster/{cluster}/nodes"), Some(&summary(&old)), Some(&summary(&list.nodes)))
                    .await?;
                tx.commit().await?;
                w.touch(Change::Nodes(cluster.clone()));
                Ok(())
            })
        })
        .await?;
        self.get_nodes(&cluster2).await
    }

    pub async fn get_nodes(&self, cluster: &str) -> Result<NodeList> {
        let mut conn = self.read().acquire().await?;
        require_cluster(&mut conn, cluster).await?;
        Ok(NodeList {
            nodes: nodes_of(&mut conn, cluster).await?,
        })
    }

    // ---- listings ----

    /// Addresses that are not free, in address order, a page at a time. The cursor is the
    /// last address of the previous page.
    pub async fn list_allocations(&self, f: &AllocationFilter) -> Result<Page<Allocation>> {
        let after = match &f.cursor {
            Some(c) => Some(
                u128::from_str_radix(c, 16)
                    .map(ip_blob)
                    .map_err(|_| StoreError::invalid("cursor", "not a cursor from a previous page"))?,
            ),
            None => None,
        };
        let limit = f.limit.clamp(1, 1000);
        // Only the filters given go into the statement, so SQLite can use its indexes.
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT a.ip, a.pool, a.cluster, a.sharing_key, a.state, a.held_namespace, a.held_name, a.held_uid, \
             a.held_until, a.since FROM addresses a WHERE 1 = 1",
        );
        if let Some(after) = after {
            q.push(" AND a.ip > ").push_bind(after);
        }
        if let Some(pool) = &f.pool {
            q.push(" AND a.pool = ").push_bind(pool.clone());
        }
        if let Some(cluster) = &f.cluster {
            q.push(" AND a.cluster = ").push_bind(cluster.clone());
        }
        if let Some(ip) = f.ip {
            q.push(" AND a.ip = ").push_bind(ip_blob(to_u128(ip)));
        }
        if f.namespace.is_some() || f.service.is_some() {
            // A held address matches by the Service it is held for; an allocated one when one
            // Service using it matches both filters.
            q.push(" AND ((a.state = 'held'");
            if let Some(ns) = &f.namespace {
                q.push(" AND a.held_namespace = ").push_bind(ns.clone());
            }
            if let Some(name) = &f.service {
                q.push(" AND a.held_name = ").push_bind(name.clone());
            }
            q.push(") OR EXISTS (SELECT 1 FROM service_addresses sa WHERE sa.ip = a.ip");
            if let Some(ns) = &f.namespace {
                q.push(" AND sa.namespace = ").push_bind(ns.clone());
            }
            if let Some(name) = &f.service {
                q.push(" AND sa.name = ").push_bind(name.clone());
            }
            q.push("))");
        }
        q.push(" ORDER BY a.ip LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(self.read()).await?;
        let more = rows.len() > limit as usize;
        let rows = &rows[..rows.len().min(limit as usize)];
        // The users of every address on the page, in one query over the page's address span.
        let mut owners: BTreeMap<Vec<u8>, Vec<AllocationOwner>> = BTreeMap::new();
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let (lo, hi): (&[u8], &[u8]) = (first.try_get(0)?, last.try_get(0)?);
            let links: Vec<(Vec<u8>, String, String, String)> = sqlx::query_as(
                "SELECT sa.ip, sa.namespace, sa.name, s.uid FROM service_addresses sa \
                 JOIN services s USING (cluster, namespace, name) WHERE sa.ip BETWEEN ? AND ? \
                 ORDER BY sa.ip, sa.namespace, sa.name",
            )
            .bind(lo)
            .bind(hi)
            .fetch_all(self.read())
            .await?;
            for (ip, namespace, name, uid) in links {
                owners
                    .entry(ip)
                    .or_default()
                    .push(AllocationOwner { namespace, name, uid });
            }
        }
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let blob: &[u8] = row.try_get(0)?;
            let state: String = row.try_get(4)?;
            let services = if state == "held" {
                vec![AllocationOwner {
                    namespace: row.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
                    name: row.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
                    uid: row.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
                }]
            } else {
                owners.remove(blob).unwrap_or_default()
            };
            items.push(Allocation {
                ip: from_u128(blob_ip(blob)?),
                pool: row.try_get(1)?,
                cluster: row.try_get(2)?,
                state: if state == "held" {
                    AllocationState::Held
                } else {
                    AllocationState::Allocated
                },
                services,
                sharing_key: row.try_get(3)?,
                held_until: row.try_get::<Option<i64>, _>(8)?.map(ts),
                since: ts(row.try_get(9)?),
            });
        }
        let next_cursor = if more {
            items.last().map(|a| format!("{:032x}", to_u128(a.ip)))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The audit log, newest first; the cursor is the id of the last entry of the previous page.
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Page<AuditEntry>> {
        let limit = f.limit.clamp(1, 1000);
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, time, actor, action, object, before, after FROM audit WHERE 1 = 1",
        );
        if let Some(c) = f.cursor {
            q.push(" AND id < ").push_bind(c);
        }
        if let Some(a) = &f.actor {
            // `token:ci` finds every token named ci (`token:ci/<id>`); `token:ci/<id>` one token.
            q.push(" AND (actor = ").push_bind(a.clone());
            q.push(" OR actor LIKE ").push_bind(format!("{}/%", like_escaped(a)));
            q.push(" ESCAPE '\\')");
        }
        if let Some(o) = &f.object {
            q.push(" AND (object = ").push_bind(o.clone());
            q.push(" OR object LIKE ").push_bind(format!("{}/%", like_escaped(o)));
            q.push(" ESCAPE '\\')");
        }
        if let Some(t) = f.since {
            q.push(" AND time >= ").push_bind(t);
        }
        if let Some(t) = f.until {
            q.push(" AND time <= ").push_bind(t);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(self.read()).await?;
        let more = rows.len() > limit as usize;
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let mut items = Vec::new();
        for row in rows.iter().take(limit as usize) {
            items.push(AuditEntry {
                id: row.try_get(0)?,
                time: ts(row.try_get(1)?),
                actor: row.try_get(2)?,
                action: row.try_get(3)?,
                object: row.try_get(4)?,
                before: parse(row.try_get(5)?),
                after: parse(row.try_get(6)?),
            });
        }
        let next_cursor = if more {
            items.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

fn cluster_of(row: &sqlx::sqlite::SqliteRow) -> Result<Cluster> {
    Ok(Cluster {
        name: row.try_get(0)?,
        description: row.try_get(1)?,
        created_at: ts(row.try_get(2)?),
        last_contact: row.try_get::<Option<i64>, _>(3)?.map(ts),
        agent_version: row.try_get(4)?,
        services: row.try_get::<i64, _>(5)?.max(0) as u64,
        nodes: row.try_get::<i64, _>(6)?.max(0) as u64,
    })
}

async fn nodes_of(conn: &mut SqliteConnection, cluster: &str) -> Result<Vec<Node>> {
    let rows =
        sqlx::query("SELECT name, addresses, ready, schedulable, excluded FROM nodes WHERE cluster = ? ORDER BY name")
            .bind(cluster)
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Node {
                name: r.try_get(0)?,
                addresses: serde_json::from_str(r.try_get::<&str, _>(1)?)
                    .map_err(|e| StoreError::Corrupt(format!("node addresses: {e}")))?,
                ready: r.try_get(2)?,
                schedulable: r.try_get(3)?,
                excluded: r.try_get(4)?,
            })
        })
        .collect()
}

fn service_of(row: ServiceRow, mut addresses: Vec<AssignedIp>) -> Result<Service> {
    let spec: Option<ServiceSpec> = match &row.spec {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("service spec: {e}")))?),
        None => None,
    };
    // Order the addresses as the Service lists its families.
    if let Some(spec) = &spec {
        addresses.sort_by_key(|a| {
            spec.ip_families
                .iter()
                .position(|f| *f == IpFamily::of(&a.ip))
                .unwrap_or(usize::MAX)
        });
    }
    Ok(Service {
        uid: row.uid,
        cluster: row.cluster,
        namespace: row.namespace,
        name: row.name,
        ips: addresses.iter().map(|a| a.ip).collect(),
        pool: addresses.first().map(|a| a.pool.clone()),
        addresses,
        spec,
        updated_at: ts(row.updated_at),
    })
}

/// `s` for a LIKE pattern with `ESCAPE '\'`: its own `\`, `%` and `_` match only themselves.
fn like_escaped(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
