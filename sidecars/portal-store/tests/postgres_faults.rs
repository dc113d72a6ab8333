//! Postgres down at start, the last-good snapshot file, Postgres lost mid-run and back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgeguard_portal_store::{
    start_with_options, AppAuth, ErrorType, Origin, PortalView, Source, SourceType, StoreConfig,
};
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::free_port;
use edgeguard_verdict::portal::{check, key_digest, CheckOptions, Headers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_then_loads_by_itself() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/edgeguard");
    let rec = Recorder::new();
    let mut cfg = StoreConfig::new(Source::Postgres { url: url.clone() });
    cfg.app_refresh = Duration::from_millis(500);
    let t = Instant::now();
    let store = start_with_options(cfg, fast_options(), rec.clone())
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "start() blocked");
    assert!(!store.snapshot().loaded());
    wait_until(Duration::from_secs(5), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::PostgresError) > 0
    })
    .await
    .expect("no error reported");
    assert!(!store.snapshot().loaded(), "loaded from nothing");
    assert!(store.status().last_error.is_some());
    assert_eq!(store.staleness(), None);

    // Postgres comes up on that port; the store loads by itself
    let pg = tokio::task::spawn_blocking(move || Postgres::start_on(port))
        .await
        .unwrap();
    edgeguard_portal_store::migrate(&pg.url(), true)
        .await
        .unwrap();
    pg.psql(SEED);
    let took = wait_until(Duration::from_secs(10), || {
        store.snapshot().app_count() == 9
    })
    .await
    .expect("did not load after Postgres came up");
    println!("loaded {took:?} after the data was there");
    assert_eq!(store.snapshot().origin(), Origin::Postgres);
    assert_eq!(store.status().consecutive_errors, 0);
    wait_until(Duration::from_secs(5), || store.status().listening)
        .await
        .expect("LISTEN up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_file_serves_while_postgres_is_down() {
    let pg = seeded_postgres(true).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portal-snapshot.json");
    let mut cfg = StoreConfig::new(Source::Postgres { url: pg.url() });
    cfg.snapshot_file = Some(file.clone());
    let first = start_with_options(cfg.clone(), fast_options(), Recorder::new())
        .await
        .unwrap();
    assert!(first.wait_loaded(Duration::from_secs(10)).await);
    wait_until(Duration::from_secs(5), || file.exists())
        .await
        .expect("snapshot file written");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("key-one"),
        "plaintext key in the snapshot file"
    );
    first.shutdown();
    drop(first);

    // Postgres down at start: the file is served
    drop(pg);
    let rec = Recorder::new();
    let down_port = free_port();
    let mut cfg_down = cfg.clone();
    cfg_down.source = Source::Postgres {
        url: format!("postgres://postgres@127.0.0.1:{down_port}/edgeguard"),
    };
    cfg_down.app_refresh = Duration::from_millis(300);
    let store = start_with_options(cfg_down, fast_options(), rec.clone())
        .await
        .unwrap();
    let took = wait_until(Duration::from_secs(5), || store.snapshot().loaded())
        .await
        .expect("file not served");
    println!("snapshot file served {took:?} after start");
    let s = store.snapshot();
    assert!(s.from_file());
    assert_eq!(s.app_count(), 9);
    assert_eq!(
        s.app("app_key").unwrap().auth,
        AppAuth::ApiKey {
            digest: key_digest("key-one")
        }
    );
    assert_eq!(s.app("app_nullkey").unwrap().auth, AppAuth::MissingKey);
    assert!(store.staleness().is_some());
    let v_file = s.version();

    // Postgres with the same data comes up on that port: same data, same version, now from Postgres
    let pg3 = tokio::task::spawn_blocking(move || Postgres::start_on(down_port))
        .await
        .unwrap();
    schema_and_seed_atomically(&pg3);
    wait_until(Duration::from_secs(10), || {
        store.snapshot().origin() == Origin::Postgres
    })
    .await
    .expect("never switched to Postgres");
    assert_eq!(
        store.version(),
        v_file,
        "identical data must not bump the version"
    );
    assert!(!store.snapshot().from_file());

    // an unusable file is reported, and the store stays not loaded
    let bad_file = dir.path().join("corrupt.json");
    std::fs::write(&bad_file, "{ not json").unwrap();
    let rec2 = Recorder::new();
    let mut cfg_bad = cfg.clone();
    cfg_bad.snapshot_file = Some(bad_file);
    cfg_bad.source = Source::Postgres {
        url: format!("postgres://postgres@127.0.0.1:{}/edgeguard", free_port()),
    };
    let bad = start_with_options(cfg_bad, fast_options(), rec2.clone())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), || {
        *rec2.file_errors.lock().unwrap() > 0
    })
    .await
    .expect("file error not reported");
    assert!(!bad.snapshot().loaded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_mid_run_then_recovers_and_listens_again() {
    let mut pg = seeded_postgres(true).await;
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
    let v = store.version();

    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::PostgresError) > 0
    })
    .await
    .expect("the outage was not noticed");
    assert!(store.status().refresh_errors > 0);
    assert!(!store.status().listening);
    // still serving the last good data
    let s = store.snapshot();
    assert!(s.loaded() && s.app("app_key").is_some());
    assert_eq!(s.version(), v);
    let st1 = store.staleness().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let st2 = store.staleness().unwrap();
    assert!(st2 >= st1 + Duration::from_millis(600), "{st1:?} → {st2:?}");
    assert!(store.status().consecutive_errors >= 2, "keeps retrying");

    // back: recovers and LISTENs again; a NOTIFY after the restart propagates
    pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let st = store.status();
        st.consecutive_errors == 0 && st.listening
    })
    .await
    .expect("did not recover");
    assert!(store.staleness().unwrap() < Duration::from_secs(2));
    pg.psql("UPDATE portal_application_settings SET secret_key = 'after-restart' WHERE application_id = 'app_key'");
    wait_until(Duration::from_secs(1), || {
        store.snapshot().app("app_key").map(|a| a.auth.clone())
            == Some(AppAuth::ApiKey {
                digest: key_digest("after-restart"),
            })
    })
    .await
    .expect("NOTIFY after the restart did not propagate within 1 s");
}

