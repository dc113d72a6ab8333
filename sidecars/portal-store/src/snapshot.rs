//! Immutable snapshots of the store: what readers see.
//!
//! A [`Snapshot`] is a *base* map (all apps as of the last full load, shared by `Arc`) plus a
//! small *overlay* of the apps upserted or deleted since (by NOTIFY deltas). Publishing a
//! delta clones only the overlay; a full load (or an overlay grown past a fraction of the
//! base) folds everything into a new base. Monthly usage is a third shared map.

use std::sync::Arc;
use std::time::SystemTime;

use edgeguard_verdict::device::{Device, Fingerprint};
use edgeguard_verdict::portal::{PortalApp, PortalView};
use edgeguard_verdict::quota::Month;
use rustc_hash::{FxHashMap, FxHashSet};

/// Apps by id.
pub type AppMap = FxHashMap<Arc<str>, PortalApp>;
/// This month's relays by account id.
pub type UsageMap = FxHashMap<Arc<str>, u64>;
/// Enrolled, not revoked devices by certificate fingerprint.
pub type DeviceMap = FxHashMap<Fingerprint, Device>;
/// Upserts (`Some`) and deletions (`None`) since the base.
pub(crate) type Overlay = FxHashMap<Arc<str>, Option<PortalApp>>;

/// Where the data of a snapshot came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Nothing loaded yet.
    None,
    /// Postgres (PEAS's Grove query), possibly with NOTIFY deltas on top.
    Postgres,
    /// The DB-less YAML file.
    Yaml,
    /// The last-good snapshot file, served because the source could not be read at start.
    SnapshotFile,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::None => "none",
            Origin::Postgres => "postgres",
            Origin::Yaml => "yaml",
            Origin::SnapshotFile => "snapshot_file",
        }
    }
}

/// One published state of the store. Cheap to share (`Arc`), never mutated.
///
/// A snapshot is *loaded* only when both the apps and this month's usage have been read
/// (from the source or the last-good snapshot file): apps without usage would let accounts
/// over their quota through, so until then the verdict answers 503 like an empty store.
///
/// `version` identifies the *data* (apps, usage, loaded): two snapshots with the same version
/// have the same apps and usage. Metadata (origin, data time) may change without a new version,
/// e.g. when Postgres confirms the data a snapshot file had.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) version: u64,
    /// The apps were read (a full load of the source, or the snapshot file).
    pub(crate) apps_loaded: bool,
    /// This month's usage was read (from the source, or the snapshot file).
    pub(crate) usage_loaded: bool,
    pub(crate) origin: Origin,
    pub(crate) data_time: Option<SystemTime>,
    pub(crate) base: Arc<AppMap>,
    pub(crate) overlay: Arc<Overlay>,
    pub(crate) app_count: usize,
    pub(crate) account_count: usize,
    pub(crate) usage: Arc<UsageMap>,
    /// The UTC month `usage` counts (`None` before usage was loaded, and in snapshots built
    /// outside a store).
    pub(crate) usage_month: Option<Month>,
    /// Device certificates (`edgeguard enroll`'s registry): not part of `loaded`, since
    /// without them only device callers are refused, nothing is opened.
    pub(crate) devices: Arc<DeviceMap>,
}

impl Snapshot {
    /// The empty, not-loaded snapshot a store starts with.
    pub(crate) fn empty(version: u64) -> Snapshot {
        Snapshot {
            version,
            apps_loaded: false,
            usage_loaded: false,
            origin: Origin::None,
            data_time: None,
            base: Arc::new(AppMap::default()),
            overlay: Arc::new(Overlay::default()),
            app_count: 0,
            account_count: 0,
            usage: Arc::new(UsageMap::default()),
            usage_month: None,
            devices: Arc::new(DeviceMap::default()),
        }
    }

    /// A loaded snapshot built from apps and usage, outside any store (tests, tools, benches).
    pub fn from_parts(version: u64, apps: AppMap, usage: UsageMap) -> Snapshot {
        let account_count = count_accounts(apps.values());
        Snapshot {
            version,
            apps_loaded: true,
            usage_loaded: true,
            origin: Origin::None,
            data_time: Some(SystemTime::now()),
            app_count: apps.len(),
            base: Arc::new(apps),
            overlay: Arc::new(Overlay::default()),
            account_count,
            usage: Arc::new(usage),
            usage_month: None,
            devices: Arc::new(DeviceMap::default()),
        }
    }

    /// The same snapshot with these devices (tests, tools, benches).
    pub fn with_devices(mut self, devices: DeviceMap) -> Snapshot {
        self.devices = Arc::new(devices);
        self
    }

    /// Device certificates, by fingerprint.
    pub fn devices(&self) -> &DeviceMap {
        &self.devices
    }

