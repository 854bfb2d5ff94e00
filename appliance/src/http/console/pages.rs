//! The console's read-only pages: dashboard, pools and pool detail, allocations, services,
//! clusters and the audit log. Each reads through the same store functions as the REST API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use edgelb_api::{AllocationState, Node};

use super::graphs::{self, RangeNav, RangeQuery};
use super::view::{
    AllocationQuery, AllocationRow, AllocationsPage, AuditPage, AuditQuery, AuditRow, ClusterRow, ClustersPage,
    DashboardPage, DataplaneView, HistoryPage, HistoryQuery, HistoryRow, Layout, PoolPage, PoolRow, PoolsPage,
    RealServer, ServiceRow, ServicesPage, StoreView, ago, bytes, query, sock, time,
};
use super::{Console, ConsoleUser, PageResult};
use crate::forwarding::{self, StatusView, VsKey};
use crate::http::AppState;
use crate::store::{AddressHistoryFilter, AllocationFilter, AuditFilter};

/// Rows per page of the long lists.
const PAGE: u32 = 50;

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

pub async fn dashboard(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Query(range): Query<RangeQuery>,
) -> PageResult {
    let r = range.range();
    let pools = s.store.list_pools().await?;
    let charts = graphs::dashboard(&s, r, pools.iter().map(|p| p.spec.name.clone()).collect()).await?;
    let clusters = s.store.list_clusters().await?;
    let services = s.store.count_services().await?;
    let audit = s
        .store
        .list_audit(&AuditFilter {
            limit: 8,
            ..AuditFilter::default()
        })
        .await?;
    let flash = console.take_flash(&user);
    Ok(DashboardPage {
        l: Layout::new(&user, "dashboard", "Dashboard", &flash),
        charts,
        ranges: RangeNav::new("/", r),
        vips: pools.iter().map(|p| p.usage.allocated).sum(),
        held: pools.iter().map(|p| p.usage.held).sum(),
        pools: pools.iter().map(PoolRow::of).collect(),
        clusters: clusters.len(),
        services,
        dataplane: dataplane_view(&*s.dataplane.latest(), &s.info.dataplane),
        store: StoreView::of(&s.store.health()),
        audit: audit.items.iter().map(AuditRow::of).collect(),
    }
    .into_response())
}

pub async fn pools(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
) -> PageResult {
    let pools = s.store.list_pools().await?;
    let flash = console.take_flash(&user);
    Ok(PoolsPage {
        l: Layout::new(&user, "pools", "Pools", &flash),
        pools: pools.iter().map(PoolRow::of).collect(),
    }
    .into_response())
}

pub async fn pool(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
    Query(range): Query<RangeQuery>,
) -> PageResult {
    let pool = s.store.get_pool(&name).await?;
    let r = range.range();
    let chart = graphs::pool(&s, &name, r).await?;
    let page = s
        .store
        .list_allocations(&AllocationFilter {
            pool: Some(name.clone()),
            limit: 200,
            ..AllocationFilter::default()
        })
        .await?;
    let (held, allocations): (Vec<_>, Vec<_>) = page.items.iter().partition(|a| a.state == AllocationState::Held);
    let flash = console.take_flash(&user);
    Ok(PoolPage {
        l: Layout::new(&user, "pools", format!("Pool {name}"), &flash),
        ranges: RangeNav::new(&format!("/pools/{name}"), r),
        chart,
        pool: PoolRow::of(&pool),
        created: time(pool.created_at),
        updated: time(pool.updated_at),
        spec: pool.spec,
        allocations: allocations.into_iter().map(AllocationRow::of).collect(),
        held: held.into_iter().map(AllocationRow::of).collect(),
        more: page.next_cursor.is_some(),
    }
    .into_response())
}

