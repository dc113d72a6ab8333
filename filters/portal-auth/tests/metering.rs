//! Usage reporting in the background, against the test background owner: what a report
//! carries, when it is resent unchanged, what an acknowledgement must say to be taken, what
//! is logged. The same code runs from the proxy-wasm root context and the native filter
//! configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use edgeguard_host::{Call, Level, TestBackground, TestHost};
use edgeguard_verdict::portal_wire::{UsageAck, UsageReport, USAGE_CONTENT_TYPE};
use portal_auth::config::{Config, Env};
use portal_auth::engine::Copy;
use portal_auth::meter::Meter;
use portal_auth::report::Reporter;
use portal_auth::sync::Sync;

const TOKEN: &str = "store-token-for-metering-tests-0123456789";
const ID: &str = "pa-test";

struct TokenEnv;

impl Env for TokenEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "EDGEGUARD_STORE_TOKEN").then(|| TOKEN.into())
    }
}

fn config(metering: &str) -> Config {
    Config::parse(
        format!(
            r#"{{"store": {{"cluster": "authz_http", "authority": "authz", "timeout_ms": 2000}},
                 "metering": {metering}}}"#
        )
        .as_bytes(),
        &TokenEnv,
    )
    .unwrap()
}

fn enabled() -> Config {
    config(r#"{"enabled": true, "report_interval_ms": 1000}"#)
}

fn count(meter: &Meter, app: &str, account: &str, n: u64) {
    let account: Arc<str> = account.into();
    for _ in 0..n {
        meter.count(app, &account);
    }
}

fn report_of(call: &Call) -> UsageReport {
    UsageReport::decode(&call.body).unwrap()
}

fn entries(r: &UsageReport) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = r
        .entries
        .iter()
        .map(|e| (e.app_id.clone(), e.account_id.clone(), e.relays))
        .collect();
    v.sort();
    v
}

fn ack(reporter: &str, seq: u64) -> Vec<u8> {
    UsageAck {
        reporter: reporter.into(),
        seq,
        applied: true,
    }
    .encode()
}

fn one_call(bg: &TestBackground) -> Call {
    let mut calls = bg.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.remove(0)
}

#[test]
fn a_report_posts_the_counts_with_the_store_token() {
    let cfg = enabled();
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());

    // nothing counted: nothing sent
    r.tick(&cfg, &meter, &bg, &m, 100.0);
    assert!(bg.take_calls().is_empty());

    count(&meter, "a", "acc1", 3);
    count(&meter, "b", "acc2", 1);
    // the interval runs from the last attempt
    r.tick(&cfg, &meter, &bg, &m, 100.5);
    assert!(bg.take_calls().is_empty());
    r.tick(&cfg, &meter, &bg, &m, 101.0);
    let call = one_call(&bg);
    assert_eq!(call.cluster, "authz_http");
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":path"), Some("/store/v1/usage"));
    assert_eq!(call.header(":authority"), Some("authz"));
    assert_eq!(call.header("content-type"), Some(USAGE_CONTENT_TYPE));
    assert_eq!(
        call.header("content-length"),
        Some(call.body.len().to_string().as_str())
    );
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let report = report_of(&call);
    assert_eq!(report.reporter, ID);
    assert_eq!(report.seq, 1);
    assert_eq!(
        entries(&report),
        vec![
            ("a".into(), "acc1".into(), 3),
            ("b".into(), "acc2".into(), 1)
        ]
    );
    assert_eq!(m.counter("edgeguard_portal_auth.metered_relays"), 4);
    assert_eq!(
        m.gauges
            .borrow()
            .get("edgeguard_portal_auth.relays_pending"),
        Some(&4)
    );
    // the token stays out of the log
    assert!(!bg.logs.borrow().iter().any(|(_, l)| l.contains(TOKEN)));
}

#[test]
fn an_unacknowledged_report_is_resent_unchanged_and_new_counts_wait() {
    let cfg = enabled();
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());
    count(&meter, "a", "acc1", 2);
    r.tick(&cfg, &meter, &bg, &m, 10.0);
    let first = one_call(&bg);
    assert!(r.answer(first.id, Some("503"), Some(b"busy"), &bg, &m));
    assert_eq!(m.counter("edgeguard_portal_auth.usage_reports_failed"), 1);
    assert_eq!(r.unacked_seq(), Some(1));

    // more counts while the report waits
    count(&meter, "a", "acc1", 5);
    count(&meter, "c", "acc3", 1);
    r.tick(&cfg, &meter, &bg, &m, 10.5);
    assert!(bg.take_calls().is_empty(), "not before the interval");
    r.tick(&cfg, &meter, &bg, &m, 11.0);
    let again = one_call(&bg);
    assert_eq!(again.body, first.body, "same seq, same entries");
    assert_eq!(
        m.gauges
            .borrow()
            .get("edgeguard_portal_auth.relays_pending"),
        Some(&8)
    );

    // no answer at all (timeout, reset): kept too
    assert!(r.answer(again.id, None, None, &bg, &m));
    r.tick(&cfg, &meter, &bg, &m, 12.0);
    let third = one_call(&bg);
    assert_eq!(third.body, first.body);

    // acknowledged: forgotten; the next report carries what waited
    assert!(r.answer(third.id, Some("200"), Some(&ack(ID, 1)), &bg, &m));
    assert_eq!(r.unacked_seq(), None);
    assert_eq!(m.counter("edgeguard_portal_auth.usage_reports_acked"), 1);
    assert_eq!(m.counter("edgeguard_portal_auth.relays_acked"), 2);
    r.tick(&cfg, &meter, &bg, &m, 13.0);
    let next = report_of(&one_call(&bg));
    assert_eq!(next.seq, 2);
    assert_eq!(
        entries(&next),
        vec![
            ("a".into(), "acc1".into(), 5),
            ("c".into(), "acc3".into(), 1)
        ]
    );
    assert_eq!(
        m.gauges
            .borrow()
            .get("edgeguard_portal_auth.relays_pending"),
        Some(&6)
    );
    assert_eq!(m.counter("edgeguard_portal_auth.metered_relays"), 8);
}

