//! Wire types of the edgelb REST API (`/api/v1`): the one definition of every request and
//! response that the appliance serves and the agent and users' automation send.
//!
//! Field names are snake_case. Requests refuse unknown fields, so a typo in automation is an
//! error instead of a silently ignored setting. Nothing here validates semantics (that a range
//! parses, that a port is not zero): the appliance does that and answers with a problem document
//! naming every field that needs fixing.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

pub mod objects;
pub mod schema;
pub use schema::{NAME_PATTERN, PASSWORD_CHARS, SCHEDULERS};

/// The API's path prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Transport protocol of a Service port (Kubernetes spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `externalTrafficPolicy` of a Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// `sessionAffinity` of a Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum SessionAffinity {
    #[default]
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// How a VIP's traffic reaches the nodes (per pool, and per Service over its pool's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPVS NAT to the NodePort, and source NAT to the appliance's address: works whatever the
    /// nodes' routes are; the pod sees the appliance, not the client.
    Fullnat,
    /// IPVS NAT to the NodePort without source NAT: the pod sees the client's address, and the
    /// appliance must be the nodes' route back to the clients.
    Nat,
    /// IPVS direct routing to `nodeIP:port` (the packet keeps `VIP:port` and goes to the node's
    /// MAC address): nodes on the appliance's network segment. The pod sees the client, and
    /// replies go from the node straight to the client.
    Direct,
    /// IPVS IP-in-IP to `nodeIP:port` (IPv4 in IPv4, IPv6 in IPv6): nodes behind routers, with
    /// a tunnel device up. The pod sees the client, and replies go straight to the client.
    Tunnel,
}

impl Forwarding {
    pub const ALL: [Forwarding; 4] = [
        Forwarding::Fullnat,
        Forwarding::Nat,
        Forwarding::Direct,
        Forwarding::Tunnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Fullnat => "fullnat",
            Forwarding::Nat => "nat",
            Forwarding::Direct => "direct",
            Forwarding::Tunnel => "tunnel",
        }
    }

    /// Whether the packets keep `VIP:port` and reach the node's own address at the Service's
    /// port (direct routing, tunnel), rather than its NodePort.
    pub fn keeps_vip(self) -> bool {
        matches!(self, Forwarding::Direct | Forwarding::Tunnel)
    }
}

impl std::fmt::Display for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Forwarding {
    type Err = String;

    fn from_str(s: &str) -> Result<Forwarding, String> {
        Forwarding::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown forwarding method '{s}': use fullnat, nat, direct or tunnel"))
    }
}

/// IP family, as in a Service's `ipFamilies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::Ipv4,
            IpAddr::V6(_) => IpFamily::Ipv6,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::Ipv4 => "IPv4",
            IpFamily::Ipv6 => "IPv6",
        })
    }
}

/// Roles a token or console user can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including tokens and users.
    Admin,
    /// Pools, clusters and allocations; not tokens or users.
    Operator,
    /// Read-only.
    Viewer,
    /// An in-cluster agent: only its own cluster's services, nodes and sync.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_true() -> bool {
    true
}

fn default_scheduler() -> String {
    "wlc".to_owned()
}

fn default_hold_seconds() -> u64 {
    600
}

/// The default capacity thresholds of a pool, in percent of its addresses in use.
pub const DEFAULT_CAPACITY_WARNING_PERCENT: u8 = 80;
pub const DEFAULT_CAPACITY_CRITICAL_PERCENT: u8 = 95;

fn default_capacity_warning() -> u8 {
    DEFAULT_CAPACITY_WARNING_PERCENT
}

fn default_capacity_critical() -> u8 {
    DEFAULT_CAPACITY_CRITICAL_PERCENT
}

/// How full a pool (or one address family of it) is, against its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CapacityLevel {
    /// Below the warning threshold.
    Ok,
    /// At or above `capacity_warning_percent`.
    Warning,
    /// At or above `capacity_critical_percent`.
    Critical,
    /// No free address left (100 %): a Service that needs one stays pending.
    Exhausted,
}

impl CapacityLevel {
    /// The level of `used` of `total` addresses, against thresholds in percent. Exact: integer
    /// arithmetic, so 95 of 100 is critical at 95 % and a pool of 2^64 is exhausted only at 0
    /// free.
    pub fn of(used: u128, total: u128, warning_percent: u8, critical_percent: u8) -> CapacityLevel {
        let at = |percent: u8| {
            used.checked_mul(100)
                .zip(total.checked_mul(u128::from(percent)))
                .is_some_and(|(u, t)| u >= t)
        };
        match () {
            _ if total > 0 && used >= total => CapacityLevel::Exhausted,
            _ if total > 0 && at(critical_percent) => CapacityLevel::Critical,
            _ if total > 0 && at(warning_percent) => CapacityLevel::Warning,
            _ => CapacityLevel::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CapacityLevel::Ok => "ok",
            CapacityLevel::Warning => "warning",
            CapacityLevel::Critical => "critical",
            CapacityLevel::Exhausted => "exhausted",
        }
    }
}

