//! Hostile input against the filters inside a real Envoy: a byte that is not UTF-8 in every
//! header each filter reads (request and response side), each bad request followed by 50 good
//! ones on the same worker (`--concurrency 1`), and Envoy's log free of panics, for both
//! builds of each filter (proxy-wasm and the native dynamic module). Then what
//! `failure_policy: FAIL_RELOAD` does for a VM that does die (the test-only trapping build of
//! the floor filter), against `FAIL_CLOSED`, which leaves it dead.

use std::time::Duration;

use edgeguard_tests::authz::{seed, Authz};
use edgeguard_tests::envoy::{cluster, wasm_filter_with_policy, Envoy, EnvoyConfig, STORE_TOKEN};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::http::Resp;
use edgeguard_tests::keys::{now, TestKey};
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::{eventually, Echo};
use edgeguard_tests::tools;
use serde_json::json;

const SECRET: &str = "hostile-real-envoy-secret-0123456789abcdef";
const GOOD_AFTER_EACH: usize = 50;

/// One hostile request and what it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    check: fn(&Resp),
}

/// Fails if Envoy logged a panic or a wasm VM failure.
fn assert_no_panic(envoy: &Envoy) {
    let log = envoy.log();
    for needle in [
        "panic",
        "Uncaught",
        "wasm trap",
        "VM failed",
        "RuntimeError",
    ] {
        assert!(
            !log.contains(needle),
            "Envoy's log shows {needle:?}:\n{}",
            log.lines()
                .filter(|l| l.contains(needle))
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Sends each case, then `GOOD_AFTER_EACH` good requests (all must pass), then checks the log.
fn run(envoy: &Envoy, cases: &[Case], good: &dyn Fn() -> Resp) {
    for c in cases {
        let headers: Vec<(&str, &[u8])> =
            c.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let r = envoy.request_bytes(c.method, &c.path, &headers);
        (c.check)(&r);
        for i in 0..GOOD_AFTER_EACH {
            let r = good();
            assert_eq!(
                r.status, 200,
                "good request {i} after '{}' failed: {} {}",
                c.what, r.status, r.body
            );
        }
    }
    assert_no_panic(envoy);
}

fn token() -> String {
    let n = now();
    TestKey::hmac("k", SECRET.as_bytes()).sign(
        "HS256",
        &json!({"iss": "hostile", "sub": "u1", "exp": n + 600, "shape": {"table": "items"}}),
    )
}

fn jwt_shape_survives_header_bytes_that_are_not_utf8(flavour: Flavour) {
    let echo = Echo::start();
    let config = json!({
        "providers": {"p": {
            "issuer": "hostile",
            "hmac": {"secret": SECRET},
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-token"}],
            "claim_to_headers": [{"header_name": "x-edgeguard-sub", "claim_name": "sub"}]
        }},
        "rules": [
            {"match": {"path": "/v1/shape"}, "provider": "p", "bind_shape": true},
            {"match": {"prefix": "/public"}, "public": true}
        ],
        "shape": {"electric_secret": "electric-secret"},
        "bypass_cors_preflight": true,
        "strip_request_headers": ["portal-*", "rl-*"]
    })
    .to_string();
    let filter = flavour.filter("jwt_shape", &config, &[]);
    let envoy = Envoy::start(&EnvoyConfig::new(echo.port, vec![filter]));
    let bearer = format!("Bearer {}", token());
    let good_path = b"/v1/shape?table=items".to_vec();
    let with_token = |extra: &[(&'static str, &[u8])]| {
        let mut h: Vec<(&'static str, Vec<u8>)> =
            vec![("authorization", bearer.clone().into_bytes())];
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_vec())));
        h
    };
    let cases = vec![
        Case {
            what: "token bytes that are not UTF-8",
            method: "GET",
            path: good_path.clone(),
            headers: vec![("authorization", b"Bearer eyJ\xe9.e30.sig".to_vec())],
            check: |r| {
                assert_eq!(r.status, 401, "{}", r.body);
                assert!(r
                    .header("www-authenticate")
                    .unwrap_or("")
                    .contains("invalid_token"));
            },
        },
        Case {
            what: "second token location not UTF-8",
            method: "GET",
            path: good_path.clone(),
            headers: vec![("x-token", b"\xff\xfe\xfd".to_vec())],
            check: |r| assert_eq!(r.status, 401, "{}", r.body),
        },
        Case {
            what: "User-Agent Latin-1",
            method: "GET",
            path: good_path.clone(),
            headers: with_token(&[("user-agent", b"caf\xe9/1.0")]),
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.echoed("x-edgeguard-sub").as_deref(), Some("u1"));
            },
        },
        Case {
            what: "owned header not UTF-8",
            method: "GET",
            path: good_path.clone(),
            headers: with_token(&[("x-edgeguard-sub", b"adm\xefn")]),
            check: |r| assert_eq!(r.echoed("x-edgeguard-sub").as_deref(), Some("u1")),
        },
        Case {
            what: "stripped header not UTF-8",
            method: "GET",
            path: good_path.clone(),
            headers: with_token(&[
                ("portal-application-id", b"\xe9"),
                ("rl-plan-free", b"\xff"),
            ]),
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.echoed("portal-application-id"), None);
                assert_eq!(r.echoed("rl-plan-free"), None);
            },
        },
        Case {
            what: "Origin not UTF-8 on a preflight",
            method: "OPTIONS",
            path: b"/v1/shape?table=items&secret=client".to_vec(),
            headers: vec![
                ("origin", b"https://caf\xe9.example".to_vec()),
                ("access-control-request-method", b"GET".to_vec()),
            ],
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(
                    r.echoed_path(),
                    "/v1/shape?table=items",
                    "client secret stripped"
                );
            },
        },
        Case {
            what: "Access-Control-Request-Method not UTF-8",
            method: "OPTIONS",
            path: good_path.clone(),
            headers: vec![
                ("origin", b"https://app.example".to_vec()),
                ("access-control-request-method", b"G\xe9T".to_vec()),
            ],
            check: |r| assert_eq!(r.status, 200, "{}", r.body),
        },
        Case {
            what: "upstream Vary not UTF-8 (response side)",
            method: "GET",
            path: good_path.clone(),
            headers: with_token(&[("x-echo-vary", b"X-Caf\xe9")]),
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                let vary = r.header_all("vary").unwrap_or_default();
                assert!(vary.contains("Authorization"), "{vary}");
            },
        },
        Case {
            what: "path not UTF-8",
            method: "GET",
            path: b"/v1/shape?table=caf\xe9".to_vec(),
            headers: with_token(&[]),
            check: |r| assert_eq!(r.status, 400, "{}", r.body),
        },
    ];
    let good = || {
        let r = envoy.request_bytes(
            "GET",
            b"/v1/shape?table=items",
            &[("authorization", bearer.as_bytes())],
        );
        if r.status == 200 {
            assert_eq!(r.echoed("x-edgeguard-sub").as_deref(), Some("u1"));
        }
        r
    };
    run(&envoy, &cases, &good);
    assert!(envoy.metric("edgeguard_jwt_shape_allowed") >= (cases.len() * GOOD_AFTER_EACH) as f64);
}

