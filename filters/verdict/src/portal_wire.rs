//! How a copy of the portal-app store travels from `edgeguard authz` to the portal-auth
//! filter: `GET /store/v1/snapshot?since=<version>` answers an [`Update`] in postcard (a
//! compact serde format): the changes since `since`, or the full store when `since` is 0 or
//! older than the server's change log. `304 Not Modified` means nothing changed.
//!
//! The update carries key *digests*, never API keys.
//!
//! A full copy of a large store comes in **parts** (`?since=0&part=<i>&parts=<n>`, each at most
//! [`PART_APPS`] apps, split by a stable hash of the app id), so no single answer outgrows
//! Envoy's buffer for background calls (a 1M-app copy is ~40 MiB in one piece). The server
//! says how many parts in the first; the client assembles them aside and publishes the copy
//! once the last arrived, at the *lowest* version among the parts, so the deltas it asks for
//! next replay whatever changed while it paged (changes are idempotent: upserts and deletes of
//! whole apps).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::device::{Device, Fingerprint};
use crate::portal::{PortalApp, PortalView};

/// Content type of an encoded [`Update`].
pub const CONTENT_TYPE: &str = "application/x-edgeguard-portal-update;v=3";
/// Most apps in one part of a full copy.
pub const PART_APPS: usize = 100_000;
/// Path of the snapshot endpoint on `edgeguard authz`'s HTTP port.
pub const PATH: &str = "/store/v1/snapshot";

/// A change to one app: `None` deletes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppChange {
    pub id: String,
    pub app: Option<PortalApp>,
}

/// A change to one account's monthly usage: `None` forgets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageChange {
    pub account_id: String,
    pub relays: Option<u64>,
}

/// A change to one device certificate: `None` forgets it (revoked, re-keyed, deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChange {
    pub fingerprint: Fingerprint,
    pub device: Option<Device>,
}

/// The changes that bring a copy from `from` to `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Version the copy must be at (0 for a full update).
    pub from: u64,
    /// Version after applying.
    pub version: u64,
    /// Replace everything (ignore the copy's current content).
    pub full: bool,
    pub apps: Vec<AppChange>,
    pub usage: Vec<UsageChange>,
    /// Device certificates (usage and devices travel in part 0 of a full copy).
    pub devices: Vec<DeviceChange>,
    /// Which part of a full copy this is (0-based), and how many there are (1 = the whole
    /// copy in one answer). Usage travels in part 0.
    pub part: u32,
    pub parts: u32,
}

/// Why an update could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    Decode(String),
    /// The update starts at another version than the copy has (the copy must ask again).
    VersionGap {
        have: u64,
        from: u64,
    },
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateError::Decode(e) => write!(f, "store update does not decode: {e}"),
            UpdateError::VersionGap { have, from } => {
                write!(
                    f,
                    "store update starts at version {from}, the copy is at {have}"
                )
            }
        }
    }
}

impl std::error::Error for UpdateError {}

impl Update {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Update, UpdateError> {
        postcard::from_bytes(bytes).map_err(|e| UpdateError::Decode(e.to_string()))
    }
}

/// A local copy of the store, kept current by applying updates.
///
/// Cheap to clone, so a copy can be *published* (the native filter shares one snapshot with
/// every worker and swaps in a new one after each update): the bulk of the data sits in an
/// `Arc`'d base, the changes of recent deltas in a small overlay that a clone copies. When the
/// overlay grows past a fraction of the base it is folded in (one pass over the base, which is
/// copied only if a published snapshot still shares it). Account ids and plans are interned:
/// the apps of one account share one string.
#[derive(Clone, Debug, Default)]
pub struct StoreCopy<S: BuildHasher + Default + Clone = std::collections::hash_map::RandomState> {
    pub version: u64,
    pub loaded: bool,
    base: Arc<Maps<S>>,
    /// Changes on top of `base`: `None` = deleted.
    overlay_apps: HashMap<Box<str>, Option<PortalApp>, S>,
    overlay_usage: HashMap<Box<str>, Option<u64>, S>,
    /// Device certificates: few, and changed rarely, so a change copies the map (only if a
    /// published clone shares it).
    devices: Arc<HashMap<Fingerprint, Device, S>>,
    /// Account ids and plans, interned (shared by every clone; only `apply` writes).
    strings: Arc<Mutex<HashSet<Arc<str>, S>>>,
}

