//! jwt-shape inside a real Envoy: every status path, every algorithm family, remote JWKS
//! (rotation, unreachable, garbage), bad input followed by a good request, metrics, and the
//! configuration refusal. The filter configuration of `make run` (envoy/demo/jwt-shape.json)
//! is the one most of these tests load.

use std::time::{Duration, Instant};

use edgeguard_tests::envoy::{cluster, Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::http::Resp;
use edgeguard_tests::jwks_server::JwksServer;
use edgeguard_tests::keys::{self, forge, hmac_sign, jwks, now, TestKey};
use edgeguard_tests::process::{free_port, Echo};
use edgeguard_tests::tools;
use serde_json::{json, Value};

const DEMO_SECRET: &str = "edgeguard-demo-secret-not-for-production-0001";

fn demo_config() -> String {
    tools::repo_file("envoy/demo/jwt-shape.json")
}

fn start(flavour: Flavour, echo: &Echo, config: &str) -> Envoy {
    let filter = flavour.filter("jwt_shape", config, &[]);
    Envoy::start(&EnvoyConfig::new(echo.port, vec![filter]))
}

fn demo_key() -> TestKey {
    TestKey::hmac("demo", DEMO_SECRET.as_bytes())
}

fn claims(shape: Value) -> Value {
    let n = now();
    json!({"iss": "edgeguard-demo", "aud": "electric", "sub": "user-1", "iat": n, "nbf": n, "exp": n + 600, "shape": shape})
}

fn items_token() -> String {
    demo_key().sign(
        "HS256",
        &claims(json!({"namespace": null, "table": "items", "where": null, "columns": null})),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn expect(r: &Resp, status: u16, msg_part: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    if status >= 400 {
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["code"], status as u64, "{}", r.body);
        assert!(
            r.message().contains(msg_part),
            "message {:?} lacks {msg_part:?}",
            r.message()
        );
    }
}

/// The good request, asserted after every bad one: nothing the bad input did may stick.
fn good(envoy: &Envoy, token: &str) {
    let r = envoy.get(
        "/v1/shape?table=items&offset=-1",
        &[("authorization", &bearer(token))],
    );
    expect(&r, 200, "");
}

fn allowed_request_is_rewritten_for_electric(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    // a token that allows subsets: its subset__limit passes like the pagination parameters
    let token = demo_key().sign(
        "HS256",
        &claims(json!({"namespace": null, "table": "items", "where": null, "columns": null, "subsets": true})),
    );
    let r = envoy.get(
        "/v1/shape?table=items&offset=-1&secret=client-guess&api_secret=x&live=true&handle=1-0&cursor=9&subset__limit=5&cache-buster=1",
        &[
            ("authorization", &bearer(&token)),
            ("x-edgeguard-sub", "spoofed-admin"),
            ("x-edgeguard-table", "spoofed"),
        ],
    );
    expect(&r, 200, "");
    // client secrets stripped, the configured Electric secret injected, pagination untouched
    assert_eq!(
        r.echoed_path(),
        "/v1/shape?table=items&offset=-1&live=true&handle=1-0&cursor=9&subset__limit=5&cache-buster=1&secret=demo-electric-secret"
    );
    // claims stamped, spoofed copies gone; the token is not forwarded (forward: false)
    assert_eq!(r.echoed("x-edgeguard-sub").as_deref(), Some("user-1"));
    assert_eq!(r.echoed("x-edgeguard-table").as_deref(), Some("items"));
    assert_eq!(r.echoed("authorization"), None);
    assert_eq!(r.header("vary"), Some("Authorization"));

    // Vary merges with what upstream says
    let r = envoy.get(
        "/v1/shape?table=items",
        &[
            ("authorization", &bearer(&token)),
            ("x-echo-vary", "Accept-Encoding"),
        ],
    );
    expect(&r, 200, "");
    assert_eq!(
        r.header_all("vary").as_deref(),
        Some("Accept-Encoding, Authorization")
    );

    // the bearer scheme is case-insensitive
    let r = envoy.get(
        "/v1/shape?table=items",
        &[("authorization", &format!("bEaReR  {token}"))],
    );
    expect(&r, 200, "");

    // spoofed claim headers are removed even when the token carries no such claim
    let mut c = claims(json!({"table": "items"}));
    c.as_object_mut().unwrap().remove("sub");
    let nosub = demo_key().sign("HS256", &c);
    let r = envoy.get(
        "/v1/shape?table=items",
        &[
            ("authorization", &bearer(&nosub)),
            ("x-edgeguard-sub", "admin"),
        ],
    );
    expect(&r, 200, "");
    assert_eq!(r.echoed("x-edgeguard-sub"), None);

    // nothing secret reaches Envoy's log (debug level is on for wasm in tests)
    let log = envoy.log();
    assert!(!log.contains(&token), "token leaked into the log");
    assert!(!log.contains(DEMO_SECRET), "secret leaked into the log");
    assert!(
        !log.contains("demo-electric-secret"),
        "electric secret leaked into the log"
    );
}

fn token_failures_are_401_and_leave_the_filter_working(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    let token = items_token();
    good(&envoy, &token);

    let n = now();
    let key = demo_key();
    let shape = json!({"table": "items"});
    let with = |patch: Value| {
        let mut c = claims(shape.clone());
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        key.sign("HS256", &c)
    };
    let oversized = format!(
        "{}.{}.{}",
        "e".repeat(30000),
        "e".repeat(30000),
        "e".repeat(5536)
    );
    assert_eq!(oversized.len(), 65538);
    let cases: Vec<(String, &str, &str)> = vec![
        ("garbage".into(), "malformed token", "garbage"),
        ("a.b.c".into(), "malformed token", "three garbage parts"),
        ("....".into(), "malformed token", "dots"),
        (oversized, "larger than 8192 bytes", "64 KiB token"),
        (
            forge(&json!({"alg": "none"}), &claims(shape.clone()), b""),
            "algorithm 'none' is not accepted",
            "alg none",
        ),
        (
            forge(
                &json!({"alg": "HS256"}),
                &claims(shape.clone()),
                b"not-the-mac",
            ),
            "signature does not verify",
            "bad signature",
        ),
        (
            TestKey::hmac("x", b"another-secret-that-is-long-enough-000")
                .sign("HS256", &claims(shape.clone())),
            "signature does not verify",
            "wrong secret",
        ),
        (with(json!({"exp": n - 3600})), "expired", "expired"),
        (
            with(json!({"nbf": n + 3600})),
            "not valid yet",
            "nbf in the future",
        ),
        (
            with(json!({"iat": n + 3600})),
            "issued in the future",
            "iat in the future",
        ),
        (with(json!({"exp": null})), "no 'exp' claim", "no exp"),
        (
            with(json!({"exp": "tomorrow"})),
            "claim 'exp' must be a NumericDate",
            "exp as string",
        ),
        (
            with(json!({"iss": "someone-else"})),
            "issuer is not accepted",
            "wrong issuer",
        ),
        (
            with(json!({"iss": 42})),
            "claim 'iss' must be a string",
            "iss as number",
        ),
        (
            with(json!({"aud": "other"})),
            "audience is not accepted",
            "wrong audience",
        ),
        (
            with(json!({"aud": {"x": 1}})),
            "claim 'aud' must be",
            "aud as object",
        ),
        (
            key.sign_with_header(
                &json!({"alg": "HS256", "crit": ["x"]}),
                &claims(shape.clone()),
            ),
            "crit",
            "crit header",
        ),
        (
            format!(
                "{}.{}.{}",
                keys::b64(br#"{"alg":"HS256"}"#),
                keys::b64(b"[1,2,3]"),
                keys::b64(&hmac_sign(
                    "HS256",
                    DEMO_SECRET.as_bytes(),
                    format!(
                        "{}.{}",
                        keys::b64(br#"{"alg":"HS256"}"#),
                        keys::b64(b"[1,2,3]")
                    )
                    .as_bytes()
                ))
            ),
            "payload is not a JSON object",
            "array payload",
        ),
    ];
    for (bad, msg, what) in cases {
        let r = envoy.get("/v1/shape?table=items", &[("authorization", &bearer(&bad))]);
        expect(&r, 401, msg);
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with("Bearer realm=\"edgeguard\", error=\"invalid_token\""),
            "{what}: {www}"
        );
        assert_eq!(r.header("vary"), Some("Authorization"), "{what}");
        good(&envoy, &token);
    }

    // no token at all: 401 with a bare challenge (RFC 6750 3.1: no error code)
    for headers in [
        vec![],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Bearer ")],
    ] {
        let r = envoy.get("/v1/shape?table=items", &headers);
        expect(&r, 401, "bearer token is required");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"edgeguard\"")
        );
        good(&envoy, &token);
    }
    assert!(envoy.metric("edgeguard_jwt_shape_denied_expired") >= 1.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_malformed") >= 3.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_missing_token") >= 3.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_too_large") >= 1.0);
}

fn shape_binding_403_and_400(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    let key = demo_key();
    let items = items_token();
    good(&envoy, &items);

    let bound = key.sign(
        "HS256",
        &claims(json!({"table": "todos", "namespace": "app", "where": "owner = $1", "params": {"1": "user-1"},
            "columns": ["id", "title", "Done"], "replica": "full"})),
    );
    let ok = "table=app.todos&where=owner+%3D+%241&params%5B1%5D=user-1&columns=%22Done%22,TITLE,id&replica=full&offset=-1";
    let r = envoy.get(
        &format!("/v1/shape?{ok}"),
        &[("authorization", &bearer(&bound))],
    );
    expect(&r, 200, "");
    // columns in any order / case / quoting, schema written either way
    for q in [
        "table=%22app%22.todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title,%22Done%22&replica=full",
        "table=APP.Todos&where=owner%20%3D%20%241&params%5B1%5D=user-1&columns=title,%22Done%22,%22id%22&replica=full",
    ] {
        let r = envoy.get(&format!("/v1/shape?{q}"), &[("authorization", &bearer(&bound))]);
        expect(&r, 200, "");
    }

    let forbidden: Vec<(&str, &str)> = vec![
        ("table=app.other&where=owner+%3D+%241&params[1]=user-1&columns=id,title,%22Done%22&replica=full", "'table' differs"),
        ("table=todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title,%22Done%22&replica=full", "'table' differs"),
        ("table=app.todos&where=true&params[1]=user-1&columns=id,title,%22Done%22&replica=full", "'where' differs"),
        ("table=app.todos&params[1]=user-1&columns=id,title,%22Done%22&replica=full", "'where' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-2&columns=id,title,%22Done%22&replica=full", "'params' differs"),
        ("table=app.todos&where=owner+%3D+%241&columns=id,title,%22Done%22&replica=full", "'params' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&params[2]=x&columns=id,title,%22Done%22&replica=full", "'params' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title,done&replica=full", "'columns' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title&replica=full", "'columns' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&replica=full", "'columns' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title,%22Done%22", "'replica' differs"),
        ("table=app.todos&where=owner+%3D+%241&params[1]=user-1&columns=id,title,%22Done%22&replica=full&log=changes_only", "'log' differs"),
    ];
    for (q, msg) in forbidden {
        let r = envoy.get(
            &format!("/v1/shape?{q}"),
            &[("authorization", &bearer(&bound))],
        );
        expect(&r, 403, msg);
        assert!(r
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("insufficient_scope"));
        good(&envoy, &items);
    }

    // tokens whose shape claim is missing or not an object do not cover anything
    let claim_cases: Vec<(Value, &str)> = vec![
        (json!(null), "claim 'shape' is not an object"),
        (json!("items"), "claim 'shape' is not an object"),
        (json!(["items"]), "claim 'shape' is not an object"),
        (json!({"where": null}), "shape claim has no 'table'"),
        (json!({"table": 7}), "shape claim field 'table' is invalid"),
        (
            json!({"table": "items", "columns": [1, 2]}),
            "shape claim field 'columns' is invalid",
        ),
        (
            json!({"table": "items", "subset": "x"}),
            "unknown shape field",
        ),
    ];
    for (shape, msg) in claim_cases {
        let t = key.sign("HS256", &claims(shape));
        let r = envoy.get("/v1/shape?table=items", &[("authorization", &bearer(&t))]);
        expect(&r, 403, msg);
        good(&envoy, &items);
    }
    let mut c = claims(json!({}));
    c.as_object_mut().unwrap().remove("shape");
    let t = key.sign("HS256", &c);
    let r = envoy.get("/v1/shape?table=items", &[("authorization", &bearer(&t))]);
    expect(&r, 403, "token has no 'shape' claim");
    good(&envoy, &items);

    // malformed shape requests: 400 (after the token was checked)
    let bad_requests: Vec<(&str, &str)> = vec![
        (
            "table=items&table=other",
            "parameter 'table' is given more than once",
        ),
        ("table=items&%74able=other", "must not be percent-encoded"),
        ("%74able=items", "must not be percent-encoded"),
        ("table=items&wh%65re=x", "must not be percent-encoded"),
        (
            "table=items&where=a&where=b",
            "'where' is given more than once",
        ),
        (
            "table=items&params[1]=a&params%5B1%5D=b",
            "'params[1]' is given more than once",
        ),
        (
            "table=items&secret=a&secret=b",
            "'secret' is given more than once",
        ),
        ("table=items&params[0]=x", "invalid parameter 'params[0]'"),
        ("table=items&params=x", "invalid parameter 'params'"),
        ("table=items&columns=a,,b", "invalid parameter 'columns'"),
        ("table=items&replica=partial", "invalid parameter 'replica'"),
        ("table=a.b.c", "invalid parameter 'table'"),
        ("offset=-1", "missing required parameter 'table'"),
        ("table=items&where=%zz", "malformed percent-encoding"),
        ("table=items&where=%ff%fe", "not valid UTF-8"),
    ];
    for (q, msg) in bad_requests {
        let r = envoy.get(
            &format!("/v1/shape?{q}"),
            &[("authorization", &bearer(&items))],
        );
        expect(&r, 400, msg);
        good(&envoy, &items);
    }
    // an invalid token with a malformed query is still a 401: anonymous clients learn nothing
    let r = envoy.get(
        "/v1/shape?table=a&table=b",
        &[("authorization", "Bearer nope")],
    );
    expect(&r, 401, "malformed token");
    assert!(envoy.metric("edgeguard_jwt_shape_denied_shape_mismatch") >= 12.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_bad_query") >= 15.0);
}

fn preflight_passes_other_options_do_not(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    let r = envoy.request(
        "OPTIONS",
        "/v1/shape?table=items",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["method"], "OPTIONS");
    // an OPTIONS that is not a CORS preflight needs a token like anything else
    let r = envoy.request("OPTIONS", "/v1/shape?table=items", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.message().contains("no rule allows OPTIONS"));
    // and so does a path no rule covers
    let r = envoy.get("/admin", &[("authorization", &bearer(&items_token()))]);
    assert_eq!(r.status, 403);
    good(&envoy, &items_token());

    // with bypass_cors_preflight off, a preflight is just an unmatched OPTIONS
    let mut cfg: Value = serde_json::from_str(&demo_config()).unwrap();
    cfg["bypass_cors_preflight"] = json!(false);
    let strict = start(flavour, &echo, &cfg.to_string());
    let r = strict.request(
        "OPTIONS",
        "/v1/shape?table=items",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_eq!(r.status, 403);
}

/// Tokens signed by `jose` v6 (npm), as a user's own issuer signs them: Ed25519 under RFC 9864's
/// fully-specified `Ed25519` alg name, the same key under `EdDSA`, and ES512 (P-521), with the
/// JWKS jose exported (whose keys pin `alg`). All verify; tampered ones do not; a provider whose
/// allow-list names only `EdDSA` admits `Ed25519` too, one naming only ES256 admits neither.
fn jose_v6_tokens_verify(flavour: Flavour) {
    let n = now();
    let c = json!({"iss": "https://jose.test", "aud": "api", "sub": "jose-user", "exp": n + 300});
    let out: Value =
        serde_json::from_str(&tools::node_script("jose_sign.mjs", &[&c.to_string()])).unwrap();
    let provider = |algorithms: Option<Value>| {
        let mut p = json!({"issuer": "https://jose.test", "audiences": ["api"],
            "local_jwks": {"inline": out["jwks"].clone()},
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]});
        if let Some(a) = algorithms {
            p["algorithms"] = a;
        }
        p
    };
    let config = json!({
        "providers": {"any": provider(None), "eddsa": provider(Some(json!(["EdDSA"]))),
                      "es256": provider(Some(json!(["ES256"])))},
        "rules": [{"match": {"prefix": "/eddsa"}, "provider": "eddsa"},
                  {"match": {"prefix": "/es256"}, "provider": "es256"},
                  {"match": {"prefix": "/"}, "provider": "any"}]
    });
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &config.to_string());
    for alg in ["Ed25519", "EdDSA", "ES512"] {
        let t = out["tokens"][alg].as_str().unwrap();
        let r = envoy.get("/any", &[("authorization", &bearer(t))]);
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        assert_eq!(r.echoed("x-sub").as_deref(), Some("jose-user"), "{alg}");
        // one signature character changed (a full 6-bit character, not the last one)
        let mut bad = t.to_string();
        let at = bad.len() - 3;
        let other = if &bad[at..at + 1] == "A" { "B" } else { "A" };
        bad.replace_range(at..at + 1, other);
        assert_ne!(bad, t);
        let r = envoy.get("/any", &[("authorization", &bearer(&bad))]);
        assert_eq!(r.status, 401, "{alg} tampered: {}", r.body);
        let r = envoy.get("/es256", &[("authorization", &bearer(t))]);
        assert_eq!(
            r.status, 401,
            "{alg} with an ES256-only provider: {}",
            r.body
        );
    }
    for alg in ["Ed25519", "EdDSA"] {
        let t = out["tokens"][alg].as_str().unwrap();
        let r = envoy.get("/eddsa", &[("authorization", &bearer(t))]);
        assert_eq!(r.status, 200, "{alg} with an EdDSA allow-list: {}", r.body);
    }
    let r = envoy.get(
        "/eddsa",
        &[(
            "authorization",
            &bearer(out["tokens"]["ES512"].as_str().unwrap()),
        )],
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

/// One provider per key family, keys given inline as a JWKS.
fn every_algorithm_family(flavour: Flavour) {
    let rsa = keys::rsa_a();
    let p256 = TestKey::p256("ec-256", 21);
    let p384 = TestKey::p384("ec-384", 22);
    let ed = TestKey::ed25519("ed", 23);
    let hs = TestKey::hmac("hs", &[7u8; 64]);
    let pinned = keys::rsa_b();
    let set = jwks(&[
        rsa.jwk(None),
        p256.jwk(Some("ES256")),
        p384.jwk(None),
        ed.jwk(Some("EdDSA")),
        hs.jwk(None),
        pinned.jwk(Some("PS256")),
    ]);
    let config = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"], "local_jwks": {"inline": set},
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}},
        "rules": [{"match": {"prefix": "/"}, "provider": "idp"}]
    });
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &config.to_string());
    let n = now();
    let c = json!({"iss": "https://idp.test", "aud": ["x", "api"], "sub": "alice", "exp": n + 300});
    let mut good_tokens = vec![];
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        good_tokens.push((alg, rsa.sign(alg, &c)));
    }
    good_tokens.push(("ES256", p256.sign("ES256", &c)));
    good_tokens.push(("ES384", p384.sign("ES384", &c)));
    good_tokens.push(("EdDSA", ed.sign("EdDSA", &c)));
    for alg in ["HS256", "HS384", "HS512"] {
        good_tokens.push((alg, hs.sign(alg, &c)));
    }
    good_tokens.push(("PS256 pinned", pinned.sign("PS256", &c)));
    for (alg, t) in &good_tokens {
        let r = envoy.get("/anything", &[("authorization", &bearer(t))]);
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        assert_eq!(r.echoed("x-sub").as_deref(), Some("alice"), "{alg}");
        // the token also verifies without a kid (every key of the family is tried)
    }
    let no_kid = rsa.sign_with_header(&json!({"alg": "RS256"}), &c);
    assert_eq!(
        envoy
            .get("/", &[("authorization", &bearer(&no_kid))])
            .status,
        200
    );

    let good_one = &good_tokens[0].1;
    // key confusion: HS256 "signed" with the RSA public key's JWK bytes or modulus must fail
    let rsa_jwk = rsa.jwk(None).to_string();
    let header = json!({"alg": "HS256", "kid": "rsa-a"});
    let input = format!(
        "{}.{}",
        keys::b64(header.to_string().as_bytes()),
        keys::b64(c.to_string().as_bytes())
    );
    let confused = format!(
        "{input}.{}",
        keys::b64(&hmac_sign("HS256", rsa_jwk.as_bytes(), input.as_bytes()))
    );
    let bad: Vec<(String, &str)> = vec![
        (confused, "no key can verify this token's algorithm"),
        // ES256 with the RSA key's kid
        (
            p256.sign_with_header(&json!({"alg": "ES256", "kid": "rsa-a"}), &c),
            "no key can verify",
        ),
        // ES384 key pinned? no: P-256 key pinned to ES256 cannot do ES384
        (
            p384.sign_with_header(&json!({"alg": "ES384", "kid": "ec-256"}), &c),
            "no key can verify",
        ),
        // RS256 with a key pinned to PS256
        (pinned.sign("RS256", &c), "no key can verify"),
        // unknown kid (static key set: no refetch)
        (
            rsa.sign_with_header(&json!({"alg": "RS256", "kid": "nope"}), &c),
            "unknown key id",
        ),
        // signature of another key under this kid
        (
            keys::rsa_b().sign_with_header(&json!({"alg": "RS256", "kid": "rsa-a"}), &c),
            "signature does not verify",
        ),
        // truncated signature
        (
            good_one[..good_one.len() - 10].to_string(),
            "signature does not verify",
        ),
        (
            forge(&json!({"alg": "EdDSA", "kid": "ed"}), &c, &[0u8; 64]),
            "signature does not verify",
        ),
        (
            forge(&json!({"alg": "ES256", "kid": "ec-256"}), &c, &[1u8; 10]),
            "signature does not verify",
        ),
    ];
    for (t, msg) in bad {
        let r = envoy.get("/", &[("authorization", &bearer(&t))]);
        expect(&r, 401, msg);
        assert_eq!(
            envoy
                .get("/", &[("authorization", &bearer(good_one))])
                .status,
            200
        );
    }
}