pub async fn allocations(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Query(q): Query<AllocationQuery>,
) -> PageResult {
    let mut error = None;
    let ip = match opt(&q.ip) {
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                error = Some(format!(
                    "'{text}' is not an IP address: type one like 203.0.113.5 or 2001:db8::5"
                ));
                None
            }
        },
        None => None,
    };
    let filter = AllocationFilter {
        pool: opt(&q.pool),
        cluster: opt(&q.cluster),
        namespace: opt(&q.namespace),
        service: opt(&q.service),
        ip,
        cursor: opt(&q.cursor),
        limit: PAGE,
    };
    let (rows, next) = if error.is_some() {
        (Vec::new(), None)
    } else {
        match s.store.list_allocations(&filter).await {
            Ok(page) => (page.items.iter().map(AllocationRow::of).collect(), page.next_cursor),
            Err(crate::store::StoreError::Invalid(e)) => {
                error = Some(e.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; "));
                (Vec::new(), None)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let base = [
        ("ip", q.ip.as_str()),
        ("pool", q.pool.as_str()),
        ("cluster", q.cluster.as_str()),
        ("namespace", q.namespace.as_str()),
        ("service", q.service.as_str()),
    ];
    let link = |cursor: &str| {
        let mut pairs = base.to_vec();
        pairs.push(("cursor", cursor));
        format!("/allocations{}", query(&pairs))
    };
    let pools = s.store.list_pools().await?.into_iter().map(|p| p.spec.name).collect();
    let clusters = s.store.list_clusters().await?.into_iter().map(|c| c.name).collect();
    let flash = console.take_flash(&user);
    Ok(AllocationsPage {
        l: Layout::new(&user, "allocations", "Allocations", &flash),
        filtered: base.iter().any(|(_, v)| !v.trim().is_empty()),
        next: next.as_deref().map(link),
        first: (!q.cursor.is_empty()).then(|| link("")),
        q,
        pools,
        clusters,
        rows,
        error,
    }
    .into_response())
}

/// A Service's new connections per second and active connections at the history's last sample.
fn now_of(s: &AppState, programmed: &[edgelb_api::VirtualServiceStatus]) -> String {
    let Some(h) = &s.history else { return String::new() };
    let keys: Vec<crate::history::SeriesKey> = programmed
        .iter()
        .map(|v| crate::history::SeriesKey::Service(VsKey::new(v.ip, v.port, v.protocol)))
        .collect();
    let latest: Vec<crate::history::Values> = h.latest(&keys).into_iter().flatten().collect();
    if latest.is_empty() {
        return String::new();
    }
    let sum = |m: usize| {
        latest
            .iter()
            .map(|v| f64::from(v[m]))
            .filter(|x| !x.is_nan())
            .sum::<f64>()
    };
    format!("now: {:.1} new/s, {} active", sum(0), sum(1).round())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ServicesQuery {
    cluster: String,
    page: String,
}

pub async fn services(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Query(q): Query<ServicesQuery>,
) -> PageResult {
    let cluster = opt(&q.cluster);
    let wanted = q.page.parse::<usize>().unwrap_or(1).max(1);
    let (mut keys, mut total) = s
        .store
        .service_keys(cluster.as_deref(), ((wanted - 1) * PAGE as usize) as u64, PAGE)
        .await?;
    let pages = (total as usize).div_ceil(PAGE as usize).max(1);
    let page = wanted.min(pages);
    if page != wanted {
        // Past the end: show the last page.
        (keys, total) = s
            .store
            .service_keys(cluster.as_deref(), ((page - 1) * PAGE as usize) as u64, PAGE)
            .await?;
    }
    let mut shown = Vec::with_capacity(keys.len());
    for (c, ns, name) in &keys {
        match s.store.get_service(c, ns, name).await {
            Ok(svc) => shown.push(svc),
            // Deleted between the two reads: the page is one shorter.
            Err(crate::store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let total = total as usize;
    let pools: BTreeMap<String, (String, Option<edgelb_api::Forwarding>)> = s
        .store
        .list_pools()
        .await?
        .into_iter()
        .map(|p| (p.spec.name, (p.spec.scheduler, p.spec.forwarding)))
        .collect();
    let default_nat = s.store.capabilities().manages.nat;
    let mut nodes: BTreeMap<String, Vec<Node>> = BTreeMap::new();
    for svc in &shown {
        if !nodes.contains_key(&svc.cluster) {
            let list = s.store.get_nodes(&svc.cluster).await?;
            nodes.insert(svc.cluster.clone(), list.nodes);
        }
    }
    let status = s.dataplane.latest();
    let rows = shown
        .iter()
        .map(|svc| {
            let Some(spec) = &svc.spec else {
                return ServiceRow {
                    key: format!("{}/{}", svc.namespace, svc.name),
                    cluster: svc.cluster.clone(),
                    vips: svc.ips.iter().map(ToString::to_string).collect(),
                    ports: Vec::new(),
                    scheduler: String::new(),
                    forwarding: "",
                    policy: String::new(),
                    affinity: String::new(),
                    real_servers: Vec::new(),
                    pending: true,
                    programmed: false,
                    connections: String::new(),
                    bytes: String::new(),
                    now: String::new(),
                };
            };
            let cluster_nodes = nodes.get(&svc.cluster).map(Vec::as_slice).unwrap_or_default();
            let names: BTreeMap<IpAddr, &str> = cluster_nodes
                .iter()
                .flat_map(|n| n.addresses.iter().map(move |a| (*a, n.name.as_str())))
                .collect();
            let programmed: Vec<edgelb_api::VirtualServiceStatus> = svc
                .ips
                .iter()
                .flat_map(|ip| spec.ports.iter().map(move |p| (*ip, p.port, p.protocol)))
                .filter_map(|(ip, port, protocol)| status.virtual_service(VsKey::new(ip, port, protocol)))
                .collect();
            let (real_servers, connections, bytes_total) = if programmed.is_empty() {
                let chosen = cluster_nodes.iter().filter(|n| forwarding::admits(spec, n));
                let node_ports = spec
                    .ports
                    .iter()
                    .map(|p| format!(":{}", p.node_port))
                    .collect::<Vec<_>>()
                    .join(" ");
                let rs = chosen
                    .filter_map(|n| {
                        Some(RealServer {
                            node: n.name.clone(),
                            address: n.addresses.first()?.to_string(),
                            ports: node_ports.clone(),
                            weight: "—".to_owned(),
                            health: "unknown",
                            connections: "—".to_owned(),
                            probe: String::new(),
                        })
                    })
                    .collect();
                (rs, "—".to_owned(), "—".to_owned())
            } else {
                let mut rs = Vec::new();
                let (mut conns, mut total) = (0u64, 0u64);
                for vs in &programmed {
                    conns += vs.counters.connections;
                    total += vs.counters.bytes_in + vs.counters.bytes_out;
                    for r in &vs.real_servers {
                        let (health, probe) = RealServer::health_of(r);
                        rs.push(RealServer {
                            node: names.get(&r.ip).map(|n| (*n).to_owned()).unwrap_or_default(),
                            address: sock(r.ip, r.port),
                            ports: format!("from {}/{}", vs.port, vs.protocol),
                            weight: r.weight.to_string(),
                            health,
                            connections: format!(
                                "{} active, {} inactive",
                                r.active_connections, r.inactive_connections
                            ),
                            probe,
                        });
                    }
                }
                (rs, conns.to_string(), bytes(total))
            };
            let pool = svc.pool.as_ref().and_then(|p| pools.get(p));
            let scheduler = forwarding::scheduler_of(spec, pool.map(|(s, _)| s.as_str())).to_string();
            let method = forwarding::forwarding_of(spec, pool.and_then(|(_, f)| *f), default_nat);
            ServiceRow {
                key: format!("{}/{}", svc.namespace, svc.name),
                cluster: svc.cluster.clone(),
                vips: svc.ips.iter().map(ToString::to_string).collect(),
                ports: spec
                    .ports
                    .iter()
                    .map(|p| format!("{}/{} → node port {}", p.port, p.protocol, p.node_port))
                    .collect(),
                scheduler,
                forwarding: method.as_str(),
                policy: format!("{:?}", spec.external_traffic_policy),
                affinity: match forwarding::persistence_of(spec) {
                    None => "none".to_owned(),
                    Some(seconds) => format!("client IP, {seconds} s"),
                },
                real_servers,
                pending: false,
                now: now_of(&s, &programmed),
                programmed: !programmed.is_empty(),
                connections,
                bytes: bytes_total,
            }
        })
        .collect();
    let link = |p: usize| {
        let n = p.to_string();
        format!(
            "/services{}",
            query(&[("cluster", q.cluster.as_str()), ("page", n.as_str())])
        )
    };
    let clusters = s.store.list_clusters().await?.into_iter().map(|c| c.name).collect();
    let flash = console.take_flash(&user);
    Ok(ServicesPage {
        l: Layout::new(&user, "services", "Services", &flash),
        cluster: q.cluster.clone(),
        clusters,
        rows,
        total,
        page,
        pages,
        prev: (page > 1).then(|| link(page - 1)),
        next: (page < pages).then(|| link(page + 1)),
        dataplane: dataplane_view(&*status, &s.info.dataplane),
    }
    .into_response())
}

pub async fn clusters(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
) -> PageResult {
    let clusters = s.store.list_clusters().await?;
    let flash = console.take_flash(&user);
    Ok(ClustersPage {
        l: Layout::new(&user, "clusters", "Clusters", &flash),
        clusters: clusters
            .into_iter()
            .map(|c| ClusterRow {
                last_contact: ago(c.last_contact),
                last_contact_at: c.last_contact.map(time).unwrap_or_default(),
                agent_version: c.agent_version.unwrap_or_else(|| "—".to_owned()),
                created: time(c.created_at),
                name: c.name,
                description: c.description,
                services: c.services,
                nodes: c.nodes,
            })
            .collect(),
    }
    .into_response())
}

/// `2026-11-26T17:03` or `2026-11-26T17:03:12` (as `datetime-local` inputs send), in UTC.
fn parse_local(text: &str) -> Option<i64> {
    let long = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let short = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    time::PrimitiveDateTime::parse(text, long)
        .or_else(|_| time::PrimitiveDateTime::parse(text, short))
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

pub async fn audit(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let mut errors = Vec::new();
    let mut when = |field: &str, text: &str| match opt(text) {
        Some(t) => parse_local(&t).or_else(|| {
            errors.push(format!("{field}: '{t}' is not a time like 2026-11-26T17:00"));
            None
        }),
        None => None,
    };
    let since = when("from", &q.since);
    // An end given to the minute includes that whole minute.
    let until = when("to", &q.until).map(|t| if q.until.len() <= 16 { t + 59 } else { t });
    let cursor = match opt(&q.cursor) {
        Some(c) => c.parse::<i64>().ok(),
        None => None,
    };
    let rows_and_next = if errors.is_empty() {
        let page = s
            .store
            .list_audit(&AuditFilter {
                actor: opt(&q.actor),
                object: opt(&q.object),
                since,
                until,
                cursor,
                limit: PAGE,
            })
            .await?;
        (page.items.iter().map(AuditRow::of).collect(), page.next_cursor)
    } else {
        (Vec::new(), None)
    };
    let (rows, next) = rows_and_next;
    let base = [
        ("actor", q.actor.as_str()),
        ("object", q.object.as_str()),
        ("since", q.since.as_str()),
        ("until", q.until.as_str()),
    ];
    let link = |cursor: &str| {
        let mut pairs = base.to_vec();
        pairs.push(("cursor", cursor));
        format!("/audit{}", query(&pairs))
    };
    let flash = console.take_flash(&user);
    Ok(AuditPage {
        l: Layout::new(&user, "audit", "Audit log", &flash),
        filtered: base.iter().any(|(_, v)| !v.trim().is_empty()),
        next: next.as_deref().map(link),
        first: (!q.cursor.is_empty()).then(|| link("")),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        q,
        rows,
    }
    .into_response())
}

/// The address history: searched by IP or by a Service's name, newest first.
pub async fn history(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Query(q): Query<HistoryQuery>,
) -> PageResult {
    let text = q.q.trim();
    let mut filter = AddressHistoryFilter {
        cursor: opt(&q.cursor).and_then(|c| c.parse().ok()),
        limit: PAGE,
        ..AddressHistoryFilter::default()
    };
    let mut error = None;
    if let Ok(ip) = text.parse::<IpAddr>() {
        filter.ip = Some(ip);
    } else if !text.is_empty() {
        let parts: Vec<&str> = text.split('/').collect();
        let name_like =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        match parts.as_slice() {
            [name] if name_like(name) => filter.service = Some(name.to_string()),
            [ns, name] if name_like(ns) && name_like(name) => {
                filter.namespace = Some(ns.to_string());
                filter.service = Some(name.to_string());
            }
            [c, ns, name] if [c, ns, name].iter().all(|p| name_like(p)) => {
                filter.cluster = Some(c.to_string());
                filter.namespace = Some(ns.to_string());
                filter.service = Some(name.to_string());
            }
            _ => {
                error = Some(format!(
                    "'{text}' is neither an IP address nor a Service (name, namespace/name or cluster/namespace/name)"
                ))
            }
        }
    }
    let (rows, next) = match error {
        Some(_) => (Vec::new(), None),
        None => {
            let page = s.store.address_history(&filter).await?;
            (page.items.iter().map(HistoryRow::of).collect(), page.next_cursor)
        }
    };
    let link = |cursor: &str| format!("/history{}", query(&[("q", text), ("cursor", cursor)]));
    let flash = console.take_flash(&user);
    let title = match text.is_empty() {
        true => "Address history".to_owned(),
        false => format!("Address history: {text}"),
    };
    Ok(HistoryPage {
        l: Layout::new(&user, "history", title, &flash),
        next: next.as_deref().map(link),
        first: (!q.cursor.is_empty()).then(|| link("")),
        error,
        q,
        rows,
    }
    .into_response())
}

/// The data plane's banner, from what the reconciler published.
fn dataplane_view(published: &dyn StatusView, mode: &str) -> DataplaneView {
    let (real_servers, drained) = published.real_servers();
    DataplaneView::of(published.summary(), real_servers, &drained, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_inputs_parse_as_utc() {
        assert_eq!(parse_local("1970-01-01T00:01"), Some(60));
        assert_eq!(parse_local("1970-01-01T00:01:05"), Some(65));
        assert_eq!(parse_local("yesterday"), None);
    }
}