#[derive(Clone, Debug, Default)]
struct Maps<S: BuildHasher + Default + Clone> {
    apps: HashMap<Box<str>, PortalApp, S>,
    usage: HashMap<Box<str>, u64, S>,
}

/// The overlay is folded into the base once it holds more than this many entries and more
/// than 1/16 of the base.
const FOLD_AT: usize = 1024;

fn intern_in<S: BuildHasher>(strings: &mut HashSet<Arc<str>, S>, s: Arc<str>) -> Arc<str> {
    match strings.get(&s) {
        Some(existing) => existing.clone(),
        None => {
            strings.insert(s.clone());
            s
        }
    }
}

impl<S: BuildHasher + Default + Clone> StoreCopy<S> {
    /// Applies an update; on error the copy is unchanged.
    pub fn apply(&mut self, update: Update) -> Result<(), UpdateError> {
        if !update.full && update.from != self.version {
            return Err(UpdateError::VersionGap {
                have: self.version,
                from: update.from,
            });
        }
        let mut strings = self
            .strings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut intern = |s: Arc<str>| -> Arc<str> { intern_in(&mut strings, s) };
        if update.full {
            let mut maps = Maps {
                apps: HashMap::with_capacity_and_hasher(update.apps.len(), S::default()),
                usage: HashMap::with_capacity_and_hasher(update.usage.len(), S::default()),
            };
            for c in update.apps {
                if let Some(mut app) = c.app {
                    app.account_id = intern(app.account_id);
                    app.plan = intern(app.plan);
                    maps.apps.insert(c.id.into_boxed_str(), app);
                }
            }
            for u in update.usage {
                if let Some(r) = u.relays {
                    maps.usage.insert(u.account_id.into_boxed_str(), r);
                }
            }
            self.base = Arc::new(maps);
            self.overlay_apps = HashMap::default();
            self.overlay_usage = HashMap::default();
            let mut devices = HashMap::with_capacity_and_hasher(update.devices.len(), S::default());
            for c in update.devices {
                if let Some(mut d) = c.device {
                    d.account_id = intern(d.account_id);
                    devices.insert(c.fingerprint, d);
                }
            }
            self.devices = Arc::new(devices);
        } else {
            for c in update.apps {
                let app = c.app.map(|mut app| {
                    app.account_id = intern(app.account_id);
                    app.plan = intern(app.plan);
                    app
                });
                self.overlay_apps.insert(c.id.into_boxed_str(), app);
            }
            for u in update.usage {
                self.overlay_usage
                    .insert(u.account_id.into_boxed_str(), u.relays);
            }
            if !update.devices.is_empty() {
                let devices = Arc::make_mut(&mut self.devices);
                for c in update.devices {
                    match c.device {
                        Some(mut d) => {
                            d.account_id = intern(d.account_id);
                            devices.insert(c.fingerprint, d);
                        }
                        None => {
                            devices.remove(&c.fingerprint);
                        }
                    }
                }
            }
        }
        drop(strings);
        let overlay = self.overlay_apps.len() + self.overlay_usage.len();
        let base = self.base.apps.len() + self.base.usage.len();
        if overlay > FOLD_AT && overlay > base / 16 {
            self.fold();
        }
        self.version = update.version;
        self.loaded = true;
        Ok(())
    }

    /// Adds the apps and usage of a later part of a full copy (no version check, no reset).
    pub fn extend(&mut self, update: Update) {
        let mut strings = self
            .strings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let base = Arc::make_mut(&mut self.base);
        for c in update.apps {
            if let Some(mut app) = c.app {
                app.account_id = intern_in(&mut strings, app.account_id);
                app.plan = intern_in(&mut strings, app.plan);
                base.apps.insert(c.id.into_boxed_str(), app);
            }
        }
        for u in update.usage {
            if let Some(r) = u.relays {
                base.usage.insert(u.account_id.into_boxed_str(), r);
            }
        }
        if !update.devices.is_empty() {
            let devices = Arc::make_mut(&mut self.devices);
            for c in update.devices {
                if let Some(mut d) = c.device {
                    d.account_id = intern_in(&mut strings, d.account_id);
                    devices.insert(c.fingerprint, d);
                }
            }
        }
    }

