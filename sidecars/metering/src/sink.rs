//! Where flushed counts go: Postgres ([`PgSink`], one statement per flush) or this replica's
//! memory ([`MemorySink`], DB-less mode).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeguard_verdict::portal_wire::UsageReport;
use edgeguard_verdict::quota::Month;
use futures_util::TryStreamExt;
use rustc_hash::FxHashMap;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

/// The reports of one flush (distinct `(reporter, seq)`), for one month.
#[derive(Clone, Debug, Default)]
pub struct FlushBatch {
    pub month: Option<Month>,
    pub reports: Vec<UsageReport>,
}

/// What a flush wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// The reports that were new (applied now); the others were applied before.
    pub applied: Vec<(String, u64)>,
    /// New totals of the accounts touched.
    pub totals: Vec<(Arc<str>, u64)>,
    /// Rows touched (report ids + app rows + account rows).
    pub rows: u64,
    /// Devices whose last-seen time moved.
    pub heartbeats: u64,
}

/// Why a flush failed (nothing of it was applied).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the usage flush timed out after {0:?}")]
    Timeout(Duration),
}

/// Writes a batch atomically: all of it or nothing.
pub trait Sink: Send + 'static {
    fn flush(
        &mut self,
        batch: FlushBatch,
    ) -> impl Future<Output = Result<FlushOutcome, SinkError>> + Send;
}

/// The flush, as one statement: record each report id (a retried one conflicts and drops
/// out), then add the entries of the new reports per app and per account, returning the
/// applied ids, the accounts' new totals and the number of app rows.
pub const FLUSH_SQL: &str = "\
WITH new_reports AS (
    INSERT INTO edgeguard_usage_reports (reporter, seq, relays, applied_by)
    SELECT r.reporter, r.seq, r.relays, $10
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(reporter, seq, relays)
    ON CONFLICT (reporter, seq) DO NOTHING
    RETURNING reporter, seq
), entries AS (
    SELECT e.app_id, e.account_id, e.relays
    FROM unnest($4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[])
         AS e(reporter, seq, app_id, account_id, relays)
    JOIN new_reports n ON n.reporter = e.reporter AND n.seq = e.seq
), apps AS (
    INSERT INTO edgeguard_app_monthly_usage AS u (app_id, month, account_id, relays)
    SELECT app_id, $9::date, max(account_id), sum(relays)::bigint FROM entries GROUP BY app_id
    ON CONFLICT (app_id, month) DO UPDATE
        SET relays = u.relays + EXCLUDED.relays, account_id = EXCLUDED.account_id, updated_at = now()
    RETURNING 1
), accounts AS (
    INSERT INTO account_monthly_usage AS u (account_id, month, metered_relays)
    SELECT account_id, $9::date, sum(relays)::bigint FROM entries
    WHERE account_id <> '' GROUP BY account_id
    ON CONFLICT (account_id, month) DO UPDATE
        SET metered_relays = u.metered_relays + EXCLUDED.metered_relays, updated_at = now()
    RETURNING account_id, u.relays + u.metered_relays AS total
)
SELECT 0 AS kind, reporter AS id, seq AS n FROM new_reports
UNION ALL SELECT 1, account_id, total FROM accounts
UNION ALL SELECT 2, '', count(*) FROM apps";

/// Heartbeats (`$1` device ids, `$2` Unix seconds, clamped to [epoch, the database's now]
/// so a wrong clock or a hostile report can neither fail the statement nor pin a future time):
/// each device's `last_seen_at` moves forward to the latest time seen (migration 0005; last_seen_at is not a column its change
/// trigger watches, so this sends no notification). Idempotent, so not part of the
/// exactly-once statement: a failure is logged, and those times are lost (the device's next
/// request brings a newer one).
pub const HEARTBEAT_SQL: &str = "\
UPDATE edgeguard_devices d SET last_seen_at = s.t
FROM (SELECT id, to_timestamp(LEAST(GREATEST(max(t), 0), extract(epoch FROM now())::int8)) AS t
      FROM unnest($1::text[], $2::bigint[]) AS s(id, t) GROUP BY id) s
WHERE d.id = s.id AND (d.last_seen_at IS NULL OR d.last_seen_at < s.t)";

/// Applied-report ids are kept this long (a reporter retrying longer could be applied twice).
pub const REPORT_RETENTION_DAYS: u32 = 35;
const CLEANUP_SQL: &str =
    "DELETE FROM edgeguard_usage_reports WHERE applied_at < now() - make_interval(days => $1)";
const CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// The Postgres sink: one connection, re-opened after an error.
pub struct PgSink {
    opts: PgConnectOptions,
    conn: Option<PgConnection>,
    /// Who applied a report (`edgeguard_usage_reports.applied_by`).
    instance: String,
    timeout: Duration,
    last_cleanup: Option<Instant>,
}

impl PgSink {
    pub fn new(opts: PgConnectOptions, instance: String, timeout: Duration) -> PgSink {
        PgSink {
            opts,
            conn: None,
            instance,
            timeout,
            last_cleanup: None,
        }
    }

