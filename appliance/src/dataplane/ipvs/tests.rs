//! Tests of the IPVS client: requests emitted byte for byte against layouts written out by hand
//! from include/uapi/linux/ip_vs.h and net/netfilter/ipvs/ip_vs_ctl.c, kernel replies parsed from
//! hand-built captures, round trips, errno mapping, batching arithmetic, and what a kernel without
//! IPVS can still show (family resolution failing cleanly, the connection shutting down).
//!
//! The byte arrays spell host-order fields little-endian; mod.rs compiles these tests only there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use genetlink::message::{RawGenlMessage, map_to_rawgenlmsg};
use netlink_packet_core::{DefaultNla, Emitable, NetlinkMessage, NetlinkPayload, ParseableParametrized};
use netlink_packet_generic::GenlHeader;

use super::error::{Subject, kernel_error};
use super::handle::{ack_positions, datagram_sizes};
use super::wire::{self, CmdAttr, DaemonAttr, DestAttr, InfoAttr, IpvsCmd, IpvsMessage, StatValue, StatsAttr, SvcAttr};
use super::*;

/// Any id: the kernel assigns the `IPVS` family's id when the module loads.
const FAMILY: u16 = 0x24;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn fd00_10() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10))
}

fn vip_443() -> ServiceKey {
    ServiceKey::inet(v4(10, 0, 0, 1), 443, Protocol::Tcp)
}

/// Serializes a request the way the handle sends it, with a fixed sequence number; also checks
/// that genetlink's raw form (what goes through the socket) has the same bytes.
fn emitted(message: IpvsMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut msg = wire::request(FAMILY, message, flags);
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut typed = vec![0; msg.buffer_len()];
    msg.serialize(&mut typed);

    let mut raw = map_to_rawgenlmsg(msg);
    raw.finalize();
    let mut raw_bytes = vec![0; raw.buffer_len()];
    raw.serialize(&mut raw_bytes);
    assert_eq!(typed, raw_bytes, "raw generic-netlink form differs");
    typed
}

/// Splits a received datagram into messages, as netlink-proto's codec does.
fn messages(datagram: &[u8]) -> Vec<NetlinkMessage<RawGenlMessage>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let msg = NetlinkMessage::<RawGenlMessage>::deserialize(&datagram[offset..]).expect("netlink message");
        offset += (msg.header.length as usize + 3) & !3;
        out.push(msg);
    }
    out
}

fn ipvs_payload(msg: &NetlinkMessage<RawGenlMessage>) -> IpvsMessage {
    match &msg.payload {
        NetlinkPayload::InnerMessage(raw) => raw.parse_into_genlmsg::<IpvsMessage>().expect("IPVS message").payload,
        other => panic!("expected a generic-netlink message, got {other:?}"),
    }
}

fn parse_ipvs(cmd: IpvsCmd, payload: &[u8]) -> IpvsMessage {
    let header = GenlHeader {
        cmd: cmd.into(),
        version: wire::IPVS_GENL_VERSION,
    };
    IpvsMessage::parse_with_param(payload, header).expect("parse")
}

fn payload_bytes(msg: &IpvsMessage) -> Vec<u8> {
    let mut buf = vec![0; msg.buffer_len()];
    msg.emit(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------------------
// Requests, byte for byte.

#[test]
fn service_add_request_matches_kernel_layout() {
    let svc = Service {
        netmask: u32::from(Ipv4Addr::new(255, 255, 255, 0)),
        ..Service::new(v4(10, 0, 0, 1), 443, Protocol::Tcp, "wlc").with_persistence(300)
    };
    let bytes = emitted(wire::new_service(&svc.into()), wire::ACKED_REQUEST, 1);
    assert_eq!(bytes, SERVICE_ADD_REQUEST);
}

#[test]
fn ipv6_service_add_sends_prefix_length_netmask_and_sh_flags() {
    let svc =
        Service::new(fd00_10(), 53, Protocol::Udp, "sh").with_flags(ServiceFlags::SH_FALLBACK | ServiceFlags::SH_PORT);
    assert_eq!(svc.netmask, 128);
    let bytes = emitted(wire::new_service(&svc.into()), wire::ACKED_REQUEST, 4);
    assert_eq!(bytes, SERVICE6_ADD_REQUEST);
}

#[test]
fn hashed_flag_is_never_sent() {
    let svc = Service::new(v4(10, 0, 0, 1), 443, Protocol::Tcp, "wlc")
        .with_persistence(300)
        .with_flags(ServiceFlags::HASHED);
    let svc = Service {
        netmask: 0xFFFF_FF00,
        ..svc
    };
    let bytes = emitted(wire::new_service(&svc.into()), wire::ACKED_REQUEST, 1);
    assert_eq!(bytes, SERVICE_ADD_REQUEST);
}

#[test]
fn destination_add_request_matches_kernel_layout() {
    let dest = Destination {
        upper_threshold: 1000,
        lower_threshold: 100,
        ..Destination::new(v4(192, 168, 1, 10), 30080, ForwardMethod::Masquerade, 1)
    };
    let bytes = emitted(wire::new_dest(&vip_443(), &dest), wire::ACKED_REQUEST, 2);
    assert_eq!(bytes, DEST_ADD_REQUEST);
}

#[test]
fn destination_dump_request_carries_the_service() {
    let key = ServiceKey::inet(fd00_10(), 53, Protocol::Udp);
    let bytes = emitted(wire::dump_dests(&key), wire::DUMP_REQUEST, 3);
    assert_eq!(bytes, DEST_DUMP_REQUEST);
}

#[test]
fn service_dump_request_is_a_bare_get_service_with_dump_flags() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x14, 0x00, 0x00, 0x00, // nlmsg_len 20: headers only
        0x24, 0x00,             // nlmsg_type: the IPVS family id
        0x01, 0x03,             // NLM_F_REQUEST | NLM_F_DUMP (NLM_F_ROOT | NLM_F_MATCH)
        0x09, 0x00, 0x00, 0x00, // seq 9
        0x00, 0x00, 0x00, 0x00, // pid 0: the kernel
        0x04, 0x01, 0x00, 0x00, // IPVS_CMD_GET_SERVICE, version 1
    ];
    assert_eq!(emitted(wire::dump_services(), wire::DUMP_REQUEST, 9), expected);
}