fn remote_config(jwks_port_cluster: &str, refresh_s: u64) -> String {
    json!({
        "providers": {"idp": {
            "issuer": "https://idp.test",
            "remote_jwks": {"cluster": jwks_port_cluster, "uri": "http://idp.test/.well-known/jwks.json",
                "timeout_ms": 1000, "refresh_interval_s": refresh_s, "retry_interval_s": 1, "unknown_kid_refetch_interval_s": 1}
        }},
        "rules": [{"match": {"prefix": "/"}, "provider": "idp"}]
    })
    .to_string()
}

fn idp_claims() -> Value {
    json!({"iss": "https://idp.test", "sub": "bob", "exp": now() + 600})
}

fn start_remote(flavour: Flavour, echo: &Echo, jwks_port: u16, refresh_s: u64) -> Envoy {
    let filter = flavour.filter("jwt_shape", &remote_config("jwks", refresh_s), &[]);
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters.push(cluster("jwks", jwks_port));
    cfg.concurrency = 2;
    Envoy::start(&cfg)
}

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

fn remote_jwks_rotation(flavour: Flavour) {
    let a = keys::rsa_a();
    let b = keys::rsa_b();
    let server = JwksServer::start(&jwks(&[a.jwk(Some("RS256"))]));
    let echo = Echo::start();
    let envoy = start_remote(flavour, &echo, server.port, 3);
    let ta = a.sign("RS256", &idp_claims());
    let tb = b.sign("RS256", &idp_claims());

    // the very first request waits for the initial fetch instead of failing
    let r = envoy.get("/", &[("authorization", &bearer(&ta))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&tb))]).status,
        401
    );

    // rotation: the new kid is fetched on demand (rate-limited) and accepted at once;
    // the old kid is accepted until removed
    server.serve(&jwks(&[a.jwk(Some("RS256")), b.jwk(Some("RS256"))]));
    std::thread::sleep(Duration::from_millis(1100));
    let r = envoy.get("/", &[("authorization", &bearer(&tb))]);
    assert_eq!(r.status, 200, "new kid: {}", r.body);
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&ta))]).status,
        200
    );

    // a garbage or failing JWKS keeps the last good keys
    let fails = envoy.metric("edgeguard_jwt_shape_jwks_fetch_failed");
    server.serve_raw(200, "<html>not a jwks</html>");
    eventually("a failed refresh", Duration::from_secs(10), || {
        envoy.metric("edgeguard_jwt_shape_jwks_fetch_failed") > fails
    });
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&ta))]).status,
        200
    );
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&tb))]).status,
        200
    );
    server.serve_raw(500, "oops");
    let fails = envoy.metric("edgeguard_jwt_shape_jwks_fetch_failed");
    eventually("another failed refresh", Duration::from_secs(10), || {
        envoy.metric("edgeguard_jwt_shape_jwks_fetch_failed") > fails
    });
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&tb))]).status,
        200
    );
    assert!(envoy.log().contains("JWKS fetch failed"));
    assert!(envoy.log().contains("keeping the last good keys"));

    // removing the old key: after the next refresh its tokens are refused (cached verdicts too)
    server.serve(&jwks(&[b.jwk(Some("RS256"))]));
    eventually("old kid refused", Duration::from_secs(15), || {
        envoy.get("/", &[("authorization", &bearer(&ta))]).status == 401
    });
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&tb))]).status,
        200
    );
    assert!(envoy.metric("edgeguard_jwt_shape_jwks_fetch_ok") >= 3.0);
    assert!(envoy.metric("edgeguard_jwt_shape_cache_hit") >= 1.0);

    // unknown kids are rate limited: a burst of them causes at most a few fetches
    let before = server.hits();
    let t0 = Instant::now();
    for i in 0..20 {
        let t = b.sign_with_header(
            &json!({"alg": "RS256", "kid": format!("ghost-{i}")}),
            &idp_claims(),
        );
        let r = envoy.get("/", &[("authorization", &bearer(&t))]);
        expect(&r, 401, "unknown key id");
    }
    // per worker (2): one kid-triggered fetch per second (unknown_kid_refetch_interval_s) plus
    // the periodic refresh every 3 s
    let secs = t0.elapsed().as_secs_f64().ceil();
    let bound = (2.0 * (secs + 1.0) + 2.0 * (secs / 3.0 + 1.0)) as usize;
    let fetches = server.hits() - before;
    assert!(
        fetches <= bound && fetches < 20,
        "{fetches} fetches for 20 unknown kids in {secs} s"
    );
    assert_eq!(
        envoy.get("/", &[("authorization", &bearer(&tb))]).status,
        200
    );
}