    async fn write(&mut self, batch: &FlushBatch) -> Result<FlushOutcome, sqlx::Error> {
        let month = batch
            .month
            .map(Month::first_day)
            .unwrap_or_else(|| "1970-01-01".into());
        let n = batch.reports.len();
        let (mut r_rep, mut r_seq, mut r_rel) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut e_rep, mut e_seq, mut e_app, mut e_acc, mut e_rel) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &batch.reports {
            let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
            r_rep.push(r.reporter.clone());
            r_seq.push(seq);
            r_rel.push(i64::try_from(r.relays()).unwrap_or(i64::MAX));
            for e in &r.entries {
                e_rep.push(r.reporter.clone());
                e_seq.push(seq);
                e_app.push(e.app_id.clone());
                e_acc.push(e.account_id.clone());
                e_rel.push(i64::try_from(e.relays).unwrap_or(i64::MAX));
            }
        }
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.opts).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let mut out = FlushOutcome::default();
        {
            let mut rows = sqlx::query(FLUSH_SQL)
                .bind(r_rep)
                .bind(r_seq)
                .bind(r_rel)
                .bind(e_rep)
                .bind(e_seq)
                .bind(e_app)
                .bind(e_acc)
                .bind(e_rel)
                .bind(month)
                .bind(&self.instance)
                .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                let kind: i32 = row.try_get(0)?;
                let id: String = row.try_get(1)?;
                let n: i64 = row.try_get(2)?;
                match kind {
                    0 => {
                        out.rows += 1;
                        out.applied.push((id, u64::try_from(n).unwrap_or(0)));
                    }
                    1 => {
                        out.rows += 1;
                        out.totals
                            .push((Arc::from(id.as_str()), u64::try_from(n).unwrap_or(0)));
                    }
                    _ => out.rows += u64::try_from(n).unwrap_or(0),
                }
            }
        }
        let (ids, times): (Vec<String>, Vec<i64>) = batch
            .reports
            .iter()
            .flat_map(|r| r.devices.iter())
            .map(|d| (d.device_id.clone(), d.last_seen))
            .unzip();
        if !ids.is_empty() {
            match sqlx::query(HEARTBEAT_SQL)
                .bind(ids)
                .bind(times)
                .execute(&mut *conn)
                .await
            {
                Ok(done) => out.heartbeats = done.rows_affected(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record device heartbeats (last_seen_at); their next requests will")
                }
            }
        }
        if self
            .last_cleanup
            .is_none_or(|t| t.elapsed() >= CLEANUP_EVERY)
        {
            self.last_cleanup = Some(Instant::now());
            if let Err(e) = sqlx::query(CLEANUP_SQL)
                .bind(i32::try_from(REPORT_RETENTION_DAYS).unwrap_or(35))
                .execute(&mut *conn)
                .await
            {
                tracing::warn!(error = %e, "cannot delete old applied-report ids (will retry)");
            }
        }
        Ok(out)
    }
}

impl Sink for PgSink {
    async fn flush(&mut self, batch: FlushBatch) -> Result<FlushOutcome, SinkError> {
        match tokio::time::timeout(self.timeout, self.write(&batch)).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => {
                // the statement is atomic: nothing was applied; the connection may be dead
                self.conn = None;
                Err(SinkError::Postgres(e))
            }
            Err(_) => {
                // the statement may still commit: its reports are not acknowledged, their
                // retries find their ids recorded if it did
                self.conn = None;
                Err(SinkError::Timeout(self.timeout))
            }
        }
    }
}

/// A store that keeps metered counts in memory (DB-less mode).
pub trait MemoryTarget: Send + Sync + 'static {
    /// Adds `deltas` to the accounts' metered counts of `month`; returns their new totals.
    fn add_metered(&self, month: Month, deltas: Vec<(Arc<str>, u64)>) -> Vec<(Arc<str>, u64)>;
}

/// DB-less sink: counts go to the store's memory; a report is new when its `seq` is above the
/// last one applied for its reporter (a reporter sends one report at a time, in order).
pub struct MemorySink {
    target: Arc<dyn MemoryTarget>,
    last_seq: FxHashMap<String, u64>,
}

impl MemorySink {
    pub fn new(target: Arc<dyn MemoryTarget>) -> MemorySink {
        MemorySink {
            target,
            last_seq: FxHashMap::default(),
        }
    }
}

impl Sink for MemorySink {
    async fn flush(&mut self, batch: FlushBatch) -> Result<FlushOutcome, SinkError> {
        let mut out = FlushOutcome::default();
        let mut deltas: FxHashMap<Arc<str>, u64> = FxHashMap::default();
        for r in batch.reports {
            let last = self.last_seq.entry(r.reporter.clone()).or_insert(0);
            if r.seq <= *last {
                continue;
            }
            *last = r.seq;
            out.rows += 1;
            for e in &r.entries {
                if !e.account_id.is_empty() {
                    *deltas.entry(Arc::from(e.account_id.as_str())).or_insert(0) += e.relays;
                }
            }
            out.applied.push((r.reporter, r.seq));
        }
        if let Some(month) = batch.month {
            if !deltas.is_empty() {
                out.totals = self.target.add_metered(month, deltas.into_iter().collect());
                out.rows += out.totals.len() as u64;
            }
        }
        Ok(out)
    }
}
