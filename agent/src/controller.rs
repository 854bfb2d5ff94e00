//! The Service controller and the leader's background work: start-up sync, stale release and
//! the node list. `reconcile` decides with the pure functions of `spec` and `nodes`, asks the
//! appliance, and only then writes to the cluster: while the appliance cannot be reached it
//! changes nothing (no finalizer, no status, no Event) and retries with backoff.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelb_api::{ServiceRef, ServiceSpec, SyncRequest, SyncResponse, SyncService};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::appliance::ApplianceClient;
use crate::metrics::{Health, Metrics};
use crate::nodes;
use crate::spec::{self, FINALIZER};
use crate::{Error, Settings};

/// Event reasons.
pub const REASON_ALLOCATED: &str = "IPAllocated";
pub const REASON_FAILED: &str = "AllocationFailed";
/// Every pool the Service may use is out of addresses: it stays pending until one frees up.
pub const REASON_POOL_EXHAUSTED: &str = "PoolExhausted";
pub const REASON_RELEASED: &str = "IPReleased";

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub appliance: ApplianceClient,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    slices: Store<EndpointSlice>,
    /// Opens once the start-up sync reserved every address already in a status.
    synced: watch::Receiver<bool>,
    /// The last spec the appliance accepted per Service, with the addresses it answered, so
    /// node and EndpointSlice churn does not re-send what is unchanged.
    sent: Mutex<HashMap<String, Sent>>,
    /// Consecutive failures per Service, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Sent {
    spec: ServiceSpec,
    ips: Vec<IpAddr>,
    at: Instant,
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

impl Context {
    async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: match reason {
                REASON_RELEASED => "Release",
                _ => "Allocate",
            }
            .to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &svc.object_ref(&())).await {
            Ok(()) => self.metrics.event(reason),
            Err(e) => warn!(service = %key(svc), reason, error = %e, "cannot publish event"),
        }
    }

    fn local_nodes(&self, svc: &Service) -> Vec<String> {
        let want = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = self
            .slices
            .state_filter(|s| nodes::slice_service(s).as_ref() == Some(&want));
        nodes::local_nodes(slices.iter().map(|s| s.as_ref()))
    }
}

/// Reconciles one Service: allocate and publish, or release.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Nothing is allocated before every address already in a status is reserved.
    let mut synced = ctx.synced.clone();
    synced.wait_for(|s| *s).await.map_err(|_| Error::NotSynced)?;
    let started = Instant::now();
    let result = reconcile_inner(&svc, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&svc));
    }
    result
}

