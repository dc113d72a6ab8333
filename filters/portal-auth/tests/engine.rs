//! The portal-auth request path against the test host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::TestHost;
use edgeguard_verdict::portal::{key_digest, AppAuth, PortalApp};
use edgeguard_verdict::portal_wire::{AppChange, Update, UsageChange};
use portal_auth::config::{Config, Env};
use portal_auth::engine::{on_request, on_response, Context, Copy, Decision, Outcome};
use portal_auth::meter::Meter;

/// 2027-01-01T00:00:00Z minus 100 s: the quota resets in 100 s, the month is 31 days.
const NOW: i64 = 1_798_761_600 - 100;

/// Decides with `meter`, the clock at [`NOW`].
fn decide_with(cfg: &Config, c: &Copy, h: &TestHost, meter: &Meter) -> Decision {
    let cx = Context { meter, now: || NOW };
    on_request(cfg, c, h, h, &cx)
}

fn decide(cfg: &Config, c: &Copy, h: &TestHost) -> Outcome {
    decide_with(cfg, c, h, &Meter::default()).outcome
}

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
        client_auth: Default::default(),
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
            AppChange {
                id: "plain".into(),
                app: Some(app("acc4", "PLAN_UNLIMITED", 0, None)),
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
    assert_eq!(decide(&cfg, &c, &h), Outcome::Allowed);
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
        assert_eq!(decide(&cfg, &c, &h), Outcome::Denied);
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
    assert_eq!(decide(&cfg, &c, &h), Outcome::Allowed);
}

#[test]
fn store_never_loaded() {
    let h = host("/v1/free", &[("rl-plan-free", "spoof")]);
    assert_eq!(decide(&config(""), &Copy::default(), &h), Outcome::Denied);
    assert_eq!(h.reply.borrow().as_ref().unwrap().status, 503);
    let h = host("/v1/free", &[("rl-plan-free", "spoof")]);
    assert_eq!(
        decide(&config(r#", "fail_open": true"#), &Copy::default(), &h),
        Outcome::FailedOpen
    );
    assert_eq!(h.header("rl-plan-free"), None);
    assert!(h.reply.borrow().is_none());
}

fn drained(meter: &Meter) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = meter
        .drain(usize::MAX)
        .into_iter()
        .map(|e| (e.app_id, e.account_id, e.relays))
        .collect();
    v.sort();
    v
}

#[test]
fn metering_counts_only_allowed_requests() {
    let cfg = config(r#", "metering": {"enabled": true}"#);
    let c = copy();
    let meter = Meter::default();
    let run = |path: &str, extra: &[(&str, &str)]| {
        let h = host(path, extra);
        decide_with(&cfg, &c, &h, &meter).outcome
    };
    assert_eq!(run("/v1/free", &[]), Outcome::Allowed);
    assert_eq!(run("/v1/free/x", &[]), Outcome::Allowed);
    assert_eq!(
        run("/v1/keyed", &[("authorization", "Bearer k1")]),
        Outcome::Allowed
    );
    // denials count nothing: unauthorized, rate limited, unknown app, no app id
    assert_eq!(
        run("/v1/keyed", &[("authorization", "Bearer nope")]),
        Outcome::Denied
    );
    assert_eq!(run("/v1/over", &[]), Outcome::Denied);
    assert_eq!(run("/v1/nope", &[]), Outcome::Denied);
    assert_eq!(run("/x", &[]), Outcome::Denied);
    // failed open (store never loaded) counts nothing either
    let open = config(r#", "fail_open": true, "metering": {"enabled": true}"#);
    let h = host("/v1/free", &[]);
    assert_eq!(
        decide_with(&open, &Copy::default(), &h, &meter).outcome,
        Outcome::FailedOpen
    );
    assert_eq!(meter.total(), 3);
    assert_eq!(
        drained(&meter),
        vec![
            ("free".into(), "acc1".into(), 2),
            ("keyed".into(), "acc2".into(), 1)
        ]
    );

    // metering off: allowed requests are not counted
    let off = config("");
    let h = host("/v1/free", &[]);
    assert_eq!(decide_with(&off, &c, &h, &meter).outcome, Outcome::Allowed);
    assert_eq!(meter.total(), 3);
}

#[test]
fn rate_limited_answers_carry_retry_after_and_ratelimit_headers() {
    for extra in ["", r#", "quota_headers": "all""#] {
        let cfg = config(extra);
        let c = copy();
        let h = host("/v1/over", &[]);
        let d = decide_with(&cfg, &c, &h, &Meter::default());
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(d.response_headers.is_empty());
        let r = h.reply.borrow().clone().unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("retry-after"), Some("100"));
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"monthly\";q=1000000;w=2678400")
        );
        assert_eq!(r.header("ratelimit"), Some("\"monthly\";r=0;t=100"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["code"], 429);
    }
    // other denials carry none of them
    let h = host("/v1/keyed", &[("authorization", "Bearer nope")]);
    decide(&config(""), &copy(), &h);
    let r = h.reply.borrow().clone().unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.header("ratelimit"), None);
}

