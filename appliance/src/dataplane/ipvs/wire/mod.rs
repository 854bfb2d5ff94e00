//! Wire format of the kernel's `IPVS` generic-netlink family (include/uapi/linux/ip_vs.h):
//! commands, attributes, parse and emit. It owns byte layouts only and must never be visible
//! outside `ipvs`; `convert` translates to and from the domain types the rest of the code sees.
//!
//! Byte order, as the kernel reads and writes it: ports (`*_ATTR_PORT`, `IPVS_DEST_ATTR_TUN_PORT`)
//! are big-endian; every other integer is host order. Addresses are 16 bytes (`union
//! nf_inet_addr`, IPv4 in the first 4). The service netmask is a `__be32`: network order for IPv4,
//! a host-order prefix length for IPv6 (that is how ipvsadm and the kernel's range check use it).

mod attrs;
mod convert;

#[cfg(test)]
pub use attrs::StatValue;
pub use attrs::{DaemonAttr, DestAttr, InfoAttr, StatsAttr, SvcAttr};
pub use convert::*;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, parse_u16,
    parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 0x1;

// enum { IPVS_CMD_* }
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;
pub const IPVS_CMD_NEW_DAEMON: u8 = 9;
pub const IPVS_CMD_DEL_DAEMON: u8 = 10;
pub const IPVS_CMD_GET_DAEMON: u8 = 11;
pub const IPVS_CMD_SET_CONFIG: u8 = 12;
pub const IPVS_CMD_GET_CONFIG: u8 = 13;
pub const IPVS_CMD_SET_INFO: u8 = 14;
pub const IPVS_CMD_GET_INFO: u8 = 15;
pub const IPVS_CMD_ZERO: u8 = 16;
pub const IPVS_CMD_FLUSH: u8 = 17;

// enum { IPVS_CMD_ATTR_* }: first level of every command but IPVS_CMD_SET_INFO.
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;
pub const IPVS_CMD_ATTR_DAEMON: u16 = 3;
pub const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
pub const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
pub const IPVS_CMD_ATTR_TIMEOUT_UDP: u16 = 6;

pub const AF_INET: u16 = libc::AF_INET as u16;
pub const AF_INET6: u16 = libc::AF_INET6 as u16;
pub const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
pub const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
pub const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

// IP_VS_CONN_F_*: the forwarding method is the low 3 bits of a destination's connection flags.
pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;
pub const IP_VS_CONN_F_BYPASS: u32 = 0x0004;

/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it holds; user space must not send it.
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;

// nlctrl, to resolve the family id.
const CTRL_ATTR_FAMILY_ID: u16 = 1;

/// Flags of a request the kernel acknowledges (`doit` commands).
pub const ACKED_REQUEST: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags of a dump request (`dumpit` commands); it ends with `NLMSG_DONE`, not an ack.
pub const DUMP_REQUEST: u16 = NLM_F_REQUEST | NLM_F_DUMP;

