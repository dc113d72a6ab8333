//! Hooks for metrics: the store calls them, the service turns them into Prometheus series.
//! Every method has an empty default, so an observer implements only what it needs.

use std::time::Duration;

use crate::snapshot::AccountUsage;

/// PEAS's `source_type` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceType {
    /// Portal apps (Postgres query, NOTIFY deltas, YAML file).
    PortalAppStore,
    /// Monthly usage (Postgres usage table; in YAML mode it comes with the apps).
    RateLimitStore,
}

impl SourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::PortalAppStore => "portal_app_store",
            SourceType::RateLimitStore => "rate_limit_store",
        }
    }
}

/// PEAS's `error_type` label of `peas_data_source_refresh_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Postgres unreachable, query failed or timed out.
    PostgresError,
    /// The YAML file is missing, unreadable or invalid.
    FileError,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::PostgresError => "postgres_error",
            ErrorType::FileError => "file_error",
        }
    }
}

/// What a successful refresh did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefreshKind {
    /// Everything re-read (interval, start, reconnect, YAML reload, usage refresh).
    Full,
    /// Only the apps a NOTIFY batch named were re-read.
    Incremental,
}

impl RefreshKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshKind::Full => "full",
            RefreshKind::Incremental => "incremental",
        }
    }
}

/// A successful refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshOk {
    pub source_type: SourceType,
    pub kind: RefreshKind,
    /// Query (or file read) plus building and publishing the snapshot.
    pub duration: Duration,
    /// Apps in the store afterwards.
    pub apps: usize,
    /// Distinct accounts among the apps (`store_size_total{store_type="accounts"}`); for
    /// `RateLimitStore`: accounts with a usage row this month.
    pub accounts: usize,
    /// Apps (or usage rows) that differ from the previous snapshot.
    pub changed: usize,
    /// Version published (unchanged when nothing changed).
    pub version: u64,
}

/// A NOTIFY batch applied as a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyApplied {
    /// Notifications folded into this batch.
    pub notifications: usize,
    /// App ids and account ids re-queried.
    pub app_ids: usize,
    pub account_ids: usize,
    pub upserted: usize,
    pub deleted: usize,
    /// From the first notification of the batch to the new snapshot being visible.
    pub latency: Duration,
    pub version: u64,
}

/// Store events. Implementations must be cheap and must not block: they are called on the
/// store's refresh task.
pub trait StoreObserver: Send + Sync {
    /// A refresh succeeded (also when nothing changed).
    fn refresh_ok(&self, _event: &RefreshOk) {}

    /// A refresh failed; the store keeps serving its last good data. The reason is logged
    /// by the store.
    fn refresh_error(&self, _source_type: SourceType, _error_type: ErrorType) {}

    /// The rate-limit summary after each usage refresh (and after each app refresh that
    /// changed something): every account with a monthly limit and a usage row this month.
    fn usage(&self, _summary: &[AccountUsage]) {}

    /// One NOTIFY received; `table` is the payload's `table` (or `"unknown"`).
    fn notification(&self, _table: &str) {}

    /// A NOTIFY batch was applied.
    fn notify_applied(&self, _event: &NotifyApplied) {}

    /// The LISTEN connection went up (`true`) or down (`false`).
    fn listen_state(&self, _connected: bool) {}

    /// Reading or writing the last-good snapshot file failed (logged by the store).
    fn snapshot_file_error(&self) {}
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl StoreObserver for NoopObserver {}
