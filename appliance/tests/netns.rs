//! The kernel-facing primitives besides IPVS (VIP addresses, announcements, the nftables table,
//! sysctls) against the host kernel, in real network namespaces joined by veth pairs, with real
//! packets. Each primitive runs in a thread that has entered the appliance's namespace with
//! `setns`, as the appliance runs in its own.
//!
//! These tests need root and the `ip` (iproute2) and `nft` (nftables) programs; without them they
//! fail loudly, never skip. Namespaces get unique names and are deleted when a test ends.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

mod common;

use common::netns::{Netns, veth};
use edgelb::dataplane::addr::{AddrError, VipAddresses};
use edgelb::dataplane::announce::{self, ArpForm, gratuitous_arp, unsolicited_na};
use edgelb::dataplane::nft::{self, IpPrefix, NatMode, NftTable, PortRules, Ruleset, SnatSource};
use edgelb::dataplane::sysctl::{self, Outcome, Sysctls};
use edgelb_api::Protocol;
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

fn v4(s: &str) -> IpAddr {
    s.parse::<Ipv4Addr>().expect("IPv4 literal").into()
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().expect("IPv6 literal").into()
}

// --- VIP addresses ------------------------------------------------------------------------------

#[test]
fn vip_addresses_are_claimed_idempotently_released_and_foreign_ones_untouched() {
    let app = Netns::new("addr");
    let peer = Netns::new("addrpeer");
    veth(&app, "vip0", &peer, "peer0");
    // Foreign addresses: the interface's own network, the VIP's address with another prefix
    // (an operator's), and an address outside the pools.
    app.ip(&["addr", "add", "10.9.0.1/24", "dev", "vip0"]);
    app.ip(&["addr", "add", "10.9.0.50/24", "dev", "vip0"]);
    app.ip(&["addr", "add", "10.9.0.70/32", "dev", "vip0"]);
    let pool = |ip: IpAddr| match ip {
        IpAddr::V4(a) => (u32::from(a) & 0xffff_fff0) == u32::from(Ipv4Addr::new(10, 9, 0, 48)),
        IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0, 0],
    };
    let vip4 = v4("10.9.0.50");
    let vip6 = v6("2001:db8::50");

    let (owned, removed_twice) = app.block_on(|| async move {
        let vips = VipAddresses::new("vip0").await.expect("vip0 resolves");
        vips.add(vip4).await.expect("add IPv4 VIP");
        vips.add(vip4).await.expect("adding again is not an error");
        vips.add(vip6).await.expect("add IPv6 VIP");
        // Usable at once: a tentative address could not be bound.
        TcpListener::bind(SocketAddr::new(vip6, 0)).expect("IPv6 VIP bindable at once (no DAD)");
        let owned = vips.list_owned(pool).await.expect("list");
        let all = vips.list().await.expect("list");
        assert!(
            all.iter()
                .any(|a| a.addr == vip6 && a.is_host() && a.nodad && !a.tentative),
            "{all:?}"
        );
        assert!(
            all.iter().any(|a| a.addr == v4("10.9.0.1") && a.prefix_len == 24),
            "{all:?}"
        );
        let removed = vips.remove(vip4).await.expect("remove");
        let removed_again = vips.remove(vip4).await.expect("removing again is not an error");
        (owned, (removed, removed_again))
    });
    assert_eq!(
        owned,
        BTreeSet::from([vip4, vip6]),
        "only host addresses inside the pools are owned"
    );
    assert_eq!(removed_twice, (true, false));

    let after: BTreeSet<(IpAddr, u8)> = app.addresses("vip0").iter().map(|(a, l, _)| (*a, *l)).collect();
    assert!(after.contains(&(v4("10.9.0.1"), 24)));
    assert!(
        after.contains(&(v4("10.9.0.50"), 24)),
        "the operator's 10.9.0.50/24 must survive: {after:?}"
    );
    assert!(after.contains(&(v4("10.9.0.70"), 32)));
    assert!(!after.contains(&(vip4, 32)), "{after:?}");
    let v6_flags = app
        .addresses("vip0")
        .into_iter()
        .find(|(a, _, _)| *a == vip6)
        .map(|(_, len, info)| (len, info))
        .expect("IPv6 VIP present");
    assert_eq!(v6_flags.0, 128);
    assert_eq!(v6_flags.1["nodad"], Value::Bool(true), "{}", v6_flags.1);
    assert!(v6_flags.1.get("tentative").is_none(), "{}", v6_flags.1);

    app.block_on(|| async move {
        let vips = VipAddresses::new("vip0").await.expect("vip0 resolves");
        assert!(vips.remove(vip6).await.expect("remove IPv6"));
    });
    assert!(app.addresses("vip0").iter().all(|(a, _, _)| *a != vip6));
}

