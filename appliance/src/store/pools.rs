//! Pools: create, edit, delete, list with usage; and loading the allocation state at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgelb_api::{
    CapacityLevel, FamilyUsage, FieldError, HealthOverrides, IpFamily, Pool, PoolPatch, PoolSpec, PoolUsage,
};
use sqlx::{Row, SqliteConnection};

use super::{Result, Store, StoreError, audit, begin, blob_ip, flag, ip_blob, json_vec, ts};
use crate::forwarding::Capabilities;
use crate::ipam::{AddrInfo, Hold, Ipam, PoolDef, ServiceKey, VecMap};

#[derive(sqlx::FromRow)]
struct PoolRow {
    name: String,
    ranges: String,
    /// Flags are 0/1 integers in both dialects (see [`super::flag`]).
    auto_assign: i64,
    avoid_buggy_ips: i64,
    priority: i64,
    clusters: String,
    namespaces: String,
    scheduler: String,
    hold_seconds: i64,
    /// JSON `HealthOverrides`; NULL when the pool overrides nothing.
    health: Option<String>,
    /// NULL: the appliance's default.
    forwarding: Option<String>,
    capacity_warning_percent: i64,
    capacity_critical_percent: i64,
    created_at: i64,
    updated_at: i64,
}

impl PoolRow {
    fn spec(&self) -> Result<PoolSpec> {
        Ok(PoolSpec {
            name: self.name.clone(),
            ranges: json_vec(&self.ranges)?,
            auto_assign: self.auto_assign != 0,
            avoid_buggy_ips: self.avoid_buggy_ips != 0,
            priority: i32::try_from(self.priority).map_err(|_| StoreError::Corrupt("priority".into()))?,
            clusters: json_vec(&self.clusters)?,
            namespaces: json_vec(&self.namespaces)?,
            scheduler: self.scheduler.clone(),
            hold_seconds: u64::try_from(self.hold_seconds).map_err(|_| StoreError::Corrupt("hold_seconds".into()))?,
            health: health_of(&self.name, self.health.as_deref())?,
            forwarding: forwarding_of(&self.name, self.forwarding.as_deref())?,
            capacity_warning_percent: percent(&self.name, self.capacity_warning_percent)?,
            capacity_critical_percent: percent(&self.name, self.capacity_critical_percent)?,
        })
    }
}

/// A stored capacity threshold (the schema keeps it within 1 to 100).
fn percent(pool: &str, v: i64) -> Result<u8> {
    u8::try_from(v).map_err(|_| StoreError::Corrupt(format!("pool '{pool}': capacity threshold {v}")))
}

/// What is wrong with a pool's capacity thresholds, by field.
fn threshold_problems(spec: &PoolSpec) -> Vec<FieldError> {
    let (warning, critical) = (spec.capacity_warning_percent, spec.capacity_critical_percent);
    let mut out = Vec::new();
    let mut problem = |field: &str, message: String| {
        out.push(FieldError {
            field: field.into(),
            message,
        })
    };
    if !(1..=99).contains(&warning) {
        problem("capacity_warning_percent", format!("{warning} is not from 1 to 99"));
    }
    if !(2..=100).contains(&critical) {
        problem("capacity_critical_percent", format!("{critical} is not from 2 to 100"));
    } else if critical <= warning {
        problem(
            "capacity_critical_percent",
            format!("{critical} must be more than capacity_warning_percent ({warning})"),
        );
    }
    out
}

/// A pool's stored forwarding method.
pub(super) fn forwarding_of(pool: &str, text: Option<&str>) -> Result<Option<edgelb_api::Forwarding>> {
    text.map(|t| {
        t.parse()
            .map_err(|e| StoreError::Corrupt(format!("pool '{pool}': forwarding: {e}")))
    })
    .transpose()
}

/// A pool's stored health overrides.
pub(super) fn health_of(pool: &str, text: Option<&str>) -> Result<Option<HealthOverrides>> {
    text.map(|t| serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("pool '{pool}': health: {e}"))))
        .transpose()
}

fn def_of(spec: &PoolSpec) -> Result<PoolDef> {
    // A stored pool is never refused for its scheduler: it was offered when it was written.
    PoolDef::from_spec(spec, |_| Ok(())).map_err(|e| StoreError::Corrupt(format!("pool '{}': {e:?}", spec.name)))
}

