//! The `edgelb` command line, run as the real binary: offline commands against a data
//! directory (`token create`, `user reset-password`, `backup`, `check-config`) and daily
//! commands (pools, allocations, tokens, users) through the REST API of a real appliance over
//! HTTPS.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestAppliance;
use reqwest::StatusCode;

fn edgelb(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    cmd.args(args).env("EDGELB_LOG", "warn");
    for var in [
        "EDGELB_SERVER",
        "EDGELB_TOKEN",
        "EDGELB_TOKEN_FILE",
        "EDGELB_CA_CERT",
        "EDGELB_DATA_DIR",
        "EDGELB_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("edgelb runs")
}

/// Starts `cmd` with its standard error read line by line. Should the process still run after
/// `secs`, it is killed, so a read waiting for a line that never comes ends and the test fails.
fn spawn_watched(
    mut cmd: Command,
    secs: u64,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let stderr_pipe = child.stderr.take().expect("stderr");
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        let _ = Command::new("kill").args(["-9", &pid]).status();
    });
    (child, std::io::BufRead::lines(std::io::BufReader::new(stderr_pipe)))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn client_env<'a>(app: &'a TestAppliance, token: &'a str, ca: &'a str) -> Vec<(&'static str, String)> {
    vec![
        ("EDGELB_SERVER", app.url.clone()),
        ("EDGELB_TOKEN", token.to_owned()),
        ("EDGELB_CA_CERT", ca.to_owned()),
    ]
}

