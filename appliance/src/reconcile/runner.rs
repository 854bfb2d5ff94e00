//! The reconcile loop: a pass (snapshot the store, observe the kernel, plan, apply) at start, on
//! every store change (woken through the store's watch, changes arriving close together
//! coalesced into one pass) and on a periodic resync that repairs drift. After each pass it
//! publishes a [`Published`] view that `/readyz`, `/metrics`, the status endpoint and the
//! console read; the kernel's state it keeps between passes lives there, shared, not copied.
//!
//! A pass woken by a store change plans against the state the previous pass left (kept in
//! memory, with its applied operations folded in) instead of dumping the kernel again: a dump of
//! 10,000 services costs seconds, a change should cost milliseconds. Start-up, the periodic
//! resync and any pass after a failure dump the kernel, so drift is repaired within one resync
//! period; counters in the status are as fresh as the last dump.
//!
//! A pass for a change that names only some Services (the store's journal says which, see
//! [`Store::changes_since`]) reads just those from the store and replaces them in the kept
//! [`Model`]; it plans, probes and publishes only what they touched, so its cost does not grow
//! with the number of Services. Node lists, pools, health changes and drain ends rebuild the
//! model whole.
//!
//! With health checking ([`Reconciler::with_health`]) it also runs a [`Checker`] over the
//! targets the desired state names, feeds its damped health into [`desired_with`], and is woken
//! by every health change, so a node going down reaches IPVS (as weight 0) within about one
//! probe interval; a pass is also due when a drain ends, to remove what has drained.
//!
//! It never tears down on shutdown: dropping the loop leaves the kernel as it is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Claim;
use super::desired;
use super::desired::{Drains, HealthInput, HealthView};
use super::model::{Model, Touched};
use super::published::Published;
use crate::config::HealthConfig;
use crate::dataplane::{DataplaneError, Forwarder, Op, State};
use crate::error_chain;
use crate::forwarding::{StatusFeed, StatusView};
use crate::health::{Checker, Settings, Thresholds};
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
    /// How long to wait after a health change for more to coalesce (targets of a node that
    /// died go down together). Store changes are applied at once: commits made during a pass
    /// are gathered into the next one.
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
    /// The published view, which also holds the kept kernel state.
    status: watch::Sender<Arc<Published>>,
    memory: Mutex<Memory>,
    health: Option<HealthRuntime>,
    /// Which VIPs to claim (the ownership input); a change makes a full pass.
    claim: watch::Receiver<Claim>,
}

/// What a pass leaves for the next.
#[derive(Debug, Default)]
struct Memory {
    /// Whether the published kernel state is what the kernel holds (the last pass succeeded);
    /// false forces a dump.
    kept: bool,
    /// The desired state; `None` forces a full build.
    model: Option<Model>,
    /// The store's journal generation the model reflects.
    generation: u64,
    /// Drain memory for the next full build when there is no model (`None`: seed it from the
    /// kernel).
    drains: Option<Drains>,
}

/// How much a pass redoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Dump the kernel and rebuild the desired state.
    Dump,
    /// Rebuild the desired state; plan against the kept observation.
    Rebuild,
    /// Redo only the Services the store's journal names, when it names only Services.
    Change,
    /// Redo only the Services whose real servers' targets changed health (with what the
    /// journal names, as [`Pass::Change`]), when they are few.
    Health,
}

impl Pass {
    /// Whether the pass redoes only some Services when it can.
    fn partial(self) -> bool {
        matches!(self, Pass::Change | Pass::Health)
    }
}

/// A change naming more Services than this rebuilds the model from one snapshot instead.
const INCREMENTAL_MAX: usize = 256;

/// The result of a pass's work: the operations applied, and what the status must be updated
/// for.
struct Outcome {
    ops: Vec<Op>,
    /// `None`: everything.
    touched: Option<Touched>,
}

/// Without health checking every target serves.
#[derive(Debug)]
struct NoHealthChecks;

impl HealthView for NoHealthChecks {
    fn health(&self, _: &crate::health::Target) -> Option<crate::health::TargetState> {
        None
    }
}

#[derive(Debug)]
struct HealthRuntime {
    checker: Checker,
    config: HealthConfig,
}

impl<D: Forwarder> Reconciler<D> {
    pub fn new(store: Store, dataplane: D, options: RunnerOptions) -> Reconciler<D> {
        let (status, _) = watch::channel(Arc::new(Published::new(dataplane.name())));
        Reconciler {
            store,
            dataplane,
            options,
            status,
            memory: Mutex::new(Memory::default()),
            health: None,
            claim: watch::channel(Claim::All).1,
        }
    }

