//! Nested IPVS attributes: service (`IPVS_SVC_ATTR_*`), destination (`IPVS_DEST_ATTR_*`),
//! statistics (`IPVS_STATS_ATTR_*`), sync daemon (`IPVS_DAEMON_ATTR_*`) and info
//! (`IPVS_INFO_ATTR_*`), each with parse and emit. Layouts only, no meaning.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLA_F_NESTED, Nla, NlaBuffer, Parseable, parse_string, parse_u8,
    parse_u16, parse_u16_be, parse_u32, parse_u64,
};

use super::{emit_str, emit_u16_be, emit_u16_ne, emit_u32_ne, emit_u64_ne, parse_addr, parse_array, parse_nested};

// enum { IPVS_SVC_ATTR_* }
const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_SVC_ATTR_STATS: u16 = 10;
const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
const IPVS_SVC_ATTR_STATS64: u16 = 12;

// enum { IPVS_DEST_ATTR_* }
const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
const IPVS_DEST_ATTR_STATS: u16 = 10;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
const IPVS_DEST_ATTR_STATS64: u16 = 12;
const IPVS_DEST_ATTR_TUN_TYPE: u16 = 13;
const IPVS_DEST_ATTR_TUN_PORT: u16 = 14;
const IPVS_DEST_ATTR_TUN_FLAGS: u16 = 15;

// enum { IPVS_STATS_ATTR_* }
const IPVS_STATS_ATTR_CONNS: u16 = 1;
const IPVS_STATS_ATTR_INPKTS: u16 = 2;
const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
const IPVS_STATS_ATTR_INBYTES: u16 = 4;
const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;
const IPVS_STATS_ATTR_CPS: u16 = 6;
const IPVS_STATS_ATTR_INPPS: u16 = 7;
const IPVS_STATS_ATTR_OUTPPS: u16 = 8;
const IPVS_STATS_ATTR_INBPS: u16 = 9;
const IPVS_STATS_ATTR_OUTBPS: u16 = 10;
/// Alignment padding `nla_put_u64_64bit` inserts on architectures without efficient unaligned
/// access; never on x86-64, but it must parse.
const IPVS_STATS_ATTR_PAD: u16 = 11;

// enum { IPVS_DAEMON_ATTR_* }
const IPVS_DAEMON_ATTR_STATE: u16 = 1;
const IPVS_DAEMON_ATTR_MCAST_IFN: u16 = 2;
const IPVS_DAEMON_ATTR_SYNC_ID: u16 = 3;
const IPVS_DAEMON_ATTR_SYNC_MAXLEN: u16 = 4;
const IPVS_DAEMON_ATTR_MCAST_GROUP: u16 = 5;
const IPVS_DAEMON_ATTR_MCAST_GROUP6: u16 = 6;
const IPVS_DAEMON_ATTR_MCAST_PORT: u16 = 7;
const IPVS_DAEMON_ATTR_MCAST_TTL: u16 = 8;

// enum { IPVS_INFO_ATTR_* }
const IPVS_INFO_ATTR_VERSION: u16 = 1;
const IPVS_INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// Attribute of a service (`IPVS_CMD_ATTR_SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    /// `AF_INET` or `AF_INET6`.
    Af(u16),
    /// `IPPROTO_*`.
    Protocol(u16),
    Addr([u8; 16]),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    /// `struct ip_vs_flags`: the kernel applies `(old & ~mask) | (flags & mask)`.
    Flags {
        flags: u32,
        mask: u32,
    },
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// Raw `__be32`; its meaning depends on the family (see the module doc).
    Netmask([u8; 4]),
    /// 32-bit counters (bytes are 64-bit even here).
    Stats(Vec<StatsAttr>),
    /// Persistence engine, e.g. `sip`.
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Stats(attrs) | SvcAttr::Stats64(attrs) => attrs.as_slice().buffer_len(),
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => IPVS_SVC_ATTR_AF,
            SvcAttr::Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => IPVS_SVC_ATTR_ADDR,
            SvcAttr::Port(_) => IPVS_SVC_ATTR_PORT,
            SvcAttr::Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SvcAttr::SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            SvcAttr::Stats(_) => IPVS_SVC_ATTR_STATS | NLA_F_NESTED,
            SvcAttr::PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            SvcAttr::Stats64(_) => IPVS_SVC_ATTR_STATS64 | NLA_F_NESTED,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16_ne(buffer, *v),
            SvcAttr::Addr(addr) => buffer[..16].copy_from_slice(addr),
            SvcAttr::Port(port) => emit_u16_be(buffer, *port),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) => emit_u32_ne(buffer, *v),
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => emit_str(buffer, s),
            SvcAttr::Flags { flags, mask } => {
                emit_u32_ne(&mut buffer[..4], *flags);
                emit_u32_ne(&mut buffer[4..8], *mask);
            }
            SvcAttr::Netmask(raw) => buffer[..4].copy_from_slice(raw),
            SvcAttr::Stats(attrs) | SvcAttr::Stats64(attrs) => attrs.as_slice().emit(buffer),
            SvcAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        parse_svc_attr(buf).with_context(|| format!("IPVS_SVC_ATTR {}", buf.kind()))
    }
}

