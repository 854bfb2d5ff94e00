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
//! It never tears down on shutdown: dropping the loop leaves the kernel as it is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelb_api::{DataplaneStatus, RealServerStatus, TrafficCounters, VirtualServiceStatus};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Ownership, desired, plan};
use crate::dataplane::{Counters, Dataplane, DataplaneError, Op, State};
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
        }
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
                let vs = observed.as_ref().map(|o| virtual_services(o, owned));
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
        let want = desired(&snap, self.dataplane.manages());
        let cached = if dump {
            None
        } else {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).take()
        };
        let observed = match cached {
            Some(state) => state,
            None => self.dataplane.observe().await?,
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
            tokio::select! {
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
                    // The resync (or a retry): dump the kernel to see and repair drift.
                    dump = true;
                }
            }
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
