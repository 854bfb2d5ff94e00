//! What the console's templates see: one struct per page (askama, auto-escaped), the shared
//! layout, and the formatting of times, counts and bars. No store calls here.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use edgelb_api::{Pool, PoolSpec};
use time::OffsetDateTime;
use time::macros::format_description;

pub use super::graphs::RangeNav;
use super::{ConsoleUser, Flash};
use crate::forwarding::{Capabilities, VsKey};
use crate::http::error::{MAX_FIELD_ERRORS, bounded};

/// What every signed-in page shows around its content.
#[derive(Debug, Clone)]
pub struct Layout {
    pub title: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub can_operate: bool,
    pub can_admin: bool,
    pub message: Option<String>,
    pub version: String,
    /// Pools past a capacity threshold: a banner each for the worst few, on every page...
    pub capacity: Vec<CapacityBanner>,
    /// ...and how many more there are.
    pub capacity_more: usize,
}

/// Banners a page shows at most; the others are counted in one line.
const MAX_CAPACITY_BANNERS: usize = 3;

/// A banner for a pool past one of its capacity thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityBanner {
    pub pool: String,
    /// `warning`, `critical` or `exhausted`.
    pub level: &'static str,
    pub message: String,
}

/// The banners for the pools past a threshold, worst first, then by name.
pub fn capacity_banners(pools: &[Pool]) -> Vec<CapacityBanner> {
    use edgelb_api::CapacityLevel;
    let mut out: Vec<(CapacityLevel, CapacityBanner)> = pools
        .iter()
        .filter(|p| p.usage.level > CapacityLevel::Ok)
        .map(|p| {
            let worst: Vec<_> = p.usage.families.iter().filter(|f| f.level == p.usage.level).collect();
            let families = worst.iter().map(|f| f.family.to_string()).collect::<Vec<_>>().join(" and ");
            let used = worst
                .iter()
                .map(|f| format!("{:.1}%", f.utilization * 100.0))
                .collect::<Vec<_>>()
                .join(" and ");
            let message = match p.usage.level {
                CapacityLevel::Exhausted => format!(
                    "has no free {families} address: a Service that needs one stays pending until a range is added or an address released."
                ),
                CapacityLevel::Critical => format!(
                    "is almost full: {used} of its {families} addresses in use (critical from {}%).",
                    p.spec.capacity_critical_percent
                ),
                _ => format!(
                    "is filling up: {used} of its {families} addresses in use (warning from {}%).",
                    p.spec.capacity_warning_percent
                ),
            };
            let banner = CapacityBanner {
                pool: p.spec.name.clone(),
                level: p.usage.level.as_str(),
                message,
            };
            (p.usage.level, banner)
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.pool.cmp(&b.1.pool)));
    out.into_iter().map(|(_, b)| b).collect()
}

impl Layout {
    pub fn new(user: &ConsoleUser, nav: &'static str, title: impl Into<String>, flash: &Flash) -> Layout {
        Layout {
            title: title.into(),
            nav,
            user: user.name.clone(),
            role: user.role.to_string(),
            csrf: user.csrf.clone(),
            can_operate: user.can_operate(),
            can_admin: user.can_admin(),
            message: flash.message.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: user.capacity.iter().take(MAX_CAPACITY_BANNERS).cloned().collect(),
            capacity_more: user.capacity.len().saturating_sub(MAX_CAPACITY_BANNERS),
        }
    }

    /// `aria-current` for the navigation entry `name`.
    pub fn current(&self, name: &str) -> &'static str {
        if self.nav == name { "page" } else { "false" }
    }
}

/// `2026-11-26 17:03:12 UTC`.
pub fn time(t: OffsetDateTime) -> String {
    let f = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC).format(f).unwrap_or_default()
}

/// `5 s`, `3 min`, `2 h 5 min`, `4 d 3 h`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// `3 min ago`, or `never`.
pub fn ago(t: Option<OffsetDateTime>) -> String {
    match t {
        Some(t) => format!("{} ago", duration(crate::store::now() - t.unix_timestamp())),
        None => "never".to_owned(),
    }
}

