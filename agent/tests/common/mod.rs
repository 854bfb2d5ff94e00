//! Shared harness of the end-to-end tests: a real appliance process (its own SQLite file, real
//! HTTPS on loopback, the `edgelb` binary built by cargo), the fake API server, and agents
//! running in-process against both.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use edgelb_agent::appliance::{ApplianceClient, Trust};
use edgelb_agent::metrics::{Health, Metrics};
use edgelb_agent::{Settings, spec};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::fake_apiserver::FakeApiServer;

pub const CLUSTER: &str = "prod";

static BUILD: Once = Once::new();

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EDGELB_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// The appliance binary, built once per test run (cargo makes this a no-op when fresh).
pub fn appliance_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "edgelb", "--bin", "edgelb"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build -p edgelb");
        assert!(status.success(), "building the appliance failed");
    });
    profile_dir.join("edgelb")
}

/// A running appliance process.
pub struct Appliance {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub url: String,
    pub admin: String,
    pub http: reqwest::Client,
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_process(data_dir: &Path, port: u16) -> (Child, u16, Option<String>) {
    let mut child = Command::new(appliance_binary())
        .args([
            "serve",
            "--dataplane",
            "none",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("EDGELB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the edgelb binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut token = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = line.trim().strip_prefix("API token:") {
                token = Some(t.trim().to_owned());
            }
            if let Some(url) = line.strip_prefix("edgelb: listening on ") {
                let _ = tx.send((url.trim().to_owned(), token.take()));
            }
        }
    });
    let (url, token) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("edgelb reports its address within 60 s");
    let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    (child, port, token)
}

impl Appliance {
    /// Starts a fresh appliance with pool `ranges`, cluster `prod` and an agent token.
    pub async fn start(ranges: &[&str]) -> (Appliance, String) {
        install_crypto();
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let data_dir = dir.path().join("data");
        let (child, port, token) = spawn_process(&data_dir, 0);
        let http = client_for(&data_dir);
        let app = Appliance {
            child: Some(child),
            data_dir,
            port,
            url: format!("https://localhost:{port}"),
            admin: token.expect("first start prints the admin token"),
            http,
            _dir: Some(dir),
        };
        let r = app
            .admin_call("POST", "/api/v1/pools", json!({"name": "public", "ranges": ranges}))
            .await;
        assert!(r.0.is_success(), "pool: {r:?}");
        let r = app
            .admin_call("POST", "/api/v1/clusters", json!({"name": CLUSTER}))
            .await;
        assert!(r.0.is_success(), "cluster: {r:?}");
        let r = app
            .admin_call(
                "POST",
                "/api/v1/tokens",
                json!({"name": "agent", "role": "agent", "cluster": CLUSTER}),
            )
            .await;
        assert!(r.0.is_success(), "token: {r:?}");
        let secret = r.1["secret"].as_str().expect("secret").to_owned();
        (app, secret)
    }

    /// Kills the process (SIGKILL): the appliance is unreachable until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may linger for a moment after the kill.
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (child, port, _) = spawn_process(&self.data_dir, self.port);
        assert_eq!(port, self.port);
        self.child = Some(child);
    }

    pub async fn admin_call(&self, method: &str, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("appliance answers");
        let status = resp.status();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// The appliance's view of a Service (`None` when it holds none).
    pub async fn service(&self, ns: &str, name: &str) -> Option<Value> {
        let (s, v) = self
            .admin_call(
                "GET",
                &format!("/api/v1/clusters/{CLUSTER}/services/{ns}/{name}"),
                Value::Null,
            )
            .await;
        s.is_success().then_some(v)
    }

    pub async fn nodes(&self) -> Value {
        self.admin_call("GET", &format!("/api/v1/clusters/{CLUSTER}/nodes"), Value::Null)
            .await
            .1
    }

    pub fn appliance_client(&self, token: &str) -> ApplianceClient {
        let pem = std::fs::read(self.data_dir.join("tls/cert.pem")).expect("cert");
        ApplianceClient::new(&self.url, CLUSTER, token, Trust::CaBundle(pem), Duration::from_secs(5)).expect("client")
    }
}

/// A client trusting exactly the appliance's self-signed certificate.
pub fn client_for(data_dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(data_dir.join("tls/cert.pem")).expect("self-signed certificate");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Settings that make tests fast: short lease, short backoff, short stale grace.
pub fn settings(identity: &str) -> Settings {
    let mut s = Settings::new(identity);
    s.lease_seconds = 3;
    s.resync = Duration::from_secs(60);
    s.stale_grace = Duration::from_secs(2);
    s.backoff_base = Duration::from_millis(100);
    s.backoff_max = Duration::from_secs(1);
    s
}

/// An agent running in-process.
pub struct Agent {
    pub tag: String,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub async fn start(fake: &FakeApiServer, app: &Appliance, token: &str, tag: &str) -> Agent {
        Agent::start_with(fake, app, token, settings(tag)).await
    }

    pub async fn start_with(fake: &FakeApiServer, app: &Appliance, token: &str, settings: Settings) -> Agent {
        let tag = settings.identity.clone();
        let client = fake.client(&tag).await;
        let appliance = app.appliance_client(token);
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let r = edgelb_agent::run(
                client,
                appliance,
                settings,
                m,
                Arc::new(Health::default()),
                async move {
                    let _ = rx.await;
                },
            )
            .await;
            if let Err(e) = r {
                eprintln!("agent ended: {e}");
            }
        });
        Agent {
            tag,
            metrics,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful stop: finishes in-flight work and releases the Lease.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }

    /// A crash: the task is gone, the Lease is not released.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Waits until `f` returns `Some`, panicking with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn services(client: &kube::Client, ns: &str) -> Api<Service> {
    Api::namespaced(client.clone(), ns)
}

pub async fn create(api: &Api<Service>, svc: &Service) -> Service {
    api.create(&PostParams::default(), svc).await.expect("create service")
}

pub async fn delete(api: &Api<Service>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete service");
}

/// Waits for a Service to show addresses in its status and returns them.
pub async fn wait_ips(api: &Api<Service>, name: &str, count: usize) -> Vec<IpAddr> {
    eventually(30, &format!("{count} address(es) in the status of {name}"), || async {
        let svc = api.get_opt(name).await.ok()??;
        let ips = spec::status_ips(&svc);
        (ips.len() == count).then_some(ips)
    })
    .await
}

/// Events of an object by reason, as `(reason, note)`.
pub fn events_for(fake: &FakeApiServer, name: &str) -> Vec<(String, String)> {
    fake.list("events.k8s.io/events")
        .into_iter()
        .filter(|e| e["regarding"]["name"].as_str() == Some(name))
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_owned(),
                e["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits for an Event with `reason` on `name` and returns its note.
pub async fn wait_event(fake: &FakeApiServer, name: &str, reason: &str) -> String {
    eventually(30, &format!("event {reason} on {name}"), || async {
        events_for(fake, name)
            .into_iter()
            .find(|(r, _)| r == reason)
            .map(|(_, n)| n)
    })
    .await
}

/// Writes to Services (not Leases or Events) made through the listener `tag`.
pub fn service_writes(fake: &FakeApiServer, tag: &str) -> usize {
    fake.mutations()
        .iter()
        .filter(|m| m.tag == tag && m.resource == "/services")
        .count()
}