fn parse_svc_attr<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<SvcAttr, DecodeError> {
    let payload = buf.value();
    Ok(match buf.kind() {
        IPVS_SVC_ATTR_AF => SvcAttr::Af(parse_u16(payload)?),
        IPVS_SVC_ATTR_PROTOCOL => SvcAttr::Protocol(parse_u16(payload)?),
        IPVS_SVC_ATTR_ADDR => SvcAttr::Addr(parse_addr(payload)?),
        IPVS_SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(payload)?),
        IPVS_SVC_ATTR_FWMARK => SvcAttr::Fwmark(parse_u32(payload)?),
        IPVS_SVC_ATTR_SCHED_NAME => SvcAttr::SchedName(parse_string(payload)?),
        IPVS_SVC_ATTR_FLAGS => {
            let raw: [u8; 8] = parse_array(payload)?;
            SvcAttr::Flags {
                flags: parse_u32(&raw[..4])?,
                mask: parse_u32(&raw[4..])?,
            }
        }
        IPVS_SVC_ATTR_TIMEOUT => SvcAttr::Timeout(parse_u32(payload)?),
        IPVS_SVC_ATTR_NETMASK => SvcAttr::Netmask(parse_array(payload)?),
        IPVS_SVC_ATTR_STATS => SvcAttr::Stats(parse_nested::<StatsAttr>(payload)?),
        IPVS_SVC_ATTR_PE_NAME => SvcAttr::PeName(parse_string(payload)?),
        IPVS_SVC_ATTR_STATS64 => SvcAttr::Stats64(parse_nested::<StatsAttr>(payload)?),
        _ => SvcAttr::Other(DefaultNla::parse(buf)?),
    })
}

/// Attribute of a destination, i.e. real server (`IPVS_CMD_ATTR_DEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    /// Connection flags; the forwarding method is `& IP_VS_CONN_F_FWD_MASK`.
    FwdMethod(u32),
    /// The kernel's `int`, sent as u32.
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    /// Family of the real server, which may differ from the service's (tunnel mode only).
    AddrFamily(u16),
    Stats64(Vec<StatsAttr>),
    /// `IP_VS_CONN_F_TUNNEL_TYPE_*` (IPIP, GUE, GRE).
    TunType(u8),
    /// Host-order value; big-endian on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) | DestAttr::TunPort(_) | DestAttr::TunFlags(_) => 2,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::TunType(_) => 1,
            DestAttr::Stats(attrs) | DestAttr::Stats64(attrs) => attrs.as_slice().buffer_len(),
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => IPVS_DEST_ATTR_ADDR,
            DestAttr::Port(_) => IPVS_DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => IPVS_DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => IPVS_DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            DestAttr::PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            DestAttr::Stats(_) => IPVS_DEST_ATTR_STATS | NLA_F_NESTED,
            DestAttr::AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            DestAttr::Stats64(_) => IPVS_DEST_ATTR_STATS64 | NLA_F_NESTED,
            DestAttr::TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            DestAttr::TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            DestAttr::TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Addr(addr) => buffer[..16].copy_from_slice(addr),
            DestAttr::Port(port) | DestAttr::TunPort(port) => emit_u16_be(buffer, *port),
            DestAttr::AddrFamily(v) | DestAttr::TunFlags(v) => emit_u16_ne(buffer, *v),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v)
            | DestAttr::PersistConns(v) => emit_u32_ne(buffer, *v),
            DestAttr::TunType(v) => buffer[0] = *v,
            DestAttr::Stats(attrs) | DestAttr::Stats64(attrs) => attrs.as_slice().emit(buffer),
            DestAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        parse_dest_attr(buf).with_context(|| format!("IPVS_DEST_ATTR {}", buf.kind()))
    }
}