fn remote_jwks_unreachable_then_garbage_then_up(flavour: Flavour) {
    let a = keys::rsa_a();
    let port = free_port();
    let echo = Echo::start();
    let envoy = start_remote(flavour, &echo, port, 600);
    let ta = a.sign("RS256", &idp_claims());
    // nothing listens on the JWKS port: a clean 401, quickly, no hang
    let t0 = Instant::now();
    let r = envoy.get("/", &[("authorization", &bearer(&ta))]);
    expect(&r, 401, "signing keys are not available");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let r = envoy.get("/", &[("authorization", &bearer(&ta))]);
    expect(&r, 401, "signing keys are not available");
    assert!(envoy.log().contains("no keys yet"));

    // the endpoint comes up serving garbage: still a clean 401
    let server = JwksServer::start_on(port, &json!("x"));
    server.serve_raw(200, "{\"keys\": \"nope\"");
    eventually("a fetch of the garbage", Duration::from_secs(10), || {
        server.hits() >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = envoy.get("/", &[("authorization", &bearer(&ta))]);
    expect(&r, 401, "signing keys are not available");

    // then it serves a real key set: the retry picks it up and the same token passes
    server.serve(&jwks(&[a.jwk(None)]));
    eventually("keys loaded after retry", Duration::from_secs(10), || {
        envoy.get("/", &[("authorization", &bearer(&ta))]).status == 200
    });
}

/// A `remote_jwks.cluster` Envoy does not know: one critical line naming it, a metric, and a
/// 401 (never a hang) for every token of the provider.
fn an_unknown_jwks_cluster_fails_loudly(flavour: Flavour) {
    let echo = Echo::start();
    let filter = flavour.filter("jwt_shape", &remote_config("no_such_cluster", 600), &[]);
    let envoy = Envoy::start(&EnvoyConfig::new(echo.port, vec![filter]));
    let key = TestKey::rsa("k1", 2048, 7);
    let t = key.sign("RS256", &idp_claims());
    eventually(
        "the unknown cluster noticed",
        Duration::from_secs(10),
        || envoy.metric("edgeguard_jwt_shape_jwks_cluster_unknown") >= 1.0,
    );
    let r = envoy.get("/", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 401, "{}", r.body);
    let log = envoy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("remote_jwks.cluster 'no_such_cluster' is not a cluster this Envoy knows")
        })
        .collect();
    // once per state: the native module has one, the wasm build one per VM (main thread and
    // the worker at --concurrency 1), and never again on later ticks
    let states = if flavour == Flavour::Native { 1 } else { 2 };
    assert!((1..=states).contains(&lines.len()), "{log}");
    assert!(lines.iter().all(|l| l.contains("critical")), "{lines:?}");
}

