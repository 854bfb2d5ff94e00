//! Linux IPVS over generic netlink: the domain types the appliance sees, a handle shaped like
//! rtnetlink, pipelined batches, and errno mapped to messages that say what to do.
//!
//! It owns the `IPVS` generic-netlink family and nothing else: it never touches addresses, routes
//! or nftables, and its wire types (`wire`) never leave this module. Callers speak in [`Service`],
//! [`Destination`] and [`ServiceKey`]; every operation's doc names its `ipvsadm` equivalent.
//!
//! ```no_run
//! # async fn example() -> Result<(), edgelb::dataplane::ipvs::Error> {
//! use edgelb::dataplane::ipvs::{Destination, ForwardMethod, IpvsHandle, Protocol, Service};
//! use futures::TryStreamExt;
//! use std::net::Ipv4Addr;
//!
//! let handle = IpvsHandle::new()?;
//! let svc = Service::new(Ipv4Addr::new(192, 0, 2, 10).into(), 80, Protocol::Tcp, "rr");
//! handle.service(svc.clone()).add().execute().await?;
//! let node = Destination::new(Ipv4Addr::new(10, 0, 0, 5).into(), 30080, ForwardMethod::Masquerade, 1);
//! handle.destination(&svc.key(), node).add().execute().await?;
//! let services: Vec<_> = handle.services().dump().execute().try_collect().await?;
//! # Ok(())
//! # }
//! ```

mod error;
mod handle;
#[cfg(all(test, target_endian = "little"))]
mod tests;
mod wire;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use error::{Error, Operation};
pub use handle::{
    BatchRequest, DestinationDumpRequest, DestinationRequest, DestinationsRequest, InfoRequest, IpvsConnection,
    IpvsHandle, IpvsOp, IpvsRequest, ServiceDumpRequest, ServiceGetRequest, ServiceRequest, ServicesRequest, connect,
};

/// Transport protocol of a virtual service (`-t`, `-u`, `--sctp-service` in `ipvsadm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Address family of a firewall-mark service, which has no address to infer it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    Inet,
    Inet6,
}

impl AddressFamily {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        }
    }

    /// The netmask meaning "each client address on its own" for persistence: `255.255.255.255`
    /// for IPv4, prefix length 128 for IPv6 (see [`Service::netmask`]).
    pub fn full_netmask(self) -> u32 {
        match self {
            AddressFamily::Inet => u32::MAX,
            AddressFamily::Inet6 => 128,
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressFamily::Inet => "IPv4",
            AddressFamily::Inet6 => "IPv6",
        })
    }
}

/// Virtual service flags (`IP_VS_SVC_F_*`). Unknown bits the kernel reports are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(u32);

impl ServiceFlags {
    /// Persistence (`ipvsadm -p`); pair it with a non-zero [`Service::timeout`].
    pub const PERSISTENT: Self = Self(0x0001);
    /// Set by the kernel on every service it holds; ignored when sending.
    pub const HASHED: Self = Self(0x0002);
    /// One-packet scheduling for UDP (`ipvsadm -o`).
    pub const ONE_PACKET: Self = Self(0x0004);
    /// Scheduler flag 1 (`-b flag-1`).
    pub const SCHED1: Self = Self(0x0008);
    /// Scheduler flag 2 (`-b flag-2`).
    pub const SCHED2: Self = Self(0x0010);
    /// Scheduler flag 3 (`-b flag-3`).
    pub const SCHED3: Self = Self(0x0020);
    /// `sh` scheduler: fall back to another real server when the hashed one is unavailable.
    pub const SH_FALLBACK: Self = Self::SCHED1;
    /// `sh` scheduler: hash the source port as well as the address.
    pub const SH_PORT: Self = Self::SCHED2;
    /// `mh` scheduler: fall back when the chosen real server is unavailable.
    pub const MH_FALLBACK: Self = Self::SCHED1;
    /// `mh` scheduler: hash the source port as well.
    pub const MH_PORT: Self = Self::SCHED2;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// From the kernel's bit representation.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The kernel's bit representation.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags with `other`'s bits set too.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags with `other`'s bits cleared.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The flags a caller can set: all but [`ServiceFlags::HASHED`], which only the kernel owns.
    /// Compare desired and observed services with this.
    pub const fn settable(self) -> Self {
        self.without(Self::HASHED)
    }
}

