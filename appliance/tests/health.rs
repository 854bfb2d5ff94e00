//! Health probes against real servers in a network namespace on the host: a node whose
//! packets are silently dropped (blackholed) times out instead of hanging the checker, and the
//! checker drains it after `fall` probes and restores it after `rise`.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::netns::Netns;
use edgelb::health::{Checker, Health, Outcome, ProbeKind, Settings, Target, Thresholds, probe};

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
        assert!(latency >= timeout && latency < timeout * 2, "{latency:?}");

        let checker = Checker::new(8, 0.0);
        let task = tokio::spawn(checker.clone().run());
        let target = Target::tcp(node, 30080);
        let settings = Settings {
            interval: Duration::from_millis(100),
            timeout,
            thresholds: Thresholds { rise: 2, fall: 2 },
        };
        checker.set_targets(HashMap::from([(target.clone(), settings)]));
        let wait = |want: Health| {
            let checker = checker.clone();
            let target = target.clone();
            async move {
                for _ in 0..100 {
                    if checker.state(&target).is_some_and(|s| s.health == want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("{target} never became {want:?}: {:?}", checker.state(&target));
            }
        };
        wait(Health::Down).await;
        assert!(!checker.serves(&target));

        // Lift the blackhole: after `rise` good probes the node serves again.
        let out = ns.nft(&["delete", "table", "inet", "blackhole"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait(Health::Up).await;
        assert!(checker.serves(&target));
        task.abort();
    });
}
