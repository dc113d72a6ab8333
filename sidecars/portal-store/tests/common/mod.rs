//! Shared by the store's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeguard_portal_store::{
    AccountUsage, ErrorType, NotifyApplied, RefreshKind, RefreshOk, SourceType, StoreObserver,
};
use edgeguard_tests::postgres::Postgres;

/// Everything the store reported.
#[derive(Default)]
pub struct Recorder {
    pub ok: Mutex<Vec<RefreshOk>>,
    pub errors: Mutex<Vec<(SourceType, ErrorType)>>,
    pub usage: Mutex<Vec<Vec<AccountUsage>>>,
    pub notifications: Mutex<Vec<String>>,
    pub applied: Mutex<Vec<NotifyApplied>>,
    pub listen: Mutex<Vec<bool>>,
    pub file_errors: Mutex<usize>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    pub fn count_ok(&self, source: SourceType, kind: RefreshKind) -> usize {
        self.ok
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.source_type == source && e.kind == kind)
            .count()
    }

    pub fn full_app_loads(&self) -> usize {
        self.count_ok(SourceType::PortalAppStore, RefreshKind::Full)
    }

    pub fn count_errors(&self, source: SourceType, error: ErrorType) -> usize {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .filter(|e| **e == (source, error))
            .count()
    }

    pub fn last_usage(&self) -> Option<Vec<AccountUsage>> {
        self.usage.lock().unwrap().last().cloned()
    }
}

impl StoreObserver for Recorder {
    fn refresh_ok(&self, event: &RefreshOk) {
        self.ok.lock().unwrap().push(event.clone());
    }
    fn refresh_error(&self, source_type: SourceType, error_type: ErrorType) {
        self.errors.lock().unwrap().push((source_type, error_type));
    }
    fn usage(&self, summary: &[AccountUsage]) {
        self.usage.lock().unwrap().push(summary.to_vec());
    }
    fn notification(&self, table: &str) {
        self.notifications.lock().unwrap().push(table.to_string());
    }
    fn notify_applied(&self, event: &NotifyApplied) {
        self.applied.lock().unwrap().push(event.clone());
    }
    fn listen_state(&self, connected: bool) {
        self.listen.lock().unwrap().push(connected);
    }
    fn snapshot_file_error(&self) {
        *self.file_errors.lock().unwrap() += 1;
    }
}

/// Polls `f` every 10 ms until it holds; returns how long that took.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Seed data exercising PEAS's row mapping: NULL account, NULL plan, NULL/empty keys with
/// `secret_key_required`, a negative limit, a soft-deleted app.
pub const SEED: &str = "
INSERT INTO accounts (id, plan_type, monthly_user_limit) VALUES
  ('acc_free', 'PLAN_FREE', NULL),
  ('acc_unl', 'PLAN_UNLIMITED', 40000000),
  ('acc_neg', 'PLAN_UNLIMITED', -5),
  ('acc_null', NULL, NULL);
INSERT INTO portal_applications (id, account_id, deleted) VALUES
  ('app_pub', 'acc_free', false),
  ('app_key', 'acc_unl', false),
  ('app_nullkey', 'acc_free', false),
  ('app_emptykey', 'acc_free', false),
  ('app_notreq', 'acc_free', false),
  ('app_nullreq', 'acc_free', false),
  ('app_noacc', NULL, false),
  ('app_neg', 'acc_neg', false),
  ('app_nullplan', 'acc_null', false),
  ('app_deleted', 'acc_free', true);
INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES
  ('app_key', 'key-one', true),
  ('app_nullkey', NULL, true),
  ('app_emptykey', '', true),
  ('app_notreq', 'ignored-key', false),
  ('app_nullreq', 'ignored-too', NULL),
  ('app_deleted', 'gone', true);
";

/// Current UTC month, as SQL.
pub const THIS_MONTH: &str = "date_trunc('month', now() AT TIME ZONE 'UTC')::date";

/// A Postgres with the Grove schema, the usage table, the NOTIFY triggers (when
/// `notify_triggers`) and the seed.
pub async fn seeded_postgres(notify_triggers: bool) -> Postgres {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    if notify_triggers {
        edgeguard_portal_store::migrate(&pg.url(), true)
            .await
            .unwrap();
    } else {
        // only 0001 and 0002: no triggers
        for (_, sql) in &edgeguard_portal_store::pg::MIGRATIONS[..2] {
            pg.psql(sql);
        }
    }
    pg.psql(SEED);
    pg
}

/// Schema, triggers and seed in one transaction (a store polling meanwhile sees all or nothing).
pub fn schema_and_seed_atomically(pg: &Postgres) {
    let mut sql = String::from("BEGIN;\n");
    for (_, m) in &edgeguard_portal_store::pg::MIGRATIONS {
        sql.push_str(m);
        sql.push('\n');
    }
    sql.push_str(SEED);
    sql.push_str("COMMIT;\n");
    pg.psql(&sql);
}

pub fn fast_options() -> edgeguard_portal_store::StoreOptions {
    edgeguard_portal_store::StoreOptions {
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}
