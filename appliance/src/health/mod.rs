//! Health checks of the nodes behind the VIPs. Owns probing and the damped health of each
//! distinct target (address, port, kind); it never touches the kernel: the reconciler reads
//! [`Checker::serves`] and turns an unhealthy real server into weight 0 (drain), then removes
//! it after the drain timeout.
//!
//! Each target is probed once per interval however many Services use it, probes run with
//! bounded concurrency, first probes are spread over the interval and every next one is
//! jittered (by the target's own `jitter_percent`), so 10,000 targets do not fire in one burst.
//!
//! Up to 100,000 targets are kept in about 90 bytes each, schedule included (`table`): the
//! [`TargetState`] handed out is built on demand, not stored.

pub mod probe;
pub mod state;
mod table;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};

pub use probe::ProbeKind;
pub use state::{Health, Outcome, TargetState, Thresholds};
use table::Table;

/// What is probed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
    pub kind: ProbeKind,
}

impl Target {
    pub fn tcp(addr: IpAddr, port: u16) -> Target {
        Target {
            addr,
            port,
            kind: ProbeKind::Tcp,
        }
    }

    /// kube-proxy's `/healthz` on a Service's `healthCheckNodePort`.
    pub fn healthz(addr: IpAddr, port: u16) -> Target {
        Target {
            addr,
            port,
            kind: ProbeKind::Healthz,
        }
    }
}

/// kube-proxy's node-level health port (its `--healthz-bind-address`), the usual value of
/// `health_node_port`.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;

/// The node-level check of a node address: kube-proxy's `GET /healthz` on `port` (normally
/// [`KUBE_PROXY_HEALTHZ_PORT`]). kube-proxy answers 503 when it is not healthy (its rules are
/// stale) and, from Kubernetes 1.28, when the node is being deleted or is tainted
/// `ToBeDeletedByClusterAutoscaler`, so a node on its way out is drained before its NodePorts
/// fail. One target per node address, shared by every real server on that address.
pub fn node_target(node: IpAddr, port: u16) -> Target {
    // The same probe as a `healthCheckNodePort`: an HTTP `/healthz` that must answer 200.
    Target::healthz(node, port)
}

/// Since when a real server has not served, given every target it depends on (its own probe
/// and, with the node-level check on, its node's): the earliest `since` among those that are
/// down, because each has been down without a break since its own `since`, so the real server
/// has been out since the first of them. `None` while all serve (a target not probed, or not
/// yet known, serves). `health` looks a target's state up (the checker's snapshot, say).
pub fn down_since<'a>(
    targets: impl IntoIterator<Item = &'a Target>,
    health: impl Fn(&Target) -> Option<TargetState>,
) -> Option<SystemTime> {
    targets
        .into_iter()
        .filter_map(health)
        .filter(|s| !s.serves())
        .map(|s| s.since)
        .min()
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sa = SocketAddr::new(self.addr, self.port);
        match self.kind.path() {
            None => write!(f, "tcp://{sa}"),
            Some(path) => write!(f, "http://{sa}{path}"),
        }
    }
}

/// How a target is probed; defaults come from the configuration, pools and Services override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// Each next probe comes after the interval spread at random by up to this percentage
    /// either way (0 to [`edgelb_api::MAX_JITTER_PERCENT`]).
    pub jitter_percent: u8,
}

/// The default spread of each probe interval, in percent either way.
pub const DEFAULT_JITTER_PERCENT: u8 = 10;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            thresholds: Thresholds { rise: 2, fall: 3 },
            jitter_percent: DEFAULT_JITTER_PERCENT,
        }
    }
}

impl Settings {
    /// These settings with a Service's own values where it has them.
    pub fn with(self, o: &edgelb_api::HealthOverrides) -> Settings {
        let ms = |v: Option<u32>, d: Duration| v.map_or(d, |v| Duration::from_millis(u64::from(v)));
        let interval = ms(o.interval_ms, self.interval);
        Settings {
            interval,
            // A probe never outlasts its interval: a default timeout longer than a Service's
            // short interval follows it down.
            timeout: ms(o.timeout_ms, self.timeout).min(interval),
            thresholds: Thresholds {
                rise: o.rise.unwrap_or(self.thresholds.rise),
                fall: o.fall.unwrap_or(self.thresholds.fall),
            },
            jitter_percent: o
                .jitter_percent
                .map_or(self.jitter_percent, |j| j.min(edgelb_api::MAX_JITTER_PERCENT) as u8),
        }
    }

