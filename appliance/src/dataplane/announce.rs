//! Announcing a claimed VIP to its neighbours, so switches and routers send its traffic here at
//! once instead of when their caches expire: gratuitous ARP for IPv4 (both the request and the
//! reply form, since neighbours differ in which one updates their cache) over an AF_PACKET socket,
//! and unsolicited neighbour advertisements for IPv6 over a raw ICMPv6 socket.
//!
//! It owns the frame builders (pure functions, tested byte for byte) and the sockets it opens for
//! one announcement. It only sends: it never reads traffic, never changes addresses, neighbour
//! tables or links, and never announces an address the caller did not name.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tracing::{debug, info};

/// Length of a gratuitous ARP frame: Ethernet header (14) and ARP for IPv4 over Ethernet (28).
pub const ARP_FRAME_LEN: usize = 42;

/// Length of a neighbour advertisement with a target link-layer address option (ICMPv6 only;
/// the kernel adds the IPv6 header).
pub const NA_LEN: usize = 32;

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Neighbour advertisement flags: Override; not Router (a VIP is no gateway, and a set Router
/// flag that later clears makes neighbours drop us as a default router); not Solicited.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// RFC 4861: neighbour discovery packets are accepted only with hop limit 255.
const ND_HOP_LIMIT: u32 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Which gratuitous ARP to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpForm {
    /// RFC 5227 announcement: an ARP request for the VIP from the VIP, target MAC zero
    /// (`arping -U`).
    Request,
    /// An unsolicited ARP reply broadcast to everyone, target MAC broadcast: some routers update
    /// their cache only on replies.
    Reply,
}

/// Why an announcement could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    #[error("interface '{0}' does not exist")]
    NoSuchInterface(String),

    #[error("interface '{iface}' is not Ethernet (hardware type {hw_type}): cannot announce on it")]
    NotEthernet { iface: String, hw_type: u16 },

    #[error("announcing {ip} on {iface}: {what}")]
    Io {
        ip: IpAddr,
        iface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A gratuitous ARP frame for `ip` owned by `mac`, Ethernet header included, broadcast.
pub fn gratuitous_arp(form: ArpForm, mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let (op, target_mac): (u16, [u8; 6]) = match form {
        ArpForm::Request => (1, [0; 6]),
        ArpForm::Reply => (2, BROADCAST_MAC),
    };
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (ICMPv6 type 136) for `target` at `mac`: Override
/// set, with the target link-layer address option. The checksum is left zero: the kernel
/// computes it for raw ICMPv6 sockets (RFC 3542 section 3.1).
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; NA_LEN] {
    let mut p = [0u8; NA_LEN];
    p[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    // p[1] code 0, p[2..4] checksum, p[5..8] reserved.
    p[4] = NA_FLAG_OVERRIDE;
    p[8..24].copy_from_slice(&target.octets());
    p[24] = ND_OPT_TARGET_LINK_LAYER_ADDRESS;
    p[25] = 1; // option length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

/// Announces `ip` on `iface` `count` times, `interval` apart: for IPv4 each round sends the
/// request form then the reply form of gratuitous ARP (`arping -U` and `arping -A`), for IPv6 one
/// unsolicited neighbour advertisement to ff02::1 (`ndsend`). Runs in the network namespace of the
/// calling thread. A `count` of 0 sends nothing.
pub async fn announce(iface: &str, ip: IpAddr, count: u32, interval: Duration) -> Result<(), AnnounceError> {
    if count == 0 {
        return Ok(());
    }
    let io_error = |what: &'static str| {
        let iface = iface.to_owned();
        move |source: io::Error| AnnounceError::Io {
            ip,
            iface,
            what,
            source,
        }
    };
    let index = interface_index(iface)?;
    // A packet socket with protocol 0 receives nothing: it is only for sending.
    let packet = Socket::new(Domain::PACKET, Type::RAW, None).map_err(io_error("opening an AF_PACKET socket"))?;
    let mac = hardware_address(&packet, iface, ip)?;
    let sender = match ip {
        IpAddr::V4(v4) => Sender::Arp {
            socket: packet,
            to: link_broadcast(index),
            request: gratuitous_arp(ArpForm::Request, mac, v4),
            reply: gratuitous_arp(ArpForm::Reply, mac, v4),
        },
        IpAddr::V6(v6) => {
            drop(packet);
            let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                .map_err(io_error("opening a raw ICMPv6 socket"))?;
            socket
                .bind_device(Some(iface.as_bytes()))
                .map_err(io_error("binding the ICMPv6 socket to the interface"))?;
            socket
                .set_multicast_hops_v6(ND_HOP_LIMIT)
                .map_err(io_error("setting the hop limit"))?;
            socket
                .set_multicast_if_v6(index)
                .map_err(io_error("choosing the multicast interface"))?;
            socket
                .set_multicast_loop_v6(false)
                .map_err(io_error("turning multicast loopback off"))?;
            Sender::Na {
                socket,
                to: SocketAddrV6::new(ALL_NODES, 0, 0, index).into(),
                advertisement: unsolicited_na(mac, v6),
            }
        }
    };
    for round in 0..count {
        if round > 0 {
            tokio::time::sleep(interval).await;
        }
        sender.send().map_err(io_error("sending"))?;
        debug!(vip = %ip, iface, round, "announcement sent");
    }
    info!(vip = %ip, iface, count, "VIP announced");
    Ok(())
}

enum Sender {
    Arp {
        socket: Socket,
        to: SockAddr,
        request: [u8; ARP_FRAME_LEN],
        reply: [u8; ARP_FRAME_LEN],
    },
    Na {
        socket: Socket,
        to: SockAddr,
        advertisement: [u8; NA_LEN],
    },
}

impl Sender {
    fn send(&self) -> io::Result<()> {
        match self {
            Sender::Arp {
                socket,
                to,
                request,
                reply,
            } => {
                send_all(socket, request, to)?;
                send_all(socket, reply, to)
            }
            Sender::Na {
                socket,
                to,
                advertisement,
            } => send_all(socket, advertisement, to),
        }
    }
}

fn send_all(socket: &Socket, frame: &[u8], to: &SockAddr) -> io::Result<()> {
    let sent = socket.send_to(frame, to)?;
    if sent != frame.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes", frame.len())));
    }
    Ok(())
}

/// `if_nametoindex(3)`, in the calling thread's network namespace.
#[allow(unsafe_code)]
fn interface_index(iface: &str) -> Result<u32, AnnounceError> {
    let missing = || AnnounceError::NoSuchInterface(iface.to_owned());
    let name = CString::new(iface).map_err(|_| missing())?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the function only
    // reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 { Err(missing()) } else { Ok(index) }
}

/// The interface's hardware address (`SIOCGIFHWADDR`); refuses anything but Ethernet, whose
/// frame layout the builders assume. Asked through a socket rather than /sys, which shows the
/// network namespace of whoever mounted it, not the caller's.
#[allow(unsafe_code)]
fn hardware_address(socket: &Socket, iface: &str, ip: IpAddr) -> Result<[u8; 6], AnnounceError> {
    use std::os::fd::AsRawFd;

    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(AnnounceError::NoSuchInterface(iface.to_owned()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the descriptor is open for the duration of the call; `req` is a valid, writable
    // `ifreq` with a NUL-terminated name, which is what SIOCGIFHWADDR reads and fills.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(AnnounceError::NoSuchInterface(iface.to_owned()));
        }
        return Err(AnnounceError::Io {
            ip,
            iface: iface.to_owned(),
            what: "reading the hardware address",
            source,
        });
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds `ifru_hwaddr`.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != ARPHRD_ETHER {
        return Err(AnnounceError::NotEthernet {
            iface: iface.to_owned(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// The link-layer broadcast address of interface `index`, as `sendto` on a packet socket wants.
#[allow(unsafe_code)]
fn link_broadcast(index: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: the storage is a zeroed `sockaddr_storage`, large and aligned enough for a
    // `sockaddr_ll`, and all zeroes is a valid `sockaddr_ll`.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = ETH_P_ARP.to_be();
    ll.sll_ifindex = index as libc::c_int;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&BROADCAST_MAC);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised `sockaddr_ll` of `len` bytes.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn gratuitous_arp_request_byte_for_byte() {
        #[rustfmt::skip]
        let expected: [u8; ARP_FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet destination: broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // Ethernet source
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet / IPv4, lengths 6 and 4
            0x00, 0x01,                         // request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sender MAC
            192, 0, 2, 10,                      // sender IP = VIP
            0, 0, 0, 0, 0, 0,                   // target MAC zero
            192, 0, 2, 10,                      // target IP = VIP
        ];
        assert_eq!(
            gratuitous_arp(ArpForm::Request, MAC, Ipv4Addr::new(192, 0, 2, 10)),
            expected
        );
    }

    #[test]
    fn gratuitous_arp_reply_byte_for_byte() {
        #[rustfmt::skip]
        let expected: [u8; ARP_FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4,
            0x00, 0x02,                         // reply
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            198, 51, 100, 7,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // target MAC broadcast
            198, 51, 100, 7,
        ];
        assert_eq!(
            gratuitous_arp(ArpForm::Reply, MAC, Ipv4Addr::new(198, 51, 100, 7)),
            expected
        );
    }

    #[test]
    fn neighbour_advertisement_byte_for_byte() {
        let target: Ipv6Addr = "2001:db8::10".parse().expect("literal");
        #[rustfmt::skip]
        let expected: [u8; NA_LEN] = [
            136, 0, 0, 0,                       // type NA, code 0, checksum (kernel fills)
            0x20, 0, 0, 0,                      // Override only
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // target
            2, 1,                               // target link-layer address, 8 bytes
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
        ];
        assert_eq!(unsolicited_na(MAC, target), expected);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let err = interface_index("edgelb-nope0").expect_err("no such interface");
        assert!(err.to_string().contains("edgelb-nope0"), "{err}");
        assert!(matches!(
            interface_index("a\0b"),
            Err(AnnounceError::NoSuchInterface(_))
        ));
    }
}
