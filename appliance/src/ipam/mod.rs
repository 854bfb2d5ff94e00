//! Pure allocation logic over IP pools: which address a Service gets, what a pool edit may do,
//! what a release leaves behind. No I/O and no clock: the store passes `now` in, asks for a
//! [`Decision`], writes it in one transaction and only then [`Ipam::apply`]s it, so this state
//! always equals what is committed.

pub mod range;
pub mod set;
pub mod small;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use edgelb_api::{FieldError, IpFamily, PoolSpec, Protocol};

pub use range::{IpRange, from_u128, is_buggy, to_u128};
use set::IntervalSet;
pub use small::{VecMap, VecSet};

/// How a Service is named across the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(cluster: &str, namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.namespace, self.name)
    }
}

/// A (protocol, port) pair that a Service listens on; two Services sharing an address must not
/// have one in common.
pub type PortKey = (Protocol, u16);

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    pub ranges: Vec<IpRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub priority: i32,
    pub clusters: Vec<String>,
    pub namespaces: Vec<String>,
    pub scheduler: String,
    pub hold_seconds: u64,
}

/// Validates a name of a pool, cluster, token or user: what Kubernetes accepts as a label value
/// and what is safe in a URL path segment.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid name: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

impl PoolDef {
    /// Validates a spec, collecting every problem with the field it concerns, in the spec's
    /// order. Which schedulers exist is not the allocator's to know: `check_scheduler` says
    /// (the store asks the forwarding backend's capabilities).
    pub fn from_spec(
        spec: &PoolSpec,
        check_scheduler: impl Fn(&str) -> Result<(), String>,
    ) -> Result<PoolDef, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        if let Err(m) = check_name(&spec.name) {
            err("name".into(), m);
        }
        if spec.ranges.is_empty() {
            err(
                "ranges".into(),
                "a pool needs at least one CIDR or start-end range".into(),
            );
        }
        let mut ranges: Vec<IpRange> = Vec::new();
        for (i, text) in spec.ranges.iter().enumerate() {
            match IpRange::parse(text) {
                Ok(r) => {
                    if let Some(other) = ranges.iter().find(|o| o.overlaps(&r)) {
                        err(
                            format!("ranges[{i}]"),
                            format!("'{text}' overlaps '{other}' of the same pool"),
                        );
                    }
                    ranges.push(r);
                }
                Err(m) => err(format!("ranges[{i}]"), m),
            }
        }
        for (i, c) in spec.clusters.iter().enumerate() {
            if let Err(m) = check_name(c) {
                err(format!("clusters[{i}]"), m);
            }
        }
        for (i, n) in spec.namespaces.iter().enumerate() {
            if check_name(n).is_err() {
                err(
                    format!("namespaces[{i}]"),
                    format!("'{n}' is not a namespace name (a DNS label of at most 63 characters)"),
                );
            }
        }
        if let Err(m) = check_scheduler(&spec.scheduler) {
            err("scheduler".into(), m);
        }
        // A year is far past any sensible hold; beyond it is likely a unit mistake.
        if spec.hold_seconds > 366 * 86_400 {
            err(
                "hold_seconds".into(),
                "hold_seconds must be at most 31622400 (366 days)".into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        ranges.sort_by_key(|r| r.start);
        Ok(PoolDef {
            name: spec.name.clone(),
            ranges,
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips,
            priority: spec.priority,
            clusters: spec.clusters.clone(),
            namespaces: spec.namespaces.clone(),
            scheduler: spec.scheduler.clone(),
            hold_seconds: spec.hold_seconds,
        })
    }

    pub fn allows(&self, cluster: &str, namespace: &str) -> bool {
        (self.clusters.is_empty() || self.clusters.iter().any(|c| c == cluster))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
    }

    pub fn contains(&self, n: u128) -> bool {
        self.ranges.iter().any(|r| r.contains(n))
    }

    pub fn has_family(&self, family: IpFamily) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }

    /// Addresses the pool can hand out, computed from the ranges without enumerating them.
    pub fn capacity(&self) -> u128 {
        self.capacity_where(|_| true)
    }

    /// Addresses of one family the pool can hand out.
    pub fn family_capacity(&self, family: IpFamily) -> u128 {
        self.capacity_where(|r| r.family == family)
    }

    fn capacity_where(&self, pick: impl Fn(&IpRange) -> bool) -> u128 {
        self.ranges
            .iter()
            .filter(|r| pick(r))
            .map(|r| r.usable(self.avoid_buggy_ips))
            .fold(0u128, u128::saturating_add)
    }

    fn usable(&self, n: u128) -> bool {
        !(self.avoid_buggy_ips && is_buggy(n))
    }
}

/// A release leaves the address held for its last Service until `until` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub key: ServiceKey,
    pub uid: String,
    pub until: i64,
}

/// Everything known about an address that is not free. There is one per allocated address, so
/// it is kept small: pool and cluster names, and a Service's key, are shared between addresses
/// (see [`Ipam::load_addr`]), the users are a sorted vector (one entry, nearly always) and a
/// hold, rare, is boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub pool: Arc<str>,
    pub cluster: Arc<str>,
    pub sharing_key: Option<String>,
    /// Services using it, with their ports, in key order; empty when held.
    pub users: VecMap<Arc<ServiceKey>, Vec<PortKey>>,
    pub held: Option<Box<Hold>>,
}

impl AddrInfo {
    /// The Services using it, in key order.
    pub fn user_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.users.keys().map(|k| &**k)
    }
}

/// How an address comes to a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// It already has it.
    Keep,
    /// A free address, never used or long since cleaned up.
    New,
    /// Held for this very Service after a release.
    Reclaim,
    /// Held for another Service, whose hold has expired.
    Recycle,
    /// In use by Services with the same sharing key and other ports.
    Share,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    pub ip: u128,
    pub pool: String,
    pub how: How,
}

/// What happens to an address a Service lets go of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Others still share it.
    StillShared,
    /// Held for the Service until the instant (unix seconds).
    Held(i64),
    /// Free at once (the pool's hold period is zero).
    Freed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub ip: u128,
    pub outcome: Outcome,
}

/// The result of [`Ipam::decide`]: the Service's addresses, in the order of its families, and
/// the addresses it lets go of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub assign: Vec<Assign>,
    pub release: Vec<Release>,
}

impl Decision {
    /// True when applying it changes nothing but the Service's ports.
    pub fn keeps_everything(&self) -> bool {
        self.release.is_empty() && self.assign.iter().all(|a| a.how == How::Keep)
    }
}

/// A Service's request for addresses.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub key: &'a ServiceKey,
    pub uid: &'a str,
    pub pool: Option<&'a str>,
    pub requested: &'a [IpAddr],
    pub families: &'a [IpFamily],
    pub sharing_key: Option<&'a str>,
    pub ports: &'a [PortKey],
}

/// Why an allocation or a pool change cannot be done. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The request contradicts itself.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// Well-formed, but it cannot apply to the pools as they are.
    #[error("{0}")]
    Unprocessable(String),
    /// It conflicts with what others hold.
    #[error("{0}")]
    Conflict(String),
}

fn holder_list<'a>(users: impl Iterator<Item = &'a ServiceKey>) -> String {
    users.map(|k| format!("Service {k}")).collect::<Vec<_>>().join(", ")
}

