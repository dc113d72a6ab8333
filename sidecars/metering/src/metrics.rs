//! Prometheus metrics of metering (registered in authz's registry).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metering metric.
pub struct MeteringMetrics {
    /// Relays written, by where they were counted (`source`: `filter` report or authz `check`).
    pub relays_applied: IntCounterVec,
    /// Reports by outcome: `applied`, `duplicate` (a retry of one applied before), `failed`
    /// (the flush failed; the reporter retries), `refused` (malformed, queue full).
    pub reports: IntCounterVec,
    /// Flushes by outcome (`ok`, `failed`).
    pub flushes: IntCounterVec,
    pub flush_duration: Histogram,
    /// Rows the last flush touched (reports recorded + app rows + account rows).
    pub flush_rows: IntGauge,
    pub flush_rows_total: IntCounter,
    /// Seconds from the oldest report's arrival to its durable write, last flush.
    pub flush_lag: prometheus::Gauge,
    /// Reports waiting for the next flush.
    pub pending_reports: IntGauge,
    /// Relays waiting (queued reports + authz's own counts not yet written).
    pub pending_relays: IntGauge,
}

impl MeteringMetrics {
    pub fn new(registry: &Registry) -> Result<MeteringMetrics, prometheus::Error> {
        let m = MeteringMetrics {
            relays_applied: IntCounterVec::new(
                Opts::new(
                    "edgeguard_usage_relays_applied_total",
                    "Relays (allowed requests) added to the usage tables, by where they were counted",
                ),
                &["source"],
            )?,
            reports: IntCounterVec::new(
                Opts::new(
                    "edgeguard_usage_reports_total",
                    "Usage reports received, by outcome",
                ),
                &["result"],
            )?,
            flushes: IntCounterVec::new(
                Opts::new("edgeguard_usage_flushes_total", "Usage flushes, by outcome"),
                &["result"],
            )?,
            flush_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edgeguard_usage_flush_duration_seconds",
                    "Time of one usage flush (one statement)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            flush_rows: IntGauge::new(
                "edgeguard_usage_flush_rows",
                "Rows the last usage flush touched (report ids + app rows + account rows)",
            )?,
            flush_rows_total: IntCounter::new(
                "edgeguard_usage_flush_rows_total",
                "Rows touched by usage flushes",
            )?,
            flush_lag: prometheus::Gauge::new(
                "edgeguard_usage_flush_lag_seconds",
                "Seconds from the oldest flushed report's arrival to its durable write (last flush)",
            )?,
            pending_reports: IntGauge::new(
                "edgeguard_usage_pending_reports",
                "Usage reports waiting for the next flush",
            )?,
            pending_relays: IntGauge::new(
                "edgeguard_usage_pending_relays",
                "Relays counted or reported and not yet written",
            )?,
        };
        registry.register(Box::new(m.relays_applied.clone()))?;
        registry.register(Box::new(m.reports.clone()))?;
        registry.register(Box::new(m.flushes.clone()))?;
        registry.register(Box::new(m.flush_duration.clone()))?;
        registry.register(Box::new(m.flush_rows.clone()))?;
        registry.register(Box::new(m.flush_rows_total.clone()))?;
        registry.register(Box::new(m.flush_lag.clone()))?;
        registry.register(Box::new(m.pending_reports.clone()))?;
        registry.register(Box::new(m.pending_relays.clone()))?;
        Ok(m)
    }
}