impl std::fmt::Display for CapacityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_families() -> Vec<IpFamily> {
    vec![IpFamily::Ipv4]
}

/// A pool as created (`POST /api/v1/pools`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Unique name: lowercase letters, digits and `-`, at most 63 characters.
    #[schema(value_type = schema::Name, example = "public")]
    pub name: String,
    /// CIDRs (`203.0.113.0/26`, `2001:db8:1::/64`) and inclusive ranges
    /// (`203.0.113.100-203.0.113.120`); IPv4 and IPv6 may mix.
    #[schema(value_type = Vec<schema::PoolRange>, min_items = 1,
        example = json!(["203.0.113.0/26", "203.0.113.100-203.0.113.120"]))]
    pub ranges: Vec<String>,
    /// Whether Services that name no pool may get addresses from this one.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Skip IPv4 addresses ending in `.0` and `.255`, which some clients mishandle.
    #[serde(default)]
    pub avoid_buggy_ips: bool,
    /// Pools with a higher priority are tried first when a Service names no pool.
    #[serde(default)]
    pub priority: i32,
    /// Clusters allowed to use this pool; empty means all.
    #[serde(default)]
    #[schema(value_type = Vec<schema::Name>)]
    pub clusters: Vec<String>,
    /// Namespaces allowed to use this pool; empty means all.
    #[serde(default)]
    #[schema(value_type = Vec<schema::Name>)]
    pub namespaces: Vec<String>,
    /// Default IPVS scheduler for Services in this pool (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, ...).
    #[serde(default = "default_scheduler")]
    #[schema(value_type = schema::Scheduler)]
    pub scheduler: String,
    /// Seconds a released address is held back for the Service that had it, at most a year
    /// (366 days).
    #[serde(default = "default_hold_seconds")]
    #[schema(maximum = 31_622_400)]
    pub hold_seconds: u64,
    /// Health-check settings of the Services in this pool; each `null` field takes the
    /// appliance's default, and a Service's own `health` wins field by field over these.
    #[serde(default)]
    #[serde(deserialize_with = "objects::option")]
    pub health: Option<HealthOverrides>,
    /// How its Services' traffic reaches the nodes; `null` takes the appliance's default
    /// (`--nat`: `fullnat` unless set to plain, `nat`). A Service's own `forwarding` wins.
    #[serde(default)]
    pub forwarding: Option<Forwarding>,
    /// A pool this full (percent of its addresses allocated or held, in any one address family)
    /// is shown as a warning in the console and on `/metrics`.
    #[serde(default = "default_capacity_warning")]
    #[schema(minimum = 1, maximum = 99)]
    pub capacity_warning_percent: u8,
    /// A pool this full is critical; more than `capacity_warning_percent`. 100 % is exhausted.
    #[serde(default = "default_capacity_critical")]
    #[schema(minimum = 2, maximum = 100)]
    pub capacity_critical_percent: u8,
}

/// A partial update of a pool (`PATCH /api/v1/pools/{name}`); absent fields stay as they are.
/// A field given replaces the stored value whole (`ranges` and `health` too: they are not
/// merged); `null` is the same as absent, except for `health`, where `null` removes the pool's
/// overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPatch {
    #[schema(value_type = Option<Vec<schema::PoolRange>>, min_items = 1)]
    pub ranges: Option<Vec<String>>,
    pub auto_assign: Option<bool>,
    pub avoid_buggy_ips: Option<bool>,
    pub priority: Option<i32>,
    #[schema(value_type = Option<Vec<schema::Name>>)]
    pub clusters: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<schema::Name>>)]
    pub namespaces: Option<Vec<String>>,
    #[schema(value_type = Option<schema::Scheduler>)]
    pub scheduler: Option<String>,
    #[schema(maximum = 31_622_400)]
    pub hold_seconds: Option<u64>,
    /// Absent: unchanged; `null`: remove the pool's overrides (Services take the appliance's
    /// defaults again); an object: replaces the overrides whole (a field left out of it is
    /// cleared, not kept).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HealthOverrides>)]
    pub health: Option<Option<HealthOverrides>>,
    /// Absent: unchanged; `null`: back to the appliance's default; a method: that one.
    #[serde(default, deserialize_with = "present_value", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Forwarding>)]
    pub forwarding: Option<Option<Forwarding>>,
    #[schema(minimum = 1, maximum = 99)]
    pub capacity_warning_percent: Option<u8>,
    #[schema(minimum = 2, maximum = 100)]
    pub capacity_critical_percent: Option<u8>,
}