/// A pool's usage as the bar and the numbers beside it.
#[derive(Debug, Clone)]
pub struct Usage {
    pub total: String,
    pub allocated: u64,
    pub held: u64,
    pub free: String,
    /// Percentages (0..=100) of the bar's segments, as SVG widths.
    pub allocated_pct: String,
    pub held_pct: String,
    pub held_x: String,
    pub percent: String,
    /// For a dual-stack pool, each family's use (`IPv4 100.0% used, IPv6 0.0% used`): one family
    /// can run out while the pool as a whole looks empty. Empty for one family.
    pub by_family: String,
}

impl Usage {
    pub fn of(pool: &Pool) -> Usage {
        let u = &pool.usage;
        let total: f64 = u.total.parse().unwrap_or(0.0);
        let pct = |n: u64| {
            if total > 0.0 {
                (n as f64 / total * 100.0).min(100.0)
            } else {
                0.0
            }
        };
        let (a, h) = (pct(u.allocated), pct(u.held));
        Usage {
            total: u.total.clone(),
            allocated: u.allocated,
            held: u.held,
            free: u.free.clone(),
            allocated_pct: format!("{a:.2}"),
            held_pct: format!("{h:.2}"),
            held_x: format!("{a:.2}"),
            percent: format!("{:.1}", u.utilization * 100.0),
            by_family: match u.families.len() {
                0 | 1 => String::new(),
                _ => u
                    .families
                    .iter()
                    .map(|f| format!("{} {:.1}% used", f.family, f.utilization * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }
    }
}

/// A pool as a row of the dashboard and the pools list.
#[derive(Debug, Clone)]
pub struct PoolRow {
    pub name: String,
    pub ranges: Vec<String>,
    pub usage: Usage,
    pub scheduler: String,
    pub auto_assign: bool,
    pub priority: i32,
    pub scope: String,
    /// The pool's health-check overrides in words.
    pub health: String,
    /// Its capacity level: `ok`, `warning`, `critical` or `exhausted`.
    pub level: &'static str,
}

impl PoolRow {
    pub fn of(pool: &Pool) -> PoolRow {
        let s = &pool.spec;
        let list = |v: &[String], all: &str| if v.is_empty() { all.to_owned() } else { v.join(", ") };
        PoolRow {
            name: s.name.clone(),
            ranges: s.ranges.clone(),
            usage: Usage::of(pool),
            scheduler: s.scheduler.clone(),
            auto_assign: s.auto_assign,
            priority: s.priority,
            scope: format!(
                "clusters: {}; namespaces: {}",
                list(&s.clusters, "all"),
                list(&s.namespaces, "all")
            ),
            health: health_text(s.health.as_ref()),
            level: pool.usage.level.as_str(),
        }
    }
}

/// Health-check overrides in words, e.g. `interval 500 ms, fall 2; the rest from the appliance's
/// defaults`.
pub fn health_text(h: Option<&edgelb_api::HealthOverrides>) -> String {
    let Some(h) = h else {
        return "the appliance's defaults".to_owned();
    };
    let ms = |name: &str, v: Option<u32>| v.map(|v| format!("{name} {v} ms"));
    let n = |name: &str, v: Option<u32>| v.map(|v| format!("{name} {v}"));
    let set: Vec<String> = [
        ms("interval", h.interval_ms),
        ms("timeout", h.timeout_ms),
        n("rise", h.rise),
        n("fall", h.fall),
        h.jitter_percent.map(|v| format!("jitter {v} %")),
    ]
    .into_iter()
    .flatten()
    .collect();
    match set.len() {
        0 => "the appliance's defaults".to_owned(),
        5 => set.join(", "),
        _ => format!("{}; the rest from the appliance's defaults", set.join(", ")),
    }
}

/// An audit entry as a row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub time: String,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub change: String,
}

impl AuditRow {
    pub fn of(e: &edgelb_api::AuditEntry) -> AuditRow {
        let short = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let (b, a) = (short(&e.before), short(&e.after));
        let mut change = match (b.is_empty(), a.is_empty()) {
            (true, true) => String::new(),
            (true, false) => a,
            (false, true) => format!("was {b}"),
            (false, false) => format!("{b} → {a}"),
        };
        if change.chars().count() > 240 {
            change = change.chars().take(240).collect::<String>() + "…";
        }
        AuditRow {
            time: time(e.time),
            actor: e.actor.clone(),
            action: e.action.clone(),
            object: e.object.clone(),
            change,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub l: Layout,
    /// Rendered SVG graphs (empty without a history).
    pub charts: Vec<String>,
    pub ranges: RangeNav,
    pub pools: Vec<PoolRow>,
    pub clusters: usize,
    pub services: u64,
    pub vips: u64,
    pub held: u64,
    pub dataplane: DataplaneView,
    pub store: StoreView,
    pub audit: Vec<AuditRow>,
}

/// The store, as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct StoreView {
    pub kind: String,
    pub location: String,
    /// `answers in 0.21 ms`, or why it does not.
    pub state: String,
    pub answering: bool,
    pub errors: u64,
}

impl StoreView {
    pub fn of(h: &crate::store::StoreHealth) -> StoreView {
        StoreView {
            kind: h.kind.to_owned(),
            location: h.location.clone(),
            state: h.state(),
            answering: h.answering,
            errors: h.errors,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "pools.html")]
pub struct PoolsPage {
    pub l: Layout,
    pub pools: Vec<PoolRow>,
}

/// An allocation as a row.
#[derive(Debug, Clone)]
pub struct AllocationRow {
    pub ip: String,
    pub state: &'static str,
    pub pool: String,
    pub cluster: String,
    pub services: Vec<String>,
    pub since: String,
    pub held_left: String,
}

impl AllocationRow {
    pub fn of(a: &edgelb_api::Allocation) -> AllocationRow {
        let held = a.state == edgelb_api::AllocationState::Held;
        AllocationRow {
            ip: a.ip.to_string(),
            state: if held { "held" } else { "allocated" },
            pool: a.pool.clone(),
            cluster: a.cluster.clone(),
            services: a
                .services
                .iter()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect(),
            since: time(a.since),
            held_left: match a.held_until {
                Some(t) if held => {
                    let left = t.unix_timestamp() - crate::store::now();
                    if left > 0 {
                        format!("{} left", duration(left))
                    } else {
                        "expired, free on next sweep".to_owned()
                    }
                }
                _ => String::new(),
            },
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "pool.html")]
pub struct PoolPage {
    pub l: Layout,
    /// Its usage over time, and when it runs out, in words.
    pub chart: Option<(String, String)>,
    pub ranges: RangeNav,
    pub pool: PoolRow,
    pub spec: PoolSpec,
    pub created: String,
    pub updated: String,
    pub allocations: Vec<AllocationRow>,
    pub held: Vec<AllocationRow>,
    pub more: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "service.html")]
pub struct ServicePage {
    pub l: Layout,
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<String>,
    pub pool: String,
    pub has_history: bool,
    pub ranges: RangeNav,
    /// Per address and port: its graphs and real servers.
    pub sections: Vec<super::graphs::PortSection>,
}

/// Errors of a form, by field; messages not tied to a field go under `""`.
#[derive(Debug, Clone, Default)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

impl FieldErrors {
    /// Adds a message to `field`; like the API's errors, a field lists at most
    /// [`MAX_FIELD_ERRORS`] messages, each bounded, so a huge form cannot make a huge page.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        let list = self.0.entry(field.to_owned()).or_default();
        match list.len().cmp(&MAX_FIELD_ERRORS) {
            Ordering::Less => list.push(bounded(&message.into())),
            Ordering::Equal => list.push("…and more: fix these first".to_owned()),
            Ordering::Greater => {}
        }
    }

    pub fn of(&self, field: &str) -> &[String] {
        self.0.get(field).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `aria-invalid` of an input.
    pub fn invalid(&self, field: &str) -> &'static str {
        if self.has(field) { "true" } else { "false" }
    }
}

/// The pool form's fields as typed, so a refused form comes back as the user left it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct PoolForm {
    pub name: String,
    /// One range per line.
    pub ranges: String,
    pub auto_assign: Option<String>,
    pub avoid_buggy_ips: Option<String>,
    pub priority: String,
    /// Comma- or space-separated.
    pub clusters: String,
    pub namespaces: String,
    pub scheduler: String,
    pub hold_seconds: String,
    /// A method's name, or empty for the appliance's default.
    pub forwarding: String,
    pub capacity_warning_percent: String,
    pub capacity_critical_percent: String,
}

impl PoolForm {
    /// The forwarding choices: (value, label, selected).
    pub fn forwarding_choices(&self) -> Vec<(&'static str, &'static str, bool)> {
        let mut out = vec![("", "the appliance's default", self.forwarding.is_empty())];
        out.extend(edgelb_api::Forwarding::ALL.into_iter().map(|f| {
            let label = match f {
                edgelb_api::Forwarding::Fullnat => "fullnat: source NAT, any node route",
                edgelb_api::Forwarding::Nat => "nat: client IP kept, appliance is the nodes' route",
                edgelb_api::Forwarding::Direct => "direct: client IP kept, nodes on this segment",
                edgelb_api::Forwarding::Tunnel => "tunnel: client IP kept, IP-in-IP to the nodes",
            };
            (f.as_str(), label, self.forwarding == f.as_str())
        }));
        out
    }

    pub fn of(spec: &PoolSpec) -> PoolForm {
        PoolForm {
            name: spec.name.clone(),
            ranges: spec.ranges.join("\n"),
            auto_assign: spec.auto_assign.then(|| "on".to_owned()),
            avoid_buggy_ips: spec.avoid_buggy_ips.then(|| "on".to_owned()),
            priority: spec.priority.to_string(),
            clusters: spec.clusters.join(", "),
            namespaces: spec.namespaces.join(", "),
            scheduler: spec.scheduler.clone(),
            hold_seconds: spec.hold_seconds.to_string(),
            forwarding: spec.forwarding.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            capacity_warning_percent: spec.capacity_warning_percent.to_string(),
            capacity_critical_percent: spec.capacity_critical_percent.to_string(),
        }
    }

    pub fn new_default() -> PoolForm {
        PoolForm {
            auto_assign: Some("on".into()),
            priority: "0".into(),
            scheduler: "wlc".into(),
            hold_seconds: "600".into(),
            capacity_warning_percent: edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT.to_string(),
            capacity_critical_percent: edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT.to_string(),
            ..PoolForm::default()
        }
    }
}

/// The schedulers the pool form suggests: those the forwarding backend offers, each with what it
/// does where we know it.
pub fn scheduler_choices(offered: &Capabilities) -> Vec<(String, &'static str)> {
    offered
        .schedulers
        .iter()
        .map(|s| {
            let name = s.as_str();
            let what = SCHEDULER_NAMES.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| *d);
            (name.to_owned(), what)
        })
        .collect()
}

/// What each IPVS scheduler does, in words.
const SCHEDULER_NAMES: &[(&str, &str)] = &[
    ("rr", "round robin"),
    ("wrr", "weighted round robin"),
    ("lc", "least connection"),
    ("wlc", "weighted least connection"),
    ("lblc", "locality-based least connection"),
    ("lblcr", "locality-based least connection with replication"),
    ("dh", "destination hashing"),
    ("sh", "source hashing"),
    ("sed", "shortest expected delay"),
    ("nq", "never queue"),
    ("fo", "weighted failover"),
    ("ovf", "weighted overflow"),
    ("mh", "maglev hashing"),
    ("twos", "weighted random twos choice"),
];

#[derive(Template, WebTemplate)]
#[template(path = "pool_form.html")]
pub struct PoolFormPage {
    pub l: Layout,
    /// `None` to create, the pool's name to edit.
    pub editing: Option<String>,
    pub form: PoolForm,
    pub errors: FieldErrors,
    pub schedulers: Vec<(String, &'static str)>,
}

#[derive(Template, WebTemplate)]
#[template(path = "pool_delete.html")]
pub struct PoolDeletePage {
    pub l: Layout,
    pub pool: PoolRow,
    pub refusal: Option<String>,
}

/// The allocations page's filters as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AllocationQuery {
    pub ip: String,
    pub pool: String,
    pub cluster: String,
    pub namespace: String,
    pub service: String,
    pub cursor: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "allocations.html")]