/// The holders of `ip` as a conflict tells them to `asker`: Services of the asker's own cluster by
/// name, those of other clusters only counted, so that one cluster's agent never learns another
/// cluster's Service names. The second part, for the end of the message, says where an operator
/// sees them.
fn holders_for<'a>(asker: &ServiceKey, ip: IpAddr, users: impl Iterator<Item = &'a ServiceKey>) -> (String, String) {
    let (own, others): (Vec<&ServiceKey>, Vec<&ServiceKey>) = users.partition(|k| k.cluster == asker.cluster);
    let mut parts: Vec<String> = own.iter().map(|k| format!("Service {k}")).collect();
    match others.len() {
        0 => return (parts.join(", "), String::new()),
        1 => parts.push("a Service of another cluster".to_owned()),
        n => parts.push(format!("{n} Services of other clusters")),
    }
    let hint = format!(" (an operator sees which in GET /api/v1/allocations?ip={ip})");
    (parts.join(", "), hint)
}

/// The allocation state: pools and every address that is not free.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    pools: BTreeMap<String, PoolDef>,
    used: IntervalSet,
    addrs: HashMap<u128, AddrInfo>,
    by_key: HashMap<Arc<ServiceKey>, VecSet<u128>>,
    held_by_key: HashMap<ServiceKey, VecSet<u128>>,
    holds_by_time: BTreeSet<(i64, u128)>,
    shared: HashMap<(String, String), VecSet<u128>>,
    /// Pool and cluster names, one copy each for all the addresses that name them.
    names: HashSet<Arc<str>>,
}