#[test]
fn destination_delete_sends_only_address_port_and_family() {
    let dest = Destination::new(v4(192, 168, 1, 10), 30080, ForwardMethod::Route, 7);
    let msg = wire::del_dest(&vip_443(), dest.addr, dest.port);
    #[rustfmt::skip]
    let dest_nest: &[u8] = &[
        0x28, 0x00, 0x02, 0x80,                         // IPVS_CMD_ATTR_DEST | NLA_F_NESTED, len 40
        0x14, 0x00, 0x01, 0x00, 0xc0, 0xa8, 0x01, 0x0a, // IPVS_DEST_ATTR_ADDR = 192.168.1.10
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x02, 0x00, 0x75, 0x80, 0x00, 0x00, // IPVS_DEST_ATTR_PORT = 30080, big-endian
        0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, // IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
    ];
    let bytes = emitted(msg, wire::ACKED_REQUEST, 5);
    assert_eq!(bytes[4..6], [0x24, 0x00]);
    assert_eq!(bytes[16], 7, "IPVS_CMD_DEL_DEST");
    assert!(bytes.ends_with(dest_nest));
}

#[test]
fn fwmark_service_is_keyed_by_family_and_mark() {
    let svc = FwmarkService::new(AddressFamily::Inet, 7, "rr");
    let msg = wire::del_service(&svc.key());
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x14, 0x00, 0x01, 0x80,                         // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
        0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET
        0x08, 0x00, 0x05, 0x00, 0x07, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_FWMARK = 7
    ];
    assert_eq!(payload_bytes(&msg), expected);
}

#[test]
fn flush_and_info_requests_have_no_attributes() {
    assert_eq!(emitted(wire::flush(), wire::ACKED_REQUEST, 1)[16..], [17, 1, 0, 0]);
    assert_eq!(emitted(wire::get_info(), wire::ACKED_REQUEST, 1)[16..], [15, 1, 0, 0]);
}

// ---------------------------------------------------------------------------------------------
// Replies, from hand-built captures.

#[test]
fn service_dump_reply_parses_with_64_bit_stats() {
    let msgs = messages(SERVICE_DUMP_REPLY);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].header.message_type, FAMILY);
    let entry = wire::parse_service_entry(&ipvs_payload(&msgs[0])).expect("service entry");

    let expected = Service {
        addr: v4(10, 0, 0, 1),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: "rr".into(),
        flags: ServiceFlags::PERSISTENT | ServiceFlags::HASHED,
        timeout: 300,
        netmask: 0xFFFF_FF00,
    };
    assert_eq!(entry.service, VirtualService::Inet(expected));
    assert_eq!(
        entry.stats,
        Stats64 {
            conns: 0x1_0000_0005, // only the 64-bit attribute holds this
            inpkts: 1000,
            outpkts: 900,
            inbytes: 123_456,
            outbytes: 654_321,
            cps: 3,
            inpps: 50,
            outpps: 45,
            inbps: 6000,
            outbps: 5000,
        }
    );
    assert_eq!(
        entry.service.as_inet().map(|s| s.flags.settable()),
        Some(ServiceFlags::PERSISTENT)
    );
}

#[test]
fn service_reply_without_stats64_falls_back_to_32_bit_stats() {
    let mut msg = ipvs_payload(&messages(SERVICE_DUMP_REPLY)[0]);
    if let CmdAttr::Service(attrs) = &mut msg.attrs[0] {
        attrs.retain(|a| !matches!(a, SvcAttr::Stats64(_)));
    }
    let entry = wire::parse_service_entry(&msg).expect("service entry");
    assert_eq!(entry.stats.conns, 5);
    assert_eq!(entry.stats.inbytes, 123_456);
}

#[test]
fn destination_dump_reply_parses_every_entry_until_done() {
    let msgs = messages(DEST_DUMP_REPLY);
    assert_eq!(msgs.len(), 3);
    match &msgs[2].payload {
        NetlinkPayload::Done(done) => assert_eq!(done.code, 0),
        other => panic!("expected NLMSG_DONE, got {other:?}"),
    }
    let entries: Vec<DestinationEntry> = msgs[..2]
        .iter()
        .map(|m| wire::parse_dest_entry(&ipvs_payload(m), AddressFamily::Inet).expect("dest"))
        .collect();

    assert_eq!(
        entries[0],
        DestinationEntry {
            destination: Destination::new(v4(192, 168, 1, 10), 30080, ForwardMethod::Masquerade, 5),
            active_conns: 3,
            inactive_conns: 7,
            persistent_conns: 1,
            stats: Stats64 {
                conns: 11,
                inpkts: 200,
                outpkts: 180,
                inbytes: 20_000,
                outbytes: 30_000,
                cps: 1,
                inpps: 2,
                outpps: 2,
                inbps: 300,
                outbps: 400,
            },
        }
    );
    assert_eq!(
        entries[1].destination,
        Destination::new(v4(192, 168, 1, 11), 30080, ForwardMethod::Route, 0)
    );
    assert_eq!(entries[1].stats, Stats64::default());
}

