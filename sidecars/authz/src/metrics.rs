//! Prometheus metrics with PEAS's names, types, labels and buckets (so PEAS's Grafana
//! dashboard keeps working), plus edgeguard's store staleness, refresh duration, version and
//! notification counters.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// PEAS's `peas_auth_request_duration_seconds` buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    1e-7, 5e-7, 1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];

/// The `table` label of `edgeguard_store_notifications_total`: the Grove tables the
/// triggers of migration 0003 name, every other value (a payload from another producer) is
/// `other`, so the label set stays bounded.
pub fn notification_table_label(table: &str) -> &'static str {
    match table {
        "portal_applications" => "portal_applications",
        "portal_application_settings" => "portal_application_settings",
        "accounts" => "accounts",
        _ => "other",
    }
}

/// A gauge vector whose series are replaced as a whole: series not set again are removed,
/// so label values that change (usage, plan, limit) do not pile up.
pub struct ReplacedGauges {
    pub gauges: GaugeVec,
    current: Mutex<HashSet<Vec<String>>>,
}

impl ReplacedGauges {
    fn new(gauges: GaugeVec) -> ReplacedGauges {
        ReplacedGauges {
            gauges,
            current: Mutex::new(HashSet::new()),
        }
    }

    /// Sets every `(labels, value)` and removes the series of the previous call not set now.
    pub fn replace(&self, series: Vec<(Vec<String>, f64)>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashSet::with_capacity(series.len());
        for (labels, value) in series {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.gauges.with_label_values(&refs).set(value);
            next.insert(labels);
        }
        for stale in current.difference(&next) {
            let refs: Vec<&str> = stale.iter().map(String::as_str).collect();
            let _ = self.gauges.remove_label_values(&refs);
        }
        *current = next;
    }
}

/// Every metric the service exports. Label values are bounded: app and account ids come only
/// from the store (see `service::app_label`), the rest are fixed sets.
pub struct Metrics {
    pub registry: Registry,
    pub auth_requests: IntCounterVec,
    pub auth_duration: HistogramVec,
    pub rate_limit_checks: IntCounterVec,
    pub store_size: IntGaugeVec,
    pub account_usage: ReplacedGauges,
    pub rate_limited_accounts: ReplacedGauges,
    pub refresh_errors: IntCounterVec,
    pub staleness: GaugeVec,
    pub refresh_duration: HistogramVec,
    pub store_loaded: IntGauge,
    pub store_version: IntGauge,
    pub notifications: IntCounterVec,
    pub store_feed_requests: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            auth_requests: IntCounterVec::new(
                opts("peas_auth_requests_total", "Total number of auth requests"),
                &["portal_app_id", "account_id", "status", "error_type"],
            )?,
            auth_duration: HistogramVec::new(
                HistogramOpts::new(
                    "peas_auth_request_duration_seconds",
                    "Duration of auth requests",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["portal_app_id", "status"],
            )?,
            rate_limit_checks: IntCounterVec::new(
                opts(
                    "peas_rate_limit_checks_total",
                    "Total number of rate limit checks",
                ),
                &["account_id", "plan_type", "decision"],
            )?,
            store_size: IntGaugeVec::new(
                opts("peas_store_size_total", "Current size of the stores"),
                &["store_type"],
            )?,
            account_usage: ReplacedGauges::new(GaugeVec::new(
                opts(
                    "peas_account_usage_total",
                    "Monthly usage of accounts with a rate limit",
                ),
                &["account_id", "plan_type", "rate_limit"],
            )?),
            rate_limited_accounts: ReplacedGauges::new(GaugeVec::new(
                opts(
                    "peas_rate_limited_accounts_total",
                    "Accounts over their monthly limit (value = usage)",
                ),
                &["account_id", "plan_type", "monthly_usage", "rate_limit"],
            )?),
            refresh_errors: IntCounterVec::new(
                opts(
                    "peas_data_source_refresh_errors_total",
                    "Data source refresh errors",
                ),
                &["source_type", "error_type"],
            )?,
            staleness: GaugeVec::new(
                opts(
                    "edgeguard_store_staleness_seconds",
                    "Seconds since the last successful load of a store",
                ),
                &["source_type"],
            )?,
            refresh_duration: HistogramVec::new(
                HistogramOpts::new(
                    "edgeguard_store_refresh_duration_seconds",
                    "Duration of successful store loads",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["source_type", "kind"],
            )?,
            store_loaded: IntGauge::new(
                "edgeguard_store_loaded",
                "1 once the portal-app store has data",
            )?,
            store_version: IntGauge::new(
                "edgeguard_store_version",
                "Version of the published portal-app snapshot",
            )?,
            notifications: IntCounterVec::new(
                opts(
                    "edgeguard_store_notifications_total",
                    "Postgres change notifications received",
                ),
                &["table"],
            )?,
            store_feed_requests: IntCounterVec::new(
                opts(
                    "edgeguard_store_feed_requests_total",
                    "Requests to the store feed (/store/v1/snapshot) by result",
                ),
                &["result"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.auth_requests.clone()))?;
        m.registry.register(Box::new(m.auth_duration.clone()))?;
        m.registry.register(Box::new(m.rate_limit_checks.clone()))?;
        m.registry.register(Box::new(m.store_size.clone()))?;
        m.registry
            .register(Box::new(m.account_usage.gauges.clone()))?;
        m.registry
            .register(Box::new(m.rate_limited_accounts.gauges.clone()))?;
        m.registry.register(Box::new(m.refresh_errors.clone()))?;
        m.registry.register(Box::new(m.staleness.clone()))?;
        m.registry.register(Box::new(m.refresh_duration.clone()))?;
        m.registry.register(Box::new(m.store_loaded.clone()))?;
        m.registry.register(Box::new(m.store_version.clone()))?;
        m.registry.register(Box::new(m.notifications.clone()))?;
        m.registry
            .register(Box::new(m.store_feed_requests.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // the series PEAS always shows, present from the start
        for source in ["portal_app_store", "rate_limit_store"] {
            m.refresh_errors
                .with_label_values(&[source, "postgres_error"]);
        }
        for store in [
            "portal_apps",
            "accounts",
            "rate_limited_accounts",
            "accounts_over_monthly_limit",
        ] {
            m.store_size.with_label_values(&[store]);
        }
        Ok(m)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_gauges_drop_series_not_set_again() {
        let m = Metrics::new().unwrap();
        let l = |a: &str, u: &str| vec![a.to_string(), "PLAN_FREE".into(), u.into(), "1".into()];
        m.rate_limited_accounts
            .replace(vec![(l("a", "10.00"), 10.0), (l("b", "20.00"), 20.0)]);
        m.rate_limited_accounts
            .replace(vec![(l("a", "11.00"), 11.0)]);
        let text = m.render();
        assert!(text.contains(r#"monthly_usage="11.00""#), "{text}");
        assert!(!text.contains(r#"monthly_usage="10.00""#), "{text}");
        assert!(!text.contains(r#"account_id="b""#), "{text}");
    }

    #[test]
    fn notification_tables_are_a_fixed_set() {
        assert_eq!(notification_table_label("accounts"), "accounts");
        assert_eq!(notification_table_label("x'); DROP"), "other");
    }
}