/// [`present`] for a field whose value is not an object.
fn present_value<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Deserializes a field that is present (`null` included) as `Some`, so a PATCH can tell
/// "remove" (`null`) from "leave alone" (absent, which `#[serde(default)]` makes `None`).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::de::DeserializeOwned,
    D: serde::Deserializer<'de>,
{
    objects::option(d).map(Some)
}

/// Address counts of a pool. `total` and `free` are decimal strings because an IPv6 pool can
/// hold more addresses than a JSON number represents exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolUsage {
    #[schema(example = "64")]
    pub total: String,
    pub allocated: u64,
    pub held: u64,
    #[schema(example = "60")]
    pub free: String,
    /// `(allocated + held) / total`, from 0 to 1. A dual-stack pool can run out of one family
    /// while this is low: each family is allocated on its own, see `families`.
    pub utilization: f64,
    /// The worst level of its families: a dual-stack pool whose IPv4 addresses are all in use is
    /// exhausted, however empty its IPv6 range.
    pub level: CapacityLevel,
    /// The same counts for each address family the pool's ranges hold, IPv4 first.
    #[serde(default)]
    pub families: Vec<FamilyUsage>,
}

/// Address counts of one family of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FamilyUsage {
    pub family: IpFamily,
    #[schema(example = "64")]
    pub total: String,
    pub allocated: u64,
    pub held: u64,
    #[schema(example = "60")]
    pub free: String,
    /// `(allocated + held) / total`, from 0 to 1.
    pub utilization: f64,
    /// This family against the pool's thresholds.
    pub level: CapacityLevel,
}

/// A pool as stored, with its usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    #[serde(flatten)]
    pub spec: PoolSpec,
    pub usage: PoolUsage,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A cluster as created (`POST /api/v1/clusters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[schema(value_type = schema::Name, example = "prod")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

/// A cluster as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub name: String,
    pub description: String,
    pub services: u64,
    pub nodes: u64,
    /// When an agent of this cluster last called the API.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_contact: Option<OffsetDateTime>,
    /// The `User-Agent` of that call.
    pub agent_version: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub protocol: Protocol,
    #[schema(minimum = 1)]
    pub port: u16,
    #[schema(minimum = 1)]
    pub node_port: u16,
}

/// What the agent tells the appliance about a Service
/// (`PUT /api/v1/clusters/{cluster}/services/{namespace}/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The Service's `metadata.uid`.
    #[schema(min_length = 1, max_length = 128)]
    pub uid: String,
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects::vec")]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub health_check_node_port: Option<u16>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub session_affinity_timeout_seconds: Option<u32>,
    /// `loadBalancerSourceRanges`: CIDRs allowed to reach the VIP; empty means everyone.
    #[serde(default)]
    #[schema(value_type = Vec<schema::Cidr>)]
    pub source_ranges: Vec<String>,
    /// Pool to allocate from; `null` lets the appliance choose.
    #[serde(default)]
    #[schema(value_type = Option<schema::Name>)]
    pub pool: Option<String>,
    /// Specific addresses wanted (at most one per family).
    #[serde(default)]
    #[schema(value_type = Vec<schema::IpAddress>, max_items = 2)]
    pub requested_ips: Vec<IpAddr>,
    /// One family or both, each once.
    #[serde(default = "default_families")]
    #[schema(min_items = 1, max_items = 2)]
    pub ip_families: Vec<IpFamily>,
    /// Services of one cluster with the same key share one address when their ports differ.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 253)]
    pub sharing_key: Option<String>,
    /// IPVS scheduler; `null` takes the pool's.
    #[serde(default)]
    #[schema(value_type = Option<schema::Scheduler>)]
    pub scheduler: Option<String>,
    /// For `externalTrafficPolicy: Local`: the nodes that have ready endpoints of this Service.
    #[serde(default)]
    pub local_nodes: Option<Vec<String>>,
    /// This Service's own health-check settings; `null` takes the appliance's defaults.
    #[serde(default)]
    #[serde(deserialize_with = "objects::option")]
    pub health: Option<HealthOverrides>,
    /// How its traffic reaches the nodes (`edgelb.io/forwarding`); `null` takes its pool's.
    #[serde(default)]
    pub forwarding: Option<Forwarding>,
}

impl ServicePort {
    /// An unnamed port of `protocol` forwarded to `node_port`.
    pub fn new(protocol: Protocol, port: u16, node_port: u16) -> ServicePort {
        ServicePort {
            name: None,
            protocol,
            port,
            node_port,
        }
    }
}

