//! The files in `deploy/` checked by the tools that read them and against a real appliance: the
//! Prometheus alerting rules pass `promtool check rules` and their own `promtool test rules`
//! cases, and every metric they use is one the appliance exports; the Grafana dashboard is sound,
//! every query of it is PromQL that promtool accepts, and every metric it queries is exported by
//! an appliance whose data plane holds a virtual service with health-checked real servers (its
//! published status given here; the kernel lab's `edgelb-health` checks the same with real
//! IPVS). `promtool check metrics` finds nothing to fix in that appliance's `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestAppliance;
use edgelb_api::{
    BackendHealth, DataplaneStatus, HealthState, Protocol, RealServerStatus, TrafficCounters, VirtualServiceStatus,
};
use tower::ServiceExt;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// Runs promtool (Debian's prometheus package; scripts/test.sh installs it) and returns what it
/// said, failing the test if it fails.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool runs (Debian's prometheus package; scripts/test.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {said}");
    said
}

/// The `edgelb_...` names a text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("edgelb_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_own_cases() {
    let said = promtool(&["check", "rules", "edgelb-alerts.yaml"]);
    assert!(said.contains("SUCCESS: 3 rules found"), "{said}");
    let said = promtool(&["test", "rules", "edgelb-alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[tokio::test]
async fn every_metric_the_alerting_rules_use_is_exported() {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/26", "2001:db8::/64"]).await;
    let (status, _) = app.get("/api/v1/pools", &app.admin).await;
    assert!(status.is_success());
    let scrape = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let rules = std::fs::read_to_string(deploy("prometheus/edgelb-alerts.yaml")).expect("rules");
    let used = metric_names(&rules);
    assert!(used.len() >= 2, "the rules use edgelb metrics: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(m.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the rules use {missing:?}, which /metrics lacks:\n{scrape}"
    );
    app.stop().await;
}

#[test]
fn the_grafana_dashboard_is_sound_and_its_queries_are_promql() {
    let text = std::fs::read_to_string(deploy("grafana/edgelb-dashboard.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "edgelb-appliance");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "pool"]);
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("id")), "panel ids are unique: {p}");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "every panel reads the chosen source: {p}"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(e.contains("edgelb_"), "{e}");
            exprs.push(e.to_owned());
        }
    }
    // Each query as a recording rule, with Grafana's variables as Grafana would fill them in:
    // promtool parses every expression.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "1m").replace("$pool", ".*");
            format!(
                "      - record: dashboard:query{i}\n        expr: '{}'\n",
                e.replace('\'', "''")
            )
        })
        .collect();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).expect("write");
    let said = promtool(&["check", "rules", file.to_str().expect("utf-8")]);
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{said}"
    );
}

/// `/metrics` (the classic text format) of an appliance with a pool, an API request behind it,
/// and a data plane holding one virtual service with an up and a down real server.
async fn busy_scrape() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = edgelb::store::Store::open(dir.path()).await.expect("store");
    let spec =
        serde_json::from_value(serde_json::json!({"name": "public", "ranges": ["203.0.113.0/28", "2001:db8::/64"]}))
            .expect("spec");
    store.create_pool("test", spec).await.expect("pool");
    let counters = TrafficCounters {
        connections: 10,
        packets_in: 100,
        packets_out: 90,
        bytes_in: 10_000,
        bytes_out: 90_000,
    };
    let real_server = |last: u8, state| RealServerStatus {
        ip: format!("10.1.0.{last}").parse().expect("ip"),
        port: 30080,
        weight: if state == HealthState::Up { 1 } else { 0 },
        method: "masquerade".into(),
        active_connections: 2,
        inactive_connections: 1,
        counters,
        health: Some(BackendHealth {
            target: format!("tcp://10.1.0.{last}:30080"),
            state,
            since: time::OffsetDateTime::now_utc(),
            last_result: Some("ok".into()),
            last_probe: Some(time::OffsetDateTime::now_utc()),
            last_latency_micros: Some(250),
        }),
    };
    let status = DataplaneStatus {
        mode: "ipvs".into(),
        last_sync: Some(time::OffsetDateTime::now_utc()),
        last_error: None,
        passes: 3,
        pass_micros: 4_500,
        full_builds: 1,
        operations: 5,
        virtual_services: vec![VirtualServiceStatus {
            ip: "203.0.113.5".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
            programmed: true,
            scheduler: Some("wlc".into()),
            persistence_timeout_seconds: None,
            counters,
            real_servers: vec![real_server(11, HealthState::Up), real_server(12, HealthState::Down)],
        }],
    };
    let info = edgelb::http::ServerInfo {
        version: "test".into(),
        dataplane: "ipvs".into(),
    };
    let state = edgelb::http::AppState::new(store, info)
        .with_dataplane(edgelb::forwarding::StatusFeed::fixed(std::sync::Arc::new(status)));
    let app = edgelb::http::app(state);
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let r = app.clone().oneshot(get("/api/v1/pools")).await.expect("answer");
    assert_eq!(r.status(), axum::http::StatusCode::UNAUTHORIZED);
    let r = app.oneshot(get("/metrics")).await.expect("answer");
    assert!(r.status().is_success());
    let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.expect("body");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// The names a classic-format scrape exports: its families (with a counter's `_total` and a
/// histogram's `_bucket`, `_sum` and `_count`) and its samples.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap_or_default().to_owned());
        }
    }
    names
}

#[tokio::test]
async fn a_busy_appliances_metrics_pass_promtool_and_hold_everything_the_dashboard_queries() {
    let scrape = busy_scrape().await;
    common::promtool_check_metrics(&scrape);
    let names = exported(&scrape);
    assert!(
        names.contains("edgelb_ipvs_real_server_bytes_out_total"),
        "the data plane's families: {names:?}"
    );
    let dashboard = std::fs::read_to_string(deploy("grafana/edgelb-dashboard.json")).expect("dashboard");
    let used = metric_names(&dashboard);
    let missing: Vec<&String> = used.iter().filter(|m| !names.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics lacks:\n{scrape}"
    );
}