pub struct AllocationsPage {
    pub l: Layout,
    pub q: AllocationQuery,
    pub pools: Vec<String>,
    pub clusters: Vec<String>,
    pub rows: Vec<AllocationRow>,
    pub error: Option<String>,
    pub next: Option<String>,
    pub first: Option<String>,
    pub filtered: bool,
}

/// A Service's virtual service as shown.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub key: String,
    pub cluster: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    pub scheduler: String,
    /// `fullnat`, `nat`, `direct` or `tunnel`; empty while only reserved.
    pub forwarding: &'static str,
    pub policy: String,
    pub affinity: String,
    pub real_servers: Vec<RealServer>,
    pub pending: bool,
    /// Whether the real servers come from the kernel (else from the node list).
    pub programmed: bool,
    pub connections: String,
    pub bytes: String,
    /// New connections per second and active connections at the last sample (10 s old at
    /// most), when the appliance keeps a history.
    pub now: String,
}

#[derive(Debug, Clone)]
pub struct RealServer {
    pub node: String,
    pub address: String,
    /// The node ports traffic goes to, `:30080 :30443`.
    pub ports: String,
    pub weight: String,
    /// `ok`, `down`, `drained` or `unknown` (as a CSS class too).
    pub health: &'static str,
    pub connections: String,
    /// The health check: what is probed, since when in this state, the last probe's result;
    /// empty when it is not probed.
    pub probe: String,
}