/// `GET /v1/<app>` through the verdict on a snapshot: the HTTP status it answers.
fn status_of(s: &edgeguard_portal_store::Snapshot, app: &str) -> u16 {
    struct NoHeaders;
    impl Headers for NoHeaders {
        fn get(&self, _: &str) -> Option<&str> {
            None
        }
    }
    let path = format!("/v1/{app}");
    match check(
        Some((path.as_str(), &NoHeaders)),
        s,
        CheckOptions::default(),
        &|| None,
    ) {
        Ok(_) => 200,
        Err(d) => d.http_status(),
    }
}

/// Usage that cannot be read while the apps can (the store's role may not read the usage
/// table: the same as Postgres dying between the app load and the usage load, made
/// deterministic) keeps the store not loaded, so an account over its quota is never let
/// through; no snapshot file is written without usage. With a last-good snapshot file, its
/// usage stands in. Once usage is readable the quota is enforced from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_without_usage_are_not_loaded() {
    let pg = seeded_postgres(true).await;
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays) VALUES ('acc_free', {THIS_MONTH}, 1500000);
         CREATE ROLE store_ro LOGIN;
         GRANT SELECT ON accounts, portal_applications, portal_application_settings,
           edgeguard_app_client_auth, edgeguard_devices, edgeguard_revoked_certificates TO store_ro;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let ro_url = format!("postgres://store_ro@127.0.0.1:{}/edgeguard", pg.port());

    // no snapshot file: not loaded for as long as usage cannot be read
    let rec = Recorder::new();
    let mut cfg = StoreConfig::new(Source::Postgres {
        url: ro_url.clone(),
    });
    cfg.usage_refresh = Duration::from_millis(300);
    let ro_file = dir.path().join("ro.json");
    cfg.snapshot_file = Some(ro_file.clone());
    let store = start_with_options(cfg.clone(), fast_options(), rec.clone())
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        store.snapshot().apps_loaded()
            && rec.count_errors(SourceType::RateLimitStore, ErrorType::PostgresError) >= 3
    })
    .await
    .expect("apps loaded and usage failing");
    let s = store.snapshot();
    assert_eq!(s.app_count(), 9);
    assert!(!s.usage_loaded() && !s.is_loaded() && !s.loaded());
    assert_eq!(status_of(&s, "app_pub"), 503, "over quota, usage unknown");
    assert!(!store.wait_loaded(Duration::from_millis(500)).await);
    let err = store.status().usage_last_error.unwrap_or_default();
    assert!(err.contains("permission denied"), "{err}");
    assert!(!ro_file.exists(), "snapshot file written without usage");

    // usage readable: loaded, and the quota holds
    pg.psql("GRANT SELECT ON account_monthly_usage TO store_ro");
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    let s = store.snapshot();
    assert_eq!(status_of(&s, "app_pub"), 429);
    assert_eq!(s.origin(), Origin::Postgres);
    wait_until(Duration::from_secs(5), || ro_file.exists())
        .await
        .expect("snapshot file written once loaded");
    let text = std::fs::read_to_string(&ro_file).unwrap();
    assert!(text.contains(r#"["acc_free",1500000]"#), "{text}");
    drop(store);

    // with a last-good file: its usage stands in for the usage that cannot be read
    pg.psql("REVOKE SELECT ON account_monthly_usage FROM store_ro");
    let rec = Recorder::new();
    let store = start_with_options(cfg, fast_options(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    wait_until(Duration::from_secs(10), || {
        store.snapshot().origin() == Origin::Postgres
    })
    .await
    .expect("apps from Postgres");
    let s = store.snapshot();
    assert!(rec.count_errors(SourceType::RateLimitStore, ErrorType::PostgresError) >= 1);
    assert_eq!(s.account_usage("acc_free"), Some(1_500_000));
    assert_eq!(status_of(&s, "app_pub"), 429);
}
