//! Hostile requests against the request path (test host): bytes that are not UTF-8 in every
//! header the filter reads, tokens in several locations, Electric secrets on every path the
//! filter lets through, and a property test driving arbitrary header bytes, query strings and
//! tokens through it. Every request must end allowed or denied with a reply, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::{Host, TestHost};
use jsonwebtoken::{encode, EncodingKey, Header};
use jwt_shape::config::{Config, ProcessEnv};
use jwt_shape::engine::{on_request, on_response, Outcome};
use jwt_shape::state::Shared;
use proptest::prelude::*;
use serde_json::{json, Value};

const SECRET: &str = "hostile-test-secret-0123456789abcdef";
const NOW: f64 = 1_800_000_000.0;

fn config() -> Config {
    Config::parse(
        json!({
            "providers": {"p": {
                "hmac": {"secret": SECRET}, "issuer": "iss",
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-token"}],
                "from_params": ["access_token"],
                "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}},
            "rules": [
                {"match": {"path": "/v1/shape"}, "provider": "p", "bind_shape": true},
                {"match": {"prefix": "/rpc"}, "provider": "p"},
                {"match": {"prefix": "/public"}, "public": true}
            ],
            "shape": {"electric_secret": "es"},
            "unmatched": "deny",
            "strip_request_headers": ["portal-*", "rl-*"]
        })
        .to_string()
        .as_bytes(),
        &ProcessEnv,
    )
    .unwrap()
}

fn token() -> String {
    encode(
        &Header::default(),
        &json!({"iss": "iss", "sub": "u1", "exp": NOW + 60.0, "shape": {"table": "items"}}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn run(headers: &[(&str, &[u8])]) -> (Outcome, TestHost) {
    let cfg = config();
    let state = Shared::<()>::new(&cfg);
    let h = TestHost::with_raw_headers(headers);
    let out = on_request(&cfg, &state, &h, &h, NOW, true);
    (out, h)
}

fn status(h: &TestHost) -> Option<u32> {
    h.reply.borrow().as_ref().map(|r| r.status)
}

fn body(h: &TestHost) -> Value {
    serde_json::from_str(&h.reply.borrow().as_ref().unwrap().body).unwrap()
}

#[test]
fn a_token_that_is_not_utf8_is_invalid_token() {
    let (out, h) = run(&[
        (":method", b"GET"),
        (":path", b"/v1/shape?table=items"),
        ("authorization", b"Bearer eyJ\xe9.e30.x"),
    ]);
    assert_eq!(out, Outcome::Denied);
    assert_eq!(status(&h), Some(401));
    let reply = h.reply.borrow().clone().unwrap();
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert!(body(&h)["message"]
        .as_str()
        .unwrap()
        .contains("not valid UTF-8"));
}

#[test]
fn other_headers_that_are_not_utf8_change_nothing() {
    let t = format!("Bearer {}", token());
    let (out, h) = run(&[
        (":method", b"GET"),
        (":path", b"/v1/shape?table=items"),
        ("authorization", t.as_bytes()),
        ("user-agent", b"caf\xe9/1.0"),
        ("origin", b"http://caf\xe9"),
        ("portal-application-id", b"\xff\xfe"),
        ("x-sub", b"\xff"),
    ]);
    assert_eq!(out, Outcome::Allowed { vary: true });
    assert_eq!(h.header("x-sub").as_deref(), Some("u1"));
    assert_eq!(
        h.header("portal-application-id"),
        None,
        "stripped (strip_request_headers)"
    );
    assert_eq!(
        h.header("user-agent").as_deref(),
        Some("caf\u{fffd}/1.0"),
        "left alone"
    );

    // a preflight whose Origin is Latin-1 is still a preflight
    let (out, h) = run(&[
        (":method", b"OPTIONS"),
        (":path", b"/v1/shape?table=items&secret=client&api_secret=x"),
        ("origin", b"http://caf\xe9"),
        ("access-control-request-method", b"GET"),
    ]);
    assert_eq!(out, Outcome::Allowed { vary: false });
    assert_eq!(h.header(":path").as_deref(), Some("/v1/shape?table=items"));
}

#[test]
fn a_path_that_is_not_utf8_is_a_400() {
    let (out, h) = run(&[(":method", b"GET"), (":path", b"/v1/shape?table=caf\xe9")]);
    assert_eq!(out, Outcome::Denied);
    assert_eq!(status(&h), Some(400));
}

#[test]
fn no_path_the_filter_lets_through_keeps_a_client_secret() {
    // CORS preflight, public rule: no token needed, but Electric's secret is the proxy's
    for (method, path, want) in [
        (
            "OPTIONS",
            "/v1/shape?table=items&secret=s1&API_SECRET=keep",
            "/v1/shape?table=items&API_SECRET=keep",
        ),
        (
            "GET",
            "/public/x?secret=s1&a=1&api_secret=s2",
            "/public/x?a=1",
        ),
        ("GET", "/public/x?secre%74=s1", "/public/x"),
        ("GET", "/public/x?a=1", "/public/x?a=1"),
    ] {
        let (out, h) = run(&[
            (":method", method.as_bytes()),
            (":path", path.as_bytes()),
            ("origin", b"https://app"),
            ("access-control-request-method", b"GET"),
        ]);
        assert_eq!(out, Outcome::Allowed { vary: false }, "{path}");
        assert_eq!(h.header(":path").as_deref(), Some(want), "{path}");
    }
    // an authenticated route that does not bind shapes strips them too
    let t = format!("Bearer {}", token());
    let (out, h) = run(&[
        (":method", b"GET"),
        (":path", b"/rpc/a?secret=s&x=1"),
        ("authorization", t.as_bytes()),
    ]);
    assert_eq!(out, Outcome::Allowed { vary: true });
    assert_eq!(h.header(":path").as_deref(), Some("/rpc/a?x=1"));
    // a query that cannot be read cannot be cleaned: refused
    let (out, h) = run(&[(":method", b"GET"), (":path", b"/public/x?secret=%zz")]);
    assert_eq!(out, Outcome::Denied);
    assert_eq!(status(&h), Some(400));
}

#[test]
fn the_token_leaves_every_location() {
    let t = token();
    let auth = format!("Bearer {t}");
    let path = "/rpc/a?access_token=garbage&x=1";
    let (out, h) = run(&[
        (":method", b"GET"),
        (":path", path.as_bytes()),
        ("authorization", auth.as_bytes()),
        ("x-token", b"more-garbage"),
    ]);
    assert_eq!(out, Outcome::Allowed { vary: true });
    assert_eq!(h.header("authorization"), None);
    assert_eq!(h.header("x-token"), None);
    assert_eq!(h.header(":path").as_deref(), Some("/rpc/a?x=1"));
    // a token taken from the query leaves the header locations empty as well (an
    // `Authorization` without the `Bearer ` prefix holds no token for this provider)
    let path = format!("/rpc/a?access_token={t}");
    let (out, h) = run(&[
        (":method", b"GET"),
        (":path", path.as_bytes()),
        ("authorization", b"Basic Zm9vOmJhcg=="),
    ]);
    assert_eq!(out, Outcome::Allowed { vary: true });
    assert_eq!(h.header("authorization"), None);
    assert_eq!(h.header(":path").as_deref(), Some("/rpc/a"));
}

#[test]
fn forward_keeps_only_the_checked_token() {
    let cfg = Config::parse(
        json!({
            "providers": {"p": {"hmac": {"secret": SECRET}, "forward": true,
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"]}},
            "rules": [{"match": {"prefix": "/"}, "provider": "p"}]
        })
        .to_string()
        .as_bytes(),
        &ProcessEnv,
    )
    .unwrap();
    let state = Shared::<()>::new(&cfg);
    let auth = format!("Bearer {}", token());
    let h = TestHost::with_headers(&[
        (":method", "GET"),
        (":path", "/a?access_token=garbage"),
        ("authorization", &auth),
    ]);
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
        Outcome::Allowed { vary: true }
    );
    assert_eq!(h.header("authorization").as_deref(), Some(auth.as_str()));
    assert_eq!(h.header(":path").as_deref(), Some("/a"));
}

#[test]
fn response_vary_that_is_not_utf8_is_extended() {
    let h = TestHost::default();
    h.set_response_header("vary", b"X-Caf\xe9");
    on_response(&h, true);
    assert_eq!(
        h.response_header("vary").as_deref(),
        Some(&b"X-Caf\xe9, Authorization"[..])
    );
    let h = TestHost::default();
    on_response(&h, false);
    assert_eq!(h.response_header("vary"), None);
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_string()),
        Just("x-token".to_string()),
        Just("origin".to_string()),
        Just("access-control-request-method".to_string()),
        Just("x-sub".to_string()),
        Just("portal-application-id".to_string()),
        Just("user-agent".to_string()),
        "[a-z-]{1,12}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(format!("Bearer {}", token()).into_bytes()),
        "Bearer [A-Za-z0-9_.-]{0,80}".prop_map(String::into_bytes),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![
        Just("/v1/shape".to_string()),
        Just("/rpc/x".to_string()),
        Just("/public".to_string()),
        Just("/other".to_string()),
    ];
    let query = proptest::collection::vec(
        prop_oneof![
            Just("table=items".to_string()),
            Just("secret=x".to_string()),
            Just(format!("access_token={}", token())),
            "[a-z%_\\[\\]0-9]{0,8}=[a-zA-Z%+0-9 ]{0,12}",
        ],
        0..6,
    );
    (prefix, query, proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(p, q, tail)| {
        let mut out = format!("{p}?{}", q.join("&")).into_bytes();
        out.extend(tail);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_in_a_decision(
        method in prop_oneof![Just(b"GET".to_vec()), Just(b"OPTIONS".to_vec()), proptest::collection::vec(any::<u8>(), 0..8)],
        path in path(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..8),
    ) {
        let mut raw: Vec<(&str, &[u8])> = vec![(":method", &method), (":path", &path)];
        raw.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let (out, h) = run(&raw);
        match out {
            Outcome::Denied => {
                let reply = h.reply.borrow().clone();
                prop_assert!(reply.is_some(), "a denial always answers");
                let status = reply.map(|r| r.status).unwrap_or(0);
                prop_assert!([400, 401, 403].contains(&status), "status {status}");
            }
            Outcome::Allowed { vary } => {
                prop_assert!(h.reply.borrow().is_none());
                // nothing a client sends survives in a header the filter owns or strips
                if let Some(sub) = h.header("x-sub") {
                    prop_assert_eq!(sub, "u1");
                }
                prop_assert!(h.header("portal-application-id").is_none());
                let p = h.header(":path").unwrap_or_default();
                if vary {
                    // decided on a token: no token location keeps anything
                    prop_assert!(h.header("x-token").is_none());
                    prop_assert!(h.header("authorization").is_none());
                    prop_assert!(!p.contains("access_token="), "{p}");
                }
                prop_assert!(!p.contains("secret=x"), "{p}");
            }
            Outcome::Wait { .. } => prop_assert!(false, "static keys never wait"),
            // only a POST to the bound route holds its body for a check
            Outcome::CheckBody(_) => {
                prop_assert_eq!(method.as_slice(), b"POST");
                prop_assert!(h.reply.borrow().is_none());
            }
        }
    }
}
