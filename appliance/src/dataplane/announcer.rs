//! How a VIP comes to reach this appliance: the [`Announcer`] claims it here and makes it known
//! to the network, apart from forwarding (IPVS and nftables are programmed whether or not a VIP
//! is claimed, so a standby is ready the moment it claims). Today's one announcer is
//! [`Layer2`]: the VIP as a host address on the interface, then gratuitous ARP (IPv4) or
//! unsolicited neighbour advertisements (IPv6). The BGP work adds a second.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::warn;

use super::addr::VipAddresses;
use super::{Cause, announce};
use crate::error_chain as chain;

/// How many VIPs are announced at once (each holds a socket for its rounds).
const ANNOUNCES_IN_FLIGHT: usize = 64;

/// Claims and releases VIPs on this appliance.
pub trait Announcer: Send + Sync + 'static {
    /// The VIPs claimed now (host addresses only: a network address on the interface is not
    /// one).
    fn observe(&self) -> impl Future<Output = Result<BTreeSet<IpAddr>, Cause>> + Send;

    /// Claims `vip`: traffic for it is accepted here from now on. Claiming one already claimed
    /// fails, as the kernel does.
    fn claim(&self, vip: IpAddr) -> impl Future<Output = Result<(), Cause>> + Send;

    /// Releases `vip`.
    fn release(&self, vip: IpAddr) -> impl Future<Output = Result<(), Cause>> + Send;

    /// Tells the network about VIPs just claimed (once their forwarding is in place), without
    /// holding up the caller.
    fn announce(&self, vips: Vec<IpAddr>);
}

/// VIPs as host addresses on one interface, announced with gratuitous ARP / unsolicited NA.
#[derive(Debug, Clone)]
pub struct Layer2 {
    addresses: VipAddresses,
    /// Announcement rounds per VIP (0: none) and the time between them.
    count: u32,
    interval: Duration,
}

impl Layer2 {
    pub fn new(addresses: VipAddresses, count: u32, interval: Duration) -> Layer2 {
        Layer2 {
            addresses,
            count,
            interval,
        }
    }
}

impl Announcer for Layer2 {
    async fn observe(&self) -> Result<BTreeSet<IpAddr>, Cause> {
        let listed = self.addresses.list().await.map_err(|e| -> Cause { Arc::new(e) })?;
        Ok(listed.into_iter().filter(|i| i.is_host()).map(|i| i.addr).collect())
    }

    async fn claim(&self, vip: IpAddr) -> Result<(), Cause> {
        self.addresses.add(vip).await.map_err(|e| -> Cause { Arc::new(e) })
    }

    async fn release(&self, vip: IpAddr) -> Result<(), Cause> {
        self.addresses
            .remove(vip)
            .await
            .map(drop)
            .map_err(|e| -> Cause { Arc::new(e) })
    }

    /// Each announcement is `count` rounds `interval` apart (0.4 s by default): one after the
    /// other inside the pass, 10,000 new VIPs kept IPVS waiting for over an hour (the kernel
    /// lab's bench-appliance found it). The address works without the announcement; neighbours
    /// learn it a moment later.
    fn announce(&self, vips: Vec<IpAddr>) {
        if vips.is_empty() || self.count == 0 {
            return;
        }
        let iface = self.addresses.interface().to_owned();
        let (count, interval) = (self.count, self.interval);
        tokio::spawn(async move {
            futures::stream::iter(vips)
                .for_each_concurrent(ANNOUNCES_IN_FLIGHT, |ip| {
                    let iface = iface.as_str();
                    async move {
                        if let Err(e) = announce::announce(iface, ip, count, interval).await {
                            warn!(vip = %ip, error = %chain(&e), "announcing the VIP failed");
                        }
                    }
                })
                .await;
        });
    }
}
