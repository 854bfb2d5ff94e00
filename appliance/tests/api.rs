//! The REST API over real HTTPS against a real SQLite file: every endpoint, every error, roles
//! and cross-cluster isolation.

mod common;

use common::{TestAppliance, service_spec};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_service_gets_an_address_from_a_pool_over_https() {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/26"]).await;
    app.cluster("prod").await;
    let (s, v) = app
        .put(
            "/api/v1/clusters/prod/services/default/web",
            &app.admin,
            service_spec("u1"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ips"], json!(["203.0.113.0"]));
    assert_eq!(v["pool"], "public");
    app.stop().await;
}