#[test]
fn an_ack_for_another_seq_or_reporter_or_a_bad_body_is_not_taken() {
    let cfg = enabled();
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());
    count(&meter, "a", "acc1", 1);
    let mut t = 0.0;
    let bad: [Vec<u8>; 4] = [
        ack(ID, 2),
        ack(ID, 0),
        ack("pa-someone-else", 1),
        b"not an ack".to_vec(),
    ];
    let mut body = None;
    for answer in &bad {
        r.tick(&cfg, &meter, &bg, &m, t);
        let call = one_call(&bg);
        if let Some(b) = &body {
            assert_eq!(&call.body, b);
        }
        body = Some(call.body.clone());
        assert!(r.answer(call.id, Some("200"), Some(answer), &bg, &m));
        assert_eq!(r.unacked_seq(), Some(1));
        t += 1.0;
    }
    assert_eq!(m.counter("edgeguard_portal_auth.usage_reports_acked"), 0);
    assert_eq!(m.counter("edgeguard_portal_auth.usage_reports_failed"), 4);
    // only the first failure of the streak is logged
    let warns = bg
        .logs
        .borrow()
        .iter()
        .filter(|(l, _)| *l == Level::Warn)
        .count();
    assert_eq!(warns, 1);
    // the right one is taken
    r.tick(&cfg, &meter, &bg, &m, t);
    let call = one_call(&bg);
    assert!(r.answer(call.id, Some("200"), Some(&ack(ID, 1)), &bg, &m));
    assert_eq!(r.unacked_seq(), None);
    assert_eq!(r.consecutive_failures, 0);
}

#[test]
fn a_404_says_metering_is_off_on_authz_once_then_every_30th() {
    let cfg = enabled();
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());
    count(&meter, "a", "acc1", 1);
    for i in 0..30 {
        r.tick(&cfg, &meter, &bg, &m, f64::from(i));
        let call = one_call(&bg);
        assert!(r.answer(call.id, Some("404"), None, &bg, &m));
    }
    let logs = bg.logs.borrow();
    let off: Vec<_> = logs
        .iter()
        .filter(|(l, m)| *l == Level::Warn && m.contains("metering is off on edgeguard authz"))
        .collect();
    assert_eq!(off.len(), 2, "{logs:?}");
    assert!(off[0].1.contains("failure 1 in a row"));
    assert!(off[1].1.contains("failure 30 in a row"));
    assert_eq!(r.unacked_seq(), Some(1));
}

#[test]
fn answers_are_routed_to_their_owner_and_calls_that_cannot_start_are_kept() {
    let cfg = enabled();
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());
    let mut sync = Sync::default();
    let mut copy = Copy::default();
    count(&meter, "a", "acc1", 1);
    // the same tick starts the store fetch and the report
    sync.tick(&cfg, copy.version, &bg, &m, 0.0);
    r.tick(&cfg, &meter, &bg, &m, 0.0);
    let calls = bg.take_calls();
    assert_eq!(calls.len(), 2);
    let report = calls
        .iter()
        .find(|c| c.header(":method") == Some("POST"))
        .unwrap();
    let fetch = calls
        .iter()
        .find(|c| c.header(":method") == Some("GET"))
        .unwrap();
    assert!(fetch.body.is_empty());
    // the store sync does not take the report's answer; the reporter does not take the fetch's
    assert!(!sync.answer(&mut copy, report.id, Some("200"), None, &bg, &m));
    assert!(r.answer(report.id, Some("200"), Some(&ack(ID, 1)), &bg, &m));
    assert!(!r.answer(fetch.id, Some("304"), None, &bg, &m));

    // Envoy refuses the call: counted as a failure, the report waits for the next interval
    count(&meter, "a", "acc1", 2);
    bg.refuse_calls.set(true);
    r.tick(&cfg, &meter, &bg, &m, 1.0);
    assert_eq!(r.unacked_seq(), Some(2));
    assert_eq!(m.counter("edgeguard_portal_auth.usage_reports_failed"), 1);
    assert!(bg.logged("not acknowledged"));
    bg.refuse_calls.set(false);
    r.tick(&cfg, &meter, &bg, &m, 1.5);
    assert!(bg.take_calls().is_empty());
    r.tick(&cfg, &meter, &bg, &m, 2.0);
    assert_eq!(report_of(&one_call(&bg)).seq, 2);
}

#[test]
fn metering_off_reports_nothing() {
    let cfg = config(r#"{"enabled": false}"#);
    let (bg, m, meter) = (
        TestBackground::default(),
        TestHost::default(),
        Meter::default(),
    );
    let mut r = Reporter::with_id(ID.into());
    count(&meter, "a", "acc1", 1);
    r.tick(&cfg, &meter, &bg, &m, 0.0);
    r.tick(&cfg, &meter, &bg, &m, 10.0);
    assert!(bg.take_calls().is_empty());
}
