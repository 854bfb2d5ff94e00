//! The reconcile loop: a pass (snapshot the store, observe the kernel, plan, apply) at start, on
//! every store change (woken through the store's watch, changes arriving close together
//! coalesced into one pass) and on a periodic resync that repairs drift. After each pass it
//! publishes a [`DataplaneStatus`] that `/readyz`, `/metrics` and the status endpoint read.
//!
//! A pass woken by a store change plans against the state the previous pass left (kept in
//! memory, with its applied operations folded in) instead of dumping the kernel again: a dump of
//! 10,000 services costs seconds, a change should cost milliseconds. Start-up, the periodic
//! resync and any pass after a failure dump the kernel, so drift is repaired within one resync
//! period; counters in the status are as fresh as the last dump.
//!
//! With health checking ([`Reconciler::with_health`]) it also runs a [`Checker`] over the
//! targets the desired state names, feeds its damped health into [`desired_with`], and is woken
//! by every health change, so a node going down reaches IPVS (as weight 0) within about one
//! probe interval; a pass is also due when a drain ends, to remove what has drained.
//!
//! It never tears down on shutdown: dropping the loop leaves the kernel as it is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use edgelb_api::{
    BackendHealth, DataplaneStatus, HealthState, RealServerStatus, TrafficCounters, VirtualServiceStatus,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

use super::desired::{Drains, HealthInput, HealthPlan, desired_with};
use super::{Ownership, desired, plan};
use crate::config::HealthConfig;
use crate::dataplane::{Counters, Dataplane, DataplaneError, Op, State};
use crate::health::{Checker, Health, Settings, Thresholds};
use crate::store::{Store, StoreError};

/// How many operations of a pass are logged one by one; beyond that only a summary.
const LOG_OPS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// A full pass even when nothing changed, to repair drift.
    pub resync: Duration,
    /// How long to wait after a change for more changes to coalesce.
    pub debounce: Duration,
    /// First retry delay after a failed pass; doubles up to `resync`.
    pub retry: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(1),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub ops: Vec<Op>,
    pub elapsed: Duration,
}

/// The reconciler over a data plane.
#[derive(Debug)]
pub struct Reconciler<D> {
    store: Store,
    dataplane: D,
    options: RunnerOptions,
    status: watch::Sender<Arc<DataplaneStatus>>,
    /// The kernel's state as the last successful pass left it; `None` forces a dump.
    cache: Mutex<Option<State>>,
    health: Option<HealthRuntime>,
}

/// Probes in flight at most.
const PROBE_CONCURRENCY: usize = 256;
/// Each probe interval is spread by up to this fraction either way.
const PROBE_JITTER: f64 = 0.1;

#[derive(Debug)]
struct HealthRuntime {
    checker: Checker,
    config: HealthConfig,
    /// The last pass's health plan; its drains are `None` until the first pass seeds them
    /// from the kernel.
    last: Mutex<(Option<Drains>, HealthPlan)>,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(store: Store, dataplane: D, options: RunnerOptions) -> Reconciler<D> {
        let (status, _) = watch::channel(Arc::new(DataplaneStatus {
            mode: dataplane.name().to_owned(),
            ..DataplaneStatus::default()
        }));
        Reconciler {
            store,
            dataplane,
            options,
            status,
            cache: Mutex::new(None),
            health: None,
        }
    }

    /// Turns on health checking and draining with these settings: [`run`](Self::run) then
    /// also runs the checker.
    pub fn with_health(mut self, config: HealthConfig) -> Reconciler<D> {
        self.health = Some(HealthRuntime {
            checker: Checker::new(PROBE_CONCURRENCY, PROBE_JITTER),
            config,
            last: Mutex::new((None, HealthPlan::default())),
        });
        self
    }

    /// The health checker, when health checking is on.
    pub fn checker(&self) -> Option<&Checker> {
        self.health.as_ref().map(|h| &h.checker)
    }

    /// The published status, updated after every pass.
    pub fn status(&self) -> watch::Receiver<Arc<DataplaneStatus>> {
        self.status.subscribe()
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// One full pass: snapshot, dump the kernel, plan, apply; then the status is published.
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(true).await
    }

    /// A pass for a store change: plans against the state the last pass left, when there is one.
    pub async fn pass_for_change(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(false).await
    }

