//! The store handle, shared state, and publishing (diff → version → change log → swap).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use edgeguard_verdict::portal::PortalApp;
use edgeguard_verdict::quota::Month;
use rustc_hash::FxHashMap;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::changes::{ChangeKind, ChangeLog, ChangeSet};
use crate::config::{parse_url, validate, Source, StoreConfig, StoreError, StoreOptions};
use crate::observer::StoreObserver;
use crate::snapshot::{count_accounts, AppMap, DeviceMap, Origin, Overlay, Snapshot, UsageMap};

/// Health and freshness of the store (for `/readyz`, metrics, logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStatus {
    /// Last successful full read of the apps from the source (Postgres query or YAML file).
    pub last_success: Option<SystemTime>,
    /// How long that read (query/parse + build + publish) took.
    pub last_refresh_duration: Option<Duration>,
    /// Failed app refreshes since start, and in a row now.
    pub refresh_errors: u64,
    pub consecutive_errors: u64,
    /// The last app refresh error (never contains secrets).
    pub last_error: Option<String>,
    /// Last successful usage read, and usage errors since start.
    pub usage_last_success: Option<SystemTime>,
    pub usage_errors: u64,
    pub usage_last_error: Option<String>,
    /// Whether the LISTEN connection is up (Postgres with `listen`).
    pub listening: bool,
    /// NOTIFY payloads received, and deltas applied.
    pub notifications: u64,
    pub deltas_applied: u64,
}

pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Held by every publish from reading the current snapshot to announcing the next one:
    /// the refresh task and callers of [`Store::publish_usage_totals`] /
    /// [`Store::add_metered`] publish concurrently.
    writer: Mutex<()>,
    log: Mutex<ChangeLog>,
    status: Mutex<StoreStatus>,
    pub(crate) observer: Arc<dyn StoreObserver>,
    version_tx: watch::Sender<u64>,
    /// `Store::refresh_now` wakes the refresh task.
    pub(crate) refresh_now: Notify,
    /// [`StoreOptions::usage_clock_offset_secs`].
    clock_offset_secs: i64,
    /// YAML mode: the relays metered in this process (see [`Metered`]); `None` with Postgres.
    pub(crate) metered: Option<Mutex<Metered>>,
}

/// YAML mode's usage: the file's `monthly_usage` plus the relays counted through
/// [`Store::add_metered`] this month (in memory only: lost on restart).
#[derive(Debug)]
pub(crate) struct Metered {
    /// The month `counts` belong to.
    pub(crate) month: Month,
    /// The last good file's usage (`None` until a file was loaded).
    pub(crate) file: Option<UsageMap>,
    pub(crate) counts: FxHashMap<Arc<str>, u64>,
}

impl Metered {
    pub(crate) fn new(month: Month) -> Metered {
        Metered {
            month,
            file: None,
            counts: FxHashMap::default(),
        }
    }

    /// The total of one account: file usage + metered (`None`: neither knows it).
    fn total(&self, account: &str) -> Option<u64> {
        let file = self.file.as_ref().and_then(|f| f.get(account).copied());
        let metered = self.counts.get(account).copied();
        match (file, metered) {
            (None, None) => None,
            (f, m) => Some(f.unwrap_or(0).saturating_add(m.unwrap_or(0))),
        }
    }

    /// The file's usage with the metered counts added.
    pub(crate) fn combined(&self, file: &UsageMap) -> UsageMap {
        let mut usage = file.clone();
        for (account, n) in &self.counts {
            let e = usage.entry(account.clone()).or_insert(0);
            *e = e.saturating_add(*n);
        }
        usage
    }

    /// Starts `month` when it is not the current one: the metered counts are dropped and
    /// the file's usage republished alone. Returns whether the month changed.
    pub(crate) fn roll_to(&mut self, month: Month, publisher: &Publisher) -> bool {
        if month == self.month {
            return false;
        }
        let dropped = self.counts.len();
        let previous = self.month;
        self.month = month;
        self.counts = FxHashMap::default();
        if let Some(file) = &self.file {
            let p = publisher.publish_usage(file.clone(), month);
            tracing::info!(
                from = %previous,
                to = %month,
                metered_accounts_dropped = dropped,
                version = p.version,
                "month rolled over: metered relays reset, the file's monthly_usage republished"
            );
        }
        true
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding these locks cannot leave them inconsistent: keep going
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn status(&self) -> MutexGuard<'_, StoreStatus> {
        lock(&self.status)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        lock(&self.writer)
    }

    /// Unix seconds now, shifted by the usage clock offset.
    pub(crate) fn now_unix(&self) -> i64 {
        let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        now.saturating_add(self.clock_offset_secs)
    }

