//! portal-auth inside a real Envoy, fed by a real `edgeguard authz` over a real Postgres:
//! every verdict path, spoofed headers, propagation, authz down and back, store never loaded,
//! and a differential test against the ext_authz path (same requests, same answers).

use std::time::Duration;

use edgeguard_tests::authz::{seed, Authz};
use edgeguard_tests::envoy::{cluster, grpc_cluster, Envoy, EnvoyConfig, STORE_TOKEN};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::http::Resp;
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::{eventually, free_port, Echo};
use edgeguard_tests::tools;
use rand::{Rng, SeedableRng};
use serde_json::json;

const RATE_LIMITED: &str = "This account is rate limited. To upgrade your plan or modify your account settings, log in to your account at https://portal.grove.city/";

fn portal_auth_config(fail_open: bool) -> String {
    json!({
        "store": {"cluster": "authz_http", "authority": "edgeguard-authz", "refresh_interval_ms": 200, "timeout_ms": 2000},
        "rate_limit_headers": true,
        "fail_open": fail_open
    })
    .to_string()
}

/// Envoy with portal-auth syncing from `authz_http_port`.
fn filter_envoy(flavour: Flavour, echo: &Echo, authz_http_port: u16, fail_open: bool) -> Envoy {
    let filter = flavour.filter(
        "portal_auth",
        &portal_auth_config(fail_open),
        &["EDGEGUARD_STORE_TOKEN"],
    );
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters.push(cluster("authz_http", authz_http_port));
    cfg.concurrency = 2;
    Envoy::start(&cfg)
}

/// Envoy with ext_authz → `edgeguard authz`.
fn ext_authz_envoy(echo: &Echo, authz_grpc_port: u16) -> Envoy {
    let f = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
            "failure_mode_allow": false
        }
    });
    let mut cfg = EnvoyConfig::new(echo.port, vec![f]);
    cfg.clusters.push(grpc_cluster("authz", authz_grpc_port));
    Envoy::start(&cfg)
}

fn start_authz(pg: &Postgres) -> Authz {
    let url = pg.peas_url();
    // usage has no NOTIFY trigger (it is written in bulk by metering): refresh it often here
    let a = Authz::start(&[
        ("POSTGRES_CONNECTION_STRING", &url),
        ("RATE_LIMIT_HEADERS", "true"),
        ("RATE_LIMIT_STORE_REFRESH_INTERVAL", "1s"),
    ]);
    assert!(a.wait_ready(Duration::from_secs(20)), "{}", a.log());
    a
}

fn expect_denied(r: &Resp, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.json(), json!({"code": status, "message": message}));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