#[test]
fn a_missing_vip_interface_is_a_clear_error() {
    let app = Netns::new("noif");
    let err = app.block_on(|| async { VipAddresses::new("nosuch0").await.expect_err("no such interface") });
    assert!(
        matches!(err, AddrError::NoSuchInterface(ref name) if name == "nosuch0"),
        "{err}"
    );
    assert!(err.to_string().contains("nosuch0"));
}

#[test]
fn a_recreated_interface_is_found_again_by_name() {
    let app = Netns::new("recreate");
    // veth rather than dummy: the test machine's kernel has no dummy module.
    let create = || {
        app.ip(&["link", "add", "vip0", "type", "veth", "peer", "name", "vip0p"]);
        app.ip(&["link", "set", "vip0", "up"]);
    };
    create();
    let (old_index, new_index, listed) = app.block_on(|| async {
        let vips = VipAddresses::new("vip0").await.expect("vip0 resolves");
        let old_index = vips.index();
        app.ip(&["link", "del", "vip0"]);
        create();
        // The kernel answers ENODEV for the old index; the handle resolves the name again.
        vips.add(v4("192.0.2.9"))
            .await
            .expect("add after the interface was recreated");
        (old_index, vips.index(), vips.list().await.expect("list"))
    });
    assert_ne!(old_index, new_index);
    assert!(listed.iter().any(|a| a.addr == v4("192.0.2.9")), "{listed:?}");
}

// --- announcements ------------------------------------------------------------------------------

/// Captures frames of `ethertype` on every interface of `ns` while `act` runs, plus `linger`.
fn capture(ns: &Netns, ethertype: u16, linger: Duration, act: impl FnOnce() + Send) -> Vec<Vec<u8>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let stop_rx = Arc::clone(&stop);
        let receiver = s.spawn(move || {
            ns.run(move || {
                let protocol = socket2::Protocol::from(i32::from(ethertype.to_be()));
                let socket = Socket::new(Domain::PACKET, Type::RAW, Some(protocol)).expect("packet socket");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut frames = Vec::new();
                let mut buf = [0u8; 2048];
                while !stop_rx.load(Ordering::Relaxed) {
                    if let Ok(n) = (&socket).read(&mut buf) {
                        frames.push(buf[..n].to_vec());
                    }
                }
                frames
            })
        });
        ready_rx.recv().expect("receiver ready");
        act();
        std::thread::sleep(linger);
        stop.store(true, Ordering::Relaxed);
        receiver.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[test]
fn gratuitous_arp_reaches_the_neighbour_in_both_forms_count_times_and_moves_its_cache() {
    let app = Netns::new("garp");
    let peer = Netns::new("garppeer");
    veth(&app, "vip0", &peer, "peer0");
    let vip = Ipv4Addr::new(10, 9, 0, 50);
    let mac = app.mac("vip0");
    // The neighbour believes the VIP lives elsewhere, as after a failover.
    peer.ip(&[
        "neigh",
        "replace",
        "10.9.0.50",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "peer0",
        "nud",
        "stale",
    ]);
    let started = Instant::now();
    let frames = capture(&peer, 0x0806, Duration::from_millis(300), || {
        app.block_on(|| async move {
            announce::announce("vip0", vip.into(), 3, Duration::from_millis(100))
                .await
                .expect("announce");
        });
    });
    let elapsed = started.elapsed();
    // Only the VIP's announcements: sender IP at bytes 28..32.
    let ours: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 42 && f[28..32] == vip.octets())
        .collect();
    let requests = ours.iter().filter(|f| f[20..22] == [0, 1]).count();
    let replies = ours.iter().filter(|f| f[20..22] == [0, 2]).count();
    assert_eq!((requests, replies), (3, 3), "frames seen: {ours:?}");
    for f in &ours {
        let expected = if f[21] == 1 {
            gratuitous_arp(ArpForm::Request, mac, vip)
        } else {
            gratuitous_arp(ArpForm::Reply, mac, vip)
        };
        assert_eq!(&f[..42], &expected[..], "frame on the wire differs from the builder");
    }
    assert!(
        elapsed >= Duration::from_millis(200),
        "3 rounds 100 ms apart took {elapsed:?}"
    );
}

