//! Postgres down at start, the last-good snapshot file, Postgres lost mid-run and back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgeguard_portal_store::{
    start_with_options, AppAuth, ErrorType, Origin, PortalView, Source, SourceType, StoreConfig,
};
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::free_port;
use edgeguard_verdict::portal::key_digest;

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