impl ServiceSpec {
    /// A spec with these ports and every other field as a JSON body that leaves it out means:
    /// policy `Cluster`, no session affinity, no source ranges, one IPv4 address from any pool
    /// that allows it, the pool's scheduler and health settings.
    pub fn new(uid: impl Into<String>, ports: Vec<ServicePort>) -> ServiceSpec {
        ServiceSpec {
            uid: uid.into(),
            ports,
            external_traffic_policy: TrafficPolicy::default(),
            health_check_node_port: None,
            session_affinity: SessionAffinity::default(),
            session_affinity_timeout_seconds: None,
            source_ranges: Vec::new(),
            pool: None,
            requested_ips: Vec::new(),
            ip_families: default_families(),
            sharing_key: None,
            scheduler: None,
            local_nodes: None,
            health: None,
            forwarding: None,
        }
    }
}

/// The most a probe interval may be spread either way, in percent: past half the interval two
/// probes of one target could come almost together.
pub const MAX_JITTER_PERCENT: u32 = 50;

/// A Service's own health-check settings; each `null` takes the appliance's default
/// (`--health-interval-seconds` and the others). Where two Services share a probe target, the
/// first in (cluster, namespace, name) order sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthOverrides {
    /// Milliseconds between two probes of a target, 50 to 3,600,000.
    #[serde(default)]
    #[schema(minimum = 50, maximum = 3_600_000)]
    pub interval_ms: Option<u32>,
    /// Milliseconds a probe may take, 50 to 3,600,000 and at most the interval.
    #[serde(default)]
    #[schema(minimum = 50, maximum = 3_600_000)]
    pub timeout_ms: Option<u32>,
    /// Successes in a row that make a down target up, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub rise: Option<u32>,
    /// Failures in a row that make an up target down, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub fall: Option<u32>,
    /// Each interval is spread at random by up to this percentage either way, 0 to 50, so
    /// targets probed at one interval do not fire together.
    #[serde(default)]
    #[schema(maximum = 50)]
    pub jitter_percent: Option<u32>,
}

impl HealthOverrides {
    /// Every problem, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let ms = 50..=3_600_000;
        for (field, v) in [("interval_ms", self.interval_ms), ("timeout_ms", self.timeout_ms)] {
            if let Some(v) = v
                && !ms.contains(&v)
            {
                out.push((field, format!("{v} must be from 50 to 3600000 milliseconds")));
            }
        }
        if let (Some(t), Some(i)) = (self.timeout_ms, self.interval_ms)
            && t > i
        {
            out.push(("timeout_ms", format!("{t} is longer than the interval of {i} ms")));
        }
        for (field, v) in [("rise", self.rise), ("fall", self.fall)] {
            if let Some(v) = v
                && !(1..=100).contains(&v)
            {
                out.push((field, format!("{v} must be from 1 to 100")));
            }
        }
        if let Some(v) = self.jitter_percent
            && v > MAX_JITTER_PERCENT
        {
            out.push(("jitter_percent", format!("{v} must be from 0 to {MAX_JITTER_PERCENT}")));
        }
        out
    }
}

/// An address held for a Service, with the pool it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignedIp {
    #[schema(value_type = String, example = "203.0.113.5")]
    pub ip: IpAddr,
    pub pool: String,
}

/// A Service as the appliance holds it, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The addresses, in the order of `spec.ip_families`.
    #[schema(value_type = Vec<String>, example = json!(["203.0.113.5"]))]
    pub ips: Vec<IpAddr>,
    /// The pool of the first address.
    pub pool: Option<String>,
    pub addresses: Vec<AssignedIp>,
    /// `null` for a Service only reserved by a sync, whose spec the agent has not sent yet.
    pub spec: Option<ServiceSpec>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[schema(min_length = 1, max_length = 253)]
    pub name: String,
    /// The addresses IPVS forwards to, in order of preference (one per family is used).
    #[schema(value_type = Vec<schema::IpAddress>, min_items = 1)]
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_true")]
    pub ready: bool,
    #[serde(default = "default_true")]
    pub schedulable: bool,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    #[serde(default)]
    pub excluded: bool,
    /// The node says it cannot take IP-in-IP tunnel traffic (annotated `edgelb.io/tunnel:
    /// "false"` by its operator): Services with `forwarding: tunnel` send it none.
    #[serde(default)]
    pub no_tunnel: bool,
}

/// A cluster's whole node list (`PUT|GET /api/v1/clusters/{cluster}/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    #[serde(deserialize_with = "objects::vec")]
    pub nodes: Vec<Node>,
}