    /// The month of the store's clock.
    pub(crate) fn clock_month(&self) -> Month {
        Month::of(self.now_unix())
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// Counts of a publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Published {
    pub version: u64,
    pub apps_changed: usize,
    pub usage_changed: usize,
    pub upserted: usize,
    pub deleted: usize,
    pub devices_changed: usize,
}

/// The only writer of snapshots: owned by the store's refresh task.
pub(crate) struct Publisher {
    pub(crate) shared: Arc<Shared>,
}

/// Differences of apps, up to `cap` entries listed (`None` beyond).
fn diff_apps(old: &Snapshot, new: &AppMap, cap: usize) -> (usize, Option<Vec<ChangeKind>>) {
    let mut count = 0usize;
    let mut list = Some(Vec::new());
    let mut push = |kind: ChangeKind, count: &mut usize| {
        *count += 1;
        if *count > cap {
            list = None;
        } else if let Some(l) = list.as_mut() {
            l.push(kind);
        }
    };
    for (id, app) in new.iter() {
        if old.get(id) != Some(app) {
            push(
                ChangeKind::App {
                    id: id.clone(),
                    app: Some(app.clone()),
                },
                &mut count,
            );
        }
    }
    for (id, _) in old.apps() {
        if !new.contains_key(id) {
            push(
                ChangeKind::App {
                    id: Arc::from(id),
                    app: None,
                },
                &mut count,
            );
        }
    }
    (count, list)
}

fn diff_usage(old: &UsageMap, new: &UsageMap, cap: usize) -> (usize, Option<Vec<ChangeKind>>) {
    let mut count = 0usize;
    let mut list = Some(Vec::new());
    let changes = new
        .iter()
        .filter(|(a, u)| old.get(&***a) != Some(*u))
        .map(|(a, u)| ChangeKind::Usage {
            account_id: a.clone(),
            relays: Some(*u),
        })
        .chain(
            old.keys()
                .filter(|a| !new.contains_key(&***a))
                .map(|a| ChangeKind::Usage {
                    account_id: a.clone(),
                    relays: None,
                }),
        );
    for kind in changes {
        count += 1;
        if count > cap {
            list = None;
        } else if let Some(l) = list.as_mut() {
            l.push(kind);
        }
    }
    (count, list)
}

fn join_lists(a: Option<Vec<ChangeKind>>, b: Option<Vec<ChangeKind>>) -> Option<Vec<ChangeKind>> {
    let mut a = a?;
    a.extend(b?);
    Some(a)
}

impl Publisher {
    fn cap(&self) -> usize {
        lock(&self.shared.log).capacity()
    }

    /// Swaps in `next`; logs `changes` under its version when the version is new.
    fn publish(&self, next: Snapshot, changes: Option<Vec<ChangeKind>>, bumped: bool) {
        let version = next.version;
        {
            let mut log = lock(&self.shared.log);
            if bumped {
                log.record(version, changes);
            }
            crate::background::retire(self.shared.snapshot.swap(Arc::new(next)));
        }
        if bumped {
            self.shared.version_tx.send_replace(version);
        }
    }

    /// Replaces all apps (and usage, when given): a full load. The snapshot is loaded once
    /// usage has been given too (here or by [`Publisher::publish_usage`]).
    pub(crate) fn publish_full(
        &self,
        apps: AppMap,
        usage: Option<(UsageMap, Month)>,
        origin: Origin,
        data_time: Option<SystemTime>,
    ) -> Published {
        // the app diff and count (O(apps)) are computed before taking the writer lock, so a
        // usage publish from another thread does not wait for them: only the refresh task
        // publishes apps, so they cannot change meanwhile (checked, recomputed if they did)
        let cap = self.cap();
        let pre = self.shared.current();
        let (mut apps_changed, mut app_list) = diff_apps(&pre, &apps, cap);
        let account_count = count_accounts(apps.values());
        let _writer = self.shared.writer();
        let cur = self.shared.current();
        if !(Arc::ptr_eq(&pre.base, &cur.base)
            && Arc::ptr_eq(&pre.overlay, &cur.overlay)
            && pre.apps_loaded == cur.apps_loaded)
        {
            (apps_changed, app_list) = diff_apps(&cur, &apps, cap);
        }
        let (usage, usage_month) = match usage {
            Some((u, m)) => (Some(u), Some(m)),
            None => (None, cur.usage_month),
        };
        let (usage_changed, usage_list) = match &usage {
            Some(u) => diff_usage(&cur.usage, u, cap),
            None => (0, Some(Vec::new())),
        };
        let usage_loaded = cur.usage_loaded || usage.is_some();
        let loaded_changed = !cur.apps_loaded || usage_loaded != cur.usage_loaded;
        let bumped = loaded_changed || apps_changed + usage_changed > 0;
        let version = if bumped { cur.version + 1 } else { cur.version };
        // the first load is not logged change by change: consumers take a full snapshot
        let list = if cur.is_loaded() {
            join_lists(app_list, usage_list).filter(|l| l.len() <= cap)
        } else {
            None
        };
        let next = Snapshot {
            version,
            apps_loaded: true,
            usage_loaded,
            origin,
            data_time,
            app_count: apps.len(),
            account_count,
            base: Arc::new(apps),
            overlay: Arc::new(Overlay::default()),
            usage: match usage {
                Some(u) if usage_changed > 0 || !cur.usage_loaded => Arc::new(u),
                _ => cur.usage.clone(),
            },
            usage_month,
            devices: cur.devices.clone(),
        };
        self.publish(next, list, bumped);
        Published {
            version,
            apps_changed,
            usage_changed,
            ..Published::default()
        }
    }