impl RealServer {
    /// The badge and the health line of a programmed real server: its health check's state
    /// when it is probed, else what its weight says.
    pub fn health_of(r: &edgelb_api::RealServerStatus) -> (&'static str, String) {
        let Some(h) = &r.health else {
            return (if r.weight == 0 { "drained" } else { "ok" }, String::new());
        };
        let badge = match (h.state, r.weight) {
            (edgelb_api::HealthState::Down, _) => "down",
            (_, 0) => "drained",
            (edgelb_api::HealthState::Up, _) => "ok",
            (edgelb_api::HealthState::Unknown, _) => "unknown",
        };
        let state = match h.state {
            edgelb_api::HealthState::Up => "up",
            edgelb_api::HealthState::Down => "down",
            edgelb_api::HealthState::Unknown => "not decided",
        };
        let mut line = format!("{} {state} since {}", h.target, ago(Some(h.since)));
        if let Some(result) = &h.last_result {
            line.push_str(&format!(" · last probe: {result}"));
            if let Some(us) = h.last_latency_micros {
                line.push_str(&format!(" in {:.1} ms", us as f64 / 1000.0));
            }
        }
        (badge, line)
    }
}

/// The data plane's state in a line: mode, last pass, error.
#[derive(Debug, Clone)]
pub struct DataplaneView {
    pub mode: String,
    pub state: String,
    pub error: Option<String>,
    /// Drained (weight 0) real servers as `VIP:port -> address:port`.
    pub unhealthy: Vec<String>,
    pub real_servers: usize,
}