    /// Turns on health checking and draining with these settings: [`run`](Self::run) then
    /// also runs the checker.
    pub fn with_health(mut self, config: HealthConfig) -> Reconciler<D> {
        let checker = Checker::new(config.concurrency);
        self.status
            .send_modify(|p| Arc::make_mut(p).checker = Some(checker.clone()));
        self.health = Some(HealthRuntime { checker, config });
        self
    }

    /// Claims the VIPs `claim` says, following its changes (without it, every VIP that
    /// forwards). Forwarding does not depend on it.
    pub fn with_claim(mut self, claim: watch::Receiver<Claim>) -> Reconciler<D> {
        self.claim = claim;
        self
    }

    /// The health checker, when health checking is on.
    pub fn checker(&self) -> Option<&Checker> {
        self.health.as_ref().map(|h| &h.checker)
    }

    /// The published view, updated after every pass.
    pub fn status(&self) -> watch::Receiver<Arc<Published>> {
        self.status.subscribe()
    }

    /// The published view as readers outside the reconciler see it: read-only, the latest
    /// publication each time.
    pub fn status_feed(&self) -> StatusFeed {
        let rx = self.status.subscribe();
        StatusFeed::new(move || -> Arc<dyn StatusView> { rx.borrow().clone() })
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// One full pass: snapshot, dump the kernel, plan, apply; then the status is published.
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(Pass::Dump, None).await
    }

    /// A pass for a store change: redoes only the Services changed since the last pass when it
    /// can, and plans against the state the last pass left, when there is one.
    pub async fn pass_for_change(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(Pass::Change, None).await
    }

    /// A pass for health changes: redoes only the Services whose real servers depend on a
    /// target that started or stopped serving since the last pass (with what the store's
    /// journal names), when they are few; else a full build against the kept state.
    pub async fn pass_for_health(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(Pass::Health, None).await
    }

    /// A full build against the kept state, without dumping the kernel: what a change of claim
    /// or a drain's end costs (and what a health change cost before it redid only the Services
    /// that depend on it).
    pub async fn pass_rebuild(&self) -> Result<PassReport, ReconcileError> {
        self.pass_with(Pass::Rebuild, None).await
    }

    /// A full pass that dumps the kernel while it goes on answering store changes: a dump of
    /// 100,000 real servers takes about a second on a host (tens under emulation), and a change
    /// should not wait for it. What those changes applied is taken from the kept state into
    /// the dump before planning ([`State::overlay`]). Without a kept state to change against
    /// (at start, after a failure), or should a change pass fail meanwhile, it is a plain
    /// [`pass`](Self::pass).
    pub async fn pass_answering(&self, changes: &mut watch::Receiver<u64>) -> Result<PassReport, ReconcileError> {
        let overlap = {
            let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            memory.kept && memory.model.is_some()
        };
        if !overlap {
            return self.pass_with(Pass::Dump, None).await;
        }
        let mut applied = Vec::new();
        let mut failed = false;
        let mut listening = true;
        let dumped = {
            let dump = self.dataplane.observe();
            tokio::pin!(dump);
            loop {
                tokio::select! {
                    dumped = &mut dump => break dumped,
                    changed = changes.changed(), if listening && !failed => {
                        if changed.is_err() {
                            listening = false;
                            continue;
                        }
                        changes.borrow_and_update();
                        match self.pass_with(Pass::Change, None).await {
                            Ok(report) => applied.extend(report.ops),
                            // What it applied is not known: dump again, without overlapping.
                            Err(_) => failed = true,
                        }
                    }
                }
            }
        };
        if failed {
            return self.pass_with(Pass::Dump, None).await;
        }
        let dumped = dumped.map(|mut state| {
            state.overlay(&self.status.borrow().observed, &applied);
            state
        });
        self.pass_with(Pass::Dump, Some(dumped)).await
    }