#[test]
fn unsolicited_neighbour_advertisements_reach_the_neighbour_count_times_and_override_its_cache() {
    let app = Netns::new("na");
    let peer = Netns::new("napeer");
    veth(&app, "vip0", &peer, "peer0");
    let vip: Ipv6Addr = "2001:db8::50".parse().expect("literal");
    app.ip(&["addr", "add", "2001:db8::50/128", "dev", "vip0", "nodad"]);
    let mac = app.mac("vip0");
    peer.ip(&[
        "neigh",
        "replace",
        "2001:db8::50",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "peer0",
        "nud",
        "stale",
    ]);
    peer.wait_ipv6_ready("peer0");
    let frames = capture(&peer, 0x86dd, Duration::from_millis(300), || {
        app.block_on(|| async move {
            announce::announce("vip0", vip.into(), 2, Duration::from_millis(50))
                .await
                .expect("announce");
        });
    });
    // Ethernet 14 + IPv6 40: ICMPv6 at 54; next header at 20, hop limit at 21.
    let ours: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 54 + 32 && f[20] == 58 && f[54] == 136 && f[62..78] == vip.octets())
        .collect();
    assert_eq!(ours.len(), 2, "advertisements seen: {ours:?}");
    let expected = unsolicited_na(mac, vip);
    for f in ours {
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1], "to the all-nodes group");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(f[21], 255, "hop limit");
        let dst: [u8; 16] = f[38..54].try_into().expect("16 bytes");
        assert_eq!(Ipv6Addr::from(dst), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
        let icmp = &f[54..54 + 32];
        assert_eq!(icmp[0..2], expected[0..2]);
        assert_eq!(icmp[4..], expected[4..], "body differs from the builder");
        assert_eq!(
            icmpv6_checksum(&f[22..38], &f[38..54], icmp),
            0,
            "the kernel filled a valid checksum"
        );
    }
    // The Override flag replaced the neighbour's stale entry.
    assert_eq!(peer.neighbour("2001:db8::50", "peer0"), Some(mac));
}