#[test]
fn destination_without_family_attribute_takes_the_services() {
    let mut msg = ipvs_payload(&messages(DEST_DUMP_REPLY)[0]);
    if let CmdAttr::Dest(attrs) = &mut msg.attrs[0] {
        attrs.retain(|a| !matches!(a, DestAttr::AddrFamily(_)));
    }
    let entry = wire::parse_dest_entry(&msg, AddressFamily::Inet).expect("dest");
    assert_eq!(entry.destination.addr, v4(192, 168, 1, 10));
}

#[test]
fn fwmark_service_reply_is_not_mistaken_for_an_address() {
    let msg = IpvsMessage {
        cmd: IpvsCmd::NewService,
        attrs: vec![CmdAttr::Service(vec![
            SvcAttr::Af(wire::AF_INET6),
            SvcAttr::Fwmark(42),
            SvcAttr::SchedName("mh".into()),
            SvcAttr::Flags {
                flags: 0x2,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(0),
            SvcAttr::Netmask(128u32.to_ne_bytes()),
        ])],
    };
    let entry = wire::parse_service_entry(&msg).expect("fwmark service");
    assert_eq!(
        entry.service.key(),
        ServiceKey::Fwmark {
            family: AddressFamily::Inet6,
            mark: 42
        }
    );
    assert_eq!(entry.service.as_inet(), None);
    assert_eq!(entry.service.scheduler(), "mh");
}

#[test]
fn unsupported_protocol_is_a_decode_error_not_a_wrong_service() {
    let mut msg = ipvs_payload(&messages(SERVICE_DUMP_REPLY)[0]);
    if let CmdAttr::Service(attrs) = &mut msg.attrs[0] {
        for attr in attrs.iter_mut() {
            if let SvcAttr::Protocol(p) = attr {
                *p = 50; // ESP
            }
        }
    }
    let err = wire::parse_service_entry(&msg).expect_err("ESP is not a service protocol here");
    assert!(err.to_string().contains("protocol 50"), "{err}");
}

#[test]
fn info_reply_uses_info_attribute_numbers() {
    #[rustfmt::skip]
    let payload: &[u8] = &[
        0x08, 0x00, 0x01, 0x00, 0x01, 0x02, 0x01, 0x00, // IPVS_INFO_ATTR_VERSION = 0x010201
        0x08, 0x00, 0x02, 0x00, 0x00, 0x10, 0x00, 0x00, // IPVS_INFO_ATTR_CONN_TAB_SIZE = 4096
    ];
    let msg = parse_ipvs(IpvsCmd::SetInfo, payload);
    assert_eq!(
        msg.attrs,
        vec![
            CmdAttr::Info(InfoAttr::Version(0x010201)),
            CmdAttr::Info(InfoAttr::ConnTabSize(4096))
        ]
    );
    let info = wire::parse_info(&msg).expect("info");
    assert_eq!(info.version.to_string(), "1.2.1");
    assert_eq!(info.conn_tab_size, 4096);
    assert_eq!(payload_bytes(&msg), payload);
}

#[test]
fn ctrl_reply_yields_the_family_id() {
    #[rustfmt::skip]
    let attrs: &[u8] = &[
        0x09, 0x00, 0x02, 0x00, b'I', b'P', b'V', b'S', // CTRL_ATTR_FAMILY_NAME = "IPVS\0"
        0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x01, 0x00, 0x24, 0x00, 0x00, 0x00, // CTRL_ATTR_FAMILY_ID = 0x24
        0x08, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, // CTRL_ATTR_VERSION = 1
    ];
    assert_eq!(wire::ctrl_family_id(attrs).expect("attrs"), Some(0x24));
    assert_eq!(wire::ctrl_family_id(&attrs[..12]).expect("attrs"), None);
}

#[test]
fn extack_message_is_read_from_a_capped_error() {
    #[rustfmt::skip]
    let echoed_and_tlvs: &[u8] = &[
        0x68, 0x00, 0x00, 0x00, 0x24, 0x00, 0x05, 0x00, // echoed nlmsghdr (NLM_F_CAPPED: header only)
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0c, 0x00, 0x01, 0x00, b'b', b'a', b'd', b' ', // NLMSGERR_ATTR_MSG = "bad attr"
        b'a', b't', b't', b'r',
    ];
    const CAPPED_WITH_TLVS: u16 = 0x100 | 0x200;
    assert_eq!(
        wire::extack_message(CAPPED_WITH_TLVS, echoed_and_tlvs).as_deref(),
        Some("bad attr")
    );
    assert_eq!(wire::extack_message(0x100, echoed_and_tlvs), None);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn every_request() -> Vec<IpvsMessage> {
    let svc4 = VirtualService::from(
        Service::new(v4(192, 0, 2, 1), 8443, Protocol::Sctp, "mh")
            .with_persistence(60)
            .with_flags(ServiceFlags::MH_PORT),
    );
    let svc6 = VirtualService::from(Service::new(fd00_10(), 53, Protocol::Udp, "sh"));
    let fwm = VirtualService::from(FwmarkService::new(AddressFamily::Inet, 99, "wrr"));
    let dest = Destination::new(v4(10, 1, 2, 3), 31000, ForwardMethod::Tunnel, 3);
    vec![
        wire::new_service(&svc4),
        wire::set_service(&svc6),
        wire::new_service(&fwm),
        wire::del_service(&svc4.key()),
        wire::get_service(&svc6.key()),
        wire::dump_services(),
        wire::new_dest(&svc4.key(), &dest),
        wire::set_dest(&fwm.key(), &dest),
        wire::del_dest(&svc6.key(), fd00_10(), 5353),
        wire::dump_dests(&svc4.key()),
        wire::flush(),
        wire::get_info(),
    ]
}

#[test]
fn every_request_round_trips_through_parse() {
    for msg in every_request() {
        let bytes = payload_bytes(&msg);
        let parsed = parse_ipvs(msg.cmd, &bytes);
        assert_eq!(parsed, msg);
        assert_eq!(payload_bytes(&parsed), bytes);
    }
}

#[test]
fn kernel_replies_round_trip_through_emit() {
    for datagram in [SERVICE_DUMP_REPLY, DEST_DUMP_REPLY] {
        for nl in messages(datagram) {
            if let NetlinkPayload::InnerMessage(_) = nl.payload {
                let msg = ipvs_payload(&nl);
                // Our nests carry NLA_F_NESTED where the kernel's do not, so compare parsed forms.
                assert_eq!(parse_ipvs(msg.cmd, &payload_bytes(&msg)), msg);
            }
        }
    }
}

#[test]
fn services_round_trip_through_the_wire() {
    let services = [
        VirtualService::from(
            Service::new(v4(192, 0, 2, 1), 80, Protocol::Tcp, "wrr")
                .with_persistence(10_800)
                .with_flags(ServiceFlags::ONE_PACKET),
        ),
        VirtualService::from(Service {
            netmask: 64,
            ..Service::new(fd00_10(), 443, Protocol::Sctp, "lc")
        }),
        VirtualService::from(FwmarkService::new(AddressFamily::Inet6, 1, "sed")),
    ];
    for svc in services {
        let entry = wire::parse_service_entry(&wire::new_service(&svc)).expect("service");
        assert_eq!(entry.service, svc);
    }
}

#[test]
fn destinations_round_trip_through_the_wire() {
    let key = vip_443();
    for fwd in [
        ForwardMethod::Masquerade,
        ForwardMethod::Local,
        ForwardMethod::Tunnel,
        ForwardMethod::Route,
        ForwardMethod::Bypass,
    ] {
        let dest = Destination {
            upper_threshold: 50,
            lower_threshold: 5,
            ..Destination::new(fd00_10(), 30000, fwd, 9)
        };
        let msg = wire::new_dest(&key, &dest);
        let entry = wire::parse_dest_entry(&msg, AddressFamily::Inet).expect("dest");
        assert_eq!(entry.destination, dest);
    }
}

#[test]
fn other_attributes_survive_a_round_trip() {
    let msg = IpvsMessage {
        cmd: IpvsCmd::NewDaemon,
        attrs: vec![
            CmdAttr::Daemon(vec![
                DaemonAttr::State(1),
                DaemonAttr::McastIfn("eth0".into()),
                DaemonAttr::SyncId(3),
                DaemonAttr::SyncMaxlen(1472),
                DaemonAttr::McastGroup([224, 0, 0, 81]),
                DaemonAttr::McastPort(8848),
                DaemonAttr::McastTtl(1),
            ]),
            CmdAttr::TimeoutTcp(900),
            CmdAttr::TimeoutTcpFin(120),
            CmdAttr::TimeoutUdp(300),
            CmdAttr::Service(vec![
                SvcAttr::PeName("sip".into()),
                SvcAttr::Stats(vec![StatsAttr::Pad(Vec::new()), StatsAttr::InBytes(StatValue::U64(1))]),
                SvcAttr::Other(DefaultNla::new(200, vec![1, 2, 3])),
            ]),
            CmdAttr::Dest(vec![
                DestAttr::TunType(1),
                DestAttr::TunPort(6080),
                DestAttr::TunFlags(1),
            ]),
        ],
    };
    let bytes = payload_bytes(&msg);
    assert_eq!(parse_ipvs(msg.cmd, &bytes), msg);
}

#[test]
fn truncated_attribute_is_an_error() {
    let bytes = payload_bytes(&wire::new_service(&VirtualService::from(Service::new(
        v4(10, 0, 0, 1),
        80,
        Protocol::Tcp,
        "rr",
    ))));
    let header = GenlHeader {
        cmd: wire::IPVS_CMD_NEW_SERVICE,
        version: 1,
    };
    assert!(IpvsMessage::parse_with_param(&bytes[..bytes.len() - 3], header).is_err());
}

// ---------------------------------------------------------------------------------------------
// Errors and validation.

#[test]
fn missing_scheduler_names_its_module() {
    let subject = Subject::Service {
        key: vip_443(),
        scheduler: Some("mh".into()),
    };
    let err = kernel_error(Operation::AddService, &subject, libc::ENOENT, None);
    assert_eq!(
        err.to_string(),
        "scheduler 'mh' is not available: load kernel module ip_vs_mh"
    );
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn errno_maps_per_operation() {
    let svc = Subject::Service {
        key: vip_443(),
        scheduler: Some("rr".into()),
    };
    let dest = Subject::Destination {
        service: vip_443(),
        destination: "192.168.1.10:30080".parse().expect("addr"),
    };
    let cases: &[(Operation, &Subject, i32, &str)] = &[
        (
            Operation::AddService,
            &svc,
            libc::EPERM,
            "add service: permission denied: IPVS needs CAP_NET_ADMIN",
        ),
        (
            Operation::AddService,
            &svc,
            libc::EEXIST,
            "service TCP 10.0.0.1:443 already exists",
        ),
        (
            Operation::DeleteService,
            &svc,
            libc::ESRCH,
            "service TCP 10.0.0.1:443 not found",
        ),
        (
            Operation::AddDestination,
            &dest,
            libc::ESRCH,
            "service TCP 10.0.0.1:443 not found",
        ),
        (
            Operation::AddDestination,
            &dest,
            libc::EEXIST,
            "real server 192.168.1.10:30080 of service TCP 10.0.0.1:443 already exists",
        ),
        (
            Operation::DeleteDestination,
            &dest,
            libc::ENOENT,
            "real server 192.168.1.10:30080 not found in service TCP 10.0.0.1:443",
        ),
        (
            Operation::EditDestination,
            &dest,
            libc::ERANGE,
            "edit real server: the kernel rejected an argument: weight or thresholds out of \
             range (lower threshold above upper?)",
        ),
        (
            Operation::AddDestination,
            &dest,
            libc::EINVAL,
            "add real server: the kernel rejected an argument: the real server must be a unicast \
             address (checked against the local routing table: is `lo` up?) of the service's \
             family unless tunnelling",
        ),
        (
            Operation::AddService,
            &svc,
            libc::EAFNOSUPPORT,
            "add service: address family not supported by this kernel (IPv6 disabled?)",
        ),
        (Operation::Flush, &Subject::Global, libc::ENOMEM, "flush failed"),
    ];
    for (op, subject, errno, message) in cases {
        let err = kernel_error(*op, subject, *errno, None);
        assert_eq!(err.to_string(), *message, "{op:?} errno {errno}");
        assert_eq!(err.errno(), Some(*errno));
    }
    let err = kernel_error(
        Operation::AddService,
        &svc,
        libc::EINVAL,
        Some("Attribute failed policy validation".into()),
    );
    assert_eq!(
        err.to_string(),
        "add service: the kernel rejected an argument: Attribute failed policy validation"
    );
}

#[test]
fn error_predicates_help_a_reconciler() {
    let svc = Subject::Service {
        key: vip_443(),
        scheduler: None,
    };
    assert!(kernel_error(Operation::AddService, &svc, libc::EEXIST, None).is_already_exists());
    assert!(kernel_error(Operation::DeleteService, &svc, libc::ESRCH, None).is_not_found());
    assert!(!kernel_error(Operation::DeleteService, &svc, libc::EPERM, None).is_not_found());
}

#[test]
fn ipvs_missing_message_says_what_to_load() {
    let err = Error::IpvsUnavailable(std::io::Error::from_raw_os_error(libc::ENOENT));
    assert_eq!(err.to_string(), "the kernel has no IPVS (load module ip_vs)");
}

#[test]
fn invalid_requests_are_refused_before_sending() {
    let long = Service::new(v4(10, 0, 0, 1), 80, Protocol::Tcp, "a-very-long-scheduler");
    let ipv6_zero_mask = Service {
        netmask: 0,
        ..Service::new(fd00_10(), 80, Protocol::Tcp, "rr")
    };
    let no_mark = FwmarkService::new(AddressFamily::Inet, 0, "rr");
    for svc in [
        VirtualService::from(long),
        VirtualService::from(ipv6_zero_mask),
        VirtualService::from(no_mark),
    ] {
        assert!(matches!(svc.validate(), Err(Error::Invalid { .. })), "{svc:?}");
    }
    let heavy = Destination::new(v4(10, 0, 0, 2), 80, ForwardMethod::Masquerade, u32::MAX);
    assert!(matches!(heavy.validate(), Err(Error::Invalid { what: "weight", .. })));
    let fine = Destination::new(v4(10, 0, 0, 2), 80, ForwardMethod::Masquerade, 0);
    assert!(fine.validate().is_ok());
}

// ---------------------------------------------------------------------------------------------
// Batching arithmetic.

#[test]
fn acks_are_placed_by_sequence_number() {
    assert_eq!(ack_positions(3, &[7, 8, 9]), Some(vec![0, 1, 2]));
    assert_eq!(ack_positions(3, &[9, 7, 8]), Some(vec![2, 0, 1]));
    assert_eq!(
        ack_positions(4, &[u32::MAX - 1, u32::MAX, 0, 1]),
        Some(vec![0, 1, 2, 3])
    );
    assert_eq!(ack_positions(3, &[0, u32::MAX, u32::MAX - 1]), Some(vec![2, 1, 0]));
}

#[test]
fn a_missing_or_duplicate_ack_places_nothing() {
    assert_eq!(ack_positions(3, &[7, 9]), None);
    assert_eq!(ack_positions(3, &[7, 7, 8]), None);
    assert_eq!(ack_positions(3, &[7, 8, 10]), None);
    assert_eq!(ack_positions(0, &[]), None);
}

#[test]
fn datagrams_respect_count_and_size_limits() {
    assert_eq!(datagram_sizes(&[100; 130], 64), vec![64, 64, 2]);
    assert_eq!(datagram_sizes(&[10_000; 7], 64), vec![3, 3, 1]);
    assert_eq!(datagram_sizes(&[100; 3], 0), vec![1, 1, 1]);
    assert_eq!(datagram_sizes(&[100; 600], 10_000), vec![256, 256, 88]);
    assert!(datagram_sizes(&[], 64).is_empty());
    // A request larger than the limit still goes, alone.
    assert_eq!(datagram_sizes(&[40_000, 100], 64), vec![1, 1]);
}

// ---------------------------------------------------------------------------------------------
// Against the running kernel, which here has generic netlink but (usually) no IPVS.

#[test]
fn connecting_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(connect(), Err(Error::NoRuntime)));
}

#[tokio::test]
async fn kernel_without_ipvs_fails_cleanly_everywhere() {
    let handle = IpvsHandle::new().expect("generic netlink socket");
    let Err(err) = handle.resolve_family().await else {
        // IPVS is present (the kernel lab): examples/ipvs_smoke.rs covers that case.
        return;
    };
    assert!(matches!(err, Error::IpvsUnavailable(_)), "{err:?}");
    assert_eq!(err.to_string(), "the kernel has no IPVS (load module ip_vs)");

    let svc = Service::new(v4(10, 0, 0, 1), 80, Protocol::Tcp, "rr");
    let add = handle.service(svc.clone()).add().execute().await;
    assert!(matches!(add, Err(Error::IpvsUnavailable(_))), "{add:?}");

    let dump: Vec<_> = handle.services().dump().execute().collect().await;
    assert!(matches!(dump.as_slice(), [Err(Error::IpvsUnavailable(_))]), "{dump:?}");
    let dests = handle
        .destinations(&svc.key())
        .dump()
        .execute()
        .try_collect::<Vec<_>>()
        .await;
    assert!(matches!(dests, Err(Error::IpvsUnavailable(_))), "{dests:?}");

    let batch = handle
        .batch([IpvsOp::AddService(svc.into()), IpvsOp::Flush])
        .execute()
        .await;
    assert!(matches!(batch, Err(Error::IpvsUnavailable(_))), "{batch:?}");
    assert!(matches!(handle.info().execute().await, Err(Error::IpvsUnavailable(_))));
}

#[tokio::test]
async fn validation_errors_come_before_any_kernel_contact() {
    let handle = IpvsHandle::new().expect("generic netlink socket");
    let bad = Service::new(v4(10, 0, 0, 1), 80, Protocol::Tcp, "");
    let err = handle.service(bad).add().execute().await;
    assert!(matches!(err, Err(Error::Invalid { what: "scheduler", .. })), "{err:?}");
}

#[tokio::test]
async fn connection_ends_when_the_last_handle_is_dropped() {
    let (conn, handle) = connect().expect("generic netlink socket");
    let task = tokio::spawn(conn);
    let clone = handle.clone();
    // Exercise the socket once so the connection has real state to tear down.
    let _ = clone.resolve_family().await;
    drop(handle);
    drop(clone);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("connection future ended")
        .expect("connection task did not panic");
}

#[test]
fn handle_and_streams_are_send() {
    fn is_send<T: Send + Sync + 'static>(_: &T) {}
    fn stream_is_send<T: Send + 'static>(_: T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handle = IpvsHandle::new().expect("socket");
        is_send(&handle);
        stream_is_send(handle.services().dump().execute());
        stream_is_send(handle.destinations(&vip_443()).dump().execute());
        stream_is_send(handle.batch(Vec::new()).execute());
        stream_is_send(handle.flush().execute());
    });
}