/// Validates a spec as given by a client: every problem of its ranges and names (from the
/// allocator), of its scheduler (against what the backend offers) and of its health overrides
/// (as `health.interval_ms` and so on), all at once.
fn checked(spec: &PoolSpec, offered: &Capabilities) -> Result<PoolDef> {
    let health: Vec<FieldError> = spec
        .health
        .iter()
        .flat_map(HealthOverrides::problems)
        .map(|(field, message)| FieldError {
            field: format!("health.{field}"),
            message,
        })
        .chain(
            spec.forwarding
                .and_then(|f| offered.check_forwarding(f).err())
                .map(|message| FieldError {
                    field: "forwarding".into(),
                    message,
                }),
        )
        .chain(threshold_problems(spec))
        .collect();
    match PoolDef::from_spec(spec, |s| offered.check_scheduler(s)) {
        Ok(def) if health.is_empty() => Ok(def),
        Ok(_) => Err(StoreError::Invalid(health)),
        Err(mut errors) => {
            errors.extend(health);
            Err(StoreError::Invalid(errors))
        }
    }
}

fn to_json(spec: &PoolSpec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

const SELECT_POOL: &str = "SELECT name, ranges, auto_assign, avoid_buggy_ips, priority, clusters, namespaces, \
     scheduler, hold_seconds, health, forwarding, capacity_warning_percent, capacity_critical_percent, \
     created_at, updated_at FROM pools";

/// Reads every pool and address into a fresh allocation state.
pub(super) async fn load_ipam(conn: &mut SqliteConnection) -> Result<Ipam> {
    let mut ipam = Ipam::new();
    let rows: Vec<PoolRow> = sqlx::query_as(SELECT_POOL).fetch_all(&mut *conn).await?;
    for row in rows {
        ipam.load_pool(def_of(&row.spec()?)?);
    }
    let mut users: BTreeMap<u128, VecMap<Arc<ServiceKey>, Vec<crate::ipam::PortKey>>> = BTreeMap::new();
    let links = sqlx::query(
        "SELECT sa.ip, sa.cluster, sa.namespace, sa.name, s.spec FROM service_addresses sa \
         JOIN services s USING (cluster, namespace, name)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in links {
        let ip = blob_ip(row.try_get::<&[u8], _>(0)?)?;
        let key = ServiceKey {
            cluster: row.try_get(1)?,
            namespace: row.try_get(2)?,
            name: row.try_get(3)?,
        };
        let ports = super::services::ports_of(row.try_get::<Option<String>, _>(4)?.as_deref())?;
        users.entry(ip).or_default().insert(Arc::new(key), ports);
    }
    let addrs = sqlx::query(
        "SELECT ip, pool, cluster, sharing_key, state, held_namespace, held_name, held_uid, held_until FROM addresses",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in addrs {
        let ip = blob_ip(row.try_get::<&[u8], _>(0)?)?;
        let cluster: String = row.try_get(2)?;
        let held = match row.try_get::<Option<i64>, _>(8)? {
            Some(until) => Some(Box::new(Hold {
                key: ServiceKey {
                    cluster: cluster.clone(),
                    namespace: row.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
                    name: row.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
                },
                uid: row.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
                until,
            })),
            None => None,
        };
        let info = AddrInfo {
            pool: Arc::from(row.try_get::<&str, _>(1)?),
            cluster: Arc::from(cluster),
            sharing_key: row.try_get(3)?,
            users: users.remove(&ip).unwrap_or_default(),
            held,
        };
        ipam.load_addr(ip, info);
    }
    Ok(ipam)
}

impl Store {
    pub async fn list_pools(&self) -> Result<Vec<Pool>> {
        let rows: Vec<PoolRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_POOL} ORDER BY priority DESC, name"
        )))
        .fetch_all(self.read())
        .await?;
        let counts = self.usage_counts(None).await?;
        rows.iter()
            .map(|r| pool_of(r, counts.get(&r.name).unwrap_or(&Counts::new())))
            .collect()
    }

    pub async fn get_pool(&self, name: &str) -> Result<Pool> {
        let row: Option<PoolRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_POOL} WHERE name = $1")))
            .bind(name)
            .fetch_optional(self.read())
            .await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("pool '{name}' does not exist")))?;
        let counts = self.usage_counts(Some(name)).await?;
        pool_of(&row, counts.get(name).unwrap_or(&Counts::new()))
    }

    /// (allocated, held) per pool and family; expired holds count as free.
    async fn usage_counts(&self, pool: Option<&str>) -> Result<BTreeMap<String, Counts>> {
        // IPv4 is stored IPv4-mapped: ::ffff:a.b.c.d. The prefix is bound, and the sums count
        // with CASE, so the text is the same in both dialects (no blob literal, no SUM of a
        // boolean).
        const COUNTS: &str = "SELECT pool, CASE WHEN substr(ip, 1, 12) = $1 THEN 1 ELSE 0 END, \
             SUM(CASE WHEN state = 'allocated' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'held' AND held_until > $2 THEN 1 ELSE 0 END) FROM addresses";
        let v4_prefix = ip_blob(0xffff_0000_0000)[..12].to_vec();
        let rows = match pool {
            Some(p) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COUNTS} WHERE pool = $3 GROUP BY pool, 2"
                )))
                .bind(v4_prefix)
                .bind(super::now())
                .bind(p)
                .fetch_all(self.read())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{COUNTS} GROUP BY pool, 2")))
                    .bind(v4_prefix)
                    .bind(super::now())
                    .fetch_all(self.read())
                    .await?
            }
        };
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for row in rows {
            let family = match row.try_get::<i64, _>(1)? {
                1 => IpFamily::Ipv4,
                _ => IpFamily::Ipv6,
            };
            let a: i64 = row.try_get(2)?;
            let h: i64 = row.try_get(3)?;
            out.entry(row.try_get(0)?)
                .or_default()
                .insert(family, (a.max(0) as u64, h.max(0) as u64));
        }
        Ok(out)
    }

    pub async fn create_pool(&self, actor: &str, spec: PoolSpec) -> Result<Pool> {
        let def = checked(&spec, &self.capabilities())?;
        let actor = actor.to_owned();
        let name = spec.name.clone();
        self.write(move |w, now| {
            Box::pin(async move {
                if w.ipam.pool(&def.name).is_some() {
                    return Err(StoreError::Conflict(format!("pool '{}' already exists", def.name)));
                }
                w.ipam.check_pool(&def, None, now)?;
                let mut tx = begin(&mut w.conn).await?;
                insert_or_update(&mut tx, &spec, now, true).await?;
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "pool.create",
                    &format!("pool/{}", spec.name),
                    None,
                    Some(&to_json(&spec)),
                )
                .await?;
                tx.commit().await?;
                w.ipam.put_pool(def, None);
                Ok(())
            })
        })
        .await?;
        self.get_pool(&name).await
    }

    pub async fn patch_pool(&self, actor: &str, name: &str, patch: PoolPatch) -> Result<Pool> {
        let actor = actor.to_owned();
        let name = name.to_owned();
        let name2 = name.clone();
        let offered = self.capabilities();
        self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                let row: Option<PoolRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_POOL} WHERE name = $1")))
                        .bind(&name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let old = row
                    .ok_or_else(|| StoreError::NotFound(format!("pool '{name}' does not exist")))?
                    .spec()?;
                let new = PoolSpec {
                    name: old.name.clone(),
                    ranges: patch.ranges.unwrap_or_else(|| old.ranges.clone()),
                    auto_assign: patch.auto_assign.unwrap_or(old.auto_assign),
                    avoid_buggy_ips: patch.avoid_buggy_ips.unwrap_or(old.avoid_buggy_ips),
                    priority: patch.priority.unwrap_or(old.priority),
                    clusters: patch.clusters.unwrap_or_else(|| old.clusters.clone()),
                    namespaces: patch.namespaces.unwrap_or_else(|| old.namespaces.clone()),
                    scheduler: patch.scheduler.unwrap_or_else(|| old.scheduler.clone()),
                    hold_seconds: patch.hold_seconds.unwrap_or(old.hold_seconds),
                    // `Some(None)` is an explicit `null`: the overrides go.
                    health: patch.health.unwrap_or(old.health),
                    forwarding: patch.forwarding.unwrap_or(old.forwarding),
                    capacity_warning_percent: patch.capacity_warning_percent.unwrap_or(old.capacity_warning_percent),
                    capacity_critical_percent: patch.capacity_critical_percent.unwrap_or(old.capacity_critical_percent),
                };
                if new == old {
                    return Ok(());
                }
                let def = checked(&new, &offered)?;
                w.ipam.check_pool(&def, Some(&name), now)?;
                // Expired holds that the new ranges leave out go now: nothing may point outside.
                let gone: Vec<u128> = w
                    .ipam
                    .expired_in_pool(&name, now)
                    .into_iter()
                    .filter(|ip| !def.contains(*ip))
                    .collect();
                for ip in &gone {
                    sqlx::query("DELETE FROM addresses WHERE ip = $1")
                        .bind(ip_blob(*ip))
                        .execute(&mut *tx)
                        .await?;
                }
                insert_or_update(&mut tx, &new, now, false).await?;
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "pool.update",
                    &format!("pool/{name}"),
                    Some(&to_json(&old)),
                    Some(&to_json(&new)),
                )
                .await?;
                tx.commit().await?;
                w.ipam.forget(&gone);
                w.ipam.put_pool(def, Some(&name));
                Ok(())
            })
        })
        .await?;
        self.get_pool(&name2).await
    }

    pub async fn delete_pool(&self, actor: &str, name: &str) -> Result<()> {
        let actor = actor.to_owned();
        let name = name.to_owned();
        self.write(move |w, now| {
            Box::pin(async move {
                let mut tx = begin(&mut w.conn).await?;
                let row: Option<PoolRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_POOL} WHERE name = $1")))
                        .bind(&name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let old = row
                    .ok_or_else(|| StoreError::NotFound(format!("pool '{name}' does not exist")))?
                    .spec()?;
                w.ipam.check_pool_delete(&name, now)?;
                let gone = w.ipam.expired_in_pool(&name, now);
                for ip in &gone {
                    sqlx::query("DELETE FROM addresses WHERE ip = $1")
                        .bind(ip_blob(*ip))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM pools WHERE name = $1")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "pool.delete",
                    &format!("pool/{name}"),
                    Some(&to_json(&old)),
                    None,
                )
                .await?;
                tx.commit().await?;
                w.ipam.forget(&gone);
                w.ipam.remove_pool(&name);
                Ok(())
            })
        })
        .await
    }
}

