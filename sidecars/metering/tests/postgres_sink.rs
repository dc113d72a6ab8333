//! The Postgres sink against a real Postgres: one statement per flush, each report at most
//! once, totals returned, the operator's `relays` column untouched.

use std::sync::Arc;
use std::time::Duration;

use edgeguard_metering::{FlushBatch, Month, PgSink, Sink, UsageEntry, UsageReport};
use edgeguard_tests::postgres::Postgres;

fn report(reporter: &str, seq: u64, entries: &[(&str, &str, u64)]) -> UsageReport {
    UsageReport {
        reporter: reporter.into(),
        seq,
        entries: entries
            .iter()
            .map(|(app, acc, n)| UsageEntry {
                app_id: app.to_string(),
                account_id: acc.to_string(),
                relays: *n,
            })
            .collect(),
        devices: vec![],
    }
}

#[tokio::test]
async fn flushes_apply_each_report_once_and_return_totals() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    edgeguard_portal_store::migrate(&pg.url(), true)
        .await
        .unwrap();
    let month = Month {
        year: 2026,
        month: 12,
    };
    // an external pipeline already wrote 100 relays for acc1 this month
    pg.psql("INSERT INTO account_monthly_usage (account_id, month, relays) VALUES ('acc1', '2026-12-01', 100);");
    let opts = pg.url().parse().unwrap();
    let mut sink = PgSink::new(opts, "authz-a".into(), Duration::from_secs(5));
    let out = sink
        .flush(FlushBatch {
            month: Some(month),
            reports: vec![
                report("r1", 1, &[("app1", "acc1", 5), ("app2", "acc1", 2)]),
                report("r2", 7, &[("app3", "a-very-long-account-id", 4)]),
            ],
        })
        .await
        .unwrap();
    let mut applied = out.applied.clone();
    applied.sort();
    assert_eq!(applied, vec![("r1".to_string(), 1), ("r2".to_string(), 7)]);
    let mut totals = out.totals.clone();
    totals.sort();
    assert_eq!(
        totals,
        vec![
            (Arc::from("a-very-long-account-id"), 4),
            (Arc::from("acc1"), 107)
        ]
    );
    // 2 report ids + 3 app rows + 2 account rows
    assert_eq!(out.rows, 7);
    // a retried report (e.g. its ack was lost) together with a new one: only the new one counts
    let out = sink
        .flush(FlushBatch {
            month: Some(month),
            reports: vec![
                report("r1", 1, &[("app1", "acc1", 5), ("app2", "acc1", 2)]),
                report("r1", 2, &[("app1", "acc1", 1)]),
            ],
        })
        .await
        .unwrap();
    assert_eq!(out.applied, vec![("r1".to_string(), 2)]);
    assert_eq!(out.totals, vec![(Arc::from("acc1"), 108)]);
    assert_eq!(
        pg.psql(
            "SELECT relays, metered_relays FROM account_monthly_usage WHERE account_id = 'acc1'"
        )
        .trim(),
        "100|8"
    );
    assert_eq!(
        pg.psql("SELECT app_id, relays FROM edgeguard_app_monthly_usage ORDER BY app_id")
            .trim(),
        "app1|6\napp2|2\napp3|4"
    );
    assert_eq!(
        pg.psql("SELECT reporter, seq, relays, applied_by FROM edgeguard_usage_reports ORDER BY reporter, seq").trim(),
        "r1|1|7|authz-a\nr1|2|1|authz-a\nr2|7|4|authz-a"
    );
    // the operator's pipeline overwrites its own column: edgeguard's counts stay
    pg.psql("UPDATE account_monthly_usage SET relays = 250 WHERE account_id = 'acc1';");
    let out = sink
        .flush(FlushBatch {
            month: Some(month),
            reports: vec![report("r1", 3, &[("app1", "acc1", 1)])],
        })
        .await
        .unwrap();
    assert_eq!(out.totals, vec![(Arc::from("acc1"), 259)]);
    // a dead database is an error (nothing acknowledged); after it is back the sink reconnects
    let mut pg = pg;
    pg.stop();
    let e = sink
        .flush(FlushBatch {
            month: Some(month),
            reports: vec![report("r1", 4, &[("app1", "acc1", 1)])],
        })
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("Postgres:"), "{e}");
    pg.start_again();
    let out = sink
        .flush(FlushBatch {
            month: Some(month),
            reports: vec![report("r1", 4, &[("app1", "acc1", 1)])],
        })
        .await
        .unwrap();
    assert_eq!(out.totals, vec![(Arc::from("acc1"), 260)]);
}