// ---------------------------------------------------------------------------------------------
// Byte layouts. Each attribute is `u16 nla_len` (header + payload, without padding), `u16
// nla_type`, the payload, then zero padding to 4 bytes; nests hold attributes the same way. We
// send nests with NLA_F_NESTED (0x8000); the kernel sends them without.

#[rustfmt::skip]
const SERVICE_DUMP_REPLY: &[u8] = &[
    0x40, 0x01, 0x00, 0x00, 0x24, 0x00, 0x02, 0x00, // nlmsghdr: len 320, type 0x24, flags 0x2, seq 7, pid 0x1234
    0x07, 0x00, 0x00, 0x00, 0x34, 0x12, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_SERVICE, version 1
    0x2c, 0x01, 0x01, 0x00, // IPVS_CMD_ATTR_SERVICE (nested)
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_PROTOCOL = IPPROTO_TCP
    0x14, 0x00, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x01, //   IPVS_SVC_ATTR_ADDR = 10.0.0.1 (16-byte nf_inet_addr)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, //   IPVS_SVC_ATTR_PORT = 80, big-endian
    0x07, 0x00, 0x06, 0x00, 0x72, 0x72, 0x00, 0x00, //   IPVS_SVC_ATTR_SCHED_NAME = "rr\0"
    0x0c, 0x00, 0x07, 0x00, 0x03, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_FLAGS = {PERSISTENT|HASHED, mask ~0}
    0xff, 0xff, 0xff, 0xff,
    0x08, 0x00, 0x08, 0x00, 0x2c, 0x01, 0x00, 0x00, //   IPVS_SVC_ATTR_TIMEOUT = 300
    0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0x00, //   IPVS_SVC_ATTR_NETMASK = 255.255.255.0 (__be32)
    0x5c, 0x00, 0x0a, 0x00, //   IPVS_SVC_ATTR_STATS (nested, kernel sends no NLA_F_NESTED)
    0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 5 (u32)
    0x08, 0x00, 0x02, 0x00, 0xe8, 0x03, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 1000 (u32)
    0x08, 0x00, 0x03, 0x00, 0x84, 0x03, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 900 (u32)
    0x0c, 0x00, 0x04, 0x00, 0x40, 0xe2, 0x01, 0x00, //     IPVS_STATS_ATTR_INBYTES = 123456 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0xf1, 0xfb, 0x09, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 654321 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 3 (u32)
    0x08, 0x00, 0x07, 0x00, 0x32, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 50 (u32)
    0x08, 0x00, 0x08, 0x00, 0x2d, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 45 (u32)
    0x08, 0x00, 0x09, 0x00, 0x70, 0x17, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 6000 (u32)
    0x08, 0x00, 0x0a, 0x00, 0x88, 0x13, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 5000 (u32)
    0x7c, 0x00, 0x0c, 0x00, //   IPVS_SVC_ATTR_STATS64 (nested, kernel sends no NLA_F_NESTED)
    0x0c, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 4294967301 (u64)
    0x01, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x02, 0x00, 0xe8, 0x03, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 1000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x03, 0x00, 0x84, 0x03, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 900 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x04, 0x00, 0x40, 0xe2, 0x01, 0x00, //     IPVS_STATS_ATTR_INBYTES = 123456 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0xf1, 0xfb, 0x09, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 654321 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 3 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x07, 0x00, 0x32, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 50 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x08, 0x00, 0x2d, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 45 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x09, 0x00, 0x70, 0x17, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 6000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x0a, 0x00, 0x88, 0x13, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 5000 (u64)
    0x00, 0x00, 0x00, 0x00,
];

