//! Tests of the allocation logic: range parsing and arithmetic, the interval set, pool choice,
//! requested addresses, sharing, holds, dual-stack, `avoid_buggy_ips` and pool edits. The clock
//! is an explicit `now`, so holds are tested to the second without sleeping.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgelb_api::{IpFamily, PoolSpec, Protocol};

use super::set::IntervalSet;
use super::*;

const NOW: i64 = 1_700_000_000;
const V4: IpFamily = IpFamily::Ipv4;
const V6: IpFamily = IpFamily::Ipv6;

// ---- fixtures ----

/// A pool spec with the API's defaults (auto-assign, no restriction, hold 600 s).
/// Schedulers are the store's to check, against the backend: here every name passes.
fn any_scheduler(_: &str) -> Result<(), String> {
    Ok(())
}

fn spec(name: &str, ranges: &[&str]) -> PoolSpec {
    PoolSpec {
        name: name.to_owned(),
        ranges: ranges.iter().map(|r| (*r).to_owned()).collect(),
        auto_assign: true,
        avoid_buggy_ips: false,
        priority: 0,
        clusters: vec![],
        namespaces: vec![],
        scheduler: "wlc".to_owned(),
        hold_seconds: 600,
        health: None,
        forwarding: None,
        capacity_critical_percent: edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT,
        capacity_warning_percent: edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT,
    }
}

fn with(mut s: PoolSpec, f: impl FnOnce(&mut PoolSpec)) -> PoolSpec {
    f(&mut s);
    s
}

fn def(s: &PoolSpec) -> PoolDef {
    PoolDef::from_spec(s, any_scheduler).unwrap_or_else(|e| panic!("test pool '{}' is invalid: {e:?}", s.name))
}

/// An allocation state holding the pools, each checked as the store would.
fn ipam(pools: &[PoolSpec]) -> Ipam {
    let mut ipam = Ipam::new();
    for s in pools {
        let d = def(s);
        ipam.check_pool(&d, None, NOW)
            .unwrap_or_else(|e| panic!("test pool '{}' refused: {e}", s.name));
        ipam.put_pool(d, None);
    }
    ipam
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("'{s}' is not a test address"))
}

fn num(s: &str) -> u128 {
    to_u128(ip(s))
}

fn shown(n: u128) -> String {
    from_u128(n).to_string()
}

/// An owned [`Request`], built fluently.
#[derive(Debug, Clone)]
struct Ask {
    key: ServiceKey,
    uid: String,
    pool: Option<String>,
    requested: Vec<IpAddr>,
    families: Vec<IpFamily>,
    sharing_key: Option<String>,
    ports: Vec<PortKey>,
}

/// A Service asking for one IPv4 address for TCP port 80.
fn svc(cluster: &str, namespace: &str, name: &str) -> Ask {
    Ask {
        key: ServiceKey::new(cluster, namespace, name),
        uid: format!("uid-{name}"),
        pool: None,
        requested: vec![],
        families: vec![V4],
        sharing_key: None,
        ports: vec![(Protocol::Tcp, 80)],
    }
}

impl Ask {
    fn pool(mut self, p: &str) -> Ask {
        self.pool = Some(p.to_owned());
        self
    }

    fn want(mut self, ips: &[&str]) -> Ask {
        self.requested = ips.iter().map(|s| ip(s)).collect();
        self
    }

    fn families(mut self, f: &[IpFamily]) -> Ask {
        self.families = f.to_vec();
        self
    }

    fn share(mut self, key: &str, ports: &[u16]) -> Ask {
        self.sharing_key = Some(key.to_owned());
        self.ports = ports.iter().map(|p| (Protocol::Tcp, *p)).collect();
        self
    }

    fn ports(mut self, ports: &[PortKey]) -> Ask {
        self.ports = ports.to_vec();
        self
    }

    fn uid(mut self, uid: &str) -> Ask {
        self.uid = uid.to_owned();
        self
    }

    fn req(&self) -> Request<'_> {
        Request {
            key: &self.key,
            uid: &self.uid,
            pool: self.pool.as_deref(),
            requested: &self.requested,
            families: &self.families,
            sharing_key: self.sharing_key.as_deref(),
            ports: &self.ports,
        }
    }
}

/// Decides and applies, as the store does after its commit.
fn alloc(ipam: &mut Ipam, ask: &Ask, now: i64) -> Result<Decision, IpamError> {
    let req = ask.req();
    let d = ipam.decide(&req, now)?;
    ipam.apply(&req, &d);
    Ok(d)
}

/// The single address a successful allocation gives, and how.
fn alloc_one(ipam: &mut Ipam, ask: &Ask, now: i64) -> (String, How) {
    let d = alloc(ipam, ask, now).unwrap_or_else(|e| panic!("allocation for {} failed: {e}", ask.key));
    assert_eq!(d.assign.len(), 1, "{}: {d:?}", ask.key);
    (shown(d.assign[0].ip), d.assign[0].how)
}

/// Releases everything the Service holds (a `DELETE`).
fn release(ipam: &mut Ipam, ask: &Ask, now: i64) -> Vec<Release> {
    let r = ipam.release_all(&ask.key, now);
    ipam.apply_release(&ask.key, &ask.uid, &r);
    r
}

