//! The checker's schedule (one probe per target per interval, damping, forgetting) and its
//! compact table, against servers on loopback. The probes' verdicts on up, refusing, slow,
//! HTTP 503 and flapping servers are tested across network namespaces in `tests/health.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A tiny HTTP server answering every request with `status()` after `delay`, counting requests.
async fn http_server(status: Arc<AtomicUsize>, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (status, hits) = (status.clone(), h.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let code = status.load(Ordering::SeqCst);
                let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                let body = format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    (port, hits)
}

#[tokio::test]
async fn a_non_http_answer_is_a_failure() {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9\r\n").await;
        }
    });
    let (o, _) = probe::probe(
        SocketAddr::new(LOCAL, port),
        &ProbeKind::Healthz,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(o, Outcome::Failed("the answer is not HTTP".into()));
}

fn fast() -> Settings {
    Settings {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        thresholds: Thresholds { rise: 2, fall: 2 },
        jitter_percent: 0,
    }
}

async fn wait_for(checker: &Checker, target: &Target, health: Health) -> TargetState {
    for _ in 0..200 {
        if let Some(s) = checker.state(target)
            && s.health == health
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{target} did not become {health:?}: {:?}", checker.state(target));
}

#[tokio::test]
async fn the_checker_drains_and_restores_a_backend_with_damping() {
    let status = Arc::new(AtomicUsize::new(200));
    let (port, _) = http_server(status.clone(), Duration::ZERO).await;
    let checker = Checker::new(16);
    let task = tokio::spawn(checker.clone().run());
    let mut changes = checker.subscribe();
    let target = Target::healthz(LOCAL, port);
    checker.set_targets(HashMap::from([(target.clone(), fast())]));

    assert!(checker.serves(&target), "unknown serves");
    wait_for(&checker, &target, Health::Up).await;
    assert!(
        !changes.has_changed().expect("sender alive") && checker.take_changed().is_empty(),
        "unknown to up changes nothing that is forwarded"
    );
    status.store(503, Ordering::SeqCst);
    let down = wait_for(&checker, &target, Health::Down).await;
    assert!(!checker.serves(&target));
    assert_eq!(down.last, Some(Outcome::Unhealthy("HTTP 503".into())));
    assert!(
        changes.has_changed().expect("sender alive"),
        "a health change is signalled"
    );
    assert_eq!(checker.take_changed(), std::slice::from_ref(&target), "and recorded");
    assert!(checker.take_changed().is_empty(), "once");
    changes.borrow_and_update();
    status.store(200, Ordering::SeqCst);
    wait_for(&checker, &target, Health::Up).await;
    assert!(changes.has_changed().expect("sender alive"));
    assert_eq!(checker.take_changed(), std::slice::from_ref(&target));
    task.abort();
}

#[tokio::test]
async fn each_target_is_probed_once_per_interval_and_removed_targets_stop() {
    let (port, hits) = http_server(Arc::new(AtomicUsize::new(200)), Duration::ZERO).await;
    let checker = Checker::new(8);
    let task = tokio::spawn(checker.clone().run());
    let target = Target::healthz(LOCAL, port);
    let settings = Settings {
        interval: Duration::from_millis(100),
        ..fast()
    };
    // However many Services use the target, it is one entry.
    checker.set_targets(HashMap::from([(target.clone(), settings)]));
    checker.set_targets(HashMap::from([(target.clone(), settings)]));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let n = hits.load(Ordering::SeqCst);
    // One entry is probed about 10 times in 1 s at 100 ms, never more than 11 (the first probe
    // lands within the first interval); a duplicate entry would make it about 20. A loaded
    // machine may probe less often, never more.
    assert!((2..=11).contains(&n), "about 10 probes in 1 s at 100 ms, got {n}");
    checker.set_targets(HashMap::new());
    assert!(checker.state(&target).is_none());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hits.load(Ordering::SeqCst), after, "a removed target is not probed");
    task.abort();
}

