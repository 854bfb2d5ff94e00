//! `GET /api/v1/history/...`: the appliance's time series ([`crate::history`]) as the API and
//! the console's graphs show them. The console draws from these same answers, so a graph and
//! the API never disagree.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use edgelb_api::{
    ApplianceHistory, HealthTransition, HistoryRange, HistoryWindow, PoolHistory, PortHistory, RealServerHistory,
    ServiceHistory, TrafficHistory,
};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;

use super::api::{ApiPath, ApiQuery};
use super::{ApiError, AppState, Caller};
use crate::forwarding::VsKey;
use crate::history::sampler::unix_now;
use crate::history::{History, Range, Series, SeriesKey, Transition};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/history/appliance", get(appliance_history))
        .route("/api/v1/history/pools/{name}", get(pool_history))
        .route(
            "/api/v1/history/services/{cluster}/{namespace}/{name}",
            get(service_history),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// `1h` (10-second points, the default), `24h` (5-minute points) or `30d` (hourly points).
    range: Option<HistoryRange>,
}

#[derive(Deserialize)]
pub struct ServicePath {
    cluster: String,
    namespace: String,
    name: String,
}

#[derive(Deserialize)]
pub struct PoolPath {
    name: String,
}

/// All traffic together, the reconciler's passes and the size of the kernel state, and every
/// pool's usage, over the range.
#[utoipa::path(get, path = "/api/v1/history/appliance", tag = "history", params(RangeQuery),
    responses((status = 200, body = ApplianceHistory), (status = 503, body = edgelb_api::Problem)))]
pub async fn appliance_history(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Json<ApplianceHistory>, ApiError> {
    caller.can_read("read the history")?;
    Ok(Json(appliance(&s, q.range.unwrap_or_default()).await?))
}

/// A pool's allocated, held and free addresses over the range, and when it runs out at the
/// rate seen in it.
#[utoipa::path(get, path = "/api/v1/history/pools/{name}", tag = "history", params(("name" = String, Path), RangeQuery),
    responses((status = 200, body = PoolHistory), (status = 404, body = edgelb_api::Problem),
        (status = 503, body = edgelb_api::Problem)))]
pub async fn pool_history(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PoolPath>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Json<PoolHistory>, ApiError> {
    caller.can_read("read the history")?;
    Ok(Json(pool(&s, &p.name, q.range.unwrap_or_default()).await?))
}

/// A pool's history as the API and its console page show it; a pool that does not exist is a
/// 404, whatever the history holds.
pub async fn pool(s: &AppState, name: &str, range: HistoryRange) -> Result<PoolHistory, ApiError> {
    let name = s.store.get_pool(name).await?.spec.name;
    let history = history_of(s)?;
    blocking(move || pool_of(&history, name, range, unix_now())).await
}

/// A Service's traffic over the range, per address and port and per real server (every one it
/// had, current or not), with its real servers' health transitions.
#[utoipa::path(get, path = "/api/v1/history/services/{cluster}/{namespace}/{name}", tag = "history",
    params(("cluster" = String, Path), ("namespace" = String, Path), ("name" = String, Path), RangeQuery),
    responses((status = 200, body = ServiceHistory), (status = 404, body = edgelb_api::Problem),
        (status = 503, body = edgelb_api::Problem)))]
pub async fn service_history(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ServicePath>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Json<ServiceHistory>, ApiError> {
    caller.can_cluster(&p.cluster, false, "read services")?;
    Ok(Json(
        service(&s, &p.cluster, &p.namespace, &p.name, q.range.unwrap_or_default()).await?,
    ))
}

fn history_of(s: &AppState) -> Result<History, ApiError> {
    s.history.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this appliance keeps no history (it serves without a data directory's history)",
        )
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the history: {e}")))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the history: {e}")))
}