fn conflict(r: Result<Decision, IpamError>) -> String {
    match r {
        Err(IpamError::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn unprocessable(r: Result<Decision, IpamError>) -> String {
    match r {
        Err(IpamError::Unprocessable(m)) => m,
        other => panic!("expected unprocessable, got {other:?}"),
    }
}

// ---- ranges ----

#[test]
fn ranges_parse_from_cidrs_start_end_pairs_and_single_addresses() {
    struct Case {
        text: &'static str,
        want: Result<(&'static str, &'static str, IpFamily), &'static str>,
    }
    let ok = |s, e, f| Ok((s, e, f));
    let cases = [
        Case {
            text: "203.0.113.0/26",
            want: ok("203.0.113.0", "203.0.113.63", V4),
        },
        Case {
            text: "10.0.0.0/8",
            want: ok("10.0.0.0", "10.255.255.255", V4),
        },
        Case {
            text: "0.0.0.0/0",
            want: ok("0.0.0.0", "255.255.255.255", V4),
        },
        Case {
            text: "10.0.0.7/32",
            want: ok("10.0.0.7", "10.0.0.7", V4),
        },
        Case {
            text: "2001:db8:1::/64",
            want: ok("2001:db8:1::", "2001:db8:1:0:ffff:ffff:ffff:ffff", V6),
        },
        Case {
            text: "2001:db8::1/128",
            want: ok("2001:db8::1", "2001:db8::1", V6),
        },
        Case {
            text: "203.0.113.100-203.0.113.120",
            want: ok("203.0.113.100", "203.0.113.120", V4),
        },
        Case {
            text: "10.0.0.5 - 10.0.0.5",
            want: ok("10.0.0.5", "10.0.0.5", V4),
        },
        Case {
            text: "2001:db8::10-2001:db8::1:0",
            want: ok("2001:db8::10", "2001:db8::1:0", V6),
        },
        Case {
            text: " 203.0.113.9 ",
            want: ok("203.0.113.9", "203.0.113.9", V4),
        },
        Case {
            text: "2001:db8::9",
            want: ok("2001:db8::9", "2001:db8::9", V6),
        },
        Case {
            text: "10.0.0.5/24",
            want: Err("did you mean '10.0.0.0/24'?"),
        },
        Case {
            text: "10.0.0.200/25",
            want: Err("did you mean '10.0.0.128/25'?"),
        },
        Case {
            text: "2001:db8::1/64",
            want: Err("did you mean '2001:db8::/64'?"),
        },
        Case {
            text: "10.0.0.0/33",
            want: Err("prefix length must be a number from 0 to 32"),
        },
        Case {
            text: "2001:db8::/129",
            want: Err("from 0 to 128"),
        },
        Case {
            text: "10.0.0.0/x",
            want: Err("prefix length"),
        },
        Case {
            text: "10.0.0.0/",
            want: Err("prefix length"),
        },
        Case {
            text: "10.0.0.9-10.0.0.5",
            want: Err("starts after it ends: write '10.0.0.5-10.0.0.9'"),
        },
        Case {
            text: "10.0.0.1-2001:db8::1",
            want: Err("same family"),
        },
        Case {
            text: "2001:db8::1-10.0.0.1",
            want: Err("same family"),
        },
        Case {
            text: "banana",
            want: Err("'banana' is not an IP address"),
        },
        Case {
            text: "",
            want: Err("is not an IP address"),
        },
        Case {
            text: "10.0.0.1-",
            want: Err("is not an IP address"),
        },
        Case {
            text: "10.0.0.256",
            want: Err("is not an IP address"),
        },
        Case {
            text: "::ffff:10.0.0.1",
            want: Err("IPv4-mapped"),
        },
        Case {
            text: "::ffff:10.0.0.0/120",
            want: Err("IPv4-mapped"),
        },
        Case {
            text: "10.0.0.1-::ffff:10.0.0.9",
            want: Err("IPv4-mapped"),
        },
        // IPv6 ranges that contain the IPv4-mapped block would hand out IPv4 addresses as IPv6
        // ones and collide with IPv4 pools on the shared number line.
        Case {
            text: "::/64",
            want: Err("IPv4-mapped"),
        },
        Case {
            text: "::/0",
            want: Err("IPv4-mapped"),
        },
        Case {
            text: "::fffe:0:0-::1:0:0:0",
            want: Err("IPv4-mapped"),
        },
    ];
    for c in cases {
        let got = IpRange::parse(c.text);
        match (c.want, got) {
            (Ok((s, e, f)), Ok(r)) => {
                assert_eq!(
                    (shown(r.start), shown(r.end), r.family),
                    (s.to_owned(), e.to_owned(), f),
                    "'{}'",
                    c.text
                );
            }
            (Err(part), Err(m)) => assert!(m.contains(part), "'{}': message {m:?} lacks {part:?}", c.text),
            (want, got) => panic!("'{}': expected {want:?}, got {got:?}", c.text),
        }
    }
}

#[test]
fn usable_counts_skip_dot_zero_and_dot_255_only_when_asked() {
    let cases: [(&str, u128, u128); 10] = [
        ("10.0.0.0/24", 256, 254),
        ("10.0.0.0/16", 65_536, 65_536 - 512),
        ("10.0.0.250-10.0.1.5", 12, 10),
        ("10.0.0.1-10.0.0.254", 254, 254),
        ("10.0.0.255", 1, 0),
        ("10.0.0.0/31", 2, 1),
        ("10.0.0.0/30", 4, 3),
        ("0.0.0.0/0", 1 << 32, (1 << 32) - 2 * (1 << 24)),
        ("2001:db8::/64", 1 << 64, 1 << 64),
        ("2001:db8::/48", 1 << 80, 1 << 80),
    ];
    for (text, all, avoiding) in cases {
        let r = IpRange::parse(text).expect(text);
        assert_eq!(r.usable(false), all, "{text} without avoid_buggy_ips");
        assert_eq!(r.usable(true), avoiding, "{text} with avoid_buggy_ips");
    }
    // IPv6 addresses ending in ff are not "buggy": only IPv4 broadcast-looking ones are.
    let v6 = IpRange::parse("2001:db8::ff-2001:db8::100").expect("v6");
    assert_eq!(v6.usable(true), 2);
}

#[test]
fn pool_capacity_adds_its_ranges_without_enumerating_them() {
    let big = def(&spec("big", &["2001:db8::/48", "2001:db8:1::/64", "10.0.0.0/24"]));
    assert_eq!(big.capacity(), (1u128 << 80) + (1u128 << 64) + 256);
    let buggy = def(&with(spec("b", &["10.0.0.0/24", "10.0.1.250-10.0.2.5"]), |s| {
        s.avoid_buggy_ips = true
    }));
    assert_eq!(buggy.capacity(), 254 + 10);
}

#[test]
fn addresses_map_onto_one_number_line_and_back() {
    for text in [
        "0.0.0.0",
        "10.1.2.3",
        "255.255.255.255",
        "::",
        "::1",
        "2001:db8::1",
        "ffff:ffff::",
    ] {
        assert_eq!(from_u128(num(text)), ip(text), "{text}");
    }
    assert_eq!(num("10.0.0.0"), 0xffff_0a00_0000);
    assert!(num("0.0.0.0") > num("::ffff:fffe"), "IPv4 sits in ::ffff:0:0/96");
    for (text, buggy) in [
        ("10.0.0.0", true),
        ("10.0.0.255", true),
        ("10.0.1.0", true),
        ("10.0.0.1", false),
        ("2001:db8::ff", false),
        ("2001:db8::", false),
    ] {
        assert_eq!(is_buggy(num(text)), buggy, "{text}");
    }
}

#[test]
fn ranges_display_as_they_would_be_written() {
    assert_eq!(
        IpRange::parse("10.0.0.0/30").expect("cidr").to_string(),
        "10.0.0.0-10.0.0.3"
    );
    assert_eq!(
        IpRange::parse("2001:db8::5").expect("single").to_string(),
        "2001:db8::5"
    );
}

#[test]
fn ranges_overlap_when_they_share_an_address() {
    let r = |t: &str| IpRange::parse(t).expect(t);
    assert!(r("10.0.0.0/24").overlaps(&r("10.0.0.255-10.0.1.5")));
    assert!(r("10.0.0.128/25").overlaps(&r("10.0.0.0/24")));
    assert!(!r("10.0.0.0/24").overlaps(&r("10.0.1.0/24")));
    assert!(!r("10.0.0.0/24").overlaps(&r("2001:db8::/64")));
    assert!(r("10.0.0.0/24").contains(num("10.0.0.255")));
    assert!(!r("10.0.0.0/24").contains(num("10.0.1.0")));
}

// ---- interval set ----

#[test]
fn interval_set_merges_neighbours_on_insert() {
    let mut s = IntervalSet::default();
    assert!(s.insert(10));
    assert!(!s.insert(10), "second insert reports presence");
    assert!(s.insert(12));
    assert_eq!(s.runs(), 2);
    assert!(s.insert(11), "fills the gap");
    assert_eq!(s.runs(), 1, "10..=12 is one run");
    assert!(s.insert(13), "extends right");
    assert!(s.insert(9), "extends left");
    assert_eq!(s.runs(), 1);
    assert!((9..=13).all(|n| s.contains(n)));
    assert!(!s.contains(8) && !s.contains(14));
    assert!(s.insert(20));
    assert_eq!(s.runs(), 2);
}

#[test]
fn interval_set_splits_runs_on_remove() {
    let mut s = IntervalSet::default();
    for n in 0..10 {
        s.insert(n);
    }
    assert!(s.remove(5), "middle");
    assert_eq!(s.runs(), 2);
    assert!(!s.contains(5));
    assert!(!s.remove(5), "second remove reports absence");
    assert!(s.remove(0), "first of a run");
    assert!(s.remove(9), "last of a run");
    assert_eq!((1..=4).chain(6..=8).filter(|n| s.contains(*n)).count(), 7);
    assert_eq!(s.runs(), 2);
    assert!(s.insert(5));
    assert_eq!(s.runs(), 1, "putting it back merges again");
    for n in 1..=8 {
        assert!(s.remove(n));
    }
    assert_eq!(s, IntervalSet::default());
    assert!(!s.remove(100));
}

#[test]
fn interval_set_finds_the_first_free_address() {
    let mut s = IntervalSet::default();
    assert_eq!(s.first_free(5, 9, |_| true), Some(5), "empty set");
    assert_eq!(s.first_free(9, 5, |_| true), None, "empty interval");
    for n in 5..=7 {
        s.insert(n);
    }
    assert_eq!(s.first_free(5, 9, |_| true), Some(8), "skips the run");
    assert_eq!(s.first_free(6, 9, |_| true), Some(8), "starting inside a run");
    assert_eq!(s.first_free(0, 9, |_| true), Some(0));
    assert_eq!(s.first_free(5, 7, |_| true), None, "all taken");
    assert_eq!(s.first_free(5, 9, |n| n != 8), Some(9), "the filter skips 8");
    assert_eq!(s.first_free(5, 9, |n| n > 9), None, "the filter refuses all");
    s.insert(8);
    s.insert(9);
    assert_eq!(s.runs(), 1);
    assert_eq!(s.first_free(5, 9, |_| true), None);
}

#[test]
fn interval_set_handles_the_ends_of_the_number_line() {
    let max = u128::MAX;
    let mut s = IntervalSet::default();
    assert!(s.insert(max));
    assert!(s.insert(0));
    assert_eq!(s.runs(), 2);
    assert!(s.insert(max - 1));
    assert_eq!(s.runs(), 2, "max-1 merges into max");
    assert_eq!(s.first_free(max - 1, max, |_| true), None, "no overflow past the end");
    assert_eq!(s.first_free(max - 3, max, |_| true), Some(max - 3));
    assert_eq!(s.first_free(0, 0, |_| true), None);
    assert_eq!(s.first_free(0, 1, |_| true), Some(1));
    assert_eq!(s.first_free(max, max, |_| true), None);
    assert!(s.remove(max));
    assert_eq!(s.first_free(max - 1, max, |_| true), Some(max));
    assert!(s.remove(0));
    assert!(s.contains(max - 1) && !s.contains(0));
}

#[test]
fn interval_set_keeps_a_full_range_as_one_run() {
    let base = num("10.0.0.0");
    let mut s = IntervalSet::default();
    // Inserting out of order still merges.
    for n in (0..30_000u128).rev().chain(30_000..60_000) {
        s.insert(base + n);
    }
    assert_eq!(s.runs(), 1);
    assert_eq!(s.first_free(base, base + 65_535, |_| true), Some(base + 60_000));
}

// ---- PoolDef ----

#[test]
fn pool_spec_validation_reports_every_problem_with_its_field() {
    let bad = PoolSpec {
        name: "Bad_Name".into(),
        ranges: vec![
            "10.0.0.0/24".into(),
            "banana".into(),
            "10.0.0.128/25".into(),
            "10.0.1.5/24".into(),
        ],
        clusters: vec!["prod".into(), "Prod!".into()],
        namespaces: vec!["".into()],
        hold_seconds: 10_000_000_000,
        ..spec("x", &[])
    };
    let errors = PoolDef::from_spec(&bad, any_scheduler).expect_err("invalid");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "ranges[1]",
            "ranges[2]",
            "ranges[3]",
            "clusters[1]",
            "namespaces[0]",
            "hold_seconds"
        ]
    );
    let message = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(message("ranges[1]").contains("not an IP address"), "{errors:?}");
    assert!(message("ranges[2]").contains("overlaps"), "{errors:?}");
    assert!(
        message("ranges[3]").contains("did you mean '10.0.1.0/24'"),
        "{errors:?}"
    );

    let empty = PoolDef::from_spec(&spec("empty", &[]), any_scheduler).expect_err("no ranges");
    assert_eq!(empty.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["ranges"]);
}

#[test]
fn valid_pool_spec_keeps_its_settings_and_sorts_its_ranges() {
    let s = with(spec("mixed", &["2001:db8::/64", "10.0.1.0/24", "10.0.0.0/24"]), |s| {
        s.priority = -3;
        s.hold_seconds = 0;
        s.scheduler = "mh".into();
    });
    let d = def(&s);
    let starts: Vec<String> = d.ranges.iter().map(|r| shown(r.start)).collect();
    assert_eq!(starts, ["10.0.0.0", "10.0.1.0", "2001:db8::"]);
    assert_eq!((d.priority, d.hold_seconds, d.scheduler.as_str()), (-3, 0, "mh"));
    assert!(d.has_family(V4) && d.has_family(V6));
    assert!(d.contains(num("10.0.1.9")) && !d.contains(num("10.0.2.0")));
}

#[test]
fn names_are_checked() {
    let (longest, too_long) = ("a".repeat(63), "a".repeat(64));
    for ok in ["a", "public", "pool-1", "0", longest.as_str()] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a/b", too_long.as_str()] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

// ---- pool choice and requested addresses (tables) ----

#[derive(Debug)]
enum Expect {
    /// The addresses, in the order of the families, each with its pool.
    Got(&'static [(&'static str, &'static str)]),
    /// An invalid request, naming the field.
    Invalid(&'static str),
    Unprocessable(&'static str),
    Conflict(&'static str),
}

struct Case {
    name: &'static str,
    pools: Vec<PoolSpec>,
    /// Allocations made first, in order.
    before: Vec<Ask>,
    ask: Ask,
    expect: Expect,
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let mut ipam = ipam(&c.pools);
        for b in &c.before {
            if let Err(e) = alloc(&mut ipam, b, NOW) {
                panic!("case '{}': setup allocation for {} failed: {e}", c.name, b.key);
            }
        }
        let got = ipam.decide(&c.ask.req(), NOW);
        match (&c.expect, &got) {
            (Expect::Got(want), Ok(d)) => {
                let got: Vec<(String, String)> = d.assign.iter().map(|a| (shown(a.ip), a.pool.clone())).collect();
                let want: Vec<(String, String)> =
                    want.iter().map(|(i, p)| ((*i).to_owned(), (*p).to_owned())).collect();
                assert_eq!(got, want, "case '{}'", c.name);
            }
            (Expect::Invalid(field), Err(IpamError::Invalid { field: f, .. })) => {
                assert_eq!(f, field, "case '{}'", c.name);
            }
            (Expect::Unprocessable(part), Err(IpamError::Unprocessable(m)))
            | (Expect::Conflict(part), Err(IpamError::Conflict(m))) => {
                assert!(m.contains(part), "case '{}': message {m:?} lacks {part:?}", c.name);
            }
            (want, got) => panic!("case '{}': expected {want:?}, got {got:?}", c.name),
        }
    }
}

#[test]
fn pool_is_chosen_by_name_else_by_priority_among_allowed_auto_assign_pools() {
    let low = with(spec("low", &["10.0.0.0/30"]), |s| s.priority = 0);
    let high = with(spec("high", &["10.1.0.0/30"]), |s| s.priority = 10);
    let manual = with(spec("manual", &["10.2.0.0/30"]), |s| {
        s.auto_assign = false;
        s.priority = 100;
    });
    let prod_only = with(spec("prod-only", &["10.3.0.0/30"]), |s| {
        s.clusters = vec!["prod".into()];
        s.priority = 50;
    });
    let team_a = with(spec("team-a", &["10.4.0.0/30"]), |s| {
        s.namespaces = vec!["team-a".into()];
        s.priority = 50;
    });
    let v6 = spec("v6", &["2001:db8::/64"]);
    let dual = spec("dual", &["10.5.0.0/30", "2001:db8:5::/64"]);
    let tiny_high = with(spec("tiny-high", &["10.6.0.0/31"]), |s| s.priority = 10);
    let same_a = with(spec("aaa", &["10.7.0.0/30"]), |s| s.priority = 5);
    let same_z = with(spec("zzz", &["10.8.0.0/30"]), |s| s.priority = 5);
    let cases = vec![
        Case {
            name: "the named pool wins over a higher priority",
            pools: vec![low.clone(), high.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").pool("low"),
            expect: Expect::Got(&[("10.0.0.0", "low")]),
        },
        Case {
            name: "without a name the highest priority pool is used",
            pools: vec![low.clone(), high.clone()],
            before: vec![],
            ask: svc("prod", "default", "web"),
            expect: Expect::Got(&[("10.1.0.0", "high")]),
        },
        Case {
            name: "equal priorities are tried by name",
            pools: vec![same_z.clone(), same_a.clone()],
            before: vec![],
            ask: svc("prod", "default", "web"),
            expect: Expect::Got(&[("10.7.0.0", "aaa")]),
        },
        Case {
            name: "a full pool spills over to the next by priority",
            pools: vec![low.clone(), tiny_high.clone()],
            before: vec![svc("prod", "default", "a"), svc("prod", "default", "b")],
            ask: svc("prod", "default", "web"),
            expect: Expect::Got(&[("10.0.0.0", "low")]),
        },
        Case {
            name: "an auto_assign=false pool is skipped when not named",
            pools: vec![low.clone(), manual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web"),
            expect: Expect::Got(&[("10.0.0.0", "low")]),
        },
        Case {
            name: "an auto_assign=false pool is used when named",
            pools: vec![low.clone(), manual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").pool("manual"),
            expect: Expect::Got(&[("10.2.0.0", "manual")]),
        },
        Case {
            name: "only auto_assign=false pools and no name: unprocessable",
            pools: vec![manual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web"),
            expect: Expect::Unprocessable("no pool with auto_assign and an IPv4 range allows cluster 'prod'"),
        },
        Case {
            name: "a pool restricted to a cluster serves that cluster",
            pools: vec![low.clone(), prod_only.clone()],
            before: vec![],
            ask: svc("prod", "default", "web"),
            expect: Expect::Got(&[("10.3.0.0", "prod-only")]),
        },
        Case {
            name: "a pool restricted to a cluster is skipped for another",
            pools: vec![low.clone(), prod_only.clone()],
            before: vec![],
            ask: svc("dev", "default", "web"),
            expect: Expect::Got(&[("10.0.0.0", "low")]),
        },
        Case {
            name: "a pool restricted to a cluster, named by another: unprocessable",
            pools: vec![low.clone(), prod_only.clone()],
            before: vec![],
            ask: svc("dev", "default", "web").pool("prod-only"),
            expect: Expect::Unprocessable("pool 'prod-only' does not allow cluster 'dev'"),
        },
        Case {
            name: "a pool restricted to a namespace serves that namespace",
            pools: vec![low.clone(), team_a.clone()],
            before: vec![],
            ask: svc("prod", "team-a", "web"),
            expect: Expect::Got(&[("10.4.0.0", "team-a")]),
        },
        Case {
            name: "a pool restricted to a namespace is skipped for another",
            pools: vec![low.clone(), team_a.clone()],
            before: vec![],
            ask: svc("prod", "team-b", "web"),
            expect: Expect::Got(&[("10.0.0.0", "low")]),
        },
        Case {
            name: "a pool restricted to a namespace, named by another: unprocessable",
            pools: vec![team_a.clone()],
            before: vec![],
            ask: svc("prod", "team-b", "web").pool("team-a"),
            expect: Expect::Unprocessable("namespace 'team-b'"),
        },
        Case {
            name: "the only allowed pool is restricted elsewhere: unprocessable",
            pools: vec![prod_only.clone()],
            before: vec![],
            ask: svc("dev", "default", "web"),
            expect: Expect::Unprocessable("allows cluster 'dev' namespace 'default'"),
        },
        Case {
            name: "a named pool without the family: unprocessable",
            pools: vec![low.clone(), v6.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").pool("low").families(&[V6]),
            expect: Expect::Unprocessable("pool 'low' has no IPv6 range"),
        },
        Case {
            name: "no pool has the family: unprocessable",
            pools: vec![low.clone(), high.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V6]),
            expect: Expect::Unprocessable("no pool with auto_assign and an IPv6 range"),
        },
        Case {
            name: "pools without the family are passed over",
            pools: vec![high.clone(), v6.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V6]),
            expect: Expect::Got(&[("2001:db8::", "v6")]),
        },
        Case {
            name: "a named pool that does not exist: unprocessable",
            pools: vec![low.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").pool("nope"),
            expect: Expect::Unprocessable("pool 'nope' does not exist"),
        },
        Case {
            name: "a pool with both families gives one of each, in the asked order",
            pools: vec![dual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V6, V4]),
            expect: Expect::Got(&[("2001:db8:5::", "dual"), ("10.5.0.0", "dual")]),
        },
        Case {
            name: "dual-stack may take each family from another pool",
            pools: vec![high.clone(), v6.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V4, V6]),
            expect: Expect::Got(&[("10.1.0.0", "high"), ("2001:db8::", "v6")]),
        },
        Case {
            name: "no families: invalid",
            pools: vec![low.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[]),
            expect: Expect::Invalid("ip_families"),
        },
        Case {
            name: "a family twice: invalid",
            pools: vec![low.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V4, V4]),
            expect: Expect::Invalid("ip_families"),
        },
    ];
    run(cases);
}

#[test]
fn requested_addresses_are_checked_against_pools_and_holders() {
    let open = spec("open", &["10.0.0.0/24", "2001:db8::/64"]);
    let prod_only = with(spec("prod-only", &["10.1.0.0/24"]), |s| {
        s.clusters = vec!["prod".into()]
    });
    let team_a = with(spec("team-a", &["10.2.0.0/24"]), |s| {
        s.namespaces = vec!["team-a".into()]
    });
    let buggy = with(spec("buggy", &["10.3.0.0/23"]), |s| s.avoid_buggy_ips = true);
    let manual = with(spec("manual", &["10.4.0.0/24"]), |s| s.auto_assign = false);
    let cases = vec![
        Case {
            name: "a free address of an allowed pool",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.0.0.77"]),
            expect: Expect::Got(&[("10.0.0.77", "open")]),
        },
        Case {
            name: "outside every pool: unprocessable",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["192.0.2.1"]),
            expect: Expect::Unprocessable("192.0.2.1 is outside every pool"),
        },
        Case {
            name: "in a pool restricted to another cluster: unprocessable",
            pools: vec![open.clone(), prod_only.clone()],
            before: vec![],
            ask: svc("dev", "default", "web").want(&["10.1.0.5"]),
            expect: Expect::Unprocessable("pool 'prod-only', which does not allow cluster 'dev'"),
        },
        Case {
            name: "in a pool restricted to the asking cluster",
            pools: vec![prod_only.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.1.0.5"]),
            expect: Expect::Got(&[("10.1.0.5", "prod-only")]),
        },
        Case {
            name: "in a pool restricted to another namespace: unprocessable",
            pools: vec![team_a.clone()],
            before: vec![],
            ask: svc("prod", "team-b", "web").want(&["10.2.0.5"]),
            expect: Expect::Unprocessable("namespace 'team-b'"),
        },
        Case {
            name: "in another pool than the named one: unprocessable",
            pools: vec![open.clone(), manual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").pool("manual").want(&["10.0.0.5"]),
            expect: Expect::Unprocessable("10.0.0.5 is in pool 'open', not in the requested pool 'manual'"),
        },
        Case {
            name: "in an auto_assign=false pool, asked for by address",
            pools: vec![open.clone(), manual.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.4.0.9"]),
            expect: Expect::Got(&[("10.4.0.9", "manual")]),
        },
        Case {
            name: "allocated to a Service of another cluster: conflict that does not name it",
            pools: vec![open.clone()],
            before: vec![svc("prod", "shop", "cart").want(&["10.0.0.9"])],
            ask: svc("dev", "default", "web").want(&["10.0.0.9"]),
            expect: Expect::Conflict(
                "10.0.0.9 is already allocated to a Service of another cluster \
                 (an operator sees which in GET /api/v1/allocations?ip=10.0.0.9)",
            ),
        },
        Case {
            name: "allocated to a Service of the same cluster without a sharing key: conflict",
            pools: vec![open.clone()],
            before: vec![svc("prod", "shop", "cart").want(&["10.0.0.9"])],
            ask: svc("prod", "shop", "web")
                .want(&["10.0.0.9"])
                .ports(&[(Protocol::Tcp, 443)]),
            expect: Expect::Conflict("already allocated to Service prod/shop/cart"),
        },
        Case {
            name: "shared by key in the same cluster with other ports",
            pools: vec![open.clone()],
            before: vec![svc("prod", "shop", "cart").want(&["10.0.0.9"]).share("k", &[80])],
            ask: svc("prod", "shop", "web").want(&["10.0.0.9"]).share("k", &[443]),
            expect: Expect::Got(&[("10.0.0.9", "open")]),
        },
        Case {
            name: "shared by key but a port collides: conflict",
            pools: vec![open.clone()],
            before: vec![svc("prod", "shop", "cart").want(&["10.0.0.9"]).share("k", &[80, 443])],
            ask: svc("prod", "shop", "web").want(&["10.0.0.9"]).share("k", &[443]),
            expect: Expect::Conflict(
                "port 443/TCP is already used on shared address 10.0.0.9 by Service prod/shop/cart",
            ),
        },
        Case {
            name: "same sharing key from another cluster: conflict",
            pools: vec![open.clone()],
            before: vec![svc("prod", "shop", "cart").want(&["10.0.0.9"]).share("k", &[80])],
            ask: svc("dev", "shop", "web").want(&["10.0.0.9"]).share("k", &[443]),
            expect: Expect::Conflict("already allocated to a Service of another cluster"),
        },
        Case {
            name: "shared by Services of two other clusters: counted, never named",
            pools: vec![open.clone()],
            before: vec![
                svc("prod", "shop", "cart").want(&["10.0.0.9"]).share("k", &[80]),
                svc("prod", "shop", "shelf").want(&["10.0.0.9"]).share("k", &[81]),
            ],
            ask: svc("dev", "shop", "web").want(&["10.0.0.9"]),
            expect: Expect::Conflict("10.0.0.9 is already allocated to 2 Services of other clusters ("),
        },
        Case {
            name: "a .0 address of an avoid_buggy_ips pool: unprocessable",
            pools: vec![buggy.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.3.1.0"]),
            expect: Expect::Unprocessable("avoid_buggy_ips"),
        },
        Case {
            name: "a .255 address of an avoid_buggy_ips pool: unprocessable",
            pools: vec![buggy.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.3.0.255"]),
            expect: Expect::Unprocessable("ends in .0 or .255"),
        },
        Case {
            name: "a .0 address of a pool that does not avoid them",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["10.0.0.0"]),
            expect: Expect::Got(&[("10.0.0.0", "open")]),
        },
        Case {
            name: "two IPv4 addresses: invalid",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web")
                .families(&[V4, V6])
                .want(&["10.0.0.1", "10.0.0.2"]),
            expect: Expect::Invalid("requested_ips[1]"),
        },
        Case {
            name: "an IPv6 address with families [IPv4]: invalid",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").want(&["2001:db8::5"]),
            expect: Expect::Invalid("requested_ips[0]"),
        },
        Case {
            name: "one of each family, listed in another order than the families",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web")
                .families(&[V4, V6])
                .want(&["2001:db8::5", "10.0.0.5"]),
            expect: Expect::Got(&[("10.0.0.5", "open"), ("2001:db8::5", "open")]),
        },
        Case {
            name: "one family requested, the other chosen",
            pools: vec![open.clone()],
            before: vec![],
            ask: svc("prod", "default", "web").families(&[V4, V6]).want(&["2001:db8::5"]),
            expect: Expect::Got(&[("10.0.0.0", "open"), ("2001:db8::5", "open")]),
        },
    ];
    run(cases);
}

// ---- idempotency ----

#[test]
fn asking_again_with_the_same_key_returns_the_same_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    let (first, how) = alloc_one(&mut ipam, &web, NOW);
    assert_eq!((first.as_str(), how), ("10.0.0.0", How::New));
    let again = ipam.decide(&web.req(), NOW + 5).expect("again");
    assert_eq!(
        again.assign,
        vec![Assign {
            ip: num("10.0.0.0"),
            pool: "p".into(),
            how: How::Keep
        }]
    );
    assert!(again.release.is_empty());
    assert!(again.keeps_everything());
    ipam.apply(&web.req(), &again);
    assert_eq!(ipam.addresses_of(&web.key), vec![num("10.0.0.0")]);
    assert_eq!(ipam.len(), 1, "nothing else was taken");
    // Another Service gets the next address, not the same one.
    assert_eq!(alloc_one(&mut ipam, &svc("prod", "default", "api"), NOW).0, "10.0.0.1");
}

#[test]
fn recreated_service_with_a_new_uid_keeps_its_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    let recreated = web.clone().uid("a-brand-new-uid");
    assert_eq!(
        alloc_one(&mut ipam, &recreated, NOW + 1),
        ("10.0.0.0".into(), How::Keep)
    );
}

#[test]
fn a_service_changing_its_ports_keeps_its_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    let more_ports = web.clone().ports(&[(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
    assert_eq!(alloc_one(&mut ipam, &more_ports, NOW), ("10.0.0.0".into(), How::Keep));
    let info = ipam.addr(num("10.0.0.0")).expect("allocated");
    assert_eq!(info.users[&web.key], vec![(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
}

#[test]
fn a_pool_edit_never_moves_an_allocated_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    // The pool now excludes the cluster and avoids .0: the Service still keeps what it has.
    let edited = def(&with(spec("p", &["10.0.0.0/24"]), |s| {
        s.avoid_buggy_ips = true;
        s.auto_assign = false;
        s.clusters = vec!["other".into()];
    }));
    ipam.check_pool(&edited, Some("p"), NOW).expect("same ranges");
    ipam.put_pool(edited, Some("p"));
    assert_eq!(alloc_one(&mut ipam, &web, NOW), ("10.0.0.0".into(), How::Keep));
}

#[test]
fn a_new_requested_address_moves_the_service_and_holds_the_old_one() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    let d = alloc(&mut ipam, &web.clone().want(&["10.0.0.50"]), NOW).expect("move");
    assert_eq!(
        d.assign,
        vec![Assign {
            ip: num("10.0.0.50"),
            pool: "p".into(),
            how: How::New
        }]
    );
    assert_eq!(
        d.release,
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::Held(NOW + 600)
        }]
    );
    assert_eq!(ipam.addresses_of(&web.key), vec![num("10.0.0.50")]);
    let old = ipam.addr(num("10.0.0.0")).expect("held");
    assert!(old.users.is_empty());
    assert_eq!(
        old.held.as_ref().map(|h| (&h.key, h.until)),
        Some((&web.key, NOW + 600))
    );
}

#[test]
fn naming_another_pool_moves_the_service_there() {
    let mut ipam = ipam(&[
        spec("a", &["10.0.0.0/24"]),
        with(spec("b", &["10.1.0.0/24"]), |s| s.hold_seconds = 0),
    ]);
    let web = svc("prod", "default", "web").pool("b");
    assert_eq!(alloc_one(&mut ipam, &web, NOW).0, "10.1.0.0");
    let d = alloc(&mut ipam, &web.clone().pool("a"), NOW).expect("move");
    assert_eq!(
        (shown(d.assign[0].ip), d.assign[0].pool.as_str()),
        ("10.0.0.0".into(), "a")
    );
    assert_eq!(
        d.release,
        vec![Release {
            ip: num("10.1.0.0"),
            outcome: Outcome::Freed
        }]
    );
    assert!(ipam.addr(num("10.1.0.0")).is_none(), "hold_seconds 0 frees at once");
}

#[test]
fn dropping_a_family_releases_its_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24", "2001:db8::/64"])]);
    let web = svc("prod", "default", "web").families(&[V4, V6]);
    let d = alloc(&mut ipam, &web, NOW).expect("dual");
    assert_eq!(
        d.assign.iter().map(|a| shown(a.ip)).collect::<Vec<_>>(),
        ["10.0.0.0", "2001:db8::"]
    );
    let d = alloc(&mut ipam, &web.clone().families(&[V6]), NOW).expect("v6 only");
    assert_eq!(
        d.assign,
        vec![Assign {
            ip: num("2001:db8::"),
            pool: "p".into(),
            how: How::Keep
        }]
    );
    assert_eq!(
        d.release,
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::Held(NOW + 600)
        }]
    );
}

// ---- exhaustion and avoid_buggy_ips ----

#[test]
fn a_full_pool_answers_pool_exhausted() {
    let mut ipam = ipam(&[spec("tiny", &["10.0.0.0/30"])]);
    let got: Vec<String> = (0..4)
        .map(|i| alloc_one(&mut ipam, &svc("prod", "default", &format!("s{i}")), NOW).0)
        .collect();
    assert_eq!(got, ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let m = conflict(alloc(&mut ipam, &svc("prod", "default", "s4"), NOW));
    assert!(m.contains("pool exhausted") && m.contains("'tiny'"), "{m}");
    // Still exhausted with the pool named.
    let m = conflict(alloc(&mut ipam, &svc("prod", "default", "s4").pool("tiny"), NOW));
    assert!(m.contains("pool exhausted"), "{m}");
    // Those that have an address still get it.
    assert_eq!(alloc_one(&mut ipam, &svc("prod", "default", "s2"), NOW).1, How::Keep);
}

#[test]
fn avoid_buggy_ips_never_hands_out_dot_zero_or_dot_255() {
    let mut ipam = ipam(&[with(spec("p", &["10.0.0.0/24"]), |s| s.avoid_buggy_ips = true)]);
    let mut got = Vec::new();
    let err = loop {
        match alloc(&mut ipam, &svc("prod", "default", &format!("s{}", got.len())), NOW) {
            Ok(d) => got.push(from_u128(d.assign[0].ip)),
            Err(e) => break e,
        }
        assert!(got.len() <= 256, "runaway allocation");
    };
    assert_eq!(got.len(), 254);
    assert!(got.iter().all(|ip| !is_buggy(to_u128(*ip))), "{got:?}");
    assert_eq!(got.first().map(ToString::to_string).as_deref(), Some("10.0.0.1"));
    assert_eq!(got.last().map(ToString::to_string).as_deref(), Some("10.0.0.254"));
    assert!(matches!(err, IpamError::Conflict(m) if m.contains("pool exhausted")));
}

#[test]
fn avoid_buggy_ips_skips_the_boundary_inside_a_start_end_range() {
    let mut ipam = ipam(&[with(spec("p", &["10.0.0.250-10.0.1.5"]), |s| s.avoid_buggy_ips = true)]);
    let got: Vec<String> = (0..10)
        .map(|i| alloc_one(&mut ipam, &svc("prod", "default", &format!("s{i}")), NOW).0)
        .collect();
    assert!(!got.iter().any(|g| g == "10.0.0.255" || g == "10.0.1.0"), "{got:?}");
    assert_eq!(got[5], "10.0.1.1");
    assert!(conflict(alloc(&mut ipam, &svc("prod", "default", "s10"), NOW)).contains("pool exhausted"));
}

// ---- sharing ----

#[test]
fn services_with_one_sharing_key_and_other_ports_share_one_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "shop", "web").share("front", &[80]);
    let tls = svc("prod", "shop", "tls").share("front", &[443]);
    assert_eq!(alloc_one(&mut ipam, &web, NOW), ("10.0.0.0".into(), How::New));
    assert_eq!(alloc_one(&mut ipam, &tls, NOW), ("10.0.0.0".into(), How::Share));
    let users: Vec<&ServiceKey> = ipam.addr(num("10.0.0.0")).expect("shared").user_keys().collect();
    assert_eq!(users, [&tls.key, &web.key]);
    // Both ask again: nothing moves.
    assert_eq!(alloc_one(&mut ipam, &web, NOW).1, How::Keep);
    assert_eq!(alloc_one(&mut ipam, &tls, NOW).1, How::Keep);
    // The same port number on another protocol does not collide.
    let dns = svc("prod", "shop", "dns")
        .share("front", &[])
        .ports(&[(Protocol::Udp, 80)]);
    assert_eq!(alloc_one(&mut ipam, &dns, NOW), ("10.0.0.0".into(), How::Share));
}

#[test]
fn a_port_collision_on_a_shared_address_is_a_conflict() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    alloc_one(&mut ipam, &svc("prod", "shop", "web").share("front", &[80, 8080]), NOW);
    let m = conflict(alloc(
        &mut ipam,
        &svc("prod", "shop", "other").share("front", &[8080]),
        NOW,
    ));
    assert!(
        m.contains("port 8080/TCP") && m.contains("Service prod/shop/web"),
        "{m}"
    );
    // A sharer changing its ports onto another's is refused too.
    let tls = svc("prod", "shop", "tls").share("front", &[443]);
    alloc_one(&mut ipam, &tls, NOW);
    let m = conflict(alloc(&mut ipam, &tls.clone().share("front", &[443, 80]), NOW));
    assert!(m.contains("port 80/TCP"), "{m}");
    assert_eq!(
        ipam.addresses_of(&tls.key),
        vec![num("10.0.0.0")],
        "the refused change left it in place"
    );
}

#[test]
fn sharing_keys_are_scoped_to_their_cluster() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    alloc_one(&mut ipam, &svc("prod", "shop", "web").share("front", &[80]), NOW);
    assert_eq!(
        alloc_one(&mut ipam, &svc("dev", "shop", "tls").share("front", &[443]), NOW),
        ("10.0.0.1".into(), How::New)
    );
    // Other sharing key, or none, in the same cluster: another address too.
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "shop", "a").share("back", &[443]), NOW).0,
        "10.0.0.2"
    );
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "shop", "b").ports(&[(Protocol::Tcp, 443)]), NOW).0,
        "10.0.0.3"
    );
}

