//! `edgeguard authz` against a real Postgres (PEAS's Grove schema), called with the real
//! grpcurl exactly as PEAS documents it, and through Envoy's ext_authz filter.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeguard_tests::authz::{
    seed, seed_sql, verdict_body, verdict_headers, verdict_status, Authz, CheckClient, STORE_TOKEN,
};
use edgeguard_tests::envoy::{grpc_cluster, metric_value, Envoy, EnvoyConfig};
use edgeguard_tests::http;
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::{eventually, free_port, Echo};
use edgeguard_tests::tools;
use serde_json::{json, Value};

const RATE_LIMITED: &str = "This account is rate limited. To upgrade your plan or modify your account settings, log in to your account at https://portal.grove.city/";

fn start_authz(pg: &Postgres, extra: &[(&str, &str)]) -> Authz {
    let url = pg.peas_url();
    let mut env = vec![("POSTGRES_CONNECTION_STRING", url.as_str())];
    env.extend_from_slice(extra);
    let a = Authz::start(&env);
    assert!(
        a.wait_ready(Duration::from_secs(20)),
        "store did not load:\n{}",
        a.log()
    );
    a
}

#[test]
fn every_verdict_over_grpcurl_is_peas_compatible() {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[("RATE_LIMIT_HEADERS", "true")]);

    // PEAS's README smoke test: an empty request
    let v = a.check_request(&json!({}));
    assert_eq!(
        v["status"],
        json!({"code": 7, "message": "HTTP request not found"})
    );
    assert_eq!(verdict_status(&v), 400);
    assert_eq!(
        verdict_body(&v),
        json!({"code": 400, "message": "HTTP request not found"})
    );
    let v = a.check_request(&json!({"attributes": {"request": {}}}));
    assert_eq!(verdict_status(&v), 400);
    let v = a.check_request(&json!({"attributes": {"request": {"http": {"method": "GET", "path": "", "headers": {"portal-application-id": "app_public"}}}}}));
    assert_eq!(
        (verdict_status(&v), v["status"]["message"].as_str()),
        (400, Some("path not provided"))
    );

    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
        (
            "/v1/",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
        (
            "/x/app_public",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
        ("/v1/nope", vec![], 404, "portal app not found"),
        ("/v1/app_deleted", vec![], 404, "portal app not found"),
        ("/v1/app_keyed", vec![], 401, "unauthorized"),
        (
            "/v1/app_keyed",
            vec![("authorization", "sk_live_124")],
            401,
            "unauthorized",
        ),
        (
            "/v1/app_keyed",
            vec![("authorization", "bearer sk_live_123")],
            401,
            "unauthorized",
        ),
        ("/v1/app_nokey", vec![], 401, "unauthorized"),
        (
            "/v1/app_nokey",
            vec![("authorization", "")],
            401,
            "unauthorized",
        ),
        ("/v1/app_over", vec![], 429, RATE_LIMITED),
    ];
    for (path, headers, status, message) in &cases {
        let v = a.check(path, headers);
        assert_eq!(verdict_status(&v), *status, "{path} {headers:?}: {v}");
        assert_eq!(v["status"]["code"], 7, "{path}");
        assert_eq!(v["status"]["message"], *message, "{path}");
        // the body is proper JSON with the same code and message
        assert_eq!(
            verdict_body(&v),
            json!({"code": status, "message": message}),
            "{path}"
        );
    }

    // OK: PEAS's two headers in order (+ the Rl header when enabled), status "ok"
    let v = a.check("/v1/app_keyed", &[("authorization", "sk_live_123")]);
    assert_eq!(v["status"]["message"], "ok");
    assert_eq!(
        verdict_headers(&v),
        vec![
            ("Portal-Application-ID".into(), "app_keyed".into()),
            ("Portal-Account-ID".into(), "acc_unl".into()),
            ("Rl-User-Limit-40".into(), "acc_unl".into())
        ]
    );
    let v = a.check("/v1/app_keyed", &[("Authorization", "Bearer sk_live_123")]);
    assert_eq!(verdict_status(&v), 200);
    let v = a.check("/v1/app_quote", &[("authorization", "k\"ey")]);
    assert_eq!(verdict_status(&v), 200, "{v}");
    // the header wins over the path; the query string is not part of the id (PEAS bug fixed)
    let v = a.check("/v1/nope", &[("portal-application-id", "app_public")]);
    assert_eq!(
        verdict_headers(&v)[2],
        ("Rl-Plan-Free".to_string(), "acc_free".to_string())
    );
    let v = a.check("/v1/app_public?x=1", &[]);
    assert_eq!(verdict_status(&v), 200);
    // usage == limit is allowed, strictly greater is limited
    assert_eq!(verdict_status(&a.check("/v1/app_public", &[])), 200);
    // an app without account: OK with an empty account id
    let v = a.check("/v1/app_noacct", &[]);
    assert_eq!(
        verdict_headers(&v)[1],
        ("Portal-Account-ID".to_string(), String::new())
    );
    // client-sent Portal-*/Rl-* headers that the verdict does not set are removed
    let v = a.check(
        "/v1/app_keyed",
        &[
            ("authorization", "sk_live_123"),
            ("rl-plan-free", "victim"),
            ("portal-x", "y"),
            ("x-edgeguard-sub", "admin"),
            ("x-other", "kept"),
        ],
    );
    let mut removed: Vec<&str> = v["okResponse"]["headersToRemove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    removed.sort();
    // ... and so are jwt-shape's (EDGEGUARD_STRIP_REQUEST_HEADERS, default x-edgeguard-*)
    assert_eq!(removed, vec!["portal-x", "rl-plan-free", "x-edgeguard-sub"]);

    // PEAS's metrics with PEAS's labels
    let m = a.metrics();
    assert!(metric_value(&m, "peas_auth_requests_total") >= 20.0, "{m}");
    // an id the store does not have is labelled "unknown", never with the client's value
    assert!(m.contains(r#"peas_auth_requests_total{account_id="",error_type="portal_app_not_found",portal_app_id="unknown",status="denied"}"#), "{m}");
    assert!(!m.contains(r#"portal_app_id="nope""#), "{m}");
    assert!(m.contains(r#"peas_auth_requests_total{account_id="acc_unl",error_type="",portal_app_id="app_keyed",status="authorized"}"#), "{m}");
    assert!(m.contains(r#"peas_rate_limit_checks_total{account_id="acc_over",decision="rate_limited",plan_type="PLAN_FREE"}"#), "{m}");
    assert!(
        m.contains("peas_auth_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(
        m.contains(r#"peas_store_size_total{store_type="portal_apps"} 6"#),
        "{m}"
    );
    assert!(m.contains(r#"peas_account_usage_total{account_id="acc_over",plan_type="PLAN_FREE",rate_limit="1000000"} 1500000"#), "{m}");
    assert!(m.contains(r#"peas_rate_limited_accounts_total{account_id="acc_over",monthly_usage="1500000.00",plan_type="PLAN_FREE",rate_limit="1000000"} 1500000"#), "{m}");
    let h = a.http("/healthz");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "healthy");
    assert_eq!(a.health(""), "SERVING");
    assert_eq!(a.health("envoy.service.auth.v3.Authorization"), "SERVING");
    // no secret ever reaches the log
    assert!(!a.log().contains("sk_live_123"));
    assert!(
        !a.log().contains(":postgres@"),
        "connection string password in log"
    );

    // `make grpcurl-check` runs PEAS's documented command line
    let out = Command::new("make")
        .args(["-s", "-C"])
        .arg(tools::root())
        .args([
            "grpcurl-check",
            "PORTAL_APP_ID=app_keyed",
            "API_KEY=sk_live_123",
        ])
        .env("AUTHZ_ADDR", a.addr())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        verdict_headers(&v)[0],
        ("Portal-Application-ID".to_string(), "app_keyed".to_string())
    );
    let out = Command::new("make")
        .args(["-s", "-C"])
        .arg(tools::root())
        .arg("grpcurl-check")
        .env("AUTHZ_ADDR", a.addr())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "grpcurl-check without PORTAL_APP_ID must fail"
    );
}

#[test]
fn through_envoy_ext_authz() {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[("RATE_LIMIT_HEADERS", "true")]);
    let echo = Echo::start();
    let ext_authz = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
            "failure_mode_allow": false
        }
    });
    let mut cfg = EnvoyConfig::new(echo.port, vec![ext_authz]);
    cfg.clusters.push(grpc_cluster("authz", a.port));
    let envoy = Envoy::start(&cfg);

    let r = envoy.request(
        "POST",
        "/v1/app_keyed/eth",
        &[
            ("authorization", "Bearer sk_live_123"),
            ("portal-account-id", "spoofed"),
            ("portal-application-id", "app_keyed"),
            ("rl-plan-free", "spoofed"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.echoed("portal-application-id").as_deref(),
        Some("app_keyed")
    );
    assert_eq!(r.echoed("portal-account-id").as_deref(), Some("acc_unl"));
    assert_eq!(r.echoed("rl-user-limit-40").as_deref(), Some("acc_unl"));
    assert_eq!(r.echoed("rl-plan-free"), None, "spoofed Rl header removed");

    for (path, headers, status, message) in [
        ("/v1/nope", vec![], 404, "portal app not found"),
        (
            "/v1/app_keyed",
            vec![("authorization", "wrong")],
            401,
            "unauthorized",
        ),
        ("/v1/app_over", vec![], 429, RATE_LIMITED),
        (
            "/elsewhere",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
    ] {
        let r = envoy.request("POST", path, &headers);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json(), json!({"code": status, "message": message}));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // and the next good request still passes
        assert_eq!(envoy.request("POST", "/v1/app_public", &[]).status, 200);
    }
}

#[test]
fn changes_propagate_by_notify_within_a_second() {
    let pg = Postgres::start();
    seed(&pg, true);
    // the interval refresh is out of the picture: NOTIFY must do it
    let a = start_authz(&pg, &[("PORTAL_APP_STORE_REFRESH_INTERVAL", "1h")]);
    assert_eq!(
        verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_live_123")])),
        200
    );

    pg.psql("UPDATE portal_application_settings SET secret_key = 'sk_rotated' WHERE application_id = 'app_keyed'");
    let took = eventually("key rotation visible", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_rotated")])) == 200
    });
    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(500),
        "took {took:?}"
    );
    assert_eq!(
        verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_live_123")])),
        401
    );

    pg.psql("UPDATE portal_applications SET deleted = true WHERE id = 'app_public'");
    eventually("soft delete visible", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/app_public", &[])) == 404
    });
    pg.psql("DELETE FROM portal_application_settings WHERE application_id = 'app_nokey'; DELETE FROM portal_applications WHERE id = 'app_nokey'");
    eventually("hard delete visible", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/app_nokey", &[])) == 404
    });
    // a plan change on the account reaches its apps (PEAS's stale account index is not copied)
    pg.psql("UPDATE accounts SET plan_type = 'PLAN_UNLIMITED', monthly_user_limit = 2000000 WHERE id = 'acc_over'");
    eventually(
        "plan change lifts the limit",
        Duration::from_secs(5),
        || verdict_status(&a.check("/v1/app_over", &[])) == 200,
    );
    pg.psql("INSERT INTO portal_applications (id, account_id) VALUES ('app_new', 'acc_free')");
    eventually("insert visible", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/app_new", &[])) == 200
    });
    assert!(metric_value(&a.metrics(), "edgeguard_store_notifications_total") >= 5.0);
}

#[test]
fn changes_propagate_by_interval_without_triggers() {
    let pg = Postgres::start();
    seed(&pg, false);
    let a = start_authz(
        &pg,
        &[
            ("PORTAL_APP_STORE_REFRESH_INTERVAL", "1s"),
            ("RATE_LIMIT_STORE_REFRESH_INTERVAL", "1s"),
        ],
    );
    pg.psql("DELETE FROM portal_application_settings WHERE application_id = 'app_keyed'; DELETE FROM portal_applications WHERE id = 'app_keyed'");
    eventually(
        "delete visible by interval refresh",
        Duration::from_secs(5),
        || verdict_status(&a.check("/v1/app_keyed", &[])) == 404,
    );
    pg.psql("UPDATE account_monthly_usage SET relays = 10 WHERE account_id = 'acc_over'");
    eventually(
        "usage refresh lifts the 429",
        Duration::from_secs(5),
        || verdict_status(&a.check("/v1/app_over", &[])) == 200,
    );
}

#[test]
fn postgres_down_at_start_then_up() {
    let port = free_port();
    let url = format!("postgres://postgres:postgres@127.0.0.1:{port}/edgeguard");
    let a = Authz::start(&[("POSTGRES_CONNECTION_STRING", &url)]);
    // started, but not serving: health says so and Check says why
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.proc.log_text().len() < 1_000_000);
    assert_eq!(a.health(""), "NOT_SERVING");
    assert_eq!(a.http("/readyz").status, 503);
    let v = a.check("/v1/app_public", &[]);
    assert_eq!(verdict_status(&v), 503, "{v}");
    assert_eq!(v["status"]["code"], 14);
    assert!(verdict_body(&v)["message"]
        .as_str()
        .unwrap()
        .contains("not loaded"));
    // malformed requests are still told what is wrong
    assert_eq!(verdict_status(&a.check("/nope", &[])), 400);

    let pg = Postgres::start_on(port);
    seed(&pg, true);
    assert!(
        a.wait_ready(Duration::from_secs(40)),
        "store never loaded after Postgres came up:\n{}",
        a.log()
    );
    eventually("health SERVING", Duration::from_secs(2), || {
        a.health("") == "SERVING"
    });
    assert_eq!(verdict_status(&a.check("/v1/app_public", &[])), 200);
}

#[test]
fn postgres_lost_mid_run_keeps_serving_and_recovers() {
    let mut pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[("PORTAL_APP_STORE_REFRESH_INTERVAL", "1s")]);
    pg.stop();
    let errors_before = metric_value(&a.metrics(), "peas_data_source_refresh_errors_total");
    eventually("refresh errors counted", Duration::from_secs(10), || {
        metric_value(&a.metrics(), "peas_data_source_refresh_errors_total") > errors_before
    });
    // still serving the last good data
    assert_eq!(
        verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_live_123")])),
        200
    );
    assert_eq!(verdict_status(&a.check("/v1/nope", &[])), 404);
    assert_eq!(a.health(""), "SERVING");
    let stale = metric_value(&a.metrics(), "edgeguard_store_staleness_seconds");
    eventually("staleness grows", Duration::from_secs(10), || {
        metric_value(&a.metrics(), "edgeguard_store_staleness_seconds") > stale + 1.0
    });

    pg.start_again();
    pg.psql("UPDATE portal_application_settings SET secret_key = 'sk_after' WHERE application_id = 'app_keyed'");
    eventually(
        "recovered and saw the change",
        Duration::from_secs(15),
        || verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_after")])) == 200,
    );
    // LISTEN came back too: a change now propagates fast
    pg.psql("UPDATE portal_applications SET deleted = true WHERE id = 'app_public'");
    eventually("notify after reconnect", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/app_public", &[])) == 404
    });
}

#[test]
fn malformed_grpc_requests_break_nothing() {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[]);
    // not a CheckRequest at all: a gRPC error, the server stays up
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        garbage.path(),
        [0u8, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
    )
    .unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
        ])
        .arg(format!("@{}", garbage.path().display()))
        .arg(format!(
            "http://{}/envoy.service.auth.v3.Authorization/Check",
            a.addr()
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(
        head.contains("grpc-status: 13") || head.contains("grpc-status: 3"),
        "{head}"
    );
    // unknown fields and odd shapes are still well-defined verdicts
    let v = a.check_request(&json!({"attributes": {"request": {"http": {"path": "/v1/app_public", "headers": {}, "host": "x"}}, "contextExtensions": {"a": "b"}}}));
    assert_eq!(verdict_status(&v), 200);
    let v = a.check_request(&json!({"attributes": {"request": {"http": {"path": "/v1/app_public", "headerMap": {"headers": [{"key": "portal-application-id", "rawValue": "YXBwX2tleWVk"}]}}}}}));
    assert_eq!(
        verdict_status(&v),
        401,
        "raw header_map is read: the header names app_keyed"
    );
    assert_eq!(
        verdict_status(&a.check("/v1/app_keyed", &[("authorization", "sk_live_123")])),
        200
    );
}

#[test]
fn bad_settings_stop_startup_naming_the_variable() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(tools::edgeguard());
        cmd.arg("authz")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let pg = "postgres://u:p@127.0.0.1:1/db";
    for (env, needle) in [
        (
            vec![("POSTGRES_CONNECTION_STRING", pg), ("PORT", "http")],
            "PORT must be a port number",
        ),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                ("METRICS_PORT", "99999"),
            ],
            "METRICS_PORT must be a port number",
        ),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                ("PORTAL_APP_STORE_REFRESH_INTERVAL", "soon"),
            ],
            "PORTAL_APP_STORE_REFRESH_INTERVAL must be a duration",
        ),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                ("RATE_LIMIT_STORE_REFRESH_INTERVAL", "-5m"),
            ],
            "RATE_LIMIT_STORE_REFRESH_INTERVAL must be a duration",
        ),
        (
            vec![("POSTGRES_CONNECTION_STRING", pg), ("LOGGER_LEVEL", "loud")],
            "LOGGER_LEVEL must be one of",
        ),
        (
            vec![("POSTGRES_CONNECTION_STRING", "mysql://x")],
            "POSTGRES_CONNECTION_STRING must look like",
        ),
        (vec![], "set POSTGRES_CONNECTION_STRING"),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                ("EDGEGUARD_STORE_TOKEN", "tooshort-s3cret"),
            ],
            "EDGEGUARD_STORE_TOKEN (--store-token) must be at least 32 bytes, it has 15",
        ),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                (
                    "EDGEGUARD_STORE_TOKEN",
                    "s3cret s3cret s3cret s3cret s3cret",
                ),
            ],
            "must be printable ASCII without spaces",
        ),
        (
            vec![
                ("POSTGRES_CONNECTION_STRING", pg),
                ("EDGEGUARD_STRIP_REQUEST_HEADERS", "x-edgeguard-*,host"),
            ],
            "EDGEGUARD_STRIP_REQUEST_HEADERS entry 2: 'host' would remove headers every request needs",
        ),
    ] {
        let (code, err) = run(&env);
        assert!(matches!(code, Some(c) if c != 0), "{env:?} started");
        assert!(err.contains(needle), "{env:?}: {err}");
        assert!(!err.contains("s3cret"), "a token in the error: {err}");
    }
}

