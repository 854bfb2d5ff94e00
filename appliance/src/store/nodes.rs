//! A cluster's node list: replaced whole by the agent, read by the API and the data plane.

use std::collections::HashSet;

use edgelb_api::{FieldError, Node, NodeList};
use sqlx::{Row, SqliteConnection};

use super::clusters::require_cluster;
use super::{Change, Result, Store, StoreError, audit, begin, flag};

impl Store {
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
                sqlx::query("DELETE FROM nodes WHERE cluster = $1").bind(&cluster).execute(&mut *tx).await?;
                for n in &list.nodes {
                    let addrs = serde_json::to_string(&n.addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    sqlx::query(
                        "INSERT INTO nodes (cluster, name, addresses, ready, schedulable, excluded, no_tunnel, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&cluster)
                    .bind(&n.name)
                    .bind(addrs)
                    .bind(flag(n.ready))
                    .bind(flag(n.schedulable))
                    .bind(flag(n.excluded))
                    .bind(flag(n.no_tunnel))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let summary = |nodes: &[Node]| {
                    serde_json::json!(nodes.iter().map(|n| serde_json::json!({
                        "name": n.name, "ready": n.ready, "schedulable": n.schedulable, "excluded": n.excluded,
                        "no_tunnel": n.no_tunnel, "addresses": n.addresses,
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
}

pub(super) async fn nodes_of(conn: &mut SqliteConnection, cluster: &str) -> Result<Vec<Node>> {
    let rows = sqlx::query(
        "SELECT name, addresses, ready, schedulable, excluded, no_tunnel FROM nodes WHERE cluster = $1 ORDER BY name",
    )
    .bind(cluster)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Node {
                name: r.try_get(0)?,
                addresses: serde_json::from_str(r.try_get::<&str, _>(1)?)
                    .map_err(|e| StoreError::Corrupt(format!("node addresses: {e}")))?,
                ready: r.try_get::<i64, _>(2)? != 0,
                schedulable: r.try_get::<i64, _>(3)? != 0,
                excluded: r.try_get::<i64, _>(4)? != 0,
                no_tunnel: r.try_get::<i64, _>(5)? != 0,
            })
        })
        .collect()
}
