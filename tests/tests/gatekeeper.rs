//! `edgeguard gatekeeper` end to end: the real binary, and a real Envoy whose jwt-shape
//! (wasm and native, `flavoured!`) fetches the gatekeeper's JWKS through `remote_jwks`.
//!
//! - a token from `POST /gatekeeper/items` opens exactly the shape the answer names (where,
//!   params, columns) at the echo upstream behind Envoy, and nothing else; asking beyond the
//!   policy is a 403 from the gatekeeper with its reason; no or bad credentials a 401;
//! - HS256 (Electric's original example) against a jwt-shape HMAC provider;
//! - rotation without a failed request: requests flow through Envoy while
//!   `edgeguard gatekeeper rotate` runs, the new kid takes over and the old one leaves the JWKS
//!   once its tokens have expired, and not one request fails;
//! - two gatekeepers on one key directory serve the same JWKS and sign with the same key
//!   (manual and scheduled rotation);
//! - callers' OpenID Connect tokens from a test IdP (discovery, JWKS, rotation at the IdP);
//! - a broken policy reload keeps the last good policy; development mode is loud.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeguard_tests::envoy::{cluster, metric_value, Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::gatekeeper::{
    claims_of, encode, header_of, rotate, rotated_kid, shape_path, token_of, workdir, Gatekeeper,
};
use edgeguard_tests::http;
use edgeguard_tests::jwks_server::JwksServer;
use edgeguard_tests::keys::{self, jwks, now, TestKey};
use edgeguard_tests::process::{eventually, Echo};
use serde_json::{json, Value};

const ISSUER: &str = "https://gatekeeper.test";
const SHAPE_URL: &str = "http://electric.test/v1/shape";
const HS256_SECRET: &str = "gatekeeper-test-hs256-secret-0123456789";

const POLICY: &str = r#"
rules:
  - name: admins
    table: items
    when: [{ claim: roles, contains: admin }]
    replica: [default, full]
  - name: own-items
    table: items
    where:
      sql: "owner_id = $1"
      params:
        1: { claim: sub }
    columns: [id, title, done, owner_id]
...
"#;

const API_KEYS: &str = "alice=alice-key-0123456789,bob=bob-key-0123456789";
const ALICE: (&str, &str) = ("x-api-key", "alice-key-0123456789");
const BOB: (&str, &str) = ("x-api-key", "bob-key-0123456789");
const ALICE_BYTES: (&str, &[u8]) = ("x-api-key", b"alice-key-0123456789");

/// Replaces the policy file atomically (as the README asks operators to).
fn write_policy(dir: &Path, text: &str) {
    let tmp = dir.join(".policy.yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policy.yaml")).unwrap();
}

/// A gatekeeper on `dir/policy.yaml` and `dir/keys`, API keys for alice and bob.
fn start_gk(dir: &Path, extra: &[&str]) -> Gatekeeper {
    let policy = dir.join("policy.yaml");
    if !policy.exists() {
        write_policy(dir, POLICY);
    }
    let keys = dir.join("keys");
    let log = dir.join(format!(
        "gatekeeper-{}.log",
        edgeguard_tests::process::free_port()
    ));
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--key-dir",
        keys.to_str().unwrap(),
        "--shape-url",
        SHAPE_URL,
        "--issuer",
        ISSUER,
        "--audience",
        "electric",
        "--key-rescan-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Gatekeeper::start(&args, &[("EDGEGUARD_GATEKEEPER_API_KEYS", API_KEYS)], &log)
}

/// jwt-shape trusting the gatekeeper's JWKS (fetched through the `gatekeeper` cluster).
fn remote_config(refresh_s: u64, skew_s: u64) -> String {
    json!({
        "providers": {"gk": {
            "issuer": ISSUER,
            "audiences": ["electric"],
            "algorithms": ["ES256", "EdDSA"],
            "clock_skew_seconds": skew_s,
            "remote_jwks": {"cluster": "gatekeeper", "uri": "http://gatekeeper/.well-known/jwks.json",
                "timeout_ms": 1000, "refresh_interval_s": refresh_s, "retry_interval_s": 1,
                "unknown_kid_refetch_interval_s": 1}
        }},
        "rules": [{"match": {"path": "/v1/shape"}, "provider": "gk", "bind_shape": true}]
    })
    .to_string()
}