#[test]
fn each_interval_is_spread_by_the_targets_own_jitter() {
    let ms = Duration::from_millis;
    let with = |jitter_percent: u8| Settings {
        interval: ms(1000),
        jitter_percent,
        ..Settings::default()
    };
    // (jitter %, the random draw in [0, 1), the time to the next probe)
    let cases: &[(u8, f64, Duration)] = &[
        (0, 0.0, ms(1000)),
        (0, 0.99, ms(1000)),
        (10, 0.0, ms(900)),
        (10, 0.5, ms(1000)),
        (10, 0.75, ms(1050)),
        (50, 0.0, ms(500)),
        (50, 0.25, ms(750)),
        // Past the maximum (only reachable by building `Settings` by hand): held at 50 %.
        (90, 0.0, ms(500)),
    ];
    for (jitter, unit, want) in cases {
        assert_eq!(with(*jitter).next_after(*unit), *want, "jitter {jitter} %, draw {unit}");
    }
    assert_eq!(Settings::default().jitter_percent, 10, "the documented default");
    let o = |jitter_percent| edgelb_api::HealthOverrides {
        jitter_percent,
        ..edgelb_api::HealthOverrides::default()
    };
    assert_eq!(
        Settings::default().with(&o(None)).jitter_percent,
        10,
        "unset keeps the default"
    );
    assert_eq!(Settings::default().with(&o(Some(0))).jitter_percent, 0);
    assert_eq!(Settings::default().with(&o(Some(30))).jitter_percent, 30);
}

#[test]
fn targets_display_as_urls() {
    assert_eq!(Target::tcp(LOCAL, 30080).to_string(), "tcp://127.0.0.1:30080");
    assert_eq!(
        Target::healthz("fd00::1".parse().expect("ip"), 31000).to_string(),
        "http://[fd00::1]:31000/healthz"
    );
}

/// A kube-proxy-like node health server: `GET /healthz` answers 200 while `healthy`, 503 (as
/// kube-proxy does for a node being deleted or with stale rules) otherwise; any other path 404,
/// so a probe of the wrong path fails the test. Counts `/healthz` requests.
async fn kube_proxy_healthz(healthy: Arc<AtomicBool>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let answer: &[u8] = if !request.starts_with("GET /healthz HTTP/1.1\r\n") {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            } else {
                h.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"lastUpdated\": \"x\"}"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{}"
                }
            };
            let _ = s.write_all(answer).await;
        }
    });
    (port, hits)
}

#[tokio::test]
async fn a_node_whose_kube_proxy_answers_503_is_down_until_it_answers_200_again() {
    let healthy = Arc::new(AtomicBool::new(true));
    let (port, hits) = kube_proxy_healthz(healthy.clone()).await;
    let node = node_target(LOCAL, port);
    assert_eq!(node.to_string(), format!("http://127.0.0.1:{port}/healthz"));
    let (o, _) = probe::probe(SocketAddr::new(LOCAL, port), &node.kind, Duration::from_secs(1)).await;
    assert_eq!(o, Outcome::Up, "GET /healthz on the node port");

    let checker = Checker::new(4);
    let task = tokio::spawn(checker.clone().run());
    checker.set_targets(HashMap::from([(node.clone(), fast())]));
    wait_for(&checker, &node, Health::Up).await;
    healthy.store(false, Ordering::SeqCst);
    let down = wait_for(&checker, &node, Health::Down).await;
    assert_eq!(down.last, Some(Outcome::Unhealthy("HTTP 503".into())));
    assert!(!checker.serves(&node));
    healthy.store(true, Ordering::SeqCst);
    wait_for(&checker, &node, Health::Up).await;
    assert!(hits.load(Ordering::SeqCst) >= 6, "every probe asked for /healthz");
    task.abort();
}