/// A generic-netlink command of the IPVS family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    NewDaemon,
    DelDaemon,
    GetDaemon,
    SetConfig,
    GetConfig,
    /// Only in replies to [`IpvsCmd::GetInfo`]; its attributes are `IPVS_INFO_ATTR_*`.
    SetInfo,
    GetInfo,
    Zero,
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        match cmd {
            IpvsCmd::NewService => IPVS_CMD_NEW_SERVICE,
            IpvsCmd::SetService => IPVS_CMD_SET_SERVICE,
            IpvsCmd::DelService => IPVS_CMD_DEL_SERVICE,
            IpvsCmd::GetService => IPVS_CMD_GET_SERVICE,
            IpvsCmd::NewDest => IPVS_CMD_NEW_DEST,
            IpvsCmd::SetDest => IPVS_CMD_SET_DEST,
            IpvsCmd::DelDest => IPVS_CMD_DEL_DEST,
            IpvsCmd::GetDest => IPVS_CMD_GET_DEST,
            IpvsCmd::NewDaemon => IPVS_CMD_NEW_DAEMON,
            IpvsCmd::DelDaemon => IPVS_CMD_DEL_DAEMON,
            IpvsCmd::GetDaemon => IPVS_CMD_GET_DAEMON,
            IpvsCmd::SetConfig => IPVS_CMD_SET_CONFIG,
            IpvsCmd::GetConfig => IPVS_CMD_GET_CONFIG,
            IpvsCmd::SetInfo => IPVS_CMD_SET_INFO,
            IpvsCmd::GetInfo => IPVS_CMD_GET_INFO,
            IpvsCmd::Zero => IPVS_CMD_ZERO,
            IpvsCmd::Flush => IPVS_CMD_FLUSH,
            IpvsCmd::Other(cmd) => cmd,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(cmd: u8) -> Self {
        match cmd {
            IPVS_CMD_NEW_SERVICE => IpvsCmd::NewService,
            IPVS_CMD_SET_SERVICE => IpvsCmd::SetService,
            IPVS_CMD_DEL_SERVICE => IpvsCmd::DelService,
            IPVS_CMD_GET_SERVICE => IpvsCmd::GetService,
            IPVS_CMD_NEW_DEST => IpvsCmd::NewDest,
            IPVS_CMD_SET_DEST => IpvsCmd::SetDest,
            IPVS_CMD_DEL_DEST => IpvsCmd::DelDest,
            IPVS_CMD_GET_DEST => IpvsCmd::GetDest,
            IPVS_CMD_NEW_DAEMON => IpvsCmd::NewDaemon,
            IPVS_CMD_DEL_DAEMON => IpvsCmd::DelDaemon,
            IPVS_CMD_GET_DAEMON => IpvsCmd::GetDaemon,
            IPVS_CMD_SET_CONFIG => IpvsCmd::SetConfig,
            IPVS_CMD_GET_CONFIG => IpvsCmd::GetConfig,
            IPVS_CMD_SET_INFO => IpvsCmd::SetInfo,
            IPVS_CMD_GET_INFO => IpvsCmd::GetInfo,
            IPVS_CMD_ZERO => IpvsCmd::Zero,
            IPVS_CMD_FLUSH => IpvsCmd::Flush,
            other => IpvsCmd::Other(other),
        }
    }
}

/// The payload of an IPVS generic-netlink message: a command and its first-level attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| CmdAttr::parse_for(cmd, &nla)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("failed to parse IPVS command {cmd:?}"))?;
        Ok(Self { cmd, attrs })
    }
}

/// First-level attribute (`IPVS_CMD_ATTR_*`, or `IPVS_INFO_ATTR_*` in info replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    Daemon(Vec<DaemonAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    /// In `IPVS_CMD_SET_INFO` replies the first level holds `IPVS_INFO_ATTR_*`, whose numbers
    /// overlap `IPVS_CMD_ATTR_*`: the command decides.
    Info(InfoAttr),
    Other(DefaultNla),
}

