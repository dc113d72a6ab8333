//! The Postgres source: one refresh task (full loads, usage reloads and polls, the month
//! rollover, NOTIFY deltas, all serialised so a slow full load can never overwrite a newer
//! delta) and one LISTEN task.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use edgeguard_verdict::portal::PortalApp;
use edgeguard_verdict::quota::Month;
use rustc_hash::FxHashSet;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use crate::config::{describe, StoreConfig, StoreOptions};
use crate::observer::{ErrorType, NotifyApplied, RefreshKind, RefreshOk, SourceType};
use crate::pg::{
    apply_client_auth, connect, db_now, is_undefined_column, query_apps, query_devices,
    query_usage, query_usage_changed, OwnRows, CHANNEL,
};
use crate::snapshot::Origin;
use crate::store::{serve_snapshot_file, Backoff, FileWriter, LogThrottle, Publisher};

/// What the LISTEN task tells the refresh task.
#[derive(Debug)]
enum Msg {
    /// Re-query these apps and accounts.
    Delta(Batch),
    /// Notifications may have been missed (LISTEN (re)connected at `listening_since`) or a
    /// payload named no ids: reload everything.
    Resync {
        listening_since: Instant,
        reason: &'static str,
    },
}

#[derive(Debug, Default)]
struct Batch {
    app_ids: FxHashSet<String>,
    account_ids: FxHashSet<String>,
    notifications: usize,
    first_at: Option<Instant>,
    /// The device registry changed: read it again.
    devices: bool,
}

impl Batch {
    fn len(&self) -> usize {
        self.app_ids.len() + self.account_ids.len() + usize::from(self.devices)
    }
}

/// A NOTIFY payload of `0003_change_notify.sql` (or any producer using the same shape).
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    account_id: Option<String>,
}

pub(crate) fn spawn(
    publisher: Publisher,
    opts: PgConnectOptions,
    cfg: &StoreConfig,
    options: &StoreOptions,
) -> Vec<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(1024);
    let mut tasks = Vec::new();
    let listen = options.listen;
    if listen {
        let l = Listener {
            publisher: Publisher {
                shared: publisher.shared.clone(),
            },
            opts: opts.clone(),
            options: options.clone(),
            tx,
        };
        tasks.push(crate::background::handle().spawn(l.run()));
    } else {
        drop(tx);
    }
    let r = Refresher {
        target: describe(&opts),
        opts,
        conn: None,
        app_refresh: cfg.app_refresh,
        usage_refresh: cfg.usage_refresh,
        usage_poll: options.usage_poll,
        options: options.clone(),
        file: FileWriter::new(cfg.snapshot_file.clone()),
        tried_file: false,
        app_backoff: Backoff::new(options.retry_min, options.retry_max),
        usage_backoff: Backoff::new(options.retry_min, options.retry_max),
        poll_backoff: Backoff::new(options.retry_min, options.retry_max),
        app_log: LogThrottle::default(),
        usage_log: LogThrottle::default(),
        usage_read: None,
        metered_column: None,
        rollover_tried: None,
        last_full_started: None,
        last_missing_keys: None,
        publisher,
    };
    tasks.push(crate::background::handle().spawn(r.run(rx, listen)));
    tasks
}

/// What a full load read.
struct FullLoad {
    apps: crate::snapshot::AppMap,
    stats: crate::pg::RowStats,
    modes: OwnRows,
    devices: crate::snapshot::DeviceMap,
    device_rows: OwnRows,
}

/// Logs unusable rows of edgeguard's own tables.
fn log_own_rows(modes: OwnRows, devices: OwnRows) {
    if modes.bad_modes > 0 {
        tracing::warn!(
            count = modes.bad_modes,
            "edgeguard_app_client_auth: rows with an unknown mode; those apps accept device certificates only"
        );
    }
    if devices.bad_devices > 0 {
        tracing::warn!(
            count = devices.bad_devices,
            "edgeguard_devices: unreadable rows (or fingerprints that are not 64 hex digits) skipped; those devices are refused"
        );
    }
}