/// Claims hold raw names, exactly as Electric's gatekeeper mints them; the request is read as
/// Electric's server reads it (quoted identifiers keep case and dots, unquoted ones fold to
/// lower case). Mixed case, dots, spaces, quotes and commas in schema, table and column names,
/// each allowed in its one right spelling and refused in the others.
fn claims_hold_raw_names(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    let key = demo_key();
    let cases: Vec<(Value, Vec<&str>, Vec<&str>)> = vec![
        (
            json!({"table": "GkItems", "namespace": null}),
            vec![
                "table=%22GkItems%22",
                "table=public.%22GkItems%22",
                "table=%22public%22.%22GkItems%22",
            ],
            vec![
                "table=GkItems",
                "table=gkitems",
                "table=%22gkitems%22",
                "table=other.%22GkItems%22",
            ],
        ),
        (
            json!({"table": "gk.split", "namespace": null}),
            vec!["table=%22gk.split%22", "table=public.%22gk.split%22"],
            vec!["table=gk.split", "table=%22gk%22.%22split%22"],
        ),
        (
            json!({"table": "a, b", "namespace": "My \"Schema\""}),
            vec!["table=%22My%20%22%22Schema%22%22%22.%22a,%20b%22"],
            vec![
                "table=%22a,%20b%22",
                "table=%22my%20%22%22schema%22%22%22.%22a,%20b%22",
            ],
        ),
        (
            json!({"table": "items", "namespace": "App"}),
            vec!["table=%22App%22.items"],
            vec!["table=App.items", "table=app.items", "table=items"],
        ),
        (
            json!({"table": "items", "columns": ["ID", "say \"hi\"", "x,y", "lower"]}),
            vec![
                "table=items&columns=%22ID%22,%22say%20%22%22hi%22%22%22,%22x,y%22,lower",
                "table=items&columns=LOWER,%22x,y%22,%22ID%22,%22say%20%22%22hi%22%22%22",
            ],
            vec![
                "table=items&columns=ID,%22say%20%22%22hi%22%22%22,%22x,y%22,lower",
                "table=items&columns=%22ID%22,%22say%20%22%22hi%22%22%22,x,y,lower",
                "table=items&columns=%22ID%22,%22x,y%22,lower",
            ],
        ),
    ];
    for (shape, allowed, refused) in cases {
        let t = key.sign("HS256", &claims(shape.clone()));
        for q in allowed {
            let r = envoy.get(
                &format!("/v1/shape?{q}&offset=-1"),
                &[("authorization", &bearer(&t))],
            );
            assert_eq!(r.status, 200, "{shape} {q}: {}", r.body);
        }
        for q in refused {
            let r = envoy.get(
                &format!("/v1/shape?{q}&offset=-1"),
                &[("authorization", &bearer(&t))],
            );
            assert_eq!(r.status, 403, "{shape} {q}: {}", r.body);
            assert!(r.body.contains("differs"), "{shape} {q}: {}", r.body);
        }
    }
}