/// A Service as the agent sees it at start-up, with the addresses already in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncService {
    #[schema(value_type = schema::Name)]
    pub namespace: String,
    #[schema(value_type = schema::Name)]
    pub name: String,
    #[schema(min_length = 1, max_length = 128)]
    pub uid: String,
    /// Addresses in `status.loadBalancer.ingress`; the appliance reserves them for this Service.
    #[serde(default)]
    #[schema(value_type = Vec<schema::IpAddress>)]
    pub ips: Vec<IpAddr>,
    /// The Service's sharing key, so Services sharing an address reserve it together.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 253)]
    pub sharing_key: Option<String>,
}

/// The agent's complete list of its cluster's Services (`POST /api/v1/clusters/{cluster}/sync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    #[serde(deserialize_with = "objects::vec")]
    pub services: Vec<SyncService>,
}

/// A Service named by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[schema(value_type = Vec<String>)]
    pub ips: Vec<IpAddr>,
}

/// An address from a sync that could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncConflict {
    pub namespace: String,
    pub name: String,
    #[schema(value_type = String)]
    pub ip: IpAddr,
    /// Why, e.g. who holds the address or that it lies outside every pool.
    pub detail: String,
}

/// The answer to a sync. The appliance deletes nothing on a sync: `stale` lists what the agent
/// may release (after its own grace period) with `DELETE` on each Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    /// Services whose addresses are now reserved (newly or already).
    pub reserved: Vec<ServiceRef>,
    /// Services the appliance holds that the list lacks.
    pub stale: Vec<ServiceRef>,
    pub conflicts: Vec<SyncConflict>,
}

/// State of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    /// In use by one Service, or several sharing it.
    Allocated,
    /// Released, held back for its last Service until `held_until`.
    Held,
}

/// One address of a pool that is not free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    #[schema(value_type = String)]
    pub ip: IpAddr,
    pub pool: String,
    pub cluster: String,
    pub state: AllocationState,
    /// The Services using the address (several when shared); for a held address, the one it is
    /// held for.
    pub services: Vec<AllocationOwner>,
    pub sharing_key: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub held_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
}

/// What happened to an address (`GET /api/v1/address-history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressEventKind {
    /// A Service started using it: its first user, or one more sharing it.
    Assigned,
    /// A Service stopped using it; others may still share it.
    Released,
    /// Its last user released it: held back for that Service until `held_until`.
    Held,
    /// A held address was allocated again; the Service named is the one it was held for.
    Reused,
    /// Back in its pool, free for anyone.
    Freed,
    /// A hold ended and the address went back to its pool.
    Expired,
}

impl AddressEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressEventKind::Assigned => "assigned",
            AddressEventKind::Released => "released",
            AddressEventKind::Held => "held",
            AddressEventKind::Reused => "reused",
            AddressEventKind::Freed => "freed",
            AddressEventKind::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<AddressEventKind> {
        [
            AddressEventKind::Assigned,
            AddressEventKind::Released,
            AddressEventKind::Held,
            AddressEventKind::Reused,
            AddressEventKind::Freed,
            AddressEventKind::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One thing that happened to an address, newest first in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddressEvent {
    pub id: i64,
    #[schema(value_type = String)]
    pub ip: IpAddr,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub event: AddressEventKind,
    pub pool: Option<String>,
    pub cluster: Option<String>,
    /// The Service it concerns (the user, or the one it is or was held for); none for `freed`
    /// and `expired`.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    /// For `held` (and `reused`, `expired`: the hold it ended).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub held_until: Option<OffsetDateTime>,
}

/// A Service that uses (or is held) an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AllocationOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A page of a list, with the cursor of the next page (`null` on the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A token as requested (`POST /api/v1/tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    #[schema(value_type = schema::Name)]
    pub name: String,
    pub role: Role,
    /// Required for role `agent`, refused for the others.
    #[serde(default)]
    #[schema(value_type = Option<schema::Name>)]
    pub cluster: Option<String>,
}

/// A token as listed; the secret is never shown again after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub cluster: Option<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: Token,
    /// The bearer secret: `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// The role of a console user: an agent is a token, never a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// Everything, including tokens and users.
    Admin,
    /// Pools, clusters and allocations; not tokens or users.
    Operator,
    /// Read-only.
    Viewer,
}

impl UserRole {
    /// The user role of a role; `None` for `agent`.
    pub fn of(role: Role) -> Option<UserRole> {
        match role {
            Role::Admin => Some(UserRole::Admin),
            Role::Operator => Some(UserRole::Operator),
            Role::Viewer => Some(UserRole::Viewer),
            Role::Agent => None,
        }
    }
}

impl From<UserRole> for Role {
    fn from(r: UserRole) -> Role {
        match r {
            UserRole::Admin => Role::Admin,
            UserRole::Operator => Role::Operator,
            UserRole::Viewer => Role::Viewer,
        }
    }
}

impl std::fmt::Display for UserRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Role::from(*self).as_str())
    }
}