async fn insert_or_update(conn: &mut SqliteConnection, spec: &PoolSpec, now: i64, insert: bool) -> Result<()> {
    let sql = if insert {
        "INSERT INTO pools (ranges, auto_assign, avoid_buggy_ips, priority, clusters, namespaces, scheduler, \
         hold_seconds, name, created_at, updated_at, health, forwarding, capacity_warning_percent, \
         capacity_critical_percent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14)"
    } else {
        "UPDATE pools SET ranges = $1, auto_assign = $2, avoid_buggy_ips = $3, priority = $4, clusters = $5, \
         namespaces = $6, scheduler = $7, hold_seconds = $8, updated_at = $10, health = $11, forwarding = $12, \
         capacity_warning_percent = $13, capacity_critical_percent = $14 WHERE name = $9"
    };
    let health = spec
        .health
        .map(|h| serde_json::to_string(&h))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("pool '{}': health: {e}", spec.name)))?;
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    sqlx::query(sql)
        .bind(json(&spec.ranges))
        .bind(flag(spec.auto_assign))
        .bind(flag(spec.avoid_buggy_ips))
        .bind(i64::from(spec.priority))
        .bind(json(&spec.clusters))
        .bind(json(&spec.namespaces))
        .bind(&spec.scheduler)
        .bind(i64::try_from(spec.hold_seconds).unwrap_or(i64::MAX))
        .bind(&spec.name)
        .bind(now)
        .bind(health)
        .bind(spec.forwarding.map(edgelb_api::Forwarding::as_str))
        .bind(i64::from(spec.capacity_warning_percent))
        .bind(i64::from(spec.capacity_critical_percent))
        .execute(conn)
        .await
        .map_err(|e| StoreError::on_unique(e, || format!("pool '{}' already exists", spec.name)))?;
    Ok(())
}