struct Refresher {
    publisher: Publisher,
    opts: PgConnectOptions,
    target: String,
    conn: Option<PgConnection>,
    app_refresh: Duration,
    usage_refresh: Duration,
    usage_poll: Option<Duration>,
    options: StoreOptions,
    file: FileWriter,
    tried_file: bool,
    app_backoff: Backoff,
    usage_backoff: Backoff,
    poll_backoff: Backoff,
    app_log: LogThrottle,
    usage_log: LogThrottle,
    last_full_started: Option<Instant>,
    last_missing_keys: Option<usize>,
    /// The month of the usage read from Postgres and the database time (µs since the epoch,
    /// taken just before) of the last full usage load or poll: the next poll reads the rows
    /// written since then (less [`POLL_OVERLAP_MICROS`]).
    usage_read: Option<(Month, i64)>,
    /// Whether `account_monthly_usage.metered_relays` exists (migration 0004); `None` until
    /// the first usage load. Every full usage load tries it again.
    metered_column: Option<bool>,
    /// The month a rollover reload was last started for (not retried every second while it
    /// fails: the usage backoff applies).
    rollover_tried: Option<Month>,
}

/// How far before the previous poll's database time a poll looks: a row's `updated_at` is
/// its transaction's start (`now()`), so a write that committed after the previous poll may
/// carry an earlier time.
const POLL_OVERLAP_MICROS: i64 = 5_000_000;

/// How often the month is checked when no shorter poll does it.
const ROLLOVER_CHECK: Duration = Duration::from_secs(1);

enum Failure {
    Db(sqlx::Error),
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Db(e) => write!(f, "{e}"),
            Failure::Timeout(d) => write!(f, "query timed out after {d:?}"),
        }
    }
}