#[test]
fn a_real_server_is_down_since_the_first_of_its_targets_that_is_down() {
    use std::time::SystemTime;
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let state = |health: Health, since: u64| TargetState {
        health,
        ..TargetState::new(at(since))
    };
    let own = Target::tcp(LOCAL, 30080);
    let node = node_target(LOCAL, KUBE_PROXY_HEALTHZ_PORT);
    // (case, own target's (health, since), node target's, down since)
    type S = Option<(Health, u64)>;
    let cases: &[(&str, S, S, Option<u64>)] = &[
        ("neither probed", None, None, None),
        ("both up", Some((Health::Up, 10)), Some((Health::Up, 20)), None),
        (
            "unknown serves",
            Some((Health::Unknown, 10)),
            Some((Health::Unknown, 20)),
            None,
        ),
        (
            "own probe down",
            Some((Health::Down, 10)),
            Some((Health::Up, 5)),
            Some(10),
        ),
        ("node down", Some((Health::Up, 10)), Some((Health::Down, 30)), Some(30)),
        ("node down, own not probed", None, Some((Health::Down, 30)), Some(30)),
        (
            "both down: the earlier",
            Some((Health::Down, 40)),
            Some((Health::Down, 30)),
            Some(30),
        ),
        (
            "both down, own first",
            Some((Health::Down, 20)),
            Some((Health::Down, 30)),
            Some(20),
        ),
    ];
    for (name, own_state, node_state, want) in cases {
        let mut states = HashMap::new();
        if let Some((h, s)) = own_state {
            states.insert(own.clone(), state(*h, *s));
        }
        if let Some((h, s)) = node_state {
            states.insert(node.clone(), state(*h, *s));
        }
        assert_eq!(
            down_since([&own, &node], |t| states.get(t).cloned()),
            want.map(at),
            "{name}"
        );
    }
    assert_eq!(down_since(std::iter::empty(), |_| None), None, "no targets: never down");
}

// The compact per-target store (table.rs).

use std::time::SystemTime;

use table::{Interner, Slot, Table};

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn outcome(c: char) -> Outcome {
    match c {
        '+' => Outcome::Up,
        '5' => Outcome::Unhealthy("HTTP 503".into()),
        't' => Outcome::Failed("no answer within 1000 ms".into()),
        _ => Outcome::Failed("connect: Connection refused (os error 111)".into()),
    }
}

#[test]
fn a_target_and_its_slot_stay_small() {
    assert_eq!(std::mem::size_of::<Target>(), 20);
    assert!(std::mem::size_of::<Slot>() <= 60, "{}", std::mem::size_of::<Slot>());
}

#[test]
fn the_compact_state_decides_as_observe_does() {
    let probes = [
        "++",
        "---",
        "++-+",
        "++--+",
        "++---",
        "++555",
        "++---+-",
        "++---++",
        "++-+-+-+-+",
        "---+-+-+",
        "5t-5t-+5+",
        "+-+--++---+++----",
        "",
    ];
    for rise in 0..4 {
        for fall in 0..4 {
            let t = Thresholds { rise, fall };
            for p in probes {
                let mut want = TargetState::new(at(0));
                let mut reasons = Interner::default();
                let mut slot = Slot::new(Target::tcp(LOCAL, 1), 0, at(0));
                assert_eq!(slot.view(&reasons), want);
                for (n, c) in p.chars().enumerate() {
                    let now = at(n as u64 * 1500 + 7);
                    // Whole microseconds: the slot keeps latency to the microsecond.
                    let latency = Duration::from_micros(n as u64 * 250 + 3);
                    let w = state::observe(&mut want, outcome(c), latency, t, now);
                    let g = slot.observe(outcome(c), latency, t, now, &mut reasons);
                    assert_eq!(g, w, "{t:?} '{p}' probe {n}");
                    assert_eq!(slot.view(&reasons), want, "{t:?} '{p}' probe {n}");
                    assert_eq!(slot.serves(), want.serves());
                }
            }
        }
    }
}

#[test]
fn times_and_latencies_survive_the_compact_form() {
    let mut reasons = Interner::default();
    let born = SystemTime::UNIX_EPOCH + Duration::new(1_750_000_000, 123_456_789);
    let mut slot = Slot::new(Target::tcp(LOCAL, 1), 0, born);
    assert_eq!(slot.view(&reasons).since, born, "nanoseconds kept");
    let now = born + Duration::new(5, 1);
    let t = Thresholds { rise: 1, fall: 1 };
    slot.observe(Outcome::Up, Duration::from_nanos(1_234_567), t, now, &mut reasons);
    let v = slot.view(&reasons);
    assert_eq!((v.since, v.last_probe), (now, Some(now)));
    assert_eq!(v.last_latency, Some(Duration::from_micros(1234)), "to the microsecond");
    slot.observe(Outcome::Up, Duration::from_secs(10_000), t, now, &mut reasons);
    assert_eq!(
        slot.view(&reasons).last_latency,
        Some(Duration::from_micros(u64::from(u32::MAX))),
        "saturates past 71 minutes"
    );
}