async fn reconcile_inner(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    let s = &ctx.settings;
    let ours = spec::is_ours(svc, &s.class, s.default_class);
    let deleting = svc.metadata.deletion_timestamp.is_some();
    if deleting || !ours {
        if spec::has_finalizer(svc) {
            release(svc, ctx, !deleting).await?;
        }
        return Ok(Action::await_change());
    }
    let desired = match spec::desired_spec(svc, &ctx.local_nodes(svc)) {
        Ok(d) => d,
        Err(e) => {
            ctx.event(svc, EventType::Warning, REASON_FAILED, e.0.clone()).await;
            return Err(Error::InvalidService(e.0));
        }
    };
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let name = svc.name_any();
    let current = spec::status_ips(svc);
    let k = key(svc);
    let fresh = ctx
        .sent
        .lock()
        .ok()
        .and_then(|m| m.get(&k).cloned())
        .is_some_and(|sent| sent.spec == desired && sent.ips == current && sent.at.elapsed() < s.resync / 2);
    if fresh && spec::has_finalizer(svc) {
        return Ok(Action::requeue(s.resync));
    }
    if !spec::has_finalizer(svc) {
        // The finalizer goes on before an address is asked for, but only once the appliance
        // answers: an unreachable appliance must not change anything in the cluster.
        ctx.appliance.probe().await?;
        let mut finalizers = svc.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        patch_finalizers(&api, svc, finalizers).await?;
    }
    let assigned = match ctx
        .appliance
        .put_service(&svc.namespace().unwrap_or_default(), &name, &desired)
        .await
    {
        Ok(a) => a,
        Err(Error::ApplianceRefused { status, kind, detail }) => {
            let reason = match kind.as_str() {
                edgelb_api::PROBLEM_POOL_EXHAUSTED => REASON_POOL_EXHAUSTED,
                _ => REASON_FAILED,
            };
            ctx.event(svc, EventType::Warning, reason, detail.clone()).await;
            return Err(Error::ApplianceRefused { status, kind, detail });
        }
        Err(e) => return Err(e),
    };
    if assigned.ips != current || spec::status_ingress(svc) != spec::ingress_for(&assigned.ips).as_slice() {
        let patch = json!({"status": {"loadBalancer": {"ingress": spec::ingress_for(&assigned.ips)}}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        if assigned.ips != current {
            let ips: Vec<String> = assigned.ips.iter().map(IpAddr::to_string).collect();
            let pool = assigned.pool.clone().unwrap_or_default();
            info!(service = %k, ips = ?ips, pool = %pool, "address assigned");
            ctx.event(
                svc,
                EventType::Normal,
                REASON_ALLOCATED,
                format!("Assigned {} from pool {pool}", ips.join(", ")),
            )
            .await;
        }
    }
    if let Ok(mut m) = ctx.sent.lock() {
        m.insert(
            k,
            Sent {
                spec: desired,
                ips: assigned.ips,
                at: Instant::now(),
            },
        );
    }
    Ok(Action::requeue(s.resync))
}

/// Releases the Service at the appliance, then clears our status (if the Service stays) and
/// removes our finalizer. The finalizer comes off only after the appliance confirmed.
async fn release(svc: &Service, ctx: &Context, clear_status: bool) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let released = ctx.appliance.release_service(&ns, &name).await?;
    if let Ok(mut m) = ctx.sent.lock() {
        m.remove(&key(svc));
    }
    let had = spec::status_ips(svc);
    if clear_status && !spec::status_ingress(svc).is_empty() {
        let patch = json!({"status": {"loadBalancer": {"ingress": []}}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let ips = released.filter(|i| !i.is_empty()).unwrap_or(had);
    if !ips.is_empty() {
        let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        info!(service = %key(svc), ips = ?ips, "address released");
        ctx.event(
            svc,
            EventType::Normal,
            REASON_RELEASED,
            format!("Released {}", ips.join(", ")),
        )
        .await;
    }
    let finalizers: Vec<String> = svc.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(&api, svc, finalizers).await
}

/// Sets the finalizer list, guarded by the resourceVersion we read: a concurrent change makes
/// the API server answer 409 and we retry on the newer object.
async fn patch_finalizers(api: &Api<Service>, svc: &Service, finalizers: Vec<String>) -> Result<(), Error> {
    let patch = json!({"metadata": {"resourceVersion": svc.resource_version(), "finalizers": finalizers}});
    api.patch(&svc.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Retries with exponential backoff per Service; refusals wait longer than outages.
pub fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.metric_label());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key(&svc)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let (base, max) = match error {
        Error::InvalidService(_) => (Duration::from_secs(30), ctx.settings.resync),
        _ => (ctx.settings.backoff_base, ctx.settings.backoff_max),
    };
    let delay = base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(max);
    warn!(service = %key(&svc), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Every Service in the cluster, from a complete, paged list (an error anywhere fails it all).
async fn list_services(client: &Client) -> Result<Vec<Service>, Error> {
    let api: Api<Service> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

/// One full sync: a complete list of our Services with the addresses in their status.
async fn full_sync(ctx: &Context) -> Result<(SyncResponse, Vec<Service>), Error> {
    let s = &ctx.settings;
    let all = list_services(&ctx.client).await?;
    let ours: Vec<Service> = all
        .into_iter()
        .filter(|svc| spec::is_ours(svc, &s.class, s.default_class) || spec::has_finalizer(svc))
        .collect();
    let req = SyncRequest {
        services: ours
            .iter()
            .filter_map(|svc| {
                Some(SyncService {
                    namespace: svc.namespace()?,
                    name: svc.name_any(),
                    uid: svc.uid()?,
                    ips: spec::status_ips(svc),
                    sharing_key: spec::sharing_key(svc),
                })
            })
            .collect(),
    };
    let resp = ctx.appliance.sync(&req).await?;
    Ok((resp, ours))
}

/// Start-up sync, retried until it succeeds; conflicts are reported on their Services.
async fn startup_sync(ctx: &Context) -> SyncResponse {
    let mut delay = ctx.settings.backoff_base;
    loop {
        match full_sync(ctx).await {
            Ok((resp, ours)) => {
                info!(
                    reserved = resp.reserved.len(),
                    stale = resp.stale.len(),
                    conflicts = resp.conflicts.len(),
                    "start-up sync done"
                );
                for c in &resp.conflicts {
                    warn!(namespace = %c.namespace, name = %c.name, ip = %c.ip, detail = %c.detail, "address in status not reserved");
                    if let Some(svc) = ours
                        .iter()
                        .find(|s| s.namespace().as_deref() == Some(&c.namespace) && s.name_any() == c.name)
                    {
                        ctx.event(
                            svc,
                            EventType::Warning,
                            REASON_FAILED,
                            format!("{}: {}", c.ip, c.detail),
                        )
                        .await;
                    }
                }
                return resp;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "start-up sync failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(ctx.settings.backoff_max);
            }
        }
    }
}

fn stale_key(r: &ServiceRef) -> (String, String, String) {
    (r.namespace.clone(), r.name.clone(), r.uid.clone())
}

/// Releases Services the appliance holds and the cluster no longer has: only those found stale
/// by every complete, successful sync over at least the grace period. A failed list or sync
/// releases nothing.
async fn stale_loop(ctx: &Context, first: SyncResponse) {
    let grace = ctx.settings.stale_grace;
    let mut seen: HashMap<(String, String, String), Instant> = HashMap::new();
    let now = Instant::now();
    for r in &first.stale {
        seen.insert(stale_key(r), now);
    }
    let interval = (grace / 2).clamp(
        Duration::from_millis(500),
        ctx.settings.resync.max(Duration::from_secs(1)),
    );
    loop {
        tokio::time::sleep(interval).await;
        let resp = match full_sync(ctx).await {
            Ok((resp, _)) => resp,
            Err(e) => {
                warn!(error = %e, "periodic sync failed; releasing nothing");
                continue;
            }
        };
        let now = Instant::now();
        let stale: HashSet<_> = resp.stale.iter().map(stale_key).collect();
        seen.retain(|k, _| stale.contains(k));
        for k in stale {
            seen.entry(k).or_insert(now);
        }
        let due: Vec<_> = seen
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= grace)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            match ctx.appliance.release_service(&k.0, &k.1).await {
                Ok(_) => {
                    info!(namespace = %k.0, name = %k.1, uid = %k.2, "released a Service the cluster no longer has");
                    ctx.metrics.stale_released.inc();
                    seen.remove(&k);
                }
                Err(e) => warn!(namespace = %k.0, name = %k.1, error = %e, "cannot release stale Service"),
            }
        }
    }
}

/// Keeps the appliance's node list equal to the cluster's. Never sends before the first
/// complete list, so a partial view cannot drain nodes.
async fn node_loop(client: Client, appliance: ApplianceClient, metrics: Arc<Metrics>, settings: Settings) {
    let (reader, writer) = reflector::store::<Node>();
    let notify = Arc::new(Notify::new());
    let n2 = notify.clone();
    let watch = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .for_each(move |r| {
            if let Err(e) = r {
                warn!(error = %e, "node watch");
            }
            n2.notify_one();
            async {}
        });
    let push = async move {
        if reader.wait_until_ready().await.is_err() {
            return;
        }
        let mut last: Option<edgelb_api::NodeList> = None;
        let mut delay = settings.backoff_base;
        loop {
            let list = nodes::node_list(reader.state().iter().map(|n| n.as_ref()), settings.address_preference);
            if last.as_ref() != Some(&list) {
                match appliance.put_nodes(&list).await {
                    Ok(_) => {
                        debug!(nodes = list.nodes.len(), "node list sent");
                        metrics.node_pushes.inc();
                        last = Some(list);
                        delay = settings.backoff_base;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?delay, "cannot send the node list");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(settings.backoff_max);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = notify.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
                // Periodically send again, in case the appliance lost it.
                _ = tokio::time::sleep(settings.resync) => last = None,
            }
        }
    };
    tokio::select! {
        _ = watch => {},
        _ = push => {},
    }
}

/// The Services to reconcile, from a watch of them reflected into `store`.
///
/// A re-list (at start, and after a watch that cannot resume, such as a 410 Gone) reaches the
/// store only at its end (`InitDone`), when the new state is swapped in whole. A reconcile
/// started by one of its items before that reads the store's older copy: a Service deleted while
/// the watch was down still looks alive there, is found unchanged, and would wait for the next
/// resync. So a re-list's items trigger nothing; its end triggers every Service, each read from
/// the store after the swap. Changes seen on the watch trigger their Service as they come.
pub fn triggers_after_swap(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<Service>>> + Send + 'static,
    writer: reflector::store::Writer<Service>,
    store: Store<Service>,
) -> impl futures::Stream<Item = watcher::Result<Service>> + Send + 'static {
    reflector::reflector(writer, events).flat_map(move |event| {
        let triggers: Vec<watcher::Result<Service>> = match event {
            Ok(watcher::Event::Apply(svc)) => vec![Ok(svc)],
            Ok(watcher::Event::InitDone) => store.state().iter().map(|s| Ok(Service::clone(s))).collect(),
            // A deleted Service has nothing left to release (our finalizer kept it until we had).
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::Delete(_)) => Vec::new(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(triggers)
    })
}

/// Does the leader's work until `stop` turns true (then in-flight reconciliations finish) or
/// the future is dropped (leadership lost: stop writing at once).
pub async fn lead(
    client: Client,
    appliance: ApplianceClient,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let slice_stream = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(nodes::SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .reflect(slice_writer)
    .touched_objects();
    let (synced_tx, synced_rx) = watch::channel(false);
    let reporter = Reporter {
        controller: "edgelb-agent".to_owned(),
        instance: Some(settings.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        appliance: appliance.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        settings: settings.clone(),
        slices,
        synced: synced_rx,
        sent: Mutex::default(),
        failures: Mutex::default(),
    });
    let (services, services_writer) = reflector::store::<Service>();
    let service_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let controller = Controller::for_stream(
        triggers_after_swap(service_events, services_writer, services.clone()),
        services,
    )
    .with_config(controller::Config::default().concurrency(settings.concurrency))
    .watches_stream(slice_stream, |s| {
        nodes::slice_service(&s).map(|(ns, name)| ObjectRef::new(&name).within(&ns))
    })
    .graceful_shutdown_on(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|r| {
        if let Err(e) = r {
            debug!(error = %e, "controller");
        }
        async {}
    });
    let background = {
        let ctx = ctx.clone();
        async move {
            let first = startup_sync(&ctx).await;
            let _ = synced_tx.send(true);
            health.ready.store(true, Ordering::Relaxed);
            stale_loop(&ctx, first).await;
        }
    };
    tokio::select! {
        _ = controller => {},
        _ = background => {},
        _ = node_loop(client, appliance, metrics, settings) => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn svc(name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn label(s: &Service) -> String {
        let deleting = if s.metadata.deletion_timestamp.is_some() {
            " deleting"
        } else {
            ""
        };
        format!(
            "{}@{}{deleting}",
            s.name_any(),
            s.resource_version().unwrap_or_default()
        )
    }

    /// The watch was down while `before` was deleted (it has our finalizer, so it stays, marked)
    /// and `during` was created; the re-list shows both. Every trigger is read back from the
    /// store as the controller will read it, and must be the very version that triggered it: a
    /// reconcile of `before` must see it deleting, not its copy from the first list.
    #[tokio::test]
    async fn a_relist_triggers_its_services_only_once_the_store_holds_them() {
        let (store, writer) = reflector::store::<Service>();
        let mut deleting = svc("before", "9");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let events = futures::stream::iter(vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(svc("before", "5"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(svc("before", "6"))),
            // The watch could not resume: a re-list.
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(deleting)),
            Ok(watcher::Event::InitApply(svc("during", "8"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(svc("during", "10"))),
            Ok(watcher::Event::Delete(svc("during", "11"))),
        ]);
        let mut triggers = Box::pin(triggers_after_swap(events, writer, store.clone()));
        let mut seen = Vec::new();
        while let Some(t) = triggers.next().await {
            let t = t.expect("no watch error");
            let read = store
                .get(&ObjectRef::from_obj(&t))
                .unwrap_or_else(|| panic!("{} is not in the store when it triggers", label(&t)));
            assert_eq!(label(&read), label(&t), "the controller reads what triggered it");
            seen.push(label(&t));
        }
        // Within one list's end the order is the store's.
        seen[2..4].sort();
        assert_eq!(
            seen,
            ["before@5", "before@6", "before@9 deleting", "during@8", "during@10"]
        );
    }
}