fn verdicts_stamping_and_propagation(flavour: Flavour) {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg);
    let echo = Echo::start();
    let envoy = filter_envoy(flavour, &echo, a.metrics_port, false);
    eventually("store copy loaded", Duration::from_secs(10), || {
        envoy.get("/v1/app_public", &[]).status == 200
    });

    let r = envoy.request(
        "POST",
        "/v1/app_keyed/relay",
        &[
            ("authorization", "Bearer sk_live_123"),
            ("portal-account-id", "spoofed"),
            ("rl-plan-free", "spoofed"),
            ("Portal-Extra", "x"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.echoed("portal-application-id").as_deref(),
        Some("app_keyed")
    );
    assert_eq!(r.echoed("portal-account-id").as_deref(), Some("acc_unl"));
    assert_eq!(r.echoed("rl-user-limit-40").as_deref(), Some("acc_unl"));
    assert_eq!(r.echoed("rl-plan-free"), None);
    assert_eq!(r.echoed("portal-extra"), None);
    let r = envoy.get("/v1/app_public?x=1", &[]);
    assert_eq!(r.echoed("rl-plan-free").as_deref(), Some("acc_free"));

    for (path, headers, status, message) in [
        (
            "/elsewhere",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
        ("/v1/nope", vec![], 404, "portal app not found"),
        ("/v1/app_deleted", vec![], 404, "portal app not found"),
        ("/v1/app_keyed", vec![], 401, "unauthorized"),
        (
            "/v1/app_keyed",
            vec![("authorization", "wrong")],
            401,
            "unauthorized",
        ),
        ("/v1/app_nokey", vec![], 401, "unauthorized"),
        ("/v1/app_over", vec![], 429, RATE_LIMITED),
    ] {
        expect_denied(&envoy.get(path, &headers), status, message);
        assert_eq!(
            envoy.get("/v1/app_public", &[]).status,
            200,
            "next good request after {path}"
        );
    }

    // a change reaches the filter within the refresh interval + 1 s (here 200 ms + NOTIFY)
    pg.psql("UPDATE portal_application_settings SET secret_key = 'sk_new' WHERE application_id = 'app_keyed'");
    let took = eventually("key change in the filter", Duration::from_secs(5), || {
        envoy
            .get("/v1/app_keyed", &[("authorization", "sk_new")])
            .status
            == 200
    });
    assert!(took < Duration::from_millis(1500), "{took:?}");
    pg.psql("DELETE FROM portal_application_settings WHERE application_id = 'app_public'; DELETE FROM portal_applications WHERE id = 'app_public'");
    eventually("delete in the filter", Duration::from_secs(5), || {
        envoy.get("/v1/app_public", &[]).status == 404
    });
    assert!(envoy.metric("edgeguard_portal_auth_store_fetch_ok") >= 3.0);
    // request counters reach Envoy on the filter's next tick (≤ 100 ms)
    eventually("request counters", Duration::from_secs(2), || {
        envoy.metric("edgeguard_portal_auth_allowed") >= 3.0
            && envoy.metric("edgeguard_portal_auth_denied_rate_limited") >= 1.0
    });
    assert!(envoy.metric("edgeguard_portal_auth_store_apps") >= 5.0);
}

fn authz_down_then_back(flavour: Flavour) {
    let pg = Postgres::start();
    seed(&pg, true);
    let mut a = start_authz(&pg);
    let (grpc, http) = (a.port, a.metrics_port);
    let echo = Echo::start();
    let envoy = filter_envoy(flavour, &echo, http, false);
    eventually("store copy loaded", Duration::from_secs(10), || {
        envoy.get("/v1/app_public", &[]).status == 200
    });

    // authz stopped: the filter keeps deciding from its copy, and counts the failed fetches
    a.proc.stop();
    let failed = envoy.metric("edgeguard_portal_auth_store_fetch_failed");
    eventually("fetch failures counted", Duration::from_secs(5), || {
        envoy.metric("edgeguard_portal_auth_store_fetch_failed") > failed
    });
    for _ in 0..20 {
        assert_eq!(
            envoy
                .get("/v1/app_keyed", &[("authorization", "sk_live_123")])
                .status,
            200
        );
        assert_eq!(envoy.get("/v1/nope", &[]).status, 404);
        assert_eq!(envoy.get("/v1/app_over", &[]).status, 429);
    }
    assert!(envoy.log().contains("keeping the last copy"));

    // a change made while authz is down arrives once it is back (same ports)
    pg.psql("UPDATE portal_applications SET deleted = true WHERE id = 'app_keyed'");
    let url = pg.peas_url();
    let (p, m) = (grpc.to_string(), http.to_string());
    let b = Authz::start(&[
        ("POSTGRES_CONNECTION_STRING", &url),
        ("RATE_LIMIT_HEADERS", "true"),
        ("PORT", &p),
        ("METRICS_PORT", &m),
    ]);
    assert!(b.wait_ready(Duration::from_secs(20)), "{}", b.log());
    eventually("change after restart", Duration::from_secs(5), || {
        envoy
            .get("/v1/app_keyed", &[("authorization", "sk_live_123")])
            .status
            == 404
    });
    assert_eq!(envoy.get("/v1/app_public", &[]).status, 200);
}

fn store_never_loaded_fails_closed_or_open(flavour: Flavour) {
    let echo = Echo::start();
    let dead = free_port();
    let closed = filter_envoy(flavour, &echo, dead, false);
    let r = closed.get("/v1/app_public", &[("rl-plan-free", "spoof")]);
    expect_denied(
        &r,
        503,
        "portal app store is not loaded yet; try again shortly",
    );
    // malformed requests are still told what is wrong
    expect_denied(
        &closed.get("/elsewhere", &[]),
        400,
        "portal app ID not provided in header or path",
    );
    let open = filter_envoy(flavour, &echo, dead, true);
    let r = open.get(
        "/v1/app_public",
        &[("rl-plan-free", "spoof"), ("portal-account-id", "spoof")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.echoed("rl-plan-free"),
        None,
        "spoofed headers are removed even when failing open"
    );
    assert_eq!(r.echoed("portal-account-id"), None);
    eventually("request counters", Duration::from_secs(2), || {
        open.metric("edgeguard_portal_auth_failed_open") >= 1.0
            && closed.metric("edgeguard_portal_auth_denied_store_not_loaded") >= 1.0
    });
}

/// The same request to both paths must give the same status, body and stamped headers.
/// The filter's answer equals ext_authz's. One documented difference: Envoy's dynamic-module
/// ABI cannot set a header to an empty value (it removes it instead), so the native build
/// leaves out `Portal-Account-ID` of an app without account where ext_authz stamps it empty.
fn compare(flavour: Flavour, filter: &Resp, ext: &Resp, what: &str) {
    assert_eq!(
        filter.status, ext.status,
        "{what}: filter {} vs ext_authz {}",
        filter.body, ext.body
    );
    if filter.status == 200 {
        for h in [
            "portal-application-id",
            "portal-account-id",
            "rl-plan-free",
            "rl-user-limit-40",
            "rl-user-limit-2",
            "portal-extra",
        ] {
            let mut want = ext.echoed(h);
            if flavour == Flavour::Native && want.as_deref() == Some("") {
                want = None;
            }
            assert_eq!(filter.echoed(h), want, "{what}: header {h}");
        }
    } else {
        assert_eq!(filter.json(), ext.json(), "{what}");
    }
}

fn differential_against_ext_authz(flavour: Flavour) {
    let pg = Postgres::start();
    seed(&pg, true);
    let a = start_authz(&pg);
    let echo = Echo::start();
    let filter = filter_envoy(flavour, &echo, a.metrics_port, false);
    let ext = ext_authz_envoy(&echo, a.port);
    eventually("store copy loaded", Duration::from_secs(10), || {
        filter.get("/v1/app_public", &[]).status == 200
    });

    let apps = [
        "app_public",
        "app_keyed",
        "app_over",
        "app_noacct",
        "app_nokey",
        "app_deleted",
        "app_quote",
        "nope",
        "app_new",
        "",
    ];
    let keys = [
        "",
        "sk_live_123",
        "Bearer sk_live_123",
        "bearer sk_live_123",
        "sk_live_12",
        "k\"ey",
        "sk_new",
        "Bearer ",
    ];
    let spoofs = [
        ("", ""),
        ("portal-account-id", "evil"),
        ("rl-plan-free", "evil"),
        ("portal-extra", "x"),
        ("rl-user-limit-40", "evil"),
    ];
    // each state: a mutation, then a probe that tells when both paths see it
    type State<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let states: Vec<State> = vec![
        ("", "/v1/app_public", &[], 200),
        ("UPDATE portal_application_settings SET secret_key = 'sk_new' WHERE application_id = 'app_keyed'", "/v1/app_keyed", &[("authorization", "sk_new")], 200),
        ("UPDATE accounts SET plan_type = 'PLAN_UNLIMITED', monthly_user_limit = 2000000 WHERE id = 'acc_over'", "/v1/app_over", &[], 200),
        ("INSERT INTO portal_applications (id, account_id) VALUES ('app_new', 'acc_over'); UPDATE portal_applications SET deleted = true WHERE id = 'app_public'", "/v1/app_new", &[], 200),
        ("UPDATE account_monthly_usage SET relays = 5000000 WHERE account_id = 'acc_over'", "/v1/app_over", &[], 429),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let per_state = 2000;
    let mut compared = 0;
    for (mutation, probe, probe_headers, probe_status) in &states {
        if !mutation.is_empty() {
            pg.psql(mutation);
            // the store reaches both paths; wait for the probe on both
            eventually(
                &format!("state '{mutation}' on both paths"),
                Duration::from_secs(10),
                || {
                    filter.get(probe, probe_headers).status == *probe_status
                        && ext.get(probe, probe_headers).status == *probe_status
                },
            );
            // each Envoy worker keeps its own copy and syncs on its own timer (200 ms here):
            // give the other worker a few refresh intervals too
            std::thread::sleep(Duration::from_millis(800));
        }
        for _ in 0..per_state {
            let app = apps[rng.gen_range(0..apps.len())];
            let key = keys[rng.gen_range(0..keys.len())];
            let spoof = spoofs[rng.gen_range(0..spoofs.len())];
            let path = match rng.gen_range(0..5) {
                0 => format!("/v1/{app}"),
                1 => format!("/v1/{app}/eth?x=1"),
                2 => format!("/v1/{app}?q"),
                3 => "/other/path".to_string(),
                _ => format!("/v1/{}", apps[rng.gen_range(0..apps.len())]),
            };
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if !key.is_empty() {
                headers.push(("authorization", key));
            }
            if rng.gen_bool(0.3) {
                headers.push(("portal-application-id", app));
            }
            if !spoof.0.is_empty() {
                headers.push(spoof);
            }
            let what = format!("{path} {headers:?}");
            compare(
                flavour,
                &filter.get(&path, &headers),
                &ext.get(&path, &headers),
                &what,
            );
            compared += 1;
        }
    }
    assert!(compared >= 10_000);
}

/// The global rate-limit example: the bootstrap is valid for this Envoy, and every descriptor
/// key its routes build has a limit in the envoyproxy/ratelimit config (and vice versa).
#[test]
fn global_rate_limit_example_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("envoy.yaml");
    let out = std::process::Command::new("python3")
        .current_dir(tools::root())
        .args(["envoy/render.py", "envoy/ratelimit/envoy.yaml"])
        .args([
            "ADMIN_PORT=0",
            "PORT=0",
            "RPC_HOST=127.0.0.1",
            "RPC_PORT=1",
            "RATELIMIT_HOST=127.0.0.1",
            "AUTHZ_HOST=127.0.0.1",
        ])
        .arg(format!(
            "WASM_DIR={}",
            tools::wasm("portal_auth").parent().unwrap().display()
        ))
        .arg("PORTAL_AUTH_CONFIG=@envoy/demo/portal-auth.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&rendered, &out.stdout).unwrap();
    let v = std::process::Command::new(tools::envoy())
        .args(["--mode", "validate", "-c"])
        .env("EDGEGUARD_STORE_TOKEN", STORE_TOKEN)
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "envoy --mode validate:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    let bootstrap: serde_json::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let config: serde_json::Value =
        serde_yaml_ng::from_str(&tools::repo_file("envoy/ratelimit/config.yaml")).unwrap();
    assert_eq!(config["domain"], "edgeguard");
    let mut keys_in_routes: Vec<String> = Vec::new();
    let routes = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["rate_limits"];
    for rl in routes.as_array().unwrap() {
        let a = &rl["actions"][0]["request_headers"];
        let header = a["header_name"].as_str().unwrap();
        assert!(header.starts_with("rl-"), "{header}");
        keys_in_routes.push(a["descriptor_key"].as_str().unwrap().to_string());
    }
    let mut keys_in_config: Vec<String> = config["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    keys_in_routes.sort();
    keys_in_config.sort();
    assert_eq!(keys_in_routes, keys_in_config);
}

edgeguard_tests::flavoured!(
    verdicts_stamping_and_propagation,
    authz_down_then_back,
    store_never_loaded_fails_closed_or_open,
    differential_against_ext_authz,
);
