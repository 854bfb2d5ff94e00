//! The console's graphs: the dashboard's totals and pools, a pool's usage and run-out date, and
//! a Service's page with its ports and real servers over time. Every graph is drawn from the
//! answer the history API gives ([`crate::http::history`]), so the two always agree.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use edgelb_api::{HealthState, HistoryRange, PoolHistory};
use serde::Deserialize;

use super::chart::{Chart, Line, Mark};
use super::view::{Layout, ServicePage, time};
use super::{Console, ConsoleError, ConsoleUser, PageResult};
use crate::http::{ApiError, AppState, history};

#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    pub range: String,
}

impl RangeQuery {
    /// The range asked for; anything else is the default hour.
    pub fn range(&self) -> HistoryRange {
        RANGES
            .into_iter()
            .find(|r| range_str(*r) == self.range)
            .unwrap_or_default()
    }
}

const RANGES: [HistoryRange; 3] = [HistoryRange::Hour, HistoryRange::Day, HistoryRange::Month];

fn range_str(r: HistoryRange) -> &'static str {
    crate::history::Range::from(r).as_str()
}

/// The links that switch a page's graphs between ranges.
#[derive(Debug, Clone)]
pub struct RangeNav {
    pub current: &'static str,
    pub links: Vec<(&'static str, String)>,
}

impl RangeNav {
    pub fn new(path: &str, r: HistoryRange) -> RangeNav {
        RangeNav {
            current: range_str(r),
            links: RANGES
                .into_iter()
                .map(|x| (range_str(x), format!("{path}?range={}", range_str(x))))
                .collect(),
        }
    }
}

/// At most this many lines in a graph; the rest are in a table of their own.
const LINES: usize = 6;

/// The last value with data, for ordering (0 when none).
fn last(v: &[Option<f64>]) -> f64 {
    v.iter().rev().find_map(|x| *x).unwrap_or(0.0)
}

fn sum(v: &[Option<f64>]) -> f64 {
    v.iter().flatten().sum()
}

fn max(v: &[Option<f64>]) -> f64 {
    v.iter().flatten().fold(0.0, |a, b| a.max(*b))
}

fn console_error(e: ApiError) -> ConsoleError {
    ConsoleError::new(e.status, e.detail)
}

/// The dashboard's graphs; none when the appliance keeps no history.
pub async fn dashboard(s: &AppState, r: HistoryRange, pools: Vec<String>) -> Result<Vec<String>, ConsoleError> {
    if s.history.is_none() {
        return Ok(Vec::new());
    }
    let h = history::appliance_with(s, r, pools).await.map_err(console_error)?;
    let w = &h.window;
    let t = &h.traffic;
    let mut charts = vec![
        Chart {
            id: "chart-connections".into(),
            title: "New connections, all Services".into(),
            unit: "per second",
            window: w,
            lines: vec![Line {
                label: "new".into(),
                values: &t.connections_per_second,
            }],
            marks: Vec::new(),
        }
        .render(),
        Chart {
            id: "chart-active".into(),
            title: "Active connections, all Services".into(),
            unit: "connections",
            window: w,
            lines: vec![Line {
                label: "active".into(),
                values: &t.active_connections,
            }],
            marks: Vec::new(),
        }
        .render(),
        Chart {
            id: "chart-bytes".into(),
            title: "Traffic, all Services".into(),
            unit: "bytes per second",
            window: w,
            lines: vec![
                Line {
                    label: "in".into(),
                    values: &t.bytes_in_per_second,
                },
                Line {
                    label: "out".into(),
                    values: &t.bytes_out_per_second,
                },
            ],
            marks: Vec::new(),
        }
        .render(),
    ];
    if !h.pools.is_empty() {
        // The busiest few: fifty lines are no graph (each pool's page has its own).
        let mut pools: Vec<&PoolHistory> = h.pools.iter().collect();
        pools.sort_by(|a, b| {
            last(&b.allocated)
                .total_cmp(&last(&a.allocated))
                .then(a.name.cmp(&b.name))
        });
        let title = match pools.len() > LINES {
            true => format!("Addresses allocated, the {LINES} fullest of {} pools", pools.len()),
            false => "Addresses allocated, per pool".to_owned(),
        };
        pools.truncate(LINES);
        charts.push(
            Chart {
                id: "chart-pools".into(),
                title,
                unit: "addresses",
                window: w,
                lines: pools
                    .iter()
                    .map(|p| Line {
                        label: p.name.clone(),
                        values: &p.allocated,
                    })
                    .collect(),
                marks: Vec::new(),
            }
            .render(),
        );
    }
    charts.push(
        Chart {
            id: "chart-passes".into(),
            title: "Reconcile passes".into(),
            unit: "passes per 10 s; mean milliseconds",
            window: w,
            lines: vec![
                Line {
                    label: "passes".into(),
                    values: &h.passes,
                },
                Line {
                    label: "mean ms".into(),
                    values: &h.pass_milliseconds,
                },
            ],
            marks: Vec::new(),
        }
        .render(),
    );
    Ok(charts)
}

/// A pool's graph and what its trend says; nothing when the appliance keeps no history.
pub async fn pool(s: &AppState, name: &str, r: HistoryRange) -> Result<Option<(String, String)>, ConsoleError> {
    if s.history.is_none() {
        return Ok(None);
    }
    let p = history::pool(s, name, r).await.map_err(console_error)?;
    let chart = Chart {
        id: "chart-pool".into(),
        title: format!("Pool {} over time", p.name),
        unit: "addresses",
        window: &p.window,
        lines: vec![
            Line {
                label: "allocated".into(),
                values: &p.allocated,
            },
            Line {
                label: "held".into(),
                values: &p.held,
            },
        ],
        marks: Vec::new(),
    }
    .render();
    Ok(Some((chart, run_out(&p))))
}

/// When the pool runs out, in words.
pub fn run_out(p: &PoolHistory) -> String {
    let over = match p.window.range {
        HistoryRange::Hour => "the last hour",
        HistoryRange::Day => "the last 24 hours",
        HistoryRange::Month => "the last 30 days",
    };
    match (p.consumed_per_day, p.runs_out_at) {
        (None, _) => format!("Not enough history over {over} to tell when it runs out."),
        (Some(rate), Some(at)) => format!(
            "At the rate of {over} ({rate:.1} addresses a day), it runs out around {}.",
            time(at)
        ),
        (Some(rate), None) if rate > 0.0 => {
            format!("At the rate of {over} ({rate:.1} addresses a day), it does not run out within a century.")
        }
        (Some(_), None) => format!("It is not filling up: no more addresses are in use than {over} ago."),
    }
}

/// One address and port on a Service's page.
#[derive(Debug, Clone)]
pub struct PortSection {
    pub title: String,
    pub charts: Vec<String>,
    /// Every real server it had in the window's retention, drawn or not.
    pub real_servers: Vec<RealServerSummary>,
}

#[derive(Debug, Clone)]
pub struct RealServerSummary {
    pub address: String,
    pub mean_connections: String,
    pub max_active: String,
    pub transitions: usize,
    /// Whether it has a line in the graphs (the busiest do).
    pub drawn: bool,
}

#[derive(Debug, Deserialize)]
pub struct ServicePath {
    cluster: String,
    namespace: String,
    name: String,
}

fn mark_of(rs: &str, t: &edgelb_api::HealthTransition) -> Mark {
    let (kind, went) = match t.to {
        HealthState::Up => ("up", "came up"),
        HealthState::Down => ("down", "went down"),
        HealthState::Unknown => ("unknown", "became unknown"),
    };
    Mark {
        time: t.time,
        kind,
        label: format!("{rs} {went}: {}", t.reason),
    }
}

/// `/services/{cluster}/{namespace}/{name}`: a Service's ports and real servers over time.
pub async fn service(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(p): Path<ServicePath>,
    Query(q): Query<RangeQuery>,
) -> PageResult {
    let r = q.range();
    let svc = s.store.get_service(&p.cluster, &p.namespace, &p.name).await?;
    let path = format!("/services/{}/{}/{}", svc.cluster, svc.namespace, svc.name);
    let mut sections = Vec::new();
    if s.history.is_some() {
        let h = history::service(&s, &p.cluster, &p.namespace, &p.name, r)
            .await
            .map_err(console_error)?;
        for (pi, port) in h.ports.iter().enumerate() {
            let marks: Vec<Mark> = port
                .real_servers
                .iter()
                .flat_map(|rs| {
                    let name = format!("{}:{}", rs.ip, rs.port);
                    rs.transitions.iter().map(move |t| mark_of(&name, t))
                })
                .collect();
            // The port, and its busiest real servers over the window.
            let mut busiest: Vec<&edgelb_api::RealServerHistory> = port.real_servers.iter().collect();
            busiest.sort_by(|a, b| {
                sum(&b.traffic.connections_per_second).total_cmp(&sum(&a.traffic.connections_per_second))
            });
            busiest.truncate(LINES - 1);
            let per_rs = |f: fn(&edgelb_api::TrafficHistory) -> &Vec<Option<f64>>| -> Vec<Line<'_>> {
                std::iter::once(Line {
                    label: "all".into(),
                    values: f(&port.traffic),
                })
                .chain(busiest.iter().map(|rs| Line {
                    label: format!("{}:{}", rs.ip, rs.port),
                    values: f(&rs.traffic),
                }))
                .collect()
            };
            let vs = format!("{} {}/{}", port.ip, port.port, port.protocol);
            let charts = vec![
                Chart {
                    id: format!("chart-{pi}-connections"),
                    title: format!("New connections to {vs}"),
                    unit: "per second",
                    window: &h.window,
                    lines: per_rs(|t| &t.connections_per_second),
                    marks: marks.clone(),
                }
                .render(),
                Chart {
                    id: format!("chart-{pi}-active"),
                    title: format!("Active connections of {vs}"),
                    unit: "connections",
                    window: &h.window,
                    lines: per_rs(|t| &t.active_connections),
                    marks: Vec::new(),
                }
                .render(),
                Chart {
                    id: format!("chart-{pi}-bytes"),
                    title: format!("Traffic of {vs}"),
                    unit: "bytes per second",
                    window: &h.window,
                    lines: vec![
                        Line {
                            label: "in".into(),
                            values: &port.traffic.bytes_in_per_second,
                        },
                        Line {
                            label: "out".into(),
                            values: &port.traffic.bytes_out_per_second,
                        },
                    ],
                    marks: Vec::new(),
                }
                .render(),
            ];
            let real_servers = port
                .real_servers
                .iter()
                .map(|rs| RealServerSummary {
                    address: format!("{}:{}", rs.ip, rs.port),
                    mean_connections: super::chart::number(
                        (sum(&rs.traffic.connections_per_second)
                            / rs.traffic.connections_per_second.iter().flatten().count().max(1) as f64
                            * 100.0)
                            .round()
                            / 100.0,
                    ),
                    max_active: super::chart::number(max(&rs.traffic.active_connections)),
                    transitions: rs.transitions.len(),
                    drawn: busiest.iter().any(|b| b.ip == rs.ip && b.port == rs.port),
                })
                .collect();
            sections.push(PortSection {
                title: vs,
                charts,
                real_servers,
            });
        }
    }
    let flash = console.take_flash(&user);
    Ok(ServicePage {
        l: Layout::new(
            &user,
            "services",
            format!("Service {}/{}", svc.namespace, svc.name),
            &flash,
        ),
        cluster: svc.cluster.clone(),
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
        ips: svc.ips.iter().map(|i| i.to_string()).collect(),
        pool: svc.pool.clone().unwrap_or_default(),
        has_history: s.history.is_some(),
        ranges: RangeNav::new(&path, r),
        sections,
    }
    .into_response())
}