fn start_envoy(flavour: Flavour, echo: &Echo, gk_port: u16, config: &str) -> Envoy {
    let filter = flavour.filter("jwt_shape", config, &[]);
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters.push(cluster("gatekeeper", gk_port));
    cfg.concurrency = 2;
    Envoy::start(&cfg)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The value of one labelled series on `/metrics`.
fn series(gk: &Gatekeeper, line_prefix: &str) -> f64 {
    gk.get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn token_opens_exactly_its_shape(flavour: Flavour) {
    let (_t, dir) = workdir();
    let gk = start_gk(&dir, &[]);
    let echo = Echo::start();
    let envoy = start_envoy(flavour, &echo, gk.port, &remote_config(1, 60));

    // alice asks for less than the policy allows: two columns, and a where of her own
    let r = gk.post(
        "items",
        &[ALICE],
        r#"{"columns": ["id", "title"], "where": "done = $1", "params": {"1": "false"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let a = r.json();
    assert_eq!(a["url"], SHAPE_URL);
    assert_eq!(a["table"], "items");
    assert_eq!(a["where"], "(owner_id = $1) AND (done = $2)");
    assert_eq!(a["params"], json!({"1": "alice", "2": "false"}));
    assert_eq!(a["columns"], json!(["id", "title"]));
    let token = token_of(&a);
    let header = header_of(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(
        header["kid"].as_str(),
        gk.jwks_kids().first().map(String::as_str)
    );
    let claims = claims_of(&token);
    assert_eq!(
        claims["shape"],
        json!({"namespace": null, "table": "items", "where": "(owner_id = $1) AND (done = $2)",
               "params": {"1": "alice", "2": "false"}, "columns": ["id", "title"],
               "replica": "default", "log": "full"})
    );
    assert_eq!(
        (&claims["sub"], &claims["iss"], &claims["aud"]),
        (&json!("alice"), &json!(ISSUER), &json!("electric"))
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert_eq!(claims["jti"].as_str().map(str::len), Some(22));

    // exactly that shape passes jwt-shape (which verified the ES256 signature with the
    // gatekeeper's JWKS) and reaches Electric as sent
    let auth = bearer(&token);
    let path = shape_path(&a);
    let r = envoy.get(&path, &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.echoed_path(), path);
    assert!(
        path.contains("params%5B2%5D=false") && path.contains("columns=id%2Ctitle"),
        "{path}"
    );

    // any other shape is refused by jwt-shape
    let policy_where_only = format!(
        "/v1/shape?offset=-1&table=items&where={}&params%5B1%5D=alice&columns=id%2Ctitle",
        encode("owner_id = $1")
    );
    for (what, other) in [
        (
            "someone else's rows",
            path.replace("params%5B1%5D=alice", "params%5B1%5D=bob"),
        ),
        ("without alice's own where", policy_where_only),
        (
            "a column more",
            path.replace("columns=id%2Ctitle", "columns=id%2Ctitle%2Cowner_id"),
        ),
        ("all columns", path.replace("&columns=id%2Ctitle", "")),
        ("replica full", format!("{path}&replica=full")),
    ] {
        assert_ne!(other, path, "{what}");
        let r = envoy.get(&other, &[("authorization", &auth)]);
        assert_eq!(r.status, 403, "{what}: {}", r.body);
    }

    // the gatekeeper refuses what the policy does not allow, saying why
    for (q, body, status, reason) in [
        ("items?columns=id,salary", "", 403, "column_not_allowed"),
        ("items?replica=full", "", 403, "replica_not_allowed"),
        ("secrets", "", 403, "table_not_covered"),
        (
            "items",
            r#"{"where": "true) OR (true"}"#,
            400,
            "bad_request",
        ),
        ("items?where=a%3D%241", "", 400, "bad_request"),
    ] {
        let r = gk.post(q, &[ALICE], body);
        assert_eq!(r.status, status, "{q}: {}", r.body);
        assert_eq!(r.json()["reason"], reason, "{q}: {}", r.body);
    }
    let r = gk.post("items?columns=id,salary", &[ALICE], "");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("column 'salary' is not allowed"),
        "{}",
        r.body
    );
    // no credentials, or bad ones: 401
    let r = gk.post("items", &[], "");
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("missing_credentials"))
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"edgeguard-gatekeeper\"")
    );
    let r = gk.post("items", &[("x-api-key", "not-a-key-0123456789")], "");
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("invalid_api_key"))
    );

    // bob gets his own rows; alice's token does not open them, bob's does
    let b = gk.post("items", &[BOB], "").json();
    assert_eq!(b["params"], json!({"1": "bob"}));
    assert_eq!(b["columns"], json!(["id", "title", "done", "owner_id"]));
    let bob_path = shape_path(&b);
    assert_eq!(
        envoy.get(&bob_path, &[("authorization", &auth)]).status,
        403
    );
    let r = envoy.get(&bob_path, &[("authorization", &bearer(&token_of(&b)))]);
    assert_eq!(r.status, 200, "{}", r.body);

    assert_eq!(
        series(
            &gk,
            "edgeguard_gatekeeper_tokens_issued_total{auth=\"api_key\"}"
        ),
        2.0
    );
    assert_eq!(
        series(
            &gk,
            "edgeguard_gatekeeper_requests_refused_total{reason=\"column_not_allowed\"}"
        ),
        2.0
    );
    assert_eq!(series(&gk, "edgeguard_gatekeeper_keys_published"), 1.0);
    let log = gk.log();
    assert!(log.contains("token issued"), "{log}");
    assert!(!log.contains(&token), "a token leaked into the log");
    assert!(
        !log.contains("alice-key-0123456789"),
        "an API key leaked into the log"
    );
}

