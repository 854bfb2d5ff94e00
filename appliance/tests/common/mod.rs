//! A real appliance for integration tests: its own SQLite file in a temporary directory,
//! real HTTPS on a loopback port, and a client that verifies the appliance's self-signed
//! certificate (no "accept anything" shortcut).

#![allow(dead_code)]

pub mod netns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgelb::config::{Config, DataplaneConfig, LogFormat, TlsSource};
use edgelb::server::Server;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct TestAppliance {
    pub url: String,
    pub addr: SocketAddr,
    /// The admin token made on first start.
    pub admin: String,
    /// The admin console password made on first start.
    pub admin_password: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub fn config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: TlsSource::SelfSigned,
        log_format: LogFormat::Text,
        shutdown_grace: Duration::from_secs(5),
        connections: Default::default(),
        dataplane: DataplaneConfig::none(),
        health: edgelb::config::HealthConfig::default(),
    }
}

/// A client trusting exactly the appliance's certificate in `data_dir`.
pub fn client_for(data_dir: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(data_dir.join(edgelb::tls::SELF_SIGNED_CERT)).expect("self-signed certificate");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestAppliance {
    pub async fn start() -> TestAppliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mut app = TestAppliance::start_in(data_dir).await;
        app._dir = Some(dir);
        app
    }

    /// Starts on an existing or new data directory (kept by the caller).
    pub async fn start_in(data_dir: PathBuf) -> TestAppliance {
        edgelb::tls::install_crypto_provider();
        let server = Server::bind(config(data_dir.clone())).await.expect("appliance binds");
        let addr = server.local_addr();
        let (admin, admin_password) = match server.bootstrap() {
            Some(b) => (b.token.clone(), b.password.clone()),
            None => (String::new(), String::new()),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async move {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        });
        let client = client_for(&data_dir);
        TestAppliance {
            url: format!("https://localhost:{}", addr.port()),
            addr,
            admin,
            admin_password,
            client,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Stops serving (letting in-flight requests finish) and waits for it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
        self._dir.take()
    }

    /// Sends a request with a bearer token and a JSON body; returns status and JSON (or Null).
    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the appliance");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, token, None).await
    }

    /// Creates a token of `role` (bound to `cluster` for agents) and returns its secret.
    pub async fn token(&self, name: &str, role: &str, cluster: Option<&str>) -> String {
        let (s, v) = self
            .post(
                "/api/v1/tokens",
                &self.admin,
                serde_json::json!({"name": name, "role": role, "cluster": cluster}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "token creation: {v}");
        v["secret"].as_str().expect("secret").to_owned()
    }

    pub async fn pool(&self, name: &str, ranges: &[&str]) -> Value {
        let (s, v) = self
            .post(
                "/api/v1/pools",
                &self.admin,
                serde_json::json!({"name": name, "ranges": ranges}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "pool creation: {v}");
        v
    }

    pub async fn cluster(&self, name: &str) {
        let (s, v) = self
            .post("/api/v1/clusters", &self.admin, serde_json::json!({"name": name}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "cluster creation: {v}");
    }
}

/// A minimal valid Service spec with one TCP port.
pub fn service_spec(uid: &str) -> Value {
    serde_json::json!({
        "uid": uid,
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "node_port": 30080}],
    })
}

/// A request body for [`TestAppliance::send`].
pub enum Body {
    None,
    Json(Value),
    /// Bytes sent as they are, with this `Content-Type` (or none when empty).
    Raw(&'static str, Vec<u8>),
}

/// A whole answer: status, headers and body, for tests that look past the JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or `Null` when it is not JSON.
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

impl TestAppliance {
    /// Sends any body (or none) and returns the whole answer.
    pub async fn send(&self, method: Method, path: &str, token: &str, body: Body) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw("", bytes) => req.body(bytes),
            Body::Raw(content_type, bytes) => req.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes),
        };
        let resp = req.send().await.expect("request reaches the appliance");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }
}

