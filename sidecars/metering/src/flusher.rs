//! The queue of reports and the flush loop.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgeguard_verdict::portal_wire::{DeviceSeen, UsageEntry, UsageReport};
use edgeguard_verdict::quota::Month;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::counter::LocalCounts;
use crate::metrics::MeteringMetrics;
use crate::sink::{FlushBatch, Sink};
use crate::Target;

/// Settings of [`Metering`].
#[derive(Clone, Debug)]
pub struct MeteringConfig {
    /// How often queued reports and authz's own counts are written (one statement each time).
    pub flush_interval: Duration,
    /// This replica's reporter id for its own counts (also `applied_by`).
    pub instance: String,
    /// Most reports queued at once; more are refused (`503`, the reporter retries).
    pub max_pending_reports: usize,
}

impl Default for MeteringConfig {
    fn default() -> MeteringConfig {
        MeteringConfig {
            flush_interval: Duration::from_secs(1),
            instance: crate::random_id("authz-"),
            max_pending_reports: 100_000,
        }
    }
}

/// Why a report was not acknowledged (the reporter keeps it and retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the usage queue is full ({0} reports waiting); retry later")]
    Busy(usize),
    #[error("the usage flush failed: {0}")]
    Flush(String),
    #[error("metering is shutting down")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<bool, String>>;

struct Waiting {
    report: UsageReport,
    waiters: Vec<Waiter>,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    reports: FxHashMap<(String, u64), Waiting>,
    relays: u64,
}

struct Inner {
    queue: Mutex<Queue>,
    counts: LocalCounts,
    metrics: MeteringMetrics,
    max_pending: usize,
}

impl Inner {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Usage metering of one `edgeguard authz` replica: counts its own Checks, queues reports,
/// flushes both every `flush_interval`, and acknowledges each report once it is durable.
pub struct Metering {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Metering {
    /// Starts the flush loop on the current Tokio runtime.
    pub fn start<S: Sink>(
        config: MeteringConfig,
        sink: S,
        target: Arc<dyn Target>,
        registry: &prometheus::Registry,
    ) -> Result<Metering, prometheus::Error> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            counts: LocalCounts::default(),
            metrics: MeteringMetrics::new(registry)?,
            max_pending: config.max_pending_reports,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(inner.clone(), config, sink, target, stopped));
        Ok(Metering {
            inner,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Counts one request an ext_authz Check allowed.
    pub fn count(&self, app_id: &str, account_id: &Arc<str>) {
        self.inner.counts.count(app_id, account_id);
    }

    /// Records a device's allowed request (its heartbeat), at `now` (Unix seconds).
    pub fn seen(&self, device_id: &Arc<str>, now: i64) {
        self.inner.counts.seen(device_id, now);
    }

    /// Queues a report and waits until it is durable: `Ok(true)` applied now, `Ok(false)`
    /// applied before (a retry).
    pub async fn submit(&self, report: UsageReport) -> Result<bool, SubmitError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.inner.queue();
            let key = (report.reporter.clone(), report.seq);
            if let Some(w) = q.reports.get_mut(&key) {
                // the same report again while the first copy waits: one write, two answers
                w.waiters.push(tx);
            } else {
                if q.reports.len() >= self.inner.max_pending {
                    self.inner
                        .metrics
                        .reports
                        .with_label_values(&["refused"])
                        .inc();
                    return Err(SubmitError::Busy(q.reports.len()));
                }
                q.relays = q.relays.saturating_add(report.relays());
                q.reports.insert(
                    key,
                    Waiting {
                        report,
                        waiters: vec![tx],
                        since: Instant::now(),
                    },
                );
            }
        }
        match rx.await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(e)) => Err(SubmitError::Flush(e)),
            Err(_) => Err(SubmitError::Stopped),
        }
    }

    /// Counts a refused report (malformed) in the metrics.
    pub fn refused(&self) {
        self.inner
            .metrics
            .reports
            .with_label_values(&["refused"])
            .inc();
    }

    /// Flushes what is pending one last time and stops (waits at most `within`).
    pub async fn shutdown(&self, within: Duration) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            if tokio::time::timeout(within, t).await.is_err() {
                tracing::warn!("usage metering: the last flush did not finish in time");
            }
        }
    }
}