    async fn pass_with(&self, dump: bool) -> Result<PassReport, ReconcileError> {
        let start = Instant::now();
        let outcome = self.pass_inner(dump).await;
        if outcome.is_err() {
            self.set_cache(None);
        }
        let elapsed = start.elapsed();
        match &outcome {
            Ok((ops, observed, owned)) => {
                if !ops.is_empty() {
                    info!(
                        operations = ops.len(),
                        elapsed_ms = elapsed.as_millis() as u64,
                        "dataplane reconciled"
                    );
                }
                let vs = observed.as_ref().map(|o| {
                    let mut vs = virtual_services(o, owned);
                    if let Some(h) = &self.health {
                        let last = h.last.lock().unwrap_or_else(|e| e.into_inner());
                        add_health(&mut vs, &last.1, &h.checker);
                    }
                    vs
                });
                self.publish(ops.len(), vs, None);
            }
            Err(e) => {
                warn!(error = %error_chain(e), elapsed_ms = elapsed.as_millis() as u64, "dataplane pass failed");
                self.publish(0, None, Some(error_chain(e)));
            }
        }
        outcome.map(|(ops, _, _)| PassReport { ops, elapsed })
    }

    fn set_cache(&self, state: Option<State>) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The ops applied, the state after them for the status (`None` if unknown), and the
    /// ownership used.
    async fn pass_inner(&self, dump: bool) -> Result<(Vec<Op>, Option<State>, Ownership), ReconcileError> {
        let snap = self.store.dataplane_snapshot().await?;
        let cached = if dump {
            None
        } else {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).take()
        };
        let observed = match cached {
            Some(state) => state,
            None => self.dataplane.observe().await?,
        };
        let want = match &self.health {
            None => desired(&snap, self.dataplane.manages()),
            Some(h) => {
                let mut last = h.last.lock().unwrap_or_else(|e| e.into_inner());
                let drains = last.0.take().unwrap_or_else(|| Drains::seed(&observed));
                let targets = h.checker.snapshot();
                let input = HealthInput {
                    now: SystemTime::now(),
                    drain_timeout: h.config.drain_timeout,
                    all_down: h.config.all_down,
                    targets: &targets,
                    drains: &drains,
                };
                let (want, hp) = desired_with(&snap, self.dataplane.manages(), &input);
                h.checker.set_targets(hp.probes(Settings {
                    interval: h.config.interval,
                    timeout: h.config.timeout,
                    thresholds: Thresholds {
                        rise: h.config.rise,
                        fall: h.config.fall,
                    },
                }));
                *last = (Some(hp.drains.clone()), hp);
                want
            }
        };
        let ops = plan(&want, &observed);
        if ops.is_empty() {
            self.set_cache(Some(observed.clone()));
            return Ok((ops, Some(observed), want.owned));
        }
        for op in ops.iter().take(LOG_OPS) {
            info!(op = %op, "dataplane change");
        }
        if ops.len() > LOG_OPS {
            info!(more = ops.len() - LOG_OPS, "dataplane changes not logged one by one");
        }
        self.dataplane.apply(&ops).await?;
        let after = if dump {
            // Fresh counters for the status; a failed dump only costs that.
            self.dataplane.observe().await.ok()
        } else {
            let mut next = observed;
            for op in &ops {
                if let Err(e) = next.apply(op) {
                    // The kernel accepted what the model refuses: trust neither, dump next time.
                    warn!(op = %op, error = %e, "applied state diverges from the plan");
                    self.set_cache(None);
                    return Ok((ops, None, want.owned));
                }
            }
            Some(next)
        };
        self.set_cache(after.clone());
        Ok((ops, after, want.owned))
    }

    fn publish(&self, ops: usize, vs: Option<Vec<VirtualServiceStatus>>, error: Option<String>) {
        self.status.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.passes += 1;
            s.operations += ops as u64;
            if error.is_none() {
                s.last_sync = Some(OffsetDateTime::now_utc());
            }
            s.last_error = error;
            if let Some(vs) = vs {
                s.virtual_services = vs;
            }
        });
    }

    /// Runs forever: a pass now, then on every store change and every resync period. A failed
    /// pass is retried sooner, backing off up to the resync period.
    pub async fn run(self) {
        let mut changes = self.store.subscribe();
        changes.borrow_and_update();
        let mut health_changes = self.health.as_ref().map(|h| h.checker.subscribe());
        // Lives as long as this loop: aborting the reconciler's task stops the probes too.
        let _checker = self
            .health
            .as_ref()
            .map(|h| tokio::spawn(h.checker.clone().run()))
            .map(AbortOnDrop);
        let mut retry = self.options.retry;
        let mut dump = true;
        loop {
            let outcome = self.pass_with(dump).await;
            dump = outcome.is_err();
            let delay = match outcome {
                Ok(_) => {
                    retry = self.options.retry;
                    self.options.resync
                }
                Err(_) => {
                    let d = retry.min(self.options.resync);
                    retry = (retry * 2).min(self.options.resync);
                    d
                }
            };
            // A drain that ends wants a pass to remove what has drained; it needs no dump.
            let until_drain_ends = self
                .next_deadline()
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default() + DEADLINE_SLACK);
            let drain_ends_first = until_drain_ends.is_some_and(|d| d < delay);
            let delay = until_drain_ends.map_or(delay, |d| d.min(delay));
            tokio::select! {
                Some(()) = health_changed(&mut health_changes) => {
                    // A target changed health: plan against the kept state, at once (the
                    // checker's rise/fall already damped it).
                    tokio::time::sleep(self.options.debounce).await;
                    if let Some(rx) = &mut health_changes {
                        rx.borrow_and_update();
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The store is gone: nothing will change any more; keep resyncing.
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    // Coalesce a burst of commits (an agent's start-up) into one pass.
                    tokio::time::sleep(self.options.debounce).await;
                    changes.borrow_and_update();
                }
                _ = tokio::time::sleep(delay) => {
                    // The resync (or a retry): dump the kernel to see and repair drift. A pass
                    // after a failure dumps anyway (the kept state is dropped then).
                    dump = !drain_ends_first;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        let h = self.health.as_ref()?;
        h.last.lock().unwrap_or_else(|e| e.into_inner()).1.next_deadline
    }
}

/// Past a drain's end, so the pass then sees it ended.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// Resolves when the checker reports a change; never without a checker (or once it is gone).
async fn health_changed(rx: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return Some(());
        }
        // The checker is gone: stop listening rather than spin.
        *rx = None;
    }
    std::future::pending().await
}

