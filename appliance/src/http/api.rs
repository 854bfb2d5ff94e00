//! REST API handlers under `/api/v1`. Each checks the caller's role, extracts and validates its
//! input, makes one store call and answers.

use std::net::IpAddr;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgelb_api::{
    AddressEvent, Allocation, AuditEntry, Cluster, ClusterSpec, Info, NodeList, Page, Pool, PoolPatch, PoolSpec,
    Service, ServiceSpec, SyncRequest, SyncResponse, Token, TokenCreated, TokenSpec, User, UserPatch, UserSpec,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, AppState, Caller};
use crate::store::{AddressHistoryFilter, AllocationFilter, AuditFilter};

/// A JSON object body with every rejection turned into a problem document. The body is read as
/// an object first: a struct must not be read from an array of its fields by position
/// ([`edgelb_api::objects`]).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(object) = Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, state).await?;
        edgelb_api::objects::from_object(object)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("the JSON does not fit this endpoint: {e}")))
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

type ApiResult<T> = Result<T, ApiError>;

fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response()
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/info", get(info))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route(
            "/api/v1/pools/{name}",
            get(get_pool).patch(patch_pool).delete(delete_pool),
        )
        .route("/api/v1/clusters", get(list_clusters).post(create_cluster))
        .route("/api/v1/clusters/{cluster}", get(get_cluster).delete(delete_cluster))
        .route("/api/v1/clusters/{cluster}/services", get(list_services))
        .route(
            "/api/v1/clusters/{cluster}/services/{namespace}/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/api/v1/clusters/{cluster}/nodes", get(get_nodes).put(put_nodes))
        .route("/api/v1/clusters/{cluster}/sync", post(sync))
        .route("/api/v1/allocations", get(list_allocations))
        .route("/api/v1/address-history", get(address_history))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route(
            "/api/v1/users/{name}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/api/v1/audit", get(list_audit))
}

/// Who the caller is and what runs here.
#[utoipa::path(get, path = "/api/v1/info", tag = "appliance", responses((status = 200, body = Info)))]
pub async fn info(State(s): State<AppState>, caller: Caller) -> Json<Info> {
    // A store that does not answer is what this says, not an error of the request.
    let _ = s.store.ping().await;
    Json(Info {
        version: s.info.version.clone(),
        dataplane: s.info.dataplane.clone(),
        actor: caller.0.actor,
        role: caller.0.role,
        store: store_info(&s.store.health()),
    })
}

/// The wire form of the store's last check.
pub fn store_info(h: &crate::store::StoreHealth) -> edgelb_api::StoreInfo {
    edgelb_api::StoreInfo {
        kind: h.kind.to_owned(),
        location: h.location.clone(),
        answering: h.answering,
        latency_ms: h.latency.map(|d| d.as_secs_f64() * 1000.0),
        last_error: h.last_error.clone(),
        errors: h.errors,
    }
}

// ---- pools ----

/// Every pool with its usage, highest priority first.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools", responses((status = 200, body = [Pool])))]
pub async fn list_pools(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Pool>>> {
    caller.can_read("read pools")?;
    Ok(Json(s.store.list_pools().await?))
}

/// Creates a pool. Overlapping another pool is a 409 naming it.
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = PoolSpec,
    responses((status = 201, body = Pool), (status = 400, body = edgelb_api::Problem), (status = 409, body = edgelb_api::Problem)))]
pub async fn create_pool(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> ApiResult<Response> {
    caller.can_operate("create pools")?;
    let pool = s.store.create_pool(caller.actor(), spec).await?;
    Ok(created(format!("/api/v1/pools/{}", pool.spec.name), pool))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = Pool), (status = 404, body = edgelb_api::Problem)))]
pub async fn get_pool(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Pool>> {
    caller.can_read("read pools")?;
    Ok(Json(s.store.get_pool(&name).await?))
}

/// Changes some fields of a pool. Ranges that would leave out addresses in use are a 409.
#[utoipa::path(patch, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path)), request_body = PoolPatch,
    responses((status = 200, body = Pool), (status = 404, body = edgelb_api::Problem), (status = 409, body = edgelb_api::Problem)))]