    /// The time from one probe to the next: the interval spread by the jitter, `unit` being a
    /// random draw in [0, 1).
    pub fn next_after(&self, unit: f64) -> Duration {
        let spread = f64::from(self.jitter_percent.min(edgelb_api::MAX_JITTER_PERCENT as u8)) / 100.0;
        self.interval.mul_f64(1.0 + spread * (2.0 * unit - 1.0))
    }
}

#[derive(Default)]
struct Shared {
    targets: Table,
    /// Targets (re)scheduled since the schedule last looked, as (slot, generation).
    added: Vec<(u32, u32)>,
    /// How late probes started (for metrics), a bounded reservoir of recent values.
    lateness: Vec<Duration>,
    probes: u64,
    /// Targets whose serving state changed since the reconciler last took them.
    changed: std::collections::HashSet<Target>,
}

/// The health checker. Cheap to clone; [`Checker::run`] drives it.
#[derive(Clone)]
pub struct Checker {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    changes: watch::Sender<u64>,
    concurrency: Arc<Semaphore>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("probes_free", &self.concurrency.available_permits())
            .finish()
    }
}

const LATENESS_SAMPLES: usize = 4096;

impl Checker {
    /// `concurrency` bounds probes in flight; each target's [`Settings`] say how often it is
    /// probed and how much each interval is jittered.
    pub fn new(concurrency: usize) -> Checker {
        let (changes, _) = watch::channel(0);
        Checker {
            shared: Arc::default(),
            wake: Arc::new(Notify::new()),
            changes,
            concurrency: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the targets to probe. Targets kept keep their state; new ones start `Unknown`
    /// (which serves); targets left out are forgotten.
    pub fn set_targets(&self, wanted: HashMap<Target, Settings>) {
        let now = SystemTime::now();
        let mut sh = self.lock();
        let table = &sh.targets;
        let gone: Vec<Target> = table
            .live()
            .filter_map(|i| table.slot(i))
            .filter(|s| !wanted.contains_key(&s.target))
            .map(|s| s.target.clone())
            .collect();
        for t in &gone {
            sh.targets.remove(t);
        }
        let new = wanted.keys().filter(|t| sh.targets.find(t).is_none()).count();
        sh.targets.reserve(new);
        let mut added = false;
        for (t, settings) in wanted {
            added |= upsert(&mut sh, t, settings, now);
        }
        drop(sh);
        if added {
            self.wake.notify_one();
        }
    }

    /// Changes some targets only: `Some` settings adds or updates one (as [`set_targets`]
    /// does), `None` forgets it. For a change that concerns a few Services.
    ///
    /// [`set_targets`]: Checker::set_targets
    pub fn update_targets(&self, changes: impl IntoIterator<Item = (Target, Option<Settings>)>) {
        let now = SystemTime::now();
        let mut sh = self.lock();
        let mut added = false;
        for (t, settings) in changes {
            match settings {
                Some(settings) => added |= upsert(&mut sh, t, settings, now),
                None => {
                    sh.targets.remove(&t);
                }
            }
        }
        drop(sh);
        if added {
            self.wake.notify_one();
        }
    }

    /// The state of a target, if it is probed.
    pub fn state(&self, target: &Target) -> Option<TargetState> {
        let sh = self.lock();
        sh.targets.get(target).map(|s| s.view(&sh.targets.reasons))
    }

    /// Whether new connections may go to the target (unknown targets may).
    pub fn serves(&self, target: &Target) -> bool {
        self.lock().targets.get(target).is_none_or(|s| s.serves())
    }

    pub fn snapshot(&self) -> HashMap<Target, TargetState> {
        let sh = self.lock();
        let table = &sh.targets;
        let mut all = HashMap::with_capacity(table.len());
        for s in table.live().filter_map(|i| table.slot(i)) {
            all.insert(s.target.clone(), s.view(&table.reasons));
        }
        all
    }

    /// Bumped whenever a target starts or stops serving (not when an unknown one comes up).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The targets whose serving state changed since the last call, in no order (each once
    /// however often it flapped). The change is recorded before subscribers are woken, so a
    /// reader woken by [`subscribe`](Self::subscribe) finds it here.
    pub fn take_changed(&self) -> Vec<Target> {
        let mut sh = self.lock();
        if sh.changed.capacity() > 2 * sh.changed.len() + 1024 {
            // After a mass change (a node down under 10,000 Services): give the room back.
            std::mem::take(&mut sh.changed).into_iter().collect()
        } else {
            sh.changed.drain().collect()
        }
    }

    /// Probes done so far and recent lateness values (sorted), for metrics and benchmarks.
    pub fn lateness(&self) -> (u64, Vec<Duration>) {
        let sh = self.lock();
        let mut v = sh.lateness.clone();
        v.sort_unstable();
        (sh.probes, v)
    }

    /// Runs the schedule until the task is dropped or aborted.
    pub async fn run(self) {
        // Due times as nanoseconds since `base`, targets as (slot, generation): 16 bytes an
        // entry instead of an `Instant` and a copy of the target.
        let base = Instant::now();
        let since_base = |t: Instant| u64::try_from(t.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        let mut schedule: BinaryHeap<Reverse<(u64, u32, u32)>> = BinaryHeap::new();
        loop {
            let start = Instant::now();
            {
                let mut sh = self.lock();
                let added = std::mem::take(&mut sh.added);
                fit(&mut schedule, added.len());
                for (i, generation) in added {
                    let Some(s) = sh.targets.slot(i).filter(|s| s.generation == generation) else {
                        continue; // removed or rescheduled since
                    };
                    // Spread first probes over the interval.
                    let offset = sh.targets.settings.get(s.settings).interval.mul_f64(spread(&s.target));
                    schedule.push(Reverse((since_base(start + offset), i, generation)));
                }
            }
            let next = schedule
                .peek()
                .map(|Reverse((due, _, _))| base + Duration::from_nanos(*due));
            match next {
                None => self.wake.notified().await,
                Some(due) if due > Instant::now() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                Some(_) => {
                    let Some(Reverse((due, i, generation))) = schedule.pop() else {
                        continue;
                    };
                    let due = base + Duration::from_nanos(due);
                    let (target, settings) = {
                        let sh = self.lock();
                        match sh.targets.slot(i) {
                            Some(s) if s.generation == generation => {
                                (s.target.clone(), *sh.targets.settings.get(s.settings))
                            }
                            _ => continue, // removed or rescheduled
                        }
                    };
                    let next_due = due + settings.next_after(unit_random());
                    schedule.push(Reverse((since_base(next_due.max(Instant::now())), i, generation)));
                    let Ok(permit) = self.concurrency.clone().acquire_owned().await else {
                        return;
                    };
                    let late = Instant::now().saturating_duration_since(due);
                    let this = self.clone();
                    tokio::spawn(async move {
                        let sa = SocketAddr::new(target.addr, target.port);
                        let (outcome, latency) = probe::probe(sa, &target.kind, settings.timeout).await;
                        drop(permit);
                        this.record(&target, (i, generation), outcome, latency, late);
                    });
                }
            }
        }
    }

    fn record(&self, target: &Target, slot: (u32, u32), outcome: Outcome, latency: Duration, late: Duration) {
        let mut sh = self.lock();
        sh.probes += 1;
        if sh.lateness.len() < LATENESS_SAMPLES {
            sh.lateness.push(late);
        } else {
            let i = (sh.probes as usize) % LATENESS_SAMPLES;
            sh.lateness[i] = late;
        }
        let served = sh.targets.get(target).is_none_or(|s| s.serves());
        let Some(h) = sh.targets.observe(slot, outcome, latency, SystemTime::now()) else {
            return;
        };
        let reason = (h == Health::Down).then(|| sh.targets.reason(slot.0).to_owned());
        // Unknown to up changes nothing that is forwarded: no pass for it.
        let serving_changed = served != (h != Health::Down);
        if serving_changed {
            sh.changed.insert(target.clone());
        }
        drop(sh);
        match reason {
            Some(reason) => tracing::warn!(target = %target, reason = %reason, "backend unhealthy"),
            None => tracing::info!(target = %target, "backend healthy"),
        }
        if serving_changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Makes room in the schedule for `more` entries, growing by an eighth rather than doubling
/// (100,000 targets would leave up to 100,000 empty entries), and gives memory back when most
/// targets went away.
fn fit<T: Ord>(schedule: &mut BinaryHeap<T>, more: usize) {
    let need = schedule.len() + more;
    if need > schedule.capacity() {
        schedule.reserve_exact(more.max(schedule.len() / 8));
    } else if schedule.capacity() > 2 * need + 1024 {
        schedule.shrink_to(need + need / 8);
    }
}

/// A stable fraction in [0, 1) per target, so restarts spread probes the same way.
fn spread(t: &Target) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}

fn unit_random() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests;

/// Adds a target or updates its settings, keeping its state; true when it needs (re)scheduling.
fn upsert(sh: &mut Shared, t: Target, settings: Settings, now: SystemTime) -> bool {
    let Some(scheduled) = sh.targets.upsert(t, settings, now) else {
        return false;
    };
    sh.added.push(scheduled);
    true
}
