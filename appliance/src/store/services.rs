//! Services, with allocation and release: validation, the group commit of concurrent PUTs (one
//! transaction per group, see [`PutQueue`]), delete, get and list.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use edgelb_api::{AssignedIp, FieldError, IpFamily, Protocol, Service, ServiceSpec};
use sqlx::{Row, SqliteConnection};
use tokio::sync::oneshot;

use super::{Change, Result, Store, StoreError, audit, begin, blob_ip, ip_blob, ts};
use crate::forwarding::Capabilities;
use crate::ipam::{self, Assign, Decision, How, Outcome, PortKey, Release, Request, ServiceKey, from_u128};

/// Kubernetes object names: DNS labels (RFC 1123), at most 63 characters.
pub(super) fn check_k8s_name(what: &str, s: &str) -> Result<(), String> {
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

/// Checks a Service spec, collecting every problem; its scheduler against what the backend
/// offers.
pub fn validate_service(
    namespace: &str,
    name: &str,
    spec: &ServiceSpec,
    offered: &Capabilities,
) -> Result<(), Vec<FieldError>> {
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
        if let Err(m) = offered.check_protocol(p.protocol) {
            err(format!("ports[{i}].protocol"), m);
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
        && let Err(m) = offered.check_scheduler(s)
    {
        err("scheduler".into(), m);
    }
    if let Some(f) = spec.forwarding
        && let Err(m) = offered.check_forwarding(f)
    {
        err("forwarding".into(), m);
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

/// Writes a decision's rows. The caller commits, then applies it to the allocation state.
pub(super) async fn write_decision(
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
                    "INSERT INTO addresses (ip, pool, cluster, sharing_key, state, since) VALUES ($1, $2, $3, $4, 'allocated', $5)",
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
                    "UPDATE addresses SET pool = $1, cluster = $2, sharing_key = $3, state = 'allocated', held_namespace = NULL, \
                     held_name = NULL, held_uid = NULL, held_until = NULL, since = $4 WHERE ip = $5",
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
                    "UPDATE addresses SET sharing_key = $1 WHERE ip = $2 AND sharing_key IS NOT $1 AND NOT EXISTS \
                     (SELECT 1 FROM service_addresses WHERE ip = $2 AND NOT (cluster = $3 AND namespace = $4 AND name = $5))",
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
        sqlx::query("INSERT INTO service_addresses (cluster, namespace, name, ip) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
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
        sqlx::query("DELETE FROM service_addresses WHERE cluster = $1 AND namespace = $2 AND name = $3 AND ip = $4")
            .bind(&key.cluster)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(&ip)
            .execute(&mut *conn)
            .await?;
        match r.outcome {
            Outcome::StillShared => {}
            Outcome::Freed => {
                sqlx::query("DELETE FROM addresses WHERE ip = $1")
                    .bind(&ip)
                    .execute(&mut *conn)
                    .await?;
            }
            Outcome::Held(until) => {
                sqlx::query(
                    "UPDATE addresses SET state = 'held', held_namespace = $1, held_name = $2, held_uid = $3, held_until = $4 \
                     WHERE ip = $5",
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
            let e: std::sync::Arc<dyn std::error::Error + Send + Sync> = std::sync::Arc::new(e);
            let failed = || StoreError::Io {
                what: "the transaction that carried this PUT with others failed, nothing was written; retry".into(),
                source: Some(e.clone()),
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
        q.push("; INSERT INTO service_addresses (cluster, namespace, name, ip) ");
        q.push_values(&assigns, |mut row, (wr, a)| {
            let k = &wr.put.key;
            row.push_bind(k.cluster.as_str())
                .push_bind(k.namespace.as_str())
                .push_bind(k.name.as_str())
                .push_bind(ip_blob(a.ip));
        });
        q.push(" ON CONFLICT DO NOTHING");
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
        "{AUDIT_ROW}VALUES ($1, $2, $3, $4, {AUDIT_BEFORE}$5 AND namespace = $6 AND name = $7), $8)"
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
        "{SERVICE_ROW}VALUES ($1, $2, $3, $4, $5, $6, $7){SERVICE_UPSERT}"
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
        validate_service(namespace, name, &spec, &self.capabilities()).map_err(StoreError::Invalid)?;
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
        answered.await.map_err(|e| StoreError::Io {
            what: "the store's writer stopped before answering".into(),
            source: Some(std::sync::Arc::new(e)),
        })?
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
                    sqlx::query_as("SELECT uid FROM services WHERE cluster = $1 AND namespace = $2 AND name = $3")
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
                sqlx::query("DELETE FROM services WHERE cluster = $1 AND namespace = $2 AND name = $3")
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
            "SELECT cluster, namespace, name, uid, spec, updated_at FROM services WHERE cluster = $1 AND namespace = $2 AND name = $3",
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
                    "{ALL} WHERE cluster = $1 ORDER BY namespace, name"
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
             JOIN addresses a USING (ip) WHERE sa.cluster = $1";
        let rows = match one {
            Some((ns, name)) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} AND sa.namespace = $2 AND sa.name = $3 ORDER BY sa.ip"
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