#[test]
fn releasing_one_sharer_leaves_the_address_allocated_to_the_other() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "shop", "web").share("front", &[80]);
    let tls = svc("prod", "shop", "tls").share("front", &[443]);
    alloc_one(&mut ipam, &web, NOW);
    alloc_one(&mut ipam, &tls, NOW);
    let r = release(&mut ipam, &web, NOW);
    assert_eq!(
        r,
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::StillShared
        }]
    );
    assert!(ipam.addresses_of(&web.key).is_empty());
    let info = ipam.addr(num("10.0.0.0")).expect("still allocated");
    assert_eq!(info.user_keys().collect::<Vec<_>>(), [&tls.key]);
    assert!(info.held.is_none());
    // A third sharer may now use port 80.
    let again = svc("prod", "shop", "web2").share("front", &[80]);
    assert_eq!(alloc_one(&mut ipam, &again, NOW), ("10.0.0.0".into(), How::Share));
    release(&mut ipam, &again, NOW);
    // The last sharer's release holds it for that one.
    let r = release(&mut ipam, &tls, NOW + 1);
    assert_eq!(
        r,
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::Held(NOW + 601)
        }]
    );
    let hold = ipam.addr(num("10.0.0.0")).and_then(|a| a.held.clone()).expect("held");
    assert_eq!((hold.key, hold.uid.as_str()), (tls.key.clone(), "uid-tls"));
}