pub async fn patch_pool(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<PoolPatch>,
) -> ApiResult<Json<Pool>> {
    caller.can_operate("change pools")?;
    Ok(Json(s.store.patch_pool(caller.actor(), &name, patch).await?))
}

/// Deletes a pool; refused (409, listing them) while it holds addresses.
#[utoipa::path(delete, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = edgelb_api::Problem), (status = 409, body = edgelb_api::Problem)))]
pub async fn delete_pool(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.can_operate("delete pools")?;
    s.store.delete_pool(caller.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- clusters ----

#[utoipa::path(get, path = "/api/v1/clusters", tag = "clusters", responses((status = 200, body = [Cluster])))]
pub async fn list_clusters(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Cluster>>> {
    caller.can_read("list clusters")?;
    Ok(Json(s.store.list_clusters().await?))
}

#[utoipa::path(post, path = "/api/v1/clusters", tag = "clusters", request_body = ClusterSpec,
    responses((status = 201, body = Cluster), (status = 409, body = edgelb_api::Problem)))]
pub async fn create_cluster(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<ClusterSpec>,
) -> ApiResult<Response> {
    caller.can_operate("create clusters")?;
    let c = s.store.create_cluster(caller.actor(), spec).await?;
    Ok(created(format!("/api/v1/clusters/{}", c.name), c))
}

#[utoipa::path(get, path = "/api/v1/clusters/{cluster}", tag = "clusters", params(("cluster" = String, Path)),
    responses((status = 200, body = Cluster), (status = 404, body = edgelb_api::Problem)))]
pub async fn get_cluster(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
) -> ApiResult<Json<Cluster>> {
    caller.can_cluster(&cluster, false, "read clusters")?;
    Ok(Json(s.store.get_cluster(&cluster).await?))
}

/// Deletes a cluster without Services; its nodes and agent tokens go with it.
#[utoipa::path(delete, path = "/api/v1/clusters/{cluster}", tag = "clusters", params(("cluster" = String, Path)),
    responses((status = 204), (status = 409, body = edgelb_api::Problem)))]
pub async fn delete_cluster(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.can_operate("delete clusters")?;
    s.store.delete_cluster(caller.actor(), &cluster).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- services ----

#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/services", tag = "services", params(("cluster" = String, Path)),
    responses((status = 200, body = [Service])))]
pub async fn list_services(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
) -> ApiResult<Json<Vec<Service>>> {
    caller.can_cluster(&cluster, false, "read services")?;
    s.store.get_cluster(&cluster).await?;
    Ok(Json(s.store.list_services(Some(&cluster)).await?))
}

#[derive(Deserialize)]
pub struct ServicePath {
    cluster: String,
    namespace: String,
    name: String,
}

/// Stores a Service's spec and allocates its addresses; asking again answers the same.
#[utoipa::path(put, path = "/api/v1/clusters/{cluster}/services/{namespace}/{name}", tag = "services",
    params(("cluster" = String, Path), ("namespace" = String, Path), ("name" = String, Path)), request_body = ServiceSpec,
    responses((status = 200, body = Service), (status = 400, body = edgelb_api::Problem), (status = 404, body = edgelb_api::Problem),
        (status = 409, description = "address taken, pool exhausted or ports collide on a shared address", body = edgelb_api::Problem),
        (status = 422, description = "requested address outside every allowed pool, or no pool fits", body = edgelb_api::Problem)))]
