//! The files in `deploy/` checked by the tools that read them and against a real appliance: the
//! Prometheus alerting rules pass `promtool check rules` and their own `promtool test rules`
//! cases, and every metric they use is one the appliance exports; the Grafana dashboard is sound
//! and every query of it is PromQL that promtool accepts. (That every metric the dashboard
//! queries is exported needs IPVS and health checks at work: the kernel lab's `edgelb-health`
//! checks it.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestAppliance;

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