#[test]
fn a_held_shared_address_is_not_shared_with_newcomers() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "shop", "web").share("front", &[80]);
    alloc_one(&mut ipam, &web, NOW);
    release(&mut ipam, &web, NOW);
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "shop", "tls").share("front", &[443]), NOW).0,
        "10.0.0.1"
    );
}

#[test]
fn a_sharer_that_changes_its_sharing_key_moves_off_the_shared_address() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "shop", "web").share("front", &[80]);
    let tls = svc("prod", "shop", "tls").share("front", &[443]);
    alloc_one(&mut ipam, &web, NOW);
    alloc_one(&mut ipam, &tls, NOW);
    let d = alloc(&mut ipam, &tls.clone().share("other", &[443]), NOW).expect("move");
    assert_eq!((shown(d.assign[0].ip), d.assign[0].how), ("10.0.0.1".into(), How::New));
    assert_eq!(
        d.release,
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::StillShared
        }]
    );
    assert_eq!(
        ipam.addr(num("10.0.0.0"))
            .expect("web's")
            .user_keys()
            .collect::<Vec<_>>(),
        [&web.key]
    );
}

#[test]
fn a_sole_user_changing_its_sharing_key_takes_the_address_along() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "shop", "web").share("old", &[80]);
    alloc_one(&mut ipam, &web, NOW);
    assert_eq!(
        alloc_one(&mut ipam, &web.clone().share("new", &[80]), NOW),
        ("10.0.0.0".into(), How::Keep)
    );
    assert_eq!(
        ipam.addr(num("10.0.0.0"))
            .and_then(|a| a.sharing_key.clone())
            .as_deref(),
        Some("new")
    );
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "shop", "a").share("new", &[443]), NOW),
        ("10.0.0.0".into(), How::Share)
    );
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "shop", "b").share("old", &[443]), NOW),
        ("10.0.0.1".into(), How::New)
    );
}