    /// Runs one pass; `dumped` is a dump made for it already.
    async fn pass_with(
        &self,
        kind: Pass,
        dumped: Option<Result<State, DataplaneError>>,
    ) -> Result<PassReport, ReconcileError> {
        let start = Instant::now();
        let mut memory = std::mem::take(&mut *self.memory.lock().unwrap_or_else(|e| e.into_inner()));
        let outcome = self.pass_inner(kind, dumped, &mut memory).await;
        if outcome.is_err() {
            memory.kept = false;
        }
        let elapsed = start.elapsed();
        let report = match outcome {
            Ok(out) => {
                if !out.ops.is_empty() {
                    info!(
                        operations = out.ops.len(),
                        elapsed_ms = elapsed.as_millis() as u64,
                        "dataplane reconciled"
                    );
                }
                self.publish_outcome(&out, &memory, elapsed);
                Ok(PassReport { ops: out.ops, elapsed })
            }
            Err(e) => {
                warn!(error = %error_chain(&e), elapsed_ms = elapsed.as_millis() as u64, "dataplane pass failed");
                self.status.send_modify(|p| {
                    let s = &mut Arc::make_mut(p).summary;
                    s.passes += 1;
                    s.pass_micros += elapsed.as_micros() as u64;
                    s.last_error = Some(error_chain(&e));
                });
                Err(e)
            }
        };
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = memory;
        if !kind.partial() || report.as_ref().is_ok_and(|r| r.ops.len() > INCREMENTAL_MAX) {
            release_free_memory();
        }
        report
    }

    /// Publishes a successful pass (its kernel state is in place already): what the status is
    /// built from, for what it touched or for everything.
    fn publish_outcome(&self, out: &Outcome, memory: &Memory, elapsed: Duration) {
        self.status.send_modify(|p| {
            let p = Arc::make_mut(p);
            p.summary.passes += 1;
            p.summary.pass_micros += elapsed.as_micros() as u64;
            p.summary.full_builds += u64::from(out.touched.is_none());
            p.summary.operations += out.ops.len() as u64;
            p.summary.last_sync = Some(OffsetDateTime::now_utc());
            p.summary.last_error = None;
            let Some(model) = &memory.model else { return };
            if p.owned != *model.owned() {
                p.owned = model.owned().clone();
            }
            let hp = model.health_plan();
            p.node_port = hp.node_port;
            match &out.touched {
                None => p.probed = hp.targets.iter().map(|(k, t)| (*k, t.probe.clone())).collect(),
                Some(touched) => {
                    for k in &touched.services {
                        match hp.targets.get(k) {
                            Some(probed) => p.probed.insert(*k, probed.probe.clone()),
                            None => p.probed.remove(k),
                        };
                    }
                }
            }
        });
    }

    /// Replaces the published kernel state (without waking readers: the pass's publication
    /// does), dropping the old one outside the channel's lock.
    fn set_observed(&self, state: State) {
        let mut old = None;
        self.status.send_if_modified(|p| {
            old = Some(std::mem::replace(&mut Arc::make_mut(p).observed, state));
            false
        });
        drop(old);
    }

    /// The health input of a pass: targets' health read from the checker itself.
    fn health_input<'a>(&'a self, drains: &'a Drains) -> HealthInput<'a> {
        match &self.health {
            Some(h) => HealthInput {
                now: SystemTime::now(),
                drain_timeout: h.config.drain_timeout,
                all_down: h.config.all_down,
                targets: &h.checker,
                drains,
                node_port: h.config.node_port,
            },
            None => HealthInput {
                now: SystemTime::UNIX_EPOCH,
                drain_timeout: std::time::Duration::ZERO,
                all_down: crate::config::AllDown::FailOpen,
                targets: &NoHealthChecks,
                drains,
                node_port: None,
            },
        }
    }

    fn probe_defaults(&self) -> Option<Settings> {
        self.health.as_ref().map(|h| Settings {
            interval: h.config.interval,
            timeout: h.config.timeout,
            thresholds: Thresholds {
                rise: h.config.rise,
                fall: h.config.fall,
            },
            jitter_percent: h.config.jitter_percent,
        })
    }