#[rustfmt::skip]
const DEST_DUMP_REPLY: &[u8] = &[
    0x64, 0x01, 0x00, 0x00, 0x24, 0x00, 0x02, 0x00, // nlmsghdr: len 356, type 0x24, flags 0x2, seq 8, pid 0x1234
    0x08, 0x00, 0x00, 0x00, 0x34, 0x12, 0x00, 0x00,
    0x05, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_DEST, version 1
    0x50, 0x01, 0x02, 0x00, // IPVS_CMD_ATTR_DEST (nested)
    0x14, 0x00, 0x01, 0x00, 0xc0, 0xa8, 0x01, 0x0a, //   IPVS_DEST_ATTR_ADDR = 192.168.1.10
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x02, 0x00, 0x75, 0x80, 0x00, 0x00, //   IPVS_DEST_ATTR_PORT = 30080, big-endian
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_FWD_METHOD = 0
    0x08, 0x00, 0x04, 0x00, 0x05, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_WEIGHT = 5
    0x05, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_TYPE = IPIP (u8)
    0x06, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_PORT = 0
    0x06, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_FLAGS = 0
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_U_THRESH = 0
    0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_L_THRESH = 0
    0x08, 0x00, 0x07, 0x00, 0x03, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_ACTIVE_CONNS = 3
    0x08, 0x00, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_INACT_CONNS = 7
    0x08, 0x00, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_PERSIST_CONNS = 1
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
    0x5c, 0x00, 0x0a, 0x00, //   IPVS_DEST_ATTR_STATS (nested, kernel sends no NLA_F_NESTED)
    0x08, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 11 (u32)
    0x08, 0x00, 0x02, 0x00, 0xc8, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 200 (u32)
    0x08, 0x00, 0x03, 0x00, 0xb4, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 180 (u32)
    0x0c, 0x00, 0x04, 0x00, 0x20, 0x4e, 0x00, 0x00, //     IPVS_STATS_ATTR_INBYTES = 20000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0x30, 0x75, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 30000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 1 (u32)
    0x08, 0x00, 0x07, 0x00, 0x02, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 2 (u32)
    0x08, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 2 (u32)
    0x08, 0x00, 0x09, 0x00, 0x2c, 0x01, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 300 (u32)
    0x08, 0x00, 0x0a, 0x00, 0x90, 0x01, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 400 (u32)
    0x7c, 0x00, 0x0c, 0x00, //   IPVS_DEST_ATTR_STATS64 (nested, kernel sends no NLA_F_NESTED)
    0x0c, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 11 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x02, 0x00, 0xc8, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 200 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x03, 0x00, 0xb4, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 180 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x04, 0x00, 0x20, 0x4e, 0x00, 0x00, //     IPVS_STATS_ATTR_INBYTES = 20000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0x30, 0x75, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 30000 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 1 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x07, 0x00, 0x02, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 2 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 2 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x09, 0x00, 0x2c, 0x01, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 300 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x0a, 0x00, 0x90, 0x01, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 400 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x64, 0x01, 0x00, 0x00, 0x24, 0x00, 0x02, 0x00, // nlmsghdr: len 356, type 0x24, flags 0x2, seq 8, pid 0x1234
    0x08, 0x00, 0x00, 0x00, 0x34, 0x12, 0x00, 0x00,
    0x05, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_DEST, version 1
    0x50, 0x01, 0x02, 0x00, // IPVS_CMD_ATTR_DEST (nested)
    0x14, 0x00, 0x01, 0x00, 0xc0, 0xa8, 0x01, 0x0b, //   IPVS_DEST_ATTR_ADDR = 192.168.1.11
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x02, 0x00, 0x75, 0x80, 0x00, 0x00, //   IPVS_DEST_ATTR_PORT = 30080, big-endian
    0x08, 0x00, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_FWD_METHOD = 3
    0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_WEIGHT = 0
    0x05, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_TYPE = IPIP (u8)
    0x06, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_PORT = 0
    0x06, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_TUN_FLAGS = 0
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_U_THRESH = 0
    0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_L_THRESH = 0
    0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_ACTIVE_CONNS = 0
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_INACT_CONNS = 0
    0x08, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_PERSIST_CONNS = 0
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
    0x5c, 0x00, 0x0a, 0x00, //   IPVS_DEST_ATTR_STATS (nested, kernel sends no NLA_F_NESTED)
    0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 0 (u32)
    0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 0 (u32)
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 0 (u32)
    0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INBYTES = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 0 (u32)
    0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 0 (u32)
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 0 (u32)
    0x08, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 0 (u32)
    0x08, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 0 (u32)
    0x7c, 0x00, 0x0c, 0x00, //   IPVS_DEST_ATTR_STATS64 (nested, kernel sends no NLA_F_NESTED)
    0x0c, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CONNS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPKTS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPKTS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INBYTES = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBYTES = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_CPS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INPPS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTPPS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_INBPS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, //     IPVS_STATS_ATTR_OUTBPS = 0 (u64)
    0x00, 0x00, 0x00, 0x00,
    0x14, 0x00, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, // nlmsghdr: len 20, NLMSG_DONE, NLM_F_MULTI, seq 8
    0x08, 0x00, 0x00, 0x00, 0x34, 0x12, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, // error code 0: dump complete
];