    /// Applies upserts and deletions (NOTIFY deltas); only effective changes count.
    pub(crate) fn publish_delta(&self, changes: Vec<(Arc<str>, Option<PortalApp>)>) -> Published {
        let _writer = self.shared.writer();
        let cur = self.shared.current();
        let effective: Vec<(Arc<str>, Option<PortalApp>)> = changes
            .into_iter()
            .filter(|(id, app)| cur.get(id) != app.as_ref())
            .collect();
        if effective.is_empty() {
            return Published {
                version: cur.version,
                ..Published::default()
            };
        }
        let upserted = effective.iter().filter(|(_, a)| a.is_some()).count();
        let deleted = effective.len() - upserted;
        let (overlay, app_count) = cur.overlay_with(&effective);
        let mut next = Snapshot {
            version: cur.version + 1,
            overlay: Arc::new(overlay),
            app_count,
            ..(*cur).clone()
        };
        // fold a big overlay into a new base (lookups stay one probe, memory bounded)
        if next.overlay_len() > 4096.max(next.base.len() / 8) {
            let base = next.folded_base();
            next.base = Arc::new(base);
            next.overlay = Arc::new(Overlay::default());
        }
        let list: Vec<ChangeKind> = effective
            .into_iter()
            .map(|(id, app)| ChangeKind::App { id, app })
            .collect();
        let version = next.version;
        self.publish(next, Some(list), true);
        Published {
            version,
            apps_changed: upserted + deleted,
            upserted,
            deleted,
            ..Published::default()
        }
    }

    /// Replaces the usage with `month`'s (and marks it loaded).
    pub(crate) fn publish_usage(&self, usage: UsageMap, month: Month) -> Published {
        let cap = self.cap();
        let _writer = self.shared.writer();
        let cur = self.shared.current();
        let (changed, list) = diff_usage(&cur.usage, &usage, cap);
        if changed == 0 && cur.usage_loaded {
            if cur.usage_month != Some(month) {
                // same data, another month (e.g. no usage either side of a rollover): not a
                // new version, but the snapshot says which month it counts
                let next = Snapshot {
                    usage_month: Some(month),
                    ..(*cur).clone()
                };
                self.publish(next, None, false);
            }
            return Published {
                version: cur.version,
                ..Published::default()
            };
        }
        let next = Snapshot {
            version: cur.version + 1,
            usage: Arc::new(usage),
            usage_loaded: true,
            usage_month: Some(month),
            ..(*cur).clone()
        };
        let version = next.version;
        // until the store is loaded, consumers have nothing to apply a change to: they take
        // a full snapshot once it is
        let list = if cur.is_loaded() { list } else { None };
        self.publish(next, list, true);
        Published {
            version,
            usage_changed: changed,
            ..Published::default()
        }
    }

