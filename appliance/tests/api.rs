//! The REST API over real HTTPS against a real SQLite file: every endpoint, every error, roles
//! and cross-cluster isolation.
//!
//! Each test starts its own appliance, so tests share nothing and run in any order. Errors are
//! checked for their status *and* their content: an `application/problem+json` document whose
//! `detail` tells the client what to fix.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Body, Reply, TestAppliance, assert_problem, service_spec};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

// ---- helpers ----

async fn get(app: &TestAppliance, path: &str, token: &str) -> Reply {
    app.send(Method::GET, path, token, Body::None).await
}

async fn post(app: &TestAppliance, path: &str, token: &str, body: Value) -> Reply {
    app.send(Method::POST, path, token, Body::Json(body)).await
}

async fn put(app: &TestAppliance, path: &str, token: &str, body: Value) -> Reply {
    app.send(Method::PUT, path, token, Body::Json(body)).await
}

async fn patch(app: &TestAppliance, path: &str, token: &str, body: Value) -> Reply {
    app.send(Method::PATCH, path, token, Body::Json(body)).await
}

async fn delete(app: &TestAppliance, path: &str, token: &str) -> Reply {
    app.send(Method::DELETE, path, token, Body::None).await
}

fn svc(cluster: &str, namespace: &str, name: &str) -> String {
    format!("/api/v1/clusters/{cluster}/services/{namespace}/{name}")
}

/// `service_spec(uid)` with the fields of `extra` set over it.
fn spec_with(uid: &str, extra: Value) -> Value {
    let mut spec = service_spec(uid);
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

/// A spec with one TCP port (node port derived from it).
fn spec_port(uid: &str, port: u16, extra: Value) -> Value {
    let mut extra = extra;
    extra["ports"] = json!([{"name": "p", "protocol": "TCP", "port": port, "node_port": 30000 + port % 2000}]);
    spec_with(uid, extra)
}

/// An appliance with pool `public` (203.0.113.0/26, 64 addresses) and cluster `prod`.
async fn with_pool_and_cluster() -> TestAppliance {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/26"]).await;
    app.cluster("prod").await;
    app
}

/// PUTs a Service as admin and returns its answer, asserting 200.
async fn put_service(app: &TestAppliance, cluster: &str, namespace: &str, name: &str, spec: Value) -> Value {
    let r = put(app, &svc(cluster, namespace, name), &app.admin, spec).await;
    assert_eq!(r.status, StatusCode::OK, "PUT {cluster}/{namespace}/{name}: {}", r.text);
    r.json
}

fn ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i.as_str().expect("ip").to_owned())
        .collect()
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().expect("items").clone()
}

fn field_names(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| a.iter().map(|e| e["field"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

async fn allocations(app: &TestAppliance, query: &str) -> Vec<Value> {
    let r = get(app, &format!("/api/v1/allocations{query}"), &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    items(&r.json)
}

async fn audit(app: &TestAppliance, query: &str) -> Vec<Value> {
    let r = get(app, &format!("/api/v1/audit{query}"), &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    items(&r.json)
}

fn names_of(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect()
}

// ---- pools ----

#[tokio::test]
async fn creating_a_pool_answers_201_with_its_location_defaults_and_usage() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "public", "ranges": ["203.0.113.0/26", "203.0.113.100-203.0.113.120"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/pools/public"));
    assert!(r.content_type().starts_with("application/json"), "{}", r.content_type());
    let p = &r.json;
    assert_eq!(p["name"], "public");
    assert_eq!(p["ranges"], json!(["203.0.113.0/26", "203.0.113.100-203.0.113.120"]));
    assert_eq!(p["auto_assign"], true);
    assert_eq!(p["avoid_buggy_ips"], false);
    assert_eq!(p["priority"], 0);
    assert_eq!(p["scheduler"], "wlc");
    assert_eq!(p["hold_seconds"], 600);
    assert_eq!(p["usage"]["total"], "85");
    assert_eq!(p["usage"]["allocated"], 0);
    assert_eq!(p["usage"]["free"], "85");

    let one = get(&app, "/api/v1/pools/public", &app.admin).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json, r.json);
    let list = get(&app, "/api/v1/pools", &app.admin).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json, json!([r.json]));
    app.stop().await;
}

#[tokio::test]
async fn pools_are_listed_by_priority_and_patch_changes_it() {
    let app = TestAppliance::start().await;
    app.pool("a", &["10.0.0.0/24"]).await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "b", "ranges": ["10.0.1.0/24"], "priority": 5}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["b", "a"]);

    let r = patch(&app, "/api/v1/pools/a", &app.admin, json!({"priority": 10})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["priority"], 10);
    assert_eq!(r.json["ranges"], json!(["10.0.0.0/24"]), "untouched fields stay");
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["a", "b"]);
    app.stop().await;
}