// ---- holds ----

#[test]
fn released_ip_is_held_back_until_hold_period_ends() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    assert_eq!(
        release(&mut ipam, &web, NOW),
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::Held(NOW + 600)
        }]
    );
    assert!(ipam.addresses_of(&web.key).is_empty());
    // During the hold the allocator passes it over...
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "api"), NOW + 10),
        ("10.0.0.1".into(), How::New)
    );
    // ...and asking for it by address is a conflict that says until when.
    let m = conflict(alloc(
        &mut ipam,
        &svc("prod", "default", "x").want(&["10.0.0.0"]),
        NOW + 599,
    ));
    assert!(m.contains("held for Service prod/default/web until"), "{m}");
    assert!(m.contains(&fmt_unix(NOW + 600)), "{m}");
    // Another cluster is told that it is held and until when, not for which Service.
    let m = conflict(alloc(
        &mut ipam,
        &svc("dev", "default", "x").want(&["10.0.0.0"]),
        NOW + 599,
    ));
    assert!(m.contains("held for a Service of another cluster until"), "{m}");
    assert!(!m.contains("web"), "{m}");
    // The same key gets it back, under a new UID too (the Service was re-created).
    let back = web.clone().uid("new-uid");
    assert_eq!(alloc_one(&mut ipam, &back, NOW + 20), ("10.0.0.0".into(), How::Reclaim));
    let info = ipam.addr(num("10.0.0.0")).expect("allocated again");
    assert!(info.held.is_none());
    assert_eq!(info.user_keys().collect::<Vec<_>>(), [&web.key]);
    assert!(ipam.expired_holds(i64::MAX).is_empty(), "no hold left behind");
}

