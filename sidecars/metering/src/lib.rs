//! Usage metering for `edgeguard authz`: what the edge let through, counted once, in the
//! system of record.
//!
//! # Model
//!
//! - **Counting** happens where the verdict is made: the portal-auth filters (inside Envoy,
//!   both builds) and `edgeguard authz`'s own Checks count every request a portal-app verdict
//!   allows, per app (and its account), in memory. Nothing is called on the request path.
//! - **Reporting**: a filter sends what it counted as a [`UsageReport`] (`POST
//!   /store/v1/usage`, on the same cluster and token as its store sync), identified by
//!   `(reporter, seq)`. It keeps the report until it is acknowledged and resends it *unchanged*
//!   after a failure; counts taken meanwhile wait for the next report. authz's own counts are a
//!   report of its own (reporter `authz-<random>`), retried the same way.
//! - **Flushing** ([`Metering`]): reports are queued and written every flush interval
//!   (default 1 s) by one [`Sink::flush`] call — for Postgres ([`PgSink`]) one statement that
//!   records each report id in `edgeguard_usage_reports` (`ON CONFLICT DO NOTHING`) and adds
//!   only the entries of the reports that were new to `account_monthly_usage.metered_relays`
//!   and `edgeguard_app_monthly_usage`. A report is acknowledged only after that statement
//!   committed, so: a retried report (lost ack, another replica, a replica killed) is applied
//!   at most once; an acknowledged one is durable; an unacknowledged one is retried by its
//!   reporter until it is.
//! - **Enforcing**: the statement returns the new totals (`relays + metered_relays`) of the
//!   accounts it touched, which go straight into this replica's store ([`Target`]); other
//!   replicas see them through the store's usage poll.
//!
//! DB-less (YAML) mode uses [`MemorySink`]: the counts live in the replica's memory (one
//! replica; lost on restart).

mod counter;
mod flusher;
mod metrics;
mod sink;

pub use counter::LocalCounts;
pub use edgeguard_verdict::portal_wire::{UsageAck, UsageEntry, UsageReport};
pub use edgeguard_verdict::quota::Month;
pub use flusher::{Metering, MeteringConfig, SubmitError};
pub use metrics::MeteringMetrics;
pub use sink::{FlushBatch, FlushOutcome, MemorySink, MemoryTarget, PgSink, Sink, SinkError};

use std::sync::Arc;

/// Where new totals go (the store of this replica).
pub trait Target: Send + Sync {
    /// The store's clock (Unix seconds): the month counts are written to.
    fn now_unix(&self) -> i64;
    /// The accounts' new monthly totals (`relays + metered_relays`) for `month`.
    fn publish_totals(&self, month: Month, totals: Vec<(Arc<str>, u64)>);
}

/// A random id for a reporter (std seeds `RandomState` from the OS).
pub fn random_id(prefix: &str) -> String {
    use std::hash::BuildHasher;
    let a = std::collections::hash_map::RandomState::new().hash_one(1u8);
    let b = std::collections::hash_map::RandomState::new().hash_one(2u8);
    format!("{prefix}{a:016x}{b:08x}")
        .chars()
        .take(prefix.len() + 24)
        .collect()
}
