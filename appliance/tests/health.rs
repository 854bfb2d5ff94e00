//! Health probes against real servers in network namespaces on the host. A prober namespace
//! and a node namespace joined by a veth pair: the node's servers are up, refusing, slow,
//! answering 503 (kube-proxy's "no local endpoint") or flapping between 200 and 503, and each
//! probe tells them apart; a flapping node does not flap the checker's decision. A node whose
//! packets are silently dropped (blackholed) times out instead of hanging the checker, and the
//! checker drains it after `fall` probes and restores it after `rise`.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::netns::{Netns, veth};
use edgelb::health::{Checker, Health, Outcome, ProbeKind, Settings, Target, Thresholds, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a node's server answers each request.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Unavailable,
    /// 200, after this long.
    Slow(Duration),
    /// 503 and 200 by turns, starting with 503: never two failures in a row.
    Flapping,
}

/// Serves `answer` on `listener` (bound in the node's namespace; a socket stays in the
/// namespace it was made in, whichever thread uses it). Counts requests.
fn serve(listener: std::net::TcpListener, answer: Answer) -> Arc<AtomicUsize> {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let code = match answer {
                    Answer::Ok => 200,
                    Answer::Unavailable => 503,
                    Answer::Slow(delay) => {
                        tokio::time::sleep(delay).await;
                        200
                    }
                    Answer::Flapping if n.is_multiple_of(2) => 503,
                    Answer::Flapping => 200,
                };
                let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                let body = format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    hits
}