fn invalid_configuration_is_refused_with_one_clear_line(flavour: Flavour) {
    let echo = Echo::start();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"providers": {"demo": {"hmac": {"secret": "short"}}}, "rules": [{"provider": "demo"}]}),
            "providers.demo.hmac.secret: HMAC secret is 5 bytes; at least 32 are required",
        ),
        (
            json!({"providers": {"demo": {"hmac": {"secret": DEMO_SECRET}}}, "rules": [{"provider": "missing"}]}),
            "rules[0].provider: no provider named 'missing'",
        ),
        (
            json!({"providers": {"demo": {"hmac": {"secret": DEMO_SECRET}, "typo_field": 1}}, "rules": []}),
            "unknown field `typo_field`",
        ),
    ];
    for (cfg, line) in cases {
        let filter = flavour.filter("jwt_shape", &cfg.to_string(), &[]);
        match Envoy::try_start(&EnvoyConfig::new(echo.port, vec![filter])) {
            Ok(_) => panic!("Envoy accepted an invalid configuration: {cfg}"),
            Err(log) => {
                let hits: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("configuration refused"))
                    .collect();
                assert!(
                    !hits.is_empty() && hits.iter().all(|l| l.contains(line)),
                    "expected {line:?} in:\n{log}"
                );
            }
        }
    }
}