fn time_of(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn window(s: &Series, range: HistoryRange) -> HistoryWindow {
    HistoryWindow {
        range,
        start: time_of(s.start),
        step_seconds: s.step as u32,
        points: s.points.len() as u32,
    }
}

fn column(s: &Series, m: usize) -> Vec<Option<f64>> {
    s.points
        .iter()
        .map(|p| (!p[m].is_nan()).then(|| round(f64::from(p[m]))))
        .collect()
}

/// Six significant digits are what an f32 holds; more would be noise in the JSON.
fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(5 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn traffic(s: &Series) -> TrafficHistory {
    TrafficHistory {
        connections_per_second: column(s, 0),
        active_connections: column(s, 1),
        bytes_in_per_second: column(s, 2),
        bytes_out_per_second: column(s, 3),
    }
}

/// The appliance's history as the API and the dashboard show it.
pub async fn appliance(s: &AppState, range: HistoryRange) -> Result<ApplianceHistory, ApiError> {
    let pools: Vec<String> = s.store.list_pools().await?.into_iter().map(|p| p.spec.name).collect();
    appliance_with(s, range, pools).await
}

/// [`appliance`] for pools already read.
pub async fn appliance_with(
    s: &AppState,
    range: HistoryRange,
    pools: Vec<String>,
) -> Result<ApplianceHistory, ApiError> {
    let history = history_of(s)?;
    blocking(move || {
        let now = unix_now();
        let mut keys = vec![SeriesKey::Totals, SeriesKey::Appliance];
        keys.extend(pools.iter().map(|p| SeriesKey::Pool(p.clone())));
        let mut all = history.series_many(&keys, Range::from(range), now)?.into_iter();
        let (Some(totals), Some(app)) = (all.next(), all.next()) else {
            return Err(std::io::Error::other("the history answered fewer series than asked"));
        };
        let pools = pools
            .into_iter()
            .zip(all)
            .map(|(p, s)| pool_from(p, range, &s))
            .collect();
        Ok(ApplianceHistory {
            window: window(&totals, range),
            traffic: traffic(&totals),
            passes: column(&app, 0),
            pass_milliseconds: column(&app, 1),
            virtual_services: column(&app, 2),
            real_servers: column(&app, 3),
            pools,
        })
    })
    .await
}

fn pool_of(history: &History, name: String, range: HistoryRange, now: i64) -> std::io::Result<PoolHistory> {
    let s = history.series(&SeriesKey::Pool(name.clone()), Range::from(range), now)?;
    Ok(pool_from(name, range, &s))
}

fn pool_from(name: String, range: HistoryRange, s: &Series) -> PoolHistory {
    let free = column(s, 2);
    let slope = fit(s, 2);
    let runs_out_at = match (slope, s.last(2)) {
        (Some(slope), Some((t, left))) if slope < 0.0 => {
            let secs = f64::from(left) / -slope;
            (secs < 100.0 * 365.0 * 86_400.0).then(|| time_of(t + secs as i64))
        }
        _ => None,
    };
    PoolHistory {
        name,
        window: window(s, range),
        allocated: column(s, 0),
        held: column(s, 1),
        free,
        consumed_per_day: slope.map(|k| round(-k * 86_400.0)),
        runs_out_at,
    }
}

/// The least-squares slope of metric `m` per second, over the points that have it.
fn fit(s: &Series, m: usize) -> Option<f64> {
    let pts: Vec<(f64, f64)> = s
        .points
        .iter()
        .enumerate()
        .filter(|(_, p)| !p[m].is_nan())
        .map(|(i, p)| ((i as i64 * s.step) as f64, f64::from(p[m])))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    (sxx > 0.0).then(|| sxy / sxx)
}

/// A Service's history as the API and its console page show it.
pub async fn service(
    s: &AppState,
    cluster: &str,
    namespace: &str,
    name: &str,
    range: HistoryRange,
) -> Result<ServiceHistory, ApiError> {
    let svc = s.store.get_service(cluster, namespace, name).await?;
    let history = history_of(s)?;
    let mut keys = Vec::new();
    if let Some(spec) = &svc.spec {
        for ip in &svc.ips {
            for port in &spec.ports {
                keys.push(VsKey::new(*ip, port.port, port.protocol));
            }
        }
    }
    let (ports, win) = blocking(move || {
        let now = unix_now();
        let r = Range::from(range);
        let transitions = history.transitions(&keys, now - r.span())?;
        // Every port's series and its real servers', read together.
        let mut wanted = Vec::new();
        let mut layout = Vec::new();
        for k in &keys {
            let rss = history.real_servers_of(*k);
            wanted.push(SeriesKey::Service(*k));
            wanted.extend(rss.iter().map(|a| SeriesKey::RealServer(*k, *a)));
            layout.push((*k, rss));
        }
        wanted.push(SeriesKey::Totals);
        let mut all = history.series_many(&wanted, r, now)?.into_iter();
        let mut ports = Vec::new();
        for (k, rss) in layout {
            let own = all.next().ok_or_else(|| std::io::Error::other("a series is missing"))?;
            let mut real_servers = Vec::new();
            for a in rss {
                let series = all.next().ok_or_else(|| std::io::Error::other("a series is missing"))?;
                real_servers.push(real_server(k, a, &series, &transitions));
            }
            ports.push(PortHistory {
                ip: k.vip,
                port: k.port,
                protocol: k.protocol,
                traffic: traffic(&own),
                real_servers,
            });
        }
        let last = all.next().ok_or_else(|| std::io::Error::other("a series is missing"))?;
        Ok((ports, window(&last, range)))
    })
    .await?;
    Ok(ServiceHistory {
        cluster: svc.cluster,
        namespace: svc.namespace,
        name: svc.name,
        window: win,
        ports,
    })
}

fn real_server(k: VsKey, a: SocketAddr, own: &Series, transitions: &[Transition]) -> RealServerHistory {
    RealServerHistory {
        ip: a.ip(),
        port: a.port(),
        traffic: traffic(own),
        transitions: transitions
            .iter()
            .filter(|t| t.vs == k && t.real_server == a)
            .map(|t| HealthTransition {
                time: time_of(t.time),
                from: t.from,
                to: t.to,
                reason: t.reason.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Options, Sample};

    fn pool_history(free: impl Fn(i64) -> f32) -> PoolHistory {
        let dir = tempfile::tempdir().expect("tmp");
        let t0 = 1_800_000_000;
        let h = History::open(dir.path(), t0, Options::default()).expect("open");
        for i in 0..60 {
            let sample = Sample {
                key: SeriesKey::Pool("public".into()),
                values: [0.0, 0.0, free(i), 0.0],
                counters: None,
                health: None,
            };
            h.record(t0 + i * 10, [sample]).expect("record");
        }
        pool_of(&h, "public".into(), HistoryRange::Hour, t0 + 590).expect("read")
    }

    #[test]
    fn a_pool_losing_an_address_every_ten_seconds_runs_out_when_its_last_one_goes() {
        let p = pool_history(|i| 1000.0 - i as f32);
        assert_eq!(p.consumed_per_day, Some(8640.0));
        // 941 left at the last point, one every 10 s.
        assert_eq!(p.runs_out_at, Some(time_of(1_800_000_000 + 590 + 9410)));
    }

    #[test]
    fn a_pool_that_gets_addresses_back_or_stays_flat_does_not_run_out() {
        let p = pool_history(|i| 100.0 + i as f32);
        assert_eq!(p.consumed_per_day, Some(-8640.0));
        assert_eq!(p.runs_out_at, None);
        let p = pool_history(|_| 100.0);
        assert_eq!((p.consumed_per_day, p.runs_out_at), (Some(0.0), None));
    }
}
