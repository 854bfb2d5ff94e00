//! The allocation and audit listings of the API, a page at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgelb_api::{Allocation, AllocationOwner, AllocationState, AuditEntry, Page};
use sqlx::Row;

use super::{Result, Store, StoreError, blob_ip, ip_blob, ts};
use crate::ipam::{from_u128, to_u128};

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

impl Store {
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
                 JOIN services s USING (cluster, namespace, name) WHERE sa.ip BETWEEN $1 AND $2 \
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

/// Which address events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AddressHistoryFilter {
    pub ip: Option<IpAddr>,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    /// A Service's name.
    pub service: Option<String>,
    /// The `id` of the last event of the previous page.
    pub cursor: Option<i64>,
    pub limit: u32,
}

impl Store {
    /// What happened to addresses, newest first: for one IP, for a Service (by name, in any
    /// namespace and cluster unless they are given), or everything.
    pub async fn address_history(&self, f: &AddressHistoryFilter) -> Result<Page<edgelb_api::AddressEvent>> {
        let limit = f.limit.clamp(1, 1000);
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, ip, at, event, pool, cluster, namespace, name, uid, held_until FROM address_events WHERE 1 = 1",
        );
        if let Some(c) = f.cursor {
            q.push(" AND id < ").push_bind(c);
        }
        if let Some(ip) = f.ip {
            q.push(" AND ip = ").push_bind(ip_blob(to_u128(ip)));
        }
        for (column, value) in [
            ("cluster", &f.cluster),
            ("namespace", &f.namespace),
            ("name", &f.service),
        ] {
            if let Some(v) = value {
                q.push(format!(" AND {column} = ")).push_bind(v.clone());
            }
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(self.read()).await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::new();
        for row in rows.iter().take(limit as usize) {
            let event: String = row.try_get(3)?;
            items.push(edgelb_api::AddressEvent {
                id: row.try_get(0)?,
                ip: from_u128(blob_ip(&row.try_get::<Vec<u8>, _>(1)?)?),
                at: ts(row.try_get(2)?),
                event: edgelb_api::AddressEventKind::parse(&event)
                    .ok_or_else(|| StoreError::Corrupt(format!("address event '{event}'")))?,
                pool: row.try_get(4)?,
                cluster: row.try_get(5)?,
                namespace: row.try_get(6)?,
                name: row.try_get(7)?,
                uid: row.try_get(8)?,
                held_until: row.try_get::<Option<i64>, _>(9)?.map(ts),
            });
        }
        let next_cursor = match more {
            true => items.last().map(|e| e.id.to_string()),
            false => None,
        };
        Ok(Page { items, next_cursor })
    }
}

/// `s` for a LIKE pattern with `ESCAPE '\'`: its own `\`, `%` and `_` match only themselves.
pub(super) fn like_escaped(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