fn secrets_from_the_environment(flavour: Flavour) {
    let echo = Echo::start();
    let config = json!({
        "providers": {"demo": {"issuer": "edgeguard-demo", "hmac": {"secret_env": "EDGEGUARD_TEST_SECRET"}}},
        "rules": [{"match": {"path": "/v1/shape"}, "provider": "demo", "bind_shape": true}],
        "shape": {"electric_secret_env": "EDGEGUARD_TEST_ELECTRIC"}
    });
    let filter = flavour.filter(
        "jwt_shape",
        &config.to_string(),
        &["EDGEGUARD_TEST_SECRET", "EDGEGUARD_TEST_ELECTRIC"],
    );
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.env.extend([
        (
            "EDGEGUARD_TEST_SECRET".into(),
            "a-secret-that-only-the-environment-knows".into(),
        ),
        ("EDGEGUARD_TEST_ELECTRIC".into(), "electric-from-env".into()),
    ]);
    let envoy = Envoy::start(&cfg);
    let t = TestKey::hmac("k", b"a-secret-that-only-the-environment-knows")
        .sign("HS256", &claims(json!({"table": "items"})));
    let r = envoy.get("/v1/shape?table=items", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.echoed_path(),
        "/v1/shape?table=items&secret=electric-from-env"
    );
}