#[test]
fn db_less_yaml_is_hot_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.yaml");
    std::fs::copy(tools::root().join("envoy/demo/portal-apps.yaml"), &file).unwrap();
    let a = Authz::start(&[("PORTAL_APPS_FILE", file.to_str().unwrap())]);
    assert!(a.wait_ready(Duration::from_secs(10)), "{}", a.log());
    let demo: Value = serde_json::to_value(
        serde_yaml_ng::from_str::<Value>(&std::fs::read_to_string(&file).unwrap()).unwrap(),
    )
    .unwrap();
    let first = demo["apps"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(verdict_status(&a.check(&format!("/v1/{first}"), &[])), 200);

    // a broken edit is refused and the last good data stays
    std::fs::write(&file, "apps: [this is: not valid").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(verdict_status(&a.check(&format!("/v1/{first}"), &[])), 200);
    // a good edit is applied
    let tmp = dir.path().join("apps.yaml.tmp");
    std::fs::write(&tmp, "accounts:\n  - id: acc_x\n    plan: PLAN_FREE\napps:\n  - id: only_app\n    account: acc_x\n    public: true\n...\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("yaml reload", Duration::from_secs(5), || {
        verdict_status(&a.check("/v1/only_app", &[])) == 200
    });
    assert_eq!(verdict_status(&a.check(&format!("/v1/{first}"), &[])), 404);
    assert!(metric_value(&a.metrics(), "peas_data_source_refresh_errors_total") >= 1.0);
}

