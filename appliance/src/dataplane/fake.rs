//! An in-memory data plane for unit tests: applies operations to a [`State`] with the kernel's
//! rules (adding what exists or touching what does not fails) and records every operation, so
//! tests can assert on what the reconciler did, not only on where it ended.

use std::sync::{Arc, Mutex};

use super::{Capabilities, DataplaneError, Forwarder, Manages, Op, State};

#[derive(Debug, Default)]
struct Inner {
    state: State,
    log: Vec<Op>,
    fail_observe: Option<String>,
    observe_delay: std::time::Duration,
}

/// A fake kernel; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    inner: Arc<Mutex<Inner>>,
}

impl FakeDataplane {
    /// An empty kernel that does not manage addresses.
    pub fn new() -> FakeDataplane {
        FakeDataplane::default()
    }

    /// An empty kernel whose data plane manages addresses and its nftables table too.
    pub fn full() -> FakeDataplane {
        let fake = FakeDataplane::default();
        {
            let mut inner = fake.lock();
            inner.state.addresses = Some(Default::default());
            inner.state.rules = Some(Default::default());
        }
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has failed already; keep the state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the kernel holds now.
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Changes the kernel behind the reconciler's back (someone using `ipvsadm`).
    pub fn tamper(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock().state);
    }

    /// Every operation applied so far, and forgets them.
    pub fn take_log(&self) -> Vec<Op> {
        std::mem::take(&mut self.lock().log)
    }

    /// Makes `observe` fail (with `Some`) or work again (`None`).
    pub fn fail_observe(&self, why: Option<&str>) {
        self.lock().fail_observe = why.map(str::to_owned);
    }

    /// Makes each observation take this long, returning the state as it was when it began, as
    /// a real dump of 100,000 entries can miss what changes while it runs.
    pub fn slow_observe(&self, delay: std::time::Duration) {
        self.lock().observe_delay = delay;
    }
}

impl Forwarder for FakeDataplane {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        let inner = self.lock();
        Capabilities::ipvs(Manages {
            addresses: inner.state.addresses.is_some(),
            rules: inner.state.rules.is_some(),
            ..Manages::default()
        })
    }

    async fn observe(&self) -> Result<State, DataplaneError> {
        let (seen, delay) = {
            let inner = self.lock();
            let seen = match &inner.fail_observe {
                Some(why) => Err(DataplaneError::Observe {
                    what: why.clone(),
                    source: None,
                }),
                None => Ok(inner.state.clone()),
            };
            (seen, inner.observe_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        seen
    }

    async fn apply(&self, ops: &[Op]) -> Result<(), DataplaneError> {
        let mut inner = self.lock();
        let mut failed = Vec::new();
        for op in ops {
            inner.log.push(op.clone());
            if let Err(e) = inner.state.apply(op) {
                failed.push((op.clone(), super::cause(e)));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Apply {
                total: ops.len(),
                failed,
            })
        }
    }
}