#[test]
fn reasons_are_stored_once_and_forgotten_with_their_last_user() {
    let mut table = Table::default();
    let t = Thresholds { rise: 1, fall: 1 };
    let settings = Settings {
        thresholds: t,
        ..fast()
    };
    let id = table.settings.acquire(settings);
    let (a, ga) = table.insert(Slot::new(Target::tcp(LOCAL, 1), id, at(0)));
    let id = table.settings.acquire(settings);
    let (b, gb) = table.insert(Slot::new(Target::tcp(LOCAL, 2), id, at(0)));
    let refused = || Outcome::Failed("refused".into());
    table.observe((a, ga), refused(), Duration::ZERO, at(1));
    table.observe((b, gb), refused(), Duration::ZERO, at(1));
    table.observe((a, ga), refused(), Duration::ZERO, at(2));
    assert_eq!(table.reasons.len(), 1);
    assert_eq!(table.reason(a), "refused");
    table.observe((a, ga), Outcome::Unhealthy("HTTP 503".into()), Duration::ZERO, at(3));
    assert_eq!(table.reasons.len(), 2);
    table.observe((a, ga), Outcome::Up, Duration::ZERO, at(4));
    assert_eq!(table.reason(a), "ok");
    assert_eq!(table.reasons.len(), 1, "only b's reason is left");
    assert!(table.remove(&Target::tcp(LOCAL, 2)));
    assert_eq!(table.reasons.len(), 0, "a removed target releases its reason");
    assert_eq!(table.settings.len(), 1, "and its settings");
}

#[test]
fn settings_are_stored_once_per_distinct_value() {
    let checker = Checker::new(1);
    let slow = Settings {
        interval: Duration::from_secs(10),
        ..Settings::default()
    };
    let strict = Settings {
        thresholds: Thresholds { rise: 5, fall: 1 },
        ..Settings::default()
    };
    let mut wanted = HashMap::new();
    for p in 0..3000u16 {
        let s = [Settings::default(), slow, strict][usize::from(p % 3)];
        wanted.insert(Target::tcp(LOCAL, 20_000 + p), s);
    }
    checker.set_targets(wanted.clone());
    assert_eq!(checker.lock().targets.settings.len(), 3);
    assert_eq!(checker.lock().targets.len(), 3000);
    // Each target reads back its own settings.
    for (t, s) in &wanted {
        let sh = checker.lock();
        let slot = sh.targets.get(t).expect("kept");
        assert_eq!(sh.targets.settings.get(slot.settings), s);
    }
    // Every `slow` target moves to the defaults: the value goes with its last user.
    checker.update_targets(
        wanted
            .iter()
            .filter(|(_, s)| **s == slow)
            .map(|(t, _)| (t.clone(), Some(Settings::default()))),
    );
    assert_eq!(checker.lock().targets.settings.len(), 2);
    checker.set_targets(HashMap::new());
    assert_eq!(checker.lock().targets.settings.len(), 0);
    assert_eq!(checker.lock().targets.len(), 0);
}

#[test]
fn only_a_new_interval_reschedules_a_kept_target() {
    let checker = Checker::new(1);
    let target = Target::tcp(LOCAL, 1);
    checker.update_targets([(target.clone(), Some(fast()))]);
    let first = std::mem::take(&mut checker.lock().added);
    assert_eq!(first.len(), 1);
    let stricter = Settings {
        thresholds: Thresholds { rise: 9, fall: 9 },
        ..fast()
    };
    checker.update_targets([(target.clone(), Some(stricter))]);
    assert!(checker.lock().added.is_empty(), "same interval, same schedule entry");
    let slower = Settings {
        interval: Duration::from_secs(1),
        ..fast()
    };
    checker.update_targets([(target.clone(), Some(slower))]);
    let again = std::mem::take(&mut checker.lock().added);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, first[0].0, "same slot");
    assert_ne!(
        again[0].1, first[0].1,
        "a new generation retires the old schedule entry"
    );
}