    /// Moves the overlay into the base (copying the base only if a clone shares it).
    pub fn fold(&mut self) {
        let base = Arc::make_mut(&mut self.base);
        for (id, app) in self.overlay_apps.drain() {
            match app {
                Some(app) => {
                    base.apps.insert(id, app);
                }
                None => {
                    base.apps.remove(&id);
                }
            }
        }
        for (id, relays) in self.overlay_usage.drain() {
            match relays {
                Some(r) => {
                    base.usage.insert(id, r);
                }
                None => {
                    base.usage.remove(&id);
                }
            }
        }
    }

    /// Number of apps.
    pub fn app_count(&self) -> usize {
        let mut n = self.base.apps.len();
        for (id, app) in &self.overlay_apps {
            match (self.base.apps.contains_key(id), app.is_some()) {
                (false, true) => n += 1,
                (true, false) => n = n.saturating_sub(1),
                _ => {}
            }
        }
        n
    }

    /// Number of device certificates.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Entries waiting in the overlay (for tests and metrics).
    pub fn overlay_len(&self) -> usize {
        self.overlay_apps.len() + self.overlay_usage.len()
    }
}

impl<S: BuildHasher + Default + Clone> PortalView for StoreCopy<S> {
    fn loaded(&self) -> bool {
        self.loaded
    }

    fn app(&self, id: &str) -> Option<&PortalApp> {
        match self.overlay_apps.get(id) {
            Some(changed) => changed.as_ref(),
            None => self.base.apps.get(id),
        }
    }

    fn usage(&self, account_id: &str) -> Option<u64> {
        match self.overlay_usage.get(account_id) {
            Some(changed) => *changed,
            None => self.base.usage.get(account_id).copied(),
        }
    }

    fn device(&self, fingerprint: &Fingerprint) -> Option<&Device> {
        self.devices.get(fingerprint)
    }
}

/// Path of the usage report endpoint on `edgeguard authz`'s HTTP port (`POST`, the same
/// bearer token as the snapshot feed).
pub const USAGE_PATH: &str = "/store/v1/usage";
/// Content type of an encoded [`UsageReport`] and of its [`UsageAck`].
pub const USAGE_CONTENT_TYPE: &str = "application/x-edgeguard-usage-report;v=2";
/// Most entries in one report (one per app counted since the last report).
pub const MAX_REPORT_ENTRIES: usize = 200_000;
/// Longest reporter id.
pub const MAX_REPORTER_BYTES: usize = 64;

/// Relays a metering filter counted since its previous report, identified so that a retried
/// report is applied at most once: `(reporter, seq)` is unique. A reporter is one filter
/// instance (a random id chosen at start); `seq` counts its reports from 1. A reporter sends
/// one report at a time and resends the same report (same `seq`, same entries) until it is
/// acknowledged; counts taken meanwhile wait for the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub reporter: String,
    pub seq: u64,
    pub entries: Vec<UsageEntry>,
    /// Devices that made an allowed request since the previous report (heartbeats): when
    /// each was last seen. Applied idempotently (a later time wins), so retries are harmless.
    pub devices: Vec<DeviceSeen>,
}

/// A device's last allowed request, in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSeen {
    pub device_id: String,
    pub last_seen: i64,
}

/// Allowed requests of one app (of one account) since the previous report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub app_id: String,
    pub account_id: String,
    pub relays: u64,
}

/// The answer to a [`UsageReport`]: it is durably recorded (`applied`), or was already
/// (`applied == false`: a retry of a report applied before). Either way the reporter may
/// forget it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAck {
    pub reporter: String,
    pub seq: u64,
    pub applied: bool,
}

impl UsageReport {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks the bounds (entries, id lengths, a positive `seq`).
    pub fn decode(bytes: &[u8]) -> Result<UsageReport, String> {
        let r: UsageReport = postcard::from_bytes(bytes)
            .map_err(|e| format!("usage report does not decode: {e}"))?;
        if r.reporter.is_empty() || r.reporter.len() > MAX_REPORTER_BYTES {
            return Err(format!(
                "usage report reporter id must be 1..={MAX_REPORTER_BYTES} bytes"
            ));
        }
        if r.seq == 0 {
            return Err("usage report seq must be positive".into());
        }
        if r.entries.len() > MAX_REPORT_ENTRIES {
            return Err(format!(
                "usage report has {} entries, more than {MAX_REPORT_ENTRIES}",
                r.entries.len()
            ));
        }
        if r.entries
            .iter()
            .any(|e| e.app_id.is_empty() || e.app_id.len() > 256 || e.account_id.len() > 256)
        {
            return Err("usage report entry with an empty or over-long id".into());
        }
        if r.devices.len() > MAX_REPORT_ENTRIES {
            return Err(format!(
                "usage report has {} devices, more than {MAX_REPORT_ENTRIES}",
                r.devices.len()
            ));
        }
        if r.devices
            .iter()
            .any(|d| d.device_id.is_empty() || d.device_id.len() > 256)
        {
            return Err("usage report device with an empty or over-long id".into());
        }
        Ok(r)
    }