fn portal_auth_survives_header_bytes_that_are_not_utf8(flavour: Flavour) {
    let pg = Postgres::start();
    seed(&pg, true);
    let url = pg.peas_url();
    let authz = Authz::start(&[
        ("POSTGRES_CONNECTION_STRING", url.as_str()),
        ("RATE_LIMIT_HEADERS", "true"),
        ("EDGEGUARD_STORE_TOKEN", STORE_TOKEN),
    ]);
    assert!(authz.wait_ready(Duration::from_secs(20)), "{}", authz.log());
    let echo = Echo::start();
    let config = json!({
        "store": {"cluster": "authz_http", "authority": "edgeguard-authz", "refresh_interval_ms": 200},
        "rate_limit_headers": true,
        "strip_request_headers": ["x-edgeguard-*"]
    })
    .to_string();
    let filter = flavour.filter("portal_auth", &config, &["EDGEGUARD_STORE_TOKEN"]);
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters.push(cluster("authz_http", authz.metrics_port));
    let envoy = Envoy::start(&cfg);
    eventually("store copy loaded", Duration::from_secs(15), || {
        envoy.get("/v1/app_public", &[]).status == 200
    });
    let cases = vec![
        Case {
            what: "User-Agent Latin-1",
            method: "GET",
            path: b"/v1/app_public".to_vec(),
            headers: vec![("user-agent", b"caf\xe9/1.0".to_vec())],
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(
                    r.echoed("portal-application-id").as_deref(),
                    Some("app_public")
                );
            },
        },
        Case {
            what: "Portal-Application-ID not UTF-8 (the path's id decides)",
            method: "GET",
            path: b"/v1/app_public".to_vec(),
            headers: vec![("portal-application-id", b"app_keyed\xe9".to_vec())],
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(
                    r.echoed("portal-application-id").as_deref(),
                    Some("app_public")
                );
            },
        },
        Case {
            what: "API key not UTF-8 on a keyed app",
            method: "GET",
            path: b"/v1/app_keyed".to_vec(),
            headers: vec![("authorization", b"sk_live_123\xff".to_vec())],
            check: |r| assert_eq!(r.status, 401, "{}", r.body),
        },
        Case {
            what: "owned headers not UTF-8",
            method: "GET",
            path: b"/v1/app_public".to_vec(),
            headers: vec![
                ("portal-account-id", b"\xe9vil".to_vec()),
                ("rl-plan-free", b"\xff".to_vec()),
            ],
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.echoed("portal-account-id").as_deref(), Some("acc_free"));
                assert_eq!(r.echoed("rl-plan-free").as_deref(), Some("acc_free"));
            },
        },
        Case {
            what: "a header another filter owns, not UTF-8",
            method: "GET",
            path: b"/v1/app_public".to_vec(),
            headers: vec![("x-edgeguard-sub", b"adm\xefn".to_vec())],
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.echoed("x-edgeguard-sub"), None);
            },
        },
        Case {
            what: "path not UTF-8",
            method: "GET",
            path: b"/v1/app_p\xe9blic".to_vec(),
            headers: vec![],
            check: |r| assert!([400, 404].contains(&r.status), "{} {}", r.status, r.body),
        },
    ];
    let good = || {
        envoy.request_bytes(
            "POST",
            b"/v1/app_keyed/relay",
            &[("authorization", b"Bearer sk_live_123")],
        )
    };
    run(&envoy, &cases, &good);
}