#[test]
fn a_removed_then_re_added_target_starts_afresh_and_old_probes_are_ignored() {
    let checker = Checker::new(1);
    let t = Thresholds { rise: 1, fall: 1 };
    let settings = Settings {
        thresholds: t,
        ..fast()
    };
    let target = Target::tcp(LOCAL, 30_080);
    checker.update_targets([(target.clone(), Some(settings))]);
    let old = checker.lock().added[0];
    checker.record(
        &target,
        old,
        Outcome::Failed("refused".into()),
        Duration::ZERO,
        Duration::ZERO,
    );
    assert_eq!(checker.state(&target).map(|s| s.health), Some(Health::Down));

    checker.update_targets([(target.clone(), None)]);
    assert_eq!(checker.state(&target), None);
    assert!(checker.serves(&target), "a target not probed serves");
    // Another target takes the freed slot; a probe of the removed one still in flight lands.
    let other = Target::healthz(LOCAL, 30_081);
    checker.update_targets([(other.clone(), Some(settings))]);
    checker.record(
        &target,
        old,
        Outcome::Failed("late".into()),
        Duration::ZERO,
        Duration::ZERO,
    );
    let s = checker.state(&other).expect("tracked");
    assert_eq!(
        (s.health, s.last),
        (Health::Unknown, None),
        "not the removed target's probe"
    );

    checker.update_targets([(target.clone(), Some(settings))]);
    let s = checker.state(&target).expect("tracked again");
    assert_eq!(
        (s.health, s.failures, s.last),
        (Health::Unknown, 0, None),
        "starts afresh"
    );
    checker.record(&target, old, Outcome::Up, Duration::ZERO, Duration::ZERO);
    assert_eq!(checker.state(&target).map(|s| s.health), Some(Health::Unknown), "stale");
    let added = checker.lock().added.clone();
    let new = *added.last().expect("scheduled");
    checker.record(&target, new, Outcome::Up, Duration::ZERO, Duration::ZERO);
    assert_eq!(checker.state(&target).map(|s| s.health), Some(Health::Up));
    assert_eq!(checker.snapshot().len(), 2);
    assert_eq!(
        checker.lock().targets.reasons.len(),
        0,
        "the removed target's reason went with it"
    );
}

#[test]
fn the_index_finds_what_a_hashmap_finds() {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut table = Table::default();
    let mut want: HashMap<Target, u32> = HashMap::new();
    let target = |n: u32| {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n / 7));
        if n.is_multiple_of(2) {
            Target::tcp(addr, (n % 7) as u16)
        } else {
            Target::healthz(addr, (n % 7) as u16)
        }
    };
    for round in 0..20_000 {
        // Grows for a while, then mostly shrinks, so the index resizes both ways.
        let n = rng.random_range(0..3000);
        let t = target(n);
        let add = if round < 12_000 {
            rng.random_bool(0.7)
        } else {
            rng.random_bool(0.2)
        };
        if add {
            want.entry(t.clone())
                .or_insert_with(|| table.insert(Slot::new(t, 0, at(0))).0);
        } else {
            assert_eq!(table.remove(&t), want.remove(&t).is_some(), "{t}");
        }
        let probe = target(rng.random_range(0..3000));
        assert_eq!(table.find(&probe), want.get(&probe).copied(), "{probe}");
        assert_eq!(table.len(), want.len());
    }
    let mut live: Vec<u32> = table.live().collect();
    live.sort_unstable();
    let mut slots: Vec<u32> = want.values().copied().collect();
    slots.sort_unstable();
    assert_eq!(live, slots);
    for (t, i) in &want {
        assert_eq!(table.get(t).map(|s| &s.target), Some(t));
        assert_eq!(table.find(t), Some(*i));
    }
}

#[test]
fn the_schedule_grows_by_an_eighth_and_shrinks_when_emptied() {
    let mut heap: std::collections::BinaryHeap<u64> = std::collections::BinaryHeap::new();
    fit(&mut heap, 100_000);
    assert_eq!(heap.capacity(), 100_000, "a full set at once is allocated exactly");
    heap.extend(0..100_000);
    fit(&mut heap, 10);
    assert!(
        heap.capacity() >= 100_010 && heap.capacity() <= 112_500,
        "{}",
        heap.capacity()
    );
    heap.clear();
    heap.extend(0..100);
    fit(&mut heap, 0);
    assert!(heap.capacity() < 1024, "{}", heap.capacity());
}