fn hs256_like_electrics_example(flavour: Flavour) {
    let (_t, dir) = workdir();
    write_policy(&dir, POLICY);
    let gk = Gatekeeper::start(
        &[
            "--policy",
            dir.join("policy.yaml").to_str().unwrap(),
            "--signing-alg",
            "HS256",
            "--shape-url",
            SHAPE_URL,
            "--issuer",
            ISSUER,
        ],
        &[
            ("EDGEGUARD_GATEKEEPER_API_KEYS", API_KEYS),
            ("EDGEGUARD_GATEKEEPER_HS256_SECRET", HS256_SECRET),
        ],
        &dir.join("gatekeeper.log"),
    );
    let echo = Echo::start();
    let config = json!({
        "providers": {"gk": {"issuer": ISSUER, "audiences": ["electric"], "hmac": {"secret": HS256_SECRET}}},
        "rules": [{"match": {"path": "/v1/shape"}, "provider": "gk", "bind_shape": true}]
    });
    let envoy = start_envoy(flavour, &echo, gk.port, &config.to_string());
    let a = gk.post("items", &[ALICE], "").json();
    let token = token_of(&a);
    assert_eq!(header_of(&token), json!({"alg": "HS256", "typ": "JWT"}));
    let r = envoy.get(&shape_path(&a), &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.body);
    // a shared secret is never published
    assert_eq!(gk.get("/.well-known/jwks.json").json(), json!({"keys": []}));
    assert!(!gk.log().contains(HS256_SECRET));
    // the same token from another secret is refused by jwt-shape
    let forged = TestKey::hmac("x", b"another-secret-of-enough-length-000000")
        .sign("HS256", &claims_of(&token));
    let r = envoy.get(&shape_path(&a), &[("authorization", &bearer(&forged))]);
    assert_eq!(r.status, 401, "{}", r.body);
}