/// Waits (up to 10 s) until the checker says `target` is `want`.
async fn wait_for(checker: &Checker, target: &Target, want: Health) {
    for _ in 0..200 {
        if checker.state(target).is_some_and(|s| s.health == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{target} never became {want:?}: {:?}", checker.state(target));
}

#[test]
fn probes_across_namespaces_tell_up_refused_slow_unhealthy_and_flapping_apart() {
    let prober = Netns::new("prober");
    let node_ns = Netns::new("node");
    veth(&prober, "eth0", &node_ns, "eth0");
    prober.ip(&["addr", "add", "10.98.0.1/24", "dev", "eth0"]);
    node_ns.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"]);
    let node: IpAddr = "10.98.0.2".parse().expect("ip");
    // Ports with a server; 30099 has none, so the node's kernel answers with a reset.
    let ports = [30080u16, 30503, 30600, 30700];
    let listeners = node_ns.run(|| ports.map(|p| std::net::TcpListener::bind((node, p)).expect("bind in the node")));
    let refused = 30099u16;

    prober.block_on(|| async move {
        let [ok, unavailable, slow, flapping] = listeners;
        serve(ok, Answer::Ok);
        serve(unavailable, Answer::Unavailable);
        serve(slow, Answer::Slow(Duration::from_millis(1500)));
        let flaps = serve(flapping, Answer::Flapping);
        let healthz = ProbeKind::Healthz;
        let timeout = Duration::from_millis(500);

        type Check = fn(&Outcome) -> bool;
        let cases: Vec<(&str, u16, ProbeKind, Check)> = vec![
            ("tcp up", 30080, ProbeKind::Tcp, |o| *o == Outcome::Up),
            ("http 200", 30080, healthz, |o| *o == Outcome::Up),
            ("http 503 (no local endpoints)", 30503, healthz, |o| {
                *o == Outcome::Unhealthy("HTTP 503".into())
            }),
            (
                "tcp refused",
                refused,
                ProbeKind::Tcp,
                |o| matches!(o, Outcome::Failed(m) if m.contains("refused")),
            ),
            (
                "http refused",
                refused,
                healthz,
                |o| matches!(o, Outcome::Failed(m) if m.contains("refused")),
            ),
            (
                "slow answer past the timeout",
                30600,
                healthz,
                |o| matches!(o, Outcome::Failed(m) if m == "no answer within 500 ms"),
            ),
            // A TCP probe only needs the handshake, which the slow server's kernel completes.
            ("slow server, tcp probe", 30600, ProbeKind::Tcp, |o| *o == Outcome::Up),
        ];
        for (name, port, kind, check) in cases {
            let (outcome, latency) = probe::probe(SocketAddr::new(node, port), &kind, timeout).await;
            assert!(check(&outcome), "{name}: {outcome:?}");
            // The timeout bounds every probe (with room for a loaded machine, well short of
            // the slow server's 1.5 s).
            assert!(latency < Duration::from_millis(1400), "{name}: took {latency:?}");
        }

        // Through the checker: 503 drains after `fall`; flapping never gives two failures in a
        // row, so with fall 2 it stays up and no change is ever announced.
        let checker = Checker::new(8);
        let task = tokio::spawn(checker.clone().run());
        let settings = Settings {
            interval: Duration::from_millis(100),
            // Long enough that a loaded machine never turns a slow answer into a failure.
            timeout: Duration::from_secs(2),
            thresholds: Thresholds { rise: 1, fall: 2 },
            jitter_percent: 0,
        };
        let down = Target::healthz(node, 30503);
        let flapper = Target::healthz(node, 30700);
        let mut changes = checker.subscribe();
        changes.borrow_and_update();
        checker.set_targets(HashMap::from([(down.clone(), settings), (flapper.clone(), settings)]));
        wait_for(&checker, &down, Health::Down).await;
        assert!(changes.has_changed().expect("alive"), "going down is announced");
        // Its first 200 makes the flapping node up (rise 1); from then on nothing changes.
        wait_for(&checker, &flapper, Health::Up).await;
        changes.borrow_and_update();
        let flapper_changes = checker.state(&flapper).map(|s| s.since);
        // Watch the flapping node for at least ten of its probes.
        let start = flaps.load(Ordering::SeqCst);
        while flaps.load(Ordering::SeqCst) < start + 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = checker.state(&flapper).expect("tracked");
        assert_eq!(state.health, Health::Up, "flapping is not down: {state:?}");
        assert!(checker.serves(&flapper));
        assert_eq!(Some(state.since), flapper_changes, "its state never changed");
        assert!(
            !changes.has_changed().expect("alive"),
            "no health change while it flaps"
        );
        task.abort();
    });
}

#[test]
fn a_blackholed_node_times_out_and_is_drained_then_restored() {
    let ns = Netns::new("health");
    ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let node: IpAddr = "10.99.0.1".parse().expect("ip");
    let out = ns.nft(&["add", "table", "inet", "blackhole"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ns.nft(&["add chain inet blackhole input { type filter hook input priority 0; }"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ns.nft(&[
        "add",
        "rule",
        "inet",
        "blackhole",
        "input",
        "tcp",
        "dport",
        "30080",
        "drop",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ns = &ns;
    ns.block_on(|| async move {
        // A listener exists, but its SYNs are dropped: only the timeout can tell.
        let listener = tokio::net::TcpListener::bind((node, 30080)).await.expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let timeout = Duration::from_millis(300);
        let (outcome, latency) = probe::probe(SocketAddr::new(node, 30080), &ProbeKind::Tcp, timeout).await;
        assert_eq!(outcome, Outcome::Failed("no answer within 300 ms".into()));
        // Never before the timeout; after it, only as late as a loaded machine makes it.
        assert!(latency >= timeout && latency < timeout * 5, "{latency:?}");

        let checker = Checker::new(8);
        let task = tokio::spawn(checker.clone().run());
        let target = Target::tcp(node, 30080);
        let settings = Settings {
            interval: Duration::from_millis(100),
            timeout,
            thresholds: Thresholds { rise: 2, fall: 2 },
            jitter_percent: 0,
        };
        checker.set_targets(HashMap::from([(target.clone(), settings)]));
        wait_for(&checker, &target, Health::Down).await;
        assert!(!checker.serves(&target));

        // Lift the blackhole: after `rise` good probes the node serves again.
        let out = ns.nft(&["delete", "table", "inet", "blackhole"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_for(&checker, &target, Health::Up).await;
        assert!(checker.serves(&target));
        task.abort();
    });
}
