//! What the reconciler publishes after each pass, for `/readyz`, `/metrics`, the status
//! endpoint and the console: how the last pass went, and the kernel's state as the reconciler
//! keeps it. The kept state is the reconciler's own, not a copy: it plans against it, folds the
//! operations it applies into it, and readers build the API's [`VirtualServiceStatus`] of the
//! virtual services they ask for when they ask. At 10,000 Services on 10 nodes a copy in API
//! form was tens of megabytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use edgelb_api::{
    BackendHealth, DataplaneStatus, HealthState, RealServerStatus, TrafficCounters, VirtualServiceStatus,
};
use time::OffsetDateTime;

use super::Ownership;
use crate::dataplane::State;
use crate::forwarding::StatusView;
use crate::forwarding::{Counters, VirtualService, VsKey};
use crate::health::{Checker, Health, Target, TargetState};

/// The reconciler's published view (see the module's documentation).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Mode, last sync, last error, passes and operations. Its `virtual_services` stays empty:
    /// [`status`](Self::status) and [`virtual_services`](Self::virtual_services) build them.
    pub summary: DataplaneStatus,
    /// The kernel's state as the last pass left it (as last known after a failure).
    pub(super) observed: State,
    /// Which VIPs edgelb owns: only their virtual services are shown.
    pub(super) owned: Ownership,
    /// What is probed for each virtual service's real servers (the target of one of them:
    /// the others differ only in address).
    pub(super) probed: BTreeMap<VsKey, Target>,
    /// kube-proxy's node-level health port, when that check is on.
    pub(super) node_port: Option<u16>,
    pub(super) checker: Option<Checker>,
}

impl Published {
    pub fn new(mode: &str) -> Published {
        Published {
            summary: DataplaneStatus {
                mode: mode.to_owned(),
                ..DataplaneStatus::default()
            },
            ..Published::default()
        }
    }

    /// The summary with every owned virtual service.
    pub fn status(&self) -> DataplaneStatus {
        DataplaneStatus {
            virtual_services: self.virtual_services(),
            ..self.summary.clone()
        }
    }

    /// Every owned virtual service in the kernel, in key order.
    pub fn virtual_services(&self) -> Vec<VirtualServiceStatus> {
        self.observed
            .services
            .iter()
            .filter(|(k, _)| self.owned.owns(k.vip))
            .map(|(k, vs)| self.build(*k, vs))
            .collect()
    }

    /// One virtual service, if the kernel has it and edgelb owns it.
    pub fn virtual_service(&self, key: VsKey) -> Option<VirtualServiceStatus> {
        let vs = self.observed.services.get(&key).filter(|_| self.owned.owns(key.vip))?;
        Some(self.build(key, vs))
    }

    /// How many real servers the owned virtual services have, and those drained (weight 0).
    pub fn real_servers(&self) -> (usize, Vec<(VsKey, SocketAddr)>) {
        let mut total = 0;
        let mut drained = Vec::new();
        for ((k, a), rs) in self.observed.real_servers.iter() {
            if !self.owned.owns(k.vip) {
                continue;
            }
            total += 1;
            if rs.spec.weight == 0 {
                drained.push((k, a));
            }
        }
        (total, drained)
    }

    fn build(&self, k: VsKey, vs: &VirtualService) -> VirtualServiceStatus {
        VirtualServiceStatus {
            ip: k.vip,
            port: k.port,
            protocol: k.protocol,
            programmed: true,
            scheduler: Some(vs.spec.scheduler.to_string()),
            persistence_timeout_seconds: vs.spec.persistence,
            counters: counters(&vs.counters),
            real_servers: self
                .observed
                .real_servers_of(k)
                .map(|(a, rs)| RealServerStatus {
                    ip: a.ip(),
                    port: a.port(),
                    weight: rs.spec.weight,
                    method: rs.spec.forward.as_str().to_owned(),
                    active_connections: rs.counters.active_connections,
                    inactive_connections: rs.counters.inactive_connections,
                    counters: counters(&rs.counters),
                    health: self.health(k, a),
                })
                .collect(),
        }
    }

    /// A real server's health (what is probed, its damped state, the last probe), from what
    /// the last pass probes and the checker's current view. With the node-level check on, a
    /// node that fails it shows as the reason its real servers are down.
    fn health(&self, k: VsKey, a: SocketAddr) -> Option<BackendHealth> {
        let checker = self.checker.as_ref()?;
        let known = |t: Target| checker.state(&t).map(|s| (t, s));
        let own = self
            .probed
            .get(&k)
            .map(|t| Target {
                addr: a.ip(),
                ..t.clone()
            })
            .and_then(known);
        let node = self
            .node_port
            .map(|port| crate::health::node_target(a.ip(), port))
            .and_then(known);
        // The node's check when it takes the real server out, else the real server's own.
        let (target, st) = match (own, node) {
            (_, Some(n)) if n.1.health == Health::Down => n,
            (Some(o), _) => o,
            (None, n) => n?,
        };
        Some(backend_health(&target, &st))
    }
}

fn backend_health(target: &Target, st: &TargetState) -> BackendHealth {
    BackendHealth {
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
    }
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

impl StatusView for Published {
    fn summary(&self) -> &DataplaneStatus {
        &self.summary
    }

    fn status(&self) -> DataplaneStatus {
        Published::status(self)
    }

    fn virtual_service(&self, key: VsKey) -> Option<VirtualServiceStatus> {
        Published::virtual_service(self, key)
    }

    fn real_servers(&self) -> (usize, Vec<(VsKey, SocketAddr)>) {
        Published::real_servers(self)
    }
}