/// The one's-complement sum over the pseudo-header and message: 0 when the checksum is valid.
fn icmpv6_checksum(src: &[u8], dst: &[u8], message: &[u8]) -> u16 {
    let len = u32::try_from(message.len()).expect("short");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 58]);
    bytes.extend_from_slice(message);
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn announcing_on_a_missing_interface_is_a_clear_error() {
    let app = Netns::new("annnoif");
    let err = app.block_on(|| async {
        announce::announce("nosuch0", v4("192.0.2.1"), 1, Duration::ZERO)
            .await
            .expect_err("no such interface")
    });
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

// --- nftables -------------------------------------------------------------------------------

fn prefix(s: &str) -> IpPrefix {
    s.parse().expect("prefix literal")
}

fn fwd(vip: IpAddr, port: u16, protocol: Protocol, mode: NatMode) -> PortRules {
    PortRules {
        vip,
        port,
        protocol,
        mode,
        backends: Vec::new(),
        source_ranges: Vec::new(),
    }
}

/// Every shape of ruleset the appliance renders.
fn variants() -> Vec<(&'static str, Ruleset)> {
    let mut web = fwd(v4("10.0.0.100"), 80, Protocol::Tcp, NatMode::FullNat);
    web.backends = vec![
        "10.1.0.11:30080".parse().expect("addr"),
        "10.1.0.12:30080".parse().expect("addr"),
    ];
    let mut dns = fwd(v4("10.0.0.101"), 53, Protocol::Udp, NatMode::PlainNat);
    dns.backends = vec!["10.1.0.11:30053".parse().expect("addr")];
    dns.source_ranges = vec![prefix("192.0.2.0/24"), prefix("192.0.2.128/25"), prefix("198.51.100.7")];
    let mut v6web = fwd(v6("2001:db8:100::10"), 443, Protocol::Tcp, NatMode::FullNat);
    v6web.backends = vec!["[fd00::11]:30443".parse().expect("addr")];
    v6web.source_ranges = vec![prefix("2001:db8:1::/48"), prefix("::/0"), prefix("10.0.0.0/8")];
    let mut sctp = fwd(v4("10.0.0.102"), 3868, Protocol::Sctp, NatMode::FullNat);
    sctp.backends = vec!["10.1.0.13:31868".parse().expect("addr")];
    sctp.source_ranges = vec![prefix("0.0.0.0/0")];
    let mut nobody = fwd(v4("10.0.0.103"), 8080, Protocol::Tcp, NatMode::PlainNat);
    nobody.source_ranges = vec![prefix("2001:db8::/32")];
    vec![
        ("empty", Ruleset::default()),
        (
            "full nat",
            Ruleset {
                snat: SnatSource::default(),
                forwards: vec![web.clone()],
            },
        ),
        (
            "snat to fixed addresses",
            Ruleset {
                snat: SnatSource {
                    v4: Some(Ipv4Addr::new(10, 1, 0, 1)),
                    v6: Some("fd00::1".parse().expect("literal")),
                },
                forwards: vec![web.clone(), v6web.clone()],
            },
        ),
        (
            "mixed",
            Ruleset {
                snat: SnatSource::default(),
                forwards: vec![web, dns, v6web, sctp, nobody],
            },
        ),
        ("10,000 VIPs", large(10_000)),
    ]
}

/// `count` full-NAT VIPs with two ports, three nodes each, and a source range on every tenth.
fn large(count: u32) -> Ruleset {
    let forwards = (0..count)
        .flat_map(|i| {
            let vip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i));
            [(80, 30000), (443, 30001)].map(|(port, node_port)| {
                let mut f = fwd(vip, port, Protocol::Tcp, NatMode::FullNat);
                let node_port = node_port + u16::try_from(i % 2000).expect("small");
                f.backends = (1..=3)
                    .map(|n| SocketAddr::new(v4(&format!("10.1.0.{n}")), node_port))
                    .collect();
                if i % 10 == 0 {
                    f.source_ranges = vec![prefix("192.0.2.0/24"), prefix("203.0.113.0/24")];
                }
                f
            })
        })
        .collect();
    Ruleset {
        snat: SnatSource::default(),
        forwards,
    }
}

