//! The request path against the in-memory test host: the same code Envoy runs, natively.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::{Call, TestBackground, TestHost};
use jsonwebtoken::{encode, EncodingKey, Header};
use jwt_shape::config::{Config, ProcessEnv};
use jwt_shape::engine::{on_request, vary_value, Outcome};
use jwt_shape::jwks;
use jwt_shape::state::Shared;
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
    let state = Shared::<()>::new(&cfg);
    let t = token(good_claims());
    let h = host(
        "/v1/shape?table=items&secret=x&offset=-1",
        Some(&format!("Bearer {t}")),
    );
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
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
        on_request(&cfg, &state, &h2, &h2, NOW + 1.0, true),
        Outcome::Allowed { vary: true }
    );
    assert_eq!(h2.counter("edgeguard_jwt_shape.cache_hit"), 1);
    // ... but not once the token expired (exp + 60 s skew)
    let h3 = host("/v1/shape?table=items", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &state, &h3, &h3, NOW + 121.0, true),
        Outcome::Denied
    );
    assert_eq!(h3.reply.borrow().as_ref().unwrap().status, 401);
    assert_eq!(h3.counter("edgeguard_jwt_shape.denied.expired"), 1);
}

#[test]
fn public_rules_still_strip_owned_headers() {
    let cfg = hmac_config();
    let state = Shared::<()>::new(&cfg);
    let h = host("/public/x", None);
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
        Outcome::Allowed { vary: false }
    );
    assert_eq!(h.header("x-sub"), None);
}

#[test]
fn denials_carry_json_and_challenges() {
    let cfg = hmac_config();
    let state = Shared::<()>::new(&cfg);
    let h = host("/v1/shape?table=items", None);
    assert_eq!(on_request(&cfg, &state, &h, &h, NOW, true), Outcome::Denied);
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
    on_request(&cfg, &state, &h, &h, NOW, true);
    on_request(&cfg, &state, &h2, &h2, NOW, true);
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
    on_request(&cfg, &state, &h, &h, NOW, true);
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
        "providers": {"r": {"remote_jwks": {"cluster": "c", "uri": "http://idp/jwks", "unknown_kid_refetch_interval_s": 30}, "require_expiration": true}},
        "rules": [{"match": {"prefix": "/"}, "provider": "r"}]
    }))
}

fn jwks_body(kid: &str) -> Vec<u8> {
    json!({"keys": [{"kty": "oct", "kid": kid, "k": base64_url(SECRET)}]})
        .to_string()
        .into_bytes()
}

fn kid_token(kid: &str) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Default::default()
    };
    encode(
        &header,
        &json!({"exp": NOW + 600.0}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The background owner's tick, and the one call it must have started.
fn tick_one_call(cfg: &Config, state: &Shared<u32>, bg: &TestBackground, now: f64) -> Call {
    let failed = jwks::tick(cfg, state, bg, bg_metrics(), now);
    assert!(failed.is_empty());
    let mut calls = bg.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.remove(0)
}

fn bg_metrics() -> &'static TestHost {
    thread_local! {
        static M: &'static TestHost = Box::leak(Box::default());
    }
    M.with(|m| *m)
}

#[test]
fn waits_for_the_first_key_set_then_answers() {
    let cfg = remote_config();
    let state = Shared::<u32>::new(&cfg);
    let bg = TestBackground::default();
    let t = kid_token("k1");
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
        Outcome::Wait { provider: 0 }
    );
    assert!(state.park(7, 0, 7));
    assert!(h.reply.borrow().is_none());
    // the owner's first tick fetches the JWKS through the provider's cluster
    let call = tick_one_call(&cfg, &state, &bg, NOW);
    assert_eq!(call.cluster, "c");
    assert_eq!(call.header(":path"), Some("/jwks"));
    assert_eq!(call.header(":authority"), Some("idp"));
    assert!(jwks::tick(&cfg, &state, &bg, bg_metrics(), NOW + 0.1).is_empty());
    assert!(bg.take_calls().is_empty(), "one fetch at a time");
    // the fetch failed: the parked request is decided again without waiting -> 401
    let answered = jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        Some("503"),
        Some(b"down"),
        NOW + 0.2,
    )
    .unwrap();
    assert_eq!(
        answered,
        jwks::Answered {
            provider: 0,
            loaded: false
        }
    );
    assert_eq!(state.take_waiting(0), vec![(7, 7)]);
    assert!(bg.logged("JWKS fetch failed: JWKS endpoint answered HTTP 503; no keys yet"));
    assert!(
        !bg.logged("TLS transport_socket"),
        "an http:// uri gets no TLS hint"
    );
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 0.2, false),
        Outcome::Denied
    );
    assert!(h
        .reply
        .borrow()
        .as_ref()
        .unwrap()
        .body
        .contains("signing keys are not available"));
    // new requests do not wait while the retry is not due ...
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 1.0, true),
        Outcome::Denied
    );
    // ... which is retry_interval_s (5 s) later; that fetch brings keys
    assert!(jwks::tick(&cfg, &state, &bg, bg_metrics(), NOW + 4.0).is_empty());
    assert!(bg.take_calls().is_empty());
    let call = tick_one_call(&cfg, &state, &bg, NOW + 5.3);
    let body = jwks_body("k1");
    let answered = jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        Some("200"),
        Some(&body),
        NOW + 5.4,
    )
    .unwrap();
    assert!(answered.loaded);
    assert!(bg.logged("JWKS loaded, 1 key(s) [k1]"));
    let h = host("/x", Some(&format!("Bearer {t}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 5.5, true),
        Outcome::Allowed { vary: true }
    );
    // an answer to a call that is not ours changes nothing
    assert!(jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        999,
        Some("200"),
        Some(&body),
        NOW
    )
    .is_none());
}

