//! Regenerates `docs/screenshots/*.png`: every console page in a real headless Chromium, at
//! 1280 px wide and (for the dashboard and pools) on a narrow 420 px window, against an
//! appliance filled with a small, realistic data set.
//!
//! Run: `cargo run -p edgelb --example screenshots` (needs `chromium` and `chromium-driver`).

#[path = "../tests/browser/mod.rs"]
mod browser;
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use browser::Browser;
use common::TestAppliance;
use serde_json::{Value, json};

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
}

fn spec(uid: &str, ports: &[(u16, u16)], extra: Value) -> Value {
    let mut v = json!({
        "uid": uid,
        "ports": ports.iter().map(|(p, np)| json!({"name": format!("p{p}"), "protocol": "TCP", "port": p, "node_port": np})).collect::<Vec<_>>(),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

async fn must(app: &TestAppliance, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = app.call(method, path, &app.admin, body).await;
    assert!(s.is_success(), "{path}: {s} {v}");
    v
}

async fn fill(app: &TestAppliance) {
    use reqwest::Method;
    must(
        app,
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "public", "ranges": ["203.0.113.0/26", "203.0.113.100-203.0.113.120"], "priority": 10})),
    )
    .await;
    must(
        app,
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "internal", "ranges": ["10.20.0.0/28"], "scheduler": "rr", "clusters": ["prod"]})),
    )
    .await;
    must(
        app,
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "ipv6", "ranges": ["2001:db8:1::/120"], "auto_assign": false})),
    )
    .await;
    must(
        app,
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "lab", "ranges": ["198.51.100.0/29"], "hold_seconds": 3600, "capacity_warning_percent": 20, "capacity_critical_percent": 60})),
    )
    .await;
    for c in ["prod", "staging"] {
        must(
            app,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": c, "description": format!("{c} Kubernetes cluster")})),
        )
        .await;
        let nodes: Vec<Value> = (1..=3)
            .map(|i| json!({"name": format!("{c}-node-{i}"), "addresses": [format!("192.168.{}.{}", if c == "prod" { 10 } else { 20 }, 10 + i)], "ready": i != 3}))
            .collect();
        must(
            app,
            Method::PUT,
            &format!("/api/v1/clusters/{c}/nodes"),
            Some(json!({ "nodes": nodes })),
        )
        .await;
    }
    let services = [
        ("prod", "shop", "frontend", vec![(80, 30080), (443, 30443)], json!({})),
        ("prod", "shop", "api", vec![(8080, 31080)], json!({"pool": "internal"})),
        (
            "prod",
            "shop",
            "checkout",
            vec![(443, 31443)],
            json!({"session_affinity": "ClientIP"}),
        ),
        (
            "prod",
            "monitoring",
            "grafana",
            vec![(3000, 32000)],
            json!({"external_traffic_policy": "Local", "health_check_node_port": 32100, "local_nodes": ["prod-node-1"]}),
        ),
        (
            "prod",
            "ingress",
            "nginx",
            vec![(80, 30081), (443, 30444)],
            json!({"scheduler": "mh"}),
        ),
        ("staging", "shop", "frontend", vec![(80, 30080)], json!({})),
        ("staging", "lab", "echo", vec![(7, 30007)], json!({"pool": "lab"})),
        ("staging", "lab", "old", vec![(9, 30009)], json!({"pool": "lab"})),
    ];
    for (i, (c, ns, name, ports, extra)) in services.into_iter().enumerate() {
        must(
            app,
            Method::PUT,
            &format!("/api/v1/clusters/{c}/services/{ns}/{name}"),
            Some(spec(&format!("uid-{i}"), &ports, extra)),
        )
        .await;
    }
    // A released address, held back for its Service.
    must(app, Method::DELETE, "/api/v1/clusters/staging/services/lab/old", None).await;
    // An agent's contact, so the clusters page has a last contact and version.
    let agent = app.token("prod-agent", "agent", Some("prod")).await;
    let r = app
        .client
        .get(format!("{}/api/v1/clusters/prod/nodes", app.url))
        .bearer_auth(&agent)
        .header("user-agent", "edgelb-agent/0.1.0")
        .send()
        .await
        .expect("agent call");
    assert!(r.status().is_success());
    app.token("grafana-readonly", "viewer", None).await;
}