#[rustfmt::skip]
const SERVICE_ADD_REQUEST: &[u8] = &[
    0x68, 0x00, 0x00, 0x00, 0x24, 0x00, 0x05, 0x00, // nlmsghdr: len 104, type 0x24, flags 0x5, seq 1, pid 0x0
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_SERVICE, version 1
    0x54, 0x00, 0x01, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET (host-order u16)
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_PROTOCOL = IPPROTO_TCP
    0x14, 0x00, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x01, //   IPVS_SVC_ATTR_ADDR = 10.0.0.1, zero-padded to 16 bytes
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x04, 0x00, 0x01, 0xbb, 0x00, 0x00, //   IPVS_SVC_ATTR_PORT = 443, big-endian
    0x08, 0x00, 0x06, 0x00, 0x77, 0x6c, 0x63, 0x00, //   IPVS_SVC_ATTR_SCHED_NAME = "wlc\0"
    0x0c, 0x00, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_FLAGS = {flags PERSISTENT, mask ~HASHED}
    0xfd, 0xff, 0xff, 0xff,
    0x08, 0x00, 0x08, 0x00, 0x2c, 0x01, 0x00, 0x00, //   IPVS_SVC_ATTR_TIMEOUT = 300 s
    0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0x00, //   IPVS_SVC_ATTR_NETMASK = 255.255.255.0, network order
];