#[test]
fn the_same_key_reclaims_its_held_address_by_requesting_it() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web").want(&["10.0.0.42"]);
    alloc_one(&mut ipam, &web, NOW);
    release(&mut ipam, &web, NOW);
    assert_eq!(alloc_one(&mut ipam, &web, NOW + 1), ("10.0.0.42".into(), How::Reclaim));
}

#[test]
fn an_expired_hold_is_recycled_only_when_no_never_used_address_is_left() {
    let mut ipam = ipam(&[spec("tiny", &["10.0.0.0/30"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    release(&mut ipam, &web, NOW);
    for name in ["a", "b", "c"] {
        assert_eq!(alloc_one(&mut ipam, &svc("prod", "default", name), NOW + 1).1, How::New);
    }
    // Before the hold ends the pool is exhausted for others.
    assert!(conflict(alloc(&mut ipam, &svc("prod", "default", "d"), NOW + 599)).contains("pool exhausted"));
    assert_eq!(ipam.expired_holds(NOW + 599), Vec::<u128>::new());
    assert_eq!(ipam.expired_holds(NOW + 600), vec![num("10.0.0.0")]);
    // From the instant it ends, anyone may take it.
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "d"), NOW + 600),
        ("10.0.0.0".into(), How::Recycle)
    );
    let info = ipam.addr(num("10.0.0.0")).expect("recycled");
    assert!(info.held.is_none());
    assert_eq!(info.user_keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["d"]);
    // The former holder has lost its claim.
    assert!(conflict(alloc(&mut ipam, &web, NOW + 601)).contains("pool exhausted"));
}

#[test]
fn a_never_used_address_is_preferred_over_an_expired_hold() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    release(&mut ipam, &web, NOW);
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "a"), NOW + 10_000),
        ("10.0.0.1".into(), How::New)
    );
    // Asked for by address, an expired hold is given at once.
    let d = alloc(&mut ipam, &svc("dev", "default", "b").want(&["10.0.0.0"]), NOW + 10_000).expect("recycle");
    assert_eq!(d.assign[0].how, How::Recycle);
    assert_eq!(
        ipam.addr(num("10.0.0.0")).map(|a| &*a.cluster),
        Some("dev"),
        "now the new cluster's"
    );
}