/// Polls Check for `app` on `addr` without pause until `stop`; every status seen, in order
/// (0: no answer yet).
fn poll_statuses(
    addr: String,
    app: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u16>> {
    std::thread::spawn(move || {
        let mut client = CheckClient::new(&addr);
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push(client.status(app, "").unwrap_or(0));
        }
        seen
    })
}

/// A cold start with Postgres coming up late, polled without pause the whole time: an
/// account over its monthly quota never gets 200. Two services start before Postgres: one
/// that can read everything (apps and usage load close together), and one whose role may not
/// read the usage table at first (apps load, usage does not: the window in which usage is
/// still missing, or Postgres died between the two loads, made deterministic). The second
/// stays not ready (health NOT_SERVING, /readyz and the store feed 503, Check 503) until usage
/// is readable.
#[test]
fn over_quota_is_never_allowed_across_a_cold_start() {
    let port = free_port();
    let full_url = format!("postgres://postgres@127.0.0.1:{port}/edgeguard");
    let ro_url = format!("postgres://store_ro@127.0.0.1:{port}/edgeguard");
    let fast = [
        ("PORTAL_APP_STORE_REFRESH_INTERVAL", "1s"),
        ("RATE_LIMIT_STORE_REFRESH_INTERVAL", "1s"),
    ];
    let mut env_full = vec![("POSTGRES_CONNECTION_STRING", full_url.as_str())];
    env_full.extend_from_slice(&fast);
    let mut env_ro = vec![("POSTGRES_CONNECTION_STRING", ro_url.as_str())];
    env_ro.extend_from_slice(&fast);
    let full = Authz::start(&env_full);
    let ro = Authz::start(&env_ro);
    let stop = Arc::new(AtomicBool::new(false));
    let polls = [
        poll_statuses(full.addr(), "app_over", stop.clone()),
        poll_statuses(ro.addr(), "app_over", stop.clone()),
    ];
    eventually(
        "not serving before Postgres",
        Duration::from_secs(5),
        || full.health("") == "NOT_SERVING" && ro.health("") == "NOT_SERVING",
    );

    let pg = Postgres::start_on(port);
    // schema and data in one transaction (the store sees all of it or nothing); store_ro may
    // read the apps but not the usage
    pg.psql(&format!(
        "CREATE ROLE store_ro LOGIN;\nBEGIN;\n{}\n\
         GRANT SELECT ON accounts, portal_applications, portal_application_settings TO store_ro;\n\
         COMMIT;\n",
        seed_sql(true)
    ));
    assert!(
        full.wait_ready(Duration::from_secs(30)),
        "never ready:\n{}",
        full.log()
    );
    let mut client = CheckClient::new(&full.addr());
    assert_eq!(client.status("app_over", ""), Ok(429));
    assert_eq!(client.status("app_public", ""), Ok(200));

    // apps loaded, usage not: not ready anywhere it shows
    eventually("apps loaded without usage", Duration::from_secs(30), || {
        let r = ro.http("/readyz");
        let v = r.json();
        r.status == 503 && v["apps_loaded"] == true && v["usage_loaded"] == false
    });
    eventually("usage errors counted", Duration::from_secs(10), || {
        ro.metrics().lines().any(|l| {
                l.starts_with("peas_data_source_refresh_errors_total{error_type=\"postgres_error\",source_type=\"rate_limit_store\"}")
                    && !l.ends_with(" 0")
            })
    });
    assert_eq!(ro.health(""), "NOT_SERVING");
    assert_eq!(
        ro.health("envoy.service.auth.v3.Authorization"),
        "NOT_SERVING"
    );
    let feed = ro.store_feed("", Some(STORE_TOKEN));
    assert_eq!(feed.status, 503, "{}", feed.body);
    let mut ro_client = CheckClient::new(&ro.addr());
    assert_eq!(ro_client.status("app_over", ""), Ok(503));
    assert_eq!(ro_client.status("app_public", ""), Ok(503));

    // usage readable: ready, and the quota holds
    pg.psql("GRANT SELECT ON account_monthly_usage TO store_ro");
    assert!(ro.wait_ready(Duration::from_secs(30)), "{}", ro.log());
    eventually("health SERVING", Duration::from_secs(5), || {
        ro.health("") == "SERVING"
    });
    assert_eq!(ro_client.status("app_over", ""), Ok(429));
    assert_eq!(ro_client.status("app_public", ""), Ok(200));

    stop.store(true, Ordering::Relaxed);
    for (name, poll) in ["full", "ro"].into_iter().zip(polls) {
        let seen = poll.join().unwrap();
        assert!(
            !seen.contains(&200),
            "{name}: an over-quota account got 200 during the start"
        );
        assert!(seen.len() > 50, "{name}: only {} polls", seen.len());
        assert!(seen.contains(&503) && seen.ends_with(&[429]), "{name}");
    }
}

