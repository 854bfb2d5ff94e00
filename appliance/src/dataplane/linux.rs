//! The Linux data plane: [`State`] and [`Op`] translated to IPVS over generic netlink, VIPs
//! claimed by the layer-2 [`Announcer`](super::announcer::Announcer) and the appliance's
//! nftables table. Dumps read every virtual service and its real servers with their 64-bit
//! counters; IPVS changes go to the kernel as one pipelined batch, so a full sync of thousands of
//! services costs a few hundred system calls. It checks and sets the sysctls forwarding needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use super::addr::VipAddresses;
use super::announcer::{Announcer, Layer2};
use super::ipvs::{self, Destination, DestinationEntry, ForwardMethod, IpvsHandle, IpvsOp, ServiceEntry, ServiceKey};
use super::nft::{NatMode, NftTable};
use super::sysctl::{self, Sysctls};
use super::{
    Capabilities, Counters, DataplaneError, Forward, Forwarder, Manages, Op, Protocol, RealServer, RealServers, RsSpec,
    State,
};
use super::{Cause, Scheduler, VirtualService, VsKey, VsSpec, cause};

/// How many real-server dumps run at once during an observation.
const DUMPS_IN_FLIGHT: usize = 16;

/// Settings of the Linux data plane.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// Interface that carries the VIPs; `None` leaves addresses to someone else.
    pub interface: Option<String>,
    /// The appliance's nftables table; `None` leaves NAT and filtering to someone else.
    pub nft_table: Option<String>,
    /// Gratuitous ARP / NA rounds when a VIP is claimed.
    pub announce_count: u32,
    pub announce_interval: Duration,
    /// How replies reach the client: full NAT (the default) or plain NAT, for every Service.
    pub nat: NatMode,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        LinuxOptions {
            interface: None,
            nft_table: Some(super::nft::DEFAULT_TABLE.to_owned()),
            announce_count: 3,
            announce_interval: Duration::from_millis(200),
            nat: NatMode::FullNat,
        }
    }
}

/// IPVS, VIP addresses and the appliance's nftables table in the running kernel.
#[derive(Debug, Clone)]
pub struct LinuxDataplane {
    ipvs: IpvsHandle,
    /// A second netlink socket for dumps: a resync's dump of 100,000 real servers keeps many
    /// requests queued on its socket, and a change applied meanwhile must not wait behind them.
    dumps: IpvsHandle,
    /// Claims the VIPs, when this data plane manages addresses.
    announcer: Option<Layer2>,
    nft: Option<NftTable>,
    options: LinuxOptions,
}

impl LinuxDataplane {
    /// Connects to IPVS and proves it can be used: the module is there and the process may
    /// program it. Fails with a message that says what to do otherwise.
    pub async fn connect(options: LinuxOptions) -> Result<LinuxDataplane, DataplaneError> {
        let ipvs = IpvsHandle::new().map_err(|e| DataplaneError::unavailable("opening the IPVS socket", e))?;
        match ipvs.resolve_family().await {
            Ok(_) => {}
            Err(ipvs::Error::IpvsUnavailable(_)) => {
                return Err(DataplaneError::Unavailable {
                    what: "the kernel has no IPVS: load it with `modprobe ip_vs` (and the scheduler modules, e.g. \
                     ip_vs_rr ip_vs_wlc), or run the control plane only with --dataplane none"
                        .into(),
                    source: None,
                });
            }
            Err(e) => return Err(DataplaneError::unavailable("resolving the IPVS netlink family", e)),
        }
        // Every IPVS command needs CAP_NET_ADMIN, reads too: asking for the version proves it.
        match ipvs.info().execute().await {
            Ok(info) => debug!(version = %info.version, "IPVS is available"),
            Err(ipvs::Error::PermissionDenied { .. }) => {
                return Err(DataplaneError::Unavailable {
                    what: "the process lacks CAP_NET_ADMIN: run it as root or grant the capability \
                     (AmbientCapabilities=CAP_NET_ADMIN in the systemd unit), or run the control plane only \
                     with --dataplane none"
                        .into(),
                    source: None,
                });
            }
            Err(e) => return Err(DataplaneError::unavailable("asking IPVS for its version", e)),
        }
        let dumps = IpvsHandle::new().map_err(|e| DataplaneError::unavailable("opening the IPVS dump socket", e))?;
        dumps
            .resolve_family()
            .await
            .map_err(|e| DataplaneError::unavailable("resolving the IPVS netlink family", e))?;
        let announcer = match &options.interface {
            Some(iface) => Some(Layer2::new(
                VipAddresses::new(iface)
                    .await
                    .map_err(|e| DataplaneError::unavailable(format!("VIP interface {iface}"), e))?,
                options.announce_count,
                options.announce_interval,
            )),
            None => None,
        };
        let nft = match &options.nft_table {
            Some(t) => {
                Some(NftTable::new(t).map_err(|e| DataplaneError::unavailable(format!("nftables table {t}"), e))?)
            }
            None => None,
        };
        // Each failure is logged with its impact; forwarding may still work (e.g. set by the host).
        Sysctls::default().ensure(&sysctl::required(true, false));
        Ok(LinuxDataplane {
            ipvs,
            dumps,
            announcer,
            nft,
            options,
        })
    }