pub async fn put_service(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ServicePath>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> ApiResult<Json<Service>> {
    caller.can_cluster(&p.cluster, true, "change services")?;
    Ok(Json(
        s.store
            .put_service(caller.actor(), &p.cluster, &p.namespace, &p.name, spec)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/services/{namespace}/{name}", tag = "services",
    params(("cluster" = String, Path), ("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Service), (status = 404, body = edgelb_api::Problem)))]
pub async fn get_service(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ServicePath>,
) -> ApiResult<Json<Service>> {
    caller.can_cluster(&p.cluster, false, "read services")?;
    Ok(Json(s.store.get_service(&p.cluster, &p.namespace, &p.name).await?))
}

/// Releases a Service's addresses (each held for it for its pool's hold period) and answers
/// with what it had.
#[utoipa::path(delete, path = "/api/v1/clusters/{cluster}/services/{namespace}/{name}", tag = "services",
    params(("cluster" = String, Path), ("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Service), (status = 404, body = edgelb_api::Problem)))]
pub async fn delete_service(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ServicePath>,
) -> ApiResult<Json<Service>> {
    caller.can_cluster(&p.cluster, true, "release services")?;
    Ok(Json(
        s.store
            .delete_service(caller.actor(), &p.cluster, &p.namespace, &p.name)
            .await?,
    ))
}

// ---- nodes and sync ----

/// Replaces the cluster's whole node list.
#[utoipa::path(put, path = "/api/v1/clusters/{cluster}/nodes", tag = "nodes", params(("cluster" = String, Path)),
    request_body = NodeList, responses((status = 200, body = NodeList), (status = 400, body = edgelb_api::Problem)))]
pub async fn put_nodes(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(list): ApiJson<NodeList>,
) -> ApiResult<Json<NodeList>> {
    caller.can_cluster(&cluster, true, "change nodes")?;
    Ok(Json(s.store.put_nodes(caller.actor(), &cluster, list).await?))
}

#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/nodes", tag = "nodes", params(("cluster" = String, Path)),
    responses((status = 200, body = NodeList)))]
pub async fn get_nodes(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
) -> ApiResult<Json<NodeList>> {
    caller.can_cluster(&cluster, false, "read nodes")?;
    Ok(Json(s.store.get_nodes(&cluster).await?))
}

/// The agent's complete list of Services: reserves the addresses in their status and reports
/// which Services the appliance holds that the list lacks. Deletes nothing.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/sync", tag = "services", params(("cluster" = String, Path)),
    request_body = SyncRequest, responses((status = 200, body = SyncResponse)))]
pub async fn sync(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<SyncRequest>,
) -> ApiResult<Json<SyncResponse>> {
    caller.can_cluster(&cluster, true, "sync services")?;
    Ok(Json(s.store.sync(caller.actor(), &cluster, req).await?))
}

// ---- allocations ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllocationQuery {
    pool: Option<String>,
    cluster: Option<String>,
    namespace: Option<String>,
    /// Service name.
    service: Option<String>,
    #[param(value_type = Option<edgelb_api::schema::IpAddress>)]
    ip: Option<IpAddr>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-f]{32}$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Addresses in use or held, in address order, a page at a time.
#[utoipa::path(get, path = "/api/v1/allocations", tag = "allocations", params(AllocationQuery),
    responses((status = 200, body = Page<Allocation>)))]
pub async fn list_allocations(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AllocationQuery>,
) -> ApiResult<Json<Page<Allocation>>> {
    caller.can_read("list allocations")?;
    check_limit(q.limit)?;
    // What this answer's `next_cursor` gives: an address as 32 lowercase hex digits.
    if q.cursor
        .as_deref()
        .is_some_and(|c| c.len() != 32 || !c.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(ApiError::bad_request("cursor is not one from a previous page"));
    }
    let filter = AllocationFilter {
        pool: q.pool,
        cluster: q.cluster,
        namespace: q.namespace,
        service: q.service,
        ip: q.ip,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(s.store.list_allocations(&filter).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AddressHistoryQuery {
    /// One address.
    #[param(value_type = Option<edgelb_api::schema::IpAddress>)]
    ip: Option<IpAddr>,
    cluster: Option<String>,
    namespace: Option<String>,
    /// A Service's name: every address it used, held or was held.
    service: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// What happened to addresses, newest first: who held an address, when it was assigned,
/// released, held back, reused and freed. For one IP (`ip`), a Service (`service`, with
/// `namespace` and `cluster` to narrow it), or all.
#[utoipa::path(get, path = "/api/v1/address-history", tag = "allocations", params(AddressHistoryQuery),
    responses((status = 200, body = Page<AddressEvent>)))]
pub async fn address_history(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AddressHistoryQuery>,
) -> ApiResult<Json<Page<AddressEvent>>> {
    caller.can_read("read the address history")?;
    check_limit(q.limit)?;
    let filter = AddressHistoryFilter {
        ip: q.ip,
        cluster: q.cluster,
        namespace: q.namespace,
        service: q.service,
        cursor: id_cursor(q.cursor.as_deref())?,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(s.store.address_history(&filter).await?))
}

// ---- tokens ----

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = [Token])))]
pub async fn list_tokens(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Token>>> {
    caller.can_admin("list tokens")?;
    Ok(Json(s.store.list_tokens().await?))
}

/// Creates a token. Its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = TokenSpec,
    responses((status = 201, body = TokenCreated), (status = 400, body = edgelb_api::Problem),
        (status = 422, description = "the agent token's cluster does not exist", body = edgelb_api::Problem)))]
