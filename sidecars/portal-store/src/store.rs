//! The store handle, shared state, and publishing (diff → version → change log → swap).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use edgeguard_verdict::portal::PortalApp;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::changes::{ChangeKind, ChangeLog, ChangeSet};
use crate::config::{parse_url, validate, Source, StoreConfig, StoreError, StoreOptions};
use crate::observer::StoreObserver;
use crate::snapshot::{count_accounts, AppMap, Origin, Overlay, Snapshot, UsageMap};

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
    log: Mutex<ChangeLog>,
    status: Mutex<StoreStatus>,
    pub(crate) observer: Arc<dyn StoreObserver>,
    version_tx: watch::Sender<u64>,
    /// `Store::refresh_now` wakes the refresh task.
    pub(crate) refresh_now: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding these locks cannot leave them inconsistent: keep going
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn status(&self) -> MutexGuard<'_, StoreStatus> {
        lock(&self.status)
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
        usage: Option<UsageMap>,
        origin: Origin,
        data_time: Option<SystemTime>,
    ) -> Published {
        let cur = self.shared.current();
        let cap = self.cap();
        let (apps_changed, app_list) = diff_apps(&cur, &apps, cap);
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
        let account_count = count_accounts(apps.values());
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

    /// Replaces this month's usage (and marks it loaded).
    pub(crate) fn publish_usage(&self, usage: UsageMap) -> Published {
        let cur = self.shared.current();
        let (changed, list) = diff_usage(&cur.usage, &usage, self.cap());
        if changed == 0 && cur.usage_loaded {
            return Published {
                version: cur.version,
                ..Published::default()
            };
        }
        let next = Snapshot {
            version: cur.version + 1,
            usage: Arc::new(usage),
            usage_loaded: true,
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
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot::empty(initial)),
        log: Mutex::new(ChangeLog::new(initial, options.change_log_capacity)),
        status: Mutex::new(StoreStatus::default()),
        observer,
        version_tx,
        refresh_now: Notify::new(),
    });
    let publisher = Publisher {
        shared: shared.clone(),
    };
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
            (
                crate::source_yaml::spawn(publisher, path.clone(), &cfg, &options),
                path.display().to_string(),
            )
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
            if cur.apps_loaded() {
                let accounts = data.usage.len();
                let p = publisher.publish_usage(data.usage);
                tracing::warn!(
                    file = %path.display(),
                    accounts,
                    version = p.version,
                    "serving the monthly usage of the last-good snapshot file until the source's can be read"
                );
                return true;
            }
            let apps = data.apps.len();
            let usage = (!cur.usage_loaded()).then_some(data.usage);
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

    fn shared(cap: usize) -> Publisher {
        let (version_tx, _) = watch::channel(100);
        Publisher {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::empty(100)),
                log: Mutex::new(ChangeLog::new(100, cap)),
                status: Mutex::new(StoreStatus::default()),
                observer: Arc::new(NoopObserver),
                version_tx,
                refresh_now: Notify::new(),
            }),
        }
    }

    fn app(plan: &str) -> PortalApp {
        PortalApp {
            account_id: "acc".into(),
            plan: plan.into(),
            auth: AppAuth::Public,
            monthly_user_limit: 0,
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
            Some(UsageMap::default()),
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
        assert_eq!(p.publish_usage(u.clone()).version, 104);
        assert_eq!(p.publish_usage(u).version, 104);
        assert_eq!(p.publish_usage(UsageMap::default()).version, 105);
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
        let r = p.publish_usage(UsageMap::default());
        assert_eq!(r.version, 102);
        assert!(p.shared.current().is_loaded());
        assert!(lock(&p.shared.log).since(101).is_none());
        // a later full load without usage keeps it loaded
        p.publish_full(apps(&[("a", "P2")]), None, Origin::Postgres, None);
        assert!(p.shared.current().is_loaded());

        // usage first: not loaded until the apps come
        let p = shared(100);
        assert_eq!(p.publish_usage(over.clone()).version, 101);
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
            Some(UsageMap::default()),
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
}