    /// Sets some accounts' usage totals for `month` (a partial update: other accounts keep
    /// theirs). Ignored unless usage is loaded and counts `month`. With `only_raise`, a total
    /// below the current one is not applied. Only effective changes make a new version.
    pub(crate) fn publish_usage_partial(
        &self,
        month: Month,
        totals: Vec<(Arc<str>, u64)>,
        only_raise: bool,
    ) -> Published {
        let _writer = self.shared.writer();
        let cur = self.shared.current();
        let unchanged = Published {
            version: cur.version,
            ..Published::default()
        };
        if !cur.usage_loaded || cur.usage_month != Some(month) {
            return unchanged;
        }
        // later entries for the same account win
        let mut wanted: FxHashMap<Arc<str>, u64> = FxHashMap::default();
        for (account, n) in totals {
            wanted.insert(account, n);
        }
        let effective: Vec<(Arc<str>, u64)> = wanted
            .into_iter()
            .filter(|(a, n)| match cur.usage.get(&**a) {
                None => true,
                Some(old) if only_raise => n > old,
                Some(old) => n != old,
            })
            .collect();
        if effective.is_empty() {
            return unchanged;
        }
        let mut usage: UsageMap = (*cur.usage).clone();
        for (a, n) in &effective {
            usage.insert(a.clone(), *n);
        }
        let changed = effective.len();
        let list: Vec<ChangeKind> = effective
            .into_iter()
            .map(|(account_id, n)| ChangeKind::Usage {
                account_id,
                relays: Some(n),
            })
            .collect();
        let next = Snapshot {
            version: cur.version + 1,
            usage: Arc::new(usage),
            ..(*cur).clone()
        };
        let version = next.version;
        let list = if cur.is_loaded() { Some(list) } else { None };
        self.publish(next, list, true);
        Published {
            version,
            usage_changed: changed,
            ..Published::default()
        }
    }
}

impl Publisher {
    /// Replaces the device certificates (a full read of the registry: it is small, and read
    /// again whole on every change of it). Only effective changes make a new version.
    pub(crate) fn publish_devices(&self, devices: DeviceMap) -> Published {
        let cap = self.cap();
        let _writer = self.shared.writer();
        let cur = self.shared.current();
        let mut list: Vec<ChangeKind> = devices
            .iter()
            .filter(|(f, d)| cur.devices.get(*f) != Some(*d))
            .map(|(f, d)| ChangeKind::Device {
                fingerprint: *f,
                device: Some(d.clone()),
            })
            .collect();
        list.extend(
            cur.devices
                .keys()
                .filter(|f| !devices.contains_key(*f))
                .map(|f| ChangeKind::Device {
                    fingerprint: *f,
                    device: None,
                }),
        );
        if list.is_empty() {
            return Published {
                version: cur.version,
                ..Published::default()
            };
        }
        let changed = list.len();
        let next = Snapshot {
            version: cur.version + 1,
            devices: Arc::new(devices),
            ..(*cur).clone()
        };
        let version = next.version;
        let list = (cur.is_loaded() && list.len() <= cap).then_some(list);
        self.publish(next, list, true);
        Published {
            version,
            devices_changed: changed,
            ..Published::default()
        }
    }
}

/// Exponential backoff between retries.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Logs repeated identical failures at most once a minute.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    last: Option<(String, Instant)>,
}

impl LogThrottle {
    /// Whether `message` should be logged now.
    pub(crate) fn allow(&mut self, message: &str) -> bool {
        let now = Instant::now();
        match &self.last {
            Some((m, at)) if m == message && now.duration_since(*at) < Duration::from_secs(60) => {
                false
            }
            _ => {
                self.last = Some((message.to_string(), now));
                true
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.last = None;
    }
}

/// The running store. Dropping it (or [`Store::shutdown`]) stops its background tasks.
pub struct Store {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    source_label: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("source", &self.source_label)
            .field("version", &self.version())
            .finish()
    }
}

/// Starts the store with default [`StoreOptions`]. See [`start_with_options`].
pub async fn start(
    cfg: StoreConfig,
    observer: Arc<dyn StoreObserver>,
) -> Result<Arc<Store>, StoreError> {
    start_with_options(cfg, StoreOptions::default(), observer).await
}

/// Starts the store: validates the configuration, spawns the refresh tasks on the current
/// Tokio runtime and returns at once, loaded or not. Errors only for invalid configuration
/// (unparsable URL, zero interval), never because the source is unreachable.
pub async fn start_with_options(
    cfg: StoreConfig,
    options: StoreOptions,
    observer: Arc<dyn StoreObserver>,
) -> Result<Arc<Store>, StoreError> {
    validate(&cfg, &options)?;
    // versions start at the wall clock in microseconds, so a restarted store's versions
    // are (practically always) above any version a consumer got from its predecessor
    let initial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1);
    let (version_tx, _) = watch::channel(initial);
    let mut shared = Shared {
        snapshot: ArcSwap::from_pointee(Snapshot::empty(initial)),
        writer: Mutex::new(()),
        log: Mutex::new(ChangeLog::new(initial, options.change_log_capacity)),
        status: Mutex::new(StoreStatus::default()),
        observer,
        version_tx,
        refresh_now: Notify::new(),
        clock_offset_secs: options.usage_clock_offset_secs,
        metered: None,
    };
    if matches!(cfg.source, Source::Yaml { .. }) {
        shared.metered = Some(Mutex::new(Metered::new(shared.clock_month())));
    }
    if options.usage_clock_offset_secs != 0 {
        tracing::warn!(
            offset_secs = options.usage_clock_offset_secs,
            month = %shared.clock_month(),
            "portal app store: the usage clock is shifted (a test setting)"
        );
    }
    let shared = Arc::new(shared);
    let publisher = Publisher {
        shared: shared.clone(),
    };
    if cfg.devices_file.is_some() && matches!(cfg.source, Source::Postgres { .. }) {
        return Err(StoreError::InvalidConfig(
            "a devices file is for the DB-less store: with Postgres, device certificates come from edgeguard_devices (migration 0005)".into(),
        ));
    }
    let (tasks, source_label) = match &cfg.source {
        Source::Postgres { url } => {
            let opts = parse_url(url)?;
            let label = crate::config::describe(&opts);
            tracing::info!(postgres = %label, listen = options.listen, "portal app store starting (Postgres)");
            (
                crate::source_pg::spawn(publisher, opts, &cfg, &options),
                label,
            )
        }
        Source::Yaml { path } => {
            tracing::info!(file = %path.display(), "portal app store starting (YAML file)");
            let mut tasks = Vec::new();
            if let Some(devices) = &cfg.devices_file {
                tracing::info!(file = %devices.display(), "device certificates from the devices file");
                tasks.push(crate::source_devices::spawn(
                    Publisher {
                        shared: shared.clone(),
                    },
                    devices.clone(),
                ));
            }
            tasks.extend(crate::source_yaml::spawn(
                publisher,
                path.clone(),
                &cfg,
                &options,
            ));
            (tasks, path.display().to_string())
        }
    };
    Ok(Arc::new(Store {
        shared,
        tasks: Mutex::new(tasks),
        source_label,
    }))
}