    /// Version of the data (monotonic within a store; see the crate docs).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the store has data to decide with: apps *and* this month's usage (from the
    /// source or from the snapshot file).
    pub fn is_loaded(&self) -> bool {
        self.apps_loaded && self.usage_loaded
    }

    /// Whether the apps have been read (usage may still be missing).
    pub fn apps_loaded(&self) -> bool {
        self.apps_loaded
    }

    /// Whether this month's usage has been read (apps may still be missing).
    pub fn usage_loaded(&self) -> bool {
        self.usage_loaded
    }

    /// The UTC month the usage of this snapshot counts (`None` before usage was loaded, and
    /// for [`Snapshot::from_parts`]).
    pub fn usage_month(&self) -> Option<Month> {
        self.usage_month
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// True when the data is the last-good snapshot file (the source could not be read yet).
    pub fn from_file(&self) -> bool {
        self.origin == Origin::SnapshotFile
    }

    /// When the data was read from its source (for a snapshot file: when it was written).
    pub fn data_time(&self) -> Option<SystemTime> {
        self.data_time
    }

    /// The app with this id.
    pub fn get(&self, id: &str) -> Option<&PortalApp> {
        match self.overlay.get(id) {
            Some(entry) => entry.as_ref(),
            None => self.base.get(id),
        }
    }

    /// Number of apps.
    pub fn app_count(&self) -> usize {
        self.app_count
    }

    /// Number of distinct non-empty account ids among the apps, as of the last full load
    /// (NOTIFY deltas do not recount).
    pub fn account_count(&self) -> usize {
        self.account_count
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = (&str, &PortalApp)> + '_ {
        let overlay = &self.overlay;
        let upserts = overlay
            .iter()
            .filter_map(|(id, app)| app.as_ref().map(|a| (&**id, a)));
        let base = self
            .base
            .iter()
            .filter(move |(id, _)| !overlay.contains_key(&***id))
            .map(|(id, a)| (&**id, a));
        upserts.chain(base)
    }

    /// Relays of an account this month, when known.
    pub fn account_usage(&self, account_id: &str) -> Option<u64> {
        self.usage.get(account_id).copied()
    }

    /// Every known `(account, relays this month)`.
    pub fn usages(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.usage.iter().map(|(a, u)| (&**a, *u))
    }

    /// Number of accounts with known usage.
    pub fn usage_count(&self) -> usize {
        self.usage.len()
    }

    /// The rate-limit view PEAS's gauges need: every account that has a monthly limit
    /// (`PortalApp::monthly_limit`) *and* a usage row this month, sorted by account id.
    /// Accounts without a usage row have used nothing and are left out (PEAS only evaluated
    /// accounts its usage query returned).
    pub fn usage_summary(&self) -> Vec<AccountUsage> {
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        let mut out = Vec::new();
        for (_, app) in self.apps() {
            let account = &*app.account_id;
            if account.is_empty() || seen.contains(account) {
                continue;
            }
            let Some(usage) = self.usage.get(account).copied() else {
                continue;
            };
            // all apps of an account carry the account's plan and limit; apps without a
            // limit are skipped without marking the account seen (robust to odd data)
            let Some(limit) = app.monthly_limit() else {
                continue;
            };
            seen.insert(account);
            out.push(AccountUsage {
                account_id: account.to_string(),
                plan: app.plan.to_string(),
                limit,
                usage,
                limited: usage > limit,
            });
        }
        out.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        out
    }

    /// A copy with the overlay folded into a new base (O(apps)).
    pub(crate) fn folded_base(&self) -> AppMap {
        let mut base: AppMap = (*self.base).clone();
        for (id, app) in self.overlay.iter() {
            match app {
                Some(a) => {
                    base.insert(id.clone(), a.clone());
                }
                None => {
                    base.remove(&**id);
                }
            }
        }
        base
    }

    /// The overlay after applying `changes` (only the effective ones), with the new app count.
    pub(crate) fn overlay_with(
        &self,
        changes: &[(Arc<str>, Option<PortalApp>)],
    ) -> (Overlay, usize) {
        let mut overlay: Overlay = (*self.overlay).clone();
        let mut count = self.app_count;
        for (id, app) in changes {
            let existed = self.get(id).is_some();
            let exists = app.is_some();
            match (existed, exists) {
                (false, true) => count += 1,
                (true, false) => count = count.saturating_sub(1),
                _ => {}
            }
            match (app, self.base.get(&**id)) {
                // back to what the base has: the overlay entry is no longer needed
                (Some(a), Some(b)) if a == b => {
                    overlay.remove(&**id);
                }
                (None, None) => {
                    overlay.remove(&**id);
                }
                _ => {
                    overlay.insert(id.clone(), app.clone());
                }
            }
        }
        (overlay, count)
    }

    pub(crate) fn overlay_len(&self) -> usize {
        self.overlay.len()
    }
}

impl PortalView for Snapshot {
    fn loaded(&self) -> bool {
        self.is_loaded()
    }

