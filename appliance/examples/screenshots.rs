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

/// A day of made-up but plausible history for `vip`:80 (the shop's frontend) and its three
/// nodes, written through the appliance's own time-series code: traffic that follows the time
/// of day, a node down for twenty minutes three hours ago, and pool `public` filling up.
fn synthetic_history(data_dir: &std::path::Path, vip: std::net::IpAddr, allocated_now: f32) {
    use edgelb::forwarding::VsKey;
    use edgelb::history::{History, Options, STEP, Sample, SeriesKey};
    use edgelb_api::HealthState;
    let now = edgelb::history::sampler::unix_now();
    let start = now - now.rem_euclid(STEP) - 26 * 3600;
    let h = History::open(&data_dir.join("history"), start, Options::default()).expect("history");
    let vs = VsKey::new(vip, 80, edgelb_api::Protocol::Tcp);
    let nodes: Vec<std::net::SocketAddr> = (11..=13)
        .map(|i| format!("192.168.10.{i}:30080").parse().expect("addr"))
        .collect();
    let mut conns = [0u64; 3];
    let mut bytes = [0u64; 3];
    let mut t = start;
    while t < now - 20 {
        let day = (t % 86_400) as f64 / 86_400.0;
        let wobble = ((t / 10) % 7) as f64 / 7.0;
        let rate = 35.0 + 25.0 * (2.0 * std::f64::consts::PI * (day - 0.35)).sin() + 4.0 * wobble;
        let down = (now - 3 * 3600..now - 3 * 3600 + 1200).contains(&t);
        let mut samples = Vec::new();
        let mut vs_c = [0u64; 3];
        for (n, a) in nodes.iter().enumerate() {
            let share = if n == 1 && down {
                0.0
            } else if down {
                0.5
            } else {
                1.0 / 3.0
            };
            conns[n] += (rate * share * 10.0) as u64;
            bytes[n] += (rate * share * 10.0 * 9_000.0) as u64;
            samples.push(Sample {
                key: SeriesKey::RealServer(vs, *a),
                values: [f32::NAN, (rate * share * 4.0) as f32, f32::NAN, f32::NAN],
                counters: Some([conns[n], bytes[n] / 12, bytes[n]]),
                health: Some((
                    if n == 1 && down {
                        HealthState::Down
                    } else {
                        HealthState::Up
                    },
                    if n == 1 && t >= now - 3 * 3600 + 1200 {
                        now - 3 * 3600 + 1200
                    } else if n == 1 && down {
                        now - 3 * 3600
                    } else {
                        start
                    },
                    if n == 1 && down {
                        "connect: Connection refused"
                    } else {
                        "ok"
                    },
                )),
            });
            vs_c[0] += conns[n];
            vs_c[1] += bytes[n] / 12;
            vs_c[2] += bytes[n];
        }
        samples.push(Sample {
            key: SeriesKey::Service(vs),
            values: [f32::NAN, (rate * 4.0) as f32, f32::NAN, f32::NAN],
            counters: Some(vs_c),
            health: None,
        });
        samples.push(Sample {
            key: SeriesKey::Totals,
            values: [f32::NAN, (rate * 4.0) as f32, f32::NAN, f32::NAN],
            counters: Some(vs_c),
            health: None,
        });
        samples.push(Sample {
            key: SeriesKey::Appliance,
            values: [1.0 + wobble.round() as f32, 0.8 + wobble as f32, 10.0, 30.0],
            counters: None,
            health: None,
        });
        let filled = (t - start) as f32 / (now - start) as f32;
        let allocated = (2.0 + (allocated_now - 2.0) * filled).round();
        samples.push(Sample {
            key: SeriesKey::Pool("public".into()),
            values: [allocated, 1.0, 85.0 - allocated - 1.0, 0.0],
            counters: None,
            health: None,
        });
        h.record(t, samples).expect("record");
        t += STEP;
    }
    h.flush().expect("flush");
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
    let first = TestAppliance::start().await;
    fill(&first).await;
    // A day of history for the graphs, written while the appliance is down, then served.
    let (_, frontend) = first
        .get("/api/v1/clusters/prod/services/shop/frontend", &first.admin)
        .await;
    let vip = frontend["ips"][0].as_str().expect("ip").parse().expect("ip");
    let (_, public) = first.get("/api/v1/pools/public", &first.admin).await;
    let allocated = public["usage"]["allocated"].as_f64().expect("allocated") as f32;
    let (admin, admin_password, data_dir) = (
        first.admin.clone(),
        first.admin_password.clone(),
        first.data_dir.clone(),
    );
    let keep = first.stop().await;
    synthetic_history(&data_dir, vip, allocated);
    let mut app = TestAppliance::start_in(data_dir).await;
    app.admin = admin;
    app.admin_password = admin_password;
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
        ("pool-history", "/pools/public?range=24h"),
        ("service-history", "/services/prod/shop/frontend?range=24h"),
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
    drop(keep);
}