/// `/store/v1/snapshot` lists every app and account with key digests: only a request with
/// `Authorization: Bearer <EDGEGUARD_STORE_TOKEN>` gets it (401 with `WWW-Authenticate:
/// Bearer` otherwise), and without a configured token the feed is off (404 saying how to
/// enable it).
#[test]
fn the_store_feed_requires_the_bearer_token() {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[]);
    let full = a.store_feed("", Some(STORE_TOKEN));
    assert_eq!(full.status, 200, "{}", full.body);
    assert_eq!(
        full.header("content-type"),
        Some(edgeguard_verdict::portal_wire::CONTENT_TYPE)
    );
    assert!(full.body.contains("app_keyed"));
    // the scheme is case-insensitive (RFC 7235); nothing changed since the current version
    let version = a.http("/readyz").json()["version"].as_u64().unwrap();
    let lower = format!("bearer {STORE_TOKEN}");
    let r = http::get(
        a.metrics_port,
        &format!("/store/v1/snapshot?since={version}"),
        &[("authorization", &lower)],
    )
    .unwrap();
    assert_eq!(r.status, 304);

    let longer = format!("{STORE_TOKEN}x");
    let shorter = &STORE_TOKEN[..STORE_TOKEN.len() - 1];
    let basic = format!("Basic {STORE_TOKEN}");
    let bare = STORE_TOKEN.to_string();
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer "),
        Some(longer.as_str()),
        Some(shorter),
    ] {
        let r = a.store_feed("", auth);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "{auth:?}: {:?}",
            r.headers
        );
        assert_eq!(r.json()["error"], "unauthorized");
        assert!(!r.body.contains("app_keyed"));
    }
    for raw in [basic.as_str(), bare.as_str()] {
        let r = http::get(
            a.metrics_port,
            "/store/v1/snapshot",
            &[("authorization", raw)],
        )
        .unwrap();
        assert_eq!(r.status, 401, "{raw}");
    }
    let m = a.metrics();
    assert!(
        m.contains(r#"edgeguard_store_feed_requests_total{result="unauthorized"} 7"#),
        "{m}"
    );
    assert!(
        m.contains(r#"edgeguard_store_feed_requests_total{result="full"} 1"#),
        "{m}"
    );
    // the next good request still works; the token never reaches the log
    assert_eq!(a.store_feed("", Some(STORE_TOKEN)).status, 200);
    assert!(!a.log().contains(STORE_TOKEN));

    // no token configured: the feed is off, whatever the request sends
    let off = start_authz(&pg, &[("EDGEGUARD_STORE_TOKEN", "")]);
    for auth in [None, Some(STORE_TOKEN)] {
        let r = off.store_feed("", auth);
        assert_eq!(r.status, 404, "{}", r.body);
        let v = r.json();
        assert_eq!(v["error"], "disabled");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("set EDGEGUARD_STORE_TOKEN"),
            "{v}"
        );
    }
    // the rest of the service is unaffected
    assert_eq!(
        verdict_status(&off.check("/v1/app_keyed", &[("authorization", "sk_live_123")])),
        200
    );
}

