//! VIP addresses on the appliance's interface, over rtnetlink: claim a VIP as a host address
//! (/32, or /128 without duplicate address detection), release it, and list what the interface
//! holds so the reconciler can compare.
//!
//! It owns only the host addresses it is asked to add or remove on one named interface. It must
//! never touch another address: removal deletes exactly `VIP/32` or `VIP/128` (the kernel
//! matches address and prefix length, so an operator's `VIP/24` survives), and
//! [`VipAddresses::list_owned`] reports only host addresses the caller's predicate (the pools)
//! claims. It never changes links, routes or neighbours.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use tracing::{debug, info};

/// Why an address operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] io::Error),

    #[error("the rtnetlink connection must be created inside a tokio runtime")]
    NoRuntime,

    #[error("interface '{0}' does not exist: check the VIP interface in the configuration")]
    NoSuchInterface(String),

    #[error("{address} cannot be a VIP: {reason}")]
    Invalid { address: IpAddr, reason: &'static str },

    /// `operation` is the `ip` command that failed, e.g. `ip addr add 192.0.2.1/32 dev eth0`.
    #[error("`{operation}` failed")]
    Kernel {
        operation: String,
        #[source]
        source: io::Error,
    },
}

impl AddrError {
    fn is_no_device(&self) -> bool {
        matches!(self, AddrError::Kernel { source, .. } if source.raw_os_error() == Some(libc::ENODEV))
    }
}

/// An address as the kernel reports it on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Added without duplicate address detection (`nodad`).
    pub nodad: bool,
    /// IPv6 duplicate address detection still running: the address cannot be used yet.
    pub tentative: bool,
    /// IPv6 duplicate address detection found another holder: the address is unusable.
    pub dad_failed: bool,
}

impl InterfaceAddress {
    /// Whether this is a host address (/32 or /128), the only kind the appliance adds.
    pub fn is_host(&self) -> bool {
        self.prefix_len == host_prefix_len(&self.addr)
    }
}

fn host_prefix_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The VIP addresses of one interface. Cheap to clone; operations take `&self` and may run
/// concurrently (netlink requests are multiplexed on one socket).
#[derive(Clone)]
pub struct VipAddresses {
    handle: rtnetlink::Handle,
    iface: Arc<str>,
    /// Resolved from the name at creation and again by [`VipAddresses::list`], or when the kernel
    /// says the index is gone (the interface was recreated).
    index: Arc<AtomicU32>,
}

impl fmt::Debug for VipAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VipAddresses")
            .field("iface", &self.iface)
            .field("index", &self.index.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl VipAddresses {
    /// Opens an rtnetlink socket in the current network namespace and resolves `iface`
    /// (`ip link show IFACE`). Must be called inside a tokio runtime: the connection runs as a task.
    pub async fn new(iface: &str) -> Result<Self, AddrError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AddrError::NoRuntime);
        }
        let (connection, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        tokio::spawn(connection);
        let index = resolve(&handle, iface).await?;
        debug!(iface, index, "VIP interface resolved");
        Ok(Self {
            handle,
            iface: iface.into(),
            index: Arc::new(AtomicU32::new(index)),
        })
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// The interface's index as last resolved.
    pub fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }

    /// Claims `ip` as a host address: `ip addr replace IP/32 dev IFACE`, or for IPv6
    /// `ip addr replace IP/128 dev IFACE nodad` (a VIP must answer at once, and the announcement
    /// that follows claims it). Idempotent: an existing `IP/32` is replaced, not duplicated.
    pub async fn add(&self, ip: IpAddr) -> Result<(), AddrError> {
        check_vip(ip)?;
        let len = host_prefix_len(&ip);
        let operation = format!("ip addr replace {ip}/{len} dev {}{}", self.iface, nodad_word(&ip));
        self.with_index(&operation, |index| {
            let mut request = self.handle.address().add(index, ip, len).replace();
            if ip.is_ipv6() {
                let message = request.message_mut();
                // Old kernels read the header byte, new ones IFA_FLAGS; iproute2 sets both.
                message.header.flags = AddressHeaderFlags::Nodad;
                message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request.execute()
        })
        .await?;
        info!(vip = %ip, iface = %self.iface, "VIP address claimed");
        Ok(())
    }

    /// Releases `ip`: `ip addr del IP/32 dev IFACE` (`/128` for IPv6). Only the host address
    /// goes; the same address with another prefix length is someone else's and stays. Returns
    /// whether the address was there; a missing address is not an error.
    pub async fn remove(&self, ip: IpAddr) -> Result<bool, AddrError> {
        check_vip(ip)?;
        let len = host_prefix_len(&ip);
        let operation = format!("ip addr del {ip}/{len} dev {}", self.iface);
        let result = self
            .with_index(&operation, |index| {
                self.handle.address().del(host_address_message(index, ip)).execute()
            })
            .await;
        match result {
            Ok(()) => {
                info!(vip = %ip, iface = %self.iface, "VIP address released");
                Ok(true)
            }
            Err(AddrError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                debug!(vip = %ip, iface = %self.iface, "VIP address already absent");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Every address on the interface, foreign ones included (`ip addr show dev IFACE`). The
    /// interface is resolved again first, so a missing interface is an error, never an empty list.
    pub async fn list(&self) -> Result<Vec<InterfaceAddress>, AddrError> {
        let index = resolve(&self.handle, &self.iface).await?;
        self.index.store(index, Ordering::Relaxed);
        let operation = format!("ip addr show dev {}", self.iface);
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error(&operation, e))?;
        Ok(messages.iter().filter_map(parse_address).collect())
    }

    /// The VIPs the appliance holds on the interface: host addresses for which `owned` (membership
    /// in a pool) is true. Everything else on the interface is not the appliance's business.
    pub async fn list_owned(&self, owned: impl Fn(IpAddr) -> bool) -> Result<BTreeSet<IpAddr>, AddrError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|a| a.is_host() && owned(a.addr))
            .map(|a| a.addr)
            .collect())
    }

    /// Runs `request` with the interface index; if the kernel says the index is gone (the
    /// interface was deleted and created again), resolves the name once more and retries.
    async fn with_index<F, Fut>(&self, operation: &str, request: F) -> Result<(), AddrError>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = Result<(), rtnetlink::Error>>,
    {
        let first = request(self.index()).await.map_err(|e| kernel_error(operation, e));
        match first {
            Err(e) if e.is_no_device() => {
                let index = resolve(&self.handle, &self.iface).await?;
                self.index.store(index, Ordering::Relaxed);
                request(index).await.map_err(|e| kernel_error(operation, e))
            }
            other => other,
        }
    }
}