/// What the request loop saw.
#[derive(Default)]
struct Seen {
    ok_by_kid: std::collections::BTreeMap<String, usize>,
    failures: Vec<String>,
}

fn rotation_without_a_failed_request(flavour: Flavour) {
    let (_t, dir) = workdir();
    let timing = [
        "--publish-delay",
        "3s",
        "--token-ttl",
        "4s",
        "--clock-skew",
        "1s",
    ];
    let gk = start_gk(&dir, &timing);
    let echo = Echo::start();
    let envoy = start_envoy(flavour, &echo, gk.port, &remote_config(1, 1));
    let old = gk.jwks_kids();
    assert_eq!(old.len(), 1, "{old:?}");
    let old = old[0].clone();

    // a client that keeps syncing: a fresh token when its token is a second old (well before
    // it expires), and a shape request through Envoy each time round
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (gk_port, envoy_port) = (gk.port, envoy.port);
    let worker = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held: Option<(std::time::Instant, String, String, String)> = None;
            while !stop.load(Ordering::Relaxed) {
                if held
                    .as_ref()
                    .is_none_or(|(t, ..)| t.elapsed() > Duration::from_secs(1))
                {
                    match http::request(gk_port, "POST", "/gatekeeper/items", &[ALICE], "") {
                        Ok(r) if r.status == 200 => {
                            let a = r.json();
                            let token = token_of(&a);
                            let kid = header_of(&token)["kid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string();
                            held = Some((std::time::Instant::now(), token, kid, shape_path(&a)));
                        }
                        other => seen
                            .lock()
                            .unwrap()
                            .failures
                            .push(format!("gatekeeper: {other:?}")),
                    }
                }
                if let Some((_, token, kid, path)) = &held {
                    match http::get(envoy_port, path, &[("authorization", &bearer(token))]) {
                        Ok(r) if r.status == 200 => {
                            *seen
                                .lock()
                                .unwrap()
                                .ok_by_kid
                                .entry(kid.clone())
                                .or_default() += 1;
                        }
                        other => seen
                            .lock()
                            .unwrap()
                            .failures
                            .push(format!("envoy, kid {kid}: {other:?}")),
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let total = |s: &Seen| s.ok_by_kid.values().sum::<usize>();
    eventually("requests flowing", Duration::from_secs(10), || {
        total(&seen.lock().unwrap()) >= 5
    });

    let report = rotate(&[
        "--key-dir",
        dir.join("keys").to_str().unwrap(),
        "--publish-delay",
        "3s",
        "--token-ttl",
        "4s",
        "--clock-skew",
        "1s",
    ]);
    let new = rotated_kid(&report);
    assert!(
        report.contains(&format!("{old} (signing): published until")),
        "{report}"
    );
    // published at once, next to the old key, while the old key still signs
    eventually("both keys published", Duration::from_secs(5), || {
        let kids = gk.jwks_kids();
        kids.contains(&old) && kids.contains(&new)
    });
    let fresh = gk.post("items", &[ALICE], "").json();
    assert_eq!(
        header_of(&token_of(&fresh))["kid"],
        json!(old),
        "the new key signs as soon as it is published"
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("keys").join(format!("{new}.json"))).unwrap(),
    )
    .unwrap();
    let sign_from = meta["sign_from"].as_u64().unwrap();
    assert_eq!(sign_from, meta["created_at"].as_u64().unwrap() + 3);
    // the new key takes over for new tokens; the old one still verifies its tokens
    eventually(
        "the new kid signs and its tokens pass Envoy",
        Duration::from_secs(15),
        || {
            seen.lock()
                .unwrap()
                .ok_by_kid
                .get(&new)
                .is_some_and(|n| *n >= 3)
        },
    );
    assert!(
        gk.jwks_kids().contains(&old),
        "the old key left before its tokens expired"
    );
    // the old key leaves the JWKS once its last token has expired (token lifetime 4 s + skew 1 s
    // after the new key took over), not before
    eventually("the old kid retired", Duration::from_secs(20), || {
        !gk.jwks_kids().contains(&old)
    });
    assert!(
        now() >= sign_from + 5, // token lifetime 4 s + clock skew 1 s
        "the old key left the JWKS before its last token expired"
    );
    assert_eq!(gk.jwks_kids(), vec![new.clone()]);
    let n = total(&seen.lock().unwrap());
    eventually("requests keep flowing", Duration::from_secs(10), || {
        total(&seen.lock().unwrap()) >= n + 10
    });
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.failures.is_empty(),
        "failed requests during the rotation: {:?}",
        seen.failures
    );
    assert!(
        seen.ok_by_kid.get(&old).is_some_and(|n| *n >= 3),
        "{:?}",
        seen.ok_by_kid
    );
    assert!(
        seen.ok_by_kid.get(&new).is_some_and(|n| *n >= 3),
        "{:?}",
        seen.ok_by_kid
    );
    assert_eq!(seen.ok_by_kid.len(), 2, "{:?}", seen.ok_by_kid);
}

fn jwks_json(gk: &Gatekeeper) -> Value {
    gk.get("/.well-known/jwks.json").json()
}

#[test]
fn two_replicas_on_one_key_dir_agree() {
    let (_t, dir) = workdir();
    let a = start_gk(&dir, &["--publish-delay", "2s"]);
    let b = start_gk(&dir, &["--publish-delay", "2s"]);
    // the second replica found the first one's key and wrote none
    assert_eq!(jwks_json(&a), jwks_json(&b));
    assert_eq!(a.jwks_kids().len(), 1);
    let first = a.jwks_kids()[0].clone();
    let kid_of = |gk: &Gatekeeper| {
        header_of(&token_of(&gk.post("items", &[ALICE], "").json()))["kid"].clone()
    };
    assert_eq!(kid_of(&a), json!(first));
    assert_eq!(kid_of(&b), json!(first));

    let new = rotated_kid(&rotate(&[
        "--key-dir",
        dir.join("keys").to_str().unwrap(),
        "--publish-delay",
        "2s",
    ]));
    eventually(
        "both replicas publish both keys",
        Duration::from_secs(5),
        || {
            let (ja, jb) = (jwks_json(&a), jwks_json(&b));
            ja == jb && ja["keys"].as_array().is_some_and(|k| k.len() == 2)
        },
    );
    eventually(
        "both replicas sign with the new key",
        Duration::from_secs(10),
        || kid_of(&a) == json!(new) && kid_of(&b) == json!(new),
    );
    assert_eq!(jwks_json(&a), jwks_json(&b));
}

#[test]
fn two_replicas_rotate_on_a_schedule_and_agree() {
    let (_t, dir) = workdir();
    let sched = [
        "--rotate-every",
        "2s",
        "--publish-delay",
        "1s",
        "--token-ttl",
        "3s",
        "--clock-skew",
        "0s",
    ];
    let a = start_gk(&dir, &sched);
    let b = start_gk(&dir, &sched);
    let auto_keys = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("keys"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("gk-auto-2s-") && n.ends_with(".json"))
            .collect();
        v.sort();
        v
    };
    eventually("two scheduled rotations", Duration::from_secs(15), || {
        auto_keys().len() >= 2
    });
    // every key file was written by exactly one replica (same-period writes: one wins)
    let files = || {
        std::fs::read_dir(dir.join("keys"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .count() as f64
    };
    let rotations = || {
        a.metric("edgeguard_gatekeeper_key_rotations_total")
            + b.metric("edgeguard_gatekeeper_key_rotations_total")
    };
    eventually(
        "as many keys written as files",
        Duration::from_secs(5),
        || rotations() == files(),
    );
    // and the replicas agree on the JWKS and on the signing key
    let kid_of = |gk: &Gatekeeper| {
        header_of(&token_of(&gk.post("items", &[ALICE], "").json()))["kid"].clone()
    };
    eventually("the replicas agree", Duration::from_secs(5), || {
        jwks_json(&a) == jwks_json(&b) && kid_of(&a) == kid_of(&b)
    });
}

#[test]
fn oidc_callers_are_verified_with_the_issuers_keys() {
    let (_t, dir) = workdir();
    let (ka, kb) = (keys::rsa_a(), keys::rsa_b());
    let idp_jwks = JwksServer::start(&jwks(&[ka.jwk(Some("RS256"))]));
    let idp = JwksServer::start(&json!({}));
    let issuer = format!("http://127.0.0.1:{}", idp.port);
    idp.serve(
        &json!({"issuer": issuer, "jwks_uri": format!("http://127.0.0.1:{}/jwks", idp_jwks.port)}),
    );
    let gk = start_gk(
        &dir,
        &[
            "--oidc-issuer",
            &issuer,
            "--oidc-audience",
            "gatekeeper",
            "--oidc-unknown-kid-refetch-interval",
            "1s",
        ],
    );
    assert!(idp.hits() >= 1, "the issuer was not discovered");
    assert_eq!(gk.get("/readyz").json()["oidc_keys_loaded"], true);
    let claims = |patch: Value| {
        let mut c = json!({"iss": issuer, "aud": "gatekeeper", "sub": "carol", "exp": now() + 600});
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let post = |token: &str, q: &str| gk.post(q, &[("authorization", &bearer(token))], "");

    // an admin: the admins rule, replica=full allowed
    let admin = ka.sign("RS256", &claims(json!({"roles": ["admin"]})));
    let r = post(&admin, "items?replica=full");
    assert_eq!(r.status, 200, "{}", r.body);
    let c = claims_of(&token_of(&r.json()));
    assert_eq!(
        (
            c["sub"].clone(),
            c["shape"]["where"].clone(),
            c["shape"]["replica"].clone()
        ),
        (json!("carol"), Value::Null, json!("full"))
    );
    // anyone else: their own rows
    let r = post(&ka.sign("RS256", &claims(json!({"sub": "dave"}))), "items");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["params"], json!({"1": "dave"}));

    // tokens that do not verify: 401, and the reason
    let forged = kb.sign_with_header(&json!({"alg": "RS256", "kid": "rsa-a"}), &claims(json!({})));
    let hs = TestKey::hmac("rsa-a", b"0123456789abcdef0123456789abcdef")
        .sign("HS256", &claims(json!({})));
    for (what, token, msg) in [
        ("signed by another key", forged, "signature does not verify"),
        (
            "another audience",
            ka.sign("RS256", &claims(json!({"aud": "other"}))),
            "audience",
        ),
        (
            "another issuer",
            ka.sign("RS256", &claims(json!({"iss": "https://evil.test"}))),
            "issuer",
        ),
        (
            "expired",
            ka.sign("RS256", &claims(json!({"exp": now() - 3600}))),
            "expired",
        ),
        ("an HMAC algorithm", hs, "algorithm 'HS256' is not accepted"),
        ("not a token", "a.b.c".to_string(), "malformed"),
    ] {
        let r = post(&token, "items");
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.json()["reason"], "invalid_token", "{what}");
        assert!(
            r.json()["message"].as_str().unwrap().contains(msg),
            "{what}: {}",
            r.body
        );
    }

    // the IdP rotates: a token of its new key is refused until the JWKS has it, then accepted
    // (the unknown kid makes the gatekeeper refetch, at most once a second)
    let by_b = kb.sign("RS256", &claims(json!({"sub": "erin"})));
    let r = post(&by_b, "items");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("unknown key id"),
        "{}",
        r.body
    );
    idp_jwks.serve(&jwks(&[ka.jwk(Some("RS256")), kb.jwk(Some("RS256"))]));
    eventually("the new IdP key accepted", Duration::from_secs(10), || {
        post(&by_b, "items").status == 200
    });
    // the IdP going down keeps the last good keys
    idp_jwks.serve_raw(500, "down");
    assert_eq!(post(&admin, "items").status, 200);
    assert!(gk.metric("edgeguard_gatekeeper_oidc_jwks_fetches_total") >= 2.0);
    assert!(
        !gk.log().contains(&admin),
        "a caller's token leaked into the log"
    );
}

#[test]
fn a_broken_policy_reload_keeps_the_last_good_one() {
    let (_t, dir) = workdir();
    let gk = start_gk(&dir, &["--policy-poll-interval", "100ms"]);
    let status = |q: &str| gk.post(q, &[ALICE], "").status;
    assert_eq!(status("items"), 200);
    assert_eq!(status("notes"), 403);

    write_policy(
        &dir,
        "rules:\n  - table: notes\n    where:\n      sql: \"author = $1\"\n      params:\n        1: { header: x-user }\n...\n",
    );
    eventually("the broken file refused", Duration::from_secs(10), || {
        series(
            &gk,
            "edgeguard_gatekeeper_policy_reloads_total{result=\"failed\"}",
        ) >= 1.0
    });
    assert!(
        gk.log()
            .contains("rules[0].where.params[1]: unknown claim source"),
        "{}",
        gk.log()
    );
    assert_eq!(status("items"), 200, "the last good policy is gone");
    assert_eq!(status("notes"), 403);
    assert_eq!(gk.get("/readyz").status, 200);

    // a file cut short (no `...` at the end) is not read, though it would parse and open more
    let refused = series(
        &gk,
        "edgeguard_gatekeeper_policy_reloads_total{result=\"failed\"}",
    );
    write_policy(&dir, "rules:\n  - table: items\n  - table: notes\n");
    eventually("the cut file refused", Duration::from_secs(10), || {
        series(
            &gk,
            "edgeguard_gatekeeper_policy_reloads_total{result=\"failed\"}",
        ) > refused
    });
    assert_eq!(status("notes"), 403);
    assert!(
        gk.log().contains("the file must end with the line `...`"),
        "{}",
        gk.log()
    );

    write_policy(
        &dir,
        &format!(
            "{}\n  - table: notes\n...\n",
            POLICY.trim_end().trim_end_matches("...")
        ),
    );
    eventually("the fixed file applied", Duration::from_secs(10), || {
        status("notes") == 200
    });
    assert_eq!(status("items"), 200);
    assert!(
        series(
            &gk,
            "edgeguard_gatekeeper_policy_reloads_total{result=\"ok\"}"
        ) >= 2.0
    );
}

#[test]
fn development_mode_lets_anyone_in_and_says_so() {
    let (_t, dir) = workdir();
    let gk = start_gk(
        &dir,
        &[
            "--dev-allow-anyone",
            "--dev-claims",
            r#"{"sub":"dev-1","roles":["admin"]}"#,
        ],
    );
    let warning = gk
        .log()
        .lines()
        .find(|l| l.contains("DEVELOPMENT MODE"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no warning:\n{}", gk.log()));
    assert!(warning.contains("WARN"), "{warning}");
    let r = gk.post("items", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let c = claims_of(&token_of(&r.json()));
    assert_eq!(
        (c["sub"].clone(), c["shape"]["where"].clone()),
        (json!("dev-1"), Value::Null)
    );
    // real credentials still count
    assert_eq!(
        gk.post("items", &[ALICE], "").json()["params"],
        json!({"1": "alice"})
    );
    assert_eq!(
        series(
            &gk,
            "edgeguard_gatekeeper_tokens_issued_total{auth=\"dev\"}"
        ),
        1.0
    );

    // without development mode, and without any way in, it does not start
    let out = std::process::Command::new(edgeguard_tests::tools::edgeguard())
        .args([
            "gatekeeper",
            "--policy",
            dir.join("policy.yaml").to_str().unwrap(),
            "--key-dir",
        ])
        .arg(dir.join("keys"))
        .args(["--shape-url", SHAPE_URL])
        .env_remove("EDGEGUARD_GATEKEEPER_API_KEYS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no way to authenticate callers"),
        "{out:?}"
    );
}

/// A request path, headers (raw bytes), body and the status it must get.
type HostileCase<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, String, u16);

#[test]
fn hostile_input_is_refused_and_the_next_good_request_passes() {
    let (_t, dir) = workdir();
    let gk = start_gk(&dir, &[]);
    let good = |gk: &Gatekeeper| {
        let r = gk.post("items", &[ALICE], "");
        assert_eq!(r.status, 200, "{}", r.body);
    };
    let big = format!("{{\"where\": \"{}\"}}", "a".repeat(1 << 20));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<HostileCase> = vec![
        (
            "/gatekeeper/items",
            vec![("authorization", &b"Bearer \xff\xfe.\x80.\x81"[..])],
            String::new(),
            401,
        ),
        (
            "/gatekeeper/items",
            vec![("x-api-key", &b"alice-key-0123456789\xff"[..])],
            String::new(),
            401,
        ),
        ("/gatekeeper/%FF%FE", vec![ALICE_BYTES], String::new(), 400),
        (
            "/gatekeeper/items?where=%E0%80",
            vec![ALICE_BYTES],
            String::new(),
            400,
        ),
        (
            "/gatekeeper/items?params%5B99999999999%5D=x",
            vec![ALICE_BYTES],
            String::new(),
            400,
        ),
        (
            "/gatekeeper/items",
            vec![ALICE_BYTES, ("content-type", &b"application/json"[..])],
            big,
            400,
        ),
        (
            "/gatekeeper/items",
            vec![ALICE_BYTES, ("content-type", &b"application/json"[..])],
            deep,
            400,
        ),
        (
            "/gatekeeper/items",
            vec![ALICE_BYTES, ("content-type", &b"text/plain"[..])],
            "where=x".into(),
            400,
        ),
        (
            "/gatekeeper/items",
            vec![("authorization", &[b'a'; 60_000][..])],
            String::new(),
            401,
        ),
    ];
    for (path, headers, body, status) in cases {
        let r = http::request_bytes(gk.port, "POST", path.as_bytes(), &headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        good(&gk);
    }
    assert!(gk.proc.log_text().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn discovery_and_metrics_endpoints() {
    let (_t, dir) = workdir();
    let gk = start_gk(&dir, &["--public-url", "https://gk.example.com/"]);
    let d = gk.get("/.well-known/openid-configuration").json();
    assert_eq!(d["issuer"], ISSUER);
    assert_eq!(
        d["jwks_uri"],
        "https://gk.example.com/.well-known/jwks.json"
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    let jwks = jwks_json(&gk);
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].clone(), key["crv"].clone(), key["use"].clone()),
        (json!("EC"), json!("P-256"), json!("sig"))
    );
    assert!(
        key.get("d").is_none(),
        "private key material published: {key}"
    );
    assert_eq!(gk.get("/healthz").status, 200);
    let r = gk.get("/gatekeeper/items");
    assert_eq!(r.status, 405);
    assert_eq!(gk.get("/nope").status, 404);
    let m = gk.get("/metrics").body;
    for name in [
        "edgeguard_gatekeeper_tokens_issued_total",
        "edgeguard_gatekeeper_requests_refused_total",
        "edgeguard_gatekeeper_policy_reloads_total",
        "edgeguard_gatekeeper_keys_published",
        "edgeguard_gatekeeper_keys{state=\"signing\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    assert_eq!(metric_value(&m, "edgeguard_gatekeeper_policy_loaded"), 1.0);
}

edgeguard_tests::flavoured!(
    token_opens_exactly_its_shape,
    hs256_like_electrics_example,
    rotation_without_a_failed_request,
);
