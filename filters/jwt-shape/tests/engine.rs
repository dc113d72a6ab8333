//! The request path against the in-memory test host: the same code Envoy runs, natively.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::TestHost;
use edgeguard_verdict::jwk::KeySet;
use jsonwebtoken::{encode, EncodingKey, Header};
use jwt_shape::config::{Config, ProcessEnv};
use jwt_shape::engine::{on_request, vary_value, Outcome, State};
use serde_json::{json, Value};

const SECRET: &str = "engine-test-secret-0123456789abcdef";
const NOW: f64 = 1_800_000_000.0;

fn config(v: Value) -> Config {
    Config::parse(v.to_string().as_bytes(), &ProcessEnv).unwrap()
}

fn hmac_config() -> Config {
    config(json!({
        "providers": {"p": {"hmac": {"secret": SECRET}, "issuer": "iss",
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}},
        "rules": [
            {"match": {"path": "/v1/shape"}, "provider": "p", "bind_shape": true},
            {"match": {"prefix": "/public"}, "public": true}
        ],
        "shape": {"electric_secret": "es"}
    }))
}

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good_claims() -> Value {
    json!({"iss": "iss", "sub": "u1", "exp": NOW + 60.0, "shape": {"table": "items"}})
}

fn host(path: &str, auth: Option<&str>) -> TestHost {
    let mut h = vec![(":method", "GET"), (":path", path), ("x-sub", "spoofed")];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    TestHost::with_headers(&h)
}

#[test]
fn allowed_request_is_rewritten() {
    let cfg = hmac_config();
    let mut state = State::new(&cfg);
    let t = token(good_claims());
    let h = host(
        "/v1/shape?table=items&secret=x&offset=-1",
        Some(&format!("Bearer {t}")),
    );
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW, true),
        Outcome::Allowed { vary: true }
    );
    assert_eq!(
        h.header(":path").as_deref(),
        Some("/v1/shape?table=items&offset=-1&secret=es")
    );
    assert_eq!(h.header("x-sub").as_deref(), Some("u1"));
    assert_eq!(h.header("authorization"), None);
    assert!(h.reply.borrow().is_none());
    assert_eq!(h.counter("edgeguard_jwt_shape.allowed"), 1);
    assert_eq!(h.counter("edgeguard_jwt_shape.cache_miss"), 1);

    // the second time the verdict comes from the cache
    let h2 = host("/v1/shape?table=items", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &mut state, &h2, &h2, NOW + 1.0, true),
        Outcome::Allowed { vary: true }
    );
    assert_eq!(h2.counter("edgeguard_jwt_shape.cache_hit"), 1);
    // ... but not once the token expired (exp + 60 s skew)
    let h3 = host("/v1/shape?table=items", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &mut state, &h3, &h3, NOW + 121.0, true),
        Outcome::Denied
    );
    assert_eq!(h3.reply.borrow().as_ref().unwrap().status, 401);
    assert_eq!(h3.counter("edgeguard_jwt_shape.denied.expired"), 1);
}

#[test]
fn public_rules_still_strip_owned_headers() {
    let cfg = hmac_config();
    let mut state = State::new(&cfg);
    let h = host("/public/x", None);
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW, true),
        Outcome::Allowed { vary: false }
    );
    assert_eq!(h.header("x-sub"), None);
}