#[test]
fn every_rendered_variant_passes_nft_check_in_a_real_kernel() {
    let ns = Netns::new("nftcheck");
    for (name, ruleset) in variants() {
        let text = nft::render(nft::DEFAULT_TABLE, &ruleset);
        let path = std::env::temp_dir().join(format!("{}-{}.nft", ns.name, name.replace([' ', ','], "_")));
        std::fs::write(&path, &text).expect("write ruleset");
        let out = ns.nft(&["-c", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "variant {name} rejected by `nft -c -f`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = NftTable::default();
        ns.block_on(|| async { table.check(&ruleset).await })
            .unwrap_or_else(|e| panic!("variant {name}: NftTable::check: {e}"));
    }
}

#[test]
fn nft_table_applies_reads_back_repairs_drift_and_never_touches_other_tables() {
    let ns = Netns::new("nft");
    // Someone else's tables, one with our name in another family.
    let foreign = "table inet foreign {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 22 accept\n\t}\n}\ntable ip edgelb {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 192.0.2.1 }\n\t}\n}\n";
    let path = std::env::temp_dir().join(format!("{}-foreign.nft", ns.name));
    std::fs::write(&path, foreign).expect("write");
    let loaded = ns.nft(&["-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let list_foreign = || {
        let a = ns.nft(&["list", "table", "inet", "foreign"]);
        let b = ns.nft(&["list", "table", "ip", "edgelb"]);
        (a.stdout, b.stdout)
    };
    let before = list_foreign();

    let all = variants();
    let table = NftTable::default();
    for (name, ruleset) in &all {
        let (observed, in_sync, took) = ns.block_on(|| async {
            let started = Instant::now();
            table.apply(ruleset).await.expect("apply");
            let observed = table.observe().await.expect("observe");
            let took = started.elapsed();
            (observed, table.in_sync(ruleset).await.expect("in sync"), took)
        });
        eprintln!("variant {name}: applied and read back in {took:?}");
        assert_eq!(observed, Some(nft::expected_state(ruleset)), "variant {name} read back");
        assert!(in_sync, "variant {name}");
        assert_eq!(list_foreign(), before, "variant {name} changed a foreign table");
    }

    // Drift by hand: an element deleted, a rule added; both show, and apply repairs them.
    let mixed = &all.iter().find(|(n, _)| *n == "mixed").expect("mixed").1;
    ns.block_on(|| async { table.apply(mixed).await.expect("apply") });
    let deleted = ns.nft(&[
        "delete",
        "element",
        "inet",
        "edgelb",
        "fullnat_v4",
        "{ 10.1.0.11 . tcp . 30080 }",
    ]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert!(!ns.block_on(|| async { table.in_sync(mixed).await.expect("in sync") }));
    ns.block_on(|| async { table.apply(mixed).await.expect("apply") });
    assert!(ns.block_on(|| async { table.in_sync(mixed).await.expect("in sync") }));
    let added = ns.nft(&["add", "rule", "inet", "edgelb", "nat_postrouting", "masquerade"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(!ns.block_on(|| async { table.in_sync(mixed).await.expect("in sync") }));

    // Flush removes our table only, and is idempotent.
    let after_flush = ns.block_on(|| async {
        table.flush().await.expect("flush");
        table.flush().await.expect("flush again");
        table.observe().await.expect("observe")
    });
    assert_eq!(after_flush, None);
    assert_eq!(list_foreign(), before, "flush changed a foreign table");
}

/// A TCP connection attempt from `source` to `to`; true if it was accepted within two seconds
/// (generous: the test machine is shared, and a dropped SYN never completes anyway).
fn connects(source: IpAddr, to: SocketAddr) -> bool {
    let domain = if to.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, None).expect("socket");
    socket
        .bind(&SockAddr::from(SocketAddr::new(source, 0)))
        .expect("bind source");
    socket
        .connect_timeout(&SockAddr::from(to), Duration::from_secs(2))
        .is_ok()
}

#[test]
fn source_ranges_drop_other_clients_before_the_vip_sees_them() {
    let app = Netns::new("srcapp");
    let client = Netns::new("srccli");
    veth(&app, "front", &client, "eth0");
    app.ip(&["addr", "add", "10.9.0.1/24", "dev", "front"]);
    app.ip(&["addr", "add", "10.9.0.100/32", "dev", "front"]);
    app.ip(&["addr", "add", "fd00:9::1/64", "dev", "front", "nodad"]);
    app.ip(&["addr", "add", "fd00:9::100/128", "dev", "front", "nodad"]);
    for a in ["10.9.0.2/24", "10.9.0.3/24"] {
        client.ip(&["addr", "add", a, "dev", "eth0"]);
    }
    for a in ["fd00:9::2/64", "fd00:9::3/64"] {
        client.ip(&["addr", "add", a, "dev", "eth0", "nodad"]);
    }
    let vip4 = v4("10.9.0.100");
    let vip6 = v6("fd00:9::100");

    let mut restricted4 = fwd(vip4, 8080, Protocol::Tcp, NatMode::FullNat);
    restricted4.source_ranges = vec![prefix("10.9.0.2/32"), prefix("192.0.2.0/24")];
    let mut restricted6 = fwd(vip6, 8080, Protocol::Tcp, NatMode::FullNat);
    restricted6.source_ranges = vec![prefix("fd00:9::2/128")];
    let open = fwd(vip4, 8081, Protocol::Tcp, NatMode::FullNat);
    let ruleset = Ruleset {
        snat: SnatSource::default(),
        forwards: vec![restricted4, restricted6, open],
    };

    // Listeners on the VIPs in the appliance's namespace: without IPVS the filter still sits in
    // front of local delivery, which is where IPVS takes its packets.
    let listeners: Vec<TcpListener> = app.run(|| {
        [
            SocketAddr::new(vip4, 8080),
            SocketAddr::new(vip4, 8081),
            SocketAddr::new(vip6, 8080),
        ]
        .into_iter()
        .map(|a| TcpListener::bind(a).expect("listen on the VIP"))
        .collect()
    });
    let probe = || {
        client.run(|| {
            [
                connects(v4("10.9.0.2"), SocketAddr::new(vip4, 8080)),
                connects(v4("10.9.0.3"), SocketAddr::new(vip4, 8080)),
                connects(v4("10.9.0.3"), SocketAddr::new(vip4, 8081)),
                connects(v6("fd00:9::2"), SocketAddr::new(vip6, 8080)),
                connects(v6("fd00:9::3"), SocketAddr::new(vip6, 8080)),
            ]
        })
    };
    assert_eq!(probe(), [true; 5], "everyone connects before the table exists");

    let table = NftTable::default();
    app.block_on(|| async { table.apply(&ruleset).await.expect("apply") });
    assert_eq!(
        probe(),
        [true, false, true, true, false],
        "[allowed v4, other v4, other v4 to an open port, allowed v6, other v6]"
    );
    let drops = app.nft(&["list", "chain", "inet", "edgelb", "filter_prerouting"]);
    let text = String::from_utf8_lossy(&drops.stdout);
    assert!(
        !text.contains("counter packets 0 "),
        "both drop rules counted packets:\n{text}"
    );

    app.block_on(|| async { table.flush().await.expect("flush") });
    assert_eq!(probe(), [true; 5], "everyone connects again after flush");
    drop(listeners);
}

#[test]
fn full_nat_rule_rewrites_the_source_of_forwarded_traffic_to_listed_nodes_only() {
    // client 10.9.0.2 -- 10.9.0.1 appliance 10.8.0.1 -- 10.8.0.11 node. Without IPVS on this
    // kernel the client reaches the node by plain routing, which passes the same postrouting
    // hook IPVS's forwarded packets pass.
    let client = Netns::new("fnc");
    let app = Netns::new("fna");
    let node = Netns::new("fnn");
    veth(&client, "eth0", &app, "front");
    veth(&app, "back", &node, "eth0");
    client.ip(&["addr", "add", "10.9.0.2/24", "dev", "eth0"]);
    client.ip(&["route", "add", "default", "via", "10.9.0.1"]);
    app.ip(&["addr", "add", "10.9.0.1/24", "dev", "front"]);
    app.ip(&["addr", "add", "10.8.0.1/24", "dev", "back"]);
    node.ip(&["addr", "add", "10.8.0.11/24", "dev", "eth0"]);
    // The node can reach the client only through the appliance (plain NAT's requirement).
    node.ip(&["route", "add", "10.9.0.0/24", "via", "10.8.0.1"]);
    let report = app.run(|| Sysctls::default().ensure(&sysctl::required(false, false)));
    assert!(report.all_ok(), "{report:?}");

    let node_port = 30080;
    let listener = node.run(|| TcpListener::bind(("10.8.0.11", node_port)).expect("node listens"));
    listener.set_nonblocking(false).expect("blocking");
    let seen_source = || {
        let to = SocketAddr::new(v4("10.8.0.11"), node_port);
        assert!(client.run(|| connects(v4("10.9.0.2"), to)), "client reaches the node");
        let (_, peer) = listener.accept().expect("accept");
        peer.ip()
    };
    assert_eq!(seen_source(), v4("10.9.0.2"), "no table: the client's address arrives");

    let mut forward = fwd(v4("10.9.0.100"), 80, Protocol::Tcp, NatMode::FullNat);
    forward.backends = vec![SocketAddr::new(v4("10.8.0.11"), node_port)];
    let table = NftTable::default();
    let full = Ruleset {
        snat: SnatSource::default(),
        forwards: vec![forward.clone()],
    };
    app.block_on(|| async { table.apply(&full).await.expect("apply") });
    assert_eq!(
        seen_source(),
        v4("10.8.0.1"),
        "full NAT: the appliance's address arrives"
    );

    forward.mode = NatMode::PlainNat;
    let plain = Ruleset {
        snat: SnatSource::default(),
        forwards: vec![forward],
    };
    app.block_on(|| async { table.apply(&plain).await.expect("apply") });
    assert_eq!(seen_source(), v4("10.9.0.2"), "plain NAT: the client's address arrives");
}

/// The table `lab/scenarios/fullnat-nft.sh` loads in the kernel lab: the lab topology's VIP with
/// a full-NAT port open to the client's network, a full-NAT port open only to 192.0.2.0/24, and a
/// plain-NAT port on another NodePort.
fn lab_ruleset() -> Ruleset {
    let nodes = |port| {
        (11..=13)
            .map(|n| SocketAddr::new(v4(&format!("10.1.0.{n}")), port))
            .collect()
    };
    let vip = v4("10.0.0.100");
    let mut open = fwd(vip, 80, Protocol::Tcp, NatMode::FullNat);
    open.backends = nodes(30080);
    open.source_ranges = vec![prefix("10.0.0.0/24")];
    let mut closed = fwd(vip, 81, Protocol::Tcp, NatMode::FullNat);
    closed.backends = nodes(30080);
    closed.source_ranges = vec![prefix("192.0.2.0/24")];
    let mut plain = fwd(vip, 82, Protocol::Tcp, NatMode::PlainNat);
    plain.backends = nodes(30082);
    Ruleset {
        snat: SnatSource::default(),
        forwards: vec![open, closed, plain],
    }
}

#[test]
fn lab_scenario_holds_the_rendered_ruleset() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/scenarios/fullnat-nft.sh");
    let script = std::fs::read_to_string(&path).expect("read the lab scenario");
    let start_marker = "<<'EDGELB_NFT'";
    let start = script.find(start_marker).expect("heredoc start");
    let start = start + script[start..].find('\n').expect("end of line") + 1;
    let end = start + script[start..].find("EDGELB_NFT\n").expect("heredoc end");
    let rendered = nft::render(nft::DEFAULT_TABLE, &lab_ruleset());
    if std::env::var_os("EDGELB_BLESS").is_some() {
        let blessed = format!("{}{}{}", &script[..start], rendered, &script[end..]);
        std::fs::write(&path, blessed).expect("rewrite the lab scenario");
        return;
    }
    assert_eq!(
        &script[start..end],
        rendered,
        "lab/scenarios/fullnat-nft.sh is stale: rerun this test with EDGELB_BLESS=1"
    );
}

// --- sysctls --------------------------------------------------------------------------------

#[test]
fn sysctls_are_set_in_the_namespace_and_a_missing_ipvs_is_reported() {
    let ns = Netns::new("sysctl");
    let (first, second, forward) = ns.run(|| {
        let sysctls = Sysctls::default();
        std::fs::write(sysctls.path("net.ipv4.ip_forward"), "0").expect("reset ip_forward");
        std::fs::write(sysctls.path("net.ipv6.conf.all.forwarding"), "0").expect("reset forwarding");
        let wanted = [sysctl::IPV4_FORWARD, sysctl::IPV6_FORWARD];
        let first = sysctls.ensure(&wanted);
        let second = sysctls.ensure(&sysctl::required(true, true));
        (first, second, sysctls.read("net.ipv4.ip_forward").expect("read"))
    });
    assert_eq!(forward, "1");
    assert!(
        first
            .entries
            .iter()
            .all(|e| e.outcome == Outcome::Set { previous: "0".into() }),
        "{first:?}"
    );
    let outcomes: Vec<_> = second.entries.iter().map(|e| (e.sysctl.name, &e.outcome)).collect();
    assert_eq!(outcomes[0], ("net.ipv4.ip_forward", &Outcome::Ok));
    assert_eq!(outcomes[2], ("net.ipv6.conf.all.forwarding", &Outcome::Ok));
    // This kernel has no IPVS (see KERNEL-LAB.md); where it has, the setting is simply set.
    if !std::path::Path::new("/proc/sys/net/ipv4/vs").exists() {
        assert!(
            matches!(outcomes[1].1, Outcome::Failed { reason } if reason.contains("ip_vs")),
            "{outcomes:?}"
        );
    }
    // The host's own setting is another namespace's and must not have been touched by this.
    assert!(ns.name.starts_with("elb-"));
}
