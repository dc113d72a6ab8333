//! Hostile requests against portal-auth's request path (test host): header values that are
//! not UTF-8 in every header it reads, headers other filters own, and a property test with
//! arbitrary header bytes and paths. Every request ends allowed or denied, never a panic, and
//! nothing ever opens an app more than its key allows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::TestHost;
use edgeguard_verdict::portal::{key_digest, AppAuth, PortalApp};
use edgeguard_verdict::portal_wire::{AppChange, Update};
use portal_auth::config::{Config, Env};
use portal_auth::engine::{on_request, Context, Copy, Outcome};
use portal_auth::meter::Meter;
use proptest::prelude::*;

struct TokenEnv;

impl Env for TokenEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "EDGEGUARD_STORE_TOKEN").then(|| "store-token-for-hostile-tests-0123456789".into())
    }
}

fn config() -> Config {
    Config::parse(
        br#"{"store": {"cluster": "authz"}, "rate_limit_headers": true,
             "strip_request_headers": ["x-edgeguard-*"],
             "metering": {"enabled": true}, "quota_headers": "all"}"#,
        &TokenEnv,
    )
    .unwrap()
}

fn copy() -> Copy {
    let mut c = Copy::default();
    let app = |key: Option<&str>| PortalApp {
        account_id: "acc".into(),
        plan: "PLAN_FREE".into(),
        auth: key.map_or(AppAuth::Public, |k| AppAuth::ApiKey {
            digest: key_digest(k),
        }),
        monthly_user_limit: 0,
        client_auth: Default::default(),
    };
    c.apply(Update {
        from: 0,
        version: 1,
        full: true,
        apps: vec![
            AppChange {
                id: "pub".into(),
                app: Some(app(None)),
            },
            AppChange {
                id: "keyed".into(),
                app: Some(app(Some("k1"))),
            },
        ],
        usage: vec![],
        ..Default::default()
    })
    .unwrap();
    c
}

fn run(headers: &[(&str, &[u8])]) -> (Outcome, TestHost) {
    let h = TestHost::with_raw_headers(headers);
    let meter = Meter::default();
    let cx = Context {
        meter: &meter,
        now: || 1_798_761_500,
    };
    let out = on_request(&config(), &copy(), &h, &h, &cx).outcome;
    // exactly the allowed requests are metered
    assert_eq!(meter.total(), u64::from(out == Outcome::Allowed));
    (out, h)
}

fn status(h: &TestHost) -> Option<u32> {
    h.reply.borrow().as_ref().map(|r| r.status)
}

#[test]
fn values_that_are_not_utf8_count_as_absent() {
    // an app id that is not UTF-8: the path's id decides
    let (out, h) = run(&[
        (":path", b"/v1/pub"),
        ("portal-application-id", b"keyed\xe9"),
        ("user-agent", b"caf\xe9/1.0"),
    ]);
    assert_eq!(out, Outcome::Allowed);
    assert_eq!(h.header("portal-application-id").as_deref(), Some("pub"));
    // a key that is not UTF-8 is no key: 401 on a keyed app
    let (out, h) = run(&[(":path", b"/v1/keyed"), ("authorization", b"k1\xff")]);
    assert_eq!(out, Outcome::Denied);
    assert_eq!(status(&h), Some(401));
    // ... and changes nothing on a public one
    let (out, _) = run(&[(":path", b"/v1/pub"), ("authorization", b"\xff\xfe")]);
    assert_eq!(out, Outcome::Allowed);
    // a path that is not UTF-8 names no app
    let (out, h) = run(&[(":path", b"/v1/caf\xe9")]);
    assert_eq!(out, Outcome::Denied);
    assert_eq!(status(&h), Some(400));
}

#[test]
fn headers_other_filters_own_are_stripped() {
    let (out, h) = run(&[
        (":path", b"/v1/pub"),
        ("x-edgeguard-sub", b"admin"),
        ("X-Edgeguard-Table", b"\xff"),
        ("rl-plan-free", b"spoof"),
    ]);
    assert_eq!(out, Outcome::Allowed);
    assert_eq!(h.header("x-edgeguard-sub"), None);
    assert_eq!(h.header("x-edgeguard-table"), None);
    assert_eq!(h.header("rl-plan-free").as_deref(), Some("acc"));
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_string()),
        Just("portal-application-id".to_string()),
        Just("portal-account-id".to_string()),
        Just("rl-plan-free".to_string()),
        Just("x-edgeguard-sub".to_string()),
        "[a-z-]{1,12}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32),
        Just(b"k1".to_vec()),
        Just(b"Bearer k1".to_vec()),
        Just(b"keyed".to_vec()),
        Just(b"pub".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_in_a_decision(
        path in prop_oneof![
            Just(b"/v1/keyed".to_vec()),
            Just(b"/v1/pub".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ],
        headers in proptest::collection::vec((header_name(), header_value()), 0..6),
    ) {
        let mut raw: Vec<(&str, &[u8])> = vec![(":method", b"POST"), (":path", &path)];
        raw.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let (out, h) = run(&raw);
        match out {
            Outcome::Denied => {
                let status = status(&h).unwrap_or(0);
                prop_assert!([400, 401, 404, 429].contains(&status), "status {status}");
            }
            Outcome::Allowed => {
                prop_assert!(h.reply.borrow().is_none());
                let app = h.header("portal-application-id").unwrap_or_default();
                prop_assert!(app == "pub" || app == "keyed", "{app}");
                if app == "keyed" {
                    // only the right key opens the keyed app
                    let sent: Vec<&Vec<u8>> = headers
                        .iter()
                        .filter(|(k, _)| k == "authorization")
                        .map(|(_, v)| v)
                        .collect();
                    prop_assert!(sent.len() == 1 && (sent[0] == b"k1" || sent[0] == b"Bearer k1"));
                }
                let account = h.header("portal-account-id");
                prop_assert_eq!(account.as_deref(), Some("acc"));
                prop_assert!(h.header("x-edgeguard-sub").is_none());
            }
            Outcome::FailedOpen => prop_assert!(false, "the store is loaded"),
        }
    }
}