#[test]
fn denials_carry_json_and_challenges() {
    let cfg = hmac_config();
    let mut state = State::new(&cfg);
    let h = host("/v1/shape?table=items", None);
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW, true),
        Outcome::Denied
    );
    let reply = h.reply.borrow().clone().unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"edgeguard\"")
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("vary"), Some("Authorization"));
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"code": 401, "message": "a bearer token is required"})
    );

    // a quote in client input cannot break the challenge header
    let h = host(
        "/v1/shape?table=items",
        Some("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
    );
    let forged = format!("Bearer {}.e30.c2ln", base64_url(r#"{"alg":"HS\"256"}"#));
    let h2 = host("/v1/shape?table=items", Some(&forged));
    on_request(&cfg, &mut state, &h, &h, NOW, true);
    on_request(&cfg, &mut state, &h2, &h2, NOW, true);
    let www = h2
        .reply
        .borrow()
        .clone()
        .unwrap()
        .header("www-authenticate")
        .unwrap()
        .to_string();
    assert_eq!(www.matches('"').count(), 6, "{www}");

    let t = token(json!({"iss": "iss", "exp": NOW + 60.0, "shape": {"table": "other"}}));
    let h = host("/v1/shape?table=items", Some(&format!("Bearer {t}")));
    on_request(&cfg, &mut state, &h, &h, NOW, true);
    let reply = h.reply.borrow().clone().unwrap();
    assert_eq!(reply.status, 403);
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn remote_config() -> Config {
    config(json!({
        "providers": {"r": {"remote_jwks": {"cluster": "c", "uri": "http://idp/jwks", "unknown_kid_refetch_interval_s": 30}}},
        "rules": [{"match": {"prefix": "/"}, "provider": "r"}]
    }))
}

#[test]
fn waits_for_the_first_key_set_then_answers() {
    let cfg = remote_config();
    let mut state = State::new(&cfg);
    let t = token(json!({"exp": NOW + 60.0}));
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW, true),
        Outcome::Wait { provider: 0 }
    );
    assert!(h.reply.borrow().is_none());
    // the fetch failed: decided again without waiting -> 401
    state.keys[0].fetch_started(jwt_shape::keys::FetchReason::Initial, NOW);
    state.keys[0].fetch_finished(Err("down".into()), NOW);
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW, false),
        Outcome::Denied
    );
    assert!(h
        .reply
        .borrow()
        .as_ref()
        .unwrap()
        .body
        .contains("signing keys are not available"));
    // and new requests do not wait while the retry is not due
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW + 1.0, true),
        Outcome::Denied
    );
}

#[test]
fn unknown_kid_waits_once_for_a_refetch() {
    let cfg = remote_config();
    let mut state = State::new(&cfg);
    let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": base64_url(SECRET)}]});
    let (set, _) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    state.keys[0].fetch_started(jwt_shape::keys::FetchReason::Initial, NOW);
    state.keys[0].fetch_finished(Ok(set), NOW);

    let header = Header {
        kid: Some("k2".into()),
        ..Default::default()
    };
    let t = encode(
        &header,
        &json!({"exp": NOW + 60.0}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW + 1.0, true),
        Outcome::Wait { provider: 0 }
    );
    assert_eq!(
        state.keys[0].fetch_due(NOW + 1.0),
        Some(jwt_shape::keys::FetchReason::UnknownKid)
    );
    state.keys[0].fetch_started(jwt_shape::keys::FetchReason::UnknownKid, NOW + 1.0);
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW + 1.1, false),
        Outcome::Denied
    );
    // rate limited: the next unknown kid is refused at once
    let h = host("/x", Some(&format!("Bearer {t}")));
    state.keys[0].fetch_finished(Err("x".into()), NOW + 1.2);
    assert_eq!(
        on_request(&cfg, &mut state, &h, &h, NOW + 2.0, true),
        Outcome::Denied
    );
    assert!(h
        .reply
        .borrow()
        .as_ref()
        .unwrap()
        .body
        .contains("unknown key id"));
}

#[test]
fn vary_merging() {
    let v = |existing: Option<&[u8]>| {
        vary_value(existing).map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    assert_eq!(v(None).as_deref(), Some("Authorization"));
    assert_eq!(v(Some(b"")).as_deref(), Some("Authorization"));
    assert_eq!(
        v(Some(b"Accept-Encoding")).as_deref(),
        Some("Accept-Encoding, Authorization")
    );
    assert_eq!(v(Some(b"accept, authorization")), None);
    assert_eq!(v(Some(b"*")), None);
    // an upstream value that is not UTF-8 is extended byte for byte
    assert_eq!(
        vary_value(Some(b"X-Caf\xe9")),
        Some(b"X-Caf\xe9, Authorization".to_vec())
    );
}