#[test]
fn quota_headers_all_go_on_the_response_of_allowed_requests() {
    let all = config(r#", "quota_headers": "all""#);
    let c = copy();
    let clock_reads = std::cell::Cell::new(0);
    let meter = Meter::default();
    let run = |cfg: &Config, path: &str, extra: &[(&str, &str)]| {
        let h = host(path, extra);
        let cx = Context {
            meter: &meter,
            now: || {
                clock_reads.set(clock_reads.get() + 1);
                NOW
            },
        };
        let d = on_request(cfg, &c, &h, &h, &cx);
        (d, h)
    };

    let (d, h) = run(&all, "/v1/free", &[]);
    assert_eq!(d.outcome, Outcome::Allowed);
    // on the response, not on the request to the upstream
    assert_eq!(h.header("ratelimit"), None);
    assert_eq!(h.header("ratelimit-policy"), None);
    assert_eq!(h.response("ratelimit"), None);
    on_response(&h, &d.response_headers);
    assert_eq!(
        h.response("ratelimit-policy").as_deref(),
        Some("\"monthly\";q=1000000;w=2678400")
    );
    assert_eq!(
        h.response("ratelimit").as_deref(),
        Some("\"monthly\";r=1000000;t=100")
    );
    assert_eq!(h.response("retry-after"), None);
    assert_eq!(clock_reads.get(), 1);

    let (d, h) = run(&all, "/v1/keyed", &[("authorization", "Bearer k1")]);
    on_response(&h, &d.response_headers);
    assert_eq!(
        h.response("ratelimit-policy").as_deref(),
        Some("\"monthly\";q=40000000;w=2678400")
    );

    // no monthly limit: no headers, and the clock is not read
    let (d, _) = run(&all, "/v1/plain", &[]);
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(d.response_headers.is_empty());
    assert_eq!(clock_reads.get(), 2);

    // the default (denied): allowed answers carry nothing, and the clock is not read
    let (d, _) = run(&config(""), "/v1/free", &[]);
    assert_eq!(d.outcome, Outcome::Allowed);
    assert!(d.response_headers.is_empty());
    assert_eq!(clock_reads.get(), 2);
}

/// A copy with a certificate-only app and an either app of `acc_dev`, a key app of it, and a
/// device (certificate `[7; 32]`, valid until `NOW + 60`) of that account.
fn device_copy() -> Copy {
    use edgeguard_verdict::device::{ClientAuth, Device};
    use edgeguard_verdict::portal_wire::DeviceChange;
    let app = |client_auth: ClientAuth, key: Option<&str>| PortalApp {
        account_id: "acc_dev".into(),
        plan: "PLAN_FREE".into(),
        auth: key.map_or(AppAuth::MissingKey, |k| AppAuth::ApiKey {
            digest: key_digest(k),
        }),
        monthly_user_limit: 0,
        client_auth,
    };
    let mut c = Copy::default();
    c.apply(Update {
        version: 1,
        full: true,
        apps: vec![
            AppChange {
                id: "cert".into(),
                app: Some(app(ClientAuth::Certificate, None)),
            },
            AppChange {
                id: "either".into(),
                app: Some(app(ClientAuth::Either, Some("k"))),
            },
            AppChange {
                id: "key".into(),
                app: Some(app(ClientAuth::Key, Some("k"))),
            },
        ],
        devices: vec![DeviceChange {
            fingerprint: [7; 32],
            device: Some(Device {
                id: "dev_1".into(),
                account_id: "acc_dev".into(),
                not_after: NOW + 60,
            }),
        }],
        parts: 1,
        ..Default::default()
    })
    .unwrap();
    c
}

#[test]
fn devices_are_stamped_metered_and_refused() {
    let cfg = config(r#", "metering": {"enabled": true}"#);
    let c = device_copy();
    let meter = Meter::default();

    // the device's certificate opens the certificate app: stamped, counted, seen
    let h = host("/v1/cert", &[("portal-device-id", "forged")]).with_peer_certificate([7; 32]);
    assert_eq!(decide_with(&cfg, &c, &h, &meter).outcome, Outcome::Allowed);
    assert_eq!(h.header("portal-device-id").as_deref(), Some("dev_1"));
    assert_eq!(h.header("portal-account-id").as_deref(), Some("acc_dev"));
    let seen = meter.drain_seen(10);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].device_id.as_str(), seen[0].last_seen),
        ("dev_1", NOW)
    );
    assert_eq!(meter.total(), 1);

    // unknown certificate, none, a key: 401, the forged device header never reaches upstream
    for h in [
        host("/v1/cert", &[("portal-device-id", "forged")]).with_peer_certificate([8; 32]),
        host("/v1/cert", &[("authorization", "k")]),
    ] {
        assert_eq!(decide_with(&cfg, &c, &h, &meter).outcome, Outcome::Denied);
        assert_eq!(h.reply.borrow().as_ref().unwrap().status, 401);
    }
    assert!(
        meter.drain_seen(10).is_empty(),
        "refused devices are not seen"
    );

    // either: the key does it without a certificate (no device header)
    let h = host("/v1/either", &[("authorization", "k")]);
    assert_eq!(decide_with(&cfg, &c, &h, &meter).outcome, Outcome::Allowed);
    assert_eq!(h.header("portal-device-id"), None);

    // a key app never asks for the certificate (no host call on the hot path)
    let h = host("/v1/key", &[("authorization", "k")]).with_peer_certificate([7; 32]);
    assert_eq!(decide_with(&cfg, &c, &h, &meter).outcome, Outcome::Allowed);
    assert_eq!(h.peer_certificate_reads.get(), 0);
    assert_eq!(h.header("portal-device-id"), None);

    // expired: once the clock passes the certificate's not_after
    let h = host("/v1/cert", &[]).with_peer_certificate([7; 32]);
    let cx = Context {
        meter: &meter,
        now: || NOW + 60,
    };
    assert_eq!(on_request(&cfg, &c, &h, &h, &cx).outcome, Outcome::Denied);
    assert_eq!(h.reply.borrow().as_ref().unwrap().status, 401);
    assert!(h
        .logs
        .borrow()
        .iter()
        .any(|(_, l)| l.contains("device certificate expired")));
}