async fn run<S: Sink>(
    inner: Arc<Inner>,
    config: MeteringConfig,
    mut sink: S,
    target: Arc<dyn Target>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // authz's own counts, as a report that is retried unchanged until it is written
    let mut local: Option<UsageReport> = None;
    let mut seq = 0u64;
    let mut failures = 0u64;
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = stopped.changed() => true,
        };
        if local.is_none() {
            let drained = inner.counts.drain();
            let seen = inner.counts.drain_seen();
            if !drained.is_empty() || !seen.is_empty() {
                seq += 1;
                local = Some(UsageReport {
                    reporter: config.instance.clone(),
                    seq,
                    entries: drained
                        .into_iter()
                        .map(|(app_id, account_id, relays)| UsageEntry {
                            app_id,
                            account_id,
                            relays,
                        })
                        .collect(),
                    devices: seen
                        .into_iter()
                        .map(|(device_id, last_seen)| DeviceSeen {
                            device_id,
                            last_seen,
                        })
                        .collect(),
                });
            }
        }
        let taken: Vec<Waiting> = {
            let mut q = inner.queue();
            q.relays = 0;
            q.reports.drain().map(|(_, w)| w).collect()
        };
        if !taken.is_empty() || local.is_some() {
            let month = Month::of(target.now_unix());
            let mut reports: Vec<UsageReport> = Vec::with_capacity(taken.len() + 1);
            let mut waiting = Vec::with_capacity(taken.len());
            let mut oldest = Instant::now();
            for w in taken {
                oldest = oldest.min(w.since);
                waiting.push((
                    w.report.reporter.clone(),
                    w.report.seq,
                    w.report.relays(),
                    w.waiters,
                ));
                reports.push(w.report);
            }
            if let Some(l) = &local {
                reports.push(l.clone());
            }
            let started = Instant::now();
            let result = sink
                .flush(FlushBatch {
                    month: Some(month),
                    reports,
                })
                .await;
            let m = &inner.metrics;
            m.flush_duration.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(outcome) => {
                    if failures > 0 {
                        tracing::info!(failed_flushes = failures, "usage flushes work again");
                    }
                    failures = 0;
                    m.flushes.with_label_values(&["ok"]).inc();
                    m.flush_rows
                        .set(i64::try_from(outcome.rows).unwrap_or(i64::MAX));
                    m.flush_rows_total.inc_by(outcome.rows);
                    m.flush_lag.set(oldest.elapsed().as_secs_f64());
                    let applied: FxHashSet<(String, u64)> = outcome.applied.into_iter().collect();
                    for (reporter, seq, relays, waiters) in waiting {
                        let new = applied.contains(&(reporter, seq));
                        m.reports
                            .with_label_values(&[if new { "applied" } else { "duplicate" }])
                            .inc();
                        if new {
                            m.relays_applied
                                .with_label_values(&["filter"])
                                .inc_by(relays);
                        }
                        for w in waiters {
                            let _ = w.send(Ok(new));
                        }
                    }
                    if let Some(l) = local.take() {
                        if applied.contains(&(l.reporter.clone(), l.seq)) {
                            m.relays_applied
                                .with_label_values(&["check"])
                                .inc_by(l.relays());
                        }
                    }
                    if !outcome.totals.is_empty() {
                        target.publish_totals(month, outcome.totals);
                    }
                }
                Err(e) => {
                    failures += 1;
                    m.flushes.with_label_values(&["failed"]).inc();
                    let message = e.to_string();
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %message, failed_flushes = failures, reports = waiting.len(), "usage flush failed; reports are not acknowledged (their reporters retry), this replica's own counts are kept");
                    }
                    for (_, _, _, waiters) in waiting {
                        m.reports.with_label_values(&["failed"]).inc();
                        for w in waiters {
                            let _ = w.send(Err(message.clone()));
                        }
                    }
                }
            }
        }
        let q = inner.queue();
        inner
            .metrics
            .pending_reports
            .set(i64::try_from(q.reports.len()).unwrap_or(i64::MAX));
        let pending = q
            .relays
            .saturating_add(inner.counts.pending())
            .saturating_add(local.as_ref().map(UsageReport::relays).unwrap_or(0));
        drop(q);
        inner
            .metrics
            .pending_relays
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if last {
            if let Some(l) = &local {
                tracing::warn!(
                    relays = l.relays(),
                    "usage metering stopped with this replica's last counts unwritten"
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{FlushOutcome, MemorySink, MemoryTarget, SinkError};

    #[derive(Default)]
    struct Store {
        metered: Mutex<FxHashMap<Arc<str>, u64>>,
        published: Mutex<Vec<(Arc<str>, u64)>>,
    }

    impl MemoryTarget for Store {
        fn add_metered(&self, _month: Month, deltas: Vec<(Arc<str>, u64)>) -> Vec<(Arc<str>, u64)> {
            let mut m = self.metered.lock().unwrap();
            deltas
                .into_iter()
                .map(|(a, d)| {
                    let t = m.entry(a.clone()).or_insert(0);
                    *t += d;
                    (a, *t)
                })
                .collect()
        }
    }

    impl Target for Store {
        fn now_unix(&self) -> i64 {
            1_796_180_400
        }
        fn publish_totals(&self, _month: Month, totals: Vec<(Arc<str>, u64)>) {
            self.published.lock().unwrap().extend(totals);
        }
    }

    fn report(reporter: &str, seq: u64, relays: u64) -> UsageReport {
        UsageReport {
            reporter: reporter.into(),
            seq,
            entries: vec![UsageEntry {
                app_id: "app".into(),
                account_id: "acc".into(),
                relays,
            }],
            devices: vec![],
        }
    }

    fn config() -> MeteringConfig {
        MeteringConfig {
            flush_interval: Duration::from_millis(20),
            instance: "authz-test".into(),
            max_pending_reports: 2,
        }
    }

    #[tokio::test]
    async fn reports_apply_once_and_own_counts_join_them() {
        let store = Arc::new(Store::default());
        let sink = MemorySink::new(store.clone());
        let m =
            Metering::start(config(), sink, store.clone(), &prometheus::Registry::new()).unwrap();
        assert_eq!(m.submit(report("r", 1, 5)).await, Ok(true));
        // a retry of an applied report is acknowledged, not applied again
        assert_eq!(m.submit(report("r", 1, 5)).await, Ok(false));
        // the same report twice at once: both answered, applied once
        let (a, b) = tokio::join!(m.submit(report("r", 2, 3)), m.submit(report("r", 2, 3)));
        assert_eq!((a, b), (Ok(true), Ok(true)));
        let acc: Arc<str> = "acc".into();
        m.count("app", &acc);
        m.count("app", &acc);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.metered.lock().unwrap().get("acc"), Some(&10));
        m.shutdown(Duration::from_secs(1)).await;
    }

    struct Failing(Arc<Mutex<u32>>);
    impl Sink for Failing {
        async fn flush(&mut self, batch: FlushBatch) -> Result<FlushOutcome, SinkError> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            if *n <= 2 {
                return Err(SinkError::Timeout(Duration::from_millis(1)));
            }
            Ok(FlushOutcome {
                applied: batch
                    .reports
                    .iter()
                    .map(|r| (r.reporter.clone(), r.seq))
                    .collect(),
                ..FlushOutcome::default()
            })
        }
    }

    #[tokio::test]
    async fn a_failed_flush_is_not_acknowledged_and_own_counts_retry_with_the_same_seq() {
        let store = Arc::new(Store::default());
        let calls = Arc::new(Mutex::new(0));
        let m = Metering::start(
            config(),
            Failing(calls.clone()),
            store,
            &prometheus::Registry::new(),
        )
        .unwrap();
        let e = m.submit(report("r", 1, 5)).await.unwrap_err();
        assert!(matches!(e, SubmitError::Flush(_)), "{e:?}");
        assert_eq!(m.submit(report("r", 1, 5)).await.unwrap_err(), e);
        assert_eq!(m.submit(report("r", 1, 5)).await, Ok(true));
        m.shutdown(Duration::from_secs(1)).await;
    }
}