    pub fn options(&self) -> &LinuxOptions {
        &self.options
    }
}

fn to_ipvs_protocol(p: Protocol) -> ipvs::Protocol {
    match p {
        Protocol::Tcp => ipvs::Protocol::Tcp,
        Protocol::Udp => ipvs::Protocol::Udp,
        Protocol::Sctp => ipvs::Protocol::Sctp,
    }
}

fn from_ipvs_protocol(p: ipvs::Protocol) -> Protocol {
    match p {
        ipvs::Protocol::Tcp => Protocol::Tcp,
        ipvs::Protocol::Udp => Protocol::Udp,
        ipvs::Protocol::Sctp => Protocol::Sctp,
    }
}

/// IPVS's virtual services and real servers, with their counters, over `handle`.
async fn dump_ipvs(handle: &IpvsHandle) -> Result<(BTreeMap<VsKey, VirtualService>, RealServers), DataplaneError> {
    let entries: Vec<ServiceEntry> = handle
        .services()
        .dump()
        .execute()
        .try_collect()
        .await
        .map_err(|e| DataplaneError::observe("dumping IPVS services", e))?;
    let services: BTreeMap<VsKey, VirtualService> = entries.iter().filter_map(observed_service).collect();
    let dumps = futures::stream::iter(services.keys().copied())
        .map(|k| async move {
            let dests: Result<Vec<DestinationEntry>, ipvs::Error> = handle
                .destinations(&service_key(k))
                .dump()
                .execute()
                .try_collect()
                .await;
            (k, dests)
        })
        .buffer_unordered(DUMPS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut real_servers = RealServers::default();
    for (k, dests) in dumps {
        match dests {
            Ok(dests) => real_servers.set(k, dests.iter().map(observed_real_server).collect()),
            // Deleted by someone between the two dumps: it is simply gone.
            Err(ipvs::Error::ServiceNotFound { .. }) => {}
            Err(e) => return Err(DataplaneError::observe(format!("real servers of {k}"), e)),
        }
    }
    Ok((services, real_servers))
}

/// Reads IPVS's traffic counters on a socket of its own, for the history's sampler: a sample
/// never waits behind the reconciler's work, nor it behind a sample.
#[derive(Debug, Clone)]
pub struct TrafficReader {
    handle: IpvsHandle,
}

impl TrafficReader {
    pub async fn connect() -> Result<TrafficReader, DataplaneError> {
        let handle =
            IpvsHandle::new().map_err(|e| DataplaneError::unavailable("opening the IPVS counters socket", e))?;
        handle
            .resolve_family()
            .await
            .map_err(|e| DataplaneError::unavailable("resolving the IPVS netlink family", e))?;
        Ok(TrafficReader { handle })
    }

    /// Every virtual service's counters and its real servers'.
    pub async fn read(&self) -> Result<Vec<(VsKey, Counters, Vec<(SocketAddr, Counters)>)>, DataplaneError> {
        let (services, real_servers) = dump_ipvs(&self.handle).await?;
        Ok(services
            .into_iter()
            .map(|(k, vs)| {
                let rs = real_servers.of(k).iter().map(|(a, r)| (*a, r.counters)).collect();
                (k, vs.counters, rs)
            })
            .collect())
    }
}

fn service_key(k: VsKey) -> ServiceKey {
    ServiceKey::inet(k.vip, k.port, to_ipvs_protocol(k.protocol))
}

fn service(k: VsKey, spec: &VsSpec) -> ipvs::Service {
    let s = ipvs::Service::new(k.vip, k.port, to_ipvs_protocol(k.protocol), spec.scheduler.as_str());
    match spec.persistence {
        Some(t) => s.with_persistence(t),
        None => s,
    }
}

fn destination(addr: SocketAddr, spec: RsSpec) -> Destination {
    let fwd = match spec.forward {
        Forward::Masquerade | Forward::Other => ForwardMethod::Masquerade,
        Forward::Route => ForwardMethod::Route,
        Forward::Tunnel => ForwardMethod::Tunnel,
    };
    Destination::new(addr.ip(), addr.port(), fwd, spec.weight)
}

fn counters(s: &ipvs::Stats64) -> Counters {
    Counters {
        connections: s.conns,
        packets_in: s.inpkts,
        packets_out: s.outpkts,
        bytes_in: s.inbytes,
        bytes_out: s.outbytes,
        active_connections: 0,
        inactive_connections: 0,
    }
}

fn observed_service(e: &ServiceEntry) -> Option<(VsKey, VirtualService)> {
    // Firewall-mark services are never edgelb's: they have no VIP to own.
    let s = e.service.as_inet()?;
    let persistent = s.flags.contains(ipvs::ServiceFlags::PERSISTENT);
    Some((
        VsKey::new(s.addr, s.port, from_ipvs_protocol(s.protocol)),
        VirtualService {
            spec: VsSpec {
                scheduler: Scheduler::from_name(&s.scheduler),
                persistence: persistent.then_some(s.timeout),
            },
            counters: counters(&e.stats),
        },
    ))
}

fn observed_real_server(e: &DestinationEntry) -> (SocketAddr, RealServer) {
    let d = &e.destination;
    let forward = match d.fwd {
        ForwardMethod::Masquerade => Forward::Masquerade,
        ForwardMethod::Route => Forward::Route,
        ForwardMethod::Tunnel => Forward::Tunnel,
        ForwardMethod::Local | ForwardMethod::Bypass => Forward::Other,
    };
    let mut c = counters(&e.stats);
    c.active_connections = e.active_conns;
    c.inactive_connections = e.inactive_conns;
    (
        d.socket_addr(),
        RealServer {
            spec: RsSpec {
                weight: d.weight,
                forward,
            },
            counters: c,
        },
    )
}

fn ipvs_op(op: &Op) -> Option<IpvsOp> {
    Some(match op {
        Op::AddService(k, s) => IpvsOp::AddService(service(*k, s).into()),
        Op::EditService(k, s) => IpvsOp::EditService(service(*k, s).into()),
        Op::DeleteService(k) => IpvsOp::DeleteService(service_key(*k)),
        Op::AddRealServer(k, a, s) => IpvsOp::AddDestination(service_key(*k), destination(*a, *s)),
        Op::EditRealServer(k, a, s) => IpvsOp::EditDestination(service_key(*k), destination(*a, *s)),
        Op::DeleteRealServer(k, a) => {
            IpvsOp::DeleteDestination(service_key(*k), destination(*a, RsSpec::masquerade(0)))
        }
        Op::AddAddress(_)
        | Op::DeleteAddress(_)
        | Op::SetRules(_)
        | Op::DeleteRules
        | Op::PatchElements { .. }
        | Op::DeleteElements(_) => return None,
    })
}

impl Forwarder for LinuxDataplane {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ipvs(Manages {
            addresses: self.announcer.is_some(),
            rules: self.nft.is_some(),
            nat: self.options.nat,
        })
    }

    async fn observe(&self) -> Result<State, DataplaneError> {
        let (services, real_servers) = dump_ipvs(&self.dumps).await?;
        let addresses = match &self.announcer {
            Some(a) => Some(a.observe().await.map_err(|source| DataplaneError::Observe {
                what: "listing the VIP addresses".into(),
                source: Some(source),
            })?),
            None => None,
        };
        let rules = match &self.nft {
            Some(t) => Some(
                t.observe()
                    .await
                    .map_err(|e| DataplaneError::observe("reading the nftables table", e))?
                    .unwrap_or_default(),
            ),
            None => None,
        };
        Ok(State {
            services,
            real_servers,
            addresses,
            rules,
        })
    }

    async fn apply(&self, ops: &[Op]) -> Result<(), DataplaneError> {
        let mut failed = Vec::new();
        let mut batch = Vec::with_capacity(ops.len());
        let mut batched = Vec::with_capacity(ops.len());
        // The plan puts rules and address claims first and address releases last; IPVS changes
        // in between go as one batch.
        let mut after = Vec::new();
        let mut claimed = Vec::new();
        for op in ops {
            match ipvs_op(op) {
                Some(i) => {
                    batch.push(i);
                    batched.push(op);
                }
                None if matches!(op, Op::DeleteAddress(_) | Op::DeleteRules | Op::DeleteElements(_)) => after.push(op),
                None => match self.apply_other(op).await {
                    Ok(()) => {
                        if let Op::AddAddress(ip) = op {
                            claimed.push(*ip);
                        }
                    }
                    Err(e) if matches!(op, Op::SetRules(_) | Op::PatchElements { .. }) => {
                        // Without the table's source ranges and source NAT, new virtual services
                        // would be open to everyone and real servers unreachable: change nothing
                        // else. The next pass dumps the kernel and retries.
                        let mut failed = vec![(op.clone(), e)];
                        failed.extend(
                            ops.iter()
                                .filter(|o| *o != op)
                                .map(|o| (o.clone(), cause("not attempted: the nftables table was not set"))),
                        );
                        return Err(DataplaneError::Apply {
                            total: ops.len(),
                            failed,
                        });
                    }
                    Err(e) => failed.push((op.clone(), e)),
                },
            }
        }
        if ops
            .iter()
            .any(|op| matches!(op, Op::AddService(k, _) if k.vip.is_ipv6()))
        {
            Sysctls::default().ensure(&[sysctl::IPV6_FORWARD]);
        }
        if !batch.is_empty() {
            let results = self.ipvs.batch(batch).execute().await.map_err(|e| {
                let e: Cause = Arc::new(e);
                DataplaneError::Apply {
                    total: ops.len(),
                    failed: batched.iter().map(|op| ((*op).clone(), e.clone())).collect(),
                }
            })?;
            for (op, r) in batched.into_iter().zip(results) {
                if let Err(e) = r {
                    failed.push((op.clone(), Arc::new(e)));
                }
            }
        }
        // Neighbours learn a VIP once its virtual services are there.
        if let Some(a) = &self.announcer {
            a.announce(claimed);
        }
        for op in after {
            if let Err(e) = self.apply_other(op).await {
                failed.push((op.clone(), e));
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

impl LinuxDataplane {
    /// An operation on addresses or the nftables table.
    async fn apply_other(&self, op: &Op) -> Result<(), Cause> {
        let unmanaged = || cause(format!("{op}: not managed by this data plane"));
        let nft = |e: super::nft::NftError| -> Cause { Arc::new(e) };
        match op {
            Op::SetRules(r) => self.nft.as_ref().ok_or_else(unmanaged)?.apply(r).await.map_err(nft),
            Op::DeleteRules => self.nft.as_ref().ok_or_else(unmanaged)?.flush().await.map_err(nft),
            Op::PatchElements { delete, add } => self
                .nft
                .as_ref()
                .ok_or_else(unmanaged)?
                .patch(add, delete)
                .await
                .map_err(nft),
            Op::DeleteElements(e) => self
                .nft
                .as_ref()
                .ok_or_else(unmanaged)?
                .patch(&[], e)
                .await
                .map_err(nft),
            Op::AddAddress(ip) => self.announcer.as_ref().ok_or_else(unmanaged)?.claim(*ip).await,
            Op::DeleteAddress(ip) => self.announcer.as_ref().ok_or_else(unmanaged)?.release(*ip).await,
            other => Err(cause(format!("{other}: not an address or rules operation"))),
        }
    }
}
