//! Translation between the domain types of `ipvs` and IPVS messages: one builder per request,
//! one parser per reply. The only place that knows both shapes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::DecodeError;

use super::super::{
    AddressFamily, Destination, DestinationEntry, ForwardMethod, FwmarkService, Info, IpvsVersion, Protocol, Service,
    ServiceEntry, ServiceFlags, ServiceKey, Stats64, VirtualService,
};
use super::{
    AF_INET, AF_INET6, CmdAttr, DestAttr, IP_VS_CONN_F_BYPASS, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_HASHED, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, InfoAttr, IpvsCmd, IpvsMessage, StatsAttr, SvcAttr,
};

/// `IPVS_CMD_NEW_SERVICE` (`ipvsadm -A`).
pub fn new_service(service: &VirtualService) -> IpvsMessage {
    message(IpvsCmd::NewService, vec![CmdAttr::Service(service_full(service))])
}

/// `IPVS_CMD_SET_SERVICE` (`ipvsadm -E`).
pub fn set_service(service: &VirtualService) -> IpvsMessage {
    message(IpvsCmd::SetService, vec![CmdAttr::Service(service_full(service))])
}

/// `IPVS_CMD_DEL_SERVICE` (`ipvsadm -D`).
pub fn del_service(key: &ServiceKey) -> IpvsMessage {
    message(IpvsCmd::DelService, vec![CmdAttr::Service(service_key(key))])
}

/// `IPVS_CMD_GET_SERVICE` for one service (a `doit`, answered by one `IPVS_CMD_NEW_SERVICE`).
pub fn get_service(key: &ServiceKey) -> IpvsMessage {
    message(IpvsCmd::GetService, vec![CmdAttr::Service(service_key(key))])
}

/// `IPVS_CMD_GET_SERVICE` without attributes, sent with `NLM_F_DUMP` (`ipvsadm -L`).
pub fn dump_services() -> IpvsMessage {
    message(IpvsCmd::GetService, Vec::new())
}

/// `IPVS_CMD_NEW_DEST` (`ipvsadm -a`).
pub fn new_dest(service: &ServiceKey, dest: &Destination) -> IpvsMessage {
    message(
        IpvsCmd::NewDest,
        vec![CmdAttr::Service(service_key(service)), CmdAttr::Dest(dest_full(dest))],
    )
}

/// `IPVS_CMD_SET_DEST` (`ipvsadm -e`).
pub fn set_dest(service: &ServiceKey, dest: &Destination) -> IpvsMessage {
    message(
        IpvsCmd::SetDest,
        vec![CmdAttr::Service(service_key(service)), CmdAttr::Dest(dest_full(dest))],
    )
}

/// `IPVS_CMD_DEL_DEST` (`ipvsadm -d`): only address, port and family identify it.
pub fn del_dest(service: &ServiceKey, addr: IpAddr, port: u16) -> IpvsMessage {
    message(
        IpvsCmd::DelDest,
        vec![
            CmdAttr::Service(service_key(service)),
            CmdAttr::Dest(vec![
                DestAttr::Addr(addr_bytes(&addr)),
                DestAttr::Port(port),
                DestAttr::AddrFamily(af(AddressFamily::of(&addr))),
            ]),
        ],
    )
}

/// `IPVS_CMD_GET_DEST`, sent with `NLM_F_DUMP`. The kernel needs the service to list; for a
/// service that does not exist it answers an empty dump, not an error.
pub fn dump_dests(service: &ServiceKey) -> IpvsMessage {
    message(IpvsCmd::GetDest, vec![CmdAttr::Service(service_key(service))])
}

/// `IPVS_CMD_FLUSH` (`ipvsadm -C`).
pub fn flush() -> IpvsMessage {
    message(IpvsCmd::Flush, Vec::new())
}

/// `IPVS_CMD_GET_INFO`, answered by `IPVS_CMD_SET_INFO`.
pub fn get_info() -> IpvsMessage {
    message(IpvsCmd::GetInfo, Vec::new())
}

fn message(cmd: IpvsCmd, attrs: Vec<CmdAttr>) -> IpvsMessage {
    IpvsMessage { cmd, attrs }
}

fn af(family: AddressFamily) -> u16 {
    match family {
        AddressFamily::Inet => AF_INET,
        AddressFamily::Inet6 => AF_INET6,
    }
}