/// A filter cannot see whether a cluster has TLS: a failed fetch of an `https://` URI that
/// looks like plaintext spoken to a TLS port (a reset, a 400) says what to check.
#[test]
fn a_failed_https_fetch_names_the_missing_tls() {
    let cfg = config(json!({
        "providers": {"r": {"remote_jwks": {"cluster": "idp_cluster", "uri": "https://idp/jwks"}}},
        "rules": [{"match": {"prefix": "/"}, "provider": "r"}]
    }));
    let state = Shared::<u32>::new(&cfg);
    let bg = TestBackground::default();
    let call = tick_one_call(&cfg, &state, &bg, NOW);
    let a = jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        None,
        None,
        NOW + 0.1,
    );
    assert!(!a.unwrap().loaded);
    assert!(bg.logged(
        "(the uri is https://: cluster 'idp_cluster' needs a TLS transport_socket, Envoy speaks plaintext to a cluster without one)"
    ));
    // a 404 from a reachable IdP is not a TLS problem
    let bg = TestBackground::default();
    let call = tick_one_call(&cfg, &state, &bg, NOW + 10.0);
    jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        Some("404"),
        Some(b"no"),
        NOW + 10.1,
    );
    assert!(bg.logged("JWKS fetch failed"));
    assert!(!bg.logged("TLS transport_socket"));
}

#[test]
fn a_cluster_that_cannot_be_called_decides_parked_requests_at_once() {
    let cfg = remote_config();
    let state = Shared::<u32>::new(&cfg);
    let bg = TestBackground::default();
    bg.refuse_calls.set(true);
    assert_eq!(jwks::tick(&cfg, &state, &bg, bg_metrics(), NOW), vec![0]);
    assert!(bg.logged("cannot call cluster 'c'"));
}

#[test]
fn an_unknown_jwks_cluster_is_a_critical_line_once_and_a_metric() {
    let cfg = remote_config();
    let state = Shared::<u32>::new(&cfg);
    let bg = TestBackground::default();
    *bg.known_clusters.borrow_mut() = Some(vec!["other".into()]);
    let m = TestHost::default();
    assert_eq!(jwks::tick(&cfg, &state, &bg, &m, NOW), vec![0]);
    assert_eq!(jwks::tick(&cfg, &state, &bg, &m, NOW + 5.1), vec![0]);
    let critical: Vec<String> = bg
        .logs
        .borrow()
        .iter()
        .filter(|(l, _)| *l == edgeguard_host::Level::Critical)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(critical.len(), 1, "{critical:?}");
    assert!(critical[0].contains("remote_jwks.cluster 'c' is not a cluster this Envoy knows"));
    assert_eq!(m.counter("edgeguard_jwt_shape.jwks_cluster_unknown"), 2);
    // and requests are refused, not left waiting
    let h = host("/x", Some(&format!("Bearer {}", kid_token("k1"))));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 5.2, true),
        Outcome::Denied
    );
}

#[test]
fn rotation_refresh_and_unknown_kid_refetch() {
    let cfg = remote_config();
    let state = Shared::<u32>::new(&cfg);
    let bg = TestBackground::default();
    let call = tick_one_call(&cfg, &state, &bg, NOW);
    jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        Some("200"),
        Some(&jwks_body("k1")),
        NOW,
    )
    .unwrap();
    let generation = state.provider(0).unwrap().generation();

    // a token signed with a key the set does not hold yet waits for one refetch
    let t2 = kid_token("k2");
    let h = host("/x", Some(&format!("Bearer {t2}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 1.0, true),
        Outcome::Wait { provider: 0 }
    );
    let call = tick_one_call(&cfg, &state, &bg, NOW + 1.1);
    // the IdP rotated: k2 is published now
    jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        Some("200"),
        Some(&jwks_body("k2")),
        NOW + 1.2,
    )
    .unwrap();
    assert!(
        state.provider(0).unwrap().generation() > generation,
        "cached verdicts of the old set expire"
    );
    let h = host("/x", Some(&format!("Bearer {t2}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 1.3, false),
        Outcome::Allowed { vary: true }
    );
    // k1 is gone from the set: its tokens are refused, and the next unknown kid within the
    // rate limit (30 s) is refused at once instead of waiting
    let h = host("/x", Some(&format!("Bearer {}", kid_token("k1"))));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 2.0, true),
        Outcome::Denied
    );
    assert!(h
        .reply
        .borrow()
        .as_ref()
        .unwrap()
        .body
        .contains("unknown key id"));
    // the refresh comes refresh_interval_s (600 s) after the last success, not before
    assert!(jwks::tick(&cfg, &state, &bg, bg_metrics(), NOW + 500.0).is_empty());
    assert!(bg.take_calls().is_empty());
    let call = tick_one_call(&cfg, &state, &bg, NOW + 601.3);
    // a failed refresh keeps the last good keys
    jwks::answer(
        &cfg,
        &state,
        &bg,
        bg_metrics(),
        call.id,
        None,
        None,
        NOW + 601.4,
    )
    .unwrap();
    assert!(bg.logged("keeping the last good keys"));
    let h = host("/x", Some(&format!("Bearer {t2}")));
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW + 601.5, true),
        Outcome::Allowed { vary: true }
    );
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