impl std::ops::BitOr for ServiceFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl std::ops::BitOrAssign for ServiceFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.with(rhs);
    }
}

/// A virtual service addressed by `VIP:port/protocol` (`ipvsadm -A -t|-u|--sctp-service`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Scheduler name as the kernel knows it: `rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, ... Kernel
    /// module `ip_vs_<name>` provides it.
    pub scheduler: String,
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds, 0 for none (`ipvsadm -p`).
    pub timeout: u32,
    /// Persistence granularity (`ipvsadm -M`). IPv4: the mask as a number, e.g. `0xFFFF_FF00` for
    /// `255.255.255.0` (`u32::from(Ipv4Addr)`). IPv6: the prefix length, 1 to 128.
    pub netmask: u32,
}

impl Service {
    /// A service without persistence and with the family's full netmask.
    pub fn new(addr: IpAddr, port: u16, protocol: Protocol, scheduler: impl Into<String>) -> Self {
        Self {
            addr,
            port,
            protocol,
            scheduler: scheduler.into(),
            flags: ServiceFlags::empty(),
            timeout: 0,
            netmask: AddressFamily::of(&addr).full_netmask(),
        }
    }

    /// Turns on persistence for `timeout` seconds (`ipvsadm -p TIMEOUT`).
    pub fn with_persistence(mut self, timeout: u32) -> Self {
        self.flags |= ServiceFlags::PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// Adds `flags` to the service's flags.
    pub fn with_flags(mut self, flags: ServiceFlags) -> Self {
        self.flags |= flags;
        self
    }

    /// What identifies this service in the kernel.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::Inet {
            addr: self.addr,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// A virtual service selected by firewall mark (`ipvsadm -A -f MARK`). The appliance does not
/// create these, but dumps report them and they must not be mistaken for `VIP:port` services.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FwmarkService {
    pub family: AddressFamily,
    /// Non-zero firewall mark.
    pub mark: u32,
    pub scheduler: String,
    pub flags: ServiceFlags,
    pub timeout: u32,
    /// As [`Service::netmask`].
    pub netmask: u32,
}

impl FwmarkService {
    /// A firewall-mark service without persistence and with the family's full netmask.
    pub fn new(family: AddressFamily, mark: u32, scheduler: impl Into<String>) -> Self {
        Self {
            family,
            mark,
            scheduler: scheduler.into(),
            flags: ServiceFlags::empty(),
            timeout: 0,
            netmask: family.full_netmask(),
        }
    }

    /// What identifies this service in the kernel.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::Fwmark {
            family: self.family,
            mark: self.mark,
        }
    }
}

/// Either kind of virtual service, as dumps report them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VirtualService {
    Inet(Service),
    Fwmark(FwmarkService),
}

impl VirtualService {
    /// What identifies this service in the kernel.
    pub fn key(&self) -> ServiceKey {
        match self {
            VirtualService::Inet(s) => s.key(),
            VirtualService::Fwmark(s) => s.key(),
        }
    }

    /// The scheduler name.
    pub fn scheduler(&self) -> &str {
        match self {
            VirtualService::Inet(s) => &s.scheduler,
            VirtualService::Fwmark(s) => &s.scheduler,
        }
    }

    /// The `VIP:port/protocol` service, if this is one.
    pub fn as_inet(&self) -> Option<&Service> {
        match self {
            VirtualService::Inet(s) => Some(s),
            VirtualService::Fwmark(_) => None,
        }
    }

    fn family(&self) -> AddressFamily {
        match self {
            VirtualService::Inet(s) => AddressFamily::of(&s.addr),
            VirtualService::Fwmark(s) => s.family,
        }
    }

    fn options(&self) -> (&str, ServiceFlags, u32, u32) {
        match self {
            VirtualService::Inet(s) => (&s.scheduler, s.flags, s.timeout, s.netmask),
            VirtualService::Fwmark(s) => (&s.scheduler, s.flags, s.timeout, s.netmask),
        }
    }

