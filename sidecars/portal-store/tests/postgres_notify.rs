//! Changes propagate: by LISTEN/NOTIFY deltas within 1 s (interval refresh set to an hour,
//! so NOTIFY is what did it), and without the triggers by the interval refresh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use edgeguard_portal_store::{
    start_with_options, AppAuth, ChangeKind, PortalView, RefreshKind, Source, SourceType,
    StoreConfig,
};
use edgeguard_verdict::portal::key_digest;

const WITHIN: Duration = Duration::from_secs(1);

fn digest_of(store: &edgeguard_portal_store::Store, id: &str) -> Option<AppAuth> {
    store.snapshot().app(id).map(|a| a.auth.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_deltas_are_visible_within_a_second() {
    let pg = seeded_postgres(true).await;
    let rec = Recorder::new();
    let mut cfg = StoreConfig::new(Source::Postgres { url: pg.url() });
    cfg.app_refresh = Duration::from_secs(3600);
    cfg.usage_refresh = Duration::from_secs(3600);
    let store = start_with_options(cfg, fast_options(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    wait_until(Duration::from_secs(5), || store.status().listening)
        .await
        .expect("LISTEN up");
    wait_until(Duration::from_secs(2), || rec.full_app_loads() > 0)
        .await
        .unwrap();
    let full_loads = rec.full_app_loads();
    let v0 = store.version();

    // 1. a key change
    pg.psql("UPDATE portal_application_settings SET secret_key = 'key-two' WHERE application_id = 'app_key'");
    let took = wait_until(WITHIN, || {
        digest_of(&store, "app_key")
            == Some(AppAuth::ApiKey {
                digest: key_digest("key-two"),
            })
    })
    .await
    .expect("key change not visible within 1 s");
    println!("key change visible after {took:?}");

    // 2. a plan change on an account reaches all its apps
    pg.psql("UPDATE accounts SET plan_type = 'PLAN_UNLIMITED', monthly_user_limit = 7000000 WHERE id = 'acc_free'");
    let took = wait_until(WITHIN, || {
        let s = store.snapshot();
        [
            "app_pub",
            "app_nullkey",
            "app_emptykey",
            "app_notreq",
            "app_nullreq",
        ]
        .iter()
        .all(|id| {
            s.app(id)
                .is_some_and(|a| &*a.plan == "PLAN_UNLIMITED" && a.monthly_user_limit == 7_000_000)
        })
    })
    .await
    .expect("plan change not visible within 1 s");
    println!("account plan change visible after {took:?}");

    // 3. a hard delete, a soft delete and an insert
    pg.psql(
        "DELETE FROM portal_applications WHERE id = 'app_notreq';
         UPDATE portal_applications SET deleted = true, deleted_at = now() WHERE id = 'app_nullreq';
         INSERT INTO portal_applications (id, account_id) VALUES ('app_new', 'acc_unl');
         INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES ('app_new', 'k-new', true);",
    );
    let took = wait_until(WITHIN, || {
        let s = store.snapshot();
        s.app("app_notreq").is_none()
            && s.app("app_nullreq").is_none()
            && s.app("app_new").is_some()
    })
    .await
    .expect("deletes/insert not visible within 1 s");
    println!("deletes + insert visible after {took:?}");
    let s = store.snapshot();
    assert_eq!(
        s.app("app_new").unwrap().auth,
        AppAuth::ApiKey {
            digest: key_digest("k-new")
        }
    );
    assert_eq!(s.app_count(), 8);
    assert_eq!(s.apps().count(), 8);

    // NOTIFY did it: no full load since, only deltas
    wait_until(Duration::from_secs(2), || {
        rec.count_ok(SourceType::PortalAppStore, RefreshKind::Incremental) >= 3
    })
    .await
    .expect("fewer than 3 deltas");
    assert_eq!(rec.full_app_loads(), full_loads, "a full reload ran");
    assert!(!rec.notifications.lock().unwrap().is_empty());

    // the change log has exactly the apps that changed, deletions as None
    let c = store.changes_since(v0).unwrap();
    assert_eq!(c.to_version, store.version());
    let mut last: std::collections::BTreeMap<String, Option<String>> = Default::default();
    for ch in &c.changes {
        if let ChangeKind::App { id, app } = &ch.kind {
            last.insert(id.to_string(), app.as_ref().map(|a| a.plan.to_string()));
        }
    }
    assert_eq!(last.get("app_notreq"), Some(&None));
    assert_eq!(last.get("app_nullreq"), Some(&None));
    assert_eq!(
        last.get("app_new"),
        Some(&Some("PLAN_UNLIMITED".to_string()))
    );
    assert_eq!(
        last.get("app_pub"),
        Some(&Some("PLAN_UNLIMITED".to_string()))
    );
    assert!(last.contains_key("app_key"));
    assert!(
        !last.contains_key("app_neg"),
        "unchanged apps are not logged"
    );

    // a full reload of unchanged data keeps the version; a TRUNCATE-style payload forces one
    let v = store.version();
    pg.psql("SELECT pg_notify('edgeguard_portal_changes', '{\"table\":\"accounts\",\"op\":\"TRUNCATE\"}')");
    wait_until(Duration::from_secs(3), || rec.full_app_loads() > full_loads)
        .await
        .expect("full reload");
    assert_eq!(store.version(), v);
    assert_eq!(store.snapshot().app_count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_triggers_the_interval_refresh_propagates() {
    let pg = seeded_postgres(false).await;
    let rec = Recorder::new();
    let mut cfg = StoreConfig::new(Source::Postgres { url: pg.url() });
    cfg.app_refresh = Duration::from_millis(300);
    let store = start_with_options(cfg, fast_options(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    let v0 = store.version();
    pg.psql(
        "BEGIN;
         UPDATE portal_application_settings SET secret_key = 'key-two' WHERE application_id = 'app_key';
         UPDATE accounts SET plan_type = 'PLAN_UNLIMITED', monthly_user_limit = 7000000 WHERE id = 'acc_free';
         DELETE FROM portal_applications WHERE id = 'app_notreq';
         COMMIT;",
    );
    let took = wait_until(Duration::from_secs(2), || {
        let s = store.snapshot();
        s.app("app_notreq").is_none()
            && s.app("app_pub")
                .is_some_and(|a| a.monthly_user_limit == 7_000_000)
            && s.app("app_key").is_some_and(|a| {
                a.auth
                    == AppAuth::ApiKey {
                        digest: key_digest("key-two"),
                    }
            })
    })
    .await
    .expect("interval refresh did not propagate");
    println!("interval refresh propagated after {took:?}");
    assert!(
        rec.notifications.lock().unwrap().is_empty(),
        "no triggers, no notifications"
    );
    // one version for the whole diff, listing just the changed apps
    let c = store.changes_since(v0).unwrap();
    assert_eq!(c.to_version, v0 + 1);
    assert_eq!(c.changes.len(), 1 + 4 + 1, "{:?}", c.changes);
}