/// A console user as requested (`POST /api/v1/users`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    #[schema(value_type = schema::Name)]
    pub name: String,
    pub role: UserRole,
    #[schema(value_type = schema::Password)]
    pub password: String,
}

/// Changes to a console user (`PATCH /api/v1/users/{name}`); a field left out stays as it is.
/// A new password ends the user's console sessions; a new role applies to them at once.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<UserRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::Password>)]
    pub password: Option<String>,
}

/// Debug output never shows a password.
fn redacted(password: Option<&String>) -> Option<&'static str> {
    password.map(|_| "<redacted>")
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password", &redacted(Some(&self.password)))
            .finish()
    }
}

impl std::fmt::Debug for UserPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPatch")
            .field("role", &self.role)
            .field("password", &redacted(self.password.as_ref()))
            .finish()
    }
}

/// A console user as listed: never the password or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub role: UserRole,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Console sessions open now.
    pub sessions: u64,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// `token:<name>`, `user:<name>` or `cli`.
    pub actor: String,
    /// e.g. `pool.create`, `service.allocate`, `token.revoke`.
    pub action: String,
    /// e.g. `pool/public`, `service/prod/default/web`.
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A field that needs fixing, inside a problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `ranges[1]`.
    pub field: String,
    pub message: String,
}

/// An error (`application/problem+json`, RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to fix.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The problem `type` of a refusal because every pool a Service may use is out of addresses of
/// a family it needs (409): the Service stays pending until a range is added or an address
/// released. Other problems are `about:blank`.
pub const PROBLEM_POOL_EXHAUSTED: &str = "urn:edgelb:problem:pool-exhausted";

/// How the detail of an exhausted pool's refusal starts (the allocator's words).
pub const POOL_EXHAUSTED_DETAIL: &str = "pool exhausted: ";

/// What the appliance tells about itself (`GET /api/v1/info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    /// `ipvs` or `none`.
    pub dataplane: String,
    /// Who is calling, and with which role.
    pub actor: String,
    pub role: Role,
    /// The store the appliance keeps its state in, checked for this answer.
    #[serde(default)]
    pub store: StoreInfo,
}

/// The store the appliance keeps its state in, and how it answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoreInfo {
    /// `sqlite` (the embedded default) or `postgres` (shared by several appliances).
    #[schema(example = "sqlite")]
    pub kind: String,
    /// The database file, or the PostgreSQL URL without its password.
    #[schema(example = "/var/lib/edgelb/edgelb.db")]
    pub location: String,
    /// Whether the database answered the check.
    pub answering: bool,
    /// How long the check took, in milliseconds; `null` when it got no answer.
    pub latency_ms: Option<f64>,
    /// Why the check failed, when it did.
    pub last_error: Option<String>,
    /// Database errors since the appliance started.
    pub errors: u64,
}

/// Traffic counters from IPVS, since the virtual service or real server was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficCounters {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One real server (a node's address at the NodePort) of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RealServerStatus {
    #[schema(value_type = String, example = "10.1.0.11")]
    pub ip: IpAddr,
    pub port: u16,
    /// 0 means drained: no new connections.
    pub weight: u32,
    /// How IPVS sends it traffic: `masquerade` (NAT, for `fullnat` and `nat`), `route` (for
    /// `direct`) or `tunnel`; `other` for a method edgelb never sets.
    #[serde(default = "default_method")]
    #[schema(example = "masquerade")]
    pub method: String,
    pub active_connections: u32,
    pub inactive_connections: u32,
    pub counters: TrafficCounters,
    /// Its health check; `null` when it is not probed (health checking off, or not yet).
    #[serde(default)]
    pub health: Option<BackendHealth>,
}

fn default_method() -> String {
    "masquerade".to_owned()
}

/// A real server's damped health, as the appliance's health checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not probed enough yet; it gets traffic meanwhile.
    Unknown,
    Up,
    /// Failed `fall` probes in a row: weight 0 (drained), removed after the drain timeout.
    Down,
}

/// The health check of one real server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackendHealth {
    /// What is probed: `tcp://10.1.0.11:30080`, or `http://10.1.0.11:32000/healthz` (kube-proxy's
    /// `healthCheckNodePort`) for an `externalTrafficPolicy: Local` Service.
    pub target: String,
    pub state: HealthState,
    /// When `state` last changed (or probing began).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    /// The last probe's result: `ok`, or why it failed (`HTTP 503`, `connect: ...`).
    #[serde(default)]
    pub last_result: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_probe: Option<OffsetDateTime>,
    /// How long the last probe took, in microseconds.
    #[serde(default)]
    pub last_latency_micros: Option<u64>,
}

