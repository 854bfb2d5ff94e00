//! The admin console in a real headless Chromium against a real appliance over HTTPS: sign-in,
//! pools, tokens, allocations made through the REST API, capacity banners, address history,
//! roles, CSRF and rate limiting.
//!
//! One browser session walks through the scenarios in order (starting Chromium is the slow
//! part); every step checks what a user would see and, where it matters, what the REST API
//! says afterwards, since both are faces of the same store.

mod browser;
mod common;

use browser::Browser;
use common::{TestAppliance, service_spec};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_end_to_end_in_a_real_browser() {
    let app = TestAppliance::start().await;
    let base = app.url.clone();
    let b = Browser::start(1280, 900).await;

    // Unauthenticated: the console sends you to the sign-in page.
    b.goto(&format!("{base}/")).await;
    b.find("#sign-in").await;
    assert_eq!(b.path().await, "/login");

    // A wrong password is refused, and the user name typed stays.
    b.fill("#user", "admin").await;
    b.fill("#password", "not the password").await;
    b.click("#sign-in").await;
    let err = b.text("#login-error").await;
    assert!(err.contains("not right"), "{err}");
    assert_eq!(b.value("#user").await, "admin");
    assert!(!b.has("#logout").await, "a wrong password must not sign in");

    // The right one signs in; the session cookie is HttpOnly, Secure and SameSite=Strict.
    b.login(&base, "admin", &app.admin_password).await;
    assert_eq!(b.path().await, "/");
    assert!(b.text("h1").await.contains("Dashboard"));
    assert_eq!(b.text("#dataplane-mode").await, "none");
    let store = b.text("#store").await;
    assert!(
        store.contains("sqlite") && store.contains("edgelb.db") && store.contains("answers in"),
        "{store}"
    );
    assert!(
        b.text("#health-none")
            .await
            .contains("No health data yet (data plane: none)")
    );
    let cookie = b.client.get_named_cookie("elb_session").await.expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
    assert_eq!(cookie.secure(), Some(true), "{cookie:?}");
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()),
        Some("Strict".into()),
        "{cookie:?}"
    );
    assert!(cookie.expires().is_some(), "the session cookie must expire: {cookie:?}");

    // Create a pool through the form.
    b.goto(&format!("{base}/pools")).await;
    b.click("#new-pool").await;
    b.fill("#name", "public").await;
    b.fill("#ranges", "203.0.113.0/26").await;
    b.find("#forwarding")
        .await
        .select_by_value("tunnel")
        .await
        .expect("select");
    b.click("#save-pool").await;
    b.find(".flash").await;
    assert_eq!(b.path().await, "/pools/public");
    assert!(b.text(".flash").await.contains("Pool public created"));
    assert!(
        b.text("#pool-forwarding").await.contains("tunnel"),
        "the pool page shows its method"
    );
    let (s, pool) = app.get("/api/v1/pools/public", &app.admin).await;
    assert_eq!(s, StatusCode::OK, "the API sees the console's pool: {pool}");
    assert_eq!(pool["forwarding"], "tunnel", "{pool}");

    // An overlapping range: the error is next to the field, names the other pool, and what was
    // typed is still there.
    b.goto(&format!("{base}/pools/new")).await;
    b.fill("#name", "other").await;
    b.fill("#ranges", "198.51.100.0/28\n203.0.113.10-203.0.113.20").await;
    b.fill("#priority", "7").await;
    b.click("#save-pool").await;
    let err = b.text("#err-ranges").await;
    assert!(err.contains("pool 'public'"), "the error names the other pool: {err}");
    assert_eq!(b.value("#name").await, "other");
    let ranges = b.value("#ranges").await;
    assert!(
        ranges.contains("198.51.100.0/28") && ranges.contains("203.0.113.10-203.0.113.20"),
        "typed ranges kept: {ranges:?}"
    );
    assert_eq!(b.value("#priority").await, "7");
    let (s, _) = app.get("/api/v1/pools/other", &app.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A token: its secret is shown once, works with the API, and is gone on reload.
    b.goto(&format!("{base}/tokens")).await;
    b.fill("#t-name", "ci").await;
    b.find("#t-role").await.select_by_value("viewer").await.expect("select");
    b.click("#create-token").await;
    let secret = b.value("#secret-value").await;
    assert!(secret.starts_with("elb_"), "{secret}");
    let (s, _) = app.get("/api/v1/pools", &secret).await;
    assert_eq!(s, StatusCode::OK, "the new token works");
    b.client.refresh().await.expect("reload");
    b.find("#tokens").await;
    assert!(!b.has("#new-secret").await, "the secret is shown only once");
    assert!(!b.body().await.contains(&secret));

    // An allocation made through the REST API appears on the Allocations page.
    app.cluster("prod").await;
    let (s, svc) = app
        .put(
            "/api/v1/clusters/prod/services/default/web",
            &app.admin,
            service_spec("uid-web"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{svc}");
    let ip = svc["ips"][0].as_str().expect("an ip").to_owned();
    b.goto(&format!("{base}/allocations")).await;
    b.fill("#f-ip", &ip).await;
    b.click("#filter").await;
    b.find("table.allocations").await;
    let table = b.text("table.allocations").await;
    assert!(table.contains(&ip) && table.contains("default/web"), "{table}");
    assert!(b.path().await.contains(&format!("ip={ip}")));

    // The pool still holds it: deleting is refused with the reason.
    b.goto(&format!("{base}/pools/public/delete")).await;
    b.click("#confirm-delete").await;
    let refusal = b.text("#delete-refused").await;
    assert!(refusal.contains("still holds") && refusal.contains(&ip), "{refusal}");
    let (s, _) = app.get("/api/v1/pools/public", &app.admin).await;
    assert_eq!(s, StatusCode::OK, "the pool is still there");

    // Revoke the token: it stops working.
    b.goto(&format!("{base}/tokens")).await;
    b.click("tr[data-token='ci'] button").await;
    b.find(".flash").await;
    assert!(b.text(".flash").await.contains("revoked"));
    assert!(!b.has("tr[data-token='ci']").await);
    let (s, _) = app.get("/api/v1/pools", &secret).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked token no longer works");

    // CSRF: a form post without the session's token is refused and changes nothing.
    let status = b
        .post_form("/pools", json!({"name": "forged", "ranges": "192.0.2.0/28"}))
        .await;
    assert_eq!(status, 403);
    let status = b
        .post_form(
            "/pools",
            json!({"csrf": "guessed", "name": "forged", "ranges": "192.0.2.0/28"}),
        )
        .await;
    assert_eq!(status, 403);
    let (s, _) = app.get("/api/v1/pools/forged", &app.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a forged post must change nothing");

    // Every change above is in the audit log as the console user.
    b.goto(&format!("{base}/audit?actor=user%3Aadmin&object=pool%2Fpublic"))
        .await;
    let audit = b.text("#audit").await;
    assert!(audit.contains("pool.create"), "{audit}");

    // An admin creates a viewer; the viewer sees no controls and is refused anyway.
    b.goto(&format!("{base}/users")).await;
    b.fill("#u-name", "vera").await;
    b.find("#u-role").await.select_by_value("viewer").await.expect("select");
    b.fill("#u-password", "viewer password 123").await;
    b.click("#create-user").await;
    b.find(".flash").await;
    assert!(b.text("#users").await.contains("vera"));
    // A role changes in place and is audited; here it goes back to viewer for what follows.
    b.find("#role-vera")
        .await
        .select_by_value("operator")
        .await
        .expect("select");
    b.click("#set-role-vera").await;
    assert!(b.text(".flash").await.contains("vera is now operator"));
    let (_, vera) = app.get("/api/v1/users/vera", &app.admin).await;
    assert_eq!(vera["role"], "operator", "{vera}");
    b.find("#role-vera")
        .await
        .select_by_value("viewer")
        .await
        .expect("select");
    b.click("#set-role-vera").await;
    assert!(b.text(".flash").await.contains("vera is now viewer"));
    b.click("#logout").await;
    b.find("#sign-in").await;
    b.goto(&format!("{base}/pools")).await;
    b.find("#sign-in").await;
    assert_eq!(b.path().await, "/login", "signed out: pages need a session again");

    b.login(&base, "vera", "viewer password 123").await;
    b.goto(&format!("{base}/pools")).await;
    b.find("#pools").await;
    assert!(!b.has("#new-pool").await, "a viewer sees no create control");
    assert!(!b.has("a[href='/pools/public/edit']").await, "nor edit");
    assert!(!b.has("a[href='/pools/public/delete']").await, "nor delete");
    assert!(!b.has("a[href='/tokens']").await, "nor tokens");
    b.goto(&format!("{base}/pools/new")).await;
    assert!(b.text("#error-message").await.contains("viewer"));
    // A forged post with the viewer's valid CSRF token is refused by the role check.
    b.goto(&format!("{base}/pools")).await;
    let csrf = b.value("input[name='csrf']").await;
    let status = b
        .post_form(
            "/pools",
            json!({"csrf": csrf, "name": "viewers", "ranges": "192.0.2.0/28"}),
        )
        .await;
    assert_eq!(status, 403);
    let status = b.post_form("/pools/public/delete", json!({"csrf": csrf})).await;
    assert_eq!(status, 403);
    let (s, _) = app.get("/api/v1/pools/viewers", &app.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the viewer created nothing");
    b.click("#logout").await;
    b.find("#sign-in").await;

    // Repeated failures slow down: three are free, then each one makes the next attempt wait
    // (1 s, 2 s, 4 s, ...), so attempts made back to back are soon refused at once. How many
    // get through before that depends on how fast this machine types; never more than a few.
    let mut answers = Vec::new();
    for _ in 0..10 {
        b.fill("#user", "mallory").await;
        b.fill("#password", "guess guess guess").await;
        b.click("#sign-in").await;
        let err = b.text("#login-error").await;
        let refused = err.contains("Too many failed sign-ins");
        answers.push(err);
        if refused {
            break;
        }
    }
    assert!(
        answers[..3].iter().all(|a| a.contains("not right")),
        "the first three failures are only wrong: {answers:?}"
    );
    assert!(
        answers.len() > 3 && answers.last().is_some_and(|a| a.contains("Too many failed sign-ins")),
        "back-to-back failures end in a refusal: {answers:?}"
    );

    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_past_their_capacity_thresholds_show_banners_on_every_page() {
    let app = TestAppliance::start().await;
    let base = app.url.clone();
    let b = Browser::start(1280, 900).await;
    b.login(&base, "admin", &app.admin_password).await;

    // Thresholds that contradict each other are refused next to the field, nothing is created.
    b.goto(&format!("{base}/pools/new")).await;
    b.fill("#name", "tiny").await;
    b.fill("#ranges", "192.0.2.0/30").await;
    b.fill("#capacity_warning_percent", "90").await;
    b.fill("#capacity_critical_percent", "90").await;
    b.click("#save-pool").await;
    let err = b.text("#err-capacity_critical_percent").await;
    assert!(err.contains("more than capacity_warning_percent (90)"), "{err}");
    assert_eq!(app.get("/api/v1/pools/tiny", &app.admin).await.0, StatusCode::NOT_FOUND);
    b.fill("#capacity_warning_percent", "50").await;
    b.fill("#capacity_critical_percent", "75").await;
    b.click("#save-pool").await;
    b.find(".flash").await;
    assert!(
        b.text("#pool-capacity")
            .await
            .contains("warning from 50%, critical from 75%")
    );
    assert!(!b.has(".banner").await, "an empty pool has no banner");

    // Three of four addresses: critical, on every page, with the pool's numbers.
    app.cluster("prod").await;
    let put = |n: u32| {
        let app = &app;
        async move {
            let path = format!("/api/v1/clusters/prod/services/default/web{n}");
            let (s, v) = app.put(&path, &app.admin, service_spec(&format!("u{n}"))).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    for n in 1..=3 {
        put(n).await;
    }
    for page in ["/", "/allocations", "/audit"] {
        b.goto(&format!("{base}{page}")).await;
        let banner = b.text(".banner-critical[data-pool='tiny']").await;
        assert!(
            banner.contains("75.0% of its IPv4 addresses in use (critical from 75%)"),
            "{page}: {banner}"
        );
    }
    b.goto(&format!("{base}/pools/tiny")).await;
    assert!(b.text("#pool-capacity").await.contains("critical"));
    let (_, pool) = app.get("/api/v1/pools/tiny", &app.admin).await;
    assert_eq!(pool["usage"]["level"], "critical", "the API agrees: {pool}");

    // The last one: exhausted, and the banner says what happens to the next Service.
    put(4).await;
    b.goto(&format!("{base}/pools")).await;
    let banner = b.text(".banner-exhausted[data-pool='tiny']").await;
    assert!(banner.contains("has no free IPv4 address"), "{banner}");
    assert!(!b.has(".banner-critical").await, "one banner per pool, its worst level");
    b.click(".banner-exhausted a").await;
    assert_eq!(b.path().await, "/pools/tiny");
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_a_reused_address_lists_both_holders_in_order() {
    let app = TestAppliance::start().await;
    let base = app.url.clone();
    let (s, v) = app
        .post(
            "/api/v1/pools",
            &app.admin,
            json!({"name": "one", "ranges": ["198.51.100.7/32"], "hold_seconds": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    app.cluster("prod").await;
    let svc = |name: &str| format!("/api/v1/clusters/prod/services/shop/{name}");
    let (s, v) = app.put(&svc("old"), &app.admin, service_spec("uid-old")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.delete(&svc("old"), &app.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The hold (1 s) ends; the only address goes to the next Service.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, v) = app.put(&svc("new"), &app.admin, service_spec("uid-new")).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let b = Browser::start(1280, 900).await;
    b.login(&base, "admin", &app.admin_password).await;
    // From the address where it is shown.
    b.goto(&format!("{base}/allocations")).await;
    b.click("a[href='/history?q=198.51.100.7']").await;
    assert_eq!(b.text("h1").await, "Address history");
    let events = b.texts("#history tbody tr td:nth-child(3)").await;
    let services = b.texts("#history tbody tr td:nth-child(4) code").await;
    assert_eq!(
        events,
        ["assigned", "reused", "held", "released", "assigned"],
        "newest first"
    );
    assert_eq!(
        services,
        [
            "prod/shop/new",
            "prod/shop/old",
            "prod/shop/old",
            "prod/shop/old",
            "prod/shop/old"
        ]
    );
    // The same as the API says, entry for entry.
    let (_, api) = app.get("/api/v1/address-history?ip=198.51.100.7", &app.admin).await;
    let api_events: Vec<&str> = api["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(api_events, events);

    // Search by Service; and each entry leads to the request that made it.
    b.fill("#h-q", "shop/new").await;
    b.click("#search-history").await;
    assert_eq!(b.texts("#history tbody tr td:nth-child(3)").await, ["assigned"]);
    b.click("#history tbody tr td:nth-child(7) a").await;
    assert!(
        b.path()
            .await
            .starts_with("/audit?object=service%2Fprod%2Fshop%2Fnew&since=")
    );
    let actions = b.texts("#audit tbody tr td:nth-child(3)").await;
    assert!(actions.contains(&"service.allocate".to_owned()), "{actions:?}");
    // Nonsense is refused with what to type instead.
    b.goto(&format!("{base}/history?q=not%20an%20ip!")).await;
    assert!(
        b.text("#history-error")
            .await
            .contains("neither an IP address nor a Service")
    );
    b.close().await;
    app.stop().await;
}

/// The API's value of `column` at unix time `t`, as the console's tables print it.
fn api_at(window: &serde_json::Value, column: &serde_json::Value, t: i64) -> String {
    let start = time::OffsetDateTime::parse(
        window["start"].as_str().expect("start"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339")
    .unix_timestamp();
    let i = usize::try_from((t - start) / window["step_seconds"].as_i64().expect("step")).expect("in the window");
    let v = column[i]
        .as_f64()
        .unwrap_or_else(|| panic!("no value at {t}: {}", column[i]));
    format!("{v}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_draw_the_recorded_history_switch_ranges_and_match_the_api() {
    use common::WrittenHistory;
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
    let ip: std::net::IpAddr = v["ips"][0].as_str().expect("ip").parse().expect("ip");
    let (token, password) = (app.admin.clone(), app.admin_password.clone());
    let data_dir = app.data_dir.clone();
    let keep = app.stop().await;
    // Recorded through the appliance's own time-series code, then served by a new start.
    let written = WrittenHistory::write(&data_dir, ip, "public");
    let app = TestAppliance::start_in(data_dir).await;
    let base = app.url.clone();
    let b = Browser::start(1280, 1000).await;
    b.login(&base, "admin", &password).await;

    // From the Services list to the Service's page: per port and per real server.
    b.goto(&format!("{base}/services")).await;
    b.click("a[href='/services/prod/default/web']").await;
    assert_eq!(b.text("h1").await, "Service default/web");
    let chart = "#chart-0-connections";
    assert_eq!(
        b.find(chart).await.attr("data-step").await.expect("attr").as_deref(),
        Some("10")
    );
    assert!(b.has(&format!("{chart} polyline.s0")).await, "the port's line is drawn");
    assert!(
        b.has(&format!("{chart} polyline.s2")).await,
        "and its second real server's"
    );
    // The second real server went down at sample 10 and came back at 15: both marked.
    assert_eq!(b.texts(&format!("{chart} .marks .badge")).await, ["down", "up"]);
    let (_, api) = app
        .get("/api/v1/history/services/prod/default/web?range=1h", &token)
        .await;
    let port = &api["ports"][0];
    b.click_in_place(&format!("{chart} summary")).await;
    for &t in &written.times[1..] {
        let row = b.texts(&format!("{chart}-table tr[data-time='{t}'] td")).await;
        let want: Vec<String> = std::iter::once(api_at(&api["window"], &port["traffic"]["connections_per_second"], t))
            .chain(
                port["real_servers"]
                    .as_array()
                    .expect("real servers")
                    .iter()
                    .map(|r| api_at(&api["window"], &r["traffic"]["connections_per_second"], t)),
            )
            .collect();
        assert_eq!(row[1..], want[..], "at {t}");
        assert_eq!(want, ["2", "1.2", "0.8"], "what was recorded");
    }

    // The ranges switch: 5-minute means over 24 hours, hourly over 30 days.
    b.click("a[data-range='24h']").await;
    assert!(b.path().await.ends_with("?range=24h"));
    assert_eq!(
        b.find(chart).await.attr("data-step").await.expect("attr").as_deref(),
        Some("300")
    );
    assert_eq!(
        b.find(chart).await.attr("data-points").await.expect("attr").as_deref(),
        Some("288")
    );
    let (_, day) = app
        .get("/api/v1/history/services/prod/default/web?range=24h", &token)
        .await;
    let bytes = "#chart-0-bytes";
    b.click_in_place(&format!("{bytes} summary")).await;
    let rows = b.texts(&format!("{bytes}-table tbody tr td:nth-child(3)")).await;
    assert!(rows.contains(&"500".to_owned()), "bytes out per second: {rows:?}");
    let five = api_at(
        &day["window"],
        &day["ports"][0]["traffic"]["bytes_out_per_second"],
        written.times[12],
    );
    assert!(rows.contains(&five), "{five} in {rows:?}");
    b.click("a[data-range='30d']").await;
    assert_eq!(
        b.find(chart).await.attr("data-step").await.expect("attr").as_deref(),
        Some("3600")
    );
    assert_eq!(b.find("a.current").await.text().await.expect("text"), "30d");

    // The dashboard: pools over time, and the pool's page: its usage and run-out date.
    b.goto(&format!("{base}/")).await;
    let (_, whole) = app.get("/api/v1/history/appliance?range=1h", &token).await;
    b.click_in_place("#chart-pools summary").await;
    let t = written.times[3];
    let row = b.texts(&format!("#chart-pools-table tr[data-time='{t}'] td")).await;
    assert_eq!(row[1], api_at(&whole["window"], &whole["pools"][0]["allocated"], t));
    assert_eq!(row[1], "4", "allocated at sample 3");
    assert!(b.has("#chart-connections").await && b.has("#chart-passes").await);
    b.goto(&format!("{base}/pools/public")).await;
    let run_out = b.text("#run-out").await;
    assert!(run_out.contains("runs out around"), "{run_out}");
    assert!(b.has("#chart-pool polyline.s0").await);
    b.close().await;
    app.stop().await;
    drop(keep);
}

/// Without a browser: the console pages carry a strict CSP, and a POST without a session is
/// refused before any handler runs.
#[tokio::test]
async fn console_pages_carry_a_strict_csp_and_refuse_anonymous_posts() {
    let app = TestAppliance::start().await;
    let r = app
        .client
        .get(format!("{}/login", app.url))
        .send()
        .await
        .expect("login page");
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let r = app
        .client
        .post(format!("{}/pools", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=x&ranges=192.0.2.0%2F28")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The API stays bearer-only and untouched by the console.
    let (s, _) = app.get("/api/v1/pools", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.stop().await;
}