#[test]
fn a_pool_without_hold_period_frees_released_addresses_at_once() {
    let mut ipam = ipam(&[with(spec("p", &["10.0.0.0/24"]), |s| s.hold_seconds = 0)]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    assert_eq!(
        release(&mut ipam, &web, NOW),
        vec![Release {
            ip: num("10.0.0.0"),
            outcome: Outcome::Freed
        }]
    );
    assert!(ipam.is_empty());
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "api"), NOW),
        ("10.0.0.0".into(), How::New)
    );
}

#[test]
fn forgetting_expired_holds_frees_their_addresses() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    alloc_one(&mut ipam, &svc("prod", "default", "api"), NOW);
    release(&mut ipam, &web, NOW);
    let expired = ipam.expired_holds(NOW + 600);
    assert_eq!(expired, vec![num("10.0.0.0")]);
    ipam.forget(&expired);
    assert_eq!(ipam.len(), 1);
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "x"), NOW + 600),
        ("10.0.0.0".into(), How::New)
    );
    // The former holder simply gets a free address now.
    assert_eq!(alloc_one(&mut ipam, &web, NOW + 600), ("10.0.0.2".into(), How::New));
}

// ---- dual-stack and IPv6 ----

#[test]
fn dual_stack_gets_one_address_of_each_family_in_order() {
    let mut ipam = ipam(&[spec("v4", &["10.0.0.0/24"]), spec("v6", &["2001:db8::/64"])]);
    let web = svc("prod", "default", "web").families(&[V4, V6]);
    let d = alloc(&mut ipam, &web, NOW).expect("dual");
    let got: Vec<(String, &str, How)> = d.assign.iter().map(|a| (shown(a.ip), a.pool.as_str(), a.how)).collect();
    assert_eq!(
        got,
        [
            ("10.0.0.0".into(), "v4", How::New),
            ("2001:db8::".into(), "v6", How::New)
        ]
    );
    let again = ipam.decide(&web.req(), NOW).expect("again");
    assert!(again.keeps_everything(), "{again:?}");
    assert_eq!(
        again.assign.iter().map(|a| shown(a.ip)).collect::<Vec<_>>(),
        ["10.0.0.0", "2001:db8::"]
    );
    let v6_first = svc("prod", "default", "api").families(&[V6, V4]);
    let d = alloc(&mut ipam, &v6_first, NOW).expect("dual");
    assert_eq!(
        d.assign.iter().map(|a| shown(a.ip)).collect::<Vec<_>>(),
        ["2001:db8::1", "10.0.0.1"]
    );
    // The addresses are sorted by number, IPv4 first, whatever the order asked.
    assert_eq!(
        ipam.addresses_of(&v6_first.key),
        vec![num("10.0.0.1"), num("2001:db8::1")]
    ); // A single-stack Service turning dual-stack keeps its address and gains one.
    let single = svc("prod", "default", "db");
    alloc_one(&mut ipam, &single, NOW);
    let d = alloc(&mut ipam, &single.clone().families(&[V4, V6]), NOW).expect("dual");
    let got: Vec<(String, How)> = d.assign.iter().map(|a| (shown(a.ip), a.how)).collect();
    assert_eq!(got, [("10.0.0.2".into(), How::Keep), ("2001:db8::2".into(), How::New)]);
    assert!(d.release.is_empty());
}