fn parse_dest_attr<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<DestAttr, DecodeError> {
    let payload = buf.value();
    Ok(match buf.kind() {
        IPVS_DEST_ATTR_ADDR => DestAttr::Addr(parse_addr(payload)?),
        IPVS_DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(payload)?),
        IPVS_DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(payload)?),
        IPVS_DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(payload)?),
        IPVS_DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(payload)?),
        IPVS_DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(payload)?),
        IPVS_DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(payload)?),
        IPVS_DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(payload)?),
        IPVS_DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(parse_u32(payload)?),
        IPVS_DEST_ATTR_STATS => DestAttr::Stats(parse_nested::<StatsAttr>(payload)?),
        IPVS_DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(payload)?),
        IPVS_DEST_ATTR_STATS64 => DestAttr::Stats64(parse_nested::<StatsAttr>(payload)?),
        IPVS_DEST_ATTR_TUN_TYPE => DestAttr::TunType(parse_u8(payload)?),
        IPVS_DEST_ATTR_TUN_PORT => DestAttr::TunPort(parse_u16_be(payload)?),
        IPVS_DEST_ATTR_TUN_FLAGS => DestAttr::TunFlags(parse_u16(payload)?),
        _ => DestAttr::Other(DefaultNla::parse(buf)?),
    })
}

/// A counter's value: 32-bit in `*_ATTR_STATS` (except bytes), 64-bit in `*_ATTR_STATS64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    U32(u32),
    U64(u64),
}

impl StatValue {
    pub fn get(self) -> u64 {
        match self {
            StatValue::U32(v) => u64::from(v),
            StatValue::U64(v) => v,
        }
    }

    fn len(self) -> usize {
        match self {
            StatValue::U32(_) => 4,
            StatValue::U64(_) => 8,
        }
    }

    fn emit(self, buffer: &mut [u8]) {
        match self {
            StatValue::U32(v) => emit_u32_ne(buffer, v),
            StatValue::U64(v) => emit_u64_ne(buffer, v),
        }
    }

    fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        match payload.len() {
            4 => Ok(StatValue::U32(parse_u32(payload)?)),
            _ => Ok(StatValue::U64(parse_u64(payload)?)),
        }
    }
}

/// Attribute of `IPVS_SVC_ATTR_STATS{,64}` and `IPVS_DEST_ATTR_STATS{,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAttr {
    Conns(StatValue),
    InPkts(StatValue),
    OutPkts(StatValue),
    InBytes(StatValue),
    OutBytes(StatValue),
    Cps(StatValue),
    InPps(StatValue),
    OutPps(StatValue),
    InBps(StatValue),
    OutBps(StatValue),
    Pad(Vec<u8>),
    Other(DefaultNla),
}

impl StatsAttr {
    fn counter(&self) -> Option<(u16, StatValue)> {
        Some(match self {
            StatsAttr::Conns(v) => (IPVS_STATS_ATTR_CONNS, *v),
            StatsAttr::InPkts(v) => (IPVS_STATS_ATTR_INPKTS, *v),
            StatsAttr::OutPkts(v) => (IPVS_STATS_ATTR_OUTPKTS, *v),
            StatsAttr::InBytes(v) => (IPVS_STATS_ATTR_INBYTES, *v),
            StatsAttr::OutBytes(v) => (IPVS_STATS_ATTR_OUTBYTES, *v),
            StatsAttr::Cps(v) => (IPVS_STATS_ATTR_CPS, *v),
            StatsAttr::InPps(v) => (IPVS_STATS_ATTR_INPPS, *v),
            StatsAttr::OutPps(v) => (IPVS_STATS_ATTR_OUTPPS, *v),
            StatsAttr::InBps(v) => (IPVS_STATS_ATTR_INBPS, *v),
            StatsAttr::OutBps(v) => (IPVS_STATS_ATTR_OUTBPS, *v),
            StatsAttr::Pad(_) | StatsAttr::Other(_) => return None,
        })
    }
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::Pad(pad) => pad.len(),
            StatsAttr::Other(nla) => nla.value_len(),
            counter => counter.counter().map_or(0, |(_, v)| v.len()),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            StatsAttr::Pad(_) => IPVS_STATS_ATTR_PAD,
            StatsAttr::Other(nla) => nla.kind(),
            counter => counter.counter().map_or(0, |(kind, _)| kind),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            StatsAttr::Pad(pad) => buffer[..pad.len()].copy_from_slice(pad),
            StatsAttr::Other(nla) => nla.emit_value(buffer),
            counter => {
                if let Some((_, v)) = counter.counter() {
                    v.emit(buffer)
                }
            }
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for StatsAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        parse_stats_attr(buf).with_context(|| format!("IPVS_STATS_ATTR {}", buf.kind()))
    }
}

