//! Full loads with PEAS's Grove schema and query, usage and the rate-limit summary,
//! migrations — against a real, throwaway Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use edgeguard_portal_store::{
    start_with_options, AccountUsage, AppAuth, ChangeKind, ErrorType, Origin, PortalView,
    RefreshKind, Source, SourceType, StoreConfig,
};
use edgeguard_verdict::portal::{check, key_digest, CheckOptions, Headers};

struct NoHeaders;
impl Headers for NoHeaders {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_load_maps_rows_like_peas() {
    let pg = seeded_postgres(true).await;
    let rec = Recorder::new();
    // PEAS's user:password form of the connection string
    let store = start_with_options(
        StoreConfig::new(Source::Postgres { url: pg.peas_url() }),
        fast_options(),
        rec.clone(),
    )
    .await
    .unwrap();
    assert!(
        store.wait_loaded(Duration::from_secs(10)).await,
        "not loaded"
    );
    let snap = store.snapshot();
    assert!(snap.loaded());
    assert_eq!(snap.origin(), Origin::Postgres);
    assert_eq!(snap.app_count(), 9, "the deleted app is not loaded");
    assert!(snap.app("app_deleted").is_none());

    let app = |id: &str| {
        snap.app(id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .clone()
    };
    let pub_app = app("app_pub");
    assert_eq!(
        (
            &*pub_app.account_id,
            &*pub_app.plan,
            &pub_app.auth,
            pub_app.monthly_user_limit
        ),
        ("acc_free", "PLAN_FREE", &AppAuth::Public, 0)
    );
    let keyed = app("app_key");
    assert_eq!(
        keyed.auth,
        AppAuth::ApiKey {
            digest: key_digest("key-one")
        }
    );
    assert_eq!(
        (&*keyed.plan, keyed.monthly_user_limit),
        ("PLAN_UNLIMITED", 40_000_000)
    );
    // secret_key_required with a NULL or empty key: fail closed
    assert_eq!(app("app_nullkey").auth, AppAuth::MissingKey);
    assert_eq!(app("app_emptykey").auth, AppAuth::MissingKey);
    // not required (false or NULL): public, the key is ignored (PEAS)
    assert_eq!(app("app_notreq").auth, AppAuth::Public);
    assert_eq!(app("app_nullreq").auth, AppAuth::Public);
    // NULL account: "" account, "" plan, 0 limit
    let noacc = app("app_noacc");
    assert_eq!(
        (&*noacc.account_id, &*noacc.plan, noacc.monthly_user_limit),
        ("", "", 0)
    );
    // negative limit → 0
    assert_eq!(app("app_neg").monthly_user_limit, 0);
    // NULL plan
    let np = app("app_nullplan");
    assert_eq!((&*np.account_id, &*np.plan), ("acc_null", ""));
    assert_eq!(snap.account_count(), 4);

    // the observer hears of a load just after it is published
    let first_app_refresh = || {
        rec.ok
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.source_type == SourceType::PortalAppStore)
            .cloned()
    };
    wait_until(Duration::from_secs(2), || first_app_refresh().is_some())
        .await
        .expect("no refresh_ok");
    let full = first_app_refresh().unwrap();
    assert_eq!(
        (full.kind, full.apps, full.accounts),
        (RefreshKind::Full, 9, 4)
    );
    assert_eq!(full.version, snap.version());
    let status = store.status();
    assert!(status.last_success.is_some() && status.last_refresh_duration.is_some());
    assert_eq!(status.refresh_errors, 0);
    assert!(store.staleness().unwrap() < Duration::from_secs(5));
    // the first load is not in the change log: consumers of the empty store need a full copy
    assert!(store.changes_since(snap.version() - 1).is_none());
    assert_eq!(
        store.changes_since(snap.version()).unwrap().changes.len(),
        0
    );
    let listed: usize = snap.apps().count();
    assert_eq!(listed, 9);
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_table_and_rate_limit_summary() {
    let pg = seeded_postgres(true).await;
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays) VALUES
           ('acc_free', {THIS_MONTH}, 1000001),
           ('acc_unl', {THIS_MONTH}, 39000000),
           ('acc_neg', {THIS_MONTH}, 99999999),
           ('acc_free', ({THIS_MONTH} - interval '1 month')::date, 5);"
    ));
    let rec = Recorder::new();
    let mut cfg = StoreConfig::new(Source::Postgres { url: pg.url() });
    cfg.app_refresh = Duration::from_secs(3600);
    cfg.usage_refresh = Duration::from_secs(3600);
    let store = start_with_options(cfg, fast_options(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    wait_until(Duration::from_secs(5), || {
        store.snapshot().usage_count() == 3
    })
    .await
    .expect("usage loaded");
    let snap = store.snapshot();
    assert_eq!(
        snap.usage("acc_free"),
        Some(1_000_001),
        "only this month counts"
    );
    assert_eq!(snap.usage("acc_unl"), Some(39_000_000));
    // the verdict: free account over 1M → 429; unlimited under its 40M → OK
    let d = check(
        Some(("/v1/app_pub", &NoHeaders)),
        &*snap,
        CheckOptions::default(),
        &|| None,
    )
    .unwrap_err();
    assert_eq!(d.http_status(), 429);
    // acc_neg: PLAN_UNLIMITED with a non-positive limit has no limit at all
    assert!(check(
        Some(("/v1/app_neg", &NoHeaders)),
        &*snap,
        CheckOptions::default(),
        &|| None
    )
    .is_ok());

    wait_until(Duration::from_secs(5), || rec.last_usage().is_some())
        .await
        .unwrap();
    let summary = snap.usage_summary();
    assert_eq!(
        summary,
        vec![
            AccountUsage {
                account_id: "acc_free".into(),
                plan: "PLAN_FREE".into(),
                limit: 1_000_000,
                usage: 1_000_001,
                limited: true
            },
            AccountUsage {
                account_id: "acc_unl".into(),
                plan: "PLAN_UNLIMITED".into(),
                limit: 40_000_000,
                usage: 39_000_000,
                limited: false
            },
        ]
    );
    // (an earlier summary may predate the apps: usage and apps load independently)
    wait_until(Duration::from_secs(2), || {
        rec.last_usage().as_ref() == Some(&summary)
    })
    .await
    .expect("observer never got the summary");
    assert!(store.usage_staleness().is_some());

    // a usage change is versioned like an app change
    let v = store.version();
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET relays = 41000000 WHERE account_id = 'acc_unl' AND month = {THIS_MONTH};
         DELETE FROM account_monthly_usage WHERE account_id = 'acc_neg';"
    ));
    store.refresh_now();
    wait_until(Duration::from_secs(5), || store.version() > v)
        .await
        .expect("usage refresh");
    let c = store.changes_since(v).unwrap();
    assert_eq!(c.to_version, v + 1);
    let mut kinds: Vec<ChangeKind> = c.changes.into_iter().map(|c| c.kind).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(
        kinds,
        vec![
            ChangeKind::Usage {
                account_id: "acc_neg".into(),
                relays: None
            },
            ChangeKind::Usage {
                account_id: "acc_unl".into(),
                relays: Some(41_000_000)
            },
        ]
    );
    let s = store.snapshot().usage_summary();
    assert!(s.iter().all(|a| a.limited), "{s:?}");
    // refreshing unchanged data publishes nothing new
    let v = store.version();
    store.refresh_now();
    wait_until(Duration::from_secs(5), || {
        rec.count_ok(SourceType::RateLimitStore, RefreshKind::Full) >= 3
    })
    .await
    .unwrap();
    assert_eq!(store.version(), v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_usage_errors_are_reported() {
    let pg = seeded_postgres(true).await;
    edgeguard_portal_store::migrate(&pg.url(), true)
        .await
        .unwrap();
    edgeguard_portal_store::migrate(&pg.url(), false)
        .await
        .unwrap();
    let triggers =
        pg.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'edgeguard_portal_%'");
    assert_eq!(triggers, "6");
    // a Portal DB without the usage table: apps load, usage errors are counted, and the
    // store is not loaded (quotas cannot be enforced without usage)
    pg.psql("DROP TABLE account_monthly_usage");
    let rec = Recorder::new();
    let store = start_with_options(
        StoreConfig::new(Source::Postgres { url: pg.url() }),
        fast_options(),
        rec.clone(),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        store.snapshot().apps_loaded()
            && rec.count_errors(SourceType::RateLimitStore, ErrorType::PostgresError) > 0
    })
    .await
    .expect("apps loaded, usage error reported");
    let st = store.status();
    assert!(st
        .usage_last_error
        .unwrap()
        .contains("account_monthly_usage"));
    assert_eq!(st.refresh_errors, 0);
    assert!(!store.snapshot().loaded());
    // the table appears (migration 0002): loaded
    edgeguard_portal_store::migrate(&pg.url(), false)
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    // bad configuration is the only start error
    let e = edgeguard_portal_store::start(
        StoreConfig::new(Source::Postgres {
            url: "postgres://u:s3cret@h:port/x".into(),
        }),
        rec.clone(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("invalid Postgres connection string") && !e.contains("s3cret"),
        "{e}"
    );
}
