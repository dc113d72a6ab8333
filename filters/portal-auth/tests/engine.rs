//! The portal-auth request path against the test host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::TestHost;
use edgeguard_verdict::portal::{key_digest, AppAuth, PortalApp};
use edgeguard_verdict::portal_wire::{AppChange, Update, UsageChange};
use portal_auth::config::{Config, Env};
use portal_auth::engine::{on_request, Copy, Outcome};

fn config(extra: &str) -> Config {
    Config::parse(
        format!(r#"{{"store": {{"cluster": "authz"}}{extra}}}"#).as_bytes(),
        &TokenEnv,
    )
    .unwrap()
}

/// The VM environment: just the store token.
struct TokenEnv;

impl Env for TokenEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "EDGEGUARD_STORE_TOKEN").then(|| "store-token-for-engine-tests-0123456789".into())
    }
}

fn copy() -> Copy {
    let mut c = Copy::default();
    let app = |acc: &str, plan: &str, limit: u64, key: Option<&str>| PortalApp {
        account_id: acc.into(),
        plan: plan.into(),
        auth: key.map_or(AppAuth::Public, |k| AppAuth::ApiKey {
            digest: key_digest(k),
        }),
        monthly_user_limit: limit,
    };
    c.apply(Update {
        from: 0,
        version: 1,
        full: true,
        apps: vec![
            AppChange {
                id: "free".into(),
                app: Some(app("acc1", "PLAN_FREE", 0, None)),
            },
            AppChange {
                id: "keyed".into(),
                app: Some(app("acc2", "PLAN_UNLIMITED", 40_000_000, Some("k1"))),
            },
            AppChange {
                id: "over".into(),
                app: Some(app("acc3", "PLAN_FREE", 0, None)),
            },
        ],
        usage: vec![UsageChange {
            account_id: "acc3".into(),
            relays: Some(2_000_000),
        }],
        ..Default::default()
    })
    .unwrap();
    c
}

fn host(path: &str, extra: &[(&str, &str)]) -> TestHost {
    let mut h = vec![(":method", "POST"), (":path", path)];
    h.extend_from_slice(extra);
    TestHost::with_headers(&h)
}

#[test]
fn allowed_requests_are_stamped_and_spoofs_removed() {
    let cfg = config(r#", "rate_limit_headers": true"#);
    let c = copy();
    let h = host(
        "/v1/keyed?x=1",
        &[
            ("authorization", "Bearer k1"),
            ("portal-account-id", "evil"),
            ("rl-plan-free", "evil"),
            ("portal-x", "y"),
        ],
    );
    assert_eq!(on_request(&cfg, &c, &h, &h), Outcome::Allowed);
    assert_eq!(h.header("portal-application-id").as_deref(), Some("keyed"));
    assert_eq!(h.header("portal-account-id").as_deref(), Some("acc2"));
    assert_eq!(h.header("rl-user-limit-40").as_deref(), Some("acc2"));
    assert_eq!(h.header("rl-plan-free"), None);
    assert_eq!(h.header("portal-x"), None);
    assert_eq!(h.counter("edgeguard_portal_auth.allowed"), 1);
}

#[test]
fn denials_match_peas() {
    let cfg = config("");
    let c = copy();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/x",
            vec![],
            400,
            "portal app ID not provided in header or path",
        ),
        ("/v1/nope", vec![], 404, "portal app not found"),
        (
            "/v1/keyed",
            vec![("authorization", "Bearer wrong")],
            401,
            "unauthorized",
        ),
        ("/v1/over", vec![], 429, "This account is rate limited."),
    ];
    for (path, hdrs, status, msg) in cases {
        let h = host(path, &hdrs);
        assert_eq!(on_request(&cfg, &c, &h, &h), Outcome::Denied);
        let r = h.reply.borrow().clone().unwrap();
        assert_eq!(r.status, status, "{path}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["code"], status);
        assert!(
            v["message"].as_str().unwrap().starts_with(msg),
            "{path}: {}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // the header wins over the path; duplicate headers are joined as ext_authz joins them
    let h = host("/v1/nope", &[("portal-application-id", "free")]);
    assert_eq!(on_request(&cfg, &c, &h, &h), Outcome::Allowed);
}

#[test]
fn store_never_loaded() {
    let h = host("/v1/free", &[("rl-plan-free", "spoof")]);
    assert_eq!(
        on_request(&config(""), &Copy::default(), &h, &h),
        Outcome::Denied
    );
    assert_eq!(h.reply.borrow().as_ref().unwrap().status, 503);
    let h = host("/v1/free", &[("rl-plan-free", "spoof")]);
    assert_eq!(
        on_request(&config(r#", "fail_open": true"#), &Copy::default(), &h, &h),
        Outcome::FailedOpen
    );
    assert_eq!(h.header("rl-plan-free"), None);
    assert!(h.reply.borrow().is_none());
}