/// Asserts that `reply` is an `application/problem+json` document with `status` whose `detail`
/// contains every one of `needles`; returns the document.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: StatusCode, needles: &[&str]) -> Value {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(
        reply.content_type(),
        "application/problem+json",
        "{status} must be a problem document: {}",
        reply.text
    );
    let p = &reply.json;
    assert_eq!(p["status"], status.as_u16(), "{p}");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "a problem needs a detail: {p}");
    for n in needles {
        assert!(detail.contains(n), "detail should mention {n:?}: {detail}");
    }
    p.clone()
}

/// What `promtool check metrics` (Debian's prometheus package; scripts/test.sh installs it) says
/// of a scrape in the classic text format; fails the test if it cannot run or finds a problem.
pub fn promtool_check_metrics(scrape: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; scripts/test.sh installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), scrape.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{scrape}"
    );
}

/// History written through the appliance's own time-series code, for tests that read it back
/// through the API and the console: 25 samples 10 s apart, ending about a minute ago, of
/// `vip`:80/TCP and its real servers 10.1.0.11:30080 and 10.1.0.12:30080 (the second down for
/// samples 10 to 14), and of pool `pool`.
pub struct WrittenHistory {
    /// The samples' times (unix seconds).
    pub times: Vec<i64>,
}

impl WrittenHistory {
    /// Connections per second of the virtual service, active connections, bytes per second in
    /// and out, from the second sample on.
    pub const VS: [f64; 4] = [2.0, 7.0, 100.0, 500.0];
    pub const RS: [(&'static str, f64); 2] = [("10.1.0.11", 1.2), ("10.1.0.12", 0.8)];
    /// Pool `allocated` at sample i is `1 + i`, `free` is `250 - i`.
    pub fn pool_at(i: usize) -> (f64, f64) {
        (1.0 + i as f64, 250.0 - i as f64)
    }

    pub fn write(data_dir: &std::path::Path, vip: std::net::IpAddr, pool: &str) -> WrittenHistory {
        use edgelb::forwarding::VsKey;
        use edgelb::history::{History, Options, STEP, Sample, SeriesKey};
        use edgelb_api::HealthState;
        let now = edgelb::history::sampler::unix_now();
        let t0 = now - now.rem_euclid(STEP) - 300;
        let h = History::open(&data_dir.join("history"), now, Options::default()).expect("history");
        let vs = VsKey::new(vip, 80, edgelb_api::Protocol::Tcp);
        let mut times = Vec::new();
        for i in 0..25u64 {
            let t = t0 + i as i64 * STEP;
            times.push(t);
            let mut samples = vec![
                Sample {
                    key: SeriesKey::Service(vs),
                    values: [f32::NAN, 7.0, f32::NAN, f32::NAN],
                    counters: Some([20 * i, 1000 * i, 5000 * i]),
                    health: None,
                },
                Sample {
                    key: SeriesKey::Pool(pool.to_owned()),
                    values: [1.0 + i as f32, 0.0, 250.0 - i as f32, 0.0],
                    counters: None,
                    health: None,
                },
            ];
            for (n, (ip, rate)) in Self::RS.iter().enumerate() {
                let down = n == 1 && (10..15).contains(&i);
                samples.push(Sample {
                    key: SeriesKey::RealServer(vs, SocketAddr::new(ip.parse().expect("ip"), 30080)),
                    values: [f32::NAN, 3.0 + n as f32, f32::NAN, f32::NAN],
                    counters: Some([(rate * 10.0) as u64 * i, 0, 0]),
                    health: Some((
                        if down { HealthState::Down } else { HealthState::Up },
                        t,
                        if down { "connect: Connection refused" } else { "ok" },
                    )),
                });
            }
            h.record(t, samples).expect("record");
        }
        h.flush().expect("flush");
        WrittenHistory { times }
    }
}