    /// Relays in the report.
    pub fn relays(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |n, e| n.saturating_add(e.relays))
    }
}

impl UsageAck {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<UsageAck, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("usage ack does not decode: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::{key_digest, AppAuth};

    fn app(acc: &str) -> PortalApp {
        PortalApp {
            account_id: acc.into(),
            plan: "PLAN_FREE".into(),
            auth: AppAuth::ApiKey {
                digest: key_digest("k"),
            },
            monthly_user_limit: 0,
            client_auth: crate::device::ClientAuth::Key,
        }
    }

    fn device(id: &str, acc: &str) -> Option<Device> {
        Some(Device {
            id: id.into(),
            account_id: acc.into(),
            not_after: 1_000,
        })
    }

    #[test]
    fn devices_travel_and_are_forgotten() {
        let mut c: StoreCopy = StoreCopy::default();
        let full = Update {
            version: 1,
            full: true,
            devices: vec![
                DeviceChange {
                    fingerprint: [1; 32],
                    device: device("d1", "acc"),
                },
                DeviceChange {
                    fingerprint: [2; 32],
                    device: device("d2", "acc"),
                },
            ],
            parts: 1,
            ..Default::default()
        };
        c.apply(Update::decode(&full.encode()).unwrap()).unwrap();
        assert_eq!(c.device_count(), 2);
        assert_eq!(c.device(&[1; 32]).map(|d| &*d.id), Some("d1"));
        let published = c.clone();
        c.apply(Update {
            from: 1,
            version: 2,
            devices: vec![
                DeviceChange {
                    fingerprint: [1; 32],
                    device: None,
                },
                DeviceChange {
                    fingerprint: [3; 32],
                    device: device("d1", "acc"),
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert!(
            c.device(&[1; 32]).is_none(),
            "the revoked certificate is gone"
        );
        assert_eq!(c.device(&[3; 32]).map(|d| &*d.id), Some("d1"));
        assert!(
            published.device(&[1; 32]).is_some(),
            "a published clone keeps its copy"
        );
        // a later part of a full copy adds, a full update replaces
        c.extend(Update {
            devices: vec![DeviceChange {
                fingerprint: [4; 32],
                device: device("d4", "acc"),
            }],
            ..Default::default()
        });
        assert_eq!(c.device_count(), 3);
        c.apply(Update {
            version: 3,
            full: true,
            parts: 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.device_count(), 0);
    }

    #[test]
    fn full_then_deltas() {
        let mut c: StoreCopy = StoreCopy::default();
        assert!(!c.loaded());
        let full = Update {
            from: 0,
            version: 5,
            full: true,
            apps: vec![
                AppChange {
                    id: "a".into(),
                    app: Some(app("x")),
                },
                AppChange {
                    id: "b".into(),
                    app: Some(app("y")),
                },
            ],
            usage: vec![UsageChange {
                account_id: "x".into(),
                relays: Some(7),
            }],
            ..Default::default()
        };
        c.apply(Update::decode(&full.encode()).unwrap()).unwrap();
        assert!(c.loaded());
        assert_eq!(c.app("a").unwrap().account_id.as_ref(), "x");
        assert_eq!(c.usage("x"), Some(7));
        let delta = Update {
            from: 5,
            version: 7,
            full: false,
            apps: vec![
                AppChange {
                    id: "a".into(),
                    app: None,
                },
                AppChange {
                    id: "c".into(),
                    app: Some(app("z")),
                },
            ],
            usage: vec![UsageChange {
                account_id: "x".into(),
                relays: None,
            }],
            ..Default::default()
        };
        c.apply(delta.clone()).unwrap();
        assert!(c.app("a").is_none());
        assert!(c.app("b").is_some());
        assert!(c.app("c").is_some());
        assert_eq!(c.usage("x"), None);
        assert_eq!(c.version, 7);
        // a delta from the wrong version is refused and changes nothing
        assert_eq!(
            c.apply(delta),
            Err(UpdateError::VersionGap { have: 7, from: 5 })
        );
        assert!(c.app("c").is_some());
        // a full update replaces everything
        c.apply(Update {
            from: 0,
            version: 9,
            full: true,
            apps: vec![],
            usage: vec![],
            devices: vec![],
            part: 0,
            parts: 1,
        })
        .unwrap();
        assert_eq!(c.app_count(), 0);
    }

    #[test]
    fn clones_are_snapshots_and_the_overlay_folds() {
        let mut c: StoreCopy = StoreCopy::default();
        let ids: Vec<String> = (0..3000).map(|i| format!("app{i}")).collect();
        c.apply(Update {
            from: 0,
            version: 1,
            full: true,
            apps: ids
                .iter()
                .map(|id| AppChange {
                    id: id.clone(),
                    app: Some(app("acc")),
                })
                .collect(),
            usage: vec![],
            devices: vec![],
            part: 0,
            parts: 1,
        })
        .unwrap();
        // every app of the account shares one account id string
        assert!(Arc::ptr_eq(
            &c.app("app0").unwrap().account_id,
            &c.app("app2999").unwrap().account_id
        ));
        let published = c.clone();
        c.apply(Update {
            from: 1,
            version: 2,
            full: false,
            apps: vec![
                AppChange {
                    id: "app0".into(),
                    app: None,
                },
                AppChange {
                    id: "new".into(),
                    app: Some(app("acc2")),
                },
            ],
            usage: vec![UsageChange {
                account_id: "acc".into(),
                relays: Some(3),
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.overlay_len(), 3);
        assert_eq!(c.app_count(), 3000);
        assert!(c.app("app0").is_none() && c.app("new").is_some());
        assert_eq!(c.usage("acc"), Some(3));
        // the published clone did not change
        assert!(published.app("app0").is_some() && published.app("new").is_none());
        assert_eq!(published.usage("acc"), None);
        // many deltas fold into the base; lookups stay the same
        for (i, id) in ids.iter().enumerate().skip(1).take(1500) {
            let version = c.version;
            c.apply(Update {
                from: version,
                version: version + 1,
                full: false,
                apps: vec![AppChange {
                    id: id.clone(),
                    app: if i % 2 == 0 { None } else { Some(app("acc3")) },
                }],
                usage: vec![],
                devices: vec![],
                part: 0,
                parts: 1,
            })
            .unwrap();
        }
        assert!(c.overlay_len() <= FOLD_AT + 1, "{}", c.overlay_len());
        assert_eq!(c.app("app2").map(|a| &*a.account_id), None);
        assert_eq!(c.app("app3").map(|a| &*a.account_id), Some("acc3"));
        assert_eq!(c.app_count(), 3000 - 750);
        assert!(published.app("app2").is_some(), "still the old snapshot");
    }

    #[test]
    fn usage_reports_round_trip_and_are_bounded() {
        let r = UsageReport {
            reporter: "r1".into(),
            seq: 3,
            entries: vec![UsageEntry {
                app_id: "a".into(),
                account_id: "x".into(),
                relays: 5,
            }],
            devices: vec![DeviceSeen {
                device_id: "dev_1".into(),
                last_seen: 1_700_000_000,
            }],
        };
        assert_eq!(UsageReport::decode(&r.encode()), Ok(r.clone()));
        let nameless = UsageReport {
            devices: vec![DeviceSeen {
                device_id: String::new(),
                last_seen: 1,
            }],
            ..r.clone()
        };
        assert!(UsageReport::decode(&nameless.encode()).is_err());
        assert_eq!(r.relays(), 5);
        let zero = UsageReport {
            seq: 0,
            ..r.clone()
        };
        assert!(UsageReport::decode(&zero.encode()).is_err());
        let anon = UsageReport {
            reporter: String::new(),
            ..r.clone()
        };
        assert!(UsageReport::decode(&anon.encode()).is_err());
        assert!(UsageReport::decode(b"\xff\xff").is_err());
        let ack = UsageAck {
            reporter: "r1".into(),
            seq: 3,
            applied: true,
        };
        assert_eq!(UsageAck::decode(&ack.encode()), Ok(ack));
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(matches!(
            Update::decode(b"\xff\xff\xff\xff\xff\xff"),
            Err(UpdateError::Decode(_))
        ));
        assert!(Update::decode(&[]).is_err());
    }
}