#[test]
fn dual_stack_fails_whole_when_one_family_cannot_be_served() {
    let mut ipam = ipam(&[spec("v4", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web").families(&[V4, V6]);
    assert!(unprocessable(alloc(&mut ipam, &web, NOW)).contains("IPv6"));
    assert!(ipam.is_empty(), "nothing was taken for the IPv4 half");
}

#[test]
fn ipv6_slash_64_pool_allocates_quickly_without_enumerating() {
    let mut ipam = ipam(&[with(spec("v6", &["2001:db8:1::/64"]), |s| s.hold_seconds = 0)]);
    assert_eq!(ipam.pool("v6").map(PoolDef::capacity), Some(1u128 << 64));
    let start = Instant::now();
    let mut last = 0;
    for i in 0..2_000 {
        let ask = svc("prod", "default", &format!("s{i}")).families(&[V6]);
        let d = alloc(&mut ipam, &ask, NOW).expect("v6 allocation");
        assert!(d.assign[0].ip > last || i == 0, "addresses ascend and never repeat");
        last = d.assign[0].ip;
    }
    let took = start.elapsed();
    assert_eq!(shown(last), "2001:db8:1::7cf");
    assert_eq!(ipam.used.runs(), 1, "2000 consecutive addresses are one run");
    // Generous even for an unoptimised build: each allocation is a few map look-ups.
    assert!(
        took < Duration::from_secs(10),
        "2000 allocations in a /64 took {took:?}"
    );
    // A hole left by a release is the next address handed out.
    release(&mut ipam, &svc("prod", "default", "s7").families(&[V6]), NOW);
    assert_eq!(ipam.used.runs(), 2);
    let d = alloc(&mut ipam, &svc("prod", "default", "new").families(&[V6]), NOW).expect("fills the hole");
    assert_eq!(shown(d.assign[0].ip), "2001:db8:1::7");
    assert_eq!(ipam.used.runs(), 1);
}

#[test]
fn an_address_near_the_top_of_a_large_ipv6_pool_can_be_requested() {
    let mut ipam = ipam(&[spec("v6", &["2001:db8::/48"])]);
    let top = "2001:db8:0:ffff:ffff:ffff:ffff:ffff";
    let ask = svc("prod", "default", "web").families(&[V6]).want(&[top]);
    assert_eq!(alloc_one(&mut ipam, &ask, NOW), (top.into(), How::New));
    assert_eq!(ipam.used.runs(), 1);
    assert_eq!(
        alloc_one(&mut ipam, &svc("prod", "default", "x").families(&[V6]), NOW).0,
        "2001:db8::"
    );
}

// ---- reserving addresses found in status (sync) ----

#[test]
fn reserving_addresses_from_status_follows_the_same_rules() {
    let mut v4 = ipam(&[spec("p", &["10.0.0.0/24"])]);
    let web = ServiceKey::new("prod", "default", "web");
    let a = v4
        .decide_reserve(&web, "u1", ip("10.0.0.7"), None, NOW)
        .expect("free")
        .expect("new");
    assert_eq!(
        (shown(a.ip), a.pool.as_str(), a.how),
        ("10.0.0.7".into(), "p", How::New)
    );
    let ask = svc("prod", "default", "web");
    v4.apply(
        &ask.req(),
        &Decision {
            assign: vec![a],
            release: vec![],
        },
    );
    assert_eq!(
        v4.decide_reserve(&web, "u1", ip("10.0.0.7"), None, NOW),
        Ok(None),
        "already its own"
    );
    let m = v4
        .decide_reserve(&web, "u1", ip("10.0.0.8"), None, NOW)
        .expect_err("holds another");
    assert!(
        matches!(&m, IpamError::Conflict(m) if m.contains("holds 10.0.0.7 for Service prod/default/web")),
        "{m:?}"
    );
    let other = ServiceKey::new("prod", "default", "api");
    let m = v4
        .decide_reserve(&other, "u2", ip("10.0.0.7"), None, NOW)
        .expect_err("taken");
    assert!(
        matches!(&m, IpamError::Conflict(m) if m.contains("already allocated to Service prod/default/web")),
        "{m:?}"
    );
    let m = v4
        .decide_reserve(&other, "u2", ip("192.0.2.1"), None, NOW)
        .expect_err("outside");
    assert!(
        matches!(&m, IpamError::Unprocessable(m) if m.contains("outside every pool")),
        "{m:?}"
    );
    // An IPv6 address for a Service holding only IPv4 is fine.
    let mut dual = ipam(&[spec("p", &["10.0.0.0/24", "2001:db8::/64"])]);
    dual.apply(
        &ask.req(),
        &Decision {
            assign: vec![Assign {
                ip: num("10.0.0.7"),
                pool: "p".into(),
                how: How::New,
            }],
            release: vec![],
        },
    );
    assert!(
        dual.decide_reserve(&web, "u1", ip("2001:db8::7"), None, NOW)
            .expect("v6")
            .is_some()
    );
}

// ---- pool checks ----

#[derive(Debug, Clone, Copy)]
enum Edit {
    Create(&'static [&'static str]),
    Replace(&'static [&'static str]),
    Delete,
}

#[test]
fn pool_edits_are_refused_when_they_overlap_or_strand_addresses() {
    struct PoolCase {
        name: &'static str,
        edit: Edit,
        now: i64,
        /// `None` for success, else parts of the conflict message.
        conflict: Option<&'static [&'static str]>,
    }
    // Pool "a" = 10.0.0.0/24 with 10.0.0.0 allocated to prod/default/web, 10.0.0.1 held for
    // prod/default/old until NOW+600, 10.0.0.2 held until NOW (expired at NOW);
    // pool "six" = 2001:db8::/64, empty.
    let setup = || {
        let mut ipam = ipam(&[spec("a", &["10.0.0.0/24"]), spec("six", &["2001:db8::/64"])]);
        alloc_one(&mut ipam, &svc("prod", "default", "web"), NOW - 600);
        let old = svc("prod", "default", "old");
        alloc_one(&mut ipam, &old, NOW - 600);
        let gone = svc("prod", "default", "gone");
        alloc_one(&mut ipam, &gone, NOW - 600);
        release(&mut ipam, &gone, NOW - 600);
        release(&mut ipam, &old, NOW);
        ipam
    };
    let cases = [
        PoolCase {
            name: "a disjoint new pool",
            edit: Edit::Create(&["10.0.1.0/24"]),
            now: NOW,
            conflict: None,
        },
        PoolCase {
            name: "a new pool inside another",
            edit: Edit::Create(&["10.0.0.128/25"]),
            now: NOW,
            conflict: Some(&["overlaps", "of pool 'a'"]),
        },
        PoolCase {
            name: "a new pool touching another by one address",
            edit: Edit::Create(&["10.0.0.255-10.0.1.9"]),
            now: NOW,
            conflict: Some(&["'10.0.0.255-10.0.1.9' overlaps range '10.0.0.0-10.0.0.255' of pool 'a'"]),
        },
        PoolCase {
            name: "a new IPv6 pool overlapping",
            edit: Edit::Create(&["2001:db8::1:0/112"]),
            now: NOW,
            conflict: Some(&["pool 'six'"]),
        },
        PoolCase {
            name: "growing a pool over its own ranges",
            edit: Edit::Replace(&["10.0.0.0/23"]),
            now: NOW,
            conflict: None,
        },
        PoolCase {
            name: "growing a pool into another",
            edit: Edit::Replace(&["10.0.0.0/24", "2001:db8::/56"]),
            now: NOW,
            conflict: Some(&["pool 'six'"]),
        },
        PoolCase {
            name: "shrinking past free addresses only",
            edit: Edit::Replace(&["10.0.0.0/30"]),
            now: NOW,
            conflict: None,
        },
        PoolCase {
            name: "shrinking past an allocated address",
            edit: Edit::Replace(&["10.0.0.1-10.0.0.9"]),
            now: NOW,
            conflict: Some(&[
                "leave out addresses still in use",
                "10.0.0.0 (Service prod/default/web)",
            ]),
        },
        PoolCase {
            name: "shrinking past a held address",
            edit: Edit::Replace(&["10.0.0.0", "10.0.0.2-10.0.0.9"]),
            now: NOW + 599,
            conflict: Some(&["10.0.0.1 (held for Service prod/default/old)"]),
        },
        PoolCase {
            name: "shrinking past an expired hold",
            edit: Edit::Replace(&["10.0.0.0-10.0.0.1"]),
            now: NOW,
            conflict: None,
        },
        PoolCase {
            name: "shrinking past a hold once it expired",
            edit: Edit::Replace(&["10.0.0.0"]),
            now: NOW + 600,
            conflict: None,
        },
        PoolCase {
            name: "deleting a pool with an allocation and a hold",
            edit: Edit::Delete,
            now: NOW,
            conflict: Some(&[
                "pool 'a' still holds 2 address(es)",
                "10.0.0.0 (Service prod/default/web)",
                "10.0.0.1 (held",
            ]),
        },
    ];
    for c in cases {
        let ipam = setup();
        let got = match c.edit {
            Edit::Create(ranges) => ipam.check_pool(&def(&spec("new", ranges)), None, c.now),
            Edit::Replace(ranges) => ipam.check_pool(&def(&spec("a", ranges)), Some("a"), c.now),
            Edit::Delete => ipam.check_pool_delete("a", c.now),
        };
        match (c.conflict, got) {
            (None, Ok(())) => {}
            (Some(parts), Err(IpamError::Conflict(m))) => {
                for part in parts {
                    assert!(m.contains(part), "case '{}': message {m:?} lacks {part:?}", c.name);
                }
            }
            (want, got) => panic!(
                "case '{}' ({:?}): expected conflict {want:?}, got {got:?}",
                c.name, c.edit
            ),
        }
    }
}

#[test]
fn a_pool_may_be_deleted_once_only_expired_holds_remain() {
    let mut ipam = ipam(&[spec("a", &["10.0.0.0/24"])]);
    let web = svc("prod", "default", "web");
    alloc_one(&mut ipam, &web, NOW);
    assert!(ipam.check_pool_delete("a", NOW).is_err());
    release(&mut ipam, &web, NOW);
    assert!(ipam.check_pool_delete("a", NOW + 599).is_err(), "held");
    assert_eq!(ipam.check_pool_delete("a", NOW + 600), Ok(()));
    assert_eq!(ipam.expired_in_pool("a", NOW + 600), vec![num("10.0.0.0")]);
    assert_eq!(ipam.expired_in_pool("other", NOW + 600), Vec::<u128>::new());
    assert!(ipam.check_pool_delete("missing", NOW).is_ok(), "nothing to strand");
}

#[test]
fn a_stranding_message_lists_ten_addresses_and_counts_the_rest() {
    let mut ipam = ipam(&[spec("a", &["10.0.0.0/24"])]);
    for i in 0..12 {
        alloc_one(&mut ipam, &svc("prod", "default", &format!("s{i:02}")), NOW);
    }
    let m = match ipam.check_pool_delete("a", NOW) {
        Err(IpamError::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert!(
        m.contains("12 address(es)") && m.contains("10.0.0.9 (") && m.contains("and 2 more"),
        "{m}"
    );
    assert!(!m.contains("10.0.0.10 ("), "{m}");
}

#[test]
fn sharing_does_not_bypass_a_pools_namespace_restriction() {
    let mut ipam = ipam(&[
        with(spec("team-a", &["10.0.0.0/24"]), |s| {
            s.namespaces = vec!["team-a".into()];
            s.priority = 10;
        }),
        spec("open", &["10.1.0.0/24"]),
    ]);
    alloc_one(&mut ipam, &svc("prod", "team-a", "web").share("k", &[80]), NOW);
    // Another namespace with the same key gets an address of a pool it may use.
    let other = svc("prod", "team-b", "tls").share("k", &[443]);
    assert_eq!(alloc_one(&mut ipam, &other, NOW), ("10.1.0.0".into(), How::New));
    // The same namespace still shares.
    let same = svc("prod", "team-a", "tls").share("k", &[443]);
    assert_eq!(alloc_one(&mut ipam, &same, NOW), ("10.0.0.0".into(), How::Share));
}

#[test]
fn an_ipv4_mapped_requested_address_is_refused() {
    let mut ipam = ipam(&[spec("p", &["10.0.0.0/24", "2001:db8::/64"])]);
    let ask = svc("prod", "default", "web").families(&[V6]).want(&["::ffff:10.0.0.5"]);
    match alloc(&mut ipam, &ask, NOW) {
        Err(IpamError::Invalid { field, message }) => {
            assert_eq!(field, "requested_ips[0]");
            assert!(message.contains("write it as 10.0.0.5"), "{message}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    let key = ServiceKey::new("prod", "default", "web");
    let reserve = ipam.decide_reserve(&key, "u", ip("::ffff:10.0.0.5"), None, NOW);
    assert!(matches!(reserve, Err(IpamError::Invalid { .. })), "{reserve:?}");
    assert!(ipam.is_empty());
}
