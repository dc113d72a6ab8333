//! authz's own counts: allowed Checks per app, from many gRPC worker threads.

use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::{FxBuildHasher, FxHashMap};

const SHARDS: usize = 16;

/// One shard: app id → (account id, relays).
type Shard = Mutex<FxHashMap<Box<str>, (Arc<str>, u64)>>;

/// Relays counted per app (with its account), sharded by app id so concurrent Checks rarely
/// share a lock. An app already present costs a hash, a lock and an add; no allocation.
#[derive(Default)]
pub struct LocalCounts {
    shards: [Shard; SHARDS],
    /// Devices seen (device id → last allowed request, Unix seconds): heartbeats.
    seen: Mutex<FxHashMap<Arc<str>, i64>>,
}

impl LocalCounts {
    fn shard(&self, app_id: &str) -> &Shard {
        use std::hash::BuildHasher;
        let i = (FxBuildHasher.hash_one(app_id) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Counts one allowed request of `app_id` (of `account_id`).
    pub fn count(&self, app_id: &str, account_id: &Arc<str>) {
        let mut m = self
            .shard(app_id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(app_id) {
            Some((_, n)) => *n += 1,
            None => {
                m.insert(app_id.into(), (account_id.clone(), 1));
            }
        }
    }

    /// Takes every count: `(app_id, account_id, relays)`.
    pub fn drain(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut m = s.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                m.drain()
                    .map(|(app, (acc, n))| (app.into_string(), acc.to_string(), n)),
            );
        }
        out
    }

    /// Records that a device made an allowed request at `now`.
    pub fn seen(&self, device_id: &Arc<str>, now: i64) {
        let mut m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(device_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                m.insert(device_id.clone(), now);
            }
        }
    }

    /// Takes every device seen: `(device_id, last_seen)`.
    pub fn drain_seen(&self) -> Vec<(String, i64)> {
        let mut m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        m.drain().map(|(d, t)| (d.to_string(), t)).collect()
    }

    /// Relays counted and not yet drained.
    pub fn pending(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(|(_, n)| *n)
                    .sum::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_drains() {
        let c = LocalCounts::default();
        let acc: Arc<str> = "acc".into();
        for _ in 0..3 {
            c.count("a", &acc);
        }
        c.count("b", &acc);
        assert_eq!(c.pending(), 4);
        let mut d = c.drain();
        d.sort();
        assert_eq!(
            d,
            vec![("a".into(), "acc".into(), 3), ("b".into(), "acc".into(), 1)]
        );
        assert_eq!(c.pending(), 0);
        assert!(c.drain().is_empty());
        let dev: Arc<str> = "dev".into();
        c.seen(&dev, 10);
        c.seen(&dev, 9);
        assert_eq!(c.drain_seen(), vec![("dev".to_string(), 10)]);
        assert!(c.drain_seen().is_empty());
    }
}