/// One virtual service (VIP, port, protocol) as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VirtualServiceStatus {
    #[schema(value_type = String, example = "203.0.113.5")]
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Whether the kernel holds it; `false` until the reconciler has programmed it.
    pub programmed: bool,
    pub scheduler: Option<String>,
    /// Persistence (`sessionAffinity: ClientIP`) in seconds; `null` for none.
    pub persistence_timeout_seconds: Option<u32>,
    pub counters: TrafficCounters,
    pub real_servers: Vec<RealServerStatus>,
}

/// What the data plane last did and holds: published by the reconciler after each pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DataplaneStatus {
    /// `ipvs` or `none`.
    pub mode: String,
    /// When the last pass (observe, plan, apply) ended without error.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync: Option<OffsetDateTime>,
    /// The last pass's error, `null` when it succeeded.
    pub last_error: Option<String>,
    /// Passes run since start.
    pub passes: u64,
    /// Microseconds those passes took, together.
    #[serde(default)]
    pub pass_micros: u64,
    /// Of the passes that succeeded, those that rebuilt the whole desired state from a store
    /// snapshot (at start, on every resync, after a failure, and for a change too large to
    /// redo Service by Service); the others redid only the Services a store change or a
    /// health change named.
    #[serde(default)]
    pub full_builds: u64,
    /// Operations applied since start.
    pub operations: u64,
    /// The virtual services edgelb owns, as last observed.
    pub virtual_services: Vec<VirtualServiceStatus>,
}

/// How far back a history reaches, and so its resolution: `1h` (10-second points), `24h`
/// (5-minute points) or `30d` (hourly points).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum HistoryRange {
    #[default]
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "30d")]
    Month,
}

/// When a history's points are: point `i` is the mean over the `step_seconds` that begin at
/// `start + i * step_seconds`. The last point holds the time of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryWindow {
    pub range: HistoryRange,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: OffsetDateTime,
    pub step_seconds: u32,
    pub points: u32,
}

/// Traffic over time, one value a point; `null` where the appliance has no sample (it was
/// down, or the counters started again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrafficHistory {
    pub connections_per_second: Vec<Option<f64>>,
    pub active_connections: Vec<Option<f64>>,
    /// Client to real server.
    pub bytes_in_per_second: Vec<Option<f64>>,
    pub bytes_out_per_second: Vec<Option<f64>>,
}

/// A real server's health changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthTransition {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    pub from: HealthState,
    pub to: HealthState,
    /// The probe result that made it change.
    pub reason: String,
}

/// One real server of a Service port, over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RealServerHistory {
    #[schema(value_type = String, example = "10.1.0.11")]
    pub ip: IpAddr,
    pub port: u16,
    pub traffic: TrafficHistory,
    /// Within the window, oldest first.
    pub transitions: Vec<HealthTransition>,
}

/// One address and port of a Service, over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PortHistory {
    #[schema(value_type = String, example = "203.0.113.5")]
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub traffic: TrafficHistory,
    /// Every real server it had in the window's retention, current or not.
    pub real_servers: Vec<RealServerHistory>,
}

/// A Service's traffic and its real servers' health over time
/// (`GET /api/v1/history/services/{cluster}/{namespace}/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceHistory {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub window: HistoryWindow,
    pub ports: Vec<PortHistory>,
}

/// A pool's addresses over time (`GET /api/v1/history/pools/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolHistory {
    pub name: String,
    pub window: HistoryWindow,
    pub allocated: Vec<Option<f64>>,
    pub held: Vec<Option<f64>>,
    /// Free addresses of the family that runs out first.
    pub free: Vec<Option<f64>>,
    /// Free addresses used up per day over the window (a least-squares fit; negative when
    /// addresses were given back); `null` with fewer than two points.
    pub consumed_per_day: Option<f64>,
    /// When the pool runs out at that rate; `null` when it does not (or not within a century).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub runs_out_at: Option<OffsetDateTime>,
}

/// The appliance over time (`GET /api/v1/history/appliance`): all traffic together, the
/// reconciler's passes, and every pool's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplianceHistory {
    pub window: HistoryWindow,
    pub traffic: TrafficHistory,
    /// Reconcile passes in each 10 seconds (their mean over longer points).
    pub passes: Vec<Option<f64>>,
    /// Their mean duration.
    pub pass_milliseconds: Vec<Option<f64>>,
    pub virtual_services: Vec<Option<f64>>,
    pub real_servers: Vec<Option<f64>>,
    pub pools: Vec<PoolHistory>,
}

