//! What the data plane needs, in one consistent read: pools (ranges and default scheduler),
//! Services with their specs and allocated addresses, and every cluster's nodes. One read
//! transaction, so the reconciler never sees a Service's new address with the old node list.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use edgelb_api::{AssignedIp, HealthOverrides, Node, ServiceSpec};
use sqlx::Row;

use super::{Result, Store, StoreError, blob_ip, json_vec};
use crate::forwarding::ParsedService;
use crate::ipam::{IpRange, ServiceKey, from_u128};

/// A pool as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPool {
    pub name: String,
    pub ranges: Vec<IpRange>,
    /// The default IPVS scheduler of its Services.
    pub scheduler: String,
    /// Health-check settings of its Services, below each Service's own
    /// (`reconcile::overrides::effective`); `None` when the pool overrides nothing.
    pub health: Option<HealthOverrides>,
    /// How its Services' traffic reaches the nodes, below each Service's own; `None`: the
    /// appliance's default.
    pub forwarding: Option<edgelb_api::Forwarding>,
}

/// A Service with its allocated addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotService {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// `None` while only reserved by a sync.
    pub spec: Option<ParsedService>,
    pub addresses: Vec<AssignedIp>,
}

/// Everything the reconciler builds the desired state from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneSnapshot {
    pub pools: Vec<SnapshotPool>,
    /// In (cluster, namespace, name) order.
    pub services: Vec<SnapshotService>,
    /// Nodes by cluster, in name order.
    pub nodes: BTreeMap<String, Vec<Node>>,
}

impl Store {
    /// The data plane's inputs, read in one transaction.
    pub async fn dataplane_snapshot(&self) -> Result<DataplaneSnapshot> {
        let mut tx = self.read().begin().await?;

        let mut pools = Vec::new();
        for row in sqlx::query("SELECT name, ranges, scheduler, health, forwarding FROM pools ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
        {
            let name: String = row.try_get(0)?;
            let ranges = json_vec(row.try_get::<&str, _>(1)?)?
                .iter()
                .map(|r| IpRange::parse(r).map_err(|e| StoreError::Corrupt(format!("pool '{name}': {e}"))))
                .collect::<Result<Vec<_>>>()?;
            let health = super::pools::health_of(&name, row.try_get::<Option<&str>, _>(3)?)?;
            let forwarding = super::pools::forwarding_of(&name, row.try_get::<Option<&str>, _>(4)?)?;
            pools.push(SnapshotPool {
                name,
                ranges,
                scheduler: row.try_get(2)?,
                health,
                forwarding,
            });
        }

        let mut addresses: BTreeMap<(String, String, String), Vec<AssignedIp>> = BTreeMap::new();
        for row in sqlx::query(
            "SELECT sa.cluster, sa.namespace, sa.name, sa.ip, a.pool FROM service_addresses sa \
             JOIN addresses a USING (ip) WHERE a.state = 'allocated' ORDER BY sa.ip",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let ip: IpAddr = from_u128(blob_ip(row.try_get::<&[u8], _>(3)?)?);
            addresses
                .entry((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                .or_default()
                .push(AssignedIp {
                    ip,
                    pool: row.try_get(4)?,
                });
        }

        let mut services = Vec::new();
        for row in sqlx::query("SELECT cluster, namespace, name, spec FROM services ORDER BY cluster, namespace, name")
            .fetch_all(&mut *tx)
            .await?
        {
            let key: (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let spec = stored_spec(row.try_get(3)?)?;
            let addrs = addresses.remove(&key).unwrap_or_default();
            let (cluster, namespace, name) = key;
            services.push(SnapshotService {
                cluster,
                namespace,
                name,
                spec,
                addresses: addrs,
            });
        }

        let mut nodes: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        for row in sqlx::query(
            "SELECT cluster, name, addresses, ready, schedulable, excluded, no_tunnel FROM nodes ORDER BY cluster, name",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let addrs: Vec<IpAddr> = serde_json::from_str(row.try_get::<&str, _>(2)?)
                .map_err(|e| StoreError::Corrupt(format!("node addresses: {e}")))?;
            nodes.entry(row.try_get(0)?).or_default().push(Node {
                name: row.try_get(1)?,
                addresses: addrs,
                ready: row.try_get::<i64, _>(3)? != 0,
                schedulable: row.try_get::<i64, _>(4)? != 0,
                excluded: row.try_get::<i64, _>(5)? != 0,
                no_tunnel: row.try_get::<i64, _>(6)? != 0,
            });
        }
        tx.commit().await?;
        Ok(DataplaneSnapshot { pools, services, nodes })
    }
}

impl Store {
    /// Some Services as [`dataplane_snapshot`](Store::dataplane_snapshot) shows them, in one
    /// read transaction; a key without a Service (deleted) is left out. For a reconcile pass
    /// that redoes only the Services a change named.
    pub async fn snapshot_services(&self, keys: &BTreeSet<ServiceKey>) -> Result<Vec<SnapshotService>> {
        let mut tx = self.read().begin().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let row = sqlx::query("SELECT spec FROM services WHERE cluster = $1 AND namespace = $2 AND name = $3")
                .bind(&key.cluster)
                .bind(&key.namespace)
                .bind(&key.name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { continue };
            let spec = stored_spec(row.try_get(0)?)?;
            let mut addresses = Vec::new();
            for row in sqlx::query(
                "SELECT sa.ip, a.pool FROM service_addresses sa JOIN addresses a USING (ip) \
                 WHERE sa.cluster = $1 AND sa.namespace = $2 AND sa.name = $3 AND a.state = 'allocated' ORDER BY sa.ip",
            )
            .bind(&key.cluster)
            .bind(&key.namespace)
            .bind(&key.name)
            .fetch_all(&mut *tx)
            .await?
            {
                addresses.push(AssignedIp {
                    ip: from_u128(blob_ip(row.try_get::<&[u8], _>(0)?)?),
                    pool: row.try_get(1)?,
                });
            }
            out.push(SnapshotService {
                cluster: key.cluster.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                spec,
                addresses,
            });
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// A stored spec column: `NULL` while the Service is only reserved by a sync.
/// A stored spec, parsed for forwarding. Specs are validated on writing, so one that does not
/// read back is corruption, as unreadable JSON is.
fn stored_spec(text: Option<String>) -> Result<Option<ParsedService>> {
    text.map(|t| {
        let spec: ServiceSpec =
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("service spec: {e}")))?;
        ParsedService::parse(spec).map_err(|e| StoreError::Corrupt(format!("service spec: {e}")))
    })
    .transpose()
}