#[rustfmt::skip]
const DEST_ADD_REQUEST: &[u8] = &[
    0x8c, 0x00, 0x00, 0x00, 0x24, 0x00, 0x05, 0x00, // nlmsghdr: len 140, type 0x24, flags 0x5, seq 2, pid 0x0
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x05, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_DEST, version 1
    0x30, 0x00, 0x01, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET (host-order u16)
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_PROTOCOL = IPPROTO_TCP
    0x14, 0x00, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x01, //   IPVS_SVC_ATTR_ADDR = 10.0.0.1, zero-padded to 16 bytes
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x04, 0x00, 0x01, 0xbb, 0x00, 0x00, //   IPVS_SVC_ATTR_PORT = 443, big-endian
    0x48, 0x00, 0x02, 0x80, // IPVS_CMD_ATTR_DEST | NLA_F_NESTED
    0x14, 0x00, 0x01, 0x00, 0xc0, 0xa8, 0x01, 0x0a, //   IPVS_DEST_ATTR_ADDR = 192.168.1.10, zero-padded to 16 bytes
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x02, 0x00, 0x75, 0x80, 0x00, 0x00, //   IPVS_DEST_ATTR_PORT = 30080, big-endian
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_FWD_METHOD = IP_VS_CONN_F_MASQ
    0x08, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_WEIGHT = 1
    0x08, 0x00, 0x05, 0x00, 0xe8, 0x03, 0x00, 0x00, //   IPVS_DEST_ATTR_U_THRESH = 1000
    0x08, 0x00, 0x06, 0x00, 0x64, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_L_THRESH = 100
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, //   IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
];