#[tokio::test]
async fn patch_grows_a_pool_and_its_usage_follows_while_allocations_stay() {
    let app = with_pool_and_cluster().await;
    let web = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let r = patch(
        &app,
        "/api/v1/pools/public",
        &app.admin,
        json!({"ranges": ["203.0.113.0/25", "2001:db8:5::/120"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["ranges"], json!(["203.0.113.0/25", "2001:db8:5::/120"]));
    assert_eq!(r.json["usage"]["total"], "384");
    assert_eq!(r.json["usage"]["allocated"], 1);
    assert_eq!(r.json["usage"]["free"], "383");
    let again = get(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_eq!(ips(&again.json), ips(&web));
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_pool_answers_204_and_it_is_gone() {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/26"]).await;
    let r = delete(&app, "/api/v1/pools/public", &app.admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.text.is_empty(), "{}", r.text);
    let r = get(&app, "/api/v1/pools/public", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["pool 'public' does not exist"]);
    let r = delete(&app, "/api/v1/pools/public", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["pool 'public' does not exist"]);
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_pool_is_404() {
    let app = TestAppliance::start().await;
    let r = get(&app, "/api/v1/pools/nope", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["pool 'nope' does not exist"]);
    let r = patch(&app, "/api/v1/pools/nope", &app.admin, json!({"priority": 1})).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["pool 'nope' does not exist"]);
    app.stop().await;
}

#[tokio::test]
async fn an_overlapping_pool_is_409_naming_the_other_pool_and_nothing_is_written() {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/26"]).await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "other", "ranges": ["198.51.100.0/24", "203.0.113.60-203.0.113.70"]}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["203.0.113.60-203.0.113.70", "overlaps", "pool 'public'"],
    );
    assert_eq!(
        get(&app, "/api/v1/pools/other", &app.admin).await.status,
        StatusCode::NOT_FOUND
    );

    // Growing into another pool is refused the same way.
    app.pool("other", &["198.51.100.0/24"]).await;
    let r = patch(
        &app,
        "/api/v1/pools/other",
        &app.admin,
        json!({"ranges": ["198.51.100.0/24", "203.0.113.0/25"]}),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, &["pool 'public'"]);
    let r = get(&app, "/api/v1/pools/other", &app.admin).await;
    assert_eq!(r.json["ranges"], json!(["198.51.100.0/24"]));

    // And a second pool of the same name.
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "public", "ranges": ["192.0.2.0/24"]}),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, &["pool 'public' already exists"]);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_pool_is_400_naming_every_field_at_once() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({
            "name": "Bad_Name",
            "ranges": ["203.0.113.0/26", "10.0.0.1/24", "not-an-ip", "10.1.0.9-10.1.0.1"],
            "scheduler": "fastest",
            "hold_seconds": 99_999_999,
        }),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["6 field(s)", "ranges[1]", "ranges[3]"]);
    assert_eq!(
        field_names(&p),
        [
            "name",
            "ranges[1]",
            "ranges[2]",
            "ranges[3]",
            "scheduler",
            "hold_seconds"
        ]
    );
    let msg = |i: usize| p["errors"][i]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg(1).contains("did you mean '10.0.0.0/24'"), "{}", msg(1));
    assert!(msg(3).contains("write '10.1.0.1-10.1.0.9'"), "{}", msg(3));
    assert!(
        msg(4).contains("wlc"),
        "the scheduler message lists the valid ones: {}",
        msg(4)
    );

    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "empty", "ranges": []}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["at least one"]);
    assert_eq!(field_names(&p), ["ranges"]);

    let r = patch(&app, "/api/v1/pools/nope", &app.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.pool("ok", &["192.0.2.0/24"]).await;
    let r = patch(
        &app,
        "/api/v1/pools/ok",
        &app.admin,
        json!({"ranges": ["192.0.2.0/24", "bogus"]}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["ranges[1]"]);
    assert_eq!(field_names(&p), ["ranges[1]"]);
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["ok"]);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_json_field_is_refused_naming_the_field() {
    let app = with_pool_and_cluster().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "p", "ranges": ["10.0.0.0/24"], "prio": 3}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["unknown field `prio`"]);
    let r = patch(&app, "/api/v1/pools/public", &app.admin, json!({"priorty": 1})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["unknown field `priorty`"]);
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        spec_with("u1", json!({"externalTrafficPolicy": "Local"})),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["unknown field `externalTrafficPolicy`"]);
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        json!({"uid": "u1", "ports": [{"protocol": "TCP", "port": 80, "nodePort": 30080}]}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["nodePort"]);
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["public"]);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestAppliance::start().await;
    let r = app
        .send(
            Method::POST,
            "/api/v1/pools",
            &app.admin,
            Body::Raw("application/json", br#"{"name": "p", "ranges": ["#.to_vec()),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["not valid JSON"]);
    let r = app
        .send(
            Method::POST,
            "/api/v1/pools",
            &app.admin,
            Body::Raw("application/json", br#"{"name": 7, "ranges": "x"}"#.to_vec()),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["name"]);
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_415() {
    let app = TestAppliance::start().await;
    let body = br#"{"name": "p", "ranges": ["10.0.0.0/24"]}"#.to_vec();
    let r = app
        .send(
            Method::POST,
            "/api/v1/pools",
            &app.admin,
            Body::Raw("text/plain", body.clone()),
        )
        .await;
    assert_problem(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &["Content-Type: application/json"],
    );
    let r = app
        .send(Method::POST, "/api/v1/pools", &app.admin, Body::Raw("", body))
        .await;
    assert_problem(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &["Content-Type: application/json"],
    );
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_1_mib_is_413() {
    let app = TestAppliance::start().await;
    let big = "x".repeat(1024 * 1024 + 1);
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "big", "ranges": ["10.0.0.0/24", big]}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        &["larger than the limit of 1048576 bytes"],
    );
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_error_for_a_large_body_stays_small_and_still_says_what_to_fix() {
    const NEAR_LIMIT: usize = 1000 * 1000;
    const BOUND: usize = 16 * 1024;
    let app = with_pool_and_cluster().await;
    let long = "x".repeat(NEAR_LIMIT);
    let many = vec![Value::from("x"); NEAR_LIMIT / 5];
    // Each about 115 bytes: under the limit in all.
    let many_nodes = vec![node("Not A Name!", "10.1.0.1"); NEAR_LIMIT / 130];
    let cases = [
        (
            "/api/v1/pools",
            json!({"name": long, "ranges": ["10.9.0.0/24"]}),
            "name",
        ),
        ("/api/v1/pools", json!({"name": "p", "ranges": many}), "ranges[1]"),
        ("/api/v1/pools", json!({"name": "p", "ranges": [long]}), "ranges[0]"),
        (
            "/api/v1/pools",
            json!({"name": "p", "ranges": ["10.9.0.0/24"], "scheduler": long}),
            "scheduler",
        ),
        ("/api/v1/pools", json!({"name": "p", long.as_str(): 1}), "unknown field"),
        ("/api/v1/clusters/prod/nodes", json!({"nodes": many_nodes}), "nodes[1]"),
    ];
    for (path, body, what) in cases {
        let r = match path {
            "/api/v1/pools" => post(&app, path, &app.admin, body).await,
            _ => put(&app, path, &app.admin, body).await,
        };
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} ({what}): {}",
            &r.text[..r.text.len().min(500)]
        );
        assert_problem(&r, StatusCode::BAD_REQUEST, &[what]);
        assert!(
            r.text.len() < BOUND,
            "{path} ({what}): an error of {} bytes for a body of about {NEAR_LIMIT}",
            r.text.len()
        );
    }
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["public"]);
    app.stop().await;
}

#[tokio::test]
async fn shrinking_a_pool_below_an_allocated_address_is_409_listing_it_and_changes_nothing() {
    let app = with_pool_and_cluster().await;
    put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with("u1", json!({"requested_ips": ["203.0.113.40"]})),
    )
    .await;
    let before = get(&app, "/api/v1/pools/public", &app.admin).await.json;
    let r = patch(
        &app,
        "/api/v1/pools/public",
        &app.admin,
        json!({"ranges": ["203.0.113.0/27"], "priority": 7}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["leave out", "203.0.113.40", "Service prod/default/web"],
    );
    let after = get(&app, "/api/v1/pools/public", &app.admin).await.json;
    assert_eq!(after, before, "a refused patch changes nothing, not even the priority");
    assert_eq!(after["ranges"], json!(["203.0.113.0/26"]));

    // Shrinking to ranges that keep the address is fine.
    let r = patch(
        &app,
        "/api/v1/pools/public",
        &app.admin,
        json!({"ranges": ["203.0.113.32/27"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["usage"]["total"], "32");
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_pool_with_allocations_is_409_listing_them() {
    let app = with_pool_and_cluster().await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    put_service(&app, "prod", "shop", "cart", service_spec("u2")).await;
    let r = delete(&app, "/api/v1/pools/public", &app.admin).await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &[
            "2 address(es)",
            "203.0.113.0 (Service prod/default/web)",
            "203.0.113.1 (Service prod/shop/cart)",
            "release them first",
        ],
    );
    assert_eq!(
        get(&app, "/api/v1/pools/public", &app.admin).await.status,
        StatusCode::OK
    );

    // A released address is still held for its Service: the pool keeps refusing.
    assert_eq!(
        delete(&app, &svc("prod", "default", "web"), &app.admin).await.status,
        StatusCode::OK
    );
    assert_eq!(
        delete(&app, &svc("prod", "shop", "cart"), &app.admin).await.status,
        StatusCode::OK
    );
    let r = delete(&app, "/api/v1/pools/public", &app.admin).await;
    assert_problem(&r, StatusCode::CONFLICT, &["held for Service prod/default/web"]);
    app.stop().await;
}

#[tokio::test]
async fn a_pool_without_hold_period_can_be_deleted_once_its_services_are_gone() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "quick", "ranges": ["203.0.113.0/29"], "hold_seconds": 0}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.cluster("prod").await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    assert_eq!(
        delete(&app, "/api/v1/pools/quick", &app.admin).await.status,
        StatusCode::CONFLICT
    );
    delete(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert!(allocations(&app, "").await.is_empty());
    assert_eq!(
        delete(&app, "/api/v1/pools/quick", &app.admin).await.status,
        StatusCode::NO_CONTENT
    );
    app.stop().await;
}

#[tokio::test]
async fn an_ipv6_64_pool_counts_two_to_the_64_addresses() {
    let app = TestAppliance::start().await;
    let p = app.pool("v6", &["2001:db8:1::/64"]).await;
    assert_eq!(p["usage"]["total"], "18446744073709551616");
    assert_eq!(p["usage"]["free"], "18446744073709551616");
    app.cluster("prod").await;
    let s = put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with("u1", json!({"ip_families": ["IPv6"]})),
    )
    .await;
    assert_eq!(ips(&s), ["2001:db8:1::"]);
    let p = get(&app, "/api/v1/pools/v6", &app.admin).await.json;
    assert_eq!(p["usage"]["total"], "18446744073709551616");
    assert_eq!(p["usage"]["allocated"], 1);
    assert_eq!(p["usage"]["free"], "18446744073709551615");
    app.stop().await;
}

// ---- clusters ----

#[tokio::test]
async fn clusters_are_created_read_listed_and_deleted() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/clusters",
        &app.admin,
        json!({"name": "prod", "description": "main"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/clusters/prod"));
    assert_eq!(r.json["name"], "prod");
    assert_eq!(r.json["description"], "main");
    assert_eq!(r.json["services"], 0);
    assert_eq!(r.json["nodes"], 0);
    assert_eq!(r.json["last_contact"], Value::Null);
    app.cluster("stage").await;

    let one = get(&app, "/api/v1/clusters/prod", &app.admin).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json, r.json);
    let list = get(&app, "/api/v1/clusters", &app.admin).await;
    assert_eq!(names_of(&list.json), ["prod", "stage"]);

    let r = delete(&app, "/api/v1/clusters/stage", &app.admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get(&app, "/api/v1/clusters/stage", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'stage' does not exist"]);
    let r = delete(&app, "/api/v1/clusters/stage", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'stage' does not exist"]);
    assert_eq!(
        names_of(&get(&app, "/api/v1/clusters", &app.admin).await.json),
        ["prod"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_duplicate_or_badly_named_cluster_is_refused() {
    let app = TestAppliance::start().await;
    app.cluster("prod").await;
    let r = post(&app, "/api/v1/clusters", &app.admin, json!({"name": "prod"})).await;
    assert_problem(&r, StatusCode::CONFLICT, &["cluster 'prod' already exists"]);
    let r = post(&app, "/api/v1/clusters", &app.admin, json!({"name": "Prod East"})).await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["name"]);
    assert_eq!(field_names(&p), ["name"]);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_cluster_with_services_is_409_listing_them() {
    let app = with_pool_and_cluster().await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let c = get(&app, "/api/v1/clusters/prod", &app.admin).await;
    assert_eq!(c.json["services"], 1);
    let r = delete(&app, "/api/v1/clusters/prod", &app.admin).await;
    assert_problem(&r, StatusCode::CONFLICT, &["still has Services", "default/web"]);
    assert_eq!(
        get(&app, "/api/v1/clusters/prod", &app.admin).await.status,
        StatusCode::OK
    );
    delete(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_eq!(
        delete(&app, "/api/v1/clusters/prod", &app.admin).await.status,
        StatusCode::NO_CONTENT
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_token_for_a_missing_cluster_is_422_and_agent_tokens_must_name_one() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "agent", "role": "agent", "cluster": "nope"}),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &["cluster 'nope' does not exist", "POST /api/v1/clusters"],
    );
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "agent", "role": "agent"}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["must name the cluster"]);
    assert_eq!(field_names(&p), ["cluster"]);
    app.cluster("prod").await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "v", "role": "viewer", "cluster": "prod"}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["only agent tokens"]);
    assert_eq!(field_names(&p), ["cluster"]);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_cluster_revokes_its_agent_tokens() {
    let app = TestAppliance::start().await;
    app.cluster("prod").await;
    let agent = app.token("prod-agent", "agent", Some("prod")).await;
    assert_eq!(
        get(&app, "/api/v1/clusters/prod/nodes", &agent).await.status,
        StatusCode::OK
    );
    assert_eq!(
        delete(&app, "/api/v1/clusters/prod", &app.admin).await.status,
        StatusCode::NO_CONTENT
    );
    let r = get(&app, "/api/v1/clusters/prod/nodes", &agent).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, &["unknown or has been revoked"]);
    app.stop().await;
}

#[tokio::test]
async fn a_cluster_shows_when_its_agent_last_called_and_with_which_version() {
    let app = TestAppliance::start().await;
    app.cluster("prod").await;
    let agent = app.token("prod-agent", "agent", Some("prod")).await;
    let r = app
        .client
        .get(format!("{}/api/v1/clusters/prod/nodes", app.url))
        .bearer_auth(&agent)
        .header("user-agent", "edgelb-agent/0.1.0")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let c = get(&app, "/api/v1/clusters/prod", &app.admin).await.json;
    assert_eq!(c["agent_version"], "edgelb-agent/0.1.0");
    assert!(c["last_contact"].is_string(), "{c}");
    app.stop().await;
}

// ---- services ----

#[tokio::test]
async fn put_allocates_and_answers_with_the_ips_and_pool() {
    let app = with_pool_and_cluster().await;
    let s = put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with(
            "6f1c",
            json!({"external_traffic_policy": "Local", "health_check_node_port": 32000,
                   "session_affinity": "ClientIP", "session_affinity_timeout_seconds": 600,
                   "source_ranges": ["198.51.100.0/24"], "scheduler": "rr"}),
        ),
    )
    .await;
    assert_eq!(s["cluster"], "prod");
    assert_eq!(s["namespace"], "default");
    assert_eq!(s["name"], "web");
    assert_eq!(s["uid"], "6f1c");
    assert_eq!(s["ips"], json!(["203.0.113.0"]));
    assert_eq!(s["pool"], "public");
    assert_eq!(s["addresses"], json!([{"ip": "203.0.113.0", "pool": "public"}]));
    assert_eq!(s["spec"]["external_traffic_policy"], "Local");
    assert_eq!(s["spec"]["scheduler"], "rr");
    assert_eq!(s["spec"]["ports"][0]["node_port"], 30080);
    let g = get(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json, s);
    app.stop().await;
}

#[tokio::test]
async fn put_again_answers_the_same_and_writes_no_audit_entry() {
    let app = with_pool_and_cluster().await;
    let first = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let entries = audit(&app, "?limit=1000").await.len();
    let again = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    assert_eq!(again, first);
    assert_eq!(
        audit(&app, "?limit=1000").await.len(),
        entries,
        "a repeated PUT is not a change"
    );
    assert_eq!(allocations(&app, "").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_recreated_service_with_a_new_uid_keeps_its_ip() {
    let app = with_pool_and_cluster().await;
    let first = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let second = put_service(&app, "prod", "default", "web", service_spec("u2")).await;
    assert_eq!(second["uid"], "u2");
    assert_eq!(ips(&second), ips(&first));
    let a = allocations(&app, "").await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["services"][0]["uid"], "u2");
    app.stop().await;
}

#[tokio::test]
async fn delete_releases_the_ip_which_stays_held_for_the_same_service() {
    let app = with_pool_and_cluster().await;
    let web = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let r = delete(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ips(&r.json), ips(&web), "DELETE answers with what the Service had");

    let r = get(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["prod/default/web does not exist"]);
    let r = delete(&app, &svc("prod", "default", "web"), &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["prod/default/web does not exist"]);

    let a = allocations(&app, "").await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["ip"], "203.0.113.0");
    assert_eq!(a[0]["state"], "held");
    assert_eq!(
        a[0]["services"],
        json!([{"namespace": "default", "name": "web", "uid": "u1"}])
    );
    assert!(a[0]["held_until"].is_string(), "{}", a[0]);
    let p = get(&app, "/api/v1/pools/public", &app.admin).await.json;
    assert_eq!(p["usage"]["held"], 1);
    assert_eq!(p["usage"]["allocated"], 0);

    // While held, nobody else gets it, and asking for it names whom it is held for...
    let other = put_service(&app, "prod", "default", "api", service_spec("u9")).await;
    assert_eq!(ips(&other), ["203.0.113.1"]);
    let r = put(
        &app,
        &svc("prod", "default", "db"),
        &app.admin,
        spec_with("u8", json!({"requested_ips": ["203.0.113.0"]})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, &["held for Service prod/default/web"]);
    // ...but the same key gets it back.
    let back = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    assert_eq!(ips(&back), ips(&web));
    let a = allocations(&app, "?ip=203.0.113.0").await;
    assert_eq!(a[0]["state"], "allocated");
    app.stop().await;
}

#[tokio::test]
async fn a_requested_ip_outside_every_pool_is_422() {
    let app = with_pool_and_cluster().await;
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        spec_with("u1", json!({"requested_ips": ["198.51.100.7"]})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &["198.51.100.7 is outside every pool"],
    );
    assert_eq!(
        get(&app, &svc("prod", "default", "web"), &app.admin).await.status,
        StatusCode::NOT_FOUND
    );
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        spec_with("u1", json!({"pool": "missing"})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, &["pool 'missing' does not exist"]);
    app.stop().await;
}

#[tokio::test]
async fn a_requested_ip_held_by_another_service_is_409_naming_the_holder() {
    let app = with_pool_and_cluster().await;
    put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with("u1", json!({"requested_ips": ["203.0.113.9"]})),
    )
    .await;
    let r = put(
        &app,
        &svc("prod", "shop", "cart"),
        &app.admin,
        spec_with("u2", json!({"requested_ips": ["203.0.113.9"]})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["203.0.113.9 is already allocated to Service prod/default/web"],
    );
    assert_eq!(
        get(&app, &svc("prod", "shop", "cart"), &app.admin).await.status,
        StatusCode::NOT_FOUND,
        "a refused PUT stores nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_exhausted_pool_is_409_pool_exhausted() {
    let app = TestAppliance::start().await;
    app.pool("tiny", &["203.0.113.10-203.0.113.11"]).await;
    app.cluster("prod").await;
    put_service(&app, "prod", "default", "a", service_spec("u1")).await;
    put_service(&app, "prod", "default", "b", service_spec("u2")).await;
    let r = put(&app, &svc("prod", "default", "c"), &app.admin, service_spec("u3")).await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["pool exhausted", "no free IPv4 address in 'tiny'"],
    );
    app.stop().await;
}

#[tokio::test]
async fn services_with_one_sharing_key_share_an_ip_unless_their_ports_collide() {
    let app = with_pool_and_cluster().await;
    let a = put_service(
        &app,
        "prod",
        "default",
        "http",
        spec_port("u1", 80, json!({"sharing_key": "k"})),
    )
    .await;
    let b = put_service(
        &app,
        "prod",
        "default",
        "https",
        spec_port("u2", 443, json!({"sharing_key": "k"})),
    )
    .await;
    assert_eq!(ips(&a), ips(&b));
    let shared = allocations(&app, "").await;
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0]["sharing_key"], "k");
    assert_eq!(shared[0]["services"].as_array().map(Vec::len), Some(2));

    let r = put(
        &app,
        &svc("prod", "other", "http2"),
        &app.admin,
        spec_port("u3", 80, json!({"sharing_key": "k"})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["port 80/TCP", "203.0.113.0", "Service prod/default/http"],
    );
    // Without the key, the same port is no problem: it gets an address of its own.
    let c = put_service(&app, "prod", "other", "http2", spec_port("u3", 80, json!({}))).await;
    assert_ne!(ips(&c), ips(&a));
    // A sharing key is the cluster's own: another cluster's same key shares nothing.
    app.cluster("stage").await;
    let d = put_service(
        &app,
        "stage",
        "default",
        "alt",
        spec_port("u4", 8080, json!({"sharing_key": "k"})),
    )
    .await;
    assert_ne!(ips(&d), ips(&a));
    let r = put(
        &app,
        &svc("stage", "default", "steal"),
        &app.admin,
        spec_port("u5", 9090, json!({"sharing_key": "k", "requested_ips": ips(&a)})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["already allocated to 2 Services of other clusters"],
    );
    app.stop().await;
}

#[tokio::test]
async fn dual_stack_gets_one_address_of_each_family_in_the_order_asked() {
    let app = TestAppliance::start().await;
    app.pool("both", &["203.0.113.0/26", "2001:db8:1::/64"]).await;
    app.cluster("prod").await;
    let s = put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with("u1", json!({"ip_families": ["IPv4", "IPv6"]})),
    )
    .await;
    assert_eq!(ips(&s), ["203.0.113.0", "2001:db8:1::"]);
    let s = put_service(
        &app,
        "prod",
        "default",
        "api",
        spec_with("u2", json!({"ip_families": ["IPv6", "IPv4"]})),
    )
    .await;
    assert_eq!(ips(&s), ["2001:db8:1::1", "203.0.113.1"]);
    let g = get(&app, &svc("prod", "default", "api"), &app.admin).await;
    assert_eq!(ips(&g.json), ["2001:db8:1::1", "203.0.113.1"]);

    let r = put(
        &app,
        &svc("prod", "default", "bad"),
        &app.admin,
        spec_with("u3", json!({"ip_families": ["IPv4", "IPv4"]})),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["IPv4 twice"]);
    assert_eq!(field_names(&p), ["ip_families"]);
    app.stop().await;
}

#[tokio::test]
async fn a_pool_serves_only_its_clusters_and_a_manual_pool_only_when_named() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "stage-only", "ranges": ["10.0.0.0/24"], "clusters": ["stage"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "manual", "ranges": ["10.0.1.0/24"], "auto_assign": false}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.cluster("prod").await;
    app.cluster("stage").await;
    let r = put(&app, &svc("prod", "default", "web"), &app.admin, service_spec("u1")).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &["no pool with auto_assign", "cluster 'prod'"],
    );
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        spec_with("u1", json!({"pool": "stage-only"})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &["pool 'stage-only' does not allow cluster 'prod'"],
    );
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        spec_with("u1", json!({"requested_ips": ["10.0.0.5"]})),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &["10.0.0.5 is in pool 'stage-only', which does not allow cluster 'prod'"],
    );
    let s = put_service(
        &app,
        "prod",
        "default",
        "web",
        spec_with("u1", json!({"pool": "manual"})),
    )
    .await;
    assert_eq!(ips(&s), ["10.0.1.0"]);
    assert_eq!(s["pool"], "manual");
    let s = put_service(&app, "stage", "default", "web", service_spec("u2")).await;
    assert_eq!(s["pool"], "stage-only");
    app.stop().await;
}