/// Saves the whole page (the window grows to the page's height).
async fn shot(b: &Browser, name: &str, width: u32) {
    b.client.set_window_size(width, 900).await.expect("resize");
    let h = b
        .client
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .expect("height")
        .as_u64()
        .unwrap_or(900)
        .clamp(600, 4000) as u32;
    b.client.set_window_size(width, h).await.expect("resize");
    let png = b.client.screenshot().await.expect("screenshot");
    let path = out_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    println!("wrote {}", path.display());
}

#[tokio::main]
async fn main() {
    std::fs::create_dir_all(out_dir()).expect("docs/screenshots");
    let app = TestAppliance::start().await;
    fill(&app).await;
    let base = app.url.clone();
    let b = Browser::start(1280, 900).await;

    b.goto(&format!("{base}/login")).await;
    b.fill("#user", "admin").await;
    b.fill("#password", "a wrong password").await;
    b.click("#sign-in").await;
    b.find("#login-error").await;
    shot(&b, "login", 1280).await;

    b.login(&base, "admin", &app.admin_password).await;
    // A viewer, made through the console's user form.
    b.goto(&format!("{base}/users")).await;
    b.fill("#u-name", "vera").await;
    b.fill("#u-password", "viewer password 123").await;
    b.click("#create-user").await;
    b.find(".flash").await;

    let pages = [
        ("dashboard", "/"),
        ("pools", "/pools"),
        ("pool-detail", "/pools/lab"),
        ("pool-new", "/pools/new"),
        ("pool-edit", "/pools/public/edit"),
        ("allocations", "/allocations"),
        ("services", "/services"),
        ("clusters", "/clusters"),
        ("users", "/users"),
        ("audit", "/audit"),
        ("history", "/history?q=lab/old"),
    ];
    for (name, path) in pages {
        b.goto(&format!("{base}{path}")).await;
        b.find("#logout").await;
        shot(&b, name, 1280).await;
    }

    // Forms in their error states.
    b.goto(&format!("{base}/pools/new")).await;
    b.fill("#name", "extra").await;
    b.fill("#ranges", "198.51.100.64/27\n203.0.113.10-203.0.113.20\n10.0.0.300/24")
        .await;
    b.click("#save-pool").await;
    b.find("#err-ranges").await;
    shot(&b, "pool-new-errors", 1280).await;
    b.goto(&format!("{base}/pools/lab/delete")).await;
    b.click("#confirm-delete").await;
    b.find("#delete-refused").await;
    shot(&b, "pool-delete-refused", 1280).await;
    b.goto(&format!("{base}/allocations?cluster=staging")).await;
    b.find("#logout").await;
    shot(&b, "allocations-filtered", 1280).await;

    // A token just created, with its secret shown once.
    b.goto(&format!("{base}/tokens")).await;
    b.fill("#t-name", "staging-agent").await;
    b.find("#t-cluster")
        .await
        .select_by_value("staging")
        .await
        .expect("select");
    b.click("#create-token").await;
    b.find("#new-secret").await;
    shot(&b, "tokens", 1280).await;

    for (name, path) in [("dashboard", "/"), ("pools", "/pools")] {
        b.goto(&format!("{base}{path}")).await;
        b.find("#logout").await;
        shot(&b, &format!("{name}-narrow"), 420).await;
    }

    // What a viewer sees: no create, edit or delete controls.
    b.click("#logout").await;
    b.find("#sign-in").await;
    b.login(&base, "vera", "viewer password 123").await;
    b.goto(&format!("{base}/pools")).await;
    b.find("#pools").await;
    shot(&b, "pools-viewer", 1280).await;

    b.close().await;
    app.stop().await;
}