    fn app(&self, id: &str) -> Option<&PortalApp> {
        self.get(id)
    }

    fn usage(&self, account_id: &str) -> Option<u64> {
        self.account_usage(account_id)
    }

    fn device(&self, fingerprint: &Fingerprint) -> Option<&Device> {
        self.devices.get(fingerprint)
    }
}

/// One account in the rate-limit summary (PEAS `peas_account_usage_total` /
/// `peas_rate_limited_accounts_total`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountUsage {
    pub account_id: String,
    pub plan: String,
    /// The enforced monthly limit (`PortalApp::monthly_limit`).
    pub limit: u64,
    /// Relays this month.
    pub usage: u64,
    /// `usage > limit`: requests of the account's apps get 429.
    pub limited: bool,
}

/// Distinct non-empty account ids.
pub(crate) fn count_accounts<'a>(apps: impl Iterator<Item = &'a PortalApp>) -> usize {
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    for app in apps {
        if !app.account_id.is_empty() {
            seen.insert(&app.account_id);
        }
    }
    seen.len()
}

/// Shares equal strings (account ids, plans) across the apps of one load.
#[derive(Default)]
pub(crate) struct Interner {
    strings: FxHashSet<Arc<str>>,
}

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeguard_verdict::portal::AppAuth;

    fn app(account: &str, plan: &str, limit: u64) -> PortalApp {
        PortalApp {
            account_id: account.into(),
            plan: plan.into(),
            auth: AppAuth::Public,
            monthly_user_limit: limit,
            client_auth: Default::default(),
        }
    }

    #[test]
    fn overlay_upserts_and_deletes() {
        let mut apps = AppMap::default();
        apps.insert("a".into(), app("x", "PLAN_FREE", 0));
        apps.insert("b".into(), app("y", "PLAN_FREE", 0));
        let s = Snapshot::from_parts(1, apps, UsageMap::default());
        let (overlay, count) = s.overlay_with(&[
            ("a".into(), None),
            ("c".into(), Some(app("z", "PLAN_UNLIMITED", 5))),
            ("nope".into(), None),
        ]);
        assert_eq!(count, 2);
        let t = Snapshot {
            overlay: Arc::new(overlay),
            app_count: count,
            ..s.clone()
        };
        assert!(t.get("a").is_none());
        assert!(t.get("b").is_some());
        assert_eq!(t.get("c").map(|a| a.monthly_user_limit), Some(5));
        assert_eq!(t.overlay_len(), 2, "deleting an unknown id keeps no entry");
        let mut ids: Vec<&str> = t.apps().map(|(id, _)| id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec!["b", "c"]);
        // restoring the base value removes the overlay entry
        let (overlay, count) = t.overlay_with(&[("a".into(), Some(app("x", "PLAN_FREE", 0)))]);
        assert_eq!((overlay.len(), count), (1, 3));
        let folded = t.folded_base();
        assert_eq!(folded.len(), 2);
        assert!(folded.contains_key("c") && !folded.contains_key("a"));
    }

    #[test]
    fn summary_lists_limited_accounts_with_usage() {
        let mut apps = AppMap::default();
        apps.insert("a1".into(), app("free", "PLAN_FREE", 0));
        apps.insert("a2".into(), app("free", "PLAN_FREE", 0));
        apps.insert("a3".into(), app("unl", "PLAN_UNLIMITED", 10));
        apps.insert("a4".into(), app("unl0", "PLAN_UNLIMITED", 0));
        apps.insert("a5".into(), app("quiet", "PLAN_FREE", 0));
        apps.insert("a6".into(), app("", "PLAN_FREE", 0));
        let mut usage = UsageMap::default();
        usage.insert("free".into(), 1_000_000);
        usage.insert("unl".into(), 11);
        usage.insert("unl0".into(), 5_000_000);
        usage.insert("".into(), 5_000_000);
        let s = Snapshot::from_parts(1, apps, usage);
        assert_eq!(s.account_count(), 4);
        let sum = s.usage_summary();
        assert_eq!(
            sum,
            vec![
                AccountUsage {
                    account_id: "free".into(),
                    plan: "PLAN_FREE".into(),
                    limit: 1_000_000,
                    usage: 1_000_000,
                    limited: false
                },
                AccountUsage {
                    account_id: "unl".into(),
                    plan: "PLAN_UNLIMITED".into(),
                    limit: 10,
                    usage: 11,
                    limited: true
                },
            ]
        );
    }
}