/// A Service's forwarding in the kernel
/// (`GET /api/v1/clusters/{cluster}/services/{namespace}/{name}/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceStatus {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// `ipvs` or `none` (then nothing is forwarded and `virtual_services` is empty).
    pub dataplane: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// One per address and port of the Service.
    pub virtual_services: Vec<VirtualServiceStatus>,
    /// Why some nodes get none of its traffic, where the appliance knows a reason beyond
    /// eligibility and health (a node that cannot take tunnel traffic, say).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn capacity_levels_are_exact_at_their_thresholds_and_exhausted_only_when_nothing_is_free() {
        let of = |used, total| CapacityLevel::of(used, total, 80, 95);
        assert_eq!(
            [
                of(0, 100),
                of(79, 100),
                of(80, 100),
                of(94, 100),
                of(95, 100),
                of(99, 100),
                of(100, 100)
            ],
            [
                CapacityLevel::Ok,
                CapacityLevel::Ok,
                CapacityLevel::Warning,
                CapacityLevel::Warning,
                CapacityLevel::Critical,
                CapacityLevel::Critical,
                CapacityLevel::Exhausted
            ]
        );
        // No addresses at all is not a full pool; a /0 of IPv6 never overflows the arithmetic.
        assert_eq!(of(0, 0), CapacityLevel::Ok);
        assert_eq!(of(u128::from(u64::MAX), u128::MAX), CapacityLevel::Ok);
        assert_eq!(of(u128::MAX, u128::MAX), CapacityLevel::Exhausted);
        // One address short of full is critical, even where that is 99.9999 %.
        assert_eq!(of((1 << 64) - 1, 1 << 64), CapacityLevel::Critical);
    }

    use super::*;

    #[test]
    fn service_spec_from_the_documented_example_takes_defaults() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"uid": "6f1c", "ports": [{"name": "http", "protocol": "TCP", "port": 80, "node_port": 30080}],
                "external_traffic_policy": "Cluster", "health_check_node_port": null,
                "session_affinity_timeout_seconds": null, "source_ranges": [], "pool": null,
                "requested_ips": [], "ip_families": ["IPv4"], "sharing_key": null, "scheduler": null}"#,
        )
        .expect("documented example parses");
        assert_eq!(spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(spec.session_affinity, SessionAffinity::None);
        assert_eq!(spec.ip_families, vec![IpFamily::Ipv4]);
    }

    #[test]
    fn health_overrides_are_checked() {
        let ok: HealthOverrides = serde_json::from_str(r#"{"interval_ms": 500, "fall": 2}"#).expect("parses");
        assert!(ok.problems().is_empty());
        let bad = HealthOverrides {
            interval_ms: Some(10),
            timeout_ms: Some(100),
            rise: Some(0),
            fall: None,
            jitter_percent: Some(51),
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["interval_ms", "timeout_ms", "rise", "jitter_percent"]);
        let edge: HealthOverrides = serde_json::from_str(r#"{"jitter_percent": 0}"#).expect("parses");
        assert!(edge.problems().is_empty(), "no jitter is allowed");
        let edge: HealthOverrides = serde_json::from_str(r#"{"jitter_percent": 50}"#).expect("parses");
        assert!(edge.problems().is_empty(), "half the interval is allowed");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<PoolSpec>(r#"{"name": "a", "ranges": [], "prio": 3}"#)
            .expect_err("typo must not be ignored");
        assert!(err.to_string().contains("unknown field `prio`"), "{err}");
    }

    #[test]
    fn pool_patch_tells_a_removed_health_from_an_absent_one() {
        let cases: &[(&str, Option<Option<HealthOverrides>>)] = &[
            (r#"{}"#, None),
            (r#"{"priority": 3}"#, None),
            (r#"{"health": null}"#, Some(None)),
            (
                r#"{"health": {"fall": 2}}"#,
                Some(Some(HealthOverrides {
                    fall: Some(2),
                    ..HealthOverrides::default()
                })),
            ),
        ];
        for (body, want) in cases {
            let patch: PoolPatch = serde_json::from_str(body).expect(body);
            assert_eq!(patch.health, *want, "{body}");
            let again: PoolPatch =
                serde_json::from_value(serde_json::to_value(&patch).expect("serializes")).expect("round trip");
            assert_eq!(again, patch, "{body} survives a round trip");
        }
        let err = serde_json::from_str::<PoolPatch>(r#"{"health": {"intervall_ms": 5}}"#).expect_err("typo");
        assert!(err.to_string().contains("unknown field `intervall_ms`"), "{err}");
    }

    #[test]
    fn pool_spec_defaults_match_the_documentation() {
        let spec: PoolSpec = serde_json::from_str(r#"{"name": "a", "ranges": ["10.0.0.0/30"]}"#).expect("parses");
        assert!(spec.auto_assign);
        assert!(!spec.avoid_buggy_ips);
        assert_eq!(spec.scheduler, "wlc");
        assert_eq!(spec.hold_seconds, 600);
        assert_eq!(spec.health, None);
    }
}
