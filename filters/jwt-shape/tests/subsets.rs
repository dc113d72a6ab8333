//! Electric subset requests through the engine and the test host: `subset__*` query parameters
//! on GET, JSON bodies on `POST /v1/shape` (the body phase), the token's `subsets` grant and its
//! column restriction.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::TestHost;
use jsonwebtoken::{encode, EncodingKey, Header};
use jwt_shape::config::{Config, ProcessEnv};
use jwt_shape::engine::{
    on_request, on_request_body, BodyCheck, BodyOutcome, Outcome, MAX_BODY_BYTES,
};
use jwt_shape::state::Shared;
use serde_json::{json, Value};

const SECRET: &str = "engine-test-secret-0123456789abcdef";
const NOW: f64 = 1_800_000_000.0;

fn config() -> Config {
    Config::parse(
        json!({
            "providers": {"p": {"hmac": {"secret": SECRET}, "issuer": "iss"}},
            "rules": [
                {"match": {"path": "/v1/shape"}, "provider": "p", "bind_shape": true},
                {"match": {"prefix": "/api"}, "provider": "p"}
            ],
            "shape": {"electric_secret": "es"}
        })
        .to_string()
        .as_bytes(),
        &ProcessEnv,
    )
    .unwrap()
}

fn token(shape: Value) -> String {
    encode(
        &Header::default(),
        &json!({"iss": "iss", "sub": "u1", "exp": NOW + 60.0, "shape": shape}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token for `items` restricted to `id, title` that allows subsets.
fn subsets_token() -> String {
    token(json!({"table": "items", "columns": ["id", "title"], "subsets": true}))
}

fn request(method: &str, path: &str, token: &str) -> TestHost {
    TestHost::with_headers(&[
        (":method", method),
        (":path", path),
        ("authorization", &format!("Bearer {token}")),
    ])
}

const SHAPE: &str = "/v1/shape?table=items&columns=id,title&offset=-1";

fn get(query: &str, token: &str) -> (Outcome, TestHost) {
    let cfg = config();
    let state = Shared::<()>::new(&cfg);
    let h = request("GET", &format!("{SHAPE}&{query}"), token);
    let out = on_request(&cfg, &state, &h, &h, NOW, true);
    (out, h)
}

fn status(h: &TestHost) -> (u32, String) {
    let reply = h.reply.borrow().clone().expect("a local reply");
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    (
        reply.status,
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn get_subsets_need_the_grant_and_granted_columns() {
    // granted columns, every subset parameter: through, the query untouched (plus the secret)
    let q = "subset__where=%22id%22+%3D+%241&subset__params=%7B%221%22%3A%2242%22%7D&subset__order_by=title+DESC&subset__limit=10&subset__offset=0";
    let (out, h) = get(q, &subsets_token());
    assert_eq!(out, Outcome::Allowed { vary: true });
    assert_eq!(h.header(":path").unwrap(), format!("{SHAPE}&{q}&secret=es"));
    assert_eq!(h.body_reads.get(), 0, "a GET never reads the body");

    // no `subsets` in the token: refused, whatever the subset says
    let plain = token(json!({"table": "items", "columns": ["id", "title"]}));
    for q in [
        "subset__where=id+%3D+1",
        "subset__limit=1&subset__order_by=id",
    ] {
        let (out, h) = get(q, &plain);
        assert_eq!(out, Outcome::Denied, "{q}");
        assert_eq!(
            status(&h),
            (403, "token does not allow subset requests".into())
        );
        assert_eq!(
            h.counter("edgeguard_jwt_shape.denied.subset_not_allowed"),
            1
        );
        let reply = h.reply.borrow().clone().unwrap();
        assert!(reply
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope"));
    }
    // ... and a request without subset parameters is not a subset request
    let (out, _) = get("live=false", &plain);
    assert_eq!(out, Outcome::Allowed { vary: true });

    // hidden columns, in where and order_by, however written
    for (q, column) in [
        ("subset__where=salary+%3E+100000", "salary"),
        ("subset__where=id+%3D+1+OR+%22Salary%22+%3E+1", "Salary"),
        ("subset__order_by=salary+DESC&subset__limit=1", "salary"),
        ("subset__where=lower(secret)+%3D+%27x%27", "secret"),
    ] {
        let (out, h) = get(q, &subsets_token());
        assert_eq!(out, Outcome::Denied, "{q}");
        let (code, msg) = status(&h);
        assert_eq!(code, 403, "{q}");
        assert!(msg.contains(&format!("column '{column}'")), "{q}: {msg}");
        assert_eq!(h.counter("edgeguard_jwt_shape.denied.subset_column"), 1);
    }
    // what the reader does not understand: refused (fail closed)
    for q in [
        "subset__where=id+%3D+1+--+x",
        "subset__where=id+%3D+(SELECT+1)",
        "subset__where=id+%3D+%24%24x%24%24",
        "subset__where=items.salary+%3E+1",
    ] {
        let (out, h) = get(q, &subsets_token());
        assert_eq!(out, Outcome::Denied, "{q}");
        assert_eq!(status(&h).0, 403, "{q}");
        assert_eq!(
            h.counter("edgeguard_jwt_shape.denied.subset_unsupported"),
            1
        );
    }
    // malformed subset parameters: 400
    for (q, msg) in [
        (
            "subset__where=id&subset__where=title",
            "'subset__where' is given more than once",
        ),
        ("subset__limit=-1", "invalid parameter 'subset__limit'"),
        ("subset__wh%65re=x", "must not be percent-encoded"),
        (
            "subset[where]=salary",
            "unknown subset parameter 'subset[where]'",
        ),
        ("subset__columns=salary", "unknown subset parameter"),
        ("subset__params=nope", "invalid parameter 'subset__params'"),
    ] {
        let (out, h) = get(q, &subsets_token());
        assert_eq!(out, Outcome::Denied, "{q}");
        let (code, m) = status(&h);
        assert_eq!(code, 400, "{q}");
        assert!(m.contains(msg), "{q}: {m}");
        assert_eq!(h.counter("edgeguard_jwt_shape.denied.bad_query"), 1);
    }
}

#[test]
fn tokens_without_a_column_restriction_allow_any_subset() {
    let all = token(json!({"table": "items", "subsets": true}));
    let cfg = config();
    let state = Shared::<()>::new(&cfg);
    let h = request(
        "GET",
        "/v1/shape?table=items&offset=-1&subset__where=salary+%3E+1&subset__order_by=salary",
        &all,
    );
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
        Outcome::Allowed { vary: true }
    );
    // queryable_columns, when the token has it, is the allow-list (as in Electric)
    let q = token(
        json!({"table": "items", "columns": ["id"], "queryable_columns": ["id", "org"], "subsets": true}),
    );
    let ok = "/v1/shape?table=items&columns=id&queryable_columns=id,org&offset=-1&subset__where=org+%3D+1";
    let h = request("GET", ok, &q);
    assert_eq!(
        on_request(&cfg, &state, &h, &h, NOW, true),
        Outcome::Allowed { vary: true }
    );
    let h = request("GET", &ok.replace("org+%3D", "salary+%3D"), &q);
    assert_eq!(on_request(&cfg, &state, &h, &h, NOW, true), Outcome::Denied);
    assert_eq!(status(&h).0, 403);
    // a claim whose `subsets` is not a boolean covers nothing
    let bad = token(json!({"table": "items", "subsets": "yes"}));
    let h = request("GET", "/v1/shape?table=items", &bad);
    assert_eq!(on_request(&cfg, &state, &h, &h, NOW, true), Outcome::Denied);
    let (code, msg) = status(&h);
    assert_eq!(code, 403);
    assert!(msg.contains("'subsets' is invalid"), "{msg}");
}

/// A POST to the shape route: the headers pass and ask for the body.
fn post(token: &str, body: &[u8]) -> (BodyCheck, TestHost) {
    let cfg = config();
    let state = Shared::<()>::new(&cfg);
    let h = request("POST", SHAPE, token).with_body(body);
    match on_request(&cfg, &state, &h, &h, NOW, true) {
        Outcome::CheckBody(check) => {
            assert!(h.reply.borrow().is_none());
            assert_eq!(h.body_reads.get(), 0, "the headers phase reads no body");
            assert_eq!(
                h.header(":path").unwrap(),
                format!("{SHAPE}&secret=es"),
                "the headers are rewritten before the body is checked"
            );
            assert_eq!(h.counter("edgeguard_jwt_shape.allowed"), 0);
            (check, h)
        }
        other => panic!("expected CheckBody, got {other:?}"),
    }
}

#[test]
fn post_bodies_are_checked_like_query_parameters() {
    let t = subsets_token();
    // the TypeScript client's body: compiled SQL next to the structured form
    let body = json!({"where": "\"title\" = $1", "params": {"1": "a"}, "limit": 2, "offset": 0,
        "order_by": "\"id\" DESC", "where_expr": {"type": "func", "name": "eq",
        "args": [{"type": "ref", "column": "title"}, {"type": "val", "paramIndex": 1}]},
        "order_by_expr": [{"column": "id", "direction": "desc"}]})
    .to_string();
    let (check, h) = post(&t, body.as_bytes());
    let n = body.len();
    // chunks before the end only buffer (nothing read)
    assert_eq!(
        on_request_body(&h, &h, &check, n / 2, false),
        BodyOutcome::Buffer
    );
    assert_eq!(h.body_reads.get(), 0);
    assert_eq!(
        on_request_body(&h, &h, &check, n, true),
        BodyOutcome::Allowed
    );
    assert!(h.reply.borrow().is_none());
    assert_eq!(h.counter("edgeguard_jwt_shape.allowed"), 1);

    let cases: Vec<(Value, u32, &str)> = vec![
        (json!({"where": "salary > 1"}), 403, "column 'salary'"),
        (json!({"order_by": "\"Secret\""}), 403, "column 'Secret'"),
        (
            json!({"where_expr": {"type": "ref", "column": "salary"}}),
            403,
            "column 'salary'",
        ),
        (
            json!({"order_by_expr": [{"column": "salary"}]}),
            403,
            "column 'salary'",
        ),
        (json!({"where": "id = 1 /* x */"}), 403, "comments"),
        (
            json!({"table": "secrets"}),
            400,
            "key 'table' is not a subset parameter",
        ),
        (json!({"columns": "id,salary"}), 400, "key 'columns'"),
        (json!({"secret": "guess"}), 400, "key 'secret'"),
        (
            json!({"subset": {"where": "salary > 1"}}),
            400,
            "key 'subset'",
        ),
        (json!({"limit": -1}), 400, "invalid parameter 'limit'"),
        (json!({"where": 1}), 400, "invalid parameter 'where'"),
        (json!([1, 2]), 400, "must be a JSON object"),
    ];
    for (body, code, msg) in cases {
        let b = body.to_string();
        let (check, h) = post(&t, b.as_bytes());
        assert_eq!(
            on_request_body(&h, &h, &check, b.len(), true),
            BodyOutcome::Denied,
            "{b}"
        );
        let (c, m) = status(&h);
        assert_eq!(c, code, "{b}: {m}");
        assert!(m.contains(msg), "{b}: {m}");
    }
    for raw in [
        &b"{"[..],
        b"not json",
        b" ",
        b"\xff",
        br#"{"where": "a", "where": "b"}"#,
    ] {
        let (check, h) = post(&t, raw);
        assert_eq!(
            on_request_body(&h, &h, &check, raw.len(), true),
            BodyOutcome::Denied
        );
        let (c, m) = status(&h);
        assert_eq!(c, 400);
        assert!(m.contains("request body is not valid JSON"), "{m}");
        assert_eq!(h.counter("edgeguard_jwt_shape.denied.bad_body"), 1);
    }
}

#[test]
fn post_body_limits_and_failures() {
    let t = subsets_token();
    // too large: refused as soon as the size says so, without reading
    let (check, h) = post(&t, b"{}");
    assert_eq!(
        on_request_body(&h, &h, &check, MAX_BODY_BYTES + 1, false),
        BodyOutcome::Denied
    );
    assert_eq!(status(&h).0, 413);
    assert_eq!(h.body_reads.get(), 0);
    assert_eq!(h.counter("edgeguard_jwt_shape.denied.body_too_large"), 1);
    // exactly the limit is read (and here refused as JSON, which it is not)
    let big = vec![b' '; MAX_BODY_BYTES];
    let (check, h) = post(&t, &big);
    assert_eq!(
        on_request_body(&h, &h, &check, MAX_BODY_BYTES, true),
        BodyOutcome::Denied
    );
    assert_eq!(status(&h).0, 400);
    // a 60 KiB body of granted ids passes
    let ids: Vec<String> = (0..9000).map(|i| i.to_string()).collect();
    let body = json!({"where": format!("id IN ({})", ids.join(","))}).to_string();
    assert!(body.len() > 40_000 && body.len() < MAX_BODY_BYTES);
    let (check, h) = post(&t, body.as_bytes());
    assert_eq!(
        on_request_body(&h, &h, &check, body.len(), true),
        BodyOutcome::Allowed
    );
    // no body at all (end of stream on the headers), or `{}`: not a subset request
    let plain = token(json!({"table": "items", "columns": ["id", "title"]}));
    for b in [&b""[..], b"{}"] {
        let (check, h) = post(&plain, b);
        assert_eq!(
            on_request_body(&h, &h, &check, b.len(), true),
            BodyOutcome::Allowed
        );
    }
    // ... but any subset key makes one, which this token does not allow
    let (check, h) = post(&plain, br#"{"limit": 1}"#);
    assert_eq!(
        on_request_body(&h, &h, &check, 12, true),
        BodyOutcome::Denied
    );
    assert_eq!(
        status(&h),
        (403, "token does not allow subset requests".into())
    );
    // the host cannot give the body, or gives less than it said it holds: never decided on
    let (check, h) = post(&t, b"{}");
    *h.body.borrow_mut() = None;
    assert_eq!(
        on_request_body(&h, &h, &check, 2, true),
        BodyOutcome::Denied
    );
    assert_eq!(status(&h).0, 500);
    let (check, h) = post(&t, b"{}");
    assert_eq!(
        on_request_body(&h, &h, &check, 10, true),
        BodyOutcome::Denied
    );
    assert_eq!(status(&h).0, 500);
    assert_eq!(h.counter("edgeguard_jwt_shape.denied.body_unreadable"), 1);
}

#[test]
fn only_post_to_a_bound_route_reads_a_body() {
    let cfg = config();
    let state = Shared::<()>::new(&cfg);
    let t = subsets_token();
    for (method, path) in [
        ("GET", SHAPE),
        ("DELETE", SHAPE),
        ("HEAD", SHAPE),
        ("POST", "/api/things"),
    ] {
        let h = request(method, path, &t).with_body(br#"{"table": "secrets"}"#);
        assert_eq!(
            on_request(&cfg, &state, &h, &h, NOW, true),
            Outcome::Allowed { vary: true },
            "{method} {path}"
        );
        assert_eq!(h.body_reads.get(), 0);
    }
    // a POST whose token fails never gets to its body
    let h = request("POST", SHAPE, "nope").with_body(b"{}");
    assert_eq!(on_request(&cfg, &state, &h, &h, NOW, true), Outcome::Denied);
    assert_eq!(status(&h).0, 401);
    // a POST with a hidden column in its *query* subset is refused on the headers
    let h = request("POST", &format!("{SHAPE}&subset__where=salary+%3E+1"), &t);
    assert_eq!(on_request(&cfg, &state, &h, &h, NOW, true), Outcome::Denied);
    assert_eq!(status(&h).0, 403);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the body (bytes, cut JSON, keys), the body phase answers once and never
        /// lets a body through that holds anything but subset keys.
        #[test]
        fn arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..160), json_ish in "[{}\\[\\]\":,a-z0-9 $=<>']{0,80}") {
            let t = subsets_token();
            for b in [body.as_slice(), json_ish.as_bytes()] {
                let (check, h) = post(&t, b);
                let out = on_request_body(&h, &h, &check, b.len(), true);
                match out {
                    BodyOutcome::Allowed => {
                        prop_assert!(h.reply.borrow().is_none());
                        let v: Value = serde_json::from_slice(b).unwrap_or(json!({}));
                        let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                        prop_assert!(keys.iter().all(|k| edgeguard_verdict::subset::FIELDS.contains(&k.as_str())), "{keys:?}");
                    }
                    BodyOutcome::Denied => prop_assert!(h.reply.borrow().is_some()),
                    BodyOutcome::Buffer => prop_assert!(false, "buffering at the end of the stream"),
                }
            }
        }
    }
}
