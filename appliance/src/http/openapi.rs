//! The OpenAPI document (`/api/v1/openapi.json`) and Swagger UI (`/api/docs/`), from vendored
//! assets: nothing is fetched from the internet, at build time or at run time.

use axum::Router;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::Object;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;
use super::{api, history, status};

#[derive(OpenApi)]
#[openapi(
    info(title = "edgelb appliance API", description = "IP pools, Services and their external addresses, nodes, tokens, console users and the audit log. \
        Errors are application/problem+json with a `detail` that says what to fix."),
    paths(
        api::info,
        api::list_pools, api::create_pool, api::get_pool, api::patch_pool, api::delete_pool,
        api::list_clusters, api::create_cluster, api::get_cluster, api::delete_cluster,
        api::list_services, api::put_service, api::get_service, api::delete_service,
        api::put_nodes, api::get_nodes, api::sync,
        api::list_allocations, api::address_history,
        api::list_tokens, api::create_token, api::revoke_token,
        api::list_users, api::create_user, api::get_user, api::patch_user, api::delete_user,
        api::list_audit,
        status::service_status,
        history::appliance_history, history::pool_history, history::service_history,
    ),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every operation can answer besides its own outcomes, added here once so no operation
/// forgets one: the caller's 401 and 403, 400 for a malformed path, query or body, 404 for a path
/// naming nothing, 413 and 415 for a body too large or not JSON, 408 past the request timeout,
/// 500 when the store fails. Every error is `application/problem+json` (RFC 9457), and every
/// path parameter is a name of the shape the API stores.
struct CommonResponses;

const PROBLEM: &str = "application/problem+json";

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        merge_all_of(openapi);
        link_created(openapi);
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                add_common(op);
            }
        }
    }
}

/// A response type that flattens a request type (`Pool` holds a `PoolSpec`) is documented by
/// utoipa as `allOf` both; the request type refuses unknown fields (`additionalProperties:
/// false`), so no answer could match its own schema. Each such `allOf` becomes one object with
/// the properties of all its parts.
fn merge_all_of(openapi: &mut utoipa::openapi::OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    let schemas = &mut components.schemas;
    let mut merged = Vec::new();
    'schemas: for (name, schema) in schemas.iter() {
        let RefOr::T(Schema::AllOf(all)) = schema else { continue };
        let mut object = Object::with_type(Type::Object);
        object.description = all.description.clone();
        for part in &all.items {
            let part = match part {
                RefOr::T(s) => Some(s),
                RefOr::Ref(r) => match r.ref_location.rsplit('/').next().and_then(|n| schemas.get(n)) {
                    Some(RefOr::T(s)) => Some(s),
                    _ => None,
                },
            };
            let Some(Schema::Object(part)) = part else {
                continue 'schemas;
            };
            object.properties.extend(part.properties.clone());
            object.required.extend(part.required.iter().cloned());
        }
        merged.push((name.clone(), object));
    }
    for (name, object) in merged {
        schemas.insert(name, Schema::Object(object).into());
    }
}

/// What a create answers (201) links to the operations on what it created, with the path
/// parameter taken from its body: a client (or a fuzzer's stateful phase) can follow them.
fn link_created(openapi: &mut utoipa::openapi::OpenApi) {
    // (collection, parameter, where the answer has it)
    let creates = [
        ("/api/v1/pools", "name", "$response.body#/name"),
        ("/api/v1/clusters", "cluster", "$response.body#/name"),
        ("/api/v1/tokens", "id", "$response.body#/id"),
        ("/api/v1/users", "name", "$response.body#/name"),
    ];
    let mut links = Vec::new();
    for (collection, param, from) in creates {
        let prefix = format!("{collection}/{{{param}}}");
        for (path, item) in &openapi.paths.paths {
            if !path.starts_with(&prefix) {
                continue;
            }
            let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
            for id in ops.into_iter().flatten().filter_map(|op| op.operation_id.clone()) {
                let link = LinkBuilder::new().operation_id(&id).parameter(param, from).build();
                links.push((collection, id, link));
            }
        }
    }
    for (collection, id, link) in links {
        let Some(RefOr::T(response)) = openapi
            .paths
            .paths
            .get_mut(collection)
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.responses.responses.get_mut("201"))
        else {
            continue;
        };
        response.links.insert(id, link.into());
    }
}

fn add_common(op: &mut Operation) {
    let has_body = op.request_body.is_some();
    let mut in_path = false;
    let mut has_params = false;
    for p in op.parameters.iter_mut().flatten() {
        let RefOr::T(p) = p else { continue };
        has_params = true;
        if p.parameter_in == ParameterIn::Path {
            in_path = true;
            p.schema = Some(path_schema(&p.name).into());
        }
    }
    let mut common = vec![
        (
            "401",
            "No valid bearer token: the header is missing or malformed, or the token is unknown or revoked.",
        ),
        (
            "403",
            "The token's role (or its cluster, for an agent token) does not allow this.",
        ),
        ("408", "The request took longer than 30 seconds and was abandoned."),
        ("500", "The store failed; the detail says how. Nothing was changed."),
    ];
    if has_body || has_params {
        common.push((
            "400",
            "The request is malformed or a field is invalid; `errors` names each field to fix.",
        ));
    }
    if in_path {
        common.push(("404", "The path names nothing that exists."));
    }
    if has_body {
        common.push(("413", "The body is larger than 1 MiB."));
        common.push(("415", "The body is not `Content-Type: application/json`."));
    }
    let responses = &mut op.responses.responses;
    for (status, text) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(text).into());
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if status.starts_with('4') || status.starts_with('5') {
            as_problem(response);
        } else if status == "201" {
            response.headers.insert(
                "Location".into(),
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some("The path of what was created."))
                    .build()
                    .into(),
            );
        }
    }
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// An error response whose body utoipa documented as `application/json` is served as
/// `application/problem+json`.
fn as_problem(response: &mut Response) {
    if let Some(content) = response.content.shift_remove("application/json") {
        response.content.insert(PROBLEM.to_owned(), content);
    }
    if response.content.is_empty() {
        response.content.insert(
            PROBLEM.to_owned(),
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
                .into(),
        );
    }
}

/// The schema of a path parameter: a token's id, or a name (pool, cluster, Kubernetes namespace
/// or Service: all DNS labels).
fn path_schema(name: &str) -> Schema {
    let (pattern, max) = match name {
        "id" => ("^[0-9a-f]{12}$", 12),
        _ => (edgelb_api::NAME_PATTERN, 63),
    };
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .into()
}

pub fn routes() -> Router<AppState> {
    Router::from(SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", ApiDoc::openapi()))
}
