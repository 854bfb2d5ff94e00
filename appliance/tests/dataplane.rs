//! The data plane as the REST API shows it: a reconciler over the in-memory fake publishes its
//! observation, and the Service status endpoint and `/metrics` report real servers with weights
//! and counters, and each real server's health check when health checking is on. The router is
//! driven without a socket (the same router serves HTTPS).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgelb::dataplane::{FakeDataplane, Op, Protocol, VsKey};
use edgelb::http::{AppState, ServerInfo, app};
use edgelb::reconcile::{Reconciler, RunnerOptions};
use edgelb::store::Store;
use edgelb_api::{ClusterSpec, Node, NodeList, PoolSpec, ServiceSpec, ServiceStatus};
use tower::ServiceExt;

async fn call(router: &axum::Router, path: &str, token: &str) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 10 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn service_status_and_metrics_show_real_servers_with_weights_and_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    let token = store.bootstrap().await.expect("bootstrap").expect("first start").token;
    let pool: PoolSpec =
        serde_json::from_value(serde_json::json!({"name": "public", "ranges": ["203.0.113.10/32"], "scheduler": "rr"}))
            .expect("pool");
    store.create_pool("test", pool).await.expect("pool");
    store
        .create_cluster(
            "test",
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    let node = |name: &str, ip: &str| Node {
        name: name.into(),
        addresses: vec![ip.parse().expect("ip")],
        ready: true,
        schedulable: true,
        excluded: false,
        no_tunnel: false,
    };
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", "10.1.0.11"), node("n2", "10.1.0.12")],
            },
        )
        .await
        .expect("nodes");
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "uid": "u1", "ports": [{"protocol": "TCP", "port": 80, "node_port": 30080}],
        "session_affinity": "ClientIP", "session_affinity_timeout_seconds": 600
    }))
    .expect("spec");
    store
        .put_service("test", "prod", "default", "web", spec)
        .await
        .expect("service");

    let fake = FakeDataplane::new();
    let r = Reconciler::new(store.clone(), fake.clone(), RunnerOptions::default());
    let state = AppState::new(
        store.clone(),
        ServerInfo {
            version: "test".into(),
            dataplane: "ipvs".into(),
        },
    )
    .with_dataplane(r.status_feed());
    let router = app(state);

    // Before the first pass: the Service is known, not programmed, and the appliance not ready.
    let (code, body) = call(&router, "/api/v1/clusters/prod/services/default/web/status", &token).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let st: ServiceStatus = serde_json::from_str(&body).expect("status json");
    assert_eq!(st.dataplane, "ipvs");
    assert_eq!(st.virtual_services.len(), 1);
    assert!(!st.virtual_services[0].programmed);
    let (code, body) = call(&router, "/readyz", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let ops = r.pass().await.expect("pass").ops;
    assert_eq!(ops.len(), 3, "{ops:?}");
    // Traffic: the kernel counts, the fake is told so.
    let key = VsKey::new("203.0.113.10".parse().expect("ip"), 80, Protocol::Tcp);
    fake.tamper(|s| {
        if let Some(vs) = s.services.get_mut(&key) {
            vs.counters.connections = 7;
        }
        for ((_, addr), rs) in s.real_servers.iter_mut() {
            rs.counters.connections = u64::from(addr.ip().to_string().ends_with(".11")) * 4 + 3;
            rs.counters.bytes_out = 1000;
        }
    });
    assert!(r.pass().await.expect("pass").ops.is_empty());

    let (code, body) = call(&router, "/api/v1/clusters/prod/services/default/web/status", &token).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let st: ServiceStatus = serde_json::from_str(&body).expect("status json");
    let vs = &st.virtual_services[0];
    assert!(vs.programmed);
    assert_eq!(vs.scheduler.as_deref(), Some("rr"));
    assert_eq!(vs.persistence_timeout_seconds, Some(600));
    assert_eq!(vs.counters.connections, 7);
    let rs: Vec<(String, u32, u64)> = vs
        .real_servers
        .iter()
        .map(|r| (format!("{}:{}", r.ip, r.port), r.weight, r.counters.connections))
        .collect();
    assert_eq!(
        rs,
        [
            ("10.1.0.11:30080".to_owned(), 1, 7),
            ("10.1.0.12:30080".to_owned(), 1, 3)
        ]
    );
    assert!(st.last_sync.is_some() && st.last_error.is_none());

    let (code, body) = call(&router, "/readyz", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("dataplane: ipvs"), "{body}");

    let (code, body) = call(&router, "/metrics", "").await;
    assert_eq!(code, StatusCode::OK);
    for line in [
        r#"edgelb_ipvs_service_connections_total{vip="203.0.113.10",port="80",protocol="TCP"} 7"#,
        r#"edgelb_ipvs_real_server_connections_total{vip="203.0.113.10",port="80",protocol="TCP",real_server="10.1.0.11:30080"} 7"#,
        r#"edgelb_ipvs_real_server_bytes_out_total{vip="203.0.113.10",port="80",protocol="TCP",real_server="10.1.0.12:30080"} 1000"#,
        r#"edgelb_ipvs_real_server_weight{vip="203.0.113.10",port="80",protocol="TCP",real_server="10.1.0.12:30080"} 1"#,
        "edgelb_dataplane_up 1",
    ] {
        assert!(body.contains(line), "{line} missing from:\n{body}");
    }

    assert!(st.notes.is_empty(), "{:?}", st.notes);

    // The status of a Service that does not exist is a 404 problem.
    let (code, _) = call(&router, "/api/v1/clusters/prod/services/default/nope/status", &token).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A removed node's real servers go; the foreign state stays (see the reconcile unit tests).
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", "10.1.0.11")],
            },
        )
        .await
        .expect("nodes");
    let ops = r.pass().await.expect("pass").ops;
    assert!(matches!(ops.as_slice(), [Op::DeleteRealServer(..)]), "{ops:?}");

    // Tunnelled, with n2 saying it has no tunnel: n2 gets no traffic, and the status says why.
    let mut n2 = node("n2", "10.1.0.12");
    n2.no_tunnel = true;
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", "10.1.0.11"), n2],
            },
        )
        .await
        .expect("nodes");
    let tunnel: ServiceSpec = serde_json::from_value(serde_json::json!({
        "uid": "u1", "ports": [{"protocol": "TCP", "port": 80, "node_port": 30080}], "forwarding": "tunnel"
    }))
    .expect("spec");
    store
        .put_service("test", "prod", "default", "web", tunnel)
        .await
        .expect("service");
    r.pass().await.expect("pass");
    let (code, body) = call(&router, "/api/v1/clusters/prod/services/default/web/status", &token).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let st: ServiceStatus = serde_json::from_str(&body).expect("status json");
    let serving: Vec<(String, u32)> = st.virtual_services[0]
        .real_servers
        .iter()
        .map(|r| (format!("{}:{}", r.ip, r.port), r.weight))
        .collect();
    // Nothing goes to n2.
    assert!(serving.contains(&("10.1.0.11:80".to_owned(), 1)), "{serving:?} {body}");
    assert!(!serving.iter().any(|(a, _)| a == "10.1.0.12:80"), "{serving:?}");
    assert_eq!(st.notes.len(), 1, "{:?}", st.notes);
    assert!(
        st.notes[0].starts_with("node n2 gets no traffic: it cannot take tunnel traffic"),
        "{:?}",
        st.notes
    );
}

