//! An in-process fake Kubernetes API server for the agent's tests (no kube-apiserver can be
//! installed here). It keeps the semantics the agent depends on, over real HTTP on loopback:
//!
//! - list (paged with `limit`/`continue`) and watch with `resourceVersion`; a watch from a
//!   compacted version gets an `ERROR` event with a 410 `Expired` status, so the client re-lists;
//!   watches end at `timeoutSeconds` or when a test closes them;
//! - create, replace (409 on a stale `resourceVersion`), merge / strategic / JSON patches, and
//!   server-side apply with field ownership (409 when another manager owns a field), on objects
//!   and on `status` as a subresource (the main resource ignores status, `/status` ignores the rest);
//! - finalizers: delete sets `deletionTimestamp`, the object goes when the last finalizer is
//!   removed, and no new finalizer may be added while deleting; a write that changes nothing
//!   keeps the resourceVersion and sends no event;
//! - Services, Nodes, EndpointSlices, Leases and Events (both groups).
//!
//! Every listener has a tag, and every write is logged with the tag of the listener it came in
//! on, so a test can tell which agent wrote.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// How many watch events are kept for watches that resume from a resourceVersion.
const HISTORY: usize = 200_000;

#[derive(Clone, Copy, Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
    },
];

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// The key under which objects of this kind are stored: `group/plural`.
    fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
}

/// One write as it reached the server.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub tag: String,
    pub method: String,
    /// `group/plural`, e.g. `/services` or `coordination.k8s.io/leases`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub subresource: Option<String>,
    pub status: u16,
}

#[derive(Debug)]
struct WatchEvent {
    resource: String,
    namespace: String,
    rv: u64,
    type_: &'static str,
    object: Value,
}

type ObjKey = (String, String, String);

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<WatchEvent>>,
    /// Events at or below this resourceVersion are gone.
    compacted: u64,
    log: Vec<Mutation>,
    /// Server-side apply field owners per object: leaf path -> manager.
    owners: HashMap<ObjKey, BTreeMap<String, String>>,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Bumped to end every open watch.
    epoch: watch::Sender<u64>,
    /// While true, every request is answered 503 (the API server is down).
    down: watch::Sender<bool>,
}

/// The fake API server; dropping it stops every listener.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<(String, SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Ok(l) = self.listeners.lock() {
            for (_, _, t) in l.iter() {
                t.abort();
            }
        }
    }
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn now() -> String {
    // RFC 3339 with second precision, as Kubernetes writes `metav1.Time`.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A parsed request path.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (Some((*ns).to_owned()), r),
        r => (None, r),
    };
    let plural = rest.first()?;
    let kind = *KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == *plural)?;
    Some(Target {
        kind,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (k, v, neg) = match term.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((k, v)) => (k, v, false),
                    None => return true,
                },
            };
            let mut cur = obj;
            for part in k.trim().split('.') {
                cur = &cur[part];
            }
            (cur.as_str() == Some(v.trim())) != neg
        })
}

/// Leaf paths of a JSON object (arrays and scalars are leaves), for field ownership.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if p == "apiVersion"
                    || p == "kind"
                    || p.starts_with("metadata.")
                        && !p.starts_with("metadata.labels")
                        && !p.starts_with("metadata.annotations")
                {
                    continue;
                }
                leaves(v, &p, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    cur
}

/// The object without the fields the server maintains, to tell whether a write changed it.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
        m.remove("generation");
    }
    v
}

impl Inner {
    fn push_event(&mut self, tx: &broadcast::Sender<Arc<WatchEvent>>, ev: WatchEvent) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = tx.send(ev);
    }
}

#[derive(Clone)]
struct Conn {
    shared: Arc<Shared>,
    tag: String,
}