fn tokens_in_other_places_and_forwarding(flavour: Flavour) {
    let echo = Echo::start();
    let config = json!({
        "providers": {"demo": {
            "hmac": {"secret": DEMO_SECRET},
            "from_headers": [{"name": "x-api-token", "value_prefix": ""}],
            "from_params": ["access_token"],
            "forward": false,
            "forward_payload_header": "x-jwt-payload"
        },
        "fwd": {"hmac": {"secret": DEMO_SECRET}, "forward": true}},
        "rules": [
            {"match": {"prefix": "/fwd"}, "provider": "fwd"},
            {"match": {"prefix": "/"}, "provider": "demo"}
        ]
    });
    let envoy = start(flavour, &echo, &config.to_string());
    let t = items_token();
    let r = envoy.get(
        "/data",
        &[("x-api-token", &t), ("x-jwt-payload", "spoofed")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echoed("x-api-token"), None, "token stripped");
    assert_eq!(r.echoed("x-jwt-payload").as_deref(), t.split('.').nth(1));
    let r = envoy.get(&format!("/data?a=1&access_token={t}&b=2"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echoed_path(), "/data?a=1&b=2");
    // Authorization is not a location of this provider
    let r = envoy.get("/data", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 401);
    let r = envoy.get("/fwd", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("authorization"), Some(bearer(&t)));
}

// ------------------------------------------------------------------ subsets (issue 11 §3)

/// The shape the subset tests' tokens cover.
const SUBSET_SHAPE: &str = "/v1/shape?table=items&columns=id,title&offset=-1";

fn subset_tokens() -> (String, String) {
    let key = demo_key();
    let allowed = key.sign(
        "HS256",
        &claims(json!({"table": "items", "columns": ["id", "title"], "subsets": true})),
    );
    let plain = key.sign(
        "HS256",
        &claims(json!({"table": "items", "columns": ["id", "title"]})),
    );
    (allowed, plain)
}

fn post(envoy: &Envoy, path: &str, token: &str, body: &str) -> Resp {
    edgeguard_tests::http::request(
        envoy.port,
        "POST",
        path,
        &[
            ("authorization", &bearer(token)),
            ("content-type", "application/json"),
        ],
        body,
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn post_parts(port: u16, path: &str, token: &str, parts: &[&[u8]]) -> Resp {
    edgeguard_tests::http::request_in_parts(
        port,
        "POST",
        path,
        &[
            ("authorization", &bearer(token)),
            ("content-type", "application/json"),
        ],
        parts,
        Duration::from_millis(300),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// After every refusal: a good GET, and a good subset POST whose body reaches upstream.
fn good_subsets(envoy: &Envoy, items: &str, allowed: &str) {
    good(envoy, items);
    let body = r#"{"where": "id = $1", "params": {"1": "7"}}"#;
    let r = post(envoy, SUBSET_SHAPE, allowed, body);
    expect(&r, 200, "");
    assert_eq!(r.json()["body"], body);
}

fn subset_requests_are_bound_to_the_token(flavour: Flavour) {
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &demo_config());
    let items = items_token();
    let (allowed, plain) = subset_tokens();

    // GET: granted columns reach Electric unchanged (plus the secret)
    let q = "subset__where=%22title%22+ILIKE+%241+AND+id+%3E+2&subset__params=%7B%221%22%3A%22a%25%22%7D&subset__order_by=id+DESC+NULLS+LAST&subset__limit=5&subset__offset=0";
    let r = envoy.get(
        &format!("{SUBSET_SHAPE}&{q}"),
        &[("authorization", &bearer(&allowed))],
    );
    expect(&r, 200, "");
    assert_eq!(
        r.echoed_path(),
        format!("{SUBSET_SHAPE}&{q}&secret=demo-electric-secret")
    );
    assert_eq!(r.header("vary"), Some("Authorization"));

    let refused: Vec<(&str, &str, u16, &str)> = vec![
        (
            plain.as_str(),
            "subset__where=id+%3D+1",
            403,
            "token does not allow subset requests",
        ),
        (
            plain.as_str(),
            "subset__limit=1&subset__order_by=id",
            403,
            "token does not allow subset requests",
        ),
        (
            allowed.as_str(),
            "subset__where=salary+%3E+100000",
            403,
            "column 'salary'",
        ),
        (
            allowed.as_str(),
            "subset__where=id+%3E+0+OR+%22Salary%22+%3E+1",
            403,
            "column 'Salary'",
        ),
        (
            allowed.as_str(),
            "subset__order_by=salary+DESC&subset__limit=1",
            403,
            "column 'salary'",
        ),
        (
            allowed.as_str(),
            "subset__where=id+%3D+1+--+x",
            403,
            "comments are not accepted",
        ),
        (
            allowed.as_str(),
            "subset__where=id+IN+(SELECT+id+FROM+secrets)",
            403,
            "key word SELECT",
        ),
        (
            allowed.as_str(),
            "subset[where]=salary+%3E+1",
            400,
            "unknown subset parameter",
        ),
        (
            allowed.as_str(),
            "subset__where=id&subset__where=title",
            400,
            "'subset__where' is given more than once",
        ),
        (
            allowed.as_str(),
            "subset__wh%65re=salary",
            400,
            "must not be percent-encoded",
        ),
        (
            allowed.as_str(),
            "subset__limit=-1",
            400,
            "invalid parameter 'subset__limit'",
        ),
    ];
    for (token, q, status, msg) in refused {
        let r = envoy.get(
            &format!("{SUBSET_SHAPE}&{q}"),
            &[("authorization", &bearer(token))],
        );
        expect(&r, status, msg);
        if status == 403 {
            assert!(r
                .header("www-authenticate")
                .unwrap_or_default()
                .contains("insufficient_scope"));
        }
        good_subsets(&envoy, &items, &allowed);
    }

    // POST: the body is checked like the query, and reaches Electric byte for byte
    let body = json!({"where": "\"title\" = $1", "params": {"1": "x"}, "order_by": "id", "limit": 3,
        "where_expr": {"type": "func", "name": "eq", "args": [{"type": "ref", "column": "title"}, {"type": "val", "paramIndex": 1}]}})
    .to_string();
    let r = post(&envoy, SUBSET_SHAPE, &allowed, &body);
    expect(&r, 200, "");
    let echoed = r.json();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], body.as_str());
    assert_eq!(
        r.echoed_path(),
        format!("{SUBSET_SHAPE}&secret=demo-electric-secret")
    );
    assert_eq!(r.header("vary"), Some("Authorization"));
    // no body, or `{}`: not a subset request, so no grant needed
    for b in ["", "{}"] {
        let r = post(&envoy, SUBSET_SHAPE, &plain, b);
        expect(&r, 200, "");
    }
    let big = "x".repeat(70 * 1024);
    let bodies: Vec<(&str, String, u16, &str)> = vec![
        (
            plain.as_str(),
            json!({"where": "id = 1"}).to_string(),
            403,
            "token does not allow subset requests",
        ),
        (
            plain.as_str(),
            json!({"limit": 1}).to_string(),
            403,
            "token does not allow subset requests",
        ),
        (
            allowed.as_str(),
            json!({"where": "salary > 100000"}).to_string(),
            403,
            "column 'salary'",
        ),
        (
            allowed.as_str(),
            json!({"order_by": "salary DESC", "limit": 1}).to_string(),
            403,
            "column 'salary'",
        ),
        (
            allowed.as_str(),
            json!({"where_expr": {"type": "ref", "column": "salary"}}).to_string(),
            403,
            "column 'salary'",
        ),
        (
            allowed.as_str(),
            json!({"where": "id = 1 /* */"}).to_string(),
            403,
            "comments",
        ),
        (
            allowed.as_str(),
            json!({"table": "secrets"}).to_string(),
            400,
            "key 'table' is not a subset parameter",
        ),
        (
            allowed.as_str(),
            json!({"where": "id = 1", "columns": "id,salary"}).to_string(),
            400,
            "key 'columns'",
        ),
        (
            allowed.as_str(),
            json!({"secret": "guess"}).to_string(),
            400,
            "key 'secret'",
        ),
        (
            allowed.as_str(),
            r#"{"where": "id = 1", "where": "salary > 1"}"#.to_string(),
            400,
            "given more than once",
        ),
        (
            allowed.as_str(),
            "{not json".to_string(),
            400,
            "request body is not valid JSON",
        ),
        (
            allowed.as_str(),
            "[1, 2]".to_string(),
            400,
            "must be a JSON object",
        ),
        (
            allowed.as_str(),
            json!({"where": big}).to_string(),
            413,
            "request body is larger than 65536 bytes",
        ),
    ];
    for (token, body, status, msg) in bodies {
        let r = post(&envoy, SUBSET_SHAPE, token, &body);
        expect(&r, status, msg);
        good_subsets(&envoy, &items, &allowed);
    }
    // a POST refused on its query never gets to its body
    let r = post(
        &envoy,
        &format!("{SUBSET_SHAPE}&subset__where=salary+%3E+1"),
        &allowed,
        "{}",
    );
    expect(&r, 403, "column 'salary'");

    // a body in several data frames is checked whole: a 44 KiB IN list of granted ids passes,
    // the same with a hidden column at its very end does not
    let ids: Vec<String> = (0..9000).map(|i| i.to_string()).collect();
    let long = format!("{{\"where\": \"id IN ({})\"}}", ids.join(","));
    let (a, b) = long.as_bytes().split_at(long.len() / 2);
    let r = post_parts(envoy.port, SUBSET_SHAPE, &allowed, &[a, b]);
    expect(&r, 200, "");
    assert_eq!(r.json()["body"], long.as_str());
    let hidden = format!("{{\"where\": \"id IN ({}) OR salary > 1\"}}", ids.join(","));
    let (a, b) = hidden.as_bytes().split_at(hidden.len() / 2);
    let r = post_parts(envoy.port, SUBSET_SHAPE, &allowed, &[a, b]);
    expect(&r, 403, "column 'salary'");
    good_subsets(&envoy, &items, &allowed);

    assert!(envoy.metric("edgeguard_jwt_shape_denied_subset_not_allowed") >= 4.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_subset_column") >= 8.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_subset_unsupported") >= 3.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_bad_body") >= 6.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_body_too_large") >= 1.0);
}

/// A POST that waits for signing keys (unknown kid, refetch) keeps its body and is decided
/// with it: the body already complete when the keys arrive, or arriving afterwards.
fn subset_post_waits_for_keys(flavour: Flavour) {
    let a = keys::rsa_a();
    let server = JwksServer::start(&jwks(&[a.jwk(Some("RS256"))]));
    let echo = Echo::start();
    let config = json!({
        "providers": {"idp": {
            "issuer": "https://idp.test",
            "remote_jwks": {"cluster": "jwks", "uri": "http://idp.test/.well-known/jwks.json",
                "timeout_ms": 2000, "refresh_interval_s": 600, "retry_interval_s": 1,
                "unknown_kid_refetch_interval_s": 1}
        }},
        "rules": [{"match": {"path": "/v1/shape"}, "provider": "idp", "bind_shape": true}]
    })
    .to_string();
    let filter = flavour.filter("jwt_shape", &config, &[]);
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters.push(cluster("jwks", server.port));
    let envoy = Envoy::start(&cfg);
    let shape = json!({"table": "items", "columns": ["id", "title"], "subsets": true});
    let claims =
        json!({"iss": "https://idp.test", "sub": "bob", "exp": now() + 600, "shape": shape});
    let ta = a.sign("RS256", &claims);
    let r = envoy.get(SUBSET_SHAPE, &[("authorization", &bearer(&ta))]);
    expect(&r, 200, "");

    let ok_body: &[u8] = br#"{"where": "title = $1", "params": {"1": "x"}}"#;
    let hidden_body: &[u8] = br#"{"where": "salary > $1", "params": {"1": "1"}}"#;
    let mut published = vec![a.jwk(Some("RS256"))];
    let cases: Vec<(u64, &[u8], bool, u16)> = vec![
        // (key seed, body, body sent 300 ms after the headers, status)
        (11, ok_body, false, 200),
        (12, hidden_body, false, 403),
        (13, ok_body, true, 200),
        (14, hidden_body, true, 403),
    ];
    for (seed, body, late, status) in cases {
        // a new key the filter does not know yet: the request waits for the refetch
        std::thread::sleep(Duration::from_millis(1100));
        let k = TestKey::p256(&format!("ec-{seed}"), seed);
        published.push(k.jwk(Some("ES256")));
        server.serve(&jwks(&published));
        let t = k.sign("ES256", &claims);
        let parts: Vec<&[u8]> = if late {
            vec![&b""[..], body]
        } else {
            vec![body]
        };
        let r = post_parts(envoy.port, SUBSET_SHAPE, &t, &parts);
        expect(
            &r,
            status,
            if status == 403 { "column 'salary'" } else { "" },
        );
        if status == 200 {
            assert_eq!(r.json()["body"], &*String::from_utf8_lossy(body));
        }
    }
    assert!(server.hits() >= 5, "the refetches happened");
}

/// Electric's own client (`@electric-sql/client`, from npm) through Envoy and jwt-shape to the
/// Electric stand-in: `requestSnapshot` / `fetchSnapshot` get the rows of allowed subsets
/// (GET and POST, SQL and structured), and the refusals surface as the client's 403 errors;
/// the stand-in never sees a refused request. Tokens from `edgeguard token --subsets`.
fn electric_client_snapshots_through_jwt_shape(flavour: Flavour) {
    let client = tools::electric_client();
    let node = tools::node();
    let standin_dir = tools::root().join("tests/electric-standin");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new(&node);
    cmd.arg(standin_dir.join("server.mjs")).args([
        "--port",
        &port.to_string(),
        "--secret",
        "standin-secret",
        "--live-hold-ms",
        "300",
    ]);
    let _standin = edgeguard_tests::process::Proc::spawn(
        "electric stand-in",
        cmd,
        &dir.path().join("standin.log"),
    );
    assert!(
        edgeguard_tests::process::wait_for_port(port, Duration::from_secs(10)),
        "the stand-in did not start"
    );
    let config = json!({
        "providers": {"demo": {"issuer": "edgeguard-demo", "audiences": ["electric"],
            "hmac": {"secret": DEMO_SECRET}}},
        "rules": [{"match": {"path": "/v1/shape", "methods": ["GET", "POST"]}, "provider": "demo", "bind_shape": true}],
        "shape": {"electric_secret": "standin-secret"}
    })
    .to_string();
    let filter = flavour.filter("jwt_shape", &config, &[]);
    let envoy = Envoy::start(&EnvoyConfig::new(port, vec![filter]));

    let mint = |extra: &[&str]| {
        let out = std::process::Command::new(tools::edgeguard())
            .args([
                "token",
                "--table",
                "items",
                "--columns",
                "id,title,priority",
                "--log",
                "changes_only",
            ])
            .args(extra)
            .output()
            .expect("edgeguard token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let with_subsets = mint(&["--subsets"]);
    let plain = mint(&[]);

    let mut cmd = std::process::Command::new(&node);
    cmd.arg(standin_dir.join("client-test.mjs"))
        .env("EDGEGUARD_ELECTRIC_CLIENT", &client)
        .env(
            "SHAPE_URL",
            format!("http://127.0.0.1:{}/v1/shape", envoy.port),
        )
        .env("TOKEN_SUBSETS", &with_subsets)
        .env("TOKEN_PLAIN", &plain);
    let mut run =
        edgeguard_tests::process::Proc::spawn("client test", cmd, &dir.path().join("client.log"));
    let code = run.wait_exit(Duration::from_secs(120));
    let out = run.log_text();
    assert_eq!(
        code,
        Some(0),
        "the client test failed:
{out}"
    );
    assert!(out.contains("11 passed, 0 failed"), "{out}");

    // what reached "Electric": subsets on granted columns (GET and POST), each with the secret
    // jwt-shape injected; never one of the refused requests
    let seen = edgeguard_tests::http::get(port, "/__standin/requests", &[]).unwrap();
    let seen: Vec<Value> = serde_json::from_str(&seen.body).unwrap();
    assert!(!seen.is_empty());
    let mut subset_gets = 0;
    let mut subset_posts = 0;
    for req in &seen {
        let url = req["url"].as_str().unwrap();
        if req["complete"] != true {
            // the wasm build lets the headers of a POST go on while it checks the body; a
            // refused body never follows (the stream is reset), so Electric never reads it
            assert_eq!(flavour, Flavour::Wasm, "an incomplete request: {req}");
            assert_eq!(req["method"], "POST");
            assert!(req["body"].is_null());
            continue;
        }
        let body = req["body"].as_str().unwrap();
        let decoded = url.replace("%22", "\"").replace('+', " ");
        assert!(
            !decoded.to_lowercase().contains("salary") && !body.contains("salary"),
            "a refused subset reached the stand-in: {url} {body}"
        );
        assert!(url.contains("secret=standin-secret"), "{url}");
        if url.contains("subset__where") {
            subset_gets += 1;
        }
        if req["method"] == "POST" && body.contains("where") {
            subset_posts += 1;
        }
    }
    assert!(subset_gets >= 3, "{seen:?}");
    assert!(subset_posts >= 2, "{seen:?}");
    // ... while the stand-in, like Electric before queryable_columns, would have answered it
    let direct = edgeguard_tests::http::get(
        port,
        "/v1/shape?table=items&columns=id,title&offset=-1&secret=standin-secret&subset__where=salary+%3E+100000",
        &[],
    )
    .unwrap();
    assert_eq!(direct.status, 200, "{}", direct.body);
    let rows: Vec<String> = direct.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows, vec!["1", "3", "4"], "the leak jwt-shape prevents");
}

edgeguard_tests::flavoured!(
    allowed_request_is_rewritten_for_electric,
    token_failures_are_401_and_leave_the_filter_working,
    subset_requests_are_bound_to_the_token,
    subset_post_waits_for_keys,
    electric_client_snapshots_through_jwt_shape,
    shape_binding_403_and_400,
    preflight_passes_other_options_do_not,
    every_algorithm_family,
    remote_jwks_rotation,
    remote_jwks_unreachable_then_garbage_then_up,
    invalid_configuration_is_refused_with_one_clear_line,
    an_unknown_jwks_cluster_fails_loudly,
    claims_hold_raw_names,
    jose_v6_tokens_verify,
    secrets_from_the_environment,
    tokens_in_other_places_and_forwarding,
);
