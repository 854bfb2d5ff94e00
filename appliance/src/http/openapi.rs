//! The OpenAPI document (`/api/v1/openapi.json`) and Swagger UI (`/api/docs/`), from vendored
//! assets: nothing is fetched from the internet, at build time or at run time.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;
use super::{api, status};

#[derive(OpenApi)]
#[openapi(
    info(title = "edgelb appliance API", description = "IP pools, Services and their external addresses, nodes, tokens and the audit log. \
        Errors are application/problem+json with a `detail` that says what to fix."),
    paths(
        api::info,
        api::list_pools, api::create_pool, api::get_pool, api::patch_pool, api::delete_pool,
        api::list_clusters, api::create_cluster, api::get_cluster, api::delete_cluster,
        api::list_services, api::put_service, api::get_service, api::delete_service,
        api::put_nodes, api::get_nodes, api::sync,
        api::list_allocations,
        api::list_tokens, api::create_token, api::revoke_token,
        api::list_audit,
        status::service_status,
    ),
    modifiers(&BearerAuth),
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

pub fn routes() -> Router<AppState> {
    Router::from(SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", ApiDoc::openapi()))
}