fn protocol_number(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// `union nf_inet_addr`: IPv4 in the first 4 bytes, the rest zero.
fn addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut raw = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => raw = v6.octets(),
    }
    raw
}

fn netmask_bytes(family: AddressFamily, netmask: u32) -> [u8; 4] {
    match family {
        AddressFamily::Inet => netmask.to_be_bytes(),
        AddressFamily::Inet6 => netmask.to_ne_bytes(),
    }
}

/// The identifying attributes: the family, then the mark or protocol, address and port.
fn service_key(key: &ServiceKey) -> Vec<SvcAttr> {
    match key {
        ServiceKey::Inet { addr, port, protocol } => vec![
            SvcAttr::Af(af(AddressFamily::of(addr))),
            SvcAttr::Protocol(protocol_number(*protocol)),
            SvcAttr::Addr(addr_bytes(addr)),
            SvcAttr::Port(*port),
        ],
        ServiceKey::Fwmark { family, mark } => {
            vec![SvcAttr::Af(af(*family)), SvcAttr::Fwmark(*mark)]
        }
    }
}

/// What `ip_vs_genl_parse_service` requires for add and edit: the key, then scheduler, flags,
/// timeout and netmask.
fn service_full(service: &VirtualService) -> Vec<SvcAttr> {
    let (scheduler, flags, timeout, netmask) = service.options();
    let mut attrs = service_key(&service.key());
    attrs.extend([
        SvcAttr::SchedName(scheduler.to_owned()),
        // HASHED is the kernel's bookkeeping: never set it (kernels before 5.13 would refuse to
        // hash a new service that carries it) and leave it alone on edit, so it is out of the mask.
        SvcAttr::Flags {
            flags: flags.bits() & !IP_VS_SVC_F_HASHED,
            mask: !IP_VS_SVC_F_HASHED,
        },
        SvcAttr::Timeout(timeout),
        SvcAttr::Netmask(netmask_bytes(service.family(), netmask)),
    ]);
    attrs
}

fn fwd_method(fwd: ForwardMethod) -> u32 {
    match fwd {
        ForwardMethod::Masquerade => IP_VS_CONN_F_MASQ,
        ForwardMethod::Local => IP_VS_CONN_F_LOCALNODE,
        ForwardMethod::Tunnel => IP_VS_CONN_F_TUNNEL,
        ForwardMethod::Route => IP_VS_CONN_F_DROUTE,
        ForwardMethod::Bypass => IP_VS_CONN_F_BYPASS,
    }
}

/// What `ip_vs_genl_parse_dest` requires for add and edit, plus the real server's own family
/// (the kernel falls back to the service's when it is absent).
fn dest_full(dest: &Destination) -> Vec<DestAttr> {
    vec![
        DestAttr::Addr(addr_bytes(&dest.addr)),
        DestAttr::Port(dest.port),
        DestAttr::FwdMethod(fwd_method(dest.fwd)),
        DestAttr::Weight(dest.weight),
        DestAttr::UThresh(dest.upper_threshold),
        DestAttr::LThresh(dest.lower_threshold),
        DestAttr::AddrFamily(af(AddressFamily::of(&dest.addr))),
    ]
}

fn family_from(af_value: u16) -> Result<AddressFamily, DecodeError> {
    match af_value {
        AF_INET => Ok(AddressFamily::Inet),
        AF_INET6 => Ok(AddressFamily::Inet6),
        other => Err(format!("unknown address family {other}").into()),
    }
}