pub async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<TokenSpec>,
) -> ApiResult<Response> {
    caller.can_admin("create tokens")?;
    let t = s.store.create_token(caller.actor(), spec).await?;
    Ok(created(format!("/api/v1/tokens/{}", t.token.id), t))
}

/// Revokes a token: it stops working at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = edgelb_api::Problem)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.can_admin("revoke tokens")?;
    s.store.revoke_token(caller.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users ----

/// Console users, by name.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = [User])))]
pub async fn list_users(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.can_admin("list users")?;
    Ok(Json(s.store.list_users().await?))
}

/// Creates a console user. The password is stored only as a hash, and never logged or audited.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserSpec,
    responses((status = 201, body = User), (status = 400, body = edgelb_api::Problem),
        (status = 409, description = "a user of that name exists", body = edgelb_api::Problem)))]
pub async fn create_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<UserSpec>,
) -> ApiResult<Response> {
    caller.can_admin("create users")?;
    s.store
        .create_user(caller.actor(), &spec.name, &spec.password, spec.role.into())
        .await?;
    let user = s.store.get_user(&spec.name).await?;
    Ok(created(format!("/api/v1/users/{}", user.name), user))
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = edgelb_api::Problem)))]
pub async fn get_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<User>> {
    caller.can_admin("read users")?;
    Ok(Json(s.store.get_user(&name).await?))
}

/// Changes a user's role or password. A new password ends the user's console sessions; a new
/// role applies to them at once. The last admin stays an admin.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)), request_body = UserPatch,
    responses((status = 200, body = User), (status = 400, body = edgelb_api::Problem), (status = 404, body = edgelb_api::Problem),
        (status = 409, description = "the change would leave no admin", body = edgelb_api::Problem)))]
pub async fn patch_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> ApiResult<Json<User>> {
    caller.can_admin("change users")?;
    Ok(Json(s.store.update_user(caller.actor(), &name, patch, None).await?))
}

/// Deletes a console user and ends their sessions. The last admin cannot be deleted.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = edgelb_api::Problem),
        (status = 409, description = "the user is the last admin", body = edgelb_api::Problem)))]
pub async fn delete_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.can_admin("delete users")?;
    s.store.delete_user(caller.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `user:alice`, `token:ci` (every token named ci) or `token:ci/<id>` (one token).
    actor: Option<String>,
    /// An object (`pool/public`), everything below one (`service/prod`), or a kind (`pool`).
    object: Option<String>,
    /// Entries at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Entries at or before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn check_limit(limit: Option<u32>) -> ApiResult<()> {
    if limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    Ok(())
}

/// A cursor that is an entry's id in decimal digits (what the audit log's and the address
/// history's `next_cursor` give).
fn id_cursor(cursor: Option<&str>) -> ApiResult<Option<i64>> {
    cursor
        .map(|c| {
            Some(c)
                .filter(|c| (1..=18).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<i64>().ok())
                .ok_or_else(|| ApiError::bad_request("cursor is not one from a previous page"))
        })
        .transpose()
}

fn parse_time(field: &str, v: Option<&str>) -> ApiResult<Option<i64>> {
    v.map(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|_| ApiError::bad_request(format!("{field} must be an RFC 3339 time like 2026-11-26T10:00:00Z")))
    })
    .transpose()
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = Page<AuditEntry>)))]
pub async fn list_audit(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    caller.can_read("read the audit log")?;
    check_limit(q.limit)?;
    let cursor = id_cursor(q.cursor.as_deref())?;
    let filter = AuditFilter {
        actor: q.actor,
        object: q.object,
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        cursor,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(s.store.list_audit(&filter).await?))
}