/// (allocated, held) of one pool, per family.
type Counts = BTreeMap<IpFamily, (u64, u64)>;

fn pool_of(row: &PoolRow, counts: &Counts) -> Result<Pool> {
    let spec = row.spec()?;
    let def = def_of(&spec)?;
    let utilization = |used: u128, total: u128| match total {
        0 => 0.0,
        t => (used as f64 / t as f64).min(1.0),
    };
    let level = |used, total| {
        CapacityLevel::of(
            used,
            total,
            spec.capacity_warning_percent,
            spec.capacity_critical_percent,
        )
    };
    let families: Vec<FamilyUsage> = [IpFamily::Ipv4, IpFamily::Ipv6]
        .into_iter()
        .filter(|f| def.has_family(*f))
        .map(|family| {
            let total = def.family_capacity(family);
            let (allocated, held) = counts.get(&family).copied().unwrap_or((0, 0));
            let used = u128::from(allocated) + u128::from(held);
            FamilyUsage {
                family,
                total: total.to_string(),
                allocated,
                held,
                free: total.saturating_sub(used).to_string(),
                utilization: utilization(used, total),
                level: level(used, total),
            }
        })
        .collect();
    let total = def.capacity();
    let (allocated, held) = counts.values().fold((0, 0), |(a, h), (fa, fh)| (a + fa, h + fh));
    let used = u128::from(allocated) + u128::from(held);
    Ok(Pool {
        spec,
        usage: PoolUsage {
            total: total.to_string(),
            allocated,
            held,
            free: total.saturating_sub(used).to_string(),
            utilization: utilization(used, total),
            level: families.iter().map(|f| f.level).max().unwrap_or(CapacityLevel::Ok),
            families,
        },
        created_at: ts(row.created_at),
        updated_at: ts(row.updated_at),
    })
}