fn ip_from(family: AddressFamily, raw: &[u8; 16]) -> IpAddr {
    match family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

fn netmask_from(family: AddressFamily, raw: [u8; 4]) -> u32 {
    match family {
        AddressFamily::Inet => u32::from_be_bytes(raw),
        AddressFamily::Inet6 => u32::from_ne_bytes(raw),
    }
}

fn stats_from(attrs: &[StatsAttr]) -> Stats64 {
    let mut stats = Stats64::default();
    for attr in attrs {
        match attr {
            StatsAttr::Conns(v) => stats.conns = v.get(),
            StatsAttr::InPkts(v) => stats.inpkts = v.get(),
            StatsAttr::OutPkts(v) => stats.outpkts = v.get(),
            StatsAttr::InBytes(v) => stats.inbytes = v.get(),
            StatsAttr::OutBytes(v) => stats.outbytes = v.get(),
            StatsAttr::Cps(v) => stats.cps = v.get(),
            StatsAttr::InPps(v) => stats.inpps = v.get(),
            StatsAttr::OutPps(v) => stats.outpps = v.get(),
            StatsAttr::InBps(v) => stats.inbps = v.get(),
            StatsAttr::OutBps(v) => stats.outbps = v.get(),
            StatsAttr::Pad(_) | StatsAttr::Other(_) => {}
        }
    }
    stats
}

fn expect_cmd(msg: &IpvsMessage, cmd: IpvsCmd) -> Result<(), DecodeError> {
    if msg.cmd == cmd {
        Ok(())
    } else {
        Err(format!("expected command {cmd:?}, got {:?}", msg.cmd).into())
    }
}

fn missing(what: &str) -> DecodeError {
    format!("reply lacks {what}").into()
}

/// A service from an `IPVS_CMD_NEW_SERVICE` message, as dumps and `get` answer. Counters come
/// from `IPVS_SVC_ATTR_STATS64`, or from the 32-bit `IPVS_SVC_ATTR_STATS` on kernels before 4.1.
pub fn parse_service_entry(msg: &IpvsMessage) -> Result<ServiceEntry, DecodeError> {
    expect_cmd(msg, IpvsCmd::NewService)?;
    let attrs = msg
        .attrs
        .iter()
        .find_map(|a| match a {
            CmdAttr::Service(attrs) => Some(attrs),
            _ => None,
        })
        .ok_or_else(|| missing("IPVS_CMD_ATTR_SERVICE"))?;

    let (mut af_value, mut protocol, mut addr, mut port, mut fwmark) = (None, None, None, None, None);
    let (mut scheduler, mut flags, mut timeout, mut netmask) = (None, 0, 0, None);
    let (mut stats32, mut stats64) = (None, None);
    for attr in attrs {
        match attr {
            SvcAttr::Af(v) => af_value = Some(*v),
            SvcAttr::Protocol(v) => protocol = Some(*v),
            SvcAttr::Addr(v) => addr = Some(*v),
            SvcAttr::Port(v) => port = Some(*v),
            SvcAttr::Fwmark(v) => fwmark = Some(*v),
            SvcAttr::SchedName(v) => scheduler = Some(v.clone()),
            SvcAttr::Flags { flags: f, .. } => flags = *f,
            SvcAttr::Timeout(v) => timeout = *v,
            SvcAttr::Netmask(v) => netmask = Some(*v),
            SvcAttr::Stats(v) => stats32 = Some(v),
            SvcAttr::Stats64(v) => stats64 = Some(v),
            SvcAttr::PeName(_) | SvcAttr::Other(_) => {}
        }
    }

    let family = family_from(af_value.ok_or_else(|| missing("IPVS_SVC_ATTR_AF"))?)?;
    let scheduler = scheduler.ok_or_else(|| missing("IPVS_SVC_ATTR_SCHED_NAME"))?;
    let flags = ServiceFlags::from_bits(flags);
    let netmask = netmask.map_or(0, |raw| netmask_from(family, raw));
    let stats = stats64.or(stats32).map_or_else(Stats64::default, |s| stats_from(s));

    // The kernel sends the mark only for firewall-mark services, and then no address or port.
    let service = match fwmark {
        Some(mark) if mark != 0 => VirtualService::Fwmark(FwmarkService {
            family,
            mark,
            scheduler,
            flags,
            timeout,
            netmask,
        }),
        _ => {
            let protocol = match protocol.ok_or_else(|| missing("IPVS_SVC_ATTR_PROTOCOL"))? {
                IPPROTO_TCP => Protocol::Tcp,
                IPPROTO_UDP => Protocol::Udp,
                IPPROTO_SCTP => Protocol::Sctp,
                other => return Err(format!("unsupported service protocol {other}").into()),
            };
            let addr = addr.ok_or_else(|| missing("IPVS_SVC_ATTR_ADDR"))?;
            VirtualService::Inet(Service {
                addr: ip_from(family, &addr),
                port: port.ok_or_else(|| missing("IPVS_SVC_ATTR_PORT"))?,
                protocol,
                scheduler,
                flags,
                timeout,
                netmask,
            })
        }
    };
    Ok(ServiceEntry { service, stats })
}

/// A real server from an `IPVS_CMD_NEW_DEST` message of a destination dump. `service_family`
/// stands in for `IPVS_DEST_ATTR_ADDR_FAMILY` on kernels before 4.3, which lack it.
pub fn parse_dest_entry(msg: &IpvsMessage, service_family: AddressFamily) -> Result<DestinationEntry, DecodeError> {
    expect_cmd(msg, IpvsCmd::NewDest)?;
    let attrs = msg
        .attrs
        .iter()
        .find_map(|a| match a {
            CmdAttr::Dest(attrs) => Some(attrs),
            _ => None,
        })
        .ok_or_else(|| missing("IPVS_CMD_ATTR_DEST"))?;

    let (mut addr, mut port, mut fwd, mut weight, mut family) = (None, None, None, None, None);
    let (mut upper, mut lower, mut active, mut inactive, mut persistent) = (0, 0, 0, 0, 0);
    let (mut stats32, mut stats64) = (None, None);
    for attr in attrs {
        match attr {
            DestAttr::Addr(v) => addr = Some(*v),
            DestAttr::Port(v) => port = Some(*v),
            DestAttr::FwdMethod(v) => fwd = Some(*v),
            DestAttr::Weight(v) => weight = Some(*v),
            DestAttr::UThresh(v) => upper = *v,
            DestAttr::LThresh(v) => lower = *v,
            DestAttr::ActiveConns(v) => active = *v,
            DestAttr::InactConns(v) => inactive = *v,
            DestAttr::PersistConns(v) => persistent = *v,
            DestAttr::Stats(v) => stats32 = Some(v),
            DestAttr::AddrFamily(v) => family = Some(*v),
            DestAttr::Stats64(v) => stats64 = Some(v),
            DestAttr::TunType(_) | DestAttr::TunPort(_) | DestAttr::TunFlags(_) | DestAttr::Other(_) => {}
        }
    }

    let family = match family {
        Some(v) => family_from(v)?,
        None => service_family,
    };
    let fwd = match fwd.ok_or_else(|| missing("IPVS_DEST_ATTR_FWD_METHOD"))? & IP_VS_CONN_F_FWD_MASK {
        IP_VS_CONN_F_MASQ => ForwardMethod::Masquerade,
        IP_VS_CONN_F_LOCALNODE => ForwardMethod::Local,
        IP_VS_CONN_F_TUNNEL => ForwardMethod::Tunnel,
        IP_VS_CONN_F_DROUTE => ForwardMethod::Route,
        IP_VS_CONN_F_BYPASS => ForwardMethod::Bypass,
        other => return Err(format!("unknown forwarding method {other}").into()),
    };
    let addr = addr.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR"))?;
    Ok(DestinationEntry {
        destination: Destination {
            addr: ip_from(family, &addr),
            port: port.ok_or_else(|| missing("IPVS_DEST_ATTR_PORT"))?,
            fwd,
            weight: weight.ok_or_else(|| missing("IPVS_DEST_ATTR_WEIGHT"))?,
            upper_threshold: upper,
            lower_threshold: lower,
        },
        active_conns: active,
        inactive_conns: inactive,
        persistent_conns: persistent,
        stats: stats64.or(stats32).map_or_else(Stats64::default, |s| stats_from(s)),
    })
}

/// The answer to `IPVS_CMD_GET_INFO`.
pub fn parse_info(msg: &IpvsMessage) -> Result<Info, DecodeError> {
    expect_cmd(msg, IpvsCmd::SetInfo)?;
    let (mut version, mut conn_tab_size) = (None, None);
    for attr in &msg.attrs {
        match attr {
            CmdAttr::Info(InfoAttr::Version(v)) => version = Some(*v),
            CmdAttr::Info(InfoAttr::ConnTabSize(v)) => conn_tab_size = Some(*v),
            _ => {}
        }
    }
    let [_, major, minor, patch] = version.ok_or_else(|| missing("IPVS_INFO_ATTR_VERSION"))?.to_be_bytes();
    Ok(Info {
        version: IpvsVersion { major, minor, patch },
        conn_tab_size: conn_tab_size.ok_or_else(|| missing("IPVS_INFO_ATTR_CONN_TAB_SIZE"))?,
    })
}