fn bound_config(require: bool) -> Config {
    config(json!({
        "providers": {"p": {"hmac": {"secret": SECRET}, "issuer": "iss",
            "require_bound_tokens": require}},
        "rules": [{"match": {"prefix": "/"}, "provider": "p"}]
    }))
}

fn denial(h: &TestHost) -> (u32, String) {
    let r = h.reply.borrow().clone().unwrap();
    (
        r.status,
        r.header("www-authenticate").unwrap_or("").to_string(),
    )
}

#[test]
fn certificate_bound_tokens() {
    use edgeguard_verdict::binding::{x5t_s256, Thumbprint};
    const CERT: Thumbprint = [0x42; 32];
    const OTHER: Thumbprint = [0x43; 32];
    let bound = token(json!({"iss": "iss", "exp": NOW + 60.0,
        "cnf": {"x5t#S256": x5t_s256(&CERT)}}));
    let plain = token(json!({"iss": "iss", "exp": NOW + 60.0}));
    let run = |cfg: &Config, state: &Shared<()>, t: &str, cert: Option<Thumbprint>| {
        let mut h = host("/x", Some(&format!("Bearer {t}")));
        if let Some(c) = cert {
            h = h.with_peer_certificate(c);
        }
        let outcome = on_request(cfg, state, &h, &h, NOW, true);
        (outcome, h)
    };
    for require in [false, true] {
        let cfg = bound_config(require);
        let state = Shared::<()>::new(&cfg);
        // the holder of the certificate: allowed, twice (the second from the cache, checked again)
        for _ in 0..2 {
            let (o, h) = run(&cfg, &state, &bound, Some(CERT));
            assert_eq!(o, Outcome::Allowed { vary: true });
            assert_eq!(h.peer_certificate_reads.get(), 1);
        }
        // another certificate, or none: 401 invalid_token, from the cache too
        let (o, h) = run(&cfg, &state, &bound, Some(OTHER));
        assert_eq!(o, Outcome::Denied);
        let (status, www) = denial(&h);
        assert_eq!(status, 401);
        assert!(www.contains("error=\"invalid_token\""), "{www}");
        assert!(www.contains("does not match the token's cnf"), "{www}");
        assert_eq!(
            h.counter("edgeguard_jwt_shape.denied.certificate_mismatch"),
            1
        );
        let (o, h) = run(&cfg, &state, &bound, None);
        assert_eq!(o, Outcome::Denied);
        let (status, www) = denial(&h);
        assert_eq!(status, 401);
        assert!(www.contains("no client certificate was presented"), "{www}");
        assert_eq!(
            h.counter("edgeguard_jwt_shape.denied.no_client_certificate"),
            1
        );

        // an unbound token: a bearer token unless the provider requires binding; the
        // certificate is never asked for
        for cert in [None, Some(CERT)] {
            let (o, h) = run(&cfg, &state, &plain, cert);
            assert_eq!(h.peer_certificate_reads.get(), 0);
            if require {
                assert_eq!(o, Outcome::Denied);
                let (status, www) = denial(&h);
                assert_eq!(status, 401);
                assert!(www.contains("certificate-bound token"), "{www}");
                assert_eq!(h.counter("edgeguard_jwt_shape.denied.unbound_token"), 1);
            } else {
                assert_eq!(o, Outcome::Allowed { vary: true });
            }
        }

        // a malformed cnf: 401 whatever the certificate
        for cnf in [
            json!("x"),
            json!({"x5t#S256": "short"}),
            json!({"jkt": "abc"}),
        ] {
            let t = token(json!({"iss": "iss", "exp": NOW + 60.0, "cnf": cnf}));
            let (o, h) = run(&cfg, &state, &t, Some(CERT));
            assert_eq!(o, Outcome::Denied, "{cnf}");
            assert_eq!(denial(&h).0, 401);
        }
        // and the good request still passes
        let (o, _) = run(&cfg, &state, &bound, Some(CERT));
        assert_eq!(o, Outcome::Allowed { vary: true });
    }
}