/// 50,000 requests naming 50,000 different made-up app ids (and as many made-up keys) share
/// one `portal_app_id="unknown"` label value: `/metrics` stays under 256 KiB, and the next
/// good Check still works.
#[test]
fn made_up_app_ids_do_not_grow_the_metrics() {
    const LIMIT: usize = 256 * 1024;
    const IDS: usize = 50_000;
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg, &[]);
    let mut client = CheckClient::new(&a.addr());
    assert_eq!(client.status("app_keyed", "sk_live_123"), Ok(200));
    assert_eq!(client.status("app_keyed", "wrong"), Ok(401));
    assert_eq!(client.status("app_over", ""), Ok(429));
    let before = a.metrics().len();

    let requests: Vec<_> = (0..IDS)
        .map(|i| {
            edgeguard_tests::bench_authz::check_request(
                &format!("made-up-app-{i:06}"),
                &format!("made-up-key-{i}"),
            )
        })
        .collect();
    let statuses = client.statuses(requests, 16);
    assert!(
        statuses.iter().all(|s| *s == 404),
        "every made-up id is a 404"
    );

    let m = a.metrics();
    println!(
        "/metrics: {before} bytes before, {} after {IDS} made-up ids",
        m.len()
    );
    assert!(m.len() < LIMIT, "/metrics is {} bytes", m.len());
    assert!(
        !m.contains("made-up-"),
        "a client-sent id became a label value"
    );
    assert!(
        m.contains(&format!(
            r#"peas_auth_requests_total{{account_id="",error_type="portal_app_not_found",portal_app_id="unknown",status="denied"}} {IDS}"#
        )),
        "{m}"
    );
    // store ids are still labelled as themselves, and the service answers as before
    assert_eq!(client.status("app_keyed", "sk_live_123"), Ok(200));
    assert_eq!(client.status("app_over", ""), Ok(429));
    let m = a.metrics();
    assert!(m.contains(r#"peas_auth_requests_total{account_id="acc_unl",error_type="",portal_app_id="app_keyed",status="authorized"} 2"#), "{m}");
    assert!(m.contains(r#"peas_auth_requests_total{account_id="acc_unl",error_type="unauthorized",portal_app_id="app_keyed",status="denied"} 1"#), "{m}");
}