impl CmdAttr {
    fn parse_for(cmd: IpvsCmd, buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        if cmd == IpvsCmd::SetInfo {
            return Ok(CmdAttr::Info(InfoAttr::parse(buf)?));
        }
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_CMD_ATTR_SERVICE => {
                CmdAttr::Service(parse_nested::<SvcAttr>(payload).context("in IPVS_CMD_ATTR_SERVICE")?)
            }
            IPVS_CMD_ATTR_DEST => CmdAttr::Dest(parse_nested::<DestAttr>(payload).context("in IPVS_CMD_ATTR_DEST")?),
            IPVS_CMD_ATTR_DAEMON => {
                CmdAttr::Daemon(parse_nested::<DaemonAttr>(payload).context("in IPVS_CMD_ATTR_DAEMON")?)
            }
            IPVS_CMD_ATTR_TIMEOUT_TCP => CmdAttr::TimeoutTcp(parse_u32(payload)?),
            IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => CmdAttr::TimeoutTcpFin(parse_u32(payload)?),
            IPVS_CMD_ATTR_TIMEOUT_UDP => CmdAttr::TimeoutUdp(parse_u32(payload)?),
            _ => CmdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::Dest(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::Daemon(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::TimeoutTcp(_) | CmdAttr::TimeoutTcpFin(_) | CmdAttr::TimeoutUdp(_) => 4,
            CmdAttr::Info(attr) => attr.value_len(),
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        // The kernel accepts nests with or without NLA_F_NESTED (its IPVS ops validate liberally)
        // and sends them without; we send the flag, as current libnl and the netlink docs do.
        match self {
            CmdAttr::Service(_) => IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => IPVS_CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::Daemon(_) => IPVS_CMD_ATTR_DAEMON | NLA_F_NESTED,
            CmdAttr::TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            CmdAttr::TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            CmdAttr::TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            CmdAttr::Info(attr) => attr.kind(),
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().emit(buffer),
            CmdAttr::Dest(attrs) => attrs.as_slice().emit(buffer),
            CmdAttr::Daemon(attrs) => attrs.as_slice().emit(buffer),
            CmdAttr::TimeoutTcp(v) | CmdAttr::TimeoutTcpFin(v) | CmdAttr::TimeoutUdp(v) => emit_u32_ne(buffer, *v),
            CmdAttr::Info(attr) => attr.emit_value(buffer),
            CmdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

/// A complete netlink request for `family` (the id the kernel assigned to `IPVS`), ready to
/// serialize; netlink-proto fills in the sequence number and `finalize`s it again when sending.
pub fn request(family: u16, message: IpvsMessage, flags: u16) -> NetlinkMessage<GenlMessage<IpvsMessage>> {
    let mut genl = GenlMessage::from_payload(message);
    genl.set_resolved_family_id(family);
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
    msg.finalize();
    msg
}

/// The family id in a `CTRL_CMD_NEWFAMILY` reply's attributes, if present. Read by hand so that
/// nlctrl attributes newer than netlink-packet-generic cannot fail the lookup.
pub fn ctrl_family_id(attrs: &[u8]) -> Result<Option<u16>, DecodeError> {
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        if nla.kind() == CTRL_ATTR_FAMILY_ID {
            return parse_u16(nla.value()).map(Some);
        }
    }
    Ok(None)
}

/// The kernel's extended-ack message (`NLMSGERR_ATTR_MSG`) in an `NLMSG_ERROR` payload, which
/// netlink-packet-core hands over raw: the echoed request (its header only when `NLM_F_CAPPED`),
/// then TLVs when `NLM_F_ACK_TLVS`.
pub fn extack_message(flags: u16, echoed_and_tlvs: &[u8]) -> Option<String> {
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    const NLMSG_HDRLEN: usize = 16;

    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = echoed_and_tlvs.get(..4)?;
        usize::try_from(u32::from_ne_bytes([len[0], len[1], len[2], len[3]])).ok()?
    };
    let tlvs = echoed_and_tlvs.get(echoed.checked_add(3)? & !3..)?;
    NlasIterator::new(tlvs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| netlink_packet_core::parse_string(nla.value()).ok())
}

fn parse_nested<T>(payload: &[u8]) -> Result<Vec<T>, DecodeError>
where
    T: for<'b> Parseable<NlaBuffer<&'b [u8]>>,
{
    NlasIterator::new(payload)
        .map(|nla| nla.and_then(|nla| T::parse(&nla)))
        .collect()
}

// Emitters for a value slot of exactly the right size (Nla::emit_value guarantees it).
fn emit_u16_ne(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_ne_bytes());
}

fn emit_u16_be(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_be_bytes());
}

fn emit_u32_ne(buf: &mut [u8], v: u32) {
    buf[..4].copy_from_slice(&v.to_ne_bytes());
}

fn emit_u64_ne(buf: &mut [u8], v: u64) {
    buf[..8].copy_from_slice(&v.to_ne_bytes());
}

fn emit_str(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

/// An address attribute: 16 bytes as the kernel sends them; 4 (bare IPv4) is accepted too.
fn parse_addr(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    let mut addr = [0u8; 16];
    match payload.len() {
        4 | 16 => {
            addr[..payload.len()].copy_from_slice(payload);
            Ok(addr)
        }
        n => Err(DecodeError::invalid_ip_address(n)),
    }
}

fn parse_array<const N: usize>(payload: &[u8]) -> Result<[u8; N], DecodeError> {
    payload
        .try_into()
        .map_err(|_| DecodeError::invalid_buffer("fixed-size attribute", payload.len(), N))
}