/// Envoy with the trapping floor build under `policy`, answering from the echo upstream.
fn trap_envoy(echo: &Echo, policy: &str) -> Envoy {
    let filter = wasm_filter_with_policy("floor_trap", &tools::wasm("floor_trap"), "", &[], policy);
    Envoy::start(&EnvoyConfig::new(echo.port, vec![filter]))
}

fn trap(envoy: &Envoy) -> Resp {
    envoy.request("GET", "/x", &[("x-edgeguard-trap", "1")])
}

#[test]
fn fail_reload_brings_a_dead_vm_back() {
    let echo = Echo::start();
    let envoy = trap_envoy(&echo, "FAIL_RELOAD");
    assert_eq!(envoy.get("/x", &[]).status, 200);
    let r = trap(&envoy);
    assert!(
        r.status >= 500,
        "the trapping request fails: {} {}",
        r.status,
        r.body
    );
    // the death is what assert_no_panic looks for in the other tests
    assert!(
        envoy.log().contains("Uncaught RuntimeError"),
        "{}",
        envoy.log()
    );
    // the VM is replaced after the backoff (0.2 s here) and the worker serves again
    eventually(
        "Envoy serves again after the VM died",
        Duration::from_secs(15),
        || envoy.get("/x", &[]).status == 200,
    );
    for _ in 0..GOOD_AFTER_EACH {
        assert_eq!(envoy.get("/x", &[]).status, 200);
    }
    // and again: every death is recovered from, not only the first
    assert!(trap(&envoy).status >= 500);
    eventually(
        "Envoy serves again after a second death",
        Duration::from_secs(15),
        || envoy.get("/x", &[]).status == 200,
    );
}

#[test]
fn fail_closed_leaves_a_dead_vm_dead() {
    // the contrast that makes FAIL_RELOAD matter: without it one bad request ends the worker
    let echo = Echo::start();
    let envoy = trap_envoy(&echo, "FAIL_CLOSED");
    assert_eq!(envoy.get("/x", &[]).status, 200);
    assert!(trap(&envoy).status >= 500);
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..20 {
        let r = envoy.get("/x", &[]);
        assert!(r.status >= 500, "a FAIL_CLOSED VM stays dead: {}", r.status);
    }
}

edgeguard_tests::flavoured!(
    jwt_shape_survives_header_bytes_that_are_not_utf8,
    portal_auth_survives_header_bytes_that_are_not_utf8,
);