impl Ipam {
    pub fn new() -> Ipam {
        Ipam::default()
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolDef> {
        self.pools.values()
    }

    pub fn pool(&self, name: &str) -> Option<&PoolDef> {
        self.pools.get(name)
    }

    pub fn addr(&self, ip: u128) -> Option<&AddrInfo> {
        self.addrs.get(&ip)
    }

    /// Addresses the Service uses, in address order.
    pub fn addresses_of(&self, key: &ServiceKey) -> Vec<u128> {
        self.by_key
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of addresses that are not free (allocated or held, expired or not).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Adds a pool loaded from the store (already checked when it was written).
    pub fn load_pool(&mut self, def: PoolDef) {
        self.pools.insert(def.name.clone(), def);
    }

    /// Adds an address row loaded from the store (or put back as it was before a failed write).
    pub fn load_addr(&mut self, ip: u128, mut info: AddrInfo) {
        info.pool = self.intern(&info.pool);
        info.cluster = self.intern(&info.cluster);
        info.users = std::mem::take(&mut info.users)
            .into_iter()
            .map(|(k, ports)| (self.shared_key(&k), ports))
            .collect();
        self.insert_addr(ip, info);
    }

    /// The copy of a Service's key that its addresses share; the store keys its own per-Service
    /// records with it too, so that a Service's names are in memory once.
    pub fn shared_key(&self, key: &ServiceKey) -> Arc<ServiceKey> {
        match self.by_key.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::new(key.clone()),
        }
    }

    /// The shared copy of a pool or cluster name.
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        // Names no address uses any more (deleted pools and clusters) go now and then; the
        // set stays as small as the names in use.
        if self.names.len() >= 64 {
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(n.clone());
        n
    }

    fn insert_addr(&mut self, ip: u128, info: AddrInfo) {
        self.used.insert(ip);
        for key in info.users.keys() {
            self.by_key.entry(key.clone()).or_default().insert(ip);
        }
        if let Some(h) = &info.held {
            self.held_by_key.entry(h.key.clone()).or_default().insert(ip);
            self.holds_by_time.insert((h.until, ip));
        }
        if let Some(sk) = &info.sharing_key {
            self.shared
                .entry((info.cluster.to_string(), sk.clone()))
                .or_default()
                .insert(ip);
        }
        self.addrs.insert(ip, info);
    }

    fn remove_addr(&mut self, ip: u128) -> Option<AddrInfo> {
        let info = self.addrs.remove(&ip)?;
        self.used.remove(ip);
        for key in info.users.keys() {
            remove_from(&mut self.by_key, key, ip);
        }
        if let Some(h) = &info.held {
            remove_from(&mut self.held_by_key, &h.key, ip);
            self.holds_by_time.remove(&(h.until, ip));
        }
        if let Some(sk) = &info.sharing_key {
            remove_from(&mut self.shared, &(info.cluster.to_string(), sk.clone()), ip);
        }
        Some(info)
    }

    // ---- pools ----

    /// Whether `def` may be stored under its name, replacing the pool `replacing` if given.
    /// `now` decides which holds still count.
    pub fn check_pool(&self, def: &PoolDef, replacing: Option<&str>, now: i64) -> Result<(), IpamError> {
        for other in self.pools.values() {
            if Some(other.name.as_str()) == replacing {
                continue;
            }
            for r in &def.ranges {
                if let Some(o) = other.ranges.iter().find(|o| o.overlaps(r)) {
                    return Err(IpamError::Conflict(format!(
                        "range '{r}' overlaps range '{o}' of pool '{}'",
                        other.name
                    )));
                }
            }
        }
        if let Some(old) = replacing {
            let stranded = self.live_addresses_of_pool(old, now, |ip| !def.contains(ip));
            if !stranded.is_empty() {
                return Err(IpamError::Conflict(format!(
                    "the new ranges leave out addresses still in use: {}; release them first",
                    describe_addrs(self, &stranded)
                )));
            }
        }
        Ok(())
    }

    /// Whether the pool may be deleted: only when nothing in it is allocated or held.
    pub fn check_pool_delete(&self, name: &str, now: i64) -> Result<(), IpamError> {
        let live = self.live_addresses_of_pool(name, now, |_| true);
        if live.is_empty() {
            Ok(())
        } else {
            Err(IpamError::Conflict(format!(
                "pool '{name}' still holds {} address(es): {}; release them first",
                live.len(),
                describe_addrs(self, &live)
            )))
        }
    }

    /// Addresses of a pool that are allocated, or held with a hold not yet expired, and match.
    fn live_addresses_of_pool(&self, pool: &str, now: i64, pick: impl Fn(u128) -> bool) -> Vec<u128> {
        let mut v: Vec<u128> = self
            .addrs
            .iter()
            .filter(|(ip, a)| *a.pool == *pool && pick(**ip) && a.held.as_ref().is_none_or(|h| h.until > now))
            .map(|(ip, _)| *ip)
            .collect();
        v.sort_unstable();
        v
    }

    /// Expired holds of a pool (to delete with the pool or when its ranges shrink).
    pub fn expired_in_pool(&self, pool: &str, now: i64) -> Vec<u128> {
        self.holds_by_time
            .range(..(now.saturating_add(1), 0))
            .map(|(_, ip)| *ip)
            .filter(|ip| self.addrs.get(ip).is_some_and(|a| *a.pool == *pool))
            .collect()
    }

    pub fn put_pool(&mut self, def: PoolDef, replacing: Option<&str>) {
        if let Some(old) = replacing {
            self.pools.remove(old);
        }
        self.pools.insert(def.name.clone(), def);
    }

    pub fn remove_pool(&mut self, name: &str) {
        self.pools.remove(name);
    }

    /// Holds that ended at or before `now`.
    pub fn expired_holds(&self, now: i64) -> Vec<u128> {
        self.holds_by_time
            .range(..(now.saturating_add(1), 0))
            .map(|(_, ip)| *ip)
            .collect()
    }

    /// Forgets addresses whose rows were deleted.
    pub fn forget(&mut self, ips: &[u128]) {
        for ip in ips {
            self.remove_addr(*ip);
        }
    }

    // ---- allocation ----

    /// Decides the Service's addresses. Asking again returns the same addresses; a Service
    /// keeps what it has unless the request now excludes it (other requested IP, other pool,
    /// other sharing key), and never moves because of a pool edit.
    pub fn decide(&self, req: &Request<'_>, now: i64) -> Result<Decision, IpamError> {
        check_request(req)?;
        if let Some(p) = req.pool {
            let pool = self
                .pools
                .get(p)
                .ok_or_else(|| IpamError::Unprocessable(format!("pool '{p}' does not exist")))?;
            if !pool.allows(&req.key.cluster, &req.key.namespace) {
                return Err(IpamError::Unprocessable(format!(
                    "pool '{p}' does not allow cluster '{}' namespace '{}'",
                    req.key.cluster, req.key.namespace
                )));
            }
        }
        let current = self.addresses_of(req.key);
        let mut decision = Decision::default();
        for family in req.families {
            let want = req.requested.iter().find(|ip| IpFamily::of(ip) == *family).copied();
            let existing = current
                .iter()
                .copied()
                .find(|ip| IpFamily::of(&from_u128(*ip)) == *family);
            if let Some(ip) = existing
                && self.keeps(req, ip, want)?
            {
                let pool = self.addrs[&ip].pool.to_string();
                decision.assign.push(Assign {
                    ip,
                    pool,
                    how: How::Keep,
                });
                continue;
            }
            let assign = match want {
                Some(ip) => self.take_requested(req, ip, now)?,
                None => self.pick(req, *family, now)?,
            };
            decision.assign.push(assign);
        }
        for ip in current {
            if !decision.assign.iter().any(|a| a.ip == ip) {
                decision.release.push(self.release_outcome(req.key, ip, now));
            }
        }
        Ok(decision)
    }

    /// Whether the Service keeps the address it has; errors when its new ports collide with
    /// the Services it shares the address with.
    fn keeps(&self, req: &Request<'_>, ip: u128, want: Option<IpAddr>) -> Result<bool, IpamError> {
        let info = &self.addrs[&ip];
        if want.is_some_and(|w| to_u128(w) != ip) || req.pool.is_some_and(|p| *p != *info.pool) {
            return Ok(false);
        }
        let others: Vec<&ServiceKey> = info.user_keys().filter(|k| *k != req.key).collect();
        if others.is_empty() {
            return Ok(true);
        }
        if info.sharing_key.as_deref() != req.sharing_key {
            return Ok(false);
        }
        self.check_ports(req, ip)?;
        Ok(true)
    }

    fn check_ports(&self, req: &Request<'_>, ip: u128) -> Result<(), IpamError> {
        let info = &self.addrs[&ip];
        for (other, ports) in info.users.iter().filter(|(k, _)| ***k != *req.key) {
            if let Some((proto, port)) = req.ports.iter().find(|p| ports.contains(p)) {
                return Err(IpamError::Conflict(format!(
                    "port {port}/{proto} is already used on shared address {} by Service {other}",
                    from_u128(ip)
                )));
            }
        }
        Ok(())
    }

    fn take_requested(&self, req: &Request<'_>, want: IpAddr, now: i64) -> Result<Assign, IpamError> {
        let ip = to_u128(want);
        let pool = self.pool_for_requested(req, ip, want)?;
        match self.addrs.get(&ip) {
            None => Ok(Assign {
                ip,
                pool,
                how: How::New,
            }),
            Some(AddrInfo { held: Some(h), .. }) if h.key == *req.key => Ok(Assign {
                ip,
                pool,
                how: How::Reclaim,
            }),
            Some(AddrInfo { held: Some(h), .. }) if h.until <= now => Ok(Assign {
                ip,
                pool,
                how: How::Recycle,
            }),
            Some(AddrInfo { held: Some(h), .. }) => {
                let (who, hint) = holders_for(req.key, want, std::iter::once(&h.key));
                Err(IpamError::Conflict(format!(
                    "{want} is held for {who} until {} after its release{hint}",
                    fmt_unix(h.until)
                )))
            }
            Some(info) => {
                let shareable = *info.cluster == *req.key.cluster
                    && req.sharing_key.is_some()
                    && info.sharing_key.as_deref() == req.sharing_key;
                if !shareable {
                    let (who, hint) = holders_for(req.key, want, info.user_keys());
                    return Err(IpamError::Conflict(format!(
                        "{want} is already allocated to {who}{hint}"
                    )));
                }
                self.check_ports(req, ip)?;
                Ok(Assign {
                    ip,
                    pool,
                    how: How::Share,
                })
            }
        }
    }

    fn pool_for_requested(&self, req: &Request<'_>, ip: u128, want: IpAddr) -> Result<String, IpamError> {
        let (cluster, ns) = (&req.key.cluster, &req.key.namespace);
        let Some(pool) = self.pools.values().find(|p| p.contains(ip)) else {
            return Err(IpamError::Unprocessable(format!("{want} is outside every pool")));
        };
        if req.pool.is_some_and(|p| p != pool.name) {
            return Err(IpamError::Unprocessable(format!(
                "{want} is in pool '{}', not in the requested pool '{}'",
                pool.name,
                req.pool.unwrap_or_default()
            )));
        }
        if !pool.allows(cluster, ns) {
            return Err(IpamError::Unprocessable(format!(
                "{want} is in pool '{}', which does not allow cluster '{cluster}' namespace '{ns}'",
                pool.name
            )));
        }
        if !pool.usable(ip) {
            return Err(IpamError::Unprocessable(format!(
                "{want} ends in .0 or .255, which pool '{}' avoids (avoid_buggy_ips)",
                pool.name
            )));
        }
        Ok(pool.name.clone())
    }

    /// Chooses an address of `family` for a Service that asked for none in particular.
    fn pick(&self, req: &Request<'_>, family: IpFamily, now: i64) -> Result<Assign, IpamError> {
        let fits = |pool: &PoolDef| req.pool.is_none_or(|p| p == pool.name);
        // Its own held address first: a re-created Service gets its address back.
        if let Some(held) = self.held_by_key.get(req.key) {
            for ip in held {
                let info = &self.addrs[ip];
                if IpFamily::of(&from_u128(*ip)) == family && self.pools.get(&*info.pool).is_some_and(fits) {
                    return Ok(Assign {
                        ip: *ip,
                        pool: info.pool.to_string(),
                        how: How::Reclaim,
                    });
                }
            }
        }
        if let Some(sk) = req.sharing_key
            && let Some(ips) = self.shared.get(&(req.key.cluster.clone(), sk.to_owned()))
        {
            for ip in ips {
                let info = &self.addrs[ip];
                // Sharing must not bypass the pool's cluster/namespace restriction, which a
                // request for the same address by name is held to.
                if info.held.is_none()
                    && IpFamily::of(&from_u128(*ip)) == family
                    && self
                        .pools
                        .get(&*info.pool)
                        .is_some_and(|p| fits(p) && p.allows(&req.key.cluster, &req.key.namespace))
                {
                    self.check_ports(req, *ip)?;
                    return Ok(Assign {
                        ip: *ip,
                        pool: info.pool.to_string(),
                        how: How::Share,
                    });
                }
            }
        }
        let mut candidates: Vec<&PoolDef> = match req.pool {
            Some(p) => self.pools.get(p).into_iter().collect(),
            None => self
                .pools
                .values()
                .filter(|p| p.auto_assign && p.allows(&req.key.cluster, &req.key.namespace))
                .collect(),
        };
        candidates.retain(|p| p.has_family(family));
        if candidates.is_empty() {
            return Err(IpamError::Unprocessable(match req.pool {
                Some(p) => format!("pool '{p}' has no {family} range"),
                None => format!(
                    "no pool with auto_assign and an {family} range allows cluster '{}' namespace '{}'",
                    req.key.cluster, req.key.namespace
                ),
            }));
        }
        candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        for pool in &candidates {
            for r in pool.ranges.iter().filter(|r| r.family == family) {
                if let Some(ip) = self.used.first_free(r.start, r.end, |x| pool.usable(x)) {
                    return Ok(Assign {
                        ip,
                        pool: pool.name.clone(),
                        how: How::New,
                    });
                }
            }
            // Only when no never-used address is left: the least recently expired hold.
            for (_, ip) in self.holds_by_time.range(..(now.saturating_add(1), 0)) {
                if pool.contains(*ip) && pool.usable(*ip) && IpFamily::of(&from_u128(*ip)) == family {
                    return Ok(Assign {
                        ip: *ip,
                        pool: pool.name.clone(),
                        how: How::Recycle,
                    });
                }
            }
        }
        let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
        Err(IpamError::Conflict(format!(
            "{}no free {family} address in {}",
            edgelb_api::POOL_EXHAUSTED_DETAIL,
            names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        )))
    }

    fn release_outcome(&self, key: &ServiceKey, ip: u128, now: i64) -> Release {
        let info = &self.addrs[&ip];
        let outcome = if info.user_keys().any(|k| k != key) {
            Outcome::StillShared
        } else {
            match self.pools.get(&*info.pool).map(|p| p.hold_seconds).unwrap_or(0) {
                0 => Outcome::Freed,
                s => Outcome::Held(now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX))),
            }
        };
        Release { ip, outcome }
    }

    /// Everything the Service holds, released (for `DELETE` of the Service).
    pub fn release_all(&self, key: &ServiceKey, now: i64) -> Vec<Release> {
        self.addresses_of(key)
            .into_iter()
            .map(|ip| self.release_outcome(key, ip, now))
            .collect()
    }

    /// Reserves `ip` for a Service seen in a cluster's status at start-up, before any new
    /// allocation. A Service that holds another address of that family is a conflict: the
    /// appliance's record wins and the agent is told.
    /// `sharing_key` (from the Service's annotation) lets it join Services already reserved
    /// on that address with the same key; their ports are checked when the specs arrive.
    pub fn decide_reserve(
        &self,
        key: &ServiceKey,
        uid: &str,
        ip: IpAddr,
        sharing_key: Option<&str>,
        now: i64,
    ) -> Result<Option<Assign>, IpamError> {
        let n = to_u128(ip);
        let family = IpFamily::of(&ip);
        let current = self.addresses_of(key);
        if current.contains(&n) {
            return Ok(None);
        }
        if let Some(other) = current.iter().find(|c| IpFamily::of(&from_u128(**c)) == family) {
            return Err(IpamError::Conflict(format!(
                "the appliance holds {} for Service {key}, not {ip}",
                from_u128(*other)
            )));
        }
        let families = [family];
        let requested = [ip];
        let req = Request {
            key,
            uid,
            pool: None,
            requested: &requested,
            families: &families,
            sharing_key,
            ports: &[],
        };
        check_request(&req)?;
        self.take_requested(&req, ip, now).map(Some)
    }

    /// Records a decision the store has committed.
    pub fn apply(&mut self, req: &Request<'_>, decision: &Decision) {
        self.apply_release(req.key, req.uid, &decision.release);
        for a in &decision.assign {
            match a.how {
                How::Keep | How::Share => {
                    let key = self.shared_key(req.key);
                    let Some(info) = self.addrs.get_mut(&a.ip) else {
                        continue;
                    };
                    let sole_user = info.user_keys().all(|k| k == req.key);
                    info.users.insert(key.clone(), req.ports.to_vec());
                    self.by_key.entry(key).or_default().insert(a.ip);
                    if sole_user && info.sharing_key.as_deref() != req.sharing_key {
                        // The only user changed its sharing key: the address follows it.
                        let mut info = self.remove_addr(a.ip).unwrap_or_else(|| unreachable_info(a));
                        info.sharing_key = req.sharing_key.map(str::to_owned);
                        self.insert_addr(a.ip, info);
                    }
                }
                How::New | How::Reclaim | How::Recycle => {
                    self.remove_addr(a.ip);
                    let mut users = VecMap::new();
                    users.insert(self.shared_key(req.key), req.ports.to_vec());
                    let (pool, cluster) = (self.intern(&a.pool), self.intern(&req.key.cluster));
                    self.insert_addr(
                        a.ip,
                        AddrInfo {
                            pool,
                            cluster,
                            sharing_key: req.sharing_key.map(str::to_owned),
                            users,
                            held: None,
                        },
                    );
                }
            }
        }
    }

    /// Records committed releases of a Service.
    pub fn apply_release(&mut self, key: &ServiceKey, uid: &str, releases: &[Release]) {
        for r in releases {
            match r.outcome {
                Outcome::StillShared => {
                    if let Some(info) = self.addrs.get_mut(&r.ip) {
                        info.users.remove(key);
                    }
                    remove_from(&mut self.by_key, key, r.ip);
                }
                Outcome::Freed => {
                    self.remove_addr(r.ip);
                }
                Outcome::Held(until) => {
                    let Some(mut info) = self.remove_addr(r.ip) else {
                        continue;
                    };
                    info.users.clear();
                    info.held = Some(Box::new(Hold {
                        key: key.clone(),
                        uid: uid.to_owned(),
                        until,
                    }));
                    self.insert_addr(r.ip, info);
                }
            }
        }
    }
}