#[tokio::test]
async fn a_service_in_an_unknown_cluster_is_404() {
    let app = TestAppliance::start().await;
    // With no pool at all the cluster is still what the client must fix first.
    let r = put(&app, &svc("nope", "default", "web"), &app.admin, service_spec("u1")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    app.pool("public", &["203.0.113.0/26"]).await;
    let r = put(&app, &svc("nope", "default", "web"), &app.admin, service_spec("u1")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    let r = get(&app, &svc("nope", "default", "web"), &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["nope/default/web does not exist"]);
    let r = get(&app, "/api/v1/clusters/nope/services", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    assert!(allocations(&app, "").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_service_spec_is_400_naming_every_field() {
    let app = with_pool_and_cluster().await;
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        json!({
            "uid": "u1",
            "ports": [
                {"name": "a", "protocol": "TCP", "port": 0, "node_port": 30080},
                {"name": "b", "protocol": "TCP", "port": 443, "node_port": 0},
                {"name": "c", "protocol": "TCP", "port": 443, "node_port": 30443},
                {"name": "d", "protocol": "UDP", "port": 443, "node_port": 30444},
            ],
            "source_ranges": ["10.0.0.0/8", "10.0.0.0/33", "nonsense"],
        }),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["5 field(s)"]);
    assert_eq!(
        field_names(&p),
        [
            "ports[0].port",
            "ports[1].node_port",
            "ports[2]",
            "source_ranges[1]",
            "source_ranges[2]"
        ]
    );
    let msg = |i: usize| p["errors"][i]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg(1).contains("allocateLoadBalancerNodePorts"), "{}", msg(1));
    assert!(msg(2).contains("443/TCP appears twice"), "{}", msg(2));

    let r = put(&app, &svc("prod", "Default", "web_1"), &app.admin, service_spec("")).await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["3 field(s)"]);
    assert_eq!(field_names(&p), ["namespace", "name", "uid"]);
    let r = put(
        &app,
        &svc("prod", "default", "web"),
        &app.admin,
        json!({"uid": "u1", "ports": []}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["at least one port"]);
    assert_eq!(field_names(&p), ["ports"]);
    assert!(allocations(&app, "").await.is_empty(), "nothing is half-written");
    app.stop().await;
}

#[tokio::test]
async fn the_services_of_a_cluster_are_listed() {
    let app = with_pool_and_cluster().await;
    app.cluster("stage").await;
    put_service(&app, "prod", "shop", "cart", service_spec("u2")).await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    put_service(&app, "stage", "default", "web", service_spec("u3")).await;
    let r = get(&app, "/api/v1/clusters/prod/services", &app.admin).await;
    assert_eq!(r.status, StatusCode::OK);
    let keys: Vec<(String, String, String)> = r
        .json
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["namespace"].as_str().unwrap_or("").to_owned(),
                s["name"].as_str().unwrap_or("").to_owned(),
                s["ips"][0].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("default".into(), "web".into(), "203.0.113.1".into()),
            ("shop".into(), "cart".into(), "203.0.113.0".into()),
        ]
    );
    let r = get(&app, "/api/v1/clusters/stage/services", &app.admin).await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(1));
    app.stop().await;
}

// ---- nodes ----

fn node(name: &str, addr: &str) -> Value {
    json!({"name": name, "addresses": [addr], "ready": true, "schedulable": true, "excluded": false, "no_tunnel": false})
}

