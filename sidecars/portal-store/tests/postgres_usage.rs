//! Monthly usage with metering: the store clock's month as the query parameter,
//! `relays + metered_relays` (and the fallback without migration 0004), the incremental poll,
//! partial publishes, and the month rollover with a shifted clock — against a real,
//! throwaway Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use edgeguard_portal_store::{
    start_with_options, ChangeKind, PortalView, RefreshKind, Source, SourceType, Store,
    StoreConfig, StoreOptions,
};
use edgeguard_tests::postgres::Postgres;
use edgeguard_verdict::portal::{check, CheckOptions, Headers};
use edgeguard_verdict::quota::Month;

struct NoHeaders;
impl Headers for NoHeaders {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The HTTP status of a request to `app` (200 when allowed).
fn status(store: &Store, app: &str) -> u16 {
    let path = format!("/v1/{app}");
    match check(
        Some((&path, &NoHeaders)),
        &*store.snapshot(),
        CheckOptions::default(),
        &|| None,
    ) {
        Ok(_) => 200,
        Err(d) => d.http_status(),
    }
}

/// Both refresh intervals an hour: whatever changes in these tests is the poll, the rollover
/// or a publish.
fn slow_cfg(pg: &Postgres) -> StoreConfig {
    let mut cfg = StoreConfig::new(Source::Postgres { url: pg.url() });
    cfg.app_refresh = Duration::from_secs(3600);
    cfg.usage_refresh = Duration::from_secs(3600);
    cfg
}

fn options(offset: i64, poll: Option<Duration>) -> StoreOptions {
    StoreOptions {
        listen: false,
        usage_clock_offset_secs: offset,
        usage_poll: poll,
        ..fast_options()
    }
}

fn usage_changes(store: &Store, since: u64) -> Vec<ChangeKind> {
    let mut kinds: Vec<ChangeKind> = store
        .changes_since(since)
        .expect("in the change log")
        .changes
        .into_iter()
        .map(|c| c.kind)
        .collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds
}

fn usage(account: &str, relays: Option<u64>) -> ChangeKind {
    ChangeKind::Usage {
        account_id: account.into(),
        relays,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_clock_picks_the_month_and_metered_relays_count() {
    let pg = seeded_postgres(true).await;
    // the store's clock runs ten days into the next month; the database's does not
    let now = unix_now();
    let real = Month::of(now);
    let shifted = real.next();
    let offset = shifted.start() + 10 * 86_400 - now;
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays, metered_relays) VALUES
           ('acc_free', '{s}', 600000, 400001),
           ('acc_unl', '{s}', 0, 12),
           ('acc_free', '{r}', 7, 0),
           ('acc_neg', '{r}', 99, 1);",
        s = shifted.first_day(),
        r = real.first_day(),
    ));
    let store = start_with_options(slow_cfg(&pg), options(offset, None), Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    assert!((store.now_unix() - (now + offset)).abs() < 60);
    assert_eq!(store.usage_month(), shifted);
    let snap = store.snapshot();
    assert_eq!(snap.usage_month(), Some(shifted));
    assert_eq!(
        snap.usage("acc_free"),
        Some(1_000_001),
        "relays + metered_relays"
    );
    assert_eq!(snap.usage("acc_unl"), Some(12));
    assert_eq!(
        snap.usage("acc_neg"),
        None,
        "the database's month is not read"
    );
    assert_eq!(snap.usage_count(), 2);
    // 1,000,001 > PLAN_FREE's 1,000,000: limited
    assert_eq!(status(&store, "app_pub"), 429);
    assert_eq!(store.status().usage_errors, 0);
    // Postgres mode: add_metered is the YAML path, it drops the deltas
    assert!(store
        .add_metered(shifted, vec![(Arc::from("acc_unl"), 5)])
        .is_empty());
    assert_eq!(store.snapshot().usage("acc_unl"), Some(12));
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migration_0004_usage_is_relays_alone() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    // 0001-0003 only: no metered_relays column
    for (_, sql) in &edgeguard_portal_store::pg::MIGRATIONS[..3] {
        pg.psql(sql);
    }
    pg.psql(SEED);
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays) VALUES
           ('acc_free', {THIS_MONTH}, 1000001), ('acc_unl', {THIS_MONTH}, 5);"
    ));
    let rec = Recorder::new();
    let store = start_with_options(
        slow_cfg(&pg),
        options(0, Some(Duration::from_millis(200))),
        rec.clone(),
    )
    .await
    .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    let snap = store.snapshot();
    assert_eq!(snap.usage("acc_free"), Some(1_000_001));
    assert_eq!(snap.usage("acc_unl"), Some(5));
    assert_eq!(status(&store, "app_pub"), 429);
    let st = store.status();
    assert_eq!(
        (st.usage_errors, st.usage_last_error),
        (0, None),
        "the missing column is not an error"
    );
    // the poll works without the column too
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET relays = 6, updated_at = now()
         WHERE account_id = 'acc_unl' AND month = {THIS_MONTH};"
    ));
    wait_until(Duration::from_secs(3), || {
        store.snapshot().usage("acc_unl") == Some(6)
    })
    .await
    .expect("polled without metered_relays");
    // 0004 applied later: the next full reload counts metered_relays
    edgeguard_portal_store::migrate(&pg.url(), false)
        .await
        .unwrap();
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET metered_relays = 100
         WHERE account_id = 'acc_unl' AND month = {THIS_MONTH};"
    ));
    store.refresh_now();
    wait_until(Duration::from_secs(5), || {
        store.snapshot().usage("acc_unl") == Some(106)
    })
    .await
    .expect("metered relays counted after migrating");
    assert_eq!(store.status().usage_errors, 0);
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_sees_metered_relays_within_a_second() {
    let pg = seeded_postgres(true).await;
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays, metered_relays) VALUES
           ('acc_free', {THIS_MONTH}, 10, 0), ('acc_unl', {THIS_MONTH}, 0, 1);"
    ));
    let rec = Recorder::new();
    let store = start_with_options(
        slow_cfg(&pg),
        options(0, Some(Duration::from_millis(200))),
        rec.clone(),
    )
    .await
    .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    assert_eq!(store.snapshot().usage("acc_free"), Some(10));
    assert_eq!(status(&store, "app_pub"), 200);
    // the observer hears of the first usage load just after it is published
    wait_until(Duration::from_secs(3), || {
        rec.count_ok(SourceType::RateLimitStore, RefreshKind::Full) >= 1
    })
    .await
    .expect("the first usage load reported");
    let full_usage_loads = rec.count_ok(SourceType::RateLimitStore, RefreshKind::Full);
    assert_eq!(full_usage_loads, 1);

    // a flush through another replica: metered_relays grows, updated_at = now()
    let v = store.version();
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET metered_relays = metered_relays + 1000000, updated_at = now()
         WHERE account_id = 'acc_free' AND month = {THIS_MONTH};"
    ));
    let took = wait_until(Duration::from_secs(3), || {
        store.snapshot().usage("acc_free") == Some(1_000_010)
    })
    .await
    .expect("the poll picked up the update");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(status(&store, "app_pub"), 429);
    // one version, one change: only the account that changed
    assert_eq!(store.version(), v + 1);
    assert_eq!(
        usage_changes(&store, v),
        vec![usage("acc_free", Some(1_000_010))]
    );

    // a write whose transaction started 3 s ago (committed late) and a new row
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET metered_relays = 7, updated_at = now() - interval '3 seconds'
         WHERE account_id = 'acc_unl' AND month = {THIS_MONTH};
         INSERT INTO account_monthly_usage (account_id, month, metered_relays) VALUES ('acc_neg', {THIS_MONTH}, 3);"
    ));
    wait_until(Duration::from_secs(3), || {
        let s = store.snapshot();
        s.usage("acc_unl") == Some(7) && s.usage("acc_neg") == Some(3)
    })
    .await
    .expect("late commit and new row polled");
    // rows of other months are not read
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays) VALUES
           ('acc_null', ({THIS_MONTH} + interval '1 month')::date, 5);"
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.snapshot().usage("acc_null"), None);
    // polls only raise totals: a lowered relays waits for the full reload, which applies it
    let v = store.version();
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET metered_relays = 0, updated_at = now()
         WHERE account_id = 'acc_free' AND month = {THIS_MONTH};"
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.snapshot().usage("acc_free"), Some(1_000_010));
    assert_eq!(store.version(), v);
    assert!(rec.count_ok(SourceType::RateLimitStore, RefreshKind::Incremental) >= 2);
    assert_eq!(
        rec.count_ok(SourceType::RateLimitStore, RefreshKind::Full),
        full_usage_loads,
        "all of this came through the poll"
    );
    store.refresh_now();
    wait_until(Duration::from_secs(5), || {
        store.snapshot().usage("acc_free") == Some(10)
    })
    .await
    .expect("the full reload lowers");
    assert_eq!(status(&store, "app_pub"), 200);
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_totals_are_partial_monotonic_and_of_the_usage_month() {
    let pg = seeded_postgres(true).await;
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays, metered_relays) VALUES
           ('acc_free', {THIS_MONTH}, 10, 0), ('acc_unl', {THIS_MONTH}, 20, 0);"
    ));
    let store = start_with_options(slow_cfg(&pg), options(0, None), Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(10)).await);
    let month = store.usage_month();
    assert_eq!(month, Month::of(unix_now()));
    let v = store.version();
    let totals = |list: &[(&str, u64)]| -> Vec<(Arc<str>, u64)> {
        list.iter().map(|(a, n)| (Arc::from(*a), *n)).collect()
    };

    // partial: acc_unl keeps its usage; a new account appears
    let v1 = store.publish_usage_totals(month, totals(&[("acc_free", 1_000_001), ("acc_neg", 4)]));
    assert_eq!(v1, v + 1);
    assert_eq!(store.version(), v1);
    let s = store.snapshot();
    assert_eq!(
        (s.usage("acc_free"), s.usage("acc_unl"), s.usage("acc_neg")),
        (Some(1_000_001), Some(20), Some(4))
    );
    assert_eq!(status(&store, "app_pub"), 429);
    assert_eq!(
        usage_changes(&store, v),
        vec![
            usage("acc_free", Some(1_000_001)),
            usage("acc_neg", Some(4))
        ]
    );
    // monotonic: a lower total is ignored, an equal one changes nothing
    assert_eq!(
        store.publish_usage_totals(month, totals(&[("acc_free", 500), ("acc_neg", 4)])),
        v1
    );
    assert_eq!(store.snapshot().usage("acc_free"), Some(1_000_001));
    // another month: ignored as a whole
    for other in [month.next(), Month::of(month.start() - 1)] {
        assert_eq!(
            store.publish_usage_totals(other, totals(&[("acc_unl", 99_000_000)])),
            v1
        );
    }
    assert_eq!(store.snapshot().usage("acc_unl"), Some(20));
    assert_eq!(store.changes_since(v1).unwrap().changes.len(), 0);
    // from another thread, concurrently with the store's own reloads
    let s2 = store.clone();
    let handle = std::thread::spawn(move || {
        (1..=50u64)
            .map(|i| s2.publish_usage_totals(month, vec![(Arc::from("acc_unl"), 20 + i)]))
            .collect::<Vec<u64>>()
    });
    store.refresh_now();
    let versions = tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    // the full reload reads the database (acc_unl 20) and may lower; publish again to be sure
    // the last word is ours and the log still replays to the snapshot
    wait_until(Duration::from_secs(5), || {
        store.status().usage_last_success.is_some()
    })
    .await
    .unwrap();
    let last = store.publish_usage_totals(month, vec![(Arc::from("acc_unl"), 1_000)]);
    assert_eq!(store.snapshot().usage("acc_unl"), Some(1_000));
    assert_eq!(store.version(), last);

    // before usage is loaded: ignored (a store that cannot reach its database)
    let dead = start_with_options(
        StoreConfig::new(Source::Postgres {
            url: "postgres://u@127.0.0.1:1/none".into(),
        }),
        options(0, None),
        Recorder::new(),
    )
    .await
    .unwrap();
    let dv = dead.version();
    assert_eq!(
        dead.publish_usage_totals(dead.usage_month(), totals(&[("acc_free", 5)])),
        dv
    );
    assert_eq!(dead.snapshot().usage("acc_free"), None);
    assert!(!dead.snapshot().usage_loaded());
    dead.shutdown();
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_month_rolls_over_without_a_restart() {
    let pg = seeded_postgres(true).await;
    let real = Month::of(unix_now());
    pg.psql(&format!(
        "INSERT INTO account_monthly_usage (account_id, month, relays, metered_relays) VALUES
           ('acc_free', '{m}', 2000000, 0),
           ('acc_unl', '{m}', 1, 0),
           ('acc_unl', '{n}', 0, 7);",
        m = real.first_day(),
        n = real.next().first_day(),
    ));
    // the stores' clocks reach the end of the (real) month 8 s from now: one store polls,
    // the other only has the 1 s rollover check
    let now = unix_now();
    let offset = real.next().start() - 8 - now;
    let polling = start_with_options(
        slow_cfg(&pg),
        options(offset, Some(Duration::from_millis(200))),
        Recorder::new(),
    )
    .await
    .unwrap();
    let ticking = start_with_options(slow_cfg(&pg), options(offset, None), Recorder::new())
        .await
        .unwrap();
    for store in [&polling, &ticking] {
        assert!(store.wait_loaded(Duration::from_secs(6)).await);
        assert_eq!(
            store.usage_month(),
            real,
            "loaded before the boundary (slow machine?)"
        );
        let s = store.snapshot();
        assert_eq!(
            (s.usage("acc_free"), s.usage("acc_unl")),
            (Some(2_000_000), Some(1))
        );
        assert_eq!(status(store, "app_pub"), 429);
    }
    let versions = [polling.version(), ticking.version()];
    // the boundary passes: within about a second both stores read the new month
    for (store, v) in [&polling, &ticking].into_iter().zip(versions) {
        wait_until(Duration::from_secs(15), || {
            store.usage_month() == real.next()
        })
        .await
        .expect("rolled over");
        assert!(Month::of(store.now_unix()) == real.next());
        let s = store.snapshot();
        assert_eq!(
            s.usage("acc_free"),
            None,
            "no row in the new month: open again"
        );
        assert_eq!(s.usage("acc_unl"), Some(7), "the new month's row");
        assert_eq!(status(store, "app_pub"), 200);
        assert_eq!(
            usage_changes(store, v),
            vec![usage("acc_free", None), usage("acc_unl", Some(7))]
        );
        // the old month's totals are ignored now
        let after = store.version();
        assert_eq!(
            store.publish_usage_totals(real, vec![(Arc::from("acc_free"), 3_000_000)]),
            after
        );
        assert_eq!(status(store, "app_pub"), 200);
    }
    // the polling store keeps polling the new month
    pg.psql(&format!(
        "UPDATE account_monthly_usage SET metered_relays = 8, updated_at = now()
         WHERE account_id = 'acc_unl' AND month = '{}';",
        real.next().first_day()
    ));
    wait_until(Duration::from_secs(3), || {
        polling.snapshot().usage("acc_unl") == Some(8)
    })
    .await
    .expect("polls the new month");
    polling.shutdown();
    ticking.shutdown();
}