fn parse_stats_attr<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<StatsAttr, DecodeError> {
    let payload = buf.value();
    Ok(match buf.kind() {
        IPVS_STATS_ATTR_CONNS => StatsAttr::Conns(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_INPKTS => StatsAttr::InPkts(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_OUTPKTS => StatsAttr::OutPkts(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_INBYTES => StatsAttr::InBytes(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_OUTBYTES => StatsAttr::OutBytes(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_CPS => StatsAttr::Cps(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_INPPS => StatsAttr::InPps(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_OUTPPS => StatsAttr::OutPps(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_INBPS => StatsAttr::InBps(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_OUTBPS => StatsAttr::OutBps(StatValue::parse(payload)?),
        IPVS_STATS_ATTR_PAD => StatsAttr::Pad(payload.to_vec()),
        _ => StatsAttr::Other(DefaultNla::parse(buf)?),
    })
}

/// Attribute of a connection-sync daemon (`IPVS_CMD_ATTR_DAEMON`). Parsed so that a dump of a
/// host running `ipvsadm --start-daemon` reads cleanly; the appliance does not manage daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAttr {
    /// `IP_VS_STATE_MASTER` or `IP_VS_STATE_BACKUP`.
    State(u32),
    McastIfn(String),
    SyncId(u32),
    SyncMaxlen(u16),
    /// IPv4 group, network order as sent.
    McastGroup([u8; 4]),
    McastGroup6([u8; 16]),
    McastPort(u16),
    McastTtl(u8),
    Other(DefaultNla),
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        match self {
            DaemonAttr::State(_) | DaemonAttr::SyncId(_) | DaemonAttr::McastGroup(_) => 4,
            DaemonAttr::McastIfn(s) => s.len() + 1,
            DaemonAttr::SyncMaxlen(_) | DaemonAttr::McastPort(_) => 2,
            DaemonAttr::McastGroup6(_) => 16,
            DaemonAttr::McastTtl(_) => 1,
            DaemonAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DaemonAttr::State(_) => IPVS_DAEMON_ATTR_STATE,
            DaemonAttr::McastIfn(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            DaemonAttr::SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            DaemonAttr::SyncMaxlen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            DaemonAttr::McastGroup(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            DaemonAttr::McastGroup6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            DaemonAttr::McastPort(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            DaemonAttr::McastTtl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            DaemonAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DaemonAttr::State(v) | DaemonAttr::SyncId(v) => emit_u32_ne(buffer, *v),
            DaemonAttr::McastIfn(s) => emit_str(buffer, s),
            DaemonAttr::SyncMaxlen(v) | DaemonAttr::McastPort(v) => emit_u16_ne(buffer, *v),
            DaemonAttr::McastGroup(raw) => buffer[..4].copy_from_slice(raw),
            DaemonAttr::McastGroup6(raw) => buffer[..16].copy_from_slice(raw),
            DaemonAttr::McastTtl(v) => buffer[0] = *v,
            DaemonAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DaemonAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        parse_daemon_attr(buf).with_context(|| format!("IPVS_DAEMON_ATTR {}", buf.kind()))
    }
}

fn parse_daemon_attr<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<DaemonAttr, DecodeError> {
    let payload = buf.value();
    Ok(match buf.kind() {
        IPVS_DAEMON_ATTR_STATE => DaemonAttr::State(parse_u32(payload)?),
        IPVS_DAEMON_ATTR_MCAST_IFN => DaemonAttr::McastIfn(parse_string(payload)?),
        IPVS_DAEMON_ATTR_SYNC_ID => DaemonAttr::SyncId(parse_u32(payload)?),
        IPVS_DAEMON_ATTR_SYNC_MAXLEN => DaemonAttr::SyncMaxlen(parse_u16(payload)?),
        IPVS_DAEMON_ATTR_MCAST_GROUP => DaemonAttr::McastGroup(parse_array(payload)?),
        IPVS_DAEMON_ATTR_MCAST_GROUP6 => DaemonAttr::McastGroup6(parse_array(payload)?),
        IPVS_DAEMON_ATTR_MCAST_PORT => DaemonAttr::McastPort(parse_u16(payload)?),
        IPVS_DAEMON_ATTR_MCAST_TTL => DaemonAttr::McastTtl(parse_u8(payload)?),
        _ => DaemonAttr::Other(DefaultNla::parse(buf)?),
    })
}

/// First-level attribute of an `IPVS_CMD_SET_INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoAttr {
    /// `IP_VS_VERSION_CODE`, e.g. `0x010201` for 1.2.1.
    Version(u32),
    ConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for InfoAttr {
    fn value_len(&self) -> usize {
        match self {
            InfoAttr::Version(_) | InfoAttr::ConnTabSize(_) => 4,
            InfoAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            InfoAttr::Version(_) => IPVS_INFO_ATTR_VERSION,
            InfoAttr::ConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            InfoAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            InfoAttr::Version(v) | InfoAttr::ConnTabSize(v) => emit_u32_ne(buffer, *v),
            InfoAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for InfoAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_INFO_ATTR_VERSION => InfoAttr::Version(parse_u32(payload)?),
            IPVS_INFO_ATTR_CONN_TAB_SIZE => InfoAttr::ConnTabSize(parse_u32(payload)?),
            _ => InfoAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}
