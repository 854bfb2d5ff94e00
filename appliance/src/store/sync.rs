//! The agent's start-up sync: reserve what its Services' status already shows, report what the
//! appliance holds that the cluster lacks.

use std::collections::{BTreeSet, HashSet};

use edgelb_api::{FieldError, IpFamily, ServiceRef, SyncConflict, SyncRequest, SyncResponse};

use super::clusters::require_cluster;
use super::services::{check_k8s_name, write_decision};
use super::{Change, Result, Store, StoreError, audit, begin};
use crate::ipam::{Decision, Request, ServiceKey};

impl Store {
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
                                         VALUES ($1, $2, $3, $4, NULL, $5, $5) ON CONFLICT DO NOTHING",
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
}
