//! Counting allowed requests per app, in memory, on the request path; drained by the
//! [`crate::report::Reporter`] in the background.
//!
//! Native workers count concurrently, so the counts sit in shards, each a `Mutex` around an
//! `FxHashMap` keyed by app id: a request locks one shard (chosen by the app id's hash) for one
//! lookup and an add. An app already in the map costs no allocation. Draining takes the
//! counts and leaves the apps in place (at zero) so the next interval's counts allocate
//! nothing either; an app that was not counted during a whole interval is dropped at the next
//! drain. Only allowed apps are counted, and an allowed app is in the store, so the meter
//! holds at most the store's apps.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use edgeguard_verdict::portal_wire::{DeviceSeen, UsageEntry};
use rustc_hash::FxBuildHasher;

/// Shards of the meter: one per lock a worker may contend on. The wasm VM is single-threaded.
#[cfg(not(target_arch = "wasm32"))]
const SHARDS: usize = 16;
#[cfg(target_arch = "wasm32")]
const SHARDS: usize = 1;

#[derive(Debug)]
struct Counted {
    account_id: Arc<str>,
    relays: u64,
}

#[derive(Debug, Default)]
struct Shard {
    apps: HashMap<Box<str>, Counted, FxBuildHasher>,
    /// Relays ever counted in this shard (never reset).
    total: u64,
}

/// Allowed requests per app since the last drain.
#[derive(Debug)]
pub struct Meter {
    shards: Vec<Mutex<Shard>>,
    /// Devices seen since the last report (device id → last allowed request, Unix seconds):
    /// their heartbeats. Few per Envoy, so one map.
    seen: Mutex<HashMap<Arc<str>, i64, FxBuildHasher>>,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            seen: Mutex::new(HashMap::default()),
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // a panic while a shard is held (caught at the hook boundary) leaves at worst one count
    // unadded: the map itself is consistent
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Meter {
    fn shard(&self, app_id: &str) -> Option<&Mutex<Shard>> {
        if self.shards.len() == 1 {
            return self.shards.first();
        }
        let h = FxBuildHasher.hash_one(app_id);
        // the high bits: Fx mixes them best
        let i = usize::try_from(h >> 32).unwrap_or(0) % self.shards.len().max(1);
        self.shards.get(i)
    }

    /// Counts one allowed request of `app_id` (of account `account_id`).
    pub fn count(&self, app_id: &str, account_id: &Arc<str>) {
        let Some(shard) = self.shard(app_id) else {
            return;
        };
        let mut s = lock(shard);
        s.total = s.total.saturating_add(1);
        match s.apps.get_mut(app_id) {
            Some(c) => {
                c.relays = c.relays.saturating_add(1);
                if !Arc::ptr_eq(&c.account_id, account_id) && c.account_id != *account_id {
                    // the app moved to another account: its counts go to the new one
                    c.account_id = Arc::clone(account_id);
                }
            }
            None => {
                s.apps.insert(
                    app_id.into(),
                    Counted {
                        account_id: Arc::clone(account_id),
                        relays: 1,
                    },
                );
            }
        }
    }

    /// Records that a device made an allowed request at `now` (Unix seconds).
    pub fn seen(&self, device_id: &Arc<str>, now: i64) {
        let mut m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(device_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                m.insert(Arc::clone(device_id), now);
            }
        }
    }

    /// Takes at most `max` devices seen.
    pub fn drain_seen(&self, max: usize) -> Vec<DeviceSeen> {
        let mut m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<Arc<str>> = m.keys().take(max).cloned().collect();
        ids.into_iter()
            .filter_map(|id| {
                m.remove(&id).map(|last_seen| DeviceSeen {
                    device_id: id.to_string(),
                    last_seen,
                })
            })
            .collect()
    }

    /// Relays ever counted (never decreases).
    pub fn total(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |n, s| n.saturating_add(lock(s).total))
    }

    /// Takes at most `max` apps' counts (the rest wait for the next drain), forgetting the
    /// apps not counted since the previous drain.
    pub fn drain(&self, max: usize) -> Vec<UsageEntry> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut s = lock(shard);
            s.apps.retain(|app_id, c| {
                if c.relays == 0 {
                    return false;
                }
                if out.len() < max {
                    out.push(UsageEntry {
                        app_id: app_id.to_string(),
                        account_id: c.account_id.to_string(),
                        relays: c.relays,
                    });
                    c.relays = 0;
                }
                true
            });
        }
        out
    }

    /// Apps held (counted, or kept at zero until the next drain).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).apps.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<UsageEntry>) -> Vec<(String, String, u64)> {
        v.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        v.into_iter()
            .map(|e| (e.app_id, e.account_id, e.relays))
            .collect()
    }

    #[test]
    fn counts_drains_and_forgets_idle_apps() {
        let m = Meter::default();
        let acc: Arc<str> = "acc".into();
        let other: Arc<str> = "other".into();
        for _ in 0..3 {
            m.count("a", &acc);
        }
        m.count("b", &other);
        assert_eq!(m.total(), 4);
        assert_eq!(
            sorted(m.drain(usize::MAX)),
            vec![
                ("a".into(), "acc".into(), 3),
                ("b".into(), "other".into(), 1)
            ]
        );
        // drained: nothing to report, the apps are kept at zero once
        assert!(m.drain(usize::MAX).is_empty());
        assert_eq!(m.total(), 4);
        m.count("a", &acc);
        assert_eq!(
            m.len(),
            1,
            "b was idle for a whole interval and is forgotten"
        );
        assert_eq!(
            sorted(m.drain(usize::MAX)),
            vec![("a".into(), "acc".into(), 1)]
        );
    }

    #[test]
    fn drain_is_bounded_and_the_rest_waits() {
        let m = Meter::default();
        let acc: Arc<str> = "acc".into();
        for i in 0..40 {
            m.count(&format!("app{i}"), &acc);
        }
        let first = m.drain(25);
        assert_eq!(first.len(), 25);
        let rest = m.drain(25);
        assert_eq!(rest.len(), 15);
        let mut all: Vec<String> = first.into_iter().chain(rest).map(|e| e.app_id).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40);
    }

    #[test]
    fn concurrent_counts_all_arrive() {
        let m = Arc::new(Meter::default());
        let acc: Arc<str> = "acc".into();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = Arc::clone(&m);
                let acc = Arc::clone(&acc);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        m.count(&format!("app{}", (i + t) % 10), &acc);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.total(), 4000);
        let drained = m.drain(usize::MAX);
        assert_eq!(drained.len(), 10);
        assert_eq!(drained.iter().map(|e| e.relays).sum::<u64>(), 4000);
    }
}