impl DataplaneView {
    /// From the data plane's summary, its count of real servers and the drained ones.
    pub fn of(
        st: &edgelb_api::DataplaneStatus,
        real_servers: usize,
        drained: &[(VsKey, std::net::SocketAddr)],
        mode: &str,
    ) -> DataplaneView {
        let mode = if st.mode.is_empty() {
            mode.to_owned()
        } else {
            st.mode.clone()
        };
        let state = if mode == "none" {
            "control plane only: nothing is forwarded".to_owned()
        } else {
            match st.last_sync {
                Some(t) => format!(
                    "last sync {} · {} passes, {} operations",
                    ago(Some(t)),
                    st.passes,
                    st.operations
                ),
                None => "not synced yet".to_owned(),
            }
        };
        let unhealthy = drained
            .iter()
            .map(|(k, a)| format!("{} {}/{} → {a}", k.vip, k.port, k.protocol))
            .collect();
        DataplaneView {
            mode,
            state,
            error: st.last_error.clone(),
            unhealthy,
            real_servers,
        }
    }
}

/// `10.0.0.1:80`, `[2001:db8::1]:80`.
pub fn sock(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// `1.2 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "services.html")]
pub struct ServicesPage {
    pub l: Layout,
    pub cluster: String,
    pub clusters: Vec<String>,
    pub rows: Vec<ServiceRow>,
    pub total: usize,
    pub page: usize,
    pub pages: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub dataplane: DataplaneView,
}

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub name: String,
    pub description: String,
    pub services: u64,
    pub nodes: u64,
    pub last_contact: String,
    pub last_contact_at: String,
    pub agent_version: String,
    pub created: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "clusters.html")]
