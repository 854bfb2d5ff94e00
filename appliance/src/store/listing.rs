//! Paged listings for the console, whose pages show 50 rows of lists that can hold tens of
//! thousands: only the keys of one page are read here, the rows themselves through the same
//! getters as the API.

use super::{Result, Store};

/// A Service's key: (cluster, namespace, name).
pub type ServiceKey = (String, String, String);

impl Store {
    /// One page of Service keys in (cluster, namespace, name) order, and how many there are.
    pub async fn service_keys(&self, cluster: Option<&str>, offset: u64, limit: u32) -> Result<(Vec<ServiceKey>, u64)> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::from(limit.clamp(1, 1000));
        // Separate statements, so SQLite walks the primary key instead of scanning.
        let (keys, total): (Vec<ServiceKey>, (i64,)) = match cluster {
            Some(c) => (
                sqlx::query_as(
                    "SELECT cluster, namespace, name FROM services WHERE cluster = $1 \
                     ORDER BY namespace, name LIMIT $2 OFFSET $3",
                )
                .bind(c)
                .bind(limit)
                .bind(offset)
                .fetch_all(self.read())
                .await?,
                sqlx::query_as("SELECT COUNT(*) FROM services WHERE cluster = $1")
                    .bind(c)
                    .fetch_one(self.read())
                    .await?,
            ),
            None => (
                sqlx::query_as(
                    "SELECT cluster, namespace, name FROM services ORDER BY cluster, namespace, name LIMIT $1 OFFSET $2",
                )
                .bind(limit)
                .bind(offset)
                .fetch_all(self.read())
                .await?,
                sqlx::query_as("SELECT COUNT(*) FROM services")
                    .fetch_one(self.read())
                    .await?,
            ),
        };
        Ok((keys, total.0.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgelb_api::{ClusterSpec, PoolSpec, ServiceSpec};

    fn spec(uid: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "uid": uid,
            "ports": [{"protocol": "TCP", "port": 80, "node_port": 30080}],
        }))
        .expect("spec")
    }

    #[tokio::test]
    async fn service_keys_come_a_page_at_a_time_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let pool: PoolSpec =
            serde_json::from_value(serde_json::json!({"name": "p", "ranges": ["10.0.0.0/28"]})).expect("pool");
        store.create_pool("t", pool).await.expect("pool");
        for c in ["b", "a"] {
            let cluster = ClusterSpec {
                name: c.into(),
                description: String::new(),
            };
            store.create_cluster("t", cluster).await.expect("cluster");
            for n in ["y", "x", "z"] {
                store
                    .put_service("t", c, "ns", n, spec(&format!("{c}{n}")))
                    .await
                    .expect("service");
            }
        }
        let (keys, total) = store.service_keys(None, 2, 2).await.expect("page");
        assert_eq!(total, 6);
        let names: Vec<String> = keys.iter().map(|(c, _, n)| format!("{c}/{n}")).collect();
        assert_eq!(names, ["a/z", "b/x"]);
        let (keys, total) = store.service_keys(Some("b"), 0, 10).await.expect("page");
        assert_eq!((keys.len(), total), (3, 3));
    }
}
