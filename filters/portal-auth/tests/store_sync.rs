//! The store sync in the background, against the test background owner: what is fetched,
//! with which credential, how deltas and full copies apply, what failures keep. The same code
//! runs from the proxy-wasm root context and from the native filter configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgeguard_host::{TestBackground, TestHost};
use edgeguard_verdict::portal::{AppAuth, PortalApp, PortalView};
use edgeguard_verdict::portal_wire::{AppChange, Update};
use portal_auth::config::{Config, Env};
use portal_auth::engine::Copy;
use portal_auth::sync::Sync;

const TOKEN: &str = "store-token-for-sync-tests-0123456789";

struct TokenEnv;

impl Env for TokenEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "EDGEGUARD_STORE_TOKEN").then(|| TOKEN.into())
    }
}

fn config() -> Config {
    Config::parse(
        br#"{"store": {"cluster": "authz_http", "authority": "authz", "refresh_interval_ms": 1000, "timeout_ms": 2000}}"#,
        &TokenEnv,
    )
    .unwrap()
}

fn update(from: u64, version: u64, full: bool, ids: &[&str]) -> Vec<u8> {
    Update {
        from,
        version,
        full,
        apps: ids
            .iter()
            .map(|id| AppChange {
                id: id.to_string(),
                app: Some(PortalApp {
                    account_id: "acc".into(),
                    plan: "PLAN_FREE".into(),
                    auth: AppAuth::Public,
                    monthly_user_limit: 0,
                    client_auth: Default::default(),
                }),
            })
            .collect(),
        usage: vec![],
        ..Default::default()
    }
    .encode()
}