pub struct ClustersPage {
    pub l: Layout,
    pub clusters: Vec<ClusterRow>,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub cluster: String,
    pub created_by: String,
    pub created: String,
    pub last_used: String,
}

/// The token form's fields as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct TokenForm {
    pub name: String,
    pub role: String,
    pub cluster: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub l: Layout,
    pub tokens: Vec<TokenRow>,
    pub clusters: Vec<String>,
    /// (token name, secret) of a token just created: shown this once.
    pub secret: Option<(String, String)>,
    pub form: TokenForm,
    pub errors: FieldErrors,
}

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub role: String,
    pub created: String,
    pub sessions: u64,
    pub me: bool,
}

/// The user form's fields as typed (never the password).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct UserForm {
    pub name: String,
    pub role: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub l: Layout,
    pub users: Vec<UserRow>,
    pub form: UserForm,
    pub errors: FieldErrors,
}

/// The address history's search as typed: an IP, or a Service's name (`namespace/name` or
/// `cluster/namespace/name` narrow it).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    pub q: String,
    pub cursor: String,
}

/// One entry of an address's history, as shown.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub time: String,
    pub ip: String,
    pub event: &'static str,
    /// `cluster/namespace/name`, or empty.
    pub service: String,
    pub uid: String,
    pub pool: String,
    /// For a hold: until when; for a reuse or an expiry: the hold it ended.
    pub held_until: String,
    /// The audit entries of the Service around that time: which request it was.
    pub audit: String,
}

impl HistoryRow {
    pub fn of(e: &edgelb_api::AddressEvent) -> HistoryRow {
        let service = match (&e.cluster, &e.namespace, &e.name) {
            (Some(c), Some(n), Some(s)) => format!("{c}/{n}/{s}"),
            _ => String::new(),
        };
        let at = e.at.unix_timestamp();
        let minute = |t: i64| {
            let f = format_description!("[year]-[month]-[day]T[hour]:[minute]");
            OffsetDateTime::from_unix_timestamp(t)
                .map(|t| t.format(f).unwrap_or_default())
                .unwrap_or_default()
        };
        let audit = match service.is_empty() {
            true => String::new(),
            false => format!(
                "/audit{}",
                query(&[
                    ("object", &format!("service/{service}")),
                    ("since", &minute(at)),
                    ("until", &minute(at + 60)),
                ])
            ),
        };
        HistoryRow {
            time: time(e.at),
            ip: e.ip.to_string(),
            event: e.event.as_str(),
            uid: e.uid.clone().unwrap_or_default(),
            pool: e.pool.clone().unwrap_or_default(),
            held_until: e.held_until.map(time).unwrap_or_default(),
            service,
            audit,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "history.html")]
pub struct HistoryPage {
    pub l: Layout,
    pub q: HistoryQuery,
    pub rows: Vec<HistoryRow>,
    pub error: Option<String>,
    pub next: Option<String>,
    pub first: Option<String>,
}

/// The audit page's filters as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    pub actor: String,
    pub object: String,
    pub since: String,
    pub until: String,
    pub cursor: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub l: Layout,
    pub q: AuditQuery,
    pub rows: Vec<AuditRow>,
    pub error: Option<String>,
    pub next: Option<String>,
    pub first: Option<String>,
    pub filtered: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub user: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub message: &'a str,
}