#[tokio::test]
async fn put_nodes_replaces_the_whole_list_and_get_returns_it_sorted() {
    let app = TestAppliance::start().await;
    app.cluster("prod").await;
    let list = json!({"nodes": [node("n3", "10.1.0.3"), node("n1", "10.1.0.1"),
        json!({"name": "n2", "addresses": ["10.1.0.2", "fd00::2"], "ready": false, "schedulable": false, "excluded": true, "no_tunnel": true})]});
    let r = put(&app, "/api/v1/clusters/prod/nodes", &app.admin, list).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let want = json!({"nodes": [node("n1", "10.1.0.1"),
        json!({"name": "n2", "addresses": ["10.1.0.2", "fd00::2"], "ready": false, "schedulable": false, "excluded": true, "no_tunnel": true}),
        node("n3", "10.1.0.3")]});
    assert_eq!(r.json, want);
    let g = get(&app, "/api/v1/clusters/prod/nodes", &app.admin).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json, want);
    assert_eq!(get(&app, "/api/v1/clusters/prod", &app.admin).await.json["nodes"], 3);

    let r = put(
        &app,
        "/api/v1/clusters/prod/nodes",
        &app.admin,
        json!({"nodes": [{"name": "n9", "addresses": ["10.1.0.9"]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        get(&app, "/api/v1/clusters/prod/nodes", &app.admin).await.json,
        json!({"nodes": [node("n9", "10.1.0.9")]}),
        "the list replaces the old one; ready and schedulable default to true, no_tunnel to false"
    );
    app.stop().await;
}

#[tokio::test]
async fn duplicate_or_addressless_nodes_are_400_and_change_nothing() {
    let app = TestAppliance::start().await;
    app.cluster("prod").await;
    let ok = json!({"nodes": [node("n1", "10.1.0.1")]});
    assert_eq!(
        put(&app, "/api/v1/clusters/prod/nodes", &app.admin, ok.clone())
            .await
            .status,
        StatusCode::OK
    );
    let r = put(
        &app,
        "/api/v1/clusters/prod/nodes",
        &app.admin,
        json!({"nodes": [node("n1", "10.1.0.1"), node("n1", "10.1.0.2"), {"name": "n3", "addresses": []}]}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["'n1' appears twice"]);
    assert_eq!(field_names(&p), ["nodes[1].name", "nodes[2].addresses"]);
    assert_eq!(get(&app, "/api/v1/clusters/prod/nodes", &app.admin).await.json, ok);

    let r = put(&app, "/api/v1/clusters/nope/nodes", &app.admin, ok).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    let r = get(&app, "/api/v1/clusters/nope/nodes", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    app.stop().await;
}

// ---- sync ----

fn sync_entry(namespace: &str, name: &str, uid: &str, ips: &[&str]) -> Value {
    json!({"namespace": namespace, "name": name, "uid": uid, "ips": ips})
}

fn refs(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["namespace"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn sync_reserves_status_ips_before_any_new_allocation() {
    let app = with_pool_and_cluster().await;
    let r = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &app.admin,
        json!({"services": [sync_entry("default", "web", "u1", &["203.0.113.0"]),
                            sync_entry("shop", "cart", "u2", &["203.0.113.1"])]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(refs(&r.json["reserved"]), ["default/web", "shop/cart"]);
    assert_eq!(r.json["reserved"][0]["ips"], json!(["203.0.113.0"]));
    assert_eq!(r.json["stale"], json!([]));
    assert_eq!(r.json["conflicts"], json!([]));

    let new = put_service(&app, "prod", "default", "new", service_spec("u3")).await;
    assert_eq!(ips(&new), ["203.0.113.2"], "reserved addresses are not handed out");
    // The reserved Service's first PUT keeps its address.
    let web = put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    assert_eq!(ips(&web), ["203.0.113.0"]);

    // Syncing again is harmless: the same answer, nothing new.
    let entries = audit(&app, "?limit=1000").await.len();
    let again = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &app.admin,
        json!({"services": [sync_entry("default", "web", "u1", &["203.0.113.0"]),
                            sync_entry("shop", "cart", "u2", &["203.0.113.1"]),
                            sync_entry("default", "new", "u3", &["203.0.113.2"])]}),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        refs(&again.json["reserved"]),
        ["default/new", "default/web", "shop/cart"]
    );
    assert_eq!(audit(&app, "?limit=1000").await.len(), entries);
    app.stop().await;
}

#[tokio::test]
async fn sync_lists_stale_services_and_deletes_nothing() {
    let app = with_pool_and_cluster().await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let api = put_service(&app, "prod", "default", "api", service_spec("u2")).await;
    let r = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &app.admin,
        json!({"services": [sync_entry("default", "web", "u1", &["203.0.113.0"])]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["stale"],
        json!([{"namespace": "default", "name": "api", "uid": "u2", "ips": ips(&api)}])
    );
    let g = get(&app, &svc("prod", "default", "api"), &app.admin).await;
    assert_eq!(g.status, StatusCode::OK, "sync never deletes");
    assert_eq!(ips(&g.json), ips(&api));

    // An empty list (an agent that sees nothing) still deletes nothing.
    let r = post(&app, "/api/v1/clusters/prod/sync", &app.admin, json!({"services": []})).await;
    assert_eq!(refs(&r.json["stale"]), ["default/api", "default/web"]);
    assert_eq!(allocations(&app, "").await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn sync_reports_conflicts_for_taken_and_foreign_addresses() {
    let app = with_pool_and_cluster().await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let r = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &app.admin,
        json!({"services": [
            sync_entry("default", "web", "u1", &["203.0.113.0"]),
            sync_entry("default", "thief", "u2", &["203.0.113.0"]),
            sync_entry("default", "stray", "u3", &["198.51.100.7"]),
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let conflicts = r.json["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 2, "{}", r.json);
    assert_eq!(conflicts[0]["name"], "thief");
    assert_eq!(conflicts[0]["ip"], "203.0.113.0");
    let d0 = conflicts[0]["detail"].as_str().unwrap_or_default();
    assert!(d0.contains("Service prod/default/web"), "{d0}");
    assert_eq!(conflicts[1]["name"], "stray");
    let d1 = conflicts[1]["detail"].as_str().unwrap_or_default();
    assert!(d1.contains("outside every pool"), "{d1}");
    assert_eq!(refs(&r.json["reserved"]), ["default/web"]);
    assert_eq!(
        get(&app, &svc("prod", "default", "thief"), &app.admin).await.status,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[tokio::test]
async fn sync_refuses_bad_names_duplicates_and_unknown_clusters() {
    let app = with_pool_and_cluster().await;
    let r = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &app.admin,
        json!({"services": [sync_entry("default", "Web", "u1", &[]),
                            sync_entry("default", "a", "u2", &[]),
                            sync_entry("default", "a", "u3", &[])]}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["default/a appears twice"]);
    assert_eq!(field_names(&p), ["services[0]", "services[2]"]);
    let r = post(&app, "/api/v1/clusters/nope/sync", &app.admin, json!({"services": []})).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["cluster 'nope' does not exist"]);
    app.stop().await;
}

// ---- allocations ----

#[tokio::test]
async fn allocations_filter_by_pool_cluster_namespace_service_and_ip() {
    let app = TestAppliance::start().await;
    app.pool("a", &["10.0.0.0/24"]).await;
    app.pool("b", &["10.0.1.0/24"]).await;
    app.cluster("prod").await;
    app.cluster("stage").await;
    put_service(&app, "prod", "default", "web", spec_with("u1", json!({"pool": "a"}))).await;
    put_service(&app, "prod", "shop", "cart", spec_with("u2", json!({"pool": "b"}))).await;
    put_service(&app, "stage", "default", "web", spec_with("u3", json!({"pool": "a"}))).await;

    let owners = |list: Vec<Value>| -> Vec<String> {
        list.iter()
            .map(|a| {
                format!(
                    "{}/{}/{}@{}",
                    a["cluster"].as_str().unwrap_or(""),
                    a["services"][0]["namespace"].as_str().unwrap_or(""),
                    a["services"][0]["name"].as_str().unwrap_or(""),
                    a["ip"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        owners(allocations(&app, "").await),
        [
            "prod/default/web@10.0.0.0",
            "stage/default/web@10.0.0.1",
            "prod/shop/cart@10.0.1.0"
        ]
    );
    assert_eq!(owners(allocations(&app, "?pool=b").await), ["prod/shop/cart@10.0.1.0"]);
    assert_eq!(
        owners(allocations(&app, "?cluster=stage").await),
        ["stage/default/web@10.0.0.1"]
    );
    assert_eq!(
        owners(allocations(&app, "?namespace=shop").await),
        ["prod/shop/cart@10.0.1.0"]
    );
    assert_eq!(
        owners(allocations(&app, "?service=web").await),
        ["prod/default/web@10.0.0.0", "stage/default/web@10.0.0.1"]
    );
    assert_eq!(
        owners(allocations(&app, "?ip=10.0.0.1").await),
        ["stage/default/web@10.0.0.1"]
    );
    assert_eq!(
        owners(allocations(&app, "?cluster=prod&service=web&pool=a").await),
        ["prod/default/web@10.0.0.0"]
    );
    assert!(allocations(&app, "?cluster=prod&namespace=nope").await.is_empty());
    let a = allocations(&app, "?ip=10.0.1.0").await;
    assert_eq!(a[0]["pool"], "b");
    assert_eq!(a[0]["state"], "allocated");
    assert_eq!(a[0]["held_until"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn allocation_pages_of_two_walk_five_allocations_exactly_once() {
    let app = with_pool_and_cluster().await;
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        put_service(&app, "prod", "default", name, service_spec(&format!("u{i}"))).await;
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_owned(),
        };
        let r = get(&app, &format!("/api/v1/allocations{q}"), &app.admin).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let page = items(&r.json);
        pages.push(page.len());
        seen.extend(page.iter().map(|a| a["ip"].as_str().unwrap_or("").to_owned()));
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(
        seen,
        [
            "203.0.113.0",
            "203.0.113.1",
            "203.0.113.2",
            "203.0.113.3",
            "203.0.113.4"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn allocation_queries_with_bad_parameters_are_400() {
    let app = TestAppliance::start().await;
    let cases: [(&str, &[&str]); 5] = [
        ("?limit=0", &["limit must be from 1 to 1000"]),
        ("?limit=1001", &["limit must be from 1 to 1000"]),
        ("?cursor=not-hex", &["cursor", "previous page"]),
        ("?ip=10.0.0.300", &["query string"]),
        ("?colour=red", &["unknown field `colour`"]),
    ];
    for (q, needles) in cases {
        let r = get(&app, &format!("/api/v1/allocations{q}"), &app.admin).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, needles);
    }
    app.stop().await;
}

// ---- tokens ----

#[tokio::test]
async fn a_token_secret_is_shown_once_and_works() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "ci", "role": "operator"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let secret = r.json["secret"].as_str().expect("secret").to_owned();
    assert_eq!(r.header("location"), Some(format!("/api/v1/tokens/{id}").as_str()));
    assert!(secret.starts_with("elb_"), "{secret}");
    assert_eq!(r.json["role"], "operator");
    assert_eq!(r.json["created_by"], actor("admin", &app.admin));

    let list = get(&app, "/api/v1/tokens", &app.admin).await;
    assert_eq!(list.status, StatusCode::OK);
    let tokens = list.json.as_array().expect("list");
    assert_eq!(tokens.len(), 2, "the first-start admin token and ours");
    assert!(tokens.iter().any(|t| t["id"] == id.as_str() && t["name"] == "ci"));
    assert!(tokens.iter().all(|t| t.get("secret").is_none()), "{}", list.text);
    assert!(!list.text.contains(&secret), "a listing never shows a secret");
    assert!(!list.text.contains(&app.admin));

    let r = get(&app, "/api/v1/pools", &secret).await;
    assert_eq!(r.status, StatusCode::OK, "the new token works: {}", r.text);
    let info = get(&app, "/api/v1/info", &secret).await;
    assert_eq!(info.json["actor"], format!("token:ci/{id}"));
    assert_eq!(info.json["role"], "operator");
    app.stop().await;
}

// ---- address history ----

#[tokio::test]
async fn an_address_history_lists_every_holder_of_a_reused_ip_in_order() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "one", "ranges": ["198.51.100.7/32"], "hold_seconds": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.cluster("prod").await;
    let first = put_service(&app, "prod", "shop", "old", service_spec("uid-old")).await;
    assert_eq!(ips(&first), ["198.51.100.7"]);
    assert_eq!(
        delete(&app, &svc("prod", "shop", "old"), &app.admin).await.status,
        StatusCode::OK
    );
    // Held for `old` for a second; after that the only address goes to the next Service.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = put_service(&app, "prod", "shop", "new", service_spec("uid-new")).await;
    assert_eq!(ips(&second), ["198.51.100.7"]);

    let h = get(&app, "/api/v1/address-history?ip=198.51.100.7", &app.admin).await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.text);
    let rows: Vec<(String, String, String)> = items(&h.json)
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            (s("event"), s("name"), s("uid"))
        })
        .collect();
    let row = |e: &str, n: &str, u: &str| (e.to_owned(), n.to_owned(), u.to_owned());
    assert_eq!(
        rows,
        [
            row("assigned", "new", "uid-new"),
            row("reused", "old", "uid-old"),
            row("held", "old", "uid-old"),
            row("released", "old", "uid-old"),
            row("assigned", "old", "uid-old"),
        ],
        "newest first: {}",
        h.text
    );
    let held = &items(&h.json)[2];
    assert!(held["held_until"].is_string() && held["pool"] == "one", "{held}");
    assert!(
        items(&h.json)
            .iter()
            .all(|e| e["ip"] == "198.51.100.7" && e["cluster"] == "prod")
    );

    // By Service name; pages through a cursor.
    let h = get(
        &app,
        "/api/v1/address-history?service=old&namespace=shop&limit=2",
        &app.admin,
    )
    .await;
    assert_eq!(items(&h.json).len(), 2, "{}", h.text);
    let next = h.json["next_cursor"].as_str().expect("more").to_owned();
    let h2 = get(
        &app,
        &format!("/api/v1/address-history?service=old&namespace=shop&limit=2&cursor={next}"),
        &app.admin,
    )
    .await;
    let events: Vec<Value> = items(&h.json)
        .into_iter()
        .chain(items(&h2.json))
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(
        events,
        [json!("reused"), json!("held"), json!("released"), json!("assigned")]
    );
    assert!(h2.json["next_cursor"].is_null(), "{}", h2.text);
    assert!(
        items(
            &get(&app, "/api/v1/address-history?service=nobody", &app.admin)
                .await
                .json
        )
        .is_empty()
    );

    // A viewer may read it; bad input is a 400 that says what to fix.
    let viewer = app.token("look", "viewer", None).await;
    assert_eq!(
        get(&app, "/api/v1/address-history", &viewer).await.status,
        StatusCode::OK
    );
    assert_problem(
        &get(&app, "/api/v1/address-history?ip=198.51.100", &app.admin).await,
        StatusCode::BAD_REQUEST,
        &["ip"],
    );
    assert_problem(
        &get(&app, "/api/v1/address-history?cursor=abc", &app.admin).await,
        StatusCode::BAD_REQUEST,
        &["cursor"],
    );
    app.stop().await;
}

// ---- users ----

#[tokio::test]
async fn console_users_are_managed_over_the_api_with_roles_audit_and_validation() {
    let app = TestAppliance::start().await;
    let password = "correct horse battery";
    let r = post(
        &app,
        "/api/v1/users",
        &app.admin,
        json!({"name": "alice", "role": "operator", "password": password}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/users/alice"));
    assert_eq!(
        (&r.json["name"], &r.json["role"], &r.json["sessions"]),
        (&json!("alice"), &json!("operator"), &json!(0))
    );
    // The password works for the console, and no answer ever holds it or its hash.
    let store = edgelb::store::Store::open(&app.data_dir).await.expect("the same store");
    assert!(
        store
            .authenticate_user("alice", password)
            .await
            .expect("read")
            .is_some()
    );
    let session = store.create_session("alice").await.expect("session");
    let list = get(&app, "/api/v1/users", &app.admin).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let names: Vec<_> = list
        .json
        .as_array()
        .expect("list")
        .iter()
        .map(|u| (u["name"].clone(), u["role"].clone()))
        .collect();
    assert_eq!(
        names,
        [(json!("admin"), json!("admin")), (json!("alice"), json!("operator"))]
    );
    assert!(
        !list.text.contains("password") && !list.text.contains("argon2"),
        "{}",
        list.text
    );
    assert_eq!(get(&app, "/api/v1/users/alice", &app.admin).await.json["sessions"], 1);

    // Bad input: each refusal names what to fix, and nothing is created.
    for (body, status, needle) in [
        (
            json!({"name": "bob", "role": "viewer", "password": "short"}),
            StatusCode::BAD_REQUEST,
            "12 to 1024 characters",
        ),
        (
            json!({"name": "bob", "role": "agent", "password": password}),
            StatusCode::BAD_REQUEST,
            "unknown variant `agent`",
        ),
        (
            json!({"name": "Bob!", "role": "viewer", "password": password}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "alice", "role": "viewer", "password": password}),
            StatusCode::CONFLICT,
            "user 'alice' already exists",
        ),
    ] {
        let r = post(&app, "/api/v1/users", &app.admin, body.clone()).await;
        assert_problem(&r, status, &[needle]);
    }
    assert_eq!(
        get(&app, "/api/v1/users", &app.admin)
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Only admins manage users.
    let operator = app.token("ops", "operator", None).await;
    assert_problem(
        &get(&app, "/api/v1/users", &operator).await,
        StatusCode::FORBIDDEN,
        &["list users"],
    );
    let r = post(
        &app,
        "/api/v1/users",
        &operator,
        json!({"name": "eve", "role": "admin", "password": password}),
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["create users"]);

    // A new role applies at once, a new password ends the sessions; both audited, never the
    // password.
    let r = patch(&app, "/api/v1/users/alice", &app.admin, json!({"role": "viewer"})).await;
    assert_eq!(
        (r.status, &r.json["role"]),
        (StatusCode::OK, &json!("viewer")),
        "{}",
        r.text
    );
    assert_eq!(
        store.session(&session.secret).await.expect("read").map(|s| s.role),
        Some(edgelb_api::Role::Viewer)
    );
    let new_password = "a much longer passphrase";
    let r = patch(
        &app,
        "/api/v1/users/alice",
        &app.admin,
        json!({"password": new_password}),
    )
    .await;
    assert_eq!(
        (r.status, &r.json["sessions"]),
        (StatusCode::OK, &json!(0)),
        "{}",
        r.text
    );
    assert!(
        store.session(&session.secret).await.expect("read").is_none(),
        "the session ended"
    );
    assert!(
        store
            .authenticate_user("alice", password)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store
            .authenticate_user("alice", new_password)
            .await
            .expect("read")
            .is_some()
    );
    let audit = get(&app, "/api/v1/audit?object=user/alice", &app.admin).await;
    let actions: Vec<_> = items(&audit.json).iter().map(|e| e["action"].clone()).collect();
    assert_eq!(
        actions,
        [
            json!("user.password"),
            json!("user.role"),
            json!("session.login"),
            json!("user.create")
        ]
    );
    let role = find(&items(&audit.json), "user.role", "user/alice").clone();
    assert_eq!(
        (&role["before"], &role["after"]),
        (&json!({"role": "operator"}), &json!({"role": "viewer"}))
    );
    assert_eq!(role["actor"], actor("admin", &app.admin));
    assert!(
        !audit.text.contains(password) && !audit.text.contains(new_password),
        "{}",
        audit.text
    );
    let r = patch(&app, "/api/v1/users/alice", &app.admin, json!({"password": "short"})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["12 to 1024 characters (this one has 5)"]);
    let r = patch(
        &app,
        "/api/v1/users/alice",
        &app.admin,
        json!({"role": "viewer", "pasword": "typo"}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["pasword"]);
    assert_problem(
        &patch(&app, "/api/v1/users/nobody", &app.admin, json!({"role": "viewer"})).await,
        StatusCode::NOT_FOUND,
        &["user 'nobody' does not exist"],
    );

    // The last admin stays one and stays; once there is another, it can go.
    let r = patch(&app, "/api/v1/users/admin", &app.admin, json!({"role": "operator"})).await;
    assert_problem(&r, StatusCode::CONFLICT, &["last admin"]);
    assert_problem(
        &delete(&app, "/api/v1/users/admin", &app.admin).await,
        StatusCode::CONFLICT,
        &["last admin"],
    );
    assert_eq!(
        patch(&app, "/api/v1/users/alice", &app.admin, json!({"role": "admin"}))
            .await
            .status,
        StatusCode::OK
    );
    let r = delete(&app, "/api/v1/users/admin", &app.admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_problem(
        &get(&app, "/api/v1/users/admin", &app.admin).await,
        StatusCode::NOT_FOUND,
        &["user 'admin' does not exist"],
    );
    assert_problem(
        &delete(&app, "/api/v1/users/alice", &app.admin).await,
        StatusCode::CONFLICT,
        &["last admin"],
    );
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_401_at_once() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "ci", "role": "viewer"}),
    )
    .await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    let secret = r.json["secret"].as_str().expect("secret").to_owned();
    assert_eq!(get(&app, "/api/v1/pools", &secret).await.status, StatusCode::OK);
    let r = delete(&app, &format!("/api/v1/tokens/{id}"), &app.admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = get(&app, "/api/v1/pools", &secret).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, &["unknown or has been revoked"]);
    let r = delete(&app, &format!("/api/v1/tokens/{id}"), &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &[&format!("token '{id}' does not exist")]);
    let r = delete(&app, "/api/v1/tokens/000000000000", &app.admin).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["token '000000000000' does not exist"]);
    let tokens = get(&app, "/api/v1/tokens", &app.admin).await.json;
    assert!(!tokens.as_array().expect("list").iter().any(|t| t["id"] == id.as_str()));
    app.stop().await;
}

#[tokio::test]
async fn a_badly_named_token_or_unknown_role_is_400() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "CI Bot", "role": "viewer"}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["not a valid name"]);
    assert_eq!(field_names(&p), ["name"]);
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "ci", "role": "root"}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["root"]);
    app.stop().await;
}

// ---- auth ----

#[tokio::test]
async fn no_authorization_header_is_401_with_www_authenticate() {
    let app = TestAppliance::start().await;
    for path in [
        "/api/v1/pools",
        "/api/v1/allocations",
        "/api/v1/tokens",
        "/api/v1/audit",
    ] {
        let r = get(&app, path, "").await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, &["Authorization: Bearer"]);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"edgelb\""), "{path}");
    }
    let r = post(
        &app,
        "/api/v1/pools",
        "",
        json!({"name": "p", "ranges": ["10.0.0.0/24"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Who is calling is settled before the body is even read.
    let r = app
        .send(
            Method::POST,
            "/api/v1/pools",
            "",
            Body::Raw("text/plain", b"{".to_vec()),
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, &["Authorization: Bearer"]);
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_garbage_or_unknown_token_is_401() {
    let app = TestAppliance::start().await;
    let unknown = format!("{}x", app.admin);
    for token in ["garbage", "elb_000000000000_nothing", unknown.as_str()] {
        let r = get(&app, "/api/v1/pools", token).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, &["unknown or has been revoked"]);
        assert!(r.header("www-authenticate").is_some());
    }
    let r = app
        .client
        .get(format!("{}/api/v1/pools", app.url))
        .basic_auth("admin", Some(&app.admin_password))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the API takes bearer tokens only");
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_reads_everything_but_changes_nothing() {
    let app = with_pool_and_cluster().await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    let viewer = app.token("dash", "viewer", None).await;
    for path in [
        "/api/v1/pools",
        "/api/v1/pools/public",
        "/api/v1/clusters",
        "/api/v1/clusters/prod",
        "/api/v1/clusters/prod/services",
        "/api/v1/clusters/prod/services/default/web",
        "/api/v1/clusters/prod/nodes",
        "/api/v1/allocations",
        "/api/v1/audit",
    ] {
        assert_eq!(get(&app, path, &viewer).await.status, StatusCode::OK, "{path}");
    }
    let r = post(
        &app,
        "/api/v1/pools",
        &viewer,
        json!({"name": "p", "ranges": ["10.0.0.0/24"]}),
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer' may not create pools"]);
    let r = patch(&app, "/api/v1/pools/public", &viewer, json!({"priority": 1})).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer' may not change pools"]);
    let r = delete(&app, "/api/v1/pools/public", &viewer).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer' may not delete pools"]);
    let r = post(&app, "/api/v1/clusters", &viewer, json!({"name": "x"})).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer'"]);
    let r = put(&app, &svc("prod", "default", "api"), &viewer, service_spec("u2")).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer' may not change services"]);
    let r = delete(&app, &svc("prod", "default", "web"), &viewer).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer'"]);
    let r = put(&app, "/api/v1/clusters/prod/nodes", &viewer, json!({"nodes": []})).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer'"]);
    let r = post(&app, "/api/v1/clusters/prod/sync", &viewer, json!({"services": []})).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer'"]);
    let r = get(&app, "/api/v1/tokens", &viewer).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'viewer' may not list tokens"]);
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["public"]);
    assert_eq!(allocations(&app, "").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_operator_manages_pools_clusters_and_services_but_not_tokens() {
    let app = TestAppliance::start().await;
    let ops = app.token("ops", "operator", None).await;
    let r = post(
        &app,
        "/api/v1/pools",
        &ops,
        json!({"name": "public", "ranges": ["203.0.113.0/26"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        patch(&app, "/api/v1/pools/public", &ops, json!({"priority": 3}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post(&app, "/api/v1/clusters", &ops, json!({"name": "prod"}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&app, &svc("prod", "default", "web"), &ops, service_spec("u1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(get(&app, "/api/v1/allocations", &ops).await.status, StatusCode::OK);
    let r = post(&app, "/api/v1/tokens", &ops, json!({"name": "more", "role": "admin"})).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'operator' may not create tokens"]);
    let r = get(&app, "/api/v1/tokens", &ops).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'operator' may not list tokens"]);
    let r = delete(&app, "/api/v1/tokens/000000000000", &ops).await;
    assert_problem(&r, StatusCode::FORBIDDEN, &["role 'operator' may not revoke tokens"]);
    app.stop().await;
}

#[tokio::test]
async fn an_agent_works_on_its_own_cluster_only() {
    let app = with_pool_and_cluster().await;
    app.cluster("stage").await;
    put_service(&app, "stage", "default", "web", service_spec("s1")).await;
    let agent = app.token("prod-agent", "agent", Some("prod")).await;

    // Its own cluster: services, nodes and sync.
    let r = put(&app, &svc("prod", "default", "web"), &agent, service_spec("u1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        get(&app, &svc("prod", "default", "web"), &agent).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/api/v1/clusters/prod/services", &agent).await.status,
        StatusCode::OK
    );
    let r = put(
        &app,
        "/api/v1/clusters/prod/nodes",
        &agent,
        json!({"nodes": [node("n1", "10.1.0.1")]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        get(&app, "/api/v1/clusters/prod/nodes", &agent).await.status,
        StatusCode::OK
    );
    let r = post(
        &app,
        "/api/v1/clusters/prod/sync",
        &agent,
        json!({"services": [sync_entry("default", "web", "u1", &["203.0.113.1"])]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Never pools, tokens, allocations, the audit log, or cluster management.
    let forbidden = [
        get(&app, "/api/v1/pools", &agent).await,
        post(
            &app,
            "/api/v1/pools",
            &agent,
            json!({"name": "p", "ranges": ["10.0.0.0/24"]}),
        )
        .await,
        get(&app, "/api/v1/pools/public", &agent).await,
        get(&app, "/api/v1/allocations", &agent).await,
        get(&app, "/api/v1/tokens", &agent).await,
        post(&app, "/api/v1/tokens", &agent, json!({"name": "x", "role": "admin"})).await,
        get(&app, "/api/v1/audit", &agent).await,
        get(&app, "/api/v1/clusters", &agent).await,
        delete(&app, "/api/v1/clusters/prod", &agent).await,
    ];
    for r in &forbidden {
        assert_problem(r, StatusCode::FORBIDDEN, &["role 'agent' may not"]);
    }

    // Never another cluster.
    let other = [
        put(&app, &svc("stage", "default", "web"), &agent, service_spec("evil")).await,
        get(&app, &svc("stage", "default", "web"), &agent).await,
        delete(&app, &svc("stage", "default", "web"), &agent).await,
        get(&app, "/api/v1/clusters/stage/services", &agent).await,
        put(&app, "/api/v1/clusters/stage/nodes", &agent, json!({"nodes": []})).await,
        get(&app, "/api/v1/clusters/stage/nodes", &agent).await,
        post(&app, "/api/v1/clusters/stage/sync", &agent, json!({"services": []})).await,
        get(&app, "/api/v1/clusters/stage", &agent).await,
    ];
    for r in &other {
        assert_problem(
            r,
            StatusCode::FORBIDDEN,
            &["bound to cluster 'prod'", "may not touch cluster 'stage'"],
        );
    }
    let stage = get(&app, &svc("stage", "default", "web"), &app.admin).await;
    assert_eq!(stage.json["uid"], "s1", "the other cluster's Service is untouched");
    assert_eq!(names_of(&get(&app, "/api/v1/pools", &app.admin).await.json), ["public"]);
    app.stop().await;
}

#[tokio::test]
async fn a_conflict_never_tells_an_agent_the_names_of_another_clusters_services() {
    let app = with_pool_and_cluster().await;
    app.cluster("stage").await;
    let secret = put_service(&app, "stage", "payroll", "salaries", service_spec("s1")).await;
    let gone = put_service(&app, "stage", "payroll", "bonuses", service_spec("s2")).await;
    let r = delete(&app, &svc("stage", "payroll", "bonuses"), &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let agent = app.token("prod-agent", "agent", Some("prod")).await;

    // Asking for an address another cluster holds, or one held back for it after its release:
    // refused, and told where an operator looks, but not for whom.
    for (ip, what) in [
        (&ips(&secret)[0], "already allocated to a Service of another cluster"),
        (&ips(&gone)[0], "is held for a Service of another cluster until"),
    ] {
        let r = put(
            &app,
            &svc("prod", "default", "web"),
            &agent,
            spec_with("u1", json!({"requested_ips": [ip]})),
        )
        .await;
        assert_problem(
            &r,
            StatusCode::CONFLICT,
            &[what, &format!("/api/v1/allocations?ip={ip}")],
        );
        for name in ["stage", "payroll", "salaries", "bonuses"] {
            assert!(!r.text.contains(name), "the answer names '{name}': {}", r.text);
        }
    }
    // The operator's list does name them.
    let a = allocations(&app, &format!("?ip={}", ips(&secret)[0])).await;
    assert_eq!(a[0]["services"][0]["name"], "salaries");
    app.stop().await;
}

// ---- audit ----

/// How the audit log names the token `secret` called `name`: `token:<name>/<id>`.
fn actor(name: &str, secret: &str) -> String {
    let id = secret.split('_').nth(1).expect("elb_<id>_<secret>");
    format!("token:{name}/{id}")
}

fn find<'a>(entries: &'a [Value], action: &str, object: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["object"] == object)
        .unwrap_or_else(|| panic!("no {action} of {object} in {entries:?}"))
}

#[tokio::test]
async fn every_change_is_audited_with_actor_object_and_before_after() {
    let app = TestAppliance::start().await;
    let ops = app.token("ops", "operator", None).await;
    app.pool("public", &["203.0.113.0/26"]).await;
    app.cluster("prod").await;
    patch(&app, "/api/v1/pools/public", &ops, json!({"priority": 4})).await;
    put(&app, &svc("prod", "default", "web"), &ops, service_spec("u1")).await;
    delete(&app, &svc("prod", "default", "web"), &ops).await;
    let r = post(
        &app,
        "/api/v1/tokens",
        &app.admin,
        json!({"name": "tmp", "role": "viewer"}),
    )
    .await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    delete(&app, &format!("/api/v1/tokens/{id}"), &app.admin).await;

    let all = audit(&app, "?limit=1000").await;
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap_or(0)).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(all.iter().all(|e| e["time"].is_string()));

    let e = find(&all, "pool.create", "pool/public");
    assert_eq!(e["actor"], actor("admin", &app.admin));
    assert_eq!(e["before"], Value::Null);
    assert_eq!(e["after"]["ranges"], json!(["203.0.113.0/26"]));

    let e = find(&all, "pool.update", "pool/public");
    assert_eq!(e["actor"], actor("ops", &ops));
    assert_eq!(e["before"]["priority"], 0);
    assert_eq!(e["after"]["priority"], 4);

    let e = find(&all, "service.allocate", "service/prod/default/web");
    assert_eq!(e["actor"], actor("ops", &ops));
    assert_eq!(e["after"]["ips"], json!(["203.0.113.0"]));
    assert_eq!(e["after"]["uid"], "u1");

    let e = find(&all, "service.release", "service/prod/default/web");
    assert_eq!(e["actor"], actor("ops", &ops));
    assert_eq!(e["before"]["ips"], json!(["203.0.113.0"]));
    assert_eq!(e["after"], Value::Null);

    let object = format!("token/{id}");
    let e = find(&all, "token.create", &object);
    assert_eq!(e["actor"], actor("admin", &app.admin));
    assert_eq!(e["after"]["name"], "tmp");
    assert_eq!(e["after"]["role"], "viewer");
    assert!(
        !e.to_string().contains("elb_"),
        "the audit log never holds a secret: {e}"
    );
    let e = find(&all, "token.revoke", &object);
    assert_eq!(e["before"]["name"], "tmp");
    assert_eq!(e["after"], Value::Null);

    find(&all, "cluster.create", "cluster/prod");
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_tells_apart_two_tokens_of_one_name() {
    let app = TestAppliance::start().await;
    let first = app.token("ci", "operator", None).await;
    let second = app.token("ci", "operator", None).await;
    for (token, pool, range) in [(&first, "one", "10.1.0.0/24"), (&second, "two", "10.2.0.0/24")] {
        let r = post(&app, "/api/v1/pools", token, json!({"name": pool, "ranges": [range]})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let objects = |v: Vec<Value>| -> Vec<(String, String)> {
        v.iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or("").to_owned(),
                    e["object"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let (a, b) = (actor("ci", &first), actor("ci", &second));
    assert_ne!(a, b);
    // The name finds both; the name with the id finds one; a part of a name finds none.
    assert_eq!(
        objects(audit(&app, "?actor=token:ci").await),
        [(b.clone(), "pool/two".to_owned()), (a.clone(), "pool/one".to_owned())]
    );
    assert_eq!(
        objects(audit(&app, &format!("?actor={a}")).await),
        [(a.clone(), "pool/one".to_owned())]
    );
    assert!(audit(&app, "?actor=token:c").await.is_empty());
    // `_` and `%` in a filter are literal: they match no other name.
    assert!(audit(&app, "?actor=token:c_").await.is_empty());
    assert!(audit(&app, "?actor=token:%25").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_filters_by_actor_object_and_time() {
    let app = TestAppliance::start().await;
    let ops = app.token("ops", "operator", None).await;
    app.pool("public", &["203.0.113.0/26"]).await;
    app.cluster("prod").await;
    // Audit times have one-second resolution: let the next changes fall in a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(
        &app,
        "/api/v1/pools",
        &ops,
        json!({"name": "private", "ranges": ["10.0.0.0/24"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    put(&app, &svc("prod", "default", "web"), &ops, service_spec("u1")).await;

    let actions = |v: Vec<Value>| -> Vec<String> {
        v.iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap_or(""),
                    e["object"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        actions(audit(&app, "?actor=token:ops").await),
        ["service.allocate service/prod/default/web", "pool.create pool/private"]
    );
    assert_eq!(
        actions(audit(&app, "?object=pool/public").await),
        ["pool.create pool/public"]
    );
    assert_eq!(
        actions(audit(&app, "?object=pool").await),
        ["pool.create pool/private", "pool.create pool/public"],
        "a kind alone matches every object of it"
    );
    assert_eq!(
        actions(audit(&app, "?object=service/prod").await),
        ["service.allocate service/prod/default/web"],
        "a prefix matches everything below it"
    );
    assert!(
        audit(&app, "?object=pool/pub").await.is_empty(),
        "no partial-name matches"
    );

    let newest = audit(&app, "?limit=1").await;
    let since = newest[0]["time"].as_str().expect("time").to_owned();
    assert_eq!(
        actions(audit(&app, &format!("?since={since}")).await),
        ["service.allocate service/prod/default/web", "pool.create pool/private"]
    );
    assert!(audit(&app, "?since=2999-01-01T00:00:00Z").await.is_empty());
    assert_eq!(
        audit(&app, "?since=2000-01-01T00:00:00Z&limit=1000").await.len(),
        audit(&app, "?limit=1000").await.len()
    );

    let r = get(&app, "/api/v1/audit?since=yesterday", &app.admin).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["since must be an RFC 3339 time"]);
    let r = get(&app, "/api/v1/audit?cursor=abc", &app.admin).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["cursor"]);
    let r = get(&app, "/api/v1/audit?limit=0", &app.admin).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["limit"]);
    let r = get(&app, "/api/v1/audit?who=me", &app.admin).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["unknown field `who`"]);
    app.stop().await;
}

#[tokio::test]
async fn audit_pages_follow_the_cursor_to_the_end() {
    let app = TestAppliance::start().await;
    for name in ["a", "b", "c", "d", "e"] {
        app.cluster(name).await;
    }
    let all = audit(&app, "?limit=1000").await;
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/v1/audit?limit=2&cursor={c}"),
            None => "/api/v1/audit?limit=2".to_owned(),
        };
        let r = get(&app, &q, &app.admin).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let page = items(&r.json);
        assert!(page.len() <= 2);
        walked.extend(page);
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(walked.len() <= all.len(), "pagination does not end");
    }
    assert_eq!(walked, all);
    assert!(all.len() >= 5, "{all:?}");
    app.stop().await;
}

// ---- health, metrics, OpenAPI, Swagger UI ----

#[tokio::test]
async fn healthz_and_readyz_answer_without_a_token() {
    let app = TestAppliance::start().await;
    let r = get(&app, "/healthz", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text.trim(), "ok");
    let r = get(&app, "/readyz", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("dataplane: none"), "{}", r.text);
    assert!(r.text.contains("store: sqlite answers in "), "{}", r.text);
    // The store in use, checked for the answer; its location only to a caller with a token.
    let info = get(&app, "/api/v1/info", &app.admin).await;
    assert_eq!(info.json["store"]["kind"], "sqlite", "{}", info.text);
    assert_eq!(
        info.json["store"]["location"],
        app.data_dir.join("edgelb.db").display().to_string()
    );
    assert_eq!(info.json["store"]["answering"], true);
    assert!(info.json["store"]["latency_ms"].as_f64().is_some(), "{}", info.text);
    assert!(!r.text.contains(&app.data_dir.display().to_string()), "{}", r.text);
    app.stop().await;
}

#[tokio::test]
async fn a_dual_stack_pool_shows_one_family_exhausted_in_the_api_and_metrics() {
    let app = TestAppliance::start().await;
    app.pool("ds", &["203.0.113.0/31", "2001:db8::/120"]).await;
    app.cluster("prod").await;
    for (uid, name) in [("u1", "a"), ("u2", "b")] {
        put_service(&app, "prod", "default", name, service_spec(uid)).await;
    }
    let r = put(&app, &svc("prod", "default", "c"), &app.admin, service_spec("u3")).await;
    assert_problem(&r, StatusCode::CONFLICT, &["no free IPv4 address"]);
    put_service(
        &app,
        "prod",
        "default",
        "six",
        spec_with("u4", json!({"ip_families": ["IPv6"]})),
    )
    .await;

    let usage = get(&app, "/api/v1/pools/ds", &app.admin).await.json["usage"].clone();
    assert_eq!(
        (usage["total"].as_str(), usage["allocated"].as_u64()),
        (Some("258"), Some(3))
    );
    assert!(usage["utilization"].as_f64().is_some_and(|u| u < 0.02), "{usage}");
    let f = &usage["families"];
    assert_eq!(
        (
            &f[0]["family"],
            &f[0]["total"],
            &f[0]["allocated"],
            &f[0]["free"],
            &f[0]["utilization"]
        ),
        (&json!("IPv4"), &json!("2"), &json!(2), &json!("0"), &json!(1.0)),
        "{usage}"
    );
    assert_eq!(
        (&f[1]["family"], &f[1]["total"], &f[1]["allocated"], &f[1]["free"]),
        (&json!("IPv6"), &json!("256"), &json!(1), &json!("255")),
        "{usage}"
    );
    assert_eq!(f.as_array().map(Vec::len), Some(2));

    let m = get(&app, "/metrics", "").await.text;
    for needle in [
        "edgelb_pool_addresses{pool=\"ds\"} 258",
        "edgelb_pool_family_addresses{pool=\"ds\",family=\"IPv4\"} 2",
        "edgelb_pool_family_addresses_allocated{pool=\"ds\",family=\"IPv4\"} 2",
        "edgelb_pool_family_addresses{pool=\"ds\",family=\"IPv6\"} 256",
        "edgelb_pool_family_addresses_allocated{pool=\"ds\",family=\"IPv6\"} 1",
        "edgelb_pool_family_addresses_held{pool=\"ds\",family=\"IPv6\"} 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    app.stop().await;
}

/// `/metrics` as Prometheus asks for it.
async fn openmetrics(app: &TestAppliance) -> Reply {
    let resp = app
        .client
        .get(format!("{}/metrics", app.url))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("scrape");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.expect("body");
    Reply {
        status,
        headers,
        text,
        json: Value::Null,
    }
}

#[tokio::test]
async fn capacity_thresholds_are_per_pool_validated_and_judge_each_family() {
    let app = TestAppliance::start().await;
    // A dual-stack pool: four IPv4 addresses beside a /64.
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "tiny", "ranges": ["192.0.2.0/30", "2001:db8::/64"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        (
            &r.json["capacity_warning_percent"],
            &r.json["capacity_critical_percent"],
            &r.json["usage"]["level"]
        ),
        (&json!(80), &json!(95), &json!("ok")),
        "the defaults"
    );
    // Bad thresholds: every problem named at once, and the pool unchanged.
    for (body, fields) in [
        (
            json!({"capacity_warning_percent": 90, "capacity_critical_percent": 90}),
            vec!["capacity_critical_percent"],
        ),
        (
            json!({"capacity_warning_percent": 0, "capacity_critical_percent": 101}),
            vec!["capacity_warning_percent", "capacity_critical_percent"],
        ),
        (
            json!({"capacity_warning_percent": 96}),
            vec!["capacity_critical_percent"],
        ),
    ] {
        let r = patch(&app, "/api/v1/pools/tiny", &app.admin, body.clone()).await;
        let p = assert_problem(&r, StatusCode::BAD_REQUEST, &[]);
        assert_eq!(field_names(&p), fields, "{body}: {p}");
    }
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "bad", "ranges": ["198.51.100.0/30"], "capacity_warning_percent": 300}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["capacity_warning_percent"]);
    let r = patch(
        &app,
        "/api/v1/pools/tiny",
        &app.admin,
        json!({"capacity_warning_percent": 50, "capacity_critical_percent": 75}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let audit = get(&app, "/api/v1/audit?object=pool/tiny", &app.admin).await;
    assert_eq!(
        items(&audit.json)[0]["after"]["capacity_warning_percent"],
        50,
        "{}",
        audit.text
    );

    // Each family is judged on its own, and the pool shows its worst: half of the IPv4
    // addresses is a warning however empty the /64; three of four is critical; four exhausted.
    app.cluster("prod").await;
    let level = |v: &Value| {
        (
            v["usage"]["level"].clone(),
            v["usage"]["families"][0]["level"].clone(),
            v["usage"]["families"][1]["level"].clone(),
        )
    };
    let mut seen = Vec::new();
    for n in 1..=4 {
        put_service(
            &app,
            "prod",
            "default",
            &format!("web{n}"),
            service_spec(&format!("u{n}")),
        )
        .await;
        seen.push(level(&get(&app, "/api/v1/pools/tiny", &app.admin).await.json));
    }
    let l = |a: &str, b: &str| (json!(a), json!(a), json!(b));
    assert_eq!(
        seen,
        [
            l("ok", "ok"),
            l("warning", "ok"),
            l("critical", "ok"),
            l("exhausted", "ok")
        ]
    );
    // The next Service is refused with a problem type a client can act on (the agent records a
    // PoolExhausted event); other conflicts stay about:blank.
    let r = put(&app, &svc("prod", "default", "web5"), &app.admin, service_spec("u5")).await;
    let p = assert_problem(
        &r,
        StatusCode::CONFLICT,
        &["pool exhausted: no free IPv4 address in 'tiny'"],
    );
    assert_eq!(p["type"], edgelb_api::PROBLEM_POOL_EXHAUSTED, "{p}");
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "tiny", "ranges": ["198.51.100.0/30"]}),
    )
    .await;
    assert_eq!(
        assert_problem(&r, StatusCode::CONFLICT, &["already exists"])["type"],
        "about:blank"
    );

    // The same on /metrics, in both formats; the classic one is what `promtool check metrics`
    // reads, and it finds nothing to fix.
    let om = openmetrics(&app).await.text;
    let classic = get(&app, "/metrics", "").await;
    assert!(
        classic.content_type().starts_with("text/plain; version=0.0.4"),
        "{}",
        classic.content_type()
    );
    for needle in [
        "edgelb_pool_capacity_level{pool=\"tiny\"} 3",
        "edgelb_pool_family_capacity_level{pool=\"tiny\",family=\"IPv4\"} 3",
        "edgelb_pool_family_capacity_level{pool=\"tiny\",family=\"IPv6\"} 0",
        "edgelb_pool_family_utilization_ratio{pool=\"tiny\",family=\"IPv4\"} 1.0",
        "edgelb_pool_capacity_warning_ratio{pool=\"tiny\"} 0.5",
        "edgelb_pool_capacity_critical_ratio{pool=\"tiny\"} 0.75",
    ] {
        assert!(
            om.contains(needle) && classic.text.contains(needle),
            "metrics lack {needle}:\n{om}"
        );
    }
    assert!(
        classic.text.contains("# TYPE edgelb_http_requests_total counter"),
        "{}",
        classic.text
    );
    assert!(!classic.text.contains("# EOF"), "{}", classic.text);
    common::promtool_check_metrics(&classic.text);
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_pool_sizes_and_requests_by_route_template() {
    let app = with_pool_and_cluster().await;
    app.pool("v6", &["2001:db8:1::/64"]).await;
    put_service(&app, "prod", "default", "web", service_spec("u1")).await;
    get(&app, "/api/v1/pools/nope", &app.admin).await;
    let r = openmetrics(&app).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().contains("openmetrics-text"), "{}", r.content_type());
    assert!(r.text.ends_with("# EOF\n"), "{}", r.text);
    let m = &r.text;
    for needle in [
        "edgelb_pool_addresses{pool=\"public\"} 64",
        "edgelb_pool_addresses_allocated{pool=\"public\"} 1",
        "edgelb_pool_addresses_held{pool=\"public\"} 0",
        "edgelb_services 1",
        "edgelb_http_requests_total{route=\"/api/v1/pools\",method=\"POST\",status=\"201\"} 2",
        "edgelb_http_requests_total{route=\"/api/v1/pools/{name}\",method=\"GET\",status=\"404\"} 1",
        "edgelb_http_requests_total{route=\"/api/v1/clusters/{cluster}/services/{namespace}/{name}\",method=\"PUT\",status=\"200\"} 1",
        "edgelb_http_request_duration_seconds_bucket{",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    assert!(
        !m.contains("/api/v1/clusters/prod/"),
        "raw paths make one series per Service:\n{m}"
    );
    // 2^64 as a float; how it is spelled (exponent, trailing digits) is the encoder's business.
    let v6: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("edgelb_pool_addresses{pool=\"v6\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no size of pool v6:\n{m}"));
    assert_eq!(v6, 18_446_744_073_709_551_616_f64);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_the_contract_paths() {
    let app = TestAppliance::start().await;
    let r = get(&app, "/api/v1/openapi.json", "").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&r.text).expect("the OpenAPI document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/pools",
        "/api/v1/pools/{name}",
        "/api/v1/clusters",
        "/api/v1/clusters/{cluster}",
        "/api/v1/clusters/{cluster}/services",
        "/api/v1/clusters/{cluster}/services/{namespace}/{name}",
        "/api/v1/clusters/{cluster}/nodes",
        "/api/v1/clusters/{cluster}/sync",
        "/api/v1/allocations",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/audit",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    // Every schema a response refers to is in the document, down to a pool's usage per family.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in ["Pool", "PoolUsage", "FamilyUsage", "Problem"] {
        assert!(schemas.contains_key(name), "OpenAPI lacks schema {name}");
    }
    assert!(
        schemas["PoolUsage"]["properties"]["families"].is_object(),
        "{}",
        schemas["PoolUsage"]
    );
    let svc = &paths["/api/v1/clusters/{cluster}/services/{namespace}/{name}"];
    for m in ["get", "put", "delete"] {
        assert!(svc.get(m).is_some(), "service path lacks {m}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    app.stop().await;
}

/// The document states what the server answers (schemathesis holds the server to it in
/// scripts/api-contract.sh; this checks the shape without Python): every operation documents
/// 401 and 403, every error is problem+json, path and query parameters are where they are sent
/// and carry their constraints, and a pool's schema lets a pool as served through.
#[tokio::test]
async fn openapi_document_states_errors_parameters_and_constraints() {
    let app = TestAppliance::start().await;
    let doc: Value = serde_json::from_str(&get(&app, "/api/v1/openapi.json", "").await.text).expect("JSON");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            for status in ["401", "403", "500"] {
                assert!(responses.contains_key(status), "{method} {path} lacks {status}");
            }
            for (status, r) in responses
                .iter()
                .filter(|(s, _)| s.starts_with('4') || s.starts_with('5'))
            {
                let types: Vec<&String> = r["content"].as_object().expect("content").keys().collect();
                assert_eq!(types, ["application/problem+json"], "{method} {path} {status}");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().expect("name");
                let place = if path.contains(&format!("{{{name}}}")) {
                    "path"
                } else {
                    "query"
                };
                assert_eq!(p["in"], place, "{method} {path} {name}");
                if place == "path" {
                    assert!(p["schema"]["pattern"].is_string(), "{method} {path} {name}: {p}");
                }
            }
        }
    }
    let audit = &doc["paths"]["/api/v1/audit"]["get"]["parameters"];
    let limit = audit
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000))
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Name"]["pattern"], edgelb_api::NAME_PATTERN);
    assert_eq!(schemas["PoolSpec"]["additionalProperties"], false);
    // A pool as served has the spec's fields and its own: one object, not allOf a closed spec.
    assert!(schemas["Pool"].get("allOf").is_none(), "{}", schemas["Pool"]);
    for field in ["name", "ranges", "usage", "created_at"] {
        assert!(schemas["Pool"]["properties"].get(field).is_some(), "Pool lacks {field}");
    }
    let created = &doc["paths"]["/api/v1/clusters"]["post"]["responses"]["201"];
    assert!(created["headers"]["Location"].is_object(), "{created}");
    assert!(
        created["links"]
            .as_object()
            .is_some_and(|l| l.contains_key("put_service")),
        "{created}"
    );
    app.stop().await;
}

/// A request object written as an array of its fields is refused, at the top and inside.
#[tokio::test]
async fn a_request_object_written_as_an_array_is_400() {
    let app = TestAppliance::start().await;
    for body in [
        json!(["p", ["10.0.0.0/24"]]),
        json!({"name": "p", "ranges": ["10.0.0.0/24"], "health": [1000, 500]}),
    ] {
        let r = app
            .send(Method::POST, "/api/v1/pools", &app.admin, Body::Json(body.clone()))
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, &["map"]);
    }
    assert_eq!(get(&app, "/api/v1/pools", &app.admin).await.json, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn swagger_ui_is_served_from_vendored_assets() {
    let app = TestAppliance::start().await;
    let page = get(&app, "/api/docs/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type().starts_with("text/html"), "{}", page.content_type());
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    // Every script and stylesheet comes from the appliance itself.
    let refs: Vec<&str> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| page.text.split(attr).skip(1).filter_map(|s| s.split('"').next()))
        .collect();
    assert!(refs.iter().any(|r| r.ends_with(".js")), "{refs:?}");
    assert!(refs.iter().any(|r| r.ends_with(".css")), "{refs:?}");
    for r in &refs {
        assert!(
            !r.contains("://") && !r.starts_with("//"),
            "fetched from elsewhere: {r}"
        );
    }
    for r in refs.iter().filter(|r| r.ends_with(".js") || r.ends_with(".css")) {
        let path = format!("/api/docs/{}", r.trim_start_matches("./"));
        let asset = get(&app, &path, "").await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert!(asset.text.len() > 100, "{path} is served: {} bytes", asset.text.len());
    }
    let init = get(&app, "/api/docs/swagger-initializer.js", "").await;
    assert_eq!(init.status, StatusCode::OK);
    assert!(init.text.contains("/api/v1/openapi.json"), "{}", init.text);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_path_is_a_404_problem() {
    let app = TestAppliance::start().await;
    // `/` and other non-API paths belong to the console.
    for path in ["/api/v1/nothing", "/api/v2/pools"] {
        let r = get(&app, path, &app.admin).await;
        assert_problem(&r, StatusCode::NOT_FOUND, &["openapi.json"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_a_405_problem_with_allow() {
    let app = TestAppliance::start().await;
    let r = patch(&app, "/api/v1/clusters", &app.admin, json!({})).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, &["Allow header"]);
    assert_eq!(r.header("allow"), Some("GET,HEAD,POST"));
    let r = post(&app, "/api/v1/allocations", &app.admin, json!({})).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, &["Allow header"]);
    app.stop().await;
}

// ---- concurrency and shutdown ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_puts_get_sixty_four_distinct_ips() {
    let app = TestAppliance::start().await;
    app.pool("public", &["203.0.113.0/25"]).await;
    app.cluster("prod").await;
    let puts = (0..64).map(|i| {
        let (client, url, token) = (app.client.clone(), app.url.clone(), app.admin.clone());
        tokio::spawn(async move {
            let r = client
                .put(format!("{url}{}", svc("prod", "default", &format!("s{i}"))))
                .bearer_auth(token)
                .json(&service_spec(&format!("u{i}")))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().await.expect("json");
            ips(&v)
        })
    });
    let answers = futures::future::join_all(puts).await;
    let all: Vec<String> = answers.into_iter().flat_map(|r| r.expect("task")).collect();
    assert_eq!(all.len(), 64);
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 64, "duplicate addresses: {all:?}");
    let listed = allocations(&app, "?limit=1000").await;
    assert_eq!(listed.len(), 64);
    let p = get(&app, "/api/v1/pools/public", &app.admin).await.json;
    assert_eq!(p["usage"]["allocated"], 64);
    app.stop().await;
}

#[derive(Debug)]
enum Outcome {
    /// No answer at all (refused or reset once the server stopped accepting).
    NoAnswer,
    /// A status and a body that parsed completely.
    Answered(StatusCode, Value),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_every_answer_it_started() {
    const BURST: u64 = 300;
    let app = TestAppliance::start().await;
    app.pool("public", &["10.0.0.0/16"]).await;
    app.cluster("prod").await;
    let admin = app.admin.clone();
    let data_dir = app.data_dir.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            let (client, url, token, done) = (app.client.clone(), app.url.clone(), app.admin.clone(), done.clone());
            tokio::spawn(async move {
                // Spread over 1.5 s so requests keep coming, and some are in flight, when the stop comes.
                tokio::time::sleep(Duration::from_millis(i * 5)).await;
                let sent = client
                    .put(format!("{url}{}", svc("prod", "default", &format!("s{i}"))))
                    .bearer_auth(token)
                    .json(&service_spec(&format!("u{i}")))
                    .send()
                    .await;
                let Ok(resp) = sent else { return (i, Outcome::NoAnswer) };
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .unwrap_or_else(|e| panic!("request {i}: truncated body after {status}: {e}"));
                let v: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("request {i}: incomplete JSON after {status}: {e}: {body:?}"));
                done.fetch_add(1, Ordering::SeqCst);
                (i, Outcome::Answered(status, v))
            })
        })
        .collect();
    // Stop once the appliance is demonstrably busy answering.
    let busy = tokio::time::timeout(Duration::from_secs(20), async {
        while done.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(busy.is_ok(), "the appliance answered fewer than 10 requests in 20 s");
    let dir = app.stop().await;
    let mut answered = Vec::new();
    for t in tasks {
        let (i, outcome) = t.await.expect("no request saw a truncated answer");
        if let Outcome::Answered(status, v) = outcome {
            assert_eq!(status, StatusCode::OK, "request {i}: {v}");
            answered.push((i, ips(&v)));
        }
    }
    assert!(
        (answered.len() as u64) < BURST,
        "the stop came while requests were still coming"
    );

    // Every acknowledged allocation was committed.
    let mut again = TestAppliance::start_in(data_dir).await;
    again.admin = admin;
    for (i, want) in &answered {
        let r = get(&again, &svc("prod", "default", &format!("s{i}")), &again.admin).await;
        assert_eq!(r.status, StatusCode::OK, "s{i} was acknowledged");
        assert_eq!(&ips(&r.json), want);
    }
    assert_eq!(allocations(&again, "?limit=1000").await.len(), answered.len());
    again.stop().await;
    drop(dir);
}

// ---- per-pool health overrides ----

#[tokio::test]
async fn pool_health_overrides_are_created_patched_cleared_and_validated_over_https() {
    let app = TestAppliance::start().await;
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "edge", "ranges": ["198.51.100.0/28"], "health": {"interval_ms": 500, "fall": 2}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let want = json!({"interval_ms": 500, "timeout_ms": null, "rise": null, "fall": 2, "jitter_percent": null});
    assert_eq!(r.json["health"], want);
    assert_eq!(get(&app, "/api/v1/pools/edge", &app.admin).await.json["health"], want);
    let plain = app.pool("plain", &["198.51.100.16/28"]).await;
    assert_eq!(plain["health"], Value::Null, "no overrides: null");

    // Absent: unchanged.
    let r = patch(&app, "/api/v1/pools/edge", &app.admin, json!({"priority": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["health"], want);
    // An object replaces the overrides whole.
    let r = patch(
        &app,
        "/api/v1/pools/edge",
        &app.admin,
        json!({"health": {"timeout_ms": 300, "rise": 4, "jitter_percent": 25}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let replaced = json!({"interval_ms": null, "timeout_ms": 300, "rise": 4, "fall": null, "jitter_percent": 25});
    assert_eq!(r.json["health"], replaced);

    // Invalid: 400 naming every field under `health`, and nothing changes.
    let r = patch(
        &app,
        "/api/v1/pools/edge",
        &app.admin,
        json!({"health": {"interval_ms": 10, "timeout_ms": 300, "rise": 0, "jitter_percent": 60}}),
    )
    .await;
    let p = assert_problem(
        &r,
        StatusCode::BAD_REQUEST,
        &["health.interval_ms", "health.rise", "must be from 0 to 50"],
    );
    assert_eq!(
        field_names(&p),
        [
            "health.interval_ms",
            "health.timeout_ms",
            "health.rise",
            "health.jitter_percent"
        ]
    );
    assert_eq!(
        get(&app, "/api/v1/pools/edge", &app.admin).await.json["health"],
        replaced
    );
    let r = post(
        &app,
        "/api/v1/pools",
        &app.admin,
        json!({"name": "worse", "ranges": ["nope"], "health": {"fall": 1000}}),
    )
    .await;
    let p = assert_problem(&r, StatusCode::BAD_REQUEST, &["2 field(s)"]);
    assert_eq!(field_names(&p), ["ranges[0]", "health.fall"]);
    let r = patch(
        &app,
        "/api/v1/pools/edge",
        &app.admin,
        json!({"health": {"interval": 500}}),
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["unknown field `interval`"]);

    // `null` clears.
    let r = patch(&app, "/api/v1/pools/edge", &app.admin, json!({"health": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["health"], Value::Null);
    assert_eq!(r.json["priority"], 3, "the rest stays");

    // Every change is audited with before and after.
    let changes = audit(&app, "?object=pool/edge").await;
    let healths: Vec<(Value, Value)> = changes
        .iter()
        .filter(|e| e["action"] == "pool.update")
        .map(|e| (e["before"]["health"].clone(), e["after"]["health"].clone()))
        .collect();
    assert!(
        healths.contains(&(replaced.clone(), Value::Null)),
        "the clearing is in the audit log: {healths:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn only_operators_and_admins_set_pool_health() {
    let app = TestAppliance::start().await;
    app.pool("edge", &["198.51.100.0/28"]).await;
    let viewer = app.token("v", "viewer", None).await;
    let operator = app.token("o", "operator", None).await;
    let body = json!({"health": {"fall": 2}});
    let r = patch(&app, "/api/v1/pools/edge", &viewer, body.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = patch(&app, "/api/v1/pools/edge", &operator, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["health"]["fall"], 2);
    app.stop().await;
}

// ---- history ----

fn unix(v: &Value) -> i64 {
    time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339")
    .unix_timestamp()
}

/// The index of unix time `t` in a history answer's points.
fn point_of(window: &Value, t: i64) -> usize {
    let start = unix(&window["start"]);
    let step = window["step_seconds"].as_i64().expect("step");
    usize::try_from((t - start) / step).expect("inside the window")
}

#[tokio::test]
async fn the_history_of_a_service_and_a_pool_reads_back_what_was_recorded_over_https() {
    use common::WrittenHistory;
    let app = with_pool_and_cluster().await;
    let svc_ip = ips(&put_service(&app, "prod", "default", "web", service_spec("u1")).await)[0].clone();
    // Tokens outlive the process: made now, used after the restart.
    let token = app.token("history", "viewer", None).await;
    let agent = app.token("other-agent", "agent", Some("prod")).await;
    let data_dir = app.data_dir.clone();
    let keep = app.stop().await;
    let written = WrittenHistory::write(&data_dir, svc_ip.parse().expect("ip"), "public");
    let app = TestAppliance::start_in(data_dir).await;
    let h = get(&app, "/api/v1/history/services/prod/default/web?range=1h", &token).await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.text);
    let w = &h.json["window"];
    assert_eq!(
        (w["range"].as_str(), w["step_seconds"].as_i64(), w["points"].as_i64()),
        (Some("1h"), Some(10), Some(360))
    );
    let port = &h.json["ports"][0];
    assert_eq!(
        (port["ip"].as_str(), port["port"].as_i64()),
        (Some(svc_ip.as_str()), Some(80))
    );
    let t = &port["traffic"];
    let first = point_of(w, written.times[0]);
    assert_eq!(
        t["connections_per_second"][first],
        Value::Null,
        "no rate before a second sample"
    );
    for &at in &written.times[1..] {
        let i = point_of(w, at);
        let got: Vec<f64> = [
            "connections_per_second",
            "active_connections",
            "bytes_in_per_second",
            "bytes_out_per_second",
        ]
        .iter()
        .map(|m| t[m][i].as_f64().unwrap_or_else(|| panic!("{m} at {at}: {}", t[m][i])))
        .collect();
        assert_eq!(got, WrittenHistory::VS, "at {at}");
    }
    assert_eq!(
        t["connections_per_second"][first - 1],
        Value::Null,
        "before the history: a gap, not zero"
    );
    let rs = port["real_servers"].as_array().expect("real servers");
    assert_eq!(rs.len(), 2);
    for (r, (ip, rate)) in rs.iter().zip(WrittenHistory::RS) {
        assert_eq!(r["ip"], ip);
        assert_eq!(
            r["traffic"]["connections_per_second"][point_of(w, written.times[5])],
            rate
        );
    }
    assert_eq!(rs[0]["transitions"], json!([]));
    let tr = rs[1]["transitions"].as_array().expect("transitions");
    let states: Vec<(&str, &str, &str)> = tr
        .iter()
        .map(|x| {
            (
                x["from"].as_str().expect("from"),
                x["to"].as_str().expect("to"),
                x["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("up", "down", "connect: Connection refused"), ("down", "up", "ok")]
    );
    assert_eq!(unix(&tr[0]["time"]), written.times[10], "when it went down");

    // The day's view: 5-minute means of the same values.
    let d = get(&app, "/api/v1/history/services/prod/default/web?range=24h", &token).await;
    assert_eq!(d.json["window"]["step_seconds"], 300);
    assert_eq!(d.json["window"]["points"], 288);
    let five = &d.json["ports"][0]["traffic"]["bytes_out_per_second"];
    assert_eq!(five[point_of(&d.json["window"], written.times[12])], 500.0);
    let m = get(&app, "/api/v1/history/services/prod/default/web?range=30d", &token).await;
    assert_eq!(
        (
            m.json["window"]["step_seconds"].as_i64(),
            m.json["window"]["points"].as_i64()
        ),
        (Some(3600), Some(720))
    );

    // The pool: its counts at each sample, and the date it runs out at one address in 10 s.
    let p = get(&app, "/api/v1/history/pools/public?range=1h", &token).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    for (i, &at) in written.times.iter().enumerate() {
        let k = point_of(&p.json["window"], at);
        let (allocated, free) = WrittenHistory::pool_at(i);
        assert_eq!(
            (p.json["allocated"][k].as_f64(), p.json["free"][k].as_f64()),
            (Some(allocated), Some(free)),
            "at {at}"
        );
    }
    let a = get(&app, "/api/v1/history/appliance?range=1h", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["pools"][0]["name"], "public");
    assert_eq!(a.json["window"]["points"], 360);

    // Wrong ranges, unknown names and the wrong token get what to fix.
    let r = get(&app, "/api/v1/history/pools/public?range=2h", &token).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["2h", "1h", "24h", "30d"]);
    let r = get(&app, "/api/v1/history/pools/public?span=1h", &token).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, &["span"]);
    let r = get(&app, "/api/v1/history/pools/nope", &token).await;
    assert_problem(&r, StatusCode::NOT_FOUND, &["pool 'nope' does not exist"]);
    let r = get(&app, "/api/v1/history/services/prod/default/nope", &token).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&app, "/api/v1/history/appliance", &agent).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The history's size on /metrics: the port, its two real servers and the pool.
    let m = get(&app, "/metrics", "").await;
    assert!(m.text.contains("edgelb_history_series 4\n"), "{}", m.text);
    assert!(m.text.contains("edgelb_history_written_bytes_total "), "{}", m.text);
    app.stop().await;
    drop(keep);
}
