//! Clusters: create, list, get, delete (with their nodes and agent tokens), and the agent's last
//! contact.

use edgelb_api::{Cluster, ClusterSpec};
use sqlx::{Row, SqliteConnection};

use super::{Result, Store, StoreError, audit, begin, ts};
use crate::ipam;

pub(super) async fn require_cluster(conn: &mut SqliteConnection, cluster: &str) -> Result<()> {
    let found: Option<(String,)> = sqlx::query_as("SELECT name FROM clusters WHERE name = $1")
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
                sqlx::query("INSERT INTO clusters (name, description, created_at) VALUES ($1, $2, $3)")
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
            "{} WHERE c.name = $1",
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
                    "SELECT namespace, name FROM services WHERE cluster = $1 ORDER BY namespace, name LIMIT 11",
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
                sqlx::query("DELETE FROM clusters WHERE name = $1")
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
            sqlx::query_as("SELECT last_contact, agent_version FROM clusters WHERE name = $1")
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
                sqlx::query("UPDATE clusters SET last_contact = $1, agent_version = $2 WHERE name = $3")
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