    async fn pass_inner(
        &self,
        kind: Pass,
        dumped: Option<Result<State, DataplaneError>>,
        memory: &mut Memory,
    ) -> Result<Outcome, ReconcileError> {
        let (generation, mut dirty) = self.store.changes_since(memory.generation);
        // The targets that changed health since the last pass, taken before anything reads
        // health: a partial pass redoes the Services that depend on them, a full build reads
        // every target anyway.
        let health_changed = self
            .health
            .as_ref()
            .map(|h| h.checker.take_changed())
            .unwrap_or_default();
        let incremental = kind.partial()
            && dumped.is_none()
            && memory.kept
            && !dirty.all
            && dirty.nodes.is_empty()
            && memory.model.as_ref().is_some_and(|model| {
                model
                    .services_depending_on(&health_changed, INCREMENTAL_MAX)
                    .map(|keys| dirty.services.extend(keys))
                    .is_some()
            })
            && dirty.services.len() <= INCREMENTAL_MAX;
        if incremental && let Some(out) = self.pass_incremental(memory, generation, &dirty.services).await? {
            return Ok(out);
        }
        let snap = self.store.dataplane_snapshot().await?;
        // Planned against a fresh dump, or against the kept state.
        let dumped = match dumped {
            Some(dumped) => Some(dumped?),
            None if kind == Pass::Dump || !memory.kept => Some(self.dataplane.observe().await?),
            None => None,
        };
        memory.kept = false;
        let drains = match (memory.model.take(), memory.drains.take()) {
            (Some(m), _) => m.into_drains(),
            (None, Some(d)) => d,
            (None, None) => match &dumped {
                Some(state) => Drains::seed(state),
                None => Drains::seed(&self.status.borrow().observed),
            },
        };
        let mut model = Model::build(snap, self.dataplane.capabilities().manages, &self.health_input(&drains));
        model.set_claim(self.claim.borrow().clone());
        drop(drains);
        if let (Some(h), Some(defaults)) = (&self.health, self.probe_defaults()) {
            h.checker.set_targets(model.health_plan().probes(defaults));
        }
        let ops = match &dumped {
            Some(state) => model.plan_full(state),
            None => model.plan_full(&self.status.borrow().observed),
        };
        memory.model = Some(model);
        memory.generation = generation;
        memory.kept = self.apply(&ops, dumped, kind == Pass::Dump).await?;
        Ok(Outcome { ops, touched: None })
    }

    /// Replaces the changed Services in the kept model and applies what they touched; `None`
    /// when the change needs a full build instead.
    async fn pass_incremental(
        &self,
        memory: &mut Memory,
        generation: u64,
        keys: &std::collections::BTreeSet<crate::ipam::ServiceKey>,
    ) -> Result<Option<Outcome>, ReconcileError> {
        let mut fresh: std::collections::BTreeMap<_, _> = self
            .store
            .snapshot_services(keys)
            .await?
            .into_iter()
            .map(|s| (crate::ipam::ServiceKey::new(&s.cluster, &s.namespace, &s.name), s))
            .collect();
        let Some(model) = memory.model.as_mut() else {
            return Ok(None);
        };
        if *model.claim() != *self.claim.borrow() {
            // Every VIP's claim may have changed: plan them all.
            return Ok(None);
        }
        let none = Drains::default();
        let input = self.health_input(&none);
        let mut touched = Touched::default();
        let services = keys.iter().map(|k| (k.clone(), fresh.remove(k))).collect();
        if !model.replace_all(services, &input, &mut touched) {
            // Two Services claim one virtual service: let a full build decide, as at start.
            return Ok(None);
        }
        if let (Some(h), Some(defaults)) = (&self.health, self.probe_defaults()) {
            h.checker.update_targets(model.probe_changes(&touched, defaults));
        }
        let ops = model.plan_touched(&self.status.borrow().observed, &touched);
        memory.generation = generation;
        memory.kept = false;
        memory.kept = self.apply(&ops, None, false).await?;
        Ok(Some(Outcome {
            ops,
            touched: Some(touched),
        }))
    }

    /// Applies `ops` to the kernel and publishes the state after them: dumped again with fresh
    /// counters (`dump`), or `base` (the state they were planned against; `None`: the published
    /// one) with the operations folded in. Returns whether that state is known to be the
    /// kernel's.
    async fn apply(&self, ops: &[Op], base: Option<State>, dump: bool) -> Result<bool, ReconcileError> {
        if ops.is_empty() {
            if let Some(state) = base {
                self.set_observed(state);
            }
            return Ok(true);
        }
        for op in ops.iter().take(LOG_OPS) {
            info!(op = %op, "dataplane change");
        }
        if ops.len() > LOG_OPS {
            info!(more = ops.len() - LOG_OPS, "dataplane changes not logged one by one");
        }
        self.dataplane.apply(ops).await?;
        if dump {
            // Fresh counters for the status; a failed dump only costs that (and a dump next
            // time).
            match self.dataplane.observe().await {
                Ok(state) => {
                    self.set_observed(state);
                    return Ok(true);
                }
                Err(e) => warn!(error = %error_chain(&e), "dumping the kernel after applying failed"),
            }
        }
        let fold = |state: &mut State| {
            for op in ops {
                if let Err(e) = state.apply(op) {
                    // The kernel accepted what the model refuses: trust neither, dump next time.
                    warn!(op = %op, error = %e, "applied state diverges from the plan");
                    return false;
                }
            }
            true
        };
        let folded = match base {
            Some(mut state) => {
                let ok = fold(&mut state);
                self.set_observed(state);
                ok
            }
            None => {
                let mut ok = false;
                self.status.send_if_modified(|p| {
                    ok = fold(&mut Arc::make_mut(p).observed);
                    false
                });
                ok
            }
        };
        Ok(folded && !dump)
    }