impl FakeApiServer {
    /// Starts with one listener tagged `test`.
    pub async fn start() -> Arc<FakeApiServer> {
        let (events, _) = broadcast::channel(HISTORY);
        let server = Arc::new(FakeApiServer {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                events,
                epoch: watch::channel(0).0,
                down: watch::channel(false).0,
            }),
            listeners: Mutex::new(Vec::new()),
        });
        server.listen("test").await;
        server
    }

    /// Opens another listener whose writes are logged with `tag`; returns its URL.
    pub async fn listen(&self, tag: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(handle).with_state(Conn {
            shared: self.shared.clone(),
            tag: tag.to_owned(),
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.listeners.lock().expect("lock").push((tag.to_owned(), addr, task));
        format!("http://{addr}")
    }

    /// The URL of the listener with this tag.
    pub fn url(&self, tag: &str) -> String {
        let l = self.listeners.lock().expect("lock");
        let (_, addr, _) = l.iter().find(|(t, _, _)| t == tag).expect("listener");
        format!("http://{addr}")
    }

    /// A kube client for the listener with this tag (opened if new).
    pub async fn client(&self, tag: &str) -> kube::Client {
        let exists = self.listeners.lock().expect("lock").iter().any(|(t, _, _)| t == tag);
        let url = if exists { self.url(tag) } else { self.listen(tag).await };
        let mut config = kube::Config::new(url.parse().expect("url"));
        config.default_namespace = "default".to_owned();
        config.read_timeout = Some(Duration::from_secs(300));
        kube::Client::try_from(config).expect("client")
    }

    /// Every write so far.
    pub fn mutations(&self) -> Vec<Mutation> {
        self.shared.inner.lock().expect("lock").log.clone()
    }

    /// Forgets every watch event so far: a watch resuming from before now gets 410 Gone.
    pub fn compact(&self) {
        let mut i = self.shared.inner.lock().expect("lock");
        i.compacted = i.rv;
        i.history.clear();
    }

    /// Ends every open watch (clients resume from their last resourceVersion).
    pub fn close_watches(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// While down, every request fails with 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
        if down {
            self.close_watches();
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.inner.lock().expect("lock").rv
    }

    /// A stored object, by `group/plural` (`/services`), namespace ("" for cluster-scoped) and name.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let i = self.shared.inner.lock().expect("lock");
        i.objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of a resource.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let i = self.shared.inner.lock().expect("lock");
        i.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn handle(
    State(conn): State<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if *conn.shared.down.borrow() {
        return status(503, "ServiceUnavailable", "the API server is down");
    }
    let Some(t) = parse_path(uri.path()) else {
        return status(404, "NotFound", format!("no such path {}", uri.path()));
    };
    if method == Method::GET {
        return match (&t.name, q.get("watch").map(String::as_str)) {
            (None, Some("true" | "1")) => watch_response(&conn, &t, &q),
            (None, _) => list(&conn, &t, &q),
            (Some(name), _) => {
                let i = conn.shared.inner.lock().expect("lock");
                match i
                    .objects
                    .get(&(t.kind.key(), t.namespace.clone().unwrap_or_default(), name.clone()))
                {
                    Some(o) => ok(StatusCode::OK, o),
                    None => status(404, "NotFound", format!("{} \"{name}\" not found", t.kind.plural)),
                }
            }
        };
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let resp = write(&conn, &method, &t, &q, &content_type, &body);
    let mut i = conn.shared.inner.lock().expect("lock");
    let name = match &t.name {
        Some(n) => n.clone(),
        None => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    i.log.push(Mutation {
        tag: conn.tag.clone(),
        method: method.to_string(),
        resource: t.kind.key(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name,
        subresource: t.sub.clone(),
        status: resp.status().as_u16(),
    });
    resp
}

fn list(conn: &Conn, t: &Target, q: &HashMap<String, String>) -> Response {
    let i = conn.shared.inner.lock().expect("lock");
    let key = t.kind.key();
    let ns = t.namespace.clone();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // The continue token carries the snapshot's resourceVersion and the last key served.
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => match c.split_once('|') {
            Some((rv, rest)) => (rv.parse().unwrap_or(i.rv), Some(rest.to_owned())),
            None => return status(400, "BadRequest", "bad continue token"),
        },
        None => (i.rv, None),
    };
    let labels = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let mut items = Vec::new();
    let mut next = None;
    for ((r, ons, oname), obj) in i.objects.iter() {
        if *r != key || ns.as_ref().is_some_and(|n| n != ons) {
            continue;
        }
        let k = format!("{ons}/{oname}");
        if after.as_ref().is_some_and(|a| k.as_str() <= a.as_str()) {
            continue;
        }
        if !labels_match(obj, &labels) || !fields_match(obj, &fields) {
            continue;
        }
        if items.len() == limit {
            next = Some(format!("{list_rv}|{}", {
                let last: &Value = items.last().expect("non-empty");
                format!(
                    "{}/{}",
                    last["metadata"]["namespace"].as_str().unwrap_or(""),
                    last["metadata"]["name"].as_str().unwrap_or("")
                )
            }));
            break;
        }
        items.push(obj.clone());
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(n) = next {
        meta["continue"] = Value::String(n);
    }
    ok(
        StatusCode::OK,
        &json!({"apiVersion": t.kind.api_version(), "kind": format!("{}List", t.kind.kind), "metadata": meta, "items": items}),
    )
}

fn watch_line(type_: &str, object: &Value) -> Result<Bytes, Infallible> {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Ok(Bytes::from(line))
}

fn watch_response(conn: &Conn, t: &Target, q: &HashMap<String, String>) -> Response {
    let key = t.kind.key();
    let ns = t.namespace.clone();
    let labels = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let matches = {
        let (key, ns, labels, fields) = (key.clone(), ns.clone(), labels.clone(), fields.clone());
        move |e: &WatchEvent| {
            e.resource == key
                && ns.as_ref().is_none_or(|n| *n == e.namespace)
                && labels_match(&e.object, &labels)
                && fields_match(&e.object, &fields)
        }
    };
    let since: Option<u64> = q.get("resourceVersion").and_then(|r| r.parse().ok()).filter(|r| *r > 0);
    let mut epoch = conn.shared.epoch.subscribe();
    epoch.mark_unchanged();
    let (initial, rx, last_rv) = {
        let i = conn.shared.inner.lock().expect("lock");
        // Subscribing under the lock: no event falls between the backlog and the live feed.
        let rx = conn.shared.events.subscribe();
        let initial: Vec<Result<Bytes, Infallible>> = match since {
            Some(rv) if rv < i.compacted => {
                let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", i.compacted), "reason": "Expired", "code": 410});
                let body = Body::from_stream(futures::stream::iter(vec![watch_line("ERROR", &st)]));
                return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            }
            Some(rv) => i
                .history
                .iter()
                .filter(|e| e.rv > rv && matches(e))
                .map(|e| watch_line(e.type_, &e.object))
                .collect(),
            // No version: the current state as ADDED events, then changes.
            None => i
                .objects
                .iter()
                .filter(|((r, ons, _), o)| {
                    *r == key
                        && ns.as_ref().is_none_or(|n| n == ons)
                        && labels_match(o, &labels)
                        && fields_match(o, &fields)
                })
                .map(|(_, o)| watch_line("ADDED", o))
                .collect(),
        };
        (initial, rx, i.rv)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let live = futures::stream::unfold(
        (rx, epoch, last_rv, matches),
        move |(mut rx, mut epoch, last, matches)| async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return None,
                    _ = epoch.changed() => return None,
                    r = rx.recv() => match r {
                        Ok(e) if e.rv > last && matches(&e) => {
                            let line = watch_line(e.type_, &e.object);
                            return Some((line, (rx, epoch, e.rv, matches)));
                        }
                        Ok(_) => continue,
                        // Lagged or closed: end the watch; the client resumes from its last version.
                        Err(_) => return None,
                    }
                }
            }
        },
    );
    let stream = futures::stream::StreamExt::chain(futures::stream::iter(initial), live);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn write(conn: &Conn, method: &Method, t: &Target, q: &HashMap<String, String>, ct: &str, body: &[u8]) -> Response {
    let ns = if t.kind.namespaced {
        match &t.namespace {
            Some(n) => n.clone(),
            None => return status(405, "MethodNotAllowed", "namespaced resource needs a namespace"),
        }
    } else {
        String::new()
    };
    let field_manager = q.get("fieldManager").cloned();
    let force = q.get("force").is_some_and(|f| f == "true");
    let shared = &conn.shared;
    let mut i = shared.inner.lock().expect("lock");
    let key_of = |name: &str| (t.kind.key(), ns.clone(), name.to_owned());
    match *method {
        Method::POST => {
            if t.name.is_some() {
                return status(405, "MethodNotAllowed", "POST to a named object");
            }
            let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                return status(400, "BadRequest", "body is not JSON");
            };
            let name = match obj["metadata"]["name"].as_str() {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => match obj["metadata"]["generateName"].as_str() {
                    Some(g) => format!("{g}{:05x}", i.uid + 1),
                    None => return status(422, "Invalid", "metadata.name: Required value"),
                },
            };
            let k = key_of(&name);
            if i.objects.contains_key(&k) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", t.kind.plural),
                );
            }
            i.uid += 1;
            i.rv += 1;
            let (uid, rv) = (i.uid, i.rv);
            obj["apiVersion"] = Value::String(t.kind.api_version());
            obj["kind"] = Value::String(t.kind.kind.to_owned());
            let meta = &mut obj["metadata"];
            meta["name"] = Value::String(name.clone());
            if t.kind.namespaced {
                meta["namespace"] = Value::String(ns.clone());
            }
            meta["uid"] = Value::String(format!("00000000-0000-4000-8000-{uid:012x}"));
            meta["resourceVersion"] = Value::String(rv.to_string());
            meta["creationTimestamp"] = Value::String(now());
            meta["generation"] = json!(1);
            if let Some(m) = meta.as_object_mut() {
                m.remove("deletionTimestamp");
            }
            if t.kind.status
                && let Some(m) = obj.as_object_mut()
            {
                // As the real API server does: status is not set on create.
                m.remove("status");
            }
            i.objects.insert(k, obj.clone());
            let ev = WatchEvent {
                resource: t.kind.key(),
                namespace: ns.clone(),
                rv,
                type_: "ADDED",
                object: obj.clone(),
            };
            i.push_event(&shared.events, ev);
            ok(StatusCode::CREATED, &obj)
        }
        Method::DELETE => {
            let Some(name) = &t.name else {
                return status(405, "MethodNotAllowed", "collection delete is not supported");
            };
            let k = key_of(name);
            let Some(old) = i.objects.get(&k).cloned() else {
                return status(404, "NotFound", format!("{} \"{name}\" not found", t.kind.plural));
            };
            let has_finalizers = old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if has_finalizers {
                if old["metadata"]["deletionTimestamp"].is_string() {
                    return ok(StatusCode::OK, &old);
                }
                let mut new = old.clone();
                new["metadata"]["deletionTimestamp"] = Value::String(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                let new = commit(&mut i, &shared.events, t, &k, new);
                ok(StatusCode::OK, &new)
            } else {
                i.rv += 1;
                let rv = i.rv;
                let mut gone = i.objects.remove(&k).unwrap_or(old);
                i.owners.remove(&k);
                gone["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                let ev = WatchEvent {
                    resource: t.kind.key(),
                    namespace: ns.clone(),
                    rv,
                    type_: "DELETED",
                    object: gone.clone(),
                };
                i.push_event(&shared.events, ev);
                ok(StatusCode::OK, &gone)
            }
        }
        Method::PUT | Method::PATCH => {
            let Some(name) = &t.name else {
                return status(405, "MethodNotAllowed", "write to a collection");
            };
            let sub = t.sub.as_deref();
            if sub.is_some_and(|s| s != "status") || (sub == Some("status") && !t.kind.status) {
                return status(404, "NotFound", "no such subresource");
            }
            let k = key_of(name);
            let Ok(input) = serde_json::from_slice::<Value>(body) else {
                return status(400, "BadRequest", "body is not JSON");
            };
            let is_apply = *method == Method::PATCH && ct.starts_with("application/apply-patch");
            let old = match i.objects.get(&k).cloned() {
                Some(o) => o,
                None if is_apply => {
                    // Server-side apply creates what does not exist.
                    drop(i);
                    let mut obj = input.clone();
                    obj["metadata"]["name"] = Value::String(name.clone());
                    let resp = write(
                        conn,
                        &Method::POST,
                        &Target {
                            kind: t.kind,
                            namespace: t.namespace.clone(),
                            name: None,
                            sub: None,
                        },
                        q,
                        "application/json",
                        obj.to_string().as_bytes(),
                    );
                    if resp.status() == StatusCode::CREATED {
                        let mut i = shared.inner.lock().expect("lock");
                        let mut l = Vec::new();
                        leaves(&input, "", &mut l);
                        let owners = i.owners.entry(k).or_default();
                        for (p, _) in l {
                            owners.insert(p, field_manager.clone().unwrap_or_default());
                        }
                    }
                    return resp;
                }
                None => return status(404, "NotFound", format!("{} \"{name}\" not found", t.kind.plural)),
            };
            let current_rv = old["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned();
            if let Some(want) = input["metadata"]["resourceVersion"].as_str()
                && want != current_rv
            {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.kind.plural
                    ),
                );
            }
            let mut patched = old.clone();
            if *method == Method::PUT {
                patched = input.clone();
            } else if ct.starts_with("application/json-patch") {
                let Ok(p) = serde_json::from_value::<json_patch::Patch>(input.clone()) else {
                    return status(400, "BadRequest", "not a JSON patch");
                };
                if let Err(e) = json_patch::patch(&mut patched, &p) {
                    return status(422, "Invalid", format!("JSON patch: {e}"));
                }
            } else {
                if is_apply && !force {
                    let mut l = Vec::new();
                    leaves(&input, "", &mut l);
                    let owners = i.owners.get(&k);
                    for (p, v) in &l {
                        if let Some(owner) = owners.and_then(|o| o.get(p))
                            && Some(owner) != field_manager.as_ref()
                            && at(&old, p) != v
                        {
                            return status(
                                409,
                                "Conflict",
                                format!("Apply failed with 1 conflict: conflict with \"{owner}\": .{p}"),
                            );
                        }
                    }
                }
                json_patch::merge(&mut patched, &input);
            }
            // A subresource write changes only its part; the main resource never changes status.
            let mut new = if sub == Some("status") {
                let mut n = old.clone();
                n["status"] = patched["status"].clone();
                n
            } else {
                if t.kind.status {
                    match old.get("status") {
                        Some(s) => patched["status"] = s.clone(),
                        None => {
                            if let Some(m) = patched.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                patched
            };
            // Fields the server owns.
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "name",
                "namespace",
                "generation",
            ] {
                match old["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            new["apiVersion"] = Value::String(t.kind.api_version());
            new["kind"] = Value::String(t.kind.kind.to_owned());
            if old["metadata"]["deletionTimestamp"].is_string() {
                let before: Vec<&Value> = old["metadata"]["finalizers"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                if new["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|f| !before.contains(&f)))
                {
                    return status(
                        422,
                        "Invalid",
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                    );
                }
            }
            // Field ownership moves to whoever wrote a field.
            if let Some(m) = &field_manager {
                let mut l = Vec::new();
                leaves(&input, "", &mut l);
                let owners = i.owners.entry(k.clone()).or_default();
                for (p, v) in l {
                    if v.is_null() {
                        owners.remove(&p);
                    } else {
                        owners.insert(p, m.clone());
                    }
                }
            }
            let new = commit(&mut i, &shared.events, t, &k, new);
            ok(StatusCode::OK, &new)
        }
        _ => status(405, "MethodNotAllowed", format!("{method} is not supported")),
    }
}

/// Stores a changed object: a new resourceVersion and a MODIFIED event, or a DELETED one when
/// a deleting object lost its last finalizer. An unchanged object keeps its version.
fn commit(i: &mut Inner, tx: &broadcast::Sender<Arc<WatchEvent>>, t: &Target, k: &ObjKey, mut new: Value) -> Value {
    let old = i.objects.get(k).cloned().unwrap_or(Value::Null);
    if comparable(&old) == comparable(&new) {
        return old;
    }
    i.rv += 1;
    let rv = i.rv;
    new["metadata"]["resourceVersion"] = Value::String(rv.to_string());
    if t.kind.status && old.get("spec") != new.get("spec") {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    let deleting = new["metadata"]["deletionTimestamp"].is_string();
    let finalizers_left = new["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if deleting && !finalizers_left {
        i.objects.remove(k);
        i.owners.remove(k);
        let ev = WatchEvent {
            resource: k.0.clone(),
            namespace: k.1.clone(),
            rv,
            type_: "DELETED",
            object: new.clone(),
        };
        i.push_event(tx, ev);
    } else {
        i.objects.insert(k.clone(), new.clone());
        let ev = WatchEvent {
            resource: k.0.clone(),
            namespace: k.1.clone(),
            rv,
            type_: "MODIFIED",
            object: new.clone(),
        };
        i.push_event(tx, ev);
    }
    new
}