fn run(app: &TestAppliance, token: &str, args: &[&str]) -> Output {
    let ca = app.data_dir.join(edgelb::tls::SELF_SIGNED_CERT);
    let env = client_env(app, token, ca.to_str().expect("utf-8 path"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    edgelb(args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_commands_go_through_the_api_and_are_audited() {
    let app = TestAppliance::start().await;
    let admin = app.admin.clone();

    let created = tokio::task::block_in_place(|| {
        run(
            &app,
            &admin,
            &[
                "pool",
                "create",
                "public",
                "--range",
                "203.0.113.0/26",
                "--range",
                "2001:db8::/64",
            ],
        )
    });
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("public"), "{}", stdout(&created));

    let list = tokio::task::block_in_place(|| run(&app, &admin, &["pool", "list"]));
    assert!(list.status.success(), "{}", stderr(&list));
    let text = stdout(&list);
    assert!(text.starts_with("NAME"), "a table with a header: {text}");
    assert!(text.contains("203.0.113.0/26,2001:db8::/64"), "{text}");

    let json = tokio::task::block_in_place(|| run(&app, &admin, &["pool", "show", "public", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert_eq!(v["usage"]["total"], "18446744073709551680");

    // A mistake is reported with the appliance's detail and a failing exit status.
    let overlap =
        tokio::task::block_in_place(|| run(&app, &admin, &["pool", "create", "other", "--range", "203.0.113.5"]));
    assert!(!overlap.status.success());
    assert!(
        stderr(&overlap).contains("overlaps range '203.0.113.0-203.0.113.63' of pool 'public'"),
        "{}",
        stderr(&overlap)
    );

    // `pool set` changes only what it is given.
    let set = tokio::task::block_in_place(|| {
        run(
            &app,
            &admin,
            &[
                "pool",
                "set",
                "public",
                "--capacity-warning-percent",
                "50",
                "--capacity-critical-percent",
                "60",
                "--forwarding",
                "direct",
                "--json",
            ],
        )
    });
    assert!(set.status.success(), "{}", stderr(&set));
    let v: serde_json::Value = serde_json::from_slice(&set.stdout).expect("--json prints JSON");
    assert_eq!(
        (
            &v["capacity_warning_percent"],
            &v["capacity_critical_percent"],
            &v["forwarding"],
            &v["ranges"][0]
        ),
        (
            &serde_json::json!(50),
            &serde_json::json!(60),
            &serde_json::json!("direct"),
            &serde_json::json!("203.0.113.0/26")
        ),
        "{v}"
    );
    let back = tokio::task::block_in_place(|| {
        run(
            &app,
            &admin,
            &["pool", "set", "public", "--forwarding", "default", "--json"],
        )
    });
    let v: serde_json::Value = serde_json::from_slice(&back.stdout).expect("JSON");
    assert!(v["forwarding"].is_null() && v["capacity_warning_percent"] == 50, "{v}");
    for (args, needle) in [
        (vec!["pool", "set", "public"], "nothing to change"),
        (
            vec!["pool", "set", "public", "--capacity-warning-percent", "70"],
            "must be more than capacity_warning_percent (70)",
        ),
        (
            vec!["pool", "set", "public", "--forwarding", "fast"],
            "unknown forwarding method 'fast'",
        ),
    ] {
        let out = tokio::task::block_in_place(|| run(&app, &admin, &args));
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }

    // Allocations show in `alloc list`.
    app.cluster("prod").await;
    let (s, v) = app
        .put(
            "/api/v1/clusters/prod/services/default/web",
            &app.admin,
            common::service_spec("u1"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let allocs = tokio::task::block_in_place(|| run(&app, &admin, &["alloc", "list", "--pool", "public"]));
    assert!(allocs.status.success(), "{}", stderr(&allocs));
    assert!(
        stdout(&allocs).contains("203.0.113.0") && stdout(&allocs).contains("default/web"),
        "{}",
        stdout(&allocs)
    );

    let refused = tokio::task::block_in_place(|| run(&app, &admin, &["pool", "delete", "public"]));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("still holds 1 address"),
        "{}",
        stderr(&refused)
    );

    let (_, audit) = app.get("/api/v1/audit?object=pool/public", &app.admin).await;
    let admin_id = app.admin.split('_').nth(1).expect("elb_<id>_<secret>");
    assert_eq!(audit["items"][0]["actor"], format!("token:admin/{admin_id}"), "{audit}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_token_file_wins_over_the_environment() {
    let app = TestAppliance::start().await;
    let file = app.data_dir.parent().expect("parent").join("admin.token");
    std::fs::write(&file, format!("{}\n", app.admin)).expect("write token file");
    let file = file.to_str().expect("utf-8").to_owned();
    // A shell that exports a stale token: the file named on the command line is the one used.
    let list = tokio::task::block_in_place(|| {
        run(
            &app,
            "elb_stale_token_from_the_environment",
            &["pool", "list", "--token-file", &file],
        )
    });
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).starts_with("NAME"), "{}", stdout(&list));
    // Without the option the environment's token is used, and refused.
    let stale = tokio::task::block_in_place(|| run(&app, "elb_stale_token_from_the_environment", &["pool", "list"]));
    assert!(!stale.status.success(), "{}", stdout(&stale));
    // A token file that cannot be read says which.
    let missing = tokio::task::block_in_place(|| {
        run(
            &app,
            &app.admin,
            &["pool", "list", "--token-file", "/nonexistent/edgelb.token"],
        )
    });
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("token file /nonexistent/edgelb.token"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_works_offline_and_prints_the_secret_last() {
    let app = TestAppliance::start().await;
    let dir = app.data_dir.clone();
    app.cluster("prod").await;

    let out = edgelb(
        &[
            "token",
            "create",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--role",
            "agent",
            "--cluster",
            "prod",
            "--name",
            "prod-agent",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out).lines().last().expect("a line").to_owned();
    assert!(secret.starts_with("elb_"), "{secret}");

    // The running appliance accepts it at once, with the agent's limits.
    let (s, _) = app.get("/api/v1/clusters/prod/nodes", &secret).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.get("/api/v1/pools", &secret).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Token listing and revocation through the API.
    let admin = app.admin.clone();
    let list = tokio::task::block_in_place(|| run(&app, &admin, &["token", "list", "--json"]));
    let tokens: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).expect("json");
    let id = tokens.iter().find(|t| t["name"] == "prod-agent").expect("listed")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(!stdout(&list).contains(&secret), "secrets are never listed");
    let revoke = tokio::task::block_in_place(|| run(&app, &admin, &["token", "revoke", &id]));
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let (s, _) = app.get("/api/v1/clusters/prod/nodes", &secret).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Bad input says what to fix.
    let bad = edgelb(
        &[
            "token",
            "create",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--role",
            "root",
            "--name",
            "x",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("use admin, operator, viewer or agent"),
        "{}",
        stderr(&bad)
    );
    let agent_without_cluster = edgelb(
        &[
            "token",
            "create",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--role",
            "agent",
            "--name",
            "x",
        ],
        &[],
    );
    assert!(!agent_without_cluster.status.success());
    assert!(
        stderr(&agent_without_cluster).contains("must name the cluster"),
        "{}",
        stderr(&agent_without_cluster)
    );
    app.stop().await;
}

/// A first start that fails (an explicit `--dataplane ipvs` without IPVS, a busy port) makes no
/// credentials, so the first start that works shows them, and they work.
#[test]
fn the_first_start_that_works_shows_the_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = busy.local_addr().expect("addr").to_string();
    for (dataplane, listen) in [("ipvs", "127.0.0.1:0"), ("none", busy.as_str())] {
        let out = edgelb(
            &[
                "serve",
                "--dataplane",
                dataplane,
                "--listen",
                listen,
                "--data-dir",
                data,
            ],
            &[],
        );
        assert!(
            !out.status.success(),
            "--dataplane {dataplane} --listen {listen} must fail here"
        );
        assert!(!stderr(&out).contains("shown ONCE"), "{}", stderr(&out));
    }

    let mut serve = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    serve
        .args([
            "serve",
            "--dataplane",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ])
        .env("EDGELB_LOG", "warn");
    let (mut child, lines) = spawn_watched(serve, 30);
    let seen: Vec<String> = lines
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("edgelb: listening on "))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("shown ONCE")), "{seen:?}");
    let password = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .expect("a password line")
        .trim()
        .to_owned();
    let signed_in = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let store = edgelb::store::Store::open(Path::new(data)).await.expect("store");
            store.authenticate_user("admin", &password).await.expect("auth")
        });
    assert!(signed_in.is_some(), "the password shown is the admin's");
}

/// A lost console password is reset on the data directory, with the appliance running: the old
/// password stops working, the new one (the last line) works, and an unknown user is named.
#[tokio::test(flavor = "multi_thread")]
async fn user_reset_password_gives_a_new_password_that_works() {
    let app = TestAppliance::start().await;
    let dir = app.data_dir.to_str().expect("utf-8").to_owned();
    let out = edgelb(&["user", "reset-password", "admin", "--data-dir", &dir], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let password = stdout(&out).lines().last().expect("a line").to_owned();
    assert!(password.len() >= 16, "{password}");
    assert_ne!(password, app.admin_password);
    let store = edgelb::store::Store::open(&app.data_dir).await.expect("store");
    assert!(
        store
            .authenticate_user("admin", &app.admin_password)
            .await
            .expect("auth")
            .is_none()
    );
    assert!(
        store
            .authenticate_user("admin", &password)
            .await
            .expect("auth")
            .is_some()
    );

    let out = edgelb(&["user", "reset-password", "root", "--data-dir", &dir], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("there is no console user 'root': the users are admin"),
        "{}",
        stderr(&out)
    );
    let (_, audit) = app.get("/api/v1/audit?object=user/admin", &app.admin).await;
    assert_eq!(audit["items"][0]["action"], "user.password", "{audit}");
    assert_eq!(audit["items"][0]["actor"], "cli", "{audit}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_go_through_the_api_and_never_take_a_password_as_an_argument() {
    let app = TestAppliance::start().await;
    let admin = app.admin.clone();
    let store = edgelb::store::Store::open(&app.data_dir).await.expect("store");

    // Without --password-file a password is made and printed last, once.
    let out = tokio::task::block_in_place(|| run(&app, &admin, &["user", "create", "alice", "--role", "operator"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("shown only once"), "{}", stderr(&out));
    let made = stdout(&out).lines().last().expect("a line").to_owned();
    assert!(
        store.authenticate_user("alice", &made).await.expect("auth").is_some(),
        "{made}"
    );

    // From a file: its line end is not part of the password.
    let file = app.data_dir.join("bob.password");
    std::fs::write(&file, "a password from a file\n").expect("write");
    let file = file.to_str().expect("utf-8").to_owned();
    let out = tokio::task::block_in_place(|| {
        run(
            &app,
            &admin,
            &["user", "create", "bob", "--role", "viewer", "--password-file", &file],
        )
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("a password from a file"), "{}", stdout(&out));
    assert!(
        store
            .authenticate_user("bob", "a password from a file")
            .await
            .expect("auth")
            .is_some()
    );

    let out = tokio::task::block_in_place(|| run(&app, &admin, &["user", "set", "bob", "--role", "admin"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let list = tokio::task::block_in_place(|| run(&app, &admin, &["user", "list"]));
    let text = stdout(&list);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().take(3).collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "ROLE", "SESSIONS"],
            vec!["admin", "admin", "0"],
            vec!["alice", "operator", "0"],
            vec!["bob", "admin", "0"]
        ],
        "{text}"
    );

    // Mistakes: what to fix, and a failing status.
    for (args, needle) in [
        (vec!["user", "create", "carol", "--role", "agent"], "agents use tokens"),
        (vec!["user", "set", "bob"], "nothing to change"),
        (
            vec![
                "user",
                "create",
                "carol",
                "--role",
                "viewer",
                "--password-file",
                "/nonexistent",
            ],
            "password file /nonexistent",
        ),
        (vec!["user", "delete", "nobody"], "user 'nobody' does not exist"),
    ] {
        let out = tokio::task::block_in_place(|| run(&app, &admin, &args));
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let short = app.data_dir.join("short.password");
    std::fs::write(&short, "short").expect("write");
    let short = short.to_str().expect("utf-8").to_owned();
    let out = tokio::task::block_in_place(|| run(&app, &admin, &["user", "set", "alice", "--password-file", &short]));
    assert!(stderr(&out).contains("12 to 1024 characters"), "{}", stderr(&out));

    let out = tokio::task::block_in_place(|| run(&app, &admin, &["user", "delete", "alice"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, users) = app.get("/api/v1/users", &app.admin).await;
    let names: Vec<&str> = users
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "bob"]);
    let (_, audit) = app.get("/api/v1/audit?object=user/alice", &app.admin).await;
    assert_eq!(audit["items"][0]["action"], "user.delete", "{audit}");
    app.stop().await;
}

#[test]
fn token_create_on_an_empty_directory_says_how_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgelb(
        &[
            "token",
            "create",
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
            "--role",
            "admin",
            "--name",
            "a",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("run `edgelb serve"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_a_consistent_copy_taken_while_serving() {
    let app = TestAppliance::start().await;
    app.pool("public", &["198.51.100.0/24"]).await;
    let dest = app.data_dir.parent().expect("parent").join("backup.db");
    let dir = app.data_dir.clone();
    let out = edgelb(
        &[
            "backup",
            dest.to_str().expect("utf-8"),
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dest).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o600, "the backup holds credential hashes: mode {mode:o}");
    let again = edgelb(
        &[
            "backup",
            dest.to_str().expect("utf-8"),
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(!again.status.success(), "an existing file is never overwritten");
    assert!(stderr(&again).contains("exists already"), "{}", stderr(&again));
    // Keep the temporary directory (it holds the copy) until the end of the test.
    let _kept = app.stop().await;

    // The copy is a whole database: it opens, and holds the pool.
    let restored = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&dest, restored.path().join(edgelb::store::DB_FILE)).expect("copy");
    let store = edgelb::store::Store::open(restored.path()).await.expect("opens");
    assert_eq!(store.integrity_check().await.expect("check"), "ok");
    assert_eq!(
        store.get_pool("public").await.expect("pool").spec.ranges,
        vec!["198.51.100.0/24"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_serving_store_to_postgres_and_back() {
    let app = TestAppliance::start().await;
    app.pool("public", &["198.51.100.0/24"]).await;
    let source = format!("sqlite:{}", app.data_dir.join(edgelb::store::DB_FILE).display());
    let pg = edgelb_pgtest::database("cli_copy");
    let out = edgelb(&["store", "copy", "--from", &source, "--to", &pg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("pools") && said.contains("and verified every row"),
        "{said}"
    );
    let again = edgelb(&["store", "copy", "--from", &source, "--to", &pg], &[]);
    assert!(!again.status.success(), "a target that holds a store is refused");
    assert!(stderr(&again).contains("is not empty"), "{}", stderr(&again));
    let _kept = app.stop().await;

    let back = tempfile::tempdir().expect("tempdir");
    let file = back.path().join(edgelb::store::DB_FILE);
    let to = format!("sqlite:{}", file.display());
    let out = edgelb(&["store", "copy", "--from", &pg, "--to", &to], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = edgelb::store::Store::open(back.path()).await.expect("opens");
    assert_eq!(
        store.get_pool("public").await.expect("pool").spec.ranges,
        vec!["198.51.100.0/24"]
    );

    // A password given in the URL is never printed, not even in an error.
    let secret = pg
        .replacen("postgres://edgelb@", "postgres://edgelb:s3cret-pw@", 1)
        .replace("/t", "/missing_t");
    let out = edgelb(
        &[
            "store",
            "copy",
            "--from",
            &secret,
            "--to",
            &format!("sqlite:{}", back.path().join("x.db").display()),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains("s3cret-pw") && !stdout(&out).contains("s3cret-pw"),
        "{}",
        stderr(&out)
    );
    let out = edgelb(
        &["store", "copy", "--from", "mysql://u:s3cret-pw@h/db", "--to", &to],
        &[],
    );
    assert!(
        stderr(&out).contains("give sqlite:") && !stderr(&out).contains("s3cret-pw"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("edgelb.toml");
    std::fs::write(
        &file,
        "listen = \"nowhere\"\ntls_cert = \"/nonexistent/cert.pem\"\nshutdown_grace_seconds = 9000\n",
    )
    .expect("write");
    let out = edgelb(&["check-config", "--config", file.to_str().expect("utf-8")], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("'nowhere' is not an address"), "{err}");
    assert!(err.contains("tls_cert is set but tls_key is not"), "{err}");
    assert!(err.contains("shutdown_grace_seconds"), "{err}");

    let good = dir.path().join("good.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &good,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:9443\"\n",
            data.display().to_string()
        ),
    )
    .expect("write");
    let out = edgelb(&["check-config", "--config", good.to_str().expect("utf-8")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("listen=127.0.0.1:9443"), "{}", stdout(&out));
    assert!(!Path::new(&data).exists(), "check-config changes nothing");
}

/// This machine's kernel has no IPVS (see KERNEL-LAB.md): an explicit `--dataplane ipvs` must
/// refuse to start and say why, while the unconfigured default must start, control plane only.
#[test]
fn explicit_ipvs_fails_loudly_where_the_default_falls_back_to_none() {
    assert!(
        !Path::new("/proc/net/ip_vs").exists(),
        "this test expects a kernel without IPVS, like the development and CI machines"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let out = edgelb(
        &[
            "serve",
            "--dataplane",
            "ipvs",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(!out.status.success(), "an explicit ipvs without IPVS must not start");
    let err = stderr(&out);
    assert!(err.contains("no IPVS") && err.contains("--dataplane none"), "{err}");

    let mut serve = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env_remove("EDGELB_DATAPLANE")
        .env("EDGELB_LOG", "warn");
    let (mut child, mut lines) = spawn_watched(serve, 30);
    let mut seen = Vec::new();
    let listening = lines.by_ref().map_while(Result::ok).find(|l| {
        seen.push(l.clone());
        l.starts_with("edgelb: listening on ")
    });
    let warned = lines
        .map_while(Result::ok)
        .take(3)
        .any(|l| l.contains("CONTROL PLANE ONLY"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening.is_some(), "the default starts: {seen:?}");
    assert!(warned, "and says loudly that nothing is forwarded");
}

/// `serve` reads its settings from the environment (`EDGELB_DATA_DIR`, `EDGELB_LISTEN`,
/// `EDGELB_TLS_CERT`, `EDGELB_TLS_KEY`, `EDGELB_DATAPLANE`) and serves the certificate it is
/// given, as an operator's own would be: a client that trusts only that certificate gets in,
/// and no self-signed one is made.
#[test]
fn serve_reads_its_environment_and_serves_the_certificate_it_is_given() {
    edgelb::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator's certificate");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let data = dir.path().join("from-env");

    let mut serve = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    serve
        .arg("serve")
        .env("EDGELB_LOG", "warn")
        .env("EDGELB_DATA_DIR", &data)
        .env("EDGELB_LISTEN", "127.0.0.1:0")
        .env("EDGELB_TLS_CERT", &cert_path)
        .env("EDGELB_TLS_KEY", &key_path)
        .env("EDGELB_DATAPLANE", "none")
        .env_remove("EDGELB_CONFIG");
    let (mut child, mut lines) = spawn_watched(serve, 60);
    let mut seen = Vec::new();
    // `by_ref`: the pipe stays open while the appliance serves.
    let url = lines.by_ref().map_while(Result::ok).find_map(|l| {
        seen.push(l.clone());
        l.strip_prefix("edgelb: listening on https://127.0.0.1:")
            .map(|port| format!("https://localhost:{port}"))
    });
    let Some(url) = url else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("never listened: {seen:?}");
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem")])
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("client");
            let r = client.get(format!("{url}/healthz")).send().await;
            match r {
                Ok(r) => Ok(r.status()),
                Err(e) => Err(format!("{e:?}")),
            }
        });
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    assert_eq!(
        answer,
        Ok(StatusCode::OK),
        "a client trusting only the given certificate"
    );
    assert!(
        data.join("edgelb.db").exists(),
        "the data directory came from EDGELB_DATA_DIR"
    );
    assert!(
        !data.join(edgelb::tls::SELF_SIGNED_CERT).exists(),
        "no self-signed certificate is made when one is given"
    );
}

/// The appliance keeps serving when its standard error goes away (the journal restarted, a
/// pipe to a pager closed): the log lines after that are dropped, the process stays.
#[test]
fn serve_outlives_its_standard_error() {
    edgelb::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    serve
        .args(["serve", "--dataplane", "none", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        // Every request logged, so writes to the closed stream certainly happen.
        .env("EDGELB_LOG", "debug");
    let (mut child, mut lines) = spawn_watched(serve, 60);
    let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
        l.strip_prefix("edgelb: listening on https://127.0.0.1:")
            .map(str::to_owned)
    });
    drop(lines);
    let port = port.expect("the appliance listens");
    let client = common::client_for(&data);
    let answers: Vec<Result<StatusCode, String>> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut out = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let r = client.get(format!("https://localhost:{port}/healthz")).send().await;
                out.push(r.map(|r| r.status()).map_err(|e| format!("{e:?}")));
            }
            out
        });
    let alive = child.try_wait().expect("status").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "the appliance is still running with its standard error closed");
    assert!(answers.iter().all(|a| *a == Ok(StatusCode::OK)), "{answers:?}");
}

/// Under a file-descriptor limit of 1,024, 1,100 idle connections neither stop the appliance nor
/// keep `/healthz` from answering for long: connections over the cap are closed at once with a
/// warning in the log, and the idle ones are closed after the client timeout.
#[test]
#[allow(unsafe_code)] // getrlimit and setrlimit have no safe wrapper among our dependencies.
fn a_flood_of_idle_connections_is_capped_logged_and_timed_out() {
    const IDLE: usize = 1100;
    edgelb::tls::install_crypto_provider();
    // This process holds the idle connections: give it room for them.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(4096);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > IDLE + 100,
        "the test needs {} file descriptors: {lim:?}",
        IDLE + 100
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut serve = Command::new("prlimit");
    serve
        .args(["--nofile=1024:1024", "--"])
        .arg(env!("CARGO_BIN_EXE_edgelb"))
        .args([
            "serve",
            "--dataplane",
            "none",
            "--listen",
            "127.0.0.1:0",
            // The cap is reached only while connections come faster than the client timeout
            // closes them (960 per timeout); a CI host connected 1,100 in 6 s, which a 5 s
            // timeout drained as fast as they came. 20 s needs only 48 a second.
            "--client-timeout-seconds",
            "20",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("EDGELB_LOG", "warn");
    let (child, mut lines) = spawn_watched(serve, 120);
    // Killed however the test ends: it holds this test's output open.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("edgelb: listening on https://127.0.0.1:")
                .map(str::to_owned)
        })
        .expect("the appliance listens (is prlimit from util-linux installed?)")
        .parse()
        .expect("port");
    // The log from here on, read while the test goes on.
    let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = log_tx.send(l);
        }
    });

    let flood = std::time::Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..IDLE)
        .map(|i| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let connected_in = flood.elapsed();
    // The warning comes while the flood is on; give it 20 s on a loaded machine.
    let mut seen = Vec::new();
    let warned = std::iter::from_fn(|| log_rx.recv_timeout(std::time::Duration::from_secs(20)).ok())
        .inspect(|l| seen.push(l.clone()))
        .find(|l| l.contains("connection limit reached"));
    assert!(
        warned.as_deref().is_some_and(|l| l.contains("\"max_connections\":960")),
        "the cap is logged: {warned:?} in {seen:?} ({IDLE} connected in {connected_in:?})"
    );

    // Every idle connection is closed by the appliance: over the cap at once, the others after
    // the client timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(45)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("idle connection {i} was not closed: {other:?}"),
        }
    }
    // ...and the appliance answers again, with the idle connections still open on our side.
    let client = common::client_for(&data);
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            client
                .get(format!("https://localhost:{port}/healthz"))
                .send()
                .await
                .map(|r| r.status())
        });
    let alive = child.0.try_wait().expect("status").is_none();
    drop(child);
    assert!(alive, "the appliance survived the flood");
    assert_eq!(answer.map_err(|e| format!("{e:?}")), Ok(StatusCode::OK));
    drop(idle);
}

/// A client that sends its request headers a byte at a time (slowloris) is cut off at the client
/// timeout however steadily the bytes come, here on a kept-alive connection whose first request
/// was answered (so only the header timeout can end it, not the first-request or idle ones).
#[test]
fn request_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_client_timeout() {
    use std::io::{ErrorKind, Read, Write};
    use std::time::{Duration, Instant};

    use rustls::pki_types::pem::PemObject;

    edgelb::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_edgelb"));
    serve
        .args(["serve", "--dataplane", "none", "--listen", "127.0.0.1:0"])
        .args(["--client-timeout-seconds", "2"])
        .arg("--data-dir")
        .arg(&data);
    let (child, mut lines) = spawn_watched(serve, 60);
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = KillOnDrop(child);
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("edgelb: listening on https://127.0.0.1:")
                .map(str::to_owned)
        })
        .expect("the appliance listens")
        .parse()
        .expect("port");
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));

    let mut roots = rustls::RootCertStore::empty();
    let cert = rustls::pki_types::CertificateDer::from_pem_file(data.join(edgelb::tls::SELF_SIGNED_CERT))
        .expect("self-signed certificate");
    roots.add(cert).expect("root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls");
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);

    // A first request, answered in full: the connection is now kept alive between requests.
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("first request");
    let mut answer = Vec::new();
    let asked = Instant::now();
    while !answer.ends_with(b"ok\n") {
        let mut buf = [0u8; 512];
        match tls.read(&mut buf) {
            Ok(0) => panic!("closed before answering: {}", String::from_utf8_lossy(&answer)),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    asked.elapsed() < Duration::from_secs(20),
                    "no answer to the first request"
                );
            }
            Err(e) => panic!("first request: {e}"),
        }
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The second request's headers, one byte every 200 ms: about 40 s, 20 client timeouts.
    let trickle = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut sent = 0;
    let ended = loop {
        if sent == trickle.len() {
            break None;
        }
        if let Err(e) = tls.write_all(&trickle[sent..=sent]) {
            break Some(format!("write: {e}"));
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match tls.read(&mut buf) {
            Ok(0) => break Some("closed".to_owned()),
            Ok(n) => break Some(format!("answered {}", String::from_utf8_lossy(&buf[..n]))),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    let after = started.elapsed();
    let ended = ended.unwrap_or_else(|| panic!("still open after {sent} bytes over {after:?}"));
    // Cut off before the headers could be finished, with no request served from them.
    assert!(sent < trickle.len(), "{ended} after {sent} bytes");
    assert!(!ended.contains("200 OK"), "the trickled request was served: {ended}");
}