    /// Checks what the kernel would reject with a bare `EINVAL`, to say why instead.
    fn validate(&self) -> Result<(), Error> {
        let (scheduler, _, _, netmask) = self.options();
        // IP_VS_SCHEDNAME_MAXLEN is 16 including the terminating NUL.
        if scheduler.is_empty() || scheduler.len() > 15 || scheduler.contains('\0') {
            return Err(Error::Invalid {
                what: "scheduler",
                reason: format!("'{scheduler}' must be 1 to 15 bytes without NUL"),
            });
        }
        if self.family() == AddressFamily::Inet6 && !(1..=128).contains(&netmask) {
            return Err(Error::Invalid {
                what: "netmask",
                reason: format!("an IPv6 service takes a prefix length 1 to 128, not {netmask}"),
            });
        }
        if let VirtualService::Fwmark(s) = self
            && s.mark == 0
        {
            return Err(Error::Invalid {
                what: "firewall mark",
                reason: "mark 0 means no mark to the kernel".to_owned(),
            });
        }
        Ok(())
    }
}

impl From<Service> for VirtualService {
    fn from(s: Service) -> Self {
        VirtualService::Inet(s)
    }
}

impl From<FwmarkService> for VirtualService {
    fn from(s: FwmarkService) -> Self {
        VirtualService::Fwmark(s)
    }
}

/// What identifies a virtual service: `VIP:port/protocol`, or a firewall mark and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    Inet {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    Fwmark {
        family: AddressFamily,
        mark: u32,
    },
}

impl ServiceKey {
    /// The key of the `VIP:port/protocol` service.
    pub fn inet(addr: IpAddr, port: u16, protocol: Protocol) -> Self {
        ServiceKey::Inet { addr, port, protocol }
    }

    /// The address family of the service.
    pub fn family(&self) -> AddressFamily {
        match self {
            ServiceKey::Inet { addr, .. } => AddressFamily::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Inet { addr, port, protocol } => write!(f, "{protocol} {}", SocketAddr::new(*addr, *port)),
            ServiceKey::Fwmark { family, mark } => write!(f, "FWM {mark} {family}"),
        }
    }
}

/// How IPVS forwards to a real server (`ipvsadm -m|-i|-g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT (`-m`): the appliance rewrites the destination; replies must come back through it.
    Masquerade,
    /// The real server is a local address of this host.
    Local,
    /// IP-in-IP tunnelling (`-i`).
    Tunnel,
    /// Direct routing (`-g`, the `ipvsadm` default).
    Route,
    /// Cache bypass.
    Bypass,
}

impl fmt::Display for ForwardMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names `ipvsadm -L` prints.
        f.write_str(match self {
            ForwardMethod::Masquerade => "Masq",
            ForwardMethod::Local => "Local",
            ForwardMethod::Tunnel => "Tunnel",
            ForwardMethod::Route => "Route",
            ForwardMethod::Bypass => "Bypass",
        })
    }
}

/// A real server of a virtual service (`ipvsadm -a -r ADDR:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub fwd: ForwardMethod,
    /// Scheduling weight, 0 to `i32::MAX`; 0 drains the server (no new connections).
    pub weight: u32,
    /// Stop scheduling new connections above this many, 0 for no limit (`-x`).
    pub upper_threshold: u32,
    /// Resume scheduling below this many, 0 for no limit (`-y`).
    pub lower_threshold: u32,
}

impl Destination {
    /// A real server without connection thresholds.
    pub fn new(addr: IpAddr, port: u16, fwd: ForwardMethod, weight: u32) -> Self {
        Self {
            addr,
            port,
            fwd,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// `addr:port`, what identifies the real server within its service.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }

    fn validate(&self) -> Result<(), Error> {
        // The kernel keeps the weight in an `int` and refuses negative ones with ERANGE.
        if i32::try_from(self.weight).is_err() {
            return Err(Error::Invalid {
                what: "weight",
                reason: format!("{} is above {}", self.weight, i32::MAX),
            });
        }
        Ok(())
    }
}

/// Counters and rate estimates of a service or real server, from the 64-bit stats attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats64 {
    /// Connections scheduled.
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    /// Connections per second (estimate).
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    /// Bytes per second in (estimate).
    pub inbps: u64,
    pub outbps: u64,
}

/// A virtual service and its counters, as a dump reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub service: VirtualService,
    pub stats: Stats64,
}

/// A real server, its connection counts and counters, as a dump reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    pub destination: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Stats64,
}

/// IPVS version, e.g. 1.2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpvsVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl fmt::Display for IpvsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `ipvsadm --version` and the `-L` header report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub version: IpvsVersion,
    /// Size of the connection hash table (`ip_vs_conn_tab_bits` as a count).
    pub conn_tab_size: u32,
}