fn unreachable_info(a: &Assign) -> AddrInfo {
    // `apply` only runs after `decide`, which found the address; keep going with an empty record
    // rather than panic if that invariant were ever broken.
    AddrInfo {
        pool: Arc::from(a.pool.as_str()),
        cluster: Arc::from(""),
        sharing_key: None,
        users: VecMap::new(),
        held: None,
    }
}

fn remove_from<K, Q>(map: &mut HashMap<K, VecSet<u128>>, key: &Q, ip: u128)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(&ip);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

fn check_request(req: &Request<'_>) -> Result<(), IpamError> {
    let invalid = |field: &str, message: String| {
        Err(IpamError::Invalid {
            field: field.into(),
            message,
        })
    };
    if req.families.is_empty() || req.families.len() > 2 {
        return invalid("ip_families", "ip_families must name IPv4, IPv6 or both".into());
    }
    if req.families.len() == 2 && req.families[0] == req.families[1] {
        return invalid("ip_families", format!("ip_families names {} twice", req.families[0]));
    }
    for (i, ip) in req.requested.iter().enumerate() {
        // `::ffff:a.b.c.d` is the IPv4 address on the shared number line: taken as IPv6 it would
        // give an IPv4 address for the IPv6 family and break asking again.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return invalid(
                &format!("requested_ips[{i}]"),
                format!("{ip} is an IPv4-mapped IPv6 address: write it as {v4}"),
            );
        }
        let family = IpFamily::of(ip);
        if !req.families.contains(&family) {
            return invalid(
                &format!("requested_ips[{i}]"),
                format!("{ip} is an {family} address but ip_families does not include {family}"),
            );
        }
        if req.requested[..i].iter().any(|o| IpFamily::of(o) == family) {
            return invalid(
                &format!("requested_ips[{i}]"),
                format!("at most one {family} address may be requested"),
            );
        }
    }
    Ok(())
}

fn describe_addrs(ipam: &Ipam, ips: &[u128]) -> String {
    const SHOWN: usize = 10;
    let mut parts: Vec<String> = ips
        .iter()
        .take(SHOWN)
        .map(|ip| {
            let info = &ipam.addrs[ip];
            match &info.held {
                Some(h) => format!("{} (held for Service {})", from_u128(*ip), h.key),
                None => format!("{} ({})", from_u128(*ip), holder_list(info.user_keys())),
            }
        })
        .collect();
    if ips.len() > SHOWN {
        parts.push(format!("and {} more", ips.len() - SHOWN));
    }
    parts.join(", ")
}

/// Formats unix seconds as RFC 3339 for messages.
pub fn fmt_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}