impl Store {
    /// The current snapshot (an `Arc` clone; never blocks on a refresh).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The current snapshot without touching the reference count (hot paths; do not hold
    /// the guard across `.await`).
    pub fn snapshot_guard(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// The current data version.
    pub fn version(&self) -> u64 {
        self.shared.snapshot.load().version
    }

    /// The changes that bring a copy at version `v` to the current version; `None` when `v`
    /// is older than the log (or not one of this store's versions): send a full snapshot.
    pub fn changes_since(&self, v: u64) -> Option<ChangeSet> {
        lock(&self.shared.log).since(v)
    }

    /// A receiver that sees each new data version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version_tx.subscribe()
    }

    /// Waits until the store is loaded (apps and usage, from its source or the snapshot file).
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                if self.snapshot_guard().is_loaded() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return self.snapshot_guard().is_loaded();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Health and freshness counters.
    pub fn status(&self) -> StoreStatus {
        self.shared.status().clone()
    }

    /// When the apps were last read successfully from the source.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.shared.status().last_success
    }

    /// Time since the apps were last read successfully from the source; while only the
    /// snapshot file was served, time since that file's data was read. `None` before any data.
    pub fn staleness(&self) -> Option<Duration> {
        let since = self
            .last_success()
            .or_else(|| self.snapshot_guard().data_time);
        since.map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Time since usage was last read successfully (`None` before the first read).
    pub fn usage_staleness(&self) -> Option<Duration> {
        self.shared
            .status()
            .usage_last_success
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Asks for a full reload now (e.g. on SIGHUP).
    pub fn refresh_now(&self) {
        self.shared.refresh_now.notify_one();
    }

    /// Unix seconds now as the store sees it: the system clock plus
    /// [`StoreOptions::usage_clock_offset_secs`]. Its month is the month of the usage the
    /// store loads; when it changes the store rolls over (see the crate docs).
    pub fn now_unix(&self) -> i64 {
        self.shared.now_unix()
    }

    /// The UTC month of the usage currently loaded; before any usage was loaded, the month
    /// of [`Store::now_unix`]. Right after the clock crosses into a new month this is still
    /// the old month until the store has reloaded usage (within about a second).
    pub fn usage_month(&self) -> Month {
        self.snapshot_guard()
            .usage_month
            .unwrap_or_else(|| self.shared.clock_month())
    }

    /// Sets the monthly usage totals of some accounts (the metering flusher's totals, e.g.
    /// `relays + metered_relays` returned by its `UPDATE … RETURNING`): a partial update,
    /// versioned like every usage change (one new version with one [`ChangeKind::Usage`] per
    /// account whose total changed; none if nothing did). Monotonic within a month: a total
    /// lower than the account's current one is ignored (only a full usage reload lowers
    /// totals). Ignored as a whole when `month` is not [`Store::usage_month`] or usage is not
    /// loaded yet. Returns the version after the update (the current one when nothing
    /// changed). Safe to call from any thread; it briefly waits for a publish in progress.
    pub fn publish_usage_totals(&self, month: Month, totals: Vec<(Arc<str>, u64)>) -> u64 {
        let publisher = Publisher {
            shared: self.shared.clone(),
        };
        let p = publisher.publish_usage_partial(month, totals, true);
        if p.usage_changed > 0 {
            tracing::debug!(
                month = %month,
                accounts = p.usage_changed,
                version = p.version,
                "usage totals published"
            );
        }
        p.version
    }

    /// DB-less (YAML) mode: adds relays counted by edgeguard to accounts' usage of `month`,
    /// kept in memory (lost on restart; a restarted store starts again from the file's
    /// `monthly_usage`). What the store then enforces for an account is the file's
    /// `monthly_usage` plus the relays added this month, also after a file reload. Returns
    /// the new totals of the accounts in `deltas`, in account id order (zero deltas are
    /// skipped), published as one usage change. When `month` is the clock's month and the store's usage still counts an
    /// earlier one, the store rolls over first (the metered counts restart at zero).
    /// Deltas for another month are dropped (an empty vec is returned), as are all deltas
    /// with Postgres, where the flusher writes `metered_relays` and calls
    /// [`Store::publish_usage_totals`] instead. Until the file was loaded the counts are
    /// kept but not published.
    pub fn add_metered(&self, month: Month, deltas: Vec<(Arc<str>, u64)>) -> Vec<(Arc<str>, u64)> {
        let Some(metered) = &self.shared.metered else {
            return Vec::new();
        };
        let publisher = Publisher {
            shared: self.shared.clone(),
        };
        // one lock across "read the counts + publish" (the file reload takes it too): the
        // totals published can never go back to a state without some added relays
        let mut m = lock(metered);
        if month != m.month {
            if month == self.shared.clock_month() {
                m.roll_to(month, &publisher);
            } else {
                tracing::debug!(month = %month, store_month = %m.month, "metered relays of another month dropped");
                return Vec::new();
            }
        }
        let mut touched: Vec<Arc<str>> = Vec::with_capacity(deltas.len());
        for (account, n) in deltas {
            if n == 0 {
                continue;
            }
            let e = m.counts.entry(account.clone()).or_insert(0);
            *e = e.saturating_add(n);
            touched.push(account);
        }
        touched.sort_unstable();
        touched.dedup();
        let totals: Vec<(Arc<str>, u64)> = touched
            .into_iter()
            .filter_map(|a| m.total(&a).map(|t| (a, t)))
            .collect();
        if m.file.is_some() {
            let p = publisher.publish_usage_partial(month, totals.clone(), false);
            if p.usage_changed > 0 {
                tracing::debug!(
                    month = %month,
                    accounts = p.usage_changed,
                    version = p.version,
                    "metered relays published"
                );
            }
        }
        totals
    }

    /// Stops the background tasks; the last snapshot stays readable.
    pub fn shutdown(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Writes the snapshot file in the background, one write at a time, only for new versions.
pub(crate) struct FileWriter {
    path: Option<PathBuf>,
    last_written: Option<u64>,
    running: Option<JoinHandle<()>>,
}

impl FileWriter {
    pub(crate) fn new(path: Option<PathBuf>) -> FileWriter {
        FileWriter {
            path,
            last_written: None,
            running: None,
        }
    }

    pub(crate) fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// Starts writing `snap` unless that version is already written (or being written), or
    /// it is not loaded: a file is only ever written with apps *and* usage in it (serving it
    /// counts as usage loaded).
    pub(crate) async fn write(&mut self, shared: &Arc<Shared>, snap: Arc<Snapshot>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        if !snap.is_loaded() {
            return;
        }
        if self.last_written == Some(snap.version) {
            return;
        }
        if let Some(prev) = self.running.take() {
            let _ = prev.await;
        }
        self.last_written = Some(snap.version);
        let shared = shared.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            match crate::file::write(&path, &snap) {
                Ok(()) => tracing::debug!(
                    file = %path.display(),
                    version = snap.version,
                    apps = snap.app_count,
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshot file written"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the last-good snapshot file");
                    shared.observer.snapshot_file_error();
                }
            }
        }));
    }

    /// Waits for a write in progress (tests, shutdown).
    #[allow(dead_code)]
    pub(crate) async fn flush(&mut self) {
        if let Some(prev) = self.running.take() {
            let _ = prev.await;
        }
    }
}