impl Refresher {
    async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            let c = connect(&self.opts, self.options.connect_timeout).await?;
            self.conn = Some(c);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    fn drop_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            // the connection may be dead: close it without waiting for the server
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
            });
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, listen: bool) {
        let shared = self.publisher.shared.clone();
        let now = Instant::now();
        // with LISTEN, the first full load waits (briefly) for LISTEN to be up, so nothing
        // committed between the two is missed and only one load is needed
        let mut next_full = if listen {
            now + Duration::from_secs(1)
        } else {
            now
        };
        let mut next_usage = now;
        let mut next_poll = now + self.usage_poll.unwrap_or(ROLLOVER_CHECK);
        let mut next_check = now + ROLLOVER_CHECK;
        let mut rx_open = true;
        let polling = self.usage_poll.is_some();
        loop {
            tokio::select! {
                biased;
                _ = shared.refresh_now.notified() => {
                    next_full = Instant::now();
                    next_usage = Instant::now();
                }
                msg = rx.recv(), if rx_open => match msg {
                    None => rx_open = false,
                    Some(Msg::Resync { listening_since, reason }) => {
                        let covered = self.last_full_started.is_some_and(|s| s >= listening_since);
                        if !covered {
                            tracing::debug!(reason, "full reload requested");
                            next_full = next_full.min(Instant::now());
                        }
                    }
                    Some(Msg::Delta(batch)) => {
                        if let Some(retry) = self.delta(batch).await {
                            next_full = next_full.min(Instant::now() + retry);
                        }
                    }
                },
                _ = sleep_until(next_full.into()) => {
                    next_full = Instant::now() + self.full().await;
                }
                _ = sleep_until(next_usage.into()) => {
                    next_usage = Instant::now() + self.usage().await;
                }
                _ = sleep_until(next_poll.into()), if polling => {
                    next_poll = Instant::now() + if self.rollover_due() {
                        next_usage = Instant::now() + self.usage().await;
                        self.usage_poll.unwrap_or(ROLLOVER_CHECK)
                    } else {
                        self.poll().await
                    };
                }
                _ = sleep_until(next_check.into()) => {
                    next_check = Instant::now() + ROLLOVER_CHECK;
                    if self.rollover_due() {
                        next_usage = Instant::now() + self.usage().await;
                    }
                }
            }
        }
    }

    /// Whether the store's clock has entered a month other than the loaded usage's, and no
    /// reload was started for that month yet.
    fn rollover_due(&mut self) -> bool {
        let shared = &self.publisher.shared;
        let snap = shared.current();
        if !snap.usage_loaded() {
            // the usage retry loop loads the current month anyway
            return false;
        }
        let month = shared.clock_month();
        if snap.usage_month() == Some(month) || self.rollover_tried == Some(month) {
            return false;
        }
        self.rollover_tried = Some(month);
        tracing::info!(
            from = %snap.usage_month().map(|m| m.to_string()).unwrap_or_default(),
            to = %month,
            "month rolled over: reloading monthly usage"
        );
        true
    }

    async fn load_all(&mut self) -> Result<FullLoad, Failure> {
        let timeout = self.options.query_timeout;
        let work = async {
            let conn = self.conn().await?;
            let (mut apps, stats) = query_apps(conn, None).await?;
            let modes = apply_client_auth(conn, &mut apps, None).await?;
            let (devices, device_rows) = query_devices(conn).await?;
            Ok::<_, sqlx::Error>(FullLoad {
                apps,
                stats,
                modes,
                devices,
                device_rows,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::Db(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        }
    }

    /// A full load; returns the delay until the next one.
    async fn full(&mut self) -> Duration {
        let shared = self.publisher.shared.clone();
        let started = Instant::now();
        self.last_full_started = Some(started);
        match self.load_all().await {
            Ok(FullLoad {
                apps,
                stats,
                modes,
                devices,
                device_rows,
            }) => {
                log_own_rows(modes, device_rows);
                let missing = stats.missing_keys;
                if self.last_missing_keys != Some(missing)
                    || stats.negative_limits > 0
                    || stats.decode_errors > 0
                {
                    stats.log("portal apps");
                } else if missing > 0 {
                    tracing::debug!(
                        count = missing,
                        "apps requiring a key without one (unchanged)"
                    );
                }
                self.last_missing_keys = Some(missing);
                let published = self.publisher.publish_full(
                    apps,
                    None,
                    Origin::Postgres,
                    Some(SystemTime::now()),
                );
                let device_count = devices.len();
                let devices_published = self.publisher.publish_devices(devices);
                if devices_published.devices_changed > 0 {
                    tracing::info!(
                        devices = device_count,
                        changed = devices_published.devices_changed,
                        "device certificates loaded"
                    );
                }
                let duration = started.elapsed();
                let snap = shared.current();
                let recovered = {
                    let mut st = shared.status();
                    let recovered = st.consecutive_errors;
                    st.last_success = Some(SystemTime::now());
                    st.last_refresh_duration = Some(duration);
                    st.consecutive_errors = 0;
                    recovered
                };
                if recovered > 0 {
                    tracing::info!(
                        failed_attempts = recovered,
                        apps = snap.app_count(),
                        "portal app store: Postgres is back"
                    );
                }
                self.app_backoff.reset();
                self.app_log.clear();
                tracing::debug!(
                    apps = snap.app_count(),
                    changed = published.apps_changed,
                    version = published.version,
                    took_ms = duration.as_millis() as u64,
                    "portal apps reloaded"
                );
                shared.observer.refresh_ok(&RefreshOk {
                    source_type: SourceType::PortalAppStore,
                    kind: RefreshKind::Full,
                    duration,
                    apps: snap.app_count(),
                    accounts: snap.account_count(),
                    changed: published.apps_changed,
                    version: published.version,
                });
                if published.apps_changed > 0 {
                    shared.observer.usage(&snap.usage_summary());
                }
                self.file.write(&shared, snap).await;
                self.app_refresh
            }
            Err(e) => {
                self.drop_conn();
                let message = e.to_string();
                {
                    let mut st = shared.status();
                    st.refresh_errors += 1;
                    st.consecutive_errors += 1;
                    st.last_error = Some(message.clone());
                }
                shared
                    .observer
                    .refresh_error(SourceType::PortalAppStore, ErrorType::PostgresError);
                let loaded = shared.current().apps_loaded();
                let retry = self.app_backoff.next_delay().min(self.app_refresh);
                if self.app_log.allow(&message) {
                    if loaded {
                        tracing::warn!(postgres = %self.target, error = %message, retry_in_ms = retry.as_millis() as u64, "portal app refresh failed; serving the last good data");
                    } else {
                        tracing::warn!(postgres = %self.target, error = %message, retry_in_ms = retry.as_millis() as u64, "portal apps not loaded yet: cannot read Postgres");
                    }
                }
                if !loaded && !self.tried_file {
                    self.tried_file = true;
                    if let Some(path) = self.file.path().cloned() {
                        serve_snapshot_file(&self.publisher, &path).await;
                    }
                }
                retry
            }
        }
    }

    /// What every failed usage read (full load or poll) does: drop a connection that may be
    /// dead (not after an SQL error: the connection is fine), count the error in the status
    /// and the observer. Returns the message to log.
    fn usage_failed(&mut self, e: &Failure) -> String {
        if matches!(e, Failure::Timeout(_))
            || matches!(e, Failure::Db(err) if !matches!(err, sqlx::Error::Database(_)))
        {
            self.drop_conn();
        }
        let message = e.to_string();
        let shared = self.publisher.shared.clone();
        {
            let mut st = shared.status();
            st.usage_errors += 1;
            st.usage_last_error = Some(message.clone());
        }
        shared
            .observer
            .refresh_error(SourceType::RateLimitStore, ErrorType::PostgresError);
        message
    }

    /// A full usage load of the clock's month; returns the delay until the next one.
    async fn usage(&mut self) -> Duration {
        let shared = self.publisher.shared.clone();
        let started = Instant::now();
        let timeout = self.options.query_timeout;
        let month = shared.clock_month();
        let work = async {
            let conn = self.conn().await?;
            let now = db_now(conn).await?;
            // metered_relays is tried on every full load, so applying 0004 is picked up
            match query_usage(conn, month, true).await {
                Ok(u) => Ok((u, now, true)),
                Err(e) if is_undefined_column(&e) => {
                    let u = query_usage(conn, month, false).await?;
                    Ok((u, now, false))
                }
                Err(e) => Err(e),
            }
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(u)) => Ok(u),
            Ok(Err(e)) => Err(Failure::Db(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        };
        match result {
            Ok((usage, db_time, metered)) => {
                self.note_metered_column(metered);
                self.usage_read = Some((month, db_time));
                let rows = usage.len();
                let published = self.publisher.publish_usage(usage, month);
                {
                    let mut st = shared.status();
                    st.usage_last_success = Some(SystemTime::now());
                }
                self.usage_backoff.reset();
                self.usage_log.clear();
                let snap = shared.current();
                shared.observer.refresh_ok(&RefreshOk {
                    source_type: SourceType::RateLimitStore,
                    kind: RefreshKind::Full,
                    duration: started.elapsed(),
                    apps: snap.app_count(),
                    accounts: rows,
                    changed: published.usage_changed,
                    version: published.version,
                });
                shared.observer.usage(&snap.usage_summary());
                // the last-good file carries usage too: rewrite it when usage changed
                self.file.write(&shared, snap).await;
                self.usage_refresh
            }
            Err(e) => {
                let message = self.usage_failed(&e);
                let retry = self.usage_backoff.next_delay().min(self.usage_refresh);
                let usage_loaded = shared.current().usage_loaded();
                if self.usage_log.allow(&message) {
                    if usage_loaded {
                        tracing::warn!(postgres = %self.target, month = %month, error = %message, retry_in_ms = retry.as_millis() as u64, "monthly usage refresh failed (is migration 0002 applied? `edgeguard migrate` applies it); keeping the previous usage");
                    } else {
                        tracing::warn!(postgres = %self.target, month = %month, error = %message, retry_in_ms = retry.as_millis() as u64, "monthly usage not loaded yet (is migration 0002 applied? `edgeguard migrate` applies it): not ready until it is, quotas cannot be enforced without it");
                    }
                }
                if !usage_loaded && !self.tried_file {
                    self.tried_file = true;
                    if let Some(path) = self.file.path().cloned() {
                        serve_snapshot_file(&self.publisher, &path).await;
                    }
                }
                retry
            }
        }
    }

    /// Records whether `metered_relays` exists; warns when it is missing (once per change).
    fn note_metered_column(&mut self, metered: bool) {
        let before = self.metered_column.replace(metered);
        if before == Some(metered) {
            return;
        }
        if metered {
            if before.is_some() {
                tracing::info!(postgres = %self.target, "account_monthly_usage.metered_relays found (migration 0004): metered relays now count toward quotas");
            }
        } else {
            tracing::warn!(postgres = %self.target, "account_monthly_usage has no metered_relays column (migration 0004 not applied): quotas count only `relays`, relays metered by edgeguard are not counted until `edgeguard migrate` applies 0004");
        }
    }

    /// An incremental usage read: the rows of the loaded month written since the previous
    /// read (full or poll), published as a partial update that only raises totals (a full
    /// load may lower them). Returns the delay until the next poll.
    async fn poll(&mut self) -> Duration {
        let shared = self.publisher.shared.clone();
        let every = self.usage_poll.unwrap_or(ROLLOVER_CHECK);
        // only on top of a full load of the current month from Postgres
        let Some((month, since)) = self.usage_read else {
            return every;
        };
        if shared.current().usage_month() != Some(month) || shared.clock_month() != month {
            return every;
        }
        let metered = self.metered_column.unwrap_or(true);
        let started = Instant::now();
        let timeout = self.options.query_timeout;
        let work = async {
            let conn = self.conn().await?;
            let now = db_now(conn).await?;
            let rows =
                query_usage_changed(conn, month, since - POLL_OVERLAP_MICROS, metered).await?;
            Ok::<_, sqlx::Error>((rows, now))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::Db(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        };
        match result {
            Ok((rows, now)) => {
                self.usage_read = Some((month, now));
                self.poll_backoff.reset();
                let read = rows.len();
                let published = self.publisher.publish_usage_partial(month, rows, true);
                if published.usage_changed > 0 {
                    tracing::debug!(
                        rows = read,
                        changed = published.usage_changed,
                        version = published.version,
                        "monthly usage poll applied"
                    );
                    let snap = shared.current();
                    shared.observer.refresh_ok(&RefreshOk {
                        source_type: SourceType::RateLimitStore,
                        kind: RefreshKind::Incremental,
                        duration: started.elapsed(),
                        apps: snap.app_count(),
                        accounts: read,
                        changed: published.usage_changed,
                        version: published.version,
                    });
                }
                every
            }
            Err(e) => {
                let message = self.usage_failed(&e);
                let retry = self.poll_backoff.next_delay().max(every);
                if self.usage_log.allow(&message) {
                    tracing::warn!(postgres = %self.target, month = %month, error = %message, retry_in_ms = retry.as_millis() as u64, "monthly usage poll failed; keeping the current usage");
                }
                retry
            }
        }
    }

    /// Reads the device registry again and publishes the difference; `Some(delay)` when it
    /// failed and a full reload must follow.
    async fn reload_devices(&mut self, first_at: Option<Instant>) -> Option<Duration> {
        let timeout = self.options.query_timeout;
        let work = async {
            let conn = self.conn().await?;
            query_devices(conn).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok((devices, rows))) => {
                log_own_rows(OwnRows::default(), rows);
                let count = devices.len();
                let published = self.publisher.publish_devices(devices);
                tracing::info!(
                    devices = count,
                    changed = published.devices_changed,
                    version = published.version,
                    latency_ms = first_at
                        .map(|t| t.elapsed().as_millis() as u64)
                        .unwrap_or(0),
                    "device registry changed: device certificates reloaded"
                );
                None
            }
            Ok(Err(e)) => {
                self.drop_conn();
                tracing::warn!(postgres = %self.target, error = %e, "device registry reload failed; a full reload will follow");
                Some(self.app_backoff.next_delay())
            }
            Err(_) => {
                self.drop_conn();
                tracing::warn!(postgres = %self.target, timeout_ms = timeout.as_millis() as u64, "device registry reload timed out; a full reload will follow");
                Some(self.app_backoff.next_delay())
            }
        }
    }

    /// Applies a NOTIFY batch; returns `Some(delay)` when a full reload must follow.
    async fn delta(&mut self, batch: Batch) -> Option<Duration> {
        let shared = self.publisher.shared.clone();
        let snap = shared.current();
        if !snap.apps_loaded() || snap.origin != Origin::Postgres {
            // the pending first full load will see these changes
            return None;
        }
        if batch.len() > self.options.notify_max_batch {
            tracing::info!(
                ids = batch.len(),
                "large change batch: full reload instead of a delta"
            );
            return Some(Duration::ZERO);
        }
        if batch.devices {
            if let Some(retry) = self.reload_devices(batch.first_at).await {
                return Some(retry);
            }
            if batch.app_ids.is_empty() && batch.account_ids.is_empty() {
                return None;
            }
        }
        let app_ids: Vec<String> = batch.app_ids.into_iter().collect();
        let account_ids: Vec<String> = batch.account_ids.into_iter().collect();
        let timeout = self.options.query_timeout;
        let work = async {
            let conn = self.conn().await?;
            let (mut apps, stats) = query_apps(conn, Some((&app_ids, &account_ids))).await?;
            let ids: Vec<String> = apps.keys().map(|k| k.to_string()).collect();
            let modes = apply_client_auth(conn, &mut apps, Some(&ids)).await?;
            log_own_rows(modes, OwnRows::default());
            Ok::<_, sqlx::Error>((apps, stats))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::Db(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        };
        match result {
            Ok((mut apps, stats)) => {
                if stats.missing_keys > 0 || stats.negative_limits > 0 || stats.decode_errors > 0 {
                    stats.log("changed portal apps");
                }
                let mut changes: Vec<(Arc<str>, Option<PortalApp>)> =
                    Vec::with_capacity(apps.len() + app_ids.len());
                for id in &app_ids {
                    if !apps.contains_key(id.as_str()) {
                        changes.push((Arc::from(id.as_str()), None));
                    }
                }
                changes.extend(apps.drain().map(|(id, app)| (id, Some(app))));
                let published = self.publisher.publish_delta(changes);
                let latency = batch.first_at.map(|t| t.elapsed()).unwrap_or_default();
                shared.status().deltas_applied += 1;
                tracing::debug!(
                    apps = app_ids.len(),
                    accounts = account_ids.len(),
                    upserted = published.upserted,
                    deleted = published.deleted,
                    version = published.version,
                    latency_ms = latency.as_millis() as u64,
                    "NOTIFY delta applied"
                );
                shared.observer.notify_applied(&NotifyApplied {
                    notifications: batch.notifications,
                    app_ids: app_ids.len(),
                    account_ids: account_ids.len(),
                    upserted: published.upserted,
                    deleted: published.deleted,
                    latency,
                    version: published.version,
                });
                let snap = shared.current();
                shared.observer.refresh_ok(&RefreshOk {
                    source_type: SourceType::PortalAppStore,
                    kind: RefreshKind::Incremental,
                    duration: latency,
                    apps: snap.app_count(),
                    accounts: snap.account_count(),
                    changed: published.apps_changed,
                    version: published.version,
                });
                None
            }
            Err(e) => {
                self.drop_conn();
                let message = e.to_string();
                {
                    let mut st = shared.status();
                    st.refresh_errors += 1;
                    st.last_error = Some(message.clone());
                }
                shared
                    .observer
                    .refresh_error(SourceType::PortalAppStore, ErrorType::PostgresError);
                tracing::warn!(postgres = %self.target, error = %message, "NOTIFY delta query failed; a full reload will follow");
                Some(self.app_backoff.next_delay())
            }
        }
    }
}

struct Listener {
    publisher: Publisher,
    opts: PgConnectOptions,
    options: StoreOptions,
    tx: mpsc::Sender<Msg>,
}

enum Parsed {
    Ids {
        app_id: Option<String>,
        account_id: Option<String>,
    },
    Everything,
    /// A change to migration 0005's `edgeguard_devices` (kept by `edgeguard enroll`): the
    /// device registry is read again.
    Devices,
}

/// The tables whose changes make the store read the device certificates again (migration
/// 0005's devices, and the certificates revoked or replaced by a re-key).
const DEVICE_TABLES: [&str; 2] = ["edgeguard_devices", "edgeguard_revoked_certificates"];

fn parse_payload(payload: &str) -> (String, Parsed) {
    match serde_json::from_str::<Payload>(payload) {
        Ok(p) => {
            let table = p.table.unwrap_or_else(|| "unknown".into());
            if DEVICE_TABLES.contains(&table.as_str()) {
                return (table, Parsed::Devices);
            }
            let truncate =
                p.op.as_deref()
                    .is_some_and(|o| o.eq_ignore_ascii_case("TRUNCATE"));
            let app_id = p.app_id.filter(|s| !s.is_empty());
            let account_id = p.account_id.filter(|s| !s.is_empty());
            if truncate || (app_id.is_none() && account_id.is_none()) {
                (table, Parsed::Everything)
            } else {
                (table, Parsed::Ids { app_id, account_id })
            }
        }
        Err(_) => ("unknown".into(), Parsed::Everything),
    }
}

impl Listener {
    fn set_listening(&self, up: bool) {
        let shared = &self.publisher.shared;
        let changed = {
            let mut st = shared.status();
            let changed = st.listening != up;
            st.listening = up;
            changed
        };
        if changed {
            shared.observer.listen_state(up);
        }
    }

    async fn run(self) {
        let target = describe(&self.opts);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.options.connect_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_lazy_with(self.opts.clone());
        let mut backoff = Backoff::new(self.options.retry_min, self.options.retry_max);
        let mut throttle = LogThrottle::default();
        let mut released = false;
        loop {
            let attempt = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.ignore_pool_close_event(true);
                l.listen(CHANNEL).await?;
                Ok::<PgListener, sqlx::Error>(l)
            };
            let result = tokio::time::timeout(self.options.connect_timeout * 2, attempt).await;
            if result.as_ref().map_or(true, |r| r.is_err())
                && !std::mem::replace(&mut released, true)
            {
                // the refresh task waits for LISTEN before its first load: do not keep it waiting
                if self
                    .tx
                    .send(Msg::Resync {
                        listening_since: Instant::now(),
                        reason: "LISTEN unavailable",
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut listener = match result {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    let delay = backoff.next_delay();
                    let message = e.to_string();
                    if throttle.allow(&message) {
                        tracing::warn!(postgres = %target, error = %message, "cannot LISTEN for portal app changes; retrying (interval refresh still applies)");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(_) => {
                    let delay = backoff.next_delay();
                    if throttle.allow("timeout") {
                        tracing::warn!(postgres = %target, "LISTEN connection attempt timed out; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            backoff.reset();
            throttle.clear();
            released = true;
            self.set_listening(true);
            tracing::info!(postgres = %target, channel = CHANNEL, "listening for portal app changes");
            if self
                .tx
                .send(Msg::Resync {
                    listening_since: Instant::now(),
                    reason: "LISTEN connected",
                })
                .await
                .is_err()
            {
                return;
            }
            let lost = self.pump(&mut listener).await;
            self.set_listening(false);
            drop(listener);
            tracing::warn!(postgres = %target, reason = %lost, "LISTEN connection lost; reconnecting (a full reload follows)");
            // check the source now: a dead database shows up as refresh errors and staleness
            // instead of going unnoticed until the next interval
            if self
                .tx
                .send(Msg::Resync {
                    listening_since: Instant::now(),
                    reason: "LISTEN lost",
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Receives notifications until the connection fails; returns why.
    async fn pump(&self, listener: &mut PgListener) -> String {
        let shared = self.publisher.shared.clone();
        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        loop {
            let keepalive = tokio::time::sleep(self.options.listen_keepalive);
            tokio::select! {
                r = listener.try_recv() => match r {
                    Ok(Some(n)) => {
                        let (table, parsed) = parse_payload(n.payload());
                        shared.status().notifications += 1;
                        shared.observer.notification(&table);
                        match parsed {
                            Parsed::Devices => {
                                if batch.first_at.is_none() {
                                    batch.first_at = Some(Instant::now());
                                    deadline = Some(Instant::now() + self.options.notify_debounce);
                                }
                                batch.notifications += 1;
                                batch.devices = true;
                            }
                            Parsed::Everything => {
                                tracing::debug!(table = %table, payload = n.payload(), "notification without ids: full reload");
                                if self.tx.send(Msg::Resync { listening_since: Instant::now(), reason: "notification without ids" }).await.is_err() {
                                    return "store stopped".into();
                                }
                            }
                            Parsed::Ids { app_id, account_id } => {
                                if batch.first_at.is_none() {
                                    batch.first_at = Some(Instant::now());
                                    deadline = Some(Instant::now() + self.options.notify_debounce);
                                }
                                batch.notifications += 1;
                                if let Some(a) = app_id {
                                    batch.app_ids.insert(a);
                                }
                                if let Some(a) = account_id {
                                    batch.account_ids.insert(a);
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        // sqlx re-connected and re-LISTENed already; notifications in between are lost
                        self.flush(&mut batch).await;
                        deadline = None;
                        if self.tx.send(Msg::Resync { listening_since: Instant::now(), reason: "LISTEN reconnected" }).await.is_err() {
                            return "store stopped".into();
                        }
                        tracing::warn!("LISTEN connection dropped and re-established; full reload requested");
                    }
                    Err(e) => {
                        self.flush(&mut batch).await;
                        return e.to_string();
                    }
                },
                _ = async { if let Some(d) = deadline { sleep_until(d.into()).await } else { std::future::pending::<()>().await } } => {
                    self.flush(&mut batch).await;
                    deadline = None;
                }
                _ = keepalive, if deadline.is_none() => {
                    let ping = tokio::time::timeout(self.options.connect_timeout, sqlx::query("SELECT 1").execute(&mut *listener)).await;
                    match ping {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("keepalive failed: {e}"),
                        Err(_) => return "keepalive timed out".into(),
                    }
                }
            }
        }
    }

    async fn flush(&self, batch: &mut Batch) {
        if batch.len() == 0 {
            return;
        }
        let b = std::mem::take(batch);
        let _ = self.tx.send(Msg::Delta(b)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let (t, p) =
            parse_payload(r#"{"table":"portal_applications","op":"UPDATE","app_id":"a1"}"#);
        assert_eq!(t, "portal_applications");
        assert!(matches!(p, Parsed::Ids { app_id: Some(ref a), account_id: None } if a == "a1"));
        let (_, p) = parse_payload(r#"{"table":"accounts","op":"DELETE","account_id":"x"}"#);
        assert!(matches!(
            p,
            Parsed::Ids {
                app_id: None,
                account_id: Some(_)
            }
        ));
        for devices in [
            r#"{"table":"edgeguard_devices","op":"INSERT","device_id":"dev_1","account_id":"a"}"#,
            r#"{"table":"edgeguard_devices","op":"TRUNCATE"}"#,
            r#"{"table":"edgeguard_revoked_certificates","op":"INSERT"}"#,
        ] {
            assert!(
                matches!(parse_payload(devices).1, Parsed::Devices),
                "{devices}"
            );
        }
        let (_, p) =
            parse_payload(r#"{"table":"edgeguard_app_client_auth","op":"INSERT","app_id":"a1"}"#);
        assert!(matches!(p, Parsed::Ids { app_id: Some(ref a), .. } if a == "a1"));
        for everything in [
            r#"{"table":"accounts","op":"TRUNCATE"}"#,
            "not json",
            "{}",
            r#"{"app_id":""}"#,
        ] {
            assert!(
                matches!(parse_payload(everything).1, Parsed::Everything),
                "{everything}"
            );
        }
    }
}