#[test]
fn fetches_with_the_store_token_and_applies_full_then_deltas() {
    let cfg = config();
    let bg = TestBackground::default();
    let m = TestHost::default();
    let mut sync = Sync::default();
    let mut copy = Copy::default();

    sync.tick(&cfg, copy.version, &bg, &m, 100.0);
    let calls = bg.take_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "authz_http");
    assert_eq!(call.header(":path"), Some("/store/v1/snapshot?since=0"));
    assert_eq!(call.header(":authority"), Some("authz"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // nothing more while the call is in flight or before the refresh interval
    sync.tick(&cfg, copy.version, &bg, &m, 100.5);
    assert!(bg.take_calls().is_empty());

    // an answer to another call is not ours
    assert!(!sync.answer(&mut copy, call.id + 1, Some("200"), None, &bg, &m));
    let body = update(0, 10, true, &["a", "b"]);
    assert!(sync.answer(&mut copy, call.id, Some("200"), Some(&body), &bg, &m));
    assert!(copy.loaded());
    assert_eq!(copy.app_count(), 2);
    assert_eq!(
        m.gauges.borrow().get("edgeguard_portal_auth.store_version"),
        Some(&10)
    );
    assert_eq!(m.counter("edgeguard_portal_auth.store_fetch_ok"), 1);

    // the next fetch asks for changes since the copy's version
    sync.tick(&cfg, copy.version, &bg, &m, 101.1);
    let call = bg.take_calls().remove(0);
    assert_eq!(call.header(":path"), Some("/store/v1/snapshot?since=10"));
    let body = update(10, 11, false, &["c"]);
    sync.answer(&mut copy, call.id, Some("200"), Some(&body), &bg, &m);
    assert!(copy.app("c").is_some() && copy.app("a").is_some());

    // 304: unchanged
    sync.tick(&cfg, copy.version, &bg, &m, 102.2);
    let call = bg.take_calls().remove(0);
    sync.answer(&mut copy, call.id, Some("304"), None, &bg, &m);
    assert_eq!(copy.version, 11);
}

#[test]
fn failures_keep_the_copy_and_a_gap_asks_for_everything() {
    let cfg = config();
    let bg = TestBackground::default();
    let m = TestHost::default();
    let mut sync = Sync::default();
    let mut copy = Copy::default();
    sync.tick(&cfg, copy.version, &bg, &m, 0.0);
    let call = bg.take_calls().remove(0);
    sync.answer(
        &mut copy,
        call.id,
        Some("200"),
        Some(&update(0, 5, true, &["a"])),
        &bg,
        &m,
    );

    // the endpoint refuses (wrong token, authz down): logged once per streak, copy kept
    for i in 0..3 {
        sync.tick(&cfg, copy.version, &bg, &m, 1.5 + i as f64 * 1.1);
        let call = bg.take_calls().remove(0);
        sync.answer(&mut copy, call.id, Some("401"), None, &bg, &m);
    }
    assert_eq!(
        bg.logs
            .borrow()
            .iter()
            .filter(|(_, l)| l.contains("store endpoint answered HTTP 401; keeping the last copy"))
            .count(),
        1
    );
    assert!(copy.app("a").is_some());
    assert_eq!(m.counter("edgeguard_portal_auth.store_fetch_failed"), 3);

    // a delta from another version: refused, and the next fetch asks for a full copy
    sync.tick(&cfg, copy.version, &bg, &m, 10.0);
    let call = bg.take_calls().remove(0);
    sync.answer(
        &mut copy,
        call.id,
        Some("200"),
        Some(&update(99, 100, false, &["x"])),
        &bg,
        &m,
    );
    assert!(copy.app("x").is_none());
    sync.tick(&cfg, copy.version, &bg, &m, 11.1);
    let call = bg.take_calls().remove(0);
    assert_eq!(call.header(":path"), Some("/store/v1/snapshot?since=0"));

    // a cluster that cannot be called is a failure too, never a panic
    let bg = TestBackground::default();
    bg.refuse_calls.set(true);
    let mut sync = Sync::default();
    sync.tick(&cfg, 0, &bg, &m, 0.0);
    assert!(bg.logged("store.cluster 'authz_http' cannot be called"));
    bg.refuse_calls.set(false);
    sync.tick(&cfg, 0, &bg, &m, 1.1);
    assert_eq!(bg.take_calls().len(), 1, "and the next tick tries again");
}

fn part(version: u64, part: u32, parts: u32, ids: &[&str]) -> Vec<u8> {
    let mut u = Update::decode(&update(0, version, true, ids)).unwrap();
    u.part = part;
    u.parts = parts;
    u.encode()
}

#[test]
fn a_full_copy_in_parts_is_assembled_aside_and_published_at_the_lowest_version() {
    let cfg = config();
    let bg = TestBackground::default();
    let m = TestHost::default();
    let mut sync = Sync::default();
    let mut copy = Copy::default();
    let mut now = 0.0;
    let mut fetch = |sync: &mut Sync, copy: &mut Copy, body: &[u8]| -> String {
        now += 0.01; // the next part is asked for at once, not after refresh_interval_ms
        sync.tick(&cfg, copy.version, &bg, &m, now);
        let call = bg.take_calls().remove(0);
        sync.answer(copy, call.id, Some("200"), Some(body), &bg, &m);
        call.header(":path").unwrap_or_default().to_string()
    };
    assert_eq!(
        fetch(&mut sync, &mut copy, &part(10, 0, 3, &["a", "b"])),
        "/store/v1/snapshot?since=0"
    );
    assert!(!copy.loaded(), "nothing is published before the last part");
    assert_eq!(
        fetch(&mut sync, &mut copy, &part(12, 1, 3, &["c"])),
        "/store/v1/snapshot?since=0&part=1&parts=3"
    );
    assert!(!copy.loaded());
    assert_eq!(
        fetch(&mut sync, &mut copy, &part(11, 2, 3, &["d"])),
        "/store/v1/snapshot?since=0&part=2&parts=3"
    );
    assert!(copy.loaded());
    assert_eq!(copy.app_count(), 4);
    assert_eq!(
        copy.version, 10,
        "the lowest version: the next deltas replay what changed meanwhile"
    );
    // the next fetch asks for the changes since then, after the refresh interval
    sync.tick(&cfg, copy.version, &bg, &m, 5.0);
    assert_eq!(
        bg.take_calls().remove(0).header(":path"),
        Some("/store/v1/snapshot?since=10")
    );
}

#[test]
fn a_part_out_of_order_restarts_the_full_copy_and_keeps_the_old_one() {
    let cfg = config();
    let bg = TestBackground::default();
    let m = TestHost::default();
    let mut sync = Sync::default();
    let mut copy = Copy::default();
    sync.tick(&cfg, 0, &bg, &m, 0.0);
    let call = bg.take_calls().remove(0);
    sync.answer(
        &mut copy,
        call.id,
        Some("200"),
        Some(&update(0, 5, true, &["old"])),
        &bg,
        &m,
    );
    assert!(copy.app("old").is_some());
    // a gap makes it ask for everything; the store answers in parts
    sync.want_full = true;
    sync.tick(&cfg, copy.version, &bg, &m, 2.0);
    let call = bg.take_calls().remove(0);
    sync.answer(
        &mut copy,
        call.id,
        Some("200"),
        Some(&part(9, 0, 2, &["n1"])),
        &bg,
        &m,
    );
    sync.tick(&cfg, copy.version, &bg, &m, 2.01);
    let call = bg.take_calls().remove(0);
    // the store restarted and answers another split
    sync.answer(
        &mut copy,
        call.id,
        Some("200"),
        Some(&part(3, 1, 4, &["n2"])),
        &bg,
        &m,
    );
    assert!(
        copy.app("old").is_some() && copy.app("n1").is_none(),
        "the copy in use is kept"
    );
    assert!(bg.logged("does not continue the copy being assembled"));
    sync.tick(&cfg, copy.version, &bg, &m, 3.1);
    assert_eq!(
        bg.take_calls().remove(0).header(":path"),
        Some("/store/v1/snapshot?since=0"),
        "starts over at part 0"
    );
}