/// Serves the last-good snapshot file for what the source has not loaded yet: everything
/// when no apps were read (keeping usage the source did read), only the usage when the apps
/// were read but the usage was not (e.g. Postgres died between the two). Never replaces
/// data the source loaded. Returns whether it served anything.
pub(crate) async fn serve_snapshot_file(publisher: &Publisher, path: &Path) -> bool {
    let p = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || crate::file::read(&p)).await;
    match read {
        Ok(Ok(data)) => {
            // the source may have loaded meanwhile: never replace source data with the file
            let cur = publisher.shared.current();
            if cur.is_loaded() {
                return false;
            }
            // the file's usage counts the month its data was read in
            let month = data
                .data_time
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .map_or_else(|| publisher.shared.clock_month(), Month::of);
            if cur.apps_loaded() {
                let accounts = data.usage.len();
                let p = publisher.publish_usage(data.usage, month);
                tracing::warn!(
                    file = %path.display(),
                    accounts,
                    version = p.version,
                    "serving the monthly usage of the last-good snapshot file until the source's can be read"
                );
                return true;
            }
            let apps = data.apps.len();
            let usage = (!cur.usage_loaded()).then_some((data.usage, month));
            let p = publisher.publish_full(data.apps, usage, Origin::SnapshotFile, data.data_time);
            tracing::warn!(
                file = %path.display(),
                apps,
                version = p.version,
                "serving the last-good snapshot file until the source can be read"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "last-good snapshot file not usable");
            publisher.shared.observer.snapshot_file_error();
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the snapshot file failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::NoopObserver;
    use edgeguard_verdict::portal::{AppAuth, PortalView};

    const M: Month = Month {
        year: 2026,
        month: 11,
    };

    fn shared(cap: usize) -> Publisher {
        let (version_tx, _) = watch::channel(100);
        Publisher {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::empty(100)),
                writer: Mutex::new(()),
                log: Mutex::new(ChangeLog::new(100, cap)),
                status: Mutex::new(StoreStatus::default()),
                observer: Arc::new(NoopObserver),
                version_tx,
                refresh_now: Notify::new(),
                clock_offset_secs: 0,
                metered: None,
            }),
        }
    }

    fn app(plan: &str) -> PortalApp {
        PortalApp {
            account_id: "acc".into(),
            plan: plan.into(),
            auth: AppAuth::Public,
            monthly_user_limit: 0,
            client_auth: Default::default(),
        }
    }

    fn apps(list: &[(&str, &str)]) -> AppMap {
        list.iter()
            .map(|(id, plan)| (Arc::from(*id), app(plan)))
            .collect()
    }

    #[test]
    fn versions_bump_only_on_change() {
        let p = shared(100);
        let log = |v| lock(&p.shared.log).since(v);
        let r = p.publish_full(
            apps(&[("a", "P1"), ("b", "P1")]),
            Some((UsageMap::default(), M)),
            Origin::Yaml,
            None,
        );
        assert_eq!(r.version, 101);
        assert!(log(100).is_none(), "the first load is not logged");
        // same data: same version
        let r = p.publish_full(apps(&[("b", "P1"), ("a", "P1")]), None, Origin::Yaml, None);
        assert_eq!((r.version, r.apps_changed), (101, 0));
        // one change, one deletion, one addition
        let r = p.publish_full(apps(&[("a", "P2"), ("c", "P1")]), None, Origin::Yaml, None);
        assert_eq!((r.version, r.apps_changed), (102, 3));
        let c = log(101).unwrap();
        assert_eq!(c.to_version, 102);
        assert_eq!(c.changes.len(), 3);
        // deltas
        let r = p.publish_delta(vec![("a".into(), Some(app("P2"))), ("z".into(), None)]);
        assert_eq!(r.version, 102, "no effective change");
        let r = p.publish_delta(vec![("a".into(), None), ("d".into(), Some(app("P3")))]);
        assert_eq!((r.version, r.upserted, r.deleted), (103, 1, 1));
        let s = p.shared.current();
        assert_eq!(s.app_count(), 2);
        assert!(s.get("a").is_none() && s.get("d").is_some());
        // usage
        let mut u = UsageMap::default();
        u.insert("acc".into(), 5);
        assert_eq!(p.publish_usage(u.clone(), M).version, 104);
        assert_eq!(p.publish_usage(u, M).version, 104);
        assert_eq!(p.publish_usage(UsageMap::default(), M).version, 105);
        let c = log(103).unwrap();
        assert_eq!(
            c.changes.iter().map(|c| c.version).collect::<Vec<_>>(),
            vec![104, 105]
        );
        // a full load equal to base+overlay does not bump either
        let r = p.publish_full(apps(&[("c", "P1"), ("d", "P3")]), None, Origin::Yaml, None);
        assert_eq!(r.version, 105);
    }

    #[test]
    fn loaded_only_with_apps_and_usage() {
        let mut over = UsageMap::default();
        over.insert("acc".into(), 2_000_000);
        // apps first: not loaded, a full reload of the same apps does not bump
        let p = shared(100);
        let r = p.publish_full(apps(&[("a", "P1")]), None, Origin::Postgres, None);
        let s = p.shared.current();
        assert!(s.apps_loaded() && !s.usage_loaded() && !s.is_loaded());
        assert!(!PortalView::loaded(&*s));
        assert_eq!(r.version, 101);
        let r = p.publish_full(apps(&[("a", "P1")]), None, Origin::Postgres, None);
        assert_eq!(r.version, 101);
        // usage (even none at all) completes it, with a new version and no delta to apply
        let r = p.publish_usage(UsageMap::default(), M);
        assert_eq!(r.version, 102);
        assert!(p.shared.current().is_loaded());
        assert!(lock(&p.shared.log).since(101).is_none());
        // a later full load without usage keeps it loaded
        p.publish_full(apps(&[("a", "P2")]), None, Origin::Postgres, None);
        assert!(p.shared.current().is_loaded());

        // usage first: not loaded until the apps come
        let p = shared(100);
        assert_eq!(p.publish_usage(over.clone(), M).version, 101);
        let s = p.shared.current();
        assert!(!s.apps_loaded() && s.usage_loaded() && !s.is_loaded());
        let r = p.publish_full(apps(&[("a", "P1")]), None, Origin::Postgres, None);
        let s = p.shared.current();
        assert!(s.is_loaded());
        assert_eq!(r.version, 102);
        assert_eq!(s.account_usage("acc"), Some(2_000_000), "usage kept");
    }

    #[test]
    fn big_changes_reset_the_log() {
        let p = shared(2);
        p.publish_full(
            apps(&[("a", "P1")]),
            Some((UsageMap::default(), M)),
            Origin::Yaml,
            None,
        );
        p.publish_full(
            apps(&[("a", "P2"), ("b", "P1"), ("c", "P1")]),
            None,
            Origin::Yaml,
            None,
        );
        assert!(lock(&p.shared.log).since(101).is_none());
        assert_eq!(
            lock(&p.shared.log).since(102).map(|c| c.changes.len()),
            Some(0)
        );
    }

    #[test]
    fn partial_usage_updates() {
        let p = shared(100);
        let log = |v| lock(&p.shared.log).since(v);
        let usage = |pairs: &[(&str, u64)]| -> Vec<(Arc<str>, u64)> {
            pairs.iter().map(|(a, n)| (Arc::from(*a), *n)).collect()
        };
        // before usage is loaded: ignored
        let r = p.publish_usage_partial(M, usage(&[("a", 1)]), true);
        assert_eq!((r.version, r.usage_changed), (100, 0));
        let mut u = UsageMap::default();
        u.insert("a".into(), 10);
        u.insert("b".into(), 20);
        p.publish_full(apps(&[("x", "P1")]), Some((u, M)), Origin::Postgres, None);
        let v = p.shared.current().version;
        assert_eq!(p.shared.current().usage_month(), Some(M));
        // another month: ignored
        let r = p.publish_usage_partial(M.next(), usage(&[("a", 99)]), true);
        assert_eq!(r.version, v);
        // only raise: a lower total is ignored, a higher one and a new account apply
        let r = p.publish_usage_partial(M, usage(&[("a", 5), ("b", 21), ("c", 0)]), true);
        assert_eq!((r.version, r.usage_changed), (v + 1, 2));
        let s = p.shared.current();
        assert_eq!(
            (
                s.account_usage("a"),
                s.account_usage("b"),
                s.account_usage("c")
            ),
            (Some(10), Some(21), Some(0))
        );
        let mut kinds: Vec<String> = log(v)
            .unwrap()
            .changes
            .iter()
            .map(|c| format!("{:?}", c.kind))
            .collect();
        kinds.sort();
        assert_eq!(kinds.len(), 2);
        assert!(kinds[0].contains("\"b\"") && kinds[0].contains("Some(21)"));
        // nothing effective: same version
        let r = p.publish_usage_partial(M, usage(&[("a", 10), ("b", 3)]), true);
        assert_eq!(r.version, v + 1);
        // not only raising (YAML totals): a lower value applies
        let r = p.publish_usage_partial(M, usage(&[("a", 5)]), false);
        assert_eq!(r.version, v + 2);
        assert_eq!(p.shared.current().account_usage("a"), Some(5));
        // a full usage reload of the next month with the same data: same version, new month
        let same: UsageMap = p.shared.current().usage.as_ref().clone();
        let r = p.publish_usage(same, M.next());
        assert_eq!(r.version, v + 2);
        assert_eq!(p.shared.current().usage_month(), Some(M.next()));
        let r = p.publish_usage_partial(M, usage(&[("a", 50)]), true);
        assert_eq!(
            r.version,
            v + 2,
            "the old month is ignored after the rollover"
        );
    }
}