/// Aborts the checker's task when the loop is dropped (the reconciler's task aborted).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Adds each real server's health (what is probed, its damped state, the last probe) to the
/// status, from the last pass's targets and the checker's current view.
pub fn add_health(vs: &mut [VirtualServiceStatus], hp: &HealthPlan, checker: &Checker) {
    for v in vs {
        let key = crate::dataplane::VsKey::new(v.ip, v.port, v.protocol);
        for rs in &mut v.real_servers {
            let addr = std::net::SocketAddr::new(rs.ip, rs.port);
            let Some(target) = hp.targets.get(&(key, addr)) else {
                continue;
            };
            let Some(st) = checker.state(target) else {
                continue;
            };
            rs.health = Some(BackendHealth {
                target: target.to_string(),
                state: match st.health {
                    Health::Unknown => HealthState::Unknown,
                    Health::Up => HealthState::Up,
                    Health::Down => HealthState::Down,
                },
                since: OffsetDateTime::from(st.since),
                last_result: st.last.as_ref().map(|o| o.describe()),
                last_probe: st.last_probe.map(OffsetDateTime::from),
                last_latency_micros: st
                    .last_latency
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            });
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn counters(c: &Counters) -> TrafficCounters {
    TrafficCounters {
        connections: c.connections,
        packets_in: c.packets_in,
        packets_out: c.packets_out,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
    }
}

/// The owned virtual services of an observation, as the API shows them.
pub fn virtual_services(observed: &State, owned: &Ownership) -> Vec<VirtualServiceStatus> {
    observed
        .services
        .iter()
        .filter(|(k, _)| owned.owns(k.vip))
        .map(|(k, vs)| VirtualServiceStatus {
            ip: k.vip,
            port: k.port,
            protocol: k.protocol,
            programmed: true,
            scheduler: Some(vs.spec.scheduler.clone()),
            persistence_timeout_seconds: vs.spec.persistence,
            counters: counters(&vs.counters),
            real_servers: observed
                .real_servers_of(*k)
                .map(|(a, rs)| RealServerStatus {
                    ip: a.ip(),
                    port: a.port(),
                    weight: rs.spec.weight,
                    active_connections: rs.counters.active_connections,
                    inactive_connections: rs.counters.inactive_connections,
                    counters: counters(&rs.counters),
                    health: None,
                })
                .collect(),
        })
        .collect()
}

/// `edgelb dataplane flush`: removes every virtual service (with its real servers) and address
/// inside the pools, and nothing else. Returns what it removed.
pub async fn flush<D: Dataplane>(store: &Store, dataplane: &D) -> Result<Vec<Op>, ReconcileError> {
    let snap = store.dataplane_snapshot().await?;
    let owned = desired(&snap, Default::default()).owned;
    let observed = dataplane.observe().await?;
    let ops = super::flush_plan(&owned, &observed);
    for op in &ops {
        info!(op = %op, "dataplane flush");
    }
    dataplane.apply(&ops).await?;
    Ok(ops)
}