#[tokio::test]
async fn status_and_metrics_show_each_real_servers_health_check() {
    // Two "nodes" on loopback: n1's NodePort listens, n2's refuses.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind");
    let node_port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    let token = store.bootstrap().await.expect("bootstrap").expect("first start").token;
    let pool: PoolSpec =
        serde_json::from_value(serde_json::json!({"name": "public", "ranges": ["203.0.113.10/32"]})).expect("pool");
    store.create_pool("test", pool).await.expect("pool");
    store
        .create_cluster(
            "test",
            ClusterSpec {
                name: "prod".into(),
                description: String::new(),
            },
        )
        .await
        .expect("cluster");
    let node = |name: &str, ip: &str| Node {
        name: name.into(),
        addresses: vec![ip.parse().expect("ip")],
        ready: true,
        schedulable: true,
        excluded: false,
        no_tunnel: false,
    };
    store
        .put_nodes(
            "test",
            "prod",
            NodeList {
                nodes: vec![node("n1", "127.0.0.2"), node("n2", "127.0.0.3")],
            },
        )
        .await
        .expect("nodes");
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "uid": "u1", "ports": [{"protocol": "TCP", "port": 80, "node_port": node_port}]
    }))
    .expect("spec");
    store
        .put_service("test", "prod", "default", "web", spec)
        .await
        .expect("service");

    let fake = FakeDataplane::new();
    let r = Reconciler::new(store.clone(), fake.clone(), RunnerOptions::default()).with_health(
        edgelb::config::HealthConfig {
            interval: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_millis(50),
            rise: 1,
            fall: 1,
            ..Default::default()
        },
    );
    let router = app(AppState::new(
        store.clone(),
        ServerInfo {
            version: "test".into(),
            dataplane: "ipvs".into(),
        },
    )
    .with_dataplane(r.status_feed()));
    let checker = r.checker().expect("health checking is on").clone();
    let probing = tokio::spawn(checker.clone().run());

    assert_eq!(r.pass().await.expect("pass").ops.len(), 3, "both nodes start serving");
    let n2 = edgelb::health::Target::tcp("127.0.0.3".parse().expect("ip"), node_port);
    let n1 = edgelb::health::Target::tcp("127.0.0.2".parse().expect("ip"), node_port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(checker.state(&n2).is_some_and(|s| !s.serves())
        && checker
            .state(&n1)
            .is_some_and(|s| s.health == edgelb::health::Health::Up))
    {
        assert!(std::time::Instant::now() < deadline, "the probes decided nothing");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ops = r.pass().await.expect("pass").ops;
    assert!(
        matches!(ops.as_slice(), [Op::EditRealServer(_, a, s)] if a.port() == node_port && s.weight == 0),
        "n2 drained in place: {ops:?}"
    );

    let (code, body) = call(&router, "/api/v1/clusters/prod/services/default/web/status", &token).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let st: ServiceStatus = serde_json::from_str(&body).expect("status json");
    let health: Vec<(String, u32, edgelb_api::HealthState, String)> = st.virtual_services[0]
        .real_servers
        .iter()
        .map(|r| {
            let h = r.health.clone().expect("probed");
            (h.target, r.weight, h.state, h.last_result.unwrap_or_default())
        })
        .collect();
    assert_eq!(health[0].0, format!("tcp://127.0.0.2:{node_port}"));
    assert_eq!(
        (health[0].1, health[0].2, health[0].3.as_str()),
        (1, edgelb_api::HealthState::Up, "ok")
    );
    assert_eq!((health[1].1, health[1].2), (0, edgelb_api::HealthState::Down));
    assert!(health[1].3.contains("connect"), "{}", health[1].3);

    let (code, body) = call(&router, "/metrics", "").await;
    assert_eq!(code, StatusCode::OK);
    for line in [
        format!(
            r#"edgelb_backend_up{{vip="203.0.113.10",port="80",protocol="TCP",backend="127.0.0.2:{node_port}"}} 1"#
        ),
        format!(
            r#"edgelb_backend_up{{vip="203.0.113.10",port="80",protocol="TCP",backend="127.0.0.3:{node_port}"}} 0"#
        ),
        format!(
            r#"edgelb_backend_probe_latency_seconds{{vip="203.0.113.10",port="80",protocol="TCP",backend="127.0.0.2:{node_port}"}} "#
        ),
    ] {
        assert!(body.contains(&line), "{line} missing from:\n{body}");
    }

    // The console's Services page, as a signed-in admin sees it: a badge and a health line per
    // real server.
    let session = store.create_session("admin").await.expect("session");
    let req = Request::get("/services")
        .header("cookie", format!("elb_session={}", session.secret))
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let page = axum::body::to_bytes(resp.into_body(), 10 << 20).await.expect("body");
    let page = String::from_utf8_lossy(&page);
    for (badge, address, line) in [
        (
            "health-ok\">ok",
            "127.0.0.2",
            format!("tcp://127.0.0.2:{node_port} up since"),
        ),
        (
            "health-down\">down",
            "127.0.0.3",
            format!("tcp://127.0.0.3:{node_port} down since"),
        ),
    ] {
        let item = page
            .split("<li>")
            .find(|li| li.contains(&format!("<code>{address}:{node_port}</code>")))
            .unwrap_or_else(|| panic!("no real server {address} on the Services page:\n{page}"));
        assert!(item.contains(badge), "{address} shows {badge}: {item}");
        assert!(item.contains(&line), "{address} shows {line:?}: {item}");
        assert!(item.contains("last probe: "), "{address} shows its last probe: {item}");
    }
    assert!(
        page.contains("connect: Connection refused"),
        "the failed probe says why:\n{page}"
    );
    probing.abort();
    drop(listener);
}

/// A store whose database stops answering: `/readyz` says so (without the file's location:
/// it answers anyone), `/api/v1/info` and `/metrics` report it, and the dashboard's numbers come
/// from the same check.
#[tokio::test]
async fn a_store_that_stops_answering_is_reported_by_readyz_info_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).await.expect("store");
    let token = store.bootstrap().await.expect("bootstrap").expect("first start").token;
    let state = AppState::new(
        store.clone(),
        ServerInfo {
            version: "test".into(),
            dataplane: "none".into(),
        },
    );
    let router = app(state);
    let (code, body) = call(&router, "/readyz", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("store: sqlite answers in "), "{body}");
    let (code, body) = call(&router, "/api/v1/info", &token).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let info: edgelb_api::Info = serde_json::from_str(&body).expect("info");
    assert_eq!(info.store.kind, "sqlite");
    assert_eq!(info.store.location, dir.path().join("edgelb.db").display().to_string());
    assert!(
        info.store.answering && info.store.latency_ms.is_some() && info.store.last_error.is_none(),
        "{body}"
    );
    let (_, metrics) = call(&router, "/metrics", &token).await;
    assert!(metrics.contains("edgelb_store_up{kind=\"sqlite\"} 1\n"), "{metrics}");
    assert!(
        metrics.contains("edgelb_store_check_seconds{kind=\"sqlite\"} "),
        "{metrics}"
    );
    let errors_before = info.store.errors;

    store.close_reads_for_tests().await;
    let (code, body) = call(&router, "/readyz", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.starts_with("not ready: the store (sqlite) does not answer: "),
        "{body}"
    );
    assert!(
        !body.contains(&dir.path().display().to_string()),
        "no location to anyone: {body}"
    );
    let health = store.health();
    assert!(
        !health.answering && health.latency.is_none() && health.last_error.is_some(),
        "{health:?}"
    );
    assert!(health.errors > errors_before, "the failed check is counted: {health:?}");
    let (code, metrics) = call(&router, "/metrics", &token).await;
    assert_eq!(code, StatusCode::OK, "{metrics}");
    assert!(metrics.contains("edgelb_store_up{kind=\"sqlite\"} 0\n"), "{metrics}");
    assert!(
        !metrics.contains("edgelb_store_check_seconds"),
        "no latency without an answer: {metrics}"
    );
}