    /// Runs forever: a pass now, then on every store change and every resync period. A failed
    /// pass is retried sooner, backing off up to the resync period.
    pub async fn run(self) {
        let mut changes = self.store.subscribe();
        changes.borrow_and_update();
        let mut claim = self.claim.clone();
        claim.borrow_and_update();
        // Until its sender is gone (never, with no ownership input: the default has none).
        let mut claim_live = claim.has_changed().is_ok();
        let mut health_changes = self.health.as_ref().map(|h| h.checker.subscribe());
        // Lives as long as this loop: aborting the reconciler's task stops the probes too.
        let _checker = self
            .health
            .as_ref()
            .map(|h| tokio::spawn(h.checker.clone().run()))
            .map(AbortOnDrop);
        let mut retry = self.options.retry;
        let mut kind = Pass::Dump;
        // Change passes do not hand freed memory back one by one (each trim walks the heap,
        // about a millisecond at 10,000 Services): once changes pause for a moment, or at most
        // every `TRIM_EVERY` while they keep coming, one trim does it for all of them.
        let mut untrimmed = false;
        let mut last_trim = Instant::now();
        loop {
            let outcome = match kind {
                Pass::Dump => self.pass_answering(&mut changes).await,
                _ => self.pass_with(kind, None).await,
            };
            if kind.partial() {
                untrimmed = true;
                if last_trim.elapsed() >= TRIM_EVERY {
                    release_free_memory();
                    (untrimmed, last_trim) = (false, Instant::now());
                }
            }
            kind = if outcome.is_err() { Pass::Dump } else { Pass::Rebuild };
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
            let wake_at = tokio::time::Instant::now() + until_drain_ends.map_or(delay, |d| d.min(delay));
            loop {
                tokio::select! {
                    Some(()) = health_changed(&mut health_changes) => {
                        // A target changed health: redo the Services that depend on it, at
                        // once (the checker's rise/fall already damped it; the debounce
                        // gathers targets that go down together, as when a node dies, which
                        // takes a full build against the kept state). After a failure the
                        // pass dumps anyway.
                        tokio::time::sleep(self.options.debounce).await;
                        if let Some(rx) = &mut health_changes {
                            rx.borrow_and_update();
                        }
                        if kind != Pass::Dump {
                            kind = Pass::Health;
                        }
                        break;
                    }
                    changed = claim.changed(), if claim_live => {
                        if changed.is_err() {
                            claim_live = false;
                            continue;
                        }
                        claim.borrow_and_update();
                        // Plan every VIP against the kept state, at once.
                        kind = Pass::Rebuild;
                        break;
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The store is gone: nothing will change any more; keep resyncing.
                            tokio::time::sleep_until(wake_at).await;
                            break;
                        }
                        // At once: commits made while this pass runs (an agent's start-up) are
                        // gathered by the journal into the next one.
                        changes.borrow_and_update();
                        kind = Pass::Change;
                        break;
                    }
                    _ = tokio::time::sleep_until(wake_at) => {
                        // The resync (or a retry): dump the kernel to see and repair drift. A
                        // pass after a failure dumps anyway (the kept state is dropped then).
                        if !drain_ends_first {
                            kind = Pass::Dump;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(IDLE_TRIM), if untrimmed => {
                        release_free_memory();
                        (untrimmed, last_trim) = (false, Instant::now());
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.health.as_ref()?;
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.model.as_ref()?.health_plan().next_deadline
    }
}

/// Hands the memory a full pass freed (its snapshot, dump, plan and status: tens of megabytes
/// at 10,000 Services) back to the system. glibc keeps freed memory in its heaps, so the
/// resident size would otherwise stay at the most any pass ever needed.
#[allow(unsafe_code)]
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only returns the allocator's free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long the loop waits, after change passes, for no further change before it hands the
/// memory they freed back.
const IDLE_TRIM: Duration = Duration::from_millis(250);
/// How often at most a stream of change passes hands freed memory back.
const TRIM_EVERY: Duration = Duration::from_secs(1);

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

/// `edgelb dataplane flush`: removes every virtual service (with its real servers) and address
/// inside the pools, and nothing else. Returns what it removed.
pub async fn flush<D: Forwarder>(store: &Store, dataplane: &D) -> Result<Vec<Op>, ReconcileError> {
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