/// An error as a minimal page (it may be shown to someone not signed in).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the error page failed");
            (status, message.to_owned()).into_response()
        }
    }
}

/// A query string from non-empty pairs, percent-encoded: `?a=1&b=x%2Fy`.
pub fn query(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_pool_shows_each_familys_use() {
        let family = |family, total: &str, allocated, utilization| edgelb_api::FamilyUsage {
            family,
            total: total.into(),
            allocated,
            held: 0,
            free: "0".into(),
            utilization,
            level: edgelb_api::CapacityLevel::Ok,
        };
        let mut pool = Pool {
            spec: serde_json::from_value(serde_json::json!({"name": "ds", "ranges": ["10.0.0.0/31"]})).expect("spec"),
            usage: edgelb_api::PoolUsage {
                total: "258".into(),
                allocated: 2,
                held: 0,
                free: "256".into(),
                utilization: 2.0 / 258.0,
                families: vec![
                    family(edgelb_api::IpFamily::Ipv4, "2", 2, 1.0),
                    family(edgelb_api::IpFamily::Ipv6, "256", 0, 0.0),
                ],
                level: edgelb_api::CapacityLevel::Ok,
            },
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        let u = Usage::of(&pool);
        assert_eq!(
            (u.percent.as_str(), u.by_family.as_str()),
            ("0.8", "IPv4 100.0% used, IPv6 0.0% used")
        );
        pool.usage.families.truncate(1);
        assert_eq!(Usage::of(&pool).by_family, "", "one family says it once");
    }

    #[test]
    fn capacity_banners_come_worst_first_then_by_name_and_name_the_full_family() {
        use edgelb_api::{CapacityLevel, FamilyUsage, IpFamily, PoolUsage};
        let pool = |name: &str, v4: CapacityLevel, v6: CapacityLevel| {
            let family = |family, level, utilization| FamilyUsage {
                family,
                total: "100".into(),
                allocated: 0,
                held: 0,
                free: "1".into(),
                utilization,
                level,
            };
            Pool {
                spec: serde_json::from_value(serde_json::json!({"name": name, "ranges": ["10.0.0.0/31"]}))
                    .expect("spec"),
                usage: PoolUsage {
                    total: "200".into(),
                    allocated: 0,
                    held: 0,
                    free: "1".into(),
                    utilization: 0.5,
                    families: vec![family(IpFamily::Ipv4, v4, 0.96), family(IpFamily::Ipv6, v6, 0.85)],
                    level: v4.max(v6),
                },
                created_at: OffsetDateTime::UNIX_EPOCH,
                updated_at: OffsetDateTime::UNIX_EPOCH,
            }
        };
        use CapacityLevel::*;
        let banners = capacity_banners(&[
            pool("b", Warning, Ok),
            pool("quiet", Ok, Ok),
            pool("c", Ok, Exhausted),
            pool("a", Warning, Warning),
            pool("d", Critical, Warning),
        ]);
        let order: Vec<(&str, &str)> = banners.iter().map(|b| (b.pool.as_str(), b.level)).collect();
        assert_eq!(
            order,
            [
                ("c", "exhausted"),
                ("d", "critical"),
                ("a", "warning"),
                ("b", "warning")
            ]
        );
        assert_eq!(
            banners[0].message,
            "has no free IPv6 address: a Service that needs one stays pending until a range is added or an address released."
        );
        assert_eq!(
            banners[1].message,
            "is almost full: 96.0% of its IPv4 addresses in use (critical from 95%)."
        );
        assert_eq!(
            banners[2].message,
            "is filling up: 96.0% and 85.0% of its IPv4 and IPv6 addresses in use (warning from 80%)."
        );
    }

    #[test]
    fn a_form_lists_a_bounded_number_of_bounded_errors_per_field() {
        let mut e = FieldErrors::default();
        for i in 0..10_000 {
            e.add(
                "ranges",
                format!("line {i}: '{}' is not an IP address", "x".repeat(100_000)),
            );
        }
        e.add("name", "taken");
        let ranges = e.of("ranges");
        assert_eq!(ranges.len(), MAX_FIELD_ERRORS + 1);
        assert!(
            ranges[0].starts_with("line 0: 'xxx") && ranges[0].len() < 300,
            "{}",
            ranges[0]
        );
        assert_eq!(ranges[MAX_FIELD_ERRORS], "…and more: fix these first");
        assert_eq!(e.of("name"), ["taken"]);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(180), "3 min");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(-3), "0 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn a_probed_real_server_shows_its_health_check() {
        let mut r = edgelb_api::RealServerStatus {
            ip: "10.0.0.2".parse().expect("ip"),
            port: 30080,
            weight: 0,
            method: "masquerade".into(),
            active_connections: 0,
            inactive_connections: 0,
            counters: Default::default(),
            health: None,
        };
        assert_eq!(RealServer::health_of(&r), ("drained", String::new()));
        r.health = Some(edgelb_api::BackendHealth {
            target: "tcp://10.0.0.2:30080".into(),
            state: edgelb_api::HealthState::Down,
            since: OffsetDateTime::now_utc() - time::Duration::seconds(180),
            last_result: Some("connect: Connection refused".into()),
            last_probe: Some(OffsetDateTime::now_utc()),
            last_latency_micros: Some(1500),
        });
        let (badge, line) = RealServer::health_of(&r);
        assert_eq!(badge, "down");
        assert_eq!(
            line,
            "tcp://10.0.0.2:30080 down since 3 min ago · last probe: connect: Connection refused in 1.5 ms"
        );
    }

    #[test]
    fn drained_real_servers_are_the_unhealthy_ones() {
        let st = edgelb_api::DataplaneStatus {
            mode: "ipvs".into(),
            ..Default::default()
        };
        let key = VsKey::new("203.0.113.5".parse().expect("ip"), 80, edgelb_api::Protocol::Tcp);
        let drained = [(key, "10.0.0.2:30080".parse().expect("addr"))];
        let v = DataplaneView::of(&st, 2, &drained, "ipvs");
        assert_eq!(v.real_servers, 2);
        assert_eq!(v.unhealthy, ["203.0.113.5 80/TCP → 10.0.0.2:30080"]);
        assert_eq!(v.state, "not synced yet");
        assert_eq!(DataplaneView::of(&Default::default(), 0, &[], "none").mode, "none");
    }

    #[test]
    fn query_strings_skip_empty_values_and_escape_the_rest() {
        assert_eq!(query(&[("ip", ""), ("pool", "a b/c")]), "?pool=a%20b%2Fc");
        assert_eq!(query(&[("ip", "")]), "");
    }

    #[test]
    fn pool_health_overrides_read_as_words() {
        use edgelb_api::HealthOverrides;
        let o = |interval_ms, timeout_ms, rise, fall| HealthOverrides {
            interval_ms,
            timeout_ms,
            rise,
            fall,
            jitter_percent: None,
        };
        let cases: &[(Option<HealthOverrides>, &str)] = &[
            (None, "the appliance's defaults"),
            (Some(HealthOverrides::default()), "the appliance's defaults"),
            (
                Some(o(Some(500), None, None, Some(2))),
                "interval 500 ms, fall 2; the rest from the appliance's defaults",
            ),
            (
                Some(o(Some(1000), Some(300), Some(2), Some(3))),
                "interval 1000 ms, timeout 300 ms, rise 2, fall 3; the rest from the appliance's defaults",
            ),
            (
                Some(HealthOverrides {
                    jitter_percent: Some(20),
                    ..o(Some(1000), Some(300), Some(2), Some(3))
                }),
                "interval 1000 ms, timeout 300 ms, rise 2, fall 3, jitter 20 %",
            ),
        ];
        for (h, want) in cases {
            assert_eq!(health_text(h.as_ref()), *want, "{h:?}");
        }
    }
}