#[rustfmt::skip]
const DEST_DUMP_REQUEST: &[u8] = &[
    0x44, 0x00, 0x00, 0x00, 0x24, 0x00, 0x01, 0x03, // nlmsghdr: len 68, type 0x24, flags 0x301, seq 3, pid 0x0
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x08, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_GET_DEST, version 1
    0x30, 0x00, 0x01, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED: the service whose real servers to list
    0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET6
    0x06, 0x00, 0x02, 0x00, 0x11, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_PROTOCOL = IPPROTO_UDP
    0x14, 0x00, 0x03, 0x00, 0xfd, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_ADDR = fd00::10
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,
    0x06, 0x00, 0x04, 0x00, 0x00, 0x35, 0x00, 0x00, //   IPVS_SVC_ATTR_PORT = 53, big-endian
];

#[rustfmt::skip]
const SERVICE6_ADD_REQUEST: &[u8] = &[
    0x68, 0x00, 0x00, 0x00, 0x24, 0x00, 0x05, 0x00, // nlmsghdr: len 104, type 0x24, flags 0x5, seq 4, pid 0x0
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00, // genlmsghdr: cmd IPVS_CMD_NEW_SERVICE, version 1
    0x54, 0x00, 0x01, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
    0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_AF = AF_INET6
    0x06, 0x00, 0x02, 0x00, 0x11, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_PROTOCOL = IPPROTO_UDP
    0x14, 0x00, 0x03, 0x00, 0xfd, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_ADDR = fd00::10
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,
    0x06, 0x00, 0x04, 0x00, 0x00, 0x35, 0x00, 0x00, //   IPVS_SVC_ATTR_PORT = 53, big-endian
    0x07, 0x00, 0x06, 0x00, 0x73, 0x68, 0x00, 0x00, //   IPVS_SVC_ATTR_SCHED_NAME = "sh\0"
    0x0c, 0x00, 0x07, 0x00, 0x18, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_FLAGS = {SH_FALLBACK|SH_PORT, mask ~HASHED}
    0xfd, 0xff, 0xff, 0xff,
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_TIMEOUT = 0
    0x08, 0x00, 0x09, 0x00, 0x80, 0x00, 0x00, 0x00, //   IPVS_SVC_ATTR_NETMASK = prefix length 128, host order
];