fn nodad_word(ip: &IpAddr) -> &'static str {
    if ip.is_ipv6() { " nodad" } else { "" }
}

fn check_vip(ip: IpAddr) -> Result<(), AddrError> {
    let reason = if ip.is_unspecified() {
        "it is the unspecified address"
    } else if ip.is_multicast() {
        "it is a multicast address"
    } else if ip.is_loopback() {
        "it is a loopback address"
    } else {
        return Ok(());
    };
    Err(AddrError::Invalid { address: ip, reason })
}

/// The message `ip addr del IP/len dev IFACE` sends: IFA_LOCAL and IFA_ADDRESS both set, so the
/// kernel matches address and prefix length exactly.
fn host_address_message(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, 32)
            .build(),
        IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, 128)
            .build(),
    }
}

async fn resolve(handle: &rtnetlink::Handle, iface: &str) -> Result<u32, AddrError> {
    let found = handle.link().get().match_name(iface).execute().try_next().await;
    match found {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(AddrError::NoSuchInterface(iface.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
            Err(AddrError::NoSuchInterface(iface.to_owned()))
        }
        Err(e) => Err(kernel_error(&format!("ip link show {iface}"), e)),
    }
}

fn kernel_error(operation: &str, e: rtnetlink::Error) -> AddrError {
    let source = match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    };
    AddrError::Kernel {
        operation: operation.to_owned(),
        source,
    }
}

/// An address message as the interface's address; `None` for one without an address.
fn parse_address(message: &AddressMessage) -> Option<InterfaceAddress> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Flags(f) => flags = Some(*f),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let addr = local.or(address)?;
    let flags = flags.unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(message.header.flags.bits())));
    Some(InterfaceAddress {
        addr,
        prefix_len: message.header.prefix_len,
        nodad: flags.contains(AddressFlags::Nodad),
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rtnetlink::packet_core::Emitable;
    use rtnetlink::packet_route::AddressFamily;

    use super::*;

    fn emitted(message: &AddressMessage) -> Vec<u8> {
        let mut buf = vec![0; message.buffer_len()];
        message.emit(&mut buf);
        buf
    }

    #[test]
    fn delete_message_names_the_host_address_and_its_prefix_byte_for_byte() {
        let message = host_address_message(7, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // ifaddrmsg: family AF_INET, prefix 32, flags 0, scope universe, index 7 (host order).
            2, 32, 0, 0, 7, 0, 0, 0,
            // IFA_ADDRESS 192.0.2.10
            8, 0, 1, 0, 192, 0, 2, 10,
            // IFA_LOCAL 192.0.2.10; no IFA_BROADCAST for a /32
            8, 0, 2, 0, 192, 0, 2, 10,
        ];
        if cfg!(target_endian = "little") {
            assert_eq!(emitted(&message), expected);
        }

        let v6: Ipv6Addr = "2001:db8::10".parse().expect("literal");
        let message = host_address_message(7, IpAddr::V6(v6));
        assert_eq!(message.header.family, AddressFamily::Inet6);
        assert_eq!(message.header.prefix_len, 128);
        assert_eq!(
            message.attributes,
            vec![AddressAttribute::Address(v6.into()), AddressAttribute::Local(v6.into()),]
        );
    }

    #[test]
    fn parsed_addresses_carry_prefix_and_dad_state() {
        let v6: Ipv6Addr = "2001:db8::10".parse().expect("literal");
        let mut message = host_address_message(3, IpAddr::V6(v6));
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Permanent));
        let parsed = parse_address(&message).expect("an address");
        assert_eq!(parsed.addr, IpAddr::V6(v6));
        assert!(parsed.is_host() && parsed.nodad && !parsed.tentative && !parsed.dad_failed);

        // Without IFA_FLAGS the header byte counts.
        let mut message = host_address_message(3, IpAddr::V6(v6));
        message.header.prefix_len = 64;
        message.header.flags = AddressHeaderFlags::Tentative;
        let parsed = parse_address(&message).expect("an address");
        assert!(!parsed.is_host() && parsed.tentative && !parsed.nodad);
    }

    #[test]
    fn unusable_vips_are_refused_before_the_kernel_sees_them() {
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("ff02::1".parse().expect("literal")),
        ] {
            assert!(matches!(check_vip(ip), Err(AddrError::Invalid { .. })), "{ip}");
        }
        assert!(check_vip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).is_ok());
    }

    #[test]
    fn creating_outside_a_runtime_is_an_error_not_a_panic() {
        let created = futures::executor::block_on(VipAddresses::new("lo"));
        assert!(matches!(created, Err(AddrError::NoRuntime)));
    }
}
